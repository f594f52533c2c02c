//! The evaluation thread: execute requests, one at a time, in order.

use super::backend::{Cell, CellError, OutputKind};
use super::outgoing::{Executed, Iopub, Progress as Shown, Reply, State};
use super::{Job, Shared};
use serde_json::Value;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

/// How long after a failed execution the kernel waits for requests the
/// client sent before it saw the error (they are still on the wire).
const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_millis(30);

/// Idle this long after an execution, the kernel hands memory back to the
/// OS ([`crate::memory::trim`]). Long enough that back-to-back cells (a
/// notebook run) never pay for faulting pages back in.
const IDLE_TRIM_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

pub(super) fn evaluation_loop(shared: Arc<Shared>, jobs: std_mpsc::Receiver<Job>) {
    // Executions with a rank up to this were sent before an error the
    // client had not seen yet: they are answered `aborted`.
    let mut abort_up_to = 0;
    // Start-up trimmed already; each execution dirties memory again.
    let mut trimmed = true;
    loop {
        let next = if trimmed { jobs.recv().map_err(|_| std_mpsc::RecvTimeoutError::Disconnected) } else { jobs.recv_timeout(IDLE_TRIM_AFTER) };
        let job = match next {
            Ok(job) => job,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                crate::memory::trim();
                trimmed = true;
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        trimmed = false;
        if job.seq <= abort_up_to {
            shared.status(&job.msg.header, State::Busy);
            let count = *shared.execution_count.lock().unwrap_or_else(|p| p.into_inner());
            shared.reply(&job.msg.identities, &job.msg.header, &job.reply, Reply::Execute { execution_count: count, outcome: Executed::Aborted });
            shared.status(&job.msg.header, State::Idle);
            continue;
        }
        execute(&shared, &job, &mut abort_up_to);
    }
}

/// Runs one execute request. On failure with `stop_on_error`, raises
/// `abort_up_to` *before* replying: everything received by then (plus a
/// short grace for requests still on the wire) was sent before the client
/// could see the error; what it sends after the reply runs normally.
fn execute(shared: &Arc<Shared>, job: &Job, abort_up_to: &mut u64) {
    let request = &job.request;
    let stop_on_error = request.stop_on_error;
    let mut on_failure = || {
        if stop_on_error {
            std::thread::sleep(IN_FLIGHT_GRACE);
            *abort_up_to = shared.received.load(std::sync::atomic::Ordering::SeqCst);
        }
    };
    let msg = &job.msg;
    let parent = &msg.header;
    let reply = |outcome: Executed<'_>, execution_count: u64| shared.reply(&msg.identities, parent, &job.reply, Reply::Execute { execution_count, outcome });
    let (code, silent) = (request.code.as_str(), request.silent);
    let store_history = request.store_history && !silent;
    shared.status(parent, State::Busy);
    let count = {
        let mut counter = shared.execution_count.lock().unwrap_or_else(|p| p.into_inner());
        if store_history {
            *counter += 1;
        }
        *counter
    };
    if !silent {
        shared.publish(parent, Iopub::ExecuteInput { code, execution_count: count });
    }
    let progress = (!silent).then(|| Progress::start(shared, parent));
    let cell = Cell { code, silent, store_history, execution_count: count };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_cell(shared, parent, &cell)));
    if let Some(progress) = progress {
        progress.finish(matches!(outcome, Ok(Ok(()))));
    }
    let failure = match outcome {
        Ok(Ok(())) => {
            reply(Executed::Ok, count);
            None
        }
        Ok(Err(e)) => Some(e),
        Err(_) => {
            tracing::error!("evaluation panicked");
            Some(CellError::plain("InternalError", "an internal error occurred while evaluating this cell; the kernel is still running"))
        }
    };
    if let Some(error) = failure {
        if !silent {
            shared.publish(parent, Iopub::Error(&error));
        }
        on_failure();
        reply(Executed::Failed(&error), count);
    }
    shared.status(parent, State::Idle);
}

/// A cell that runs longer than [`Progress::AFTER`] shows an updating
/// display with the elapsed time (JupyterLab's stop button interrupts it);
/// when the cell ends, the display says how long it took.
struct Progress {
    done: std_mpsc::Sender<bool>,
    ticker: std::thread::JoinHandle<()>,
}

impl Progress {
    const AFTER: std::time::Duration = std::time::Duration::from_secs(1);
    const EVERY: std::time::Duration = std::time::Duration::from_millis(500);

    fn start(shared: &Arc<Shared>, parent: &Value) -> Progress {
        let (done, finished) = std_mpsc::channel::<bool>();
        let (shared, parent) = (shared.clone(), parent.clone());
        let ticker = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let display_id = uuid::Uuid::new_v4().to_string();
            let mut wait = Self::AFTER;
            let mut shown = false;
            let ok = loop {
                match finished.recv_timeout(wait) {
                    Ok(ok) => break ok,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break false,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                }
                shared.publish(&parent, Iopub::Progress { display_id: &display_id, update: shown, state: Shown::Running(started.elapsed()) });
                shown = true;
                wait = Self::EVERY;
            };
            if shown {
                let state = if ok { Shown::Finished(started.elapsed()) } else { Shown::Stopped(started.elapsed()) };
                shared.publish(&parent, Iopub::Progress { display_id: &display_id, update: true, state });
            }
        });
        Progress { done, ticker }
    }

    /// Stops the ticker; its last update is on iopub before this returns.
    fn finish(self, ok: bool) {
        let _ = self.done.send(ok);
        let _ = self.ticker.join();
    }
}

/// Runs a cell on the backend and publishes each output it yields: the
/// cell's result as `execute_result`, everything else as `display_data`.
/// Nothing else reaches iopub from here: the kernel forwards, it does not make results.
fn run_cell(shared: &Shared, parent: &Value, cell: &Cell<'_>) -> Result<(), CellError> {
    let count = cell.execution_count;
    shared.backend.execute(cell, &mut |output| match output.kind {
        OutputKind::Result => shared.publish(parent, Iopub::ExecuteResult { execution_count: count, data: &output.data }),
        OutputKind::Display => shared.publish(parent, Iopub::DisplayData(&output.data)),
    })
}
