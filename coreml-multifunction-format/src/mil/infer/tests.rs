//! Shape rules on hand-picked cases: folding shape arithmetic, partly
//! known values, and errors. The cases coremltools' own type inference
//! gives are checked against every rule in
//! `coreml-multifunction-format/tests/shape_inference.rs`.

use std::collections::BTreeMap;

use super::*;
use crate::mil::ops::{spec, Kind};

fn known(dtype: DataType, shape: &[u64]) -> Operand {
    Operand::tensor(TensorType::known(dtype, shape))
}

fn ints(values: &[i64]) -> Operand {
    Operand::with_value(
        TensorType::known(DataType::Int32, &[values.len() as u64]),
        Elements::ints(values.iter().copied()),
    )
}

fn run(op: &str, args: Vec<(&str, Vec<Operand>)>) -> RuleResult {
    let kind: Kind = spec(op).expect("an op of the table").kind;
    let map: BTreeMap<String, Vec<Operand>> =
        args.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    infer(kind, &Inputs::new(&map))
}

#[test]
fn shape_arithmetic_folds_through_slices_and_concatenation() {
    let x = Operand::tensor(TensorType {
        dtype: DataType::Float32,
        shape: vec![Some(1), Some(8), Some(64)],
    });
    let shape = run("shape", vec![("x", vec![x])]).unwrap().remove(0);
    assert_eq!(shape.value, Some(Elements::ints([1, 8, 64])));
    let sliced = run(
        "slice_by_index",
        vec![
            ("x", vec![shape]),
            ("begin", vec![ints(&[0])]),
            ("end", vec![ints(&[2])]),
        ],
    )
    .unwrap()
    .remove(0);
    assert_eq!(sliced.value, Some(Elements::ints([1, 8])));
    let joined = run(
        "concat",
        vec![
            ("values", vec![sliced, ints(&[4, 16])]),
            ("axis", vec![ints(&[0])]),
        ],
    )
    .unwrap()
    .remove(0);
    assert_eq!(joined.value, Some(Elements::ints([1, 8, 4, 16])));
    let reshaped = run(
        "reshape",
        vec![
            ("x", vec![known(DataType::Float32, &[1, 8, 64])]),
            ("shape", vec![joined]),
        ],
    )
    .unwrap()
    .remove(0);
    assert_eq!(
        reshaped.ty,
        TensorType::known(DataType::Float32, &[1, 8, 4, 16])
    );
}

#[test]
fn an_unknown_dimension_stays_unknown_in_values_and_types() {
    let x = Operand::tensor(TensorType {
        dtype: DataType::Float16,
        shape: vec![Some(1), None, Some(64)],
    });
    let shape = run("shape", vec![("x", vec![x.clone()])])
        .unwrap()
        .remove(0);
    assert_eq!(
        shape.value,
        Some(Elements::Int(vec![Some(1), None, Some(64)]))
    );
    assert!(!shape.value.as_ref().unwrap().is_known());
    let reshaped = run("reshape", vec![("x", vec![x]), ("shape", vec![shape])])
        .unwrap()
        .remove(0);
    assert_eq!(reshaped.ty.shape, vec![Some(1), None, Some(64)]);
}

#[test]
fn a_parameter_computed_at_run_time_is_an_error_naming_it() {
    let x = known(DataType::Float32, &[2, 3]);
    let perm = known(DataType::Int32, &[2]);
    let error = run("transpose", vec![("x", vec![x]), ("perm", vec![perm])]).unwrap_err();
    assert!(error.contains("\"perm\""), "{error}");
}

#[test]
fn broadcasting_mismatches_are_errors() {
    let error = run(
        "add",
        vec![
            ("x", vec![known(DataType::Float32, &[2, 3])]),
            ("y", vec![known(DataType::Float32, &[4])]),
        ],
    )
    .unwrap_err();
    assert!(error.contains("do not broadcast"), "{error}");
}

#[test]
fn integer_floor_division_and_modulo_follow_python() {
    let out = run(
        "floor_div",
        vec![
            ("x", vec![ints(&[7, -7, 7, -7])]),
            ("y", vec![ints(&[2, 2, -2, -2])]),
        ],
    )
    .unwrap()
    .remove(0);
    assert_eq!(out.value, Some(Elements::ints([3, -4, -4, 3])));
    let out = run(
        "mod",
        vec![
            ("x", vec![ints(&[7, -7, 7, -7])]),
            ("y", vec![ints(&[3, 3, -3, -3])]),
        ],
    )
    .unwrap()
    .remove(0);
    assert_eq!(out.value, Some(Elements::ints([1, 2, -2, -1])));
}

#[test]
fn fp16_rounding_is_to_nearest_even() {
    assert_eq!(round_to_f16(1.0 + 1.0 / 2048.0), 1.0);
    assert_eq!(round_to_f16(1.0 + 3.0 / 2048.0), 1.0 + 2.0 / 1024.0);
    assert_eq!(round_to_f16(70000.0), f64::INFINITY);
}

#[test]
fn no_rule_panics_without_inputs() {
    // Every op but the ones walked as blocks or constants gives a result
    // or an error on empty inputs, never a panic.
    for op in crate::mil::ops::supported() {
        let kind = spec(op).unwrap().kind;
        if matches!(kind, Kind::Const | Kind::Cond | Kind::WhileLoop) {
            continue;
        }
        let map = BTreeMap::new();
        let _ = infer(kind, &Inputs::new(&map));
    }
}
