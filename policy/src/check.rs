//! The static check: the role rules applied to the bound IR before anything
//! runs. A refusal here depends only on the statement and the owner's
//! config, never on the data.
//!
//! The check follows every column through aliases, CTEs, subqueries and
//! unions (as [`ColInfo`]), so a column keeps its role however it is wrapped.
//! What it does not do: count people. That happens inside the plan (see
//! `crate::lower`, as the [`crate::evidence::Evidence`] plan says) and in
//! [`crate::release`].

use crate::error::{Error, Result, Rule};
use safe_data_lang::catalog::{Column, Table};
use safe_data_lang::config::Role;
use safe_data_lang::ir::{AggFunc, BinaryOp, ColumnRef, Expr, ExprKind, FromItem, Literal, Query, ScalarFunc, Select, SetExpr, UnaryOp};
use safe_data_lang::types::SqlType;
use std::collections::HashMap;

/// What a query's result is, for the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Only public tables: released as is (row limit aside).
    Public,
    /// Rows of a protected table: never released.
    RowLevel,
    /// Aggregated over protected rows: released row by row after the k checks.
    Aggregated,
}

/// What a column of a relation carries, as far as the policy is concerned.
#[derive(Debug, Clone)]
pub(crate) struct ColInfo {
    role: Eff,
    /// The base column when this is a plain pass-through of one.
    base: Option<(String, String)>,
    /// Every protected base column it depends on has bounds.
    bounded: bool,
    /// Aggregates the owner allows beyond the role's defaults (bare columns only).
    extra_aggregates: Vec<AggFunc>,
    /// Declared as a join key on its table.
    join_key: bool,
    /// A column or plain arithmetic of columns: no condition or function
    /// hides in it (so aggregating it is not a hidden filter).
    plain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Eff {
    /// Public data, or a value computed by a released aggregate.
    Free,
    Dimension,
    Measure,
    Identifier,
}

impl ColInfo {
    fn free() -> Self {
        ColInfo { role: Eff::Free, base: None, bounded: true, extra_aggregates: vec![], join_key: true, plain: true }
    }

    /// The most restrictive of several inputs (an expression over them).
    fn combine(infos: &[&ColInfo]) -> ColInfo {
        let role = infos.iter().map(|i| i.role).max().unwrap_or(Eff::Free);
        ColInfo { role, base: None, bounded: infos.iter().all(|i| i.bounded), extra_aggregates: vec![], join_key: false, plain: infos.iter().all(|i| i.plain) }
    }
}

/// The result of checking a query.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub level: Level,
}

type Scope = HashMap<usize, Vec<ColInfo>>;

/// Checks a bound query against the role rules.
pub fn check(query: &Query) -> Result<Verdict> {
    let (level, _) = check_query(query)?;
    if level == Level::RowLevel {
        return Err(Error::refused(
            Rule::RawRows,
            "this query returns individual rows of a protected table; ask for an aggregate instead, \
             e.g. SELECT sex, COUNT(*), AVG(bmi) FROM patients GROUP BY sex",
            Some(query.span),
        ));
    }
    Ok(Verdict { level })
}

fn check_query(q: &Query) -> Result<(Level, Vec<ColInfo>)> {
    let (level, infos) = check_set(&q.body)?;
    if level == Level::RowLevel && (q.limit.is_some() || q.offset.is_some()) {
        return Err(Error::refused(
            Rule::RawRows,
            "this query returns individual rows of a protected table, and LIMIT/OFFSET does not make that private; aggregate first (GROUP BY), then limit the groups",
            Some(q.span),
        ));
    }
    Ok((level, infos))
}

fn check_set(body: &SetExpr) -> Result<(Level, Vec<ColInfo>)> {
    match body {
        SetExpr::Select(s) => check_select(s),
        SetExpr::Query(q) => check_query(q),
        SetExpr::Union { left, right, all, span } => {
            let (ll, li) = check_set(left)?;
            let (rl, ri) = check_set(right)?;
            let level = match (ll, rl) {
                (a, b) if a == b => a,
                (Level::Public, b) => b,
                (a, Level::Public) => a,
                _ => {
                    return Err(Error::refused(Rule::Shape, "a UNION cannot mix aggregated results with individual rows; aggregate both sides", Some(*span)));
                }
            };
            if level == Level::RowLevel && !all {
                return Err(Error::refused(Rule::Shape, "use UNION ALL on protected data (UNION without ALL is not supported)", Some(*span)));
            }
            let infos = li.iter().zip(&ri).map(|(a, b)| ColInfo::combine(&[a, b])).collect();
            Ok((level, infos))
        }
    }
}

