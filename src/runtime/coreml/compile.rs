//! Finding or making the compiled model (`.mlmodelc`) Core ML loads: the
//! Core ML half of [`crate::runtime::compile_cache`], whose documentation
//! describes the order (build-time compile, cache, compile on first load),
//! the bounds and when a model is compiled again.
//!
//! Within a process every function of a package loads from one
//! [`CompiledCopy`], found or made once and shared through a process-wide
//! [`Registry`] keyed by the package's canonical path: so a state made by
//! one function's model always meets a model of the same compiled copy,
//! and a compile that could not go into the cache is made once, owned by
//! the process, and removed when the last function (or state) using it
//! drops.

use std::convert::Infallible;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::SystemTime;

use block2::RcBlock;
use objc2::rc::autoreleasepool;
use objc2_core_ml::MLModel;
use objc2_foundation::{NSError, NSURL};

use coreml_multifunction_format::compiled::{self, PackageFile, PackageKey, Staged};

use super::super::compile_cache::{
    self, recovery, CompileWith, Origin, OwnedDir, Recovery, Registry, MAX_ENTRIES,
};
use super::super::error::{Error, Result};
use super::{backend_error, catching, core_ml_error, directory_url, guarded};

/// A compiled model functions load from, shared by all of them in this
/// process (see the module documentation).
#[derive(Debug)]
pub(super) struct CompiledCopy {
    /// The `.mlmodelc` directory.
    pub(super) path: PathBuf,
    /// Where it came from.
    pub(super) origin: Origin,
    /// The package it was compiled from, as it was then; `None` for a
    /// compiled model loaded by its own path.
    source: Option<Source>,
    /// The directory, when this process owns it (Core ML's temporary
    /// output): removed when the copy drops.
    _owned: Option<OwnedDir>,
}

/// A package as its copy was found or made for it.
#[derive(Debug, Clone)]
pub(super) struct Source {
    key: PackageKey,
    /// Its files' paths, lengths and identities then: the same list now
    /// means the same package, with no need to read its specification
    /// again.
    files: Vec<PackageFile>,
}

/// Every compiled copy in use in this process, by canonical path (of the
/// package, or of a compiled model loaded by path) and cache root (none for
/// a compiled model): loads configured with another cache directory make
/// and use their own copy.
static COPIES: Registry<(PathBuf, PathBuf), CompiledCopy> = Registry::new();

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// The compiled copy of the package at `package` (canonical) this process
/// shares: the one in use if the package's files are as they were when it
/// was found, else found or made now (see [`find_or_compile`]).
pub(super) fn shared_copy(package: &Path, cache_root: &Path) -> Result<Arc<CompiledCopy>> {
    let files = compiled::package_files(package).map_err(io_error(
        package,
        "list the package's files for the compile cache",
    ))?;
    COPIES.get_or_make(
        &(package.to_path_buf(), cache_root.to_path_buf()),
        |copy| copy.source.as_ref().is_some_and(|s| s.files == files),
        || find_or_compile(package, cache_root, files.clone()),
    )
}

/// The shared copy of the compiled model at `compiled` (canonical), loaded
/// by its own path (an app bundle's).
pub(super) fn given_copy(compiled: &Path) -> Arc<CompiledCopy> {
    let made = COPIES.get_or_make(
        &(compiled.to_path_buf(), PathBuf::new()),
        |_| true,
        || {
            Ok::<_, Infallible>(CompiledCopy {
                path: compiled.to_path_buf(),
                origin: Origin::Given,
                source: None,
                _owned: None,
            })
        },
    );
    match made {
        Ok(copy) => copy,
        Err(never) => match never {},
    }
}

/// The compiled model of the package at `package` (canonical) whose files
/// are `files`: precompiled beside it with a matching stamp, else cached
/// under `cache_root`, else compiled now (into the cache when the key is
/// stable).
fn find_or_compile(
    package: &Path,
    cache_root: &Path,
    files: Vec<PackageFile>,
) -> Result<CompiledCopy> {
    let key = compiled::package_key_of(package, &files, SystemTime::now()).map_err(io_error(
        package,
        "read the package's manifest and specification for the compile cache",
    ))?;
    let source = Source { key, files };
    let copy = |path, origin, source| CompiledCopy {
        path,
        origin,
        source: Some(source),
        _owned: None,
    };
    if let Some(path) = compiled::precompiled_for(package, &key.key) {
        return Ok(copy(path, Origin::Precompiled, source));
    }
    if key.stable {
        let cached = compile_cache::cached_model_path(cache_root, &key.key);
        if cached.is_dir() {
            compile_cache::touch(&cached, SystemTime::now());
            return Ok(copy(cached, Origin::Cached, source));
        }
    }
    compile_fresh(package, cache_root, source)
}

/// What a load does after `failed` did not load with an error of `domain`
/// and `code`.
pub(super) fn recovery_for(
    failed: &CompiledCopy,
    domain: &str,
    code: isize,
    cache_root: &Path,
) -> Recovery {
    let cached = failed
        .source
        .as_ref()
        .filter(|s| s.key.stable)
        .is_some_and(|s| compile_cache::cached_model_path(cache_root, &s.key.key).is_dir());
    recovery(failed.origin, domain, code, cached)
}

