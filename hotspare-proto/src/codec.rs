//! The authenticated connection, as byte-in / byte-out state machines: the handshake and the
//! message envelope. No socket inside: a driver feeds whatever bytes arrived (one at a time
//! from a slow peer, or megabytes at once) and writes out whatever these return.
//!
//! **Handshake** (shared secret `K`; nonces supplied by the driver from the OS):
//! ```text
//! primary → spare   "HSRP" | version | nonce_p[32]
//! spare → primary   nonce_s[32] | HMAC(K, "spare"   | "HSRP" | version | nonce_p | nonce_s)
//! primary → spare   HMAC(K, "primary" | "HSRP" | version | nonce_p | nonce_s)
//! session key       S = HMAC(K, "session" | nonce_p | nonce_s)
//! ```
//! Each side proves it knows `K` before the other sends anything else; fresh nonces on both
//! sides make every connection's session key new, so a recorded connection cannot be replayed.
//! Both proofs cover the magic and version as each side saw them (the primary: what it sent;
//! the spare: what it received), so a hello whose version was rewritten on the way fails the
//! handshake instead of starting a session at a version the primary did not ask for.
//!
//! **Messages** are `len: u32 | body | mac[16]`, `body = term: varint | postcard(Msg)`,
//! `mac = HMAC-SHA256(S, direction | counter: u64 | len | body)` truncated to its first 16
//! bytes (HMAC-SHA-256-128, as RFC 4868 uses it for IPsec; RFC 2104 §5 allows truncation to
//! half the output): per-direction counters reject reordered, replayed or reflected messages.
//! A forgery succeeds with probability 2⁻¹²⁸ per try, and each failed try ends the connection.
//! The handshake's proofs stay full-length (32 bytes, once per connection). HMAC authenticates;
//! it does not encrypt.
//!
//! **Versions.** A spare refuses a hello of another version with [`WireError::Version`] (one
//! line naming both versions) and answers it with its own magic and version ([`VERSION_NOTICE`])
//! before it closes, so the primary can say the same ([`ClientHandshake::closed`]).

use crate::msg::Msg;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: [u8; 4] = *b"HSRP";
/// Protocol version (2: lineage, heartbeat ids, stream headers; 3: the durability level in
/// `Hello`, so a primary of version 2 is refused at its first bytes instead of failing to
/// decode its hello; 4: 16-byte message MACs, the term as a varint, [`Msg::Stream`] for a
/// stream in one message, and wire streams of format 4; 5: the handshake proofs cover the
/// magic and version, so a peer of version 4, whose proofs do not, is refused by its version
/// instead of failing authentication; 6: wire streams of format 5, whose check takes each delta
/// page's hash instead of the page, so a spare of version 5 would refuse every delta).
pub const VERSION: u8 = 6;
/// Bytes of a message's MAC (HMAC-SHA256 truncated).
pub const MAC_LEN: usize = 16;
/// What a spare sends a peer whose hello has another version, before it closes: its magic and
/// version.
pub const VERSION_NOTICE: [u8; 5] = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION];
/// Largest message accepted (stream chunks are at most 1 MiB + framing).
pub const MAX_MESSAGE: u32 = 4 << 20;
/// Smallest body: a one-byte term and a one-byte message.
pub const MIN_BODY: u32 = 2;
/// Bytes the primary sends first.
pub const HELLO_LEN: usize = 5 + 32;

/// A broken, hostile or unauthenticated connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The peer is not speaking this protocol.
    #[error("peer is not a Hot Spare peer (bad magic)")]
    BadHello,
    /// The peer speaks another version of this protocol.
    #[error("protocol version mismatch: the peer speaks Hot Spare protocol version {peer}, this build speaks {ours}; run the same release on the primary and the spare")]
    Version {
        /// The peer's version.
        peer: u8,
        /// Ours ([`VERSION`]).
        ours: u8,
    },
    /// The spare closed the connection at our hello without a word: a spare of a version older
    /// than 4 (which does not send [`VERSION_NOTICE`]), a spare that refused the connection
    /// before answering (too many handshakes in progress, its handshake deadline, stopping),
    /// or something else listening there. Not necessarily a version problem.
    #[error("the spare closed the connection at our hello without answering: another protocol version (a spare older than version 4 sends no version notice; ours is {VERSION}), or the spare refused the connection (handshake limit, handshake deadline, stopping), or it is not a Hot Spare spare; the spare's log says which")]
    HelloRefused,
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
    #[error("message of {0} bytes refused (limits {MIN_BODY} to {MAX_MESSAGE})")]
    TooLarge(u32),
    /// A well-authenticated message that does not decode.
    #[error("undecodable message: {0}")]
    Decode(String),
}

/// The shared secret (or a session key derived from it).
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from bytes.
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

/// Constant-time comparison of two MACs.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The two directions of an authenticated session.
#[derive(Debug)]
pub struct Session {
    /// Seals what we send.
    pub sealer: Sealer,
    /// Opens what we receive.
    pub opener: Opener,
}

