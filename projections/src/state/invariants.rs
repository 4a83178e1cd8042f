//! [`State::check_invariants`]: a full consistency check of a state, for tests.
//!
//! The fold keeps a few cheap checks of its own (debug assertions that cost O(1), or O(the
//! entities an event touches), per event). This module checks everything the fold must leave
//! true, in one pass over the whole state: call it after folds in tests, never per event.
//!
//! One thing it does not check: that a node runs at most its max concurrency. The fold never
//! assigns past it, but an owner may lower a node's max concurrency below what it runs now.

use thiserror::Error;

use super::{ClassIx, JobIx, JobStatus, NodeIx, ShardIx, State, NO_NODE, PPM};

/// A broken invariant: something no fold of a log leaves in a state.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("state invariant broken: {0}")]
pub struct InvariantError(pub String);

/// Returns an [`InvariantError`] with the formatted message unless the condition holds.
macro_rules! ensure {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(InvariantError(format!($($message)+)));
        }
    };
}

impl State {
    /// Checks that the state is consistent with itself: the job table, the id index and the
    /// free slots agree; every queued job is counted in its shard's queue of its class and every
    /// running job on a node of its shard; the derived lists match a rebuild; the counters
    /// add up. Costs O(state): for tests, after folds.
    pub fn check_invariants(&self) -> Result<(), InvariantError> {
        self.check_lookup_maps()?;
        self.check_job_table()?;
        self.check_live_jobs()?;
        self.check_nodes()?;
        self.check_shard_counts()?;
        self.check_queues()?;
        self.check_derived_lists()?;
        self.check_metrics()
    }

    /// Every name and class maps to its index and back.
    fn check_lookup_maps(&self) -> Result<(), InvariantError> {
        ensure!(
            self.shard_index.len() == self.shards.len(),
            "{} shard names for {} shards",
            self.shard_index.len(),
            self.shards.len()
        );
        for (ix, shard) in self.shards.iter().enumerate() {
            ensure!(
                self.shard_ix(&shard.name) == Some(ix as ShardIx),
                "shard `{}` is not indexed at {ix}",
                shard.name
            );
        }
        ensure!(
            self.node_index.len() == self.nodes.len(),
            "{} node names for {} nodes",
            self.node_index.len(),
            self.nodes.len()
        );
        for (ix, node) in self.nodes.iter().enumerate() {
            ensure!(
                self.node_ix(&node.name) == Some(ix as NodeIx),
                "node `{}` is not indexed at {ix}",
                node.name
            );
        }
        ensure!(
            self.skill_index.len() == self.skills.len(),
            "{} skill names for {} skills",
            self.skill_index.len(),
            self.skills.len()
        );
        ensure!(
            self.class_index.len() == self.classes.len(),
            "{} class keys for {} classes",
            self.class_index.len(),
            self.classes.len()
        );
        for (ix, class) in self.classes.iter().enumerate() {
            ensure!(
                self.class_index.get(&(class.skills.0, class.origin)) == Some(&(ix as ClassIx)),
                "class {ix} is not indexed"
            );
        }
        Ok(())
    }

    /// The free slots are vacant and listed once; every other slot holds a queued or running
    /// job; the table holds exactly the jobs submitted and not ended.
    fn check_job_table(&self) -> Result<(), InvariantError> {
        let mut free = vec![false; self.jobs.len()];
        for slot in &self.free_slots {
            let slot = *slot as usize;
            ensure!(
                slot < self.jobs.len() && !free[slot],
                "free slot {slot} is out of range or listed twice"
            );
            free[slot] = true;
        }
        for (slot, job) in self.jobs.iter().enumerate() {
            ensure!(
                (job.status == JobStatus::Vacant) == free[slot],
                "slot {slot} holds a {:?} job but is {}listed free",
                job.status,
                if free[slot] { "" } else { "not " }
            );
            ensure!(
                matches!(
                    job.status,
                    JobStatus::Vacant | JobStatus::Queued | JobStatus::Running
                ),
                "job {} in slot {slot} has ended but is still in the table",
                job.id
            );
        }
        let live = (self.jobs.len() - self.free_slots.len()) as u64;
        let m = &self.metrics;
        ensure!(
            m.submitted.checked_sub(m.finished() + m.cancelled) == Some(live),
            "{live} live jobs, but {} submitted, {} finished and {} cancelled",
            m.submitted,
            m.finished(),
            m.cancelled
        );
        ensure!(
            self.job_index.len() as u64 == live,
            "{} ids indexed for {live} live jobs",
            self.job_index.len()
        );
        Ok(())
    }

