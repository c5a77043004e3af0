//! The subcommand over a real two-member workspace.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A workspace with members `adapters` (a LoRA pair) and `llm` (the
/// stateful pair), neither with dependencies.
fn workspace() -> tempfile::TempDir {
    workspace_of(&[
        (
            "adapters",
            &["lora_adapter_1", "lora_adapter_2"],
            "[package.metadata.multifunction.models.combined]\ndefault-function = \"adapter_1\"\n\
             functions.adapter_1 = \"models/lora_adapter_1.mlpackage\"\n\
             functions.adapter_2 = \"models/lora_adapter_2.mlpackage\"\n",
        ),
        (
            "llm",
            &["stateful_prefill", "stateful_decode"],
            "[package.metadata.multifunction.models.llm]\ndefault-function = \"decode\"\n\
             functions.prefill = \"models/stateful_prefill.mlpackage\"\n\
             functions.decode = \"models/stateful_decode.mlpackage\"\n",
        ),
    ])
}

/// A workspace of the given members: (name, fixture packages copied into
/// its `models/`, its multifunction configuration).
fn workspace_of(members: &[(&str, &[&str], &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let names: Vec<String> = members.iter().map(|(n, _, _)| format!("{n:?}")).collect();
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            "[workspace]\nmembers = [{}]\nresolver = \"2\"\n",
            names.join(", ")
        ),
    )
    .unwrap();
    for (name, packages, config) in members {
        let member = root.join(name);
        std::fs::create_dir_all(member.join("src")).unwrap();
        std::fs::write(member.join("src/lib.rs"), "").unwrap();
        std::fs::write(
            member.join("Cargo.toml"),
            format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n{config}"
            ),
        )
        .unwrap();
        for package in *packages {
            copy_dir(
                &fixtures()
                    .join("packages")
                    .join(format!("{package}.mlpackage")),
                &member.join("models").join(format!("{package}.mlpackage")),
            );
        }
    }
    dir
}

fn subcommand(root: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cargo-coreml-multifunction"))
        .arg("coreml-multifunction")
        .args(args)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .env(
            "CARGO",
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
        )
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn check_validates_every_member_without_writing() {
    let dir = workspace();
    let (ok, stdout, stderr) = subcommand(dir.path(), &["check"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("adapters 0.1.0"), "{stdout}");
    assert!(
        stdout.contains("combined: ok, 2 functions (adapter_1, adapter_2), default adapter_1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("llm: ok, 2 functions (prefill, decode), default decode"),
        "{stdout}"
    );
    assert!(
        !dir.path()
            .join("target")
            .join("coreml-multifunction")
            .exists(),
        "check wrote output"
    );
}

#[test]
fn check_reports_a_broken_member_with_its_line_and_still_checks_the_others() {
    let dir = workspace();
    let manifest = dir.path().join("llm/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "default-function = \"decode\"",
        "default-function = \"generate\"",
    );
    std::fs::write(&manifest, text).unwrap();
    let (ok, stdout, stderr) = subcommand(dir.path(), &["check"]);
    assert!(!ok);
    assert!(stderr.contains("error: llm: "), "{stderr}");
    assert!(
        stderr.contains(
            "llm/Cargo.toml:7:20: `package.metadata.multifunction.models.llm.default-function`"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("combined: ok"), "{stdout}");
}

#[test]
fn build_merges_every_member_then_finds_them_up_to_date() {
    let dir = workspace();
    let out = dir.path().join("merged");
    let out_arg = out.to_str().unwrap();
    let (ok, stdout, stderr) = subcommand(dir.path(), &["build", "--out-dir", out_arg]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("combined: merged 2 functions"), "{stdout}");
    let package = out.join("llm/llm.mlpackage");
    let merged = coreml_multifunction_build::package::Package::open(&package).unwrap();
    assert_eq!(merged.default_function(), "decode");
    let (ok, stdout, _) = subcommand(dir.path(), &["build", "--out-dir", out_arg]);
    assert!(ok);
    assert!(stdout.contains("llm: up to date"), "{stdout}");
}

const FIXED: &str = "[package.metadata.multifunction.models.encoder]\n\
                     default-function = \"seq_8\"\n\
                     functions.seq_8 = { package = \"models/flexible_range.mlpackage\", shapes = { tokens = [1, 8, 8] } }\n\
                     functions.flexible = \"models/flexible_range.mlpackage\"\n";

#[test]
fn fixed_shapes_are_listed_checked_and_merged() {
    let dir = workspace_of(&[("encoder", &["flexible_range"], FIXED)]);
    let (ok, stdout, stderr) = subcommand(dir.path(), &["check"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("encoder: ok, 2 functions (seq_8 with tokens [1, 8, 8], flexible)"),
        "{stdout}"
    );
    let out = dir.path().join("merged");
    let (ok, stdout, stderr) =
        subcommand(dir.path(), &["build", "--out-dir", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("encoder: merged 2 functions (seq_8 with tokens [1, 8, 8], flexible)"),
        "{stdout}"
    );

    // A shape the input does not allow: `check` names the Cargo.toml line
    // and key of the shape, and the range the input allows.
    let manifest = dir.path().join("encoder/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("[1, 8, 8]", "[1, 32, 8]");
    std::fs::write(&manifest, text).unwrap();
    let (ok, _, stderr) = subcommand(dir.path(), &["check"]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "encoder/Cargo.toml:8:86: `package.metadata.multifunction.models.encoder.functions.seq_8.shapes.tokens`"
        ) && stderr.contains("cannot take the shape [1, 32, 8]: it allows [1, 1..=16, 8]"),
        "{stderr}"
    );
}

const SPLIT: &str = "[package.metadata.multifunction.models.encoder]\n\
                     default-function = \"split\"\n\
                     functions.split = { package = \"models/chunk_encoder.mlpackage\", chunks = 2 }\n\
                     functions.budgeted = { package = \"models/chunk_encoder.mlpackage\", chunks = { max-bytes = \"40K\" } }\n\
                     functions.whole = \"models/chunk_encoder.mlpackage\"\n";

#[test]
fn split_functions_are_listed_checked_and_merged() {
    let dir = workspace_of(&[("encoder", &["chunk_encoder"], SPLIT)]);
    let (ok, stdout, stderr) = subcommand(dir.path(), &["check"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(
            "encoder: ok, 3 functions (split in 2 chunks, budgeted in chunks of at most 40.0 KiB, \
             whole), default split"
        ),
        "{stdout}"
    );
    let out = dir.path().join("merged");
    let (ok, stdout, stderr) =
        subcommand(dir.path(), &["build", "--out-dir", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("encoder: merged 3 functions (split in chunks split_chunk1 "),
        "{stdout}"
    );
    assert!(stdout.contains(", split_chunk2 "), "{stdout}");
    assert!(
        stdout.contains("budgeted in chunks budgeted_chunk1 "),
        "{stdout}"
    );

    // A budget no op fits: `check` names the Cargo.toml line and key.
    let manifest = dir.path().join("encoder/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"40K\"", "1");
    std::fs::write(&manifest, text).unwrap();
    let (ok, _, stderr) = subcommand(dir.path(), &["check"]);
    assert!(!ok);
    assert!(
        stderr.contains(
            "encoder/Cargo.toml:9:77: `package.metadata.multifunction.models.encoder.functions.budgeted.chunks`"
        ) && stderr.contains("cannot be split within max-chunk-bytes 1 B"),
        "{stderr}"
    );
}
