//! Compiled Core ML models (`.mlmodelc`): which package a compiled model was
//! made from, and how compiled models are put in place.
//!
//! Core ML loads compiled models only. Two parties make them: the build
//! crate's `xcrun coremlcompiler` step (a macOS build host), and the
//! runtime's Core ML backend, compiling on first load into its cache
//! (`runtime::compile_cache`). Both name what they compiled by the same
//! [`PackageKey`], so this module sits below both:
//!
//! - a **precompiled** model `<dir>/<name>.mlmodelc` beside
//!   `<dir>/<name>.mlpackage` is used only when its stamp
//!   `<dir>/<name>.mlmodelc.key` holds the package's key as it is now, so an
//!   outdated compile is never loaded ([`precompiled_for`]);
//! - directories are installed through a locked staging directory beside
//!   their destination and renamed into place ([`replace_dir`]), so a
//!   reader sees a complete model or none, and staging directories left by
//!   killed processes are found and removed ([`remove_abandoned_staging`]).
//!
//! # The key
//!
//! The key must cost the same for a 140 MB and a 4 GB package, since it is
//! computed at every launch, and must never match a package whose bytes
//! changed. It is the SHA-256 of, for every file of the package (relative
//! path order, symbolic links followed as Core ML's compiler follows them):
//! its relative path and length; its device and inode numbers, and its
//! modification and status-change times to the nanosecond; and the bytes
//! themselves for the manifest and the model specification (small, and
//! what defines the program). Weight files are never read. Why that is
//! sound:
//!
//! - Every write to a file sets its status-change time (`ctime`) to the
//!   current time (POSIX requires it of `write`, `truncate` and friends, and
//!   of `utimes` itself), and no user program can set `ctime` back: a tool
//!   that restores a file's modification time after editing it still moves
//!   its `ctime`. A file replaced by a rename is another inode.
//! - Timestamps have a granularity (a kernel tick on Linux, a second on
//!   HFS+, two on FAT), so a file changed again within the same tick would
//!   keep its times. A key is therefore only [`PackageKey::stable`] when
//!   every file's times are more than [`RACY_WINDOW`] in the past when it is
//!   computed: any later write lands in a later tick and shows. A file
//!   written within that window is hashed instead (the key is then right,
//!   but will differ once the file ages), and callers neither stamp nor
//!   cache an unstable key.
//! - A copy of the package elsewhere has other inodes and times, so it gets
//!   another key: a cache miss, never a false hit.
//!
//! What it trusts: that the system clock does not step back by more than
//! [`RACY_WINDOW`] between two computations, and that nobody rewrites the
//! disk beneath the file system. Where the platform reports no inode or
//! status-change time (not Unix), every file's bytes are hashed instead.
//! The crate version is not part of the key: the compiled model depends on
//! the package and on Core ML, not on this crate, and a compiled model a
//! newer Core ML refuses is recompiled by the runtime's fallback.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// Identifies the layout of the key and of the cache; changing either means
/// changing this string, which changes every key.
const CACHE_FORMAT: &str = "coreml-multifunction compiled-model cache, format 2";

/// How recently a file may have changed for its metadata to identify its
/// bytes: more than the coarsest timestamp granularity of the file systems a
/// package lives on (FAT's two seconds), plus a margin.
pub const RACY_WINDOW: Duration = Duration::from_secs(3);

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

/// Where a file sits on disk and when it last changed, as the operating
/// system reports it: what identifies its bytes without reading them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    /// The device holding it.
    pub device: u64,
    /// Its inode number on that device.
    pub inode: u64,
    /// Its modification time: seconds and nanoseconds since the epoch.
    pub modified: (i64, i64),
    /// Its status-change time (`ctime`), likewise.
    pub changed: (i64, i64),
}

impl FileIdentity {
    /// Whether either time is later than `now - RACY_WINDOW` (including
    /// times in the future): the file may still change within the same
    /// timestamp tick, so its times do not yet identify its bytes.
    pub fn is_racy(&self, now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
            return true;
        };
        let Some(limit) = now.checked_sub(RACY_WINDOW) else {
            return true;
        };
        let limit = (limit.as_secs() as i64, i64::from(limit.subsec_nanos()));
        self.modified >= limit || self.changed >= limit
    }
}

