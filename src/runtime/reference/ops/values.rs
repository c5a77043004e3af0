//! The ops whose values are not tensors (issue 23): `classify`, which
//! makes a classifier's label and its label → probability dictionary, and
//! the tensor lists (`make_list`, `list_read`, `list_write`,
//! `list_gather`, `list_scatter`, `list_length`), following coremltools'
//! iOS 15 definitions (`classify.py`, `control_flow.py`).
//!
//! # The label `classify` picks
//!
//! The label is the class of the greatest probability; among equal
//! greatest probabilities, the first in the order of `classes` (the
//! element the scan from index 0 reaches first, as `std::max_element`,
//! numpy's `argmax` and torch's CPU `argmax` pick it). A NaN never
//! replaces the current best, so a NaN wins only at index 0 (numpy and
//! torch would pick the first NaN). Neither coremltools' definition
//! (`classify.py`) nor Core ML's documentation (searched: the
//! `NeuralNetworkClassifier` and `MLModelDescription` references, Vision's
//! `VNClassificationObservation`, coremltools' issues) states a tie rule;
//! Core ML's behaviour is not verified here (no Mac). The dictionary holds every
//! class with the probability the op is given, widened to f64 (Core ML's
//! dictionary values are doubles), unnormalized and unrounded.

use std::collections::BTreeMap;

use coreml_multifunction_format::proto::mil_spec::DataType;

use super::super::value::{category, dtype_from_name, Category, Dictionary, List, OpResult, Value};
use super::Args;

/// The longest list a program may make or grow to: 2^24 elements. Each
/// element is a pointer-sized slot, so a list is never an allocation a
/// single bad `init_length` or index can blow up.
const MAX_LIST_LENGTH: usize = 1 << 24;

/// `classify`: the label and the dictionary.
pub(super) fn classify(args: &Args<'_>) -> OpResult<Vec<Value>> {
    let probabilities: Vec<f32> = args.float("probabilities")?.iter().copied().collect();
    let Value::List(classes) = args.required("classes")? else {
        return Err("input \"classes\" must be a list".to_string());
    };
    if classes.elements.len() != probabilities.len() {
        return Err(format!(
            "there are {} classes for {} probabilities; the counts must be equal",
            classes.elements.len(),
            probabilities.len()
        ));
    }
    let best = first_greatest(&probabilities)
        .ok_or("there are no classes and no probabilities, so there is no label")?;
    let duplicate = |key: String| format!("the class {key} is listed twice");
    let (label, dictionary) = match category(classes.dtype) {
        Some(Category::Str) => {
            let mut keys = Vec::with_capacity(probabilities.len());
            for element in &classes.elements {
                keys.push(element_of(element)?.to_str()?.to_string());
            }
            let mut map = BTreeMap::new();
            for (key, &p) in keys.iter().zip(&probabilities) {
                if map.insert(key.clone(), f64::from(p)).is_some() {
                    return Err(duplicate(format!("{key:?}")));
                }
            }
            (
                Value::Str(vec![keys[best].clone()]),
                Dictionary::String(map),
            )
        }
        Some(Category::Int) => {
            let mut keys = Vec::with_capacity(probabilities.len());
            for element in &classes.elements {
                keys.push(element_of(element)?.to_i64_scalar()?);
            }
            let mut map = BTreeMap::new();
            for (&key, &p) in keys.iter().zip(&probabilities) {
                if map.insert(key, f64::from(p)).is_some() {
                    return Err(duplicate(key.to_string()));
                }
            }
            let label = i32::try_from(keys[best])
                .map_err(|_| format!("the label {} is beyond int32", keys[best]))?;
            (Value::int(Vec::new(), vec![label])?, Dictionary::Int64(map))
        }
        _ => return Err("the classes must be strings or integers".to_string()),
    };
    Ok(vec![label, Value::Dict(dictionary)])
}

/// The index of the first greatest element (see the module doc), `None`
/// when there is none.
fn first_greatest(values: &[f32]) -> Option<usize> {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate().skip(1) {
        if v > values[best] {
            best = i;
        }
    }
    (!values.is_empty()).then_some(best)
}

fn element_of(element: &Option<Value>) -> OpResult<&Value> {
    element
        .as_ref()
        .ok_or_else(|| "a class is missing from the list".to_string())
}

/// A length or index parameter as a `usize`, refusing negatives.
fn index(value: i64, what: &str) -> OpResult<usize> {
    usize::try_from(value).map_err(|_| format!("{what} is {value}, below zero"))
}

