//! The cache of models Core ML compiled on first load, where it lives, how
//! it is bounded, and which load errors justify compiling again.
//!
//! The Core ML backend (`runtime::coreml`, Apple targets only) looks for a
//! compiled model in this order:
//!
//! 1. **Precompiled at build time**, beside the package, with a stamp that
//!    matches the package's key
//!    ([`coreml_multifunction_format::compiled::precompiled_for`]).
//! 2. **Cached**: `<cache root>/<key>.mlmodelc`, where the key is the
//!    package's [`coreml_multifunction_format::compiled::PackageKey`]
//!    (file sizes, inodes and change times, and the manifest's and
//!    specification's bytes: never the weights). A changed package gets a
//!    new key, so a stale compile cannot be found.
//! 3. **Compiled on first load** by Core ML, then moved into the cache with
//!    [`install_dir`]: into a locked staging directory beside the
//!    destination, then renamed into place, so a reader sees a complete
//!    model or none. Two processes compiling the same package at once both
//!    finish; the first rename wins and the other discards its copy. A key
//!    that is not stable (the package was written a moment ago) is not
//!    cached: the model is loaded from Core ML's own output, for this
//!    process only.
//!
//! # Bounds
//!
//! The cache holds at most [`MAX_ENTRIES`] compiled models. Each use marks
//! its entry (its directory's modification time); after each install the
//! least recently used entries past the limit are removed ([`prune`]).
//! When a package is compiled under a new key (it changed), the entry of
//! its previous key is removed at once ([`record_package`]), so rebuilding
//! a 4 GB model ten times leaves one compiled copy, not ten. No byte limit
//! is set: one large language model can exceed any small one, and a limit
//! that evicted it would recompile it at every launch. Staging directories
//! abandoned by killed processes are removed when older than
//! [`STALE_STAGING_AGE`] and unlocked. Removal renames an entry aside
//! first; a process that already loaded it keeps its open files.
//!
//! # Where
//!
//! The cache root ([`default_cache_root`]) is the first of these that can
//! be created and written: `~/Library/Caches/coreml-multifunction/compiled`
//! on Apple platforms (`$HOME` is the app's container in a sandboxed app),
//! which the system may purge under disk pressure but otherwise keeps
//! across reboots, as Apple recommends for re-creatable data; then
//! `std::env::temp_dir()/coreml-multifunction/compiled`. A read-only or
//! odd `$HOME` (managed Macs, daemons) falls through to the temporary
//! directory instead of failing every load.
//!
//! # When to compile again
//!
//! A compiled model that fails to load is compiled again only when the
//! error means the compiled model itself is damaged or missing
//! ([`means_damaged_model`]). Other failures (memory, the Neural Engine's
//! own compiler, configuration, decryption) would fail the same way after
//! minutes of compiling, and a good cached model is never deleted for them.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use coreml_multifunction_format::compiled::{
    location_key, move_or_copy, remove_abandoned_staging, restore_on_failure, staging_beside,
    CacheKey, COMPILED_EXTENSION,
};

/// The most compiled models the cache keeps.
pub const MAX_ENTRIES: usize = 8;

/// How old an unlocked staging directory must be to count as abandoned.
pub const STALE_STAGING_AGE: Duration = Duration::from_secs(3600);

/// The directory of per-package records under the cache root.
const PACKAGES_DIR: &str = "packages";

/// The cache root under the first of `bases` (platform caches or temporary
/// directories, in order of preference) where it can be created and
/// written; the last one's when none can (then installs fail, and loads
/// fall back to Core ML's own output).
pub fn choose_cache_root(bases: &[PathBuf]) -> PathBuf {
    let root = |base: &PathBuf| base.join("coreml-multifunction").join("compiled");
    bases
        .iter()
        .map(root)
        .find(|candidate| writable(candidate))
        .or_else(|| bases.last().map(root))
        .unwrap_or_else(|| root(&std::env::temp_dir()))
}

