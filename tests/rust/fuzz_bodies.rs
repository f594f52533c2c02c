//! Bodies of the fuzz targets, shared by the `cargo fuzz` targets in `fuzz/`
//! and by the `fuzz_corpora` test, which replays the committed corpora under
//! a normal `cargo test`. Each body takes arbitrary bytes, drives one input
//! surface of the kernel, and panics only when an invariant is broken:
//!
//! - [`sql_check`]: SQL text → parse → bind → check → lower (in the mode the
//!   check decides; the plan is built, never executed), plus the editor
//!   services and the error snippets the kernel renders. No panic; no hidden
//!   column in a plan, an error text, an EXPLAIN or a completion; the hidden
//!   privacy unit only as the internal `__u<slot>`; a plan the check calls
//!   public never scans a protected table.
//! - [`config`]: TOML text → `Config::parse`. No panic; errors are clean.
//! - [`wire_frames`]: bytes split into multipart frames → `Message::decode`
//!   with an empty and a real key. No panic; with a key, nothing decodes
//!   without the right signature; a decoded message re-encodes to itself.
//! - [`editor_services`]: a cell built by repeating pieces of the input (the
//!   shape of hostile text: `CHART BAR ` × 300, `(` × n, `1 + ` × n) →
//!   `is_complete`, completion and inspection, as the kernel answers them on
//!   a tokio worker's 2 MiB stack. No panic, no stack overflow; no hidden
//!   column in a completion or an inspection; a cell called complete parses.
//! - [`history_glob`]: a pattern and a text → `history::glob_match`, which
//!   must agree with a reference matcher (dynamic programming).
//!
//! The fixtures are in `fuzz/fixtures`; see `fuzz/README.md`.

use bytes::Bytes;
use safe_data_kernel::history;
use safe_data_kernel::wire::{self, Message, Signer};
use safe_data_lang::config::Config;
use safe_data_lang::ir::Query;
use safe_data_lang::parse::{self, Statement};
use safe_data_lang::span::{Span, caret_snippet};
use safe_data_lang::{bind, chart, services};
use safe_data_policy::{Catalog, PLAN_INTERNAL_COLUMNS, PlanText, check};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------
// sql_check
// ---------------------------------------------------------------------------

/// Hidden columns of the fixture catalog (`fuzz/fixtures/safe-data.toml`),
/// lowercase. Each must never appear in anything the pipeline produces.
const HIDDEN: &[&str] = &["zqhid_ssn", "zqhid_name", "zqhid_note", "zqhid_ref"];
/// The hidden privacy unit of `visits`: read by the lowering only, aliased
/// to the internal `__u<slot>`.
const HIDDEN_UNIT: &str = "zqunit_pid";
/// Inputs containing these (any case) may legitimately echo a hidden name
/// (as an alias, a string literal, an unknown-column error): the leak checks
/// skip them. Substrings, so `'zqh' || 'id_ssn'` style inputs are excluded
/// too (the optimizer folds constants).
const HIDDEN_MARKERS: &[&str] = &["zq", "hid_", "unit_pid"];

/// The directory of the fuzz fixtures (from `fuzz/` or from `kernel/`).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fixtures")
}

struct SqlFixture {
    catalog: Catalog,
    /// `(table, cache file prefix)` of the protected tables: an IPC scan's
    /// source path in a plan starts with the prefix.
    protected_scans: Vec<(String, String)>,
}

fn sql_fixture() -> &'static SqlFixture {
    static FIXTURE: OnceLock<SqlFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = fixtures_dir();
        let path = dir.join("safe-data.toml");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut config = Config::parse(&path, &text).unwrap_or_else(|e| panic!("fixture config {}: {e}", path.display()));
        // One cache for every run; entries are keyed by source path, size and
        // mtime and written atomically, so parallel runs can share it.
        let state = std::env::temp_dir().join(format!("safe-data-fuzz-state-{}", whoami()));
        config.server.state_dir = state.clone();
        let catalog = Catalog::open(config).unwrap_or_else(|e| panic!("fixture catalog: {e}"));
        let cache = state.join("cache");
        let mut protected_scans = Vec::new();
        for t in catalog.tables() {
            // The leak checks read plan texts: a CSV table not cached as IPC
            // would be an in-memory DataFrame scan, whose plan lists the
            // source's column names (hidden ones included).
            let prefix = format!("{}-", t.name);
            let cached = std::fs::read_dir(&cache).map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(&prefix))).unwrap_or(false);
            assert!(cached, "table `{}` is not cached as IPC in {}; the fuzz fixture needs a writable temp dir", t.name, cache.display());
            if !t.public {
                protected_scans.push((t.name.clone(), cache.join(&prefix).display().to_string()));
            }
        }
        SqlFixture { catalog, protected_scans }
    })
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "user".into()).chars().filter(char::is_ascii_alphanumeric).collect()
}