/// `make_list`: `init_length` (default 1) unwritten elements of `dtype`
/// (default fp32) and `elem_shape`.
pub(super) fn make_list(args: &Args<'_>) -> OpResult<Value> {
    let dtype = match args.opt_str("dtype")? {
        None => DataType::Float32,
        Some(name) => dtype_from_name(name)
            .filter(|d| {
                matches!(
                    d,
                    DataType::Bool | DataType::Float16 | DataType::Float32 | DataType::Int32
                )
            })
            .ok_or_else(|| {
                format!("dtype {name:?} is not an element type of a list (bool, fp16, fp32, int32)")
            })?,
    };
    let mut shape = Some(Vec::new());
    for dim in args.list("elem_shape")? {
        match dim {
            // A named dimension: known only when an element is written.
            Value::Str(_) => shape = None,
            other => {
                for d in other.to_i64_vec()? {
                    let d = index(d, "an elem_shape dimension")?;
                    if let Some(shape) = shape.as_mut() {
                        shape.push(d);
                    }
                }
            }
        }
    }
    let length = index(args.opt_i64("init_length")?.unwrap_or(1), "init_length")?;
    if length > MAX_LIST_LENGTH {
        return Err(format!(
            "init_length {length} is beyond the longest list the reference backend makes \
             ({MAX_LIST_LENGTH})"
        ));
    }
    Ok(Value::List(List {
        elements: vec![None; length],
        dtype,
        elem_shape: shape,
        dynamic: args.opt_bool("dynamic_length")?.unwrap_or(true),
    }))
}

fn list_of<'a>(args: &Args<'a>) -> OpResult<&'a List> {
    match args.required("ls")? {
        Value::List(list) => Ok(list),
        other => Err(format!("input \"ls\" must be a list, not {}", other.kind())),
    }
}

/// Element `at` of `list`: zeros of the element shape if never written.
fn read(list: &List, at: i64) -> OpResult<Value> {
    let position = index(at, "the index")?;
    let Some(element) = list.elements.get(position) else {
        return Err(format!(
            "reads element {position} of a list of {}",
            list.elements.len()
        ));
    };
    if let Some(value) = element {
        return Ok(value.clone());
    }
    let Some(shape) = &list.elem_shape else {
        return Err(format!(
            "reads element {position}, which was never written, of a list whose element shape \
             is not known"
        ));
    };
    let count = super::created_count(shape)?;
    match category(list.dtype) {
        Some(Category::Int) => Value::int(shape.clone(), vec![0; count]),
        Some(Category::Bool) => Value::bool(shape.clone(), vec![false; count]),
        _ => Value::float(shape.clone(), vec![0.0; count]),
    }
}

/// `list` with `value` at `at`, growing a dynamic list.
fn write(list: &mut List, at: i64, value: &Value) -> OpResult<()> {
    let position = index(at, "the index")?;
    let value = super::super::value::conform(value.clone(), list.dtype)?;
    if matches!(value, Value::Str(_) | Value::List(_) | Value::Dict(_)) {
        return Err(format!("writes {} to a tensor list", value.kind()));
    }
    let shape = value.shape();
    if let Some(expected) = &list.elem_shape {
        if &shape != expected {
            return Err(format!(
                "writes an element of shape {shape:?} to a list of elements of shape {expected:?}"
            ));
        }
    }
    if let Some(other) = list.elements.iter().flatten().next() {
        if other.shape() != shape {
            return Err(format!(
                "writes an element of shape {shape:?} to a list holding shape {:?}",
                other.shape()
            ));
        }
    }
    if position >= list.elements.len() {
        if !list.dynamic {
            return Err(format!(
                "writes element {position} of a list of fixed length {}",
                list.elements.len()
            ));
        }
        if position >= MAX_LIST_LENGTH {
            return Err(format!(
                "writes element {position}, beyond the longest list the reference backend \
                 makes ({MAX_LIST_LENGTH})"
            ));
        }
        list.elements.resize(position + 1, None);
    }
    list.elements[position] = Some(value);
    Ok(())
}

/// `list_read`: element `index`.
pub(super) fn list_read(args: &Args<'_>) -> OpResult<Value> {
    read(list_of(args)?, args.required("index")?.to_i64_scalar()?)
}

/// `list_write`: the list with `value` at `index`.
pub(super) fn list_write(args: &Args<'_>) -> OpResult<Value> {
    let mut list = list_of(args)?.clone();
    let at = args.required("index")?.to_i64_scalar()?;
    write(&mut list, at, args.required("value")?)?;
    Ok(Value::List(list))
}

