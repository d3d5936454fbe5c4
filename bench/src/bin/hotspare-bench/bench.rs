//! `hotspare-bench cpt` — the stop time of `cpt()` per strategy and dirty fraction, in process;
//! `hotspare-bench resume` — exec → worker-loop latency of a resume, per state size.
//! One JSON object per line on stdout; progress on stderr.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use hotspare::config::parse_size;
use hotspare::{HotSpare, Strategy};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

#[derive(Subcommand)]
pub enum Bench {
    /// Stop time of cpt() for a heap with a given dirty fraction, per strategy.
    Cpt {
        /// Checkpoint heap size (all of it filled).
        #[arg(long, default_value = "1G")]
        heap: String,
        /// Dirty fractions in percent.
        #[arg(long, value_delimiter = ',', default_value = "1,10")]
        dirty: Vec<f64>,
        /// Checkpoints per configuration.
        #[arg(long, default_value_t = 15)]
        runs: usize,
        /// Image directory (default: a fresh one under /tmp, removed afterwards).
        #[arg(long)]
        image_dir: Option<String>,
    },
    /// `hotspare-bench demo` repeated: detection, restore and client-seen downtime per failover.
    Failover {
        /// Failovers to run.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds of load before each kill.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Keys in the table before the load (72-byte pairs).
        #[arg(long, default_value_t = 0)]
        preload: u64,
    },
    /// Time from exec to the worker loop for a resume, per state size.
    Resume {
        /// State sizes.
        #[arg(long, value_delimiter = ',', default_value = "64M,1G,4G")]
        sizes: Vec<String>,
        /// Resumes per size.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

fn median_p99(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let m = v[v.len() / 2];
    let p = v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1];
    ((m * 1e3).round() / 1e3, (p * 1e3).round() / 1e3)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn run(b: Bench) -> Result<()> {
    match b {
        Bench::Cpt {
            heap,
            dirty,
            runs,
            image_dir,
        } => cpt(&heap, &dirty, runs, image_dir),
        Bench::Resume { sizes, runs } => resume(&sizes, runs),
        Bench::Failover {
            runs,
            seconds,
            preload,
        } => failover(runs, seconds, preload),
    }
}

fn cpt(heap: &str, dirty: &[f64], runs: usize, image_dir: Option<String>) -> Result<()> {
    let size = parse_size(heap)?;
    let tmp = tempdir()?;
    let dir = image_dir.unwrap_or_else(|| tmp.clone());
    let mut config = hotspare::Config::load()?;
    config.image_dir = dir.into();
    config.heap_size = size + (8 << 20);
    let hs = hotspare::Builder::new(config).open()?;
    let page = 4096;
    let pages = size / page;
    // The state: one big buffer in the heap, every page written.
    let buf = hs
        .heap()
        .set_root(hotspare::Mutex::new(allocator_api2::vec::from_elem_in(
            1u8,
            size,
            hs.heap().alloc(),
        )))?;
    eprintln!(
        "bench cpt: {} MiB heap filled; first (full) checkpoint",
        size >> 20
    );
    let st = hs.cpt()?;
    hs.wait_durable(st.seq)?;
    let (backend, _) = hs.backend();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut order: Vec<usize> = (0..pages).collect();
    for &pct in dirty {
        let k = ((pages as f64 * pct / 100.0) as usize).max(1);
        for strategy in [Strategy::Copy, Strategy::Fork, Strategy::Auto] {
            hs.set_strategy(strategy);
            let (mut stop, mut chosen, mut query) = (Vec::new(), Vec::new(), Vec::new());
            for run in 0..runs {
                for i in 0..k {
                    let j = rng.usize(i..pages);
                    order.swap(i, j);
                }
                {
                    let mut g = buf.lock();
                    for &p in &order[..k] {
                        g[p * page] = run as u8;
                    }
                }
                let st = hs.cpt()?;
                stop.push(st.stopped.as_secs_f64() * 1e3);
                query.push(st.query.as_secs_f64() * 1e3);
                chosen.push(st.strategy);
                hs.wait_durable(st.seq)?;
            }
            let (median, p99) = median_p99(&mut stop);
            let (query_median, _) = median_p99(&mut query);
            let forks = chosen.iter().filter(|s| **s == Strategy::Fork).count();
            println!(
                "{{\"bench\":\"cpt\",\"backend\":\"{backend}\",\"heap_bytes\":{size},\"dirty_pct\":{pct},\"dirty_pages\":{k},\"strategy\":\"{strategy:?}\",\"runs\":{runs},\"stop_ms_median\":{median},\"stop_ms_p99\":{p99},\"query_ms_median\":{query_median},\"auto_chose_fork\":{forks}}}"
            );
            std::io::stdout().flush()?;
        }
    }
    drop(hs);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn tempdir() -> Result<String> {
    let d = std::env::temp_dir().join(format!("hotspare-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d.to_string_lossy().into_owned())
}

/// The program resumed by `bench resume`: fills `fill` bytes of state, takes a full checkpoint
/// and exits; resumed, its worker prints the monotonic clock at entry and the library's own
/// restore time, then exits.
pub fn child(fill: &str) -> Result<()> {
    let size = parse_size(fill)?;
    let Some(hs) = hotspare::HotSpare::builder()?
        .worker("bench", |hs: &HotSpare| {
            let now = monotonic_ns();
            if let Some(r) = hs.resumed() {
                println!("WORKER {now} {}", r.restore_time.as_nanos());
                std::process::exit(0);
            }
        })
        .start()?
        .fresh_or_run()
    else {
        return Ok(());
    };
    let v = allocator_api2::vec::from_elem_in(3u8, size, hs.heap().alloc());
    hs.heap().set_root(hotspare::Mutex::new(v))?;
    let st = hs.cpt()?;
    hs.wait_durable(st.seq)?;
    Ok(())
}

fn resume(sizes: &[String], runs: usize) -> Result<()> {
    let exe = std::env::current_exe()?;
    for s in sizes {
        let size = parse_size(s)?;
        let dir = tempdir()?;
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("bench resume: {} MiB: building the image", size >> 20);
        let heap = (size + (64 << 20)).to_string();
        let st = Command::new(&exe)
            .args(["bench-child", s])
            .env("HOTSPARE_IMAGE_DIR", &dir)
            .env("HOTSPARE_HEAP_SIZE", &heap)
            .status()?;
        if !st.success() {
            bail!("building the {s} image failed");
        }
        let (mut total, mut lib) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let t0 = monotonic_ns();
            let mut child = Command::new(&exe)
                .args(["bench-child", s])
                .env("HOTSPARE_IMAGE_DIR", &dir)
                .env("HOTSPARE_HEAP_SIZE", &heap)
                .env("HOTSPARE_RESUME", &dir)
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
            child.wait()?;
            let mut f = line.split_whitespace().skip(1);
            let at: u64 = f.next().context("no WORKER line")?.parse()?;
            let restore: u64 = f.next().context("no restore time")?.parse()?;
            total.push((at - t0) as f64 / 1e6);
            lib.push(restore as f64 / 1e6);
        }
        let (tm, tp) = median_p99(&mut total);
        let (lm, lp) = median_p99(&mut lib);
        println!(
            "{{\"bench\":\"resume\",\"state_bytes\":{size},\"runs\":{runs},\"exec_to_worker_ms_median\":{tm},\"exec_to_worker_ms_max\":{tp},\"library_restore_ms_median\":{lm},\"library_restore_ms_max\":{lp}}}"
        );
        std::io::stdout().flush()?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn failover(runs: usize, seconds: f64, preload: u64) -> Result<()> {
    let (mut det, mut rest, mut down) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        eprintln!("bench failover: run {}/{runs}", i + 1);
        let r = super::demo::run_with(seconds, preload)?;
        if std::env::var_os("HOTSPARE_DEMO_VERBOSE").is_some() {
            eprint!("{}", r.spare_log);
        }
        if r.lost > 0 {
            bail!("{} acknowledged writes lost", r.lost);
        }
        println!(
            "{{\"bench\":\"failover\",\"run\":{i},\"preloaded_keys\":{preload},\"writes_acked\":{},\"keys_lost\":{},\"detection_ms\":{},\"restore_ms\":{},\"downtime_ms\":{:.3},\"wire_bytes_load\":{},\"checkpoints\":{}}}",
            r.acked,
            r.lost,
            r.detection_ms.unwrap_or(-1.0),
            r.restore_ms.unwrap_or(-1.0),
            r.downtime_ms,
            r.wire_bytes_load,
            r.stats
        );
        det.push(r.detection_ms.unwrap_or(f64::NAN));
        rest.push(r.restore_ms.unwrap_or(f64::NAN));
        down.push(r.downtime_ms);
    }
    let (d, _) = median_p99(&mut det);
    let (r, _) = median_p99(&mut rest);
    let (w, wmax) = median_p99(&mut down);
    println!(
        "{{\"bench\":\"failover-summary\",\"preloaded_keys\":{preload},\"runs\":{runs},\"detection_ms_median\":{d},\"restore_ms_median\":{r},\"downtime_ms_median\":{w},\"downtime_ms_max\":{wmax}}}"
    );
    Ok(())
}
