//! `inspect`: what a package holds, as text or JSON.
//!
//! The JSON form is documented in the README ("inspect --json"); its field
//! names are part of the CLI's interface.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::error::{Bytes, Result};
use coreml_multifunction_format::package::Package;
use coreml_multifunction_format::proto::specification::{
    array_feature_type, feature_type, image_feature_type, sequence_feature_type,
    state_feature_type, ArrayFeatureType, SizeRange,
};
use coreml_multifunction_format::proto::{FeatureDescription, FeatureType};

/// Everything `inspect` reports about a package.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The package path, as given.
    pub path: String,
    /// `Model.specificationVersion`.
    pub specification_version: i32,
    /// The oldest OS releases that load this specification version.
    pub minimum_os: &'static str,
    /// Always `"mlProgram"` (other types are refused on open).
    pub model_type: &'static str,
    /// Whether the description uses the multifunction form.
    pub multifunction: bool,
    /// The function a plain load runs.
    pub default_function: String,
    /// The functions, in description order.
    pub functions: Vec<FunctionReport>,
    /// The model metadata.
    pub metadata: MetadataReport,
    /// The weight storage.
    pub weights: WeightsReport,
}

/// One function's interface.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionReport {
    /// Its name.
    pub name: String,
    /// The opset its body targets.
    pub opset: String,
    /// Whether it is the default function.
    pub is_default: bool,
    /// Number of operations in its body (nested blocks not counted).
    pub operation_count: usize,
    /// Bytes of the weights it references, as stored: each distinct blob
    /// once, compressed weights at their compressed size. What a chunk
    /// budget (`chunks = { max-bytes = … }`) is measured against.
    pub weight_bytes: u64,
    /// Its inputs.
    pub inputs: Vec<FeatureReport>,
    /// Its outputs.
    pub outputs: Vec<FeatureReport>,
    /// Its states.
    pub states: Vec<FeatureReport>,
    /// For classifiers: the output holding the predicted label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_feature_name: Option<String>,
    /// For classifiers: the output holding the class probabilities.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_probabilities_name: Option<String>,
    /// The op types the reference CPU backend lacks to run this function
    /// (empty: it runs it). [`report`] leaves it `None`, since this crate
    /// does not link the runtime; the CLI, which does, fills it in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_backend_missing_ops: Option<Vec<String>>,
}

/// One input, output or state.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureReport {
    /// Its name.
    pub name: String,
    /// Its short description, if the model has one.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// `multi_array`, `image`, `int64`, `double`, `string`, `dictionary`,
    /// `sequence`, `state` or `unknown`.
    pub kind: &'static str,
    /// Element type of arrays and states (`fp16`, `fp32`, `fp64`, `int32`,
    /// `int8`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<&'static str>,
    /// The default shape of arrays and states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
    /// Per-dimension ranges of a flexible array; `upper` is absent when
    /// unbounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape_range: Option<Vec<RangeReport>>,
    /// The shapes an enumerated flexible array accepts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enumerated_shapes: Option<Vec<Vec<i64>>>,
    /// Image details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageReport>,
    /// Key type of dictionaries, element type of sequences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub element: Option<&'static str>,
    /// Whether the input may be omitted.
    pub optional: bool,
    /// A one-line summary, as the text output prints it.
    pub summary: String,
}

/// An inclusive size range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RangeReport {
    /// The smallest size.
    pub lower: u64,
    /// The largest size, if bounded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upper: Option<u64>,
}

/// An image feature's format and sizes.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// Default width in pixels.
    pub width: i64,
    /// Default height in pixels.
    pub height: i64,
    /// `RGB`, `BGR`, `GRAYSCALE`, `GRAYSCALE_FLOAT16` or `INVALID`.
    pub color_space: &'static str,
    /// Allowed widths, for flexible images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width_range: Option<RangeReport>,
    /// Allowed heights, for flexible images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height_range: Option<RangeReport>,
    /// Allowed `[width, height]` pairs, for enumerated sizes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enumerated_sizes: Option<Vec<[u64; 2]>>,
}

/// The model metadata.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetadataReport {
    /// Short description.
    pub short_description: String,
    /// Version string.
    pub version: String,
    /// Author.
    pub author: String,
    /// License.
    pub license: String,
    /// User-defined key/value pairs.
    pub user_defined: BTreeMap<String, String>,
}

