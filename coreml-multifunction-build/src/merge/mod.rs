//! Merging ML Programs into one multifunction package: the job of
//! coremltools' `MultiFunctionDescriptor` and `save_multifunction`, done
//! exactly, in bounded memory, and reproducibly.
//!
//! ```no_run
//! use coreml_multifunction_build::merge::MultiFunctionDescriptor;
//!
//! let report = MultiFunctionDescriptor::new()
//!     .add_function("adapter_1.mlpackage", "adapter_1")
//!     .add_function("adapter_2.mlpackage", "adapter_2")
//!     .default_function("adapter_1")
//!     .merge("combined.mlpackage")?;
//! println!("{} distinct blobs", report.unique_blobs);
//! # Ok::<(), coreml_multifunction_build::Error>(())
//! ```
//!
//! What the merged model holds:
//! - specification version: the largest of the sources', and at least 9;
//! - one function per target, in the order added, each with its source's
//!   interface (a single-function source's top-level inputs, outputs and
//!   states move into its function description) and its body copied op for
//!   op, relabelled to the merged opset (`opset.rs`);
//! - every distinct weight once: equal data type, shape and bytes, bit for
//!   bit (see `dedup.rs`);
//! - a split function as its chunks, `<target>_chunk1` … (see
//!   `chunks.rs`), in its place;
//! - what coremltools drops: the model metadata (the default function's
//!   source's, unless set), and program attributes such as `buildInfo`.
//!
//! Nothing here knows about cargo: the build script and the CLI both call
//! [`MultiFunctionDescriptor::merge`].

mod chunks;
pub(crate) use chunks::chunk_name;
mod dedup;
mod fixed_shapes;
mod opset;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, MergeProblem, Result};
use coreml_multifunction_format::naming::is_mil_identifier;
use coreml_multifunction_format::package::blob::{self, BlobFile, BlobRecord};
use coreml_multifunction_format::package::{
    directory_size, values, Package, PackageBuilder, MAIN_FUNCTION,
};
use coreml_multifunction_format::proto::mil_spec::{self, value, value_type, Program};
use coreml_multifunction_format::proto::{
    model, FunctionDescription, Metadata, Model, ModelDescription,
};
use dedup::Candidate;

/// The weight file of merged packages.
const WEIGHT_FILE: &str = "weight.bin";
/// The lowest specification version with multifunction models (iOS 18).
const MULTIFUNCTION_VERSION: i32 = 9;

/// What to merge: functions taken from source packages, each under a target
/// name, and the default function.
#[derive(Debug, Clone, Default)]
pub struct MultiFunctionDescriptor {
    entries: Vec<Entry>,
    default_function: Option<String>,
    metadata: Option<Metadata>,
    never_clone: bool,
    /// Fixed input shapes, by target then input.
    fixed_shapes: BTreeMap<String, BTreeMap<String, Vec<u64>>>,
    /// The functions split into chunks, by target.
    chunks: BTreeMap<String, Chunks>,
}

/// How to split a function into chunks ([`MultiFunctionDescriptor::chunks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Chunks {
    /// Into this many chunks, balancing their weight bytes.
    Count(usize),
    /// Into as few chunks as keep each one's weight bytes at or under this
    /// budget (coremltools' docs give about 1 GB as the Neural Engine's
    /// limit on iOS).
    MaxBytes(u64),
}

#[derive(Debug, Clone)]
enum Entry {
    One {
        package: PathBuf,
        source_function: String,
        target: String,
    },
    All {
        package: PathBuf,
    },
}

impl MultiFunctionDescriptor {
    /// An empty descriptor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds function `main` of `package` (a single-function model) as
    /// `target`.
    pub fn add_function(
        &mut self,
        package: impl Into<PathBuf>,
        target: impl Into<String>,
    ) -> &mut Self {
        self.add_function_from(package, MAIN_FUNCTION, target)
    }

    /// Adds function `source_function` of `package` as `target`. The source
    /// may itself be a multifunction model.
    pub fn add_function_from(
        &mut self,
        package: impl Into<PathBuf>,
        source_function: impl Into<String>,
        target: impl Into<String>,
    ) -> &mut Self {
        self.entries.push(Entry::One {
            package: package.into(),
            source_function: source_function.into(),
            target: target.into(),
        });
        self
    }

    /// Adds every function of `package` under its own name.
    pub fn add_all_functions(&mut self, package: impl Into<PathBuf>) -> &mut Self {
        self.entries.push(Entry::All {
            package: package.into(),
        });
        self
    }

