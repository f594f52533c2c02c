//! The evaluation thread: execute requests, one at a time, in order.

use super::backend::{Cell, CellError, OutputKind};
use super::requests::error_content;
use super::{Job, Shared};
use crate::render;
use serde_json::{Value, json};
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
            shared.status(&job.msg.header, "busy");
            let count = *shared.execution_count.lock().unwrap_or_else(|p| p.into_inner());
            shared.reply(&job.msg, &job.reply, "execute_reply", json!({"status": "aborted", "execution_count": count, "payload": [], "user_expressions": {}}));
            shared.status(&job.msg.header, "idle");
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
    let stop_on_error = job.msg.content.get("stop_on_error").and_then(Value::as_bool).unwrap_or(true);
    let mut on_failure = || {
        if stop_on_error {
            std::thread::sleep(IN_FLIGHT_GRACE);
            *abort_up_to = shared.received.load(std::sync::atomic::Ordering::SeqCst);
        }
    };
    let msg = &job.msg;
    let parent = &msg.header;
    let c = &msg.content;
    let code = c.get("code").and_then(Value::as_str).unwrap_or("").to_string();
    let silent = c.get("silent").and_then(Value::as_bool).unwrap_or(false);
    let store_history = c.get("store_history").and_then(Value::as_bool).unwrap_or(!silent) && !silent;
    shared.status(parent, "busy");
    let count = {
        let mut counter = shared.execution_count.lock().unwrap_or_else(|p| p.into_inner());
        if store_history {
            *counter += 1;
        }
        *counter
    };
    if !silent {
        shared.publish("execute_input", parent, json!({"code": code, "execution_count": count}));
    }
    let progress = (!silent).then(|| Progress::start(shared, parent));
    let cell = Cell { code: &code, silent, store_history, execution_count: count };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_cell(shared, parent, &cell)));
    if let Some(progress) = progress {
        progress.finish(matches!(outcome, Ok(Ok(()))));
    }
    let failure = match outcome {
        Ok(Ok(())) => {
            shared.reply(msg, &job.reply, "execute_reply", json!({"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}));
            None
        }
        Ok(Err(e)) => Some(e),
        Err(_) => {
            tracing::error!("evaluation panicked");
            Some(CellError::plain("InternalError", "an internal error occurred while evaluating this cell; the kernel is still running"))
        }
    };
    if let Some(CellError { ename, evalue, traceback }) = failure {
        if !silent {
            shared.publish("error", parent, json!({"ename": ename, "evalue": evalue, "traceback": traceback}));
        }
        on_failure();
        let mut content = error_content(&ename, &evalue, &traceback);
        content["execution_count"] = json!(count);
        content["payload"] = json!([]);
        content["user_expressions"] = json!({});
        shared.reply(msg, &job.reply, "execute_reply", content);
    }
    shared.status(parent, "idle");
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
            let bundle = |text: String, running: bool| {
                let class = if running { "sd-progress sd-running" } else { "sd-progress" };
                json!({
                    "text/plain": text,
                    "text/html": format!("{}<div class=\"{class}\">{}</div>", render::PROGRESS_STYLE, render::escape(&text)),
                })
            };
            let mut wait = Self::AFTER;
            let mut shown = false;
            let ok = loop {
                match finished.recv_timeout(wait) {
                    Ok(ok) => break ok,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break false,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                }
                let text = format!("Running for {} — the stop button (■) interrupts it", elapsed(started.elapsed()));
                let content = json!({"data": bundle(text, true), "metadata": {}, "transient": {"display_id": display_id}});
                shared.publish(if shown { "update_display_data" } else { "display_data" }, &parent, content);
                shown = true;
                wait = Self::EVERY;
            };
            if shown {
                let verb = if ok { "Finished" } else { "Stopped" };
                let text = format!("{verb} after {}", elapsed(started.elapsed()));
                shared.publish("update_display_data", &parent, json!({"data": bundle(text, false), "metadata": {}, "transient": {"display_id": display_id}}));
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

fn elapsed(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1} s") } else { format!("{} min {:02} s", d.as_secs() / 60, d.as_secs() % 60) }
}

/// Runs a cell on the backend and publishes each output it yields: the
/// cell's result as `execute_result`, everything else as `display_data`.
/// Nothing else reaches iopub from here: the kernel forwards, it does not make results.
fn run_cell(shared: &Shared, parent: &Value, cell: &Cell<'_>) -> Result<(), CellError> {
    let count = cell.execution_count;
    shared.backend.execute(cell, &mut |output| match output.kind {
        OutputKind::Result => shared.publish("execute_result", parent, json!({"execution_count": count, "data": output.data.data(), "metadata": {}})),
        OutputKind::Display => shared.publish("display_data", parent, json!({"data": output.data.data(), "metadata": {}, "transient": {}})),
    })
}
