//! [`State`]: the fold of the log into shards, nodes, jobs and metrics.
//!
//! Names are interned into dense indices as they first appear, in log order, so every index
//! is a function of the log alone. Maps are used only for lookups and never iterated into
//! anything observable: what the state shows and hashes is ordered by those indices.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bincode::{Decode, Encode};
use fabric_events::{
    AttestationMismatch, Body, Event, FabricGenesis, Hash32, JobAssigned, JobId, JobOutcome,
    JobReceipt, JobRequeued, JobSpilled, JobSubmitted, NodeHealthChanged, NodeRegistered,
    OwnerAction, PublicKey, RejectReason, RetiredQueue, Role, ShardRegistered,
};
use thiserror::Error;

mod authority;
pub use authority::{Authority, Holder, KeyRecord, OWNER_COMMAND_LIFETIME_TICKS_MAX};

/// Index of a shard, in registration order.
pub type ShardIx = u16;
/// Index of a node, in registration order.
pub type NodeIx = u32;
/// Index of a job, in submission order.
pub type JobIx = u32;
/// Index of a job class (skills + origin region), in order of first appearance.
pub type ClassIx = u32;

/// Most shards a fabric has (visited shards are a 64-bit mask).
pub const SHARDS_MAX: usize = 64;
/// Most distinct skills (a skill set is a 128-bit mask).
pub const SKILLS_MAX: usize = 128;
/// Most distinct job classes.
pub const CLASSES_MAX: usize = 4096;
/// Most jobs one state holds.
pub const JOBS_MAX: usize = u32::MAX as usize - 1;
/// Reputation gained per completed job.
pub const REPUTATION_COMPLETED_PPM: u32 = 1_000;
/// Reputation lost per failed job.
pub const REPUTATION_FAILED_PPM: u32 = 20_000;
/// Reputation lost per outage.
pub const REPUTATION_OUTAGE_PPM: u32 = 50_000;
/// Reputation lost per receipt that re-execution contradicts.
pub const REPUTATION_ATTESTATION_PPM: u32 = 20_000;
/// Ticks a node's treaty is halted (no new assignments) after an attestation mismatch.
pub const ATTESTATION_HALT_TICKS: u64 = 10;
/// Latencies above this many ticks share the histogram's last bucket.
pub const LATENCY_HISTOGRAM_TICKS: usize = 4096;

