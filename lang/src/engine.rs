//! Execution: collect a lowered plan with cancellation and a deadline, map
//! polars errors to texts that never contain data, and convert results to
//! owned [`Value`]s.

use crate::error::{Error, Result};
use crate::types::SqlType;
use polars::prelude::{AnyValue, DataFrame, LazyFrame, PolarsError};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set from another thread to stop the running query (interrupt).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs the plan on its own thread, waiting for the result, an interrupt or
/// the deadline. A panic inside polars becomes an error (on polars' own
/// concurrent collector it would abort the process). On interrupt or timeout
/// the caller gets its answer at once; the abandoned computation finishes in
/// the background and its result is dropped.
///
/// `streaming` picks polars' streaming engine (faster on plain queries; the
/// protected plans' filtered aggregates run faster in memory).
pub fn collect(frame: LazyFrame, cancel: &CancelFlag, timeout: Duration, streaming: bool) -> Result<DataFrame> {
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("safe-data-query".into())
        .stack_size(64 << 20)
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let engine = if streaming { polars::prelude::Engine::Streaming } else { polars::prelude::Engine::InMemory };
                frame.collect_with_engine(engine).map(|r| r.unwrap_single())
            }));
            let _ = tx.send(result);
        })
        .map_err(|_| Error::Engine("cannot start the query thread".into()))?;
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(Ok(result)) => return result.map_err(|e| map_polars_error(&e)),
            Ok(Err(_panic)) => return Err(Error::Engine("an internal error occurred".into())),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(Error::Engine("an internal error occurred".into())),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if cancel.is_cancelled() {
            return Err(Error::Interrupted);
        }
        if started.elapsed() >= timeout {
            return Err(Error::Timeout(timeout.as_secs()));
        }
    }
}

/// A generic text for a polars error. Polars messages can quote values
/// (failed casts, parse errors), so none of the message is kept.
pub fn map_polars_error(e: &PolarsError) -> Error {
    let text = match e {
        PolarsError::ComputeError(_) => "a computation could not be carried out on these values",
        PolarsError::InvalidOperation(_) => "an operation is not valid for these types",
        PolarsError::SchemaMismatch(_) | PolarsError::ShapeMismatch(_) => "the parts of the query do not fit together",
        PolarsError::ColumnNotFound(_) | PolarsError::SchemaFieldNotFound(_) => "internal planning error",
        PolarsError::OutOfBounds(_) => "a value was out of range",
        PolarsError::IO { .. } => "a data source could not be read",
        _ => "an internal error occurred",
    };
    Error::Engine(text.to_string())
}

/// One cell of a released result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Null,
    Boolean(bool),
    Integer(i64),
    Double(f64),
    Text(String),
    /// Days since the epoch; serialised as ISO text by renderers.
    #[serde(skip)]
    Date(i32),
    /// Microseconds since the epoch.
    #[serde(skip)]
    Timestamp(i64),
}

impl Value {
    pub fn from_any(v: &AnyValue<'_>, ty: SqlType) -> Value {
        match v {
            AnyValue::Null => Value::Null,
            AnyValue::Boolean(b) => Value::Boolean(*b),
            AnyValue::Int8(x) => Value::Integer(*x as i64),
            AnyValue::Int16(x) => Value::Integer(*x as i64),
            AnyValue::Int32(x) => Value::Integer(*x as i64),
            AnyValue::Int64(x) => Value::Integer(*x),
            AnyValue::UInt8(x) => Value::Integer(*x as i64),
            AnyValue::UInt16(x) => Value::Integer(*x as i64),
            AnyValue::UInt32(x) => Value::Integer(*x as i64),
            AnyValue::UInt64(x) => Value::Integer(*x as i64),
            AnyValue::Float32(x) => float(*x as f64),
            AnyValue::Float64(x) => float(*x),
            AnyValue::String(s) => Value::Text(s.to_string()),
            AnyValue::StringOwned(s) => Value::Text(s.to_string()),
            AnyValue::Date(d) => Value::Date(*d),
            AnyValue::Datetime(t, unit, _) | AnyValue::DatetimeOwned(t, unit, _) => Value::Timestamp(match unit {
                polars::prelude::TimeUnit::Nanoseconds => *t / 1000,
                polars::prelude::TimeUnit::Microseconds => *t,
                polars::prelude::TimeUnit::Milliseconds => *t * 1000,
            }),
            other => match ty {
                SqlType::Text => Value::Text(other.to_string()),
                _ => Value::Null,
            },
        }
    }

    /// Plain text for tables and CSV (`NULL` is rendered by the caller).
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Boolean(b) => b.to_string(),
            Value::Integer(i) => i.to_string(),
            Value::Double(x) => format_double(*x),
            Value::Text(s) => s.clone(),
            Value::Date(d) => format_date(*d),
            Value::Timestamp(t) => format_timestamp(*t),
        }
    }

    /// JSON for scripts and structured outputs.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Boolean(b) => (*b).into(),
            Value::Integer(i) => (*i).into(),
            Value::Double(x) => serde_json::Number::from_f64(*x).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null),
            Value::Text(s) => s.clone().into(),
            Value::Date(_) | Value::Timestamp(_) => self.to_text().into(),
        }
    }
}

fn float(x: f64) -> Value {
    if x.is_nan() { Value::Null } else { Value::Double(x) }
}

/// Shortest text that reads back as the same double, without exponent for common magnitudes.
pub fn format_double(x: f64) -> String {
    // -0.0 (e.g. a rounded tiny negative) reads as 0.0.
    let x = if x == 0.0 { 0.0 } else { x };
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x.fract() == 0.0 && x.abs() < 1e15 {
        return format!("{x:.1}");
    }
    format!("{x}")
}

/// ISO date of days since 1970-01-01 (Howard Hinnant's civil-from-days).
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn format_timestamp(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    let rest = micros.rem_euclid(86_400_000_000) / 1_000_000;
    format!("{} {:02}:{:02}:{:02}", format_date(days as i32), rest / 3600, rest / 60 % 60, rest % 60)
}

/// Converts a collected frame's first `width` columns to rows of values.
pub fn rows_of(df: &DataFrame, types: &[SqlType], row_indices: &[usize]) -> Vec<Vec<Value>> {
    let columns = df.columns();
    row_indices
        .iter()
        .map(|&r| {
            types
                .iter()
                .enumerate()
                .map(|(c, ty)| columns[c].get(r).map(|v| Value::from_any(&v, *ty)).unwrap_or(Value::Null))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(18_628), "2021-01-01");
        assert_eq!(crate::bind_support::parse_date("2021-01-01"), Some(18_628));
        assert_eq!(format_date(-1), "1969-12-31");
    }
}
