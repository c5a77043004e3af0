//! Control flow, compiled and run: programs written op by op (as
//! coremltools writes them: loop variables bound to block inputs, values of
//! enclosing blocks read by name, weights stored inside a loop body), put
//! in the shell of a real coremltools package (`precision_fp32`: `x` and
//! `y`, both fp32 `[1, 32]`, and the weights of a 32-wide MLP).

use std::path::{Path, PathBuf};

use coreml_multifunction_format::package::{Package, PackageBuilder};
use coreml_multifunction_format::proto::mil_spec::{
    self, argument::binding::Binding, dimension, tensor_value, value, value_type, DataType,
};
use coreml_multifunction_format::proto::model;

use super::super::program::Step;
use super::super::Function;
use crate::runtime::{Error, FeatureValue, Features, Tensor};

// ------------------------------------------------------------ building MIL

fn tensor(data_type: DataType, dims: &[u64]) -> mil_spec::ValueType {
    mil_spec::ValueType {
        r#type: Some(value_type::Type::TensorType(mil_spec::TensorType {
            data_type: data_type as i32,
            rank: dims.len() as i64,
            dimensions: dims
                .iter()
                .map(|&size| mil_spec::Dimension {
                    dimension: Some(dimension::Dimension::Constant(
                        dimension::ConstantDimension { size },
                    )),
                })
                .collect(),
            attributes: Default::default(),
        })),
    }
}

fn row() -> mil_spec::ValueType {
    tensor(DataType::Float32, &[1, 32])
}

fn int() -> mil_spec::ValueType {
    tensor(DataType::Int32, &[])
}

fn boolean() -> mil_spec::ValueType {
    tensor(DataType::Bool, &[])
}

/// A scalar immediate.
fn scalar(data_type: DataType, value: tensor_value::Value) -> mil_spec::Value {
    immediate(data_type, &[], value)
}

/// An immediate tensor of shape `dims`.
fn immediate(data_type: DataType, dims: &[u64], value: tensor_value::Value) -> mil_spec::Value {
    mil_spec::Value {
        doc_string: String::new(),
        r#type: Some(tensor(data_type, dims)),
        value: Some(value::Value::ImmediateValue(value::ImmediateValue {
            value: Some(value::immediate_value::Value::Tensor(
                mil_spec::TensorValue { value: Some(value) },
            )),
        })),
    }
}

fn f32_value(v: f32) -> mil_spec::Value {
    scalar(
        DataType::Float32,
        tensor_value::Value::Floats(tensor_value::RepeatedFloats { values: vec![v] }),
    )
}

fn i32_value(v: i32) -> mil_spec::Value {
    scalar(
        DataType::Int32,
        tensor_value::Value::Ints(tensor_value::RepeatedInts { values: vec![v] }),
    )
}

fn bool_value(v: bool) -> mil_spec::Value {
    scalar(
        DataType::Bool,
        tensor_value::Value::Bools(tensor_value::RepeatedBools { values: vec![v] }),
    )
}

