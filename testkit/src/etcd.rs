//! A real etcd member (Debian's `etcd-server`) inside a test host.

use crate::disk::Tmpfs;
use crate::netns::Lab;
use crate::process::Killed;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A one-member etcd (Debian's `etcd-server`, 3.4) inside host `h` of a [`Lab`], its data on a
/// tmpfs of its own (an `fsync` on a shared, noisy disk must not decide the test's timing):
/// killed by pid and unmounted when dropped.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Killed>,
    data: Option<Tmpfs>,
    /// Its client URL.
    pub endpoint: String,
    /// How it was started, for [`Etcd::restart`]: its host, name, address, cluster and log.
    how: (String, String, String, String, PathBuf),
}

impl Etcd {
    /// Starts it listening on `ip:2379` in host `h`; waits (bounded) until it answers.
    pub fn start(lab: &Lab, h: &str, ip: &str, dir: &Path, log: &Path) -> Result<Etcd, String> {
        let e = Etcd::member(
            lab,
            h,
            "arbiter",
            ip,
            &format!("arbiter=http://{ip}:2380"),
            dir,
            log,
        )?;
        e.wait_healthy(lab, h, Duration::from_secs(15))?;
        Ok(e)
    }

    /// Starts members of one cluster, one per host of `hosts` (named after them), with fast
    /// elections (10 ms heartbeats, 100 ms election timeout: a test must not wait a second for
    /// a new leader) and pre-vote; waits (bounded) until every one answers.
    pub fn cluster(lab: &Lab, hosts: &[&str], dir: &Path) -> Result<Vec<Etcd>, String> {
        let initial: Vec<String> = hosts
            .iter()
            .map(|h| format!("m{h}=http://{}:2380", lab.ip(h)))
            .collect();
        let initial = initial.join(",");
        let mut v = Vec::new();
        for h in hosts {
            let log = dir.join(format!("etcd-{h}.log"));
            v.push(Etcd::member(
                lab,
                h,
                &format!("m{h}"),
                &lab.ip(h),
                &initial,
                dir,
                &log,
            )?);
        }
        for (h, e) in hosts.iter().zip(&v) {
            e.wait_healthy(lab, h, Duration::from_secs(20))?;
        }
        Ok(v)
    }

    fn member(
        lab: &Lab,
        h: &str,
        name: &str,
        ip: &str,
        initial_cluster: &str,
        dir: &Path,
        log: &Path,
    ) -> Result<Etcd, String> {
        let etcd = Command::new("etcd").arg("--version").output();
        if !etcd.is_ok_and(|o| o.status.success()) {
            return Err(
                "ETCD UNAVAILABLE: install etcd-server (Debian's, 3.4; .ci/run does)".into(),
            );
        }
        let data = Tmpfs::mount(&dir.join(format!("etcd-data-{name}")), "128m")?;
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Etcd::spawn(lab, h, name, ip, initial_cluster, &data.0, log_file)?;
        Ok(Etcd {
            child: Some(child),
            data: Some(data),
            endpoint: format!("http://{ip}:2379"),
            how: (
                h.into(),
                name.into(),
                ip.into(),
                initial_cluster.into(),
                log.to_path_buf(),
            ),
        })
    }

    /// The etcd process of a member whose data directory is under `data`.
    fn spawn(
        lab: &Lab,
        h: &str,
        name: &str,
        ip: &str,
        initial_cluster: &str,
        data: &Path,
        log: std::fs::File,
    ) -> Result<Killed, String> {
        let endpoint = format!("http://{ip}:2379");
        let peer = format!("http://{ip}:2380");
        let mut c = Command::new("etcd");
        c.args(["--name", name, "--data-dir"])
            .arg(data.join("member"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            // As docs/operations.md asks (etcd 3.5's default): without it a member cut off from
            // the leader keeps raising its term, and forces an election when the cut heals.
            .arg("--pre-vote")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        lab.place(h, &mut c);
        Ok(Killed(
            c.spawn().map_err(|e| format!("starting etcd: {e}"))?,
        ))
    }

    /// Starts a member killed by [`Etcd::kill`] again, on the data it kept (it rejoins its
    /// cluster: etcd ignores the initial-cluster flags when its data directory exists); waits
    /// (bounded) until it answers. Its log goes on in the same file.
    pub fn restart(&mut self, lab: &Lab) -> Result<(), String> {
        assert!(self.child.is_none(), "etcd member restarted while running");
        let (h, name, ip, initial, log) = self.how.clone();
        let data = self
            .data
            .as_ref()
            .expect("the data outlive the process")
            .0
            .clone();
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        self.child = Some(Etcd::spawn(lab, &h, &name, &ip, &initial, &data, log_file)?);
        self.wait_healthy(lab, &h, Duration::from_secs(20))
    }

    /// Waits (bounded) until `etcdctl endpoint health` passes for this member, run in host `h`.
    pub fn wait_healthy(&self, lab: &Lab, h: &str, within: Duration) -> Result<(), String> {
        let e = self;
        let t = std::time::Instant::now();
        loop {
            let ok = Command::new("ip")
                .args(["netns", "exec", &lab.ns(h), "etcdctl", "--endpoints"])
                .arg(&e.endpoint)
                .args(["endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return Ok(());
            }
            if t.elapsed() > within {
                return Err(format!(
                    "etcd at {} did not become healthy within {} s",
                    e.endpoint,
                    within.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether this member is its cluster's leader (`etcdctl endpoint status`, run in `h`).
    pub fn is_leader(&self, lab: &Lab, h: &str) -> bool {
        let o = Command::new("ip")
            .args(["netns", "exec", &lab.ns(h), "etcdctl", "--endpoints"])
            .arg(&self.endpoint)
            .args(["endpoint", "status", "-w", "fields"])
            .env("ETCDCTL_API", "3")
            .output();
        let Ok(o) = o else { return false };
        let text = String::from_utf8_lossy(&o.stdout);
        let field = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("\"{name}\"")))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        };
        field("MemberID").is_some() && field("MemberID") == field("Leader")
    }

    /// Kills the member (by pid), keeping its data.
    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// `etcdctl get KEY --print-value-only`, run in host `h`.
    pub fn get(&self, lab: &Lab, h: &str, key: &str) -> Result<String, String> {
        let o = Command::new("ip")
            .args(["netns", "exec", &lab.ns(h), "etcdctl", "--endpoints"])
            .arg(&self.endpoint)
            .args(["get", key, "--print-value-only"])
            .env("ETCDCTL_API", "3")
            .output()
            .map_err(|e| format!("etcdctl: {e}"))?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// [`Etcd::get`], retried for up to `within` while `etcdctl` fails (an etcd starved by the
    /// load of a fault scenario times a read out now and then; that is not the scenario's
    /// finding). The last error if none succeeded.
    pub fn get_retrying(
        &self,
        lab: &Lab,
        h: &str,
        key: &str,
        within: std::time::Duration,
    ) -> Result<String, String> {
        let t = std::time::Instant::now();
        loop {
            match self.get(lab, h, key) {
                Err(_) if t.elapsed() < within => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                r => return r,
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // The process first (by pid), then its tmpfs.
        drop(self.child.take());
        drop(self.data.take());
    }
}
