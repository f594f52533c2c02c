//! The one interface between the Jupyter side of the kernel and whatever
//! holds the data: [`Backend`].
//!
//! The Jupyter side (sockets, requests, the evaluation thread) keeps the
//! execution count and the wire protocol; everything that reads the catalog,
//! the policy, the data or the history goes through a backend:
//! - [`Embedded`]: today's single process (`safe-data kernel --config C`):
//!   the [`Policy`], the catalog, this user's history and a cancel flag.
//! - [`crate::service::client::Remote`]: a client of the data service
//!   (`safe-data kernel --service SOCKET`), which holds all of that in
//!   another process, under another account.
//!
//! Results cross this interface as [`Bundle`]s: MIME bundles rendered from a
//! `Released` on the side that holds the policy ([`render_statements`],
//! used by [`Embedded`] and by the service's workers). The Jupyter side
//! cannot build one itself; it only forwards what the backend yields.
//! `is_complete` is not here: it is pure syntax and stays local.

use crate::history::History;
use crate::render;
use safe_data_lang::parse::{self, Parsed};
use safe_data_lang::span::{Span, caret_snippet};
use safe_data_policy::CancelFlag;
use safe_data_policy::Catalog;
use safe_data_policy::Outcome;
use safe_data_policy::{Policy, Released, Requester};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// One rendered MIME bundle (`{"text/plain": …, "text/html": …}`) of a
/// released result. Made only from a `Released` ([`Bundle::rendered`]) or
/// decoded from the service's answer, which made it the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bundle(serde_json::Value);

impl Bundle {
    /// The bundles of one released statement, in display order.
    pub(crate) fn rendered(released: &Released) -> Vec<Bundle> {
        render::outputs(released).into_iter().map(Bundle).collect()
    }

    /// The MIME bundle, as Jupyter's `data`.
    pub fn data(&self) -> &serde_json::Value {
        &self.0
    }
}

/// Whether an output is the cell's result or an extra display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    /// The first output of the cell's last statement (`execute_result`).
    Result,
    /// Everything else: earlier statements, a chart's notices (`display_data`).
    Display,
}

/// One output of a running cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub kind: OutputKind,
    pub data: Bundle,
}

/// Why a cell failed: Jupyter's `ename`, `evalue` and `traceback`. The texts
/// come from the dialect's and the policy's errors, which never hold data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellError {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

impl CellError {
    /// An error with the message (and, given a span, the statement with a caret) as traceback.
    pub fn new(ename: &str, evalue: String, cell: &str, span: Option<Span>) -> CellError {
        let mut traceback = vec![format!("\u{1b}[0;31m{ename}\u{1b}[0m: {evalue}")];
        if let Some(span) = span {
            traceback.push(String::new());
            traceback.extend(caret_snippet(cell, span).lines().map(str::to_string));
        }
        CellError { ename: ename.to_string(), evalue, traceback }
    }

    /// An error about the kernel or the service rather than the cell.
    pub fn plain(ename: &str, evalue: impl Into<String>) -> CellError {
        let evalue = evalue.into();
        CellError { ename: ename.to_string(), traceback: vec![format!("{ename}: {evalue}")], evalue }
    }
}

/// One execute request, as the backend needs it.
#[derive(Debug, Clone, Copy)]
pub struct Cell<'a> {
    pub code: &'a str,
    /// Run, but show nothing (Jupyter's `silent`).
    pub silent: bool,
    /// Record the cell in the user's history under `execution_count`.
    pub store_history: bool,
    pub execution_count: u64,
}

/// What a `history_request` asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "access", rename_all = "snake_case", deny_unknown_fields)]
pub enum HistoryQuery {
    /// The last `n` entries.
    Tail { n: usize },
    /// Lines `start..stop` of a session (0: the current one, negative: counted back).
    Range { session: i64, start: u64, stop: Option<u64> },
    /// Glob search (`*`, `?`), newest last.
    Search { pattern: String, n: Option<usize>, unique: bool },
}

