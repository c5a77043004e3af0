//! Semantic comparison of two packages: the same functions, interfaces,
//! operations and weights by value, whatever the bytes on disk.
//!
//! Two packages can be equal in this sense while their files differ: blob
//! offsets, the order of map entries in the encoded spec and manifest
//! identifiers are all representation. That is what the merge tests need to
//! hold our output against coremltools' own.
//!
//! So are `const` ops nothing reads, which compute nothing: they are left
//! out. coremltools' merge, which re-emits every program, writes two such
//! constants (fp32 zeros) before each `cond` and `while_loop`.

use std::collections::{BTreeMap, HashSet};

use crate::error::{Error, Result};
use coreml_multifunction_format::package::blob::{self, BlobFile, BlobRecord, CompareBuffers};
use coreml_multifunction_format::package::{FunctionView, Package, WeightStats};
use coreml_multifunction_format::proto::mil_spec::{
    argument, value, Block, NamedValueType, Operation, Value,
};

/// What to compare besides functions, interfaces, operations and weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareOptions {
    /// Compare model metadata (coremltools' merge drops it; ours keeps it).
    pub metadata: bool,
    /// Compare program attributes such as `buildInfo` (likewise).
    pub program_attributes: bool,
    /// Compare the specification version.
    pub specification_version: bool,
    /// Compare the `name` attributes of ops. coremltools renames some ops
    /// when it re-emits a program (it splits `coreml_update_state` into
    /// `read_state`/`write_state` with counter-based names), though names do
    /// not change what a program computes.
    pub op_names: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            metadata: true,
            program_attributes: true,
            specification_version: true,
            op_names: true,
        }
    }
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Every difference found, as a sentence naming where it is.
    pub differences: Vec<String>,
    /// Blob storage of the left package.
    pub left_weights: WeightStats,
    /// Blob storage of the right package.
    pub right_weights: WeightStats,
}

impl Comparison {
    /// Whether the packages are semantically equal.
    pub fn is_equal(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Compares `left` with `right`.
pub fn compare(left: &Package, right: &Package, options: CompareOptions) -> Result<Comparison> {
    let mut comparer = Comparer {
        left,
        right,
        options,
        differences: Vec::new(),
        buffers: CompareBuffers::default(),
        read: Default::default(),
    };
    comparer.packages()?;
    Ok(Comparison {
        differences: comparer.differences,
        left_weights: left.weight_stats()?,
        right_weights: right.weight_stats()?,
    })
}

struct Comparer<'a> {
    left: &'a Package,
    right: &'a Package,
    options: CompareOptions,
    differences: Vec<String>,
    buffers: CompareBuffers,
    /// The names each side's function being compared reads.
    read: (HashSet<String>, HashSet<String>),
}

impl Comparer<'_> {
    fn differ(&mut self, message: String) {
        self.differences.push(message);
    }

    fn packages(&mut self) -> Result<()> {
        let (left, right, options) = (self.left, self.right, self.options);
        if options.specification_version
            && left.model().specification_version != right.model().specification_version
        {
            self.differ(format!(
                "specification version {} differs from {}",
                left.model().specification_version,
                right.model().specification_version
            ));
        }
        if left.default_function() != right.default_function() {
            self.differ(format!(
                "default function {:?} differs from {:?}",
                left.default_function(),
                right.default_function()
            ));
        }
        let left_functions = left.functions();
        let right_functions = right.functions();
        let names = |functions: &[FunctionView<'_>]| -> Vec<String> {
            functions.iter().map(|f| f.name.to_string()).collect()
        };
        if names(&left_functions) != names(&right_functions) {
            self.differ(format!(
                "functions {:?} differ from {:?}",
                names(&left_functions),
                names(&right_functions)
            ));
        }
        for left_function in &left_functions {
            if let Some(right_function) = right_functions
                .iter()
                .find(|f| f.name == left_function.name)
            {
                self.function(left_function, right_function)?;
            }
        }
        if options.metadata && left.description().metadata != right.description().metadata {
            self.differ("the model metadata differs".to_string());
        }
        if options.program_attributes {
            let (a, b) = (&left.program().attributes, &right.program().attributes);
            self.value_maps("program attribute", a, b)?;
        }
        Ok(())
    }

    fn function(&mut self, left: &FunctionView<'_>, right: &FunctionView<'_>) -> Result<()> {
        let name = left.name;
        if left.description.as_ref() != right.description.as_ref() {
            self.differ(format!(
                "function {name:?}: the interface (inputs, outputs, states) differs"
            ));
        }
        if left.opset() != right.opset() {
            self.differ(format!(
                "function {name:?}: opset {} differs from {}",
                left.opset(),
                right.opset()
            ));
        }
        if sorted(&left.function.inputs) != sorted(&right.function.inputs) {
            self.differ(format!("function {name:?}: the MIL function inputs differ"));
        }
        let context = format!("function {name:?}");
        self.value_maps(
            &format!("{context}: attribute"),
            &left.function.attributes,
            &right.function.attributes,
        )?;
        self.read = (HashSet::new(), HashSet::new());
        names_read(left.block(), &mut self.read.0);
        names_read(right.block(), &mut self.read.1);
        self.block(&context, left.block(), right.block())
    }

