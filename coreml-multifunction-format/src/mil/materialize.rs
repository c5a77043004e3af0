//! Fixed-shape functions from a flexible one: coremltools'
//! `materialize_dynamic_shape_mlmodel`, without its optimisation passes.
//!
//! [`materialize`] fixes some inputs of a function to shapes, then walks
//! its body op by op (nested blocks included) with [`infer`]:
//!
//! - every op result gets the type inference gives at the fixed shapes,
//!   checked against what the source declared (a dimension the source
//!   fixed must agree; a contradiction is an error naming the op);
//! - an op whose results inference computed whole, and small (shape
//!   arithmetic: `shape`, and the slices, concatenations, casts and
//!   arithmetic over it), becomes a `const` of that value;
//! - ops nothing reads any more are removed (the `shape` ops and the
//!   constants only they read).
//!
//! Weights are untouched: the function keeps its source's blob
//! references, so a merge stores them once for both.
//!
//! When every flexible input is fixed, every result must come out fully
//! known; an op whose result still has an unknown dimension is an error
//! that names it (a data-dependent shape, such as `non_zero`'s, or a loop
//! variable that changes shape).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::infer::{self, Dim, Elements, Inputs, Operand, TensorType};
use super::ops::{self, Kind};
use crate::proto::mil_spec::{
    self, argument::binding::Binding, dimension, tensor_value, value, value_type, DataType,
    Dimension, NamedValueType, Operation, ValueType,
};

/// A fixed-shape function.
#[derive(Debug, Clone)]
pub struct Materialized {
    /// The function: fixed inputs, inferred types, shape arithmetic folded.
    pub function: mil_spec::Function,
    /// Each output's shape, when fully known.
    pub output_shapes: BTreeMap<String, Option<Vec<u64>>>,
}

/// Why a function cannot be materialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", op.as_ref().map(|(name, ty)| format!("op {name:?} ({ty}): ")).unwrap_or_default())]
pub struct MaterializeError {
    /// The op at fault: its (first) output name and its type.
    pub op: Option<(String, String)>,
    /// What is wrong.
    pub message: String,
}

impl MaterializeError {
    fn function(message: impl Into<String>) -> MaterializeError {
        MaterializeError {
            op: None,
            message: message.into(),
        }
    }

    fn at(op: &Operation, message: impl Into<String>) -> MaterializeError {
        let name = op
            .outputs
            .first()
            .map(|o| o.name.clone())
            .unwrap_or_else(|| "unnamed".to_string());
        MaterializeError {
            op: Some((name, op.r#type.clone())),
            message: message.into(),
        }
    }
}

/// The dimensions a tensor type declares (`None` for an unknown one).
pub fn declared_dims(tensor: &mil_spec::TensorType) -> Vec<Dim> {
    tensor
        .dimensions
        .iter()
        .map(|d| match d.dimension {
            Some(dimension::Dimension::Constant(c)) => Some(c.size),
            _ => None,
        })
        .collect()
}

/// Fixes the inputs of `function` named in `shapes` to those shapes, and
/// rebuilds its body at them (see the module documentation).
pub fn materialize(
    function: &mil_spec::Function,
    shapes: &BTreeMap<String, Vec<u64>>,
) -> Result<Materialized, MaterializeError> {
    let mut function = function.clone();
    let mut env: HashMap<String, Operand> = HashMap::new();
    for (name, shape) in shapes {
        let input = function
            .inputs
            .iter_mut()
            .find(|i| &i.name == name)
            .ok_or_else(|| MaterializeError::function(format!("has no input {name:?}")))?;
        let Some(value_type::Type::TensorType(tensor)) =
            input.r#type.as_mut().and_then(|t| t.r#type.as_mut())
        else {
            return Err(MaterializeError::function(format!(
                "input {name:?} is not a tensor, so it has no shape to fix"
            )));
        };
        let declared = declared_dims(tensor);
        let fits = declared.len() == shape.len()
            && declared
                .iter()
                .zip(shape)
                .all(|(d, &s)| d.is_none_or(|d| d == s));
        if !fits {
            return Err(MaterializeError::function(format!(
                "input {name:?} of type {} cannot take the shape {:?}",
                infer::shape_text(&declared),
                shape
            )));
        }
        set_dims(tensor, &shape.iter().map(|&d| Some(d)).collect::<Vec<_>>());
    }
    for input in &function.inputs {
        let operand = operand_of_type(input.r#type.as_ref()).ok_or_else(|| {
            MaterializeError::function(format!(
                "input {:?} has a type shape inference does not know",
                input.name
            ))
        })?;
        env.insert(input.name.clone(), operand);
    }
    let complete = env.values().all(|o| o.ty.known_shape().is_some());
    let opset = function.opset.clone();
    if !function.block_specializations.contains_key(&opset) {
        return Err(MaterializeError::function(format!(
            "has no body for its opset {opset}"
        )));
    }
    // Every body: Core ML picks one by OS version, so each must be fixed
    // alike. The output shapes are the function's own opset's.
    let mut output_shapes = BTreeMap::new();
    for (name, block) in &mut function.block_specializations {
        let mut walker = Walker {
            env: env.clone(),
            complete,
        };
        walker.block(block)?;
        remove_unread(block);
        if *name == opset {
            output_shapes = block
                .outputs
                .iter()
                .map(|output| {
                    let shape = walker.env.get(output).and_then(|o| o.ty.known_shape());
                    (output.clone(), shape)
                })
                .collect();
        }
    }
    Ok(Materialized {
        function,
        output_shapes,
    })
}

struct Walker {
    env: HashMap<String, Operand>,
    /// Whether every input is fully known, so every result must be.
    complete: bool,
}

impl Walker {
    fn block(&mut self, block: &mut mil_spec::Block) -> Result<(), MaterializeError> {
        for op in &mut block.operations {
            self.op(op)?;
        }
        Ok(())
    }

