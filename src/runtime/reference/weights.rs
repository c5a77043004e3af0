//! Constants: decoding immediate and blob values, and the process-wide cache
//! that shares decoded weights between the functions of one package.
//!
//! Core ML loads the weights of a multifunction package once and shares them
//! between its functions. The reference backend does the same: every package
//! (by canonical path, and each weight file's length and modification time,
//! so a rewritten package is never served stale weights) has one
//! [`WeightStore`] while any function of it is loaded, and every constant
//! decoded from a blob, or computed from blobs by a `constexpr_*` op, is kept
//! there once under a key naming its source. A second function referring to
//! the same blob gets the same `Arc`.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use half::{bf16, f16};
use prost::Message;

use coreml_multifunction_format::package::blob::{self, BlobDataType};
use coreml_multifunction_format::package::Package;
use coreml_multifunction_format::proto::mil_spec::{
    self, tensor_value, value, value::immediate_value, DataType,
};

use super::kernels::StoredWeight;
use super::value::{category, wrap_int, Category, Declared, List, OpResult, Value};

/// A decoded constant (a weight), as shared between the functions of a
/// package.
#[derive(Debug)]
pub struct Constant {
    pub(crate) value: Value,
}

impl Constant {
    /// The constant's shape.
    #[cfg(test)]
    pub fn shape(&self) -> Vec<usize> {
        self.value.shape()
    }
}

/// Where a constant comes from: the identity under which it is shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ConstKey {
    /// A blob, with the type the program reads it as (encoded).
    Blob {
        file: String,
        offset: u64,
        value_type: Vec<u8>,
    },
    /// An immediate value (encoded).
    Immediate(Vec<u8>),
    /// The same source kept as stored, for the kernels that read weights so
    /// (see [`decode_stored`]).
    Stored(Box<ConstKey>),
    /// Output `index` of a `constexpr_*` op of type `op_type` applied to
    /// constants, with its declared type (encoded).
    Op {
        op_type: String,
        inputs: Vec<(String, Vec<ConstKey>)>,
        output_type: Vec<u8>,
        index: usize,
    },
}

impl ConstKey {
    /// The key of a value of the program (immediate or blob).
    pub(crate) fn of_value(value: &mil_spec::Value) -> ConstKey {
        match &value.value {
            Some(value::Value::BlobFileValue(blob)) => ConstKey::Blob {
                file: blob.file_name.clone(),
                offset: blob.offset,
                value_type: value
                    .r#type
                    .as_ref()
                    .map(Message::encode_to_vec)
                    .unwrap_or_default(),
            },
            _ => ConstKey::Immediate(value.encode_to_vec()),
        }
    }

    /// Whether the constant comes from weight storage, and so is worth
    /// sharing between functions.
    pub(crate) fn is_weight(&self) -> bool {
        match self {
            ConstKey::Blob { .. } => true,
            ConstKey::Immediate(_) => false,
            ConstKey::Stored(key) => key.is_weight(),
            ConstKey::Op { inputs, .. } => inputs
                .iter()
                .any(|(_, keys)| keys.iter().any(ConstKey::is_weight)),
        }
    }
}

/// The decoded weights of one package, shared by its loaded functions.
#[derive(Debug, Default)]
pub(crate) struct WeightStore {
    constants: Mutex<HashMap<ConstKey, Arc<Constant>>>,
}

impl WeightStore {
    /// The constant under `key`, computing it with `make` the first time.
    /// The store stays locked while `make` runs, so two functions loading
    /// at once decode a shared weight once.
    pub(crate) fn get_or_insert(
        &self,
        key: ConstKey,
        make: impl FnOnce() -> OpResult<Value>,
    ) -> OpResult<Arc<Constant>> {
        let mut constants = lock(&self.constants);
        if let Some(found) = constants.get(&key) {
            return Ok(Arc::clone(found));
        }
        let constant = Arc::new(Constant { value: make()? });
        constants.insert(key, Arc::clone(&constant));
        Ok(constant)
    }
}

