//! The owner's policy: nothing leaves the kernel unless it releases it.
//!
//! [`Policy::run`] is the whole pipeline for one statement:
//! bind → [`check`] (static role rules) → the evidence plan → lower (with the
//! people-counting evidence in the plan) → execute → [`release`]
//! (k-threshold, differencing, row limit) → audit → [`Outcome`]. The kernel
//! renders only [`Released`], which only this crate can construct.
//!
//! This crate is also the only one that can turn a query into data: the
//! lowering, the engine and the sources are private modules, and the
//! catalog's scans are `pub(crate)`. Code outside it cannot obtain a row of a
//! protected table; for example, the lowering is not reachable:
//!
//! ```compile_fail
//! // error[E0603]: module `lower` is private
//! use safe_data_policy::lower::lower_query;
//! ```
//!
//! nor the engine that collects a plan:
//!
//! ```compile_fail
//! use safe_data_policy::engine::collect;
//! ```
//!
//! nor a catalog's scan of a source:
//!
//! ```compile_fail
//! fn rows(c: &safe_data_policy::Catalog, t: &safe_data_lang::catalog::Table) {
//!     let guard = todo!();
//!     let _ = c.scan(t, guard); // error[E0624]: method `scan` is private
//! }
//! ```
//!
//! and a [`Released`] cannot be built outside it:
//!
//! ```compile_fail
//! let r = safe_data_policy::Released::catalog(vec![], vec![]);
//! ```

pub mod audit;
pub mod check;
mod engine;
pub mod error;
mod evidence;
mod lower;
pub mod release;
mod sources;
mod types;

pub use engine::{CancelFlag, Limits};
pub use error::{Error, Result, Rule, RunError};
pub use release::{Notice, NoticeKind, Released};
pub use sources::Catalog;

/// Process-wide controls of the engine, for the processes that run queries
/// (the embedded kernel, a service worker, `safe-data query`). They stop
/// queries; they never give access to data.
pub mod runtime {
    pub use crate::engine::{enable_aborts, self_interrupted_recently, set_memory_gauge};
}

use audit::{AuditLog, Entry};
use check::Level;
use evidence::Evidence;
use lower::lower_query;
use release::{ReleaseInput, Verdict};
use safe_data_lang::bind;
use safe_data_lang::chart::ChartKind;
use safe_data_lang::ir::{Field, Query};
use safe_data_lang::parse::{Parsed, Statement};
use safe_data_lang::types::SqlType;
use safe_data_lang::value::Value;
use sha2::{Digest, Sha256};
use sources::Guard;
use std::sync::Arc;

/// Check → evidence plan → lower: the steps every run, EXPLAIN and the fuzz
/// targets' plan inspection share (the row-level second lock is the run's).
fn check_and_lower(catalog: &Catalog, query: &Query, guard: &Guard) -> Result<(Evidence, lower::Lowered)> {
    let verdict = check::check(query)?;
    let evidence = Evidence::for_query(query, &verdict, catalog.config.min_group_size)?;
    let lowered = lower_query(query, &evidence, catalog, guard)?;
    Ok((evidence, lowered))
}

/// Completion at `cursor`: names of tables, visible columns, functions and
/// keywords (never a value).
pub fn complete(catalog: &Catalog, code: &str, cursor: usize) -> safe_data_lang::services::Completion {
    safe_data_lang::services::complete(catalog, code, cursor)
}

/// Inspection text for the word at `cursor`, listing the aggregates the
/// check allows ([`check::allowed_aggregates`], the rule the check applies).
pub fn inspect(catalog: &Catalog, code: &str, cursor: usize) -> Option<String> {
    safe_data_lang::services::inspect(catalog, code, cursor, &check::allowed_aggregates)
}