    fn operand(&self, op: &Operation, binding: &Binding) -> Result<Operand, MaterializeError> {
        match binding {
            Binding::Name(name) => self.env.get(name).cloned().ok_or_else(|| {
                MaterializeError::at(
                    op,
                    format!("reads {name:?}, which nothing defines before it"),
                )
            }),
            Binding::Value(value) => constant_operand(value).ok_or_else(|| {
                MaterializeError::at(op, "has an inline value shape inference cannot read")
            }),
        }
    }

    /// The op's inputs by parameter name. The iOS 16 and 17 `constexpr_*`
    /// ops hold their parameters as attributes, which count as inputs.
    fn inputs(&self, op: &Operation) -> Result<BTreeMap<String, Vec<Operand>>, MaterializeError> {
        let mut inputs: BTreeMap<String, Vec<Operand>> = op
            .inputs
            .iter()
            .map(|(name, argument)| {
                let operands = argument
                    .arguments
                    .iter()
                    .filter_map(|b| b.binding.as_ref())
                    .map(|b| self.operand(op, b))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((name.clone(), operands))
            })
            .collect::<Result<_, MaterializeError>>()?;
        if op.r#type.starts_with("constexpr_") {
            for (name, value) in &op.attributes {
                if name != "name" && !inputs.contains_key(name) {
                    if let Some(operand) = constant_operand(value) {
                        inputs.insert(name.clone(), vec![operand]);
                    }
                }
            }
        }
        Ok(inputs)
    }

