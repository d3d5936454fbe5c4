//! [`HotSpare`]: start-up (fresh or resume), worker loops, `cpt()`.

use crate::checkpoint::{CommitNotifier, CptStats, Engine, Settings, Shared, Ticket, TicketState};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fds;
use crate::global::Outside;
use crate::heap::Heap;
use crate::identity::{ExeId, LoadedObject};
use crate::image::{ImageDir, ImageError};
use crate::meta::{FdRecord, Metadata};
use kmod_shim::{Range, Shim};
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A worker loop: called with the library handle, on start and again (directly) on resume.
pub type WorkerFn = Arc<dyn Fn(&HotSpare) + Send + Sync>;

/// A signal handler that can be registered by name ([`Builder::signal_handler`]).
pub type SignalFn = extern "C" fn(libc::c_int);

/// Sets up the library: configuration and worker loops, then [`Builder::start`].
pub struct Builder {
    config: Config,
    workers: Vec<(String, WorkerFn)>,
    handlers: Vec<(String, SignalFn)>,
    /// Handlers [`Builder::on_signal`] installs on a fresh start (a resume installs what the
    /// image recorded).
    installs: Vec<(i32, String)>,
}

/// A running Hot Spare program (cheap to clone; all clones are the same program).
#[derive(Clone)]
pub struct HotSpare {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    heap: Heap,
    workers: Vec<(String, WorkerFn)>,
    resumed: Option<ResumeInfo>,
    engine: Mutex<Engine>,
    /// The link to the spare, outside the engine's lock (asked on every request).
    remote: Option<crate::replica::sender::Remote>,
    shared: Arc<Shared>,
    blobs: Mutex<Vec<(String, Vec<u8>)>>,
    fds: Mutex<Vec<fds::Entry>>,
    handlers: Vec<(String, SignalFn)>,
    signals: Mutex<Vec<(i32, String)>>,
    lost: Vec<(String, FdRecord)>,
    /// Where code and libraries are loaded, recorded in every checkpoint when the state may
    /// point into them.
    code: Option<Vec<LoadedObject>>,
}

/// What a resume restored.
#[derive(Debug, Clone)]
pub struct ResumeInfo {
    /// The image directory resumed from.
    pub image_dir: PathBuf,
    /// The checkpoint sequence resumed.
    pub seq: u64,
    /// Time from `start()` to just before the worker loops are called.
    pub restore_time: Duration,
}

/// What [`Builder::start`] found.
#[derive(Debug)]
#[must_use = "a resumed program must run its workers instead of initialising its state"]
pub enum Start {
    /// No image: the program initialises its state, then calls [`HotSpare::run`].
    Fresh(HotSpare),
    /// Resumed from an image ([`HotSpare::resumed`] says which): the state is there already;
    /// the program calls [`HotSpare::run`] and ends when it returns.
    Resumed(HotSpare),
}

impl Start {
    /// The handle of a fresh start; on a resume, runs the workers and returns `None` once they
    /// return, for the caller to end — its initialisation skipped:
    ///
    /// ```ignore
    /// let Some(hs) = HotSpare::builder()?.worker("main", worker).start()?.fresh_or_run() else {
    ///     return Ok(()); // resumed, and the workers have returned
    /// };
    /// ```
    pub fn fresh_or_run(self) -> Option<HotSpare> {
        match self {
            Start::Fresh(hs) => Some(hs),
            Start::Resumed(hs) => {
                hs.run();
                None
            }
        }
    }

    /// Whether this is a resume.
    pub fn is_resumed(&self) -> bool {
        matches!(self, Start::Resumed(_))
    }

    /// The handle, whichever start this was.
    pub fn into_handle(self) -> HotSpare {
        match self {
            Start::Fresh(hs) | Start::Resumed(hs) => hs,
        }
    }
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.workers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("workers", &names)
            .finish()
    }
}

impl std::fmt::Debug for HotSpare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotSpare")
            .field("heap", &self.inner.heap)
            .field("resumed", &self.inner.resumed)
            .finish()
    }
}

