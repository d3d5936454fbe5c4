//! `cpt-bench`: what dirty tracking and `cptfork` cost, per backend, registered size and dirty
//! fraction. One JSON object per line on stdout (medians over `--runs`); progress on stderr.
//!
//! For each (backend, size, dirty %) and each run it writes one byte to `dirty %` of the pages,
//! chosen at random and visited in random order, then measures:
//! * `first_write_fault_us`: (time of those first writes − time of the same writes repeated)
//!   / pages — the per-page price the application pays during an epoch;
//! * `query_ms`: QUERY (harvest + start of the next epoch);
//! * `copy_dirty_ms`: gathering the reported runs into a staging buffer (the Copy strategy);
//! * `cptfork_parent_ms`: `cptfork` as seen by the parent (QUERY + fork), child exits at once;
//! * `plain_fork_ms`: a bare `fork()` of the same process in the same state;
//! * `full_copy_ms`: copying the whole registered range (the no-tracking alternative);
//! * `bare_scan_ms` (`uffd-wp` only): the same pages written again and harvested by a bare
//!   `PAGEMAP_SCAN` loop with no shim around it — the floor the shim's QUERY is compared with.
//!
//! Usage: `cpt-bench [--sizes 64M,1G,4G] [--dirty 0.1,1,10,50] [--backends uffd-wp,mprotect,full]
//! [--runs 5] [--thp] [--cpu N] [--ballast 4G]`.

use anyhow::{bail, Context, Result};
use clap::Parser;
use hotspare_sys::pagemap::{
    page_region, pm_scan_arg, PAGEMAP_SCAN, PAGE_IS_WRITTEN, PM_SCAN_CHECK_WPASYNC,
    PM_SCAN_WP_MATCHING,
};
use kmod_shim::{page_size, BackendChoice, ExitAtOnce, Range, Shim};
use serde::Serialize;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Measure dirty-page tracking and cptfork costs; prints JSON lines")]
struct Args {
    /// Registered sizes (K, M, G suffixes).
    #[arg(long, value_delimiter = ',', default_value = "64M,1G,4G")]
    sizes: Vec<String>,
    /// Dirty fractions in percent of the registered pages.
    #[arg(long, value_delimiter = ',', default_value = "0.1,1,10,50")]
    dirty: Vec<f64>,
    /// Backends to measure.
    #[arg(long, value_delimiter = ',', default_value = "uffd-wp,mprotect,full")]
    backends: Vec<String>,
    /// Repetitions per configuration (medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Let the kernel use transparent huge pages (default: 4 KiB pages, MADV_NOHUGEPAGE).
    #[arg(long)]
    thp: bool,
    /// Pin the benchmark to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Extra resident memory that is *not* registered (K, M, G), to show that QUERY does not
    /// grow with the rest of the process.
    #[arg(long)]
    ballast: Option<String>,
    /// Random seed for the choice of dirty pages.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Serialize)]
struct Line {
    backend: &'static str,
    registered_bytes: usize,
    page_size: usize,
    ballast_bytes: usize,
    thp: bool,
    dirty_pct: f64,
    dirty_pages: usize,
    reported_pages: usize,
    runs: usize,
    query_ms: f64,
    query_ms_min: f64,
    query_ms_max: f64,
    cptfork_parent_ms: f64,
    plain_fork_ms: f64,
    copy_dirty_ms: f64,
    full_copy_ms: f64,
    first_write_fault_us: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    bare_scan_ms: Option<f64>,
}

#[derive(Serialize)]
struct Unavailable<'a> {
    backend: &'a str,
    unavailable: String,
}

fn parse_size(s: &str) -> Result<usize> {
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num.parse().with_context(|| format!("bad size '{s}'"))?;
    Ok(n * mul)
}

/// An anonymous mapping, populated so that every page is resident.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    fn new(len: usize, thp: bool) -> Result<Region> {
        // SAFETY: a fresh anonymous mapping; nothing else is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap of {len} bytes: {}", std::io::Error::last_os_error());
        }
        let advice = if thp {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: advising our own mapping.
        unsafe { libc::madvise(p, len, advice) };
        let r = Region { ptr: p.cast(), len };
        for i in 0..r.pages() {
            r.touch(i, 1);
        }
        Ok(r)
    }
    fn pages(&self) -> usize {
        self.len / page_size()
    }
    fn touch(&self, page: usize, v: u8) {
        // SAFETY: `page` < pages(); the mapping is ours and writable (or tracked).
        unsafe { self.ptr.add(page * page_size()).write_volatile(v) }
    }
    fn slice(&self) -> &[u8] {
        // SAFETY: the mapping is readable for `len` bytes while self lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Median, rounded to 4 decimals (the clock is not better than that).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    round4(m)
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// The floor: one bare `PAGEMAP_SCAN` walk (resumed until done) with the same flags as the
/// `uffd-wp` backend, counting written pages into nothing.
fn bare_scan_ms(region: &Region, pagemap: &std::fs::File, out: &mut [page_region]) -> Result<f64> {
    use std::os::fd::AsRawFd;
    let t = Instant::now();
    let mut arg = pm_scan_arg {
        size: std::mem::size_of::<pm_scan_arg>() as u64,
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        start: region.ptr as u64,
        end: region.ptr as u64 + region.len as u64,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..Default::default()
    };
    loop {
        // SAFETY: `arg.vec` points at `out`, which holds `vec_len` records.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            bail!("PAGEMAP_SCAN: {}", std::io::Error::last_os_error());
        }
        if arg.walk_end >= arg.end {
            return Ok(ms(t));
        }
        arg.start = arg.walk_end;
    }
}

