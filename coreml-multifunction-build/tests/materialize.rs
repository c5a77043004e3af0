//! Fixed-shape functions against coremltools' own
//! `materialize_dynamic_shape_mlmodel` output, on every scenario of
//! `tests/fixtures/materializations.json`: the same interface, every type
//! known, no `shape` op left, no more blobs, and the flexible source left
//! as it was. (That they compute what torch computes is
//! `coreml-multifunction-cli/tests/materialized.rs`.)

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/materialization.rs"]
mod materialization;

use std::collections::BTreeSet;

use coreml_multifunction_build::merge::MultiFunctionDescriptor;
use coreml_multifunction_build::package::Package;
use coreml_multifunction_build::proto::mil_spec::{self, dimension, value_type};
use coreml_multifunction_build::MergeProblem;

use common::materializations;
use materialization::descriptor;

fn visit(block: &mil_spec::Block, f: &mut dyn FnMut(&mil_spec::Operation)) {
    for op in &block.operations {
        f(op);
        for nested in &op.blocks {
            visit(nested, f);
        }
    }
}

fn body(function: &mil_spec::Function) -> &mil_spec::Block {
    &function.block_specializations[&function.opset]
}

#[test]
fn fixed_functions_have_coremltools_interfaces_and_known_types() {
    let scenarios = materializations();
    assert_eq!(scenarios.len(), 3, "the three flexible fixtures");
    for scenario in &scenarios {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(format!("{}.mlpackage", scenario.name));
        let report = descriptor(scenario).merge(&out).unwrap_or_else(|e| {
            panic!("{}: {e}", scenario.name);
        });
        let ours = Package::open(&out).unwrap();
        let oracle = Package::open(&scenario.oracle).unwrap();
        let source = Package::open(&scenario.source).unwrap();
        for target in &scenario.targets {
            let what = format!("{} {}", scenario.name, target.name);
            let mine = ours.function(&target.name).unwrap();
            let theirs = oracle
                .function(&target.name)
                .unwrap_or_else(|| panic!("{what}: not in coremltools' output"));
            // The interface: names, types and shapes of inputs, outputs and
            // states, as coremltools' materialization declares them.
            assert_eq!(
                mine.description.input, theirs.description.input,
                "{what}: inputs"
            );
            assert_eq!(
                mine.description.output, theirs.description.output,
                "{what}: outputs"
            );
            assert_eq!(
                mine.description.state, theirs.description.state,
                "{what}: states"
            );
            assert_eq!(
                mine.function.inputs, theirs.function.inputs,
                "{what}: program inputs"
            );
            // Every op result known; no shape op left.
            let mut ops = BTreeSet::new();
            visit(body(mine.function), &mut |op| {
                ops.insert(op.r#type.clone());
                for output in &op.outputs {
                    let Some(value_type::Type::TensorType(t)) =
                        output.r#type.as_ref().and_then(|t| t.r#type.as_ref())
                    else {
                        continue;
                    };
                    assert!(
                        t.dimensions.iter().all(|d| matches!(
                            d.dimension,
                            Some(dimension::Dimension::Constant(_))
                        )),
                        "{what}: {} ({}) is not fully known: {t:?}",
                        output.name,
                        op.r#type
                    );
                }
            });
            assert!(
                !ops.contains("shape"),
                "{what}: a shape op is left: {ops:?}"
            );
        }
        // The flexible source, merged beside its materializations, keeps
        // its declared range (coremltools 9.0 narrows it).
        let main = ours.function("main").unwrap();
        let flexible = source.function(&scenario.function).unwrap();
        assert_eq!(
            main.description.input, flexible.description.input,
            "{}: main's inputs",
            scenario.name
        );
        assert_eq!(main.function.inputs, flexible.function.inputs);
        // No more distinct blobs than coremltools stores.
        let theirs_blobs = oracle_blob_count(&oracle);
        assert!(
            report.unique_blobs <= theirs_blobs,
            "{}: {} distinct blobs, coremltools stores {theirs_blobs}",
            scenario.name,
            report.unique_blobs
        );
    }
}

/// The distinct blob offsets coremltools' output references.
fn oracle_blob_count(package: &Package) -> usize {
    let mut offsets = BTreeSet::new();
    for function in package.functions() {
        visit(body(function.function), &mut |op| {
            let values = op
                .attributes
                .values()
                .chain(op.inputs.values().flat_map(|a| {
                    a.arguments.iter().filter_map(|b| match &b.binding {
                        Some(mil_spec::argument::binding::Binding::Value(v)) => Some(v),
                        _ => None,
                    })
                }));
            for value in values {
                if let Some(mil_spec::value::Value::BlobFileValue(blob)) = &value.value {
                    offsets.insert((blob.file_name.clone(), blob.offset));
                }
            }
        });
    }
    offsets.len()
}

#[test]
fn a_shape_outside_the_declared_shapes_names_them_and_writes_nothing() {
    for scenario in materializations() {
        let target = &scenario.targets[0];
        let (input, shape) = target.shapes.iter().next().unwrap();
        // One past the largest allowed size of the last dimension.
        let mut wrong = shape.clone();
        *wrong.last_mut().unwrap() += 1000;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("never.mlpackage");
        let error = MultiFunctionDescriptor::new()
            .add_function_from(&scenario.source, &scenario.function, "fixed")
            .fixed_shape("fixed", input, wrong.clone())
            .default_function("fixed")
            .merge(&out)
            .unwrap_err();
        let message = error.to_string();
        match error.merge_problem() {
            Some(MergeProblem::ShapeNotAllowed {
                input: named,
                allowed,
                ..
            }) => {
                assert_eq!(named, input);
                assert!(message.contains(allowed.as_str()), "{message}");
            }
            other => panic!("{}: {other:?}", scenario.name),
        }
        assert!(message.contains(input.as_str()), "{message}");
        assert!(!out.exists(), "{}: something was written", scenario.name);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no staging left"
        );
    }
}

#[test]
fn fixed_shape_merges_are_byte_reproducible() {
    for scenario in materializations() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (pa, pb) = (a.path().join("x.mlpackage"), b.path().join("x.mlpackage"));
        descriptor(&scenario).merge(&pa).unwrap();
        descriptor(&scenario).merge(&pb).unwrap();
        assert!(
            common::tree_bytes(&pa) == common::tree_bytes(&pb),
            "{}: two merges differ",
            scenario.name
        );
    }
}