/// Where a leak check looks, for the panic message.
struct Leak<'a> {
    cell: &'a str,
    /// False when the input itself spells (part of) a hidden name.
    armed: bool,
}

impl Leak<'_> {
    /// No hidden column name in `text` (case-insensitive); the hidden
    /// privacy unit too unless `unit_ok`.
    fn check(&self, what: &str, text: &str, unit_ok: bool) {
        if !self.armed {
            return;
        }
        let lower = text.to_ascii_lowercase();
        let names = HIDDEN.iter().copied().chain((!unit_ok).then_some(HIDDEN_UNIT));
        for name in names {
            assert!(!lower.contains(name), "hidden column `{name}` reached {what}\n--- input ---\n{}\n--- {what} ---\n{text}", self.cell);
        }
    }

    /// An unoptimized plan: the hidden unit appears only as `col("zqunit_pid").alias("__u..")`.
    fn check_plan(&self, what: &str, plan: &str) {
        self.check(what, plan, true);
        if !self.armed {
            return;
        }
        let lower = plan.to_ascii_lowercase();
        let allowed = format!("col(\"{HIDDEN_UNIT}\").alias(\"__u");
        for (at, _) in lower.match_indices(HIDDEN_UNIT) {
            let start = at.saturating_sub(5);
            assert!(
                lower[start..].starts_with(&allowed),
                "the hidden privacy unit `{HIDDEN_UNIT}` reached {what} other than as `__u<slot>`\n--- input ---\n{}\n--- {what} ---\n{plan}",
                self.cell
            );
        }
    }
}

/// An error as the kernel renders it: its text and the caret snippet of its
/// span in the cell.
fn render_error(leak: &Leak<'_>, stage: &str, message: String, span: Option<Span>) {
    let mut shown = message;
    if let Some(span) = span {
        shown.push('\n');
        shown.push_str(&caret_snippet(leak.cell, span));
    }
    // The snippet quotes the cell: an armed cell spells no hidden name.
    leak.check(&format!("a {stage} error"), &shown, false);
}

/// SQL text → parse → bind → check → lower, as `Policy::run` drives them
/// (the plan is built and inspected, not executed).
pub fn sql_check(data: &[u8]) {
    let Ok(cell) = std::str::from_utf8(data) else { return };
    let fx = sql_fixture();
    let lower_cell = cell.to_ascii_lowercase();
    let leak = Leak { cell, armed: !HIDDEN_MARKERS.iter().any(|m| lower_cell.contains(m)) };

    // The editor services see every keystroke.
    for cursor in [cell.len(), cell.len() / 2, data.first().map_or(0, |b| usize::from(*b))] {
        let completion = safe_data_policy::complete(&fx.catalog, cell, cursor);
        assert!(completion.start <= completion.end && completion.end <= cell.len(), "completion range out of the cell");
        leak.check("a completion", &completion.matches.join("\n"), false);
        if let Some(text) = safe_data_policy::inspect(&fx.catalog, cell, cursor) {
            leak.check("an inspection", &text, false);
        }
    }
    let _ = services::is_complete(cell);

    let statements = match parse::parse_cell(cell) {
        Ok(s) => s,
        Err(e) => return render_error(&leak, "parse", e.to_string(), e.span()),
    };
    for parsed in &statements {
        let shifted = |e: safe_data_policy::Error| e.shifted(parsed.offset);
        let outcome = match &parsed.statement {
            Statement::ShowTables => Ok(()),
            Statement::Describe { table, .. } => {
                if let Some(t) = fx.catalog.table(table) {
                    leak.check("DESCRIBE", &services::describe_table(t, &check::allowed_aggregates), false);
                }
                Ok(())
            }
            Statement::Query(q) | Statement::Explain(q) => {
                bind::bind_query(&fx.catalog, &parsed.text, q).map_err(safe_data_policy::Error::from).and_then(|query| run_bound(fx, &leak, &query))
            }
            Statement::Chart { spec, query: q, text } => bind::bind_query(&fx.catalog, text, q).map_err(safe_data_policy::Error::from).and_then(|query| {
                if spec.kind == chart::ChartKind::Histogram {
                    // The bins are a rewrite of the bound query, checked and lowered like typed SQL.
                    let (binned, drawn) = chart::histogram_query(spec, &query)?;
                    leak.check("a histogram query", &binned.to_string(), false);
                    leak.check("a chart", &format!("{drawn:?}"), false);
                    return run_bound(fx, &leak, &binned).map_err(|e| e.respanned(Some(query.span)));
                }
                let columns: Vec<_> = query.output().into_iter().map(|f| (f.name, f.ty)).collect();
                let drawn = chart::resolve(spec, &columns)?;
                leak.check("a chart", &format!("{drawn:?}"), false);
                run_bound(fx, &leak, &query)
            }),
        };
        if let Err(e) = outcome {
            let e = shifted(e);
            render_error(&leak, "statement", e.to_string(), e.span());
        }
    }
}

