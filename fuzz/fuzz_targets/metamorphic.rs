#![no_main]

// The metamorphic oracle of the `metamorphic` test (one person vs nobody),
// on templates chosen by the fuzzer's bytes (a seed and a template index).
#[allow(dead_code)]
#[path = "../../tests/rust/metamorphic.rs"]
mod metamorphic;

libfuzzer_sys::fuzz_target!(|data: &[u8]| metamorphic::fuzz_one(data));
