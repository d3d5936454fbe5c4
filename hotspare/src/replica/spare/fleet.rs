//! One daemon per host for many services: a supervisor thread per service, each running that
//! service's spare ([`super::serve`], its own `mio` event loop, disk threads and image
//! directory) and, once it has taken over, the program it started; when that program ends, the
//! service's spare starts again on this host, so the host goes back to protecting whichever
//! host took the service over (re-protection without an operator).
//!
//! ```text
//!  service thread (one per service)
//!   ├─ `first_primary` and no image yet? → the program started fresh (the service's birth)
//!   ├─ otherwise serve(): the spare's event loop … until it takes over (term T), the takeover
//!   │  hook, then the program started in resume mode with HOTSPARE_TERM=T
//!   │  (either way a child in a session of its own, with the image directory as its own)
//!   └─ child ended (fenced, killed, crashed) → back to the top
//! ```
//! Why threads and not one event loop for all: a service's spare is the same code as a spare
//! daemon of its own, so every guarantee tested for one holds for each; a stuck disk or
//! arbiter of one service cannot delay another's heartbeats; and an idle service costs only a
//! sleeping thread. The services share nothing but the log thread and this file's status.

use super::super::log as logs;
use super::SpareConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One service this host is (or may become) the primary or the spare of.
#[derive(Debug, Clone)]
pub struct FleetService {
    /// The service's name (the arbiter's `service`, and the log prefix).
    pub name: String,
    /// Its spare, as a spare daemon of its own would run it.
    pub spare: SpareConfig,
    /// This host starts the service: while its image directory has never held a checkpoint,
    /// the program is started fresh here (a new lineage) instead of a spare. Set it on one
    /// host per service; once the service has an image anywhere, every host is its spare or
    /// its primary by takeover only.
    pub first_primary: bool,
}

/// What one service is doing on this host.
#[derive(Debug, Clone)]
enum State {
    Starting,
    Spare,
    /// This daemon started the service's program fresh (first start of the service).
    Fresh {
        pid: u32,
        since: Instant,
    },
    /// This daemon took the service over and runs its program.
    Primary {
        pid: u32,
        term: u64,
        since: Instant,
    },
    /// The spare stopped on an error; tried again after a pause.
    Retrying(String),
}

#[derive(Debug)]
struct Entry {
    name: String,
    listen: String,
    image_dir: PathBuf,
    state: State,
    takeovers: u64,
}

type Table = Arc<Mutex<Vec<Entry>>>;

