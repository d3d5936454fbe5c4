//! Section 13 of the fault suite, a fleet: one `hotspare-resume --fleet` daemon per host for
//! every service, services spread over three hosts (A, B, D) so that each host is the primary
//! of a third and the spare of another third, an arbiter (one etcd member in C, with the
//! clients). A whole host is lost under an every-write load on every service; afterwards its
//! daemon comes back and protects again whatever was taken over, by itself.

use super::*;

const HOSTS: [&str; 3] = ["A", "B", "D"];

/// Service `i`'s first primary host and its spare host (the next one round the three).
fn placement(i: usize) -> (&'static str, &'static str) {
    (HOSTS[i % 3], HOSTS[(i + 1) % 3])
}

pub(super) fn kv_port(i: usize) -> u16 {
    9100 + i as u16
}

pub(super) fn spare_port(i: usize) -> u16 {
    7100 + i as u16
}

/// Kills every process in host `h`'s namespace (a host lost: primaries, the fleet daemon, the
/// programs it started), by pid; how many.
pub(super) fn kill_host(lab: &Lab, h: &str) -> usize {
    let out = Command::new("ip")
        .args(["netns", "pids", &lab.ns(h)])
        .output()
        .expect("ip netns pids");
    let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for p in &pids {
        // SAFETY: kill(2) of a process in a namespace this test made; none of ours is in it.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    pids.len()
}

/// Kills what runs in every host when dropped (a failed assertion included); with
/// `HOTSPARE_KEEP_LOGS=DIR`, copies the scenario's logs there first (twenty services' lines
/// are more than a failure message can show).
pub(super) struct Hosts<'a>(pub(super) &'a Lab, pub(super) &'a Path);

impl Drop for Hosts<'_> {
    fn drop(&mut self) {
        for h in HOSTS.iter().chain(["C"].iter()) {
            kill_host(self.0, h);
        }
        if let Some(keep) = std::env::var_os("HOTSPARE_KEEP_LOGS") {
            let keep = PathBuf::from(keep);
            let _ = std::fs::create_dir_all(&keep);
            for e in std::fs::read_dir(self.1).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().ends_with(".log") {
                    let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                }
            }
        }
    }
}

/// The fleet file's head for host `h` (detection 10 × 10 ms, the status in `DIR/fleet-H.json`).
pub(super) fn fleet_head(dir: &Path, h: &str, etcd: Option<&str>) -> String {
    let mut s = format!(
        "node = \"{h}\"\nkey_file = \"{}\"\nmissed = 10\nstatus = \"{}\"\n",
        dir.join("key").display(),
        dir.join(format!("fleet-{h}.json")).display()
    );
    if let Some(e) = etcd {
        s.push_str(&format!("arbiter = \"{e}\"\n"));
    }
    s
}

/// Service `i`'s entry in host `h`'s fleet file: its image in `DIR/H/svcI/image`, its program
/// streaming to `other`'s daemon once it runs on `h`.
#[allow(clippy::too_many_arguments)]
pub(super) fn service_entry(
    lab: &Lab,
    dir: &Path,
    h: &str,
    i: usize,
    first_primary: bool,
    other: &str,
    exec: &[String],
    hook: &str,
) -> String {
    format!(
        "\n[[service]]\nname = \"svc{i}\"\nlisten = \"{}:{}\"\nimage_dir = \"{}\"\nfirst_primary = {first_primary}\nexec = {exec:?}\non_takeover = {hook:?}\nenv = {{ HOTSPARE_SPARE = \"{}:{}\" }}\n",
        lab.ip(h),
        spare_port(i),
        dir.join(format!("{h}/svc{i}/image")).display(),
        lab.ip(other),
        spare_port(i),
    )
}

/// Host `h`'s fleet file: every service it is the first primary or the spare of.
fn fleet_file(lab: &Lab, dir: &Path, h: &str, n: usize, etcd: &str) -> PathBuf {
    let mut s = fleet_head(dir, h, Some(etcd));
    for i in 0..n {
        let (p, sp) = placement(i);
        let other = match h {
            x if x == p => sp,
            x if x == sp => p,
            _ => continue,
        };
        let mut exec = vec![kv_bin().display().to_string()];
        exec.extend(kv_args(kv_port(i), true, "0.0.0.0"));
        let hook = format!(
            "date +%s%N > {0}/takeover-{i}.tmp && mv {0}/takeover-{i}.tmp {0}/takeover-{i}_ns",
            dir.display()
        );
        s.push_str(&service_entry(lab, dir, h, i, h == p, other, &exec, &hook));
    }
    let path = dir.join(format!("fleet-{h}.toml"));
    std::fs::write(&path, s).unwrap();
    path
}

