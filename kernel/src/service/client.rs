//! [`Remote`]: the kernel's backend in service mode. It holds no config, no
//! path to any data and no policy: it forwards each request to the data
//! service over its Unix socket and hands back what the service released.
//!
//! One connection per kernel, multiplexed by request id: a reader task
//! routes each answer to the request that waits for it, so an interrupt
//! (or a completion) travels while a cell runs. When the service cannot be
//! reached, the kernel still runs and every cell says so (and the next cell
//! tries again); nothing waits forever on a service that does not answer.

use super::protocol::{self, ClientMsg, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, ProtocolError, ServiceMsg};
use crate::kernel::backend::{Backend, Cell, CellError, Completion, HistoryItem, HistoryQuery, Output};
use safe_data_lang::parse::MAX_CELL_BYTES;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long connecting and the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting to a service whose listen queue is full is retried with a
/// doubling pause up to this pause (about 2.5 s in all).
const CONNECT_RETRY_UNTIL: Duration = Duration::from_secs(1);
/// How long a completion, inspection or history request waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After an interrupt, how long a cell waits for the service to confirm the
/// stop before the kernel gives up on the connection (which makes the
/// service stop the cell too) and answers the cell itself.
const INTERRUPT_GRACE: Duration = Duration::from_secs(10);
/// The name in the banner until the service has told its own.
const DEFAULT_DISPLAY_NAME: &str = "Safe Data (service)";

/// The kernel's end of the service.
pub struct Remote {
    socket: PathBuf,
    runtime: tokio::runtime::Handle,
    /// Held only to read or replace the connection, never while connecting.
    connection: Mutex<Option<Arc<Connection>>>,
    /// One connection attempt at a time.
    connecting: Mutex<()>,
    display_name: Mutex<String>,
    /// When the user last interrupted (to give up on a service that does not answer).
    interrupted_at: Mutex<Option<Instant>>,
}

/// One open connection: the writer's queue and the requests waiting for answers.
struct Connection {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, std_mpsc::Sender<ServiceMsg>>>,
    next_id: AtomicU64,
    /// Why the connection ended (`None` while it is open).
    closed: Mutex<Option<String>>,
}

