//! Compiled Core ML models (`.mlmodelc`): which package a compiled model was
//! made from, and how compiled models are put in place.
//!
//! Core ML loads compiled models only. Two parties make them: the build
//! crate's `xcrun coremlcompiler` step (a macOS build host), and the
//! runtime's Core ML backend, compiling on first load into its cache
//! (`runtime::compile_cache`). Both record what they compiled by the same
//! [`package_key`] (SHA-256 of every file of the package, relative path and
//! bytes, and of this crate's version), so this module sits below both:
//!
//! - a **precompiled** model `<dir>/<name>.mlmodelc` beside
//!   `<dir>/<name>.mlpackage` is used only when its stamp
//!   `<dir>/<name>.mlmodelc.key` holds the package's key as it is now, so an
//!   outdated compile is never loaded ([`precompiled_for`]);
//! - directories are installed through a staging directory beside their
//!   destination and renamed into place ([`replace_dir`]), so a reader sees
//!   a complete model or none.
//!
//! Hashing reads every byte of the package, once per process per file
//! path, length and modification time: later loads of an unchanged package
//! only stat its files.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

/// Identifies the layout of the key and of the cache; changing either means
/// changing this string, which changes every key.
const CACHE_FORMAT: &str = "coreml-multifunction compiled-model cache, format 1";

/// The extension of compiled models.
pub const COMPILED_EXTENSION: &str = "mlmodelc";

/// The cache key of a package: a SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hexadecimal digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hexadecimal digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<CacheKey> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(CacheKey(bytes))
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// One file of a package as it enters the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Its path relative to the package, components joined with `/`.
    pub relative_path: String,
    /// Its length in bytes.
    pub len: u64,
    /// The SHA-256 of its bytes.
    pub sha256: [u8; 32],
}

/// The key of a package made of `files` for crate version `crate_version`.
/// Pure: the order of `files` does not matter, and every field is length-
/// prefixed, so no two different inputs share an encoding.
pub fn key_from_digests(crate_version: &str, files: &[FileDigest]) -> CacheKey {
    let mut sorted: Vec<&FileDigest> = files.iter().collect();
    sorted.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(CACHE_FORMAT.as_bytes());
    field(crate_version.as_bytes());
    field(&(sorted.len() as u64).to_le_bytes());
    for file in sorted {
        field(file.relative_path.as_bytes());
        field(&file.len.to_le_bytes());
        field(&file.sha256);
    }
    CacheKey(hasher.finalize().into())
}

/// The key of the package at `package` for this crate's version.
pub fn package_key(package: &Path) -> io::Result<CacheKey> {
    package_key_for_version(package, env!("CARGO_PKG_VERSION"))
}

/// The key of the package at `package` for crate version `crate_version`.
pub fn package_key_for_version(package: &Path, crate_version: &str) -> io::Result<CacheKey> {
    Ok(key_from_digests(crate_version, &package_files(package)?))
}

/// Digests of every file of the package, in path order. Symbolic links are
/// followed, as Core ML's compiler follows them.
pub fn package_files(package: &Path) -> io::Result<Vec<FileDigest>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(package)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.map_err(io::Error::from)?;
        if !entry.file_type().is_file() {
            continue;
        }
        let relative = entry.path().strip_prefix(package).map_err(|_| {
            io::Error::other(format!("{} is outside the package", entry.path().display()))
        })?;
        let relative_path = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let (len, sha256) = file_digest(entry.path())?;
        files.push(FileDigest {
            relative_path,
            len,
            sha256,
        });
    }
    Ok(files)
}

/// What a file looked like when it was hashed.
#[derive(Clone, Copy)]
struct Memo {
    len: u64,
    modified: Option<SystemTime>,
    sha256: [u8; 32],
}

/// File digests computed by this process, by canonical path.
static DIGESTS: LazyLock<Mutex<HashMap<PathBuf, Memo>>> = LazyLock::new(Default::default);

