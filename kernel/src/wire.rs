//! The Jupyter wire format: multipart framing and HMAC-SHA256 signatures.
//!
//! A message on a ROUTER socket is `[routing ids..., "<IDS|MSG>", signature,
//! header, parent_header, metadata, content, buffers...]`. The signature is
//! the hex HMAC-SHA256, under the connection key, of the four JSON frames in
//! that order; an empty key means messages are unsigned. Signatures are
//! checked in constant time *before* any JSON is parsed.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const DELIMITER: &[u8] = b"<IDS|MSG>";
pub const PROTOCOL_VERSION: &str = "5.3";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("no <IDS|MSG> delimiter")]
    NoDelimiter,
    #[error("fewer than the 5 frames after the delimiter")]
    Truncated,
    #[error("missing signature")]
    MissingSignature,
    #[error("bad signature")]
    BadSignature,
    #[error("frame {0} is not valid JSON")]
    BadJson(&'static str),
    #[error("the header has no msg_type or msg_id")]
    BadHeader,
    #[error("the message is larger than the {0}-byte limit")]
    TooLarge(usize),
}

/// Signs and verifies with the connection key.
#[derive(Clone)]
pub struct Signer {
    key: Option<Vec<u8>>,
}

impl Signer {
    pub fn new(key: &str) -> Signer {
        Signer { key: if key.is_empty() { None } else { Some(key.as_bytes().to_vec()) } }
    }

    /// Hex signature of the four frames (empty when unsigned).
    pub fn sign(&self, frames: [&[u8]; 4]) -> String {
        match &self.key {
            None => String::new(),
            Some(key) => {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
                for f in frames {
                    mac.update(f);
                }
                hex::encode(mac.finalize().into_bytes())
            }
        }
    }

    pub fn verify(&self, signature: &[u8], frames: [&[u8]; 4]) -> Result<(), WireError> {
        if self.key.is_none() {
            return Ok(());
        }
        if signature.is_empty() {
            return Err(WireError::MissingSignature);
        }
        let expected = self.sign(frames);
        if expected.as_bytes().ct_eq(signature).into() { Ok(()) } else { Err(WireError::BadSignature) }
    }
}

/// A decoded message. Every frame is validated; no handler reads the
/// parent header, metadata or buffers of a request yet.
#[derive(Debug, Clone)]
#[allow(dead_code)]
pub struct Message {
    pub identities: Vec<Bytes>,
    /// The hex HMAC as received (empty when unsigned); see [`ReplayGuard`].
    pub signature: Bytes,
    pub header: Value,
    pub parent_header: Value,
    pub metadata: Value,
    pub content: Value,
    pub buffers: Vec<Bytes>,
}

impl Message {
    pub fn msg_type(&self) -> &str {
        self.header.get("msg_type").and_then(Value::as_str).unwrap_or("")
    }

    /// Decodes frames received on a ROUTER socket (identity frames first).
    pub fn decode(frames: Vec<Bytes>, signer: &Signer, max_bytes: usize) -> Result<Message, WireError> {
        let total: usize = frames.iter().map(Bytes::len).sum();
        if total > max_bytes {
            return Err(WireError::TooLarge(max_bytes));
        }
        let split = frames.iter().position(|f| f.as_ref() == DELIMITER).ok_or(WireError::NoDelimiter)?;
        let rest = &frames[split + 1..];
        if rest.len() < 5 {
            return Err(if rest.is_empty() { WireError::MissingSignature } else { WireError::Truncated });
        }
        signer.verify(&rest[0], [&rest[1], &rest[2], &rest[3], &rest[4]])?;
        let parse = |b: &Bytes, name: &'static str| -> Result<Value, WireError> {
            let v: Value = serde_json::from_slice(b).map_err(|_| WireError::BadJson(name))?;
            if v.is_object() { Ok(v) } else { Err(WireError::BadJson(name)) }
        };
        let header = parse(&rest[1], "header")?;
        if header.get("msg_type").and_then(Value::as_str).is_none() || header.get("msg_id").and_then(Value::as_str).is_none() {
            return Err(WireError::BadHeader);
        }
        Ok(Message {
            identities: frames[..split].to_vec(),
            // A copy: a slice would keep zeromq's whole receive buffer alive
            // for as long as the replay guard remembers the signature.
            signature: Bytes::copy_from_slice(&rest[0]),
            header,
            parent_header: parse(&rest[2], "parent_header")?,
            metadata: parse(&rest[3], "metadata")?,
            content: parse(&rest[4], "content")?,
            buffers: rest[5..].to_vec(),
        })
    }
}

