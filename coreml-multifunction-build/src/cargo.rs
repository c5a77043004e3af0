//! The cargo layer: the only code that reads environment variables or
//! prints `cargo:` lines. Everything else is in [`crate::config`] (parsing
//! Cargo.toml) and [`crate::pipeline`] (merging into `OUT_DIR`).
//!
//! The whole of a `build.rs` is
//! `fn main() { coreml_multifunction_build::build().unwrap(); }`:
//!
//! ```no_run
//! coreml_multifunction_build::build().unwrap();
//! ```
//!
//! # What a build prints for cargo
//!
//! - `rerun-if-changed` for Cargo.toml and for every source package, so the
//!   build script reruns only when they change;
//! - `rerun-if-env-changed` for every environment variable it reads;
//! - `rustc-env=COREML_MULTIFUNCTION_MODEL_<NAME>=<path>` for each model,
//!   the merged package's absolute path, for `env!` in the crate;
//! - `rustc-env=COREML_MULTIFUNCTION_GENERATED=<path>`, the generated typed
//!   API, which `coreml_multifunction::include_models!()` includes.
//!
//! What it leaves in `OUT_DIR` is listed once, in the README ("What the
//! build script does"). When the build script reruns but nothing the model
//! depends on changed (same configuration, same files with the same sizes
//! and modification times), the merge is skipped and the package is left
//! untouched.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::codegen;
use crate::config::{
    Config, ConfigError, FunctionConfig, IncludeConfig, Located, Location, MetadataConfig,
    ModelConfig, ShapeConfig,
};
use crate::error::{shape_text, Error, Result};
use crate::merge::Chunks;
use crate::pipeline::{self, BuiltModel, CrateInfo};
use crate::xcrun;
use coreml_multifunction_format::compiled;
use coreml_multifunction_format::naming::quoted_list;

/// Reads `[package.metadata.multifunction]` from the crate's Cargo.toml and
/// merges every model it lists into `OUT_DIR`.
///
/// On failure it reports the error to cargo, which fails the build with
/// that message (the file, the Cargo.toml key and line, what to do) rather
/// than with a panic, and the build script ends there. It returns a
/// `Result` so that `build().unwrap()` and `build()?` both read naturally.
pub fn build() -> Result<Built> {
    let result = Builder::from_env().and_then(Builder::run);
    match result {
        Ok(built) => Ok(built),
        Err(error) => fail(&error),
    }
}

/// Reports `error` to cargo and ends the build script.
fn fail(error: &Error) -> ! {
    let message = error.to_string();
    if std::env::var_os("OUT_DIR").is_none() {
        // Not under cargo: nobody reads cargo instructions.
        eprintln!("error: {message}");
        std::process::exit(1);
    }
    // Cargo prints each `cargo::error` line as an error of this crate and
    // fails the build once the script exits, without the "process didn't
    // exit successfully" dump and backtrace hint a failing exit adds.
    let mut stdout = io::stdout().lock();
    for line in message.lines() {
        let _ = writeln!(stdout, "cargo::error={line}");
    }
    let _ = stdout.flush();
    std::process::exit(0)
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    /// Each model, in configuration order.
    pub models: Vec<BuiltModel>,
    /// The generated typed API (`include_models!()` includes it).
    pub generated: PathBuf,
}

/// A build, configured from Cargo.toml, from code, or both.
#[derive(Debug, Clone)]
pub struct Builder {
    manifest_dir: PathBuf,
    out_dir: PathBuf,
    crate_info: CrateInfo,
    read_manifest: bool,
    models: Vec<Model>,
    env_read: Vec<&'static str>,
    compile_with_xcrun: bool,
}

/// Environment variables cargo sets for build scripts that a build reads.
const CRATE_VARIABLES: [&str; 5] = [
    "CARGO_PKG_NAME",
    "CARGO_PKG_VERSION",
    "CARGO_PKG_AUTHORS",
    "CARGO_PKG_LICENSE",
    "CARGO_PKG_DESCRIPTION",
];

