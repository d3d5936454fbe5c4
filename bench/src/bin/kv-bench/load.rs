//! The data set and the 90/10 request mix of the CheckSync evaluation.
//!
//! Keys are `key:{i:012}` — 16 bytes, and exactly what `redis-benchmark -r N` generates for
//! `key:__rand_int__`, so its GETs hit the preloaded keys — and values are 56 bytes: a 72-byte
//! pair, as in the thesis.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::resp::{encode, Conn, Reply};

pub const VALUE_LEN: usize = 56;

/// The key for index `i`.
pub fn key(i: u64) -> String {
    format!("key:{i:012}")
}

/// The preload value for index `i` (the index in it, so a wrong answer would be visible).
pub fn value(i: u64) -> String {
    let v = format!("value:{i:012}:");
    format!("{v:x<VALUE_LEN$}")
}

/// Pairs per MSET and MSETs in flight: large enough that 10M keys load in seconds, small
/// enough that one command stays well under any server's query-buffer limit (~72 KB).
const BATCH: u64 = 1000;
const DEPTH: usize = 16;

/// Fills keys `0..n` with pipelined MSETs and checks DBSIZE afterwards. Returns the time taken.
pub fn preload(conn: &mut Conn, n: u64) -> Result<Duration> {
    let t0 = Instant::now();
    conn.set_timeout(Duration::from_secs(120))?;
    let mut next = 0u64;
    let mut buf = Vec::with_capacity(DEPTH * (BATCH as usize) * 100);
    while next < n {
        buf.clear();
        let mut sent = 0;
        while sent < DEPTH && next < n {
            let end = (next + BATCH).min(n);
            let owned: Vec<String> = (next..end).flat_map(|i| [key(i), value(i)]).collect();
            let mut args: Vec<&[u8]> = vec![b"MSET"];
            args.extend(owned.iter().map(|s| s.as_bytes()));
            encode(&mut buf, &args);
            next = end;
            sent += 1;
        }
        conn.send_raw(&buf)?;
        for _ in 0..sent {
            conn.read()?.ok().context("MSET during preload")?;
        }
    }
    conn.set_timeout(crate::resp::DEFAULT_TIMEOUT)?;
    let size = match conn.cmd(&["DBSIZE"])? {
        Reply::Int(i) => i as u64,
        other => bail!("DBSIZE answered {other:?}"),
    };
    if size != n {
        bail!("after preloading {n} keys DBSIZE is {size}");
    }
    Ok(t0.elapsed())
}

/// The request mix: 90 % GET, 10 % SET of a preloaded key chosen uniformly at random.
#[derive(Debug)]
pub struct Mix {
    rng: fastrand::Rng,
    keys: u64,
    value: Vec<u8>,
}

impl Mix {
    pub fn new(keys: u64, seed: u64) -> Mix {
        Mix {
            rng: fastrand::Rng::with_seed(seed),
            keys,
            value: vec![b'v'; VALUE_LEN],
        }
    }

    /// Encodes the next request into `buf` (cleared first); true if it is a SET.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        let k = key(self.rng.u64(0..self.keys));
        let set = self.rng.u32(0..10) == 0;
        if set {
            // Vary one byte so a SET really changes the page it lands on.
            self.value[0] = b'a' + self.rng.u8(0..26);
            encode(buf, &[b"SET", k.as_bytes(), &self.value]);
        } else {
            encode(buf, &[b"GET", k.as_bytes()]);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_is_72_bytes() {
        assert_eq!(key(7).len(), 16);
        assert_eq!(key(999_999_999_999).len(), 16);
        assert_eq!(value(7).len(), VALUE_LEN);
    }

    #[test]
    fn mix_is_roughly_90_10() {
        let mut m = Mix::new(100, 1);
        let mut b = Vec::new();
        let sets = (0..10_000).filter(|_| m.next(&mut b)).count();
        assert!((800..1200).contains(&sets), "{sets}");
    }
}
