//! The owner's policy: nothing leaves the kernel unless it releases it.
//!
//! [`Policy::run`] is the whole pipeline for one statement:
//! bind → [`check`] (static role rules) → lower (with the people-counting
//! evidence in the plan) → execute → [`release`] (k-threshold, differencing,
//! row limit) → audit → [`Released`]. The kernel renders only `Released`,
//! which only this crate can construct.

pub mod audit;
pub mod check;
pub mod error;
pub mod release;

pub use error::{Error, Result, Rule};
pub use release::{Notice, NoticeKind, Released};

use audit::{AuditLog, Entry};
use check::Level;
use release::{ReleaseInput, Verdict};
use safe_data_lang::chart::ChartKind;
use safe_data_lang::engine::{CancelFlag, Value};
use safe_data_lang::ir::{Field, FromItem, Query, SetExpr};
use safe_data_lang::lower::{Mode, lower_query};
use safe_data_lang::parse::{Parsed, Statement};
use safe_data_lang::types::SqlType;
use safe_data_lang::{Catalog, bind, engine};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Who is asking, for the audit log.
#[derive(Debug, Clone)]
pub struct Requester {
    pub user: String,
    pub session: String,
}

impl Requester {
    /// A user the caller established: the data service takes it from the
    /// socket's peer credentials (the kernel's OS account), never from
    /// anything the client says.
    pub fn new(user: impl Into<String>, session: impl Into<String>) -> Requester {
        Requester { user: user.into(), session: session.into() }
    }

    /// `JUPYTERHUB_USER`, else the OS user (`USER`, `LOGNAME`). For the
    /// one-process kernel and `safe-data query` only: these run as the data
    /// scientist, whose environment says who they are. That is a claim, not
    /// a proof; the data service (`safe-data serve`) uses [`Requester::new`]
    /// with the peer credentials instead.
    pub fn from_env(session: impl Into<String>) -> Requester {
        let user =
            std::env::var("JUPYTERHUB_USER").or_else(|_| std::env::var("USER")).or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
        Requester { user, session: session.into() }
    }
}

/// Where the policy writes its audit lines. [`Policy::run`] hands each line
/// to the sink and releases nothing unless `append` returned `Ok`: the line
/// is durable (or, for a sink that forwards it, acknowledged by the process
/// that made it durable) before the result exists for the caller.
pub trait AuditSink: Send + Sync + std::fmt::Debug {
    /// Appends one line; `Ok` only once it is written and synced.
    fn append(&self, entry: &Entry) -> std::io::Result<()>;
    /// Where the lines go, for the operator's log (a path, a pipe).
    fn describe(&self) -> String;
}

impl AuditSink for AuditLog {
    fn append(&self, entry: &Entry) -> std::io::Result<()> {
        AuditLog::append(self, entry)
    }

    fn describe(&self) -> String {
        self.path().display().to_string()
    }
}

/// The policy engine: the catalog, the owner's limits and the audit log.
#[derive(Debug)]
pub struct Policy {
    catalog: Arc<Catalog>,
    audit: Box<dyn AuditSink>,
}

impl Policy {
    /// The policy with the audit log in the catalog's `state_dir`.
    pub fn new(catalog: Arc<Catalog>) -> std::io::Result<Policy> {
        let audit = AuditLog::open(&catalog.config.server.state_dir)?;
        Ok(Policy { catalog, audit: Box::new(audit) })
    }

