//! Generating the typed Rust API of merged models.
//!
//! [`generate`] is a pure function from model descriptions to formatted Rust
//! source: one module per model, one struct per function with typed input
//! and output structs, a state type per group of functions that share their
//! state descriptions, and an enum of the functions. The cargo layer writes
//! the text, and only when it changed.
//!
//! The text comes from `templates/model.rs.j2`, filled with values prepared
//! here: identifiers are sanitised ([`crate::naming`]) and checked for
//! collisions, string literals are escaped, doc lines are stripped of control
//! and bidirectional-override characters. The result is parsed with `syn`
//! and formatted with `prettyplease`, so whatever a model's names and
//! descriptions hold, the output is valid Rust that injects nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::CodegenError;
use crate::inspect;
use coreml_multifunction_format::naming;
use coreml_multifunction_format::proto::specification::{feature_type, state_feature_type};
use coreml_multifunction_format::proto::{FeatureDescription, FunctionDescription};
use coreml_multifunction_format::DataType;

/// The template of one model's module.
const MODEL_TEMPLATE: &str = include_str!("../../templates/model.rs.j2");

/// What the generator needs to know of one merged model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInterface {
    /// The model's name: the module's name (snake case).
    pub name: String,
    /// The environment variable holding the merged package's path at
    /// compile time.
    pub package_env_var: String,
    /// The functions, in the model's order.
    pub functions: Vec<FunctionDescription>,
    /// The default function.
    pub default_function: String,
    /// How each fixed-shape function was made, by function name, for its
    /// docs: the merged package describes its inputs as plain fixed ones
    /// and keeps no record of the flexible source. Empty when unknown
    /// ([`ModelInterface::of_package`]); the build fills it from the
    /// configuration the package was merged from.
    pub fixed_shapes: BTreeMap<String, FixedShapeOrigin>,
    /// The functions the merge split into chunks, by the split function's
    /// name: each gets a pipeline struct of that name running its chunks
    /// (which are functions of [`ModelInterface::functions`] and keep
    /// their own structs). Empty when unknown
    /// ([`ModelInterface::of_package`]); the build fills it.
    pub splits: BTreeMap<String, SplitOrigin>,
}

/// A function split into chunks by the merge (issue 21): what the pipeline
/// struct generated for it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitOrigin {
    /// The chunks, functions of the merged model, in the order they run
    /// (`<function>_chunk1`, `<function>_chunk2`, …).
    pub chunks: Vec<String>,
    /// The function as its source package declares it: the pipeline's
    /// inputs, outputs and states, in its order and with its descriptions.
    /// Each feature's type is the one the chunk declaring it has in the
    /// merged package (so a fixed-shape function split into chunks has its
    /// fixed shapes).
    pub description: FunctionDescription,
}

/// Where a fixed-shape function came from: a flexible source function with
/// some inputs fixed to one shape each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedShapeOrigin {
    /// The source package's file name, such as `encoder.mlpackage` (never
    /// a path, so the generated text does not depend on where it is).
    pub package: String,
    /// The function of the source package.
    pub source_function: String,
    /// The inputs fixed, with their shapes.
    pub shapes: BTreeMap<String, Vec<u64>>,
}

impl ModelInterface {
    /// The interface of a merged package, as model `name`.
    pub fn of_package(
        name: &str,
        package: &coreml_multifunction_format::package::Package,
    ) -> ModelInterface {
        ModelInterface {
            name: name.to_string(),
            package_env_var: package_env_var(name),
            functions: package
                .functions()
                .iter()
                .map(|f| f.description.clone().into_owned())
                .collect(),
            default_function: package.default_function().to_string(),
            fixed_shapes: BTreeMap::new(),
            splits: BTreeMap::new(),
        }
    }
}

/// The environment variable that holds model `name`'s merged package path
/// when the crate compiles: `COREML_MULTIFUNCTION_MODEL_<NAME>`.
pub fn package_env_var(name: &str) -> String {
    format!("COREML_MULTIFUNCTION_MODEL_{}", name.to_ascii_uppercase())
}

