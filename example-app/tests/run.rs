//! The example runs end to end: every adapter predicts, and the report shows
//! the merged model smaller than the three adapters shipped separately.

use std::process::Command;

#[test]
fn the_example_runs_every_adapter_and_reports_the_saving() {
    let output = Command::new(env!("CARGO_BIN_EXE_example-app"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for function in ["adapter_1 (default)", "adapter_2", "adapter_3"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(function) && l.contains("|y| = ")),
            "{function}:\n{stdout}"
        );
    }
    // Distinct adapters give distinct outputs.
    let norms: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split("|y| = ").nth(1))
        .collect();
    assert_eq!(norms.len(), 3, "{stdout}");
    assert!(norms[0] != norms[1] && norms[1] != norms[2], "{stdout}");
    let saved = stdout
        .lines()
        .find(|l| l.starts_with("saved by sharing"))
        .expect("a saving line");
    assert!(!saved.contains(" 0%"), "{saved}");
}
