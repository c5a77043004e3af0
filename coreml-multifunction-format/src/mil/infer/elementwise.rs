//! Elementwise rules: broadcasting binary ops, unary ops and activations,
//! `select`, `cast`.

use super::{dtype_from_name, is_float, Dim, Elements, Inputs, Operand, TensorType, MAX_FOLDED};
use crate::mil::ops::{Binary, Kind, Unary};
use crate::proto::mil_spec::DataType;

/// The dimensions `a` and `b` broadcast to (numpy's rules), an unknown
/// dimension broadcasting as whatever the other side needs.
pub(super) fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let rank = a.len().max(b.len());
    let at = |s: &[Dim], i: usize| {
        if i + s.len() >= rank {
            s[i + s.len() - rank]
        } else {
            Some(1)
        }
    };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (Some(x), Some(y)) if x == y => Ok(Some(x)),
            (Some(1), y) => Ok(y),
            (x, Some(1)) => Ok(x),
            (Some(x), Some(y)) => Err(format!(
                "shapes {} and {} do not broadcast (dimension {x} against {y})",
                super::shape_text(a),
                super::shape_text(b)
            )),
            (None, Some(y)) | (Some(y), None) => Ok(Some(y)),
            (None, None) => Ok(None),
        })
        .collect()
}

/// For each element of a tensor of `out` shape, the index of the element
/// of a tensor of shape `shape` broadcast to it.
pub(super) fn broadcast_indices(out: &[u64], shape: &[u64]) -> Vec<usize> {
    let count: u64 = out.iter().product();
    let offset = out.len() - shape.len();
    let mut strides = vec![0usize; out.len()];
    let mut stride = 1usize;
    for i in (0..shape.len()).rev() {
        if shape[i] != 1 {
            strides[i + offset] = stride;
        }
        stride *= shape[i] as usize;
    }
    let mut indices = Vec::with_capacity(count as usize);
    let mut position = vec![0u64; out.len()];
    for _ in 0..count {
        indices.push(
            position
                .iter()
                .zip(&strides)
                .map(|(&p, &s)| p as usize * s)
                .sum(),
        );
        for axis in (0..out.len()).rev() {
            position[axis] += 1;
            if position[axis] < out[axis] {
                break;
            }
            position[axis] = 0;
        }
    }
    indices
}

