//! Where the generated API finds a model it loads without being given a
//! path (`load`, `load_with`, `load_async`).
//!
//! On Apple targets it looks, in order, in the main bundle's resources
//! (`[[NSBundle mainBundle] resourceURL]`: an app's `Contents/Resources` on
//! macOS, the `.app` directory on iOS, the executable's directory for a
//! command-line tool) for `<model>.mlmodelc`, then `<model>.mlpackage`,
//! where `<model>` is the build's package's file stem (what `copy-to`
//! names its copies), and then at the package the build made (`OUT_DIR`,
//! a path on the build machine, which exists only there). Elsewhere there
//! is no bundle: only the build's package is looked at. The compiled model
//! is skipped for the reference backend, which runs packages only.

use std::path::{Path, PathBuf};

use coreml_multifunction_format::compiled::COMPILED_EXTENSION;

use super::error::{Error, Result};

/// The places to look for the model whose build-time package is
/// `build_package`, in order: `<model>.mlmodelc` (when `compiled_too`) and
/// `<model>.mlpackage` in `bundle_resources` (when there is a bundle), then
/// `build_package`.
pub(crate) fn lookup_order(
    build_package: &Path,
    bundle_resources: Option<&Path>,
    compiled_too: bool,
) -> Vec<PathBuf> {
    let mut places = Vec::new();
    if let (Some(resources), Some(model)) = (bundle_resources, build_package.file_stem()) {
        let named = |extension: &str| {
            let mut name = model.to_os_string();
            name.push(".");
            name.push(extension);
            resources.join(name)
        };
        if compiled_too {
            places.push(named(COMPILED_EXTENSION));
        }
        places.push(named("mlpackage"));
    }
    places.push(build_package.to_path_buf());
    places
}

/// The first of [`lookup_order`]'s places that `is_present`, or
/// [`Error::ModelNotFound`] listing every one.
pub(crate) fn first_present(
    build_package: &Path,
    bundle_resources: Option<&Path>,
    compiled_too: bool,
    is_present: impl Fn(&Path) -> bool,
) -> Result<PathBuf> {
    let places = lookup_order(build_package, bundle_resources, compiled_too);
    if let Some(found) = places.iter().find(|place| is_present(place)) {
        return Ok(found.clone());
    }
    Err(Error::ModelNotFound {
        model: build_package
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default(),
        looked: places,
    })
}

/// The main bundle's resource directory (Apple targets).
#[cfg(target_vendor = "apple")]
pub(crate) fn main_bundle_resources() -> Option<PathBuf> {
    objc2::rc::autoreleasepool(|_| {
        let bundle = objc2_foundation::NSBundle::mainBundle();
        bundle.resourceURL()?.to_file_path()
    })
}

/// No bundle off Apple targets.
#[cfg(not(target_vendor = "apple"))]
pub(crate) fn main_bundle_resources() -> Option<PathBuf> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_comes_first_then_the_build_package() {
        let build = Path::new("/build/out/llm.mlpackage");
        let bundle = Path::new("/Apps/Chat.app");
        assert_eq!(
            lookup_order(build, Some(bundle), true),
            [
                PathBuf::from("/Apps/Chat.app/llm.mlmodelc"),
                PathBuf::from("/Apps/Chat.app/llm.mlpackage"),
                PathBuf::from("/build/out/llm.mlpackage"),
            ]
        );
        // The reference backend runs packages only.
        assert_eq!(
            lookup_order(build, Some(bundle), false),
            [
                PathBuf::from("/Apps/Chat.app/llm.mlpackage"),
                PathBuf::from("/build/out/llm.mlpackage"),
            ]
        );
        // No bundle (off Apple targets): the build's package alone.
        assert_eq!(lookup_order(build, None, true), [build.to_path_buf()]);
    }

    #[test]
    fn the_first_present_wins_and_a_miss_lists_every_place() {
        let build = Path::new("/build/out/llm.mlpackage");
        let bundle = Some(Path::new("/Apps/Chat.app"));
        let present = |found: &'static [&'static str]| {
            move |path: &Path| found.iter().any(|f| Path::new(f) == path)
        };
        let both = present(&[
            "/Apps/Chat.app/llm.mlpackage",
            "/Apps/Chat.app/llm.mlmodelc",
        ]);
        assert_eq!(
            first_present(build, bundle, true, both).unwrap(),
            Path::new("/Apps/Chat.app/llm.mlmodelc")
        );
        let built_only = present(&["/build/out/llm.mlpackage"]);
        assert_eq!(
            first_present(build, bundle, true, built_only).unwrap(),
            build
        );
        let error = first_present(build, bundle, true, present(&[])).unwrap_err();
        let Error::ModelNotFound { model, looked } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(model, "llm");
        assert_eq!(looked.len(), 3);
        let text = error.to_string();
        for place in looked {
            assert!(text.contains(&place.display().to_string()), "{text}");
        }
        // Off Apple targets, this is what the generated load() sees.
        assert_eq!(
            main_bundle_resources().is_some(),
            cfg!(target_vendor = "apple")
        );
    }
}
