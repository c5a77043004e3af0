//! The generated API: snapshots for each kind of fixture model, name
//! collisions, and hostile names and descriptions.

#[path = "../../tests/common/mod.rs"]
mod common;

use coreml_multifunction_build::__private::{
    generate, rust_literal, FixedShapeOrigin, ModelInterface, SplitOrigin,
};
use coreml_multifunction_build::package::Package;

/// The interface of a committed merged package, as the build would see it.
fn interface(scenario: &str, model: &str) -> ModelInterface {
    ModelInterface::of_package(
        model,
        &Package::open(common::merged_package(scenario)).unwrap(),
    )
}

#[test]
fn snapshots_of_each_kind_of_model() {
    for (scenario, model) in [
        ("lora_pair", "combined"),
        ("multi_io", "multi_io"),
        ("flexible_shapes", "flexible"),
        ("stateful", "llm"),
        ("image", "vision"),
        ("compressed", "compressed"),
    ] {
        let code = generate(&[interface(scenario, model)]).unwrap();
        insta::assert_snapshot!(scenario, code);
    }
}

/// A fixed-shape function next to its flexible source: `main` of
/// flexible_range (`tokens` allows `[1, 1..=16, 8]`) and `len_5`, the same
/// function with `tokens` fixed to `[1, 5, 8]`, merged into a scratch
/// directory.
fn fixed_shape_interface() -> (tempfile::TempDir, ModelInterface) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fixed.mlpackage");
    coreml_multifunction_build::merge::MultiFunctionDescriptor::new()
        .add_function(common::source_package("flexible_range"), "main")
        .add_function(common::source_package("flexible_range"), "len_5")
        .fixed_shape("len_5", "tokens", [1, 5, 8])
        .default_function("main")
        .merge(&out)
        .unwrap();
    let interface = ModelInterface::of_package("fixed", &Package::open(&out).unwrap());
    (dir, interface)
}

#[test]
fn a_fixed_shape_function_gets_a_fixed_shape_const() {
    // From the merged package alone: its description is a fixed one.
    let (_dir, interface) = fixed_shape_interface();
    let code = generate(&[interface]).unwrap();
    let fixed = "    impl Len5Input {\n        /// The shape of `tokens`.\n        \
                 pub const TOKENS_SHAPE: [usize; 3] = [1, 5, 8];\n    }\n";
    assert!(code.contains(fixed), "{code}");
    assert!(
        code.contains("/// - `tokens`: `MultiArray<fp16> [1, 5, 8]`\n"),
        "{code}"
    );
    // Its output shape is known too, where the flexible source's is not.
    assert!(
        code.contains("/// - `projected`: `MultiArray<fp16> [1, 5, 8]`\n"),
        "{code}"
    );
    let flexible = "    impl MainInput {\n        \
                    /// The shape of `tokens` (its default; the input is flexible).\n        \
                    pub const TOKENS_SHAPE: [usize; 3] = [1, 4, 8];\n    }\n";
    assert!(code.contains(flexible), "{code}");
    assert!(!code.contains("fixed-shape"), "{code}");
}

#[test]
fn a_fixed_shape_function_says_where_it_came_from_when_the_build_knows() {
    // The build knows the configuration it merged from, and says so.
    let (_dir, mut interface) = fixed_shape_interface();
    interface.fixed_shapes.insert(
        "len_5".to_string(),
        FixedShapeOrigin {
            package: "flexible_range.mlpackage".to_string(),
            source_function: "main".to_string(),
            shapes: [("tokens".to_string(), vec![1, 5, 8])].into(),
        },
    );
    let code = generate(&[interface]).unwrap();
    insta::assert_snapshot!("fixed_shapes", code);
    assert!(
        code.contains(
            "    /// Function `len_5` of model `fixed`.\n    ///\n    \
             /// A fixed-shape function: function `main` of `flexible_range.mlpackage` with \
             `tokens` fixed at `[1, 5, 8]`.\n"
        ),
        "{code}"
    );
    assert!(
        code.contains(
            "        /// The shape of `tokens`: fixed at `[1, 5, 8]` from function `main` of \
             `flexible_range.mlpackage`, where it is flexible.\n        \
             pub const TOKENS_SHAPE: [usize; 3] = [1, 5, 8];\n"
        ),
        "{code}"
    );
    compile_check("fixed", &code);
}

use coreml_multifunction_build::proto::specification::{
    array_feature_type, feature_type, ArrayFeatureType, FeatureType,
};
use coreml_multifunction_build::proto::{FeatureDescription, FunctionDescription};

