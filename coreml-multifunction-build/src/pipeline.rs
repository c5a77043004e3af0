//! The build step behind `build.rs`: from a parsed configuration to merged
//! packages in `OUT_DIR`, merging only when an input changed.
//!
//! This module reads and writes files but knows nothing of cargo: the
//! directories, the crate's own metadata and the configuration are handed
//! in by the cargo layer (`build()` and [`crate::Builder`]), which alone
//! reads environment variables and prints `cargo:` lines. What it leaves in
//! `OUT_DIR` is listed once, in the README ("What the build script does").

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::codegen;
use crate::config::{Config, ConfigError, Located, Location, ModelConfig, ShapeConfig};
use crate::error::{Error, MergeProblem, Result};
use crate::merge::{Chunks, MergeReport, MultiFunctionDescriptor};
use coreml_multifunction_format::naming;
use coreml_multifunction_format::naming::{is_mil_identifier, quoted_list};
use coreml_multifunction_format::package::{self, Package};
use coreml_multifunction_format::proto::Metadata;

/// The directory, inside `OUT_DIR`, of this crate's bookkeeping files.
pub(crate) const STATE_DIR: &str = "coreml-multifunction";

/// The crate's own metadata, which the merged model's metadata defaults to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrateInfo {
    /// `package.name`.
    pub name: String,
    /// `package.version`.
    pub version: String,
    /// `package.authors`, joined with `, `.
    pub authors: String,
    /// `package.license`.
    pub license: String,
    /// `package.description`.
    pub description: String,
}

/// One function of a model, with its package found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFunction {
    /// Its name in the merged model.
    pub target: String,
    /// The source package (absolute).
    pub package: PathBuf,
    /// Its name in the source package.
    pub source_function: String,
    /// Inputs fixed to a shape (`shapes`), making it a fixed-shape function
    /// of its source; empty for a function taken as it is. Located where
    /// Cargo.toml writes them.
    pub shapes: Located<Vec<ShapeConfig>>,
    /// How it is split into chunks (`chunks`), each a function of the
    /// merged model named `<target>_chunk1` …; `None` for a function merged
    /// whole. Located where Cargo.toml writes it.
    pub chunks: Option<Located<Chunks>>,
    /// Where Cargo.toml names it.
    pub location: Location,
}

impl ResolvedFunction {
    /// The fixed input shapes, by input.
    pub fn fixed_shapes(&self) -> BTreeMap<String, Vec<u64>> {
        self.shapes
            .value
            .iter()
            .map(|s| (s.input.value.clone(), s.shape.value.clone()))
            .collect()
    }
}

/// A model whose functions are all known and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedModel {
    /// The model's name.
    pub name: String,
    /// Its functions, in order: those of `functions`, then included ones.
    pub functions: Vec<ResolvedFunction>,
    /// The default function.
    pub default_function: String,
    /// The merged model's metadata.
    pub metadata: Metadata,
    /// Where to copy the merged package, if anywhere (absolute directory).
    pub copy_to: Option<PathBuf>,
    /// Every source package (absolute), in order, without repeats.
    pub sources: Vec<PathBuf>,
}

impl ResolvedModel {
    /// The merge this model stands for: its functions in order, its default
    /// and its metadata.
    pub fn descriptor(&self) -> MultiFunctionDescriptor {
        let mut descriptor = MultiFunctionDescriptor::new();
        for function in &self.functions {
            descriptor.add_function_from(
                &function.package,
                &function.source_function,
                &function.target,
            );
            for shape in &function.shapes.value {
                descriptor.fixed_shape(
                    &function.target,
                    &shape.input.value,
                    shape.shape.value.clone(),
                );
            }
            if let Some(chunks) = &function.chunks {
                descriptor.chunks(&function.target, chunks.value);
            }
        }
        descriptor.default_function(&self.default_function);
        descriptor.metadata(self.metadata.clone());
        descriptor
    }
}

