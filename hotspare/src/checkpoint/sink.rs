//! Where checkpoints go, and the writer thread that takes them there.

use super::local::LocalImage;
use super::{Captured, Completion, Job, Shared};
use crate::error::{Error, Result};
use crate::identity::ExeId;
use crate::image::delta::Shadow;
use crate::image::format::Begin;
use crate::image::{write_stream, ImageDir, Run};
use crate::replica::sender::{Remote, Source};
use hotspare_proto::StreamHeader;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

/// Where checkpoints go: the local image directory, or a spare (the directory then only spools
/// each stream until the spare has acknowledged it).
pub(crate) enum Sink {
    /// Made durable in the image directory and applied to it.
    Local(LocalImage),
    /// Sent to a spare.
    Remote {
        /// Spool for streams in flight (`wal/<seq>.tmp`, never applied locally).
        spool: ImageDir,
        /// The link.
        remote: Remote,
    },
}

impl Sink {
    /// Where `config` sends checkpoints: the spare when one is configured (starting the link to
    /// it), else the image directory.
    pub(crate) fn for_config(
        config: &crate::Config,
        image: ImageDir,
        exe: &ExeId,
        lineage: [u8; 16],
    ) -> Result<Sink> {
        let Some(addr) = &config.spare else {
            return Ok(Sink::Local(LocalImage::new(image)?));
        };
        let key_file = config
            .key_file
            .as_ref()
            .ok_or_else(|| Error::Config("a spare needs key_file (HOTSPARE_KEY_FILE)".into()))?;
        let key =
            crate::replica::wire::load_key(key_file).map_err(|e| Error::Config(e.to_string()))?;
        let on_fence_exit = config.exit_on_fence();
        let remote = crate::replica::sender::Remote::start(crate::replica::RemoteConfig {
            addr: addr.clone(),
            key,
            heartbeat: std::time::Duration::from_millis(config.heartbeat_ms.max(1)),
            lease: std::time::Duration::from_millis(config.lease_ms.max(1)),
            ack_timeout: std::time::Duration::from_millis(config.ack_timeout_ms.max(1)),
            spare_wait: std::time::Duration::from_millis(config.spare_wait_ms),
            exit_when_fenced: on_fence_exit,
            lineage,
            term: config.term,
            exe_id: exe.0,
            status_file: Some(image.path().join("status")),
            ack: config.durability,
            arbiter: config.arbiter()?,
        })
        .map_err(|e| Error::Config(format!("starting the link to the spare: {e}")))?;
        Ok(Sink::Remote {
            spool: image,
            remote,
        })
    }

    pub(super) fn dir(&self) -> &ImageDir {
        match self {
            Sink::Local(local) => local.dir(),
            Sink::Remote { spool, .. } => spool,
        }
    }

    /// Makes the stream of checkpoint `seq` durable, reporting to `done` when it is: applied to
    /// the local image (here, before returning), or sent to the spare (the link reports when
    /// it is acknowledged; this returns as soon as the stream is handed over).
    fn deliver(&mut self, header: StreamHeader, stream: Stream, exe: &ExeId, done: Completion) {
        match self {
            Sink::Local(local) => {
                let seq = header.seq;
                crate::probe::mark(seq, crate::probe::Stage::Sent);
                let bytes = match stream {
                    Stream::Bytes(b) => Some(b),
                    Stream::Spooled => None,
                };
                let r = local.commit(seq, bytes, exe);
                crate::probe::mark(seq, crate::probe::Stage::Acked);
                done.finish(r);
            }
            Sink::Remote { spool, remote } => {
                let source = match stream {
                    Stream::Spooled => Source::File(spool.wal_path(header.seq, "tmp")),
                    Stream::Bytes(b) => Source::Memory(b),
                };
                remote.send(header, source, done);
            }
        }
    }
}

/// A checkpoint stream as the writer has it.
enum Stream {
    /// Written to `wal/<seq>.tmp` (the Fork strategy's child wrote it there).
    Spooled,
    /// Encoded in memory.
    Bytes(Vec<u8>),
}

/// The writer thread: encodes each captured checkpoint, gives its staging buffer back at once
/// (so the next capture can start), and delivers it.
pub(super) fn writer(
    mut sink: Sink,
    exe: ExeId,
    jobs: Receiver<Job>,
    back: Sender<Vec<u8>>,
    _shared: Arc<Shared>,
) {
    // What the spare holds of every page sent, for sending deltas (only to a spare: the local
    // image is written whole pages, where a delta would save nothing but a copy).
    let mut shadow = matches!(sink, Sink::Remote { .. }).then(Shadow::default);
    // `HOTSPARE_DELTA_STATS=N`: a line of delta counters on stderr every N streams (figures).
    let stats_every: u64 = std::env::var("HOTSPARE_DELTA_STATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for job in jobs {
        match job {
            Job::Copied {
                begin,
                runs,
                staging,
                done,
            } => {
                crate::probe::mark(begin.seq, crate::probe::Stage::Writer);
                let header = StreamHeader {
                    seq: begin.seq,
                    base_seq: begin.base_seq,
                };
                let mut bytes = Vec::with_capacity(staging.len() / 8 + 4096);
                let encoded = match shadow.as_mut() {
                    Some(sh) => {
                        sh.encode(&mut bytes, &begin, runs_of(&runs, &staging));
                        if stats_every > 0 && sh.stats.streams % stats_every == 0 {
                            eprintln!(
                                "hotspare: delta stats {:?} shadow_pages {} shadow_bytes {}",
                                sh.stats,
                                sh.pages(),
                                sh.memory_bytes()
                            );
                        }
                        Ok(())
                    }
                    None => encode_copied(&mut bytes, &begin, &runs, &staging),
                };
                if back.send(staging).is_err() {
                    return;
                }
                match encoded {
                    Ok(()) => {
                        crate::probe::mark(header.seq, crate::probe::Stage::Delivered);
                        sink.deliver(header, Stream::Bytes(bytes), &exe, done)
                    }
                    Err(why) => done.finish(Err(why)),
                }
            }
            Job::Forked {
                seq,
                base_seq,
                snapshot,
                done,
            } => {
                // The child wrote whole pages the shadow never saw.
                if let Some(sh) = shadow.as_mut() {
                    sh.reset();
                }
                let r = match snapshot.wait() {
                    Ok(o) if o.is_success() => Ok(()),
                    Ok(o) => Err(format!("the cptfork child ended with {o:?}")),
                    Err(e) => Err(e.to_string()),
                };
                match r {
                    Ok(()) => {
                        sink.deliver(StreamHeader { seq, base_seq }, Stream::Spooled, &exe, done)
                    }
                    Err(why) => {
                        let _ = sink.dir().remove_spool(seq);
                        done.finish(Err(why));
                    }
                }
            }
        }
    }
}

/// The runs of a Copy capture.
fn runs_of<'a>(runs: &'a [Captured], staging: &'a [u8]) -> impl Iterator<Item = Run<'a>> + 'a {
    runs.iter().map(|c| {
        if c.zero {
            Run::Zero(c.addr, c.len as u64)
        } else {
            Run::Data(c.addr, &staging[c.offset..c.offset + c.len])
        }
    })
}

/// Encodes a Copy capture as a checkpoint stream.
fn encode_copied(
    out: &mut Vec<u8>,
    begin: &Begin,
    runs: &[Captured],
    staging: &[u8],
) -> Result<(), String> {
    write_stream(out, begin, runs_of(runs, staging))
        .map(|_| ())
        .map_err(|e| format!("encoding checkpoint {}: {e}", begin.seq))
}
