//! The build step in process, through `Builder`: the cargo lines it prints,
//! `copy-to`, `include`, metadata overrides, locating errors, concurrency.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use coreml_multifunction_build::config::MetadataConfig;
use coreml_multifunction_build::package::Package;
use coreml_multifunction_build::pipeline::CrateInfo;
use coreml_multifunction_build::{Builder, Error, Model};

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// A crate directory with the given multifunction configuration and the
    /// fixture packages it names under `models/`.
    fn new(multifunction: &str, packages: &[&str]) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let manifest =
            format!("[package]\nname = \"demo\"\nversion = \"0.3.0\"\n\n{multifunction}");
        std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
        for package in packages {
            let source = match package.strip_prefix("merged:") {
                Some(merged) => common::merged_package(merged),
                None => common::source_package(package),
            };
            let name = package.replace("merged:", "merged_");
            common::copy_dir(
                &source,
                &dir.path().join("models").join(format!("{name}.mlpackage")),
            );
        }
        Project { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn out_dir(&self) -> PathBuf {
        self.root().join("out")
    }

    fn builder(&self) -> Builder {
        Builder::new(self.root(), self.out_dir()).crate_info(CrateInfo {
            name: "demo".into(),
            version: "0.3.0".into(),
            authors: "Grace Hopper".into(),
            license: "MIT".into(),
            description: "A demo".into(),
        })
    }

    fn run(&self) -> Result<(coreml_multifunction_build::Built, String), Error> {
        let mut lines = Vec::new();
        let built = self.builder().run_with_output(&mut lines)?;
        Ok((built, String::from_utf8(lines).unwrap()))
    }
}

const PAIR: &str = r#"[package.metadata.multifunction.models.combined]
default-function = "adapter_2"
functions.adapter_1 = "models/lora_adapter_1.mlpackage"
functions.adapter_2 = "models/lora_adapter_2.mlpackage"
"#;

