//! The reference CPU backend: an interpreter of ML Program functions.
//!
//! It runs the MIL body of a function op by op on the CPU, on every target,
//! so code using [`crate::runtime::Function`] runs and is tested on Linux and
//! Windows, and so a merged package can be checked numerically against its
//! sources without a Mac.
//!
//! # Why ndarray
//!
//! Tensors are [`ndarray`] arrays (0.17): pure Rust with no system library
//! to install or link (no BLAS, no C toolchain), which keeps the crate
//! buildable wherever Rust is; its matrix products ([`ndarray::linalg`]'s
//! `general_mat_mul`, behind `dot`) run on `matrixmultiply`'s packed,
//! vectorized kernels where the backend's own (`kernels`) do not (the
//! recurrent layers, `einsum`); and it is already the crate's optional tensor type
//! (the `ndarray` feature converts [`crate::runtime::Tensor`]s to and from
//! it), so the backend adds no dependency. Arrays are reference-counted
//! (`ArcArray`): weights are never copied when an op reads them, and the
//! functions of one package share them.
//!
//! # What it runs
//!
//! The ops of the op table (the format crate's `mil::ops`, which shape
//! inference reads too) and its elementwise and reduction families:
//! what coremltools 9.0's torch frontend emits at iOS 18 for torchvision's
//! classification and segmentation models (ResNet, MobileNet V2/V3,
//! EfficientNet, RegNet, DenseNet, ConvNeXt, ViT, Swin, DeepLab), UNets and
//! VAE decoders, transformers encoders and decoders (BERT, GPT-2, Llama,
//! T5, Whisper) and recurrent networks: arithmetic, activations, reductions
//! and normalizations, shape and index ops, convolutions (transposed too),
//! pooling and resizing, matrix products and attention; the recurrent
//! layers `lstm`, `rnn` and `gru` (torch's `nn.LSTM` and `nn.RNN`; its
//! `nn.GRU` becomes a loop); control flow, `cond` and `while_loop`, nested
//! to any depth, their blocks compiled at load like the function's body
//! (constants inside them, weights of a loop body included, decoded once);
//! every `constexpr_*` decompression op of iOS 16 to 18 (decompressed once,
//! at load, chains and joint sparse compression included); the iOS 18
//! state ops; `classify`, a `ClassifierConfig` classifier's last op, whose
//! label and label → probability dictionary come back as the String (or
//! Int64) and Dictionary features the description declares (its tie rule:
//! `ops/values.rs`); the tensor lists of `make_list` and the `list_*` ops,
//! carried through loops; 8-bit activations (`quantize`, `dequantize`;
//! `conv_quantized`); sampling grids (`resample`, `affine`: torch's
//! `grid_sample` and `affine_grid`), `crop_resize`, iOS 17's `resize` and
//! `non_maximum_suppression` (torchvision's `nms`); `einsum`, the
//! batch/space moves, `flatten2d`, `reshape_like` and `sliding_windows`;
//! and the random ops (by distribution, not Core ML's values: see the
//! README's "Random ops"). That is every op of coremltools 9.0's core set.
//! Semantics follow coremltools' op
//! definitions. Ops outside the
//! list are an [`Error::UnsupportedOps`] when the function is *loaded*,
//! naming every such op (in nested blocks too) and the function, never a
//! wrong answer later; so are a missing required input, an unknown
//! parameter, a reference to an undefined value or a control-flow op whose
//! blocks do not fit it ([`Error::InvalidModel`]). A loop has no iteration
//! bound, as in Core ML: a program whose loop condition never turns false
//! runs forever.
//!
//! # Numerics and tolerance
//!
//! Everything is computed in f32, from the weights as stored: fp16
//! weights are widened to f32 once, at load, and quantized and palettized
//! weights decompressed once to the precision their op declares, except
//! `linear` weights that only `linear` reads, which stay fp16, or int4 /
//! int8 by blocks (`constexpr_blockwise_shift_scale`), in memory and are
//! widened or dequantized as the kernel reads them, to the same values
//! (`kernels`). Their matrix-vector products (fewer than eight rows) sum
//! each dot product in 32 lanes, then in a fixed tree, with one rounding
//! per multiply-add on AVX2 and NEON (the portable path rounds the product
//! first); the convolutions, `conv_transpose`, `matmul` and `linear` over
//! eight rows or more sum in `kernels/gemm.rs`'s order (in order of `k`
//! within 256-deep blocks, one rounding per multiply-add on AVX2, AVX-512
//! and NEON, the block sums in order, then the bias). Each output element
//! is computed by one thread, so results do not depend on the thread count
//! or, among the FMA paths, on the instruction set. Values are
//! rounded to fp16 only where the program itself says a value *is* fp16:
//! a `cast` to fp16, a decompressed fp16 weight, a write to an fp16 state,
//! an fp16 input and an fp16 output.
//!
//! With `Configuration::fp16_ops` it rounds as the GPU and the Neural
//! Engine do: every fp16 value an op computes, rounded to fp16 right after
//! the op. `program` marks which step outputs are fp16 when the function
//! loads (leaving out the ops that only move elements, whose fp16 outputs
//! are fp16 values already); `exec` rounds them in place after the step.
//! Loaded without it, no step is marked and nothing extra runs. What the
//! mode leaves unmodelled (fused kernels, accumulation widths,
//! transcendental implementations) is in the field's documentation.
//!
//! - **Against Core ML.** Core ML runs fp16 models in fp16 on the GPU and
//!   the Neural Engine, rounding after every op, so its outputs differ from
//!   this backend's by about 1e-2 relative (more after long reductions or
//!   softmaxes over large values); on the CPU with fp32 compute it is much
//!   closer. Compare with a tolerance of that order, never bit for bit.
//! - **Against PyTorch in fp32.** The fixtures' reference outputs come from
//!   the original torch models run in fp32, and the tests accept
//!   `|ours - torch| <= atol + rtol * |torch|` with (atol, rtol) = (1e-5,
//!   1e-5) for the fp32 model, where only the order of summation differs
//!   (observed: 3e-8); (3e-3, 3e-3) for fp16 models, which differ by the
//!   rounding of weights, inputs and outputs to fp16, about 5e-4 relative
//!   each (observed: at most 6.1e-4, a margin of five); and for compressed
//!   weights, compared with torch's *uncompressed* model, their quantization
//!   error on top: (1e-2, 1e-2) for int8 (observed 2.4e-3) and (5e-2, 5e-2)
//!   for 4-bit weights (observed 3.3e-2). Networks tens of layers deep
//!   accumulate rounding over their layers: (1e-4, 1e-4) in fp32 (observed
//!   2.4e-5, DeepLab), (3e-2, 3e-2) in fp16 (observed 7.0e-3, a diffusion
//!   UNet; torch itself in fp16 errs by 7.8e-3), (1e-2, 1e-2) for fp16
//!   recurrent layers (observed 2.6e-3, a GRU). Integer outputs (argmax,
//!   indices) match exactly. The table is `tests/common/fixture_io.rs`.
//!   That decompression itself is exact is tested against coremltools' own
//!   decompression (to 1e-3, the fp16 rounding of the outputs), and every
//!   op against coremltools' value inference, or torch where it has none
//!   (to 1e-5 + 2e-5 relative).
//!
//! # Images
//!
//! An image input reaches the program as a `[1, C, H, W]` tensor of the
//! pixel values 0..255 as floats, the channels in the order of the
//! buffer, which is the declared color space's (B, G, R for a BGR model),
//! as Core ML hands them over; the scale and biases the image type
//! declares are ops of the program (coremltools folds them in).
//!
//! # Speed
//!
//! `linear` multiplies a few rows (a token, a decode step) as
//! matrix-vector products that read the weight in place, split by rows over
//! the machine's cores when the weight is large (a matrix-vector product is
//! bound by memory bandwidth, which one core does not saturate), and many
//! rows as matrix products. A weight kept as stored (fp16, quantized by
//! blocks, or palettized with scalar palettes) goes through `kernels`: it
//! streams half (fp16) or an eighth (int4, 4-bit palettes) of the f32
//! bytes, and a function's resident memory is about its
//! stored weight bytes; many rows are multiplied a block of widened weight
//! rows at a time, split over the cores.
//! Convolutions are im2col onto the same matrix products, split over the
//! cores by output rows (or by groups, for depthwise convolutions). Other
//! ops run on one thread. A prediction of the multifunction guide's
//! 6000-wide LoRA model (two 144 MB f32 weights) is bound by memory
//! bandwidth: see `scripts/bench-reference`.
//!
//! # Weights are shared
//!
//! Loading two functions of one package decodes each shared weight once:
//! a process-wide cache keeps, for every package with a function loaded,
//! the decoded constants by source (blob, or constexpr op over blobs).
//! [`Function::weight`] exposes them, so the sharing can be checked.
//!
//! # States
//!
//! [`Function::new_state`] makes zero-filled buffers of the shapes and
//! types the function's state descriptions declare. A state made by one
//! function works with every function whose state descriptions are the
//! same (the runtime checks that), as a prefill and a decode function
//! share a KV cache. A state may hold more buffers than a function uses
//! (a pipeline's, shared by chunks declaring some states each): the
//! function reads and writes its own. Writes take effect when a prediction succeeds: a
//! failed prediction leaves the state as it was.

