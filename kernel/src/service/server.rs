//! `safe-data serve --config C`: the data service.
//!
//! Start-up refuses, with the fix named, a configuration without
//! `[service]`, a socket path that another service is listening on (a stale
//! socket file left by a dead one is removed), a socket folder that does not
//! exist, and a `state_dir` that other accounts may read or write. Then the
//! service listens on its Unix socket (`0660` owner:`socket_group`, or
//! `0666` without a group) and starts its worker pool ([`super::pool`]).
//!
//! Each connection's user is the socket's peer credentials (`SO_PEERCRED`
//! uid → account name), never anything the client says; a user outside
//! `allowed_users`/`allowed_groups` is refused and audited. A connection
//! then sends requests (by id) and may interrupt its running cell at any
//! time: the reader keeps reading while the cell runs. Cells whose
//! statements only read the catalog (SHOW TABLES, DESCRIBE, EXPLAIN),
//! completion and inspection are answered here, on blocking threads, so a
//! busy pool never delays them; every other cell runs in a worker. The
//! service alone appends to the audit log (the workers send their lines
//! here), and it holds each user's history.
//!
//! Malformed, oversized or out-of-order frames close their connection only
//! and are logged without their content.

use super::pool::{Pool, Worker, WorkerError};
use super::protocol::{self, ClientMsg, FromWorker, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, ProtocolError, ServiceMsg, ToWorker};
use crate::frame_guard::{LogThrottle, left_out};
use crate::history::History;
use crate::kernel::backend::{self, CellError, HistoryItem};
use safe_data_lang::config::ServiceConfig;
use safe_data_lang::parse::{Parsed, Statement};
use safe_data_policy::CancelFlag;
use safe_data_policy::Catalog;
use safe_data_policy::audit::{AuditLog, Entry};
use safe_data_policy::release::Verdict;
use safe_data_policy::{Policy, Requester};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Notify, Semaphore, mpsc};

/// How long a new connection has to say hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once (fewer when the open-file limit is lower:
/// each takes about [`FDS_PER_CONNECTION`] descriptors); more are closed at
/// once (and logged).
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections one account may hold at once: one scientist cannot take
/// every slot (20 kernels is a busy day).
pub const MAX_CONNECTIONS_PER_USER: usize = 32;
/// Descriptors one connection may hold: its socket and two history
/// connections (each a database and a WAL file).
const FDS_PER_CONNECTION: u64 = 5;
/// Descriptors kept for the audit log, the workers' pipes and the sources.
const FD_RESERVE: u64 = 256;
/// How often a refused account's connections are audited (one line, with
/// the number refused meanwhile).
const REFUSAL_AUDIT_EVERY: Duration = Duration::from_secs(60);
/// The largest first frame (the hello is a few bytes).
const MAX_HELLO_BYTES: usize = 4096;
/// Completion, inspection and history requests one connection may have in flight.
const MAX_IN_FLIGHT: usize = 16;
/// Frames queued for one connection's writer.
const OUT_QUEUE: usize = 64;
/// Bytes of answers queued for one connection and not yet written (a
/// larger frame waits until the queue is empty).
const OUT_BYTES: usize = 8 << 20;

/// How long a cell waits for a worker while none can start before it is
/// answered with an error.
const WORKER_START_PATIENCE: Duration = Duration::from_secs(10);
/// History answers computed at once in the whole service.
const HISTORY_ANSWERS: usize = 4;

/// A frame on its way to a kernel, with its share of the byte budget.
type Queued = (Vec<u8>, tokio::sync::OwnedSemaphorePermit);
/// How long an answer may wait for a client that does not read.
const CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Beyond the owner's `query_timeout_s`, how long a worker may take over
/// one statement before it is killed (its own engine stops at the timeout;
/// this is for computations polars could not stop).
const WORKER_GRACE: Duration = Duration::from_secs(5);

/// Why the service does not start; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("{config} has no [service] section; add one, e.g.\n  [service]\n  socket = \"/run/safe-data/safe-data.sock\"\n  socket_group = \"scientists\"")]
    NoService { config: String },
    #[error("the socket's folder {0} does not exist; create it (mkdir -p {0}) and give it to the service account")]
    SocketFolder(String),
    #[error("a Safe Data service is already listening on {0}; stop it first, or set another [service] socket")]
    SocketLive(String),
    #[error("{0} exists and is not a socket; remove it, or set another [service] socket")]
    NotASocket(String),
    #[error(
        "state_dir {path} has mode {mode:04o}: other accounts could read or change the audit log and the histories; set it to 0700 (chmod 700 {path}), owned by the service account"
    )]
    StateDirMode { path: String, mode: u32 },
    #[error("cannot use state_dir {path}: {message}")]
    StateDir { path: String, message: String },
    #[error("socket_group `{0}` is not a group on this system; create it (groupadd {0}) or correct [service] socket_group")]
    NoGroup(String),
    #[error("cannot listen on {path}: {message}")]
    Bind { path: String, message: String },
    #[error("cannot start the service: {0}")]
    Start(String),
}

