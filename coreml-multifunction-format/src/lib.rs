//! The Core ML package format, as coreml-multifunction reads and writes it.
//!
//! This crate is the one home of what both sides of coreml-multifunction
//! share: the runtime crate (`coreml-multifunction`, what apps link) and the
//! build crate (`coreml-multifunction-build`, what build scripts use). It
//! knows nothing of running models or of cargo, and pulls in no runtime
//! dependency. Apps reach it through `coreml_multifunction::package` and
//! `coreml_multifunction::proto`.
//!
//! [`package::Package::open`] checks everything it reads: the manifest,
//! that every path stays inside the package, that the model is an ML
//! Program carrying no field this crate would drop, and every weight
//! reference against the blob file's records.

#![warn(missing_docs)]

#[doc(hidden)]
pub mod compiled;
mod data_type;
mod error;
#[doc(hidden)]
pub mod mil;
#[doc(hidden)]
pub mod naming;
pub mod package;
pub mod proto;

pub use data_type::DataType;
pub use error::{Error, Problem, Result};
