//! Lowering: the typed IR to a polars `LazyFrame`.
//!
//! Two modes. [`Mode::Plain`] compiles the query as written. [`Mode::Protected`]
//! compiles the same query *and* the evidence the policy's release needs,
//! inside the same plan:
//!
//! - every scan of a protected table carries its privacy unit column
//!   (`__u*`) and clamps bounded numeric columns to their bounds;
//! - below the aggregation, WHERE does not drop rows but ANDs into a keep
//!   flag (`__keep`); aggregates read only kept rows (the others are masked
//!   to NULL), groups are formed over all rows, and a group with no kept row
//!   stays, as a thin row the release hides (dropping it would tell "no one"
//!   from "fewer than k");
//! - a join is a full join whose "matched" ANDs into the same keep flag;
//! - the aggregation adds, per privacy unit, the distinct units kept and the
//!   distinct units in the unfiltered group (a plain count when every row has
//!   its own person, see [`Table::unit_is_unique`], also through a join onto
//!   a unique key; just the rows when that unit is on every row), and turns them into two flags
//!   per released row: `__sd_thin` (fewer than k units) and `__sd_diff` (the
//!   filters removed between 1 and k-1 units from the group).
//!
//! This module does not decide what is released: it refuses shapes it cannot
//! instrument soundly and leaves the verdict to the policy crate.

mod expr;

use crate::catalog::Table;
use crate::error::{Error, Result};
use crate::ir::{Expr, ExprKind, Field, FromItem, JoinKind, Query, Select, SetExpr};
use crate::types::SqlType;
use expr::leaf_column;
use polars::prelude::{self as pl, IntoLazy, DataType, Expr as PExpr, JoinArgs, JoinCoalesce, JoinType, LazyFrame, col, lit};

pub use expr::like_to_regex;

/// Internal column: true for released rows resting on fewer than k privacy units.
pub const THIN_FLAG: &str = "__sd_thin";
/// Internal column: true for rows whose group lost between 1 and k-1 units to the filters.
pub const DIFF_FLAG: &str = "__sd_diff";
const KEEP: &str = "__keep";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Protected,
}

/// A compiled query.
pub struct Lowered {
    pub frame: LazyFrame,
    /// Output columns, named `#0`, `#1`... in the frame.
    pub output: Vec<Field>,
    /// The frame also has [`THIN_FLAG`] and [`DIFF_FLAG`].
    pub has_release_flags: bool,
    /// The output is row-level data of a protected table (never releasable).
    pub row_level_protected: bool,
}

/// Column name of the i-th output column of a lowered query.
pub fn output_column(i: usize) -> String {
    format!("#{i}")
}

/// Compiles a bound query.
pub fn lower_query(query: &Query, mode: Mode) -> Result<Lowered> {
    let rel = Lowerer { mode }.query(query, true)?;
    let output = query.output();
    let mut cols: Vec<PExpr> = (0..output.len()).map(|i| col(output_column(i))).collect();
    if rel.released {
        cols.push(col(THIN_FLAG));
        cols.push(col(DIFF_FLAG));
    }
    Ok(Lowered {
        frame: rel.lf.select(cols),
        output,
        has_release_flags: rel.released,
        row_level_protected: !rel.units.is_empty(),
    })
}

