//! A test program: a `hashbrown` map in the checkpoint heap, driven by a deterministic stream of
//! operations, checkpointing every K of them. The kill/resume tests SIGKILL it at random points
//! and resume it; on resume it prints what it resumed so the test can compare with the model.
//!
//! `kvmodel SEED TOTAL_OPS K` — prints `CPT <seq> <ops>` once checkpoint `seq` (taken after
//! `ops` operations) is durable (`CPTFAIL <ops> <why>` if it failed), `RESUMED <ops> <digest>` first thing on resume, and
//! `DONE <ops> <digest>` at the end. With `KVMODEL_EXIT_ON_RESUME=1` it exits right after
//! `RESUMED`. With `KVMODEL_OCCUPY=0xADDR` it maps a page there before starting (to make
//! resume fail on a taken address).

use hotspare::{HeapAlloc, HotSpare, Mutex, StableHasher};
use hotspare_tests::model;
use std::io::Write;

type Map = hashbrown::HashMap<u64, u64, StableHasher, HeapAlloc>;

struct State {
    map: Map,
    ops: u64,
    total: u64,
    seed: u64,
    k: u64,
}

fn digest(map: &Map) -> u32 {
    model::digest(map.iter().map(|(k, v)| (*k, *v)))
}

fn worker(hs: &HotSpare) {
    let state = hs.heap().root::<Mutex<State>>().expect("root object");
    let mut out = std::io::stdout();
    if hs.resumed().is_some() {
        let s = state.lock();
        writeln!(out, "RESUMED {} {}", s.ops, digest(&s.map)).unwrap();
        out.flush().unwrap();
        if std::env::var_os("KVMODEL_EXIT_ON_RESUME").is_some() {
            std::process::exit(0);
        }
    }
    loop {
        let mut s = state.lock();
        if s.ops == s.total {
            writeln!(out, "DONE {} {}", s.ops, digest(&s.map)).unwrap();
            return;
        }
        let (seed, i) = (s.seed, s.ops);
        model::apply(&mut s.map, seed, i);
        s.ops += 1;
        let (ops, due) = (s.ops, s.ops.is_multiple_of(s.k));
        drop(s);
        if due {
            // A checkpoint that fails (spare unreachable, …) is reported and the program goes on:
            // the library makes the next one carry everything.
            match hs.cpt().and_then(|st| hs.wait_durable(st.seq).map(|()| st)) {
                Ok(st) => writeln!(out, "CPT {} {ops}", st.seq).unwrap(),
                Err(e) => writeln!(out, "CPTFAIL {ops} {e}").unwrap(),
            }
            out.flush().unwrap();
        }
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("kvmodel: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    if let Ok(addr) = std::env::var("KVMODEL_OCCUPY") {
        let addr = usize::from_str_radix(addr.trim_start_matches("0x"), 16)?;
        // SAFETY: a fresh anonymous page at a fixed address that we expect to be free.
        let p = unsafe {
            libc::mmap(
                addr as *mut _,
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        anyhow::ensure!(p as usize == addr, "could not occupy {addr:#x}");
    }
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [seed, total, k] = args[..] else {
        anyhow::bail!("usage: kvmodel SEED TOTAL_OPS K")
    };
    let Some(hs) = HotSpare::builder()?
        .worker("main", worker)
        .start()?
        .fresh_or_run()
    else {
        return Ok(());
    };
    let map = Map::with_capacity_and_hasher_in(1, StableHasher::default(), hs.heap().alloc());
    hs.heap().set_root(Mutex::new(State {
        map,
        ops: 0,
        total,
        seed,
        k: k.max(1),
    }))?;
    hs.run();
    Ok(())
}
