//! The build-script side of coreml-multifunction: merge Core ML models that
//! share weights into one multifunction `.mlpackage`, and generate a typed
//! Rust API for every function.
//!
//! Apps link [`coreml-multifunction`](https://docs.rs/coreml-multifunction),
//! which runs the functions; this crate goes in `[build-dependencies]` and
//! compiles no runtime (no objc2 crate, no ndarray).
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
//! `build.rs` is `fn main() { coreml_multifunction_build::build().unwrap(); }`
//! ([`build`]; [`Builder`] configures the same from code), and the crate root
//! says `coreml_multifunction::include_models!();` to bring in a module
//! `combined` with a struct per function.
//!
//! # Without cargo
//!
//! ```no_run
//! use coreml_multifunction_build::package::Package;
//! use coreml_multifunction_build::merge::MultiFunctionDescriptor;
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
//! # Ok::<(), coreml_multifunction_build::Error>(())
//! ```

#![warn(missing_docs)]

// The README's Rust snippets that need no build script compile as doctests
// here, where both crates are at hand; the others are checked against the
// example app by the CLI's README test.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
#[allow(clippy::needless_doctest_main)]
pub struct ReadmeDoctests;

mod cargo;
mod codegen;
pub mod compare;
pub mod config;
mod error;
pub mod inspect;
pub mod merge;
pub mod pipeline;
mod xcrun;

pub use cargo::{build, Builder, Built, Model};
pub use config::ConfigError;
/// The package format (`coreml-multifunction-format`), re-exported: what
/// merges read and write.
#[doc(no_inline)]
pub use coreml_multifunction_format::{package, proto};
pub use error::{Bytes, CodegenError, Error, MergeProblem, Problem, Result};
pub use xcrun::compile_with_xcrun;

/// Code generation and materialization, for the fuzz targets and the
/// snapshot tests: not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::codegen::{
        generate, rust_literal, FixedShapeOrigin, ModelInterface, SplitOrigin,
    };
    pub use coreml_multifunction_format::mil::materialize::{declared_dims, materialize};
}
