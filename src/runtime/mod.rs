//! Running functions of merged models.
//!
//! The same API runs on two backends:
//!
//! - **Core ML** (`coreml`, compiled for Apple targets only): the model is compiled and
//!   loaded by Core ML with `MLModelConfiguration.functionName`, on the
//!   compute units asked for (the Neural Engine where it can).
//! - **Reference** (every other target, and Apple targets with the
//!   `reference-backend` feature): a CPU interpreter of the ML Program,
//!   computing in f32, so the same code runs and is tested on Linux and
//!   Windows. Its numerics and the ops it runs are documented in
//!   `src/runtime/reference/mod.rs`.
//!
//! [`Backend::Auto`] picks Core ML on Apple targets and the reference
//! backend elsewhere. Inputs are checked against the function's description
//! before any backend sees them, so a bad input is a Rust error, never an
//! Objective-C exception.

mod check;
// The Core ML backend's platform-independent parts: compiled on Apple
// targets, and for the unit tests everywhere.
#[cfg(any(target_vendor = "apple", test))]
mod compile_cache;
#[cfg(target_vendor = "apple")]
mod coreml;
mod error;
mod locate;
mod pipeline;
mod prediction;
#[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
mod reference;
#[cfg(any(target_vendor = "apple", test))]
mod strides;
mod tensor;
mod value;

use std::cell::Cell;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use coreml_multifunction_format::DataType;
pub use error::{Error, Result};
pub use pipeline::Pipeline;
pub use prediction::{Loading, Prediction};
pub use tensor::{AnyTensor, Element, Tensor};
pub use value::{Dictionary, FeatureValue, Features, Image, PixelFormat};
// What generated code converts fields through; not an API of its own.
#[doc(hidden)]
pub use value::{take, FromFeature, IntoFeature};

use coreml_multifunction_format::naming::quoted_list;
use coreml_multifunction_format::package::Package;
use coreml_multifunction_format::proto::{FeatureDescription, FunctionDescription};

use prediction::Started;

/// Where Core ML may run a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ComputeUnits {
    /// The CPU only.
    CpuOnly,
    /// The CPU and the GPU.
    CpuAndGpu,
    /// The CPU and the Neural Engine.
    CpuAndNeuralEngine,
    /// Whatever Core ML chooses (the default).
    #[default]
    All,
}

/// The op types function `function` of `package` uses that the reference
/// CPU backend does not implement, nested blocks included: sorted, each
/// once, and empty when the backend can run the function. Loading the
/// function on that backend fails with [`Error::UnsupportedOps`] naming the
/// same list; `coreml-multifunction inspect` prints it per function.
#[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
pub fn reference_backend_missing_ops(package: &Package, function: &str) -> Result<Vec<String>> {
    reference::missing_ops(package, function)
}

/// Which implementation runs the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Core ML on Apple targets, the reference backend elsewhere.
    #[default]
    Auto,
    /// Core ML (Apple targets only).
    CoreMl,
    /// The reference CPU interpreter.
    Reference,
}

impl Backend {
    /// The backend `Auto` stands for on this target.
    pub fn resolve(self) -> Backend {
        match self {
            Backend::Auto if cfg!(target_vendor = "apple") => Backend::CoreMl,
            Backend::Auto => Backend::Reference,
            other => other,
        }
    }

