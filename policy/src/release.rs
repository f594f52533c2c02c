//! The release: the only way a result leaves the kernel.
//!
//! [`Released`] has private fields and no public constructor; the only
//! functions that build one live in this crate and run the k-threshold,
//! differencing and row-limit checks first. The kernel's renderers accept
//! nothing else, so "nothing reaches the client except through the
//! release" is a property of the types.

use crate::check::Level;
use crate::engine::rows_of;
use crate::error::{Error, Result, Rule};
use crate::lower::{POINT, SIGNIFICANT_DIGITS, WITHHELD_DIFF, WITHHELD_THIN, WithheldPoint};
use polars::prelude::{AnyValue, DataFrame, DataType};
use safe_data_lang::chart::Chart;
use safe_data_lang::ir::Field;
use safe_data_lang::span::Span;
use safe_data_lang::value::Value;
use serde::Serialize;

/// A policy notice shown apart from the data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub kind: NoticeKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// Groups withheld: empty, or resting on fewer than k people.
    Suppressed,
    /// Groups withheld by the differencing defense.
    Differencing,
    /// Rows cut at the owner's max_rows.
    Truncated,
}

/// What the release verdict was, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Released,
    PartlySuppressed,
    Refused,
}

#[derive(Debug, Clone)]
enum Body {
    Table { columns: Vec<Field>, rows: Vec<Vec<Value>> },
    Text(String),
}

/// A result the policy has released. Only this crate can make one.
#[derive(Debug, Clone)]
pub struct Released {
    body: Body,
    notices: Vec<Notice>,
    /// How to draw the rows (CHART statements).
    chart: Option<Chart>,
}

impl Released {
    /// Column names and types, when the result is a table.
    pub fn columns(&self) -> &[Field] {
        match &self.body {
            Body::Table { columns, .. } => columns,
            Body::Text(_) => &[],
        }
    }

    pub fn rows(&self) -> &[Vec<Value>] {
        match &self.body {
            Body::Table { rows, .. } => rows,
            Body::Text(_) => &[],
        }
    }

    /// Plain text, for EXPLAIN.
    pub fn text(&self) -> Option<&str> {
        match &self.body {
            Body::Text(t) => Some(t),
            Body::Table { .. } => None,
        }
    }

    pub fn notices(&self) -> &[Notice] {
        &self.notices
    }

    /// The chart to draw from these rows, for CHART statements.
    pub fn chart(&self) -> Option<&Chart> {
        self.chart.as_ref()
    }

    pub(crate) fn with_chart(mut self, chart: Chart) -> Released {
        self.chart = Some(chart);
        self
    }

    pub(crate) fn verdict(&self) -> Verdict {
        if self.notices.iter().any(|n| n.kind != NoticeKind::Truncated) { Verdict::PartlySuppressed } else { Verdict::Released }
    }

    /// Catalog information (SHOW TABLES, DESCRIBE): names and settings, never data.
    pub(crate) fn catalog(columns: Vec<Field>, rows: Vec<Vec<Value>>) -> Released {
        Released { body: Body::Table { columns, rows }, notices: vec![], chart: None }
    }

    pub(crate) fn explanation(text: String) -> Released {
        Released { body: Body::Text(text), notices: vec![], chart: None }
    }
}

/// What the release needs to know about the query.
pub(crate) struct ReleaseInput<'a> {
    pub level: Level,
    pub output: &'a [Field],
    /// The lowering's withheld points, in the order of their rows.
    pub withheld: &'a [WithheldPoint],
    pub whole_table: bool,
    pub min_group_size: u64,
    pub max_rows: usize,
    pub span: Span,
}

/// Rounds to [`SIGNIFICANT_DIGITS`] (through the decimal text, so the result
/// is the nearest double to the rounded decimal). The aggregates were
/// rounded where they were computed; values computed from them are rounded
/// here, in every output format.
pub(crate) fn round_significant(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    format!("{:.*e}", SIGNIFICANT_DIGITS - 1, x).parse().unwrap_or(x)
}

fn shape_error() -> Error {
    Error::Run(crate::error::RunError::Engine("internal error: the release evidence is missing"))
}

/// Groups withheld at one withheld point: as thin, and as singling out.
type Withheld = (u64, u64);

