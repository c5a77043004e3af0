//! The build step in process, through `Builder`: the cargo lines it prints,
//! `copy-to`, `include`, metadata overrides, locating errors, concurrency.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use coreml_multifunction_build::config::MetadataConfig;
use coreml_multifunction_build::merge::Chunks;
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

const FIXED: &str = r#"[package.metadata.multifunction.models.encoder]
default-function = "seq_8"
functions.seq_8 = { package = "models/flexible_range.mlpackage", shapes = { tokens = [1, 8, 8] } }
functions.flexible = "models/flexible_range.mlpackage"
"#;

/// The input and output shapes of `function` of a merged package, and
/// whether its input is still flexible.
fn interface(package: &Path, function: &str) -> (Vec<i64>, Vec<i64>, bool) {
    use coreml_multifunction_build::proto::specification::feature_type::Type;
    let package = Package::open(package).unwrap();
    let description = package
        .functions()
        .iter()
        .find(|f| f.name == function)
        .unwrap()
        .description
        .clone()
        .into_owned();
    let array = |feature: &coreml_multifunction_build::proto::FeatureDescription| match feature
        .r#type
        .as_ref()
        .and_then(|t| t.r#type.clone())
    {
        Some(Type::MultiArrayType(array)) => array,
        other => panic!("not a multi-array: {other:?}"),
    };
    let input = array(&description.input[0]);
    let output = array(&description.output[0]);
    (input.shape, output.shape, input.shape_flexibility.is_some())
}

#[test]
fn shapes_in_cargo_toml_make_fixed_shape_functions_and_a_new_shape_merges_again() {
    let project = Project::new(FIXED, &["flexible_range"]);
    let (built, _) = project.run().unwrap();
    let model = &built.models[0];
    let report = model.merge.as_ref().unwrap();
    assert_eq!(
        report.functions[0].fixed_shapes,
        [("tokens".to_string(), vec![1, 8, 8])].into()
    );
    assert!(report.functions[1].fixed_shapes.is_empty());
    assert_eq!(
        interface(&model.package, "seq_8"),
        (vec![1, 8, 8], vec![1, 8, 8], false)
    );
    assert!(interface(&model.package, "flexible").2, "still flexible");
    let generated = std::fs::read_to_string(&built.generated).unwrap();
    assert!(
        generated.contains("pub const TOKENS_SHAPE: [usize; 3] = [1, 8, 8];"),
        "{generated}"
    );

    // Unchanged: not merged again.
    let (again, _) = project.run().unwrap();
    assert!(again.models[0].merge.is_none());

    // Another shape is another model: merged again, whatever the files.
    std::fs::write(
        project.root().join("Cargo.toml"),
        format!(
            "[package]\nname = \"demo\"\nversion = \"0.3.0\"\n\n{}",
            FIXED.replace("[1, 8, 8]", "[1, 16, 8]")
        ),
    )
    .unwrap();
    let (changed, _) = project.run().unwrap();
    assert!(
        changed.models[0].merge.is_some(),
        "a new shape was not merged"
    );
    assert_eq!(
        interface(&changed.models[0].package, "seq_8"),
        (vec![1, 16, 8], vec![1, 16, 8], false)
    );
}

#[test]
fn shape_errors_point_at_the_shape_in_cargo_toml() {
    // Line 7 of the manifest (after the four-line [package] header) is the
    // function; its `shapes` input is at column 77 and the array at 86.
    let cases = [
        (
            "[1, 8, 8]",
            "[1, 99, 8]",
            "Cargo.toml:7:86: `package.metadata.multifunction.models.encoder.functions.seq_8.shapes.tokens`: \
             function \"seq_8\": input \"tokens\" of function \"main\" of ",
            "cannot take the shape [1, 99, 8]: it allows [1, 1..=16, 8]",
        ),
        (
            "[1, 8, 8]",
            "[1, 8]",
            "Cargo.toml:7:86: `package.metadata.multifunction.models.encoder.functions.seq_8.shapes.tokens`",
            "cannot take the shape [1, 8]: it allows [1, 1..=16, 8]",
        ),
        (
            "tokens = [1, 8, 8]",
            "token = [1, 8, 8]",
            "Cargo.toml:7:77: `package.metadata.multifunction.models.encoder.functions.seq_8.shapes.token`",
            "has no input \"token\" to fix the shape of; its inputs are \"tokens\"",
        ),
    ];
    for (from, to, location, message) in cases {
        let project = Project::new(&FIXED.replace(from, to), &["flexible_range"]);
        let error = project.run().unwrap_err().to_string();
        assert!(error.contains(location), "{to}: {error}");
        assert!(error.contains(message), "{to}: {error}");
        assert!(
            !project.out_dir().join("encoder.mlpackage").exists(),
            "{to}: wrote a package"
        );
    }
}

#[test]
fn fixed_shapes_can_be_configured_in_code() {
    let project = Project::new("", &["flexible_range"]);
    let model = Model::new("encoder")
        .function("seq_8", "models/flexible_range.mlpackage")
        .fixed_shape("seq_8", "tokens", [1, 4, 8])
        .fixed_shape("seq_8", "tokens", [1, 8, 8])
        .function_from("seq_16", "models/flexible_range.mlpackage", "main")
        .fixed_shape("seq_16", "tokens", vec![1, 16, 8])
        .default_function("seq_8");
    let built = project
        .builder()
        .model(model.clone())
        .run_with_output(&mut Vec::new())
        .unwrap();
    let package = &built.models[0].package;
    assert_eq!(
        interface(package, "seq_8").0,
        [1, 8, 8],
        "the last call wins"
    );
    assert_eq!(interface(package, "seq_16").0, [1, 16, 8]);

    // Errors name the call.
    let error = project
        .builder()
        .model(model.clone().fixed_shape("seq_32", "tokens", [1, 32, 8]))
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`Model::new(\"encoder\").fixed_shape(\"seq_32\", \"tokens\")`")
            && error.contains("\"seq_32\" is not a function added with .function")
            && error.contains("\"seq_8\", \"seq_16\""),
        "{error}"
    );
    let error = project
        .builder()
        .model(model.clone().fixed_shape("seq_8", "tokens", [1, 0, 8]))
        .run()
        .unwrap_err()
        .to_string();
    assert!(error.contains("[1, 0, 8] is not a fixed shape"), "{error}");
    let error = project
        .builder()
        .model(model.fixed_shape("seq_16", "tokens", [1, 17, 8]))
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`Model::new(\"encoder\").fixed_shape(\"seq_16\", \"tokens\")`")
            && error.contains("it allows [1, 1..=16, 8]"),
        "{error}"
    );
}

