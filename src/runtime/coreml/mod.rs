//! The Core ML backend (Apple targets), on `objc2-core-ml`.
//!
//! # Never executed
//!
//! **None of this module has ever run.** It was written without a Mac: it
//! is type-checked and linted for `aarch64-apple-darwin` and
//! `aarch64-apple-ios` only, against the `objc2-core-ml` 0.3.2 bindings
//! and Apple's header documentation. Its platform-independent parts (stride
//! arithmetic, pixel rows, raw enum values, the compile cache) live in
//! [`super::strides`] and [`super::compile_cache`] and are unit-tested on
//! every host; the Objective-C calls here are not tested at all until this
//! runs on Apple hardware.
//!
//! # Loading
//!
//! Core ML loads compiled models (`.mlmodelc`); [`Function::load`] finds or
//! makes one as [`super::compile_cache`] describes: a build-time compile
//! from `xcrun coremlcompiler` beside the package
//! (`coreml_multifunction_build::compile_with_xcrun`) when its stamp matches the
//! package, else the on-disk cache, else a compile on first load with
//! `+[MLModel compileModelAtURL:completionHandler:]` (macOS 13 / iOS 16),
//! moved atomically into the cache. The load waits for that completion
//! handler on a channel; Core ML does not document which queue runs it,
//! so load models off the main thread (as Apple recommends for loading
//! anyway). If a model from the build fails to load, the cache's copy is
//! tried; if a cached one fails, it is evicted, compiled afresh and loaded
//! again (at most once per load). Finding the model hashes the package's
//! files once per process (see [`super::compile_cache`]), which costs a full
//! read of a large model at the first load of each process.
//!
//! It then loads with an `MLModelConfiguration` whose `computeUnits` is
//! [`super::ComputeUnits`] (named `MLComputeUnits` constants) and, for a
//! multifunction package, whose `functionName` is the function: that
//! property exists from macOS 15 / iOS 18 / tvOS 18 / watchOS 11 /
//! visionOS 2, checked with `objc2::available!`, and on older systems
//! loading fails with [`Error::OsTooOld`]. A single-function package leaves
//! `functionName` unset (its one function is the default).
//!
//! # Values
//!
//! Tensors become `MLMultiArray`s of their own shape and type, filled inside
//! `getMutableBytesWithHandler` with the strides that block is given;
//! outputs and state buffers are read inside `getBytesWithHandler` with the
//! array's own strides (a copy when contiguous, row by row when row-padded
//! as the Neural Engine leaves them, element by element otherwise). Scoped
//! buffer access needs macOS 12.3 / iOS 15.4, checked at load. fp16 arrays
//! need macOS 12 / iOS 16 and int8 arrays the macOS / iOS 26 SDKs, each
//! checked before an array is made. Images become `CVPixelBuffer`s
//! (32BGRA for RGB and BGR, OneComponent8 for grayscale, OneComponent16Half
//! for fp16 grayscale); image outputs are read back the same way. Int64,
//! double, string and dictionary features map to their `MLFeatureValue`s.
//!
//! Nothing reaches an Objective-C API that raises: every value is checked
//! first (by [`super::check`] and again here: rank, zero dimensions, sizes,
//! key types), each API newer than the crate's oldest supported systems is
//! guarded with `available!`, and Rust code run inside Apple's blocks
//! catches its own panics instead of unwinding through Apple's frames.
//! Errors Core ML reports as `NSError` become [`Error::CoreMl`] with the
//! domain, code and localized description.
//!
//! # Threads
//!
//! [`Function`] holds an `MLModel`, which `objc2-core-ml` leaves `!Send`
//! and `!Sync`, and so is this type: Apple's headers and documentation for
//! `MLModel` say nothing about using one instance from several threads for
//! synchronous predictions (only the async prediction API of macOS 14 /
//! iOS 17 is presented as safe to call concurrently, in the WWDC23 session
//! "Improve Core ML integration with async prediction"; this backend does
//! not use it), so no `Send` or `Sync` is claimed. Load one function per
//! thread instead. [`State`] holds an
//! `MLState`, which `objc2-core-ml` declares `Send + Sync` from the SDK
//! header; Apple's `MLState` documentation requires that predictions
//! sharing a state be serialized and that its buffers not be touched while
//! a prediction runs, which the `&mut State` of
//! [`super::Model::predict_with_state`] guarantees.

