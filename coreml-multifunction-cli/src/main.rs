//! `coreml-multifunction`: inspect, merge, compare, rewrite and run Core ML
//! packages outside cargo.
//!
//! Errors go to stderr as one message and a non-zero exit status (1 for a
//! failed command, 2 for a malformed command line); nothing panics on bad
//! input.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use coreml_multifunction::package::{self, Package};
use coreml_multifunction_build::compare::{self, CompareOptions};
use coreml_multifunction_build::merge::{Chunks, MergedFunction, MultiFunctionDescriptor};
use coreml_multifunction_build::{inspect, Bytes};

const USAGE: &str = "\
coreml-multifunction: merge and inspect multifunction Core ML models

Usage:
  coreml-multifunction inspect PACKAGE [--json]
      Print the spec version, functions (opset, inputs, outputs, states),
      metadata and weight storage of an .mlpackage.
  coreml-multifunction merge -o OUT.mlpackage --function PKG[:SRC]=TARGET ... --default TARGET
                       [--shape TARGET:INPUT=D0xD1x... ...]
                       [--chunks TARGET=N ...] [--max-chunk-bytes TARGET=SIZE ...]
      Merge functions of ML Program packages into one multifunction package,
      storing equal weights once. SRC defaults to main. --function repeats;
      --all PKG adds every function of PKG under its own name. --shape fixes
      flexible input INPUT of function TARGET to one shape it allows (such as
      --shape seq_8:input_ids=1x8), making TARGET a fixed-shape function of
      its source; it repeats, once per input to fix. --chunks splits function
      TARGET into N consecutive chunks (functions TARGET_chunk1 ...
      TARGET_chunkN), balancing their weight bytes; --max-chunk-bytes splits
      it into as few as keep each chunk's weights within SIZE (bytes, or
      with a K, M or G suffix, powers of 1024: --max-chunk-bytes
      decode=900M). Each repeats, once per function to split.
  coreml-multifunction compare LEFT RIGHT [--ignore-metadata]
                       [--ignore-program-attributes] [--ignore-spec-version]
                       [--ignore-op-names]
      Compare two packages semantically: functions, interfaces, ops, and
      weights by value. Exit status 0 when equal, 1 when they differ.
  coreml-multifunction rewrite SOURCE DESTINATION
      Read a package and write it back through this crate: the same model and
      blobs, with content-derived manifest identifiers (byte-reproducible).
  coreml-multifunction predict PACKAGE [--function NAME] --input NAME=FILE.npy ...
                       [--state NAME=FILE.npy ...] --output-dir DIR [--repeat N]
                       [--fp16-ops] [--threads N]
      Run a function on the reference CPU backend. NAME defaults to the
      package's default function. Each --input is a .npy array, converted to
      the input's declared type (fp16 inputs accept fp32 files); an image input is a uint8 [H, W, C] array
      in the declared channel order. --state sets a state's starting value
      (zeros otherwise). Writes DIR/<output>.npy for every output (a string
      output, a classifier's label, as DIR/<output>.json holding a JSON
      string; a dictionary output, its probabilities, as DIR/<output>.json
      holding an object from key to value) and DIR/<state>.npy with every
      state's final value. --repeat N runs the
      prediction N times from the same inputs and state, and prints the load
      time and the median prediction time. --fp16-ops rounds every fp16
      value to fp16 after every op, as the GPU and the Neural Engine do, so
      fp16 overflow (inf, NaN) and precision loss show up as on a device.
      --threads N splits the prediction over N threads (default:
      RAYON_NUM_THREADS, else the cores available, at most 8); any count
      gives the same results.
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