/// A package's identity for the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PackageKey {
    root: PathBuf,
    files: Vec<(String, u64, Option<SystemTime>)>,
}

static STORES: LazyLock<Mutex<HashMap<PackageKey, Weak<WeightStore>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Locks `mutex`, ignoring poisoning: the data behind these locks stays
/// consistent even if a thread panicked while holding them (entries are
/// inserted whole).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The weight store of `package`, shared with every function of it that
/// is loaded now.
pub(crate) fn store_for(package: &Package) -> Arc<WeightStore> {
    let files = package
        .blob_files()
        .iter()
        .map(|(name, file)| {
            let modified = std::fs::metadata(file.path())
                .and_then(|m| m.modified())
                .ok();
            (name.clone(), file.len(), modified)
        })
        .collect();
    let key = PackageKey {
        root: package.root().to_path_buf(),
        files,
    };
    let mut stores = lock(&STORES);
    if let Some(store) = stores.get(&key).and_then(Weak::upgrade) {
        return store;
    }
    // Forget packages nobody holds any more.
    stores.retain(|_, store| store.strong_count() > 0);
    let store = Arc::new(WeightStore::default());
    stores.insert(key, Arc::downgrade(&store));
    store
}

/// Decodes a value of the program: an immediate, or a blob of `package`.
pub(crate) fn decode(package: &Package, value: &mil_spec::Value) -> OpResult<Value> {
    let declared = Declared::of(value.r#type.as_ref());
    match &value.value {
        Some(value::Value::ImmediateValue(immediate)) => match &immediate.value {
            Some(immediate_value::Value::Tensor(tensor)) => {
                let declared = declared.ok_or("an immediate tensor value has no tensor type")?;
                decode_immediate(tensor, &declared)
            }
            Some(immediate_value::Value::Tuple(_)) => {
                Err("tuple immediates are not supported".to_string())
            }
            Some(immediate_value::Value::List(list)) => {
                // Issue 23, opsvalues: `classify`'s classes.
                let declared = declared.ok_or("an immediate list has no list type")?;
                let elements = list
                    .values
                    .iter()
                    .map(|item| decode(package, item).map(Some))
                    .collect::<OpResult<Vec<_>>>()?;
                Ok(Value::List(List {
                    elements,
                    dtype: declared.data_type,
                    elem_shape: declared.static_shape(),
                    dynamic: false,
                }))
            }
            Some(immediate_value::Value::Dictionary(_)) => {
                Err("dictionary immediates are not supported".to_string())
            }
            None => Err("an immediate value is empty".to_string()),
        },
        Some(value::Value::BlobFileValue(blob)) => {
            let declared = declared.ok_or("a blob value has no tensor type")?;
            decode_blob(package, blob, &declared)
        }
        None => Err("a value is empty".to_string()),
    }
}

fn static_shape(declared: &Declared) -> OpResult<Vec<usize>> {
    declared
        .static_shape()
        .ok_or_else(|| "a constant has a shape with unknown dimensions".to_string())
}

fn element_count(shape: &[usize]) -> OpResult<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("a constant of shape {shape:?} is too large"))
}

