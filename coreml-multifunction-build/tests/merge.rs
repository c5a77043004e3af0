//! The merge, held against coremltools' own `save_multifunction` output on
//! every committed scenario, plus determinism, atomicity and every
//! validation.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use coreml_multifunction_build::compare::{compare, CompareOptions};
use coreml_multifunction_build::merge::{MergeReport, MultiFunctionDescriptor};
use coreml_multifunction_build::package::Package;
use coreml_multifunction_build::proto::Metadata;
use coreml_multifunction_build::{Error, MergeProblem, Problem};

/// What coremltools' output is compared on. Its merge drops metadata and
/// program attributes (ours keeps them), and renames state ops it re-splits.
fn against_coremltools() -> CompareOptions {
    CompareOptions {
        metadata: false,
        program_attributes: false,
        op_names: false,
        ..CompareOptions::default()
    }
}

use common::{scenarios, source_path, Scenario};

fn descriptor(scenario: &Scenario) -> MultiFunctionDescriptor {
    let mut descriptor = MultiFunctionDescriptor::new();
    for (source, function, target) in &scenario.functions {
        descriptor.add_function_from(source_path(source), function, target);
    }
    descriptor.default_function(&scenario.default);
    descriptor
}

fn merge_error(descriptor: &MultiFunctionDescriptor, destination: &Path) -> Error {
    match descriptor.merge(destination) {
        Ok(_) => panic!("the merge succeeded but should have failed"),
        Err(error) => {
            assert!(
                !destination.exists(),
                "a failed merge left {}",
                destination.display()
            );
            error
        }
    }
}

/// Nothing but `expected` in `dir`: no staging or replaced directories.
fn assert_only(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, expected, "in {}", dir.display());
}

#[test]
fn every_scenario_equals_coremltools_with_no_more_blobs_or_bytes() {
    let scenarios = scenarios();
    assert!(scenarios.len() >= 10);
    for scenario in &scenarios {
        let scratch = tempfile::tempdir().unwrap();
        let ours_path = scratch.path().join(format!("{}.mlpackage", scenario.name));
        let report = descriptor(scenario)
            .merge(&ours_path)
            .unwrap_or_else(|e| panic!("{}: {e}", scenario.name));
        let ours = Package::open(&ours_path).unwrap();
        let theirs = Package::open(common::merged_package(&scenario.name)).unwrap();

        let comparison = compare(&ours, &theirs, against_coremltools()).unwrap();
        assert!(
            comparison.is_equal(),
            "{} differs from coremltools:\n{}",
            scenario.name,
            comparison.differences.join("\n")
        );
        let (mine, coremltools) = (comparison.left_weights, comparison.right_weights);
        assert!(
            mine.blobs <= coremltools.blobs,
            "{}: {mine:?} vs {coremltools:?}",
            scenario.name
        );
        assert!(
            mine.bytes <= coremltools.bytes,
            "{}: {mine:?} vs {coremltools:?}",
            scenario.name
        );
        let weight_file = |root: &Path| {
            std::fs::metadata(root.join("Data/com.apple.CoreML/weights/weight.bin"))
                .unwrap()
                .len()
        };
        assert!(
            weight_file(ours.root()) <= weight_file(theirs.root()),
            "{}",
            scenario.name
        );
        assert_eq!(report.unique_blobs as u64, mine.blobs);
        assert_eq!(report.blob_bytes, mine.bytes);
    }
}

#[test]
fn the_same_merge_twice_gives_identical_bytes() {
    for name in ["lora_pair", "stateful", "compressed"] {
        let scenario = scenarios().into_iter().find(|s| s.name == name).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let first = scratch.path().join("first.mlpackage");
        let second = scratch.path().join("second.mlpackage");
        descriptor(&scenario).merge(&first).unwrap();
        descriptor(&scenario).merge(&second).unwrap();
        assert!(
            common::tree_bytes(&first) == common::tree_bytes(&second),
            "{name}"
        );
        // Merging again over the first one gives the same bytes as well.
        descriptor(&scenario).merge(&first).unwrap();
        assert!(
            common::tree_bytes(&first) == common::tree_bytes(&second),
            "{name}"
        );
    }
}

