//! The generated API: snapshots for each kind of fixture model, name
//! collisions, and hostile names and descriptions.

#[path = "../../tests/common/mod.rs"]
mod common;

use coreml_multifunction_build::__private::{generate, rust_literal, ModelInterface};
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
