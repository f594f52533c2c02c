//! The audit log: one JSON line per request in `state_dir/audit.jsonl`,
//! hash-chained so that any edit, removal, insertion or reordering is found
//! by [`verify`].
//!
//! Each line has `seq`, the request fields, `prev` (the previous line's
//! hash) and `hash` = SHA-256(prev ‖ canonical JSON of the line without
//! `hash`). Writers take an exclusive file lock, so several kernels can share
//! one log. A line is written and synced before its result is released.
//! `audit.head` holds the last line's `seq` and `hash`, so removing lines
//! from the end of the log is detected too.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The request fields of one audit line.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub time: String,
    pub user: String,
    pub session: String,
    pub statement: String,
    pub plan_hash: Option<String>,
    pub verdict: crate::release::Verdict,
    pub rule: Option<String>,
    pub rows_released: usize,
}

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
}

fn line_hash(prev: &str, body: &Map<String, Value>) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    // serde_json's Map is ordered by key (no preserve_order feature): canonical.
    h.update(serde_json::to_vec(body).unwrap_or_default());
    hex::encode(h.finalize())
}

impl AuditLog {
    /// Opens (creating if needed) the log in `state_dir`.
    pub fn open(state_dir: &Path) -> std::io::Result<AuditLog> {
        std::fs::create_dir_all(state_dir)?;
        let path = state_dir.join("audit.jsonl");
        OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(AuditLog { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry and syncs it to disk.
    pub fn append(&self, entry: &Entry) -> std::io::Result<()> {
        let mut file = OpenOptions::new().read(true).append(true).open(&self.path)?;
        file.lock()?;
        let result = (|| {
            let (seq, prev) = last_link(&mut file)?;
            let mut body = match serde_json::to_value(entry)? {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            body.insert("seq".into(), Value::from(seq + 1));
            body.insert("prev".into(), Value::from(prev.clone()));
            let hash = line_hash(&prev, &body);
            body.insert("hash".into(), Value::from(hash.clone()));
            let mut line = serde_json::to_vec(&body)?;
            line.push(b'\n');
            file.write_all(&line)?;
            file.sync_data()?;
            write_head(&self.path, seq + 1, &hash)
        })();
        let _ = file.unlock();
        result
    }
}

fn head_path(log: &Path) -> PathBuf {
    log.with_extension("head")
}

/// Records the last line's link (temp file + rename, so it is never half written).
fn write_head(log: &Path, seq: u64, hash: &str) -> std::io::Result<()> {
    let head = head_path(log);
    let tmp = head.with_extension("head.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&serde_json::json!({"seq": seq, "hash": hash}))?)?;
    std::fs::rename(tmp, head)
}

/// The sequence number and hash of the last line (0 and the genesis hash for an empty log).
fn last_link(file: &mut File) -> std::io::Result<(u64, String)> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, GENESIS.to_string()));
    }
    // Read a growing tail until it holds the whole last line (a statement
    // may be as long as a cell, so a line can exceed any fixed window). Bytes,
    // not text: the window may start inside a multi-byte character.
    let mut window: u64 = 64 * 1024;
    let tail = loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.take(len - start).read_to_end(&mut tail)?;
        let body = tail.trim_ascii_end();
        if start == 0 || body.contains(&b'\n') {
            break tail;
        }
        window = window.saturating_mul(4);
    };
    let last = tail.split(|b| *b == b'\n').rev().find(|l| !l.trim_ascii().is_empty()).unwrap_or(b"");
    let v: Value = serde_json::from_slice(last).map_err(|_| std::io::Error::other("the last audit line is not valid JSON"))?;
    let seq = v.get("seq").and_then(Value::as_u64).ok_or_else(|| std::io::Error::other("the last audit line has no seq"))?;
    let hash = v.get("hash").and_then(Value::as_str).ok_or_else(|| std::io::Error::other("the last audit line has no hash"))?;
    Ok((seq, hash.to_string()))
}

/// A break in the chain, naming the first line that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// 1-based line number in the file.
    pub line: usize,
    pub reason: String,
}