    /// A short name for messages ("Core ML", "reference CPU backend").
    pub fn name(self) -> &'static str {
        match self.resolve() {
            Backend::CoreMl => "Core ML",
            _ => "reference CPU backend",
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configuration {
    /// Where Core ML may run it (ignored by the reference backend).
    pub compute_units: ComputeUnits,
    /// Which backend runs it.
    pub backend: Backend,
    /// Where Core ML keeps the models it compiles on first load; `None` for
    /// the default (`~/Library/Caches/coreml-multifunction/compiled`, or
    /// the temporary directory when that cannot be written). Ignored by
    /// the reference backend.
    pub cache_dir: Option<PathBuf>,
    /// Compute fp16 as the device computes it (reference backend; `false`
    /// by default).
    ///
    /// By default the reference backend computes fp16 programs in f32 and
    /// rounds to fp16 only where the program says a value is fp16 at a
    /// boundary: a `cast` to fp16, an fp16 input, output or state, an
    /// fp16 constant. The GPU and the Neural Engine round every fp16 value
    /// after every op. With `fp16_ops`, the reference backend does too:
    /// every value an op computes whose MIL type is fp16 (in the nested
    /// blocks of `cond` and `while_loop` too) is rounded to fp16, to
    /// nearest with ties to even, right after the op. So an fp16
    /// intermediate that overflows becomes infinity (and what follows
    /// from it, NaN), and precision lost in one op is lost for the next:
    /// the classic failure of LLMs and diffusion models on the Neural
    /// Engine shows up on Linux before a device sees it. Which outputs to
    /// round is decided when the function loads; the default mode does no
    /// extra work.
    ///
    /// The rounding is the one fp16 inputs and outputs already have, so
    /// it is idempotent with it: a function split into chunks, whose fp16
    /// values crossing a boundary become fp16 outputs and inputs, gives in
    /// this mode bit for bit what the unsplit function gives.
    ///
    /// What it does not model: Core ML's own fused kernels (attention,
    /// layer norm, softmax computed inside one kernel at another
    /// precision), the accumulation width inside `matmul`, `linear`,
    /// `conv` and reductions (the device may accumulate in fp32 or in
    /// fp16; here it is f32, rounded once at the op's output), and the
    /// device's implementations of transcendental functions (`exp`,
    /// `tanh`, `erf`: computed here in f32, then rounded). It tells you
    /// an fp16 model's values fit fp16 between ops, not what a given
    /// device returns bit for bit.
    ///
    /// The Core ML backend ignores it: Core ML's GPU and Neural Engine
    /// already round after every op, and its CPU compute unit may run
    /// fp16 models in fp32 whatever this says.
    pub fp16_ops: bool,
    /// How many threads the reference backend splits a prediction's
    /// kernels over, the calling thread included; `None` (the default) for
    /// `RAYON_NUM_THREADS` when it is set to a positive integer, else the
    /// cores available, at most 8. A setting over 64 counts as 64.
    ///
    /// The backend's threads are one pool per process, shared by every
    /// loaded function; each prediction uses as many of them as its
    /// function's setting allows. Results are the same bits for every
    /// count: each kernel splits its outputs, never a sum. Ignored by the
    /// Core ML backend, which schedules its own work.
    pub threads: Option<NonZeroUsize>,
}

impl Configuration {
    /// The default configuration with `backend`.
    pub fn with_backend(backend: Backend) -> Self {
        Configuration {
            backend,
            ..Default::default()
        }
    }
}

#[derive(Debug)]
enum FunctionImpl {
    #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
    // Boxed: the interpreter's compiled program is far larger than a
    // handle to an MLModel.
    Reference(Box<reference::Function>),
    #[cfg(target_vendor = "apple")]
    CoreMl(coreml::Function),
}

#[derive(Debug)]
enum StateImpl {
    #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
    Reference(reference::State),
    #[cfg(target_vendor = "apple")]
    CoreMl(coreml::State),
}

/// One function of a model package, loaded and ready to predict. The
/// generated API wraps one per function struct.
///
/// It is `Send` and not `Sync`, on every target: a loaded function may move
/// to another thread (a worker, an async task), but is used by one thread
/// at a time. On Apple targets it holds an `MLModel`, which may be handed
/// between threads but is not documented as safe to share (see
/// `src/runtime/coreml/mod.rs`); the reference backend could be shared,
/// but is held to the same rule so that code compiling on Linux compiles on
/// a Mac. Load one function per thread to predict in parallel, or await
/// [`Function::predict_async`] predictions, which run concurrently.
#[derive(Debug)]
pub struct Function {
    package: PathBuf,
    description: Arc<FunctionDescription>,
    backend: Backend,
    inner: FunctionImpl,
    /// `Send` without `Sync` on every target.
    _not_sync: PhantomData<Cell<()>>,
}

// A loaded function moves between threads on every target, and is shared
// between them on none: this fails to compile if either changes.
const _: () = {
    const fn send<T: Send>() {}
    send::<Function>();
    // `Function: Sync` would make `_` ambiguous between the two impls.
    trait AmbiguousIfSync<A> {
        fn item() {}
    }
    impl<T: ?Sized> AmbiguousIfSync<()> for T {}
    impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
    let _ = <Function as AmbiguousIfSync<_>>::item;
};

impl Function {
    /// Loads `function` of the package at `package` (an `.mlpackage`).
    ///
    /// A compiled model (`.mlmodelc`) carries no description this crate
    /// can read: load it with [`Function::load_compiled`] and the
    /// function's description (the generated API's `load_from` does).
    pub fn load(
        package: impl AsRef<Path>,
        function: &str,
        configuration: &Configuration,
    ) -> Result<Function> {
        Function::begin_load(package.as_ref(), function, configuration)?.finish()
    }

    /// [`Function::load`] up to Core ML's own load step.
    fn begin_load(path: &Path, function: &str, configuration: &Configuration) -> Result<Begun> {
        if is_compiled_model(path) {
            return Err(Error::UnsupportedPlatform(format!(
                "{}: a compiled model (.mlmodelc) holds no description this crate reads; load it \
                 with Function::load_compiled and the function's description (the generated \
                 API's load_from does that), or load the .mlpackage",
                path.display()
            )));
        }
        let opened = Package::open(path)?;
        let Some(view) = opened.function(function) else {
            return Err(Error::UnknownFunction {
                package: path.to_path_buf(),
                function: function.to_string(),
                available: quoted_list(opened.functions().iter().map(|f| f.name)),
            });
        };
        let description = view.description.into_owned();
        let backend = configuration.backend.resolve();
        match backend {
            #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
            Backend::Reference | Backend::Auto => {
                let inner = FunctionImpl::Reference(Box::new(
                    reference::Function::load(&opened, function, configuration.fp16_ops)?
                        .with_threads(configuration.threads),
                ));
                let root = opened.root().to_path_buf();
                Ok(Begun::Loaded(Function::new(
                    root,
                    description,
                    backend,
                    inner,
                )))
            }
            #[cfg(all(target_vendor = "apple", not(feature = "reference-backend")))]
            Backend::Reference | Backend::Auto => Err(no_reference_backend()),
            #[cfg(target_vendor = "apple")]
            Backend::CoreMl => Ok(Begun::CoreMl {
                package: opened.root().to_path_buf(),
                prepared: coreml::Prepared::package(&opened, function, configuration)?,
                description,
            }),
            #[cfg(not(target_vendor = "apple"))]
            Backend::CoreMl => Err(no_core_ml()),
        }
    }

    /// Starts loading `function` of the package at `package` as
    /// [`Function::load`] does, and returns a future of the loaded
    /// function that never blocks the calling thread. With Core ML, a
    /// short-lived thread of its own computes the package's key and finds
    /// the compiled model, or compiles it on first load (which may take
    /// minutes for a multi-gigabyte model) with Core ML's completion-handler
    /// compile where the system has it (macOS 13 / iOS 16), then starts
    /// Core ML's completion-handler load
    /// (`loadContentsOfURL:configuration:completionHandler:`), whose
    /// handler hands the function to the future; a copy that turns out
    /// damaged is recovered from on a thread. The reference backend loads
    /// here, and the future is ready at once. The future is `Send` and
    /// `'static`.
    pub fn load_async(
        package: impl AsRef<Path>,
        function: &str,
        configuration: &Configuration,
    ) -> Loading<Function> {
        let package = package.as_ref().to_path_buf();
        let function = function.to_string();
        load_off_thread(configuration, move |configuration| {
            Function::begin_load(&package, &function, configuration)
        })
    }

    /// Loads the function `description` describes from the compiled model
    /// (`.mlmodelc`) at `compiled`: one `xcrun coremlcompiler` (or Core ML)
    /// made from a multifunction package, as `copy-to` ships beside the
    /// package for an app bundle. Core ML only, and nothing but Core ML
    /// reads the compiled model: the description (which the generated API
    /// embeds at build time) is what inputs are checked against, so it
    /// must be the function's own.
    pub fn load_compiled(
        compiled: impl AsRef<Path>,
        description: FunctionDescription,
        configuration: &Configuration,
    ) -> Result<Function> {
        Function::begin_load_compiled(compiled.as_ref(), description, configuration)?.finish()
    }

    /// [`Function::load_compiled`] up to Core ML's own load step.
    fn begin_load_compiled(
        path: &Path,
        description: FunctionDescription,
        configuration: &Configuration,
    ) -> Result<Begun> {
        let backend = configuration.backend.resolve();
        if backend != Backend::CoreMl {
            return Err(Error::UnsupportedPlatform(format!(
                "{}: the {} runs packages (.mlpackage), not compiled models; load the package \
                 with load / load_from instead",
                path.display(),
                backend.name()
            )));
        }
        #[cfg(not(target_vendor = "apple"))]
        {
            let _ = description;
            Err(no_core_ml())
        }
        #[cfg(target_vendor = "apple")]
        {
            let prepared = coreml::Prepared::compiled(path, &description, configuration)?;
            // Canonical, as packages are, so states compare by location.
            let package = path.canonicalize().map_err(|source| Error::Io {
                path: path.to_path_buf(),
                action: "resolve the compiled model's path",
                source,
            })?;
            Ok(Begun::CoreMl {
                package,
                description,
                prepared,
            })
        }
    }

    /// What the generated API's `load_from` calls: `path` is a package,
    /// loaded as [`Function::load`] loads it, or a compiled model
    /// (`.mlmodelc`), loaded as [`Function::load_compiled`] loads it with
    /// `encoded_description` (the function's `FunctionDescription` in
    /// protobuf form, which the generated code embeds at build time).
    #[doc(hidden)]
    pub fn load_generated(
        path: impl AsRef<Path>,
        function: &str,
        encoded_description: &[u8],
        configuration: &Configuration,
    ) -> Result<Function> {
        Function::begin_load_generated(path.as_ref(), function, encoded_description, configuration)?
            .finish()
    }

    /// [`Function::load_generated`] up to Core ML's own load step.
    fn begin_load_generated(
        path: &Path,
        function: &str,
        encoded_description: &[u8],
        configuration: &Configuration,
    ) -> Result<Begun> {
        if !is_compiled_model(path) {
            return Function::begin_load(path, function, configuration);
        }
        let invalid = |detail: String| Error::InvalidModel {
            function: function.to_string(),
            detail,
        };
        let description = <FunctionDescription as prost::Message>::decode(encoded_description)
            .map_err(|e| {
                invalid(format!(
                    "the generated code's description does not decode: {e}"
                ))
            })?;
        if description.name != function {
            return Err(invalid(format!(
                "the generated code's description is of function {:?}",
                description.name
            )));
        }
        Function::begin_load_compiled(path, description, configuration)
    }

    /// What the generated API's `load_with` and `load_from` call: the
    /// function loaded from `location` (see [`ModelLocation`]) as
    /// [`Function::load_generated`] loads a path.
    #[doc(hidden)]
    pub fn load_generated_at(
        location: &ModelLocation,
        function: &str,
        encoded_description: &[u8],
        configuration: &Configuration,
    ) -> Result<Function> {
        Function::begin_load_generated_at(location, function, encoded_description, configuration)?
            .finish()
    }

    /// [`Function::load_generated_at`] up to Core ML's own load step.
    fn begin_load_generated_at(
        location: &ModelLocation,
        function: &str,
        encoded_description: &[u8],
        configuration: &Configuration,
    ) -> Result<Begun> {
        let path = location.resolve(configuration)?;
        Function::begin_load_generated(&path, function, encoded_description, configuration)
    }

    /// What the generated API's `load_async` and `load_from_async` call:
    /// [`Function::load_generated_at`] as [`Function::load_async`] runs a
    /// load (the bundle lookup too, off the calling thread).
    #[doc(hidden)]
    pub fn load_generated_async(
        location: ModelLocation,
        function: &str,
        encoded_description: &'static [u8],
        configuration: &Configuration,
    ) -> Loading<Function> {
        let function = function.to_string();
        load_off_thread(configuration, move |configuration| {
            Function::begin_load_generated_at(
                &location,
                &function,
                encoded_description,
                configuration,
            )
        })
    }

    fn new(
        package: PathBuf,
        description: FunctionDescription,
        backend: Backend,
        inner: FunctionImpl,
    ) -> Function {
        Function {
            package,
            description: Arc::new(description),
            backend,
            inner,
            _not_sync: PhantomData,
        }
    }

    /// The function's name.
    pub fn function_name(&self) -> &str {
        &self.description.name
    }

    /// The package (or compiled model) it was loaded from, as a canonical
    /// path.
    pub fn package(&self) -> &Path {
        &self.package
    }

    /// The function's interface.
    pub fn description(&self) -> &FunctionDescription {
        &self.description
    }

    /// The backend running it.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs a stateless prediction.
    pub fn predict(&self, inputs: &Features) -> Result<Features> {
        self.check_stateless(inputs)?;
        let outputs = match &self.inner {
            #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
            FunctionImpl::Reference(function) => function.predict(inputs, None)?,
            #[cfg(target_vendor = "apple")]
            FunctionImpl::CoreMl(function) => function.predict(inputs, None)?,
        };
        check_outputs(&self.description, outputs)
    }

    /// Starts a stateless prediction and returns a future of its outputs.
    ///
    /// The prediction starts now: the inputs are checked and converted
    /// before this returns, and Core ML runs it with its completion-handler
    /// API (`predictionFromFeatures:completionHandler:`, macOS 14 / iOS 17
    /// and later; on older systems it runs synchronously here). The
    /// reference backend computes it here, and the future is ready at once.
    /// The future owns what it needs, so it is `Send` and outlives this
    /// borrow of the function; several may run at once. An error (a bad
    /// input, a failed prediction) is the future's output.
    pub fn predict_async(&self, inputs: &Features) -> Prediction<'static> {
        Prediction::new(self.start(inputs), self.description.clone())
    }

    /// Starts a stateless prediction: what [`Function::predict_async`]
    /// wraps.
    fn start(&self, inputs: &Features) -> Started {
        match self.check_stateless(inputs) {
            Err(error) => Started::Done(Err(error)),
            Ok(()) => match &self.inner {
                #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
                FunctionImpl::Reference(function) => Started::Done(function.predict(inputs, None)),
                #[cfg(target_vendor = "apple")]
                FunctionImpl::CoreMl(function) => function.predict_async(inputs, None),
            },
        }
    }

    fn check_stateless(&self, inputs: &Features) -> Result<()> {
        check::inputs(&self.description, inputs)?;
        if !self.description.state.is_empty() {
            return Err(Error::WrongState {
                function: self.description.name.clone(),
                detail: "the function is stateful: create a state with new_state() and call \
                         predict_with_state"
                    .to_string(),
            });
        }
        Ok(())
    }

    /// Runs several stateless predictions. Core ML runs them as one batch;
    /// the reference backend one after the other.
    pub fn predict_batch(&self, inputs: &[Features]) -> Result<Vec<Features>> {
        for input in inputs {
            check::inputs(&self.description, input)?;
        }
        if !self.description.state.is_empty() {
            return Err(Error::WrongState {
                function: self.description.name.clone(),
                detail: "the function is stateful: batches are for stateless functions".to_string(),
            });
        }
        let outputs = match &self.inner {
            #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
            FunctionImpl::Reference(function) => inputs
                .iter()
                .map(|input| function.predict(input, None))
                .collect::<Result<Vec<_>>>()?,
            #[cfg(target_vendor = "apple")]
            FunctionImpl::CoreMl(function) => function.predict_batch(inputs)?,
        };
        outputs
            .into_iter()
            .map(|output| check_outputs(&self.description, output))
            .collect()
    }

    /// A fresh state for this function (every buffer zero), usable with
    /// every function of the package whose states it holds with the same
    /// descriptions.
    pub fn new_state(&self) -> Result<State> {
        let inner = match &self.inner {
            #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
            FunctionImpl::Reference(function) => StateImpl::Reference(function.new_state()?),
            #[cfg(target_vendor = "apple")]
            FunctionImpl::CoreMl(function) => StateImpl::CoreMl(function.new_state()?),
        };
        Ok(State {
            package: self.package.clone(),
            descriptions: self.description.state.clone(),
            inner,
        })
    }

    /// Runs a prediction that reads and updates `state`.
    pub fn predict_with_state(&self, inputs: &Features, state: &mut State) -> Result<Features> {
        check::inputs(&self.description, inputs)?;
        self.check_state(state)?;
        let outputs = match (&self.inner, &mut state.inner) {
            #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
            (FunctionImpl::Reference(function), StateImpl::Reference(state)) => {
                function.predict(inputs, Some(state))?
            }
            #[cfg(target_vendor = "apple")]
            (FunctionImpl::CoreMl(function), StateImpl::CoreMl(state)) => {
                function.predict(inputs, Some(state))?
            }
            #[cfg(all(target_vendor = "apple", feature = "reference-backend"))]
            _ => return Err(self.wrong_state("it was made by another backend".to_string())),
        };
        check_outputs(&self.description, outputs)
    }

    /// Starts a prediction that reads and updates `state`, and returns a
    /// future of its outputs, as [`Function::predict_async`] does (Core ML's
    /// stateful completion-handler API exists from macOS 15 / iOS 18, as
    /// states do). The future borrows `state` until it finishes; dropped
    /// early, the prediction still runs, and the state's next use waits
    /// for it, since Core ML forbids two predictions on one state at once.
    pub fn predict_with_state_async<'s>(
        &self,
        inputs: &Features,
        state: &'s mut State,
    ) -> Prediction<'s> {
        Prediction::new(
            self.start_with_state(inputs, state),
            self.description.clone(),
        )
    }

    /// Starts a prediction on `state`: what
    /// [`Function::predict_with_state_async`] wraps. What it returns holds
    /// no borrow of the state (the backends keep what they need, and Core
    /// ML's claim on the state makes its next use wait for this one), so a
    /// [`Pipeline`] can run its chunks one after the other on one state.
    fn start_with_state(&self, inputs: &Features, state: &mut State) -> Started {
        match check::inputs(&self.description, inputs).and_then(|()| self.check_state(state)) {
            Err(error) => Started::Done(Err(error)),
            Ok(()) => match (&self.inner, &mut state.inner) {
                #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
                (FunctionImpl::Reference(function), StateImpl::Reference(state)) => {
                    Started::Done(function.predict(inputs, Some(state)))
                }
                #[cfg(target_vendor = "apple")]
                (FunctionImpl::CoreMl(function), StateImpl::CoreMl(state)) => {
                    function.predict_async(inputs, Some(state))
                }
                #[cfg(all(target_vendor = "apple", feature = "reference-backend"))]
                _ => Started::Done(Err(
                    self.wrong_state("it was made by another backend".to_string())
                )),
            },
        }
    }

    /// Checks that `state` has this function's buffers and comes from the
    /// same package (canonical paths, so `./m.mlpackage` and `m.mlpackage`
    /// are one package). The state may hold more buffers than the function
    /// declares (a [`Pipeline`]'s state serves chunks declaring some of its
    /// states each), but each the function declares must be there with an
    /// identical description; a stateless function takes no state.
    fn check_state(&self, state: &State) -> Result<()> {
        let declared = &self.description.state;
        let covered = declared
            .iter()
            .all(|d| state.descriptions.iter().any(|held| held == d));
        if declared.is_empty() || !covered {
            return Err(self.wrong_state(format!(
                "it holds {}, the function needs {}",
                describe_states(&state.descriptions),
                describe_states(declared)
            )));
        }
        if state.package != self.package {
            return Err(self.wrong_state(format!(
                "it was made for {}, the function is loaded from {}",
                state.package.display(),
                self.package.display()
            )));
        }
        // Core ML: a state of the same package, but of a model of another
        // compiled copy, is refused (Apple documents a state only as made
        // by the model it is used with).
        #[cfg(target_vendor = "apple")]
        #[allow(irrefutable_let_patterns)] // without the reference backend
        if let (FunctionImpl::CoreMl(function), StateImpl::CoreMl(held)) =
            (&self.inner, &state.inner)
        {
            function.check_copy(held)?;
        }
        Ok(())
    }

    fn wrong_state(&self, detail: String) -> Error {
        Error::WrongState {
            function: self.description.name.clone(),
            detail,
        }
    }
}