/// A lowered relation and the internal columns it carries.
struct Rel {
    lf: LazyFrame,
    /// Privacy unit columns (row level) and their tables' k.
    units: Vec<(String, u64)>,
    /// Row level, protected: a `__keep` column holds the WHERE verdicts.
    keep: bool,
    /// Aggregated, protected: the release flags are present.
    released: bool,
    /// Row level, protected: how a group's people can be counted.
    people: People,
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

struct Lowerer {
    mode: Mode,
}

fn unsupported(what: &str, hint: &str) -> Error {
    Error::Unsupported { construct: what.into(), hint: hint.into(), span: None }
}

fn engine(e: pl::PolarsError) -> Error {
    crate::engine::map_polars_error(&e)
}

impl Lowerer {
    /// `top`: the statement's own query, whose rows the user sees.
    fn query(&self, q: &Query, top: bool) -> Result<Rel> {
        let mut rel = self.set_expr(&q.body)?;
        let row_level = !rel.units.is_empty();
        let limited = q.limit.is_some() || q.offset.is_some();
        // Groups and joins come out in whatever order polars' threads
        // finished them. What the user sees (or what a LIMIT keeps) is then
        // put in the order of its columns after any ORDER BY keys, so the
        // same query always shows the same rows in the same order, ties
        // included.
        let canonical = (top || limited) && !has_defined_order(&q.body);
        // Rows the release will hide sort last, so neither their values nor
        // their place can move the released rows between pages.
        let hidden_last = rel.released && (limited || !q.order_by.is_empty());
        if !q.order_by.is_empty() || hidden_last || canonical {
            let mut by: Vec<PExpr> = Vec::new();
            let mut descending = Vec::new();
            let mut nulls_last = Vec::new();
            if hidden_last {
                by.push(col(THIN_FLAG).or(col(DIFF_FLAG)));
                descending.push(false);
                nulls_last.push(true);
            }
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
            let options = pl::SortMultipleOptions::default()
                .with_order_descending_multi(descending)
                .with_nulls_last_multi(nulls_last)
                .with_maintain_order(true);
            rel.lf = rel.lf.sort_by_exprs(by, options);
        }
        if q.limit.is_some() || q.offset.is_some() {
            if row_level {
                return Err(unsupported(
                    "LIMIT/OFFSET on rows of a protected table inside a query",
                    "limit the aggregated result instead",
                ));
            }
            let offset = q.offset.unwrap_or(0).min(i64::MAX as u64) as i64;
            let len = q.limit.unwrap_or(u64::from(pl::IdxSize::MAX)).min(u64::from(pl::IdxSize::MAX)) as pl::IdxSize;
            rel.lf = rel.lf.slice(offset, len);
        }
        // Drop sort-only helper columns.
        if let SetExpr::Select(s) = &q.body {
            if s.projection.iter().any(|i| i.sort_only) {
                let mut keep: Vec<PExpr> =
                    s.projection.iter().enumerate().filter(|(_, i)| !i.sort_only).map(|(i, _)| col(output_column(i))).collect();
                keep.extend(internal_columns(&rel));
                rel.lf = rel.lf.select(keep);
            }
        }
        Ok(rel)
    }

    fn set_expr(&self, body: &SetExpr) -> Result<Rel> {
        match body {
            SetExpr::Select(s) => self.select(s),
            SetExpr::Query(q) => self.query(q, false),
            SetExpr::Union { left, right, all, .. } => {
                let output = body.output();
                let l = self.set_expr(left)?;
                let r = self.set_expr(right)?;
                if l.released != r.released || l.units.len() != r.units.len() {
                    return Err(unsupported(
                        "UNION of an aggregated and a row-level side",
                        "aggregate both sides, or union the rows and aggregate after",
                    ));
                }
                let protected = !l.units.is_empty() || l.released;
                if protected && !*all {
                    return Err(unsupported("UNION (distinct) on protected data", "use UNION ALL"));
                }
                let keep = l.keep || r.keep;
                let units: Vec<(String, u64)> =
                    l.units.iter().zip(&r.units).enumerate().map(|(i, (a, b))| (format!("__u{i}"), a.1.max(b.1))).collect();
                let shape = |rel: Rel, side: Vec<Field>| -> LazyFrame {
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
                    if rel.released {
                        cols.push(col(THIN_FLAG));
                        cols.push(col(DIFF_FLAG));
                    }
                    rel.lf.select(cols)
                };
                let released = l.released;
                let (lf, rf) = (shape(l, left.output()), shape(r, right.output()));
                let args = pl::UnionArgs { to_supertypes: true, maintain_order: true, ..Default::default() };
                let mut lf = pl::concat([lf, rf], args).map_err(engine)?;
                if !*all {
                    lf = lf.unique_stable(None, pl::UniqueKeepStrategy::First);
                }
                Ok(Rel { lf, units, keep, released, people: People::Distinct })
            }
        }
    }

    fn select(&self, s: &Select) -> Result<Rel> {
        let mut rel = match &s.from {
            Some(item) => self.from(item)?,
            None => {
                let df = pl::DataFrame::new_infer_height(vec![pl::Column::new("__one".into(), [1i32])]).map_err(engine)?;
                Rel { lf: df.lazy(), units: vec![], keep: false, released: false, people: People::Distinct }
            }
        };
        let protected_rows = !rel.units.is_empty();
        if let Some(filter) = &s.filter {
            let pred = expr::typed(expr::lower(filter, &|_| None)?, filter.ty, SqlType::Boolean);
            if rel.released {
                // Over released rows, WHERE never removes a row the release
                // will hide: whether it passed would tell about its values.
                let pass = pl::coalesce(&[pred, lit(false)]).or(col(THIN_FLAG)).or(col(DIFF_FLAG));
                rel.lf = rel.lf.filter(pass);
            } else if protected_rows {
                let pred = pl::coalesce(&[pred, lit(false)]);
                let flag = if rel.keep { col(KEEP).and(pred) } else { pred };
                rel.lf = rel.lf.with_column(flag.alias(KEEP));
                rel.keep = true;
            } else {
                rel.lf = rel.lf.filter(pred);
            }
        }
        if s.aggregate { self.aggregate(s, rel) } else { self.project(s, rel) }
    }

