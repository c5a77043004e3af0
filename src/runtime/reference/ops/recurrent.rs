//! The recurrent layers `lstm`, `rnn` and `gru`, as coremltools defines
//! them (`iOS15/recurrent.py`; iOS 17 added fp16 inputs, and iOS 18
//! `gru`'s `reset_after` and `input_bias`).
//!
//! coremltools converts each layer and direction of torch's `nn.LSTM` to
//! an `lstm` op and `nn.RNN` to `rnn`. It unrolls `nn.GRU` into a
//! `while_loop` instead (the iOS 15 `gru` op applies its reset gate before
//! the recurrent product, torch after), so the `gru` op comes from the MIL
//! builder: its gates are Core ML's order, reset, output (new) and update.
//!
//! The ops run over `x` of shape `[s, b, I]` (sequence, batch, input).
//! The input projections of every step are one matrix product; each step
//! then adds the hidden state times the recurrent weight, a matrix product
//! of the batch's hidden states (ndarray's `general_mat_mul`), before the
//! gates' elementwise arithmetic.
//!
//! Directions follow Core ML (coremltools' tests of these ops run against
//! it): `reverse` reads the sequence from its end and returns its outputs
//! in that processing order; `bidirectional` (`lstm` only) concatenates a
//! forward and a reverse pass on the last axis, the reverse pass's outputs
//! put back in time order, as torch's bidirectional layers do.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array1, Array2, Array3, ArrayView2, ArrayView3, Axis, Ix2, Ix3};

use super::Args;
use crate::runtime::reference::value::{FloatArray, OpResult, Value};

/// An activation a recurrent op applies, by its MIL name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Activation {
    Sigmoid,
    Tanh,
    Relu,
    /// `min(max(0.2 x + 0.5, 0), 1)`, Core ML's default slope and offset.
    HardSigmoid,
    Linear,
}

impl Activation {
    /// Parameter `param` of `args`, `default` when absent. `scaled_tanh`
    /// takes Core ML's default scales (1 and 1), which make it `tanh`;
    /// `lstm` calls the hard sigmoid `hard_sigmoid` and `rnn`
    /// `sigmoid_hard`, and both names are accepted.
    fn parse(args: &Args<'_>, param: &str, default: &str) -> OpResult<Activation> {
        Ok(match args.opt_str(param)?.unwrap_or(default) {
            "sigmoid" => Activation::Sigmoid,
            "tanh" | "scaled_tanh" => Activation::Tanh,
            "relu" => Activation::Relu,
            "hard_sigmoid" | "sigmoid_hard" => Activation::HardSigmoid,
            "linear" => Activation::Linear,
            other => {
                return Err(format!(
                    "{param} {other:?} is not one of sigmoid, tanh, scaled_tanh, relu, \
                     hard_sigmoid and linear"
                ))
            }
        })
    }

    fn apply(self, v: f32) -> f32 {
        match self {
            Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            Activation::Tanh => v.tanh(),
            Activation::Relu => v.max(0.0),
            Activation::HardSigmoid => (0.2 * v + 0.5).clamp(0.0, 1.0),
            Activation::Linear => v,
        }
    }
}

/// Which way a layer reads its sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Direction {
    Forward,
    Reverse,
    Bidirectional,
}

impl Direction {
    fn parse(args: &Args<'_>) -> OpResult<Direction> {
        Ok(match args.opt_str("direction")?.unwrap_or("forward") {
            "forward" => Direction::Forward,
            "reverse" => Direction::Reverse,
            "bidirectional" => Direction::Bidirectional,
            other => {
                return Err(format!(
                    "direction {other:?} is not forward, reverse or bidirectional"
                ))
            }
        })
    }
}

/// The weights of one direction of a layer with `gates` gates of `hidden`
/// units each, checked against each other and the input size.
struct Weights {
    w_ih: FloatArray,
    w_hh: FloatArray,
    /// The summed input and recurrent biases, zero when absent.
    bias: Array1<f32>,
    hidden: usize,
}

