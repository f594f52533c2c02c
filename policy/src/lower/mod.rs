//! Lowering: the typed IR to a polars `LazyFrame`.
//!
//! It obeys the [`Evidence`] the check issued: a scan the plan calls public
//! is compiled as written; a protected scan compiles the same query *and* the
//! evidence the policy's release needs, inside the same plan:
//!
//! - every scan of a protected table carries its privacy unit column
//!   (`__u*`) and clamps bounded numeric columns to their bounds;
//! - below the aggregation, WHERE does not drop rows but ANDs into a keep
//!   flag (`__keep`); aggregates read only kept rows (the others are masked
//!   to NULL), groups are formed over all rows, and a group with no kept row
//!   stays, as a thin row the release hides (dropping it would tell "no one"
//!   from "fewer than k");
//! - a join is a full join whose "matched" ANDs into the same keep flag;
//! - the aggregation counts, per privacy unit, the people kept and the people
//!   *touched* (who lost at least one row or join pair to the filters), also
//!   per UNION ALL branch and per aggregate argument (the people whose
//!   non-NULL values feed it); a plain count when every row has its own
//!   person (see [`Catalog::column_is_unique`], also through a join onto a unique
//!   key; just the rows when that unit is on every row). From them it derives
//!   two flags per group: thin (fewer than k people kept, or an aggregate fed
//!   by fewer than k, or a branch contributing 1 to k-1) and differencing
//!   (1 to k-1 people touched, overall, per branch or per aggregate);
//! - flagged groups are **withheld right there**: they never feed anything
//!   after the aggregation (HAVING aside, which cannot remove them): not an
//!   outer WHERE, GROUP BY, DISTINCT, ORDER BY, LIMIT, join or union. How many
//!   were withheld at each aggregation (a "withheld point") is counted in the
//!   same plan and comes back in extra rows of the result (see [`POINT`]).
//!
//! This module does not decide what is released: it refuses shapes it cannot
//! instrument soundly (`Rule::Shape`) and leaves the verdict to the release.
//! It reads no policy setting from the catalog (roles, k, units, bounds):
//! those come from the evidence; the catalog gives it only scans and the
//! facts that choose how people are counted (does a column repeat).

mod expr;
#[cfg(test)]
mod histogram_tests;

use crate::error::{Error, Result, RunError};
use crate::evidence::{Evidence, ScanPlan};
use crate::sources::{Catalog, Guard};
use crate::types::ToPolars;
use expr::leaf_column;
use polars::prelude::{self as pl, DataType, Expr as PExpr, IntoLazy, JoinArgs, JoinCoalesce, JoinType, LazyFrame, col, lit};
use safe_data_lang::catalog::Table;
use safe_data_lang::ir::{AggFunc, Expr, ExprKind, Field, FromItem, JoinKind, Query, Select, SetExpr};
use safe_data_lang::types::SqlType;
use std::cell::RefCell;

/// Internal column (inside an aggregation only): the group rests on fewer than k people.
const THIN_FLAG: &str = "__sd_thin";
/// Internal column (inside an aggregation only): the group singles out between
/// 1 and k-1 people (filters that removed or touched them, a UNION ALL branch
/// or a level of a correlated column that holds them). The release refuses the
/// statement: withholding only that group would name it.
const DIFF_FLAG: &str = "__sd_diff";
const KEEP: &str = "__keep";
/// Internal column: which UNION ALL branch a protected row comes from.
const BRANCH: &str = "__br";

/// Significant digits of a floating-point aggregate over protected rows:
/// enough for any statistic, too few for `AVG × COUNT` of two queries to give
/// back one row's exact value. (The release rounds what it shows again, to
/// the nearest double of the decimal.)
pub const SIGNIFICANT_DIGITS: usize = 6;

/// Result column: NULL on the rows of the answer; on the extra rows that
/// report what was withheld, the index of the withheld point (see
/// [`Lowered::withheld`]).
pub const POINT: &str = "__sd_point";
/// Result column of a withheld-point row: groups withheld as thin.
pub const WITHHELD_THIN: &str = "__sd_withheld_thin";
/// Result column of a withheld-point row: groups that single out 1..k-1 people (the release refuses the statement).
pub const WITHHELD_DIFF: &str = "__sd_withheld_diff";

/// An aggregation over protected rows, where flagged groups are withheld.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WithheldPoint {
    /// The statement's own aggregation: its groups reach the output through
    /// projections, filters, sorts and limits only (not through another
    /// aggregation, a join or a union).
    pub top: bool,
}

/// A compiled query.
pub struct Lowered {
    /// The answer's rows (columns `#0`, `#1`..., [`POINT`] NULL), then one
    /// row per withheld point ([`POINT`] set, [`WITHHELD_THIN`] and
    /// [`WITHHELD_DIFF`] counted, the output columns NULL).
    pub frame: LazyFrame,
    /// Output columns, named `#0`, `#1`... in the frame.
    pub output: Vec<Field>,
    /// The aggregations over protected rows, in the order of their rows in the frame.
    pub withheld: Vec<WithheldPoint>,
    /// The output is row-level data of a protected table (never releasable).
    pub row_level_protected: bool,
}

