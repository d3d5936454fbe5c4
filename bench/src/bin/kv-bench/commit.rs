//! `kv-bench commit`: every-write ("strong consistency") throughput, hotspare-kv against Redis
//! with `appendfsync always`, measured the same way in the same run.
//!
//! Configurations, each run on a fresh set of processes (killed by PID at the end) and
//! interleaved (A B C D A B C D …) per load, `--reps` times:
//! * `redis`: `redis-server --appendonly yes --appendfsync always --save ""`, fresh directory;
//! * `fsynced`: `hotspare-kv --cpt-every-write` with a spare (`hotspare-resume … --exec
//!   /bin/true`), `HOTSPARE_DURABILITY=fsynced` for the primary;
//! * `received`: the same with `HOTSPARE_DURABILITY=received` (a primary that rejects the
//!   variable is a failed run, reported; one that ignores it is measured as it is — the INFO
//!   fields and log lines mentioning durability are recorded beside the figures);
//! * `local`: `hotspare-kv --cpt-every-write` without a spare (image directory on local disk).
//!
//! Loads: `redis-benchmark -t set -d 56 -r 1000000` with `-c 50 -n 50000` (client unpinned)
//! and `-c 1 -n 5000` (client under `taskset -c 0`, beside the servers' serving threads, as
//! `../shared/BENCHMARKING.md` requires). Servers are pinned the same way for both loads:
//! Redis under `taskset -c 0` (bio / rewrite threads on CPU 1), hotspare-kv `--serve-cpu 0
//! --background-cpu 1`, the spare under `taskset -c 1`.
//!
//! For the Hot Spare runs the harness reads `INFO hotspare` before and after (after `CONFIG
//! RESETSTAT`): wire bytes per SET, checkpoints, stop time. A spare whose log says it took over
//! while the primary was alive makes the run a failed run: counted, reported, never a data
//! point. `--link tbf` puts the spare in a network namespace of its own joined by a veth pair
//! shaped with `tbf rate 1gbit burst 128kb latency 50ms` on both ends; the namespace (and so the
//! pair) is deleted at the end, also on failure or signal.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::procs::{delete_netns, register_dir, register_netns, remove_dir, ChildGuard};
use crate::resp::{info_f64, Conn};
use crate::serial::round;
use crate::server::free_port;
use crate::stats::{emit, median, min_med_max};

