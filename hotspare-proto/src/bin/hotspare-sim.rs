//! `hotspare-sim`: runs the deterministic simulator over many seeds, or replays one.
//!
//! ```text
//! hotspare-sim [--seeds N] [--from S]      # N scenarios from seed S; one JSON line at the end
//! hotspare-sim --seed S                    # replay one scenario and print its trace
//! ... --level received|fsynced             # every scenario at that durability level (default:
//!                                          # drawn from each seed, half and half)
//! ```

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
    };
    let level: Option<hotspare_proto::AckLevel> =
        args.iter().position(|a| a == "--level").map(|i| {
            match args.get(i + 1).map(|v| v.parse()) {
                Some(Ok(l)) => l,
                Some(Err(e)) => panic!("--level: {e}"),
                None => panic!("--level takes received or fsynced"),
            }
        });
    let run = |seed: u64| match level {
        Some(l) => hotspare_proto::sim::run_with(seed, l),
        None => hotspare_proto::sim::run(seed),
    };
    if let Some(seed) = get("--seed") {
        let r = run(seed);
        for l in &r.trace {
            println!("{l}");
        }
        println!(
            "seed {seed} ({}, arbiter: {}): {} events, {:.0} ms simulated, {} acknowledged, {} faults, {} takeovers, {} lost as the level allows, {} renewals overlapping, {} answers reordered, violations: {:?}",
            r.ack,
            r.arbiter.unwrap_or("none"),
            r.events,
            r.sim_nanos as f64 / 1e6,
            r.acked,
            r.faults,
            r.takeovers,
            r.exempted,
            r.renewals_overlapping,
            r.answers_reordered,
            r.violations
        );
        std::process::exit(i32::from(!r.violations.is_empty()));
    }
    let n = get("--seeds").unwrap_or(10_000);
    let from = get("--from").unwrap_or(0);
    let t = Instant::now();
    let (mut sim, mut failed, mut acked, mut takeovers, mut events) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut received, mut exempted) = (0u64, 0u64);
    let mut endings: std::collections::BTreeMap<&str, u64> = Default::default();
    let (mut switchovers, mut handovers, mut term_before_apply) = (0u64, 0u64, 0u64);
    let (mut overlapping, mut reordered, mut with_overlap) = (0u64, 0u64, 0u64);
    let (mut ahead, mut refused_after) = (0u64, 0u64);
    let (mut grouped, mut groups_failed) = (0u64, 0u64);
    for seed in from..from + n {
        let r = run(seed);
        received += u64::from(r.ack == hotspare_proto::AckLevel::Received);
        exempted += r.exempted;
        if let Some(e) = r.arbiter {
            *endings.entry(e).or_default() += 1;
        }
        switchovers += u64::from(r.switchovers);
        overlapping += r.renewals_overlapping;
        reordered += r.answers_reordered;
        ahead += r.validated_ahead;
        refused_after += r.refused_after_sync_failure;
        grouped += r.grouped_persists;
        groups_failed += r.groups_failed;
        with_overlap += u64::from(r.renewals_overlapping > 0);
        handovers += u64::from(r.handovers);
        term_before_apply += u64::from(r.term_before_apply);
        sim += r.sim_nanos;
        acked += r.acked;
        events += r.events;
        takeovers += u64::from(r.takeovers);
        if !r.violations.is_empty() {
            failed += 1;
            eprintln!(
                "seed {seed} FAILED: {:?}  (replay: hotspare-sim --seed {seed})",
                r.violations
            );
        }
    }
    let real = t.elapsed().as_secs_f64();
    println!(
        "{{\"scenarios\":{n},\"failed\":{failed},\"scenarios_per_s\":{:.0},\"sim_to_real\":{:.0},\"events\":{events},\"acked\":{acked},\"takeovers\":{takeovers},\"received_level\":{received},\"lost_as_allowed\":{exempted},\"arbiter\":{{\"kill_primary\":{},\"kill_spare\":{},\"cut_pair\":{}}},\"switchovers\":{switchovers},\"handovers\":{handovers},\"term_saved_before_the_final_apply\":{term_before_apply},\"renewals\":{{\"overlapping\":{overlapping},\"scenarios_with_overlap\":{with_overlap},\"answers_reordered\":{reordered}}},\"disk\":{{\"validated_ahead\":{ahead},\"refused_after_sync_failure\":{refused_after},\"grouped_persists\":{grouped},\"groups_failed\":{groups_failed}}}}}",
        n as f64 / real,
        sim as f64 / 1e9 / real,
        endings.get("kill-primary").unwrap_or(&0),
        endings.get("kill-spare").unwrap_or(&0),
        endings.get("cut-pair").unwrap_or(&0),
    );
    std::process::exit(i32::from(failed > 0));
}