/// One file of a package as the key sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageFile {
    /// Its path relative to the package, components joined with `/`.
    pub relative_path: String,
    /// Its length in bytes.
    pub len: u64,
    /// Its identity, where the platform reports one.
    pub identity: Option<FileIdentity>,
}

impl PackageFile {
    /// Whether its bytes always enter the key: the manifest and the model
    /// specification, which define the program and are small.
    fn content_always_hashed(&self) -> bool {
        self.relative_path == "Manifest.json" || self.relative_path.ends_with(".mlmodel")
    }
}

/// How a file enters the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEntry {
    /// By identity only (its bytes are not read).
    Identity(FileIdentity),
    /// By identity and the SHA-256 of its bytes.
    IdentityAndContent(FileIdentity, [u8; 32]),
    /// By the SHA-256 of its bytes only: it changed too recently for its
    /// identity to vouch for them, or the platform reports none.
    Content([u8; 32]),
}

/// A package's key, and whether it can be stamped or cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackageKey {
    /// The key.
    pub key: CacheKey,
    /// Whether every file entered by identity was older than
    /// [`RACY_WINDOW`]: only then does the same unchanged package give the
    /// same key later, so only then is it stamped or cached.
    pub stable: bool,
}

/// The key of a package made of `files` (relative path, length, entry).
/// Pure: the order of `files` does not matter, and every field is length-
/// prefixed, so no two different inputs share an encoding.
pub fn key_from_entries(files: &[(String, u64, FileEntry)]) -> CacheKey {
    let mut sorted: Vec<&(String, u64, FileEntry)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(CACHE_FORMAT.as_bytes());
    field(&(sorted.len() as u64).to_le_bytes());
    for (path, len, entry) in sorted {
        field(path.as_bytes());
        field(&len.to_le_bytes());
        let identity = |identity: &FileIdentity| {
            let mut bytes = Vec::with_capacity(48);
            bytes.extend(identity.device.to_le_bytes());
            bytes.extend(identity.inode.to_le_bytes());
            bytes.extend(identity.modified.0.to_le_bytes());
            bytes.extend(identity.modified.1.to_le_bytes());
            bytes.extend(identity.changed.0.to_le_bytes());
            bytes.extend(identity.changed.1.to_le_bytes());
            bytes
        };
        match entry {
            FileEntry::Identity(id) => {
                field(b"identity");
                field(&identity(id));
            }
            FileEntry::IdentityAndContent(id, sha256) => {
                field(b"identity and content");
                field(&identity(id));
                field(sha256);
            }
            FileEntry::Content(sha256) => {
                field(b"content");
                field(sha256);
            }
        }
    }
    CacheKey(hasher.finalize().into())
}

/// A digest naming a location (a package's canonical path), for records
/// kept per package, such as which key the cache last compiled for it.
pub fn location_key(path: &Path) -> CacheKey {
    let mut hasher = Sha256::new();
    hasher.update(CACHE_FORMAT.as_bytes());
    hasher.update(b"\0location\0");
    hasher.update(path.as_os_str().as_encoded_bytes());
    CacheKey(hasher.finalize().into())
}

/// The key of the package at `package` as it is now: its files listed by
/// [`package_files`] and entered as [`package_key_of`] does.
pub fn package_key(package: &Path) -> io::Result<PackageKey> {
    package_key_of(package, &package_files(package)?, SystemTime::now())
}

/// The key of the package at `package` whose files are `files`, at time
/// `now`: each file by its identity, plus its bytes for the manifest and the
/// specification; by its bytes alone when its identity is racy at `now` or
/// missing. Reads only the files whose bytes enter the key.
pub fn package_key_of(
    package: &Path,
    files: &[PackageFile],
    now: SystemTime,
) -> io::Result<PackageKey> {
    let mut stable = true;
    let mut entries = Vec::with_capacity(files.len());
    for file in files {
        let path = || package.join(&file.relative_path);
        let entry = match file.identity {
            Some(identity) if identity.is_racy(now) => {
                stable = false;
                FileEntry::Content(file_sha256(&path())?)
            }
            Some(identity) if file.content_always_hashed() => {
                FileEntry::IdentityAndContent(identity, file_sha256(&path())?)
            }
            Some(identity) => FileEntry::Identity(identity),
            None => FileEntry::Content(file_sha256(&path())?),
        };
        entries.push((file.relative_path.clone(), file.len, entry));
    }
    Ok(PackageKey {
        key: key_from_entries(&entries),
        stable,
    })
}