/// Whether `dir` exists or can be created, and a file can be made in it.
fn writable(dir: &Path) -> bool {
    if fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let made = fs::File::create(&probe).is_ok();
    let _ = fs::remove_file(&probe);
    made
}

/// The cache root of this process: see the module documentation.
pub fn default_cache_root() -> PathBuf {
    let mut bases = Vec::new();
    if cfg!(target_vendor = "apple") {
        if let Some(home) = std::env::var_os("HOME").filter(|home| !home.is_empty()) {
            bases.push(Path::new(&home).join("Library").join("Caches"));
        }
    }
    bases.push(std::env::temp_dir());
    choose_cache_root(&bases)
}

/// Where the cache under `root` keeps the model compiled from a package
/// with key `key`.
pub fn cached_model_path(root: &Path, key: &CacheKey) -> PathBuf {
    root.join(format!("{}.{COMPILED_EXTENSION}", key.to_hex()))
}

/// Puts the directory `source` at `destination` unless something is
/// already there: moved (or copied, across file systems) into a staging
/// directory beside `destination`, then renamed into place. Returns
/// whether this call installed it; `false` means another writer's complete
/// copy was already in place and is kept (same key, same content).
pub fn install_dir(source: &Path, destination: &Path) -> io::Result<bool> {
    if destination.is_dir() {
        return Ok(false);
    }
    let staging = staging_beside(destination)?;
    let staged = staging.path().join("new");
    let moved = move_or_copy(source, &staged)?;
    let outcome = match fs::rename(&staged, destination) {
        Ok(()) => Ok(true),
        // Renaming onto a non-empty directory fails: another process got
        // there first.
        Err(_) if destination.is_dir() => Ok(false),
        Err(e) => Err(e),
    };
    // A failure keeps the compile where it was (the caller loads it from
    // there), rather than deleting it with the staging directory.
    restore_on_failure(outcome, moved, &staged, source)
}

/// Removes the cached model at `path`: renamed aside first, so no reader
/// ever sees a half-deleted model, then deleted. Nothing there is not an
/// error.
pub fn evict(path: &Path) -> io::Result<()> {
    let staging = staging_beside(path)?;
    match fs::rename(path, staging.path().join("evicted")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    // `staging` is deleted with what was moved into it on drop.
}

/// Marks the entry at `entry` as used at `now` (its directory's
/// modification time), for [`prune`]. Best effort.
pub fn touch(entry: &Path, now: SystemTime) {
    if let Ok(dir) = fs::File::open(entry) {
        let _ = dir.set_modified(now);
    }
}

/// Keeps the cache under `root` within [`MAX_ENTRIES`] (`limit`): removes
/// the least recently used entries past it, never `keep` (the one being
/// loaded), and abandoned staging directories. Returns the entries removed.
/// Best effort: an entry that cannot be removed now is tried next time.
pub fn prune(root: &Path, keep: &Path, limit: usize, now: SystemTime) -> Vec<PathBuf> {
    remove_abandoned_staging(root, STALE_STAGING_AGE, now);
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut models: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == COMPILED_EXTENSION) && path.as_path() != keep
        })
        .filter_map(|path| {
            let used = fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            Some((used, path))
        })
        .collect();
    // Newest first; ties broken by name so the outcome is deterministic.
    models.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let room = limit.saturating_sub(usize::from(keep.is_dir()));
    models
        .into_iter()
        .skip(room)
        .filter_map(|(_, path)| evict(&path).is_ok().then_some(path))
        .collect()
}

