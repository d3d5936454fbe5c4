//! Authenticated messages between a primary and its spare, over one TCP connection.
//!
//! **Handshake** (shared secret `K` from a `0600` key file; nonces from `/dev/urandom`):
//! ```text
//! primary → spare   "HSRP" | version | nonce_p[32]
//! spare → primary   nonce_s[32] | HMAC(K, "spare"   | nonce_p | nonce_s)
//! primary → spare   HMAC(K, "primary" | nonce_p | nonce_s)
//! session key       S = HMAC(K, "session" | nonce_p | nonce_s)
//! ```
//! Each side proves it knows `K` before the other sends anything else; fresh nonces on both
//! sides make every connection's session key new, so a recorded connection cannot be replayed.
//!
//! **Messages** then are `len: u32 | body | mac[32]`, `body = term: u64 | postcard(Msg)`,
//! `mac = HMAC(S, direction | counter: u64 | len | body)`: per-direction counters reject
//! reordered, replayed or reflected messages. Every message carries the sender's term (fencing).
//!
//! HMAC-SHA256 is a standard, well-kept construction (`hmac`, `sha2` crates); it authenticates,
//! it does not encrypt: checkpoint contents cross the wire in clear (use a private network).

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: [u8; 4] = *b"HSRP";
const VERSION: u8 = 1;
/// Largest message accepted (stream chunks are at most 1 MiB + framing).
pub const MAX_MESSAGE: u32 = 4 << 20;

/// A broken, hostile or unauthenticated connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer is not speaking this protocol.
    #[error("peer is not a Hot Spare peer (bad magic or version)")]
    BadHello,
    /// The peer does not know the shared secret.
    #[error("authentication failed: the peer does not know the shared key")]
    AuthFailed,
    /// A message failed its MAC (forged, replayed, reordered or damaged).
    #[error("message {counter} fails authentication (forged, replayed or damaged)")]
    BadMac {
        /// Its position in the stream.
        counter: u64,
    },
    /// A message claims an impossible size.
    #[error("message of {0} bytes refused (limit {MAX_MESSAGE})")]
    TooLarge(u32),
    /// A well-authenticated message that does not decode.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// The key file is missing, empty or readable by others.
    #[error("key file {path}: {why}")]
    KeyFile {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// The messages of the replication protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Primary → spare, first message: who is connecting.
    Hello {
        /// Identity of the primary's executable.
        exe_id: [u8; 32],
        /// Its pid (for status output).
        pid: u32,
    },
    /// Spare → primary: the spare's image (reply to Hello and to StatusRequest).
    Status {
        /// The spare's term.
        term: u64,
        /// Sequence of its last complete checkpoint (0: none).
        seq: u64,
        /// Milliseconds since the last heartbeat it received (u64::MAX: none).
        since_heartbeat_ms: u64,
    },
    /// Primary → spare: the next bytes of checkpoint stream `seq`.
    Chunk {
        /// The checkpoint being sent.
        seq: u64,
        /// Stream bytes.
        bytes: Vec<u8>,
    },
    /// Primary → spare: stream `seq` is complete; apply it.
    EndStream {
        /// The checkpoint.
        seq: u64,
    },
    /// Spare → primary: checkpoint `seq` is durable in the spare's image.
    Ack {
        /// The checkpoint.
        seq: u64,
    },
    /// Spare → primary: checkpoint `seq` was refused; the image is unchanged.
    Nack {
        /// The checkpoint.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Primary → spare, every H ms: the primary is alive.
    Heartbeat {
        /// The primary's latest checkpoint.
        seq: u64,
    },
    /// Spare → primary: answer to a heartbeat (renews the primary's lease).
    HeartbeatAck {
        /// The spare's image sequence.
        seq: u64,
    },
    /// Spare → primary: a newer term exists; the primary is fenced and must stop serving.
    Fenced {
        /// The spare's term.
        term: u64,
    },
    /// `hotspare status` → spare.
    StatusRequest,
}

/// The shared secret.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Reads a key file: it must be a regular file with mode `0600` (or stricter) and hold at
    /// least 16 bytes (surrounding whitespace is ignored).
    pub fn load(path: &Path) -> Result<Key, WireError> {
        use std::os::unix::fs::PermissionsExt;
        let err = |why: String| WireError::KeyFile {
            path: path.display().to_string(),
            why,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!("mode is {mode:03o}, must be 600 (chmod 600)")));
        }
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < 16 {
            return Err(err(format!(
                "holds {} bytes, at least 16 are needed",
                trimmed.len()
            )));
        }
        Ok(Key(trimmed.to_vec()))
    }

    /// A key from bytes (tests, embedders).
    pub fn from_bytes(b: &[u8]) -> Key {
        Key(b.to_vec())
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut m =
            <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key size");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }
}

fn nonce() -> std::io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

