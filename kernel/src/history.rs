//! Execution history, per user, in one SQLite database `state_dir/history.sqlite`, so it survives
//! kernel restarts, one user never sees another's, and memory does not grow with it (IPython keeps
//! its history the same way).
//!
//! Schema (version 1, in `PRAGMA user_version`):
//!
//! ```sql
//! CREATE TABLE users    (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);  -- the exact user name
//! CREATE TABLE sessions (user_id INTEGER NOT NULL REFERENCES users(id), session INTEGER NOT NULL,
//!                        started INTEGER NOT NULL,                           -- Unix seconds
//!                        PRIMARY KEY (user_id, session)) WITHOUT ROWID;
//! CREATE TABLE entries  (id INTEGER PRIMARY KEY AUTOINCREMENT,               -- insertion order
//!                        user_id INTEGER NOT NULL REFERENCES users(id), session INTEGER NOT NULL,
//!                        line INTEGER NOT NULL, time INTEGER NOT NULL,       -- Unix seconds
//!                        bytes INTEGER NOT NULL, source TEXT NOT NULL);
//! CREATE INDEX entries_by_user ON entries (user_id, id, bytes);
//! CREATE INDEX entries_by_session ON entries (user_id, session, line);
//! ```
//!
//! Users are told apart by their exact name (a `UNIQUE` text column compared byte for byte), not by
//! an encoding of it into a file name: `alice.smith` and `alice_smith`, `émile` and `ümile`, `""`
//! and `unknown` are different users. Every query filters on the user's id.
//!
//! Bounds: a cell over [`MAX_STORED_SOURCE_BYTES`] (the cell cap, 256 KiB) is never stored: the
//! entry holds `-- <N bytes not stored; sha256 HEX>` (a SQL comment, the same digest the audit log
//! records). Each user keeps the newest [`MAX_ENTRIES_PER_USER`] entries (10,000) within
//! [`MAX_BYTES_PER_USER`] bytes of sources (8 MiB); older ones are deleted as new ones come. A
//! search pattern has at most [`MAX_PATTERN_CHARS`] characters (255) and a search reads at most
//! [`MAX_SEARCH_SCAN_BYTES`] of sources (8 MiB, newest first), with a matcher whose work is linear
//! in the text (at most 4 machine words per character for such a pattern): a search is a few ms per
//! stored cell at most and some tens of ms in all.
//!
//! Each [`History`] owns its own SQLite connection (WAL mode: readers never wait for the writer; a
//! 5 s busy timeout between writers). A `History` is `Send`: the history request handler should hold
//! its own, made with [`History::try_clone`], and query it on a blocking thread, so a search never
//! holds a lock the evaluation thread needs to append.
//!
//! The database is created owner-only (0600; SQLite gives its `-wal` and `-shm` files the same
//! mode). Histories of older versions (`state_dir/history/<name>.jsonl`, where names that differ
//! only in punctuation shared a file) are not imported: they are left where they are, unread, and
//! their presence is logged once per process.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use safe_data_policy::audit::digest_placeholder;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest source stored whole: the cell cap (256 KiB). Anything longer was refused unparsed.
pub const MAX_STORED_SOURCE_BYTES: usize = safe_data_lang::parse::MAX_CELL_BYTES;

/// The most entries kept per user (the newest).
pub const MAX_ENTRIES_PER_USER: usize = 10_000;

/// The most bytes of sources kept per user (the newest entries that fit): 8 MiB.
pub const MAX_BYTES_PER_USER: usize = 8 << 20;

/// The longest search pattern, in characters.
pub const MAX_PATTERN_CHARS: usize = 255;

/// The most bytes of sources one search reads (newest first): 8 MiB.
pub const MAX_SEARCH_SCAN_BYTES: usize = 8 << 20;

/// The database's file name in `state_dir`.
pub const DATABASE_FILE: &str = "history.sqlite";

/// How long a writer waits for another (several kernels share the database).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema this version reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS sessions (
    user_id INTEGER NOT NULL REFERENCES users(id),
    session INTEGER NOT NULL,
    started INTEGER NOT NULL,
    PRIMARY KEY (user_id, session)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL REFERENCES users(id),
    session INTEGER NOT NULL,
    line INTEGER NOT NULL,
    time INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_user ON entries (user_id, id, bytes);
CREATE INDEX IF NOT EXISTS entries_by_session ON entries (user_id, session, line);
";

/// What can go wrong with the history. Texts name files and limits, never a source or a user name.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot create the history database {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("the history database {path} failed: {source}")]
    Database { path: String, source: rusqlite::Error },
    #[error("the history database {path} has schema version {found}; this version of Safe Data reads version {SCHEMA_VERSION}")]
    Version { path: String, found: i64 },
    #[error("the search pattern is longer than {MAX_PATTERN_CHARS} characters")]
    PatternTooLong,
    #[error("the history is not available in this session (the kernel's log says why)")]
    Unavailable,
}

