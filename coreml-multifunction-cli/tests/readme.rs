//! Keeps the README honest: its Rust snippets that cannot be doctests (they
//! need a build script's generated code) must match code that CI compiles,
//! its quick start must be what CI runs, and its CLI synopsis must list the
//! commands the binary has.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(relative))
        .unwrap()
}

/// The code blocks of `markdown` with the given info string.
fn blocks<'a>(markdown: &'a str, info: &str) -> Vec<&'a str> {
    let fence = format!("```{info}\n");
    let mut found = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("```").expect("a closed block");
        found.push(&body[..end]);
        rest = &body[end..];
    }
    found
}

#[test]
fn usage_snippets_are_code_that_ci_compiles() {
    let readme = read("README.md");
    // Compared without white space: rustfmt may wrap what the README keeps
    // on one line.
    let squeeze = |text: &str| {
        let tight: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        tight.replace(",}", "}").replace(",)", ")")
    };
    let compiled = squeeze(
        &[
            read("example-app/src/main.rs"),
            read("tests/api-check/src/main.rs"),
        ]
        .join("\n"),
    );
    let snapshot = read("coreml-multifunction-build/tests/snapshots/codegen__lora_pair.snap");
    let snippets = blocks(&readme, "rust,ignore");
    assert!(snippets.len() >= 4, "{snippets:?}");
    for snippet in snippets {
        if snippet.contains("pub mod combined") {
            // The sketch of the generated module: every item it names is in
            // the generated code of a LoRA pair.
            for line in snippet.lines().map(str::trim) {
                for keyword in ["pub struct ", "pub enum ", "pub const ", "pub fn "] {
                    if let Some(rest) = line.strip_prefix(keyword) {
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        assert!(
                            snapshot.contains(&format!("{keyword}{name}")),
                            "{keyword}{name} is not generated"
                        );
                    }
                }
            }
            continue;
        }
        for line in snippet.lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                compiled.contains(&squeeze(line)),
                "README line not in the example or the API check: {line}"
            );
        }
    }
}

#[test]
fn the_quick_start_is_what_ci_runs() {
    let readme = read("README.md");
    let quick_start = blocks(&readme, "sh")[0];
    let commands: Vec<&str> = quick_start
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .collect();
    assert_eq!(
        commands,
        ["cargo run -p example-app", "cargo test --workspace"]
    );
    let ci = read(".ci/run");
    for command in commands {
        assert!(ci.contains(command), ".ci/run does not run `{command}`");
    }
}

#[test]
fn the_cli_synopsis_lists_the_binarys_commands() {
    let readme = read("README.md");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_coreml-multifunction"))
        .arg("--help")
        .output()
        .unwrap();
    let usage = String::from_utf8(output.stdout).unwrap();
    let synopsis = blocks(&readme, "text")
        .into_iter()
        .find(|b| b.contains("coreml-multifunction inspect"))
        .unwrap();
    for line in synopsis
        .lines()
        .filter(|l| l.starts_with("coreml-multifunction "))
    {
        let command = line.split_whitespace().nth(1).unwrap();
        assert!(
            usage.contains(&format!("coreml-multifunction {command} ")),
            "{command} is not in --help"
        );
    }
}

#[test]
fn the_cli_examples_run_as_written() {
    // The README's CLI examples name packages in the current directory:
    // run them verbatim where those names hold the example app's adapters.
    let dir = tempfile::tempdir().unwrap();
    let models = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("example-app/models");
    for name in ["adapter_1", "adapter_2"] {
        common::copy_dir(
            &models.join(format!("{name}.mlpackage")),
            &dir.path().join(format!("{name}.mlpackage")),
        );
    }
    let readme = read("README.md");
    let examples: Vec<String> = blocks(&readme, "sh")
        .into_iter()
        .filter(|block| block.starts_with("coreml-multifunction "))
        .map(|block| block.replace("\\\n", " "))
        .collect();
    assert!(!examples.is_empty());
    for example in examples {
        let words: Vec<&str> = example.split_whitespace().collect();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_coreml-multifunction"))
            .args(&words[1..])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "`{}` failed: {}",
            words.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert!(dir
        .path()
        .join("combined.mlpackage/Manifest.json")
        .is_file());
}
