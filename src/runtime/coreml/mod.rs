//! The Core ML backend (Apple targets), on `objc2-core-ml`.
//!
//! # Never executed here
//!
//! **This module has not run on Apple hardware as written.** It was
//! written without a Mac: it is type-checked and linted for
//! `aarch64-apple-darwin` and `aarch64-apple-ios`, against the
//! `objc2-core-ml` 0.3.2 bindings and Apple's header documentation. Its
//! platform-independent parts (stride arithmetic, pixel rows, raw enum
//! values, the compile cache, error mapping) live in [`super::strides`],
//! [`super::compile_cache`] and [`super::error`] and are unit-tested on
//! every host. `coreml-multifunction-cli/tests/coreml_backend.rs` runs it
//! against the fixtures' PyTorch outputs on a macOS CI runner
//! (`.github/workflows/ci.yml`); see the README for whether that job has
//! run.
//!
//! # Loading
//!
//! Core ML loads compiled models (`.mlmodelc`). [`Prepared::compiled`]
//! prepares loading one directly (an app bundle's, as `copy-to` ships it):
//! nothing but Core ML reads it. [`Prepared::package`] finds or makes one
//! for a package as [`super::compile_cache`] describes: a build-time
//! compile from `xcrun coremlcompiler` beside the package whose stamp
//! matches the package's key, else the on-disk cache, else a compile on
//! first load, moved atomically into the cache. That compile is
//! `+[MLModel compileModelAtURL:completionHandler:]` where the system has
//! it (macOS 13 / iOS 16 / tvOS 16, checked with `objc2::available!`):
//! Core ML compiles on its own queue and the loading thread waits for the
//! handler's result, holding the package's registry slot so that other
//! loads of the package wait and share it; on older systems it is the
//! synchronous `+[MLModel compileModelAtURL:error:]` on the loading
//! thread ([`compile`]). The key stats the package's
//! files and reads its manifest and specification: no weight bytes are
//! read before Core ML reads them (`Package::open` reads the specification
//! and each weight's 64-byte record header to validate the package).
//!
//! Every function of a package loads from one compiled copy per process
//! and cache root ([`compile::CompiledCopy`], shared through a process-wide
//! registry): a [`State`] holds the copy its model came from, and a
//! function of another copy refuses it ([`Error::OtherCompiledCopy`]). A
//! compile that could not go into the cache is owned by the process and
//! deleted when the last function and state using it drop.
//!
//! If a compiled model fails to load with an error that means it may be
//! damaged ([`super::compile_cache::recovery`]), the next one is tried: the
//! cache's copy after the build's, then a fresh compile staged beside the
//! cache entry, which replaces the entry only once it has loaded (and is
//! then loaded again from where it now is). Any other error, and any
//! failure of a model compiled just now, is returned as Core ML gave it;
//! when a fallback was tried and failed too, the first error is returned
//! with what the fallback did appended to its message.
//!
//! The synchronous loads ([`Prepared::load`]) then load the copy with
//! `+[MLModel modelWithContentsOfURL:configuration:error:]`.
//! `super::Function::load_async` (and the generated `load_async` /
//! `load_from_async`) does the finding (the bundle lookup, the key, the
//! registry, a compile) on a short-lived thread of its own, which then
//! starts `+[MLModel loadContentsOfURL:configuration:completionHandler:]`
//! ([`Prepared::start`], macOS 11 / iOS 14) and ends. The handler, on
//! Core ML's queue, hands the function to the future through the one-shot
//! channel of [`super::prediction`], inside `catch_unwind` and with the
//! channel's panic-safe tail, as the prediction handlers do; an
//! exception raised when starting the load becomes the future's error.
//! When that load fails with an error that means the copy may be damaged,
//! the handler hands over to the synchronous recovery above on a thread of
//! its own (it may compile again, which must not run on Core ML's queue).
//! A [`super::Pipeline`]'s async load runs its chunks' synchronous loads
//! one after the other on a loading thread.
//!
//! It loads with an `MLModelConfiguration` whose `computeUnits` is
//! [`super::ComputeUnits`] (named `MLComputeUnits` constants) and, for a
//! multifunction model, whose `functionName` is the function (a compiled
//! model loaded by path is multifunction when its `metadata.json` lists
//! functions, or cannot be read): that
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
//! as the Neural Engine leaves them, element by element otherwise), and
//! only their elements' bytes are read: the memory is treated as possibly
//! uninitialised (`[MaybeUninit<u8>]`), as Apple documents a new array's.
//! Scoped buffer access needs macOS 12.3 / iOS 15.4, checked at load. fp16
//! arrays need macOS 12 / iOS 16 and int8 arrays the macOS / iOS 26 SDKs,
//! each checked before an array is made. Images become IOSurface-backed
//! `CVPixelBuffer`s (so Core ML can hand them to the GPU or Neural Engine
//! without a copy): 32BGRA for RGB and BGR, OneComponent8 for grayscale,
//! OneComponent16Half for fp16 grayscale; image outputs are read back the
//! same way. Int64, double, string and dictionary features map to their
//! `MLFeatureValue`s.
//!
//! # Exceptions and errors
//!
//! Core ML raises Objective-C exceptions rather than returning errors in
//! places: `getMultiArrayForStateNamed:` with an unknown name, `newState`
//! or a stateful prediction on an engine without state support, a state
//! whose buffers do not match the model. Every call into Core ML runs
//! inside `objc2::exception::catch` ([`catching`]), and an exception
//! becomes [`Error::CoreMl`] with domain `NSException` and the exception's
//! name and reason. Rust code that Core ML calls back (buffer blocks,
//! completion handlers) catches both its own panics (`catch_unwind`) and,
//! inside that, exceptions from the Core ML calls it makes, so neither
//! unwinds through a frame that cannot take it. Inputs are also checked
//! first (by [`super::check`] and again here: rank, zero dimensions,
//! sizes, key types), so the raising paths are not the expected ones.
//! Errors Core ML reports as `NSError` become [`Error::CoreMl`] with the
//! domain, code, localized description and failure reason, and the error
//! under `NSUnderlyingErrorKey` as the source.
//!
//! # Threads
//!
//! [`Function`] holds an `MLModel`, which `objc2-core-ml` leaves `!Send`
//! and `!Sync` (its header carries no `NS_SWIFT_SENDABLE`). This type is
//! `Send` and not `Sync`; why moving it is sound is on the `unsafe impl`.
//! Concurrent predictions go through [`Function::predict_async`], the
//! completion-handler API that Apple presents as safe to call
//! concurrently (WWDC23, "Improve Core ML integration with async
//! prediction"). [`State`] holds an `MLState`, which `objc2-core-ml`
//! declares `Send + Sync` from the SDK header; Apple's `MLState`
//! documentation requires that predictions sharing a state be serialized
//! and that its buffers not be touched while a prediction runs, which the
//! `&mut State` of [`super::Function::predict_with_state`] guarantees, and,
//! for a prediction still running after its future was dropped, the
//! state's claim ([`super::prediction::Busy`]) that every use waits on.