/// What every connection shares.
struct Service {
    catalog: Arc<Catalog>,
    config: ServiceConfig,
    /// For the statements answered here (catalog only): audited directly.
    policy: Policy,
    /// The lines the workers send, refusals, and statements the service stopped.
    audit: AuditLog,
    pool: Pool,
    state_dir: PathBuf,
    query_timeout: Duration,
    per_user: Arc<PerUser>,
    /// When each refused account was last audited, and how many refusals
    /// since ([`REFUSAL_AUDIT_EVERY`]).
    refusals: Mutex<std::collections::HashMap<u32, (std::time::Instant, u64)>>,
    /// History answers being computed ([`HISTORY_ANSWERS`]).
    history_answers: Arc<Semaphore>,
    /// Each account's share of the workers ([`Service::worker_share`]).
    shares: Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
}

impl Service {
    /// The workers one account may use at once: all but one when there are
    /// several, so a user running many heavy cells never delays everyone.
    fn worker_share(&self, user: &str) -> Arc<Semaphore> {
        let per_user = self.config.workers.saturating_sub(1).max(1);
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        shares.entry(user.to_string()).or_insert_with(|| Arc::new(Semaphore::new(per_user))).clone()
    }
}

/// Runs the service until SIGTERM or SIGINT.
///
/// Order matters: the checks and the socket come first (the socket's folder
/// is not on the allow-list), then the process hardens and confines itself
/// ([`crate::sandbox`]) before it opens any data or starts any thread, so
/// every thread and every worker it starts is confined too.
pub fn serve(config_path: &Path) -> Result<(), ServeError> {
    // Everything the service creates (caches, audit log, histories, the
    // socket before its mode is set) is its own account's only.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let config_path = std::fs::canonicalize(config_path).map_err(|e| ServeError::Config(format!("cannot find {}: {e}", config_path.display())))?;
    let config = safe_data_lang::config::Config::load(&config_path).map_err(|e| ServeError::Config(e.to_string()))?;
    let service = config.service.clone().ok_or_else(|| ServeError::NoService { config: config_path.display().to_string() })?;
    let state_dir = config.server.state_dir.clone();
    check_state_dir(&state_dir)?;
    let listener = bind(&service)?;
    let socket = service.socket.clone();
    let served = confined_serve(config_path, config, service, listener);
    // Best effort: under confinement the socket's folder is not writable;
    // the next start removes a stale socket anyway.
    let _ = std::fs::remove_file(&socket);
    served
}

/// The part of [`serve`] after the socket is bound.
fn confined_serve(
    config_path: PathBuf,
    config: safe_data_lang::config::Config,
    service: ServiceConfig,
    listener: std::os::unix::net::UnixListener,
) -> Result<(), ServeError> {
    if let Err(e) = crate::sandbox::harden_process() {
        tracing::warn!("cannot harden the process (no-new-privileges, no core dumps): {e}");
    }
    crate::sandbox::confine(&crate::sandbox::service_confinement(&config));
    let state_dir = config.server.state_dir.clone();
    let state_err = |e: std::io::Error| ServeError::StateDir { path: state_dir.display().to_string(), message: e.to_string() };
    let catalog = Arc::new(Catalog::open(config).map_err(|e| ServeError::Config(e.to_string()))?);
    let policy = Policy::new(catalog.clone()).map_err(state_err)?;
    let audit = AuditLog::open(&state_dir).map_err(state_err)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("safe-data-service")
        .enable_all()
        .build()
        .map_err(|e| ServeError::Start(format!("cannot start the runtime: {e}")))?;
    let served = runtime.block_on(async move {
        let pool = Pool::start(config_path, service.workers).map_err(|e| ServeError::Start(e.to_string()))?;
        let query_timeout = catalog.config.server.query_timeout;
        let service = Arc::new(Service {
            catalog,
            config: service,
            policy,
            audit,
            pool,
            state_dir,
            query_timeout,
            per_user: Arc::default(),
            refusals: Mutex::default(),
            history_answers: Arc::new(Semaphore::new(HISTORY_ANSWERS)),
            shares: Mutex::default(),
        });
        listener.set_nonblocking(true).map_err(|e| ServeError::Start(e.to_string()))?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| ServeError::Start(e.to_string()))?;
        accept_loop(service, listener).await
    });
    runtime.shutdown_timeout(Duration::from_millis(200));
    served
}

