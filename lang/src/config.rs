//! The owner's TOML configuration: server settings, default policy, and the
//! catalog of tables with the role of every column.
//!
//! This module only reads and validates the file; it does not give the roles
//! their meaning (that is the `policy` crate) and does not open the data
//! sources (that is [`crate::catalog`]). Every mistake is reported with the
//! file, the line, and what to write instead.

use crate::error::{Error, Result};
use crate::ir::AggFunc;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// What a column may be used for. Columns the file does not list are `Hidden`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Identifies a person: only a join key or inside `COUNT(DISTINCT ..)`.
    Identifier,
    /// Cannot be referenced at all; indistinguishable from a missing column.
    Hidden,
    /// May be filtered, grouped, ordered, output as a group key and aggregated.
    Dimension,
    /// Only inside an allowed aggregate.
    Measure,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Identifier => "identifier",
            Role::Hidden => "hidden",
            Role::Dimension => "dimension",
            Role::Measure => "measure",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    tables: BTreeMap<String, Spanned<RawTable>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    display_name: Option<String>,
    state_dir: Option<String>,
    max_rows: Option<Spanned<i64>>,
    query_timeout_s: Option<Spanned<i64>>,
    max_memory_mb: Option<Spanned<i64>>,
    max_message_mb: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    min_group_size: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    source: Spanned<String>,
    description: Option<String>,
    privacy_unit: Option<Spanned<String>>,
    min_group_size: Option<Spanned<i64>>,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    join_keys: Vec<Spanned<String>>,
    #[serde(default)]
    columns: BTreeMap<String, Spanned<RawColumn>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    role: Role,
    bounds: Option<Spanned<Vec<f64>>>,
    #[serde(default)]
    aggregates: Vec<Spanned<String>>,
    description: Option<String>,
}

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub display_name: String,
    /// Absolute; holds the audit log, history and caches.
    pub state_dir: PathBuf,
    pub max_rows: usize,
    pub query_timeout: Duration,
    pub max_memory_mb: u64,
    /// Larger Jupyter messages are dropped unread.
    pub max_message_mb: u64,
}

/// The validated configuration. Column lists are as the owner wrote them;
/// [`crate::catalog::Catalog::open`] checks them against the sources.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub min_group_size: u64,
    pub tables: Vec<TableConfig>,
}

#[derive(Debug, Clone)]
pub struct TableConfig {
    pub name: String,
    pub source: PathBuf,
    pub description: Option<String>,
    pub privacy_unit: Option<String>,
    pub min_group_size: u64,
    pub public: bool,
    pub join_keys: Vec<String>,
    pub columns: BTreeMap<String, ColumnConfig>,
    /// 1-based line of the table's section, for later errors.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct ColumnConfig {
    pub role: Role,
    pub bounds: Option<(f64, f64)>,
    /// Aggregates the owner allows beyond the role's defaults.
    pub aggregates: Vec<AggFunc>,
    pub description: Option<String>,
    pub line: usize,
}

/// The default memory budget: half of the machine's memory, at most 8 GiB.
fn default_max_memory_mb() -> u64 {
    let total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok())))
        .unwrap_or(4 * 1024 * 1024);
    (total_kb / 1024 / 2).clamp(512, 8192)
}