mod array;
mod compile;
mod features;
mod image;

use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use block2::RcBlock;
use objc2::exception::Exception;
use objc2::rc::{autoreleasepool, Retained};
use objc2::runtime::ProtocolObject;
use objc2::AnyThread;
use objc2_core_ml::{
    MLArrayBatchProvider, MLBatchProvider, MLComputeUnits, MLFeatureProvider, MLModel,
    MLModelConfiguration, MLMultiArrayDataType, MLPredictionOptions, MLState,
};
use objc2_foundation::{NSArray, NSError, NSException, NSString, NSURL};

use coreml_multifunction_format::compiled;
use coreml_multifunction_format::naming::quoted_list;
use coreml_multifunction_format::package::Package;
use coreml_multifunction_format::proto::FunctionDescription;
use coreml_multifunction_format::DataType;

use super::compile_cache::{default_cache_root, function_name_to_set, Recovery};
use super::error::{Error, Fallback, Result};
use super::prediction::{self, Busy, SharedClaim, Started};
use super::strides::raw;
use super::tensor::AnyTensor;
use super::value::Features;
use super::{check, ComputeUnits, Configuration};
use compile::CompiledCopy;

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
/// stateful prediction (synchronous and with a completion handler) exist on
/// this system.
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

/// Whether `-[MLModel predictionFromFeatures:completionHandler:]` exists.
fn async_prediction_available() -> bool {
    objc2::available!(
        macos = 14.0,
        ios = 17.0,
        tvos = 17.0,
        watchos = 10.0,
        visionos = 1.0
    )
}

/// Runs `body` (calls into Core ML), turning an Objective-C exception it
/// raises into [`Error::CoreMl`] naming what was being done (`during`).
/// A Rust panic in `body` passes through unchanged.
fn catching<T>(during: &str, body: impl FnOnce() -> T) -> Result<T> {
    objc2::exception::catch(AssertUnwindSafe(body))
        .map_err(|exception| exception_error(during, exception.as_deref()))
}

/// An exception as [`Error::CoreMl`], with its name and reason when it is
/// an `NSException` (what Core ML raises).
fn exception_error(during: &str, exception: Option<&Exception>) -> Error {
    let Some(exception) = exception else {
        return Error::from_exception(during, None, Some("nil was raised".to_string()));
    };
    match exception.downcast_ref::<NSException>() {
        Some(ns) => Error::from_exception(
            during,
            Some(ns.name().to_string()),
            ns.reason().map(|reason| reason.to_string()),
        ),
        None => Error::from_exception(during, None, Some(format!("{exception:?}"))),
    }
}

/// Runs `body` inside a block Core ML calls: a Rust panic becomes an error
/// (it must not unwind into Apple's frames), and so does an Objective-C
/// exception from a Core ML call `body` makes (caught first, since
/// `catch_unwind` cannot catch a foreign exception and would abort).
fn guarded<T>(body: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(|| {
        objc2::exception::catch(AssertUnwindSafe(body)).unwrap_or_else(|exception| {
            Err(exception_error("inside a Core ML callback", exception.as_deref()).to_string())
        })
    }))
    .unwrap_or_else(|_| Err("a panic inside a Core ML callback was caught".to_string()))
}

/// How deep `NSUnderlyingErrorKey` chains are followed.
const UNDERLYING_DEPTH: usize = 4;

/// An `NSError` as [`Error::CoreMl`]: domain, code, localized description
/// and failure reason, and the underlying error as its source.
fn core_ml_error(error: &NSError) -> Error {
    ns_error(error, UNDERLYING_DEPTH)
}