/// What building one model did.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltModel {
    /// The resolved model.
    pub model: ResolvedModel,
    /// The merged package in `OUT_DIR`.
    pub package: PathBuf,
    /// The merge report, or `None` when the output was already up to date.
    pub merge: Option<MergeReport>,
    /// Where the package was copied, if `copy-to` is set.
    pub copied_to: Option<PathBuf>,
}

/// Resolves every model of `config`: checks that the packages exist, lists
/// included functions, and checks names and defaults. Reads the source
/// packages but writes nothing.
pub fn resolve(
    config: &Config,
    manifest_dir: &Path,
    crate_info: &CrateInfo,
) -> Result<Vec<ResolvedModel>> {
    config
        .models
        .iter()
        .map(|model| resolve_model(config, model, manifest_dir, crate_info))
        .collect()
}

fn config_error(config: &Config, location: &Location, message: String) -> Error {
    Error::Config(Box::new(ConfigError {
        manifest: config.manifest.clone(),
        location: location.clone(),
        message,
    }))
}

/// The absolute path of a package named in Cargo.toml, which must exist.
fn existing_package(
    config: &Config,
    manifest_dir: &Path,
    path: &Located<PathBuf>,
) -> Result<PathBuf> {
    let absolute = manifest_dir.join(&path.value);
    if !absolute.exists() {
        return Err(config_error(
            config,
            &path.location,
            format!(
                "the package {} does not exist (looked for {}); paths are relative to the \
                 directory of Cargo.toml",
                path.value.display(),
                absolute.display()
            ),
        ));
    }
    Ok(absolute)
}

fn resolve_model(
    config: &Config,
    model: &ModelConfig,
    manifest_dir: &Path,
    crate_info: &CrateInfo,
) -> Result<ResolvedModel> {
    let mut functions = Vec::new();
    for function in &model.functions {
        functions.push(ResolvedFunction {
            target: function.target.value.clone(),
            package: existing_package(config, manifest_dir, &function.package)?,
            source_function: function.source_function.value.clone(),
            shapes: function.shapes.clone(),
            chunks: function.chunks.clone(),
            location: function.target.location.clone(),
        });
    }
    for include in &model.includes {
        let path = existing_package(config, manifest_dir, &include.package)?;
        let opened = Package::open(&path)
            .map_err(|e| config_error(config, &include.package.location, e.to_string()))?;
        let prefix = include.prefix.as_ref().map_or("", |p| p.value.as_str());
        for function in opened.functions() {
            let target = format!("{prefix}{}", function.name);
            if !is_mil_identifier(&target) {
                return Err(config_error(
                    config,
                    &include.package.location,
                    format!("the included function {:?} would be named {target:?}, which is not a valid function name", function.name),
                ));
            }
            functions.push(ResolvedFunction {
                target,
                package: path.clone(),
                source_function: function.name.to_string(),
                shapes: Located {
                    value: Vec::new(),
                    location: include.package.location.clone(),
                },
                chunks: None,
                location: include.package.location.clone(),
            });
        }
    }

    // Names must stay distinct once renamed: as functions of the merged
    // model, and as the Rust types generated for them.
    let mut by_target: BTreeMap<&str, &ResolvedFunction> = BTreeMap::new();
    let mut by_type: BTreeMap<String, &ResolvedFunction> = BTreeMap::new();
    for function in &functions {
        if let Some(first) = by_target.insert(&function.target, function) {
            return Err(config_error(
                config,
                &function.location,
                format!(
                    "two functions of model `{}` are named {:?} (from {} and from {}); rename one \
                     with its key or an include `prefix`",
                    model.name.value,
                    function.target,
                    describe(first),
                    describe(function)
                ),
            ));
        }
        if let Some(first) = by_type.insert(naming::upper_camel(&function.target), function) {
            return Err(config_error(
                config,
                &function.location,
                format!(
                    "functions {:?} and {:?} of model `{}` would both be the Rust type `{}`; \
                     rename one of them",
                    first.target,
                    function.target,
                    model.name.value,
                    naming::upper_camel(&function.target)
                ),
            ));
        }
    }
    // A split function's chunks are functions of the merged model too.
    for function in &functions {
        let Some(chunks) = &function.chunks else {
            continue;
        };
        let prefix = format!("{}_chunk", function.target);
        let clash = functions.iter().find(|other| {
            other
                .target
                .strip_prefix(&prefix)
                .and_then(|k| k.parse::<usize>().ok().filter(|n| n.to_string() == k))
                .is_some_and(|k| match chunks.value {
                    Chunks::Count(count) => (1..=count).contains(&k),
                    Chunks::MaxBytes(_) => k >= 1,
                })
        });
        if let Some(other) = clash {
            return Err(config_error(
                config,
                &chunks.location,
                format!(
                    "function {:?} of model `{}` is split into chunks named {prefix}1, \
                     {prefix}2, …, and {} is already named {:?}; rename one of them",
                    function.target,
                    model.name.value,
                    describe(other),
                    other.target
                ),
            ));
        }
    }
    if !functions
        .iter()
        .any(|f| f.target == model.default_function.value)
    {
        return Err(config_error(
            config,
            &model.default_function.location,
            format!(
                "{:?} is not one of the functions of model `{}`; set it to one of {}",
                model.default_function.value,
                model.name.value,
                quoted_list(functions.iter().map(|f| f.target.as_str()))
            ),
        ));
    }

    let mut sources: Vec<PathBuf> = Vec::new();
    for function in &functions {
        if !sources.contains(&function.package) {
            sources.push(function.package.clone());
        }
    }

    let default = functions
        .iter()
        .find(|f| f.target == model.default_function.value)
        .expect("checked");
    let source_metadata = Package::open(&default.package)
        .map_err(|e| config_error(config, &default.location, e.to_string()))?
        .description()
        .metadata
        .clone()
        .unwrap_or_default();
    let metadata = merged_metadata(source_metadata, crate_info, model);

    Ok(ResolvedModel {
        name: model.name.value.clone(),
        functions,
        default_function: model.default_function.value.clone(),
        metadata,
        copy_to: model
            .copy_to
            .as_ref()
            .map(|dir| manifest_dir.join(&dir.value)),
        sources,
    })
}