mod buffers;
mod exec;
mod kernels;
pub(crate) mod ops;
mod program;
mod value;
mod weights;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use half::f16;
use ndarray::{ArcArray, IxDyn};

use coreml_multifunction_format::package::{FunctionView, Package};
use coreml_multifunction_format::proto::mil_spec::DataType as MilType;
use coreml_multifunction_format::proto::specification::{
    feature_type, state_feature_type, FeatureType,
};

use super::error::{Error, Result};
use super::tensor::{AnyTensor, Tensor};
use super::value::{FeatureValue, Features, Image, PixelFormat};
use coreml_multifunction_format::DataType;
use program::Program;
use value::{round_float, Declared, Value};
#[cfg(test)]
use weights::Constant;
use weights::WeightStore;

/// The op types the reference backend runs, sorted.
#[cfg(test)]
fn supported_ops() -> Vec<&'static str> {
    ops::supported()
}

/// A function ready to run on the CPU.
pub struct Function {
    name: String,
    program: Program,
    outputs: Vec<Output>,
    states: Vec<StateSpec>,
    /// The threads its predictions split their kernels over
    /// (`Configuration::threads`); `None` for the default.
    threads: Option<NonZeroUsize>,
    /// The buffers of the last prediction's released values, for the
    /// next one's results.
    recycler: Mutex<buffers::Recycler>,
    /// Keeps the package's shared weights alive while the function is.
    _weights: Arc<WeightStore>,
}

