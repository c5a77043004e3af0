//! Errors of the package format: reading, checking and writing `.mlpackage`
//! directories. The runtime wraps them in its own error; the build crate in
//! its own.
//!
//! Every error names the file it is about and says what is wrong with it in
//! words a user can act on. Tests match on [`Problem`] rather than on message
//! text, so messages can be improved without breaking them.

use std::io;
use std::path::{Path, PathBuf};

/// Shorthand for results whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from reading, checking or writing a Core ML package.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file system refused an operation.
    #[error("{}: could not {action}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done, as a verb phrase ("read the manifest").
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file holds something this crate cannot accept.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it (boxed: errors stay small on the happy path).
        problem: Box<Problem>,
    },
}

impl Error {
    /// An [`Error::Io`]: `action` on `path` failed with `source`.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            action,
            source,
        }
    }

    /// An [`Error::Invalid`]: the file at `path` has `problem`.
    pub fn invalid(path: impl Into<PathBuf>, problem: Problem) -> Self {
        Error::Invalid {
            path: path.into(),
            problem: Box::new(problem),
        }
    }

    /// The file or directory the error is about, if it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. } | Error::Invalid { path, .. } => Some(path),
        }
    }

    /// What is wrong, when the error is about a file's content.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Invalid { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// What is wrong with a file. Each message ends with what to do about it