/// The type both operands promote to: the wider, floats over integers
/// over bools (coremltools' `promoted_primitive_type`).
fn promote(a: DataType, b: DataType) -> DataType {
    fn rank(d: DataType) -> u8 {
        match d {
            DataType::Bool => 0,
            DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 => 2,
            DataType::Uint32 | DataType::Int32 => 3,
            DataType::Uint64 | DataType::Int64 => 4,
            DataType::Float16 => 5,
            DataType::Float32 => 6,
            DataType::Float64 => 7,
            _ => 0,
        }
    }
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// Keeps a float result in the precision of its type.
fn round_to(dtype: DataType, values: Vec<f64>) -> Elements {
    Elements::Float(match dtype {
        DataType::Float16 => values.into_iter().map(super::round_to_f16).collect(),
        DataType::Float32 => values.into_iter().map(|v| v as f32 as f64).collect(),
        _ => values,
    })
}

pub(super) fn binary(op: Binary, inputs: &Inputs<'_>) -> Result<Operand, String> {
    use Binary as B;
    let (x, y) = (inputs.required("x")?, inputs.required("y")?);
    let shape = broadcast(&x.ty.shape, &y.ty.shape)?;
    let promoted = promote(x.ty.dtype, y.ty.dtype);
    let dtype = match op {
        B::Equal | B::NotEqual | B::Less | B::LessEqual | B::Greater | B::GreaterEqual => {
            DataType::Bool
        }
        B::LogicalAnd | B::LogicalOr | B::LogicalXor => DataType::Bool,
        _ => promoted,
    };
    let ty = TensorType { dtype, shape };
    let value = fold_binary(op, x, y, &ty, promoted);
    Ok(Operand::maybe(ty, value))
}

fn fold_binary(
    op: Binary,
    x: &Operand,
    y: &Operand,
    out: &TensorType,
    promoted: DataType,
) -> Option<Elements> {
    use Binary as B;
    let (xv, yv) = (x.value.as_ref()?, y.value.as_ref()?);
    let shape = out.known_shape()?;
    if shape.iter().product::<u64>() > MAX_FOLDED as u64 {
        return None;
    }
    let xi = broadcast_indices(&shape, &x.ty.known_shape()?);
    let yi = broadcast_indices(&shape, &y.ty.known_shape()?);
    if let (B::LogicalAnd | B::LogicalOr | B::LogicalXor, Elements::Bool(a), Elements::Bool(b)) =
        (op, xv, yv)
    {
        let f = |p: bool, q: bool| match op {
            B::LogicalAnd => p && q,
            B::LogicalOr => p || q,
            _ => p != q,
        };
        return Some(Elements::Bool(
            xi.iter().zip(&yi).map(|(&i, &j)| f(a[i], b[j])).collect(),
        ));
    }
    let comparison = matches!(
        op,
        B::Equal | B::NotEqual | B::Less | B::LessEqual | B::Greater | B::GreaterEqual
    );
    let compare = |o: std::cmp::Ordering| match op {
        B::Equal => o.is_eq(),
        B::NotEqual => o.is_ne(),
        B::Less => o.is_lt(),
        B::LessEqual => o.is_le(),
        B::Greater => o.is_gt(),
        _ => o.is_ge(),
    };
    if !is_float(promoted) && promoted != DataType::Bool && op != B::RealDiv && op != B::Pow {
        let (a, b) = (xv.to_ints()?, yv.to_ints()?);
        let pairs = xi.iter().zip(&yi).map(|(&i, &j)| (a[i], b[j]));
        if comparison {
            let bools: Option<Vec<bool>> = pairs.map(|(p, q)| Some(compare(p?.cmp(&q?)))).collect();
            return bools.map(Elements::Bool);
        }
        let f = |p: i64, q: i64| -> Option<i64> {
            match op {
                B::Add => p.checked_add(q),
                B::Sub => p.checked_sub(q),
                B::Mul => p.checked_mul(q),
                B::FloorDiv => (q != 0).then(|| {
                    let d = p / q;
                    if p % q != 0 && ((p < 0) != (q < 0)) {
                        d - 1
                    } else {
                        d
                    }
                }),
                B::Mod => (q != 0).then(|| ((p % q) + q) % q),
                B::Maximum => Some(p.max(q)),
                B::Minimum => Some(p.min(q)),
                _ => None,
            }
        };
        // An unknown element stays unknown; a known one that cannot be
        // computed (division by zero, overflow) stops the fold.
        let mut out = Vec::with_capacity(xi.len());
        for (p, q) in pairs {
            out.push(match (p, q) {
                (Some(p), Some(q)) => Some(f(p, q)?),
                _ => None,
            });
        }
        return Some(Elements::Int(out));
    }
    let (a, b) = (xv.to_floats()?, yv.to_floats()?);
    let pairs = xi.iter().zip(&yi).map(|(&i, &j)| (a[i], b[j]));
    if comparison {
        return pairs
            .map(|(p, q)| p.partial_cmp(&q).map(compare))
            .collect::<Option<Vec<bool>>>()
            .map(Elements::Bool);
    }
    let f = |p: f64, q: f64| match op {
        B::Add => p + q,
        B::Sub => p - q,
        B::Mul => p * q,
        B::RealDiv => p / q,
        B::Pow => p.powf(q),
        B::FloorDiv => (p / q).floor(),
        B::Mod => p - (p / q).floor() * q,
        B::Maximum => p.max(q),
        B::Minimum => p.min(q),
        _ => f64::NAN,
    };
    let values: Vec<f64> = pairs.map(|(p, q)| f(p, q)).collect();
    if !is_float(out.dtype) {
        // An integer real_div or pow: coremltools keeps the integer type.
        return None;
    }
    Some(round_to(out.dtype, values))
}

pub(super) fn unary(op: Unary, inputs: &Inputs<'_>) -> Result<Operand, String> {
    use Unary as U;
    let x = inputs.required("x")?;
    let ty = x.ty.clone();
    let value = x.value.as_ref().and_then(|v| match (op, v) {
        (U::LogicalNot, Elements::Bool(b)) => Some(Elements::Bool(b.iter().map(|b| !b).collect())),
        (U::Abs | U::Sign | U::Square | U::Relu, Elements::Int(i)) => Some(Elements::Int(
            i.iter()
                .map(|v| {
                    v.and_then(|v| match op {
                        U::Abs => v.checked_abs(),
                        U::Sign => Some(v.signum()),
                        U::Square => v.checked_mul(v),
                        _ => Some(v.max(0)),
                    })
                })
                .collect(),
        )),
        (
            U::Abs | U::Sign | U::Floor | U::Ceil | U::Round | U::Square | U::Relu | U::Sqrt,
            Elements::Float(f),
        ) if is_float(ty.dtype) => Some(round_to(
            ty.dtype,
            f.iter()
                .map(|&v| match op {
                    U::Abs => v.abs(),
                    U::Sign => {
                        if v == 0.0 {
                            0.0
                        } else {
                            v.signum()
                        }
                    }
                    U::Floor => v.floor(),
                    U::Ceil => v.ceil(),
                    U::Round => v.round_ties_even(),
                    U::Square => v * v,
                    U::Sqrt => v.sqrt(),
                    _ => v.max(0.0),
                })
                .collect(),
        )),
        _ => None,
    });
    Ok(Operand::maybe(ty, value))
}

/// Ops whose result has the type of `x` (activations, normalizations,
/// `reverse`, `band_part`, `reverse_sequence`), after checking the
/// parameters that must match it.
pub(super) fn same_as_x(kind: Kind, inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.tensor("x")?;
    match kind {
        Kind::Softmax => {
            super::axis(inputs.opt_i64("axis")?.unwrap_or(-1), x.rank())?;
        }
        Kind::LayerNorm => {
            if let Some(axes) = inputs.opt_i64_vec("axes")? {
                for a in axes {
                    super::axis(a, x.rank())?;
                }
            }
        }
        Kind::BatchNorm | Kind::InstanceNorm | Kind::L2Norm | Kind::LocalResponseNorm
            if x.rank() < 2 =>
        {
            return Err(format!("x of type {} has no channel axis", x.describe()));
        }
        Kind::Reverse => {
            if let Some(axes) = inputs.opt_i64_vec("axes")? {
                for a in axes {
                    super::axis(a, x.rank())?;
                }
            }
        }
        Kind::BandPart if x.rank() < 2 => {
            return Err(format!("x of type {} is not a matrix", x.describe()));
        }
        _ => {}
    }
    Ok(Operand::tensor(x.clone()))
}

pub(super) fn select(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let (cond, a, b) = (
        inputs.required("cond")?,
        inputs.required("a")?,
        inputs.required("b")?,
    );
    // coremltools declares the broadcast of the branches alone (its
    // type inference does not read cond's shape); a program it wrote
    // declares that, so that is what inference gives.
    let shape = broadcast(&a.ty.shape, &b.ty.shape)?;
    let ty = TensorType {
        dtype: promote(a.ty.dtype, b.ty.dtype),
        shape,
    };
    let value = (|| {
        let (Elements::Bool(c), av, bv) =
            (cond.value.as_ref()?, a.value.as_ref()?, b.value.as_ref()?)
        else {
            return None;
        };
        if broadcast(&cond.ty.shape, &ty.shape).ok()? != ty.shape {
            return None;
        }
        let out = ty.known_shape()?;
        let ci = broadcast_indices(&out, &cond.ty.known_shape()?);
        let ai = broadcast_indices(&out, &a.ty.known_shape()?);
        let bi = broadcast_indices(&out, &b.ty.known_shape()?);
        // a's elements then b's: pick from one or the other.
        let both = Elements::joined(ty.dtype, &[av, bv])?;
        let picks: Vec<usize> = (0..ci.len())
            .map(|k| if c[ci[k]] { ai[k] } else { av.len() + bi[k] })
            .collect();
        Some(both.pick(&picks))
    })();
    Ok(Operand::maybe(ty, value))
}

pub(super) fn cast(inputs: &Inputs<'_>) -> Result<Operand, String> {
    let x = inputs.required("x")?;
    let name = inputs
        .opt_str("dtype")?
        .ok_or_else(|| "lacks its required input \"dtype\"".to_string())?;
    let dtype = dtype_from_name(name).ok_or_else(|| format!("dtype {name:?} is not a type"))?;
    let ty = x.ty.with_dtype(dtype);
    let value = x.value.as_ref().and_then(|v| v.cast(dtype));
    Ok(Operand::maybe(ty, value))
}
