//! Tables 5.6/5.7 (failover time and the requests lost to it) — not written yet; this is where
//! they go.
//!
//! The plan left for whoever adds them: start hotspare-kv with a spare (`hotspare-resume`),
//! run the serial client with `SerialSpec::bucket_ms` set, SIGKILL the primary through a
//! [`crate::procs::ChildGuard`], reconnect to the spare, and emit a `"kind":"timeline"` line
//! like `timeline.rs` does (plus the detection/restore times) — `plot::svg` then draws the gap
//! as one more panel beside the Figure 5-3 series.

use anyhow::{bail, Result};

/// The `failover` subcommand.
pub fn run() -> Result<()> {
    bail!("the failover measurements (tables 5.6/5.7) are not implemented yet; see failover.rs")
}
