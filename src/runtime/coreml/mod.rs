//! The Core ML backend (Apple targets).
//!
//! PLACEHOLDER INTERFACE, being implemented: see the Apple runtime issue.

use crate::package::Package;

use super::error::{Error, Result};
use super::tensor::AnyTensor;
use super::value::Features;
use super::Configuration;

/// A function loaded by Core ML.
#[derive(Debug)]
pub struct Function {
    name: String,
}

impl Function {
    /// Loads `function` of `package` with Core ML.
    pub fn load(
        _package: &Package,
        function: &str,
        _configuration: &Configuration,
    ) -> Result<Function> {
        Ok(Function {
            name: function.to_string(),
        })
    }

    /// Runs the function.
    pub fn predict(&self, _inputs: &Features, _state: Option<&mut State>) -> Result<Features> {
        Err(Error::UnsupportedPlatform(format!(
            "the Core ML backend cannot run {:?} yet",
            self.name
        )))
    }

    /// A zeroed state.
    pub fn new_state(&self) -> Result<State> {
        Ok(State {})
    }
}

/// Core ML state buffers.
#[derive(Debug)]
pub struct State {}

impl State {
    /// A copy of buffer `name`.
    pub fn read(&self, name: &str) -> Result<AnyTensor> {
        Err(Error::UnsupportedPlatform(format!("no state {name:?} yet")))
    }
}