fn ns_error(error: &NSError, depth: usize) -> Error {
    let underlying = (depth > 0)
        .then(|| {
            // SAFETY: reading an immutable extern constant string.
            let key = unsafe { objc2_foundation::NSUnderlyingErrorKey };
            error.userInfo().objectForKey(key)
        })
        .flatten()
        .and_then(|value| value.downcast::<NSError>().ok())
        .map(|underlying| ns_error(&underlying, depth - 1));
    Error::from_ns_error(
        error.domain().to_string(),
        error.code(),
        error.localizedDescription().to_string(),
        error.localizedFailureReason().map(|r| r.to_string()),
        underlying,
    )
}

/// `error` with `context` (a path, a function) before its message.
fn in_context(error: Error, context: &str) -> Error {
    error.with_core_ml_message(|message| format!("{context}: {message}"))
}

/// An error of this backend itself, in the shape of [`Error::CoreMl`], for
/// what Core ML did that it documents it does not do.
fn backend_error(message: impl Into<String>) -> Error {
    Error::CoreMl {
        domain: "coreml-multifunction".to_string(),
        code: 0,
        message: message.into(),
        underlying: None,
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

/// A file URL for a directory. Foundation resolves a relative path
/// against the current directory; it refuses only an empty path or one
/// with a NUL byte.
fn directory_url(path: &Path) -> Result<Retained<NSURL>> {
    NSURL::from_directory_path(path).ok_or_else(|| Error::Io {
        path: path.to_path_buf(),
        action: "make a file URL of the path",
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an empty path, or one with a NUL byte, which a file URL cannot hold",
        ),
    })
}

/// A retained Objective-C object a completion handler keeps alive and
/// finally releases, on whatever thread Core ML runs the handler.
struct KeptAlive<T: objc2::Message> {
    _object: Retained<T>,
}

// SAFETY: the object is never used through this wrapper, only released
// when it drops, and `objc_release` is thread-safe (the retain count is
// atomic), so moving and sharing the wrapper between threads cannot race
// on the object.
unsafe impl<T: objc2::Message> Send for KeptAlive<T> {}
// SAFETY: as above; `&KeptAlive` gives no access to the object.
unsafe impl<T: objc2::Message> Sync for KeptAlive<T> {}

/// A function loaded by Core ML: `Send`, not `Sync` (see the module
/// documentation and the `unsafe impl`).
#[derive(Debug)]
pub struct Function {
    /// Released inside an autorelease pool on drop (`Drop`).
    model: ManuallyDrop<Retained<MLModel>>,
    description: Arc<FunctionDescription>,
    /// The compiled copy the model was loaded from, shared with every
    /// function of the package (and kept, if the process owns it, until
    /// the last of them and their states drops).
    copy: Arc<CompiledCopy>,
}

// SAFETY: `Send` only lets one thread at a time hold the function, handing
// it over with the synchronisation a move between threads implies. Apple
// ties `MLModel` to no thread: its header and documentation ask for no
// particular thread (no main-thread or actor annotation), and Apple's own
// `+[MLModel loadContentsOfURL:configuration:completionHandler:]` (macOS 11 /
// iOS 14; "use this factory method especially when the caller is on the
// main thread", says the header) loads asynchronously and hands the model
// to a completion handler on a queue Core ML picks, for use on whatever
// thread the app goes on with: Apple's API itself moves models between
// threads. Foundation's
// rule for objects not documented as thread-safe is that access be
// serialized (Threading Programming Guide, "Thread Safety Summary"), which
// single ownership ensures. The completion handlers this type registers
// capture only `Send + Sync` values (checked at compile time in
// `start_prediction`), never the `&self` borrow. Not `Sync`: Apple does
// not document concurrent synchronous predictions on one `MLModel` as
// safe (only the completion-handler API, which `predict_async` uses), so
// `&Function` must not be shared across threads.
unsafe impl Send for Function {}

impl Drop for Function {
    fn drop(&mut self) {
        // Releasing a model may autorelease its internals: drain them here
        // rather than in the thread's outer pool, which a long-lived worker
        // never drains.
        autoreleasepool(|_| {
            // SAFETY: dropped exactly once, here, and never used after.
            unsafe { ManuallyDrop::drop(&mut self.model) }
        });
    }
}

/// A Core ML load up to the step Core ML does: the system checked, the
/// compiled copy found or made (the package's key, the registry, a compile
/// on first load), the configuration's values worked out. What is left is
/// Core ML's load of the copy: [`Prepared::load`] waits for it,
/// [`Prepared::start`] hands it to Core ML's completion-handler API.
#[derive(Debug)]
pub struct Prepared {
    description: Arc<FunctionDescription>,
    function_name: Option<String>,
    compute_units: MLComputeUnits,
    copy: Arc<CompiledCopy>,
    /// The package (canonical) and cache root the copy was found or made
    /// for, to recover from a damaged copy; `None` for a compiled model
    /// loaded by its own path (there is nothing to compile again from).
    package: Option<(PathBuf, PathBuf)>,
}

impl Prepared {
    /// Prepares loading `function` of `package` with Core ML: from the
    /// compiled copy every function of the package shares in this process,
    /// found or compiled once (see [`compile`] and
    /// [`super::compile_cache`]), with the configuration's compute units
    /// and, for a multifunction package, the function's name.
    pub fn package(
        package: &Package,
        function: &str,
        configuration: &Configuration,
    ) -> Result<Prepared> {
        let Some(view) = package.function(function) else {
            return Err(Error::UnknownFunction {
                package: package.root().to_path_buf(),
                function: function.to_string(),
                available: quoted_list(package.functions().iter().map(|f| f.name)),
            });
        };
        let description = view.description.into_owned();
        let function_name = package.is_multifunction().then_some(function);
        let compute_units = check_system(&description, function_name, configuration.compute_units)?;
        let cache_root = configuration
            .cache_dir
            .clone()
            .unwrap_or_else(default_cache_root);
        let copy = compile::shared_copy(package.root(), &cache_root)?;
        Ok(Prepared {
            description: Arc::new(description),
            function_name: function_name.map(str::to_string),
            compute_units,
            copy,
            package: Some((package.root().to_path_buf(), cache_root)),
        })
    }

    /// Prepares loading the function `description` describes from the
    /// compiled model at `compiled`, reading nothing but what Core ML reads
    /// (and its `metadata.json`, for whether it is a multifunction model:
    /// `functionName` is set only for one). A load error names the path;
    /// there is no package to compile again from.
    pub fn compiled(
        compiled: &Path,
        description: &FunctionDescription,
        configuration: &Configuration,
    ) -> Result<Prepared> {
        let name = description.name.as_str();
        if !compiled.is_dir() {
            return Err(Error::Io {
                path: compiled.to_path_buf(),
                action: "open the compiled model",
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such .mlmodelc directory",
                ),
            });
        }
        let functions = std::fs::read_to_string(compiled.join(compiled::COMPILED_METADATA))
            .ok()
            .and_then(|text| compiled::compiled_model_functions(&text));
        let function_name = function_name_to_set(functions.as_deref(), name);
        let compute_units = check_system(description, function_name, configuration.compute_units)?;
        Ok(Prepared {
            description: Arc::new(description.clone()),
            function_name: function_name.map(str::to_string),
            compute_units,
            copy: compile::given_copy(compiled),
            package: None,
        })
    }

    /// Loads the copy with `+[MLModel modelWithContentsOfURL:configuration:error:]`,
    /// waiting for it, and recovers from a damaged copy ([`recover`]).
    pub fn load(self) -> Result<Function> {
        let loaded = load_model(&self.copy.path, self.function_name(), self.compute_units);
        match loaded {
            Ok(model) => Ok(self.into_function(model, None)),
            Err(error) => self.recover(error),
        }
    }

    /// Starts loading the copy with Core ML's completion-handler API
    /// (`+[MLModel loadContentsOfURL:configuration:completionHandler:]`,
    /// macOS 11 / iOS 14, older than every system this backend runs on),
    /// and returns at once: the handler sends the function, passed
    /// through `wrap`, to `sender`. When the load fails with an error that
    /// means the copy may be damaged ([`compile::recovery_for`]), the
    /// handler hands over to [`Prepared::load`]'s recovery on a thread of
    /// its own (it may compile again), which then sends the outcome.
    pub fn start<T: Send + 'static>(
        self,
        wrap: impl FnOnce(Function) -> T + Send + 'static,
        sender: prediction::Sender<Result<T>>,
    ) {
        // Taken by whoever finishes the load: the handler (Core ML calls it
        // once), or this function when starting fails.
        let sender = Arc::new(Mutex::new(Some(sender)));
        let configuration = autoreleasepool(|_| {
            let url = directory_url(&self.copy.path)?;
            let configuration = model_configuration(self.function_name(), self.compute_units)?;
            Ok((url, configuration))
        });
        let (url, configuration) = match configuration {
            Ok(made) => made,
            Err(error) => return finish(&sender, Err(error)),
        };
        let handler_sender = sender.clone();
        let pending = Mutex::new(Some((self, wrap)));
        let handler = move |model: *mut MLModel, error: *mut NSError| {
            let taken = catch_unwind(AssertUnwindSafe(|| {
                pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
            }));
            let Ok(Some((prepared, wrap))) = taken else {
                return;
            };
            let outcome = autoreleasepool(|_| {
                guarded(|| {
                    // SAFETY: Core ML passes the loaded model on success
                    // and an error on failure, each valid for this call
                    // or nil; the model is retained here to keep it.
                    let (model, error) = unsafe { (Retained::retain(model), error.as_ref()) };
                    Ok(match (model, error) {
                        (Some(model), _) => Ok(model),
                        (None, Some(error)) => Err(core_ml_error(error)),
                        (None, None) => Err(backend_error(
                            "Core ML finished a load with neither a model nor an error",
                        )),
                    })
                })
                .unwrap_or_else(|detail| Err(backend_error(detail)))
            });
            // Still on Core ML's queue: nothing may unwind into
            // libdispatch (a panic here leaves the sender to drop with the
            // handler, which the future reports as an error).
            let _ = catch_unwind(AssertUnwindSafe(|| {
                match outcome {
                    Ok(model) => {
                        let function = prepared.into_function(model, None);
                        finish_with(&handler_sender, function, wrap);
                    }
                    Err(error) if prepared.may_recover(&error) => {
                        // A recovery may compile again (minutes): not on Core
                        // ML's queue.
                        prepared.recover_on_thread(error, wrap, &handler_sender);
                    }
                    Err(error) => {
                        let error =
                            Err(in_context(error, &prepared.copy.path.display().to_string()));
                        finish(&handler_sender, error);
                    }
                }
            }));
        };
        // Core ML runs the handler on its own queue, and block2 does not
        // check what a block captures: this fails to compile unless the
        // handler (everything it captures) is `Send + Sync`.
        fn send_and_sync<T: Send + Sync>(_: &T) {}
        send_and_sync(&handler);
        let handler = RcBlock::new(handler);
        // SAFETY: `url` is a file URL of a compiled-model directory and
        // `configuration` a configuration Core ML copies; the API exists
        // on every system `check_system` lets through (macOS 11 / iOS 14
        // and later). The handler is a heap block (`RcBlock`) Core ML
        // retains until it has called it; what it captures is `Send +
        // Sync` (asserted above), so running it on Core ML's queue is
        // sound.
        let started = autoreleasepool(|_| {
            catching("starting to load the compiled model", || unsafe {
                MLModel::loadContentsOfURL_configuration_completionHandler(
                    &url,
                    &configuration,
                    &handler,
                )
            })
        });
        if let Err(error) = started {
            // Core ML may have retained the handler, which then never
            // runs: the future gets the exception.
            finish(&sender, Err(error));
        }
    }

    fn function_name(&self) -> Option<&str> {
        self.function_name.as_deref()
    }

    /// The loaded function; `copy` is the one it loaded from when a
    /// recovery replaced the prepared one.
    fn into_function(self, model: Retained<MLModel>, copy: Option<Arc<CompiledCopy>>) -> Function {
        Function {
            model: ManuallyDrop::new(model),
            description: self.description,
            copy: copy.unwrap_or(self.copy),
        }
    }

    /// Whether a failed load of the copy with `error` has a recovery to
    /// try ([`compile::recovery_for`]).
    fn may_recover(&self, error: &Error) -> bool {
        let Some((_, cache_root)) = &self.package else {
            return false;
        };
        let (domain, code) = error_code(error);
        compile::recovery_for(&self.copy, &domain, code, cache_root) != Recovery::GiveUp
    }

    /// What a failed load of the copy with `error` ends in: the recovery
    /// of a package's copy ([`recover`]), or the error naming the path.
    fn recover(self, error: Error) -> Result<Function> {
        let Some((package, cache_root)) = &self.package else {
            return Err(in_context(error, &self.copy.path.display().to_string()));
        };
        let (model, copy) = recover(
            package,
            cache_root,
            self.copy.clone(),
            error,
            self.function_name(),
            self.compute_units,
        )?;
        Ok(self.into_function(model, Some(copy)))
    }

    /// Runs [`Prepared::recover`] on a thread of its own and sends its
    /// outcome, passed through `wrap`, to `sender`.
    fn recover_on_thread<T: Send + 'static>(
        self,
        error: Error,
        wrap: impl FnOnce(Function) -> T + Send + 'static,
        sender: &Arc<Mutex<Option<prediction::Sender<Result<T>>>>>,
    ) {
        let thread_sender = sender.clone();
        let spawned = std::thread::Builder::new()
            .name("coreml-multifunction load".to_string())
            .spawn(move || {
                // A panic (a bug) drops the sender unsent, which the future
                // reports as an error.
                let recovered = catch_unwind(AssertUnwindSafe(|| self.recover(error)));
                if let Ok(recovered) = recovered {
                    match recovered {
                        Ok(function) => finish_with(&thread_sender, function, wrap),
                        Err(error) => finish(&thread_sender, Err(error)),
                    }
                }
            });
        if let Err(source) = spawned {
            finish(
                sender,
                Err(Error::Io {
                    path: PathBuf::new(),
                    action: "start a thread to recover the model's load on",
                    source,
                }),
            );
        }
    }
}

