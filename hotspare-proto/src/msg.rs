//! The messages of the replication protocol. Every message travels in an authenticated
//! envelope that also carries its sender's term ([`crate::codec`]).

use serde::{Deserialize, Serialize};

/// Identity of a history of checkpoints: chosen at random when a program starts fresh, kept by
/// every program resumed from one of its images. Two images of different lineages are two
/// different programs' states, whatever their sequence numbers say.
pub type Lineage = [u8; 16];

/// What a checkpoint stream declares before its bytes: the spare refuses a stream that cannot
/// apply without writing a byte of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// The checkpoint.
    pub seq: u64,
    /// The checkpoint it applies on top of (0: full).
    pub base_seq: u64,
}

/// When the spare acknowledges a checkpoint: the primary's choice of durability, stated in its
/// [`Msg::Hello`]. Either way the spare first validates the whole stream (every CRC, the chain
/// onto its durable or queued tip, the declared header, executable, lineage and term), so it
/// never acknowledges what it will not apply; the levels differ in what the acknowledgement
/// survives (`docs/replication.md`, "Durability levels").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckLevel {
    /// On receipt: as soon as the spare holds the whole stream validated, before its `fsync`.
    /// Survives the death of either machine, not of both at once (nor a spare crash followed
    /// by the primary's death before the next full checkpoint reached the restarted spare).
    Received,
    /// After `fsync`: once the stream is durable on the spare's disk. Also survives both
    /// machines losing power.
    #[default]
    Fsynced,
}

impl AckLevel {
    /// The name used in configuration and status files.
    pub fn as_str(self) -> &'static str {
        match self {
            AckLevel::Received => "received",
            AckLevel::Fsynced => "fsynced",
        }
    }
}

impl std::fmt::Display for AckLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A durability level that is neither `received` nor `fsynced`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability level '{0}' (received, fsynced)")]
pub struct UnknownAckLevel(pub String);

impl std::str::FromStr for AckLevel {
    type Err = UnknownAckLevel;
    fn from_str(s: &str) -> Result<AckLevel, UnknownAckLevel> {
        match s {
            "received" => Ok(AckLevel::Received),
            "fsynced" => Ok(AckLevel::Fsynced),
            other => Err(UnknownAckLevel(other.to_string())),
        }
    }
}

/// The messages of the replication protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Primary → spare, first message: who is connecting.
    Hello {
        /// Identity of the primary's executable.
        exe_id: [u8; 32],
        /// Its pid (for logs and status).
        pid: u32,
        /// Its lineage.
        lineage: Lineage,
        /// When it wants its checkpoints acknowledged.
        ack: AckLevel,
    },
    /// Spare → primary: the spare's image (reply to Hello and to StatusRequest).
    Status {
        /// The spare's term.
        term: u64,
        /// Sequence of its last durable checkpoint (0: none).
        seq: u64,
        /// Sequence of the last checkpoint applied to its data files.
        applied: u64,
        /// Milliseconds since the spare last renewed a primary's lease (u64::MAX: never).
        since_grant_ms: u64,
        /// The spare's detection time in microseconds: it never takes over sooner than this
        /// after renewing a lease, so the primary keeps its own lease shorter (with a margin
        /// for clock drift).
        detection_us: u64,
    },
    /// Primary → spare: checkpoint `seq` starts; its chunks follow.
    StreamStart(StreamHeader),
    /// Primary → spare: the next bytes of checkpoint stream `seq`.
    Chunk {
        /// The checkpoint being sent.
        seq: u64,
        /// Stream bytes (as one byte string: the same postcard encoding as a sequence of
        /// `u8`, without encoding and decoding them one by one).
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Primary → spare: stream `seq` is complete; make it durable.
    EndStream {
        /// The checkpoint.
        seq: u64,
    },
    /// Spare → primary: checkpoint `seq` is validated on the spare and, at the primary's
    /// [`AckLevel`], either held by it (`Received`) or durable on its disk (`Fsynced`).
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
    /// Primary → spare, every H: the primary is alive and asks for its lease.
    Heartbeat {
        /// Echoed in the answer: the primary anchors the lease to when it *sent* this.
        id: u64,
        /// The primary's latest checkpoint.
        seq: u64,
    },
    /// Spare → primary: answer to heartbeat `id`; renews the lease.
    HeartbeatAck {
        /// The heartbeat answered.
        id: u64,
        /// The spare's durable sequence.
        seq: u64,
    },
    /// Spare → primary: a newer term exists; the primary is fenced and must stop serving.
    Fenced {
        /// The spare's term.
        term: u64,
    },
    /// Spare → primary: this spare will not protect this primary (another lineage's image,
    /// another executable); the primary gets no lease from it.
    Refused {
        /// Why.
        reason: String,
    },
    /// `hotspare status` → spare.
    StatusRequest,
    /// `hotspare switchover` → spare, first message: move the primary role to this spare.
    SwitchoverRequest,
    /// Spare → `hotspare switchover`: the admitted primary (pid) was asked to hand over.
    SwitchoverStarted {
        /// The primary's pid.
        pid: u32,
    },
    /// Spare → primary: stop serving, and hand over once a checkpoint taken after stopping
    /// is acknowledged.
    HandOver,
    /// Primary → spare: this primary serves no more, for good; checkpoint `seq` (acknowledged)
    /// holds everything it ever acknowledged. The spare takes over without waiting for silence.
    HandedOver {
        /// The final checkpoint.
        seq: u64,
    },
    /// Primary → spare: a whole checkpoint stream in one message — what `StreamStart`, one
    /// `Chunk` and `EndStream` say, for a stream that fits one chunk (an every-write
    /// checkpoint is a few hundred bytes: one envelope instead of three). The spare handles it
    /// exactly as those three.
    Stream {
        /// The checkpoint and its base.
        header: StreamHeader,
        /// All of its bytes (a byte string, as in `Chunk`).
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serde_bytes` on `Chunk::bytes` must not change the wire: the same bytes as a postcard
    /// sequence of `u8` (what older peers and the committed fuzz corpora hold).
    #[test]
    fn chunk_bytes_are_encoded_as_a_sequence_of_u8() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let ours = postcard::to_allocvec(&Msg::Chunk {
            seq: 77,
            bytes: data.clone(),
        })
        .unwrap();
        let variant = ours[0];
        let plain = postcard::to_allocvec(&(u32::from(variant), 77u64, data.clone())).unwrap();
        assert_eq!(ours, plain);
        match postcard::from_bytes::<Msg>(&plain).unwrap() {
            Msg::Chunk { seq, bytes } => assert_eq!((seq, bytes), (77, data)),
            other => panic!("decoded as {other:?}"),
        }
    }
}