impl Connection {
    fn is_open(&self) -> bool {
        self.closed.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    fn close(&self, why: String) {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if closed.is_none() {
            *closed = Some(why);
        }
        drop(closed);
        // Dropping the senders wakes every waiting request.
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn why_closed(&self) -> String {
        self.closed.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(|| "the connection was closed".into())
    }

    /// Registers a request and sends it; the receiver gets its answers.
    fn request(&self, make: impl FnOnce(u64) -> ClientMsg) -> Result<(u64, std_mpsc::Receiver<ServiceMsg>), String> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let frame = protocol::encode(&make(id), MAX_REQUEST_BYTES).map_err(|e| e.to_string())?;
        let (tx, rx) = std_mpsc::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        if !self.is_open() || self.out.send(frame).is_err() {
            self.forget(id);
            return Err(self.why_closed());
        }
        Ok((id, rx))
    }

    fn forget(&self, id: u64) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Routes one answer to its request. `false`: no request has that id
    /// (one that gave up waiting), which is harmless.
    fn route(&self, msg: ServiceMsg) -> bool {
        let (id, last) = match &msg {
            ServiceMsg::Output { id, .. } => (*id, false),
            ServiceMsg::Done { id, .. }
            | ServiceMsg::Completion { id, .. }
            | ServiceMsg::Inspection { id, .. }
            | ServiceMsg::History { id, .. }
            | ServiceMsg::Failed { id, .. } => (*id, true),
            ServiceMsg::Welcome { .. } | ServiceMsg::Refused { .. } => return false,
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = pending.get(&id) else { return false };
        let _ = tx.send(msg);
        if last {
            pending.remove(&id);
        }
        true
    }
}

/// What the handshake learnt.
struct Welcome {
    display_name: String,
}

/// Connects, says hello and reads the service's answer; then starts the
/// reader and writer tasks.
async fn open(socket: &Path) -> Result<(Arc<Connection>, Welcome), String> {
    // A full listen queue (a busy service, or a flood of connections by
    // someone else) refuses at once rather than waiting: try again briefly.
    let mut pause = Duration::from_millis(20);
    let stream = loop {
        match tokio::net::UnixStream::connect(socket).await {
            Ok(stream) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && pause < CONNECT_RETRY_UNTIL => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let (mut read, mut write) = stream.into_split();
    // The service may refuse (and close) before it reads the hello: a
    // failed write still reads the refusal, which says why.
    let sent = protocol::write_msg(&mut write, &ClientMsg::Hello { version: protocol::VERSION }, MAX_REQUEST_BYTES).await;
    let first = match protocol::read_frame(&mut read, MAX_RESPONSE_BYTES).await {
        Ok(frame) => frame,
        Err(_) if sent.is_err() => return Err(sent.err().map(|e| e.to_string()).unwrap_or_default()),
        Err(ProtocolError::Closed) => return Err("the service closed the connection during the handshake".to_string()),
        Err(e) => return Err(e.to_string()),
    };
    let welcome = match protocol::decode::<ServiceMsg>(&first).map_err(|e| e.to_string())? {
        ServiceMsg::Welcome { version, display_name, user, .. } => {
            if version != protocol::VERSION {
                return Err(ProtocolError::Version { got: version }.to_string());
            }
            tracing::info!("connected to the Safe Data service as {user}");
            Welcome { display_name }
        }
        ServiceMsg::Refused { reason } => return Err(format!("the service refused this kernel: {reason}")),
        _ => return Err("the service did not answer the handshake".into()),
    };
    let (out, mut queue) = mpsc::unbounded_channel::<Vec<u8>>();
    let connection = Arc::new(Connection { out, pending: Mutex::new(HashMap::new()), next_id: AtomicU64::new(1), closed: Mutex::new(None) });
    {
        let connection = connection.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Some(frame) = queue.recv().await {
                if let Err(e) = write.write_all(&frame).await {
                    connection.close(format!("cannot write to the service: {e}"));
                    return;
                }
            }
        });
    }
    {
        let connection = connection.clone();
        tokio::spawn(async move {
            loop {
                let msg = match protocol::read_frame(&mut read, MAX_RESPONSE_BYTES).await.and_then(|f| protocol::decode::<ServiceMsg>(&f)) {
                    Ok(msg) => msg,
                    Err(ProtocolError::Closed) => {
                        connection.close("the service closed the connection".into());
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("dropping the connection to the service: {e}");
                        connection.close(format!("the service sent an invalid answer ({e})"));
                        return;
                    }
                };
                if !connection.route(msg) {
                    tracing::debug!("an answer to a request no longer waiting");
                }
            }
        });
    }
    Ok((connection, Welcome { display_name: welcome.display_name }))
}

impl Remote {
    /// A backend for the service at `socket`; connects on first use (see
    /// [`Remote::connect`]). `runtime` runs the connection's tasks.
    pub fn new(socket: PathBuf, runtime: tokio::runtime::Handle) -> Remote {
        Remote {
            socket,
            runtime,
            connection: Mutex::new(None),
            connecting: Mutex::new(()),
            display_name: Mutex::new(DEFAULT_DISPLAY_NAME.into()),
            interrupted_at: Mutex::new(None),
        }
    }

    /// Connects now (the kernel does at start, to show the service's name
    /// in its banner). Blocks up to [`CONNECT_TIMEOUT`]; call it off the
    /// runtime's threads.
    pub fn connect(&self) -> Result<(), String> {
        self.connection().map(|_| ())
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.connection.lock().unwrap_or_else(|p| p.into_inner()).as_ref().filter(|c| c.is_open()).cloned()
    }

    /// The open connection, or a new one.
    fn connection(&self) -> Result<Arc<Connection>, String> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let (tx, rx) = std_mpsc::channel();
        let socket = self.socket.clone();
        self.runtime.spawn(async move {
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, open(&socket)).await.unwrap_or_else(|_| Err("no answer in time".into()));
            let _ = tx.send(opened);
        });
        let (connection, welcome) = rx.recv_timeout(CONNECT_TIMEOUT + Duration::from_secs(1)).unwrap_or_else(|_| Err("no answer in time".into()))?;
        *self.display_name.lock().unwrap_or_else(|p| p.into_inner()) = welcome.display_name;
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    /// The error every cell gets while the service cannot be reached.
    fn unreachable(&self, reason: &str) -> CellError {
        CellError::plain(
            "ServiceUnavailable",
            format!("the Safe Data service is not reachable at {}: {reason}; ask the data owner to start it (safe-data serve)", self.socket.display()),
        )
    }

    /// Sends a request that has one answer and waits for it.
    fn ask(&self, make: impl FnOnce(u64) -> ClientMsg) -> Result<ServiceMsg, String> {
        let connection = self.connection()?;
        let (id, rx) = connection.request(make)?;
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(msg) => Ok(msg),
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                connection.forget(id);
                Err("the service did not answer in time".into())
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(connection.why_closed()),
        }
    }