/// Sends `outcome` to the future through `sender` if nobody did yet, with
/// no claim to release: the panic-safe tail of a completion handler
/// ([`prediction::complete`]).
fn finish<T>(sender: &Mutex<Option<prediction::Sender<Result<T>>>>, outcome: Result<T>) {
    prediction::complete(sender, &SharedClaim::new(None), outcome);
}

/// [`finish`] with `function` passed through `wrap`, itself caught if it
/// panics (it runs on Core ML's queue).
fn finish_with<T>(
    sender: &Mutex<Option<prediction::Sender<Result<T>>>>,
    function: Function,
    wrap: impl FnOnce(Function) -> T,
) {
    match catch_unwind(AssertUnwindSafe(|| wrap(function))) {
        Ok(wrapped) => finish(sender, Ok(wrapped)),
        Err(_) => finish(
            sender,
            Err(backend_error(
                "a panic while handing over the loaded model was caught",
            )),
        ),
    }
}

/// The `NSError` domain and code of a Core ML error (none for another
/// error).
fn error_code(error: &Error) -> (String, isize) {
    match error {
        Error::CoreMl { domain, code, .. } => (domain.clone(), *code),
        _ => (String::new(), 0),
    }
}

impl Function {
    /// Whether `state` was made by a model of the compiled copy this
    /// function was loaded from: the only states Core ML documents a model
    /// accepting.
    pub fn check_copy(&self, state: &State) -> Result<()> {
        if Arc::ptr_eq(&self.copy, &state.copy) {
            return Ok(());
        }
        Err(Error::OtherCompiledCopy {
            function: self.description.name.clone(),
            function_copy: self.copy.path.clone(),
            state_copy: state.copy.path.clone(),
        })
    }

