//! The types of the projected state: [`State`] and what it holds (shards, nodes, jobs, job
//! classes, the set of submitted ids, metrics), with their read-only queries.
//!
//! Fields the fold maintains are `pub(super)`: only the modules of `state` change them, through
//! [`State::apply`] (`fold`, `owner`, `queues`), [`State::admit`] (`authority`) and
//! [`State::from_snapshot_bytes`] (`snapshot`).

use std::collections::{BTreeMap, HashMap};

use bincode::{Decode, Encode};
use fabric_events::{Hash32, JobId, JobType, PublicKey};

use super::queues::ClassQueue;
use super::{
    Authority, ClassIx, JobIx, NodeIx, ShardIx, LATENCY_HISTOGRAM_TICKS, NO_NODE, SHARDS_MAX,
};

/// A set of skills as a bit mask over interned skill indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct SkillSet(pub u128);

impl SkillSet {
    /// Whether every skill of `needed` is in this set.
    pub fn covers(self, needed: SkillSet) -> bool {
        self.0 & needed.0 == needed.0
    }

    /// Number of skills.
    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Where a job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum JobStatus {
    /// Waiting in a shard's queue.
    Queued,
    /// On a node.
    Running,
    /// Finished with its output.
    Completed,
    /// Finished without output.
    Failed,
    /// Cancelled by the owners.
    Cancelled,
    /// Not a job: a free slot of the job table. A job that ends leaves the state (its outcome
    /// is in the metrics and the log), so the state holds only the jobs still in the fabric.
    Vacant,
}

impl JobStatus {
    /// Whether the job is done for good (a job is only seen so in its own history).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// One step of a job's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct StatusChange {
    /// When.
    pub tick: u64,
    /// The new status.
    pub status: JobStatus,
    /// The shard it is in (or was assigned from).
    pub shard: ShardIx,
    /// The node, or `u32::MAX` for none.
    pub node: NodeIx,
}

/// A skill set and an origin region: jobs of one class are interchangeable for routing.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct JobClass {
    /// Skills a node needs.
    pub skills: SkillSet,
    /// The shard the jobs were submitted to.
    pub origin: ShardIx,
}

/// One job.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// Its class.
    pub class: ClassIx,
    /// The shard it was submitted to.
    pub origin: ShardIx,
    /// The shard whose queue holds it (or held it when assigned).
    pub shard: ShardIx,
    /// The node running or having run it, `u32::MAX` for none.
    pub node: NodeIx,
    /// Where it is.
    pub status: JobStatus,
    /// Submission tick.
    pub submitted_tick: u64,
    /// Tick of its latest assignment.
    pub started_tick: u64,
    /// Tick of its receipt.
    pub finished_tick: u64,
    /// How long it runs.
    pub duration_ticks: u32,
    /// When it should be done.
    pub deadline_tick: u64,
    /// Shards it has been queued in (bit per shard index).
    pub visited: u64,
    /// Times it moved to another shard.
    pub spills: u32,
    /// Times it went back to a queue from a node.
    pub requeues: u32,
    /// Times it was assigned.
    pub attempts: u32,
    /// A number unique to each time a job joins a queue (a state-wide counter), so stale queue
    /// entries are recognised even after the slot has passed to another job.
    pub generation: u64,
    /// Every status change, oldest first.
    pub history: Vec<StatusChange>,
}

impl Job {
    /// A free slot of the job table.
    pub fn vacant() -> Self {
        Self {
            id: 0,
            class: 0,
            origin: 0,
            shard: 0,
            node: NO_NODE,
            status: JobStatus::Vacant,
            submitted_tick: 0,
            started_tick: 0,
            finished_tick: 0,
            duration_ticks: 0,
            deadline_tick: 0,
            visited: 0,
            spills: 0,
            requeues: 0,
            attempts: 0,
            generation: 0,
            history: Vec::new(),
        }
    }
}

/// Job ids ever submitted, as disjoint ranges: submissions of consecutive ids (the usual case)
/// take one range however many jobs have come and gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdRanges {
    /// start → end (exclusive), disjoint and not adjacent.
    pub(super) ranges: BTreeMap<u64, u64>,
}

