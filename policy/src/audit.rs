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
//!
//! Lines are bounded: a statement over [`MAX_STATEMENT_BYTES`], or a user or
//! session name over [`MAX_NAME_BYTES`], is not stored; the line holds
//! `"<N bytes not stored; sha256 HEX>"` in its place and lists the field in
//! `not_stored`, so what was sent can still be matched against the log, and no
//! line exceeds [`MAX_LINE_BYTES`]. Appending reads only the last line's
//! `seq` and `hash`, streaming (memory does not grow with the log or with a
//! long last line written by an older version).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The longest statement text an audit line stores whole (256 KiB, the cell cap
/// `safe_data_lang::parse::MAX_CELL_BYTES`: every statement of a cell that parses fits).
pub const MAX_STATEMENT_BYTES: usize = safe_data_lang::parse::MAX_CELL_BYTES;

/// The longest user or session name an audit line stores whole (1 KiB).
pub const MAX_NAME_BYTES: usize = 1024;

/// The longest audit line written (2 MiB): a statement of [`MAX_STATEMENT_BYTES`]
/// whose every byte JSON escapes as `\u00XX` takes 1.5 MiB. A line that would be
/// longer anyway stores the statement's digest instead.
pub const MAX_LINE_BYTES: usize = 2 << 20;

/// What a field over its cap is stored as: `<N bytes not stored; sha256 HEX>`
/// (the digest of the text's UTF-8 bytes); text within `cap` bytes is returned as is.
pub fn stored_text(text: &str, cap: usize) -> Cow<'_, str> {
    if text.len() <= cap { Cow::Borrowed(text) } else { Cow::Owned(digest_placeholder(text)) }
}

/// `<N bytes not stored; sha256 HEX>` for `text`.
pub fn digest_placeholder(text: &str) -> String {
    format!("<{} bytes not stored; sha256 {}>", text.len(), hex::encode(Sha256::digest(text.as_bytes())))
}

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

    /// Appends one entry and syncs it to disk. Fields over their caps are stored
    /// as digests (see the module documentation).
    pub fn append(&self, entry: &Entry) -> std::io::Result<()> {
        self.append_capped(entry, CAPS)
    }

    fn append_capped(&self, entry: &Entry, caps: Caps) -> std::io::Result<()> {
        // Capped and digested before the lock: hashing a long refused cell delays no other writer.
        let fields = capped_fields(entry, caps)?;
        let mut file = OpenOptions::new().read(true).append(true).open(&self.path)?;
        file.lock()?;
        let result = (|| {
            let (seq, prev) = last_link(&mut file)?;
            let mut body = fields.clone();
            let mut line = chained_line(&mut body, seq + 1, &prev)?;
            if line.len() > caps.line {
                // Only JSON escaping can get here (each capped field is far below the line cap).
                let statement = body.get("statement").and_then(Value::as_str).unwrap_or("");
                body.insert("statement".into(), Value::from(digest_placeholder(statement)));
                mark_not_stored(&mut body, "statement");
                line = chained_line(&mut body, seq + 1, &prev)?;
            }
            file.write_all(&line)?;
            file.sync_data()?;
            let hash = body.get("hash").and_then(Value::as_str).unwrap_or_default().to_string();
            write_head(&self.path, seq + 1, &hash)
        })();
        let _ = file.unlock();
        result
    }
}

/// The caps applied to an entry before it is written (tests lift them to write an old-style line).
#[derive(Debug, Clone, Copy)]
struct Caps {
    statement: usize,
    name: usize,
    line: usize,
}

const CAPS: Caps = Caps { statement: MAX_STATEMENT_BYTES, name: MAX_NAME_BYTES, line: MAX_LINE_BYTES };

/// The entry as a JSON object, each text field over its cap replaced by its digest.
fn capped_fields(entry: &Entry, caps: Caps) -> std::io::Result<Map<String, Value>> {
    let mut body = match serde_json::to_value(entry)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (field, cap) in [("statement", caps.statement), ("user", caps.name), ("session", caps.name)] {
        let Some(Value::String(text)) = body.get(field) else { continue };
        if text.len() > cap {
            let digest = digest_placeholder(text);
            body.insert(field.into(), Value::from(digest));
            mark_not_stored(&mut body, field);
        }
    }
    Ok(body)
}

