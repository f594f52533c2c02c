//! The owner's sources: the catalog opened against its files, the scans the
//! lowering reads, and the facts about a column's values (does it repeat, is
//! it on every row) that choose how people are counted.
//!
//! Private to the policy crate but for [`Catalog`]'s opening and metadata:
//! nothing outside it can obtain a scan. Every read of data here (a CSV
//! conversion, a uniqueness check, a CSV parsed in memory) runs through
//! [`engine::collect`], under the same stop, deadline and memory budget as
//! queries.

use crate::engine::{self, CancelFlag, Limits};
use crate::error::{Error, Result, RunError};
use crate::types::sql_type_of;
use polars::prelude::*;
use safe_data_lang::catalog::{SourceColumn, Table};
use safe_data_lang::config::Config;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// A CSV conversion may take longer than a query: the owner's process does
/// it once per version of the file, before any statement runs.
const CONVERSION_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug)]
enum Source {
    Parquet(PathBuf),
    /// A CSV source converted once to Arrow IPC in `state_dir/cache`.
    Ipc(PathBuf),
    /// Parsed once per process and kept in memory (when the conversion failed).
    Csv {
        path: PathBuf,
        frame: Mutex<Option<DataFrame>>,
    },
}

/// Whether a column's values repeat, as the lowering needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uniqueness {
    /// On every row, never twice.
    Key,
    /// Never twice, but missing on some rows.
    UniqueWithNulls,
    /// Some value occurs twice, and the column is on every row.
    RepeatsComplete,
    /// Some value occurs twice, and the column is missing on some rows (or
    /// it could not be checked).
    Repeats,
}

impl Uniqueness {
    fn as_str(self) -> &'static str {
        match self {
            Uniqueness::Key => "key",
            Uniqueness::UniqueWithNulls => "unique-with-nulls",
            Uniqueness::RepeatsComplete => "repeats-complete",
            Uniqueness::Repeats => "repeats",
        }
    }

    fn parse(text: &str) -> Option<Uniqueness> {
        [Uniqueness::Key, Uniqueness::UniqueWithNulls, Uniqueness::RepeatsComplete, Uniqueness::Repeats].into_iter().find(|u| u.as_str() == text)
    }
}

/// One table's source and what is known about its columns.
#[derive(Debug)]
struct Opened {
    name: String,
    source: Source,
    /// Per source column: whether its values repeat.
    unique: Mutex<HashMap<String, Uniqueness>>,
    /// Where those verdicts are kept between processes (`state_dir/cache`).
    cache_dir: PathBuf,
}

/// The owner's catalog, opened: the binder's view of it (through `Deref`)
/// and, private to the policy, the sources behind it.
#[derive(Debug)]
pub struct Catalog {
    meta: safe_data_lang::Catalog,
    sources: Vec<Opened>,
}

impl std::ops::Deref for Catalog {
    type Target = safe_data_lang::Catalog;
    fn deref(&self) -> &safe_data_lang::Catalog {
        &self.meta
    }
}

impl Catalog {
    /// Opens every source and checks the configuration against its schema.
    pub fn open(config: Config) -> Result<Catalog> {
        let mut tables = Vec::new();
        let mut sources = Vec::new();
        let limits = Limits {
            timeout: config.server.query_timeout.max(CONVERSION_TIMEOUT),
            memory_bytes: Some((config.server.max_memory_mb as usize).saturating_mul(1 << 20)),
        };
        for t in &config.tables {
            let cache_dir = config.server.state_dir.join("cache");
            let is_csv = t.source.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
            let ipc = if is_csv { cached_ipc(&t.source, &t.name, &cache_dir, limits) } else { None };
            let schema = match &ipc {
                Some(path) => PlRefPath::try_from_path(path)
                    .and_then(|p| LazyFrame::scan_ipc(p, IpcScanOptions::default(), ipc_args()))
                    .and_then(|mut lf| lf.collect_schema()),
                None => source_schema(&t.source),
            };
            let schema = schema.map_err(|_| {
                config.error_at(
                    t.line,
                    format!(
                        "table `{}`: cannot read the schema of {}; is it a valid {} file?",
                        t.name,
                        t.source.display(),
                        if is_csv { "CSV" } else { "Parquet" }
                    ),
                )
            })?;
            let columns: Vec<SourceColumn> =
                schema.iter().map(|(name, dtype)| SourceColumn { name: name.to_string(), ty: sql_type_of(dtype), type_name: dtype.to_string() }).collect();
            tables.push(Table::from_schema(&config, t, &columns)?);
            let source = match ipc {
                Some(ipc) => Source::Ipc(ipc),
                None if is_csv => Source::Csv { path: t.source.clone(), frame: Mutex::new(None) },
                None => Source::Parquet(t.source.clone()),
            };
            sources.push(Opened { name: t.name.clone(), source, unique: Mutex::new(HashMap::new()), cache_dir });
        }
        Ok(Catalog { meta: safe_data_lang::Catalog::new(config, tables), sources })
    }