    /// The policy with another audit sink: a worker process of the data
    /// service sends its lines to the service, which alone appends to the
    /// hash chain. Nothing else changes: the same pipeline, the same rules.
    pub fn with_sink(catalog: Arc<Catalog>, audit: Box<dyn AuditSink>) -> Policy {
        Policy { catalog, audit }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Where the audit lines go (a path, or the service's pipe).
    pub fn audit_target(&self) -> String {
        self.audit.describe()
    }

    /// Runs one parsed statement through the whole pipeline. Spans in errors
    /// are relative to the cell (the statement's offset is applied).
    pub fn run(&self, parsed: &Parsed, who: &Requester, cancel: &CancelFlag) -> Result<Released> {
        let mut plan_hash = None;
        let outcome = self.evaluate(parsed, cancel, &mut plan_hash);
        let (verdict, rule, rows) = match &outcome {
            Ok(r) => (r.verdict(), None, r.rows().len()),
            Err(e) => (Verdict::Refused, Some(e.rule().map(|r| r.to_string()).unwrap_or_else(|| e.kind().to_string())), 0),
        };
        let entry = Entry {
            time: now_rfc3339(),
            user: who.user.clone(),
            session: who.session.clone(),
            statement: parsed.text.clone(),
            plan_hash,
            verdict,
            rule,
            rows_released: rows,
        };
        // Fail closed: no audit line, no result.
        self.append_audit(&entry)?;
        outcome.map_err(|e| e.shifted(parsed.offset))
    }

    /// Audits a cell that did not parse (nothing ran, nothing is released):
    /// every request leaves a line, refused ones included.
    pub fn record_unparsed(&self, cell: &str, who: &Requester, error: &safe_data_lang::Error) -> Result<()> {
        let entry = Entry {
            time: now_rfc3339(),
            user: who.user.clone(),
            session: who.session.clone(),
            statement: cell.to_string(),
            plan_hash: None,
            verdict: Verdict::Refused,
            rule: Some(error.kind().to_string()),
            rows_released: 0,
        };
        self.append_audit(&entry)
    }

    fn append_audit(&self, entry: &Entry) -> Result<()> {
        self.audit.append(entry).map_err(|e| {
            // The I/O error names the file and the failure, never data.
            tracing::error!("cannot append to the audit log {}: {e}", self.audit.describe());
            Error::Audit(e)
        })
    }

    fn evaluate(&self, parsed: &Parsed, cancel: &CancelFlag, plan_hash: &mut Option<String>) -> Result<Released> {
        match &parsed.statement {
            Statement::ShowTables => Ok(self.show_tables()),
            Statement::Describe { table, span } => self.describe(table, *span),
            Statement::Explain(q) => {
                let query = bind::bind_query(&self.catalog, &parsed.text, q)?;
                *plan_hash = Some(hash_plan(&query));
                Ok(self.explain(&query))
            }
            Statement::Query(q) => {
                let query = bind::bind_query(&self.catalog, &parsed.text, q)?;
                *plan_hash = Some(hash_plan(&query));
                self.run_bound(&query, cancel)
            }
            Statement::Chart { spec, query: q, text } => {
                let query = bind::bind_query(&self.catalog, text, q)?;
                if spec.kind == ChartKind::Histogram {
                    // The bins become a GROUP BY, checked and released like any other.
                    // Rewritten on the IR: any FROM (subquery, CTE, join, union) stays as bound.
                    let (binned, chart) = safe_data_lang::chart::histogram_query(spec, &query)?;
                    *plan_hash = Some(hash_plan(&binned));
                    let released = self.run_bound(&binned, cancel).map_err(|e| e.respanned(Some(query.span)))?;
                    return Ok(released.with_chart(chart));
                }
                *plan_hash = Some(hash_plan(&query));
                let columns: Vec<(String, SqlType)> = query.output().into_iter().map(|f| (f.name, f.ty)).collect();
                let chart = safe_data_lang::chart::resolve(spec, &columns)?;
                Ok(self.run_bound(&query, cancel)?.with_chart(chart))
            }
        }
    }

    /// Check → lower → execute → release, for a bound query.
    fn run_bound(&self, query: &Query, cancel: &CancelFlag) -> Result<Released> {
        let verdict = check::check(query)?;
        let mode = if verdict.level == Level::Public { Mode::Plain } else { Mode::Protected };
        let lowered = lower_query(query, mode)?;
        if lowered.row_level_protected {
            return Err(Error::refused(Rule::RawRows, "individual rows of a protected table are never released", Some(query.span)));
        }
        let server = &self.catalog.config.server;
        let limits = engine::Limits { timeout: server.query_timeout, memory_bytes: Some((server.max_memory_mb as usize).saturating_mul(1 << 20)) };
        if tracing::enabled!(tracing::Level::TRACE) {
            // The plan holds the statement's own literals and the sources' paths, never data.
            if let Ok(plan) = lowered.frame.clone().describe_optimized_plan() {
                tracing::trace!("optimized plan:\n{plan}");
            }
        }
        let df = engine::collect(lowered.frame, cancel, limits)?;
        release::release(
            &df,
            &ReleaseInput {
                level: verdict.level,
                output: &lowered.output,
                withheld: &lowered.withheld,
                whole_table: check::is_whole_table_aggregate(query),
                min_group_size: min_group_size(query, &self.catalog),
                max_rows: server.max_rows,
                span: query.span,
            },
        )
    }

    fn show_tables(&self) -> Released {
        let columns = vec![field("table", SqlType::Text), field("kind", SqlType::Text), field("description", SqlType::Text)];
        let rows = self
            .catalog
            .tables()
            .iter()
            .map(|t| {
                let kind = if t.public { "public".to_string() } else { format!("protected (k = {})", t.min_group_size) };
                vec![Value::Text(t.name.clone()), Value::Text(kind), Value::Text(t.description.clone().unwrap_or_default())]
            })
            .collect();
        Released::catalog(columns, rows)
    }

    fn describe(&self, name: &str, span: safe_data_lang::span::Span) -> Result<Released> {
        let table = self.catalog.table(name).ok_or_else(|| safe_data_lang::Error::UnknownTable { name: name.to_string(), span: Some(span) })?;
        let columns = vec![
            field("column", SqlType::Text),
            field("type", SqlType::Text),
            field("role", SqlType::Text),
            field("aggregates", SqlType::Text),
            field("bounds", SqlType::Text),
            field("join_key", SqlType::Boolean),
            field("description", SqlType::Text),
        ];
        let rows = table
            .columns
            .iter()
            .map(|c| {
                let role = if table.public { "public".to_string() } else { c.role.to_string() };
                vec![
                    Value::Text(c.name.clone()),
                    Value::Text(c.ty.to_string()),
                    Value::Text(role),
                    Value::Text(safe_data_lang::services::allowed_aggregates(table, c).join(", ")),
                    // Catalog tables show an absent setting as empty, not as a NULL value.
                    Value::Text(c.bounds.map(|(lo, hi)| format!("[{lo}, {hi}]")).unwrap_or_default()),
                    Value::Boolean(table.join_keys.iter().any(|k| k.eq_ignore_ascii_case(&c.name))),
                    Value::Text(c.description.clone().unwrap_or_default()),
                ]
            })
            .collect();
        Ok(Released::catalog(columns, rows))
    }

    fn explain(&self, query: &Query) -> Released {
        let verdict = match check::check(query) {
            Ok(v) => match v.level {
                Level::Public => "allowed: public data only, released as is (up to the row limit)".to_string(),
                Level::Aggregated => format!(
                    "allowed: aggregated; each group is released only if it rests on at least {} people (per aggregate and per UNION ALL branch) and its filters removed rows of none or at least that many; withheld groups feed nothing after their aggregation",
                    min_group_size(query, &self.catalog)
                ),
                Level::RowLevel => "refused".to_string(),
            },
            Err(e) => format!("refused ({}): {e}", e.rule().map(|r| r.to_string()).unwrap_or_default()),
        };
        let columns: Vec<String> = query.output().iter().map(|f| format!("{} {}", f.name, f.ty)).collect();
        Released::explanation(format!("plan:    {query}\ncolumns: {}\npolicy:  {verdict}\n", columns.join(", ")))
    }
}

fn field(name: &str, ty: SqlType) -> Field {
    Field { name: name.to_string(), ty }
}

/// The strictest k of the protected tables a query reads.
fn min_group_size(query: &Query, catalog: &Catalog) -> u64 {
    fn visit_query(q: &Query, k: &mut u64) {
        visit_set(&q.body, k);
    }
    fn visit_set(s: &SetExpr, k: &mut u64) {
        match s {
            SetExpr::Select(s) => {
                if let Some(f) = &s.from {
                    visit_from(f, k);
                }
            }
            SetExpr::Union { left, right, .. } => {
                visit_set(left, k);
                visit_set(right, k);
            }
            SetExpr::Query(q) => visit_query(q, k),
        }
    }
    fn visit_from(f: &FromItem, k: &mut u64) {
        match f {
            FromItem::Table { table, .. } => {
                if !table.public {
                    *k = (*k).max(table.min_group_size);
                }
            }
            FromItem::Derived { query, .. } => visit_query(query, k),
            FromItem::Join { left, right, .. } => {
                visit_from(left, k);
                visit_from(right, k);
            }
        }
    }
    let mut k = 0;
    visit_query(query, &mut k);
    if k == 0 { catalog.config.min_group_size } else { k }
}

/// SHA-256 of the canonical SQL of the bound plan.
pub fn hash_plan(query: &Query) -> String {
    hex::encode(Sha256::digest(query.to_string().as_bytes()))
}

/// Current UTC time as RFC 3339 with microseconds.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let micros = now.as_micros() as i64;
    let text = engine::format_timestamp(micros);
    format!("{}.{:06}Z", text.replace(' ', "T"), micros.rem_euclid(1_000_000))
}