#[test]
fn cloned_or_written_the_bytes_are_the_same() {
    // Where this file system clones (APFS, XFS, btrfs) the first merge
    // clones part of a source's weight file; the second writes every byte.
    // Elsewhere both write, through the two code paths.
    for scenario in scenarios() {
        let scratch = tempfile::tempdir().unwrap();
        let cloned = scratch.path().join("cloned.mlpackage");
        let written = scratch.path().join("written.mlpackage");
        let report = descriptor(&scenario).merge(&cloned).unwrap();
        let written_report = descriptor(&scenario)
            .cloning(false)
            .merge(&written)
            .unwrap();
        assert!(
            common::tree_bytes(&cloned) == common::tree_bytes(&written),
            "{}",
            scenario.name
        );
        assert_eq!(written_report.cloned_bytes, 0, "{}", scenario.name);
        assert!(report.cloned_bytes <= report.merged_bytes);
        assert_eq!(
            written_report.written_bytes(),
            written_report.merged_bytes,
            "{}",
            scenario.name
        );
    }
}

#[test]
fn the_merged_weights_start_with_a_source_weight_file() {
    // Each LoRA adapter's weight file holds the shared base first and, last,
    // a second copy of a small constant; the merged file keeps the first
    // adapter's file up to that copy, byte for byte after the header, so
    // that part can be a clone of it.
    let weights = |package: &Path| {
        std::fs::read(package.join("Data/com.apple.CoreML/weights/weight.bin")).unwrap()
    };
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "lora_pair")
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let merged = scratch.path().join("merged.mlpackage");
    descriptor(&scenario).merge(&merged).unwrap();
    let merged_weights = weights(&merged);
    let source = weights(&source_path(&scenario.functions[0].0));
    let records = Package::open(source_path(&scenario.functions[0].0))
        .unwrap()
        .blob_files()
        .values()
        .next()
        .unwrap()
        .records()
        .unwrap();
    let kept_end = records[records.len() - 2].data_end() as usize;
    assert!(kept_end > source.len() / 2, "most of the file is kept");
    assert_eq!(merged_weights[64..kept_end], source[64..kept_end]);
    // The header counts every blob of the merged file.
    let merged_package = Package::open(&merged).unwrap();
    let stats = merged_package.weight_stats().unwrap();
    assert_eq!(
        u64::from(u32::from_le_bytes(merged_weights[0..4].try_into().unwrap())),
        stats.blobs
    );
}

#[test]
fn the_merged_model_has_the_shape_coremltools_gives_it() {
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "legacy_targets")
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("legacy.mlpackage");
    let report = descriptor(&scenario).merge(&path).unwrap();
    assert_eq!(report.specification_version, 9);
    assert_eq!(report.opset, "CoreML8");
    let merged = Package::open(&path).unwrap();
    let names: Vec<&str> = merged.functions().iter().map(|f| f.name).collect();
    assert_eq!(names, ["ios17", "ios15", "ios17_int8"]);
    assert!(merged.functions().iter().all(|f| f.opset() == "CoreML8"));
    assert_eq!(merged.default_function(), "ios17");
    let description = merged.description();
    assert!(description.input.is_empty() && description.output.is_empty());
    // The single-function source's interface moved into its function.
    let ios15 = merged.function("ios15").unwrap();
    assert_eq!(ios15.description.input[0].name, "x");
    let source = Package::open(common::source_package("target_ios15")).unwrap();
    assert_eq!(ios15.description.input, source.description().input);
}

#[test]
fn metadata_and_program_attributes_are_kept() {
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "multi_io")
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("kept.mlpackage");
    descriptor(&scenario).merge(&path).unwrap();
    let merged = Package::open(&path).unwrap();
    let source = Package::open(common::source_package("multi_io")).unwrap();
    let metadata = merged
        .description()
        .metadata
        .as_ref()
        .expect("metadata kept");
    assert_eq!(Some(metadata), source.description().metadata.as_ref());
    assert_eq!(metadata.author, "coreml-multifunction fixtures");
    assert!(source.program().attributes.contains_key("buildInfo"));
    assert_eq!(merged.program().attributes, source.program().attributes);
    // coremltools drops both.
    let theirs = Package::open(common::merged_package("multi_io")).unwrap();
    assert!(theirs.description().metadata.is_none());
    assert!(theirs.program().attributes.is_empty());

    // A caller's metadata replaces the source's.
    let custom = Metadata {
        author: "me".to_string(),
        version_string: "2.0".to_string(),
        ..Default::default()
    };
    descriptor(&scenario)
        .metadata(custom.clone())
        .merge(&path)
        .unwrap();
    assert_eq!(
        Package::open(&path).unwrap().description().metadata,
        Some(custom)
    );
}