/// How a block output is handed back: by the type its description declares.
#[derive(Debug)]
struct Output {
    name: String,
    kind: OutputKind,
}

#[derive(Debug)]
enum OutputKind {
    Tensor(DataType),
    Image(PixelFormat),
    Int64,
    Double,
    /// A string (a classifier's string label).
    String,
    /// A dictionary (a classifier's probabilities).
    Dictionary,
}

/// A state buffer as the function description declares it.
#[derive(Debug, Clone, PartialEq)]
struct StateSpec {
    name: String,
    data_type: DataType,
    shape: Vec<usize>,
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Function")
            .field("name", &self.name)
            .field("steps", &self.program.steps.len())
            .field("constants", &self.program.constants.len())
            .field("shared_weights", &self.program.weights.len())
            .finish()
    }
}

/// The view of `function` in `package`, or the error naming the functions
/// there are.
fn view<'a>(package: &'a Package, function: &str) -> Result<FunctionView<'a>> {
    package
        .function(function)
        .ok_or_else(|| Error::UnknownFunction {
            package: package.root().to_path_buf(),
            function: function.to_string(),
            available: coreml_multifunction_format::naming::quoted_list(
                package.functions().iter().map(|f| f.name),
            ),
        })
}

/// The op types `function` of `package` uses that this backend does not
/// implement, nested blocks included: sorted, each once.
pub(crate) fn missing_ops(package: &Package, function: &str) -> Result<Vec<String>> {
    Ok(program::missing_ops(view(package, function)?.block()))
}

