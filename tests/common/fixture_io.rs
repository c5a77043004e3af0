//! The committed fixtures' inputs and PyTorch's outputs (`tests/fixtures/io`),
//! and how close a backend must come to them: shared by the reference
//! backend's tests and the Core ML backend's (Apple only).
//!
//! Tolerances: `|ours - torch| <= atol + rtol |torch|`, per fixture model
//! ([`tolerance`]).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use coreml_multifunction::half::f16;
use coreml_multifunction::proto::specification::feature_type;
use coreml_multifunction::proto::{FeatureDescription, FunctionDescription};
use coreml_multifunction::runtime::{DataType, FeatureValue, Features, Image, PixelFormat, Tensor};
use ndarray::ArrayD;

use super::common;

/// A `.npy` file of any of the element types the fixtures use, or a
/// classifier's output as the CLI's `predict` writes it (`.json`: a JSON
/// string or integer label, an object from class to probability).
#[derive(Debug, Clone)]
pub enum Npy {
    F16(ArrayD<f16>),
    F32(ArrayD<f32>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    U8(ArrayD<u8>),
    /// A string label.
    Text(String),
    /// Probabilities by class (int64 classes as their decimal strings).
    Scores(BTreeMap<String, f64>),
}

impl Npy {
    pub fn read(path: &Path) -> Npy {
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(path).unwrap();
            return match serde_json::from_str(&text).unwrap() {
                serde_json::Value::String(s) => Npy::Text(s),
                serde_json::Value::Number(n) => Npy::I64(array_of(&[], vec![n.as_i64().unwrap()])),
                serde_json::Value::Object(map) => Npy::Scores(
                    map.into_iter()
                        .map(|(k, v)| (k, v.as_f64().unwrap()))
                        .collect(),
                ),
                other => panic!("{}: unexpected JSON {other}", path.display()),
            };
        }
        let npy = npyz::NpyFile::new(std::io::BufReader::new(File::open(path).unwrap())).unwrap();
        assert!(
            npy.order() == npyz::Order::C || npy.shape().len() < 2,
            "{}",
            path.display()
        );
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let npyz::DType::Plain(type_str) = npy.dtype() else {
            panic!("{}: a structured array", path.display())
        };
        let array = |data| ArrayD::from_shape_vec(shape.clone(), data).unwrap();
        use npyz::TypeChar::{Float, Int, Uint};
        match (type_str.type_char(), type_str.size_field()) {
            (Float, 2) => Npy::F16(array_of(&shape, npy.into_vec().unwrap())),
            (Float, 4) => Npy::F32(array_of(&shape, npy.into_vec().unwrap())),
            (Int, 4) => Npy::I32(array_of(&shape, npy.into_vec().unwrap())),
            (Int, 8) => Npy::I64(array_of(&shape, npy.into_vec().unwrap())),
            (Uint, 1) => Npy::U8(array(npy.into_vec().unwrap())),
            other => panic!("{}: unexpected dtype {other:?}", path.display()),
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        match self {
            Npy::F16(a) => a.shape().to_vec(),
            Npy::F32(a) => a.shape().to_vec(),
            Npy::I32(a) => a.shape().to_vec(),
            Npy::I64(a) => a.shape().to_vec(),
            Npy::U8(a) => a.shape().to_vec(),
            Npy::Text(_) => Vec::new(),
            Npy::Scores(map) => vec![map.len()],
        }
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Npy::F16(a) => a.iter().map(|v| v.to_f32()).collect(),
            Npy::F32(a) => a.iter().copied().collect(),
            Npy::I32(a) => a.iter().map(|&v| v as f32).collect(),
            Npy::I64(a) => a.iter().map(|&v| v as f32).collect(),
            Npy::U8(a) => a.iter().map(|&v| f32::from(v)).collect(),
            Npy::Text(_) => Vec::new(),
            Npy::Scores(map) => map.values().map(|&v| v as f32).collect(),
        }
    }
}

pub fn array_of<T>(shape: &[usize], data: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(shape.to_vec(), data).unwrap()
}

/// One step of an `io/<name>/steps.json`.
#[derive(Debug, Clone)]
pub struct Step {
    pub function: String,
    pub inputs: BTreeMap<String, Npy>,
    pub outputs: BTreeMap<String, Npy>,
    pub states: BTreeMap<String, Npy>,
}

pub fn io_dir(name: &str) -> PathBuf {
    common::fixtures().join("io").join(name)
}

pub fn steps(name: &str) -> Vec<Step> {
    let dir = io_dir(name);
    let text = std::fs::read_to_string(dir.join("steps.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = |step: &serde_json::Value, kind: &str| -> BTreeMap<String, Npy> {
        step[kind]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), Npy::read(&dir.join(v.as_str().unwrap()))))
            .collect()
    };
    json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| Step {
            function: step["function"].as_str().unwrap().to_string(),
            inputs: files(step, "inputs"),
            outputs: files(step, "outputs"),
            states: files(step, "states"),
        })
        .collect()
}