/// The environment variable that holds the generated file's path, which
/// `include_models!()` includes.
pub const GENERATED_ENV_VAR: &str = "COREML_MULTIFUNCTION_GENERATED";

/// The generated file's name in `OUT_DIR`.
pub const GENERATED_FILE: &str = "coreml_multifunction_models.rs";

/// The first line of every generated file.
pub const HEADER: &str = "// @generated by coreml-multifunction from the models' descriptions. Do not edit:\n// it is rewritten on every build that changes a model.\n";

/// Generates the typed API of `models`, formatted.
pub fn generate(models: &[ModelInterface]) -> Result<String, CodegenError> {
    let mut environment = minijinja::Environment::new();
    environment
        .add_template("model", MODEL_TEMPLATE)
        .map_err(|e| CodegenError {
            model: String::new(),
            message: format!("the model template is invalid: {e}"),
        })?;
    let template = environment.get_template("model").expect("added above");
    let mut source = String::new();
    for model in models {
        let context = model_context(model)?;
        let rendered = template
            .render(minijinja::context! { model => minijinja::Value::from(minijinja::value::Serde(&context)) })
            .map_err(|e| CodegenError {
                model: model.name.clone(),
                message: format!("rendering failed: {e}"),
            })?;
        source.push_str(&rendered);
        source.push('\n');
    }
    let file = syn::parse_file(&source).map_err(|e| CodegenError {
        model: models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        message: format!(
            "the generated code does not parse ({e}); this is a bug in coreml-multifunction"
        ),
    })?;
    Ok(format!("{HEADER}\n{}", prettyplease::unparse(&file)))
}

#[derive(Debug, Serialize)]
struct ModelContext {
    module: String,
    env_var: String,
    docs: Vec<String>,
    /// The functions of the package, for the `Function` enum.
    entries: Vec<EntryContext>,
    /// The function structs, then the pipeline structs.
    functions: Vec<FunctionContext>,
    default_type: String,
    states: Vec<StateContext>,
}

#[derive(Debug, Serialize)]
struct EntryContext {
    type_name: String,
    name_literal: String,
    doc: String,
}

#[derive(Debug, Serialize)]
struct FunctionContext {
    /// What the struct wraps: `function` (an `rt::Function`) or `pipeline`.
    inner: String,
    /// For a split function's pipeline: its chunks.
    pipeline: Option<PipelineContext>,
    name_literal: String,
    description_literal: String,
    name_doc: String,
    type_name: String,
    input_type: String,
    output_type: String,
    docs: Vec<String>,
    inputs: Vec<FeatureContext>,
    outputs: Vec<FeatureContext>,
    state_type: Option<String>,
}

#[derive(Debug, Serialize)]
struct PipelineContext {
    /// The chunks' struct names, in order.
    chunk_types: Vec<String>,
    /// The split function's outputs, as string literals.
    output_literals: Vec<String>,
}

#[derive(Debug, Serialize)]
struct FeatureContext {
    /// Passed to the runtime: false for an input of a split function that
    /// no chunk takes (its ops used none of it).
    passed: bool,
    field: String,
    name_literal: String,
    rust_type: String,
    docs: Vec<String>,
    optional: bool,
    shape: Option<String>,
    rank: usize,
    shape_const: String,
    shape_doc: String,
}

#[derive(Debug, Serialize)]
struct StateContext {
    type_name: String,
    docs: Vec<String>,
    buffers: Vec<BufferContext>,
}

#[derive(Debug, Serialize)]
struct BufferContext {
    method: String,
    name_literal: String,
    name_doc: String,
    element: String,
    summary: String,
}

/// Names generated from model names must be distinct: this records which
/// original each generated name came from.
struct Names<'a> {
    model: &'a str,
    what: &'static str,
    taken: BTreeMap<String, String>,
}

impl<'a> Names<'a> {
    fn new(model: &'a str, what: &'static str) -> Self {
        Names {
            model,
            what,
            taken: BTreeMap::new(),
        }
    }