/// The length and SHA-256 of the file at `path`, hashed once per process
/// for each (path, length, modification time).
fn file_digest(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let canonical = path.canonicalize()?;
    let metadata = fs::metadata(&canonical)?;
    let (len, modified) = (metadata.len(), metadata.modified().ok());
    let memo = DIGESTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&canonical)
        .copied();
    if let Some(memo) = memo {
        if memo.len == len && memo.modified == modified && modified.is_some() {
            return Ok((len, memo.sha256));
        }
    }
    let mut file = fs::File::open(&canonical)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        read += n as u64;
    }
    let sha256: [u8; 32] = hasher.finalize().into();
    // Remember it only if the file did not change length while read; the
    // length read is what the key records.
    if read == len {
        DIGESTS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                canonical,
                Memo {
                    len,
                    modified,
                    sha256,
                },
            );
    }
    Ok((read, sha256))
}

/// Where a build-time compile puts the compiled model of the package at
/// `package`: `<dir>/<name>.mlmodelc` beside
/// `<dir>/<name>.mlpackage`. `None` for a path without a file name.
pub fn precompiled_path(package: &Path) -> Option<PathBuf> {
    let name = package.file_stem().filter(|name| !name.is_empty())?;
    let mut file_name = name.to_os_string();
    file_name.push(".");
    file_name.push(COMPILED_EXTENSION);
    Some(package.with_file_name(file_name))
}

/// The stamp file recording which package key a compiled model was made
/// from: `<compiled>.key` beside `<compiled>`.
pub fn stamp_path(compiled: &Path) -> PathBuf {
    let mut path = compiled.as_os_str().to_os_string();
    path.push(".key");
    PathBuf::from(path)
}

/// The key recorded for the compiled model at `compiled`, if any.
pub fn read_stamp(compiled: &Path) -> Option<CacheKey> {
    let text = fs::read_to_string(stamp_path(compiled)).ok()?;
    CacheKey::from_hex(&text)
}

/// Records `key` for the compiled model at `compiled`, atomically (written
/// beside it, then renamed).
pub fn write_stamp(compiled: &Path, key: &CacheKey) -> io::Result<()> {
    let stamp = stamp_path(compiled);
    let dir = stamp
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".stamp-")
        .tempfile_in(dir)?;
    writeln!(file, "{key}")?;
    file.persist(&stamp).map_err(|e| e.error)?;
    Ok(())
}

/// The precompiled model beside `package`, if its stamp matches `key`.
pub fn precompiled_for(package: &Path, key: &CacheKey) -> Option<PathBuf> {
    let compiled = precompiled_path(package)?;
    (compiled.is_dir() && read_stamp(&compiled).as_ref() == Some(key)).then_some(compiled)
}