fn check_from(item: &FromItem, scope: &mut Scope) -> Result<Level> {
    match item {
        FromItem::Table { slot, table, .. } => {
            scope.insert(*slot, table_infos(table));
            Ok(if table.public { Level::Public } else { Level::RowLevel })
        }
        FromItem::Derived { slot, query, .. } => {
            let (level, mut infos) = check_query(query)?;
            if level == Level::Aggregated {
                // Values computed by aggregates are released values.
                infos = infos.into_iter().map(|_| ColInfo::free()).collect();
            }
            scope.insert(*slot, infos);
            Ok(level)
        }
        FromItem::Join { left, right, on, span, .. } => {
            let l = check_from(left, scope)?;
            let r = check_from(right, scope)?;
            if (l == Level::Aggregated && r == Level::RowLevel) || (l == Level::RowLevel && r == Level::Aggregated) {
                return Err(Error::refused(
                    Rule::Shape,
                    "joining an aggregated result with protected data is not supported; join the tables, then aggregate",
                    Some(*span),
                ));
            }
            let left_slots: Vec<usize> = left.leaves().iter().filter_map(|leaf| leaf.slot()).collect();
            for (a, b) in on {
                for key in [a, b] {
                    let side = if references_only(key, &left_slots) { l } else { r };
                    check_join_key(key, side, scope)?;
                }
            }
            Ok(match (l, r) {
                (Level::Public, x) | (x, Level::Public) => x,
                (a, _) => a,
            })
        }
    }
}

/// Whether every column `e` references belongs to one of `slots`.
fn references_only(e: &Expr, slots: &[usize]) -> bool {
    e.column_refs().iter().all(|c| slots.contains(&c.slot))
}

/// A join key on a side that carries protected rows must be a bare column
/// passing through a key the owner declared: a constant or computed key
/// pairs every row with many (a cross join in disguise, in which a filter on
/// one side weighs the other side's people). On public or released sides,
/// anything free goes; a protected column still needs to be a declared key.
fn check_join_key(key: &Expr, side: Level, scope: &Scope) -> Result<()> {
    let info = expr_info(key, scope);
    let declared = matches!(key.kind, ExprKind::Column(_)) && info.join_key && info.base.is_some();
    let allowed = match side {
        Level::RowLevel => declared,
        Level::Public | Level::Aggregated => info.role == Eff::Free || declared,
    };
    if allowed {
        return Ok(());
    }
    let text = if side == Level::RowLevel && info.role == Eff::Free {
        "a join key on rows of a protected table must be a column the data owner declared as a join key, not a constant or a computed value (DESCRIBE shows the join keys)"
    } else {
        "joins on protected tables must use the join keys the data owner declared (DESCRIBE shows them)"
    };
    Err(Error::refused(Rule::JoinKey, text, Some(key.span)))
}

fn table_infos(table: &Table) -> Vec<ColInfo> {
    table
        .columns
        .iter()
        .map(|c| {
            if table.public {
                return ColInfo::free();
            }
            let role = match c.role {
                Role::Identifier => Eff::Identifier,
                Role::Measure => Eff::Measure,
                Role::Dimension | Role::Hidden => Eff::Dimension,
            };
            ColInfo {
                role,
                base: Some((table.name.clone(), c.name.clone())),
                bounded: c.bounds.is_some() || !c.ty.is_numeric(),
                extra_aggregates: c.aggregates.clone(),
                join_key: table.join_keys.iter().any(|k| k.eq_ignore_ascii_case(&c.name)),
                plain: true,
            }
        })
        .collect()
}

fn column_info<'s>(c: &ColumnRef, scope: &'s Scope) -> Option<&'s ColInfo> {
    scope.get(&c.slot).and_then(|cols| cols.get(c.index))
}

/// The info of an expression evaluated per row (aggregates count as free).
fn expr_info(e: &Expr, scope: &Scope) -> ColInfo {
    match &e.kind {
        ExprKind::Column(c) => column_info(c, scope).cloned().unwrap_or_else(ColInfo::free),
        ExprKind::Aggregate { .. } | ExprKind::Literal(_) => ColInfo::free(),
        _ if is_measure_bin(e, scope) => ColInfo { role: Eff::Dimension, plain: false, join_key: false, ..ColInfo::free() },
        _ => {
            let children: Vec<ColInfo> = e.children().into_iter().map(|c| expr_info(c, scope)).collect();
            let refs: Vec<&ColInfo> = children.iter().collect();
            let mut info = ColInfo::combine(&refs);
            info.bounded = info.bounded && is_arithmetic(e);
            info.plain = info.plain && is_arithmetic(e);
            info
        }
    }
}

