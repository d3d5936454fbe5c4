//! A test program in plain Rust: `GlobalHeap` is its global allocator, and its state is std
//! types — `HashMap<String, Vec<String>>` with `RandomState`, `BTreeMap`, `VecDeque`, `String`,
//! `Box<dyn Shape>`, `Arc<Node>` shared between two containers, `&'static str`, a function
//! pointer, large `Vec<u8>`s. Several threads mutate it (each its own shard, driven by a
//! deterministic stream of operations, making garbage outside the lock as they go); the main
//! thread checkpoints every few milliseconds with every shard locked, while one more thread
//! allocates and frees garbage all the time, captures included, checking its blocks' contents
//! (`CHURN corrupt …` and exit status 4 if one changed).
//!
//! `stdmodel SEED TOTAL` (operations per shard). Prints `CODE <addr>` (where a function of the
//! executable is) at start, `CPT <seq> <ops,ops,…>` once checkpoint `seq` is durable, and on
//! resume `RESUMED <seq>`, one `VERIFY <shard> <ops> ok` per shard (or `VERIFY … MISMATCH`: the
//! resumed shard differs from the same operations replayed afresh), `HEAPCHECK ok …` (the
//! allocator's free lists walked: `HEAPCHECK ERR …` otherwise). With `STDMODEL_AFTER=N` a
//! resumed run does N more operations per shard, then prints `AFTER <shard> <ops> ok` (the
//! shard replayed and compared again) and a second `HEAPCHECK`, and exits. `STDMODEL_THREADS`
//! (default 4) mutator threads.

use hotspare::{GlobalHeap, HotSpare, Mutex};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static A: GlobalHeap = GlobalHeap::new();

trait Shape: Send + Sync {
    fn area(&self) -> u64;
    fn kind(&self) -> &'static str;
}

struct Square(u64);

struct Rect {
    w: u64,
    h: u64,
    label: String,
}

impl Shape for Square {
    fn area(&self) -> u64 {
        self.0 * self.0
    }
    fn kind(&self) -> &'static str {
        "square"
    }
}

impl Shape for Rect {
    fn area(&self) -> u64 {
        self.w * self.h + self.label.len() as u64
    }
    fn kind(&self) -> &'static str {
        "rect"
    }
}

struct Node {
    id: u64,
    label: String,
    tags: Vec<&'static str>,
}

static WORDS: [&str; 8] = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
];

fn double(x: u64) -> u64 {
    x.wrapping_mul(2)
}
fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}
fn mix(x: u64) -> u64 {
    x ^ (x >> 7) ^ 0x9e37
}
static FNS: [fn(u64) -> u64; 3] = [double, square, mix];

#[derive(Default)]
struct Shard {
    ops: u64,
    names: HashMap<String, Vec<String>>,
    tree: BTreeMap<u64, String>,
    queue: VecDeque<u64>,
    log: String,
    shapes: Vec<Box<dyn Shape>>,
    pool: Vec<Arc<Node>>,
    index: BTreeMap<u64, Arc<Node>>,
    labels: Vec<&'static str>,
    f: Option<fn(u64) -> u64>,
    acc: u64,
    blobs: VecDeque<Vec<u8>>,
}

struct Root {
    seed: u64,
    total: u64,
    shards: Vec<Mutex<Shard>>,
    /// Heap bytes in use once this root was set at the fresh start (the allocator's slot table,
    /// the root itself): what a resumed process's heap holds besides the shards and the garbage
    /// it inherits.
    base_in_use: AtomicUsize,
}

/// splitmix64 over (seed, shard, op): the operation stream, without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, shard: u64, op: u64) -> Rng {
        Rng(seed
            ^ shard.wrapping_mul(0xa076_1d64_78bd_642f)
            ^ op.wrapping_mul(0xe703_7ed1_a0b4_28db))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn apply(s: &mut Shard, seed: u64, shard: u64) {
    let i = s.ops;
    let mut r = Rng::new(seed, shard, i);
    match r.below(10) {
        0 | 1 => {
            let key = format!("k{}", r.below(300));
            let v = s.names.entry(key).or_default();
            v.push(format!("v{i}-{}", r.below(1000)));
            if v.len() > 8 {
                v.remove(0);
            }
        }
        2 => {
            s.names.remove(&format!("k{}", r.below(300)));
        }
        3 => {
            let n = r.below(40) as usize;
            let w = WORDS[r.below(8) as usize];
            s.tree.insert(r.below(500), "x".repeat(n) + w);
        }
        4 => {
            s.tree.remove(&r.below(500));
            s.queue.push_back(i);
            if s.queue.len() > 200 {
                s.queue.pop_front();
            }
        }
        5 => {
            s.log.push_str(WORDS[r.below(8) as usize]);
            s.log.push_str(&i.to_string());
            if s.log.len() > 3000 {
                s.log.drain(..1000);
            }
        }
        6 => {
            let b: Box<dyn Shape> = if r.below(2) == 0 {
                Box::new(Square(r.below(100)))
            } else {
                Box::new(Rect {
                    w: r.below(50),
                    h: r.below(50),
                    label: format!("r{i}"),
                })
            };
            s.shapes.push(b);
            if s.shapes.len() > 50 {
                let at = r.below(s.shapes.len() as u64) as usize;
                s.shapes.swap_remove(at);
            }
        }
        7 => {
            let node = Arc::new(Node {
                id: i,
                label: format!("node-{}", r.below(1_000_000)),
                tags: (0..r.below(4)).map(|k| WORDS[k as usize]).collect(),
            });
            s.pool.push(node.clone());
            s.index.insert(i, node);
            if s.pool.len() > 40 {
                let gone = s.pool.remove(r.below(40) as usize);
                if r.below(2) == 0 {
                    s.index.remove(&gone.id);
                }
            }
            if s.index.len() > 80 {
                let first = *s.index.keys().next().unwrap();
                s.index.remove(&first);
            }
        }
        8 => {
            s.labels.push(WORDS[r.below(8) as usize]);
            if s.labels.len() > 100 {
                s.labels.clear();
            }
            let f = FNS[r.below(3) as usize];
            s.f = Some(f);
            s.acc = s.acc.wrapping_add(f(i));
        }
        _ => {
            // Large blocks (talc) and reallocations across size classes.
            let n = r.below(100_000) as usize;
            let mut v = Vec::with_capacity(16);
            v.resize(n / 2, i as u8);
            v.resize(n, (i >> 8) as u8);
            v.extend_from_slice(&i.to_le_bytes());
            s.blobs.push_back(v);
            if s.blobs.len() > 4 {
                s.blobs.pop_front();
            }
        }
    }
    s.ops += 1;
}

