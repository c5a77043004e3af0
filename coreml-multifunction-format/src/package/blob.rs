//! Blob storage version 2: the `weights/weight.bin` files of ML Programs.
//!
//! Layout (little-endian throughout):
//!
//! ```text
//! [0, 64)      header: u32 blob count, u32 version (= 2), 56 reserved bytes
//! then, per blob, at the next 64-byte aligned offset:
//!   64 bytes   record: u32 sentinel 0xDEADBEEF, u32 data type, u64 size,
//!              u64 data offset, u64 padding bits, 32 reserved bytes
//!   size bytes data, starting right after the record (so also aligned)
//! ```
//!
//! A `BlobFileValue` in the model refers to a blob by the offset of its
//! *record*. Sub-byte types are packed LSB-first, element `i` in bits
//! `[i * w, (i + 1) * w)`; `padding bits` counts the unused bits of the last
//! byte.
//!
//! Reading never loads a file whole: records are read 64 bytes at a time and
//! data is streamed through [`BlobFile::reader`]. Every length is checked
//! against the real file length before it is used, so a damaged or hostile
//! file cannot cause a large allocation.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Problem, Result};
use crate::proto::mil_spec::DataType;

/// The storage format version this module reads and writes.
pub const STORAGE_VERSION: u32 = 2;
/// Records and data start at multiples of this many bytes.
pub const ALIGNMENT: u64 = 64;
/// Length of the file header.
pub const HEADER_LEN: u64 = 64;
/// Length of each blob record.
pub const RECORD_LEN: u64 = 64;
/// The first four bytes of every blob record.
pub const SENTINEL: u32 = 0xDEAD_BEEF;

/// The element type of a stored blob, with its on-disk code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BlobDataType {
    /// IEEE half precision.
    Float16,
    /// IEEE single precision.
    Float32,
    /// Unsigned 8-bit integers.
    UInt8,
    /// Signed 8-bit integers.
    Int8,
    /// bfloat16.
    BFloat16,
    /// Signed 16-bit integers.
    Int16,
    /// Unsigned 16-bit integers.
    UInt16,
    /// Signed 4-bit integers, packed two to a byte.
    Int4,
    /// Unsigned 1-bit integers, packed.
    UInt1,
    /// Unsigned 2-bit integers, packed.
    UInt2,
    /// Unsigned 4-bit integers, packed.
    UInt4,
    /// Unsigned 3-bit integers, packed across byte boundaries.
    UInt3,
    /// Unsigned 6-bit integers, packed across byte boundaries.
    UInt6,
    /// Signed 32-bit integers.
    Int32,
    /// Unsigned 32-bit integers.
    UInt32,
    /// 8-bit floats, 4 exponent and 3 mantissa bits, finite only.
    Float8E4M3FN,
    /// 8-bit floats, 5 exponent and 2 mantissa bits.
    Float8E5M2,
}

/// Every blob data type, in code order.
const ALL_TYPES: [BlobDataType; 17] = [
    BlobDataType::Float16,
    BlobDataType::Float32,
    BlobDataType::UInt8,
    BlobDataType::Int8,
    BlobDataType::BFloat16,
    BlobDataType::Int16,
    BlobDataType::UInt16,
    BlobDataType::Int4,
    BlobDataType::UInt1,
    BlobDataType::UInt2,
    BlobDataType::UInt4,
    BlobDataType::UInt3,
    BlobDataType::UInt6,
    BlobDataType::Int32,
    BlobDataType::UInt32,
    BlobDataType::Float8E4M3FN,
    BlobDataType::Float8E5M2,
];