fn decode_immediate(tensor: &mil_spec::TensorValue, declared: &Declared) -> OpResult<Value> {
    let shape = static_shape(declared)?;
    let count = element_count(&shape)?;
    let data_type = declared.data_type;
    let wanted = category(data_type).ok_or_else(|| {
        format!(
            "an immediate of unsupported type {}",
            blob::mil_type_name(data_type)
        )
    })?;
    let check = |len: usize| {
        if len == count {
            Ok(())
        } else {
            Err(format!(
                "an immediate of shape {shape:?} holds {len} elements, not {count}"
            ))
        }
    };
    let value = match &tensor.value {
        Some(tensor_value::Value::Floats(v)) => {
            check(v.values.len())?;
            Value::float(shape.clone(), v.values.clone())?
        }
        Some(tensor_value::Value::Doubles(v)) => {
            check(v.values.len())?;
            Value::float(shape.clone(), v.values.iter().map(|&d| d as f32).collect())?
        }
        Some(tensor_value::Value::Ints(v)) => {
            check(v.values.len())?;
            Value::int(shape.clone(), v.values.clone())?
        }
        Some(tensor_value::Value::LongInts(v)) => {
            check(v.values.len())?;
            let ints = v
                .values
                .iter()
                .map(|&l| i32::try_from(l).map_err(|_| format!("the int64 {l} exceeds int32")))
                .collect::<OpResult<Vec<i32>>>()?;
            Value::int(shape.clone(), ints)?
        }
        Some(tensor_value::Value::Bools(v)) => {
            check(v.values.len())?;
            Value::bool(shape.clone(), v.values.clone())?
        }
        Some(tensor_value::Value::Strings(v)) => {
            check(v.values.len())?;
            Value::Str(v.values.clone())
        }
        Some(tensor_value::Value::Bytes(v)) => decode_bytes(&v.values, data_type, &shape, count)?,
        None => {
            // An empty tensor: no field set.
            check(0)?;
            return match wanted {
                Category::Float => Value::float(shape, Vec::new()),
                Category::Int => Value::int(shape, Vec::new()),
                Category::Bool => Value::bool(shape, Vec::new()),
                Category::Str => Ok(Value::Str(Vec::new())),
            };
        }
    };
    // Immediates such as int16 come in the ints field: the field decides
    // the representation, the declared type the category.
    super::value::conform(value, data_type)
}