impl Builder {
    /// A builder for the crate whose build script is running: its
    /// directories and metadata come from the environment cargo sets.
    pub fn from_env() -> Result<Builder> {
        let var = |name: &'static str| std::env::var_os(name);
        let required = |name: &'static str| {
            var(name).map(PathBuf::from).ok_or_else(|| {
                Error::io(
                    name,
                    "read this environment variable",
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "not set; coreml_multifunction_format::build() runs from a build script (build.rs) under cargo",
                    ),
                )
            })
        };
        let text = |name: &'static str| {
            var(name)
                .map(|v| v.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let crate_info = CrateInfo {
            name: text(CRATE_VARIABLES[0]),
            version: text(CRATE_VARIABLES[1]),
            // Cargo joins `authors` with ':'.
            authors: text(CRATE_VARIABLES[2])
                .split(':')
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
                .join(", "),
            license: text(CRATE_VARIABLES[3]),
            description: text(CRATE_VARIABLES[4]),
        };
        let mut env_read = vec![
            "CARGO_MANIFEST_DIR",
            "OUT_DIR",
            "CARGO_CFG_TARGET_VENDOR",
            "HOST",
        ];
        env_read.extend(CRATE_VARIABLES);
        // The build script runs on the host: whether the *target* is an
        // Apple platform comes from cargo's CARGO_CFG_TARGET_* variables,
        // never from cfg!(), and Xcode's compiler exists only on a Mac host.
        let apple_target = text("CARGO_CFG_TARGET_VENDOR") == "apple";
        let mac_host = text("HOST").contains("apple-darwin");
        Ok(Builder {
            manifest_dir: required("CARGO_MANIFEST_DIR")?,
            out_dir: required("OUT_DIR")?,
            crate_info,
            read_manifest: true,
            models: Vec::new(),
            env_read,
            compile_with_xcrun: apple_target && mac_host,
        })
    }

    /// A builder for the crate in `manifest_dir`, writing into `out_dir`,
    /// reading no environment variable.
    pub fn new(manifest_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Builder {
        Builder {
            manifest_dir: manifest_dir.into(),
            out_dir: out_dir.into(),
            crate_info: CrateInfo::default(),
            read_manifest: true,
            models: Vec::new(),
            env_read: Vec::new(),
            compile_with_xcrun: false,
        }
    }

    /// Whether to compile each merged package to `.mlmodelc` with
    /// `xcrun coremlcompiler` at build time, so Core ML does not compile it
    /// on the device's first load. [`Builder::from_env`] turns it on when
    /// the target is an Apple platform and the build host a Mac.
    pub fn compile_with_xcrun(mut self, compile: bool) -> Self {
        self.compile_with_xcrun = compile;
        self
    }

    /// Sets the crate metadata the merged models' metadata defaults to.
    pub fn crate_info(mut self, crate_info: CrateInfo) -> Self {
        self.crate_info = crate_info;
        self
    }

    /// Whether to read `[package.metadata.multifunction]` from Cargo.toml
    /// (the default), besides the models added with [`Builder::model`].
    pub fn read_manifest(mut self, read: bool) -> Self {
        self.read_manifest = read;
        self
    }

    /// Adds a model configured in code.
    pub fn model(mut self, model: Model) -> Self {
        self.models.push(model);
        self
    }

    /// Merges every model and prints the `cargo:` lines on stdout.
    pub fn run(self) -> Result<Built> {
        self.run_with_output(&mut io::stdout().lock())
    }

    /// Merges every model and writes the `cargo:` lines to `out`.
    pub fn run_with_output(self, out: &mut dyn Write) -> Result<Built> {
        let manifest = self.manifest_dir.join("Cargo.toml");
        let mut config = if self.read_manifest {
            let text = std::fs::read_to_string(&manifest)
                .map_err(|e| Error::io(&manifest, "read Cargo.toml", e))?;
            Config::parse(&manifest, &text).map_err(|e| Error::Config(Box::new(e)))?
        } else {
            Config {
                manifest: manifest.clone(),
                models: Vec::new(),
            }
        };
        for model in &self.models {
            config.models.push(model.to_config(&self.manifest_dir)?);
        }

        let emit = |out: &mut dyn Write, line: String| {
            writeln!(out, "{line}").map_err(|e| Error::io("stdout", "print cargo instructions", e))
        };
        // Rerun lines first: should the build fail, cargo still knows what
        // to watch for a fix.
        if self.read_manifest {
            emit(
                out,
                format!("cargo:rerun-if-changed={}", manifest.display()),
            )?;
        }
        for variable in &self.env_read {
            emit(out, format!("cargo:rerun-if-env-changed={variable}"))?;
        }
        for path in watched_paths(&config, &self.manifest_dir) {
            emit(out, format!("cargo:rerun-if-changed={}", path.display()))?;
        }
        if config.models.is_empty() {
            emit(
                out,
                "cargo:warning=coreml-multifunction: no models configured; add \
                 [package.metadata.multifunction.models.<name>] to Cargo.toml"
                    .to_string(),
            )?;
        }

        let models = pipeline::build(&config, &self.manifest_dir, &self.out_dir, &self.crate_info)?;
        let generated = pipeline::generate_api(&models, &self.out_dir)?;
        if self.compile_with_xcrun {
            for model in &models {
                let compiled = self.out_dir.join(format!("{}.mlmodelc", model.model.name));
                let merged = model.merge.is_some();
                let updated = match xcrun::update(&model.package, &self.out_dir, merged) {
                    Ok(updated) => updated,
                    Err(e) => {
                        // Not fatal: the Core ML backend compiles on first load.
                        emit(
                            out,
                            format!(
                                "cargo:warning=coreml-multifunction: could not compile model `{}` with xcrun \
                                 coremlcompiler ({e}); it will be compiled on the device at first load",
                                model.model.name
                            ),
                        )?;
                        continue;
                    }
                };
                if updated == xcrun::Updated::StampPending {
                    // The stamp is written by a build once the package's
                    // key is stable; cargo reruns this script while the
                    // watched stamp does not exist.
                    emit(
                        out,
                        format!(
                            "cargo:rerun-if-changed={}",
                            compiled::stamp_path(&compiled).display()
                        ),
                    )?;
                }
                // `copy-to` ships the compiled model beside the package, for
                // an app bundle (the README's "Shipping the model in an app").
                if let Some(copy) = &model.copied_to {
                    let target = copy.with_extension("mlmodelc");
                    let recompiled = updated == xcrun::Updated::Compiled;
                    if recompiled || !target.is_dir() {
                        compiled::replace_dir_with_copy(&compiled, &target).map_err(|e| {
                            Error::io(&target, "copy the compiled model to copy-to", e)
                        })?;
                    }
                }
            }
        }
        for model in &models {
            emit(
                out,
                format!(
                    "cargo:rustc-env={}={}",
                    codegen::package_env_var(&model.model.name),
                    model.package.display()
                ),
            )?;
        }
        emit(
            out,
            format!(
                "cargo:rustc-env={}={}",
                codegen::GENERATED_ENV_VAR,
                generated.display()
            ),
        )?;
        Ok(Built { models, generated })
    }
}

