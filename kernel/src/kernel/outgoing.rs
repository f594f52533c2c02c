//! Everything the kernel sends to a client, as a closed set of typed
//! messages ([`Iopub`] on the iopub socket, [`Reply`] on shell and
//! control), and the one place they become Jupyter JSON and signed frames
//! ([`Shared::publish`], [`Shared::reply`]).
//!
//! Data reaches a client only in [`Iopub::ExecuteResult`] and
//! [`Iopub::DisplayData`], as a [`Bundle`]: rendered from a policy
//! `Released` on the side that holds the policy, never built here. An
//! error is a [`CellError`] (texts from the dialect's and the policy's
//! errors). Everything else is the kernel's own protocol: states, counts,
//! completions, history, elapsed times.
//!
//! The queues to the sockets' tasks ([`Wire`]'s iopub queue, [`Replies`])
//! have private fields: no other module can put frames in them, so what is
//! not one of these variants cannot be sent.
//!
//! Contents are jupyter-protocol's structs where they give the bytes the
//! kernel always sent; the rest are written here: a bundle is sent as
//! rendered (jupyter-protocol's `Media` would re-encode a data resource),
//! `execute_result` has no `transient`, `is_complete_reply` has `indent`
//! only when incomplete, and a history entry with output is `[input, null]`.

use super::backend::{Bundle, CellError, HistoryItem};
use super::incoming::BadContent;
use super::{Frames, Shared};
use crate::render;
use crate::wire::{self, Signer, WireError};
use bytes::Bytes;
use jupyter_protocol as jp;
use safe_data_lang::services::Completeness;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::time::Duration;
use tokio::sync::mpsc;

/// The kernel's execution state (`status` on iopub).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Starting,
    Busy,
    Idle,
}

/// A message on iopub.
#[derive(Debug)]
pub(super) enum Iopub<'a> {
    Status(State),
    /// The code of an execution, re-broadcast with its count.
    ExecuteInput {
        code: &'a str,
        execution_count: u64,
    },
    /// The cell's result: the first output of its last statement.
    ExecuteResult {
        execution_count: u64,
        data: &'a Bundle,
    },
    /// Any other output of a cell.
    DisplayData(&'a Bundle),
    /// The progress display of a long cell: the kernel's own text, an elapsed time.
    Progress {
        display_id: &'a str,
        update: bool,
        state: Progress,
    },
    /// Why a cell failed.
    Error(&'a CellError),
    /// The kernel has no comm targets: an opened comm is closed at once.
    CommClose(&'a jp::CommId),
}

/// Where a long cell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    Running(Duration),
    Finished(Duration),
    Stopped(Duration),
}

/// A reply on shell or control.
#[derive(Debug)]
pub(super) enum Reply<'a> {
    KernelInfo {
        display_name: &'a str,
    },
    Execute {
        execution_count: u64,
        outcome: Executed<'a>,
    },
    /// Cursor positions in characters.
    Complete {
        matches: Vec<String>,
        cursor_start: usize,
        cursor_end: usize,
    },
    /// The inspection text, if any.
    Inspect(Option<String>),
    History {
        entries: Result<Vec<HistoryItem>, String>,
        output: bool,
    },
    IsComplete(IsComplete),
    CommInfo,
    Interrupt,
    Shutdown {
        restart: bool,
    },
    /// An error reply (`<prefix>_reply` to `<prefix>_request`).
    Refused {
        request_type: &'a str,
        why: Refusal<'a>,
    },
}

/// How an execution ended.
#[derive(Debug)]
pub(super) enum Executed<'a> {
    Ok,
    /// Not run: an earlier execution failed with `stop_on_error`.
    Aborted,
    Failed(&'a CellError),
}

/// An `is_complete_reply`'s status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IsComplete {
    Complete,
    /// With the indent of the next line.
    Incomplete(String),
    Invalid,
    /// The request could not be read (the protocol has no error status here).
    Unknown,
}

impl From<Completeness> for IsComplete {
    fn from(c: Completeness) -> IsComplete {
        match c {
            Completeness::Complete => IsComplete::Complete,
            Completeness::Incomplete(indent) => IsComplete::Incomplete(indent),
            Completeness::Invalid => IsComplete::Invalid,
        }
    }
}

