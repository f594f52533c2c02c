//! Answers to every request but `execute_request`.

use super::backend::{Backend, HistoryQuery};
use super::sockets::Channel;
use super::{Frames, Shared};
use crate::wire::{self, Message};
use safe_data_lang::services::{self, Completeness};
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::sync::mpsc;

pub(super) fn error_content(ename: &str, evalue: &str, traceback: &[String]) -> Value {
    json!({"status": "error", "ename": ename, "evalue": evalue, "traceback": traceback})
}

/// Answers every request but `execute_request`, wrapped in busy/idle.
///
/// Completion, inspection and history ask the backend, which may read the
/// catalog, a file or the service: they run on a blocking thread (never on
/// the runtime's, which move every socket's frames), and answer from there.
pub(super) fn handle_request(shared: &Arc<Shared>, msg: &Message, out: &mpsc::UnboundedSender<Frames>, channel: Channel) {
    let msg_type = msg.msg_type().to_string();
    shared.status(&msg.header, "busy");
    let c = &msg.content;
    match msg_type.as_str() {
        "kernel_info_request" => shared.reply(msg, out, "kernel_info_reply", kernel_info(&shared.backend.display_name())),
        "complete_request" | "inspect_request" | "history_request" => {
            let (shared, msg, out) = (shared.clone(), msg.clone(), out.clone());
            tokio::task::spawn_blocking(move || {
                let (reply_type, content) = backend_reply(&*shared.backend, &msg);
                shared.reply(&msg, &out, reply_type, content);
                shared.status(&msg.header, "idle");
            });
            return;
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

fn kernel_info(display_name: &str) -> Value {
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
            display_name
        ),
        // No public documentation site yet: the banner and inspect (shift-tab) document the dialect.
        help_links: vec![],
        debugger: false,
        error: None,
    };
    serde_json::to_value(reply).unwrap_or_else(|_| json!({"status": "ok"}))
}

/// The answer to a completion, inspection or history request, from the backend.
fn backend_reply(backend: &dyn Backend, msg: &Message) -> (&'static str, Value) {
    let c = &msg.content;
    let code = c.get("code").and_then(Value::as_str).unwrap_or("");
    let cursor = || char_to_byte(code, c.get("cursor_pos").and_then(Value::as_u64).unwrap_or(code.chars().count() as u64));
    match msg.msg_type() {
        "complete_request" => {
            let done = backend.complete(code, cursor());
            let content = json!({
                "status": "ok",
                "matches": done.matches,
                "cursor_start": byte_to_char(code, done.start),
                "cursor_end": byte_to_char(code, done.end),
                "metadata": {},
            });
            ("complete_reply", content)
        }
        "inspect_request" => {
            let content = match backend.inspect(code, cursor()) {
                Some(text) => json!({"status": "ok", "found": true, "data": {"text/plain": text}, "metadata": {}}),
                None => json!({"status": "ok", "found": false, "data": {}, "metadata": {}}),
            };
            ("inspect_reply", content)
        }
        _ => ("history_reply", history_reply(backend, c)),
    }
}

fn history_reply(backend: &dyn Backend, c: &Value) -> Value {
    let output = c.get("output").and_then(Value::as_bool).unwrap_or(false);
    match backend.history(&HistoryQuery::from_content(c)) {
        Ok(entries) => {
            let history: Vec<Value> =
                entries.iter().map(|e| if output { json!([e.session, e.line, [e.source, null]]) } else { json!([e.session, e.line, e.source]) }).collect();
            json!({"status": "ok", "history": history})
        }
        Err(message) => json!({"status": "error", "ename": "HistoryError", "evalue": message, "traceback": [], "history": []}),
    }
}
