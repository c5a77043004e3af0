//! The ops' implementations on ndarray. Which ops exist and what
//! parameters each takes is the op table the format crate holds
//! (`coreml_multifunction_format::mil::ops`), which shape inference shares;
//! the shape arithmetic of reshapes, slices, broadcasting and sliding
//! windows is its `mil::shapes`, so a result has the shape its type rule
//! gives.
//!
//! Semantics follow coremltools' op definitions
//! (`coremltools/converters/mil/mil/ops/defs/iOS15..iOS18`): parameter
//! names, defaults, broadcasting (numpy's), negative axes, and the
//! numpy-style slicing of `slice_by_index` / `slice_update`.

pub(crate) mod constexpr;
mod conv;
mod elementwise;
mod index;
mod linalg;
mod misc;
mod pool;
// Issue 23 (opsvq): quantization, sampling grids, detection.
mod quantize;
mod random;
mod recurrent;
mod reduce;
mod resample;
mod sampling;
mod shape;
// Issue 23, opsvalues.
mod values;
mod window;

use ndarray::{ArcArray, IxDyn};

use super::program::Step;
use super::value::{OpResult, Value};

#[cfg(test)]
pub(crate) use coreml_multifunction_format::mil::ops::supported;
pub(crate) use coreml_multifunction_format::mil::ops::{
    spec, Binary, Kind, Pool, Random, Rearrange, Reduce, Unary,
};

/// What an op prepares at load from its constant inputs, so that no
/// prediction repeats it.
#[derive(Debug)]
pub(crate) enum Prepared {
    /// A convolution's weight packed for the GEMM.
    Conv(conv::PackedWeight),
}

/// What `step` prepares from the constants `constant` gives (by slot), if
/// anything.
pub(crate) fn prepare<'v>(
    step: &Step,
    constant: &dyn Fn(usize) -> Option<&'v Value>,
) -> Option<Prepared> {
    match step.kind {
        Kind::Conv => conv::prepare(step, constant).map(Prepared::Conv),
        _ => None,
    }
}

/// The values a step reads, by parameter name.
pub(crate) struct Args<'a> {
    pub step: &'a Step,
    pub env: &'a [Option<Value>],
}

impl<'a> Args<'a> {
    /// The value of parameter `name`, if given.
    pub(crate) fn get(&self, name: &str) -> OpResult<Option<&'a Value>> {
        match self.step.input(name) {
            None | Some([]) => Ok(None),
            Some([slot]) => self.slot(*slot).map(Some),
            Some(slots) => Err(format!(
                "parameter {name:?} is bound to {} values, it takes one",
                slots.len()
            )),
        }
    }

    fn slot(&self, slot: usize) -> OpResult<&'a Value> {
        self.env
            .get(slot)
            .and_then(Option::as_ref)
            .ok_or_else(|| format!("reads slot {slot}, which holds no value (interpreter bug)"))
    }

    /// The value of required parameter `name`.
    pub(crate) fn required(&self, name: &str) -> OpResult<&'a Value> {
        self.get(name)?
            .ok_or_else(|| format!("lacks its required input {name:?}"))
    }

    /// Every value bound to tuple parameter `name` (`concat`'s `values`).
    pub(crate) fn list(&self, name: &str) -> OpResult<Vec<&'a Value>> {
        self.step
            .input(name)
            .unwrap_or_default()
            .iter()
            .map(|&slot| self.slot(slot))
            .collect()
    }

    /// Required parameter `name` as floats.
    pub(crate) fn float(&self, name: &str) -> OpResult<ArcArray<f32, IxDyn>> {
        self.required(name)?
            .to_float()
            .map_err(|e| format!("input {name:?}: {e}"))
    }

    /// Optional integer parameter `name`.
    pub(crate) fn opt_i64(&self, name: &str) -> OpResult<Option<i64>> {
        self.get(name)?
            .map(|v| {
                v.to_i64_scalar()
                    .map_err(|e| format!("input {name:?}: {e}"))
            })
            .transpose()
    }

    /// Optional integer-vector parameter `name`.
    pub(crate) fn opt_i64_vec(&self, name: &str) -> OpResult<Option<Vec<i64>>> {
        self.get(name)?
            .map(|v| v.to_i64_vec().map_err(|e| format!("input {name:?}: {e}")))
            .transpose()
    }

    /// Required integer-vector parameter `name`.
    pub(crate) fn i64_vec(&self, name: &str) -> OpResult<Vec<i64>> {
        self.opt_i64_vec(name)?
            .ok_or_else(|| format!("lacks its required input {name:?}"))
    }

    /// Optional bool parameter `name`.
    pub(crate) fn opt_bool(&self, name: &str) -> OpResult<Option<bool>> {
        self.get(name)?
            .map(|v| {
                v.to_bool_scalar()
                    .map_err(|e| format!("input {name:?}: {e}"))
            })
            .transpose()
    }

    /// Optional bool-vector parameter `name`.
    pub(crate) fn opt_bool_vec(&self, name: &str) -> OpResult<Option<Vec<bool>>> {
        self.get(name)?
            .map(|v| v.to_bool_vec().map_err(|e| format!("input {name:?}: {e}")))
            .transpose()
    }

    /// Optional float parameter `name`.
    pub(crate) fn opt_f32(&self, name: &str) -> OpResult<Option<f32>> {
        self.get(name)?
            .map(|v| {
                v.to_f32_scalar()
                    .map_err(|e| format!("input {name:?}: {e}"))
            })
            .transpose()
    }

    /// Required float parameter `name`.
    pub(crate) fn f32(&self, name: &str) -> OpResult<f32> {
        self.opt_f32(name)?
            .ok_or_else(|| format!("lacks its required input {name:?}"))
    }

    /// Optional string parameter `name`.
    pub(crate) fn opt_str(&self, name: &str) -> OpResult<Option<&'a str>> {
        self.get(name)?
            .map(|v| v.to_str().map_err(|e| format!("input {name:?}: {e}")))
            .transpose()
    }
}