/// Decodes raw little-endian (or packed sub-byte) elements of `data_type`.
fn decode_bytes(
    bytes: &[u8],
    data_type: DataType,
    shape: &[usize],
    count: usize,
) -> OpResult<Value> {
    let short = || {
        format!(
            "{} bytes cannot hold {count} {} elements",
            bytes.len(),
            blob::mil_type_name(data_type)
        )
    };
    let width = |bytes_per: usize| -> OpResult<()> {
        if Some(bytes.len()) == count.checked_mul(bytes_per) {
            Ok(())
        } else {
            Err(short())
        }
    };
    let shape = shape.to_vec();
    match data_type {
        DataType::Float16 => {
            width(2)?;
            Value::float(
                shape,
                bytes
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )
        }
        DataType::Bfloat16 => {
            width(2)?;
            Value::float(
                shape,
                bytes
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            )
        }
        DataType::Float32 => {
            width(4)?;
            Value::float(
                shape,
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        DataType::Float8e4m3fn | DataType::Float8e5m2 => {
            width(1)?;
            let e4m3 = data_type == DataType::Float8e4m3fn;
            Value::float(
                shape,
                bytes
                    .iter()
                    .map(|&b| if e4m3 { fp8_e4m3fn(b) } else { fp8_e5m2(b) })
                    .collect(),
            )
        }
        DataType::Int8 => {
            width(1)?;
            Value::int(shape, bytes.iter().map(|&b| i32::from(b as i8)).collect())
        }
        DataType::Uint8 => {
            width(1)?;
            Value::int(shape, bytes.iter().map(|&b| i32::from(b)).collect())
        }
        DataType::Int16 => {
            width(2)?;
            Value::int(
                shape,
                bytes
                    .chunks_exact(2)
                    .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            )
        }
        DataType::Uint16 => {
            width(2)?;
            Value::int(
                shape,
                bytes
                    .chunks_exact(2)
                    .map(|c| i32::from(u16::from_le_bytes([c[0], c[1]])))
                    .collect(),
            )
        }
        DataType::Int32 => {
            width(4)?;
            Value::int(
                shape,
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        DataType::Uint32 => {
            width(4)?;
            let ints = bytes
                .chunks_exact(4)
                .map(|c| {
                    let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    i32::try_from(v).map_err(|_| format!("the uint32 {v} exceeds int32"))
                })
                .collect::<OpResult<Vec<i32>>>()?;
            Value::int(shape, ints)
        }
        DataType::Int4
        | DataType::Uint1
        | DataType::Uint2
        | DataType::Uint3
        | DataType::Uint4
        | DataType::Uint6 => {
            let bits = BlobDataType::from_mil_type(data_type).map_or(8, BlobDataType::bits) as u32;
            let unpacked = blob::unpack_sub_byte(bytes, bits, count).ok_or_else(short)?;
            Value::int(
                shape,
                unpacked
                    .into_iter()
                    .map(|v| wrap_int(i64::from(v), data_type))
                    .collect(),
            )
        }
        other => Err(format!(
            "raw bytes of type {} are not supported",
            blob::mil_type_name(other)
        )),
    }
}

/// A blob reference checked against the weight file and its declared type:
/// the file, its record, the shape and the element count.
fn blob_record<'a>(
    package: &'a Package,
    reference: &value::BlobFileValue,
    declared: &Declared,
) -> OpResult<(&'a blob::BlobFile, blob::BlobRecord, Vec<usize>, usize)> {
    let file = package.blob_file(&reference.file_name).ok_or_else(|| {
        format!(
            "the weight file {:?} is not part of the package",
            reference.file_name
        )
    })?;
    let record = file.record(reference.offset).map_err(|e| e.to_string())?;
    let shape = static_shape(declared)?;
    let count = element_count(&shape)?;
    let data_type = declared.data_type;
    if BlobDataType::from_mil_type(data_type) != Some(record.data_type) {
        return Err(format!(
            "a blob stored as {} is declared as {}",
            record.data_type.name(),
            blob::mil_type_name(data_type)
        ));
    }
    let expected = record
        .data_type
        .payload_len(count as u64)
        .map(|(bytes, _)| bytes);
    if expected != Some(record.size) {
        return Err(format!(
            "a blob of {} bytes cannot hold {count} {} elements",
            record.size,
            record.data_type.name()
        ));
    }
    Ok((file, record, shape, count))
}

/// Streams the `count` elements of `record`, `bytes_per` bytes each, in
/// chunks: `take` receives each chunk's raw bytes.
fn stream_blob(
    file: &blob::BlobFile,
    record: &blob::BlobRecord,
    count: usize,
    bytes_per: usize,
    mut take: impl FnMut(&[u8]) -> OpResult<()>,
) -> OpResult<()> {
    const CHUNK: usize = 1 << 20;
    let io_error =
        |e: std::io::Error| format!("{}: could not read blob data: {e}", file.path().display());
    let mut reader = file.reader(record);
    let mut buffer = vec![0u8; CHUNK.min(count * bytes_per).max(bytes_per)];
    let mut remaining = count;
    while remaining > 0 {
        let n = remaining.min(buffer.len() / bytes_per);
        let chunk = &mut buffer[..n * bytes_per];
        reader.read_exact(chunk).map_err(io_error)?;
        take(chunk)?;
        remaining -= n;
    }
    Ok(())
}

/// Reads a blob in chunks (weight files are never read whole; the raw
/// bytes of a large weight are converted as they stream in).
fn decode_blob(
    package: &Package,
    reference: &value::BlobFileValue,
    declared: &Declared,
) -> OpResult<Value> {
    let (file, record, shape, count) = blob_record(package, reference, declared)?;
    let data_type = declared.data_type;
    let bytes_per = (record.data_type.bits() / 8) as usize;
    if bytes_per == 0 || category(data_type) != Some(Category::Float) {
        // Sub-byte and integer data (quantized weights) is read whole: it is
        // the compact form already.
        let bytes = file.read(&record).map_err(|e| e.to_string())?;
        return decode_bytes(&bytes, data_type, &shape, count);
    }
    let mut data: Vec<f32> = Vec::with_capacity(count);
    stream_blob(file, &record, count, bytes_per, |chunk| {
        let n = chunk.len() / bytes_per;
        let Value::Float(decoded) = decode_bytes(chunk, data_type, &[n], n)? else {
            return Err("float data decoded to another kind".to_string());
        };
        data.extend(decoded.iter());
        Ok(())
    })?;
    Value::float(shape, data)
}

/// Decodes a value of the program that only kernels reading weights as
/// stored use (`linear`'s weight): an fp16 blob of rank 2 stays fp16
/// ([`Value::Weight`]); anything else decodes as [`decode`] does.
pub(crate) fn decode_stored(package: &Package, value: &mil_spec::Value) -> OpResult<Value> {
    let declared = Declared::of(value.r#type.as_ref());
    match (&value.value, declared) {
        (Some(value::Value::BlobFileValue(reference)), Some(declared))
            if declared.data_type == DataType::Float16
                && declared.dims.as_ref().is_some_and(|d| d.len() == 2) =>
        {
            let (file, record, shape, count) = blob_record(package, reference, &declared)?;
            let mut halves: Vec<f16> = Vec::with_capacity(count);
            stream_blob(file, &record, count, 2, |chunk| {
                halves.extend(
                    chunk
                        .chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]])),
                );
                Ok(())
            })?;
            Ok(Value::Weight(Arc::new(StoredWeight::f16(&shape, halves)?)))
        }
        _ => decode(package, value),
    }
}