/// One stored cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub session: u64,
    pub line: u64,
    pub source: String,
}

/// How much history one user keeps (tests lower it).
#[derive(Debug, Clone, Copy)]
struct Limits {
    entries: usize,
    bytes: usize,
}

const LIMITS: Limits = Limits { entries: MAX_ENTRIES_PER_USER, bytes: MAX_BYTES_PER_USER };

/// One user's history, through its own connection to the database.
#[derive(Debug)]
pub struct History {
    /// `None`: the database could not be opened (logged once by [`History::open`]); nothing is kept.
    conn: Option<Connection>,
    path: PathBuf,
    user_id: i64,
    limits: Limits,
    /// This kernel's session number (one more than the user's last, unique among the user's kernels).
    pub session: u64,
}

impl History {
    /// Opens `user`'s history in `state_dir` and starts a new session. Never fails: when the
    /// database cannot be opened (a state folder the user cannot write, a damaged file, a newer
    /// schema), it logs a warning and returns a history that keeps nothing this session.
    pub fn open(state_dir: &Path, user: &str) -> History {
        match History::try_open(state_dir, user) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("the history is not kept in this session: {e}");
                History { conn: None, path: state_dir.join(DATABASE_FILE), user_id: 0, limits: LIMITS, session: 1 }
            }
        }
    }

    /// Opens `user`'s history in `state_dir` (creating the database, owner-only, if needed) and
    /// starts a new session.
    pub fn try_open(state_dir: &Path, user: &str) -> Result<History, HistoryError> {
        note_old_histories(state_dir);
        let path = state_dir.join(DATABASE_FILE);
        let mut conn = connect(&path)?;
        let (user_id, session) = start_session(&mut conn, user).map_err(|e| db_error(&path, e))?;
        Ok(History { conn: Some(conn), path, user_id, limits: LIMITS, session })
    }

    /// The same user's history and session through a new connection: for a request handler that
    /// must not share a lock with the evaluation thread that appends. A history that keeps nothing
    /// clones into one that keeps nothing.
    pub fn try_clone(&self) -> Result<History, HistoryError> {
        let conn = match self.conn {
            Some(_) => Some(connect(&self.path)?),
            None => None,
        };
        Ok(History { conn, path: self.path.clone(), user_id: self.user_id, limits: self.limits, session: self.session })
    }

    /// [`History::try_clone`], never failing: a reader for history requests, so a search never
    /// holds the lock the evaluation takes to append (WAL lets one read while the other writes).
    /// When no second connection can be opened, the reader keeps nothing (logged).
    pub fn reader(&self) -> History {
        self.try_clone().unwrap_or_else(|e| {
            tracing::warn!("history requests are not answered in this session: {e}");
            History { conn: None, path: self.path.clone(), user_id: self.user_id, limits: self.limits, session: self.session }
        })
    }

    /// Stores a cell as line `line` of this session (see the module documentation for what is kept);
    /// a failure is logged (without the cell), never returned.
    pub fn append(&mut self, line: u64, source: &str) {
        match self.try_append(line, source) {
            Ok(()) | Err(HistoryError::Unavailable) => {}
            Err(e) => tracing::warn!("cannot write history: {e}"),
        }
    }

    /// [`History::append`], with its error.
    pub fn try_append(&mut self, line: u64, source: &str) -> Result<(), HistoryError> {
        let (user_id, session, limits) = (self.user_id, self.session, self.limits);
        let conn = self.conn.as_mut().ok_or(HistoryError::Unavailable)?;
        let stored = stored_source(source);
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached("INSERT INTO entries (user_id, session, line, time, bytes, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(params![
                user_id,
                to_sql_int(session),
                to_sql_int(line),
                unix_now(),
                to_sql_int(stored.len()),
                stored.as_ref()
            ])?;
            trim(&tx, user_id, limits)?;
            tx.commit()
        })();
        result.map_err(|e| db_error(&self.path, e))
    }

    /// The last `n` entries, oldest first (empty when the history is unavailable; errors are logged).
    pub fn tail(&self, n: usize) -> Vec<Entry> {
        logged(self.try_tail(n))
    }

    /// [`History::tail`], with its error.
    pub fn try_tail(&self, n: usize) -> Result<Vec<Entry>, HistoryError> {
        let conn = self.conn.as_ref().ok_or(HistoryError::Unavailable)?;
        let result = (|| {
            let mut stmt = conn.prepare_cached("SELECT session, line, source FROM entries WHERE user_id = ?1 ORDER BY id DESC LIMIT ?2")?;
            let mut entries = stmt.query_map(params![self.user_id, to_sql_int(n)], entry_of_row)?.collect::<rusqlite::Result<Vec<Entry>>>()?;
            entries.reverse();
            Ok(entries)
        })();
        result.map_err(|e| db_error(&self.path, e))
    }

    /// Lines `start..stop` of a session, in the order they were stored. `session` 0 is the current
    /// one, negative counts back from it, positive is a session number.
    pub fn range(&self, session: i64, start: u64, stop: Option<u64>) -> Vec<Entry> {
        logged(self.try_range(session, start, stop))
    }

    /// [`History::range`], with its error.
    pub fn try_range(&self, session: i64, start: u64, stop: Option<u64>) -> Result<Vec<Entry>, HistoryError> {
        let conn = self.conn.as_ref().ok_or(HistoryError::Unavailable)?;
        let session = if session <= 0 { to_sql_int(self.session).saturating_add(session) } else { session };
        let result: rusqlite::Result<Vec<Entry>> = (|| {
            let mut stmt = conn.prepare_cached(
                "SELECT session, line, source FROM entries WHERE user_id = ?1 AND session = ?2 AND line >= ?3 AND (?4 IS NULL OR line < ?4) ORDER BY id",
            )?;
            stmt.query_map(params![self.user_id, session, to_sql_int(start), stop.map(to_sql_int)], entry_of_row)?.collect()
        })();
        result.map_err(|e| db_error(&self.path, e))
    }

    /// Glob search (`*` any run of characters, `?` one; the whole source must match), oldest first.
    /// `n` keeps the newest `n` hits; `unique` keeps the newest of repeated sources. A pattern over
    /// [`MAX_PATTERN_CHARS`] matches nothing (errors are logged).
    pub fn search(&self, pattern: &str, n: Option<usize>, unique: bool) -> Vec<Entry> {
        logged(self.try_search(pattern, n, unique))
    }

    /// [`History::search`], with its error ([`HistoryError::PatternTooLong`] among them). Reads the
    /// newest entries first, stops after `n` hits or [`MAX_SEARCH_SCAN_BYTES`] read.
    pub fn try_search(&self, pattern: &str, n: Option<usize>, unique: bool) -> Result<Vec<Entry>, HistoryError> {
        if pattern.chars().nth(MAX_PATTERN_CHARS).is_some() {
            return Err(HistoryError::PatternTooLong);
        }
        let conn = self.conn.as_ref().ok_or(HistoryError::Unavailable)?;
        let glob = Glob::new(pattern);
        let result = (|| {
            let mut stmt = conn.prepare_cached("SELECT session, line, source FROM entries WHERE user_id = ?1 ORDER BY id DESC")?;
            let mut rows = stmt.query(params![self.user_id])?;
            let (mut hits, mut seen, mut scanned) = (Vec::new(), HashSet::new(), 0usize);
            while n.is_none_or(|n| hits.len() < n)
                && let Some(row) = rows.next()?
            {
                let entry = entry_of_row(row)?;
                scanned = scanned.saturating_add(entry.source.len());
                if scanned > MAX_SEARCH_SCAN_BYTES {
                    break;
                }
                if glob.matches(&entry.source) && (!unique || seen.insert(entry.source.clone())) {
                    hits.push(entry);
                }
            }
            hits.reverse();
            Ok(hits)
        })();
        result.map_err(|e| db_error(&self.path, e))
    }
}