    /// Loads, validates and opens the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Catalog> {
        Catalog::open(Config::load(path)?)
    }

    /// The binder's view: names, types and roles, no data.
    pub fn schema(&self) -> &safe_data_lang::Catalog {
        &self.meta
    }

    fn opened(&self, table: &Table) -> Result<&Opened> {
        self.meta
            .tables()
            .iter()
            .position(|t| std::ptr::eq(&**t, table) || t.name == table.name)
            .and_then(|i| self.sources.get(i))
            .ok_or_else(|| RunError::Engine("internal error: a table outside the catalog").into())
    }

    /// A lazy scan of the whole source (all columns, hidden ones included:
    /// the lowering selects what it needs by name).
    pub(crate) fn scan(&self, table: &Table, guard: &Guard) -> Result<LazyFrame> {
        let opened = self.opened(table)?;
        let generic = |what: &'static str| Error::from(RunError::Source { table: opened.name.clone(), message: what });
        match &opened.source {
            Source::Parquet(path) => {
                let p = PlRefPath::try_from_path(path).map_err(|_| generic("the path is not valid"))?;
                LazyFrame::scan_parquet(p, parquet_args()).map_err(|_| generic("the Parquet file could not be opened"))
            }
            Source::Ipc(ipc) => {
                let p = PlRefPath::try_from_path(ipc).map_err(|_| generic("the path is not valid"))?;
                LazyFrame::scan_ipc(p, IpcScanOptions::default(), ipc_args()).map_err(|_| generic("the cached table could not be opened"))
            }
            Source::Csv { path, frame } => {
                let mut loaded = frame.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(df) = &*loaded {
                    return Ok(df.clone().lazy());
                }
                let reader = csv_reader(path).and_then(|r| r.finish()).map_err(|_| generic("the CSV file could not be parsed"))?;
                // A stop (interrupt, deadline, memory) is not remembered: the next statement tries again.
                let df = engine::collect(reader, &guard.cancel, guard.limits)?;
                *loaded = Some(df.clone());
                Ok(df.lazy())
            }
        }
    }

    /// Whether the non-null values of source column `name` never repeat.
    pub(crate) fn column_is_unique(&self, table: &Table, name: &str, guard: &Guard) -> bool {
        matches!(self.uniqueness(table, name, guard), Uniqueness::Key | Uniqueness::UniqueWithNulls)
    }

    /// Whether source column `name` is on every row and never repeats: a
    /// group's people are then its rows.
    pub(crate) fn column_is_key(&self, table: &Table, name: &str, guard: &Guard) -> bool {
        self.uniqueness(table, name, guard) == Uniqueness::Key
    }

    /// Whether source column `name` has a value on every row: then the
    /// people whose values feed an aggregate of it are the group's people.
    pub(crate) fn column_is_complete(&self, table: &Table, name: &str, guard: &Guard) -> bool {
        matches!(self.uniqueness(table, name, guard), Uniqueness::Key | Uniqueness::RepeatsComplete)
    }

    /// Computed once per version of the source (one pass over the column,
    /// under the query's guard) and kept in `state_dir/cache`; any failure
    /// answers `Repeats`, the always-correct slow path, and is not kept.
    /// The verdict only chooses how the lowering counts people; it never
    /// reaches the data scientist.
    fn uniqueness(&self, table: &Table, name: &str, guard: &Guard) -> Uniqueness {
        let Ok(opened) = self.opened(table) else { return Uniqueness::Repeats };
        let mut known = opened.unique.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(&verdict) = known.get(name) {
            return verdict;
        }
        let cache = source_version(table.source_path(), &(&opened.name, name)).map(|v| opened.cache_dir.join(format!("{}-{v:016x}.unique", opened.name)));
        let cached = cache.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|text| Uniqueness::parse(text.trim()));
        let verdict = match cached {
            Some(verdict) => verdict,
            None => {
                let Some(verdict) = self.count_uniqueness(table, name, guard) else { return Uniqueness::Repeats };
                if let Some(path) = &cache {
                    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                    if std::fs::write(&tmp, format!("{}\n", verdict.as_str())).is_ok() {
                        let _ = std::fs::rename(&tmp, path);
                    }
                }
                verdict
            }
        };
        known.insert(name.to_string(), verdict);
        verdict
    }

    fn count_uniqueness(&self, table: &Table, name: &str, guard: &Guard) -> Option<Uniqueness> {
        let lf = self.scan(table, guard).ok()?.select([
            col(name).drop_nulls().n_unique().cast(DataType::UInt64).alias("distinct"),
            col(name).count().cast(DataType::UInt64).alias("values"),
            len().cast(DataType::UInt64).alias("rows"),
        ]);
        let df = engine::collect(lf, &guard.cancel, guard.limits).ok()?;
        let get = |name: &str| df.column(name).ok().and_then(|c| c.u64().ok()).and_then(|c| c.get(0));
        Some(match (get("distinct"), get("values"), get("rows")) {
            (Some(d), Some(v), Some(r)) if d == v && v == r => Uniqueness::Key,
            (Some(d), Some(v), Some(_)) if d == v => Uniqueness::UniqueWithNulls,
            (Some(_), Some(v), Some(r)) if v == r => Uniqueness::RepeatsComplete,
            _ => Uniqueness::Repeats,
        })
    }
}