/// An argument: a name or an immediate.
enum Arg {
    Name(&'static str),
    Value(mil_spec::Value),
}

use Arg::Name;

fn v(value: mil_spec::Value) -> Arg {
    Arg::Value(value)
}

/// An op with one binding per parameter (several for a tuple) and typed
/// outputs.
fn op(
    op_type: &str,
    inputs: Vec<(&str, Vec<Arg>)>,
    outputs: &[(&str, mil_spec::ValueType)],
    blocks: Vec<mil_spec::Block>,
) -> mil_spec::Operation {
    mil_spec::Operation {
        r#type: op_type.to_string(),
        inputs: inputs
            .into_iter()
            .map(|(param, args)| {
                let arguments = args
                    .into_iter()
                    .map(|arg| mil_spec::argument::Binding {
                        binding: Some(match arg {
                            Arg::Name(n) => Binding::Name(n.to_string()),
                            Arg::Value(value) => Binding::Value(value),
                        }),
                    })
                    .collect();
                (param.to_string(), mil_spec::Argument { arguments })
            })
            .collect(),
        outputs: outputs
            .iter()
            .map(|(name, value_type)| mil_spec::NamedValueType {
                name: name.to_string(),
                r#type: Some(value_type.clone()),
            })
            .collect(),
        blocks,
        attributes: Default::default(),
    }
}

/// `op` with plain bindings and no blocks.
fn simple(
    op_type: &str,
    inputs: Vec<(&str, Arg)>,
    output: (&str, mil_spec::ValueType),
) -> mil_spec::Operation {
    op(
        op_type,
        inputs.into_iter().map(|(p, a)| (p, vec![a])).collect(),
        &[output],
        Vec::new(),
    )
}

fn block(
    inputs: &[(&str, mil_spec::ValueType)],
    operations: Vec<mil_spec::Operation>,
    outputs: &[&str],
) -> mil_spec::Block {
    mil_spec::Block {
        inputs: inputs
            .iter()
            .map(|(name, value_type)| mil_spec::NamedValueType {
                name: name.to_string(),
                r#type: Some(value_type.clone()),
            })
            .collect(),
        outputs: outputs.iter().map(|o| o.to_string()).collect(),
        operations,
        attributes: Default::default(),
    }
}

/// A `while_loop` over `loop_vars`, with outputs `outputs`.
fn while_loop(
    loop_vars: Vec<Arg>,
    outputs: &[(&str, mil_spec::ValueType)],
    condition: mil_spec::Block,
    body: mil_spec::Block,
) -> mil_spec::Operation {
    op(
        "while_loop",
        vec![("loop_vars", loop_vars)],
        outputs,
        vec![condition, body],
    )
}

fn cond(
    pred: &'static str,
    outputs: &[(&str, mil_spec::ValueType)],
    then: mil_spec::Block,
    otherwise: mil_spec::Block,
) -> mil_spec::Operation {
    op(
        "cond",
        vec![("pred", vec![Name(pred)])],
        outputs,
        vec![then, otherwise],
    )
}

// ------------------------------------------------------------ packages

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/packages/precision_fp32.mlpackage")
}

/// The fixture's own ops (four weight consts, then linear, relu, linear
/// from `x` to `y`).
fn fixture_ops() -> Vec<mil_spec::Operation> {
    let package = Package::open(fixture()).unwrap();
    let ops = package.function("main").unwrap().block().operations.clone();
    assert_eq!(
        ops.iter().map(|o| o.r#type.as_str()).collect::<Vec<_>>(),
        ["const", "const", "const", "const", "linear", "relu", "linear"]
    );
    ops
}

/// The fixture with its main function's body replaced by `body`, written
/// under `dir`.
fn package_with(dir: &Path, body: mil_spec::Block) -> Package {
    let source = Package::open(fixture()).unwrap();
    let mut model = source.model().clone();
    let Some(model::Type::MlProgram(program)) = &mut model.r#type else {
        unreachable!("the fixture is an ML Program")
    };
    let function = program.functions.get_mut("main").unwrap();
    let opset = function.opset.clone();
    function.block_specializations.insert(opset, body);
    let destination = dir.join("edited.mlpackage");
    let mut builder = PackageBuilder::new(&destination).unwrap();
    builder
        .copy_weights_file(
            "weight.bin",
            &source.weights_dir().unwrap().join("weight.bin"),
        )
        .unwrap();
    builder.finish(&model).unwrap();
    Package::open(destination).unwrap()
}

fn input(x: &[f32]) -> Features {
    Features::from([(
        "x".to_string(),
        Tensor::new([1, 32], x.to_vec()).unwrap().into(),
    )])
}

fn output(features: &Features) -> Vec<f32> {
    match &features["y"] {
        FeatureValue::Tensor(t) => t.to_f32().into_vec(),
        other => panic!("y is {}", other.kind()),
    }
}

/// A deterministic input with both signs.
fn sample(seed: u32) -> Vec<f32> {
    (0..32)
        .map(|k| (((k * 37 + seed * 11) % 29) as f32 - 14.0) / 10.0)
        .collect()
}