fn tensor_feature(name: &str, description: &str) -> FeatureDescription {
    FeatureDescription {
        name: name.to_string(),
        short_description: description.to_string(),
        r#type: Some(FeatureType {
            r#type: Some(feature_type::Type::MultiArrayType(ArrayFeatureType {
                shape: vec![1, 2],
                data_type: array_feature_type::ArrayDataType::Float32 as i32,
                ..Default::default()
            })),
            is_optional: false,
        }),
    }
}

fn function(
    name: &str,
    inputs: Vec<FeatureDescription>,
    outputs: Vec<FeatureDescription>,
) -> FunctionDescription {
    FunctionDescription {
        name: name.to_string(),
        input: inputs,
        output: outputs,
        ..Default::default()
    }
}

/// Names and descriptions chosen to break naive generators.
fn hostile() -> ModelInterface {
    let evil = "*/ \" \\ \n}\nfn injected() { panic!() }\n/* \r\u{202e}ʇxǝʇ";
    ModelInterface {
        name: "hostile".to_string(),
        package_env_var: "COREML_MULTIFUNCTION_MODEL_HOSTILE".to_string(),
        functions: vec![
            function(
                "type",
                vec![
                    tensor_feature("self", evil),
                    tensor_feature("fn", "\"quoted\""),
                    tensor_feature("2nd-input", "/// not a doc"),
                    tensor_feature("Ünïcode naïve", "émoji 🚀"),
                ],
                vec![
                    tensor_feature("crate", evil),
                    tensor_feature("r#raw", "`backticks`"),
                ],
            ),
            function(
                "_2nd",
                vec![tensor_feature("x", "")],
                vec![tensor_feature("y", evil)],
            ),
        ],
        default_function: "type".to_string(),
        fixed_shapes: Default::default(),
        splits: Default::default(),
    }
}

#[test]
fn hostile_names_and_descriptions_give_safe_code() {
    let code = generate(&[hostile()]).unwrap();
    let file = syn::parse_file(&code).unwrap();
    // Nothing was injected: the only items are the model module, and
    // `injected` appears only inside docs and string literals.
    assert_eq!(file.items.len(), 1);
    let functions = function_names(&file);
    assert!(!functions.iter().any(|f| f == "injected"), "{functions:?}");
    assert!(functions.iter().any(|f| f == "predict"), "{functions:?}");
    assert!(code.contains("pub struct Type "), "{code}");
    assert!(code.contains("pub self_: rt::Tensor<f32>"), "{code}");
    assert!(code.contains("pub r#fn: rt::Tensor<f32>"), "{code}");
    assert!(code.contains("pub _2nd_input: rt::Tensor<f32>"), "{code}");
    assert!(code.contains("pub crate_: rt::Tensor<f32>"), "{code}");
    // The original names survive exactly, escaped, in string literals.
    assert!(code.contains(r#""\u{dc}n\u{ef}code na\u{ef}ve""#), "{code}");
    compile_check("hostile", &code);
}

#[test]
fn names_that_collide_after_sanitising_name_both_originals() {
    let model = ModelInterface {
        name: "clash".to_string(),
        package_env_var: "X".to_string(),
        functions: vec![function(
            "f",
            vec![
                tensor_feature("input-ids", ""),
                tensor_feature("input_ids", ""),
            ],
            vec![tensor_feature("y", "")],
        )],
        default_function: "f".to_string(),
        fixed_shapes: Default::default(),
        splits: Default::default(),
    };
    let error = generate(&[model]).unwrap_err();
    assert_eq!(error.model, "clash");
    assert!(
        error.message.contains("\"input-ids\" and \"input_ids\""),
        "{error}"
    );

    let model = ModelInterface {
        name: "clash".to_string(),
        package_env_var: "X".to_string(),
        functions: vec![
            function(
                "adapter_1",
                vec![tensor_feature("x", "")],
                vec![tensor_feature("y", "")],
            ),
            function(
                "adapter1",
                vec![tensor_feature("x", "")],
                vec![tensor_feature("y", "")],
            ),
        ],
        default_function: "adapter1".to_string(),
        fixed_shapes: Default::default(),
        splits: Default::default(),
    };
    let error = generate(&[model]).unwrap_err();
    assert!(
        error.message.contains("\"adapter_1\" and \"adapter1\"")
            && error.message.contains("Adapter1"),
        "{error}"
    );
}

/// The names of every function and method defined in `file`.
fn function_names(file: &syn::File) -> Vec<String> {
    struct Collect(Vec<String>);
    impl<'ast> syn::visit::Visit<'ast> for Collect {
        fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
            self.0.push(item.sig.ident.to_string());
            syn::visit::visit_item_fn(self, item);
        }
        fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
            self.0.push(item.sig.ident.to_string());
            syn::visit::visit_impl_item_fn(self, item);
        }
    }
    let mut collect = Collect(Vec::new());
    syn::visit::visit_file(&mut collect, file);
    collect.0
}