fn describe(function: &ResolvedFunction) -> String {
    format!(
        "function {:?} of {}",
        function.source_function,
        function.package.display()
    )
}

/// The merged model's metadata: the default function's source's, with the
/// crate's fields over it, and the configuration's overrides over those.
fn merged_metadata(source: Metadata, crate_info: &CrateInfo, model: &ModelConfig) -> Metadata {
    let pick = |configured: &Option<String>, from_crate: &str, from_source: String| {
        configured
            .clone()
            .or_else(|| (!from_crate.is_empty()).then(|| from_crate.to_string()))
            .unwrap_or(from_source)
    };
    let overrides = &model.metadata;
    let mut user_defined = source.user_defined;
    user_defined.extend(overrides.user_defined.clone());
    Metadata {
        short_description: pick(
            &overrides.short_description,
            &crate_info.description,
            source.short_description,
        ),
        version_string: pick(
            &overrides.version,
            &crate_info.version,
            source.version_string,
        ),
        author: pick(&overrides.author, &crate_info.authors, source.author),
        license: pick(&overrides.license, &crate_info.license, source.license),
        user_defined,
    }
}

/// Checks what merging `model` checks (the functions exist, fixed shapes
/// are ones their inputs allow, every body can be raised to the merged
/// opset) without writing anything, reporting an error at the Cargo.toml
/// key it is about, as [`build`] does.
pub fn check(config: &Config, model: &ResolvedModel) -> Result<()> {
    model
        .descriptor()
        .check()
        .map_err(|e| locate(config, model, e))
}

