//! Reading and writing `.mlpackage` directories.
//!
//! ```text
//! Foo.mlpackage/
//! ├── Manifest.json                  the index of items ([`manifest`])
//! └── Data/com.apple.CoreML/
//!     ├── model.mlmodel              the root model specification ([`spec`])
//!     └── weights/weight.bin         blob storage v2 ([`blob`])
//! ```
//!
//! [`Package::open`] validates everything it reads before handing it out:
//! the manifest, every path (which must stay inside the package), the model
//! (an ML Program, with no field the decoder would drop, and a consistent
//! description), and every weight reference (its file, record, data type and
//! size). What it accepts, [`PackageBuilder`] can write back.

#[doc(hidden)]
pub mod blob;
#[doc(hidden)]
pub mod manifest;
mod paths;
#[doc(hidden)]
pub mod spec;
#[doc(hidden)]
pub mod values;
mod write;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

#[doc(hidden)]
pub use write::{copy_package, PackageBuilder};
pub use write::{rewrite, RewriteSummary};

use crate::error::{Error, Problem, Result};
use crate::naming::quoted_list;
use crate::proto::mil_spec::{self, value, value_type, Program};
use crate::proto::{model, FunctionDescription, Model, ModelDescription};
use blob::{BlobDataType, BlobFile, BlobRecord};
use manifest::{Manifest, ManifestError};
use values::ValueSite;

/// The name of the package index file.
pub const MANIFEST_FILE: &str = "Manifest.json";
/// The directory holding the package's items.
pub const DATA_DIR: &str = "Data";
/// The prefix of blob file names in a model: the directory of `model.mlmodel`.
pub const MODEL_PATH_PREFIX: &str = "@model_path/";
/// The function name of single-function models.
pub const MAIN_FUNCTION: &str = "main";

/// `Manifest.json` larger than this is refused (real ones are under 1 KiB).
const MANIFEST_LIMIT: u64 = 1 << 20;
/// `model.mlmodel` larger than this is refused. ML Programs keep their
/// weights in blob files, so their specifications are small; this bound
/// only keeps a hostile file from exhausting memory.
const SPEC_LIMIT: u64 = 1 << 30;

/// An opened, validated `.mlpackage` holding an ML Program.
#[derive(Debug)]
pub struct Package {
    root: PathBuf,
    manifest: Manifest,
    spec_path: PathBuf,
    spec_len: u64,
    model: Model,
    weights_dir: Option<PathBuf>,
    blob_files: BTreeMap<String, BlobFile>,
}

/// One function of a package, single-function or multifunction alike.
#[derive(Debug, Clone)]
pub struct FunctionView<'a> {
    /// The function's name (`main` in a single-function model).
    pub name: &'a str,
    /// Its interface. For a single-function model, built from the
    /// top-level fields of the model description.
    pub description: Cow<'a, FunctionDescription>,
    /// Its MIL function.
    pub function: &'a mil_spec::Function,
}

impl FunctionView<'_> {
    /// The opset its body is written for ("CoreML8", ...).
    pub fn opset(&self) -> &str {
        &self.function.opset
    }

    /// Its body: the block of its opset.
    pub fn block(&self) -> &mil_spec::Block {
        // Package::open checked that the block exists.
        &self.function.block_specializations[&self.function.opset]
    }
}

/// Blob storage figures of one package ([`Package::weight_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeightStats {
    /// Blobs stored.
    pub blobs: u64,
    /// Bytes of blob data stored.
    pub bytes: u64,
}

#[doc(hidden)]
/// A weight reference of the model, resolved to its record.
#[derive(Debug, Clone)]
pub struct BlobReference {
    /// Where the reference sits.
    pub site: ValueSite,
    /// The file name as written in the model.
    pub file_name: String,
    /// The record it refers to.
    pub record: BlobRecord,
}