/// Compiles `code` in a scratch crate depending on this one, as a user's
/// crate would include it.
fn compile_check(name: &str, code: &str) {
    use std::path::Path;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(format!("codegen-{name}"));
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(
        root.join("Cargo.toml"),
        format!(
            "[package]\nname = \"codegen-{name}\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[dependencies]\n\
             coreml-multifunction = {{ path = {:?} }}\n\n[workspace]\n",
            concat!(env!("CARGO_MANIFEST_DIR"), "/..")
        ),
    )
    .unwrap();
    std::fs::write(root.join("src/generated.rs"), code).unwrap();
    std::fs::write(
        root.join("build.rs"),
        format!("fn main() {{ println!(\"cargo:rustc-env=COREML_MULTIFUNCTION_MODEL_{}=/nowhere\"); }}\n", name.to_ascii_uppercase()),
    )
    .unwrap();
    std::fs::write(
        root.join("src/lib.rs"),
        "#![deny(warnings)]\ninclude!(\"generated.rs\");\n",
    )
    .unwrap();
    std::fs::copy(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("Cargo.lock"),
        root.join("Cargo.lock"),
    )
    .unwrap();
    // `cargo doc` too: the docs hold the model's own text, which must read
    // literally rather than as Markdown, HTML or intra-doc links.
    for (command, what) in [
        (&["check"][..], "compile"),
        (&["doc", "--no-deps"][..], "document cleanly"),
    ] {
        let output =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(command)
                .args(["--offline", "--quiet"])
                .current_dir(&root)
                .env(
                    "CARGO_TARGET_DIR",
                    Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-target"),
                )
                .env("RUSTDOCFLAGS", "-D warnings")
                .output()
                .unwrap();
        assert!(
            output.status.success(),
            "the generated code does not {what}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Whatever the names and descriptions, generation either reports a
    /// collision or gives code that parses, with every name kept exactly in
    /// a string literal.
    #[test]
    fn random_names_and_descriptions_give_parsing_code(
        function in "\\PC{0,12}",
        input in "[\\PC\"\\\\\n\r*/`{}#!]{0,16}",
        output in "\\PC{0,16}",
        description in "(\\PC|\n|\r|\u{202e}|\"|\\*/){0,40}",
    ) {
        let model = ModelInterface {
            name: "random".to_string(),
            package_env_var: "COREML_MULTIFUNCTION_MODEL_RANDOM".to_string(),
            functions: vec![function_with(&function, &input, &output, &description)],
            default_function: function.clone(),
            fixed_shapes: Default::default(),
            splits: Default::default(),
        };
        match generate(&[model]) {
            Ok(code) => {
                let file = syn::parse_file(&code).unwrap();
                proptest::prop_assert_eq!(file.items.len(), 1);
                for name in [&function, &input, &output] {
                    let literal = rust_literal(name);
                    proptest::prop_assert!(code.contains(&literal), "{} missing", literal);
                }
            }
            Err(error) => proptest::prop_assert!(error.message.contains("would both become"), "{}", error),
        }
    }
}

fn function_with(name: &str, input: &str, output: &str, description: &str) -> FunctionDescription {
    function(
        name,
        vec![tensor_feature(input, description)],
        vec![tensor_feature(output, description)],
    )
}

fn state_feature(name: &str) -> FeatureDescription {
    use coreml_multifunction_build::proto::specification::{state_feature_type, StateFeatureType};
    FeatureDescription {
        name: name.to_string(),
        short_description: String::new(),
        r#type: Some(FeatureType {
            r#type: Some(feature_type::Type::StateType(StateFeatureType {
                r#type: Some(state_feature_type::Type::ArrayType(ArrayFeatureType {
                    shape: vec![1, 4],
                    data_type: array_feature_type::ArrayDataType::Float16 as i32,
                    ..Default::default()
                })),
            })),
            is_optional: false,
        }),
    }
}