/// Every source package of `config` that exists (cargo reruns a build
/// script forever when told to watch a path that does not).
fn watched_paths(config: &Config, manifest_dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for model in &config.models {
        let named = model
            .functions
            .iter()
            .map(|f| &f.package.value)
            .chain(model.includes.iter().map(|i| &i.package.value));
        for path in named {
            let absolute = manifest_dir.join(path);
            if absolute.exists() && !paths.contains(&absolute) {
                paths.push(absolute);
            }
        }
    }
    paths
}

/// A model configured in code rather than in Cargo.toml.
#[derive(Debug, Clone)]
pub struct Model {
    name: String,
    default_function: Option<String>,
    functions: Vec<(String, PathBuf, String)>,
    /// (target, input, shape), in the order given.
    fixed_shapes: Vec<(String, String, Vec<u64>)>,
    /// (target, how), in the order given.
    chunks: Vec<(String, Chunks)>,
    includes: Vec<(PathBuf, Option<String>)>,
    metadata: MetadataConfig,
    copy_to: Option<PathBuf>,
}

impl Model {
    /// A model named `name` (the output package and the generated module).
    pub fn new(name: impl Into<String>) -> Self {
        Model {
            name: name.into(),
            default_function: None,
            functions: Vec::new(),
            fixed_shapes: Vec::new(),
            chunks: Vec::new(),
            includes: Vec::new(),
            metadata: MetadataConfig::default(),
            copy_to: None,
        }
    }