pub(super) fn start_fleet(lab: &Lab, dir: &Path, h: &'static str, file: &Path) -> Killed {
    let log_name = format!("fleet-{h}.log");
    let mut c = Command::new(util::lib("hotspare-resume"));
    c.arg("--fleet")
        .arg(file)
        .env("HOTSPARE_HEAP_SIZE", "16M")
        .env("HOTSPARE_KEY_FILE", dir.join("key"))
        .env("HOTSPARE_LEASE_MS", "80")
        // Twenty services renewing at the arbiter while their spares are gone: a 120 ms
        // arbiter lease (renewed every 30 ms) instead of 40 ms (every 10), so that one etcd on
        // a shared 2-core machine keeps up; a takeover then waits W = 150 ms.
        .env("HOTSPARE_ARBITER_LEASE_MS", "120")
        .env("HOTSPARE_ARBITER_WAIT_MS", "150")
        .env_remove("HOTSPARE_SPARE")
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
    Killed(c.spawn().expect("start hotspare-resume --fleet"))
}

/// Service `i`'s entry in host `h`'s fleet status (`None` until it lists it).
pub(super) fn fleet_entry(dir: &Path, h: &str, i: usize) -> Option<serde_json::Value> {
    let t = std::fs::read_to_string(dir.join(format!("fleet-{h}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&t).ok()?;
    v["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == format!("svc{i}").as_str())
        .cloned()
}

/// The pid of service `i`'s program that host `h`'s fleet daemon runs (bounded wait).
pub(super) fn program_pid(dir: &Path, h: &str, i: usize, within: Duration) -> Option<i32> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(e) = fleet_entry(dir, h, i) {
            if e["state"] == "primary" {
                return e["pid"].as_i64().map(|p| p as i32);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Whether `pid` runs (a zombie, killed and not yet reaped, does not).
pub(super) fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
}

/// The host among `hosts` whose fleet daemon runs service `i` as its primary now, and the
/// program's pid (alive, not one of `not`).
pub(super) fn fleet_primary(
    dir: &Path,
    hosts: &[&'static str],
    i: usize,
    not: &[i32],
) -> Option<(&'static str, i32)> {
    for &h in hosts {
        if let Some(e) = fleet_entry(dir, h, i) {
            if e["state"] == "primary" {
                let pid = e["pid"].as_i64().unwrap_or(0) as i32;
                if pid > 0 && !not.contains(&pid) && alive(pid) {
                    return Some((h, pid));
                }
            }
        }
    }
    None
}

/// Waits (bounded) until host `h` holds service `i`'s image as the spare of a connected primary.
pub(super) fn wait_spare_of(dir: &Path, h: &str, i: usize, within: Duration) -> bool {
    let t = Instant::now();
    let status = dir.join(format!("{h}/svc{i}/image/status"));
    while t.elapsed() < within {
        let s = std::fs::read_to_string(&status).unwrap_or_default();
        if s.contains("\"role\":\"spare\"")
            && s.contains("\"primary_connected\":true")
            && !s.contains("\"seq\":0,")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Every service's writes on its primary now: (lost, double-serving windows) summed, and one
/// line per service that lost something.
fn check_all(
    lab: &Lab,
    n: usize,
    tally: &Tally,
    primary_of: &dyn Fn(usize) -> (&'static str, i32),
    after: u128,
) -> (usize, usize, Vec<String>) {
    let c = Some(lab.fd("C"));
    let (mut lost_n, mut win, mut bad) = (0, 0, Vec::new());
    for i in 0..n {
        let prefix = format!("s{i}-");
        let acks: Vec<Ack> = tally
            .acks
            .iter()
            .filter(|a| a.key.starts_with(&prefix))
            .cloned()
            .collect();
        let (h, pid) = primary_of(i);
        let addr: SocketAddr = format!("{}:{}", lab.ip(h), kv_port(i)).parse().unwrap();
        let (l, _, ex) = lost(addr, c, pid, &acks);
        let w = windows(&acks, after);
        if l > 0 || w > 0 {
            bad.push(format!("svc{i}: {l} lost {ex:?}, {w} windows"));
        }
        lost_n += l;
        win += w;
    }
    (lost_n, win, bad)
}

/// Twenty services (a short version in debug builds: [`fleet_services`]) on three hosts, each host's fleet
/// daemon the spare of a third of them. Host A is lost (every process in it killed) under an
/// every-write load on all: A's services are taken over by their spares' daemons (each
/// independently, each through the arbiter), the services whose spare A was go on serving, the
/// rest do not notice. Nothing acknowledged is lost, no service has two primaries acknowledging
/// in overlapping time. Then A's daemon comes back and is, by itself, the spare again of every
/// service it was part of, including those that now run elsewhere.
#[test]
fn s13_fleet_twenty_services_three_hosts_lose_one() {
    let _serial = serial();
    let n = fleet_services(20);
    let mut f = Figures::default();
    let mut lab = Lab::setup("g", "10.83.0").unwrap_or_else(|e| panic!("{e}"));
    lab.add_host("D").unwrap_or_else(|e| panic!("{e}"));
    let (t, _key) = workdir();
    let dir = t.path().to_path_buf();
    let c = Some(lab.fd("C"));
    let etcd = util::Etcd::start(&lab, "C", &lab.ip("C"), &dir, &dir.join("etcd.log"))
        .unwrap_or_else(|e| panic!("{e}"));
    let guard = Hosts(&lab, &dir);
    let addr = |h: &str, i: usize| -> SocketAddr {
        format!("{}:{}", lab.ip(h), kv_port(i)).parse().unwrap()
    };
    // One daemon per host; each starts the services it is the first primary of.
    let mut daemons: Vec<Killed> = HOSTS
        .iter()
        .map(|h| {
            let file = fleet_file(&lab, &dir, h, n, &etcd.endpoint);
            start_fleet(&lab, &dir, h, &file)
        })
        .collect();
    for i in 0..n {
        let (p, sp) = placement(i);
        let pid = program_pid(&dir, p, i, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("svc{i}: {p}'s fleet did not start it{}", logs(&dir)));
        assert!(
            wait_spare_of(&dir, sp, i, Duration::from_secs(30)),
            "svc{i}: {sp} never held its image{}",
            logs(&dir)
        );
        // A program that failed its first checkpoint (its spare not yet up) is started again:
        // the pid that serves is the one running now.
        let pid = program_pid(&dir, p, i, Duration::from_secs(5)).unwrap_or(pid);
        wait_serving(addr(p, i), c, pid, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("svc{i}: {e}{}", logs(&dir)));
    }
    // Past the spares' start-up grace.
    std::thread::sleep(Duration::from_millis(1200));
    let names: Vec<(String, SocketAddr)> = (0..n)
        .flat_map(|i| {
            let (p, sp) = placement(i);
            [
                (format!("s{i}-p"), addr(p, i)),
                (format!("s{i}-s"), addr(sp, i)),
            ]
        })
        .collect();
    let targets: Vec<(&str, SocketAddr)> = names.iter().map(|(s, a)| (s.as_str(), *a)).collect();
    let load = Load::start(&targets, c, Duration::from_millis(5));
    assert!(
        wait_acks(&load, 20 * n, Duration::from_secs(30)),
        "no load{}",
        logs(&dir)
    );
    for i in 0..n {
        let _ = std::fs::remove_file(dir.join(format!("takeover-{i}_ns")));
    }
    let started = Instant::now();
    let killed = now_ns();
    let gone = kill_host(&lab, "A");
    let lost_primaries: Vec<usize> = (0..n).filter(|i| placement(*i).0 == "A").collect();
    let mut times = Vec::new();
    for &i in &lost_primaries {
        let took = {
            let t = Instant::now();
            loop {
                if let Some(v) = std::fs::read_to_string(dir.join(format!("takeover-{i}_ns")))
                    .ok()
                    .and_then(|s| s.trim().parse::<u128>().ok())
                {
                    break v;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "svc{i}: no takeover after host A was lost{}",
                    logs(&dir)
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        times.push((took - killed) as f64 / MS as f64);
    }
    // The taken-over services serve from their spare's host; the pid is the daemon's child.
    let new_pid = |i: usize| -> i32 {
        let sp = placement(i).1;
        let t = Instant::now();
        loop {
            if let Some(e) = fleet_entry(&dir, sp, i) {
                if e["state"] == "primary" {
                    return e["pid"].as_i64().unwrap() as i32;
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "svc{i}: {sp}'s fleet does not show it as primary{}",
                logs(&dir)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for &i in &lost_primaries {
        new_pid(i);
        let record = etcd
            .get_retrying(
                &lab,
                "C",
                &format!("/hotspare/svc{i}/term"),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|e| format!("(etcdctl failed for 10 s: {e})"));
        let term = serde_json::from_str::<serde_json::Value>(&record)
            .ok()
            .and_then(|r| r["term"].as_u64())
            .unwrap_or(0);
        assert!(
            // Term 2 from the takeover; more if a starved primary lapsed and its own host's
            // spare took it back (counted below as moved again, safe).
            term >= 2
                // B's claim ("B#2"), or the resumed program's own registration ("B pid N").
                && record.contains(&format!("\"holder\":\"{}", placement(i).1)),
            "svc{i}: the arbiter holds {record}{}",
            logs(&dir)
        );
    }
    // Every-write replies need a spare (nothing is durable without one), so the services
    // taken over and those whose spare A was acknowledge nothing until A is back: its daemon
    // comes back and is, by itself, the spare again of every service it was part of.
    daemons[0] = start_fleet(&lab, &dir, "A", &dir.join("fleet-A.toml"));
    let back = Instant::now();
    for i in (0..n).filter(|i| placement(*i).0 == "A" || placement(*i).1 == "A") {
        // Its spare — or, once it was, its primary again (the one on the other host starved
        // past its leases: see below).
        let t = Instant::now();
        while !wait_spare_of(&dir, "A", i, Duration::from_millis(200))
            && fleet_primary(&dir, &["A"], i, &[]).is_none()
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "svc{i}: A did not become its spare again{}",
                logs(&dir)
            );
        }
    }
    // Where each service serves now, waited for (bounded). On a starved machine a primary can
    // miss its leases at the spare and at the arbiter at once and be taken over again, safely:
    // the checks follow every service to wherever it runs, and such moves are counted.
    let serving_now = |i: usize| -> (&'static str, i32) {
        let (p, sp) = placement(i);
        let t = Instant::now();
        loop {
            if let Some((h, pid)) = fleet_primary(&dir, &[p, sp], i, &[]) {
                if wait_serving(addr(h, i), c, pid, Duration::from_secs(2)).is_ok() {
                    return (h, pid);
                }
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "svc{i}: no program serves it once A is back{}",
                logs(&dir)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for &i in &lost_primaries {
        serving_now(i);
    }
    let after_loss = load.acks().len();
    assert!(
        wait_acks(&load, after_loss + 20 * n, Duration::from_secs(20)),
        "the fleet acknowledges little once A is back{}",
        logs(&dir)
    );
    let tally = load.stop();
    let at: Vec<(&'static str, i32)> = (0..n).map(serving_now).collect();
    let (lost_n, win, bad) = check_all(&lab, n, &tally, &|i| at[i], killed);
    f.trials = 1;
    f.acked = tally.acks.len();
    f.lost = lost_n;
    f.windows = win;
    assert!(
        bad.is_empty(),
        "after host A was lost: {bad:?}{}",
        logs(&dir)
    );
    let reprotect_s = back.elapsed().as_secs_f64();
    // Only A's services had to change hands, and once each. More (a primary of another host,
    // or a taken-over one, starved past both leases) is safe but not what a healthy machine
    // does: counted in the figures, and said.
    let collateral: Vec<usize> = (0..n)
        .filter(|&i| placement(i).0 != "A" && dir.join(format!("takeover-{i}_ns")).exists())
        .collect();
    let moved_again: Vec<usize> = (0..n)
        .filter(|&i| {
            at[i].0
                != if placement(i).0 == "A" {
                    placement(i).1
                } else {
                    placement(i).0
                }
        })
        .collect();
    if !collateral.is_empty() || !moved_again.is_empty() {
        eprintln!(
            "NOTE: more takeovers than host A's services (starved primaries; safe): taken over with their host alive {collateral:?}, not where the one takeover leaves them {moved_again:?}"
        );
    }
    // The operator's view of one host: `hotspare status --fleet` lists B's services, the ones
    // it took over as primaries (with their own status joined in), the others as spares.
    let out = Command::new(util::lib("hotspare"))
        .args(["status", "--fleet"])
        .arg(dir.join("fleet-B.json"))
        .output()
        .expect("run hotspare status --fleet");
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{table}");
    assert!(
        out.status.success(),
        "hotspare status --fleet failed: {table}"
    );
    for i in (0..n).filter(|i| placement(*i).0 == "B" || placement(*i).1 == "B") {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("svc{i} ")))
            .unwrap_or_else(|| panic!("svc{i} missing from the fleet status:\n{table}"));
        // A's services were taken over by B; B's own were started there; a service that runs
        // elsewhere now has B as its spare.
        let want = match (at[i].0, placement(i).0) {
            ("B", "A") => "primary (took over)",
            ("B", _) if collateral.contains(&i) => "primary (took over)",
            ("B", _) => "primary (first start)",
            _ => "spare",
        };
        assert!(row.contains(want), "svc{i}: {row}");
    }
    // The fleet across hosts in one view, from etcd (`hotspare status --etcd`, run in C): every
    // service with its term and holder, and a fresh line from each host that has it: exactly one
    // host as primary, the one serving it.
    let view = |what: &str| {
        let mut cmd = Command::new(util::lib("hotspare"));
        cmd.args(["status", "--etcd", &etcd.endpoint]);
        lab.place("C", &mut cmd);
        let out = cmd.output().expect("run hotspare status --etcd");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{what}:\n{text}");
        text
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let all_fresh = loop {
        let text = view("fleet view from etcd");
        let block = |i: usize| -> Vec<&str> {
            text.lines()
                .skip_while(|l| !l.starts_with(&format!("svc{i} ")))
                .skip(1)
                .take_while(|l| l.starts_with(' '))
                .collect()
        };
        let host_row = |r: &str, host: &str, role: &str| {
            let f: Vec<&str> = r.split_whitespace().collect();
            f.first() == Some(&host) && f.get(1) == Some(&role) && !r.contains("stale")
        };
        let wrong: Vec<usize> = (0..n)
            .filter(|&i| {
                let rows = block(i);
                let primary = rows.iter().any(|r| host_row(r, at[i].0, "primary"));
                let primaries = ["A", "B", "D"]
                    .iter()
                    .filter(|h| rows.iter().any(|r| host_row(r, h, "primary")))
                    .count();
                !primary || primaries != 1
            })
            .collect();
        if wrong.is_empty() {
            break Ok(());
        }
        if std::time::Instant::now() > deadline {
            let hosts: Vec<&str> = wrong.iter().map(|&i| at[i].0).collect();
            break Err(format!("services {wrong:?} (serving on {hosts:?})\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if let Err(text) = all_fresh {
        panic!("the etcd fleet view does not show every service at its primary, and only there:\n{text}{}", logs(&dir));
    }
    // A planned switchover by service name, from the host that runs it: a service first on B
    // (spare D) moves to D; B's program exits and B becomes its spare.
    let sw = (0..n)
        .find(|&i| placement(i).0 == "B" && at[i].0 == "B")
        .unwrap_or_else(|| panic!("no service runs on its first host B{}", logs(&dir)));
    let old = at[sw].1;
    let _ = std::fs::remove_file(dir.join(format!("takeover-{sw}_ns")));
    lab.exec(
        "B",
        &[
            &util::lib("hotspare").display().to_string(),
            "switchover",
            &format!("svc{sw}"),
            "--fleet",
            &dir.join("fleet-B.toml").display().to_string(),
            "--wait",
        ],
    )
    .unwrap_or_else(|e| panic!("switchover svc{sw}: {e}{}", logs(&dir)));
    let moved_pid = program_pid(&dir, "D", sw, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("svc{sw} did not move to D{}", logs(&dir)));
    wait_serving(addr("D", sw), c, moved_pid, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("svc{sw} on D: {e}{}", logs(&dir)));
    assert!(
        wait_spare_of(&dir, "B", sw, Duration::from_secs(30)),
        "B is not svc{sw}'s spare after the switchover{}",
        logs(&dir)
    );
    assert!(
        std::fs::metadata(format!("/proc/{old}")).is_err(),
        "B's old program (pid {old}) still runs after the switchover"
    );
    times.sort_by(f64::total_cmp);
    f.add("services", n);
    f.add("processes_killed_with_host", gone);
    f.add("taken_over", lost_primaries.len());
    f.add(
        "failover_ms_median",
        format!("{:.0}", times[times.len() / 2]),
    );
    f.add("failover_ms_max", format!("{:.0}", times[times.len() - 1]));
    f.add("reprotected_all_within_s", format!("{reprotect_s:.1}"));
    f.add("collateral_takeovers", collateral.len());
    f.add("moved_again", moved_again.len());
    f.add("seconds", started.elapsed().as_secs());
    f.print("fleet_lose_one_host");
    drop(daemons);
    drop(guard);
    drop(etcd);
    drop(lab);
    drop(t);
}