/// Refuses a `state_dir` that other accounts may enter (it holds the audit
/// log and every user's history); creates a missing one as `0700`.
fn check_state_dir(dir: &Path) -> Result<(), ServeError> {
    let err = |message: String| ServeError::StateDir { path: dir.display().to_string(), message };
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| err(e.to_string()))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("it is not a folder".into()));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ServeError::StateDirMode { path: dir.display().to_string(), mode });
    }
    let me = nix::unistd::geteuid().as_raw();
    if std::os::unix::fs::MetadataExt::uid(&meta) != me {
        return Err(err(format!(
            "it belongs to uid {}, not to the service's account (uid {me}); give it to the service account (chown -R)",
            std::os::unix::fs::MetadataExt::uid(&meta)
        )));
    }
    Ok(())
}

/// Checks the socket path, removes a stale socket, binds, and sets the
/// socket's owner group and mode.
fn bind(config: &ServiceConfig) -> Result<std::os::unix::net::UnixListener, ServeError> {
    let path = &config.socket;
    let shown = path.display().to_string();
    let parent = path.parent().unwrap_or(Path::new("/"));
    if !parent.is_dir() {
        return Err(ServeError::SocketFolder(parent.display().to_string()));
    }
    let group = match &config.socket_group {
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid),
            Ok(None) => return Err(ServeError::NoGroup(name.clone())),
            Err(e) => return Err(ServeError::Start(format!("cannot look up group {name}: {e}"))),
        },
        None => None,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServeError::NotASocket(shown));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ServeError::SocketLive(shown)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                tracing::info!("removing the stale socket {shown} (no service listens on it)");
                std::fs::remove_file(path).map_err(|e| ServeError::Bind { path: shown.clone(), message: format!("cannot remove the stale socket: {e}") })?;
            }
            Err(e) => return Err(ServeError::Bind { path: shown, message: format!("it exists and cannot be checked: {e}") }),
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| ServeError::Bind { path: shown.clone(), message: e.to_string() })?;
    let set = || -> Result<(), String> {
        if let Some(gid) = group {
            nix::unistd::chown(path, None, Some(gid)).map_err(|e| {
                let group = config.socket_group.as_deref().unwrap_or("");
                format!(
                    "cannot give the socket to group {group}: {e}; the service's account must be a member of it (usermod --append --groups {group} ACCOUNT)"
                )
            })?;
        }
        let mode = if group.is_some() { 0o660 } else { 0o666 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("cannot set the socket's mode: {e}"))
    };
    if let Err(message) = set() {
        let _ = std::fs::remove_file(path);
        return Err(ServeError::Bind { path: shown, message });
    }
    tracing::info!(socket = %shown, workers = config.workers, "Safe Data service listening");
    Ok(listener)
}

async fn accept_loop(service: Arc<Service>, listener: tokio::net::UnixListener) -> Result<(), ServeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return Err(ServeError::Start("cannot install the signal handlers".into()));
    };
    let max_connections = connection_limit();
    // At most one line per second for a flood of connections.
    let throttle = LogThrottle::new(1, Duration::from_secs(1));
    let connections = Arc::new(Semaphore::new(max_connections));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // The account's quota first: one account (allowed or
                    // not) flooding the socket cannot take the slots of
                    // the others.
                    let Ok(uid) = stream.peer_cred().map(|c| c.uid()) else { continue };
                    let Some(slot) = PerUser::take(&service.per_user, uid) else {
                        let reason = format!("this account has {MAX_CONNECTIONS_PER_USER} kernels connected to the Safe Data service already; shut some down");
                        if let Ok(frame) = protocol::encode(&ServiceMsg::Refused { reason }, MAX_RESPONSE_BYTES) {
                            let _ = stream.try_write(&frame);
                        }
                        if let Some(n) = throttle.allow() {
                            tracing::warn!(uid, "refused connections: the account has {MAX_CONNECTIONS_PER_USER} open already{}", left_out(n));
                        }
                        continue;
                    };
                    let Ok(permit) = connections.clone().try_acquire_owned() else {
                        if let Some(n) = throttle.allow() {
                            tracing::warn!("{max_connections} connections are open; closed new ones{}", left_out(n));
                        }
                        continue;
                    };
                    let service = service.clone();
                    tokio::spawn(async move {
                        connection(service, stream, slot).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("Safe Data service stopping");
    Ok(())
}

/// Raises the soft open-file limit to the hard one and sizes the number of
/// connections to it: [`MAX_CONNECTIONS`], or fewer so that they cannot use
/// the descriptors the audit log and the workers need.
fn connection_limit() -> usize {
    let soft = crate::sandbox::raise_open_file_limit();
    let fit = (soft.saturating_sub(FD_RESERVE) / FDS_PER_CONNECTION).max(8);
    (fit as usize).min(MAX_CONNECTIONS)
}

/// Counts the connections of each account ([`MAX_CONNECTIONS_PER_USER`]).
#[derive(Default)]
struct PerUser(Mutex<std::collections::HashMap<u32, usize>>);

/// One account's slot; given back when dropped.
struct UserSlot {
    counts: Arc<PerUser>,
    uid: u32,
}

impl PerUser {
    fn take(this: &Arc<PerUser>, uid: u32) -> Option<UserSlot> {
        let mut counts = this.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(uid).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_USER {
            return None;
        }
        *n += 1;
        Some(UserSlot { counts: this.clone(), uid })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.uid);
            }
        }
    }
}

