//! The cache of models Core ML compiled on first load, and where it lives.
//!
//! The Core ML backend (`runtime::coreml`, Apple targets only) looks for a
//! compiled model in this order:
//!
//! 1. **Precompiled at build time**, beside the package, with a matching
//!    stamp ([`coreml_multifunction_format::compiled::precompiled_for`]).
//! 2. **Cached**: `<cache root>/<key>.mlmodelc`, where the key is the
//!    package's [`coreml_multifunction_format::compiled::package_key`]. A
//!    changed package or a new crate version gets a new key, so a stale
//!    compile cannot be found.
//! 3. **Compiled on first load** by Core ML, then moved into the cache with
//!    [`install_dir`]: into a staging directory beside the destination,
//!    then renamed into place, so a reader sees a complete model or none.
//!    Two processes compiling the same package at once both finish; the
//!    first rename wins and the other discards its copy.
//!
//! The cache root ([`default_cache_root`]) is
//! `~/Library/Caches/coreml-multifunction/compiled` on Apple platforms
//! (`$HOME` is the app's container in a sandboxed app), which the system
//! may purge under disk pressure but otherwise keeps across reboots, as
//! Apple recommends for re-creatable data; elsewhere, or when that
//! directory does not exist, `std::env::temp_dir()/coreml-multifunction/
//! compiled`. Entries are never modified once renamed into place; old keys
//! are not pruned by this crate.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use coreml_multifunction_format::compiled::{
    move_or_copy, staging_beside, CacheKey, COMPILED_EXTENSION,
};

/// The cache root under `caches` (a platform caches directory, such as
/// `~/Library/Caches`) when given, else under `temp_dir`.
pub fn cache_root_in(caches: Option<&Path>, temp_dir: &Path) -> PathBuf {
    caches
        .unwrap_or(temp_dir)
        .join("coreml-multifunction")
        .join("compiled")
}

/// The cache root of this process: `$HOME/Library/Caches/...` on Apple
/// platforms when that directory exists, else under
/// [`std::env::temp_dir`]. See the module documentation.
pub fn default_cache_root() -> PathBuf {
    let caches = if cfg!(target_vendor = "apple") {
        std::env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .map(|home| Path::new(&home).join("Library").join("Caches"))
            .filter(|caches| caches.is_dir())
    } else {
        None
    };
    cache_root_in(caches.as_deref(), &std::env::temp_dir())
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
    move_or_copy(source, &staged)?;
    match fs::rename(&staged, destination) {
        Ok(()) => Ok(true),
        // Renaming onto a non-empty directory fails: another process got
        // there first.
        Err(_) if destination.is_dir() => Ok(false),
        Err(e) => Err(e),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use coreml_multifunction_format::compiled::{key_from_digests, replace_dir};

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn cache_paths() {
        let key = key_from_digests("1", &[]);
        let root = cache_root_in(None, Path::new("/tmp"));
        assert_eq!(root, Path::new("/tmp/coreml-multifunction/compiled"));
        assert_eq!(
            cache_root_in(
                Some(Path::new("/Users/me/Library/Caches")),
                Path::new("/tmp")
            ),
            Path::new("/Users/me/Library/Caches/coreml-multifunction/compiled")
        );
        assert_eq!(
            cached_model_path(&root, &key),
            root.join(format!("{}.mlmodelc", key.to_hex()))
        );
        assert!(default_cache_root().ends_with("coreml-multifunction/compiled"));
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
        let names: Vec<_> = fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["abc.mlmodelc"]);

        evict(&destination).unwrap();
        assert!(!destination.exists());
        evict(&destination).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("cache")).unwrap().count(), 0);
        assert!(install_dir(&second, &destination).unwrap());
        assert_eq!(fs::read(destination.join("model.mil")).unwrap(), b"two");

        let third = dir.path().join("third");
        write(&third.join("model.mil"), b"three");
        replace_dir(&third, &destination).unwrap();
        assert_eq!(fs::read(destination.join("model.mil")).unwrap(), b"three");
        assert_eq!(fs::read_dir(dir.path().join("cache")).unwrap().count(), 1);
    }
}
