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
    service: Option<Spanned<RawService>>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    socket: Option<Spanned<String>>,
    socket_group: Option<Spanned<String>>,
    allowed_users: Option<Vec<Spanned<String>>>,
    allowed_groups: Option<Vec<Spanned<String>>>,
    workers: Option<Spanned<i64>>,
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

/// The data service (`safe-data serve`): where it listens and who may
/// connect. Present only when the file has a `[service]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Absolute path of the Unix domain socket.
    pub socket: PathBuf,
    /// The socket is `0660 owner:group` with a group, `0666` without.
    pub socket_group: Option<String>,
    /// `None`: anyone who can open the socket (and is in `allowed_groups`,
    /// if that is set).
    pub allowed_users: Option<Vec<String>>,
    /// `None`: no group condition.
    pub allowed_groups: Option<Vec<String>>,
    /// Queries that run at once (worker processes).
    pub workers: usize,
}

/// The default size of the service's worker pool.
pub const DEFAULT_WORKERS: usize = 4;
/// The largest worker pool the configuration accepts.
pub const MAX_WORKERS: usize = 64;

/// The validated configuration. Column lists are as the owner wrote them;
/// [`crate::catalog::Catalog::open`] checks them against the sources.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub server: ServerConfig,
    pub min_group_size: u64,
    pub tables: Vec<TableConfig>,
    pub service: Option<ServiceConfig>,
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

    /// Validates `[service]`; `offset` is where the section starts.
    fn service(&self, base: &Path, offset: usize, raw: RawService) -> Result<ServiceConfig> {
        let Some(socket) = raw.socket else {
            return Err(self.err(offset, "[service] needs `socket`, the path of its Unix socket, e.g. socket = \"/run/safe-data/safe-data.sock\""));
        };
        if socket.get_ref().trim().is_empty() {
            return Err(self.err(socket.span().start, "`socket` must be a path, e.g. socket = \"/run/safe-data/safe-data.sock\""));
        }
        let name_list = |list: Option<Vec<Spanned<String>>>, key: &str| -> Result<Option<Vec<String>>> {
            let Some(list) = list else { return Ok(None) };
            let mut names = Vec::new();
            for n in list {
                if !is_account_name(n.get_ref()) {
                    return Err(self.err(n.span().start, format!("`{key}` lists OS account or group names, e.g. {key} = [\"alice\", \"bob\"]")));
                }
                names.push(n.into_inner());
            }
            Ok(Some(names))
        };
        let socket_group = match raw.socket_group {
            Some(g) if !is_account_name(g.get_ref()) => {
                return Err(self.err(g.span().start, "`socket_group` must be an OS group name, e.g. socket_group = \"scientists\""));
            }
            g => g.map(Spanned::into_inner),
        };
        let workers = self.positive(&raw.workers, "workers", DEFAULT_WORKERS as u64)? as usize;
        if workers > MAX_WORKERS {
            let at = raw.workers.as_ref().map(|w| w.span().start).unwrap_or(offset);
            return Err(self.err(at, format!("`workers` must be at most {MAX_WORKERS}")));
        }
        Ok(ServiceConfig {
            socket: base.join(socket.get_ref()),
            socket_group,
            allowed_users: name_list(raw.allowed_users, "allowed_users")?,
            allowed_groups: name_list(raw.allowed_groups, "allowed_groups")?,
            workers,
        })
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

        let service = match raw.service {
            None => None,
            Some(spanned) => Some(ctx.service(&base, spanned.span().start, spanned.into_inner())?),
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
        Ok(Config { path: path.to_path_buf(), server, min_group_size, tables, service })
    }

    /// The error for a problem found later (e.g. against the source schema).
    pub fn error_at(&self, line: usize, message: impl Into<String>) -> Error {
        Error::Config { file: self.path.display().to_string(), line, message: message.into() }
    }
}

/// A POSIX-portable account or group name (what `useradd` accepts).
fn is_account_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
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
    fn service_section_is_optional_and_validated() {
        let d = tmp("service");
        let table = "[tables.t]\nsource = \"t.csv\"\nprivacy_unit = \"id\"\n";
        assert_eq!(parse_in(&d, table).unwrap().service, None);
        let c =
            parse_in(&d, &format!("[service]\nsocket = \"run/sd.sock\"\nsocket_group = \"scientists\"\nallowed_users = [\"alice\", \"bob.smith\"]\n{table}"))
                .unwrap();
        let service = c.service.unwrap();
        assert!(service.socket.is_absolute() && service.socket.ends_with("run/sd.sock"));
        assert_eq!(service.socket_group.as_deref(), Some("scientists"));
        assert_eq!(service.allowed_users, Some(vec!["alice".to_string(), "bob.smith".to_string()]));
        assert_eq!(service.allowed_groups, None);
        assert_eq!(service.workers, DEFAULT_WORKERS);
        for (bad, line, words) in [
            ("[service]\nworkers = 2\n", 1, "needs `socket`"),
            ("[service]\nsocket = \"s\"\nworkers = 0\n", 3, "workers"),
            ("[service]\nsocket = \"s\"\nworkers = 1000\n", 3, "at most"),
            ("[service]\nsocket = \"s\"\nallowed_users = [\"al ice\"]\n", 3, "allowed_users"),
            ("[service]\nsocket = \"s\"\nsocket_group = \"\"\n", 3, "socket_group"),
            ("[service]\nsocket = \"s\"\nallowed_user = [\"alice\"]\n", 3, "allowed_users"),
        ] {
            let text = parse_in(&d, &format!("{bad}{table}")).unwrap_err().to_string();
            assert!(text.contains(&format!(":{line}:")) && text.contains(words), "{bad:?}: {text}");
        }
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