    fn claim(&mut self, generated: String, original: &str) -> Result<String, CodegenError> {
        if let Some(first) = self.taken.get(&generated) {
            return Err(CodegenError {
                model: self.model.to_string(),
                message: format!(
                    "{} {first:?} and {original:?} would both become `{generated}` in Rust; rename one \
                     of them in its source model",
                    self.what
                ),
            });
        }
        self.taken.insert(generated.clone(), original.to_string());
        Ok(generated)
    }
}

/// A split function, as its pipeline struct presents it.
struct Split<'a> {
    /// Its name, inputs, outputs and states: the source's, each feature
    /// typed as the chunk declaring it declares it.
    description: FunctionDescription,
    /// Inputs no chunk takes.
    unused: Vec<String>,
    /// The indices of its chunks in the model's functions.
    chunks: Vec<usize>,
    origin: &'a SplitOrigin,
}

/// Checks `origin` against the model's functions and types the split
/// function's features from its chunks.
fn split<'a>(
    model: &ModelInterface,
    name: &str,
    origin: &'a SplitOrigin,
) -> Result<Split<'a>, CodegenError> {
    let error = |message: String| CodegenError {
        model: model.name.clone(),
        message: format!("split function {name:?}: {message}"),
    };
    if origin.chunks.is_empty() {
        return Err(error("it has no chunks".to_string()));
    }
    let mut chunks = Vec::new();
    for chunk in &origin.chunks {
        let index = model
            .functions
            .iter()
            .position(|f| &f.name == chunk)
            .ok_or_else(|| {
                error(format!(
                    "its chunk {chunk:?} is not a function of the model"
                ))
            })?;
        chunks.push(index);
    }
    let chunk_functions: Vec<&FunctionDescription> =
        chunks.iter().map(|&i| &model.functions[i]).collect();
    let typed =
        |feature: &FeatureDescription, declared: Option<&FeatureDescription>| FeatureDescription {
            r#type: declared.map_or_else(|| feature.r#type.clone(), |d| d.r#type.clone()),
            ..feature.clone()
        };
    let mut unused = Vec::new();
    let input = origin
        .description
        .input
        .iter()
        .map(|feature| {
            let declared = chunk_functions
                .iter()
                .find_map(|c| c.input.iter().find(|d| d.name == feature.name));
            if declared.is_none() {
                unused.push(feature.name.clone());
            }
            typed(feature, declared)
        })
        .collect();
    let output = origin
        .description
        .output
        .iter()
        .map(|feature| {
            let declared = chunk_functions
                .iter()
                .find_map(|c| c.output.iter().find(|d| d.name == feature.name))
                .ok_or_else(|| error(format!("no chunk outputs its output {:?}", feature.name)))?;
            Ok(typed(feature, Some(declared)))
        })
        .collect::<Result<Vec<_>, CodegenError>>()?;
    Ok(Split {
        description: FunctionDescription {
            name: name.to_string(),
            input,
            output,
            state: origin.description.state.clone(),
            ..Default::default()
        },
        unused,
        chunks,
        origin,
    })
}