impl Weights {
    /// The weights named `weight_ih{suffix}`, `weight_hh{suffix}` and
    /// `bias{suffix}`.
    fn of(args: &Args<'_>, suffix: &str, gates: usize, input: usize) -> OpResult<Weights> {
        let (ih, hh, b) = (
            format!("weight_ih{suffix}"),
            format!("weight_hh{suffix}"),
            format!("bias{suffix}"),
        );
        let w_hh = args.float(&hh)?;
        let hidden = match w_hh.shape() {
            &[rows, hidden] if rows == gates * hidden => hidden,
            other => {
                return Err(format!(
                    "{hh} has shape {other:?}, not [{gates} * hidden, hidden]"
                ))
            }
        };
        let w_ih = args.float(&ih)?;
        if w_ih.shape() != [gates * hidden, input] {
            return Err(format!(
                "{ih} has shape {:?}, not [{}, {input}] ({gates} gates of {hidden} units, \
                 {input} inputs)",
                w_ih.shape(),
                gates * hidden
            ));
        }
        let bias = match args.get(&b)? {
            None => Array1::zeros(gates * hidden),
            Some(value) => {
                let bias = value.to_float()?;
                if bias.shape() != [gates * hidden] {
                    return Err(format!(
                        "{b} has shape {:?}, not [{}]",
                        bias.shape(),
                        gates * hidden
                    ));
                }
                bias.iter().copied().collect()
            }
        };
        Ok(Weights {
            w_ih,
            w_hh,
            bias,
            hidden,
        })
    }

    fn w_ih(&self) -> OpResult<ArrayView2<'_, f32>> {
        self.w_ih
            .view()
            .into_dimensionality::<Ix2>()
            .map_err(|e| e.to_string())
    }

    fn w_hh(&self) -> OpResult<ArrayView2<'_, f32>> {
        self.w_hh
            .view()
            .into_dimensionality::<Ix2>()
            .map_err(|e| e.to_string())
    }
}

/// Parameter `name` as a vector of `len` elements, if given.
fn vector(args: &Args<'_>, name: &str, len: usize) -> OpResult<Option<Array1<f32>>> {
    let Some(value) = args.get(name)? else {
        return Ok(None);
    };
    let array = value.to_float()?;
    if array.shape() != [len] {
        return Err(format!("{name} has shape {:?}, not [{len}]", array.shape()));
    }
    Ok(Some(array.iter().copied().collect()))
}

/// `x`, which must be `[s, b, I]`.
fn sequence(x: &FloatArray) -> OpResult<ArrayView3<'_, f32>> {
    x.view()
        .into_dimensionality::<Ix3>()
        .map_err(|_| format!("x must be [sequence, batch, input], not {:?}", x.shape()))
}

/// Initial state `name`, which must be `[batch, width]`.
fn state(args: &Args<'_>, name: &str, batch: usize, width: usize) -> OpResult<Array2<f32>> {
    let value = args.float(name)?;
    if value.shape() != [batch, width] {
        return Err(format!(
            "{name} has shape {:?}, not [{batch}, {width}]",
            value.shape()
        ));
    }
    value
        .view()
        .into_dimensionality::<Ix2>()
        .map(|v| v.to_owned())
        .map_err(|e| e.to_string())
}

/// Runs one direction of a recurrent layer over `x` (`[s, b, I]`): at each
/// step the gates' pre-activations `x_t · w_ihᵀ + bias + h · w_hhᵀ`
/// (`[b, gates * H]`) go to `cell`, which updates the hidden state `h`
/// (`[b, H]`, starting from `h0`) and whatever state it keeps itself.
/// Returns the hidden state after every step, in processing order
/// (`[s, b, H]`), and the last.
fn unroll(
    x: &ArrayView3<'_, f32>,
    weights: &Weights,
    h0: Array2<f32>,
    reverse: bool,
    mut cell: impl FnMut(&Array2<f32>, &mut Array2<f32>),
) -> OpResult<(Array3<f32>, Array2<f32>)> {
    let (steps, batch, input) = x.dim();
    let width = weights.bias.len();
    // Every step's input projection in one product: [s * b, I] · [I, G].
    let x = x.as_standard_layout();
    let rows = x
        .view()
        .into_shape_with_order((steps * batch, input))
        .map_err(|e| e.to_string())?;
    let mut projected = Array2::<f32>::zeros((steps * batch, width));
    general_mat_mul(1.0, &rows, &weights.w_ih()?.t(), 0.0, &mut projected);
    projected += &weights.bias;

    let w_hh = weights.w_hh()?;
    let mut h = h0;
    let mut outputs = Array3::<f32>::zeros((steps, batch, weights.hidden));
    let mut gates = Array2::<f32>::zeros((batch, width));
    for k in 0..steps {
        let t = if reverse { steps - 1 - k } else { k };
        gates.assign(&projected.slice(s![t * batch..(t + 1) * batch, ..]));
        general_mat_mul(1.0, &h, &w_hh.t(), 1.0, &mut gates);
        cell(&gates, &mut h);
        outputs.index_axis_mut(Axis(0), k).assign(&h);
    }
    Ok((outputs, h))
}