impl IdRanges {
    /// Whether `id` is in a range.
    pub fn contains(&self, id: u64) -> bool {
        self.ranges
            .range(..=id)
            .next_back()
            .is_some_and(|(_, end)| id < *end)
    }

    /// Adds `id` (which must not be in a range yet), merging with its neighbours.
    pub(super) fn insert(&mut self, id: u64) {
        let mut start = id;
        let mut end = id.saturating_add(1);
        if let Some((before_start, before_end)) = self.ranges.range(..id).next_back() {
            if *before_end == id {
                start = *before_start;
            }
        }
        if let Some(after_end) = self.ranges.get(&end).copied() {
            self.ranges.remove(&end);
            end = after_end;
        }
        self.ranges.insert(start, end);
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether no id was ever added.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, as (start, end exclusive), in order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(start, end)| (*start, *end))
    }
}

/// One node.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// The shard it serves.
    pub region: ShardIx,
    /// Its key.
    pub key: PublicKey,
    /// Units of work it can hold.
    pub capacity: u32,
    /// Jobs it may run at once.
    pub max_concurrency: u32,
    /// Ticks between heartbeats.
    pub heartbeat_interval_ticks: u32,
    /// What it can do.
    pub capabilities: SkillSet,
    /// Round-trip latency.
    pub latency_ms: u32,
    /// Price in millionths of a credit per hour.
    pub price_micros_per_hour: u64,
    /// Reputation now.
    pub reputation_ppm: u32,
    /// When it registered.
    pub registered_tick: u64,
    /// Whether the fabric considers it alive.
    pub healthy: bool,
    /// Whether the owners stopped giving it work.
    pub draining: bool,
    /// Its latest heartbeat (registration counts as one).
    pub last_heartbeat_tick: u64,
    /// When it last became unhealthy.
    pub unhealthy_since_tick: u64,
    /// Ticks spent unhealthy before the current episode.
    pub unhealthy_ticks_total: u64,
    /// Times it became unhealthy.
    pub outages: u32,
    /// Jobs on it now, in assignment order.
    pub running: Vec<JobIx>,
    /// The quota window its `quota_used` counts in.
    pub quota_window: u64,
    /// Jobs taken in that window.
    pub quota_used: u32,
    /// Jobs it completed.
    pub completed: u64,
    /// Jobs that failed on it.
    pub failed: u64,
    /// Whether the owners retired it (its key too).
    pub retired: bool,
    /// Its treaty takes no new assignments before this tick (after an attestation mismatch).
    pub halted_until_tick: u64,
    /// Receipts of it that re-execution contradicted.
    pub attestation_failures: u32,
}

impl Node {
    /// Whether it may be given a job at `tick`: healthy, not draining, treaty not halted.
    pub fn takes_work(&self, tick: u64) -> bool {
        self.healthy && !self.draining && self.halted_until_tick <= tick
    }

    /// Share of its life it was healthy, as a fraction at `tick`.
    pub fn availability(&self, tick: u64) -> f64 {
        let lifetime = tick.saturating_sub(self.registered_tick) + 1;
        let mut down = self.unhealthy_ticks_total;
        if !self.healthy {
            down += tick.saturating_sub(self.unhealthy_since_tick);
        }
        1.0 - (down.min(lifetime) as f64 / lifetime as f64)
    }

    /// Jobs it may still take in the quota window of `tick`.
    pub fn quota_left(&self, tick: u64, quota_jobs: u32, window_ticks: u32) -> u32 {
        let window = tick / u64::from(window_ticks.max(1));
        if window != self.quota_window {
            quota_jobs
        } else {
            quota_jobs.saturating_sub(self.quota_used)
        }
    }
}

