fn main() {
    coreml_multifunction_build::build().unwrap();
}
