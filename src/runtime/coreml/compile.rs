//! Finding or making the compiled model (`.mlmodelc`) Core ML loads: the
//! Core ML half of [`crate::runtime::compile_cache`], whose documentation
//! describes the order (build-time compile, cache, compile on first load),
//! the bounds and when a model is compiled again.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use objc2::rc::autoreleasepool;
use objc2_core_ml::MLModel;

use coreml_multifunction_format::compiled::{self, PackageKey};

use super::super::compile_cache::{self, MAX_ENTRIES};
use super::super::error::{Error, Result};
use super::{backend_error, catching, core_ml_error, directory_url};

/// Where a compiled model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Compiled at build time, beside the package.
    Precompiled,
    /// From the cache.
    Cached,
    /// Compiled by Core ML during this load.
    Fresh,
}

/// A compiled model to load.
#[derive(Debug)]
pub(super) struct Compiled {
    /// The `.mlmodelc` directory.
    pub(super) path: PathBuf,
    /// The key of the package it was compiled from.
    key: PackageKey,
    /// Where it came from.
    pub(super) origin: Origin,
}

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// The compiled model of the package at `package` (canonical): precompiled
/// beside it with a matching stamp, else cached under `cache_root`, else
/// compiled now (into the cache when the key is stable).
pub(super) fn find_or_compile(package: &Path, cache_root: &Path) -> Result<Compiled> {
    let key = compiled::package_key(package).map_err(io_error(
        package,
        "read the package's file list and specification for the compile cache",
    ))?;
    if let Some(path) = compiled::precompiled_for(package, &key.key) {
        return Ok(Compiled {
            path,
            key,
            origin: Origin::Precompiled,
        });
    }
    if key.stable {
        let cached = compile_cache::cached_model_path(cache_root, &key.key);
        if cached.is_dir() {
            compile_cache::touch(&cached, SystemTime::now());
            return Ok(Compiled {
                path: cached,
                key,
                origin: Origin::Cached,
            });
        }
    }
    compile_fresh(package, cache_root, key, false)
}

/// What to load after `previous` failed to with an error meaning it is
/// damaged: the cached model when `previous` was the build's and the cache
/// has one, else a fresh compile, which replaces the cache's entry.
pub(super) fn fallback(package: &Path, cache_root: &Path, previous: &Compiled) -> Result<Compiled> {
    let key = previous.key;
    if previous.origin == Origin::Precompiled && key.stable {
        let cached = compile_cache::cached_model_path(cache_root, &key.key);
        if cached.is_dir() {
            return Ok(Compiled {
                path: cached,
                key,
                origin: Origin::Cached,
            });
        }
    }
    compile_fresh(package, cache_root, key, previous.origin == Origin::Cached)
}

/// Compiles the package with Core ML. With a stable key the result goes
/// into the cache (replacing a damaged entry when `replace`), the package's
/// previous compile is dropped and the cache pruned; without one, or if
/// the cache cannot take it, the model is loaded from Core ML's own
/// temporary output, kept for this process.
fn compile_fresh(
    package: &Path,
    cache_root: &Path,
    key: PackageKey,
    replace: bool,
) -> Result<Compiled> {
    let output = compile_with_core_ml(package)?;
    let fresh = |path| Compiled {
        path,
        key,
        origin: Origin::Fresh,
    };
    if !key.stable {
        return Ok(fresh(output));
    }
    let cached = compile_cache::cached_model_path(cache_root, &key.key);
    let installed = if replace {
        compiled::replace_dir(&output, &cached).map(|()| true)
    } else {
        compile_cache::install_dir(&output, &cached)
    };
    if installed.is_err() {
        // An unwritable cache: Core ML's output serves this process.
        return Ok(fresh(output));
    }
    // Core ML leaves its output in a temporary directory for the caller to
    // move; after a copy across file systems, or when another process's
    // copy was already in place, the original is still there.
    if output.exists() {
        let _ = fs::remove_dir_all(&output);
    }
    let now = SystemTime::now();
    compile_cache::touch(&cached, now);
    compile_cache::record_package(cache_root, package, &key.key);
    compile_cache::prune(cache_root, &cached, MAX_ENTRIES, now);
    Ok(fresh(cached))
}

/// Compiles the package with `+[MLModel compileModelAtURL:error:]` (macOS
/// 10.13 / iOS 11 / tvOS 11), waiting for it. Returns the temporary
/// `.mlmodelc` Core ML wrote (under `NSTemporaryDirectory()`).
///
/// The synchronous call is deprecated in favour of
/// `compileModelAtURL:completionHandler:` (macOS 13 / iOS 16), which runs
/// the same compile on a global queue and calls back: blocking on it here
/// would gain nothing and lose the older systems. Both accept
/// `.mlpackage` directories.
fn compile_with_core_ml(package: &Path) -> Result<PathBuf> {
    if cfg!(target_os = "watchos") {
        return Err(Error::UnsupportedPlatform(
            "Core ML cannot compile models on watchOS: compile it at build time (a macOS build \
             host does, with xcrun coremlcompiler) and load the .mlmodelc with load_from"
                .to_string(),
        ));
    }
    let url = directory_url(package)?;
    autoreleasepool(|_| {
        // SAFETY: `url` is a file URL of the package directory; the call
        // exists on every system this crate supports (checked at load:
        // macOS 12.3 / iOS 15.4 and later).
        #[allow(deprecated)]
        let compiled = catching("compiling the model", || unsafe {
            MLModel::compileModelAtURL_error(&url)
        })?
        .map_err(|e| core_ml_error(&e))?;
        compiled.to_file_path().ok_or_else(|| {
            backend_error("Core ML compiled the model to a URL that is not a file path")
        })
    })
}
