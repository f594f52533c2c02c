//! The service's worker processes: `workers` pre-started `safe-data worker`
//! processes, each with the catalog loaded, that run the statements which
//! read data. A cell goes to a free worker (FIFO when all are busy). A
//! worker that is interrupted, times out, runs out of memory or dies is
//! killed (SIGKILL) and replaced at once, so the next cell never waits for
//! a computation that polars could not stop.

use super::protocol::{self, FromWorker, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, ProtocolError, ToWorker};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// How long a new worker may take to load the catalog and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait before trying again when a worker cannot be started.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);

/// Why a worker could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot start a worker process: {0}")]
    Start(String),
    #[error("the worker process ended ({0})")]
    Died(String),
    #[error("the worker broke the protocol: {0}")]
    Protocol(ProtocolError),
}

/// One worker process and its pipes.
pub struct Worker {
    /// Always `Some` until [`Worker::kill`] or [`Worker::reap`] takes it.
    child: Option<Child>,
    to: pipe::Sender,
    from: pipe::Receiver,
    /// Cells it has run (for the log).
    pub jobs: u64,
}

impl Worker {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub async fn send(&mut self, msg: &ToWorker) -> Result<(), WorkerError> {
        let frame = protocol::encode(msg, MAX_REQUEST_BYTES).map_err(WorkerError::Protocol)?;
        self.to.write_all(&frame).await.map_err(|e| WorkerError::Died(e.to_string()))
    }

    /// The next message; the end of the pipe is the worker's death.
    pub async fn recv(&mut self) -> Result<FromWorker, WorkerError> {
        match protocol::read_frame(&mut self.from, MAX_RESPONSE_BYTES).await {
            Ok(frame) => protocol::decode(&frame).map_err(WorkerError::Protocol),
            Err(ProtocolError::Closed | ProtocolError::Truncated) => Err(WorkerError::Died("its pipe closed".into())),
            Err(ProtocolError::Io(e)) => Err(WorkerError::Died(e.to_string())),
            Err(e) => Err(WorkerError::Protocol(e)),
        }
    }

    /// Kills the process (SIGKILL) and reaps it; returns how it ended, for the log.
    pub async fn kill(self) -> String {
        self.reap().await.0
    }

    /// Reaps a worker whose pipe closed; says how it ended, and whether the
    /// system killed it (which on Linux is almost always the OOM killer).
    pub async fn reap(mut self) -> (String, bool) {
        let Some(mut child) = self.child.take() else { return ("already reaped".into(), false) };
        let _ = child.kill();
        tokio::task::spawn_blocking(move || match child.wait() {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                (describe_exit(status), status.signal() == Some(libc::SIGKILL))
            }
            Err(e) => (format!("cannot reap it: {e}"), false),
        })
        .await
        .unwrap_or_else(|_| ("unknown".into(), false))
    }
}

impl Drop for Worker {
    /// A worker dropped without [`Worker::kill`] (a job that panicked) is
    /// killed and reaped all the same.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = std::thread::Builder::new().name("safe-data-reaper".into()).spawn(move || child.wait());
        }
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown".into(),
    }
}

/// A request to the spawner thread: start one worker, answer on `reply`.
type SpawnRequest = std_mpsc::Sender<std::io::Result<Child>>;

/// The bounded pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    idle_tx: mpsc::UnboundedSender<Worker>,
    idle_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Worker>>,
    spawner: std::sync::Mutex<std_mpsc::Sender<SpawnRequest>>,
    /// Set while workers fail to start (cleared by the next that starts).
    failing: std::sync::atomic::AtomicBool,
}