impl Function {
    /// Prepares `function` of `package`: compiles its body, decodes its
    /// weights (sharing them with the package's other loaded functions) and
    /// checks that every op is implemented and has its required inputs.
    /// With `fp16_ops`, every fp16 value an op computes is rounded to fp16
    /// right after it, as the GPU and the Neural Engine compute
    /// (`Configuration::fp16_ops`).
    pub fn load(package: &Package, function: &str, fp16_ops: bool) -> Result<Function> {
        let view = view(package, function)?;
        let invalid = |detail: String| Error::InvalidModel {
            function: function.to_string(),
            detail,
        };
        let store = weights::store_for(package);
        let program = program::compile(package, &view, &store, fp16_ops)?;

        let mut outputs = Vec::new();
        for output in &view.description.output {
            if !program.outputs.iter().any(|(name, _)| name == &output.name) {
                return Err(invalid(format!(
                    "the description's output {:?} is not an output of the program",
                    output.name
                )));
            }
            let kind = match output.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
                Some(feature_type::Type::MultiArrayType(array)) => {
                    OutputKind::Tensor(DataType::from_array_data_type(array.data_type).ok_or_else(
                        || invalid(format!("output {:?} has no array data type", output.name)),
                    )?)
                }
                Some(feature_type::Type::ImageType(image)) => {
                    OutputKind::Image(PixelFormat::of_image_type(image).ok_or_else(|| {
                        invalid(format!(
                            "output {:?} has an unknown color space",
                            output.name
                        ))
                    })?)
                }
                Some(feature_type::Type::Int64Type(_)) => OutputKind::Int64,
                Some(feature_type::Type::DoubleType(_)) => OutputKind::Double,
                Some(feature_type::Type::StringType(_)) => OutputKind::String,
                Some(feature_type::Type::DictionaryType(_)) => OutputKind::Dictionary,
                _ => {
                    return Err(invalid(format!(
                        "output {:?} is of a type the reference backend does not return \
                         (it returns arrays, images, int64, double, string and dictionary \
                         values)",
                        output.name
                    )))
                }
            };
            outputs.push(Output {
                name: output.name.clone(),
                kind,
            });
        }

