//! `hotspare-resume`: the spare daemon. Keeps a crash-safe image of the primary's checkpoints,
//! answers its heartbeats, and when it has been silent for N heartbeat intervals takes over:
//! raises the term, runs `--on-takeover`, and becomes the program (`exec`) in resume mode.
//!
//! ```text
//! hotspare-resume --listen 0.0.0.0:7070 --image-dir /var/lib/app --key-file key \
//!     [--heartbeat-ms 10] [--missed 5] [--on-takeover 'ip addr add 10.0.0.9/24 dev eth0'] \
//!     --exec ./app [ARGS…]
//! ```
//! or `hotspare-resume --config spare.toml` with the same keys (`exec` as an array, and an
//! `[env]` table for the program), or, for every service of a host, one daemon:
//! `hotspare-resume --fleet host.toml` (`hotspare::replica::spare::fleet_file`,
//! `docs/operations.md`).
//!
//! Under systemd (`Type=notify`, `deploy/systemd/hotspare-spare@.service`) it sends `READY=1`
//! once its event loop answers a status request on its own listening address, and, with
//! `WatchdogSec=`, `WATCHDOG=1` only while the event loop keeps answering them: a probe thread
//! asks the spare for its status over the authenticated connection, as `hotspare status --spare`
//! does, every third of the watchdog period. When the listener is gone (the event loop ended to
//! take over) it sends `WATCHDOG_USEC=0`, turning the watchdog off for the program this process
//! is about to become, which does not ping it. A takeover without a hook is faster than any
//! probe, so with a watchdog the program is started through this executable itself
//! (`hotspare-resume --become PROGRAM ARGS…`, one more `exec` in the same process): it sends
//! `WATCHDOG_USEC=0` and then `exec`s the program.

use anyhow::{bail, Context, Result};
use clap::Parser;
use hotspare::replica::spare::{self, SpareConfig};
use hotspare::replica::wire;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "hotspare-resume",
    about = "Hot Spare spare daemon: keep the image, detect failure, take over"
)]
struct Args {
    /// TOML file with any of the options below (command-line options override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// TOML file listing every service this host is the spare (or primary) of: one daemon for
    /// all of them (no other option may be given).
    #[arg(long, conflicts_with = "config")]
    fleet: Option<PathBuf>,
    /// Address to listen on for the primary.
    #[arg(long)]
    listen: Option<String>,
    /// Image directory to keep up to date.
    #[arg(long)]
    image_dir: Option<PathBuf>,
    /// Shared secret file (mode 0600).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The primary's heartbeat interval H in ms (default 10: a loopback or LAN round trip is far
    /// below it, so 5 missed beats mean the primary is gone, not slow).
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Missed heartbeats N before the primary is declared dead (default 5: detection in 50 ms).
    #[arg(long)]
    missed: Option<u32>,
    /// Shell command run at takeover, before the program starts (e.g. move a virtual IP). If it
    /// fails or outlives --hook-timeout-ms, the program is NOT started (fail closed).
    #[arg(long)]
    on_takeover: Option<String>,
    /// Time limit of the takeover hook in ms (default 10000).
    #[arg(long)]
    hook_timeout_ms: Option<u64>,
    /// After starting on an existing image, wait this long for a primary before taking over
    /// (default 1000: a live primary reconnects well within it).
    #[arg(long)]
    startup_grace_ms: Option<u64>,
    /// Let a primary of another lineage (a fresh start, not a resume of this image) replace the
    /// image. Without it such a primary is refused and the image is kept.
    #[arg(long)]
    accept_new_lineage: bool,
    /// etcd endpoints of the arbiter (comma-separated `host:port` or URLs): a takeover then
    /// happens only after this spare wins the service's term at the arbiter. Without it the
    /// pair decides alone (two-machine mode: a cut between the two stops the primary and lets
    /// this spare take over, whichever side the clients can reach).
    #[arg(long)]
    arbiter: Option<String>,
    /// The service's name at the arbiter (required with --arbiter; the same as the primary's
    /// HOTSPARE_SERVICE).
    #[arg(long)]
    service: Option<String>,
    /// This machine's name at the arbiter (default: the host name). Must differ from the
    /// primary's.
    #[arg(long)]
    node: Option<String>,
    /// An etcd request not answered within this many ms fails (default 200).
    #[arg(long)]
    arbiter_timeout_ms: Option<u64>,
    /// TLS to etcd: the CA (PEM) that signed etcd's server certificate (as
    /// HOTSPARE_ARBITER_CA; a bare host:port endpoint then gets https://).
    #[arg(long)]
    arbiter_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's --client-cert-auth (needs --arbiter-key).
    #[arg(long)]
    arbiter_cert: Option<PathBuf>,
    /// The private key (PEM) of --arbiter-cert.
    #[arg(long)]
    arbiter_key: Option<PathBuf>,
    /// The program to start in resume mode, and its arguments.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, trailing_var_arg = true)]
    exec: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    image_dir: Option<PathBuf>,
    key_file: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    missed: Option<u32>,
    on_takeover: Option<String>,
    hook_timeout_ms: Option<u64>,
    startup_grace_ms: Option<u64>,
    accept_new_lineage: Option<bool>,
    arbiter: Option<String>,
    service: Option<String>,
    node: Option<String>,
    arbiter_timeout_ms: Option<u64>,
    arbiter_ca: Option<PathBuf>,
    arbiter_cert: Option<PathBuf>,
    arbiter_key: Option<PathBuf>,
    exec: Option<Vec<String>>,
    env: Option<std::collections::BTreeMap<String, String>>,
}