/// Decodes an fp8 E4M3FN byte (no infinities; 0x7F and 0xFF are NaN).
fn fp8_e4m3fn(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((b >> 3) & 0xF);
    let mantissa = f32::from(b & 0x7);
    if exponent == 0xF && b & 0x7 == 0x7 {
        return f32::NAN;
    }
    if exponent == 0 {
        sign * mantissa / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
    }
}

/// Decodes an fp8 E5M2 byte (the top half of an fp16).
fn fp8_e5m2(b: u8) -> f32 {
    f16::from_bits(u16::from(b) << 8).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_decodes_known_values() {
        assert_eq!(fp8_e4m3fn(0x38), 1.0);
        assert_eq!(fp8_e4m3fn(0xB8), -1.0);
        assert_eq!(fp8_e4m3fn(0x7E), 448.0);
        assert_eq!(fp8_e4m3fn(0x01), 2f32.powi(-9));
        assert!(fp8_e4m3fn(0x7F).is_nan());
        assert_eq!(fp8_e5m2(0x3C), 1.0);
        assert_eq!(fp8_e5m2(0xC0), -2.0);
    }

    #[test]
    fn packed_int4_immediates_sign_extend() {
        // Elements 7, -1, -8 packed LSB first: 0xF7, 0x08.
        let Ok(Value::Int(v)) = decode_bytes(&[0xF7, 0x08], DataType::Int4, &[3], 3) else {
            panic!()
        };
        assert_eq!(v.as_slice().unwrap(), &[7, -1, -8]);
        assert!(decode_bytes(&[0xF7], DataType::Int4, &[3], 3).is_err());
        assert!(decode_bytes(&[0, 0, 0], DataType::Float16, &[2], 2).is_err());
    }

    #[test]
    fn weight_keys_know_what_comes_from_blobs() {
        let blob = ConstKey::Blob {
            file: "w".into(),
            offset: 64,
            value_type: Vec::new(),
        };
        let immediate = ConstKey::Immediate(vec![1]);
        assert!(blob.is_weight());
        assert!(!immediate.is_weight());
        let op = |inputs: Vec<ConstKey>| ConstKey::Op {
            op_type: "constexpr_cast".into(),
            inputs: vec![("source_val".into(), inputs)],
            output_type: Vec::new(),
            index: 0,
        };
        assert!(op(vec![immediate.clone(), blob]).is_weight());
        assert!(!op(vec![immediate]).is_weight());
    }
}
