//! Fixed-shape functions made from flexible ones by the merge
//! (`MultiFunctionDescriptor::fixed_shape`), on coremltools-made packages.

#[path = "../../tests/common/mod.rs"]
mod common;

use coreml_multifunction_build::merge::MultiFunctionDescriptor;
use coreml_multifunction_build::package::Package;
use coreml_multifunction_build::MergeProblem;

use common::source_path;

#[test]
fn flexible_range_at_a_fixed_length() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fixed.mlpackage");
    let report = MultiFunctionDescriptor::new()
        .add_function(source_path("flexible_range"), "main")
        .add_function(source_path("flexible_range"), "len_5")
        .fixed_shape("len_5", "tokens", [1, 5, 8])
        .default_function("main")
        .merge(&out)
        .unwrap();
    println!("{report:?}");
    let package = Package::open(&out).unwrap();
    for f in package.functions() {
        println!("{}: {:?}", f.name, f.description);
    }
}

#[test]
fn a_shape_out_of_range_names_the_input_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fixed.mlpackage");
    let error = MultiFunctionDescriptor::new()
        .add_function(source_path("flexible_range"), "len_99")
        .fixed_shape("len_99", "tokens", [1, 99, 8])
        .default_function("len_99")
        .merge(&out)
        .unwrap_err();
    println!("{error}");
    assert!(matches!(error.merge_problem(), Some(MergeProblem::ShapeNotAllowed { .. })));
    assert!(!out.exists());
}
