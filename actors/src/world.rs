//! The world a run simulates: shards, nodes, workload and failure schedule. Built from
//! `config/fabric.toml` by the binary (which validates it); plain data here.

use serde::{Deserialize, Serialize};

/// Everything a run needs besides its seed and job count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// The shards, in the order their actors are numbered.
    pub shards: Vec<ShardSpec>,
    /// The configured nodes (generated nodes are added by [`World::scaled_to`]).
    pub nodes: Vec<NodeSpec>,
    /// What clients submit.
    pub workload: WorkloadSpec,
    /// When nodes go silent.
    pub failures: FailureSpec,
    /// Ticks between checkpoints.
    pub checkpoint_interval_ticks: u32,
    /// The owners: how many, and how many must approve a command.
    #[serde(default)]
    pub owners: OwnersSpec,
    /// Share of GPU receipts the ledger's verifier re-executes, in parts per million.
    #[serde(default = "default_verify_ppm")]
    pub verify_ppm: u32,
}

/// One GPU receipt in ten is re-executed unless the config says otherwise.
pub const VERIFY_PPM_DEFAULT: u32 = 100_000;

fn default_verify_ppm() -> u32 {
    VERIFY_PPM_DEFAULT
}

/// The owners of a simulated fabric. Their keys are derived from the seed
/// (`sim/owner/0` … `sim/owner/<count − 1>`), so `fabric owner keys` can hand them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnersSpec {
    /// Owners (N).
    pub count: u32,
    /// Distinct approvals an owner command needs (M).
    pub threshold: u32,
}

impl Default for OwnersSpec {
    /// Two of three.
    fn default() -> Self {
        Self {
            count: 3,
            threshold: 2,
        }
    }
}

/// One shard and its treaty terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    /// Name, e.g. `earth`; also the region of its nodes.
    pub name: String,
    /// Jobs it may hold queued before it spills.
    pub queue_budget: u32,
    /// Largest node latency it accepts.
    pub latency_budget_ms: u32,
    /// Shards it spills to, first preferred.
    pub spillover: Vec<String>,
    /// What it is known for.
    pub specialties: Vec<String>,
    /// Treaty: nodes under this reputation score zero.
    pub reputation_floor_ppm: u32,
    /// Treaty: origin regions whose jobs its nodes serve.
    pub regions_served: Vec<String>,
    /// Treaty: jobs one node may take per quota window.
    pub node_quota_jobs: u32,
    /// Treaty: length of a quota window.
    pub quota_window_ticks: u32,
}

/// One node of the marketplace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Name, e.g. `earth.core-alpha`.
    pub name: String,
    /// The shard it serves.
    pub region: String,
    /// Units of work it can hold.
    pub capacity: u32,
    /// Jobs it runs at once.
    pub max_concurrency: u32,
    /// Ticks between heartbeats (one tick is one simulated second).
    pub heartbeat_interval_ticks: u32,
    /// Skills it offers.
    pub capabilities: Vec<String>,
    /// Its round-trip latency.
    pub latency_ms: u32,
    /// Its price, in millionths of a credit per hour.
    pub price_micros_per_hour: u64,
    /// Its starting reputation.
    pub reputation_ppm: u32,
}

/// What clients submit, per tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    /// Arrival rate as a percentage of what the fabric can complete per tick
    /// (total max concurrency / mean duration).
    pub load_percent: u32,
    /// The job kinds, each submitted to one shard.
    pub kinds: Vec<JobKindSpec>,
}

/// One kind of job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobKindSpec {
    /// Workload name, e.g. `finance.settlement`.
    pub name: String,
    /// The shard its jobs are submitted to (their origin region).
    pub shard: String,
    /// Relative frequency.
    pub weight: u32,
    /// Skills a node needs.
    pub skills: Vec<String>,
    /// Shortest run, in ticks (at least 1).
    pub duration_ticks_min: u32,
    /// Longest run, in ticks.
    pub duration_ticks_max: u32,
    /// Deadline = submission tick + this.
    pub deadline_slack_ticks: u32,
    /// What the client pays.
    pub budget_micros: u64,
    /// Chance that a run fails on its node, in parts per million.
    pub failure_ppm: u32,
    /// For GPU kinds: the kernel its jobs run (`embed`, `rerank`, `simulate`, `blake3`; see
    /// `fabric_gpu_kernels::jobs`). Its skills include `gpu`.
    #[serde(default)]
    pub kernel: Option<String>,
}

/// Node outages, drawn from the seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureSpec {
    /// Each node may have one outage per epoch of this many ticks.
    pub epoch_ticks: u32,
    /// Chance of an outage per node and epoch, in parts per million.
    pub outage_ppm: u32,
    /// Shortest outage, in heartbeat intervals.
    pub outage_heartbeats_min: u32,
    /// Longest outage, in heartbeat intervals.
    pub outage_heartbeats_max: u32,
}
