//! Compiling a merged package with Xcode's `xcrun coremlcompiler`, on a
//! macOS build host, so that the app loads a compiled model instead of
//! compiling it at first launch. The key and stamp it writes are the
//! runtime's (`coreml_multifunction_format::compiled`), so the runtime can tell
//! whether the compiled model still matches the package.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, SystemTime};

use coreml_multifunction_format::compiled::{
    package_files, package_key_of, precompiled_path, remove_abandoned_staging, replace_dir,
    staging_beside, stamp_path, write_stamp,
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
/// gets no stamp, since its key would not be reproducible: the runtime
/// then compiles it into its cache on first load. The stamp identifies the
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
    let key = package_key_of(package, &after, SystemTime::now())?;
    let destination = out_dir.join(&compiled_name);
    match fs::remove_file(stamp_path(&destination)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    replace_dir(&produced, &destination)?;
    if key.stable {
        write_stamp(&destination, &key.key)?;
    }
    Ok(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

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
