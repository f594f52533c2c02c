//! The frame guard: the only thing a client connects to. Every public
//! endpoint of the kernel (a TCP port, or an `ipc` socket path) is served by
//! this relay, and the zeromq sockets listen on private Unix sockets behind
//! it, in a directory only this user can enter.
//!
//! zeromq 0.7 trusts its peers: it reserves the length a frame header claims
//! as soon as it reads it (one 1 TiB claim aborted the process), keeps every
//! subscription a peer sends (duplicates included), and queues up to 100,000
//! messages for a peer that does not read. So the guard reads the client's
//! side as ZMTP 3 (a 64-byte greeting, then frames of `flags, length, body`)
//! and bounds, before zeromq sees anything:
//!
//! - who may connect: on this host, only this user (and root); another
//!   account's connection is closed at once (peer credentials on `ipc`, the
//!   kernel's socket table on TCP). Remote peers cannot be identified;
//! - how many connections a port holds ([`Limits::connections_per_port`],
//!   lowered to fit the process's file descriptor limit); at the limit the
//!   least useful connection makes room (one that never finished its
//!   handshake, then one that never sent a signed message, subscribed or
//!   pinged, least recently active first), and a newcomer is refused when
//!   every connection has proven itself;
//! - every frame and message against the owner's cap, and the bytes of
//!   partly received messages across all connections ([`Limits::in_flight`]:
//!   each connection may have a small part in flight for free, the rest is
//!   taken from one shared budget, and a message holding budget must keep
//!   arriving at [`MIN_UPLOAD_RATE`]; a message counts until the kernel has
//!   taken it from zeromq and handled it, and a large message without the
//!   key's signature closes its connection);
//! - on iopub, what a subscriber may send: subscriptions of at most
//!   [`SUBSCRIPTION_BYTES`], at most [`SUBSCRIPTIONS_PER_CONNECTION`] of
//!   them, duplicates not passed on; anything else is not passed on;
//! - on the heartbeat, pings of at most [`HEARTBEAT_BYTES`], at most
//!   [`HEARTBEATS_PER_SECOND`] per connection;
//! - on the way back, what waits for a peer that does not read: the guard
//!   always drains the kernel's side (so zeromq's queues stay empty) into a
//!   per-connection backlog; when it is full, whole messages for that peer
//!   are dropped (as libzmq does at its high-water mark), and when all
//!   backlogs together exceed [`Limits::outbound_total`], the connection with
//!   the largest one is closed.
//!
//! The guard never decides what a message means: signatures, replays and
//! JSON are the wire decoder's. It verifies signatures as they stream by
//! only to rank connections (a connection that sent a correctly signed
//! message is never evicted for a newcomer).

use crate::wire::{DELIMITER, Signer, StreamingVerifier};
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

const GREETING_BYTES: usize = 64;
const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

/// Connections one port holds at most (before the file descriptor limit
/// lowers it).
pub const CONNECTIONS_PER_PORT: usize = 32;
/// File descriptors kept for the kernel's own use (audit log, history,
/// sources, polars) when the connection limit is derived from
/// `RLIMIT_NOFILE`. Each guarded connection costs three: the client's, the
/// guard's to zeromq, and zeromq's.
pub const FD_RESERVE: u64 = 256;
/// Bytes of a message a connection may have in flight without taking from
/// the shared budget (zeromq reserves what a frame header claims).
pub const FREE_IN_FLIGHT_PER_CONNECTION: u64 = 256 << 10;
/// The smallest shared in-flight budget; it is otherwise the owner's
/// message cap, so one message of the largest size always fits (zeromq
/// buffers a message whole, in a buffer that may double as it grows, and
/// the kernel holds it while it checks the signature: about three times
/// the budget in memory at worst).
pub const MIN_IN_FLIGHT: u64 = 16 << 20;
/// How long a delivered message's budget is kept at most while the kernel
/// has not taken it (a safety net: the kernel takes every message).
pub const DELIVERED_EXPIRY: Duration = Duration::from_secs(60);

/// Drops the delivered messages' budget older than [`DELIVERED_EXPIRY`].
fn expire(delivered: &mut std::collections::VecDeque<(Instant, OwnedSemaphorePermit)>) {
    while delivered.front().is_some_and(|(at, _)| at.elapsed() > DELIVERED_EXPIRY) {
        delivered.pop_front();
    }
}

/// How long a connection waits for in-flight budget before it is closed.
pub const BUDGET_WAIT: Duration = Duration::from_secs(10);
/// A message that holds budget must arrive at this rate (after a grace of
/// [`UPLOAD_GRACE`]), or its connection is closed.
pub const MIN_UPLOAD_RATE: u64 = 1 << 20;
pub const UPLOAD_GRACE: Duration = Duration::from_secs(10);
/// A peer must send its greeting and its first command within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest ZMTP command (READY carries the socket type and identity).
pub const COMMAND_BYTES: u64 = 8 << 10;
/// The longest iopub subscription topic (Jupyter clients subscribe to "").
pub const SUBSCRIPTION_BYTES: usize = 1 << 10;
/// Subscriptions one iopub connection may hold.
pub const SUBSCRIPTIONS_PER_CONNECTION: usize = 64;
/// The largest heartbeat ping, all frames (jupyter_client sends `ping`).
pub const HEARTBEAT_BYTES: u64 = 4 << 10;
/// Pings per second one heartbeat connection may send (more are not
/// echoed; jupyter_client pings every few seconds).
pub const HEARTBEATS_PER_SECOND: u32 = 50;
/// Unsent bytes a peer may have waiting, per connection, by port: replies
/// (shell, control, stdin), iopub messages, heartbeat echoes.
pub const OUTBOUND_REPLIES: usize = 8 << 20;
pub const OUTBOUND_IOPUB: usize = 32 << 20;
pub const OUTBOUND_HEARTBEAT: usize = 64 << 10;
/// Unsent bytes of all connections together.
pub const OUTBOUND_TOTAL: usize = 256 << 20;
/// A heartbeat connection that has not pinged for this long may be evicted
/// for a newcomer.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(30);
/// TCP connections waiting to be identified at once; more are closed at
/// once (each holds a file descriptor while it waits).
pub const PENDING_IDENTIFICATIONS: usize = 64;
/// Bookkeeping counted per queued chunk of a backlog, on top of its bytes.
const CHUNK_OVERHEAD: usize = 64;
/// Outbound pieces are gathered into chunks of about this size.
const CHUNK_BYTES: usize = 16 << 10;
const READ_CHUNK: usize = 64 << 10;

/// Which kernel socket a port fronts: it decides what a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Shell,
    Control,
    Stdin,
    IoPub,
    Heartbeat,
}

impl Port {
    fn outbound_cap(self) -> usize {
        match self {
            Port::Shell | Port::Control | Port::Stdin => OUTBOUND_REPLIES,
            Port::IoPub => OUTBOUND_IOPUB,
            Port::Heartbeat => OUTBOUND_HEARTBEAT,
        }
    }
}

/// The guard's bounds for one kernel (the constants above, and what
/// depends on the owner's message cap and the file descriptor limit).
#[derive(Debug, Clone)]
pub struct Limits {
    /// The owner's cap on one message, all frames.
    pub max_message: u64,
    pub connections_per_port: usize,
    /// Bytes of partly received messages across all connections, beyond
    /// each connection's free part.
    pub in_flight: u64,
    pub outbound_total: usize,
    pub handshake_timeout: Duration,
    pub budget_wait: Duration,
    pub upload_grace: Duration,
    /// Bytes per second a message holding budget must arrive at.
    pub min_upload_rate: u64,
}

