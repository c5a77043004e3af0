//! The values a model takes and returns: tensors, scalars, strings, images
//! and dictionaries, by name.

use std::collections::BTreeMap;

use super::tensor::{AnyTensor, Element, Tensor};
use coreml_multifunction_format::proto::specification::ImageFeatureType;

/// One input, output or state value.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue {
    /// A multi-array.
    Tensor(AnyTensor),
    /// An integer scalar.
    Int64(i64),
    /// A floating-point scalar.
    Double(f64),
    /// A string.
    String(String),
    /// An image.
    Image(Image),
    /// A dictionary of scores (classifier probabilities).
    Dictionary(Dictionary),
}

impl FeatureValue {
    /// A one-word description of the kind of value, for messages.
    pub fn kind(&self) -> String {
        match self {
            FeatureValue::Tensor(t) => format!("a {} tensor", t.data_type()),
            FeatureValue::Int64(_) => "an int64".to_string(),
            FeatureValue::Double(_) => "a double".to_string(),
            FeatureValue::String(_) => "a string".to_string(),
            FeatureValue::Image(_) => "an image".to_string(),
            FeatureValue::Dictionary(_) => "a dictionary".to_string(),
        }
    }

    /// The tensor of element type `T`, if this is one.
    pub fn tensor<T: Element>(&self) -> Option<&Tensor<T>> {
        match self {
            FeatureValue::Tensor(tensor) => T::unwrap_ref(tensor),
            _ => None,
        }
    }
}

impl<T: Element> From<Tensor<T>> for FeatureValue {
    fn from(tensor: Tensor<T>) -> Self {
        FeatureValue::Tensor(tensor.into())
    }
}

/// The pixel layouts of image features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 8-bit red, green, blue, interleaved (3 bytes a pixel).
    Rgb8,
    /// 8-bit blue, green, red, interleaved (3 bytes a pixel).
    Bgr8,
    /// 8-bit gray (1 byte a pixel).
    Gray8,
    /// 16-bit float gray (2 bytes a pixel, little-endian).
    GrayF16,
}

impl PixelFormat {
    /// The pixel format an image feature's color space calls for, if it
    /// names a known one.
    pub fn of_image_type(image: &ImageFeatureType) -> Option<PixelFormat> {
        use coreml_multifunction_format::proto::specification::image_feature_type::ColorSpace;
        match ColorSpace::try_from(image.color_space).ok()? {
            ColorSpace::Rgb => Some(PixelFormat::Rgb8),
            ColorSpace::Bgr => Some(PixelFormat::Bgr8),
            ColorSpace::Grayscale => Some(PixelFormat::Gray8),
            ColorSpace::GrayscaleFloat16 => Some(PixelFormat::GrayF16),
            ColorSpace::InvalidColorSpace => None,
        }
    }

    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Gray8 => 1,
            PixelFormat::GrayF16 => 2,
        }
    }
}

/// Raw pixels of an image feature, rows top to bottom, no padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The pixel layout.
    pub format: PixelFormat,
    /// `width * height * format.bytes_per_pixel()` bytes.
    pub pixels: Vec<u8>,
}

impl Image {
    /// An image, checking that the pixel buffer has the right length.
    pub fn new(width: usize, height: usize, format: PixelFormat, pixels: Vec<u8>) -> Option<Image> {
        let expected = width
            .checked_mul(height)?
            .checked_mul(format.bytes_per_pixel())?;
        (pixels.len() == expected).then_some(Image {
            width,
            height,
            format,
            pixels,
        })
    }
}

/// A dictionary feature: scores by integer or string key.
#[derive(Debug, Clone, PartialEq)]
pub enum Dictionary {
    /// Keyed by integers.
    Int64(BTreeMap<i64, f64>),
    /// Keyed by strings.
    String(BTreeMap<String, f64>),
}

/// Named feature values: a function's inputs or outputs.
pub type Features = BTreeMap<String, FeatureValue>;

/// A Rust value that can be passed as a model input.
pub trait IntoFeature {
    /// The feature value (a copy of the data).
    fn to_feature(&self) -> FeatureValue;
}

/// A Rust value that a model output can be turned into.
pub trait FromFeature: Sized {
    /// What the output must be, for messages ("a fp16 tensor").
    fn expected() -> String;
    /// The value, if the feature is of this kind.
    fn from_feature(value: FeatureValue) -> Option<Self>;
}

impl<T: Element> IntoFeature for Tensor<T> {
    fn to_feature(&self) -> FeatureValue {
        FeatureValue::Tensor(T::wrap(self.clone()))
    }
}

impl<T: Element> FromFeature for Tensor<T> {
    fn expected() -> String {
        format!("a {} tensor", T::DATA_TYPE)
    }
    fn from_feature(value: FeatureValue) -> Option<Self> {
        match value {
            FeatureValue::Tensor(tensor) => T::unwrap(tensor).ok(),
            _ => None,
        }
    }
}

macro_rules! scalar_feature {
    ($type:ty, $variant:ident, $expected:literal) => {
        impl IntoFeature for $type {
            fn to_feature(&self) -> FeatureValue {
                FeatureValue::$variant(self.clone())
            }
        }
        impl FromFeature for $type {
            fn expected() -> String {
                $expected.to_string()
            }
            fn from_feature(value: FeatureValue) -> Option<Self> {
                match value {
                    FeatureValue::$variant(inner) => Some(inner),
                    _ => None,
                }
            }
        }
    };
}

scalar_feature!(i64, Int64, "an int64");
scalar_feature!(f64, Double, "a double");
scalar_feature!(String, String, "a string");
scalar_feature!(Image, Image, "an image");
scalar_feature!(Dictionary, Dictionary, "a dictionary");

impl IntoFeature for FeatureValue {
    fn to_feature(&self) -> FeatureValue {
        self.clone()
    }
}

impl FromFeature for FeatureValue {
    fn expected() -> String {
        "a value".to_string()
    }
    fn from_feature(value: FeatureValue) -> Option<Self> {
        Some(value)
    }
}

/// Removes output `name` from `outputs` as a `T`: what generated code calls
/// for each declared output.
pub fn take<T: FromFeature>(
    outputs: &mut Features,
    function: &str,
    name: &str,
) -> super::Result<T> {
    let error = |detail: String| super::Error::Output {
        function: function.to_string(),
        name: name.to_string(),
        detail,
    };
    let value = outputs
        .remove(name)
        .ok_or_else(|| error("the backend did not return it".to_string()))?;
    let found = value.kind();
    T::from_feature(value).ok_or_else(|| error(format!("expected {}, got {found}", T::expected())))
}
