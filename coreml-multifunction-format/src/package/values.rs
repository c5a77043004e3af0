//! Finding every value of an ML Program, with where it sits.
//!
//! Weights are `Value`s whose payload is a `BlobFileValue`. They sit in op
//! attributes (a `const` op's `val`), in op input bindings (iOS 18 folds
//! constants into `constexpr_*` inputs), in block, function and program
//! attributes, and inside tuple, list and dictionary immediates. The
//! visitors here reach all of them, so no reference is missed when blobs are
//! validated or renumbered.

use std::fmt;

use crate::proto::mil_spec::{
    argument::binding, tensor_value, value, value::immediate_value, Block, Function, Operation,
    Program, Value,
};

/// Where a value sits in a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSite {
    /// The function holding the value; empty for program attributes.
    pub function: String,
    /// The `name` attribute of the op holding it, if in an op.
    pub op: Option<String>,
    /// The slot: "attribute val", "input weight", ...
    pub slot: String,
}

impl fmt::Display for ValueSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Some(op) => write!(f, "op {op:?} {}", self.slot),
            None => f.write_str(&self.slot),
        }
    }
}

/// The string held by an op's `name` attribute, if it has one.
pub fn op_name(op: &Operation) -> Option<&str> {
    let value = op.attributes.get("name")?;
    match value.value.as_ref()? {
        value::Value::ImmediateValue(immediate) => match immediate.value.as_ref()? {
            immediate_value::Value::Tensor(tensor) => match tensor.value.as_ref()? {
                tensor_value::Value::Strings(strings) => strings.values.first().map(String::as_str),
                _ => None,
            },
            _ => None,
        },
        value::Value::BlobFileValue(_) => None,
    }
}

// One body, two visitors: the shared and the mutable walk differ only in
// `&` versus `&mut`, so a macro writes both.
macro_rules! visitors {
    ($visit:ident, $visit_function:ident, $visit_block:ident, $visit_value:ident, $values:ident, $($mutability:tt)?) => {
        /// Calls `f` with every value of `program` and where it sits,
        /// nested immediates included.
        pub fn $visit(
            program: & $($mutability)? Program,
            f: &mut dyn FnMut(&ValueSite, & $($mutability)? Value),
        ) {
            for (key, value) in & $($mutability)? program.attributes {
                let site = ValueSite {
                    function: String::new(),
                    op: None,
                    slot: format!("program attribute {key}"),
                };
                $visit_value(&site, value, f);
            }
            for (name, function) in & $($mutability)? program.functions {
                $visit_function(name, function, f);
            }
        }

        /// Calls `f` with every value of one function (its attributes and
        /// every block specialization), reported as belonging to `name`.
        pub fn $visit_function(
            name: &str,
            function: & $($mutability)? Function,
            f: &mut dyn FnMut(&ValueSite, & $($mutability)? Value),
        ) {
            for (key, value) in & $($mutability)? function.attributes {
                let site = ValueSite {
                    function: name.to_string(),
                    op: None,
                    slot: format!("function attribute {key}"),
                };
                $visit_value(&site, value, f);
            }
            for block in function.block_specializations.$values() {
                $visit_block(name, block, f);
            }
        }

        fn $visit_block(
            function: &str,
            block: & $($mutability)? Block,
            f: &mut dyn FnMut(&ValueSite, & $($mutability)? Value),
        ) {
            for (key, value) in & $($mutability)? block.attributes {
                let site = ValueSite {
                    function: function.to_string(),
                    op: None,
                    slot: format!("block attribute {key}"),
                };
                $visit_value(&site, value, f);
            }
            for op in & $($mutability)? block.operations {
                let name = op_name(op).map(str::to_string);
                for (key, value) in & $($mutability)? op.attributes {
                    let site = ValueSite {
                        function: function.to_string(),
                        op: name.clone(),
                        slot: format!("attribute {key}"),
                    };
                    $visit_value(&site, value, f);
                }
                for (key, argument) in & $($mutability)? op.inputs {
                    for binding in & $($mutability)? argument.arguments {
                        if let Some(binding::Binding::Value(value)) = & $($mutability)? binding.binding {
                            let site = ValueSite {
                                function: function.to_string(),
                                op: name.clone(),
                                slot: format!("input {key}"),
                            };
                            $visit_value(&site, value, f);
                        }
                    }
                }
                for nested in & $($mutability)? op.blocks {
                    $visit_block(function, nested, f);
                }
            }
        }

        fn $visit_value(
            site: &ValueSite,
            value: & $($mutability)? Value,
            f: &mut dyn FnMut(&ValueSite, & $($mutability)? Value),
        ) {
            if let Some(value::Value::ImmediateValue(immediate)) = & $($mutability)? value.value {
                match & $($mutability)? immediate.value {
                    Some(immediate_value::Value::Tuple(tuple)) => {
                        for inner in & $($mutability)? tuple.values {
                            $visit_value(site, inner, f);
                        }
                    }
                    Some(immediate_value::Value::List(list)) => {
                        for inner in & $($mutability)? list.values {
                            $visit_value(site, inner, f);
                        }
                    }
                    Some(immediate_value::Value::Dictionary(dictionary)) => {
                        for pair in & $($mutability)? dictionary.values {
                            if let Some(key) = & $($mutability)? pair.key {
                                $visit_value(site, key, f);
                            }
                            if let Some(inner) = & $($mutability)? pair.value {
                                $visit_value(site, inner, f);
                            }
                        }
                    }
                    _ => {}
                }
            }
            f(site, value);
        }
    };
}

visitors!(
    for_each_value,
    for_each_function_value,
    visit_block,
    visit_value,
    values,
);
visitors!(
    for_each_value_mut,
    for_each_function_value_mut,
    visit_block_mut,
    visit_value_mut,
    values_mut,
    mut
);
