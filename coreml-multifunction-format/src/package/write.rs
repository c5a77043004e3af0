//! Writing packages: atomically, and byte for byte reproducibly.
//!
//! A package is assembled in a staging directory beside its destination and
//! renamed into place only once complete, so a failed or interrupted write
//! never leaves a half-written package where a good one is expected. The
//! manifest's identifiers derive from the model's bytes, and blobs are laid
//! out exactly as Core ML's writer does, so the same model and weights always
//! give the same bytes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use prost::Message;
use sha2::{Digest, Sha256};

use super::blob::{BlobFile, BlobWriter, HEADER_LEN};
use super::manifest::{
    self, derived_identifier, Manifest, ManifestItem, SPEC_ITEM_DESCRIPTION, SPEC_ITEM_NAME,
    WEIGHTS_ITEM_DESCRIPTION, WEIGHTS_ITEM_NAME,
};
use super::{paths, values, Package, DATA_DIR, MANIFEST_FILE, MODEL_PATH_PREFIX};
use crate::error::{Error, Problem, Result};
use crate::proto::mil_spec::value;
use crate::proto::Model;

/// The directory, relative to `Data/`, of Core ML's own items.
const CORE_ML_DIR: &str = manifest::CORE_ML_AUTHOR;

/// Assembles a new package in a staging directory, then moves it into place.
///
/// Dropping a builder without calling [`PackageBuilder::finish`] removes the
/// staging directory and leaves the destination untouched.
#[derive(Debug)]
pub struct PackageBuilder {
    destination: PathBuf,
    staging: Staging,
    blob_writers: BTreeMap<String, BlobWriter<BufWriter<File>>>,
    extra_items: Vec<ManifestItem>,
    has_weights: bool,
}

