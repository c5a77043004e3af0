//! The LoRA story of coremltools' multifunction guide, in Rust.
//!
//! Three fine-tuned adapters of one base model were converted to Core ML
//! separately (`models/adapter_*.mlpackage`). `build.rs` merged them, at
//! build time, into one multifunction model whose base weights are stored
//! once; `include_models!()` brought in a typed struct per adapter. This
//! program runs each adapter on the same input and prints what sharing the
//! base saved.

use std::path::Path;
use std::time::Instant;

use coreml_multifunction::half::f16;
use coreml_multifunction::package::{directory_size, Package};
use coreml_multifunction::runtime::{Configuration, Tensor};

coreml_multifunction::include_models!();

/// The same input for every adapter: a fixed ramp.
fn input() -> Result<Tensor<f16>, coreml_multifunction::runtime::Error> {
    let shape = combined::Adapter1Input::INPUT_ADAPTER_1_SHAPE;
    let count: usize = shape.iter().product();
    let values = (0..count)
        .map(|i| f16::from_f32((i as f32 / count as f32) - 0.5))
        .collect::<Vec<_>>();
    Tensor::new(shape, values)
}

/// A size in KiB, as the report prints it (the adapters are small).
fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// A one-line summary of an output: its first values and its norm.
fn summary(output: &Tensor<f16>) -> String {
    let values: Vec<f32> = output.as_slice().iter().map(|v| v.to_f32()).collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    let head: Vec<String> = values.iter().take(4).map(|v| format!("{v:+.3}")).collect();
    format!("y[0..4] = [{}]  |y| = {norm:.3}", head.join(", "))
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let configuration = Configuration::default();
    println!(
        "coreml-multifunction example: three LoRA adapters of one base, merged into one model"
    );
    println!(
        "running on the {} ({})\n",
        configuration.backend.name(),
        if cfg!(target_vendor = "apple") {
            "Core ML on this Apple platform"
        } else {
            "Core ML is Apple-only; the same generated code runs the reference CPU backend here"
        }
    );

    let x = input()?;
    let start = Instant::now();
    let adapter_1 = combined::Adapter1::load_with(&configuration)?;
    let y1 = adapter_1
        .predict(&combined::Adapter1Input {
            input_adapter_1: x.clone(),
        })?
        .out_adapter_1;
    let adapter_2 = combined::Adapter2::load_with(&configuration)?;
    let y2 = adapter_2
        .predict(&combined::Adapter2Input {
            input_adapter_2: x.clone(),
        })?
        .out_adapter_2;
    let adapter_3 = combined::Adapter3::load_with(&configuration)?;
    let y3 = adapter_3
        .predict(&combined::Adapter3Input { input_adapter_3: x })?
        .out_adapter_3;
    let elapsed = start.elapsed();
    for (function, output) in [
        (combined::Function::Adapter1, &y1),
        (combined::Function::Adapter2, &y2),
        (combined::Function::Adapter3, &y3),
    ] {
        let default = if function == combined::Function::DEFAULT {
            " (default)"
        } else {
            ""
        };
        println!(
            "{:<22} {}",
            format!("{}{default}", function.name()),
            summary(output)
        );
    }
    println!(
        "three functions loaded and run in {:.1} ms\n",
        elapsed.as_secs_f64() * 1e3
    );

    // The merge report, like the size table of coremltools' guide.
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let merged = Path::new(combined::PACKAGE);
    println!("{:<36} {:>12} {:>8}", "package", "size", "blobs");
    let mut separately = 0;
    for index in 1..=3 {
        let source = models.join(format!("adapter_{index}.mlpackage"));
        let size = directory_size(&source)?;
        separately += size;
        let blobs = Package::open(&source)?.weight_stats()?.blobs;
        println!(
            "{:<36} {:>12} {:>8}",
            format!("models/adapter_{index}.mlpackage"),
            kib(size),
            blobs
        );
    }
    let merged_size = directory_size(merged)?;
    let merged_blobs = Package::open(merged)?.weight_stats()?.blobs;
    println!(
        "{:<36} {:>12}",
        "the three, shipped separately",
        kib(separately)
    );
    println!(
        "{:<36} {:>12} {:>8}",
        "combined.mlpackage (merged)",
        kib(merged_size),
        merged_blobs
    );
    let saved = separately.saturating_sub(merged_size);
    println!(
        "{:<36} {:>12} {:>7.0}%",
        "saved by sharing the base weights",
        kib(saved),
        saved as f64 * 100.0 / separately as f64
    );
    Ok(())
}
