//! Where checkpoints go, and the writer thread that takes them there.

use super::{Captured, Completion, Job, Shared};
use crate::error::{Error, Result};
use crate::identity::ExeId;
use crate::image::delta::Shadow;
use crate::image::format::Begin;
use crate::image::{write_stream, ImageDir, Run};
use crate::replica::sender::{Remote, Source};
use hotspare_proto::StreamHeader;
use std::io::Write;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long small streams of a primary without a spare wait in its log before they are applied
/// to the data files together (as a spare's applier does): one `fdatasync` of the log per
/// checkpoint, one round of page writes and `fsync`s per batch.
const APPLY_EVERY: Duration = Duration::from_millis(25);

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
            return Ok(Sink::Local(LocalImage {
                dir: image,
                log: None,
                started: false,
                applied: Instant::now(),
            }));
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
            Sink::Local(LocalImage { dir: d, .. }) | Sink::Remote { spool: d, .. } => d,
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
                let r = local.commit(seq, stream, exe);
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

/// The image directory of a primary without a spare.
pub(crate) struct LocalImage {
    dir: ImageDir,
    /// The log small streams are appended to ([`ImageDir::start_own_log`]).
    log: Option<crate::image::log::Writer>,
    /// The log was started (or could not be, the data files being ahead of the manifest).
    started: bool,
    /// When what the log held was last applied.
    applied: Instant,
}

impl LocalImage {
    /// Makes checkpoint `seq` durable: a small stream on top of an existing image by one
    /// append and flush of the log (applied later, [`LocalImage::apply`]), any other as a WAL
    /// file of its own, applied at once ([`ImageDir::commit_wal`]).
    fn commit(&mut self, seq: u64, stream: Stream, exe: &ExeId) -> Result<(), String> {
        if let Stream::Bytes(bytes) = &stream {
            // Not before the image has a manifest: an image is found by it (the first
            // checkpoint, full, is applied at once).
            if bytes.len() <= crate::image::log::RECORD_MAX && self.dir.lineage().is_some() {
                if !self.started {
                    self.started = true;
                    self.log = self.dir.start_own_log().map_err(|e| e.to_string())?;
                    self.applied = Instant::now();
                }
                if let Some(log) = self.log.as_mut() {
                    return self
                        .dir
                        .append_own(log, seq, bytes)
                        .and_then(|()| self.dir.flush_own(log))
                        .map_err(|e| e.to_string());
                }
            }
        }
        if self.log.is_some() {
            // `commit_wal` supersedes whatever is pending, the log with it: what the log holds
            // is applied first, and its writer let go (the next small stream starts another).
            self.dir.apply_pending().map_err(|e| e.to_string())?;
            self.log = None;
            self.started = false;
        }
        let image = &mut self.dir;
        let r = match stream {
            Stream::Spooled => image
                .commit_wal(seq, Some(exe))
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Stream::Bytes(bytes) => spool_bytes(image, seq, &bytes).and_then(|()| {
                image
                    .commit_wal(seq, Some(exe))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        };
        if r.is_err() {
            // A stream that failed before it was delivered is never completed.
            let _ = image.remove_spool(seq);
        }
        r
    }

    /// How long until the log's records are due to be applied; `None` when it holds none.
    fn apply_due(&self) -> Option<Duration> {
        self.log
            .as_ref()
            .filter(|_| self.dir.tip().is_some_and(|t| t.seq > self.dir.seq()))
            .map(|_| APPLY_EVERY.saturating_sub(self.applied.elapsed()))
    }

    /// Applies what the log holds. A failure (no disk space for the pages, an I/O error) is
    /// reported and tried again later: the records stay durable in the log, and an open of the
    /// directory applies them too.
    fn apply(&mut self) {
        self.applied = Instant::now();
        if let Err(e) = self.dir.apply_pending() {
            eprintln!("hotspare: applying the image's log to its data files: {e} (tried again)");
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
    loop {
        // A primary without a spare applies its log between checkpoints, when it is due.
        let due = match &sink {
            Sink::Local(local) => local.apply_due(),
            Sink::Remote { .. } => None,
        };
        let job = match due {
            Some(wait) => match jobs.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    if let Sink::Local(local) = &mut sink {
                        local.apply();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
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
    // The engine is gone: what the log holds is applied now rather than at the next open.
    if let Sink::Local(local) = &mut sink {
        if local.apply_due().is_some() {
            local.apply();
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

/// Writes an encoded stream to `wal/<seq>.tmp` of the local image.
fn spool_bytes(dir: &ImageDir, seq: u64, bytes: &[u8]) -> Result<(), String> {
    let (path, mut file) = dir.create_wal(seq).map_err(|e| e.to_string())?;
    file.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}
