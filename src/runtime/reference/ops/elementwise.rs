//! Elementwise ops: arithmetic and comparisons with numpy broadcasting,
//! activations, `select`, `cast`.

use std::cell::Cell;

use ndarray::{ArcArray, ArrayD, IxDyn, Zip};

use super::{Args, Binary, Unary};
use crate::runtime::reference::value::{self, dtype_from_name, FloatArray, OpResult, Value};
use crate::runtime::reference::{buffers, kernels};

pub(crate) use coreml_multifunction_format::mil::shapes::broadcast_shape;

/// `f` applied to the elements of `a` and `b` broadcast together.
pub(crate) fn zip_with<A: Copy, B: Copy, C: Clone>(
    a: &ArcArray<A, IxDyn>,
    b: &ArcArray<B, IxDyn>,
    f: impl Fn(A, B) -> C,
) -> OpResult<ArcArray<C, IxDyn>> {
    if a.shape() == b.shape() {
        return Ok(Zip::from(a.view())
            .and(b.view())
            .map_collect(|&x, &y| f(x, y))
            .into_shared());
    }
    let shape = IxDyn(&broadcast_shape(a.shape(), b.shape())?);
    let (Some(av), Some(bv)) = (a.broadcast(shape.clone()), b.broadcast(shape)) else {
        return Err(format!(
            "shapes {:?} and {:?} do not broadcast",
            a.shape(),
            b.shape()
        ));
    };
    Ok(Zip::from(av)
        .and(bv)
        .map_collect(|&x, &y| f(x, y))
        .into_shared())
}

/// [`zip_with`] for floats: two row-major arrays of one shape, or one
/// and a single value, along their slices into a recycled buffer
/// ([`buffers`]), as a loop the compiler vectorizes; any other pair
/// through [`zip_with`].
fn zip_floats(a: &FloatArray, b: &FloatArray, f: impl Fn(f32, f32) -> f32) -> OpResult<FloatArray> {
    let shape = if a.shape() == b.shape() || b.len() == 1 && b.ndim() <= a.ndim() {
        a.raw_dim()
    } else if a.len() == 1 && a.ndim() <= b.ndim() {
        b.raw_dim()
    } else {
        return zip_with(a, b, f);
    };
    let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) else {
        return zip_with(a, b, f);
    };
    let mut out = buffers::with_capacity(x.len().max(y.len()));
    match (x, y) {
        (&[p], y) if y.len() != 1 => out.extend(y.iter().map(|&q| f(p, q))),
        (x, &[q]) => out.extend(x.iter().map(|&p| f(p, q))),
        (x, y) => out.extend(x.iter().zip(y).map(|(&p, &q)| f(p, q))),
    }
    ArrayD::from_shape_vec(shape, out)
        .map(ArrayD::into_shared)
        .map_err(|e| e.to_string())
}

fn is_integral(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::Bool(_))
}