/// The stop flag and limits every read of data runs under.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) cancel: CancelFlag,
    pub(crate) limits: Limits,
}

/// No globbing, no hive partitions: the owner names one file.
fn parquet_args() -> ScanArgsParquet {
    ScanArgsParquet { glob: false, hive_options: HiveOptions::new_disabled(), ..Default::default() }
}

fn ipc_args() -> UnifiedScanArgs {
    UnifiedScanArgs { glob: false, hive_options: HiveOptions::new_disabled(), ..Default::default() }
}

/// Converts a CSV source to Arrow IPC under `cache_dir`, once per version of
/// the file (named by its path, size and modification time). Later opens
/// read only the IPC schema, and queries scan IPC instead of parsing text.
fn cached_ipc(csv: &Path, table: &str, cache_dir: &Path, limits: Limits) -> Option<PathBuf> {
    let ipc = cache_dir.join(format!("{table}-{:016x}.arrow", source_version(csv, &())?));
    if ipc.is_file() {
        return Some(ipc);
    }
    std::fs::create_dir_all(cache_dir).ok()?;
    let reader = csv_reader(csv).and_then(|r| r.finish()).ok()?;
    let mut df = engine::collect(reader, &CancelFlag::new(), limits).ok()?;
    let tmp = ipc.with_extension(format!("tmp{}", std::process::id()));
    let file = std::fs::File::create(&tmp).ok()?;
    if IpcWriter::new(file).finish(&mut df).is_err() || std::fs::rename(&tmp, &ipc).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return None;
    }
    Some(ipc)
}

/// A hash naming one version of a source file (its path, size and
/// modification time) and `extra`, for cache file names.
fn source_version(path: &Path, extra: &impl std::hash::Hash) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = std::fs::metadata(path).ok()?;
    let mut h = std::hash::DefaultHasher::new();
    path.hash(&mut h);
    meta.len().hash(&mut h);
    meta.modified().ok()?.hash(&mut h);
    extra.hash(&mut h);
    Some(h.finish())
}

fn csv_reader(path: &Path) -> PolarsResult<LazyCsvReader> {
    let p = PlRefPath::try_from_path(path)?;
    Ok(LazyCsvReader::new(p).with_has_header(true).with_infer_schema_length(Some(10_000)).with_try_parse_dates(true).with_glob(false))
}

fn source_schema(path: &Path) -> PolarsResult<SchemaRef> {
    let is_csv = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let mut lf = if is_csv { csv_reader(path)?.finish()? } else { LazyFrame::scan_parquet(PlRefPath::try_from_path(path)?, parquet_args())? };
    lf.collect_schema()
}