impl Limits {
    /// The bounds for a message cap and a file descriptor limit, for five
    /// ports.
    pub fn new(max_message: u64, open_files: u64) -> Limits {
        let by_fds = open_files.saturating_sub(FD_RESERVE) / (3 * 5);
        Limits {
            max_message,
            connections_per_port: (by_fds as usize).clamp(4, CONNECTIONS_PER_PORT),
            in_flight: max_message.max(MIN_IN_FLIGHT),
            outbound_total: OUTBOUND_TOTAL,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            budget_wait: BUDGET_WAIT,
            upload_grace: UPLOAD_GRACE,
            min_upload_rate: MIN_UPLOAD_RATE,
        }
    }
}

/// Why a connection was closed or refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    #[error("a frame of {0} bytes is over the {1}-byte limit")]
    FrameTooLarge(u64, u64),
    #[error("a message of more than {0} bytes")]
    MessageTooLarge(u64),
    #[error("a command frame of {0} bytes is over the {COMMAND_BYTES}-byte limit")]
    CommandTooLarge(u64),
    #[error("not a ZMTP 3 greeting")]
    BadGreeting,
    #[error("no handshake in time")]
    HandshakeTimeout,
    #[error("a message held in-flight budget and arrived too slowly")]
    TooSlow,
    #[error("no in-flight budget in time (other connections hold it)")]
    NoBudget,
    #[error("a large message that is not signed with the connection key")]
    UnsignedLarge,
    #[error("an iopub subscription of {0} bytes is over the {SUBSCRIPTION_BYTES}-byte limit")]
    SubscriptionTooLarge(u64),
    #[error("more than {SUBSCRIPTIONS_PER_CONNECTION} iopub subscriptions on one connection")]
    TooManySubscriptions,
    #[error("a heartbeat of more than {HEARTBEAT_BYTES} bytes")]
    HeartbeatTooLarge,
    #[error("the port holds its limit of connections, all in use")]
    PortFull,
    #[error("evicted to make room (the port holds its limit of connections, or this peer did not read what it was sent)")]
    Evicted,
    #[error("a connection from another account (uid {0})")]
    OtherUser(u32),
    #[error("the peer's account cannot be identified: {0}")]
    Unidentified(String),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the kernel's socket is closed (the kernel is shutting down)")]
    KernelClosed,
}

impl GuardError {
    /// A connection that ended the ordinary way: the client hung up, or
    /// reconnected while the kernel was shutting down (clients reconnect
    /// at once when the kernel's side closes). Not worth a warning.
    pub fn is_routine(&self) -> bool {
        matches!(self, GuardError::Closed | GuardError::KernelClosed)
    }
}

/// Which accounts may connect.
#[derive(Debug, Clone)]
pub enum PeerPolicy {
    /// Anyone who can reach the endpoint.
    Anyone,
    /// These uids (the kernel's own and root, plus any the deployment adds).
    Uids(Vec<u32>),
}

impl PeerPolicy {
    /// This process's user and root, plus `extra`.
    pub fn same_user(extra: &[u32]) -> PeerPolicy {
        let mut uids = vec![nix::unistd::geteuid().as_raw(), 0];
        uids.extend_from_slice(extra);
        PeerPolicy::Uids(uids)
    }

    fn check(&self, uid: u32) -> Result<(), GuardError> {
        match self {
            PeerPolicy::Anyone => Ok(()),
            PeerPolicy::Uids(uids) if uids.contains(&uid) => Ok(()),
            PeerPolicy::Uids(_) => Err(GuardError::OtherUser(uid)),
        }
    }
}

/// At most `per_window` log lines per `window`; then one line saying how
/// many were left out. Floods of bad input must not become floods of logs.
pub struct LogThrottle {
    per_window: u32,
    window: Duration,
    state: Mutex<(std::time::Instant, u32, u64)>,
}

impl LogThrottle {
    pub fn new(per_window: u32, window: Duration) -> LogThrottle {
        LogThrottle { per_window, window, state: Mutex::new((std::time::Instant::now(), 0, 0)) }
    }

    /// `Some(n)` when a line may be written now (`n` lines were left out
    /// since the last one); `None` when it is to be left out.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if now.duration_since(s.0) >= self.window {
            let left_out = s.2;
            *s = (now, 1, 0);
            return Some(left_out);
        }
        if s.1 < self.per_window {
            s.1 += 1;
            let left_out = s.2;
            s.2 = 0;
            Some(left_out)
        } else {
            s.2 += 1;
            None
        }
    }
}

/// " (N similar lines left out)" or nothing.
pub fn left_out(n: u64) -> String {
    if n == 0 { String::new() } else { format!(" ({n} similar lines left out)") }
}

/// How far a connection has proven itself (what eviction spares).
const GREETING: u8 = 0;
const HANDSHAKEN: u8 = 1;
const PROVEN: u8 = 2;

/// One connection, as the registry and the pumps see it.
struct Conn {
    id: u64,
    port: Port,
    /// Milliseconds since the guard started at the last complete message
    /// from the peer (or its arrival).
    last_active: AtomicU64,
    standing: AtomicU8,
    /// Unsent bytes waiting for the peer (with chunk overhead).
    backlog: AtomicUsize,
    evicted: AtomicBool,
    evict: Notify,
}

impl Conn {
    fn evict(&self) {
        self.evicted.store(true, Ordering::SeqCst);
        self.evict.notify_one();
    }

    fn raise(&self, standing: u8) {
        self.standing.fetch_max(standing, Ordering::Relaxed);
    }
}

/// The state all ports of one kernel share.
pub struct Guard {
    limits: Limits,
    signer: Signer,
    peers: PeerPolicy,
    budget: Arc<Semaphore>,
    outbound_total: Arc<AtomicUsize>,
    conns: Mutex<Vec<Arc<Conn>>>,
    next_id: AtomicU64,
    epoch: Instant,
    /// Connections identified at once through the kernel's socket table.
    identify: Semaphore,
    /// Connections waiting to be identified.
    pending: AtomicUsize,
    closed_log: LogThrottle,
    dropped_log: LogThrottle,
    /// Budget of messages passed on to zeromq and not yet taken by the
    /// kernel ([`Guard::consumed`]): zeromq queues what it reads, so a
    /// message counts as in flight until the kernel has it.
    delivered: Mutex<std::collections::VecDeque<(Instant, OwnedSemaphorePermit)>>,
}

impl Guard {
    /// The kernel took a message of `bytes` (all frames) from zeromq: the
    /// oldest budget held for a delivered message comes back. Budget of a
    /// message the kernel never takes comes back after [`DELIVERED_EXPIRY`].
    pub fn consumed(&self, bytes: u64) {
        let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        if bytes > FREE_IN_FLIGHT_PER_CONNECTION {
            delivered.pop_front();
        }
        expire(&mut delivered);
    }

    /// Keeps a delivered message's budget until the kernel takes it.
    fn deliver(&self, permit: OwnedSemaphorePermit) {
        let mut delivered = self.delivered.lock().unwrap_or_else(|p| p.into_inner());
        expire(&mut delivered);
        delivered.push_back((Instant::now(), permit));
    }