/// Why a request is answered with an error.
#[derive(Debug)]
pub(super) enum Refusal<'a> {
    UnknownMessageType,
    /// `execute_request` anywhere but on shell.
    WrongChannel,
    /// A frame is not a JSON object.
    UnreadableFrame(&'a WireError),
    /// The content does not decode as its message type.
    UnreadableContent(&'a BadContent),
}

/// The kernel's end of the wire: the connection key, the session, and the
/// queue of the iopub socket's task. Only this module sends through it.
pub(super) struct Wire {
    signer: Signer,
    session: String,
    iopub: mpsc::UnboundedSender<Frames>,
}

impl Wire {
    pub(super) fn new(signer: Signer, session: String, iopub: mpsc::UnboundedSender<Frames>) -> Wire {
        Wire { signer, session, iopub }
    }

    /// The key, to verify requests with.
    pub(super) fn signer(&self) -> &Signer {
        &self.signer
    }
}

/// The queue of one router socket's sending task: only this module puts
/// frames in it.
#[derive(Clone)]
pub(super) struct Replies(mpsc::UnboundedSender<Frames>);

impl Replies {
    pub(super) fn new(queue: mpsc::UnboundedSender<Frames>) -> Replies {
        Replies(queue)
    }
}

impl Shared {
    /// Publishes a message on iopub.
    pub(super) fn publish(&self, parent: &Value, msg: Iopub<'_>) {
        let (msg_type, content) = msg.encode();
        let wire = &self.wire;
        let header = wire::header(msg_type, &wire.session);
        let topic = Bytes::from(format!("kernel.{}.{msg_type}", wire.session));
        let frames = wire::encode(&[topic], &header, parent, &json!({}), &content, &wire.signer);
        let _ = wire.iopub.send(frames);
    }

    pub(super) fn status(&self, parent: &Value, state: State) {
        self.publish(parent, Iopub::Status(state));
    }

    /// Answers the request with header `parent`, to the peer `identities`.
    pub(super) fn reply(&self, identities: &[Bytes], parent: &Value, out: &Replies, reply: Reply<'_>) {
        let (msg_type, content) = reply.encode();
        let header = wire::header(&msg_type, &self.wire.session);
        let frames = wire::encode(identities, &header, parent, &json!({}), &content, &self.wire.signer);
        let _ = out.0.send(frames);
    }
}

fn content(value: impl Serialize) -> Value {
    // Serializing these structs (strings, numbers, maps with string keys) cannot fail.
    serde_json::to_value(value).unwrap_or_else(|_| json!({}))
}

fn reply_error(ename: &str, evalue: String, traceback: &[String]) -> Option<Box<jp::ReplyError>> {
    Some(Box::new(jp::ReplyError { ename: ename.to_string(), evalue, traceback: traceback.to_vec() }))
}

impl Iopub<'_> {
    fn encode(&self) -> (&'static str, Value) {
        match self {
            Iopub::Status(state) => {
                let execution_state = match state {
                    State::Starting => jp::ExecutionState::Starting,
                    State::Busy => jp::ExecutionState::Busy,
                    State::Idle => jp::ExecutionState::Idle,
                };
                ("status", content(jp::Status { execution_state }))
            }
            Iopub::ExecuteInput { code, execution_count } => {
                ("execute_input", content(jp::ExecuteInput { code: code.to_string(), execution_count: count(*execution_count) }))
            }
            Iopub::ExecuteResult { execution_count, data } => {
                #[derive(Serialize)]
                struct ExecuteResult<'a> {
                    execution_count: u64,
                    data: &'a Value,
                    metadata: Map<String, Value>,
                }
                ("execute_result", content(ExecuteResult { execution_count: *execution_count, data: data.data(), metadata: Map::new() }))
            }
            Iopub::DisplayData(data) => {
                #[derive(Serialize)]
                struct DisplayData<'a> {
                    data: &'a Value,
                    metadata: Map<String, Value>,
                    transient: Map<String, Value>,
                }
                ("display_data", content(DisplayData { data: data.data(), metadata: Map::new(), transient: Map::new() }))
            }
            Iopub::Progress { display_id, update, state } => {
                let data = progress_bundle(*state);
                let transient = jp::Transient { display_id: Some(display_id.to_string()) };
                if *update {
                    ("update_display_data", content(jp::UpdateDisplayData { data, metadata: Map::new(), transient }))
                } else {
                    ("display_data", content(jp::DisplayData { data, metadata: Map::new(), transient: Some(transient) }))
                }
            }
            Iopub::Error(e) => ("error", content(jp::ErrorOutput { ename: e.ename.clone(), evalue: e.evalue.clone(), traceback: e.traceback.clone() })),
            Iopub::CommClose(comm_id) => ("comm_close", content(jp::CommClose { comm_id: (*comm_id).clone(), data: Map::new() })),
        }
    }
}