    /// Fixes input `input` of function `target` to `shape`, making `target`
    /// a fixed-shape function of its source: coremltools'
    /// `materialize_dynamic_shape_mlmodel`. The shape must be one the
    /// input allows (within its range, or one of its enumerated shapes).
    /// Every op's type is then inferred at the fixed shapes, shape
    /// arithmetic becomes constants, and the function shares its weights
    /// with its source and with every other function made from it. Call
    /// once per input to fix; inputs not named keep their flexibility.
    ///
    /// ```no_run
    /// use coreml_multifunction_build::merge::MultiFunctionDescriptor;
    ///
    /// MultiFunctionDescriptor::new()
    ///     .add_function("encoder.mlpackage", "seq_8")
    ///     .fixed_shape("seq_8", "input_ids", [1, 8])
    ///     .add_function("encoder.mlpackage", "seq_32")
    ///     .fixed_shape("seq_32", "input_ids", [1, 32])
    ///     .default_function("seq_8")
    ///     .merge("encoder_fixed.mlpackage")?;
    /// # Ok::<(), coreml_multifunction_build::Error>(())
    /// ```
    pub fn fixed_shape(
        &mut self,
        target: impl Into<String>,
        input: impl Into<String>,
        shape: impl Into<Vec<u64>>,
    ) -> &mut Self {
        self.fixed_shapes
            .entry(target.into())
            .or_default()
            .insert(input.into(), shape.into());
        self
    }

    /// Splits function `target` into consecutive chunks, each a function of
    /// the merged model named `<target>_chunk1` … `<target>_chunkN`, so
    /// that a model too big for the Neural Engine in one piece can run on
    /// it chunk by chunk. Cuts fall between ops of the function's top-level
    /// block, where the fewest and smallest values cross; a value computed
    /// before a cut and used after it becomes an output of the earlier
    /// chunk and an input of the later one, under its own name and type.
    /// Each chunk declares the states its ops use, with their descriptions
    /// unchanged, so one state serves every chunk. Weights are counted as
    /// stored, and stored once. Functions with the same weights in the same
    /// order (an LLM's prefill and decode) are cut at the same weights, so
    /// their chunks `k` share every weight. A fixed-shape function is
    /// materialized first, then split.
    ///
    /// ```no_run
    /// use coreml_multifunction_build::merge::{Chunks, MultiFunctionDescriptor};
    ///
    /// MultiFunctionDescriptor::new()
    ///     .add_function("decoder_prefill.mlpackage", "prefill")
    ///     .chunks("prefill", Chunks::MaxBytes(900 << 20))
    ///     .add_function("decoder_decode.mlpackage", "decode")
    ///     .chunks("decode", Chunks::MaxBytes(900 << 20))
    ///     .default_function("decode")
    ///     .merge("decoder.mlpackage")?;
    /// # Ok::<(), coreml_multifunction_build::Error>(())
    /// ```
    pub fn chunks(&mut self, target: impl Into<String>, chunks: Chunks) -> &mut Self {
        self.chunks.insert(target.into(), chunks);
        self
    }

    /// Sets the function a plain load of the merged model runs. Required.
    /// It may name a split function; the package's default is then its
    /// first chunk.
    pub fn default_function(&mut self, target: impl Into<String>) -> &mut Self {
        self.default_function = Some(target.into());
        self
    }

    /// Sets the merged model's metadata, instead of the default function's
    /// source's.
    pub fn metadata(&mut self, metadata: Metadata) -> &mut Self {
        self.metadata = Some(metadata);
        self
    }

    /// Whether the merged weight file may start as a clone of a source's,
    /// sharing its disk blocks, where the file system can clone (APFS, XFS,
    /// btrfs). On by default; turned off, every byte is written. The merged
    /// package's bytes are the same either way.
    pub fn cloning(&mut self, allowed: bool) -> &mut Self {
        self.never_clone = !allowed;
        self
    }

    /// Merges into `destination` (a path ending in `.mlpackage`), replacing
    /// what is there only once the new package is complete.
    pub fn merge(&self, destination: impl AsRef<Path>) -> Result<MergeReport> {
        Merger::open(self)?.write(destination.as_ref())
    }

    /// Checks the descriptor against its sources without writing anything:
    /// the packages open, the functions exist, the names and default are
    /// valid, every body can be raised to the merged opset, and every
    /// fixed-shape function can be built.
    pub fn check(&self) -> Result<()> {
        Merger::open(self).map(|_| ())
    }
}

/// One merged function and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedFunction {
    /// Its name in the merged model.
    pub target: String,
    /// The source package.
    pub package: PathBuf,
    /// Its name in the source.
    pub source_function: String,
    /// The inputs fixed to a shape ([`MultiFunctionDescriptor::fixed_shape`]),
    /// empty for a function copied as it is.
    pub fixed_shapes: BTreeMap<String, Vec<u64>>,
    /// Bytes of the distinct weights it references (its chunks'
    /// together), as the merged file stores them: compressed weights count
    /// their compressed bytes, and a weight used twice counts once.
    pub weight_bytes: u64,
    /// The chunks it was split into ([`MultiFunctionDescriptor::chunks`]),
    /// in the order they run; empty for a function merged whole, which is
    /// then a function of the merged model under `target`.
    pub chunks: Vec<Chunk>,
}

/// One chunk of a split function: a function of the merged model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Its name in the merged model, `<target>_chunk<k>`.
    pub name: String,
    /// Bytes of the distinct weights it references, as the merged file
    /// stores them.
    pub weight_bytes: u64,
    /// The values earlier chunks computed that it takes as inputs.
    pub crossing_inputs: Vec<CrossingValue>,
}

