//! The framed protocol between a service-mode kernel and the data service,
//! and between the service and its worker processes.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON
//! (one message, serde). Each direction has a size cap, checked on the
//! length *before* anything is allocated for the body: a peer that claims a
//! huge frame is refused at once. A connection starts with
//! [`ClientMsg::Hello`]; the service answers [`ServiceMsg::Welcome`] (or
//! [`ServiceMsg::Refused`] with the reason: a version it does not speak, a
//! user it does not serve). Requests carry an `id` that their answers name.
//!
//! This module only moves bytes and types: it does not decide who may ask
//! what (that is [`super::server`]), and its errors never quote the bytes
//! they refuse (a malformed frame may hold anything).

use crate::kernel::backend::{CellError, HistoryItem, HistoryQuery, Output};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks. A peer with another version is
/// refused with a message naming both.
pub const VERSION: u32 = 1;

/// The largest frame a kernel may send the service. A cell is at most
/// [`safe_data_lang::parse::MAX_CELL_BYTES`]; in JSON every byte of it may
/// become a 6-byte escape (`\u0001`), plus room for the other fields.
pub const MAX_REQUEST_BYTES: usize = 6 * safe_data_lang::parse::MAX_CELL_BYTES + 64 * 1024;

/// The largest frame the service (or a worker) may send. Results are already
/// cut at the owner's `max_rows`; this bounds what a peer must buffer.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// The largest frame a worker sends: a little under [`MAX_RESPONSE_BYTES`],
/// so an output the service forwards (with its request id added) still fits.
pub const MAX_WORKER_FRAME_BYTES: usize = MAX_RESPONSE_BYTES - 4096;

/// Why a frame could not be read or written. The texts never contain the
/// frame's bytes.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer closed the connection between two frames.
    #[error("the connection was closed")]
    Closed,
    /// The peer closed the connection inside a frame.
    #[error("the connection ended inside a frame")]
    Truncated,
    /// A frame longer than the cap of its direction.
    #[error("a frame of {claimed} bytes is over the limit of {limit} bytes")]
    Oversized { claimed: usize, limit: usize },
    /// A frame that is not one of the expected messages.
    #[error("a frame is not a valid message ({0})")]
    Malformed(String),
    /// A peer speaking another version of the protocol.
    #[error("protocol version {got} is not supported: this side speaks version {VERSION}; install the same safe-data version for the service and the kernels")]
    Version { got: u32 },
    /// A valid message at the wrong moment (before the handshake, a second
    /// execute while one runs, an answer to nothing).
    #[error("unexpected message: {0}")]
    OutOfOrder(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What a kernel sends the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// The first frame of a connection.
    Hello { version: u32 },
    /// Run a cell. `execution_count` is the kernel's (stored in the history
    /// when `store_history`).
    Execute { id: u64, code: String, silent: bool, store_history: bool, execution_count: u64 },
    /// Completion at a byte offset.
    Complete { id: u64, code: String, cursor: usize },
    /// Inspection at a byte offset.
    Inspect { id: u64, code: String, cursor: usize },
    /// This user's history.
    History { id: u64, query: HistoryQuery },
    /// Stop the cell that runs on this connection (none: nothing happens).
    Interrupt {},
}

/// What the service sends a kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceMsg {
    /// The handshake's answer: the user the service identified from the
    /// socket's peer credentials (not from anything the kernel said).
    Welcome {
        version: u32,
        user: String,
        display_name: String,
        session: String,
    },
    /// The connection is refused; the service closes it after this frame.
    Refused {
        reason: String,
    },
    /// One released output of a running cell.
    Output {
        id: u64,
        output: Output,
    },
    /// The end of a cell.
    Done {
        id: u64,
        result: Result<(), CellError>,
    },
    Completion {
        id: u64,
        matches: Vec<String>,
        start: usize,
        end: usize,
    },
    Inspection {
        id: u64,
        text: Option<String>,
    },
    History {
        id: u64,
        entries: Vec<HistoryItem>,
    },
    /// A request that could not be served (the reason names no data).
    Failed {
        id: u64,
        message: String,
    },
}

/// What the service sends a worker process (on its standard input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToWorker {
    /// Run a cell for `user` (from the peer credentials of the connection).
    Run { user: String, session: String, code: String, silent: bool },
    /// The audit line the worker sent was written (`ok`) or not.
    AuditAck { ok: bool },
}