impl PackageBuilder {
    /// Starts a package that [`finish`](Self::finish) will move to
    /// `destination`, which must end in `.mlpackage`.
    pub fn new(destination: impl AsRef<Path>) -> Result<PackageBuilder> {
        let destination = destination.as_ref().to_path_buf();
        let file_name = destination
            .file_name()
            .and_then(|name| name.to_str())
            .filter(|name| name.ends_with(".mlpackage") && name.len() > ".mlpackage".len())
            .ok_or_else(|| {
                Error::invalid(
                    &destination,
                    Problem::InvalidDestination {
                        reason: "a package's directory name must end in .mlpackage".to_string(),
                    },
                )
            })?
            .to_string();
        let parent = match destination.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent)
            .map_err(|e| Error::io(&parent, "create the output directory", e))?;
        let staging = Staging::new(&parent, &file_name)?;
        let core_ml_dir = staging.path().join(DATA_DIR).join(CORE_ML_DIR);
        fs::create_dir_all(&core_ml_dir)
            .map_err(|e| Error::io(&core_ml_dir, "create the package layout", e))?;
        Ok(PackageBuilder {
            destination,
            staging,
            blob_writers: BTreeMap::new(),
            extra_items: Vec::new(),
            has_weights: false,
        })
    }

    /// The reference a model uses for weight file `file_name`.
    pub fn blob_file_reference(file_name: &str) -> String {
        format!("{MODEL_PATH_PREFIX}{WEIGHTS_ITEM_NAME}/{file_name}")
    }

    /// The writer of weight file `file_name` (a plain name such as
    /// `weight.bin`) in the package's weights directory, created on first use.
    pub fn blob_writer(&mut self, file_name: &str) -> Result<&mut BlobWriter<BufWriter<File>>> {
        let weights_dir = self.weights_dir();
        check_plain_file_name(&weights_dir, file_name)?;
        if !self.blob_writers.contains_key(file_name) {
            fs::create_dir_all(&weights_dir)
                .map_err(|e| Error::io(&weights_dir, "create the weights directory", e))?;
            let path = weights_dir.join(file_name);
            let file =
                File::create(&path).map_err(|e| Error::io(&path, "create a weight file", e))?;
            let writer = BlobWriter::new(BufWriter::with_capacity(1 << 20, file))
                .map_err(|e| Error::io(&path, "write a weight file", e))?;
            self.blob_writers.insert(file_name.to_string(), writer);
            self.has_weights = true;
        }
        Ok(self
            .blob_writers
            .get_mut(file_name)
            .expect("inserted above"))
    }

    /// Starts weight file `file_name` as a copy of the first `keep` blobs of
    /// the blob file `base`, which keep their record offsets; blobs given to
    /// [`blob_writer`](Self::blob_writer) afterwards are appended after them,
    /// and the header counts both. What follows the kept blobs in `base`
    /// (later blobs, trailing padding) is cut off.
    ///
    /// The copy is a clone sharing base's disk blocks where the file system
    /// can make one and `allow_clone` is set (see [`clone_or_copy`]); the
    /// bytes are the same either way. Returns the bytes cloned (the kept
    /// part's length), or 0 when they were copied.
    pub fn blob_file_from_base(
        &mut self,
        file_name: &str,
        base: &BlobFile,
        keep: usize,
        allow_clone: bool,
    ) -> Result<u64> {
        let weights_dir = self.weights_dir();
        check_plain_file_name(&weights_dir, file_name)?;
        let path = weights_dir.join(file_name);
        if self.blob_writers.contains_key(file_name) {
            return Err(Error::invalid(
                &path,
                Problem::InvalidDestination {
                    reason: "the weight file was already started".to_string(),
                },
            ));
        }
        let records = base.records()?;
        let kept = &records[..keep.min(records.len())];
        let end = kept.last().map_or(HEADER_LEN, |record| record.data_end());
        let count = u32::try_from(kept.len()).expect("a header counts at most 2^32 - 1 blobs");
        fs::create_dir_all(&weights_dir)
            .map_err(|e| Error::io(&weights_dir, "create the weights directory", e))?;
        let cloned = clone_or_copy(base.path(), &path, allow_clone)
            .map_err(|e| Error::io(base.path(), "copy a weight file into the package", e))?;
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "open a weight file", e))?;
        file.set_len(end)
            .map_err(|e| Error::io(&path, "write a weight file", e))?;
        let writer = BlobWriter::resume(BufWriter::with_capacity(1 << 20, file), end, count)
            .map_err(|e| Error::io(&path, "write a weight file", e))?;
        self.blob_writers.insert(file_name.to_string(), writer);
        self.has_weights = true;
        Ok(if cloned { end } else { 0 })
    }

    /// Copies `source` verbatim into the weights directory as `file_name`:
    /// for files there that the model does not refer to.
    pub fn copy_weights_file(&mut self, file_name: &str, source: &Path) -> Result<()> {
        let weights_dir = self.weights_dir();
        check_plain_file_name(&weights_dir, file_name)?;
        copy_tree(source, &weights_dir.join(file_name))?;
        self.has_weights = true;
        Ok(())
    }

    fn weights_dir(&self) -> PathBuf {
        self.staging
            .path()
            .join(DATA_DIR)
            .join(CORE_ML_DIR)
            .join(WEIGHTS_ITEM_NAME)
    }

    /// Copies an item that is neither the model nor its weights (a file or
    /// directory at `source`) into the package, listed as `item`.
    pub fn copy_item(&mut self, item: &ManifestItem, source: &Path) -> Result<()> {
        let staging_data = self.staging.path().join(DATA_DIR);
        let target = staging_data.join(&item.path);
        if paths::has_unsafe_component(&item.path) {
            return Err(Error::invalid(
                source,
                Problem::PathEscapesPackage {
                    item_path: item.path.clone(),
                },
            ));
        }
        copy_tree(source, &target)?;
        self.extra_items.push(item.clone());
        Ok(())
    }

    /// Writes the model and the manifest, then moves the package into place,
    /// replacing whatever was at the destination. Returns the destination.
    pub fn finish(mut self, model: &Model) -> Result<PathBuf> {
        let core_ml_dir = self.staging.path().join(DATA_DIR).join(CORE_ML_DIR);
        let has_weights = self.has_weights;
        for (name, writer) in std::mem::take(&mut self.blob_writers) {
            let path = core_ml_dir.join(WEIGHTS_ITEM_NAME).join(&name);
            let file = writer
                .finish()
                .and_then(|out| out.into_inner().map_err(|e| e.into_error()))
                .map_err(|e| Error::io(&path, "write a weight file", e))?;
            file.sync_all()
                .map_err(|e| Error::io(&path, "flush a weight file", e))?;
        }

        let spec_bytes = model.encode_to_vec();
        let spec_path = core_ml_dir.join(SPEC_ITEM_NAME);
        write_synced(&spec_path, &spec_bytes, "write the model specification")?;

        let spec_digest = Sha256::digest(&spec_bytes);
        let mut items = vec![ManifestItem::core_ml(SPEC_ITEM_NAME, SPEC_ITEM_DESCRIPTION)];
        if has_weights {
            items.push(ManifestItem::core_ml(
                WEIGHTS_ITEM_NAME,
                WEIGHTS_ITEM_DESCRIPTION,
            ));
        }
        items.append(&mut self.extra_items);
        let root_model_identifier = derived_identifier(&spec_digest, &items[0].path);
        let manifest = Manifest {
            file_format_version: manifest::FILE_FORMAT_VERSION.to_string(),
            item_info_entries: items
                .into_iter()
                .map(|item| (derived_identifier(&spec_digest, &item.path), item))
                .collect(),
            root_model_identifier,
        };
        let manifest_path = self.staging.path().join(MANIFEST_FILE);
        write_synced(
            &manifest_path,
            manifest.to_json().as_bytes(),
            "write the manifest",
        )?;

        self.staging.move_into_place(&self.destination)?;
        Ok(self.destination)
    }
}