mod array;
mod compile;
mod features;
mod image;

use std::path::Path;

use objc2::rc::{autoreleasepool, Retained};
use objc2::runtime::ProtocolObject;
use objc2::AnyThread;
use objc2_core_ml::{
    MLArrayBatchProvider, MLBatchProvider, MLComputeUnits, MLFeatureProvider, MLModel,
    MLModelConfiguration, MLMultiArrayDataType, MLState,
};
use objc2_foundation::{NSArray, NSError, NSString, NSURL};

use coreml_multifunction_format::naming::quoted_list;
use coreml_multifunction_format::package::Package;
use coreml_multifunction_format::proto::FunctionDescription;
use coreml_multifunction_format::DataType;

use super::error::{Error, Result};
use super::strides::raw;
use super::tensor::AnyTensor;
use super::value::Features;
use super::{check, ComputeUnits, Configuration};

// The raw values the host-tested tables in `strides::raw` hold are exactly
// the SDK's named constants; checked when this module compiles.
const _: () = {
    assert!(MLMultiArrayDataType::Float16.0 == raw::MULTI_ARRAY_FLOAT16);
    assert!(MLMultiArrayDataType::Float32.0 == raw::MULTI_ARRAY_FLOAT32);
    assert!(MLMultiArrayDataType::Float64.0 == raw::MULTI_ARRAY_FLOAT64);
    assert!(MLMultiArrayDataType::Double.0 == raw::MULTI_ARRAY_FLOAT64);
    assert!(MLMultiArrayDataType::Int32.0 == raw::MULTI_ARRAY_INT32);
    assert!(MLMultiArrayDataType::Int8.0 == raw::MULTI_ARRAY_INT8);
    assert!(MLComputeUnits::CPUOnly.0 == raw::COMPUTE_UNITS_CPU_ONLY);
    assert!(MLComputeUnits::CPUAndGPU.0 == raw::COMPUTE_UNITS_CPU_AND_GPU);
    assert!(MLComputeUnits::All.0 == raw::COMPUTE_UNITS_ALL);
    assert!(MLComputeUnits::CPUAndNeuralEngine.0 == raw::COMPUTE_UNITS_CPU_AND_NEURAL_ENGINE);
    assert!(objc2_core_video::kCVPixelFormatType_32BGRA == raw::PIXEL_FORMAT_32BGRA);
    assert!(objc2_core_video::kCVPixelFormatType_32ARGB == raw::PIXEL_FORMAT_32ARGB);
    assert!(
        objc2_core_video::kCVPixelFormatType_OneComponent8 == raw::PIXEL_FORMAT_ONE_COMPONENT_8
    );
    assert!(
        objc2_core_video::kCVPixelFormatType_OneComponent16Half
            == raw::PIXEL_FORMAT_ONE_COMPONENT_16_HALF
    );
};

/// The systems of multifunction models and model states.
const MULTIFUNCTION_SYSTEMS: &str = "macOS 15, iOS 18, tvOS 18, watchOS 11 or visionOS 2";

/// Whether `MLModelConfiguration.functionName`, `-[MLModel newState]` and
/// stateful prediction exist on this system.
fn multifunction_available() -> bool {
    objc2::available!(
        macos = 15.0,
        ios = 18.0,
        tvos = 18.0,
        watchos = 11.0,
        visionos = 2.0
    )
}

/// An [`Error::OsTooOld`] unless [`multifunction_available`].
fn require_multifunction(what: &str) -> Result<()> {
    if multifunction_available() {
        Ok(())
    } else {
        Err(Error::OsTooOld(format!(
            "{what} needs {MULTIFUNCTION_SYSTEMS} or later (Core ML multifunction models and states)"
        )))
    }
}