    /// Adds function `main` of `package` (relative to the manifest
    /// directory) as `target`.
    pub fn function(self, target: impl Into<String>, package: impl Into<PathBuf>) -> Self {
        self.function_from(target, package, crate::package::MAIN_FUNCTION)
    }

    /// Adds function `source_function` of `package` as `target`.
    pub fn function_from(
        mut self,
        target: impl Into<String>,
        package: impl Into<PathBuf>,
        source_function: impl Into<String>,
    ) -> Self {
        self.functions
            .push((target.into(), package.into(), source_function.into()));
        self
    }

    /// Fixes input `input` of function `target` (added with
    /// [`Model::function`] or [`Model::function_from`]) to `shape`, making
    /// `target` a fixed-shape function of its flexible source: what
    /// `shapes = { <input> = [...] }` does in Cargo.toml. The shape must be
    /// one the input allows (within its range, or one of its enumerated
    /// shapes); the merge checks it and reports the input and the shapes
    /// it allows. Call once per input to fix; fixing the same input again
    /// replaces its shape. Functions of one source, each at its own
    /// shapes, share their weights.
    ///
    /// ```no_run
    /// use coreml_multifunction_build::{Builder, Model};
    ///
    /// Builder::from_env()?
    ///     .model(
    ///         Model::new("encoder")
    ///             .function("seq_8", "models/encoder.mlpackage")
    ///             .fixed_shape("seq_8", "input_ids", [1, 8])
    ///             .function("seq_32", "models/encoder.mlpackage")
    ///             .fixed_shape("seq_32", "input_ids", [1, 32])
    ///             .default_function("seq_8"),
    ///     )
    ///     .run()?;
    /// # Ok::<(), coreml_multifunction_build::Error>(())
    /// ```
    pub fn fixed_shape(
        mut self,
        target: impl Into<String>,
        input: impl Into<String>,
        shape: impl Into<Vec<u64>>,
    ) -> Self {
        let (target, input) = (target.into(), input.into());
        self.fixed_shapes
            .retain(|(t, i, _)| !(t == &target && i == &input));
        self.fixed_shapes.push((target, input, shape.into()));
        self
    }

    /// Splits function `target` (added with [`Model::function`] or
    /// [`Model::function_from`]) into chunks, each a function of the merged
    /// model named `<target>_chunk1` … `<target>_chunkN`: what
    /// `chunks = N` or `chunks = { max-bytes = "900M" }` does in Cargo.toml
    /// (see [`MultiFunctionDescriptor::chunks`](crate::merge::MultiFunctionDescriptor::chunks)).
    /// Splitting the same function again replaces how.
    ///
    /// ```no_run
    /// use coreml_multifunction_build::merge::Chunks;
    /// use coreml_multifunction_build::{Builder, Model};
    ///
    /// Builder::from_env()?
    ///     .model(
    ///         Model::new("llm")
    ///             .function("prefill", "models/prefill.mlpackage")
    ///             .chunks("prefill", Chunks::MaxBytes(900 << 20))
    ///             .function("decode", "models/decode.mlpackage")
    ///             .chunks("decode", Chunks::MaxBytes(900 << 20))
    ///             .default_function("decode"),
    ///     )
    ///     .run()?;
    /// # Ok::<(), coreml_multifunction_build::Error>(())
    /// ```
    pub fn chunks(mut self, target: impl Into<String>, chunks: Chunks) -> Self {
        let target = target.into();
        self.chunks.retain(|(t, _)| t != &target);
        self.chunks.push((target, chunks));
        self
    }

    /// Adds every function of `package`, each name prefixed with `prefix`.
    pub fn include(mut self, package: impl Into<PathBuf>, prefix: Option<&str>) -> Self {
        self.includes
            .push((package.into(), prefix.map(str::to_string)));
        self
    }

    /// Sets the default function.
    pub fn default_function(mut self, target: impl Into<String>) -> Self {
        self.default_function = Some(target.into());
        self
    }

    /// Overrides metadata fields.
    pub fn metadata(mut self, metadata: MetadataConfig) -> Self {
        self.metadata = metadata;
        self
    }

    /// Also copies the merged package into `dir` (relative to the manifest
    /// directory).
    pub fn copy_to(mut self, dir: impl Into<PathBuf>) -> Self {
        self.copy_to = Some(dir.into());
        self
    }

