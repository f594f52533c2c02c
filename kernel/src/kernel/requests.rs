//! Answers to every request but `execute_request`.

use super::Shared;
use super::backend::Backend;
use super::incoming::{HistoryRequest, Request};
use super::outgoing::{Iopub, IsComplete, Refusal, Replies, Reply, State};
use super::sockets::Channel;
use crate::wire::Message;
use safe_data_lang::services;
use std::sync::Arc;

/// Answers every request but `execute_request`, wrapped in busy/idle.
///
/// Completion, inspection and history ask the backend, which may read the
/// catalog, a file or the service: they run on a blocking thread (never on
/// the runtime's, which move every socket's frames), and answer from there.
pub(super) fn handle_request(shared: &Arc<Shared>, msg: &Message, request: Request, out: &Replies, channel: Channel) {
    let parent = &msg.header;
    let reply = |reply: Reply<'_>| shared.reply(&msg.identities, parent, out, reply);
    shared.status(parent, State::Busy);
    match request {
        Request::KernelInfo(_) => reply(Reply::KernelInfo { display_name: &shared.backend.display_name() }),
        Request::Complete(r) => return off_the_runtime(shared, msg, out, move |backend| complete(backend, &r.code, r.cursor_pos)),
        Request::Inspect(r) => {
            return off_the_runtime(shared, msg, out, move |backend| Reply::Inspect(backend.inspect(&r.code, char_to_byte(&r.code, r.cursor_pos))));
        }
        Request::History(HistoryRequest { query, output }) => {
            return off_the_runtime(shared, msg, out, move |backend| Reply::History { entries: backend.history(&query), output });
        }
        Request::IsComplete(r) => reply(Reply::IsComplete(services::is_complete(&r.code).into())),
        Request::CommInfo => reply(Reply::CommInfo),
        // No comm targets: close it so the frontend does not wait.
        Request::CommOpen(open) => shared.publish(parent, Iopub::CommClose(&open.comm_id)),
        Request::CommIgnored => {}
        Request::Interrupt(_) => {
            shared.cancel.cancel();
            reply(Reply::Interrupt);
        }
        Request::Shutdown(r) => {
            if channel != Channel::Control {
                tracing::info!("shutdown_request on {channel:?} (expected on control); honouring it");
            }
            shared.cancel.cancel();
            reply(Reply::Shutdown { restart: r.restart });
            shared.status(parent, State::Idle);
            let _ = shared.shutdown.send(true);
            return;
        }
        Request::Unknown => reply(Reply::Refused { request_type: msg.msg_type(), why: Refusal::UnknownMessageType }),
        // The router loop hands those on shell to the evaluation thread.
        Request::Execute(_) => reply(Reply::Refused { request_type: msg.msg_type(), why: Refusal::WrongChannel }),
        Request::Other => tracing::info!("ignoring message of type {}", msg.msg_type()),
    }
    shared.status(parent, State::Idle);
}

/// Answers an `is_complete_request` whose content could not be read: the
/// protocol has no error status for it, and "unknown" lets the frontend
/// decide.
pub(super) fn unknown_completeness(shared: &Shared, msg: &Message, out: &Replies) {
    shared.status(&msg.header, State::Busy);
    shared.reply(&msg.identities, &msg.header, out, Reply::IsComplete(IsComplete::Unknown));
    shared.status(&msg.header, State::Idle);
}

/// The byte offset of a cursor in characters; past the end is the end.
fn char_to_byte(s: &str, chars: usize) -> usize {
    s.char_indices().nth(chars).map(|(i, _)| i).unwrap_or(s.len())
}

/// The characters before a byte offset (the backend's answer: one inside a
/// character counts it as after the cursor, never panics).
fn byte_to_char(s: &str, byte: usize) -> usize {
    s.char_indices().take_while(|(i, _)| *i < byte).count()
}

/// Asks the backend on a blocking thread, and answers (then `idle`) from there.
fn off_the_runtime(shared: &Arc<Shared>, msg: &Message, out: &Replies, ask: impl FnOnce(&dyn Backend) -> Reply<'static> + Send + 'static) {
    let (shared, msg, out) = (shared.clone(), msg.clone(), out.clone());
    tokio::task::spawn_blocking(move || {
        let answer = ask(&*shared.backend);
        shared.reply(&msg.identities, &msg.header, &out, answer);
        shared.status(&msg.header, State::Idle);
    });
}

/// Completion at a cursor in characters (one past the end is the end);
/// the backend counts bytes.
fn complete(backend: &dyn Backend, code: &str, cursor: usize) -> Reply<'static> {
    let done = backend.complete(code, char_to_byte(code, cursor));
    Reply::Complete { cursor_start: byte_to_char(code, done.start), cursor_end: byte_to_char(code, done.end), matches: done.matches }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_convert_between_characters_and_bytes_without_panicking() {
        let code = "SELECT 'é😀' FROM pat";
        assert_eq!(char_to_byte(code, 0), 0);
        assert_eq!(char_to_byte(code, 9), 10);
        assert_eq!(char_to_byte(code, 10), 14);
        assert_eq!(char_to_byte(code, usize::MAX), code.len());
        assert_eq!(byte_to_char(code, 10), 9);
        assert_eq!(byte_to_char(code, 14), 10);
        // Inside `😀`, and past the end.
        assert_eq!(byte_to_char(code, 11), 10);
        assert_eq!(byte_to_char(code, usize::MAX), code.chars().count());
        for chars in 0..=code.chars().count() {
            assert_eq!(byte_to_char(code, char_to_byte(code, chars)), chars);
        }
        assert_eq!((char_to_byte("", 5), byte_to_char("", 5)), (0, 0));
    }
}
