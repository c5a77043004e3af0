//! `[package.metadata.multifunction]`: which models a crate merges.
//!
//! ```toml
//! [package.metadata.multifunction.models.combined]
//! default-function = "adapter_1"
//! functions.adapter_1 = "models/adapter_1.mlpackage"
//! functions.adapter_2 = { package = "models/adapter_2.mlpackage", source-function = "main" }
//!
//! [package.metadata.multifunction.models.encoder]
//! default-function = "seq_8"
//! functions.seq_8 = { package = "models/encoder.mlpackage", shapes = { input_ids = [1, 8] } }
//! functions.seq_32 = { package = "models/encoder.mlpackage", shapes = { input_ids = [1, 32] } }
//!
//! [package.metadata.multifunction.models.llm]
//! default-function = "decode"
//! functions.prefill = { package = "models/prefill.mlpackage", chunks = 2 }
//! functions.decode = { package = "models/decode.mlpackage", chunks = { max-bytes = "900M" } }
//! ```
//!
//! Parsing is pure: it takes the text of Cargo.toml and never touches the
//! file system, so every error can point at a line and column of that text.
//! Checks that need the file system (do the packages exist, which functions
//! does an `include` bring) live in [`crate::pipeline`], which reports them
//! at the same locations.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::Bytes;
use crate::merge::Chunks;
use coreml_multifunction_format::naming::is_mil_identifier;

/// The table this crate reads, under `[package.metadata]`.
pub const SECTION: &str = "package.metadata.multifunction";

/// Where in Cargo.toml something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The full key, such as `package.metadata.multifunction.models.combined.default-function`.
    pub key: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // Configured in code (`cargo::Model`), not in Cargo.toml.
            write!(f, " `{}`", self.key)
        } else {
            write!(f, "{}:{}: `{}`", self.line, self.column, self.key)
        }
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Where it is.
    pub location: Location,
}

/// An error in the configuration, at a line and column of Cargo.toml.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{location}: {message}", manifest.display())]
pub struct ConfigError {
    /// The Cargo.toml at fault.
    pub manifest: PathBuf,
    /// Where.
    pub location: Location,
    /// What is wrong and what to do.
    pub message: String,
}

/// The parsed configuration of one crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The Cargo.toml it was read from.
    pub manifest: PathBuf,
    /// The models to merge, in the order written.
    pub models: Vec<ModelConfig>,
}

/// One merged model: `[package.metadata.multifunction.models.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Its key: the name of the output package and of the generated module.
    pub name: Located<String>,
    /// `default-function`.
    pub default_function: Located<String>,
    /// `functions`, in the order written.
    pub functions: Vec<FunctionConfig>,
    /// `include`: packages whose every function is added.
    pub includes: Vec<IncludeConfig>,
    /// `metadata`: overrides of the merged model's metadata.
    pub metadata: MetadataConfig,
    /// `copy-to`: a directory the merged package is also copied into.
    pub copy_to: Option<Located<PathBuf>>,
}

/// One function: `functions.<target> = "path"` or
/// `{ package, source-function, shapes, chunks }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionConfig {
    /// Its name in the merged model (the key).
    pub target: Located<String>,
    /// The source package, as written (relative to the manifest directory).
    pub package: Located<PathBuf>,
    /// The function in the source package, `main` unless written.
    pub source_function: Located<String>,
    /// `shapes`: inputs of the source function fixed to one shape each,
    /// making this a fixed-shape function of it (in the order written;
    /// empty when not written). Located at the `shapes` table, or at the
    /// function when there is none.
    pub shapes: Located<Vec<ShapeConfig>>,
    /// `chunks = N` or `chunks = { max-bytes = SIZE }`: split into chunks,
    /// each a function of the merged model (`<target>_chunk1` …). Located
    /// at the `chunks` value; `None` when not written.
    pub chunks: Option<Located<Chunks>>,
}

/// `shapes.<input> = [d0, d1, …]`: an input of a flexible source function
/// fixed to one of the shapes it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeConfig {
    /// The input's name (the key), located at the key.
    pub input: Located<String>,
    /// The shape: at least one dimension, each at least 1. Located at the
    /// array.
    pub shape: Located<Vec<u64>>,
}

/// `include = ["path"]` or `[{ package = "path", prefix = "v1_" }]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludeConfig {
    /// The source package.
    pub package: Located<PathBuf>,
    /// Prepended to each included function's name.
    pub prefix: Option<Located<String>>,
}

/// `metadata = { author, license, version, short-description, user-defined }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataConfig {
    /// Overrides the author (default: the crate's `authors`).
    pub author: Option<String>,
    /// Overrides the license (default: the crate's `license`).
    pub license: Option<String>,
    /// Overrides the version string (default: the crate's `version`).
    pub version: Option<String>,
    /// Overrides the short description (default: the crate's `description`).
    pub short_description: Option<String>,
    /// Added to (and replacing keys of) the user-defined metadata.
    pub user_defined: BTreeMap<String, String>,
}