const PPM: u32 = 1_000_000;
const NO_NODE: NodeIx = NodeIx::MAX;

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
    ranges: BTreeMap<u64, u64>,
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
    fn insert(&mut self, id: u64) {
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

/// One shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Its name, also its region.
    pub name: String,
    /// The key that signs its routing decisions.
    pub router_key: PublicKey,
    /// Jobs it may hold queued before it spills.
    pub queue_budget: u32,
    /// Largest node latency it accepts.
    pub latency_budget_ms: u32,
    /// Where it spills, first preferred, by name (a name may be registered later).
    pub spillover: Vec<String>,
    /// What it is known for.
    pub specialties: Vec<String>,
    /// Treaty: nodes under this reputation score zero.
    pub reputation_floor_ppm: u32,
    /// Treaty: origin regions served, by name.
    pub regions_served: Vec<String>,
    /// Treaty: jobs one node may take per window.
    pub node_quota_jobs: u32,
    /// Treaty: window length.
    pub quota_window_ticks: u32,
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
    queues: BTreeMap<ClassIx, ClassQueue>,
    queued: u64,
    /// Per class: nodes that could ever take it (skills, latency, region served), sorted by
    /// node name. Derived from the rest; rebuilt when the inputs change.
    capable: Vec<Vec<NodeIx>>,
    spillover_ix: Vec<ShardIx>,
    served_mask: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ClassQueue {
    entries: VecDeque<(JobIx, u64)>,
    live: u64,
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

/// Why an event does not fit the state. The state is left as it was (but for the anomaly
/// count), so a replay of a log with such an event stays deterministic.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The author's role may not say this.
    #[error("a {role} may not author {kind}")]
    WrongRole {
        /// The role.
        role: &'static str,
        /// The kind.
        kind: &'static str,
    },
    /// A name is not registered.
    #[error("unknown {what} `{name}`")]
    Unknown {
        /// Shard, node.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A job id is not known.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// A name or job registered twice.
    #[error("{what} `{name}` is already registered")]
    Duplicate {
        /// Shard, node, job.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The event contradicts the state.
    #[error("{0}")]
    Conflict(String),
    /// A limit of the state is reached.
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// The authority table refuses the event: the ledger records a `Rejected` event instead.
    #[error("refused ({}): {detail}", reason.as_str())]
    Refused {
        /// Why, as recorded.
        reason: RejectReason,
        /// What exactly.
        detail: String,
    },
}

impl ApplyError {
    /// The reason a `Rejected` event records for this error: the refusal's own, or `invalid`
    /// for an event that does not fit the state.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            ApplyError::Refused { reason, .. } => *reason,
            _ => RejectReason::Invalid,
        }
    }
}

/// The projected state. Only [`State::apply`] changes it.
#[derive(Clone, Debug, Default)]
pub struct State {
    tick: u64,
    events_applied: u64,
    anomalies: u64,
    last_checkpoint_tree_size: u64,
    jobs_moved_tick: u64,
    generations: u64,
    shards: Vec<Shard>,
    nodes: Vec<Node>,
    /// The job table: jobs still in the fabric, and vacant slots (listed in `free_slots`, reused
    /// last freed first) of jobs that ended.
    jobs: Vec<Job>,
    free_slots: Vec<JobIx>,
    submitted_ids: IdRanges,
    classes: Vec<JobClass>,
    skills: Vec<String>,
    metrics: Metrics,
    shard_index: HashMap<String, ShardIx>,
    node_index: HashMap<String, NodeIx>,
    job_index: HashMap<JobId, JobIx>,
    skill_index: HashMap<String, u8>,
    class_index: HashMap<(u128, ShardIx), ClassIx>,
    authority: Authority,
    /// The owners' checkpoint interval (0: the run's configured one).
    checkpoint_interval_ticks: u32,
    /// An owner asked for a checkpoint at the next tick.
    checkpoint_requested: bool,
}

impl State {
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

    fn is_queued_entry(&self, shard: ShardIx, job: JobIx, generation: u64) -> bool {
        let job = &self.jobs[job as usize];
        job.status == JobStatus::Queued && job.shard == shard && job.generation == generation
    }

    /// Folds one event in without judging its author (see [`State::admit`] for the ledger's
    /// rule, which every log is replayed with). An event that does not fit is counted as an
    /// anomaly and changes nothing else.
    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        self.events_applied += 1;
        self.tick = self.tick.max(event.header.tick);
        let moved_before = self.metrics.jobs_moved();
        let result = self.apply_body(event);
        if result.is_err() {
            self.anomalies += 1;
        }
        if self.metrics.jobs_moved() != moved_before {
            self.jobs_moved_tick = self.jobs_moved_tick.max(event.header.tick);
        }
        result
    }

    fn apply_body(&mut self, event: &Event) -> Result<(), ApplyError> {
        let tick = event.header.tick;
        let role = event.header.role;
        let kind = event.kind();
        let expect = |wanted: Role| {
            if role == wanted {
                Ok(())
            } else {
                Err(ApplyError::WrongRole {
                    role: role.as_str(),
                    kind: kind.as_str(),
                })
            }
        };
        match &event.body {
            Body::FabricGenesis(body) => {
                expect(Role::Ledger)?;
                self.found(body)
            }
            Body::ShardRegistered(body) => {
                expect(Role::Owner)?;
                self.register_shard(body)
            }
            Body::NodeRegistered(body) => {
                expect(Role::Owner)?;
                self.register_node(body, tick)
            }
            Body::JobSubmitted(body) => {
                expect(Role::Client)?;
                self.submit(body, tick)
            }
            Body::JobAssigned(body) => {
                expect(Role::Router)?;
                self.assign(body, tick)
            }
            Body::JobSpilled(body) => {
                expect(Role::Router)?;
                self.spill(body, tick)
            }
            Body::Heartbeat(body) => {
                expect(Role::Node)?;
                let node = self.lookup_node(&body.node)?;
                let node = &mut self.nodes[node as usize];
                node.last_heartbeat_tick = node.last_heartbeat_tick.max(tick);
                self.metrics.heartbeats += 1;
                Ok(())
            }
            Body::NodeHealthChanged(body) => {
                expect(Role::Router)?;
                self.health(body, tick)
            }
            Body::JobRequeued(body) => {
                expect(Role::Router)?;
                self.requeue(body, tick)
            }
            Body::JobReceipt(body) => {
                expect(Role::Node)?;
                self.receipt(body, tick)
            }
            Body::OwnerCommand(body) => {
                expect(Role::Owner)?;
                self.owner_action(&body.action, tick)?;
                self.metrics.owner_commands += 1;
                Ok(())
            }
            Body::Checkpoint(body) => {
                expect(Role::Ledger)?;
                self.last_checkpoint_tree_size = body.tree_size;
                self.checkpoint_requested = false;
                self.metrics.checkpoints += 1;
                Ok(())
            }
            Body::AttestationMismatch(body) => {
                expect(Role::Ledger)?;
                self.attestation_mismatch(body, tick)
            }
            Body::Rejected(body) => {
                expect(Role::Ledger)?;
                self.metrics.rejections += 1;
                self.authority.count_rejection(body.reason);
                Ok(())
            }
        }
    }

    fn lookup_shard(&self, name: &str) -> Result<ShardIx, ApplyError> {
        self.shard_ix(name).ok_or_else(|| ApplyError::Unknown {
            what: "shard",
            name: name.to_owned(),
        })
    }

    fn lookup_node(&self, name: &str) -> Result<NodeIx, ApplyError> {
        self.node_ix(name).ok_or_else(|| ApplyError::Unknown {
            what: "node",
            name: name.to_owned(),
        })
    }

    fn lookup_job(&self, job: JobId) -> Result<JobIx, ApplyError> {
        self.job_ix(job).ok_or(ApplyError::UnknownJob(job))
    }

    fn intern_skills(&mut self, names: &[String]) -> Result<SkillSet, ApplyError> {
        let new = names
            .iter()
            .filter(|name| !self.skill_index.contains_key(*name))
            .collect::<std::collections::BTreeSet<_>>();
        if self.skills.len() + new.len() > SKILLS_MAX {
            return Err(ApplyError::Limit("128 distinct skills"));
        }
        for name in names {
            if !self.skill_index.contains_key(name) {
                self.skill_index
                    .insert(name.clone(), self.skills.len() as u8);
                self.skills.push(name.clone());
            }
        }
        Ok(self.skill_set(names).unwrap_or_default())
    }

    fn register_shard(&mut self, body: &ShardRegistered) -> Result<(), ApplyError> {
        if self.shard_index.contains_key(&body.shard) {
            return Err(ApplyError::Duplicate {
                what: "shard",
                name: body.shard.clone(),
            });
        }
        if self.shards.len() >= SHARDS_MAX {
            return Err(ApplyError::Limit("64 shards"));
        }
        let index = self.shards.len() as ShardIx;
        self.shard_index.insert(body.shard.clone(), index);
        self.shards.push(Shard {
            name: body.shard.clone(),
            router_key: body.router_key,
            queue_budget: body.queue_budget,
            latency_budget_ms: body.latency_budget_ms,
            spillover: body.spillover.clone(),
            specialties: body.specialties.clone(),
            reputation_floor_ppm: body.reputation_floor_ppm,
            regions_served: body.regions_served.clone(),
            node_quota_jobs: body.node_quota_jobs,
            quota_window_ticks: body.quota_window_ticks.max(1),
            paused: false,
            retired: false,
            nodes: Vec::new(),
            running: 0,
            counters: ShardCounters::default(),
            queues: BTreeMap::new(),
            queued: 0,
            capable: Vec::new(),
            spillover_ix: Vec::new(),
            served_mask: 0,
        });
        self.authority
            .register_key(body.router_key, Holder::Router(index));
        // A new name may complete other shards' rules and treaties.
        for shard in 0..self.shards.len() {
            self.resolve_shard_names(shard as ShardIx);
            self.rebuild_capable(shard as ShardIx);
        }
        Ok(())
    }

    fn resolve_shard_names(&mut self, shard: ShardIx) {
        let (spillover_ix, served_mask) = {
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
        };
        let s = &mut self.shards[shard as usize];
        s.spillover_ix = spillover_ix;
        s.served_mask = served_mask;
    }

    fn node_capable(&self, shard: &Shard, node: NodeIx, class: &JobClass) -> bool {
        let node = &self.nodes[node as usize];
        node.capabilities.covers(class.skills)
            && node.latency_ms <= shard.latency_budget_ms
            && shard.serves(class.origin)
    }

    /// The nodes of `shard` that could take `class`, sorted by name.
    fn capable_list(&self, shard: &Shard, class: &JobClass) -> Vec<NodeIx> {
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
    fn rebuild_capable(&mut self, shard: ShardIx) {
        let s = &self.shards[shard as usize];
        let capable = self
            .classes
            .iter()
            .map(|class| self.capable_list(s, class))
            .collect();
        self.shards[shard as usize].capable = capable;
    }

    fn register_node(&mut self, body: &NodeRegistered, tick: u64) -> Result<(), ApplyError> {
        if self.node_index.contains_key(&body.node) {
            return Err(ApplyError::Duplicate {
                what: "node",
                name: body.node.clone(),
            });
        }
        let region = self.lookup_shard(&body.region)?;
        if body.max_concurrency == 0 || body.heartbeat_interval_ticks == 0 {
            return Err(ApplyError::Conflict(format!(
                "node `{}` needs a max concurrency and a heartbeat interval of at least 1",
                body.node
            )));
        }
        if self.nodes.len() >= NO_NODE as usize {
            return Err(ApplyError::Limit("u32::MAX nodes"));
        }
        let capabilities = self.intern_skills(&body.capabilities)?;
        let index = self.nodes.len() as NodeIx;
        self.node_index.insert(body.node.clone(), index);
        self.nodes.push(Node {
            name: body.node.clone(),
            region,
            key: body.node_key,
            capacity: body.capacity,
            max_concurrency: body.max_concurrency,
            heartbeat_interval_ticks: body.heartbeat_interval_ticks,
            capabilities,
            latency_ms: body.latency_ms,
            price_micros_per_hour: body.price_micros_per_hour,
            reputation_ppm: body.reputation_ppm.min(PPM),
            registered_tick: tick,
            healthy: true,
            draining: false,
            last_heartbeat_tick: tick,
            unhealthy_since_tick: 0,
            unhealthy_ticks_total: 0,
            outages: 0,
            running: Vec::new(),
            quota_window: 0,
            quota_used: 0,
            completed: 0,
            failed: 0,
            retired: false,
            halted_until_tick: 0,
            attestation_failures: 0,
        });
        self.authority
            .register_key(body.node_key, Holder::Node(index));
        // Keep the shard's capable lists sorted by name: insert where the name belongs.
        let shard = &mut self.shards[region as usize];
        shard.nodes.push(index);
        let shard = &self.shards[region as usize];
        let mut inserts = Vec::new();
        for (class_ix, class) in self.classes.iter().enumerate() {
            if self.node_capable(shard, index, class) {
                let list = &shard.capable[class_ix];
                let at = list.partition_point(|other| {
                    self.nodes[*other as usize].name.as_str() < body.node.as_str()
                });
                inserts.push((class_ix, at));
            }
        }
        let shard = &mut self.shards[region as usize];
        for (class_ix, at) in inserts {
            shard.capable[class_ix].insert(at, index);
        }
        Ok(())
    }

    fn class_of(&mut self, skills: SkillSet, origin: ShardIx) -> Result<ClassIx, ApplyError> {
        if let Some(class) = self.class_index.get(&(skills.0, origin)) {
            return Ok(*class);
        }
        if self.classes.len() >= CLASSES_MAX {
            return Err(ApplyError::Limit("4096 job classes"));
        }
        let class_ix = self.classes.len() as ClassIx;
        let class = JobClass { skills, origin };
        for shard_ix in 0..self.shards.len() {
            let list = self.capable_list(&self.shards[shard_ix], &class);
            self.shards[shard_ix].capable.push(list);
        }
        self.classes.push(class);
        self.class_index.insert((skills.0, origin), class_ix);
        Ok(class_ix)
    }

    fn enqueue(&mut self, job: JobIx, shard: ShardIx) {
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
    }

    /// Marks a queued job as leaving its shard's queue; drops stale entries at the ends.
    fn dequeue(&mut self, job: JobIx) {
        let (shard, class) = {
            let j = &self.jobs[job as usize];
            (j.shard, j.class)
        };
        // The caller changes the job's status next, which makes its entry stale.
        let s = &mut self.shards[shard as usize];
        s.queued -= 1;
        if let Some(queue) = s.queues.get_mut(&class) {
            queue.live -= 1;
        }
    }

    /// Drops stale entries from both ends of a class queue, so the live jobs stay near the ends.
    fn compact(&mut self, shard: ShardIx, class: ClassIx) {
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
        if queue.entries.is_empty() {
            s.queues.remove(&class);
        }
    }

    fn record(&mut self, job: JobIx, tick: u64) {
        let j = &mut self.jobs[job as usize];
        j.history.push(StatusChange {
            tick,
            status: j.status,
            shard: j.shard,
            node: j.node,
        });
    }

    fn submit(&mut self, body: &JobSubmitted, tick: u64) -> Result<(), ApplyError> {
        let shard = self.lookup_shard(&body.shard)?;
        if self.shards[shard as usize].retired {
            return Err(ApplyError::Conflict(format!(
                "shard `{}` is retired and takes no jobs",
                body.shard
            )));
        }
        if self.submitted_ids.contains(body.job) {
            return Err(ApplyError::Duplicate {
                what: "job",
                name: body.job.to_string(),
            });
        }
        if self.free_slots.is_empty() && self.jobs.len() >= JOBS_MAX {
            return Err(ApplyError::Limit("u32::MAX jobs in the fabric at once"));
        }
        if body.duration_ticks == 0 {
            return Err(ApplyError::Conflict(format!(
                "job {} has a duration of 0 ticks",
                body.job
            )));
        }
        let skills = self.intern_skills(&body.skills)?;
        let class = self.class_of(skills, shard)?;
        let job = Job {
            id: body.job,
            class,
            origin: shard,
            shard,
            node: NO_NODE,
            status: JobStatus::Queued,
            submitted_tick: tick,
            started_tick: 0,
            finished_tick: 0,
            duration_ticks: body.duration_ticks,
            deadline_tick: body.deadline_tick,
            visited: 0,
            spills: 0,
            requeues: 0,
            attempts: 0,
            generation: 0,
            history: Vec::with_capacity(3),
        };
        let index = match self.free_slots.pop() {
            Some(slot) => {
                self.jobs[slot as usize] = job;
                slot
            }
            None => {
                self.jobs.push(job);
                (self.jobs.len() - 1) as JobIx
            }
        };
        self.job_index.insert(body.job, index);
        self.submitted_ids.insert(body.job);
        self.enqueue(index, shard);
        self.record(index, tick);
        self.shards[shard as usize].counters.submitted += 1;
        self.metrics.submitted += 1;
        self.metrics.spills_per_job[0] += 1;
        Ok(())
    }

    fn queued_job_in(&self, job: JobId, shard_name: &str) -> Result<(JobIx, ShardIx), ApplyError> {
        let job_ix = self.lookup_job(job)?;
        let shard = self.lookup_shard(shard_name)?;
        let j = &self.jobs[job_ix as usize];
        if j.status != JobStatus::Queued || j.shard != shard {
            return Err(ApplyError::Conflict(format!(
                "job {job} is not queued in shard `{shard_name}`"
            )));
        }
        Ok((job_ix, shard))
    }

    fn assign(&mut self, body: &JobAssigned, tick: u64) -> Result<(), ApplyError> {
        let (job, shard) = self.queued_job_in(body.job, &body.shard)?;
        let node_ix = self.lookup_node(&body.node)?;
        let node = &self.nodes[node_ix as usize];
        let s = &self.shards[shard as usize];
        let class = &self.classes[self.jobs[job as usize].class as usize];
        let refuse = |why: &str| {
            Err(ApplyError::Conflict(format!(
                "job {} may not go to node `{}`: {why}",
                body.job, body.node
            )))
        };
        if node.region != shard {
            return refuse("the node is in another shard");
        }
        if !node.healthy {
            return refuse("the node is unhealthy");
        }
        if node.draining {
            return refuse("the node is draining");
        }
        if node.halted_until_tick > tick {
            return refuse("the node's treaty is halted after an attestation mismatch");
        }
        if !node.capabilities.covers(class.skills) {
            return refuse("the node lacks the job's skills");
        }
        if node.running.len() as u32 >= node.max_concurrency {
            return refuse("the node is at its max concurrency");
        }
        if node.quota_left(tick, s.node_quota_jobs, s.quota_window_ticks) == 0 {
            return refuse("the node's treaty quota is used up");
        }
        let window = tick / u64::from(s.quota_window_ticks);
        self.dequeue(job);
        let j = &mut self.jobs[job as usize];
        j.status = JobStatus::Running;
        j.node = node_ix;
        j.started_tick = tick;
        j.attempts += 1;
        let class = j.class;
        let node = &mut self.nodes[node_ix as usize];
        node.running.push(job);
        if node.quota_window != window {
            node.quota_window = window;
            node.quota_used = 0;
        }
        node.quota_used += 1;
        let s = &mut self.shards[shard as usize];
        s.running += 1;
        s.counters.assigned += 1;
        self.metrics.assigned += 1;
        self.compact(shard, class);
        self.record(job, tick);
        Ok(())
    }

    fn spill(&mut self, body: &JobSpilled, tick: u64) -> Result<(), ApplyError> {
        let (job, from) = self.queued_job_in(body.job, &body.from_shard)?;
        let to = self.lookup_shard(&body.to_shard)?;
        if to == from {
            return Err(ApplyError::Conflict(format!(
                "job {} cannot spill from `{}` to itself",
                body.job, body.to_shard
            )));
        }
        self.spill_queued(job, from, to, tick);
        Ok(())
    }

    /// Moves a job queued in `from` to the queue of `to`, counted as a spill.
    fn spill_queued(&mut self, job: JobIx, from: ShardIx, to: ShardIx, tick: u64) {
        let class = self.jobs[job as usize].class;
        self.dequeue(job);
        let j = &mut self.jobs[job as usize];
        j.spills += 1;
        let spills = j.spills as usize;
        let per_job = &mut self.metrics.spills_per_job;
        per_job[(spills - 1).min(SHARDS_MAX)] -= 1;
        per_job[spills.min(SHARDS_MAX)] += 1;
        self.enqueue(job, to);
        self.compact(from, class);
        self.shards[from as usize].counters.spilled_out += 1;
        self.shards[to as usize].counters.spilled_in += 1;
        self.metrics.spillovers += 1;
        self.record(job, tick);
    }

    /// Cancels a queued job: it leaves its queue and the job table.
    fn cancel_queued(&mut self, job: JobIx) {
        let (shard, class) = (self.jobs[job as usize].shard, self.jobs[job as usize].class);
        self.dequeue(job);
        self.jobs[job as usize].status = JobStatus::Cancelled;
        self.compact(shard, class);
        self.metrics.cancelled += 1;
        self.vacate(job);
    }

    /// Takes a running job off its node and queues it in `shard` again, counted as a requeue.
    fn requeue_running(&mut self, job: JobIx, shard: ShardIx, tick: u64) {
        self.release(job);
        let j = &mut self.jobs[job as usize];
        j.requeues += 1;
        j.node = NO_NODE;
        self.enqueue(job, shard);
        self.shards[shard as usize].counters.requeued += 1;
        self.metrics.requeues += 1;
        self.record(job, tick);
    }

    fn health(&mut self, body: &NodeHealthChanged, tick: u64) -> Result<(), ApplyError> {
        let node_ix = self.lookup_node(&body.node)?;
        let node = &mut self.nodes[node_ix as usize];
        if node.healthy == body.healthy {
            return Err(ApplyError::Conflict(format!(
                "node `{}` is already {}",
                body.node,
                if body.healthy { "healthy" } else { "unhealthy" }
            )));
        }
        if !body.healthy && !node.running.is_empty() {
            // Its jobs must be requeued first: a node marked dead holds no work.
            return Err(ApplyError::Conflict(format!(
                "node `{}` still runs {} jobs",
                body.node,
                node.running.len()
            )));
        }
        node.healthy = body.healthy;
        if body.healthy {
            node.unhealthy_ticks_total += tick.saturating_sub(node.unhealthy_since_tick);
        } else {
            node.unhealthy_since_tick = tick;
            node.outages += 1;
            node.reputation_ppm = node.reputation_ppm.saturating_sub(REPUTATION_OUTAGE_PPM);
            self.metrics.failures += 1;
        }
        Ok(())
    }

    /// Takes a running job off its node.
    fn release(&mut self, job: JobIx) {
        let j = &self.jobs[job as usize];
        let (node_ix, shard) = (j.node, j.shard);
        let node = &mut self.nodes[node_ix as usize];
        if let Some(at) = node.running.iter().position(|running| *running == job) {
            node.running.remove(at);
        }
        self.shards[shard as usize].running -= 1;
    }

    fn running_job_on(&self, job: JobId, node_name: &str) -> Result<(JobIx, NodeIx), ApplyError> {
        let job_ix = self.lookup_job(job)?;
        let node = self.lookup_node(node_name)?;
        let j = &self.jobs[job_ix as usize];
        if j.status != JobStatus::Running || j.node != node {
            return Err(ApplyError::Conflict(format!(
                "job {job} is not running on node `{node_name}`"
            )));
        }
        Ok((job_ix, node))
    }

    fn requeue(&mut self, body: &JobRequeued, tick: u64) -> Result<(), ApplyError> {
        let (job, _) = self.running_job_on(body.job, &body.node)?;
        let shard = self.lookup_shard(&body.shard)?;
        self.requeue_running(job, shard, tick);
        Ok(())
    }

    /// A receipt re-execution contradicts: the job goes back to the queue of the shard that
    /// assigned it, the node loses reputation and its treaty halts for a while.
    fn attestation_mismatch(
        &mut self,
        body: &AttestationMismatch,
        tick: u64,
    ) -> Result<(), ApplyError> {
        let (job, node_ix) = self.running_job_on(body.job, &body.node)?;
        if body.expected_output_hash == body.reported_output_hash {
            return Err(ApplyError::Conflict(format!(
                "job {}: the expected and reported outputs are the same",
                body.job
            )));
        }
        let shard = self.jobs[job as usize].shard;
        self.requeue_running(job, shard, tick);
        self.metrics.attestation_mismatches += 1;
        let node = &mut self.nodes[node_ix as usize];
        node.reputation_ppm = node
            .reputation_ppm
            .saturating_sub(REPUTATION_ATTESTATION_PPM);
        node.halted_until_tick = tick + ATTESTATION_HALT_TICKS;
        node.attestation_failures += 1;
        Ok(())
    }

    fn receipt(&mut self, body: &JobReceipt, tick: u64) -> Result<(), ApplyError> {
        let (job, node_ix) = self.running_job_on(body.job, &body.node)?;
        self.release(job);
        let j = &mut self.jobs[job as usize];
        j.status = match body.outcome {
            JobOutcome::Completed => JobStatus::Completed,
            JobOutcome::Failed => JobStatus::Failed,
        };
        j.finished_tick = tick;
        let latency_ticks = tick.saturating_sub(j.submitted_tick);
        let late = tick > j.deadline_tick;
        let shard = j.shard;
        let node = &mut self.nodes[node_ix as usize];
        let counters = &mut self.shards[shard as usize].counters;
        match body.outcome {
            JobOutcome::Completed => {
                node.completed += 1;
                node.reputation_ppm = (node.reputation_ppm + REPUTATION_COMPLETED_PPM).min(PPM);
                counters.completed += 1;
                self.metrics.completed += 1;
            }
            JobOutcome::Failed => {
                node.failed += 1;
                node.reputation_ppm = node.reputation_ppm.saturating_sub(REPUTATION_FAILED_PPM);
                counters.failed += 1;
                self.metrics.dropped += 1;
            }
        }
        counters.latency_ticks_sum += latency_ticks;
        let metrics = &mut self.metrics;
        metrics.latency_ticks_sum += latency_ticks;
        metrics.latency_ticks_max = metrics.latency_ticks_max.max(latency_ticks);
        metrics.latency_histogram[(latency_ticks as usize).min(LATENCY_HISTOGRAM_TICKS)] += 1;
        metrics.deadline_missed += u64::from(late);
        self.vacate(job);
        Ok(())
    }

    /// An ended job leaves the job table: its slot is freed for the next submission.
    fn vacate(&mut self, job: JobIx) {
        let id = self.jobs[job as usize].id;
        self.job_index.remove(&id);
        self.jobs[job as usize] = Job::vacant();
        self.free_slots.push(job);
    }

    fn owner_action(&mut self, action: &OwnerAction, tick: u64) -> Result<(), ApplyError> {
        match action {
            OwnerAction::PauseAll | OwnerAction::ResumeAll => {
                let paused = matches!(action, OwnerAction::PauseAll);
                for shard in &mut self.shards {
                    shard.paused = paused;
                }
            }
            OwnerAction::PauseShard { shard } | OwnerAction::ResumeShard { shard } => {
                let ix = self.lookup_shard(shard)?;
                self.shards[ix as usize].paused = matches!(action, OwnerAction::PauseShard { .. });
            }
            OwnerAction::SetQueueBudget {
                shard,
                queue_budget,
            } => {
                let ix = self.lookup_shard(shard)?;
                self.shards[ix as usize].queue_budget = *queue_budget;
            }
            OwnerAction::SetLatencyBudget {
                shard,
                latency_budget_ms,
            } => {
                let ix = self.lookup_shard(shard)?;
                self.shards[ix as usize].latency_budget_ms = *latency_budget_ms;
                self.rebuild_capable(ix);
            }
            OwnerAction::SetSpillover { shard, targets } => {
                let ix = self.lookup_shard(shard)?;
                self.shards[ix as usize].spillover = targets.clone();
                self.resolve_shard_names(ix);
            }
            OwnerAction::DrainNode { node } => {
                let ix = self.lookup_node(node)?;
                self.nodes[ix as usize].draining = true;
            }
            OwnerAction::RetireNode { node } => {
                let ix = self.lookup_node(node)?;
                let n = &mut self.nodes[ix as usize];
                n.draining = true;
                n.retired = true;
                let key = n.key;
                self.authority.retire_key(&key);
            }
            OwnerAction::ResumeNode { node } => {
                let ix = self.lookup_node(node)?;
                if self.nodes[ix as usize].retired {
                    return Err(ApplyError::Conflict(format!(
                        "node `{node}` is retired and cannot take work again"
                    )));
                }
                self.nodes[ix as usize].draining = false;
            }
            OwnerAction::RegisterShard { registration } => {
                self.register_shard(registration)?;
            }
            OwnerAction::RegisterNode { registration } => {
                self.register_node(registration, tick)?;
            }
            OwnerAction::RegisterClient { client, key } => {
                self.authority.register_client(client, *key)?;
            }
            OwnerAction::RetireShard { shard, queue } => {
                let ix = self.lookup_shard(shard)?;
                self.retire_shard(ix, *queue, tick);
            }
            OwnerAction::UpdateNode {
                node,
                max_concurrency,
                latency_ms,
                price_micros_per_hour,
            } => {
                let ix = self.lookup_node(node)?;
                if *max_concurrency == 0 {
                    return Err(ApplyError::Conflict(format!(
                        "node `{node}` needs a max concurrency of at least 1"
                    )));
                }
                let n = &mut self.nodes[ix as usize];
                n.max_concurrency = *max_concurrency;
                n.latency_ms = *latency_ms;
                n.price_micros_per_hour = *price_micros_per_hour;
                let region = n.region;
                self.rebuild_capable(region);
            }
            OwnerAction::SetTreaty {
                shard,
                reputation_floor_ppm,
                regions_served,
                node_quota_jobs,
                quota_window_ticks,
            } => {
                let ix = self.lookup_shard(shard)?;
                let s = &mut self.shards[ix as usize];
                s.reputation_floor_ppm = *reputation_floor_ppm;
                s.regions_served = regions_served.clone();
                s.node_quota_jobs = *node_quota_jobs;
                s.quota_window_ticks = (*quota_window_ticks).max(1);
                self.resolve_shard_names(ix);
                self.rebuild_capable(ix);
            }
            OwnerAction::CheckpointNow => self.checkpoint_requested = true,
            OwnerAction::SetCheckpointInterval { interval_ticks } => {
                if *interval_ticks == 0 {
                    return Err(ApplyError::Conflict(
                        "a checkpoint interval of 0 ticks".to_owned(),
                    ));
                }
                self.checkpoint_interval_ticks = *interval_ticks;
            }
            OwnerAction::CancelJob { job } => {
                let ix = self.lookup_job(*job)?;
                if self.jobs[ix as usize].status != JobStatus::Queued {
                    return Err(ApplyError::Conflict(format!(
                        "job {job} is not queued, so it cannot be cancelled"
                    )));
                }
                self.cancel_queued(ix);
            }
            OwnerAction::RerouteJob { job, shard } => {
                let ix = self.lookup_job(*job)?;
                let to = self.lookup_shard(shard)?;
                if self.jobs[ix as usize].status != JobStatus::Queued {
                    return Err(ApplyError::Conflict(format!(
                        "job {job} is not queued, so it cannot be rerouted"
                    )));
                }
                let (from, class) = (self.jobs[ix as usize].shard, self.jobs[ix as usize].class);
                self.dequeue(ix);
                self.enqueue(ix, to);
                self.compact(from, class);
                self.record(ix, tick);
            }
            // A governance payload is the owners' own record; the fabric does not change.
            OwnerAction::Governance { .. } => {}
        }
        Ok(())
    }

    /// The first event: the ledger key and the owners.
    fn found(&mut self, body: &FabricGenesis) -> Result<(), ApplyError> {
        if self.authority.founded {
            return Err(ApplyError::Conflict(
                "the fabric already has its genesis".to_owned(),
            ));
        }
        self.authority.found(body);
        Ok(())
    }

    /// Retires a shard: paused for good; its queued jobs spill to the first of its spillover
    /// targets still in service, or are cancelled.
    fn retire_shard(&mut self, shard: ShardIx, queue: RetiredQueue, tick: u64) {
        let s = &mut self.shards[shard as usize];
        s.retired = true;
        s.paused = true;
        let target = match queue {
            RetiredQueue::Spill => self.shards[shard as usize]
                .spillover_ix
                .iter()
                .copied()
                .find(|target| !self.shards[*target as usize].retired),
            RetiredQueue::Cancel => None,
        };
        let classes: Vec<ClassIx> = self.shards[shard as usize]
            .queued_classes()
            .map(|(class, _)| class)
            .collect();
        for class in classes {
            let jobs: Vec<JobIx> = self.queue(shard, class).collect();
            for job in jobs {
                match target {
                    Some(to) => self.spill_queued(job, shard, to, tick),
                    None => self.cancel_queued(job),
                }
            }
        }
        // Nobody spills into a retired shard.
        for other in 0..self.shards.len() {
            self.resolve_shard_names(other as ShardIx);
        }
    }

    /// The canonical bytes of the state: everything [`State::state_hash`] covers, in index
    /// order. Lookup maps and derived indices are left out (they follow from these).
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.jobs.len() * 128);
        fn enc<T: Encode>(value: &T, out: &mut Vec<u8>) {
            fabric_events::codec::encode_canonical_into(value, out);
        }
        enc(&b"fabric-state-v2".as_slice(), &mut out);
        enc(&self.tick, &mut out);
        enc(&self.events_applied, &mut out);
        enc(&self.anomalies, &mut out);
        enc(&self.last_checkpoint_tree_size, &mut out);
        enc(&self.jobs_moved_tick, &mut out);
        enc(&self.generations, &mut out);
        enc(&self.skills, &mut out);
        enc(&self.classes, &mut out);
        enc(&(self.shards.len() as u64), &mut out);
        for (ix, shard) in self.shards.iter().enumerate() {
            let ix = ix as ShardIx;
            enc(&shard.name, &mut out);
            enc(&shard.router_key, &mut out);
            enc(&shard.queue_budget, &mut out);
            enc(&shard.latency_budget_ms, &mut out);
            enc(&shard.spillover, &mut out);
            enc(&shard.specialties, &mut out);
            enc(&shard.reputation_floor_ppm, &mut out);
            enc(&shard.regions_served, &mut out);
            enc(&shard.node_quota_jobs, &mut out);
            enc(&shard.quota_window_ticks, &mut out);
            enc(&shard.paused, &mut out);
            enc(&shard.retired, &mut out);
            enc(&shard.nodes, &mut out);
            enc(&shard.running, &mut out);
            enc(&shard.counters, &mut out);
            enc(&shard.queued, &mut out);
            for (class, queue) in &shard.queues {
                if queue.live == 0 {
                    continue;
                }
                enc(class, &mut out);
                enc(&queue.live, &mut out);
                for job in self.queue(ix, *class) {
                    enc(&job, &mut out);
                }
            }
            enc(&u32::MAX, &mut out);
        }
        enc(&self.nodes, &mut out);
        // The job table: its length, its free slots (in reuse order), then the live jobs with
        // their slots. Vacant slots carry nothing, so the snapshot follows the jobs in the
        // fabric, not every job that ever was.
        enc(&(self.jobs.len() as u64), &mut out);
        enc(&self.free_slots, &mut out);
        enc(
            &((self.jobs.len() - self.free_slots.len()) as u64),
            &mut out,
        );
        for (slot, job) in self.jobs.iter().enumerate() {
            if job.status != JobStatus::Vacant {
                enc(&(slot as JobIx), &mut out);
                enc(job, &mut out);
            }
        }
        enc(&(self.submitted_ids.len() as u64), &mut out);
        for (start, end) in self.submitted_ids.ranges() {
            enc(&start, &mut out);
            enc(&end, &mut out);
        }
        enc(&self.metrics, &mut out);
        enc(&self.authority, &mut out);
        enc(&self.checkpoint_interval_ticks, &mut out);
        enc(&self.checkpoint_requested, &mut out);
        out
    }

    /// BLAKE3 (keyed by the context `fabric 2026-11 state hash v1`) of
    /// [`State::snapshot_bytes`]: two folds of the same log give the same hash.
    pub fn state_hash(&self) -> Hash32 {
        state_hash_of(&self.snapshot_bytes())
    }
}