// ------------------------------------------------------------ the tests

/// `y` = the fixture's MLP applied three times, by a loop whose body holds
/// the MLP's weight consts.
fn mlp_loop() -> mil_spec::Block {
    let mut body_ops = fixture_ops();
    // The body reads its loop variable, not `x`, and outputs the next one.
    let first = &mut body_ops[4];
    first.inputs.get_mut("x").unwrap().arguments[0].binding = Some(Binding::Name("v".into()));
    body_ops[6].outputs[0].name = "v_next".to_string();
    body_ops.push(simple(
        "add",
        vec![("x", Name("i")), ("y", v(i32_value(1)))],
        ("i_next", int()),
    ));
    block(
        &[],
        vec![while_loop(
            vec![v(i32_value(0)), Name("x")],
            &[("count", int()), ("y", row())],
            block(
                &[("i", int()), ("v", row())],
                vec![simple(
                    "less",
                    vec![("x", Name("i")), ("y", v(i32_value(3)))],
                    ("go", boolean()),
                )],
                &["go"],
            ),
            block(
                &[("i", int()), ("v", row())],
                body_ops,
                &["i_next", "v_next"],
            ),
        )],
        &["y"],
    )
}

#[test]
fn a_loop_runs_its_body_until_the_condition_fails_with_weights_inside() {
    let dir = tempfile::tempdir().unwrap();
    let package = package_with(dir.path(), mlp_loop());
    let looped = Function::load(&package, "main", false).unwrap();
    // The body's weights were decoded at load, into the package's store.
    let weight = looped.weight("linear1_weight").unwrap();
    assert_eq!(weight.shape(), vec![32, 32]);
    let again = Function::load(&package, "main", false).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &weight,
        &again.weight("linear1_weight").unwrap()
    ));

    let mlp = Function::load(&Package::open(fixture()).unwrap(), "main", false).unwrap();
    let x = sample(1);
    let mut want = x.clone();
    for _ in 0..3 {
        want = output(&mlp.predict(&input(&want), None).unwrap());
    }
    let once = output(&mlp.predict(&input(&x), None).unwrap());
    assert_ne!(want, once, "three passes differ from one");
    // Same ops on the same values: bit for bit.
    assert_eq!(output(&looped.predict(&input(&x), None).unwrap()), want);
    // A function runs again from scratch: the loop restarts at zero.
    assert_eq!(output(&looped.predict(&input(&x), None).unwrap()), want);
}

#[test]
fn cond_runs_the_branch_its_predicate_picks() {
    let program = block(
        &[],
        vec![
            simple(
                "reduce_sum",
                vec![("x", Name("x")), ("keep_dims", v(bool_value(false)))],
                ("total", tensor(DataType::Float32, &[])),
            ),
            simple(
                "greater",
                vec![("x", Name("total")), ("y", v(f32_value(0.0)))],
                ("positive", boolean()),
            ),
            cond(
                "positive",
                &[("y", row())],
                block(
                    &[],
                    vec![simple(
                        "mul",
                        vec![("x", Name("x")), ("y", v(f32_value(2.0)))],
                        ("doubled", row()),
                    )],
                    &["doubled"],
                ),
                block(
                    &[],
                    vec![simple(
                        "sub",
                        vec![("x", Name("x")), ("y", v(f32_value(1.0)))],
                        ("lowered", row()),
                    )],
                    &["lowered"],
                ),
            ),
        ],
        &["y"],
    );
    let dir = tempfile::tempdir().unwrap();
    let function = Function::load(&package_with(dir.path(), program), "main", false).unwrap();
    let positive: Vec<f32> = (0..32).map(|k| k as f32 / 8.0).collect();
    let negative: Vec<f32> = positive.iter().map(|p| -p).collect();
    let doubled: Vec<f32> = positive.iter().map(|p| p * 2.0).collect();
    let lowered: Vec<f32> = negative.iter().map(|n| n - 1.0).collect();
    assert_eq!(
        output(&function.predict(&input(&positive), None).unwrap()),
        doubled
    );
    assert_eq!(
        output(&function.predict(&input(&negative), None).unwrap()),
        lowered
    );
}