/// Whether `getBytesWithHandler:` / `getMutableBytesWithHandler:` exist.
fn scoped_buffer_access_available() -> bool {
    objc2::available!(
        macos = 12.3,
        ios = 15.4,
        tvos = 15.4,
        watchos = 8.5,
        visionos = 1.0
    )
}

/// Whether `MLComputeUnitsCPUAndNeuralEngine` exists.
fn cpu_and_neural_engine_available() -> bool {
    objc2::available!(
        macos = 13.0,
        ios = 16.0,
        tvos = 16.0,
        watchos = 9.0,
        visionos = 1.0
    )
}

/// An `NSError` as [`Error::CoreMl`].
fn core_ml_error(error: &NSError) -> Error {
    Error::CoreMl {
        domain: error.domain().to_string(),
        code: error.code(),
        message: error.localizedDescription().to_string(),
    }
}

/// An error of this backend itself, in the shape of [`Error::CoreMl`], for
/// what Core ML did that it documents it does not do.
fn backend_error(message: impl Into<String>) -> Error {
    Error::CoreMl {
        domain: "coreml-multifunction".to_string(),
        code: 0,
        message: message.into(),
    }
}

/// The `MLMultiArrayDataType` of an element type (named constants).
fn ml_data_type(data_type: DataType) -> MLMultiArrayDataType {
    match data_type {
        DataType::Float16 => MLMultiArrayDataType::Float16,
        DataType::Float32 => MLMultiArrayDataType::Float32,
        DataType::Float64 => MLMultiArrayDataType::Float64,
        DataType::Int32 => MLMultiArrayDataType::Int32,
        DataType::Int8 => MLMultiArrayDataType::Int8,
    }
}

/// The `MLComputeUnits` of a [`ComputeUnits`] (named constants), refusing
/// the Neural Engine choice where it does not exist yet.
fn ml_compute_units(units: ComputeUnits) -> Result<MLComputeUnits> {
    Ok(match units {
        ComputeUnits::CpuOnly => MLComputeUnits::CPUOnly,
        ComputeUnits::CpuAndGpu => MLComputeUnits::CPUAndGPU,
        ComputeUnits::All => MLComputeUnits::All,
        ComputeUnits::CpuAndNeuralEngine if cpu_and_neural_engine_available() => {
            MLComputeUnits::CPUAndNeuralEngine
        }
        ComputeUnits::CpuAndNeuralEngine => {
            return Err(Error::OsTooOld(
                "ComputeUnits::CpuAndNeuralEngine needs macOS 13, iOS 16, tvOS 16, watchOS 9 or \
                 later; use ComputeUnits::All"
                    .to_string(),
            ))
        }
    })
}

/// A file URL for a directory, refusing paths `NSURL` cannot hold.
fn directory_url(path: &Path) -> Result<Retained<NSURL>> {
    NSURL::from_directory_path(path).ok_or_else(|| Error::Io {
        path: path.to_path_buf(),
        action: "make a file URL of the path",
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an absolute path Foundation can represent",
        ),
    })
}

/// A function loaded by Core ML. `!Send` and `!Sync`: see the module
/// documentation.
#[derive(Debug)]
pub struct Function {
    model: Retained<MLModel>,
    description: FunctionDescription,
}