/// The cache's copy of the package `failed` was made from (which
/// [`recovery_for`] found there).
pub(super) fn cached_copy(failed: &CompiledCopy, cache_root: &Path) -> Option<CompiledCopy> {
    let source = failed.source.clone()?;
    Some(CompiledCopy {
        path: compile_cache::cached_model_path(cache_root, &source.key.key),
        origin: Origin::Cached,
        source: Some(source),
        _owned: None,
    })
}

/// Makes `copy` the one later loads of the package at `package` with cache
/// root `cache_root` share (it loaded after the shared one turned out
/// damaged).
pub(super) fn share(package: &Path, cache_root: &Path, copy: &Arc<CompiledCopy>) {
    COPIES.replace(&(package.to_path_buf(), cache_root.to_path_buf()), copy);
}

/// A fresh compile of a package whose copy turned out damaged, not yet
/// trusted: staged beside the cache entry it would replace, or Core ML's
/// temporary output when it cannot go into the cache.
pub(super) enum FreshCompile {
    /// Staged beside the cache entry; [`FreshCompile::accept`] replaces the
    /// entry with it.
    Staged { staged: Staged, source: Source },
    /// The process's own copy.
    Temporary(CompiledCopy),
}

impl FreshCompile {
    /// Where to load it from to try it.
    pub(super) fn path(&self) -> &Path {
        match self {
            FreshCompile::Staged { staged, .. } => staged.path(),
            FreshCompile::Temporary(copy) => &copy.path,
        }
    }

    /// It loaded: puts it in the cache in place of the damaged entry (when
    /// staged) and returns it as the copy to share, with whether it moved
    /// (then the model is loaded again from where it now is, since Core ML
    /// may read the compiled files after the load returns).
    pub(super) fn accept(self, package: &Path, cache_root: &Path) -> Result<(CompiledCopy, bool)> {
        match self {
            FreshCompile::Temporary(copy) => Ok((copy, false)),
            FreshCompile::Staged { staged, source } => {
                let entry = staged.commit().map_err(io_error(
                    package,
                    "replace the cached compiled model with a fresh compile",
                ))?;
                finish_install(package, cache_root, &entry, &source.key);
                Ok((
                    CompiledCopy {
                        path: entry,
                        origin: Origin::Fresh,
                        source: Some(source),
                        _owned: None,
                    },
                    true,
                ))
            }
        }
    }
}

/// Compiles the package `failed` was made from again, beside the cache
/// entry of its key (replaced only by [`FreshCompile::accept`]), or for
/// this process alone when its key is not stable or the cache cannot take
/// it.
pub(super) fn compile_beside(
    package: &Path,
    cache_root: &Path,
    failed: &CompiledCopy,
) -> Result<FreshCompile> {
    let Some(source) = failed.source.clone() else {
        return Err(backend_error(
            "a compiled model loaded by its own path has no package to compile again from",
        ));
    };
    let output = compile_with_core_ml(package)?;
    if !source.key.stable {
        return Ok(FreshCompile::Temporary(temporary(output, source)));
    }
    let entry = compile_cache::cached_model_path(cache_root, &source.key.key);
    match compiled::stage_beside(&output, &entry) {
        Ok(staged) => {
            // After a copy across file systems the original is still there.
            if output.exists() {
                let _ = fs::remove_dir_all(&output);
            }
            Ok(FreshCompile::Staged { staged, source })
        }
        // An unwritable cache: Core ML's output serves this process (a
        // failed move leaves it where it was).
        Err(_) => Ok(FreshCompile::Temporary(temporary(output, source))),
    }
}

/// Core ML's temporary output at `output`, owned by this process.
fn temporary(output: PathBuf, source: Source) -> CompiledCopy {
    CompiledCopy {
        path: output.clone(),
        origin: Origin::Fresh,
        source: Some(source),
        _owned: Some(OwnedDir::new(output)),
    }
}

/// Compiles the package with Core ML. With a stable key the result goes
/// into the cache, the package's previous compile is dropped and the cache
/// pruned; without one, or if the cache cannot take it, the model is
/// loaded from Core ML's own temporary output, owned by this process.
fn compile_fresh(package: &Path, cache_root: &Path, source: Source) -> Result<CompiledCopy> {
    let output = compile_with_core_ml(package)?;
    if !source.key.stable {
        return Ok(temporary(output, source));
    }
    let cached = compile_cache::cached_model_path(cache_root, &source.key.key);
    if compile_cache::install_dir(&output, &cached).is_err() {
        // An unwritable cache: Core ML's output (still there: a failed
        // install gives it back) serves this process.
        return Ok(temporary(output, source));
    }
    // Core ML leaves its output in a temporary directory for the caller to
    // move; after a copy across file systems, or when another process's
    // copy was already in place, the original is still there.
    if output.exists() {
        let _ = fs::remove_dir_all(&output);
    }
    finish_install(package, cache_root, &cached, &source.key);
    Ok(CompiledCopy {
        path: cached,
        origin: Origin::Fresh,
        source: Some(source),
        _owned: None,
    })
}

