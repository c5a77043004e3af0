//! Compiling a merged package with Xcode's `xcrun coremlcompiler`, on a
//! macOS build host, so that the app loads a compiled model instead of
//! compiling it at first launch. The key and stamp it writes are the
//! runtime's (`coreml_multifunction_format::compiled`), so the runtime can tell
//! whether the compiled model still matches the package.
//!
//! A package compiled moments after the merge wrote it has no stable key
//! yet (its files changed within `compiled::RACY_WINDOW`), so it gets no
//! stamp at first. The compile then records its unstable key and the time
//! it was computed at in `<name>.mlmodelc.pending`, and a later build
//! (the merge skipped, nothing changed) re-derives that key: if it is the
//! same, the package is byte for byte what was compiled, and once its key
//! is stable the stamp is written ([`update`]). Without the record, or
//! when the package changed, the later build compiles again.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, SystemTime};

use coreml_multifunction_format::compiled::{
    package_files, package_key_of, precompiled_path, read_stamp, remove_abandoned_staging,
    replace_dir, staging_beside, stamp_path, write_stamp, CacheKey, PackageKey,
};

/// Compiles the package at `package` with Xcode's
/// `xcrun coremlcompiler compile <package> <dir>`, for a **build script on
/// a macOS host**, into `out_dir/<name>.mlmodelc`, and records the
/// package's key (`coreml_multifunction_format::compiled::PackageKey`) in
/// the stamp `out_dir/<name>.mlmodelc.key`. Returns the compiled model's
/// path.
///
/// Give the package's own directory as `out_dir` (the build puts the merged
/// package in `$OUT_DIR`, so `$OUT_DIR`) and the Core ML backend loads the
/// result instead of compiling at run time, as long as the stamp matches
/// the package; ship `<name>.mlmodelc` in an app bundle the same way.
///
/// The compiler writes into a staging directory in `out_dir`, and the
/// result replaces any previous `<name>.mlmodelc` by renames; the stamp is
/// removed first and written last, so a stamp always describes the model
/// beside it. The package's files are listed (size, inode, times) before
/// and after compiling, and a package that changed meanwhile is an error
/// rather than a wrong stamp. A package written within the key's racy
/// window (`compiled::RACY_WINDOW`, seconds) before the compile finished
/// gets no stamp, since its key would not be reproducible yet: it gets the
/// record `out_dir/<name>.mlmodelc.pending` instead, from which a later
/// build writes the stamp (see the module doc; until then the runtime
/// compiles it into its cache on first load). The stamp identifies the
/// package files where they are; a copy of the package (as `copy-to`
/// makes) does not match it, and ships with its compiled model to be
/// loaded by path instead.
///
/// Fails (with [`io::ErrorKind::NotFound`] from spawning) where `xcrun` is
/// missing, as on every non-macOS host, and with the compiler's message
/// when it rejects the package.
pub fn compile_with_xcrun(package: &Path, out_dir: &Path) -> io::Result<PathBuf> {
    // The compiler names its output after the package, as
    // `precompiled_path` names the compiled model beside it.
    let Some(compiled_name) =
        precompiled_path(package).and_then(|p| p.file_name().map(ToOwned::to_owned))
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a package path", package.display()),
        ));
    };
    if !package.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{}: no such package directory", package.display()),
        ));
    }
    fs::create_dir_all(out_dir)?;
    // Staging directories of builds killed mid-compile.
    remove_abandoned_staging(out_dir, Duration::from_secs(60), SystemTime::now());
    let before = package_files(package)?;
    let staging = staging_beside(&out_dir.join(&compiled_name))?;
    let output = Command::new("xcrun")
        .arg("coremlcompiler")
        .arg("compile")
        .arg(package)
        .arg(staging.path())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("could not run `xcrun coremlcompiler` (Xcode, macOS only): {e}"),
            )
        })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "`xcrun coremlcompiler compile {} {}` failed ({}): {}",
            package.display(),
            staging.path().display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let produced = staging.path().join(&compiled_name);
    if !produced.is_dir() {
        return Err(io::Error::other(format!(
            "`xcrun coremlcompiler` reported success but did not write {}",
            produced.display()
        )));
    }
    let after = package_files(package)?;
    if after != before {
        return Err(io::Error::other(format!(
            "{} changed while it was being compiled; build again",
            package.display()
        )));
    }
    let keyed_at = SystemTime::now();
    let key = package_key_of(package, &after, keyed_at)?;
    let destination = out_dir.join(&compiled_name);
    remove_if_present(&stamp_path(&destination))?;
    remove_if_present(&pending_path(&destination))?;
    replace_dir(&produced, &destination)?;
    if key.stable {
        write_stamp(&destination, &key.key)?;
    } else {
        write_pending(
            &destination,
            &Pending {
                key: key.key,
                keyed_at,
            },
        )?;
    }
    Ok(destination)
}