impl Function {
    /// Loads `function` of `package` with Core ML: finds or compiles the
    /// `.mlmodelc` (see [`super::compile_cache`]), then loads it with the
    /// configuration's compute units and, for a multifunction package, the
    /// function's name.
    pub fn load(
        package: &Package,
        function: &str,
        configuration: &Configuration,
    ) -> Result<Function> {
        let Some(view) = package.function(function) else {
            return Err(Error::UnknownFunction {
                package: package.root().to_path_buf(),
                function: function.to_string(),
                available: quoted_list(package.functions().iter().map(|f| f.name)),
            });
        };
        let description = view.description.into_owned();
        if !scoped_buffer_access_available() {
            return Err(Error::OsTooOld(
                "the Core ML backend needs macOS 12.3, iOS 15.4, tvOS 15.4, watchOS 8.5 or later \
                 (MLMultiArray scoped buffer access)"
                    .to_string(),
            ));
        }
        let compute_units = ml_compute_units(configuration.compute_units)?;
        let function_name = if package.is_multifunction() {
            require_multifunction(&format!(
                "loading function {function:?} of a multifunction model"
            ))?;
            Some(function)
        } else {
            None
        };
        if !description.state.is_empty() {
            require_multifunction(&format!("function {function:?}, which has state,"))?;
        }

        let root = package.root();
        let mut compiled = compile::find_or_compile(root)?;
        let model = loop {
            match load_compiled(&compiled.path, function_name, compute_units) {
                Ok(model) => break model,
                // A model compiled just now that does not load is Core ML's
                // final word. One from the build or the cache may be
                // damaged, or made by another system's compiler: fall back
                // to the cache, then to a fresh compile (at most twice).
                Err(Error::CoreMl { .. }) if !compiled.fresh => {
                    compiled = compile::fallback(root, &compiled)?;
                }
                Err(error) => return Err(error),
            }
        };
        Ok(Function { model, description })
    }

    /// Runs the function; with `state`, a stateful prediction that reads and
    /// updates it. The inputs have been checked against the description.
    pub fn predict(&self, inputs: &Features, state: Option<&mut State>) -> Result<Features> {
        let function = self.description.name.as_str();
        if state.is_some() {
            require_multifunction("stateful prediction")?;
        }
        autoreleasepool(|_| {
            let provider = features::provider(&self.description, inputs)?;
            let provider = ProtocolObject::from_ref(&*provider);
            let output = match state {
                // SAFETY: `provider` holds exactly the checked inputs as
                // MLFeatureValues, `state` was made by `newState` of a model
                // of this package (checked by `Model::predict_with_state`),
                // and `&mut State` keeps any other prediction or buffer
                // access on it from running meanwhile, as MLState requires.
                // The API exists: checked just above.
                Some(state) => unsafe {
                    self.model
                        .predictionFromFeatures_usingState_error(provider, &state.state)
                },
                // SAFETY: as above, without a state.
                None => unsafe { self.model.predictionFromFeatures_error(provider) },
            }
            .map_err(|e| core_ml_error(&e))?;
            features::read_outputs(function, &self.description, &output)
        })
    }

    /// Runs the function on each of `inputs` in one Core ML batch
    /// (`-[MLModel predictionsFromBatch:error:]` over an
    /// `MLArrayBatchProvider`), which lets Core ML overlap the work. Checks
    /// every input set first; stateful functions are refused.
    pub fn predict_batch(&self, inputs: &[Features]) -> Result<Vec<Features>> {
        let function = self.description.name.as_str();
        if !self.description.state.is_empty() {
            return Err(Error::WrongState {
                function: function.to_string(),
                detail: "the function is stateful: batch prediction takes no state; predict one \
                         input at a time with a state"
                    .to_string(),
            });
        }
        for features in inputs {
            check::inputs(&self.description, features)?;
        }
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        autoreleasepool(|_| {
            let providers = inputs
                .iter()
                .map(|features| {
                    features::provider(&self.description, features)
                        .map(ProtocolObject::<dyn MLFeatureProvider>::from_retained)
                })
                .collect::<Result<Vec<_>>>()?;
            let providers = NSArray::from_retained_slice(&providers);
            // SAFETY: an array of feature providers is what this
            // initializer takes.
            let batch = unsafe {
                MLArrayBatchProvider::initWithFeatureProviderArray(
                    MLArrayBatchProvider::alloc(),
                    &providers,
                )
            };
            // SAFETY: the batch holds one provider of checked inputs per
            // prediction, of a stateless function.
            let results = unsafe {
                self.model
                    .predictionsFromBatch_error(ProtocolObject::from_ref(&*batch))
            }
            .map_err(|e| core_ml_error(&e))?;
            // SAFETY: `count` of a batch provider Core ML returned.
            let count = unsafe { results.count() };
            if usize::try_from(count).ok() != Some(inputs.len()) {
                return Err(backend_error(format!(
                    "Core ML returned {count} results for a batch of {}",
                    inputs.len()
                )));
            }
            (0..count)
                .map(|index| {
                    // SAFETY: `index` is below the provider's own `count`,
                    // so `featuresAtIndex:` cannot go out of range.
                    let output = unsafe { results.featuresAtIndex(index) };
                    features::read_outputs(function, &self.description, &output)
                })
                .collect()
        })
    }