/// The state hash of snapshot bytes made by [`State::snapshot_bytes`], for callers that keep
/// the bytes (a checkpoint stores them and hashes them once).
pub fn state_hash_of(snapshot: &[u8]) -> Hash32 {
    Hash32(blake3::derive_key("fabric 2026-11 state hash v1", snapshot))
}

/// Why snapshot bytes cannot be a state.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes do not decode as the canonical encoding.
    #[error("state snapshot does not decode at byte {offset}: {detail}")]
    Malformed {
        /// Where decoding stopped.
        offset: usize,
        /// What went wrong.
        detail: String,
    },
    /// The bytes decode, but into something no log can produce.
    #[error("state snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// Reads the values of a snapshot one after the other.
struct SnapshotReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl SnapshotReader<'_> {
    fn take<T: Decode<()>>(&mut self) -> Result<T, SnapshotError> {
        let (value, used) = fabric_events::codec::decode_canonical_prefix(&self.bytes[self.at..])
            .map_err(|err| SnapshotError::Malformed {
            offset: self.at,
            detail: err.to_string(),
        })?;
        self.at += used;
        Ok(value)
    }
}

fn inconsistent(detail: String) -> SnapshotError {
    SnapshotError::Inconsistent(detail)
}

fn check_index(what: &str, index: usize, len: usize) -> Result<(), SnapshotError> {
    if index < len {
        Ok(())
    } else {
        Err(inconsistent(format!(
            "{what} {index} is out of range ({len})"
        )))
    }
}