#[test]
fn every_function_of_a_multifunction_source_can_be_added_at_once() {
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("all.mlpackage");
    MultiFunctionDescriptor::new()
        .add_all_functions(common::merged_package("lora_pair"))
        .add_function(common::source_package("lora_adapter_3"), "adapter_3")
        .default_function("adapter_3")
        .merge(&path)
        .unwrap();
    let ours = Package::open(&path).unwrap();
    let theirs = Package::open(common::merged_package("remerge")).unwrap();
    let comparison = compare(&ours, &theirs, against_coremltools()).unwrap();
    assert!(comparison.is_equal(), "{:?}", comparison.differences);
}

#[test]
fn weights_that_differ_in_one_bit_are_not_shared() {
    // Flip the lowest bit of one element in the middle of adapter 2's copy
    // of the shared base weight: a bit-exact merge must store it apart.
    let scratch = common::Scratch::of(&common::source_package("lora_adapter_2"));
    let package = Package::open(&scratch.package).unwrap();
    let largest = package
        .blob_references()
        .unwrap()
        .into_iter()
        .max_by_key(|r| r.record.size)
        .unwrap()
        .record;
    drop(package);
    let mut bytes = std::fs::read(scratch.weights()).unwrap();
    bytes[(largest.data_offset + largest.size / 2) as usize] ^= 1;
    std::fs::write(scratch.weights(), bytes).unwrap();

    let merge = |second: &Path| -> MergeReport {
        let out = tempfile::tempdir().unwrap();
        MultiFunctionDescriptor::new()
            .add_function(common::source_package("lora_adapter_1"), "a")
            .add_function(second, "b")
            .default_function("a")
            .merge(out.path().join("m.mlpackage"))
            .unwrap()
    };
    let intact = merge(&common::source_package("lora_adapter_2"));
    let flipped = merge(&scratch.package);
    assert_eq!(flipped.unique_blobs, intact.unique_blobs + 1);
    assert_eq!(flipped.blob_bytes, intact.blob_bytes + largest.size);
}

#[test]
fn a_missing_package_is_named() {
    let scratch = tempfile::tempdir().unwrap();
    let destination = scratch.path().join("out.mlpackage");
    let error = merge_error(
        MultiFunctionDescriptor::new()
            .add_function(scratch.path().join("nowhere.mlpackage"), "a")
            .default_function("a"),
        &destination,
    );
    assert_eq!(error.problem(), Some(&Problem::NotFound));
    assert!(error.to_string().contains("nowhere.mlpackage"), "{error}");
}

#[test]
fn an_unknown_source_function_lists_the_ones_that_exist() {
    let scratch = tempfile::tempdir().unwrap();
    let error = merge_error(
        MultiFunctionDescriptor::new()
            .add_function_from(common::merged_package("lora_pair"), "adapter_7", "x")
            .default_function("x"),
        &scratch.path().join("out.mlpackage"),
    );
    assert!(matches!(
        error.merge_problem(),
        Some(MergeProblem::UnknownSourceFunction { .. })
    ));
    let message = error.to_string();
    assert!(
        message.contains("\"adapter_7\"") && message.contains("\"adapter_1\", \"adapter_2\""),
        "{message}"
    );
}

#[test]
fn duplicate_targets_name_both_sources() {
    let scratch = tempfile::tempdir().unwrap();
    let error = merge_error(
        MultiFunctionDescriptor::new()
            .add_function(common::source_package("lora_adapter_1"), "same")
            .add_function(common::source_package("lora_adapter_2"), "same")
            .default_function("same"),
        &scratch.path().join("out.mlpackage"),
    );
    assert!(
        matches!(error.merge_problem(), Some(MergeProblem::DuplicateTarget { target, .. }) if target == "same")
    );
    let message = error.to_string();
    assert!(
        message.contains("lora_adapter_1") && message.contains("lora_adapter_2"),
        "{message}"
    );
}

