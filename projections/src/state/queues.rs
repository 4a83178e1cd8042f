//! The derived per-shard indices the fold keeps up to date: class queues, capable-node lists
//! and resolved spillover/served names.
//!
//! A shard queues its jobs per job class, oldest first. Leaving a queue is lazy: the job's
//! status, shard or generation changes, which makes its entry stale, and `compact` drops stale
//! entries only at the two ends, so assignment (front) and spillover (back) stay O(1) amortised.
//! A queue's `live` count and the shard's `queued` count are exact at all times.
//!
//! Capable lists say, per shard and class, which of the shard's nodes could ever take the class
//! (skills, latency budget, region served), sorted by node name. They follow from the rest of
//! the state and are rebuilt when an input changes; the snapshot leaves them out.

use std::collections::VecDeque;

use super::{ClassIx, JobClass, JobIx, JobStatus, NodeIx, Shard, ShardIx, State};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ClassQueue {
    pub(super) entries: VecDeque<(JobIx, u64)>,
    pub(super) live: u64,
}

impl State {
    /// Jobs of a shard's class queue in queue order (oldest first), skipping stale entries.
    pub fn queue(
        &self,
        shard: ShardIx,
        class: ClassIx,
    ) -> impl DoubleEndedIterator<Item = JobIx> + '_ {
        let entries = self.shards[shard as usize]
            .queues
            .get(&class)
            .map(|queue| &queue.entries);
        entries
            .into_iter()
            .flatten()
            .filter(move |(job, generation)| self.is_queued_entry(shard, *job, *generation))
            .map(|(job, _)| *job)
    }

    /// Whether a queue entry of `shard` is still its job's: queued there, in the same stay.
    pub(super) fn is_queued_entry(&self, shard: ShardIx, job: JobIx, generation: u64) -> bool {
        let job = &self.jobs[job as usize];
        job.status == JobStatus::Queued && job.shard == shard && job.generation == generation
    }

    /// Resolves a shard's spillover targets and served regions by name, now that the shards
    /// registered or retired may have changed.
    pub(super) fn resolve_shard_names(&mut self, shard: ShardIx) {
        let (spillover_ix, served_mask) = self.resolved_names(shard);
        let s = &mut self.shards[shard as usize];
        s.spillover_ix = spillover_ix;
        s.served_mask = served_mask;
    }

    /// A shard's spillover targets (registered, not itself, not retired; first preferred) and
    /// the mask of the regions it serves, from the names it holds.
    pub(super) fn resolved_names(&self, shard: ShardIx) -> (Vec<ShardIx>, u64) {
        let s = &self.shards[shard as usize];
        let spillover_ix = s
            .spillover
            .iter()
            .filter_map(|name| self.shard_ix(name))
            .filter(|target| *target != shard && !self.shards[*target as usize].retired)
            .collect();
        let served_mask = s
            .regions_served
            .iter()
            .filter_map(|name| self.shard_ix(name))
            .fold(0u64, |mask, ix| mask | (1u64 << ix));
        (spillover_ix, served_mask)
    }

    /// Whether a node of `shard` could ever take jobs of `class`: skills, latency, region served.
    pub(super) fn node_capable(&self, shard: &Shard, node: NodeIx, class: &JobClass) -> bool {
        let node = &self.nodes[node as usize];
        node.capabilities.covers(class.skills)
            && node.latency_ms <= shard.latency_budget_ms
            && shard.serves(class.origin)
    }

    /// The nodes of `shard` that could take `class`, sorted by name.
    pub(super) fn capable_list(&self, shard: &Shard, class: &JobClass) -> Vec<NodeIx> {
        let mut list: Vec<NodeIx> = shard
            .nodes
            .iter()
            .copied()
            .filter(|node| self.node_capable(shard, *node, class))
            .collect();
        list.sort_by(|a, b| {
            self.nodes[*a as usize]
                .name
                .cmp(&self.nodes[*b as usize].name)
        });
        list
    }

    /// Recomputes which nodes of a shard could take each class.
    pub(super) fn rebuild_capable(&mut self, shard: ShardIx) {
        let s = &self.shards[shard as usize];
        let capable = self
            .classes
            .iter()
            .map(|class| self.capable_list(s, class))
            .collect();
        self.shards[shard as usize].capable = capable;
    }

    /// Queues a job at the back of its class queue in `shard`, as a new stay (a new generation).
    pub(super) fn enqueue(&mut self, job: JobIx, shard: ShardIx) {
        self.generations += 1;
        let j = &mut self.jobs[job as usize];
        j.generation = self.generations;
        j.shard = shard;
        j.status = JobStatus::Queued;
        j.visited |= 1u64 << shard;
        let (class, generation) = (j.class, j.generation);
        let s = &mut self.shards[shard as usize];
        let queue = s.queues.entry(class).or_default();
        queue.entries.push_back((job, generation));
        queue.live += 1;
        s.queued += 1;
        s.counters.queue_peak = s.counters.queue_peak.max(s.queued);
        debug_assert!(queue.live as usize <= queue.entries.len());
        debug_assert!(queue.live <= s.queued);
    }

    /// Counts a queued job out of its shard's queue. The caller changes the job next, which
    /// makes its entry stale; [`State::compact`] drops it once it reaches an end.
    pub(super) fn dequeue(&mut self, job: JobIx) {
        let (shard, class) = {
            let j = &self.jobs[job as usize];
            debug_assert_eq!(
                j.status,
                JobStatus::Queued,
                "only a queued job leaves a queue"
            );
            (j.shard, j.class)
        };
        let s = &mut self.shards[shard as usize];
        s.queued -= 1;
        let queue = s.queues.get_mut(&class);
        debug_assert!(queue.is_some(), "a queued job's class queue exists");
        if let Some(queue) = queue {
            queue.live -= 1;
            debug_assert!(queue.live <= s.queued);
        }
    }

    /// Drops stale entries from both ends of a class queue, so the live jobs stay near the ends.
    pub(super) fn compact(&mut self, shard: ShardIx, class: ClassIx) {
        let jobs = &self.jobs;
        let is_live = |(job, generation): &(JobIx, u64)| {
            let j = &jobs[*job as usize];
            j.status == JobStatus::Queued && j.shard == shard && j.generation == *generation
        };
        let s = &mut self.shards[shard as usize];
        let Some(queue) = s.queues.get_mut(&class) else {
            return;
        };
        while queue.entries.front().is_some_and(|e| !is_live(e)) {
            queue.entries.pop_front();
        }
        while queue.entries.back().is_some_and(|e| !is_live(e)) {
            queue.entries.pop_back();
        }
        // Every live job has exactly one live entry, so a queue whose ends are stale until it
        // empties held no live job, and one with a live end holds at least one.
        debug_assert_eq!(queue.entries.is_empty(), queue.live == 0);
        if queue.entries.is_empty() {
            s.queues.remove(&class);
        }
    }
}