/// Whether an expression is *linear* arithmetic of columns: sums and
/// differences of columns, scaled by constants. A product of columns is not
/// allowed: a polynomial such as `x * (age - 1) * (age - 2) ...` acts as a
/// hidden condition that singles out one value.
fn is_arithmetic(e: &Expr) -> bool {
    let constant = |x: &Expr| !x.references_columns() && is_arithmetic(x);
    match &e.kind {
        ExprKind::Column(_) => true,
        ExprKind::Literal(Literal::Integer(_) | Literal::Double(_)) => true,
        ExprKind::Binary { op: BinaryOp::Add | BinaryOp::Sub, left, right } => is_arithmetic(left) && is_arithmetic(right),
        ExprKind::Binary { op: BinaryOp::Mul, left, right } => is_arithmetic(left) && is_arithmetic(right) && (constant(left) || constant(right)),
        // Division only by a non-zero constant: division by a column is unbounded.
        ExprKind::Binary { op: BinaryOp::Div, left, right } => {
            is_arithmetic(left) && matches!(right.kind, ExprKind::Literal(Literal::Integer(d)) if d != 0)
                || is_arithmetic(left) && matches!(right.kind, ExprKind::Literal(Literal::Double(d)) if d != 0.0)
        }
        ExprKind::Unary { op: UnaryOp::Neg, expr } => is_arithmetic(expr),
        // A cast to an integer rounds (a fractional value times 1e9, cast,
        // would carry digits that no released float shows): only integers.
        ExprKind::Cast { expr, to: SqlType::Integer } => expr.ty == SqlType::Integer && is_arithmetic(expr),
        ExprKind::Cast { expr, to: SqlType::Double } => is_arithmetic(expr),
        _ => false,
    }
}

/// `WIDTH_BUCKET(<measure>, low, high, n)` with constant edges: a measure cut
/// into fixed bins acts as a dimension (each bin then faces the k-threshold
/// like any group). The edges must be constants so they cannot follow the data.
fn is_measure_bin(e: &Expr, scope: &Scope) -> bool {
    let ExprKind::Scalar { func: ScalarFunc::WidthBucket, args } = &e.kind else { return false };
    let Some((value, edges)) = args.split_first() else { return false };
    edges.iter().all(|a| !a.references_columns()) && is_arithmetic(value) && expr_info(value, scope).role == Eff::Measure
}

/// Checks per-row uses (outside aggregates): no identifiers, no measures
/// (except cut into bins, see [`is_measure_bin`]).
fn check_row_use(e: &Expr, scope: &Scope, clause: &str) -> Result<()> {
    match &e.kind {
        ExprKind::Aggregate { .. } => Ok(()),
        _ if is_measure_bin(e, scope) => Ok(()),
        ExprKind::Column(c) => {
            let Some(info) = column_info(c, scope) else { return Ok(()) };
            match info.role {
                Eff::Identifier => Err(Error::refused(
                    Rule::IdentifierUse,
                    format!("`{}` identifies people: it can only be a join key or counted with COUNT(DISTINCT {}), not used in {clause}", c.name, c.name),
                    Some(e.span),
                )),
                Eff::Measure => Err(Error::refused(
                    Rule::MeasureUse,
                    format!("`{}` is a measure: use it inside an aggregate such as AVG({}), not in {clause}", c.name, c.name),
                    Some(e.span),
                )),
                _ => Ok(()),
            }
        }
        _ => e.children().into_iter().try_for_each(|c| check_row_use(c, scope, clause)),
    }
}