/// What one statement gives the client. Shaped for what comes: an owner
/// approval will add a pending request, differential privacy its budget
/// notices (on the `Released`).
#[derive(Debug)]
#[must_use]
// One per statement, moved once to the renderer: not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// The result, with its notices.
    Released(Released),
    /// Nothing is released, and why: a refusal of the policy, an error in
    /// the statement, a stopped query, or an audit log that cannot be written.
    Refused(Error),
}

impl Outcome {
    pub fn into_result(self) -> Result<Released> {
        match self {
            Outcome::Released(r) => Ok(r),
            Outcome::Refused(e) => Err(e),
        }
    }

    pub fn released(&self) -> Option<&Released> {
        match self {
            Outcome::Released(r) => Some(r),
            Outcome::Refused(_) => None,
        }
    }
}

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
    pub fn run(&self, parsed: &Parsed, who: &Requester, cancel: &CancelFlag) -> Outcome {
        match self.run_audited(parsed, who, cancel) {
            Ok(released) => Outcome::Released(released),
            Err(e) => Outcome::Refused(e),
        }
    }

    fn run_audited(&self, parsed: &Parsed, who: &Requester, cancel: &CancelFlag) -> Result<Released> {
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
                Ok(self.explain(&query, cancel))
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

    /// The guard every read of data for one statement runs under.
    fn guard(&self, cancel: &CancelFlag) -> Guard {
        let server = &self.catalog.config.server;
        Guard {
            cancel: cancel.clone(),
            limits: Limits { timeout: server.query_timeout, memory_bytes: Some((server.max_memory_mb as usize).saturating_mul(1 << 20)) },
        }
    }

    /// Check → evidence plan → lower: what runs, or why nothing does. EXPLAIN
    /// stops here, so it says exactly what execution would.
    fn plan(&self, query: &Query, guard: &Guard) -> Result<(Evidence, lower::Lowered)> {
        let (evidence, lowered) = check_and_lower(&self.catalog, query, guard)?;
        if lowered.row_level_protected {
            return Err(Error::refused(Rule::RawRows, "individual rows of a protected table are never released", Some(query.span)));
        }
        Ok((evidence, lowered))
    }

    /// Check → lower → execute → release, for a bound query.
    fn run_bound(&self, query: &Query, cancel: &CancelFlag) -> Result<Released> {
        let guard = self.guard(cancel);
        let (evidence, lowered) = self.plan(query, &guard)?;
        if tracing::enabled!(tracing::Level::TRACE) {
            // The plan holds the statement's own literals and the sources' paths, never data.
            if let Ok(plan) = lowered.frame.clone().describe_optimized_plan() {
                tracing::trace!("optimized plan:\n{plan}");
            }
        }
        let df = engine::collect(lowered.frame, &guard.cancel, guard.limits)?;
        release::release(
            &df,
            &ReleaseInput {
                level: evidence.level(),
                output: &lowered.output,
                withheld: &lowered.withheld,
                whole_table: check::is_whole_table_aggregate(query),
                min_group_size: evidence.min_group_size(),
                max_rows: self.catalog.config.server.max_rows,
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
                    Value::Text(check::allowed_aggregates(table, c).join(", ")),
                    // Catalog tables show an absent setting as empty, not as a NULL value.
                    Value::Text(c.bounds.map(|(lo, hi)| format!("[{lo}, {hi}]")).unwrap_or_default()),
                    Value::Boolean(table.join_keys.iter().any(|k| k.eq_ignore_ascii_case(&c.name))),
                    Value::Text(c.description.clone().unwrap_or_default()),
                ]
            })
            .collect();
        Ok(Released::catalog(columns, rows))
    }

    /// The plan, and the policy's verdict from the same check, evidence plan
    /// and lowering that execution uses (nothing runs but the uniqueness
    /// facts that choose how people are counted).
    fn explain(&self, query: &Query, cancel: &CancelFlag) -> Released {
        let verdict = match self.plan(query, &self.guard(cancel)) {
            Ok((evidence, _)) => match evidence.level() {
                Level::Public => "allowed: public data only, released as is (up to the row limit)".to_string(),
                Level::Aggregated => format!(
                    "allowed: aggregated; each group is released only if it rests on at least {} people (per aggregate and per UNION ALL branch) and its filters removed rows of none or at least that many; withheld groups feed nothing after their aggregation",
                    evidence.min_group_size()
                ),
                Level::RowLevel => "refused".to_string(),
            },
            Err(e) => match e.rule() {
                Some(rule) => format!("refused ({rule}): {e}"),
                None => format!("refused ({}): {e}", e.kind()),
            },
        };
        let columns: Vec<String> = query.output().iter().map(|f| format!("{} {}", f.name, f.ty)).collect();
        Released::explanation(format!("plan:    {query}\ncolumns: {}\npolicy:  {verdict}\n", columns.join(", ")))
    }
}