    pub fn new(limits: Limits, signer: Signer, peers: PeerPolicy) -> Arc<Guard> {
        let kib = usize::try_from(limits.in_flight >> 10).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Arc::new(Guard {
            budget: Arc::new(Semaphore::new(kib)),
            limits,
            signer,
            peers,
            outbound_total: Arc::new(AtomicUsize::new(0)),
            conns: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            epoch: Instant::now(),
            identify: Semaphore::new(4),
            pending: AtomicUsize::new(0),
            closed_log: LogThrottle::new(20, Duration::from_secs(10)),
            dropped_log: LogThrottle::new(5, Duration::from_secs(10)),
            delivered: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection on `port`, evicting the least useful one
    /// when the port is full.
    fn admit(&self, port: Port) -> Result<Arc<Conn>, GuardError> {
        let now = self.now_ms();
        let mut conns = self.conns();
        let here = conns.iter().filter(|c| c.port == port).count();
        if here >= self.limits.connections_per_port {
            let victim = conns
                .iter()
                .filter(|c| c.port == port)
                .min_by_key(|c| (c.standing.load(Ordering::Relaxed), c.last_active.load(Ordering::Relaxed)))
                .cloned()
                .ok_or(GuardError::PortFull)?;
            let stale = port == Port::Heartbeat && now.saturating_sub(victim.last_active.load(Ordering::Relaxed)) > HEARTBEAT_STALE.as_millis() as u64;
            if victim.standing.load(Ordering::Relaxed) == PROVEN && !stale {
                return Err(GuardError::PortFull);
            }
            victim.evict();
            conns.retain(|c| c.id != victim.id);
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            port,
            last_active: AtomicU64::new(now),
            standing: AtomicU8::new(GREETING),
            backlog: AtomicUsize::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        conns.push(conn.clone());
        Ok(conn)
    }

    fn forget(&self, conn: &Conn) {
        self.conns().retain(|c| c.id != conn.id);
    }

    /// Connections open on `port` (for tests and logs).
    pub fn connections(&self, port: Port) -> usize {
        self.conns().iter().filter(|c| c.port == port).count()
    }

    /// When the backlogs of the registered connections together are over
    /// the limit, the connection with the largest one is closed (its
    /// backlog is freed with it; an evicted connection is no longer
    /// registered, so it is not counted twice while it closes).
    fn make_room(&self) {
        let mut conns = self.conns();
        let held: usize = conns.iter().map(|c| c.backlog.load(Ordering::Relaxed)).sum();
        if held < self.limits.outbound_total {
            return;
        }
        if let Some(victim) = conns.iter().max_by_key(|c| c.backlog.load(Ordering::Relaxed)).cloned() {
            victim.evict();
            conns.retain(|c| c.id != victim.id);
        }
    }

    fn touch(&self, conn: &Conn) {
        conn.last_active.store(self.now_ms(), Ordering::Relaxed);
    }

    fn warn_closed(&self, peer: &str, e: &GuardError) {
        if let Some(n) = self.closed_log.allow() {
            tracing::warn!("closed the connection from {peer}: {e}{}", left_out(n));
        }
    }
}

/// A public endpoint.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// Serves one public endpoint in front of the zeromq socket at `inner`.
pub async fn serve(guard: Arc<Guard>, listener: Listener, port: Port, inner: PathBuf) {
    loop {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, addr)| Accepted::Tcp(s, addr)),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!("accept: {e}");
                // Out of file descriptors, say: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let guard = guard.clone();
        let inner = inner.clone();
        tokio::spawn(async move {
            let peer = accepted.describe();
            match connection(&guard, accepted, port, &inner).await {
                Ok(()) => {}
                Err(e) if e.is_routine() => tracing::debug!("the connection from {peer} ended: {e}"),
                Err(e) => guard.warn_closed(&peer, &e),
            }
        });
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(UnixStream),
}

impl Accepted {
    fn describe(&self) -> String {
        match self {
            Accepted::Tcp(_, addr) => addr.to_string(),
            Accepted::Unix(s) => match s.peer_cred() {
                Ok(c) => format!("a local process (pid {}, uid {})", c.pid().unwrap_or(0), c.uid()),
                Err(_) => "a local process".into(),
            },
        }
    }
}

/// Checks who the peer is, then relays until either side closes, the peer
/// breaks a limit, or the connection is evicted.
async fn connection(guard: &Arc<Guard>, accepted: Accepted, port: Port, inner: &Path) -> Result<(), GuardError> {
    let (reader, writer): (Reader, Writer) = match accepted {
        Accepted::Tcp(stream, addr) => {
            let local = stream.local_addr().map_err(|_| GuardError::Closed)?;
            if !matches!(guard.peers, PeerPolicy::Anyone) {
                if guard.pending.fetch_add(1, Ordering::SeqCst) >= PENDING_IDENTIFICATIONS {
                    guard.pending.fetch_sub(1, Ordering::SeqCst);
                    return Err(GuardError::PortFull);
                }
                let found = async {
                    let _permit = guard.identify.acquire().await.map_err(|_| GuardError::KernelClosed)?;
                    tokio::task::spawn_blocking(move || tcp_peer_uid(addr, local)).await.map_err(|e| GuardError::Unidentified(e.to_string()))
                }
                .await;
                guard.pending.fetch_sub(1, Ordering::SeqCst);
                match found? {
                    Ok(Some(uid)) => guard.peers.check(uid)?,
                    // Not in this host's socket table: a remote peer (or one
                    // that has gone already), which no uid describes.
                    Ok(None) if !addr.ip().is_loopback() => {}
                    Ok(None) => return Err(GuardError::Closed),
                    Err(e) => return Err(GuardError::Unidentified(e.to_string())),
                }
            }
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        Accepted::Unix(stream) => {
            let cred = stream.peer_cred().map_err(|e| GuardError::Unidentified(e.to_string()))?;
            guard.peers.check(cred.uid())?;
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
    };
    let conn = guard.admit(port)?;
    let result = relay(guard, &conn, reader, writer, inner).await;
    guard.forget(&conn);
    result
}

async fn relay(guard: &Arc<Guard>, conn: &Arc<Conn>, peer_read: Reader, peer_write: Writer, inner: &Path) -> Result<(), GuardError> {
    let kernel = UnixStream::connect(inner).await.map_err(|_| GuardError::KernelClosed)?;
    let (kernel_read, kernel_write) = kernel.into_split();
    let backlog = Backlog::new(conn.clone(), guard.outbound_total.clone());
    let inbound = inbound(guard, conn, peer_read, kernel_write);
    let pump = async {
        tokio::join!(
            async {
                outbound(guard, conn, kernel_read, &backlog).await;
                backlog.close();
            },
            write_backlog(peer_write, &backlog),
        )
    };
    tokio::select! {
        r = inbound => r,
        _ = pump => Ok(()),
        () = conn.evict.notified() => Err(GuardError::Evicted),
    }
}

// ---------------------------------------------------------------------------
// The peer's side: checked frame by frame.

fn closed<E>(_: E) -> GuardError {
    GuardError::Closed
}

/// Runs `f`, failing with `late` if it is not done by `deadline`.
async fn within<T>(deadline: Option<Instant>, late: GuardError, f: impl Future<Output = Result<T, GuardError>>) -> Result<T, GuardError> {
    match deadline {
        None => f.await,
        Some(d) => tokio::time::timeout_at(d, f).await.map_err(|_| late)?,
    }
}

async fn read_header<R: AsyncRead + Unpin>(from: &mut R) -> Result<(u8, u64), GuardError> {
    let flags = from.read_u8().await.map_err(closed)?;
    let len = if flags & LONG != 0 { from.read_u64().await.map_err(closed)? } else { u64::from(from.read_u8().await.map_err(closed)?) };
    Ok((flags, len))
}

fn encode_header(flags: u8, len: u64, out: &mut Vec<u8>) {
    out.push(flags);
    if flags & LONG != 0 {
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(len as u8);
    }
}

/// Reads a whole (small) frame body.
async fn read_body<R: AsyncRead + Unpin>(from: &mut R, len: u64) -> Result<Vec<u8>, GuardError> {
    let mut body = vec![0u8; len as usize];
    from.read_exact(&mut body).await.map_err(closed)?;
    Ok(body)
}

/// Reads the 64-byte greeting (checking its signature and major version)
/// and passes it on.
async fn greeting<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(from: &mut R, to: &mut W) -> Result<(), GuardError> {
    let mut greeting = [0u8; GREETING_BYTES];
    from.read_exact(&mut greeting).await.map_err(closed)?;
    if greeting[0] != 0xff || greeting[9] & 0x01 != 0x01 || greeting[10] < 3 {
        return Err(GuardError::BadGreeting);
    }
    to.write_all(&greeting).await.map_err(|_| GuardError::KernelClosed)
}

/// The peer's side of one connection, by port.
async fn inbound<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(guard: &Guard, conn: &Conn, from: R, mut to: W) -> Result<(), GuardError> {
    let mut from = tokio::io::BufReader::with_capacity(16 << 10, from);
    let handshake = Some(Instant::now() + guard.limits.handshake_timeout);
    within(handshake, GuardError::HandshakeTimeout, greeting(&mut from, &mut to)).await?;
    let mut session = Inbound { guard, conn, handshake };
    match conn.port {
        Port::Shell | Port::Control | Port::Stdin => session.messages(&mut from, &mut to).await,
        Port::IoPub => session.subscriptions(&mut from, &mut to).await,
        Port::Heartbeat => session.pings(&mut from, &mut to).await,
    }
}

struct Inbound<'a> {
    guard: &'a Guard,
    conn: &'a Conn,
    /// Until the first command (READY) arrived.
    handshake: Option<Instant>,
}

impl Inbound<'_> {
    /// The next frame header; a command is passed on here (and ends the
    /// handshake), so the callers see message frames only.
    async fn next_frame<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        from: &mut R,
        to: &mut W,
        deadline: Option<Instant>,
        late: &GuardError,
    ) -> Result<(u8, u64), GuardError> {
        loop {
            let (deadline, late) = match self.handshake {
                Some(d) => (Some(d), GuardError::HandshakeTimeout),
                None => (deadline, late.clone()),
            };
            let (flags, len) = within(deadline, late, read_header(from)).await?;
            if flags & COMMAND == 0 {
                return Ok((flags, len));
            }
            if len > COMMAND_BYTES {
                return Err(GuardError::CommandTooLarge(len));
            }
            let mut frame = Vec::with_capacity(len as usize + 9);
            encode_header(flags, len, &mut frame);
            frame.extend(read_body(from, len).await?);
            to.write_all(&frame).await.map_err(|_| GuardError::KernelClosed)?;
            if self.handshake.take().is_some() {
                self.conn.raise(HANDSHAKEN);
            }
        }
    }

    /// Shell, control and stdin: messages streamed through, within the cap
    /// and the in-flight budget; signatures checked on the way to rank the
    /// connection.
    async fn messages<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(&mut self, from: &mut R, to: &mut W) -> Result<(), GuardError> {
        let limit = self.guard.limits.max_message.saturating_add(4096);
        let mut chunk = vec![0u8; READ_CHUNK];
        let mut message_bytes: u64 = 0;
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut started: Option<Instant> = None;
        let mut deadline: Option<Instant> = None;
        let mut signature = SignatureTracker::new(self.guard.signer.streaming());
        loop {
            let (flags, len) = self.next_frame(from, to, deadline, &GuardError::TooSlow).await?;
            if len > limit {
                return Err(GuardError::FrameTooLarge(len, limit));
            }
            message_bytes = message_bytes.saturating_add(len);
            if message_bytes > limit {
                return Err(GuardError::MessageTooLarge(limit));
            }
            let started_at = *started.get_or_insert_with(Instant::now);
            let need = kib(message_bytes.saturating_sub(FREE_IN_FLIGHT_PER_CONNECTION));
            let have = held.as_ref().map_or(0, |p| p.num_permits() as u64);
            if need > have {
                let more = u32::try_from(need - have).unwrap_or(u32::MAX);
                let permit = tokio::time::timeout(self.guard.limits.budget_wait, self.guard.budget.clone().acquire_many_owned(more))
                    .await
                    .map_err(|_| GuardError::NoBudget)?
                    .map_err(|_| GuardError::KernelClosed)?;
                match &mut held {
                    Some(h) => h.merge(permit),
                    None => held = Some(permit),
                }
                let limits = &self.guard.limits;
                deadline = Some(started_at + limits.upload_grace + Duration::from_secs(message_bytes / limits.min_upload_rate.max(1)));
            }
            let mut header = Vec::with_capacity(9);
            encode_header(flags, len, &mut header);
            to.write_all(&header).await.map_err(|_| GuardError::KernelClosed)?;
            signature.frame_start(len);
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                let n = within(deadline, GuardError::TooSlow, async { from.read(&mut chunk[..n]).await.map_err(closed) }).await?;
                if n == 0 {
                    return Err(GuardError::Closed);
                }
                signature.feed(&chunk[..n]);
                to.write_all(&chunk[..n]).await.map_err(|_| GuardError::KernelClosed)?;
                left -= n as u64;
            }
            signature.frame_end();
            if flags & MORE == 0 {
                if signature.message_end() {
                    self.conn.raise(PROVEN);
                } else if held.is_some() && self.guard.signer.signs() {
                    // A large message without the key's signature is
                    // garbage: the peer loses its connection (and zeromq
                    // the buffers it grew for it).
                    return Err(GuardError::UnsignedLarge);
                }
                self.guard.touch(self.conn);
                message_bytes = 0;
                if let Some(permit) = held.take() {
                    self.guard.deliver(permit);
                }
                started = None;
                deadline = None;
            }
        }
    }

    /// iopub: only subscriptions and unsubscriptions reach zeromq, each at
    /// most [`SUBSCRIPTION_BYTES`], at most [`SUBSCRIPTIONS_PER_CONNECTION`]
    /// held, never twice the same.
    async fn subscriptions<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(&mut self, from: &mut R, to: &mut W) -> Result<(), GuardError> {
        let mut held: HashSet<Vec<u8>> = HashSet::new();
        let mut in_multipart = false;
        loop {
            let (flags, len) = self.next_frame(from, to, None, &GuardError::Closed).await?;
            if len > SUBSCRIPTION_BYTES as u64 + 1 {
                return Err(GuardError::SubscriptionTooLarge(len.saturating_sub(1)));
            }
            let body = read_body(from, len).await?;
            // A subscription is a message of one frame; zeromq ignores the rest.
            let part_of_multipart = in_multipart || flags & MORE != 0;
            in_multipart = flags & MORE != 0;
            if part_of_multipart {
                continue;
            }
            let pass = match body.split_first() {
                Some((1, topic)) => {
                    if held.contains(topic) {
                        false
                    } else if held.len() >= SUBSCRIPTIONS_PER_CONNECTION {
                        return Err(GuardError::TooManySubscriptions);
                    } else {
                        held.insert(topic.to_vec());
                        true
                    }
                }
                Some((0, topic)) => held.remove(topic),
                _ => false,
            };
            if pass {
                let mut frame = Vec::with_capacity(body.len() + 2);
                encode_header(flags, len, &mut frame);
                frame.extend_from_slice(&body);
                to.write_all(&frame).await.map_err(|_| GuardError::KernelClosed)?;
                self.guard.touch(self.conn);
                // A subscriber proves itself by holding a subscription.
                self.conn.standing.store(if held.is_empty() { HANDSHAKEN } else { PROVEN }, Ordering::Relaxed);
            }
        }
    }

    /// Heartbeat: pings of at most [`HEARTBEAT_BYTES`], at most
    /// [`HEARTBEATS_PER_SECOND`] echoed per connection.
    async fn pings<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(&mut self, from: &mut R, to: &mut W) -> Result<(), GuardError> {
        let mut message = Vec::new();
        let mut bytes: u64 = 0;
        let mut tokens = f64::from(HEARTBEATS_PER_SECOND);
        let mut refilled = Instant::now();
        let mut dropped: u64 = 0;
        loop {
            let (flags, len) = self.next_frame(from, to, None, &GuardError::Closed).await?;
            bytes = bytes.saturating_add(len);
            if bytes > HEARTBEAT_BYTES {
                return Err(GuardError::HeartbeatTooLarge);
            }
            encode_header(flags, len, &mut message);
            message.extend(read_body(from, len).await?);
            if flags & MORE != 0 {
                continue;
            }
            let now = Instant::now();
            let rate = f64::from(HEARTBEATS_PER_SECOND);
            tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate);
            refilled = now;
            if tokens >= 1.0 {
                tokens -= 1.0;
                to.write_all(&message).await.map_err(|_| GuardError::KernelClosed)?;
                self.guard.touch(self.conn);
                self.conn.raise(PROVEN);
            } else {
                dropped += 1;
                if dropped.is_power_of_two()
                    && let Some(n) = self.guard.dropped_log.allow()
                {
                    tracing::warn!("a heartbeat peer pings more than {HEARTBEATS_PER_SECOND} times a second; {dropped} pings not echoed{}", left_out(n));
                }
            }
            message.clear();
            bytes = 0;
        }
    }
}

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

