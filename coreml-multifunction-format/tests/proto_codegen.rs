//! The prost code for `proto/*.proto` is checked in under
//! `src/proto/generated/`, so that neither this crate's users nor its
//! build need `protoc`. This test regenerates it in pure Rust (protox +
//! prost-build) and fails when the checked-in copy is stale.
//!
//! On a mismatch outside CI it rewrites the files, so running the test
//! once more (and committing) is the fix, as with rust-analyzer's
//! `ensure_file_contents`.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn checked_in_protobuf_code_matches_the_proto_files() {
    let root = repo_root();
    let proto_dir = root.join("proto");
    let descriptors = protox::compile(["Model.proto"], [&proto_dir]).expect("proto/ compiles");

    let scratch = tempfile::tempdir().unwrap();
    prost_build::Config::new()
        // Maps encode in key order, so the same model always gives the same bytes.
        .btree_map(["."])
        .out_dir(scratch.path())
        .compile_fds(descriptors)
        .expect("prost-build generates code");

    let generated_dir = root.join("src/proto/generated");
    let mut stale = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(scratch.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "prost-build wrote no files");
    for name in &names {
        let fresh = std::fs::read_to_string(scratch.path().join(name)).unwrap();
        let checked_in_path = generated_dir.join(name);
        let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
        if normalise(&fresh) != normalise(&checked_in) {
            stale.push(checked_in_path.clone());
            if std::env::var_os("CI").is_none() {
                std::fs::create_dir_all(&generated_dir).unwrap();
                std::fs::write(&checked_in_path, &fresh).unwrap();
            }
        }
    }
    // No leftover file from a message package that no longer exists.
    for entry in std::fs::read_dir(&generated_dir).unwrap() {
        let name = entry.unwrap().file_name();
        if !names.contains(&name) {
            stale.push(generated_dir.join(&name));
        }
    }
    assert!(
        stale.is_empty(),
        "the checked-in protobuf code is stale: {}\n\
         Outside CI this test has just rewritten it; rerun the test and commit the result.",
        display(&stale)
    );
}

fn normalise(text: &str) -> String {
    text.replace("\r\n", "\n")
}

fn display(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| {
            path.strip_prefix(repo_root())
                .unwrap_or(Path::new(path))
                .display()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(", ")
}