/// What a build did about the compiled model of a package ([`update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Updated {
    /// Compiled it (again).
    Compiled,
    /// Wrote the missing stamp of the model an earlier build compiled.
    Stamped,
    /// Nothing to do: its stamp matches the package.
    UpToDate,
    /// Its stamp is still missing: the package changed too recently for
    /// its key to be stable. A build after [`RACY_WINDOW`] writes it.
    ///
    /// [`RACY_WINDOW`]: coreml_multifunction_format::compiled::RACY_WINDOW
    StampPending,
}

/// What to do about an existing compiled model, decided by [`next_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Compile,
    Stamp(CacheKey),
    Nothing,
    Wait,
}

/// What a later build finds beside an unchanged merge's package: the
/// compiled model's stamp, whether the package still has the key its
/// pending record holds (`None`: no record), and its key now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Found {
    stamp: Option<CacheKey>,
    pending_matches: Option<bool>,
    current: PackageKey,
}

/// The decision, pure. A stamp names the package it was made from, so a
/// model whose stamp is the key now is current, and one with another
/// stamp is stale. Without a stamp, only a pending record whose key the
/// package still has vouches for the model (the bytes the racy files had
/// when it was compiled, the identities of the rest): it is stamped once
/// the key is stable, and until then left alone. Anything else (no
/// record: a compile interrupted before writing it; a package changed
/// since) compiles again.
fn next_step(found: &Found) -> Step {
    match (found.stamp, found.pending_matches) {
        (Some(stamp), _) if found.current.stable && stamp == found.current.key => Step::Nothing,
        (Some(_), _) => Step::Compile,
        (None, Some(true)) if found.current.stable => Step::Stamp(found.current.key),
        (None, Some(true)) => Step::Wait,
        (None, Some(false) | None) => Step::Compile,
    }
}

/// Brings the compiled model of `package` in `out_dir` up to date, for a
/// build whose merge wrote the package (`merged`) or found it up to date:
/// compiles it with [`compile_with_xcrun`] when it was merged, has no
/// compiled model, or its compiled model is stale or unaccounted for, and
/// otherwise writes the stamp an earlier compile could not
/// (see the module doc).
pub(crate) fn update(package: &Path, out_dir: &Path, merged: bool) -> io::Result<Updated> {
    update_at(package, out_dir, merged, SystemTime::now())
}

/// [`update`] with the time keys are computed at given: the tests' clock.
fn update_at(package: &Path, out_dir: &Path, merged: bool, now: SystemTime) -> io::Result<Updated> {
    match plan(package, out_dir, merged, now)? {
        Step::Compile => compile_with_xcrun(package, out_dir).map(|_| Updated::Compiled),
        Step::Stamp(key) => {
            let compiled = compiled_in(package, out_dir)?;
            write_stamp(&compiled, &key)?;
            remove_if_present(&pending_path(&compiled))?;
            Ok(Updated::Stamped)
        }
        Step::Nothing => Ok(Updated::UpToDate),
        Step::Wait => Ok(Updated::StampPending),
    }
}

/// [`next_step`] on what the file system holds at `now`. Keys are
/// computed only for an existing compiled model of an unchanged merge:
/// a package just merged would have every file hashed.
fn plan(package: &Path, out_dir: &Path, merged: bool, now: SystemTime) -> io::Result<Step> {
    let compiled = compiled_in(package, out_dir)?;
    if merged || !compiled.is_dir() {
        return Ok(Step::Compile);
    }
    let files = package_files(package)?;
    let pending_matches = match read_pending(&compiled) {
        Some(pending) => {
            Some(package_key_of(package, &files, pending.keyed_at)?.key == pending.key)
        }
        None => None,
    };
    Ok(next_step(&Found {
        stamp: read_stamp(&compiled),
        pending_matches,
        current: package_key_of(package, &files, now)?,
    }))
}