/// Per-shard counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct ShardCounters {
    /// Jobs submitted to it.
    pub submitted: u64,
    /// Jobs its nodes completed.
    pub completed: u64,
    /// Jobs that failed on its nodes.
    pub failed: u64,
    /// Jobs that arrived by spillover.
    pub spilled_in: u64,
    /// Jobs it handed to other shards.
    pub spilled_out: u64,
    /// Jobs requeued into it.
    pub requeued: u64,
    /// Jobs assigned to its nodes.
    pub assigned: u64,
    /// Longest its queue was.
    pub queue_peak: u64,
    /// Sum of submission-to-receipt latency of the jobs its nodes finished.
    pub latency_ticks_sum: u64,
}

impl ShardCounters {
    /// Mean submission-to-receipt latency of the jobs its nodes finished, in ticks.
    pub fn latency_ticks_mean(&self) -> f64 {
        let finished = self.completed + self.failed;
        if finished == 0 {
            0.0
        } else {
            self.latency_ticks_sum as f64 / finished as f64
        }
    }
}

fabric_events::with_shard_terms! {
    /// One shard: its name and key, its terms (as registered, changed by owner commands), and
    /// what the fabric made of it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Shard {
        /// Its name, also its region.
        pub name: String,
        /// The key that signs its routing decisions.
        pub router_key: PublicKey,
        /// Whether the owners paused it.
        pub paused: bool,
        /// Whether the owners retired it: paused for good, no intake, no spill target.
        pub retired: bool,
        /// Its nodes, in registration order.
        pub nodes: Vec<NodeIx>,
        /// Jobs running on its nodes.
        pub running: u64,
        /// Counters.
        pub counters: ShardCounters,
        pub(super) queues: BTreeMap<ClassIx, ClassQueue>,
        pub(super) queued: u64,
        /// Per class: nodes that could ever take it (skills, latency, region served), sorted by
        /// node name. Derived from the rest; rebuilt when the inputs change.
        pub(super) capable: Vec<Vec<NodeIx>>,
        pub(super) spillover_ix: Vec<ShardIx>,
        pub(super) served_mask: u64,
    }
}

impl Shard {
    /// Jobs waiting in its queue.
    pub fn queued(&self) -> u64 {
        self.queued
    }

    /// Spillover targets that are registered, first preferred.
    pub fn spillover_targets(&self) -> &[ShardIx] {
        &self.spillover_ix
    }

    /// Whether the treaty serves jobs from `origin`.
    pub fn serves(&self, origin: ShardIx) -> bool {
        self.served_mask & (1u64 << origin) != 0
    }

    /// Nodes that could ever take jobs of `class`, sorted by name.
    pub fn capable_nodes(&self, class: ClassIx) -> &[NodeIx] {
        self.capable
            .get(class as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Classes with queued jobs, in class order, with their queued count.
    pub fn queued_classes(&self) -> impl Iterator<Item = (ClassIx, u64)> + '_ {
        self.queues
            .iter()
            .filter(|(_, queue)| queue.live > 0)
            .map(|(class, queue)| (*class, queue.live))
    }
}

/// Fabric-wide counters.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Metrics {
    /// Jobs submitted.
    pub submitted: u64,
    /// Assignments made.
    pub assigned: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Jobs dropped: their run failed on the node and they are not retried.
    pub dropped: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Spillovers.
    pub spillovers: u64,
    /// Requeues.
    pub requeues: u64,
    /// Node failures (a node became unhealthy).
    pub failures: u64,
    /// Jobs finished after their deadline.
    pub deadline_missed: u64,
    /// Heartbeats.
    pub heartbeats: u64,
    /// Checkpoints.
    pub checkpoints: u64,
    /// Rejections recorded.
    pub rejections: u64,
    /// Owner commands applied.
    pub owner_commands: u64,
    /// Receipts re-execution contradicted.
    pub attestation_mismatches: u64,
    /// Sum of submission-to-receipt latency over finished jobs.
    pub latency_ticks_sum: u64,
    /// Largest submission-to-receipt latency.
    pub latency_ticks_max: u64,
    /// Finished jobs per latency in ticks (the last bucket holds everything longer).
    pub latency_histogram: Vec<u64>,
    /// Jobs by how many times they moved shards (index = spills; the last index holds more).
    pub spills_per_job: Vec<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            submitted: 0,
            assigned: 0,
            completed: 0,
            dropped: 0,
            cancelled: 0,
            spillovers: 0,
            requeues: 0,
            failures: 0,
            deadline_missed: 0,
            heartbeats: 0,
            checkpoints: 0,
            rejections: 0,
            owner_commands: 0,
            attestation_mismatches: 0,
            latency_ticks_sum: 0,
            latency_ticks_max: 0,
            latency_histogram: vec![0; LATENCY_HISTOGRAM_TICKS + 1],
            spills_per_job: vec![0; SHARDS_MAX + 1],
        }
    }
}