        let mut states = Vec::new();
        for state in &view.description.state {
            states.push(state_spec(&state.name, state.r#type.as_ref()).map_err(invalid)?);
        }
        for input in &program.states {
            let Some(spec) = states.iter().find(|s| s.name == input.name) else {
                return Err(invalid(format!(
                    "the program reads state {:?}, which the description does not declare",
                    input.name
                )));
            };
            let declared = input.declared.static_shape();
            if declared.as_deref() != Some(spec.shape.as_slice()) {
                return Err(invalid(format!(
                    "state {:?} is declared with shape {:?}, the program uses it as {:?}",
                    input.name, spec.shape, input.declared.dims
                )));
            }
        }

        Ok(Function {
            name: function.to_string(),
            program,
            outputs,
            states,
            threads: None,
            recycler: Mutex::default(),
            _weights: store,
        })
    }

    /// The function with its predictions' kernels split over `threads`
    /// threads (`None`: `RAYON_NUM_THREADS`, else the cores available).
    /// Any count gives the same results.
    pub fn with_threads(self, threads: Option<NonZeroUsize>) -> Function {
        Function { threads, ..self }
    }

    #[cfg(test)]
    /// The decoded weight named `name` (the output of a `const` or
    /// `constexpr_*` op reading weight storage), as shared with every other
    /// loaded function of the package that uses the same weight.
    pub fn weight(&self, name: &str) -> Option<Arc<Constant>> {
        self.program.weights.get(name).cloned()
    }

    /// Runs the function. `state` is required exactly when the function
    /// has states; its buffers are updated when the prediction succeeds.
    pub fn predict(&self, inputs: &Features, state: Option<&mut State>) -> Result<Features> {
        let mut bound = Vec::with_capacity(self.program.inputs.len());
        for (name, slot, declared) in &self.program.inputs {
            let Some(given) = inputs.get(name) else {
                return Err(Error::MissingInput {
                    function: self.name.clone(),
                    name: name.clone(),
                });
            };
            let value = feature_to_value(given, declared).map_err(|detail| Error::WrongType {
                function: self.name.clone(),
                name: name.clone(),
                expected: detail,
                found: given.kind(),
            })?;
            bound.push((*slot, value));
        }

        let wrong_state = |detail: String| Error::WrongState {
            function: self.name.clone(),
            detail,
        };
        let mut states = exec::StateValues {
            current: Vec::new(),
            written: vec![None; self.program.states.len()],
        };
        if !self.program.states.is_empty() {
            let Some(buffers) = state.as_deref() else {
                return Err(wrong_state(
                    "the function is stateful and needs a state".to_string(),
                ));
            };
            for input in &self.program.states {
                let spec = self.states.iter().find(|s| s.name == input.name);
                let buffer = buffers.buffers.get(&input.name);
                match (spec, buffer) {
                    (Some(spec), Some(buffer)) if buffer.spec == *spec => {
                        states.current.push(buffer.value.clone());
                    }
                    (_, Some(buffer)) => {
                        return Err(wrong_state(format!(
                            "its buffer {:?} is {} {:?}, the function needs {}",
                            input.name,
                            buffer.spec.data_type,
                            buffer.spec.shape,
                            spec.map_or("nothing".to_string(), |s| format!(
                                "{} {:?}",
                                s.data_type, s.shape
                            ))
                        )))
                    }
                    (_, None) => {
                        return Err(wrong_state(format!("it has no buffer {:?}", input.name)));
                    }
                }
            }
        }

        let run = || {
            kernels::with_threads(self.threads, || {
                exec::run(&self.name, &self.program, bound, &mut states)
            })
        };
        // A prediction running at the same time on another thread has the
        // recycler: this one allocates as usual.
        let results = match self.recycler.try_lock() {
            Ok(mut recycler) => buffers::using(&mut recycler, run),
            Err(_) => run(),
        }?;

        let mut outputs = Features::new();
        for output in &self.outputs {
            let Some((_, value)) = results.iter().find(|(name, _)| name == &output.name) else {
                return Err(Error::Output {
                    function: self.name.clone(),
                    name: output.name.clone(),
                    detail: "the program did not compute it".to_string(),
                });
            };
            let feature =
                value_to_feature(value, &output.kind).map_err(|detail| Error::Output {
                    function: self.name.clone(),
                    name: output.name.clone(),
                    detail,
                })?;
            outputs.insert(output.name.clone(), feature);
        }

        // The prediction succeeded: its state writes take effect.
        if let Some(buffers) = state {
            for (input, written) in self.program.states.iter().zip(states.written) {
                if let (Some(value), Some(buffer)) = (written, buffers.buffers.get_mut(&input.name))
                {
                    buffer.value = value;
                }
            }
        }
        Ok(outputs)
    }

    /// A state whose buffers have the shapes and types of the function's
    /// state descriptions, every element zero.
    pub fn new_state(&self) -> Result<State> {
        State::zeros(&self.name, &self.states)
    }
}

impl State {
    /// A state of the buffers `descriptions` declare, every element zero,
    /// made without a function: a pipeline's, when no chunk declares every
    /// state of the pipeline. `owner` names it in errors.
    pub(crate) fn of_descriptions(
        owner: &str,
        descriptions: &[coreml_multifunction_format::proto::FeatureDescription],
    ) -> Result<State> {
        let specs = descriptions
            .iter()
            .map(|d| state_spec(&d.name, d.r#type.as_ref()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|detail| Error::InvalidModel {
                function: owner.to_string(),
                detail,
            })?;
        State::zeros(owner, &specs)
    }

