//! Feature values to and from `MLFeatureValue`, and the input provider.

use std::collections::BTreeMap;

use objc2::rc::Retained;
use objc2::runtime::{AnyObject, ProtocolObject};
use objc2::AnyThread;
use objc2_core_ml::{
    MLDictionaryFeatureProvider, MLFeatureProvider, MLFeatureType, MLFeatureValue,
};
use objc2_foundation::{NSDictionary, NSNumber, NSString};

use coreml_multifunction_format::naming::quoted_list;
use coreml_multifunction_format::proto::specification::{dictionary_feature_type, feature_type};
use coreml_multifunction_format::proto::{FeatureDescription, FunctionDescription};

use super::super::error::{Error, Result};
use super::super::value::{Dictionary, FeatureValue, Features, Image, PixelFormat};
use super::{array, core_ml_error, image};

/// The declared kind of a feature.
fn kind(declared: &FeatureDescription) -> Option<&feature_type::Type> {
    declared.r#type.as_ref().and_then(|t| t.r#type.as_ref())
}

fn is_optional(declared: &FeatureDescription) -> bool {
    declared.r#type.as_ref().is_some_and(|t| t.is_optional)
}

/// An `MLDictionaryFeatureProvider` holding `inputs` (already checked
/// against `description` by [`check::inputs`]).
pub(super) fn provider(
    description: &FunctionDescription,
    inputs: &Features,
) -> Result<Retained<MLDictionaryFeatureProvider>> {
    let function = description.name.as_str();
    let mut names = Vec::with_capacity(inputs.len());
    let mut values: Vec<Retained<AnyObject>> = Vec::with_capacity(inputs.len());
    for (name, value) in inputs {
        let Some(declared) = description.input.iter().find(|d| &d.name == name) else {
            return Err(Error::UnknownInput {
                function: function.to_string(),
                name: name.clone(),
                expected: quoted_list(description.input.iter().map(|d| d.name.as_str())),
            });
        };
        let value = feature_value(function, declared, value)?;
        names.push(NSString::from_str(name));
        values.push(value.into_super().into_super());
    }
    let names: Vec<&NSString> = names.iter().map(|n| &**n).collect();
    let dictionary = NSDictionary::from_retained_objects(&names, &values);
    // SAFETY: a dictionary from input names to `MLFeatureValue`s, one of
    // the two forms this initializer documents; anything else it reports as
    // an error.
    unsafe {
        MLDictionaryFeatureProvider::initWithDictionary_error(
            MLDictionaryFeatureProvider::alloc(),
            &dictionary,
        )
    }
    .map_err(|e| core_ml_error(&e))
}

/// One input as an `MLFeatureValue`.
fn feature_value(
    function: &str,
    declared: &FeatureDescription,
    value: &FeatureValue,
) -> Result<Retained<MLFeatureValue>> {
    let name = declared.name.as_str();
    Ok(match value {
        FeatureValue::Tensor(tensor) => {
            let array = array::from_tensor(function, name, tensor)?;
            // SAFETY: a class factory taking a valid, filled array.
            unsafe { MLFeatureValue::featureValueWithMultiArray(&array) }
        }
        // SAFETY: a class factory taking a plain integer.
        FeatureValue::Int64(v) => unsafe { MLFeatureValue::featureValueWithInt64(*v) },
        // SAFETY: a class factory taking a plain double.
        FeatureValue::Double(v) => unsafe { MLFeatureValue::featureValueWithDouble(*v) },
        FeatureValue::String(s) => {
            let string = NSString::from_str(s);
            // SAFETY: a class factory taking a valid string.
            unsafe { MLFeatureValue::featureValueWithString(&string) }
        }
        FeatureValue::Image(image) => {
            check_pixels(function, name, image)?;
            let buffer = image::pixel_buffer(image).map_err(|detail| {
                super::backend_error(format!("input {name:?} of function {function:?}: {detail}"))
            })?;
            // SAFETY: a class factory taking a valid pixel buffer, which it
            // retains.
            unsafe { MLFeatureValue::featureValueWithPixelBuffer(&buffer) }
        }
        FeatureValue::Dictionary(dictionary) => dictionary_value(function, declared, dictionary)?,
    })
}