/// Builds every model of `config` into `out_dir`, merging only those whose
/// inputs changed since the last build.
pub fn build(
    config: &Config,
    manifest_dir: &Path,
    out_dir: &Path,
    crate_info: &CrateInfo,
) -> Result<Vec<BuiltModel>> {
    let models = resolve(config, manifest_dir, crate_info)?;
    let state_dir = out_dir.join(STATE_DIR);
    fs::create_dir_all(&state_dir)
        .map_err(|e| Error::io(&state_dir, "create the build state directory", e))?;
    let mut built = Vec::new();
    for model in models {
        built.push(build_model(config, model, out_dir, &state_dir)?);
    }
    Ok(built)
}

fn build_model(
    config: &Config,
    model: ResolvedModel,
    out_dir: &Path,
    state_dir: &Path,
) -> Result<BuiltModel> {
    // Concurrent builds of the crate (cargo beside rust-analyzer) take turns.
    let lock_path = state_dir.join(format!("{}.lock", model.name));
    let lock =
        File::create(&lock_path).map_err(|e| Error::io(&lock_path, "create the build lock", e))?;
    lock.lock()
        .map_err(|e| Error::io(&lock_path, "take the build lock", e))?;

    let destination = out_dir.join(format!("{}.mlpackage", model.name));
    let fingerprint_path = state_dir.join(format!("{}.inputs", model.name));
    let fingerprint = fingerprint(&model)?;
    let up_to_date = destination.join(package::MANIFEST_FILE).is_file()
        && fs::read_to_string(&fingerprint_path).is_ok_and(|previous| previous == fingerprint);

    let merge = if up_to_date {
        None
    } else {
        let report = model
            .descriptor()
            .merge(&destination)
            .map_err(|e| locate(config, &model, e))?;
        write_atomically(&fingerprint_path, fingerprint.as_bytes())?;
        Some(report)
    };

    let copied_to = match &model.copy_to {
        Some(dir) => {
            let copy = dir.join(format!("{}.mlpackage", model.name));
            if merge.is_some() || !copy.join(package::MANIFEST_FILE).is_file() {
                package::copy_package(&destination, &copy)?;
            }
            Some(copy)
        }
        None => None,
    };
    drop(lock);
    Ok(BuiltModel {
        model,
        package: destination,
        merge,
        copied_to,
    })
}

/// Attaches the Cargo.toml location of the function or package an error is
/// about, when there is one: for a fixed shape, the input or the `shapes`
/// table it is about; for a split, the `chunks` value.
fn locate(config: &Config, model: &ResolvedModel, error: Error) -> Error {
    if let Some(location) = shape_location(model, error.merge_problem()) {
        return config_error(config, location, error.to_string());
    }
    let by_package = |package: &Path| {
        let package = package.canonicalize().ok();
        model
            .functions
            .iter()
            .find(|f| f.package.canonicalize().ok() == package)
    };
    let function = match error.merge_problem() {
        Some(MergeProblem::UnknownSourceFunction {
            package, function, ..
        })
        | Some(MergeProblem::OpsetCannotBeRaised {
            package, function, ..
        }) => model.functions.iter().find(|f| {
            f.package.canonicalize().ok() == package.canonicalize().ok()
                && &f.source_function == function
        }),
        _ => error.path().and_then(|path| {
            model.functions.iter().find(|f| {
                let root = f.package.canonicalize().ok();
                path.canonicalize()
                    .ok()
                    .zip(root)
                    .is_some_and(|(path, root)| path.starts_with(root))
            })
        }),
    }
    .or_else(|| error.path().and_then(by_package));
    match function {
        Some(function) => config_error(config, &function.location, error.to_string()),
        None => error,
    }
}

