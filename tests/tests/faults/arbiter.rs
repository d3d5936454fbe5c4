//! Section 11 of the fault suite, the arbiter: a one-member etcd in the clients' host, and
//! takeovers decided by it (`docs/replication.md`, "The arbiter"). The harness (processes,
//! writers, checks) is the suite's own, in `main.rs`.

use super::*;

/// A pair with an arbiter in namespaces: primary in A, spare in B, etcd and the clients in C
/// (or a three-member etcd cluster on other hosts: [`ArbiterPair::start_with`]).
pub(super) struct ArbiterPair {
    // Field order is drop order: the processes before the lab they run in.
    pub(super) primary: Killed,
    pub(super) spare: Killed,
    /// Its members (one in C, or three, one per host of the cluster).
    pub(super) etcd: Vec<util::Etcd>,
    /// The hosts of `etcd`, in its order.
    pub(super) etcd_hosts: Vec<&'static str>,
    pub(super) lab: Lab,
    pub(super) t: tempfile::TempDir,
    /// The service's address on A and on B.
    pub(super) pa: SocketAddr,
    pub(super) pb: SocketAddr,
    /// When the spare started.
    pub(super) started: Instant,
    /// The spare's arguments beyond [`start_spare`]'s own, and the program's (for a restart).
    spare_extra: Vec<String>,
    kv_args: Vec<String>,
}

impl ArbiterPair {
    pub(super) fn dir(&self) -> &Path {
        self.t.path()
    }

    pub(super) fn c(&self) -> Option<i32> {
        Some(self.lab.fd("C"))
    }

    /// Kills the spare's daemon and starts it again on the same image directory, with the same
    /// arguments (as its supervisor would); its start-up grace begins again.
    pub(super) fn restart_spare(&mut self) {
        self.spare.signal(libc::SIGKILL);
        let _ = self.spare.0.wait();
        let extra: Vec<&str> = self.spare_extra.iter().map(String::as_str).collect();
        self.started = Instant::now();
        self.spare = start_spare(
            self.t.path(),
            &self.t.path().join("spare"),
            &format!("{}:7070", self.lab.ip("B")),
            &self.kv_args,
            &extra,
            At::Host(&self.lab, "B"),
        );
    }