/// Lists `field` in the line's `not_stored` array (absent when every field is stored whole), so a
/// placeholder the kernel wrote is told apart from a statement that merely looks like one.
fn mark_not_stored(body: &mut Map<String, Value>, field: &str) {
    let list = body.entry("not_stored").or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(fields) = list
        && !fields.iter().any(|f| f == field)
    {
        fields.push(Value::from(field));
    }
}

/// Adds `seq`, `prev` and `hash` to `body` and returns the line to write (newline included).
fn chained_line(body: &mut Map<String, Value>, seq: u64, prev: &str) -> std::io::Result<Vec<u8>> {
    body.remove("hash");
    body.insert("seq".into(), Value::from(seq));
    body.insert("prev".into(), Value::from(prev));
    let hash = line_hash(prev, body);
    body.insert("hash".into(), Value::from(hash));
    let mut line = serde_json::to_vec(body)?;
    line.push(b'\n');
    Ok(line)
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
///
/// Memory stays bounded whatever the last line's length (an older version wrote lines as long as
/// a refused cell): the start of the line is found by scanning back in fixed chunks, and the line
/// is then streamed through a parser that keeps `seq` and `hash` and skips every other value.
fn last_link(file: &mut File) -> std::io::Result<(u64, String)> {
    const CHUNK: u64 = 64 * 1024;
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, GENESIS.to_string()));
    }
    let mut chunk = vec![0u8; CHUNK as usize];
    // `end`: just after the last byte that is not white space; `start`: just after the newline before it.
    let (mut end, mut start) = (None, 0);
    let mut pos = len;
    'scan: while pos > 0 {
        let from = pos.saturating_sub(CHUNK);
        let part = &mut chunk[..(pos - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(part)?;
        for (i, byte) in part.iter().enumerate().rev() {
            let at = from + i as u64;
            match end {
                None if !byte.is_ascii_whitespace() => end = Some(at + 1),
                Some(_) if *byte == b'\n' => {
                    start = at + 1;
                    break 'scan;
                }
                _ => {}
            }
        }
        pos = from;
    }
    let not_json = || std::io::Error::other("the last audit line is not valid JSON");
    let end = end.ok_or_else(not_json)?;
    file.seek(SeekFrom::Start(start))?;
    let reader = BufReader::new(Read::by_ref(file).take(end - start));
    let link: Link = serde_json::from_reader(reader).map_err(|e| match e.classify() {
        serde_json::error::Category::Io => std::io::Error::other("cannot read the last audit line"),
        serde_json::error::Category::Data => std::io::Error::other("the last audit line has no seq or no hash"),
        _ => not_json(),
    })?;
    Ok((link.seq, link.hash))
}

/// The two fields of a line that the next line links to; the others are skipped unread.
#[derive(Deserialize)]
struct Link {
    seq: u64,
    hash: String,
}

/// A break in the chain, naming the first line that is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// 1-based line number in the file.
    pub line: usize,
    pub reason: String,
}