/// Constant-time comparison of two MACs.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The sending half of an authenticated connection.
#[derive(Debug)]
pub struct SendHalf {
    stream: TcpStream,
    key: Key,
    dir: u8,
    counter: u64,
}

/// The receiving half of an authenticated connection.
#[derive(Debug)]
pub struct RecvHalf {
    stream: TcpStream,
    key: Key,
    dir: u8,
    counter: u64,
}

impl SendHalf {
    /// Sends one message stamped with `term`; returns the bytes put on the wire.
    pub fn send(&mut self, term: u64, msg: &Msg) -> Result<usize, WireError> {
        let mut body = term.to_le_bytes().to_vec();
        body.extend_from_slice(
            &postcard::to_allocvec(msg).map_err(|e| WireError::Decode(e.to_string()))?,
        );
        let len = u32::try_from(body.len()).map_err(|_| WireError::TooLarge(u32::MAX))?;
        let mac = self.key.mac(&[
            &[self.dir],
            &self.counter.to_le_bytes(),
            &len.to_le_bytes(),
            &body,
        ]);
        self.counter += 1;
        let mut out = Vec::with_capacity(4 + body.len() + 32);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&mac);
        self.stream.write_all(&out)?;
        Ok(out.len())
    }

    /// Closes both directions (wakes a receiver blocked on the other half).
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

impl RecvHalf {
    /// Receives one message: `(sender's term, message)`. Any forged, replayed, reordered or
    /// oversized message is an error and the connection must be dropped.
    pub fn recv(&mut self) -> Result<(u64, Msg), WireError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let n = u32::from_le_bytes(len);
        if !(8..=MAX_MESSAGE).contains(&n) {
            return Err(WireError::TooLarge(n));
        }
        let mut body = vec![0u8; n as usize];
        self.stream.read_exact(&mut body)?;
        let mut mac = [0u8; 32];
        self.stream.read_exact(&mut mac)?;
        let want = self
            .key
            .mac(&[&[self.dir], &self.counter.to_le_bytes(), &len, &body]);
        if !same(&want, &mac) {
            return Err(WireError::BadMac {
                counter: self.counter,
            });
        }
        self.counter += 1;
        let term = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let msg = postcard::from_bytes(&body[8..]).map_err(|e| WireError::Decode(e.to_string()))?;
        Ok((term, msg))
    }

    /// The underlying socket (for read timeouts).
    pub fn socket(&self) -> &TcpStream {
        &self.stream
    }
}

fn halves(
    stream: TcpStream,
    session: Key,
    send_dir: u8,
    recv_dir: u8,
) -> Result<(SendHalf, RecvHalf), WireError> {
    let r = stream.try_clone()?;
    Ok((
        SendHalf {
            stream,
            key: session.clone(),
            dir: send_dir,
            counter: 0,
        },
        RecvHalf {
            stream: r,
            key: session,
            dir: recv_dir,
            counter: 0,
        },
    ))
}

/// The primary's side of the handshake.
pub fn connect(mut stream: TcpStream, key: &Key) -> Result<(SendHalf, RecvHalf), WireError> {
    let np = nonce()?;
    let mut hello = MAGIC.to_vec();
    hello.push(VERSION);
    hello.extend_from_slice(&np);
    stream.write_all(&hello)?;
    let mut reply = [0u8; 64];
    stream.read_exact(&mut reply)?;
    let ns: [u8; 32] = reply[..32].try_into().expect("32 bytes");
    let proof: [u8; 32] = reply[32..].try_into().expect("32 bytes");
    if !same(&key.mac(&[b"spare", &np, &ns]), &proof) {
        return Err(WireError::AuthFailed);
    }
    stream.write_all(&key.mac(&[b"primary", &np, &ns]))?;
    let session = Key(key.mac(&[b"session", &np, &ns]).to_vec());
    halves(stream, session, b'P', b'S')
}

/// The spare's side of the handshake.
pub fn accept(mut stream: TcpStream, key: &Key) -> Result<(SendHalf, RecvHalf), WireError> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    if head[..4] != MAGIC || head[4] != VERSION {
        return Err(WireError::BadHello);
    }
    let mut np = [0u8; 32];
    stream.read_exact(&mut np)?;
    let ns = nonce()?;
    let mut reply = ns.to_vec();
    reply.extend_from_slice(&key.mac(&[b"spare", &np, &ns]));
    stream.write_all(&reply)?;
    let mut proof = [0u8; 32];
    // A peer with another key rejects our proof and hangs up before sending its own.
    stream.read_exact(&mut proof).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            WireError::AuthFailed
        }
        _ => WireError::Io(e),
    })?;
    if !same(&key.mac(&[b"primary", &np, &ns]), &proof) {
        return Err(WireError::AuthFailed);
    }
    let session = Key(key.mac(&[b"session", &np, &ns]).to_vec());
    halves(stream, session, b'S', b'P')
}