    /// Runs the function; with `state`, a stateful prediction that reads and
    /// updates it. The inputs have been checked against the description.
    pub fn predict(&self, inputs: &Features, state: Option<&mut State>) -> Result<Features> {
        let function = self.description.name.as_str();
        if state.is_some() {
            require_multifunction("stateful prediction")?;
        }
        autoreleasepool(|_| {
            let provider = catching("converting the inputs", || {
                features::provider(&self.description, inputs)
            })??;
            let provider = ProtocolObject::from_ref(&*provider);
            let output = match state {
                Some(state) => {
                    // A prediction started by `predict_async` and still
                    // running (its future dropped) finishes first.
                    state.busy.wait_idle();
                    // SAFETY: `provider` holds exactly the checked inputs
                    // as MLFeatureValues; `state` holds this function's
                    // state descriptions (checked by
                    // `Function::predict_with_state`), which is what Core
                    // ML validates a state against (by name and
                    // constraint); `&mut State` and the wait above keep any
                    // other prediction or buffer access on it from running
                    // meanwhile, as MLState requires. The API exists:
                    // checked just above.
                    catching("a stateful prediction", || unsafe {
                        self.model
                            .predictionFromFeatures_usingState_error(provider, &state.state)
                    })?
                }
                // SAFETY: as above, without a state.
                None => catching("a prediction", || unsafe {
                    self.model.predictionFromFeatures_error(provider)
                })?,
            }
            .map_err(|e| in_context(core_ml_error(&e), &format!("function {function:?}")))?;
            catching("reading the outputs", || {
                features::read_outputs(function, &self.description, &output)
            })?
        })
    }