fn config(a: Args) -> Result<SpareConfig> {
    let f: FileConfig = match &a.config {
        Some(p) => {
            toml::from_str(&std::fs::read_to_string(p).with_context(|| p.display().to_string())?)
                .with_context(|| p.display().to_string())?
        }
        None => FileConfig::default(),
    };
    let listen = a.listen.or(f.listen).context("--listen is required")?;
    let image_dir = a
        .image_dir
        .or(f.image_dir)
        .context("--image-dir is required")?;
    let key_file = a
        .key_file
        .or(f.key_file)
        .context("--key-file is required")?;
    let exec = if a.exec.is_empty() {
        f.exec.unwrap_or_default()
    } else {
        a.exec
    };
    if exec.is_empty() {
        bail!("--exec PROGRAM is required");
    }
    // The arbiter's settings are the library's (one parser, one set of rules).
    let arbiter = hotspare::Config {
        arbiter: a.arbiter.or(f.arbiter),
        service: a.service.or(f.service),
        node: a.node.or(f.node),
        arbiter_timeout_ms: a.arbiter_timeout_ms.or(f.arbiter_timeout_ms).unwrap_or(200),
        arbiter_ca: a.arbiter_ca.or(f.arbiter_ca),
        arbiter_cert: a.arbiter_cert.or(f.arbiter_cert),
        arbiter_key: a.arbiter_key.or(f.arbiter_key),
        ..hotspare::Config::default()
    }
    .arbiter()?;
    let missed = a.missed.or(f.missed).unwrap_or(5);
    if missed == 0 {
        bail!("--missed must be at least 1");
    }
    Ok(SpareConfig {
        listen,
        image_dir,
        key: wire::load_key(&key_file)?,
        heartbeat: Duration::from_millis(a.heartbeat_ms.or(f.heartbeat_ms).unwrap_or(10).max(1)),
        missed,
        startup_grace: Duration::from_millis(
            a.startup_grace_ms.or(f.startup_grace_ms).unwrap_or(1000),
        ),
        accept_new_lineage: a.accept_new_lineage || f.accept_new_lineage.unwrap_or(false),
        on_takeover: a.on_takeover.or(f.on_takeover),
        hook_timeout: Duration::from_millis(
            a.hook_timeout_ms.or(f.hook_timeout_ms).unwrap_or(10_000),
        ),
        exec,
        program_env: f.env.unwrap_or_default().into_iter().collect(),
        arbiter,
    })
}