/// Where Cargo.toml writes the fixed shape or the split a merge problem is
/// about.
fn shape_location<'m>(
    model: &'m ResolvedModel,
    problem: Option<&MergeProblem>,
) -> Option<&'m Location> {
    let function = |target: &str| model.functions.iter().find(|f| f.target == target);
    let input = |target: &str, input: &str| {
        function(target)?
            .shapes
            .value
            .iter()
            .find(|s| s.input.value == input)
    };
    match problem? {
        MergeProblem::UnknownShapeInput {
            target,
            input: name,
            ..
        } => Some(&input(target, name)?.input.location),
        MergeProblem::ShapeNotAllowed {
            target,
            input: name,
            ..
        } => Some(&input(target, name)?.shape.location),
        MergeProblem::CannotMaterialize { target, .. }
        | MergeProblem::UnknownShapeTarget { target, .. } => {
            Some(&function(target)?.shapes.location)
        }
        MergeProblem::UnknownChunkTarget { target, .. }
        | MergeProblem::OpOverBudget { target, .. }
        | MergeProblem::CannotSplit { target, .. } => {
            Some(&function(target)?.chunks.as_ref()?.location)
        }
        _ => None,
    }
}

/// What a model was merged from: this crate's version, the resolved
/// configuration, and the size and modification time of every file of every
/// source. Cheap to compute whatever the size of the weights, and changed by
/// any edit or `touch`.
fn fingerprint(model: &ResolvedModel) -> Result<String> {
    let mut text = format!("coreml-multifunction {}\n", env!("CARGO_PKG_VERSION"));
    text += &format!(
        "model {:?} default {:?}\n",
        model.name, model.default_function
    );
    for function in &model.functions {
        text += &format!(
            "function {:?} from {:?} of {}\n",
            function.target,
            function.source_function,
            function.package.display()
        );
        for (input, shape) in function.fixed_shapes() {
            text += &format!("  shape {input:?} {shape:?}\n");
        }
        if let Some(chunks) = &function.chunks {
            text += &format!("  chunks {:?}\n", chunks.value);
        }
    }
    text += &format!("metadata {:?}\n", model.metadata);
    for source in &model.sources {
        text += &format!("source {}\n", source.display());
        for entry in walkdir::WalkDir::new(source).sort_by_file_name() {
            let entry = entry.map_err(|e| Error::io(source, "list a source package", e.into()))?;
            let metadata = entry
                .metadata()
                .map_err(|e| Error::io(entry.path(), "read file metadata", e.into()))?;
            if metadata.is_file() {
                let modified = metadata
                    .modified()
                    .ok()
                    .and_then(|time| time.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                let relative = entry.path().strip_prefix(source).unwrap_or(entry.path());
                text += &format!("  {} {} {modified}\n", relative.display(), metadata.len());
            }
        }
    }
    Ok(text)
}

/// Generates the typed API of the built models from their merged packages
/// and writes it to `out_dir`, only when the text changed (so an unchanged
/// model does not make the crate recompile). Returns the file's path.
pub(crate) fn generate_api(models: &[BuiltModel], out_dir: &Path) -> Result<PathBuf> {
    let mut interfaces = Vec::new();
    for model in models {
        let package = Package::open(&model.package)?;
        let mut interface = codegen::ModelInterface::of_package(&model.model.name, &package);
        for function in &model.model.functions {
            if let Some(chunks) = split_chunks(&package, &function.target) {
                let source = Package::open(&function.package)?;
                let description = source
                    .function(&function.source_function)
                    .map(|view| view.description.into_owned())
                    .ok_or_else(|| {
                        Error::Codegen(Box::new(crate::error::CodegenError {
                            model: model.model.name.clone(),
                            message: format!(
                                "{}: has no function {:?}",
                                function.package.display(),
                                function.source_function
                            ),
                        }))
                    })?;
                interface.splits.insert(
                    function.target.clone(),
                    codegen::SplitOrigin {
                        chunks,
                        description,
                    },
                );
            }
            if function.shapes.value.is_empty() {
                continue;
            }
            let origin = codegen::FixedShapeOrigin {
                package: function
                    .package
                    .file_name()
                    .map_or_else(String::new, |name| name.to_string_lossy().into_owned()),
                source_function: function.source_function.clone(),
                shapes: function.fixed_shapes(),
            };
            interface
                .fixed_shapes
                .insert(function.target.clone(), origin);
        }
        interfaces.push(interface);
    }
    let code = codegen::generate(&interfaces).map_err(|e| Error::Codegen(Box::new(e)))?;
    let path = out_dir.join(codegen::GENERATED_FILE);
    if fs::read_to_string(&path).ok().as_deref() != Some(code.as_str()) {
        fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, "create OUT_DIR", e))?;
        let state_dir = out_dir.join(STATE_DIR);
        fs::create_dir_all(&state_dir)
            .map_err(|e| Error::io(&state_dir, "create the build state directory", e))?;
        write_atomically(&path, code.as_bytes())?;
    }
    Ok(path)
}