/// Where the generated API loads a model from: what its `load_with` /
/// `load_async` ([`ModelLocation::built`]) and `load_from` /
/// `load_from_async` ([`ModelLocation::at`]) pass. Not an API of its own.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelLocation {
    /// The app bundle's copy (Apple targets), else the package the build
    /// made at this path: see `src/runtime/locate.rs`.
    Built(PathBuf),
    /// This path: a package, or a compiled model.
    At(PathBuf),
}

impl ModelLocation {
    /// The app bundle's copy of the model whose build-time package is
    /// `package`, else that package.
    pub fn built(package: &str) -> ModelLocation {
        ModelLocation::Built(PathBuf::from(package))
    }

    /// The model at `path`.
    pub fn at(path: impl AsRef<Path>) -> ModelLocation {
        ModelLocation::At(path.as_ref().to_path_buf())
    }

    /// The path to load: for [`ModelLocation::Built`], the first place
    /// [`locate::lookup_order`] gives that exists (compiled models only
    /// for Core ML), or an error listing every place looked at.
    fn resolve(&self, configuration: &Configuration) -> Result<PathBuf> {
        match self {
            ModelLocation::At(path) => Ok(path.clone()),
            ModelLocation::Built(package) => locate::first_present(
                package,
                locate::main_bundle_resources().as_deref(),
                configuration.backend.resolve() == Backend::CoreMl,
                Path::is_dir,
            ),
        }
    }
}