/// Column name of the i-th output column of a lowered query.
pub fn output_column(i: usize) -> String {
    format!("#{i}")
}

/// Compiles a bound query as its evidence plan says. Reads of the sources
/// that choose how to count (uniqueness) run under `guard`.
pub(crate) fn lower_query(query: &Query, evidence: &Evidence, sources: &Catalog, guard: &Guard) -> Result<Lowered> {
    let lowerer = Lowerer { evidence, sources, guard, points: RefCell::default() };
    let rel = lowerer.query(query, true, true)?;
    let output = query.output();
    let null = |ty: DataType| lit(pl::Null {}).cast(ty);
    let mut cols: Vec<PExpr> = output.iter().enumerate().map(|(i, f)| col(output_column(i)).cast(f.ty.to_polars())).collect();
    cols.extend([null(DataType::Int32).alias(POINT), null(DataType::Int64).alias(WITHHELD_THIN), null(DataType::Int64).alias(WITHHELD_DIFF)]);
    let mut frames = vec![rel.lf.select(cols)];
    let mut withheld = Vec::new();
    for (i, (counts, point)) in lowerer.points.into_inner().into_iter().enumerate() {
        let mut cols: Vec<PExpr> = output.iter().enumerate().map(|(j, f)| null(f.ty.to_polars()).alias(output_column(j))).collect();
        cols.extend([lit(i as i32).alias(POINT), col(WITHHELD_THIN), col(WITHHELD_DIFF)]);
        frames.push(counts.select(cols));
        withheld.push(point);
    }
    let frame = if frames.len() == 1 {
        frames.remove(0)
    } else {
        // The counting rows share the aggregation's plan with the answer
        // (polars computes a common subplan once).
        pl::concat(frames, pl::UnionArgs { maintain_order: true, ..Default::default() }).map_err(engine)?
    };
    Ok(Lowered { frame, output, withheld, row_level_protected: !rel.units.is_empty() })
}

/// A lowered relation and the internal columns it carries.
struct Rel {
    lf: LazyFrame,
    /// Privacy unit columns (row level) and their tables' k.
    units: Vec<(String, u64)>,
    /// Row level, protected: a `__keep` column holds the WHERE verdicts.
    keep: bool,
    /// Computed by an aggregation over protected rows. Only released rows
    /// remain (the flagged ones were withheld where they were aggregated),
    /// so its values are free to use, but it never meets protected rows.
    released: bool,
    /// Row level, protected: how a group's people can be counted.
    people: People,
    /// Row level, protected: how many UNION ALL branches its rows come
    /// from; above 1, a [`BRANCH`] column says which (0-based).
    branches: usize,
}

impl Rel {
    fn new(lf: LazyFrame) -> Rel {
        Rel { lf, units: vec![], keep: false, released: false, people: People::Distinct, branches: 1 }
    }
}

/// How the people of a group are counted from its rows (all three give the
/// same number where they apply; the cheaper ones apply less often).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum People {
    /// Units may repeat: distinct units.
    Distinct,
    /// No unit repeats (one scan whose unit is unique, joined since only onto
    /// keys that do not repeat, no union): rows with a unit.
    RowsWithUnit,
    /// One scan whose unit is on every row and never repeats: rows (the unit
    /// column is not even read).
    Rows,
}

impl People {
    /// The number of people among the rows where `mask` holds (all rows if
    /// `None`), counted on the unit column `unit`.
    fn count(self, unit: &str, mask: Option<PExpr>) -> PExpr {
        let masked = |m: PExpr| pl::when(m).then(col(unit)).otherwise(lit(pl::Null {}));
        let n = match (self, mask) {
            (People::Rows, Some(m)) => m.sum(),
            (People::Rows, None) => pl::len(),
            (People::RowsWithUnit, Some(m)) => masked(m).count(),
            (People::RowsWithUnit, None) => col(unit).count(),
            (People::Distinct, Some(m)) => masked(m).drop_nulls().n_unique(),
            (People::Distinct, None) => col(unit).drop_nulls().n_unique(),
        };
        n.cast(DataType::Int64)
    }
}

/// What a people count inside an aggregation says about the group, against k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Fewer than k people, none included: thin. The group is withheld;
    /// since an empty group is withheld too, this tells nothing.
    AtLeastK,
    /// Between 1 and k-1 people (0 passes): the group singles them out. As
    /// "none" passes, *which* group is flagged would tell about them, so the
    /// release refuses the whole statement (see `DIFF_FLAG`).
    NoneOrAtLeastK,
}

struct Lowerer<'a> {
    evidence: &'a Evidence,
    sources: &'a Catalog,
    guard: &'a Guard,
    /// Per aggregation over protected rows: a one-row frame counting its
    /// withheld groups, and where it is.
    points: RefCell<Vec<(LazyFrame, WithheldPoint)>>,
}

