//! `[package.metadata.multifunction]`: which models a crate merges.
//!
//! ```toml
//! [package.metadata.multifunction.models.combined]
//! default-function = "adapter_1"
//! functions.adapter_1 = "models/adapter_1.mlpackage"
//! functions.adapter_2 = { package = "models/adapter_2.mlpackage", source-function = "main" }
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

/// One function: `functions.<target> = "path"` or `{ package, source-function }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionConfig {
    /// Its name in the merged model (the key).
    pub target: Located<String>,
    /// The source package, as written (relative to the manifest directory).
    pub package: Located<PathBuf>,
    /// The function in the source package, `main` unless written.
    pub source_function: Located<String>,
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
        let (package, source_function) = match value.get_ref() {
            DeValue::String(_) => {
                let path = self.string(value, &key)?;
                let main = self.located(&value.span(), &key, crate::package::MAIN_FUNCTION.to_string());
                (path, main)
            }
            DeValue::Table(table) => {
                let mut package = None;
                let mut source = None;
                for (entry, inner) in table.iter() {
                    let entry_key = format!("{key}.{}", entry.get_ref());
                    match entry.get_ref().as_ref() {
                        "package" => package = Some(self.string(inner, &entry_key)?),
                        "source-function" => source = Some(self.string(inner, &entry_key)?),
                        other => {
                            return Err(self.unknown_key(entry, &key, other, &["package", "source-function"]))
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
                (package, source)
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
        })
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
}