    fn to_config(&self, manifest_dir: &Path) -> Result<ModelConfig> {
        let here = |key: String| Location {
            line: 0,
            column: 0,
            key,
        };
        let base = format!("Model::new({:?})", self.name);
        let located = |value: String, key: String| Located {
            value,
            location: here(key),
        };
        let error = |key: String, message: String| {
            Error::Config(Box::new(ConfigError {
                manifest: manifest_dir.join("build.rs"),
                location: here(key),
                message,
            }))
        };
        let not_added = |target: &str| {
            format!(
                "{target:?} is not a function added with .function or .function_from; the \
                 functions are {}",
                quoted_list(self.functions.iter().map(|(t, _, _)| t.as_str()))
            )
        };
        let default_function = self.default_function.clone().ok_or_else(|| {
            error(
                base.clone(),
                "no default function; call .default_function(name)".to_string(),
            )
        })?;
        if !crate::config::is_model_name(&self.name) {
            return Err(error(
                base.clone(),
                format!(
                    "{:?} cannot name a model: use letters, digits and `_`",
                    self.name
                ),
            ));
        }
        for (target, input, shape) in &self.fixed_shapes {
            let key = format!("{base}.fixed_shape({target:?}, {input:?})");
            if !self.functions.iter().any(|(t, _, _)| t == target) {
                return Err(error(key, not_added(target)));
            }
            if shape.is_empty() || shape.contains(&0) {
                return Err(error(
                    key,
                    format!(
                        "{} is not a fixed shape: give every dimension's size, at least 1, \
                         such as [1, 8]",
                        shape_text(shape)
                    ),
                ));
            }
        }
        for (target, chunks) in &self.chunks {
            let key = format!("{base}.chunks({target:?})");
            if !self.functions.iter().any(|(t, _, _)| t == target) {
                return Err(error(key, not_added(target)));
            }
            match chunks {
                Chunks::Count(0) => {
                    return Err(error(
                        key,
                        "Chunks::Count(0) splits into no chunks; give at least 1".to_string(),
                    ))
                }
                Chunks::MaxBytes(0) => {
                    return Err(error(
                        key,
                        "Chunks::MaxBytes(0) fits no weights; give at least 1 byte, such as \
                         Chunks::MaxBytes(900 << 20)"
                            .to_string(),
                    ))
                }
                _ => {}
            }
        }
        Ok(ModelConfig {
            name: located(self.name.clone(), base.clone()),
            default_function: located(default_function, format!("{base}.default_function")),
            functions: self
                .functions
                .iter()
                .map(|(target, package, source)| {
                    let key = format!("{base}.function({target:?})");
                    let shapes = self
                        .fixed_shapes
                        .iter()
                        .filter(|(t, _, _)| t == target)
                        .map(|(_, input, shape)| {
                            let key = format!("{base}.fixed_shape({target:?}, {input:?})");
                            ShapeConfig {
                                input: located(input.clone(), key.clone()),
                                shape: Located {
                                    value: shape.clone(),
                                    location: here(key),
                                },
                            }
                        })
                        .collect();
                    FunctionConfig {
                        target: located(target.clone(), key.clone()),
                        package: Located {
                            value: package.clone(),
                            location: here(key.clone()),
                        },
                        source_function: located(source.clone(), key.clone()),
                        shapes: Located {
                            value: shapes,
                            location: here(key),
                        },
                        chunks: self
                            .chunks
                            .iter()
                            .find(|(t, _)| t == target)
                            .map(|(_, chunks)| Located {
                                value: *chunks,
                                location: here(format!("{base}.chunks({target:?})")),
                            }),
                    }
                })
                .collect(),
            includes: self
                .includes
                .iter()
                .map(|(package, prefix)| {
                    let key = format!("{base}.include({:?})", package.display());
                    IncludeConfig {
                        package: Located {
                            value: package.clone(),
                            location: here(key.clone()),
                        },
                        prefix: prefix.clone().map(|p| located(p, key)),
                    }
                })
                .collect(),
            metadata: self.metadata.clone(),
            copy_to: self.copy_to.clone().map(|dir| Located {
                value: dir,
                location: here(format!("{base}.copy_to")),
            }),
        })
    }
}