    /// Starts a prediction with Core ML's completion-handler API
    /// (`predictionFromFeatures:completionHandler:`, macOS 14 / iOS 17;
    /// with a state, `predictionFromFeatures:usingState:options:completionHandler:`,
    /// macOS 15 / iOS 18), or runs it synchronously where that API does
    /// not exist. The handler reads the outputs on Core ML's queue and
    /// sends them to the returned future.
    pub fn predict_async(&self, inputs: &Features, state: Option<&mut State>) -> Started {
        if !async_prediction_available() || (state.is_some() && !multifunction_available()) {
            return Started::Done(self.predict(inputs, state));
        }
        match autoreleasepool(|_| self.start_prediction(inputs, state)) {
            Ok(receiver) => Started::Running(receiver),
            Err(error) => Started::Done(Err(error)),
        }
    }

    fn start_prediction(
        &self,
        inputs: &Features,
        state: Option<&mut State>,
    ) -> Result<prediction::Receiver<Result<Features>>> {
        let provider = catching("converting the inputs", || {
            features::provider(&self.description, inputs)
        })??;
        let (sender, receiver) = prediction::channel::<Result<Features>>();
        // Taken by the first call (the handler is `Fn`; Core ML calls it
        // once).
        let sender = Mutex::new(Some(sender));
        let description = self.description.clone();
        // Released when the handler is: Core ML retains what it needs, and
        // these make sure of it for the model and the inputs.
        let keep_model = KeptAlive {
            _object: Retained::clone(&self.model),
        };
        let keep_inputs = KeptAlive {
            _object: provider.clone(),
        };
        // A state stays claimed until the prediction finishes, whatever
        // becomes of the future.
        // Shared with this function, which releases it if starting fails
        // (Core ML may have retained the handler, which then never runs).
        let claim = SharedClaim::new(state.as_ref().map(|state| state.busy.claim()));
        let handler_claim = claim.clone();
        // The state lives as long as the prediction using it.
        let keep_state = state.as_ref().map(|state| state.state.clone());
        let handler = move |output: *mut ProtocolObject<dyn MLFeatureProvider>,
                            error: *mut NSError| {
            let outcome = autoreleasepool(|_| {
                let function = description.name.as_str();
                guarded(|| {
                    // SAFETY: Core ML passes the outputs on success and
                    // an error on failure, each valid for this call or
                    // nil.
                    let (output, error) = unsafe { (output.as_ref(), error.as_ref()) };
                    Ok(match (output, error) {
                        (Some(output), _) => features::read_outputs(function, &description, output),
                        (None, Some(error)) => Err(in_context(
                            core_ml_error(error),
                            &format!("function {function:?}"),
                        )),
                        (None, None) => Err(backend_error(
                            "Core ML finished a prediction with neither outputs nor an error",
                        )),
                    })
                })
                .unwrap_or_else(|detail| Err(backend_error(detail)))
            });
            // The state is free once the outputs are read; the send wakes
            // the executor's waker, whose panic is caught there.
            prediction::complete(&sender, &handler_claim, outcome);
            let _ = (&keep_model, &keep_inputs, &keep_state);
        };
        // Core ML runs the handler on its own queue, and block2 does not
        // check what a block captures: this fails to compile unless the
        // handler (everything it captures) is `Send + Sync`.
        fn send_and_sync<T: Send + Sync>(_: &T) {}
        send_and_sync(&handler);
        let handler = RcBlock::new(handler);
        let provider = ProtocolObject::from_ref(&*provider);
        match state {
            Some(state) => {
                // SAFETY: a plain options object, available since macOS
                // 10.13 / iOS 11.
                let options = unsafe { MLPredictionOptions::new() };
                // SAFETY: as for the synchronous stateful prediction; the
                // state is claimed until the handler runs, so no other
                // prediction or buffer access on it can start before this
                // one finishes, as Apple requires ("do not request a
                // prediction while another prediction that shares the same
                // state is in-flight"). The handler is a heap block
                // (`RcBlock`) Core ML retains as long as it needs; what it
                // captures is `Send + Sync` (asserted below), so running it
                // on Core ML's queue is sound. The API exists: checked by
                // the caller.
                catching("starting a stateful prediction", || unsafe {
                    self.model
                        .predictionFromFeatures_usingState_options_completionHandler(
                            provider,
                            &state.state,
                            &options,
                            &handler,
                        )
                })
            }
            // SAFETY: as above, without a state (macOS 14 / iOS 17: checked
            // by the caller).
            None => catching("starting a prediction", || unsafe {
                self.model
                    .predictionFromFeatures_completionHandler(provider, &handler)
            }),
        }
        .inspect_err(|_| claim.release())?;
        Ok(receiver)
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
                    catching("converting the inputs", || {
                        features::provider(&self.description, features)
                    })?
                    .map(ProtocolObject::<dyn MLFeatureProvider>::from_retained)
                })
                .collect::<Result<Vec<_>>>()?;
            let providers = NSArray::from_retained_slice(&providers);
            // SAFETY: an array of feature providers is what this
            // initializer takes.
            let batch = catching("making a batch", || unsafe {
                MLArrayBatchProvider::initWithFeatureProviderArray(
                    MLArrayBatchProvider::alloc(),
                    &providers,
                )
            })?;
            // SAFETY: the batch holds one provider of checked inputs per
            // prediction, of a stateless function.
            let results = catching("a batch prediction", || unsafe {
                self.model
                    .predictionsFromBatch_error(ProtocolObject::from_ref(&*batch))
            })?
            .map_err(|e| in_context(core_ml_error(&e), &format!("function {function:?}")))?;
            catching("reading the batch's outputs", || {
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
                        // SAFETY: `index` is below the provider's own
                        // `count`, so `featuresAtIndex:` cannot go out of
                        // range.
                        let output = unsafe { results.featuresAtIndex(index) };
                        features::read_outputs(function, &self.description, &output)
                    })
                    .collect()
            })?
        })
    }

    /// A fresh state (every buffer zero), from `-[MLModel newState]`.
    pub fn new_state(&self) -> Result<State> {
        require_multifunction("a model state")?;
        let state = autoreleasepool(|_| {
            // SAFETY: the API exists (checked above); for a stateless model
            // Core ML documents an empty state. It raises on an engine
            // without state support, which `catching` turns into an error.
            catching("making a state (newState)", || unsafe {
                self.model.newState()
            })
        })?;
        Ok(State {
            state,
            copy: self.copy.clone(),
            names: self
                .description
                .state
                .iter()
                .map(|s| s.name.clone())
                .collect(),
            busy: Busy::default(),
        })
    }
}