/// The activations and options of an `lstm`.
struct LstmCell {
    recurrent: Activation,
    cell: Activation,
    activation: Activation,
    clip: Option<f32>,
}

impl LstmCell {
    /// One step for a batch: `gates` holds the pre-activations of the
    /// input, forget, output and cell gates (Core ML's order, `[b, 4H]`);
    /// `h` and `c` are updated in place. With `peephole` (`[3H]`: input,
    /// forget, output), the input and forget gates see the previous cell
    /// state and the output gate the new one. `clip` bounds the cell state.
    fn step(
        &self,
        gates: &Array2<f32>,
        peephole: Option<&Array1<f32>>,
        h: &mut Array2<f32>,
        c: &mut Array2<f32>,
    ) {
        let hidden = h.ncols();
        for ((g, mut h), mut c) in gates
            .outer_iter()
            .zip(h.outer_iter_mut())
            .zip(c.outer_iter_mut())
        {
            for j in 0..hidden {
                let previous = c[j];
                let (mut i, mut f, mut o) = (g[j], g[hidden + j], g[2 * hidden + j]);
                if let Some(p) = peephole {
                    i += p[j] * previous;
                    f += p[hidden + j] * previous;
                }
                let i = self.recurrent.apply(i);
                let f = self.recurrent.apply(f);
                let z = self.cell.apply(g[3 * hidden + j]);
                let mut state = f * previous + i * z;
                if let Some(clip) = self.clip {
                    state = state.clamp(-clip, clip);
                }
                if let Some(p) = peephole {
                    o += p[2 * hidden + j] * state;
                }
                c[j] = state;
                h[j] = self.recurrent.apply(o) * self.activation.apply(state);
            }
        }
    }
}

/// One direction of an `lstm`: outputs in processing order, last h, last c.
struct Pass {
    outputs: Array3<f32>,
    h: Array2<f32>,
    c: Array2<f32>,
}

