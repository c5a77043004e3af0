//! Helpers shared by the integration tests: where the fixtures are, and
//! scratch copies of them to damage.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `tests/fixtures` at the repository's root, whichever crate's tests ask.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("tests/fixtures"))
        .find(|fixtures| fixtures.join("packages").is_dir())
        .expect("the tests run inside the repository, which holds tests/fixtures")
}

/// A source package made by coremltools, by name (`lora_adapter_1`).
pub fn source_package(name: &str) -> PathBuf {
    fixtures()
        .join("packages")
        .join(format!("{name}.mlpackage"))
}

/// A package merged by coremltools' `save_multifunction`, by scenario.
pub fn merged_package(scenario: &str) -> PathBuf {
    fixtures()
        .join("merged")
        .join(format!("{scenario}.mlpackage"))
}

/// Every committed `.mlpackage`, sources then merged ones, sorted.
pub fn all_packages() -> Vec<PathBuf> {
    let mut all = Vec::new();
    for dir in ["packages", "merged"] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(fixtures().join(dir))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "mlpackage"))
            .collect();
        found.sort();
        all.extend(found);
    }
    assert!(
        all.len() >= 20,
        "fixtures missing: found only {}",
        all.len()
    );
    all
}

/// Copies a directory tree (following nothing: fixtures hold plain files).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A scratch copy of a fixture package, to damage.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub package: PathBuf,
}

impl Scratch {
    pub fn of(source: &Path) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join(source.file_name().unwrap());
        copy_dir(source, &package);
        Scratch { dir, package }
    }

    pub fn manifest(&self) -> PathBuf {
        self.package.join("Manifest.json")
    }

    pub fn spec(&self) -> PathBuf {
        self.package.join("Data/com.apple.CoreML/model.mlmodel")
    }

    pub fn weights(&self) -> PathBuf {
        self.package
            .join("Data/com.apple.CoreML/weights/weight.bin")
    }
}

/// Every file under `root`, relative, with its bytes, sorted by path.
pub fn tree_bytes(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    fn walk(root: &Path, dir: &Path, files: &mut Vec<(PathBuf, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path.strip_prefix(root).unwrap().to_path_buf(), bytes));
            }
        }
    }
    walk(root, root, &mut files);
    files.sort();
    files
}

/// One merge scenario of `tests/fixtures/scenarios.json`.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// (source, source function, target); a source is a package name, or
    /// `merged:<scenario>` for a package coremltools merged.
    pub functions: Vec<(String, String, String)>,
    pub default: String,
}

/// Every merge scenario, sorted by name.
pub fn scenarios() -> Vec<Scenario> {
    let text = std::fs::read_to_string(fixtures().join("scenarios.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut all: Vec<Scenario> = json["scenarios"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, plan)| Scenario {
            name: name.clone(),
            functions: plan["functions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let s = |i: usize| f[i].as_str().unwrap().to_string();
                    (s(0), s(1), s(2))
                })
                .collect(),
            default: plan["default"].as_str().unwrap().to_string(),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// The package a scenario's source names.
pub fn source_path(source: &str) -> PathBuf {
    match source.strip_prefix("merged:") {
        Some(merged) => merged_package(merged),
        None => source_package(source),
    }
}

/// One fixed-shape target of a materialization scenario.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct FixedTarget {
    pub name: String,
    /// Input name to shape.
    pub shapes: std::collections::BTreeMap<String, Vec<u64>>,
    /// The `io/` directory of torch's outputs at those shapes.
    pub io: String,
}

/// One scenario of `tests/fixtures/materializations.json`: fixed-shape
/// functions made from one flexible function, and coremltools' own
/// `materialize_dynamic_shape_mlmodel` output.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Materialization {
    pub name: String,
    pub source: PathBuf,
    pub function: String,
    pub targets: Vec<FixedTarget>,
    pub oracle: PathBuf,
}

/// Every materialization scenario, sorted by name.
#[allow(dead_code)]
pub fn materializations() -> Vec<Materialization> {
    let text = std::fs::read_to_string(fixtures().join("materializations.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut all: Vec<Materialization> = json["scenarios"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, plan)| Materialization {
            name: name.clone(),
            source: source_package(plan["source"].as_str().unwrap()),
            function: plan["function"].as_str().unwrap().to_string(),
            targets: plan["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| FixedTarget {
                    name: t["name"].as_str().unwrap().to_string(),
                    shapes: t["shapes"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(input, shape)| {
                            let dims = shape
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|d| d.as_u64().unwrap())
                                .collect();
                            (input.clone(), dims)
                        })
                        .collect(),
                    io: t["io"].as_str().unwrap().to_string(),
                })
                .collect(),
            oracle: fixtures().join(plan["oracle"].as_str().unwrap()),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}