/// Checks that this system runs the Core ML backend, a function named
/// `function_name` (set for multifunction models), its states and
/// `units`. Returns the `MLComputeUnits` of `units`.
fn check_system(
    description: &FunctionDescription,
    function_name: Option<&str>,
    units: ComputeUnits,
) -> Result<MLComputeUnits> {
    if !scoped_buffer_access_available() {
        return Err(Error::OsTooOld(
            "the Core ML backend needs macOS 12.3, iOS 15.4, tvOS 15.4, watchOS 8.5 or later \
             (MLMultiArray scoped buffer access)"
                .to_string(),
        ));
    }
    if let Some(name) = function_name {
        require_multifunction(&format!(
            "loading function {name:?} of a multifunction model"
        ))?;
    }
    if !description.state.is_empty() {
        require_multifunction(&format!(
            "function {:?}, which has state,",
            description.name
        ))?;
    }
    ml_compute_units(units)
}

/// After `copy` of the package at `package` (canonical) failed to load with
/// `error`, tries another copy when the error means that one may be
/// damaged ([`compile::recovery_for`]): the cache's after the build's, then
/// a fresh compile staged beside the cache entry, which replaces the entry
/// only once it loads. Returns the model and the copy it came from (now
/// the shared one). The error is the first load's, with what the fallback
/// then failed with appended.
fn recover(
    package: &Path,
    cache_root: &Path,
    mut copy: Arc<CompiledCopy>,
    error: Error,
    function_name: Option<&str>,
    compute_units: MLComputeUnits,
) -> Result<(Retained<MLModel>, Arc<CompiledCopy>)> {
    let mut failed = in_context(error, &copy.path.display().to_string());
    // The first error, and the fallback whose failure is being added.
    let mut first: Option<(Error, Fallback)> = None;
    loop {
        let (domain, code) = error_code(&failed);
        let error = match first.take() {
            Some((first, tried)) => first.with_fallback_failure(tried, failed),
            None => failed,
        };
        match compile::recovery_for(&copy, &domain, code, cache_root) {
            Recovery::GiveUp => return Err(error),
            Recovery::LoadCached => match compile::cached_copy(&copy, cache_root) {
                Some(cached) => {
                    copy = Arc::new(cached);
                    first = Some((error, Fallback::LoadCached));
                }
                None => return Err(error),
            },
            Recovery::CompileBeside => {
                return load_fresh(package, cache_root, &copy, function_name, compute_units)
                    .map_err(|(tried, fallback)| error.with_fallback_failure(tried, fallback));
            }
        }
        match load_model(&copy.path, function_name, compute_units) {
            Ok(model) => {
                compile::share(package, cache_root, &copy);
                return Ok((model, copy));
            }
            Err(next) => failed = in_context(next, &copy.path.display().to_string()),
        }
    }
}

