//! The deterministic simulator over a bounded number of seeds (CI). More:
//! `cargo run --release -p hotspare-proto --bin hotspare-sim -- --seeds 1000000`.

#[test]
fn ten_thousand_seeded_scenarios_keep_every_guarantee() {
    let n: u64 = std::env::var("HOTSPARE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    // A different window every day, so CI explores new seeds; a failure prints its seed.
    let from = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400 * n);
    let mut failed = Vec::new();
    let (mut acked, mut takeovers) = (0u64, 0u64);
    for seed in from..from + n {
        let r = hotspare_proto::sim::run(seed);
        acked += r.acked;
        takeovers += u64::from(r.takeovers);
        if !r.violations.is_empty() {
            eprintln!("--- seed {seed}: last steps ---");
            for l in r.trace.iter().rev().take(30).rev() {
                eprintln!("{l}");
            }
            failed.push((seed, r.violations));
        }
    }
    eprintln!(
        "{n} scenarios from seed {from}: {acked} checkpoints acknowledged, {takeovers} takeovers"
    );
    assert!(
        failed.is_empty(),
        "{} of {n} scenarios broke a guarantee (replay: cargo run -p hotspare-proto --bin hotspare-sim -- --seed SEED): {failed:?}",
        failed.len()
    );
    assert!(
        acked > n,
        "the scenarios must acknowledge checkpoints to test anything"
    );
    assert!(takeovers > n / 2, "most scenarios must end in a takeover");
}

/// Seeds that once failed, kept as regressions: a late hello of a dead primary's lineage made
/// the spare "adopt" it again after the image had moved on, and no takeover ever followed.
#[test]
fn seeds_that_once_failed() {
    for seed in [1_152_808, 1_253_665, 1_263_698] {
        let r = hotspare_proto::sim::run(seed);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
    }
}
