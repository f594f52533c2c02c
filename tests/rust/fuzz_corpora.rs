//! Replays the committed fuzz inputs under a normal `cargo test`: every file
//! of `fuzz/corpus/<target>/` (the seeds and the inputs `cargo fuzz` kept for
//! their coverage) and of `fuzz/artifacts/<target>/` (crashes found and
//! committed, until they are fixed) goes through the same body the fuzz
//! target runs (`fuzz_bodies.rs`). A test fails if any input panics, and
//! lists them all.

#[allow(dead_code)]
mod fuzz_bodies;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Regular files directly in `dir` (none if it does not exist), sorted.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) => vec![],
    };
    files.sort();
    files
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "(non-text panic)".into())
}

fn replay(target: &str, body: fn(&[u8]), min_corpus: usize) {
    let corpus = inputs(&fuzz_dir().join("corpus").join(target));
    assert!(corpus.len() >= min_corpus, "fuzz/corpus/{target} has {} inputs, expected at least {min_corpus}", corpus.len());
    let artifacts = inputs(&fuzz_dir().join("artifacts").join(target));
    let mut failures = Vec::new();
    for path in corpus.iter().chain(&artifacts) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| body(&data))) {
            failures.push(format!("{}:\n{}", path.display(), panic_message(payload.as_ref())));
        }
    }
    eprintln!("{target}: {} corpus inputs, {} artifacts replayed", corpus.len(), artifacts.len());
    if !failures.is_empty() {
        panic!(
            "{} of {} inputs of `{target}` panic (reproduce with `cargo +nightly fuzz run {target} <file>` in fuzz/):\n\n{}",
            failures.len(),
            corpus.len() + artifacts.len(),
            failures.join("\n\n")
        );
    }
}

#[test]
fn sql_check_corpus() {
    replay("sql_check", fuzz_bodies::sql_check, 50);
}

#[test]
fn config_corpus() {
    replay("config", fuzz_bodies::config, 5);
}

#[test]
fn wire_frames_corpus() {
    replay("wire_frames", fuzz_bodies::wire_frames, 5);
}

#[test]
fn editor_services_corpus() {
    replay("editor_services", fuzz_bodies::editor_services, 10);
}

#[test]
fn history_glob_corpus() {
    replay("history_glob", fuzz_bodies::history_glob, 10);
}

#[test]
fn history_request_corpus() {
    replay("history_request", fuzz_bodies::history_request, 10);
}

#[test]
fn editor_cells_are_built_as_documented() {
    let cell = |data: &[u8]| fuzz_bodies::editor_cell(data).expect("UTF-8 pieces");
    assert_eq!(cell(b""), (String::new(), 0));
    assert_eq!(cell(b"\x02\x05\x00(\xff1\xff)"), ("((((1))))".to_string(), 5));
    assert_eq!(cell(b"\x00\x00\x00SELECT 1"), ("SELECT 1".to_string(), 0));
    assert_eq!(cell(b"\x00\x03\x00\xffSELECT 1"), ("SELECT 1".to_string(), 3));
    // Repetition stops one byte past the cell cap...
    let max = safe_data_lang::parse::MAX_CELL_BYTES;
    assert_eq!(cell(b"\x0f\x00\x00abcdefghi").0.len(), max + 1);
    // ... at a character boundary, and so does the cursor.
    let (long, cursor) = cell(b"\x0f\xff\xffe\xcc\x81e\xcc\x81e\xcc\x81");
    assert!(long.len() <= max + 1 && long.len() + 3 > max + 1, "{}", long.len());
    assert!(long.is_char_boundary(cursor));
    assert_eq!(fuzz_bodies::editor_cell(b"\x00\x00\x00\xc3"), None);
}

#[test]
fn the_glob_reference_matches_by_hand() {
    for (pattern, text, expected) in [
        ("", "", true),
        ("", "a", false),
        ("*", "", true),
        ("a*b?c", "axxbyc", true),
        ("a*b?c", "axxbc", false),
        ("*a*a*b", "aaaaaaab", true),
        ("*a*a*b", "aaaaaaa", false),
        ("é?", "éü", true),
    ] {
        assert_eq!(fuzz_bodies::glob_reference(pattern, text), expected, "{pattern:?} {text:?}");
    }
}