/// Runs every kind of step but the state and control-flow ops (which the
/// executor runs).
pub(crate) fn run(kind: Kind, args: &Args<'_>) -> OpResult<Vec<Value>> {
    let single = |v: OpResult<Value>| v.map(|v| vec![v]);
    match kind {
        Kind::Const | Kind::Constexpr(_) => {
            Err("constants are evaluated at load time (interpreter bug)".to_string())
        }
        Kind::ReadState | Kind::WriteState => {
            Err("state ops are run by the executor (interpreter bug)".to_string())
        }
        Kind::WhileLoop | Kind::Cond => {
            Err("control flow is run by the executor (interpreter bug)".to_string())
        }
        Kind::Lstm => recurrent::lstm(args),
        Kind::Rnn => recurrent::rnn(args),
        Kind::Linear => single(linalg::linear(args)),
        Kind::Matmul => single(linalg::matmul(args)),
        Kind::Conv => single(conv::conv(args)),
        Kind::ConvTranspose => single(conv::conv_transpose(args)),
        Kind::Attention => single(linalg::attention(args)),
        Kind::Pool(op) => single(pool::pool(op, args)),
        Kind::Binary(op) => single(elementwise::binary(op, args)),
        Kind::Unary(op) => single(elementwise::unary(op, args)),
        Kind::Gelu => single(elementwise::gelu(args)),
        Kind::Rsqrt => single(elementwise::rsqrt(args)),
        Kind::Log => single(elementwise::log(args)),
        Kind::Inverse => single(elementwise::inverse(args)),
        Kind::LeakyRelu => single(elementwise::leaky_relu(args)),
        Kind::Elu => single(elementwise::elu(args)),
        Kind::ClampedRelu => single(elementwise::clamped_relu(args)),
        Kind::Clip => single(elementwise::clip(args)),
        Kind::ThresholdedRelu => single(elementwise::thresholded_relu(args)),
        Kind::Threshold => single(elementwise::threshold(args)),
        Kind::SigmoidHard => single(elementwise::sigmoid_hard(args)),
        Kind::ScaledTanh => single(elementwise::scaled_tanh(args)),
        Kind::LinearActivation => single(elementwise::linear_activation(args)),
        Kind::Prelu => single(elementwise::prelu(args)),
        Kind::SoftplusParametric => single(elementwise::softplus_parametric(args)),
        Kind::Select => single(elementwise::select(args)),
        Kind::Cast => single(elementwise::cast(args)),
        Kind::Softmax => single(reduce::softmax(args)),
        Kind::LayerNorm => single(reduce::layer_norm(args)),
        Kind::BatchNorm => single(reduce::batch_norm(args)),
        Kind::InstanceNorm => single(reduce::instance_norm(args)),
        Kind::L2Norm => single(reduce::l2_norm(args)),
        Kind::LocalResponseNorm => single(reduce::local_response_norm(args)),
        Kind::Reduce(op) => single(reduce::reduce(op, args)),
        Kind::ArgMax => single(reduce::arg_reduce(true, args)),
        Kind::ArgMin => single(reduce::arg_reduce(false, args)),
        Kind::Reshape => single(shape::reshape(args)),
        Kind::Transpose => single(shape::transpose(args)),
        Kind::ExpandDims => single(shape::expand_dims(args)),
        Kind::Squeeze => single(shape::squeeze(args)),
        Kind::Concat => single(shape::concat(args)),
        Kind::Split => shape::split(args),
        Kind::Stack => single(shape::stack(args)),
        Kind::SliceByIndex => single(shape::slice_by_index(args)),
        Kind::SliceBySize => single(shape::slice_by_size(args)),
        Kind::SliceUpdate => single(shape::slice_update(args)),
        Kind::Tile => single(shape::tile(args)),
        Kind::Pad => single(shape::pad(args)),
        Kind::Reverse => single(shape::reverse(args)),
        Kind::ReverseSequence => single(shape::reverse_sequence(args)),
        Kind::Crop => single(shape::crop(args)),
        Kind::NonZero => single(shape::non_zero(args)),
        Kind::GatherNd => single(index::gather_nd(args)),
        Kind::Scatter => single(index::scatter(args)),
        Kind::ScatterAlongAxis => single(index::scatter_along_axis(args)),
        Kind::ScatterNd => single(index::scatter_nd(args)),
        Kind::TopK => index::topk(args),
        Kind::ArgSort => single(index::argsort(args)),
        Kind::CumSum => single(index::cumsum(args)),
        Kind::OneHot => single(index::one_hot(args)),
        Kind::UpsampleNearest => single(resample::upsample_nearest_neighbor(args)),
        Kind::ResizeNearest => single(resample::resize_nearest_neighbor(args)),
        Kind::UpsampleBilinear => single(resample::upsample_bilinear(args)),
        Kind::ResizeBilinear => single(resample::resize_bilinear(args)),
        Kind::Rearrange(op) => single(resample::rearrange_op(op, args)),
        Kind::Gather => single(shape::gather(args)),
        Kind::GatherAlongAxis => single(shape::gather_along_axis(args)),
        Kind::Fill => single(shape::fill(args)),
        Kind::FillLike => single(shape::fill_like(args)),
        Kind::Shape => single(shape::shape_of(args)),
        Kind::BandPart => single(shape::band_part(args)),
        Kind::Range1d => single(shape::range_1d(args)),
        Kind::Identity => single(Ok(args.required("x")?.clone())),
        // Issue 23 (opsvq): quantization, sampling grids, detection.
        Kind::Quantize => single(quantize::quantize(args)),
        Kind::Dequantize => single(quantize::dequantize(args)),
        Kind::ConvQuantized => single(quantize::conv_quantized(args)),
        Kind::Resample => single(sampling::resample(args)),
        Kind::Affine => single(sampling::affine(args)),
        Kind::CropResize => single(sampling::crop_resize(args)),
        Kind::Resize => single(sampling::resize(args)),
        Kind::NonMaximumSuppression => sampling::non_maximum_suppression(args),
        // issue 23 (opsmisc)
        Kind::Gru => recurrent::gru(args),
        Kind::Einsum => single(misc::einsum(args)),
        Kind::SpaceToBatch => single(misc::space_to_batch(args)),
        Kind::BatchToSpace => single(misc::batch_to_space(args)),
        Kind::Flatten2d => single(misc::flatten2d(args)),
        Kind::ReshapeLike => single(misc::reshape_like(args)),
        Kind::SlidingWindows => single(misc::sliding_windows(args)),
        Kind::Random(op) => single(random::random(op, args)),
        // Issue 23, opsvalues.
        Kind::Classify => values::classify(args),
        Kind::MakeList => single(values::make_list(args)),
        Kind::ListRead => single(values::list_read(args)),
        Kind::ListWrite => single(values::list_write(args)),
        Kind::ListGather => single(values::list_gather(args)),
        Kind::ListScatter => single(values::list_scatter(args)),
        Kind::ListLength => single(values::list_length(args)),
    }
}