pub(super) fn lstm(args: &Args<'_>) -> OpResult<Vec<Value>> {
    let x = args.float("x")?;
    let x = sequence(&x)?;
    let (_, batch, input) = x.dim();
    let direction = Direction::parse(args)?;
    let output_sequence = args.opt_bool("output_sequence")?.unwrap_or(false);
    let cell = LstmCell {
        recurrent: Activation::parse(args, "recurrent_activation", "sigmoid")?,
        cell: Activation::parse(args, "cell_activation", "tanh")?,
        activation: Activation::parse(args, "activation", "tanh")?,
        clip: args.opt_f32("clip")?,
    };
    let mut directions = vec![(Weights::of(args, "", 4, input)?, "")];
    if direction == Direction::Bidirectional {
        directions.push((Weights::of(args, "_back", 4, input)?, "_back"));
    }
    let hidden = directions[0].0.hidden;
    if directions.iter().any(|(w, _)| w.hidden != hidden) {
        return Err("the forward and backward weights have different hidden sizes".to_string());
    }
    let width = directions.len() * hidden;
    let h0 = state(args, "initial_h", batch, width)?;
    let c0 = state(args, "initial_c", batch, width)?;

    let mut passes = Vec::with_capacity(directions.len());
    for (index, (weights, suffix)) in directions.iter().enumerate() {
        let peephole = vector(args, &format!("peephole{suffix}"), 3 * hidden)?;
        let columns = s![.., index * hidden..(index + 1) * hidden];
        let mut c = c0.slice(columns).to_owned();
        let reverse = direction == Direction::Reverse || index == 1;
        let (outputs, h) = unroll(
            &x,
            weights,
            h0.slice(columns).to_owned(),
            reverse,
            |g, h| cell.step(g, peephole.as_ref(), h, &mut c),
        )?;
        passes.push(Pass { outputs, h, c });
    }

    let last = |pick: fn(&Pass) -> ArrayView2<'_, f32>| -> OpResult<Array2<f32>> {
        let views: Vec<_> = passes.iter().map(pick).collect();
        ndarray::concatenate(Axis(1), &views).map_err(|e| e.to_string())
    };
    let h = last(|p| p.h.view())?;
    let c = last(|p| p.c.view())?;
    let y = if output_sequence {
        // The backward pass's outputs back in time order.
        let views: Vec<ArrayView3<'_, f32>> = passes
            .iter()
            .enumerate()
            .map(|(index, pass)| {
                if index == 1 {
                    pass.outputs.slice(s![..;-1, .., ..])
                } else {
                    pass.outputs.view()
                }
            })
            .collect();
        ndarray::concatenate(Axis(2), &views).map_err(|e| e.to_string())?
    } else {
        h.clone().insert_axis(Axis(0))
    };
    Ok(vec![
        Value::Float(y.into_dyn().into_shared()),
        Value::Float(h.into_dyn().into_shared()),
        Value::Float(c.into_dyn().into_shared()),
    ])
}

/// Whether a one-direction layer (`rnn`, `gru`) runs in reverse; a
/// bidirectional one is refused, as coremltools' definitions refuse it.
fn runs_in_reverse(args: &Args<'_>, op: &str) -> OpResult<bool> {
    match Direction::parse(args)? {
        Direction::Forward => Ok(false),
        Direction::Reverse => Ok(true),
        Direction::Bidirectional => Err(format!("{op} runs forward or reverse, not bidirectional")),
    }
}

pub(super) fn rnn(args: &Args<'_>) -> OpResult<Vec<Value>> {
    let x = args.float("x")?;
    let x = sequence(&x)?;
    let (_, batch, input) = x.dim();
    let reverse = runs_in_reverse(args, "rnn")?;
    let output_sequence = args.opt_bool("output_sequence")?.unwrap_or(false);
    let activation = Activation::parse(args, "activation", "tanh")?;
    let weights = Weights::of(args, "", 1, input)?;
    let h0 = state(args, "initial_h", batch, weights.hidden)?;
    let (outputs, h) = unroll(&x, &weights, h0, reverse, |g, h| {
        h.zip_mut_with(g, |h, &g| *h = activation.apply(g))
    })?;
    let y = if output_sequence {
        outputs
    } else {
        h.clone().insert_axis(Axis(0))
    };
    Ok(vec![
        Value::Float(y.into_dyn().into_shared()),
        Value::Float(h.into_dyn().into_shared()),
    ])
}

// issue 23 (opsmisc): gru.
/// One step of a `gru` for a batch. `input` holds the input projections
/// `x_t · w_ihᵀ` plus the biases outside the reset product (`[b, 3H]`);
/// `w_hh` the rows `[r | o | z]` of the recurrent weight, and
/// `recurrent_bias`'s output-gate part the bias that `reset_after` puts
/// inside the reset product. As coremltools defines it:
///
/// - `r = σ(input_r + h·R_rᵀ)`, `z = σ(input_z + h·R_zᵀ)`;
/// - `o = act(input_o + (r ⊙ h)·R_oᵀ)`, or with `reset_after`
///   `o = act(input_o + r ⊙ (h·R_oᵀ + b_o))` (torch's form);
/// - `h = (1 - z) ⊙ o + z ⊙ h`.
struct GruCell {
    recurrent_activation: Activation,
    activation: Activation,
    reset_after: bool,
}