/// What is stored for a cell: the cell, or the digest of one over the cap.
fn stored_source(source: &str) -> Cow<'_, str> {
    if source.len() <= MAX_STORED_SOURCE_BYTES { Cow::Borrowed(source) } else { Cow::Owned(format!("-- {}", digest_placeholder(source))) }
}

fn logged(result: Result<Vec<Entry>, HistoryError>) -> Vec<Entry> {
    result.unwrap_or_else(|e| {
        if !matches!(e, HistoryError::Unavailable) {
            tracing::warn!("cannot read history: {e}");
        }
        Vec::new()
    })
}

fn db_error(path: &Path, source: rusqlite::Error) -> HistoryError {
    HistoryError::Database { path: path.display().to_string(), source }
}

fn to_sql_int<T: TryInto<i64>>(n: T) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| to_sql_int(d.as_secs())).unwrap_or(0)
}

fn entry_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let int = |i: usize| row.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
    Ok(Entry { session: int(0)?, line: int(1)?, source: row.get(2)? })
}

/// Opens the database (created owner-only if missing), with WAL, the busy timeout and the schema.
fn connect(path: &Path) -> Result<Connection, HistoryError> {
    let create_error = |source| HistoryError::Create { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(create_error)?;
    }
    let mut file = std::fs::OpenOptions::new();
    file.read(true).write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    file.open(path).map_err(create_error)?;
    let mut conn = Connection::open(path).map_err(|e| db_error(path, e))?;
    configure(&mut conn).map_err(|e| match e {
        Setup::Sql(e) => db_error(path, e),
        Setup::Version(found) => HistoryError::Version { path: path.display().to_string(), found },
    })?;
    Ok(conn)
}

enum Setup {
    Sql(rusqlite::Error),
    Version(i64),
}

impl From<rusqlite::Error> for Setup {
    fn from(e: rusqlite::Error) -> Setup {
        Setup::Sql(e)
    }
}