/// A loop holding a loop and a `cond`, reading values from every level
/// around them (`scale` at the top, `limit` in the outer body):
///
/// ```text
/// scale = x * 0.1
/// for i in 0..3:
///     for j in 0..i + 1: v = v * 0.5 + scale
///     v = v - 1 if sum(v) > 0 else v + 2
/// ```
fn nested() -> mil_spec::Block {
    let inner = while_loop(
        vec![v(i32_value(0)), Name("ov")],
        &[("j_end", int()), ("w_end", row())],
        block(
            &[("ij", int()), ("iw", row())],
            vec![simple(
                "less",
                vec![("x", Name("ij")), ("y", Name("limit"))],
                ("inner_go", boolean()),
            )],
            &["inner_go"],
        ),
        block(
            &[("ij", int()), ("iw", row())],
            vec![
                simple(
                    "mul",
                    vec![("x", Name("iw")), ("y", v(f32_value(0.5)))],
                    ("half", row()),
                ),
                simple(
                    "add",
                    vec![("x", Name("half")), ("y", Name("scale"))],
                    ("w_next", row()),
                ),
                simple(
                    "add",
                    vec![("x", Name("ij")), ("y", v(i32_value(1)))],
                    ("j_next", int()),
                ),
            ],
            &["j_next", "w_next"],
        ),
    );
    let adjust = cond(
        "positive",
        &[("adjusted", row())],
        block(
            &[],
            vec![simple(
                "sub",
                vec![("x", Name("w_end")), ("y", v(f32_value(1.0)))],
                ("minus", row()),
            )],
            &["minus"],
        ),
        block(
            &[],
            vec![simple(
                "add",
                vec![("x", Name("w_end")), ("y", v(f32_value(2.0)))],
                ("plus", row()),
            )],
            &["plus"],
        ),
    );
    let outer_body = block(
        &[("oi", int()), ("ov", row())],
        vec![
            simple(
                "add",
                vec![("x", Name("oi")), ("y", v(i32_value(1)))],
                ("limit", int()),
            ),
            inner,
            simple(
                "reduce_sum",
                vec![("x", Name("w_end")), ("keep_dims", v(bool_value(false)))],
                ("total", tensor(DataType::Float32, &[])),
            ),
            simple(
                "greater",
                vec![("x", Name("total")), ("y", v(f32_value(0.0)))],
                ("positive", boolean()),
            ),
            adjust,
        ],
        &["limit", "adjusted"],
    );
    block(
        &[],
        vec![
            simple(
                "mul",
                vec![("x", Name("x")), ("y", v(f32_value(0.1)))],
                ("scale", row()),
            ),
            while_loop(
                vec![v(i32_value(0)), Name("x")],
                &[("i_end", int()), ("y", row())],
                block(
                    &[("oi", int()), ("ov", row())],
                    vec![simple(
                        "less",
                        vec![("x", Name("oi")), ("y", v(i32_value(3)))],
                        ("outer_go", boolean()),
                    )],
                    &["outer_go"],
                ),
                outer_body,
            ),
        ],
        &["y"],
    )
}

/// The program of [`nested`] in plain Rust: its result and how often each
/// branch ran.
fn nested_by_hand(x: &[f32]) -> (Vec<f32>, [usize; 2]) {
    let scale: Vec<f32> = x.iter().map(|x| x * 0.1).collect();
    let mut v = x.to_vec();
    let mut branches = [0; 2];
    for i in 0..3 {
        for _ in 0..i + 1 {
            v = v.iter().zip(&scale).map(|(v, s)| v * 0.5 + s).collect();
        }
        if v.iter().sum::<f32>() > 0.0 {
            v.iter_mut().for_each(|v| *v -= 1.0);
            branches[0] += 1;
        } else {
            v.iter_mut().for_each(|v| *v += 2.0);
            branches[1] += 1;
        }
    }
    (v, branches)
}