/// The chunks function `target` was split into, when it was: the merged
/// package's functions `<target>_chunk1`, `<target>_chunk2`, … (consecutive)
/// with no function `target` itself. Read from the package, so it holds
/// also when the merge was skipped as up to date.
fn split_chunks(package: &Package, target: &str) -> Option<Vec<String>> {
    if package.function(target).is_some() {
        return None;
    }
    let chunks: Vec<String> = (1..)
        .map(|k| crate::merge::chunk_name(target, k))
        .take_while(|name| package.function(name).is_some())
        .collect();
    (!chunks.is_empty()).then_some(chunks)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("a file in the state directory");
    let mut temp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| Error::io(dir, "create a temporary file", e))?;
    temp.write_all(bytes)
        .map_err(|e| Error::io(path, "write the input fingerprint", e))?;
    temp.persist(path)
        .map_err(|e| Error::io(path, "write the input fingerprint", e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(key: &str, line: usize) -> Location {
        Location {
            line,
            column: 1,
            key: key.to_string(),
        }
    }

    /// A model with one fixed-shape function, `seq_8`, whose `shapes` table
    /// is on line 3 and input `input_ids` on line 4, split in two by
    /// `chunks` on line 6.
    fn model() -> ResolvedModel {
        let shape = ShapeConfig {
            input: Located {
                value: "input_ids".to_string(),
                location: at("shapes.input_ids", 4),
            },
            shape: Located {
                value: vec![1, 8],
                location: at("shapes.input_ids", 5),
            },
        };
        ResolvedModel {
            name: "encoder".to_string(),
            functions: vec![ResolvedFunction {
                target: "seq_8".to_string(),
                package: PathBuf::from("encoder.mlpackage"),
                source_function: "main".to_string(),
                shapes: Located {
                    value: vec![shape],
                    location: at("shapes", 3),
                },
                chunks: Some(Located {
                    value: Chunks::Count(2),
                    location: at("chunks", 6),
                }),
                location: at("functions.seq_8", 2),
            }],
            default_function: "seq_8".to_string(),
            metadata: Metadata::default(),
            copy_to: None,
            sources: vec![PathBuf::from("encoder.mlpackage")],
        }
    }

    #[test]
    fn shape_problems_are_located_at_the_input_the_shape_or_the_table() {
        let model = model();
        let line = |problem: MergeProblem| shape_location(&model, Some(&problem)).map(|l| l.line);
        let shapes: BTreeMap<String, Vec<u64>> = model.functions[0].fixed_shapes();
        assert_eq!(shapes["input_ids"], [1, 8]);
        assert_eq!(
            line(MergeProblem::UnknownShapeInput {
                target: "seq_8".into(),
                package: "encoder.mlpackage".into(),
                source_function: "main".into(),
                input: "input_ids".into(),
                inputs: vec!["ids".into()],
            }),
            Some(4)
        );
        assert_eq!(
            line(MergeProblem::ShapeNotAllowed {
                target: "seq_8".into(),
                package: "encoder.mlpackage".into(),
                source_function: "main".into(),
                input: "input_ids".into(),
                shape: vec![1, 8],
                allowed: "[1, 1..=4]".into(),
            }),
            Some(5)
        );
        assert_eq!(
            line(MergeProblem::CannotMaterialize {
                target: "seq_8".into(),
                package: "encoder.mlpackage".into(),
                source_function: "main".into(),
                shapes,
                reason: "an op".into(),
            }),
            Some(3)
        );
        // Not a shape problem, or about a function the model lacks: none.
        assert_eq!(line(MergeProblem::NoFunctions), None);
        assert_eq!(
            line(MergeProblem::UnknownShapeTarget {
                target: "seq_9".into(),
                targets: vec!["seq_8".into()],
            }),
            None
        );
        let config = Config {
            manifest: PathBuf::from("/crate/Cargo.toml"),
            models: Vec::new(),
        };
        let located = locate(
            &config,
            &model,
            Error::merge(MergeProblem::CannotMaterialize {
                target: "seq_8".into(),
                package: "encoder.mlpackage".into(),
                source_function: "main".into(),
                shapes: model.functions[0].fixed_shapes(),
                reason: "the op `x` cannot be inferred".into(),
            }),
        );
        assert_eq!(
            located.to_string(),
            "/crate/Cargo.toml:3:1: `shapes`: function \"seq_8\" (function \"main\" of \
             encoder.mlpackage at input_ids = [1, 8]): the op `x` cannot be inferred"
        );
    }

    #[test]
    fn split_problems_are_located_at_chunks() {
        let mut model = model();
        let line = |model: &ResolvedModel, problem: MergeProblem| {
            shape_location(model, Some(&problem)).map(|l| l.line)
        };
        let over = || MergeProblem::OpOverBudget {
            target: "seq_8".into(),
            op: "linear_0".into(),
            op_type: "linear".into(),
            bytes: 2048,
            budget: 1024,
        };
        let cannot = || MergeProblem::CannotSplit {
            target: "seq_8".into(),
            package: "encoder.mlpackage".into(),
            source_function: "main".into(),
            reason: "it has 1 op".into(),
        };
        let unknown = |target: &str| MergeProblem::UnknownChunkTarget {
            target: target.into(),
            targets: vec!["seq_8".into()],
        };
        assert_eq!(line(&model, over()), Some(6));
        assert_eq!(line(&model, cannot()), Some(6));
        assert_eq!(line(&model, unknown("seq_8")), Some(6));
        assert_eq!(line(&model, unknown("seq_9")), None);
        let config = Config {
            manifest: PathBuf::from("/crate/Cargo.toml"),
            models: Vec::new(),
        };
        let located = locate(&config, &model, Error::merge(over()));
        assert!(
            located
                .to_string()
                .starts_with("/crate/Cargo.toml:6:1: `chunks`: function \"seq_8\" cannot be split"),
            "{located}"
        );
        // A function merged whole has no `chunks` to point at.
        model.functions[0].chunks = None;
        assert_eq!(line(&model, over()), None);
    }

    #[test]
    fn chunks_reach_the_descriptor_and_the_fingerprint() {
        let mut model = model();
        model.sources.clear();
        let descriptor = format!("{:?}", model.descriptor());
        assert!(
            descriptor.contains("chunks: {\"seq_8\": Count(2)}"),
            "{descriptor}"
        );
        let two = fingerprint(&model).unwrap();
        assert!(two.contains("  chunks Count(2)\n"), "{two}");
        model.functions[0].chunks.as_mut().unwrap().value = Chunks::MaxBytes(900 << 20);
        let budget = fingerprint(&model).unwrap();
        assert!(
            budget.contains("  chunks MaxBytes(943718400)\n"),
            "{budget}"
        );
        model.functions[0].chunks = None;
        let whole = fingerprint(&model).unwrap();
        assert!(!whole.contains("chunks"), "{whole}");
        assert!(!format!("{:?}", model.descriptor()).contains("Count("));
        assert_ne!(two, budget);
        assert_ne!(two, whole);
    }
}