impl GruCell {
    fn step(
        &self,
        input: ArrayView2<'_, f32>,
        w_hh: ArrayView2<'_, f32>,
        recurrent_bias: &Array1<f32>,
        h: &mut Array2<f32>,
    ) {
        let hidden = h.ncols();
        let rows = |k: usize| w_hh.slice(s![k * hidden..(k + 1) * hidden, ..]);
        // h·R_rᵀ and h·R_zᵀ; with reset_after also h·R_oᵀ + b_o.
        let mut rz = Array2::<f32>::zeros((h.nrows(), 2 * hidden));
        general_mat_mul(
            1.0,
            h,
            &rows(0).t(),
            0.0,
            &mut rz.slice_mut(s![.., ..hidden]),
        );
        general_mat_mul(
            1.0,
            h,
            &rows(2).t(),
            0.0,
            &mut rz.slice_mut(s![.., hidden..]),
        );
        let mut r = &rz.slice(s![.., ..hidden]) + &input.slice(s![.., ..hidden]);
        r.mapv_inplace(|v| self.recurrent_activation.apply(v));
        let mut o = Array2::<f32>::zeros((h.nrows(), hidden));
        if self.reset_after {
            general_mat_mul(1.0, h, &rows(1).t(), 0.0, &mut o);
            o += &recurrent_bias.slice(s![hidden..2 * hidden]);
            o *= &r;
        } else {
            let reset = &r * &*h;
            general_mat_mul(1.0, &reset, &rows(1).t(), 0.0, &mut o);
        }
        o += &input.slice(s![.., hidden..2 * hidden]);
        o.mapv_inplace(|v| self.activation.apply(v));
        for ((mut h, o), (rz, x)) in h
            .outer_iter_mut()
            .zip(o.outer_iter())
            .zip(rz.outer_iter().zip(input.outer_iter()))
        {
            for j in 0..hidden {
                let z = self
                    .recurrent_activation
                    .apply(x[2 * hidden + j] + rz[hidden + j]);
                h[j] = (1.0 - z) * o[j] + z * h[j];
            }
        }
    }
}

pub(super) fn gru(args: &Args<'_>) -> OpResult<Vec<Value>> {
    let x = args.float("x")?;
    let x = sequence(&x)?;
    let (steps, batch, input) = x.dim();
    let reverse = runs_in_reverse(args, "gru")?;
    let output_sequence = args.opt_bool("output_sequence")?.unwrap_or(false);
    let cell = GruCell {
        recurrent_activation: Activation::parse(args, "recurrent_activation", "sigmoid")?,
        activation: Activation::parse(args, "activation", "tanh")?,
        reset_after: args.opt_bool("reset_after")?.unwrap_or(false),
    };
    let weights = Weights::of(args, "", 3, input)?;
    let hidden = weights.hidden;
    let input_bias = vector(args, "input_bias", 3 * hidden)?.unwrap_or(Array1::zeros(3 * hidden));
    // `bias` adds to the pre-activations with `input_bias`, except that
    // reset_after puts its output-gate part inside the reset product.
    let mut input_side = &input_bias + &weights.bias;
    if cell.reset_after {
        input_side
            .slice_mut(s![hidden..2 * hidden])
            .assign(&input_bias.slice(s![hidden..2 * hidden]));
    }
    let recurrent_bias = &weights.bias;
    let mut h = state(args, "initial_h", batch, hidden)?;
    // Every step's input projection in one product: [s * b, I] · [I, 3H].
    let x = x.as_standard_layout();
    let rows = x
        .view()
        .into_shape_with_order((steps * batch, input))
        .map_err(|e| e.to_string())?;
    let mut projected = Array2::<f32>::zeros((steps * batch, 3 * hidden));
    general_mat_mul(1.0, &rows, &weights.w_ih()?.t(), 0.0, &mut projected);
    projected += &input_side;
    let w_hh = weights.w_hh()?;
    let mut outputs = Array3::<f32>::zeros((steps, batch, hidden));
    for k in 0..steps {
        let t = if reverse { steps - 1 - k } else { k };
        let step_input = projected.slice(s![t * batch..(t + 1) * batch, ..]);
        cell.step(step_input, w_hh, recurrent_bias, &mut h);
        outputs.index_axis_mut(Axis(0), k).assign(&h);
    }
    let y = if output_sequence {
        outputs
    } else {
        h.clone().insert_axis(Axis(0))
    };
    Ok(vec![
        Value::Float(y.into_dyn().into_shared()),
        Value::Float(h.into_dyn().into_shared()),
    ])
}