    fn op(&mut self, op: &mut Operation) -> Result<(), MaterializeError> {
        let Some(spec) = ops::spec(&op.r#type) else {
            return Err(MaterializeError::at(
                op,
                "is not an op shape inference knows, so its result type at the fixed shapes \
                 cannot be inferred",
            ));
        };
        let results: Vec<Operand> = match spec.kind {
            Kind::Const => {
                let value = op.attributes.get("val");
                let operand = value.and_then(constant_operand).ok_or_else(|| {
                    MaterializeError::at(op, "is a constant without a readable value")
                })?;
                vec![operand]
            }
            Kind::Cond => self.cond(op)?,
            Kind::WhileLoop => self.while_loop(op)?,
            kind => {
                let args = self.inputs(op)?;
                infer::infer(kind, &Inputs::new(&args))
                    .map_err(|message| MaterializeError::at(op, message))?
            }
        };
        if results.len() != op.outputs.len() {
            return Err(MaterializeError::at(
                op,
                format!(
                    "declares {} results, but its inputs give {}",
                    op.outputs.len(),
                    results.len()
                ),
            ));
        }
        let mut merged = Vec::with_capacity(results.len());
        for (output, mut result) in op.outputs.iter_mut().zip(results) {
            result.ty = agree(op_ref(&op.r#type, &output.name), output, &result)?;
            if self.complete && result.ty.known_shape().is_none() {
                return Err(MaterializeError {
                    op: Some((output.name.clone(), op.r#type.clone())),
                    message: format!(
                        "its result {} is not fully known at the fixed shapes (its size depends \
                         on data, or on an input left flexible)",
                        result.ty.describe()
                    ),
                });
            }
            retype(output, &result);
            merged.push(result);
        }
        let foldable = !matches!(
            spec.kind,
            Kind::Const
                | Kind::Constexpr(_)
                | Kind::ReadState
                | Kind::WriteState
                | Kind::Cond
                | Kind::WhileLoop
        ) && merged.len() == 1
            && merged[0].value.as_ref().is_some_and(Elements::is_known);
        if foldable {
            if let Some(folded) = const_op(&op.outputs[0], &merged[0]) {
                *op = folded;
            }
        }
        for (output, result) in op.outputs.iter().zip(merged) {
            self.env.insert(output.name.clone(), result);
        }
        Ok(())
    }

    fn cond(&mut self, op: &mut Operation) -> Result<Vec<Operand>, MaterializeError> {
        let args = self.inputs(op)?;
        if args.get("pred").and_then(|p| p.first()).is_none() {
            return Err(MaterializeError::at(op, "lacks its predicate"));
        }
        if op.blocks.len() != 2 {
            return Err(MaterializeError::at(op, "has not two branches"));
        }
        let undefined = MaterializeError::at(op, "a branch gives an undefined output");
        let mut branches = Vec::new();
        for block in &mut op.blocks {
            self.block(block)?;
            let outputs = block
                .outputs
                .iter()
                .map(|name| self.env.get(name).cloned())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| undefined.clone())?;
            branches.push(outputs);
        }
        let (then, otherwise) = (&branches[0], &branches[1]);
        if then.len() != otherwise.len() {
            return Err(MaterializeError::at(
                op,
                "its branches give different result counts",
            ));
        }
        Ok(then
            .iter()
            .zip(otherwise)
            .map(|(a, b)| Operand {
                // A list stays a list (of a length neither branch fixes);
                // a list against a tensor is no list.
                container: match (&a.container, &b.container) {
                    (Some(infer::Container::List { .. }), Some(infer::Container::List { .. })) => {
                        Some(infer::Container::List { length: None })
                    }
                    (x, y) if x == y => x.clone(),
                    _ => None,
                },
                ..Operand::tensor(join_types(&a.ty, &b.ty))
            })
            .collect())
    }

    fn while_loop(&mut self, op: &mut Operation) -> Result<Vec<Operand>, MaterializeError> {
        let args = self.inputs(op)?;
        let initial: Vec<Operand> = args.get("loop_vars").cloned().unwrap_or_default();
        if op.blocks.len() != 2 {
            return Err(MaterializeError::at(op, "has not a condition and a body"));
        }
        // The loop variables' types: the initial ones, widened (a
        // dimension that changes becomes unknown) until the body keeps
        // them; at most once per dimension.
        let mut types: Vec<TensorType> = initial.iter().map(|o| o.ty.clone()).collect();
        // A list loop variable stays a list (its length may change).
        let containers: Vec<Option<infer::Container>> = initial
            .iter()
            .map(|o| {
                o.container.clone().map(|c| match c {
                    infer::Container::List { .. } => infer::Container::List { length: None },
                    other => other,
                })
            })
            .collect();
        let dims: usize = types.iter().map(TensorType::rank).sum();
        for _ in 0..=dims + 1 {
            let mut trial = op.blocks[1].clone();
            self.bind(&op.blocks[1], &types, &containers, op)?;
            let mut probe = Walker {
                env: self.env.clone(),
                complete: false,
            };
            probe.block(&mut trial)?;
            let next: Vec<TensorType> = trial
                .outputs
                .iter()
                .map(|name| probe.env.get(name).map(|o| o.ty.clone()))
                .collect::<Option<_>>()
                .ok_or_else(|| MaterializeError::at(op, "its body gives an undefined output"))?;
            if next.len() != types.len() {
                return Err(MaterializeError::at(
                    op,
                    "its body gives the wrong number of loop variables",
                ));
            }
            let widened: Vec<TensorType> = types
                .iter()
                .zip(&next)
                .map(|(a, b)| join_types(a, b))
                .collect();
            if widened == types {
                break;
            }
            types = widened;
        }
        // Now for real, at the stable types.
        for index in 0..2 {
            let block = op.blocks[index].clone();
            self.bind(&block, &types, &containers, op)?;
            let mut block = block;
            self.block(&mut block)?;
            for (input, ty) in block.inputs.iter_mut().zip(&types) {
                retype(input, &Operand::tensor(ty.clone()));
            }
            op.blocks[index] = block;
        }
        Ok(types
            .into_iter()
            .zip(containers)
            .map(|(ty, container)| Operand {
                container,
                ..Operand::tensor(ty)
            })
            .collect())
    }

    /// Binds the inputs of a loop block to the loop variables' types.
    fn bind(
        &mut self,
        block: &mil_spec::Block,
        types: &[TensorType],
        containers: &[Option<infer::Container>],
        op: &Operation,
    ) -> Result<(), MaterializeError> {
        if block.inputs.len() != types.len() {
            return Err(MaterializeError::at(
                op,
                "a block's inputs do not match the loop variables",
            ));
        }
        for ((input, ty), container) in block.inputs.iter().zip(types).zip(containers) {
            let operand = Operand {
                container: container.clone(),
                ..Operand::tensor(ty.clone())
            };
            self.env.insert(input.name.clone(), operand);
        }
        Ok(())
    }
}

fn op_ref(op_type: &str, name: &str) -> (String, String) {
    (name.to_string(), op_type.to_string())
}

/// The type two values of one place have: equal where they agree, unknown
/// where they differ.
fn join_types(a: &TensorType, b: &TensorType) -> TensorType {
    if a.rank() != b.rank() {
        return a.clone();
    }
    TensorType {
        dtype: a.dtype,
        shape: a
            .shape
            .iter()
            .zip(&b.shape)
            .map(|(&x, &y)| if x == y { x } else { None })
            .collect(),
    }
}

/// The inferred type of result `output`, checked against the type the
/// source declared for it: the same element type and rank, and every
/// dimension the source fixed equal. A dimension inference leaves unknown
/// takes the declared one.
fn agree(
    (name, op_type): (String, String),
    output: &NamedValueType,
    result: &Operand,
) -> Result<TensorType, MaterializeError> {
    let err = |message: String| MaterializeError {
        op: Some((name.clone(), op_type.clone())),
        message,
    };
    let Some(declared) = operand_of_type(output.r#type.as_ref()) else {
        // A type the source leaves out (or not a tensor): take inference's.
        return Ok(result.ty.clone());
    };
    let inferred = &result.ty;
    if declared.ty.dtype != inferred.dtype || declared.ty.rank() != inferred.rank() {
        return Err(err(format!(
            "inference gives {} for {name:?}, but the source declares {}",
            inferred.describe(),
            declared.ty.describe()
        )));
    }
    let mut shape = Vec::with_capacity(inferred.rank());
    for (&d, &i) in declared.ty.shape.iter().zip(&inferred.shape) {
        shape.push(match (d, i) {
            (Some(d), Some(i)) if d != i => {
                return Err(err(format!(
                    "inference gives {} for {name:?} at the fixed shapes, but the source \
                     declares {}: the fixed shapes contradict the model",
                    inferred.describe(),
                    declared.ty.describe()
                )))
            }
            (Some(d), _) => Some(d),
            (None, i) => i,
        });
    }
    Ok(TensorType {
        dtype: inferred.dtype,
        shape,
    })
}

/// Sets the dimensions of `tensor`.
fn set_dims(tensor: &mut mil_spec::TensorType, dims: &[Dim]) {
    tensor.rank = dims.len() as i64;
    tensor.dimensions = dims
        .iter()
        .map(|d| Dimension {
            dimension: Some(match d {
                Some(size) => {
                    dimension::Dimension::Constant(dimension::ConstantDimension { size: *size })
                }
                None => {
                    dimension::Dimension::Unknown(dimension::UnknownDimension { variadic: false })
                }
            }),
        })
        .collect();
}

/// Writes `result`'s shape into the declared type of `output`.
fn retype(output: &mut NamedValueType, result: &Operand) {
    let ty = output.r#type.get_or_insert_with(ValueType::default);
    match ty.r#type.as_mut() {
        Some(value_type::Type::TensorType(tensor)) => set_dims(tensor, &result.ty.shape),
        Some(value_type::Type::StateType(state)) => {
            if let Some(value_type::Type::TensorType(tensor)) =
                state.wrapped_type.as_mut().and_then(|w| w.r#type.as_mut())
            {
                set_dims(tensor, &result.ty.shape);
            }
        }
        // Issue 23, opsvalues: a list keeps its declared type (its length
        // changes at run time); a dictionary has no shape.
        Some(value_type::Type::ListType(_) | value_type::Type::DictionaryType(_)) => {}
        _ => {
            let mut tensor = mil_spec::TensorType {
                data_type: result.ty.dtype as i32,
                ..Default::default()
            };
            set_dims(&mut tensor, &result.ty.shape);
            ty.r#type = Some(value_type::Type::TensorType(tensor));
        }
    }
}

/// An operand of the declared type `ty` (tensor or state), value unknown.
fn operand_of_type(ty: Option<&ValueType>) -> Option<Operand> {
    match ty?.r#type.as_ref()? {
        value_type::Type::TensorType(t) => Some(Operand::tensor(tensor_type(t)?)),
        value_type::Type::StateType(s) => match s.wrapped_type.as_ref()?.r#type.as_ref()? {
            value_type::Type::TensorType(t) => Some(Operand {
                state: true,
                ..Operand::tensor(tensor_type(t)?)
            }),
            _ => None,
        },
        // Issue 23, opsvalues: lists and dictionaries, typed by their
        // elements (values).
        value_type::Type::ListType(list) => {
            let element = match list.r#type.as_ref()?.r#type.as_ref()? {
                value_type::Type::TensorType(t) => tensor_type(t)?,
                _ => return None,
            };
            let length = match list.length.as_ref()?.dimension.as_ref() {
                Some(mil_spec::dimension::Dimension::Constant(c)) => Some(c.size),
                _ => None,
            };
            Some(Operand::list(element, length))
        }
        value_type::Type::DictionaryType(dict) => {
            let tensor_of = |ty: Option<&ValueType>| match ty?.r#type.as_ref()? {
                value_type::Type::TensorType(t) => tensor_type(t),
                _ => None,
            };
            let key = tensor_of(dict.key_type.as_deref())?.dtype;
            Some(Operand::dictionary(
                key,
                tensor_of(dict.value_type.as_deref())?,
            ))
        }
        _ => None,
    }
}