/// Every file of the package with its length and identity, in path order.
/// Symbolic links are followed, as Core ML's compiler follows them. Reads
/// no file: one `stat` each.
pub fn package_files(package: &Path) -> io::Result<Vec<PackageFile>> {
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
        let metadata = fs::metadata(entry.path())?;
        files.push(PackageFile {
            relative_path,
            len: metadata.len(),
            identity: identity_of(&metadata),
        });
    }
    Ok(files)
}

/// The identity of a file from its metadata (Unix: device, inode, `mtime`
/// and `ctime` with nanoseconds).
#[cfg(unix)]
fn identity_of(metadata: &fs::Metadata) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    Some(FileIdentity {
        device: metadata.dev(),
        inode: metadata.ino(),
        modified: (metadata.mtime(), metadata.mtime_nsec()),
        changed: (metadata.ctime(), metadata.ctime_nsec()),
    })
}

/// No status-change time or stable file number in std here: files are
/// hashed instead.
#[cfg(not(unix))]
fn identity_of(_metadata: &fs::Metadata) -> Option<FileIdentity> {
    None
}

/// The SHA-256 of the file at `path`, streamed.
fn file_sha256(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().into())
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

/// The file of a compiled model describing it (inputs, outputs, and for a
/// multifunction model its functions).
pub const COMPILED_METADATA: &str = "metadata.json";

/// The functions a compiled model's `metadata.json` lists (`functions`,
/// each with a `name`, written for multifunction models only): empty for
/// a single-function model, `None` when the text is not such metadata (a
/// JSON array of model objects). What decides whether loading sets
/// `MLModelConfiguration.functionName`, which a single-function model must
/// not need: that property exists only from macOS 15 / iOS 18.
pub fn compiled_model_functions(metadata: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(metadata).ok()?;
    let models = value.as_array()?;
    let mut names = Vec::new();
    for model in models {
        let Some(functions) = model.as_object()?.get("functions") else {
            continue;
        };
        for function in functions.as_array()? {
            names.push(function.get("name")?.as_str()?.to_string());
        }
    }
    Some(names)
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

/// How [`move_or_copy`] put a tree in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Renamed: the source is gone.
    Renamed,
    /// Copied (another file system): the source is still there.
    Copied,
}

/// Moves the directory `source` to `staged` (which must not exist): a
/// rename when on one file system, a copy otherwise (the source is then
/// left for the caller to remove).
pub fn move_or_copy(source: &Path, staged: &Path) -> io::Result<Moved> {
    if fs::rename(source, staged).is_ok() {
        return Ok(Moved::Renamed);
    }
    copy_dir(source, staged)?;
    Ok(Moved::Copied)
}

/// The name prefix of staging directories.
const STAGING_PREFIX: &str = ".staging-";

/// The lock file inside a staging directory, held while it is in use.
const STAGING_LOCK: &str = ".lock";

/// A staging directory beside a destination, on its file system so that a
/// rename from it is atomic, holding a lock on its own lock file for as
/// long as it is in use; removed with everything left in it on drop.
///
/// A process killed mid-way leaves it behind with its lock released (the
/// operating system releases a dead process's locks), which is how
/// [`remove_abandoned_staging`] tells it from a live one.
#[derive(Debug)]
pub struct Staging {
    // Closed (unlocked) before the directory is removed: fields drop in
    // order.
    _lock: fs::File,
    dir: tempfile::TempDir,
}

impl Staging {
    /// The staging directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A new [`Staging`] directory beside `destination` (whose parent is
/// created if missing).
pub fn staging_beside(destination: &Path) -> io::Result<Staging> {
    let parent = destination
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let dir = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(parent)?;
    let lock = fs::File::create(dir.path().join(STAGING_LOCK))?;
    lock.lock()?;
    Ok(Staging { _lock: lock, dir })
}

/// Removes the staging directories in `dir` that were abandoned: older than
/// `min_age` (by modification time) and whose lock file is missing or not
/// held. The age spares one created a moment ago whose lock file does not
/// exist yet; the lock spares one a live process is still filling, however
/// old. Returns how many were removed. Best effort: what cannot be removed
/// now is tried again next time.
pub fn remove_abandoned_staging(dir: &Path, min_age: Duration, now: SystemTime) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.filter_map(|e| e.ok()) {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX)
        {
            continue;
        }
        let path = entry.path();
        let old_enough = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| now.duration_since(modified).is_ok_and(|age| age >= min_age));
        if !old_enough {
            continue;
        }
        let abandoned = match fs::File::open(path.join(STAGING_LOCK)) {
            Ok(lock) => lock.try_lock().is_ok(),
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        };
        if abandoned && fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Puts the directory `source` at `destination`, replacing what is there:
/// the old tree is first renamed aside, then the new one renamed in.
///
/// When the swap fails, the tree is moved back to `source` (when it was
/// moved, not copied), so a caller whose only compile it is still has it:
/// the staging directory deletes what is left in it when it drops.
pub fn replace_dir(source: &Path, destination: &Path) -> io::Result<()> {
    let staged = stage_beside(source, destination)?;
    let swapped = swap_in(&staged.staging, &staged.path, destination);
    restore_on_failure(swapped, staged.moved, &staged.path, source)
}

/// A tree moved into a staging directory beside its destination, to be put
/// there ([`Staged::commit`]) only once it proves good: a fresh compile
/// that must load before it replaces a cached entry. Dropped without a
/// commit, it is deleted and the destination is left as it was.
#[derive(Debug)]
pub struct Staged {
    staging: Staging,
    path: PathBuf,
    destination: PathBuf,
    moved: Moved,
}

/// Moves (or copies, across file systems) the directory `source` into a
/// staging directory beside `destination`.
pub fn stage_beside(source: &Path, destination: &Path) -> io::Result<Staged> {
    let staging = staging_beside(destination)?;
    let path = staging.path().join("new");
    let moved = move_or_copy(source, &path)?;
    Ok(Staged {
        staging,
        path,
        destination: destination.to_path_buf(),
        moved,
    })
}

impl Staged {
    /// Where the tree is now, until committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts the tree at its destination, replacing what is there (renamed
    /// aside first, so a reader sees the old tree or the new one).
    pub fn commit(self) -> io::Result<PathBuf> {
        swap_in(&self.staging, &self.path, &self.destination)?;
        Ok(self.destination)
    }
}

/// After an install of `staged` failed (`outcome`), moves it back to
/// `source` when it was moved from there (`moved`), so the failure does
/// not delete the caller's only copy with the staging directory. A copy
/// (`moved` false) left `source` as it was. Returns `outcome`.
pub fn restore_on_failure<T>(
    outcome: io::Result<T>,
    moved: Moved,
    staged: &Path,
    source: &Path,
) -> io::Result<T> {
    if outcome.is_err() && moved == Moved::Renamed && staged.exists() && !source.exists() {
        // Same file system (it was renamed from there): this rename is
        // what the install's was, back.
        let _ = fs::rename(staged, source);
    }
    outcome
}

/// Puts a copy of the directory `source` at `destination`, replacing what
/// is there, as [`replace_dir`] does; `source` is left as it is.
pub fn replace_dir_with_copy(source: &Path, destination: &Path) -> io::Result<()> {
    let staging = staging_beside(destination)?;
    let staged = staging.path().join("new");
    copy_dir(source, &staged)?;
    swap_in(&staging, &staged, destination)
}