/// Who is on the other end of a connection, from the kernel's records.
struct Peer {
    uid: u32,
    /// The account name; `None` for a uid without one.
    user: Option<String>,
    groups: Vec<String>,
}

impl Peer {
    fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let uid = cred.uid();
        let account = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten();
        let Some(account) = account else { return Ok(Peer { uid, user: None, groups: vec![] }) };
        let groups = std::ffi::CString::new(account.name.as_str())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, account.gid).ok())
            .unwrap_or_else(|| vec![account.gid])
            .into_iter()
            .filter_map(|gid| nix::unistd::Group::from_gid(gid).ok().flatten().map(|g| g.name))
            .collect();
        Ok(Peer { uid, user: Some(account.name), groups })
    }

    /// The name the audit log records.
    fn audit_name(&self) -> String {
        self.user.clone().unwrap_or_else(|| format!("uid:{}", self.uid))
    }
}

/// Whether the owner's lists admit this peer. With neither list, anyone who
/// can open the socket is served; otherwise the user must be listed or be
/// in a listed group.
fn admit(config: &ServiceConfig, peer: &Peer) -> Result<(), String> {
    let Some(user) = &peer.user else { return Err(format!("uid {} has no account name on this server", peer.uid)) };
    if config.allowed_users.is_none() && config.allowed_groups.is_none() {
        return Ok(());
    }
    let listed = config.allowed_users.as_ref().is_some_and(|users| users.iter().any(|u| u == user));
    let in_group = config.allowed_groups.as_ref().is_some_and(|groups| groups.iter().any(|g| peer.groups.contains(g)));
    if listed || in_group {
        Ok(())
    } else {
        Err(format!("the data owner has not allowed the account `{user}` to use this service; ask them to add it to [service] allowed_users"))
    }
}

/// Why a running cell was stopped by the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// The user interrupted it.
    Interrupted,
    /// The kernel disconnected.
    Disconnected,
}

/// The stop signal of one running cell: an interrupt or the client leaving.
struct Stop {
    notify: Notify,
    why: Mutex<Option<StopReason>>,
    /// For cells answered in the service (they poll it).
    cancel: CancelFlag,
}

impl Stop {
    fn new() -> Stop {
        Stop { notify: Notify::new(), why: Mutex::new(None), cancel: CancelFlag::new() }
    }

    fn stop(&self, why: StopReason) {
        self.why.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(why);
        self.cancel.cancel();
        self.notify.notify_one();
    }

    async fn wait(&self) -> StopReason {
        self.notify.notified().await;
        self.why.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(StopReason::Interrupted)
    }
}

/// One connection's state.
struct Conn {
    requester: Requester,
    /// Appends of executed cells.
    history: Arc<Mutex<History>>,
    /// History requests, through their own database connection: a slow
    /// search never delays an append.
    reader: Arc<Mutex<History>>,
    out: mpsc::Sender<Queued>,
    /// Bytes of answers queued for this kernel and not yet written
    /// ([`OUT_BYTES`]); a frame holds its share until it is written.
    budget: Arc<Semaphore>,
    /// The running cell's stop signal.
    running: Mutex<Option<Arc<Stop>>>,
    in_flight: AtomicUsize,
}

impl Conn {
    /// Sends a message; `false` when the client is gone or does not read.
    async fn send(&self, msg: &ServiceMsg) -> bool {
        let frame = match protocol::encode(msg, MAX_RESPONSE_BYTES) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("an answer could not be encoded: {e}");
                return false;
            }
        };
        self.send_frame(frame).await
    }

    /// Queues an encoded frame once the connection's byte budget has room;
    /// `false` when the kernel is gone or does not read within
    /// [`CLIENT_SEND_TIMEOUT`].
    async fn send_frame(&self, frame: Vec<u8>) -> bool {
        let share = u32::try_from(frame.len().min(OUT_BYTES)).unwrap_or(u32::MAX);
        let queued = async {
            let permit = self.budget.clone().acquire_many_owned(share).await.ok()?;
            self.out.send((frame, permit)).await.ok()
        };
        matches!(tokio::time::timeout(CLIENT_SEND_TIMEOUT, queued).await, Ok(Some(())))
    }
}