/// Every `io/<name>` fixture of a source package, sorted (not those of
/// fixed-shape functions, which `materializations.json` lists, nor the
/// conversations of stateful chunk fixtures, which `chunks.json` lists:
/// their steps name functions of a merge).
pub fn io_fixtures() -> Vec<String> {
    let mut fixed: std::collections::BTreeSet<String> = common::materializations()
        .into_iter()
        .flat_map(|m| m.targets.into_iter().map(|t| t.io))
        .collect();
    fixed.extend(stateful_chunk_conversations());
    let mut names: Vec<String> = std::fs::read_dir(common::fixtures().join("io"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !fixed.contains(name))
        .collect();
    names.sort();
    assert!(names.len() >= 18, "io fixtures missing: {names:?}");
    names
}

/// The `io` of every stateful fixture of `chunks.json` (none without it).
fn stateful_chunk_conversations() -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(common::fixtures().join("chunks.json")) else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["fixtures"]
        .as_object()
        .unwrap()
        .values()
        .filter(|fixture| fixture["stateful"].as_bool() == Some(true))
        .map(|fixture| fixture["io"].as_str().unwrap().to_string())
        .collect()
}

/// The input `npy` as the declared feature wants it: arrays converted to
/// the declared element type (torch's fp32 inputs rounded to fp16 for fp16
/// models, as coremltools' predict does), images as interleaved bytes.
pub fn feature(npy: &Npy, declared: &FeatureDescription) -> FeatureValue {
    let kind = declared.r#type.as_ref().unwrap().r#type.as_ref().unwrap();
    let shape = npy.shape();
    match kind {
        feature_type::Type::MultiArrayType(array) => {
            let values = npy.to_f32();
            match DataType::from_array_data_type(array.data_type).unwrap() {
                DataType::Float16 => Tensor::new(
                    shape,
                    values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
                )
                .unwrap()
                .into(),
                DataType::Float32 => Tensor::new(shape, values).unwrap().into(),
                DataType::Int32 => {
                    Tensor::new(shape, values.iter().map(|&v| v as i32).collect::<Vec<_>>())
                        .unwrap()
                        .into()
                }
                other => panic!("no fixture input is {other}"),
            }
        }
        feature_type::Type::ImageType(image) => {
            let Npy::U8(pixels) = npy else {
                panic!("image inputs are uint8")
            };
            let format = PixelFormat::of_image_type(image).unwrap();
            FeatureValue::Image(
                Image::new(shape[1], shape[0], format, pixels.iter().copied().collect()).unwrap(),
            )
        }
        other => panic!("no fixture input is {other:?}"),
    }
}

pub fn inputs(description: &FunctionDescription, step: &Step) -> Features {
    step.inputs
        .iter()
        .map(|(name, npy)| {
            let declared = description
                .input
                .iter()
                .find(|d| &d.name == name)
                .unwrap_or_else(|| panic!("{} has no input {name}", description.name));
            (name.clone(), feature(npy, declared))
        })
        .collect()
}

pub fn values(value: &FeatureValue) -> (Vec<usize>, Vec<f32>) {
    match value {
        FeatureValue::Tensor(t) => (t.shape().to_vec(), t.to_f32().into_vec()),
        other => panic!("expected a tensor, got {}", other.kind()),
    }
}

/// `(atol, rtol)` against torch for a fixture model: `|ours - torch| <=
/// atol + rtol * |torch|`. Compressed models are compared with torch's
/// uncompressed model, so their compression error counts; that the
/// decompression itself is exact is checked separately, against
/// coremltools' own decompression.
pub fn tolerance(fixture: &str) -> (f32, f32) {
    match fixture {
        "precision_fp32" | "tensor_ops" | "indexing_ops" | "control_flow" | "list_loop" => FP32,
        // Issue 23 (opsvq): fp32 programs; w8a8's activation scales are
        // powers of two, so torch's quantization rounds as coremltools'
        // does and only the convolutions' summation order differs.
        "w8a8" | "sampling_grids" | "nms_detector" | "nms_detector_ios15" | "crop_resize_boxes"
        | "crop_resize_roi" | "resize_like" | "conv_quantized" | "quantize_outputs" => FP32,
        // issue 23 (opsmisc): fp32 programs against torch and numpy.
        "einsum" | "misc_mil" => FP32,
        "densenet" | "efficientnet" | "regnet" | "convnext" | "swin" | "vit" | "unet"
        | "deeplab" | "bert" | "gpt2" | "t5" | "whisper_encoder" => DEEP_FP32,
        "resnet" | "mobilenet_v3" | "diffusion_unet" | "vae_decoder" | "vae_encoder" | "llama"
        | "chunk_cnn" => DEEP_FP16,
        "lstm" | "gru" | "rnn" => RECURRENT_FP16,
        "compressed_int8" | "target_ios17_int8" => INT8,
        "compressed_int4" | "compressed_palettized" | "target_ios17_palettized" => FOUR_BIT,
        _ => FP16,
    }
}