impl State {
    /// Rebuilds a state from [`State::snapshot_bytes`]: `from_snapshot_bytes(s.snapshot_bytes())`
    /// has the same snapshot bytes as `s` and evolves exactly as `s` under every event. Indices
    /// are checked, so inconsistent bytes are an error rather than a panic; decode only bytes
    /// whose hash matched a signed checkpoint (lengths are trusted up to the input's size).
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<State, SnapshotError> {
        let mut r = SnapshotReader { bytes, at: 0 };
        let magic: Vec<u8> = r.take()?;
        if magic != b"fabric-state-v2" {
            return Err(SnapshotError::Malformed {
                offset: 0,
                detail: "it does not start with \"fabric-state-v2\"".to_owned(),
            });
        }
        let mut state = State {
            tick: r.take()?,
            events_applied: r.take()?,
            anomalies: r.take()?,
            last_checkpoint_tree_size: r.take()?,
            jobs_moved_tick: r.take()?,
            generations: r.take()?,
            skills: r.take()?,
            classes: r.take()?,
            ..State::default()
        };
        if state.skills.len() > SKILLS_MAX {
            return Err(inconsistent(format!("{} skills", state.skills.len())));
        }
        if state.classes.len() > CLASSES_MAX {
            return Err(inconsistent(format!("{} job classes", state.classes.len())));
        }
        let shard_count: u64 = r.take()?;
        if shard_count > SHARDS_MAX as u64 {
            return Err(inconsistent(format!("{shard_count} shards")));
        }
        // Queued jobs per shard, checked once the jobs are read.
        let mut queued_lists: Vec<Vec<(ClassIx, Vec<JobIx>)>> = Vec::new();
        for _ in 0..shard_count {
            let mut shard = Shard {
                name: r.take()?,
                router_key: r.take()?,
                queue_budget: r.take()?,
                latency_budget_ms: r.take()?,
                spillover: r.take()?,
                specialties: r.take()?,
                reputation_floor_ppm: r.take()?,
                regions_served: r.take()?,
                node_quota_jobs: r.take()?,
                quota_window_ticks: r.take()?,
                paused: r.take()?,
                retired: r.take()?,
                nodes: r.take()?,
                running: r.take()?,
                counters: r.take()?,
                queues: BTreeMap::new(),
                queued: 0,
                capable: Vec::new(),
                spillover_ix: Vec::new(),
                served_mask: 0,
            };
            shard.queued = r.take()?;
            let mut lists = Vec::new();
            loop {
                let class: u32 = r.take()?;
                if class == u32::MAX {
                    break;
                }
                check_index("queued class", class as usize, state.classes.len())?;
                let count: u64 = r.take()?;
                if count > (bytes.len() - r.at) as u64 / 4 {
                    return Err(inconsistent(format!(
                        "shard `{}` claims {count} queued jobs of class {class}",
                        shard.name
                    )));
                }
                let jobs = (0..count)
                    .map(|_| r.take())
                    .collect::<Result<Vec<JobIx>, _>>()?;
                lists.push((class, jobs));
            }
            state
                .shard_index
                .insert(shard.name.clone(), state.shards.len() as ShardIx);
            state.shards.push(shard);
            queued_lists.push(lists);
        }
        state.nodes = r.take()?;
        let slots: u64 = r.take()?;
        // A slot costs at least four bytes (a free one is its index in the free list).
        if slots > JOBS_MAX as u64 || slots > bytes.len() as u64 / 4 {
            return Err(inconsistent(format!("a job table of {slots} slots")));
        }
        state.free_slots = r.take()?;
        let live: u64 = r.take()?;
        if live + state.free_slots.len() as u64 != slots {
            return Err(inconsistent(format!(
                "{live} live jobs and {} free slots in a table of {slots}",
                state.free_slots.len()
            )));
        }
        state.jobs = vec![Job::vacant(); slots as usize];
        let mut previous: Option<JobIx> = None;
        for _ in 0..live {
            let slot: JobIx = r.take()?;
            let job: Job = r.take()?;
            check_index("job slot", slot as usize, slots as usize)?;
            if previous.is_some_and(|previous| previous >= slot) || job.status == JobStatus::Vacant
            {
                return Err(inconsistent(format!(
                    "job slot {slot} out of order or vacant"
                )));
            }
            previous = Some(slot);
            state.jobs[slot as usize] = job;
        }
        for slot in &state.free_slots {
            check_index("free job slot", *slot as usize, slots as usize)?;
            if state.jobs[*slot as usize].status != JobStatus::Vacant {
                return Err(inconsistent(format!("free slot {slot} holds a job")));
            }
        }
        let ranges: u64 = r.take()?;
        if ranges > bytes.len() as u64 / 16 {
            return Err(inconsistent(format!("{ranges} ranges of submitted ids")));
        }
        for _ in 0..ranges {
            let (start, end): (u64, u64) = (r.take()?, r.take()?);
            let after_last = state
                .submitted_ids
                .ranges
                .last_key_value()
                .map(|(_, end)| *end);
            if start >= end || after_last.is_some_and(|last_end| start <= last_end) {
                return Err(inconsistent(format!(
                    "submitted id range {start}..{end} is empty, overlaps or touches the one before"
                )));
            }
            state.submitted_ids.ranges.insert(start, end);
        }
        state.metrics = r.take()?;
        state.authority = r.take()?;
        state.checkpoint_interval_ticks = r.take()?;
        state.checkpoint_requested = r.take()?;
        if r.at != bytes.len() {
            return Err(SnapshotError::Malformed {
                offset: r.at,
                detail: format!("{} bytes after the state", bytes.len() - r.at),
            });
        }
        state.check_and_index(queued_lists)?;
        Ok(state)
    }