async fn connection(service: Arc<Service>, stream: UnixStream, _slot: UserSlot) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("a connection without peer credentials: {e}");
            return;
        }
    };
    let session = uuid::Uuid::new_v4().to_string();
    let (mut read, mut write) = stream.into_split();
    if let Err(reason) = admit(&service.config, &peer) {
        // One audit line per account per minute, with how many were refused
        // meanwhile: a refused account cannot flood the audit log.
        let suppressed = {
            let mut refusals = service.refusals.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            match refusals.get_mut(&peer.uid) {
                Some((last, n)) if now.duration_since(*last) < REFUSAL_AUDIT_EVERY => {
                    *n += 1;
                    None
                }
                Some((last, n)) => {
                    let before = *n;
                    (*last, *n) = (now, 0);
                    Some(before)
                }
                None => {
                    refusals.insert(peer.uid, (now, 0));
                    Some(0)
                }
            }
        };
        if let Some(before) = suppressed {
            tracing::warn!(user = %peer.audit_name(), uid = peer.uid, "refused a connection: {reason}");
            let statement = match before {
                0 => "(connection to the Safe Data service)".to_string(),
                n => format!("(connection to the Safe Data service; {n} more refused since the last line)"),
            };
            append_audit(&service, refusal_entry(&peer.audit_name(), &session, &statement, "NotAllowed")).await;
        }
        refuse(&mut write, reason).await;
        return;
    }
    let user = peer.audit_name();
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, protocol::read_frame(&mut read, MAX_HELLO_BYTES)).await {
        Ok(Ok(frame)) => protocol::hello_version(&frame),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProtocolError::OutOfOrder("no hello within the handshake time")),
    };
    match hello {
        Ok(protocol::VERSION) => {}
        Ok(got) => {
            tracing::warn!(%user, "refused a kernel speaking protocol version {got}");
            refuse(&mut write, ProtocolError::Version { got }.to_string()).await;
            return;
        }
        Err(ProtocolError::Closed) => return,
        Err(e) => {
            tracing::warn!(%user, "closed a connection during the handshake: {e}");
            refuse(&mut write, e.to_string()).await;
            return;
        }
    }
    let (reader, history) = {
        let (dir, name) = (service.state_dir.clone(), user.clone());
        match tokio::task::spawn_blocking(move || {
            let h = History::open(&dir, &name);
            (h.reader(), h)
        })
        .await
        {
            Ok((r, h)) => (Arc::new(Mutex::new(r)), Arc::new(Mutex::new(h))),
            Err(_) => {
                tracing::error!(%user, "cannot open the history");
                return;
            }
        }
    };
    let welcome = ServiceMsg::Welcome {
        version: protocol::VERSION,
        user: user.clone(),
        display_name: service.catalog.config.server.display_name.clone(),
        session: session.clone(),
    };
    if protocol::write_msg(&mut write, &welcome, MAX_RESPONSE_BYTES).await.is_err() {
        return;
    }
    tracing::info!(%user, uid = peer.uid, %session, "kernel connected");
    let (out, mut queue) = mpsc::channel::<Queued>(OUT_QUEUE);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Some((frame, _budget)) = queue.recv().await {
            // A kernel that stops reading loses its connection (and the
            // queue with it), not the service's memory.
            match tokio::time::timeout(CLIENT_SEND_TIMEOUT, write.write_all(&frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::warn!("a kernel did not read its answers for {CLIENT_SEND_TIMEOUT:?}; closed its connection");
                    return;
                }
            }
        }
    });
    let budget = Arc::new(Semaphore::new(OUT_BYTES));
    let conn = Arc::new(Conn {
        requester: Requester::new(user.clone(), session),
        history,
        reader,
        out,
        budget,
        running: Mutex::new(None),
        in_flight: AtomicUsize::new(0),
    });
    let ended = serve_requests(&service, &conn, &mut read).await;
    match ended {
        Ok(()) => tracing::info!(%user, "kernel disconnected"),
        // Logged without the frame: it may hold anything.
        Err(e) => tracing::warn!(%user, "closed a connection: {e}"),
    }
    if let Some(stop) = conn.running.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        stop.stop(StopReason::Disconnected);
    }
}

/// Sends the refusal (best effort: the client may already be gone).
async fn refuse(write: &mut OwnedWriteHalf, reason: String) {
    let _ = tokio::time::timeout(Duration::from_secs(1), protocol::write_msg(write, &ServiceMsg::Refused { reason }, MAX_RESPONSE_BYTES)).await;
}