/// A value computed in one chunk and used in a later one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrossingValue {
    /// Its name, in the program and as a feature.
    pub name: String,
    /// The chunk computing it, counted from 1.
    pub from_chunk: usize,
    /// Its type, as MIL writes it (`fp16[1, 8, 64]`).
    pub type_text: String,
    /// Its size in bytes, where its shape is fixed.
    pub bytes: Option<u64>,
}

/// A source package and its size on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSize {
    /// The package, as given.
    pub package: PathBuf,
    /// Bytes of all its files.
    pub bytes: u64,
}

/// What a merge wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// The merged package.
    pub destination: PathBuf,
    /// Its functions, in order.
    pub functions: Vec<MergedFunction>,
    /// Its default function.
    pub default_function: String,
    /// Its specification version.
    pub specification_version: i32,
    /// The opset of every function.
    pub opset: String,
    /// The distinct source packages, with their sizes.
    pub sources: Vec<SourceSize>,
    /// The merged package's size on disk.
    pub merged_bytes: u64,
    /// Weight references in the merged program.
    pub weight_references: usize,
    /// Distinct blobs stored.
    pub unique_blobs: usize,
    /// Bytes of blob data stored.
    pub blob_bytes: u64,
    /// Bytes of blob data sharing saved: what the functions' blobs would
    /// take stored separately, less what is stored.
    pub shared_bytes: u64,
    /// Bytes of the merged weight file that are a clone of a source's,
    /// sharing its disk blocks: they cost no new disk space. 0 where the
    /// file system cannot clone, or no source's weight file could serve.
    pub cloned_bytes: u64,
}

impl MergeReport {
    /// The sources' total size: what shipping them separately costs.
    pub fn separate_bytes(&self) -> u64 {
        self.sources.iter().map(|s| s.bytes).sum()
    }

    /// Bytes of the merged package written anew (everything not cloned).
    pub fn written_bytes(&self) -> u64 {
        self.merged_bytes.saturating_sub(self.cloned_bytes)
    }
}

/// A validated merge, ready to write.
struct Merger<'d> {
    descriptor: &'d MultiFunctionDescriptor,
    packages: Vec<(PathBuf, Package)>,
    selected: Vec<Selected>,
    default_function: String,
    specification_version: i32,
    opset: String,
    /// The fixed-shape functions, built when the merge is checked: each
    /// target's body and description.
    fixed: BTreeMap<String, (mil_spec::Function, FunctionDescription)>,
    /// The split functions' chunks, built when the merge is checked, by
    /// target.
    split: BTreeMap<String, Vec<chunks::Built>>,
}

struct Selected {
    package: usize,
    source_function: String,
    target: String,
}

