fn main() {
    coreml_multifunction::build().unwrap();
}