/// What a worker sends the service (on its standard output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromWorker {
    /// The catalog is loaded: the worker takes cells.
    Ready {},
    /// An audit line to append; the worker waits for [`ToWorker::AuditAck`]
    /// before it releases the statement's result.
    Audit {
        entry: AuditRecord,
    },
    Output {
        output: Output,
    },
    Done {
        result: Result<(), CellError>,
    },
}

/// One audit line on its way from a worker to the service, which alone
/// appends to the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub time: String,
    pub user: String,
    pub session: String,
    pub statement: String,
    pub plan_hash: Option<String>,
    pub verdict: Verdict,
    pub rule: Option<String>,
    pub rows_released: usize,
}

/// [`safe_data_policy::release::Verdict`], as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Released,
    PartlySuppressed,
    Refused,
}

impl From<&safe_data_policy::audit::Entry> for AuditRecord {
    fn from(e: &safe_data_policy::audit::Entry) -> AuditRecord {
        use safe_data_policy::release::Verdict as V;
        AuditRecord {
            time: e.time.clone(),
            user: e.user.clone(),
            session: e.session.clone(),
            statement: e.statement.clone(),
            plan_hash: e.plan_hash.clone(),
            verdict: match e.verdict {
                V::Released => Verdict::Released,
                V::PartlySuppressed => Verdict::PartlySuppressed,
                V::Refused => Verdict::Refused,
            },
            rule: e.rule.clone(),
            rows_released: e.rows_released,
        }
    }
}

impl From<AuditRecord> for safe_data_policy::audit::Entry {
    fn from(r: AuditRecord) -> safe_data_policy::audit::Entry {
        use safe_data_policy::release::Verdict as V;
        safe_data_policy::audit::Entry {
            time: r.time,
            user: r.user,
            session: r.session,
            statement: r.statement,
            plan_hash: r.plan_hash,
            verdict: match r.verdict {
                Verdict::Released => V::Released,
                Verdict::PartlySuppressed => V::PartlySuppressed,
                Verdict::Refused => V::Refused,
            },
            rule: r.rule,
            rows_released: r.rows_released,
        }
    }
}

/// The handshake's first frame, read leniently: a newer kernel's `Hello`
/// may carry fields this version does not know, and must still get a clear
/// "wrong version" answer rather than "malformed".
#[derive(Debug, Deserialize)]
struct AnyHello {
    #[serde(rename = "type")]
    kind: String,
    version: Option<u32>,
}

/// Reads the version of a `Hello` frame; any other message is out of order.
pub fn hello_version(frame: &[u8]) -> Result<u32, ProtocolError> {
    let hello: AnyHello = serde_json::from_slice(frame).map_err(malformed)?;
    if hello.kind != "hello" {
        return Err(ProtocolError::OutOfOrder("the first message of a connection must be hello"));
    }
    hello.version.ok_or_else(|| ProtocolError::Malformed("a hello without a version".into()))
}

/// A serde error described by its category and position only: serde_json's
/// own texts quote the input (`invalid type: string "…"`).
fn malformed(e: serde_json::Error) -> ProtocolError {
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "not a known message",
        serde_json::error::Category::Eof => "incomplete JSON",
    };
    ProtocolError::Malformed(format!("{what} at line {} column {}", e.line(), e.column()))
}

/// One message as a frame (length prefix included), refused if over `limit`.
pub fn encode<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, msg).map_err(|e| ProtocolError::Io(std::io::Error::other(e.to_string())))?;
    let len = frame.len() - 4;
    if len > limit {
        return Err(ProtocolError::Oversized { claimed: len, limit });
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Decodes a frame's body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(malformed)
}

/// Checks a frame's claimed length against `limit` before anything is allocated.
fn checked_len(header: [u8; 4], limit: usize) -> Result<usize, ProtocolError> {
    let claimed = u32::from_be_bytes(header) as usize;
    if claimed > limit {
        return Err(ProtocolError::Oversized { claimed, limit });
    }
    Ok(claimed)
}

/// Reads one frame's body. A clean end of stream before the header is
/// [`ProtocolError::Closed`]; an end inside it is [`ProtocolError::Truncated`].
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]).await? {
            0 if got == 0 => return Err(ProtocolError::Closed),
            0 => return Err(ProtocolError::Truncated),
            n => got += n,
        }
    }
    let len = checked_len(header, limit)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { ProtocolError::Truncated } else { e.into() })?;
    Ok(body)
}