#[cfg(test)]
mod tests {
    use super::super::tests::run_op;
    use super::*;

    fn f(shape: &[usize], data: &[f32]) -> Value {
        Value::float(shape.to_vec(), data.to_vec()).unwrap()
    }

    fn s(text: &str) -> Value {
        Value::Str(vec![text.to_string()])
    }

    fn flat(v: &Value) -> Vec<f32> {
        v.to_float().unwrap().iter().copied().collect()
    }

    fn sigmoid(v: f32) -> f32 {
        1.0 / (1.0 + (-v).exp())
    }

    /// A scalar LSTM written out by hand, gate by gate, in Core ML's
    /// order (input, forget, output, cell).
    fn by_hand(
        x: &[f32],
        w: [f32; 4],
        r: [f32; 4],
        b: [f32; 4],
        h0: f32,
        c0: f32,
    ) -> Vec<(f32, f32)> {
        let (mut h, mut c) = (h0, c0);
        x.iter()
            .map(|&x| {
                let pre = |k: usize| w[k] * x + r[k] * h + b[k];
                let (i, f, o, z) = (
                    sigmoid(pre(0)),
                    sigmoid(pre(1)),
                    sigmoid(pre(2)),
                    pre(3).tanh(),
                );
                c = f * c + i * z;
                h = o * c.tanh();
                (h, c)
            })
            .collect()
    }

    #[test]
    fn lstm_gates_are_input_forget_output_cell() {
        // One unit, one input: each gate has its own weight, so a
        // misordered gate changes the result.
        let (w, r, b) = (
            [0.5, -0.3, 0.8, 1.2],
            [0.1, 0.7, -0.4, 0.6],
            [0.05, 0.9, -0.2, 0.3],
        );
        let xs = [0.4, -1.0, 2.0];
        let out = run_op(
            "lstm",
            vec![
                ("x", f(&[3, 1, 1], &xs)),
                ("initial_h", f(&[1, 1], &[0.2])),
                ("initial_c", f(&[1, 1], &[-0.5])),
                ("weight_ih", f(&[4, 1], &w)),
                ("weight_hh", f(&[4, 1], &r)),
                ("bias", f(&[4], &b)),
                ("output_sequence", Value::bool(vec![], vec![true]).unwrap()),
            ],
            3,
        )
        .unwrap();
        let want = by_hand(&xs, w, r, b, 0.2, -0.5);
        let ys = flat(&out[0]);
        assert_eq!(out[0].shape(), vec![3, 1, 1]);
        for (got, (h, _)) in ys.iter().zip(&want) {
            assert!((got - h).abs() < 1e-6, "{got} vs {h}");
        }
        assert!((flat(&out[1])[0] - want[2].0).abs() < 1e-6);
        assert!((flat(&out[2])[0] - want[2].1).abs() < 1e-6);

        // Reverse reads from the end and returns outputs in that order.
        let out = run_op(
            "lstm",
            vec![
                ("x", f(&[3, 1, 1], &xs)),
                ("initial_h", f(&[1, 1], &[0.2])),
                ("initial_c", f(&[1, 1], &[-0.5])),
                ("weight_ih", f(&[4, 1], &w)),
                ("weight_hh", f(&[4, 1], &r)),
                ("bias", f(&[4], &b)),
                ("direction", s("reverse")),
                ("output_sequence", Value::bool(vec![], vec![true]).unwrap()),
            ],
            3,
        )
        .unwrap();
        let reversed: Vec<f32> = xs.iter().rev().copied().collect();
        let want = by_hand(&reversed, w, r, b, 0.2, -0.5);
        for (got, (h, _)) in flat(&out[0]).iter().zip(&want) {
            assert!((got - h).abs() < 1e-6, "{got} vs {h}");
        }
    }