fn model_context(model: &ModelInterface) -> Result<ModelContext, CodegenError> {
    let module = naming::snake(&model.name);
    let mut types = Names::new(&model.name, "names");
    types.claim("Function".to_string(), "the Function enum")?;

    let splits = model
        .splits
        .iter()
        .map(|(name, origin)| split(model, name, origin))
        .collect::<Result<Vec<_>, _>>()?;
    // Every struct's description: the functions', then the pipelines'.
    let items: Vec<&FunctionDescription> = model
        .functions
        .iter()
        .chain(splits.iter().map(|s| &s.description))
        .collect();
    // The split each chunk belongs to, and its place in it.
    let mut chunk_of: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (s, split) in splits.iter().enumerate() {
        for (k, &chunk) in split.chunks.iter().enumerate() {
            if let Some(&(other, _)) = chunk_of.get(&chunk) {
                return Err(CodegenError {
                    model: model.name.clone(),
                    message: format!(
                        "function {:?} is a chunk of both {:?} and {:?}",
                        model.functions[chunk].name,
                        splits[other].description.name,
                        split.description.name
                    ),
                });
            }
            chunk_of.insert(chunk, (s, k));
        }
    }

    // Functions with identical state descriptions share one state type.
    let mut groups: Vec<(Vec<FeatureDescription>, Vec<usize>)> = Vec::new();
    for (index, function) in items.iter().enumerate() {
        if function.state.is_empty() {
            continue;
        }
        match groups
            .iter_mut()
            .find(|(states, _)| *states == function.state)
        {
            Some((_, members)) => members.push(index),
            None => groups.push((function.state.clone(), vec![index])),
        }
    }

    let mut function_types = Vec::new();
    for (index, function) in items.iter().enumerate() {
        let original = if index < model.functions.len() {
            function.name.clone()
        } else {
            format!("{} (split into chunks)", function.name)
        };
        let type_name = naming::upper_camel(&function.name);
        let base = types.claim(type_name.clone(), &original)?;
        types.claim(format!("{base}Input"), &format!("{original} (its inputs)"))?;
        types.claim(
            format!("{base}Output"),
            &format!("{original} (its outputs)"),
        )?;
        function_types.push(base);
    }
    let pipeline_type = |s: usize| function_types[model.functions.len() + s].clone();
    let mut states = Vec::new();
    let mut state_type_of: BTreeMap<usize, String> = BTreeMap::new();
    for (descriptions, members) in &groups {
        let type_name = if groups.len() == 1 {
            "State".to_string()
        } else {
            format!("{}State", function_types[members[0]])
        };
        let type_name = types.claim(
            type_name,
            &format!("the state of {}", items[members[0]].name),
        )?;
        let users: Vec<String> = members
            .iter()
            .map(|&i| format!("[`{}`]", function_types[i]))
            .collect();
        let mut docs = vec![format!(
            "The state (persistent buffers, such as a KV cache) of {}{}.",
            users.join(", "),
            if members.len() > 1 {
                ": one value is usable with each of them"
            } else {
                ""
            }
        )];
        let mut methods = Names::new(&model.name, "state buffers");
        let mut buffers = Vec::new();
        for description in descriptions {
            let report = inspect::feature(description);
            docs.push(String::new());
            docs.push(format!(
                "- {}: {}",
                code_doc(&description.name),
                code_doc(&report.summary)
            ));
            buffers.push(BufferContext {
                method: methods.claim(naming::snake(&description.name), &description.name)?,
                name_literal: rust_literal(&description.name),
                name_doc: code_doc(&description.name),
                element: state_element(description).to_string(),
                summary: code_doc(&report.summary),
            });
        }
        for &member in members {
            state_type_of.insert(member, type_name.clone());
        }
        states.push(StateContext {
            type_name,
            docs,
            buffers,
        });
    }

    let mut functions = Vec::new();
    let mut entries = Vec::new();
    for (index, function) in items.iter().enumerate() {
        let type_name = function_types[index].clone();
        let split = index.checked_sub(model.functions.len()).map(|s| &splits[s]);
        let is_default = split.is_none() && function.name == model.default_function;
        let origin = model.fixed_shapes.get(&function.name);
        let mut docs = vec![format!(
            "Function {} of model {}{}.",
            code_doc(&function.name),
            code_doc(&model.name),
            if is_default {
                " (the default function)"
            } else {
                ""
            }
        )];
        let chunk = chunk_of.get(&index).map(|&(s, k)| {
            (
                k + 1,
                splits[s].chunks.len(),
                splits[s].description.name.as_str(),
                pipeline_type(s),
            )
        });
        if let Some((k, count, name, pipeline)) = &chunk {
            docs.push(String::new());
            docs.push(format!(
                "Chunk {k} of {count} of function {}, which the merge split: [`{pipeline}`] \
                 runs the chunks in order as that function.",
                code_doc(name)
            ));
        }
        if let Some(split) = split {
            let chunks: Vec<String> = split
                .chunks
                .iter()
                .map(|&c| format!("[`{}`]", function_types[c]))
                .collect();
            docs.push(String::new());
            docs.push(format!(
                "Split by the merge into {} chunks, {}, which this struct runs in order (an \
                 `rt::Pipeline`), passing each value a later chunk reads on by name and, for a \
                 stateful function, one state through every chunk: the same API as the \
                 unsplit function's struct.",
                split.chunks.len(),
                chunks.join(", ")
            ));
        }
        if let Some(origin) = origin {
            let fixed: Vec<String> = origin
                .shapes
                .iter()
                .map(|(input, shape)| {
                    format!(
                        "{} fixed at {}",
                        code_doc(input),
                        code_doc(&format!("{shape:?}"))
                    )
                })
                .collect();
            docs.push(String::new());
            docs.push(format!(
                "A fixed-shape function: function {} of {} with {}.",
                code_doc(&origin.source_function),
                code_doc(&origin.package),
                fixed.join(" and ")
            ));
        }
        for (title, features) in [
            ("Inputs", &function.input),
            ("Outputs", &function.output),
            ("States", &function.state),
        ] {
            if features.is_empty() {
                continue;
            }
            docs.push(String::new());
            docs.push(format!("{title}:"));
            for feature in features {
                let report = inspect::feature(feature);
                let mut line = format!(
                    "- {}: {}",
                    code_doc(&feature.name),
                    code_doc(&report.summary)
                );
                if !feature.short_description.is_empty() {
                    line.push_str(&format!(" — {}", doc_text(&feature.short_description)));
                }
                docs.push(line);
            }
        }
        let mut inputs = features(&model.name, &function.input, true, origin)?;
        if let Some(split) = split {
            for input in &mut inputs {
                input.passed = !split
                    .unused
                    .iter()
                    .any(|u| rust_literal(u) == input.name_literal);
                if !input.passed {
                    input.docs.push(String::new());
                    input.docs.push(
                        "No chunk takes it (the function's ops do not use it): it is not passed on."
                            .to_string(),
                    );
                }
            }
        }
        if split.is_none() {
            let doc = match &chunk {
                Some((k, count, _, pipeline)) => format!(
                    "Function {}: chunk {k} of {count} of [`{pipeline}`].",
                    code_doc(&function.name)
                ),
                None => format!("Function {}.", code_doc(&function.name)),
            };
            entries.push(EntryContext {
                type_name: type_name.clone(),
                name_literal: rust_literal(&function.name),
                doc,
            });
        }
        functions.push(FunctionContext {
            inner: if split.is_some() {
                "pipeline"
            } else {
                "function"
            }
            .to_string(),
            pipeline: split.map(|split| PipelineContext {
                chunk_types: split
                    .chunks
                    .iter()
                    .map(|&c| function_types[c].clone())
                    .collect(),
                output_literals: split
                    .origin
                    .description
                    .output
                    .iter()
                    .map(|o| rust_literal(&o.name))
                    .collect(),
            }),
            name_literal: rust_literal(&function.name),
            description_literal: rust_byte_literal(&prost::Message::encode_to_vec(*function)),
            name_doc: code_doc(&function.name),
            input_type: format!("{type_name}Input"),
            output_type: format!("{type_name}Output"),
            type_name,
            docs,
            inputs,
            outputs: features(&model.name, &function.output, false, None)?,
            state_type: state_type_of.get(&index).cloned(),
        });
    }
    let default_type = model
        .functions
        .iter()
        .position(|f| f.name == model.default_function)
        .map(|i| function_types[i].clone())
        .ok_or_else(|| CodegenError {
            model: model.name.clone(),
            message: format!(
                "the default function {:?} is not one of the functions",
                model.default_function
            ),
        })?;
    let names: Vec<String> = model.functions.iter().map(|f| code_doc(&f.name)).collect();
    let mut docs = vec![
        format!(
            "The {} multifunction model: {} ({} by default).",
            code_doc(&model.name),
            names.join(", "),
            code_doc(&model.default_function)
        ),
        String::new(),
        "Each function is a struct with typed inputs and outputs; load it with `load()` and run it with `predict`."
            .to_string(),
    ];
    if !splits.is_empty() {
        let described: Vec<String> = splits
            .iter()
            .enumerate()
            .map(|(s, split)| {
                format!(
                    "[`{}::{}`] (chunks {})",
                    module,
                    pipeline_type(s),
                    split
                        .chunks
                        .iter()
                        .map(|&c| code_doc(&model.functions[c].name))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        docs.push(String::new());
        docs.push(format!(
            "Functions the merge split into chunks are run by pipeline structs of their own \
             names, with the same API: {}.",
            described.join(", ")
        ));
    }
    Ok(ModelContext {
        module,
        env_var: rust_literal(&model.package_env_var),
        docs,
        entries,
        functions,
        default_type,
        states,
    })
}

fn features(
    model: &str,
    descriptions: &[FeatureDescription],
    inputs: bool,
    origin: Option<&FixedShapeOrigin>,
) -> Result<Vec<FeatureContext>, CodegenError> {
    let mut fields = Names::new(model, if inputs { "inputs" } else { "outputs" });
    let mut out = Vec::new();
    for description in descriptions {
        let field = fields.claim(naming::snake(&description.name), &description.name)?;
        let report = inspect::feature(description);
        let optional = inputs && report.optional;
        let base_type = rust_type(description);
        let rust_type = if optional {
            format!("Option<{base_type}>")
        } else {
            base_type
        };
        let mut docs = vec![format!(
            "{}: {}.",
            code_doc(&description.name),
            code_doc(&report.summary)
        )];
        if !description.short_description.is_empty() {
            docs.push(String::new());
            docs.extend(description.short_description.lines().map(doc_text));
        }
        let flexible = report.shape_range.is_some() || report.enumerated_shapes.is_some();
        let shape = report
            .shape
            .as_ref()
            .filter(|shape| !shape.is_empty() && shape.iter().all(|&d| d >= 0) && inputs)
            .map(|shape| format!("{shape:?}"));
        let rank = report.shape.as_ref().map_or(0, Vec::len);
        // `r#type` → `TYPE_SHAPE`, `_2nd` → `_2ND_SHAPE`: distinct as the fields are.
        let constant = field.trim_start_matches("r#").to_ascii_uppercase();
        let fixed_from = origin.filter(|o| o.shapes.contains_key(&description.name));
        let shape_doc = match (flexible, fixed_from) {
            (true, _) => format!("The shape of `{field}` (its default; the input is flexible)."),
            (false, Some(origin)) => format!(
                "The shape of `{field}`: fixed at {} from function {} of {}, where it is flexible.",
                shape.as_deref().map_or_else(String::new, code_doc),
                code_doc(&origin.source_function),
                code_doc(&origin.package)
            ),
            (false, None) => format!("The shape of `{field}`."),
        };
        out.push(FeatureContext {
            passed: true,
            shape_const: format!("{constant}_SHAPE"),
            field,
            name_literal: rust_literal(&description.name),
            rust_type,
            docs,
            optional,
            shape,
            rank,
            shape_doc,
        });
    }
    Ok(out)
}

/// The Rust type of a feature.
fn rust_type(description: &FeatureDescription) -> String {
    let kind = description.r#type.as_ref().and_then(|t| t.r#type.as_ref());
    match kind {
        Some(feature_type::Type::MultiArrayType(array)) => {
            match DataType::from_array_data_type(array.data_type) {
                Some(data_type) => format!("rt::Tensor<{}>", element(data_type)),
                None => "rt::FeatureValue".to_string(),
            }
        }
        Some(feature_type::Type::Int64Type(_)) => "i64".to_string(),
        Some(feature_type::Type::DoubleType(_)) => "f64".to_string(),
        Some(feature_type::Type::StringType(_)) => "String".to_string(),
        Some(feature_type::Type::ImageType(_)) => "rt::Image".to_string(),
        Some(feature_type::Type::DictionaryType(_)) => "rt::Dictionary".to_string(),
        _ => "rt::FeatureValue".to_string(),
    }
}

fn element(data_type: DataType) -> &'static str {
    match data_type {
        DataType::Float16 => "f16",
        DataType::Float32 => "f32",
        DataType::Float64 => "f64",
        DataType::Int32 => "i32",
        DataType::Int8 => "i8",
    }
}

fn state_element(description: &FeatureDescription) -> &'static str {
    match description.r#type.as_ref().and_then(|t| t.r#type.as_ref()) {
        Some(feature_type::Type::StateType(state)) => match &state.r#type {
            Some(state_feature_type::Type::ArrayType(array)) => {
                DataType::from_array_data_type(array.data_type).map_or("f16", element)
            }
            None => "f16",
        },
        _ => "f16",
    }
}