/// Records that the package at `package` (canonical path) was compiled
/// under `key`, and removes the entry of the key recorded for it before, if
/// that differs: the package changed, so that compile can never be found
/// again. Returns the entry removed. Best effort.
pub fn record_package(root: &Path, package: &Path, key: &CacheKey) -> Option<PathBuf> {
    let records = root.join(PACKAGES_DIR);
    let record = records.join(location_key(package).to_hex());
    let previous = fs::read_to_string(&record)
        .ok()
        .and_then(|text| CacheKey::from_hex(&text))
        .filter(|previous| previous != key);
    if fs::create_dir_all(&records).is_ok() {
        // Written beside, then renamed: a reader sees the old record or
        // the new one.
        let staged = records.join(format!(".{}.{}", location_key(package), std::process::id()));
        if fs::write(&staged, format!("{key}\n")).is_ok() && fs::rename(&staged, &record).is_err() {
            let _ = fs::remove_file(&staged);
        }
    }
    let stale = cached_model_path(root, &previous?);
    (stale.is_dir() && evict(&stale).is_ok()).then_some(stale)
}

/// Where a compiled model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled at build time, beside the package.
    Precompiled,
    /// From the cache.
    Cached,
    /// Compiled by Core ML in this process.
    Fresh,
    /// A compiled model loaded by its own path (an app bundle's): there is
    /// no package to compile again from.
    Given,
}

/// What a load does after the compiled copy it tried failed to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Returns the error: it does not mean the copy is damaged (it would
    /// come back from any other copy), or the copy was compiled just now,
    /// or there is nothing to compile from.
    GiveUp,
    /// Tries the cache's copy (the build's failed, and the cache has one).
    LoadCached,
    /// Compiles again, beside the entry it would replace, and replaces the
    /// entry only once the fresh copy loads: an error that only looked
    /// like damage (`com.apple.CoreML` code 0 is also an engine failure)
    /// then leaves a good entry in place.
    CompileBeside,
}

/// What to do after a compiled copy from `origin` failed to load with an
/// error of `domain` and `code`; `cache_has_entry` says whether the cache
/// holds a copy of the package's key.
pub fn recovery(origin: Origin, domain: &str, code: isize, cache_has_entry: bool) -> Recovery {
    match origin {
        _ if !means_damaged_model(domain, code) => Recovery::GiveUp,
        Origin::Fresh | Origin::Given => Recovery::GiveUp,
        Origin::Precompiled if cache_has_entry => Recovery::LoadCached,
        Origin::Precompiled | Origin::Cached => Recovery::CompileBeside,
    }
}

/// A process-wide table of shared values, one per key (a package's
/// canonical path), each kept only as long as something uses it: the
/// compiled copy every function of a package loads from. Held weakly, so
/// a copy the process owns (a temporary compile) is dropped, and its
/// directory removed, with the last function using it.
///
/// Making a value (a compile, possibly minutes) holds only that key's
/// slot: loads of the same package wait for it and then share it, loads of
/// other packages go on.
#[derive(Debug)]
pub struct Registry<K, V> {
    slots: Mutex<BTreeMap<K, Arc<Mutex<Weak<V>>>>>,
}

impl<K: Ord + Clone, V> Registry<K, V> {
    /// An empty registry (usable in a `static`).
    pub const fn new() -> Self {
        Registry {
            slots: Mutex::new(BTreeMap::new()),
        }
    }

    fn slot(&self, key: &K) -> Arc<Mutex<Weak<V>>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget keys nobody uses or is making (a busy slot is skipped).
        slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot
                    .try_lock()
                    .map_or(true, |value| value.strong_count() > 0)
        });
        slots.entry(key.clone()).or_default().clone()
    }

    /// The live value of `key` if `is_current` accepts it, else the one
    /// `make` returns, which later calls then share.
    pub fn get_or_make<E>(
        &self,
        key: &K,
        is_current: impl FnOnce(&V) -> bool,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        let slot = self.slot(key);
        let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = held.upgrade().filter(|value| is_current(value)) {
            return Ok(value);
        }
        let value = Arc::new(make()?);
        *held = Arc::downgrade(&value);
        Ok(value)
    }

    /// Makes `value` the one later calls for `key` share (a copy that
    /// loaded after the shared one turned out damaged).
    pub fn replace(&self, key: &K, value: &Arc<V>) {
        let slot = self.slot(key);
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(value);
    }
}