/// Check → lower for a bound query, as `Policy::run_bound` does before
/// executing; the plan is inspected instead.
fn run_bound(fx: &SqlFixture, leak: &Leak<'_>, query: &Query) -> Result<(), safe_data_policy::Error> {
    // What EXPLAIN shows and the audit log hashes.
    leak.check("the canonical SQL", &query.to_string(), false);
    for f in query.output() {
        leak.check("an output column name", &f.name, false);
    }
    let plan = safe_data_policy::plan_text(&fx.catalog, query)?;
    inspect_plan(fx, leak, &plan);
    Ok(())
}

fn inspect_plan(fx: &SqlFixture, leak: &Leak<'_>, text: &PlanText) {
    // A plan polars cannot even resolve is not a leak (execution would
    // answer a generic engine error), so only readable plans are checked.
    let Some(plan) = &text.plan else { return };
    leak.check_plan("the plan", plan);
    if text.public {
        for (table, prefix) in &fx.protected_scans {
            assert!(
                !plan.contains(prefix.as_str()),
                "the check called a query public but its plan scans the protected table `{table}`\n--- input ---\n{}\n--- plan ---\n{plan}",
                leak.cell
            );
        }
    }
    if let Some((optimized, nodes)) = &text.optimized {
        // Projection pushdown names the scanned columns, the unit included.
        leak.check("the optimized plan", optimized, true);
        // The plan text truncates long column lists; the schemas of its
        // nodes do not. Only a scan may carry the privacy unit, which the
        // select above it renames.
        for (kind, names) in nodes {
            leak.check(&format!("the columns of a {kind} node of the optimized plan"), &names.join(", "), kind.ends_with("SCAN"));
        }
    }
    if let Some(columns) = &text.columns {
        for name in columns {
            let name = name.as_str();
            let internal = PLAN_INTERNAL_COLUMNS.contains(&name);
            let output = name.strip_prefix('#').is_some_and(|i| i.parse::<usize>().is_ok_and(|i| i < text.outputs));
            assert!(output || internal, "the lowered plan outputs an unexpected column `{name}`\n--- input ---\n{}", leak.cell);
        }
    }
}

// ---------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------

/// TOML text → `Config::parse`, as if the file sat next to the fuzz fixtures
/// (so `source` paths can name real files). Errors must be `Error::Config`
/// with a message.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = fixtures_dir().join("fuzzed.toml");
    match Config::parse(&path, text) {
        Ok(config) => {
            assert!(config.min_group_size >= 1 && config.server.max_rows >= 1, "accepted limits below 1");
            for t in &config.tables {
                assert!(t.min_group_size >= 1, "table `{}` accepted a k below 1", t.name);
                assert!(t.source.is_file(), "table `{}` accepted a missing source", t.name);
                for (name, c) in &t.columns {
                    if let Some((lo, hi)) = c.bounds {
                        assert!(lo.is_finite() && hi.is_finite() && lo <= hi, "column `{name}` accepted bounds [{lo}, {hi}]");
                    }
                }
            }
        }
        Err(e) => {
            let message = e.to_string();
            assert!(matches!(e, safe_data_lang::Error::Config { .. }), "Config::parse returned a non-config error: {message}");
            assert!(!message.trim().is_empty(), "empty configuration error");
        }
    }
}

