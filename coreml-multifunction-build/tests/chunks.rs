//! Chunked functions (`MultiFunctionDescriptor::chunks`): the shape of
//! every chunk, checked from the merged package alone (interfaces, crossing
//! values, states, weight bytes counted independently), budgets, functions
//! cut at the same weights, errors and reproducibility. Running the chunks
//! against the unsplit function is `coreml-multifunction-cli/tests/chunks.rs`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use coreml_multifunction_build::merge::{Chunks, MergeReport, MultiFunctionDescriptor};
use coreml_multifunction_build::package::Package;
use coreml_multifunction_build::proto::mil_spec::{self, argument::binding, value};
use coreml_multifunction_build::{Error, MergeProblem};

use common::source_package;

/// Single-function fixtures to split: a decoder layer stack (fp16), a
/// segmentation UNet whose skip connections cross several values at once
/// (fp32), an encoder (fp32), and the chunk fixtures made for this feature.
const SPLIT_FIXTURES: &[&str] = &["llama", "unet", "bert", "chunk_cnn", "chunk_encoder"];

fn fixture(name: &str) -> Option<PathBuf> {
    let path = source_package(name);
    path.exists().then_some(path)
}

fn split(source: &Path, chunks: Chunks, destination: &Path) -> Result<MergeReport, Error> {
    MultiFunctionDescriptor::new()
        .add_function(source, "main")
        .chunks("main", chunks)
        .default_function("main")
        .merge(destination)
}

/// The ops that compute (neither `const` nor `constexpr_*`).
fn is_constant(op: &mil_spec::Operation) -> bool {
    op.r#type == "const" || op.r#type.starts_with("constexpr_")
}

fn names_read(op: &mil_spec::Operation, into: &mut BTreeSet<String>) {
    for argument in op.inputs.values() {
        for b in &argument.arguments {
            if let Some(binding::Binding::Name(name)) = &b.binding {
                into.insert(name.clone());
            }
        }
    }
    for block in &op.blocks {
        for nested in &block.operations {
            names_read(nested, into);
        }
        into.extend(block.outputs.iter().cloned());
    }
}

/// The stored bytes of the distinct blobs each function of a package
/// references, by function.
fn blobs_by_function(package: &Package) -> BTreeMap<String, BTreeMap<u64, u64>> {
    let mut by_function: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    for reference in package.blob_references().unwrap() {
        by_function
            .entry(reference.site.function.clone())
            .or_default()
            .insert(reference.record.record_offset, reference.record.size);
    }
    by_function
}

/// The largest weight bytes one computing op of `function` reaches through
/// the constants it reads, counted from the source package.
fn largest_op_bytes(package: &Package, function: &str) -> u64 {
    let view = package.function(function).unwrap();
    let ops = &view.block().operations;
    let produced: BTreeMap<&str, usize> = ops
        .iter()
        .enumerate()
        .flat_map(|(i, op)| op.outputs.iter().map(move |o| (o.name.as_str(), i)))
        .collect();
    let blob_size = |value: &mil_spec::Value| -> Option<(u64, u64)> {
        let Some(value::Value::BlobFileValue(blob)) = &value.value else {
            return None;
        };
        let record = package
            .blob_file(&blob.file_name)?
            .record(blob.offset)
            .ok()?;
        Some((blob.offset, record.size))
    };
    let mut largest = 0;
    for op in ops.iter().filter(|op| !is_constant(op)) {
        let mut reads = BTreeSet::new();
        names_read(op, &mut reads);
        let mut pending: Vec<usize> = reads
            .iter()
            .filter_map(|n| produced.get(n.as_str()).copied())
            .filter(|&i| is_constant(&ops[i]))
            .collect();
        let mut seen = BTreeSet::new();
        let mut blobs = BTreeMap::new();
        while let Some(i) = pending.pop() {
            if !seen.insert(i) {
                continue;
            }
            for value in ops[i].attributes.values() {
                blobs.extend(blob_size(value));
            }
            let mut more = BTreeSet::new();
            names_read(&ops[i], &mut more);
            for argument in ops[i].inputs.values() {
                for b in &argument.arguments {
                    if let Some(binding::Binding::Value(value)) = &b.binding {
                        blobs.extend(blob_size(value));
                    }
                }
            }
            pending.extend(
                more.iter()
                    .filter_map(|n| produced.get(n.as_str()).copied())
                    .filter(|&j| is_constant(&ops[j])),
            );
        }
        largest = largest.max(blobs.values().sum());
    }
    largest
}