impl BlobDataType {
    /// Every blob data type, in code order.
    pub fn all() -> &'static [BlobDataType] {
        &ALL_TYPES
    }

    /// The type stored under `code` in a record, if known.
    pub fn from_code(code: u32) -> Option<Self> {
        let index = usize::try_from(code.checked_sub(1)?).ok()?;
        ALL_TYPES.get(index).copied()
    }

    /// The on-disk code (codes start at 1 and are only ever appended to).
    pub fn code(self) -> u32 {
        ALL_TYPES.iter().position(|t| *t == self).expect("listed") as u32 + 1
    }

    /// Bits per element.
    pub fn bits(self) -> u64 {
        use BlobDataType::*;
        match self {
            UInt1 => 1,
            UInt2 => 2,
            UInt3 => 3,
            Int4 | UInt4 => 4,
            UInt6 => 6,
            UInt8 | Int8 | Float8E4M3FN | Float8E5M2 => 8,
            Float16 | BFloat16 | Int16 | UInt16 => 16,
            Float32 | Int32 | UInt32 => 32,
        }
    }

    /// Whether elements are narrower than a byte and packed.
    pub fn is_sub_byte(self) -> bool {
        self.bits() < 8
    }

    /// The MIL tensor element type with the same representation.
    pub fn mil_type(self) -> DataType {
        use BlobDataType::*;
        match self {
            Float16 => DataType::Float16,
            Float32 => DataType::Float32,
            UInt8 => DataType::Uint8,
            Int8 => DataType::Int8,
            BFloat16 => DataType::Bfloat16,
            Int16 => DataType::Int16,
            UInt16 => DataType::Uint16,
            Int4 => DataType::Int4,
            UInt1 => DataType::Uint1,
            UInt2 => DataType::Uint2,
            UInt4 => DataType::Uint4,
            UInt3 => DataType::Uint3,
            UInt6 => DataType::Uint6,
            Int32 => DataType::Int32,
            UInt32 => DataType::Uint32,
            Float8E4M3FN => DataType::Float8e4m3fn,
            Float8E5M2 => DataType::Float8e5m2,
        }
    }

    /// The blob type able to store MIL elements of `data_type`, if any
    /// (there are no blob types for bool, strings or 64-bit types).
    pub fn from_mil_type(data_type: DataType) -> Option<Self> {
        ALL_TYPES
            .iter()
            .copied()
            .find(|t| t.mil_type() == data_type)
    }

    /// A short lower-case name, as the CLI prints it.
    pub fn name(self) -> &'static str {
        mil_type_name(self.mil_type())
    }

    /// Bytes and trailing padding bits needed to store `elements` elements.
    /// `None` when the size overflows `u64`.
    pub fn payload_len(self, elements: u64) -> Option<(u64, u64)> {
        let bits = elements.checked_mul(self.bits())?;
        let bytes = bits.div_ceil(8);
        let padding = bytes * 8 - bits;
        Some((bytes, padding))
    }
}

/// The lower-case name of a MIL element type ("fp16", "int4", ...).
pub fn mil_type_name(data_type: DataType) -> &'static str {
    match data_type {
        DataType::UnusedType => "unused",
        DataType::Bool => "bool",
        DataType::String => "string",
        DataType::Float8e4m3fn => "fp8e4m3fn",
        DataType::Float8e5m2 => "fp8e5m2",
        DataType::Float16 => "fp16",
        DataType::Float32 => "fp32",
        DataType::Float64 => "fp64",
        DataType::Bfloat16 => "bf16",
        DataType::Int8 => "int8",
        DataType::Int16 => "int16",
        DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        DataType::Int4 => "int4",
        DataType::Uint8 => "uint8",
        DataType::Uint16 => "uint16",
        DataType::Uint32 => "uint32",
        DataType::Uint64 => "uint64",
        DataType::Uint4 => "uint4",
        DataType::Uint2 => "uint2",
        DataType::Uint1 => "uint1",
        DataType::Uint6 => "uint6",
        DataType::Uint3 => "uint3",
    }
}

/// One blob's record: where its data is, how long and of what type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRecord {
    /// Offset of the 64-byte record (what `BlobFileValue.offset` holds).
    pub record_offset: u64,
    /// Element type of the data.
    pub data_type: BlobDataType,
    /// Length of the data in bytes.
    pub size: u64,
    /// Offset of the data.
    pub data_offset: u64,
    /// Unused bits in the last byte (sub-byte types only).
    pub padding_bits: u64,
}

impl BlobRecord {
    /// Number of elements stored, derived from the size and padding.
    pub fn element_count(&self) -> u64 {
        (self.size * 8 - self.padding_bits) / self.data_type.bits()
    }

    /// End of the data (exclusive).
    pub fn data_end(&self) -> u64 {
        self.data_offset + self.size
    }
}