fn count(n: u64) -> jp::ExecutionCount {
    jp::ExecutionCount::new(usize::try_from(n).unwrap_or(usize::MAX))
}

/// The progress display's text and HTML.
fn progress_bundle(state: Progress) -> jp::Media {
    let (text, running) = match state {
        Progress::Running(d) => (format!("Running for {} — the stop button (■) interrupts it", elapsed(d)), true),
        Progress::Finished(d) => (format!("Finished after {}", elapsed(d)), false),
        Progress::Stopped(d) => (format!("Stopped after {}", elapsed(d)), false),
    };
    let class = if running { "sd-progress sd-running" } else { "sd-progress" };
    let html = format!("{}<div class=\"{class}\">{}</div>", render::PROGRESS_STYLE, render::escape(&text));
    jp::Media::new(vec![jp::MediaType::Plain(text), jp::MediaType::Html(html)])
}

fn elapsed(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1} s") } else { format!("{} min {:02} s", d.as_secs() / 60, d.as_secs() % 60) }
}

impl Reply<'_> {
    fn encode(&self) -> (Cow<'static, str>, Value) {
        let (msg_type, content) = match self {
            Reply::KernelInfo { display_name } => ("kernel_info_reply", content(kernel_info(display_name))),
            Reply::Execute { execution_count, outcome } => {
                let (status, error) = match outcome {
                    Executed::Ok => (jp::ReplyStatus::Ok, None),
                    Executed::Aborted => (jp::ReplyStatus::Aborted, None),
                    Executed::Failed(e) => (jp::ReplyStatus::Error, reply_error(&e.ename, e.evalue.clone(), &e.traceback)),
                };
                let reply =
                    jp::ExecuteReply { status, execution_count: count(*execution_count), payload: vec![], user_expressions: Some(Default::default()), error };
                ("execute_reply", content(reply))
            }
            Reply::Complete { matches, cursor_start, cursor_end } => {
                let reply = jp::CompleteReply {
                    matches: matches.clone(),
                    cursor_start: *cursor_start,
                    cursor_end: *cursor_end,
                    metadata: Map::new(),
                    status: jp::ReplyStatus::Ok,
                    error: None,
                };
                ("complete_reply", content(reply))
            }
            Reply::Inspect(text) => {
                let data = jp::Media::new(text.iter().map(|t| jp::MediaType::Plain(t.clone())).collect());
                let reply = jp::InspectReply { found: text.is_some(), data, metadata: Map::new(), status: jp::ReplyStatus::Ok, error: None };
                ("inspect_reply", content(reply))
            }
            Reply::History { entries, output } => ("history_reply", history(entries, *output)),
            Reply::IsComplete(state) => {
                let content = match state {
                    IsComplete::Complete => json!({"status": "complete"}),
                    IsComplete::Incomplete(indent) => json!({"status": "incomplete", "indent": indent}),
                    IsComplete::Invalid => json!({"status": "invalid"}),
                    IsComplete::Unknown => json!({"status": "unknown"}),
                };
                ("is_complete_reply", content)
            }
            Reply::CommInfo => ("comm_info_reply", content(jp::CommInfoReply::default())),
            Reply::Interrupt => ("interrupt_reply", content(jp::InterruptReply::new())),
            Reply::Shutdown { restart } => ("shutdown_reply", content(jp::ShutdownReply { restart: *restart, status: jp::ReplyStatus::Ok, error: None })),
            Reply::Refused { request_type, why } => {
                let (ename, evalue) = match why {
                    Refusal::UnknownMessageType => ("UnknownMessageType", format!("Safe Data does not handle `{request_type}`")),
                    Refusal::WrongChannel => ("WrongChannel", "execute_request must be sent on the shell channel".to_string()),
                    Refusal::UnreadableFrame(e) => ("BadMessage", format!("the request could not be read: {e}")),
                    Refusal::UnreadableContent(e) => ("BadMessage", format!("the request could not be read: {e}")),
                };
                let prefix = request_type.strip_suffix("_request").unwrap_or(request_type);
                let content = json!({"status": "error", "ename": ename, "evalue": evalue, "traceback": []});
                return (Cow::Owned(format!("{prefix}_reply")), content);
            }
        };
        (Cow::Borrowed(msg_type), content)
    }
}