    #[test]
    fn lstm_peephole_and_clip_act_on_the_cell_state() {
        // Zero weights: every gate is sigmoid(bias + peephole * c).
        let out = run_op(
            "lstm",
            vec![
                ("x", f(&[1, 1, 1], &[0.0])),
                ("initial_h", f(&[1, 1], &[0.0])),
                ("initial_c", f(&[1, 1], &[2.0])),
                ("weight_ih", f(&[4, 1], &[0.0; 4])),
                ("weight_hh", f(&[4, 1], &[0.0; 4])),
                ("bias", f(&[4], &[0.0, 0.0, 0.0, 3.0])),
                ("peephole", f(&[3], &[1.0, -1.0, 0.5])),
                ("clip", f(&[], &[1.5])),
            ],
            3,
        )
        .unwrap();
        let i = sigmoid(2.0);
        let fg = sigmoid(-2.0);
        let c = (fg * 2.0 + i * 3.0_f32.tanh()).clamp(-1.5, 1.5);
        let o = sigmoid(0.5 * c);
        assert!((flat(&out[2])[0] - c).abs() < 1e-6);
        assert!((flat(&out[1])[0] - o * c.tanh()).abs() < 1e-6);
        // Without output_sequence, y is the last h.
        assert_eq!(out[0].shape(), vec![1, 1, 1]);
        assert_eq!(flat(&out[0]), flat(&out[1]));
    }

    #[test]
    fn bidirectional_lstm_concatenates_a_time_aligned_backward_pass() {
        let (w, r, b) = (
            [0.5, -0.3, 0.8, 1.2],
            [0.1, 0.7, -0.4, 0.6],
            [0.05, 0.9, -0.2, 0.3],
        );
        let (wb, rb, bb) = (
            [-0.2, 0.4, 0.3, -0.9],
            [0.3, -0.1, 0.2, 0.5],
            [0.0, 0.1, 0.2, -0.3],
        );
        let xs = [0.4, -1.0, 2.0];
        let out = run_op(
            "lstm",
            vec![
                ("x", f(&[3, 1, 1], &xs)),
                ("initial_h", f(&[1, 2], &[0.2, -0.1])),
                ("initial_c", f(&[1, 2], &[-0.5, 0.3])),
                ("weight_ih", f(&[4, 1], &w)),
                ("weight_hh", f(&[4, 1], &r)),
                ("bias", f(&[4], &b)),
                ("weight_ih_back", f(&[4, 1], &wb)),
                ("weight_hh_back", f(&[4, 1], &rb)),
                ("bias_back", f(&[4], &bb)),
                ("direction", s("bidirectional")),
                ("output_sequence", Value::bool(vec![], vec![true]).unwrap()),
            ],
            3,
        )
        .unwrap();
        let forward = by_hand(&xs, w, r, b, 0.2, -0.5);
        let reversed: Vec<f32> = xs.iter().rev().copied().collect();
        let backward = by_hand(&reversed, wb, rb, bb, -0.1, 0.3);
        assert_eq!(out[0].shape(), vec![3, 1, 2]);
        let ys = flat(&out[0]);
        for t in 0..3 {
            assert!((ys[2 * t] - forward[t].0).abs() < 1e-6);
            assert!((ys[2 * t + 1] - backward[2 - t].0).abs() < 1e-6, "time {t}");
        }
        let (h, c) = (flat(&out[1]), flat(&out[2]));
        assert!((h[0] - forward[2].0).abs() < 1e-6 && (h[1] - backward[2].0).abs() < 1e-6);
        assert!((c[0] - forward[2].1).abs() < 1e-6 && (c[1] - backward[2].1).abs() < 1e-6);
    }