/// The most history entries one reply holds (newest kept).
pub const MAX_HISTORY_ITEMS: usize = 10_000;
/// The most source text one history reply holds (newest entries kept): a
/// user whose history holds large cells cannot make every reply huge.
pub const MAX_HISTORY_REPLY_BYTES: usize = 1 << 20;

impl HistoryQuery {
    // `from_content` (a `history_request`'s content) is with the kernel's decoding, in `incoming.rs`.

    /// Runs the query on a history, within [`MAX_HISTORY_ITEMS`].
    pub fn run(&self, h: &History) -> Vec<HistoryItem> {
        let cap = |n: Option<usize>| Some(n.unwrap_or(MAX_HISTORY_ITEMS).min(MAX_HISTORY_ITEMS));
        let items: Vec<HistoryItem> = match self {
            HistoryQuery::Tail { n } => h.tail((*n).min(MAX_HISTORY_ITEMS)).iter().map(HistoryItem::of).collect(),
            HistoryQuery::Range { session, start, stop } => h.range(*session, *start, *stop).iter().map(HistoryItem::of).collect(),
            HistoryQuery::Search { pattern, n, unique } => h.search(pattern, cap(*n), *unique).iter().map(HistoryItem::of).collect(),
        };
        // The newest entries that fit in MAX_HISTORY_ITEMS and MAX_HISTORY_REPLY_BYTES.
        let mut bytes = 0usize;
        let kept = items
            .iter()
            .rev()
            .take(MAX_HISTORY_ITEMS)
            .take_while(|e| {
                bytes = bytes.saturating_add(e.source.len());
                bytes <= MAX_HISTORY_REPLY_BYTES
            })
            .count();
        let skip = items.len() - kept;
        items.into_iter().skip(skip).collect()
    }
}

/// One history entry (IPython's `(session, line, input)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryItem {
    pub session: u64,
    pub line: u64,
    pub source: String,
}

impl HistoryItem {
    fn of(e: &crate::history::Entry) -> HistoryItem {
        HistoryItem { session: e.session, line: e.line, source: e.source.clone() }
    }
}

/// Completion candidates for the word at a byte offset.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    pub matches: Vec<String>,
    /// Byte offsets of the replaced word.
    pub start: usize,
    pub end: usize,
}

/// What the Jupyter side asks of whatever holds the data. Methods block;
/// the kernel calls them off its runtime threads (the evaluation thread,
/// or `spawn_blocking`), except [`Backend::interrupt`], which never blocks.
pub trait Backend: Send + Sync {
    /// The name for the banner (the owner's `display_name`).
    fn display_name(&self) -> String;
    /// Runs a cell, handing each output to `emit` as it is released; the
    /// result is the cell's end (ok, or the first failure).
    fn execute(&self, cell: &Cell<'_>, emit: &mut dyn FnMut(Output)) -> Result<(), CellError>;
    /// Completion at a byte offset (none when they cannot be had).
    fn complete(&self, code: &str, cursor: usize) -> Completion;
    /// Inspection text at a byte offset.
    fn inspect(&self, code: &str, cursor: usize) -> Option<String>;
    /// This user's history.
    fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryItem>, String>;
    /// Stops the running cell, if any; returns at once.
    fn interrupt(&self);
}

/// Runs a cell's parsed statements through the policy, in order, and emits
/// the rendered outputs of each (none when `silent`): every statement but
/// the last is `display_data`, the last one's first output is the
/// `execute_result`. Stops at the first failure. Used in one process
/// ([`Embedded`]) and in the service's workers: the same `Policy::run`.
pub fn render_statements(
    policy: &Policy,
    who: &Requester,
    cancel: &CancelFlag,
    cell: &str,
    statements: &[Parsed],
    silent: bool,
    emit: &mut dyn FnMut(Output),
) -> Result<(), CellError> {
    let last = statements.len().saturating_sub(1);
    for (i, statement) in statements.iter().enumerate() {
        let started = std::time::Instant::now();
        let released = match policy.run(statement, who, cancel) {
            Outcome::Released(released) => released,
            Outcome::Refused(e) => return Err(CellError::new(e.kind(), e.to_string(), cell, e.span())),
        };
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, rows = released.rows().len(), "statement released");
        if silent {
            continue;
        }
        for (j, data) in Bundle::rendered(&released).into_iter().enumerate() {
            let kind = if i == last && j == 0 { OutputKind::Result } else { OutputKind::Display };
            emit(Output { kind, data });
        }
    }
    Ok(())
}