/// Rounds `offset` up to the next multiple of [`ALIGNMENT`].
pub fn align(offset: u64) -> Option<u64> {
    Some(offset.checked_add(ALIGNMENT - 1)? / ALIGNMENT * ALIGNMENT)
}

/// An open blob storage file, validated on open.
#[derive(Debug)]
pub struct BlobFile {
    path: PathBuf,
    file: File,
    len: u64,
    declared_count: u32,
}

impl BlobFile {
    /// Opens `path` and checks its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, "open the weight file", e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(&path, "read the weight file's metadata", e))?
            .len();
        if len < HEADER_LEN {
            return Err(Error::invalid(&path, Problem::TruncatedBlobFile { len }));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        read_exact_at(&file, &mut header, 0)
            .map_err(|e| Error::io(&path, "read the weight file header", e))?;
        let declared_count = u32_at(&header, 0);
        let version = u32_at(&header, 4);
        if version != STORAGE_VERSION {
            return Err(Error::invalid(
                &path,
                Problem::UnsupportedStorageVersion { version },
            ));
        }
        Ok(BlobFile {
            path,
            file,
            len,
            declared_count,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file holds no blob.
    pub fn is_empty(&self) -> bool {
        self.declared_count == 0
    }

    /// The blob count the header declares.
    pub fn declared_count(&self) -> u32 {
        self.declared_count
    }

    /// Reads and validates the record at `offset` (a `BlobFileValue.offset`).
    pub fn record(&self, offset: u64) -> Result<BlobRecord> {
        let bad_offset = |reason: &str| {
            Error::invalid(
                &self.path,
                Problem::BadRecordOffset {
                    offset,
                    reason: reason.to_string(),
                },
            )
        };
        if offset < HEADER_LEN {
            return Err(bad_offset("it lies inside the 64-byte file header"));
        }
        if !offset.is_multiple_of(ALIGNMENT) {
            return Err(bad_offset("records are 64-byte aligned"));
        }
        if offset
            .checked_add(RECORD_LEN)
            .is_none_or(|end| end > self.len)
        {
            return Err(Error::invalid(
                &self.path,
                Problem::BlobOutOfBounds {
                    offset,
                    data_offset: offset,
                    size: RECORD_LEN,
                    file_len: self.len,
                },
            ));
        }
        let mut raw = [0u8; RECORD_LEN as usize];
        read_exact_at(&self.file, &mut raw, offset)
            .map_err(|e| Error::io(&self.path, "read a blob record", e))?;
        let sentinel = u32_at(&raw, 0);
        if sentinel != SENTINEL {
            return Err(Error::invalid(
                &self.path,
                Problem::BadSentinel {
                    offset,
                    found: sentinel,
                },
            ));
        }
        let code = u32_at(&raw, 4);
        let data_type = BlobDataType::from_code(code).ok_or_else(|| {
            Error::invalid(&self.path, Problem::UnknownBlobDataType { offset, code })
        })?;
        let size = u64_at(&raw, 8);
        let data_offset = u64_at(&raw, 16);
        let padding_bits = u64_at(&raw, 24);
        // Bytes 32..64 are reserved. Writers before iOS 18 left them
        // uninitialised, so they are ignored rather than checked.
        if data_offset < offset + RECORD_LEN || !data_offset.is_multiple_of(ALIGNMENT) {
            return Err(bad_offset(&format!(
                "its data offset {data_offset} must be 64-byte aligned and follow the record"
            )));
        }
        if data_offset
            .checked_add(size)
            .is_none_or(|end| end > self.len)
        {
            return Err(Error::invalid(
                &self.path,
                Problem::BlobOutOfBounds {
                    offset,
                    data_offset,
                    size,
                    file_len: self.len,
                },
            ));
        }
        let padding_allowed = if data_type.is_sub_byte() { 7 } else { 0 };
        if padding_bits > padding_allowed || (size == 0 && padding_bits != 0) {
            return Err(bad_offset(&format!(
                "its padding of {padding_bits} bits is impossible for {} data",
                data_type.name()
            )));
        }
        Ok(BlobRecord {
            record_offset: offset,
            data_type,
            size,
            data_offset,
            padding_bits,
        })
    }

    /// Walks every record from the start of the file, checking that they
    /// follow one another as the format lays them out and that their number
    /// matches the header.
    pub fn records(&self) -> Result<Vec<BlobRecord>> {
        // Each blob takes at least a 64-byte record, so the file length bounds
        // the count whatever the header says.
        let most = (self.len / RECORD_LEN) as usize;
        let mut records = Vec::with_capacity((self.declared_count as usize).min(most));
        let mut offset = HEADER_LEN;
        while offset < self.len {
            if records.len() as u64 >= u64::from(self.declared_count) {
                // Bytes remain after the last declared blob.
                return Err(self.count_mismatch(records.len() as u64 + 1));
            }
            let record = self.record(offset)?;
            offset = align(record.data_end()).unwrap_or(u64::MAX);
            records.push(record);
        }
        if records.len() as u64 != u64::from(self.declared_count) {
            return Err(self.count_mismatch(records.len() as u64));
        }
        Ok(records)
    }

    fn count_mismatch(&self, found: u64) -> Error {
        Error::invalid(
            &self.path,
            Problem::BlobCountMismatch {
                declared: u64::from(self.declared_count),
                found,
            },
        )
    }

    /// A reader over one blob's data, streaming from the file.
    pub fn reader(&self, record: &BlobRecord) -> BlobReader<'_> {
        BlobReader {
            file: &self.file,
            position: record.data_offset,
            remaining: record.size,
        }
    }

    /// One blob's data in memory. The size was checked against the file
    /// length when the record was read, so this never allocates more than
    /// the file holds; prefer [`BlobFile::reader`] for large blobs.
    pub fn read(&self, record: &BlobRecord) -> Result<Vec<u8>> {
        let mut data = Vec::with_capacity(record.size as usize);
        self.reader(record)
            .read_to_end(&mut data)
            .map_err(|e| Error::io(&self.path, "read blob data", e))?;
        Ok(data)
    }
}

/// Whether two blobs hold the same bytes, compared in chunks so that
/// neither is held in memory whole. The comparison itself is the standard
/// library's slice equality (memcmp), fast even in unoptimised builds.
pub fn same_bytes(
    left: &BlobFile,
    left_record: &BlobRecord,
    right: &BlobFile,
    right_record: &BlobRecord,
    buffers: &mut CompareBuffers,
) -> io::Result<bool> {
    if left_record.size != right_record.size {
        return Ok(false);
    }
    let mut left_reader = left.reader(left_record);
    let mut right_reader = right.reader(right_record);
    let mut remaining = left_record.size;
    while remaining > 0 {
        let chunk = remaining.min(buffers.left.len() as u64) as usize;
        left_reader.read_exact(&mut buffers.left[..chunk])?;
        right_reader.read_exact(&mut buffers.right[..chunk])?;
        if buffers.left[..chunk] != buffers.right[..chunk] {
            return Ok(false);
        }
        remaining -= chunk as u64;
    }
    Ok(true)
}

/// Two reusable buffers for [`same_bytes`], so comparing many blobs does
/// not allocate for each.
#[derive(Debug)]
pub struct CompareBuffers {
    left: Vec<u8>,
    right: Vec<u8>,
}

impl Default for CompareBuffers {
    fn default() -> Self {
        const CHUNK: usize = 1 << 20;
        CompareBuffers {
            left: vec![0; CHUNK],
            right: vec![0; CHUNK],
        }
    }
}

/// Streams one blob's bytes with positional reads, so several readers over
/// one file do not disturb each other.
#[derive(Debug)]
pub struct BlobReader<'a> {
    file: &'a File,
    position: u64,
    remaining: u64,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wanted = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if wanted == 0 {
            return Ok(0);
        }
        let read = read_at(self.file, &mut buf[..wanted], self.position)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the weight file ended inside a blob (was it truncated while being read?)",
            ));
        }
        self.position += read as u64;
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// Writes a blob storage file, laying blobs out exactly as Core ML's own
/// writer does: each record at the next 64-byte boundary, its data right
/// after it, zeros in every gap and reserved field.
#[derive(Debug)]
pub struct BlobWriter<W: Write + Seek> {
    out: W,
    end: u64,
    count: u32,
}

