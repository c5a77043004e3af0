//! Damaged or unsupported input: each case gets its own clear error that
//! names the file at fault, never a panic and never a wrong answer.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use common::Scratch;
use coreml_multifunction_format::package::Package;
use coreml_multifunction_format::proto::mil_spec::value;
use coreml_multifunction_format::proto::{model, Model};
use coreml_multifunction_format::{Error, Problem};
use prost::Message;

fn open_error(path: &Path) -> Error {
    match Package::open(path) {
        Ok(_) => panic!("{} opened, but it is damaged", path.display()),
        Err(error) => error,
    }
}

fn problem(error: &Error) -> &Problem {
    error
        .problem()
        .unwrap_or_else(|| panic!("expected a content problem, got: {error}"))
}

/// A scratch copy of an fp16 adapter (several blobs) to damage.
fn adapter() -> Scratch {
    Scratch::of(&common::source_package("lora_adapter_1"))
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let mut content = std::fs::read(path).unwrap();
    content[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, content).unwrap();
}

fn edit_spec(scratch: &Scratch, edit: impl FnOnce(&mut Model)) {
    let mut model = Model::decode(&*std::fs::read(scratch.spec()).unwrap()).unwrap();
    edit(&mut model);
    std::fs::write(scratch.spec(), model.encode_to_vec()).unwrap();
}

/// Applies `edit` to the first blob reference of the program.
fn edit_first_blob_reference(scratch: &Scratch, edit: impl Fn(&mut value::BlobFileValue)) {
    edit_spec(scratch, |model| {
        let Some(model::Type::MlProgram(program)) = &mut model.r#type else {
            unreachable!()
        };
        let mut done = false;
        coreml_multifunction_format::package::values::for_each_value_mut(
            program,
            &mut |_, value| {
                if let Some(value::Value::BlobFileValue(blob)) = &mut value.value {
                    if !done {
                        edit(blob);
                        done = true;
                    }
                }
            },
        );
        assert!(done, "the fixture has a blob reference");
    });
}

#[test]
fn a_weight_file_shorter_than_its_header_is_truncated() {
    let scratch = adapter();
    let content = std::fs::read(scratch.weights()).unwrap();
    std::fs::write(scratch.weights(), &content[..40]).unwrap();
    let error = open_error(&scratch.package);
    assert_eq!(problem(&error), &Problem::TruncatedBlobFile { len: 40 });
    assert!(error.path().unwrap().ends_with("weights/weight.bin"));
}

#[test]
fn a_weight_file_cut_inside_a_blob_is_out_of_bounds() {
    let scratch = adapter();
    let content = std::fs::read(scratch.weights()).unwrap();
    std::fs::write(scratch.weights(), &content[..content.len() - 10]).unwrap();
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::BlobOutOfBounds { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("truncated"), "{error}");
}

#[test]
fn a_bad_sentinel_is_reported_with_its_offset() {
    let scratch = adapter();
    patch(&scratch.weights(), 64, &[0, 0, 0, 0]);
    let error = open_error(&scratch.package);
    assert_eq!(
        problem(&error),
        &Problem::BadSentinel {
            offset: 64,
            found: 0
        }
    );
    assert!(error.path().unwrap().ends_with("weight.bin"));
}

#[test]
fn a_wrong_storage_version_is_refused() {
    let scratch = adapter();
    patch(&scratch.weights(), 4, &1u32.to_le_bytes());
    let error = open_error(&scratch.package);
    assert_eq!(
        problem(&error),
        &Problem::UnsupportedStorageVersion { version: 1 }
    );
}

#[test]
fn a_data_offset_past_the_end_of_the_file_is_refused() {
    let scratch = adapter();
    let len = std::fs::metadata(scratch.weights()).unwrap().len();
    patch(&scratch.weights(), 64 + 16, &(len + 64).to_le_bytes());
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::BlobOutOfBounds { offset: 64, data_offset, .. } if *data_offset == len + 64),
        "{error}"
    );
}

