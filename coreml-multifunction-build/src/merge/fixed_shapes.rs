//! Fixed-shape functions: a source function with flexible inputs fixed to
//! shapes its description allows (coremltools'
//! `materialize_dynamic_shape_mlmodel`).
//!
//! This file holds the interface side: which shapes an input allows, and
//! the fixed function's description. The body is rebuilt by the format
//! crate's [`materialize`] (pure: type inference at the fixed shapes,
//! shape arithmetic folded into constants), and its weights stay the
//! source's own blob references, so the merge shares them like any other.

use std::collections::BTreeMap;

use coreml_multifunction_format::mil::materialize::{self, Materialized};
use coreml_multifunction_format::proto::mil_spec;
use coreml_multifunction_format::proto::specification::{
    array_feature_type::ShapeFlexibility, feature_type, SizeRange,
};
use coreml_multifunction_format::proto::{FeatureDescription, FunctionDescription};

use crate::error::shape_text;

/// Why an input cannot take a shape: the shapes it allows, in words.
pub(super) struct NotAllowed {
    pub allowed: String,
}

/// Checks that input `input` (of `description`) allows `shape`, and that
/// `function`'s MIL input agrees.
pub(super) fn check_allowed(
    input: &FeatureDescription,
    function: &mil_spec::Function,
    shape: &[u64],
) -> Result<(), NotAllowed> {
    let not = |allowed: String| Err(NotAllowed { allowed });
    let Some(feature_type::Type::MultiArrayType(array)) =
        input.r#type.as_ref().and_then(|t| t.r#type.as_ref())
    else {
        return not(
            "no other shape: only multi-array inputs can be fixed (this is an image or \
             scalar input)"
                .to_string(),
        );
    };
    let declared: Vec<u64> = array.shape.iter().map(|&d| d.max(0) as u64).collect();
    match &array.shape_flexibility {
        Some(ShapeFlexibility::EnumeratedShapes(enumerated)) => {
            let shapes: Vec<Vec<u64>> = enumerated
                .shapes
                .iter()
                .map(|s| s.shape.iter().map(|&d| d.max(0) as u64).collect())
                .collect();
            if !shapes.iter().any(|s| s == shape) {
                let listed: Vec<String> = shapes.iter().map(|s| shape_text(s)).collect();
                return not(format!("one of {}", listed.join(", ")));
            }
        }
        Some(ShapeFlexibility::ShapeRange(range)) => {
            let text = range_text(&range.size_ranges);
            let fits = range.size_ranges.len() == shape.len()
                && range.size_ranges.iter().zip(shape).all(|(r, &d)| {
                    d >= r.lower_bound && (r.upper_bound < 0 || d <= r.upper_bound as u64)
                });
            if !fits {
                return not(text);
            }
        }
        None => {
            if declared != shape {
                return not(format!(
                    "only {} (the input is not flexible)",
                    shape_text(&declared)
                ));
            }
        }
    }
    // The program's own input type must agree: the same rank, and every
    // dimension it fixes equal.
    let mil_input = function.inputs.iter().find(|i| i.name == input.name);
    if let Some(tensor) = mil_input.and_then(|i| match i.r#type.as_ref()?.r#type.as_ref()? {
        mil_spec::value_type::Type::TensorType(t) => Some(t),
        _ => None,
    }) {
        let dims = materialize::declared_dims(tensor);
        let agrees = dims.len() == shape.len()
            && dims
                .iter()
                .zip(shape)
                .all(|(d, &s)| d.is_none_or(|d| d == s));
        if !agrees {
            return not(format!(
                "{} (the program's declared input type)",
                coreml_multifunction_format::mil::infer::shape_text(&dims)
            ));
        }
    }
    Ok(())
}

/// `[1, 1..=64]`; an unbounded dimension is `1..`.
fn range_text(ranges: &[SizeRange]) -> String {
    let dims: Vec<String> = ranges
        .iter()
        .map(|r| match r.upper_bound {
            u if u < 0 => format!("{}..", r.lower_bound),
            u if u as u64 == r.lower_bound => r.lower_bound.to_string(),
            u => format!("{}..={u}", r.lower_bound),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// Builds the fixed-shape function and its description from the source's.
pub(super) fn fix(
    function: &mil_spec::Function,
    description: &FunctionDescription,
    shapes: &BTreeMap<String, Vec<u64>>,
) -> Result<(mil_spec::Function, FunctionDescription), String> {
    let Materialized {
        function,
        output_shapes,
    } = materialize::materialize(function, shapes).map_err(|e| e.to_string())?;
    let mut description = description.clone();
    for input in &mut description.input {
        let Some(shape) = shapes.get(&input.name) else {
            continue;
        };
        if let Some(feature_type::Type::MultiArrayType(array)) =
            input.r#type.as_mut().and_then(|t| t.r#type.as_mut())
        {
            array.shape = shape.iter().map(|&d| d as i64).collect();
            array.shape_flexibility = None;
        }
    }
    for output in &mut description.output {
        let Some(Some(shape)) = output_shapes.get(&output.name) else {
            continue;
        };
        if let Some(feature_type::Type::MultiArrayType(array)) =
            output.r#type.as_mut().and_then(|t| t.r#type.as_mut())
        {
            array.shape = shape.iter().map(|&d| d as i64).collect();
        }
    }
    Ok((function, description))
}
