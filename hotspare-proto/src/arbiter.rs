//! The arbiter: a linearizable store (etcd in production) that decides who may serve when the
//! primary and its spare cannot hear each other. Without one, a primary cut off from its spare
//! must stop serving (its only lease comes from the spare); with one, it keeps serving on
//! leases *renewed at the arbiter*, and a spare takes over only after winning a
//! compare-and-swap there. The new term it writes is the fencing token.
//!
//! Two keys per service:
//!
//! ```text
//! <prefix>/term   TermRecord {term, holder, wait_us}   written by the first primary (create)
//!                                                      and by every takeover (compare-and-swap)
//! <prefix>/alive  bumped by the primary's renewals     (compare: term key unchanged)
//! ```
//!
//! **The primary's renewal** ([`Request::Renew`]) is one transaction: *if* the term key is still
//! the version the primary registered with, write the renewal key. Sent at `s` on the primary's
//! clock and answered "renewed", it lets the primary serve until `s + La`. While renewals are
//! needed one goes every `La/4` whether or not the earlier ones were answered (up to four in
//! flight): with one at a time, a single answer later than about `3La/4` (a starved etcd) let
//! the lease lapse although the next renewal would have been answered in time. Answers may
//! come in any order; each extends the lease to its own `s + La` (never shortens it), an error
//! ends nothing the others renew, and "not renewed" fences.
//!
//! **The spare's claim** takes three steps, after it has granted no heartbeat lease for the
//! detection time `D` (so every lease it granted has run out, see [`crate::lease`]):
//! 1. [`Request::Observe`]: read both keys' versions; the answer arrives at `t0` (spare clock);
//! 2. wait `W` (the record's `wait_us`) from `t0`;
//! 3. [`Request::Claim`]: *if* neither key changed since the observation, write the new term.
//!
//! **Why the two never both serve.** Let the claim succeed at real time `c`. (a) A renewal
//! applied after the observation's read (real time `g ≤ t0`) would have changed the renewal key
//! before `c`, or the term key would have changed under it after `c` (so it failed). So the
//! primary's last successful renewal was applied before `g`, and was sent at `s ≤ g`. Its lease
//! ends, in real time, by `s + La/(1−ρ) ≤ g + La/(1−ρ)`, while `c ≥ g + W/(1+ρ)`. With
//! `La < W·(1−ρ)/(1+ρ)` ([`arbiter_lease`]) the arbiter lease is over before the claim.
//! Several renewals in flight change nothing here: the argument holds for each of them on its
//! own. Every one that succeeded was applied before `g` and sent before it was applied, so each
//! lease it gave ends by `g + La/(1−ρ)`, and the primary's lease, the latest of them, too; one
//! still in flight at `c` either is applied before `g` (covered), or between `g` and `c` (then
//! the claim fails), or after `c` (then it fails). The order its answers arrive in, a copy
//! applied twice (the driver hedges), an answer that never comes: none moves a send time.
//! (b) The heartbeat leases are over too: the spare granted none for `D`, and grants none while
//! it claims. (c) After `c` no renewal succeeds and the spare grants nothing to the old term.
//!
//! **An answer that never comes** (the arbiter unreachable, a timeout) leaves the outcome
//! unknown: a claim may still be applied later. The spare then grants nothing until it has
//! read the term key again; the only harm a late claim can do is fence the primary (its next
//! renewal fails) with no takeover yet — safe, and the spare, seeing the term held by its own
//! node at its next attempt, takes over.
//!
//! A primary registers at start ([`Request::Register`]): the term key is created with its
//! record if absent; a program resumed by a spare takes over that spare's claim (the spare
//! hands it the claim's holder, `node#term`); any other record — a takeover happened, the key
//! belongs to another history, or another process of the same term registered first — fences
//! it, naming the holder. A primary's holder names its pid, so two processes never share one.
//! Until it is registered it serves only on heartbeat leases, which is what it would do
//! without an arbiter.

use crate::lease;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the arbiter holds under a service's term key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermRecord {
    /// The term: the fencing token of the primary allowed to serve.
    pub term: u64,
    /// The node that holds it (the primary that registered it, the spare that claimed it).
    pub holder: String,
    /// `W`: how long a spare waits between observing and claiming, in microseconds. It is in
    /// the record (copied by every claim) so that the primary, which caps its arbiter lease by
    /// it, and the spare, which waits it, read the same value from the same version.
    pub wait_us: u64,
}

impl TermRecord {
    /// `W`, bounded (a record is read from the network; a huge value must not stall a spare
    /// for ever).
    pub fn wait(&self) -> Duration {
        Duration::from_micros(self.wait_us.min(MAX_WAIT.as_micros() as u64))
    }
}

/// The longest `W` a spare honours.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// A version of a key as the arbiter numbers it (etcd's `mod_revision`; 0: the key is absent).
pub type Rev = i64;