#[doc(hidden)]
/// Bytes of the distinct blobs `references` point to, as stored: a blob
/// (a record of one weight file) referenced several times counts once.
pub fn distinct_blob_bytes<'a>(references: impl IntoIterator<Item = &'a BlobReference>) -> u64 {
    let mut seen = BTreeSet::new();
    references
        .into_iter()
        .filter(|r| seen.insert((r.file_name.as_str(), r.record.record_offset)))
        .map(|r| r.record.size)
        .sum()
}

impl Package {
    /// Opens and validates the package at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Package> {
        let given = path.as_ref();
        let metadata = match fs::metadata(given) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::invalid(given, Problem::NotFound))
            }
            Err(e) => return Err(Error::io(given, "open the package", e)),
        };
        if metadata.is_file() {
            return Err(bare_file_error(given));
        }
        if !metadata.is_dir() {
            return Err(Error::invalid(given, Problem::NotAPackage));
        }
        let root = given
            .canonicalize()
            .map_err(|e| Error::io(given, "resolve the package path", e))?;

        let manifest_path = root.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            return Err(Error::invalid(
                &root,
                Problem::MissingItem {
                    item_path: MANIFEST_FILE.to_string(),
                },
            ));
        }
        let manifest_bytes = read_limited(&manifest_path, MANIFEST_LIMIT, "read the manifest")?;
        let manifest = Manifest::parse(&manifest_bytes).map_err(|e| {
            let problem = match e {
                ManifestError::Malformed(detail) => Problem::MalformedManifest { detail },
                ManifestError::UnsupportedVersion(version) => {
                    Problem::UnsupportedManifestVersion { version }
                }
                ManifestError::UnknownRoot(identifier) => Problem::UnknownRootItem { identifier },
            };
            Error::invalid(&manifest_path, problem)
        })?;

        let data_dir = root.join(DATA_DIR);
        // Every item must resolve inside the package, even those this crate
        // does not read: Core ML checks that they exist, and a rewrite
        // copies them.
        for item in manifest.item_info_entries.values() {
            paths::resolve_inside(&root, &data_dir, &item.path, &manifest_path)?;
        }
        let spec_path =
            paths::resolve_inside(&root, &data_dir, &manifest.root_item().path, &manifest_path)?;
        let spec_bytes = read_limited(&spec_path, SPEC_LIMIT, "read the model specification")?;
        let model =
            spec::decode_ml_program(&spec_bytes).map_err(|p| Error::invalid(&spec_path, p))?;
        let weights_dir = match manifest.weights_item() {
            Some((_, item)) => Some(paths::resolve_inside(
                &root,
                &data_dir,
                &item.path,
                &manifest_path,
            )?),
            None => None,
        };

        let mut package = Package {
            root,
            manifest,
            spec_len: spec_bytes.len() as u64,
            spec_path,
            model,
            weights_dir,
            blob_files: BTreeMap::new(),
        };
        package.check_structure().map_err(|detail| {
            Error::invalid(&package.spec_path, Problem::InconsistentSpec { detail })
        })?;
        package.open_blob_files()?;
        package.blob_references()?;
        Ok(package)
    }

    /// The package directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    #[doc(hidden)]
    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The path of the root model specification.
    pub fn spec_path(&self) -> &Path {
        &self.spec_path
    }

    /// The size of the root model specification on disk.
    pub fn spec_len(&self) -> u64 {
        self.spec_len
    }

    /// The decoded model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model's description.
    pub fn description(&self) -> &ModelDescription {
        // check_structure guarantees it.
        self.model.description.as_ref().expect("validated on open")
    }

    /// The ML Program.
    pub fn program(&self) -> &Program {
        match &self.model.r#type {
            Some(model::Type::MlProgram(program)) => program,
            None => unreachable!("decode_ml_program only accepts ML Programs"),
        }
    }

    /// The weights directory, if the package has one.
    pub fn weights_dir(&self) -> Option<&Path> {
        self.weights_dir.as_deref()
    }

    /// The directory `@model_path` stands for: that of the specification.
    pub fn model_dir(&self) -> &Path {
        self.spec_path.parent().expect("a file inside the package")
    }

    /// Whether the model uses the multifunction form of the description.
    pub fn is_multifunction(&self) -> bool {
        is_multifunction(self.description())
    }

    /// The functions, in description order.
    pub fn functions(&self) -> Vec<FunctionView<'_>> {
        let program = self.program();
        let description = self.description();
        if is_multifunction(description) {
            description
                .functions
                .iter()
                .map(|function| FunctionView {
                    name: &function.name,
                    description: Cow::Borrowed(function),
                    function: &program.functions[&function.name],
                })
                .collect()
        } else {
            let (name, function) = single_function(program).expect("validated on open");
            vec![FunctionView {
                name,
                description: Cow::Owned(FunctionDescription {
                    name: name.to_string(),
                    input: description.input.clone(),
                    output: description.output.clone(),
                    predicted_feature_name: description.predicted_feature_name.clone(),
                    predicted_probabilities_name: description.predicted_probabilities_name.clone(),
                    state: description.state.clone(),
                }),
                function,
            }]
        }
    }

    /// The function a plain load runs.
    pub fn default_function(&self) -> &str {
        let description = self.description();
        if is_multifunction(description) {
            &description.default_function_name
        } else {
            single_function(self.program())
                .expect("validated on open")
                .0
        }
    }

    /// The function called `name`, if any.
    pub fn function(&self, name: &str) -> Option<FunctionView<'_>> {
        self.functions().into_iter().find(|f| f.name == name)
    }

    #[doc(hidden)]
    /// The blob files the model refers to, by the name written in the model.
    pub fn blob_files(&self) -> &BTreeMap<String, BlobFile> {
        &self.blob_files
    }

    #[doc(hidden)]
    /// Every weight reference of the model, with its validated record, in
    /// program order.
    pub fn blob_references(&self) -> Result<Vec<BlobReference>> {
        let mut references = Vec::new();
        let mut failure = None;
        let mut records: BTreeMap<String, BTreeMap<u64, BlobRecord>> = BTreeMap::new();
        values::for_each_value(self.program(), &mut |site, value| {
            if failure.is_some() {
                return;
            }
            if let Some(value::Value::BlobFileValue(blob)) = &value.value {
                let found = self.check_reference(site, value, blob, &mut records);
                match found {
                    Ok(record) => references.push(BlobReference {
                        site: site.clone(),
                        file_name: blob.file_name.clone(),
                        record,
                    }),
                    Err(e) => failure = Some(e),
                }
            }
        });
        match failure {
            Some(e) => Err(e),
            None => Ok(references),
        }
    }

    /// How many blobs the package stores, and how many bytes of weight
    /// data they hold (records are read, data is not).
    pub fn weight_stats(&self) -> Result<WeightStats> {
        let mut stats = WeightStats::default();
        for file in self.blob_files.values() {
            for record in file.records()? {
                stats.blobs += 1;
                stats.bytes += record.size;
            }
        }
        Ok(stats)
    }

    /// Bytes of the weights each function references, by function name:
    /// each distinct blob its values point to (in every block, nested ones
    /// included), counted once at its stored size, so a compressed weight
    /// counts its compressed bytes. Records are read, data is not. What a
    /// chunk budget ([`distinct_blob_bytes`] of a chunk's references) is
    /// measured against.
    pub fn function_weight_bytes(&self) -> Result<BTreeMap<String, u64>> {
        let references = self.blob_references()?;
        let mut by_function: BTreeMap<&str, Vec<&BlobReference>> = self
            .functions()
            .iter()
            .map(|f| (f.name, Vec::new()))
            .collect();
        for reference in &references {
            if let Some(list) = by_function.get_mut(reference.site.function.as_str()) {
                list.push(reference);
            }
        }
        Ok(by_function
            .into_iter()
            .map(|(name, references)| (name.to_string(), distinct_blob_bytes(references)))
            .collect())
    }

    #[doc(hidden)]
    /// Reads the data of a blob the model refers to.
    pub fn blob_file(&self, file_name: &str) -> Option<&BlobFile> {
        self.blob_files.get(file_name)
    }

    fn check_reference(
        &self,
        site: &ValueSite,
        value: &mil_spec::Value,
        blob: &value::BlobFileValue,
        records: &mut BTreeMap<String, BTreeMap<u64, BlobRecord>>,
    ) -> Result<BlobRecord> {
        let file = &self.blob_files[&blob.file_name];
        let by_offset = match records.entry(blob.file_name.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => entry.insert(
                file.records()?
                    .into_iter()
                    .map(|record| (record.record_offset, record))
                    .collect(),
            ),
        };
        let Some(record) = by_offset.get(&blob.offset).copied() else {
            // Read the record itself for the most precise error (a bad
            // sentinel, out of bounds), else report the dangling offset.
            file.record(blob.offset)?;
            return Err(Error::invalid(
                file.path(),
                Problem::DanglingBlobReference {
                    offset: blob.offset,
                    value: site.to_string(),
                    function: site.function.clone(),
                },
            ));
        };
        let Some(value_type::Type::TensorType(tensor)) =
            value.r#type.as_ref().and_then(|t| t.r#type.as_ref())
        else {
            return Err(Error::invalid(
                &self.spec_path,
                Problem::InconsistentSpec {
                    detail: format!(
                        "{site} in function {:?} is stored in a blob but is not declared as a tensor",
                        site.function
                    ),
                },
            ));
        };
        let declared = mil_spec::DataType::try_from(tensor.data_type).ok();
        if declared.and_then(BlobDataType::from_mil_type) != Some(record.data_type) {
            return Err(Error::invalid(
                file.path(),
                Problem::BlobTypeMismatch {
                    offset: record.record_offset,
                    value: site.to_string(),
                    function: site.function.clone(),
                    declared: declared
                        .map(blob::mil_type_name)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("unknown type {}", tensor.data_type)),
                    stored: record.data_type.name().to_string(),
                },
            ));
        }
        if let Some(elements) = element_count(tensor) {
            let expected = record.data_type.payload_len(elements);
            if expected != Some((record.size, record.padding_bits)) {
                return Err(Error::invalid(
                    file.path(),
                    Problem::BlobSizeMismatch {
                        offset: record.record_offset,
                        value: site.to_string(),
                        function: site.function.clone(),
                        expected: expected.map_or(u64::MAX, |(bytes, _)| bytes),
                        stored: record.size,
                    },
                ));
            }
        }
        Ok(record)
    }

    fn open_blob_files(&mut self) -> Result<()> {
        let mut names = BTreeSet::new();
        values::for_each_value(self.program(), &mut |_, value| {
            if let Some(value::Value::BlobFileValue(blob)) = &value.value {
                names.insert(blob.file_name.clone());
            }
        });
        for name in names {
            let Some(relative) = name.strip_prefix(MODEL_PATH_PREFIX) else {
                return Err(Error::invalid(
                    &self.spec_path,
                    Problem::BadBlobFileName { file_name: name },
                ));
            };
            let path =
                paths::resolve_inside(&self.root, self.model_dir(), relative, &self.spec_path)?;
            let file = BlobFile::open(path)?;
            self.blob_files.insert(name, file);
        }
        Ok(())
    }

    fn check_structure(&self) -> std::result::Result<(), String> {
        let description = self
            .model
            .description
            .as_ref()
            .ok_or("the model has no description")?;
        let program = self.program();
        for (name, function) in &program.functions {
            if !function.block_specializations.contains_key(&function.opset) {
                return Err(format!(
                    "function {name:?} declares opset {:?} but has no body for it",
                    function.opset
                ));
            }
        }
        if !is_multifunction(description) {
            return single_function(program).map(|_| ());
        }
        if self.model.specification_version < 9 {
            return Err(format!(
                "the model lists functions but has specification version {}; multifunction \
                 models need version 9 (iOS 18 / macOS 15) or later",
                self.model.specification_version
            ));
        }
        let top_level = [
            ("input", !description.input.is_empty()),
            ("output", !description.output.is_empty()),
            ("state", !description.state.is_empty()),
            ("trainingInput", !description.training_input.is_empty()),
            (
                "predictedFeatureName",
                !description.predicted_feature_name.is_empty(),
            ),
            (
                "predictedProbabilitiesName",
                !description.predicted_probabilities_name.is_empty(),
            ),
        ];
        if let Some((field, _)) = top_level.iter().find(|(_, set)| *set) {
            return Err(format!(
                "the model lists functions but also sets the top-level {field}; a multifunction \
                 description keeps its features in its functions"
            ));
        }
        let mut seen = BTreeSet::new();
        for function in &description.functions {
            if !seen.insert(function.name.as_str()) {
                return Err(format!(
                    "the description lists function {:?} twice",
                    function.name
                ));
            }
            if !program.functions.contains_key(&function.name) {
                return Err(format!(
                    "the description lists function {:?}, which the program does not define",
                    function.name
                ));
            }
        }
        if !seen.contains(description.default_function_name.as_str()) {
            return Err(format!(
                "the default function {:?} is not one of the functions ({})",
                description.default_function_name,
                quoted_list(description.functions.iter().map(|f| f.name.as_str()))
            ));
        }
        Ok(())
    }
}

