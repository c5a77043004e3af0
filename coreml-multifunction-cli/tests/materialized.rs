//! Fixed-shape functions run on the reference backend: each computes what
//! torch computes at its shape, and what its flexible source computes
//! there, for every scenario of `tests/fixtures/materializations.json`
//! (stateful ones across steps sharing one state).

#[path = "../../tests/common/mod.rs"]
mod common;

#[path = "../../tests/common/fixture_io.rs"]
mod fixture_io;
#[path = "../../tests/common/materialization.rs"]
mod materialization;

use std::path::{Path, PathBuf};

use coreml_multifunction::runtime::{Backend, Configuration, Features, Function};
use coreml_multifunction_build::merge::MultiFunctionDescriptor;

use common::{materializations, Materialization};
use fixture_io::{assert_close, inputs, steps, tolerance, values};

fn load(package: &Path, function: &str) -> Function {
    Function::load(
        package,
        function,
        &Configuration::with_backend(Backend::Reference),
    )
    .unwrap_or_else(|e| panic!("{} {function}: {e}", package.display()))
}

/// Our merge of a scenario.
fn merged(scenario: &Materialization, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{}.mlpackage", scenario.name));
    materialization::descriptor(scenario).merge(&out).unwrap();
    out
}

/// Runs `function` over the steps of `io`, one state across them when it
/// has states.
fn run(function: &Function, io: &str) -> Vec<Features> {
    let mut state =
        (!function.description().state.is_empty()).then(|| function.new_state().unwrap());
    steps(io)
        .iter()
        .map(|step| {
            let features = inputs(function.description(), step);
            match &mut state {
                Some(state) => function.predict_with_state(&features, state).unwrap(),
                None => function.predict(&features).unwrap(),
            }
        })
        .collect()
}

