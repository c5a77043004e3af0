//! Rules for the recurrent layers `lstm`, `rnn` and `gru`.

use super::{Inputs, Operand, RuleResult, TensorType};

/// `x` as `[T, B, I]`, the hidden size (from `weight_hh`) and the
/// direction count.
fn layer(inputs: &Inputs<'_>, gates: u64) -> Result<(TensorType, Option<u64>, u64), String> {
    let x = inputs.tensor("x")?;
    if x.rank() != 3 {
        return Err(format!("x of type {} is not [T, B, I]", x.describe()));
    }
    let weight_hh = inputs.tensor("weight_hh")?;
    if weight_hh.rank() != 2 {
        return Err(format!(
            "weight_hh of type {} is not a matrix",
            weight_hh.describe()
        ));
    }
    let hidden = weight_hh.shape[1];
    if let (Some(rows), Some(h)) = (weight_hh.shape[0], hidden) {
        if rows != gates * h {
            return Err(format!(
                "weight_hh of type {} is not [{gates}·H, H]",
                weight_hh.describe()
            ));
        }
    }
    let directions = match inputs.opt_str("direction")?.unwrap_or("forward") {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        other => return Err(format!("unknown direction {other:?}")),
    };
    Ok((x.clone(), hidden, directions))
}

fn outputs(x: &TensorType, width: Option<u64>, inputs: &Inputs<'_>, states: usize) -> RuleResult {
    let sequence = if inputs.opt_bool("output_sequence")?.unwrap_or(false) {
        x.shape[0]
    } else {
        Some(1)
    };
    let mut out = vec![Operand::tensor(TensorType {
        dtype: x.dtype,
        shape: vec![sequence, x.shape[1], width],
    })];
    for _ in 0..states {
        out.push(Operand::tensor(TensorType {
            dtype: x.dtype,
            shape: vec![x.shape[1], width],
        }));
    }
    Ok(out)
}

pub(super) fn lstm(inputs: &Inputs<'_>) -> RuleResult {
    let (x, hidden, directions) = layer(inputs, 4)?;
    outputs(&x, hidden.map(|h| h * directions), inputs, 2)
}

pub(super) fn rnn(inputs: &Inputs<'_>) -> RuleResult {
    let (x, hidden, directions) = layer(inputs, 1)?;
    outputs(&x, hidden.map(|h| h * directions), inputs, 1)
}

// issue 23 (opsmisc)
pub(super) fn gru(inputs: &Inputs<'_>) -> RuleResult {
    let (x, hidden, directions) = layer(inputs, 3)?;
    if directions != 1 {
        return Err("gru runs forward or reverse, not bidirectional".to_string());
    }
    outputs(&x, hidden, inputs, 1)
}