#[test]
fn the_default_must_be_set_and_be_a_target() {
    let scratch = tempfile::tempdir().unwrap();
    let destination = scratch.path().join("out.mlpackage");
    let mut descriptor = MultiFunctionDescriptor::new();
    descriptor.add_function(common::source_package("lora_adapter_1"), "a");
    let error = merge_error(&descriptor, &destination);
    assert_eq!(
        error.merge_problem(),
        Some(&MergeProblem::MissingDefault {
            targets: vec!["a".into()]
        })
    );
    descriptor.default_function("b");
    let error = merge_error(&descriptor, &destination);
    assert!(
        matches!(error.merge_problem(), Some(MergeProblem::UnknownDefault { default, .. }) if default == "b")
    );
}

#[test]
fn target_names_must_be_mil_identifiers() {
    let scratch = tempfile::tempdir().unwrap();
    for bad in ["2fast", "with space", "dash-ed", ""] {
        let error = merge_error(
            MultiFunctionDescriptor::new()
                .add_function(common::source_package("lora_adapter_1"), bad)
                .default_function(bad),
            &scratch.path().join("out.mlpackage"),
        );
        assert!(
            matches!(
                error.merge_problem(),
                Some(MergeProblem::InvalidTargetName { .. })
            ),
            "{bad}: {error}"
        );
    }
}

#[test]
fn a_source_that_is_not_an_ml_program_is_refused_by_type() {
    let scratch = tempfile::tempdir().unwrap();
    let error = merge_error(
        MultiFunctionDescriptor::new()
            .add_function(
                common::fixtures().join("negative/neural_network.mlmodel"),
                "nn",
            )
            .default_function("nn"),
        &scratch.path().join("out.mlpackage"),
    );
    assert!(
        matches!(error.problem(), Some(Problem::BareModelFile { model_type }) if model_type == "neuralNetwork")
    );
}

#[test]
fn an_opset_that_cannot_be_raised_names_the_op() {
    let scratch = tempfile::tempdir().unwrap();
    let error = merge_error(
        MultiFunctionDescriptor::new()
            .add_function(common::source_package("target_ios17_palettized"), "p")
            .default_function("p"),
        &scratch.path().join("out.mlpackage"),
    );
    match error.merge_problem() {
        Some(MergeProblem::OpsetCannotBeRaised {
            from, to, reason, ..
        }) => {
            assert_eq!((from.as_str(), to.as_str()), ("CoreML7", "CoreML8"));
            assert!(reason.contains("constexpr_lut_to_dense"), "{reason}");
        }
        other => panic!("unexpected {other:?}: {error}"),
    }
}

#[test]
fn a_damaged_source_is_refused_and_leaves_no_output() {
    let damaged = common::Scratch::of(&common::source_package("lora_adapter_2"));
    let len = std::fs::metadata(damaged.weights()).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(damaged.weights())
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let error = merge_error(
        MultiFunctionDescriptor::new()
            .add_function(common::source_package("lora_adapter_1"), "a")
            .add_function(&damaged.package, "b")
            .default_function("a"),
        &out.path().join("out.mlpackage"),
    );
    assert!(
        matches!(error.problem(), Some(Problem::BlobOutOfBounds { .. })),
        "{error}"
    );
    assert_only(out.path(), &[]);
}

#[test]
fn a_failed_merge_leaves_an_existing_output_untouched() {
    let out = tempfile::tempdir().unwrap();
    let destination = out.path().join("out.mlpackage");
    MultiFunctionDescriptor::new()
        .add_function(common::source_package("lora_adapter_1"), "a")
        .default_function("a")
        .merge(&destination)
        .unwrap();
    let before = common::tree_bytes(&destination);
    let result = MultiFunctionDescriptor::new()
        .add_function(common::source_package("lora_adapter_1"), "a")
        .add_function_from(common::source_package("lora_adapter_2"), "nope", "b")
        .default_function("a")
        .merge(&destination);
    assert!(result.is_err());
    assert_eq!(common::tree_bytes(&destination), before);
    assert_only(out.path(), &["out.mlpackage"]);
}

