//! Running a compiled program: slots filled with the constants and inputs,
//! steps run in order, state writes applied when the whole prediction has
//! succeeded.

use super::super::error::{Error, Result};
use super::ops::{self, Args, Kind};
use super::program::{Program, Slot};
use super::value::{conform, round_float, OpResult, Value};

/// The current value of each state a program reads, in the program's state
/// order, and what the prediction wrote to them.
pub(crate) struct StateValues {
    pub current: Vec<Value>,
    pub written: Vec<Option<Value>>,
}

/// Runs `program` (of function `function`) on `inputs`, reading and
/// writing `states`. Returns the value of each block output.
pub(crate) fn run(
    function: &str,
    program: &Program,
    inputs: Vec<(Slot, Value)>,
    states: &mut StateValues,
) -> Result<Vec<(String, Value)>> {
    let mut env: Vec<Option<Value>> = vec![None; program.slot_count];
    for (slot, value) in &program.constants {
        env[*slot] = Some(value.clone());
    }
    for (slot, value) in inputs {
        env[slot] = Some(value);
    }
    for step in &program.steps {
        let fail = |detail: String| Error::InvalidModel {
            function: function.to_string(),
            detail: format!("op {:?} ({}): {detail}", step.name, step.op_type),
        };
        let results = {
            let args = Args { step, env: &env };
            match step.kind {
                Kind::ReadState => read_state(&args, states).map(|v| vec![v]),
                Kind::WriteState => write_state(&args, program, states).map(|()| Vec::new()),
                kind => ops::run(kind, &args),
            }
            .map_err(fail)?
        };
        if results.len() != step.outputs.len() {
            return Err(fail(format!(
                "computed {} results for {} outputs (interpreter bug)",
                results.len(),
                step.outputs.len()
            )));
        }
        for (value, (slot, declared)) in results.into_iter().zip(&step.outputs) {
            let value = conform(value, declared.data_type).map_err(fail)?;
            let shape = value.shape();
            if !declared.admits(&shape) {
                return Err(fail(format!(
                    "computed shape {shape:?}, but the program declares {}",
                    describe_dims(declared.dims.as_deref())
                )));
            }
            env[*slot] = Some(value);
        }
        for slot in &step.release {
            env[*slot] = None;
        }
    }
    program
        .outputs
        .iter()
        .map(|(name, slot)| {
            // Outputs are never released, so each is still here (a clone
            // shares the array).
            env[*slot]
                .clone()
                .map(|v| (name.clone(), v))
                .ok_or_else(|| Error::InvalidModel {
                    function: function.to_string(),
                    detail: format!("output {name:?} was not computed"),
                })
        })
        .collect()
}

fn describe_dims(dims: Option<&[Option<usize>]>) -> String {
    match dims {
        None => "an unknown rank".to_string(),
        Some(dims) => format!(
            "[{}]",
            dims.iter()
                .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn state_index(args: &Args<'_>) -> OpResult<usize> {
    match args.required("input")? {
        Value::State(index) => Ok(*index),
        other => Err(format!(
            "input \"input\" must be a state, not {}",
            other.kind()
        )),
    }
}

fn read_state(args: &Args<'_>, states: &StateValues) -> OpResult<Value> {
    let index = state_index(args)?;
    states
        .written
        .get(index)
        .and_then(Option::as_ref)
        .or_else(|| states.current.get(index))
        .cloned()
        .ok_or_else(|| format!("reads state {index}, which is not bound (interpreter bug)"))
}

fn write_state(args: &Args<'_>, program: &Program, states: &mut StateValues) -> OpResult<()> {
    let index = state_index(args)?;
    let state = program
        .states
        .get(index)
        .ok_or_else(|| format!("writes state {index}, which does not exist (interpreter bug)"))?;
    let data = args.required("data")?;
    let shape = data.shape();
    if !state.declared.admits(&shape) {
        return Err(format!(
            "writes a value of shape {shape:?} to state {:?} of shape {}",
            state.name,
            describe_dims(state.declared.dims.as_deref())
        ));
    }
    // The buffer holds values of its own precision (an fp16 KV cache
    // stores fp16 values).
    let value = match conform(data.clone(), state.declared.data_type)? {
        Value::Float(a) => Value::Float(round_float(a, state.declared.data_type)),
        other => other,
    };
    states.written[index] = Some(value);
    Ok(())
}