impl<W: Write + Seek> BlobWriter<W> {
    /// Starts a file with an empty header.
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&header_bytes(0))?;
        Ok(BlobWriter {
            out,
            end: HEADER_LEN,
            count: 0,
        })
    }

    /// Continues a file whose first `count` blobs end at `end`, as this
    /// writer lays them out: the next blob goes at the 64-byte boundary
    /// after `end`, and [`finish`](Self::finish) writes the new count into
    /// the header. `out` must hold exactly `end` bytes.
    pub fn resume(mut out: W, end: u64, count: u32) -> io::Result<Self> {
        out.seek(SeekFrom::Start(end))?;
        Ok(BlobWriter { out, end, count })
    }

    /// Number of blobs written so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Appends one blob, copying exactly `size` bytes from `data`, and
    /// returns its record offset for the model's `BlobFileValue`.
    pub fn append(
        &mut self,
        data_type: BlobDataType,
        size: u64,
        padding_bits: u64,
        data: &mut dyn Read,
    ) -> io::Result<u64> {
        let count = self.count.checked_add(1).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "a weight file holds at most 2^32 - 1 blobs",
            )
        })?;
        let record_offset = align(self.end).ok_or_else(too_large)?;
        let data_offset = record_offset + RECORD_LEN;
        let data_end = data_offset.checked_add(size).ok_or_else(too_large)?;
        write_zeros(&mut self.out, record_offset - self.end)?;
        let mut record = [0u8; RECORD_LEN as usize];
        record[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
        record[4..8].copy_from_slice(&data_type.code().to_le_bytes());
        record[8..16].copy_from_slice(&size.to_le_bytes());
        record[16..24].copy_from_slice(&data_offset.to_le_bytes());
        record[24..32].copy_from_slice(&padding_bits.to_le_bytes());
        self.out.write_all(&record)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("blob data ended after {copied} of {size} bytes"),
            ));
        }
        self.end = data_end;
        self.count = count;
        Ok(record_offset)
    }

    /// Writes the final blob count into the header and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header_bytes(self.count))?;
        self.out.seek(SeekFrom::Start(self.end))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "the weight file would exceed 2^64 bytes",
    )
}