#[test]
fn nested_loops_and_conds_read_the_values_around_them() {
    let dir = tempfile::tempdir().unwrap();
    let function = Function::load(&package_with(dir.path(), nested()), "main", false).unwrap();
    let mut taken = [0; 2];
    for seed in 0..4 {
        let x = sample(seed);
        let (want, branches) = nested_by_hand(&x);
        taken[0] += branches[0];
        taken[1] += branches[1];
        let got = output(&function.predict(&input(&x), None).unwrap());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "seed {seed}: {g} vs {w}");
        }
    }
    assert!(taken[0] > 0 && taken[1] > 0, "both branches ran: {taken:?}");
}

/// The top-level step computing `name`, and its index.
fn step_named<'a>(steps: &'a [Step], name: &str) -> (usize, &'a Step) {
    steps
        .iter()
        .enumerate()
        .find(|(_, s)| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}"))
}

/// Every step of `steps` and of the blocks nested in them.
fn all_steps(steps: &[Step]) -> Vec<&Step> {
    let mut all = Vec::new();
    for step in steps {
        all.push(step);
        for block in &step.blocks {
            all.extend(all_steps(&block.steps));
        }
    }
    all
}

#[test]
fn loops_keep_what_they_read_again_and_release_what_they_define() {
    let dir = tempfile::tempdir().unwrap();
    let function = Function::load(&package_with(dir.path(), nested()), "main", false).unwrap();
    let steps = &function.program.steps;
    let (_, scale_step) = step_named(steps, "scale");
    let scale = scale_step.outputs[0].0;
    let (while_index, outer) = step_named(steps, "i_end");
    // `scale` is read in the inner body, on every iteration: only the
    // top-level loop, once it is done, releases it.
    assert!(outer.release.contains(&scale), "{:?}", outer.release);
    let nested: Vec<&Step> = outer
        .blocks
        .iter()
        .flat_map(|b| all_steps(&b.steps))
        .collect();
    assert!(nested.iter().all(|s| !s.release.contains(&scale)));
    // `limit`, defined in the outer body and read by the inner condition
    // on every inner iteration, is also the outer body's next counter: an
    // output of the body, never released inside it.
    let body = &outer.blocks[1];
    let (_, limit_step) = step_named(&body.steps, "limit");
    let limit = limit_step.outputs[0].0;
    assert!(body.steps.iter().all(|s| !s.release.contains(&limit)));
    // `half`, defined and read in the inner body, goes after its reader.
    let (inner_index, inner) = step_named(&body.steps, "j_end");
    assert!(inner_index > 0);
    let inner_body = &inner.blocks[1];
    let (_, half_step) = step_named(&inner_body.steps, "half");
    let half = half_step.outputs[0].0;
    let (_, reader) = step_named(&inner_body.steps, "w_next");
    assert!(reader.release.contains(&half), "{:?}", reader.release);
    // Constants (the immediates bound in the bodies) are never released
    // inside a loop.
    let constants: Vec<usize> = function.program.constants.iter().map(|(s, _)| *s).collect();
    assert!(nested
        .iter()
        .all(|s| s.release.iter().all(|r| !constants.contains(r))));
    // The loop's own outputs are released by no step before it.
    assert!(steps[..while_index].iter().all(|s| s
        .release
        .iter()
        .all(|r| outer.outputs.iter().all(|(o, _)| o != r))));
}

fn load_error(program: mil_spec::Block) -> String {
    let dir = tempfile::tempdir().unwrap();
    let error = Function::load(&package_with(dir.path(), program), "main", false).unwrap_err();
    assert!(matches!(error, Error::InvalidModel { .. }), "{error:?}");
    error.to_string()
}

