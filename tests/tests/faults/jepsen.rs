//! Section 12 of the fault suite: Jepsen-style faults in network namespaces. Three hosts each
//! run one member of a three-member etcd cluster — the primary's host A, the spare's host B and
//! a host D that runs etcd only — and the clients are in C (the bridge's namespace). Under an
//! every-write load (`--cpt-every-write`: a write is acknowledged only once the spare holds it)
//! the faults are: a cut between each pair of hosts, each host of the pair cut from the etcd
//! majority, one-way cuts between the pair, pauses (SIGSTOP) of either process, etcd members
//! killed and restarted, and the spare's daemon restarted. After each, the primary is killed and
//! the checker of the suite (`main.rs`: `lost`, `windows`) looks at what the clients saw. Each
//! scenario prints one JSON line (`acked`, `lost`, `double_serving_windows`, `failover_ms`,
//! `outage_ms`, …); `docs/reliability.md` ("The arbiter") has a table of them. About 80 s in a
//! release build, as many in a debug one (the time is the faults', not the code's):
//!
//! ```text
//! cargo test --release -p hotspare-tests --test faults -- --test-threads=1 --nocapture s12
//! ```

use super::arbiter::{acks_by, iptables_in, term_record, ArbiterPair};
use super::*;

/// The etcd members' hosts: the primary's, the spare's, and one with etcd only.
const HOSTS: [&str; 3] = ["A", "B", "D"];

/// A pair on [`HOSTS`] (detection 10 × 10 ms), past the spare's start-up grace, the keys of the
/// writer to B already written (a resumed program then serves keys it has seen: s9), and an
/// every-write load from C on both service addresses (B's answers only after a takeover).
fn begin(tag: &str) -> (ArbiterPair, PathBuf, Load) {
    begin_with(tag, &[])
}

/// [`begin`], with `primary_env` added to the primary's environment.
fn begin_with(tag: &str, primary_env: &[(&str, &str)]) -> (ArbiterPair, PathBuf, Load) {
    let p = ArbiterPair::start_with(tag, true, "10", &HOSTS, primary_env);
    let dir = p.dir().to_path_buf();
    let c = p.c();
    p.past_grace();
    let (pre, _) = set_each(p.pa, c, "to-b", 64, Duration::from_secs(20));
    assert_eq!(pre.len(), 64, "{tag}: prefill{}", logs(&dir));
    let load = Load::start(
        &[("to-a", p.pa), ("to-b", p.pb)],
        c,
        Duration::from_millis(1),
    );
    assert!(
        wait_acks(&load, 50, Duration::from_secs(10)),
        "{tag}: no load{}",
        logs(&dir)
    );
    (p, dir, load)
}

/// Rules for iptables (in the host they run in) dropping all traffic with each of `others`
/// on the etcd ports (clients 2379, peers 2380), in both directions.
fn cut_etcd_from(others: &[String]) -> Vec<Vec<String>> {
    let mut v = Vec::new();
    for ip in others {
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            v.push(
                [
                    "-A",
                    chain,
                    dir,
                    ip,
                    "-p",
                    "tcp",
                    "-m",
                    "multiport",
                    "--ports",
                    "2379,2380",
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            );
        }
    }
    v
}

/// One rule: `args` (iptables arguments).
fn rule(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A cut to heal after a while, when the spare must not take over before: (how long, how).
type Held<'a> = Option<(Duration, &'a dyn Fn(&Lab))>;

/// Whether host `from` gets an answer from the etcd member at `endpoint` (`etcdctl endpoint
/// health`, within half a second).
fn etcd_reachable(lab: &Lab, from: &str, endpoint: &str) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns(from),
            "etcdctl",
            "--endpoints",
            endpoint,
        ])
        .args([
            "--dial-timeout=300ms",
            "--command-timeout=500ms",
            "endpoint",
            "health",
        ])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs `rules` in host `h`, checking that they cut it from the etcd members of the hosts