    /// A row-level SELECT: projection, carrying the internal columns.
    fn project(&self, s: &Select, rel: Rel) -> Result<Rel> {
        if s.distinct && (!rel.units.is_empty() || rel.released) {
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

    /// An aggregating SELECT.
    fn aggregate(&self, s: &Select, rel: Rel) -> Result<Rel> {
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
        let mut aggs = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            let ExprKind::Aggregate { func, args, distinct } = &call.kind else { unreachable!() };
            aggs.push(expr::aggregate(*func, args, *distinct, call.ty, keep.as_ref())?.alias(format!("a#{i}")));
        }
        let protected = !rel.units.is_empty();
        // Aggregating released rows (post-processing): an output row that
        // uses a row the release hides is hidden too.
        let post = rel.released;
        if post {
            aggs.push(col(THIN_FLAG).any(true).alias(THIN_FLAG));
            aggs.push(col(DIFF_FLAG).any(true).alias(DIFF_FLAG));
        }
        if protected {
            for (i, (unit, _)) in rel.units.iter().enumerate() {
                // Masked, not filtered: a filter inside a group-by takes
                // polars' slow per-group path.
                let kept = match &keep {
                    Some(k) => pl::when(k.clone()).then(col(unit.as_str())).otherwise(lit(pl::Null {})),
                    None => col(unit.as_str()),
                };
                let all = col(unit.as_str());
                let (kept, all) = match (rel.people, &keep) {
                    (People::Rows, Some(k)) => (k.clone().sum(), pl::len()),
                    (People::Rows, None) => (pl::len(), pl::len()),
                    (People::RowsWithUnit, _) => (kept.count(), all.count()),
                    (People::Distinct, _) => (kept.drop_nulls().n_unique(), all.drop_nulls().n_unique()),
                };
                aggs.push(kept.cast(DataType::Int64).alias(format!("__kept{i}")));
                // Without a keep flag both counts are the same: count once.
                if keep.is_some() {
                    aggs.push(all.cast(DataType::Int64).alias(format!("__all{i}")));
                }
            }
        }
        let mut lf = if keys.is_empty() {
            rel.lf.select(aggs)
        } else {
            rel.lf.group_by(keys).agg(aggs)
        };
        if protected && keep.is_none() {
            let same: Vec<PExpr> = (0..rel.units.len()).map(|i| col(format!("__kept{i}")).alias(format!("__all{i}"))).collect();
            lf = lf.with_columns(same);
        }
        if protected {
            // Groups formed only by filtered-out rows (kept = 0) are not
            // dropped: they are thin, so always hidden, and dropping them
            // would make "0 people" distinguishable from "1 to k-1 people".
            let mut thin = lit(false);
            let mut diff = lit(false);
            for (i, (_, k)) in rel.units.iter().enumerate() {
                let k = lit(*k as i64);
                let kept = col(format!("__kept{i}"));
                let removed = col(format!("__all{i}")) - kept.clone();
                thin = thin.or(kept.lt(k.clone()));
                diff = diff.or(removed.clone().gt(lit(0i64)).and(removed.lt(k)));
            }
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
            if protected || post {
                // HAVING never decides about a row the release will hide
                // anyway, or it would be an oracle on that hidden row.
                pass = pass.or(col(THIN_FLAG)).or(col(DIFF_FLAG));
            }
            lf = lf.filter(pass);
        }
        let mut cols = Vec::new();
        for (i, item) in s.projection.iter().enumerate() {
            cols.push(expr::lower(&item.expr, &resolve)?.cast(item.expr.ty.to_polars()).alias(output_column(i)));
        }
        if protected || post {
            cols.push(col(THIN_FLAG));
            cols.push(col(DIFF_FLAG));
        }
        let mut lf = lf.select(cols);
        if s.distinct {
            lf = lf.unique_stable(None, pl::UniqueKeepStrategy::First);
        }
        Ok(Rel { lf, units: vec![], keep: false, released: protected || post, people: People::Distinct })
    }

    fn from(&self, item: &FromItem) -> Result<Rel> {
        match item {
            FromItem::Table { slot, table, .. } => self.scan(*slot, table),
            FromItem::Derived { slot, query, .. } => {
                let rel = self.query(query, false)?;
                let mut cols: Vec<PExpr> = (0..query.output().len()).map(|i| col(output_column(i)).alias(leaf_column(*slot, i))).collect();
                let units: Vec<(String, u64)> = rel.units.iter().enumerate().map(|(j, (_, k))| (format!("__u{slot}_{j}"), *k)).collect();
                cols.extend(rel.units.iter().zip(&units).map(|((old, _), (new, _))| col(old.as_str()).alias(new.as_str())));
                if rel.keep {
                    cols.push(col(KEEP));
                }
                if rel.released {
                    cols.push(col(THIN_FLAG));
                    cols.push(col(DIFF_FLAG));
                }
                Ok(Rel { lf: rel.lf.select(cols), units, keep: rel.keep, released: rel.released, people: rel.people })
            }
            FromItem::Join { left, right, kind, on, .. } => {
                let l = self.from(left)?;
                let r = self.from(right)?;
                if l.released || r.released {
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
                    return Ok(Rel { lf, units: vec![], keep: false, released: false, people: People::Distinct });
                }
                // A join drops the rows without a match, which is a filter
                // like WHERE: join fully and AND "matched" into the keep flag,
                // so the people a join removes are counted like filtered ones.
                let lf_marked = l.lf.with_column(lit(true).alias("__lp"));
                let rf = if r.keep { r.lf.rename([KEEP], ["__keep_r"], true) } else { r.lf }.with_column(lit(true).alias("__rp"));
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
                let mut drop: Vec<pl::PlSmallStr> = vec!["__lp".into(), "__rp".into()];
                if r.keep {
                    drop.push("__keep_r".into());
                }
                let lf = lf.with_column(flag.alias(KEEP)).drop(pl::Selector::ByName { names: drop.into(), strict: true });
                let keep = true;
                // A side's units stay one per row when each of its rows meets
                // at most one row of the other side (the other key is unique).
                // Keys cast to a wider type could collide, so only same-typed pairs count.
                let same_type = || on.iter().filter(|(a, b)| a.ty == b.ty);
                let left_ok = l.units.is_empty() || (l.people != People::Distinct && side_key_is_unique(right, same_type().map(|(_, b)| b)));
                let right_ok = r.units.is_empty() || (r.people != People::Distinct && side_key_is_unique(left, same_type().map(|(a, _)| a)));
                let mut units = l.units;
                units.extend(r.units);
                // A full join adds rows without the other side's unit.
                let people = if left_ok && right_ok { People::RowsWithUnit } else { People::Distinct };
                Ok(Rel { lf, units, keep, released: false, people })
            }
        }
    }

    fn scan(&self, slot: usize, table: &Table) -> Result<Rel> {
        let protected = self.mode == Mode::Protected && !table.public;
        let mut cols = Vec::new();
        for (i, c) in table.columns.iter().enumerate() {
            let mut e = col(c.name.as_str()).cast(c.ty.to_polars());
            if protected {
                if let Some((lo, hi)) = c.bounds {
                    // Clamp so no single person can dominate a sum.
                    e = match c.ty {
                        SqlType::Integer => e.clip(lit(lo.ceil() as i64), lit(hi.floor() as i64)),
                        _ => e.clip(lit(lo), lit(hi)),
                    };
                }
            }
            cols.push(e.alias(leaf_column(slot, i)));
        }
        let mut units = Vec::new();
        let mut people = People::Distinct;
        if protected {
            let unit = table.privacy_unit.as_deref().ok_or_else(|| Error::Engine("internal error: protected table without privacy unit".into()))?;
            let name = format!("__u{slot}");
            cols.push(col(unit).alias(name.as_str()));
            units.push((name, table.min_group_size));
            people = if table.unit_is_row_key() {
                People::Rows
            } else if table.unit_is_unique() {
                People::RowsWithUnit
            } else {
                People::Distinct
            };
        }
        Ok(Rel { lf: table.scan()?.select(cols), units, keep: false, released: false, people })
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

/// Whether one of `keys` is a column of `side` that is a table whose values
/// never repeat, so each row of the other side meets at most one of its rows.
fn side_key_is_unique<'a>(side: &FromItem, mut keys: impl Iterator<Item = &'a Expr>) -> bool {
    let FromItem::Table { slot, table, .. } = side else { return false };
    keys.any(|k| match &k.kind {
        ExprKind::Column(c) if c.slot == *slot => table.columns.get(c.index).is_some_and(|col| table.column_is_unique(&col.name)),
        _ => false,
    })
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
    if rel.released {
        cols.push(col(THIN_FLAG));
        cols.push(col(DIFF_FLAG));
    }
    cols
}
