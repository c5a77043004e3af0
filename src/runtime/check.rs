//! Checking inputs against a function's description before any backend
//! sees them: a wrong name, type or shape is a clear error here, never an
//! Objective-C exception or a wrong answer later.

use coreml_multifunction_format::naming::quoted_list;
use coreml_multifunction_format::proto::specification::{
    array_feature_type, feature_type, image_feature_type, ArrayFeatureType, ImageFeatureType,
    SizeRange,
};
use coreml_multifunction_format::proto::{FeatureDescription, FunctionDescription};

use super::error::{Error, Result};
use super::value::{FeatureValue, Features, PixelFormat};
use coreml_multifunction_format::DataType;

/// Checks `inputs` against the inputs `description` declares.
pub fn inputs(description: &FunctionDescription, inputs: &Features) -> Result<()> {
    let function = &description.name;
    for name in inputs.keys() {
        if !description.input.iter().any(|d| &d.name == name) {
            return Err(Error::UnknownInput {
                function: function.clone(),
                name: name.clone(),
                expected: quoted_list(description.input.iter().map(|d| d.name.as_str())),
            });
        }
    }
    for declared in &description.input {
        match inputs.get(&declared.name) {
            Some(value) => input(function, declared, value)?,
            None if is_optional(declared) => {}
            None => {
                return Err(Error::MissingInput {
                    function: function.clone(),
                    name: declared.name.clone(),
                })
            }
        }
    }
    Ok(())
}

fn is_optional(declared: &FeatureDescription) -> bool {
    declared.r#type.as_ref().is_some_and(|t| t.is_optional)
}

fn input(function: &str, declared: &FeatureDescription, value: &FeatureValue) -> Result<()> {
    let wrong_type = |expected: String| Error::WrongType {
        function: function.to_string(),
        name: declared.name.clone(),
        expected,
        found: value.kind(),
    };
    let Some(kind) = declared.r#type.as_ref().and_then(|t| t.r#type.as_ref()) else {
        return Err(Error::InvalidModel {
            function: function.to_string(),
            detail: format!("input {:?} has no type", declared.name),
        });
    };
    match (kind, value) {
        (feature_type::Type::MultiArrayType(array), FeatureValue::Tensor(tensor)) => {
            let expected = DataType::from_array_data_type(array.data_type);
            if expected != Some(tensor.data_type()) {
                let expected = expected.map_or("an array of an unknown type".to_string(), |t| {
                    format!("a {t} tensor")
                });
                return Err(wrong_type(expected));
            }
            if !shape_allowed(array, tensor.shape()) {
                return Err(Error::WrongShape {
                    function: function.to_string(),
                    name: declared.name.clone(),
                    found: tensor.shape().to_vec(),
                    allowed: allowed_shapes(array),
                });
            }
            Ok(())
        }
        (feature_type::Type::MultiArrayType(array), _) => Err(wrong_type(format!(
            "a {} tensor",
            DataType::from_array_data_type(array.data_type).map_or("?", DataType::name)
        ))),
        (feature_type::Type::Int64Type(_), FeatureValue::Int64(_))
        | (feature_type::Type::DoubleType(_), FeatureValue::Double(_))
        | (feature_type::Type::StringType(_), FeatureValue::String(_))
        | (feature_type::Type::DictionaryType(_), FeatureValue::Dictionary(_)) => Ok(()),
        (feature_type::Type::Int64Type(_), _) => Err(wrong_type("an int64".to_string())),
        (feature_type::Type::DoubleType(_), _) => Err(wrong_type("a double".to_string())),
        (feature_type::Type::StringType(_), _) => Err(wrong_type("a string".to_string())),
        (feature_type::Type::DictionaryType(_), _) => Err(wrong_type("a dictionary".to_string())),
        (feature_type::Type::ImageType(image), FeatureValue::Image(given)) => {
            let format = PixelFormat::of_image_type(image);
            if format != Some(given.format) {
                return Err(wrong_type(format!(
                    "an image in {}",
                    format.map_or("an unsupported color space".to_string(), |f| format!(
                        "{f:?}"
                    ))
                )));
            }
            if !image_size_allowed(image, given.width, given.height) {
                return Err(Error::WrongShape {
                    function: function.to_string(),
                    name: declared.name.clone(),
                    found: vec![given.width, given.height],
                    allowed: format!("images of {} (width x height)", allowed_image_sizes(image)),
                });
            }
            Ok(())
        }
        (feature_type::Type::ImageType(image), _) => Err(wrong_type(format!(
            "an image of {}",
            allowed_image_sizes(image)
        ))),
        (feature_type::Type::SequenceType(_), _) | (feature_type::Type::StateType(_), _) => {
            Err(Error::InvalidModel {
                function: function.to_string(),
                detail: format!(
                    "input {:?} has a type this crate cannot pass",
                    declared.name
                ),
            })
        }
    }
}