fn configure(conn: &mut Connection) -> Result<(), Setup> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The schema holds no triggers or views; a file written by someone else runs none of their SQL.
    conn.pragma_update(None, "trusted_schema", false)?;
    // WAL where the file system allows it (SQLite keeps the old mode otherwise, which still works).
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::debug!("the history database keeps journal mode {mode}");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    match version {
        0 => {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        SCHEMA_VERSION => {}
        other => return Err(Setup::Version(other)),
    }
    tx.commit()?;
    Ok(())
}

/// The user's id (added if new) and a new session number, one more than the user's last.
fn start_session(conn: &mut Connection, user: &str) -> rusqlite::Result<(i64, u64)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("INSERT INTO users (name) VALUES (?1) ON CONFLICT (name) DO NOTHING", [user])?;
    let user_id: i64 = tx.query_row("SELECT id FROM users WHERE name = ?1", [user], |row| row.get(0))?;
    let last: Option<i64> = tx.query_row("SELECT MAX(session) FROM sessions WHERE user_id = ?1", [user_id], |row| row.get(0)).optional()?.flatten();
    let session = last.unwrap_or(0).saturating_add(1);
    tx.execute("INSERT INTO sessions (user_id, session, started) VALUES (?1, ?2, ?3)", params![user_id, session, unix_now()])?;
    // Sessions whose entries are all gone, but the newest (which numbers the next): at most
    // MAX_ENTRIES_PER_USER + 1 rows per user.
    tx.execute(
        "DELETE FROM sessions WHERE user_id = ?1 AND session < ?2 AND session NOT IN (SELECT session FROM entries WHERE user_id = ?1)",
        params![user_id, session],
    )?;
    tx.commit()?;
    Ok((user_id, u64::try_from(session).unwrap_or(1)))
}

/// Deletes the user's oldest entries beyond the newest `limits.entries` within `limits.bytes`.
fn trim(tx: &rusqlite::Transaction<'_>, user_id: i64, limits: Limits) -> rusqlite::Result<()> {
    let (count, bytes): (i64, i64) =
        tx.prepare_cached("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM entries WHERE user_id = ?1")?.query_row([user_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if count <= to_sql_int(limits.entries) && bytes <= to_sql_int(limits.bytes) {
        return Ok(());
    }
    tx.prepare_cached(
        "DELETE FROM entries WHERE user_id = ?1 AND id < (
            SELECT MIN(id) FROM (
                SELECT id,
                       SUM(bytes) OVER (ORDER BY id DESC ROWS UNBOUNDED PRECEDING) AS total,
                       ROW_NUMBER() OVER (ORDER BY id DESC) AS n
                FROM entries WHERE user_id = ?1)
            WHERE total <= ?2 AND n <= ?3)",
    )?
    .execute(params![user_id, to_sql_int(limits.bytes), to_sql_int(limits.entries)])?;
    Ok(())
}

/// Logs, once per process, that histories of an older version are left unread.
fn note_old_histories(state_dir: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let old = state_dir.join("history");
    if old.is_dir() {
        ONCE.call_once(|| {
            tracing::warn!(
                "{} holds histories of an older version of Safe Data; they are not read (users whose names differ only in punctuation \
                 shared a file there); the history is now in {DATABASE_FILE}. Remove the folder when it is no longer needed",
                old.display()
            );
        });
    }
}

/// Whether `text` matches the glob `pattern` as a whole: `*` matches any run of characters
/// (newlines too), `?` exactly one character, anything else itself.
///
/// Worst-case time O(n · ⌈m/64⌉) for a text of n characters and a pattern of m: a bit-parallel
/// simulation of the pattern's automaton, never backtracking (`*` + `A` × 3000 + `B` over 4 MB of
/// `A` took 12·10⁹ steps with the backtracking matcher). Patterns of more than 4,095 characters
/// (longer than any search accepts) run the same automaton one state at a time, O(n · m) time,
/// O(m) memory.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    Glob::new(pattern).matches(text)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Star,
    Any,
    Char(char),
}

/// A pattern compiled for matching. States are positions in the token list (runs of `*`
/// collapsed): state `i` means "the first `i` tokens matched"; state `len` accepts.
#[derive(Debug)]
struct Glob {
    tokens: Vec<Token>,
    /// Bit sets of `words` words, or `None` for a pattern too long for them.
    bits: Option<Bits>,
}

#[derive(Debug)]
struct Bits {
    words: usize,
    /// Tokens that are `*`.
    star: Vec<u64>,
    /// Tokens a character outside the pattern advances over (`?`).
    any: Vec<u64>,
    /// Per character of the pattern: the tokens it advances over (itself and `?`), `words` each.
    masks: Vec<u64>,
    /// Index in `masks` (in words) of an ASCII character's set, `usize::MAX` for none.
    ascii: [usize; 128],
    other: HashMap<char, usize>,
}

/// The longest token list matched with bit sets (64 words of state).
const MAX_BIT_TOKENS: usize = 64 * 64 - 1;