/// Options of `kv-bench commit`.
#[derive(Debug, Clone, Args)]
pub struct CommitArgs {
    /// hotspare-kv binary, `[LABEL=]PATH`; repeat to compare builds in one run (each gets the
    /// three Hot Spare configurations) [default: hotspare-kv next to this program].
    #[arg(long = "kv-bin")]
    kv_bin: Vec<String>,
    /// hotspare-resume binary, `[LABEL=]PATH`: one for all `--kv-bin`s, or one per `--kv-bin`
    /// in the same order [default: hotspare-resume beside the (first) hotspare-kv].
    #[arg(long = "resume-bin")]
    resume_bin: Vec<String>,
    /// Which configurations.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "redis,fsynced,received,local"
    )]
    configs: Vec<ConfigKind>,
    /// Which loads.
    #[arg(long, value_delimiter = ',', default_value = "multi,serial")]
    loads: Vec<LoadKind>,
    /// How the primary reaches its spare.
    #[arg(long, value_enum, default_value = "loopback")]
    link: Link,
    /// Name of the network namespace for `--link tbf` (≤ 13 characters; its veth pair is
    /// `NAMEa` / `NAMEb`) [default: kvbc<pid>].
    #[arg(long)]
    netns: Option<String>,
    /// `HOTSPARE_HEAP_SIZE` of the primary.
    #[arg(long, default_value = "256M")]
    heap: String,
    /// redis-benchmark clients of the multi-client load.
    #[arg(long, default_value_t = 50)]
    multi_clients: u32,
    /// Requests (SETs) of the multi-client load.
    #[arg(long, default_value_t = 50_000)]
    multi_n: u64,
    /// Requests (SETs) of the serial load.
    #[arg(long, default_value_t = 5_000)]
    serial_n: u64,
    /// Time limit of one redis-benchmark run in seconds [default: 60 + 4 ms per request].
    #[arg(long)]
    bench_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConfigKind {
    Redis,
    Fsynced,
    Received,
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadKind {
    Multi,
    Serial,
}

impl LoadKind {
    fn name(self) -> &'static str {
        match self {
            LoadKind::Multi => "multi",
            LoadKind::Serial => "serial",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Link {
    Loopback,
    Tbf,
}

impl Link {
    fn name(self) -> &'static str {
        match self {
            Link::Loopback => "loopback",
            Link::Tbf => "tbf",
        }
    }
}

/// One build of the Hot Spare programs.
#[derive(Debug, Clone)]
struct HsBins {
    label: String,
    kv: PathBuf,
    resume: PathBuf,
}

/// One configuration of the interleaving.
#[derive(Debug, Clone)]
enum Config {
    Redis,
    Hotspare { bins: HsBins, kind: ConfigKind },
}

impl Config {
    /// The key of this configuration in the summary.
    fn key(&self, single_build: bool) -> String {
        match self {
            Config::Redis => "redis-aof-always".into(),
            Config::Hotspare { bins, kind } => {
                let k = match kind {
                    ConfigKind::Fsynced => "fsynced",
                    ConfigKind::Received => "received",
                    _ => "local",
                };
                if single_build {
                    format!("hotspare-{k}")
                } else {
                    format!("{}:hotspare-{k}", bins.label)
                }
            }
        }
    }
}

/// Everything the runs share.
struct Ctx<'a> {
    args: &'a CommitArgs,
    redis_server: &'a Path,
    redis_benchmark: &'a Path,
    work_dir: &'a Path,
    link: Option<&'a TbfLink>,
    client_cpu: usize,
}

/// The figures of one successful run, for the summary.
#[derive(Debug, Clone)]
struct Sample {
    rep: usize,
    /// Other processes used the CPUs during the run (see [`DISTURBED_CPUS`]).
    disturbed: bool,
    rps: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    wire_per_set: Option<f64>,
    checkpoints: Option<f64>,
    stop_ms_median: Option<f64>,
}

/// `[LABEL=]PATH`, the label defaulting to the file name.
fn labelled(s: &str) -> (String, PathBuf) {
    match s.split_once('=') {
        Some((l, p)) if !l.is_empty() && !l.contains('/') => (l.to_owned(), PathBuf::from(p)),
        _ => {
            let p = PathBuf::from(s);
            let l = p
                .file_name()
                .map_or_else(|| s.to_owned(), |f| f.to_string_lossy().into_owned());
            (l, p)
        }
    }
}

fn builds(a: &CommitArgs, default_kv: &Path) -> Result<Vec<HsBins>> {
    let kvs: Vec<(String, PathBuf)> = if a.kv_bin.is_empty() {
        vec![("current".into(), default_kv.to_path_buf())]
    } else {
        a.kv_bin.iter().map(|s| labelled(s)).collect()
    };
    let resumes: Vec<PathBuf> = if a.resume_bin.is_empty() {
        let dir = kvs[0]
            .1
            .parent()
            .context("hotspare-kv path has no directory")?;
        vec![dir.join("hotspare-resume")]
    } else {
        a.resume_bin.iter().map(|s| labelled(s).1).collect()
    };
    if resumes.len() != 1 && resumes.len() != kvs.len() {
        bail!(
            "give one --resume-bin, or one per --kv-bin ({} --kv-bin, {} --resume-bin)",
            kvs.len(),
            resumes.len()
        );
    }
    let mut out = Vec::new();
    for (i, (label, kv)) in kvs.into_iter().enumerate() {
        let resume = resumes[if resumes.len() == 1 { 0 } else { i }].clone();
        for p in [&kv, &resume] {
            if !p.is_file() {
                bail!("{} not found", p.display());
            }
        }
        if out.iter().any(|b: &HsBins| b.label == label) {
            bail!("two --kv-bin with the label {label:?}: label them LABEL=PATH");
        }
        out.push(HsBins { label, kv, resume });
    }
    Ok(out)
}

/// Runs the whole interleaved benchmark.
pub fn run(
    a: &CommitArgs,
    reps: usize,
    redis_server: &Path,
    redis_benchmark: &Path,
    default_kv: &Path,
    work_dir: &Path,
    client_cpu: usize,
) -> Result<()> {
    crate::multi::check_available(redis_benchmark)?;
    let hs_configs = a.configs.iter().any(|c| *c != ConfigKind::Redis);
    let builds = if hs_configs {
        builds(a, default_kv)?
    } else {
        Vec::new()
    };
    let mut configs = Vec::new();
    if a.configs.contains(&ConfigKind::Redis) {
        configs.push(Config::Redis);
    }
    for b in &builds {
        for k in [ConfigKind::Fsynced, ConfigKind::Received, ConfigKind::Local] {
            if a.configs.contains(&k) {
                configs.push(Config::Hotspare {
                    bins: b.clone(),
                    kind: k,
                });
            }
        }
    }
    if configs.is_empty() || a.loads.is_empty() {
        bail!("nothing to measure (--configs / --loads)");
    }
    let single_build = builds.len() <= 1;
    emit(json!({
        "kind": "commit_meta",
        "link": a.link.name(),
        "reps": reps,
        "loads": a.loads.iter().map(|l| l.name()).collect::<Vec<_>>(),
        "configs": configs.iter().map(|c| c.key(single_build)).collect::<Vec<_>>(),
        "builds": builds.iter().map(|b| json!({
            "label": b.label,
            "kv": b.kv.display().to_string(),
            "kv_sha256": sha256(&b.kv),
            "resume": b.resume.display().to_string(),
            "resume_sha256": sha256(&b.resume),
        })).collect::<Vec<_>>(),
        "heap": a.heap,
        "multi": {"clients": a.multi_clients, "n": a.multi_n, "client_cpu": null},
        "serial": {"clients": 1, "n": a.serial_n, "client_cpu": client_cpu},
        "bench": "redis-benchmark -t set -d 56 -r 1000000 --csv",
        "pinning": "redis under taskset -c 0 (server_cpulist 0; bio, aof-rewrite, bgsave on CPU 1); hotspare-kv --serve-cpu 0 --background-cpu 1 --cpt-ms 0; spare under taskset -c 1; serial client under taskset -c 0, multi client unpinned",
        "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    }));
    let link = match a.link {
        Link::Loopback => None,
        Link::Tbf => {
            let name = a
                .netns
                .clone()
                .unwrap_or_else(|| format!("kvbc{}", std::process::id()));
            Some(TbfLink::setup(&name)?)
        }
    };
    let ctx = Ctx {
        args: a,
        redis_server,
        redis_benchmark,
        work_dir,
        link: link.as_ref(),
        client_cpu,
    };
    let mut t = Tally::default();
    for rep in 0..reps {
        for &load in &a.loads {
            for cfg in &configs {
                let key = cfg.key(single_build);
                eprintln!(
                    "kv-bench: commit rep {}/{reps}, {} load, {key}",
                    rep + 1,
                    load.name()
                );
                let mut line = json!({
                    "kind": "commit",
                    "rep": rep,
                    "load": load.name(),
                    "config": key,
                    "link": a.link.name(),
                });
                let foreign_before = foreign_processes();
                let cpu0 = CpuSnapshot::take();
                let r = run_one(&ctx, cfg, load, &mut line);
                // Every process of the run has been killed and reaped by now: its CPU time is
                // in our children's time, and what else ran is the rest.
                let cpu = CpuSnapshot::take().foreign_since(&cpu0);
                let mut foreign = foreign_before;
                for p in foreign_processes() {
                    if !foreign.contains(&p) {
                        foreign.push(p);
                    }
                }
                // Somebody else's benchmark or build on these 2 vCPUs skews the figures: say so.
                line["foreign_processes"] = json!(foreign);
                line["run_secs"] = json!(round(cpu.wall_secs, 2));
                line["foreign_cpu_secs"] = json!(round(cpu.foreign_user_secs, 2));
                let disturbed = cpu.foreign_user_secs > DISTURBED_CPUS * cpu.wall_secs;
                line["disturbed"] = json!(disturbed);
                if disturbed {
                    *t.disturbed.entry((load.name(), key.clone())).or_default() += 1;
                }
                line["loadavg_1m"] = json!(loadavg_1m());
                match r {
                    Ok(r) => {
                        if r.takeover {
                            t.takeovers += 1;
                        }
                        match r.failure {
                            None => {
                                emit(line);
                                t.samples
                                    .entry((load.name(), key))
                                    .or_default()
                                    .push(Sample {
                                        rep,
                                        disturbed,
                                        ..r.sample
                                    });
                            }
                            Some(why) => {
                                line["kind"] = json!("commit_failed");
                                line["error"] = json!(why);
                                emit(line);
                                *t.failed.entry((load.name(), key)).or_default() += 1;
                            }
                        }
                    }
                    Err(e) => {
                        line["kind"] = json!("commit_failed");
                        line["error"] = json!(format!("{e:#}"));
                        emit(line);
                        *t.failed.entry((load.name(), key)).or_default() += 1;
                    }
                }
            }
        }
    }
    drop(link);
    emit(summary(a, reps, &configs, single_build, &t));
    Ok(())
}

/// The final line: medians per load and configuration, and ratios to Redis in the same run
/// (of the medians, and the median of the per-repetition ratios) — over every successful run,
/// and again over the undisturbed ones only (`quiet`).
fn summary(
    a: &CommitArgs,
    reps: usize,
    configs: &[Config],
    single_build: bool,
    t: &Tally,
) -> Value {
    let mut results = Vec::new();
    let quiet =
        |v: &[Sample]| -> Vec<Sample> { v.iter().filter(|s| !s.disturbed).cloned().collect() };
    for &load in &a.loads {
        let redis = t
            .samples
            .get(&(load.name(), Config::Redis.key(single_build)))
            .cloned()
            .unwrap_or_default();
        for cfg in configs {
            let key = cfg.key(single_build);
            let id = (load.name(), key.clone());
            let v = t.samples.get(&id).cloned().unwrap_or_default();
            let mut line = figures(&v, &redis);
            line["load"] = json!(load.name());
            line["config"] = json!(key);
            line["failed_runs"] = json!(t.failed.get(&id).copied().unwrap_or(0));
            line["disturbed_runs"] = json!(t.disturbed.get(&id).copied().unwrap_or(0));
            line["quiet"] = figures(&quiet(&v), &quiet(&redis));
            results.push(line);
        }
    }
    json!({
        "kind": "commit_summary",
        "link": a.link.name(),
        "reps": reps,
        "failed_runs": t.failed.values().sum::<usize>(),
        "disturbed_runs": t.disturbed.values().sum::<usize>(),
        "disturbed_means": format!("other processes used more than {DISTURBED_CPUS} CPU (user time) on average during the run; such runs are in the medians, marked in their lines, and left out of `quiet`"),
        "takeovers_of_live_primary": t.takeovers,
        "results": results,
    })
}

/// Medians of one configuration's runs and its ratios to the Redis runs given.
fn figures(v: &[Sample], redis: &[Sample]) -> Value {
    let med = |v: Vec<f64>, d: i32| (!v.is_empty()).then(|| round(median(&v), d));
    let rps: Vec<f64> = v.iter().map(|s| s.rps).collect();
    let redis_rps: Vec<f64> = redis.iter().map(|s| s.rps).collect();
    let p50 = med(v.iter().filter_map(|s| s.p50).collect(), 3);
    let redis_p50 = med(redis.iter().filter_map(|s| s.p50).collect(), 3);
    let ratio = |x: Option<f64>, r: Option<f64>, d: i32| match (x, r) {
        (Some(x), Some(r)) if r > 0.0 => Some(round(x / r, d)),
        _ => None,
    };
    // Per-repetition ratio: the Redis run of the same repetition, same load.
    let paired: Vec<f64> = v
        .iter()
        .filter_map(|s| {
            let r = redis.iter().find(|r| r.rep == s.rep)?;
            (r.rps > 0.0).then(|| s.rps / r.rps)
        })
        .collect();
    json!({
        "runs": v.len(),
        "rps": min_med_max(&rps, 0),
        "p50_ms_median": p50,
        "p99_ms_median": med(v.iter().filter_map(|s| s.p99).collect(), 3),
        "max_ms_median": med(v.iter().filter_map(|s| s.max).collect(), 3),
        "wire_bytes_per_set_median": med(v.iter().filter_map(|s| s.wire_per_set).collect(), 0),
        "checkpoints_median": med(v.iter().filter_map(|s| s.checkpoints).collect(), 0),
        "stop_ms_median_median": med(v.iter().filter_map(|s| s.stop_ms_median).collect(), 3),
        "rps_over_redis": ratio(med(rps, 0), med(redis_rps, 0), 4),
        "rps_over_redis_paired": min_med_max(&paired, 4),
        "p50_over_redis": ratio(p50, redis_p50, 2),
    })
}

/// Per (load, configuration): the successful runs' figures, failed and disturbed runs.
#[derive(Default)]
struct Tally {
    samples: BTreeMap<(&'static str, String), Vec<Sample>>,
    failed: BTreeMap<(&'static str, String), usize>,
    disturbed: BTreeMap<(&'static str, String), usize>,
    takeovers: usize,
}

/// What one run gave.
struct RunResult {
    sample: Sample,
    /// Set for a run that is not a data point (a takeover, errors, a dead process).
    failure: Option<String>,
    takeover: bool,
}

fn scratch(work: &Path, what: &str) -> Result<PathBuf> {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = work.join(format!(
        "kv-bench-{}-commit-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    register_dir(&d);
    Ok(d)
}

/// Removes a scratch directory when dropped (declared before the process guards, so it is
/// dropped after them: the processes are gone first).
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        remove_dir(&self.0);
    }
}

fn run_one(ctx: &Ctx, cfg: &Config, load: LoadKind, line: &mut Value) -> Result<RunResult> {
    match cfg {
        Config::Redis => run_redis(ctx, load, line),
        Config::Hotspare { bins, kind } => run_hotspare(ctx, bins, *kind, load, line),
    }
}

/// Drops every `HOTSPARE_*` variable of the harness's own environment from a child's.
fn clean_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HOTSPARE_") {
            c.env_remove(k);
        }
    }
}

fn run_redis(ctx: &Ctx, load: LoadKind, line: &mut Value) -> Result<RunResult> {
    let dir = scratch(ctx.work_dir, "redis")?;
    let _cleanup = Scratch(dir.clone());
    let port = free_port();
    let mut c = Command::new("taskset");
    c.args(["-c", "0"]).arg(ctx.redis_server);
    c.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
    c.args(["--save", "", "--appendonly", "yes"]);
    c.args(["--appendfsync", "always"]);
    c.args(["--daemonize", "no"]);
    c.arg("--dir").arg(&dir);
    c.args(["--server_cpulist", "0", "--bgsave_cpulist", "1"]);
    c.args(["--bio_cpulist", "1", "--aof_rewrite_cpulist", "1"]);
    c.stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("redis.log"))?)
        .stderr(std::fs::File::create(dir.join("redis.err"))?);
    let mut server = ChildGuard::spawn(c, "redis-server")?;
    wait_ping(port, &mut server, Duration::from_secs(30))
        .with_context(|| format!("redis-server: {}", tail_file(&dir.join("redis.log"), 10)))?;
    let mut conn = Conn::local(port)?;
    let persistence = conn.info("persistence")?;
    let fsync = match conn.cmd(&["CONFIG", "GET", "appendfsync"])? {
        crate::resp::Reply::Array(Some(v)) => v
            .get(1)
            .cloned()
            .and_then(|r| r.text().ok())
            .unwrap_or_default(),
        _ => String::new(),
    };
    line["server"] = json!("redis");
    line["durability"] = json!("appendfsync always");
    line["aof_enabled"] = json!(info_f64(&persistence, "aof_enabled"));
    line["appendfsync"] = json!(fsync);
    let b = bench(ctx, load, port, &dir)?;
    let after = Conn::local(port).and_then(|mut c| c.info("persistence"));
    line["aof_rewrites"] = json!(after.ok().and_then(|i| info_f64(&i, "aof_rewrites")));
    let alive = server.exited().is_none();
    fill_bench(line, &b);
    line["server_alive"] = json!(alive);
    let failure = bench_failure(&b)
        .or_else(|| (!alive).then(|| "redis-server died".into()))
        .map(|f| format!("{f}; redis log: {}", tail_file(&dir.join("redis.log"), 10)));
    Ok(RunResult {
        sample: b.sample(),
        failure,
        takeover: false,
    })
}

fn run_hotspare(
    ctx: &Ctx,
    bins: &HsBins,
    kind: ConfigKind,
    load: LoadKind,
    line: &mut Value,
) -> Result<RunResult> {
    let dir = scratch(ctx.work_dir, "hotspare")?;
    let _cleanup = Scratch(dir.clone());
    let with_spare = kind != ConfigKind::Local;
    line["server"] = json!("hotspare-kv");
    line["build"] = json!(bins.label);
    line["spare"] = json!(if !with_spare {
        "none"
    } else if ctx.link.is_some() {
        "tbf"
    } else {
        "loopback"
    });
    let durability = match kind {
        ConfigKind::Fsynced => Some("fsynced"),
        ConfigKind::Received => Some("received"),
        _ => None,
    };
    line["durability"] = json!(durability.unwrap_or("local image dir"));
    let key_file = dir.join("key");
    std::fs::write(&key_file, format!("kv-bench commit {}", fastrand::u64(..)))?;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    let spare_log = dir.join("spare.log");
    // Declared before the primary: dropped (killed) after it would let it see a dead primary
    // and take over; so it is moved into an Option and dropped first explicitly.
    let mut spare: Option<ChildGuard> = None;
    let mut spare_addr = None;
    if with_spare {
        let sport = free_port();
        let ip = ctx.link.map_or("127.0.0.1".to_owned(), |l| l.ns_ip.clone());
        let addr: SocketAddr = format!("{ip}:{sport}").parse()?;
        let mut c = match ctx.link {
            Some(l) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &l.ns, "taskset", "-c", "1"]);
                c.arg(&bins.resume);
                c
            }
            None => {
                let mut c = Command::new("taskset");
                c.args(["-c", "1"]).arg(&bins.resume);
                c
            }
        };
        c.args(["--listen", &addr.to_string(), "--key-file"])
            .arg(&key_file)
            .arg("--image-dir")
            .arg(dir.join("spare"))
            .args(["--exec", "/bin/true"]);
        clean_env(&mut c);
        c.env("HOTSPARE_HEAP_SIZE", &ctx.args.heap)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("spare.out"))?)
            .stderr(std::fs::File::create(&spare_log)?);
        spare = Some(ChildGuard::spawn(c, "hotspare-resume")?);
        wait_connect(addr, Duration::from_secs(10))
            .with_context(|| format!("spare: {}", tail_file(&spare_log, 10)))?;
        spare_addr = Some(addr);
    }
    let kport = free_port();
    let mut c = Command::new(&bins.kv);
    c.args(["--bind", "127.0.0.1", "--port", &kport.to_string()]);
    c.args(["--cpt-every-write", "--cpt-ms", "0"]);
    c.args(["--serve-cpu", "0", "--background-cpu", "1"]);
    clean_env(&mut c);
    c.env("HOTSPARE_HEAP_SIZE", &ctx.args.heap);
    c.env("HOTSPARE_IMAGE_DIR", dir.join("image"));
    if let Some(addr) = spare_addr {
        c.env("HOTSPARE_SPARE", addr.to_string());
        c.env("HOTSPARE_KEY_FILE", &key_file);
    }
    if let Some(d) = durability {
        c.env("HOTSPARE_DURABILITY", d);
    }
    let primary_log = dir.join("primary.log");
    c.stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("primary.out"))?)
        .stderr(std::fs::File::create(&primary_log)?);
    let mut primary = ChildGuard::spawn(c, "hotspare-kv")?;
    let logs = || {
        format!(
            "primary log: {}\nspare log: {}",
            tail_file(&primary_log, 15),
            tail_file(&spare_log, 15)
        )
    };
    if let Err(e) = wait_ping(kport, &mut primary, Duration::from_secs(60)) {
        line["durability_log"] = json!(grep_durability(&primary_log));
        bail!("{e:#}; {}", logs());
    }
    if with_spare {
        line["spare_settled"] = json!(wait_applied(
            &dir.join("spare").join("status"),
            Duration::from_secs(10)
        ));
    }
    // Whatever goes wrong from here on, the processes and the spare's log are still checked.
    let measured = (|| -> Result<(Vec<(String, String)>, Bench)> {
        let mut conn = Conn::local(kport)?;
        conn.cmd(&["CONFIG", "RESETSTAT"])?.ok()?;
        let before = conn.info("hotspare")?;
        Ok((before, bench(ctx, load, kport, &dir)?))
    })();
    let (before, b, measure_error) = match measured {
        Ok((before, b)) => (before, b, None),
        Err(e) => (Vec::new(), Bench::default(), Some(format!("{e:#}"))),
    };
    // A primary that died or hangs gives no INFO: the run fails below, with the logs.
    let after = match Conn::local(kport).and_then(|mut c| c.info("hotspare")) {
        Ok(i) => i,
        Err(e) => {
            line["info_error"] = json!(format!("{e:#}"));
            Vec::new()
        }
    };
    let primary_alive = primary.exited().is_none();
    let spare_alive = spare.as_mut().map(|s| s.exited().is_none());
    // Look at the spare's log before anything is killed.
    let spare_text = std::fs::read_to_string(&spare_log)
        .unwrap_or_default()
        .to_lowercase();
    let takeover = spare_text.contains("taking over") || spare_text.contains("took over");
    drop(spare.take());
    drop(primary);
    fill_bench(line, &b);
    let f = |k: &str| info_f64(&after, k);
    let wire = match (
        info_f64(&before, "hotspare_wire_bytes"),
        f("hotspare_wire_bytes"),
    ) {
        (Some(x), Some(y)) if with_spare => Some(y - x),
        _ => None,
    };
    let wire_per_set = wire.filter(|_| b.n > 0).map(|w| round(w / b.n as f64, 0));
    line["wire_bytes"] = json!(wire);
    line["wire_bytes_per_set"] = json!(wire_per_set);
    let checkpoints = f("hotspare_checkpoints");
    line["checkpoints"] = json!(checkpoints);
    line["sets_per_checkpoint"] = json!(checkpoints
        .filter(|c| *c > 0.0)
        .map(|c| round(b.n as f64 / c, 2)));
    for k in [
        "hotspare_every_write",
        "hotspare_coalesced",
        "hotspare_failed",
        "hotspare_stop_ms_median",
        "hotspare_stop_ms_p99",
        "hotspare_stop_ms_max",
        "hotspare_capture_ms_median",
        "hotspare_bytes_median",
    ] {
        line[k.trim_start_matches("hotspare_")] = json!(f(k));
    }
    // Whatever the server says about durability (the variable is new: recorded, not required).
    let info_durability: BTreeMap<&str, &str> = after
        .iter()
        .filter(|(k, _)| k.contains("durab"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    line["durability_info"] = json!(info_durability);
    line["durability_log"] = json!(grep_durability(&primary_log));
    line["primary_alive"] = json!(primary_alive);
    line["spare_alive"] = json!(spare_alive);
    line["takeover"] = json!(takeover);
    let failure = if takeover {
        Some(format!(
            "the spare took over a live primary (primary alive at the end: {primary_alive}); {}",
            logs()
        ))
    } else if !primary_alive {
        Some(format!("the primary died; {}", logs()))
    } else if spare_alive == Some(false) {
        Some(format!("the spare died; {}", logs()))
    } else {
        measure_error
            .or_else(|| bench_failure(&b))
            .map(|f| format!("{f}; {}", logs()))
    };
    Ok(RunResult {
        sample: Sample {
            wire_per_set,
            checkpoints,
            stop_ms_median: f("hotspare_stop_ms_median"),
            ..b.sample()
        },
        failure,
        takeover,
    })
}

/// Lines of a log that mention "durability" (what the primary said about the variable).
fn grep_durability(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.to_lowercase().contains("durability"))
        .take(5)
        .map(str::to_owned)
        .collect()
}

