//! Compiling a MIL function into a list of steps over numbered slots.
//!
//! Everything that can fail without seeing an input fails here, at load
//! time: ops the backend does not implement (all of them at once,
//! [`Error::UnsupportedOps`]),
//! an input an op requires but lacks, a parameter it does not know, a
//! reference to an undefined value, a constant that does not decode
//! ([`Error::InvalidModel`]). `const` and `constexpr_*` ops are evaluated
//! here once (and shared through the package's weight store); what remains
//! are the steps [`super::exec`] runs.
//!
//! # Nested blocks
//!
//! Control flow (`cond`, `while_loop`) holds nested blocks, each compiled
//! into a [`Block`]: its own steps over the same slot space, so a nested
//! step reads a value of an enclosing block straight from its slot. Names
//! are scoped as MIL scopes them: a block sees its own values and those of
//! the blocks around it, not those of its siblings (the condition and the
//! body of a loop name their inputs alike). Constants inside a block,
//! weights of a loop body included, are evaluated here once, like the
//! function's own, and never recomputed per iteration.
//!
//! Slots are released (emptied after their last reader, to bound memory)
//! per block: a slot read anywhere inside a nested block counts as read by
//! the control-flow step holding it, and a nested block releases only the
//! values it defines itself, never a constant nor a value of an enclosing
//! block, which a loop reads again on its next iteration.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use prost::Message;

use coreml_multifunction_format::package::values::op_name;
use coreml_multifunction_format::package::{FunctionView, Package};
use coreml_multifunction_format::proto::mil_spec::{self, argument::binding, value_type};

use super::super::error::{Error, Result};
use super::ops::{self, Kind};
use super::value::{conform, round_float, Declared, Value};
use super::weights::{self, ConstKey, Constant, WeightStore};

/// A numbered place for one value during a prediction.
pub(crate) type Slot = usize;

/// One op to run.
#[derive(Debug)]
pub(crate) struct Step {
    /// What it computes.
    pub kind: Kind,
    /// The op type as written ("linear").
    pub op_type: String,
    /// The op's name (its `name` attribute, else its first output).
    pub name: String,
    /// Its parameters: name and the slots bound to it (several for tuple
    /// parameters such as `concat`'s `values`).
    pub inputs: Vec<(String, Vec<Slot>)>,
    /// Where its results go, with the types the program declares for them.
    pub outputs: Vec<(Slot, Declared)>,
    /// Its nested blocks (`cond`'s two branches, `while_loop`'s condition
    /// and body); empty for every other op.
    pub blocks: Vec<Block>,
    /// Slots no later step reads, emptied after this step.
    pub release: Vec<Slot>,
    /// The slots of its fp16 outputs, rounded to fp16 after it runs, when
    /// the function was loaded with `fp16_ops` (see [`rounds_fp16`]);
    /// empty otherwise, so the default mode pays nothing.
    pub round_fp16: Vec<Slot>,
    /// What the op prepared at load from its constant inputs (a
    /// convolution's packed weight, see [`ops::prepare`]); None for most.
    pub prepared: Option<ops::Prepared>,
    /// Whether a `relu` that read only this step's output was fused into
    /// it ([`fuse_relus`]): the step applies it as it stores its output.
    pub relu_after: bool,
}

impl Step {
    /// The slots bound to parameter `name`, if given.
    pub(crate) fn input(&self, name: &str) -> Option<&[Slot]> {
        self.inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_slice())
    }
}

/// A nested block, compiled: steps over the slots of the whole function.
#[derive(Debug)]
pub(crate) struct Block {
    /// Where its inputs go (a loop's variables, bound before every run of
    /// the block), with the types the program declares for them.
    pub inputs: Vec<(Slot, Declared)>,
    /// Its steps, in program order.
    pub steps: Vec<Step>,
    /// The slots holding its results once its steps have run.
    pub outputs: Vec<Slot>,
}

/// A state the function reads or writes.
#[derive(Debug, Clone)]
pub(crate) struct StateInput {
    pub name: String,
    pub slot: Slot,
    pub declared: Declared,
}

/// A compiled function.
#[derive(Debug)]
pub(crate) struct Program {
    /// How many slots a prediction needs.
    pub slot_count: usize,
    /// Constant slots and their values, filled before the first step.
    pub constants: Vec<(Slot, Value)>,
    /// The constants decoded from weights, by value name, as shared with
    /// the other functions of the package.
    pub weights: HashMap<String, Arc<Constant>>,
    /// The function's tensor inputs: name, slot, declared type.
    pub inputs: Vec<(String, Slot, Declared)>,
    /// The function's state inputs.
    pub states: Vec<StateInput>,
    /// The steps, in program order.
    pub steps: Vec<Step>,
    /// The block's outputs: name and slot.
    pub outputs: Vec<(String, Slot)>,
}