/// A shape the lowering cannot instrument soundly on protected rows.
fn unsupported(what: &str, hint: &str) -> Error {
    Error::refused(crate::Rule::Shape, format!("{what} is not supported: {hint}"), None)
}

fn engine(e: pl::PolarsError) -> Error {
    crate::engine::map_polars_error(&e).into()
}

impl Lowerer<'_> {
    /// `top`: the statement's own query, whose rows the user sees.
    /// `direct`: its rows reach the statement's output through projections,
    /// filters, sorts and limits only (an aggregation there is the
    /// statement's own, see [`WithheldPoint::top`]).
    fn query(&self, q: &Query, top: bool, direct: bool) -> Result<Rel> {
        let mut rel = self.set_expr(&q.body, top, direct)?;
        let row_level = !rel.units.is_empty();
        let limited = q.limit.is_some() || q.offset.is_some();
        // Groups and joins come out in whatever order polars' threads
        // finished them. What the user sees (or what a LIMIT keeps) is then
        // put in the order of its columns after any ORDER BY keys, so the
        // same query always shows the same rows in the same order, ties
        // included. (Withheld groups are gone already: they cannot move
        // anything here.)
        // An ORDER BY breaks its ties the same way, so that a query over it
        // (which keeps its order) is deterministic too.
        let canonical = (top || limited || !q.order_by.is_empty()) && !has_defined_order(&q.body);
        if !q.order_by.is_empty() || canonical {
            let mut by: Vec<PExpr> = Vec::new();
            let mut descending = Vec::new();
            let mut nulls_last = Vec::new();
            for k in &q.order_by {
                by.push(col(output_column(k.column)));
                descending.push(k.descending);
                nulls_last.push(!k.nulls_first);
            }
            if canonical {
                // A column twice in one sort makes polars panic.
                for i in (0..q.body.output().len()).filter(|i| !q.order_by.iter().any(|k| k.column == *i)) {
                    by.push(col(output_column(i)));
                    descending.push(false);
                    nulls_last.push(true);
                }
            }
            let options =
                pl::SortMultipleOptions::default().with_order_descending_multi(descending).with_nulls_last_multi(nulls_last).with_maintain_order(true);
            rel.lf = rel.lf.sort_by_exprs(by, options);
        }
        if limited {
            if row_level {
                return Err(unsupported("LIMIT/OFFSET on rows of a protected table inside a query", "limit the aggregated result instead"));
            }
            let offset = q.offset.unwrap_or(0).min(i64::MAX as u64) as i64;
            let len = q.limit.unwrap_or(u64::from(pl::IdxSize::MAX)).min(u64::from(pl::IdxSize::MAX)) as pl::IdxSize;
            rel.lf = rel.lf.slice(offset, len);
        }
        // Drop sort-only helper columns.
        if let SetExpr::Select(s) = &q.body
            && s.projection.iter().any(|i| i.sort_only)
        {
            let mut keep: Vec<PExpr> = s.projection.iter().enumerate().filter(|(_, i)| !i.sort_only).map(|(i, _)| col(output_column(i))).collect();
            keep.extend(internal_columns(&rel));
            rel.lf = rel.lf.select(keep);
        }
        Ok(rel)
    }

    fn set_expr(&self, body: &SetExpr, top: bool, direct: bool) -> Result<Rel> {
        match body {
            SetExpr::Select(s) => self.select(s, direct),
            SetExpr::Query(q) => self.query(q, top, direct),
            SetExpr::Union { left, right, all, .. } => {
                let output = body.output();
                let l = self.set_expr(left, false, false)?;
                let r = self.set_expr(right, false, false)?;
                if l.units.len() != r.units.len() {
                    return Err(unsupported(
                        "UNION of rows of protected tables with other rows",
                        "aggregate both sides, or union rows of protected tables only and aggregate after",
                    ));
                }
                let protected = !l.units.is_empty();
                if protected && !*all {
                    return Err(unsupported("UNION (distinct) on protected data", "use UNION ALL"));
                }
                let keep = l.keep || r.keep;
                let units: Vec<(String, u64)> = l.units.iter().zip(&r.units).enumerate().map(|(i, (a, b))| (format!("__u{i}"), a.1.max(b.1))).collect();
                // Each branch's people are counted apart (see `aggregate`):
                // its rows are tagged with their branch, numbered left to right.
                let branches = if protected { l.branches + r.branches } else { 1 };
                let shape = |rel: Rel, side: Vec<Field>, first_branch: usize| -> LazyFrame {
                    let mut cols: Vec<PExpr> = output
                        .iter()
                        .zip(side)
                        .enumerate()
                        .map(|(i, (f, s))| expr::convert(col(output_column(i)), s.ty, f.ty).cast(f.ty.to_polars()).alias(output_column(i)))
                        .collect();
                    cols.extend(rel.units.iter().enumerate().map(|(i, (u, _))| col(u.as_str()).alias(format!("__u{i}"))));
                    if keep {
                        cols.push(if rel.keep { col(KEEP) } else { lit(true).alias(KEEP) });
                    }
                    if protected {
                        let own = if rel.branches > 1 { col(BRANCH) } else { lit(0i32) };
                        cols.push((own + lit(first_branch as i32)).cast(DataType::Int32).alias(BRANCH));
                    }
                    rel.lf.select(cols)
                };
                let released = l.released || r.released;
                let left_branches = l.branches;
                let (lf, rf) = (shape(l, left.output(), 0), shape(r, right.output(), left_branches));
                let args = pl::UnionArgs { to_supertypes: true, maintain_order: true, ..Default::default() };
                let mut lf = pl::concat([lf, rf], args).map_err(engine)?;
                if !*all {
                    lf = lf.unique_stable(None, pl::UniqueKeepStrategy::First);
                }
                Ok(Rel { lf, units, keep, released, people: People::Distinct, branches })
            }
        }
    }

    fn select(&self, s: &Select, direct: bool) -> Result<Rel> {
        let mut rel = match &s.from {
            Some(item) => self.from(item, direct && !s.aggregate)?,
            None => {
                let df = pl::DataFrame::new_infer_height(vec![pl::Column::new("__one".into(), [1i32])]).map_err(engine)?;
                Rel::new(df.lazy())
            }
        };
        if let Some(filter) = &s.filter {
            let pred = expr::typed(expr::lower(filter, &|_| None)?, filter.ty, SqlType::Boolean);
            if !rel.units.is_empty() {
                let pred = pl::coalesce(&[pred, lit(false)]);
                let flag = if rel.keep { col(KEEP).and(pred) } else { pred };
                rel.lf = rel.lf.with_column(flag.alias(KEEP));
                rel.keep = true;
            } else {
                // Public rows, or released ones: the withheld groups are
                // not among them, so filtering tells nothing about them.
                rel.lf = rel.lf.filter(pred);
            }
        }
        if s.aggregate { self.aggregate(s, rel, direct) } else { self.project(s, rel) }
    }

    /// A row-level SELECT: projection, carrying the internal columns.
    fn project(&self, s: &Select, rel: Rel) -> Result<Rel> {
        if s.distinct && !rel.units.is_empty() {
            return Err(unsupported("SELECT DISTINCT on protected data", "use GROUP BY, or COUNT(DISTINCT x)"));
        }
        let mut cols = Vec::new();
        for (i, item) in s.projection.iter().enumerate() {
            let e = expr::per_row(&item.expr, expr::lower(&item.expr, &|_| None)?);
            cols.push(e.cast(item.expr.ty.to_polars()).alias(output_column(i)));
        }
        cols.extend(internal_columns(&rel));
        let mut lf = rel.lf.select(cols);
        if s.distinct {
            lf = lf.unique_stable(None, pl::UniqueKeepStrategy::First);
        }
        Ok(Rel { lf, ..rel })
    }

    /// An aggregating SELECT. Over protected rows it is a withheld point:
    /// flagged groups are counted and dropped before DISTINCT and before
    /// anything above sees them.
    fn aggregate(&self, s: &Select, rel: Rel, direct: bool) -> Result<Rel> {
        let keep = rel.keep.then(|| col(KEEP));
        // Distinct aggregate calls of the block, in order of appearance.
        let mut calls: Vec<&Expr> = Vec::new();
        for e in s.projection.iter().map(|i| &i.expr).chain(s.having.as_ref()) {
            collect_aggregates(e, &mut calls);
        }
        let keys: Vec<PExpr> = s
            .group_by
            .iter()
            .enumerate()
            .map(|(i, g)| Ok(expr::per_row(g, expr::lower(g, &|_| None)?).cast(g.ty.to_polars()).alias(format!("g#{i}"))))
            .collect::<Result<_>>()?;
        let protected = !rel.units.is_empty();
        let mut aggs = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            let ExprKind::Aggregate { func, args, distinct } = &call.kind else { unreachable!() };
            let mut e = expr::aggregate(*func, args, *distinct, call.ty, keep.as_ref())?;
            if protected && call.ty == SqlType::Double {
                // Rounded where it is computed, so that no arithmetic in the
                // statement (AVG × COUNT, a difference with a number the
                // user read before) can get at more digits than are shown.
                e = e.round_sig_figs(SIGNIFICANT_DIGITS as i32);
            }
            aggs.push(e.alias(format!("a#{i}")));
        }
        // People counts and what each says, against its unit's k.
        let mut counts: Vec<(Rule, u64)> = Vec::new();
        // Counts of people kept (indices into `counts`) that have an
        // unfiltered twin `__all{i}`: removed = all - kept.
        let mut removed: Vec<usize> = Vec::new();
        // Per unit, the index of the group's own count of people kept.
        let mut group_counts: Vec<usize> = Vec::new();
        if protected {
            // Adds a people count as the aggregation column `__c{i}`; returns i.
            let mut push = |aggs: &mut Vec<PExpr>, e: PExpr, rule: Rule, k: u64| -> usize {
                let i = counts.len();
                aggs.push(e.alias(format!("__c{i}")));
                counts.push((rule, k));
                i
            };
            let feeds = feeders(&calls, &|a| self.is_complete_column(a, s.from.as_ref()))?;
            let and = |a: &Option<PExpr>, b: PExpr| match a {
                Some(a) => a.clone().and(b),
                None => b,
            };
            for (unit, k) in &rel.units {
                let (unit, k) = (unit.as_str(), *k);
                // The group, then each aggregate's feeders: people kept;
                // people removed (all their rows filtered out), against the
                // unfiltered group; people touched (at least one row
                // filtered out), which catches removing one of a person's
                // several rows.
                for feed in std::iter::once(None).chain(feeds.iter().cloned().map(Some)) {
                    let within = |m: PExpr| match &feed {
                        Some(f) => m.and(f.clone()),
                        None => m,
                    };
                    let kept = match (&keep, &feed) {
                        (Some(kp), _) => Some(within(kp.clone())),
                        (None, Some(f)) => Some(f.clone()),
                        (None, None) => None,
                    };
                    let i = push(&mut aggs, rel.people.count(unit, kept), Rule::AtLeastK, k);
                    if feed.is_none() {
                        group_counts.push(i);
                    }
                    if let Some(kp) = &keep {
                        aggs.push(rel.people.count(unit, feed.clone()).alias(format!("__all{i}")));
                        push(&mut aggs, rel.people.count(unit, Some(within(kp.clone().not()))), Rule::NoneOrAtLeastK, k);
                        removed.push(i);
                    }
                }
                // CORR and COVAR_SAMP add up products: with a 0/1 column,
                // the sum of x·y is the sum of x over the people whose y is 1.
                // Each column's people away from its smallest value, and away
                // from its largest, are none or at least k (for a 0/1 column:
                // both levels).
                for call in &calls {
                    let ExprKind::Aggregate { func: AggFunc::Corr | AggFunc::CovarSamp, args, .. } = &call.kind else { continue };
                    let mut both = keep.clone().unwrap_or(lit(true));
                    let lowered: Vec<PExpr> = args.iter().map(|a| expr::lower(a, &|_| None)).collect::<Result<_>>()?;
                    for a in &lowered {
                        both = both.and(a.clone().is_not_null());
                    }
                    for a in &lowered {
                        let within = pl::when(both.clone()).then(a.clone()).otherwise(lit(pl::Null {}));
                        for edge in [within.clone().min(), within.max()] {
                            let away = both.clone().and(a.clone().neq(edge));
                            push(&mut aggs, rel.people.count(unit, Some(away)), Rule::NoneOrAtLeastK, k);
                        }
                    }
                }
                // A quantile other than the median (which the owner allows as
                // such) has at least k - 1 values on each side of its rank
                // p·(n - 1); p = 0 or 1 would be MIN or MAX.
                for call in &calls {
                    let ExprKind::Aggregate { func: AggFunc::Quantile, args, .. } = &call.kind else { continue };
                    let p = match args.get(1).map(|a| &a.kind) {
                        Some(ExprKind::Literal(safe_data_lang::ir::Literal::Double(p))) => *p,
                        _ => 0.5,
                    };
                    let side = p.min(1.0 - p);
                    let needed = if side > 0.0 { (1.0 + (k as f64 - 1.0) / side).ceil().min(i64::MAX as f64) as u64 } else { i64::MAX as u64 };
                    let fed = expr::lower(&args[0], &|_| None)?.is_not_null();
                    push(&mut aggs, rel.people.count(unit, Some(and(&keep, fed))), Rule::AtLeastK, needed);
                }
                // Each UNION ALL branch: its contribution rests on none or at
                // least k people, and its filters touch none or at least k.
                for b in (0..rel.branches).filter(|_| rel.branches > 1) {
                    let branch = col(BRANCH).eq(lit(b as i32));
                    push(&mut aggs, rel.people.count(unit, Some(and(&keep, branch.clone()))), Rule::NoneOrAtLeastK, k);
                    if let Some(kp) = &keep {
                        push(&mut aggs, rel.people.count(unit, Some(kp.clone().not().and(branch))), Rule::NoneOrAtLeastK, k);
                    }
                }
            }
        }
        let lf = if keys.is_empty() { rel.lf.select(aggs) } else { rel.lf.group_by(keys).agg(aggs) };
        let mut lf = lf;
        if protected {
            // Groups formed only by filtered-out rows (no one kept) are not
            // dropped: they are thin, so always withheld, and dropping them
            // would make "0 people" distinguishable from "1 to k-1 people".
            let mut thin = lit(false);
            let mut diff = lit(false);
            for (i, (rule, k)) in counts.iter().enumerate() {
                let n = col(format!("__c{i}"));
                let k = lit(*k as i64);
                let some_but_few = n.clone().gt(lit(0i64)).and(n.clone().lt(k.clone()));
                match rule {
                    Rule::AtLeastK => thin = thin.or(n.clone().lt(k.clone())),
                    Rule::NoneOrAtLeastK => diff = diff.or(some_but_few),
                }
                if removed.contains(&i) {
                    let gone = col(format!("__all{i}")) - n;
                    diff = diff.or(gone.clone().gt(lit(0i64)).and(gone.lt(k)));
                }
            }
            // A group that is thin even before the filters (fewer than k
            // people on all its rows) is withheld by any query, filtered
            // or not: singling out inside it tells nothing. Any other group
            // that singles people out refuses the statement, also when the
            // filters bring it below k (its being withheld would then name
            // it, next to the unfiltered query that releases it).
            let mut thin_unfiltered = lit(false);
            for (&i, (_, k)) in group_counts.iter().zip(&rel.units) {
                let all = if keep.is_some() { col(format!("__all{i}")) } else { col(format!("__c{i}")) };
                thin_unfiltered = thin_unfiltered.or(all.lt(lit(*k as i64)));
            }
            let diff = diff.and(thin.clone().and(thin_unfiltered).not());
            // A missing verdict withholds (fail closed).
            let thin = pl::coalesce(&[thin, lit(true)]);
            let diff = pl::coalesce(&[diff, lit(true)]);
            lf = lf.with_columns([thin.alias(THIN_FLAG), diff.alias(DIFF_FLAG)]);
        }
        // After aggregation: group keys and aggregates are columns.
        let resolve = |e: &Expr| -> Option<PExpr> {
            if let Some(i) = s.group_by.iter().position(|g| g.same_as(e)) {
                return Some(col(format!("g#{i}")));
            }
            if matches!(e.kind, ExprKind::Aggregate { .. }) {
                return calls.iter().position(|c| c.same_as(e)).map(|i| col(format!("a#{i}")));
            }
            None
        };
        if let Some(h) = &s.having {
            let mut pass = pl::coalesce(&[expr::typed(expr::lower(h, &resolve)?, h.ty, SqlType::Boolean), lit(false)]);
            if protected {
                // HAVING never removes a group that is withheld anyway, or
                // the count of withheld groups would tell about its values.
                pass = pass.or(col(THIN_FLAG)).or(col(DIFF_FLAG));
            }
            lf = lf.filter(pass);
        }
        let mut cols = Vec::new();
        for (i, item) in s.projection.iter().enumerate() {
            cols.push(expr::lower(&item.expr, &resolve)?.cast(item.expr.ty.to_polars()).alias(output_column(i)));
        }
        if protected {
            cols.push(col(THIN_FLAG));
            cols.push(col(DIFF_FLAG));
        }
        let mut lf = lf.select(cols);
        if protected {
            // The withheld point: count the flagged groups, then drop them,
            // before DISTINCT (which would merge them) and before anything
            // that post-processes this result.
            let counted = lf
                .clone()
                .select([col(THIN_FLAG).sum().cast(DataType::Int64).alias(WITHHELD_THIN), col(DIFF_FLAG).sum().cast(DataType::Int64).alias(WITHHELD_DIFF)]);
            self.points.borrow_mut().push((counted, WithheldPoint { top: direct }));
            let out: Vec<PExpr> = (0..s.projection.len()).map(|i| col(output_column(i))).collect();
            lf = lf.filter(col(THIN_FLAG).or(col(DIFF_FLAG)).not()).select(out);
        }
        if s.distinct {
            lf = lf.unique_stable(None, pl::UniqueKeepStrategy::First);
        }
        Ok(Rel { lf, units: vec![], keep: false, released: protected || rel.released, people: People::Distinct, branches: 1 })
    }

    /// `direct`: see [`Lowerer::query`].
    fn from(&self, item: &FromItem, direct: bool) -> Result<Rel> {
        match item {
            FromItem::Table { slot, table, span, .. } => self.scan(*slot, table, *span),
            FromItem::Derived { slot, query, .. } => {
                let rel = self.query(query, false, direct)?;
                let mut cols: Vec<PExpr> = (0..query.output().len()).map(|i| col(output_column(i)).alias(leaf_column(*slot, i))).collect();
                let units: Vec<(String, u64)> = rel.units.iter().enumerate().map(|(j, (_, k))| (format!("__u{slot}_{j}"), *k)).collect();
                cols.extend(rel.units.iter().zip(&units).map(|((old, _), (new, _))| col(old.as_str()).alias(new.as_str())));
                if rel.keep {
                    cols.push(col(KEEP));
                }
                if rel.branches > 1 {
                    cols.push(col(BRANCH));
                }
                Ok(Rel { lf: rel.lf.select(cols), units, ..rel })
            }
            FromItem::Join { left, right, kind, on, .. } => {
                let l = self.from(left, false)?;
                let r = self.from(right, false)?;
                if (l.released && !r.units.is_empty()) || (r.released && !l.units.is_empty()) {
                    return Err(unsupported("joining an aggregated result on protected data", "join the tables, then aggregate"));
                }
                if *kind == JoinKind::Left && r.keep {
                    return Err(unsupported(
                        "a filtered right side of a LEFT JOIN on protected data",
                        "move the condition to the outer WHERE, or use an inner JOIN",
                    ));
                }
                let mut left_on = Vec::new();
                let mut right_on = Vec::new();
                for (a, b) in on {
                    let t = a.ty.unify(b.ty).unwrap_or(a.ty).to_polars();
                    left_on.push(expr::lower(a, &|_| None)?.cast(t.clone()));
                    right_on.push(expr::lower(b, &|_| None)?.cast(t));
                }
                let protected = !l.units.is_empty() || !r.units.is_empty();
                if !protected {
                    let how = if *kind == JoinKind::Left { JoinType::Left } else { JoinType::Inner };
                    let lf = l.lf.join(r.lf, left_on, right_on, JoinArgs::new(how).with_coalesce(JoinCoalesce::KeepColumns));
                    return Ok(Rel { released: l.released || r.released, ..Rel::new(lf) });
                }
                // A join drops the rows without a match, which is a filter
                // like WHERE: join fully and AND "matched" into the keep flag,
                // so the people a join removes are counted like filtered ones.
                let lf_marked = l.lf.with_column(lit(true).alias("__lp"));
                let mut rf = r.lf;
                if r.keep {
                    rf = rf.rename([KEEP], ["__keep_r"], true);
                }
                if r.branches > 1 {
                    rf = rf.rename([BRANCH], ["__br_r"], true);
                }
                let rf = rf.with_column(lit(true).alias("__rp"));
                let lf = lf_marked.join(rf, left_on, right_on, JoinArgs::new(JoinType::Full).with_coalesce(JoinCoalesce::KeepColumns));
                let left_present = col("__lp").is_not_null();
                let right_present = col("__rp").is_not_null();
                let mut flag = match kind {
                    JoinKind::Inner => left_present.and(right_present),
                    JoinKind::Left => left_present,
                };
                if l.keep {
                    flag = flag.and(pl::coalesce(&[col(KEEP), lit(false)]));
                }
                if r.keep {
                    flag = flag.and(pl::coalesce(&[col("__keep_r"), lit(false)]));
                }
                let mut columns = vec![flag.alias(KEEP)];
                // Branches of unions on both sides: each pair is a branch. A
                // row without a match on one side counts in that side's first.
                let branches = l.branches * r.branches;
                if r.branches > 1 {
                    let lb = if l.branches > 1 { pl::coalesce(&[col(BRANCH), lit(0i32)]) } else { lit(0i32) };
                    let rb = pl::coalesce(&[col("__br_r"), lit(0i32)]);
                    columns.push((lb * lit(r.branches as i32) + rb).cast(DataType::Int32).alias(BRANCH));
                } else if l.branches > 1 {
                    columns.push(pl::coalesce(&[col(BRANCH), lit(0i32)]).alias(BRANCH));
                }
                let mut drop: Vec<pl::PlSmallStr> = vec!["__lp".into(), "__rp".into()];
                if r.keep {
                    drop.push("__keep_r".into());
                }
                if r.branches > 1 {
                    drop.push("__br_r".into());
                }
                let lf = lf.with_columns(columns).drop(pl::Selector::ByName { names: drop.into(), strict: true });
                // A side's units stay one per row when each of its rows meets
                // at most one row of the other side (the other key is unique).
                // Keys cast to a wider type could collide, so only same-typed pairs count.
                let same_type = || on.iter().filter(|(a, b)| a.ty == b.ty);
                let left_ok = l.units.is_empty() || (l.people != People::Distinct && self.side_key_is_unique(right, same_type().map(|(_, b)| b)));
                let right_ok = r.units.is_empty() || (r.people != People::Distinct && self.side_key_is_unique(left, same_type().map(|(a, _)| a)));
                let mut units = l.units;
                units.extend(r.units);
                // A full join adds rows without the other side's unit.
                let people = if left_ok && right_ok { People::RowsWithUnit } else { People::Distinct };
                Ok(Rel { lf, units, keep: true, released: false, people, branches })
            }
        }
    }

    fn scan(&self, slot: usize, table: &Table, span: safe_data_lang::span::Span) -> Result<Rel> {
        // Fail closed: a scan the evidence does not plan is never read.
        let plan = self.evidence.scan(slot, table, span).ok_or(RunError::Engine("internal error: a table the policy did not plan"))?;
        let protected = match plan {
            ScanPlan::Public => None,
            ScanPlan::Protected(p) => Some(p),
        };
        let mut cols = Vec::new();
        for (i, c) in table.columns.iter().enumerate() {
            let mut e = col(c.name.as_str()).cast(c.ty.to_polars());
            if let Some((lo, hi)) = protected.and_then(|p| p.clamps.get(i).copied().flatten()) {
                // Clamp so no single person can dominate a sum.
                e = match c.ty {
                    SqlType::Integer => e.clip(lit(lo.ceil() as i64), lit(hi.floor() as i64)),
                    _ => e.clip(lit(lo), lit(hi)),
                };
            }
            cols.push(e.alias(leaf_column(slot, i)));
        }
        let mut units = Vec::new();
        let mut people = People::Distinct;
        if let Some(p) = protected {
            let name = format!("__u{slot}");
            cols.push(col(p.unit.as_str()).alias(name.as_str()));
            units.push((name, p.k));
            people = if self.sources.column_is_key(table, &p.unit, self.guard) {
                People::Rows
            } else if self.sources.column_is_unique(table, &p.unit, self.guard) {
                People::RowsWithUnit
            } else {
                People::Distinct
            };
        }
        Ok(Rel { units, people, ..Rel::new(self.sources.scan(table, self.guard)?.select(cols)) })
    }

    /// Whether one of `keys` is a column of `side` that is a table whose values
    /// never repeat, so each row of the other side meets at most one of its rows.
    fn side_key_is_unique<'e>(&self, side: &FromItem, mut keys: impl Iterator<Item = &'e Expr>) -> bool {
        let FromItem::Table { slot, table, .. } = side else { return false };
        keys.any(|k| match &k.kind {
            ExprKind::Column(c) if c.slot == *slot => table.columns.get(c.index).is_some_and(|col| self.sources.column_is_unique(table, &col.name, self.guard)),
            _ => false,
        })
    }

    /// Whether `a` is a column of the table scanned right below that is on every row.
    fn is_complete_column(&self, a: &Expr, from: Option<&FromItem>) -> bool {
        match (&a.kind, from) {
            (ExprKind::Column(c), Some(FromItem::Table { slot, table, .. })) if c.slot == *slot => {
                table.columns.get(c.index).is_some_and(|col| self.sources.column_is_complete(table, &col.name, self.guard))
            }
            _ => false,
        }
    }
}

