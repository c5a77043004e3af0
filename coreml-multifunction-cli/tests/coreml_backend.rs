//! The Core ML backend on Apple hardware, against PyTorch: every committed
//! fixture function run by Core ML on the CPU and compared with torch's
//! outputs; the prefill/decode pair on one state; a merged LoRA package
//! loaded per function; a relative package path; a damaged cache entry; a
//! compiled `.mlmodelc` loaded by path; asynchronous predictions.
//!
//! Compiled for Apple targets only. `.github/workflows/ci.yml` runs it on a
//! `macos-15` runner (Apple silicon) as part of `cargo test`, in a debug
//! build so that objc2 checks every message's type encoding. It was
//! written without a Mac and type-checked and linted for
//! `aarch64-apple-darwin`; see the README for whether that job has run.
//!
//! Tolerances (`|core_ml - torch| <= atol + rtol |torch|`): the fixture
//! model's tolerance against the reference backend ([`tolerance`]), but at
//! least [`CORE_ML_FP16`] for fp16 models and [`CORE_ML_FP32`] for the
//! fp32 one. Core ML's CPU path may compute an fp16 program in fp16 (the
//! reference backend computes in f32), so each op adds up to half an fp16
//! ulp (4.9e-4 relative) and sums accumulate it; these fixtures have a few
//! ops each, so 1e-2 bounds the error with a wide margin while still
//! catching any wrong layout, dtype or weight (errors of order 1). fp32
//! programs run in fp32 on the CPU: only summation order (Accelerate's
//! kernels) differs from torch.

#![cfg(target_vendor = "apple")]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/fixture_io.rs"]
mod fixture_io;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use coreml_multifunction::package::Package;
use coreml_multifunction::runtime::{
    Backend, ComputeUnits, Configuration, Error, Features, Function, State,
};
use coreml_multifunction_build::compile_with_xcrun;
use coreml_multifunction_build::merge::MultiFunctionDescriptor;
use fixture_io::{assert_close, assert_output, inputs, io_fixtures, steps, tolerance, Step};
use prost::Message;

/// Core ML's CPU path on fp16 programs: see the module documentation.
const CORE_ML_FP16: (f32, f32) = (1e-2, 1e-2);
/// Core ML's CPU path on fp32 programs.
const CORE_ML_FP32: (f32, f32) = (1e-4, 1e-4);

/// The tolerance for `fixture` on Core ML's CPU path.
fn core_ml_tolerance(fixture: &str) -> (f32, f32) {
    let (atol, rtol) = tolerance(fixture);
    let floor = if fixture == "precision_fp32" {
        CORE_ML_FP32
    } else {
        CORE_ML_FP16
    };
    (atol.max(floor.0), rtol.max(floor.1))
}

/// Core ML on the CPU only (deterministic, and what every Mac has), with a
/// compile cache of the test's own.
fn core_ml(cache: &Path) -> Configuration {
    Configuration {
        compute_units: ComputeUnits::CpuOnly,
        backend: Backend::CoreMl,
        cache_dir: Some(cache.to_path_buf()),
        ..Default::default()
    }
}

fn load(package: &Path, function: &str, configuration: &Configuration) -> Function {
    Function::load(package, function, configuration)
        .unwrap_or_else(|e| panic!("{} {function}: {e}", package.display()))
}

/// Checks every output of `step` against torch's, returning how many.
fn check_outputs(what: &str, outputs: &Features, step: &Step, tolerance: (f32, f32)) -> usize {
    for (name, want) in &step.outputs {
        let worst = assert_output(&format!("{what}.{name}"), &outputs[name], want, tolerance);
        eprintln!("{what}.{name}: max error {worst:.2e} (tolerance {tolerance:?})");
    }
    step.outputs.len()
}

/// Wakes the thread blocked in [`block_on`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}

#[test]
fn every_fixture_function_matches_torch_on_the_cpu() {
    let cache = tempfile::tempdir().unwrap();
    let configuration = core_ml(cache.path());
    let mut checked = 0;
    for fixture in io_fixtures() {
        if fixture == "stateful" {
            continue; // the pair shares one state: see below
        }
        if fixture == "fp16_overflow" {
            // Its first step overflows fp16 between ops: torch's finite
            // value or a device's inf, depending on whether Core ML's CPU
            // runs the fp16 program in fp32 or fp16.
            continue;
        }
        let package = common::source_package(&fixture);
        for step in steps(&fixture) {
            let function = load(&package, &step.function, &configuration);
            assert_eq!(function.backend(), Backend::CoreMl);
            let outputs = function
                .predict(&inputs(function.description(), &step))
                .unwrap_or_else(|e| panic!("{fixture}: {e}"));
            checked += check_outputs(&fixture, &outputs, &step, core_ml_tolerance(&fixture));
        }
    }
    assert!(checked >= 19, "only {checked} outputs checked");
}

