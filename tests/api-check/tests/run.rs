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
}