struct Ctx<'a> {
    file: String,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn err(&self, offset: usize, message: impl Into<String>) -> Error {
        Error::Config { file: self.file.clone(), line: self.line_of(offset), message: message.into() }
    }

    fn positive(&self, value: &Option<Spanned<i64>>, key: &str, default: u64) -> Result<u64> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() >= 1 => Ok(*v.get_ref() as u64),
            Some(v) => Err(self.err(v.span().start, format!("`{key}` must be a whole number of at least 1"))),
        }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read the configuration file: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validates configuration `text` as if read from `path` (relative paths
    /// in it are resolved against the file's folder).
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let ctx = Ctx { file: path.display().to_string(), text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| ctx.line_of(s.start)).unwrap_or(0);
            Error::Config { file: ctx.file.clone(), line, message: e.message().trim().to_string() }
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let base = std::fs::canonicalize(&base).unwrap_or(base);

        let min_group_size = ctx.positive(&raw.policy.min_group_size, "min_group_size", 10)?;
        let max_rows = ctx.positive(&raw.server.max_rows, "max_rows", 1000)? as usize;
        let timeout = ctx.positive(&raw.server.query_timeout_s, "query_timeout_s", 60)?;
        let max_memory_mb = ctx.positive(&raw.server.max_memory_mb, "max_memory_mb", default_max_memory_mb())?;
        let max_message_mb = ctx.positive(&raw.server.max_message_mb, "max_message_mb", 64)?;
        let server = ServerConfig {
            display_name: raw.server.display_name.unwrap_or_else(|| "Safe Data".to_string()),
            state_dir: base.join(raw.server.state_dir.as_deref().unwrap_or("state")),
            max_rows,
            query_timeout: Duration::from_secs(timeout),
            max_memory_mb,
            max_message_mb,
        };

        let mut tables = Vec::new();
        for (name, spanned) in raw.tables {
            let offset = spanned.span().start;
            let t = spanned.into_inner();
            if !is_identifier(&name) {
                return Err(ctx.err(offset, format!("table name `{name}` must be a plain identifier (letters, digits, underscores), e.g. [tables.patients]")));
            }
            let source = t.source.get_ref();
            let lower = source.to_ascii_lowercase();
            if !(lower.ends_with(".parquet") || lower.ends_with(".csv")) {
                return Err(
                    ctx.err(t.source.span().start, format!("table `{name}`: source must be a .parquet or .csv file, e.g. source = \"data/{name}.parquet\""))
                );
            }
            let source_path = base.join(source);
            if !source_path.is_file() {
                return Err(ctx.err(
                    t.source.span().start,
                    format!("table `{name}`: source file {} does not exist (paths are relative to the configuration file)", source_path.display()),
                ));
            }
            let mut columns = BTreeMap::new();
            for (col, spanned_col) in t.columns {
                let col_offset = spanned_col.span().start;
                let c = spanned_col.into_inner();
                let bounds = match c.bounds {
                    None => None,
                    Some(b) => {
                        let v = b.get_ref();
                        if v.len() != 2 || !v.iter().all(|x| x.is_finite()) || v[0] > v[1] {
                            return Err(ctx.err(
                                b.span().start,
                                format!("column `{name}.{col}`: bounds must be two finite numbers [low, high] with low <= high, e.g. bounds = [0, 120]"),
                            ));
                        }
                        Some((v[0], v[1]))
                    }
                };
                let mut aggregates = Vec::new();
                for a in &c.aggregates {
                    let f = AggFunc::from_config_name(a.get_ref()).ok_or_else(|| {
                        ctx.err(
                            a.span().start,
                            format!("column `{name}.{col}`: unknown aggregate `{}`; write one of {}", a.get_ref(), AggFunc::CONFIG_NAMES.join(", ")),
                        )
                    })?;
                    aggregates.push(f);
                }
                if !aggregates.is_empty() && !matches!(c.role, Role::Measure | Role::Dimension) {
                    return Err(ctx.err(col_offset, format!("column `{name}.{col}`: `aggregates` only applies to measure and dimension columns")));
                }
                columns.insert(col, ColumnConfig { role: c.role, bounds, aggregates, description: c.description, line: ctx.line_of(col_offset) });
            }
            if !t.public && t.privacy_unit.is_none() {
                return Err(ctx.err(
                    offset,
                    format!("table `{name}` needs `privacy_unit = \"<column that identifies a person>\"`, or `public = true` for a reference table"),
                ));
            }
            let min_group_size = ctx.positive(&t.min_group_size, "min_group_size", min_group_size)?;
            tables.push(TableConfig {
                name,
                source: source_path,
                description: t.description,
                privacy_unit: t.privacy_unit.map(Spanned::into_inner),
                min_group_size,
                public: t.public,
                join_keys: t.join_keys.into_iter().map(Spanned::into_inner).collect(),
                columns,
                line: ctx.line_of(offset),
            });
        }
        if tables.is_empty() {
            return Err(Error::Config { file: ctx.file.clone(), line: 0, message: "no tables: add a [tables.<name>] section with a `source`".into() });
        }
        Ok(Config { path: path.to_path_buf(), server, min_group_size, tables })
    }

    /// The error for a problem found later (e.g. against the source schema).
    pub(crate) fn error_at(&self, line: usize, message: impl Into<String>) -> Error {
        Error::Config { file: self.path.display().to_string(), line, message: message.into() }
    }
}

pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(dir: &Path, text: &str) -> Result<Config> {
        std::fs::write(dir.join("t.csv"), "id,age\n1,30\n").unwrap();
        Config::parse(&dir.join("safe-data.toml"), text)
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sd-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let d = tmp("min");
        let c = parse_in(&d, "[tables.t]\nsource = \"t.csv\"\nprivacy_unit = \"id\"\n").unwrap();
        assert_eq!(c.min_group_size, 10);
        assert_eq!(c.server.max_rows, 1000);
        assert_eq!(c.tables[0].min_group_size, 10);
        assert!(c.server.state_dir.ends_with("state"));
    }

    #[test]
    fn unknown_key_names_line_and_alternatives() {
        let d = tmp("unknown");
        let err = parse_in(&d, "[tables.t]\nsource = \"t.csv\"\nprivacy_unit = \"id\"\nmin_grup_size = 3\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains(":4:"), "{text}");
        assert!(text.contains("min_group_size"), "{text}");
    }

    #[test]
    fn bad_bounds_and_missing_source_and_unit() {
        let d = tmp("bad");
        let err = parse_in(&d, "[tables.t]\nsource = \"t.csv\"\nprivacy_unit = \"id\"\n[tables.t.columns]\nage = { role = \"measure\", bounds = [5, 1] }\n")
            .unwrap_err();
        assert!(err.to_string().contains(":5:") && err.to_string().contains("bounds"), "{err}");
        let err = parse_in(&d, "[tables.t]\nsource = \"nope.csv\"\nprivacy_unit = \"id\"\n").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let err = parse_in(&d, "[tables.t]\nsource = \"t.csv\"\n").unwrap_err();
        assert!(err.to_string().contains("privacy_unit"), "{err}");
        let err = parse_in(&d, "[tables.t]\nsource = \"t.csv\"\nprivacy_unit = \"id\"\n[tables.t.columns]\nage = { role = \"boss\" }\n").unwrap_err();
        assert!(err.to_string().contains("identifier"), "{err}");
        let err =
            parse_in(&d, "[tables.t]\nsource = \"t.csv\"\nprivacy_unit = \"id\"\n[tables.t.columns]\nage = { role = \"measure\", aggregates = [\"mode\"] }\n")
                .unwrap_err();
        assert!(err.to_string().contains("median"), "{err}");
    }
}