impl Glob {
    fn new(pattern: &str) -> Glob {
        let mut tokens = Vec::new();
        for c in pattern.chars() {
            let token = match c {
                '*' => Token::Star,
                '?' => Token::Any,
                c => Token::Char(c),
            };
            if !(token == Token::Star && tokens.last() == Some(&Token::Star)) {
                tokens.push(token);
            }
        }
        let bits = (tokens.len() <= MAX_BIT_TOKENS).then(|| Bits::new(&tokens));
        Glob { tokens, bits }
    }

    fn matches(&self, text: &str) -> bool {
        match &self.bits {
            Some(bits) => bits.matches(self.tokens.len(), self.tokens.last() == Some(&Token::Star), text),
            None => self.matches_slowly(text),
        }
    }

    /// The same automaton, one state at a time.
    fn matches_slowly(&self, text: &str) -> bool {
        let len = self.tokens.len();
        let close = |states: &mut Vec<bool>| {
            for i in 0..len {
                if states[i] && self.tokens[i] == Token::Star {
                    states[i + 1] = true;
                }
            }
        };
        let mut states = vec![false; len + 1];
        let mut next = vec![false; len + 1];
        states[0] = true;
        close(&mut states);
        for c in text.chars() {
            next.iter_mut().for_each(|s| *s = false);
            for (i, token) in self.tokens.iter().enumerate() {
                if states[i] {
                    match token {
                        Token::Star => next[i] = true,
                        Token::Any => next[i + 1] = true,
                        Token::Char(x) if *x == c => next[i + 1] = true,
                        Token::Char(_) => {}
                    }
                }
            }
            close(&mut next);
            if !next.contains(&true) {
                return false;
            }
            std::mem::swap(&mut states, &mut next);
        }
        states[len]
    }
}

