//! Runs the API check on the host, where it predicts with the reference
//! backend: every generated function loads, predicts and checks its results.

#[test]
fn the_generated_api_runs_end_to_end() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_api-check"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("every function loaded and predicted"),
        "{stdout}"
    );
    // The classifiers' String and Int64 labels (issue 23).
    assert!(stdout.contains("classifiers: animals says \""), "{stdout}");
    // load_async's future awaited, its function moved to another thread
    // that awaits predict_async; a pipeline struct loaded the same way.
    assert!(
        stdout.contains("async load: loaded without blocking, predicted on another thread"),
        "{stdout}"
    );
    // Fixed-shape functions made at build time from one flexible package:
    // their generated shape constants, and the output shapes predicted.
    assert!(
        stdout.contains("fixed shapes: seq_8 [1, 8] -> [1, 8, 32], seq_32 [1, 32] -> [1, 32, 32]"),
        "{stdout}"
    );
}
