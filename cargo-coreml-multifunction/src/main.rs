//! `cargo coreml-multifunction check | build`: every workspace member's
//! `[package.metadata.multifunction]` at once, without compiling anything.
//!
//! This is where `cargo metadata` (through the `cargo_metadata` crate) is
//! used: never in a build script, where it can deadlock on cargo's lock and
//! fails under `--offline`.

use std::path::PathBuf;
use std::process::ExitCode;

use coreml_multifunction_build::config::Config;
use coreml_multifunction_build::merge::Chunks;
use coreml_multifunction_build::pipeline::{self, CrateInfo};
use coreml_multifunction_build::Bytes;
use std::collections::BTreeMap;

const USAGE: &str = "\
cargo coreml-multifunction: the multifunction Core ML models of a workspace

Usage:
  cargo coreml-multifunction check [--manifest-path PATH]
      Validate every member's [package.metadata.multifunction]: the packages
      exist and open, the functions exist, names and defaults are valid,
      fixed shapes are ones their inputs allow, every body can be raised
      to the merged opset, and split functions can be split. Writes nothing.
  cargo coreml-multifunction build [--manifest-path PATH] [--out-dir DIR]
      Merge every member's models into DIR/<member>/<model>.mlpackage
      (default DIR: <target dir>/coreml-multifunction), skipping those whose
      inputs did not change.
";

enum Command {
    Check,
    Build,
}

struct Options {
    command: Command,
    manifest_path: Option<PathBuf>,
    out_dir: Option<PathBuf>,
}