impl Builder {
    /// Starts from `config` (e.g. [`Config::load`]).
    pub fn new(config: Config) -> Builder {
        Builder {
            config,
            workers: Vec::new(),
            handlers: Vec::new(),
            installs: Vec::new(),
        }
    }

    /// Registers a worker loop by name. The first one runs on the thread that calls
    /// [`HotSpare::run`], each other one in a thread of its own.
    pub fn worker(mut self, name: &str, f: impl Fn(&HotSpare) + Send + Sync + 'static) -> Builder {
        self.workers.push((name.to_owned(), Arc::new(f)));
        self
    }

    /// Makes a signal handler known by name, so that [`HotSpare::sigreg`] can install it and
    /// resume can install it again (the function's address differs between incarnations; its
    /// name does not).
    pub fn signal_handler(mut self, name: &str, f: SignalFn) -> Builder {
        self.handlers.push((name.to_owned(), f));
        self
    }

    /// [`Builder::signal_handler`] and [`HotSpare::sigreg`] in one: `f` handles `signal` from
    /// the start on, and again in every resumed incarnation.
    pub fn on_signal(mut self, signal: i32, name: &str, f: SignalFn) -> Builder {
        self.installs.push((signal, name.to_owned()));
        self.signal_handler(name, f)
    }

    /// Fresh start, or resume when `HOTSPARE_RESUME=<image dir>` is set; which one it was is
    /// the answer ([`Start`]).
    ///
    /// On a **fresh start** it reserves the checkpoint heap and opens the image directory
    /// (which must not hold an image already): the program initialises its state (e.g.
    /// [`Heap::set_root`]) and calls [`HotSpare::run`].
    ///
    /// On **resume** it maps every range of the last complete checkpoint back at its address
    /// and restores the metadata: the state is the image's, so the program must not initialise
    /// it again; it calls [`HotSpare::run`] (the worker loops, as registered) and ends when they
    /// return. [`Start::fresh_or_run`] does both in one line.
    pub fn start(mut self) -> Result<Start> {
        let installs = std::mem::take(&mut self.installs);
        let hs = self.open()?;
        if hs.resumed().is_some() {
            return Ok(Start::Resumed(hs));
        }
        for (signal, name) in installs {
            hs.sigreg(signal, &name)?;
        }
        Ok(Start::Fresh(hs))
    }

    /// The whole start-up of a program whose state is one root object: starts; on a fresh start
    /// builds the state with `init` — after the heap exists, so with [`crate::GlobalHeap`] its
    /// allocations are checkpoint memory — and makes it the root; on a resume checks that the
    /// image's root is a `T`. Then runs the workers (each finds the state with
    /// `hs.heap().root::<T>()`) and returns when they have returned.
    pub fn serve<T: Send + Sync + 'static>(self, init: impl FnOnce() -> T) -> Result<()> {
        let hs = match self.start()? {
            Start::Fresh(hs) => {
                hs.heap().set_root(init())?;
                hs
            }
            Start::Resumed(hs) if hs.heap().root::<T>().is_none() => {
                return Err(Error::NoRoot(std::any::type_name::<T>()))
            }
            Start::Resumed(hs) => hs,
        };
        hs.run();
        Ok(())
    }

    /// Like [`Builder::start`], but on resume returns the restored program *without* calling
    /// the workers: the caller must then call [`HotSpare::run`] and exit. For embedders that
    /// need the handle before the workers run (the C ABI does).
    ///
    /// With [`crate::GlobalHeap`] as the global allocator (or `fixed_addresses = "on"`), this
    /// first makes sure code and libraries are at fixed addresses: if address-space
    /// randomisation is on, the process re-executes itself once with it off (the program starts
    /// again from `main`, with the same arguments and environment), so call this early. From
    /// its return on, the program's allocations go to the checkpoint heap.
    pub fn open(self) -> Result<HotSpare> {
        // The library's own data (the engine, its buffers) is not state: ordinary memory.
        let _outside = Outside::enter();
        let global = crate::global::is_global_allocator();
        let fixed = match self.config.fixed_addresses {
            crate::FixedAddresses::On => true,
            crate::FixedAddresses::Auto => global,
            crate::FixedAddresses::Off => false,
        };
        if fixed {
            crate::fixed::fix_addresses()?;
        }
        let code = (fixed || global).then(crate::identity::loaded_objects);
        let t0 = Instant::now();
        let hs = match std::env::var_os("HOTSPARE_RESUME") {
            Some(dir) => resume(self, PathBuf::from(dir), t0, code)?,
            None => fresh(self, code)?,
        };
        crate::global::install(hs.inner.heap.base(), hs.inner.heap.size());
        Ok(hs)
    }
}

