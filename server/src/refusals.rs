//! The per-peer limit on refused requests: each peer (IP address) has an allowance of
//! [`PEER_REFUSALS_BURST_MAX`] refusals that refills at [`PEER_REFUSALS_PER_SECOND_MAX`] a
//! second; a peer whose allowance is spent is answered `429 rate_limited` before its request
//! is read, until it refills. Requests that are not refused cost nothing, so a well-behaved
//! client is never limited. Peers on the Unix socket (no address) are the operator's own and
//! are not limited. Wall-clock time decides only who is answered 429, never a byte of the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Refusals a peer may collect in a burst before it is answered 429.
pub const PEER_REFUSALS_BURST_MAX: u32 = 64;
/// Refusals per second a peer's allowance refills by.
pub const PEER_REFUSALS_PER_SECOND_MAX: u32 = 16;
/// How far below zero a peer's allowance may go: a batch (`POST /v0/jobs/batch`) is heard
/// while the allowance is not spent, and each of its refused items takes one, so a batch of
/// refusals is paid for in full (a peer in debt waits until it refills above zero).
pub const PEER_REFUSALS_DEBT_MAX: u32 = fabric_api::wire::JOBS_PER_BATCH_MAX as u32;
/// Peers tracked at once; when full, peers whose allowance has refilled are forgotten, and a
/// new peer that still finds no room is not limited (rather than lock out strangers).
pub const PEERS_TRACKED_MAX: usize = 65_536;

/// One peer's allowance.
#[derive(Clone, Copy, Debug)]
struct Allowance {
    /// Refusals it may still collect (fractions refill over time).
    left: f64,
    /// When `left` was last brought up to date.
    at: Instant,
}

impl Allowance {
    fn full(now: Instant) -> Self {
        Self {
            left: f64::from(PEER_REFUSALS_BURST_MAX),
            at: now,
        }
    }

    /// Refills by the time passed since it was last brought up to date.
    fn refill(&mut self, now: Instant) {
        let seconds = now.saturating_duration_since(self.at).as_secs_f64();
        self.left = (self.left + seconds * f64::from(PEER_REFUSALS_PER_SECOND_MAX))
            .min(f64::from(PEER_REFUSALS_BURST_MAX));
        self.at = now;
    }

    fn is_full(&self) -> bool {
        self.left >= f64::from(PEER_REFUSALS_BURST_MAX)
    }
}

/// The allowances of the peers that were refused lately.
#[derive(Debug, Default)]
pub(crate) struct PeerRefusals {
    peers: Mutex<HashMap<IpAddr, Allowance>>,
}

impl PeerRefusals {
    /// Whether `peer` may be heard now (its allowance is not spent).
    pub(crate) fn allows(&self, peer: Option<IpAddr>) -> bool {
        let Some(peer) = peer else {
            return true;
        };
        let now = Instant::now();
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match peers.get_mut(&peer) {
            None => true,
            Some(allowance) => {
                allowance.refill(now);
                allowance.left >= 1.0
            }
        }
    }

    /// Takes one refusal from `peer`'s allowance.
    pub(crate) fn refused(&self, peer: Option<IpAddr>) {
        let Some(peer) = peer else {
            return;
        };
        let now = Instant::now();
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !peers.contains_key(&peer) && peers.len() >= PEERS_TRACKED_MAX {
            peers.retain(|_, allowance| {
                allowance.refill(now);
                !allowance.is_full()
            });
            if peers.len() >= PEERS_TRACKED_MAX {
                return;
            }
        }
        let allowance = peers.entry(peer).or_insert_with(|| Allowance::full(now));
        allowance.refill(now);
        allowance.left = (allowance.left - 1.0).max(-f64::from(PEER_REFUSALS_DEBT_MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_limited_after_its_burst_and_others_are_not() {
        let limits = PeerRefusals::default();
        let peer = Some(IpAddr::from([192, 0, 2, 1]));
        let other = Some(IpAddr::from([192, 0, 2, 2]));
        for _ in 0..PEER_REFUSALS_BURST_MAX {
            assert!(limits.allows(peer));
            limits.refused(peer);
        }
        // The refill over the loop's few microseconds is far below one refusal.
        assert!(!limits.allows(peer), "the burst is spent");
        assert!(limits.allows(other), "another peer is not limited");
        assert!(limits.allows(None), "the Unix socket is not limited");
    }

    #[test]
    fn refusals_past_the_burst_are_a_debt_down_to_its_limit() {
        let limits = PeerRefusals::default();
        let address = IpAddr::from([192, 0, 2, 3]);
        for _ in 0..PEER_REFUSALS_BURST_MAX + 2 * PEER_REFUSALS_DEBT_MAX {
            limits.refused(Some(address));
        }
        let left = limits.peers.lock().expect("not poisoned")[&address].left;
        // The loop's few microseconds refill far below one refusal.
        assert!(
            (-f64::from(PEER_REFUSALS_DEBT_MAX)..-f64::from(PEER_REFUSALS_DEBT_MAX) + 1.0)
                .contains(&left),
            "{left}"
        );
        assert!(!limits.allows(Some(address)));
    }

    #[test]
    fn an_allowance_refills_with_time() {
        let start = Instant::now();
        let mut allowance = Allowance {
            left: 0.0,
            at: start,
        };
        allowance.refill(start + std::time::Duration::from_millis(500));
        assert_eq!(
            allowance.left,
            f64::from(PEER_REFUSALS_PER_SECOND_MAX) / 2.0
        );
        allowance.refill(start + std::time::Duration::from_secs(3_600));
        assert!(allowance.is_full());
    }
}