pub(super) fn binary(op: Binary, args: &Args<'_>) -> OpResult<Value> {
    use Binary as B;
    let x = args.required("x")?;
    let y = args.required("y")?;
    match op {
        B::LogicalAnd | B::LogicalOr | B::LogicalXor => {
            let (a, b) = (x.to_bool()?, y.to_bool()?);
            let f = match op {
                B::LogicalAnd => |p: bool, q: bool| p && q,
                B::LogicalOr => |p: bool, q: bool| p || q,
                _ => |p: bool, q: bool| p != q,
            };
            return Ok(Value::Bool(zip_with(&a, &b, f)?));
        }
        B::Equal | B::NotEqual | B::Less | B::LessEqual | B::Greater | B::GreaterEqual => {
            return compare(op, x, y);
        }
        _ => {}
    }
    let integer = is_integral(x) && is_integral(y) && !matches!(op, B::RealDiv | B::Pow);
    if integer {
        let (a, b) = (x.to_int()?, y.to_int()?);
        let by_zero = Cell::new(false);
        let result = match op {
            B::Add => zip_with(&a, &b, i32::wrapping_add)?,
            B::Sub => zip_with(&a, &b, i32::wrapping_sub)?,
            B::Mul => zip_with(&a, &b, i32::wrapping_mul)?,
            B::Maximum => zip_with(&a, &b, i32::max)?,
            B::Minimum => zip_with(&a, &b, i32::min)?,
            B::FloorDiv => zip_with(&a, &b, |p, q| {
                if q == 0 {
                    by_zero.set(true);
                    0
                } else {
                    // Python's //: rounds toward negative infinity.
                    let d = p.wrapping_div(q);
                    if p.wrapping_rem(q) != 0 && ((p < 0) != (q < 0)) {
                        d - 1
                    } else {
                        d
                    }
                }
            })?,
            B::Mod => zip_with(&a, &b, |p, q| {
                if q == 0 {
                    by_zero.set(true);
                    0
                } else {
                    // Python's %: the result takes the divisor's sign.
                    let r = p.wrapping_rem(q);
                    if r != 0 && ((r < 0) != (q < 0)) {
                        r + q
                    } else {
                        r
                    }
                }
            })?,
            _ => unreachable!("handled above"),
        };
        if by_zero.get() {
            return Err("integer division by zero".to_string());
        }
        return Ok(Value::Int(result));
    }
    let (a, b) = (x.to_float()?, y.to_float()?);
    let result = match op {
        B::Add => zip_floats(&a, &b, |p, q| p + q)?,
        B::Sub => zip_floats(&a, &b, |p, q| p - q)?,
        B::Mul => zip_floats(&a, &b, |p, q| p * q)?,
        B::RealDiv => zip_floats(&a, &b, |p, q| p / q)?,
        B::Pow => match scalar_exponent(&a, &b) {
            Some(e) => power(&a, e),
            None => zip_with(&a, &b, f32::powf)?,
        },
        B::Maximum => zip_with(&a, &b, f32::max)?,
        B::Minimum => zip_with(&a, &b, f32::min)?,
        B::FloorDiv => zip_with(&a, &b, |p, q| (p / q).floor())?,
        B::Mod => zip_with(&a, &b, |p, q| {
            let r = p % q;
            if r != 0.0 && ((r < 0.0) != (q < 0.0)) {
                r + q
            } else {
                r
            }
        })?,
        _ => unreachable!("handled above"),
    };
    Ok(Value::Float(result))
}

/// The exponent of a `pow` whose exponent is one value that broadcasts to
/// `base`'s shape (an RMSNorm's square, a scalar power).
fn scalar_exponent(base: &ArcArray<f32, IxDyn>, exponent: &ArcArray<f32, IxDyn>) -> Option<f32> {
    (exponent.len() == 1 && exponent.ndim() <= base.ndim())
        .then(|| exponent.iter().next().copied())
        .flatten()
}

/// `base` to the power `e`, a scalar, computed as PyTorch's CPU kernel
/// computes the exponents it singles out (2 and 3 by multiplying, 0.5 by a
/// square root, -1 and -2 by dividing: checked against torch 2.7 to the
/// bit), so that a converted model's squares give torch's bits; `powf`
/// for every other exponent. It is also several times faster than `powf`.
fn power(base: &ArcArray<f32, IxDyn>, e: f32) -> ArcArray<f32, IxDyn> {
    fn each(base: &ArcArray<f32, IxDyn>, f: impl Fn(f32) -> f32) -> ArcArray<f32, IxDyn> {
        base.mapv(f).into_shared()
    }
    match e {
        2.0 => each(base, |v| v * v),
        3.0 => each(base, |v| v * v * v),
        0.5 => each(base, f32::sqrt),
        -1.0 => each(base, |v| 1.0 / v),
        -2.0 => each(base, |v| 1.0 / (v * v)),
        _ => each(base, |v| v.powf(e)),
    }
}

