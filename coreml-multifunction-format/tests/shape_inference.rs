//! Every shape rule against coremltools 9.0's own type inference: the
//! cases of `tests/data/op_types.json`, made by `scripts/golden-types.py`
//! from the MIL builder (dtypes, shapes, and the values it folds), for
//! every op of the table.

use std::collections::{BTreeMap, BTreeSet};

use coreml_multifunction_format::mil::infer::{
    dtype_from_name, infer, Container, Dim, Elements, Inputs, Operand, TensorType,
};
use coreml_multifunction_format::mil::ops::{spec, supported, Kind};
use coreml_multifunction_format::proto::mil_spec::DataType;
use serde_json::Value as Json;

const GOLDEN: &str = include_str!("data/op_types.json");

/// Ops whose small results must fold when coremltools folds them: the
/// shape arithmetic a flexible program does.
const MUST_FOLD: &[&str] = &[
    "shape",
    "slice_by_index",
    "slice_by_size",
    "concat",
    "stack",
    "gather",
    "cast",
    "reshape",
    "squeeze",
    "expand_dims",
    "add",
    "sub",
    "mul",
    "floor_div",
    "mod",
    "maximum",
    "minimum",
    "equal",
    "less",
    "greater",
    "fill",
    "range_1d",
    "reduce_prod",
    "reduce_sum",
];

/// Where inference and coremltools part, on purpose. The test fails if a
/// case listed here agrees (the list must stay true) or one not listed
/// differs.
///
/// Most are rejections coremltools makes that shape inference leaves to
/// the converter (element-type domains, parameters that do not change a
/// result's type): a program coremltools wrote never has them, and the
/// interpreter refuses what it cannot run. The rest are places where
/// coremltools accepts what numpy semantics (and the interpreter) refuse,
/// or computes a type the interpreter's result would not have.
const DIFFERENCES: &[(&str, &str)] = &[
    ("add_mixed_dtypes", "operand dtypes are not checked against each other"),
    ("relu_int32", "element-type domains are not checked"),
    ("logical_not_fp32", "element-type domains are not checked"),
    ("logical_or_float", "element-type domains are not checked"),
    ("avg_pool_int32", "element-type domains are not checked"),
    ("gather_float_indices", "element-type domains are not checked"),
    ("one_hot_float_indices", "element-type domains are not checked"),
    ("select_branch_dtypes", "operand dtypes are not checked against each other"),
    ("range_1d_mixed_dtypes", "operand dtypes are not checked against each other"),
    ("cast_unknown_dtype", "fp64 is a type, though coremltools will not cast to it"),
    ("cast_int4", "int4 is a type, though coremltools will not cast to it"),
    ("constexpr_cast_to_int32", "constexpr_cast's target type is not checked"),
    ("topk_bad_indices_dtype", "output_indices_dtype is not checked"),
    ("resize_bilinear_bad_mode", "sampling_mode does not change the shape"),
    ("prelu_rank3_distinct_alphas", "alpha's values do not change the shape"),
    ("prelu_wrong_alpha", "alpha's shape does not change the result's"),
    ("prelu_rank2", "prelu's rank limits are not checked"),
    ("layer_norm_gamma_mismatch", "gamma's shape does not change the result's"),
    ("conv_bias_mismatch", "bias's shape does not change the result's"),
    ("conv_transpose_bias_mismatch", "bias's shape does not change the result's"),
    ("conv_dynamic_weight_dilated", "a run-time weight is accepted"),
    ("l2_pool_3d_same_lower", "l2_pool's rank limit is not checked"),
    ("max_pool_ceil_asymmetric_pad", "ceil mode with uneven padding is accepted"),
    ("avg_pool_ceil_same", "ceil mode with same padding is accepted"),
    ("rnn_bidirectional", "rnn's direction domain is not checked"),
    ("scatter_updates_mismatch", "updates' shape is checked when the op runs"),
    ("scatter_along_axis_mismatch", "updates' shape is checked when the op runs"),
    ("scatter_nd_updates_mismatch", "updates' shape is checked when the op runs"),
    ("matmul_vector_vector", "numpy's rules allow a vector y (a dot product)"),
    ("matmul_vector_y", "numpy's rules allow a vector y"),
    ("matmul_vector_x", "coremltools drops y's batch axes for a vector x ([1, 4]); numpy and the interpreter keep them ([2, 4])"),
    ("squeeze_not_one", "coremltools ignores a listed axis not of size 1; inference refuses it, as the interpreter does"),
    ("split_sizes_wrong_sum", "coremltools accepts split sizes that do not cover the axis; inference refuses them"),
    ("slice_by_index_empty", "an empty slice (begin after end) is numpy's, and the interpreter's"),
    ("slice_by_size_past_end_unchecked", "coremltools accepts a size past the end; inference refuses it, as the interpreter does"),
];

