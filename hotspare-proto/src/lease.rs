//! The lease: how long a primary may serve after its spare last answered it, such that the
//! spare can never take over while the primary still believes it may serve.
//!
//! ```text
//! primary clock   s ── Heartbeat(id) ──▶          may serve until s + L
//! spare clock                   r ── HeartbeatAck(id) ──▶   takes over no sooner than r + D
//! ```
//! The lease is anchored to `s`, the moment the answered heartbeat was *sent*, never to when
//! its answer arrived: an answer that waited in a queue (a paused or slow primary) renews
//! nothing that has already run out. Causality gives `s ≤ r` in real time. The two clocks may
//! run at rates that differ by `ρ` (each within `ρ` of real time), so `L` local seconds on the
//! primary last at most `L / (1 − ρ)` real seconds and `D` local seconds on the spare at least
//! `D / (1 + ρ)`. Safety needs `L / (1 − ρ) < D / (1 + ρ)`, so the primary uses
//! `L ≤ D · (1 − ρ) / (1 + ρ) − margin` whatever it was configured with; the spare tells it `D`.

use std::time::Duration;

/// The bound on clock-rate difference assumed by default: 1 % (NTP-disciplined clocks are
/// within 500 ppm; an undisciplined VM clock is still far inside 1 %).
pub const DEFAULT_DRIFT_PPM: u32 = 10_000;

/// The longest lease a primary may use against a spare that takes over `detection` after its
/// last answer, with clocks within `drift_ppm` of each other and `margin` to spare (the time
/// between asking "may I serve?" and the reply leaving the process).
pub fn safe_lease(
    requested: Duration,
    detection: Duration,
    drift_ppm: u32,
    margin: Duration,
) -> Duration {
    let rho = f64::from(drift_ppm.min(500_000)) / 1e6;
    let bound = detection.as_secs_f64() * (1.0 - rho) / (1.0 + rho) - margin.as_secs_f64();
    if bound <= 0.0 {
        return Duration::ZERO;
    }
    requested.min(Duration::from_secs_f64(bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_capped_below_detection_with_drift() {
        let ms = Duration::from_millis;
        // Configured 40 ms against 50 ms detection: within the bound, kept.
        assert_eq!(safe_lease(ms(40), ms(50), DEFAULT_DRIFT_PPM, ms(1)), ms(40));
        // Configured 60 ms against 50 ms detection: cut to below 50·0.99/1.01 − 1.
        let l = safe_lease(ms(60), ms(50), DEFAULT_DRIFT_PPM, ms(1));
        assert!(l < ms(49) && l > ms(47), "{l:?}");
        // A detection shorter than the margin leaves no lease at all.
        assert_eq!(
            safe_lease(ms(40), ms(1), DEFAULT_DRIFT_PPM, ms(2)),
            Duration::ZERO
        );
    }
}