/// Follows the frames of each message to see whether it carries a correct
/// signature: `[routing ids..., <IDS|MSG>, signature, header, parent,
/// metadata, content, buffers...]`.
struct SignatureTracker {
    template: StreamingVerifier,
    stage: Stage,
    /// The current frame's bytes, when it may be the delimiter or the signature.
    small: Vec<u8>,
    collect_up_to: u64,
    signature: Vec<u8>,
    mac: Option<StreamingVerifier>,
    parts: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Prefix,
    Signature,
    Parts,
    Done,
    Broken,
}

impl SignatureTracker {
    fn new(template: StreamingVerifier) -> SignatureTracker {
        SignatureTracker { template, stage: Stage::Prefix, small: Vec::new(), collect_up_to: 0, signature: Vec::new(), mac: None, parts: 0 }
    }

    fn frame_start(&mut self, len: u64) {
        self.small.clear();
        self.collect_up_to = match self.stage {
            Stage::Prefix if len == DELIMITER.len() as u64 => len,
            Stage::Signature if len <= 128 => len,
            Stage::Signature => {
                self.stage = Stage::Broken;
                0
            }
            _ => 0,
        };
    }

    fn feed(&mut self, bytes: &[u8]) {
        if (self.small.len() as u64) < self.collect_up_to {
            self.small.extend_from_slice(bytes);
        }
        if self.stage == Stage::Parts
            && let Some(mac) = &mut self.mac
        {
            mac.update(bytes);
        }
    }