/// Checks the whole chain; `Ok(n)` is the number of lines verified. Holds one line at a time: at
/// most [`MAX_LINE_BYTES`] for lines this version writes (a log from an older version may have
/// lines as long as a refused cell, which it reads whole).
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

    fn last_record(log: &AuditLog) -> Map<String, Value> {
        let text = std::fs::read_to_string(log.path()).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    }

    #[test]
    fn oversized_statement_is_stored_as_its_digest() {
        // Issue 20, finding 9: a refused cell was written whole (40 MB per line, 5 cells 200 MB).
        let (log, _) = log_with(1, "oversized");
        let cell = format!("SELECT '{}'", "x".repeat(MAX_STATEMENT_BYTES));
        let mut e = entry(1);
        e.statement = cell.clone();
        log.append(&e).unwrap();
        log.append(&entry(2)).unwrap();
        let size = std::fs::metadata(log.path()).unwrap().len();
        assert!(size < 4096, "the audit log holds {size} bytes: the refused cell was stored whole");
        let text = std::fs::read_to_string(log.path()).unwrap();
        let line: Map<String, Value> = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
        let digest = hex::encode(Sha256::digest(cell.as_bytes()));
        assert_eq!(line["statement"], Value::from(format!("<{} bytes not stored; sha256 {digest}>", cell.len())));
        assert_eq!(line["not_stored"], serde_json::json!(["statement"]));
        // A statement within the cap is stored whole and unmarked.
        assert_eq!(last_record(&log)["statement"], "SELECT 2");
        assert!(!last_record(&log).contains_key("not_stored"));
        assert_eq!(verify(log.path()).unwrap(), Ok(3));
        // The largest statement a cell can hold is still stored whole.
        let mut e = entry(3);
        e.statement = "y".repeat(MAX_STATEMENT_BYTES);
        log.append(&e).unwrap();
        assert_eq!(last_record(&log)["statement"].as_str().map(str::len), Some(MAX_STATEMENT_BYTES));
        assert_eq!(verify(log.path()).unwrap(), Ok(4));
    }

    #[test]
    fn oversized_names_are_stored_as_digests() {
        let (log, _) = log_with(0, "names");
        let mut e = entry(1);
        e.user = "u".repeat(MAX_NAME_BYTES + 1);
        e.session = "s".repeat(100_000);
        log.append(&e).unwrap();
        let line = last_record(&log);
        assert!(line["user"].as_str().unwrap().starts_with(&format!("<{} bytes not stored; sha256 ", MAX_NAME_BYTES + 1)));
        assert!(line["session"].as_str().unwrap().starts_with("<100000 bytes not stored; sha256 "));
        assert_eq!(line["not_stored"], serde_json::json!(["user", "session"]));
        assert_eq!(verify(log.path()).unwrap(), Ok(1));
    }

    #[test]
    fn a_line_never_exceeds_the_line_cap() {
        // JSON escapes a control character as six bytes: with the caps lowered, a statement within
        // its cap still makes too long a line, and is stored as its digest.
        let (log, _) = log_with(1, "linecap");
        let caps = Caps { statement: 1_000, name: 100, line: 2_000 };
        let mut e = entry(1);
        e.statement = "\u{1}".repeat(900);
        log.append_capped(&e, caps).unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.lines().all(|l| l.len() <= caps.line), "a line over the cap");
        assert!(last_record(&log)["statement"].as_str().unwrap().starts_with("<900 bytes not stored; sha256 "));
        assert_eq!(last_record(&log)["not_stored"], serde_json::json!(["statement"]));
        assert_eq!(verify(log.path()).unwrap(), Ok(2));
    }

    #[test]
    fn a_long_last_line_of_an_older_log_is_followed() {
        // Older versions stored whole cells: the next append finds the link of a last line far longer
        // than the scan chunk (and than any line written now), multi-byte characters across chunk edges.
        let (log, _) = log_with(1, "legacy");
        let unlimited = Caps { statement: usize::MAX, name: usize::MAX, line: usize::MAX };
        let mut e = entry(1);
        e.statement = format!("SELECT '{}'", "é".repeat(3 << 20));
        log.append_capped(&e, unlimited).unwrap();
        log.append(&entry(2)).unwrap();
        assert_eq!(last_record(&log)["seq"], 3);
        assert_eq!(verify(log.path()).unwrap(), Ok(3));
    }

    #[test]
    fn a_last_line_without_a_link_is_an_error() {
        let (log, _) = log_with(1, "nolink");
        std::fs::OpenOptions::new().append(true).open(log.path()).unwrap().write_all(b"{\"seq\": 2}\n").unwrap();
        let err = log.append(&entry(2)).unwrap_err();
        assert!(err.to_string().contains("no seq or no hash"), "{err}");
        std::fs::OpenOptions::new().append(true).open(log.path()).unwrap().write_all(b"{\"seq\": \n").unwrap();
        assert!(log.append(&entry(2)).unwrap_err().to_string().contains("not valid JSON"));
    }
}