/// Runs the `io/stateful` conversation on `prefill` and `decode` with one
/// state made by `prefill`, comparing outputs and the KV cache with torch's
/// after every step; with `asynchronous`, through `predict_with_state_async`.
fn run_stateful(prefill: &Function, decode: &Function, asynchronous: bool) {
    let mut state: State = prefill.new_state().unwrap();
    let zero = state.read("kv_cache").unwrap();
    assert!(zero.to_f32().as_slice().iter().all(|&v| v == 0.0));
    for (index, step) in steps("stateful").iter().enumerate() {
        let function = if step.function == "prefill" {
            prefill
        } else {
            decode
        };
        let features = inputs(function.description(), step);
        let outputs = if asynchronous {
            block_on(function.predict_with_state_async(&features, &mut state))
        } else {
            function.predict_with_state(&features, &mut state)
        }
        .unwrap_or_else(|e| panic!("step {index}: {e}"));
        check_outputs(&format!("step {index}"), &outputs, step, CORE_ML_FP16);
        for (name, want) in &step.states {
            let buffer = state.read(name).unwrap();
            let got = buffer.to_f32().into_vec();
            assert_close(
                &format!("step {index} state {name}"),
                (buffer.shape(), &got),
                want,
                CORE_ML_FP16,
            );
        }
    }
}

#[test]
fn the_prefill_decode_pair_shares_one_state() {
    let cache = tempfile::tempdir().unwrap();
    let configuration = core_ml(cache.path());
    let package = common::merged_package("stateful");
    let prefill = load(&package, "prefill", &configuration);
    let decode = load(&package, "decode", &configuration);
    run_stateful(&prefill, &decode, false);
    run_stateful(&prefill, &decode, true);
}

#[test]
fn a_package_loads_without_blocking_and_its_copy_owns_its_states() {
    let cache = tempfile::tempdir().unwrap();
    let configuration = core_ml(cache.path());
    let package = common::merged_package("stateful");
    // Loaded on a thread of Core ML's own; the future moves to this one.
    let loading = Function::load_async(&package, "prefill", &configuration);
    let prefill = thread::spawn(move || block_on(loading))
        .join()
        .unwrap()
        .unwrap();
    let decode = load(&package, "decode", &configuration);
    // Both from the one compiled copy the process shares: one cache entry.
    assert!(
        entries(cache.path()).len() <= 1,
        "{:?}",
        entries(cache.path())
    );
    run_stateful(&prefill, &decode, true);
    // A load with another cache directory is another compiled copy, which
    // refuses the first copy's states.
    let other_cache = tempfile::tempdir().unwrap();
    let other = load(&package, "decode", &core_ml(other_cache.path()));
    let step = steps("stateful")
        .into_iter()
        .find(|step| step.function == "decode")
        .unwrap();
    let features = inputs(other.description(), &step);
    let mut state = prefill.new_state().unwrap();
    let error = other.predict_with_state(&features, &mut state).unwrap_err();
    assert!(
        matches!(
            error,
            coreml_multifunction::runtime::Error::OtherCompiledCopy { .. }
        ),
        "{error}"
    );
}

#[test]
fn a_merged_lora_package_loads_per_function() {
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("lora.mlpackage");
    let mut descriptor = MultiFunctionDescriptor::new();
    for n in 1..=3 {
        descriptor.add_function_from(
            common::source_package(&format!("lora_adapter_{n}")),
            "main",
            format!("adapter_{n}"),
        );
    }
    descriptor.default_function("adapter_1");
    descriptor.merge(&merged).unwrap();
    let configuration = core_ml(&dir.path().join("cache"));
    for n in 1..=3 {
        let fixture = format!("lora_adapter_{n}");
        let function = load(&merged, &format!("adapter_{n}"), &configuration);
        let step = &steps(&fixture)[0];
        let features = inputs(function.description(), step);
        let outputs = function.predict(&features).unwrap();
        check_outputs(&fixture, &outputs, step, core_ml_tolerance(&fixture));
        // The same prediction through the completion-handler API.
        let awaited = block_on(function.predict_async(&features)).unwrap();
        check_outputs(&fixture, &awaited, step, core_ml_tolerance(&fixture));
        // A loaded function moves to another thread and predicts there.
        let moved = thread::spawn(move || function.predict(&features))
            .join()
            .unwrap()
            .unwrap();
        check_outputs(&fixture, &moved, step, core_ml_tolerance(&fixture));
    }
}