/// Copies the directory tree at `from` to `to` (which must not exist),
/// following symbolic links.
fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(true) {
        let entry = entry.map_err(io::Error::from)?;
        let relative = entry
            .path()
            .strip_prefix(from)
            .map_err(|_| io::Error::other("walked outside the source"))?;
        let target = to.join(relative);
        if entry.file_type().is_dir() {
            fs::create_dir_all(&target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Moves the directory `source` to `staged` (which must not exist): a
/// rename when on one file system, a copy otherwise (the source is then
/// left for the caller to remove).
pub fn move_or_copy(source: &Path, staged: &Path) -> io::Result<()> {
    if fs::rename(source, staged).is_ok() {
        return Ok(());
    }
    copy_dir(source, staged)
}

/// A staging directory beside `destination`, on its file system, so a
/// rename from it is atomic; removed with everything left in it on drop.
pub fn staging_beside(destination: &Path) -> io::Result<tempfile::TempDir> {
    let parent = destination
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
}

/// Puts the directory `source` at `destination`, replacing what is there:
/// the old tree is first renamed aside, then the new one renamed in.
pub fn replace_dir(source: &Path, destination: &Path) -> io::Result<()> {
    let staging = staging_beside(destination)?;
    let staged = staging.path().join("new");
    move_or_copy(source, &staged)?;
    let old = staging.path().join("old");
    let had_old = match fs::rename(destination, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if let Err(e) = fs::rename(&staged, destination) {
        if had_old {
            let _ = fs::rename(&old, destination);
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn fake_package(dir: &Path) -> PathBuf {
        let package = dir.join("model.mlpackage");
        write(&package.join("Manifest.json"), b"{}");
        write(
            &package.join("Data/com.apple.CoreML/model.mlmodel"),
            b"spec",
        );
        write(
            &package.join("Data/com.apple.CoreML/weights/weight.bin"),
            &[7u8; 300],
        );
        package
    }

    fn digest(path: &str, len: u64, fill: u8) -> FileDigest {
        FileDigest {
            relative_path: path.to_string(),
            len,
            sha256: [fill; 32],
        }
    }

    #[test]
    fn the_pure_key_is_stable_and_order_independent() {
        let files = [digest("a/b.bin", 3, 1), digest("Manifest.json", 2, 2)];
        let key = key_from_digests("0.1.0", &files);
        // Pinned: a change here invalidates every user's cache, so it must
        // be deliberate (and then CACHE_FORMAT should change too).
        assert_eq!(
            key.to_hex(),
            "4d8e9f174c20c0fa43f7f9872009cae342b947d586695e68f0f6d79798db59f5"
        );
        let reversed = [files[1].clone(), files[0].clone()];
        assert_eq!(key_from_digests("0.1.0", &reversed), key);
        assert_ne!(key_from_digests("0.1.1", &files), key);
        let mut changed = files.clone();
        changed[0].sha256[0] ^= 1;
        assert_ne!(key_from_digests("0.1.0", &changed), key);
        let mut renamed = files.clone();
        renamed[0].relative_path = "a/c.bin".to_string();
        assert_ne!(key_from_digests("0.1.0", &renamed), key);
        assert_ne!(key_from_digests("0.1.0", &files[..1]), key);
        assert_eq!(CacheKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(CacheKey::from_hex(&format!(" {key}\n")), Some(key));
        assert_eq!(CacheKey::from_hex("abc"), None);
        assert_eq!(CacheKey::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn the_package_key_follows_files_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let package = fake_package(dir.path());
        let key = package_key(&package).unwrap();
        assert_eq!(package_key(&package).unwrap(), key, "stable");
        assert_ne!(package_key_for_version(&package, "9.9.9").unwrap(), key);

        // Same length, different bytes, a later modification time.
        let weight = package.join("Data/com.apple.CoreML/weights/weight.bin");
        fs::write(&weight, [8u8; 300]).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        fs::File::options()
            .write(true)
            .open(&weight)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let changed = package_key(&package).unwrap();
        assert_ne!(changed, key);

        // A new file changes it too; the same content elsewhere gives the
        // same key as the same files.
        write(&package.join("extra.txt"), b"x");
        let extra = package_key(&package).unwrap();
        assert_ne!(extra, changed);
        let files = package_files(&package).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.relative_path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Data/com.apple.CoreML/model.mlmodel",
                "Data/com.apple.CoreML/weights/weight.bin",
                "Manifest.json",
                "extra.txt"
            ]
        );
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&package, &copy.path().join("elsewhere.mlpackage")).unwrap();
        assert_eq!(
            package_key(&copy.path().join("elsewhere.mlpackage")).unwrap(),
            extra
        );
    }

    #[test]
    fn precompiled_models_sit_beside_their_package_with_a_stamp() {
        assert_eq!(
            precompiled_path(Path::new("/out/combined.mlpackage")).unwrap(),
            Path::new("/out/combined.mlmodelc")
        );
        assert_eq!(
            stamp_path(Path::new("/out/combined.mlmodelc")),
            Path::new("/out/combined.mlmodelc.key")
        );
        assert_eq!(precompiled_path(Path::new("")), None);
    }

    #[test]
    fn precompiled_models_need_a_matching_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let package = fake_package(dir.path());
        let key = package_key(&package).unwrap();
        let compiled = precompiled_path(&package).unwrap();
        assert_eq!(precompiled_for(&package, &key), None);
        write(&compiled.join("model.mil"), b"compiled");
        assert_eq!(precompiled_for(&package, &key), None, "no stamp");
        write_stamp(&compiled, &key).unwrap();
        assert_eq!(read_stamp(&compiled), Some(key));
        assert_eq!(precompiled_for(&package, &key), Some(compiled.clone()));
        let other = key_from_digests("other", &[]);
        assert_eq!(precompiled_for(&package, &other), None, "stale stamp");
    }
}
