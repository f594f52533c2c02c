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

    /// A verifier fed the four JSON frames piece by piece (the frame guard
    /// sees them as a stream, never whole).
    /// Whether messages are signed (a connection key is set).
    pub fn signs(&self) -> bool {
        self.key.is_some()
    }

    pub fn streaming(&self) -> StreamingVerifier {
        StreamingVerifier { mac: self.key.as_ref().map(|key| <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")) }
    }
}

/// [`Signer::verify`] for frames that arrive in pieces.
#[derive(Clone)]
pub struct StreamingVerifier {
    mac: Option<Hmac<Sha256>>,
}

impl StreamingVerifier {
    pub fn update(&mut self, bytes: &[u8]) {
        if let Some(mac) = &mut self.mac {
            mac.update(bytes);
        }
    }

    /// True when `signature` is the hex HMAC of everything fed (always true
    /// without a key, as [`Signer::verify`]).
    pub fn verify(self, signature: &[u8]) -> bool {
        match self.mac {
            None => true,
            Some(mac) => hex::encode(mac.finalize().into_bytes()).as_bytes().ct_eq(signature).into(),
        }
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
        Message::decode_or_refuse(frames, signer, max_bytes).map_err(|r| r.error)
    }

    /// Like [`Message::decode`], but a message whose signature and header
    /// are good while another frame is not a JSON object (a lone surrogate
    /// escape, nesting deeper than serde_json's 128 levels, not JSON) is
    /// refused with what it takes to answer it: the sender holds the key, so
    /// an error reply tells it nothing it could not know, and without one it
    /// would wait forever. Everything else is refused without an answer.
    pub fn decode_or_refuse(frames: Vec<Bytes>, signer: &Signer, max_bytes: usize) -> Result<Message, Refused> {
        let silent = |error| Refused { error, answer_to: None };
        let total: usize = frames.iter().map(Bytes::len).sum();
        if total > max_bytes {
            return Err(silent(WireError::TooLarge(max_bytes)));
        }
        let split = frames.iter().position(|f| f.as_ref() == DELIMITER).ok_or_else(|| silent(WireError::NoDelimiter))?;
        let rest = &frames[split + 1..];
        if rest.len() < 5 {
            return Err(silent(if rest.is_empty() { WireError::MissingSignature } else { WireError::Truncated }));
        }
        signer.verify(&rest[0], [&rest[1], &rest[2], &rest[3], &rest[4]]).map_err(silent)?;
        let parse = |b: &Bytes, name: &'static str| -> Result<Value, WireError> {
            let v: Value = serde_json::from_slice(b).map_err(|_| WireError::BadJson(name))?;
            if v.is_object() { Ok(v) } else { Err(WireError::BadJson(name)) }
        };
        let header = parse(&rest[1], "header").map_err(silent)?;
        if header.get("msg_type").and_then(Value::as_str).is_none() || header.get("msg_id").and_then(Value::as_str).is_none() {
            return Err(silent(WireError::BadHeader));
        }
        let identities = frames[..split].to_vec();
        let (parent_header, metadata, content) = match (parse(&rest[2], "parent_header"), parse(&rest[3], "metadata"), parse(&rest[4], "content")) {
            (Ok(p), Ok(m), Ok(c)) => (p, m, c),
            (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
                return Err(Refused { error, answer_to: Some(AnswerTo { identities, header, signature: Bytes::copy_from_slice(&rest[0]) }) });
            }
        };
        Ok(Message {
            identities,
            // A copy: a slice would keep zeromq's whole receive buffer alive
            // for as long as the replay guard remembers the signature.
            signature: Bytes::copy_from_slice(&rest[0]),
            header,
            parent_header,
            metadata,
            content,
            buffers: rest[5..].to_vec(),
        })
    }
}

/// Why a message was not decoded, and whom to answer (if anyone).
#[derive(Debug)]
pub struct Refused {
    pub error: WireError,
    /// Set when the signature and the header were good: an error reply can
    /// be sent to the sender (only for a `*_request`; see the router loop).
    pub answer_to: Option<AnswerTo>,
}

/// The routing identities and the header of a correctly signed message
/// whose other frames could not be read.
#[derive(Debug)]
pub struct AnswerTo {
    pub identities: Vec<Bytes>,
    pub header: Value,
    /// For the replay guard.
    pub signature: Bytes,
}