/// The frame's rows of the answer, and per withheld point the groups
/// withheld as thin and by the differencing rule.
fn split(df: &DataFrame, points: usize) -> Result<(Vec<usize>, Vec<Withheld>)> {
    let column = |name: &str| df.column(name).and_then(|c| c.cast(&DataType::Int64)).map_err(|_| shape_error());
    let (point, thin, diff) = (column(POINT)?, column(WITHHELD_THIN)?, column(WITHHELD_DIFF)?);
    let int = |c: &polars::prelude::Column, i: usize| match c.get(i) {
        Ok(AnyValue::Int64(v)) => Some(v),
        _ => None,
    };
    let mut rows = Vec::new();
    let mut counts: Vec<Option<(u64, u64)>> = vec![None; points];
    for i in 0..df.height() {
        match int(&point, i) {
            None => rows.push(i),
            Some(p) => {
                let slot = usize::try_from(p).ok().and_then(|p| counts.get_mut(p)).ok_or_else(shape_error)?;
                // A missing count withholds everything (fail closed).
                let n = |c| int(c, i).map(|v| v.max(0) as u64).ok_or_else(shape_error);
                *slot = Some((n(&thin)?, n(&diff)?));
            }
        }
    }
    // Every point must have reported, or nothing is released.
    let counts = counts.into_iter().collect::<Option<Vec<_>>>().ok_or_else(shape_error)?;
    Ok((rows, counts))
}