/// Checks an aggregate call's arguments against the roles and the owner's lists.
fn check_aggregate(e: &Expr, scope: &Scope) -> Result<()> {
    let ExprKind::Aggregate { func, args, distinct } = &e.kind else {
        return e.children().into_iter().try_for_each(|c| check_aggregate(c, scope));
    };
    let func = *func;
    let data_args: Vec<&Expr> = match func {
        AggFunc::Quantile => args.iter().take(1).collect(),
        _ => args.iter().collect(),
    };
    for arg in data_args {
        let info = expr_info(arg, scope);
        if info.role == Eff::Free {
            continue;
        }
        if !is_arithmetic(arg) || !info.plain {
            return Err(Error::refused(
                Rule::ConditionalAggregate,
                format!(
                    "inside {} on protected data, use a column or a linear combination of columns (no conditions, functions or products of columns, which act as hidden filters); filter with WHERE or GROUP BY the condition instead",
                    func.sql_name()
                ),
                Some(arg.span),
            ));
        }
        // The second moment of a sum holds the products of its terms
        // (VAR(x + y) - VAR(x) - VAR(y) = 2 COV(x, y)), and products act as
        // hidden filters: second moments take columns only.
        let second_moment = matches!(func, AggFunc::Stddev | AggFunc::Variance | AggFunc::Corr | AggFunc::CovarSamp);
        // Through subqueries and CTEs too: the column must pass a table's
        // column on unchanged (`age + died AS x` below is arithmetic here;
        // so is a cast, whose info has no base column).
        if second_moment && !(matches!(arg.kind, ExprKind::Column(_)) && info.base.is_some()) {
            return Err(Error::refused(
                Rule::ConditionalAggregate,
                format!(
                    "{} on protected data takes columns, not arithmetic of columns: the second moment of a sum holds the products of its terms, which act as hidden filters",
                    func.sql_name()
                ),
                Some(arg.span),
            ));
        }
        let column_name = info.base.as_ref().map(|(_, c)| c.clone()).unwrap_or_else(|| "this expression".into());
        let bare = matches!(arg.kind, ExprKind::Column(_));
        match column_permits(func, *distinct, bare, info.role, info.bounded, &info.extra_aggregates) {
            Ok(()) => {}
            Err(Rule::IdentifierUse) => {
                return Err(Error::refused(Rule::IdentifierUse, "an identifier can only be counted, with COUNT(DISTINCT column)", Some(arg.span)));
            }
            Err(Rule::AggregateNotAllowed) => {
                return Err(Error::refused(
                    Rule::AggregateNotAllowed,
                    format!(
                        "{} returns one person's own value; the data owner does not allow it on {column_name} (DESCRIBE lists the allowed aggregates)",
                        func.sql_name()
                    ),
                    Some(e.span),
                ));
            }
            Err(rule) => {
                return Err(Error::refused(
                    rule,
                    format!("{} needs bounds on every column it adds up, so no one person can dominate it; {column_name} has none", func.sql_name()),
                    Some(arg.span),
                ));
            }
        }
    }
    Ok(())
}

/// The owner's per-column rule for an aggregate over protected data: the one
/// place it is written. The check applies it to every argument, and
/// [`allowed_aggregates`] (DESCRIBE, inspect) lists what it permits, so the
/// two cannot disagree. `bare`: the argument is a column, not arithmetic.
fn column_permits(func: AggFunc, distinct: bool, bare: bool, role: Eff, bounded: bool, extra: &[AggFunc]) -> std::result::Result<(), Rule> {
    match role {
        Eff::Free => Ok(()),
        Eff::Identifier if func == AggFunc::Count && distinct && bare => Ok(()),
        Eff::Identifier => Err(Rule::IdentifierUse),
        Eff::Dimension | Eff::Measure => {
            if func.is_order_statistic() && !(bare && extra.contains(&func)) {
                Err(Rule::AggregateNotAllowed)
            } else if func.needs_bounds() && !bounded {
                Err(Rule::Unbounded)
            } else {
                Ok(())
            }
        }
    }
}

/// The aggregates a column may be used in, as the check applies them: what
/// DESCRIBE, inspect and completion show.
pub fn allowed_aggregates(table: &Table, column: &Column) -> Vec<&'static str> {
    if table.public {
        return AggFunc::CONFIG_NAMES.to_vec();
    }
    let Some(info) = table_infos(table).into_iter().zip(&table.columns).find(|(_, c)| std::ptr::eq(*c, column)).map(|(i, _)| i) else {
        return vec![];
    };
    if column.role == Role::Identifier {
        return vec!["count (DISTINCT only)"];
    }
    const LISTED: [AggFunc; 11] = [
        AggFunc::Count,
        AggFunc::Sum,
        AggFunc::Avg,
        AggFunc::Stddev,
        AggFunc::Variance,
        AggFunc::Corr,
        AggFunc::CovarSamp,
        AggFunc::Min,
        AggFunc::Max,
        AggFunc::Median,
        AggFunc::Quantile,
    ];
    LISTED
        .into_iter()
        // Only COUNT and MIN/MAX apply to a non-numeric column (the binder's rule).
        .filter(|f| column.ty.is_numeric() || matches!(f, AggFunc::Count | AggFunc::Min | AggFunc::Max))
        .filter(|&f| column_permits(f, false, true, info.role, info.bounded, &info.extra_aggregates).is_ok())
        .map(AggFunc::config_name)
        .collect()
}

