//! The reference CPU backend: an interpreter of ML Program functions.
//!
//! PLACEHOLDER INTERFACE, being implemented: see the runtime issue.

use crate::package::Package;

use super::error::{Error, Result};
use super::tensor::AnyTensor;
use super::value::Features;

/// A function ready to run on the CPU.
#[derive(Debug)]
pub struct Function {
    name: String,
}

impl Function {
    /// Prepares `function` of `package`.
    pub fn load(_package: &Package, function: &str) -> Result<Function> {
        Ok(Function {
            name: function.to_string(),
        })
    }

    /// Runs the function.
    pub fn predict(&self, _inputs: &Features, _state: Option<&mut State>) -> Result<Features> {
        Err(Error::UnsupportedPlatform(format!(
            "the reference backend cannot run {:?} yet",
            self.name
        )))
    }

    /// A zeroed state.
    pub fn new_state(&self) -> Result<State> {
        Ok(State {})
    }
}

/// State buffers.
#[derive(Debug)]
pub struct State {}

impl State {
    /// A copy of buffer `name`.
    pub fn read(&self, name: &str) -> Result<AnyTensor> {
        Err(Error::UnsupportedPlatform(format!("no state {name:?} yet")))
    }
}