/// Compiles function `view` of `package`, sharing weights through `store`.
///
/// With `fp16_ops`, every step's fp16 outputs are marked to be rounded
/// to fp16 after it (its [`Step::round_fp16`]), as the GPU and the Neural
/// Engine round every fp16 value after every op.
pub(crate) fn compile(
    package: &Package,
    view: &FunctionView<'_>,
    store: &WeightStore,
    fp16_ops: bool,
) -> Result<Program> {
    let function = view.name;
    let invalid = |detail: String| Error::InvalidModel {
        function: function.to_string(),
        detail,
    };
    let mut compiler = Compiler {
        package,
        store,
        fp16_ops,
        as_stored: plan_as_stored(view.block()),
        names: HashMap::new(),
        enclosing: Vec::new(),
        keys: HashMap::new(),
        constant_values: HashMap::new(),
        program: Program {
            slot_count: 0,
            constants: Vec::new(),
            weights: HashMap::new(),
            inputs: Vec::new(),
            states: Vec::new(),
            steps: Vec::new(),
            outputs: Vec::new(),
        },
    };

    for input in &view.function.inputs {
        let slot = compiler.define(&input.name).map_err(invalid)?;
        match input.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
            Some(value_type::Type::TensorType(tensor)) => {
                compiler.program.inputs.push((
                    input.name.clone(),
                    slot,
                    Declared::of_tensor(tensor),
                ));
            }
            Some(value_type::Type::StateType(state)) => {
                let declared = Declared::of(state.wrapped_type.as_deref()).ok_or_else(|| {
                    invalid(format!(
                        "state input {:?} does not wrap a tensor",
                        input.name
                    ))
                })?;
                let index = compiler.program.states.len();
                compiler.program.states.push(StateInput {
                    name: input.name.clone(),
                    slot,
                    declared,
                });
                compiler.program.constants.push((slot, Value::State(index)));
            }
            _ => {
                return Err(invalid(format!(
                    "input {:?} is neither a tensor nor a state",
                    input.name
                )))
            }
        }
    }

    let block = view.block();
    let missing = missing_ops(block);
    if !missing.is_empty() {
        return Err(Error::UnsupportedOps {
            function: function.to_string(),
            ops: missing,
        });
    }
    for op in &block.operations {
        compiler.op(function, op)?;
    }

    for output in &block.outputs {
        let slot = compiler
            .lookup(output)
            .ok_or_else(|| invalid(format!("the output {output:?} is not defined")))?;
        compiler.program.outputs.push((output.clone(), slot));
    }
    let mut program = compiler.program;
    fuse_relus(&mut program);
    plan_releases(&mut program);
    drop_unread_constants(&mut program);
    prepare_steps(&mut program);
    Ok(program)
}

/// The op types in `block`, nested blocks included, that the backend
/// does not implement: sorted, each once.
pub(crate) fn missing_ops(block: &mil_spec::Block) -> Vec<String> {
    fn walk<'a>(block: &'a mil_spec::Block, missing: &mut BTreeSet<&'a str>) {
        for op in &block.operations {
            if ops::spec(&op.r#type).is_none() {
                missing.insert(&op.r#type);
            }
            for nested in &op.blocks {
                walk(nested, missing);
            }
        }
    }
    let mut missing = BTreeSet::new();
    walk(block, &mut missing);
    missing.into_iter().map(str::to_string).collect()
}

/// The values of a function kept as stored for the kernels that read them
/// so (see [`plan_as_stored`]).
#[derive(Debug, Default)]
struct AsStored {
    /// Values only `linear` reads, as its weight: their constants (an fp16
    /// blob, a `constexpr_blockwise_shift_scale`) are kept as stored.
    kept: HashSet<String>,
    /// Values only the constexpr ops making those read (each one op):
    /// needed at load only, so neither shared through the weight store nor
    /// kept once that op is evaluated.
    load_only: HashSet<String>,
    /// The constant slots holding load-only values, dropped after use.
    slots: HashSet<Slot>,
}

