//! The build crate's error type: a package error from the format crate, or
//! what only this crate can get wrong (the configuration, the generated API,
//! a merge request). Of this crate it imports only `config::ConfigError`,
//! and `config` imports nothing back, so every module can use it.
//!
//! Every error names the file, the Cargo.toml key or the function it is
//! about. Tests match on [`Problem`] and [`MergeProblem`] rather than on
//! message text, so messages can be improved without breaking them.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use coreml_multifunction_format::naming::quoted_list;
pub use coreml_multifunction_format::Problem;

use crate::config::ConfigError;

/// Shorthand for results whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a build, a merge or a comparison failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written, or a package holds something
    /// this crate cannot accept; the file at fault is named.
    #[error(transparent)]
    Package(#[from] coreml_multifunction_format::Error),
    /// The `[package.metadata.multifunction]` configuration is wrong.
    #[error("{0}")]
    Config(Box<ConfigError>),
    /// The typed API cannot be generated for a model.
    #[error("{0}")]
    Codegen(Box<CodegenError>),
    /// A merge request cannot be carried out as asked.
    #[error("{0}")]
    Merge(Box<MergeProblem>),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        Error::Package(coreml_multifunction_format::Error::io(path, action, source))
    }

    pub(crate) fn merge(problem: MergeProblem) -> Self {
        Error::Merge(Box::new(problem))
    }

    /// The file or directory the error is about, if it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Error::Package(error) => error.path(),
            Error::Config(error) => Some(&error.manifest),
            Error::Merge(_) | Error::Codegen(_) => None,
        }
    }

    /// What is wrong, when the error is about a file's content.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Package(error) => error.problem(),
            _ => None,
        }
    }

    /// What is wrong, when the error is about a merge request.
    pub fn merge_problem(&self) -> Option<&MergeProblem> {
        match self {
            Error::Merge(problem) => Some(problem),
            _ => None,
        }
    }
}

/// Why code could not be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model `{model}`: {message}")]
pub struct CodegenError {
    /// The model.
    pub model: String,
    /// What went wrong, naming the features or functions involved.
    pub message: String,
}

/// Why a merge request cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MergeProblem {
    /// The descriptor lists no function.
    #[error("nothing to merge: add at least one function")]
    NoFunctions,
    /// A source function does not exist in its package.
    #[error(
        "{}: has no function {function:?}; its functions are {}",
        package.display(),
        quoted_list(available.iter().map(String::as_str))
    )]
    UnknownSourceFunction {
        /// The source package.
        package: PathBuf,
        /// The function asked for.
        function: String,
        /// The functions it has.
        available: Vec<String>,
    },
    /// Two functions were given the same target name.
    #[error(
        "two functions are named {target:?} in the merged model ({first} and {second}); \
         give each a distinct target name"
    )]
    DuplicateTarget {
        /// The name.
        target: String,
        /// The first source given that name.
        first: String,
        /// The second one.
        second: String,
    },
    /// A target name is not a MIL identifier.
    #[error(
        "{target:?} cannot name a function: Core ML function names match \
         [A-Za-z_][A-Za-z0-9_@]* (letters, digits, _ and @, not starting with a digit)"
    )]
    InvalidTargetName {
        /// The name.
        target: String,
    },
    /// No default function was set.
    #[error(
        "no default function set; choose one of {} (a multifunction model must name the \
         function a plain load runs)",
        quoted_list(targets.iter().map(String::as_str))
    )]
    MissingDefault {
        /// The functions to choose from.
        targets: Vec<String>,
    },
    /// The default function is not one of the targets.
    #[error(
        "the default function {default:?} is not one of the merged functions ({})",
        quoted_list(targets.iter().map(String::as_str))
    )]
    UnknownDefault {
        /// The name given.
        default: String,
        /// The functions to choose from.
        targets: Vec<String>,
    },
    /// A function's body cannot be moved to the merged model's opset.
    #[error(
        "{}: function {function:?} cannot be raised from opset {from} to {to}: {reason}; \
         re-convert it with minimum_deployment_target=iOS18 (coremltools cannot merge it either)",
        package.display()
    )]
    OpsetCannotBeRaised {
        /// The source package.
        package: PathBuf,
        /// The source function.
        function: String,
        /// Its opset.
        from: String,
        /// The merged model's opset.
        to: String,
        /// Why: the op at fault and what changed.
        reason: String,
    },
    /// A fixed shape names a function the merge does not have.
    #[error(
        "a fixed shape is given for {target:?}, which is not one of the merged functions ({})",
        quoted_list(targets.iter().map(String::as_str))
    )]
    UnknownShapeTarget {
        /// The function named.
        target: String,
        /// The merged functions.
        targets: Vec<String>,
    },
    /// A fixed shape names an input its function does not have.
    #[error(
        "function {target:?} (function {source_function:?} of {}) has no input {input:?} to \
         fix the shape of; its inputs are {}",
        package.display(),
        quoted_list(inputs.iter().map(String::as_str))
    )]
    UnknownShapeInput {
        /// The merged function.
        target: String,
        /// Its source package.
        package: PathBuf,
        /// Its source function.
        source_function: String,
        /// The input named.
        input: String,
        /// The inputs it has.
        inputs: Vec<String>,
    },
    /// A fixed shape is not one the input allows.
    #[error(
        "function {target:?}: input {input:?} of function {source_function:?} of {} cannot \
         take the shape {}: it allows {allowed}",
        package.display(),
        shape_text(shape)
    )]
    ShapeNotAllowed {
        /// The merged function.
        target: String,
        /// Its source package.
        package: PathBuf,
        /// Its source function.
        source_function: String,
        /// The input.
        input: String,
        /// The shape asked for.
        shape: Vec<u64>,
        /// The shapes the input allows, as its description declares them
        /// (`[1, 1..=64]`, or `one of [1, 3, 16, 16], [1, 3, 32, 32]`).
        allowed: String,
    },
    /// A fixed-shape function cannot be built from its source: an op's
    /// type at the fixed shapes cannot be inferred, or contradicts the
    /// source.
    #[error(
        "function {target:?} (function {source_function:?} of {} at {}): {reason}",
        package.display(),
        shapes_text(shapes)
    )]
    CannotMaterialize {
        /// The merged function.
        target: String,
        /// Its source package.
        package: PathBuf,
        /// Its source function.
        source_function: String,
        /// The fixed input shapes.
        shapes: BTreeMap<String, Vec<u64>>,
        /// What failed, naming the op (its output name and type).
        reason: String,
    },
    /// Chunks are asked for a function the merge does not have.
    #[error(
        "chunks are asked for {target:?}, which is not one of the merged functions ({})",
        quoted_list(targets.iter().map(String::as_str))
    )]
    UnknownChunkTarget {
        /// The function named.
        target: String,
        /// The merged functions.
        targets: Vec<String>,
    },
    /// One op's own weights exceed the chunk budget, so no split can keep
    /// every chunk within it.
    #[error(
        "function {target:?} cannot be split within max-chunk-bytes {}: op {op:?} ({op_type}) \
         alone holds {} of weights; raise the budget to at least that, or split the op's \
         weights in the model",
        Bytes(*budget),
        Bytes(*bytes)
    )]
    OpOverBudget {
        /// The function being split.
        target: String,
        /// The op's first output name.
        op: String,
        /// The op's type.
        op_type: String,
        /// Its weight bytes, as stored.
        bytes: u64,
        /// The budget.
        budget: u64,
    },
    /// A function cannot be split as asked.
    #[error("function {target:?} (function {source_function:?} of {}) cannot be split: {reason}", package.display())]
    CannotSplit {
        /// The function being split.
        target: String,
        /// Its source package.
        package: PathBuf,
        /// Its source function.
        source_function: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The destination is one of the sources.
    #[error(
        "{}: the destination is also a source; write the merged model elsewhere \
         (input packages are never modified)",
        destination.display()
    )]
    DestinationIsSource {
        /// The destination.
        destination: PathBuf,
    },
}