    /// Checks every index of a decoded state and rebuilds what the snapshot leaves out: the
    /// lookup maps, the class queues and the derived per-shard lists.
    fn check_and_index(
        &mut self,
        queued_lists: Vec<Vec<(ClassIx, Vec<JobIx>)>>,
    ) -> Result<(), SnapshotError> {
        let (shards, nodes, jobs, classes) = (
            self.shards.len(),
            self.nodes.len(),
            self.jobs.len(),
            self.classes.len(),
        );
        if self.metrics.latency_histogram.len() != LATENCY_HISTOGRAM_TICKS + 1
            || self.metrics.spills_per_job.len() != SHARDS_MAX + 1
        {
            return Err(inconsistent(
                "metric histograms of the wrong length".to_owned(),
            ));
        }
        for class in &self.classes {
            check_index("class origin shard", class.origin as usize, shards)?;
        }
        self.authority.check(shards, nodes)?;
        for shard in &self.shards {
            for node in &shard.nodes {
                check_index("shard node", *node as usize, nodes)?;
            }
        }
        for (ix, node) in self.nodes.iter().enumerate() {
            check_index("node region", node.region as usize, shards)?;
            for job in &node.running {
                check_index("running job", *job as usize, jobs)?;
                if self.jobs[*job as usize].status != JobStatus::Running {
                    return Err(inconsistent(format!(
                        "node `{}` runs slot {job}, which holds no running job",
                        node.name
                    )));
                }
            }
            if self
                .node_index
                .insert(node.name.clone(), ix as NodeIx)
                .is_some()
            {
                return Err(inconsistent(format!("node `{}` appears twice", node.name)));
            }
        }
        for (ix, job) in self.jobs.iter().enumerate() {
            if job.status == JobStatus::Vacant {
                continue;
            }
            if !self.submitted_ids.contains(job.id) {
                return Err(inconsistent(format!("job {} was never submitted", job.id)));
            }
            check_index("job class", job.class as usize, classes)?;
            check_index("job shard", job.shard as usize, shards)?;
            check_index("job origin", job.origin as usize, shards)?;
            if job.node != NO_NODE {
                check_index("job node", job.node as usize, nodes)?;
            }
            if self.job_index.insert(job.id, ix as JobIx).is_some() {
                return Err(inconsistent(format!("job {} appears twice", job.id)));
            }
        }
        for (ix, name) in self.skills.iter().enumerate() {
            self.skill_index.insert(name.clone(), ix as u8);
        }
        for (ix, class) in self.classes.iter().enumerate() {
            self.class_index
                .insert((class.skills.0, class.origin), ix as ClassIx);
        }
        if self.shard_index.len() != shards
            || self.skill_index.len() != self.skills.len()
            || self.class_index.len() != classes
        {
            return Err(inconsistent(
                "a shard, skill or class appears twice".to_owned(),
            ));
        }
        for (shard_ix, lists) in queued_lists.into_iter().enumerate() {
            let mut queued = 0u64;
            for (class, list) in lists {
                let mut queue = ClassQueue::default();
                for job in list {
                    check_index("queued job", job as usize, jobs)?;
                    let j = &self.jobs[job as usize];
                    if j.status != JobStatus::Queued
                        || j.shard as usize != shard_ix
                        || j.class != class
                    {
                        return Err(inconsistent(format!(
                            "job {} is listed in a queue of shard {shard_ix} it is not in",
                            j.id
                        )));
                    }
                    queue.entries.push_back((job, j.generation));
                    queue.live += 1;
                }
                queued += queue.live;
                self.shards[shard_ix].queues.insert(class, queue);
            }
            if queued != self.shards[shard_ix].queued {
                return Err(inconsistent(format!(
                    "shard {shard_ix} says {} queued jobs and lists {queued}",
                    self.shards[shard_ix].queued
                )));
            }
        }
        for shard in 0..shards {
            self.resolve_shard_names(shard as ShardIx);
            self.rebuild_capable(shard as ShardIx);
        }
        Ok(())
    }
}