/// A load up to the step that waits for Core ML: done (the reference
/// backend, which loads at once), or ready for Core ML's own load of the
/// compiled copy, which [`Begun::finish`] waits for and [`load_off_thread`]
/// starts with Core ML's completion-handler API.
enum Begun {
    // Only the reference backend loads at once.
    #[cfg_attr(
        all(target_vendor = "apple", not(feature = "reference-backend")),
        allow(dead_code)
    )]
    Loaded(Function),
    #[cfg(target_vendor = "apple")]
    CoreMl {
        /// Where the function is loaded from (canonical).
        package: PathBuf,
        description: FunctionDescription,
        prepared: coreml::Prepared,
    },
}

impl Begun {
    /// The loaded function, waiting for Core ML's load.
    fn finish(self) -> Result<Function> {
        match self {
            Begun::Loaded(function) => Ok(function),
            #[cfg(target_vendor = "apple")]
            Begun::CoreMl {
                package,
                description,
                prepared,
            } => {
                let inner = FunctionImpl::CoreMl(prepared.load()?);
                Ok(Function::new(package, description, Backend::CoreMl, inner))
            }
        }
    }
}

/// Runs `begin` where it cannot block the caller, then Core ML's load
/// without waiting for it: for Core ML, `begin` (the bundle lookup, the
/// package's key, the registry, a compile on first load) runs on a
/// short-lived thread of its own, which then starts Core ML's
/// completion-handler load ([`coreml::Prepared::start`]) and ends; the
/// function arrives through the one-shot channel of [`prediction`]. For
/// the reference backend `begin` loads here, and the future is ready at
/// once.
fn load_off_thread(
    configuration: &Configuration,
    begin: impl FnOnce(&Configuration) -> Result<Begun> + Send + 'static,
) -> Loading<Function> {
    #[cfg(target_vendor = "apple")]
    if configuration.backend.resolve() == Backend::CoreMl {
        let (sender, receiver) = prediction::channel();
        let configuration = configuration.clone();
        return spawn_loading(receiver, move || {
            // A panic (a bug) drops the sender unsent, which the
            // future reports as an error.
            let begun =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| begin(&configuration)));
            match begun {
                Err(_) => {}
                Ok(Err(error)) => sender.send(Err(error)),
                Ok(Ok(Begun::Loaded(function))) => sender.send(Ok(function)),
                Ok(Ok(Begun::CoreMl {
                    package,
                    description,
                    prepared,
                })) => prepared.start(
                    move |inner| {
                        let inner = FunctionImpl::CoreMl(inner);
                        Function::new(package, description, Backend::CoreMl, inner)
                    },
                    sender,
                ),
            }
        });
    }
    Loading::ready(begin(configuration).and_then(Begun::finish))
}