/// Compiles the package again after `failed` turned out damaged, loads the
/// fresh copy, and only then puts it in place of the cache's entry; the
/// error says whether the compile or the load failed.
fn load_fresh(
    package: &Path,
    cache_root: &Path,
    failed: &CompiledCopy,
    function_name: Option<&str>,
    compute_units: MLComputeUnits,
) -> std::result::Result<(Retained<MLModel>, Arc<CompiledCopy>), (Fallback, Error)> {
    let fresh = compile::compile_beside(package, cache_root, failed)
        .map_err(|error| (Fallback::Compile, error))?;
    let loaded = load_model(fresh.path(), function_name, compute_units).map_err(|error| {
        (
            Fallback::LoadRecompiled,
            in_context(error, &fresh.path().display().to_string()),
        )
    })?;
    let (copy, moved) = fresh
        .accept(package, cache_root)
        .map_err(|error| (Fallback::LoadRecompiled, error))?;
    let copy = Arc::new(copy);
    let model = if moved {
        drop(loaded);
        load_model(&copy.path, function_name, compute_units).map_err(|error| {
            (
                Fallback::LoadRecompiled,
                in_context(error, &copy.path.display().to_string()),
            )
        })?
    } else {
        loaded
    };
    compile::share(package, cache_root, &copy);
    Ok((model, copy))
}

/// The `MLModelConfiguration` of a load: `compute_units`, and
/// `functionName` when a function is named.
fn model_configuration(
    function_name: Option<&str>,
    compute_units: MLComputeUnits,
) -> Result<Retained<MLModelConfiguration>> {
    // SAFETY: a plain configuration object, available since macOS
    // 10.14 / iOS 12.
    let configuration = unsafe { MLModelConfiguration::new() };
    // SAFETY: a named `MLComputeUnits` constant this system has
    // (`ml_compute_units` checked the Neural Engine one).
    unsafe { configuration.setComputeUnits(compute_units) };
    if let Some(name) = function_name {
        require_multifunction(&format!(
            "loading function {name:?} of a multifunction model"
        ))?;
        // SAFETY: `functionName` exists (checked just above); Core ML
        // reports a name the model does not have as a load error.
        unsafe { configuration.setFunctionName(Some(&NSString::from_str(name))) };
    }
    Ok(configuration)
}

/// Loads the compiled model at `compiled`, waiting for it, setting
/// `functionName` when a function is named.
fn load_model(
    compiled: &Path,
    function_name: Option<&str>,
    compute_units: MLComputeUnits,
) -> Result<Retained<MLModel>> {
    autoreleasepool(|_| {
        let url = directory_url(compiled)?;
        let configuration = model_configuration(function_name, compute_units)?;
        // SAFETY: `url` is a file URL of a compiled-model directory; Core
        // ML copies the configuration.
        catching("loading the compiled model", || unsafe {
            MLModel::modelWithContentsOfURL_configuration_error(&url, &configuration)
        })?
        .map_err(|e| core_ml_error(&e))
    })
}

// `State` is `Send + Sync` through `MLState` and `Busy` (see the module
// docs on threads); this fails to compile if that ever changes.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<State>();
};

/// The state buffers of a stateful function (an `MLState`). `Send` and
/// `Sync`: see the module documentation.
#[derive(Debug)]
pub struct State {
    state: Retained<MLState>,
    /// The compiled copy of the model that made it (kept alive with it).
    copy: Arc<CompiledCopy>,
    names: Vec<String>,
    /// Claimed by a prediction started with `predict_async` until it
    /// finishes.
    busy: Busy,
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
        self.busy.wait_idle();
        autoreleasepool(|_| {
            catching(&format!("reading state {name:?}"), || {
                array::read_state(&self.state, name)
            })?
            .map_err(|detail| backend_error(format!("state {name:?} could not be read: {detail}")))
        })
    }

    /// Replaces buffer `name` with `tensor` (the caller checked that the
    /// state has such a buffer).
    pub fn write(&mut self, name: &str, tensor: &AnyTensor) -> Result<()> {
        self.busy.wait_idle();
        autoreleasepool(|_| {
            catching(&format!("writing state {name:?}"), || {
                array::write_state(&self.state, name, tensor)
            })?
            .map_err(|detail| Error::WrongState {
                function: String::new(),
                detail,
            })
        })
    }
}