/// Checks the whole chain; `Ok(n)` is the number of lines verified.
pub fn verify(path: &Path) -> std::io::Result<Result<usize, ChainBreak>> {
    let file = File::open(path)?;
    let mut prev = GENESIS.to_string();
    let mut count = 0;
    for (n, line) in (1usize..).zip(BufReader::new(file).lines()) {
        let line = line?;
        let expected_seq = n as u64;
        let broken = |reason: &str| Ok(Err(ChainBreak { line: n, reason: reason.to_string() }));
        let Ok(Value::Object(mut body)) = serde_json::from_str::<Value>(&line) else {
            return broken("is not a valid audit record (edited)");
        };
        let Some(Value::String(hash)) = body.remove("hash") else {
            return broken("has no hash (edited)");
        };
        let seq = body.get("seq").and_then(Value::as_u64);
        let line_prev = body.get("prev").and_then(Value::as_str).unwrap_or("").to_string();
        if line_hash(&line_prev, &body) != hash {
            return broken("was edited: its content does not match its hash");
        }
        if line_prev != prev {
            return broken(if seq.is_some_and(|s| s > expected_seq) {
                "does not follow the previous line: lines before it were removed"
            } else {
                "does not follow the previous line: lines were removed, inserted or reordered"
            });
        }
        if seq != Some(expected_seq) {
            return broken("has the wrong sequence number: lines were removed, inserted or reordered");
        }
        prev = hash;
        count += 1;
    }
    if let Ok(text) = std::fs::read_to_string(head_path(path)) {
        let head: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let seq = head.get("seq").and_then(Value::as_u64).unwrap_or(0) as usize;
        let hash = head.get("hash").and_then(Value::as_str).unwrap_or("");
        if seq != count || (count > 0 && hash != prev) {
            let line = count.min(seq) + 1;
            return Ok(Err(ChainBreak {
                line,
                reason: format!("is missing: the log ends at line {count} but {seq} records were written (lines were removed from the end)"),
            }));
        }
    }
    Ok(Ok(count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::Verdict;

    fn entry(i: usize) -> Entry {
        Entry {
            time: format!("2026-01-01T00:00:{i:02}Z"),
            user: "alice".into(),
            session: "s".into(),
            statement: format!("SELECT {i}"),
            plan_hash: None,
            verdict: Verdict::Released,
            rule: None,
            rows_released: i,
        }
    }

    fn log_with(n: usize, name: &str) -> (AuditLog, Vec<String>) {
        let dir = std::env::temp_dir().join(format!("sd-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = AuditLog::open(&dir).unwrap();
        for i in 0..n {
            log.append(&entry(i)).unwrap();
        }
        let lines = std::fs::read_to_string(log.path()).unwrap().lines().map(str::to_string).collect();
        (log, lines)
    }

    fn write(log: &AuditLog, lines: &[String]) {
        std::fs::write(log.path(), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn intact_chain_verifies() {
        let (log, _) = log_with(5, "intact");
        assert_eq!(verify(log.path()).unwrap(), Ok(5));
    }

    #[test]
    fn every_single_line_edit_is_found() {
        let (log, lines) = log_with(6, "edit");
        for i in 0..lines.len() {
            let mut edited = lines.clone();
            edited[i] = edited[i].replace("alice", "mallory");
            write(&log, &edited);
            assert_eq!(verify(log.path()).unwrap().unwrap_err().line, i + 1, "edit of line {}", i + 1);
        }
    }

    #[test]
    fn every_deletion_insertion_and_swap_is_found() {
        let (log, lines) = log_with(6, "reorder");
        for i in 0..lines.len() - 1 {
            let mut deleted = lines.clone();
            deleted.remove(i);
            write(&log, &deleted);
            assert_eq!(verify(log.path()).unwrap().unwrap_err().line, i + 1, "deletion of line {}", i + 1);

            let mut swapped = lines.clone();
            swapped.swap(i, i + 1);
            write(&log, &swapped);
            assert_eq!(verify(log.path()).unwrap().unwrap_err().line, i + 1, "swap at line {}", i + 1);

            let mut inserted = lines.clone();
            inserted.insert(i + 1, lines[i].clone());
            write(&log, &inserted);
            assert_eq!(verify(log.path()).unwrap().unwrap_err().line, i + 2, "insertion after line {}", i + 1);
        }
        // Removing lines from the end is caught by audit.head.
        let mut truncated = lines.clone();
        truncated.pop();
        write(&log, &truncated);
        assert_eq!(verify(log.path()).unwrap().unwrap_err().line, lines.len(), "removal of the last line");
    }

    #[test]
    fn long_and_multibyte_statements_keep_the_chain() {
        let (log, _) = log_with(1, "long");
        // Longer than the first read window, and a window edge inside 'é'.
        for len in [70_000, 300_000] {
            let mut e = entry(1);
            e.statement = format!("SELECT '{}'", "é".repeat(len));
            log.append(&e).unwrap();
            log.append(&entry(2)).unwrap();
        }
        assert_eq!(verify(log.path()).unwrap(), Ok(5));
    }
}