fn compare(op: Binary, x: &Value, y: &Value) -> OpResult<Value> {
    use Binary as B;
    if is_integral(x) && is_integral(y) {
        let (a, b) = (x.to_int()?, y.to_int()?);
        let f: fn(i32, i32) -> bool = match op {
            B::Equal => |p, q| p == q,
            B::NotEqual => |p, q| p != q,
            B::Less => |p, q| p < q,
            B::LessEqual => |p, q| p <= q,
            B::Greater => |p, q| p > q,
            _ => |p, q| p >= q,
        };
        return Ok(Value::Bool(zip_with(&a, &b, f)?));
    }
    let (a, b) = (x.to_float()?, y.to_float()?);
    let f: fn(f32, f32) -> bool = match op {
        B::Equal => |p, q| p == q,
        B::NotEqual => |p, q| p != q,
        B::Less => |p, q| p < q,
        B::LessEqual => |p, q| p <= q,
        B::Greater => |p, q| p > q,
        _ => |p, q| p >= q,
    };
    Ok(Value::Bool(zip_with(&a, &b, f)?))
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

pub(super) fn unary(op: Unary, args: &Args<'_>) -> OpResult<Value> {
    use Unary as U;
    let x = args.required("x")?;
    if op == U::LogicalNot {
        return Ok(Value::Bool(x.to_bool()?.mapv(|v| !v).into_shared()));
    }
    if let Value::Int(a) = x {
        // Integer-preserving ops stay exact on integers.
        let f: Option<fn(i32) -> i32> = match op {
            U::Abs => Some(i32::wrapping_abs),
            U::Square => Some(|v| v.wrapping_mul(v)),
            U::Sign => Some(i32::signum),
            U::Relu => Some(|v| v.max(0)),
            U::Relu6 => Some(|v| v.clamp(0, 6)),
            U::Floor | U::Ceil | U::Round => Some(|v| v),
            _ => None,
        };
        if let Some(f) = f {
            return Ok(Value::Int(a.mapv(f).into_shared()));
        }
    }
    let a = x.to_float()?;
    let f: fn(f32) -> f32 = match op {
        U::Relu => |v| v.max(0.0),
        U::Relu6 => |v| v.clamp(0.0, 6.0),
        U::Sigmoid => sigmoid,
        U::Silu => |v| v * sigmoid(v),
        // log(1 + e^x), stable for large |x|.
        U::Softplus => |v| v.max(0.0) + (-v.abs()).exp().ln_1p(),
        U::Softsign => |v| v / (1.0 + v.abs()),
        U::Tanh => f32::tanh,
        U::Exp => f32::exp,
        U::Exp2 => f32::exp2,
        U::Sqrt => f32::sqrt,
        U::Abs => f32::abs,
        U::Square => |v| v * v,
        U::Sign => |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        U::Erf => erf,
        U::Sin => f32::sin,
        U::Cos => f32::cos,
        U::Tan => f32::tan,
        U::Asin => f32::asin,
        U::Acos => f32::acos,
        U::Atan => f32::atan,
        U::Sinh => f32::sinh,
        U::Cosh => f32::cosh,
        U::Atanh => f32::atanh,
        U::Floor => f32::floor,
        U::Ceil => f32::ceil,
        // numpy rounds halves to even.
        U::Round => f32::round_ties_even,
        U::LogicalNot => unreachable!("handled above"),
    };
    Ok(Value::Float(map(&a, f)))
}

/// `f` applied to every element of `a`, a large array split over the
/// kernels' pool of threads.
fn map(a: &FloatArray, f: impl Fn(f32) -> f32 + Sync) -> FloatArray {
    let threads = kernels::cores();
    let Some(values) = a
        .as_slice()
        .filter(|v| threads > 1 && v.len() >= kernels::PARALLEL_ELEMENTS)
    else {
        return a.mapv(f).into_shared();
    };
    // Each element's value depends on it alone, so splitting the elements
    // over the pool changes no result.
    let mut out = buffers::zeroed(values.len());
    let chunk = values.len().div_ceil(threads);
    let parts: Vec<_> = out.chunks_mut(chunk).zip(values.chunks(chunk)).collect();
    kernels::for_each_in_parallel(parts, |(out, values)| kernels::map_slice(values, out, &f));
    match ArrayD::from_shape_vec(a.raw_dim(), out) {
        Ok(mapped) => mapped.into_shared(),
        Err(_) => a.mapv(f).into_shared(),
    }
}

/// The error function in f32, to 4.2e-7 absolute (about seven units in
/// the last place near ±1; measured against `math.erf` on 200 001 points
/// of [-5, 5]): the rational minimax fit Eigen and XLA use, `x P(x²) / Q(x²)`
/// on `x` clamped to [-4, 4] (beyond which erf is ±1 in f32). It has no
/// branch and no `exp`, so the compiler vectorizes a map of it.
pub(crate) fn erf(x: f32) -> f32 {
    // The coefficients as published, rounded to f32 by the compiler.
    #[allow(clippy::excessive_precision)]
    const P: [f32; 7] = [
        -2.72614225801306e-10,
        2.77068142495902e-08,
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    ];
    #[allow(clippy::excessive_precision)]
    const Q: [f32; 5] = [
        -1.45660718464996e-05,
        -2.13374055278905e-04,
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    ];
    // `clamp` keeps a NaN.
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = P.iter().fold(0.0f32, |p, &c| p * x2 + c);
    let q = Q.iter().fold(0.0f32, |q, &c| q * x2 + c);
    x * p / q
}

pub(super) fn gelu(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let mode = args.opt_str("mode")?.unwrap_or("EXACT");
    // One map per mode, each with its own closure, so that the compiler
    // inlines the function and vectorizes the loop (through a function
    // pointer it can do neither).
    let mapped = match mode {
        "EXACT" => map(&x, |v| {
            0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
        }),
        "TANH_APPROXIMATION" => map(&x, |v| {
            let inner = (2.0 / std::f32::consts::PI).sqrt() * (v + 0.044_715 * v * v * v);
            0.5 * v * (1.0 + inner.tanh())
        }),
        "SIGMOID_APPROXIMATION" => map(&x, |v| v * sigmoid(1.702 * v)),
        other => {
            return Err(format!(
                "mode {other:?} is not one of EXACT, TANH_APPROXIMATION, SIGMOID_APPROXIMATION"
            ))
        }
    };
    Ok(Value::Float(mapped))
}

pub(super) fn rsqrt(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let epsilon = args.opt_f32("epsilon")?.unwrap_or(1e-12);
    Ok(Value::Float(map(&x, |v| 1.0 / (v + epsilon).sqrt())))
}

pub(super) fn log(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let epsilon = args.opt_f32("epsilon")?.unwrap_or(1e-45);
    Ok(Value::Float(map(&x, |v| (v + epsilon).ln())))
}

pub(super) fn inverse(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let epsilon = args.opt_f32("epsilon")?.unwrap_or(1e-4);
    Ok(Value::Float(map(&x, |v| 1.0 / (v + epsilon))))
}

pub(super) fn leaky_relu(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = args.opt_f32("alpha")?.unwrap_or(0.01);
    Ok(Value::Float(map(
        &x,
        |v| if v >= 0.0 { v } else { alpha * v },
    )))
}

pub(super) fn elu(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = args.opt_f32("alpha")?.unwrap_or(1.0);
    Ok(Value::Float(map(&x, |v| {
        if v > 0.0 {
            v
        } else {
            alpha * v.exp_m1()
        }
    })))
}

pub(super) fn clamped_relu(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = args.f32("alpha")?;
    let beta = args.f32("beta")?;
    Ok(Value::Float(map(&x, |v| {
        if v >= 0.0 {
            v.min(beta)
        } else {
            alpha * v
        }
    })))
}

pub(super) fn clip(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = args.f32("alpha")?;
    let beta = args.f32("beta")?;
    Ok(Value::Float(map(&x, |v| v.max(alpha).min(beta))))
}

/// `threshold`: `max(x, alpha)`.
pub(super) fn threshold(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = args.f32("alpha")?;
    Ok(Value::Float(map(&x, |v| v.max(alpha))))
}

pub(super) fn thresholded_relu(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = args.opt_f32("alpha")?.unwrap_or(1.0);
    Ok(Value::Float(map(&x, |v| if v >= alpha { v } else { 0.0 })))
}

/// `min(max(alpha·x + beta, 0), 1)`: torch's Hardsigmoid with alpha 1/6.
pub(super) fn sigmoid_hard(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = args.opt_f32("alpha")?.unwrap_or(0.2);
    let beta = args.opt_f32("beta")?.unwrap_or(0.5);
    Ok(Value::Float(map(&x, |v| {
        (alpha * v + beta).clamp(0.0, 1.0)
    })))
}

pub(super) fn scaled_tanh(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = args.opt_f32("alpha")?.unwrap_or(1.0);
    let beta = args.opt_f32("beta")?.unwrap_or(1.0);
    Ok(Value::Float(map(&x, |v| alpha * (beta * v).tanh())))
}

pub(super) fn linear_activation(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = args.f32("alpha")?;
    let beta = args.opt_f32("beta")?.unwrap_or(0.0);
    Ok(Value::Float(map(&x, |v| alpha * v + beta)))
}

/// A per-channel parameter (`[C]`) reshaped to broadcast along axis 1 of
/// `[N, C, *D]`.
fn channel_parameter(args: &Args<'_>, name: &str, x: &FloatArray) -> OpResult<FloatArray> {
    let param = args.float(name)?;
    let channels = x.shape().get(1).copied().unwrap_or(0);
    if x.ndim() < 3 || param.ndim() != 1 || param.len() != channels {
        return Err(format!(
            "{name} of shape {:?} is not one value per channel of x of shape {:?}",
            param.shape(),
            x.shape()
        ));
    }
    let mut shape = vec![1; x.ndim()];
    shape[1] = channels;
    param
        .into_shape_with_order(IxDyn(&shape))
        .map_err(|e| e.to_string())
}

/// `prelu`: a leaky ReLU with one slope per channel.
pub(super) fn prelu(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = channel_parameter(args, "alpha", &x)?;
    Ok(Value::Float(zip_with(&x, &alpha, |v, a| {
        if v >= 0.0 {
            v
        } else {
            a * v
        }
    })?))
}

/// `softplus_parametric`: `alpha · log(1 + e^(beta·x))` per channel.
pub(super) fn softplus_parametric(args: &Args<'_>) -> OpResult<Value> {
    let x = args.float("x")?;
    let alpha = channel_parameter(args, "alpha", &x)?;
    let beta = channel_parameter(args, "beta", &x)?;
    let scaled = zip_with(&x, &beta, |v, b| b * v)?;
    let soft = map(&scaled, |v| v.max(0.0) + (-v.abs()).exp().ln_1p());
    Ok(Value::Float(zip_with(&soft, &alpha, |v, a| a * v)?))
}

pub(super) fn select(args: &Args<'_>) -> OpResult<Value> {
    let cond = args.required("cond")?.to_bool()?;
    let a = args.required("a")?;
    let b = args.required("b")?;
    fn pick<T: Copy>(
        cond: &ArcArray<bool, IxDyn>,
        a: &ArcArray<T, IxDyn>,
        b: &ArcArray<T, IxDyn>,
    ) -> OpResult<ArcArray<T, IxDyn>> {
        let shape = broadcast_shape(&broadcast_shape(cond.shape(), a.shape())?, b.shape())?;
        let shape = IxDyn(&shape);
        let (Some(c), Some(x), Some(y)) = (
            cond.broadcast(shape.clone()),
            a.broadcast(shape.clone()),
            b.broadcast(shape),
        ) else {
            return Err("cond, a and b do not broadcast".to_string());
        };
        Ok(Zip::from(c)
            .and(x)
            .and(y)
            .map_collect(|&c, &x, &y| if c { x } else { y })
            .into_shared())
    }
    Ok(match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(pick(&cond, x, y)?),
        (Value::Bool(x), Value::Bool(y)) => Value::Bool(pick(&cond, x, y)?),
        _ => Value::Float(pick(&cond, &a.to_float()?, &b.to_float()?)?),
    })
}

