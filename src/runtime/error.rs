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
    /// Core ML reported an error (an `NSError`), or raised an Objective-C
    /// exception (domain `NSException`, code 0, the exception's name and
    /// reason as the message).
    #[error("Core ML: {message} ({domain} error {code})")]
    CoreMl {
        /// The error domain (`NSException` for an exception).
        domain: String,
        /// The error code.
        code: isize,
        /// The localized description, with the failure reason and the
        /// underlying error's description when Core ML gives them.
        message: String,
        /// The error Core ML reports as the cause (`NSUnderlyingErrorKey`).
        #[source]
        underlying: Option<Box<Error>>,
    },
    /// A chunk of a [`super::Pipeline`] failed: the pipeline (the split
    /// function's name), the chunk (a function of the package) and why.
    #[error("pipeline {pipeline:?}, chunk {chunk:?}: {source}")]
    Pipeline {
        /// The pipeline: the name of the function split into the chunks.
        pipeline: String,
        /// The chunk that failed.
        chunk: String,
        /// What failed.
        #[source]
        source: Box<Error>,
    },
    /// A state made by a function of one compiled copy of a package was
    /// passed to a function loaded from another copy. Core ML documents a
    /// state only as made by `newState` of the model it is used with, and
    /// within one process every function of a package loads from one
    /// compiled copy; two copies mean the package changed on disk between
    /// the loads (or one function was loaded from a bundled `.mlmodelc`
    /// and the other from the package).
    #[error(
        "function {function:?} is loaded from {}, but this state was made by a function loaded \
         from {}: make the state with this function's new_state(), or load both functions from \
         the same path",
        function_copy.display(),
        state_copy.display()
    )]
    OtherCompiledCopy {
        /// The function given the state.
        function: String,
        /// The compiled model the function was loaded from.
        function_copy: PathBuf,
        /// The compiled model the state's maker was loaded from.
        state_copy: PathBuf,
    },
    /// No copy of the model was found: every place looked in, in order.
    #[error(
        "model {model:?} was found nowhere; looked in {}: put the compiled model or the package \
         in the app bundle's resources (`copy-to`; the README's \"Core ML: compiled models\"), \
         or load it by path with load_from",
        looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    ModelNotFound {
        /// The model's name (the package's file stem).
        model: String,
        /// Every path looked at, in order.
        looked: Vec<PathBuf>,
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

/// What a load tried after the first compiled copy it loaded failed to load
/// with an error meaning the copy is damaged.
#[cfg(any(target_vendor = "apple", test))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The cache's copy, after the build's.
    LoadCached,
    /// A fresh compile, which itself failed.
    Compile,
    /// A fresh compile, which compiled but did not load.
    LoadRecompiled,
}

#[cfg(any(target_vendor = "apple", test))]
impl Error {
    /// This error (the first load's, what the caller sees) with what the
    /// fallback `tried` then failed with appended to its message, saying
    /// which fallback it was.
    pub(crate) fn with_fallback_failure(self, tried: Fallback, fallback: Error) -> Error {
        let what = match tried {
            Fallback::LoadCached => "the cache's compiled copy did not load either",
            Fallback::Compile => "compiling the model again failed",
            Fallback::LoadRecompiled => "a fresh compile did not load either",
        };
        self.with_core_ml_message(|message| format!("{message} ({what}: {fallback})"))
    }

    /// This error with its Core ML message rewritten by `rewrite` (other
    /// errors unchanged).
    pub(crate) fn with_core_ml_message(self, rewrite: impl FnOnce(String) -> String) -> Error {
        match self {
            Error::CoreMl {
                domain,
                code,
                message,
                underlying,
            } => Error::CoreMl {
                domain,
                code,
                message: rewrite(message),
                underlying,
            },
            other => other,
        }
    }
}

/// Making [`Error::CoreMl`] values from what Objective-C reports, kept free
/// of Objective-C types so it is tested on every host.
#[cfg(any(target_vendor = "apple", test))]
impl Error {
    /// An `NSError`: `description` is its localized description, `reason`
    /// its localized failure reason, `underlying` the error under
    /// `NSUnderlyingErrorKey`, already converted. The reason and the
    /// underlying error's message are appended to the message (when they
    /// say something the description does not), so the one line a caller
    /// prints carries them.
    pub(crate) fn from_ns_error(
        domain: String,
        code: isize,
        description: String,
        reason: Option<String>,
        underlying: Option<Error>,
    ) -> Error {
        let mut message = description;
        if let Some(reason) = reason.filter(|r| !r.is_empty() && !message.contains(r.as_str())) {
            message = format!("{message}: {reason}");
        }
        if let Some(Error::CoreMl {
            domain,
            code,
            message: cause,
            ..
        }) = &underlying
        {
            message = format!("{message} (caused by: {cause} ({domain} error {code}))");
        }
        Error::CoreMl {
            domain,
            code,
            message,
            underlying: underlying.map(Box::new),
        }
    }