fn in_range(range: Option<&SizeRange>, value: usize) -> bool {
    match range {
        None => true,
        Some(range) => {
            value as u64 >= range.lower_bound
                && (range.upper_bound < 0 || value as u64 <= range.upper_bound as u64)
        }
    }
}

fn image_size_allowed(image: &ImageFeatureType, width: usize, height: usize) -> bool {
    match &image.size_flexibility {
        Some(image_feature_type::SizeFlexibility::ImageSizeRange(ranges)) => {
            in_range(ranges.width_range.as_ref(), width)
                && in_range(ranges.height_range.as_ref(), height)
        }
        Some(image_feature_type::SizeFlexibility::EnumeratedSizes(sizes)) => sizes
            .sizes
            .iter()
            .any(|s| s.width == width as u64 && s.height == height as u64),
        None => image.width == width as i64 && image.height == height as i64,
    }
}

fn allowed_image_sizes(image: &ImageFeatureType) -> String {
    match &image.size_flexibility {
        Some(image_feature_type::SizeFlexibility::ImageSizeRange(ranges)) => format!(
            "{} x {}",
            range_text(ranges.width_range.as_ref()),
            range_text(ranges.height_range.as_ref())
        ),
        Some(image_feature_type::SizeFlexibility::EnumeratedSizes(sizes)) => sizes
            .sizes
            .iter()
            .map(|s| format!("{}x{}", s.width, s.height))
            .collect::<Vec<_>>()
            .join(" | "),
        None => format!("{}x{}", image.width, image.height),
    }
}

/// Whether `shape` is one the array feature accepts.
pub fn shape_allowed(array: &ArrayFeatureType, shape: &[usize]) -> bool {
    match &array.shape_flexibility {
        Some(array_feature_type::ShapeFlexibility::ShapeRange(ranges)) => {
            ranges.size_ranges.len() == shape.len()
                && ranges
                    .size_ranges
                    .iter()
                    .zip(shape)
                    .all(|(range, &dim)| in_range(Some(range), dim))
        }
        Some(array_feature_type::ShapeFlexibility::EnumeratedShapes(shapes)) => {
            shapes.shapes.iter().any(|s| {
                s.shape.len() == shape.len()
                    && s.shape.iter().zip(shape).all(|(&a, &b)| a == b as i64)
            })
        }
        None => {
            array.shape.is_empty()
                || (array.shape.len() == shape.len()
                    && array.shape.iter().zip(shape).all(|(&a, &b)| a == b as i64))
        }
    }
}