    fn zeros(owner: &str, specs: &[StateSpec]) -> Result<State> {
        let mut buffers = BTreeMap::new();
        for spec in specs {
            let count = super::tensor::element_count(&spec.shape)?;
            let value = match spec.data_type {
                DataType::Int32 | DataType::Int8 => Value::int(spec.shape.clone(), vec![0; count]),
                _ => Value::float(spec.shape.clone(), vec![0.0; count]),
            }
            .map_err(|detail| Error::InvalidModel {
                function: owner.to_string(),
                detail,
            })?;
            buffers.insert(
                spec.name.clone(),
                Buffer {
                    spec: spec.clone(),
                    value,
                },
            );
        }
        Ok(State { buffers })
    }
}

/// The buffers of a stateful function (a KV cache), held by the caller
/// between predictions.
#[derive(Debug, Clone)]
pub struct State {
    buffers: BTreeMap<String, Buffer>,
}

#[derive(Debug, Clone)]
struct Buffer {
    spec: StateSpec,
    value: Value,
}

impl State {
    /// A copy of buffer `name`, in the buffer's declared element type.
    pub fn read(&self, name: &str) -> Result<AnyTensor> {
        let buffer = self.buffers.get(name).ok_or_else(|| Error::WrongState {
            function: String::new(),
            detail: format!("there is no state {name:?}"),
        })?;
        value_to_tensor(&buffer.value, buffer.spec.data_type).map_err(|detail| Error::WrongState {
            function: String::new(),
            detail,
        })
    }

    /// Replaces buffer `name` with `tensor`, which must have the buffer's
    /// element type and shape (to resume from a saved KV cache, say).
    pub fn write(&mut self, name: &str, tensor: &AnyTensor) -> Result<()> {
        let wrong = |detail: String| Error::WrongState {
            function: String::new(),
            detail,
        };
        let buffer = self
            .buffers
            .get_mut(name)
            .ok_or_else(|| wrong(format!("there is no state {name:?}")))?;
        if tensor.data_type() != buffer.spec.data_type
            || tensor.shape() != buffer.spec.shape.as_slice()
        {
            return Err(wrong(format!(
                "state {name:?} holds {} {:?}, not {} {:?}",
                buffer.spec.data_type,
                buffer.spec.shape,
                tensor.data_type(),
                tensor.shape()
            )));
        }
        buffer.value = tensor_to_value(tensor).map_err(wrong)?;
        Ok(())
    }
}

fn state_spec(name: &str, feature: Option<&FeatureType>) -> std::result::Result<StateSpec, String> {
    let array = match feature.and_then(|t| t.r#type.as_ref()) {
        Some(feature_type::Type::StateType(state)) => match &state.r#type {
            Some(state_feature_type::Type::ArrayType(array)) => array,
            None => return Err(format!("state {name:?} does not wrap an array")),
        },
        _ => return Err(format!("state {name:?} is not declared as a state")),
    };
    let data_type = DataType::from_array_data_type(array.data_type)
        .ok_or_else(|| format!("state {name:?} has no array data type"))?;
    let shape = array
        .shape
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("state {name:?} has the dimension {d}")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(StateSpec {
        name: name.to_string(),
        data_type,
        shape,
    })
}

/// An input as the program receives it: a tensor in the precision the
/// program declares (an image as `[1, C, H, W]` floats 0..255, channels in
/// the declared color order; the scale and bias coremltools folds into the
/// program do the rest).
fn feature_to_value(
    feature: &FeatureValue,
    declared: &Declared,
) -> std::result::Result<Value, String> {
    let value = match feature {
        FeatureValue::Tensor(tensor) => tensor_to_value(tensor)?,
        FeatureValue::Image(image) => image_to_value(image)?,
        FeatureValue::Int64(v) => {
            let v =
                i32::try_from(*v).map_err(|_| format!("an int64 within int32 range, not {v}"))?;
            Value::int(Vec::new(), vec![v])?
        }
        FeatureValue::Double(v) => Value::float(Vec::new(), vec![*v as f32])?,
        FeatureValue::String(s) => Value::Str(vec![s.clone()]),
        FeatureValue::Dictionary(_) => return Err("a tensor, not a dictionary".to_string()),
    };
    Ok(match value::conform(value, declared.data_type)? {
        Value::Float(a) => Value::Float(round_float(a, declared.data_type)),
        other => other,
    })
}

fn tensor_to_value(tensor: &AnyTensor) -> std::result::Result<Value, String> {
    let shape = tensor.shape().to_vec();
    match tensor {
        AnyTensor::Int32(t) => Value::int(shape, t.as_slice().to_vec()),
        AnyTensor::Int8(t) => {
            Value::int(shape, t.as_slice().iter().map(|&v| i32::from(v)).collect())
        }
        other => Value::float(shape, other.to_f32().into_vec()),
    }
}

