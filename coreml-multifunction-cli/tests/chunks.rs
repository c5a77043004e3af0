//! Chunked functions run on the reference backend: the chunks, run in
//! order with each crossing value passed on by name and one state across
//! them, compute what the unsplit function computes (bit for bit where no
//! fp16 rounding is added: fp32 models, and fp16 ones with `fp16_ops`),
//! and what torch computes; and coremltools' own `bisect_model` chunks run
//! too and agree with ours.

#[path = "../../tests/common/mod.rs"]
mod common;

#[path = "../../tests/common/fixture_io.rs"]
mod fixture_io;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use coreml_multifunction::runtime::{Backend, Configuration, FeatureValue, Features, Function};
use coreml_multifunction_build::merge::{Chunks, MergeReport, MultiFunctionDescriptor};

use common::source_package;
use fixture_io::{assert_close, inputs, steps, tolerance, values};

fn configuration(fp16_ops: bool) -> Configuration {
    Configuration {
        fp16_ops,
        ..Configuration::with_backend(Backend::Reference)
    }
}

fn load(package: &Path, function: &str, fp16_ops: bool) -> Function {
    Function::load(package, function, &configuration(fp16_ops))
        .unwrap_or_else(|e| panic!("{} {function}: {e}", package.display()))
}

/// A function run step by step, or the chunks of one, with one state
/// across the steps when the function has states.
enum Runner {
    Whole(Function),
    /// The chunks in order, and the outputs the unsplit function has.
    Chunks(Vec<Function>, Vec<String>),
}

impl Runner {
    fn chunks(package: &Path, report: &MergeReport, target: &str, fp16_ops: bool) -> Runner {
        let function = report
            .functions
            .iter()
            .find(|f| f.target == target)
            .unwrap();
        let chunks: Vec<Function> = function
            .chunks
            .iter()
            .map(|c| load(package, &c.name, fp16_ops))
            .collect();
        Runner::Chunks(
            chunks,
            output_names(&function.package, &function.source_function),
        )
    }

    /// The description inputs are converted by: the unsplit function's, or
    /// the first chunk's and every later one's together.
    fn convert(&self, step: &fixture_io::Step) -> Features {
        match self {
            Runner::Whole(function) => inputs(function.description(), step),
            Runner::Chunks(chunks, _) => {
                let mut features = Features::new();
                for (name, npy) in &step.inputs {
                    let declared = chunks
                        .iter()
                        .flat_map(|c| &c.description().input)
                        .find(|d| &d.name == name)
                        .unwrap_or_else(|| panic!("no chunk takes input {name}"));
                    features.insert(name.clone(), fixture_io::feature(npy, declared));
                }
                features
            }
        }
    }

    fn run(&self, io: &str) -> Vec<(Features, BTreeMap<String, FeatureValue>)> {
        match self {
            Runner::Whole(function) => {
                let mut state = (!function.description().state.is_empty())
                    .then(|| function.new_state().unwrap());
                steps(io)
                    .iter()
                    .map(|step| {
                        let features = self.convert(step);
                        let outputs = match &mut state {
                            Some(state) => function.predict_with_state(&features, state).unwrap(),
                            None => function.predict(&features).unwrap(),
                        };
                        (outputs, read_states(state.as_ref()))
                    })
                    .collect()
            }
            Runner::Chunks(chunks, outputs) => {
                let mut state = chunks
                    .iter()
                    .find(|c| !c.description().state.is_empty())
                    .map(|c| c.new_state().unwrap());
                steps(io)
                    .iter()
                    .map(|step| {
                        let mut values = self.convert(step);
                        for chunk in chunks {
                            let description = chunk.description();
                            let features: Features = description
                                .input
                                .iter()
                                .map(|input| {
                                    let value = values.get(&input.name).unwrap_or_else(|| {
                                        panic!(
                                            "{}: nothing computed {}",
                                            description.name, input.name
                                        )
                                    });
                                    (input.name.clone(), value.clone())
                                })
                                .collect();
                            let computed = if description.state.is_empty() {
                                chunk.predict(&features)
                            } else {
                                chunk.predict_with_state(&features, state.as_mut().unwrap())
                            }
                            .unwrap_or_else(|e| panic!("{}: {e}", description.name));
                            values.extend(computed);
                        }
                        let outputs: Features = outputs
                            .iter()
                            .map(|name| (name.clone(), values.remove(name).unwrap()))
                            .collect();
                        (outputs, read_states(state.as_ref()))
                    })
                    .collect()
            }
        }
    }
}