/// `decode` (input_ids, position → logits, on state kv) split into two
/// chunks passing `hidden` on, beside an unsplit `prefill` on the same
/// state. The chunks have the fixed shape `[1, 1]` where the source's
/// `input_ids` is `[1, 2]`; `position` is used by no chunk.
fn split_interface() -> ModelInterface {
    let kv = state_feature("kv");
    let mut fixed = tensor_feature("input_ids", "");
    if let Some(FeatureType {
        r#type: Some(feature_type::Type::MultiArrayType(array)),
        ..
    }) = &mut fixed.r#type
    {
        array.shape = vec![1, 1];
    }
    let chunk1 = FunctionDescription {
        state: vec![kv.clone()],
        ..function(
            "decode_chunk1",
            vec![fixed],
            vec![tensor_feature("hidden", "")],
        )
    };
    let chunk2 = FunctionDescription {
        state: vec![kv.clone()],
        ..function(
            "decode_chunk2",
            vec![tensor_feature("hidden", "")],
            vec![tensor_feature("logits", "")],
        )
    };
    let prefill = FunctionDescription {
        state: vec![kv.clone()],
        ..function(
            "prefill",
            vec![tensor_feature("input_ids", "")],
            vec![tensor_feature("logits", "")],
        )
    };
    let source = FunctionDescription {
        state: vec![kv],
        ..function(
            "main",
            vec![
                tensor_feature("input_ids", "The tokens."),
                tensor_feature("position", "Unused."),
            ],
            vec![tensor_feature("logits", "Scores.")],
        )
    };
    ModelInterface {
        name: "split".to_string(),
        package_env_var: "COREML_MULTIFUNCTION_MODEL_SPLIT".to_string(),
        functions: vec![prefill, chunk1, chunk2],
        default_function: "prefill".to_string(),
        fixed_shapes: Default::default(),
        splits: [(
            "decode".to_string(),
            SplitOrigin {
                chunks: vec!["decode_chunk1".to_string(), "decode_chunk2".to_string()],
                description: source,
            },
        )]
        .into(),
    }
}

#[test]
fn a_split_function_gets_a_pipeline_struct_with_its_own_api() {
    let code = generate(&[split_interface()]).unwrap();
    insta::assert_snapshot!("split", code);
    // The pipeline has the unsplit function's name, types and state type.
    for expected in [
        "pub struct Decode {\n        pipeline: rt::Pipeline,\n    }",
        "pub struct DecodeInput {",
        "pub struct DecodeOutput {",
        "pub const CHUNKS: [&'static str; 2] = [DecodeChunk1::NAME, DecodeChunk2::NAME];",
        "(DecodeChunk1::NAME, DecodeChunk1::DESCRIPTION),",
        "pub fn load_async(configuration: &rt::Configuration) -> rt::Loading<Self>",
        "rt::Pipeline::load_generated_async(\n                    rt::ModelLocation::built(PACKAGE),",
        "pub fn new_state(&self) -> rt::Result<State>",
        "input: &DecodeInput,\n            state: &mut State,\n        ) -> rt::Result<DecodeOutput>",
        // Docs and order from the source, types from the chunks.
        "/// The tokens.\n        pub input_ids: rt::Tensor<f32>,",
        "pub const INPUT_IDS_SHAPE: [usize; 2] = [1, 1];",
        "/// Function `decode_chunk1`: chunk 1 of 2 of [`Decode`].",
        "Chunk 2 of 2 of function `decode`, which the merge split",
        "[`split::Decode`] (chunks `decode_chunk1`, `decode_chunk2`)",
        // One state type serves the pipeline, its chunks and prefill.
        "of [`Prefill`], [`DecodeChunk1`], [`DecodeChunk2`], [`Decode`]: one value",
    ] {
        assert!(code.contains(expected), "{expected}\n---\n{code}");
    }
    // The chunks stay functions of the enum; the pipeline is none.
    assert!(code.contains("pub const ALL: [Function; 3]"), "{code}");
    // An input no chunk takes is a field, never passed on.
    assert!(code.contains("pub position: rt::Tensor<f32>"), "{code}");
    assert!(!code.contains("features.insert(\"position\""), "{code}");
    compile_check("split", &code);
}

#[test]
fn a_split_function_is_checked_against_the_model() {
    // A function named as the split one collides with its pipeline.
    let mut model = split_interface();
    let mut decode = model.functions[0].clone();
    decode.name = "decode".to_string();
    model.functions.push(decode);
    let error = generate(&[model]).unwrap_err();
    assert!(
        error
            .message
            .contains("\"decode\" and \"decode (split into chunks)\" would both become `Decode`"),
        "{error}"
    );
    // A chunk the model lacks, and an output no chunk computes.
    let mut model = split_interface();
    model.splits.get_mut("decode").unwrap().chunks[1] = "decode_chunk3".to_string();
    let error = generate(&[model]).unwrap_err();
    assert!(
        error
            .message
            .contains("split function \"decode\": its chunk \"decode_chunk3\" is not a function"),
        "{error}"
    );
    let mut model = split_interface();
    model.splits.get_mut("decode").unwrap().description.output[0].name = "probs".to_string();
    let error = generate(&[model]).unwrap_err();
    assert!(
        error
            .message
            .contains("no chunk outputs its output \"probs\""),
        "{error}"
    );
}
