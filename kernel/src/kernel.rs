//! The kernel runtime: the five sockets, the request handlers, and the
//! evaluation thread.
//!
//! Socket tasks (tokio) only move frames: each owns its socket and a queue of
//! outgoing messages. Requests on shell and control are answered on the
//! socket tasks, except `execute_request`, which goes to one evaluation
//! thread so heartbeat, control and `kernel_info` stay responsive while a
//! query runs. Every iopub message goes through one queue, so `idle` always
//! follows the outputs of its request.

use crate::history::History;
use crate::render;
use crate::wire::{self, Message, Signer};
use bytes::Bytes;
use safe_data_lang::engine::CancelFlag;
use safe_data_lang::services::{self, Completeness};
use safe_data_lang::span::caret_snippet;
use safe_data_lang::{Catalog, parse};
use safe_data_policy::{Policy, Requester};
use serde_json::{Value, json};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use zeromq::prelude::*;
use zeromq::{PubSocket, RouterSocket, ZmqMessage};

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

type Frames = Vec<Bytes>;

/// State shared by the socket tasks and the evaluation thread.
struct Shared {
    signer: Signer,
    session: String,
    iopub: mpsc::UnboundedSender<Frames>,
    cancel: CancelFlag,
    policy: Arc<Policy>,
    catalog: Arc<Catalog>,
    requester: Requester,
    counter: Mutex<Counter>,
    /// Messages larger than this (all frames) are dropped before parsing.
    max_message_bytes: usize,
    replay: Mutex<wire::ReplayGuard>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Number of execute requests received so far (a job's `seq` is its rank).
    received: std::sync::atomic::AtomicU64,
}

struct Counter {
    execution_count: u64,
    history: History,
}

impl Shared {
    fn publish(&self, msg_type: &str, parent: &Value, content: Value) {
        let header = wire::header(msg_type, &self.session);
        let topic = Bytes::from(format!("kernel.{}.{msg_type}", self.session));
        let frames = wire::encode(&[topic], &header, parent, &json!({}), &content, &self.signer);
        let _ = self.iopub.send(frames);
    }

    fn status(&self, parent: &Value, state: &str) {
        self.publish("status", parent, json!({"execution_state": state}));
    }