impl Config {
    /// Parses the configuration out of the text of a Cargo.toml. A manifest
    /// without the section gives a configuration with no models.
    pub fn parse(manifest: &Path, text: &str) -> Result<Config, ConfigError> {
        let parser = Parser { manifest, text };
        let document = DeTable::parse(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            parser.error(
                &span,
                "",
                format!("Cargo.toml is not valid TOML: {}", e.message().trim()),
            )
        })?;
        let mut models = Vec::new();
        let section = document
            .get_ref()
            .iter()
            .find(|(k, _)| k.get_ref() == "package")
            .and_then(|(_, package)| parser.child(package, "metadata"))
            .and_then(|metadata| parser.child(metadata, "multifunction"));
        if let Some(section) = section {
            let table = parser.table(section, SECTION)?;
            for (key, value) in table.iter() {
                match key.get_ref().as_ref() {
                    "models" => {
                        let key_path = format!("{SECTION}.models");
                        for (name, model) in parser.table(value, &key_path)?.iter() {
                            models.push(parser.model(name, model, &key_path)?);
                        }
                    }
                    other => {
                        return Err(parser.unknown_key(key, SECTION, other, &["models"]));
                    }
                }
            }
        }
        Ok(Config {
            manifest: manifest.to_path_buf(),
            models,
        })
    }
}

struct Parser<'a> {
    manifest: &'a Path,
    text: &'a str,
}