    fn frame_end(&mut self) {
        match self.stage {
            Stage::Prefix if self.small == DELIMITER => self.stage = Stage::Signature,
            Stage::Signature => {
                self.signature = std::mem::take(&mut self.small);
                self.mac = Some(self.template.clone());
                self.stage = Stage::Parts;
            }
            Stage::Parts => {
                // Each of the four JSON frames is signed as it is: the MAC
                // runs over their concatenation.
                self.parts += 1;
                if self.parts == 4 {
                    self.stage = Stage::Done;
                }
            }
            _ => {}
        }
    }

    /// Whether the message that just ended was correctly signed; resets.
    fn message_end(&mut self) -> bool {
        let ok = self.stage == Stage::Done && self.mac.take().is_some_and(|mac| mac.verify(&self.signature));
        *self = SignatureTracker::new(self.template.clone());
        ok
    }
}

// ---------------------------------------------------------------------------
// The kernel's side: drained at once into a bounded backlog per peer.

/// What waits to be written to one peer.
struct Backlog {
    conn: Arc<Conn>,
    total: Arc<AtomicUsize>,
    chunks: Mutex<VecDeque<Vec<u8>>>,
    ready: Notify,
    closed: AtomicBool,
}

impl Backlog {
    fn new(conn: Arc<Conn>, total: Arc<AtomicUsize>) -> Backlog {
        Backlog { conn, total, chunks: Mutex::new(VecDeque::new()), ready: Notify::new(), closed: AtomicBool::new(false) }
    }

    fn chunks(&self) -> std::sync::MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, piece: &[u8]) {
        if piece.is_empty() {
            return;
        }
        let mut chunks = self.chunks();
        let mut cost = piece.len();
        match chunks.back_mut() {
            Some(last) if last.len() < CHUNK_BYTES => last.extend_from_slice(piece),
            _ => {
                chunks.push_back(piece.to_vec());
                cost += CHUNK_OVERHEAD;
            }
        }
        drop(chunks);
        self.conn.backlog.fetch_add(cost, Ordering::Relaxed);
        self.total.fetch_add(cost, Ordering::Relaxed);
        self.ready.notify_one();
    }

    fn pop(&self) -> Option<Vec<u8>> {
        self.chunks().pop_front()
    }

    fn release(&self, chunk_len: usize) {
        let cost = chunk_len + CHUNK_OVERHEAD;
        self.conn.backlog.fetch_sub(cost, Ordering::Relaxed);
        self.total.fetch_sub(cost, Ordering::Relaxed);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_one();
    }
}

impl Drop for Backlog {
    fn drop(&mut self) {
        let left = self.conn.backlog.swap(0, Ordering::Relaxed);
        self.total.fetch_sub(left, Ordering::Relaxed);
    }
}

/// Writes the backlog to the peer as it can take it.
async fn write_backlog<W: AsyncWrite + Unpin>(mut to: W, backlog: &Backlog) {
    loop {
        let chunk = loop {
            if let Some(chunk) = backlog.pop() {
                break chunk;
            }
            if backlog.closed.load(Ordering::SeqCst) {
                let _ = to.shutdown().await;
                return;
            }
            backlog.ready.notified().await;
        };
        if to.write_all(&chunk).await.is_err() {
            return;
        }
        backlog.release(chunk.len());
    }
}

/// Where the parse of the kernel's stream is.
#[derive(Debug, Clone, Copy)]
enum OutState {
    Greeting(usize),
    Header,
    Body { left: u64, keep: bool },
}

/// Reads the kernel's side as fast as it comes and queues it for the peer,
/// whole messages at a time: a message that starts while the peer's
/// backlog is full is dropped whole (commands always pass).
async fn outbound<R: AsyncRead + Unpin>(guard: &Guard, conn: &Conn, mut from: R, backlog: &Backlog) {
    let mut buf = bytes::BytesMut::with_capacity(READ_CHUNK);
    let mut parser = OutParser::new();
    loop {
        buf.reserve(READ_CHUNK);
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let dropped_before = parser.dropped;
        parser.parse(
            &mut buf,
            |piece| backlog.push(piece),
            || {
                if guard.outbound_total.load(Ordering::Relaxed) >= guard.limits.outbound_total {
                    guard.make_room();
                }
                conn.backlog.load(Ordering::Relaxed) < conn.port.outbound_cap()
            },
        );
        if parser.dropped > dropped_before
            && parser.dropped.is_power_of_two()
            && let Some(n) = guard.dropped_log.allow()
        {
            tracing::warn!("a {:?} peer does not read what it is sent: {} messages to it dropped so far{}", conn.port, parser.dropped, left_out(n));
        }
    }
}