/// The output names of `function` of the package at `package`.
fn output_names(package: &Path, function: &str) -> Vec<String> {
    coreml_multifunction::package::Package::open(package)
        .unwrap()
        .function(function)
        .unwrap()
        .description
        .output
        .iter()
        .map(|o| o.name.clone())
        .collect()
}

fn read_states(
    state: Option<&coreml_multifunction::runtime::State>,
) -> BTreeMap<String, FeatureValue> {
    let Some(state) = state else {
        return BTreeMap::new();
    };
    state
        .names()
        .into_iter()
        .map(|name| {
            (
                name.to_string(),
                FeatureValue::Tensor(state.read(name).unwrap()),
            )
        })
        .collect()
}

/// The bits of a float tensor, for bit-for-bit comparison.
fn bits(value: &FeatureValue) -> (Vec<usize>, Vec<u32>) {
    let (shape, values) = values(value);
    (shape, values.iter().map(|v| v.to_bits()).collect())
}

/// A split to check: a merge, the function split in it, its unsplit
/// source, and torch's outputs.
struct Case {
    name: String,
    descriptor: MultiFunctionDescriptor,
    target: &'static str,
    /// The unsplit function: a package and its function.
    unsplit: (PathBuf, String),
    io: String,
    /// Whether the model computes in fp16 (so that a cut adds a rounding
    /// unless fp16 ops are rounded anyway).
    fp16: bool,
}

fn single_function_cases(chunks: usize) -> Vec<Case> {
    [
        ("llama", true),
        ("unet", false),
        ("bert", false),
        ("chunk_cnn", true),
        ("chunk_encoder", true),
    ]
    .into_iter()
    .filter(|(name, _)| source_package(name).exists())
    .map(|(name, fp16)| {
        let mut descriptor = MultiFunctionDescriptor::new();
        descriptor
            .add_function(source_package(name), "main")
            .chunks("main", Chunks::Count(chunks))
            .default_function("main");
        Case {
            name: format!("{name} in {chunks}"),
            descriptor,
            target: "main",
            unsplit: (source_package(name), "main".to_string()),
            io: name.to_string(),
            fp16,
        }
    })
    .collect()
}

/// The stateful decoder at fixed lengths (8 tokens, 1 token), each split,
/// against the fixed-shape function merged whole.
fn decoder_cases(chunks: usize, dir: &Path) -> Vec<Case> {
    let source = source_package("materialize_decoder");
    [("query_8", 8u64), ("query_1", 1)]
        .into_iter()
        .map(|(target, length)| {
            let whole = dir.join(format!("decoder_{target}_whole.mlpackage"));
            MultiFunctionDescriptor::new()
                .add_function(&source, target)
                .fixed_shape(target, "input_ids", [1, length])
                .default_function(target)
                .merge(&whole)
                .unwrap();
            let mut descriptor = MultiFunctionDescriptor::new();
            for (other, other_length) in [("query_8", 8u64), ("query_1", 1)] {
                descriptor
                    .add_function(&source, other)
                    .fixed_shape(other, "input_ids", [1, other_length])
                    .chunks(other, Chunks::Count(chunks));
            }
            descriptor.default_function("query_1");
            Case {
                name: format!("materialize_decoder {target} in {chunks}"),
                descriptor,
                target,
                unsplit: (whole, target.to_string()),
                io: format!("materialize_decoder_{target}"),
                fp16: true,
            }
        })
        .collect()
}