/// Reads requests until the client leaves (`Ok`) or breaks the protocol.
async fn serve_requests(service: &Arc<Service>, conn: &Arc<Conn>, read: &mut tokio::net::unix::OwnedReadHalf) -> Result<(), ProtocolError> {
    loop {
        let frame = match protocol::read_frame(read, MAX_REQUEST_BYTES).await {
            Ok(f) => f,
            Err(ProtocolError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        match protocol::decode::<ClientMsg>(&frame)? {
            ClientMsg::Hello { .. } => return Err(ProtocolError::OutOfOrder("a second hello")),
            ClientMsg::Execute { id, code, silent, store_history, execution_count } => {
                let stop = Arc::new(Stop::new());
                {
                    let mut running = conn.running.lock().unwrap_or_else(|p| p.into_inner());
                    if running.is_some() {
                        return Err(ProtocolError::OutOfOrder("a cell while another one runs"));
                    }
                    *running = Some(stop.clone());
                }
                let (service, conn) = (service.clone(), conn.clone());
                tokio::spawn(async move {
                    let cell = ExecuteCell { id, code, silent, store_history, execution_count };
                    let result = execute(&service, &conn, &cell, &stop).await;
                    *conn.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    conn.send(&ServiceMsg::Done { id, result }).await;
                });
            }
            ClientMsg::Interrupt {} => {
                if let Some(stop) = conn.running.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    stop.stop(StopReason::Interrupted);
                }
            }
            ClientMsg::Complete { id, code, cursor } => {
                let catalog = service.catalog.clone();
                answer(conn, id, move || {
                    let done = safe_data_policy::complete(&catalog, &code, cursor);
                    ServiceMsg::Completion { id, matches: done.matches, start: done.start, end: done.end }
                })?;
            }
            ClientMsg::Inspect { id, code, cursor } => {
                let catalog = service.catalog.clone();
                answer(conn, id, move || ServiceMsg::Inspection { id, text: safe_data_policy::inspect(&catalog, &code, cursor) })?;
            }
            ClientMsg::History { id, query } => {
                let history = conn.reader.clone();
                // At most HISTORY_ANSWERS at once in the whole service: each
                // may be a megabyte of text.
                let Ok(slot) = service.history_answers.clone().try_acquire_owned() else {
                    let busy = ServiceMsg::Failed { id, message: "the service is answering many history requests; try again".into() };
                    if !conn.send(&busy).await {
                        return Ok(());
                    }
                    continue;
                };
                answer(conn, id, move || {
                    let _slot = slot;
                    let entries: Vec<HistoryItem> = query.run(&history.lock().unwrap_or_else(|p| p.into_inner()));
                    ServiceMsg::History { id, entries }
                })?;
            }
        }
    }
}

/// Answers a catalog or history request on a blocking thread; at most
/// [`MAX_IN_FLIGHT`] per connection (a client that floods is closed).
fn answer(conn: &Arc<Conn>, id: u64, work: impl FnOnce() -> ServiceMsg + Send + 'static) -> Result<(), ProtocolError> {
    if conn.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
        conn.in_flight.fetch_sub(1, Ordering::SeqCst);
        return Err(ProtocolError::OutOfOrder("too many requests in flight"));
    }
    let conn = conn.clone();
    tokio::spawn(async move {
        // Encoded on the blocking thread too: a large answer never holds
        // a runtime thread.
        let encoded = tokio::task::spawn_blocking(move || protocol::encode(&work(), MAX_RESPONSE_BYTES)).await;
        match encoded {
            Ok(Ok(frame)) => {
                conn.send_frame(frame).await;
            }
            _ => {
                conn.send(&ServiceMsg::Failed { id, message: "an internal error occurred".into() }).await;
            }
        }
        conn.in_flight.fetch_sub(1, Ordering::SeqCst);
    });
    Ok(())
}

/// One execute request.
struct ExecuteCell {
    id: u64,
    code: String,
    silent: bool,
    store_history: bool,
    execution_count: u64,
}

/// Whether every statement reads only the catalog (no data): answered here.
fn catalog_only(statements: &[Parsed]) -> bool {
    statements.iter().all(|p| matches!(p.statement, Statement::ShowTables | Statement::Describe { .. } | Statement::Explain(_)))
}