/// One linearizable operation on the arbiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Primary, at start: create the term key with `record` if it is absent; or, if it holds
    /// a record of `record.term` whose holder is `adopt` (the claim of the spare that resumed
    /// this program), replace it with `record` keeping its `wait_us` (compare-and-swap on its
    /// version); answer [`Answer::Registered`] with what the key holds afterwards. The primary
    /// is registered only if that is its own record: a key held by anyone else — another
    /// process of the same term included — fences it.
    Register {
        /// This primary's record.
        record: TermRecord,
        /// The holder of a claim this program may take over (`None`: a fresh start).
        adopt: Option<String>,
    },
    /// Primary: if the term key is still at `term_rev`, write the renewal key
    /// ([`Answer::Renewed`]); else [`Answer::NotRenewed`] with what the term key holds.
    Renew {
        /// The version of the term key the primary registered with.
        term_rev: Rev,
    },
    /// Spare: read both keys ([`Answer::Observed`]).
    Observe,
    /// Spare: if the term key is at `term_rev` and the renewal key at `alive_rev`, write
    /// `record` to the term key ([`Answer::Claimed`]); else [`Answer::NotClaimed`].
    Claim {
        /// The term key's version observed (0: absent).
        term_rev: Rev,
        /// The renewal key's version observed (0: absent).
        alive_rev: Rev,
        /// The new term.
        record: TermRecord,
    },
}

/// The arbiter's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The term key after a [`Request::Register`].
    Registered {
        /// Its version.
        term_rev: Rev,
        /// What it holds (ours if it was created).
        record: TermRecord,
    },
    /// The renewal key was written.
    Renewed,
    /// The term key changed since registration.
    NotRenewed {
        /// What it holds now (`None`: deleted).
        record: Option<TermRecord>,
    },
    /// Both keys, read at one point.
    Observed {
        /// The term key's version and record (`None`: absent).
        term: Option<(Rev, TermRecord)>,
        /// The renewal key's version (0: absent).
        alive_rev: Rev,
    },
    /// The claim was applied: the new term is ours.
    Claimed,
    /// A key changed since the observation: the claim was not applied.
    NotClaimed,
}

/// A request the arbiter did not answer: its outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArbiterError {
    /// No answer within the driver's deadline.
    #[error("the arbiter did not answer within {0} ms")]
    Timeout(u64),
    /// The connection failed, or the arbiter answered with an error.
    #[error("arbiter: {0}")]
    Failed(String),
}

/// The outcome of a request, as the driver reports it (every request exactly once).
pub type Outcome = Result<Answer, ArbiterError>;

/// How a primary uses the arbiter.
#[derive(Debug, Clone)]
pub struct PrimaryArbiter {
    /// This node's name (written as the holder of a term key it creates).
    pub node: String,
    /// The arbiter lease asked for (`La`); capped below the record's `W`.
    pub lease: Duration,
    /// `W` written into a term key this primary creates.
    pub wait: Duration,
    /// Renew at most this often while renewals are needed.
    pub renew_every: Duration,
    /// The claim this program may take over (set for a program resumed by a spare).
    pub adopt: Option<String>,
}

/// The holder a spare on `node` writes when it claims `term`: what the program it resumes is
/// given to adopt, and what a restarted spare recognises as its own claim.
pub fn claim_holder(node: &str, term: u64) -> String {
    format!("{node}#{term}")
}

/// The longest arbiter lease a primary may take against a record whose spare waits `wait`.
pub fn arbiter_lease(
    requested: Duration,
    wait: Duration,
    drift_ppm: u32,
    margin: Duration,
) -> Duration {
    lease::safe_lease(requested, wait, drift_ppm, margin)
}

/// The defaults: `La` 40 ms, `W` 45 ms, renewals every 10 ms while needed. A failover with the
/// arbiter in the loop is `D + W` plus two round trips to it (~100 ms with `D` = 50 ms).
pub const DEFAULT_LEASE: Duration = Duration::from_millis(40);
/// See [`DEFAULT_LEASE`].
pub const DEFAULT_WAIT: Duration = Duration::from_millis(45);
/// See [`DEFAULT_LEASE`].
pub const DEFAULT_RENEW_EVERY: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_lease_fits_under_the_default_wait() {
        let l = arbiter_lease(
            DEFAULT_LEASE,
            DEFAULT_WAIT,
            lease::DEFAULT_DRIFT_PPM,
            Duration::from_millis(1),
        );
        assert_eq!(l, DEFAULT_LEASE);
        let cut = arbiter_lease(
            Duration::from_millis(100),
            DEFAULT_WAIT,
            lease::DEFAULT_DRIFT_PPM,
            Duration::from_millis(1),
        );
        assert!(cut < DEFAULT_WAIT, "{cut:?}");
    }

    #[test]
    fn a_huge_wait_is_bounded() {
        let r = TermRecord {
            term: 1,
            holder: "a".into(),
            wait_us: u64::MAX,
        };
        assert_eq!(r.wait(), MAX_WAIT);
    }
}