#[test]
fn the_destination_may_not_be_a_source() {
    let scratch = common::Scratch::of(&common::source_package("lora_adapter_1"));
    let before = common::tree_bytes(&scratch.package);
    let error = MultiFunctionDescriptor::new()
        .add_function(&scratch.package, "a")
        .default_function("a")
        .merge(&scratch.package)
        .unwrap_err();
    assert!(
        matches!(
            error.merge_problem(),
            Some(MergeProblem::DestinationIsSource { .. })
        ),
        "{error}"
    );
    assert_eq!(common::tree_bytes(&scratch.package), before);
}

#[test]
fn sources_are_never_modified() {
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "remerge")
        .unwrap();
    let before: Vec<_> = scenario
        .functions
        .iter()
        .map(|(p, _, _)| common::tree_bytes(&source_path(p)))
        .collect();
    let out = tempfile::tempdir().unwrap();
    descriptor(&scenario)
        .merge(out.path().join("m.mlpackage"))
        .unwrap();
    let after: Vec<_> = scenario
        .functions
        .iter()
        .map(|(p, _, _)| common::tree_bytes(&source_path(p)))
        .collect();
    assert!(before == after);
}

#[test]
fn shared_weights_are_stored_once() {
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == "same_source_twice")
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("twice.mlpackage");
    let report = descriptor(&scenario).merge(&path).unwrap();
    let source = Package::open(common::source_package("lora_adapter_1")).unwrap();
    // The same source twice stores no more than the source alone.
    assert!(report.blob_bytes <= source.weight_stats().unwrap().bytes);
    assert_eq!(
        report.shared_bytes + report.blob_bytes,
        2 * source.weight_stats().unwrap().bytes
    );
}

#[test]
fn constants_nothing_reads_are_not_compared() {
    use coreml_multifunction_build::proto::mil_spec::{argument::binding::Binding, Operation};
    use coreml_multifunction_build::proto::{model, Model};
    use prost::Message;
    // coremltools' re-emitted programs carry unread constants (two before
    // each control-flow op). A copy of the first constant, added under
    // another name, compares equal while nothing reads it; once the op that
    // read the original reads the copy instead, the copy is compared (and
    // differs by name) and so is that op's input.
    let original = common::source_package("lora_adapter_1");
    let with_copy = |read: bool| {
        let scratch = common::Scratch::of(&original);
        let mut spec = Model::decode(&*std::fs::read(scratch.spec()).unwrap()).unwrap();
        let Some(model::Type::MlProgram(program)) = &mut spec.r#type else {
            unreachable!("the fixture is an ML Program")
        };
        let function = program.functions.get_mut("main").unwrap();
        let opset = function.opset.clone();
        let ops: &mut Vec<Operation> = &mut function
            .block_specializations
            .get_mut(&opset)
            .unwrap()
            .operations;
        let constant = ops.iter().find(|op| op.r#type == "const").unwrap();
        let name = constant.outputs[0].name.clone();
        let mut copy = constant.clone();
        copy.outputs[0].name = "copy".to_string();
        copy.attributes.remove("name");
        ops.insert(0, copy);
        if read {
            for binding in ops
                .iter_mut()
                .flat_map(|op| op.inputs.values_mut())
                .flat_map(|argument| argument.arguments.iter_mut())
            {
                if binding.binding == Some(Binding::Name(name.clone())) {
                    binding.binding = Some(Binding::Name("copy".to_string()));
                }
            }
        }
        std::fs::write(scratch.spec(), spec.encode_to_vec()).unwrap();
        scratch
    };
    let base = Package::open(&original).unwrap();
    let unread = with_copy(false);
    let comparison = compare(
        &base,
        &Package::open(&unread.package).unwrap(),
        CompareOptions::default(),
    )
    .unwrap();
    assert!(comparison.is_equal(), "{:?}", comparison.differences);
    let read = with_copy(true);
    let comparison = compare(
        &base,
        &Package::open(&read.package).unwrap(),
        CompareOptions::default(),
    )
    .unwrap();
    let differences = comparison.differences.join("\n");
    assert!(
        differences.contains("(const): outputs differ") && differences.contains("differs"),
        "{differences}"
    );
    assert!(
        comparison
            .differences
            .iter()
            .any(|d| d.contains("input") && d.contains("differs")),
        "{differences}"
    );
}
