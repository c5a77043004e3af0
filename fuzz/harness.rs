//! What each fuzz target does with its input. Shared by the cargo-fuzz
//! targets (`fuzz/fuzz_targets/*.rs`) and by `tests/fuzz_corpus.rs`, which
//! replays the committed corpora and every past crash on stable Rust in CI.
//!
//! Each function must return normally for every input: an `Err` is a fine
//! outcome for garbage, a panic, an abort or a hang is a bug.

#![allow(dead_code)]

use std::path::Path;

use coreml_multifunction_build::__private::{generate, ModelInterface};
use coreml_multifunction_build::merge::{Chunks, MultiFunctionDescriptor};
use coreml_multifunction_build::package::blob::BlobFile;
use coreml_multifunction_build::package::manifest::Manifest;
use coreml_multifunction_build::package::{spec, Package};
use coreml_multifunction_build::proto::specification::{
    array_feature_type, feature_type, ArrayFeatureType, FeatureType,
};
use coreml_multifunction_build::proto::{FeatureDescription, FunctionDescription};

/// Manifest.json parsing.
pub fn manifest(data: &[u8]) {
    if let Ok(manifest) = Manifest::parse(data) {
        // What parses must print and parse back to the same manifest.
        let again =
            Manifest::parse(manifest.to_json().as_bytes()).expect("a printed manifest parses");
        assert_eq!(again, manifest);
    }
}

/// Strict decoding of model.mlmodel, then shape inference over every
/// function that decodes: at its declared shapes, and with every unknown
/// dimension of its inputs fixed to 2.
pub fn spec(data: &[u8]) {
    use coreml_multifunction_build::__private::{declared_dims, materialize};
    use coreml_multifunction_build::proto::{mil_spec::value_type, model};
    let _ = spec::model_type_name(data);
    let Ok(model) = spec::decode_ml_program(data) else {
        return;
    };
    let Some(model::Type::MlProgram(program)) = &model.r#type else {
        return;
    };
    for function in program.functions.values() {
        let _ = materialize(function, &Default::default());
        let fixed = function
            .inputs
            .iter()
            .filter_map(|input| match input.r#type.as_ref()?.r#type.as_ref()? {
                value_type::Type::TensorType(t) => Some((
                    input.name.clone(),
                    declared_dims(t).iter().map(|d| d.unwrap_or(2)).collect(),
                )),
                _ => None,
            })
            .collect();
        let _ = materialize(function, &fixed);
    }
}

/// Reading a weight file: header, record walk, every record's data.
pub fn weights(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("weight.bin");
    std::fs::write(&path, data).expect("write the input");
    let Ok(file) = BlobFile::open(&path) else {
        return;
    };
    if let Ok(records) = file.records() {
        for record in records {
            // Sizes were checked against the file, so this reads at most
            // what the file holds.
            let bytes = file.read(&record).expect("a validated record reads");
            assert_eq!(bytes.len() as u64, record.size);
        }
    }
    // Arbitrary offsets, as a hostile model would refer to them.
    for chunk in data.chunks_exact(8).take(16) {
        let offset = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let _ = file.record(offset);
    }
}

/// The fixture package a fuzzed file is planted into.
fn fixture(name: &str) -> std::path::PathBuf {
    // Compiled both in the fuzz crate (fuzz/) and in the build crate's
    // tests (coreml-multifunction-build/): both sit at the repository's root.
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repository = manifest_dir
        .parent()
        .expect("the crate is inside the repository");
    repository.join("tests/fixtures/packages").join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read a fixture") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a fixture file");
        }
    }
}

/// A merge of a real adapter with a package one of whose files is the
/// input: the first byte picks the file (manifest, spec or weights).
pub fn merge(data: &[u8]) {
    let Some((&which, content)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let damaged = dir.path().join("damaged.mlpackage");
    copy_dir(&fixture("lora_adapter_2.mlpackage"), &damaged);
    let planted = match which % 3 {
        0 => damaged.join("Manifest.json"),
        1 => damaged.join("Data/com.apple.CoreML/model.mlmodel"),
        _ => damaged.join("Data/com.apple.CoreML/weights/weight.bin"),
    };
    std::fs::write(&planted, content).expect("plant the input");
    let output = dir.path().join("merged.mlpackage");
    let result = MultiFunctionDescriptor::new()
        .add_function(fixture("lora_adapter_1.mlpackage"), "a")
        .add_all_functions(&damaged)
        .default_function("a")
        .merge(&output);
    match result {
        Ok(_) => {
            Package::open(&output).expect("a successful merge writes a valid package");
        }
        Err(_) => assert!(!output.exists(), "a failed merge left output behind"),
    }
    // The damaged function split into chunks: made, or refused, never a
    // panic or a half-written output.
    let split = dir.path().join("split.mlpackage");
    let chunks =
        [Chunks::Count(2), Chunks::Count(3), Chunks::MaxBytes(4096)][usize::from(which / 3) % 3];
    let result = MultiFunctionDescriptor::new()
        .add_function(&damaged, "b")
        .chunks("b", chunks)
        .default_function("b")
        .merge(&split);
    match result {
        Ok(_) => {
            Package::open(&split).expect("a successful split writes a valid package");
        }
        Err(_) => assert!(!split.exists(), "a failed split left output behind"),
    }
}

/// Code generation from descriptions whose names and texts are the input.
pub fn codegen(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{0}').map(str::to_string);
    let mut next = || parts.next().unwrap_or_default();
    let feature = |name: String, description: String| FeatureDescription {
        name,
        short_description: description,
        r#type: Some(FeatureType {
            r#type: Some(feature_type::Type::MultiArrayType(ArrayFeatureType {
                shape: vec![1, 2],
                data_type: array_feature_type::ArrayDataType::Float32 as i32,
                ..Default::default()
            })),
            is_optional: false,
        }),
    };
    let first = next();
    let functions = vec![
        FunctionDescription {
            name: first.clone(),
            input: vec![feature(next(), next()), feature(next(), next())],
            output: vec![feature(next(), next())],
            ..Default::default()
        },
        FunctionDescription {
            name: next(),
            input: vec![feature(next(), next())],
            output: vec![feature(next(), next())],
            ..Default::default()
        },
    ];
    let model = ModelInterface {
        name: "fuzzed".to_string(),
        package_env_var: "COREML_MULTIFUNCTION_MODEL_FUZZED".to_string(),
        functions,
        default_function: first,
        fixed_shapes: Default::default(),
        splits: Default::default(),
    };
    if let Ok(code) = generate(&[model]) {
        // generate() parses its output before returning it; check again here
        // so that a regression in that check is caught too.
        syn::parse_file(&code).expect("generated code parses");
    }
}