const SPLIT: &str = r#"[package.metadata.multifunction.models.encoder]
default-function = "split"
functions.split = { package = "models/chunk_encoder.mlpackage", chunks = 2 }
functions.whole = "models/chunk_encoder.mlpackage"
"#;

fn write_manifest(project: &Project, multifunction: &str) {
    std::fs::write(
        project.root().join("Cargo.toml"),
        format!("[package]\nname = \"demo\"\nversion = \"0.3.0\"\n\n{multifunction}"),
    )
    .unwrap();
}

/// The chunk names of function `target` of a built model, and the
/// package's function names and default.
fn split_of(
    built: &coreml_multifunction_build::Built,
    target: &str,
) -> (Vec<String>, Vec<String>, String) {
    let model = &built.models[0];
    let report = model.merge.as_ref().expect("merged");
    let function = report
        .functions
        .iter()
        .find(|f| f.target == target)
        .unwrap();
    let package = Package::open(&model.package).unwrap();
    (
        function.chunks.iter().map(|c| c.name.clone()).collect(),
        package
            .functions()
            .iter()
            .map(|f| f.name.to_string())
            .collect(),
        package.default_function().to_string(),
    )
}

#[test]
fn chunks_in_cargo_toml_split_the_function_and_a_new_split_merges_again() {
    let project = Project::new(SPLIT, &["chunk_encoder"]);
    let (built, _) = project.run().unwrap();
    let (chunks, functions, default) = split_of(&built, "split");
    assert_eq!(chunks, ["split_chunk1", "split_chunk2"]);
    assert_eq!(functions, ["split_chunk1", "split_chunk2", "whole"]);
    assert_eq!(
        default, "split_chunk1",
        "the default names the split function"
    );
    assert_eq!(
        built.models[0].model.functions[0]
            .chunks
            .as_ref()
            .unwrap()
            .value,
        Chunks::Count(2)
    );

    // Unchanged: not merged again.
    let (again, _) = project.run().unwrap();
    assert!(again.models[0].merge.is_none());

    // Another split is another model: merged again.
    write_manifest(&project, &SPLIT.replace("chunks = 2", "chunks = 3"));
    let (three, _) = project.run().unwrap();
    assert_eq!(split_of(&three, "split").0.len(), 3);
    let budget = 40 << 10;
    write_manifest(
        &project,
        &SPLIT.replace("chunks = 2", "chunks = { max-bytes = \"40K\" }"),
    );
    let (budgeted, _) = project.run().unwrap();
    let report = budgeted.models[0]
        .merge
        .as_ref()
        .expect("a new budget merges again");
    let split = &report.functions[0];
    assert!(split.chunks.len() >= 2, "{split:?}");
    assert!(
        split.chunks.iter().all(|c| c.weight_bytes <= budget),
        "{split:?}"
    );
    // Merged whole again: the chunks are gone.
    write_manifest(&project, &SPLIT.replace(", chunks = 2", ""));
    let (whole, _) = project.run().unwrap();
    assert_eq!(split_of(&whole, "split").1, ["split", "whole"]);
}

