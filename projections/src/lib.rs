//! Projections: pure folds of Fabric events into state, and the routing policy. Depends on
//! `fabric-events` only and never touches storage or the network, so replaying a log always
//! gives the same state.
//!
//! - [`state`]: [`State`], the fold of the log (shards, nodes, jobs, metrics), its
//!   [`State::state_hash`], and [`State::check_invariants`] for tests.
//! - [`routing`]: [`TickPlan`], the routing policy of one shard for one tick.
//! - [`KindCounts`]: events per kind.
//!
//! Architecture invariant: [`State::apply`] is the only thing that changes a state, and it
//! reads nothing but the event it is given.
#![deny(missing_docs)]

pub mod routing;
pub mod state;

pub use routing::{treaty_score, Decision, HealthAction, TickPlan};
pub use state::{
    ApplyError, Authority, InvariantError, Job, JobStatus, Metrics, Model, Node, Shard,
    SnapshotError, State,
};

use fabric_events::{Event, Kind, KIND_COUNT};
/// Events seen, counted per kind, in tag order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindCounts {
    counts: [u64; KIND_COUNT],
}

impl KindCounts {
    /// Folds one event in.
    pub fn apply(&mut self, event: &Event) {
        self.counts[event.kind().tag() as usize] += 1;
    }

    /// Events of one kind.
    pub fn get(&self, kind: Kind) -> u64 {
        self.counts[kind.tag() as usize]
    }

    /// Events of every kind.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

#[cfg(test)]
mod kind_count_tests {
    use super::*;
    use fabric_events::golden::golden_events;

    #[test]
    fn counts_follow_the_events_folded_in() {
        let mut counts = KindCounts::default();
        let events = golden_events();
        for event in &events {
            counts.apply(event);
        }
        counts.apply(&events[1]);
        assert_eq!(counts.total(), events.len() as u64 + 1);
        assert_eq!(counts.get(Kind::Heartbeat), 2);
        assert_eq!(counts.get(Kind::JobSubmitted), 1);
        assert_eq!(counts.get(Kind::Checkpoint), 0);
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod rotation_tests;

#[cfg(test)]
mod covenant_tests;

#[cfg(test)]
mod models_tests;