/// A directory this process owns and removes when the value owning it
/// drops: Core ML's temporary output of a compile that could not go into
/// the cache, shared (through [`Registry`]) by every function loaded from
/// it. Best effort: a removal that fails leaves the directory to the
/// system's temporary-directory cleanup.
#[derive(Debug)]
pub struct OwnedDir {
    path: PathBuf,
}

impl OwnedDir {
    /// Takes ownership of the directory at `path`.
    pub fn new(path: PathBuf) -> Self {
        OwnedDir { path }
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The `functionName` a load of function `name` of a compiled model sets,
/// given the functions its `metadata.json` lists (`None` when it could not
/// be read): the name for a multifunction model, and when unknown (what
/// this crate's merges make is multifunction), nothing for a
/// single-function model, whose one function is the default and which
/// must load on systems without `functionName` (before macOS 15 / iOS 18).
pub fn function_name_to_set<'a>(functions: Option<&[String]>, name: &'a str) -> Option<&'a str> {
    match functions {
        Some([]) => None,
        _ => Some(name),
    }
}

/// How Core ML compiles a package on first load on a given system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileWith {
    /// `+[MLModel compileModelAtURL:completionHandler:]` (macOS 13 / iOS 16
    /// / tvOS 16): Core ML compiles on its own queue and calls back.
    CompletionHandler,
    /// The synchronous `+[MLModel compileModelAtURL:error:]`, on the
    /// loading thread, where the completion-handler one does not exist.
    Synchronous,
    /// Neither exists (watchOS): the model must be compiled at build time.
    Unavailable,
}

/// How to compile on a system where the completion-handler compile exists
/// (`handler_api`) or not, and which is watchOS (`watchos`: no compile API
/// at all).
pub fn compile_with(handler_api: bool, watchos: bool) -> CompileWith {
    match (watchos, handler_api) {
        (true, _) => CompileWith::Unavailable,
        (false, true) => CompileWith::CompletionHandler,
        (false, false) => CompileWith::Synchronous,
    }
}

/// The `MLModelErrorDomain` (`com.apple.CoreML`).
pub const CORE_ML_DOMAIN: &str = "com.apple.CoreML";