/// A Rust string literal holding `text` exactly. Everything but printable
/// ASCII is written as a `\u{…}` escape, so no character of a model's text
/// can end the literal or trip a lint on invisible characters.
pub fn rust_literal(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('"');
    for c in text.chars() {
        match c {
            '"' => literal.push_str("\\\""),
            '\\' => literal.push_str("\\\\"),
            ' '..='~' => literal.push(c),
            other => literal.push_str(&format!("\\u{{{:x}}}", other as u32)),
        }
    }
    literal.push('"');
    literal
}

/// A Rust byte-string literal of `bytes`: printable ASCII as itself (but
/// `"` and `\`), everything else as `\xNN`.
fn rust_byte_literal(bytes: &[u8]) -> String {
    let mut literal = String::with_capacity(bytes.len() * 2 + 3);
    literal.push_str("b\"");
    for &byte in bytes {
        match byte {
            b'"' => literal.push_str("\\\""),
            b'\\' => literal.push_str("\\\\"),
            b' '..=b'~' => literal.push(char::from(byte)),
            other => literal.push_str(&format!("\\x{other:02x}")),
        }
    }
    literal.push('"');
    literal
}

/// Text safe on one `///` line: control characters (newlines included) and
/// bidirectional overrides, which rustc rejects in comments, become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}');
            if c.is_control() || bidi || c == '\u{2028}' || c == '\u{2029}' {
                ' '
            } else {
                c
            }
        })
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// A model's prose (a description) on one `///` line, read literally:
/// besides [`one_line`], the characters Markdown, HTML and rustdoc's links
/// give a meaning are backslash-escaped, so `MultiArray<int32>` is no
/// unclosed HTML tag and `[1]` no broken intra-doc link in the app's
/// `cargo doc`.
pub fn doc_text(text: &str) -> String {
    let mut escaped = String::new();
    for c in one_line(text).chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '#' | '|' | '~'
        ) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Text shown as code in docs: a name, or a feature's type and shape.