/// Parses a cell; a cell that does not parse is audited (refused) and its
/// error returned with the caret.
pub fn parse_audited(policy: &Policy, who: &Requester, cell: &str) -> Result<Vec<Parsed>, CellError> {
    parse::parse_cell(cell).map_err(|e| {
        if let Err(audit) = policy.record_unparsed(cell, who, &e) {
            return CellError::new(audit.kind(), audit.to_string(), cell, None);
        }
        CellError::new(e.kind(), e.to_string(), cell, e.span())
    })
}

/// [`parse_audited`], then [`render_statements`].
pub fn run_cell(policy: &Policy, who: &Requester, cancel: &CancelFlag, cell: &str, silent: bool, emit: &mut dyn FnMut(Output)) -> Result<(), CellError> {
    let statements = parse_audited(policy, who, cell)?;
    render_statements(policy, who, cancel, cell, &statements, silent, emit)
}

/// Everything in this process: the policy (with the audit log), the
/// catalog, this user's history, and the cancel flag polars polls.
pub struct Embedded {
    policy: Policy,
    catalog: Arc<Catalog>,
    requester: Requester,
    cancel: CancelFlag,
    /// Appends (the evaluation thread); its own lock, never held by a query.
    history: Mutex<History>,
    /// History requests, through their own connection: a slow search never
    /// delays the evaluation's append (finding 10 of issue 20).
    reader: Mutex<History>,
}

impl Embedded {
    /// Opens the audit log and the user's history. The user comes from
    /// [`Requester::from_env`]: in one process the kernel runs as the
    /// scientist, so the identity is as good as that account's environment.
    pub fn open(catalog: Arc<Catalog>, session: String) -> std::io::Result<Embedded> {
        let policy = Policy::new(catalog.clone())?;
        let requester = Requester::from_env(session);
        let history = History::open(&catalog.config.server.state_dir, &requester.user);
        let reader = Mutex::new(history.reader());
        Ok(Embedded { policy, catalog, requester, cancel: CancelFlag::new(), history: Mutex::new(history), reader })
    }
}

impl Backend for Embedded {
    fn display_name(&self) -> String {
        self.catalog.config.server.display_name.clone()
    }

    fn execute(&self, cell: &Cell<'_>, emit: &mut dyn FnMut(Output)) -> Result<(), CellError> {
        self.cancel.reset();
        if cell.store_history {
            self.history.lock().unwrap_or_else(|p| p.into_inner()).append(cell.execution_count, cell.code);
        }
        run_cell(&self.policy, &self.requester, &self.cancel, cell.code, cell.silent, emit)
    }

    fn complete(&self, code: &str, cursor: usize) -> Completion {
        let done = safe_data_policy::complete(&self.catalog, code, cursor);
        Completion { matches: done.matches, start: done.start, end: done.end }
    }

    fn inspect(&self, code: &str, cursor: usize) -> Option<String> {
        safe_data_policy::inspect(&self.catalog, code, cursor)
    }

    fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryItem>, String> {
        Ok(query.run(&self.reader.lock().unwrap_or_else(|p| p.into_inner())))
    }

    fn interrupt(&self) {
        self.cancel.cancel();
    }
}