impl From<coreml_multifunction_build::Error> for Failure {
    fn from(error: coreml_multifunction_build::Error) -> Self {
        Failure {
            message: error.to_string(),
            usage: false,
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
        "merge" => merge_command(&mut parser),
        "compare" => compare_command(&mut parser),
        "predict" => predict::command(&mut parser),
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
    let mut report = inspect::report(&package, &path.display().to_string())?;
    for function in &mut report.functions {
        function.reference_backend_missing_ops = Some(
            coreml_multifunction::runtime::reference_backend_missing_ops(&package, &function.name)?,
        );
    }
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

fn merge_command(parser: &mut lexopt::Parser) -> Result<(), Failure> {
    use lexopt::prelude::*;
    let mut descriptor = MultiFunctionDescriptor::new();
    let mut output: Option<PathBuf> = None;
    let mut any = false;
    // The flag that split each function, to refuse splitting one twice.
    let mut split: Vec<(String, String)> = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('o') | Long("output") => output = Some(parser.value()?.into()),
            Long("function") | Short('f') => {
                let spec = parser.value()?.string()?;
                let (package, source, target) = parse_function_spec(&spec)?;
                descriptor.add_function_from(package, source, target);
                any = true;
            }
            Long("all") => {
                descriptor.add_all_functions(PathBuf::from(parser.value()?));
                any = true;
            }
            Long("default") => {
                descriptor.default_function(parser.value()?.string()?);
            }
            Long("shape") => {
                let spec = parser.value()?.string()?;
                let (target, input, shape) = parse_shape_spec(&spec)?;
                descriptor.fixed_shape(target, input, shape);
            }
            Long(flag @ ("chunks" | "max-chunk-bytes")) => {
                let flag = format!("--{flag}");
                let spec = parser.value()?.string()?;
                let (target, chunks) = parse_chunks_spec(&flag, &spec)?;
                if let Some((_, first)) = split.iter().find(|(t, _)| t == &target) {
                    return Err(Failure::usage(format!(
                        "{flag} {spec:?} splits function {target:?} again (after {first}); give \
                         one --chunks or --max-chunk-bytes per function"
                    )));
                }
                split.push((target.clone(), format!("{flag} {spec}")));
                descriptor.chunks(target, chunks);
            }
            other => return Err(other.unexpected().into()),
        }
    }
    let output = output.ok_or_else(|| Failure::usage("merge needs -o OUT.mlpackage"))?;
    if !any {
        return Err(Failure::usage(
            "merge needs at least one --function PKG[:SRC]=TARGET",
        ));
    }
    let report = descriptor.merge(&output)?;
    let mut text = format!(
        "merged {} functions into {} (default {}, specification version {}, {})\n",
        report.functions.len(),
        report.destination.display(),
        report.default_function,
        report.specification_version,
        report.opset
    );
    let width = report
        .functions
        .iter()
        .map(|f| f.target.len())
        .max()
        .unwrap_or(0);
    for function in &report.functions {
        text += &format!(
            "  {:width$}  <- {} ({})",
            function.target,
            function.package.display(),
            function.source_function
        );
        let fixed: Vec<String> = function
            .fixed_shapes
            .iter()
            .map(|(input, shape)| format!("{input} {shape:?}"))
            .collect();
        if !fixed.is_empty() {
            text += &format!(", fixed shape: {}", fixed.join(", "));
        }
        text += &format!("; {} of weights", Bytes(function.weight_bytes));
        text += &chunks_text(function);
        text.push('\n');
    }
    text += &format!(
        "weights: {} references, {} unique blobs, {} stored, {} shared instead of stored again\n",
        report.weight_references,
        report.unique_blobs,
        Bytes(report.blob_bytes),
        Bytes(report.shared_bytes)
    );
    let separate = report.separate_bytes();
    let sources: Vec<String> = report
        .sources
        .iter()
        .map(|s| format!("{} {}", s.package.display(), Bytes(s.bytes)))
        .collect();
    text += &format!("sizes: {}\n", sources.join(", "));
    text += &format!(
        "  separately {}, merged {}",
        Bytes(separate),
        Bytes(report.merged_bytes)
    );
    if separate > report.merged_bytes {
        let saved = separate - report.merged_bytes;
        text += &format!(
            ", saved {} ({:.0}%)",
            Bytes(saved),
            saved as f64 * 100.0 / separate as f64
        );
    }
    text.push('\n');
    text += &format!(
        "  on disk: {} cloned from a source (no new space where the file system clones), {} written\n",
        Bytes(report.cloned_bytes),
        Bytes(report.written_bytes())
    );
    write_stdout(&text)
}

/// A split function's chunks, as the merge summary lists them: after the
/// function's line, one line per chunk with its weight bytes and the values
/// it takes from earlier chunks. Empty for a function merged whole.
fn chunks_text(function: &MergedFunction) -> String {
    if function.chunks.is_empty() {
        return String::new();
    }
    let count = function.chunks.len();
    let mut text = format!(
        ", split into {count} {}:",
        if count == 1 { "chunk" } else { "chunks" }
    );
    let width = function
        .chunks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for chunk in &function.chunks {
        text += &format!(
            "\n      {:width$}  {} of weights",
            chunk.name,
            Bytes(chunk.weight_bytes)
        );
        let crossing: Vec<String> = chunk
            .crossing_inputs
            .iter()
            .map(|value| {
                let bytes = value
                    .bytes
                    .map_or_else(String::new, |b| format!(", {}", Bytes(b)));
                format!(
                    "{} ({}{bytes}) from chunk {}",
                    value.name, value.type_text, value.from_chunk
                )
            })
            .collect();
        if !crossing.is_empty() {
            text += &format!("; takes {}", crossing.join(", "));
        }
    }
    text
}

/// Splits `TARGET=N` (`--chunks`) or `TARGET=SIZE` (`--max-chunk-bytes`).
/// The target is a function name, which holds no `=`.
fn parse_chunks_spec(flag: &str, spec: &str) -> Result<(String, Chunks), Failure> {
    let (form, example) = if flag == "--chunks" {
        ("TARGET=N", "--chunks decode=2")
    } else {
        ("TARGET=SIZE", "--max-chunk-bytes decode=900M")
    };
    let malformed = |why: &str| {
        Failure::usage(format!(
            "{flag} {spec:?} {why}; write {form}, such as {example}"
        ))
    };
    let (target, value) = spec
        .split_once('=')
        .ok_or_else(|| malformed("has no `=` after the function"))?;
    if target.is_empty() {
        return Err(malformed("names no function before `=`"));
    }
    if value.is_empty() {
        return Err(malformed(if flag == "--chunks" {
            "gives no number of chunks after `=`"
        } else {
            "gives no size after `=`"
        }));
    }
    let chunks = if flag == "--chunks" {
        match value.parse::<usize>() {
            Ok(count) if count >= 1 => Chunks::Count(count),
            _ => {
                return Err(malformed(&format!(
                    "has {value:?} as the number of chunks, which is not a whole number of at \
                     least 1"
                )))
            }
        }
    } else {
        match value.parse::<Bytes>() {
            Ok(Bytes(0)) => {
                return Err(malformed(
                    "gives a budget of 0 bytes, which fits no weights",
                ))
            }
            Ok(Bytes(bytes)) => Chunks::MaxBytes(bytes),
            Err(why) => return Err(malformed(&format!("has a size that does not read ({why})"))),
        }
    };
    Ok((target.to_string(), chunks))
}

/// Splits `PKG[:SRC]=TARGET`. The source function follows `.mlpackage:`,
/// so paths containing `:` elsewhere (Windows drives) still work.
fn parse_function_spec(spec: &str) -> Result<(PathBuf, String, String), Failure> {
    let (left, target) = spec
        .rsplit_once('=')
        .filter(|(left, target)| !left.is_empty() && !target.is_empty())
        .ok_or_else(|| {
            Failure::usage(format!(
                "--function {spec:?} is not of the form PKG[:SRC]=TARGET"
            ))
        })?;
    let (package, source) = match left.rsplit_once(".mlpackage:") {
        Some((stem, source)) if !source.is_empty() => {
            (format!("{stem}.mlpackage"), source.to_string())
        }
        _ => (left.to_string(), "main".to_string()),
    };
    Ok((PathBuf::from(package), source, target.to_string()))
}

/// Splits `TARGET:INPUT=D0xD1x...`. The target is a function name, which
/// holds no `:`; the shape holds no `=`; the input name is what is between.
fn parse_shape_spec(spec: &str) -> Result<(String, String, Vec<u64>), Failure> {
    let malformed = |why: &str| {
        Failure::usage(format!(
            "--shape {spec:?} {why}; write TARGET:INPUT=D0xD1x..., such as \
             --shape seq_8:input_ids=1x8"
        ))
    };
    let (left, dims) = spec
        .rsplit_once('=')
        .ok_or_else(|| malformed("has no `=` before the shape"))?;
    let (target, input) = left
        .split_once(':')
        .ok_or_else(|| malformed("has no `:` between the function and the input"))?;
    if target.is_empty() {
        return Err(malformed("names no function before `:`"));
    }
    if input.is_empty() {
        return Err(malformed("names no input between `:` and `=`"));
    }
    if dims.is_empty() {
        return Err(malformed("gives no shape after `=`"));
    }
    let mut shape = Vec::new();
    for (index, dim) in dims.split('x').enumerate() {
        match dim.parse::<u64>() {
            Ok(size) if size >= 1 => shape.push(size),
            _ => {
                return Err(malformed(&format!(
                    "has {dim:?} as dimension {index}, which is not a size (a whole number, at \
                     least 1)"
                )))
            }
        }
    }
    Ok((target.to_string(), input.to_string(), shape))
}

fn compare_command(parser: &mut lexopt::Parser) -> Result<(), Failure> {
    use lexopt::prelude::*;
    let mut options = CompareOptions::default();
    let mut paths: Vec<PathBuf> = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("ignore-metadata") => options.metadata = false,
            Long("ignore-program-attributes") => options.program_attributes = false,
            Long("ignore-spec-version") => options.specification_version = false,
            Long("ignore-op-names") => options.op_names = false,
            Value(value) if paths.len() < 2 => paths.push(value.into()),
            other => return Err(other.unexpected().into()),
        }
    }
    let [left, right] = <[PathBuf; 2]>::try_from(paths)
        .map_err(|_| Failure::usage("compare needs LEFT and RIGHT packages"))?;
    let comparison = compare::compare(&Package::open(&left)?, &Package::open(&right)?, options)?;
    let mut text = String::new();
    for difference in &comparison.differences {
        text += &format!("differs: {difference}\n");
    }
    text += &format!(
        "weights: {} blobs, {} in {}; {} blobs, {} in {}\n",
        comparison.left_weights.blobs,
        Bytes(comparison.left_weights.bytes),
        left.display(),
        comparison.right_weights.blobs,
        Bytes(comparison.right_weights.bytes),
        right.display()
    );
    write_stdout(&text)?;
    if comparison.is_equal() {
        write_stdout("semantically equal\n")
    } else {
        Err(Failure {
            message: format!(
                "the packages differ in {} places",
                comparison.differences.len()
            ),
            usage: false,
        })
    }
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

mod predict;