    /// Each live job is indexed by its id, was submitted, and points at a shard, class and
    /// (when running) a node of that shard that lists it.
    fn check_live_jobs(&self) -> Result<(), InvariantError> {
        for (slot, job) in self.jobs.iter().enumerate() {
            if job.status == JobStatus::Vacant {
                continue;
            }
            let id = job.id;
            ensure!(
                self.job_ix(id) == Some(slot as JobIx),
                "job {id} is not indexed at slot {slot}"
            );
            ensure!(self.was_submitted(id), "job {id} was never submitted");
            ensure!(
                (job.class as usize) < self.classes.len()
                    && (job.shard as usize) < self.shards.len()
                    && self.classes[job.class as usize].origin == job.origin,
                "job {id} has a class or shard out of range, or a class of another origin"
            );
            ensure!(
                job.visited & (1u64 << job.shard) != 0 && job.generation <= self.generations,
                "job {id} is in shard {} it has not visited, or has a generation from the future",
                job.shard
            );
            if job.status == JobStatus::Queued {
                ensure!(
                    job.node == NO_NODE,
                    "queued job {id} is on node {}",
                    job.node
                );
                continue;
            }
            let node = self.nodes.get(job.node as usize);
            ensure!(
                node.is_some_and(
                    |node| node.region == job.shard && node.running.contains(&(slot as JobIx))
                ),
                "running job {id} is not listed by a node {} of its shard {}",
                job.node,
                job.shard
            );
        }
        Ok(())
    }

    /// Each node is a member of its region's shard, has sane settings, and runs only jobs that
    /// say they run on it.
    fn check_nodes(&self) -> Result<(), InvariantError> {
        let mut members = 0;
        for (ix, shard) in self.shards.iter().enumerate() {
            for node in &shard.nodes {
                ensure!(
                    self.nodes
                        .get(*node as usize)
                        .is_some_and(|node| node.region as usize == ix),
                    "shard {ix} lists node {node}, which is not in its region"
                );
            }
            members += shard.nodes.len();
        }
        ensure!(
            members == self.nodes.len(),
            "the shards list {members} nodes of {}",
            self.nodes.len()
        );
        for (ix, node) in self.nodes.iter().enumerate() {
            ensure!(
                node.max_concurrency > 0
                    && node.heartbeat_interval_ticks > 0
                    && node.reputation_ppm <= PPM,
                "node `{}` has a max concurrency or heartbeat interval of 0, or reputation over 1",
                node.name
            );
            for job in &node.running {
                ensure!(
                    self.jobs.get(*job as usize).is_some_and(|j| {
                        j.status == JobStatus::Running && j.node as usize == ix
                    }),
                    "node `{}` lists slot {job}, which does not run on it",
                    node.name
                );
            }
        }
        Ok(())
    }

    /// Each shard's queued and running counts are those of its jobs.
    fn check_shard_counts(&self) -> Result<(), InvariantError> {
        let mut queued = vec![0u64; self.shards.len()];
        let mut running = vec![0u64; self.shards.len()];
        for job in self.live_jobs() {
            match job.status {
                JobStatus::Queued => queued[job.shard as usize] += 1,
                _ => running[job.shard as usize] += 1,
            }
        }
        let mut on_nodes = vec![0u64; self.shards.len()];
        for node in &self.nodes {
            on_nodes[node.region as usize] += node.running.len() as u64;
        }
        for (ix, shard) in self.shards.iter().enumerate() {
            ensure!(
                shard.queued == queued[ix] && shard.counters.queue_peak >= shard.queued,
                "shard `{}` counts {} queued jobs (peak {}) and holds {}",
                shard.name,
                shard.queued,
                shard.counters.queue_peak,
                queued[ix]
            );
            ensure!(
                shard.running == running[ix] && shard.running == on_nodes[ix],
                "shard `{}` counts {} running jobs, its jobs say {}, its nodes {}",
                shard.name,
                shard.running,
                running[ix],
                on_nodes[ix]
            );
        }
        Ok(())
    }

    /// Each class queue's live count is the number of its entries that are still queued there,
    /// and the live counts add up to the shard's queued count.
    fn check_queues(&self) -> Result<(), InvariantError> {
        for (ix, shard) in self.shards.iter().enumerate() {
            let mut listed = 0u64;
            for (class, queue) in &shard.queues {
                let mut live = 0u64;
                for (job, generation) in &queue.entries {
                    if self.is_queued_entry(ix as ShardIx, *job, *generation) {
                        ensure!(
                            self.jobs[*job as usize].class == *class,
                            "slot {job} is queued in class {class} of shard `{}` but is of \
                             another class",
                            shard.name
                        );
                        live += 1;
                    }
                }
                ensure!(
                    queue.live == live,
                    "class {class} of shard `{}` counts {} live entries and holds {live}",
                    shard.name,
                    queue.live
                );
                listed += live;
            }
            ensure!(
                listed == shard.queued,
                "shard `{}` counts {} queued jobs and its queues hold {listed}",
                shard.name,
                shard.queued
            );
        }
        Ok(())
    }