#[test]
fn malformed_control_flow_fails_at_load() {
    // A body giving one value for two loop variables.
    let mut program = mlp_loop();
    let body = &mut program.operations[0].blocks[1];
    body.outputs.pop();
    let message = load_error(program);
    assert!(
        message.contains("while_loop") && message.contains("body block gives 1 values"),
        "{message}"
    );

    // A condition without its second block.
    let mut program = mlp_loop();
    program.operations[0].blocks.pop();
    let message = load_error(program);
    assert!(message.contains("has 1 nested blocks"), "{message}");

    // A branch reading a value of its sibling.
    let mut program = nested();
    let outer_body = &mut program.operations[1].blocks[1];
    let otherwise = &mut outer_body.operations[4].blocks[1];
    otherwise.operations[0]
        .inputs
        .get_mut("x")
        .unwrap()
        .arguments[0]
        .binding = Some(Binding::Name("minus".into()));
    let message = load_error(program);
    assert!(
        message.contains("\"minus\"") && message.contains("not defined"),
        "{message}"
    );

    // A block output defined nowhere.
    let mut program = nested();
    program.operations[1].blocks[0].outputs = vec!["nowhere".into()];
    let message = load_error(program);
    assert!(message.contains("\"nowhere\""), "{message}");

    // Blocks on an op that takes none.
    let mut program = mlp_loop();
    let mut relu = program.operations[0].blocks[1].operations[5].clone();
    relu.blocks.push(block(&[], Vec::new(), &[]));
    program.operations[0].blocks[1].operations[5] = relu;
    let message = load_error(program);
    assert!(
        message.contains("relu") && message.contains("nested blocks"),
        "{message}"
    );
}

#[test]
fn a_loop_variable_leaving_its_declared_type_fails_naming_the_loop() {
    // The blocks declare the loop's second variable [1, 16], but `x` is
    // [1, 32]: binding it is refused, naming the loop.
    let mut program = mlp_loop();
    for block in &mut program.operations[0].blocks {
        block.inputs[1].r#type = Some(tensor(DataType::Float32, &[1, 16]));
    }
    let dir = tempfile::tempdir().unwrap();
    let function = Function::load(&package_with(dir.path(), program), "main", false).unwrap();
    let error = function.predict(&input(&sample(0)), None).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("while_loop") && message.contains("loop variable 1"),
        "{message}"
    );
}

// ------------------------------------------------ fp16 as the device computes it

fn half_row() -> mil_spec::ValueType {
    tensor(DataType::Float16, &[1, 32])
}

/// The fixture with fp16 `x` and `y` (in the description and the program)
/// and its main function's body replaced by `body`, written under `dir`.
fn fp16_package_with(dir: &Path, body: mil_spec::Block) -> Package {
    use coreml_multifunction_format::proto::specification::{
        array_feature_type::ArrayDataType, feature_type,
    };
    let shell = package_with(dir, body);
    let mut model = shell.model().clone();
    let description = model.description.as_mut().unwrap();
    for feature in description.input.iter_mut().chain(&mut description.output) {
        let Some(feature_type::Type::MultiArrayType(array)) =
            feature.r#type.as_mut().and_then(|t| t.r#type.as_mut())
        else {
            unreachable!("the fixture's x and y are arrays")
        };
        array.data_type = ArrayDataType::Float16 as i32;
    }
    let Some(model::Type::MlProgram(program)) = &mut model.r#type else {
        unreachable!("the fixture is an ML Program")
    };
    program.functions.get_mut("main").unwrap().inputs[0].r#type = Some(half_row());
    let destination = dir.join("fp16.mlpackage");
    let mut builder = PackageBuilder::new(&destination).unwrap();
    builder
        .copy_weights_file(
            "weight.bin",
            &shell.weights_dir().unwrap().join("weight.bin"),
        )
        .unwrap();
    builder.finish(&model).unwrap();
    Package::open(destination).unwrap()
}

fn half_input(x: &[f32]) -> Features {
    let x: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    Features::from([("x".to_string(), Tensor::new([1, 32], x).unwrap().into())])
}

/// `y`'s elements as bits, so that comparisons are bit for bit.
fn output_bits(features: &Features) -> Vec<u32> {
    output(features).iter().map(|v| v.to_bits()).collect()
}