/// Runs the whole of `load` where it cannot block the caller: for Core ML,
/// on a thread of its own (a [`Pipeline`]'s chunks, loaded one after the
/// other with the synchronous load), its result sent through the one-shot
/// channel of [`prediction`]; for the reference backend, here (the future
/// is ready at once).
fn load_on_thread<T: Send + 'static>(
    configuration: &Configuration,
    load: impl FnOnce(&Configuration) -> Result<T> + Send + 'static,
) -> Loading<T> {
    #[cfg(target_vendor = "apple")]
    if configuration.backend.resolve() == Backend::CoreMl {
        let (sender, receiver) = prediction::channel();
        let configuration = configuration.clone();
        return spawn_loading(receiver, move || {
            // A panic (a bug) drops the sender unsent, which the future
            // reports as an error.
            let loaded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load(&configuration)));
            if let Ok(loaded) = loaded {
                sender.send(loaded);
            }
        });
    }
    Loading::ready(load(configuration))
}

/// Runs `work` on a loading thread of its own, and returns the future of
/// what it sends to `receiver`'s sender (or the error of a thread that
/// could not start).
#[cfg(target_vendor = "apple")]
fn spawn_loading<T: Send + 'static>(
    receiver: prediction::Receiver<Result<T>>,
    work: impl FnOnce() + Send + 'static,
) -> Loading<T> {
    let spawned = std::thread::Builder::new()
        .name("coreml-multifunction load".to_string())
        .spawn(work);
    match spawned {
        Ok(_) => Loading::received(receiver),
        Err(source) => Loading::ready(Err(Error::Io {
            path: PathBuf::new(),
            action: "start a thread to load the model on",
            source,
        })),
    }
}