// ---------------------------------------------------------------------------
// wire_frames
// ---------------------------------------------------------------------------

/// The connection key of the signed runs.
pub const WIRE_KEY: &str = "4f1c2d3e-5a6b-4c7d-8e9f-0a1b2c3d4e5f";
/// Separates frames in a `wire_frames` input (never valid UTF-8 in JSON).
pub const FRAME_SEPARATOR: u8 = 0xFF;

/// Frames from bytes: the first byte holds options, the rest is split at
/// [`FRAME_SEPARATOR`]. Options: bit 0 signs with [`WIRE_KEY`] after fixing
/// up the signature frame (so the JSON past the HMAC is reached with a key
/// too); bits 1-2 pick the size limit.
pub fn split_frames(data: &[u8]) -> (u8, Vec<Bytes>) {
    let (options, rest) = data.split_first().map_or((0, &[][..]), |(o, r)| (*o, r));
    (options, rest.split(|b| *b == FRAME_SEPARATOR).map(Bytes::copy_from_slice).collect())
}

/// Arbitrary bytes → multipart frames → `Message::decode`, unsigned and
/// signed. With a key, a message decodes only with the right signature.
pub fn wire_frames(data: &[u8]) {
    let (options, frames) = split_frames(data);
    let max_bytes = [usize::MAX, 1 << 20, 256, data.len() / 2][usize::from((options >> 1) & 3)];
    let unsigned = Signer::new("");
    let keyed = Signer::new(WIRE_KEY);

    let decoded = Message::decode(frames.clone(), &unsigned, max_bytes);
    check_decoded(&frames, decoded, &unsigned, max_bytes, None);

    // As received: only a correct signature may pass.
    let decoded = Message::decode(frames.clone(), &keyed, max_bytes);
    check_decoded(&frames, decoded, &keyed, max_bytes, Some(&keyed));

    if options & 1 == 1 {
        let mut frames = frames;
        if let Some(d) = frames.iter().position(|f| f.as_ref() == wire::DELIMITER)
            && frames.len() >= d + 6
        {
            let signature = keyed.sign([&frames[d + 2], &frames[d + 3], &frames[d + 4], &frames[d + 5]]);
            frames[d + 1] = Bytes::from(signature);
        }
        let decoded = Message::decode(frames.clone(), &keyed, max_bytes);
        check_decoded(&frames, decoded, &keyed, max_bytes, Some(&keyed));
    }
}

fn check_decoded(frames: &[Bytes], decoded: Result<Message, wire::WireError>, signer: &Signer, max_bytes: usize, key: Option<&Signer>) {
    let Ok(m) = decoded else { return };
    let total: usize = frames.iter().map(Bytes::len).sum();
    assert!(total <= max_bytes, "decoded {total} bytes over the {max_bytes}-byte limit");
    let d = frames.iter().position(|f| f.as_ref() == wire::DELIMITER).expect("decoded without a delimiter");
    assert_eq!(m.identities.as_slice(), &frames[..d], "identities are not the frames before the delimiter");
    assert_eq!(m.buffers.as_slice(), &frames[(d + 6).min(frames.len())..], "buffers are not the frames after the content");
    if let Some(key) = key {
        let expected = key.sign([&frames[d + 2], &frames[d + 3], &frames[d + 4], &frames[d + 5]]);
        assert_eq!(frames[d + 1].as_ref(), expected.as_bytes(), "a message decoded with a key but without its signature");
    }
    for (name, v) in [("header", &m.header), ("parent_header", &m.parent_header), ("metadata", &m.metadata), ("content", &m.content)] {
        assert!(v.is_object(), "decoded a {name} that is not an object");
    }
    assert!(m.header.get("msg_id").and_then(|v| v.as_str()).is_some(), "decoded a header without msg_id");
    let _ = m.msg_type();
    // What the kernel would send back decodes to the same message.
    let again = wire::encode(&m.identities, &m.header, &m.parent_header, &m.metadata, &m.content, signer);
    match Message::decode(again, signer, usize::MAX) {
        Ok(r) => {
            assert_eq!(r.identities, m.identities, "re-encoded identities differ");
            assert_eq!(
                (&r.header, &r.parent_header, &r.metadata, &r.content),
                (&m.header, &m.parent_header, &m.metadata, &m.content),
                "a re-encoded message decodes differently"
            );
        }
        Err(e) => panic!("a decoded message does not decode once re-encoded: {e}"),
    }
}