fn predict_both(package: &Package, x: &[f32]) -> (Features, Features) {
    let default = Function::load(package, "main", false).unwrap();
    let fp16_ops = Function::load(package, "main", true).unwrap();
    (
        default.predict(&half_input(x), None).unwrap(),
        fp16_ops.predict(&half_input(x), None).unwrap(),
    )
}

#[test]
fn fp16_ops_rounds_after_every_op_in_nested_blocks_too() {
    // y = (x * x) / x inside a branch: x * x overflows fp16 for x = 300.
    let program = block(
        &[],
        vec![
            simple(
                "reduce_sum",
                vec![("x", Name("x")), ("keep_dims", v(bool_value(false)))],
                ("total", tensor(DataType::Float16, &[])),
            ),
            simple(
                "greater",
                vec![("x", Name("total")), ("y", Name("total"))],
                ("never", boolean()),
            ),
            cond(
                "never",
                &[("y", half_row())],
                block(&[], Vec::new(), &["x"]),
                block(
                    &[],
                    vec![
                        simple(
                            "mul",
                            vec![("x", Name("x")), ("y", Name("x"))],
                            ("square", half_row()),
                        ),
                        simple(
                            "real_div",
                            vec![("x", Name("square")), ("y", Name("x"))],
                            ("back", half_row()),
                        ),
                    ],
                    &["back"],
                ),
            ),
        ],
        &["y"],
    );
    let dir = tempfile::tempdir().unwrap();
    let package = fp16_package_with(dir.path(), program);
    let x: Vec<f32> = (0..32).map(|k| 300.0 + k as f32).collect();
    let (default, fp16_ops) = predict_both(&package, &x);
    // f32 intermediates hide the overflow; the device's rounding does not.
    assert_eq!(output(&default), x);
    assert!(
        output(&fp16_ops).iter().all(|v| v.is_infinite()),
        "{:?}",
        output(&fp16_ops)
    );
    // Below the overflow, x * x loses bits in fp16 that f32 keeps: the
    // modes differ without an infinity too.
    let small: Vec<f32> = (0..32)
        .map(|k| 1.0 + k as f32 / 64.0 + 1.0 / 512.0)
        .collect();
    let (default, fp16_ops) = predict_both(&package, &small);
    assert!(output(&fp16_ops).iter().all(|v| v.is_finite()));
    assert_ne!(output_bits(&default), output_bits(&fp16_ops));
}

#[test]
fn a_function_split_at_an_fp16_value_gives_bit_for_bit_what_it_gives_whole() {
    // whole: y = exp(x * x)²; chunk 1: t = exp(x * x); chunk 2: y = t².
    // The value crossing the split, t, becomes chunk 1's fp16 output and
    // chunk 2's fp16 input.
    let square = |from: &'static str, to: &'static str| {
        simple(
            "mul",
            vec![("x", Name(from)), ("y", Name(from))],
            (to, half_row()),
        )
    };
    let exp = simple("exp", vec![("x", Name("sq"))], ("t", half_row()));
    let whole = block(
        &[],
        vec![square("x", "sq"), exp.clone(), square("t", "y")],
        &["y"],
    );
    let first = block(
        &[],
        vec![square("x", "sq"), {
            let mut exp = exp.clone();
            exp.outputs[0].name = "y".to_string();
            exp
        }],
        &["y"],
    );
    let second = block(&[], vec![square("x", "y")], &["y"]);
    let dir = tempfile::tempdir().unwrap();
    let packages = [whole, first, second].map(|body| {
        let dir = tempfile::tempdir_in(dir.path()).unwrap().keep();
        fp16_package_with(&dir, body)
    });
    let run = |package: &Package, fp16_ops: bool, x: &[f32]| {
        output(
            &Function::load(package, "main", fp16_ops)
                .unwrap()
                .predict(&half_input(x), None)
                .unwrap(),
        )
    };
    let x = sample(3);
    let mut differs_by_default = false;
    for fp16_ops in [false, true] {
        let whole = run(&packages[0], fp16_ops, &x);
        let split = run(&packages[2], fp16_ops, &run(&packages[1], fp16_ops, &x));
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        if fp16_ops {
            assert_eq!(bits(&whole), bits(&split));
        } else {
            differs_by_default = bits(&whole) != bits(&split);
        }
    }
    // Without the mode the split adds a rounding the whole lacks, so the
    // equality above is the mode's doing.
    assert!(differs_by_default);
}