/// One redis-benchmark run's figures.
#[derive(Debug, Default, Clone)]
struct Bench {
    n: u64,
    clients: u32,
    client_cpu: Option<usize>,
    secs: f64,
    status: Option<ExitStatus>,
    fig: Figures,
    /// Why `fig` is empty, if it is.
    parse_error: Option<String>,
    /// "Error…" lines redis-benchmark printed (error replies, connection errors).
    errors: Vec<String>,
}

impl Bench {
    fn sample(&self) -> Sample {
        Sample {
            rep: 0,
            disturbed: false,
            rps: self.fig.rps,
            p50: self.fig.p50,
            p99: self.fig.p99,
            max: self.fig.max,
            wire_per_set: None,
            checkpoints: None,
            stop_ms_median: None,
        }
    }
}

fn fill_bench(line: &mut Value, b: &Bench) {
    line["clients"] = json!(b.clients);
    line["n"] = json!(b.n);
    line["client_cpu"] = json!(b.client_cpu);
    line["bench_secs"] = json!(round(b.secs, 3));
    line["rps"] = json!(round(b.fig.rps, 0));
    line["avg_ms"] = json!(b.fig.avg);
    line["min_ms"] = json!(b.fig.min);
    line["p50_ms"] = json!(b.fig.p50);
    line["p95_ms"] = json!(b.fig.p95);
    line["p99_ms"] = json!(b.fig.p99);
    line["max_ms"] = json!(b.fig.max);
    if !b.errors.is_empty() {
        line["bench_errors"] = json!(b.errors);
    }
}

