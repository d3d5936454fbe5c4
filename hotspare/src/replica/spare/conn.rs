//! One connection to the spare: the handshake while the peer proves it knows the key, then an
//! authenticated session whose messages go to the protocol core. Non-blocking throughout: bytes
//! are fed as they arrive, however few.

use super::super::io::OutBuf;
use super::super::wire::Key;
use hotspare_proto::codec::{
    Opener, Sealer, ServerHandshake, ServerStep, WireError, VERSION_NOTICE,
};
use hotspare_proto::spare::{ConnId, Spare};
use hotspare_proto::Time;
use mio::net::TcpStream;
use std::time::Instant;

/// Where a connection is.
pub(super) enum Phase {
    /// Proving it knows the key, before the deadline.
    Handshake(ServerHandshake, Instant),
    /// Authenticated.
    Session(Opener, Sealer),
}

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) peer: String,
    pub(super) phase: Phase,
    /// Bytes sealed and not yet written (the socket took less).
    out: OutBuf,
    /// Close once `out` is written.
    pub(super) closing: bool,
}

impl Conn {
    /// A connection that has just been accepted.
    pub(super) fn new(
        stream: TcpStream,
        peer: String,
        key: &Key,
        nonce: [u8; 32],
        deadline: Instant,
    ) -> Conn {
        Conn {
            stream,
            peer,
            phase: Phase::Handshake(ServerHandshake::new(key, nonce), deadline),
            out: OutBuf::default(),
            closing: false,
        }
    }

    pub(super) fn in_handshake(&self) -> bool {
        matches!(self.phase, Phase::Handshake(..))
    }

    /// Bytes waiting to be written.
    pub(super) fn unsent(&self) -> usize {
        self.out.unsent()
    }

    /// Writes what is buffered, as far as the socket takes it; `Err` if the connection broke.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush(&mut self.stream)
    }

    /// Seals `msg` for the peer and writes what the socket takes (only in a session).
    pub(super) fn send(&mut self, term: u64, msg: &hotspare_proto::Msg) {
        if let Phase::Session(_, sealer) = &mut self.phase {
            sealer.seal(term, msg, self.out.vec());
            if self.flush().is_err() {
                self.broken();
            }
        }
    }

    /// The connection is broken: nothing more will be written.
    pub(super) fn broken(&mut self) {
        self.closing = true;
        self.out.clear();
    }

    /// Feeds received bytes: through the handshake, then as messages into the core.
    /// `Err(why)`: drop the connection.
    pub(super) fn feed(
        &mut self,
        core: &mut Spare,
        now: Time,
        id: ConnId,
        bytes: &[u8],
    ) -> Result<(), String> {
        if self.closing {
            return Ok(());
        }
        let rest = match &mut self.phase {
            Phase::Handshake(hs, _) => match hs.feed(bytes).map_err(|e| {
                if matches!(e, WireError::Version { .. }) {
                    // Tell the primary which version we speak (best effort), so that its log
                    // says it too.
                    self.out.vec().extend_from_slice(&VERSION_NOTICE);
                }
                e.to_string()
            }) {
                Err(why) => {
                    let _ = self.flush();
                    return Err(why);
                }
                Ok(step) => match step {
                    ServerStep::More => return Ok(()),
                    ServerStep::Reply(r) => {
                        self.out.vec().extend_from_slice(&r);
                        return self.flush().map_err(|e| e.to_string());
                    }
                    ServerStep::Done(session, rest) => {
                        self.phase = Phase::Session(session.opener, session.sealer);
                        core.handle_open(now, id);
                        rest
                    }
                },
            },
            Phase::Session(..) => bytes.to_vec(),
        };
        let Phase::Session(opener, _) = &mut self.phase else {
            unreachable!("a session from here on")
        };
        opener.push(&rest);
        while let Some((term, msg)) = opener.next_msg().map_err(|e| e.to_string())? {
            core.handle_msg(now, id, term, msg);
        }
        Ok(())
    }

    /// Why a connection that closed during its handshake is refused.
    pub(super) fn refusal(&self, why: String) -> String {
        match &self.phase {
            Phase::Handshake(hs, _) if hs.replied() && why == "closed by the peer" => {
                "authentication failed: the peer hung up on our proof (it does not know the shared key)".into()
            }
            _ => why,
        }
    }
}