    /// A fresh state (every buffer zero), from `-[MLModel newState]`.
    pub fn new_state(&self) -> Result<State> {
        require_multifunction("a model state")?;
        // SAFETY: the API exists (checked above); for a stateless model
        // Core ML documents an empty state.
        let state = unsafe { self.model.newState() };
        Ok(State {
            state,
            names: self
                .description
                .state
                .iter()
                .map(|s| s.name.clone())
                .collect(),
        })
    }
}

/// Loads the compiled model at `compiled`.
fn load_compiled(
    compiled: &Path,
    function_name: Option<&str>,
    compute_units: MLComputeUnits,
) -> Result<Retained<MLModel>> {
    autoreleasepool(|_| {
        let url = directory_url(compiled)?;
        // SAFETY: a plain configuration object, available since macOS
        // 10.14 / iOS 12.
        let configuration = unsafe { MLModelConfiguration::new() };
        // SAFETY: a named `MLComputeUnits` constant this system has
        // (`ml_compute_units` checked the Neural Engine one).
        unsafe { configuration.setComputeUnits(compute_units) };
        if let Some(name) = function_name {
            if !multifunction_available() {
                return Err(Error::OsTooOld(format!(
                    "loading function {name:?} of a multifunction model needs \
                     {MULTIFUNCTION_SYSTEMS} or later"
                )));
            }
            // SAFETY: `functionName` exists (checked just above); the name
            // is one of the package's functions, and Core ML reports an
            // unknown one as an error when loading.
            unsafe { configuration.setFunctionName(Some(&NSString::from_str(name))) };
        }
        // SAFETY: `url` is a file URL of a compiled-model directory.
        unsafe { MLModel::modelWithContentsOfURL_configuration_error(&url, &configuration) }
            .map_err(|e| core_ml_error(&e))
    })
}

// `State` is `Send + Sync` through `MLState` (see the module docs on
// threads); this fails to compile if that ever changes.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<State>();
};

/// The state buffers of a stateful function (an `MLState`). `Send` and
/// `Sync`: see the module documentation.
#[derive(Debug)]
pub struct State {
    state: Retained<MLState>,
    names: Vec<String>,
}

impl State {
    /// A copy of buffer `name`, read with the buffer's own strides.
    pub fn read(&self, name: &str) -> Result<AnyTensor> {
        if !self.names.iter().any(|n| n == name) {
            return Err(Error::WrongState {
                function: String::new(),
                detail: format!(
                    "there is no state {name:?}; the states are {}",
                    quoted_list(self.names.iter().map(String::as_str))
                ),
            });
        }
        autoreleasepool(|_| {
            array::read_state(&self.state, name).map_err(|detail| {
                backend_error(format!("state {name:?} could not be read: {detail}"))
            })
        })
    }

    /// Replaces buffer `name` with `tensor` (the caller checked that the
    /// state has such a buffer).
    pub fn write(&mut self, name: &str, tensor: &AnyTensor) -> Result<()> {
        autoreleasepool(|_| {
            array::write_state(&self.state, name, tensor).map_err(|detail| Error::WrongState {
                function: String::new(),
                detail,
            })
        })
    }
}
