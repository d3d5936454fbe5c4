//! A long computation on Hot Spare (the CheckSync thesis's matrix exponentiation): A^k mod p for
//! an n × n matrix by repeated squaring, a checkpoint after every step. Killed and resumed, it
//! goes on from its last checkpoint and ends with the same result as an uninterrupted run.
//!
//! `matexp N K [--plain]` prints `STEP <bit>` after each durable step and `DONE <hash>` at the
//! end; `--plain` runs the same computation without Hot Spare.

use hotspare::{HotSpare, Mutex};
use std::io::Write;

#[global_allocator]
static A: hotspare::GlobalHeap = hotspare::GlobalHeap::new();

const P: u64 = 1_000_000_007;
type Matrix = Vec<u64>;

struct State {
    n: usize,
    k: u64,
    /// Bits of `k` done so far.
    bit: u32,
    a: Matrix,
    r: Matrix,
    tmp: Matrix,
}

fn mul(n: usize, x: &[u64], y: &[u64], out: &mut [u64]) {
    for i in 0..n {
        for j in 0..n {
            let mut s = 0u64;
            for l in 0..n {
                s = (s + x[i * n + l] * y[l * n + j]) % P;
            }
            out[i * n + j] = s;
        }
    }
}

/// One step of square-and-multiply; false when done.
fn step(s: &mut State) -> bool {
    if s.bit >= 64 || s.k >> s.bit == 0 {
        return false;
    }
    let n = s.n;
    if (s.k >> s.bit) & 1 == 1 {
        mul(n, &s.r, &s.a, &mut s.tmp);
        std::mem::swap(&mut s.r, &mut s.tmp);
    }
    mul(n, &s.a, &s.a, &mut s.tmp);
    std::mem::swap(&mut s.a, &mut s.tmp);
    s.bit += 1;
    true
}

fn hash(m: &[u64]) -> u32 {
    m.iter()
        .fold(0, |c, v| crc32c::crc32c_append(c, &v.to_le_bytes()))
}

fn init(n: usize, k: u64) -> State {
    let a = (0..n * n)
        .map(|i| (i as u64 * 2_654_435_761 + 12345) % P)
        .collect();
    let r = (0..n * n).map(|i| u64::from(i / n == i % n)).collect();
    State {
        n,
        k,
        bit: 0,
        a,
        r,
        tmp: vec![0; n * n],
    }
}

/// The computation, a step at a time; `durable` returns once the step is kept.
fn compute(state: &Mutex<State>, durable: impl Fn() -> Result<(), hotspare::Error>) {
    let mut out = std::io::stdout();
    loop {
        let mut s = state.lock();
        if !step(&mut s) {
            writeln!(out, "DONE {}", hash(&s.r)).unwrap();
            return;
        }
        let bit = s.bit;
        drop(s);
        durable().expect("durable");
        writeln!(out, "STEP {bit}").unwrap();
        out.flush().unwrap();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.first().and_then(|v| v.parse().ok()).unwrap_or(64);
    let k: u64 = args
        .get(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_003);
    if args.iter().any(|a| a == "--plain") {
        // The uninterrupted reference run: the same computation, nothing kept.
        return compute(&Mutex::new(init(n, k)), || Ok(()));
    }
    let run = HotSpare::serve(
        "matexp",
        move || Mutex::new(init(n, k)),
        |hs, state| compute(state, || hs.wait(hs.commit()?)),
    );
    if let Err(e) = run {
        eprintln!("matexp: {e}");
        std::process::exit(1);
    }
}