/// `cut` (reachable before, not after): a fault that did not happen must not pass. The moment
/// the rules were installed.
fn cut_and_check(
    p: &ArbiterPair,
    h: &str,
    rules: &[Vec<String>],
    cut: &[&str],
    what: &str,
) -> u128 {
    let member = |x: &str| {
        let i = p
            .etcd_hosts
            .iter()
            .position(|y| *y == x)
            .expect("an etcd host");
        p.etcd[i].endpoint.clone()
    };
    for x in cut {
        assert!(
            etcd_reachable(&p.lab, h, &member(x)),
            "{what}: {h} does not reach the etcd member on {x} before the cut"
        );
    }
    let at = now_ns();
    iptables_in(&p.lab, h, rules);
    for x in cut {
        assert!(
            !etcd_reachable(&p.lab, h, &member(x)),
            "{what}: the cut is not in place: {h} still reaches the etcd member on {x}"
        );
    }
    at
}

/// Whether a takeover began (the hook ran).
fn took_over(dir: &Path) -> bool {
    dir.join("takeover_ns").exists()
}

/// Kills the primary (whatever else is still in place) and waits for the takeover — at once, or,
/// with `heal` given, only after `heal` ran once `hold` has passed without one (the spare
/// must not take over before). Then the checker on every acknowledgement since `since`:
/// nothing lost on the resumed program, no two processes acknowledging in overlapping time, the
/// old primary acknowledging nothing sent after the takeover began, the term at etcd 2. Fills
/// `f`; `failover_ms` is from the kill (or from `heal`) to the takeover hook.
fn kill_and_check(
    p: ArbiterPair,
    dir: &Path,
    load: Load,
    since: u128,
    f: &mut Figures,
    what: &str,
    held: Held<'_>,
) -> After {
    let ArbiterPair {
        primary,
        spare,
        etcd,
        lab,
        t,
        pb,
        ..
    } = p;
    let c = Some(lab.fd("C"));
    let old = primary.pid();
    let killed = now_ns();
    drop(primary);
    let mut from = killed;
    if let Some((hold, heal)) = held {
        std::thread::sleep(hold);
        assert!(
            !took_over(dir),
            "{what}: the spare took over while it could not win the term (etcd: {}){}",
            term_record(&etcd, &lab),
            logs(dir)
        );
        assert!(
            log(dir, "spare.log").contains("not taking over: arbiter"),
            "{what}: the spare never tried to claim (so the fault was not tested){}",
            logs(dir)
        );
        from = now_ns();
        heal(&lab);
    }
    let took = wait_takeover(dir, Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "{what}: no takeover after the primary was killed{}",
            logs(dir)
        )
    });
    let first = wait_serving(pb, c, spare.pid(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{what}: {e}{}", logs(dir)));
    let n = load.tally.lock().unwrap().acks.len();
    assert!(
        wait_acks(&load, n + 20, Duration::from_secs(10)),
        "{what}: the resumed program acknowledges nothing{}",
        logs(dir)
    );
    let tally = load.stop();
    let (lost_n, _, ex) = lost(pb, c, spare.pid(), &tally.acks);
    let w = windows(&tally.acks, since);
    let old_after = acks_by(&tally.acks, old, took);
    let record = term_record(&etcd, &lab);
    f.trials += 1;
    f.acked += tally.acks.len();
    f.lost += lost_n;
    f.windows += w;
    f.outage_ms = f.outage_ms.max((first - killed) as f64 / MS as f64);
    f.add("failover_ms", (took - from) / MS);
    f.add("old_primary_acks_after_takeover", old_after);
    assert_eq!(
        lost_n,
        0,
        "{what}: acknowledged writes lost: {ex:?}{}",
        logs(dir)
    );
    assert_eq!(w, 0, "{what}: double-serving windows{}", logs(dir));
    assert_eq!(
        old_after,
        0,
        "{what}: the old primary acknowledged writes sent after the takeover{}",
        logs(dir)
    );
    assert!(
        record.contains("\"term\":2") && record.contains("\"holder\":\"B"),
        "{what}: the takeover is not recorded at the arbiter: {record}{}",
        logs(dir)
    );
    if std::env::var_os("HOTSPARE_LOG_TIME").is_some() {
        eprintln!("--- {what}: the logs (HOTSPARE_LOG_TIME set){}", logs(dir));
    }
    After {
        _spare: spare,
        etcd,
        lab,
        _t: t,
    }
}

/// What is left after [`kill_and_check`]: the resumed program, etcd, the hosts (in drop order).
struct After {
    _spare: Killed,
    etcd: Vec<util::Etcd>,
    lab: Lab,
    _t: tempfile::TempDir,
}

/// A cut that must change nothing while the pair can hear each other: for `hold` no takeover,
/// the primary alive and acknowledging (at least `min_acks` writes sent in the cut). Returns
/// the acknowledgements it made in the cut.
fn no_takeover_during(
    p: &ArbiterPair,
    dir: &Path,
    load: &Load,
    cut: u128,
    hold: Duration,
    min_acks: usize,
    what: &str,
) -> usize {
    std::thread::sleep(hold);
    let during = acks_by(&load.acks(), p.primary.pid(), cut);
    assert!(
        !took_over(dir),
        "{what}: a takeover while the primary and its spare could hear each other (etcd: {}){}",
        p.term_record(),
        logs(dir)
    );
    assert!(
        during >= min_acks,
        "{what}: the primary acknowledged only {during} writes in the cut{}",
        logs(dir)
    );
    during
}

/// Every pair of hosts cut (A|B is s11; here A|D and B|D, D the etcd-only host), and each host
/// of the pair cut from the etcd majority (its etcd traffic with the two other hosts dropped:
/// its own member is then a minority of one) while it still reaches its peer. None of them
/// changes hands: the pair needs etcd only when one of them falls silent. Then, with the cut
/// still in place, the primary is killed: the spare takes over through etcd — except when it is
/// the spare that is cut from the majority, which must wait until that cut heals.
#[test]
fn s12a_jepsen_partitions_of_every_pair_of_hosts_and_from_etcd() {
    let _serial = serial();
    let mut failures = Vec::new();
    // (name, host where the rules go, the hosts it is cut from, whether only etcd's ports).
    let variants: [(&str, &str, &str, bool); 4] = [
        ("primary_host|etcd_only_host", "A", "D", false),
        ("spare_host|etcd_only_host", "B", "D", false),
        ("primary_host|etcd_majority", "A", "BD", true),
        ("spare_host|etcd_majority", "B", "AD", true),
    ];
    for (i, (name, h, from, etcd_only)) in variants.into_iter().enumerate() {
        let mut f = Figures::default();
        let (p, dir, load) = begin(&format!("ja{i}"));
        let ips: Vec<String> = from.chars().map(|x| p.lab.ip(&x.to_string())).collect();
        let rules = if etcd_only {
            cut_etcd_from(&ips)
        } else {
            super::arbiter::cut_from(&ips)
        };
        let hosts: Vec<String> = from.chars().map(String::from).collect();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let cut = cut_and_check(&p, h, &rules, &hosts, name);
        let during =
            no_takeover_during(&p, &dir, &load, cut, Duration::from_millis(2000), 100, name);
        f.add("acks_by_the_primary_in_the_cut", during);
        let host = h.to_string();
        let heal = move |lab: &Lab| lab.exec(&host, &["iptables", "-F"]).unwrap();
        // The spare cut from the majority cannot win the term: it waits for the cut to heal.
        let held: Held<'_> =
            (h == "B" && etcd_only).then_some((Duration::from_millis(2500), &heal));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(kill_and_check(p, &dir, load, cut, &mut f, name, held));
        }));
        f.print(&format!("jepsen_cut_{name}"));
        if let Err(e) = r {
            failures.push(panic_text(e));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A panic's message.
fn panic_text(e: Box<dyn std::any::Any + Send>) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(panic)".into())
}

