//! Execution: collect a lowered plan with cancellation and a deadline, map
//! polars errors to texts that never contain data, and convert results to
//! owned [`Value`]s.

use crate::error::{Result, RunError};
use polars::prelude::{AnyValue, DataFrame, LazyFrame, PolarsError};
use safe_data_lang::types::SqlType;
use safe_data_lang::value::{Value, float};
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
pub(crate) fn collect(frame: LazyFrame, cancel: &CancelFlag, limits: Limits) -> Result<DataFrame> {
    wait_for_aborted_queries();
    match collect_once(frame.clone(), cancel, limits) {
        // Polars refused to start: an earlier, aborted query was still
        // unwinding with the abort flag set. Wait for it and try once more.
        Err(crate::Error::Run(RunError::Interrupted)) if !cancel.is_cancelled() => {
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
        return Err(RunError::Engine("cannot start the query thread").into());
    }
    let mut stopped: Option<(Stop, Instant)> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(5)) {
            Ok(outcome) => {
                if let Some((why, _)) = stopped {
                    return Err(stop_error(why, limits).into());
                }
                return match outcome {
                    Ok(Some(result)) => result.map_err(|e| map_polars_error(&e).into()),
                    // Aborted without our asking: a SIGINT from outside.
                    Ok(None) => Err(RunError::Interrupted.into()),
                    Err(_panic) => Err(RunError::Engine("an internal error occurred").into()),
                };
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(RunError::Engine("an internal error occurred").into()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        match stopped {
            Some((why, at)) => {
                if at.elapsed() >= ABORT_GRACE {
                    tracing::warn!("a stopped query did not unwind in time; abandoning it");
                    return Err(stop_error(why, limits).into());
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

fn stop_error(why: Stop, limits: Limits) -> RunError {
    match why {
        Stop::Cancelled => RunError::Interrupted,
        Stop::Timeout => RunError::Timeout(limits.timeout.as_secs()),
        Stop::Memory => RunError::MemoryBudget(limits.memory_bytes.unwrap_or(0) >> 20),
    }
}

/// A generic text for a polars error. Polars messages can quote values
/// (failed casts, parse errors), so none of the message is kept.
pub(crate) fn map_polars_error(e: &PolarsError) -> RunError {
    let text = match e {
        PolarsError::ComputeError(_) => "a computation could not be carried out on these values",
        PolarsError::InvalidOperation(_) => "an operation is not valid for these types",
        PolarsError::SchemaMismatch(_) | PolarsError::ShapeMismatch(_) => "the parts of the query do not fit together",
        PolarsError::ColumnNotFound(_) | PolarsError::SchemaFieldNotFound(_) => "internal planning error",
        PolarsError::OutOfBounds(_) => "a value was out of range",
        PolarsError::IO { .. } => "a data source could not be read",
        _ => "an internal error occurred",
    };
    RunError::Engine(text)
}

/// One cell of a collected frame as a value of type `ty`.
pub(crate) fn value_of(v: &AnyValue<'_>, ty: SqlType) -> Value {
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

/// Converts a collected frame's first `width` columns to rows of values.
pub(crate) fn rows_of(df: &DataFrame, types: &[SqlType], row_indices: &[usize]) -> Vec<Vec<Value>> {
    let columns = df.columns();
    row_indices.iter().map(|&r| types.iter().enumerate().map(|(c, ty)| columns[c].get(r).map(|v| value_of(&v, *ty)).unwrap_or(Value::Null)).collect()).collect()
}