fn image_to_value(image: &Image) -> std::result::Result<Value, String> {
    let (w, h) = (image.width, image.height);
    let channels = match image.format {
        PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
        PixelFormat::Gray8 | PixelFormat::GrayF16 => 1,
    };
    let expected = w * h * image.format.bytes_per_pixel();
    if image.pixels.len() != expected {
        return Err(format!("an image of {w}x{h} pixels in {expected} bytes"));
    }
    let mut planes = vec![0f32; channels * w * h];
    match image.format {
        PixelFormat::GrayF16 => {
            for (p, bytes) in planes.iter_mut().zip(image.pixels.chunks_exact(2)) {
                *p = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
            }
        }
        _ => {
            // Interleaved HWC bytes to planes, channels in the order the
            // buffer (and the declared color space) has them.
            for (i, &byte) in image.pixels.iter().enumerate() {
                let (pixel, channel) = (i / channels, i % channels);
                planes[channel * w * h + pixel] = f32::from(byte);
            }
        }
    }
    Value::float(vec![1, channels, h, w], planes)
}

fn value_to_tensor(value: &Value, data_type: DataType) -> std::result::Result<AnyTensor, String> {
    fn array<T: Copy>(a: &ArcArray<T, IxDyn>) -> (Vec<usize>, Vec<T>) {
        (a.shape().to_vec(), a.iter().copied().collect())
    }
    let tensor_error = |e: Error| e.to_string();
    Ok(match data_type {
        DataType::Float16 => {
            let (shape, data) = array(&value.to_float()?);
            Tensor::new(
                shape,
                data.into_iter().map(f16::from_f32).collect::<Vec<_>>(),
            )
            .map_err(tensor_error)?
            .into()
        }
        DataType::Float32 => {
            let (shape, data) = array(&value.to_float()?);
            Tensor::new(shape, data).map_err(tensor_error)?.into()
        }
        DataType::Float64 => {
            let (shape, data) = array(&value.to_float()?);
            Tensor::new(shape, data.into_iter().map(f64::from).collect::<Vec<_>>())
                .map_err(tensor_error)?
                .into()
        }
        DataType::Int32 => {
            let (shape, data) = array(&value.to_int()?);
            Tensor::new(shape, data).map_err(tensor_error)?.into()
        }
        DataType::Int8 => {
            let (shape, data) = array(&value::cast(value, MilType::Int8)?.to_int()?);
            Tensor::new(shape, data.into_iter().map(|v| v as i8).collect::<Vec<_>>())
                .map_err(tensor_error)?
                .into()
        }
    })
}

fn value_to_feature(value: &Value, kind: &OutputKind) -> std::result::Result<FeatureValue, String> {
    match kind {
        OutputKind::Tensor(data_type) => {
            Ok(FeatureValue::Tensor(value_to_tensor(value, *data_type)?))
        }
        OutputKind::Int64 => {
            let v = value.to_i64_scalar()?;
            Ok(FeatureValue::Int64(v))
        }
        OutputKind::Double => Ok(FeatureValue::Double(f64::from(value.to_f32_scalar()?))),
        OutputKind::Image(format) => value_to_image(value, *format).map(FeatureValue::Image),
        OutputKind::String => Ok(FeatureValue::String(value.to_str()?.to_string())),
        OutputKind::Dictionary => match value {
            Value::Dict(dictionary) => Ok(FeatureValue::Dictionary(dictionary.clone())),
            other => Err(format!("expected a dictionary, found {}", other.kind())),
        },
    }
}