/// The parse of the kernel's ZMTP stream into pieces to pass on.
struct OutParser {
    state: OutState,
    in_message: bool,
    keep_message: bool,
    dropped: u64,
}

impl OutParser {
    fn new() -> OutParser {
        OutParser { state: OutState::Greeting(GREETING_BYTES), in_message: false, keep_message: true, dropped: 0 }
    }

    /// Consumes what `buf` holds: `pass` gets each piece to queue, `room`
    /// is asked at the start of each message whether it fits.
    fn parse(&mut self, buf: &mut bytes::BytesMut, mut pass: impl FnMut(&[u8]), mut room: impl FnMut() -> bool) {
        use bytes::Buf;
        loop {
            match self.state {
                OutState::Greeting(left) => {
                    let n = left.min(buf.len());
                    if n == 0 {
                        return;
                    }
                    pass(&buf[..n]);
                    buf.advance(n);
                    self.state = if left == n { OutState::Header } else { OutState::Greeting(left - n) };
                }
                OutState::Header => {
                    let Some(&flags) = buf.first() else { return };
                    let header_len = if flags & LONG != 0 { 9 } else { 2 };
                    if buf.len() < header_len {
                        return;
                    }
                    let len = if flags & LONG != 0 {
                        u64::from_be_bytes([buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7], buf[8]])
                    } else {
                        u64::from(buf[1])
                    };
                    let keep = if flags & COMMAND != 0 {
                        true
                    } else {
                        if !self.in_message {
                            self.keep_message = room();
                            if !self.keep_message {
                                self.dropped += 1;
                            }
                        }
                        self.in_message = flags & MORE != 0;
                        self.keep_message
                    };
                    if keep {
                        pass(&buf[..header_len]);
                    }
                    buf.advance(header_len);
                    self.state = if len == 0 { OutState::Header } else { OutState::Body { left: len, keep } };
                }
                OutState::Body { left, keep } => {
                    let n = left.min(buf.len() as u64) as usize;
                    if n == 0 {
                        return;
                    }
                    if keep {
                        pass(&buf[..n]);
                    }
                    buf.advance(n);
                    let left = left - n as u64;
                    self.state = if left == 0 { OutState::Header } else { OutState::Body { left, keep } };
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Who is on the other end of a TCP connection.

/// The uid owning the peer's end of a TCP connection, when the peer is on
/// this host: its socket is in the kernel's table (`/proc/net/tcp` or
/// `tcp6`) with our address as its remote end. `None` when it is not there
/// (a remote peer, or one that has closed already).
pub fn tcp_peer_uid(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> std::io::Result<Option<u32>> {
    use std::net::{IpAddr, SocketAddr};
    // An IPv4 peer of an IPv6 listener is listed as IPv4.
    let unmap = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    };
    let (peer, local) = (unmap(peer), unmap(local));
    let (table, want_local, want_remote) = match (peer, local) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => ("/proc/net/tcp", proc_address(peer), proc_address(local)),
        _ => ("/proc/net/tcp6", proc_address(peer), proc_address(local)),
    };
    let text = std::fs::read_to_string(table)?;
    Ok(find_uid(&text, &want_local, &want_remote))
}

/// An address as `/proc/net/tcp` prints it: the address's 32-bit words in
/// host byte order, in hex, then the port.
fn proc_address(addr: std::net::SocketAddr) -> String {
    let words: Vec<String> = match addr.ip() {
        std::net::IpAddr::V4(ip) => vec![format!("{:08X}", u32::from_ne_bytes(ip.octets()))],
        std::net::IpAddr::V6(ip) => ip.octets().chunks_exact(4).map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))).collect(),
    };
    format!("{}:{:04X}", words.concat(), addr.port())
}

