//! End to end: real temporary cargo projects whose build.rs is the
//! one-liner, built with the cargo running these tests (the way the `built`
//! crate tests itself). They share one target directory, so the crate and
//! its dependencies compile once.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use coreml_multifunction_build::compare::{compare, CompareOptions};
use coreml_multifunction_build::package::Package;

struct TestCrate {
    _dir: tempfile::TempDir,
    root: PathBuf,
    name: String,
}

const BUILD_RS: &str = "fn main() {\n    coreml_multifunction_build::build().unwrap();\n}\n";

const MAIN_RS: &str = r#"fn main() {
    println!("{}", env!("COREML_MULTIFUNCTION_MODEL_COMBINED"));
}
"#;

fn manifest(name: &str, multifunction: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "1.2.3"
edition = "2021"
authors = ["Ada Lovelace <ada@example.com>", "Charles Babbage"]
license = "MIT OR Apache-2.0"
description = "An end-to-end test of coreml-multifunction"

[build-dependencies]
coreml-multifunction-build = {{ path = {build:?} }}

[workspace]

{multifunction}"#,
        build = env!("CARGO_MANIFEST_DIR"),
    )
}

const LORA_PAIR: &str = r#"[package.metadata.multifunction.models.combined]
default-function = "adapter_1"
functions.adapter_1 = "models/lora_adapter_1.mlpackage"
functions.adapter_2 = { package = "models/lora_adapter_2.mlpackage", source-function = "main" }
"#;