/// Which values of `block` (nested blocks included) only kernels reading
/// weights as stored read, and which only feed those at load. A value any
/// other op reads, or that a block returns, is in neither set.
fn plan_as_stored(block: &mil_spec::Block) -> AsStored {
    /// Every op of `block` and its nested blocks, and every block output.
    fn walk<'a>(
        block: &'a mil_spec::Block,
        ops: &mut Vec<&'a mil_spec::Operation>,
        returned: &mut Vec<&'a str>,
    ) {
        for op in &block.operations {
            ops.push(op);
            for nested in &op.blocks {
                walk(nested, ops, returned);
            }
        }
        returned.extend(block.outputs.iter().map(String::as_str));
    }
    let (mut ops, mut returned) = (Vec::new(), Vec::new());
    walk(block, &mut ops, &mut returned);
    // Name → whether every reader so far is one `reads` accepts.
    let only = |reads: &dyn Fn(&mil_spec::Operation, &str) -> bool| {
        let mut only: HashMap<&str, bool> = HashMap::new();
        for op in &ops {
            for (param, argument) in &op.inputs {
                for binding in &argument.arguments {
                    if let Some(binding::Binding::Name(name)) = &binding.binding {
                        *only.entry(name).or_insert(true) &= reads(op, param);
                    }
                }
            }
        }
        for name in &returned {
            only.insert(name, false);
        }
        only.into_iter()
            .filter(|&(_, yes)| yes)
            .map(|(name, _)| name.to_string())
            .collect::<HashSet<String>>()
    };
    let kept = only(&|op, param| op.r#type == "linear" && param == "weight");
    let mut load_only = only(&|op, _| {
        matches!(
            ops::spec(&op.r#type).map(|spec| spec.kind),
            Some(Kind::Constexpr(c)) if ops::constexpr::keeps_stored(c)
        ) && matches!(op.outputs.as_slice(), [output] if kept.contains(&output.name))
    });
    // Each read by one op, which drops it once evaluated.
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for op in &ops {
        for argument in op.inputs.values() {
            for binding in &argument.arguments {
                if let Some(binding::Binding::Name(name)) = &binding.binding {
                    *readers.entry(name).or_default() += 1;
                }
            }
        }
    }
    load_only.retain(|name| readers.get(name.as_str()) == Some(&1));
    AsStored {
        kept,
        load_only,
        slots: HashSet::new(),
    }
}

struct Compiler<'a> {
    package: &'a Package,
    store: &'a WeightStore,
    /// Whether fp16 op outputs are rounded after every op.
    fp16_ops: bool,
    /// The values kept as stored, and those needed at load only.
    as_stored: AsStored,
    /// Value name → slot, for the block being compiled.
    names: HashMap<String, Slot>,
    /// The same for the blocks enclosing it, innermost last.
    enclosing: Vec<HashMap<String, Slot>>,
    /// Constant slot → where its value comes from.
    keys: HashMap<Slot, ConstKey>,
    /// Constant slot → its value (for evaluating constexpr ops).
    constant_values: HashMap<Slot, Value>,
    program: Program,
}

