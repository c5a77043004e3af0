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
#[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
mod reference;
#[cfg(any(target_vendor = "apple", test))]
mod strides;
mod tensor;
mod value;

use std::path::{Path, PathBuf};

pub use coreml_multifunction_format::DataType;
pub use error::{Error, Result};
pub use tensor::{AnyTensor, Element, Tensor};
pub use value::{Dictionary, FeatureValue, Features, Image, PixelFormat};
// What generated code converts fields through; not an API of its own.
#[doc(hidden)]
pub use value::{take, FromFeature, IntoFeature};

use coreml_multifunction_format::naming::quoted_list;
use coreml_multifunction_format::package::Package;
use coreml_multifunction_format::proto::{FeatureDescription, FunctionDescription};

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
    Reference(reference::Function),
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
/// On non-Apple targets it is `Send` and `Sync`. On Apple targets it holds
/// an `MLModel`, and is `Send`/`Sync` only as far as the Core ML backend
/// documents (see `src/runtime/coreml/mod.rs`).
#[derive(Debug)]
pub struct Function {
    package: PathBuf,
    description: FunctionDescription,
    backend: Backend,
    inner: FunctionImpl,
}

impl Function {
    /// Loads `function` of the package at `package` (an `.mlpackage`).
    pub fn load(
        package: impl AsRef<Path>,
        function: &str,
        configuration: &Configuration,
    ) -> Result<Function> {
        let path = package.as_ref();
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
        let inner = match backend {
            #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
            Backend::Reference | Backend::Auto => FunctionImpl::Reference(reference::Function::load(&opened, function)?),
            #[cfg(all(target_vendor = "apple", not(feature = "reference-backend")))]
            Backend::Reference | Backend::Auto => {
                return Err(Error::UnsupportedPlatform(
                    "the reference CPU backend is not compiled in on Apple targets; enable the \
                     `reference-backend` feature of coreml-multifunction, or use Backend::CoreMl"
                        .to_string(),
                ))
            }
            #[cfg(target_vendor = "apple")]
            Backend::CoreMl => FunctionImpl::CoreMl(coreml::Function::load(&opened, function, configuration)?),
            #[cfg(not(target_vendor = "apple"))]
            Backend::CoreMl => {
                return Err(Error::UnsupportedPlatform(
                    "Core ML runs only on Apple platforms; use Backend::Reference (or Backend::Auto) here".to_string(),
                ))
            }
        };
        Ok(Function {
            package: path.to_path_buf(),
            description,
            backend,
            inner,
        })
    }

    /// The function's name.
    pub fn function_name(&self) -> &str {
        &self.description.name
    }

    /// The package it was loaded from.
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
        check::inputs(&self.description, inputs)?;
        if !self.description.state.is_empty() {
            return Err(Error::WrongState {
                function: self.description.name.clone(),
                detail: "the function is stateful: create a state with new_state() and call predict_with_state"
                    .to_string(),
            });
        }
        let outputs = match &self.inner {
            #[cfg(any(not(target_vendor = "apple"), feature = "reference-backend"))]
            FunctionImpl::Reference(function) => function.predict(inputs, None)?,
            #[cfg(target_vendor = "apple")]
            FunctionImpl::CoreMl(function) => function.predict(inputs, None)?,
        };
        self.check_outputs(outputs)
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
            .map(|output| self.check_outputs(output))
            .collect()
    }

    /// A fresh state for this function (every buffer zero), usable with
    /// every function of the package whose state descriptions are the same.
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
        let mismatch = |detail: String| Error::WrongState {
            function: self.description.name.clone(),
            detail,
        };
        if state.descriptions != self.description.state {
            return Err(mismatch(format!(
                "it holds {}, the function needs {}",
                describe_states(&state.descriptions),
                describe_states(&self.description.state)
            )));
        }
        if state.package != self.package {
            return Err(mismatch(format!(
                "it was made for {}, the function is loaded from {}",
                state.package.display(),
                self.package.display()
            )));
        }
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
            _ => return Err(mismatch("it was made by another backend".to_string())),
        };
        self.check_outputs(outputs)
    }

    /// Every declared output is there (optional ones may be missing), and
    /// tensors have the declared element type: a backend that returns
    /// another one (Core ML on some compute units) is converted here, so the
    /// typed API always sees what the description says.
    fn check_outputs(&self, mut outputs: Features) -> Result<Features> {
        use coreml_multifunction_format::proto::specification::feature_type;
        for declared in &self.description.output {
            let kind = declared.r#type.as_ref();
            let Some(value) = outputs.get_mut(&declared.name) else {
                if kind.is_some_and(|t| t.is_optional) {
                    continue;
                }
                return Err(Error::Output {
                    function: self.description.name.clone(),
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
/// by every function of the package with the same state descriptions.
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
