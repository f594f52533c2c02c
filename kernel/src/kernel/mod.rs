//! The kernel runtime: the five sockets, the request handlers, and the
//! evaluation thread.
//!
//! Socket tasks (tokio) only move frames: each owns its socket and a queue of
//! outgoing messages. Requests on shell and control are answered on the
//! socket tasks, except `execute_request`, which goes to one evaluation
//! thread so heartbeat, control and `kernel_info` stay responsive while a
//! query runs, and the requests that read the catalog or the history, which
//! run on blocking threads. Every iopub message goes through one queue, so
//! `idle` always follows the outputs of its request.
//!
//! Everything that touches data goes through a [`backend::Backend`]: in one
//! process ([`backend::Embedded`]) or in the data service
//! ([`crate::service::client::Remote`]). This module keeps only the
//! execution count and the Jupyter protocol: requests are read as typed
//! messages ([`incoming`]), and everything sent to a client is one of a
//! closed set of typed messages, encoded in one place ([`outgoing`]).

pub mod backend;
mod execute;
mod incoming;
mod outgoing;
mod requests;
mod sockets;

use backend::Backend;
use execute::evaluation_loop;

use crate::wire::{self, Message, Signer};
use bytes::Bytes;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// How many signatures the replay guard remembers (jupyter_client's default).
const REPLAY_MEMORY: usize = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read the connection file {path}: {message}")]
    ConnectionFile { path: String, message: String },
    #[error("unsupported signature_scheme `{0}`: Safe Data signs with hmac-sha256")]
    SignatureScheme(String),
    #[error("cannot bind {endpoint}: {message}")]
    Bind { endpoint: String, message: String },
    #[error("cannot open the audit log: {0}")]
    Audit(std::io::Error),
}

pub(super) type Frames = Vec<Bytes>;

/// What an interrupt (message or SIGINT) stops: the backend's running cell.
pub(super) struct Interrupter(Arc<dyn Backend>);

impl Interrupter {
    /// Stops the running cell, if any; never blocks.
    pub(super) fn cancel(&self) {
        self.0.interrupt();
    }
}

/// State shared by the socket tasks and the evaluation thread.
pub(super) struct Shared {
    /// The key, the session and the iopub queue: what only [`outgoing`] sends through.
    wire: outgoing::Wire,
    /// Stops the running cell (`shared.cancel.cancel()`).
    cancel: Interrupter,
    backend: Arc<dyn Backend>,
    /// The execution count (the history lives behind the backend, under its own lock).
    execution_count: Mutex<u64>,
    /// Messages larger than this (all frames) are dropped before parsing.
    max_message_bytes: usize,
    replay: Mutex<wire::ReplayGuard>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Number of execute requests received so far (a job's `seq` is its rank).
    received: std::sync::atomic::AtomicU64,
}

/// What the evaluation thread is asked to do.
pub(super) struct Job {
    /// The request's routing and header (its content is decoded into `request`).
    msg: Message,
    request: jupyter_protocol::ExecuteRequest,
    reply: outgoing::Replies,
    /// Rank among received execute requests.
    seq: u64,
}

/// How the kernel runs, apart from its backend.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Jupyter session id of this kernel's messages.
    pub session: String,
    /// Messages larger than this (all frames) are refused before parsing.
    pub max_message_bytes: usize,
}

impl Options {
    /// A new session; the cap from `max_message_mb` unless the tests lower it
    /// through `SAFE_DATA_MAX_MESSAGE_BYTES`.
    pub fn new(max_message_mb: u64) -> Options {
        let max_message_bytes =
            std::env::var("SAFE_DATA_MAX_MESSAGE_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(max_message_mb.saturating_mul(1 << 20) as usize);
        Options { session: uuid::Uuid::new_v4().to_string(), max_message_bytes }
    }
}

/// Runs the kernel until a shutdown request (or SIGTERM).
pub async fn run(connection_file: &std::path::Path, backend: Arc<dyn Backend>, options: Options) -> Result<(), KernelError> {
    let info = sockets::connection_info(connection_file)?;
    let (iopub_tx, iopub_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        wire: outgoing::Wire::new(Signer::new(&info.key), options.session, iopub_tx),
        cancel: Interrupter(backend.clone()),
        backend,
        execution_count: Mutex::new(0),
        max_message_bytes: options.max_message_bytes,
        replay: Mutex::new(wire::ReplayGuard::new(REPLAY_MEMORY)),
        shutdown: shutdown_tx,
        received: std::sync::atomic::AtomicU64::new(0),
    });

    let (jobs_tx, jobs_rx) = std_mpsc::channel::<Job>();
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("safe-data-eval".into())
            // Binding and checking recurse over the statement: room to spare.
            .stack_size(64 << 20)
            .spawn(move || evaluation_loop(shared, jobs_rx))
            .expect("spawning the evaluation thread");
    }

    sockets::serve(&info, shared, iopub_rx, shutdown_rx, jobs_tx).await
}