/// The total size of the files under `root`: what a package costs on disk
/// (before any sharing of extents by the file system).
pub fn directory_size(root: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.map_err(|e| Error::io(root, "measure a package", e.into()))?;
        if entry.file_type().is_file() {
            total += entry
                .metadata()
                .map_err(|e| Error::io(entry.path(), "measure a package", e.into()))?
                .len();
        }
    }
    Ok(total)
}

#[doc(hidden)]
/// Whether a description uses the multifunction form, by Core ML's rule.
pub fn is_multifunction(description: &ModelDescription) -> bool {
    !description.functions.is_empty() || !description.default_function_name.is_empty()
}

/// The one function of a single-function program: `main`, or the only one.
fn single_function(program: &Program) -> std::result::Result<(&str, &mil_spec::Function), String> {
    if let Some((name, function)) = program.functions.get_key_value(MAIN_FUNCTION) {
        return Ok((name, function));
    }
    match program.functions.len() {
        1 => {
            let (name, function) = program.functions.iter().next().expect("one");
            Ok((name, function))
        }
        0 => Err("the ML Program defines no function".to_string()),
        _ => Err(format!(
            "the model has a single-function description but its program defines several \
             functions ({}) and none is \"main\"",
            quoted_list(program.functions.keys().map(String::as_str))
        )),
    }
}