impl Metrics {
    /// Every movement of a job so far: submissions, assignments, spills, requeues, finishes
    /// and cancellations. It only grows.
    pub fn jobs_moved(&self) -> u64 {
        self.submitted
            + self.assigned
            + self.spillovers
            + self.requeues
            + self.finished()
            + self.cancelled
    }

    /// Jobs finished (completed or dropped).
    pub fn finished(&self) -> u64 {
        self.completed + self.dropped
    }

    /// Completed jobs as a share of submitted ones.
    pub fn fill_rate(&self) -> f64 {
        if self.submitted == 0 {
            0.0
        } else {
            self.completed as f64 / self.submitted as f64
        }
    }

    /// Mean latency of finished jobs, in ticks.
    pub fn latency_ticks_mean(&self) -> f64 {
        let finished = self.finished();
        if finished == 0 {
            0.0
        } else {
            self.latency_ticks_sum as f64 / finished as f64
        }
    }

    /// The latency (ticks) under which a `quantile` (0..=1) of finished jobs fall.
    pub fn latency_ticks_quantile(&self, quantile: f64) -> u64 {
        let finished: u64 = self.latency_histogram.iter().sum();
        if finished == 0 {
            return 0;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * finished as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ticks, count) in self.latency_histogram.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return ticks as u64;
            }
        }
        self.latency_ticks_max
    }
}

/// A registered model: jobs whose workload is `model_id@model_version` run its job type with
/// its weights (content address `weights_hash`; the weights themselves are in its
/// registration, in the log).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Model {
    /// Its id.
    pub model_id: String,
    /// Its version.
    pub model_version: String,
    /// Its job type (kernel and sizes).
    pub job_type: JobType,
    /// BLAKE3 of its weights.
    pub weights_hash: Hash32,
    /// The tick of the command that registered it.
    pub registered_tick: u64,
}

impl Model {
    /// The workload string of its jobs: `model_id@model_version`.
    pub fn workload(&self) -> String {
        fabric_events::model::workload(&self.model_id, &self.model_version)
    }
}

/// The projected state. Only [`State::apply`] changes it.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub(super) tick: u64,
    pub(super) events_applied: u64,
    pub(super) anomalies: u64,
    pub(super) last_checkpoint_tree_size: u64,
    pub(super) jobs_moved_tick: u64,
    pub(super) generations: u64,
    pub(super) shards: Vec<Shard>,
    pub(super) nodes: Vec<Node>,
    /// The job table: jobs still in the fabric, and vacant slots (listed in `free_slots`, reused
    /// last freed first) of jobs that ended.
    pub(super) jobs: Vec<Job>,
    pub(super) free_slots: Vec<JobIx>,
    pub(super) submitted_ids: IdRanges,
    pub(super) classes: Vec<JobClass>,
    pub(super) skills: Vec<String>,
    pub(super) metrics: Metrics,
    pub(super) shard_index: HashMap<String, ShardIx>,
    pub(super) node_index: HashMap<String, NodeIx>,
    pub(super) job_index: HashMap<JobId, JobIx>,
    pub(super) skill_index: HashMap<String, u8>,
    pub(super) class_index: HashMap<(u128, ShardIx), ClassIx>,
    pub(super) authority: Authority,
    /// The owners' checkpoint interval (0: the run's configured one).
    pub(super) checkpoint_interval_ticks: u32,
    /// An owner asked for a checkpoint at the next tick.
    pub(super) checkpoint_requested: bool,
    /// The registered models by workload (`model_id@model_version`), in byte order.
    pub(super) models: BTreeMap<String, Model>,
    /// The sequencers of a replicated fabric and its term.
    pub(super) sequencing: Sequencing,
    /// Federation peers, recorders and recorded artifacts.
    pub(super) covenant: super::Covenant,
}