impl Compiler<'_> {
    fn new_slot(&mut self) -> Slot {
        self.program.slot_count += 1;
        self.program.slot_count - 1
    }

    /// The slot of the value `name` visible from the block being compiled.
    fn lookup(&self, name: &str) -> Option<Slot> {
        std::iter::once(&self.names)
            .chain(self.enclosing.iter().rev())
            .find_map(|names| names.get(name))
            .copied()
    }

    fn define(&mut self, name: &str) -> std::result::Result<Slot, String> {
        if self.lookup(name).is_some() {
            return Err(format!("the value {name:?} is defined twice"));
        }
        let slot = self.new_slot();
        self.names.insert(name.to_string(), slot);
        Ok(slot)
    }

    /// Makes `value` (an inline immediate or blob) a constant slot; with
    /// `as_stored`, a weight the kernels read as stored stays so
    /// ([`weights::decode_stored`]); with `load_only`, it is decoded
    /// without the weight store (only a constexpr op reads it, at load).
    fn inline(
        &mut self,
        value: &mil_spec::Value,
        as_stored: bool,
        load_only: bool,
    ) -> std::result::Result<Slot, String> {
        let mut key = ConstKey::of_value(value);
        let decode = |package| {
            if as_stored {
                weights::decode_stored(package, value)
            } else {
                weights::decode(package, value)
            }
        };
        if as_stored {
            key = ConstKey::Stored(Box::new(key));
        }
        let decoded = if key.is_weight() && !load_only {
            self.store
                .get_or_insert(key.clone(), || decode(self.package))?
                .value
                .clone()
        } else {
            decode(self.package)?
        };
        let slot = self.new_slot();
        self.keys.insert(slot, key);
        self.constant_values.insert(slot, decoded.clone());
        self.program.constants.push((slot, decoded));
        Ok(slot)
    }

    fn op(&mut self, function: &str, op: &mil_spec::Operation) -> Result<()> {
        let op_type = op.r#type.as_str();
        let name = op_name(op)
            .or_else(|| op.outputs.first().map(|o| o.name.as_str()))
            .unwrap_or("")
            .to_string();
        let invalid = |detail: String| Error::InvalidModel {
            function: function.to_string(),
            detail: format!("op {name:?} ({op_type}): {detail}"),
        };
        let unsupported = || Error::UnsupportedOps {
            function: function.to_string(),
            ops: vec![op_type.to_string()],
        };
        let spec = ops::spec(op_type).ok_or_else(unsupported)?;
        let control_flow = matches!(spec.kind, Kind::WhileLoop | Kind::Cond);
        if !control_flow && !op.blocks.is_empty() {
            return Err(invalid(format!(
                "has {} nested blocks, which {op_type} does not take",
                op.blocks.len()
            )));
        }

        // Parameters come as input bindings and, for `const` and the
        // constexpr ops of iOS 17 and before, as attributes.
        let mut bindings: BTreeMap<&str, Vec<Binding<'_>>> = BTreeMap::new();
        for (param, argument) in &op.inputs {
            let list = argument
                .arguments
                .iter()
                .map(|b| match &b.binding {
                    Some(binding::Binding::Name(n)) => Ok(Binding::Name(n)),
                    Some(binding::Binding::Value(v)) => Ok(Binding::Value(v)),
                    None => Err(invalid(format!("parameter {param:?} has an empty binding"))),
                })
                .collect::<Result<Vec<_>>>()?;
            bindings.insert(param, list);
        }
        for (param, value) in &op.attributes {
            if param == "name" {
                continue;
            }
            if bindings.contains_key(param.as_str()) {
                return Err(invalid(format!(
                    "parameter {param:?} is given both as an input and as an attribute"
                )));
            }
            bindings.insert(param, vec![Binding::Value(value)]);
        }
        for param in bindings.keys() {
            if !spec.required.contains(param) && !spec.optional.contains(param) {
                return Err(invalid(format!(
                    "has parameter {param:?}, which {op_type} does not take in the reference \
                     backend (expected {})",
                    spec.required
                        .iter()
                        .chain(spec.optional)
                        .map(|p| format!("{p:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        for param in spec.required {
            if bindings.get(param).is_none_or(Vec::is_empty) {
                return Err(invalid(format!("lacks its required input {param:?}")));
            }
        }

        // A constant only `linear` reads as its weight stays as stored; one
        // only the constexpr op making such a weight reads is load-only.
        let const_output = |set: &HashSet<String>| {
            spec.kind == Kind::Const && op.outputs.first().is_some_and(|o| set.contains(&o.name))
        };
        let (as_stored, mut load_only) = (
            const_output(&self.as_stored.kept),
            const_output(&self.as_stored.load_only),
        );
        // So are the inline inputs of a constexpr op making a weight kept
        // as stored (coremltools binds a quantized weight's data so).
        let inline_load_only = matches!(spec.kind, Kind::Constexpr(c) if ops::constexpr::keeps_stored(c))
            && matches!(op.outputs.as_slice(), [o] if self.as_stored.kept.contains(&o.name));
        load_only |= inline_load_only;
        let mut inputs: Vec<(String, Vec<Slot>)> = Vec::new();
        for (param, list) in &bindings {
            let mut slots = Vec::with_capacity(list.len());
            for binding in list {
                slots.push(match binding {
                    Binding::Name(n) => self.lookup(n).ok_or_else(|| {
                        invalid(format!(
                            "input {param:?} refers to {n:?}, which is not defined before it"
                        ))
                    })?,
                    Binding::Value(v) => {
                        let slot = self
                            .inline(v, as_stored, load_only)
                            .map_err(|e| invalid(format!("input {param:?}: {e}")))?;
                        if inline_load_only {
                            self.as_stored.slots.insert(slot);
                        }
                        slot
                    }
                });
            }
            inputs.push((param.to_string(), slots));
        }

        let mut outputs = Vec::with_capacity(op.outputs.len());
        for output in &op.outputs {
            let declared = Declared::of(output.r#type.as_ref()).ok_or_else(|| {
                invalid(format!(
                    "output {:?} is not declared as a tensor",
                    output.name
                ))
            })?;
            outputs.push((output.name.as_str(), declared));
        }
        if let Some(count) = spec.outputs {
            if outputs.len() != count {
                return Err(invalid(format!(
                    "has {} outputs, {op_type} gives {count}",
                    outputs.len()
                )));
            }
        }

        match spec.kind {
            Kind::Const => {
                let slot = inputs[0].1[0];
                let (output, declared) = &outputs[0];
                let value = self
                    .constant_values
                    .get(&slot)
                    .cloned()
                    .ok_or_else(|| invalid("its value is not a constant".to_string()))?;
                let value = conform(value, declared.data_type).map_err(invalid)?;
                if !declared.admits(&value.shape()) {
                    return Err(invalid(format!(
                        "holds a value of shape {:?}, but its output is declared {:?}",
                        value.shape(),
                        declared.dims
                    )));
                }
                let key = self.keys[&slot].clone();
                self.constant(output, key, || Ok(value)).map_err(invalid)?;
                if self.as_stored.load_only.contains(*output) {
                    // Held by the output's slot until its one reader runs.
                    self.forget(&[slot]);
                    if let Some(defined) = self.lookup(output) {
                        self.as_stored.slots.insert(defined);
                    }
                }
            }
            Kind::Constexpr(constexpr) => {
                let mut arguments: HashMap<&str, Value> = HashMap::new();
                let mut key_inputs = Vec::new();
                for (param, slots) in &inputs {
                    let mut keys = Vec::new();
                    for slot in slots {
                        let value = self
                            .constant_values
                            .get(slot)
                            .ok_or_else(|| invalid(format!("input {param:?} is not a constant")))?;
                        arguments.insert(param.as_str(), value.clone());
                        keys.push(self.keys[slot].clone());
                    }
                    key_inputs.push((param.clone(), keys));
                }
                // A blockwise-quantized or palettized weight only
                // `linear` reads stays compressed (when its form allows).
                let kept = ops::constexpr::keeps_stored(constexpr)
                    && matches!(outputs.as_slice(), [(name, _)] if self.as_stored.kept.contains(*name));
                // Evaluated once, on the first output's demand; each output
                // is a constant of its own, shared under its own key.
                let mut results: Option<Vec<Value>> = None;
                for (index, (output, declared)) in outputs.iter().enumerate() {
                    let key = ConstKey::Op {
                        op_type: op_type.to_string(),
                        inputs: key_inputs.clone(),
                        output_type: op.outputs[index]
                            .r#type
                            .as_ref()
                            .map(Message::encode_to_vec)
                            .unwrap_or_default(),
                        index,
                    };
                    let key = if kept {
                        ConstKey::Stored(Box::new(key))
                    } else {
                        key
                    };
                    let declared = declared.clone();
                    self.constant(output, key, || {
                        if kept {
                            if let Some(weight) =
                                ops::constexpr::as_stored(constexpr, &arguments, &declared)?
                            {
                                return Ok(weight);
                            }
                        }
                        if results.is_none() {
                            results = Some(ops::constexpr::evaluate(constexpr, &arguments)?);
                        }
                        let value = results
                            .as_ref()
                            .and_then(|r| r.get(index))
                            .cloned()
                            .ok_or_else(|| {
                                format!("computed no output {index} (interpreter bug)")
                            })?;
                        materialize(value, &declared)
                    })
                    .map_err(invalid)?;
                }
                let used: Vec<Slot> = inputs
                    .iter()
                    .flat_map(|(_, slots)| slots.iter().copied())
                    .filter(|slot| self.as_stored.slots.contains(slot))
                    .collect();
                self.forget(&used);
            }
            kind => {
                // Nested blocks are compiled before the op's outputs are
                // defined: they cannot see them.
                let blocks = if control_flow {
                    self.nested(function, op, kind, &inputs, outputs.len(), &invalid)?
                } else {
                    Vec::new()
                };
                let mut slots = Vec::with_capacity(outputs.len());
                let mut round_fp16 = Vec::new();
                for (output, declared) in outputs {
                    let slot = self.define(output).map_err(invalid)?;
                    if self.fp16_ops && rounds_fp16(kind, &declared) {
                        round_fp16.push(slot);
                    }
                    slots.push((slot, declared));
                }
                self.program.steps.push(Step {
                    kind,
                    op_type: op_type.to_string(),
                    name,
                    inputs,
                    outputs: slots,
                    blocks,
                    release: Vec::new(),
                    round_fp16,
                    prepared: None,
                    relu_after: false,
                });
            }
        }
        Ok(())
    }

    /// Compiles the nested blocks of control-flow op `op`, checking that
    /// they fit it: `while_loop` has a condition block and a body block,
    /// each taking the loop variables, the condition giving one value and
    /// the body one per loop variable (and the op one output for each);
    /// `cond` has two branches taking nothing and giving one value per
    /// output of the op.
    fn nested(
        &mut self,
        function: &str,
        op: &mil_spec::Operation,
        kind: Kind,
        inputs: &[(String, Vec<Slot>)],
        outputs: usize,
        invalid: &dyn Fn(String) -> Error,
    ) -> Result<Vec<Block>> {
        let [first, second] = op.blocks.as_slice() else {
            return Err(invalid(format!(
                "has {} nested blocks, {} has two",
                op.blocks.len(),
                op.r#type
            )));
        };
        // Errors inside a block name the op holding it, then their own.
        let within = |error: Error| match error {
            Error::InvalidModel { detail, .. } => invalid(detail),
            other => other,
        };
        let blocks = vec![
            self.block(function, first).map_err(within)?,
            self.block(function, second).map_err(within)?,
        ];
        let check = |fits: bool, detail: String| {
            if fits {
                Ok(())
            } else {
                Err(invalid(detail))
            }
        };
        if kind == Kind::WhileLoop {
            let n = inputs
                .iter()
                .find(|(param, _)| param == "loop_vars")
                .map_or(0, |(_, slots)| slots.len());
            let (condition, body) = (&blocks[0], &blocks[1]);
            check(
                condition.inputs.len() == n,
                format!(
                    "its condition block takes {} inputs for {n} loop variables",
                    condition.inputs.len()
                ),
            )?;
            check(
                condition.outputs.len() == 1,
                format!(
                    "its condition block gives {} values, not one bool",
                    condition.outputs.len()
                ),
            )?;
            check(
                body.inputs.len() == n,
                format!(
                    "its body block takes {} inputs for {n} loop variables",
                    body.inputs.len()
                ),
            )?;
            check(
                body.outputs.len() == n,
                format!(
                    "its body block gives {} values for {n} loop variables",
                    body.outputs.len()
                ),
            )?;
            check(
                outputs == n,
                format!("it has {outputs} outputs for {n} loop variables"),
            )?;
        } else {
            for (block, branch) in blocks.iter().zip(["true", "false"]) {
                check(
                    block.inputs.is_empty(),
                    format!(
                        "its {branch} branch takes {} inputs; a branch takes none",
                        block.inputs.len()
                    ),
                )?;
                check(
                    block.outputs.len() == outputs,
                    format!(
                        "its {branch} branch gives {} values for the op's {outputs} outputs",
                        block.outputs.len()
                    ),
                )?;
            }
        }
        Ok(blocks)
    }

    /// Compiles nested block `block` in a scope of its own.
    fn block(&mut self, function: &str, block: &mil_spec::Block) -> Result<Block> {
        let outer_steps = std::mem::take(&mut self.program.steps);
        let outer_names = std::mem::take(&mut self.names);
        self.enclosing.push(outer_names);
        let compiled = self.block_interface(function, block);
        self.names = self.enclosing.pop().unwrap_or_default();
        let steps = std::mem::replace(&mut self.program.steps, outer_steps);
        Ok(Block { steps, ..compiled? })
    }

    /// Nested block `block` with its inputs and outputs, its ops compiled
    /// into `self.program.steps` (its `steps` left empty).
    fn block_interface(&mut self, function: &str, block: &mil_spec::Block) -> Result<Block> {
        let invalid = |detail: String| Error::InvalidModel {
            function: function.to_string(),
            detail,
        };
        let mut inputs = Vec::with_capacity(block.inputs.len());
        for input in &block.inputs {
            let declared = Declared::of(input.r#type.as_ref()).ok_or_else(|| {
                invalid(format!(
                    "the block input {:?} is not a tensor (the reference backend runs \
                     tensors, not lists)",
                    input.name
                ))
            })?;
            let slot = self.define(&input.name).map_err(invalid)?;
            inputs.push((slot, declared));
        }
        for op in &block.operations {
            self.op(function, op)?;
        }
        let mut outputs = Vec::with_capacity(block.outputs.len());
        for output in &block.outputs {
            outputs.push(self.lookup(output).ok_or_else(|| {
                invalid(format!(
                    "the block output {output:?} is not defined in the block or around it"
                ))
            })?);
        }
        Ok(Block {
            inputs,
            steps: Vec::new(),
            outputs,
        })
    }

    /// Drops constant `slots` (load-only values, once read): their values
    /// are freed now rather than when the function is compiled.
    fn forget(&mut self, slots: &[Slot]) {
        if slots.is_empty() {
            return;
        }
        for slot in slots {
            self.constant_values.remove(slot);
        }
        self.program
            .constants
            .retain(|(slot, _)| !slots.contains(slot));
    }

    /// Defines `name` as a constant under `key`, shared through the weight
    /// store when it derives from weights.
    fn constant(
        &mut self,
        name: &str,
        key: ConstKey,
        make: impl FnOnce() -> std::result::Result<Value, String>,
    ) -> std::result::Result<(), String> {
        let value = if key.is_weight() && !self.as_stored.load_only.contains(name) {
            let shared = self.store.get_or_insert(key.clone(), make)?;
            let value = shared.value.clone();
            self.program.weights.insert(name.to_string(), shared);
            value
        } else {
            make()?
        };
        let slot = self.define(name)?;
        self.keys.insert(slot, key);
        self.constant_values.insert(slot, value.clone());
        self.program.constants.push((slot, value));
        Ok(())
    }
}

enum Binding<'a> {
    Name(&'a str),
    Value(&'a mil_spec::Value),
}

/// Whether an output of an op of `kind`, declared `declared`, needs
/// rounding to fp16 after the op in `fp16_ops` mode: when it is declared
/// fp16 and the op may compute a value fp16 cannot hold.
///
/// In that mode every fp16 value in a slot already holds an fp16 value:
/// inputs declared fp16 are rounded when bound, constants declared fp16
/// are stored as fp16 (and decompressed ones rounded at load), an fp16
/// state holds what was rounded when written, and every op computing
/// one is rounded here. So the ops that only move or pick elements (and
/// `cast`, which rounds itself) give fp16 values already, and are not
/// rounded again: a reshape or `read_state` of a large tensor costs no
/// pass over it, nor the copy a shared array would take. Nor are the
/// outputs of `cond` and `while_loop`, which are values their blocks'
/// ops made (or loop variables, which were). Rounding an fp16 value
/// again would change nothing: this only saves the work.
pub(crate) fn rounds_fp16(kind: Kind, declared: &Declared) -> bool {
    if declared.data_type != mil_spec::DataType::Float16 {
        return false;
    }
    !matches!(
        kind,
        Kind::Reshape
            | Kind::Transpose
            | Kind::ExpandDims
            | Kind::Squeeze
            | Kind::Concat
            | Kind::Split
            | Kind::Stack
            | Kind::SliceByIndex
            | Kind::SliceBySize
            | Kind::SliceUpdate
            | Kind::Tile
            | Kind::Reverse
            | Kind::ReverseSequence
            | Kind::Crop
            | Kind::Gather
            | Kind::GatherAlongAxis
            | Kind::GatherNd
            | Kind::Rearrange(_)
            | Kind::Select
            | Kind::Identity
            | Kind::Cast
            | Kind::ReadState
            | Kind::WhileLoop
            | Kind::Cond
    )
}

/// A constexpr result as the program declares it: of the declared shape,
/// and materialized in the declared precision (an fp16 weight holds fp16
/// values, whatever it was computed in).
fn materialize(value: Value, declared: &Declared) -> std::result::Result<Value, String> {
    if !declared.admits(&value.shape()) {
        return Err(format!(
            "computes a value of shape {:?}, but its output is declared {:?}",
            value.shape(),
            declared.dims
        ));
    }
    Ok(match conform(value, declared.data_type)? {
        Value::Float(a) => Value::Float(round_float(a, declared.data_type)),
        other => other,
    })
}

/// Drops the constants no step reads and the function does not return:
/// the inline values of `const` ops (whose outputs are slots of their
/// own) and what only constexpr ops read at load (a quantized weight's
/// integers, once it is decompressed or kept as stored), so a prediction
/// binds and the function holds only what runs.
fn drop_unread_constants(program: &mut Program) {
    let mut read: HashSet<Slot> = program.outputs.iter().map(|(_, slot)| *slot).collect();
    read.extend(program.states.iter().map(|state| state.slot));
    for step in &program.steps {
        step.visit_slots(&mut |slot| {
            read.insert(slot);
        });
    }
    program.constants.retain(|(slot, _)| read.contains(slot));
}

/// Fuses each `relu` into the convolution right before it, when the relu
/// is the only reader of the convolution's output (no other step, in any
/// block, and not the function's outputs): the convolution then applies
/// `max(0, ·)` as its kernel stores each element and writes the relu's
/// output, and the relu step is gone. The values are the same bits: ReLU
/// of the same sums. Steps rounding fp16 (`fp16_ops`) are left alone.
fn fuse_relus(program: &mut Program) {
    let mut reads: HashMap<Slot, usize> = HashMap::new();
    for step in &program.steps {
        step.visit_reads(&mut |slot| *reads.entry(slot).or_default() += 1);
    }
    for (_, slot) in &program.outputs {
        *reads.entry(*slot).or_default() += 1;
    }
    let steps = std::mem::take(&mut program.steps);
    let mut fused: Vec<Step> = Vec::with_capacity(steps.len());
    for step in steps {
        if let Some(conv) = fused.last_mut() {
            if fusable(conv, &step, &reads) {
                conv.outputs = step.outputs;
                conv.relu_after = true;
                continue;
            }
        }
        fused.push(step);
    }
    program.steps = fused;
}

/// Whether `relu` can be fused into `conv`, the step before it (see
/// [`fuse_relus`]); `reads` counts every step's and output's reads of a
/// slot.
fn fusable(conv: &Step, relu: &Step, reads: &HashMap<Slot, usize>) -> bool {
    let [(conv_output, _)] = conv.outputs.as_slice() else {
        return false;
    };
    conv.kind == ops::Kind::Conv
        && !conv.relu_after
        && relu.kind == ops::Kind::Unary(ops::Unary::Relu)
        && relu.input("x") == Some(std::slice::from_ref(conv_output))
        && relu.outputs.len() == 1
        && reads.get(conv_output) == Some(&1)
        && conv.round_fp16.is_empty()
        && relu.round_fp16.is_empty()
}

/// Decides after which step each slot can be emptied: the last step that
/// reads it (or the step that writes it, if nothing reads it), a step
/// holding nested blocks counting as reading every slot they read. The
/// function's outputs and states are kept to the end.
fn plan_releases(program: &mut Program) {
    let mut keep: HashSet<Slot> = program.outputs.iter().map(|(_, slot)| *slot).collect();
    keep.extend(program.states.iter().map(|state| state.slot));
    // At the top level every other slot can go, constants included: each
    // prediction fills them anew.
    plan(&mut program.steps, &keep, &|_| true);
}

/// Plans the releases of one block's `steps`: slots for which `releasable`
/// holds and that are not in `keep`, each after the last step touching
/// it. Then the same within each nested block, which keeps its outputs
/// (read when it finishes) and releases only what it defines itself: a
/// constant is filled once per prediction, and a loop body reads the
/// values around it again on its next iteration.
fn plan(steps: &mut [Step], keep: &HashSet<Slot>, releasable: &dyn Fn(Slot) -> bool) {
    let mut last: HashMap<Slot, usize> = HashMap::new();
    for (index, step) in steps.iter().enumerate() {
        step.visit_slots(&mut |slot| {
            last.insert(slot, index);
        });
    }
    for (slot, index) in last {
        if releasable(slot) && !keep.contains(&slot) {
            steps[index].release.push(slot);
        }
    }
    for step in steps.iter_mut() {
        step.release.sort_unstable();
        for block in &mut step.blocks {
            let mut own = HashSet::new();
            block.visit_defined(&mut |slot| {
                own.insert(slot);
            });
            let keep: HashSet<Slot> = block.outputs.iter().copied().collect();
            plan(&mut block.steps, &keep, &|slot| own.contains(&slot));
        }
    }
}

impl Step {
    /// Calls `visit` with every slot the step reads, in its nested blocks
    /// too (once per read).
    fn visit_reads(&self, visit: &mut dyn FnMut(Slot)) {
        for (_, slots) in &self.inputs {
            slots.iter().for_each(|&slot| visit(slot));
        }
        for block in &self.blocks {
            for step in &block.steps {
                step.visit_reads(visit);
            }
            block.outputs.iter().for_each(|&slot| visit(slot));
        }
    }

    /// Calls `visit` with every slot the step reads or writes, in its
    /// nested blocks too.
    fn visit_slots(&self, visit: &mut dyn FnMut(Slot)) {
        for (_, slots) in &self.inputs {
            slots.iter().for_each(|&slot| visit(slot));
        }
        for (slot, _) in &self.outputs {
            visit(*slot);
        }
        for block in &self.blocks {
            for (slot, _) in &block.inputs {
                visit(*slot);
            }
            for step in &block.steps {
                step.visit_slots(visit);
            }
            block.outputs.iter().for_each(|&slot| visit(slot));
        }
    }
}

impl Block {
    /// Calls `visit` with every slot the block defines: its inputs and the
    /// outputs of its steps, nested ones included (constants are not
    /// steps).
    fn visit_defined(&self, visit: &mut dyn FnMut(Slot)) {
        for (slot, _) in &self.inputs {
            visit(*slot);
        }
        for step in &self.steps {
            for (slot, _) in &step.outputs {
                visit(*slot);
            }
            for block in &step.blocks {
                block.visit_defined(visit);
            }
        }
    }
}

/// Lets every step prepare what it reads from constants, once, at load
/// ([`ops::prepare`]), nested blocks' steps included.
fn prepare_steps(program: &mut Program) {
    fn walk(steps: &mut [Step], constants: &HashMap<Slot, &Value>) {
        for step in steps {
            step.prepared = ops::prepare(step, &|slot| constants.get(&slot).copied());
            for block in &mut step.blocks {
                walk(&mut block.steps, constants);
            }
        }
    }
    let constants: HashMap<Slot, &Value> = program.constants.iter().map(|(s, v)| (*s, v)).collect();
    walk(&mut program.steps, &constants);
}