/// `[1, 8]`.
pub(crate) fn shape_text(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// `input_ids = [1, 8], mask = [1, 8]`.
fn shapes_text(shapes: &BTreeMap<String, Vec<u64>>) -> String {
    shapes
        .iter()
        .map(|(input, shape)| format!("{input} = {}", shape_text(shape)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A byte count, displayed the way the CLI shows sizes (`1.5 KiB`).
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64;
        let mut unit = "B";
        for candidate in UNITS {
            if value < 1024.0 {
                break;
            }
            value /= 1024.0;
            unit = candidate;
        }
        write!(f, "{value:.1} {unit}")
    }
}

impl std::str::FromStr for Bytes {
    type Err = String;

    /// Reads a size as written in Cargo.toml and on the command line: a
    /// whole number of bytes, optionally followed by `K`, `M` or `G`
    /// (powers of 1024, either case): `"900M"`, `"1G"`, `"512K"`,
    /// `"4096"`. The error says what was wrong and what to write.
    fn from_str(text: &str) -> Result<Bytes, String> {
        const FORM: &str = "write a whole number of bytes, optionally followed by K, M or G \
                            (powers of 1024), such as \"900M\"";
        let (digits, shift) = match text.char_indices().last() {
            None => return Err(format!("the size is empty; {FORM}")),
            Some((at, 'k' | 'K')) => (&text[..at], 10),
            Some((at, 'm' | 'M')) => (&text[..at], 20),
            Some((at, 'g' | 'G')) => (&text[..at], 30),
            Some(_) => (text, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{text:?} is not a size; {FORM}"));
        }
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .map(Bytes)
            .ok_or_else(|| format!("{text:?} is too large a size (at most {} bytes)", u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_bytes_or_with_binary_suffixes() {
        let parse = |text: &str| text.parse::<Bytes>().map(|b| b.0);
        assert_eq!(parse("900M"), Ok(900 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("1g"), Ok(1 << 30));
        assert_eq!(parse("512K"), Ok(512 << 10));
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("0"), Ok(0));
        for bad in [
            "900MB", "-1", "1.5G", "G", "M1", " 1M", "1 M", "+1", "0x10", "1T",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("is not a size"), "{bad}: {error}");
            assert!(error.contains("such as \"900M\""), "{bad}: {error}");
        }
        assert!(parse("").unwrap_err().starts_with("the size is empty"));
        assert!(parse("99999999999G").unwrap_err().contains("too large"));
        assert!(parse("99999999999999999999")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(Bytes(0).to_string(), "0 B");
        assert_eq!(Bytes(1023).to_string(), "1023 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
        assert_eq!(Bytes(140 * 1024 * 1024).to_string(), "140.0 MiB");
    }

    #[test]
    fn package_errors_keep_their_path_and_problem() {
        let error = Error::from(coreml_multifunction_format::Error::invalid(
            "a/weight.bin",
            Problem::TruncatedBlobFile { len: 3 },
        ));
        assert_eq!(error.path(), Some(Path::new("a/weight.bin")));
        assert_eq!(
            error.problem(),
            Some(&Problem::TruncatedBlobFile { len: 3 })
        );
        assert!(error.to_string().starts_with("a/weight.bin: "), "{error}");
    }
}
