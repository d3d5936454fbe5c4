//! `hotspare-resume`: the spare daemon. Keeps a crash-safe image of the primary's checkpoints,
//! answers its heartbeats, and when it has been silent for N heartbeat intervals takes over:
//! raises the term, runs `--on-takeover`, and becomes the program (`exec`) in resume mode.
//!
//! ```text
//! hotspare-resume --listen 0.0.0.0:7070 --image-dir /var/lib/app --key-file key \
//!     [--heartbeat-ms 10] [--missed 5] [--on-takeover 'ip addr add 10.0.0.9/24 dev eth0'] \
//!     --exec ./app [ARGS…]
//! ```
//! or `hotspare-resume --config spare.toml` with the same keys (`exec` as an array).

use anyhow::{bail, Context, Result};
use clap::Parser;
use hotspare::replica::spare::{self, SpareConfig};
use hotspare::replica::wire;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "hotspare-resume",
    about = "Hot Spare spare daemon: keep the image, detect failure, take over"
)]
struct Args {
    /// TOML file with any of the options below (command-line options override it).
    #[arg(long)]
    config: Option<PathBuf>,
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
    exec: Option<Vec<String>>,
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
        arbiter,
    })
}

fn main() {
    let cfg = match config(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hotspare-resume: {e:#}");
            std::process::exit(2);
        }
    };
    let e = spare::run(cfg);
    eprintln!("hotspare-resume: {e}");
    std::process::exit(1);
}
