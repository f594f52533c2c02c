//! A guard in front of the zeromq sockets: it refuses ZMTP frames larger
//! than the message cap *before* anything allocates room for them.
//!
//! zeromq 0.7 reserves the length a frame header claims as soon as it reads
//! the header, so one 1 TiB claim from any peer that can reach a port aborts
//! the process, before any signature can be checked. So on TCP the kernel's
//! sockets listen on private Unix sockets, and the public ports are served by
//! this guard: it copies bytes both ways, reading the peer's side as ZMTP 3
//! (a 64-byte greeting, then frames of `flags, length, body`), and closes a
//! connection whose frame, or whole multipart message, is over the cap. It
//! never looks into frame bodies; signatures and JSON are the wire decoder's.

use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

const GREETING_BYTES: usize = 64;
const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

/// Why a connection was closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    #[error("a frame of {0} bytes is over the {1}-byte limit")]
    FrameTooLarge(u64, u64),
    #[error("a message of more than {0} bytes")]
    MessageTooLarge(u64),
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

/// Reads the ZMTP stream of one peer, frame by frame, and passes it on.
/// Returns when either side closes or the peer breaks the limit.
async fn copy_checked<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut from: R, mut to: W, max_message: u64) -> Result<(), GuardError> {
    let closed = |_| GuardError::Closed;
    let mut greeting = [0u8; GREETING_BYTES];
    from.read_exact(&mut greeting).await.map_err(closed)?;
    to.write_all(&greeting).await.map_err(closed)?;
    let mut message_bytes: u64 = 0;
    let mut body = vec![0u8; 64 * 1024];
    loop {
        let flags = from.read_u8().await.map_err(closed)?;
        let len = if flags & LONG != 0 { from.read_u64().await.map_err(closed)? } else { u64::from(from.read_u8().await.map_err(closed)?) };
        // Commands (the handshake's READY, subscriptions) are small; every
        // frame, and the sum of a message's frames, stays under the cap.
        let limit = max_message.saturating_add(4096);
        if len > limit {
            return Err(GuardError::FrameTooLarge(len, limit));
        }
        if flags & COMMAND == 0 {
            message_bytes = message_bytes.saturating_add(len);
            if message_bytes > limit {
                return Err(GuardError::MessageTooLarge(limit));
            }
            if flags & MORE == 0 {
                message_bytes = 0;
            }
        }
        let mut header = vec![flags];
        if flags & LONG != 0 {
            header.extend_from_slice(&len.to_be_bytes());
        } else {
            header.push(len as u8);
        }
        to.write_all(&header).await.map_err(closed)?;
        let mut left = len;
        while left > 0 {
            let n = left.min(body.len() as u64) as usize;
            from.read_exact(&mut body[..n]).await.map_err(closed)?;
            to.write_all(&body[..n]).await.map_err(closed)?;
            left -= n as u64;
        }
    }
}

/// Serves one public TCP port in front of the zeromq socket at `inner`.
pub async fn serve(listener: TcpListener, inner: PathBuf, max_message: u64) {
    loop {
        let (peer, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("accept: {e}");
                // Out of file descriptors, say: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            match relay(peer, &inner, max_message).await {
                Ok(()) => {}
                Err(e) if e.is_routine() => tracing::debug!("the connection from {addr} ended: {e}"),
                Err(e) => tracing::warn!("closed the connection from {addr}: {e}"),
            }
        });
    }
}

async fn relay(peer: TcpStream, inner: &Path, max_message: u64) -> Result<(), GuardError> {
    let _ = peer.set_nodelay(true);
    let kernel = UnixStream::connect(inner).await.map_err(|_| GuardError::KernelClosed)?;
    let (peer_read, mut peer_write) = peer.into_split();
    let (kernel_read, kernel_write) = kernel.into_split();
    // The kernel's side is trusted: copied as is.
    let outbound = async move {
        let mut kernel_read = kernel_read;
        let _ = tokio::io::copy(&mut kernel_read, &mut peer_write).await;
        let _ = peer_write.shutdown().await;
    };
    let inbound = copy_checked(peer_read, kernel_write, max_message);
    tokio::select! {
        r = inbound => match r {
            Err(GuardError::Closed) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        },
        () = outbound => Ok(()),
    }
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

    async fn run(input: Vec<u8>, max: u64) -> (Result<(), GuardError>, Vec<u8>) {
        let mut out = Vec::new();
        let r = copy_checked(&input[..], &mut out, max).await;
        (r, out)
    }

    #[tokio::test]
    async fn passes_frames_through_unchanged() {
        let mut input = vec![0xffu8; GREETING_BYTES];
        input.extend(frame(COMMAND, b"\x05READY"));
        input.extend(frame(MORE, b"<IDS|MSG>"));
        input.extend(frame(0, &vec![b'x'; 1000]));
        let (r, out) = run(input.clone(), 10_000).await;
        assert_eq!(r, Err(GuardError::Closed));
        assert_eq!(out, input);
    }

    #[tokio::test]
    async fn refuses_a_huge_claim_before_reading_it() {
        let mut input = vec![0xffu8; GREETING_BYTES];
        input.push(LONG);
        input.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let (r, out) = run(input, 1 << 20).await;
        assert!(matches!(r, Err(GuardError::FrameTooLarge(len, _)) if len == 1 << 40), "{r:?}");
        assert_eq!(out.len(), GREETING_BYTES, "nothing of the frame was passed on");
    }

    #[tokio::test]
    async fn refuses_a_message_whose_frames_add_up_over_the_cap() {
        let mut input = vec![0xffu8; GREETING_BYTES];
        for _ in 0..10 {
            input.extend(frame(MORE, &[b'y'; 3000]));
        }
        let (r, _) = run(input, 20_000).await;
        assert!(matches!(r, Err(GuardError::MessageTooLarge(_))), "{r:?}");
    }

    #[tokio::test]
    async fn a_connection_after_the_kernel_closed_is_routine() {
        let dir = std::env::temp_dir().join(format!("sd-guard-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await });
        let (peer, _) = listener.accept().await.unwrap();
        // No socket at this path: the kernel has shut down.
        let r = relay(peer, &dir.join("gone"), 1 << 20).await;
        assert_eq!(r, Err(GuardError::KernelClosed));
        assert!(r.unwrap_err().is_routine());
        assert!(GuardError::Closed.is_routine());
        assert!(!GuardError::FrameTooLarge(1 << 40, 1 << 20).is_routine());
        assert!(!GuardError::MessageTooLarge(1 << 20).is_routine());
        drop(client.await);
        let _ = std::fs::remove_dir(&dir);
    }

    #[tokio::test]
    async fn the_count_restarts_with_each_message() {
        let mut input = vec![0xffu8; GREETING_BYTES];
        for _ in 0..10 {
            input.extend(frame(0, &[b'y'; 3000]));
        }
        let (r, out) = run(input.clone(), 20_000).await;
        assert_eq!(r, Err(GuardError::Closed));
        assert_eq!(out, input);
    }
}