/// Whether an error a compiled model's load reported (by `NSError`
/// domain and code) means the compiled model itself is damaged, missing
/// or unreadable, so that compiling it again can help:
///
/// - `com.apple.CoreML` `MLModelErrorIO` (3): Core ML could not read it;
/// - `com.apple.CoreML` `MLModelErrorGeneric` (0): what Core ML reports for
///   a compiled model it cannot parse (and, unavoidably, for some other
///   failures: then the fresh compile fails the same way and the first
///   error is what the caller sees);
/// - a file missing or unreadable (`NSCocoaErrorDomain` 4, 256, 257, 259,
///   260; `NSPOSIXErrorDomain` `ENOENT`).
///
/// Not: feature types (1), custom layers and models (4, 5), updates (6),
/// parameters (7), decryption (8, 9), collections (10), cancelled
/// predictions (11), or any other domain (memory, the Neural Engine).
pub fn means_damaged_model(domain: &str, code: isize) -> bool {
    const GENERIC: isize = 0;
    const IO: isize = 3;
    // NSFileNoSuchFileError, NSFileReadUnknownError,
    // NSFileReadNoPermissionError, NSFileReadCorruptFileError,
    // NSFileReadNoSuchFileError.
    const COCOA_FILE_ERRORS: [isize; 5] = [4, 256, 257, 259, 260];
    const ENOENT: isize = 2;
    match domain {
        CORE_ML_DOMAIN => matches!(code, GENERIC | IO),
        "NSCocoaErrorDomain" => COCOA_FILE_ERRORS.contains(&code),
        "NSPOSIXErrorDomain" => code == ENOENT,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coreml_multifunction_format::compiled::{key_from_entries, replace_dir, FileEntry};

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn key(n: u8) -> CacheKey {
        key_from_entries(&[("f".to_string(), 1, FileEntry::Content([n; 32]))])
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_cache_root_is_the_first_writable_base() {
        let dir = tempfile::tempdir().unwrap();
        // A base under a regular file can never hold a directory (whatever
        // the permissions: these tests may run as root).
        write(&dir.path().join("file"), b"x");
        let blocked = dir.path().join("file/Library/Caches");
        let fallback = dir.path().join("tmp");
        let root = choose_cache_root(&[blocked.clone(), fallback.clone()]);
        assert_eq!(root, fallback.join("coreml-multifunction/compiled"));
        assert!(root.is_dir(), "created while probing");
        assert_eq!(names(&root), Vec::<String>::new(), "no probe left behind");
        // The preferred base wins when writable.
        let caches = dir.path().join("home/Library/Caches");
        assert_eq!(
            choose_cache_root(&[caches.clone(), fallback.clone()]),
            caches.join("coreml-multifunction/compiled")
        );
        // Nothing writable: the last, for errors to name.
        assert_eq!(
            choose_cache_root(std::slice::from_ref(&blocked)),
            blocked.join("coreml-multifunction/compiled")
        );
        assert!(default_cache_root().ends_with("coreml-multifunction/compiled"));
        assert_eq!(
            cached_model_path(&root, &key(1)),
            root.join(format!("{}.mlmodelc", key(1).to_hex()))
        );
    }

    #[test]
    fn install_is_atomic_and_keeps_the_first_copy() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        write(&first.join("model.mil"), b"one");
        let destination = dir.path().join("cache/abc.mlmodelc");
        assert!(install_dir(&first, &destination).unwrap());
        assert_eq!(fs::read(destination.join("model.mil")).unwrap(), b"one");

        let second = dir.path().join("second");
        write(&second.join("model.mil"), b"two");
        assert!(!install_dir(&second, &destination).unwrap());
        assert_eq!(fs::read(destination.join("model.mil")).unwrap(), b"one");
        // No staging directory is left behind.
        assert_eq!(names(&dir.path().join("cache")), ["abc.mlmodelc"]);

        evict(&destination).unwrap();
        assert!(!destination.exists());
        evict(&destination).unwrap();
        assert_eq!(names(&dir.path().join("cache")), Vec::<String>::new());
        assert!(install_dir(&second, &destination).unwrap());
        assert_eq!(fs::read(destination.join("model.mil")).unwrap(), b"two");

        let third = dir.path().join("third");
        write(&third.join("model.mil"), b"three");
        replace_dir(&third, &destination).unwrap();
        assert_eq!(fs::read(destination.join("model.mil")).unwrap(), b"three");
        assert_eq!(names(&dir.path().join("cache")), ["abc.mlmodelc"]);
    }

    #[test]
    fn a_failed_install_keeps_the_compile() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("core-ml-output.mlmodelc");
        write(&output.join("model.mil"), b"compiled");
        // Something that is not a directory where the entry goes: the
        // final rename fails after the move into staging.
        let destination = dir.path().join("cache/abc.mlmodelc");
        write(&destination, b"in the way");
        if install_dir(&output, &destination).is_ok() {
            return; // a system that renames a directory onto a file
        }
        assert_eq!(fs::read(output.join("model.mil")).unwrap(), b"compiled");
        assert_eq!(names(&dir.path().join("cache")), ["abc.mlmodelc"]);
    }

    #[test]
    fn pruning_keeps_the_most_recently_used_and_the_one_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("compiled");
        let start = SystemTime::now() - Duration::from_secs(100_000);
        let entries: Vec<PathBuf> = (0..5u8)
            .map(|n| {
                let entry = cached_model_path(&root, &key(n));
                write(&entry.join("model.mil"), &[n]);
                // Used in order: 0 longest ago.
                touch(&entry, start + Duration::from_secs(u64::from(n) * 10));
                entry
            })
            .collect();
        // Entry 0 is the one being loaded: kept though oldest.
        let removed = prune(&root, &entries[0], 3, SystemTime::now());
        assert_eq!(
            removed,
            [entries[2].clone(), entries[1].clone()],
            "newest first"
        );
        for (n, entry) in entries.iter().enumerate() {
            assert_eq!(entry.is_dir(), ![1, 2].contains(&n), "entry {n}");
        }
        // Within the limit: nothing more goes.
        assert!(prune(&root, &entries[0], 3, SystemTime::now()).is_empty());
        // Using an old entry again saves it from the next prune.
        touch(&entries[0], SystemTime::now());
        let removed = prune(&root, Path::new("/nothing"), 2, SystemTime::now());
        assert_eq!(removed, [entries[3].clone()]);
        assert!(entries[0].is_dir() && entries[4].is_dir());
    }

    #[test]
    fn pruning_removes_abandoned_staging_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("compiled");
        let live = staging_beside(&root.join("x.mlmodelc")).unwrap();
        write(&root.join(".staging-killed/new/model.mil"), b"half");
        let later = SystemTime::now() + STALE_STAGING_AGE * 2;
        prune(&root, Path::new("/nothing"), MAX_ENTRIES, later);
        assert!(!root.join(".staging-killed").exists());
        assert!(live.path().is_dir(), "a live (locked) one stays");
    }

    #[test]
    fn a_changed_package_drops_its_previous_compile() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("compiled");
        let package = dir.path().join("model.mlpackage");
        let (old, new) = (
            cached_model_path(&root, &key(1)),
            cached_model_path(&root, &key(2)),
        );
        write(&old.join("model.mil"), b"old");
        assert_eq!(
            record_package(&root, &package, &key(1)),
            None,
            "first record"
        );
        assert_eq!(record_package(&root, &package, &key(1)), None, "same key");
        assert!(old.is_dir());
        write(&new.join("model.mil"), b"new");
        assert_eq!(record_package(&root, &package, &key(2)), Some(old.clone()));
        assert!(!old.exists() && new.is_dir());
        // Another package's record is its own.
        let other = dir.path().join("other.mlpackage");
        assert_eq!(record_package(&root, &other, &key(1)), None);
        assert!(new.is_dir());
        assert_eq!(
            names(&root.join(PACKAGES_DIR)).len(),
            2,
            "no staged record left"
        );
    }

    #[test]
    fn a_damaged_copy_is_compiled_again_beside_it_and_a_fresh_one_never() {
        use Origin::*;
        // The build's copy is damaged: the cache's next, else a compile.
        assert_eq!(
            recovery(Precompiled, CORE_ML_DOMAIN, 3, true),
            Recovery::LoadCached
        );
        assert_eq!(
            recovery(Precompiled, CORE_ML_DOMAIN, 3, false),
            Recovery::CompileBeside
        );
        // Code 0 is damage or an engine failure: the entry is replaced only
        // once a fresh compile loads.
        assert_eq!(
            recovery(Cached, CORE_ML_DOMAIN, 0, true),
            Recovery::CompileBeside
        );
        assert_eq!(
            recovery(Cached, "NSCocoaErrorDomain", 260, true),
            Recovery::CompileBeside
        );
        // What a fresh compile or a bundled model fails with is final, and
        // so is what no copy would fix.
        assert_eq!(recovery(Fresh, CORE_ML_DOMAIN, 0, true), Recovery::GiveUp);
        assert_eq!(recovery(Given, CORE_ML_DOMAIN, 3, false), Recovery::GiveUp);
        assert_eq!(recovery(Cached, CORE_ML_DOMAIN, 1, true), Recovery::GiveUp);
        assert_eq!(
            recovery(Precompiled, "NSPOSIXErrorDomain", 12, true),
            Recovery::GiveUp
        );
    }

    #[test]
    fn every_load_of_a_package_shares_one_copy_while_it_is_used() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        static REGISTRY: Registry<PathBuf, (u32, OwnedDir)> = Registry::new();
        let dir = tempfile::tempdir().unwrap();
        let made = AtomicUsize::new(0);
        let package = dir.path().join("m.mlpackage");
        let compile = |n: u32| {
            let output = dir.path().join(format!("tmp-{n}.mlmodelc"));
            write(&output.join("model.mil"), b"compiled");
            made.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>((n, OwnedDir::new(output)))
        };
        // Two loads at once on two threads: one compile, one copy.
        let (a, b) = std::thread::scope(|scope| {
            let a = scope.spawn(|| REGISTRY.get_or_make(&package, |_| true, || compile(1)));
            let b = scope.spawn(|| REGISTRY.get_or_make(&package, |_| true, || compile(1)));
            (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
        });
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(made.load(Ordering::SeqCst), 1);
        let temporary = a.1.path.clone();
        // A copy that is no longer current (the package changed) is made
        // anew; the old one lives on for its users.
        let changed = REGISTRY
            .get_or_make(&package, |_| false, || compile(2))
            .unwrap();
        assert_eq!(changed.0, 2);
        assert!(!Arc::ptr_eq(&a, &changed));
        // A replacement is what later loads get.
        let fixed = Arc::new(compile(3).unwrap());
        REGISTRY.replace(&package, &fixed);
        let later = REGISTRY
            .get_or_make(&package, |_| true, || compile(4))
            .unwrap();
        assert!(Arc::ptr_eq(&later, &fixed));
        // The temporary compile goes with its last user.
        drop(b);
        assert!(temporary.is_dir(), "still used");
        drop(a);
        assert!(!temporary.exists(), "removed with the last user");
        drop((changed, fixed, later));
        // Nothing holds a copy: the next load makes one again.
        let again = REGISTRY
            .get_or_make(&package, |_| true, || compile(5))
            .unwrap();
        assert_eq!(again.0, 5);
    }

    #[test]
    fn function_name_is_set_for_multifunction_models_only() {
        let listed = ["prefill".to_string(), "decode".to_string()];
        assert_eq!(
            function_name_to_set(Some(&listed), "decode"),
            Some("decode")
        );
        assert_eq!(function_name_to_set(Some(&[]), "main"), None);
        assert_eq!(function_name_to_set(None, "decode"), Some("decode"));
    }

    #[test]
    fn the_completion_handler_compile_is_used_where_it_exists() {
        assert_eq!(compile_with(true, false), CompileWith::CompletionHandler);
        assert_eq!(compile_with(false, false), CompileWith::Synchronous);
        assert_eq!(compile_with(true, true), CompileWith::Unavailable);
        assert_eq!(compile_with(false, true), CompileWith::Unavailable);
    }

    #[test]
    fn only_damage_justifies_compiling_again() {
        assert!(means_damaged_model(CORE_ML_DOMAIN, 3), "IO");
        assert!(means_damaged_model(CORE_ML_DOMAIN, 0), "generic");
        assert!(
            means_damaged_model("NSCocoaErrorDomain", 260),
            "no such file"
        );
        assert!(means_damaged_model("NSPOSIXErrorDomain", 2), "ENOENT");
        for code in [1, 4, 5, 6, 7, 8, 9, 10, 11] {
            assert!(!means_damaged_model(CORE_ML_DOMAIN, code), "code {code}");
        }
        assert!(!means_damaged_model("NSCocoaErrorDomain", 640), "disk full");
        assert!(!means_damaged_model("NSPOSIXErrorDomain", 12), "ENOMEM");
        assert!(!means_damaged_model("NSException", 0));
        assert!(!means_damaged_model("coreml-multifunction", 0));
    }
}