/// Runs a cell: parses it (a cell that does not parse is audited and
/// answered here), answers catalog-only cells here, and sends the others to
/// a worker.
async fn execute(service: &Arc<Service>, conn: &Arc<Conn>, cell: &ExecuteCell, stop: &Arc<Stop>) -> Result<(), CellError> {
    let code: Arc<str> = Arc::from(cell.code.as_str());
    if cell.store_history {
        let (history, code, count) = (conn.history.clone(), code.clone(), cell.execution_count);
        let _ = tokio::task::spawn_blocking(move || history.lock().unwrap_or_else(|p| p.into_inner()).append(count, &code)).await;
    }
    let parsed = {
        let (service, conn, code) = (service.clone(), conn.clone(), code.clone());
        tokio::task::spawn_blocking(move || backend::parse_audited(&service.policy, &conn.requester, &code)).await.map_err(|_| internal_error())?
    };
    let statements = parsed?;
    if catalog_only(&statements) {
        let (service, conn2, code, stop, id, silent) = (service.clone(), conn.clone(), code.clone(), stop.clone(), cell.id, cell.silent);
        return tokio::task::spawn_blocking(move || {
            backend::render_statements(&service.policy, &conn2.requester, &stop.cancel, &code, &statements, silent, &mut |output| {
                if let Ok(frame) = protocol::encode(&ServiceMsg::Output { id, output }, MAX_RESPONSE_BYTES) {
                    send_bounded(&conn2, frame, &stop.cancel);
                }
            })
        })
        .await
        .unwrap_or_else(|_| Err(internal_error()));
    }
    on_worker(service, conn, cell, &statements, stop).await
}

/// Queues a frame from a blocking thread, waiting at most
/// [`CLIENT_SEND_TIMEOUT`] for room: a kernel that does not read stops its
/// cell rather than pinning the thread.
fn send_bounded(conn: &Conn, frame: Vec<u8>, cancel: &CancelFlag) {
    if cancel.is_cancelled() || !tokio::runtime::Handle::current().block_on(conn.send_frame(frame)) {
        cancel.cancel();
    }
}

/// Returns once the pool has failed to start workers for
/// [`WORKER_START_PATIENCE`] while this cell waited (a busy pool whose
/// workers start fine never returns).
async fn no_worker_can_start(service: &Service) {
    let mut failing_since = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = tokio::time::Instant::now();
        failing_since = if service.pool.failing() { Some(failing_since.unwrap_or(now)) } else { None };
        if failing_since.is_some_and(|t| now - t >= WORKER_START_PATIENCE) {
            return;
        }
    }
}

fn internal_error() -> CellError {
    CellError::plain("InternalError", "an internal error occurred while evaluating this cell; the service is still running")
}

/// Runs a cell in a worker: relays its audit lines (written here, then
/// acknowledged) and outputs; kills and replaces the worker on interrupt,
/// disconnection, a statement that outlives the owner's timeout, or its
/// death, and audits the statement it was running.
async fn on_worker(service: &Arc<Service>, conn: &Arc<Conn>, cell: &ExecuteCell, statements: &[Parsed], stop: &Arc<Stop>) -> Result<(), CellError> {
    let user = conn.requester.user.clone();
    // One account never holds every worker: another user's cell finds one.
    let share = service.worker_share(&user);
    let _share = tokio::select! {
        permit = share.acquire_owned() => permit.map_err(|_| internal_error())?,
        why = stop.wait() => {
            stopped(service, conn, statements.first(), stop_rule(why)).await;
            return Err(stop_error(why));
        }
    };
    let mut worker = tokio::select! {
        w = service.pool.acquire() => w,
        () = no_worker_can_start(service) => {
            return Err(CellError::plain(
                "ServiceUnavailable",
                "no query process of the Safe Data service can start; ask the data owner to look at the service's log (SHOW TABLES and DESCRIBE still work)",
            ));
        }
        why = stop.wait() => {
            stopped(service, conn, statements.first(), stop_rule(why)).await;
            return Err(stop_error(why));
        }
    };
    worker.jobs += 1;
    let run = ToWorker::Run { user: user.clone(), session: conn.requester.session.clone(), code: cell.code.clone(), silent: cell.silent };
    if let Err(e) = worker.send(&run).await {
        return lost(service, conn, worker, statements.first(), e).await;
    }
    let per_statement = service.query_timeout + WORKER_GRACE;
    let mut audited = 0usize;
    let mut deadline = tokio::time::Instant::now() + per_statement;
    loop {
        let event = tokio::select! {
            msg = worker.recv() => Ok(msg),
            () = tokio::time::sleep_until(deadline) => Err(None),
            why = stop.wait() => Err(Some(why)),
        };
        match event {
            Ok(Ok(FromWorker::Audit { entry })) => {
                let mut entry: Entry = entry.into();
                // The worker was told these; the service's own word stands regardless.
                entry.user = user.clone();
                entry.session = conn.requester.session.clone();
                let ok = append_audit(service, entry).await;
                if let Err(e) = worker.send(&ToWorker::AuditAck { ok }).await {
                    return lost(service, conn, worker, statements.get(audited), e).await;
                }
                audited += 1;
                deadline = tokio::time::Instant::now() + per_statement;
            }
            Ok(Ok(FromWorker::Output { output })) => {
                if !conn.send(&ServiceMsg::Output { id: cell.id, output }).await {
                    stop.stop(StopReason::Disconnected);
                }
            }
            Ok(Ok(FromWorker::Done { result })) => {
                // A stopped computation may still be unwinding in polars: start afresh.
                let dirty = matches!(&result, Err(e) if matches!(e.ename.as_str(), "Interrupted" | "Timeout" | "MemoryLimit" | "InternalError"));
                if dirty {
                    let how = worker.kill().await;
                    tracing::info!(%user, "replaced a worker after a stopped query ({how})");
                    service.pool.replace();
                } else {
                    service.pool.release(worker);
                }
                return result;
            }
            Ok(Ok(FromWorker::Ready {})) => {
                return lost(service, conn, worker, statements.get(audited), WorkerError::Protocol(ProtocolError::OutOfOrder("ready during a cell"))).await;
            }
            Ok(Err(e)) => return lost(service, conn, worker, statements.get(audited), e).await,
            Err(None) => {
                let how = worker.kill().await;
                tracing::warn!(%user, "killed a worker whose statement outlived the time limit ({how})");
                service.pool.replace();
                stopped(service, conn, statements.get(audited), "Timeout").await;
                return Err(CellError::plain("Timeout", safe_data_policy::RunError::Timeout(service.query_timeout.as_secs()).to_string()));
            }
            Err(Some(why)) => {
                let how = worker.kill().await;
                tracing::info!(%user, "stopped a cell ({why:?}): killed its worker ({how}) and started another");
                service.pool.replace();
                stopped(service, conn, statements.get(audited), stop_rule(why)).await;
                return Err(stop_error(why));
            }
        }
    }
}

