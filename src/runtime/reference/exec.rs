//! Running a compiled program: slots filled with the constants and inputs,
//! steps run in order, state writes applied when the whole prediction has
//! succeeded.
//!
//! Control flow runs here too. `cond` runs the branch its predicate picks;
//! `while_loop` binds its loop variables to the condition block's inputs,
//! runs it, and while it gives true, binds them to the body's inputs, runs
//! the body and takes its outputs as the next loop variables. Each binding
//! is checked against the block input's declared type. As in Core ML, a
//! loop has no iteration bound: a program whose condition never turns false
//! runs forever, as it would on the device.

use super::super::error::{Error, Result};
use super::buffers;
use super::ops::{self, Args, Kind};
use super::program::{Block, Program, Slot, Step};
use super::value::{
    conform, conform_declared, round_float, round_fp16_in_place, Declared, OpResult, Value,
};

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
    let mut run = Run {
        function,
        program,
        env,
        states,
    };
    run.steps(&program.steps)?;
    program
        .outputs
        .iter()
        .map(|(name, slot)| {
            // Outputs are never released, so each is still here (a clone
            // shares the array).
            run.env[*slot]
                .clone()
                .map(|v| (name.clone(), v))
                .ok_or_else(|| Error::InvalidModel {
                    function: function.to_string(),
                    detail: format!("output {name:?} was not computed"),
                })
        })
        .collect()
}

/// One prediction under way.
struct Run<'a> {
    function: &'a str,
    program: &'a Program,
    /// The value in each slot.
    env: Vec<Option<Value>>,
    states: &'a mut StateValues,
}

impl Run<'_> {
    /// Runs `steps` (the function's, or a nested block's) in order.
    fn steps(&mut self, steps: &[Step]) -> Result<()> {
        let function = self.function;
        for step in steps {
            let fail = |detail: String| Error::InvalidModel {
                function: function.to_string(),
                detail: format!("op {:?} ({}): {detail}", step.name, step.op_type),
            };
            let results = match step.kind {
                Kind::WhileLoop => self.while_loop(step)?,
                Kind::Cond => self.cond(step)?,
                kind => {
                    let args = Args {
                        step,
                        env: &self.env,
                    };
                    match kind {
                        Kind::ReadState => read_state(&args, self.states).map(|v| vec![v]),
                        Kind::WriteState => {
                            write_state(&args, self.program, self.states).map(|()| Vec::new())
                        }
                        kind => ops::run(kind, &args),
                    }
                    .map_err(fail)?
                }
            };
            if results.len() != step.outputs.len() {
                return Err(fail(format!(
                    "computed {} results for {} outputs (interpreter bug)",
                    results.len(),
                    step.outputs.len()
                )));
            }
            for (value, (slot, declared)) in results.into_iter().zip(&step.outputs) {
                self.env[*slot] = Some(declared_value(value, declared).map_err(fail)?);
            }
            // fp16_ops: the device's rounding after the op (empty otherwise).
            for slot in &step.round_fp16 {
                if let Some(Value::Float(array)) = &mut self.env[*slot] {
                    round_fp16_in_place(array);
                }
            }
            for slot in &step.release {
                if let Some(value) = self.env[*slot].take() {
                    buffers::recycle(value);
                }
            }
        }
        Ok(())
    }

    /// Runs `while_loop` step `step`, returning the final loop variables.
    fn while_loop(&mut self, step: &Step) -> Result<Vec<Value>> {
        let fail = |detail: String| self.fail(step, detail);
        let [condition, body] = step.blocks.as_slice() else {
            return Err(fail(
                "has no condition and body (interpreter bug)".to_string(),
            ));
        };
        let mut variables = Args {
            step,
            env: &self.env,
        }
        .list("loop_vars")
        .map_err(fail)?
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
        loop {
            self.bind(step, condition, &variables)?;
            self.steps(&condition.steps)?;
            let go = self
                .block_outputs(step, condition)?
                .first()
                .map(Value::to_bool_scalar)
                .transpose()
                .map_err(|e| self.fail(step, format!("its condition: {e}")))?;
            if go != Some(true) {
                return Ok(variables);
            }
            self.bind(step, body, &variables)?;
            self.steps(&body.steps)?;
            variables = self.block_outputs(step, body)?;
        }
    }

    /// Runs `cond` step `step`, returning the outputs of the branch its
    /// predicate picks.
    fn cond(&mut self, step: &Step) -> Result<Vec<Value>> {
        let [then, otherwise] = step.blocks.as_slice() else {
            return Err(self.fail(step, "has no branches (interpreter bug)".to_string()));
        };
        let pred = Args {
            step,
            env: &self.env,
        }
        .opt_bool("pred")
        .and_then(|pred| pred.ok_or_else(|| "lacks its predicate".to_string()))
        .map_err(|e| self.fail(step, e))?;
        let branch = if pred { then } else { otherwise };
        self.steps(&branch.steps)?;
        self.block_outputs(step, branch)
    }

    /// Binds `values` to the inputs of `block` of control-flow step `step`.
    fn bind(&mut self, step: &Step, block: &Block, values: &[Value]) -> Result<()> {
        for (index, ((slot, declared), value)) in block.inputs.iter().zip(values).enumerate() {
            let value = declared_value(value.clone(), declared)
                .map_err(|e| self.fail(step, format!("loop variable {index}: {e}")))?;
            self.env[*slot] = Some(value);
        }
        Ok(())
    }

    /// The values of the outputs of `block` of step `step`, which it has
    /// just run.
    fn block_outputs(&self, step: &Step, block: &Block) -> Result<Vec<Value>> {
        block
            .outputs
            .iter()
            .map(|slot| {
                self.env[*slot].clone().ok_or_else(|| {
                    self.fail(
                        step,
                        format!("a block output (slot {slot}) holds no value (interpreter bug)"),
                    )
                })
            })
            .collect()
    }

    fn fail(&self, step: &Step, detail: String) -> Error {
        Error::InvalidModel {
            function: self.function.to_string(),
            detail: format!("op {:?} ({}): {detail}", step.name, step.op_type),
        }
    }
}

/// `value` as the program declares it: of the declared element category,
/// and of a shape the declaration admits.
fn declared_value(value: Value, declared: &Declared) -> OpResult<Value> {
    let value = conform_declared(value, declared)?;
    if matches!(value, Value::List(_) | Value::Dict(_)) {
        // Checked by element type; a list's length changes as it runs.
        return Ok(value);
    }
    let shape = value.shape();
    if !declared.admits(&shape) {
        return Err(format!(
            "computed shape {shape:?}, but the program declares {}",
            describe_dims(declared.dims.as_deref())
        ));
    }
    Ok(value)
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

#[cfg(test)]
mod tests;