fn code_doc(text: &str) -> String {
    format!("`{}`", one_line(text).replace('`', "'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_everything_that_could_end_them() {
        assert_eq!(rust_literal("plain"), "\"plain\"");
        assert_eq!(rust_literal("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(rust_literal("x\n}"), "\"x\\u{a}}\"");
        assert_eq!(rust_literal("é\u{202e}"), "\"\\u{e9}\\u{202e}\"");
        let parsed: syn::LitStr = syn::parse_str(&rust_literal("*/ \"; panic!() \u{0} ü")).unwrap();
        assert_eq!(parsed.value(), "*/ \"; panic!() \u{0} ü");
    }

    #[test]
    fn doc_text_stays_on_one_line() {
        assert_eq!(doc_text("a\nfn evil() {}\r\n"), "a fn evil() {}");
        assert_eq!(doc_text("x\u{202e}y"), "x y");
        assert_eq!(doc_text("*/ ok"), "\\*/ ok");
        assert_eq!(
            doc_text("MultiArray<int32> [1] a_b"),
            "MultiArray\\<int32\\> \\[1\\] a\\_b"
        );
        assert_eq!(code_doc("MultiArray<int32> [1]"), "`MultiArray<int32> [1]`");
        assert_eq!(code_doc("a`b"), "`a'b`");
    }
}