fn stop_rule(why: StopReason) -> &'static str {
    match why {
        StopReason::Interrupted => "Interrupted",
        StopReason::Disconnected => "Disconnected",
    }
}

fn stop_error(why: StopReason) -> CellError {
    match why {
        StopReason::Interrupted => CellError::plain("Interrupted", safe_data_policy::RunError::Interrupted.to_string()),
        StopReason::Disconnected => CellError::plain("Interrupted", "the kernel disconnected"),
    }
}

/// A worker that died or broke the protocol: reaped, replaced, its
/// statement audited; the cell's answer says what happened.
async fn lost(service: &Arc<Service>, conn: &Arc<Conn>, worker: Worker, statement: Option<&Parsed>, error: WorkerError) -> Result<(), CellError> {
    let (how, killed) = worker.reap().await;
    service.pool.replace();
    let user = &conn.requester.user;
    if killed {
        // Nobody here sent that SIGKILL: on Linux, the OOM killer.
        tracing::warn!(%user, "a worker was killed by the system ({how}), most likely out of memory; started another");
        stopped(service, conn, statement, "MemoryLimit").await;
        return Err(CellError::plain(
            "MemoryLimit",
            "the query was stopped: the server ran out of memory for it; narrow it down (filters, fewer groups, smaller joins). The service is still running",
        ));
    }
    tracing::error!(%user, "a worker failed ({error}; {how}); started another");
    stopped(service, conn, statement, "WorkerLost").await;
    Err(CellError::plain("WorkerLost", "the process running this query ended unexpectedly; the service is still running: run the cell again"))
}

/// Audits a statement the service stopped before the worker audited it.
async fn stopped(service: &Arc<Service>, conn: &Arc<Conn>, statement: Option<&Parsed>, rule: &str) {
    let Some(statement) = statement else { return };
    let entry = refusal_entry(&conn.requester.user, &conn.requester.session, &statement.text, rule);
    append_audit(service, entry).await;
}

fn refusal_entry(user: &str, session: &str, statement: &str, rule: &str) -> Entry {
    Entry {
        time: safe_data_policy::now_rfc3339(),
        user: user.to_string(),
        session: session.to_string(),
        statement: statement.to_string(),
        plan_hash: None,
        verdict: Verdict::Refused,
        rule: Some(rule.to_string()),
        rows_released: 0,
    }
}

/// Appends a line to the audit log on a blocking thread; `false` (logged) if it could not.
async fn append_audit(service: &Arc<Service>, entry: Entry) -> bool {
    let writer = service.clone();
    match tokio::task::spawn_blocking(move || writer.audit.append(&entry)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            // The I/O error names the file and the failure, never data.
            tracing::error!("cannot append to the audit log {}: {e}", service.audit.path().display());
            false
        }
        Err(_) => false,
    }
}