fn tensor_type(t: &mil_spec::TensorType) -> Option<TensorType> {
    let dtype = DataType::try_from(t.data_type).ok()?;
    if t.rank < 0 || t.dimensions.len() != t.rank as usize {
        return None;
    }
    Some(TensorType {
        dtype,
        shape: declared_dims(t),
    })
}

/// The operand a constant value stands for: its type, and its elements
/// when it is a small immediate.
fn constant_operand(value: &mil_spec::Value) -> Option<Operand> {
    let mut operand = operand_of_type(value.r#type.as_ref())?;
    if let Some(value::Value::ImmediateValue(immediate)) = &value.value {
        match &immediate.value {
            Some(value::immediate_value::Value::Tensor(tensor)) => {
                operand.value =
                    elements_of(tensor, operand.ty.dtype).filter(|e| e.len() <= infer::MAX_FOLDED);
            }
            // A list of scalars (`classify`'s classes): its elements in order.
            Some(value::immediate_value::Value::List(list)) => {
                operand.value = list_elements(list, operand.ty.dtype);
            }
            _ => {}
        }
    }
    Some(operand)
}

/// The elements of an immediate list of scalar tensors, one after another.
fn list_elements(list: &mil_spec::ListValue, dtype: DataType) -> Option<Elements> {
    let mut parts = Vec::with_capacity(list.values.len());
    for item in &list.values {
        let Some(value::Value::ImmediateValue(immediate)) = &item.value else {
            return None;
        };
        let Some(value::immediate_value::Value::Tensor(tensor)) = &immediate.value else {
            return None;
        };
        parts.push(elements_of(tensor, dtype)?);
    }
    let total: usize = parts.iter().map(Elements::len).sum();
    if total > infer::MAX_FOLDED {
        return None;
    }
    Some(match dtype {
        DataType::String => Elements::Str(
            parts
                .into_iter()
                .flat_map(|p| match p {
                    Elements::Str(s) => s,
                    _ => Vec::new(),
                })
                .collect(),
        ),
        _ => Elements::Int(
            parts
                .into_iter()
                .flat_map(|p| match p {
                    Elements::Int(v) => v,
                    _ => Vec::new(),
                })
                .collect(),
        ),
    })
}

/// The elements of an immediate tensor.
fn elements_of(tensor: &mil_spec::TensorValue, dtype: DataType) -> Option<Elements> {
    use tensor_value::Value as V;
    Some(match tensor.value.as_ref() {
        None => match dtype {
            DataType::Bool => Elements::Bool(Vec::new()),
            DataType::String => Elements::Str(Vec::new()),
            d if infer::is_float(d) => Elements::Float(Vec::new()),
            _ => Elements::Int(Vec::new()),
        },
        Some(V::Floats(v)) => Elements::Float(v.values.iter().map(|&f| f64::from(f)).collect()),
        Some(V::Doubles(v)) => Elements::Float(v.values.clone()),
        Some(V::Ints(v)) => {
            if infer::is_float(dtype) {
                return None;
            }
            Elements::ints(v.values.iter().map(|&i| i64::from(i)))
        }
        Some(V::LongInts(v)) => Elements::ints(v.values.iter().copied()),
        Some(V::Bools(v)) => Elements::Bool(v.values.clone()),
        Some(V::Strings(v)) => Elements::Str(v.values.clone()),
        Some(V::Bytes(v)) => match dtype {
            DataType::Float16 => Elements::Float(
                v.values
                    .chunks_exact(2)
                    .map(|b| f64::from(f16_to_f32(u16::from_le_bytes([b[0], b[1]]))))
                    .collect(),
            ),
            DataType::Int8 => Elements::ints(v.values.iter().map(|&b| i64::from(b as i8))),
            DataType::Uint8 => Elements::ints(v.values.iter().map(|&b| i64::from(b))),
            DataType::Int16 | DataType::Uint16 => {
                let signed = dtype == DataType::Int16;
                Elements::ints(v.values.chunks_exact(2).map(|b| {
                    let raw = u16::from_le_bytes([b[0], b[1]]);
                    if signed {
                        i64::from(raw as i16)
                    } else {
                        i64::from(raw)
                    }
                }))
            }
            DataType::Int32 | DataType::Uint32 => {
                let signed = dtype == DataType::Int32;
                Elements::ints(v.values.chunks_exact(4).map(|b| {
                    let raw = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if signed {
                        i64::from(raw as i32)
                    } else {
                        i64::from(raw)
                    }
                }))
            }
            _ => return None,
        },
    })
}

/// A `const` op defining `output` as `value`, if the value can be written
/// as an immediate of the output's declared type.
fn const_op(output: &NamedValueType, result: &Operand) -> Option<Operation> {
    let value = result.value.as_ref()?;
    let dtype = result.ty.dtype;
    use tensor_value::Value as V;
    let tensor = match (dtype, value) {
        (DataType::Int32 | DataType::Int16 | DataType::Uint16, Elements::Int(v)) => {
            V::Ints(tensor_value::RepeatedInts {
                values: v
                    .iter()
                    .map(|i| i.and_then(|i| i32::try_from(i).ok()))
                    .collect::<Option<_>>()?,
            })
        }
        (DataType::Int64, Elements::Int(v)) => V::LongInts(tensor_value::RepeatedLongInts {
            values: v.iter().copied().collect::<Option<_>>()?,
        }),
        (DataType::Bool, Elements::Bool(v)) => {
            V::Bools(tensor_value::RepeatedBools { values: v.clone() })
        }
        (DataType::Float32, Elements::Float(v)) => V::Floats(tensor_value::RepeatedFloats {
            values: v.iter().map(|&f| f as f32).collect(),
        }),
        (DataType::Float16, Elements::Float(v)) => V::Bytes(tensor_value::RepeatedBytes {
            values: v
                .iter()
                .flat_map(|&f| f32_to_f16(f as f32).to_le_bytes())
                .collect(),
        }),
        _ => return None,
    };
    let mut declared = mil_spec::TensorType {
        data_type: dtype as i32,
        ..Default::default()
    };
    set_dims(&mut declared, &result.ty.shape);
    let value_type = ValueType {
        r#type: Some(value_type::Type::TensorType(declared)),
    };
    let immediate = |v: V, ty: ValueType| mil_spec::Value {
        doc_string: String::new(),
        r#type: Some(ty),
        value: Some(value::Value::ImmediateValue(value::ImmediateValue {
            value: Some(value::immediate_value::Value::Tensor(
                mil_spec::TensorValue { value: Some(v) },
            )),
        })),
    };
    let string_type = ValueType {
        r#type: Some(value_type::Type::TensorType(mil_spec::TensorType {
            data_type: DataType::String as i32,
            ..Default::default()
        })),
    };
    let mut attributes = BTreeMap::new();
    attributes.insert(
        "name".to_string(),
        immediate(
            V::Strings(tensor_value::RepeatedStrings {
                values: vec![output.name.clone()],
            }),
            string_type,
        ),
    );
    attributes.insert("val".to_string(), immediate(tensor, value_type.clone()));
    Some(Operation {
        r#type: "const".to_string(),
        inputs: BTreeMap::new(),
        outputs: vec![NamedValueType {
            name: output.name.clone(),
            r#type: Some(value_type),
        }],
        blocks: Vec::new(),
        attributes,
    })
}

