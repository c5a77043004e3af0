//! `coreml-multifunction`: inspect and rewrite Core ML packages outside cargo.
//!
//! Errors go to stderr as one message and a non-zero exit status (1 for a
//! failed command, 2 for a malformed command line); nothing panics on bad
//! input.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use coreml_multifunction::inspect;
use coreml_multifunction::package::{self, Package};

const USAGE: &str = "\
coreml-multifunction: merge and inspect multifunction Core ML models

Usage:
  coreml-multifunction inspect PACKAGE [--json]
      Print the spec version, functions (opset, inputs, outputs, states),
      metadata and weight storage of an .mlpackage.
  coreml-multifunction rewrite SOURCE DESTINATION
      Read a package and write it back through this crate: the same model and
      blobs, with content-derived manifest identifiers (byte-reproducible).
  coreml-multifunction --help | --version
";

/// A failed command: the message, and whether it was a usage error.
struct Failure {
    message: String,
    usage: bool,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            usage: true,
        }
    }
}

impl From<coreml_multifunction::Error> for Failure {
    fn from(error: coreml_multifunction::Error) -> Self {
        Failure {
            message: error.to_string(),
            usage: false,
        }
    }
}

impl From<lexopt::Error> for Failure {
    fn from(error: lexopt::Error) -> Self {
        Failure::usage(error.to_string())
    }
}

fn main() -> ExitCode {
    match run(std::env::args_os().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            if failure.usage {
                eprintln!("\n{USAGE}");
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(args: Vec<OsString>) -> Result<(), Failure> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let command = match parser.next()? {
        Some(Value(command)) => command.string()?,
        Some(Long("help") | Short('h')) => {
            print!("{USAGE}");
            return Ok(());
        }
        Some(Long("version") | Short('V')) => {
            println!("coreml-multifunction {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(other) => return Err(other.unexpected().into()),
        None => return Err(Failure::usage("no command given")),
    };
    match command.as_str() {
        "inspect" => inspect_command(&mut parser),
        "rewrite" => rewrite_command(&mut parser),
        "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(Failure::usage(format!("unknown command {other:?}"))),
    }
}

fn inspect_command(parser: &mut lexopt::Parser) -> Result<(), Failure> {
    use lexopt::prelude::*;
    let mut path: Option<PathBuf> = None;
    let mut json = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("json") => json = true,
            Value(value) if path.is_none() => path = Some(value.into()),
            other => return Err(other.unexpected().into()),
        }
    }
    let path = path.ok_or_else(|| Failure::usage("inspect needs a PACKAGE"))?;
    let package = Package::open(&path)?;
    let report = inspect::report(&package, &path.display().to_string())?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&report).expect("reports serialise");
        text.push('\n');
        text
    } else {
        inspect::to_text(&report)
    };
    write_stdout(&text)
}

fn rewrite_command(parser: &mut lexopt::Parser) -> Result<(), Failure> {
    use lexopt::prelude::*;
    let mut paths: Vec<PathBuf> = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Value(value) if paths.len() < 2 => paths.push(value.into()),
            other => return Err(other.unexpected().into()),
        }
    }
    let [source, destination] = <[PathBuf; 2]>::try_from(paths)
        .map_err(|_| Failure::usage("rewrite needs a SOURCE and a DESTINATION"))?;
    let package = Package::open(&source)?;
    let summary = package::rewrite(&package, &destination)?;
    write_stdout(&format!(
        "wrote {} ({} blobs, {} bytes of weights)\n",
        summary.destination.display(),
        summary.blobs,
        summary.blob_bytes
    ))
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure {
            message: format!("could not write the output: {e}"),
            usage: false,
        }),
        _ => Ok(()),
    }
}