/// Whether the rows of `body` come in an order that does not depend on
/// polars' threads: one table's scan order (projections and filters keep
/// it), an ORDER BY below, or a single aggregate row.
fn has_defined_order(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(s) if s.aggregate => s.group_by.is_empty(),
        SetExpr::Select(s) => match &s.from {
            None | Some(FromItem::Table { .. }) => true,
            Some(FromItem::Derived { query, .. }) => !query.order_by.is_empty() || has_defined_order(&query.body),
            Some(FromItem::Join { .. }) => false,
        },
        SetExpr::Query(q) => !q.order_by.is_empty() || has_defined_order(&q.body),
        SetExpr::Union { .. } => false,
    }
}

/// Distinct aggregate calls of `e`, in order of appearance.
fn collect_aggregates<'a>(e: &'a Expr, calls: &mut Vec<&'a Expr>) {
    e.walk(&mut |x| {
        if matches!(x.kind, ExprKind::Aggregate { .. }) && !calls.iter().any(|c| c.same_as(x)) {
            calls.push(x);
        }
    });
}

/// The internal columns a relation carries through projections.
fn internal_columns(rel: &Rel) -> Vec<PExpr> {
    let mut cols: Vec<PExpr> = rel.units.iter().map(|(u, _)| col(u.as_str())).collect();
    if rel.keep {
        cols.push(col(KEEP));
    }
    if rel.branches > 1 {
        cols.push(col(BRANCH));
    }
    cols
}