/// where there is something to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    // ---- the package directory and its manifest -------------------------
    /// The path does not exist.
    #[error("no such file or directory; check the path")]
    NotFound,
    /// A `.mlmodel` file was given where a package directory is needed.
    #[error(
        "is a bare .mlmodel file holding a {model_type} model; this crate reads .mlpackage \
         directories holding ML Programs (convert with coremltools, convert_to=\"mlprogram\")"
    )]
    BareModelFile {
        /// The model type found in the file.
        model_type: String,
    },
    /// The path is neither a package directory nor a model file.
    #[error("is not an .mlpackage directory")]
    NotAPackage,
    /// `Manifest.json` is not valid JSON or lacks a required key.
    #[error("is not a valid Core ML package manifest: {detail}")]
    MalformedManifest {
        /// The parser's explanation.
        detail: String,
    },
    /// The manifest declares a file format this crate does not know.
    #[error(
        "declares package format {version}, but only 1.0.0 is supported; \
         re-save the package with coremltools 9 or earlier formats"
    )]
    UnsupportedManifestVersion {
        /// The declared `fileFormatVersion`.
        version: String,
    },
    /// `rootModelIdentifier` names no item.
    #[error("the root model identifier {identifier:?} names no entry of itemInfoEntries")]
    UnknownRootItem {
        /// The identifier.
        identifier: String,
    },
    /// A path inside the package would lead outside it.
    #[error(
        "the path {item_path:?} leaves the package (absolute, `..` or a symlink pointing \
         outside); refusing to follow it"
    )]
    PathEscapesPackage {
        /// The offending path, as written in the package.
        item_path: String,
    },
    /// An item or file that the package refers to is not there.
    #[error("refers to {item_path:?}, which does not exist in the package")]
    MissingItem {
        /// The path, as written in the package.
        item_path: String,
    },
    /// A file is larger than this crate is willing to load into memory.
    #[error("is {len} bytes, more than the {limit} bytes allowed for this kind of file")]
    TooLarge {
        /// The file's length.
        len: u64,
        /// The limit.
        limit: u64,
    },

    /// A package cannot be written where asked.
    #[error("cannot write a package here: {reason}")]
    InvalidDestination {
        /// Why not.
        reason: String,
    },

    // ---- the model specification ------------------------------------------
    /// `model.mlmodel` is not a decodable Core ML model.
    #[error("is not a valid Core ML model specification: {detail}")]
    MalformedSpec {
        /// The decoder's explanation.
        detail: String,
    },
    /// The model is not an ML Program.
    #[error(
        "holds a {model_type} model, not an ML Program; multifunction models need ML Programs \
         (convert with coremltools, convert_to=\"mlprogram\", minimum_deployment_target iOS 15 or later)"
    )]
    NotMlProgram {
        /// The model type found.
        model_type: String,
    },
    /// Decoding would silently drop fields this crate does not know.
    #[error(
        "carries protobuf fields this crate does not know ({original_len} bytes on disk, \
         {decoded_len} bytes after decoding); it was probably written for a newer Core ML \
         specification. Refusing it rather than dropping them: please report it with the \
         coremltools version that wrote the model"
    )]
    UnknownFields {
        /// The encoded length on disk.
        original_len: u64,
        /// The length after a decode/encode cycle.
        decoded_len: u64,
    },
    /// The model description or program is inconsistent.
    #[error("{detail}")]
    InconsistentSpec {
        /// What is inconsistent.
        detail: String,
    },

    // ---- weight blob files ------------------------------------------------
    /// The weight file is shorter than its 64-byte header.
    #[error(
        "is {len} bytes long, shorter than the 64-byte blob storage header; the file is \
         truncated: re-export the model"
    )]
    TruncatedBlobFile {
        /// The file's length.
        len: u64,
    },
    /// The weight file is not blob storage version 2.
    #[error(
        "uses blob storage version {version}; only version 2 (written by coremltools 5 and \
         later) is supported"
    )]
    UnsupportedStorageVersion {
        /// The version in the header.
        version: u32,
    },
    /// A blob record does not start with the 0xDEADBEEF sentinel.
    #[error(
        "the blob record at offset {offset} has sentinel {found:#010x} instead of 0xdeadbeef; \
         the offset is wrong or the file is damaged"
    )]
    BadSentinel {
        /// The record's offset.
        offset: u64,
        /// The value found.
        found: u32,
    },
    /// A blob record is not where records may be.
    #[error("no blob record can start at offset {offset}: {reason}")]
    BadRecordOffset {
        /// The offset asked for.
        offset: u64,
        /// Why it is not valid.
        reason: String,
    },
    /// A blob's data runs past the end of the file.
    #[error(
        "the blob record at offset {offset} declares {size} bytes of data at offset \
         {data_offset}, past the end of the {file_len}-byte file; the file is truncated or damaged"
    )]
    BlobOutOfBounds {
        /// The record's offset.
        offset: u64,
        /// The declared data offset.
        data_offset: u64,
        /// The declared data size.
        size: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A blob record names a data type code this crate does not know.
    #[error("the blob record at offset {offset} has unknown data type code {code}")]
    UnknownBlobDataType {
        /// The record's offset.
        offset: u64,
        /// The code.
        code: u32,
    },
    /// The header's blob count disagrees with the records in the file.
    #[error(
        "the header declares {declared} blobs but the file holds {found}; the file is damaged"
    )]
    BlobCountMismatch {
        /// The count in the header.
        declared: u64,
        /// The records found by walking the file.
        found: u64,
    },
    /// A blob's stored data type differs from the type the model declares.
    #[error(
        "the blob at offset {offset} stores {stored} data, but {value} in function {function:?} \
         declares {declared}"
    )]
    BlobTypeMismatch {
        /// The record's offset.
        offset: u64,
        /// Where the reference is (an op or argument name).
        value: String,
        /// The function holding the reference.
        function: String,
        /// The type the model declares.
        declared: String,
        /// The type in the record.
        stored: String,
    },
    /// A blob's size differs from what its declared shape needs.
    #[error(
        "the blob at offset {offset} holds {stored} bytes, but {value} in function {function:?} \
         declares a tensor needing {expected}"
    )]
    BlobSizeMismatch {
        /// The record's offset.
        offset: u64,
        /// Where the reference is.
        value: String,
        /// The function holding the reference.
        function: String,
        /// The bytes the shape needs.
        expected: u64,
        /// The bytes in the record.
        stored: u64,
    },
    /// A blob reference's offset is not the start of any record.
    #[error(
        "{value} in function {function:?} refers to offset {offset}, which is not the start of \
         any blob record in the file"
    )]
    DanglingBlobReference {
        /// The offset referred to.
        offset: u64,
        /// Where the reference is.
        value: String,
        /// The function holding the reference.
        function: String,
    },
    /// A blob reference's file name is not of the form `@model_path/...`.
    #[error(
        "the blob file name {file_name:?} does not start with \"@model_path/\"; Core ML resolves \
         weight files relative to the model only"
    )]
    BadBlobFileName {
        /// The file name.
        file_name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file() {
        let error = Error::invalid("a/weight.bin", Problem::TruncatedBlobFile { len: 3 });
        let message = error.to_string();
        assert!(message.starts_with("a/weight.bin: "), "{message}");
        assert!(message.contains("truncated"), "{message}");
        assert_eq!(error.path(), Some(Path::new("a/weight.bin")));
    }
}