/// Copies the file `source` to `destination`, replacing it: as a clone
/// sharing the source's disk blocks where the file system can make one and
/// `allow_clone` is set (APFS on Apple platforms, XFS and btrfs with
/// reflinks on Linux), else by reading and writing every byte. Returns
/// whether it cloned; the destination's bytes are the same either way.
///
/// `std::fs::copy` clones on those file systems too, but does not say
/// whether it did, and a merge reports what it cloned; hence the direct
/// calls, with a plain read-write copy (never `copy_file_range`, which may
/// clone) as the fallback.
pub fn clone_or_copy(source: &Path, destination: &Path, allow_clone: bool) -> io::Result<bool> {
    if allow_clone && clone_file(source, destination)? {
        return Ok(true);
    }
    let mut from = File::open(source)?;
    let mut to = File::create(destination)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buffer[..read])?;
    }
    to.flush()?;
    Ok(false)
}

/// Clones `source` to `destination` with the `FICLONE` ioctl; `false` where
/// the file system cannot (ext4, tmpfs, another device).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn clone_file(source: &Path, destination: &Path) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let from = File::open(source)?;
    let to = File::create(destination)?;
    // SAFETY: FICLONE takes the source's descriptor as its argument and
    // reads nothing else; both descriptors are open for the whole call.
    let result = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) };
    Ok(result == 0)
}

/// Clones `source` to `destination` with `clonefile(2)`; `false` where the
/// file system cannot (anything but APFS, another volume).
#[cfg(target_vendor = "apple")]
fn clone_file(source: &Path, destination: &Path) -> io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(source.as_os_str().as_bytes())?;
    let to = CString::new(destination.as_os_str().as_bytes())?;
    // clonefile makes the destination and refuses an existing one.
    match fs::remove_file(destination) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // SAFETY: both are NUL-terminated paths that outlive the call; flags 0
    // (follow a symbolic link at `source`, as a copy would).
    let result = unsafe { libc::clonefile(from.as_ptr(), to.as_ptr(), 0) };
    Ok(result == 0)
}

/// No clone call on this platform: always copy.
#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn clone_file(_source: &Path, _destination: &Path) -> io::Result<bool> {
    Ok(false)
}

/// Copies a package directory to `destination` the same atomic way a new
/// package is written: staged beside it, then renamed into place. Files are
/// copied with `std::fs::copy`, which clones them where the file system can
/// (`fclonefileat` on Apple platforms, `copy_file_range` on Linux, which
/// reflinks on XFS and btrfs), so a copy of a large model costs no disk
/// there.
pub fn copy_package(source: &Path, destination: &Path) -> Result<()> {
    let parent = match destination.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent)
        .map_err(|e| Error::io(&parent, "create the directory to copy into", e))?;
    let name = destination
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("package");
    let staging = Staging::new(&parent, name)?;
    copy_tree(source, staging.path())?;
    staging.move_into_place(destination)
}

