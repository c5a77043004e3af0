//! The random ops `random_bernoulli`, `random_categorical`,
//! `random_normal` and `random_uniform` (issue 23), as coremltools 9.0
//! defines them (`iOS15/random.py`; no later opset changes them).
//!
//! Core ML's own random stream cannot be reproduced, so these ops match
//! Core ML in distribution, not in value: their tests check moments
//! within a statistical bound on large samples, ranges, shapes and
//! categorical frequencies. The values come from xoshiro256** seeded by
//! SplitMix64 (written here, no dependency), from the op's `seed`:
//!
//! - `seed` ≥ 0, or any value but -1: that seed, so two ops with the same
//!   seed draw the same stream ("a reproducible sequence of values across
//!   multiple invokes", coremltools says).
//! - `seed` -1, the default, which asks Core ML for an unseeded stream: a
//!   seed made from the op's name, so that the reference backend stays
//!   deterministic (the same inputs give the same results) while two
//!   unseeded ops of a program draw different streams.
//!
//! Each prediction starts its streams afresh: the same inputs give the
//! same outputs every time.

use ndarray::{ArrayD, Axis, IxDyn};

use super::{created_count, Args, Random};
use crate::runtime::reference::value::{OpResult, Value};

/// The seed that asks for an unseeded stream (coremltools' default).
const UNSEEDED: i64 = -1;

/// xoshiro256** (Blackman and Vigna), seeded with SplitMix64 as its
/// authors recommend.
pub(crate) struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// The generator for `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        let mut mix = seed;
        let mut next = || {
            mix = mix.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = mix;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            state: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform double in `[0, 1)` (53 random bits).
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal deviate (Box–Muller, one of each pair).
    fn normal(&mut self) -> f64 {
        // 1 - u is in (0, 1], so its logarithm is finite.
        let radius = (-2.0 * (1.0 - self.uniform()).ln()).sqrt();
        radius * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

/// The seed of the op's stream (see the module's doc).
fn stream(args: &Args<'_>) -> OpResult<Rng> {
    let seed = args.opt_i64("seed")?.unwrap_or(UNSEEDED);
    Ok(Rng::new(if seed == UNSEEDED {
        // FNV-1a of the op's name.
        args.step.name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    } else {
        seed as u64
    }))
}

/// Optional float parameter `name`, `default` when absent.
fn param(args: &Args<'_>, name: &str, default: f32) -> OpResult<f32> {
    Ok(args.opt_f32(name)?.unwrap_or(default))
}

/// `count` values of `draw`, as a tensor of the `shape` parameter's shape.
fn filled(args: &Args<'_>, mut draw: impl FnMut() -> f32) -> OpResult<Value> {
    let shape = args
        .i64_vec("shape")?
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("shape has a negative entry {d}")))
        .collect::<OpResult<Vec<usize>>>()?;
    let count = created_count(&shape)?;
    let data: Vec<f32> = (0..count).map(|_| draw()).collect();
    Value::float(shape, data)
}

pub(super) fn random(op: Random, args: &Args<'_>) -> OpResult<Value> {
    let mut rng = stream(args)?;
    match op {
        Random::Bernoulli => {
            let p = param(args, "prob", 0.5)?;
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("prob {p} is not a probability in [0, 1]"));
            }
            let p = f64::from(p);
            filled(args, || f32::from(u8::from(rng.uniform() < p)))
        }
        Random::Normal => {
            let (mean, stddev) = (param(args, "mean", 0.0)?, param(args, "stddev", 1.0)?);
            filled(args, || {
                (f64::from(mean) + f64::from(stddev) * rng.normal()) as f32
            })
        }
        Random::Uniform => {
            let (low, high) = (param(args, "low", 0.0)?, param(args, "high", 1.0)?);
            if !(low <= high) {
                return Err(format!("low {low} is above high {high}"));
            }
            filled(args, || {
                let v = (f64::from(low) + f64::from(high - low) * rng.uniform()) as f32;
                // [low, high): rounding to f32 may reach high itself.
                if v >= high && high > low {
                    high.next_down()
                } else {
                    v
                }
            })
        }
        Random::Categorical => categorical(args, &mut rng),
    }
}

/// `size` draws with replacement from each distribution along `x`'s last
/// axis (`mode` `logits`, the default, or `probs`), as class indices in
/// `x`'s element type.
fn categorical(args: &Args<'_>, rng: &mut Rng) -> OpResult<Value> {
    let x = args.float("x")?;
    let logits = match args.opt_str("mode")?.unwrap_or("logits") {
        "logits" => true,
        "probs" => false,
        other => return Err(format!("mode {other:?} is not logits or probs")),
    };
    let size = args.opt_i64("size")?.unwrap_or(1);
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("size {size} is not positive"))?;
    let Some((&classes, rows)) = x.shape().split_last() else {
        return Err("x is a scalar, not a tensor of probabilities".to_string());
    };
    if classes == 0 {
        return Err("x has no classes (its last axis is empty)".to_string());
    }
    let mut shape = rows.to_vec();
    shape.push(size);
    created_count(&shape)?;
    let flat = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((x.len() / classes, classes))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(flat.nrows() * size);
    let mut cumulative = vec![0f64; classes];
    for row in flat.axis_iter(Axis(0)) {
        // Unnormalized weights: exp(logit - max), or the probabilities
        // (coremltools' `probs` mode takes their log, which a softmax
        // undoes: the probabilities normalized).
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut total = 0f64;
        for (c, &v) in cumulative.iter_mut().zip(row) {
            let weight = if logits {
                f64::from(v - max).exp()
            } else {
                f64::from(v)
            };
            if !(weight >= 0.0) || !weight.is_finite() {
                return Err(format!(
                    "x holds {v}, not a {}",
                    if logits {
                        "finite logit"
                    } else {
                        "probability"
                    }
                ));
            }
            total += weight;
            *c = total;
        }
        if !(total > 0.0) {
            return Err("a distribution of x has no positive probability".to_string());
        }
        for _ in 0..size {
            let u = rng.uniform() * total;
            // The first class whose cumulative weight exceeds u (skipping
            // classes of weight 0).
            let class = cumulative.partition_point(|&c| c <= u).min(classes - 1);
            out.push(class as f32);
        }
    }
    Ok(Value::Float(
        ArrayD::from_shape_vec(IxDyn(&shape), out)
            .map_err(|e| e.to_string())?
            .into_shared(),
    ))
}