fn bench_failure(b: &Bench) -> Option<String> {
    if let Some(e) = &b.parse_error {
        return Some(e.clone());
    }
    if !b.status.is_some_and(|s| s.success()) {
        return Some(format!("redis-benchmark failed: {:?}", b.status));
    }
    if b.fig.rps <= 0.0 {
        return Some("redis-benchmark printed no throughput".into());
    }
    if !b.errors.is_empty() {
        return Some(format!("redis-benchmark reported errors: {:?}", b.errors));
    }
    None
}

/// Runs redis-benchmark once (SET only, 56-byte values, random keys), bounded in time.
fn bench(ctx: &Ctx, load: LoadKind, port: u16, dir: &Path) -> Result<Bench> {
    let (clients, n, cpu) = match load {
        LoadKind::Multi => (ctx.args.multi_clients, ctx.args.multi_n, None),
        LoadKind::Serial => (1, ctx.args.serial_n, Some(ctx.client_cpu)),
    };
    let out = dir.join("redis-benchmark.out");
    let err = dir.join("redis-benchmark.err");
    let mut c = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(ctx.redis_benchmark);
            c
        }
        None => Command::new(ctx.redis_benchmark),
    };
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-n", &n.to_string()])
        .args(["-t", "set", "-d", "56", "-r", "1000000", "--csv"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?);
    let limit = Duration::from_secs(ctx.args.bench_timeout_secs.unwrap_or(60 + n * 4 / 1000));
    let t = Instant::now();
    let child = ChildGuard::spawn(c, "redis-benchmark")?;
    let status = child.wait_timeout(limit)?;
    let secs = t.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let etext = std::fs::read_to_string(&err).unwrap_or_default();
    // Not an error here: the run is then a failed run, after the same checks as any other.
    let (fig, parse_error) = match parse_bench(&text) {
        Some(f) => (f, None),
        None => (
            Figures::default(),
            Some(format!(
                "no SET figures in redis-benchmark's output ({status}): stdout {:?}, stderr {:?}",
                tail_str(&text, 500),
                tail_str(&etext, 500)
            )),
        ),
    };
    let errors = text
        .lines()
        .chain(etext.lines())
        .filter(|l| l.contains("Error") || l.contains("error"))
        .take(5)
        .map(str::to_owned)
        .collect();
    Ok(Bench {
        n,
        clients,
        client_cpu: cpu,
        secs,
        status: Some(status),
        fig,
        parse_error,
        errors,
    })
}