/// `out_dir/<name>.mlmodelc` for the package `<dir>/<name>.mlpackage`.
fn compiled_in(package: &Path, out_dir: &Path) -> io::Result<PathBuf> {
    precompiled_path(package)
        .and_then(|p| p.file_name().map(|name| out_dir.join(name)))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a package path", package.display()),
            )
        })
}

/// The unstable key a compile computed, and the time it computed it at:
/// [`package_key_of`] at that same time hashes the same files (those that
/// were racy then), so it gives the same key exactly when those files
/// still hold the same bytes and the others the same identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    key: CacheKey,
    keyed_at: SystemTime,
}

/// `<compiled>.pending` beside `<compiled>`, as the stamp is `<compiled>.key`.
fn pending_path(compiled: &Path) -> PathBuf {
    let mut path = compiled.as_os_str().to_os_string();
    path.push(".pending");
    PathBuf::from(path)
}

/// Writes the pending record: the key's hexadecimal digits, then the
/// seconds and nanoseconds since the epoch, one line each; atomically.
fn write_pending(compiled: &Path, pending: &Pending) -> io::Result<()> {
    let path = pending_path(compiled);
    let since_epoch = pending
        .keyed_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(io::Error::other)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".pending-")
        .tempfile_in(dir)?;
    writeln!(file, "{}", pending.key)?;
    writeln!(
        file,
        "{} {}",
        since_epoch.as_secs(),
        since_epoch.subsec_nanos()
    )?;
    file.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// The pending record beside `compiled`, if there is a well-formed one.
fn read_pending(compiled: &Path) -> Option<Pending> {
    let text = fs::read_to_string(pending_path(compiled)).ok()?;
    let mut lines = text.lines();
    let key = CacheKey::from_hex(lines.next()?)?;
    let mut time = lines.next()?.split(' ');
    let seconds: u64 = time.next()?.parse().ok()?;
    let nanos: u32 = time.next()?.parse().ok()?;
    if nanos >= 1_000_000_000 || time.next().is_some() || lines.next().is_some() {
        return None;
    }
    let keyed_at = SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))?;
    Some(Pending { key, keyed_at })
}

