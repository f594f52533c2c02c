//! The five sockets: where they bind, and the tasks that move their frames.

use super::incoming::{self, Request};
use super::outgoing::{Refusal, Replies, Reply, State};
use super::requests::{handle_request, unknown_completeness};
use super::{Frames, Job, KernelError, Shared};
use crate::frame_guard::{self, LogThrottle, left_out};
use crate::wire::{self, Message};
use bytes::Bytes;
use serde_json::json;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use tokio::sync::mpsc;
use zeromq::prelude::*;
use zeromq::{PubSocket, RouterSocket, ZmqMessage};

pub(super) async fn bind<S: Socket>(socket: &mut S, endpoint: &str) -> Result<(), KernelError> {
    if let Some(path) = endpoint.strip_prefix("ipc://") {
        // A stale socket file from a previous run blocks the bind.
        let _ = std::fs::remove_file(path);
    }
    socket.bind(endpoint).await.map(|_| ()).map_err(|e| KernelError::Bind { endpoint: endpoint.to_string(), message: e.to_string() })
}

fn to_zmq(frames: Frames) -> Option<ZmqMessage> {
    ZmqMessage::try_from(frames).ok()
}

/// The connection file this process was started with (where the replay
/// memory is kept; see [`replay_memory_path`]).
static CONNECTION_FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Whether the last shutdown request asked for a restart: 0 none seen,
/// 1 a restart, 2 a final shutdown.
static SHUTDOWN_KIND: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Reads and checks the connection file.
pub(super) fn connection_info(path: &std::path::Path) -> Result<jupyter_protocol::ConnectionInfo, KernelError> {
    let _ = CONNECTION_FILE.set(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
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

/// Where the replay memory of a kernel started on `connection_file` is
/// kept: next to it (jupyter_client's runtime directory, private to the
/// user), so a restart, which keeps the connection file and its key, finds
/// it.
pub(super) fn replay_memory_path(connection_file: &std::path::Path) -> Option<std::path::PathBuf> {
    let name = connection_file.file_name()?.to_string_lossy().into_owned();
    Some(connection_file.with_file_name(format!(".{name}.replay")))
}

/// Which accounts may connect to the kernel's endpoints: this user and root,
/// plus the uids in `SAFE_DATA_PEER_UIDS` (comma-separated; `*` lets anyone
/// who can reach an endpoint connect, as Jupyter kernels do by default).
fn peer_policy() -> frame_guard::PeerPolicy {
    let Ok(text) = std::env::var("SAFE_DATA_PEER_UIDS") else { return frame_guard::PeerPolicy::same_user(&[]) };
    if text.trim() == "*" {
        tracing::warn!("SAFE_DATA_PEER_UIDS=*: any account that can reach the kernel's endpoints may connect");
        return frame_guard::PeerPolicy::Anyone;
    }
    let extra: Vec<u32> = text
        .split(',')
        .filter(|t| !t.trim().is_empty())
        .filter_map(|t| match t.trim().parse() {
            Ok(uid) => Some(uid),
            Err(_) => {
                tracing::warn!("SAFE_DATA_PEER_UIDS: `{}` is not a uid; ignored", t.trim());
                None
            }
        })
        .collect();
    frame_guard::PeerPolicy::same_user(&extra)
}

/// Binds the five sockets, serves them until a shutdown request (or
/// SIGTERM), then closes them. Execute requests go to `jobs`.
pub(super) async fn serve(
    info: &jupyter_protocol::ConnectionInfo,
    shared: Arc<Shared>,
    iopub_rx: mpsc::UnboundedReceiver<Frames>,
    mut shutdown_rx: tokio::sync::watch::Receiver<bool>,
    jobs_tx: std_mpsc::Sender<Job>,
) -> Result<(), KernelError> {
    let limits = frame_guard::Limits::new(shared.max_message_bytes as u64, crate::sandbox::raise_open_file_limit());
    tracing::debug!(?limits, "frame guard");
    let guard = frame_guard::Guard::new(limits, shared.wire.signer().clone(), peer_policy());
    let endpoints = Endpoints::open(info, &guard).await?;
    if !info.key.is_empty()
        && let Some(path) = CONNECTION_FILE.get().and_then(|f| replay_memory_path(f))
        && let Err(e) = shared.replay.lock().unwrap_or_else(|p| p.into_inner()).persist(&path)
    {
        tracing::warn!("cannot keep the replay memory in {} ({e}): a message captured before a restart would be accepted after it", path.display());
    }
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

    tokio::spawn(iopub_loop(iopub, iopub_rx));
    tokio::spawn(heartbeat_loop(hb));
    tokio::spawn(router_loop(stdin, shared.clone(), Channel::Stdin, None, guard.clone()));
    tokio::spawn(router_loop(shell, shared.clone(), Channel::Shell, Some(jobs_tx), guard.clone()));
    tokio::spawn(router_loop(control, shared.clone(), Channel::Control, None, guard.clone()));
    tokio::spawn(signal_loop(shared.clone()));

    shared.status(&json!({}), State::Starting);
    let _ = shutdown_rx.wait_for(|done| *done).await;
    // No request is taken any more (the router loops check the flag); let
    // the socket tasks flush the shutdown reply.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    endpoints.close();
    if SHUTDOWN_KIND.load(std::sync::atomic::Ordering::SeqCst) == 2 {
        // A final shutdown: no restart will need the replay memory.
        shared.replay.lock().unwrap_or_else(|p| p.into_inner()).remove_file();
    }
    Ok(())
}

/// Where the zeromq sockets bind: private Unix sockets in a directory only
/// this user can enter. The client's endpoints (TCP ports, or `ipc` socket
/// paths) are served by the [`crate::frame_guard`], which relays to them.
pub(super) struct Endpoints {
    shell: String,
    control: String,
    stdin: String,
    iopub: String,
    hb: String,
    private_dir: std::path::PathBuf,
    /// The client's `ipc` socket files, removed at shutdown.
    public_files: Vec<std::path::PathBuf>,
}

impl Endpoints {
    pub(super) async fn open(info: &jupyter_protocol::ConnectionInfo, guard: &Arc<frame_guard::Guard>) -> Result<Endpoints, KernelError> {
        let ipc = match info.transport.to_string().as_str() {
            "tcp" => false,
            "ipc" => true,
            other => return Err(KernelError::Bind { endpoint: other.to_string(), message: "unknown transport (tcp or ipc)".into() }),
        };
        let dir = std::env::temp_dir().join(format!("safe-data-{}", uuid::Uuid::new_v4().simple()));
        let made = {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)
        };
        made.map_err(|e| KernelError::Bind { endpoint: dir.display().to_string(), message: e.to_string() })?;
        let mut inner = Vec::new();
        let mut public_files = Vec::new();
        let ports = [
            ("shell", info.shell_port, frame_guard::Port::Shell),
            ("control", info.control_port, frame_guard::Port::Control),
            ("stdin", info.stdin_port, frame_guard::Port::Stdin),
            ("iopub", info.iopub_port, frame_guard::Port::IoPub),
            ("hb", info.hb_port, frame_guard::Port::Heartbeat),
        ];
        for (name, port, kind) in ports {
            let listener = if ipc {
                // jupyter_client's convention: `{ip}-{port}`, where `ip` is a path prefix.
                let path = std::path::PathBuf::from(format!("{}-{port}", info.ip));
                let listener = bind_ipc(&path)?;
                public_files.push(path);
                frame_guard::Listener::Unix(listener)
            } else {
                let public = format!("{}:{port}", info.ip);
                let listener = tokio::net::TcpListener::bind(&public)
                    .await
                    .map_err(|e| KernelError::Bind { endpoint: format!("tcp://{public}"), message: e.to_string() })?;
                frame_guard::Listener::Tcp(listener)
            };
            let path = dir.join(name);
            tokio::spawn(frame_guard::serve(guard.clone(), listener, kind, path.clone()));
            inner.push(format!("ipc://{}", path.display()));
        }
        if ipc && let Some(parent) = public_files.first().and_then(|p| p.parent()) {
            warn_unless_private(parent);
        }
        let mut inner = inner.into_iter();
        let mut next = || inner.next().unwrap_or_default();
        Ok(Endpoints { shell: next(), control: next(), stdin: next(), iopub: next(), hb: next(), private_dir: dir, public_files })
    }

    pub(super) fn close(&self) {
        let _ = std::fs::remove_dir_all(&self.private_dir);
        for f in &self.public_files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Binds a client's `ipc` path. A socket left there by a previous run (a
/// restart reuses the paths) is replaced; anything else at the path is an
/// error. The socket file is made private (0600): connecting needs write
/// permission on it. Other accounts' connections are refused anyway (peer
/// credentials), whatever the directory's permissions.
fn bind_ipc(path: &std::path::Path) -> Result<tokio::net::UnixListener, KernelError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |message: String| KernelError::Bind { endpoint: format!("ipc://{}", path.display()), message };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(|e| err(e.to_string()))?,
        Ok(_) => return Err(err("a file that is not a socket is in the way".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

/// Says once when the `ipc` sockets are in a directory other accounts may
/// enter (jupyter_client puts them in the user's private runtime directory).
fn warn_unless_private(dir: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    if let Ok(m) = std::fs::metadata(dir)
        && (m.permissions().mode() & 0o077 != 0 || m.uid() != nix::unistd::geteuid().as_raw())
    {
        tracing::warn!(
            "the ipc sockets are in {}, which is not private to this user; other accounts' connections are refused, \
             but a private directory (jupyter's runtime directory) is the place for them",
            dir.display()
        );
    }
}

/// SIGINT interrupts the running query (jupyter_client sends one before
/// every shutdown; it must not kill the kernel). SIGTERM shuts down.
pub(super) async fn signal_loop(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = int.recv() => {
                if safe_data_policy::runtime::self_interrupted_recently() {
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
pub(super) async fn heartbeat_loop(hb: RouterSocket) {
    let (mut send, mut recv) = hb.split();
    let mut stalled: std::collections::HashMap<Bytes, std::time::Instant> = std::collections::HashMap::new();
    let slow = LogThrottle::new(5, std::time::Duration::from_secs(10));
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
                if let Some(n) = slow.allow() {
                    tracing::warn!("a heartbeat peer does not read its echoes; ignoring it for {} s{}", STALLED_PEER_QUARANTINE.as_secs(), left_out(n));
                }
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
pub(super) async fn iopub_loop(mut socket: PubSocket, mut rx: mpsc::UnboundedReceiver<Frames>) {
    while let Some(frames) = rx.recv().await {
        if let Some(m) = to_zmq(frames)
            && let Err(e) = socket.send(m).await
        {
            tracing::warn!("iopub send: {e}");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Channel {
    Shell,
    Control,
    Stdin,
}

/// Reads one ROUTER socket's requests and answers them (execute requests
/// go to the evaluation thread). What cannot be authenticated is dropped
/// without an answer; a correctly signed request whose body cannot be read
/// gets an error reply. Once shutdown is under way, nothing more is taken.
/// A message the router loop holds; gives its in-flight budget back to the
/// frame guard when dropped.
struct Taken<'a>(&'a frame_guard::Guard, u64);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        self.0.consumed(self.1);
    }
}

pub(super) async fn router_loop(
    socket: RouterSocket,
    shared: Arc<Shared>,
    channel: Channel,
    jobs: Option<std_mpsc::Sender<Job>>,
    guard: Arc<frame_guard::Guard>,
) {
    let (mut send, mut recv) = socket.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Frames>();
    let out_tx = Replies::new(out_tx);
    tokio::spawn(async move {
        let slow = LogThrottle::new(5, std::time::Duration::from_secs(10));
        while let Some(frames) = out_rx.recv().await {
            if let Some(m) = to_zmq(frames) {
                // A client that does not read its replies loses them, and
                // cannot hold back the replies to other clients (the frame
                // guard drains zeromq's queue into a bounded backlog per
                // peer, so this rarely waits at all).
                match tokio::time::timeout(PEER_SEND_TIMEOUT, send.send(m)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!("{channel:?} send: {e}"),
                    Err(_) => {
                        if let Some(n) = slow.allow() {
                            tracing::warn!("{channel:?}: a client does not read its replies; dropped one{}", left_out(n));
                        }
                    }
                }
            }
        }
    });
    // One line per dropped message was megabytes of log per second under
    // a flood of garbage.
    let dropped = LogThrottle::new(10, std::time::Duration::from_secs(10));
    loop {
        let frames = match recv.recv().await {
            Ok(m) => m.into_vec(),
            Err(e) => {
                tracing::debug!("{channel:?} recv: {e}");
                continue;
            }
        };
        // Its in-flight budget comes back once this iteration is done with
        // it (dropped, refused or handed on): until then it is in memory.
        let _taken = Taken(&guard, frames.iter().map(|f| f.len() as u64).sum());
        if *shared.shutdown.borrow() {
            tracing::debug!("{channel:?}: shutting down; a message is not taken");
            continue;
        }
        let mut msg = match Message::decode_or_refuse(frames, shared.wire.signer(), shared.max_message_bytes) {
            Ok(m) => m,
            Err(refused) => {
                match refused.answer_to {
                    Some(to) if channel != Channel::Stdin && to.msg_type().ends_with("_request") => {
                        answer_unreadable(&shared, &out_tx, to, &refused.error, &dropped)
                    }
                    // Never answered: a client without the key learns nothing.
                    _ => {
                        if let Some(n) = dropped.allow() {
                            tracing::warn!("{channel:?}: dropped a message: {}{}", refused.error, left_out(n));
                        }
                    }
                }
                continue;
            }
        };
        if !shared.replay.lock().unwrap_or_else(|p| p.into_inner()).admit(&msg.signature) {
            if let Some(n) = dropped.allow() {
                tracing::warn!("{channel:?}: dropped a replayed message ({}){}", msg.msg_type(), left_out(n));
            }
            continue;
        }
        if channel == Channel::Stdin {
            tracing::debug!("ignoring {} on stdin (the kernel never asks for input)", msg.msg_type());
            continue;
        }
        // Read once, here; the handlers see only the typed request.
        let content = std::mem::take(&mut msg.content);
        let request = match incoming::decode(msg.msg_type(), &content) {
            Ok(request) => request,
            Err(error) => {
                answer_undecodable(&shared, &out_tx, &msg, &error, &dropped);
                continue;
            }
        };
        drop(content);
        if let Request::Shutdown(r) = &request {
            SHUTDOWN_KIND.store(if r.restart { 1 } else { 2 }, std::sync::atomic::Ordering::SeqCst);
        }
        let request = match (request, &jobs, channel) {
            (Request::Execute(request), Some(jobs), Channel::Shell) => {
                let seq = shared.received.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                if jobs.send(Job { msg, request, reply: out_tx.clone(), seq }).is_err() {
                    tracing::error!("the evaluation thread is gone");
                }
                continue;
            }
            (request, _, _) => request,
        };
        handle_request(&shared, &msg, request, &out_tx, channel);
    }
}

/// Answers a correctly signed request whose content does not decode as its
/// message type (a field of the wrong type, a missing `code`): `BadMessage`,
/// naming the field, never its value; nothing is run. An
/// `is_complete_request` is answered "unknown" (its reply has no error
/// status); anything else (a `comm_open` without a `comm_id`) gets no answer.
fn answer_undecodable(shared: &Shared, out: &Replies, msg: &Message, error: &incoming::BadContent, log: &LogThrottle) {
    let msg_type = msg.msg_type();
    if let Some(n) = log.allow() {
        tracing::warn!("a {} could not be read: {error}{}", shortened(msg_type), left_out(n));
    }
    if msg_type == "is_complete_request" {
        return unknown_completeness(shared, msg, out);
    }
    shared.status(&msg.header, State::Busy);
    if msg_type.ends_with("_request") {
        shared.reply(&msg.identities, &msg.header, out, Reply::Refused { request_type: msg_type, why: Refusal::UnreadableContent(error) });
    }
    shared.status(&msg.header, State::Idle);
}

/// A message type for the log: the client's own string, shortened.
fn shortened(msg_type: &str) -> &str {
    match msg_type.char_indices().nth(64) {
        Some((i, _)) => &msg_type[..i],
        None => msg_type,
    }
}

/// Answers a correctly signed request whose parent header, metadata or
/// content is not a JSON object (a lone surrogate escape, nesting deeper
/// than 128 levels): `BadMessage`, naming the frame, never its text. A
/// replay of it is dropped like any other.
fn answer_unreadable(shared: &Shared, out: &Replies, to: wire::AnswerTo, error: &wire::WireError, log: &LogThrottle) {
    if !shared.replay.lock().unwrap_or_else(|p| p.into_inner()).admit(&to.signature) {
        if let Some(n) = log.allow() {
            tracing::warn!("dropped a replayed message ({}){}", to.msg_type(), left_out(n));
        }
        return;
    }
    if let Some(n) = log.allow() {
        tracing::warn!("answered a {} that could not be read: {error}{}", shortened(to.msg_type()), left_out(n));
    }
    shared.status(&to.header, State::Busy);
    shared.reply(&to.identities, &to.header, out, Reply::Refused { request_type: to.msg_type(), why: Refusal::UnreadableFrame(error) });
    shared.status(&to.header, State::Idle);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ipc_path_is_bound_private_and_a_stale_socket_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("sd-ipc-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kernel-ipc-1");
        let listener = bind_ipc(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        drop(listener);
        // The socket file a previous run left behind.
        assert!(path.exists());
        let _again = bind_ipc(&path).unwrap();
        // Anything but a socket is not removed.
        let file = dir.join("kernel-ipc-2");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(bind_ipc(&file).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_replay_memory_is_kept_next_to_the_connection_file() {
        let file = std::path::Path::new("/run/user/1000/jupyter/runtime/kernel-abc.json");
        assert_eq!(replay_memory_path(file).unwrap(), std::path::Path::new("/run/user/1000/jupyter/runtime/.kernel-abc.json.replay"));
    }
}
