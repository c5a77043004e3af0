//! Storing each distinct weight once.
//!
//! Two weight references share one blob when their data type, shape and
//! bytes are identical, bit for bit (coremltools compares approximately,
//! with `np.allclose`, which can merge weights that differ).
//!
//! The work is shaped for build scripts, where this crate may run
//! unoptimised: references are grouped by cheap keys first (data type,
//! shape, size), so a blob with a unique shape is never read at all. Within
//! a group, a fingerprint of a few sampled windows splits blobs that differ;
//! only blobs whose fingerprints match are compared in full, in chunks, with
//! the standard library's memcmp. Nothing is ever hashed whole.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::Hasher;
use std::io::Read;

use crate::error::{Error, Result};
use coreml_multifunction_format::package::blob::{self, BlobFile, BlobRecord, CompareBuffers};

/// Bytes read from each sampled window of a blob for its fingerprint.
const WINDOW: u64 = 4096;

/// One weight as a source stores it, with the shape it is used at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Candidate {
    /// Index of the source package.
    pub package: usize,
    /// The blob file name, as the source model writes it.
    pub file_name: String,
    /// The record offset in that file.
    pub offset: u64,
    /// The declared shape, when fully known.
    pub shape: Option<Vec<u64>>,
}

/// The outcome: for each candidate (in the order given), the index of the
/// distinct blob that stores it. Distinct blobs are numbered in order of
/// first use, which is the order they are written in.
#[derive(Debug)]
pub(crate) struct Plan {
    pub blob_of: Vec<usize>,
    /// For each distinct blob, the candidate whose bytes are written.
    pub representatives: Vec<usize>,
}

/// Groups `candidates` into distinct blobs. `open` gives the blob file and
/// record of a candidate.
pub(crate) fn plan<'a>(
    candidates: &[Candidate],
    open: &dyn Fn(&Candidate) -> Result<(&'a BlobFile, BlobRecord)>,
) -> Result<Plan> {
    let records = candidates
        .iter()
        .map(open)
        .collect::<Result<Vec<(&BlobFile, BlobRecord)>>>()?;

    // Cheap keys first: data type, padding, size and shape.
    type CoarseKey<'k> = (u32, u64, u64, &'k Option<Vec<u64>>);
    let mut groups: BTreeMap<CoarseKey<'_>, Vec<usize>> = BTreeMap::new();
    for (index, (candidate, (_, record))) in candidates.iter().zip(&records).enumerate() {
        groups
            .entry((
                record.data_type.code(),
                record.padding_bits,
                record.size,
                &candidate.shape,
            ))
            .or_default()
            .push(index);
    }

    // Within a group, candidates equal to an earlier one point at it.
    let mut same_as: Vec<usize> = (0..candidates.len()).collect();
    let mut buffers = CompareBuffers::default();
    for members in groups.values().filter(|members| members.len() > 1) {
        let mut fingerprints = BTreeMap::<u64, Vec<usize>>::new();
        for &index in members {
            let (file, record) = &records[index];
            fingerprints
                .entry(fingerprint(file, record)?)
                .or_default()
                .push(index);
        }
        for alike in fingerprints.values() {
            let mut representatives: Vec<usize> = Vec::new();
            for &index in alike {
                let (file, record) = &records[index];
                let mut found = None;
                for &kept in &representatives {
                    let (kept_file, kept_record) = &records[kept];
                    let equal = same_source(&candidates[index], &candidates[kept])
                        || blob::same_bytes(file, record, kept_file, kept_record, &mut buffers)
                            .map_err(|e| Error::io(file.path(), "compare weights", e))?;
                    if equal {
                        found = Some(kept);
                        break;
                    }
                }
                match found {
                    Some(kept) => same_as[index] = kept,
                    None => representatives.push(index),
                }
            }
        }
    }

    // Number the distinct blobs in order of first use.
    let mut number_of_representative = BTreeMap::new();
    let mut representatives = Vec::new();
    let mut blob_of = Vec::with_capacity(candidates.len());
    for (index, &root) in same_as.iter().enumerate() {
        // A representative is the earliest member of its group, so it is
        // met first and every later member finds its number.
        let number = *number_of_representative.entry(root).or_insert_with(|| {
            representatives.push(index);
            representatives.len() - 1
        });
        blob_of.push(number);
    }
    Ok(Plan {
        blob_of,
        representatives,
    })
}

/// The same record of the same file, seen through two references: equal
/// without reading anything.
fn same_source(a: &Candidate, b: &Candidate) -> bool {
    a.package == b.package && a.file_name == b.file_name && a.offset == b.offset
}

/// A hash of up to three windows (start, middle, end) of a blob: enough to
/// tell apart weights that merely share a shape, cheap whatever the size.
fn fingerprint(file: &BlobFile, record: &BlobRecord) -> Result<u64> {
    let mut hasher = DefaultHasher::new();
    let size = record.size;
    let windows: Vec<(u64, u64)> = if size <= 3 * WINDOW {
        vec![(0, size)]
    } else {
        vec![
            (0, WINDOW),
            (size / 2 - WINDOW / 2, WINDOW),
            (size - WINDOW, WINDOW),
        ]
    };
    let mut buffer = vec![0u8; WINDOW.min(size).max(1) as usize * 3];
    for (start, len) in windows {
        let window = BlobRecord {
            data_offset: record.data_offset + start,
            size: len,
            ..*record
        };
        let chunk = &mut buffer[..len as usize];
        file.reader(&window)
            .read_exact(chunk)
            .map_err(|e| Error::io(file.path(), "read weights", e))?;
        hasher.write(chunk);
    }
    Ok(hasher.finish())
}
