//! The quantization ops, as coremltools defines them
//! (`ops/defs/iOS17/quantization_ops.py`, `optimize/_utils.py`,
//! `ops/defs/iOS15/conv.py`):
//!
//! - `quantize`: `clip(round(input / scale) + zero_point)` to int8 or
//!   uint8, rounding half to even (numpy's `around`), computed in f32;
//! - `dequantize`: `(input - zero_point) * scale`;
//! - `conv_quantized`: a `conv` whose uint8 weight is
//!   `weight * quant_scale + quant_bias` (`linear`).
//!
//! Scale and zero point are per tensor (scalars, no `axis`) or per axis
//! (vectors as long as `input`'s `axis`). Integer results are held as i32
//! within the type's range (see `value.rs`).

use ndarray::{ArrayD, IxDyn};

use super::{axis, conv, Args};
use crate::runtime::reference::program::Step;
use crate::runtime::reference::value::{FloatArray, OpResult, Value};

/// One value per element of a tensor of `shape`: the scalar, or the
/// vector's entry at the element's index along `axis`.
struct PerAxis {
    values: Vec<f32>,
    /// The stride of `axis` in row-major order and its length, for a
    /// vector; `None` for a scalar.
    layout: Option<(usize, usize)>,
}

impl PerAxis {
    fn new(param: &str, value: &Value, shape: &[usize], axis_param: Option<i64>) -> OpResult<Self> {
        let values: Vec<f32> = value.to_float()?.iter().copied().collect();
        match (value.shape().len(), axis_param) {
            (0, None) => Ok(PerAxis {
                values,
                layout: None,
            }),
            (0, Some(_)) => Err(format!(
                "axis is given, but {param} is a scalar (per-tensor)"
            )),
            (1, Some(a)) => {
                let a = axis(a, shape.len())?;
                if values.len() != shape[a] {
                    return Err(format!(
                        "{param} has {} elements, but axis {a} of the input (shape {shape:?}) has {}",
                        values.len(),
                        shape[a]
                    ));
                }
                let stride = shape[a + 1..].iter().product();
                Ok(PerAxis {
                    values,
                    layout: Some((stride, shape[a])),
                })
            }
            (1, None) => Err(format!("{param} is a vector, but no axis is given")),
            (rank, _) => Err(format!(
                "{param} has rank {rank}; it must be a scalar or a vector"
            )),
        }
    }

    /// The value for the element at row-major `index`.
    fn at(&self, index: usize) -> f32 {
        match self.layout {
            None => self.values[0],
            Some((stride, len)) => self.values[(index / stride.max(1)) % len],
        }
    }
}

/// The scale and zero point of `args` for an input of `shape`.
fn parameters(args: &Args<'_>, shape: &[usize]) -> OpResult<(PerAxis, Option<PerAxis>)> {
    let axis_param = args.opt_i64("axis")?;
    let scale = PerAxis::new("scale", args.required("scale")?, shape, axis_param)?;
    let zero_point = args
        .get("zero_point")?
        .map(|z| PerAxis::new("zero_point", z, shape, axis_param))
        .transpose()?;
    Ok((scale, zero_point))
}

pub(super) fn quantize(args: &Args<'_>) -> OpResult<Value> {
    let input = args.float("input")?;
    let (low, high) = match args.opt_str("output_dtype")? {
        Some("int8") => (f32::from(i8::MIN), f32::from(i8::MAX)),
        Some("uint8") => (0.0, f32::from(u8::MAX)),
        Some(other) => return Err(format!("output_dtype {other:?} is not int8 or uint8")),
        None => return Err("lacks its required input \"output_dtype\"".to_string()),
    };
    let shape = input.shape().to_vec();
    let (scale, zero_point) = parameters(args, &shape)?;
    if scale.values.iter().all(|&s| s == 0.0) {
        return Err("scale is 0".to_string());
    }
    let data = input
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let q =
                (x / scale.at(i)).round_ties_even() + zero_point.as_ref().map_or(0.0, |z| z.at(i));
            // NaN saturates to 0 here; numpy leaves its cast undefined.
            q.clamp(low, high) as i32
        })
        .collect();
    Value::int(shape, data)
}