impl Parser<'_> {
    fn location(&self, span: &Range<usize>, key: &str) -> Location {
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        Location {
            line,
            column,
            key: key.to_string(),
        }
    }

    fn error(&self, span: &Range<usize>, key: &str, message: String) -> ConfigError {
        ConfigError {
            manifest: self.manifest.to_path_buf(),
            location: self.location(span, key),
            message,
        }
    }

    fn located<T>(&self, span: &Range<usize>, key: &str, value: T) -> Located<T> {
        Located {
            value,
            location: self.location(span, key),
        }
    }

    fn child<'v, 'i>(
        &self,
        value: &'v Spanned<DeValue<'i>>,
        name: &str,
    ) -> Option<&'v Spanned<DeValue<'i>>> {
        match value.get_ref() {
            DeValue::Table(table) => table
                .iter()
                .find(|(k, _)| k.get_ref() == name)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn table<'v, 'i>(
        &self,
        value: &'v Spanned<DeValue<'i>>,
        key: &str,
    ) -> Result<&'v DeTable<'i>, ConfigError> {
        match value.get_ref() {
            DeValue::Table(table) => Ok(table),
            other => Err(self.error(
                &value.span(),
                key,
                format!("expected a table, found {}", kind(other)),
            )),
        }
    }

    fn string(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
    ) -> Result<Located<String>, ConfigError> {
        match value.get_ref() {
            DeValue::String(text) => Ok(self.located(&value.span(), key, text.to_string())),
            other => Err(self.error(
                &value.span(),
                key,
                format!("expected a string, found {}", kind(other)),
            )),
        }
    }

    fn unknown_key(
        &self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        parent: &str,
        name: &str,
        known: &[&str],
    ) -> ConfigError {
        self.error(
            &key.span(),
            &format!("{parent}.{name}"),
            format!(
                "unknown key `{name}`; the keys here are {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }

    fn model(
        &self,
        name: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
        parent: &str,
    ) -> Result<ModelConfig, ConfigError> {
        let key = format!("{parent}.{}", name.get_ref());
        let model_name = self.located(&name.span(), &key, name.get_ref().to_string());
        if !is_model_name(&model_name.value) {
            return Err(self.error(
                &name.span(),
                &key,
                format!(
                    "{:?} cannot name a model: it names the output package and the generated Rust \
                     module, so use letters, digits and `_` (not starting with a digit)",
                    model_name.value
                ),
            ));
        }
        const KEYS: &[&str] = &[
            "default-function",
            "functions",
            "include",
            "metadata",
            "copy-to",
        ];
        let table = self.table(value, &key)?;
        let mut default_function = None;
        let mut functions = Vec::new();
        let mut includes = Vec::new();
        let mut metadata = MetadataConfig::default();
        let mut copy_to = None;
        for (entry, value) in table.iter() {
            let entry_key = format!("{key}.{}", entry.get_ref());
            match entry.get_ref().as_ref() {
                "default-function" => default_function = Some(self.string(value, &entry_key)?),
                "functions" => {
                    for (target, function) in self.table(value, &entry_key)?.iter() {
                        functions.push(self.function(target, function, &entry_key)?);
                    }
                }
                "include" => includes = self.includes(value, &entry_key)?,
                "metadata" => metadata = self.metadata(value, &entry_key)?,
                "copy-to" => {
                    let dir = self.string(value, &entry_key)?;
                    copy_to = Some(Located {
                        value: PathBuf::from(dir.value),
                        location: dir.location,
                    });
                }
                other => return Err(self.unknown_key(entry, &key, other, KEYS)),
            }
        }
        if functions.is_empty() && includes.is_empty() {
            return Err(self.error(
                &value.span(),
                &key,
                format!(
                    "model `{}` has no functions; add `functions.<name> = \"path/to/model.mlpackage\"`",
                    model_name.value
                ),
            ));
        }
        let default_function = default_function.ok_or_else(|| {
            self.error(
                &value.span(),
                &key,
                format!(
                    "model `{}` has no `default-function`; set it to the function a plain load \
                     runs, one of {}",
                    model_name.value,
                    functions
                        .iter()
                        .map(|f| format!("{:?}", f.target.value))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        // Without includes every function is known here, so check the default
        // now; with includes the pipeline checks it once they are listed.
        if includes.is_empty()
            && !functions
                .iter()
                .any(|f| f.target.value == default_function.value)
        {
            return Err(ConfigError {
                manifest: self.manifest.to_path_buf(),
                location: default_function.location.clone(),
                message: format!(
                    "{:?} is not one of the functions of model `{}`; set it to one of {}",
                    default_function.value,
                    model_name.value,
                    functions
                        .iter()
                        .map(|f| format!("{:?}", f.target.value))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok(ModelConfig {
            name: model_name,
            default_function,
            functions,
            includes,
            metadata,
            copy_to,
        })
    }

    fn function(
        &self,
        target: &Spanned<std::borrow::Cow<'_, str>>,
        value: &Spanned<DeValue<'_>>,
        parent: &str,
    ) -> Result<FunctionConfig, ConfigError> {
        let key = format!("{parent}.{}", target.get_ref());
        let name = self.located(&target.span(), &key, target.get_ref().to_string());
        if !is_mil_identifier(&name.value) {
            return Err(self.error(
                &target.span(),
                &key,
                format!(
                    "{:?} cannot name a function: Core ML function names match \
                     [A-Za-z_][A-Za-z0-9_@]* (letters, digits, _ and @, not starting with a digit)",
                    name.value
                ),
            ));
        }
        let no_shapes = || self.located(&value.span(), &key, Vec::new());
        let (package, source_function, shapes, chunks) = match value.get_ref() {
            DeValue::String(_) => {
                let path = self.string(value, &key)?;
                let main = self.located(&value.span(), &key, crate::package::MAIN_FUNCTION.to_string());
                (path, main, no_shapes(), None)
            }
            DeValue::Table(table) => {
                let mut package = None;
                let mut source = None;
                let mut shapes = None;
                let mut chunks = None;
                for (entry, inner) in table.iter() {
                    let entry_key = format!("{key}.{}", entry.get_ref());
                    match entry.get_ref().as_ref() {
                        "package" => package = Some(self.string(inner, &entry_key)?),
                        "source-function" => source = Some(self.string(inner, &entry_key)?),
                        "shapes" => shapes = Some(self.shapes(inner, &entry_key)?),
                        "chunks" => chunks = Some(self.chunks(inner, &entry_key)?),
                        other => {
                            return Err(self.unknown_key(
                                entry,
                                &key,
                                other,
                                &["package", "source-function", "shapes", "chunks"],
                            ))
                        }
                    }
                }
                let package = package.ok_or_else(|| {
                    self.error(
                        &value.span(),
                        &key,
                        "this function has no `package`; add `package = \"path/to/model.mlpackage\"`"
                            .to_string(),
                    )
                })?;
                let source = source.unwrap_or_else(|| {
                    self.located(&value.span(), &key, crate::package::MAIN_FUNCTION.to_string())
                });
                (package, source, shapes.unwrap_or_else(no_shapes), chunks)
            }
            other => {
                return Err(self.error(
                    &value.span(),
                    &key,
                    format!(
                        "expected a package path or a table {{ package = \"…\", source-function = \"…\" }}, \
                         found {}",
                        kind(other)
                    ),
                ))
            }
        };
        Ok(FunctionConfig {
            target: name,
            package: Located {
                value: PathBuf::from(package.value),
                location: package.location,
            },
            source_function,
            shapes,
            chunks,
        })
    }

    /// `chunks = N` or `chunks = { max-bytes = SIZE }`.
    fn chunks(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
    ) -> Result<Located<Chunks>, ConfigError> {
        const FORM: &str = "write a number of chunks, such as `chunks = 2`, or a budget of weight \
                            bytes per chunk, such as `chunks = { max-bytes = \"900M\" }`";
        let chunks = match value.get_ref() {
            DeValue::Integer(integer) => {
                match i128::from_str_radix(integer.as_str(), integer.radix()) {
                    Ok(count) if count >= 1 => match usize::try_from(count) {
                        Ok(count) => Chunks::Count(count),
                        Err(_) => {
                            return Err(self.error(
                                &value.span(),
                                key,
                                format!("{integer} chunks is too many; {FORM}"),
                            ))
                        }
                    },
                    Ok(count) => {
                        return Err(self.error(
                            &value.span(),
                            key,
                            format!(
                                "a function cannot be split into {count} chunks; give at least \
                                 1, or {FORM}"
                            ),
                        ))
                    }
                    Err(_) => {
                        return Err(self.error(
                            &value.span(),
                            key,
                            format!("{integer} chunks is too many; {FORM}"),
                        ))
                    }
                }
            }
            DeValue::Table(table) => {
                let mut max_bytes = None;
                for (entry, inner) in table.iter() {
                    let entry_key = format!("{key}.{}", entry.get_ref());
                    match entry.get_ref().as_ref() {
                        "max-bytes" => max_bytes = Some(self.size(inner, &entry_key)?),
                        other => return Err(self.unknown_key(entry, key, other, &["max-bytes"])),
                    }
                }
                match max_bytes {
                    Some(bytes) => Chunks::MaxBytes(bytes),
                    None => {
                        return Err(self.error(
                            &value.span(),
                            key,
                            format!("this chunks table has no `max-bytes`; {FORM}"),
                        ))
                    }
                }
            }
            other => {
                return Err(self.error(
                    &value.span(),
                    key,
                    format!(
                        "expected a number of chunks or a table, found {}; {FORM}",
                        kind(other)
                    ),
                ))
            }
        };
        Ok(self.located(&value.span(), key, chunks))
    }

    /// A size of at least 1 byte: an integer, or a string such as `"900M"`
    /// ([`Bytes`]'s `FromStr`).
    fn size(&self, value: &Spanned<DeValue<'_>>, key: &str) -> Result<u64, ConfigError> {
        let bytes = match value.get_ref() {
            DeValue::Integer(integer) => {
                match i128::from_str_radix(integer.as_str(), integer.radix()) {
                    Ok(bytes) if (0..=u64::MAX as i128).contains(&bytes) => bytes as u64,
                    Ok(bytes) if bytes < 0 => {
                        return Err(self.error(
                            &value.span(),
                            key,
                            format!(
                                "{bytes} is not a size; give a whole number of bytes, at least \
                                 1, or a string such as \"900M\""
                            ),
                        ))
                    }
                    _ => {
                        return Err(self.error(
                            &value.span(),
                            key,
                            format!("{integer} is too large a size (at most {} bytes)", u64::MAX),
                        ))
                    }
                }
            }
            DeValue::String(text) => {
                text.parse::<Bytes>()
                    .map_err(|message| self.error(&value.span(), key, message))?
                    .0
            }
            other => {
                return Err(self.error(
                    &value.span(),
                    key,
                    format!(
                        "expected a size, such as \"900M\", \"1G\" or 943718400, found {}",
                        kind(other)
                    ),
                ))
            }
        };
        if bytes == 0 {
            return Err(self.error(
                &value.span(),
                key,
                "a budget of 0 bytes fits no weights; give at least 1 byte, such as \"900M\""
                    .to_string(),
            ));
        }
        Ok(bytes)
    }

    /// `shapes = { <input> = [d0, d1, …], … }`.
    fn shapes(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
    ) -> Result<Located<Vec<ShapeConfig>>, ConfigError> {
        let DeValue::Table(table) = value.get_ref() else {
            return Err(self.error(
                &value.span(),
                key,
                format!(
                    "expected a table of input shapes, such as `shapes = {{ input_ids = [1, 8] }}`, \
                     found {}",
                    kind(value.get_ref())
                ),
            ));
        };
        let mut shapes = Vec::new();
        for (input, shape) in table.iter() {
            let input_key = format!("{key}.{}", input.get_ref());
            shapes.push(ShapeConfig {
                input: self.located(&input.span(), &input_key, input.get_ref().to_string()),
                shape: self.shape(shape, &input_key, input.get_ref())?,
            });
        }
        Ok(self.located(&value.span(), key, shapes))
    }

    /// One fixed shape: a non-empty array of sizes, each at least 1.
    fn shape(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
        input: &str,
    ) -> Result<Located<Vec<u64>>, ConfigError> {
        let example = format!("`{} = [1, 8]`", toml_key(input));
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.error(
                &value.span(),
                key,
                format!(
                    "expected the shape of input {input:?} as an array of its dimensions, such as \
                     {example}, found {}",
                    kind(value.get_ref())
                ),
            ));
        };
        if items.is_empty() {
            return Err(self.error(
                &value.span(),
                key,
                format!(
                    "the shape of input {input:?} is empty; list every dimension, such as {example}"
                ),
            ));
        }
        let mut shape = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{index}]");
            let DeValue::Integer(integer) = item.get_ref() else {
                return Err(self.error(
                    &item.span(),
                    &item_key,
                    format!(
                        "expected a dimension (a whole number, at least 1), found {}; write the \
                         shape as {example}",
                        kind(item.get_ref())
                    ),
                ));
            };
            match i128::from_str_radix(integer.as_str(), integer.radix()) {
                Ok(size) if size >= 1 && size <= i64::MAX as i128 => shape.push(size as u64),
                Ok(size) if size < 1 => {
                    return Err(self.error(
                        &item.span(),
                        &item_key,
                        format!(
                            "dimension {index} of input {input:?} is {size}; a fixed shape gives \
                             every dimension's size, at least 1 (a fixed shape has no flexible \
                             dimensions)"
                        ),
                    ))
                }
                _ => {
                    return Err(self.error(
                        &item.span(),
                        &item_key,
                        format!(
                            "dimension {index} of input {input:?} is {integer}, too large for a \
                             Core ML shape (at most {})",
                            i64::MAX
                        ),
                    ))
                }
            }
        }
        Ok(self.located(&value.span(), key, shape))
    }

    fn includes(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
    ) -> Result<Vec<IncludeConfig>, ConfigError> {
        let DeValue::Array(items) = value.get_ref() else {
            return Err(self.error(
                &value.span(),
                key,
                format!(
                    "expected an array of package paths, found {}",
                    kind(value.get_ref())
                ),
            ));
        };
        let mut includes = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{index}]");
            let include = match item.get_ref() {
                DeValue::String(_) => {
                    let path = self.string(item, &item_key)?;
                    IncludeConfig {
                        package: Located {
                            value: PathBuf::from(path.value),
                            location: path.location,
                        },
                        prefix: None,
                    }
                }
                DeValue::Table(table) => {
                    let mut package = None;
                    let mut prefix = None;
                    for (entry, inner) in table.iter() {
                        let entry_key = format!("{item_key}.{}", entry.get_ref());
                        match entry.get_ref().as_ref() {
                            "package" => package = Some(self.string(inner, &entry_key)?),
                            "prefix" => prefix = Some(self.string(inner, &entry_key)?),
                            other => {
                                return Err(self.unknown_key(
                                    entry,
                                    &item_key,
                                    other,
                                    &["package", "prefix"],
                                ))
                            }
                        }
                    }
                    let package = package.ok_or_else(|| {
                        self.error(
                            &item.span(),
                            &item_key,
                            "this include has no `package`".to_string(),
                        )
                    })?;
                    IncludeConfig {
                        package: Located {
                            value: PathBuf::from(package.value),
                            location: package.location,
                        },
                        prefix,
                    }
                }
                other => {
                    return Err(self.error(
                        &item.span(),
                        &item_key,
                        format!(
                            "expected a package path or {{ package, prefix }}, found {}",
                            kind(other)
                        ),
                    ))
                }
            };
            includes.push(include);
        }
        Ok(includes)
    }

    fn metadata(
        &self,
        value: &Spanned<DeValue<'_>>,
        key: &str,
    ) -> Result<MetadataConfig, ConfigError> {
        const KEYS: &[&str] = &[
            "author",
            "license",
            "version",
            "short-description",
            "user-defined",
        ];
        let mut metadata = MetadataConfig::default();
        for (entry, inner) in self.table(value, key)?.iter() {
            let entry_key = format!("{key}.{}", entry.get_ref());
            match entry.get_ref().as_ref() {
                "author" => metadata.author = Some(self.string(inner, &entry_key)?.value),
                "license" => metadata.license = Some(self.string(inner, &entry_key)?.value),
                "version" => metadata.version = Some(self.string(inner, &entry_key)?.value),
                "short-description" => {
                    metadata.short_description = Some(self.string(inner, &entry_key)?.value)
                }
                "user-defined" => {
                    for (name, text) in self.table(inner, &entry_key)?.iter() {
                        let text_key = format!("{entry_key}.{}", name.get_ref());
                        let text = self.string(text, &text_key)?;
                        metadata
                            .user_defined
                            .insert(name.get_ref().to_string(), text.value);
                    }
                }
                other => return Err(self.unknown_key(entry, key, other, KEYS)),
            }
        }
        Ok(metadata)
    }
}

/// Whether `name` can name a model: a Rust module and a file name.
pub(crate) fn is_model_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && coreml_multifunction_format::naming::snake(name) == name
}

/// `name` as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/crate/Cargo.toml"), text)
    }

    const GOOD: &str = r#"[package]
name = "app"
version = "0.1.0"

[package.metadata.multifunction.models.combined]
default-function = "adapter_1"
functions.adapter_2 = { package = "models/adapter_2.mlpackage", source-function = "main" }
functions.adapter_1 = "models/adapter_1.mlpackage"
copy-to = "Resources"
metadata = { author = "Team", user-defined = { task = "demo" } }
"#;

    #[test]
    fn the_documented_form_parses_in_order() {
        let config = parse(GOOD).unwrap();
        let model = &config.models[0];
        assert_eq!(model.name.value, "combined");
        assert_eq!(model.default_function.value, "adapter_1");
        let targets: Vec<&str> = model
            .functions
            .iter()
            .map(|f| f.target.value.as_str())
            .collect();
        assert_eq!(targets, ["adapter_2", "adapter_1"], "order as written");
        assert_eq!(
            model.functions[1].package.value,
            Path::new("models/adapter_1.mlpackage")
        );
        assert_eq!(model.functions[1].source_function.value, "main");
        assert_eq!(
            model.copy_to.as_ref().unwrap().value,
            Path::new("Resources")
        );
        assert_eq!(model.metadata.author.as_deref(), Some("Team"));
        assert_eq!(model.metadata.user_defined["task"], "demo");
        assert_eq!(model.default_function.location.line, 6);
        assert_eq!(model.default_function.location.column, 20);
    }

    #[test]
    fn a_manifest_without_the_section_has_no_models() {
        assert!(parse("[package]\nname = \"x\"\n")
            .unwrap()
            .models
            .is_empty());
    }

    fn error(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let e = error(&GOOD.replace("copy-to", "copy_to"));
        assert_eq!(
            e.location.key,
            "package.metadata.multifunction.models.combined.copy_to"
        );
        assert_eq!((e.location.line, e.location.column), (9, 1));
        assert!(e.message.contains("`copy-to`"), "{e}");
        assert!(
            e.to_string()
                .starts_with("/crate/Cargo.toml:9:1: `package.metadata"),
            "{e}"
        );
    }

    #[test]
    fn bad_types_say_what_was_expected() {
        let e = error(&GOOD.replace("default-function = \"adapter_1\"", "default-function = 1"));
        assert_eq!(e.message, "expected a string, found an integer");
        assert_eq!(e.location.line, 6);
    }

    #[test]
    fn an_unknown_default_lists_the_functions() {
        let e = error(&GOOD.replace(
            "default-function = \"adapter_1\"",
            "default-function = \"adapter_9\"",
        ));
        assert_eq!(
            e.location.key,
            "package.metadata.multifunction.models.combined.default-function"
        );
        assert!(e.message.contains("\"adapter_2\", \"adapter_1\""), "{e}");
    }

    #[test]
    fn invalid_function_and_model_names_are_refused() {
        let e = error(&GOOD.replace("functions.adapter_1 =", "functions.\"1st\" ="));
        assert!(e.message.contains("cannot name a function"), "{e}");
        let e = error(&GOOD.replace("models.combined", "models.Combined-Model"));
        assert!(e.message.contains("cannot name a model"), "{e}");
    }

    #[test]
    fn syntax_errors_carry_a_location() {
        let e = error("[package\nname = 1");
        assert_eq!(e.location.line, 1);
        assert!(e.message.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn a_function_table_needs_a_package() {
        let e = error(&GOOD.replace("package = \"models/adapter_2.mlpackage\", ", ""));
        assert!(e.message.contains("no `package`"), "{e}");
    }

    /// A manifest with one model whose function `seq_8` is written as
    /// `functions.seq_8 = { package = …, <rest> }` on line 3.
    fn shaped(rest: &str) -> String {
        format!(
            "[package.metadata.multifunction.models.encoder]\n\
             default-function = \"seq_8\"\n\
             functions.seq_8 = {{ package = \"models/encoder.mlpackage\", {rest} }}\n"
        )
    }

    const SHAPES_KEY: &str = "package.metadata.multifunction.models.encoder.functions.seq_8.shapes";

    #[test]
    fn shapes_parse_in_order_with_their_locations() {
        let config = parse(&shaped("shapes = { input_ids = [1, 8], mask = [1, 0x8] }")).unwrap();
        let function = &config.models[0].functions[0];
        let shapes = &function.shapes;
        assert_eq!(shapes.location.key, SHAPES_KEY);
        assert_eq!((shapes.location.line, shapes.location.column), (3, 68));
        let written: Vec<(&str, &[u64])> = shapes
            .value
            .iter()
            .map(|s| (s.input.value.as_str(), s.shape.value.as_slice()))
            .collect();
        assert_eq!(written, [("input_ids", &[1, 8][..]), ("mask", &[1, 8][..])]);
        let first = &shapes.value[0];
        assert_eq!(first.input.location.key, format!("{SHAPES_KEY}.input_ids"));
        assert_eq!(first.shape.location.key, format!("{SHAPES_KEY}.input_ids"));
        assert_eq!(first.input.location.column, 70);
        assert_eq!(first.shape.location.column, 82);
        assert_eq!(function.source_function.value, "main");
    }

    #[test]
    fn shapes_may_be_a_dotted_or_separate_table() {
        let text = "[package.metadata.multifunction.models.encoder]\n\
                    default-function = \"seq_8\"\n\
                    functions.seq_8.package = \"models/encoder.mlpackage\"\n\
                    functions.seq_8.source-function = \"encode\"\n\
                    functions.seq_8.shapes.input_ids = [1, 8]\n\
                    functions.seq_32 = \"models/encoder.mlpackage\"\n\
                    \n\
                    [package.metadata.multifunction.models.encoder.functions.seq_32.shapes]\n\
                    input_ids = [1, 32]\n";
        let error = parse(text).unwrap_err();
        // A string-form function cannot also be a table: TOML itself says so.
        assert!(error.message.contains("not valid TOML"), "{error}");
        let text = text.replace(
            "functions.seq_32 = \"models/encoder.mlpackage\"\n",
            "functions.seq_32.package = \"models/encoder.mlpackage\"\n",
        );
        let config = parse(&text).unwrap();
        let functions = &config.models[0].functions;
        assert_eq!(functions[0].source_function.value, "encode");
        assert_eq!(functions[0].shapes.value[0].shape.value, [1, 8]);
        assert_eq!(functions[1].shapes.value[0].shape.value, [1, 32]);
        assert_eq!(functions[1].shapes.value[0].input.location.line, 9);
    }

    #[test]
    fn a_function_without_shapes_has_none_located_at_the_function() {
        let config = parse(GOOD).unwrap();
        for function in &config.models[0].functions {
            assert!(function.shapes.value.is_empty());
            assert_eq!(function.shapes.location.key, function.target.location.key);
        }
        let config = parse(&shaped("shapes = {}")).unwrap();
        assert!(config.models[0].functions[0].shapes.value.is_empty());
    }

    #[test]
    fn shapes_that_are_not_a_table_say_what_to_write() {
        for (written, found) in [
            ("shapes = [1, 8]", "an array"),
            ("shapes = \"1x8\"", "a string"),
            ("shapes = 8", "an integer"),
        ] {
            let e = error(&shaped(written));
            assert_eq!(e.location.key, SHAPES_KEY, "{written}");
            assert_eq!((e.location.line, e.location.column), (3, 68), "{written}");
            assert_eq!(
                e.message,
                format!(
                    "expected a table of input shapes, such as `shapes = {{ input_ids = [1, 8] }}`, \
                     found {found}"
                )
            );
        }
    }

    #[test]
    fn a_shape_that_is_not_an_array_says_what_to_write() {
        let e = error(&shaped("shapes = { input_ids = \"1x8\" }"));
        assert_eq!(e.location.key, format!("{SHAPES_KEY}.input_ids"));
        assert_eq!((e.location.line, e.location.column), (3, 82));
        assert_eq!(
            e.message,
            "expected the shape of input \"input_ids\" as an array of its dimensions, such as \
             `input_ids = [1, 8]`, found a string"
        );
        let e = error(&shaped("shapes = { input_ids = { d0 = 1 } }"));
        assert!(e.message.ends_with("found a table"), "{e}");
        // An input name that is no bare key is quoted in the example.
        let e = error(&shaped("shapes = { \"input ids\" = 8 }"));
        assert_eq!(e.location.key, format!("{SHAPES_KEY}.input ids"));
        assert!(e.message.contains("`\"input ids\" = [1, 8]`"), "{e}");
    }

    #[test]
    fn an_empty_shape_is_refused() {
        let e = error(&shaped("shapes = { input_ids = [] }"));
        assert_eq!(e.location.key, format!("{SHAPES_KEY}.input_ids"));
        assert_eq!(
            e.message,
            "the shape of input \"input_ids\" is empty; list every dimension, such as \
             `input_ids = [1, 8]`"
        );
    }

    #[test]
    fn dimensions_that_are_not_integers_are_named_by_index() {
        for (written, found) in [
            ("[1, 8.0]", "a float"),
            ("[1, \"8\"]", "a string"),
            ("[1, true]", "a boolean"),
            ("[1, [8]]", "an array"),
        ] {
            let e = error(&shaped(&format!("shapes = {{ input_ids = {written} }}")));
            assert_eq!(
                e.location.key,
                format!("{SHAPES_KEY}.input_ids[1]"),
                "{written}"
            );
            assert_eq!((e.location.line, e.location.column), (3, 86), "{written}");
            assert_eq!(
                e.message,
                format!(
                    "expected a dimension (a whole number, at least 1), found {found}; write the \
                     shape as `input_ids = [1, 8]`"
                )
            );
        }
    }

    #[test]
    fn zero_and_negative_dimensions_are_refused() {
        for (written, index, size) in [
            ("[0, 8]", 0, "0"),
            ("[1, -1]", 1, "-1"),
            ("[1, 8, -64]", 2, "-64"),
        ] {
            let e = error(&shaped(&format!("shapes = {{ input_ids = {written} }}")));
            assert_eq!(
                e.location.key,
                format!("{SHAPES_KEY}.input_ids[{index}]"),
                "{written}"
            );
            assert_eq!(
                e.message,
                format!(
                    "dimension {index} of input \"input_ids\" is {size}; a fixed shape gives every \
                     dimension's size, at least 1 (a fixed shape has no flexible dimensions)"
                )
            );
        }
    }

    #[test]
    fn an_enormous_dimension_is_refused() {
        let e = error(&shaped("shapes = { input_ids = [1, 0xffffffffffffffff] }"));
        assert_eq!(e.location.key, format!("{SHAPES_KEY}.input_ids[1]"));
        assert!(e.message.contains("too large"), "{e}");
        assert!(e.message.contains("0xffffffffffffffff"), "{e}");
    }

    #[test]
    fn an_unknown_key_beside_shapes_lists_shapes() {
        let e = error(&shaped("shape = { input_ids = [1, 8] }"));
        assert_eq!(
            e.location.key,
            "package.metadata.multifunction.models.encoder.functions.seq_8.shape"
        );
        assert_eq!(
            e.message,
            "unknown key `shape`; the keys here are `package`, `source-function`, `shapes`, `chunks`"
        );
    }

    #[test]
    fn errors_inside_shapes_print_the_file_line_and_full_key() {
        let e = error(&shaped("shapes = { input_ids = [1, 0] }"));
        assert!(
            e.to_string().starts_with(
                "/crate/Cargo.toml:3:86: `package.metadata.multifunction.models.encoder.functions.\
                 seq_8.shapes.input_ids[1]`: dimension 1"
            ),
            "{e}"
        );
    }

    const CHUNKS_KEY: &str = "package.metadata.multifunction.models.encoder.functions.seq_8.chunks";

    fn chunks(rest: &str) -> Located<Chunks> {
        parse(&shaped(rest)).unwrap().models[0].functions[0]
            .chunks
            .clone()
            .expect("chunks written")
    }

    #[test]
    fn chunks_are_a_count_or_a_budget_located_at_the_value() {
        let count = chunks("chunks = 2");
        assert_eq!(count.value, Chunks::Count(2));
        assert_eq!(count.location.key, CHUNKS_KEY);
        assert_eq!((count.location.line, count.location.column), (3, 68));
        assert_eq!(chunks("chunks = 1").value, Chunks::Count(1));
        for (written, bytes) in [
            ("\"900M\"", 900u64 << 20),
            ("\"1G\"", 1 << 30),
            ("\"512K\"", 512 << 10),
            ("\"4096\"", 4096),
            ("943718400", 943718400),
            ("0x400", 1024),
        ] {
            let budget = chunks(&format!("chunks = {{ max-bytes = {written} }}"));
            assert_eq!(budget.value, Chunks::MaxBytes(bytes), "{written}");
            assert_eq!(budget.location.key, CHUNKS_KEY);
        }
        // With shapes too: materialized, then split.
        let config = parse(&shaped("shapes = { input_ids = [1, 8] }, chunks = 3")).unwrap();
        let function = &config.models[0].functions[0];
        assert_eq!(function.shapes.value.len(), 1);
        assert_eq!(function.chunks.as_ref().unwrap().value, Chunks::Count(3));
        // Not written: merged whole.
        assert!(parse(GOOD).unwrap().models[0]
            .functions
            .iter()
            .all(|f| f.chunks.is_none()));
    }

    #[test]
    fn chunks_may_be_a_dotted_or_separate_table() {
        let text = "[package.metadata.multifunction.models.llm]\n\
                    default-function = \"decode\"\n\
                    functions.prefill.package = \"models/prefill.mlpackage\"\n\
                    functions.prefill.chunks.max-bytes = \"1G\"\n\
                    functions.decode.package = \"models/decode.mlpackage\"\n\
                    \n\
                    [package.metadata.multifunction.models.llm.functions.decode.chunks]\n\
                    max-bytes = 1024\n";
        let config = parse(text).unwrap();
        let functions = &config.models[0].functions;
        assert_eq!(
            functions[0].chunks.as_ref().unwrap().value,
            Chunks::MaxBytes(1 << 30)
        );
        assert_eq!(
            functions[1].chunks.as_ref().unwrap().value,
            Chunks::MaxBytes(1024)
        );
    }

    #[test]
    fn the_default_may_name_a_split_function() {
        let config = parse(&shaped("chunks = 2")).unwrap();
        assert_eq!(config.models[0].default_function.value, "seq_8");
    }

    #[test]
    fn counts_that_are_not_at_least_one_are_refused_at_chunks() {
        for written in ["0", "-1", "-64"] {
            let e = error(&shaped(&format!("chunks = {written}")));
            assert_eq!(e.location.key, CHUNKS_KEY, "{written}");
            assert_eq!((e.location.line, e.location.column), (3, 68), "{written}");
            assert!(
                e.message.starts_with("a function cannot be split into -")
                    || e.message
                        .starts_with("a function cannot be split into 0 chunks"),
                "{written}: {e}"
            );
            assert!(e.message.contains("`chunks = 2`"), "{e}");
        }
    }

    #[test]
    fn chunks_that_are_no_count_or_table_say_what_to_write() {
        for (written, found) in [
            ("2.0", "a float"),
            ("\"2\"", "a string"),
            ("\"900M\"", "a string"),
            ("true", "a boolean"),
            ("[2]", "an array"),
        ] {
            let e = error(&shaped(&format!("chunks = {written}")));
            assert_eq!(e.location.key, CHUNKS_KEY, "{written}");
            assert_eq!((e.location.line, e.location.column), (3, 68), "{written}");
            assert_eq!(
                e.message,
                format!(
                    "expected a number of chunks or a table, found {found}; write a number of \
                     chunks, such as `chunks = 2`, or a budget of weight bytes per chunk, such \
                     as `chunks = {{ max-bytes = \"900M\" }}`"
                ),
                "{written}"
            );
        }
    }

    #[test]
    fn the_chunks_table_takes_max_bytes_only() {
        let e = error(&shaped("chunks = { max_bytes = \"900M\" }"));
        assert_eq!(e.location.key, format!("{CHUNKS_KEY}.max_bytes"));
        assert_eq!((e.location.line, e.location.column), (3, 70));
        assert_eq!(
            e.message,
            "unknown key `max_bytes`; the keys here are `max-bytes`"
        );
        let e = error(&shaped("chunks = { max-bytes = \"1G\", count = 2 }"));
        assert_eq!(e.location.key, format!("{CHUNKS_KEY}.count"));
        let e = error(&shaped("chunks = {}"));
        assert_eq!(e.location.key, CHUNKS_KEY);
        assert_eq!((e.location.line, e.location.column), (3, 68));
        assert!(
            e.message
                .starts_with("this chunks table has no `max-bytes`"),
            "{e}"
        );
    }

    #[test]
    fn bad_sizes_are_refused_at_max_bytes() {
        let key = format!("{CHUNKS_KEY}.max-bytes");
        for (written, message) in [
            ("\"900MB\"", "\"900MB\" is not a size"),
            ("\"-1\"", "\"-1\" is not a size"),
            ("\"1.5G\"", "\"1.5G\" is not a size"),
            ("\"\"", "the size is empty"),
            ("\"0\"", "a budget of 0 bytes fits no weights"),
            ("\"0M\"", "a budget of 0 bytes fits no weights"),
            ("0", "a budget of 0 bytes fits no weights"),
            ("-1", "-1 is not a size"),
            (
                "1.5",
                "expected a size, such as \"900M\", \"1G\" or 943718400, found a float",
            ),
            ("true", "expected a size"),
            ("\"99999999999G\"", "\"99999999999G\" is too large a size"),
        ] {
            let e = error(&shaped(&format!("chunks = {{ max-bytes = {written} }}")));
            assert_eq!(e.location.key, key, "{written}");
            assert_eq!((e.location.line, e.location.column), (3, 82), "{written}");
            assert!(e.message.starts_with(message), "{written}: {e}");
        }
        let e = error(&shaped("chunks = { max-bytes = \"900MB\" }"));
        assert!(
            e.to_string().starts_with(
                "/crate/Cargo.toml:3:82: `package.metadata.multifunction.models.encoder.functions.\
                 seq_8.chunks.max-bytes`: \"900MB\" is not a size; write a whole number of bytes, \
                 optionally followed by K, M or G (powers of 1024), such as \"900M\""
            ),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_key_beside_chunks_lists_chunks() {
        let e = error(&shaped("chunk = 2"));
        assert_eq!(
            e.message,
            "unknown key `chunk`; the keys here are `package`, `source-function`, `shapes`, \
             `chunks`"
        );
    }
}
