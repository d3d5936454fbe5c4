//! The fleet file (`hotspare-resume --fleet host.toml`): every service of a host. Read by the
//! fleet daemon, and by `hotspare switchover --fleet` and `hotspare status` to find a service.
//!
//! ```toml
//! node = "hostb"                        # this host at the arbiter (default: the host name)
//! arbiter = "10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"   # etcd; without it, two-machine mode
//! arbiter_ca = "/etc/hotspare/etcd-ca.pem"     # TLS to etcd (optional; then https://)
//! arbiter_cert = "/etc/hotspare/etcd-client.pem"  # etcd's --client-cert-auth (optional,
//! arbiter_key = "/etc/hotspare/etcd-client.key"   # both or neither)
//! key_file = "/etc/hotspare/key"        # defaults for every service (each may override them)
//! heartbeat_ms = 10
//! missed = 5
//! status = "/run/hotspare/fleet.json"   # the fleet's state, for `hotspare status --fleet`
//!
//! [[service]]
//! name = "kv1"                          # the arbiter's service name
//! listen = "0.0.0.0:7101"               # where its primary streams to
//! image_dir = "/var/lib/hotspare/kv1/spare"
//! first_primary = true                 # on ONE host: the service starts here (while no image)
//! exec = ["/usr/local/bin/hotspare-kv", "--port", "6101"]
//! env = { HOTSPARE_SPARE = "hostc:7101" }             # its spare once it runs here
//! on_takeover = "ip addr add 10.0.0.101/24 dev eth0"
//! ```

use super::fleet::FleetService;
use super::SpareConfig;
use crate::replica::wire;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    node: Option<String>,
    arbiter: Option<String>,
    arbiter_timeout_ms: Option<u64>,
    arbiter_ca: Option<PathBuf>,
    arbiter_cert: Option<PathBuf>,
    arbiter_key: Option<PathBuf>,
    key_file: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    missed: Option<u32>,
    startup_grace_ms: Option<u64>,
    hook_timeout_ms: Option<u64>,
    status: Option<PathBuf>,
    #[serde(default)]
    service: Vec<ServiceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    name: String,
    listen: String,
    image_dir: PathBuf,
    #[serde(default)]
    first_primary: bool,
    exec: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    on_takeover: Option<String>,
    key_file: Option<PathBuf>,
    heartbeat_ms: Option<u64>,
    missed: Option<u32>,
    startup_grace_ms: Option<u64>,
    #[serde(default)]
    accept_new_lineage: bool,
}

/// A fleet file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetFileError {
    /// It cannot be read.
    #[error("{0}")]
    Read(#[from] std::io::Error),
    /// It is not valid TOML, or has unknown keys.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// It lists no service.
    #[error("no [[service]] listed")]
    Empty,
    /// One service's entry is wrong.
    #[error("service {service}: {why}")]
    Service {
        /// The service.
        service: String,
        /// What is wrong.
        why: String,
    },
}

/// What a fleet file says: its services, and where the fleet's status is written.
#[derive(Debug)]
pub struct Fleet {
    /// The services, in the file's order.
    pub services: Vec<FleetService>,
    /// The fleet status file, if one is configured.
    pub status: Option<PathBuf>,
}

/// Reads and checks the file.
pub fn load(path: &Path) -> Result<Fleet, FleetFileError> {
    let text = std::fs::read_to_string(path)?;
    let f: FleetFile = toml::from_str(&text)?;
    if f.service.is_empty() {
        return Err(FleetFileError::Empty);
    }
    let (mut names, mut listens, mut dirs) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut out = Vec::new();
    for s in f.service {
        let bad = |why: String| FleetFileError::Service {
            service: s.name.clone(),
            why,
        };
        if !names.insert(s.name.clone()) {
            return Err(bad("listed twice".into()));
        }
        if !listens.insert(s.listen.clone()) {
            return Err(bad(format!("listen {} is another service's too", s.listen)));
        }
        if !dirs.insert(s.image_dir.clone()) {
            return Err(bad(format!(
                "image_dir {} is another's too",
                s.image_dir.display()
            )));
        }
        if s.exec.is_empty() {
            return Err(bad("exec is empty".into()));
        }
        let key_file = s
            .key_file
            .clone()
            .or(f.key_file.clone())
            .ok_or_else(|| bad("no key_file (for it or for the fleet)".into()))?;
        let missed = s.missed.or(f.missed).unwrap_or(5);
        if missed == 0 {
            return Err(bad("missed must be at least 1".into()));
        }
        let arbiter = crate::Config {
            arbiter: f.arbiter.clone(),
            service: Some(s.name.clone()),
            node: f.node.clone(),
            arbiter_timeout_ms: f.arbiter_timeout_ms.unwrap_or(200),
            arbiter_ca: f.arbiter_ca.clone(),
            arbiter_cert: f.arbiter_cert.clone(),
            arbiter_key: f.arbiter_key.clone(),
            ..crate::Config::default()
        }
        .arbiter()
        .map_err(|e| bad(e.to_string()))?;
        let spare = SpareConfig {
            listen: s.listen,
            image_dir: s.image_dir,
            key: wire::load_key(&key_file).map_err(|e| bad(e.to_string()))?,
            heartbeat: Duration::from_millis(
                s.heartbeat_ms.or(f.heartbeat_ms).unwrap_or(10).max(1),
            ),
            missed,
            startup_grace: Duration::from_millis(
                s.startup_grace_ms.or(f.startup_grace_ms).unwrap_or(1000),
            ),
            accept_new_lineage: s.accept_new_lineage,
            on_takeover: s.on_takeover,
            hook_timeout: Duration::from_millis(f.hook_timeout_ms.unwrap_or(10_000)),
            exec: s.exec,
            program_env: s.env.into_iter().collect(),
            arbiter,
        };
        out.push(FleetService {
            name: s.name,
            spare,
            first_primary: s.first_primary,
        });
    }
    Ok(Fleet {
        services: out,
        status: f.status,
    })
}