/// Checks the chunks of `target` in `merged` against the unsplit function
/// `source_function` of `source`: names, interfaces, crossing values,
/// states, outputs, and weight bytes (the report's against the package's).
fn check_chunks(
    report: &MergeReport,
    merged: &Package,
    target: &str,
    source: &Package,
    source_function: &str,
) {
    let unsplit = source.function(source_function).unwrap();
    let merged_function = report
        .functions
        .iter()
        .find(|f| f.target == target)
        .unwrap();
    let chunks = &merged_function.chunks;
    assert!(!chunks.is_empty(), "{target} was not split");
    assert!(
        merged.function(target).is_none(),
        "the unsplit {target} is in the package"
    );
    let blobs = blobs_by_function(merged);
    let function_inputs: BTreeSet<&str> = unsplit
        .function
        .inputs
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    let mut available: BTreeMap<String, mil_spec::NamedValueType> = BTreeMap::new();
    let mut outputs_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (k, chunk) in chunks.iter().enumerate() {
        assert_eq!(chunk.name, format!("{target}_chunk{}", k + 1));
        let view = merged.function(&chunk.name).unwrap();
        // The MIL interface and the description agree, input for input.
        let description_inputs: Vec<&str> = view
            .description
            .input
            .iter()
            .chain(&view.description.state)
            .map(|f| f.name.as_str())
            .collect();
        let mil_inputs: BTreeSet<&str> = view
            .function
            .inputs
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(
            description_inputs.iter().copied().collect::<BTreeSet<_>>(),
            mil_inputs,
            "{}: description and program inputs differ",
            chunk.name
        );
        let block_outputs: Vec<&str> = view.block().outputs.iter().map(String::as_str).collect();
        let description_outputs: Vec<&str> = view
            .description
            .output
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(block_outputs, description_outputs, "{}", chunk.name);
        // Every input is the function's own or an earlier chunk's output,
        // with the type that chunk declared.
        for input in &view.function.inputs {
            if function_inputs.contains(input.name.as_str()) {
                let original = unsplit
                    .function
                    .inputs
                    .iter()
                    .find(|i| i.name == input.name)
                    .unwrap();
                assert_eq!(
                    input, original,
                    "{}: input {} retyped",
                    chunk.name, input.name
                );
                continue;
            }
            let earlier = available.get(&input.name).unwrap_or_else(|| {
                panic!(
                    "{}: input {} comes from no earlier chunk",
                    chunk.name, input.name
                )
            });
            assert_eq!(
                input, earlier,
                "{}: crossing value {} retyped",
                chunk.name, input.name
            );
            assert!(
                chunk.crossing_inputs.iter().any(|c| c.name == input.name),
                "{}: the report misses crossing value {}",
                chunk.name,
                input.name
            );
        }
        assert_eq!(
            chunk.crossing_inputs.len(),
            view.function
                .inputs
                .iter()
                .filter(|i| !function_inputs.contains(i.name.as_str()))
                .count()
        );
        // States: the function's own descriptions, only those used.
        for state in &view.description.state {
            assert!(
                unsplit.description.state.contains(state),
                "{}: state {} differs from the unsplit function's",
                chunk.name,
                state.name
            );
        }
        // The block's outputs are what its ops compute, typed as declared.
        for op in &view.block().operations {
            for output in &op.outputs {
                if block_outputs.contains(&output.name.as_str()) {
                    available.insert(output.name.clone(), output.clone());
                }
            }
        }
        for name in &block_outputs {
            *outputs_seen.entry(name.to_string()).or_default() += 1;
        }
        // Weight bytes as the package stores them.
        let stored: u64 = blobs.get(&chunk.name).map_or(0, |b| b.values().sum());
        assert_eq!(chunk.weight_bytes, stored, "{}: weight bytes", chunk.name);
    }
    for output in &unsplit.description.output {
        assert_eq!(
            outputs_seen.get(&output.name),
            Some(&1),
            "function output {} must be an output of exactly one chunk",
            output.name
        );
    }
    // The chunks together use the unsplit function's weights, each stored
    // once: as many distinct blobs and bytes as merging it whole stores.
    let scratch = tempfile::tempdir().unwrap();
    let whole_path = scratch.path().join("whole.mlpackage");
    let whole = MultiFunctionDescriptor::new()
        .add_function_from(source.root(), source_function, target)
        .default_function(target)
        .merge(&whole_path)
        .unwrap();
    let distinct: BTreeMap<u64, u64> = chunks
        .iter()
        .flat_map(|c| blobs.get(&c.name).into_iter().flatten())
        .map(|(&offset, &size)| (offset, size))
        .collect();
    assert_eq!(
        distinct.len(),
        whole.unique_blobs,
        "every weight, stored once"
    );
    assert_eq!(distinct.values().sum::<u64>(), whole.blob_bytes);
    assert_eq!(merged_function.weight_bytes, whole.blob_bytes);
    assert_eq!(whole.functions[0].weight_bytes, whole.blob_bytes);
}