fn open_shim(config: &Config) -> Result<Shim> {
    Ok(Shim::new(config.backend)?)
}

fn shared() -> Arc<Shared> {
    Shared::new(0)
}

fn fresh(b: Builder, code: Option<Vec<LoadedObject>>) -> Result<HotSpare> {
    let exe = ExeId::current().map_err(|e| Error::Os {
        what: "executable identity".into(),
        source: e,
    })?;
    // An image already there is named as such, also while its program runs (and so holds the
    // directory's lock); recovery may still make one appear.
    let exists = |seq| Error::ImageExists {
        path: b.config.image_dir.clone(),
        seq,
    };
    // The newest durable checkpoint, applied or still in the log.
    match ImageDir::open_read_only(&b.config.image_dir).map_or(0, |i| i.tip().map_or(0, |t| t.seq))
    {
        0 => {}
        seq => return Err(exists(seq)),
    }
    let image = ImageDir::open(&b.config.image_dir)?;
    if image.seq() != 0 {
        return Err(exists(image.seq()));
    }
    let mut shim = open_shim(&b.config)?;
    let heap = Heap::reserve_with(b.config.heap_base, b.config.heap_size, |r| {
        shim.add(&[r])?;
        Ok(())
    })?;
    let heap_range = Range::new(heap.base(), heap.size())?;
    let shared = shared();
    let lineage = crate::image::new_lineage()
        .map_err(|e| Error::Config(format!("choosing a lineage: {e}")))?;
    let settings = Settings {
        exe,
        term: b.config.term,
        lineage,
        strategy: b.config.strategy,
        depth: b.config.depth(),
        shared: shared.clone(),
    };
    let sink = crate::checkpoint::Sink::for_config(&b.config, image, &exe, lineage)?;
    let mut engine = Engine::new(shim, heap, vec![heap_range], sink, settings);
    // Tracked from before its first byte was written: never-written pages are known zeros.
    engine
        .pristine
        .push((heap_range, kmod_shim::RangeDirty::clean(heap_range).pages));
    Ok(HotSpare {
        inner: Arc::new(Inner {
            config: b.config,
            heap,
            workers: b.workers,
            resumed: None,
            remote: engine.remote.clone(),
            engine: Mutex::new(engine),
            shared,
            blobs: Mutex::new(Vec::new()),
            fds: Mutex::new(Vec::new()),
            handlers: b.handlers,
            signals: Mutex::new(Vec::new()),
            lost: Vec::new(),
            code,
        }),
    })
}