fn session(key: &Key, np: &[u8; 32], ns: &[u8; 32], send: u8, recv: u8) -> Session {
    let s = Key(key.mac(&[b"session", np, ns]).to_vec());
    Session {
        sealer: Sealer {
            key: s.clone(),
            dir: send,
            counter: 0,
        },
        opener: Opener {
            key: s,
            dir: recv,
            counter: 0,
            buf: Vec::new(),
            start: 0,
        },
    }
}

/// The primary's side of the handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    key: Key,
    np: [u8; 32],
    /// The magic and version we sent (covered by both proofs).
    head: [u8; 5],
    got: Vec<u8>,
}

impl ClientHandshake {
    /// Starts a handshake with our nonce; returns it and the bytes to send first.
    pub fn new(key: &Key, nonce: [u8; 32]) -> (ClientHandshake, Vec<u8>) {
        let mut hello = MAGIC.to_vec();
        hello.push(VERSION);
        hello.extend_from_slice(&nonce);
        let h = ClientHandshake {
            key: key.clone(),
            np: nonce,
            head: VERSION_NOTICE,
            got: Vec::new(),
        };
        (h, hello)
    }

    /// Feeds received bytes. `Ok(None)`: more needed. `Ok(Some((proof, session, rest)))`: send
    /// `proof`, then use the session; `rest` are bytes that already belong to it.
    #[allow(clippy::type_complexity)]
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<(Vec<u8>, Session, Vec<u8>)>, WireError> {
        self.got.extend_from_slice(bytes);
        if self.got.len() < 64 {
            return Ok(None);
        }
        let ns: [u8; 32] = self.got[..32].try_into().expect("32 bytes");
        let want = self.key.mac(&[b"spare", &self.head, &self.np, &ns]);
        if !same(&want, &self.got[32..64]) {
            return Err(WireError::AuthFailed);
        }
        let proof = self
            .key
            .mac(&[b"primary", &self.head, &self.np, &ns])
            .to_vec();
        let s = session(&self.key, &self.np, &ns, b'P', b'S');
        let rest = self.got[64..].to_vec();
        Ok(Some((proof, s, rest)))
    }

    /// Why the spare closed the connection before the handshake ended: another version (its
    /// [`VERSION_NOTICE`]), or [`WireError::HelloRefused`] for nothing at all (another version
    /// too old to send a notice, or a refusal before the hello was answered), else `None` (the
    /// driver's own reason stands).
    pub fn closed(&self) -> Option<WireError> {
        match self.got.as_slice() {
            [] => Some(WireError::HelloRefused),
            [m0, m1, m2, m3, v] if [*m0, *m1, *m2, *m3] == MAGIC && *v != VERSION => {
                Some(WireError::Version {
                    peer: *v,
                    ours: VERSION,
                })
            }
            _ => None,
        }
    }
}

/// The spare's side of the handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    key: Key,
    ns: [u8; 32],
    np: Option<[u8; 32]>,
    /// The magic and version received (covered by both proofs).
    head: [u8; 5],
    got: Vec<u8>,
}

/// What the spare's handshake wants next.
#[derive(Debug)]
pub enum ServerStep {
    /// More bytes are needed.
    More,
    /// Send these bytes (our nonce and proof), then keep feeding.
    Reply(Vec<u8>),
    /// The primary proved it knows the key: the session, and bytes that already belong to it.
    Done(Session, Vec<u8>),
}

impl ServerHandshake {
    /// A handshake that will answer with `nonce`.
    pub fn new(key: &Key, nonce: [u8; 32]) -> ServerHandshake {
        ServerHandshake {
            key: key.clone(),
            ns: nonce,
            np: None,
            head: [0; 5],
            got: Vec::new(),
        }
    }

    /// Whether our proof went out: a peer that hangs up after it did not accept our proof,
    /// i.e. it does not know the key.
    pub fn replied(&self) -> bool {
        self.np.is_some()
    }

    /// Bytes received so far and not consumed (a cap on this bounds a slow peer's memory).
    pub fn buffered(&self) -> usize {
        self.got.len()
    }

    /// Feeds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<ServerStep, WireError> {
        self.got.extend_from_slice(bytes);
        if self.np.is_none() {
            if self.got.len() >= 4 && self.got[..4] != MAGIC {
                return Err(WireError::BadHello);
            }
            if self.got.len() >= 5 && self.got[4] != VERSION {
                return Err(WireError::Version {
                    peer: self.got[4],
                    ours: VERSION,
                });
            }
            if self.got.len() < HELLO_LEN {
                return Ok(ServerStep::More);
            }
            let np: [u8; 32] = self.got[5..HELLO_LEN].try_into().expect("32 bytes");
            self.head = self.got[..5].try_into().expect("5 bytes");
            self.got.drain(..HELLO_LEN);
            self.np = Some(np);
            let mut reply = self.ns.to_vec();
            reply.extend_from_slice(&self.key.mac(&[b"spare", &self.head, &np, &self.ns]));
            return Ok(ServerStep::Reply(reply));
        }
        let np = self.np.expect("set above");
        if self.got.len() < 32 {
            return Ok(ServerStep::More);
        }
        let want = self.key.mac(&[b"primary", &self.head, &np, &self.ns]);
        if !same(&want, &self.got[..32]) {
            return Err(WireError::AuthFailed);
        }
        let rest = self.got[32..].to_vec();
        Ok(ServerStep::Done(
            session(&self.key, &np, &self.ns, b'S', b'P'),
            rest,
        ))
    }
}

