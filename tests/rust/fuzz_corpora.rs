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