/// The sequencers of a replicated fabric (docs/FORMAT.md §16): registered by owner command
/// (`register_sequencer`), each may take the log over with a signed `sequencer_takeover`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Sequencing {
    /// The log's term: its takeovers so far (the genesis opens term 0).
    pub term: u64,
    /// The registered sequencer keys, in registration order (a retired one leaves). The
    /// genesis ledger key is a sequencer without being listed.
    pub keys: Vec<PublicKey>,
}

impl State {
    /// The sequencers of a replicated fabric and its term.
    pub fn sequencing(&self) -> &Sequencing {
        &self.sequencing
    }

    /// An empty fabric.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tick of the latest event applied.
    pub fn tick(&self) -> u64 {
        self.tick
    }

    /// The tick of the latest event that moved a job (submitted, assigned, spilled, requeued,
    /// finished or cancelled it): a run that sees no movement for long enough has stalled.
    pub fn jobs_moved_tick(&self) -> u64 {
        self.jobs_moved_tick
    }

    /// Events applied, including anomalies.
    pub fn events_applied(&self) -> u64 {
        self.events_applied
    }

    /// Events that did not fit and changed nothing.
    pub fn anomalies(&self) -> u64 {
        self.anomalies
    }

    /// Shards, by index.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The job table by index: the jobs still in the fabric (queued or running) and vacant
    /// slots ([`JobStatus::Vacant`]) of jobs that ended.
    pub fn jobs(&self) -> &[Job] {
        &self.jobs
    }

    /// The jobs still in the fabric (queued or running), by index.
    pub fn live_jobs(&self) -> impl Iterator<Item = &Job> + '_ {
        self.jobs
            .iter()
            .filter(|job| job.status != JobStatus::Vacant)
    }

    /// Whether a job with this id was ever submitted (it may have ended since).
    pub fn was_submitted(&self, job: JobId) -> bool {
        self.submitted_ids.contains(job)
    }

    /// Job classes, by index.
    pub fn classes(&self) -> &[JobClass] {
        &self.classes
    }

    /// Fabric-wide metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The authority table: ledger key, owners, registered keys, owner command nonces and
    /// rejections by reason.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The checkpoint interval the owners set (`None`: the configured one).
    pub fn checkpoint_interval_ticks(&self) -> Option<u32> {
        (self.checkpoint_interval_ticks > 0).then_some(self.checkpoint_interval_ticks)
    }

    /// Whether an owner asked for a checkpoint that has not been taken yet.
    pub fn checkpoint_requested(&self) -> bool {
        self.checkpoint_requested
    }

    /// The model a workload names (`model_id@model_version`), if one is registered.
    pub fn model(&self, workload: &str) -> Option<&Model> {
        self.models.get(workload)
    }

    /// The registered models, by workload in byte order.
    pub fn models(&self) -> impl Iterator<Item = &Model> + '_ {
        self.models.values()
    }

    /// A shard's index by name.
    pub fn shard_ix(&self, name: &str) -> Option<ShardIx> {
        self.shard_index.get(name).copied()
    }

    /// A node's index by name.
    pub fn node_ix(&self, name: &str) -> Option<NodeIx> {
        self.node_index.get(name).copied()
    }

    /// A live job's index by id (`None` once it has ended).
    pub fn job_ix(&self, job: JobId) -> Option<JobIx> {
        self.job_index.get(&job).copied()
    }

    /// The skill set of names, if every name is a known skill.
    pub fn skill_set(&self, names: &[String]) -> Option<SkillSet> {
        let mut set = 0u128;
        for name in names {
            set |= 1u128 << *self.skill_index.get(name)?;
        }
        Some(SkillSet(set))
    }
}