// ---------------------------------------------------------------------------
// editor_services
// ---------------------------------------------------------------------------

/// Separates the pieces of an `editor_services` input (never valid UTF-8).
pub const PIECE_SEPARATOR: u8 = 0xFF;

/// The stack of a tokio worker thread, where the kernel answers
/// is_complete, complete and inspect requests.
pub const SERVICE_STACK_BYTES: usize = 2 << 20;

/// The cell and cursor of an `editor_services` input. Byte 0: the repeat
/// count is `1 << (byte & 15)`; bytes 1-2: the cursor (little endian, modulo
/// the cell's length + 1, then floored to a character). The rest is split at
/// [`PIECE_SEPARATOR`] into `head`, `middle` and `tail` (missing ones are
/// empty); the cell is `head × n + middle + tail × n`, cut to at most one
/// byte more than a cell may have (so the length cap is reached too), at a
/// character boundary. None when a piece is not UTF-8.
pub fn editor_cell(data: &[u8]) -> Option<(String, usize)> {
    let (header, rest) = data.split_at(data.len().min(3));
    let repeat = 1usize << (header.first().copied().unwrap_or(0) & 15);
    let cursor = usize::from(u16::from_le_bytes([header.get(1).copied().unwrap_or(0), header.get(2).copied().unwrap_or(0)]));
    let mut pieces = rest.splitn(3, |b| *b == PIECE_SEPARATOR).map(std::str::from_utf8);
    let head = pieces.next().unwrap_or(Ok("")).ok()?;
    let middle = pieces.next().unwrap_or(Ok("")).ok()?;
    let tail = pieces.next().unwrap_or(Ok("")).ok()?;
    let limit = parse::MAX_CELL_BYTES + 1;
    let mut cell = String::with_capacity(limit.min(repeat * (head.len() + tail.len()) + middle.len()));
    let mut push = |s: &str, times: usize| {
        for _ in 0..times {
            if cell.len() >= limit {
                return;
            }
            cell.push_str(s);
        }
    };
    push(head, if head.is_empty() { 0 } else { repeat });
    push(middle, 1);
    push(tail, if tail.is_empty() { 0 } else { repeat });
    let mut end = cell.len().min(limit);
    while !cell.is_char_boundary(end) {
        end -= 1;
    }
    cell.truncate(end);
    let mut cursor = cursor % (cell.len() + 1);
    while !cell.is_char_boundary(cursor) {
        cursor -= 1;
    }
    Some((cell, cursor))
}

/// The editor services on hostile text, on a tokio worker's stack: they
/// answer (a stack overflow aborts the process: the fuzzer's crash), no
/// hidden column reaches a completion or an inspection, and a cell that
/// `is_complete` calls complete parses.
pub fn editor_services(data: &[u8]) {
    let Some((cell, cursor)) = editor_cell(data) else { return };
    let fx = sql_fixture();
    let lower_cell = cell.to_ascii_lowercase();
    let leak = Leak { cell: &cell, armed: !HIDDEN_MARKERS.iter().any(|m| lower_cell.contains(m)) };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("editor-services".into())
            .stack_size(SERVICE_STACK_BYTES)
            .spawn_scoped(scope, || {
                let done = services::is_complete(&cell);
                if done == services::Completeness::Complete {
                    assert!(parse::parse_cell(&cell).is_ok(), "is_complete called a cell complete that does not parse\n--- input ---\n{cell}");
                }
                for at in [cursor, cell.len()] {
                    let completion = safe_data_policy::complete(&fx.catalog, &cell, at);
                    assert!(completion.start <= completion.end && completion.end <= cell.len(), "completion range out of the cell");
                    assert!(cell.is_char_boundary(completion.start) && cell.is_char_boundary(completion.end), "completion range inside a character");
                    leak.check("a completion", &completion.matches.join("\n"), false);
                    if let Some(text) = safe_data_policy::inspect(&fx.catalog, &cell, at) {
                        leak.check("an inspection", &text, false);
                    }
                }
            })
            .expect("spawning the services thread")
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload));
    });
}