fn value_to_image(value: &Value, format: PixelFormat) -> std::result::Result<Image, String> {
    let planes = value.to_float()?;
    let shape = planes.shape().to_vec();
    let (channels, h, w) = match shape.as_slice() {
        [1, c, h, w] | [c, h, w] => (*c, *h, *w),
        other => {
            return Err(format!(
                "an image needs a [1, C, H, W] tensor, not {other:?}"
            ))
        }
    };
    let wanted = match format {
        PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
        PixelFormat::Gray8 | PixelFormat::GrayF16 => 1,
    };
    if channels != wanted {
        return Err(format!(
            "{format:?} needs {wanted} channels, the tensor has {channels}"
        ));
    }
    let data: Vec<f32> = planes.iter().copied().collect();
    let mut pixels = Vec::with_capacity(w * h * format.bytes_per_pixel());
    for pixel in 0..w * h {
        for c in 0..channels {
            let v = data[c * w * h + pixel];
            match format {
                PixelFormat::GrayF16 => pixels.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                _ => pixels.push(v.round().clamp(0.0, 255.0) as u8),
            }
        }
    }
    Image::new(w, h, format, pixels).ok_or_else(|| "an image of inconsistent size".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Function>();
        check::<State>();
    }

    #[test]
    fn images_become_planes_in_buffer_order() {
        // 2x1 BGR image: pixel 0 = (b=1, g=2, r=3), pixel 1 = (4, 5, 6).
        let image = Image::new(2, 1, PixelFormat::Bgr8, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let Value::Float(planes) = image_to_value(&image).unwrap() else {
            panic!()
        };
        assert_eq!(planes.shape(), &[1, 3, 1, 2]);
        assert_eq!(
            planes.iter().copied().collect::<Vec<_>>(),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
        let back = value_to_image(&Value::Float(planes), PixelFormat::Bgr8).unwrap();
        assert_eq!(back, image);
    }

    #[test]
    fn the_supported_list_matches_the_op_table() {
        let all = supported_ops();
        assert!(all.len() > 80, "{}", all.len());
        for op in &all {
            assert!(ops::spec(op).is_some(), "{op}");
        }
        for op in ["gru_cell", "frobnicate"] {
            assert!(ops::spec(op).is_none(), "{op}");
        }
    }

    fn fixture(dir: &str, name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(dir)
            .join(format!("{name}.mlpackage"))
    }

    #[test]
    fn functions_of_one_package_share_decoded_weights() {
        let merged = fixture("merged", "lora_pair");
        let package = Package::open(&merged).unwrap();
        let one = Function::load(&package, "adapter_1", false).unwrap();
        let two = Function::load(&package, "adapter_2", false).unwrap();
        let base = "base_model_model_linear1_base_layer_weight_to_fp16";
        let (a, b) = (one.weight(base).unwrap(), two.weight(base).unwrap());
        assert!(Arc::ptr_eq(&a, &b), "the base weight is decoded twice");
        assert_eq!(a.shape(), vec![64, 64]);
        // Each adapter's own weights are its own.
        let lora = "base_model_model_linear1_lora_A_default_weight_to_fp16";
        assert!(!Arc::ptr_eq(
            &one.weight(lora).unwrap(),
            &two.weight(lora).unwrap()
        ));
        // A second load of the package shares them too, while the first lives.
        let again = Package::open(&merged).unwrap();
        let three = Function::load(&again, "adapter_1", false).unwrap();
        assert!(Arc::ptr_eq(&a, &three.weight(base).unwrap()));
        // Another package's copy of the same bytes is another weight.
        let separate = Package::open(fixture("packages", "lora_adapter_1")).unwrap();
        let source = Function::load(&separate, "main", false).unwrap();
        assert!(!Arc::ptr_eq(&source.weight(base).unwrap(), &a));
    }

    #[test]
    fn compressed_weights_share_their_decompression() {
        let package = Package::open(fixture("merged", "compressed")).unwrap();
        let int8 = Function::load(&package, "int8", false).unwrap();
        let again = Function::load(&package, "int8", false).unwrap();
        let name = "linear1_weight_to_fp16_quantized";
        assert!(Arc::ptr_eq(
            &int8.weight(name).unwrap(),
            &again.weight(name).unwrap()
        ));
        let palettized = Function::load(&package, "palettized", false).unwrap();
        assert_eq!(
            palettized
                .weight("linear1_weight_to_fp16_palettized")
                .unwrap()
                .shape(),
            vec![64, 64]
        );
        // Both stay compressed, read by `linear` as stored.
        for (function, name) in [
            (&int8, "linear1_weight_to_fp16_quantized"),
            (&palettized, "linear1_weight_to_fp16_palettized"),
        ] {
            let weight = function.weight(name).unwrap();
            assert!(
                matches!(weight.value, Value::Weight(_)),
                "{name} was decompressed"
            );
        }
    }
}
