//! Run multifunction Core ML models from Rust: one typed struct per function.
//!
//! A base model with several LoRA adapters, or an LLM's prefill and decode
//! functions, share most of their weights. Core ML (iOS 18 / macOS 15 and
//! later) can hold them all in one `.mlpackage` with one function per
//! model, storing the shared weights once. The build crate,
//! [`coreml-multifunction-build`](https://docs.rs/coreml-multifunction-build),
//! merges such packages in a build script, without Python, and generates a
//! typed Rust API for every function. This crate is what the app links: it
//! runs those functions ([`runtime`]) with Core ML on Apple platforms and
//! with a reference CPU backend elsewhere, and reads packages ([`package`]).
//!
//! # In a crate
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [dependencies]
//! coreml-multifunction = "0.2"
//!
//! [build-dependencies]
//! coreml-multifunction-build = "0.2"
//!
//! [package.metadata.multifunction.models.combined]
//! default-function = "adapter_1"
//! functions.adapter_1 = "models/adapter_1.mlpackage"
//! functions.adapter_2 = "models/adapter_2.mlpackage"
//! ```
//!
//! `build.rs` is `fn main() { coreml_multifunction_build::build().unwrap(); }`,
//! and the crate root says `coreml_multifunction::include_models!();`
//! ([`include_models!`]) to bring in a module `combined` with a struct per
//! function: `combined::Adapter1::load()?.predict(&input)?`.
//!
//! # Features
//!
//! None is on by default: on Apple targets the crate runs Core ML
//! (objc2-core-ml), elsewhere the reference CPU backend.
//!
//! - `reference-backend`: the reference CPU backend on Apple targets too,
//!   for tests that run both. Other targets always have it.
//! - `ndarray`: [`runtime::Tensor`] conversions to and from `ndarray`
//!   arrays.

#![warn(missing_docs)]

pub mod runtime;

pub use coreml_multifunction_format::{package, proto, Error, Problem};
/// The `f16` type of tensors, re-exported for generated code and users.
pub use half;

/// Brings in the typed API generated for every model of
/// `[package.metadata.multifunction]`: one module per model.
///
/// Put it at the root of the crate whose `build.rs` calls
/// `coreml_multifunction_build::build()`.
#[macro_export]
macro_rules! include_models {
    () => {
        include!(env!("COREML_MULTIFUNCTION_GENERATED"));
    };
}