#[test]
fn a_relative_package_path_loads_and_shares_states_with_the_absolute_one() {
    // Integration tests run in the crate's directory, beside tests/.
    let relative = Path::new("../tests/fixtures/merged/stateful.mlpackage");
    assert!(relative.is_relative() && relative.is_dir());
    let cache = tempfile::tempdir().unwrap();
    let configuration = core_ml(cache.path());
    let prefill = load(relative, "prefill", &configuration);
    let decode = load(
        &common::merged_package("stateful"),
        "decode",
        &configuration,
    );
    // One package, however it was named.
    assert_eq!(prefill.package(), decode.package());
    run_stateful(&prefill, &decode, false);
}

/// The cache entries (`*.mlmodelc`) under `cache`.
fn entries(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache)
        .map(|dir| {
            dir.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "mlmodelc"))
                .collect()
        })
        .unwrap_or_default()
}

/// Damages a compiled model: its files are emptied.
fn damage(compiled: &Path) {
    for entry in walk(compiled) {
        std::fs::write(&entry, b"").unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn a_damaged_cache_entry_is_compiled_again() {
    // The committed fixture, whose files are older than the key's racy
    // window, so its compile is cached.
    let package = common::source_package("lora_adapter_1");
    let cache = tempfile::tempdir().unwrap();
    let configuration = core_ml(cache.path());
    let step = &steps("lora_adapter_1")[0];
    let first = load(&package, "main", &configuration);
    let features = inputs(first.description(), step);
    let want = first.predict(&features).unwrap();
    drop(first);
    let cached = entries(cache.path());
    assert_eq!(cached.len(), 1, "one compiled model cached: {cached:?}");
    let entry = &cached[0];

    damage(entry);
    let again = load(&package, "main", &configuration);
    let got = again.predict(&features).unwrap();
    check_outputs(
        "recompiled",
        &got,
        step,
        core_ml_tolerance("lora_adapter_1"),
    );
    assert_eq!(got.len(), want.len());
    // The entry was replaced by a fresh compile, in place.
    assert_eq!(entries(cache.path()), cached);
    assert!(walk(entry).iter().any(|f| f.metadata().unwrap().len() > 0));
}

#[test]
fn a_compiled_model_loads_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let package = common::merged_package("lora_pair");
    let compiled = compile_with_xcrun(&package, dir.path()).expect("xcrun coremlcompiler");
    assert_eq!(compiled, dir.path().join("lora_pair.mlmodelc"));
    let opened = Package::open(&package).unwrap();
    let configuration = core_ml(&dir.path().join("cache"));
    for (function, fixture) in [
        ("adapter_1", "lora_adapter_1"),
        ("adapter_2", "lora_adapter_2"),
    ] {
        let description = opened.function(function).unwrap().description.into_owned();
        let encoded = description.encode_to_vec();
        let loaded = Function::load_compiled(&compiled, description, &configuration).unwrap();
        let step = &steps(fixture)[0];
        let outputs = loaded.predict(&inputs(loaded.description(), step)).unwrap();
        check_outputs(fixture, &outputs, step, core_ml_tolerance(fixture));
        // As the generated load_from does it.
        let generated =
            Function::load_generated(&compiled, function, &encoded, &configuration).unwrap();
        assert_eq!(generated.package(), compiled.canonicalize().unwrap());
        // Nothing was compiled on the way: the cache stays empty.
        assert!(entries(&dir.path().join("cache")).is_empty());
    }

    // A damaged compiled model has no package to be compiled again from:
    // its load fails with Core ML's error, naming the path.
    let broken = dir.path().join("broken.mlmodelc");
    common::copy_dir(&compiled, &broken);
    damage(&broken);
    let description = opened
        .function("adapter_1")
        .unwrap()
        .description
        .into_owned();
    let error = Function::load_compiled(&broken, description, &configuration).unwrap_err();
    assert!(matches!(error, Error::CoreMl { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&broken.display().to_string()),
        "{error}"
    );
}