#[test]
fn a_size_of_two_to_the_62_is_refused_without_allocating_it() {
    let scratch = adapter();
    patch(&scratch.weights(), 64 + 8, &(1u64 << 62).to_le_bytes());
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::BlobOutOfBounds { size, .. } if *size == 1 << 62),
        "{error}"
    );
}

#[test]
fn a_blob_reference_past_the_end_of_the_file_is_refused() {
    let scratch = adapter();
    edit_first_blob_reference(&scratch, |blob| blob.offset = 1 << 40);
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::BlobOutOfBounds { offset, .. } if *offset == 1 << 40),
        "{error}"
    );
}

#[test]
fn a_blob_reference_into_the_middle_of_data_is_refused() {
    let scratch = adapter();
    // 128 is the first blob's data, not a record.
    edit_first_blob_reference(&scratch, |blob| blob.offset = 128);
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::BadSentinel { offset: 128, .. }),
        "{error}"
    );
}

#[test]
fn a_stored_dtype_that_differs_from_the_declared_one_is_refused() {
    let scratch = adapter();
    // fp16 (code 1) becomes uint16 (code 7): same size, other type.
    patch(&scratch.weights(), 64 + 4, &7u32.to_le_bytes());
    let error = open_error(&scratch.package);
    match problem(&error) {
        Problem::BlobTypeMismatch {
            declared,
            stored,
            offset,
            ..
        } => {
            assert_eq!(
                (declared.as_str(), stored.as_str(), *offset),
                ("fp16", "uint16", 64)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.to_string().contains("declares fp16"), "{error}");
}

#[test]
fn an_unknown_dtype_code_is_refused() {
    let scratch = adapter();
    patch(&scratch.weights(), 64 + 4, &99u32.to_le_bytes());
    let error = open_error(&scratch.package);
    assert_eq!(
        problem(&error),
        &Problem::UnknownBlobDataType {
            offset: 64,
            code: 99
        }
    );
}

#[test]
fn a_header_count_that_disagrees_with_the_records_is_refused() {
    let scratch = adapter();
    let declared = u32::from_le_bytes(
        std::fs::read(scratch.weights()).unwrap()[0..4]
            .try_into()
            .unwrap(),
    );
    patch(&scratch.weights(), 0, &(declared - 1).to_le_bytes());
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::BlobCountMismatch { .. }),
        "{error}"
    );
}

#[test]
fn a_blob_size_that_does_not_fit_the_declared_shape_is_refused() {
    let scratch = adapter();
    // Shrink the first blob by 2 bytes: still in bounds, wrong for its shape.
    let content = std::fs::read(scratch.weights()).unwrap();
    let size = u64::from_le_bytes(content[72..80].try_into().unwrap());
    patch(&scratch.weights(), 72, &(size - 2).to_le_bytes());
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::BlobSizeMismatch { stored, .. } if *stored == size - 2),
        "{error}"
    );
}

#[test]
fn a_blob_file_name_leaving_the_package_is_refused() {
    let scratch = adapter();
    std::fs::write(scratch.dir.path().join("outside.bin"), vec![0u8; 128]).unwrap();
    edit_first_blob_reference(&scratch, |blob| {
        blob.file_name = "@model_path/../../../../outside.bin".to_string()
    });
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::PathEscapesPackage { .. }),
        "{error}"
    );
    assert!(error.path().unwrap().ends_with("model.mlmodel"));
}

#[test]
fn a_blob_file_name_without_the_model_path_prefix_is_refused() {
    let scratch = adapter();
    edit_first_blob_reference(&scratch, |blob| {
        blob.file_name = "weights/weight.bin".to_string()
    });
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::BadBlobFileName { .. }),
        "{error}"
    );
}

#[test]
fn a_manifest_path_leaving_the_package_is_refused() {
    for bad in [
        "../../../etc/passwd",
        "/etc/passwd",
        "com.apple.CoreML/../../../x",
    ] {
        let scratch = adapter();
        let manifest = std::fs::read_to_string(scratch.manifest()).unwrap();
        let edited = manifest.replace("com.apple.CoreML/model.mlmodel", bad);
        std::fs::write(scratch.manifest(), edited).unwrap();
        let error = open_error(&scratch.package);
        assert!(
            matches!(problem(&error), Problem::PathEscapesPackage { .. }),
            "{bad}: {error}"
        );
        assert!(error.path().unwrap().ends_with("Manifest.json"));
    }
}