fn header_bytes(count: u32) -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[0..4].copy_from_slice(&count.to_le_bytes());
    header[4..8].copy_from_slice(&STORAGE_VERSION.to_le_bytes());
    header
}

fn write_zeros(out: &mut dyn Write, mut count: u64) -> io::Result<()> {
    const ZEROS: [u8; ALIGNMENT as usize] = [0; ALIGNMENT as usize];
    while count > 0 {
        let chunk = count.min(ALIGNMENT) as usize;
        out.write_all(&ZEROS[..chunk])?;
        count -= chunk as u64;
    }
    Ok(())
}

/// Unpacks sub-byte elements (LSB-first, as blobs store them) into one
/// byte each. `bits` is 1 to 8; `count` elements are read.
pub fn unpack_sub_byte(packed: &[u8], bits: u32, count: usize) -> Option<Vec<u8>> {
    if !(1..=8).contains(&bits) || (count as u64) * u64::from(bits) > packed.len() as u64 * 8 {
        return None;
    }
    let mask = ((1u16 << bits) - 1) as u8;
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let bit = index * bits as usize;
        let (byte, shift) = (bit / 8, bit % 8);
        let mut word = u16::from(packed[byte]);
        if let Some(next) = packed.get(byte + 1) {
            word |= u16::from(*next) << 8;
        }
        out.push(((word >> shift) as u8) & mask);
    }
    Some(out)
}

/// Packs one-byte elements into `bits`-wide fields, LSB-first. Values are
/// truncated to their low `bits` bits.
pub fn pack_sub_byte(values: &[u8], bits: u32) -> Option<Vec<u8>> {
    if !(1..=8).contains(&bits) {
        return None;
    }
    let mut packed = vec![0u8; (values.len() * bits as usize).div_ceil(8)];
    let mask = ((1u16 << bits) - 1) as u8;
    for (index, value) in values.iter().enumerate() {
        let bit = index * bits as usize;
        let (byte, shift) = (bit / 8, bit % 8);
        let word = u16::from(value & mask) << shift;
        packed[byte] |= word as u8;
        if shift + bits as usize > 8 {
            packed[byte + 1] |= (word >> 8) as u8;
        }
    }
    Some(packed)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, offset)
}

fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match read_at(file, buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file is shorter than it was a moment ago",
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn data_type_codes_round_trip_and_match_the_format_table() {
        for (index, data_type) in BlobDataType::all().iter().enumerate() {
            assert_eq!(data_type.code(), index as u32 + 1);
            assert_eq!(BlobDataType::from_code(data_type.code()), Some(*data_type));
            assert_eq!(
                BlobDataType::from_mil_type(data_type.mil_type()),
                Some(*data_type)
            );
        }
        assert_eq!(BlobDataType::from_code(0), None);
        assert_eq!(BlobDataType::from_code(18), None);
        assert_eq!(BlobDataType::Float16.code(), 1);
        assert_eq!(BlobDataType::Int4.code(), 8);
        assert_eq!(BlobDataType::Int32.code(), 14);
        assert_eq!(BlobDataType::Float8E5M2.code(), 17);
        assert_eq!(BlobDataType::from_mil_type(DataType::Int64), None);
    }

    #[test]
    fn payload_lengths_round_sub_byte_data_up_to_whole_bytes() {
        assert_eq!(BlobDataType::Float32.payload_len(500), Some((2000, 0)));
        assert_eq!(BlobDataType::UInt4.payload_len(5), Some((3, 4)));
        assert_eq!(BlobDataType::UInt3.payload_len(3), Some((2, 7)));
        assert_eq!(BlobDataType::UInt6.payload_len(4), Some((3, 0)));
        assert_eq!(BlobDataType::UInt1.payload_len(9), Some((2, 7)));
        assert_eq!(BlobDataType::Float32.payload_len(u64::MAX), None);
    }

    #[test]
    fn layout_matches_core_mls_writer() {
        // coremltools' own test: two fp32[500] blobs land at 64 and 2176.
        let mut writer = BlobWriter::new(Cursor::new(Vec::new())).unwrap();
        let first = writer
            .append(BlobDataType::Float32, 2000, 0, &mut &[1u8; 2000][..])
            .unwrap();
        let second = writer
            .append(BlobDataType::Float32, 2000, 0, &mut &[2u8; 2000][..])
            .unwrap();
        assert_eq!((first, second), (64, 2176));
        let bytes = writer.finish().unwrap().into_inner();
        assert_eq!(bytes.len(), 2176 + 64 + 2000);
        assert_eq!(u32_at(&bytes, 0), 2);
        assert_eq!(u32_at(&bytes, 4), 2);
        // The gap between the first blob's data and the second record is zeros.
        assert!(bytes[2128..2176].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_short_source_is_an_error_not_a_short_blob() {
        let mut writer = BlobWriter::new(Cursor::new(Vec::new())).unwrap();
        let error = writer
            .append(BlobDataType::UInt8, 10, 0, &mut &[0u8; 4][..])
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn sub_byte_packing_round_trips_for_every_width() {
        for bits in 1..=8u32 {
            let values: Vec<u8> = (0..37u32)
                .map(|i| ((i * 7 + 3) % (1 << bits)) as u8)
                .collect();
            let packed = pack_sub_byte(&values, bits).unwrap();
            assert_eq!(packed.len(), (37 * bits as usize).div_ceil(8));
            assert_eq!(
                unpack_sub_byte(&packed, bits, values.len()).unwrap(),
                values,
                "{bits} bits"
            );
        }
        // LSB first: elements 1 and 2 of uint4 share byte 0, low nibble first.
        assert_eq!(pack_sub_byte(&[0x1, 0x2], 4).unwrap(), vec![0x21]);
        // uint3 straddles bytes: 0b111 at index 2 occupies bits 6..9.
        assert_eq!(
            pack_sub_byte(&[0, 0, 7], 3).unwrap(),
            vec![0b1100_0000, 0b0000_0001]
        );
        assert_eq!(unpack_sub_byte(&[0xff], 4, 3), None);
    }
}