#[test]
fn every_fixture_splits_into_two_and_three_balanced_chunks() {
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for name in SPLIT_FIXTURES {
        let Some(path) = fixture(name) else { continue };
        let source = Package::open(&path).unwrap();
        let largest = largest_op_bytes(&source, "main");
        for n in [2usize, 3] {
            let destination = scratch.path().join(format!("{name}_{n}.mlpackage"));
            let report = split(&path, Chunks::Count(n), &destination)
                .unwrap_or_else(|e| panic!("{name} into {n}: {e}"));
            let merged = Package::open(&destination).unwrap();
            check_chunks(&report, &merged, "main", &source, "main");
            let function = &report.functions[0];
            assert_eq!(function.chunks.len(), n);
            let share = function.weight_bytes.div_ceil(n as u64);
            for chunk in &function.chunks {
                assert!(
                    chunk.weight_bytes <= share + largest,
                    "{name} into {n}: {} holds {} bytes, over the share {share} plus the \
                     largest op's {largest}",
                    chunk.name,
                    chunk.weight_bytes
                );
            }
            assert_eq!(merged.default_function(), "main_chunk1");
            assert_eq!(report.default_function, "main_chunk1");
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} splits checked");
}

#[test]
fn the_unet_passes_several_values_at_some_cut() {
    let scratch = tempfile::tempdir().unwrap();
    let report = split(
        &source_package("unet"),
        Chunks::Count(2),
        &scratch.path().join("unet.mlpackage"),
    )
    .unwrap();
    let crossing = &report.functions[0].chunks[1].crossing_inputs;
    assert!(
        crossing.len() >= 2,
        "a cut inside a UNet crosses its skip connections too: {crossing:?}"
    );
    for value in crossing {
        assert_eq!(value.from_chunk, 1);
        assert!(value.bytes.is_some(), "{value:?}");
    }
}

#[test]
fn a_budget_is_never_exceeded() {
    let scratch = tempfile::tempdir().unwrap();
    for name in SPLIT_FIXTURES {
        let Some(path) = fixture(name) else { continue };
        let source = Package::open(&path).unwrap();
        let largest = largest_op_bytes(&source, "main");
        // The source stores some equal weights twice; the bound uses what
        // it stores, an upper bound of what a chunk holds.
        let total: u64 = blobs_by_function(&source)["main"].values().sum();
        for budget in [largest, (total / 2).max(largest), total * 2 / 3, total] {
            let destination = scratch.path().join(format!("{name}_{budget}.mlpackage"));
            let report = split(&path, Chunks::MaxBytes(budget), &destination)
                .unwrap_or_else(|e| panic!("{name} under {budget}: {e}"));
            let merged = Package::open(&destination).unwrap();
            check_chunks(&report, &merged, "main", &source, "main");
            let chunks = &report.functions[0].chunks;
            for chunk in chunks {
                assert!(
                    chunk.weight_bytes <= budget,
                    "{name}: {chunk:?} over {budget}"
                );
            }
            assert!(chunks.len() as u64 >= total.div_ceil(budget));
            if budget >= total {
                assert_eq!(chunks.len(), 1, "{name}: everything fits one chunk");
            }
        }
    }
}

#[test]
fn a_budget_under_one_ops_weights_names_the_op_and_writes_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let path = source_package("llama");
    let largest = largest_op_bytes(&Package::open(&path).unwrap(), "main");
    let destination = scratch.path().join("out.mlpackage");
    let error = split(&path, Chunks::MaxBytes(largest - 1), &destination).unwrap_err();
    let Some(MergeProblem::OpOverBudget {
        target,
        op,
        op_type,
        bytes,
        budget,
    }) = error.merge_problem()
    else {
        panic!("unexpected error: {error}");
    };
    assert_eq!(target, "main");
    assert_eq!(*bytes, largest);
    assert_eq!(*budget, largest - 1);
    assert!(!op.is_empty() && !op_type.is_empty());
    let message = error.to_string();
    assert!(
        message.contains(op.as_str()) && message.contains(op_type.as_str()),
        "{message}"
    );
    assert!(message.contains("raise the budget"), "{message}");
    assert!(!destination.exists());
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "staging left behind"
    );
}

