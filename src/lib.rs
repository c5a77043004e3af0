//! Ship several Core ML models that share weights as one multifunction
//! Core ML model, from Rust.
//!
//! A base model with several LoRA adapters, or an LLM's prefill and decode
//! functions, share most of their weights. Core ML (iOS 18 / macOS 15 and
//! later) can hold them all in one `.mlpackage` with one function per
//! model, storing the shared weights once. This crate merges such packages
//! in a build script, without Python, generates a typed Rust API for every
//! function, and runs it: with Core ML on Apple platforms, with a reference
//! CPU backend elsewhere.
//!
//! # Quick start
//!
//! In a clone of the repository:
//!
//! ```text
//! cargo run -p example-app      # three LoRA adapters merged at build time, then run
//! cargo test --workspace        # the whole test suite
//! ```
//!
//! # In a crate
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! coreml-multifunction = "0.1"
//!
//! [build-dependencies]
//! coreml-multifunction = { version = "0.1", features = ["build"] }
//!
//! [package.metadata.multifunction.models.combined]
//! default-function = "adapter_1"
//! functions.adapter_1 = "models/adapter_1.mlpackage"
//! functions.adapter_2 = "models/adapter_2.mlpackage"
//! ```
//!
//! `build.rs` is `fn main() { coreml_multifunction::build().unwrap(); }`
//! ([`build`]), and the crate root says `coreml_multifunction::include_models!();`
//! ([`include_models!`]) to bring in a module `combined` with a struct per
//! function: `combined::Adapter1::load()?.predict(&input)?`.
//!
//! # Without cargo
//!
//! ```no_run
//! use coreml_multifunction::merge::MultiFunctionDescriptor;
//! use coreml_multifunction::package::Package;
//!
//! let report = MultiFunctionDescriptor::new()
//!     .add_function("adapter_1.mlpackage", "adapter_1")
//!     .add_function("adapter_2.mlpackage", "adapter_2")
//!     .default_function("adapter_1")
//!     .merge("combined.mlpackage")?;
//! println!("{} distinct weights stored", report.unique_blobs);
//! for function in Package::open("combined.mlpackage")?.functions() {
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
//! - `runtime` (default): running models ([`runtime`]).
//! - `cli` (default): the CLI's `predict` command.
//! - `build`: what only a build script needs: the Cargo.toml configuration
//!   and code generation.
//! - `ndarray`: tensor conversions to and from `ndarray` arrays.

#![warn(missing_docs)]

// The README's Rust snippets compile as doctests; the ones that need a
// build script's output are checked against the example app by tests/readme.rs.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
#[allow(clippy::needless_doctest_main)]
pub struct ReadmeDoctests;

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