fn plain_fork_ms() -> Result<f64> {
    let t = Instant::now();
    // SAFETY: the child only calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe exit of the child.
        unsafe { libc::_exit(0) };
    }
    let elapsed = ms(t);
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    Ok(elapsed)
}

/// Writes `v` to each chosen page; returns the time in µs.
fn write_pages(region: &Region, chosen: &[u32], v: u8) -> f64 {
    let t = Instant::now();
    for &p in chosen {
        region.touch(p as usize, v);
    }
    t.elapsed().as_secs_f64() * 1e6
}

fn bench_size(args: &Args, size: usize, rng: &mut fastrand::Rng) -> Result<()> {
    eprintln!("cpt-bench: {} MiB: populating", size >> 20);
    let region = Region::new(size, args.thp)?;
    let mut staging = Region::new(size, args.thp)?;
    let mut full_copy = Vec::new();
    for _ in 0..args.runs {
        let t = Instant::now();
        staging.slice_mut().copy_from_slice(region.slice());
        full_copy.push(ms(t));
    }
    let full_copy_ms = median(&mut full_copy);
    let mut order: Vec<u32> = (0..region.pages() as u32).collect();

    for name in &args.backends {
        let choice: BackendChoice = name.parse()?;
        let mut shim = match Shim::new(choice) {
            Ok(s) => s,
            Err(e) => {
                let line = Unavailable {
                    backend: name,
                    unavailable: e.to_string(),
                };
                println!("{}", serde_json::to_string(&line)?);
                continue;
            }
        };
        let range = Range::new(region.ptr as usize, region.len)?;
        shim.add(&[range])?;
        shim.query()?;
        for &pct in &args.dirty {
            let k = ((region.pages() as f64 * pct / 100.0).round() as usize).max(1);
            eprintln!("cpt-bench: {} MiB {} {pct}%", size >> 20, shim.backend());
            let (mut query, mut copy, mut fault, mut reported) = (vec![], vec![], vec![], 0);
            let mut bare = vec![];
            let pagemap = std::fs::File::open("/proc/self/pagemap")?;
            let mut scan_out = vec![page_region::default(); 4096];
            for run in 0..args.runs {
                // Partial Fisher-Yates: the first k entries become a random sample.
                for i in 0..k {
                    let j = rng.usize(i..order.len());
                    order.swap(i, j);
                }
                let chosen = &order[..k];
                let first = write_pages(&region, chosen, run as u8);
                let again = write_pages(&region, chosen, run as u8 ^ 0x55);
                fault.push((first - again) / k as f64);
                let t = Instant::now();
                let set = shim.query()?;
                query.push(ms(t));
                reported = set.dirty_pages();
                if reported < k {
                    bail!("{}: {k} pages written, {reported} reported", shim.backend());
                }
                let t = Instant::now();
                let mut at = 0;
                let dst = staging.slice_mut();
                for (addr, len) in set.runs() {
                    // SAFETY: every run lies inside `region`, which is readable.
                    let src = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
                    dst[at..at + len].copy_from_slice(src);
                    at += len;
                }
                copy.push(ms(t));
                if shim.backend() == kmod_shim::BackendKind::UffdWp {
                    write_pages(&region, chosen, run as u8);
                    bare.push(bare_scan_ms(&region, &pagemap, &mut scan_out)?);
                }
            }
            let (mut cptfork, mut plain) = (vec![], vec![]);
            for run in 0..args.runs {
                write_pages(&region, &order[..k], run as u8);
                let t = Instant::now();
                let snap = shim.cptfork(|_| ExitAtOnce)?;
                cptfork.push(ms(t));
                snap.wait()?;
                plain.push(plain_fork_ms()?);
            }
            // The forks left every page copy-on-write shared: take them back (one write each)
            // so the next fraction's first-write figure measures tracking, not fork aftermath.
            for i in 0..region.pages() {
                region.touch(i, 2);
            }
            shim.query()?;
            let (qmin, qmax) = query
                .iter()
                .fold((f64::MAX, 0f64), |(a, b), &q| (a.min(q), b.max(q)));
            let line = Line {
                backend: shim.backend().name(),
                registered_bytes: size,
                page_size: page_size(),
                ballast_bytes: args.ballast.as_deref().map_or(Ok(0), parse_size)?,
                thp: args.thp,
                dirty_pct: pct,
                dirty_pages: k,
                reported_pages: reported,
                runs: args.runs,
                query_ms: median(&mut query),
                query_ms_min: round4(qmin),
                query_ms_max: round4(qmax),
                cptfork_parent_ms: median(&mut cptfork),
                plain_fork_ms: median(&mut plain),
                copy_dirty_ms: median(&mut copy),
                full_copy_ms,
                first_write_fault_us: median(&mut fault),
                bare_scan_ms: (!bare.is_empty()).then(|| median(&mut bare)),
            };
            println!("{}", serde_json::to_string(&line)?);
        }
        shim.remove(&[range])?;
    }
    Ok(())
}

fn pin(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity({cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if let Some(cpu) = args.cpu {
        pin(cpu)?;
    }
    for b in &args.backends {
        b.parse::<BackendChoice>()?;
    }
    let _ballast = match &args.ballast {
        Some(b) => Some(Region::new(parse_size(b)?, args.thp)?),
        None => None,
    };
    let mut rng = fastrand::Rng::with_seed(args.seed);
    for s in &args.sizes {
        bench_size(&args, parse_size(s)?, &mut rng)?;
    }
    Ok(())
}