impl<'d> Merger<'d> {
    fn open(descriptor: &'d MultiFunctionDescriptor) -> Result<Merger<'d>> {
        let mut packages: Vec<(PathBuf, Package)> = Vec::new();
        // Each package is opened once, however often it is named.
        fn index_of(packages: &mut Vec<(PathBuf, Package)>, path: &Path) -> Result<usize> {
            let canonical = path.canonicalize().ok();
            if let Some(index) = packages
                .iter()
                .position(|(_, p)| Some(p.root()) == canonical.as_deref())
            {
                return Ok(index);
            }
            packages.push((path.to_path_buf(), Package::open(path)?));
            Ok(packages.len() - 1)
        }
        let mut selected = Vec::new();
        for entry in &descriptor.entries {
            match entry {
                Entry::One {
                    package,
                    source_function,
                    target,
                } => selected.push(Selected {
                    package: index_of(&mut packages, package)?,
                    source_function: source_function.clone(),
                    target: target.clone(),
                }),
                Entry::All { package } => {
                    let index = index_of(&mut packages, package)?;
                    for function in packages[index].1.functions() {
                        selected.push(Selected {
                            package: index,
                            source_function: function.name.to_string(),
                            target: function.name.to_string(),
                        });
                    }
                }
            }
        }
        if selected.is_empty() {
            return Err(Error::merge(MergeProblem::NoFunctions));
        }

        let describe = |s: &Selected| {
            format!(
                "function {:?} of {}",
                s.source_function,
                packages[s.package].0.display()
            )
        };
        let mut seen: BTreeMap<&str, &Selected> = BTreeMap::new();
        for choice in &selected {
            let (path, package) = &packages[choice.package];
            if package.function(&choice.source_function).is_none() {
                return Err(Error::merge(MergeProblem::UnknownSourceFunction {
                    package: path.clone(),
                    function: choice.source_function.clone(),
                    available: package
                        .functions()
                        .iter()
                        .map(|f| f.name.to_string())
                        .collect(),
                }));
            }
            if !is_mil_identifier(&choice.target) {
                return Err(Error::merge(MergeProblem::InvalidTargetName {
                    target: choice.target.clone(),
                }));
            }
            if let Some(first) = seen.insert(&choice.target, choice) {
                return Err(Error::merge(MergeProblem::DuplicateTarget {
                    target: choice.target.clone(),
                    first: describe(first),
                    second: describe(choice),
                }));
            }
        }
        let targets: Vec<String> = selected.iter().map(|s| s.target.clone()).collect();
        for (target, shapes) in &descriptor.fixed_shapes {
            let Some(choice) = selected.iter().find(|s| &s.target == target) else {
                return Err(Error::merge(MergeProblem::UnknownShapeTarget {
                    target: target.clone(),
                    targets,
                }));
            };
            let (path, package) = &packages[choice.package];
            let view = package.function(&choice.source_function).expect("checked");
            for (input, shape) in shapes {
                let Some(feature) = view.description.input.iter().find(|i| &i.name == input) else {
                    return Err(Error::merge(MergeProblem::UnknownShapeInput {
                        target: target.clone(),
                        package: path.clone(),
                        source_function: choice.source_function.clone(),
                        input: input.clone(),
                        inputs: view
                            .description
                            .input
                            .iter()
                            .map(|i| i.name.clone())
                            .collect(),
                    }));
                };
                if let Err(not) = fixed_shapes::check_allowed(feature, view.function, shape) {
                    return Err(Error::merge(MergeProblem::ShapeNotAllowed {
                        target: target.clone(),
                        package: path.clone(),
                        source_function: choice.source_function.clone(),
                        input: input.clone(),
                        shape: shape.clone(),
                        allowed: not.allowed,
                    }));
                }
            }
        }
        for target in descriptor.chunks.keys() {
            if !targets.contains(target) {
                return Err(Error::merge(MergeProblem::UnknownChunkTarget {
                    target: target.clone(),
                    targets,
                }));
            }
        }
        let default_function = match &descriptor.default_function {
            None => return Err(Error::merge(MergeProblem::MissingDefault { targets })),
            Some(name) if !targets.contains(name) => {
                return Err(Error::merge(MergeProblem::UnknownDefault {
                    default: name.clone(),
                    targets,
                }))
            }
            Some(name) => name.clone(),
        };

        let specification_version = packages
            .iter()
            .map(|(_, p)| p.model().specification_version)
            .max()
            .unwrap_or(MULTIFUNCTION_VERSION)
            .max(MULTIFUNCTION_VERSION);
        let opset = opset::opset_for_version(specification_version).expect("version 9 or later");
        let mut merger = Merger {
            descriptor,
            packages,
            selected,
            default_function,
            specification_version,
            opset,
            fixed: BTreeMap::new(),
            split: BTreeMap::new(),
        };
        for choice in &merger.selected {
            merger.check_raise(choice)?;
        }
        merger.fixed = merger.fixed_functions()?;
        merger.split = merger.split_functions()?;
        Ok(merger)
    }

    /// The body and description a target is merged from: its fixed-shape
    /// function if it has one, else its source's.
    fn source_of(&self, choice: &Selected) -> (&mil_spec::Function, FunctionDescription) {
        match self.fixed.get(&choice.target) {
            Some((function, description)) => (function, description.clone()),
            None => {
                let view = self.packages[choice.package]
                    .1
                    .function(&choice.source_function)
                    .expect("checked");
                (view.function, view.description.into_owned())
            }
        }
    }

    /// The stored bytes of a weight reference of source `package`.
    fn weight_size(&self, package: usize, value: &mil_spec::Value) -> Option<u64> {
        let Some(value::Value::BlobFileValue(blob)) = &value.value else {
            return None;
        };
        let file = self.packages[package].1.blob_file(&blob.file_name)?;
        file.record(blob.offset).ok().map(|record| record.size)
    }

    /// Splits every function asked to be split (see `chunks.rs`), after
    /// its fixed shapes, refusing a split that cannot be made and chunk
    /// names that another function has.
    fn split_functions(&self) -> Result<BTreeMap<String, Vec<chunks::Built>>> {
        let chosen: Vec<(&Selected, Chunks)> = self
            .selected
            .iter()
            .filter_map(|s| self.descriptor.chunks.get(&s.target).map(|&c| (s, c)))
            .collect();
        let sources: Vec<(&mil_spec::Function, FunctionDescription)> = chosen
            .iter()
            .map(|(choice, _)| self.source_of(choice))
            .collect();
        let requests: Vec<chunks::Request<'_>> = chosen
            .iter()
            .zip(&sources)
            .map(
                |((choice, chunking), (function, description))| chunks::Request {
                    target: &choice.target,
                    function,
                    description,
                    chunks: *chunking,
                    weight_size: Box::new(move |value| self.weight_size(choice.package, value)),
                },
            )
            .collect();
        let mut split = BTreeMap::new();
        for ((choice, _), result) in chosen.iter().zip(chunks::split_all(&requests)) {
            let (path, _) = &self.packages[choice.package];
            let built = result.map_err(|error| match error {
                chunks::SplitError::OpOverBudget {
                    op,
                    op_type,
                    bytes,
                    budget,
                } => Error::merge(MergeProblem::OpOverBudget {
                    target: choice.target.clone(),
                    op,
                    op_type,
                    bytes,
                    budget,
                }),
                chunks::SplitError::Cannot(reason) => Error::merge(MergeProblem::CannotSplit {
                    target: choice.target.clone(),
                    package: path.clone(),
                    source_function: choice.source_function.clone(),
                    reason,
                }),
            })?;
            for chunk in &built {
                if let Some(other) = self.selected.iter().find(|s| s.target == chunk.report.name) {
                    return Err(Error::merge(MergeProblem::CannotSplit {
                        target: choice.target.clone(),
                        package: path.clone(),
                        source_function: choice.source_function.clone(),
                        reason: format!(
                            "its chunk {:?} would have the name of function {:?} of the merge; \
                             rename that function",
                            chunk.report.name, other.target
                        ),
                    }));
                }
            }
            split.insert(choice.target.clone(), built);
        }
        Ok(split)
    }

    /// Builds every fixed-shape function from its source (see
    /// `fixed_shapes.rs`), refusing one that cannot be built.
    fn fixed_functions(
        &self,
    ) -> Result<BTreeMap<String, (mil_spec::Function, FunctionDescription)>> {
        let mut fixed = BTreeMap::new();
        for choice in &self.selected {
            let Some(shapes) = self.descriptor.fixed_shapes.get(&choice.target) else {
                continue;
            };
            let (path, package) = &self.packages[choice.package];
            let view = package.function(&choice.source_function).expect("checked");
            let built =
                fixed_shapes::fix(view.function, &view.description, shapes).map_err(|reason| {
                    Error::merge(MergeProblem::CannotMaterialize {
                        target: choice.target.clone(),
                        package: path.clone(),
                        source_function: choice.source_function.clone(),
                        shapes: shapes.clone(),
                        reason,
                    })
                })?;
            fixed.insert(choice.target.clone(), built);
        }
        Ok(fixed)
    }

    /// Refuses a body that cannot be relabelled to the merged opset.
    fn check_raise(&self, choice: &Selected) -> Result<()> {
        let (path, package) = &self.packages[choice.package];
        let function = package.function(&choice.source_function).expect("checked");
        let cannot = |reason: String| {
            Error::merge(MergeProblem::OpsetCannotBeRaised {
                package: path.clone(),
                function: choice.source_function.clone(),
                from: function.opset().to_string(),
                to: self.opset.clone(),
                reason,
            })
        };
        let target = opset::opset_number(&self.opset).expect("CoreML<n>");
        let Some(from) = opset::opset_number(function.opset()) else {
            return Err(cannot(
                "its opset label is not of the form CoreML<n>".to_string(),
            ));
        };
        if from > target {
            return Err(cannot(
                "it is newer than the merged model's opset".to_string(),
            ));
        }
        if from < target
            && function
                .function
                .block_specializations
                .contains_key(&self.opset)
        {
            return Err(cannot(format!(
                "it already has a separate body for {}, which the raised body would replace",
                self.opset
            )));
        }
        let mut failure = None;
        visit_ops(function.block(), &mut |op| {
            if failure.is_none() {
                if let Some(why) = opset::incompatibility(&op.r#type, from, target) {
                    let name = values::op_name(op).unwrap_or("unnamed");
                    failure = Some(format!("op {name:?} ({}): {why}", op.r#type));
                }
            }
        });
        match failure {
            Some(reason) => Err(cannot(reason)),
            None => Ok(()),
        }
    }

    fn write(self, destination: &Path) -> Result<MergeReport> {
        if let Ok(existing) = destination.canonicalize() {
            if self.packages.iter().any(|(_, p)| p.root() == existing) {
                return Err(Error::merge(MergeProblem::DestinationIsSource {
                    destination: destination.to_path_buf(),
                }));
            }
        }

        // The functions, copied and relabelled.
        let mut functions: Vec<(usize, String, mil_spec::Function)> = Vec::new();
        let mut descriptions = Vec::new();
        let mut parts: Vec<(usize, mil_spec::Function, FunctionDescription)> = Vec::new();
        for choice in &self.selected {
            match self.split.get(&choice.target) {
                Some(chunks) => parts.extend(
                    chunks
                        .iter()
                        .map(|c| (choice.package, c.function.clone(), c.description.clone())),
                ),
                None => {
                    let (function, description) = self.source_of(choice);
                    let description = FunctionDescription {
                        name: choice.target.clone(),
                        ..description
                    };
                    parts.push((choice.package, function.clone(), description));
                }
            }
        }
        for (package, mut function, description) in parts {
            if function.opset != self.opset {
                let body = function
                    .block_specializations
                    .remove(&function.opset)
                    .expect("validated on open");
                function
                    .block_specializations
                    .insert(self.opset.clone(), body);
                function.opset = self.opset.clone();
            }
            functions.push((package, description.name.clone(), function));
            descriptions.push(description);
        }

        // Program attributes: the default function's source's first, then
        // any key another source adds.
        let default_package = self.selected[self.target_index(&self.default_function)].package;
        let mut attribute_sources: Vec<(usize, Program)> = Vec::new();
        let mut taken = std::collections::BTreeSet::new();
        let order = std::iter::once(default_package).chain(0..self.packages.len());
        for index in order {
            let program = self.packages[index].1.program();
            let fresh: BTreeMap<String, mil_spec::Value> = program
                .attributes
                .iter()
                .filter(|(key, _)| taken.insert((*key).clone()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            if !fresh.is_empty() {
                attribute_sources.push((
                    index,
                    Program {
                        attributes: fresh,
                        ..Default::default()
                    },
                ));
            }
        }

        // Every weight reference, in program order, then the plan. Each
        // function's (or attribute set's) own blobs are noted too, for the
        // report of what sharing saved.
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut slot_of: BTreeMap<Candidate, usize> = BTreeMap::new();
        let mut used_by: Vec<std::collections::BTreeSet<usize>> = Vec::new();
        let mut weight_references = 0usize;
        let mut collect = |package: usize,
                           value: &mil_spec::Value,
                           used: &mut std::collections::BTreeSet<usize>| {
            if let Some(candidate) = candidate(package, value) {
                weight_references += 1;
                let next = candidates.len();
                let slot = *slot_of.entry(candidate.clone()).or_insert(next);
                if slot == next {
                    candidates.push(candidate);
                }
                used.insert(slot);
            }
        };
        for (package, name, function) in &functions {
            let mut used = std::collections::BTreeSet::new();
            values::for_each_function_value(name, function, &mut |_, value| {
                collect(*package, value, &mut used)
            });
            used_by.push(used);
        }
        for (package, program) in &attribute_sources {
            let mut used = std::collections::BTreeSet::new();
            values::for_each_value(program, &mut |_, value| collect(*package, value, &mut used));
            used_by.push(used);
        }
        let plan = dedup::plan(&candidates, &|c: &Candidate| {
            let file = self.blob_file(c.package, &c.file_name);
            Ok((file, file.record(c.offset)?))
        })?;

        // The merged weight file starts with the first blobs of one source's
        // weight file, at their offsets (a clone, where the file system
        // can), then the other distinct blobs: see `weight_layout`.
        let mut builder = PackageBuilder::new(destination)?;
        let reference = PackageBuilder::blob_file_reference(WEIGHT_FILE);
        let mut new_offsets: Vec<Option<u64>> = vec![None; plan.representatives.len()];
        let mut blob_bytes = 0;
        let mut cloned_bytes = 0;
        let layout = self.weight_layout(&candidates, &plan)?;
        if let Some(base) = &layout.base {
            let file = self.blob_file(base.package, &base.file_name);
            for &(blob, offset) in &base.kept {
                new_offsets[blob] = Some(offset);
            }
            blob_bytes += base.bytes;
            cloned_bytes = builder.blob_file_from_base(
                WEIGHT_FILE,
                file,
                base.kept.len(),
                !self.descriptor.never_clone,
            )?;
        }
        if !layout.appended.is_empty() {
            let writer = builder.blob_writer(WEIGHT_FILE)?;
            for &blob in &layout.appended {
                let candidate = &candidates[plan.representatives[blob]];
                let file = self.blob_file(candidate.package, &candidate.file_name);
                let record: BlobRecord = file.record(candidate.offset)?;
                let offset = writer
                    .append(
                        record.data_type,
                        record.size,
                        record.padding_bits,
                        &mut file.reader(&record),
                    )
                    .map_err(|e| {
                        Error::io(file.path(), "copy weights into the merged package", e)
                    })?;
                new_offsets[blob] = Some(offset);
                blob_bytes += record.size;
            }
        }
        // What each function would store on its own, for the report.
        let mut unshared_bytes = 0u64;
        for used in &used_by {
            for &slot in used {
                let c = &candidates[slot];
                let file = self.blob_file(c.package, &c.file_name);
                unshared_bytes += file.record(c.offset)?.size;
            }
        }
        // Each merged function's distinct blobs, for its weight bytes as
        // the merged file stores them.
        let mut blob_size = Vec::with_capacity(plan.representatives.len());
        for &representative in &plan.representatives {
            let c = &candidates[representative];
            blob_size.push(
                self.blob_file(c.package, &c.file_name)
                    .record(c.offset)?
                    .size,
            );
        }
        let blobs_of: BTreeMap<&str, std::collections::BTreeSet<usize>> = functions
            .iter()
            .zip(&used_by)
            .map(|((_, name, _), used)| {
                (
                    name.as_str(),
                    used.iter().map(|&slot| plan.blob_of[slot]).collect(),
                )
            })
            .collect();
        let stored_bytes = |names: &[&str]| -> u64 {
            let blobs: std::collections::BTreeSet<usize> = names
                .iter()
                .flat_map(|name| blobs_of.get(name).into_iter().flatten().copied())
                .collect();
            blobs.iter().map(|&blob| blob_size[blob]).sum()
        };
        let merged_functions: Vec<MergedFunction> = self
            .selected
            .iter()
            .map(|s| {
                let chunks: Vec<Chunk> = self
                    .split
                    .get(&s.target)
                    .map(|chunks| {
                        chunks
                            .iter()
                            .map(|c| Chunk {
                                weight_bytes: stored_bytes(&[c.report.name.as_str()]),
                                ..c.report.clone()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let names: Vec<&str> = if chunks.is_empty() {
                    vec![s.target.as_str()]
                } else {
                    chunks.iter().map(|c| c.name.as_str()).collect()
                };
                MergedFunction {
                    target: s.target.clone(),
                    package: self.packages[s.package].0.clone(),
                    source_function: s.source_function.clone(),
                    fixed_shapes: self
                        .descriptor
                        .fixed_shapes
                        .get(&s.target)
                        .cloned()
                        .unwrap_or_default(),
                    weight_bytes: stored_bytes(&names),
                    chunks,
                }
            })
            .collect();

        // Point every reference at its blob in the merged file.
        let relink = |package: usize, value: &mut mil_spec::Value| {
            if let Some(candidate) = candidate(package, value) {
                let blob = plan.blob_of[slot_of[&candidate]];
                if let Some(value::Value::BlobFileValue(file)) = &mut value.value {
                    file.file_name = reference.clone();
                    file.offset = new_offsets[blob].expect("every blob was placed");
                }
            }
        };
        for (package, name, function) in &mut functions {
            values::for_each_function_value_mut(name, function, &mut |_, value| {
                relink(*package, value)
            });
        }
        for (package, program) in &mut attribute_sources {
            values::for_each_value_mut(program, &mut |_, value| relink(*package, value));
        }

        let default_source = &self.packages[default_package].1;
        let program = Program {
            version: default_source.program().version,
            functions: functions
                .into_iter()
                .map(|(_, name, function)| (name, function))
                .collect(),
            doc_string: default_source.program().doc_string.clone(),
            attributes: attribute_sources
                .into_iter()
                .flat_map(|(_, p)| p.attributes)
                .collect(),
        };
        let metadata = self
            .descriptor
            .metadata
            .clone()
            .or_else(|| default_source.description().metadata.clone());
        let model = Model {
            specification_version: self.specification_version,
            description: Some(ModelDescription {
                functions: descriptions,
                default_function_name: self.default_function_name(),
                metadata,
                ..Default::default()
            }),
            is_updatable: false,
            r#type: Some(model::Type::MlProgram(program)),
        };
        let destination = builder.finish(&model)?;

        Ok(MergeReport {
            merged_bytes: directory_size(&destination)?,
            destination,
            functions: merged_functions,
            default_function: self.default_function_name(),
            specification_version: self.specification_version,
            opset: self.opset.clone(),
            sources: self
                .packages
                .iter()
                .map(|(path, package)| {
                    Ok(SourceSize {
                        package: path.clone(),
                        bytes: directory_size(package.root())?,
                    })
                })
                .collect::<Result<_>>()?,
            weight_references,
            unique_blobs: plan.representatives.len(),
            blob_bytes,
            shared_bytes: unshared_bytes.saturating_sub(blob_bytes),
            cloned_bytes,
        })
    }

    /// Where each distinct blob goes in the merged weight file: the longest
    /// run of a source weight file's first blobs that the merge stores, each
    /// once and in the writer's own layout, kept where it is (so that part
    /// can be a clone of the source), then the other blobs appended.
    ///
    /// Of the source files, the one whose run holds the most bytes is the
    /// base (the first such file, by source order then file name, on a
    /// tie). A run ends before a blob no merged function uses, or a second
    /// copy of one already in the run: keeping those would store more than
    /// writing every distinct blob does. The appended blobs go in order of
    /// first use, except that the one with the most padding after its data
    /// goes last; and the layout is used only if the file is then no larger
    /// than writing every distinct blob in order of first use (it differs
    /// by at most the last blob's padding, under 64 bytes). Otherwise there
    /// is no base, and every blob is written in order of first use.
    fn weight_layout(&self, candidates: &[Candidate], plan: &dedup::Plan) -> Result<WeightLayout> {
        let size_of = |blob: usize| -> Result<u64> {
            let candidate = &candidates[plan.representatives[blob]];
            let file = self.blob_file(candidate.package, &candidate.file_name);
            Ok(file.record(candidate.offset)?.size)
        };
        let sizes: Vec<u64> = (0..plan.representatives.len())
            .map(size_of)
            .collect::<Result<_>>()?;
        let first_use: Vec<usize> = (0..sizes.len()).collect();
        let written = WeightLayout {
            base: None,
            appended: first_use.clone(),
        };

        let mut slots_by_file: BTreeMap<(usize, &str), Vec<usize>> = BTreeMap::new();
        for (slot, candidate) in candidates.iter().enumerate() {
            slots_by_file
                .entry((candidate.package, candidate.file_name.as_str()))
                .or_default()
                .push(slot);
        }
        let mut best: Option<Base> = None;
        for (&(package, file_name), slots) in &slots_by_file {
            let file = self.blob_file(package, file_name);
            // The stored blob at each record offset; `None` where references
            // to one record became two blobs (declared with two shapes).
            let mut blob_at: BTreeMap<u64, Option<usize>> = BTreeMap::new();
            for &slot in slots {
                let blob = plan.blob_of[slot];
                let entry = blob_at.entry(candidates[slot].offset).or_insert(Some(blob));
                if *entry != Some(blob) {
                    *entry = None;
                }
            }
            let mut kept = Vec::new();
            let mut kept_blobs = std::collections::BTreeSet::new();
            let mut bytes = 0;
            let mut end = blob::HEADER_LEN;
            for record in file.records()? {
                let in_place = record.record_offset == blob::align(end).unwrap_or(u64::MAX)
                    && record.data_offset == record.record_offset + blob::RECORD_LEN;
                match blob_at.get(&record.record_offset) {
                    Some(&Some(blob)) if in_place && kept_blobs.insert(blob) => {
                        kept.push((blob, record.record_offset));
                        bytes += record.size;
                        end = record.data_end();
                    }
                    _ => break,
                }
            }
            if !kept.is_empty() && best.as_ref().is_none_or(|b| bytes > b.bytes) {
                best = Some(Base {
                    package,
                    file_name: file_name.to_string(),
                    kept,
                    bytes,
                });
            }
        }
        let Some(base) = best else {
            return Ok(written);
        };
        let kept: std::collections::BTreeSet<usize> =
            base.kept.iter().map(|&(blob, _)| blob).collect();
        let mut appended: Vec<usize> = first_use
            .iter()
            .copied()
            .filter(|blob| !kept.contains(blob))
            .collect();
        let padding = |blob: usize| blob::align(sizes[blob]).unwrap_or(sizes[blob]) - sizes[blob];
        if let Some(last) =
            (0..appended.len()).max_by_key(|&i| (padding(appended[i]), std::cmp::Reverse(i)))
        {
            let blob = appended.remove(last);
            appended.push(blob);
        }
        let length = |order: &[usize]| {
            order.iter().fold(blob::HEADER_LEN, |end, &blob| {
                blob::align(end)
                    .unwrap_or(u64::MAX)
                    .saturating_add(blob::RECORD_LEN + sizes[blob])
            })
        };
        let kept_order: Vec<usize> = base.kept.iter().map(|&(blob, _)| blob).collect();
        let with_base = [kept_order, appended.clone()].concat();
        if length(&with_base) > length(&first_use) {
            return Ok(written);
        }
        Ok(WeightLayout {
            base: Some(base),
            appended,
        })
    }

    /// Blob file `file_name` of source `package`, which every weight
    /// reference of the sources names (checked when the package opened).
    fn blob_file(&self, package: usize, file_name: &str) -> &BlobFile {
        self.packages[package]
            .1
            .blob_file(file_name)
            .expect("weight references are validated when a package opens")
    }

    /// The merged model's default function: the default target, or the
    /// first chunk of a split one.
    fn default_function_name(&self) -> String {
        match self.split.get(&self.default_function) {
            Some(chunks) => chunks[0].report.name.clone(),
            None => self.default_function.clone(),
        }
    }

    fn target_index(&self, target: &str) -> usize {
        self.selected
            .iter()
            .position(|s| s.target == target)
            .expect("validated default")
    }
}

/// Where the merged weight file's blobs go ([`Merger::weight_layout`]).
struct WeightLayout {
    /// The source weight file whose first blobs the merged file starts with.
    base: Option<Base>,
    /// The other distinct blobs, in the order they are appended.
    appended: Vec<usize>,
}

/// The first blobs of one source weight file, kept in place.
struct Base {
    package: usize,
    file_name: String,
    /// Each kept blob and its record offset, in file order.
    kept: Vec<(usize, u64)>,
    /// Their data bytes.
    bytes: u64,
}

/// The dedup candidate a value stands for, if it is a weight reference.
fn candidate(package: usize, value: &mil_spec::Value) -> Option<Candidate> {
    let Some(value::Value::BlobFileValue(blob)) = &value.value else {
        return None;
    };
    let shape = match value.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(value_type::Type::TensorType(tensor)) => tensor
            .dimensions
            .iter()
            .map(|d| match d.dimension.as_ref()? {
                mil_spec::dimension::Dimension::Constant(c) => Some(c.size),
                mil_spec::dimension::Dimension::Unknown(_) => None,
            })
            .collect::<Option<Vec<u64>>>(),
        _ => None,
    };
    Some(Candidate {
        package,
        file_name: blob.file_name.clone(),
        offset: blob.offset,
        shape,
    })
}

fn visit_ops(block: &mil_spec::Block, f: &mut dyn FnMut(&mil_spec::Operation)) {
    for op in &block.operations {
        f(op);
        for nested in &op.blocks {
            visit_ops(nested, f);
        }
    }
}
