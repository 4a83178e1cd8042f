//! The narrow interfaces through which actors get their work: what a node's finished job
//! yields and when the node is silent ([`NodeWork`]), and which jobs a shard's clients submit
//! at a tick ([`Intake`]).
//!
//! The actors never decide these themselves, so one actor set serves both a simulation
//! (`fabric-sim` implements both traits from the seed) and `fabric serve` (whose nodes run the
//! jobs clients submitted, [`ServedJobs`], and which has no intakes).

use std::collections::HashMap;
use std::sync::RwLock;

use fabric_events::cpu_job::output_hash as cpu_output_hash;
use fabric_events::{Hash32, JobId, JobOutcome, JobSubmitted, KernelRef};
use fabric_projections::state::{Job, NodeIx};

use crate::RunError;

/// What a job's run yielded, for its receipt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobResult {
    /// Completed or failed.
    pub outcome: JobOutcome,
    /// The hash of its output (zeros when it failed).
    pub output_hash: Hash32,
    /// The kernel a GPU job ran on (`None` for a CPU job).
    pub kernel: Option<KernelRef>,
}

/// How the nodes of a fabric run their jobs.
pub trait NodeWork: Send + Sync {
    /// Whether `node` (with its heartbeat interval) is silent at `tick`: it sends nothing.
    fn silent(&self, node: NodeIx, heartbeat_interval_ticks: u32, tick: u64) -> bool;

    /// Runs the current attempt of `job` on `node`, once its duration has passed.
    fn finish(&self, node: NodeIx, job: &Job) -> Result<JobResult, RunError>;
}

/// Where a served fabric keeps its jobs' inputs (the server's artifact store): the driver
/// stores a job's input once the gate may admit it, before the append that makes both
/// durable.
pub trait InputStore: Send + Sync {
    /// How many bytes are stored under `hash`, if any.
    fn len_of(&self, hash: &Hash32) -> Option<usize>;
    /// Stores `bytes` under `hash` (their BLAKE3).
    fn store(&self, hash: &Hash32, bytes: &[u8]) -> Result<(), String>;
}

/// Where a shard's client submissions come from.
pub trait Intake: Send + Sync {
    /// The jobs `shard`'s clients submit at `tick`, in order.
    fn submissions(&self, tick: u64, shard: &str) -> Vec<JobSubmitted>;
}

/// `fabric serve`'s nodes: never silent; each runs the jobs clients submitted as CPU jobs with
/// the input hash the client named, and each completes.
#[derive(Debug, Default)]
pub struct ServedJobs {
    inputs: RwLock<HashMap<JobId, Hash32>>,
}

impl ServedJobs {
    /// Served jobs with these inputs in flight (after a restart).
    pub fn new(inputs: HashMap<JobId, Hash32>) -> Self {
        Self {
            inputs: RwLock::new(inputs),
        }
    }

    /// A job admitted with its input hash.
    pub fn admitted(&self, job: JobId, input_hash: Hash32) {
        self.inputs
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(job, input_hash);
    }

    /// A job that left the fabric.
    pub fn ended(&self, job: JobId) {
        self.inputs
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
            .remove(&job);
    }
}

impl NodeWork for ServedJobs {
    fn silent(&self, _node: NodeIx, _heartbeat_interval_ticks: u32, _tick: u64) -> bool {
        false
    }

    fn finish(&self, _node: NodeIx, job: &Job) -> Result<JobResult, RunError> {
        let inputs = self
            .inputs
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let input = inputs
            .get(&job.id)
            .ok_or(RunError::UnknownServedJob { job: job.id })?;
        Ok(JobResult {
            outcome: JobOutcome::Completed,
            output_hash: cpu_output_hash(input, job.id, job.attempts),
            kernel: None,
        })
    }
}