fn resume(
    b: Builder,
    dir: PathBuf,
    t0: Instant,
    code: Option<Vec<LoadedObject>>,
) -> Result<HotSpare> {
    let exe = ExeId::current().map_err(|e| Error::Os {
        what: "executable identity".into(),
        source: e,
    })?;
    let identified = t0.elapsed();
    let image = ImageDir::open_existing(&dir)?;
    // A newer checkpoint is durable but could not be applied by the open's recovery (a
    // primary without a spare reports small checkpoints durable before it applies them):
    // resuming from the manifest would go back behind it, and the first checkpoint of this
    // incarnation would supersede it for good.
    if let Some(t) = image
        .tip()
        .filter(|t| image.lineage() != Some(t.lineage) || t.seq > image.seq())
    {
        return Err(ImageError::Unapplied {
            path: dir,
            seq: t.seq,
            have: image.seq(),
        }
        .into());
    }
    let opened = t0.elapsed();
    let m = image
        .manifest()
        .expect("open_existing guarantees a manifest")
        .clone();
    if m.exe_id != exe.0 {
        return Err(ImageError::OtherExecutable {
            path: dir,
            image: ExeId(m.exe_id).to_string(),
            this: exe.to_string(),
        }
        .into());
    }
    let meta = Metadata::decode(&m.meta)?;
    // Untrusted input: checked as a whole before any of it is acted on.
    crate::resume::check_metadata(
        &meta,
        &m.ranges,
        |name| b.workers.iter().any(|(n, _)| n == name),
        |name| b.handlers.iter().any(|(n, _)| n == name),
    )?;
    // State that points into code needs the same code at the same addresses.
    let code = match (&meta.code, code) {
        (Some(image), code) => {
            let here = code.unwrap_or_else(crate::identity::loaded_objects);
            crate::identity::compare_code(image, &here).map_err(Error::CodeMoved)?;
            Some(here)
        }
        (None, code) => code,
    };
    let mut entries = Vec::new();
    let mut lost = Vec::new();
    for (name, record) in &meta.fds {
        match fds::restore(name, record)? {
            Some(fd) => entries.push(fds::Entry {
                name: name.clone(),
                record: record.clone(),
                fd: Some(fd),
            }),
            None => lost.push((name.clone(), record.clone())),
        }
    }
    for (sig, name) in &meta.signals {
        let f = b.handlers.iter().find(|(n, _)| n == name).map(|(_, f)| *f);
        let f = f.ok_or_else(|| Error::Config(format!("signal handler '{name}' is in the image but was not registered with Builder::signal_handler")))?;
        install(*sig, f)?;
    }
    let ranges = crate::resume::map_ranges(&image, &m.ranges)?;
    let heap = crate::resume::adopt_heap(meta.heap, &ranges)?;
    let mut shim = open_shim(&b.config)?;
    shim.add(&ranges)?;
    let seq = image.seq();
    let shared = Shared::new(seq);
    let lineage = m.lineage;
    let settings = Settings {
        exe,
        term: m.term.max(b.config.term),
        lineage,
        strategy: b.config.strategy,
        depth: b.config.depth(),
        shared: shared.clone(),
    };
    let mut config = b.config.clone();
    config.term = settings.term;
    let sink = crate::checkpoint::Sink::for_config(&config, image, &exe, lineage)?;
    let engine = Engine::new(shim, heap, ranges, sink, settings);
    let info = ResumeInfo {
        image_dir: dir,
        seq,
        restore_time: t0.elapsed(),
    };
    // Only when timing a takeover (`HOTSPARE_LOG_TIME=1`, stamped like the spare's lines), to
    // time it phase by phase from `exec` to serving: a resume the program then refuses (another
    // root type) must print one line, the refusal.
    if crate::replica::log::stamped() {
        crate::replica::log::line(
        "hotspare",
        format!(
            "resumed checkpoint {seq} in {:.1} ms (the executable's identity {:.1} ms, {}; opening the image {:.1} ms)",
            info.restore_time.as_secs_f64() * 1e3,
            identified.as_secs_f64() * 1e3,
            if ExeId::was_handed_down() {
                "handed down by the spare"
            } else {
                "hashed here"
            },
            (opened - identified).as_secs_f64() * 1e3,
        ),
        );
    }
    Ok(HotSpare {
        inner: Arc::new(Inner {
            config: b.config,
            heap,
            workers: b.workers,
            resumed: Some(info),
            remote: engine.remote.clone(),
            engine: Mutex::new(engine),
            shared,
            blobs: Mutex::new(meta.blobs),
            fds: Mutex::new(entries),
            handlers: b.handlers,
            signals: Mutex::new(meta.signals),
            lost,
            code,
        }),
    })
}