    fn reply(&self, to: &Message, out: &mpsc::UnboundedSender<Frames>, msg_type: &str, content: Value) {
        let header = wire::header(msg_type, &self.session);
        let frames = wire::encode(&to.identities, &header, &to.header, &json!({}), &content, &self.signer);
        let _ = out.send(frames);
    }
}

/// What the evaluation thread is asked to do.
struct Job {
    msg: Message,
    reply: mpsc::UnboundedSender<Frames>,
    /// Rank among received execute requests.
    seq: u64,
}

fn connection_info(path: &std::path::Path) -> Result<jupyter_protocol::ConnectionInfo, KernelError> {
    let err = |message: String| KernelError::ConnectionFile { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut info: jupyter_protocol::ConnectionInfo = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    if info.ip == "*" {
        info.ip = "0.0.0.0".into();
    }
    let scheme = info.signature_scheme.as_str();
    if !(scheme == "hmac-sha256" || (scheme.is_empty() && info.key.is_empty())) {
        return Err(KernelError::SignatureScheme(info.signature_scheme.clone()));
    }
    Ok(info)
}

async fn bind<S: Socket>(socket: &mut S, endpoint: &str) -> Result<(), KernelError> {
    if let Some(path) = endpoint.strip_prefix("ipc://") {
        // A stale socket file from a previous run blocks the bind.
        let _ = std::fs::remove_file(path);
    }
    socket.bind(endpoint).await.map(|_| ()).map_err(|e| KernelError::Bind { endpoint: endpoint.to_string(), message: e.to_string() })
}

fn to_zmq(frames: Frames) -> Option<ZmqMessage> {
    ZmqMessage::try_from(frames).ok()
}

/// Runs the kernel until a shutdown request (or SIGTERM).
pub async fn run(connection_file: &std::path::Path, catalog: Arc<Catalog>) -> Result<(), KernelError> {
    let info = connection_info(connection_file)?;
    let policy = Arc::new(Policy::new(catalog.clone()).map_err(KernelError::Audit)?);
    let session = uuid::Uuid::new_v4().to_string();
    let requester = Requester::from_env(session.clone());
    let history = History::open(&catalog.config.server.state_dir, &requester.user);
    let (iopub_tx, iopub_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    // The owner's cap; tests lower it through the environment.
    let max_message_bytes = std::env::var("SAFE_DATA_MAX_MESSAGE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(catalog.config.server.max_message_mb.saturating_mul(1 << 20) as usize);
    let shared = Arc::new(Shared {
        signer: Signer::new(&info.key),
        session,
        iopub: iopub_tx,
        cancel: CancelFlag::new(),
        policy,
        catalog,
        requester,
        counter: Mutex::new(Counter { execution_count: 0, history }),
        max_message_bytes,
        replay: Mutex::new(wire::ReplayGuard::new(REPLAY_MEMORY)),
        shutdown: shutdown_tx,
        received: std::sync::atomic::AtomicU64::new(0),
    });

    let endpoints = Endpoints::open(&info, max_message_bytes as u64).await?;
    let mut shell = RouterSocket::new();
    bind(&mut shell, &endpoints.shell).await?;
    let mut control = RouterSocket::new();
    bind(&mut control, &endpoints.control).await?;
    let mut stdin = RouterSocket::new();
    bind(&mut stdin, &endpoints.stdin).await?;
    let mut iopub = PubSocket::new();
    bind(&mut iopub, &endpoints.iopub).await?;
    let mut hb = RouterSocket::new();
    bind(&mut hb, &endpoints.hb).await?;
    tracing::info!(shell = %info.shell_url(), "Safe Data kernel listening");

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

    tokio::spawn(iopub_loop(iopub, iopub_rx));
    tokio::spawn(heartbeat_loop(hb));
    tokio::spawn(router_loop(stdin, shared.clone(), Channel::Stdin, None));
    tokio::spawn(router_loop(shell, shared.clone(), Channel::Shell, Some(jobs_tx)));
    tokio::spawn(router_loop(control, shared.clone(), Channel::Control, None));
    tokio::spawn(signal_loop(shared.clone()));

    shared.status(&json!({}), "starting");
    let _ = shutdown_rx.wait_for(|done| *done).await;
    // Let the socket tasks flush the shutdown reply.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    endpoints.close();
    Ok(())
}

/// Where the zeromq sockets bind. On TCP, they bind private Unix sockets in
/// a directory only this user can enter, and the public ports are served by
/// the [`crate::frame_guard`], which refuses oversized frames before zeromq
/// would reserve memory for them. On IPC, the client's paths are used as is
/// (they are files the user's permissions already protect).
struct Endpoints {
    shell: String,
    control: String,
    stdin: String,
    iopub: String,
    hb: String,
    private_dir: Option<std::path::PathBuf>,
}

impl Endpoints {
    async fn open(info: &jupyter_protocol::ConnectionInfo, max_message: u64) -> Result<Endpoints, KernelError> {
        if info.transport.to_string() != "tcp" {
            return Ok(Endpoints {
                shell: info.shell_url(),
                control: info.control_url(),
                stdin: info.stdin_url(),
                iopub: info.iopub_url(),
                hb: info.hb_url(),
                private_dir: None,
            });
        }
        let dir = std::env::temp_dir().join(format!("safe-data-{}", uuid::Uuid::new_v4().simple()));
        let made = {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)
        };
        made.map_err(|e| KernelError::Bind { endpoint: dir.display().to_string(), message: e.to_string() })?;
        let mut inner = Vec::new();
        for (name, port) in
            [("shell", info.shell_port), ("control", info.control_port), ("stdin", info.stdin_port), ("iopub", info.iopub_port), ("hb", info.hb_port)]
        {
            let public = format!("{}:{port}", info.ip);
            let listener =
                tokio::net::TcpListener::bind(&public).await.map_err(|e| KernelError::Bind { endpoint: format!("tcp://{public}"), message: e.to_string() })?;
            let path = dir.join(name);
            tokio::spawn(crate::frame_guard::serve(listener, path.clone(), max_message));
            inner.push(format!("ipc://{}", path.display()));
        }
        let mut inner = inner.into_iter();
        let mut next = || inner.next().unwrap_or_default();
        Ok(Endpoints { shell: next(), control: next(), stdin: next(), iopub: next(), hb: next(), private_dir: Some(dir) })
    }

    fn close(&self) {
        if let Some(dir) = &self.private_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// SIGINT interrupts the running query (jupyter_client sends one before
/// every shutdown; it must not kill the kernel). SIGTERM shuts down.
async fn signal_loop(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => {
                if safe_data_lang::engine::self_interrupted_recently() {
                    // Sent by the engine to stop polars: not the user's.
                    continue;
                }
                tracing::info!("SIGINT: interrupting the running query");
                shared.cancel.cancel();
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                shared.cancel.cancel();
                let _ = shared.shutdown.send(true);
            }
        }
    }
}

/// How long one echo or reply may wait on a peer that does not read.
const PEER_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a heartbeat peer that did not read its echo is ignored.
const STALLED_PEER_QUARANTINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Echoes heartbeats. A ROUTER (not REP), so a peer that pings and never
/// reads its echoes is known by its identity: after one echo that could not
/// be delivered in time, its pings are ignored for a while, and every other
/// client's heartbeat keeps flowing.
async fn heartbeat_loop(hb: RouterSocket) {
    let (mut send, mut recv) = hb.split();
    let mut stalled: std::collections::HashMap<Bytes, std::time::Instant> = std::collections::HashMap::new();
    loop {
        let m = match recv.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("heartbeat recv: {e}");
                continue;
            }
        };
        let Some(peer) = m.get(0).cloned() else { continue };
        if let Some(since) = stalled.get(&peer) {
            if since.elapsed() < STALLED_PEER_QUARANTINE {
                continue;
            }
            stalled.remove(&peer);
        }
        match tokio::time::timeout(PEER_SEND_TIMEOUT, send.send(m)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!("heartbeat send: {e}"),
            Err(_) => {
                tracing::warn!("a heartbeat peer does not read its echoes; ignoring it for {} s", STALLED_PEER_QUARANTINE.as_secs());
                if stalled.len() > 10_000 {
                    stalled.clear();
                }
                stalled.insert(peer, std::time::Instant::now());
            }
        }
    }
}

/// Publishes iopub messages in order. A PUB socket drops messages for a
/// subscriber whose queue is full (as libzmq does), so one subscriber that
/// never reads cannot hold back the others.
async fn iopub_loop(mut socket: PubSocket, mut rx: mpsc::UnboundedReceiver<Frames>) {
    while let Some(frames) = rx.recv().await {
        if let Some(m) = to_zmq(frames)
            && let Err(e) = socket.send(m).await
        {
            tracing::warn!("iopub send: {e}");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Shell,
    Control,
    Stdin,
}

async fn router_loop(socket: RouterSocket, shared: Arc<Shared>, channel: Channel, jobs: Option<std_mpsc::Sender<Job>>) {
    let (mut send, mut recv) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Frames>();
    tokio::spawn(async move {
        while let Some(frames) = out_rx.recv().await {
            if let Some(m) = to_zmq(frames) {
                // A client that does not read its replies loses them, and
                // cannot hold back the replies to other clients.
                match tokio::time::timeout(PEER_SEND_TIMEOUT, send.send(m)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!("{channel:?} send: {e}"),
                    Err(_) => tracing::warn!("{channel:?}: a client does not read its replies; dropped one"),
                }
            }
        }
    });
    loop {
        let frames = match recv.recv().await {
            Ok(m) => m.into_vec(),
            Err(e) => {
                tracing::debug!("{channel:?} recv: {e}");
                continue;
            }
        };
        let msg = match Message::decode(frames, &shared.signer, shared.max_message_bytes) {
            Ok(m) => m,
            Err(e) => {
                // Never answered: a client without the key learns nothing.
                tracing::warn!("{channel:?}: dropped a message: {e}");
                continue;
            }
        };
        if !shared.replay.lock().unwrap_or_else(|p| p.into_inner()).admit(&msg.signature) {
            tracing::warn!("{channel:?}: dropped a replayed message ({})", msg.msg_type());
            continue;
        }
        if channel == Channel::Stdin {
            tracing::debug!("ignoring {} on stdin (the kernel never asks for input)", msg.msg_type());
            continue;
        }
        if msg.msg_type() == "execute_request" {
            match (&jobs, channel) {
                (Some(jobs), Channel::Shell) => {
                    let seq = shared.received.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    if jobs.send(Job { msg, reply: out_tx.clone(), seq }).is_err() {
                        tracing::error!("the evaluation thread is gone");
                    }
                }
                _ => {
                    shared.status(&msg.header, "busy");
                    shared.reply(&msg, &out_tx, "execute_reply", error_content("WrongChannel", "execute_request must be sent on the shell channel", &[]));
                    shared.status(&msg.header, "idle");
                }
            }
            continue;
        }
        handle_request(&shared, &msg, &out_tx, channel);
    }
}

fn error_content(ename: &str, evalue: &str, traceback: &[String]) -> Value {
    json!({"status": "error", "ename": ename, "evalue": evalue, "traceback": traceback})
}

/// Answers every request but `execute_request`, wrapped in busy/idle.
fn handle_request(shared: &Shared, msg: &Message, out: &mpsc::UnboundedSender<Frames>, channel: Channel) {
    let msg_type = msg.msg_type().to_string();
    shared.status(&msg.header, "busy");
    let c = &msg.content;
    match msg_type.as_str() {
        "kernel_info_request" => shared.reply(msg, out, "kernel_info_reply", kernel_info(&shared.catalog)),
        "complete_request" => {
            let code = c.get("code").and_then(Value::as_str).unwrap_or("");
            let cursor = char_to_byte(code, c.get("cursor_pos").and_then(Value::as_u64).unwrap_or(code.chars().count() as u64));
            let done = services::complete(&shared.catalog, code, cursor);
            shared.reply(
                msg,
                out,
                "complete_reply",
                json!({
                    "status": "ok",
                    "matches": done.matches,
                    "cursor_start": byte_to_char(code, done.start),
                    "cursor_end": byte_to_char(code, done.end),
                    "metadata": {},
                }),
            );
        }
        "inspect_request" => {
            let code = c.get("code").and_then(Value::as_str).unwrap_or("");
            let cursor = char_to_byte(code, c.get("cursor_pos").and_then(Value::as_u64).unwrap_or(code.chars().count() as u64));
            let content = match services::inspect(&shared.catalog, code, cursor) {
                Some(text) => json!({"status": "ok", "found": true, "data": {"text/plain": text}, "metadata": {}}),
                None => json!({"status": "ok", "found": false, "data": {}, "metadata": {}}),
            };
            shared.reply(msg, out, "inspect_reply", content);
        }
        "is_complete_request" => {
            let code = c.get("code").and_then(Value::as_str).unwrap_or("");
            let content = match services::is_complete(code) {
                Completeness::Complete => json!({"status": "complete"}),
                Completeness::Incomplete(indent) => json!({"status": "incomplete", "indent": indent}),
                Completeness::Invalid => json!({"status": "invalid"}),
            };
            shared.reply(msg, out, "is_complete_reply", content);
        }
        "history_request" => {
            let content = history_reply(shared, c);
            shared.reply(msg, out, "history_reply", content);
        }
        "comm_info_request" => shared.reply(msg, out, "comm_info_reply", json!({"status": "ok", "comms": {}})),
        "comm_open" => {
            // No comm targets: close it so the frontend does not wait.
            let comm_id = c.get("comm_id").cloned().unwrap_or(Value::Null);
            shared.publish("comm_close", &msg.header, json!({"comm_id": comm_id, "data": {}}));
        }
        "comm_msg" | "comm_close" => {}
        "interrupt_request" => {
            shared.cancel.cancel();
            shared.reply(msg, out, "interrupt_reply", json!({"status": "ok"}));
        }
        "shutdown_request" => {
            let restart = c.get("restart").and_then(Value::as_bool).unwrap_or(false);
            if channel != Channel::Control {
                tracing::info!("shutdown_request on {channel:?} (expected on control); honouring it");
            }
            shared.cancel.cancel();
            shared.reply(msg, out, "shutdown_reply", json!({"status": "ok", "restart": restart}));
            shared.status(&msg.header, "idle");
            let _ = shared.shutdown.send(true);
            return;
        }
        other => {
            if let Some(prefix) = other.strip_suffix("_request") {
                shared.reply(msg, out, &format!("{prefix}_reply"), error_content("UnknownMessageType", &format!("Safe Data does not handle `{other}`"), &[]));
            } else {
                tracing::info!("ignoring message of type {other}");
            }
        }
    }
    shared.status(&msg.header, "idle");
}

fn char_to_byte(s: &str, chars: u64) -> usize {
    s.char_indices().nth(chars as usize).map(|(i, _)| i).unwrap_or(s.len())
}

fn byte_to_char(s: &str, byte: usize) -> usize {
    s[..byte.min(s.len())].chars().count()
}

fn kernel_info(catalog: &Catalog) -> Value {
    use jupyter_protocol::{CodeMirrorMode, KernelInfoReply, LanguageInfo, ReplyStatus};
    let reply = KernelInfoReply {
        status: ReplyStatus::Ok,
        protocol_version: wire::PROTOCOL_VERSION.into(),
        implementation: "safe-data".into(),
        implementation_version: env!("CARGO_PKG_VERSION").into(),
        language_info: LanguageInfo {
            name: "sql".into(),
            version: "safe-sql-1".into(),
            mimetype: Some("text/x-sql".into()),
            file_extension: Some(".sql".into()),
            pygments_lexer: Some("sql".into()),
            codemirror_mode: Some(CodeMirrorMode::Simple("sql".into())),
            nbconvert_exporter: Some("script".into()),
        },
        banner: format!(
            "Safe Data {} — {}\nSQL over protected data: results are released only as aggregates that pass the owner's policy.\nStart with SHOW TABLES; and DESCRIBE <table>;",
            env!("CARGO_PKG_VERSION"),
            catalog.config.server.display_name
        ),
        // No public documentation site yet: the banner and inspect (shift-tab) document the dialect.
        help_links: vec![],
        debugger: false,
        error: None,
    };
    serde_json::to_value(reply).unwrap_or_else(|_| json!({"status": "ok"}))
}

fn history_reply(shared: &Shared, c: &Value) -> Value {
    let counter = shared.counter.lock().unwrap_or_else(|p| p.into_inner());
    let h = &counter.history;
    let output = c.get("output").and_then(Value::as_bool).unwrap_or(false);
    let n = c.get("n").and_then(Value::as_u64).map(|n| n as usize);
    let entries = match c.get("hist_access_type").and_then(Value::as_str).unwrap_or("tail") {
        "range" => h.range(
            c.get("session").and_then(Value::as_i64).unwrap_or(0),
            c.get("start").and_then(Value::as_u64).unwrap_or(0),
            c.get("stop").and_then(Value::as_u64),
        ),
        "search" => h.search(c.get("pattern").and_then(Value::as_str).unwrap_or("*"), n, c.get("unique").and_then(Value::as_bool).unwrap_or(false)),
        _ => h.tail(n.unwrap_or(10)),
    };
    let history: Vec<Value> =
        entries.iter().map(|e| if output { json!([e.session, e.line, [e.source, null]]) } else { json!([e.session, e.line, e.source]) }).collect();
    json!({"status": "ok", "history": history})
}

/// The traceback lines of an error: the message and the statement with a caret.
fn traceback(ename: &str, evalue: &str, cell: &str, span: Option<safe_data_lang::span::Span>) -> Vec<String> {
    let mut lines = vec![format!("\u{1b}[0;31m{ename}\u{1b}[0m: {evalue}")];
    if let Some(span) = span {
        lines.push(String::new());
        lines.extend(caret_snippet(cell, span).lines().map(str::to_string));
    }
    lines
}

/// How long after a failed execution the kernel waits for requests the
/// client sent before it saw the error (they are still on the wire).
const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_millis(30);

/// Idle this long after an execution, the kernel hands memory back to the
/// OS ([`crate::memory::trim`]). Long enough that back-to-back cells (a
/// notebook run) never pay for faulting pages back in.
const IDLE_TRIM_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

fn evaluation_loop(shared: Arc<Shared>, jobs: std_mpsc::Receiver<Job>) {
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
            let count = shared.counter.lock().map(|c| c.execution_count).unwrap_or(0);
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
    shared.cancel.reset();
    let count = {
        let mut counter = shared.counter.lock().unwrap_or_else(|p| p.into_inner());
        if store_history {
            counter.execution_count += 1;
            let n = counter.execution_count;
            counter.history.append(n, &code);
        }
        counter.execution_count
    };
    if !silent {
        shared.publish("execute_input", parent, json!({"code": code, "execution_count": count}));
    }
    let progress = (!silent).then(|| Progress::start(shared, parent));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_cell(shared, parent, &code, count, silent)));
    if let Some(progress) = progress {
        progress.finish(matches!(outcome, Ok(Ok(()))));
    }
    match outcome {
        Ok(Ok(())) => {
            shared.reply(msg, &job.reply, "execute_reply", json!({"status": "ok", "execution_count": count, "payload": [], "user_expressions": {}}));
        }
        Ok(Err((ename, evalue, tb))) => {
            if !silent {
                shared.publish("error", parent, json!({"ename": ename, "evalue": evalue, "traceback": tb}));
            }
            on_failure();
            let mut content = error_content(&ename, &evalue, &tb);
            content["execution_count"] = json!(count);
            content["payload"] = json!([]);
            content["user_expressions"] = json!({});
            shared.reply(msg, &job.reply, "execute_reply", content);
        }
        Err(_) => {
            tracing::error!("evaluation panicked");
            let (ename, evalue) = ("InternalError", "an internal error occurred while evaluating this cell; the kernel is still running");
            let tb = vec![format!("{ename}: {evalue}")];
            if !silent {
                shared.publish("error", parent, json!({"ename": ename, "evalue": evalue, "traceback": tb}));
            }
            on_failure();
            let mut content = error_content(ename, evalue, &tb);
            content["execution_count"] = json!(count);
            shared.reply(msg, &job.reply, "execute_reply", content);
        }
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

type CellError = (String, String, Vec<String>);

/// Evaluates each statement of a cell; every statement but the last is a
/// `display_data`, the last an `execute_result`.
fn run_cell(shared: &Shared, parent: &Value, code: &str, count: u64, silent: bool) -> Result<(), CellError> {
    let statements = parse::parse_cell(code).map_err(|e| {
        if let Err(audit) = shared.policy.record_unparsed(code, &shared.requester, &e) {
            let evalue = audit.to_string();
            return (audit.kind().to_string(), evalue.clone(), traceback(audit.kind(), &evalue, code, None));
        }
        let evalue = e.to_string();
        (e.kind().to_string(), evalue.clone(), traceback(e.kind(), &evalue, code, e.span()))
    })?;
    let last = statements.len().saturating_sub(1);
    for (i, statement) in statements.iter().enumerate() {
        let started = std::time::Instant::now();
        let released = shared.policy.run(statement, &shared.requester, &shared.cancel).map_err(|e| {
            let evalue = e.to_string();
            (e.kind().to_string(), evalue.clone(), traceback(e.kind(), &evalue, code, e.span()))
        })?;
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, rows = released.rows().len(), "statement released");
        if silent {
            continue;
        }
        // The last statement's result is the execute_result; everything
        // else (earlier statements, a chart's notices) is display_data.
        for (j, data) in render::outputs(&released).into_iter().enumerate() {
            if i == last && j == 0 {
                shared.publish("execute_result", parent, json!({"execution_count": count, "data": data, "metadata": {}}));
            } else {
                shared.publish("display_data", parent, json!({"data": data, "metadata": {}, "transient": {}}));
            }
        }
    }
    Ok(())
}