/// Remembers the signatures of the last messages accepted, so a captured
/// message re-sent byte for byte is dropped (as jupyter_client's `Session`
/// does). Only signed messages can be recognised; the memory is bounded.
pub struct ReplayGuard {
    /// Keyed hashes of the signatures, not the signatures: 8 bytes each
    /// instead of a 64-byte copy and its handle (the soak saw the copies
    /// grow the heap by megabytes). The key is random per process, and a
    /// signature cannot be forged without the session key, so no one can
    /// aim a collision; a chance one only drops a message as a replay.
    seen: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
    hasher: std::collections::hash_map::RandomState,
    capacity: usize,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard { seen: Default::default(), order: Default::default(), hasher: Default::default(), capacity: capacity.max(1) }
    }

    /// True the first time a signature is seen; false for a replay.
    pub fn admit(&mut self, signature: &Bytes) -> bool {
        use std::hash::BuildHasher;
        if signature.is_empty() {
            return true;
        }
        let hash = self.hasher.hash_one(signature.as_ref());
        if !self.seen.insert(hash) {
            return false;
        }
        self.order.push_back(hash);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// Builds the header of a message the kernel sends.
pub fn header(msg_type: &str, session: &str) -> Value {
    json!({
        "msg_id": uuid::Uuid::new_v4().to_string(),
        "session": session,
        "username": "safe-data",
        "date": safe_data_policy::now_rfc3339(),
        "msg_type": msg_type,
        "version": PROTOCOL_VERSION,
    })
}

/// Encodes a message: identities, delimiter, signature, the four JSON frames.
pub fn encode(identities: &[Bytes], header: &Value, parent: &Value, metadata: &Value, content: &Value, signer: &Signer) -> Vec<Bytes> {
    let frames = [
        serde_json::to_vec(header).unwrap_or_default(),
        serde_json::to_vec(parent).unwrap_or_default(),
        serde_json::to_vec(metadata).unwrap_or_default(),
        serde_json::to_vec(content).unwrap_or_default(),
    ];
    let signature = signer.sign([&frames[0], &frames[1], &frames[2], &frames[3]]);
    let mut out: Vec<Bytes> = identities.to_vec();
    out.push(Bytes::from_static(DELIMITER));
    out.push(Bytes::from(signature));
    out.extend(frames.into_iter().map(Bytes::from));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixtures signed by Python's `jupyter_client.session.Session`
    /// (see tests/fixtures/README.md for the script that made them).
    #[test]
    fn verifies_messages_signed_by_jupyter_client() {
        let fixtures: Value = serde_json::from_str(include_str!("../../tests/fixtures/signed_messages.json")).unwrap();
        for case in fixtures["messages"].as_array().unwrap() {
            let signer = Signer::new(case["key"].as_str().unwrap());
            let frames: Vec<Bytes> = case["frames"].as_array().unwrap().iter().map(|f| Bytes::from(f.as_str().unwrap().to_string())).collect();
            let msg = Message::decode(frames.clone(), &signer, 1 << 20).unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
            assert_eq!(msg.msg_type(), case["msg_type"].as_str().unwrap());
            // Re-encoding the same parts gives the same signature as Python.
            let delim = frames.iter().position(|f| f.as_ref() == DELIMITER).unwrap();
            let sig = signer.sign([&frames[delim + 2], &frames[delim + 3], &frames[delim + 4], &frames[delim + 5]]);
            assert_eq!(sig.as_bytes(), frames[delim + 1].as_ref());
        }
    }

    fn sample(signer: &Signer) -> Vec<Bytes> {
        let h = header("kernel_info_request", "s1");
        encode(&[Bytes::from_static(b"peer")], &h, &json!({}), &json!({}), &json!({}), signer)
    }

    #[test]
    fn round_trip_and_tampering() {
        let signer = Signer::new("secret");
        let frames = sample(&signer);
        let msg = Message::decode(frames.clone(), &signer, 1 << 20).unwrap();
        assert_eq!(msg.msg_type(), "kernel_info_request");
        assert_eq!(msg.identities, vec![Bytes::from_static(b"peer")]);

        let mut forged = frames.clone();
        forged[6] = Bytes::from_static(b"{\"code\": \"x\"}");
        assert_eq!(Message::decode(forged, &signer, 1 << 20).unwrap_err(), WireError::BadSignature);

        let mut unsigned = frames.clone();
        unsigned[2] = Bytes::new();
        assert_eq!(Message::decode(unsigned, &signer, 1 << 20).unwrap_err(), WireError::MissingSignature);

        let wrong_key = Signer::new("other");
        assert_eq!(Message::decode(frames.clone(), &wrong_key, 1 << 20).unwrap_err(), WireError::BadSignature);
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let signer = Signer::new("");
        assert_eq!(Message::decode(vec![Bytes::from_static(b"x")], &signer, 1 << 20).unwrap_err(), WireError::NoDelimiter);
        let mut frames = sample(&signer);
        frames.truncate(5);
        assert_eq!(Message::decode(frames, &signer, 1 << 20).unwrap_err(), WireError::Truncated);
        let mut frames = sample(&signer);
        frames[3] = Bytes::from_static(b"\xff\xfe");
        assert_eq!(Message::decode(frames, &signer, 1 << 20).unwrap_err(), WireError::BadJson("header"));
        let frames = sample(&signer);
        assert!(matches!(Message::decode(frames, &signer, 10).unwrap_err(), WireError::TooLarge(_)));
    }

    #[test]
    fn replays_are_refused_and_memory_is_bounded() {
        let mut guard = ReplayGuard::new(2);
        let (a, b, c) = (Bytes::from_static(b"aa"), Bytes::from_static(b"bb"), Bytes::from_static(b"cc"));
        assert!(guard.admit(&a));
        assert!(!guard.admit(&a));
        assert!(guard.admit(&b));
        assert!(guard.admit(&c));
        // `a` fell out of the window of two.
        assert!(guard.admit(&a));
        assert!(!guard.admit(&c));
        // Unsigned messages cannot be told apart.
        assert!(guard.admit(&Bytes::new()));
        assert!(guard.admit(&Bytes::new()));
    }

    #[test]
    fn empty_key_means_unsigned() {
        let signer = Signer::new("");
        let frames = sample(&signer);
        assert_eq!(frames[2].len(), 0);
        assert!(Message::decode(frames, &signer, 1 << 20).is_ok());
    }
}