fn dtype(name: &str) -> DataType {
    match name {
        "str" => DataType::String,
        "uint1" => DataType::Uint1,
        "uint2" => DataType::Uint2,
        "uint3" => DataType::Uint3,
        "uint6" => DataType::Uint6,
        other => dtype_from_name(other).unwrap_or_else(|| panic!("dtype {other}")),
    }
}

fn dims(shape: &Json) -> Vec<Dim> {
    shape
        .as_array()
        .expect("a shape is a list")
        .iter()
        .map(Json::as_u64)
        .collect()
}

fn elements(dtype: DataType, value: &[Json]) -> Elements {
    match dtype {
        DataType::Bool => Elements::Bool(value.iter().map(|v| v.as_bool().unwrap()).collect()),
        DataType::String => Elements::Str(
            value
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect(),
        ),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            Elements::Float(value.iter().map(|v| v.as_f64().unwrap()).collect())
        }
        _ => Elements::Int(value.iter().map(Json::as_i64).collect()),
    }
}

fn operand(json: &Json) -> Operand {
    let dtype = dtype(json["dtype"].as_str().unwrap());
    let ty = TensorType {
        dtype,
        shape: dims(&json["shape"]),
    };
    let mut operand = match json.get("value").and_then(Json::as_array) {
        Some(value) => Operand::with_value(ty, elements(dtype, value)),
        None => Operand::tensor(ty),
    };
    operand.container = container(json);
    operand
}

/// A list's or dictionary's container (issue 23): `"list": {"length"}`,
/// `"dict": key dtype`.
fn container(json: &Json) -> Option<Container> {
    if let Some(list) = json.get("list") {
        return Some(Container::List {
            length: list["length"].as_u64(),
        });
    }
    json.get("dict").map(|key| Container::Dictionary {
        key: dtype(key.as_str().unwrap()),
    })
}

fn close(a: &Elements, b: &Elements) -> bool {
    match (a, b) {
        (Elements::Float(x), Elements::Float(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| {
                    (p.is_nan() && q.is_nan()) || (p - q).abs() <= 1e-6 * q.abs().max(1.0)
                })
        }
        (a, b) => a == b,
    }
}