fn field(name: &str, ty: SqlType) -> Field {
    Field { name: name.to_string(), ty }
}

/// SHA-256 of the canonical SQL of the bound plan.
pub fn hash_plan(query: &Query) -> String {
    hex::encode(Sha256::digest(query.to_string().as_bytes()))
}

/// Current UTC time as RFC 3339 with microseconds.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let micros = now.as_micros() as i64;
    let text = safe_data_lang::value::format_timestamp(micros);
    format!("{}.{:06}Z", text.replace(' ', "T"), micros.rem_euclid(1_000_000))
}

/// What a fuzz target may see of a statement's plan: its text and the
/// names of its columns, never data. For `fuzz/` and the corpus replay only
/// (they check that no hidden column name reaches a plan, and that a query
/// the check calls public scans no protected table).
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct PlanText {
    /// The check called the query public.
    pub public: bool,
    /// `describe_plan` of the lowered frame, when polars can describe it.
    pub plan: Option<String>,
    /// The optimized plan's text, and each node's kind and column names.
    pub optimized: Option<(String, PlanNodes)>,
    /// The names of the frame's columns, when its schema resolves.
    pub columns: Option<Vec<String>>,
    /// How many columns the statement outputs.
    pub outputs: usize,
}

/// Each node of an optimized plan: its kind and its columns' names.
#[doc(hidden)]
pub type PlanNodes = Vec<(&'static str, Vec<String>)>;

/// The internal columns a lowered frame carries besides the outputs.
#[doc(hidden)]
pub const PLAN_INTERNAL_COLUMNS: [&str; 3] = [lower::POINT, lower::WITHHELD_THIN, lower::WITHHELD_DIFF];

/// Check → evidence plan → lower, as [`Policy::run`] does before executing,
/// and the plan described (see [`PlanText`]).
#[doc(hidden)]
pub fn plan_text(catalog: &Catalog, query: &Query) -> Result<PlanText> {
    let guard = Guard { cancel: CancelFlag::new(), limits: Limits::time_only(catalog.config.server.query_timeout) };
    let (evidence, lowered) = check_and_lower(catalog, query, &guard)?;
    let optimized = lowered.frame.clone().to_alp_optimized().ok().map(|optimized| {
        let mut nodes = Vec::new();
        let mut stack = vec![optimized.lp_top];
        while let Some(node) = stack.pop() {
            let ir = optimized.lp_arena.get(node);
            let kind: &'static str = ir.into();
            let schema = ir.schema(&optimized.lp_arena);
            nodes.push((kind, schema.iter_names().map(|n| n.to_string()).collect()));
            stack.extend(ir.inputs());
        }
        (optimized.describe(), nodes)
    });
    Ok(PlanText {
        public: evidence.level() == Level::Public,
        plan: lowered.frame.describe_plan().ok(),
        optimized,
        columns: lowered.frame.clone().collect_schema().ok().map(|s| s.iter_names().map(|n| n.to_string()).collect()),
        outputs: lowered.output.len(),
    })
}
