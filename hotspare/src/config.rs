//! Configuration: defaults, overridden by a TOML file (`HOTSPARE_CONFIG` or
//! [`Config::from_toml_file`]), overridden by environment variables, overridden by code.
//!
//! | key (TOML) | environment | default |
//! |---|---|---|
//! | `image_dir` | `HOTSPARE_IMAGE_DIR` | `hotspare-image` |
//! | `heap_base` | `HOTSPARE_HEAP_BASE` (hex `0x…` or decimal) | `0x600000000000` |
//! | `heap_size` | `HOTSPARE_HEAP_SIZE` (`K`/`M`/`G` suffixes) | `1G` (address space reserved, and ~2 MiB of page tables per GiB for its write-protect markers; the checkpoint's stop follows what is allocated, not this) |
//! | `backend` | `HOTSPARE_BACKEND` | `auto` (see kmod-shim) |
//! | `strategy` | `HOTSPARE_STRATEGY` | `auto` (`copy`, `fork`) |
//! | `term` | `HOTSPARE_TERM` | `1` (a spare that takes over sets it) |
//! | `spare` | `HOTSPARE_SPARE` | none: checkpoints go to `image_dir` |
//! | `key_file` | `HOTSPARE_KEY_FILE` | none (required with `spare`) |
//! | `heartbeat_ms` | `HOTSPARE_HEARTBEAT_MS` | `10` |
//! | `lease_ms` | `HOTSPARE_LEASE_MS` | `40` (below the spare's default 5 × 10 ms detection) |
//! | `on_fence` | `HOTSPARE_ON_FENCE` | `auto`: `exit` with an arbiter, else `report` (`exit`: the process ends when fenced, or when it holds no lease — at once without an arbiter, after 2 s with one, since the arbiter may renew it after an etcd stall) |
//! | `arbiter` | `HOTSPARE_ARBITER` | none: two-machine mode, not partition-safe for availability (etcd endpoints, comma-separated: `10.0.0.1:2379,10.0.0.2:2379`) |
//! | `service` | `HOTSPARE_SERVICE` | none (required with `arbiter`: the keys are `/hotspare/<service>/…`) |
//! | `node` | `HOTSPARE_NODE` | the host name (this machine's name at the arbiter) |
//! | `arbiter_lease_ms` | `HOTSPARE_ARBITER_LEASE_MS` | `40` (capped below the spare's wait `W`) |
//! | `arbiter_wait_ms` | `HOTSPARE_ARBITER_WAIT_MS` | `45` (`W`, written into the term key the first primary creates) |
//! | `arbiter_timeout_ms` | `HOTSPARE_ARBITER_TIMEOUT_MS` | `200` (an etcd request not answered by then fails) |
//! | `arbiter_ca` | `HOTSPARE_ARBITER_CA` | none: plain http. A PEM file of the CA that signed etcd's server certificate: TLS to etcd (a bare `host:port` endpoint gets `https://`; an `https://` endpoint needs it) |
//! | `arbiter_cert` | `HOTSPARE_ARBITER_CERT` | none. A PEM client certificate for etcd's `--client-cert-auth` (needs `arbiter_key` and `arbiter_ca`) |
//! | `arbiter_key` | `HOTSPARE_ARBITER_KEY` | none. The PEM private key of `arbiter_cert` (the files are read once, at start: a missing one is a configuration error) |
//! | `ack_timeout_ms` | `HOTSPARE_ACK_TIMEOUT_MS` | `5000` (a checkpoint not acknowledged by then fails, or not sent on: no chunk taken for that long) |
//! | `spare_wait_ms` | `HOTSPARE_SPARE_WAIT_MS` | `1000` (at start, how long to wait for the spare before the first checkpoint; a fleet daemon starting a service raises it) |
//! | `pipeline_depth` | `HOTSPARE_PIPELINE_DEPTH` | `0`: automatic — 2 with a spare, 1 without (checkpoints in flight at once, up to 64; see `docs/library.md`) |
//! | `fixed_addresses` | `HOTSPARE_FIXED_ADDRESSES` | `auto`: with [`crate::GlobalHeap`] as the global allocator, re-execute once with address-space randomisation off so code and static data keep their addresses across a resume (`on`: always; `off`: never — arrange it yourself, resume still checks) |
//! | `durability` | `HOTSPARE_DURABILITY` | `fsynced`: the spare acknowledges after its `fsync`; `received`: as soon as it holds the stream validated (survives either machine dying, not both; `docs/replication.md`). Without `spare` the level is `local` |
//!
//! Resume is chosen by `HOTSPARE_RESUME=<image dir>` (see [`crate::HotSpare`]).

