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
        let source = coreml_multifunction::package::Package::open(&function.package).unwrap();
        let outputs = source
            .function(&function.source_function)
            .unwrap()
            .description
            .output
            .iter()
            .map(|o| o.name.clone())
            .collect();
        Runner::Chunks(chunks, outputs)
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