pub(super) fn cast(args: &Args<'_>) -> OpResult<Value> {
    let x = args.required("x")?;
    let name = args
        .opt_str("dtype")?
        .ok_or("lacks its required input \"dtype\"")?;
    let data_type = dtype_from_name(name).ok_or_else(|| format!("unknown dtype {name:?}"))?;
    value::cast(x, data_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_arrays_split_over_the_pool_map_as_one_thread_does() {
        // Sizes around and past the split, odd so the parts are uneven.
        let split = kernels::PARALLEL_ELEMENTS;
        for len in [split - 1, split, 3 * split + 7] {
            let values: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
            let a = ArrayD::from_shape_vec(IxDyn(&[len]), values)
                .unwrap()
                .into_shared();
            let f = |v: f32| 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
            let mapped = map(&a, f);
            assert_eq!(mapped.shape(), a.shape());
            for (i, (&got, &v)) in mapped.iter().zip(a.iter()).enumerate() {
                assert_eq!(got.to_bits(), f(v).to_bits(), "element {i} of {len}");
            }
        }
        // An array not in row-major order maps too (on one thread).
        let a = ArrayD::from_shape_vec(IxDyn(&[300, 300]), (0..90_000).map(|i| i as f32).collect())
            .unwrap();
        let t = a.t().to_owned().into_shared();
        assert_eq!(
            map(&a.t().into_owned().into_shared(), |v| v + 1.0),
            t.mapv(|v| v + 1.0)
        );
    }

    #[test]
    fn erf_matches_reference_values() {
        // Values from scipy.special.erf.
        for (x, expected) in [
            (0.0, 0.0),
            (1e-4, 1.128_379_163_334_248_4e-4),
            (0.3, 0.328_626_759_459_127_4),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (-2.0, -0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
            (-7.0, -1.0),
        ] {
            let got = f64::from(erf(x as f32));
            assert!(
                (got - expected).abs() <= 4.5e-7 * f64::abs(expected).max(1e-3),
                "erf({x}) = {got}, not {expected}"
            );
        }
        assert!(erf(f32::NAN).is_nan());
        assert!((erf(f32::INFINITY) - 1.0).abs() <= 4.5e-7);
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape(&[1, 8, 1], &[1]).unwrap(), vec![1, 8, 1]);
        assert_eq!(broadcast_shape(&[8, 1], &[3]).unwrap(), vec![8, 3]);
        assert_eq!(broadcast_shape(&[], &[2, 2]).unwrap(), vec![2, 2]);
        assert!(broadcast_shape(&[2, 3], &[4]).is_err());
    }

    #[test]
    fn scalar_powers_compute_as_torch_does() {
        let values: Vec<f32> = (0..257).map(|i| (i as f32 - 128.0) * 0.173).collect();
        let base = ArrayD::from_shape_vec(IxDyn(&[257]), values.clone())
            .unwrap()
            .into_shared();
        type Power = fn(f32) -> f32;
        let cases: [(f32, Power); 6] = [
            (2.0, |v| v * v),
            (3.0, |v| v * v * v),
            (0.5, f32::sqrt),
            (-1.0, |v| 1.0 / v),
            (-2.0, |v| 1.0 / (v * v)),
            (1.7, |v| v.powf(1.7)),
        ];
        for (e, want) in cases {
            // A scalar exponent of rank 0 or 1 takes the single-value path.
            for exponent in [
                ArrayD::from_elem(IxDyn(&[]), e).into_shared(),
                ArrayD::from_elem(IxDyn(&[1]), e).into_shared(),
            ] {
                assert_eq!(scalar_exponent(&base, &exponent), Some(e));
                let got = power(&base, e);
                for (&v, &g) in values.iter().zip(got.iter()) {
                    assert_eq!(g.to_bits(), want(v).to_bits(), "{v}^{e}");
                }
            }
        }
        // An exponent per element, or of higher rank than the base, is not
        // a scalar exponent.
        let per_element = ArrayD::from_elem(IxDyn(&[257]), 2.0f32).into_shared();
        assert_eq!(scalar_exponent(&base, &per_element), None);
        let higher = ArrayD::from_elem(IxDyn(&[1, 1]), 2.0f32).into_shared();
        assert_eq!(scalar_exponent(&base, &higher), None);
    }
}