/// The weight storage of a package.
#[derive(Debug, Clone, Serialize)]
pub struct WeightsReport {
    /// Blobs stored, over all weight files.
    pub blob_count: u64,
    /// Bytes of blob data stored (records and padding excluded).
    pub bytes: u64,
    /// Bytes of blob data by element type.
    pub bytes_by_dtype: BTreeMap<&'static str, u64>,
    /// Weight references in the program (several may share one blob).
    pub references: usize,
    /// The weight files, with their size on disk.
    pub files: Vec<WeightFileReport>,
}

/// One weight file.
#[derive(Debug, Clone, Serialize)]
pub struct WeightFileReport {
    /// The name the model uses for it.
    pub name: String,
    /// Its size on disk.
    pub file_bytes: u64,
    /// Blobs in it.
    pub blob_count: u64,
}

/// Builds the report of an opened package.
pub fn report(package: &Package, shown_path: &str) -> Result<Report> {
    let model = package.model();
    let default_function = package.default_function().to_string();
    let weight_bytes = package.function_weight_bytes()?;
    let functions = package
        .functions()
        .iter()
        .map(|function| {
            let description = &function.description;
            let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
            FunctionReport {
                name: function.name.to_string(),
                opset: function.opset().to_string(),
                is_default: function.name == default_function,
                operation_count: function.block().operations.len(),
                weight_bytes: weight_bytes.get(function.name).copied().unwrap_or(0),
                inputs: description.input.iter().map(feature).collect(),
                outputs: description.output.iter().map(feature).collect(),
                states: description.state.iter().map(feature).collect(),
                predicted_feature_name: non_empty(&description.predicted_feature_name),
                predicted_probabilities_name: non_empty(&description.predicted_probabilities_name),
                reference_backend_missing_ops: None,
            }
        })
        .collect();
    let metadata = package
        .description()
        .metadata
        .as_ref()
        .map(|m| MetadataReport {
            short_description: m.short_description.clone(),
            version: m.version_string.clone(),
            author: m.author.clone(),
            license: m.license.clone(),
            user_defined: m.user_defined.clone(),
        })
        .unwrap_or_default();

    let mut weights = WeightsReport {
        blob_count: 0,
        bytes: 0,
        bytes_by_dtype: BTreeMap::new(),
        references: package.blob_references()?.len(),
        files: Vec::new(),
    };
    for (name, file) in package.blob_files() {
        let records = file.records()?;
        for record in &records {
            weights.bytes += record.size;
            *weights
                .bytes_by_dtype
                .entry(record.data_type.name())
                .or_default() += record.size;
        }
        weights.blob_count += records.len() as u64;
        weights.files.push(WeightFileReport {
            name: name.clone(),
            file_bytes: file.len(),
            blob_count: records.len() as u64,
        });
    }

    Ok(Report {
        path: shown_path.to_string(),
        specification_version: model.specification_version,
        minimum_os: minimum_os(model.specification_version),
        model_type: "mlProgram",
        multifunction: package.is_multifunction(),
        default_function,
        functions,
        metadata,
        weights,
    })
}

/// The OS releases that introduced a specification version.
pub(crate) fn minimum_os(specification_version: i32) -> &'static str {
    match specification_version {
        i32::MIN..=3 => "iOS 12 / macOS 10.14 or earlier",
        4 => "iOS 13 / macOS 10.15",
        5 => "iOS 14 / macOS 11",
        6 => "iOS 15 / macOS 12",
        7 => "iOS 16 / macOS 13",
        8 => "iOS 17 / macOS 14",
        9 => "iOS 18 / macOS 15",
        10 => "iOS 26 / macOS 26",
        _ => "a release newer than iOS 26 / macOS 26",
    }
}

/// The short name of a multi-array element type.
pub(crate) fn array_dtype_name(code: i32) -> &'static str {
    use array_feature_type::ArrayDataType as T;
    match T::try_from(code) {
        Ok(T::Float16) => "fp16",
        Ok(T::Float32) => "fp32",
        Ok(T::Double) => "fp64",
        Ok(T::Int32) => "int32",
        Ok(T::Int8) => "int8",
        Ok(T::InvalidArrayDataType) | Err(_) => "invalid",
    }
}

fn range(range: &SizeRange) -> RangeReport {
    RangeReport {
        lower: range.lower_bound,
        upper: u64::try_from(range.upper_bound).ok(),
    }
}