fn find_uid(table: &str, local: &str, remote: &str) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 7 && fields[1] == local && fields[2] == remote).then(|| fields[7].parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![flags];
        if body.len() > 255 || flags & LONG != 0 {
            out[0] |= LONG;
            out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            out.push(body.len() as u8);
        }
        out.extend_from_slice(body);
        out
    }

    fn greeting_bytes() -> Vec<u8> {
        let mut g = vec![0u8; GREETING_BYTES];
        g[0] = 0xff;
        g[9] = 0x7f;
        g[10] = 3;
        g
    }

    fn ready() -> Vec<u8> {
        frame(COMMAND, b"\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER")
    }

    fn guard(max: u64) -> Arc<Guard> {
        Guard::new(Limits::new(max, 4096), Signer::new("key"), PeerPolicy::Anyone)
    }

    async fn run_port(g: &Arc<Guard>, port: Port, input: Vec<u8>) -> (Result<(), GuardError>, Vec<u8>) {
        let conn = g.admit(port).unwrap();
        let mut out = Vec::new();
        let r = inbound(g, &conn, &input[..], &mut out).await;
        g.forget(&conn);
        (r, out)
    }

    async fn run(input: Vec<u8>, max: u64) -> (Result<(), GuardError>, Vec<u8>) {
        run_port(&guard(max), Port::Shell, input).await
    }

    #[tokio::test]
    async fn passes_frames_through_unchanged() {
        let mut input = greeting_bytes();
        input.extend(ready());
        input.extend(frame(MORE, b"<IDS|MSG>"));
        input.extend(frame(0, &vec![b'x'; 1000]));
        let (r, out) = run(input.clone(), 10_000).await;
        assert_eq!(r, Err(GuardError::Closed));
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_zmtp3_greeting() {
        let (r, out) = run(vec![b'G'; 100], 10_000).await;
        assert_eq!(r, Err(GuardError::BadGreeting));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn refuses_a_huge_claim_before_reading_it() {
        let mut input = greeting_bytes();
        input.extend(ready());
        input.push(LONG);
        input.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let (r, out) = run(input, 1 << 20).await;
        assert!(matches!(r, Err(GuardError::FrameTooLarge(len, _)) if len == 1 << 40), "{r:?}");
        assert_eq!(out.len(), GREETING_BYTES + ready().len(), "nothing of the frame was passed on");
    }

    #[tokio::test]
    async fn refuses_a_huge_command() {
        let mut input = greeting_bytes();
        input.push(COMMAND | LONG);
        input.extend_from_slice(&(1u64 << 30).to_be_bytes());
        let (r, _) = run(input, 1 << 20).await;
        assert_eq!(r, Err(GuardError::CommandTooLarge(1 << 30)));
    }

    #[tokio::test]
    async fn refuses_a_message_whose_frames_add_up_over_the_cap() {
        let mut input = greeting_bytes();
        input.extend(ready());
        for _ in 0..10 {
            input.extend(frame(MORE, &[b'y'; 3000]));
        }
        let (r, _) = run(input, 20_000).await;
        assert!(matches!(r, Err(GuardError::MessageTooLarge(_))), "{r:?}");
    }

    #[tokio::test]
    async fn the_count_restarts_with_each_message() {
        let mut input = greeting_bytes();
        input.extend(ready());
        for _ in 0..10 {
            input.extend(frame(0, &[b'y'; 3000]));
        }
        let (r, out) = run(input.clone(), 20_000).await;
        assert_eq!(r, Err(GuardError::Closed));
        assert_eq!(out, input);
    }

    /// Finding 5 of the protocol review: many connections each announcing a
    /// frame just under the cap reserved the sum. Past each connection's free
    /// part, in-flight bytes come from one budget; a connection that cannot
    /// get its share in time is closed, and the budget comes back when a
    /// message is complete or its connection closes.
    #[tokio::test]
    async fn bytes_in_flight_are_bounded_across_connections() {
        let limits = Limits {
            budget_wait: Duration::from_millis(100),
            upload_grace: Duration::from_millis(400),
            min_upload_rate: u64::MAX,
            ..Limits::new(20 << 20, 4096)
        };
        let g = Guard::new(limits, Signer::new("key"), PeerPolicy::Anyone);
        let budget_kib = g.budget.available_permits();
        assert_eq!(budget_kib as u64, kib(20 << 20));
        // A peer that announces a 9 MiB frame and sends little of it: the
        // frame's budget is taken before the header is passed on.
        let half_sent = |n: usize| {
            let mut input = greeting_bytes();
            input.extend(ready());
            input.push(LONG);
            input.extend_from_slice(&(9u64 << 20).to_be_bytes());
            input.extend(vec![b'z'; n]);
            input
        };
        let mut holders = Vec::new();
        for _ in 0..2 {
            let g = g.clone();
            let conn = g.admit(Port::Shell).unwrap();
            let (mut client, server) = tokio::io::duplex(1 << 16);
            client.write_all(&half_sent(10)).await.unwrap();
            holders.push((
                client,
                tokio::spawn(async move {
                    let r = inbound(&g, &conn, server, tokio::io::sink()).await;
                    g.forget(&conn);
                    r
                }),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let left = g.budget.available_permits() as u64;
        assert!(left < kib(9 << 20), "two 9 MiB frames in flight left {left} KiB of {budget_kib}");
        // A third must wait, and is closed when no budget comes in time.
        let (r, _) = run_port(&g, Port::Shell, half_sent(0)).await;
        assert_eq!(r, Err(GuardError::NoBudget));
        // The holders are closed when their upload is too slow, and the budget is back.
        for (client, task) in holders {
            let r = task.await.unwrap();
            assert_eq!(r, Err(GuardError::TooSlow));
            drop(client);
        }
        assert_eq!(g.budget.available_permits(), budget_kib);
    }

    #[tokio::test]
    async fn small_messages_need_no_budget() {
        let g = guard(10 << 20);
        let all = g.budget.available_permits();
        let mut input = greeting_bytes();
        input.extend(ready());
        input.extend(frame(0, &vec![b'x'; (FREE_IN_FLIGHT_PER_CONNECTION - 10) as usize]));
        let sem = g.budget.clone();
        let _all = sem.acquire_many_owned(all as u32).await.unwrap();
        let (r, out) = run_port(&g, Port::Shell, input.clone()).await;
        assert_eq!(r, Err(GuardError::Closed));
        assert_eq!(out, input, "passed on while the budget was exhausted");
    }

    fn subscribe(topic: &[u8]) -> Vec<u8> {
        let mut body = vec![1u8];
        body.extend_from_slice(topic);
        frame(0, &body)
    }

    /// Finding 3: zeromq keeps every subscription, duplicates included.
    #[tokio::test]
    async fn subscriptions_are_bounded_and_deduplicated() {
        let g = guard(1 << 20);
        let mut input = greeting_bytes();
        input.extend(ready());
        for _ in 0..100 {
            input.extend(subscribe(b""));
        }
        input.extend(frame(MORE, b"\x01multi"));
        input.extend(frame(0, b"part"));
        input.extend(frame(0, b"\x02neither"));
        input.extend(frame(0, b"\x00never-subscribed"));
        let (r, out) = run_port(&g, Port::IoPub, input).await;
        assert_eq!(r, Err(GuardError::Closed));
        let mut expected = greeting_bytes();
        expected.extend(ready());
        expected.extend(subscribe(b""));
        assert_eq!(out, expected, "one subscription passed on, nothing else");

        let mut input = greeting_bytes();
        input.extend(ready());
        for i in 0..=SUBSCRIPTIONS_PER_CONNECTION {
            input.extend(subscribe(format!("topic-{i}").as_bytes()));
        }
        let (r, _) = run_port(&g, Port::IoPub, input).await;
        assert_eq!(r, Err(GuardError::TooManySubscriptions));

        let mut input = greeting_bytes();
        input.extend(ready());
        input.extend(subscribe(&vec![b't'; SUBSCRIPTION_BYTES + 1]));
        let (r, out) = run_port(&g, Port::IoPub, input).await;
        assert_eq!(r, Err(GuardError::SubscriptionTooLarge(SUBSCRIPTION_BYTES as u64 + 1)));
        assert_eq!(out.len(), GREETING_BYTES + ready().len());

        // Unsubscribing frees a place.
        let mut input = greeting_bytes();
        input.extend(ready());
        for i in 0..SUBSCRIPTIONS_PER_CONNECTION * 3 {
            input.extend(subscribe(format!("topic-{i}").as_bytes()));
            let mut body = vec![0u8];
            body.extend_from_slice(format!("topic-{i}").as_bytes());
            input.extend(frame(0, &body));
        }
        let (r, _) = run_port(&g, Port::IoPub, input).await;
        assert_eq!(r, Err(GuardError::Closed));
    }

    /// Finding 4: big pings, and pings faster than anyone needs.
    #[tokio::test]
    async fn heartbeats_are_small_and_rate_limited() {
        let g = guard(1 << 20);
        let mut input = greeting_bytes();
        input.extend(ready());
        input.extend(frame(MORE, b""));
        input.extend(frame(0, &vec![b'p'; HEARTBEAT_BYTES as usize + 1]));
        let (r, _) = run_port(&g, Port::Heartbeat, input).await;
        assert_eq!(r, Err(GuardError::HeartbeatTooLarge));

        let mut input = greeting_bytes();
        input.extend(ready());
        let ping = [frame(MORE, b""), frame(0, b"ping")].concat();
        for _ in 0..1000 {
            input.extend(&ping);
        }
        let (r, out) = run_port(&g, Port::Heartbeat, input).await;
        assert_eq!(r, Err(GuardError::Closed));
        let echoed = (out.len() - GREETING_BYTES - ready().len()) / ping.len();
        assert!(echoed <= HEARTBEATS_PER_SECOND as usize + 5, "{echoed} of 1000 pings at once were passed on");
        assert!(echoed >= HEARTBEATS_PER_SECOND as usize / 2);
    }

    #[tokio::test]
    async fn a_silent_peer_is_closed_after_the_handshake_timeout() {
        let g = Guard::new(Limits { handshake_timeout: Duration::from_millis(100), ..Limits::new(1 << 20, 4096) }, Signer::new("k"), PeerPolicy::Anyone);
        let conn = g.admit(Port::Shell).unwrap();
        let (_client, server) = tokio::io::duplex(1024);
        let r = inbound(&g, &conn, server, tokio::io::sink()).await;
        assert_eq!(r, Err(GuardError::HandshakeTimeout));
    }

    #[test]
    fn connections_per_port_fit_the_descriptor_limit() {
        assert_eq!(Limits::new(1 << 20, 1 << 20).connections_per_port, CONNECTIONS_PER_PORT);
        let l = Limits::new(1 << 20, 1024);
        assert!(l.connections_per_port * 5 * 3 + FD_RESERVE as usize <= 1024, "{l:?}");
        assert_eq!(Limits::new(1 << 20, 10).connections_per_port, 4);
    }

    /// Finding 6: at the limit, a newcomer takes the place of the least
    /// useful connection, never of one that proved itself.
    #[test]
    fn at_the_limit_the_least_useful_connection_makes_room() {
        let g = Guard::new(Limits { connections_per_port: 3, ..Limits::new(1 << 20, 4096) }, Signer::new("k"), PeerPolicy::Anyone);
        let proven = g.admit(Port::Shell).unwrap();
        proven.raise(PROVEN);
        let handshaken = g.admit(Port::Shell).unwrap();
        handshaken.raise(HANDSHAKEN);
        let silent = g.admit(Port::Shell).unwrap();
        // Other ports do not count.
        let _iopub = g.admit(Port::IoPub).unwrap();
        let newcomer = g.admit(Port::Shell).unwrap();
        assert!(silent.evicted.load(Ordering::SeqCst));
        assert!(!handshaken.evicted.load(Ordering::SeqCst) && !proven.evicted.load(Ordering::SeqCst));
        newcomer.raise(PROVEN);
        let _again = g.admit(Port::Shell).unwrap();
        assert!(handshaken.evicted.load(Ordering::SeqCst));
        assert!(!proven.evicted.load(Ordering::SeqCst));
        assert_eq!(g.connections(Port::Shell), 3);
        // All proven: the newcomer is refused.
        g.conns().iter().for_each(|c| c.raise(PROVEN));
        assert!(matches!(g.admit(Port::Shell), Err(GuardError::PortFull)));
        assert_eq!(g.connections(Port::Shell), 3);
    }

    #[tokio::test]
    async fn a_correctly_signed_message_proves_the_connection() {
        let signer = Signer::new("key");
        let g = guard(1 << 20);
        let frames = crate::wire::encode(
            &[],
            &crate::wire::header("kernel_info_request", "s"),
            &serde_json::json!({}),
            &serde_json::json!({}),
            &serde_json::json!({}),
            &signer,
        );
        let message = |frames: &[bytes::Bytes]| {
            let mut out = Vec::new();
            for (i, f) in frames.iter().enumerate() {
                out.extend(frame(if i + 1 < frames.len() { MORE } else { 0 }, f));
            }
            out
        };
        let mut forged = frames.clone();
        forged[5] = bytes::Bytes::from_static(b"{\"x\": 1}");
        for (input, proven) in [(message(&forged), false), (message(&frames), true)] {
            let conn = g.admit(Port::Shell).unwrap();
            let mut all = greeting_bytes();
            all.extend(ready());
            all.extend(input);
            let r = inbound(&g, &conn, &all[..], tokio::io::sink()).await;
            assert_eq!(r, Err(GuardError::Closed));
            assert_eq!(conn.standing.load(Ordering::Relaxed) == PROVEN, proven);
            g.forget(&conn);
        }
    }

    /// Findings 4 and 11: what waits for a peer that does not read is
    /// bounded; whole messages are dropped, commands always pass.
    #[test]
    fn the_backlog_drops_whole_messages_when_full() {
        let mut stream = greeting_bytes();
        stream.extend(ready());
        for i in 0..100u8 {
            stream.extend(frame(MORE, &[i; 10]));
            stream.extend(frame(0, &[i; 1000]));
        }
        let mut parser = OutParser::new();
        let mut queued = Vec::new();
        let mut room = 0usize;
        // Fed in odd-sized pieces, as reads return them.
        for piece in stream.chunks(777) {
            let mut buf = bytes::BytesMut::from(piece);
            let mut taken = Vec::new();
            parser.parse(
                &mut buf,
                |p| taken.extend_from_slice(p),
                || {
                    room += 1;
                    room <= 10
                },
            );
            queued.extend(taken);
        }
        assert_eq!(parser.dropped, 90);
        let mut expected = greeting_bytes();
        expected.extend(ready());
        for i in 0..10u8 {
            expected.extend(frame(MORE, &[i; 10]));
            expected.extend(frame(0, &[i; 1000]));
        }
        assert_eq!(queued, expected);
    }

    #[tokio::test]
    async fn all_backlogs_together_are_bounded() {
        let g = Guard::new(Limits { outbound_total: 100_000, ..Limits::new(1 << 20, 4096) }, Signer::new("k"), PeerPolicy::Anyone);
        let a = g.admit(Port::IoPub).unwrap();
        let b = g.admit(Port::IoPub).unwrap();
        let backlog_a = Backlog::new(a.clone(), g.outbound_total.clone());
        let backlog_b = Backlog::new(b.clone(), g.outbound_total.clone());
        backlog_a.push(&[0u8; 80_000]);
        backlog_b.push(&[0u8; 30_000]);
        assert!(g.outbound_total.load(Ordering::Relaxed) >= 110_000);
        let mut stream = greeting_bytes();
        stream.extend(frame(0, b"next"));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&stream).await.unwrap();
        drop(client);
        outbound(&g, &b, server, &backlog_b).await;
        assert!(a.evicted.load(Ordering::SeqCst), "the largest backlog's connection is closed");
        assert!(!b.evicted.load(Ordering::SeqCst));
        drop(backlog_a);
        assert!(g.outbound_total.load(Ordering::Relaxed) < 40_000);
        drop(backlog_b);
        assert_eq!(g.outbound_total.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_connection_after_the_kernel_closed_is_routine() {
        let dir = std::env::temp_dir().join(format!("sd-guard-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let g = guard(1 << 20);
        let conn = g.admit(Port::Shell).unwrap();
        // No socket at this path: the kernel has shut down.
        let r = relay(&g, &conn, Box::new(&[][..]), Box::new(tokio::io::sink()), &dir.join("gone")).await;
        assert_eq!(r, Err(GuardError::KernelClosed));
        assert!(r.unwrap_err().is_routine());
        assert!(GuardError::Closed.is_routine());
        assert!(!GuardError::FrameTooLarge(1 << 40, 1 << 20).is_routine());
        assert!(!GuardError::MessageTooLarge(1 << 20).is_routine());
        let _ = std::fs::remove_dir(&dir);
    }

    /// Finding 7: a TCP peer on this host is identified by its socket's owner.
    #[test]
    fn the_owner_of_a_local_tcp_peer_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let uid = tcp_peer_uid(peer, server.local_addr().unwrap()).unwrap();
        assert_eq!(uid, Some(nix::unistd::geteuid().as_raw()));
        drop(client);
        // An address nobody uses is not found.
        let nobody: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tcp_peer_uid(nobody, server.local_addr().unwrap()).unwrap(), None);
        let policy = PeerPolicy::same_user(&[]);
        assert_eq!(policy.check(nix::unistd::geteuid().as_raw()), Ok(()));
        assert_eq!(policy.check(0), Ok(()));
        assert_eq!(policy.check(54_321), Err(GuardError::OtherUser(54_321)));
    }

    #[test]
    fn proc_addresses_are_spelled_as_the_kernel_does() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                     0: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1 1 0 20 4 1 56 146\n";
        if cfg!(target_endian = "little") {
            let peer: std::net::SocketAddr = "127.0.0.1:50000".parse().unwrap();
            let local: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
            assert_eq!(proc_address(peer), "0100007F:C350");
            assert_eq!(find_uid(table, &proc_address(peer), &proc_address(local)), Some(1000));
            assert_eq!(find_uid(table, &proc_address(local), &proc_address(peer)), None);
        }
    }

    #[test]
    fn logs_are_throttled() {
        let t = LogThrottle::new(3, Duration::from_secs(3600));
        assert_eq!((0..10).filter(|_| t.allow().is_some()).count(), 3);
        let t = LogThrottle::new(3, Duration::ZERO);
        assert!((0..10).all(|_| t.allow().is_some()));
    }
}