fn history(entries: &Result<Vec<HistoryItem>, String>, output: bool) -> Value {
    /// IPython's `(session, line, input)`, or `(session, line, (input, output))`:
    /// Safe Data keeps no outputs.
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Entry<'a> {
        Input(u64, u64, &'a str),
        InputOutput(u64, u64, (&'a str, Option<&'a str>)),
    }
    #[derive(Serialize)]
    struct HistoryReply<'a> {
        status: jp::ReplyStatus,
        history: Vec<Entry<'a>>,
    }
    match entries {
        Ok(entries) => {
            let history = entries
                .iter()
                .map(|e| if output { Entry::InputOutput(e.session, e.line, (&e.source, None)) } else { Entry::Input(e.session, e.line, &e.source) })
                .collect();
            content(HistoryReply { status: jp::ReplyStatus::Ok, history })
        }
        Err(message) => content(jp::HistoryReply { history: vec![], status: jp::ReplyStatus::Error, error: reply_error("HistoryError", message.clone(), &[]) }),
    }
}

fn kernel_info(display_name: &str) -> jp::KernelInfoReply {
    jp::KernelInfoReply {
        status: jp::ReplyStatus::Ok,
        protocol_version: wire::PROTOCOL_VERSION.into(),
        implementation: "safe-data".into(),
        implementation_version: env!("CARGO_PKG_VERSION").into(),
        language_info: jp::LanguageInfo {
            name: "sql".into(),
            version: "safe-sql-1".into(),
            mimetype: Some("text/x-sql".into()),
            file_extension: Some(".sql".into()),
            pygments_lexer: Some("sql".into()),
            codemirror_mode: Some(jp::CodeMirrorMode::Simple("sql".into())),
            nbconvert_exporter: Some("script".into()),
        },
        banner: format!(
            "Safe Data {} — {}\nSQL over protected data: results are released only as aggregates that pass the owner's policy.\nStart with SHOW TABLES; and DESCRIBE <table>;",
            env!("CARGO_PKG_VERSION"),
            display_name
        ),
        // No public documentation site yet: the banner and inspect (shift-tab) document the dialect.
        help_links: vec![],
        debugger: false,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = v.as_object().expect("an object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    fn bundle() -> Bundle {
        serde_json::from_value(json!({"text/plain": "n\n-\n1", "application/vnd.dataresource+json": {"schema": {"fields": []}, "data": [{"n": 1}]}})).unwrap()
    }

    #[test]
    fn iopub_messages_encode_as_jupyter_expects() {
        for (state, text) in [(State::Starting, "starting"), (State::Busy, "busy"), (State::Idle, "idle")] {
            assert_eq!(Iopub::Status(state).encode(), ("status", json!({"execution_state": text})));
        }
        assert_eq!(
            Iopub::ExecuteInput { code: "SELECT 1;", execution_count: 3 }.encode(),
            ("execute_input", json!({"code": "SELECT 1;", "execution_count": 3}))
        );
        let data = bundle();
        // The bundle is sent as rendered, byte for byte; no `transient` on a result.
        assert_eq!(
            Iopub::ExecuteResult { execution_count: 4, data: &data }.encode(),
            ("execute_result", json!({"execution_count": 4, "data": data.data(), "metadata": {}}))
        );
        assert_eq!(Iopub::DisplayData(&data).encode(), ("display_data", json!({"data": data.data(), "metadata": {}, "transient": {}})));
        let e = CellError::plain("PolicyRefusal", "too few people");
        assert_eq!(
            Iopub::Error(&e).encode(),
            ("error", json!({"ename": "PolicyRefusal", "evalue": "too few people", "traceback": ["PolicyRefusal: too few people"]}))
        );
        let id = jp::CommId("c-1".into());
        assert_eq!(Iopub::CommClose(&id).encode(), ("comm_close", json!({"comm_id": "c-1", "data": {}})));
    }

    #[test]
    fn the_progress_display_is_a_display_then_updates() {
        let (msg_type, c) = Iopub::Progress { display_id: "d1", update: false, state: Progress::Running(Duration::from_millis(1500)) }.encode();
        assert_eq!(msg_type, "display_data");
        assert_eq!(keys(&c), ["data", "metadata", "transient"]);
        assert_eq!(c["transient"], json!({"display_id": "d1"}));
        assert_eq!(c["data"]["text/plain"], "Running for 1.5 s — the stop button (■) interrupts it");
        let html = c["data"]["text/html"].as_str().unwrap();
        assert!(
            html.starts_with(render::PROGRESS_STYLE)
                && html.ends_with("<div class=\"sd-progress sd-running\">Running for 1.5 s — the stop button (■) interrupts it</div>"),
            "{html}"
        );
        let (msg_type, c) = Iopub::Progress { display_id: "d1", update: true, state: Progress::Stopped(Duration::from_secs(125)) }.encode();
        assert_eq!(msg_type, "update_display_data");
        assert_eq!(keys(&c), ["data", "metadata", "transient"]);
        assert_eq!(c["data"]["text/plain"], "Stopped after 2 min 05 s");
        assert!(c["data"]["text/html"].as_str().unwrap().ends_with("<div class=\"sd-progress\">Stopped after 2 min 05 s</div>"));
        let (_, c) = Iopub::Progress { display_id: "d1", update: true, state: Progress::Finished(Duration::from_secs(2)) }.encode();
        assert_eq!(c["data"]["text/plain"], "Finished after 2.0 s");
    }

    fn encoded(reply: Reply<'_>) -> (String, Value) {
        let (t, c) = reply.encode();
        (t.into_owned(), c)
    }

    #[test]
    fn execute_replies() {
        let ok = encoded(Reply::Execute { execution_count: 2, outcome: Executed::Ok });
        assert_eq!(ok, ("execute_reply".into(), json!({"status": "ok", "execution_count": 2, "payload": [], "user_expressions": {}})));
        let aborted = encoded(Reply::Execute { execution_count: 2, outcome: Executed::Aborted });
        assert_eq!(aborted.1, json!({"status": "aborted", "execution_count": 2, "payload": [], "user_expressions": {}}));
        let e = CellError::plain("NameError", "unknown column");
        let failed = encoded(Reply::Execute { execution_count: 5, outcome: Executed::Failed(&e) });
        assert_eq!(
            failed.1,
            json!({"status": "error", "execution_count": 5, "payload": [], "user_expressions": {},
                   "ename": "NameError", "evalue": "unknown column", "traceback": ["NameError: unknown column"]})
        );
    }

    #[test]
    fn the_other_replies() {
        let (t, c) = encoded(Reply::KernelInfo { display_name: "Demo" });
        assert_eq!(t, "kernel_info_reply");
        assert_eq!(keys(&c), ["banner", "debugger", "help_links", "implementation", "implementation_version", "language_info", "protocol_version", "status"]);
        assert_eq!((c["status"].as_str(), c["protocol_version"].as_str(), c["implementation"].as_str()), (Some("ok"), Some("5.3"), Some("safe-data")));
        assert_eq!(c["language_info"]["name"], "sql");
        assert_eq!(c["language_info"]["file_extension"], ".sql");
        assert!(c["banner"].as_str().unwrap().contains("Demo"));

        let complete = encoded(Reply::Complete { matches: vec!["age".into()], cursor_start: 1, cursor_end: 3 });
        assert_eq!(complete, ("complete_reply".into(), json!({"status": "ok", "matches": ["age"], "cursor_start": 1, "cursor_end": 3, "metadata": {}})));

        let found = encoded(Reply::Inspect(Some("a column".into())));
        assert_eq!(found, ("inspect_reply".into(), json!({"status": "ok", "found": true, "data": {"text/plain": "a column"}, "metadata": {}})));
        assert_eq!(encoded(Reply::Inspect(None)).1, json!({"status": "ok", "found": false, "data": {}, "metadata": {}}));

        let items = vec![HistoryItem { session: 1, line: 2, source: "SELECT 1;".into() }];
        let plain = encoded(Reply::History { entries: Ok(items.clone()), output: false });
        assert_eq!(plain, ("history_reply".into(), json!({"status": "ok", "history": [[1, 2, "SELECT 1;"]]})));
        assert_eq!(encoded(Reply::History { entries: Ok(items), output: true }).1, json!({"status": "ok", "history": [[1, 2, ["SELECT 1;", null]]]}));
        assert_eq!(
            encoded(Reply::History { entries: Err("not reachable".into()), output: false }).1,
            json!({"status": "error", "ename": "HistoryError", "evalue": "not reachable", "traceback": [], "history": []})
        );

        assert_eq!(encoded(Reply::IsComplete(IsComplete::Complete)), ("is_complete_reply".into(), json!({"status": "complete"})));
        assert_eq!(encoded(Reply::IsComplete(Completeness::Incomplete("  ".into()).into())).1, json!({"status": "incomplete", "indent": "  "}));
        assert_eq!(encoded(Reply::IsComplete(IsComplete::Invalid)).1, json!({"status": "invalid"}));
        assert_eq!(encoded(Reply::IsComplete(IsComplete::Unknown)).1, json!({"status": "unknown"}));

        assert_eq!(encoded(Reply::CommInfo), ("comm_info_reply".into(), json!({"status": "ok", "comms": {}})));
        assert_eq!(encoded(Reply::Interrupt), ("interrupt_reply".into(), json!({"status": "ok"})));
        assert_eq!(encoded(Reply::Shutdown { restart: true }), ("shutdown_reply".into(), json!({"status": "ok", "restart": true})));
        assert_eq!(encoded(Reply::Shutdown { restart: false }).1, json!({"status": "ok", "restart": false}));
    }

    #[test]
    fn refusals_answer_the_request_type_with_an_error() {
        let (t, c) = encoded(Reply::Refused { request_type: "debug_request", why: Refusal::UnknownMessageType });
        assert_eq!(
            (t.as_str(), c),
            ("debug_reply", json!({"status": "error", "ename": "UnknownMessageType", "evalue": "Safe Data does not handle `debug_request`", "traceback": []}))
        );
        let (t, c) = encoded(Reply::Refused { request_type: "execute_request", why: Refusal::WrongChannel });
        assert_eq!((t.as_str(), c["ename"].as_str()), ("execute_reply", Some("WrongChannel")));
        let (t, c) = encoded(Reply::Refused { request_type: "complete_request", why: Refusal::UnreadableFrame(&WireError::BadJson("content")) });
        assert_eq!(
            (t.as_str(), c["ename"].as_str(), c["evalue"].as_str()),
            ("complete_reply", Some("BadMessage"), Some("the request could not be read: frame content is not valid JSON"))
        );
        let bad = BadContent::Field("cursor_pos".into());
        let (t, c) = encoded(Reply::Refused { request_type: "inspect_request", why: Refusal::UnreadableContent(&bad) });
        assert_eq!(
            (t.as_str(), c),
            (
                "inspect_reply",
                json!({"status": "error", "ename": "BadMessage", "evalue": "the request could not be read: field `cursor_pos` has the wrong type or value", "traceback": []})
            )
        );
        assert_eq!(encoded(Reply::Refused { request_type: "_request", why: Refusal::UnknownMessageType }).0, "_reply");
    }
}