/// Renames `staged` (inside `staging`) to `destination`, moving what was
/// there into `staging` first (deleted with it).
fn swap_in(staging: &Staging, staged: &Path, destination: &Path) -> io::Result<()> {
    let old = staging.path().join("old");
    let had_old = match fs::rename(destination, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if let Err(e) = fs::rename(staged, destination) {
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

    /// Sets both times of every file of `package` an hour back (which also
    /// moves `ctime` to now, so "now" for the key is read an hour ahead).
    fn age(package: &Path) -> SystemTime {
        let past = SystemTime::now() - Duration::from_secs(3600);
        for file in package_files(package).unwrap() {
            let path = package.join(&file.relative_path);
            fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_times(fs::FileTimes::new().set_modified(past).set_accessed(past))
                .unwrap();
        }
        // Every ctime is now "now"; an hour later they are old.
        SystemTime::now() + Duration::from_secs(3600)
    }

    fn identity(device: u64, inode: u64, seconds: i64) -> FileIdentity {
        FileIdentity {
            device,
            inode,
            modified: (seconds, 1),
            changed: (seconds, 2),
        }
    }

    #[test]
    fn the_pure_key_is_stable_order_independent_and_tells_every_field_apart() {
        let files = vec![
            (
                "a/b.bin".to_string(),
                3,
                FileEntry::Identity(identity(1, 2, 100)),
            ),
            ("Manifest.json".to_string(), 2, FileEntry::Content([2; 32])),
        ];
        let key = key_from_entries(&files);
        // Pinned: a change here invalidates every user's cache, so it must
        // be deliberate (and then CACHE_FORMAT should change too).
        assert_eq!(
            key.to_hex(),
            "aa06ce19746b34ecd8e00e0fb226d43dc9454516da5dca47bfb308016935644b"
        );
        let reversed = vec![files[1].clone(), files[0].clone()];
        assert_eq!(key_from_entries(&reversed), key);
        type Entries = Vec<(String, u64, FileEntry)>;
        let changed = |edit: &dyn Fn(&mut Entries)| {
            let mut files = files.clone();
            edit(&mut files);
            key_from_entries(&files)
        };
        let different = [
            changed(&|f| f[0].0 = "a/c.bin".to_string()),
            changed(&|f| f[0].1 = 4),
            changed(&|f| f[0].2 = FileEntry::Identity(identity(9, 2, 100))),
            changed(&|f| f[0].2 = FileEntry::Identity(identity(1, 9, 100))),
            changed(&|f| f[0].2 = FileEntry::Identity(identity(1, 2, 101))),
            changed(&|f| {
                let mut id = identity(1, 2, 100);
                id.changed.1 += 1;
                f[0].2 = FileEntry::Identity(id);
            }),
            changed(&|f| f[0].2 = FileEntry::IdentityAndContent(identity(1, 2, 100), [0; 32])),
            changed(&|f| f[1].2 = FileEntry::Content([3; 32])),
            changed(&|f| {
                f.pop();
            }),
        ];
        for (i, other) in different.iter().enumerate() {
            assert_ne!(*other, key, "edit {i} kept the key");
        }
        assert_eq!(CacheKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(CacheKey::from_hex(&format!(" {key}\n")), Some(key));
        assert_eq!(CacheKey::from_hex("abc"), None);
        assert_eq!(CacheKey::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn racy_means_changed_within_the_window_or_in_the_future() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let id = |seconds| identity(1, 1, seconds);
        assert!(!id(990).is_racy(now));
        assert!(id(998).is_racy(now), "within the window");
        assert!(id(2_000).is_racy(now), "in the future");
        let mut changed_late = id(900);
        changed_late.changed = (999, 0);
        assert!(changed_late.is_racy(now), "ctime counts as well as mtime");
    }

    #[cfg(unix)]
    #[test]
    fn the_package_key_follows_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let package = fake_package(dir.path());
        let weight = package.join("Data/com.apple.CoreML/weights/weight.bin");

        // Just written: racy, so hashed, and not stable.
        let fresh = package_key(&package).unwrap();
        assert!(!fresh.stable);

        let later = age(&package);
        let files = package_files(&package).unwrap();
        let key = package_key_of(&package, &files, later).unwrap();
        assert!(key.stable);
        assert_ne!(key.key, fresh.key, "entered by identity once old");
        assert_eq!(package_key_of(&package, &files, later).unwrap(), key);

        // Same length, different bytes, the modification time put back:
        // ctime still moves, so the key does.
        let modified = fs::metadata(&weight).unwrap().modified().unwrap();
        fs::write(&weight, [8u8; 300]).unwrap();
        fs::File::options()
            .write(true)
            .open(&weight)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let later = later + Duration::from_secs(3600);
        let edited = package_key_of(&package, &package_files(&package).unwrap(), later).unwrap();
        assert_ne!(edited.key, key.key);

        // A replaced file (new inode) and an added file change it too.
        let replacement = dir.path().join("replacement");
        fs::write(&replacement, [8u8; 300]).unwrap();
        fs::rename(&replacement, &weight).unwrap();
        let later = later + Duration::from_secs(3600);
        let replaced = package_key_of(&package, &package_files(&package).unwrap(), later).unwrap();
        assert_ne!(replaced.key, edited.key);
        write(&package.join("extra.txt"), b"x");
        let later = later + Duration::from_secs(3600);
        let files = package_files(&package).unwrap();
        let extra = package_key_of(&package, &files, later).unwrap();
        assert_ne!(extra.key, replaced.key);
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

        // A copy elsewhere is other files: another key, never a false hit.
        let copy = tempfile::tempdir().unwrap();
        let elsewhere = copy.path().join("model.mlpackage");
        copy_dir(&package, &elsewhere).unwrap();
        let copied =
            package_key_of(&elsewhere, &package_files(&elsewhere).unwrap(), later).unwrap();
        assert_ne!(copied.key, extra.key);
    }

    #[cfg(unix)]
    #[test]
    fn the_manifest_and_specification_bytes_enter_the_key() {
        // Two packages with the same identities but a different
        // specification: the key tells them apart by content.
        let dir = tempfile::tempdir().unwrap();
        let package = fake_package(dir.path());
        let later = age(&package);
        let files = package_files(&package).unwrap();
        let key = package_key_of(&package, &files, later).unwrap();
        fs::write(package.join("Data/com.apple.CoreML/model.mlmodel"), b"SPEC").unwrap();
        // The old identities (as if the file system had lost the change).
        assert_ne!(
            package_key_of(&package, &files, later).unwrap().key,
            key.key
        );
    }

    #[test]
    fn the_key_costs_the_same_whatever_the_weights_weigh() {
        // The key reads the manifest and the specification, and stats the
        // rest: a weight file that cannot be read at all does not stop it.
        let dir = tempfile::tempdir().unwrap();
        let package = fake_package(dir.path());
        let later = age(&package);
        let mut files = package_files(&package).unwrap();
        // A 4 GB weight file that is not there to be read.
        let weight = files
            .iter_mut()
            .find(|f| f.relative_path.ends_with("weight.bin"))
            .unwrap();
        weight.len = 4 << 30;
        weight.relative_path = "Data/com.apple.CoreML/weights/absent.bin".to_string();
        if cfg!(unix) {
            let key = package_key_of(&package, &files, later).unwrap();
            assert!(key.stable);
        } else {
            // Without identities every file is read.
            assert!(package_key_of(&package, &files, later).is_err());
        }
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
        let key = package_key(&package).unwrap().key;
        let compiled = precompiled_path(&package).unwrap();
        assert_eq!(precompiled_for(&package, &key), None);
        write(&compiled.join("model.mil"), b"compiled");
        assert_eq!(precompiled_for(&package, &key), None, "no stamp");
        write_stamp(&compiled, &key).unwrap();
        assert_eq!(read_stamp(&compiled), Some(key));
        assert_eq!(precompiled_for(&package, &key), Some(compiled.clone()));
        let other = key_from_entries(&[]);
        assert_eq!(precompiled_for(&package, &other), None, "stale stamp");
    }

    #[test]
    fn staging_directories_are_locked_and_only_abandoned_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("cache/entry.mlmodelc");
        let live = staging_beside(&destination).unwrap();
        let parent = destination.parent().unwrap();
        // A killed process's staging directory: its lock file is not held.
        let abandoned = parent.join(".staging-killed");
        write(&abandoned.join(STAGING_LOCK), b"");
        write(&abandoned.join("new/model.mil"), b"half");
        // One whose lock file was never made (killed at once).
        let unlocked = parent.join(".staging-nolock");
        write(&unlocked.join("new/model.mil"), b"half");
        // Something else entirely.
        write(&parent.join("other.mlmodelc/model.mil"), b"kept");

        let now = SystemTime::now();
        // Too young: nothing goes, however unlocked.
        assert_eq!(
            remove_abandoned_staging(parent, Duration::from_secs(3600), now),
            0
        );
        assert!(abandoned.exists() && unlocked.exists());
        // Old enough: the abandoned two go, the live one stays (its lock is
        // held by this process's open file).
        let later = now + Duration::from_secs(7200);
        assert_eq!(
            remove_abandoned_staging(parent, Duration::from_secs(3600), later),
            2
        );
        assert!(!abandoned.exists() && !unlocked.exists());
        assert!(live.path().is_dir());
        assert!(parent.join("other.mlmodelc/model.mil").is_file());
        let live_path = live.path().to_path_buf();
        drop(live);
        assert!(!live_path.exists(), "removed on drop");
    }

    #[test]
    fn a_failed_install_gives_the_tree_back() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("compiled.mlmodelc");
        write(&source.join("model.mil"), b"only copy");
        // A directory cannot be renamed onto a regular file: the swap
        // fails after the tree was moved into staging.
        let destination = dir.path().join("out/entry.mlmodelc");
        write(&destination, b"a file in the way");
        let error = replace_dir(&source, &destination);
        if let Ok(()) = error {
            // Some systems replace a file with a directory; nothing to test.
            return;
        }
        assert_eq!(
            fs::read(source.join("model.mil")).unwrap(),
            b"only copy",
            "the compile is still where it was"
        );
        let names: Vec<_> = fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["entry.mlmodelc"], "no staging left behind");

        // The pure part: only a renamed tree goes back, and only on failure.
        let staged = dir.path().join("staged");
        let back = dir.path().join("back");
        write(&staged.join("x"), b"x");
        let failed: io::Result<()> = Err(io::Error::other("rename failed"));
        assert!(restore_on_failure(failed, Moved::Copied, &staged, &back).is_err());
        assert!(!back.exists(), "a copy left its source in place");
        assert!(restore_on_failure(Ok(()), Moved::Renamed, &staged, &back).is_ok());
        assert!(!back.exists(), "a success keeps the install");
        let failed: io::Result<()> = Err(io::Error::other("rename failed"));
        assert!(restore_on_failure(failed, Moved::Renamed, &staged, &back).is_err());
        assert!(back.join("x").is_file() && !staged.exists());
    }

    #[test]
    fn compiled_metadata_tells_multifunction_models_apart() {
        let multi = r#"[{"shortDescription": "", "functions": [
            {"name": "prefill", "inputSchema": []}, {"name": "decode"}
        ], "defaultFunctionName": "decode"}]"#;
        assert_eq!(
            compiled_model_functions(multi),
            Some(vec!["prefill".to_string(), "decode".to_string()])
        );
        let single = r#"[{"inputSchema": [{"name": "x"}], "outputSchema": []}]"#;
        assert_eq!(compiled_model_functions(single), Some(Vec::new()));
        for unreadable in ["", "{}", "[1]", r#"[{"functions": [{"id": 1}]}]"#] {
            assert_eq!(compiled_model_functions(unreadable), None, "{unreadable}");
        }
    }

    #[test]
    fn a_staged_tree_replaces_its_destination_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("cache/entry.mlmodelc");
        write(&destination.join("model.mil"), b"old");
        let fresh = dir.path().join("fresh");
        write(&fresh.join("model.mil"), b"new");
        let staged = stage_beside(&fresh, &destination).unwrap();
        assert_eq!(fs::read(staged.path().join("model.mil")).unwrap(), b"new");
        // Dropped (the fresh copy did not load): the entry stays.
        drop(staged);
        assert_eq!(fs::read(destination.join("model.mil")).unwrap(), b"old");
        let names = |dir: &Path| -> Vec<_> {
            fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect()
        };
        assert_eq!(names(&dir.path().join("cache")), ["entry.mlmodelc"]);
        // Committed (it loaded): it replaces the entry.
        write(&fresh.join("model.mil"), b"new");
        let staged = stage_beside(&fresh, &destination).unwrap();
        assert_eq!(staged.commit().unwrap(), destination);
        assert_eq!(fs::read(destination.join("model.mil")).unwrap(), b"new");
        assert_eq!(names(&dir.path().join("cache")), ["entry.mlmodelc"]);
    }

    #[test]
    fn replacing_keeps_one_complete_tree() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("out/model.mlmodelc");
        let first = dir.path().join("first");
        write(&first.join("model.mil"), b"one");
        replace_dir_with_copy(&first, &destination).unwrap();
        assert!(
            first.join("model.mil").is_file(),
            "a copy leaves the source"
        );
        let second = dir.path().join("second");
        write(&second.join("model.mil"), b"two");
        replace_dir(&second, &destination).unwrap();
        assert_eq!(fs::read(destination.join("model.mil")).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["model.mlmodelc"], "no staging left behind");
    }
}