use crate::error::{Error, Result};
use kmod_shim::BackendChoice;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// How `cpt()` captures dirty pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Copy the dirty pages into a staging buffer while the caller waits, then hand them off.
    Copy,
    /// `cptfork`: the caller waits for QUERY + fork; a child writes the pages.
    Fork,
    /// Pick the cheaper of the two from the dirty volume (known before deciding).
    #[default]
    Auto,
}

impl std::str::FromStr for Strategy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Strategy> {
        match s {
            "copy" => Ok(Strategy::Copy),
            "fork" => Ok(Strategy::Fork),
            "auto" => Ok(Strategy::Auto),
            _ => Err(Error::Config(format!(
                "unknown strategy '{s}' (copy, fork, auto)"
            ))),
        }
    }
}

/// Whether the library turns address-space randomisation off for this program (so that
/// function pointers, vtables and `&'static str` in the state stay valid after a resume).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FixedAddresses {
    /// When [`crate::GlobalHeap`] is the global allocator.
    #[default]
    Auto,
    /// Always.
    On,
    /// Never: the library does not re-execute; with `GlobalHeap` resume still refuses code at
    /// other addresses (run it under `setarch -R`, or build a non-PIE static executable).
    Off,
}

impl std::str::FromStr for FixedAddresses {
    type Err = Error;
    fn from_str(s: &str) -> Result<FixedAddresses> {
        match s {
            "auto" => Ok(FixedAddresses::Auto),
            "on" => Ok(FixedAddresses::On),
            "off" => Ok(FixedAddresses::Off),
            _ => Err(Error::Config(format!(
                "unknown fixed_addresses '{s}' (auto, on, off)"
            ))),
        }
    }
}

/// What a primary does when fenced or when it holds no lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFence {
    /// `exit` with an arbiter, `report` without one ([`Config::exit_on_fence`]). Written as
    /// `""` or `"auto"`.
    #[default]
    #[serde(alias = "")]
    Auto,
    /// Say so (log, status) and refuse checkpoints; the process goes on.
    Report,
    /// End the process.
    Exit,
}

impl std::str::FromStr for OnFence {
    type Err = Error;
    fn from_str(s: &str) -> Result<OnFence> {
        match s {
            "" | "auto" => Ok(OnFence::Auto),
            "report" => Ok(OnFence::Report),
            "exit" => Ok(OnFence::Exit),
            other => Err(Error::Config(format!(
                "on_fence must be 'auto', 'report' or 'exit', not '{other}'"
            ))),
        }
    }
}