/// The shapes an array feature accepts, as an error message shows them.
pub fn allowed_shapes(array: &ArrayFeatureType) -> String {
    let dims = |shape: &[i64]| format!("{shape:?}");
    match &array.shape_flexibility {
        Some(array_feature_type::ShapeFlexibility::ShapeRange(ranges)) => format!(
            "[{}]",
            ranges
                .size_ranges
                .iter()
                .map(|r| range_text(Some(r)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(array_feature_type::ShapeFlexibility::EnumeratedShapes(shapes)) => format!(
            "one of {}",
            shapes
                .shapes
                .iter()
                .map(|s| dims(&s.shape))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        None => dims(&array.shape),
    }
}

fn range_text(range: Option<&SizeRange>) -> String {
    match range {
        None => "any".to_string(),
        Some(r) if r.upper_bound < 0 => format!("{}..", r.lower_bound),
        Some(r) if r.upper_bound as u64 == r.lower_bound => r.lower_bound.to_string(),
        Some(r) => format!("{}..={}", r.lower_bound, r.upper_bound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::tensor::Tensor;
    use coreml_multifunction_format::proto::specification::{
        array_feature_type::ShapeRange, ArrayFeatureType, FeatureType,
    };

    fn array(data_type: array_feature_type::ArrayDataType, shape: &[i64]) -> FeatureDescription {
        FeatureDescription {
            name: "x".into(),
            short_description: String::new(),
            r#type: Some(FeatureType {
                r#type: Some(feature_type::Type::MultiArrayType(ArrayFeatureType {
                    shape: shape.to_vec(),
                    data_type: data_type as i32,
                    ..Default::default()
                })),
                is_optional: false,
            }),
        }
    }

    fn function(inputs: Vec<FeatureDescription>) -> FunctionDescription {
        FunctionDescription {
            name: "f".into(),
            input: inputs,
            ..Default::default()
        }
    }

    fn given(value: FeatureValue) -> Features {
        Features::from([("x".to_string(), value)])
    }

    #[test]
    fn fixed_shapes_and_types_are_enforced() {
        let f = function(vec![array(
            array_feature_type::ArrayDataType::Float32,
            &[1, 4],
        )]);
        assert!(inputs(&f, &given(Tensor::<f32>::zeros([1, 4]).unwrap().into())).is_ok());
        let wrong_shape = inputs(&f, &given(Tensor::<f32>::zeros([1, 5]).unwrap().into()));
        assert!(
            matches!(wrong_shape, Err(Error::WrongShape { ref allowed, .. }) if allowed == "[1, 4]")
        );
        let wrong_type = inputs(&f, &given(Tensor::<i32>::zeros([1, 4]).unwrap().into()));
        assert!(
            matches!(wrong_type, Err(Error::WrongType { ref expected, .. }) if expected == "a fp32 tensor")
        );
        assert!(matches!(
            inputs(&f, &Features::new()),
            Err(Error::MissingInput { .. })
        ));
        let mut extra = given(Tensor::<f32>::zeros([1, 4]).unwrap().into());
        extra.insert("y".into(), FeatureValue::Int64(1));
        assert!(matches!(
            inputs(&f, &extra),
            Err(Error::UnknownInput { .. })
        ));
    }

    #[test]
    fn flexible_shapes_accept_their_range_and_name_it_otherwise() {
        let mut description = array(array_feature_type::ArrayDataType::Float16, &[1, 4, 8]);
        if let Some(feature_type::Type::MultiArrayType(a)) =
            description.r#type.as_mut().unwrap().r#type.as_mut()
        {
            a.shape_flexibility = Some(array_feature_type::ShapeFlexibility::ShapeRange(
                ShapeRange {
                    size_ranges: vec![
                        SizeRange {
                            lower_bound: 1,
                            upper_bound: 1,
                        },
                        SizeRange {
                            lower_bound: 1,
                            upper_bound: 16,
                        },
                        SizeRange {
                            lower_bound: 8,
                            upper_bound: 8,
                        },
                    ],
                },
            ));
        }
        let f = function(vec![description]);
        let tensor = |n| FeatureValue::from(Tensor::<half::f16>::zeros([1, n, 8]).unwrap());
        assert!(inputs(&f, &given(tensor(16))).is_ok());
        let error = inputs(&f, &given(tensor(17))).unwrap_err();
        assert!(error.to_string().contains("[1, 1..=16, 8]"), "{error}");
    }
}