pub(crate) fn feature(description: &FeatureDescription) -> FeatureReport {
    let mut report = FeatureReport {
        name: description.name.clone(),
        description: description.short_description.clone(),
        kind: "unknown",
        dtype: None,
        shape: None,
        shape_range: None,
        enumerated_shapes: None,
        image: None,
        element: None,
        optional: false,
        summary: String::new(),
    };
    let Some(FeatureType {
        r#type,
        is_optional,
    }) = &description.r#type
    else {
        report.summary = "untyped".to_string();
        return report;
    };
    report.optional = *is_optional;
    match r#type {
        Some(feature_type::Type::Int64Type(_)) => report.kind = "int64",
        Some(feature_type::Type::DoubleType(_)) => report.kind = "double",
        Some(feature_type::Type::StringType(_)) => report.kind = "string",
        Some(feature_type::Type::MultiArrayType(array)) => {
            report.kind = "multi_array";
            fill_array(&mut report, array);
        }
        Some(feature_type::Type::StateType(state)) => {
            report.kind = "state";
            if let Some(state_feature_type::Type::ArrayType(array)) = &state.r#type {
                fill_array(&mut report, array);
            }
        }
        Some(feature_type::Type::ImageType(image)) => {
            report.kind = "image";
            let mut details = ImageReport {
                width: image.width,
                height: image.height,
                color_space: match image_feature_type::ColorSpace::try_from(image.color_space) {
                    Ok(image_feature_type::ColorSpace::Rgb) => "RGB",
                    Ok(image_feature_type::ColorSpace::Bgr) => "BGR",
                    Ok(image_feature_type::ColorSpace::Grayscale) => "GRAYSCALE",
                    Ok(image_feature_type::ColorSpace::GrayscaleFloat16) => "GRAYSCALE_FLOAT16",
                    _ => "INVALID",
                },
                width_range: None,
                height_range: None,
                enumerated_sizes: None,
            };
            match &image.size_flexibility {
                Some(image_feature_type::SizeFlexibility::ImageSizeRange(ranges)) => {
                    details.width_range = ranges.width_range.as_ref().map(range);
                    details.height_range = ranges.height_range.as_ref().map(range);
                }
                Some(image_feature_type::SizeFlexibility::EnumeratedSizes(sizes)) => {
                    details.enumerated_sizes =
                        Some(sizes.sizes.iter().map(|s| [s.width, s.height]).collect());
                }
                None => {}
            }
            report.image = Some(details);
        }
        Some(feature_type::Type::DictionaryType(dictionary)) => {
            report.kind = "dictionary";
            report.element = dictionary.key_type.as_ref().map(|key| match key {
                crate::proto::specification::dictionary_feature_type::KeyType::Int64KeyType(_) => {
                    "int64"
                }
                crate::proto::specification::dictionary_feature_type::KeyType::StringKeyType(_) => {
                    "string"
                }
            });
        }
        Some(feature_type::Type::SequenceType(sequence)) => {
            report.kind = "sequence";
            report.element = sequence.r#type.as_ref().map(|element| match element {
                sequence_feature_type::Type::Int64Type(_) => "int64",
                sequence_feature_type::Type::StringType(_) => "string",
            });
        }
        None => {}
    }
    report.summary = summary(&report);
    report
}

fn fill_array(report: &mut FeatureReport, array: &ArrayFeatureType) {
    report.dtype = Some(array_dtype_name(array.data_type));
    report.shape = Some(array.shape.clone());
    match &array.shape_flexibility {
        Some(array_feature_type::ShapeFlexibility::ShapeRange(ranges)) => {
            report.shape_range = Some(ranges.size_ranges.iter().map(range).collect());
        }
        Some(array_feature_type::ShapeFlexibility::EnumeratedShapes(shapes)) => {
            report.enumerated_shapes =
                Some(shapes.shapes.iter().map(|s| s.shape.clone()).collect());
        }
        None => {}
    }
}

