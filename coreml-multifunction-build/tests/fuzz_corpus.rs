//! Replays the committed fuzz corpora and every input that ever crashed a
//! fuzz target, on stable Rust: what the fuzzers found stays fixed.
//!
//! `fuzz/corpus/<target>/` holds the minimised corpora, `fuzz/regressions/
//! <target>/` the crashes (see SECURITY.md for how to add one).

#[path = "../../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("fuzz");
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} panicked", file.display());
            count += 1;
        }
    }
    count
}

#[test]
fn manifest_corpus() {
    assert!(replay("manifest", harness::manifest) > 0);
}

#[test]
fn spec_corpus() {
    assert!(replay("spec", harness::spec) > 0);
}

#[test]
fn weights_corpus() {
    assert!(replay("weights", harness::weights) > 0);
}

#[test]
fn merge_corpus() {
    assert!(replay("merge", harness::merge) > 0);
}

#[test]
fn codegen_corpus() {
    assert!(replay("codegen", harness::codegen) > 0);
}