/// `list_gather`: the elements at `indices`, stacked on a new first axis.
pub(super) fn list_gather(args: &Args<'_>) -> OpResult<Value> {
    let list = list_of(args)?;
    let indices = args.required("indices")?;
    if indices.shape().len() != 1 {
        return Err(format!(
            "input \"indices\" must be a vector, not of shape {:?}",
            indices.shape()
        ));
    }
    let elements = indices
        .to_i64_vec()?
        .into_iter()
        .map(|i| read(list, i))
        .collect::<OpResult<Vec<_>>>()?;
    let element_shape = match (elements.first(), &list.elem_shape) {
        (Some(first), _) => first.shape(),
        (None, Some(shape)) => shape.clone(),
        (None, None) => {
            return Err(
                "gathers no element from a list whose element shape is not known".to_string(),
            )
        }
    };
    let mut shape = vec![elements.len()];
    shape.extend(&element_shape);
    for element in &elements {
        if element.shape() != element_shape {
            return Err(format!(
                "gathers elements of shapes {element_shape:?} and {:?}",
                element.shape()
            ));
        }
    }
    match category(list.dtype) {
        Some(Category::Int) => {
            let mut data = Vec::new();
            for e in &elements {
                data.extend(e.to_int()?.iter().copied());
            }
            Value::int(shape, data)
        }
        Some(Category::Bool) => {
            let mut data = Vec::new();
            for e in &elements {
                data.extend(e.to_bool()?.iter().copied());
            }
            Value::bool(shape, data)
        }
        _ => {
            let mut data = Vec::new();
            for e in &elements {
                data.extend(e.to_float()?.iter().copied());
            }
            Value::float(shape, data)
        }
    }
}

/// `list_scatter`: the list with row `k` of `value` at `indices[k]`.
pub(super) fn list_scatter(args: &Args<'_>) -> OpResult<Value> {
    let mut list = list_of(args)?.clone();
    let indices = args.required("indices")?.to_i64_vec()?;
    let value = args.required("value")?;
    let rows = value.shape().first().copied().unwrap_or(0);
    if value.shape().is_empty() || rows != indices.len() {
        return Err(format!(
            "cannot scatter a value of shape {:?} to {} indices",
            value.shape(),
            indices.len()
        ));
    }
    for (k, &at) in indices.iter().enumerate() {
        let row = match value {
            Value::Float(a) => Value::Float(a.index_axis(ndarray::Axis(0), k).to_shared()),
            Value::Int(a) => Value::Int(a.index_axis(ndarray::Axis(0), k).to_shared()),
            Value::Bool(a) => Value::Bool(a.index_axis(ndarray::Axis(0), k).to_shared()),
            other => return Err(format!("scatters {} to a tensor list", other.kind())),
        };
        write(&mut list, at, &row)?;
    }
    Ok(Value::List(list))
}

