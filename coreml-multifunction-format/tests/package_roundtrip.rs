//! Every committed fixture survives read → write → read unchanged.

#[path = "../../tests/common/mod.rs"]
mod common;

use coreml_multifunction_format::package::manifest::Manifest;
use coreml_multifunction_format::package::{rewrite, Package};

#[test]
fn every_fixture_round_trips_with_equal_spec_and_blobs() {
    for source_path in common::all_packages() {
        let source = Package::open(&source_path)
            .unwrap_or_else(|e| panic!("{}: {e}", source_path.display()));
        let scratch = tempfile::tempdir().unwrap();
        let written_path = scratch.path().join("copy.mlpackage");
        let summary = rewrite(&source, &written_path).unwrap();
        let written = Package::open(&written_path)
            .unwrap_or_else(|e| panic!("rewritten {}: {e}", source_path.display()));

        assert_eq!(written.model(), source.model(), "{}", source_path.display());
        // Hidden files (the `.gitkeep` of a weightless fixture's weights
        // directory) are not weights and are not copied.
        if let Some(weights) = written.weights_dir() {
            for entry in std::fs::read_dir(weights).unwrap() {
                let name = entry.unwrap().file_name();
                assert!(
                    !name.to_string_lossy().starts_with('.'),
                    "{}: {name:?} copied",
                    source_path.display()
                );
            }
        }

        let before = source.blob_references().unwrap();
        let after = written.blob_references().unwrap();
        assert_eq!(before.len(), after.len());
        for (old, new) in before.iter().zip(&after) {
            assert_eq!(old.site, new.site);
            assert_eq!(old.record.data_type, new.record.data_type);
            assert_eq!(old.record.padding_bits, new.record.padding_bits);
            let old_bytes = source
                .blob_file(&old.file_name)
                .unwrap()
                .read(&old.record)
                .unwrap();
            let new_bytes = written
                .blob_file(&new.file_name)
                .unwrap()
                .read(&new.record)
                .unwrap();
            assert_eq!(
                old_bytes,
                new_bytes,
                "{} at {}",
                source_path.display(),
                old.site
            );
        }
        let stored: u64 = source
            .blob_files()
            .values()
            .map(|f| f.records().unwrap().len() as u64)
            .sum();
        assert_eq!(summary.blobs, stored);
    }
}

#[test]
fn rewritten_weight_files_are_byte_identical_to_coremltools_ones() {
    // Our writer lays blobs out exactly as Core ML's does (records at
    // 64-byte boundaries, zeroed gaps and reserved fields), so copying a
    // coremltools weight file record by record reproduces it exactly.
    for source_path in common::all_packages() {
        let source = Package::open(&source_path).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let written_path = scratch.path().join("copy.mlpackage");
        rewrite(&source, &written_path).unwrap();
        // A program without weights (the MIL-builder fixtures) has no
        // weight file, and its copy none either.
        let weights = |package: &std::path::Path| {
            std::fs::read(package.join("Data/com.apple.CoreML/weights/weight.bin")).ok()
        };
        let (original, copied) = (weights(&source_path), weights(&written_path));
        assert!(
            original == copied,
            "{}: weight.bin differs",
            source_path.display()
        );
    }
}

#[test]
fn writing_the_same_model_twice_gives_identical_bytes() {
    let source = Package::open(common::merged_package("compressed")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let first = scratch.path().join("first.mlpackage");
    let second = scratch.path().join("second.mlpackage");
    rewrite(&source, &first).unwrap();
    rewrite(&source, &second).unwrap();
    let first_files = common::tree_bytes(&first);
    assert_eq!(first_files, common::tree_bytes(&second));
    // The manifest lists the model and its weights, under derived ids.
    let manifest = Manifest::parse(&std::fs::read(first.join("Manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.item_info_entries.len(), 2);
    assert_eq!(manifest.root_item().path, "com.apple.CoreML/model.mlmodel");
    assert!(manifest.root_model_identifier.chars().all(|c| c != ' '));
    assert_eq!(manifest.root_model_identifier.len(), 36);
}

#[test]
fn rewriting_over_an_existing_package_replaces_it_whole() {
    let scratch = tempfile::tempdir().unwrap();
    let destination = scratch.path().join("out.mlpackage");
    rewrite(
        &Package::open(common::source_package("lora_adapter_1")).unwrap(),
        &destination,
    )
    .unwrap();
    std::fs::write(destination.join("stray-file"), b"from before").unwrap();
    rewrite(
        &Package::open(common::source_package("stateful_decode")).unwrap(),
        &destination,
    )
    .unwrap();
    assert!(!destination.join("stray-file").exists());
    let reopened = Package::open(&destination).unwrap();
    assert_eq!(reopened.functions()[0].description.state.len(), 1);
    // Nothing is left beside it: no staging or replaced directories.
    let leftovers: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("out.mlpackage")]);
}

#[test]
fn rewriting_a_package_onto_itself_is_refused_and_changes_nothing() {
    let scratch = common::Scratch::of(&common::source_package("lora_adapter_2"));
    let before = common::tree_bytes(&scratch.package);
    let package = Package::open(&scratch.package).unwrap();
    let error = rewrite(&package, &scratch.package).unwrap_err();
    assert!(error.to_string().contains("never modified"), "{error}");
    assert_eq!(common::tree_bytes(&scratch.package), before);
}

#[test]
fn coremltools_manifests_reprint_byte_for_byte() {
    for package in common::all_packages() {
        let original = std::fs::read_to_string(package.join("Manifest.json")).unwrap();
        let parsed = Manifest::parse(original.as_bytes()).unwrap();
        assert_eq!(parsed.to_json(), original, "{}", package.display());
    }
}

#[test]
fn extra_items_and_unreferenced_weight_files_are_kept() {
    let scratch = common::Scratch::of(&common::source_package("multi_io"));
    // An extra item, as some tools add, and a stray file in weights/.
    std::fs::create_dir_all(scratch.package.join("Data/com.example/notes")).unwrap();
    std::fs::write(
        scratch.package.join("Data/com.example/notes/readme.txt"),
        b"hello",
    )
    .unwrap();
    std::fs::write(
        scratch
            .package
            .join("Data/com.apple.CoreML/weights/extra.bin"),
        b"keep me",
    )
    .unwrap();
    let mut manifest = Manifest::parse(&std::fs::read(scratch.manifest()).unwrap()).unwrap();
    manifest.item_info_entries.insert(
        "EXTRA".to_string(),
        coreml_multifunction_format::package::manifest::ManifestItem {
            author: "com.example".to_string(),
            description: "Notes".to_string(),
            name: "notes".to_string(),
            path: "com.example/notes".to_string(),
        },
    );
    std::fs::write(scratch.manifest(), manifest.to_json()).unwrap();

    let destination = scratch.dir.path().join("out.mlpackage");
    rewrite(&Package::open(&scratch.package).unwrap(), &destination).unwrap();
    assert_eq!(
        std::fs::read(destination.join("Data/com.example/notes/readme.txt")).unwrap(),
        b"hello"
    );
    assert_eq!(
        std::fs::read(destination.join("Data/com.apple.CoreML/weights/extra.bin")).unwrap(),
        b"keep me"
    );
    let written =
        Manifest::parse(&std::fs::read(destination.join("Manifest.json")).unwrap()).unwrap();
    assert!(written
        .item_info_entries
        .values()
        .any(|item| item.path == "com.example/notes"));
    Package::open(&destination).unwrap();
}