/// An LLM's prefill and decode: the same flexible decoder fixed at 8 tokens
/// and at 1, sharing one KV cache, each split in two.
fn prefill_and_decode(chunks: Option<Chunks>) -> MultiFunctionDescriptor {
    let source = source_package("materialize_decoder");
    let mut descriptor = MultiFunctionDescriptor::new();
    for (target, length) in [("prefill", 8), ("decode", 1)] {
        descriptor
            .add_function(&source, target)
            .fixed_shape(target, "input_ids", [1, length]);
        if let Some(chunks) = chunks {
            descriptor.chunks(target, chunks);
        }
    }
    descriptor.default_function("decode");
    descriptor
}

#[test]
fn prefill_and_decode_are_cut_at_the_same_weights() {
    let scratch = tempfile::tempdir().unwrap();
    let whole = prefill_and_decode(None)
        .merge(scratch.path().join("whole.mlpackage"))
        .unwrap();
    let destination = scratch.path().join("split.mlpackage");
    let report = prefill_and_decode(Some(Chunks::Count(2)))
        .merge(&destination)
        .unwrap();
    let merged = Package::open(&destination).unwrap();
    let blobs = blobs_by_function(&merged);
    for k in 1..=2 {
        let prefill: BTreeSet<u64> = blobs[&format!("prefill_chunk{k}")]
            .keys()
            .copied()
            .collect();
        let decode: BTreeSet<u64> = blobs[&format!("decode_chunk{k}")].keys().copied().collect();
        assert!(!prefill.is_empty());
        assert_eq!(
            prefill, decode,
            "chunk {k} of prefill and of decode share every weight"
        );
    }
    assert!(report.unique_blobs <= whole.unique_blobs);
    assert!(report.blob_bytes <= whole.blob_bytes);
    assert_eq!(merged.default_function(), "decode_chunk1");
    // Both stateful chunks take the one KV cache, described as the source
    // describes it.
    let source = Package::open(source_package("materialize_decoder")).unwrap();
    let state = &source.function("main").unwrap().description.state;
    let mut stateful = 0;
    for function in merged.functions() {
        if !function.description.state.is_empty() {
            assert_eq!(&function.description.state, state, "{}", function.name);
            stateful += 1;
        }
    }
    assert!(
        stateful >= 2,
        "the cache is used on both sides of prefill's and decode's cuts or in one"
    );
}