    fn interrupted_long_ago(&self) -> bool {
        self.interrupted_at.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|at| at.elapsed() >= INTERRUPT_GRACE)
    }
}

/// A cell the parser would refuse for its length is cut just past the limit
/// before it is sent: the service refuses (and audits) it as too long, and
/// the request stays within [`MAX_REQUEST_BYTES`].
fn bounded_cell(code: &str) -> &str {
    if code.len() <= MAX_CELL_BYTES {
        return code;
    }
    let mut end = MAX_CELL_BYTES + 1;
    while !code.is_char_boundary(end) {
        end += 1;
    }
    &code[..end]
}

impl Backend for Remote {
    fn display_name(&self) -> String {
        self.display_name.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn execute(&self, cell: &Cell<'_>, emit: &mut dyn FnMut(Output)) -> Result<(), CellError> {
        *self.interrupted_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let connection = self.connection().map_err(|reason| self.unreachable(&reason))?;
        let code = bounded_cell(cell.code).to_string();
        let (_id, rx) = connection
            .request(|id| ClientMsg::Execute { id, code, silent: cell.silent, store_history: cell.store_history, execution_count: cell.execution_count })
            .map_err(|reason| self.unreachable(&reason))?;
        let lost =
            |why: String| CellError::plain("ServiceUnavailable", format!("the connection to the Safe Data service was lost ({why}); the cell did not finish"));
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ServiceMsg::Output { output, .. }) => emit(output),
                Ok(ServiceMsg::Done { result, .. }) => return result,
                Ok(ServiceMsg::Failed { message, .. }) => return Err(CellError::plain("ServiceError", message)),
                Ok(_) => {
                    connection.close("the service answered a cell with something else".into());
                    return Err(lost(connection.why_closed()));
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return Err(lost(connection.why_closed())),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    if self.interrupted_long_ago() {
                        // Closing the connection makes the service stop the cell.
                        connection.close("the service did not confirm the interrupt".into());
                        return Err(CellError::plain(
                            "Interrupted",
                            "the query was interrupted (the service did not confirm it in time; the next cell reconnects)",
                        ));
                    }
                }
            }
        }
    }

    fn complete(&self, code: &str, cursor: usize) -> Completion {
        let none = Completion { matches: vec![], start: cursor.min(code.len()), end: cursor.min(code.len()) };
        if code.len() > MAX_CELL_BYTES {
            return none;
        }
        match self.ask(|id| ClientMsg::Complete { id, code: code.to_string(), cursor }) {
            Ok(ServiceMsg::Completion { matches, start, end, .. }) => Completion { matches, start, end },
            Ok(_) => none,
            Err(e) => {
                tracing::debug!("completion unavailable: {e}");
                none
            }
        }
    }

    fn inspect(&self, code: &str, cursor: usize) -> Option<String> {
        if code.len() > MAX_CELL_BYTES {
            return None;
        }
        match self.ask(|id| ClientMsg::Inspect { id, code: code.to_string(), cursor }) {
            Ok(ServiceMsg::Inspection { text, .. }) => text,
            _ => None,
        }
    }

    fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryItem>, String> {
        if let HistoryQuery::Search { pattern, .. } = query
            && pattern.len() > MAX_CELL_BYTES
        {
            return Err("the search pattern is too long".into());
        }
        match self.ask(|id| ClientMsg::History { id, query: query.clone() }) {
            Ok(ServiceMsg::History { entries, .. }) => Ok(entries),
            Ok(ServiceMsg::Failed { message, .. }) => Err(message),
            Ok(_) => Err("the service answered with something else".into()),
            Err(e) => Err(format!("the Safe Data service is not reachable at {}: {e}", self.socket.display())),
        }
    }

    fn interrupt(&self) {
        *self.interrupted_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        if let Some(connection) = self.current()
            && let Ok(frame) = protocol::encode(&ClientMsg::Interrupt {}, MAX_REQUEST_BYTES)
        {
            let _ = connection.out.send(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlong_cells_are_cut_just_past_the_limit() {
        assert_eq!(bounded_cell("SELECT 1"), "SELECT 1");
        let long = "é".repeat(MAX_CELL_BYTES);
        let cut = bounded_cell(&long);
        assert!(cut.len() > MAX_CELL_BYTES && cut.len() <= MAX_CELL_BYTES + 2);
        assert!(safe_data_lang::parse::parse_cell(cut).is_err());
    }
}
