//! `hotspare-kv`: a key/value server that speaks the Redis protocol (RESP2), with its table in
//! the Hot Spare checkpoint heap — the CheckSync thesis's key/value store, made highly available.
//!
//! `redis-cli` and `redis-benchmark` work against it unchanged. Checkpoints are taken every
//! `--cpt-ms` milliseconds (writes are then acknowledged before they are durable, as with Redis
//! snapshots), or with `--cpt-every-write` for every write before it is acknowledged (strong
//! consistency: an acknowledged write survives any failure). Under `hotspare-resume` on a spare
//! it fails over with its keys and its listening address. `--plain` runs the same server without
//! Hot Spare.

mod commands;
mod glob;
mod ha;
mod resp;
mod server;
mod store;

use anyhow::{Context, Result};
use clap::Parser;
use commands::{Counters, Ctx};
use hotspare::{Checkpointer, HotSpare};
use std::sync::OnceLock;
use store::Store;

/// Every allocation of the program — the key space above all — in the checkpoint heap once
/// Hot Spare has started; ordinary memory before that and with `--plain`.
#[global_allocator]
static A: hotspare::GlobalHeap = hotspare::GlobalHeap::new();

#[derive(Parser, Debug, Clone)]
#[command(version, about = "A Redis-protocol key/value server on Hot Spare")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 6380)]
    port: u16,
    /// Checkpoint interval in milliseconds (0: none); `CONFIG SET hotspare-cpt-ms` changes it.
    #[arg(long, default_value_t = 1000)]
    cpt_ms: u64,
    /// Acknowledge a write only once a checkpoint holding it is durable (group commit).
    #[arg(long, conflicts_with = "plain")]
    cpt_every_write: bool,
    /// Run without Hot Spare (ordinary memory, no checkpoints).
    #[arg(long)]
    plain: bool,
    /// Serving threads (each runs its own event loop on the shared listening socket).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin the serving threads to this CPU.
    #[arg(long)]
    serve_cpu: Option<usize>,
    /// Pin the library's background threads (checkpoint writer, spare link) to this CPU.
    #[arg(long)]
    background_cpu: Option<usize>,
    /// Start with N keys (`key:%012d` → 56-byte value: the thesis's 72-byte pairs).
    #[arg(long, default_value_t = 0)]
    preload: u64,
}

/// The command line, for the worker loop (which a resume calls without running `main`'s setup).
static ARGS: OnceLock<Args> = OnceLock::new();
static COUNTERS: OnceLock<Counters> = OnceLock::new();

/// Pins the calling thread (and the threads it creates afterwards) to `cpu`.
fn pin(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_err()
        || nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_err()
    {
        eprintln!("hotspare-kv: cannot pin to CPU {cpu}; running unpinned");
    }
}

fn preload(store: &Store, n: u64) {
    for i in 0..n {
        let k = format!("key:{i:012}");
        let v = format!("{:056}", i.wrapping_mul(2_654_435_761) % 1_000_000_007);
        store.preload(k.as_bytes(), v.as_bytes());
    }
}

/// Deletes expired keys in the background: every shard once a second, one at a time.
fn spawn_expiry_sweep(store: &'static Store) {
    let cpu = ARGS.get().and_then(|a| a.serve_cpu);
    std::thread::spawn(move || {
        pin(cpu);
        loop {
            for i in 0..store::SHARDS {
                std::thread::sleep(std::time::Duration::from_millis(
                    1000 / store::SHARDS as u64,
                ));
                store.sweep_shard(i, store::now_ms());
            }
        }
    });
}

/// Serves on `args.threads` event loops (this thread is one of them); never returns.
fn serve_forever(
    store: &'static Store,
    hs: Option<&'static Checkpointer>,
    listener: std::net::TcpListener,
) -> ! {
    let args = ARGS.get().expect("args parsed");
    spawn_expiry_sweep(store);
    let ctx = move || Ctx {
        store,
        hs,
        counters: COUNTERS.get_or_init(Counters::default),
        started: std::time::Instant::now(),
        port: args.port,
    };
    eprintln!(
        "hotspare-kv: serving on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    for _ in 1..args.threads.max(1) {
        let l = listener.try_clone().expect("clone the listening socket");
        std::thread::spawn(move || {
            pin(args.serve_cpu);
            if let Err(e) = server::serve(&ctx(), l) {
                eprintln!("hotspare-kv: serving thread: {e}");
            }
        });
    }
    pin(args.serve_cpu);
    let r = server::serve(&ctx(), listener);
    eprintln!("hotspare-kv: event loop ended: {r:?}");
    std::process::exit(1);
}

/// The worker loop: what runs on a fresh start after `main`'s setup, and what a resume calls.
fn worker(hs: &HotSpare) {
    let args = ARGS.get().expect("args parsed");
    let (Some(store), Some(listener)) = (hs.heap().root::<Store>(), hs.tcp_listener("kv")) else {
        eprintln!("hotspare-kv: the image holds no key space or no listening socket");
        std::process::exit(1);
    };
    if let Some(r) = hs.resumed() {
        eprintln!(
            "hotspare-kv: resumed checkpoint {} restore_ms={:.3}",
            r.seq,
            r.restore_time.as_secs_f64() * 1e3
        );
    }
    // The interval timer runs on the serving CPU: while it holds the shard locks nothing else
    // can serve anyway, and on the background CPU the library's writer thread (CRCs, disk)
    // would preempt it mid-stop and stretch the stop by a scheduler time slice.
    let cp = ha::checkpointer(hs, store)
        .interval_ms(args.cpt_ms)
        .every_write(args.cpt_every_write)
        .start(move || pin(args.serve_cpu));
    serve_forever(store, Some(cp), listener);
}

fn main() -> Result<()> {
    let args = ARGS.get_or_init(Args::parse);
    let listen = || {
        std::net::TcpListener::bind((args.bind.as_str(), args.port))
            .with_context(|| format!("listen on {}:{}", args.bind, args.port))
    };
    if args.plain {
        let store: &'static Store = Box::leak(Box::new(Store::new()));
        preload(store, args.preload);
        serve_forever(store, None, listen()?);
    }
    // The library's threads are created now and inherit this: keep them off the serving CPU.
    pin(args.background_cpu);
    // A resume (HOTSPARE_RESUME, or exec by the spare) runs the worker and ends here.
    let Some(hs) = HotSpare::builder()?
        .worker("kv", worker)
        .start()?
        .fresh_or_run()
    else {
        return Ok(());
    };
    let store = hs.heap().set_root(Store::new())?;
    preload(store, args.preload);
    hs.add_tcp_listener("kv", listen()?)?;
    // The first checkpoint is the full image: take it before serving, so that the spare holds
    // the preloaded keys before the first client is answered.
    let st = hs.cpt()?;
    hs.wait_durable(st.seq)?;
    eprintln!(
        "hotspare-kv: {} keys, first checkpoint ({} bytes) durable",
        args.preload, st.bytes
    );
    hs.run();
    Ok(())
}