#[cfg(unix)]
#[test]
fn a_symlink_leaving_the_package_is_refused() {
    let scratch = adapter();
    let outside = scratch.dir.path().join("elsewhere.mlmodel");
    std::fs::rename(scratch.spec(), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, scratch.spec()).unwrap();
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::PathEscapesPackage { .. }),
        "{error}"
    );
}

#[test]
fn a_missing_manifest_or_item_is_named() {
    let scratch = adapter();
    std::fs::remove_file(scratch.spec()).unwrap();
    let error = open_error(&scratch.package);
    assert_eq!(
        problem(&error),
        &Problem::MissingItem {
            item_path: "com.apple.CoreML/model.mlmodel".to_string()
        }
    );

    let scratch = adapter();
    std::fs::remove_file(scratch.manifest()).unwrap();
    let error = open_error(&scratch.package);
    assert_eq!(
        problem(&error),
        &Problem::MissingItem {
            item_path: "Manifest.json".to_string()
        }
    );

    let error = open_error(&scratch.dir.path().join("no-such.mlpackage"));
    assert_eq!(problem(&error), &Problem::NotFound);
}

#[test]
fn malformed_json_is_refused() {
    let scratch = adapter();
    std::fs::write(scratch.manifest(), b"{\"fileFormatVersion\": \"1.0.0\", ").unwrap();
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::MalformedManifest { .. }),
        "{error}"
    );
    assert!(error.path().unwrap().ends_with("Manifest.json"));
}

#[test]
fn garbage_protobuf_is_refused() {
    let scratch = adapter();
    std::fs::write(scratch.spec(), b"\xff\xfe this is not a model \x00\x01").unwrap();
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::MalformedSpec { .. }),
        "{error}"
    );
    assert!(error.path().unwrap().ends_with("model.mlmodel"));
}

#[test]
fn a_field_the_decoder_would_drop_is_refused() {
    let scratch = adapter();
    let mut spec = std::fs::read(scratch.spec()).unwrap();
    // Field 7777 (unknown to Core ML and to us), varint 1.
    spec.extend_from_slice(&[0x88, 0xe7, 0x03, 0x01]);
    std::fs::write(scratch.spec(), spec).unwrap();
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::UnknownFields { .. }),
        "{error}"
    );
}

#[test]
fn a_neural_network_is_named_as_such() {
    let bare = common::fixtures().join("negative/neural_network.mlmodel");
    let error = open_error(&bare);
    assert_eq!(
        problem(&error),
        &Problem::BareModelFile {
            model_type: "neuralNetwork".to_string()
        }
    );

    // The same model inside a package.
    let scratch = adapter();
    std::fs::copy(&bare, scratch.spec()).unwrap();
    let error = open_error(&scratch.package);
    assert_eq!(
        problem(&error),
        &Problem::NotMlProgram {
            model_type: "neuralNetwork".to_string()
        }
    );
    assert!(error.to_string().contains("not an ML Program"), "{error}");
}

#[test]
fn an_unknown_default_function_is_refused() {
    let scratch = Scratch::of(&common::merged_package("lora_pair"));
    edit_spec(&scratch, |model| {
        model.description.as_mut().unwrap().default_function_name = "adapter_9".to_string();
    });
    let error = open_error(&scratch.package);
    assert!(
        matches!(problem(&error), Problem::InconsistentSpec { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("\"adapter_1\", \"adapter_2\""),
        "{error}"
    );
}

#[test]
fn inputs_are_never_modified_by_opening() {
    let scratch = adapter();
    let before = common::tree_bytes(&scratch.package);
    Package::open(&scratch.package)
        .unwrap()
        .blob_references()
        .unwrap();
    assert_eq!(common::tree_bytes(&scratch.package), before);
}