/// Removes the file at `path`; one that is not there is no error.
fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coreml_multifunction_format::compiled::{key_from_entries, precompiled_for, FileEntry};

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    /// A package as far as keys go (xcrun never sees it), just written, and
    /// a compiled model beside it, as a compile leaves them.
    fn package_and_compiled(dir: &Path) -> (PathBuf, PathBuf) {
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
        let compiled = dir.join("model.mlmodelc");
        write(&compiled.join("model.mil"), b"compiled");
        (package, compiled)
    }

    /// What `compile_with_xcrun` records for a package keyed at `at`.
    fn record_pending(package: &Path, compiled: &Path, at: SystemTime) -> PackageKey {
        let key = package_key_of(package, &package_files(package).unwrap(), at).unwrap();
        write_pending(
            compiled,
            &Pending {
                key: key.key,
                keyed_at: at,
            },
        )
        .unwrap();
        key
    }

    #[test]
    fn the_decision_stamps_only_a_vouched_for_compile_once_its_key_is_stable() {
        let [a, b] = [
            key_from_entries(&[]),
            key_from_entries(&[("x".to_string(), 1, FileEntry::Content([1; 32]))]),
        ];
        let stable = PackageKey {
            key: a,
            stable: true,
        };
        let racy = PackageKey {
            key: a,
            stable: false,
        };
        let step = |stamp, pending_matches, current| {
            next_step(&Found {
                stamp,
                pending_matches,
                current,
            })
        };
        // A stamp of the package as it is: nothing to do.
        assert_eq!(step(Some(a), None, stable), Step::Nothing);
        // A stamp of another package (a recompile that failed left the
        // old model), or the package touched since: compile again.
        assert_eq!(step(Some(b), None, stable), Step::Compile);
        assert_eq!(step(Some(a), None, racy), Step::Compile);
        // No stamp, and the record still matches: stamp once stable,
        // wait until then.
        assert_eq!(step(None, Some(true), stable), Step::Stamp(a));
        assert_eq!(step(None, Some(true), racy), Step::Wait);
        // No stamp and the package changed since, or no record at all
        // (a compile interrupted before writing it): compile again.
        assert_eq!(step(None, Some(false), stable), Step::Compile);
        assert_eq!(step(None, None, stable), Step::Compile);
        assert_eq!(step(None, None, racy), Step::Compile);
    }

    #[cfg(unix)]
    #[test]
    fn a_later_build_writes_the_stamp_a_compile_right_after_the_merge_could_not() {
        let dir = tempfile::tempdir().unwrap();
        let (package, compiled) = package_and_compiled(dir.path());
        // Compiled at once: the key is unstable, so only the record.
        let compiled_at = SystemTime::now();
        let unstable = record_pending(&package, &compiled, compiled_at);
        assert!(!unstable.stable);

        // A build within the window: still waiting, nothing written.
        assert_eq!(
            update_at(&package, dir.path(), false, compiled_at).unwrap(),
            Updated::StampPending
        );
        assert_eq!(read_stamp(&compiled), None);

        // A build an hour later (every file's times old by then): the
        // stamp is the package's stable key, which the runtime looks up.
        let later = SystemTime::now() + Duration::from_secs(3600);
        let key = package_key_of(&package, &package_files(&package).unwrap(), later).unwrap();
        assert!(key.stable);
        assert_eq!(
            update_at(&package, dir.path(), false, later).unwrap(),
            Updated::Stamped
        );
        assert_eq!(precompiled_for(&package, &key.key), Some(compiled.clone()));
        assert!(!pending_path(&compiled).exists(), "the record is spent");
        // And the build after that has nothing to do.
        assert_eq!(
            update_at(&package, dir.path(), false, later).unwrap(),
            Updated::UpToDate
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_compile_the_package_no_longer_matches_is_compiled_again() {
        let later = SystemTime::now() + Duration::from_secs(3600);
        // The weights rewritten after the compile, same length.
        let dir = tempfile::tempdir().unwrap();
        let (package, compiled) = package_and_compiled(dir.path());
        record_pending(&package, &compiled, SystemTime::now());
        fs::write(
            package.join("Data/com.apple.CoreML/weights/weight.bin"),
            [8u8; 300],
        )
        .unwrap();
        assert_eq!(
            plan(&package, dir.path(), false, later).unwrap(),
            Step::Compile
        );

        // No record (killed between installing the model and writing it),
        // a merge in this build, no compiled model, a stale stamp.
        let dir = tempfile::tempdir().unwrap();
        let (package, compiled) = package_and_compiled(dir.path());
        assert_eq!(
            plan(&package, dir.path(), false, later).unwrap(),
            Step::Compile
        );
        record_pending(&package, &compiled, SystemTime::now());
        assert_eq!(
            plan(&package, dir.path(), true, later).unwrap(),
            Step::Compile
        );
        write_stamp(&compiled, &key_from_entries(&[])).unwrap();
        assert_eq!(
            plan(&package, dir.path(), false, later).unwrap(),
            Step::Compile
        );
        fs::remove_dir_all(&compiled).unwrap();
        assert_eq!(
            plan(&package, dir.path(), false, later).unwrap(),
            Step::Compile
        );
    }

    #[test]
    fn pending_records_read_back_and_malformed_ones_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let compiled = dir.path().join("model.mlmodelc");
        let pending = Pending {
            key: key_from_entries(&[]),
            keyed_at: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        };
        write_pending(&compiled, &pending).unwrap();
        assert_eq!(read_pending(&compiled), Some(pending));
        let hex = pending.key.to_hex();
        for text in [
            String::new(),
            format!("{hex}\n"),
            format!("{hex}\n1 2 3\n"),
            format!("{hex}\n1 1000000000\n"),
            format!("{hex}\nx 2\n"),
            "abc\n1 2\n".to_string(),
            format!("{hex}\n1 2\nmore\n"),
        ] {
            fs::write(pending_path(&compiled), &text).unwrap();
            assert_eq!(read_pending(&compiled), None, "{text:?}");
        }
    }

    #[test]
    fn xcrun_failures_are_errors_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Not a model Core ML's compiler accepts: a manifest and nothing else.
        let package = dir.path().join("model.mlpackage");
        fs::create_dir_all(&package).unwrap();
        fs::write(package.join("Manifest.json"), b"{}").unwrap();
        let out = dir.path().join("out");
        // No xcrun on this host, or (on a Mac) a package the compiler
        // rejects: an error either way.
        assert!(compile_with_xcrun(&package, &out).is_err());
        assert_eq!(fs::read_dir(&out).unwrap().count(), 0);
        assert!(compile_with_xcrun(&dir.path().join("missing.mlpackage"), &out).is_err());
        assert!(compile_with_xcrun(Path::new(""), &out).is_err());
    }
}
