//! The catalog: the owner's tables, opened against their sources.
//!
//! A [`Table`] exposes only its *visible* columns (identifiers, dimensions,
//! measures). Hidden columns — listed as hidden or not listed at all — are
//! not in [`Table::columns`], so the binder cannot resolve them and no plan
//! can ever contain them; only the privacy unit column is read internally,
//! for counting people.

use crate::config::{Config, Role, TableConfig};
use crate::error::{Error, Result};
use crate::ir::AggFunc;
use crate::types::SqlType;
use polars::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// A column a query may reference.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: SqlType,
    pub role: Role,
    pub bounds: Option<(f64, f64)>,
    /// Aggregates allowed beyond the role's defaults.
    pub aggregates: Vec<AggFunc>,
    pub description: Option<String>,
}

#[derive(Debug)]
enum Source {
    Parquet(PathBuf),
    /// A CSV source converted once to Arrow IPC in `state_dir/cache`.
    Ipc {
        csv: PathBuf,
        ipc: PathBuf,
    },
    /// Parsed once per kernel and kept in memory.
    Csv {
        path: PathBuf,
        frame: OnceLock<std::result::Result<DataFrame, String>>,
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

#[derive(Debug)]
pub struct Table {
    pub name: String,
    pub description: Option<String>,
    /// A reference table without restrictions.
    pub public: bool,
    pub min_group_size: u64,
    /// The column that identifies a person (may itself be hidden).
    pub privacy_unit: Option<String>,
    pub join_keys: Vec<String>,
    /// Visible columns only, in source order.
    pub columns: Vec<Column>,
    source: Source,
    /// Per source column: whether its values repeat (see [`Table::column_is_unique`]).
    unique: Mutex<HashMap<String, Uniqueness>>,
    /// Where those verdicts are kept between kernels (`state_dir/cache`).
    cache_dir: PathBuf,
}

impl Table {
    pub fn column(&self, name: &str) -> Option<(usize, &Column)> {
        self.columns.iter().enumerate().find(|(_, c)| c.name.eq_ignore_ascii_case(name))
    }

    pub fn source_path(&self) -> &Path {
        match &self.source {
            Source::Parquet(p) | Source::Csv { path: p, .. } | Source::Ipc { csv: p, .. } => p,
        }
    }

    /// Whether the privacy unit never repeats (one row per person). Then
    /// counting the people of a group needs no distinct count: every kept row
    /// with a unit is another person.
    pub fn unit_is_unique(&self) -> bool {
        self.privacy_unit.as_deref().is_some_and(|unit| self.column_is_unique(unit))
    }

    /// Whether every row has a privacy unit and none repeats: then a group's
    /// people are its rows, counted without reading the unit at all.
    pub fn unit_is_row_key(&self) -> bool {
        self.privacy_unit.as_deref().is_some_and(|unit| self.uniqueness(unit) == Uniqueness::Key)
    }

    /// Whether the non-null values of source column `name` never repeat.
    pub fn column_is_unique(&self, name: &str) -> bool {
        matches!(self.uniqueness(name), Uniqueness::Key | Uniqueness::UniqueWithNulls)
    }

    /// Whether source column `name` has a value on every row: then the
    /// people whose values feed an aggregate of it are the group's people,
    /// and the lowering need not count them apart. (Checked in the same pass
    /// as [`Table::column_is_unique`].)
    pub fn column_is_complete(&self, name: &str) -> bool {
        matches!(self.uniqueness(name), Uniqueness::Key | Uniqueness::RepeatsComplete)
    }

    /// Computed once per version of the source (one pass over the column)
    /// and kept in `state_dir/cache`; any failure answers `Repeats`, the
    /// always-correct slow path. The verdict only chooses how the lowering
    /// counts people; it never reaches the data scientist.
    fn uniqueness(&self, name: &str) -> Uniqueness {
        let mut known = self.unique.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(&verdict) = known.get(name) {
            return verdict;
        }
        let cache = source_version(self.source_path(), &(&self.name, name)).map(|v| self.cache_dir.join(format!("{}-{v:016x}.unique", self.name)));
        let cached = cache.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|text| Uniqueness::parse(text.trim()));
        let verdict = match cached {
            Some(verdict) => verdict,
            None => {
                let verdict = self.count_uniqueness(name);
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

    fn count_uniqueness(&self, name: &str) -> Uniqueness {
        let counted = self.scan().ok().and_then(|lf| {
            lf.select([
                col(name).drop_nulls().n_unique().cast(DataType::UInt64).alias("distinct"),
                col(name).count().cast(DataType::UInt64).alias("values"),
                len().cast(DataType::UInt64).alias("rows"),
            ])
            .collect()
            .ok()
        });
        let Some(df) = counted else { return Uniqueness::Repeats };
        let get = |name: &str| df.column(name).ok().and_then(|c| c.u64().ok()).and_then(|c| c.get(0));
        match (get("distinct"), get("values"), get("rows")) {
            (Some(d), Some(v), Some(r)) if d == v && v == r => Uniqueness::Key,
            (Some(d), Some(v), Some(_)) if d == v => Uniqueness::UniqueWithNulls,
            (Some(_), Some(v), Some(r)) if v == r => Uniqueness::RepeatsComplete,
            _ => Uniqueness::Repeats,
        }
    }

    /// A lazy scan of the whole source (all columns, including hidden ones:
    /// callers select what they need by name, and only the lowering does).
    pub(crate) fn scan(&self) -> Result<LazyFrame> {
        let generic = |what: &str| Error::Source { table: self.name.clone(), message: what.to_string() };
        match &self.source {
            Source::Parquet(path) => {
                let p = PlRefPath::try_from_path(path).map_err(|_| generic("the path is not valid"))?;
                LazyFrame::scan_parquet(p, parquet_args()).map_err(|_| generic("the Parquet file could not be opened"))
            }
            Source::Ipc { ipc, .. } => {
                let p = PlRefPath::try_from_path(ipc).map_err(|_| generic("the path is not valid"))?;
                LazyFrame::scan_ipc(p, IpcScanOptions::default(), ipc_args()).map_err(|_| generic("the cached table could not be opened"))
            }
            Source::Csv { path, frame } => {
                let loaded = frame.get_or_init(|| {
                    csv_reader(path).and_then(|r| r.finish()).and_then(|lf| lf.collect()).map_err(|_| "the CSV file could not be parsed".to_string())
                });
                match loaded {
                    Ok(df) => Ok(df.clone().lazy()),
                    Err(m) => Err(generic(m)),
                }
            }
        }
    }
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
fn cached_ipc(csv: &Path, table: &str, cache_dir: &Path) -> Option<PathBuf> {
    let ipc = cache_dir.join(format!("{table}-{:016x}.arrow", source_version(csv, &())?));
    if ipc.is_file() {
        return Some(ipc);
    }
    std::fs::create_dir_all(cache_dir).ok()?;
    let mut df = csv_reader(csv).and_then(|r| r.finish()).and_then(|lf| lf.collect()).ok()?;
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

/// The owner's configuration with every table opened and checked.
#[derive(Debug)]
pub struct Catalog {
    pub config: Config,
    tables: Vec<Arc<Table>>,
}

impl Catalog {
    /// Opens every source and checks the configuration against its schema.
    pub fn open(config: Config) -> Result<Catalog> {
        let mut tables = Vec::new();
        for t in &config.tables {
            tables.push(Arc::new(open_table(&config, t)?));
        }
        Ok(Catalog { config, tables })
    }

    /// Loads, validates and opens the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Catalog> {
        Catalog::open(Config::load(path)?)
    }

    pub fn tables(&self) -> &[Arc<Table>] {
        &self.tables
    }

    pub fn table(&self, name: &str) -> Option<&Arc<Table>> {
        self.tables.iter().find(|t| t.name.eq_ignore_ascii_case(name))
    }
}

fn open_table(config: &Config, t: &TableConfig) -> Result<Table> {
    let is_csv = t.source.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let ipc = if is_csv { cached_ipc(&t.source, &t.name, &config.server.state_dir.join("cache")) } else { None };
    let schema = match &ipc {
        Some(path) => {
            PlRefPath::try_from_path(path).and_then(|p| LazyFrame::scan_ipc(p, IpcScanOptions::default(), ipc_args())).and_then(|mut lf| lf.collect_schema())
        }
        None => source_schema(&t.source),
    };
    let schema = schema.map_err(|_| {
        config.error_at(
            t.line,
            format!(
                "table `{}`: cannot read the schema of {}; is it a valid {} file?",
                t.name,
                t.source.display(),
                if t.source.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) { "CSV" } else { "Parquet" }
            ),
        )
    })?;
    let names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
    let known = |col: &str| names.iter().any(|n| n == col);
    let list = names.join(", ");
    for (col, c) in &t.columns {
        if !known(col) {
            return Err(config.error_at(c.line, format!("table `{}` has no column `{col}`; its source has: {list}", t.name)));
        }
    }
    if let Some(unit) = &t.privacy_unit
        && !known(unit)
    {
        return Err(config.error_at(t.line, format!("table `{}`: privacy_unit `{unit}` is not a column; its source has: {list}", t.name)));
    }
    for key in &t.join_keys {
        if !known(key) {
            return Err(config.error_at(t.line, format!("table `{}`: join key `{key}` is not a column; its source has: {list}", t.name)));
        }
        let role = t.columns.get(key).map(|c| c.role);
        if !t.public && !matches!(role, Some(Role::Identifier | Role::Dimension)) {
            return Err(config.error_at(
                t.line,
                format!("table `{}`: join key `{key}` must be listed as an identifier or dimension column, e.g. {key} = {{ role = \"identifier\" }}", t.name),
            ));
        }
    }
    let mut columns = Vec::new();
    for (name, dtype) in schema.iter() {
        let listed = t.columns.get(name.as_str());
        // Fail closed: unlisted columns of protected tables are hidden.
        let role = match listed {
            Some(c) => c.role,
            None if t.public => Role::Dimension,
            None => Role::Hidden,
        };
        if role == Role::Hidden {
            continue;
        }
        let Some(ty) = SqlType::from_polars(dtype) else {
            if listed.is_some() {
                return Err(config.error_at(
                    listed.map(|c| c.line).unwrap_or(t.line),
                    format!("table `{}`: column `{name}` has type {dtype}, which Safe Data cannot expose; mark it hidden", t.name),
                ));
            }
            continue;
        };
        if let Some(c) = listed
            && c.bounds.is_some()
            && !ty.is_numeric()
        {
            return Err(config.error_at(c.line, format!("table `{}`: column `{name}` is {ty}; bounds only apply to numeric columns", t.name)));
        }
        columns.push(Column {
            name: name.to_string(),
            ty,
            role,
            bounds: listed.and_then(|c| c.bounds),
            aggregates: listed.map(|c| c.aggregates.clone()).unwrap_or_default(),
            description: listed.and_then(|c| c.description.clone()),
        });
    }
    let source = if let Some(ipc) = ipc {
        Source::Ipc { csv: t.source.clone(), ipc }
    } else if is_csv {
        Source::Csv { path: t.source.clone(), frame: OnceLock::new() }
    } else {
        Source::Parquet(t.source.clone())
    };
    Ok(Table {
        name: t.name.clone(),
        description: t.description.clone(),
        public: t.public,
        min_group_size: t.min_group_size,
        privacy_unit: t.privacy_unit.clone(),
        join_keys: t.join_keys.clone(),
        columns,
        source,
        unique: Mutex::new(HashMap::new()),
        cache_dir: config.server.state_dir.join("cache"),
    })
}