/// `backend = "..."` in a configuration file, parsed when it is loaded.
fn backend_from_str<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BackendChoice, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// Library configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where checkpoints are written.
    pub image_dir: PathBuf,
    /// Fixed address of the checkpoint heap.
    pub heap_base: usize,
    /// Size of the checkpoint heap in bytes (reserved, not committed).
    pub heap_size: usize,
    /// Dirty-tracking backend (`auto`, `uffd-wp`, `mprotect`, `soft-dirty`, `full`).
    #[serde(deserialize_with = "backend_from_str")]
    pub backend: BackendChoice,
    /// Capture strategy.
    pub strategy: Strategy,
    /// Fencing term written into checkpoints.
    pub term: u64,
    /// The spare to stream checkpoints to (`host:port`); none: checkpoints go to `image_dir`.
    pub spare: Option<String>,
    /// The shared secret for the spare (a `0600` file).
    pub key_file: Option<PathBuf>,
    /// Heartbeat interval H to the spare, in milliseconds.
    pub heartbeat_ms: u64,
    /// Lease in milliseconds: with no word from the spare for this long the primary reports it
    /// may be fenced. Keep it below the spare's detection time (N × H).
    pub lease_ms: u64,
    /// What to do when fenced or the lease is lost: `report` or `exit` (`auto`: `exit` with an
    /// arbiter, `report` without).
    pub on_fence: OnFence,
    /// etcd endpoints of the arbiter (comma-separated); none: two-machine mode.
    pub arbiter: Option<String>,
    /// The service's name at the arbiter.
    pub service: Option<String>,
    /// This machine's name at the arbiter (default: the host name).
    pub node: Option<String>,
    /// The arbiter lease `La` asked for, in milliseconds.
    pub arbiter_lease_ms: u64,
    /// `W` written into a term key this primary creates, in milliseconds.
    pub arbiter_wait_ms: u64,
    /// An etcd request not answered within this fails, in milliseconds.
    pub arbiter_timeout_ms: u64,
    /// The claim this program takes over at the arbiter (set by the spare that resumes it).
    pub arbiter_adopt: Option<String>,
    /// The CA (PEM) of etcd's server certificate: TLS to the arbiter.
    pub arbiter_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's client-certificate authentication.
    pub arbiter_cert: Option<PathBuf>,
    /// The private key (PEM) of `arbiter_cert`.
    pub arbiter_key: Option<PathBuf>,
    /// A checkpoint the spare has not acknowledged this long after its last byte fails (a
    /// spare whose disk hangs must not block `cpt()` / `wait_durable` forever); so does one
    /// being sent of which the connection took nothing more for this long (a spare that
    /// stopped reading).
    pub ack_timeout_ms: u64,
    /// At start, how long to wait for the spare's connection (and the right to serve) before
    /// the first checkpoint, which fails without them: hosts that boot together need longer
    /// than a program started beside a running spare.
    pub spare_wait_ms: u64,
    /// When the spare acknowledges a checkpoint (so when `wait_durable` returns): after its
    /// `fsync` (`fsynced`, the default: the checkpoint survives both machines losing power) or
    /// as soon as it holds the whole stream validated (`received`: one network round trip and
    /// no disk wait; survives the death of either machine, not of both). Only used with
    /// `spare`; see [`Config::durability_level`].
    pub durability: hotspare_proto::AckLevel,
    /// Checkpoints between capture and durability at most (1 to 64; 0: automatic, see
    /// [`Config::depth`]): the pipeline depth of output commit. Deeper hides longer round trips
    /// (a real network); shallower makes each checkpoint carry more writes when
    /// per-checkpoint costs dominate (loopback, a local disk). A capture beyond it waits for
    /// the oldest.
    pub pipeline_depth: u64,
    /// Whether to turn address-space randomisation off (re-executing once at start).
    pub fixed_addresses: FixedAddresses,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            image_dir: PathBuf::from("hotspare-image"),
            heap_base: 0x6000_0000_0000,
            heap_size: 1 << 30,
            backend: BackendChoice::Auto,
            strategy: Strategy::Auto,
            term: 1,
            spare: None,
            key_file: None,
            heartbeat_ms: 10,
            lease_ms: 40,
            on_fence: OnFence::Auto,
            arbiter: None,
            service: None,
            node: None,
            arbiter_lease_ms: 40,
            arbiter_wait_ms: 45,
            arbiter_timeout_ms: 200,
            arbiter_adopt: None,
            arbiter_ca: None,
            arbiter_cert: None,
            arbiter_key: None,
            ack_timeout_ms: 5000,
            spare_wait_ms: 1000,
            durability: hotspare_proto::AckLevel::Fsynced,
            pipeline_depth: 0,
            fixed_addresses: FixedAddresses::Auto,
        }
    }
}

/// Parses `4096`, `64K`, `1G`, `0x1000`.
pub fn parse_size(s: &str) -> Result<usize> {
    let s = s.trim();
    let bad = || Error::Config(format!("bad size '{s}'"));
    if let Some(hex) = s.strip_prefix("0x") {
        return usize::from_str_radix(hex, 16).map_err(|_| bad());
    }
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(bad)
}

/// Parses a durability level (`received`, `fsynced`) as `HOTSPARE_DURABILITY` gives it.
pub fn parse_durability(s: &str) -> Result<hotspare_proto::AckLevel> {
    s.trim()
        .parse()
        .map_err(|e| Error::Config(format!("HOTSPARE_DURABILITY: {e}")))
}

impl Config {
    /// The pipeline depth in use: `pipeline_depth`, or when it is 0, 2 with a spare (one
    /// checkpoint travels while the next is captured) and 1 without (the local apply runs on
    /// the writer thread, so a second checkpoint in flight would only split the batch — it
    /// measured 30 % slower).
    pub fn depth(&self) -> u64 {
        match self.pipeline_depth {
            0 if self.spare.is_some() => 2,
            0 => 1,
            d => d.min(64),
        }
    }

