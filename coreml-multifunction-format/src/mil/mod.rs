//! MIL programs as programs: the op table, and the shape rules of every op.
//!
//! Shared by the runtime crate (whose reference interpreter runs the ops
//! of [`ops`]) and the build crate (whose merge builds fixed-shape
//! functions with [`materialize`]). Pure: nothing here reads files.

pub mod infer;
pub mod materialize;
pub mod op_rules;
pub mod ops;
pub mod shapes;