/// `(input - zero_point) * scale` for the integers `input`.
fn dequantized(input: &Value, args: &Args<'_>) -> OpResult<FloatArray> {
    let input = input.to_float()?;
    let shape = input.shape().to_vec();
    let (scale, zero_point) = parameters(args, &shape)?;
    let data = input
        .iter()
        .enumerate()
        .map(|(i, &q)| (q - zero_point.as_ref().map_or(0.0, |z| z.at(i))) * scale.at(i))
        .collect();
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), data)
        .map_err(|e| e.to_string())?
        .into_shared())
}

pub(super) fn dequantize(args: &Args<'_>) -> OpResult<Value> {
    if let input @ Value::Float(_) = args.required("input")? {
        return Err(format!(
            "input is {}, not the int8 or uint8 tensor dequantize takes",
            input.kind()
        ));
    }
    Ok(Value::Float(dequantized(args.required("input")?, args)?))
}

/// `weight * quant_scale + quant_bias`, the scale and bias scalars or one
/// per output channel (the weight's axis 0), as the neural-network
/// builder's `quant_scale` / `quant_bias` are.
fn linear_weight(args: &Args<'_>) -> OpResult<FloatArray> {
    let weight = args.float("weight")?;
    let shape = weight.shape().to_vec();
    let per_channel = |name: &str| -> OpResult<PerAxis> {
        let values: Vec<f32> = args.float(name)?.iter().copied().collect();
        match values.len() {
            1 => PerAxis::new(name, &Value::float(Vec::new(), values)?, &shape, None),
            n => PerAxis::new(name, &Value::float(vec![n], values)?, &shape, Some(0)),
        }
    };
    let (scale, bias) = (per_channel("quant_scale")?, per_channel("quant_bias")?);
    let data = weight
        .iter()
        .enumerate()
        .map(|(i, &w)| w * scale.at(i) + bias.at(i))
        .collect();
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), data)
        .map_err(|e| e.to_string())?
        .into_shared())
}

pub(super) fn conv_quantized(args: &Args<'_>) -> OpResult<Value> {
    let weight = match args.opt_str("quantization_type")? {
        Some("linear") => linear_weight(args)?,
        // coremltools' definition gives no meaning to quant_scale and
        // quant_bias for a lookup table, and no converter emits one.
        Some("lut") => {
            return Err(
                "quantization_type \"lut\" has no definition in coremltools 9.0 (only \
                 `linear`'s W * quant_scale + quant_bias); convert the weights to a \
                 constexpr_lut_to_dense and a conv instead"
                    .to_string(),
            )
        }
        Some(other) => return Err(format!("quantization_type {other:?} is not linear or lut")),
        None => return Err("lacks its required input \"quantization_type\"".to_string()),
    };
    let (step, env) = with_input(args, "weight", Value::Float(weight));
    conv::conv(&Args {
        step: &step,
        env: &env,
    })
}

/// A step like `args`' reading copies of its values, with parameter
/// `name` bound to `value` instead: the shared kernel then runs on a
/// computed input (the dequantized weight).
fn with_input(args: &Args<'_>, name: &str, value: Value) -> (Step, Vec<Option<Value>>) {
    let mut env = Vec::new();
    let mut inputs = Vec::new();
    for (param, slots) in &args.step.inputs {
        let mut bound = Vec::new();
        for slot in slots {
            bound.push(env.len());
            env.push(if param == name {
                Some(value.clone())
            } else {
                args.env.get(*slot).cloned().flatten()
            });
        }
        inputs.push((param.clone(), bound));
    }
    let step = Step {
        kind: args.step.kind,
        op_type: args.step.op_type.clone(),
        name: args.step.name.clone(),
        inputs,
        outputs: args.step.outputs.clone(),
        blocks: Vec::new(),
        release: Vec::new(),
        round_fp16: Vec::new(),
        // Nothing packed at load: the weight is the one dequantized here.
        prepared: None,
        relu_after: args.step.relu_after,
    };
    (step, env)
}
