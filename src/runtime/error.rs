//! Errors of loading and running models.

use std::path::PathBuf;

/// Shorthand for results of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The package could not be read.
    #[error(transparent)]
    Package(#[from] coreml_multifunction_format::Error),
    /// The package has no such function.
    #[error("{}: has no function {function:?}; its functions are {available}", package.display())]
    UnknownFunction {
        /// The package.
        package: PathBuf,
        /// The function asked for.
        function: String,
        /// The functions it has, quoted and comma-separated.
        available: String,
    },
    /// The requested backend does not exist on this platform.
    #[error("{0}")]
    UnsupportedPlatform(String),
    /// The operating system is older than the models need.
    #[error("{0}")]
    OsTooOld(String),
    /// The function uses operations the reference backend does not run:
    /// every one of them, found when the function is loaded.
    #[error(
        "function {function:?} uses {}, which the reference CPU backend does not implement; \
         run it with Core ML on an Apple platform (`coreml-multifunction inspect` lists what \
         each function needs)",
        describe_ops(ops)
    )]
    UnsupportedOps {
        /// The function.
        function: String,
        /// The op types it lacks, sorted, each once.
        ops: Vec<String>,
    },
    /// The model is not something the backend can run as written.
    #[error("function {function:?}: {detail}")]
    InvalidModel {
        /// The function.
        function: String,
        /// What is wrong.
        detail: String,
    },
    /// A required input was not given.
    #[error("input {name:?} of function {function:?} is missing")]
    MissingInput {
        /// The function.
        function: String,
        /// The input.
        name: String,
    },
    /// An input the function does not have was given.
    #[error("function {function:?} has no input {name:?}; its inputs are {expected}")]
    UnknownInput {
        /// The function.
        function: String,
        /// The input given.
        name: String,
        /// The inputs it has.
        expected: String,
    },
    /// An input of the wrong kind or element type.
    #[error("input {name:?} of function {function:?} must be {expected}, not {found}")]
    WrongType {
        /// The function.
        function: String,
        /// The input.
        name: String,
        /// What it must be.
        expected: String,
        /// What it was.
        found: String,
    },
    /// An input of a shape the function does not accept.
    #[error(
        "input {name:?} of function {function:?} has shape {found:?}, but it accepts {allowed}"
    )]
    WrongShape {
        /// The function.
        function: String,
        /// The input.
        name: String,
        /// The shape given.
        found: Vec<usize>,
        /// The shapes accepted.
        allowed: String,
    },
    /// A tensor's element count does not match its shape.
    #[error("a tensor of shape {shape:?} needs a matching number of elements, not {elements}")]
    ElementCount {
        /// The shape.
        shape: Vec<usize>,
        /// The elements given.
        elements: usize,
    },
    /// A state from another model, or of different buffers, was passed.
    #[error("this state does not belong to function {function:?}: {detail}")]
    WrongState {
        /// The function.
        function: String,
        /// Why.
        detail: String,
    },
    /// An output had a type other than the one the description declares.
    #[error("output {name:?} of function {function:?}: {detail}")]
    Output {
        /// The function.
        function: String,
        /// The output.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// Core ML reported an error (an `NSError`).
    #[error("Core ML: {message} ({domain} error {code})")]
    CoreMl {
        /// The error domain.
        domain: String,
        /// The error code.
        code: isize,
        /// The localized description.
        message: String,
    },
    /// A file system operation failed.
    #[error("{}: could not {action}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// "op \"a\"" or "ops \"a\", \"b\"".
fn describe_ops(ops: &[String]) -> String {
    let quoted: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
    match quoted.as_slice() {
        [one] => format!("op {one}"),
        _ => format!("ops {}", quoted.join(", ")),
    }
}