#[test]
fn chunks_are_byte_reproducible() {
    let scratch = tempfile::tempdir().unwrap();
    let first = scratch.path().join("first.mlpackage");
    let second = scratch.path().join("second.mlpackage");
    prefill_and_decode(Some(Chunks::Count(3)))
        .merge(&first)
        .unwrap();
    prefill_and_decode(Some(Chunks::Count(3)))
        .merge(&second)
        .unwrap();
    let first_tree = common::tree_bytes(&first);
    assert!(!first_tree.is_empty());
    assert_eq!(first_tree, common::tree_bytes(&second));
}

#[test]
fn split_errors_name_the_function_and_say_what_to_do() {
    let scratch = tempfile::tempdir().unwrap();
    let destination = scratch.path().join("out.mlpackage");
    let llama = source_package("llama");
    let error = MultiFunctionDescriptor::new()
        .add_function(&llama, "main")
        .chunks("nope", Chunks::Count(2))
        .default_function("main")
        .merge(&destination)
        .unwrap_err();
    assert!(
        matches!(error.merge_problem(), Some(MergeProblem::UnknownChunkTarget { target, .. }) if target == "nope"),
        "{error}"
    );
    for (chunks, says) in [
        (Chunks::Count(0), "ask for 1 or more"),
        (Chunks::Count(1000), "ask for at most"),
    ] {
        let error = split(&llama, chunks, &destination).unwrap_err();
        assert!(
            matches!(error.merge_problem(), Some(MergeProblem::CannotSplit { target, .. }) if target == "main"),
            "{error}"
        );
        assert!(error.to_string().contains(says), "{error}");
    }
    // A chunk named like another merged function.
    let error = MultiFunctionDescriptor::new()
        .add_function(&llama, "main")
        .chunks("main", Chunks::Count(2))
        .add_function(&llama, "main_chunk2")
        .default_function("main")
        .merge(&destination)
        .unwrap_err();
    assert!(error.to_string().contains("main_chunk2"), "{error}");
    assert!(!destination.exists());
    // check() finds the same errors without writing.
    assert!(MultiFunctionDescriptor::new()
        .add_function(&llama, "main")
        .chunks("main", Chunks::Count(0))
        .default_function("main")
        .check()
        .is_err());
}

#[test]
fn one_chunk_is_the_function_under_its_chunk_name() {
    let scratch = tempfile::tempdir().unwrap();
    let destination = scratch.path().join("one.mlpackage");
    let report = split(&source_package("llama"), Chunks::Count(1), &destination).unwrap();
    let merged = Package::open(&destination).unwrap();
    let source = Package::open(source_package("llama")).unwrap();
    check_chunks(&report, &merged, "main", &source, "main");
    let chunk = merged.function("main_chunk1").unwrap();
    let original = source.function("main").unwrap();
    assert_eq!(
        chunk.block().operations.len(),
        original.block().operations.len()
    );
}

