//! The world a run simulates: shards, nodes, workload and failure schedule. Built by
//! [`crate::parse`] (which validates it) from `config/fabric.toml`, embedded as
//! [`crate::DEFAULT_WORLD_TOML`], or from another file; plain data here.
//!
//! The terms of a shard and of a node are the fields of the registration events
//! ([`fabric_events::ShardRegistered`], [`fabric_events::NodeRegistered`]): both are declared
//! by [`fabric_events::with_shard_terms!`] and [`fabric_events::with_node_terms!`].

use serde::{Deserialize, Serialize};

/// Everything a run needs besides its seed and job count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// The shards, in the order their actors are numbered.
    pub shards: Vec<ShardSpec>,
    /// The configured nodes (a run adds its generated ones: `fabric_actors::workload::scale_nodes`).
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

fabric_events::with_shard_terms! {
    /// One shard and its terms (budgets, spillover rules, treaty).
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ShardSpec {
        /// Name, e.g. `earth`; also the region of its nodes.
        pub name: String,
    }
}

fabric_events::with_node_terms! {
    /// One node of the marketplace and its terms.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct NodeSpec {
        /// Name, e.g. `earth.core-alpha`.
        pub name: String,
        /// The shard it serves.
        pub region: String,
    }
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