fn digest(s: &Shard) -> u64 {
    let mut h = DefaultHasher::new();
    s.ops.hash(&mut h);
    let mut names: Vec<_> = s.names.iter().collect();
    names.sort();
    names.hash(&mut h);
    // Lookups through the map's own hasher (its RandomState keys are in the map).
    for (k, v) in &names {
        assert_eq!(s.names.get(k.as_str()), Some(*v), "lookup of {k} fails");
    }
    s.tree.hash(&mut h);
    s.queue.hash(&mut h);
    s.log.hash(&mut h);
    for b in &s.shapes {
        (b.kind(), b.area()).hash(&mut h);
    }
    for n in &s.pool {
        (n.id, &n.label, &n.tags, Arc::strong_count(n)).hash(&mut h);
        if let Some(m) = s.index.get(&n.id) {
            Arc::ptr_eq(n, m).hash(&mut h);
        }
    }
    for (id, n) in &s.index {
        (id, &n.label, Arc::strong_count(n)).hash(&mut h);
    }
    s.labels.hash(&mut h);
    s.f.map(|f| f(12345)).hash(&mut h);
    s.acc.hash(&mut h);
    for b in &s.blobs {
        b.hash(&mut h);
    }
    h.finish()
}

fn replay(seed: u64, shard: u64, ops: u64) -> u64 {
    digest(&rebuild(seed, shard, ops))
}

/// The shard after `ops` operations, built afresh.
fn rebuild(seed: u64, shard: u64, ops: u64) -> Shard {
    let mut s = Shard::default();
    while s.ops < ops {
        apply(&mut s, seed, shard);
    }
    s
}

fn in_use() -> usize {
    GlobalHeap::check().map_or(0, |st| st.in_use_bytes)
}

/// What the resumed process inherited and nothing refers to (docs/library.md, "What a resumed
/// process inherits"): the heap in use at the resume, less the state — measured by building each
/// shard afresh from its operation count, on this one thread before any worker runs — and less
/// the fresh start's base. `INHERITED <bytes> in_use=… state=… base=…`.
fn inherited(root: &Root) {
    let at_resume = in_use();
    let state: usize = (0..root.shards.len())
        .map(|j| {
            let ops = root.shards[j].lock().ops;
            let before = in_use();
            let fresh = rebuild(root.seed, j as u64, ops);
            let grown = in_use() - before;
            drop(fresh);
            grown
        })
        .sum();
    say(format!(
        "INHERITED {} in_use={at_resume} state={state} base={}",
        at_resume as i64 - state as i64 - root.base_in_use.load(Ordering::Relaxed) as i64,
        root.base_in_use.load(Ordering::Relaxed)
    ));
}

/// Mutators that have finished (this process only, not state).
static FINISHED: AtomicUsize = AtomicUsize::new(0);
/// The checkpointer wants every shard's lock (`hotspare::Mutex` is not fair).
static PAUSE: AtomicBool = AtomicBool::new(false);