fn parse(mut args: Vec<std::ffi::OsString>) -> Result<Options, String> {
    use lexopt::prelude::*;
    // Run as `cargo coreml-multifunction …`, cargo passes the subcommand's
    // own name first.
    if args.first().is_some_and(|a| a == "coreml-multifunction") {
        args.remove(0);
    }
    let mut parser = lexopt::Parser::from_args(args);
    let command = match parser.next().map_err(|e| e.to_string())? {
        Some(Value(v)) if v == "check" => Command::Check,
        Some(Value(v)) if v == "build" => Command::Build,
        Some(Long("help") | Short('h')) | None => return Err(String::new()),
        Some(other) => return Err(other.unexpected().to_string()),
    };
    let mut options = Options {
        command,
        manifest_path: None,
        out_dir: None,
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("manifest-path") => {
                options.manifest_path = Some(parser.value().map_err(|e| e.to_string())?.into())
            }
            Long("out-dir") => {
                options.out_dir = Some(parser.value().map_err(|e| e.to_string())?.into())
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args_os().skip(1).collect()) {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Checks or builds every member; `Ok(false)` when any member failed (each
/// failure is printed, and the others still run).
fn run(options: &Options) -> Result<bool, String> {
    let mut command = cargo_metadata::MetadataCommand::new();
    command.no_deps();
    if let Some(path) = &options.manifest_path {
        command.manifest_path(path);
    }
    let metadata = command
        .exec()
        .map_err(|e| format!("cargo metadata failed: {e}"))?;
    let out_root = options.out_dir.clone().unwrap_or_else(|| {
        metadata
            .target_directory
            .join("coreml-multifunction")
            .into_std_path_buf()
    });

    let mut members: Vec<_> = metadata
        .workspace_packages()
        .into_iter()
        .filter(|p| p.metadata.get("multifunction").is_some())
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    if members.is_empty() {
        println!("no workspace member has a [package.metadata.multifunction] section");
        return Ok(true);
    }

    let mut all_ok = true;
    for member in members {
        let manifest = member.manifest_path.clone().into_std_path_buf();
        let manifest_dir = manifest
            .parent()
            .expect("a manifest is in a directory")
            .to_path_buf();
        let crate_info = CrateInfo {
            name: member.name.to_string(),
            version: member.version.to_string(),
            authors: member.authors.join(", "),
            license: member.license.clone().unwrap_or_default(),
            description: member.description.clone().unwrap_or_default(),
        };
        let out_dir = out_root.join(member.name.as_str());
        let result = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("{}: could not read it: {e}", manifest.display()))
            .and_then(|text| Config::parse(&manifest, &text).map_err(|e| e.to_string()))
            .and_then(|config| match options.command {
                Command::Check => check(&config, &manifest_dir, &crate_info, &out_dir),
                Command::Build => build(&config, &manifest_dir, &crate_info, &out_dir),
            });
        match result {
            Ok(lines) => {
                println!("{} {}", member.name, member.version);
                for line in lines {
                    println!("  {line}");
                }
            }
            Err(message) => {
                all_ok = false;
                eprintln!("error: {}: {message}", member.name);
            }
        }
    }
    Ok(all_ok)
}

fn check(
    config: &Config,
    manifest_dir: &std::path::Path,
    crate_info: &CrateInfo,
    out_dir: &std::path::Path,
) -> Result<Vec<String>, String> {
    let models = pipeline::resolve(config, manifest_dir, crate_info).map_err(|e| e.to_string())?;
    let mut lines = Vec::new();
    for model in models {
        // Also what the merge itself checks: functions exist, shapes are
        // allowed, opsets raise.
        pipeline::check(config, &model).map_err(|e| e.to_string())?;
        let targets: Vec<String> = model
            .functions
            .iter()
            .map(|f| {
                let mut text = with_shapes(&f.target, &f.fixed_shapes());
                match f.chunks.as_ref().map(|c| c.value) {
                    Some(Chunks::Count(n)) => text += &format!(" in {n} chunks"),
                    Some(Chunks::MaxBytes(bytes)) => {
                        text += &format!(" in chunks of at most {}", Bytes(bytes))
                    }
                    None => {}
                }
                text
            })
            .collect();
        lines.push(format!(
            "{}: ok, {} functions ({}), default {}; would write {}",
            model.name,
            targets.len(),
            targets.join(", "),
            model.default_function,
            out_dir.join(format!("{}.mlpackage", model.name)).display()
        ));
    }
    Ok(lines)
}

fn build(
    config: &Config,
    manifest_dir: &std::path::Path,
    crate_info: &CrateInfo,
    out_dir: &std::path::Path,
) -> Result<Vec<String>, String> {
    let built =
        pipeline::build(config, manifest_dir, out_dir, crate_info).map_err(|e| e.to_string())?;
    Ok(built
        .iter()
        .map(|model| match &model.merge {
            Some(report) => format!(
                "{}: merged {} functions ({}) into {} ({} unique blobs, {} of weights; {} cloned, {} written)",
                model.model.name,
                report.functions.len(),
                report
                    .functions
                    .iter()
                    .map(|f| {
                        let mut text = with_shapes(&f.target, &f.fixed_shapes);
                        if !f.chunks.is_empty() {
                            let chunks: Vec<String> = f
                                .chunks
                                .iter()
                                .map(|c| format!("{} {}", c.name, Bytes(c.weight_bytes)))
                                .collect();
                            text += &format!(" in chunks {}", chunks.join(", "));
                        }
                        text
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                model.package.display(),
                report.unique_blobs,
                Bytes(report.blob_bytes),
                Bytes(report.cloned_bytes),
                Bytes(report.written_bytes())
            ),
            None => format!(
                "{}: up to date, {}",
                model.model.name,
                model.package.display()
            ),
        })
        .collect())
}

/// A function's name, with its fixed input shapes if it has any:
/// `seq_8 with input_ids [1, 8]`.
fn with_shapes(target: &str, shapes: &BTreeMap<String, Vec<u64>>) -> String {
    if shapes.is_empty() {
        return target.to_string();
    }
    let fixed: Vec<String> = shapes
        .iter()
        .map(|(input, shape)| format!("{input} {shape:?}"))
        .collect();
    format!("{target} with {}", fixed.join(" and "))
}