/// Runs every service until the process ends; never returns. `status` is rewritten with the
/// fleet's state (one JSON object, see [`render`]) every 100 ms. With `watchdog` (systemd's
/// `WatchdogSec=`), `WATCHDOG=1` is sent every third of it while every service this host is
/// the spare of answers a status request on its own listening address ([`watchdog`]).
pub fn run(services: Vec<FleetService>, status: Option<PathBuf>, watchdog: Option<Duration>) -> ! {
    let table: Table = Arc::new(Mutex::new(
        services
            .iter()
            .map(|s| Entry {
                name: s.name.clone(),
                listen: s.spare.listen.clone(),
                image_dir: s.spare.image_dir.clone(),
                state: State::Starting,
                takeovers: 0,
            })
            .collect(),
    ));
    let snapshot = Arc::new(Mutex::new(String::new()));
    if let Some(p) = status {
        super::super::io::start_status_writer(p, snapshot.clone());
    }
    logs::line(
        "hotspare-resume",
        format!(
            "fleet of {} services: {}",
            services.len(),
            services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    if let Some(period) = watchdog {
        let keys = services.iter().map(|s| s.spare.key.clone()).collect();
        let table = table.clone();
        let spawned = std::thread::Builder::new()
            .name("hotspare-watchdog".into())
            .spawn(move || watchdog_loop(period, &table, keys));
        if let Err(e) = spawned {
            logs::line("hotspare-resume", format!("cannot start a thread: {e}"));
        }
    }
    if let Some(cfg) = services.iter().find_map(|s| s.spare.arbiter.clone()) {
        let table = table.clone();
        let spawned = std::thread::Builder::new()
            .name("hotspare-publish".into())
            .spawn(move || publish_loop(cfg, &table));
        if let Err(e) = spawned {
            logs::line("hotspare-resume", format!("cannot start a thread: {e}"));
        }
    }
    for (i, s) in services.into_iter().enumerate() {
        let (table, snapshot) = (table.clone(), snapshot.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("hs-{}", s.name))
            .spawn(move || supervise(i, s, &table, &snapshot));
        if let Err(e) = spawned {
            logs::line("hotspare-resume", format!("cannot start a thread: {e}"));
            logs::flush(Duration::from_millis(200));
            std::process::exit(1);
        }
    }
    loop {
        std::thread::park();
    }
}

/// The fleet daemon's systemd watchdog: pings only while every service it is the spare of
/// answers a status request through its event loop, over the authenticated connection (as
/// `hotspare status --spare` asks) — the supervisor threads exist and the event loops turn. A
/// service this host runs the program of is the program's business (its own status file), one
/// between two spares (starting, retrying) has no event loop to ask, and one whose spare has not
/// answered once since it started is still opening its image. One that does not
/// answer is logged once, and no ping goes out until all do again: systemd restarts a wedged
/// daemon; its programs, in sessions of their own, live on (`KillMode=process`).
fn watchdog_loop(period: Duration, table: &Table, keys: Vec<crate::replica::wire::Key>) {
    crate::global::library_thread();
    let every = (period / 3).max(Duration::from_millis(50));
    let mut last_failure: Option<String> = None;
    // Per service, whether its spare has answered since it last became the spare: one that
    // has not may still be opening its image (recovering a directory, applying pending
    // checkpoints with their fsyncs) before it listens, which can take longer than the
    // watchdog period on a slow disk; a restart would only start that over.
    let mut answered_once = vec![false; keys.len()];
    loop {
        std::thread::sleep(every);
        let (spares, primaries): (Vec<(usize, String, String)>, usize) = {
            let t = table.lock().unwrap_or_else(|p| p.into_inner());
            let spares = t
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e.state, State::Spare))
                .map(|(i, e)| (i, e.name.clone(), e.listen.clone()))
                .collect();
            let primaries = t
                .iter()
                .filter(|e| matches!(e.state, State::Primary { .. } | State::Fresh { .. }))
                .count();
            (spares, primaries)
        };
        for (i, a) in answered_once.iter_mut().enumerate() {
            if !spares.iter().any(|(j, _, _)| *j == i) {
                *a = false;
            }
        }
        let mut failed = None;
        for (i, name, listen) in &spares {
            let why = match crate::replica::wire::request_status(listen, &keys[*i]) {
                Ok((_, crate::replica::wire::Msg::Status { .. })) => {
                    answered_once[*i] = true;
                    continue;
                }
                Ok((_, other)) => format!("{name}: unexpected answer {other:?}"),
                Err(e) => format!("{name}: {e}"),
            };
            if answered_once[*i] && failed.is_none() {
                failed = Some(why);
            }
        }
        match failed {
            None => {
                let s = format!(
                    "fleet: {} spares answer, {primaries} programs run here",
                    spares.len()
                );
                let _ = sd_notify::notify(&[
                    sd_notify::NotifyState::Watchdog,
                    sd_notify::NotifyState::Status(&s),
                ]);
                last_failure = None;
            }
            Some(why) => {
                if last_failure.as_ref() != Some(&why) {
                    logs::line(
                        "hotspare-resume",
                        format!(
                            "watchdog: a spare's event loop did not answer ({why}); not pinging"
                        ),
                    );
                }
                last_failure = Some(why);
            }
        }
    }
}

fn set(i: usize, table: &Table, snapshot: &Mutex<String>, f: impl FnOnce(&mut Entry)) {
    let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut t[i]);
    let text = render(&t);
    *snapshot.lock().unwrap_or_else(|p| p.into_inner()) = text;
}