impl Bits {
    fn new(tokens: &[Token]) -> Bits {
        let words = tokens.len() / 64 + 1;
        let mut star = vec![0u64; words];
        let mut any = vec![0u64; words];
        for (i, token) in tokens.iter().enumerate() {
            match token {
                Token::Star => star[i / 64] |= 1 << (i % 64),
                Token::Any => any[i / 64] |= 1 << (i % 64),
                Token::Char(_) => {}
            }
        }
        let mut bits = Bits { words, star, masks: Vec::new(), ascii: [usize::MAX; 128], other: HashMap::new(), any };
        for (i, token) in tokens.iter().enumerate() {
            if let Token::Char(c) = *token {
                let at = match bits.index(c) {
                    Some(at) => at,
                    None => {
                        let at = bits.masks.len();
                        bits.masks.extend_from_slice(&bits.any);
                        if c.is_ascii() {
                            bits.ascii[c as usize] = at;
                        } else {
                            bits.other.insert(c, at);
                        }
                        at
                    }
                };
                bits.masks[at + i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    fn index(&self, c: char) -> Option<usize> {
        if c.is_ascii() { Some(self.ascii[c as usize]).filter(|at| *at != usize::MAX) } else { self.other.get(&c).copied() }
    }

    fn mask(&self, c: char) -> &[u64] {
        match self.index(c) {
            Some(at) => &self.masks[at..at + self.words],
            None => &self.any,
        }
    }

    /// Adds the states reached from a `*` without reading (runs of `*` are collapsed, so one step).
    fn close(&self, states: &mut [u64]) {
        let mut carry = 0;
        for (state, star) in states.iter_mut().zip(&self.star) {
            let from_star = *state & star;
            *state |= (from_star << 1) | carry;
            carry = from_star >> 63;
        }
    }

    fn matches(&self, len: usize, ends_with_star: bool, text: &str) -> bool {
        let bit = |states: &[u64], i: usize| (states[i / 64] >> (i % 64)) & 1 == 1;
        let mut states = vec![0u64; self.words];
        let mut next = vec![0u64; self.words];
        states[0] = 1;
        self.close(&mut states);
        for c in text.chars() {
            if ends_with_star && bit(&states, len - 1) {
                return true; // the final `*` takes the rest
            }
            let mask = self.mask(c);
            let (mut carry, mut alive) = (0, 0);
            for (((out, state), mask), star) in next.iter_mut().zip(&states).zip(mask).zip(&self.star) {
                let advance = state & mask;
                *out = (advance << 1) | carry | (state & star);
                carry = advance >> 63;
                alive |= *out;
            }
            if alive == 0 {
                return false;
            }
            self.close(&mut next);
            std::mem::swap(&mut states, &mut next);
        }
        bit(&states, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sd-hist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn sources(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.source.as_str()).collect()
    }

    #[test]
    fn globs() {
        assert!(glob_match("SELECT*", "SELECT 1"));
        assert!(glob_match("*count*", "select count(*)"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("*", ""));
        assert!(glob_match("**", ""));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(!glob_match("?", ""));
        assert!(glob_match("?", "é"));
        assert!(glob_match("*é?*", "xxéüy"));
        assert!(!glob_match("*éü", "xxéüy"));
        assert!(glob_match("a*b*c", "a\nxbyyc"));
        assert!(!glob_match("a*b*c", "a\nxbyyd"));
        assert!(glob_match("*a*a*a*", "banana"));
        assert!(!glob_match("*a*a*a*a*", "banana"));
        assert!(glob_match("*?*?*", "ab"));
        assert!(!glob_match("*?*?*", "a"));
    }

    /// The plain dynamic programme over (pattern, text) prefixes.
    fn reference(pattern: &str, text: &str) -> bool {
        let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
        let mut m = vec![vec![false; t.len() + 1]; p.len() + 1];
        m[0][0] = true;
        for i in 1..=p.len() {
            for j in 0..=t.len() {
                m[i][j] = match p[i - 1] {
                    '*' => m[i - 1][j] || (j > 0 && m[i][j - 1]),
                    c => j > 0 && m[i - 1][j - 1] && (c == '?' || c == t[j - 1]),
                };
            }
        }
        m[p.len()][t.len()]
    }

    #[test]
    fn glob_agrees_with_the_reference_across_word_edges() {
        // Patterns of 60..70 and 4090..4100 tokens cross a 64-bit word edge and the bit-set limit.
        let mut rng = fastrand::Rng::with_seed(20);
        for round in 0..3000 {
            let len = match round % 3 {
                0 => rng.usize(0..8),
                1 => rng.usize(60..70),
                _ => rng.usize(0..20),
            };
            let pattern: String = (0..len).map(|_| ['a', 'b', '*', '?', 'é'][rng.usize(0..5)]).collect();
            let text: String = (0..rng.usize(0..90)).map(|_| ['a', 'b', 'é'][rng.usize(0..3)]).collect();
            assert_eq!(glob_match(&pattern, &text), reference(&pattern, &text), "{pattern:?} on {text:?}");
        }
        for len in [MAX_BIT_TOKENS - 1, MAX_BIT_TOKENS, MAX_BIT_TOKENS + 1, MAX_BIT_TOKENS + 5] {
            let text = "ab".repeat(len / 2 + 3);
            for pattern in [format!("*{}", "?".repeat(len - 1)), format!("{}*", "a?".repeat(len / 2)), format!("*b{}", "?".repeat(len - 2))] {
                assert_eq!(glob_match(&pattern, &text), reference(&pattern, &text), "pattern of {} characters", pattern.len());
            }
        }
    }

    /// Runs `f` on another thread and fails if it takes longer than `limit` (rather than hanging).
    fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).unwrap_or_else(|_| panic!("{what} took longer than {limit:?}"))
    }

    #[test]
    fn a_pathological_glob_is_linear() {
        // Issue 20, finding 10: `*` + `A` × m + `B` over n `A`s made the backtracking matcher take
        // n·m steps (12·10⁹ for m = 3000 and 4 MB: minutes, both runtime threads blocked). Here
        // m = 254 (the longest search pattern) and n = 4 MB: 10⁹ steps backtracking, 4·10⁶ words
        // here. The text starts with the `B` so no search for a missing character cuts it short.
        let text = format!("B{}", "A".repeat(4 << 20));
        let pattern = format!("*{}B", "A".repeat(MAX_PATTERN_CHARS - 2));
        // Linear: well under a second; backtracking: minutes. The bound leaves room for a loaded CI machine.
        let matched = within(Duration::from_secs(30), "a 4 MB glob", move || glob_match(&pattern, &text));
        assert!(!matched);
    }

    #[test]
    fn injective_user_names() {
        // Issue 20, finding 8: these pairs shared one file (`alice_smith.jsonl`, `unknown.jsonl`, ...).
        let d = dir("names");
        for (a, b) in [("alice.smith", "alice_smith"), ("john.doe@uni.edu", "john_doe@uni_edu"), ("émile", "ümile"), ("", "unknown"), ("Bob", "bob")] {
            let mut ha = History::open(&d, a);
            ha.append(1, &format!("SELECT 'secret of {a}';"));
            let mut hb = History::open(&d, b);
            assert!(hb.tail(100).is_empty(), "{b:?} sees {:?}", sources(&hb.tail(100)));
            assert!(hb.search("*secret*", None, false).is_empty());
            assert!(hb.range(-1, 0, None).is_empty() && hb.range(0, 0, None).is_empty());
            hb.append(1, &format!("SELECT 'secret of {b}';"));
            assert_eq!(sources(&History::open(&d, a).tail(100)), [format!("SELECT 'secret of {a}';")]);
            assert_eq!(sources(&History::open(&d, b).tail(100)), [format!("SELECT 'secret of {b}';")]);
        }
    }

    #[test]
    fn persists_across_sessions_and_searches() {
        let d = dir("persist");
        let mut h = History::open(&d, "alice");
        assert_eq!(h.session, 1);
        h.append(1, "SELECT 1;");
        h.append(2, "SELECT 2;");
        h.append(3, "SELECT 1;");
        let mut h2 = History::open(&d, "alice");
        assert_eq!(h2.session, 2);
        h2.append(1, "SHOW TABLES;");
        assert_eq!(sources(&h2.tail(2)), ["SELECT 1;", "SHOW TABLES;"]);
        assert_eq!(h2.tail(0), []);
        assert_eq!(h2.tail(usize::MAX).len(), 4);
        assert_eq!(sources(&h2.range(-1, 1, Some(3))), ["SELECT 1;", "SELECT 2;"]);
        assert_eq!(sources(&h2.range(1, 2, None)), ["SELECT 2;", "SELECT 1;"]);
        assert_eq!(sources(&h2.range(0, 0, None)), ["SHOW TABLES;"]);
        assert_eq!(h2.range(-1, 1, Some(3))[1], Entry { session: 1, line: 2, source: "SELECT 2;".into() });
        // Extreme numbers are answered, not a panic.
        assert!(h2.range(i64::MIN, u64::MAX, Some(0)).is_empty());
        assert!(h2.range(i64::MAX, 0, Some(u64::MAX)).is_empty());
        assert!(History::open(&d, "bob").tail(10).is_empty());
        // A session of a user who stored nothing still numbers the next.
        drop(History::open(&d, "alice"));
        assert_eq!(History::open(&d, "alice").session, 4);
    }

    #[test]
    fn search_semantics() {
        let d = dir("search");
        let mut h = History::open(&d, "alice");
        for (line, source) in [(1, "SELECT 1;"), (2, "SHOW TABLES;"), (3, "SELECT 2;"), (4, "SELECT 1;"), (5, "select 3;"), (6, "SELECT\n4;")] {
            h.append(line, source);
        }
        let lines = |entries: Vec<Entry>| entries.iter().map(|e| e.line).collect::<Vec<_>>();
        assert_eq!(lines(h.search("*", None, false)), [1, 2, 3, 4, 5, 6]);
        assert_eq!(lines(h.search("SELECT*", None, false)), [1, 3, 4, 6]);
        assert_eq!(lines(h.search("SELECT ?;", None, false)), [1, 3, 4]);
        // Newest of repeated sources; `n` keeps the newest hits.
        assert_eq!(lines(h.search("SELECT ?;", None, true)), [3, 4]);
        assert_eq!(lines(h.search("SELECT*", Some(2), false)), [4, 6]);
        assert_eq!(lines(h.search("SELECT ?;", Some(1), true)), [4]);
        assert_eq!(lines(h.search("*", Some(0), false)), Vec::<u64>::new());
        assert_eq!(lines(h.search("*TABLES*", None, false)), [2]);
        assert_eq!(lines(h.search("TABLES", None, false)), Vec::<u64>::new());
        // Too long a pattern is an error, not a search.
        let long = "*?".repeat(5000);
        assert!(matches!(h.try_search(&long, None, false), Err(HistoryError::PatternTooLong)));
        assert!(h.search(&long, None, false).is_empty());
        assert_eq!(h.try_search(&"?".repeat(MAX_PATTERN_CHARS), None, false).unwrap(), []);
    }

    #[test]
    fn a_pathological_search_over_stored_cells_is_bounded() {
        // Issue 20, finding 10, through the history: a 4 MB cell and the 3,002-character pattern.
        let d = dir("patho");
        let mut h = History::open(&d, "alice");
        h.append(1, &format!("B{}", "A".repeat(4 << 20)));
        let pattern = format!("*{}B", "A".repeat(3000));
        let hits = within(Duration::from_secs(3), "a pathological history search", move || h.search(&pattern, None, false).len());
        assert_eq!(hits, 0);
        // The longest pattern accepted, over the most a search reads (32 cells of 256 KiB).
        let mut h = History::open(&d, "bob");
        for line in 0..(MAX_SEARCH_SCAN_BYTES / MAX_STORED_SOURCE_BYTES) as u64 {
            h.append(line, &format!("B{}", "A".repeat(MAX_STORED_SOURCE_BYTES - 1)));
        }
        let pattern = format!("*{}B", "A".repeat(MAX_PATTERN_CHARS - 2));
        let hits = within(Duration::from_secs(10), "a search over 8 MiB", move || h.try_search(&pattern, None, false).map(|e| e.len()));
        assert_eq!(hits.unwrap(), 0);
    }

    #[test]
    fn oversized_cells_are_not_stored() {
        // Issue 20, finding 9: a refused 40 MB cell was stored whole (and re-read at every start).
        let d = dir("oversized");
        let cell = format!("SELECT '{}';", "x".repeat(MAX_STORED_SOURCE_BYTES));
        let mut h = History::open(&d, "alice");
        h.append(1, &cell);
        h.append(2, "SELECT 1;");
        let tail = History::open(&d, "alice").tail(10);
        let digest = safe_data_policy::audit::digest_placeholder(&cell);
        assert_eq!(sources(&tail), [format!("-- {digest}").as_str(), "SELECT 1;"]);
        assert!(digest.starts_with(&format!("<{} bytes not stored; sha256 ", cell.len())));
        let on_disk: u64 = std::fs::read_dir(&d).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum();
        assert!(on_disk < MAX_STORED_SOURCE_BYTES as u64, "{on_disk} bytes on disk: the cell was stored");
        // The largest cell accepted is stored whole.
        let largest = "y".repeat(MAX_STORED_SOURCE_BYTES);
        h.append(3, &largest);
        assert_eq!(h.tail(1)[0].source, largest);
    }

    fn with_limits(h: History, entries: usize, bytes: usize) -> History {
        History { limits: Limits { entries, bytes }, ..h }
    }

    #[test]
    fn each_user_keeps_a_bounded_history() {
        let d = dir("bounded");
        let mut h = with_limits(History::open(&d, "alice"), 50, 1 << 20);
        let mut other = History::open(&d, "bob");
        other.append(1, "SELECT 'bob';");
        for line in 1..=80 {
            h.append(line, &format!("SELECT {line};"));
        }
        let kept = h.tail(1000);
        assert_eq!(kept.len(), 50);
        assert_eq!((kept[0].line, kept[49].line), (31, 80));
        // By bytes: 10 entries of 100 bytes within 450 bytes keep the newest 4.
        let mut h = with_limits(h, 50, 450);
        for line in 81..=90 {
            h.append(line, &format!("{line}{}", "-".repeat(98)));
        }
        assert_eq!(h.tail(1000).iter().map(|e| e.line).collect::<Vec<_>>(), [87, 88, 89, 90]);
        // Another user's history is not touched.
        assert_eq!(sources(&other.tail(10)), ["SELECT 'bob';"]);
        // The real byte bound: 33 cells of 256 KiB are over 8 MiB, the newest 32 are kept.
        let mut h = History::open(&d, "carol");
        let cells = MAX_BYTES_PER_USER / MAX_STORED_SOURCE_BYTES + 1;
        for line in 1..=cells as u64 {
            h.append(line, &"z".repeat(MAX_STORED_SOURCE_BYTES));
        }
        let kept = h.tail(1000);
        assert_eq!((kept.len(), kept[0].line), (cells - 1, 2));
    }

    #[test]
    fn old_history_files_are_left_unread() {
        let d = dir("old");
        std::fs::create_dir_all(d.join("history")).unwrap();
        let old = d.join("history/alice.jsonl");
        std::fs::write(&old, "{\"session\":1,\"line\":1,\"source\":\"SELECT 'old';\"}\n").unwrap();
        let h = History::open(&d, "alice");
        assert_eq!(h.session, 1);
        assert!(h.tail(10).is_empty());
        assert!(old.is_file());
    }

    #[test]
    fn a_clone_on_another_thread_reads_while_the_owner_appends() {
        fn send<T: Send>(_: &T) {}
        let d = dir("clone");
        let mut h = History::open(&d, "alice");
        h.append(1, "SELECT 1;");
        let reader = h.try_clone().unwrap();
        send(&reader);
        assert_eq!(reader.session, h.session);
        let searching = std::thread::spawn(move || {
            for _ in 0..50 {
                assert!(!reader.search("SELECT*", None, false).is_empty());
            }
            reader
        });
        for line in 2..50 {
            h.append(line, &format!("SELECT {line};"));
        }
        let reader = searching.join().unwrap();
        assert_eq!(reader.tail(100).len(), 49);
    }

    #[test]
    fn the_database_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("mode");
        let mut h = History::open(&d, "alice");
        h.append(1, "SELECT 1;");
        for name in [DATABASE_FILE.to_string(), format!("{DATABASE_FILE}-wal")] {
            let mode = std::fs::metadata(d.join(&name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} has mode {mode:o}");
        }
    }

    #[test]
    fn an_unusable_database_keeps_nothing_and_says_so() {
        let d = dir("broken");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(DATABASE_FILE), vec![b'x'; 4096]).unwrap();
        assert!(matches!(History::try_open(&d, "alice"), Err(HistoryError::Database { .. })));
        let mut h = History::open(&d, "alice");
        h.append(1, "SELECT 1;");
        assert!(h.tail(10).is_empty());
        assert!(matches!(h.try_tail(1), Err(HistoryError::Unavailable)));
        assert!(h.try_clone().unwrap().tail(1).is_empty());
        // A state folder that is a file.
        let file = dir("notadir");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(History::try_open(&file, "alice"), Err(HistoryError::Create { .. })));
        // A newer schema is not written to.
        let d = dir("newer");
        drop(History::open(&d, "alice"));
        Connection::open(d.join(DATABASE_FILE)).unwrap().pragma_update(None, "user_version", 2).unwrap();
        let err = History::try_open(&d, "alice").unwrap_err();
        assert!(matches!(err, HistoryError::Version { found: 2, .. }), "{err}");
    }
}
