//! Red team of the fleet daemon (`hotspare-resume --fleet`, section 13): attacks on its
//! guarantees — no acknowledged write lost, never two primaries of one service acknowledging
//! at once, no service left without a primary while a host that can serve it is up, no fresh
//! start of a service that exists, an image directory used by one process at a time.
//!
//! Two hosts (A, B) in namespaces, etcd and the clients in C, one to a dozen services. Every
//! scenario's program is `hotspare-kv --cpt-every-write` behind `sh -c` with two switches per
//! service and host, files in the scenario's directory: `crash-<i>-<h>` makes the program exit
//! 3 at once, `hookfail-<i>-<h>` makes the takeover hook fail.

use super::fleet::{
    alive, fleet_entry, fleet_head, fleet_primary, kill_host, kv_port, program_pid, service_entry,
    start_fleet, wait_spare_of, Hosts,
};
use super::*;

/// One service: the host that starts it (`first`, or both with `both_first`) and the other.
#[derive(Clone, Copy)]
struct Svc {
    i: usize,
    first: &'static str,
    other: &'static str,
    both_first: bool,
}

/// Services `0..n` alternating between A and B as their first primary.
fn spread(n: usize) -> Vec<Svc> {
    (0..n)
        .map(|i| {
            let (first, other) = if i % 2 == 0 { ("A", "B") } else { ("B", "A") };
            Svc {
                i,
                first,
                other,
                both_first: false,
            }
        })
        .collect()
}

/// Host `h`'s fleet file for `svcs` (with the arbiter at `etcd`, or in two-machine mode).
fn fleet_toml(lab: &Lab, dir: &Path, h: &str, svcs: &[Svc], etcd: Option<&str>) -> PathBuf {
    let mut s = fleet_head(dir, h, etcd);
    for v in svcs {
        let other = if h == v.first { v.other } else { v.first };
        let i = v.i;
        let kv = format!(
            "{} {}",
            kv_bin().display(),
            kv_args(kv_port(i), true, "0.0.0.0").join(" ")
        );
        let exec = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!(
                "test -e {0}/crash-{i}-{h} && exit 3; exec {kv}",
                dir.display()
            ),
        ];
        let hook = format!(
            "test -e {0}/hookfail-{i}-{h} && exit 1; echo {h} >> {0}/hooks-{i}; date +%s%N > {0}/takeover-{i}.tmp && mv {0}/takeover-{i}.tmp {0}/takeover-{i}_ns",
            dir.display()
        );
        let first = h == v.first || v.both_first;
        s.push_str(&service_entry(lab, dir, h, i, first, other, &exec, &hook));
    }
    let path = dir.join(format!("fleet-{h}.toml"));
    std::fs::write(&path, s).unwrap();
    path
}

/// Sends `sig` to every process in host `h`'s namespace; how many.
fn signal_host(lab: &Lab, h: &str, sig: i32) -> usize {
    let out = Command::new("ip")
        .args(["netns", "pids", &lab.ns(h)])
        .output()
        .expect("ip netns pids");
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for p in pids.iter().filter(|p| **p != std::process::id() as i32) {
        // SAFETY: kill(2) of a process in a namespace this test made; none of ours is in it.
        unsafe { libc::kill(*p, sig) };
    }
    pids.len()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) of a program a fleet daemon of this test started.
    unsafe { libc::kill(pid, sig) };
}

fn kv_addr(lab: &Lab, h: &str, i: usize) -> SocketAddr {
    format!("{}:{}", lab.ip(h), kv_port(i)).parse().unwrap()
}

/// The program of service `i` that a fleet shows as primary now, other than `not`: (host, pid).
fn primary_now(dir: &Path, i: usize, not: &[i32]) -> Option<(&'static str, i32)> {
    fleet_primary(dir, &["A", "B"], i, not)
}