fn threads() -> usize {
    std::env::var("STDMODEL_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

fn after() -> Option<u64> {
    std::env::var("STDMODEL_AFTER").ok()?.parse().ok()
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn heapcheck() {
    match GlobalHeap::check() {
        Ok(st) => say(format!(
            "HEAPCHECK ok slots={} free_blocks={} talc={}",
            st.slots_used, st.free_blocks, st.talc_allocated
        )),
        Err(e) => {
            say(format!("HEAPCHECK ERR {e}"));
            std::process::exit(3);
        }
    }
}

fn verify(root: &Root, j: usize, what: &str) -> u64 {
    let s = root.shards[j].lock();
    // The state's own memory is in the checkpoint heap.
    let inside = (s.log.capacity() == 0 || GlobalHeap::contains(s.log.as_ptr()))
        && s.shapes
            .iter()
            .all(|b| GlobalHeap::contains((&**b as *const dyn Shape).cast()));
    let (ops, got) = (s.ops, digest(&s));
    drop(s);
    let want = replay(root.seed, j as u64, ops);
    let verdict = match (inside, got == want) {
        (false, _) => "OUTSIDE",
        (true, false) => "MISMATCH",
        (true, true) => "ok",
    };
    say(format!("{what} {j} {ops} {verdict}"));
    ops
}

fn mutator(hs: &HotSpare, j: usize) {
    let root = hs.heap().root::<Root>().expect("root");
    let mut limit = root.total;
    if hs.resumed().is_some() {
        let ops = verify(root, j, "VERIFY");
        if let Some(n) = after() {
            limit = ops + n;
        }
    }
    let mut garbage: Vec<String> = Vec::new();
    let mut make_garbage = |n: u64| {
        let mut r = Rng::new(root.seed ^ 1, j as u64, n ^ garbage.len() as u64);
        for k in 0..r.below(6) {
            garbage.push(format!("scratch-{k}-{}", r.next()));
        }
        if garbage.len() > 64 {
            garbage.drain(..32);
        }
    };
    let mut n = 0;
    loop {
        // Garbage outside the lock, freed in another order — also while the checkpointer holds
        // the shards and captures: the allocator is busy during captures.
        n += 1;
        make_garbage(n);
        while PAUSE.load(Ordering::Relaxed) {
            n += 1;
            make_garbage(n);
        }
        let mut s = root.shards[j].lock();
        if s.ops >= limit {
            break;
        }
        apply(&mut s, root.seed, j as u64);
    }
    if hs.resumed().is_some() && after().is_some() {
        verify(root, j, "AFTER");
    }
    FINISHED.fetch_add(1, Ordering::SeqCst);
}

/// A thread that only makes garbage, all the time — also while a checkpoint captures the heap —
/// and checks that its own blocks keep their contents (no block is handed out twice).
fn churn(hs: &HotSpare) {
    let root = hs.heap().root::<Root>().expect("root");
    let mut live: VecDeque<(u64, Vec<u64>)> = VecDeque::new();
    let mut r = Rng::new(root.seed, 99, std::process::id() as u64);
    while FINISHED.load(Ordering::SeqCst) < root.shards.len() {
        for _ in 0..64 {
            let tag = r.next();
            let n = match r.below(20) {
                0 => r.below(8192),
                _ => r.below(48),
            } as usize;
            live.push_back((tag, vec![tag; n + 1]));
            if live.len() > 256 {
                let (tag, v) = live.pop_front().unwrap();
                if v.iter().any(|&x| x != tag) {
                    say(format!("CHURN corrupt block {:p}", v.as_ptr()));
                    std::process::exit(4);
                }
            }
        }
        std::thread::yield_now();
    }
}

fn checkpointer(hs: &HotSpare) {
    let root = hs.heap().root::<Root>().expect("root");
    say(format!("CODE {:#x}", mutator as *const () as usize));
    if let Some(r) = hs.resumed() {
        say(format!("RESUMED {}", r.seq));
        heapcheck();
    }
    let n = root.shards.len();
    while FINISHED.load(Ordering::SeqCst) < n {
        std::thread::sleep(Duration::from_millis(3));
        PAUSE.store(true, Ordering::Relaxed);
        let guards: Vec<_> = root.shards.iter().map(|s| s.lock()).collect();
        let ops: Vec<String> = guards.iter().map(|g| g.ops.to_string()).collect();
        let st = hs.cpt();
        drop(guards);
        PAUSE.store(false, Ordering::Relaxed);
        match st.and_then(|st| hs.wait_durable(st.seq).map(|()| st)) {
            Ok(st) => say(format!("CPT {} {}", st.seq, ops.join(","))),
            Err(e) => say(format!("CPTFAIL {e}")),
        }
    }
    if hs.resumed().is_some() && after().is_some() {
        heapcheck();
    }
    say("DONE".into());
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("stdmodel: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [seed, total] = args[..] else {
        anyhow::bail!("usage: stdmodel SEED TOTAL")
    };
    let mut b = HotSpare::builder()?
        .worker("main", checkpointer)
        .worker("churn", churn);
    for j in 0..threads() {
        b = b.worker(&format!("m{j}"), move |hs| mutator(hs, j));
    }
    let hs = match b.start()? {
        hotspare::Start::Resumed(hs) => {
            inherited(hs.heap().root::<Root>().expect("root"));
            hs.run();
            return Ok(());
        }
        hotspare::Start::Fresh(hs) => hs,
    };
    let shards = (0..threads())
        .map(|_| Mutex::new(Shard::default()))
        .collect();
    let root = hs.heap().set_root(Root {
        seed,
        total,
        shards,
        base_in_use: AtomicUsize::new(0),
    })?;
    root.base_in_use.store(in_use(), Ordering::Relaxed);
    hs.run();
    Ok(())
}