/// `list_length`: the number of elements, written or not.
pub(super) fn list_length(args: &Args<'_>) -> OpResult<Value> {
    let length = list_of(args)?.elements.len();
    let length = i32::try_from(length).map_err(|_| format!("a list of {length} elements"))?;
    Value::int(Vec::new(), vec![length])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::reference::ops::tests::run_op;

    fn strings(classes: &[&str]) -> Value {
        Value::List(List {
            elements: classes
                .iter()
                .map(|c| Some(Value::Str(vec![c.to_string()])))
                .collect(),
            dtype: DataType::String,
            elem_shape: Some(Vec::new()),
            dynamic: false,
        })
    }

    fn floats(shape: &[usize], data: &[f32]) -> Value {
        Value::float(shape.to_vec(), data.to_vec()).unwrap()
    }

    fn ints(shape: &[usize], data: &[i32]) -> Value {
        Value::int(shape.to_vec(), data.to_vec()).unwrap()
    }

    #[test]
    fn classify_labels_the_greatest_and_keeps_every_probability() {
        let got = run_op(
            "classify",
            vec![
                ("probabilities", floats(&[1, 3], &[0.25, 0.375, 0.375])),
                ("classes", strings(&["cat", "dog", "bird"])),
            ],
            2,
        )
        .unwrap();
        // A tie between dog and bird: the first listed wins.
        assert_eq!(got[0].to_str().unwrap(), "dog");
        let Value::Dict(Dictionary::String(map)) = &got[1] else {
            panic!("{:?}", got[1])
        };
        let expected: BTreeMap<String, f64> = [("bird", 0.375), ("cat", 0.25), ("dog", 0.375)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(map, &expected);

        let int_classes = Value::List(List {
            elements: [7, 3].iter().map(|&c| Some(ints(&[], &[c]))).collect(),
            dtype: DataType::Int64,
            elem_shape: Some(Vec::new()),
            dynamic: false,
        });
        let got = run_op(
            "classify",
            vec![
                ("probabilities", floats(&[2], &[0.1, 0.9])),
                ("classes", int_classes),
            ],
            2,
        )
        .unwrap();
        assert_eq!(got[0].to_i64_scalar().unwrap(), 3);
        assert!(matches!(&got[1], Value::Dict(Dictionary::Int64(m)) if m.len() == 2));
    }

    #[test]
    fn classify_refuses_mismatched_or_repeated_classes() {
        let few = run_op(
            "classify",
            vec![
                ("probabilities", floats(&[3], &[0.2, 0.3, 0.5])),
                ("classes", strings(&["a", "b"])),
            ],
            2,
        );
        assert!(few.unwrap_err().contains("2 classes for 3 probabilities"));
        let twice = run_op(
            "classify",
            vec![
                ("probabilities", floats(&[2], &[0.2, 0.8])),
                ("classes", strings(&["a", "a"])),
            ],
            2,
        );
        assert!(twice.unwrap_err().contains("listed twice"));
    }

    #[test]
    fn lists_grow_when_dynamic_and_read_unwritten_elements_as_zeros() {
        let make = |dynamic: bool| {
            run_op(
                "make_list",
                vec![
                    ("elem_shape", ints(&[], &[1])),
                    ("elem_shape", ints(&[], &[2])),
                    ("init_length", ints(&[], &[2])),
                    (
                        "dynamic_length",
                        Value::bool(Vec::new(), vec![dynamic]).unwrap(),
                    ),
                ],
                1,
            )
            .unwrap()
            .remove(0)
        };
        let row = floats(&[1, 2], &[1.5, -2.0]);
        let write = |ls: Value, at: i32| {
            run_op(
                "list_write",
                vec![
                    ("ls", ls),
                    ("index", ints(&[], &[at])),
                    ("value", row.clone()),
                ],
                1,
            )
        };
        // A fixed list refuses a write past its end; a dynamic one grows.
        assert!(write(make(false), 2)
            .unwrap_err()
            .contains("fixed length 2"));
        let grown = write(make(true), 3).unwrap().remove(0);
        let length = run_op("list_length", vec![("ls", grown.clone())], 1).unwrap();
        assert_eq!(length[0].to_i64_scalar().unwrap(), 4);
        let gathered = run_op(
            "list_gather",
            vec![("ls", grown.clone()), ("indices", ints(&[2], &[3, 0]))],
            1,
        )
        .unwrap();
        assert_eq!(gathered[0].shape(), vec![2, 1, 2]);
        assert_eq!(
            gathered[0]
                .to_float()
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![1.5, -2.0, 0.0, 0.0]
        );
        // A scatter writes each row of its value.
        let scattered = run_op(
            "list_scatter",
            vec![
                ("ls", grown),
                ("indices", ints(&[1], &[1])),
                ("value", floats(&[1, 1, 2], &[4.0, 5.0])),
            ],
            1,
        )
        .unwrap()
        .remove(0);
        let read = run_op(
            "list_read",
            vec![("ls", scattered), ("index", ints(&[], &[1]))],
            1,
        )
        .unwrap();
        assert_eq!(
            read[0]
                .to_float()
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![4.0, 5.0]
        );
        // A wrong element shape or a negative index is an error.
        let wrong = run_op(
            "list_write",
            vec![
                ("ls", make(true)),
                ("index", ints(&[], &[0])),
                ("value", floats(&[2], &[1.0, 2.0])),
            ],
            1,
        );
        assert!(wrong.unwrap_err().contains("shape"));
        assert!(write(make(true), -1).unwrap_err().contains("below zero"));
    }

    #[test]
    fn the_first_greatest_probability_wins_ties() {
        assert_eq!(first_greatest(&[0.2, 0.4, 0.4]), Some(1));
        assert_eq!(first_greatest(&[0.5, 0.5]), Some(0));
        assert_eq!(first_greatest(&[0.1, f32::NAN, 0.3]), Some(2));
        assert_eq!(first_greatest(&[f32::NAN, 0.9]), Some(0));
        assert_eq!(first_greatest(&[]), None);
    }
}
