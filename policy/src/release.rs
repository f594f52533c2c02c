//! The release: the only way a result leaves the kernel.
//!
//! [`Released`] has private fields and no public constructor; the only
//! functions that build one live in this crate and run the k-threshold,
//! differencing and row-limit checks first. The kernel's renderers accept
//! nothing else, so "nothing reaches the client except through the
//! release" is a property of the types.

use crate::check::Level;
use crate::error::{Error, Result, Rule};
use safe_data_lang::chart::Chart;
use safe_data_lang::engine::{Value, rows_of};
use safe_data_lang::ir::Field;
use safe_data_lang::lower::{DIFF_FLAG, THIN_FLAG};
use safe_data_lang::polars::prelude::{AnyValue, DataFrame, DataType};
use safe_data_lang::span::Span;
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
    /// Rows resting on fewer than k people.
    Suppressed,
    /// Rows hidden by the differencing defense.
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
    pub whole_table: bool,
    pub min_group_size: u64,
    pub max_rows: usize,
    pub span: Span,
}

fn flag_values(df: &DataFrame, name: &str) -> Result<Vec<bool>> {
    let column = df.column(name).map_err(|_| shape_error())?;
    let column = column.cast(&DataType::Boolean).map_err(|_| shape_error())?;
    // A missing verdict counts as "hide" (fail closed).
    Ok((0..column.len()).map(|i| !matches!(column.get(i), Ok(AnyValue::Boolean(false)))).collect())
}

fn shape_error() -> Error {
    Error::Query(safe_data_lang::Error::Engine("internal error: the release evidence is missing".into()))
}

/// Applies the k-threshold, the differencing defense and the row limit.
pub(crate) fn release(df: &DataFrame, input: &ReleaseInput<'_>) -> Result<Released> {
    let height = df.height();
    let types: Vec<_> = input.output.iter().map(|f| f.ty).collect();
    let mut notices = Vec::new();
    let kept: Vec<usize> = match input.level {
        Level::RowLevel => {
            // The static check refuses these; this is the second lock.
            return Err(Error::refused(Rule::RawRows, "individual rows of a protected table are never released", Some(input.span)));
        }
        Level::Public => (0..height).collect(),
        Level::Aggregated => {
            let thin = flag_values(df, THIN_FLAG)?;
            let diff = flag_values(df, DIFF_FLAG)?;
            let k = input.min_group_size;
            if input.whole_table {
                if thin.first().copied().unwrap_or(true) {
                    return Err(Error::refused(
                        Rule::MinGroupSize,
                        format!("this result would rest on fewer than {k} people, so it is not released; widen the filters"),
                        Some(input.span),
                    ));
                }
                if diff.first().copied().unwrap_or(true) {
                    return Err(Error::refused(
                        Rule::Differencing,
                        format!(
                            "the filters remove fewer than {k} people from the whole table, so the result could be compared with the unfiltered one to learn about them; widen or drop the filter"
                        ),
                        Some(input.span),
                    ));
                }
            }
            let thin_rows = thin.iter().filter(|t| **t).count();
            let diff_rows = thin.iter().zip(&diff).filter(|(t, d)| !**t && **d).count();
            if thin_rows > 0 {
                notices.push(Notice {
                    kind: NoticeKind::Suppressed,
                    message: format!("{thin_rows} row{} hidden: each rests on fewer than {k} people", plural(thin_rows)),
                });
            }
            if diff_rows > 0 {
                notices.push(Notice {
                    kind: NoticeKind::Differencing,
                    message: format!(
                        "{diff_rows} row{} hidden: the filters removed fewer than {k} people from {}, which could single them out",
                        plural(diff_rows),
                        if diff_rows == 1 { "its group" } else { "their groups" }
                    ),
                });
            }
            (0..height).filter(|&i| !thin[i] && !diff[i]).collect()
        }
    };
    let mut kept = kept;
    if kept.len() > input.max_rows {
        notices.push(Notice {
            kind: NoticeKind::Truncated,
            message: format!("showing the first {} of {} rows (the data owner's row limit)", input.max_rows, kept.len()),
        });
        kept.truncate(input.max_rows);
    }
    let rows = rows_of(df, &types, &kept);
    Ok(Released { body: Body::Table { columns: input.output.to_vec(), rows }, notices, chart: None })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