/// `y` = `relu(conv(x))` over `x` as a `[1, 2, 4, 4]` image, 3 × 3 kernel
/// (padding `same`), with the convolution's output also read by `extra`
/// ops when given (which keeps the relu from being fused).
fn conv_relu(extra: bool) -> mil_spec::Block {
    let ints = |values: &[i32]| {
        immediate(
            DataType::Int32,
            &[values.len() as u64],
            tensor_value::Value::Ints(tensor_value::RepeatedInts {
                values: values.to_vec(),
            }),
        )
    };
    let image = || tensor(DataType::Float32, &[1, 2, 4, 4]);
    let weights: Vec<f32> = (0..36).map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0).collect();
    let weight = immediate(
        DataType::Float32,
        &[2, 2, 3, 3],
        tensor_value::Value::Floats(tensor_value::RepeatedFloats { values: weights }),
    );
    let pad_type = scalar(
        DataType::String,
        tensor_value::Value::Strings(tensor_value::RepeatedStrings {
            values: vec!["same".to_string()],
        }),
    );
    let mut ops = vec![
        simple(
            "reshape",
            vec![("x", Name("x")), ("shape", v(ints(&[1, 2, 4, 4])))],
            ("image", image()),
        ),
        simple(
            "conv",
            vec![
                ("x", Name("image")),
                ("weight", v(weight)),
                ("strides", v(ints(&[1, 1]))),
                ("pad_type", v(pad_type)),
                ("pad", v(ints(&[0, 0, 0, 0]))),
                ("dilations", v(ints(&[1, 1]))),
                ("groups", v(i32_value(1))),
            ],
            ("c", image()),
        ),
        simple("relu", vec![("x", Name("c"))], ("r", image())),
    ];
    let result = if extra {
        // r + 0 · c: the same values (c is finite), but c is read twice.
        ops.push(simple(
            "mul",
            vec![("x", Name("c")), ("y", v(f32_value(0.0)))],
            ("zero", image()),
        ));
        ops.push(simple(
            "add",
            vec![("x", Name("r")), ("y", Name("zero"))],
            ("sum", image()),
        ));
        "sum"
    } else {
        "r"
    };
    ops.push(simple(
        "reshape",
        vec![("x", Name(result)), ("shape", v(ints(&[1, 32])))],
        ("y", row()),
    ));
    block(&[], ops, &["y"])
}

#[test]
fn a_relu_reading_only_a_convolution_is_fused_into_it_to_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let fused = Function::load(&package_with(dir.path(), conv_relu(false)), "main", false).unwrap();
    let kinds = |function: &Function| -> Vec<(String, bool)> {
        all_steps(&function.program.steps)
            .iter()
            .map(|step| (step.op_type.clone(), step.relu_after))
            .collect()
    };
    assert!(kinds(&fused).contains(&("conv".to_string(), true)));
    assert!(!kinds(&fused).iter().any(|(op, _)| op == "relu"));
    let other = tempfile::tempdir().unwrap();
    let kept = Function::load(&package_with(other.path(), conv_relu(true)), "main", false).unwrap();
    assert!(kinds(&kept).contains(&("conv".to_string(), false)));
    assert!(kinds(&kept).iter().any(|(op, _)| op == "relu"));
    for seed in 0..4 {
        let x = sample(seed);
        let y = output(&fused.predict(&input(&x), None).unwrap());
        let want = output(&kept.predict(&input(&x), None).unwrap());
        assert_eq!(
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(y.iter().all(|&v| v >= 0.0) && y.iter().any(|&v| v > 0.0));
    }
}