/// Whether `path` names a compiled model (`.mlmodelc`).
fn is_compiled_model(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == coreml_multifunction_format::compiled::COMPILED_EXTENSION)
}

#[cfg(all(target_vendor = "apple", not(feature = "reference-backend")))]
fn no_reference_backend() -> Error {
    Error::UnsupportedPlatform(
        "the reference CPU backend is not compiled in on Apple targets; enable the \
         `reference-backend` feature of coreml-multifunction, or use Backend::CoreMl"
            .to_string(),
    )
}

#[cfg(not(target_vendor = "apple"))]
fn no_core_ml() -> Error {
    Error::UnsupportedPlatform(
        "Core ML runs only on Apple platforms; use Backend::Reference (or Backend::Auto) here"
            .to_string(),
    )
}

/// Every declared output is there (optional ones may be missing), and
/// tensors have the declared element type: a backend that returns another
/// one (Core ML on some compute units) is converted here, so the typed API
/// always sees what the description says.
fn check_outputs(description: &FunctionDescription, mut outputs: Features) -> Result<Features> {
    use coreml_multifunction_format::proto::specification::feature_type;
    for declared in &description.output {
        let kind = declared.r#type.as_ref();
        let Some(value) = outputs.get_mut(&declared.name) else {
            if kind.is_some_and(|t| t.is_optional) {
                continue;
            }
            return Err(Error::Output {
                function: description.name.clone(),
                name: declared.name.clone(),
                detail: "the backend did not return it".to_string(),
            });
        };
        if let (Some(feature_type::Type::MultiArrayType(array)), FeatureValue::Tensor(tensor)) =
            (kind.and_then(|t| t.r#type.as_ref()), &*value)
        {
            if let Some(wanted) = DataType::from_array_data_type(array.data_type) {
                if tensor.data_type() != wanted {
                    *value = FeatureValue::Tensor(tensor.cast(wanted));
                }
            }
        }
    }
    Ok(outputs)
}

fn describe_states(states: &[FeatureDescription]) -> String {
    if states.is_empty() {
        "no state".to_string()
    } else {
        format!(
            "states {}",
            quoted_list(states.iter().map(|s| s.name.as_str()))
        )
    }
}

/// The persistent buffers of a stateful function (an LLM's KV cache), shared
/// by every function of the package whose states it holds with the same
/// descriptions (the functions with the same state descriptions, and the
/// chunks of a [`Pipeline`], which may each declare some of them).
#[derive(Debug)]
pub struct State {
    package: PathBuf,
    descriptions: Vec<FeatureDescription>,
    inner: StateImpl,
}

impl State {
    /// The names of its buffers.
    pub fn names(&self) -> Vec<&str> {
        self.descriptions.iter().map(|d| d.name.as_str()).collect()
    }

    /// A copy of buffer `name` as a tensor of element type `T`.
    pub fn read_tensor<T: Element>(&self, name: &str) -> Result<Tensor<T>> {
        let tensor = self.read(name)?;
        let found = tensor.data_type();
        T::unwrap(tensor).map_err(|_| Error::WrongState {
            function: String::new(),
            detail: format!("state {name:?} holds {found} data, not {}", T::DATA_TYPE),
        })
    }

    /// A copy of buffer `name`.
    pub fn read(&self, name: &str) -> Result<AnyTensor> {
        self.check_name(name)?;
        match &self.inner {
            #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
            StateImpl::Reference(state) => state.read(name),
            #[cfg(target_vendor = "apple")]
            StateImpl::CoreMl(state) => state.read(name),
        }
    }

    /// Replaces buffer `name` with `tensor`, which must have the buffer's
    /// element type and shape: to resume from a saved KV cache, say, or to
    /// start from values other than zeros.
    pub fn write(&mut self, name: &str, tensor: &AnyTensor) -> Result<()> {
        self.check_name(name)?;
        match &mut self.inner {
            #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
            StateImpl::Reference(state) => state.write(name, tensor),
            #[cfg(target_vendor = "apple")]
            StateImpl::CoreMl(state) => state.write(name, tensor),
        }
    }

    fn check_name(&self, name: &str) -> Result<()> {
        if self.descriptions.iter().any(|d| d.name == name) {
            return Ok(());
        }
        Err(Error::WrongState {
            function: String::new(),
            detail: format!(
                "there is no state {name:?}; the states are {}",
                quoted_list(self.names())
            ),
        })
    }
}
