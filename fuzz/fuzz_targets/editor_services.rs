#![no_main]

// The bodies of all targets are shared with the `fuzz_corpora` test; each
// target uses one of them.
#[allow(dead_code)]
#[path = "../../tests/rust/fuzz_bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::editor_services(data));