/// Where to ask this spare for its status: its listening address, a wildcard one replaced by
/// loopback.
fn probe_addr(listen: &str) -> Option<SocketAddr> {
    let mut a = listen.to_socket_addrs().ok()?.next()?;
    if a.ip().is_unspecified() {
        a.set_ip(match a.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(a)
}

/// What one status request through the event loop found.
enum Probe {
    /// The event loop answered: its term, and the image's checkpoint.
    Answered(u64, u64),
    /// Nothing listens: the event loop has ended (a takeover is under way), or has not started.
    Refused,
    /// Connected, but no answer (a stuck event loop times out here, after 2 s).
    Failed(String),
}

fn probe(addr: &SocketAddr, key: &wire::Key) -> Probe {
    match wire::request_status(&addr.to_string(), key) {
        Ok((_, wire::Msg::Status { term, seq, .. })) => Probe::Answered(term, seq),
        Ok((_, other)) => Probe::Failed(format!("unexpected answer {other:?}")),
        Err(e) => match e.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
            _ => Probe::Failed(e.to_string()),
        },
    }
}

/// The systemd side (`sd_notify`): readiness, then the watchdog while the event loop answers.
fn notifier(addr: SocketAddr, key: wire::Key, watchdog: Option<Duration>) {
    use sd_notify::NotifyState;
    let say = |states: &[NotifyState]| {
        if let Err(e) = sd_notify::notify(states) {
            eprintln!("hotspare-resume: sd_notify: {e}");
        }
    };
    // Readiness: the first answer of the event loop (bounded: the daemon exits on any set-up
    // error, and systemd's TimeoutStartSec= bounds the start anyway).
    let t = Instant::now();
    loop {
        if let Probe::Answered(term, seq) = probe(&addr, &key) {
            let s = format!("spare on {addr}: term {term}, image at checkpoint {seq}");
            say(&[NotifyState::Ready, NotifyState::Status(&s)]);
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            eprintln!("hotspare-resume: sd_notify: the event loop never answered; not ready");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(period) = watchdog else { return };
    let every = (period / 3).max(Duration::from_millis(50));
    let mut last_failure = None;
    // Ends when the listener is gone (takeover: this process becomes the program) or with the
    // process.
    loop {
        std::thread::sleep(every);
        match probe(&addr, &key) {
            Probe::Answered(term, seq) => {
                let s = format!("spare on {addr}: term {term}, image at checkpoint {seq}");
                say(&[NotifyState::Watchdog, NotifyState::Status(&s)]);
                last_failure = None;
            }
            Probe::Refused => {
                eprintln!(
                    "hotspare-resume: the event loop has ended (taking over): watchdog off for the program"
                );
                say(&[
                    NotifyState::WatchdogUsec(0),
                    NotifyState::Status("taking over: starting the program"),
                ]);
                return;
            }
            Probe::Failed(e) => {
                if last_failure.as_ref() != Some(&e) {
                    eprintln!(
                        "hotspare-resume: watchdog: the event loop did not answer a status request ({e}); not pinging"
                    );
                }
                last_failure = Some(e);
            }
        }
    }
}

/// The `--become` step of a takeover under a systemd watchdog: switch the watchdog off, then
/// become the program (same pid: systemd's main process). Returns only if `exec` failed.
fn become_program(argv: &[std::ffi::OsString]) -> ! {
    use std::os::unix::process::CommandExt;
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::WatchdogUsec(0),
        sd_notify::NotifyState::Status("took over: running the program"),
    ]);
    let Some((program, args)) = argv.split_first() else {
        eprintln!("hotspare-resume: --become needs a program");
        std::process::exit(2);
    };
    let e = std::process::Command::new(program).args(args).exec();
    eprintln!("hotspare-resume: exec {}: {e}", program.to_string_lossy());
    std::process::exit(1);
}

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "--become") {
        become_program(&argv[2..]);
    }
    // The service manager's watchdog is this daemon's, not the program's it may become: take
    // it out of the environment the program inherits (before any thread exists).
    let watchdog = sd_notify::watchdog_enabled();
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    let args = Args::parse();
    if let Some(path) = &args.fleet {
        match hotspare::replica::spare::fleet_file::load(path) {
            Ok(hotspare::replica::spare::fleet_file::Fleet { services, status }) => {
                // Ready once every service's thread runs (each logs its own start); the
                // watchdog pings while every service's spare answers (fleet::run).
                if std::env::var_os("NOTIFY_SOCKET").is_some() {
                    let s = format!("fleet of {} services", services.len());
                    let _ = sd_notify::notify(&[
                        sd_notify::NotifyState::Ready,
                        sd_notify::NotifyState::Status(&s),
                    ]);
                }
                let watchdog = watchdog.filter(|_| std::env::var_os("NOTIFY_SOCKET").is_some());
                hotspare::replica::spare::fleet::run(services, status, watchdog)
            }
            Err(e) => {
                eprintln!("hotspare-resume: {}: {e}", path.display());
                std::process::exit(2);
            }
        }
    }
    let mut cfg = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hotspare-resume: {e:#}");
            std::process::exit(2);
        }
    };
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if watchdog.is_some() {
            match std::env::current_exe() {
                Ok(me) => {
                    let mut exec = vec![me.to_string_lossy().into_owned(), "--become".into()];
                    exec.append(&mut cfg.exec);
                    cfg.exec = exec;
                }
                Err(e) => eprintln!(
                    "hotspare-resume: sd_notify: own executable unknown ({e}): the watchdog may outlive a takeover"
                ),
            }
        }
        match probe_addr(&cfg.listen) {
            Some(addr) => {
                let key = cfg.key.clone();
                let _ = std::thread::Builder::new()
                    .name("hotspare-notify".into())
                    .spawn(move || notifier(addr, key, watchdog));
            }
            None => eprintln!(
                "hotspare-resume: sd_notify: cannot resolve {}; not notifying",
                cfg.listen
            ),
        }
    }
    let e = spare::run(cfg);
    eprintln!("hotspare-resume: {e}");
    std::process::exit(1);
}
