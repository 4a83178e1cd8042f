//! The simulation's side of the actors' interfaces: nodes whose outages, failed runs and GPU
//! inputs are drawn from the seed, some of them byzantine ([`SimNodes`]), and intakes whose
//! submissions are the seed's workload ([`SimIntake`]).

use std::sync::Arc;

use fabric_actors::work::{Intake, JobResult, NodeWork};
use fabric_actors::world::World;
use fabric_actors::RunError;
use fabric_events::cpu_job::output_hash as cpu_output_hash;
use fabric_events::{Hash32, JobOutcome, JobSubmitted, KernelRef};
use fabric_gpu_kernels::jobs::output_hash;
use fabric_gpu_kernels::Engine;
use fabric_projections::state::{Job, NodeIx};
use serde::{Deserialize, Serialize};

use crate::workload::{FailureSchedule, Workload};

/// A node that corrupts a share of its GPU jobs' outputs (`fabric run --byzantine NODE:RATE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Byzantine {
    /// The node.
    pub node: String,
    /// Share of its GPU outputs it corrupts, in parts per million.
    pub rate_ppm: u32,
}

/// What a byzantine node reports instead of a GPU job's real output hash.
pub fn corrupted_output_hash(real: &Hash32) -> Hash32 {
    Hash32(blake3::derive_key(
        "fabric 2026-12 corrupted output",
        real.as_bytes(),
    ))
}

/// The nodes of a simulation: silent during the outages the failure schedule draws; a run
/// fails when the workload draws so; a GPU job runs its kernel on `engine` (its input
/// regenerated from the seed) and a byzantine node corrupts the output when the seed says so.
pub struct SimNodes {
    workload: Arc<Workload>,
    failures: FailureSchedule,
    engine: Engine,
    /// Per node (world order): the share of its GPU outputs it corrupts, in parts per million.
    byzantine_ppm: Vec<u32>,
}

impl SimNodes {
    /// The nodes of `world` under `workload` and `failures`, GPU jobs on `engine`.
    pub fn new(
        world: &World,
        workload: Arc<Workload>,
        failures: FailureSchedule,
        engine: Engine,
        byzantine: &[Byzantine],
    ) -> Self {
        let byzantine_ppm = world
            .nodes
            .iter()
            .map(|node| {
                byzantine
                    .iter()
                    .find(|b| b.node == node.name)
                    .map_or(0, |b| b.rate_ppm)
            })
            .collect();
        Self {
            workload,
            failures,
            engine,
            byzantine_ppm,
        }
    }

    fn gpu_output(
        &self,
        node: NodeIx,
        job: &Job,
        input: &fabric_gpu_kernels::jobs::JobInput,
    ) -> Result<Hash32, RunError> {
        let real = Hash32(output_hash(&input.execute(self.engine)?));
        let rate_ppm = self.byzantine_ppm.get(node as usize).copied().unwrap_or(0);
        let corrupt = rate_ppm > 0 && self.workload.corrupts(job.id, job.started_tick, rate_ppm);
        Ok(if corrupt {
            corrupted_output_hash(&real)
        } else {
            real
        })
    }
}

impl NodeWork for SimNodes {
    fn silent(&self, node: NodeIx, heartbeat_interval_ticks: u32, tick: u64) -> bool {
        self.failures.silent(node, heartbeat_interval_ticks, tick)
    }

    fn finish(&self, node: NodeIx, job: &Job) -> Result<JobResult, RunError> {
        let (generated, gpu_input) = self.workload.job_with_input(job.id, job.submitted_tick);
        let failed = self.workload.run_fails(&generated, job.attempts);
        let input = generated.submission.input_hash;
        let outcome = if failed {
            JobOutcome::Failed
        } else {
            JobOutcome::Completed
        };
        let Some(gpu_input) = gpu_input else {
            let output_hash = if failed {
                Hash32::default()
            } else {
                cpu_output_hash(&input, job.id, job.attempts)
            };
            return Ok(JobResult {
                outcome,
                output_hash,
                kernel: None,
            });
        };
        let kernel = gpu_input.kernel.id();
        let output_hash = if failed {
            Hash32::default()
        } else {
            self.gpu_output(node, job, &gpu_input)?
        };
        Ok(JobResult {
            outcome,
            output_hash,
            kernel: Some(KernelRef {
                id: kernel.id.to_owned(),
                version: kernel.version,
                adapter: self.engine.name(),
                input_hash: input,
            }),
        })
    }
}

/// The intakes of a simulation: each shard's clients submit the workload's arrivals.
pub struct SimIntake {
    /// The workload.
    pub workload: Arc<Workload>,
}

impl Intake for SimIntake {
    fn submissions(&self, tick: u64, shard: &str) -> Vec<JobSubmitted> {
        self.workload
            .arrivals(tick, shard)
            .into_iter()
            .map(|job| job.submission)
            .collect()
    }
}

/// A flag of a run that is out of its range or names what the run does not have.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunArgError(String);

/// A share from 0 to 1 (`text`, given as `what`) in parts per million.
pub fn fraction_ppm(text: &str, what: &str) -> Result<u32, RunArgError> {
    let value: f64 = text
        .parse()
        .map_err(|_| RunArgError(format!("{what}: `{text}` is not a number from 0 to 1")))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(RunArgError(format!(
            "{what}: {value} is not between 0 and 1"
        )));
    }
    Ok((value * 1_000_000.0).round() as u32)
}

/// `--byzantine NODE:RATE` arguments, checked against the run's nodes.
pub fn byzantine_nodes(
    args: &[String],
    nodes: &[fabric_actors::world::NodeSpec],
) -> Result<Vec<Byzantine>, RunArgError> {
    let mut out: Vec<Byzantine> = Vec::new();
    for arg in args {
        let Some((node, rate)) = arg.rsplit_once(':') else {
            return Err(RunArgError(format!(
                "--byzantine {arg}: expected NODE:RATE, e.g. mars.gpu-helion:0.2"
            )));
        };
        if !nodes.iter().any(|n| n.name == node) {
            return Err(RunArgError(format!(
                "--byzantine {arg}: the run has no node `{node}`"
            )));
        }
        if !out.iter().all(|b| b.node != node) {
            return Err(RunArgError(format!(
                "--byzantine names node `{node}` twice"
            )));
        }
        out.push(Byzantine {
            node: node.to_owned(),
            rate_ppm: fraction_ppm(rate, &format!("--byzantine {arg}"))?,
        });
    }
    Ok(out)
}