    /// An Objective-C exception raised while `during` (what this crate was
    /// doing), with its name and reason (`None` when the exception is not
    /// an `NSException`, or nil).
    pub(crate) fn from_exception(
        during: &str,
        name: Option<String>,
        reason: Option<String>,
    ) -> Error {
        let name = name.unwrap_or_else(|| "an Objective-C exception".to_string());
        let reason = reason.unwrap_or_else(|| "no reason given".to_string());
        Error::CoreMl {
            domain: "NSException".to_string(),
            code: 0,
            message: format!("{during}: Core ML raised {name}: {reason}"),
            underlying: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_errors_keep_their_reason_and_cause() {
        let underlying = Error::from_ns_error(
            "NSCocoaErrorDomain".to_string(),
            260,
            "The file \u{201c}model.mil\u{201d} couldn\u{2019}t be opened".to_string(),
            None,
            None,
        );
        let error = Error::from_ns_error(
            "com.apple.CoreML".to_string(),
            3,
            "Failed to load the model".to_string(),
            Some("The compiled model is incomplete.".to_string()),
            Some(underlying),
        );
        assert_eq!(
            error.to_string(),
            "Core ML: Failed to load the model: The compiled model is incomplete. (caused by: \
             The file \u{201c}model.mil\u{201d} couldn\u{2019}t be opened (NSCocoaErrorDomain \
             error 260)) (com.apple.CoreML error 3)"
        );
        let Error::CoreMl {
            domain,
            code,
            underlying,
            ..
        } = &error
        else {
            panic!("{error:?}")
        };
        assert_eq!((domain.as_str(), *code), ("com.apple.CoreML", 3));
        assert!(matches!(
            underlying.as_deref(),
            Some(Error::CoreMl { code: 260, .. })
        ));
        assert!(std::error::Error::source(&error).is_some());

        // A reason the description already holds is not repeated.
        let plain = Error::from_ns_error(
            "com.apple.CoreML".to_string(),
            0,
            "Bad model: it is bad".to_string(),
            Some("it is bad".to_string()),
            None,
        );
        assert_eq!(
            plain.to_string(),
            "Core ML: Bad model: it is bad (com.apple.CoreML error 0)"
        );
        assert!(std::error::Error::source(&plain).is_none());
    }

    #[test]
    fn a_failed_fallback_says_which_fallback_failed() {
        let first = || Error::CoreMl {
            domain: "com.apple.CoreML".to_string(),
            code: 3,
            message: "/out/m.mlmodelc: unreadable".to_string(),
            underlying: None,
        };
        let second = || Error::CoreMl {
            domain: "com.apple.CoreML".to_string(),
            code: 0,
            message: "engine failure".to_string(),
            underlying: None,
        };
        let cached = first().with_fallback_failure(Fallback::LoadCached, second());
        assert_eq!(
            cached.to_string(),
            "Core ML: /out/m.mlmodelc: unreadable (the cache's compiled copy did not load \
             either: Core ML: engine failure (com.apple.CoreML error 0)) (com.apple.CoreML \
             error 3)"
        );
        assert!(!cached.to_string().contains("compiling"), "{cached}");
        let compile = first().with_fallback_failure(Fallback::Compile, second());
        assert!(
            compile
                .to_string()
                .contains("compiling the model again failed"),
            "{compile}"
        );
        let reloaded = first().with_fallback_failure(Fallback::LoadRecompiled, second());
        assert!(
            reloaded
                .to_string()
                .contains("a fresh compile did not load either"),
            "{reloaded}"
        );
        // The first error's domain and code are what the caller matches.
        assert!(matches!(reloaded, Error::CoreMl { code: 3, .. }));
    }

    #[test]
    fn missing_models_and_other_copies_say_what_to_do() {
        let missing = Error::ModelNotFound {
            model: "llm".to_string(),
            looked: vec![
                PathBuf::from("/App.app/llm.mlmodelc"),
                PathBuf::from("/App.app/llm.mlpackage"),
                PathBuf::from("/build/out/llm.mlpackage"),
            ],
        };
        assert_eq!(
            missing.to_string(),
            "model \"llm\" was found nowhere; looked in /App.app/llm.mlmodelc, \
             /App.app/llm.mlpackage, /build/out/llm.mlpackage: put the compiled model or the \
             package in the app bundle's resources (`copy-to`; the README's \"Core ML: \
             compiled models\"), or load it by path with load_from"
        );
        let other = Error::OtherCompiledCopy {
            function: "decode".to_string(),
            function_copy: PathBuf::from("/cache/b.mlmodelc"),
            state_copy: PathBuf::from("/cache/a.mlmodelc"),
        };
        let text = other.to_string();
        assert!(
            text.contains("/cache/b.mlmodelc") && text.contains("/cache/a.mlmodelc"),
            "{text}"
        );
        assert!(text.contains("new_state()"), "{text}");
    }

    #[test]
    fn exceptions_name_what_was_raised_and_why() {
        let error = Error::from_exception(
            "reading state \"kv_cache\"",
            Some("NSInvalidArgumentException".to_string()),
            Some("The backing object for the state named kv doesn't exist.".to_string()),
        );
        assert_eq!(
            error.to_string(),
            "Core ML: reading state \"kv_cache\": Core ML raised NSInvalidArgumentException: The \
             backing object for the state named kv doesn't exist. (NSException error 0)"
        );
        let nil = Error::from_exception("predicting", None, None);
        assert!(
            nil.to_string()
                .contains("Core ML raised an Objective-C exception: no reason given"),
            "{nil}"
        );
    }
}