    fn block(&mut self, context: &str, left: &Block, right: &Block) -> Result<()> {
        if sorted(&left.inputs) != sorted(&right.inputs) {
            self.differ(format!("{context}: block inputs differ"));
        }
        if left.outputs != right.outputs {
            self.differ(format!(
                "{context}: block outputs {:?} differ from {:?}",
                left.outputs, right.outputs
            ));
        }
        self.value_maps(
            &format!("{context}: block attribute"),
            &left.attributes,
            &right.attributes,
        )?;
        let left_ops = live(&left.operations, &self.read.0);
        let right_ops = live(&right.operations, &self.read.1);
        if left_ops.len() != right_ops.len() {
            self.differ(format!(
                "{context}: {} operations differ from {}",
                left_ops.len(),
                right_ops.len()
            ));
        }
        for (index, (a, b)) in left_ops.into_iter().zip(right_ops).enumerate() {
            self.operation(&format!("{context}: op {index}"), a, b)?;
        }
        Ok(())
    }

    fn operation(&mut self, context: &str, left: &Operation, right: &Operation) -> Result<()> {
        if left.r#type != right.r#type {
            self.differ(format!(
                "{context}: type {:?} differs from {:?}",
                left.r#type, right.r#type
            ));
            return Ok(());
        }
        let context = format!("{context} ({})", left.r#type);
        if left.outputs != right.outputs {
            self.differ(format!("{context}: outputs differ"));
        }
        let keys = |op: &Operation| op.inputs.keys().cloned().collect::<Vec<_>>();
        if keys(left) != keys(right) {
            self.differ(format!(
                "{context}: inputs {:?} differ from {:?}",
                keys(left),
                keys(right)
            ));
        }
        for (key, a) in &left.inputs {
            let Some(b) = right.inputs.get(key) else {
                continue;
            };
            if a.arguments.len() != b.arguments.len() {
                self.differ(format!(
                    "{context}: input {key} binds a different number of arguments"
                ));
                continue;
            }
            for (x, y) in a.arguments.iter().zip(&b.arguments) {
                let equal = match (&x.binding, &y.binding) {
                    (
                        Some(argument::binding::Binding::Name(p)),
                        Some(argument::binding::Binding::Name(q)),
                    ) => p == q,
                    (
                        Some(argument::binding::Binding::Value(p)),
                        Some(argument::binding::Binding::Value(q)),
                    ) => self.values_equal(p, q)?,
                    (p, q) => p == q,
                };
                if !equal {
                    self.differ(format!("{context}: input {key} differs"));
                }
            }
        }
        let attributes = |op: &Operation| {
            let mut attributes = op.attributes.clone();
            if !self.options.op_names {
                attributes.remove("name");
            }
            attributes
        };
        let (a, b) = (attributes(left), attributes(right));
        self.value_maps(&format!("{context}: attribute"), &a, &b)?;
        if left.blocks.len() != right.blocks.len() {
            self.differ(format!("{context}: nested block counts differ"));
        }
        for (index, (a, b)) in left.blocks.iter().zip(&right.blocks).enumerate() {
            self.block(&format!("{context}: block {index}"), a, b)?;
        }
        Ok(())
    }

    fn value_maps(
        &mut self,
        context: &str,
        left: &BTreeMap<String, Value>,
        right: &BTreeMap<String, Value>,
    ) -> Result<()> {
        for key in left
            .keys()
            .chain(right.keys().filter(|k| !left.contains_key(*k)))
        {
            match (left.get(key), right.get(key)) {
                (Some(a), Some(b)) => {
                    if !self.values_equal(a, b)? {
                        self.differ(format!("{context} {key} differs"));
                    }
                }
                _ => self.differ(format!("{context} {key} is only on one side")),
            }
        }
        Ok(())
    }

    /// Values are equal when their types and payloads are; blob payloads are
    /// compared by data type and bytes, not by file or offset.
    fn values_equal(&mut self, left: &Value, right: &Value) -> Result<bool> {
        if left.r#type != right.r#type || left.doc_string != right.doc_string {
            return Ok(false);
        }
        match (&left.value, &right.value) {
            (Some(value::Value::BlobFileValue(a)), Some(value::Value::BlobFileValue(b))) => {
                let (file_a, record_a) = resolve(self.left, a)?;
                let (file_b, record_b) = resolve(self.right, b)?;
                if record_a.data_type != record_b.data_type
                    || record_a.padding_bits != record_b.padding_bits
                {
                    return Ok(false);
                }
                blob::same_bytes(file_a, &record_a, file_b, &record_b, &mut self.buffers)
                    .map_err(|e| Error::io(file_a.path(), "compare blob data", e))
            }
            (a, b) => Ok(a == b),
        }
    }
}

fn resolve<'p>(
    package: &'p Package,
    blob: &value::BlobFileValue,
) -> Result<(&'p BlobFile, BlobRecord)> {
    // Package::open validated every reference, so both lookups succeed.
    let file = package
        .blob_file(&blob.file_name)
        .expect("validated on open");
    Ok((file, file.record(blob.offset)?))
}

/// `operations` without the `const` ops whose values nothing reads.
fn live<'a>(operations: &'a [Operation], read: &HashSet<String>) -> Vec<&'a Operation> {
    operations
        .iter()
        .filter(|op| op.r#type != "const" || op.outputs.iter().any(|o| read.contains(&o.name)))
        .collect()
}

/// Adds to `read` every name `block` reads: bound to an op's input or
/// given as a block output, in nested blocks too.
fn names_read(block: &Block, read: &mut HashSet<String>) {
    for op in &block.operations {
        for argument in op.inputs.values() {
            for binding in &argument.arguments {
                if let Some(argument::binding::Binding::Name(name)) = &binding.binding {
                    read.insert(name.clone());
                }
            }
        }
        for nested in &op.blocks {
            names_read(nested, read);
        }
    }
    read.extend(block.outputs.iter().cloned());
}

fn sorted(values: &[NamedValueType]) -> Vec<&NamedValueType> {
    let mut sorted: Vec<&NamedValueType> = values.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    sorted
}
