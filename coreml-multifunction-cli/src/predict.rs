//! `predict`: runs a function on the reference CPU backend, with inputs,
//! outputs and states as `.npy` files (string and dictionary outputs, a
//! classifier's label and probabilities, as `.json`).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coreml_multifunction::half::f16;
use coreml_multifunction::package::Package;
use coreml_multifunction::proto::specification::{feature_type, state_feature_type, FeatureType};
use coreml_multifunction::proto::FeatureDescription;
use coreml_multifunction::runtime::{
    self, AnyTensor, Backend, Configuration, DataType, Dictionary, FeatureValue, Features, Image,
    PixelFormat, State, Tensor,
};
use npyz::WriterBuilder as _;

use super::{write_stdout, Failure};

impl From<runtime::Error> for Failure {
    fn from(error: runtime::Error) -> Self {
        Failure {
            message: error.to_string(),
            usage: false,
        }
    }
}

fn failed(message: String) -> Failure {
    Failure {
        message,
        usage: false,
    }
}

/// Splits `NAME=FILE`.
fn assignment(flag: &str, text: &str) -> Result<(String, PathBuf), Failure> {
    match text.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_string(), PathBuf::from(file)))
        }
        _ => Err(Failure::usage(format!(
            "{flag} {text:?} is not of the form NAME=FILE.npy"
        ))),
    }
}