#[test]
fn every_rule_agrees_with_coremltools() {
    let golden: Json = serde_json::from_str(GOLDEN).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    let mut differing = BTreeSet::new();
    let mut covered = BTreeSet::new();
    let mut unexpected_fold_misses = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let op = case["op"].as_str().unwrap();
        covered.insert(op.to_string());
        let kind: Kind = spec(op)
            .unwrap_or_else(|| panic!("{name}: {op} is not in the table"))
            .kind;
        let args: BTreeMap<String, Vec<Operand>> = case["inputs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(param, json)| {
                let operands = match json.as_array() {
                    Some(list) => list.iter().map(operand).collect(),
                    None => vec![operand(json)],
                };
                (param.clone(), operands)
            })
            .collect();
        let result = infer(kind, &Inputs::new(&args));
        if case.get("error").is_some() {
            if let Ok(results) = result {
                differing.insert(name);
                failures.push(format!(
                    "{name}: coremltools refuses it ({}), inference gives {:?}",
                    case["error"],
                    results.iter().map(|o| o.ty.describe()).collect::<Vec<_>>()
                ));
            }
            continue;
        }
        let results = match result {
            Ok(results) => results,
            Err(e) => {
                differing.insert(name);
                failures.push(format!("{name}: inference fails: {e}"));
                continue;
            }
        };
        let expected = case["outputs"].as_array().unwrap();
        if results.len() != expected.len() {
            failures.push(format!(
                "{name}: {} results, coremltools gives {}",
                results.len(),
                expected.len()
            ));
            continue;
        }
        for (k, (got, want)) in results.iter().zip(expected).enumerate() {
            let want_dtype = dtype(want["dtype"].as_str().unwrap());
            let want_shape = dims(&want["shape"]);
            let want_container = container(want);
            let container_agrees = match (&got.container, &want_container) {
                // A list's length is compared where both know it.
                (Some(Container::List { length: a }), Some(Container::List { length: b })) => {
                    a.zip(*b).is_none_or(|(a, b)| a == b)
                }
                (a, b) => a == b,
            };
            if !container_agrees {
                differing.insert(name);
                failures.push(format!(
                    "{name}: result {k} is {:?}, coremltools gives {want_container:?}",
                    got.container
                ));
                continue;
            }
            if got.ty.dtype != want_dtype || got.ty.shape != want_shape {
                differing.insert(name);
                failures.push(format!(
                    "{name}: result {k} is {}, coremltools gives {} {}",
                    got.ty.describe(),
                    want["shape"],
                    want["dtype"]
                ));
                continue;
            }
            let Some(value) = want.get("value").and_then(Json::as_array) else {
                continue;
            };
            let want_value = elements(want_dtype, value);
            match &got.value {
                Some(v) if !close(v, &want_value) => failures.push(format!(
                    "{name}: result {k} folds to {v:?}, coremltools to {want_value:?}"
                )),
                Some(_) => {}
                None if MUST_FOLD.contains(&op) => failures.push(format!(
                    "{name}: result {k} does not fold; coremltools folds it to {want_value:?}"
                )),
                None => unexpected_fold_misses.push(name.to_string()),
            }
        }
    }
    let missing: Vec<&str> = supported()
        .into_iter()
        .filter(|op| {
            !covered.contains(*op)
                && !matches!(
                    *op,
                    "const" | "read_state" | "write_state" | "while_loop" | "cond"
                )
        })
        .collect();
    assert!(missing.is_empty(), "ops without a golden case: {missing:?}");
    let listed: BTreeSet<&str> = DIFFERENCES.iter().map(|(name, _)| *name).collect();
    let unlisted: Vec<&String> = failures
        .iter()
        .filter(|f| !listed.contains(f.split(':').next().unwrap_or_default()))
        .collect();
    let agreeing: Vec<&&str> = listed.difference(&differing).collect();
    assert!(
        unlisted.is_empty() && agreeing.is_empty(),
        "{} of {} cases disagree with coremltools:\n{}\nlisted as differences but agreeing: {agreeing:?}",
        unlisted.len(),
        cases.len(),
        unlisted.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
    );
    // Values coremltools folds for ops outside the shape arithmetic are
    // not needed; list them for the curious.
    if !unexpected_fold_misses.is_empty() {
        eprintln!("not folded (not needed): {unexpected_fold_misses:?}");
    }
}