/// Applies the k-threshold and differencing verdicts of the plan (the
/// groups it withheld), rounds floating-point values, and the row limit.
pub(crate) fn release(df: &DataFrame, input: &ReleaseInput<'_>) -> Result<Released> {
    let types: Vec<_> = input.output.iter().map(|f| f.ty).collect();
    let mut notices = Vec::new();
    let (mut kept, counts) = split(df, input.withheld.len())?;
    match input.level {
        Level::RowLevel => {
            // The static check refuses these; this is the second lock.
            return Err(Error::refused(Rule::RawRows, "individual rows of a protected table are never released", Some(input.span)));
        }
        Level::Public => {}
        Level::Aggregated => {
            let k = input.min_group_size;
            let mut top = (0, 0);
            let mut inner = (0, 0);
            for (point, (thin, diff)) in input.withheld.iter().zip(&counts) {
                let sum = if point.top { &mut top } else { &mut inner };
                sum.0 += thin;
                sum.1 += diff;
            }
            if input.whole_table && input.withheld.iter().any(|p| p.top) && top.0 > 0 {
                return Err(Error::refused(
                    Rule::MinGroupSize,
                    format!("this result would rest on fewer than {k} people, so it is not released; widen the filters"),
                    Some(input.span),
                ));
            }
            // A group that singles out 1 to k-1 people (filters removed or
            // touched them, a UNION ALL branch or a level of a correlated
            // column holds them) refuses the statement: withholding just
            // that group would show which group they are in, since groups
            // that single out no one are released.
            if top.1 + inner.1 > 0 {
                return Err(Error::refused(
                    Rule::Differencing,
                    format!(
                        "in at least one group, the filters (or a UNION ALL branch, or one level of a column inside CORR/COVAR_SAMP) single out fewer than {k} people, so the result could be compared with another to learn about them; widen or drop the filter, or group more coarsely"
                    ),
                    Some(input.span),
                ));
            }
            for (n, of) in [(top.0, ""), (inner.0, " of a subquery")] {
                if n > 0 {
                    notices.push(Notice {
                        kind: NoticeKind::Suppressed,
                        message: format!("{n} group{}{of} withheld: empty or fewer than {k} people", plural(n as usize)),
                    });
                }
            }
        }
    }
    if kept.len() > input.max_rows {
        notices.push(Notice {
            kind: NoticeKind::Truncated,
            message: format!("showing the first {} of {} rows (the data owner's row limit)", input.max_rows, kept.len()),
        });
        kept.truncate(input.max_rows);
    }
    let mut rows = rows_of(df, &types, &kept);
    if input.level == Level::Aggregated {
        for value in rows.iter_mut().flatten() {
            if let Value::Double(x) = value {
                *x = round_significant(*x);
            }
        }
    }
    Ok(Released { body: Body::Table { columns: input.output.to_vec(), rows }, notices, chart: None })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_keep_six_significant_digits() {
        assert_eq!(round_significant(27.345_678_91), 27.3457);
        assert_eq!(round_significant(-0.000_123_456_789), -0.000_123_457);
        assert_eq!(round_significant(123_456_789.0), 123_457_000.0);
        assert_eq!(round_significant(0.6000000000000001), 0.6);
        assert_eq!(round_significant(0.0), 0.0);
        assert!(round_significant(f64::NAN).is_nan());
        assert_eq!(round_significant(f64::INFINITY), f64::INFINITY);
        // AVG × COUNT of 1,000 rows no longer gives back a row to 1e-11:
        // the rounding error of the average alone is far above it.
        let avg = 54_321.0 / 1_000.0 + 1e-9;
        assert!((round_significant(avg) * 1_000.0 - avg * 1_000.0).abs() > 1e-7);
    }

    /// A lowered frame: the answer's rows (`#0` text, `#1` double), then one
    /// row per withheld point with its (thin, differencing) counts.
    fn frame(rows: &[(&str, f64)], points: &[(i64, i64)]) -> DataFrame {
        use polars::prelude::{Column, NamedFrom, Series};
        let n = rows.len() + points.len();
        let mut keys: Vec<Option<&str>> = rows.iter().map(|r| Some(r.0)).collect();
        let mut values: Vec<Option<f64>> = rows.iter().map(|r| Some(r.1)).collect();
        let mut point: Vec<Option<i32>> = vec![None; rows.len()];
        let mut thin: Vec<Option<i64>> = vec![None; rows.len()];
        let mut diff: Vec<Option<i64>> = vec![None; rows.len()];
        for (i, (t, d)) in points.iter().enumerate() {
            keys.push(None);
            values.push(None);
            point.push(Some(i as i32));
            thin.push(Some(*t));
            diff.push(Some(*d));
        }
        assert_eq!(keys.len(), n);
        DataFrame::new_infer_height(vec![
            Column::from(Series::new("#0".into(), keys)),
            Column::from(Series::new("#1".into(), values)),
            Column::from(Series::new(POINT.into(), point)),
            Column::from(Series::new(WITHHELD_THIN.into(), thin)),
            Column::from(Series::new(WITHHELD_DIFF.into(), diff)),
        ])
        .expect("frame")
    }

    fn run(df: &DataFrame, whole_table: bool, max_rows: usize, points: usize) -> Result<Released> {
        let output =
            [Field { name: "k".into(), ty: safe_data_lang::types::SqlType::Text }, Field { name: "v".into(), ty: safe_data_lang::types::SqlType::Double }];
        let withheld = vec![WithheldPoint { top: true }; points];
        release(
            df,
            &ReleaseInput {
                level: Level::Aggregated,
                output: &output,
                withheld: &withheld,
                whole_table,
                min_group_size: 10,
                max_rows,
                span: Span { start: 0, end: 1 },
            },
        )
    }

    #[test]
    fn thin_groups_are_counted_in_a_notice_and_doubles_rounded() {
        let released = run(&frame(&[("a", 1.234_567_89), ("b", 2.0)], &[(3, 0)]), false, 100, 1).unwrap();
        assert_eq!(released.rows().len(), 2);
        assert_eq!(released.rows()[0][1], Value::Double(1.23457));
        let [notice] = released.notices() else { panic!("{:?}", released.notices()) };
        assert_eq!((notice.kind, notice.message.as_str()), (NoticeKind::Suppressed, "3 groups withheld: empty or fewer than 10 people"));
    }

    #[test]
    fn a_group_that_singles_out_refuses_the_statement() {
        let err = run(&frame(&[("a", 1.0)], &[(0, 1)]), false, 100, 1).unwrap_err();
        assert_eq!(err.rule(), Some(Rule::Differencing));
    }

    #[test]
    fn a_whole_table_result_withheld_is_refused() {
        let err = run(&frame(&[], &[(1, 0)]), true, 100, 1).unwrap_err();
        assert_eq!(err.rule(), Some(Rule::MinGroupSize));
    }

    #[test]
    fn a_missing_point_row_releases_nothing() {
        // The plan has one withheld point but the frame reports none: fail closed.
        let err = run(&frame(&[("a", 1.0)], &[]), false, 100, 1).unwrap_err();
        assert_eq!(err.kind(), "ExecutionError", "{err}");
    }

    #[test]
    fn the_row_limit_truncates_with_a_notice() {
        let released = run(&frame(&[("a", 1.0), ("b", 2.0), ("c", 3.0)], &[(0, 0)]), false, 2, 1).unwrap();
        assert_eq!(released.rows().len(), 2);
        assert!(released.notices().iter().any(|n| n.kind == NoticeKind::Truncated && n.message.contains("first 2 of 3")), "{:?}", released.notices());
    }
}