    /// The durability a checkpoint has once `wait_durable` returns, by name: `fsynced` or
    /// `received` (acknowledged by the spare, see [`Config::durability`]), or `local` when no
    /// spare is configured (applied to `image_dir` and `fsync`ed here).
    pub fn durability_level(&self) -> &'static str {
        match self.spare {
            Some(_) => self.durability.as_str(),
            None => "local",
        }
    }

    /// Defaults, then the TOML file named by `HOTSPARE_CONFIG` (if set), then the environment.
    pub fn load() -> Result<Config> {
        let base = match std::env::var_os("HOTSPARE_CONFIG") {
            Some(p) => Config::from_toml_file(p)?,
            None => Config::default(),
        };
        base.with_env()
    }

    /// Reads a TOML file (unknown keys are refused).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// Applies `HOTSPARE_*` environment variables on top of `self`.
    pub fn with_env(mut self) -> Result<Config> {
        let var = |k: &str| std::env::var(k).ok();
        if let Some(v) = var("HOTSPARE_IMAGE_DIR") {
            self.image_dir = v.into();
        }
        if let Some(v) = var("HOTSPARE_HEAP_BASE") {
            self.heap_base = parse_size(&v)?;
        }
        if let Some(v) = var("HOTSPARE_HEAP_SIZE") {
            self.heap_size = parse_size(&v)?;
        }
        if let Some(v) = var("HOTSPARE_BACKEND") {
            self.backend = v.parse()?;
        }
        if let Some(v) = var("HOTSPARE_STRATEGY") {
            self.strategy = v.parse()?;
        }
        if let Some(v) = var("HOTSPARE_SPARE") {
            self.spare = Some(v);
        }
        if let Some(v) = var("HOTSPARE_KEY_FILE") {
            self.key_file = Some(v.into());
        }
        if let Some(v) = var("HOTSPARE_HEARTBEAT_MS") {
            self.heartbeat_ms = v
                .parse()
                .map_err(|_| Error::Config(format!("bad HOTSPARE_HEARTBEAT_MS '{v}'")))?;
        }
        if let Some(v) = var("HOTSPARE_LEASE_MS") {
            self.lease_ms = v
                .parse()
                .map_err(|_| Error::Config(format!("bad HOTSPARE_LEASE_MS '{v}'")))?;
        }
        if let Some(v) = var("HOTSPARE_ACK_TIMEOUT_MS") {
            self.ack_timeout_ms = v
                .parse()
                .map_err(|_| Error::Config(format!("bad HOTSPARE_ACK_TIMEOUT_MS '{v}'")))?;
        }
        if let Some(v) = var("HOTSPARE_SPARE_WAIT_MS") {
            self.spare_wait_ms = v
                .parse()
                .map_err(|_| Error::Config(format!("bad HOTSPARE_SPARE_WAIT_MS '{v}'")))?;
        }
        if let Some(v) = var("HOTSPARE_PIPELINE_DEPTH") {
            self.pipeline_depth =
                v.parse()
                    .ok()
                    .filter(|d| (0..=64).contains(d))
                    .ok_or_else(|| {
                        Error::Config(format!("bad HOTSPARE_PIPELINE_DEPTH '{v}' (0 to 64)"))
                    })?;
        }
        if let Some(v) = var("HOTSPARE_FIXED_ADDRESSES") {
            self.fixed_addresses = v.parse()?;
        }
        if let Some(v) = var("HOTSPARE_DURABILITY") {
            self.durability = parse_durability(&v)?;
        }
        if let Some(v) = var("HOTSPARE_ON_FENCE") {
            self.on_fence = v.parse()?;
        }
        if let Some(v) = var("HOTSPARE_ARBITER") {
            self.arbiter = Some(v);
        }
        if let Some(v) = var("HOTSPARE_SERVICE") {
            self.service = Some(v);
        }
        if let Some(v) = var("HOTSPARE_NODE") {
            self.node = Some(v);
        }
        if let Some(v) = var("HOTSPARE_ARBITER_ADOPT") {
            self.arbiter_adopt = Some(v);
        }
        for (name, field) in [
            ("HOTSPARE_ARBITER_CA", &mut self.arbiter_ca),
            ("HOTSPARE_ARBITER_CERT", &mut self.arbiter_cert),
            ("HOTSPARE_ARBITER_KEY", &mut self.arbiter_key),
        ] {
            if let Some(v) = var(name).filter(|v| !v.is_empty()) {
                *field = Some(v.into());
            }
        }
        for (name, field) in [
            ("HOTSPARE_ARBITER_LEASE_MS", &mut self.arbiter_lease_ms),
            ("HOTSPARE_ARBITER_WAIT_MS", &mut self.arbiter_wait_ms),
            ("HOTSPARE_ARBITER_TIMEOUT_MS", &mut self.arbiter_timeout_ms),
        ] {
            if let Some(v) = var(name) {
                *field = v
                    .parse()
                    .map_err(|_| Error::Config(format!("bad {name} '{v}'")))?;
            }
        }
        if let Some(v) = var("HOTSPARE_TERM") {
            self.term = v
                .parse()
                .map_err(|_| Error::Config(format!("bad HOTSPARE_TERM '{v}'")))?;
        }
        Ok(self)
    }
}

