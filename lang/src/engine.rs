//! Execution: collect a lowered plan with cancellation and a deadline, map
//! polars errors to texts that never contain data, and convert results to
//! owned [`Value`]s.

use crate::error::{Error, Result};
use crate::types::SqlType;
use polars::prelude::{AnyValue, DataFrame, LazyFrame, PolarsError};
use serde::Serialize;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

/// What a query may use: wall time and (when a gauge is installed, see
/// [`set_memory_gauge`]) memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// Bytes the whole process may have allocated while the query runs.
    pub memory_bytes: Option<usize>,
}

impl Limits {
    pub fn time_only(timeout: Duration) -> Limits {
        Limits { timeout, memory_bytes: None }
    }
}

/// Reads the bytes the process has allocated (the kernel's counting allocator).
static MEMORY_GAUGE: OnceLock<fn() -> usize> = OnceLock::new();

/// Installs the function [`collect`] polls to enforce [`Limits::memory_bytes`].
pub fn set_memory_gauge(gauge: fn() -> usize) {
    let _ = MEMORY_GAUGE.set(gauge);
}

/// Whether polars' abort mechanism is installed (see [`enable_aborts`]).
static ABORTS: OnceLock<()> = OnceLock::new();
/// When this process last sent itself a SIGINT to stop polars (ms since
/// [`EPOCH`], 0 = never); see [`self_interrupted_recently`].
static LAST_SELF_INTERRUPT_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn ms_since_epoch() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Query threads still running (an abandoned one may linger).
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Lets [`collect`] stop a running polars computation, not just stop
/// waiting for it. Polars checks an abort flag in its executors (every
/// streaming task poll, joins, group-bys, between plan nodes); the flag is
/// set by its SIGINT handler, so stopping a query means sending ourselves a
/// SIGINT. From then on SIGINT no longer terminates the process: call this
/// only in a process that handles SIGINT as "interrupt" (the kernel), after
/// installing its own panic hook (polars wraps it to keep its abort panics quiet).
pub fn enable_aborts() {
    ABORTS.get_or_init(polars::error::abort::register_polars_abort_mechanism);
}

/// True if [`collect`] sent a SIGINT to stop polars in the last half
/// second, so the kernel's own SIGINT handler can ignore it. (Signals
/// coalesce, so this is a time window rather than a count.)
pub fn self_interrupted_recently() -> bool {
    let last = LAST_SELF_INTERRUPT_MS.load(Ordering::SeqCst);
    last != 0 && ms_since_epoch().saturating_sub(last) < 500
}

fn abort_running_query() {
    if ABORTS.get().is_some() {
        LAST_SELF_INTERRUPT_MS.store(ms_since_epoch(), Ordering::SeqCst);
        // SAFETY: raise(3) with a valid signal number; the handlers are
        // polars' (an atomic store) and tokio's (a pipe write).
        unsafe {
            libc::raise(libc::SIGINT);
        }
    }
}

/// How long an aborted query gets to unwind before it is abandoned.
const ABORT_GRACE: Duration = Duration::from_millis(800);
/// How long a new query waits for an aborted one to finish unwinding.
const DRAIN_WAIT: Duration = Duration::from_secs(3);

/// Why a query was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    Timeout,
    Memory,
}

/// Runs the plan on its own thread, waiting for the result, an interrupt,
/// the deadline or the memory budget. A panic inside polars becomes an
/// error. When a query is stopped, polars is told to abort (if
/// [`enable_aborts`] was called) and gets [`ABORT_GRACE`] to unwind; a
/// computation that does not stop in time is abandoned and finishes in the
/// background, its result dropped. Either way the caller gets its answer
/// within about a second.
///
/// Every plan runs on polars' streaming engine: with people counted by row
/// where the privacy unit is unique, it beats the in-memory engine on
/// protected plans too (CPU time, bench/), and it stops within milliseconds
/// when told to, where the in-memory engine checks the flag only between nodes.
pub fn collect(frame: LazyFrame, cancel: &CancelFlag, limits: Limits) -> Result<DataFrame> {
    wait_for_aborted_queries();
    match collect_once(frame.clone(), cancel, limits) {
        // Polars refused to start: an earlier, aborted query was still
        // unwinding with the abort flag set. Wait for it and try once more.
        Err(Error::Interrupted) if !cancel.is_cancelled() => {
            wait_for_aborted_queries();
            collect_once(frame, cancel, limits)
        }
        other => other,
    }
}

fn wait_for_aborted_queries() {
    let started = Instant::now();
    while RUNNING.load(Ordering::SeqCst) > 0 && started.elapsed() < DRAIN_WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn collect_once(frame: LazyFrame, cancel: &CancelFlag, limits: Limits) -> Result<DataFrame> {
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    RUNNING.fetch_add(1, Ordering::SeqCst);
    let spawned = std::thread::Builder::new().name("safe-data-query".into()).stack_size(64 << 20).spawn(move || {
        let run = std::panic::AssertUnwindSafe(|| frame.collect_with_engine(polars::prelude::Engine::Streaming).map(|r| r.unwrap_single()));
        let result = if ABORTS.get().is_some() {
            match polars::error::abort::catch_polars_abort(|| std::panic::catch_unwind(run)) {
                Ok(r) => r.map(Some),
                Err(_aborted) => Ok(None),
            }
        } else {
            std::panic::catch_unwind(run).map(Some)
        };
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        let _ = tx.send(result);
    });
    if spawned.is_err() {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        return Err(Error::Engine("cannot start the query thread".into()));
    }
    let mut stopped: Option<(Stop, Instant)> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(outcome) => {
                if let Some((why, _)) = stopped {
                    return Err(stop_error(why, limits));
                }
                return match outcome {
                    Ok(Some(result)) => result.map_err(|e| map_polars_error(&e)),
                    // Aborted without our asking: a SIGINT from outside.
                    Ok(None) => Err(Error::Interrupted),
                    Err(_panic) => Err(Error::Engine("an internal error occurred".into())),
                };
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(Error::Engine("an internal error occurred".into())),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        match stopped {
            Some((why, at)) => {
                if at.elapsed() >= ABORT_GRACE {
                    tracing::warn!("a stopped query did not unwind in time; abandoning it");
                    return Err(stop_error(why, limits));
                }
            }
            None => {
                let why = if cancel.is_cancelled() {
                    Some(Stop::Cancelled)
                } else if started.elapsed() >= limits.timeout {
                    Some(Stop::Timeout)
                } else if over_budget(limits) {
                    Some(Stop::Memory)
                } else {
                    None
                };
                if let Some(why) = why {
                    abort_running_query();
                    stopped = Some((why, Instant::now()));
                }
            }
        }
    }
}

fn over_budget(limits: Limits) -> bool {
    match (limits.memory_bytes, MEMORY_GAUGE.get()) {
        (Some(budget), Some(gauge)) => gauge() > budget,
        _ => false,
    }
}

fn stop_error(why: Stop, limits: Limits) -> Error {
    match why {
        Stop::Cancelled => Error::Interrupted,
        Stop::Timeout => Error::Timeout(limits.timeout.as_secs()),
        Stop::Memory => Error::MemoryBudget(limits.memory_bytes.unwrap_or(0) >> 20),
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
        .map(|&r| types.iter().enumerate().map(|(c, ty)| columns[c].get(r).map(|v| Value::from_any(&v, *ty)).unwrap_or(Value::Null)).collect())
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
