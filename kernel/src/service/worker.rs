//! `safe-data worker --config C` (hidden): one of the data service's query
//! processes. It loads the catalog, says `ready`, then runs the cells the
//! service sends on its standard input, one at a time, and answers on its
//! standard output (framed, [`super::protocol`]).
//!
//! It runs the very same pipeline as the one-process kernel
//! ([`crate::kernel::backend::run_cell`] over `Policy::run`); only the audit
//! sink differs: each line goes to the service, which alone appends to the
//! hash chain, and the statement's result is released only after the
//! service acknowledged it (fail closed). The worker never decides who the
//! user is: the service sends the name it took from the peer credentials.
//! Stopping a query is the service's business: it kills the whole process.

use super::protocol::{self, AuditRecord, FromWorker, MAX_REQUEST_BYTES, MAX_WORKER_FRAME_BYTES, ProtocolError, ToWorker};
use crate::kernel::backend::{self, CellError};
use safe_data_policy::CancelFlag;
use safe_data_policy::Catalog;
use safe_data_policy::audit::Entry;
use safe_data_policy::{AuditSink, Policy, Requester};
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The worker's two pipes. Both sit behind locks because the audit sink
/// (inside the policy) and the cell loop share them; only one cell runs at
/// a time, so they never wait on each other.
#[derive(Debug)]
struct Pipes {
    to_service: Mutex<File>,
    from_service: Mutex<std::io::Stdin>,
}

impl Pipes {
    fn send(&self, msg: &FromWorker) -> Result<(), ProtocolError> {
        let mut out = self.to_service.lock().unwrap_or_else(|p| p.into_inner());
        protocol::write_msg_blocking(&mut *out, msg, MAX_WORKER_FRAME_BYTES)
    }

    fn recv(&self) -> Result<ToWorker, ProtocolError> {
        let mut input = self.from_service.lock().unwrap_or_else(|p| p.into_inner());
        let frame = protocol::read_frame_blocking(&mut *input, MAX_REQUEST_BYTES)?;
        protocol::decode(&frame)
    }
}

/// Sends each audit line to the service and waits for its acknowledgement.
#[derive(Debug)]
struct ServiceSink(Arc<Pipes>);

impl AuditSink for ServiceSink {
    fn append(&self, entry: &Entry) -> std::io::Result<()> {
        self.0.send(&FromWorker::Audit { entry: AuditRecord::from(entry) }).map_err(std::io::Error::other)?;
        match self.0.recv() {
            Ok(ToWorker::AuditAck { ok: true }) => Ok(()),
            Ok(ToWorker::AuditAck { ok: false }) => Err(std::io::Error::other("the service could not write the audit line")),
            Ok(_) => Err(std::io::Error::other("the service sent something else than the audit acknowledgement")),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    fn describe(&self) -> String {
        "the data service (through the worker's pipe)".into()
    }
}

/// Runs the worker until the service closes its standard input. Returns an
/// error text for start-up failures (shown on standard error, which the
/// service's log carries).
pub fn run(config: &Path) -> Result<(), String> {
    // Inherited from the service: no-new-privileges, no core dumps, its
    // Landlock domain. Not inherited across exec: not dumpable.
    if let Err(e) = crate::sandbox::harden_process() {
        tracing::warn!("cannot harden the worker process: {e}");
    }
    // Frames go out on the original standard output; anything else that
    // writes to fd 1 lands on standard error instead of corrupting them.
    let out = nix::unistd::dup(std::io::stdout()).map_err(|e| format!("cannot take standard output: {e}"))?;
    nix::unistd::dup2_stdout(std::io::stderr()).map_err(|e| format!("cannot redirect standard output: {e}"))?;
    // Die with the service (its spawner thread, which lives as long as it).
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if std::os::unix::process::parent_id() == 1 {
        return Err("the service is gone".into());
    }
    let pipes = Arc::new(Pipes { to_service: Mutex::new(File::from(out)), from_service: Mutex::new(std::io::stdin()) });
    let catalog = Arc::new(Catalog::load(config).map_err(|e| e.to_string())?);
    crate::memory::map_binary_sparsely();
    // Timeouts and the memory budget stop polars in this process (the
    // service kills it if that does not work).
    safe_data_policy::runtime::enable_aborts();
    safe_data_policy::runtime::set_memory_gauge(crate::memory::in_use);
    let policy = Policy::with_sink(catalog, Box::new(ServiceSink(pipes.clone())));
    pipes.send(&FromWorker::Ready {}).map_err(|e| e.to_string())?;
    let idle = Arc::new(IdleTrim::default());
    {
        let idle = idle.clone();
        let _ = std::thread::Builder::new().name("safe-data-trim".into()).spawn(move || idle.watch());
    }
    loop {
        let job = match pipes.recv() {
            Ok(job) => job,
            Err(ProtocolError::Closed) => return Ok(()),
            Err(e) => return Err(format!("the service sent a bad request: {e}")),
        };
        let ToWorker::Run { user, session, code, silent } = job else {
            return Err("the service sent an acknowledgement outside a cell".into());
        };
        idle.busy();
        let who = Requester::new(user, session);
        let cancel = CancelFlag::new();
        // An output over the frame cap is not sent (nor any after it): the
        // cell ends with an error instead. A broken pipe ends the worker.
        let mut too_large = false;
        let mut broken: Option<ProtocolError> = None;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            backend::run_cell(&policy, &who, &cancel, &code, silent, &mut |output| {
                if too_large || broken.is_some() {
                    return;
                }
                match pipes.send(&FromWorker::Output { output }) {
                    Ok(()) => {}
                    Err(ProtocolError::Oversized { .. }) => too_large = true,
                    Err(e) => broken = Some(e),
                }
            })
        }))
        .unwrap_or_else(|_| {
            tracing::error!("evaluation panicked in a worker");
            Err(CellError::plain("InternalError", "an internal error occurred while evaluating this cell"))
        });
        if let Some(e) = broken {
            return Err(format!("cannot send to the service: {e}"));
        }
        let result = match result {
            Ok(()) if too_large => Err(CellError::plain(
                "ResultTooLarge",
                format!("a result is larger than {} MiB and was not shown; select fewer columns or rows", MAX_WORKER_FRAME_BYTES >> 20),
            )),
            other => other,
        };
        pipes.send(&FromWorker::Done { result }).map_err(|e| format!("cannot send to the service: {e}"))?;
        idle.done();
    }
}

/// Hands memory back to the OS once the worker has been idle for a moment
/// ([`crate::memory::trim`]), as the one-process kernel does: cells run back
/// to back never pay for faulting pages back in.
#[derive(Default)]
struct IdleTrim {
    busy: std::sync::atomic::AtomicBool,
    /// When the last cell ended (ms since the watcher started), 0: trimmed.
    ended_ms: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

impl IdleTrim {
    const AFTER: std::time::Duration = std::time::Duration::from_millis(500);

    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
    }

    fn busy(&self) {
        self.busy.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn done(&self) {
        self.ended_ms.store(self.now_ms(), std::sync::atomic::Ordering::SeqCst);
        self.busy.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn watch(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            std::thread::sleep(Self::AFTER / 2);
            let ended = self.ended_ms.load(SeqCst);
            if ended != 0 && !self.busy.load(SeqCst) && self.now_ms().saturating_sub(ended) >= Self::AFTER.as_millis() as u64 {
                crate::memory::trim();
                // A cell that ended meanwhile keeps its own mark.
                let _ = self.ended_ms.compare_exchange(ended, 0, SeqCst, SeqCst);
            }
        }
    }
}