#[test]
fn split_errors_point_at_chunks_in_cargo_toml() {
    // Line 7 of the manifest (after the four-line [package] header) is the
    // split function; `chunks` is its value.
    for (chunks, message) in [
        (
            "{ max-bytes = 1 }",
            "cannot be split within max-chunk-bytes 1 B: op ",
        ),
        ("1000000", "cannot be split"),
    ] {
        let text = SPLIT.replace("chunks = 2", &format!("chunks = {chunks}"));
        let line = text.lines().nth(2).unwrap();
        let column = line.find(chunks).unwrap() + 1;
        let project = Project::new(&text, &["chunk_encoder"]);
        let error = project.run().unwrap_err().to_string();
        let location = format!(
            "Cargo.toml:7:{column}: `package.metadata.multifunction.models.encoder.functions.split.chunks`: \
             function \"split\""
        );
        assert!(error.contains(&location), "{chunks}: {error}");
        assert!(error.contains(message), "{chunks}: {error}");
        assert!(
            !project.out_dir().join("encoder.mlpackage").exists(),
            "{chunks}: wrote a package"
        );
    }

    // A chunk's name taken by another function.
    let text = format!("{SPLIT}functions.split_chunk2 = \"models/chunk_encoder.mlpackage\"\n");
    let project = Project::new(&text, &["chunk_encoder"]);
    let error = project.run().unwrap_err().to_string();
    assert!(
        error.contains("Cargo.toml:7:74: `package.metadata.multifunction.models.encoder.functions.split.chunks`"),
        "{error}"
    );
    assert!(
        error.contains(
            "is split into chunks named split_chunk1, split_chunk2, …, and function \"main\" of "
        ),
        "{error}"
    );
    assert!(
        error.contains("is already named \"split_chunk2\""),
        "{error}"
    );
    // Beyond the count, the name is free.
    let project = Project::new(
        &text.replace("chunks = 2", "chunks = 1"),
        &["chunk_encoder"],
    );
    let (built, _) = project.run().unwrap();
    assert_eq!(
        split_of(&built, "split").1,
        ["split_chunk1", "whole", "split_chunk2"]
    );
}

#[test]
fn chunks_can_be_configured_in_code() {
    let project = Project::new("", &["chunk_encoder"]);
    let model = Model::new("encoder")
        .function("split", "models/chunk_encoder.mlpackage")
        .chunks("split", Chunks::Count(3))
        .chunks("split", Chunks::Count(2))
        .default_function("split");
    let built = project
        .builder()
        .model(model.clone())
        .run_with_output(&mut Vec::new())
        .unwrap();
    assert_eq!(
        split_of(&built, "split").0,
        ["split_chunk1", "split_chunk2"],
        "the last call wins"
    );

    // Errors name the call.
    for (model, message) in [
        (
            model.clone().chunks("other", Chunks::Count(2)),
            "Model::new(\"encoder\").chunks(\"other\")`: \"other\" is not a function added with \
             .function or .function_from; the functions are \"split\"",
        ),
        (
            model.clone().chunks("split", Chunks::Count(0)),
            "Model::new(\"encoder\").chunks(\"split\")`: Chunks::Count(0) splits into no chunks",
        ),
        (
            model.clone().chunks("split", Chunks::MaxBytes(0)),
            "Model::new(\"encoder\").chunks(\"split\")`: Chunks::MaxBytes(0) fits no weights",
        ),
    ] {
        let error = project
            .builder()
            .model(model)
            .run()
            .unwrap_err()
            .to_string();
        assert!(error.contains(message), "{error}");
    }
}
