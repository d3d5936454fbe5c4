//! One suite that every backend working on this machine runs through, against a ground truth
//! recorded by the writers themselves.

mod util;

use kmod_shim::{BackendKind, DirtySet};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use util::*;

fn check_report(kind: BackendKind, got: &[usize], written: &BTreeSet<usize>, what: &str) {
    let got: BTreeSet<usize> = got.iter().copied().collect();
    let missed: Vec<_> = written.difference(&got).collect();
    assert!(
        missed.is_empty(),
        "{kind}: {what}: written pages not reported: {missed:?}"
    );
    if kind.is_exact() {
        let extra: Vec<_> = got.difference(written).collect();
        assert!(
            extra.is_empty(),
            "{kind}: {what}: pages reported but not written: {extra:?}"
        );
    }
}

/// Several threads write at random across several ranges; after they stop, QUERY reports
/// every page written (exactly those for exact backends); the next epoch starts clean.
#[test]
fn threads_write_at_random_across_ranges() {
    for kind in working_backends() {
        let maps = [Mapping::new(300), Mapping::new(17), Mapping::new(1024)];
        let mut shim = shim(kind);
        let ranges: Vec<_> = maps.iter().map(Mapping::range).collect();
        shim.add(&ranges).unwrap();
        for epoch in 0..4u8 {
            let written: Vec<Vec<BTreeSet<usize>>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4u64)
                    .map(|t| {
                        let maps = &maps;
                        s.spawn(move || {
                            let mut rng = fastrand::Rng::with_seed(t * 1000 + u64::from(epoch));
                            let mut w = vec![BTreeSet::new(); maps.len()];
                            for _ in 0..200 {
                                let m = rng.usize(..maps.len());
                                let p = rng.usize(..maps[m].pages());
                                maps[m].write(p, rng.usize(..4096), epoch + 1);
                                w[m].insert(p);
                            }
                            w
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let set = shim.query().unwrap();
            for (m, map) in maps.iter().enumerate() {
                let truth: BTreeSet<usize> =
                    written.iter().flat_map(|w| w[m].iter().copied()).collect();
                check_report(
                    kind,
                    &dirty_pages_of(&set, map),
                    &truth,
                    &format!("epoch {epoch} range {m}"),
                );
            }
        }
        // Nothing written since the last QUERY: exact backends report nothing.
        let set = shim.query().unwrap();
        if kind.is_exact() {
            assert_eq!(set.dirty_pages(), 0, "{kind}: idle epoch reported pages");
        }
    }
}

/// Writers keep going while QUERYs run. A write that began after QUERY `s0` started and ended
/// before QUERY `s1 + 1` started must be in the answer of one of QUERYs `s0 ..= s1 + 1`; for
/// exact backends every reported page must be explained by such a write.
#[test]
fn concurrent_writers_never_lose_a_write() {
    for kind in working_backends() {
        let maps = Arc::new([Mapping::new(64), Mapping::new(256), Mapping::new(8)]);
        let mut shim = shim(kind);
        shim.add(&maps.iter().map(Mapping::range).collect::<Vec<_>>())
            .unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3u64)
            .map(|t| {
                let (maps, started, stop) = (maps.clone(), started.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(42 + t);
                    let mut log = Vec::new();
                    while !stop.load(SeqCst) && log.len() < 200_000 {
                        let m = rng.usize(..maps.len());
                        let p = rng.usize(..maps[m].pages());
                        let s0 = started.load(SeqCst);
                        maps[m].write(p, rng.usize(..4096), 1);
                        let s1 = started.load(SeqCst);
                        log.push((m, p, s0, s1));
                    }
                    log
                })
            })
            .collect();
        let mut answers: Vec<DirtySet> = vec![DirtySet::default()]; // index 0: no query
                                                                    // Many back-to-back QUERYs: the races between a first write and a harvest are what this
                                                                    // test is for, and they need QUERYs to land while writes are in flight.
        for k in 1..=1500 {
            started.store(k, SeqCst);
            answers.push(shim.query().unwrap());
            if k % 100 == 0 {
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        }
        stop.store(true, SeqCst);
        let logs: Vec<_> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        started.store(answers.len(), SeqCst);
        answers.push(shim.query().unwrap());
        let reported: Vec<Vec<BTreeSet<usize>>> = answers
            .iter()
            .map(|a| {
                maps.iter()
                    .map(|m| dirty_pages_of(a, m).into_iter().collect())
                    .collect()
            })
            .collect();
        for &(m, p, s0, s1) in &logs {
            let found = (s0.max(1)..=s1 + 1).any(|j| reported[j][m].contains(&p));
            assert!(
                found,
                "{kind}: write to range {m} page {p} between queries {s0} and {s1} lost"
            );
        }
        if kind.is_exact() {
            let mut by_page: std::collections::HashMap<(usize, usize), Vec<(usize, usize)>> =
                Default::default();
            for &(m, p, s0, s1) in &logs {
                by_page.entry((m, p)).or_default().push((s0, s1));
            }
            for (j, per_map) in reported.iter().enumerate() {
                for (m, pages) in per_map.iter().enumerate() {
                    for &p in pages {
                        let explained = by_page
                            .get(&(m, p))
                            .is_some_and(|w| w.iter().any(|&(s0, s1)| s0 <= j && j <= s1 + 1));
                        assert!(
                            explained,
                            "{kind}: query {j} reported range {m} page {p} with no write"
                        );
                    }
                }
            }
        }
        eprintln!(
            "{kind}: {} concurrent writes checked over {} queries",
            logs.len(),
            answers.len() - 1
        );
    }
}

/// Ranges registered before their pages are first touched: reads (zero page) are not writes,
/// first writes are.
#[test]
fn registered_before_first_touch() {
    for kind in working_backends() {
        let m = Mapping::new(32);
        let mut shim = shim(kind);
        shim.add(&[m.range()]).unwrap();
        for p in 0..16 {
            assert_eq!(m.read(p, 0), 0);
        }
        m.write(3, 0, 9);
        m.write(20, 100, 9);
        let set = shim.query().unwrap();
        check_report(
            kind,
            &dirty_pages_of(&set, &m),
            &BTreeSet::from([3, 20]),
            "first touch",
        );
        m.write(4, 0, 1);
        let set = shim.query().unwrap();
        check_report(
            kind,
            &dirty_pages_of(&set, &m),
            &BTreeSet::from([4]),
            "after query",
        );
        assert_eq!(m.read(3, 0), 9);
        assert_eq!(m.read(20, 100), 9);
    }
}

/// Transparent huge pages: every written page is reported; extra pages are allowed only inside
/// a 2 MiB block that was written.
#[test]
fn transparent_huge_pages() {
    const HUGE: usize = 2 << 20;
    for kind in working_backends() {
        let big = Mapping::new((4 * HUGE + HUGE) / 4096);
        let start = (big.ptr as usize).next_multiple_of(HUGE);
        let pages = 4 * HUGE / 4096;
        let first = (start - big.ptr as usize) / 4096;
        // SAFETY: advising our own mapping.
        let rc = unsafe { libc::madvise(start as *mut _, 4 * HUGE, libc::MADV_HUGEPAGE) };
        assert_eq!(
            rc,
            0,
            "madvise(MADV_HUGEPAGE): {}",
            std::io::Error::last_os_error()
        );
        for p in (0..pages).step_by(16) {
            big.write(first + p, 0, 1);
        }
        let huge_kb = anon_huge_kb(start);
        if huge_kb == 0 {
            eprintln!("!!! {kind}: THP test ran on 4 KiB pages: the kernel gave no huge page");
        }
        let mut shim = shim(kind);
        shim.add(&[big.sub(first, pages)]).unwrap();
        let written = BTreeSet::from([first + 1, first + 600, first + 1500]);
        for &p in &written {
            big.write(p, 7, 2);
        }
        let set = shim.query().unwrap();
        let got = dirty_pages_of(&set, &big);
        let missed: Vec<_> = written.iter().filter(|p| !got.contains(p)).collect();
        assert!(
            missed.is_empty(),
            "{kind}: THP writes not reported: {missed:?}"
        );
        if kind != BackendKind::Full {
            let block = |p: usize| (p - first) * 4096 / HUGE;
            let hot: BTreeSet<usize> = written.iter().map(|&p| block(p)).collect();
            let stray: Vec<_> = got.iter().filter(|&&p| !hot.contains(&block(p))).collect();
            assert!(
                stray.is_empty(),
                "{kind}: pages reported outside written huge pages: {stray:?}"
            );
        }
        eprintln!(
            "{kind}: THP ({huge_kb} kB huge): {} written, {} reported",
            written.len(),
            got.len()
        );
    }
}

/// REMOVE stops tracking and leaves the memory writable with its contents.
#[test]
fn remove_stops_tracking() {
    for kind in working_backends() {
        let m = Mapping::new(8);
        let mut shim = shim(kind);
        shim.add(&[m.range()]).unwrap();
        m.write(1, 0, 5);
        shim.remove(&[m.range()]).unwrap();
        m.write(2, 0, 6);
        assert_eq!((m.read(1, 0), m.read(2, 0)), (5, 6));
        assert_eq!(shim.query().unwrap().dirty_pages(), 0);
        // It can be added again, by this or another shim.
        shim.add(&[m.range()]).unwrap();
    }
}

/// A promise that nothing at or above `end` was written lets a harvest look below it only; a
/// write above it (a promise the caller broke, or one it is about to widen) is never lost: it is
/// reported once the end covers it. On every backend (only uffd-wp makes use of the promise).
#[test]
fn written_end_defers_pages_above_it_and_never_loses_them() {
    for kind in working_backends() {
        let m = Mapping::new(64);
        let mut s = shim(kind);
        s.add(&[m.range()]).unwrap();
        s.query().unwrap();
        s.set_written_end(m.range(), m.addr(8));
        m.write(2, 0, 1);
        m.write(20, 0, 1);
        let first = dirty_pages_of(&s.query().unwrap(), &m);
        assert!(
            first.contains(&2),
            "{kind:?}: page 2 below the end: {first:?}"
        );
        // A lower end is ignored: the end only grows.
        s.set_written_end(m.range(), m.addr(4));
        s.set_written_end(m.range(), m.addr(32));
        let second = dirty_pages_of(&s.query().unwrap(), &m);
        let seen: Vec<usize> = first.iter().chain(&second).copied().collect();
        assert!(
            seen.contains(&20),
            "{kind:?}: page 20 was lost: {first:?} then {second:?}"
        );
        if kind == BackendKind::UffdWp {
            assert_eq!(first, vec![2], "uffd-wp walked past the end");
            assert_eq!(second, vec![20], "uffd-wp: the deferred page");
        }
    }
}
