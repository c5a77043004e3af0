//! Finding or making the compiled model (`.mlmodelc`) Core ML loads: the
//! Core ML half of [`crate::runtime::compile_cache`], whose documentation
//! describes the order (build-time compile, cache, compile on first load).

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, PoisonError};

use block2::RcBlock;
use objc2_core_ml::MLModel;
use objc2_foundation::{NSError, NSURL};

use coreml_multifunction_format::compiled::{self, CacheKey};

use super::super::compile_cache;
use super::super::error::{Error, Result};
use super::{backend_error, core_ml_error, directory_url};

/// A compiled model to load.
#[derive(Debug)]
pub(super) struct Compiled {
    /// The `.mlmodelc` directory.
    pub(super) path: PathBuf,
    /// The key of the package it was compiled from.
    pub(super) key: CacheKey,
    /// Whether Core ML compiled it during this load (else it came from the
    /// build or the cache).
    pub(super) fresh: bool,
}

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// The compiled model of the package at `package`: precompiled beside it
/// with a matching stamp, else cached, else compiled now into the cache.
pub(super) fn find_or_compile(package: &Path) -> Result<Compiled> {
    let key = compiled::package_key(package).map_err(io_error(
        package,
        "hash the package's files for the compile cache",
    ))?;
    if let Some(path) = compiled::precompiled_for(package, &key) {
        return Ok(Compiled {
            path,
            key,
            fresh: false,
        });
    }
    let cached = compile_cache::cached_model_path(&compile_cache::default_cache_root(), &key);
    if cached.is_dir() {
        return Ok(Compiled {
            path: cached,
            key,
            fresh: false,
        });
    }
    compile_into(package, &cached)?;
    Ok(Compiled {
        path: cached,
        key,
        fresh: true,
    })
}

/// What to load after `previous` (not compiled during this load) failed
/// to: the cached model when `previous` was the build's and the cache has
/// one, else a fresh compile into the cache, evicting `previous` first
/// when it is the cache's entry.
pub(super) fn fallback(package: &Path, previous: &Compiled) -> Result<Compiled> {
    let cached =
        compile_cache::cached_model_path(&compile_cache::default_cache_root(), &previous.key);
    if previous.path != cached && cached.is_dir() {
        return Ok(Compiled {
            path: cached,
            key: previous.key,
            fresh: false,
        });
    }
    if previous.path == cached {
        compile_cache::evict(&cached)
            .map_err(io_error(&cached, "remove a damaged cached model"))?;
    }
    compile_into(package, &cached)?;
    Ok(Compiled {
        path: cached,
        key: previous.key,
        fresh: true,
    })
}

/// Compiles with Core ML and installs the result at `destination`.
fn compile_into(package: &Path, destination: &Path) -> Result<()> {
    let compiled = compile_with_core_ml(package)?;
    let installed = compile_cache::install_dir(&compiled, destination).map_err(io_error(
        destination,
        "move the compiled model into the cache",
    ));
    // Core ML leaves its output in a temporary directory for the caller to
    // move; after a copy across file systems the original is still there.
    if compiled.exists() {
        let _ = fs::remove_dir_all(&compiled);
    }
    installed.map(|_| ())
}

type Outcome = std::result::Result<PathBuf, Error>;

// The compile handler runs on a Core ML queue, and block2 does not check
// what a block captures: this fails to compile unless what it captures is
// `Send + Sync`.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Mutex<Option<mpsc::Sender<Outcome>>>>();
};

/// Compiles the package with `+[MLModel compileModelAtURL:completionHandler:]`
/// (macOS 13 / iOS 16 / tvOS 16 / visionOS 1; not on watchOS), waiting for
/// the completion handler on a channel. Returns the temporary `.mlmodelc`
/// Core ML wrote.
///
/// The asynchronous API is used because Apple deprecates the synchronous
/// `compileModelAtURL:error:` in its favour, and documents `.mlpackage`
/// input only for it.
fn compile_with_core_ml(package: &Path) -> Result<PathBuf> {
    if !objc2::available!(macos = 13.0, ios = 16.0, tvos = 16.0, visionos = 1.0) {
        return Err(Error::OsTooOld(
            "compiling a model on the device needs macOS 13, iOS 16, tvOS 16 or visionOS 1, and \
             is not possible on watchOS: compile it at build time with \
             `coreml_multifunction_build::compile_with_xcrun` and ship the .mlmodelc beside the package"
                .to_string(),
        ));
    }
    let url = directory_url(package)?;
    let (sender, receiver) = mpsc::channel::<Outcome>();
    // The handler is `Fn` and may be called on any thread: the sender sits
    // in a mutex and is taken by the first call.
    let sender = Mutex::new(Some(sender));
    let handler = RcBlock::new(move |compiled: *mut NSURL, error: *mut NSError| {
        let outcome = catch_unwind(AssertUnwindSafe(|| -> Outcome {
            // SAFETY: Core ML passes the compiled model's URL on success and
            // an error on failure, each valid for this call or nil.
            let (compiled, error) = unsafe { (compiled.as_ref(), error.as_ref()) };
            match (compiled, error) {
                (Some(url), _) => url.to_file_path().ok_or_else(|| {
                    backend_error("Core ML compiled the model to a URL that is not a file path")
                }),
                (None, Some(error)) => Err(core_ml_error(error)),
                (None, None) => Err(backend_error(
                    "Core ML finished compiling with neither a model nor an error",
                )),
            }
        }))
        .unwrap_or_else(|_| {
            Err(backend_error(
                "a panic in the compile completion handler was caught",
            ))
        });
        let sender = sender.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(sender) = sender {
            let _ = sender.send(outcome);
        }
    });
    // SAFETY: `url` is a file URL of the package directory, on a system with
    // this API (checked above). The handler is a heap block (`RcBlock`) that
    // Core ML retains as long as it needs; everything it captures (a mutex
    // around a channel sender of `Send` values) is `Send` and `Sync`, so
    // calling it on Core ML's own queue is sound.
    unsafe { MLModel::compileModelAtURL_completionHandler(&url, &handler) };
    receiver.recv().unwrap_or_else(|_| {
        Err(backend_error(
            "Core ML released the compile completion handler without calling it",
        ))
    })
}