/// Waits (bounded) until the primary `pid` acknowledged `n` more writes than `load` holds now.
fn more_acks_by(load: &Load, pid: i32, n: usize, within: Duration) -> bool {
    let before = acks_by(&load.acks(), pid, 0);
    let t = Instant::now();
    while t.elapsed() < within {
        if acks_by(&load.acks(), pid, 0) >= before + n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// One-way cuts between the pair (all packets from A to B dropped, or all from B to A; the
/// etcd members of A and B lose each other too, D still links them). The spare cannot hear
/// the primary (or the primary its spare): the primary renews its lease at etcd, so it stays
/// alive (it would exit when its lease ran out), the spare's claims lose, nothing changes
/// hands; every-write acknowledgements wait, since no checkpoint completes. Healed, the pair
/// goes on by itself (writes acknowledged again); then the primary is killed and the spare
/// takes over with everything.
#[test]
fn s12b_jepsen_one_way_partitions_between_primary_and_spare() {
    let _serial = serial();
    let mut failures = Vec::new();
    // (name, rule in A)
    let variants = [
        ("primary_to_spare_dropped", ["-A", "OUTPUT", "-d", "B"]),
        ("spare_to_primary_dropped", ["-A", "INPUT", "-s", "B"]),
    ];
    for (i, (name, r)) in variants.into_iter().enumerate() {
        let mut f = Figures::default();
        let (mut p, dir, load) = begin(&format!("jb{i}"));
        let b = p.lab.ip("B");
        let args: Vec<&str> = r
            .iter()
            .map(|x| if *x == "B" { b.as_str() } else { x })
            .chain(["-j", "DROP"])
            .collect();
        let cut = cut_and_check(&p, "A", &[rule(&args)], &["B"], name);
        std::thread::sleep(Duration::from_millis(3000));
        let during = acks_by(&load.acks(), p.primary.pid(), cut + 200 * MS);
        let alive = p.primary.0.try_wait().unwrap().is_none();
        let spare_log = log(&dir, "spare.log");
        let claims_lost = spare_log
            .matches("the primary renewed its lease at the arbiter")
            .count();
        f.add("acks_by_the_primary_in_the_cut", during);
        f.add("spare_claims_lost", claims_lost);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert!(
                !took_over(&dir),
                "{name}: a takeover while the primary renewed its lease at etcd (etcd: {}){}",
                p.term_record(),
                logs(&dir)
            );
            assert!(
                alive,
                "{name}: the primary exited: it lost its lease although it reaches etcd{}",
                logs(&dir)
            );
            p.lab.exec("A", &["iptables", "-F"]).unwrap();
            let healed = now_ns();
            assert!(
                more_acks_by(&load, p.primary.pid(), 50, Duration::from_secs(15)),
                "{name}: the pair did not go on after the cut healed{}",
                logs(&dir)
            );
            let resumed = load
                .acks()
                .iter()
                .filter(|a| a.pid == p.primary.pid() && a.sent >= healed)
                .map(|a| a.got)
                .min()
                .unwrap_or(healed);
            f.add("acks_again_ms_after_heal", (resumed - healed) / MS);
            assert!(
                !took_over(&dir),
                "{name}: a takeover after the cut healed{}",
                logs(&dir)
            );
            std::thread::sleep(Duration::from_millis(300));
            drop(kill_and_check(p, &dir, load, cut, &mut f, name, None));
        }));
        f.print(&format!("jepsen_one_way_{name}"));
        if let Err(e) = r {
            failures.push(panic_text(e));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Pauses. The primary is stopped (SIGSTOP) for a second, well past its lease (80 ms) and the
/// arbiter's W (45 ms): the spare takes over through etcd meanwhile; continued, the old primary
/// must acknowledge nothing sent after the takeover began (the writer to A has a SET queued on
/// its connection throughout) and exit (lease lost, `on_fence = exit`). Then the spare is
/// stopped for 1.5 s: the primary, its spare silent, renews its lease at etcd and stays
/// (every-write replies wait; in interval mode it keeps acknowledging); continued, the spare
/// answers what waited, does not take over, and a later kill of the primary loses nothing.
#[test]
fn s12c_jepsen_pauses_of_the_primary_and_of_the_spare() {
    let _serial = serial();
    let mut failures = Vec::new();
    // 1. The primary paused; continued, it exits (`on_fence = exit`, the default with an
    // arbiter), or stays up refusing writes (`report`) while its clients keep sending them.
    for (i, on_fence) in ["exit", "report"].into_iter().enumerate() {
        let name = if on_fence == "exit" {
            "primary_paused"
        } else {
            "primary_paused_on_fence_report"
        };
        let mut f = Figures::default();
        let (p, dir, load) = begin_with(&format!("jc{i}"), &[("HOTSPARE_ON_FENCE", on_fence)]);
        let c = p.c();
        let old = p.primary.pid();
        let stopped = now_ns();
        p.primary.signal(libc::SIGSTOP);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let took = wait_takeover(&dir, Duration::from_secs(20));
            let first = took.map(|_| wait_serving(p.pb, c, p.spare.pid(), Duration::from_secs(20)));
            // Paused a second in all (and the takeover done) before it may go on.
            std::thread::sleep(
                Duration::from_millis(1000)
                    .saturating_sub(Duration::from_nanos((now_ns() - stopped) as u64)),
            );
            let paused_ms = (now_ns() - stopped) / MS;
            p.primary.signal(libc::SIGCONT);
            let took = took.unwrap_or_else(|| {
                panic!("{name}: no takeover of a stopped primary{}", logs(&dir))
            });
            let first = first
                .expect("checked")
                .unwrap_or_else(|e| panic!("{name}: {e}{}", logs(&dir)));
            let mut p = p;
            let code = if on_fence == "exit" {
                p.primary.wait_exit(Duration::from_secs(10))
            } else {
                // Up, and sent writes for a while (the writer to A goes on; its SET queued
                // in the pause waits up to 2 s for its reply).
                std::thread::sleep(Duration::from_millis(3000));
                p.primary.0.try_wait().unwrap().and_then(|s| s.code())
            };
            let alive = p.primary.0.try_wait().unwrap().is_none();
            let n = load.tally.lock().unwrap().acks.len();
            assert!(
                wait_acks(&load, n + 20, Duration::from_secs(10)),
                "{name}: the resumed program acknowledges nothing{}",
                logs(&dir)
            );
            let tally = load.stop();
            let (lost_n, _, ex) = lost(p.pb, c, p.spare.pid(), &tally.acks);
            let w = windows(&tally.acks, took);
            let old_after = acks_by(&tally.acks, old, took);
            let late = tally
                .acks
                .iter()
                .filter(|a| a.pid == old && a.got >= took)
                .count();
            f.trials = 1;
            f.acked = tally.acks.len();
            f.lost = lost_n;
            f.windows = w;
            f.outage_ms = (first - stopped) as f64 / MS as f64;
            f.add("failover_ms", (took - stopped) / MS);
            f.add("paused_ms", paused_ms);
            f.add("old_primary_acks_after_takeover", old_after);
            f.add("old_primary_replies_after_takeover", late);
            f.add("old_primary_exit", format!("{code:?}"));
            // What the writers got instead of acknowledgements (the fenced primary answers
            // TRYAGAIN, or closes a connection whose reply would wait for a checkpoint).
            f.add("writes_refused_or_dropped", tally.errors + tally.broken);
            assert_eq!(
                lost_n,
                0,
                "{name}: acknowledged writes lost: {ex:?}{}",
                logs(&dir)
            );
            assert_eq!(w, 0, "{name}: double-serving windows{}", logs(&dir));
            assert_eq!(
                old_after,
                0,
                "{name}: the paused primary acknowledged writes sent after the takeover{}",
                logs(&dir)
            );
            if on_fence == "exit" {
                assert_eq!(
                    code,
                    Some(75),
                    "{name}: the old primary did not exit as fenced{}",
                    logs(&dir)
                );
            } else {
                assert!(
                    alive,
                    "{name}: the old primary should be up (refusing writes){}",
                    logs(&dir)
                );
            }
            let record = p.term_record();
            assert!(
                record.contains("\"term\":2") && record.contains("\"holder\":\"B"),
                "{name}: the takeover is not recorded at the arbiter: {record}{}",
                logs(&dir)
            );
        }));
        f.print(&format!("jepsen_pause_{name}"));
        if let Err(e) = r {
            failures.push(panic_text(e));
        }
    }
    // 2. The spare paused, in every-write mode, then in interval mode.
    for (i, every_write) in [true, false].into_iter().enumerate() {
        let name = if every_write {
            "spare_paused"
        } else {
            "spare_paused_interval_mode"
        };
        let mut f = Figures::default();
        let (mut p, dir, load) = if every_write {
            begin(&format!("jd{i}"))
        } else {
            let p = ArbiterPair::start_with(&format!("jd{i}"), false, "10", &HOSTS, &[]);
            let dir = p.dir().to_path_buf();
            p.past_grace();
            let load = Load::start(&[("to-a", p.pa)], p.c(), Duration::from_millis(1));
            assert!(
                wait_acks(&load, 50, Duration::from_secs(10)),
                "{name}: no load{}",
                logs(&dir)
            );
            (p, dir, load)
        };
        let stopped = now_ns();
        p.spare.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(1500));
        let during = acks_by(&load.acks(), p.primary.pid(), stopped + 200 * MS);
        let alive = p.primary.0.try_wait().unwrap().is_none();
        p.spare.signal(libc::SIGCONT);
        f.add("pause_ms", (now_ns() - stopped) / MS);
        f.add("acks_by_the_primary_in_the_pause", during);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert!(
                alive,
                "{name}: the primary exited while its spare was stopped: no lease from etcd{}",
                logs(&dir)
            );
            if !every_write {
                assert!(
                    during > 100,
                    "{name}: the primary stopped serving while its spare was stopped: {during} acknowledgements{}",
                    logs(&dir)
                );
            }
            assert!(
                more_acks_by(&load, p.primary.pid(), 50, Duration::from_secs(10)),
                "{name}: the primary acknowledges nothing after the spare went on{}",
                logs(&dir)
            );
            std::thread::sleep(Duration::from_millis(1500));
            assert!(
                !took_over(&dir),
                "{name}: the spare took over a live primary after its pause (etcd: {}){}",
                p.term_record(),
                logs(&dir)
            );
            if every_write {
                drop(kill_and_check(p, &dir, load, stopped, &mut f, name, None));
            } else {
                let tally = load.stop();
                f.trials = 1;
                f.acked = tally.acks.len();
                f.outage_ms = longest_gap(&tally.acks);
            }
        }));
        f.print(&format!("jepsen_pause_{name}"));
        if let Err(e) = r {
            failures.push(panic_text(e));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Finds the member that leads the cluster (asked from C), bounded.
fn leader(p: &ArbiterPair, dir: &Path) -> usize {
    let t = Instant::now();
    loop {
        if let Some(i) = (0..p.etcd.len()).find(|&i| p.etcd[i].is_leader(&p.lab, "C")) {
            return i;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no etcd leader{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// etcd members killed and restarted under the load: first one that does not lead, then the
/// leader (a new one is elected among the other two). The pair does not notice (a healthy pair
/// needs no etcd): no takeover, the primary acknowledging throughout. Then the primary is
/// killed: the spare takes over through the cluster, and every member — the two restarted ones
/// too — holds the new term.
#[test]
fn s12d_jepsen_etcd_members_killed_and_restarted() {
    let _serial = serial();
    let name = "etcd_follower_then_leader_restarted";
    let mut f = Figures::default();
    let (mut p, dir, load) = begin("je");
    let since = now_ns();
    let mut killed = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for which in ["follower", "leader"] {
            let l = leader(&p, &dir);
            let i = if which == "leader" {
                l
            } else {
                (l + 1) % p.etcd.len()
            };
            let host = p.etcd_hosts[i];
            killed.push(format!("{which} on {host}"));
            let at = now_ns();
            p.etcd[i].kill();
            std::thread::sleep(Duration::from_millis(1000));
            let lab = &p.lab;
            p.etcd[i].restart(lab).unwrap_or_else(|e| {
                panic!(
                    "{name}: restarting the {which} on {host}: {e}{}",
                    logs(&dir)
                )
            });
            std::thread::sleep(Duration::from_millis(300));
            let during = no_takeover_during(&p, &dir, &load, at, Duration::ZERO, 100, name);
            f.add(&format!("acks_while_the_{which}_was_down_and_back"), during);
        }
        f.add("members_restarted", killed.join(", "));
        let hosts = p.etcd_hosts.clone();
        let after = kill_and_check(p, &dir, load, since, &mut f, name, None);
        // Every member, the restarted ones too, holds the new term.
        for (e, h) in after.etcd.iter().zip(&hosts) {
            let v = e
                .get(&after.lab, "C", "/hotspare/kv/term")
                .unwrap_or_else(|e| e);
            assert!(
                v.contains("\"term\":2"),
                "{name}: the member on {h} holds {v}{}",
                logs(&dir)
            );
        }
    }));
    f.print(&format!("jepsen_{name}"));
    if let Err(e) = r {
        panic!("{}", panic_text(e));
    }
}

/// A field of the spare's status file (`"name":value`), if it is there.
fn status_field(dir: &Path, name: &str) -> Option<u64> {
    let s = std::fs::read_to_string(dir.join("spare/status")).ok()?;
    let at = s.find(&format!("\"{name}\":"))? + name.len() + 3;
    s[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A number of the service's `INFO hotspare` at `addr` (asked from namespace `ns`).
fn info_field(addr: SocketAddr, ns: Option<i32>, name: &str) -> Option<u64> {
    in_ns(ns, || {
        let mut c =
            RespConn::connect(addr, Duration::from_millis(300), Duration::from_secs(2)).ok()?;
        let Reply::Bulk(Some(b)) = c.cmd(&["INFO", "hotspare"]).ok()? else {
            return None;
        };
        String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Waits (bounded) until the spare's status says a primary is connected and its image is at
/// least at checkpoint `seq`, applied.
fn wait_spare_at(dir: &Path, seq: u64, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        let s = std::fs::read_to_string(dir.join("spare/status")).unwrap_or_default();
        let at = status_field(dir, "seq").unwrap_or(0);
        if s.contains("\"primary_connected\":true")
            && at >= seq
            && status_field(dir, "applied").unwrap_or(0) >= seq
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The spare's daemon is killed under the load and started again on its image directory, as a
/// supervisor would. The primary, with no spare, renews its lease at etcd (alive; every-write
/// replies wait). The restarted daemon must become the spare again by itself: the primary
/// reconnects, sends a full image and then incremental checkpoints on top of it (the spare
/// refuses an incremental one that does not apply on its image, so its applying several shows
/// the chain), writes are acknowledged again, the restarted daemon takes nothing over; then the
/// primary is killed and it takes over with every acknowledged write — those acknowledged
/// before its restart, held only by the full image, too.
#[test]
fn s12e_jepsen_spare_daemon_restarted_becomes_the_spare_again() {
    let _serial = serial();
    let name = "spare_daemon_restarted";
    let mut f = Figures::default();
    let (mut p, dir, load) = begin("jf");
    let since = now_ns();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let before = status_field(&dir, "seq").unwrap_or(0);
        let full = |p: &ArbiterPair| info_field(p.pa, p.c(), "hotspare_full_image_bytes");
        let full_before = full(&p).unwrap_or_else(|| panic!("{name}: no INFO hotspare"));
        let connects = log(&dir, "primary.log")
            .matches("connected to spare")
            .count();
        let admitted = log(&dir, "spare.log").matches("admitted").count();
        let killed = now_ns();
        p.spare.signal(libc::SIGKILL);
        let _ = p.spare.0.wait();
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            p.primary.0.try_wait().unwrap().is_none(),
            "{name}: the primary exited when its spare died (no lease from etcd){}",
            logs(&dir)
        );
        let held = status_field(&dir, "seq").unwrap_or(0);
        p.restart_spare();
        let restarted = now_ns();
        // The primary comes back to it: a new connection, admitted.
        let t = Instant::now();
        while log(&dir, "primary.log")
            .matches("connected to spare")
            .count()
            <= connects
            || log(&dir, "spare.log").matches("admitted").count() <= admitted
        {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{name}: the primary did not reconnect to the restarted spare{}",
                logs(&dir)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let reconnect_ms = (now_ns() - restarted) / MS;
        assert!(
            more_acks_by(&load, p.primary.pid(), 50, Duration::from_secs(10)),
            "{name}: no write acknowledged after the spare came back{}",
            logs(&dir)
        );
        // A full image was sent since (the largest full checkpoint grew from the first one,
        // taken of an empty store).
        let full_after = full(&p).unwrap_or(0);
        assert!(
            full_after > full_before,
            "{name}: no full checkpoint since the spare was killed ({full_before} → {full_after} bytes){}",
            logs(&dir)
        );
        let now_at = status_field(&dir, "seq").unwrap_or(0);
        assert!(
            wait_spare_at(&dir, now_at + 3, Duration::from_secs(10)),
            "{name}: the restarted spare does not follow the primary's checkpoints{}",
            logs(&dir)
        );
        let spare_log = log(&dir, "spare.log");
        for refusal in [
            "impossible",
            "applies on top of",
            "holds no checkpoint",
            "is not newer",
        ] {
            assert!(
                !spare_log.contains(refusal),
                "{name}: the restarted spare refused a checkpoint ({refusal}){}",
                logs(&dir)
            );
        }
        f.add("spare_seq_before_kill", before);
        f.add("spare_seq_held_across_restart", held);
        f.add(
            "spare_seq_after_restart",
            status_field(&dir, "seq").unwrap_or(0),
        );
        f.add("spare_down_ms", (restarted - killed) / MS);
        f.add(
            "full_image_bytes_before_after",
            format!("{full_before} {full_after}"),
        );
        f.add("reconnect_ms", reconnect_ms);
        // Past the restarted daemon's start-up grace, then the real failure.
        p.past_grace();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !took_over(&dir),
            "{name}: the restarted spare took over a live primary{}",
            logs(&dir)
        );
        drop(kill_and_check(p, &dir, load, since, &mut f, name, None));
    }));
    f.print(&format!("jepsen_{name}"));
    if let Err(e) = r {
        panic!("{}", panic_text(e));
    }
}