/// Waits (bounded) for a program of service `i` other than `not` that answers as the primary.
fn wait_new_primary(
    lab: &Lab,
    dir: &Path,
    i: usize,
    not: &[i32],
    within: Duration,
) -> Option<(&'static str, i32)> {
    let c = Some(lab.fd("C"));
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some((h, pid)) = primary_now(dir, i, not) {
            if wait_serving(kv_addr(lab, h, i), c, pid, Duration::from_secs(2)).is_ok() {
                return Some((h, pid));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Acknowledgements of service `i` (keys `s<i>-…`).
fn of_service(acks: &[Ack], i: usize) -> Vec<Ack> {
    let prefix = format!("s{i}-");
    acks.iter()
        .filter(|a| a.key.starts_with(&prefix))
        .cloned()
        .collect()
}

/// One writer per service and host address (the service is reached wherever it runs).
fn load_all(lab: &Lab, svcs: &[Svc]) -> (Vec<(String, SocketAddr)>, Load) {
    let names: Vec<(String, SocketAddr)> = svcs
        .iter()
        .flat_map(|v| ["A", "B"].map(|h| (format!("s{}-{h}", v.i), kv_addr(lab, h, v.i))))
        .collect();
    let targets: Vec<(&str, SocketAddr)> = names.iter().map(|(s, a)| (s.as_str(), *a)).collect();
    let load = Load::start(&targets, Some(lab.fd("C")), Duration::from_millis(5));
    (names, load)
}

fn acks_by(load: &Load, pid: i32) -> usize {
    load.acks().iter().filter(|a| a.pid == pid).count()
}

fn wait_acks_by(load: &Load, pid: i32, n: usize, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if acks_by(load, pid) >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A two-host lab with etcd in C (fields dropped in this order: etcd, then its directory, then
/// the namespaces).
struct Env {
    etcd: util::Etcd,
    t: tempfile::TempDir,
    lab: Lab,
}

fn lab_with_etcd(tag: &str, net: &str) -> Env {
    let lab = Lab::setup(tag, net).unwrap_or_else(|e| panic!("{e}"));
    let (t, _key) = workdir();
    let etcd = util::Etcd::start(
        &lab,
        "C",
        &lab.ip("C"),
        t.path(),
        &t.path().join("etcd.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Env { etcd, t, lab }
}

/// Starts both fleets and waits until every service serves from its first host with the other
/// host its spare; the programs' pids.
fn start_both(
    lab: &Lab,
    dir: &Path,
    svcs: &[Svc],
    etcd: Option<&str>,
) -> (Killed, Killed, Vec<i32>) {
    let fa = fleet_toml(lab, dir, "A", svcs, etcd);
    let fb = fleet_toml(lab, dir, "B", svcs, etcd);
    let da = start_fleet(lab, dir, "A", &fa);
    let db = start_fleet(lab, dir, "B", &fb);
    let c = Some(lab.fd("C"));
    let mut pids = Vec::new();
    for v in svcs {
        let pid = program_pid(dir, v.first, v.i, Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "svc{}: {}'s fleet did not start it{}",
                v.i,
                v.first,
                logs(dir)
            )
        });
        assert!(
            wait_spare_of(dir, v.other, v.i, Duration::from_secs(40)),
            "svc{}: {} never held its image{}",
            v.i,
            v.other,
            logs(dir)
        );
        let pid = program_pid(dir, v.first, v.i, Duration::from_secs(5)).unwrap_or(pid);
        wait_serving(kv_addr(lab, v.first, v.i), c, pid, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("svc{}: {e}{}", v.i, logs(dir)));
        pids.push(pid);
    }
    (da, db, pids)
}

// ---------------------------------------------------------------------------------------------
// The image a host resumed, once its program has had checkpoints acknowledged elsewhere.

/// A (first primary) is lost: B takes over, resuming its image at checkpoint N. A comes back
/// as B's program's spare and acknowledges its checkpoints (A's image: M > N). Then A stalls
/// (every process of it stopped for 4 s) and B's program crashes: B's daemon is the service's
/// spare again, *on the image its program resumed from* — checkpoint N, which lacks every
/// write acknowledged since. Resuming it would lose them (and, once the resumed program's
/// sequence passes M, overwrite A's image with it). The service must wait for A instead:
/// nothing acknowledged may be lost, whoever serves at the end.
#[test]
fn s13r_stale_image_of_a_crashed_takeover_is_not_resumed() {
    let _serial = serial();
    let env = lab_with_etcd("r1", "10.91.0");
    let (lab, etcd) = (&env.lab, &env.etcd);
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let c = Some(lab.fd("C"));
    let svcs = [Svc {
        i: 0,
        first: "A",
        other: "B",
        both_first: false,
    }];
    let (da, _db, pids) = start_both(lab, &dir, &svcs, Some(&etcd.endpoint));
    // Past B's start-up grace.
    std::thread::sleep(Duration::from_millis(1200));
    let (_names, load) = load_all(lab, &svcs);
    assert!(
        wait_acks_by(&load, pids[0], 50, Duration::from_secs(30)),
        "no load{}",
        logs(&dir)
    );
    kill_host(lab, "A");
    drop(da);
    let (_, pb) = wait_new_primary(lab, &dir, 0, &pids, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("B did not take over{}", logs(&dir)));
    let fa = dir.join("fleet-A.toml");
    let da = start_fleet(lab, &dir, "A", &fa);
    assert!(
        wait_spare_of(&dir, "A", 0, Duration::from_secs(30)),
        "A did not become the spare of B's program{}",
        logs(&dir)
    );
    assert!(
        wait_acks_by(&load, pb, 100, Duration::from_secs(30)),
        "B's program acknowledged nothing with A as its spare{}",
        logs(&dir)
    );
    let pb_acks = acks_by(&load, pb);
    // A stalls; B's program crashes meanwhile.
    signal_host(lab, "A", libc::SIGSTOP);
    let crashed = now_ns();
    signal(pb, libc::SIGKILL);
    std::thread::sleep(Duration::from_secs(4));
    let during = primary_now(&dir, 0, &[pb]);
    signal_host(lab, "A", libc::SIGCONT);
    let after_stall = load.acks().len();
    let now = wait_new_primary(lab, &dir, 0, &[pb], Duration::from_secs(30));
    let resumed = wait_acks(&load, after_stall + 50, Duration::from_secs(30));
    let tally = load.stop();
    let (h, pid) = now.unwrap_or_else(|| panic!("no primary after A's stall{}", logs(&dir)));
    let acks = of_service(&tally.acks, 0);
    let (l, _, ex) = lost(kv_addr(lab, h, 0), c, pid, &acks);
    let w = windows(&acks, crashed);
    assert!(
        l == 0 && w == 0,
        "{l} acknowledged writes lost {ex:?}, {w} double-serving windows; B's program had acknowledged {pb_acks} with A as its spare; while A was stopped the primary was {during:?}; now {h} pid {pid}{}{}",
        if resumed { "" } else { "; no acknowledgements since" },
        logs(&dir)
    );
    assert!(
        resumed,
        "the service acknowledges nothing after A's stall{}",
        logs(&dir)
    );
    drop(da);
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// First starts: the `born` marker.

/// Waits (bounded) until service `i` acknowledges a write on whichever host runs it.
fn wait_service_acks(lab: &Lab, dir: &Path, i: usize, within: Duration) -> Option<Ack> {
    let c = Some(lab.fd("C"));
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some((h, _)) = primary_now(dir, i, &[]) {
            let (acks, _) = set_each(
                kv_addr(lab, h, i),
                c,
                &format!("s{i}-x"),
                1,
                Duration::from_secs(3),
            );
            if let Some(a) = acks.into_iter().next() {
                return Some(a);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Waits (bounded) until the arbiter holds a record of service `i` naming `holder`.
fn wait_record(env: &Env, i: usize, holder: &str, within: Duration) -> Option<String> {
    let t = Instant::now();
    while t.elapsed() < within {
        let r = env
            .etcd
            .get(&env.lab, "C", &format!("/hotspare/svc{i}/term"))
            .unwrap_or_default();
        if r.contains(holder) {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn born_of(dir: &Path, h: &str, i: usize) -> Option<String> {
    std::fs::read_to_string(dir.join(format!("{h}/svc{i}/image/born"))).ok()
}

/// B's daemon is late, so A's first start registers at the arbiter and serves on its
/// renewals while it waits for its spare; then etcd stalls for 3 s (SIGSTOP), longer than the
/// 2 s lease-lapse rule, and the program exits 75 with no checkpoint ever acknowledged. The
/// service does not exist anywhere yet: its first start must be tried again once B is up. (A
/// daemon that took every exit 75 for "the service exists elsewhere" marks it born, becomes
/// its spare on an empty image, and nobody ever starts it.)
#[test]
fn s13r_first_start_lapsed_in_an_etcd_stall_is_started_again() {
    let _serial = serial();
    let env = lab_with_etcd("r2", "10.92.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let svcs = [Svc {
        i: 0,
        first: "A",
        other: "B",
        both_first: false,
    }];
    let fa = fleet_toml(lab, &dir, "A", &svcs, Some(&env.etcd.endpoint));
    let fb = fleet_toml(lab, &dir, "B", &svcs, Some(&env.etcd.endpoint));
    let da = start_fleet(lab, &dir, "A", &fa);
    let p1 = program_pid(&dir, "A", 0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("A did not start svc0{}", logs(&dir)));
    wait_record(&env, 0, &format!("A pid {p1}"), Duration::from_secs(20))
        .unwrap_or_else(|| panic!("pid {p1} did not register{}", logs(&dir)));
    std::thread::sleep(Duration::from_millis(500));
    signal_host(lab, "C", libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3));
    signal_host(lab, "C", libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    let p1_state = if alive(p1) { "still runs" } else { "ended" };
    let db = start_fleet(lab, &dir, "B", &fb);
    let served = wait_service_acks(lab, &dir, 0, Duration::from_secs(60));
    assert!(
        served.is_some(),
        "svc0 never started: its first start (pid {p1}, which {p1_state} after the stall) left A marked born ({:?}), A's fleet: {:?}, B's: {:?}{}",
        born_of(&dir, "A", 0),
        fleet_entry(&dir, "A", 0),
        fleet_entry(&dir, "B", 0),
        logs(&dir)
    );
    drop((da, db));
    drop(guard);
}

/// Host A is lost during the service's very first start: its program has registered at the
/// arbiter (waiting for B's daemon, late) and acknowledged nothing. A's daemon comes back with
/// no `born` marker and starts the service afresh: that new start must not be fenced for ever
/// by the dead first start's registration (the daemon that started it, and knew its pid, is
/// gone too), leaving A marked born and the service never started.
#[test]
fn s13r_host_lost_during_the_first_start_still_starts_the_service() {
    let _serial = serial();
    let env = lab_with_etcd("r3", "10.93.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let svcs = [Svc {
        i: 0,
        first: "A",
        other: "B",
        both_first: false,
    }];
    let fa = fleet_toml(lab, &dir, "A", &svcs, Some(&env.etcd.endpoint));
    let fb = fleet_toml(lab, &dir, "B", &svcs, Some(&env.etcd.endpoint));
    let da = start_fleet(lab, &dir, "A", &fa);
    let p1 = program_pid(&dir, "A", 0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("A did not start svc0{}", logs(&dir)));
    wait_record(&env, 0, &format!("A pid {p1}"), Duration::from_secs(20))
        .unwrap_or_else(|| panic!("pid {p1} did not register{}", logs(&dir)));
    // … and says so in its status file (what a daemon coming back can know of it).
    let status = dir.join("A/svc0/image/status");
    let t = Instant::now();
    while !std::fs::read_to_string(&status)
        .unwrap_or_default()
        .contains("\"registered\":true")
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "pid {p1}'s status never said registered{}",
            logs(&dir)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_host(lab, "A");
    drop(da);
    let da = start_fleet(lab, &dir, "A", &fa);
    let db = start_fleet(lab, &dir, "B", &fb);
    let served = wait_service_acks(lab, &dir, 0, Duration::from_secs(60));
    assert!(
        served.is_some(),
        "svc0 never started after A was lost during its first start: A marked born ({:?}), arbiter {:?}, A's fleet: {:?}, B's: {:?}{}",
        born_of(&dir, "A", 0),
        env.etcd.get(lab, "C", "/hotspare/svc0/term"),
        fleet_entry(&dir, "A", 0),
        fleet_entry(&dir, "B", 0),
        logs(&dir)
    );
    drop((da, db));
    drop(guard);
}

/// The crash before `born` was written, after the service existed: A runs the service, B
/// is its spare; A is lost, B takes over; A's directory is then left as a crash between the
/// first acknowledgement and the marker would leave it (no `born`, no status). A's daemon
/// comes back and starts the service afresh — that start must be fenced (the arbiter holds
/// B's term), A must end up B's spare, and nothing acknowledged may be lost or replaced by a
/// new lineage.
#[test]
fn s13r_born_marker_missing_host_comes_back_as_spare() {
    let _serial = serial();
    let env = lab_with_etcd("r4", "10.94.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let c = Some(lab.fd("C"));
    let svcs = [Svc {
        i: 0,
        first: "A",
        other: "B",
        both_first: false,
    }];
    let (da, _db, pids) = start_both(lab, &dir, &svcs, Some(&env.etcd.endpoint));
    std::thread::sleep(Duration::from_millis(1200));
    let (_names, load) = load_all(lab, &svcs);
    assert!(
        wait_acks_by(&load, pids[0], 50, Duration::from_secs(30)),
        "no load{}",
        logs(&dir)
    );
    kill_host(lab, "A");
    drop(da);
    let killed = now_ns();
    let (_, pb) = wait_new_primary(lab, &dir, 0, &pids, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("B did not take over{}", logs(&dir)));
    let img = dir.join("A/svc0/image");
    assert!(
        born_of(&dir, "A", 0).is_some(),
        "A was never marked born{}",
        logs(&dir)
    );
    let _ = std::fs::remove_file(img.join("born"));
    let _ = std::fs::remove_file(img.join("status"));
    let da = start_fleet(lab, &dir, "A", &dir.join("fleet-A.toml"));
    assert!(
        wait_spare_of(&dir, "A", 0, Duration::from_secs(60)),
        "A did not become the spare of B's program{}",
        logs(&dir)
    );
    let n = load.acks().len();
    assert!(
        wait_acks(&load, n + 50, Duration::from_secs(30)),
        "no acknowledgements{}",
        logs(&dir)
    );
    let tally = load.stop();
    let acks = of_service(&tally.acks, 0);
    let strangers: Vec<i32> = acks
        .iter()
        .map(|a| a.pid)
        .filter(|p| *p != pids[0] && *p != pb)
        .collect();
    let (l, _, ex) = lost(kv_addr(lab, "B", 0), c, pb, &acks);
    let w = windows(&acks, killed);
    assert!(
        l == 0 && w == 0 && strangers.is_empty(),
        "{l} lost {ex:?}, {w} windows, acknowledged by other processes: {strangers:?}{}",
        logs(&dir)
    );
    assert!(
        born_of(&dir, "A", 0).is_some(),
        "A's fenced fresh start was not marked born{}",
        logs(&dir)
    );
    drop(da);
    drop(guard);
}

/// Both hosts configured as the first primary of one service (a mistake the daemon cannot
/// see): both start it fresh at once; the arbiter lets one register, the other is fenced and
/// becomes its spare. Then the winner's host is lost: the other takes over with everything
/// acknowledged, and the lost host, back, is a spare (it never starts the service afresh).
#[test]
fn s13r_two_first_primaries_one_service() {
    let _serial = serial();
    let env = lab_with_etcd("r5", "10.95.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let c = Some(lab.fd("C"));
    let svcs = [Svc {
        i: 0,
        first: "A",
        other: "B",
        both_first: true,
    }];
    let fa = fleet_toml(lab, &dir, "A", &svcs, Some(&env.etcd.endpoint));
    let fb = fleet_toml(lab, &dir, "B", &svcs, Some(&env.etcd.endpoint));
    let da = start_fleet(lab, &dir, "A", &fa);
    let db = start_fleet(lab, &dir, "B", &fb);
    let mut daemons = HashMap::from([("A", da), ("B", db)]);
    let (h, p1) = {
        let t = Instant::now();
        loop {
            if let Some((h, pid)) = primary_now(&dir, 0, &[]) {
                let other = if h == "A" { "B" } else { "A" };
                if wait_spare_of(&dir, other, 0, Duration::from_millis(500))
                    && wait_serving(kv_addr(lab, h, 0), c, pid, Duration::from_secs(2)).is_ok()
                {
                    break (h, pid);
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no single primary with the other host its spare{}",
                logs(&dir)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let other = if h == "A" { "B" } else { "A" };
    std::thread::sleep(Duration::from_millis(1200));
    let (_names, load) = load_all(lab, &svcs);
    assert!(
        wait_acks_by(&load, p1, 100, Duration::from_secs(30)),
        "no load{}",
        logs(&dir)
    );
    kill_host(lab, h);
    let killed = now_ns();
    drop(daemons.remove(h));
    let (h2, p2) = wait_new_primary(lab, &dir, 0, &[p1], Duration::from_secs(20))
        .unwrap_or_else(|| panic!("{other} did not take over{}", logs(&dir)));
    assert_eq!(h2, other);
    let file = dir.join(format!("fleet-{h}.toml"));
    let h_static: &'static str = if h == "A" { "A" } else { "B" };
    daemons.insert(h_static, start_fleet(lab, &dir, h_static, &file));
    assert!(
        wait_spare_of(&dir, h, 0, Duration::from_secs(60)),
        "{h} did not come back as the spare{}",
        logs(&dir)
    );
    let n = load.acks().len();
    assert!(
        wait_acks(&load, n + 50, Duration::from_secs(30)),
        "no acknowledgements{}",
        logs(&dir)
    );
    let tally = load.stop();
    let acks = of_service(&tally.acks, 0);
    let strangers: Vec<i32> = acks
        .iter()
        .map(|a| a.pid)
        .filter(|p| *p != p1 && *p != p2)
        .collect();
    let (l, _, ex) = lost(kv_addr(lab, other, 0), c, p2, &acks);
    let w = windows(&acks, killed);
    assert!(
        l == 0 && w == 0 && strangers.is_empty(),
        "{l} lost {ex:?}, {w} windows, acknowledged by other processes: {strangers:?}{}",
        logs(&dir)
    );
    drop(daemons);
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// The daemon and its programs.

/// The end of several attacks: A's daemon comes back and must become the spare of svc0's
/// program on B (pid `pb`) by itself; B goes on acknowledging, and every write acknowledged
/// since the load began is on B, with no two processes acknowledging in overlapping time
/// after `since`.
fn a_back_then_check_b(lab: &Lab, dir: &Path, load: Load, pb: i32, since: u128) {
    let c = Some(lab.fd("C"));
    let _da = start_fleet(lab, dir, "A", &dir.join("fleet-A.toml"));
    assert!(
        wait_spare_of(dir, "A", 0, Duration::from_secs(30)),
        "A is not the spare{}",
        logs(dir)
    );
    let n = load.acks().len();
    assert!(
        wait_acks(&load, n + 50, Duration::from_secs(30)),
        "no acknowledgements{}",
        logs(dir)
    );
    let tally = load.stop();
    let acks = of_service(&tally.acks, 0);
    let (l, _, ex) = lost(kv_addr(lab, "B", 0), c, pb, &acks);
    let w = windows(&acks, since);
    assert!(
        l == 0 && w == 0,
        "{l} lost {ex:?}, {w} windows{}",
        logs(dir)
    );
}

fn hooks_of(dir: &Path, i: usize) -> String {
    std::fs::read_to_string(dir.join(format!("hooks-{i}"))).unwrap_or_default()
}

/// Two services, one first on each host. A is lost, B takes over A's; A comes back as the
/// spare of both. Then B's fleet daemon — only the daemon — is killed (`KillMode=process`)
/// and started again while both its programs (one taken over, one first started) run: the
/// programs go on serving, untouched (no second process on their image directories, no
/// takeover hook); then each is killed in turn and A takes it over, and B's new daemon, which
/// did not start them, becomes their spare by itself. Nothing acknowledged is lost.
#[test]
fn s13r_fleet_daemon_restarted_under_its_programs() {
    let _serial = serial();
    let env = lab_with_etcd("r6", "10.96.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let c = Some(lab.fd("C"));
    let svcs = spread(2);
    let (da, db, pids) = start_both(lab, &dir, &svcs, Some(&env.etcd.endpoint));
    std::thread::sleep(Duration::from_millis(1200));
    let (_names, load) = load_all(lab, &svcs);
    assert!(
        wait_acks_by(&load, pids[0], 50, Duration::from_secs(30)),
        "no load{}",
        logs(&dir)
    );
    kill_host(lab, "A");
    drop(da);
    let (_, pb0) = wait_new_primary(lab, &dir, 0, &pids, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("B did not take svc0 over{}", logs(&dir)));
    let pb1 = pids[1];
    let da = start_fleet(lab, &dir, "A", &dir.join("fleet-A.toml"));
    for i in 0..2 {
        assert!(
            wait_spare_of(&dir, "A", i, Duration::from_secs(30)),
            "A is not svc{i}'s spare{}",
            logs(&dir)
        );
    }
    assert!(
        wait_acks_by(&load, pb0, 50, Duration::from_secs(30)),
        "svc0 idle{}",
        logs(&dir)
    );
    // B's daemon only.
    drop(db);
    let hooks_before =
        hooks_of(&dir, 0).matches('B').count() + hooks_of(&dir, 1).matches('B').count();
    let db = start_fleet(lab, &dir, "B", &dir.join("fleet-B.toml"));
    let (a0, a1) = (acks_by(&load, pb0), acks_by(&load, pb1));
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        alive(pb0) && alive(pb1),
        "B's programs did not outlive their daemon{}",
        logs(&dir)
    );
    assert!(
        acks_by(&load, pb0) > a0 + 20 && acks_by(&load, pb1) > a1 + 20,
        "B's programs stopped acknowledging under the restarted daemon{}",
        logs(&dir)
    );
    let hooks_after =
        hooks_of(&dir, 0).matches('B').count() + hooks_of(&dir, 1).matches('B').count();
    assert_eq!(
        hooks_before,
        hooks_after,
        "the restarted daemon ran a takeover hook{}",
        logs(&dir)
    );
    for i in 0..2 {
        let e = fleet_entry(&dir, "B", i);
        assert!(
            e.as_ref()
                .is_some_and(|e| e["state"] != "primary" && e["state"] != "spare"),
            "svc{i}: B's restarted daemon claims to run it: {e:?}{}",
            logs(&dir)
        );
    }
    // Each orphaned program killed in turn: A takes it over, B's new daemon protects it.
    let mut now = Vec::new();
    for (i, p) in [(0, pb0), (1, pb1)] {
        signal(p, libc::SIGKILL);
        let (h, np) = wait_new_primary(lab, &dir, i, &[pids[0], p], Duration::from_secs(20))
            .unwrap_or_else(|| panic!("svc{i}: nobody took over from pid {p}{}", logs(&dir)));
        assert_eq!(h, "A", "svc{i}");
        assert!(
            wait_spare_of(&dir, "B", i, Duration::from_secs(30)),
            "svc{i}: B's restarted daemon did not become its spare{}",
            logs(&dir)
        );
        now.push(np);
    }
    let n = load.acks().len();
    assert!(
        wait_acks(&load, n + 50, Duration::from_secs(30)),
        "no acknowledgements{}",
        logs(&dir)
    );
    let tally = load.stop();
    for (i, np) in now.iter().enumerate() {
        assert!(
            alive(*np),
            "svc{i}: its new primary {np} is gone{}",
            logs(&dir)
        );
        let acks = of_service(&tally.acks, i);
        let (l, _, ex) = lost(kv_addr(lab, "A", i), c, *np, &acks);
        let w = windows(&acks, 0);
        assert!(
            l == 0 && w == 0,
            "svc{i}: {l} lost {ex:?}, {w} windows{}",
            logs(&dir)
        );
    }
    drop((da, db));
    drop(guard);
}

/// B's takeover hook fails (exit 1) when A is lost: B must not start the program (fail
/// closed), and keep trying; once the hook succeeds, B takes over with every acknowledged
/// write.
#[test]
fn s13r_takeover_hook_failing_then_succeeding() {
    let _serial = serial();
    let env = lab_with_etcd("r7", "10.97.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let svcs = [Svc {
        i: 0,
        first: "A",
        other: "B",
        both_first: false,
    }];
    let (da, _db, pids) = start_both(lab, &dir, &svcs, Some(&env.etcd.endpoint));
    std::thread::sleep(Duration::from_millis(1200));
    let (_names, load) = load_all(lab, &svcs);
    assert!(
        wait_acks_by(&load, pids[0], 50, Duration::from_secs(30)),
        "no load{}",
        logs(&dir)
    );
    std::fs::write(dir.join("hookfail-0-B"), "").unwrap();
    kill_host(lab, "A");
    drop(da);
    let killed = now_ns();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let e = fleet_entry(&dir, "B", 0);
        assert!(
            e.as_ref().is_none_or(|e| e["state"] != "primary"),
            "B started the program although its hook failed: {e:?}{}",
            logs(&dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let tries = log(&dir, "fleet-B.log")
        .matches("takeover hook failed")
        .count();
    assert!(
        tries >= 2,
        "B did not try again ({tries} hook failures){}",
        logs(&dir)
    );
    std::fs::remove_file(dir.join("hookfail-0-B")).unwrap();
    let (_, pb) = wait_new_primary(lab, &dir, 0, &pids, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("B did not take over once its hook succeeded{}", logs(&dir)));
    a_back_then_check_b(lab, &dir, load, pb, killed);
    drop(guard);
}

/// After B takes over, its program exits at once (exit 3), every time: B is then the spare
/// again, takes over again… The loop must go no faster than the start-up grace allows, the
/// image must come out of it intact, and once the program starts properly, B serves every
/// acknowledged write.
#[test]
fn s13r_taken_over_program_crashing_at_once_in_a_loop() {
    let _serial = serial();
    let env = lab_with_etcd("r8", "10.98.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let svcs = [Svc {
        i: 0,
        first: "A",
        other: "B",
        both_first: false,
    }];
    let (da, _db, pids) = start_both(lab, &dir, &svcs, Some(&env.etcd.endpoint));
    std::thread::sleep(Duration::from_millis(1200));
    let (_names, load) = load_all(lab, &svcs);
    assert!(
        wait_acks_by(&load, pids[0], 50, Duration::from_secs(30)),
        "no load{}",
        logs(&dir)
    );
    std::fs::write(dir.join("crash-0-B"), "").unwrap();
    kill_host(lab, "A");
    drop(da);
    let killed = now_ns();
    std::thread::sleep(Duration::from_secs(8));
    let takeovers = hooks_of(&dir, 0).matches('B').count();
    assert!(
        (2..=10).contains(&takeovers),
        "{takeovers} takeovers by B in 8 s of a program exiting at once{}",
        logs(&dir)
    );
    std::fs::remove_file(dir.join("crash-0-B")).unwrap();
    let (_, pb) =
        wait_new_primary(lab, &dir, 0, &pids, Duration::from_secs(20)).unwrap_or_else(|| {
            panic!(
                "B did not take over once the program could start{}",
                logs(&dir)
            )
        });
    a_back_then_check_b(lab, &dir, load, pb, killed);
    drop(guard);
}

/// A's program is stopped (SIGSTOP) for 3 s, longer than the 2 s lease-lapse rule: B takes
/// over; when A's program continues it must acknowledge nothing more (its lease ran out, and
/// its renewal is a compare-and-swap on a term key that has moved), exit, and A's daemon must
/// become the spare of B's program.
#[test]
fn s13r_primary_stopped_past_the_lapse_rule() {
    let _serial = serial();
    let env = lab_with_etcd("r9", "10.99.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let c = Some(lab.fd("C"));
    let svcs = [Svc {
        i: 0,
        first: "A",
        other: "B",
        both_first: false,
    }];
    let (_da, _db, pids) = start_both(lab, &dir, &svcs, Some(&env.etcd.endpoint));
    std::thread::sleep(Duration::from_millis(1200));
    let (_names, load) = load_all(lab, &svcs);
    assert!(
        wait_acks_by(&load, pids[0], 50, Duration::from_secs(30)),
        "no load{}",
        logs(&dir)
    );
    signal(pids[0], libc::SIGSTOP);
    let stopped = now_ns();
    let (_, pb) = wait_new_primary(lab, &dir, 0, &pids, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("B did not take over{}", logs(&dir)));
    assert!(
        std::fs::read_to_string(dir.join("takeover-0_ns"))
            .ok()
            .and_then(|s| s.trim().parse::<u128>().ok())
            .is_some(),
        "no takeover time stamp{}",
        logs(&dir)
    );
    let rest =
        Duration::from_secs(3).saturating_sub(Duration::from_nanos((now_ns() - stopped) as u64));
    std::thread::sleep(rest);
    signal(pids[0], libc::SIGCONT);
    let t = Instant::now();
    while alive(pids[0]) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "A's program still runs 10 s after it continued{}",
            logs(&dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        wait_spare_of(&dir, "A", 0, Duration::from_secs(30)),
        "A is not the spare{}",
        logs(&dir)
    );
    let n = load.acks().len();
    assert!(
        wait_acks(&load, n + 50, Duration::from_secs(30)),
        "no acknowledgements{}",
        logs(&dir)
    );
    let tally = load.stop();
    let acks = of_service(&tally.acks, 0);
    // A command sent after the SIGSTOP reaches the stopped program only after its SIGCONT,
    // past the takeover: any acknowledgement of one by it is a reply by an old primary after
    // the new one served (`windows` below does not see a reply a paused server sends late).
    let late = acks
        .iter()
        .filter(|a| a.pid == pids[0] && a.sent >= stopped)
        .count();
    let (l, _, ex) = lost(kv_addr(lab, "B", 0), c, pb, &acks);
    let w = windows(&acks, stopped);
    assert!(
        l == 0 && w == 0 && late == 0,
        "{l} lost {ex:?}, {w} windows, {late} acknowledged by the stopped primary for commands sent after its SIGSTOP{}",
        logs(&dir)
    );
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// etcd stalls while every primary relies on it.

/// GETs on `addr` until stopped (reconnecting as needed): every answer — a value or nil, not
/// an error such as TRYAGAIN — as an `Ack` with the answering pid and its times.
fn read_answers(addr: SocketAddr, ns: i32, key: String, stop: Arc<AtomicBool>) -> Vec<Ack> {
    let mut seen = Vec::new();
    if enter_netns(ns).is_err() {
        return seen;
    }
    let start = Instant::now();
    let mut conn: Option<(RespConn, i32)> = None;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < WRITER_LIMIT {
        if conn.is_none() {
            match RespConn::connect(addr, Duration::from_millis(300), Duration::from_secs(2))
                .and_then(|mut c| c.server_pid().map(|p| (c, p)))
            {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let (c, pid) = conn.as_mut().expect("connected above");
        let sent = now_ns();
        match c.cmd(&["GET", &key]) {
            Ok(Reply::Bulk(_)) => seen.push(Ack {
                key: key.clone(),
                val: 0,
                pid: *pid,
                sent,
                got: now_ns(),
            }),
            Ok(_) => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => {
                conn = None;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    seen
}

/// A dozen services ([`fleet_services`]), half first on each host. A and B are cut
/// from each other (both still reach etcd and the clients), so every primary serves on
/// arbiter renewals and every spare tries to claim; then etcd is stopped (SIGSTOP) for 1, 2, 3
/// and 1.5 s in turn. Primaries that lapse stop answering and, past 2 s, exit; spares win
/// claims once etcd is back. Whatever changes hands: no two processes of one service may
/// answer (reads, here: writes need a spare) in overlapping time after the cut, nothing
/// acknowledged before may be lost, and once the cut heals every service serves again.
#[test]
fn s13r_etcd_stalls_with_every_primary_on_the_arbiter() {
    let _serial = serial();
    let n = fleet_services(12);
    let env = lab_with_etcd("ra", "10.90.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let c = Some(lab.fd("C"));
    let svcs = spread(n);
    let (_da, _db, _pids) = start_both(lab, &dir, &svcs, Some(&env.etcd.endpoint));
    std::thread::sleep(Duration::from_millis(1200));
    let (_names, load) = load_all(lab, &svcs);
    assert!(
        wait_acks(&load, 20 * n, Duration::from_secs(30)),
        "no load{}",
        logs(&dir)
    );
    let (ib, ia) = (lab.ip("B"), lab.ip("A"));
    lab.exec("A", &["iptables", "-A", "INPUT", "-s", &ib, "-j", "DROP"])
        .unwrap();
    lab.exec("A", &["iptables", "-A", "OUTPUT", "-d", &ib, "-j", "DROP"])
        .unwrap();
    let cut = now_ns();
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<(usize, JoinHandle<Vec<Ack>>)> = svcs
        .iter()
        .flat_map(|v| ["A", "B"].map(|h| (v.i, h)))
        .map(|(i, h)| {
            let (addr, ns, stop) = (kv_addr(lab, h, i), lab.fd("C"), stop.clone());
            let key = format!("s{i}-A:1");
            (
                i,
                std::thread::spawn(move || read_answers(addr, ns, key, stop)),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for ms in [1000, 2000, 3000, 1500] {
        signal_host(lab, "C", libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(ms));
        signal_host(lab, "C", libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(2500));
    }
    lab.exec("A", &["iptables", "-F"]).unwrap();
    let _ = ia;
    let mut dead = Vec::new();
    for v in &svcs {
        if wait_service_acks(lab, &dir, v.i, Duration::from_secs(60)).is_none() {
            dead.push(v.i);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut reads: HashMap<usize, Vec<Ack>> = HashMap::new();
    for (i, r) in readers {
        reads.entry(i).or_default().extend(r.join().unwrap());
    }
    let tally = load.stop();
    let mut bad = Vec::new();
    for v in &svcs {
        let r = reads.remove(&v.i).unwrap_or_default();
        let wr = windows(&r, cut);
        let pids: std::collections::BTreeSet<i32> = r.iter().map(|a| a.pid).collect();
        let acks = of_service(&tally.acks, v.i);
        let ww = windows(&acks, 0);
        // Whoever serves it now (waited for: a service may be changing hands at this moment).
        let l = match wait_new_primary(lab, &dir, v.i, &[], Duration::from_secs(30)) {
            Some((h, pid)) => lost(kv_addr(lab, h, v.i), c, pid, &acks).0.to_string(),
            None => "? (no primary to read from)".into(),
        };
        if wr > 0 || ww > 0 || l != "0" {
            bad.push(format!(
                "svc{}: {wr} read windows (answered by {pids:?}), {ww} write windows, {l} lost",
                v.i
            ));
        }
    }
    assert!(
        bad.is_empty() && dead.is_empty(),
        "{bad:?}; never served again: {dead:?}{}",
        logs(&dir)
    );
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// Programs killed again and again.

/// Six times in a row, the program serving the service is killed (SIGKILL, the program only:
/// its daemon stays): the other host's daemon takes over, the killed program's daemon becomes
/// its spare — on a directory whose image the killed program had resumed, then retired at its
/// first acknowledgement. Every round must change hosts, nothing acknowledged may be lost,
/// and no two programs may acknowledge in overlapping time.
#[test]
fn s13r_taken_over_programs_killed_again_and_again() {
    let _serial = serial();
    let env = lab_with_etcd("rb", "10.89.0");
    let lab = &env.lab;
    let dir = env.t.path().to_path_buf();
    let guard = Hosts(lab, &dir);
    let c = Some(lab.fd("C"));
    let svcs = [Svc {
        i: 0,
        first: "A",
        other: "B",
        both_first: false,
    }];
    let (_da, _db, pids) = start_both(lab, &dir, &svcs, Some(&env.etcd.endpoint));
    std::thread::sleep(Duration::from_millis(1200));
    let (_names, load) = load_all(lab, &svcs);
    let (mut h, mut pid) = ("A", pids[0]);
    let mut gone = Vec::new();
    let first_kill = now_ns();
    for round in 0..6 {
        let other = if h == "A" { "B" } else { "A" };
        assert!(
            wait_spare_of(&dir, other, 0, Duration::from_secs(30)),
            "round {round}: {other} is not the spare of {h}'s pid {pid}{}",
            logs(&dir)
        );
        assert!(
            wait_acks_by(&load, pid, 30, Duration::from_secs(30)),
            "round {round}: pid {pid} on {h} acknowledges nothing{}",
            logs(&dir)
        );
        signal(pid, libc::SIGKILL);
        gone.push(pid);
        let (nh, np) = wait_new_primary(lab, &dir, 0, &gone, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("round {round}: nobody took over from {h}{}", logs(&dir)));
        assert_eq!(
            nh,
            other,
            "round {round}: taken over by the wrong host{}",
            logs(&dir)
        );
        (h, pid) = (nh, np);
    }
    assert!(
        wait_acks_by(&load, pid, 30, Duration::from_secs(30)),
        "the last primary acknowledges nothing{}",
        logs(&dir)
    );
    let tally = load.stop();
    let acks = of_service(&tally.acks, 0);
    let (l, _, ex) = lost(kv_addr(lab, h, 0), c, pid, &acks);
    let w = windows(&acks, first_kill);
    assert!(
        l == 0 && w == 0,
        "{l} lost {ex:?}, {w} windows{}",
        logs(&dir)
    );
    drop(guard);
}
