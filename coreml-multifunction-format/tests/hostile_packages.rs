//! Hostile packages beyond plain damage: nesting and sizes meant to exhaust
//! memory or the stack, and records that overlap. Each gets an error, and
//! nothing allocates on a declared length alone.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::Scratch;
use coreml_multifunction_format::package::Package;
use coreml_multifunction_format::proto::mil_spec::{
    value_type, Function, ListType, NamedValueType, Program, ValueType,
};
use coreml_multifunction_format::proto::{model, Model, ModelDescription};
use coreml_multifunction_format::Problem;
use prost::Message;

fn problem_of(path: &std::path::Path) -> Problem {
    match Package::open(path) {
        Ok(_) => panic!("{} opened, but it is hostile", path.display()),
        Err(error) => error
            .problem()
            .cloned()
            .unwrap_or_else(|| panic!("not a content problem: {error}")),
    }
}

#[test]
fn deeply_nested_messages_hit_the_recursion_limit_not_the_stack() {
    // A list of lists of lists ... 1000 deep, in a function input's type.
    let mut nested = ValueType::default();
    for _ in 0..1000 {
        nested = ValueType {
            r#type: Some(value_type::Type::ListType(Box::new(ListType {
                r#type: Some(Box::new(nested)),
                length: None,
            }))),
        };
    }
    let model = Model {
        specification_version: 9,
        description: Some(ModelDescription::default()),
        is_updatable: false,
        r#type: Some(model::Type::MlProgram(Program {
            version: 1,
            functions: [(
                "main".to_string(),
                Function {
                    inputs: vec![NamedValueType {
                        name: "x".to_string(),
                        r#type: Some(nested),
                    }],
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        })),
    };
    let scratch = Scratch::of(&common::source_package("lora_adapter_1"));
    std::fs::write(scratch.spec(), model.encode_to_vec()).unwrap();
    match problem_of(&scratch.package) {
        Problem::MalformedSpec { detail } => assert!(detail.contains("recursion"), "{detail}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_length_prefix_of_two_to_the_60_is_refused_without_allocating() {
    let scratch = Scratch::of(&common::source_package("lora_adapter_1"));
    // Field 502 (mlProgram) claiming 2^60 bytes, followed by almost nothing.
    let mut bytes = vec![0xb2, 0x1f];
    let mut length = 1u64 << 60;
    while length >= 0x80 {
        bytes.push((length as u8) | 0x80);
        length >>= 7;
    }
    bytes.push(length as u8);
    bytes.extend_from_slice(b"tiny");
    std::fs::write(scratch.spec(), bytes).unwrap();
    assert!(matches!(
        problem_of(&scratch.package),
        Problem::MalformedSpec { .. }
    ));
}

#[test]
fn a_huge_spec_file_is_refused_before_it_is_read() {
    let scratch = Scratch::of(&common::source_package("lora_adapter_1"));
    // A sparse file: large on paper, nothing on disk.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(scratch.spec())
        .unwrap();
    file.set_len((1 << 30) + 1).unwrap();
    assert!(matches!(
        problem_of(&scratch.package),
        Problem::TooLarge { .. }
    ));
}

#[test]
fn a_huge_manifest_is_refused_before_it_is_read() {
    let scratch = Scratch::of(&common::source_package("lora_adapter_1"));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(scratch.manifest())
        .unwrap();
    file.set_len(1 << 40).unwrap();
    assert!(matches!(
        problem_of(&scratch.package),
        Problem::TooLarge { .. }
    ));
}

#[test]
fn a_blob_overlapping_the_next_record_is_refused() {
    let scratch = Scratch::of(&common::source_package("lora_adapter_1"));
    // Grow the first blob by 64 bytes: it now covers the start of the next
    // record, and the walk no longer finds that record where it is.
    let mut bytes = std::fs::read(scratch.weights()).unwrap();
    let size = u64::from_le_bytes(bytes[72..80].try_into().unwrap());
    bytes[72..80].copy_from_slice(&(size + 64).to_le_bytes());
    std::fs::write(scratch.weights(), bytes).unwrap();
    let problem = problem_of(&scratch.package);
    assert!(
        matches!(
            problem,
            Problem::BadSentinel { .. }
                | Problem::BlobCountMismatch { .. }
                | Problem::BlobSizeMismatch { .. }
        ),
        "{problem:?}"
    );
}