pub(super) fn command(parser: &mut lexopt::Parser) -> Result<(), Failure> {
    use lexopt::prelude::*;
    let mut package: Option<PathBuf> = None;
    let mut function: Option<String> = None;
    let mut inputs: Vec<(String, PathBuf)> = Vec::new();
    let mut states: Vec<(String, PathBuf)> = Vec::new();
    let mut output_dir: Option<PathBuf> = None;
    let mut repeat = 1usize;
    let mut fp16_ops = false;
    let mut threads = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("function") | Short('f') => function = Some(parser.value()?.string()?),
            Long("input") | Short('i') => {
                inputs.push(assignment("--input", &parser.value()?.string()?)?)
            }
            Long("state") => states.push(assignment("--state", &parser.value()?.string()?)?),
            Long("output-dir") | Short('o') => output_dir = Some(parser.value()?.into()),
            Long("fp16-ops") => fp16_ops = true,
            Long("repeat") => {
                let text = parser.value()?.string()?;
                repeat = text
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .ok_or_else(|| {
                        Failure::usage(format!("--repeat {text:?} is not a positive number"))
                    })?;
            }
            Long("threads") => {
                let text = parser.value()?.string()?;
                threads = Some(text.parse::<std::num::NonZeroUsize>().map_err(|_| {
                    Failure::usage(format!("--threads {text:?} is not a positive number"))
                })?);
            }
            Value(value) if package.is_none() => package = Some(value.into()),
            other => return Err(other.unexpected().into()),
        }
    }
    let package = package.ok_or_else(|| Failure::usage("predict needs a PACKAGE"))?;
    let output_dir = output_dir.ok_or_else(|| Failure::usage("predict needs --output-dir DIR"))?;

    let function = match function {
        Some(function) => function,
        None => Package::open(&package)?.default_function().to_string(),
    };
    let started = Instant::now();
    let configuration = Configuration {
        fp16_ops,
        threads,
        ..Configuration::with_backend(Backend::Reference)
    };
    let loaded = runtime::Function::load(&package, &function, &configuration)?;
    let load_time = started.elapsed();
    let description = loaded.description().clone();

    let mut features = Features::new();
    for (name, file) in &inputs {
        let declared = description
            .input
            .iter()
            .find(|d| &d.name == name)
            .ok_or_else(|| {
                failed(format!(
                    "function {function:?} has no input {name:?}; its inputs are {}",
                    names(&description.input)
                ))
            })?;
        let array = read_npy(file)?;
        let value =
            to_feature(&array, declared).map_err(|e| failed(format!("{}: {e}", file.display())))?;
        features.insert(name.clone(), value);
    }

    let stateful = !description.state.is_empty();
    if let (false, Some((name, _))) = (stateful, states.first()) {
        return Err(failed(format!(
            "function {function:?} has no state {name:?}; it is stateless"
        )));
    }
    let mut initial_states = Vec::with_capacity(states.len());
    for (name, file) in &states {
        let declared = description
            .state
            .iter()
            .find(|d| &d.name == name)
            .ok_or_else(|| {
                failed(format!(
                    "function {function:?} has no state {name:?}; its states are {}",
                    names(&description.state)
                ))
            })?;
        let array = read_npy(file)?;
        let tensor =
            to_state(&array, declared).map_err(|e| failed(format!("{}: {e}", file.display())))?;
        initial_states.push((name.as_str(), tensor));
    }
    // A fresh state holding the --state values (zeros elsewhere), through
    // the same `State::write` an app uses.
    let fresh_state = || -> Result<Option<State>, Failure> {
        if !stateful {
            return Ok(None);
        }
        let mut state = loaded.new_state()?;
        for (name, tensor) in &initial_states {
            state.write(name, tensor)?;
        }
        Ok(Some(state))
    };

    // Every repetition starts from the same state, so they compute the
    // same outputs; the last one's are written.
    let mut times = Vec::with_capacity(repeat);
    let mut outputs = Features::new();
    let mut state = None;
    for _ in 0..repeat {
        state = fresh_state()?;
        let started = Instant::now();
        outputs = match state.as_mut() {
            Some(state) => loaded.predict_with_state(&features, state)?,
            None => loaded.predict(&features)?,
        };
        times.push(started.elapsed());
    }

    std::fs::create_dir_all(&output_dir).map_err(|e| {
        failed(format!(
            "{}: could not create the directory: {e}",
            output_dir.display()
        ))
    })?;
    let mut report = String::new();
    for (name, value) in &outputs {
        let (path, what) = match value {
            FeatureValue::String(_) | FeatureValue::Dictionary(_) => {
                let path = output_dir.join(format!("{name}.json"));
                let what = write_json(&path, value)?;
                (path, what)
            }
            _ => {
                let path = output_dir.join(format!("{name}.npy"));
                let what = write_feature(&path, value)?;
                (path, what)
            }
        };
        report += &format!("{}: {what}\n", path.display());
    }
    if let Some(state) = &state {
        for name in state.names() {
            let path = output_dir.join(format!("{name}.npy"));
            let tensor = state.read(name)?;
            let what = write_tensor(&path, &tensor)?;
            report += &format!("{} (state): {what}\n", path.display());
        }
    }
    if repeat > 1 {
        times.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        report += &format!(
            "load {:.1} ms; predict over {repeat} runs: median {:.3} ms, min {:.3} ms, max {:.3} ms\n",
            ms(load_time),
            ms(times[repeat / 2]),
            ms(times[0]),
            ms(times[repeat - 1])
        );
    }
    write_stdout(&report)
}

