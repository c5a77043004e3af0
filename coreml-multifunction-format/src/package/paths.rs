//! Keeping every path a package names inside the package.
//!
//! Paths come from `Manifest.json` and from blob references in the model,
//! so a hostile package could name `../../.ssh/id_rsa` or a symlink leading
//! out. Both are refused: the path must be relative, made of plain
//! components, and must still lie inside the package once symlinks are
//! resolved.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Problem, Result};

/// Whether a package-relative path could lead outside the directory it is
/// resolved against: empty, absolute, with `..`, or with characters that
/// mean something else on another platform.
pub(crate) fn has_unsafe_component(relative: &str) -> bool {
    relative.is_empty()
        || relative.contains(['\\', '\0'])
        || Path::new(relative)
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Resolves `relative` (as written in the package, `/`-separated) against
/// `base`, a directory inside the package whose canonical root is `root`.
///
/// `reported_in` is the file that holds the path, named in errors. The
/// result exists and lies inside `root`.
pub(crate) fn resolve_inside(
    root: &Path,
    base: &Path,
    relative: &str,
    reported_in: &Path,
) -> Result<PathBuf> {
    let escapes = || {
        Error::invalid(
            reported_in,
            Problem::PathEscapesPackage {
                item_path: relative.to_string(),
            },
        )
    };
    if has_unsafe_component(relative) {
        return Err(escapes());
    }
    let joined = base.join(relative);
    let canonical = match joined.canonicalize() {
        Ok(path) => path,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A dangling symlink also lands here; either way there is nothing
            // inside the package to read.
            return Err(Error::invalid(
                reported_in,
                Problem::MissingItem {
                    item_path: relative.to_string(),
                },
            ));
        }
        Err(e) => return Err(Error::io(&joined, "resolve a path inside the package", e)),
    };
    if !canonical.starts_with(root) {
        return Err(escapes());
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("p.mlpackage");
        std::fs::create_dir_all(root.join("Data/a")).unwrap();
        std::fs::write(root.join("Data/a/file"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        let root = root.canonicalize().unwrap();
        (dir, root)
    }

    fn problem(result: Result<PathBuf>) -> Problem {
        result
            .unwrap_err()
            .problem()
            .cloned()
            .expect("a content problem")
    }

    #[test]
    fn plain_relative_paths_resolve() {
        let (_dir, root) = package();
        let data = root.join("Data");
        let found = resolve_inside(&root, &data, "a/./file", Path::new("M")).unwrap();
        assert_eq!(found, data.join("a/file"));
    }

    #[test]
    fn parent_and_absolute_paths_are_refused() {
        let (_dir, root) = package();
        let data = root.join("Data");
        for bad in ["../secret", "a/../../secret", "/etc/passwd", "", "a\\..\\x"] {
            assert!(
                matches!(
                    problem(resolve_inside(&root, &data, bad, Path::new("M"))),
                    Problem::PathEscapesPackage { .. }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_paths_are_reported_as_missing() {
        let (_dir, root) = package();
        let data = root.join("Data");
        assert!(matches!(
            problem(resolve_inside(&root, &data, "a/nothing", Path::new("M"))),
            Problem::MissingItem { .. }
        ));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_leading_out_are_refused() {
        let (dir, root) = package();
        let data = root.join("Data");
        std::os::unix::fs::symlink(dir.path().join("secret"), data.join("link")).unwrap();
        assert!(matches!(
            problem(resolve_inside(&root, &data, "link", Path::new("M"))),
            Problem::PathEscapesPackage { .. }
        ));
        // A symlink that stays inside is fine.
        std::os::unix::fs::symlink(data.join("a/file"), data.join("inner")).unwrap();
        assert!(resolve_inside(&root, &data, "inner", Path::new("M")).is_ok());
    }
}
