//! What a worker does: map (count the words of one input file into R partitions) and reduce
//! (merge one partition of every map's output). Every output file is written to a temporary
//! name and renamed into place, so a task executed twice (a timeout, a failover) leaves the
//! same files, and a reader never sees a half-written one.

use crate::{io, Error};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// The words of `text`: maximal runs of alphabetic characters, case kept.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
}

/// The reduce partition of `word` (FNV-1a: the same in every process).
pub fn partition(word: &str, n_reduce: u32) -> u32 {
    let h = word.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % u64::from(n_reduce)) as u32
}

/// Intermediate file of map task `map` for partition `reduce`.
pub fn intermediate(map: u32, reduce: u32) -> String {
    format!("mr-{map}-{reduce}")
}

/// Output file of reduce task `reduce`.
pub fn output(reduce: u32) -> String {
    format!("mr-out-{reduce}")
}

/// Writes `dir/name` by way of a temporary file and a rename.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io(format!("rename {}", tmp.display())))
}

/// Map task `id`: counts the words of `input` into `dir/mr-<id>-<r>`, `word count` lines.
pub fn map(dir: &Path, id: u32, n_reduce: u32, input: &Path) -> Result<(), Error> {
    let bytes = std::fs::read(input).map_err(io(format!("read {}", input.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for w in words(&text) {
        *counts.entry(w).or_default() += 1;
    }
    let mut parts = vec![String::new(); n_reduce as usize];
    for (w, n) in counts {
        let _ = writeln!(parts[partition(w, n_reduce) as usize], "{w} {n}");
    }
    for (r, text) in parts.iter().enumerate() {
        write_atomically(dir, &intermediate(id, r as u32), text.as_bytes())?;
    }
    Ok(())
}

/// Reduce task `id`: sums `dir/mr-<m>-<id>` for every map m into `dir/mr-out-<id>`, sorted.
pub fn reduce(dir: &Path, id: u32, n_map: u32) -> Result<(), Error> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for m in 0..n_map {
        let p = dir.join(intermediate(m, id));
        let text = std::fs::read_to_string(&p).map_err(io(format!("read {}", p.display())))?;
        for line in text.lines() {
            let (w, n) = line
                .split_once(' ')
                .and_then(|(w, n)| Some((w, n.parse::<u64>().ok()?)))
                .ok_or_else(|| Error::Protocol(format!("bad line '{line}' in {}", p.display())))?;
            *counts.entry(w.to_owned()).or_default() += n;
        }
    }
    let mut out = String::new();
    for (w, n) in counts {
        let _ = writeln!(out, "{w} {n}");
    }
    write_atomically(dir, &output(id), out.as_bytes())
}