fn names(features: &[FeatureDescription]) -> String {
    features
        .iter()
        .map(|d| format!("{:?}", d.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `.npy` array of one of the element types the command reads: its
/// shape and its elements in row-major (C) order.
struct Npy {
    shape: Vec<usize>,
    data: NpyData,
}

enum NpyData {
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
}

impl Npy {
    fn dtype(&self) -> &'static str {
        match &self.data {
            NpyData::F16(_) => "float16",
            NpyData::F32(_) => "float32",
            NpyData::F64(_) => "float64",
            NpyData::I8(_) => "int8",
            NpyData::I16(_) => "int16",
            NpyData::I32(_) => "int32",
            NpyData::I64(_) => "int64",
            NpyData::U8(_) => "uint8",
            NpyData::U16(_) => "uint16",
        }
    }

    fn shape(&self) -> Vec<usize> {
        self.shape.clone()
    }

    /// The elements as f64 (exact for every type read).
    fn floats(&self) -> Vec<f64> {
        match &self.data {
            NpyData::F16(a) => a.iter().map(|v| v.to_f64()).collect(),
            NpyData::F32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            NpyData::F64(a) => a.clone(),
            NpyData::I8(a) => a.iter().map(|&v| f64::from(v)).collect(),
            NpyData::I16(a) => a.iter().map(|&v| f64::from(v)).collect(),
            NpyData::I32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            NpyData::I64(a) => a.iter().map(|&v| v as f64).collect(),
            NpyData::U8(a) => a.iter().map(|&v| f64::from(v)).collect(),
            NpyData::U16(a) => a.iter().map(|&v| f64::from(v)).collect(),
        }
    }

    /// The elements as integers, if the array holds integers.
    fn integers(&self) -> Option<Vec<i64>> {
        Some(match &self.data {
            NpyData::I8(a) => a.iter().map(|&v| i64::from(v)).collect(),
            NpyData::I16(a) => a.iter().map(|&v| i64::from(v)).collect(),
            NpyData::I32(a) => a.iter().map(|&v| i64::from(v)).collect(),
            NpyData::I64(a) => a.clone(),
            NpyData::U8(a) => a.iter().map(|&v| i64::from(v)).collect(),
            NpyData::U16(a) => a.iter().map(|&v| i64::from(v)).collect(),
            _ => return None,
        })
    }
}

/// Reads a `.npy` file with npyz, whatever its byte order.
fn read_npy(path: &Path) -> Result<Npy, Failure> {
    let fail = |e: &dyn std::fmt::Display| {
        failed(format!(
            "{}: could not read the .npy file: {e}",
            path.display()
        ))
    };
    let file = File::open(path).map_err(|e| fail(&e))?;
    let npy = npyz::NpyFile::new(BufReader::new(file)).map_err(|e| fail(&e))?;
    if npy.order() == npyz::Order::Fortran && npy.shape().len() > 1 {
        return Err(fail(
            &"Fortran-order arrays are not supported; save with numpy.ascontiguousarray",
        ));
    }
    let shape = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| fail(&"a dimension does not fit in memory")))
        .collect::<Result<Vec<_>, _>>()?;
    let npyz::DType::Plain(type_str) = npy.dtype() else {
        return Err(fail(&"structured arrays are not supported"));
    };
    use npyz::TypeChar::{Float, Int, Uint};
    let data = match (type_str.type_char(), type_str.size_field()) {
        (Float, 2) => NpyData::F16(npy.into_vec().map_err(|e| fail(&e))?),
        (Float, 4) => NpyData::F32(npy.into_vec().map_err(|e| fail(&e))?),
        (Float, 8) => NpyData::F64(npy.into_vec().map_err(|e| fail(&e))?),
        (Int, 1) => NpyData::I8(npy.into_vec().map_err(|e| fail(&e))?),
        (Int, 2) => NpyData::I16(npy.into_vec().map_err(|e| fail(&e))?),
        (Int, 4) => NpyData::I32(npy.into_vec().map_err(|e| fail(&e))?),
        (Int, 8) => NpyData::I64(npy.into_vec().map_err(|e| fail(&e))?),
        (Uint, 1) => NpyData::U8(npy.into_vec().map_err(|e| fail(&e))?),
        (Uint, 2) => NpyData::U16(npy.into_vec().map_err(|e| fail(&e))?),
        _ => return Err(fail(&format!("unsupported element type {type_str}"))),
    };
    Ok(Npy { shape, data })
}