#[test]
fn chunks_in_order_compute_what_the_unsplit_function_computes() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    // fp16 cases in the default mode whose split differs from the unsplit
    // run in some bit: what makes agreement with `fp16_ops` mean something.
    let mut rounding_added = 0;
    let mut states_checked = 0;
    for chunks in [2, 3] {
        let cases: Vec<Case> = single_function_cases(chunks)
            .into_iter()
            .chain(decoder_cases(chunks, dir.path()))
            .collect();
        for case in cases {
            let package = dir
                .path()
                .join(format!("{}.mlpackage", case.name.replace(' ', "_")));
            let report = case.descriptor.merge(&package).unwrap();
            for fp16_ops in [false, true] {
                let what = format!("{} (fp16_ops {fp16_ops})", case.name);
                let whole = Runner::Whole(load(&case.unsplit.0, &case.unsplit.1, fp16_ops));
                let split = Runner::chunks(&package, &report, case.target, fp16_ops);
                let exact = fp16_ops || !case.fp16;
                for (step, ((whole_out, whole_state), (split_out, split_state))) in whole
                    .run(&case.io)
                    .into_iter()
                    .zip(split.run(&case.io))
                    .enumerate()
                {
                    assert_eq!(
                        whole_out.keys().collect::<Vec<_>>(),
                        split_out.keys().collect::<Vec<_>>(),
                        "{what}: outputs"
                    );
                    let pairs = whole_out
                        .iter()
                        .map(|(n, v)| (format!("output {n}"), v, &split_out[n]))
                        .chain(
                            whole_state
                                .iter()
                                .map(|(n, v)| (format!("state {n}"), v, &split_state[n])),
                        );
                    for (name, want, got) in pairs {
                        if name.starts_with("state") {
                            states_checked += 1;
                        }
                        if !exact && bits(want) != bits(got) {
                            rounding_added += 1;
                        }
                        if exact {
                            assert!(
                                bits(want) == bits(got),
                                "{what} step {step}: {name} differs from the unsplit function's"
                            );
                        } else {
                            let (shape, got) = values(got);
                            let (want_shape, want) = values(want);
                            assert_eq!(shape, want_shape);
                            let (atol, rtol) = tolerance(&case.io);
                            let worst = got
                                .iter()
                                .zip(&want)
                                .map(|(g, w)| (g - w).abs() - (atol + rtol * w.abs()))
                                .fold(f32::MIN, f32::max);
                            assert!(worst <= 0.0, "{what} step {step}: {name} outside tolerance");
                        }
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "only {checked} cases ran");
    assert!(states_checked > 0, "no final state was compared");
    assert!(
        rounding_added > 0,
        "no fp16 split differed from its unsplit function in the default mode"
    );
    eprintln!("{checked} cases; {rounding_added} fp16 outputs or states rounded differently by a cut in the default mode");
}

#[test]
fn chunks_reproduce_torch() {
    let dir = tempfile::tempdir().unwrap();
    for case in single_function_cases(3)
        .into_iter()
        .chain(decoder_cases(2, dir.path()))
    {
        let package = dir
            .path()
            .join(format!("{}.mlpackage", case.name.replace(' ', "_")));
        let report = case.descriptor.merge(&package).unwrap();
        let split = Runner::chunks(&package, &report, case.target, false);
        for (step, (outputs, _)) in steps(&case.io).iter().zip(split.run(&case.io)) {
            for (name, want) in &step.outputs {
                let (shape, got) = values(&outputs[name]);
                let worst = assert_close(&case.name, (&shape, &got), want, tolerance(&case.io));
                eprintln!("{} {name}: max error against torch {worst:.2e}", case.name);
            }
        }
    }
}

/// Every fixture with torch's outputs whose function can be cut in two
/// (control flow, compressed weights, images, several inputs and outputs
/// among them): its chunks, with fp16 ops rounded, compute bit for bit what
/// it computes.
#[test]
fn every_splittable_fixture_runs_as_its_unsplit_function() {
    let dir = tempfile::tempdir().unwrap();
    let (mut ran, mut refused) = (Vec::new(), Vec::new());
    for io in fixture_io::io_fixtures() {
        let source = source_package(&io);
        if !source.exists() {
            continue;
        }
        let function = steps(&io)[0].function.clone();
        let package = dir.path().join(format!("{io}.mlpackage"));
        let mut descriptor = MultiFunctionDescriptor::new();
        descriptor
            .add_function_from(&source, &function, &function)
            .chunks(&function, Chunks::Count(2))
            .default_function(&function);
        let report = match descriptor.merge(&package) {
            Ok(report) => report,
            Err(error) => {
                refused.push(format!("{io}: {error}"));
                continue;
            }
        };
        let whole = Runner::Whole(load(&source, &function, true));
        let split = Runner::chunks(&package, &report, &function, true);
        for (step, ((want, want_state), (got, got_state))) in
            whole.run(&io).into_iter().zip(split.run(&io)).enumerate()
        {
            for (name, value) in want.iter().chain(&want_state) {
                let other = got.get(name).or_else(|| got_state.get(name)).unwrap();
                match value {
                    FeatureValue::Tensor(_) => {
                        assert!(bits(value) == bits(other), "{io} step {step}: {name}")
                    }
                    _ => assert_eq!(value, other, "{io} step {step}: {name}"),
                }
            }
        }
        ran.push(io);
    }
    eprintln!("split and ran: {ran:?}\nrefused: {refused:#?}");
    assert!(
        ran.len() >= 25,
        "only {} fixtures split: {ran:?}",
        ran.len()
    );
}

/// The chunks of every function of `package` split into `target`'s
/// chunks, or the function itself, by name.
fn runners(package: &Path, report: &MergeReport, fp16_ops: bool) -> BTreeMap<String, Runner> {
    report
        .functions
        .iter()
        .map(|f| {
            let runner = if f.chunks.is_empty() {
                Runner::Whole(load(package, &f.target, fp16_ops))
            } else {
                Runner::chunks(package, report, &f.target, fp16_ops)
            };
            (f.target.clone(), runner)
        })
        .collect()
}

impl Runner {
    fn functions(&self) -> Vec<&Function> {
        match self {
            Runner::Whole(function) => vec![function],
            Runner::Chunks(chunks, _) => chunks.iter().collect(),
        }
    }

    /// One step on `state`.
    fn step(
        &self,
        step: &fixture_io::Step,
        state: &mut coreml_multifunction::runtime::State,
    ) -> Features {
        let mut values = self.convert(step);
        for chunk in self.functions() {
            let description = chunk.description();
            let features: Features = description
                .input
                .iter()
                .map(|i| (i.name.clone(), values[&i.name].clone()))
                .collect();
            let computed = if description.state.is_empty() {
                chunk.predict(&features).unwrap()
            } else {
                chunk.predict_with_state(&features, state).unwrap()
            };
            values.extend(computed);
        }
        values
    }
}

/// An LLM-style conversation: prefill of 8 tokens, then decode steps, on
/// one KV cache, with prefill and decode each split (and, the fixture's
/// own functions, sharing every weight).
#[test]
fn a_split_prefill_and_decode_hold_one_conversation_on_one_cache() {
    let dir = tempfile::tempdir().unwrap();
    let prefill = source_package("chunk_decoder_prefill");
    let decode = source_package("chunk_decoder_decode");
    let merge = |chunks: Option<usize>, name: &str| {
        let mut descriptor = MultiFunctionDescriptor::new();
        descriptor
            .add_function(&prefill, "prefill")
            .add_function(&decode, "decode");
        if let Some(n) = chunks {
            descriptor
                .chunks("prefill", Chunks::Count(n))
                .chunks("decode", Chunks::Count(n));
        }
        descriptor.default_function("decode");
        let package = dir.path().join(name);
        let report = descriptor.merge(&package).unwrap();
        (package, report)
    };
    let (whole_package, whole_report) = merge(None, "whole.mlpackage");
    let conversation = steps("chunk_decoder");
    assert!(conversation.iter().any(|s| s.function == "prefill"));
    assert!(conversation.iter().any(|s| s.function == "decode"));
    for n in [2, 3] {
        let (package, report) = merge(Some(n), &format!("split_{n}.mlpackage"));
        for fp16_ops in [false, true] {
            let whole = runners(&whole_package, &whole_report, fp16_ops);
            let split = runners(&package, &report, fp16_ops);
            let state_of = |runners: &BTreeMap<String, Runner>| {
                runners["decode"]
                    .functions()
                    .into_iter()
                    .find(|f| !f.description().state.is_empty())
                    .unwrap()
                    .new_state()
                    .unwrap()
            };
            let (mut whole_state, mut split_state) = (state_of(&whole), state_of(&split));
            for (index, step) in conversation.iter().enumerate() {
                let what = format!(
                    "{n} chunks, fp16_ops {fp16_ops}, step {index} ({})",
                    step.function
                );
                let want = whole[&step.function].step(step, &mut whole_state);
                let got = split[&step.function].step(step, &mut split_state);
                let want_cache = FeatureValue::Tensor(whole_state.read("kv_cache").unwrap());
                let got_cache = FeatureValue::Tensor(split_state.read("kv_cache").unwrap());
                if fp16_ops {
                    assert!(
                        bits(&want["logits"]) == bits(&got["logits"]),
                        "{what}: logits"
                    );
                    assert!(bits(&want_cache) == bits(&got_cache), "{what}: kv_cache");
                }
                // Against torch, in both modes; rounding after every op
                // loses more, as a device does.
                let against_torch = if fp16_ops {
                    fixture_io::DEEP_FP16
                } else {
                    tolerance("chunk_decoder")
                };
                for (name, npy) in &step.outputs {
                    let (shape, values) = values(&got[name]);
                    assert_close(&what, (&shape, &values), npy, against_torch);
                }
                for (name, npy) in &step.states {
                    assert_eq!(name, "kv_cache");
                    let (shape, values) = values(&got_cache);
                    assert_close(&what, (&shape, &values), npy, against_torch);
                }
            }
        }
    }
}

/// coremltools' own `bisect_model` chunks, committed as the oracle, run on
/// the reference backend too, and agree with ours; how the two cuts differ
/// is printed.
#[test]
fn coremltools_bisect_chunks_run_and_agree_with_ours() {
    let dir = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for name in ["chunk_cnn", "chunk_encoder"] {
        let bisected = common::fixtures().join("bisected").join(name);
        let theirs: Vec<Function> = (1..=2)
            .map(|k| {
                load(
                    &bisected.join(format!("{name}_chunk{k}.mlpackage")),
                    "main",
                    false,
                )
            })
            .collect();
        let outputs = output_names(&source_package(name), "main");
        let theirs = Runner::Chunks(theirs, outputs);
        let package = dir.path().join(format!("{name}.mlpackage"));
        let report = MultiFunctionDescriptor::new()
            .add_function(source_package(name), "main")
            .chunks("main", Chunks::Count(2))
            .default_function("main")
            .merge(&package)
            .unwrap();
        let ours = Runner::chunks(&package, &report, "main", false);
        for (step, ((their_out, _), (our_out, _))) in steps(name)
            .iter()
            .zip(theirs.run(name).into_iter().zip(ours.run(name)))
        {
            for (output, want) in &step.outputs {
                let (shape, got) = values(&their_out[output]);
                assert_close(
                    &format!("{name} bisect_model"),
                    (&shape, &got),
                    want,
                    tolerance(name),
                );
                let (our_shape, ours_values) = values(&our_out[output]);
                assert_eq!(our_shape, shape);
                let (atol, rtol) = tolerance(name);
                for (a, b) in got.iter().zip(&ours_values) {
                    assert!(
                        (a - b).abs() <= 2.0 * (atol + rtol * b.abs()),
                        "{name} {output}: {a} vs {b}"
                    );
                }
            }
            compared += 1;
        }
        // How the cuts differ: each chunk's weight bytes, and the values
        // crossing.
        let Runner::Chunks(their_chunks, _) = &theirs else {
            unreachable!()
        };
        let their_crossing = their_chunks[1]
            .description()
            .input
            .iter()
            .filter(|i| {
                !their_chunks[0]
                    .description()
                    .input
                    .iter()
                    .any(|j| j.name == i.name)
            })
            .count();
        let our_chunks = &report.functions[0].chunks;
        eprintln!(
            "{name}: ours {} + {} weight bytes, {} crossing; bisect_model's chunks {} + {} bytes of \
             weight files, {their_crossing} crossing",
            our_chunks[0].weight_bytes,
            our_chunks[1].weight_bytes,
            our_chunks[1].crossing_inputs.len(),
            weight_file_bytes(&bisected.join(format!("{name}_chunk1.mlpackage"))),
            weight_file_bytes(&bisected.join(format!("{name}_chunk2.mlpackage"))),
        );
    }
    assert!(compared >= 4);
}

/// The blob bytes a package stores.
fn weight_file_bytes(package: &Path) -> u64 {
    coreml_multifunction::package::Package::open(package)
        .unwrap()
        .blob_references()
        .unwrap()
        .into_iter()
        .map(|r| (r.record.record_offset, r.record.size))
        .collect::<BTreeMap<_, _>>()
        .values()
        .sum()
}