/// Checks an image's pixel count against its size (its fields are public,
/// so `Image::new`'s check may have been skipped).
fn check_pixels(function: &str, name: &str, image: &Image) -> Result<()> {
    let bpp = image.format.bytes_per_pixel();
    let expected = image
        .width
        .checked_mul(image.height)
        .and_then(|n| n.checked_mul(bpp));
    if expected != Some(image.pixels.len()) || image.width == 0 || image.height == 0 {
        return Err(Error::WrongShape {
            function: function.to_string(),
            name: name.to_string(),
            found: vec![image.width, image.height, image.pixels.len()],
            allowed: format!(
                "a non-empty image whose pixels hold width x height x {bpp} bytes ({:?})",
                image.format
            ),
        });
    }
    Ok(())
}

/// A dictionary input: `NSNumber` or `NSString` keys, `NSNumber` values,
/// with the key type the description declares.
fn dictionary_value(
    function: &str,
    declared: &FeatureDescription,
    dictionary: &Dictionary,
) -> Result<Retained<MLFeatureValue>> {
    let declared_keys = match kind(declared) {
        Some(feature_type::Type::DictionaryType(d)) => d.key_type,
        _ => None,
    };
    let (given, wanted) = match (dictionary, declared_keys) {
        (Dictionary::Int64(_), Some(dictionary_feature_type::KeyType::StringKeyType(_))) => {
            ("int64", "string")
        }
        (Dictionary::String(_), Some(dictionary_feature_type::KeyType::Int64KeyType(_))) => {
            ("string", "int64")
        }
        _ => ("", ""),
    };
    if !given.is_empty() {
        return Err(Error::WrongType {
            function: function.to_string(),
            name: declared.name.clone(),
            expected: format!("a dictionary with {wanted} keys"),
            found: format!("a dictionary with {given} keys"),
        });
    }
    let ns: Retained<NSDictionary<AnyObject, NSNumber>> = match dictionary {
        Dictionary::Int64(map) => {
            let keys: Vec<Retained<NSNumber>> = map.keys().map(|&k| NSNumber::new_i64(k)).collect();
            let keys: Vec<&NSNumber> = keys.iter().map(|k| &**k).collect();
            let values: Vec<Retained<NSNumber>> =
                map.values().map(|&v| NSNumber::new_f64(v)).collect();
            let typed = NSDictionary::<NSNumber, NSNumber>::from_retained_objects(&keys, &values);
            // SAFETY: Foundation collections do not keep their type
            // parameters at run time; an `NSNumber` key is an object.
            unsafe { Retained::cast_unchecked(typed) }
        }
        Dictionary::String(map) => {
            let keys: Vec<Retained<NSString>> = map.keys().map(|k| NSString::from_str(k)).collect();
            let keys: Vec<&NSString> = keys.iter().map(|k| &**k).collect();
            let values: Vec<Retained<NSNumber>> =
                map.values().map(|&v| NSNumber::new_f64(v)).collect();
            let typed = NSDictionary::<NSString, NSNumber>::from_retained_objects(&keys, &values);
            // SAFETY: as above, for `NSString` keys.
            unsafe { Retained::cast_unchecked(typed) }
        }
    };
    // SAFETY: keys are all `NSNumber` or all `NSString`, values `NSNumber`,
    // as this factory documents; it reports anything else as an error.
    unsafe { MLFeatureValue::featureValueWithDictionary_error(&ns) }.map_err(|e| core_ml_error(&e))
}

/// Every declared output of `description` in `provider`; optional ones may
/// be absent.
pub(super) fn read_outputs(
    function: &str,
    description: &FunctionDescription,
    provider: &ProtocolObject<dyn MLFeatureProvider>,
) -> Result<Features> {
    let mut outputs = Features::new();
    for declared in &description.output {
        let output_error = |detail: String| Error::Output {
            function: function.to_string(),
            name: declared.name.clone(),
            detail,
        };
        // SAFETY: a lookup by name; Core ML documents nil for a name it
        // does not have.
        let value = unsafe { provider.featureValueForName(&NSString::from_str(&declared.name)) };
        // SAFETY: a property read of a valid feature value.
        let value = value.filter(|v| !unsafe { v.isUndefined() });
        let Some(value) = value else {
            if is_optional(declared) {
                continue;
            }
            return Err(output_error("Core ML did not return it".to_string()));
        };
        let value = read_value(declared, &value).map_err(output_error)?;
        outputs.insert(declared.name.clone(), value);
    }
    Ok(outputs)
}