/// Every function of every committed package (control flow, compressed
/// weights, images, states, flexible shapes, several functions), split in
/// two and three and under a budget: a split either is made, and then has
/// the shape every split must have, or is refused with a split error;
/// never a panic or another error.
#[test]
fn every_fixture_function_splits_or_is_refused_with_a_reason() {
    let scratch = tempfile::tempdir().unwrap();
    let (mut made, mut refused) = (0, 0);
    for (index, path) in common::all_packages().into_iter().enumerate() {
        let source = Package::open(&path).unwrap();
        if source.model().specification_version < 7 {
            continue; // not mergeable at all (checked by the merge tests)
        }
        for function in source.functions() {
            let total: u64 = blobs_by_function(&source)
                .get(function.name)
                .map_or(0, |b| b.values().sum());
            for chunks in [
                Chunks::Count(2),
                Chunks::Count(3),
                Chunks::MaxBytes(total / 2 + 1),
            ] {
                let destination = scratch.path().join(format!("{index}.mlpackage"));
                let result = MultiFunctionDescriptor::new()
                    .add_function_from(&path, function.name, "split")
                    .chunks("split", chunks)
                    .default_function("split")
                    .merge(&destination);
                match result {
                    Ok(report) => {
                        let merged = Package::open(&destination).unwrap();
                        check_chunks(&report, &merged, "split", &source, function.name);
                        made += 1;
                    }
                    Err(error) => match error.merge_problem() {
                        Some(MergeProblem::CannotSplit { reason, .. }) => {
                            assert!(
                                reason.contains("ask for") || reason.contains("raise"),
                                "{reason}"
                            );
                            refused += 1;
                        }
                        Some(MergeProblem::OpOverBudget { .. }) => refused += 1,
                        // Sources the merge refuses whole (their opset).
                        Some(MergeProblem::OpsetCannotBeRaised { .. }) => {}
                        _ => panic!("{} {}: {error}", path.display(), function.name),
                    },
                }
            }
        }
    }
    eprintln!("{made} splits made, {refused} refused with a reason");
    assert!(made >= 100, "only {made} splits made");
}

/// The Llama-style decoder's prefill (8 tokens) and decode (1 token),
/// converted apart from one module: split in two and three, chunk `k` of
/// each references exactly the weights of the other's chunk `k`, and the
/// merge stores no more than merging them whole.
#[test]
fn the_decoders_prefill_and_decode_chunks_share_every_weight() {
    let scratch = tempfile::tempdir().unwrap();
    let prefill = source_package("chunk_decoder_prefill");
    let decode = source_package("chunk_decoder_decode");
    let descriptor = |chunks: Option<usize>| {
        let mut descriptor = MultiFunctionDescriptor::new();
        descriptor
            .add_function(&prefill, "prefill")
            .add_function(&decode, "decode")
            .default_function("decode");
        if let Some(n) = chunks {
            descriptor
                .chunks("prefill", Chunks::Count(n))
                .chunks("decode", Chunks::Count(n));
        }
        descriptor
    };
    let whole = descriptor(None)
        .merge(scratch.path().join("whole.mlpackage"))
        .unwrap();
    for n in [2, 3] {
        let destination = scratch.path().join(format!("split_{n}.mlpackage"));
        let report = descriptor(Some(n)).merge(&destination).unwrap();
        let merged = Package::open(&destination).unwrap();
        for (target, source) in [("prefill", &prefill), ("decode", &decode)] {
            check_chunks(
                &report,
                &merged,
                target,
                &Package::open(source).unwrap(),
                "main",
            );
        }
        let blobs = blobs_by_function(&merged);
        for k in 1..=n {
            let of = |target: &str| -> BTreeSet<u64> {
                blobs[&format!("{target}_chunk{k}")]
                    .keys()
                    .copied()
                    .collect()
            };
            assert!(!of("prefill").is_empty());
            assert_eq!(of("prefill"), of("decode"), "{n} chunks: chunk {k}");
        }
        assert_eq!(report.unique_blobs, whole.unique_blobs, "{n} chunks");
        assert_eq!(report.blob_bytes, whole.blob_bytes, "{n} chunks");
        // Every chunk that touches the cache declares it as the sources do.
        let state = &Package::open(&decode)
            .unwrap()
            .function("main")
            .unwrap()
            .description
            .state
            .clone();
        let stateful: Vec<String> = merged
            .functions()
            .iter()
            .filter(|f| !f.description.state.is_empty())
            .inspect(|f| assert_eq!(&f.description.state, state, "{}", f.name))
            .map(|f| f.name.to_string())
            .collect();
        assert_eq!(
            stateful.len(),
            2 * n,
            "every layer reads the cache: {stateful:?}"
        );
    }
}