/// The supervisor of one service (see the module doc); never returns.
fn supervise(i: usize, s: FleetService, table: &Table, snapshot: &Mutex<String>) {
    logs::set_service(Some(s.name.clone()));
    let mut pause = Duration::from_millis(100);
    let mut previous = None;
    // This host's counts for the service, kept across its spare's restarts.
    let mut counters = crate::metrics::SpareCounters::default();
    loop {
        let born = s.spare.image_dir.join("born");
        if s.first_primary && !has_image(&s.spare.image_dir) && !born.exists() {
            // The registration at the arbiter this start may take over: that of the last first
            // start whose status says it registered (it outlives a restart of this daemon),
            // else that of this daemon's last one.
            let adopt = registered_first_start(&s.spare.image_dir).or(previous);
            let why = match super::takeover::start_fresh(&s.spare, adopt) {
                Ok(mut child) => {
                    let pid = child.id();
                    previous = Some(pid);
                    log(format!(
                        "no image yet: the service starts here, program pid {pid}"
                    ));
                    let since = Instant::now();
                    set(i, table, snapshot, |e| {
                        e.state = State::Fresh { pid, since }
                    });
                    let st = wait_fresh(&mut child, &s.spare.image_dir, &born);
                    // A program that ran a while is not failing to start: no back-off.
                    if since.elapsed() > Duration::from_secs(10) {
                        pause = Duration::from_millis(100);
                    }
                    format!("the program (pid {pid}, first start) ended: {st}")
                }
                Err(e) => e.to_string(),
            };
            if born.exists() {
                log(format!(
                    "{why}; the service exists: this host is its spare from now on"
                ));
                continue;
            }
            log(format!("{why}; again in {} ms", pause.as_millis()));
            set(i, table, snapshot, |e| e.state = State::Retrying(why));
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(5));
            continue;
        }
        set(i, table, snapshot, |e| e.state = State::Spare);
        let why = match super::serve_counted(&s.spare, &mut counters) {
            Ok(term) => match start_taken_over(&s.spare, &born, term) {
                Ok(mut child) => {
                    let pid = child.id();
                    log(format!(
                        "took over with term {term}: program started, pid {pid}"
                    ));
                    set(i, table, snapshot, |e| {
                        e.state = State::Primary {
                            pid,
                            term,
                            since: Instant::now(),
                        };
                        e.takeovers += 1;
                    });
                    pause = Duration::from_millis(100);
                    match child.wait() {
                        Ok(st) => log(format!(
                            "the program (pid {pid}, term {term}) ended: {st}; this host is the service's spare again"
                        )),
                        Err(e) => log(format!("waiting for pid {pid}: {e}")),
                    }
                    continue;
                }
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        log(format!(
            "the spare stopped: {why}; starting it again in {} ms",
            pause.as_millis()
        ));
        set(i, table, snapshot, |e| e.state = State::Retrying(why));
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

fn log(msg: impl std::fmt::Display) {
    logs::line("hotspare-resume", msg);
}

/// After a takeover with `term`: the service exists, and this host must never start it fresh
/// again, even once its program has retired the image it resumed (a failure to mark it so is
/// only logged: such a start would be fenced or refused, and marked then); then the hook and
/// the program.
fn start_taken_over(
    cfg: &SpareConfig,
    born: &Path,
    term: u64,
) -> Result<std::process::Child, super::SpareError> {
    if let Err(e) = mark_born(born, "taken over") {
        log(e);
    }
    super::takeover::start_program(cfg, term)
}

/// Waits for a first start's program to end, marking the service born (`born`, made durable)
/// as soon as it exists beyond this host: once a checkpoint of it has been acknowledged (its
/// status file says so), or when the program was fenced (exit 75: a term of it exists at the
/// arbiter, or its spare refuses it). A primary keeps no image of its own while it has a
/// spare, so without the mark a host coming back would start the service afresh; with it, the
/// host is its spare. An exit 75 that its last status file calls a lease lapse (`"exit":"lease
/// lapsed"`: nobody renewed its lease — etcd stalled, its spare gone — nobody fenced it) says
/// nothing of the kind, and with no checkpoint acknowledged the service may exist nowhere: it
/// is started fresh again (a start of a service that exists is fenced or refused, and marks it
/// then).
fn wait_fresh(child: &mut std::process::Child, dir: &Path, born: &Path) -> String {
    let mark = |why: &str| {
        let _ = mark_born(born, why);
    };
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                let last = own_status(dir, child.id());
                let field = |k: &str| last.as_ref().map(|v| v[k].clone());
                if field("acked_seq").and_then(|v| v.as_u64()).unwrap_or(0) > 0 {
                    mark("a checkpoint of it was acknowledged");
                } else if st.code() == Some(75) {
                    if field("exit").is_some_and(|v| v == "lease lapsed") {
                        return format!("{st}, its lease lapsed with nothing acknowledged");
                    }
                    mark("fenced at its first start: the service runs elsewhere");
                }
                return st.to_string();
            }
            Ok(None) => {}
            Err(e) => return format!("waiting for it failed: {e}"),
        }
        if !born.exists() {
            let acked = std::fs::read_to_string(dir.join("status"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["acked_seq"].as_u64())
                .unwrap_or(0);
            if acked > 0 {
                mark("a checkpoint of it was acknowledged");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The primary status file in `dir` if process `pid` wrote it.
fn own_status(dir: &Path, pid: u32) -> Option<serde_json::Value> {
    let t = std::fs::read_to_string(dir.join("status")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&t).ok()?;
    (v["role"] == "primary" && v["pid"].as_u64() == Some(u64::from(pid))).then_some(v)
}

/// The pid of the first start that last wrote `dir`'s status file, if it says it registered at
/// the arbiter (its record there is the one a new first start may take over). It has ended: a
/// live one would hold the directory's lock, and the new start would fail before registering.
fn registered_first_start(dir: &Path) -> Option<u32> {
    let t = std::fs::read_to_string(dir.join("status")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&t).ok()?;
    if v["role"] != "primary" || v["arbiter"]["registered"] != true {
        return None;
    }
    v["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Writes the `born` marker `path` (in its image directory), made durable, unless it exists.
fn mark_born(path: &Path, why: &str) -> Result<(), super::SpareError> {
    if path.exists() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::write(path, format!("{why}\n"))
        .and_then(|()| std::fs::File::open(path)?.sync_all())
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|source| super::SpareError::Setup {
            what: format!("writing {}", path.display()),
            source,
        })
}

/// Whether `dir` holds a checkpoint: a manifest, or a complete stream not yet applied, in a
/// file of its own or in the log (the layout of [`crate::image`]). A directory that does not exist holds none.
fn has_image(dir: &Path) -> bool {
    dir.join("manifest").exists()
        || std::fs::read_dir(dir.join("wal")).is_ok_and(|d| {
            d.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".cpt") || n.ends_with(".log")
            })
        })
}

/// The fleet's state: `{"role":"fleet","pid":P,"services":[{"name","listen","image_dir",
/// "state","pid","term","takeovers","why"}…]}`; each service's own status (term, lag,
/// durability) stays in its image directory's `status` file.
fn render(t: &[Entry]) -> String {
    let services: Vec<String> = t.iter().map(render_entry).collect();
    format!(
        "{{\"role\":\"fleet\",\"pid\":{},\"services\":[{}]}}\n",
        std::process::id(),
        services.join(",")
    )
}

/// One service's entry of [`render`].
fn render_entry(e: &Entry) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let (state, pid, term, why) = match &e.state {
        State::Starting => ("starting", 0, 0, String::new()),
        State::Fresh { pid, since } => (
            "primary",
            *pid,
            0,
            format!("first start, for {} ms", since.elapsed().as_millis()),
        ),
        State::Spare => ("spare", std::process::id(), 0, String::new()),
        State::Primary { pid, term, since } => (
            "primary",
            *pid,
            *term,
            format!("for {} ms", since.elapsed().as_millis()),
        ),
        State::Retrying(why) => ("retrying", 0, 0, why.clone()),
    };
    format!(
        "{{\"name\":{},\"listen\":{},\"image_dir\":{},\"state\":\"{state}\",\"pid\":{pid},\"term\":{term},\"takeovers\":{},\"why\":{}}}",
        q(&e.name),
        q(&e.listen),
        q(&e.image_dir.to_string_lossy()),
        e.takeovers,
        q(&why)
    )
}

/// The fleet across hosts in one view: every second, for each service of this daemon, what this
/// host knows of it — its entry here ([`render_entry`]) and the service's own status file — goes
/// to etcd under `/hotspare/<service>/hosts/<node>` as `{"node","at_ms","here","own"}`, which
/// `hotspare status --etcd` reads with the term keys. Best effort, on a thread of its own with
/// its own client: a record is a snapshot with its wall-clock time (readers judge its age), a
/// failed write is logged once per streak, and nothing here waits on a service's thread.
fn publish_loop(cfg: super::super::ArbiterConfig, table: &Table) {
    crate::global::library_thread();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        logs::line("hotspare-resume", "fleet view: cannot start a runtime");
        return;
    };
    let urls = cfg.urls();
    let options = cfg.connect_options(Duration::from_secs(1));
    let mut client = None;
    let mut failing = false;
    loop {
        let records: Vec<(String, String)> = {
            let t = table.lock().unwrap_or_else(|p| p.into_inner());
            t.iter()
                .map(|e| {
                    let own = std::fs::read_to_string(e.image_dir.join("status"))
                        .ok()
                        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                        .unwrap_or(serde_json::Value::Null);
                    let at_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    let record = format!(
                        "{{\"node\":{},\"at_ms\":{at_ms},\"here\":{},\"own\":{own}}}",
                        serde_json::Value::String(cfg.node.clone()),
                        render_entry(e)
                    );
                    (format!("/hotspare/{}/hosts/{}", e.name, cfg.node), record)
                })
                .collect()
        };
        let put = rt.block_on(async {
            if client.is_none() {
                client = Some(
                    etcd_client::Client::connect(&urls, Some(options.clone()))
                        .await
                        .map_err(|e| cfg.explain(&e))?,
                );
            }
            let c = client.as_mut().expect("connected above");
            for (k, v) in records {
                c.put(k, v, None).await.map_err(|e| cfg.explain(&e))?;
            }
            Ok::<(), String>(())
        });
        match put {
            Ok(()) if failing => {
                failing = false;
                logs::line("hotspare-resume", "fleet view: writing to etcd again");
            }
            Ok(()) => {}
            Err(e) => {
                client = None;
                if !failing {
                    failing = true;
                    logs::line(
                        "hotspare-resume",
                        format!("fleet view: cannot write to etcd ({e}); retrying every second"),
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