    /// The capable lists, spillover targets and served regions are what a rebuild gives.
    fn check_derived_lists(&self) -> Result<(), InvariantError> {
        for (ix, shard) in self.shards.iter().enumerate() {
            ensure!(
                shard.capable.len() == self.classes.len(),
                "shard `{}` has capable lists for {} of {} classes",
                shard.name,
                shard.capable.len(),
                self.classes.len()
            );
            for (class_ix, class) in self.classes.iter().enumerate() {
                ensure!(
                    shard.capable[class_ix] == self.capable_list(shard, class),
                    "shard `{}`'s capable list of class {class_ix} is stale",
                    shard.name
                );
            }
            let (spillover_ix, served_mask) = self.resolved_names(ix as ShardIx);
            ensure!(
                shard.spillover_ix == spillover_ix && shard.served_mask == served_mask,
                "shard `{}`'s resolved spillover targets or served regions are stale",
                shard.name
            );
        }
        Ok(())
    }

    /// The histograms and the per-shard and per-node counters add up to the fabric's metrics.
    fn check_metrics(&self) -> Result<(), InvariantError> {
        let m = &self.metrics;
        ensure!(
            m.spills_per_job.iter().sum::<u64>() == m.submitted,
            "spills per job count {} jobs of {} submitted",
            m.spills_per_job.iter().sum::<u64>(),
            m.submitted
        );
        ensure!(
            m.latency_histogram.iter().sum::<u64>() == m.finished(),
            "the latency histogram counts {} jobs of {} finished",
            m.latency_histogram.iter().sum::<u64>(),
            m.finished()
        );
        let sum = |counter: fn(&super::ShardCounters) -> u64| -> u64 {
            self.shards
                .iter()
                .map(|shard| counter(&shard.counters))
                .sum()
        };
        let shard_sums = [
            ("submitted", sum(|c| c.submitted), m.submitted),
            ("assigned", sum(|c| c.assigned), m.assigned),
            ("completed", sum(|c| c.completed), m.completed),
            ("failed", sum(|c| c.failed), m.dropped),
            ("spilled in", sum(|c| c.spilled_in), m.spillovers),
            ("spilled out", sum(|c| c.spilled_out), m.spillovers),
            ("requeued", sum(|c| c.requeued), m.requeues),
        ];
        for (what, shards, fabric) in shard_sums {
            ensure!(
                shards == fabric,
                "the shards count {shards} jobs {what}, the fabric {fabric}"
            );
        }
        let completed: u64 = self.nodes.iter().map(|node| node.completed).sum();
        let failed: u64 = self.nodes.iter().map(|node| node.failed).sum();
        ensure!(
            completed == m.completed && failed == m.dropped,
            "the nodes count {completed} completed and {failed} failed jobs, the fabric {} and {}",
            m.completed,
            m.dropped
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fabric_events::{JobAssigned, Role};

    use super::State;
    use crate::tests::World;

    /// A change no fold makes, named.
    type Break = (&'static str, fn(&mut State));

    /// A world with queued jobs of two classes and a running one.
    fn busy_state() -> State {
        let mut world = World::new();
        world.submit(1, 1, "a", &["gpu"]);
        world.submit(1, 2, "a", &["cpu"]);
        world.submit(1, 3, "a", &["cpu"]);
        let assigned = JobAssigned {
            job: 1,
            shard: "a".into(),
            node: "a.x".into(),
        };
        world
            .apply(Role::Router, 2, assigned)
            .expect("the assignment fits");
        world.state
    }

    #[test]
    fn a_state_the_fold_could_not_leave_is_caught() {
        let state = busy_state();
        assert_eq!(state.check_invariants(), Ok(()));
        let breaks: [Break; 9] = [
            ("queued count", |s| s.shards[0].queued += 1),
            ("class queue count", |s| {
                if let Some(queue) = s.shards[0].queues.values_mut().next() {
                    queue.live += 1;
                }
            }),
            ("shard running count", |s| s.shards[0].running += 1),
            ("node's running list", |s| s.nodes[1].running.push(1)),
            ("capable list", |s| s.shards[0].capable[0].clear()),
            ("served regions", |s| s.shards[0].served_mask = 0),
            ("metrics", |s| s.metrics.submitted += 1),
            ("id index", |s| s.job_index.clear()),
            ("free slots", |s| s.free_slots.push(0)),
        ];
        for (what, break_it) in breaks {
            let mut broken = state.clone();
            break_it(&mut broken);
            assert!(broken.check_invariants().is_err(), "a broken {what}");
        }
    }
}
