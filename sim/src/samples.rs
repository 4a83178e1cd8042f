//! The per-shard telemetry of `shards.json`: samples of the state every few ticks, taken by
//! replaying the log, so a resumed run reports exactly what an uninterrupted one does.

use fabric_events::PublicKey;
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

/// Replays a log and samples every shard at tick 0, at every multiple of `every_ticks` and at
/// the last tick: the telemetry of `shards.json`, a function of the log alone, so a resumed
/// run reports exactly what an uninterrupted one does.
pub struct Sampler {
    state: State,
    every_ticks: u64,
    next_tick: u64,
    last_sampled: Option<u64>,
    samples: Vec<ShardSample>,
}

impl Sampler {
    /// An empty replay sampling every `every_ticks` ticks.
    pub fn new(every_ticks: u64) -> Self {
        Self {
            state: State::new(),
            every_ticks: every_ticks.max(1),
            next_tick: 0,
            last_sampled: None,
            samples: Vec::new(),
        }
    }

    /// Samples every due tick before `tick` (the state has not changed since), showing each
    /// sampled state to `observe`.
    fn sample_before(&mut self, tick: u64, observe: &mut impl FnMut(u64, &State)) {
        while self.next_tick < tick {
            self.samples
                .extend(shard_samples(&self.state, self.next_tick));
            observe(self.next_tick, &self.state);
            self.last_sampled = Some(self.next_tick);
            self.next_tick += self.every_ticks;
        }
    }

    /// The state of the log folded so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Folds in (admits) the next event of the log, by `author`.
    pub fn apply(
        &mut self,
        author: &PublicKey,
        event: &fabric_events::Event,
    ) -> Result<(), fabric_projections::ApplyError> {
        self.apply_observed(author, event, |_, _| {})
    }

    /// Folds in (admits) the next event of the log; `observe` sees the state at each sample
    /// tick it passes, before the event.
    pub fn apply_observed(
        &mut self,
        author: &PublicKey,
        event: &fabric_events::Event,
        mut observe: impl FnMut(u64, &State),
    ) -> Result<(), fabric_projections::ApplyError> {
        self.sample_before(event.header.tick, &mut observe);
        self.state.admit(author, event)
    }

    /// Samples up to and including `last_tick` (the run's last tick) and hands back the state
    /// and the samples.
    pub fn finish(self, last_tick: u64) -> (State, Vec<ShardSample>) {
        self.finish_observed(last_tick, |_, _| {})
    }

    /// [`Sampler::finish`], showing each remaining sampled state to `observe`.
    pub fn finish_observed(
        mut self,
        last_tick: u64,
        mut observe: impl FnMut(u64, &State),
    ) -> (State, Vec<ShardSample>) {
        self.sample_before(last_tick + 1, &mut observe);
        if self.last_sampled != Some(last_tick) {
            self.samples.extend(shard_samples(&self.state, last_tick));
            observe(last_tick, &self.state);
        }
        (self.state, self.samples)
    }
}
