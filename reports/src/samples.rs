//! The per-shard telemetry of `shards.json`: samples of the state every few ticks, taken by
//! replaying the log, so a resumed run reports exactly what an uninterrupted one does.

use fabric_projections::State;
use serde::Serialize;

/// One shard at one tick, for `shards.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardSample {
    /// The tick.
    pub tick: u64,
    /// The shard.
    pub shard: String,
    /// Jobs queued.
    pub queue_depth: u64,
    /// Jobs running on its nodes.
    pub running: u64,
    /// Jobs its nodes completed so far.
    pub completed: u64,
    /// Jobs spilled into it so far.
    pub spilled_in: u64,
    /// Jobs it spilled out so far.
    pub spilled_out: u64,
    /// Its healthy nodes.
    pub healthy_nodes: u64,
}

/// One sample per shard of the state after `tick`.
pub fn shard_samples(state: &State, tick: u64) -> impl Iterator<Item = ShardSample> + '_ {
    state.shards().iter().map(move |shard| {
        let healthy_nodes = shard
            .nodes
            .iter()
            .filter(|node| state.nodes()[**node as usize].healthy)
            .count() as u64;
        ShardSample {
            tick,
            shard: shard.name.clone(),
            queue_depth: shard.queued(),
            running: shard.running,
            completed: shard.counters.completed,
            spilled_in: shard.counters.spilled_in,
            spilled_out: shard.counters.spilled_out,
            healthy_nodes,
        }
    })
}