/// Per distinct argument list of the aggregate calls that read data: the
/// rows whose values feed it (all its data arguments non-NULL). `COUNT(*)`
/// and constant arguments read every row of the group, which the group's
/// own count covers; so do columns of the table scanned right below that
/// are on every row (`complete`, see [`Catalog::column_is_complete`]).
fn feeders(calls: &[&Expr], complete: &dyn Fn(&Expr) -> bool) -> Result<Vec<PExpr>> {
    let mut seen: Vec<&[Expr]> = Vec::new();
    let mut feeds = Vec::new();
    for call in calls {
        let ExprKind::Aggregate { func, args, .. } = &call.kind else { continue };
        let data: &[Expr] = match func {
            AggFunc::CountStar => &[],
            AggFunc::Quantile => &args[..args.len().min(1)],
            _ => args,
        };
        if !data.iter().any(|a| a.references_columns()) || data.iter().all(complete) {
            continue;
        }
        if seen.iter().any(|s| s.len() == data.len() && s.iter().zip(data).all(|(a, b)| a.same_as(b))) {
            continue;
        }
        seen.push(data);
        let mut feed: Option<PExpr> = None;
        for a in data.iter().filter(|a| a.references_columns()) {
            let present = expr::lower(a, &|_| None)?.is_not_null();
            feed = Some(match feed {
                Some(f) => f.and(present),
                None => present,
            });
        }
        feeds.extend(feed);
    }
    Ok(feeds)
}