#[test]
fn fixed_shape_functions_reproduce_torch_and_their_flexible_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for scenario in materializations() {
        let package = merged(&scenario, dir.path());
        let flexible = load(&package, "main");
        for target in &scenario.targets {
            let fixed = load(&package, &target.name);
            let tolerance = tolerance(&scenario.name);
            let ours = run(&fixed, &target.io);
            let source = run(&flexible, &target.io);
            for ((step, got), from_source) in steps(&target.io).iter().zip(&ours).zip(&source) {
                for (name, want) in &step.outputs {
                    let what = format!("{} {} {name}", scenario.name, target.name);
                    let (shape, values_got) = values(&got[name]);
                    // The declared shape is what comes out.
                    let declared = fixture_io::declared_shape(fixed.description(), name);
                    assert_eq!(Some(shape.clone()), declared, "{what}: shape");
                    let worst = assert_close(&what, (&shape, &values_got), want, tolerance);
                    eprintln!("{what}: max error against torch {worst:.2e}");
                    // Folding shape arithmetic changes no number: the fixed
                    // function computes what the flexible one does.
                    let (source_shape, source_values) = values(&from_source[name]);
                    assert_eq!(source_shape, shape, "{what}: the flexible source's shape");
                    assert_eq!(
                        source_values, values_got,
                        "{what}: differs from the flexible source"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 12, "only {checked} outputs checked");
}

/// A scratch copy of the flexible encoder with `edit` applied to its
/// program's ops.
fn edited_encoder(
    edit: impl FnOnce(&mut Vec<coreml_multifunction::proto::mil_spec::Operation>),
) -> common::Scratch {
    use coreml_multifunction::proto::{model, Model};
    use prost::Message;
    let scratch = common::Scratch::of(&common::source_package("materialize_encoder"));
    let mut spec = Model::decode(&*std::fs::read(scratch.spec()).unwrap()).unwrap();
    let Some(model::Type::MlProgram(program)) = &mut spec.r#type else {
        unreachable!("an ML Program")
    };
    let function = program.functions.get_mut("main").unwrap();
    let opset = function.opset.clone();
    edit(
        &mut function
            .block_specializations
            .get_mut(&opset)
            .unwrap()
            .operations,
    );
    std::fs::write(scratch.spec(), spec.encode_to_vec()).unwrap();
    scratch
}

/// Merges `source` with `seq_8` fixed, expecting the merge to fail.
fn fix_at_8(source: &Path) -> (String, coreml_multifunction_build::Error) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.mlpackage");
    let mut descriptor = MultiFunctionDescriptor::new();
    descriptor
        .add_function(source, "seq_8")
        .fixed_shape("seq_8", "input_ids", [1, 8])
        .default_function("seq_8");
    // A check finds it too, writing nothing.
    let checked = descriptor.check().unwrap_err();
    let error = descriptor.merge(&out).unwrap_err();
    assert_eq!(checked.to_string(), error.to_string());
    assert!(
        !out.exists(),
        "a failed materialization wrote {}",
        out.display()
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "staging left behind"
    );
    (error.to_string(), error)
}

#[test]
fn an_op_inference_does_not_know_is_named() {
    let mut renamed = String::new();
    let scratch = edited_encoder(|ops| {
        let op = ops.iter_mut().find(|op| op.r#type == "layer_norm").unwrap();
        op.r#type = "vendor_norm".to_string();
        renamed = op.outputs[0].name.clone();
    });
    let (message, error) = fix_at_8(&scratch.package);
    assert!(
        matches!(
            error.merge_problem(),
            Some(coreml_multifunction_build::MergeProblem::CannotMaterialize { .. })
        ),
        "{message}"
    );
    assert!(
        message.contains(&format!("op {renamed:?} (vendor_norm)")),
        "{message}"
    );
    assert!(
        message.contains("seq_8") && message.contains("input_ids = [1, 8]"),
        "{message}"
    );
}

#[test]
fn a_shape_the_program_cannot_take_is_named_at_its_op() {
    // The first reshape's target shape, computed from the input's length
    // in the source, replaced by a constant that only fits 32 tokens: at 8
    // the element count is wrong, an error at that op rather than a
    // silently wrong type.
    use coreml_multifunction::proto::mil_spec::{
        self, argument::binding::Binding, dimension, tensor_value, value, value_type, Dimension,
        TensorType, ValueType,
    };
    let mut reshape = String::new();
    let scratch = edited_encoder(|ops| {
        let index = ops.iter().position(|op| op.r#type == "reshape").unwrap();
        reshape = ops[index].outputs[0].name.clone();
        let ty = ValueType {
            r#type: Some(value_type::Type::TensorType(TensorType {
                data_type: mil_spec::DataType::Int32 as i32,
                rank: 1,
                dimensions: vec![Dimension {
                    dimension: Some(dimension::Dimension::Constant(
                        dimension::ConstantDimension { size: 4 },
                    )),
                }],
                attributes: Default::default(),
            })),
        };
        let mut constant = ops.iter().find(|op| op.r#type == "const").unwrap().clone();
        constant.outputs[0].name = "shape_for_32_tokens".to_string();
        constant.outputs[0].r#type = Some(ty.clone());
        constant.attributes.insert(
            "val".to_string(),
            mil_spec::Value {
                doc_string: String::new(),
                r#type: Some(ty),
                value: Some(value::Value::ImmediateValue(value::ImmediateValue {
                    value: Some(value::immediate_value::Value::Tensor(
                        mil_spec::TensorValue {
                            value: Some(tensor_value::Value::Ints(tensor_value::RepeatedInts {
                                values: vec![1, 32, 2, 16],
                            })),
                        },
                    )),
                })),
            },
        );
        ops.insert(index, constant);
        ops[index + 1].inputs.get_mut("shape").unwrap().arguments[0].binding =
            Some(Binding::Name("shape_for_32_tokens".to_string()));
    });
    let (message, _) = fix_at_8(&scratch.package);
    assert!(
        message.contains(&format!("op {reshape:?} (reshape)")),
        "{message}"
    );
    assert!(message.contains("cannot reshape"), "{message}");
}