/// A staging directory beside a destination, with a lock file held for as
/// long as it is in use.
///
/// The lock file (`.<name>.partial-<random>.lock`) is created and locked
/// first, the directory (the same name without `.lock`) second, and the
/// lock is released last. So a staging directory whose lock file is missing
/// or unlocked was abandoned by a killed process, and the next build removes
/// it ([`Staging::clean_abandoned`]); one whose lock is held belongs to a
/// concurrent build and is left alone.
#[derive(Debug)]
struct Staging {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    kept: bool,
}

impl Staging {
    fn prefix(file_name: &str) -> String {
        format!(".{file_name}.partial-")
    }

    fn new(parent: &Path, file_name: &str) -> Result<Staging> {
        Staging::clean_abandoned(parent, file_name);
        let (lock, lock_path) = Staging::locked_file(parent, file_name)?;
        let name = lock_path.file_name().expect("a file").to_string_lossy();
        let dir = parent.join(name.trim_end_matches(".lock"));
        if let Err(e) = fs::create_dir(&dir) {
            let _ = fs::remove_file(&lock_path);
            return Err(Error::io(&dir, "create a staging directory", e));
        }
        Ok(Staging {
            dir,
            lock_path,
            _lock: lock,
            kept: false,
        })
    }

    /// A new lock file `.<file_name>.partial-<random>.lock`, locked.
    ///
    /// It is created and locked under another name, which
    /// [`clean_abandoned`](Self::clean_abandoned) ignores, and only then
    /// linked under its own: so a lock file the clean-up of another writer
    /// finds is either held by a live writer or free because its writer is
    /// gone, never one created a moment ago and not yet locked (which it
    /// would delete, leaving this writer's staging directory without a lock
    /// for the next clean-up to remove mid-write).
    fn locked_file(parent: &Path, file_name: &str) -> Result<(File, PathBuf)> {
        let creating = format!(".{file_name}.locking-");
        loop {
            let lock = tempfile::Builder::new()
                .prefix(&creating)
                .suffix(".lock")
                .tempfile_in(parent)
                .map_err(|e| Error::io(parent, "create a staging lock", e))?;
            lock.as_file()
                .lock()
                .map_err(|e| Error::io(lock.path(), "lock the staging directory", e))?;
            let random = lock
                .path()
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .trim_start_matches(&creating)
                .to_string();
            let lock_path = parent.join(format!("{}{random}", Staging::prefix(file_name)));
            // Linking refuses an existing name, where renaming would replace
            // another writer's lock.
            match fs::hard_link(lock.path(), &lock_path) {
                Ok(()) => {
                    // The lock belongs to the open file, not to a name:
                    // removing the temporary name keeps it.
                    let (file, temporary_name) = lock.into_parts();
                    let _ = temporary_name.close();
                    return Ok((file, lock_path));
                }
                // The name is taken, or another writer's clean-up removed the
                // temporary file before it was locked: try another.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(Error::io(&lock_path, "create a staging lock", e)),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.dir
    }

    /// Removes staging directories for `file_name` left by killed builds.
    /// Best effort: whatever cannot be removed now is tried again next time.
    fn clean_abandoned(parent: &Path, file_name: &str) {
        let prefix = Staging::prefix(file_name);
        let creating = format!(".{file_name}.locking-");
        let Ok(entries) = fs::read_dir(parent) else {
            return;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&prefix) || name.starts_with(&creating))
            .collect();
        names.sort();
        for name in &names {
            if name.starts_with(&creating) {
                // A lock file being created that nobody holds was left by a
                // writer killed before it locked it, or is about to be
                // locked; in the second case its writer finds it gone and
                // makes another.
                let path = parent.join(name);
                if File::open(&path).is_ok_and(|lock| lock.try_lock().is_ok()) {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let stem = name.trim_end_matches(".lock").trim_end_matches(".replaced");
            let lock_path = parent.join(format!("{stem}.lock"));
            let abandoned = match File::open(&lock_path) {
                Ok(lock) => lock.try_lock().is_ok(),
                Err(e) => e.kind() == io::ErrorKind::NotFound,
            };
            if !abandoned {
                continue;
            }
            // An interrupted fallback replace may have moved the previous
            // package aside: put it back if nothing took its place.
            let destination = parent.join(file_name);
            let aside = parent.join(format!("{stem}.replaced"));
            if aside.exists() && fs::symlink_metadata(&destination).is_err() {
                let _ = fs::rename(&aside, &destination);
            }
            for leftover in [parent.join(stem), aside] {
                if fs::symlink_metadata(&leftover).is_ok() {
                    let _ = remove_any(&leftover);
                }
            }
            let _ = fs::remove_file(&lock_path);
        }
    }

    /// Moves the finished directory to `destination`. An existing package
    /// there is swapped out atomically where the platform can (Linux
    /// `renameat2(RENAME_EXCHANGE)`, Apple `renamex_np(RENAME_SWAP)`), so
    /// the destination always holds a complete package, old or new; and is
    /// removed once the new one is in place. Concurrent writers each end
    /// with a complete package in place, the last one winning.
    fn move_into_place(mut self, destination: &Path) -> Result<()> {
        const ATTEMPTS: usize = 100;
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            match fs::rename(&self.dir, destination) {
                Ok(()) => {
                    self.kept = true;
                    return Ok(());
                }
                Err(e)
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists
                    ) && fs::symlink_metadata(destination).is_err() =>
                {
                    return Err(Error::io(destination, "move the new package into place", e));
                }
                Err(_) => match exchange(&self.dir, destination) {
                    // The staging path now holds the previous package.
                    Ok(()) => {
                        let _ = remove_any(&self.dir);
                        return Ok(());
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => last_error = Some(e),
                    Err(_) => {
                        // No atomic exchange here: move the old package
                        // aside, then the new one in. A kill in between is
                        // repaired by the next build's clean-up.
                        let mut aside = self.dir.clone().into_os_string();
                        aside.push(".replaced");
                        let aside = PathBuf::from(aside);
                        match fs::rename(destination, &aside) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                                last_error = Some(e);
                                continue;
                            }
                            Err(e) => {
                                return Err(Error::io(
                                    destination,
                                    "move the previous package aside",
                                    e,
                                ))
                            }
                        }
                        let placed = fs::rename(&self.dir, destination);
                        if placed.is_err() && fs::symlink_metadata(destination).is_err() {
                            let _ = fs::rename(&aside, destination);
                        }
                        let _ = remove_any(&aside);
                        match placed {
                            Ok(()) => {
                                self.kept = true;
                                return Ok(());
                            }
                            Err(e) => last_error = Some(e),
                        }
                    }
                },
            }
        }
        Err(Error::io(
            destination,
            "move the new package into place",
            last_error.unwrap_or_else(|| io::Error::other("other writers kept replacing it")),
        ))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_dir_all(&self.dir);
        }
        // The lock is released when the file closes, after this.
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// Atomically exchanges two paths, where the platform has a call for it.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let b = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the
    // call; renameat2 reads them and touches no other memory. Called through
    // syscall() so that it works whatever the C library's version.
    let result = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Atomically exchanges two paths, where the platform has a call for it.
#[cfg(target_vendor = "apple")]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let b = CString::new(b.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: both paths are valid NUL-terminated strings that outlive the
    // call, which only reads them.
    let result = unsafe { libc::renamex_np(a.as_ptr(), b.as_ptr(), libc::RENAME_SWAP) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Atomically exchanges two paths, where the platform has a call for it.
#[cfg(not(any(target_os = "linux", target_vendor = "apple")))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no atomic exchange on this platform",
    ))
}