fn tail_str(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Throughput and latency (ms) of one redis-benchmark test.
#[derive(Debug, Default, Clone, PartialEq)]
struct Figures {
    rps: f64,
    avg: Option<f64>,
    min: Option<f64>,
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

/// Parses redis-benchmark's `--csv` output (Redis 7: `"test","rps","avg_latency_ms",…`), or
/// else its normal output ("throughput summary: N requests per second" and the "latency
/// summary (msec):" table of avg/min/p50/p95/p99/max).
fn parse_bench(text: &str) -> Option<Figures> {
    parse_csv(text).or_else(|| parse_text(text))
}

fn parse_csv(text: &str) -> Option<Figures> {
    let split = |l: &str| -> Vec<String> {
        l.split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut lines = text.lines().filter(|l| l.starts_with('"'));
    let header = split(lines.next()?);
    let col = |name: &str| header.iter().position(|h| h == name);
    let (ti, ri) = (col("test")?, col("rps")?);
    let row = lines
        .map(split)
        .find(|f| f.get(ti).is_some_and(|t| t == "SET"))?;
    let num = |name: &str| col(name).and_then(|i| row.get(i)?.parse().ok());
    Some(Figures {
        rps: row.get(ri)?.parse().ok()?,
        avg: num("avg_latency_ms"),
        min: num("min_latency_ms"),
        p50: num("p50_latency_ms"),
        p95: num("p95_latency_ms"),
        p99: num("p99_latency_ms"),
        max: num("max_latency_ms"),
    })
}

fn parse_text(text: &str) -> Option<Figures> {
    // Progress lines end in '\r'; the summary is after the last one.
    let text = text.replace('\r', "\n");
    let rps: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("throughput summary:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .or_else(|| {
            // Older versions: "N requests per second" / "SET: N requests per second".
            text.lines()
                .filter(|l| l.contains("requests per second"))
                .filter_map(|l| {
                    l.split_whitespace()
                        .rev()
                        .nth(3)
                        .and_then(|n| n.parse().ok())
                })
                .next_back()
        })?;
    let mut f = Figures {
        rps,
        ..Figures::default()
    };
    let mut lines = text.lines();
    if lines.any(|l| l.trim().starts_with("latency summary")) {
        let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        let values: Vec<f64> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        for (h, v) in header.iter().zip(values) {
            let slot = match *h {
                "avg" => &mut f.avg,
                "min" => &mut f.min,
                "p50" => &mut f.p50,
                "p95" => &mut f.p95,
                "p99" => &mut f.p99,
                "max" => &mut f.max,
                _ => continue,
            };
            *slot = Some(v);
        }
    }
    Some(f)
}

/// Waits until the server on `port` answers PING; fails at once if the process exits.
fn wait_ping(port: u16, child: &mut ChildGuard, within: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        if let Some(st) = child.exited() {
            bail!("server exited ({st}) before answering");
        }
        if let Ok(mut c) = Conn::local(port) {
            c.set_timeout(within)?;
            if c.cmd(&["PING"]).is_ok_and(|r| r.ok().is_ok()) {
                return Ok(());
            }
        }
        if t.elapsed() > within {
            bail!("no answer to PING on port {port} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_connect(addr: SocketAddr, within: Duration) -> Result<()> {
    let t = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if t.elapsed() > within {
            bail!("nothing listens on {addr} after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Waits (bounded) until the spare's status file says every durable checkpoint is applied.
fn wait_applied(status: &Path, within: Duration) -> bool {
    let t = Instant::now();
    loop {
        let v: Option<Value> = std::fs::read_to_string(status)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        let field = |k: &str| v.as_ref().and_then(|v| v[k].as_u64());
        if let (Some(seq), Some(applied)) = (field("seq"), field("applied")) {
            if seq > 0 && applied >= seq {
                return true;
            }
        }
        if t.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A run during which other processes used more user CPU time than this (in CPUs, averaged
/// over the run) is marked `disturbed`.
const DISTURBED_CPUS: f64 = 0.05;

/// User CPU time of the whole machine and of this process with its reaped children, in ticks.
struct CpuSnapshot {
    at: Instant,
    machine_user: u64,
    own_user: u64,
}

struct ForeignCpu {
    wall_secs: f64,
    foreign_user_secs: f64,
}

impl CpuSnapshot {
    fn take() -> CpuSnapshot {
        // /proc/stat "cpu  user nice system …"; user includes guest time.
        let machine_user = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let l = s.lines().next()?.to_owned();
                let f: Vec<u64> = l
                    .split_whitespace()
                    .skip(1)
                    .take(2)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                Some(f.iter().sum())
            })
            .unwrap_or(0);
        // /proc/self/stat fields 14 (utime) and 16 (cutime: reaped children), after the comm.
        let own_user = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.to_owned();
                let f: Vec<&str> = rest.split_whitespace().collect();
                // rest starts at field 3 (state): utime is field 14, cutime field 16.
                let g = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
                Some(g(14)? + g(16)?)
            })
            .unwrap_or(0);
        CpuSnapshot {
            at: Instant::now(),
            machine_user,
            own_user,
        }
    }

    fn foreign_since(&self, start: &CpuSnapshot) -> ForeignCpu {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let machine = self.machine_user.saturating_sub(start.machine_user);
        let own = self.own_user.saturating_sub(start.own_user);
        ForeignCpu {
            wall_secs: self.at.duration_since(start.at).as_secs_f64(),
            foreign_user_secs: machine.saturating_sub(own) as f64 / hz,
        }
    }
}

/// Processes that are not ours but compete for the CPUs or the disk while we measure: other
/// servers, benchmarks and builds (`comm (pid)`), sampled from /proc.
fn foreign_processes() -> Vec<String> {
    // comm is the program's file name cut to 15 bytes ("hotspare-kv-before" -> "hotspare-kv-bef").
    const PREFIXES: [&str; 7] = [
        "redis-",
        "hotspare",
        "kv-bench",
        "spare_core",
        "image_dir_recov",
        "wire_decoder",
        "stream_decoder",
    ];
    const EXACT: [&str; 2] = ["cargo", "rustc"];
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces and parentheses: split at the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let watched = PREFIXES.iter().any(|p| comm.starts_with(p)) || EXACT.contains(&comm);
        if ppid == me || pid == me || !watched {
            continue;
        }
        // A stopped process (a paused fuzzer) competes for nothing.
        if state == "T" {
            continue;
        }
        out.push(format!("{comm} ({pid})"));
    }
    out.sort();
    out
}

fn loadavg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn tail_file(p: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs a short command (bounded in time; small output only), returning its stdout.
fn run_bounded(cmd: &mut Command, within: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {cmd:?}"))?;
    let t = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if t.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} still running after {within:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256(p: &Path) -> Option<String> {
    let out = run_bounded(Command::new("sha256sum").arg(p), Duration::from_secs(30)).ok()?;
    out.split_whitespace().next().map(str::to_owned)
}

/// The spare's "remote" link: a network namespace of our own, joined to the root namespace by
/// a veth pair (`{ns}a` here, `{ns}b` in it) shaped with tbf on both ends. Deleted on drop
/// (and by the signal reaper): deleting the namespace deletes the pair.
pub struct TbfLink {
    ns: String,
    ns_ip: String,
}

const TBF: [&str; 7] = ["tbf", "rate", "1gbit", "burst", "128kb", "latency", "50ms"];

impl TbfLink {
    fn setup(ns: &str) -> Result<TbfLink> {
        if ns.is_empty()
            || ns.len() > 13
            || !ns.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("--netns {ns:?}: 1-13 characters of [A-Za-z0-9-] (its veths are NAMEa/NAMEb)");
        }
        let ip =
            |args: &[&str]| run_bounded(Command::new("ip").args(args), Duration::from_secs(10));
        let existing = ip(&["netns", "list"])?;
        if existing
            .lines()
            .any(|l| l.split_whitespace().next() == Some(ns))
        {
            bail!("network namespace {ns} exists already: not ours, not touching it");
        }
        let (ha, nb) = (format!("{ns}a"), format!("{ns}b"));
        for dev in [&ha, &nb] {
            if ip(&["link", "show", dev]).is_ok() {
                bail!("a link named {dev} exists already: not ours, not touching it");
            }
        }
        // A /30 in 10.250.X.0/24 that no address of the root namespace is in.
        let addrs = ip(&["-o", "-4", "addr", "show"])?;
        let routes = ip(&["-4", "route", "show"])?;
        let x = (0..250u32)
            .map(|i| (std::process::id() + i) % 250)
            .find(|x| {
                let p = format!("10.250.{x}.");
                !addrs.contains(&p) && !routes.contains(&p) && !routes.contains("10.250.0.0/16")
            })
            .context("no free 10.250.X.0/30 for the veth pair")?;
        let (host_ip, ns_ip) = (format!("10.250.{x}.1"), format!("10.250.{x}.2"));
        ip(&["netns", "add", ns])?;
        register_netns(ns);
        let link = TbfLink {
            ns: ns.to_owned(),
            ns_ip: ns_ip.clone(),
        };
        // From here on a failure drops `link`, which deletes the namespace and the veth.
        let in_ns = |args: &[&str]| {
            run_bounded(
                Command::new("ip").args(["netns", "exec", ns]).args(args),
                Duration::from_secs(10),
            )
        };
        ip(&["link", "add", &ha, "type", "veth", "peer", "name", &nb])?;
        ip(&["link", "set", &nb, "netns", ns])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &ha])?;
        ip(&["link", "set", &ha, "up"])?;
        in_ns(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &nb])?;
        in_ns(&["ip", "link", "set", &nb, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        let mut tc = vec!["qdisc", "add", "dev", &ha, "root"];
        tc.extend_from_slice(&TBF);
        run_bounded(Command::new("tc").args(&tc), Duration::from_secs(10))?;
        let mut tc = vec!["tc", "qdisc", "add", "dev", &nb, "root"];
        tc.extend_from_slice(&TBF);
        in_ns(&tc)?;
        let qdisc_host = run_bounded(
            Command::new("tc").args(["qdisc", "show", "dev", &ha]),
            Duration::from_secs(10),
        )?;
        let qdisc_ns = in_ns(&["tc", "qdisc", "show", "dev", &nb])?;
        // The address must answer through the pair before any spare is started.
        in_ns(&["ip", "-4", "addr", "show", "dev", &nb])?;
        emit(json!({
            "kind": "commit_link",
            "link": "tbf",
            "netns": ns,
            "veth": [ha, nb],
            "host_ip": host_ip,
            "spare_ip": ns_ip,
            "qdisc_host": qdisc_host.trim(),
            "qdisc_spare": qdisc_ns.trim(),
        }));
        Ok(link)
    }
}

impl Drop for TbfLink {
    fn drop(&mut self) {
        delete_netns(&self.ns);
        eprintln!(
            "kv-bench: deleted network namespace {} and its veth pair",
            self.ns
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv_of_redis7() {
        let t = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
                 \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                 \"SET\",\"5602.24\",\"0.177\",\"0.088\",\"0.167\",\"0.239\",\"0.335\",\"3.6\"\n";
        let f = parse_bench(t).unwrap();
        assert_eq!(f.rps, 5602.24);
        assert_eq!(f.p50, Some(0.167));
        assert_eq!(f.p99, Some(0.335));
        assert_eq!(f.max, Some(3.6));
    }

    #[test]
    fn parses_normal_output() {
        let t = "SET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r\
                 ====== SET ======\n  5000 requests completed in 0.89 seconds\n\
                 Summary:\n  throughput summary: 5605.38 requests per second\n\
                 \x20 latency summary (msec):\n          avg       min       p50       p95       p99       max\n\
                 \x20       0.176     0.080     0.167     0.239     0.343     3.583\n";
        let f = parse_bench(t).unwrap();
        assert_eq!(f.rps, 5605.38);
        assert_eq!(f.avg, Some(0.176));
        assert_eq!(f.p99, Some(0.343));
        assert_eq!(f.max, Some(3.583));
    }

    #[test]
    fn labels() {
        assert_eq!(
            labelled("before=/tmp/x"),
            ("before".into(), PathBuf::from("/tmp/x"))
        );
        assert_eq!(
            labelled("/tmp/hotspare-kv-before"),
            (
                "hotspare-kv-before".into(),
                PathBuf::from("/tmp/hotspare-kv-before")
            )
        );
    }
}
