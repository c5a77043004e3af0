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
struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// The generator for `seed`.
    fn new(seed: u64) -> Rng {
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
    fn uniform(&mut self) -> f64 {
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
            if low.is_nan() || high.is_nan() || low > high {
                return Err(format!("low {low} is not at most high {high}"));
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
            if !weight.is_finite() || weight < 0.0 {
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
        if total <= 0.0 {
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

/// By distribution, not by value (Core ML's stream is not reproducible):
/// each statistic of a large sample lies within five standard errors of
/// its expectation. The seeds are fixed, so the tests are deterministic;
/// a correct generator fails a five-sigma bound about once in 1.7 million
/// checks, so a failure means a wrong distribution, not bad luck.
#[cfg(test)]
mod tests {
    use super::super::tests::run_op;
    use super::*;

    const N: usize = 200_000;

    fn i(data: &[i32]) -> Value {
        Value::int(vec![data.len()], data.to_vec()).unwrap()
    }

    fn scalar(v: f32) -> Value {
        Value::float(vec![], vec![v]).unwrap()
    }

    fn seed(v: i32) -> Value {
        Value::int(vec![], vec![v]).unwrap()
    }

    fn sample(op: &str, inputs: Vec<(&str, Value)>) -> (Vec<usize>, Vec<f64>) {
        let out = run_op(op, inputs, 1).unwrap().remove(0);
        let values = out
            .to_float()
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        (out.shape(), values)
    }

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    fn variance(v: &[f64]) -> f64 {
        let m = mean(v);
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64
    }

    /// `got` within five standard errors `se` of `want`.
    fn within(what: &str, got: f64, want: f64, se: f64) {
        assert!(
            (got - want).abs() <= 5.0 * se,
            "{what}: {got} is more than 5 standard errors ({se}) from {want}"
        );
    }

    #[test]
    fn uniform_fills_its_half_open_range_evenly() {
        let (low, high) = (-2.0f64, 3.0f64);
        let (shape, v) = sample(
            "random_uniform",
            vec![
                ("shape", i(&[4, N as i32 / 4])),
                ("low", scalar(low as f32)),
                ("high", scalar(high as f32)),
                ("seed", seed(7)),
            ],
        );
        assert_eq!(shape, vec![4, N / 4]);
        assert!(v.iter().all(|&x| (low..high).contains(&x)));
        let width = high - low;
        let n = v.len() as f64;
        within(
            "mean",
            mean(&v),
            (low + high) / 2.0,
            width / (12.0 * n).sqrt(),
        );
        // The variance of a uniform sample's variance: (μ4 - σ⁴) / n, with
        // μ4 = w⁴/80 and σ² = w²/12.
        let sigma2 = width * width / 12.0;
        let mu4 = width.powi(4) / 80.0;
        within(
            "variance",
            variance(&v),
            sigma2,
            ((mu4 - sigma2 * sigma2) / n).sqrt(),
        );
        // Each tenth of the range holds a tenth of the sample.
        for k in 0..10 {
            let (a, b) = (
                low + width * k as f64 / 10.0,
                low + width * (k + 1) as f64 / 10.0,
            );
            let share = v.iter().filter(|&&x| a <= x && x < b).count() as f64 / n;
            within("a tenth's share", share, 0.1, (0.1 * 0.9 / n).sqrt());
        }
        // high == low gives low.
        let (_, v) = sample(
            "random_uniform",
            vec![
                ("shape", i(&[3])),
                ("low", scalar(1.5)),
                ("high", scalar(1.5)),
            ],
        );
        assert_eq!(v, vec![1.5; 3]);
    }

    #[test]
    fn normal_has_its_mean_spread_and_shape() {
        let (mu, sigma) = (1.5f64, 2.0f64);
        let (shape, v) = sample(
            "random_normal",
            vec![
                ("shape", i(&[N as i32])),
                ("mean", scalar(mu as f32)),
                ("stddev", scalar(sigma as f32)),
                ("seed", seed(11)),
            ],
        );
        assert_eq!(shape, vec![N]);
        let n = v.len() as f64;
        within("mean", mean(&v), mu, sigma / n.sqrt());
        // A normal sample's variance has variance 2σ⁴ / (n - 1).
        within(
            "variance",
            variance(&v),
            sigma * sigma,
            (2.0 * sigma.powi(4) / (n - 1.0)).sqrt(),
        );
        // About 68.27 % within one standard deviation, 95.45 % within two.
        for (k, p) in [(1.0, 0.682_689_5), (2.0, 0.954_499_7)] {
            let share = v.iter().filter(|&&x| (x - mu).abs() < k * sigma).count() as f64 / n;
            within(
                "the share within k sigma",
                share,
                p,
                (p * (1.0 - p) / n).sqrt(),
            );
        }
        // Symmetric: as many above the mean as below.
        let above = v.iter().filter(|&&x| x > mu).count() as f64 / n;
        within("the share above the mean", above, 0.5, (0.25 / n).sqrt());
    }

    #[test]
    fn bernoulli_draws_ones_with_its_probability() {
        let p = 0.3f64;
        let (shape, v) = sample(
            "random_bernoulli",
            vec![
                ("shape", i(&[2, N as i32 / 2])),
                ("prob", scalar(p as f32)),
                ("seed", seed(3)),
            ],
        );
        assert_eq!(shape, vec![2, N / 2]);
        assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
        within(
            "the share of ones",
            mean(&v),
            p,
            (p * (1.0 - p) / v.len() as f64).sqrt(),
        );
        // The default probability is one half.
        let (_, v) = sample("random_bernoulli", vec![("shape", i(&[N as i32]))]);
        within("the default share", mean(&v), 0.5, (0.25 / N as f64).sqrt());
    }

    #[test]
    fn categorical_draws_classes_at_their_probabilities() {
        let size = 60_000;
        let probs = [[0.1f64, 0.2, 0.7], [0.5, 0.25, 0.25]];
        let logits: Vec<f32> = probs
            .iter()
            .flatten()
            .map(|&p| (p.ln() + 3.0) as f32)
            .collect();
        let (shape, v) = sample(
            "random_categorical",
            vec![
                ("x", Value::float(vec![2, 3], logits).unwrap()),
                ("size", seed(size)),
                ("seed", seed(5)),
            ],
        );
        assert_eq!(shape, vec![2, size as usize]);
        for (row, p) in v.chunks(size as usize).zip(probs) {
            for (class, &p) in p.iter().enumerate() {
                let share = row.iter().filter(|&&c| c == class as f64).count() as f64 / size as f64;
                within(
                    "a class's share",
                    share,
                    p,
                    (p * (1.0 - p) / size as f64).sqrt(),
                );
            }
        }
        // `probs` mode normalizes; a class of probability 0 never comes.
        let (shape, v) = sample(
            "random_categorical",
            vec![
                (
                    "x",
                    Value::float(vec![1, 1, 3], vec![1.0, 0.0, 3.0]).unwrap(),
                ),
                ("mode", Value::Str(vec!["probs".to_string()])),
                ("size", seed(size)),
            ],
        );
        assert_eq!(shape, vec![1, 1, size as usize]);
        assert!(!v.contains(&1.0));
        let first = v.iter().filter(|&&c| c == 0.0).count() as f64 / size as f64;
        within(
            "class 0's share",
            first,
            0.25,
            (0.25 * 0.75 / size as f64).sqrt(),
        );
    }

    #[test]
    fn a_seed_fixes_the_stream_and_unseeded_ops_stay_deterministic() {
        let draw = |seed_value: Option<i32>| {
            let mut inputs = vec![("shape", i(&[64]))];
            if let Some(s) = seed_value {
                inputs.push(("seed", seed(s)));
            }
            sample("random_uniform", inputs).1
        };
        assert_eq!(draw(Some(42)), draw(Some(42)));
        assert_ne!(draw(Some(42)), draw(Some(43)));
        // -1 is the default: unseeded, a stream from the op's name.
        assert_eq!(draw(None), draw(Some(-1)));
        assert_eq!(draw(None), draw(None));
        assert_ne!(draw(None), draw(Some(42)));
    }

    #[test]
    fn bad_random_parameters_are_refused() {
        let error = |op: &str, inputs: Vec<(&str, Value)>| run_op(op, inputs, 1).unwrap_err();
        let e = error(
            "random_bernoulli",
            vec![("shape", i(&[2])), ("prob", scalar(1.5))],
        );
        assert!(e.contains("prob 1.5"), "{e}");
        let e = error(
            "random_uniform",
            vec![
                ("shape", i(&[2])),
                ("low", scalar(2.0)),
                ("high", scalar(1.0)),
            ],
        );
        assert!(e.contains("low 2"), "{e}");
        let e = error("random_normal", vec![("shape", i(&[2, -1]))]);
        assert!(e.contains("negative"), "{e}");
        let e = error(
            "random_categorical",
            vec![
                ("x", Value::float(vec![2], vec![1.0, 2.0]).unwrap()),
                ("size", seed(0)),
            ],
        );
        assert!(e.contains("size 0"), "{e}");
        let e = error(
            "random_categorical",
            vec![
                ("x", Value::float(vec![2], vec![-1.0, 2.0]).unwrap()),
                ("mode", Value::Str(vec!["probs".to_string()])),
            ],
        );
        assert!(e.contains("probability"), "{e}");
    }
}