#[test]
fn cargo_lines_watch_the_manifest_and_every_package_and_expose_the_output() {
    let project = Project::new(PAIR, &["lora_adapter_1", "lora_adapter_2"]);
    let (built, lines) = project.run().unwrap();
    let expected = [
        format!(
            "cargo:rerun-if-changed={}",
            project.root().join("Cargo.toml").display()
        ),
        format!(
            "cargo:rerun-if-changed={}",
            project
                .root()
                .join("models/lora_adapter_1.mlpackage")
                .display()
        ),
        format!(
            "cargo:rerun-if-changed={}",
            project
                .root()
                .join("models/lora_adapter_2.mlpackage")
                .display()
        ),
        format!(
            "cargo:rustc-env=COREML_MULTIFUNCTION_MODEL_COMBINED={}",
            project.out_dir().join("combined.mlpackage").display()
        ),
        format!(
            "cargo:rustc-env=COREML_MULTIFUNCTION_GENERATED={}",
            project
                .out_dir()
                .join("coreml_multifunction_models.rs")
                .display()
        ),
    ];
    assert_eq!(lines.lines().collect::<Vec<_>>(), expected);
    let model = &built.models[0];
    assert!(model.merge.is_some());
    let merged = Package::open(&model.package).unwrap();
    assert_eq!(merged.default_function(), "adapter_2");
    let names: Vec<&str> = merged.functions().iter().map(|f| f.name).collect();
    assert_eq!(names, ["adapter_1", "adapter_2"]);

    // The typed API was generated for it.
    let generated = std::fs::read_to_string(&built.generated).unwrap();
    assert!(
        generated.contains("pub mod combined") && generated.contains("pub struct Adapter2Input")
    );

    // Run again: up to date, nothing merged, the API file untouched.
    let before = std::fs::metadata(&built.generated)
        .unwrap()
        .modified()
        .unwrap();
    let (again, _) = project.run().unwrap();
    assert!(again.models[0].merge.is_none());
    assert_eq!(
        std::fs::metadata(&again.generated)
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
}

#[test]
fn a_package_removed_after_the_build_is_merged_again() {
    let project = Project::new(PAIR, &["lora_adapter_1", "lora_adapter_2"]);
    let (built, _) = project.run().unwrap();
    std::fs::remove_dir_all(&built.models[0].package).unwrap();
    let (again, _) = project.run().unwrap();
    assert!(again.models[0].merge.is_some());
    Package::open(&again.models[0].package).unwrap();
}

#[test]
fn copy_to_include_and_metadata_overrides() {
    let config = r#"[package.metadata.multifunction.models.bundle]
default-function = "v1_adapter_1"
include = [{ package = "models/merged_lora_pair.mlpackage", prefix = "v1_" }]
functions.third = "models/lora_adapter_3.mlpackage"
copy-to = "Resources/models"
metadata = { author = "Override", short-description = "Bundled adapters", user-defined = { task = "demo" } }
"#;
    let project = Project::new(config, &["merged:lora_pair", "lora_adapter_3"]);
    let (built, _) = project.run().unwrap();
    let model = &built.models[0];
    let copy = project.root().join("Resources/models/bundle.mlpackage");
    assert_eq!(model.copied_to.as_deref(), Some(copy.as_path()));
    assert!(common::tree_bytes(&copy) == common::tree_bytes(&model.package));

    let merged = Package::open(&model.package).unwrap();
    let names: Vec<&str> = merged.functions().iter().map(|f| f.name).collect();
    assert_eq!(names, ["third", "v1_adapter_1", "v1_adapter_2"]);
    let metadata = merged.description().metadata.clone().unwrap();
    assert_eq!(metadata.author, "Override");
    assert_eq!(metadata.short_description, "Bundled adapters");
    assert_eq!(
        metadata.version_string, "0.3.0",
        "the crate's, not overridden"
    );
    assert_eq!(metadata.license, "MIT");
    assert_eq!(metadata.user_defined["task"], "demo");
}

#[test]
fn an_include_that_collides_after_its_prefix_is_refused() {
    let config = r#"[package.metadata.multifunction.models.m]
default-function = "adapter_1"
functions.adapter_1 = "models/lora_adapter_1.mlpackage"
include = ["models/merged_lora_pair.mlpackage"]
"#;
    let project = Project::new(config, &["lora_adapter_1", "merged:lora_pair"]);
    let error = project.run().unwrap_err();
    let message = error.to_string();
    assert!(message.contains("Cargo.toml:8:12"), "{message}");
    assert!(
        message.contains("two functions of model `m` are named \"adapter_1\""),
        "{message}"
    );
    assert!(!project.out_dir().join("m.mlpackage").exists());
}

#[test]
fn a_damaged_package_is_reported_at_the_key_that_names_it() {
    let project = Project::new(PAIR, &["lora_adapter_1", "lora_adapter_2"]);
    let weights = project
        .root()
        .join("models/lora_adapter_2.mlpackage/Data/com.apple.CoreML/weights/weight.bin");
    std::fs::write(&weights, b"no").unwrap();
    let message = project.run().unwrap_err().to_string();
    assert!(
        message.contains(
            "Cargo.toml:8:11: `package.metadata.multifunction.models.combined.functions.adapter_2`"
        ),
        "{message}"
    );
    assert!(
        message.contains("weight.bin") && message.contains("truncated"),
        "{message}"
    );
}

#[test]
fn an_unknown_source_function_is_reported_at_its_key() {
    let config = PAIR.replace(
        "functions.adapter_2 = \"models/lora_adapter_2.mlpackage\"",
        "functions.adapter_2 = { package = \"models/lora_adapter_2.mlpackage\", source-function = \"decode\" }",
    );
    let project = Project::new(&config, &["lora_adapter_1", "lora_adapter_2"]);
    let message = project.run().unwrap_err().to_string();
    assert!(message.contains("Cargo.toml:8:11"), "{message}");
    assert!(message.contains("has no function \"decode\""), "{message}");
}

#[test]
fn models_can_be_configured_in_code() {
    let project = Project::new("", &["stateful_prefill", "stateful_decode"]);
    let mut lines = Vec::new();
    let built = project
        .builder()
        .model(
            Model::new("llm")
                .function("prefill", "models/stateful_prefill.mlpackage")
                .function("decode", "models/stateful_decode.mlpackage")
                .default_function("decode")
                .metadata(MetadataConfig {
                    license: Some("Apache-2.0".into()),
                    ..Default::default()
                }),
        )
        .run_with_output(&mut lines)
        .unwrap();
    let merged = Package::open(&built.models[0].package).unwrap();
    assert_eq!(merged.default_function(), "decode");
    assert_eq!(
        merged.description().metadata.as_ref().unwrap().license,
        "Apache-2.0"
    );
    assert!(String::from_utf8(lines)
        .unwrap()
        .contains("COREML_MULTIFUNCTION_MODEL_LLM="));

    let error = project
        .builder()
        .model(Model::new("llm").function("a", "models/nope.mlpackage"))
        .run()
        .unwrap_err();
    assert!(error.to_string().contains("no default function"), "{error}");
}

#[test]
fn concurrent_builds_into_one_out_dir_give_one_valid_result() {
    let project = Project::new(PAIR, &["lora_adapter_1", "lora_adapter_2"]);
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| project.run().map(|(b, _)| b)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let merges = results
        .iter()
        .filter(|r| r.as_ref().unwrap().models[0].merge.is_some())
        .count();
    assert_eq!(
        merges, 1,
        "the lock lets one build merge and the others find it done"
    );
    Package::open(project.out_dir().join("combined.mlpackage")).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(project.out_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut leftovers = leftovers;
    leftovers.sort();
    assert_eq!(
        leftovers,
        [
            "combined.mlpackage",
            "coreml-multifunction",
            "coreml_multifunction_models.rs"
        ]
    );
}
