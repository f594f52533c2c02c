//! Requests as the kernel reads them: the content of a correctly signed,
//! not replayed message ([`crate::wire::Message`]), decoded into a typed
//! [`Request`], jupyter-protocol's content structs where they fit. Nothing
//! else in the kernel reads a request's content.
//!
//! Fields Jupyter clients may leave out take the defaults the kernel always
//! gave them (an `execute_request` without `silent`, `store_history` or
//! `stop_on_error`; a `complete_request` or `inspect_request` without
//! `cursor_pos`, which is then the end of the code; a `history_request`
//! with only `hist_access_type`; a `shutdown_request` without `restart`).
//! A field of the wrong type or value, or a missing `code`, is a
//! [`BadContent`]: the request is answered `BadMessage`, never run with a
//! guess. Its text names the field, never the value.

use super::backend::HistoryQuery;
use jupyter_protocol::{
    CommInfoRequest, CommOpen, CompleteRequest, ExecuteRequest, InspectRequest, InterruptRequest, IsCompleteRequest, KernelInfoRequest, ShutdownRequest,
};
use serde::de::value::MapDeserializer;
use serde::de::{DeserializeOwned, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The entries a `history_request` with no `n` gets (IPython's default).
const DEFAULT_HISTORY_TAIL: usize = 10;

/// A request the kernel handles, decoded.
#[derive(Debug)]
pub(super) enum Request {
    Execute(ExecuteRequest),
    Complete(CompleteRequest),
    Inspect(InspectRequest),
    History(HistoryRequest),
    IsComplete(IsCompleteRequest),
    KernelInfo(KernelInfoRequest),
    /// Decoded (a mistyped `target_name` is refused); there are no comms to filter.
    CommInfo,
    Interrupt(InterruptRequest),
    Shutdown(ShutdownRequest),
    /// Safe Data has no comm targets: the comm is closed at once.
    CommOpen(CommOpen),
    /// `comm_msg`, `comm_close`: there is no comm to give them to.
    CommIgnored,
    /// A `*_request` Safe Data does not handle (answered with an error).
    Unknown,
    /// Anything else (not a request: no answer).
    Other,
}

/// A `history_request`: what to look up, and whether the reply has the
/// `(input, output)` shape.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HistoryRequest {
    pub query: HistoryQuery,
    pub output: bool,
}

/// Why a request's content could not be read. Names a field of the
/// protocol, never what the client put in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadContent {
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{0}` has the wrong type or value")]
    Field(String),
    #[error("the content does not have the fields of its message type")]
    Shape,
}

impl serde::de::Error for BadContent {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        // serde's texts quote the value they did not expect.
        BadContent::Shape
    }

    fn missing_field(field: &'static str) -> Self {
        BadContent::Missing(field)
    }
}

impl BadContent {
    /// A field named in a message type's struct; anything else (it cannot
    /// be, but the name comes from the client) is not repeated.
    fn field(name: &str) -> BadContent {
        let plain = !name.is_empty() && name.len() <= 40 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        BadContent::Field(if plain { name.to_string() } else { "?".to_string() })
    }
}

/// Decodes a signed request's content by its `msg_type`.
pub(super) fn decode(msg_type: &str, content: &Value) -> Result<Request, BadContent> {
    use Value::Bool;
    let end = || Value::from(u64::MAX);
    Ok(match msg_type {
        // `store_history` defaults to true; the kernel stores only when not silent.
        "execute_request" => Request::Execute(fields(content, &[("silent", Bool(false)), ("store_history", Bool(true))])?),
        // No cursor: the end of the code (clamped there, as any cursor past it).
        "complete_request" => Request::Complete(fields(content, &[("cursor_pos", end())])?),
        "inspect_request" => Request::Inspect(fields(content, &[("cursor_pos", end())])?),
        "history_request" => Request::History(history(content)?),
        "is_complete_request" => Request::IsComplete(fields(content, &[])?),
        "kernel_info_request" => Request::KernelInfo(fields(content, &[])?),
        "comm_info_request" => fields::<CommInfoRequest>(content, &[]).map(|_| Request::CommInfo)?,
        "interrupt_request" => Request::Interrupt(fields(content, &[])?),
        "shutdown_request" => Request::Shutdown(fields(content, &[("restart", Bool(false))])?),
        "comm_open" => Request::CommOpen(fields(content, &[("target_name", Value::from("")), ("data", Value::Object(Default::default()))])?),
        "comm_msg" | "comm_close" => Request::CommIgnored,
        other if other.ends_with("_request") => Request::Unknown,
        _ => Request::Other,
    })
}

/// A `history_request`'s fields (IPython's). jupyter-protocol's
/// `HistoryRequest` needs every field of its access type (clients send only
/// the ones they set) and has no "to the end" `stop` nor "all" `n`: the
/// kernel reads its own. `null` is as absent.
#[derive(Deserialize)]
struct HistoryFields {
    hist_access_type: Option<HistoryAccess>,
    output: Option<bool>,
    /// Checked for its type only: the kernel stores raw input anyway.
    #[allow(dead_code)]
    raw: Option<bool>,
    session: Option<i64>,
    start: Option<u64>,
    stop: Option<u64>,
    n: Option<u64>,
    pattern: Option<String>,
    unique: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum HistoryAccess {
    Tail,
    Range,
    Search,
}

fn history(content: &Value) -> Result<HistoryRequest, BadContent> {
    let f: HistoryFields = fields(content, &[])?;
    let n = f.n.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let query = match f.hist_access_type.unwrap_or(HistoryAccess::Tail) {
        HistoryAccess::Tail => HistoryQuery::Tail { n: n.unwrap_or(DEFAULT_HISTORY_TAIL) },
        HistoryAccess::Range => HistoryQuery::Range { session: f.session.unwrap_or(0), start: f.start.unwrap_or(0), stop: f.stop },
        HistoryAccess::Search => HistoryQuery::Search { pattern: f.pattern.unwrap_or_else(|| "*".into()), n, unique: f.unique.unwrap_or(false) },
    };
    Ok(HistoryRequest { query, output: f.output.unwrap_or(false) })
}

impl HistoryQuery {
    /// The query the kernel runs for a `history_request`'s content (the
    /// fuzz target `history_request` runs it on a fixture history). A
    /// content that does not decode is answered `BadMessage` by the kernel
    /// and runs nothing; here it gives the default tail.
    pub fn from_content(content: &Value) -> HistoryQuery {
        history(content).map(|h| h.query).unwrap_or(HistoryQuery::Tail { n: DEFAULT_HISTORY_TAIL })
    }
}

/// Decodes a content object into `T`, the keys absent from it taken from
/// `defaults`. The content is read in place (no copy of a large cell), and
/// an error names the field it is in (see [`Field`]).
fn fields<T: DeserializeOwned>(content: &Value, defaults: &[(&'static str, Value)]) -> Result<T, BadContent> {
    // The wire layer only hands on objects.
    let Value::Object(map) = content else { return Err(BadContent::Shape) };
    let present = map.iter().map(|(key, value)| (key.as_str(), value));
    let absent = defaults.iter().filter(|(key, _)| !map.contains_key(*key)).map(|(key, value)| (*key, value));
    let entries = present.chain(absent).map(|(key, value)| (key, Field { key, value }));
    T::deserialize(MapDeserializer::new(entries))
}

/// One field's value, as a deserializer whose errors say which field failed
/// (serde_json's would quote the value).
struct Field<'de> {
    key: &'de str,
    value: &'de Value,
}

impl<'de> IntoDeserializer<'de, BadContent> for Field<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! forward {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, BadContent> {
            self.value.$method(visitor).map_err(|_| BadContent::field(self.key))
        }
    )*};
}

impl<'de> Deserializer<'de> for Field<'de> {
    type Error = BadContent;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, BadContent> {
        self.value.deserialize_unit_struct(name, visitor).map_err(|_| BadContent::field(self.key))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, BadContent> {
        self.value.deserialize_newtype_struct(name, visitor).map_err(|_| BadContent::field(self.key))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, BadContent> {
        self.value.deserialize_tuple(len, visitor).map_err(|_| BadContent::field(self.key))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, name: &'static str, len: usize, visitor: V) -> Result<V::Value, BadContent> {
        self.value.deserialize_tuple_struct(name, len, visitor).map_err(|_| BadContent::field(self.key))
    }

    fn deserialize_struct<V: Visitor<'de>>(self, name: &'static str, fields: &'static [&'static str], visitor: V) -> Result<V::Value, BadContent> {
        self.value.deserialize_struct(name, fields, visitor).map_err(|_| BadContent::field(self.key))
    }

    fn deserialize_enum<V: Visitor<'de>>(self, name: &'static str, variants: &'static [&'static str], visitor: V) -> Result<V::Value, BadContent> {
        self.value.deserialize_enum(name, variants, visitor).map_err(|_| BadContent::field(self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn execute(content: Value) -> Result<ExecuteRequest, BadContent> {
        match decode("execute_request", &content)? {
            Request::Execute(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_execute_request_as_clients_send_it() {
        // jupyter_client's full content.
        let r =
            execute(json!({"code": "SELECT 1;", "silent": false, "store_history": true, "user_expressions": {}, "allow_stdin": true, "stop_on_error": false}))
                .unwrap();
        assert_eq!((r.code.as_str(), r.silent, r.store_history, r.stop_on_error), ("SELECT 1;", false, true, false));
        // Only the code: the defaults the kernel always took.
        let r = execute(json!({"code": "SELECT 2;"})).unwrap();
        assert_eq!((r.code.as_str(), r.silent, r.store_history, r.stop_on_error), ("SELECT 2;", false, true, true));
        let r = execute(json!({"code": "", "silent": true})).unwrap();
        assert!(r.silent);
        // Unknown fields are ignored.
        assert!(execute(json!({"code": "x", "cell_id": "abc", "extra": [1, 2]})).is_ok());
    }

    #[test]
    fn a_malformed_execute_request_is_an_error_naming_the_field_not_the_value() {
        assert_eq!(execute(json!({})).unwrap_err(), BadContent::Missing("code"));
        assert_eq!(execute(json!({"silent": false})).unwrap_err(), BadContent::Missing("code"));
        assert_eq!(execute(json!({"code": 5})).unwrap_err(), BadContent::Field("code".into()));
        assert_eq!(execute(json!({"code": null})).unwrap_err(), BadContent::Field("code".into()));
        assert_eq!(execute(json!({"code": "x", "silent": "secret-yes"})).unwrap_err(), BadContent::Field("silent".into()));
        assert_eq!(execute(json!({"code": "x", "stop_on_error": 1})).unwrap_err(), BadContent::Field("stop_on_error".into()));
        assert_eq!(execute(json!({"code": "x", "user_expressions": {"a": 3}})).unwrap_err(), BadContent::Field("user_expressions".into()));
        let text = execute(json!({"code": "x", "silent": "secret-yes"})).unwrap_err().to_string();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(decode("execute_request", &json!(["SELECT 1;"])).unwrap_err(), BadContent::Shape);
    }

    fn cursor(msg_type: &str, content: Value) -> Result<usize, BadContent> {
        match decode(msg_type, &content)? {
            Request::Complete(r) => Ok(r.cursor_pos),
            Request::Inspect(r) => Ok(r.cursor_pos),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cursor_positions_decode_or_fail_without_panicking() {
        for msg_type in ["complete_request", "inspect_request"] {
            assert_eq!(cursor(msg_type, json!({"code": "SELECT", "cursor_pos": 3})), Ok(3));
            // Absent: the end of the code (the kernel clamps).
            assert_eq!(cursor(msg_type, json!({"code": "SELECT"})), Ok(usize::MAX));
            assert_eq!(cursor(msg_type, json!({"code": "SELECT", "cursor_pos": u64::MAX})), Ok(usize::MAX));
            let field = Err(BadContent::Field("cursor_pos".into()));
            // A JSON number no integer type holds, a negative one, a fraction, a string, null.
            let huge: Value = serde_json::from_str("1000000000000000000000000000000").unwrap();
            assert_eq!(cursor(msg_type, json!({"code": "SELECT", "cursor_pos": huge})), field);
            assert_eq!(cursor(msg_type, json!({"code": "SELECT", "cursor_pos": 18446744073709551616.0})), field);
            assert_eq!(cursor(msg_type, json!({"code": "SELECT", "cursor_pos": -5})), field);
            assert_eq!(cursor(msg_type, json!({"code": "SELECT", "cursor_pos": 1.5})), field);
            assert_eq!(cursor(msg_type, json!({"code": "SELECT", "cursor_pos": "4"})), field);
            assert_eq!(cursor(msg_type, json!({"code": "SELECT", "cursor_pos": null})), field);
            assert_eq!(cursor(msg_type, json!({"cursor_pos": 3})), Err(BadContent::Missing("code")));
            assert_eq!(cursor(msg_type, json!({"code": ["patients"], "cursor_pos": 0})), Err(BadContent::Field("code".into())));
        }
        assert_eq!(cursor("inspect_request", json!({"code": "x", "cursor_pos": 0, "detail_level": "high"})), Err(BadContent::Field("detail_level".into())));
    }

    fn history_of(content: Value) -> Result<HistoryRequest, BadContent> {
        match decode("history_request", &content)? {
            Request::History(h) => Ok(h),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn history_requests_take_ipythons_defaults_for_absent_fields() {
        // jupyter_client's `history()` sends raw, output, hist_access_type and the keywords given.
        let h = history_of(json!({"raw": true, "output": false, "hist_access_type": "tail", "n": 3})).unwrap();
        assert_eq!(h, HistoryRequest { query: HistoryQuery::Tail { n: 3 }, output: false });
        assert_eq!(history_of(json!({})).unwrap().query, HistoryQuery::Tail { n: 10 });
        assert!(history_of(json!({"hist_access_type": "tail", "output": true})).unwrap().output);
        let h = history_of(json!({"hist_access_type": "range", "session": -1, "start": 1, "stop": 3})).unwrap();
        assert_eq!(h.query, HistoryQuery::Range { session: -1, start: 1, stop: Some(3) });
        let h = history_of(json!({"hist_access_type": "range", "stop": null})).unwrap();
        assert_eq!(h.query, HistoryQuery::Range { session: 0, start: 0, stop: None });
        // jupyter_kernel_test's search: neither n nor unique.
        let h = history_of(json!({"hist_access_type": "search", "pattern": "SELECT*", "raw": true, "output": false})).unwrap();
        assert_eq!(h.query, HistoryQuery::Search { pattern: "SELECT*".into(), n: None, unique: false });
        let h = history_of(json!({"hist_access_type": "tail", "n": u64::MAX})).unwrap();
        assert_eq!(h.query, HistoryQuery::Tail { n: usize::MAX });
        let h = history_of(json!({"hist_access_type": "range", "session": i64::MIN, "start": u64::MAX, "stop": 0})).unwrap();
        assert_eq!(h.query, HistoryQuery::Range { session: i64::MIN, start: u64::MAX, stop: Some(0) });
    }

    #[test]
    fn malformed_history_requests_are_errors() {
        let field = |name: &str| Err(BadContent::Field(name.into()));
        assert_eq!(history_of(json!({"hist_access_type": "tail", "n": -1})), field("n"));
        assert_eq!(history_of(json!({"hist_access_type": "nope"})), field("hist_access_type"));
        assert_eq!(history_of(json!({"hist_access_type": 3})), field("hist_access_type"));
        assert_eq!(history_of(json!({"hist_access_type": "search", "unique": "yes"})), field("unique"));
        assert_eq!(history_of(json!({"hist_access_type": "search", "pattern": ["*"]})), field("pattern"));
        assert_eq!(history_of(json!({"hist_access_type": "range", "session": 1e300})), field("session"));
        assert_eq!(history_of(json!({"hist_access_type": "range", "start": -2})), field("start"));
        // What the fuzz target runs for them: the default tail.
        assert_eq!(HistoryQuery::from_content(&json!({"hist_access_type": "tail", "n": -1})), HistoryQuery::Tail { n: 10 });
        assert_eq!(HistoryQuery::from_content(&json!({"hist_access_type": "tail", "n": 2})), HistoryQuery::Tail { n: 2 });
    }

    #[test]
    fn the_other_requests() {
        assert!(matches!(decode("is_complete_request", &json!({"code": "SELECT 1"})), Ok(Request::IsComplete(r)) if r.code == "SELECT 1"));
        assert_eq!(decode("is_complete_request", &json!({"code": {"a": 1}})).unwrap_err(), BadContent::Field("code".into()));
        assert_eq!(decode("is_complete_request", &json!({})).unwrap_err(), BadContent::Missing("code"));
        assert!(matches!(decode("kernel_info_request", &json!({})), Ok(Request::KernelInfo(_))));
        assert!(matches!(decode("kernel_info_request", &json!({"anything": [1]})), Ok(Request::KernelInfo(_))));
        assert!(matches!(decode("interrupt_request", &json!({})), Ok(Request::Interrupt(_))));
        assert!(matches!(decode("comm_info_request", &json!({})), Ok(Request::CommInfo)));
        assert!(matches!(decode("comm_info_request", &json!({"target_name": "jupyter.widget"})), Ok(Request::CommInfo)));
        assert_eq!(decode("comm_info_request", &json!({"target_name": 7})).unwrap_err(), BadContent::Field("target_name".into()));
        assert!(matches!(decode("shutdown_request", &json!({"restart": true})), Ok(Request::Shutdown(r)) if r.restart));
        assert!(matches!(decode("shutdown_request", &json!({})), Ok(Request::Shutdown(r)) if !r.restart));
        assert_eq!(decode("shutdown_request", &json!({"restart": "yes"})).unwrap_err(), BadContent::Field("restart".into()));
        assert!(matches!(decode("comm_open", &json!({"comm_id": "c1", "target_name": "t", "data": {}})), Ok(Request::CommOpen(c)) if c.comm_id.0 == "c1"));
        assert!(matches!(decode("comm_open", &json!({"comm_id": "c2"})), Ok(Request::CommOpen(c)) if c.comm_id.0 == "c2"));
        assert_eq!(decode("comm_open", &json!({})).unwrap_err(), BadContent::Missing("comm_id"));
        assert_eq!(decode("comm_open", &json!({"comm_id": [1], "target_name": null})).unwrap_err(), BadContent::Field("comm_id".into()));
        assert!(matches!(decode("comm_msg", &json!({"data": "x"})), Ok(Request::CommIgnored)));
        assert!(matches!(decode("debug_request", &json!({})), Ok(Request::Unknown)));
        assert!(matches!(decode("_request", &json!({})), Ok(Request::Unknown)));
        assert!(matches!(decode("status", &json!({})), Ok(Request::Other)));
    }

    #[test]
    fn a_field_name_from_the_client_is_not_repeated_unless_plain() {
        assert_eq!(BadContent::field("cursor_pos"), BadContent::Field("cursor_pos".into()));
        assert_eq!(BadContent::field("Secret Value"), BadContent::Field("?".into()));
        assert_eq!(BadContent::field(&"a".repeat(41)), BadContent::Field("?".into()));
    }
}
