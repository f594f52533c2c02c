//! Execution history, kept per user in the owner's state directory so it
//! survives kernel restarts (and one user never sees another's).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub session: u64,
    pub line: u64,
    pub source: String,
}

#[derive(Debug)]
pub struct History {
    path: PathBuf,
    entries: Vec<Entry>,
    /// This kernel's session number (one more than the last stored).
    pub session: u64,
}

fn safe_file_name(user: &str) -> String {
    let cleaned: String = user.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if cleaned.is_empty() { "unknown".into() } else { cleaned }
}

impl History {
    /// Loads `state_dir/history/<user>.jsonl`; unreadable lines are skipped.
    pub fn open(state_dir: &Path, user: &str) -> History {
        let dir = state_dir.join("history");
        let path = dir.join(format!("{}.jsonl", safe_file_name(user)));
        let entries: Vec<Entry> =
            std::fs::read_to_string(&path).map(|text| text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()).unwrap_or_default();
        let session = entries.iter().map(|e| e.session).max().unwrap_or(0) + 1;
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!("cannot create the history folder: {e}");
        }
        History { path, entries, session }
    }

    pub fn append(&mut self, line: u64, source: &str) {
        let entry = Entry { session: self.session, line, source: source.to_string() };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| writeln!(f, "{}", serde_json::to_string(&entry).unwrap_or_default()));
        if let Err(e) = written {
            tracing::warn!("cannot write history: {e}");
        }
        self.entries.push(entry);
    }

    pub fn tail(&self, n: usize) -> Vec<&Entry> {
        let start = self.entries.len().saturating_sub(n);
        self.entries[start..].iter().collect()
    }

    /// `session` 0 is the current one, negative counts back from it.
    pub fn range(&self, session: i64, start: u64, stop: Option<u64>) -> Vec<&Entry> {
        let s = if session <= 0 { self.session as i64 + session } else { session };
        self.entries.iter().filter(|e| e.session as i64 == s && e.line >= start && stop.is_none_or(|stop| e.line < stop)).collect()
    }

    /// Glob search (`*` and `?`), newest last; `unique` drops repeated sources.
    pub fn search(&self, pattern: &str, n: Option<usize>, unique: bool) -> Vec<&Entry> {
        let mut hits: Vec<&Entry> = self.entries.iter().filter(|e| glob_match(pattern, &e.source)).collect();
        if unique {
            let mut seen = std::collections::HashSet::new();
            let mut kept: Vec<&Entry> = hits.iter().rev().filter(|e| seen.insert(e.source.clone())).copied().collect();
            kept.reverse();
            hits = kept;
        }
        if let Some(n) = n {
            let start = hits.len().saturating_sub(n);
            hits = hits[start..].to_vec();
        }
        hits
    }
}

/// Glob matching with `*` and `?` over characters, iterative (no blow-up).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("SELECT*", "SELECT 1"));
        assert!(glob_match("*count*", "select count(*)"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn persists_across_sessions_and_searches() {
        let dir = std::env::temp_dir().join(format!("sd-hist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut h = History::open(&dir, "alice");
        assert_eq!(h.session, 1);
        h.append(1, "SELECT 1;");
        h.append(2, "SELECT 2;");
        h.append(3, "SELECT 1;");
        let mut h2 = History::open(&dir, "alice");
        assert_eq!(h2.session, 2);
        h2.append(1, "SHOW TABLES;");
        assert_eq!(h2.tail(2).len(), 2);
        assert_eq!(h2.range(-1, 1, Some(3)).len(), 2);
        assert_eq!(h2.search("SELECT*", None, true).len(), 2);
        assert_eq!(h2.search("SELECT*", Some(1), false).len(), 1);
        assert_eq!(History::open(&dir, "bob").tail(10).len(), 0);
    }
}