// ---------------------------------------------------------------------------
// history_glob
// ---------------------------------------------------------------------------

/// A history search: the pattern, then (after the first 0xFF byte) the text,
/// each read as lossy UTF-8 → `history::glob_match`, checked against a
/// dynamic-programming matcher (`*` any run of characters, `?` one).
pub fn history_glob(data: &[u8]) {
    let (pattern, text) = match data.iter().position(|b| *b == PIECE_SEPARATOR) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (pattern, text) = (String::from_utf8_lossy(pattern), String::from_utf8_lossy(text));
    let got = history::glob_match(&pattern, &text);
    let expected = glob_reference(&pattern, &text);
    assert_eq!(got, expected, "glob_match({pattern:?}, {text:?}) is {got}, expected {expected}");
}

/// `*` and `?` glob matching over characters, O(pattern × text) time and
/// O(text) memory: `row[j]` says whether the pattern so far matches the
/// first `j` characters of the text.
pub fn glob_reference(pattern: &str, text: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let mut row = vec![false; t.len() + 1];
    row[0] = true;
    for p in pattern.chars() {
        let mut next = vec![false; t.len() + 1];
        match p {
            '*' => {
                let mut any = false;
                for j in 0..=t.len() {
                    any |= row[j];
                    next[j] = any;
                }
            }
            _ => {
                for j in 1..=t.len() {
                    next[j] = row[j - 1] && (p == '?' || p == t[j - 1]);
                }
            }
        }
        row = next;
    }
    row[t.len()]
}

// ---------------------------------------------------------------------------
// history_request
// ---------------------------------------------------------------------------

/// A history of known cells, opened once (a temporary `state_dir`).
fn history_fixture() -> &'static std::sync::Mutex<history::History> {
    static FIXTURE: OnceLock<std::sync::Mutex<history::History>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("safe-data-fuzz-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut h = history::History::try_open(&dir, "fuzzer").expect("a history in a temporary folder");
        for (line, source) in HISTORY_CELLS.iter().enumerate() {
            h.append(line as u64 + 1, source);
        }
        std::sync::Mutex::new(h)
    })
}

/// The fixture history's cells (session 1).
const HISTORY_CELLS: &[&str] = &["SELECT 1;", "SHOW TABLES;", "SELECT sex, COUNT(*) FROM people GROUP BY sex;", "SELECT 1;", "DESCRIBE people;", "select\n2;"];

/// A `history_request`'s content: the bytes as JSON (anything else becomes
/// a search for them as a pattern) → `HistoryQuery::from_content` → run on
/// a fixture history, as the kernel answers it. No panic; at most
/// `MAX_HISTORY_ITEMS` entries, each one of the stored cells, and a search
/// returns only cells its pattern matches (checked against the reference
/// matcher).
pub fn history_request(data: &[u8]) {
    use safe_data_kernel::kernel::backend::{HistoryQuery, MAX_HISTORY_ITEMS};
    let content: serde_json::Value = serde_json::from_slice(data)
        .unwrap_or_else(|_| serde_json::json!({"hist_access_type": "search", "pattern": String::from_utf8_lossy(data), "n": data.len()}));
    let query = HistoryQuery::from_content(&content);
    let h = history_fixture().lock().unwrap_or_else(|p| p.into_inner());
    let items = query.run(&h);
    assert!(items.len() <= MAX_HISTORY_ITEMS.min(HISTORY_CELLS.len()), "{query:?} returned {} entries", items.len());
    for item in &items {
        assert!(HISTORY_CELLS.contains(&item.source.as_str()), "{query:?} returned a cell that was never stored");
        assert!(item.line >= 1 && item.line as usize <= HISTORY_CELLS.len(), "{query:?}: line {}", item.line);
        if let HistoryQuery::Search { pattern, .. } = &query {
            assert!(glob_reference(pattern, &item.source), "{query:?} returned {:?}, which its pattern does not match", item.source);
        }
    }
}