impl AnswerTo {
    pub fn msg_type(&self) -> &str {
        self.header.get("msg_type").and_then(Value::as_str).unwrap_or("")
    }
}

/// Remembers the signatures of the last messages accepted, so a captured
/// message re-sent byte for byte is dropped (as jupyter_client's `Session`
/// does). Only signed messages can be recognised; the memory is bounded.
///
/// A restarted kernel keeps its connection file and key (jupyter_client's
/// restart), so a message captured before the restart would be accepted
/// again by a memory that starts empty. With [`ReplayGuard::persist`] the
/// memory is also appended to a file (8 bytes per message, next to the
/// connection file) and read back at the next start with the same key.
pub struct ReplayGuard {
    /// The first 8 bytes of the SHA-256 of each signature, not the
    /// signatures: 8 bytes each instead of a 64-byte copy and its handle
    /// (the soak saw the copies grow the heap by megabytes). Stable across
    /// processes, so they can be persisted. A signature cannot be forged
    /// without the key, so no one can aim a collision; a chance one only
    /// drops a message as a replay.
    seen: std::collections::HashSet<u64>,
    order: std::collections::VecDeque<u64>,
    capacity: usize,
    file: Option<ReplayFile>,
}

/// The persisted memory: an append-only file of 8-byte entries, rewritten
/// with the last `capacity` entries once it holds twice that many.
struct ReplayFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    entries: usize,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard { seen: Default::default(), order: Default::default(), capacity: capacity.max(1), file: None }
    }

    fn digest(signature: &[u8]) -> u64 {
        use sha2::Digest;
        let d = Sha256::digest(signature);
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    /// True the first time a signature is seen; false for a replay.
    pub fn admit(&mut self, signature: &Bytes) -> bool {
        if signature.is_empty() {
            return true;
        }
        let hash = ReplayGuard::digest(signature);
        if !self.insert(hash) {
            return false;
        }
        self.append(hash);
        true
    }

    fn insert(&mut self, hash: u64) -> bool {
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

    /// Loads the entries a previous run left at `path` (a missing file is an
    /// empty memory) and appends every new entry there from now on. The
    /// file is created private (0600) and never followed through a symlink.
    /// On an error the memory stays in-process only and the error is
    /// returned (the caller logs it); a later write error stops persisting.
    pub fn persist(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Read;
        let mut file = ReplayGuard::open(path, false)?;
        // At most what a compaction leaves behind plus what came after: a
        // damaged or foreign file costs no more than that to read.
        let cap = (2 * self.capacity as u64 + 1) * 8;
        let mut bytes = Vec::new();
        (&mut file).take(cap).read_to_end(&mut bytes)?;
        let old: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect();
        let skip = old.len().saturating_sub(self.capacity);
        for hash in old.into_iter().skip(skip) {
            self.insert(hash);
        }
        let entries = bytes.len() / 8;
        self.file = Some(ReplayFile { path: path.to_path_buf(), file, entries });
        if entries >= 2 * self.capacity {
            self.compact();
        }
        Ok(())
    }

    /// Forgets the file (the kernel shut down for good: no restart will
    /// need it).
    pub fn remove_file(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = std::fs::remove_file(&f.path);
        }
    }

    fn open(path: &std::path::Path, truncate: bool) -> std::io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.read(true).append(!truncate).write(truncate).create(true).truncate(truncate).mode(0o600).custom_flags(libc::O_NOFOLLOW);
        options.open(path)
    }

    fn append(&mut self, hash: u64) {
        use std::io::Write;
        let Some(f) = &mut self.file else { return };
        if let Err(e) = f.file.write_all(&hash.to_le_bytes()) {
            tracing::warn!("the replay memory file {} cannot be written ({e}); replays are remembered in memory only", f.path.display());
            self.file = None;
            return;
        }
        f.entries += 1;
        if f.entries >= 2 * self.capacity {
            self.compact();
        }
    }

    /// Rewrites the file with the entries in memory (written aside, then
    /// renamed over it).
    fn compact(&mut self) {
        use std::io::Write;
        let Some(f) = self.file.take() else { return };
        let aside = f.path.with_extension(format!("tmp-{}", std::process::id()));
        let written = (|| {
            let mut out = ReplayGuard::open(&aside, true)?;
            let bytes: Vec<u8> = self.order.iter().flat_map(|h| h.to_le_bytes()).collect();
            out.write_all(&bytes)?;
            std::fs::rename(&aside, &f.path)?;
            ReplayGuard::open(&f.path, false)
        })();
        match written {
            Ok(file) => self.file = Some(ReplayFile { path: f.path, file, entries: self.order.len() }),
            Err(e) => {
                let _ = std::fs::remove_file(&aside);
                tracing::warn!("the replay memory file {} cannot be rewritten ({e}); replays are remembered in memory only", f.path.display());
            }
        }
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

    /// Finding 13: a signed request whose content is a lone surrogate escape
    /// or nested deeper than 128 levels was dropped without an answer. It is
    /// refused with whom to answer; a bad header or signature is not.
    #[test]
    fn an_unreadable_body_of_a_signed_message_can_be_answered() {
        let signer = Signer::new("secret");
        let h = header("execute_request", "s1");
        let with_content = |content: &[u8]| {
            let parts = [serde_json::to_vec(&h).unwrap(), b"{}".to_vec(), b"{}".to_vec(), content.to_vec()];
            let sig = signer.sign([&parts[0], &parts[1], &parts[2], &parts[3]]);
            let mut frames = vec![Bytes::from_static(b"peer"), Bytes::from_static(DELIMITER), Bytes::from(sig)];
            frames.extend(parts.into_iter().map(Bytes::from));
            frames
        };
        let deep = format!("{}1{}", "{\"a\":".repeat(129), "}".repeat(129));
        for content in [&br#"{"code": "SELECT '\ud800';"}"#[..], deep.as_bytes(), b"[1]", b"\xff"] {
            let refused = Message::decode_or_refuse(with_content(content), &signer, 1 << 20).unwrap_err();
            assert_eq!(refused.error, WireError::BadJson("content"));
            let to = refused.answer_to.expect("answerable");
            assert_eq!(to.msg_type(), "execute_request");
            assert_eq!(to.identities, vec![Bytes::from_static(b"peer")]);
            assert_eq!(to.header["msg_id"], h["msg_id"]);
        }
        // Forged: no answer.
        let mut forged = with_content(b"[1]");
        forged[3] = Bytes::from(serde_json::to_vec(&header("kernel_info_request", "s1")).unwrap());
        let refused = Message::decode_or_refuse(forged, &signer, 1 << 20).unwrap_err();
        assert_eq!(refused.error, WireError::BadSignature);
        assert!(refused.answer_to.is_none());
    }

    #[test]
    fn streaming_verification_matches_verify() {
        let signer = Signer::new("secret");
        let frames = sample(&signer);
        let mut v = signer.streaming();
        for f in &frames[3..7] {
            for piece in f.chunks(3) {
                v.update(piece);
            }
        }
        assert!(v.clone().verify(&frames[2]));
        assert!(!v.verify(b"00"));
        assert!(Signer::new("").streaming().verify(b""));
    }

    /// Finding 13: a message replayed after a restart with the same key was
    /// executed (the memory started empty). It is kept in a file the next
    /// run reads.
    #[test]
    fn the_replay_memory_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("sd-replay-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".kernel.json.replay");
        let sig = |i: usize| Bytes::from(format!("{i:064x}"));
        let mut first = ReplayGuard::new(4);
        first.persist(&path).unwrap();
        for i in 0..20 {
            assert!(first.admit(&sig(i)));
        }
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            // Compacted: never more than twice the capacity.
            assert!(std::fs::metadata(&path).unwrap().len() <= 2 * 4 * 8);
        }
        drop(first);
        let mut second = ReplayGuard::new(4);
        second.persist(&path).unwrap();
        for i in 16..20 {
            assert!(!second.admit(&sig(i)), "signature {i} was accepted again after a restart");
        }
        assert!(second.admit(&sig(0)), "older than the window: forgotten, as in one run");
        second.remove_file();
        assert!(!path.exists());
        // Without a file the memory is in-process only.
        let mut plain = ReplayGuard::new(4);
        assert!(plain.admit(&sig(1)) && !plain.admit(&sig(1)));
        // A symlink is not followed.
        std::os::unix::fs::symlink(dir.join("elsewhere"), &path).unwrap();
        assert!(ReplayGuard::new(4).persist(&path).is_err());
        assert!(!dir.join("elsewhere").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn empty_key_means_unsigned() {
        let signer = Signer::new("");
        let frames = sample(&signer);
        assert_eq!(frames[2].len(), 0);
        assert!(Message::decode(frames, &signer, 1 << 20).is_ok());
    }
}