/// fp32 weights: only the order of summation differs from torch.
pub const FP32: (f32, f32) = (1e-5, 1e-5);
/// fp32 networks tens of layers deep: rounding accumulates over the layers
/// (torch's own fp64-against-fp32 difference reaches 1.4e-5 on deeplab).
pub const DEEP_FP32: (f32, f32) = (1e-4, 1e-4);
/// fp16 networks tens of layers deep, where every layer's fp16 weights and
/// activations round: torch in fp16 differs from torch in fp32 by up to
/// 7.8e-3 (vae_decoder), so about a fourfold margin. A wrong op (a flipped
/// align_corners, the wrong pad mode) errs by 0.15 and more.
pub const DEEP_FP16: (f32, f32) = (3e-2, 3e-2);
/// fp16 recurrent layers, whose rounding compounds over the time steps
/// (torch fp16 against fp32: up to 2.1e-3 on the GRU).
pub const RECURRENT_FP16: (f32, f32) = (1e-2, 1e-2);
/// fp16 weights and inputs: about 5e-4 relative each, so 3e-3 leaves a
/// margin of five over the largest error seen (6.1e-4).
pub const FP16: (f32, f32) = (3e-3, 3e-3);
/// int8 weights: their quantization error (up to 2.4e-3 here) on top.
pub const INT8: (f32, f32) = (1e-2, 1e-2);
/// 4-bit weights: their quantization error (up to 3.3e-2 here) on top.
pub const FOUR_BIT: (f32, f32) = (5e-2, 5e-2);

/// The largest `|got - want|`, asserting every element within tolerance;
/// integer outputs (indices, argmax, counts) must match exactly.
pub fn assert_close(what: &str, got: (&[usize], &[f32]), want: &Npy, tolerance: (f32, f32)) -> f32 {
    let (atol, rtol) = match want {
        Npy::I32(_) | Npy::I64(_) | Npy::U8(_) | Npy::Text(_) => (0.0, 0.0),
        Npy::F16(_) | Npy::F32(_) | Npy::Scores(_) => tolerance,
    };
    let expected = want.to_f32();
    // torch keeps a leading batch axis coremltools may not; compare values
    // in order, shapes by element count and trailing axes.
    assert_eq!(
        got.1.len(),
        expected.len(),
        "{what}: shape {:?} vs torch's {:?}",
        got.0,
        want.shape()
    );
    let mut worst = 0f32;
    for (i, (&g, &e)) in got.1.iter().zip(&expected).enumerate() {
        let error = (g - e).abs();
        assert!(
            error <= atol + rtol * e.abs(),
            "{what}[{i}]: {g} vs torch's {e} (error {error}, tolerance {atol} + {rtol}·|torch|)"
        );
        worst = worst.max(error);
    }
    worst
}

/// [`assert_close`] for any output: a tensor as there; a string label
/// equal to torch's; an int64 label equal; a dictionary with torch's keys,
/// each probability within tolerance. The largest error.
pub fn assert_output(what: &str, got: &FeatureValue, want: &Npy, tolerance: (f32, f32)) -> f32 {
    use coreml_multifunction::runtime::Dictionary;
    match (got, want) {
        (FeatureValue::String(label), Npy::Text(expected)) => {
            assert_eq!(label, expected, "{what}: the label differs from torch's");
            0.0
        }
        (FeatureValue::Int64(label), want) => {
            assert_eq!(
                vec![*label as f32],
                want.to_f32(),
                "{what}: the label differs from torch's"
            );
            0.0
        }
        (FeatureValue::Dictionary(dictionary), Npy::Scores(expected)) => {
            let got: BTreeMap<String, f32> = match dictionary {
                Dictionary::String(map) => {
                    map.iter().map(|(k, &v)| (k.clone(), v as f32)).collect()
                }
                Dictionary::Int64(map) => map
                    .iter()
                    .map(|(k, &v)| (k.to_string(), v as f32))
                    .collect(),
            };
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "{what}: the classes differ from torch's"
            );
            let values: Vec<f32> = got.values().copied().collect();
            assert_close(what, (&[values.len()], &values), want, tolerance)
        }
        (got, want) => {
            let (shape, values) = values(got);
            assert_close(what, (&shape, &values), want, tolerance)
        }
    }
}

/// The shape `description` declares for output `name`, if it is a
/// multi-array with a shape.
#[allow(dead_code)]
pub fn declared_shape(description: &FunctionDescription, name: &str) -> Option<Vec<usize>> {
    use coreml_multifunction::proto::specification::feature_type;
    let output = description.output.iter().find(|o| o.name == name)?;
    match output.r#type.as_ref()?.r#type.as_ref()? {
        feature_type::Type::MultiArrayType(array) if !array.shape.is_empty() => {
            Some(array.shape.iter().map(|&d| d as usize).collect())
        }
        _ => None,
    }
}
