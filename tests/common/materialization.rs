//! A materialization scenario as a merge, for the test crates that depend
//! on the build crate (the build crate's and the CLI's; `mod.rs` serves the
//! format crate too, which cannot).

use coreml_multifunction_build::merge::MultiFunctionDescriptor;

use crate::common::Materialization;

/// The scenario's merge: the flexible source as `main` (the default),
/// then every fixed-shape target.
pub fn descriptor(scenario: &Materialization) -> MultiFunctionDescriptor {
    let mut descriptor = MultiFunctionDescriptor::new();
    descriptor.add_function_from(&scenario.source, &scenario.function, "main");
    for target in &scenario.targets {
        descriptor.add_function_from(&scenario.source, &scenario.function, &target.name);
        for (input, shape) in &target.shapes {
            descriptor.fixed_shape(&target.name, input, shape.clone());
        }
    }
    descriptor.default_function("main");
    descriptor
}