/// One output value.
fn read_value(
    declared: &FeatureDescription,
    value: &MLFeatureValue,
) -> Result<FeatureValue, String> {
    // Each accessor below is read only for the type `type` reports, as
    // Core ML documents them ("populated value if the type is ...").
    // SAFETY: a property read of a valid feature value.
    let feature_type = unsafe { value.r#type() };
    match feature_type {
        MLFeatureType::MultiArray => {
            // SAFETY: a property read of a multi-array feature value.
            let array = unsafe { value.multiArrayValue() }
                .ok_or("Core ML returned a multi-array feature without an array")?;
            array::read(&array).map(FeatureValue::Tensor)
        }
        // SAFETY: a property read of an int64 feature value.
        MLFeatureType::Int64 => Ok(FeatureValue::Int64(unsafe { value.int64Value() })),
        // SAFETY: a property read of a double feature value.
        MLFeatureType::Double => Ok(FeatureValue::Double(unsafe { value.doubleValue() })),
        MLFeatureType::String => {
            // SAFETY: a property read of a string feature value.
            let string = unsafe { value.stringValue() };
            Ok(FeatureValue::String(string.to_string()))
        }
        MLFeatureType::Dictionary => {
            // SAFETY: a property read of a dictionary feature value.
            let dictionary = unsafe { value.dictionaryValue() };
            read_dictionary(declared, &dictionary)
        }
        MLFeatureType::Image => {
            // SAFETY: a property read of an image feature value.
            let buffer = unsafe { value.imageBufferValue() }
                .ok_or("Core ML returned an image feature without a pixel buffer")?;
            let format = match kind(declared) {
                Some(feature_type::Type::ImageType(image)) => PixelFormat::of_image_type(image),
                _ => None,
            };
            image::read_image(&buffer, format).map(FeatureValue::Image)
        }
        other => Err(format!(
            "Core ML returned a feature of type {} (MLFeatureType), which this crate does not read",
            other.0
        )),
    }
}

/// A dictionary output: scores by integer or string key.
fn read_dictionary(
    declared: &FeatureDescription,
    dictionary: &NSDictionary<AnyObject, NSNumber>,
) -> Result<FeatureValue, String> {
    let (keys, values) = dictionary.to_vecs();
    let mut by_int = BTreeMap::new();
    let mut by_string = BTreeMap::new();
    for (key, value) in keys.iter().zip(&values) {
        let score = value.as_f64();
        if let Some(key) = key.downcast_ref::<NSString>() {
            by_string.insert(key.to_string(), score);
        } else if let Some(key) = key.downcast_ref::<NSNumber>() {
            by_int.insert(key.as_i64(), score);
        } else {
            return Err(
                "Core ML returned a dictionary key that is neither a number nor a string"
                    .to_string(),
            );
        }
    }
    let declared_string_keys = matches!(
        kind(declared),
        Some(feature_type::Type::DictionaryType(d))
            if matches!(d.key_type, Some(dictionary_feature_type::KeyType::StringKeyType(_)))
    );
    match (by_int.is_empty(), by_string.is_empty()) {
        (false, false) => {
            Err("Core ML returned a dictionary mixing number and string keys".to_string())
        }
        (true, false) => Ok(FeatureValue::Dictionary(Dictionary::String(by_string))),
        (false, true) => Ok(FeatureValue::Dictionary(Dictionary::Int64(by_int))),
        (true, true) if declared_string_keys => {
            Ok(FeatureValue::Dictionary(Dictionary::String(by_string)))
        }
        (true, true) => Ok(FeatureValue::Dictionary(Dictionary::Int64(by_int))),
    }
}