impl HotSpare {
    /// A builder with configuration from [`Config::load`] (TOML file and environment).
    pub fn builder() -> Result<Builder> {
        Ok(Builder::new(Config::load()?))
    }

    /// A program with one worker loop over one root object, in one call: configuration from
    /// [`Config::load`], `worker` registered as `name` and given the state, `init` called on a
    /// fresh start only ([`Builder::serve`]). Returns when the worker returns.
    ///
    /// ```ignore
    /// HotSpare::serve("main", || Mutex::new(State::new()), |hs, state| loop { /* … */ })?;
    /// ```
    pub fn serve<T: Send + Sync + 'static>(
        name: &str,
        init: impl FnOnce() -> T,
        worker: impl Fn(&HotSpare, &'static T) + Send + Sync + 'static,
    ) -> Result<()> {
        let run = move |hs: &HotSpare| match hs.heap().root::<T>() {
            Some(state) => worker(hs, state),
            None => unreachable!("Builder::serve checked the root before running the workers"),
        };
        HotSpare::builder()?.worker(name, run).serve(init)
    }

    /// The checkpoint heap.
    pub fn heap(&self) -> &Heap {
        &self.inner.heap
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// `Some` when this process was resumed from an image.
    pub fn resumed(&self) -> Option<&ResumeInfo> {
        self.inner.resumed.as_ref()
    }

    /// The negation of [`HotSpare::may_serve`]: fenced by a newer term, or holding no lease (with
    /// `on_fence = "exit"` the library ends the process itself, but only from its own thread:
    /// a server must still check before it replies).
    pub fn is_fenced(&self) -> bool {
        !self.may_serve()
    }

    /// Whether this process may serve now — answer a client, acknowledge a write. Without a
    /// spare: always. With one: only while it holds a lease (a heartbeat sent less than the lease
    /// ago was answered) and no newer term has fenced it. Computed from the clock at each call,
    /// without locks, so a server can ask before every reply it releases; a reply released
    /// after `false` may contradict a spare that has taken over (`docs/replication.md`).
    pub fn may_serve(&self) -> bool {
        self.inner.remote.as_ref().is_none_or(|r| r.may_serve())
    }

    /// Whether a switchover (`hotspare switchover`) waits for a checkpoint: serving has
    /// stopped, and the primary hands over to its spare once a checkpoint captured from then on
    /// is acknowledged. A program that checkpoints on an interval needs do nothing; one that
    /// checkpoints only when it writes (every-write servers) must take one while this is true,
    /// or the switchover is given up after the ack timeout (and serving resumes).
    pub fn handover_pending(&self) -> bool {
        self.inner
            .remote
            .as_ref()
            .is_some_and(|r| r.handover_pending())
    }

    /// Bytes of checkpoint streams sent to the spare so far, framing and authentication
    /// included (`None` without a spare).
    pub fn wire_bytes(&self) -> Option<u64> {
        self.engine().remote.as_ref().map(|r| r.wire_bytes())
    }

    /// Changes the capture strategy of later checkpoints.
    pub fn set_strategy(&self, s: crate::Strategy) {
        self.engine().strategy = s;
    }

    /// The dirty-tracking backend in use and why it was chosen.
    pub fn backend(&self) -> (kmod_shim::BackendKind, String) {
        let e = self.engine();
        (e.shim.backend(), e.shim.why().to_owned())
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        self.inner.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn metadata(&self) -> Vec<u8> {
        let mut fds = self.inner.fds.lock().unwrap_or_else(|p| p.into_inner());
        fds::refresh(&mut fds);
        Metadata {
            fds: fds
                .iter()
                .map(|e| (e.name.clone(), e.record.clone()))
                .collect(),
            signals: self
                .inner
                .signals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            heap: (self.inner.heap.base() as u64, self.inner.heap.size() as u64),
            workers: self.inner.workers.iter().map(|(n, _)| n.clone()).collect(),
            blobs: self
                .inner
                .blobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            code: self.inner.code.clone(),
        }
        .encode()
    }

    /// Takes an incremental checkpoint (the first one, and any after a failure, is full). Call
    /// it where the state is consistent. Returns once the pages are captured — the caller's stop
    /// time is [`CptStats::stopped`]; the checkpoint becomes durable in the background
    /// ([`HotSpare::wait_durable`]).
    pub fn cpt(&self) -> Result<CptStats> {
        let _outside = Outside::enter();
        let meta = self.metadata();
        self.engine().cpt(meta, false, false)
    }

    /// Like [`HotSpare::cpt`], but never waits for the previous checkpoint: if it is still being
    /// written (or sent to a slow spare), this only starts a new epoch and keeps the pages for
    /// the next checkpoint (`CptStats::coalesced`, `seq` 0). For programs that checkpoint often
    /// and can accept that the spare holds a slightly older state (timeline consistency); the
    /// memory this needs is one bit per page, whatever the spare's speed.
    pub fn cpt_or_coalesce(&self) -> Result<CptStats> {
        let _outside = Outside::enter();
        let meta = self.metadata();
        self.engine().cpt(meta, false, true)
    }

    /// Takes a full checkpoint (every page of every range).
    pub fn cpt_full(&self) -> Result<CptStats> {
        let _outside = Outside::enter();
        let meta = self.metadata();
        self.engine().cpt(meta, true, false)
    }

    /// Waits until checkpoint `seq` is durable in the image directory; reports its failure.
    /// A `seq` beyond the newest checkpoint taken is [`crate::Error::NotTaken`], at once.
    pub fn wait_durable(&self, seq: u64) -> Result<()> {
        self.inner.shared.wait(seq)
    }

    /// Output commit: takes a checkpoint of everything done so far and returns at once with
    /// its ticket (the caller is stopped only for the capture, as by [`HotSpare::cpt`]).
    /// Release a reply once [`HotSpare::ticket_state`] says its ticket is durable — from an
    /// event loop woken by a [`CommitNotifier`], or by blocking in [`HotSpare::wait`]. Several
    /// checkpoints are in flight at once (up to `Config::pipeline_depth`; beyond that this
    /// waits for the oldest), so throughput is bounded by the capture and the link, not by
    /// round trips. Call it where the state is consistent, as `cpt()`.
    pub fn commit(&self) -> Result<Ticket> {
        let st = self.cpt()?;
        Ok(Ticket(st.seq))
    }

    /// [`HotSpare::commit`] that never waits: `None` if the pipeline is full (`pipeline_depth`
    /// checkpoints in flight, or both staging buffers still being encoded), and nothing is
    /// captured; ask again when the [`CommitNotifier`] says a checkpoint ended. Unlike
    /// [`HotSpare::can_commit`] followed by [`HotSpare::commit`], no other thread can fill the
    /// pipeline between the check and the capture, so a caller holding locks (to keep the state
    /// consistent) never blocks on the spare with them. Call it where the state is consistent,
    /// as `cpt()`.
    pub fn try_commit(&self) -> Result<Option<Ticket>> {
        Ok(self.try_cpt()?.map(|st| Ticket(st.seq)))
    }

    /// [`HotSpare::cpt`] that never waits for the pipeline: `None` where
    /// [`HotSpare::try_commit`] would be; the statistics otherwise.
    pub fn try_cpt(&self) -> Result<Option<CptStats>> {
        if !self.can_commit() {
            return Ok(None);
        }
        let meta = self.metadata();
        self.engine().try_cpt(meta)
    }

    /// The ticket of the newest checkpoint taken so far (everything captured by now), without
    /// taking one: a reply that only *read* state already captured waits for this one.
    pub fn latest_ticket(&self) -> Ticket {
        Ticket(self.inner.shared.lock().issued_seq)
    }

    /// Whether [`HotSpare::commit`] would start at once: fewer than `pipeline_depth`
    /// checkpoints are in flight. An event loop that finds it false goes on serving and commits
    /// when a [`CommitNotifier`] says one ended — so the next checkpoint carries everything
    /// done meanwhile (group commit) instead of the loop waiting. Another thread may fill the
    /// pipeline right after: to commit only if that does not wait, use
    /// [`HotSpare::try_commit`].
    pub fn can_commit(&self) -> bool {
        self.inner.shared.lock().in_flight() < self.inner.config.depth()
    }

    /// Where `ticket` stands (never blocks).
    pub fn ticket_state(&self, ticket: Ticket) -> TicketState {
        self.inner.shared.lock().state(ticket.0)
    }

    /// The highest checkpoint sequence that is durable: every ticket up to it is.
    pub fn durable_seq(&self) -> u64 {
        self.inner.shared.lock().seq
    }

    /// Blocks until `ticket` is durable; its checkpoint's failure otherwise
    /// ([`crate::Error::NotTaken`] at once for a ticket beyond [`HotSpare::latest_ticket`]).
    pub fn wait(&self, ticket: Ticket) -> Result<()> {
        self.inner.shared.wait(ticket.0)
    }

    /// A descriptor that becomes readable whenever a checkpoint ends (durable or failed), for
    /// an event loop to register; one per loop.
    pub fn commit_notifier(&self) -> Result<CommitNotifier> {
        let _outside = Outside::enter();
        self.inner.shared.notifier().map_err(|e| Error::Os {
            what: "eventfd for commit notifications".into(),
            source: e,
        })
    }

    /// Tracks another page-aligned range of private read-write memory; its pages all go into
    /// the next checkpoint, and resume maps it back at the same address.
    pub fn register_range(&self, addr: usize, len: usize) -> Result<()> {
        let _outside = Outside::enter();
        let r = Range::new(addr, len)?;
        let mut e = self.engine();
        e.shim.add(&[r])?;
        e.ranges.push(r);
        e.fresh.push(r);
        Ok(())
    }

    /// Stops tracking a range given to [`HotSpare::register_range`]; the next checkpoint drops it.
    pub fn unregister_range(&self, addr: usize, len: usize) -> Result<()> {
        let _outside = Outside::enter();
        let r = Range::new(addr, len)?;
        let mut e = self.engine();
        if r.start() == self.inner.heap.base() {
            return Err(Error::Config(
                "the checkpoint heap cannot be unregistered".into(),
            ));
        }
        e.shim.remove(&[r])?;
        e.ranges.retain(|x| *x != r);
        e.fresh.retain(|x| *x != r);
        Ok(())
    }

    /// Stores a small named blob that travels with every later checkpoint.
    pub fn set_blob(&self, name: &str, bytes: &[u8]) {
        let _outside = Outside::enter();
        let mut b = self.inner.blobs.lock().unwrap_or_else(|p| p.into_inner());
        b.retain(|(n, _)| n != name);
        b.push((name.to_owned(), bytes.to_vec()));
    }

    /// The blob of that name (after resume: as of the resumed checkpoint).
    pub fn blob(&self, name: &str) -> Option<Vec<u8>> {
        let b = self.inner.blobs.lock().unwrap_or_else(|p| p.into_inner());
        b.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    fn add_fd(&self, name: &str, record: FdRecord, fd: Option<OwnedFd>) {
        let _outside = Outside::enter();
        let mut v = self.inner.fds.lock().unwrap_or_else(|p| p.into_inner());
        v.retain(|e| e.name != name);
        v.push(fds::Entry {
            name: name.to_owned(),
            record,
            fd,
        });
    }

    fn fd(&self, name: &str) -> Option<OwnedFd> {
        let v = self.inner.fds.lock().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .find(|e| e.name == name)?
            .fd
            .as_ref()?
            .try_clone()
            .ok()
    }

    /// Hands a regular file to the library under `name` (its path, flags and offset go into
    /// checkpoints; with `refresh_offset` the offset is re-read at every checkpoint). Get it
    /// with [`HotSpare::file`]; after resume it is reopened at the checkpoint's offset.
    pub fn add_file(&self, name: &str, file: File, path: &str, refresh_offset: bool) -> Result<()> {
        let record = fds::file_record(&file, path, refresh_offset)?;
        self.add_fd(name, record, Some(file.into()));
        Ok(())
    }

    /// Hands a listening TCP socket to the library; after resume it is bound again to the same
    /// address. Get it with [`HotSpare::tcp_listener`].
    pub fn add_tcp_listener(&self, name: &str, l: TcpListener) -> Result<()> {
        let record = fds::tcp_listener_record(&l)?;
        self.add_fd(name, record, Some(l.into()));
        Ok(())
    }

    /// Hands a listening Unix socket (bound to a path) to the library; bound again on resume.
    pub fn add_unix_listener(&self, name: &str, l: UnixListener) -> Result<()> {
        let record = fds::unix_listener_record(&l)?;
        self.add_fd(name, record, Some(l.into()));
        Ok(())
    }

    /// Records a connected socket: it cannot survive the process, so after resume it is listed
    /// by [`HotSpare::lost_connections`] instead.
    pub fn add_connection(&self, name: &str, s: TcpStream) -> Result<()> {
        let record = fds::connected_record(&s)?;
        self.add_fd(name, record, Some(s.into()));
        Ok(())
    }

    /// Forgets a registered descriptor (closing the library's copy).
    pub fn remove_fd(&self, name: &str) {
        let _outside = Outside::enter();
        self.inner
            .fds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|e| e.name != name);
    }

    /// The file registered as `name` (a duplicate descriptor sharing its offset).
    pub fn file(&self, name: &str) -> Option<File> {
        self.fd(name).map(File::from)
    }

    /// The TCP listener registered as `name`.
    pub fn tcp_listener(&self, name: &str) -> Option<TcpListener> {
        self.fd(name).map(TcpListener::from)
    }

    /// The Unix listener registered as `name`.
    pub fn unix_listener(&self, name: &str) -> Option<UnixListener> {
        self.fd(name).map(UnixListener::from)
    }

    /// The connected socket registered as `name` (only in the incarnation that registered it).
    pub fn connection(&self, name: &str) -> Option<TcpStream> {
        self.fd(name).map(TcpStream::from)
    }

    /// After resume: the connected sockets of the image, which are gone, as (name, local, peer).
    pub fn lost_connections(&self) -> Vec<(String, String, String)> {
        self.inner
            .lost
            .iter()
            .filter_map(|(n, r)| match r {
                FdRecord::Connected { local, peer } => {
                    Some((n.clone(), local.clone(), peer.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// `hs_sigreg`: installs the handler registered as `name` for `signal`, and records it so
    /// that resume installs it again.
    pub fn sigreg(&self, signal: i32, name: &str) -> Result<()> {
        let _outside = Outside::enter();
        let f = self
            .inner
            .handlers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f);
        let f = f.ok_or_else(|| {
            Error::Config(format!(
                "no signal handler named '{name}' (Builder::signal_handler)"
            ))
        })?;
        install(signal, f)?;
        let mut s = self.inner.signals.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|(sig, _)| *sig != signal);
        s.push((signal, name.to_owned()));
        Ok(())
    }

    /// Runs the worker loops: the first on this thread, the others in threads of their own;
    /// returns when all have returned.
    pub fn run(&self) {
        let workers = self.inner.workers.clone();
        let Some(((_, first), rest)) = workers.split_first() else {
            return;
        };
        let handles: Vec<_> = rest
            .iter()
            .map(|(name, f)| {
                let (hs, f) = (self.clone(), f.clone());
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || f(&hs))
                    .expect("spawn worker thread")
            })
            .collect();
        first(self);
        for h in handles {
            let _ = h.join();
        }
    }
}

fn install(signal: i32, f: SignalFn) -> Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler address and an empty mask.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(signal, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(Error::Os {
            what: format!("sigaction({signal})"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}