fn check_select(s: &Select) -> Result<(Level, Vec<ColInfo>)> {
    let mut scope = Scope::new();
    let from_level = match &s.from {
        Some(item) => check_from(item, &mut scope)?,
        None => Level::Public,
    };
    if let Some(w) = &s.filter {
        check_row_use(w, &scope, "WHERE")?;
    }
    for g in &s.group_by {
        check_row_use(g, &scope, "GROUP BY")?;
    }
    // A row-level block over protected rows only passes columns on (with
    // their roles, see `expr_info`); its uses are checked where it is
    // aggregated, and it is refused if it is the result.
    let passes_rows_on = from_level == Level::RowLevel && !s.aggregate;
    for item in &s.projection {
        let clause = if item.sort_only { "ORDER BY" } else { "the select list" };
        if !passes_rows_on {
            check_row_use(&item.expr, &scope, clause)?;
        }
        check_aggregate(&item.expr, &scope)?;
    }
    if let Some(h) = &s.having {
        check_row_use(h, &scope, "HAVING")?;
        check_aggregate(h, &scope)?;
    }
    let level = match (from_level, s.aggregate) {
        (Level::Public, _) => Level::Public,
        (Level::RowLevel, true) => Level::Aggregated,
        (Level::RowLevel, false) => {
            if s.distinct {
                return Err(Error::refused(
                    Rule::RawRows,
                    "SELECT DISTINCT on protected rows lists individual values; use GROUP BY with COUNT(*)",
                    Some(s.span),
                ));
            }
            Level::RowLevel
        }
        // Post-processing released rows; the plan hides any output row that
        // uses a hidden one (see `lower`).
        (Level::Aggregated, true) => Level::Aggregated,
        (Level::Aggregated, false) => Level::Aggregated,
    };
    let infos = s
        .projection
        .iter()
        .filter(|i| !i.sort_only)
        .map(|i| if level == Level::Aggregated && s.aggregate { ColInfo::free() } else { expr_info(&i.expr, &scope) });
    Ok((level, infos.collect()))
}

/// Whether the query's result is a single whole-table aggregate row (no GROUP BY at the top).
pub(crate) fn is_whole_table_aggregate(q: &Query) -> bool {
    match &q.body {
        SetExpr::Select(s) => s.aggregate && s.group_by.is_empty(),
        SetExpr::Query(inner) => is_whole_table_aggregate(inner),
        SetExpr::Union { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: &[AggFunc] = &[];

    #[test]
    fn an_identifier_is_only_counted_distinct_and_bare() {
        assert_eq!(column_permits(AggFunc::Count, true, true, Eff::Identifier, true, NONE), Ok(()));
        assert_eq!(column_permits(AggFunc::Count, false, true, Eff::Identifier, true, NONE), Err(Rule::IdentifierUse));
        assert_eq!(column_permits(AggFunc::Count, true, false, Eff::Identifier, true, NONE), Err(Rule::IdentifierUse));
        assert_eq!(column_permits(AggFunc::Sum, false, true, Eff::Identifier, true, NONE), Err(Rule::IdentifierUse));
    }

    #[test]
    fn sums_need_bounds_and_order_statistics_need_the_owner() {
        for role in [Eff::Measure, Eff::Dimension] {
            assert_eq!(column_permits(AggFunc::Count, false, true, role, false, NONE), Ok(()));
            for f in [AggFunc::Sum, AggFunc::Avg, AggFunc::Stddev, AggFunc::Variance, AggFunc::Corr, AggFunc::CovarSamp] {
                assert_eq!(column_permits(f, false, true, role, false, NONE), Err(Rule::Unbounded), "{f:?}");
                assert_eq!(column_permits(f, false, true, role, true, NONE), Ok(()), "{f:?}");
            }
            for f in [AggFunc::Min, AggFunc::Max, AggFunc::Median, AggFunc::Quantile] {
                assert_eq!(column_permits(f, false, true, role, true, NONE), Err(Rule::AggregateNotAllowed), "{f:?}");
                assert_eq!(column_permits(f, false, true, role, true, &[f]), Ok(()), "{f:?}");
                // Allowed on the column, not on arithmetic of it.
                assert_eq!(column_permits(f, false, false, role, true, &[f]), Err(Rule::AggregateNotAllowed), "{f:?}");
            }
        }
        // Public data and released values: anything.
        assert_eq!(column_permits(AggFunc::Max, false, false, Eff::Free, false, NONE), Ok(()));
    }
}