#[doc(hidden)]
/// The number of elements of a tensor type, when every dimension is known.
pub fn element_count(tensor: &mil_spec::TensorType) -> Option<u64> {
    if tensor.rank < 0 || tensor.dimensions.len() as i64 != tensor.rank {
        return None;
    }
    tensor.dimensions.iter().try_fold(1u64, |count, dimension| {
        match dimension.dimension.as_ref()? {
            mil_spec::dimension::Dimension::Constant(constant) => count.checked_mul(constant.size),
            mil_spec::dimension::Dimension::Unknown(_) => None,
        }
    })
}

fn read_limited(path: &Path, limit: u64, action: &'static str) -> Result<Vec<u8>> {
    let file = fs::File::open(path).map_err(|e| Error::io(path, action, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(path, action, e))?
        .len();
    if len > limit {
        return Err(Error::invalid(path, Problem::TooLarge { len, limit }));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, action, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::invalid(
            path,
            Problem::TooLarge {
                len: bytes.len() as u64,
                limit,
            },
        ));
    }
    Ok(bytes)
}

/// The error for a plain file given as a package: name the model type when
/// it is a Core ML model file.
fn bare_file_error(path: &Path) -> Error {
    let model_type = read_limited(path, SPEC_LIMIT, "read the model file")
        .ok()
        .and_then(|bytes| spec::model_type_name(&bytes).ok().flatten());
    match model_type {
        Some(model_type) => Error::invalid(
            path,
            Problem::BareModelFile {
                model_type: model_type.to_string(),
            },
        ),
        None => Error::invalid(path, Problem::NotAPackage),
    }
}