/// Removes the ops whose results nothing reads (a block's outputs and
/// every op input, nested blocks included, count as readers), and that do
/// nothing else: not `write_state`, not control flow.
fn remove_unread(block: &mut mil_spec::Block) {
    loop {
        let mut read = BTreeSet::new();
        collect_reads(block, &mut read);
        let before = count_ops(block);
        prune(block, &read);
        if count_ops(block) == before {
            return;
        }
    }
}

fn collect_reads(block: &mil_spec::Block, read: &mut BTreeSet<String>) {
    read.extend(block.outputs.iter().cloned());
    for op in &block.operations {
        for argument in op.inputs.values() {
            for binding in &argument.arguments {
                if let Some(Binding::Name(name)) = &binding.binding {
                    read.insert(name.clone());
                }
            }
        }
        for nested in &op.blocks {
            collect_reads(nested, read);
        }
    }
}

fn prune(block: &mut mil_spec::Block, read: &BTreeSet<String>) {
    block.operations.retain(|op| {
        let effect = matches!(op.r#type.as_str(), "write_state" | "cond" | "while_loop");
        effect || op.outputs.is_empty() || op.outputs.iter().any(|o| read.contains(&o.name))
    });
    for op in &mut block.operations {
        for nested in &mut op.blocks {
            prune(nested, read);
        }
    }
}

fn count_ops(block: &mil_spec::Block) -> usize {
    block
        .operations
        .iter()
        .map(|op| 1 + op.blocks.iter().map(count_ops).sum::<usize>())
        .sum()
}

/// An fp16 bit pattern as f32.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = (bits >> 10) & 0x1f;
    let mantissa = f32::from(bits & 0x3ff);
    sign * match exponent {
        0 => mantissa * 2f32.powi(-24),
        0x1f if mantissa == 0.0 => f32::INFINITY,
        0x1f => f32::NAN,
        e => (1.0 + mantissa / 1024.0) * 2f32.powi(i32::from(e) - 15),
    }
}

