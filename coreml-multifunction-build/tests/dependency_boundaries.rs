//! Each side compiles only what it uses: an iOS app links the runtime
//! without the merge, code generation or CLI crates, and a build script on
//! a Mac compiles no runtime. Read from `cargo tree` over the committed lock
//! file: it needs no Apple toolchain (cargo may fetch the Apple-only crates'
//! sources, as `cargo check --target` does).

use std::process::Command;

/// The packages `package` compiles for `target` through normal
/// dependencies (what a crate links, or what a build script runs with).
fn normal_dependencies(package: &str, target: &str) -> Vec<String> {
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace)
        .args(["tree", "--locked", "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}", "--target", target, "-p", package])
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut names: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn assert_none_of(package: &str, target: &str, names: &[String], forbidden: &[&str]) {
    let found: Vec<&String> = names
        .iter()
        .filter(|name| {
            forbidden.iter().any(|f| {
                name.as_str() == *f || (f.ends_with('*') && name.starts_with(&f[..f.len() - 1]))
            })
        })
        .collect();
    assert!(
        found.is_empty(),
        "{package} on {target} compiles {found:?}; its dependencies: {names:?}"
    );
}

#[test]
fn an_ios_app_links_the_runtime_and_no_build_or_cli_crate() {
    let names = normal_dependencies("example-app", "aarch64-apple-ios");
    // The runtime and Core ML's bindings are there...
    for needed in ["coreml-multifunction", "objc2-core-ml"] {
        assert!(
            names.iter().any(|n| n == needed),
            "{needed} missing: {names:?}"
        );
    }
    // ...and nothing only a build script, the CLI or the reference backend
    // uses. (`syn` is there, for serde's and prost's derive macros.)
    assert_none_of(
        "example-app",
        "aarch64-apple-ios",
        &names,
        &[
            "coreml-multifunction-build",
            "lexopt",
            "npyz",
            "minijinja",
            "prettyplease",
            "toml",
            "cargo_metadata",
            "ndarray",
            "matrixmultiply",
        ],
    );
}

#[test]
fn a_build_script_on_a_mac_compiles_no_runtime() {
    for target in ["aarch64-apple-darwin", "x86_64-unknown-linux-gnu"] {
        let names = normal_dependencies("coreml-multifunction-build", target);
        assert!(
            names.iter().any(|n| n == "coreml-multifunction-format"),
            "{names:?}"
        );
        assert_none_of(
            "coreml-multifunction-build",
            target,
            &names,
            &[
                "coreml-multifunction",
                "objc2*",
                "block2",
                "ndarray",
                "matrixmultiply",
                "half",
            ],
        );
    }
}

#[test]
fn the_reference_backend_reaches_apple_targets_only_when_asked() {
    // The CLI turns it on for `predict`; a plain app does not (above).
    let names = normal_dependencies("coreml-multifunction-cli", "aarch64-apple-darwin");
    assert!(names.iter().any(|n| n == "ndarray"), "{names:?}");
    let linux = normal_dependencies("coreml-multifunction", "x86_64-unknown-linux-gnu");
    assert!(linux.iter().any(|n| n == "ndarray"), "{linux:?}");
    assert_none_of(
        "coreml-multifunction",
        "x86_64-unknown-linux-gnu",
        &linux,
        &["objc2*", "block2"],
    );
}