/// Seals messages for one direction of a session.
#[derive(Debug)]
pub struct Sealer {
    key: Key,
    dir: u8,
    counter: u64,
}

impl Sealer {
    /// Appends the envelope of `msg`, stamped with `term`, to `out`; returns its length.
    pub fn seal(&mut self, term: u64, msg: &Msg, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let body =
            postcard::to_extend(&(term, msg), std::mem::take(out)).expect("postcard encodes Msg");
        *out = body;
        let len = u32::try_from(out.len() - start - 4).expect("messages are below 4 GiB");
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        let mac = self.key.mac(&[
            &[self.dir],
            &self.counter.to_le_bytes(),
            &len.to_le_bytes(),
            &out[start + 4..],
        ]);
        self.counter += 1;
        out.extend_from_slice(&mac[..MAC_LEN]);
        out.len() - start
    }
}

/// Opens messages of one direction of a session, from bytes fed in any pieces.
#[derive(Debug)]
pub struct Opener {
    key: Key,
    dir: u8,
    counter: u64,
    buf: Vec<u8>,
    start: usize,
}

impl Opener {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (1 << 20) && self.start > self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet opened.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete message: `(sender's term, message)`, `Ok(None)` if it has not all
    /// arrived. Any forged, replayed, reordered or oversized message is an error after which
    /// the connection must be dropped.
    pub fn next_msg(&mut self) -> Result<Option<(u64, Msg)>, WireError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_le_bytes(avail[..4].try_into().expect("4 bytes"));
        if !(MIN_BODY..=MAX_MESSAGE).contains(&n) {
            return Err(WireError::TooLarge(n));
        }
        let total = 4 + n as usize + MAC_LEN;
        if avail.len() < total {
            return Ok(None);
        }
        let body = &avail[4..4 + n as usize];
        let want = self
            .key
            .mac(&[&[self.dir], &self.counter.to_le_bytes(), &avail[..4], body]);
        if !same(&want[..MAC_LEN], &avail[4 + n as usize..total]) {
            return Err(WireError::BadMac {
                counter: self.counter,
            });
        }
        self.counter += 1;
        let msg =
            postcard::from_bytes::<(u64, Msg)>(body).map_err(|e| WireError::Decode(e.to_string()));
        self.start += total;
        msg.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k1: &Key, k2: &Key) -> Result<(Session, Session), WireError> {
        let (mut c, hello) = ClientHandshake::new(k1, [1; 32]);
        let mut s = ServerHandshake::new(k2, [2; 32]);
        let mut reply = None;
        // One byte at a time, as a slow peer would send it.
        for b in &hello {
            match s.feed(&[*b])? {
                ServerStep::More => {}
                ServerStep::Reply(r) => reply = Some(r),
                ServerStep::Done(..) => unreachable!(),
            }
        }
        let (proof, cs, _) = c.feed(&reply.expect("reply"))?.expect("done");
        match s.feed(&proof)? {
            ServerStep::Done(ss, rest) => {
                assert!(rest.is_empty());
                Ok((cs, ss))
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn messages_round_trip_and_tampering_is_refused() {
        let k = Key::from_bytes(b"0123456789abcdef");
        let (mut c, mut s) = pair(&k, &k).expect("handshake");
        let mut out = Vec::new();
        c.sealer
            .seal(7, &Msg::Heartbeat { id: 1, seq: 2 }, &mut out);
        c.sealer.seal(7, &Msg::EndStream { seq: 3 }, &mut out);
        for b in &out {
            s.opener.push(&[*b]);
        }
        assert_eq!(
            s.opener.next_msg(),
            Ok(Some((7, Msg::Heartbeat { id: 1, seq: 2 })))
        );
        assert_eq!(
            s.opener.next_msg(),
            Ok(Some((7, Msg::EndStream { seq: 3 })))
        );
        assert_eq!(s.opener.next_msg(), Ok(None));
        // Replay of the first message: its counter is stale.
        let mut again = Vec::new();
        let (mut c2, mut s2) = pair(&k, &k).expect("handshake");
        c2.sealer.seal(1, &Msg::StatusRequest, &mut again);
        let mut flipped = again.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        s2.opener.push(&flipped);
        assert!(matches!(
            s2.opener.next_msg(),
            Err(WireError::BadMac { .. })
        ));
    }

    #[test]
    fn wrong_key_fails_both_ways() {
        let a = Key::from_bytes(b"0123456789abcdef");
        let b = Key::from_bytes(b"fedcba9876543210");
        assert_eq!(pair(&a, &b).err(), Some(WireError::AuthFailed));
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let k = Key::from_bytes(b"0123456789abcdef");
        let (_, mut s) = pair(&k, &k).expect("handshake");
        s.opener.push(&u32::MAX.to_le_bytes());
        assert_eq!(s.opener.next_msg(), Err(WireError::TooLarge(u32::MAX)));
    }
}