/// An array as a tensor of `data_type`: floats round to the type
/// (as coremltools' predict converts inputs), integers must fit.
fn to_tensor(array: &Npy, data_type: DataType) -> Result<AnyTensor, String> {
    let shape = array.shape();
    let integers = || {
        array.integers().ok_or_else(|| {
            format!(
                "holds {} values, the declared type is {data_type}",
                array.dtype()
            )
        })
    };
    let tensor: AnyTensor = match data_type {
        DataType::Float16 => Tensor::new(
            shape,
            array
                .floats()
                .into_iter()
                .map(f16::from_f64)
                .collect::<Vec<_>>(),
        )
        .map(Into::into),
        DataType::Float32 => Tensor::new(
            shape,
            array
                .floats()
                .into_iter()
                .map(|v| v as f32)
                .collect::<Vec<_>>(),
        )
        .map(Into::into),
        DataType::Float64 => Tensor::new(shape, array.floats()).map(Into::into),
        DataType::Int32 => {
            let values = integers()?
                .into_iter()
                .map(|v| i32::try_from(v).map_err(|_| format!("{v} does not fit int32")))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::new(shape, values).map(Into::into)
        }
        DataType::Int8 => {
            let values = integers()?
                .into_iter()
                .map(|v| i8::try_from(v).map_err(|_| format!("{v} does not fit int8")))
                .collect::<Result<Vec<_>, _>>()?;
            Tensor::new(shape, values).map(Into::into)
        }
    }
    .map_err(|e| e.to_string())?;
    Ok(tensor)
}

fn to_feature(array: &Npy, declared: &FeatureDescription) -> Result<FeatureValue, String> {
    match declared.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(feature_type::Type::MultiArrayType(a)) => {
            let data_type =
                DataType::from_array_data_type(a.data_type).ok_or("the input has no array type")?;
            Ok(FeatureValue::Tensor(to_tensor(array, data_type)?))
        }
        Some(feature_type::Type::ImageType(image)) => {
            let format = PixelFormat::of_image_type(image)
                .ok_or("the image input has an unknown color space")?;
            let shape = array.shape();
            let (h, w, c) = match shape.as_slice() {
                [h, w] => (*h, *w, 1),
                [h, w, c] => (*h, *w, *c),
                other => {
                    return Err(format!(
                        "an image is a [H, W, C] array, not of shape {other:?}"
                    ))
                }
            };
            let pixels = match (format, array) {
                (PixelFormat::GrayF16, _) => array
                    .floats()
                    .into_iter()
                    .flat_map(|v| f16::from_f64(v).to_le_bytes())
                    .collect(),
                (
                    _,
                    Npy {
                        data: NpyData::U8(a),
                        ..
                    },
                ) => a.clone(),
                (_, other) => return Err(format!("image pixels are uint8, not {}", other.dtype())),
            };
            let wanted = if format.bytes_per_pixel() == 3 { 3 } else { 1 };
            if c != wanted {
                return Err(format!(
                    "a {format:?} image has {wanted} channels, the array {c}"
                ));
            }
            Image::new(w, h, format, pixels)
                .map(FeatureValue::Image)
                .ok_or_else(|| "the pixels do not fill the image".to_string())
        }
        Some(feature_type::Type::Int64Type(_)) => match array.integers().as_deref() {
            Some([v]) => Ok(FeatureValue::Int64(*v)),
            _ => Err("an int64 input is one integer".to_string()),
        },
        Some(feature_type::Type::DoubleType(_)) => match array.floats().as_slice() {
            [v] => Ok(FeatureValue::Double(*v)),
            _ => Err("a double input is one number".to_string()),
        },
        _ => Err("the input's type cannot be read from a .npy file".to_string()),
    }
}

fn to_state(array: &Npy, declared: &FeatureDescription) -> Result<AnyTensor, String> {
    match declared
        .r#type
        .as_ref()
        .and_then(|t: &FeatureType| t.r#type.as_ref())
    {
        Some(feature_type::Type::StateType(state)) => match &state.r#type {
            Some(state_feature_type::Type::ArrayType(a)) => {
                let data_type = DataType::from_array_data_type(a.data_type)
                    .ok_or("the state has no array type")?;
                to_tensor(array, data_type)
            }
            None => Err("the state wraps no array".to_string()),
        },
        _ => Err("not a state".to_string()),
    }
}