    /// Waits until the spare's start-up grace (1 s) is well over, so that a fault measures the
    /// failover and not the grace.
    pub(super) fn past_grace(&self) {
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(self.started.elapsed()));
    }

    /// Sets the pair up and waits until the primary serves; `missed` heartbeats make the
    /// spare's detection time. One etcd member in C.
    fn start(tag: &str, every_write: bool, missed: &str) -> ArbiterPair {
        Self::start_with(tag, every_write, missed, &[], &[])
    }

    /// The same, with a three-member etcd cluster, one member in each host of `cluster` (hosts
    /// beyond A, B and C are added), when it is not empty; `primary_env` added to the primary's
    /// environment.
    pub(super) fn start_with(
        tag: &str,
        every_write: bool,
        missed: &str,
        cluster: &[&'static str],
        primary_env: &[(&str, &str)],
    ) -> ArbiterPair {
        let mut lab = Lab::setup(tag, "10.81.0").unwrap_or_else(|e| panic!("{e}"));
        let (t, _key) = workdir();
        let dir = t.path().to_path_buf();
        let (a, b, c) = (lab.ip("A"), lab.ip("B"), lab.ip("C"));
        let etcd_hosts = if cluster.is_empty() {
            vec!["C"]
        } else {
            cluster.to_vec()
        };
        let etcd = if !cluster.is_empty() {
            for h in cluster.iter().filter(|h| !["A", "B", "C"].contains(h)) {
                lab.add_host(h).unwrap_or_else(|e| panic!("{e}"));
            }
            util::Etcd::cluster(&lab, cluster, &dir).unwrap_or_else(|e| panic!("{e}"))
        } else {
            vec![
                util::Etcd::start(&lab, "C", &c, &dir, &dir.join("etcd.log"))
                    .unwrap_or_else(|e| panic!("{e}")),
            ]
        };
        let endpoints: Vec<&str> = etcd.iter().map(|e| e.endpoint.as_str()).collect();
        let endpoints = endpoints.join(",");
        let args = kv_args(9000, every_write, "0.0.0.0");
        let spare_addr = format!("{b}:7070");
        let started = Instant::now();
        let spare_extra: Vec<String> = [
            "--arbiter",
            &endpoints,
            "--service",
            "kv",
            "--node",
            "B",
            "--missed",
            missed,
        ]
        .map(String::from)
        .to_vec();
        let extra: Vec<&str> = spare_extra.iter().map(String::as_str).collect();
        let spare = start_spare(
            &dir,
            &dir.join("spare"),
            &spare_addr,
            &args,
            &extra,
            At::Host(&lab, "B"),
        );
        let mut env = vec![
            ("HOTSPARE_ARBITER", endpoints.as_str()),
            ("HOTSPARE_SERVICE", "kv"),
            ("HOTSPARE_NODE", "A"),
        ];
        env.extend_from_slice(primary_env);
        let primary = start_primary(
            &dir,
            "spool",
            &spare_addr,
            &args,
            &env,
            "primary.log",
            At::Host(&lab, "A"),
        );
        let pa: SocketAddr = format!("{a}:9000").parse().unwrap();
        let pb: SocketAddr = format!("{b}:9000").parse().unwrap();
        wait_serving(
            pa,
            Some(lab.fd("C")),
            primary.pid(),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{e}{}", logs(&dir)));
        assert!(
            wait_log(
                &dir,
                "primary.log",
                "registered at the arbiter",
                Duration::from_secs(10)
            ),
            "the primary did not register at the arbiter{}",
            logs(&dir)
        );
        ArbiterPair {
            primary,
            spare,
            etcd,
            etcd_hosts,
            lab,
            t,
            pa,
            pb,
            started,
            spare_extra,
            kv_args: args,
        }
    }

    /// The term record etcd holds now.
    pub(super) fn term_record(&self) -> String {
        term_record(&self.etcd, &self.lab)
    }

    fn iptables(&self, rules: &[&[&str]]) {
        for r in rules {
            let mut v = vec!["iptables"];
            v.extend_from_slice(r);
            self.lab.exec("A", &v).unwrap_or_else(|e| {
                panic!("IPTABLES IN A NAMESPACE FAILED, the scenario cannot run: {e}")
            });
        }
    }
}

/// The hosts of a three-member etcd cluster.
const ETCD_HOSTS: [&str; 3] = ["D", "E", "F"];

/// The term record, as the first member that answers has it (read from the clients' host).
pub(super) fn term_record(etcd: &[util::Etcd], lab: &Lab) -> String {
    let mut why = String::new();
    for e in etcd {
        match e.get(lab, "C", "/hotspare/kv/term") {
            Ok(v) => return v,
            Err(e) => why = e,
        }
    }
    format!("(no member answered: {why})")
}

/// Acknowledgements by `pid` of writes sent at or after `from`.
pub(super) fn acks_by(acks: &[Ack], pid: i32, from: u128) -> usize {
    acks.iter()
        .filter(|a| a.pid == pid && a.sent >= from)
        .count()
}

/// The cut that split brains in two-machine mode (s8): the primary cut off from its spare
/// only, both still reaching etcd. The spare must try, lose the claim, and not take over; the
/// primary must go on acknowledging writes (interval checkpoints: it needs no spare to
/// acknowledge) on the arbiter's leases. Healed, the pair goes on; then the primary is killed
/// and the spare takes over through etcd.
#[test]
fn s11_arbiter_cut_pair_keeps_the_primary_and_no_takeover() {
    let _serial = serial();
    let mut f = Figures::default();
    let p = ArbiterPair::start("r", false, "10");
    let (dir, c) = (p.dir().to_path_buf(), p.c());
    let b = p.lab.ip("B");
    let load = Load::start(&[("to-a", p.pa)], c, Duration::from_millis(1));
    assert!(
        wait_acks(&load, 50, Duration::from_secs(10)),
        "no load{}",
        logs(&dir)
    );
    let cut = now_ns();
    p.iptables(&[
        &["-A", "INPUT", "-s", &b, "-j", "DROP"],
        &["-A", "OUTPUT", "-d", &b, "-j", "DROP"],
    ]);
    // Long enough for several claims (detection 100 ms, then W, then the start-up grace).
    std::thread::sleep(Duration::from_millis(3000));
    let during = acks_by(&load.acks(), p.primary.pid(), cut + 300 * MS);
    let claimed = log(&dir, "spare.log").contains("the primary renewed its lease at the arbiter");
    assert!(
        !dir.join("takeover_ns").exists(),
        "the spare took over a primary cut off from it only (etcd: {}){}",
        p.term_record(),
        logs(&dir)
    );
    assert!(
        claimed,
        "the spare never tried (and lost) a claim, so the cut was not tested{}",
        logs(&dir)
    );
    assert!(
        during > 100,
        "the primary stopped serving while it still reached the arbiter: {during} acks in the cut{}",
        logs(&dir)
    );
    p.lab.exec("A", &["iptables", "-F"]).unwrap();
    assert!(
        wait_log(&dir, "spare.log", "admitted", Duration::from_secs(5)),
        "the primary did not reconnect after the cut{}",
        logs(&dir)
    );
    std::thread::sleep(Duration::from_millis(500));
    // Now a real failure: killed, taken over through etcd; the term there moves to 2.
    let ArbiterPair {
        primary,
        spare,
        etcd,
        lab,
        t,
        pa: _,
        pb,
        ..
    } = p;
    let load_b = Load::start(&[("to-b", pb)], Some(lab.fd("C")), Duration::from_millis(1));
    let killed = now_ns();
    drop(primary);
    let took = wait_takeover(&dir, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no takeover after the kill{}", logs(&dir)));
    let first = wait_serving(pb, Some(lab.fd("C")), spare.pid(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}{}", logs(&dir)));
    let record = term_record(&etcd, &lab);
    assert!(
        record.contains("\"term\":2") && record.contains("\"holder\":\"B"),
        "the takeover is not recorded at the arbiter: {record}{}",
        logs(&dir)
    );
    let tally = load.stop();
    let tally_b = load_b.stop();
    let mut all = tally.acks.clone();
    all.extend(tally_b.acks.iter().cloned());
    let w = windows(&all, took.min(killed));
    f.trials = 1;
    f.acked = all.len();
    f.windows = w;
    f.outage_ms = (first - killed) as f64 / MS as f64;
    f.add("acks_by_the_primary_during_the_cut", during);
    f.add("takeover_ms_after_kill", (took - killed) / MS);
    f.print("arbiter_cut_pair");
    assert_eq!(w, 0, "double-serving windows{}", logs(&dir));
    drop(spare);
    drop(etcd);
    drop(lab);
    drop(t);
}

/// The primary cut off from both its spare and etcd (its clients still reach it): it must stop
/// acknowledging (and, `on_fence` defaulting to `exit` with an arbiter, exit) before the spare
/// may take over; the spare takes over through etcd with every acknowledged write.
#[test]
fn s11b_arbiter_isolated_primary_stops_before_the_takeover() {
    let _serial = serial();
    let mut f = Figures::default();
    let mut p = ArbiterPair::start("s", true, "10");
    let dir = p.dir().to_path_buf();
    let c = p.c();
    let (b, cc) = (p.lab.ip("B"), p.lab.ip("C"));
    let (pre, _) = set_each(p.pa, c, "to-b", 64, Duration::from_secs(20));
    assert_eq!(pre.len(), 64, "prefill{}", logs(&dir));
    let load = Load::start(
        &[("to-a", p.pa), ("to-b", p.pb)],
        c,
        Duration::from_millis(1),
    );
    assert!(
        wait_acks(&load, 50, Duration::from_secs(10)),
        "no load{}",
        logs(&dir)
    );
    std::thread::sleep(Duration::from_millis(300));
    p.past_grace();
    let cut = now_ns();
    p.iptables(&[
        &["-A", "INPUT", "-s", &b, "-j", "DROP"],
        &["-A", "OUTPUT", "-d", &b, "-j", "DROP"],
        &[
            "-A", "OUTPUT", "-d", &cc, "-p", "tcp", "--dport", "2379", "-j", "DROP",
        ],
        &[
            "-A", "INPUT", "-s", &cc, "-p", "tcp", "--sport", "2379", "-j", "DROP",
        ],
    ]);
    let took = wait_takeover(&dir, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no takeover of the isolated primary{}", logs(&dir)));
    let first = wait_serving(p.pb, c, p.spare.pid(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}{}", logs(&dir)));
    std::thread::sleep(Duration::from_millis(1000));
    let code = p.primary.wait_exit(Duration::from_secs(5));
    p.lab.exec("A", &["iptables", "-F"]).unwrap();
    let tally = load.stop();
    let old_after = acks_by(&tally.acks, p.primary.pid(), took);
    let w = windows(&tally.acks, took);
    let (lost_n, _, ex) = lost(p.pb, c, p.spare.pid(), &tally.acks);
    f.trials = 1;
    f.acked = tally.acks.len();
    f.lost = lost_n;
    f.windows = w;
    f.outage_ms = (first - cut) as f64 / MS as f64;
    f.add("takeover_ms_after_cut", (took - cut) / MS);
    f.add("old_primary_exit", format!("{code:?}"));
    f.print("arbiter_isolated_primary");
    assert_eq!(lost_n, 0, "acknowledged writes lost: {ex:?}{}", logs(&dir));
    assert_eq!(w, 0, "double-serving windows{}", logs(&dir));
    assert_eq!(
        old_after,
        0,
        "the isolated primary acknowledged writes sent after the takeover{}",
        logs(&dir)
    );
    assert_eq!(
        code,
        Some(75),
        "the isolated primary did not exit as fenced{}",
        logs(&dir)
    );
}

/// A dead primary is taken over through etcd, with detection at the default 5 × 10 ms: the
/// failover time with the arbiter in the loop, over a few trials (every-write, nothing lost).
#[test]
fn s11c_arbiter_kill_primary_failover_time() {
    let _serial = serial();
    let mut f = Figures::default();
    let (mut times, mut claims, mut silences) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..trials(3) {
        let p = ArbiterPair::start(&format!("k{trial}"), true, "5");
        let dir = p.dir().to_path_buf();
        let c = p.c();
        let (pre, _) = set_each(p.pa, c, "to-b", 64, Duration::from_secs(20));
        assert_eq!(pre.len(), 64, "prefill{}", logs(&dir));
        let load = Load::start(
            &[("to-a", p.pa), ("to-b", p.pb)],
            c,
            Duration::from_millis(1),
        );
        assert!(
            wait_acks(&load, 50, Duration::from_secs(10)),
            "no load{}",
            logs(&dir)
        );
        std::thread::sleep(Duration::from_millis(300));
        p.past_grace();
        f.trials += 1;
        let ArbiterPair {
            primary,
            spare,
            etcd,
            lab,
            t,
            pb,
            ..
        } = p;
        let killed = now_ns();
        let took = fail_over_and_check(
            &dir,
            primary,
            spare.pid(),
            pb,
            Some(lab.fd("C")),
            load,
            &mut f,
            "arbiter kill",
        );
        let spare_log = log(&dir, "spare.log");
        assert!(
            spare_log.contains("the arbiter gave us term 2"),
            "the takeover did not go through the arbiter{}",
            logs(&dir)
        );
        // The spare's own account: silence before it asked, and the claim's duration.
        let number_before = |needle: &str| -> Option<u64> {
            let i = spare_log.find(needle)?;
            spare_log[..i]
                .rsplit(|ch: char| !ch.is_ascii_digit())
                .find(|w| !w.is_empty())?
                .parse()
                .ok()
        };
        claims.push(number_before(" ms after asking it").unwrap_or(0));
        silences.push(number_before(" ms: asking the arbiter").unwrap_or(0));
        times.push((took - killed) as f64 / MS as f64);
        drop(spare);
        drop(etcd);
        drop(lab);
        drop(t);
    }
    times.sort_by(f64::total_cmp);
    f.add(
        "takeover_ms_median",
        format!("{:.0}", times[times.len() / 2]),
    );
    f.add("takeover_ms_all", format!("{times:.0?}"));
    f.add("silence_before_asking_ms", format!("{silences:?}"));
    f.add("claim_ms", format!("{claims:?}"));
    f.print("arbiter_kill_primary");
}

/// The spare dies: with an arbiter the primary goes on acknowledging (interval checkpoints) on
/// leases renewed at etcd — without one it would stop within its lease.
#[test]
fn s11d_arbiter_dead_spare_primary_keeps_serving() {
    let _serial = serial();
    let mut f = Figures::default();
    let p = ArbiterPair::start("d", false, "10");
    let dir = p.dir().to_path_buf();
    let c = p.c();
    let load = Load::start(&[("to-a", p.pa)], c, Duration::from_millis(1));
    assert!(
        wait_acks(&load, 50, Duration::from_secs(10)),
        "no load{}",
        logs(&dir)
    );
    let ArbiterPair {
        mut primary,
        spare,
        etcd,
        lab,
        t,
        ..
    } = p;
    let killed = now_ns();
    drop(spare);
    std::thread::sleep(Duration::from_millis(2000));
    let tally = load.stop();
    let after = acks_by(&tally.acks, primary.pid(), killed + 300 * MS);
    let alive = primary.0.try_wait().unwrap().is_none();
    f.trials = 1;
    f.acked = tally.acks.len();
    f.outage_ms = longest_gap(&tally.acks);
    f.add("acks_after_the_spare_died", after);
    f.print("arbiter_dead_spare");
    assert!(
        alive,
        "the primary exited when its spare died{}",
        logs(&dir)
    );
    assert!(
        after > 100,
        "the primary stopped serving when its spare died: {after} acks{}",
        logs(&dir)
    );
    drop(primary);
    drop(etcd);
    drop(lab);
    drop(t);
}

/// A host's spare daemon for the re-protection cycle: `--node H`, its image in `DIR/img-H`, and
/// the program it resumes streams to the other host's daemon (`HOTSPARE_SPARE`), so that the
/// host that died, once its daemon is back, is the new primary's spare with no re-pairing.
fn daemon(lab: &Lab, dir: &Path, h: &'static str, peer: &'static str, etcd: &str) -> Killed {
    let hook = format!(
        "date +%s%N > {0}/takeover_ns.tmp && mv {0}/takeover_ns.tmp {0}/takeover_ns",
        dir.display()
    );
    let listen = format!("{}:7070", lab.ip(h));
    let log_name = format!("daemon-{h}.log");
    let before = log(dir, &log_name).matches("listening on").count();
    let mut c = Command::new(util::lib("hotspare-resume"));
    c.args(["--listen", &listen, "--key-file"])
        .arg(dir.join("key"))
        .arg("--image-dir")
        .arg(dir.join(format!("img-{h}")))
        .args(["--missed", "10", "--on-takeover", &hook])
        .args(["--arbiter", etcd, "--service", "kv", "--node", h])
        .arg("--exec")
        .arg(kv_bin())
        .args(kv_args(9000, true, "0.0.0.0"))
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env("HOTSPARE_SPARE", format!("{}:7070", lab.ip(peer)))
        .env("HOTSPARE_KEY_FILE", dir.join("key"))
        .env("HOTSPARE_LEASE_MS", "80")
        .env_remove("HOTSPARE_ON_FENCE")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(&log_name))
                .unwrap(),
        ));
    lab.place(h, &mut c);
    let k = Killed(c.spawn().expect("start hotspare-resume"));
    let t = Instant::now();
    while log(dir, &log_name).matches("listening on").count() <= before {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the daemon on {h} did not start listening{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    k
}

/// Waits (bounded) until host `h`'s spare holds a durable image from a connected primary.
fn wait_protected(dir: &Path, h: &str, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        let s = std::fs::read_to_string(dir.join(format!("img-{h}/status"))).unwrap_or_default();
        if s.contains("\"primary_connected\":true") && !s.contains("\"seq\":0,") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Re-protection and failback: ten failovers in a row, alternating hosts, under an every-write
/// load. After each takeover the host that died gets its daemon back (as its supervisor would
/// restart it) and becomes the new primary's spare by itself: the resumed program streams to
/// it (full image, then incremental). Every round: nothing acknowledged lost, no two primaries
/// acknowledging in overlapping time, the term at etcd one higher.
#[test]
fn s11e_arbiter_ten_failovers_alternating_hosts_lose_nothing() {
    let _serial = serial();
    let mut f = Figures::default();
    let lab = Lab::setup("f", "10.81.0").unwrap_or_else(|e| panic!("{e}"));
    let (t, _key) = workdir();
    let dir = t.path().to_path_buf();
    let c = Some(lab.fd("C"));
    let etcd = util::Etcd::start(&lab, "C", &lab.ip("C"), &dir, &dir.join("etcd.log"))
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = |h: &str| -> SocketAddr { format!("{}:9000", lab.ip(h)).parse().unwrap() };
    // Round 0: a fresh program on A, B's daemon its spare.
    let mut spare = daemon(&lab, &dir, "B", "A", &etcd.endpoint);
    let mut primary = start_primary(
        &dir,
        "spool",
        &format!("{}:7070", lab.ip("B")),
        &kv_args(9000, true, "0.0.0.0"),
        &[
            ("HOTSPARE_ARBITER", etcd.endpoint.as_str()),
            ("HOTSPARE_SERVICE", "kv"),
            ("HOTSPARE_NODE", "A"),
        ],
        "primary.log",
        At::Host(&lab, "A"),
    );
    wait_serving(addr("A"), c, primary.pid(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}{}", logs(&dir)));
    assert!(
        wait_protected(&dir, "B", Duration::from_secs(20)),
        "B never held an image{}",
        logs(&dir)
    );
    let (mut on, mut off) = ("A", "B");
    let mut times = Vec::new();
    let started = Instant::now();
    for round in 1..=10u64 {
        // Past the start-up grace of the spare's daemon (started last round).
        std::thread::sleep(Duration::from_millis(1200));
        let load = Load::start(
            &[("to-a", addr("A")), ("to-b", addr("B"))],
            c,
            Duration::from_millis(1),
        );
        assert!(
            wait_acks(&load, 30, Duration::from_secs(20)),
            "round {round}: no load on {on}{}",
            logs(&dir)
        );
        let _ = std::fs::remove_file(dir.join("takeover_ns"));
        f.trials += 1;
        let what = format!("round {round}, {on} killed");
        let killed = now_ns();
        drop(primary);
        let took = wait_takeover(&dir, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{what}: no takeover{}", logs(&dir)));
        times.push((took - killed) as f64 / MS as f64);
        let record = etcd
            .get_retrying(&lab, "C", "/hotspare/kv/term", Duration::from_secs(10))
            .unwrap_or_else(|e| format!("(etcdctl failed for 10 s: {e})"));
        assert!(
            record.contains(&format!("\"term\":{}", round + 1))
                && record.contains(&format!("\"holder\":\"{off}")),
            "{what}: the arbiter holds {record}{}",
            logs(&dir)
        );
        // The resumed program is the primary now; the host that died comes back as its spare
        // (until then, every-write replies wait: nothing is durable without a spare).
        primary = spare;
        std::mem::swap(&mut on, &mut off);
        spare = daemon(&lab, &dir, off, on, &etcd.endpoint);
        assert!(
            wait_protected(&dir, off, Duration::from_secs(20)),
            "{what}: {off} did not become the spare of the new primary on {on}{}",
            logs(&dir)
        );
        wait_serving(addr(on), c, primary.pid(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{what}: {e}{}", logs(&dir)));
        let n = load.tally.lock().unwrap().acks.len();
        assert!(
            wait_acks(&load, n + 20, Duration::from_secs(10)),
            "{what}: the new primary acknowledges nothing{}",
            logs(&dir)
        );
        let tally = load.stop();
        let (lost_n, _, ex) = lost(addr(on), c, primary.pid(), &tally.acks);
        let w = windows(&tally.acks, took.min(killed));
        f.acked += tally.acks.len();
        f.lost += lost_n;
        f.windows += w;
        assert_eq!(
            lost_n,
            0,
            "{what}: acknowledged writes lost: {ex:?}{}",
            logs(&dir)
        );
        assert_eq!(w, 0, "{what}: double-serving windows{}", logs(&dir));
    }
    times.sort_by(f64::total_cmp);
    f.add(
        "takeover_ms_median",
        format!("{:.0}", times[times.len() / 2]),
    );
    f.add("takeover_ms_max", format!("{:.0}", times[times.len() - 1]));
    f.add("seconds", started.elapsed().as_secs());
    f.print("arbiter_ten_failovers");
    drop(primary);
    drop(spare);
    drop(etcd);
    drop(lab);
    drop(t);
}

/// Runs `rules` (iptables arguments) in host `h`.
pub(super) fn iptables_in(lab: &Lab, h: &str, rules: &[Vec<String>]) {
    for r in rules {
        let mut v = vec!["iptables"];
        v.extend(r.iter().map(String::as_str));
        lab.exec(h, &v).unwrap_or_else(|e| {
            panic!("IPTABLES IN A NAMESPACE FAILED, the scenario cannot run: {e}")
        });
    }
}

/// Drops everything between the host it runs in and each host address of `others`.
pub(super) fn cut_from(others: &[String]) -> Vec<Vec<String>> {
    let mut v = Vec::new();
    for ip in others {
        for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            v.push(
                ["-A", chain, dir, ip, "-j", "DROP"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            );
        }
    }
    v
}

/// A three-member etcd cluster (D, E, F; 100 ms elections). Its leader is killed under an
/// every-write load: the pair does not notice (a healthy pair needs no etcd), nothing changes
/// hands. Then the primary is killed: the spare takes over through the two members left.
#[test]
fn s11f_etcd_cluster_leader_killed_then_the_primary() {
    let _serial = serial();
    let mut f = Figures::default();
    let mut p = ArbiterPair::start_with("j", true, "10", &ETCD_HOSTS, &[]);
    let dir = p.dir().to_path_buf();
    let c = p.c();
    p.past_grace();
    let load = Load::start(
        &[("to-a", p.pa), ("to-b", p.pb)],
        c,
        Duration::from_millis(1),
    );
    assert!(
        wait_acks(&load, 50, Duration::from_secs(10)),
        "no load{}",
        logs(&dir)
    );
    let leader = ETCD_HOSTS
        .iter()
        .position(|h| {
            p.etcd[ETCD_HOSTS.iter().position(|x| x == h).unwrap()].is_leader(&p.lab, "C")
        })
        .unwrap_or_else(|| panic!("no etcd leader found{}", logs(&dir)));
    let killed_leader = now_ns();
    p.etcd[leader].kill();
    std::thread::sleep(Duration::from_millis(1500));
    let during = acks_by(&load.acks(), p.primary.pid(), killed_leader + 100 * MS);
    assert!(
        !dir.join("takeover_ns").exists(),
        "a takeover followed the loss of the etcd leader{}",
        logs(&dir)
    );
    assert!(
        during > 100,
        "the primary stopped acknowledging when the etcd leader died: {during}{}",
        logs(&dir)
    );
    let ArbiterPair {
        primary,
        spare,
        etcd,
        lab,
        t,
        pb,
        ..
    } = p;
    f.trials = 1;
    let killed = now_ns();
    let took = fail_over_and_check(
        &dir,
        primary,
        spare.pid(),
        pb,
        Some(lab.fd("C")),
        load,
        &mut f,
        "kill after the etcd leader",
    );
    let record = term_record(&etcd, &lab);
    assert!(
        record.contains("\"term\":2"),
        "the takeover is not at the arbiter: {record}{}",
        logs(&dir)
    );
    f.add("etcd_leader_killed", ETCD_HOSTS[leader]);
    f.add("acks_after_the_leader_died", during);
    f.add("takeover_ms_after_kill", (took - killed) / MS);
    f.print("etcd_cluster_leader_killed");
    drop(spare);
    drop(etcd);
    drop(lab);
    drop(t);
}

/// The spare can reach only one etcd member, and that member is cut off from the other two (a
/// minority). The primary dies: the spare must NOT take over — it cannot win the term — until
/// its path to the majority is back; then it does, with every acknowledged write.
#[test]
fn s11g_etcd_minority_spare_waits_for_the_majority() {
    let _serial = serial();
    let mut f = Figures::default();
    let p = ArbiterPair::start_with("m", true, "10", &ETCD_HOSTS, &[]);
    let dir = p.dir().to_path_buf();
    let c = p.c();
    p.past_grace();
    let (d, e) = (p.lab.ip("D"), p.lab.ip("E"));
    // F alone: cut from D and E; B reaches only F.
    iptables_in(&p.lab, "F", &cut_from(&[d.clone(), e.clone()]));
    iptables_in(&p.lab, "B", &cut_from(&[d, e]));
    // Time for D and E to elect a leader among themselves if F led.
    std::thread::sleep(Duration::from_millis(1000));
    let load = Load::start(
        &[("to-a", p.pa), ("to-b", p.pb)],
        c,
        Duration::from_millis(1),
    );
    assert!(
        wait_acks(&load, 50, Duration::from_secs(10)),
        "no load{}",
        logs(&dir)
    );
    let ArbiterPair {
        primary,
        spare,
        etcd,
        lab,
        t,
        pb,
        ..
    } = p;
    let killed = now_ns();
    drop(primary);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !dir.join("takeover_ns").exists(),
        "the spare took over through a minority etcd member (etcd: {}){}",
        term_record(&etcd, &lab),
        logs(&dir)
    );
    let tried = log(&dir, "spare.log").contains("not taking over: arbiter");
    assert!(
        tried,
        "the spare never tried to claim (so the minority was not tested){}",
        logs(&dir)
    );
    // The path to the majority is back.
    lab.exec("B", &["iptables", "-F"]).unwrap();
    let took = wait_takeover(&dir, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no takeover once the majority was reachable{}", logs(&dir)));
    wait_serving(pb, Some(lab.fd("C")), spare.pid(), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}{}", logs(&dir)));
    let n = load.tally.lock().unwrap().acks.len();
    wait_acks(&load, n + 20, Duration::from_secs(5));
    let tally = load.stop();
    let (lost_n, _, ex) = lost(pb, Some(lab.fd("C")), spare.pid(), &tally.acks);
    let w = windows(&tally.acks, killed);
    f.trials = 1;
    f.acked = tally.acks.len();
    f.lost = lost_n;
    f.windows = w;
    f.add("takeover_ms_after_kill", (took - killed) / MS);
    f.print("etcd_minority_spare");
    assert_eq!(lost_n, 0, "acknowledged writes lost: {ex:?}{}", logs(&dir));
    assert_eq!(w, 0, "double-serving windows{}", logs(&dir));
    lab.exec("F", &["iptables", "-F"]).unwrap();
    drop(spare);
    drop(etcd);
    drop(lab);
    drop(t);
}

/// Planned switchover (`hotspare switchover`) under load, in interval mode (where the final
/// checkpoint taken after the primary stopped is what carries its last acknowledged writes) and
/// in every-write mode: nothing acknowledged lost, never two primaries acknowledging, the old
/// primary gone, the term at etcd 2; the pause the clients saw (the longest gap between two
/// acknowledgements) reported.
#[test]
fn s11h_switchover_moves_the_primary_with_nothing_lost() {
    let _serial = serial();
    let mut f = Figures::default();
    let mut pauses = Vec::new();
    for (i, every_write) in [false, true].into_iter().enumerate() {
        let what = if every_write {
            "every-write"
        } else {
            "interval"
        };
        let mut p = ArbiterPair::start(&format!("w{i}"), every_write, "10");
        let dir = p.dir().to_path_buf();
        let c = p.c();
        p.past_grace();
        let (pre, _) = set_each(p.pa, c, "to-b", 64, Duration::from_secs(20));
        assert_eq!(pre.len(), 64, "{what}: prefill{}", logs(&dir));
        let load = Load::start(
            &[("to-a", p.pa), ("to-b", p.pb)],
            c,
            Duration::from_millis(1),
        );
        assert!(
            wait_acks(&load, 100, Duration::from_secs(10)),
            "{what}: no load{}",
            logs(&dir)
        );
        let asked = now_ns();
        let out = Command::new("ip")
            .args(["netns", "exec", &p.lab.ns("C")])
            .arg(util::lib("hotspare"))
            .args([
                "switchover",
                "--spare",
                &format!("{}:7070", p.lab.ip("B")),
                "--key-file",
            ])
            .arg(dir.join("key"))
            .arg("--wait")
            .output()
            .expect("run hotspare switchover");
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{what}: hotspare switchover failed: {said}{}{}",
            String::from_utf8_lossy(&out.stderr),
            logs(&dir)
        );
        let took = wait_takeover(&dir, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{what}: no takeover after the switchover{}", logs(&dir)));
        wait_serving(p.pb, c, p.spare.pid(), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{what}: {e}{}", logs(&dir)));
        let n = load.tally.lock().unwrap().acks.len();
        assert!(
            wait_acks(&load, n + 50, Duration::from_secs(10)),
            "{what}: the new primary acknowledges nothing{}",
            logs(&dir)
        );
        let code = p.primary.wait_exit(Duration::from_secs(5));
        let tally = load.stop();
        let (lost_n, _, ex) = lost(p.pb, c, p.spare.pid(), &tally.acks);
        let w = windows(&tally.acks, asked);
        // The pause: from the last acknowledgement by the old primary to the first by the new.
        let last_old = tally
            .acks
            .iter()
            .filter(|a| a.pid == p.primary.pid())
            .map(|a| a.got)
            .max()
            .unwrap_or(asked);
        let first = tally
            .acks
            .iter()
            .filter(|a| a.pid == p.spare.pid())
            .min_by_key(|a| a.got);
        let first_new = first.map_or(last_old, |a| a.got);
        // How long the new primary took to answer its first write (in every-write mode, its
        // first checkpoint made durable), the rest of the pause being before it was sent.
        let first_latency = first.map_or(0, |a| a.got.saturating_sub(a.sent));
        let pause = first_new.saturating_sub(last_old) as f64 / MS as f64;
        pauses.push(format!("{what} {pause:.0}"));
        let record = p.term_record();
        if std::env::var_os("HOTSPARE_LOG_TIME").is_some() {
            eprintln!(
                "--- {what}: asked at {}.{:03}{}",
                asked / 1_000_000_000,
                asked / 1_000_000 % 1000,
                logs(&dir)
            );
        }
        f.trials += 1;
        f.acked += tally.acks.len();
        f.lost += lost_n;
        f.windows += w;
        f.outage_ms = f.outage_ms.max(pause);
        f.add(
            &format!("{what}_takeover_ms_after_request"),
            (took - asked) / MS,
        );
        // The pause in two: until the takeover hook ran (the hand-over, the claim, the term
        // saved), and from there to the first reply (exec, resume, the client's retries).
        f.add(
            &format!("{what}_last_ack_to_hook_ms"),
            took.saturating_sub(last_old) / MS,
        );
        f.add(
            &format!("{what}_hook_to_first_ack_ms"),
            first_new.saturating_sub(took) / MS,
        );
        f.add(
            &format!("{what}_first_ack_latency_ms"),
            format!("{:.1}", first_latency as f64 / MS as f64),
        );
        assert_eq!(
            lost_n,
            0,
            "{what}: acknowledged writes lost: {ex:?}{}",
            logs(&dir)
        );
        assert_eq!(w, 0, "{what}: double-serving windows{}", logs(&dir));
        assert_eq!(
            code,
            Some(75),
            "{what}: the old primary did not exit{}",
            logs(&dir)
        );
        assert!(
            record.contains("\"term\":2"),
            "{what}: the term at etcd is {record}{}",
            logs(&dir)
        );
        assert!(
            log(&dir, "spare.log").contains("handed over at checkpoint"),
            "{what}: the takeover was not a hand-over{}",
            logs(&dir)
        );
    }
    f.add("pause_ms", pauses.join(", "));
    f.add("client_retry_ms", retry_wait().as_millis());
    f.print("switchover");
    if std::env::var_os("HOTSPARE_LOG_TIME").is_some() {
        eprintln!("(logs kept: HOTSPARE_LOG_TIME set)");
    }
}