/// [`read_frame`] on a blocking reader (a worker's standard input).
pub fn read_frame_blocking<R: Read>(r: &mut R, limit: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(ProtocolError::Closed),
            Ok(0) => return Err(ProtocolError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = checked_len(header, limit)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { ProtocolError::Truncated } else { e.into() })?;
    Ok(body)
}

/// Encodes and writes one message.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T, limit: usize) -> Result<(), ProtocolError> {
    let frame = encode(msg, limit)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// [`write_msg`] on a blocking writer (a worker's standard output).
pub fn write_msg_blocking<W: Write, T: Serialize>(w: &mut W, msg: &T, limit: usize) -> Result<(), ProtocolError> {
    let frame = encode(msg, limit)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::backend::{Bundle, OutputKind};

    fn samples_client() -> Vec<ClientMsg> {
        vec![
            ClientMsg::Hello { version: VERSION },
            ClientMsg::Execute { id: 7, code: "SELECT 'é\u{1}\"';".into(), silent: false, store_history: true, execution_count: 3 },
            ClientMsg::Complete { id: 8, code: "SEL".into(), cursor: 3 },
            ClientMsg::Inspect { id: 9, code: "patients".into(), cursor: 2 },
            ClientMsg::History { id: 10, query: HistoryQuery::Search { pattern: "SELECT*".into(), n: Some(5), unique: true } },
            ClientMsg::History { id: 11, query: HistoryQuery::Range { session: -1, start: 1, stop: None } },
            ClientMsg::Interrupt {},
        ]
    }

    fn samples_service() -> Vec<ServiceMsg> {
        vec![
            ServiceMsg::Welcome { version: VERSION, user: "alice".into(), display_name: "Hospital".into(), session: "s".into() },
            ServiceMsg::Refused { reason: "no".into() },
            ServiceMsg::Output {
                id: 1,
                output: Output { kind: OutputKind::Result, data: serde_json::from_value::<Bundle>(serde_json::json!({"text/plain": "x"})).unwrap() },
            },
            ServiceMsg::Done { id: 1, result: Ok(()) },
            ServiceMsg::Done { id: 2, result: Err(CellError { ename: "PolicyRefusal".into(), evalue: "no".into(), traceback: vec!["a".into()] }) },
            ServiceMsg::Completion { id: 3, matches: vec!["SELECT".into()], start: 0, end: 3 },
            ServiceMsg::Inspection { id: 4, text: None },
            ServiceMsg::History { id: 5, entries: vec![HistoryItem { session: 1, line: 2, source: "SHOW TABLES;".into() }] },
            ServiceMsg::Failed { id: 6, message: "m".into() },
        ]
    }

    fn split(frame: &[u8]) -> &[u8] {
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples_client() {
            let frame = encode(&m, MAX_REQUEST_BYTES).unwrap();
            assert_eq!(decode::<ClientMsg>(split(&frame)).unwrap(), m);
            let mut r = &frame[..];
            assert_eq!(decode::<ClientMsg>(&read_frame_blocking(&mut r, MAX_REQUEST_BYTES).unwrap()).unwrap(), m);
        }
        for m in samples_service() {
            let frame = encode(&m, MAX_RESPONSE_BYTES).unwrap();
            assert_eq!(decode::<ServiceMsg>(split(&frame)).unwrap(), m);
        }
        let worker = [
            FromWorker::Ready {},
            FromWorker::Audit {
                entry: AuditRecord {
                    time: "t".into(),
                    user: "u".into(),
                    session: "s".into(),
                    statement: "SELECT 1".into(),
                    plan_hash: None,
                    verdict: Verdict::PartlySuppressed,
                    rule: Some("min_group_size".into()),
                    rows_released: 2,
                },
            },
            FromWorker::Done { result: Ok(()) },
        ];
        for m in worker {
            assert_eq!(decode::<FromWorker>(split(&encode(&m, MAX_RESPONSE_BYTES).unwrap())).unwrap(), m);
        }
        for m in [ToWorker::Run { user: "u".into(), session: "s".into(), code: "c".into(), silent: true }, ToWorker::AuditAck { ok: false }] {
            assert_eq!(decode::<ToWorker>(split(&encode(&m, MAX_REQUEST_BYTES).unwrap())).unwrap(), m);
        }
    }

    #[test]
    fn audit_records_keep_every_field() {
        let entry = safe_data_policy::audit::Entry {
            time: "2026-01-01T00:00:00.000000Z".into(),
            user: "alice".into(),
            session: "s".into(),
            statement: "SELECT 1".into(),
            plan_hash: Some("ab".into()),
            verdict: safe_data_policy::release::Verdict::PartlySuppressed,
            rule: Some("r".into()),
            rows_released: 4,
        };
        let back: safe_data_policy::audit::Entry = AuditRecord::from(&entry).into();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&entry).unwrap());
    }

    #[test]
    fn a_cell_of_any_accepted_size_fits_a_request() {
        // Every byte a 6-byte escape: the worst case for the largest cell the parser takes.
        let code = "\u{1}".repeat(safe_data_lang::parse::MAX_CELL_BYTES);
        let m = ClientMsg::Execute { id: u64::MAX, code, silent: false, store_history: true, execution_count: u64::MAX };
        assert!(encode(&m, MAX_REQUEST_BYTES).is_ok());
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        // The header claims 4 GiB and nothing follows: refused on the claim.
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame_blocking(&mut r, MAX_REQUEST_BYTES), Err(ProtocolError::Oversized { claimed: 0xffff_ffff, .. })));
        let mut r: &[u8] = &((MAX_REQUEST_BYTES + 1) as u32).to_be_bytes();
        assert!(matches!(read_frame_blocking(&mut r, MAX_REQUEST_BYTES), Err(ProtocolError::Oversized { .. })));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut r: &[u8] = &[0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(rt.block_on(read_frame(&mut r, MAX_RESPONSE_BYTES)), Err(ProtocolError::Oversized { .. })));
        // And a message that would not fit is never sent.
        let big = ServiceMsg::Failed { id: 1, message: "x".repeat(100) };
        assert!(matches!(encode(&big, 50), Err(ProtocolError::Oversized { .. })));
    }

    #[test]
    fn truncated_frames_are_told_apart_from_a_clean_close() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let frame = encode(&ClientMsg::Interrupt {}, MAX_REQUEST_BYTES).unwrap();
        let mut empty: &[u8] = &[];
        assert!(matches!(read_frame_blocking(&mut empty, MAX_REQUEST_BYTES), Err(ProtocolError::Closed)));
        for cut in 1..frame.len() {
            let mut r = &frame[..cut];
            assert!(matches!(read_frame_blocking(&mut r, MAX_REQUEST_BYTES), Err(ProtocolError::Truncated)), "cut at {cut}");
            let mut r = &frame[..cut];
            assert!(matches!(rt.block_on(read_frame(&mut r, MAX_REQUEST_BYTES)), Err(ProtocolError::Truncated)), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_malformed_and_never_quoted() {
        let secret = "patient 4711 has HIV";
        for body in [
            b"not json at all".to_vec(),
            vec![0xff, 0xfe, 0x00],
            Vec::new(),
            br#"{"type":"execute"}"#.to_vec(),
            format!(r#"{{"type":"{secret}"}}"#).into_bytes(),
            format!(r#"{{"type":"interrupt","extra":"{secret}"}}"#).into_bytes(),
            format!(r#"{{"type":"complete","id":"{secret}","code":"","cursor":0}}"#).into_bytes(),
        ] {
            let err = decode::<ClientMsg>(&body).unwrap_err();
            assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");
            assert!(!err.to_string().contains("patient"), "{err}");
        }
    }

    #[test]
    fn wrong_versions_and_wrong_first_messages_are_named() {
        let newer = br#"{"type":"hello","version":99,"feature":"from the future"}"#;
        assert_eq!(hello_version(newer).unwrap(), 99);
        let text = ProtocolError::Version { got: 99 }.to_string();
        assert!(text.contains("99") && text.contains(&VERSION.to_string()), "{text}");
        let frame = encode(&ClientMsg::Hello { version: VERSION }, MAX_REQUEST_BYTES).unwrap();
        assert_eq!(hello_version(split(&frame)).unwrap(), VERSION);
        let not_hello = encode(&ClientMsg::Interrupt {}, MAX_REQUEST_BYTES).unwrap();
        assert!(matches!(hello_version(split(&not_hello)), Err(ProtocolError::OutOfOrder(_))));
        assert!(matches!(hello_version(br#"{"type":"hello"}"#), Err(ProtocolError::Malformed(_))));
        assert!(matches!(hello_version(b"\x00garbage"), Err(ProtocolError::Malformed(_))));
        let exec = br#"{"type":"execute","version":1}"#;
        assert!(matches!(hello_version(exec), Err(ProtocolError::OutOfOrder(_))));
    }
}