/// After a compile went into the cache at `entry`: marks it used, drops the
/// package's previous key's entry, and keeps the cache within its bounds.
fn finish_install(package: &Path, cache_root: &Path, entry: &Path, key: &PackageKey) {
    let now = SystemTime::now();
    compile_cache::touch(entry, now);
    compile_cache::record_package(cache_root, package, &key.key);
    compile_cache::prune(cache_root, entry, MAX_ENTRIES, now);
}

/// Compiles the package with Core ML, waiting for it, and returns the
/// temporary `.mlmodelc` Core ML wrote (under `NSTemporaryDirectory()`).
///
/// Where it exists (macOS 13 / iOS 16 / tvOS 16), the compile is
/// `+[MLModel compileModelAtURL:completionHandler:]`: Core ML compiles on
/// its own queue and the handler sends the result back over a channel this
/// thread waits on, so the thread holds the registry's slot for the
/// package (other loads of it wait and share the one compile) but does no
/// compiling itself. Older systems compile with the synchronous (and
/// deprecated, not removed) `+[MLModel compileModelAtURL:error:]` here.
/// Both accept `.mlpackage` directories. [`super::super::Function::load_async`]
/// runs this on a loading thread of its own, never on the caller's.
fn compile_with_core_ml(package: &Path) -> Result<PathBuf> {
    let how = compile_cache::compile_with(compile_handler_available(), cfg!(target_os = "watchos"));
    if how == CompileWith::Unavailable {
        return Err(Error::UnsupportedPlatform(
            "Core ML cannot compile models on watchOS: compile it at build time (a macOS build \
             host does, with xcrun coremlcompiler) and load the .mlmodelc with load_from"
                .to_string(),
        ));
    }
    let url = directory_url(package)?;
    if how == CompileWith::CompletionHandler {
        return compile_with_handler(&url);
    }
    autoreleasepool(|_| {
        // SAFETY: `url` is a file URL of the package directory; the call
        // exists on every system this crate supports (checked at load:
        // macOS 12.3 / iOS 15.4 and later).
        #[allow(deprecated)]
        let compiled = catching("compiling the model", || unsafe {
            MLModel::compileModelAtURL_error(&url)
        })?
        .map_err(|e| core_ml_error(&e))?;
        compiled_path(&compiled)
    })
}

/// Whether `+[MLModel compileModelAtURL:completionHandler:]` exists
/// (`API_AVAILABLE(macos(13.0), ios(16.0), tvos(16.0))`, not watchOS).
fn compile_handler_available() -> bool {
    objc2::available!(macos = 13.0, ios = 16.0, tvos = 16.0, visionos = 1.0)
}

/// The file path of the compiled model Core ML wrote.
fn compiled_path(url: &NSURL) -> Result<PathBuf> {
    url.to_file_path()
        .ok_or_else(|| backend_error("Core ML compiled the model to a URL that is not a file path"))
}

/// Compiles with `+[MLModel compileModelAtURL:completionHandler:]` and
/// waits for the handler's result.
fn compile_with_handler(url: &NSURL) -> Result<PathBuf> {
    let (sender, receiver) = mpsc::channel::<Result<PathBuf>>();
    let handler = move |compiled: *mut NSURL, error: *mut NSError| {
        let outcome = guarded(|| {
            // SAFETY: Core ML passes the compiled model's URL on success
            // and an error on failure, each valid for this call or nil.
            let (compiled, error) = unsafe { (compiled.as_ref(), error.as_ref()) };
            Ok(match (compiled, error) {
                (Some(compiled), _) => compiled_path(compiled),
                (None, Some(error)) => Err(core_ml_error(error)),
                (None, None) => Err(backend_error(
                    "Core ML finished a compile with neither a compiled model nor an error",
                )),
            })
        })
        .unwrap_or_else(|detail| Err(backend_error(detail)));
        // On Core ML's queue: nothing may unwind into libdispatch. A send
        // to a waiter that is gone (the start raised) is dropped.
        let _ = catch_unwind(AssertUnwindSafe(|| sender.send(outcome)));
    };
    // Core ML runs the handler on its own queue, and block2 does not check
    // what a block captures: this fails to compile unless the handler is
    // `Send + Sync`.
    fn send_and_sync<T: Send + Sync>(_: &T) {}
    send_and_sync(&handler);
    let handler = RcBlock::new(handler);
    autoreleasepool(|_| {
        // SAFETY: `url` is a file URL of the package directory; the API
        // exists (checked by the caller with `compile_handler_available`);
        // the handler is a heap block Core ML retains until it has called
        // it, capturing only `Send + Sync` values (asserted above).
        catching("starting to compile the model", || unsafe {
            MLModel::compileModelAtURL_completionHandler(url, &handler)
        })
    })?;
    drop(handler);
    receiver.recv().unwrap_or_else(|_| {
        Err(backend_error(
            "Core ML released the compile's completion handler without calling it",
        ))
    })
}
