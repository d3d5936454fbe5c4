//! Time as the state machines see it: a node's own monotonic clock, given to them by the
//! driver (`CLOCK_MONOTONIC` in production, a drifting simulated clock in the simulator). The
//! machines never read a clock themselves, so every decision replays from its inputs.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on one node's monotonic clock, in nanoseconds from an arbitrary origin. Points of
/// two different nodes are not comparable: a lease crosses between them only as durations,
/// with a margin for the rate difference of the two clocks (see [`crate::lease`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The clock's origin.
    pub const ZERO: Time = Time(0);

    /// A point `nanos` after the origin.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }
}