/// The most elements an op may create from its parameters alone (`fill`,
/// `tile`, `range_1d`): 2^32, 16 GiB of f32. A program asking for more is
/// refused rather than allowed to exhaust memory.
const MAX_CREATED: usize = 1 << 32;

/// The element count of `shape`, refusing overflow and sizes beyond
/// [`MAX_CREATED`].
pub(crate) fn created_count(shape: &[usize]) -> OpResult<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_CREATED)
        .ok_or_else(|| format!("a tensor of shape {shape:?} is too large to create"))
}

/// Normalizes a possibly negative axis of a tensor of rank `rank`.
pub(crate) use coreml_multifunction_format::mil::shapes::axis;

/// Applies `$body` (an expression producing `OpResult<ArcArray<T, IxDyn>>`
/// from `$array: &ArcArray<T, IxDyn>`) to a tensor of any element type.
macro_rules! any_tensor {
    ($value:expr, $array:ident => $body:expr) => {
        match $value {
            $crate::runtime::reference::value::Value::Float($array) => {
                $crate::runtime::reference::value::Value::Float($body?)
            }
            $crate::runtime::reference::value::Value::Int($array) => {
                $crate::runtime::reference::value::Value::Int($body?)
            }
            $crate::runtime::reference::value::Value::Bool($array) => {
                $crate::runtime::reference::value::Value::Bool($body?)
            }
            other => return Err(format!("expected a tensor, found {}", other.kind())),
        }
    };
}
pub(crate) use any_tensor;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vq_tests;
