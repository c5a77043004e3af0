//! The `inspect` command over every fixture, through the real binary.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coreml-multifunction"))
        .args(args)
        .output()
        .expect("the CLI runs")
}

fn inspect_json(package: &Path) -> Value {
    let output = cli(&["inspect", package.to_str().unwrap(), "--json"]);
    assert!(
        output.status.success(),
        "{}: {}",
        package.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("inspect --json prints JSON")
}

fn names(features: &Value) -> Vec<&str> {
    features
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect()
}

fn function<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no function {name} in {report}"))
}

#[test]
fn every_fixture_reports_its_documented_fields_and_typed_io() {
    for package in common::all_packages() {
        let report = inspect_json(&package);
        for key in [
            "specification_version",
            "model_type",
            "default_function",
            "functions",
            "weights",
            "metadata",
        ] {
            assert!(report.get(key).is_some(), "{}: no {key}", package.display());
        }
        assert_eq!(report["model_type"], "mlProgram");
        let functions = report["functions"].as_array().unwrap();
        assert!(!functions.is_empty());
        let defaults: Vec<_> = functions
            .iter()
            .filter(|f| f["is_default"] == true)
            .collect();
        assert_eq!(defaults.len(), 1, "{}", package.display());
        assert_eq!(defaults[0]["name"], report["default_function"]);
        for function in functions {
            for key in ["name", "opset", "inputs", "outputs", "states"] {
                assert!(
                    function.get(key).is_some(),
                    "{}: function without {key}",
                    package.display()
                );
            }
            assert!(!function["inputs"].as_array().unwrap().is_empty());
            assert!(!function["outputs"].as_array().unwrap().is_empty());
            for feature in function["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .chain(function["outputs"].as_array().unwrap())
            {
                assert_ne!(
                    feature["kind"],
                    "unknown",
                    "{}: {feature}",
                    package.display()
                );
            }
        }
        let weights = &report["weights"];
        // Blobs exactly when there is a weight file (the MIL-builder
        // fixtures have none).
        let has_weight_file = package
            .join("Data/com.apple.CoreML/weights/weight.bin")
            .exists();
        assert_eq!(
            weights["blob_count"].as_u64().unwrap() >= 1,
            has_weight_file,
            "{}",
            package.display()
        );
        let by_dtype: u64 = weights["bytes_by_dtype"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(by_dtype, weights["bytes"].as_u64().unwrap());
    }
}

#[test]
fn a_merged_lora_pair_lists_both_adapters_with_their_own_io() {
    let report = inspect_json(&common::merged_package("lora_pair"));
    assert_eq!(report["specification_version"], 9);
    assert_eq!(report["multifunction"], true);
    assert_eq!(report["default_function"], "adapter_1");
    for (name, input, output) in [
        ("adapter_1", "input_adapter_1", "out_adapter_1"),
        ("adapter_2", "input_adapter_2", "out_adapter_2"),
    ] {
        let function = function(&report, name);
        assert_eq!(function["opset"], "CoreML8");
        assert_eq!(names(&function["inputs"]), [input]);
        assert_eq!(names(&function["outputs"]), [output]);
        assert_eq!(function["inputs"][0]["dtype"], "fp16");
        assert_eq!(function["inputs"][0]["shape"], serde_json::json!([1, 64]));
    }
    // coremltools stored the shared base once: fewer blobs than references.
    let weights = &report["weights"];
    assert!(weights["references"].as_u64().unwrap() > weights["blob_count"].as_u64().unwrap());
}

#[test]
fn dtypes_states_flexible_shapes_and_images_are_reported() {
    let multi = inspect_json(&common::source_package("multi_io"));
    let main = function(&multi, "main");
    let dtypes: Vec<_> = main["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["dtype"].as_str().unwrap())
        .collect();
    assert_eq!(dtypes, ["fp32", "int32", "fp16"]);
    let outputs: Vec<_> = main["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["dtype"].as_str().unwrap())
        .collect();
    assert_eq!(outputs, ["fp32", "fp16", "int32"]);
    assert_eq!(
        main["inputs"][1]["description"],
        "Token ids looked up in a 32-entry embedding"
    );
    assert_eq!(multi["metadata"]["author"], "coreml-multifunction fixtures");
    assert_eq!(multi["metadata"]["version"], "1.2.3");
    assert_eq!(multi["metadata"]["user_defined"]["fixture"], "multi_io");

    let stateful = inspect_json(&common::merged_package("stateful"));
    for name in ["prefill", "decode"] {
        let states = &function(&stateful, name)["states"];
        assert_eq!(names(states), ["kv_cache"]);
        assert_eq!(states[0]["kind"], "state");
        assert_eq!(states[0]["dtype"], "fp16");
        assert_eq!(states[0]["shape"], serde_json::json!([1, 8, 16]));
    }

    let flexible = inspect_json(&common::merged_package("flexible_shapes"));
    let range = &function(&flexible, "range")["inputs"][0];
    assert_eq!(
        range["shape_range"][1],
        serde_json::json!({"lower": 1, "upper": 16})
    );
    assert_eq!(range["summary"], "MultiArray<fp16> [1, 1..=16, 8]");
    let enumerated = &function(&flexible, "enumerated")["inputs"][0];
    assert_eq!(enumerated["enumerated_shapes"].as_array().unwrap().len(), 3);
    assert!(enumerated["enumerated_shapes"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!([1, 2, 8])));

    let image = inspect_json(&common::merged_package("image"));
    assert_eq!(
        function(&image, "rgb")["inputs"][0]["image"]["color_space"],
        "RGB"
    );
    assert_eq!(
        function(&image, "bgr")["inputs"][0]["image"]["color_space"],
        "BGR"
    );
    assert_eq!(function(&image, "bgr")["inputs"][0]["image"]["width"], 16);

    let legacy = inspect_json(&common::source_package("target_ios15"));
    assert_eq!(legacy["specification_version"], 6);
    assert_eq!(function(&legacy, "main")["opset"], "CoreML5");
    assert_eq!(legacy["multifunction"], false);

    let compressed = inspect_json(&common::merged_package("compressed"));
    let dtypes = compressed["weights"]["bytes_by_dtype"].as_object().unwrap();
    for dtype in ["int8", "int4", "uint4"] {
        assert!(dtypes.contains_key(dtype), "no {dtype} blobs in {dtypes:?}");
    }
}

#[test]
fn the_text_form_lists_functions_and_their_io() {
    let output = cli(&[
        "inspect",
        common::merged_package("stateful").to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("decode (default): opset CoreML8"), "{text}");
    assert!(
        text.contains("input  position: MultiArray<int32> [1]"),
        "{text}"
    );
    assert!(
        text.contains("state  kv_cache: State<fp16> [1, 8, 16]"),
        "{text}"
    );
    assert!(
        text.contains("specification version 9 (iOS 18 / macOS 15)"),
        "{text}"
    );
}

#[test]
fn inspect_says_which_functions_the_reference_backend_can_run() {
    use coreml_multifunction::proto::{model, Model};
    use prost::Message;

    // Every committed fixture runs; the report says so per function.
    let merged = common::merged_package("lora_pair");
    let report = inspect_json(&merged);
    for name in ["adapter_1", "adapter_2"] {
        assert_eq!(
            function(&report, name)["reference_backend_missing_ops"],
            serde_json::json!([]),
            "{report}"
        );
    }

    // A function using ops the backend lacks: each is named, in JSON and
    // in text.
    let scratch = common::Scratch::of(&common::source_package("lora_adapter_1"));
    let mut spec = Model::decode(&*std::fs::read(scratch.spec()).unwrap()).unwrap();
    let Some(model::Type::MlProgram(program)) = &mut spec.r#type else {
        unreachable!("fixtures are ML Programs")
    };
    for function in program.functions.values_mut() {
        for block in function.block_specializations.values_mut() {
            for op in &mut block.operations {
                if op.r#type == "relu" {
                    op.r#type = "frobnicate".to_string();
                }
            }
        }
    }
    std::fs::write(scratch.spec(), spec.encode_to_vec()).unwrap();
    let report = inspect_json(&scratch.package);
    assert_eq!(
        function(&report, "main")["reference_backend_missing_ops"],
        serde_json::json!(["frobnicate"]),
        "{report}"
    );
    let output = cli(&["inspect", scratch.package.to_str().unwrap()]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("reference CPU backend: cannot run it, lacks frobnicate"),
        "{text}"
    );
}

#[test]
fn the_neural_network_fixture_is_rejected_by_type() {
    let output = cli(&[
        "inspect",
        common::fixtures()
            .join("negative/neural_network.mlmodel")
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("neuralNetwork"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear message: {stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn damaged_input_gets_one_message_and_a_failure_status_never_a_panic() {
    let scratch = common::Scratch::of(&common::source_package("lora_adapter_3"));
    std::fs::write(scratch.weights(), b"short").unwrap();
    let output = cli(&["inspect", scratch.package.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains("weight.bin") && stderr.contains("truncated"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_status_two() {
    for args in [
        &["inspect"][..],
        &["frobnicate"],
        &["inspect", "a", "b"],
        &[],
    ] {
        let output = cli(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("Usage:"),
            "{args:?}"
        );
    }
    assert!(cli(&["--help"]).status.success());
}

#[test]
fn rewrite_writes_a_package_that_inspects_the_same() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("copy.mlpackage");
    let source = common::merged_package("remerge");
    let output = cli(&["rewrite", source.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut before = inspect_json(&source);
    let mut after = inspect_json(&out);
    before["path"] = Value::Null;
    after["path"] = Value::Null;
    assert_eq!(before, after);
}

#[test]
fn merge_prints_a_summary_and_compare_finds_it_equal_to_coremltools() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("pair.mlpackage");
    let first = format!(
        "{}=adapter_1",
        common::source_package("lora_adapter_1").display()
    );
    let second = format!(
        "{}:main=adapter_2",
        common::source_package("lora_adapter_2").display()
    );
    let output = cli(&[
        "merge",
        "-o",
        out.to_str().unwrap(),
        "--function",
        &first,
        "--function",
        &second,
        "--default",
        "adapter_1",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("merged 2 functions"), "{text}");
    assert!(text.contains("adapter_2  <- "), "{text}");
    assert!(
        text.contains("unique blobs") && text.contains("saved"),
        "{text}"
    );

    let oracle = common::merged_package("lora_pair");
    let args = [
        "compare",
        out.to_str().unwrap(),
        oracle.to_str().unwrap(),
        "--ignore-metadata",
        "--ignore-program-attributes",
    ];
    let output = cli(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .contains("semantically equal"));

    // Against a different model, compare reports the differences and fails.
    let other = common::merged_package("stateful");
    let output = cli(&["compare", out.to_str().unwrap(), other.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .contains("differs: functions"));
}

#[test]
fn merge_errors_name_the_function_and_leave_no_output() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("bad.mlpackage");
    let spec = format!(
        "{}:decode=x",
        common::source_package("lora_adapter_1").display()
    );
    let output = cli(&[
        "merge",
        "-o",
        out.to_str().unwrap(),
        "-f",
        &spec,
        "--default",
        "x",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("has no function \"decode\"") && stderr.contains("\"main\""),
        "{stderr}"
    );
    assert!(!out.exists());

    let output = cli(&["merge", "-o", out.to_str().unwrap(), "-f", "no-equals-sign"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn merge_fixes_a_flexible_input_with_shape_and_says_so() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("fixed.mlpackage");
    let source = common::source_package("flexible_range");
    let output = cli(&[
        "merge",
        "-o",
        out.to_str().unwrap(),
        "--function",
        &format!("{}=main", source.display()),
        "--function",
        &format!("{}:main=len_5", source.display()),
        "--shape",
        "len_5:tokens=1x5x8",
        "--default",
        "main",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "  len_5  <- {} (main), fixed shape: tokens [1, 5, 8]; ",
            source.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("  main   <- {} (main); ", source.display())),
        "the flexible function is listed without shapes: {text}"
    );

    let report = inspect_json(&out);
    let fixed = &function(&report, "len_5")["inputs"][0];
    assert_eq!(fixed["shape"], serde_json::json!([1, 5, 8]));
    assert!(fixed.get("shape_range").is_none(), "{fixed}");
    let output = &function(&report, "len_5")["outputs"][0];
    assert_eq!(output["shape"], serde_json::json!([1, 5, 8]));
    let flexible = &function(&report, "main")["inputs"][0];
    assert!(flexible.get("shape_range").is_some(), "{flexible}");
}

#[test]
fn a_shape_the_input_does_not_allow_names_the_input_and_writes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("fixed.mlpackage");
    let source = common::source_package("flexible_range");
    let output = cli(&[
        "merge",
        "-o",
        out.to_str().unwrap(),
        "-f",
        &format!("{}=len_99", source.display()),
        "--shape",
        "len_99:tokens=1x99x8",
        "--default",
        "len_99",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("input \"tokens\"")
            && stderr.contains("cannot take the shape [1, 99, 8]: it allows [1, 1..=16, 8]"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one clear message: {stderr}");
    assert!(output.stdout.is_empty());
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "nothing written"
    );

    // An input the function does not have lists the inputs it has.
    let output = cli(&[
        "merge",
        "-o",
        out.to_str().unwrap(),
        "-f",
        &format!("{}=len_8", source.display()),
        "--shape",
        "len_8:token=1x8x8",
        "--default",
        "len_8",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("has no input \"token\"") && stderr.contains("its inputs are \"tokens\""),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn malformed_shape_arguments_are_usage_errors_showing_the_form() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("fixed.mlpackage");
    let function = format!(
        "{}=len_5",
        common::source_package("flexible_range").display()
    );
    for (shape, why) in [
        ("len_5:tokens", "has no `=` before the shape"),
        (
            "tokens=1x5x8",
            "has no `:` between the function and the input",
        ),
        (":tokens=1x5x8", "names no function before `:`"),
        ("len_5:=1x5x8", "names no input between `:` and `=`"),
        ("len_5:tokens=", "gives no shape after `=`"),
        (
            "len_5:tokens=1x0x8",
            "has \"0\" as dimension 1, which is not a size",
        ),
        (
            "len_5:tokens=1,5,8",
            "has \"1,5,8\" as dimension 0, which is not a size",
        ),
        (
            "len_5:tokens=1x-5x8",
            "has \"-5\" as dimension 1, which is not a size",
        ),
        (
            "len_5:tokens=1x5x",
            "has \"\" as dimension 2, which is not a size",
        ),
    ] {
        let output = cli(&[
            "merge",
            "-o",
            out.to_str().unwrap(),
            "-f",
            &function,
            "--shape",
            shape,
            "--default",
            "len_5",
        ]);
        assert_eq!(output.status.code(), Some(2), "{shape}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        let first = stderr.lines().next().unwrap();
        assert!(
            first.starts_with(&format!("error: --shape {shape:?} {why}")),
            "{shape}: {first}"
        );
        assert!(
            first.ends_with("write TARGET:INPUT=D0xD1x..., such as --shape seq_8:input_ids=1x8"),
            "{shape}: {first}"
        );
        assert!(stderr.contains("Usage:"), "{shape}");
        assert!(!out.exists(), "{shape}");
    }
    // `--shape` needs its value.
    let output = cli(&[
        "merge",
        "-o",
        out.to_str().unwrap(),
        "-f",
        &function,
        "--shape",
    ]);
    assert_eq!(output.status.code(), Some(2));
}

/// The sizes of every blob of a weight file, read here from its bytes
/// (blob storage v2: a 64-byte header with the count, then per blob a
/// 64-byte record with the size at 8 and the data offset at 16, the next
/// record at the next multiple of 64 after the data).
fn blob_sizes(weight_file: &Path) -> Vec<u64> {
    let bytes = std::fs::read(weight_file).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let mut sizes = Vec::new();
    let mut record = 64;
    for _ in 0..u32_at(0) {
        assert_eq!(u32_at(record), 0xDEAD_BEEF, "a record at {record}");
        let (size, data) = (u64_at(record + 8), u64_at(record + 16));
        sizes.push(size as u64);
        record = (data + size).div_ceil(64) * 64;
    }
    sizes
}

#[test]
fn inspect_gives_each_function_its_weight_bytes_as_stored() {
    // Single-function sources reference each of their blobs once, so a
    // function's weight bytes are all its weight file holds; the compressed
    // ones count their packed (compressed) bytes.
    for name in [
        "lora_adapter_1",
        "compressed_int4",
        "compressed_palettized",
        "gpt2",
    ] {
        let package = common::source_package(name);
        let weights = package.join("Data/com.apple.CoreML/weights/weight.bin");
        let sizes = blob_sizes(&weights);
        assert!(!sizes.is_empty(), "{name}");
        let report = inspect_json(&package);
        let main = function(&report, "main");
        assert_eq!(
            main["weight_bytes"].as_u64(),
            Some(sizes.iter().sum::<u64>()),
            "{name}"
        );
        assert_eq!(report["weights"]["bytes"], main["weight_bytes"], "{name}");
    }
    // A merged LoRA pair stores the base once, but each adapter references
    // it: every function counts all it uses.
    let merged = inspect_json(&common::merged_package("lora_pair"));
    let stored = merged["weights"]["bytes"].as_u64().unwrap();
    let functions = merged["functions"].as_array().unwrap();
    let total: u64 = functions
        .iter()
        .map(|f| f["weight_bytes"].as_u64().unwrap())
        .sum();
    assert!(functions.len() >= 2);
    assert!(
        total > stored,
        "shared blobs count in each function: {total} vs {stored}"
    );
    for function in functions {
        let bytes = function["weight_bytes"].as_u64().unwrap();
        assert!(bytes > 0 && bytes <= stored, "{function}");
    }

    let package = common::source_package("lora_adapter_1");
    let output = cli(&["inspect", package.to_str().unwrap()]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let bytes: u64 = blob_sizes(&package.join("Data/com.apple.CoreML/weights/weight.bin"))
        .iter()
        .sum();
    assert!(
        text.contains(&format!(
            "      weights: {} as stored ({bytes} bytes)\n",
            coreml_multifunction_build::Bytes(bytes)
        )),
        "{text}"
    );
}

#[test]
fn malformed_chunk_arguments_are_usage_errors_showing_the_form() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("split.mlpackage");
    let function = format!(
        "{}=adapter",
        common::source_package("lora_adapter_1").display()
    );
    let count_form = "write TARGET=N, such as --chunks decode=2";
    let size_form = "write TARGET=SIZE, such as --max-chunk-bytes decode=900M";
    for (flag, value, why, form) in [
        (
            "--chunks",
            "adapter",
            "has no `=` after the function",
            count_form,
        ),
        ("--chunks", "=2", "names no function before `=`", count_form),
        (
            "--chunks",
            "adapter=",
            "gives no number of chunks after `=`",
            count_form,
        ),
        (
            "--chunks",
            "adapter=0",
            "has \"0\" as the number of chunks, which is not a whole number of at least 1",
            count_form,
        ),
        (
            "--chunks",
            "adapter=-1",
            "has \"-1\" as the number of chunks",
            count_form,
        ),
        (
            "--chunks",
            "adapter=1.5",
            "has \"1.5\" as the number of chunks",
            count_form,
        ),
        (
            "--chunks",
            "adapter=two",
            "has \"two\" as the number of chunks",
            count_form,
        ),
        (
            "--max-chunk-bytes",
            "adapter",
            "has no `=` after the function",
            size_form,
        ),
        (
            "--max-chunk-bytes",
            "=1G",
            "names no function before `=`",
            size_form,
        ),
        (
            "--max-chunk-bytes",
            "adapter=",
            "gives no size after `=`",
            size_form,
        ),
        (
            "--max-chunk-bytes",
            "adapter=900MB",
            "has a size that does not read (\"900MB\" is not a size;",
            size_form,
        ),
        (
            "--max-chunk-bytes",
            "adapter=-1",
            "has a size that does not read (\"-1\"",
            size_form,
        ),
        (
            "--max-chunk-bytes",
            "adapter=1.5G",
            "has a size that does not read (\"1.5G\"",
            size_form,
        ),
        (
            "--max-chunk-bytes",
            "adapter=0",
            "gives a budget of 0 bytes, which fits no weights",
            size_form,
        ),
        (
            "--max-chunk-bytes",
            "adapter=0K",
            "gives a budget of 0 bytes",
            size_form,
        ),
    ] {
        let output = cli(&[
            "merge",
            "-o",
            out.to_str().unwrap(),
            "-f",
            &function,
            flag,
            value,
            "--default",
            "adapter",
        ]);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        let first = stderr.lines().next().unwrap();
        assert!(
            first.starts_with(&format!("error: {flag} {value:?} {why}")),
            "{flag} {value}: {first}"
        );
        assert!(first.ends_with(form), "{flag} {value}: {first}");
        assert!(stderr.contains("Usage:"), "{flag} {value}");
        assert!(!out.exists(), "{flag} {value}");
    }
    // One split per function.
    let output = cli(&[
        "merge",
        "-o",
        out.to_str().unwrap(),
        "-f",
        &function,
        "--chunks",
        "adapter=2",
        "--max-chunk-bytes",
        "adapter=1M",
        "--default",
        "adapter",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with(
            "error: --max-chunk-bytes \"adapter=1M\" splits function \"adapter\" again (after \
             --chunks adapter=2); give one --chunks or --max-chunk-bytes per function"
        ),
        "{stderr}"
    );
    // Both need their value.
    for flag in ["--chunks", "--max-chunk-bytes"] {
        let output = cli(&["merge", "-o", out.to_str().unwrap(), "-f", &function, flag]);
        assert_eq!(output.status.code(), Some(2), "{flag}");
    }
    assert!(!out.exists());
}

#[test]
fn merge_lists_every_function_with_its_weight_bytes() {
    let scratch = tempfile::tempdir().unwrap();
    let out = scratch.path().join("split.mlpackage");
    let source = common::source_package("lora_adapter_1");
    let output = cli(&[
        "merge",
        "-o",
        out.to_str().unwrap(),
        "-f",
        &format!("{}=whole", source.display()),
        "-f",
        &format!("{}=split", source.display()),
        "--max-chunk-bytes",
        "split=1G",
        "--default",
        "split",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains(&format!("  whole  <- {} (main); ", source.display())),
        "{text}"
    );
    // Every function's weight bytes, and each chunk's with the values it
    // takes from earlier chunks, agree with what inspect finds stored.
    let report = inspect_json(&out);
    assert_eq!(report["default_function"], "split_chunk1");
    let bytes = |name: &str| {
        coreml_multifunction_build::Bytes(function(&report, name)["weight_bytes"].as_u64().unwrap())
    };
    assert!(
        text.contains(&format!(
            "  whole  <- {} (main); {} of weights\n",
            source.display(),
            bytes("whole")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  split  <- {} (main); {} of weights, split into 1 chunk:\n      split_chunk1  {} of \
             weights\n",
            source.display(),
            bytes("whole"),
            bytes("split_chunk1")
        )),
        "{text}"
    );
    let scratch_two = scratch.path().join("two.mlpackage");
    let output = cli(&[
        "merge",
        "-o",
        scratch_two.to_str().unwrap(),
        "-f",
        &format!("{}=split", source.display()),
        "--chunks",
        "split=2",
        "--default",
        "split",
    ]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let report = inspect_json(&scratch_two);
    let bytes = |name: &str| {
        coreml_multifunction_build::Bytes(function(&report, name)["weight_bytes"].as_u64().unwrap())
    };
    assert!(text.contains(", split into 2 chunks:\n"), "{text}");
    assert!(
        text.contains(&format!(
            "\n      split_chunk1  {} of weights\n",
            bytes("split_chunk1")
        )),
        "{text}"
    );
    let second = text
        .lines()
        .find(|l| l.starts_with("      split_chunk2  "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        second.starts_with(&format!(
            "      split_chunk2  {} of weights; takes ",
            bytes("split_chunk2")
        )),
        "{second}"
    );
    assert!(
        second.contains(" (fp16[") && second.ends_with(" from chunk 1"),
        "{second}"
    );
}