fn write_error(path: &Path, e: &dyn std::fmt::Display) -> Failure {
    failed(format!("{}: could not write: {e}", path.display()))
}

/// Writes `data` of `shape` as a C-order `.npy` file.
fn write_array<T: npyz::AutoSerialize + Clone>(
    path: &Path,
    shape: &[usize],
    data: &[T],
) -> Result<(), Failure> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let file = File::create(path).map_err(|e| write_error(path, &e))?;
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(|e| write_error(path, &e))?;
    writer
        .extend(data.iter().cloned())
        .map_err(|e| write_error(path, &e))?;
    writer.finish().map_err(|e| write_error(path, &e))
}

fn write_tensor(path: &Path, tensor: &AnyTensor) -> Result<String, Failure> {
    let shape = tensor.shape();
    match tensor {
        AnyTensor::Float16(t) => write_array(path, shape, t.as_slice())?,
        AnyTensor::Float32(t) => write_array(path, shape, t.as_slice())?,
        AnyTensor::Float64(t) => write_array(path, shape, t.as_slice())?,
        AnyTensor::Int32(t) => write_array(path, shape, t.as_slice())?,
        AnyTensor::Int8(t) => write_array(path, shape, t.as_slice())?,
    }
    Ok(format!("{} {:?}", tensor.data_type(), shape))
}

/// Writes a string output as a JSON string and a dictionary output as a
/// JSON object from key to value (int64 keys as their decimal strings,
/// JSON keys being strings), with serde_json, the CLI's JSON writer for
/// `inspect --json` too: it escapes what JSON requires, prints each number
/// with the fewest digits that read back to the same f64, and spells a
/// value that is not finite, which JSON cannot, as `null`. The text is
/// written whole, in one write.
fn write_json(path: &Path, value: &FeatureValue) -> Result<String, Failure> {
    let (json, what) = match value {
        FeatureValue::String(s) => (serde_json::to_string(s), "string".to_string()),
        FeatureValue::Dictionary(Dictionary::String(map)) => (
            serde_json::to_string(map),
            format!("dictionary of {} string keys", map.len()),
        ),
        FeatureValue::Dictionary(Dictionary::Int64(map)) => (
            serde_json::to_string(map),
            format!("dictionary of {} int64 keys", map.len()),
        ),
        other => {
            return Err(failed(format!(
                "{}: cannot write {} as .json",
                path.display(),
                other.kind()
            )))
        }
    };
    let text = json.map_err(|e| write_error(path, &e))?;
    std::fs::write(path, text + "\n").map_err(|e| write_error(path, &e))?;
    Ok(what)
}

fn write_feature(path: &Path, value: &FeatureValue) -> Result<String, Failure> {
    match value {
        FeatureValue::Tensor(tensor) => write_tensor(path, tensor),
        FeatureValue::Image(image) => {
            let channels = if image.format.bytes_per_pixel() == 3 {
                3
            } else {
                1
            };
            match image.format {
                PixelFormat::GrayF16 => {
                    let values: Vec<f16> = image
                        .pixels
                        .chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]))
                        .collect();
                    let tensor = Tensor::new([image.height, image.width, 1], values)
                        .map_err(|e| write_error(path, &e))?;
                    write_tensor(path, &tensor.into())
                }
                _ => {
                    write_array(path, &[image.height, image.width, channels], &image.pixels)?;
                    Ok(format!(
                        "{:?} image {}x{}",
                        image.format, image.width, image.height
                    ))
                }
            }
        }
        FeatureValue::Int64(v) => {
            write_array(path, &[], &[*v])?;
            Ok("int64".to_string())
        }
        FeatureValue::Double(v) => {
            write_array(path, &[], &[*v])?;
            Ok("double".to_string())
        }
        other => Err(failed(format!(
            "{}: cannot write {} as .npy",
            path.display(),
            other.kind()
        ))),
    }
}