impl Pool {
    /// Starts `size` workers for `config` (they become available as they
    /// finish loading). Call inside the runtime.
    pub fn start(config: PathBuf, size: usize) -> Result<Pool, WorkerError> {
        // The running binary itself, even after its file was replaced (an
        // upgrade or a rebuild): workers always match the service.
        let shown = std::env::current_exe().map_err(|e| WorkerError::Start(format!("cannot locate the safe-data binary: {e}")))?;
        let exe = if cfg!(target_os = "linux") { PathBuf::from("/proc/self/exe") } else { shown.clone() };
        let (spawn_tx, spawn_rx) = std_mpsc::channel::<SpawnRequest>();
        // Workers die with the thread that started them (PR_SET_PDEATHSIG):
        // one thread, alive as long as the service, starts them all.
        std::thread::Builder::new()
            .name("safe-data-spawner".into())
            .spawn(move || {
                for reply in spawn_rx {
                    let child = Command::new(&exe)
                        .arg0(&shown)
                        .arg("worker")
                        .arg("--config")
                        .arg(&config)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::inherit())
                        .spawn();
                    let _ = reply.send(child);
                }
            })
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        let pool = Pool {
            inner: Arc::new(Inner {
                idle_tx,
                idle_rx: tokio::sync::Mutex::new(idle_rx),
                spawner: std::sync::Mutex::new(spawn_tx),
                failing: Default::default(),
            }),
        };
        for _ in 0..size {
            pool.replace();
        }
        Ok(pool)
    }

    /// A free worker; waits (first come, first served) while all are busy.
    /// Cancel-safe: dropping the future loses no worker.
    pub async fn acquire(&self) -> Worker {
        let mut idle = self.inner.idle_rx.lock().await;
        match idle.recv().await {
            Some(w) => w,
            // The sender lives in `self`: never closed while the pool exists.
            None => std::future::pending().await,
        }
    }

    /// Whether the last attempt to start a worker failed (a cell waiting
    /// for one may wait for ever: the service's log says why).
    pub fn failing(&self) -> bool {
        self.inner.failing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Gives a healthy worker back.
    pub fn release(&self, worker: Worker) {
        let _ = self.inner.idle_tx.send(worker);
    }

    /// Starts a worker in the background and adds it to the pool once it is
    /// ready; retries (with a pause) until one starts.
    pub fn replace(&self) {
        let pool = self.clone();
        tokio::spawn(async move {
            loop {
                match pool.start_one().await {
                    Ok(worker) => {
                        tracing::debug!(pid = worker.pid(), "worker ready");
                        pool.inner.failing.store(false, std::sync::atomic::Ordering::SeqCst);
                        pool.release(worker);
                        return;
                    }
                    Err(e) => {
                        pool.inner.failing.store(true, std::sync::atomic::Ordering::SeqCst);
                        tracing::error!("{e}; trying again in {} s", RESTART_BACKOFF.as_secs());
                        tokio::time::sleep(RESTART_BACKOFF).await;
                    }
                }
            }
        });
    }

    async fn start_one(&self) -> Result<Worker, WorkerError> {
        let (tx, rx) = std_mpsc::channel();
        self.inner.spawner.lock().unwrap_or_else(|p| p.into_inner()).send(tx).map_err(|_| WorkerError::Start("the spawner thread is gone".into()))?;
        let mut child = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .map_err(|e| WorkerError::Start(e.to_string()))?
            .map_err(|_| WorkerError::Start("the spawner thread is gone".into()))?
            .map_err(|e| WorkerError::Start(e.to_string()))?;
        let pipes = (child.stdin.take(), child.stdout.take());
        let (Some(stdin), Some(stdout)) = pipes else {
            let _ = child.kill();
            return Err(WorkerError::Start("the worker has no pipes".into()));
        };
        let to = pipe::Sender::from_owned_fd(OwnedFd::from(stdin)).map_err(|e| WorkerError::Start(e.to_string()));
        let from = pipe::Receiver::from_owned_fd(OwnedFd::from(stdout)).map_err(|e| WorkerError::Start(e.to_string()));
        let (to, from) = match (to, from) {
            (Ok(to), Ok(from)) => (to, from),
            (Err(e), _) | (_, Err(e)) => {
                let _ = child.kill();
                let _ = tokio::task::spawn_blocking(move || child.wait()).await;
                return Err(e);
            }
        };
        let mut worker = Worker { child: Some(child), to, from, jobs: 0 };
        match tokio::time::timeout(START_TIMEOUT, worker.recv()).await {
            Ok(Ok(FromWorker::Ready {})) => Ok(worker),
            Ok(Ok(_)) => {
                let how = worker.kill().await;
                Err(WorkerError::Start(format!("the worker did not start with `ready` ({how})")))
            }
            Ok(Err(e)) => {
                let (how, _) = worker.reap().await;
                Err(WorkerError::Start(format!("{e} ({how}); see the log above")))
            }
            Err(_) => {
                let how = worker.kill().await;
                Err(WorkerError::Start(format!("the worker was not ready within {} s ({how})", START_TIMEOUT.as_secs())))
            }
        }
    }
}