fn check_plain_file_name(weights_dir: &Path, file_name: &str) -> Result<()> {
    if file_name.is_empty() || file_name.contains(['/', '\\']) || file_name.starts_with('.') {
        return Err(Error::invalid(
            weights_dir.join(file_name),
            Problem::InvalidDestination {
                reason: "a weight file name must be a plain file name".to_string(),
            },
        ));
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path)?.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn write_synced(path: &Path, bytes: &[u8], action: &'static str) -> Result<()> {
    let mut file = File::create(path).map_err(|e| Error::io(path, action, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io(path, action, e))?;
    file.sync_all().map_err(|e| Error::io(path, action, e))
}

/// Copies a file, or a directory tree of plain files, refusing symlinks.
fn copy_tree(source: &Path, target: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(source).sort_by_file_name() {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(source).to_path_buf();
            Error::io(path, "read an item to copy", e.into())
        })?;
        let relative = entry.path().strip_prefix(source).expect("below the source");
        let destination = if relative.as_os_str().is_empty() {
            target.to_path_buf()
        } else {
            target.join(relative)
        };
        let file_type = entry.file_type();
        if file_type.is_dir() {
            fs::create_dir_all(&destination)
                .map_err(|e| Error::io(&destination, "create a directory", e))?;
        } else if file_type.is_file() {
            if let Some(parent) = destination.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| Error::io(parent, "create a directory", e))?;
            }
            fs::copy(entry.path(), &destination)
                .map_err(|e| Error::io(entry.path(), "copy an item", e))?;
        } else {
            return Err(Error::invalid(
                entry.path(),
                Problem::PathEscapesPackage {
                    item_path: relative.display().to_string(),
                },
            ));
        }
    }
    Ok(())
}

