//! Projections: pure folds of Fabric events into state. Depends on `fabric-events` only and
//! never touches storage or the network, so replaying a log always gives the same state.
//!
//! The shard, node and job state and the routing policy arrive with the planetary run; what is
//! here today is the per-kind tally every later projection starts from.
#![deny(missing_docs)]

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
mod tests {
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