impl TestCrate {
    fn new(name: &str, multifunction: &str) -> TestCrate {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("Cargo.toml"), manifest(name, multifunction)).unwrap();
        std::fs::write(root.join("build.rs"), BUILD_RS).unwrap();
        std::fs::write(root.join("src/main.rs"), MAIN_RS).unwrap();
        // The repository's lock file pins the same versions, so the build
        // needs no registry access.
        std::fs::copy(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("Cargo.lock"),
            root.join("Cargo.lock"),
        )
        .unwrap();
        for package in ["lora_adapter_1", "lora_adapter_2"] {
            common::copy_dir(
                &common::source_package(package),
                &root.join("models").join(format!("{package}.mlpackage")),
            );
        }
        TestCrate {
            _dir: dir,
            root,
            name: name.to_string(),
        }
    }

    fn cargo(&self, args: &[&str]) -> Output {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-target");
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
            .args(args)
            .arg("--offline")
            .current_dir(&self.root)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .output()
            .expect("cargo runs")
    }

    fn build(&self) -> Output {
        self.cargo(&["build", "-v"])
    }

    fn build_ok(&self) -> String {
        let output = self.build();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "cargo build failed:\n{stderr}");
        stderr
    }

    fn build_error(&self) -> String {
        let output = self.build();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !output.status.success(),
            "cargo build succeeded but should have failed:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "a panic instead of an error:\n{stderr}"
        );
        stderr
    }

    /// The merged package, as the crate sees it through `env!`.
    fn merged_package(&self) -> PathBuf {
        let output = self.cargo(&["run", "--quiet"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    }

    fn set_manifest(&self, multifunction: &str) {
        std::fs::write(
            self.root.join("Cargo.toml"),
            manifest(&self.name, multifunction),
        )
        .unwrap();
    }

    /// Moves a file's modification time forward, as an edit would.
    fn touch(&self, relative: &str) {
        let file = std::fs::File::options()
            .append(true)
            .open(self.root.join(relative))
            .unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path.join("Manifest.json"))
        .unwrap()
        .modified()
        .unwrap()
}

fn build_script_ran(stderr: &str, name: &str) -> bool {
    stderr.lines().any(|l| {
        l.contains("Running")
            && l.contains(&format!("build/{name}-"))
            && l.contains("build-script-build")
    })
}

#[test]
fn a_build_merges_like_coremltools_reruns_only_on_change_and_takes_crate_metadata() {
    let krate = TestCrate::new("mf-e2e-happy", LORA_PAIR);
    let first = krate.build_ok();
    assert!(build_script_ran(&first, &krate.name), "{first}");

    // The happy path: the merged package equals coremltools' merge.
    let merged_path = krate.merged_package();
    assert!(
        merged_path.starts_with(Path::new(env!("CARGO_TARGET_TMPDIR"))),
        "{}",
        merged_path.display()
    );
    assert!(merged_path.ends_with("combined.mlpackage"));
    let merged = Package::open(&merged_path).unwrap();
    let oracle = Package::open(common::merged_package("lora_pair")).unwrap();
    let options = CompareOptions {
        metadata: false,
        program_attributes: false,
        op_names: false,
        ..CompareOptions::default()
    };
    let comparison = compare(&merged, &oracle, options).unwrap();
    assert!(comparison.is_equal(), "{:?}", comparison.differences);

    // Its metadata is the crate's.
    let metadata = merged.description().metadata.clone().unwrap();
    assert_eq!(metadata.version_string, "1.2.3");
    assert_eq!(
        metadata.author,
        "Ada Lovelace <ada@example.com>, Charles Babbage"
    );
    assert_eq!(metadata.license, "MIT OR Apache-2.0");
    assert_eq!(
        metadata.short_description,
        "An end-to-end test of coreml-multifunction"
    );
    // coremltools' own keys from the default function's source are kept.
    assert_eq!(
        metadata.user_defined["com.github.apple.coremltools.version"],
        "9.0"
    );

    // A second build: nothing to do, cargo does not even run the script.
    let second = krate.build_ok();
    assert!(
        second.contains(&format!("Fresh {}", krate.name)),
        "{second}"
    );
    assert!(!build_script_ran(&second, &krate.name), "{second}");

    // The script reruns for Cargo.toml, but nothing the model depends on
    // changed: the merge is skipped and the output left untouched.
    let before = modified(&merged_path);
    krate.touch("Cargo.toml");
    let third = krate.build_ok();
    assert!(build_script_ran(&third, &krate.name), "{third}");
    assert_eq!(modified(&merged_path), before, "the output was rewritten");

    // Touching a file inside a source package reruns and re-merges.
    krate.touch("models/lora_adapter_2.mlpackage/Data/com.apple.CoreML/weights/weight.bin");
    let fourth = krate.build_ok();
    assert!(build_script_ran(&fourth, &krate.name), "{fourth}");
    assert_ne!(
        modified(&merged_path),
        before,
        "the output was not merged again"
    );
    Package::open(&merged_path).unwrap();
}

#[test]
fn bad_configurations_name_the_key_and_its_line() {
    let krate = TestCrate::new("mf-e2e-errors", LORA_PAIR);
    // Line numbers count from the start of the generated Cargo.toml: the
    // multifunction table starts on line 14.
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "an unknown default",
            "default-function = \"adapter_1\"",
            "default-function = \"adapter_9\"",
            "Cargo.toml:15:20: `package.metadata.multifunction.models.combined.default-function`: \"adapter_9\" is not one of the functions",
        ),
        (
            "a missing package path",
            "models/lora_adapter_2.mlpackage",
            "models/missing.mlpackage",
            "Cargo.toml:17:35: `package.metadata.multifunction.models.combined.functions.adapter_2.package`: the package models/missing.mlpackage does not exist",
        ),
        (
            "an unknown key",
            "default-function =",
            "default-fn =",
            "Cargo.toml:15:1: `package.metadata.multifunction.models.combined.default-fn`: unknown key `default-fn`",
        ),
        (
            "a bad type",
            "functions.adapter_1 = \"models/lora_adapter_1.mlpackage\"",
            "functions.adapter_1 = 1",
            "Cargo.toml:16:23: `package.metadata.multifunction.models.combined.functions.adapter_1`: expected a package path or a table",
        ),
        (
            "duplicate function names after renaming",
            "functions.adapter_2 =",
            "functions.Adapter_1 =",
            "Cargo.toml:17:11: `package.metadata.multifunction.models.combined.functions.Adapter_1`: functions \"adapter_1\" and \"Adapter_1\" of model `combined` would both be the Rust type `Adapter1`",
        ),
        (
            "a zero dimension in a fixed shape",
            "source-function = \"main\"",
            "source-function = \"main\", shapes = { input_adapter_2 = [1, 0] }",
            "Cargo.toml:17:129: `package.metadata.multifunction.models.combined.functions.adapter_2.shapes.input_adapter_2[1]`: dimension 1 of input \"input_adapter_2\" is 0",
        ),
        (
            "a fixed shape the input does not allow",
            "source-function = \"main\"",
            "source-function = \"main\", shapes = { input_adapter_2 = [1, 65] }",
            "Cargo.toml:17:125: `package.metadata.multifunction.models.combined.functions.adapter_2.shapes.input_adapter_2`: function \"adapter_2\": input \"input_adapter_2\" of function \"main\"",
        ),
    ];
    for (what, from, to, expected) in cases {
        krate.set_manifest(&LORA_PAIR.replace(from, to));
        let stderr = krate.build_error();
        assert!(
            stderr.contains(expected),
            "{what}: expected\n  {expected}\nin\n{stderr}"
        );
        assert!(
            stderr.contains(&krate.root.join("Cargo.toml").display().to_string()),
            "{what}: {stderr}"
        );
    }
    // Fixed again, it builds.
    krate.set_manifest(LORA_PAIR);
    krate.build_ok();
}