/// What [`rewrite`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteSummary {
    /// The package written.
    pub destination: PathBuf,
    /// Blobs copied, over all weight files.
    pub blobs: u64,
    /// Bytes of blob data copied.
    pub blob_bytes: u64,
}

/// Writes `source` anew at `destination`: the same model, every blob of
/// every weight file in its original order (so offsets are kept when the
/// source was laid out as Core ML lays files out), and every other item.
/// Only the manifest identifiers change: they become content-derived.
pub fn rewrite(source: &Package, destination: impl AsRef<Path>) -> Result<RewriteSummary> {
    let destination = destination.as_ref();
    if let Ok(existing) = destination.canonicalize() {
        if existing == source.root() {
            return Err(Error::invalid(
                destination,
                Problem::InvalidDestination {
                    reason: "it is the source package; input packages are never modified"
                        .to_string(),
                },
            ));
        }
    }
    let mut builder = PackageBuilder::new(destination)?;

    // New offsets, and new file names, for every blob of every weight file.
    let mut renumbered: BTreeMap<(String, u64), (String, u64)> = BTreeMap::new();
    let mut targets: BTreeMap<String, String> = BTreeMap::new();
    let mut summary = RewriteSummary {
        destination: destination.to_path_buf(),
        blobs: 0,
        blob_bytes: 0,
    };
    for (name, file) in source.blob_files() {
        let base = file
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("weight.bin")
            .to_string();
        if let Some(other) = targets.insert(base.clone(), name.clone()) {
            return Err(Error::invalid(
                source.spec_path(),
                Problem::InconsistentSpec {
                    detail: format!(
                        "weight files {other:?} and {name:?} have the same file name; \
                         they cannot share one weights directory"
                    ),
                },
            ));
        }
        let reference = PackageBuilder::blob_file_reference(&base);
        let writer = builder.blob_writer(&base)?;
        for record in file.records()? {
            let new_offset = writer
                .append(
                    record.data_type,
                    record.size,
                    record.padding_bits,
                    &mut file.reader(&record),
                )
                .map_err(|e| Error::io(file.path(), "copy blob data", e))?;
            renumbered.insert(
                (name.clone(), record.record_offset),
                (reference.clone(), new_offset),
            );
            summary.blobs += 1;
            summary.blob_bytes += record.size;
        }
    }

    let mut model = source.model().clone();
    if let Some(crate::proto::model::Type::MlProgram(program)) = &mut model.r#type {
        values::for_each_value_mut(program, &mut |_, value| {
            if let Some(value::Value::BlobFileValue(blob)) = &mut value.value {
                let (file_name, offset) = &renumbered[&(blob.file_name.clone(), blob.offset)];
                blob.file_name = file_name.clone();
                blob.offset = *offset;
            }
        });
    }

    // Files of the weights directory that the model does not refer to,
    // but hidden ones: a file manager's or version control's (`.DS_Store`,
    // the `.gitkeep` that keeps a weightless program's empty directory in
    // git), never a weight, and no name a weight file may have.
    if let Some(weights_dir) = source.weights_dir() {
        let referenced: Vec<&Path> = source.blob_files().values().map(|f| f.path()).collect();
        let mut extra = Vec::new();
        for entry in fs::read_dir(weights_dir)
            .map_err(|e| Error::io(weights_dir, "list the weights directory", e))?
        {
            let entry =
                entry.map_err(|e| Error::io(weights_dir, "list the weights directory", e))?;
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
            if !referenced.contains(&canonical.as_path()) {
                extra.push((entry.file_name().to_string_lossy().into_owned(), path));
            }
        }
        extra.sort();
        for (name, path) in extra {
            if targets.contains_key(&name) {
                continue;
            }
            builder.copy_weights_file(&name, &path)?;
        }
    }

    let manifest = source.manifest();
    let weights_id = manifest.weights_item().map(|(id, _)| id.to_string());
    let data_dir = source.root().join(DATA_DIR);
    for (id, item) in &manifest.item_info_entries {
        if *id == manifest.root_model_identifier || Some(id) == weights_id.as_ref() {
            continue;
        }
        let path = data_dir.join(&item.path);
        builder.copy_item(item, &path)?;
    }
    builder.finish(&model)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::blob::BlobDataType;

    #[test]
    fn clone_or_copy_gives_the_same_bytes_and_replaces_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source.bin");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&source, &bytes).unwrap();
        for allow_clone in [true, false] {
            let destination = dir.path().join(format!("copy-{allow_clone}.bin"));
            fs::write(
                &destination,
                b"an older, longer file that must go away entirely",
            )
            .unwrap();
            let cloned = clone_or_copy(&source, &destination, allow_clone).unwrap();
            assert!(allow_clone || !cloned, "a forced copy never clones");
            assert!(fs::read(&destination).unwrap() == bytes, "{allow_clone}");
        }
        assert!(clone_or_copy(&dir.path().join("missing"), &dir.path().join("x"), true).is_err());
    }

    #[test]
    fn an_unfinished_package_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("never.mlpackage");
        let mut builder = PackageBuilder::new(&destination).unwrap();
        builder
            .blob_writer("weight.bin")
            .unwrap()
            .append(BlobDataType::UInt8, 3, 0, &mut &[1u8, 2, 3][..])
            .unwrap();
        drop(builder);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn lock_files_of_live_writers_are_kept_and_abandoned_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("m.mlpackage");
        // Left by writers killed while creating their lock: the clean-up
        // removes them. One still held by a live writer stays.
        let abandoned = dir.path().join(".m.mlpackage.locking-dead01.lock");
        std::fs::write(&abandoned, b"").unwrap();
        let held = dir.path().join(".m.mlpackage.locking-live01.lock");
        let holder = File::create(&held).unwrap();
        holder.lock().unwrap();
        let builder = PackageBuilder::new(&destination).unwrap();
        assert!(!abandoned.exists());
        assert!(held.exists());
        // The new writer's own lock is held under its staging name, and its
        // temporary name is gone.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let own: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with(".m.mlpackage.partial-") && n.ends_with(".lock"))
            .collect();
        assert_eq!(own.len(), 1, "{names:?}");
        assert!(
            File::open(dir.path().join(own[0]))
                .unwrap()
                .try_lock()
                .is_err(),
            "the staging lock is held"
        );
        assert_eq!(
            names.iter().filter(|n| n.contains(".locking-")).count(),
            1,
            "only the live writer's: {names:?}"
        );
        drop(builder);
        drop(holder);
    }

    #[test]
    fn destinations_must_be_mlpackage_directories() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["model.mlmodel", ".mlpackage", "plain"] {
            let error = PackageBuilder::new(dir.path().join(bad)).unwrap_err();
            assert!(
                matches!(error.problem(), Some(Problem::InvalidDestination { .. })),
                "{bad}: {error}"
            );
        }
    }
}