/// `f` (already an fp16 value, or rounded to the nearest) as an fp16 bit
/// pattern.
fn f32_to_f16(f: f32) -> u16 {
    let sign = if f.is_sign_negative() { 0x8000 } else { 0 };
    let a = f.abs();
    if a.is_nan() {
        return 0x7e00;
    }
    if a >= 65520.0 {
        return sign | 0x7c00;
    }
    if a < 2f32.powi(-14) {
        // Subnormal: multiples of 2^-24.
        return sign | (a / 2f32.powi(-24)).round_ties_even() as u16;
    }
    let exponent = a.log2().floor() as i32;
    let mut mantissa = (a / 2f32.powi(exponent) - 1.0) * 1024.0;
    mantissa = mantissa.round_ties_even();
    let (mut e, mut m) = (exponent + 15, mantissa as u32);
    if m == 1024 {
        m = 0;
        e += 1;
    }
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    sign | ((e as u16) << 10) | m as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp16_round_trips() {
        for bits in [
            0u16, 1, 0x3c00, 0xbc00, 0x3555, 0x7bff, 0x0400, 0x03ff, 0xc000,
        ] {
            assert_eq!(f32_to_f16(f16_to_f32(bits)), bits, "{bits:#x}");
        }
    }

    #[test]
    fn dtype_names_are_coremltools() {
        assert_eq!(infer::dtype_name(DataType::Float16), "fp16");
        assert_eq!(infer::dtype_from_name("int32"), Some(DataType::Int32));
    }
}