fn dims(shape: &[i64]) -> String {
    let parts: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

fn range_text(range: &RangeReport) -> String {
    match range.upper {
        Some(upper) if upper == range.lower => upper.to_string(),
        Some(upper) => format!("{}..={upper}", range.lower),
        None => format!("{}..", range.lower),
    }
}

fn summary(report: &FeatureReport) -> String {
    let mut text = match report.kind {
        "multi_array" | "state" => {
            let kind = if report.kind == "state" {
                "State"
            } else {
                "MultiArray"
            };
            let dtype = report.dtype.unwrap_or("invalid");
            let shape = match &report.shape_range {
                Some(ranges) => {
                    format!(
                        "[{}]",
                        ranges.iter().map(range_text).collect::<Vec<_>>().join(", ")
                    )
                }
                None => match report.shape.as_deref() {
                    Some(shape) if !shape.is_empty() => dims(shape),
                    // Outputs of flexible models leave their shape open.
                    _ => "(shape known at prediction time)".to_string(),
                },
            };
            let mut text = format!("{kind}<{dtype}> {shape}");
            if let Some(shapes) = &report.enumerated_shapes {
                let list: Vec<String> = shapes.iter().map(|s| dims(s)).collect();
                let _ = write!(text, " (one of {})", list.join(" | "));
            }
            text
        }
        "image" => {
            let image = report.image.as_ref().expect("set for images");
            let mut text = format!(
                "Image {} {}x{}",
                image.color_space, image.width, image.height
            );
            if let (Some(w), Some(h)) = (&image.width_range, &image.height_range) {
                let _ = write!(text, " (width {}, height {})", range_text(w), range_text(h));
            }
            if let Some(sizes) = &image.enumerated_sizes {
                let list: Vec<String> = sizes.iter().map(|[w, h]| format!("{w}x{h}")).collect();
                let _ = write!(text, " (one of {})", list.join(" | "));
            }
            text
        }
        "int64" => "Int64".to_string(),
        "double" => "Double".to_string(),
        "string" => "String".to_string(),
        "dictionary" => format!("Dictionary<{}, Double>", report.element.unwrap_or("?")),
        "sequence" => format!("Sequence<{}>", report.element.unwrap_or("?")),
        _ => "unknown type".to_string(),
    };
    if report.optional {
        text.push_str(", optional");
    }
    text
}

/// The human-readable form of a report.
pub fn to_text(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", report.path);
    let shape = if report.multifunction {
        format!("{} functions", report.functions.len())
    } else {
        "single function".to_string()
    };
    let _ = writeln!(
        out,
        "  specification version {} ({}), {}, {}",
        report.specification_version, report.minimum_os, report.model_type, shape
    );
    let _ = writeln!(out, "  functions:");
    for function in &report.functions {
        let default = if function.is_default {
            " (default)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "    {}{default}: opset {}, {} operations",
            function.name, function.opset, function.operation_count
        );
        let _ = writeln!(
            out,
            "      weights: {} as stored ({} bytes)",
            Bytes(function.weight_bytes),
            function.weight_bytes
        );
        match function.reference_backend_missing_ops.as_deref() {
            None => {}
            Some([]) => {
                let _ = writeln!(out, "      reference CPU backend: runs it");
            }
            Some(missing) => {
                let _ = writeln!(
                    out,
                    "      reference CPU backend: cannot run it, lacks {}",
                    missing.join(", ")
                );
            }
        }
        for (label, features) in [
            ("input ", &function.inputs),
            ("output", &function.outputs),
            ("state ", &function.states),
        ] {
            for feature in features {
                let _ = write!(out, "      {label} {}: {}", feature.name, feature.summary);
                if !feature.description.is_empty() {
                    let _ = write!(out, "  ({})", feature.description.escape_debug());
                }
                out.push('\n');
            }
        }
    }
    let metadata = &report.metadata;
    let _ = writeln!(out, "  metadata:");
    for (label, value) in [
        ("short description", &metadata.short_description),
        ("version", &metadata.version),
        ("author", &metadata.author),
        ("license", &metadata.license),
    ] {
        if !value.is_empty() {
            let _ = writeln!(out, "    {label}: {}", value.escape_debug());
        }
    }
    for (key, value) in &metadata.user_defined {
        let _ = writeln!(out, "    {}: {}", key.escape_debug(), value.escape_debug());
    }
    let weights = &report.weights;
    let by_dtype: Vec<String> = weights
        .bytes_by_dtype
        .iter()
        .map(|(dtype, bytes)| format!("{dtype} {}", Bytes(*bytes)))
        .collect();
    let _ = write!(
        out,
        "  weights: {}, {} of data, {}",
        plural(weights.blob_count, "blob"),
        Bytes(weights.bytes),
        plural(weights.references as u64, "reference")
    );
    if !by_dtype.is_empty() {
        let _ = write!(out, " ({})", by_dtype.join(", "));
    }
    out.push('\n');
    out
}

fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}
