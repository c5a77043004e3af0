//! Ship several Core ML models that share weights as one multifunction
//! Core ML model, from Rust.
//!
//! A base model with several LoRA adapters, or an LLM's prefill and decode
//! functions, share most of their weights. Core ML (iOS 18 / macOS 15 and
//! later) can hold them all in one `.mlpackage` with one function per
//! model, storing the shared weights once. This crate reads and writes such
//! packages exactly, without Python.
//!
//! # Quick start
//!
//! ```text
//! cargo run -p example-app      # the LoRA example, end to end
//! bash .ci/run                  # the whole test suite
//! ```
//!
//! # Reading a package
//!
//! ```no_run
//! use coreml_multifunction::package::Package;
//!
//! let package = Package::open("models/adapter_1.mlpackage")?;
//! for function in package.functions() {
//!     println!("{} has {} inputs", function.name, function.description.input.len());
//! }
//! # Ok::<(), coreml_multifunction::Error>(())
//! ```
//!
//! [`package::Package::open`] checks everything it reads: the manifest,
//! that every path stays inside the package, that the model is an ML
//! Program carrying no field this crate would drop, and every weight
//! reference against the blob file's records.
//!
//! # Features
//!
//! - `runtime` (default): running models.
//! - `build`: what only a build script needs (Cargo.toml configuration and
//!   code generation).

#![warn(missing_docs)]

#[cfg(feature = "build")]
pub mod cargo;
#[cfg(feature = "build")]
pub mod codegen;
pub mod compare;
#[cfg(feature = "build")]
pub mod config;
mod error;
pub mod inspect;
pub mod merge;
pub mod naming;
pub mod package;
#[cfg(feature = "build")]
pub mod pipeline;
pub mod proto;
#[cfg(feature = "runtime")]
pub mod runtime;

#[cfg(feature = "build")]
pub use cargo::{build, Builder, Built, Model};
pub use error::{Bytes, Error, MergeProblem, Problem, Result};
/// The `f16` type of tensors, re-exported for generated code and users.
pub use half;

/// Brings in the typed API generated for every model of
/// `[package.metadata.multifunction]`: one module per model.
///
/// Put it at the root of the crate whose `build.rs` calls
/// `coreml_multifunction::build()`.
#[macro_export]
macro_rules! include_models {
    () => {
        include!(env!("COREML_MULTIFUNCTION_GENERATED"));
    };
}
