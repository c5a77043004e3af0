//! Fixed-shape functions run on the reference backend: each computes what
//! torch computes at its shape, and what its flexible source computes
//! there, for every scenario of `tests/fixtures/materializations.json`
//! (stateful ones across steps sharing one state).

#[path = "../../tests/common/mod.rs"]
mod common;

#[path = "../../tests/common/fixture_io.rs"]
mod fixture_io;

use std::path::{Path, PathBuf};

use coreml_multifunction::runtime::{Backend, Configuration, Features, Function};
use coreml_multifunction_build::merge::MultiFunctionDescriptor;

use common::{materializations, Materialization};
use fixture_io::{assert_close, inputs, steps, tolerance, values};

fn load(package: &Path, function: &str) -> Function {
    Function::load(
        package,
        function,
        &Configuration::with_backend(Backend::Reference),
    )
    .unwrap_or_else(|e| panic!("{} {function}: {e}", package.display()))
}

/// Our merge of a scenario: the flexible source as `main`, then every
/// fixed-shape target.
fn merged(scenario: &Materialization, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{}.mlpackage", scenario.name));
    let mut descriptor = MultiFunctionDescriptor::new();
    descriptor.add_function_from(&scenario.source, &scenario.function, "main");
    for target in &scenario.targets {
        descriptor.add_function_from(&scenario.source, &scenario.function, &target.name);
        for (input, shape) in &target.shapes {
            descriptor.fixed_shape(&target.name, input, shape.clone());
        }
    }
    descriptor.default_function("main");
    descriptor.merge(&out).unwrap();
    out
}

/// Runs `function` over the steps of `io`, one state across them when it
/// has states.
fn run(function: &Function, io: &str) -> Vec<Features> {
    let mut state =
        (!function.description().state.is_empty()).then(|| function.new_state().unwrap());
    steps(io)
        .iter()
        .map(|step| {
            let features = inputs(function.description(), step);
            match &mut state {
                Some(state) => function.predict_with_state(&features, state).unwrap(),
                None => function.predict(&features).unwrap(),
            }
        })
        .collect()
}

#[test]
fn fixed_shape_functions_reproduce_torch_and_their_flexible_source() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for scenario in materializations() {
        let package = merged(&scenario, dir.path());
        let flexible = load(&package, "main");
        for target in &scenario.targets {
            let fixed = load(&package, &target.name);
            let tolerance = tolerance(&scenario.name);
            let ours = run(&fixed, &target.io);
            let source = run(&flexible, &target.io);
            for ((step, got), from_source) in steps(&target.io).iter().zip(&ours).zip(&source) {
                for (name, want) in &step.outputs {
                    let what = format!("{} {} {name}", scenario.name, target.name);
                    let (shape, values_got) = values(&got[name]);
                    // The declared shape is what comes out.
                    let declared = fixture_io::declared_shape(fixed.description(), name);
                    assert_eq!(Some(shape.clone()), declared, "{what}: shape");
                    let worst = assert_close(&what, (&shape, &values_got), want, tolerance);
                    eprintln!("{what}: max error against torch {worst:.2e}");
                    // Folding shape arithmetic changes no number: the fixed
                    // function computes what the flexible one does.
                    let (source_shape, source_values) = values(&from_source[name]);
                    assert_eq!(source_shape, shape, "{what}: the flexible source's shape");
                    assert_eq!(
                        source_values, values_got,
                        "{what}: differs from the flexible source"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 12, "only {checked} outputs checked");
}