/// Inference run over every function of every committed fixture, at the
/// shapes it declares, gives back every type coremltools declared: the
/// rules hold on the programs coremltools really writes, not only on
/// single ops.
#[test]
fn every_fixture_function_infers_to_its_declared_types() {
    use coreml_multifunction_format::mil::materialize::materialize;
    use coreml_multifunction_format::package::Package;

    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let mut checked = 0;
    let mut failures = Vec::new();
    for dir in ["packages", "merged"] {
        let mut paths: Vec<_> = std::fs::read_dir(fixtures.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "mlpackage"))
            .collect();
        paths.sort();
        for path in paths {
            let package = Package::open(&path).unwrap();
            let data_dependent = path
                .file_stem()
                .is_some_and(|stem| DATA_DEPENDENT.contains(&stem.to_string_lossy().as_ref()));
            for function in package.functions() {
                let name = format!("{}:{}", path.display(), function.name);
                if data_dependent {
                    // Their outputs' sizes depend on data: inference must
                    // say so, naming the op, rather than guess.
                    match materialize(function.function, &BTreeMap::new()) {
                        Err(e) if e.to_string().contains("depends on data") => checked += 1,
                        other => failures.push(format!(
                            "{name}: expected a data-dependent shape, got {other:?}"
                        )),
                    }
                    continue;
                }
                match materialize(function.function, &BTreeMap::new()) {
                    Err(e) => failures.push(format!("{name}: {e}")),
                    Ok(m) => {
                        checked += 1;
                        // Folded ops keep their names and types; ops nothing
                        // reads any more are gone.
                        let before = declared_types(function.function);
                        for (output, inferred) in declared_types(&m.function) {
                            if before.get(&output) != Some(&inferred) {
                                failures.push(format!(
                                    "{name}: {output} was declared {:?}, is inferred {inferred}",
                                    before.get(&output)
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} functions checked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Fixtures whose output sizes depend on data (the boxes NMS keeps), so
/// no fixed-shape function exists for them.
const DATA_DEPENDENT: &[&str] = &["nms_detector", "nms_detector_ios15"];

/// Every op result's declared type by name, nested blocks included.
fn declared_types(
    function: &coreml_multifunction_format::proto::mil_spec::Function,
) -> BTreeMap<String, String> {
    fn walk(
        block: &coreml_multifunction_format::proto::mil_spec::Block,
        out: &mut BTreeMap<String, String>,
    ) {
        for op in &block.operations {
            for output in &op.outputs {
                out.insert(output.name.clone(), format!("{:?}", output.r#type));
            }
            for nested in &op.blocks {
                walk(nested, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    for block in function.block_specializations.values() {
        walk(block, &mut out);
    }
    out
}

/// Shape inference never panics, whatever a program says: real fixture
/// programs, mutated op by op (an op's type swapped for another op's, an
/// input dropped or rebound to another value, a declared dimension or a
/// constant changed), then materialized at their shapes and with their
/// inputs fixed to other sizes. An error is a fine outcome; a panic is a
/// bug. Deterministic: the same mutations every run.
#[test]
fn mutated_programs_never_panic() {
    use coreml_multifunction_format::mil::materialize::{declared_dims, materialize};
    use coreml_multifunction_format::package::Package;
    use coreml_multifunction_format::proto::mil_spec::{
        argument::binding::Binding, dimension, tensor_value, value, value_type, Function,
    };

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/packages");
    let mut functions: Vec<Function> = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let package = Package::open(&path).unwrap();
        for f in package.functions() {
            functions.push(f.function.clone());
        }
    }
    let ops = supported();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut runs = 0;
    for round in 0..1500 {
        let mut function = functions[round % functions.len()].clone();
        let opset = function.opset.clone();
        let Some(block) = function.block_specializations.get_mut(&opset) else {
            continue;
        };
        if block.operations.is_empty() {
            continue;
        }
        let names: Vec<String> = block
            .operations
            .iter()
            .flat_map(|op| op.outputs.iter().map(|o| o.name.clone()))
            .collect();
        for _ in 0..1 + rng.below(3) {
            let index = rng.below(block.operations.len());
            let op = &mut block.operations[index];
            match rng.below(5) {
                0 => op.r#type = ops[rng.below(ops.len())].to_string(),
                1 => {
                    let keys: Vec<String> = op.inputs.keys().cloned().collect();
                    if !keys.is_empty() {
                        op.inputs.remove(&keys[rng.below(keys.len())]);
                    }
                }
                2 => {
                    let name = names[rng.below(names.len())].clone();
                    if let Some(argument) = op.inputs.values_mut().next() {
                        if let Some(binding) = argument.arguments.first_mut() {
                            binding.binding = Some(Binding::Name(name));
                        }
                    }
                }
                3 => {
                    if let Some(value_type::Type::TensorType(t)) = op
                        .outputs
                        .first_mut()
                        .and_then(|o| o.r#type.as_mut())
                        .and_then(|t| t.r#type.as_mut())
                    {
                        if !t.dimensions.is_empty() {
                            let d = rng.below(t.dimensions.len());
                            t.dimensions[d].dimension = Some(dimension::Dimension::Constant(
                                dimension::ConstantDimension {
                                    size: rng.next() % 70,
                                },
                            ));
                        }
                    }
                }
                _ => {
                    if let Some(value) = op.attributes.get_mut("val") {
                        if let Some(value::Value::ImmediateValue(immediate)) = &mut value.value {
                            if let Some(value::immediate_value::Value::Tensor(t)) =
                                &mut immediate.value
                            {
                                if let Some(tensor_value::Value::Ints(ints)) = &mut t.value {
                                    for v in &mut ints.values {
                                        *v = (rng.next() % 130) as i32 - 65;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        let fixed: BTreeMap<String, Vec<u64>> = function
            .inputs
            .iter()
            .filter_map(|input| match input.r#type.as_ref()?.r#type.as_ref()? {
                value_type::Type::TensorType(t) => Some((
                    input.name.clone(),
                    declared_dims(t)
                        .iter()
                        .map(|d| d.unwrap_or(1 + rng.next() % 9))
                        .collect(),
                )),
                _ => None,
            })
            .collect();
        let outcome = std::panic::catch_unwind(|| {
            let _ = materialize(&function, &BTreeMap::new());
            let _ = materialize(&function, &fixed);
        });
        assert!(outcome.is_ok(), "round {round} panicked");
        runs += 1;
    }
    assert!(runs > 1000);
}