impl Config {
    /// Whether the process ends when fenced or when it holds no lease: `on_fence`, by default
    /// `exit` with an arbiter (a primary that reaches neither its spare nor the arbiter must
    /// stop before a takeover can be allowed) and `report` without one (where the spare's death
    /// alone ends the lease, and exiting would stop the service with it).
    pub fn exit_on_fence(&self) -> bool {
        match self.on_fence {
            OnFence::Exit => true,
            OnFence::Report => false,
            OnFence::Auto => self.arbiter.is_some(),
        }
    }

    /// The arbiter, if one is configured.
    pub fn arbiter(&self) -> Result<Option<crate::replica::ArbiterConfig>> {
        let Some(endpoints) = &self.arbiter else {
            return Ok(None);
        };
        let service = self
            .service
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::Config("an arbiter needs a service name (HOTSPARE_SERVICE)".into())
            })?;
        if service.contains('/') {
            return Err(Error::Config(format!(
                "the service name '{service}' must not contain '/'"
            )));
        }
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Error::Config("HOTSPARE_ARBITER lists no endpoint".into()));
        }
        let tls = crate::replica::arbiter::ArbiterTls::load(
            self.arbiter_ca.as_deref(),
            self.arbiter_cert.as_deref(),
            self.arbiter_key.as_deref(),
        )
        .map_err(Error::Config)?;
        let ms = std::time::Duration::from_millis;
        let cfg = crate::replica::ArbiterConfig {
            endpoints,
            tls,
            service,
            node: self
                .node
                .clone()
                .unwrap_or_else(crate::replica::arbiter::hostname),
            timeout: ms(self.arbiter_timeout_ms.max(1)),
            lease: ms(self.arbiter_lease_ms.max(1)),
            wait: ms(self.arbiter_wait_ms.max(1)),
            adopt: self.arbiter_adopt.clone(),
        };
        cfg.check_schemes().map_err(Error::Config)?;
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotspare_proto::AckLevel;

    /// Enum settings are parsed when the file is loaded: a typo is an error there, naming the
    /// choices, not a failure later at start-up.
    #[test]
    fn enum_settings_are_parsed_at_load() {
        let c: Config = toml::from_str("backend = \"mprotect\"\non_fence = \"exit\"").unwrap();
        assert_eq!(
            c.backend,
            BackendChoice::Only(kmod_shim::BackendKind::Mprotect)
        );
        assert_eq!(c.on_fence, OnFence::Exit);
        let c: Config = toml::from_str("on_fence = \"\"").unwrap();
        assert_eq!(c.on_fence, OnFence::Auto);
        assert!(!c.exit_on_fence());
        let e = toml::from_str::<Config>("backend = \"uffd\"").unwrap_err();
        assert!(e.to_string().contains("unknown backend 'uffd'"), "{e}");
        assert!(toml::from_str::<Config>("on_fence = \"stop\"").is_err());
        assert!("stop".parse::<OnFence>().is_err());
    }

    #[test]
    fn durability_defaults_to_fsynced_and_is_local_without_a_spare() {
        let c = Config::default();
        assert_eq!(c.durability, AckLevel::Fsynced);
        assert_eq!(c.durability_level(), "local");
        let c = Config {
            spare: Some("10.0.0.2:7070".into()),
            ..Config::default()
        };
        assert_eq!(c.durability_level(), "fsynced");
    }

    #[test]
    fn durability_from_toml_and_environment_values() {
        let c: Config =
            toml::from_str("durability = \"received\"\nspare = \"s:1\"").expect("valid");
        assert_eq!(c.durability, AckLevel::Received);
        assert_eq!(c.durability_level(), "received");
        let c: Config = toml::from_str("durability = \"fsynced\"").expect("valid");
        assert_eq!(c.durability, AckLevel::Fsynced);
        assert!(toml::from_str::<Config>("durability = \"fsync\"").is_err());
        assert_eq!(parse_durability("received").ok(), Some(AckLevel::Received));
        assert_eq!(parse_durability(" fsynced ").ok(), Some(AckLevel::Fsynced));
        match parse_durability("local") {
            Err(Error::Config(m)) => assert!(m.contains("local") && m.contains("received"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