    #[test]
    fn lstm_batches_and_units_agree_with_single_units() {
        // Two batch rows and two units: the matrix products must pair each
        // row with its own state and each unit with its own weights.
        let w: Vec<f32> = (0..16)
            .map(|k| ((k * 7 % 11) as f32 - 5.0) / 10.0)
            .collect();
        let r: Vec<f32> = (0..16)
            .map(|k| ((k * 5 % 13) as f32 - 6.0) / 10.0)
            .collect();
        let out = run_op(
            "lstm",
            vec![
                (
                    "x",
                    f(&[2, 2, 2], &[0.1, 0.2, -0.3, 0.4, 0.5, -0.6, 0.7, 0.8]),
                ),
                ("initial_h", f(&[2, 2], &[0.0; 4])),
                ("initial_c", f(&[2, 2], &[0.0; 4])),
                ("weight_ih", f(&[8, 2], &w)),
                ("weight_hh", f(&[8, 2], &r)),
                ("output_sequence", Value::bool(vec![], vec![true]).unwrap()),
            ],
            3,
        )
        .unwrap();
        // The same computation in plain loops.
        let x = [[[0.1, 0.2], [-0.3, 0.4]], [[0.5, -0.6], [0.7, 0.8]]];
        let ys = flat(&out[0]);
        for batch in 0..2 {
            let (mut h, mut c) = ([0f32; 2], [0f32; 2]);
            for t in 0..2 {
                let pre: Vec<f32> = (0..8)
                    .map(|row| {
                        (0..2)
                            .map(|k| w[row * 2 + k] * x[t][batch][k] + r[row * 2 + k] * h[k])
                            .sum()
                    })
                    .collect();
                let mut next = [0f32; 2];
                for j in 0..2 {
                    let (i, fg, o, z) = (
                        sigmoid(pre[j]),
                        sigmoid(pre[2 + j]),
                        sigmoid(pre[4 + j]),
                        pre[6 + j].tanh(),
                    );
                    c[j] = fg * c[j] + i * z;
                    next[j] = o * c[j].tanh();
                }
                h = next;
                for j in 0..2 {
                    let got = ys[t * 4 + batch * 2 + j];
                    assert!((got - h[j]).abs() < 1e-6, "t {t} batch {batch} unit {j}");
                }
            }
        }
    }

    #[test]
    fn rnn_applies_its_activation_each_step() {
        let out = run_op(
            "rnn",
            vec![
                ("x", f(&[2, 1, 1], &[1.0, -2.0])),
                ("initial_h", f(&[1, 1], &[0.5])),
                ("weight_ih", f(&[1, 1], &[0.7])),
                ("weight_hh", f(&[1, 1], &[-0.4])),
                ("bias", f(&[1], &[0.1])),
                ("activation", s("relu")),
                ("output_sequence", Value::bool(vec![], vec![true]).unwrap()),
            ],
            2,
        )
        .unwrap();
        let h1 = (0.7f32 * 1.0 - 0.4 * 0.5 + 0.1).max(0.0);
        let h2 = (0.7f32 * -2.0 - 0.4 * h1 + 0.1).max(0.0);
        assert_eq!(flat(&out[0]), vec![h1, h2]);
        assert_eq!(flat(&out[1]), vec![h2]);
    }

    #[test]
    fn malformed_recurrent_ops_are_refused() {
        let base = || {
            vec![
                ("x", f(&[2, 1, 3], &[0.0; 6])),
                ("initial_h", f(&[1, 2], &[0.0; 2])),
                ("initial_c", f(&[1, 2], &[0.0; 2])),
                ("weight_ih", f(&[8, 3], &[0.0; 24])),
                ("weight_hh", f(&[8, 2], &[0.0; 16])),
            ]
        };
        assert!(run_op("lstm", base(), 3).is_ok());
        let mut wrong_input = base();
        wrong_input[3] = ("weight_ih", f(&[8, 2], &[0.0; 16]));
        let error = run_op("lstm", wrong_input, 3).unwrap_err();
        assert!(error.contains("weight_ih"), "{error}");
        let mut no_back = base();
        no_back.push(("direction", s("bidirectional")));
        let error = run_op("lstm", no_back, 3).unwrap_err();
        assert!(error.contains("weight_hh_back"), "{error}");
        let mut bad_activation = base();
        bad_activation.push(("cell_activation", s("softsign")));
        let error = run_op("lstm", bad_activation, 3).unwrap_err();
        assert!(error.contains("softsign"), "{error}");
        let mut bad_state = base();
        bad_state[1] = ("initial_h", f(&[2], &[0.0; 2]));
        let error = run_op("lstm", bad_state, 3).unwrap_err();
        assert!(error.contains("initial_h"), "{error}");
    }
}
