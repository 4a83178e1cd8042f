//! The jobs of registered models in `--reexecute`: the models registered in the log (owner
//! command `register_model`, with their weights), the jobs submitted for them, and the re-run
//! of a model job's receipt (or attestation mismatch) on the CPU reference through the
//! caller's [`ModelRunner`], with the job's input read from the ledger folder's artifact
//! store (docs/FORMAT.md §7, §13.1).

use std::collections::HashMap;
use std::sync::Arc;

use fabric_events::{Body, Event, Hash32, JobType, KernelRef, OwnerAction, Role};
use fabric_ledger::StoredArtifacts;

use super::gpu::CallerError;
use super::Failure;

/// Runs a job of a model on the CPU reference (the caller links the kernels:
/// `fabric_gpu_kernels::models::ModelJob::execute` with `Engine::Cpu`).
pub trait ModelRunner: Sync {
    /// The output bytes of a job of `job_type` with `weights` on `input`.
    fn output(
        &self,
        job_type: JobType,
        weights: &[u8],
        input: &[u8],
    ) -> Result<Vec<u8>, CallerError>;
}

/// A registered model, shared by its jobs.
#[derive(Clone)]
struct Model {
    workload: Arc<str>,
    job_type: JobType,
    weights: Arc<[u8]>,
}

/// A submitted job of a registered model.
#[derive(Clone)]
pub(super) struct ModelJob {
    model: Model,
    input_hash: Hash32,
}

/// The models of the log so far, and its model jobs that have no receipt yet (a receipt ends
/// a job, so this follows the jobs in flight, not the history).
#[derive(Default)]
pub(super) struct ModelJobs {
    models: HashMap<String, Model>,
    jobs: HashMap<u64, ModelJob>,
}

impl ModelJobs {
    /// Follows a model's registration or a submission of a model job. The audit passed, so
    /// every event here was admitted: a registration in the log is a good model, the first of
    /// its workload.
    pub(super) fn observe(&mut self, event: &Event) {
        match &event.body {
            Body::OwnerCommand(command) if event.header.role == Role::Owner => {
                if let OwnerAction::RegisterModel { registration } = &command.action {
                    let workload = registration.workload();
                    self.models
                        .entry(workload.clone())
                        .or_insert_with(|| Model {
                            workload: workload.into(),
                            job_type: registration.job_type,
                            weights: registration.weights.as_slice().into(),
                        });
                }
            }
            Body::JobSubmitted(submitted) => {
                if let Some(model) = self.models.get(&submitted.workload) {
                    let job = ModelJob {
                        model: model.clone(),
                        input_hash: submitted.input_hash,
                    };
                    self.jobs.insert(submitted.job, job);
                }
            }
            _ => {}
        }
    }

    /// The model job `job` (if it is one), which its receipt ends.
    pub(super) fn receipt(&mut self, job: u64) -> Option<ModelJob> {
        self.jobs.remove(&job)
    }

    /// The model job `job`, if it is one (an attestation mismatch sends it back to a queue).
    pub(super) fn model_of(&self, job: u64) -> Option<ModelJob> {
        self.jobs.get(&job).cloned()
    }
}

/// A model job's receipt or attestation mismatch to re-run.
pub(super) struct ModelRerun {
    /// The entry of the receipt or mismatch.
    pub(super) seq: u64,
    /// The job.
    pub(super) job: u64,
    kernel: KernelRef,
    expected: Hash32,
    model_job: ModelJob,
}

impl ModelRerun {
    /// The re-run of the entry at `seq` about `job`, which names `kernel` and says the output
    /// hash is `expected`.
    pub(super) fn new(
        seq: u64,
        job: u64,
        kernel: &KernelRef,
        expected: Hash32,
        model_job: ModelJob,
    ) -> Self {
        Self {
            seq,
            job,
            kernel: kernel.clone(),
            expected,
            model_job,
        }
    }

    /// Checks the kernel and input the entry names against the job's model and submission,
    /// reads the input from `artifacts`, re-runs it and compares the output hash.
    pub(super) fn run(
        &self,
        runner: &dyn ModelRunner,
        artifacts: &StoredArtifacts,
    ) -> Result<(), Failure> {
        let (job, model) = (self.job, &self.model_job.model);
        let fail = |detail: String| Failure::at(self.seq, "reexecute", detail);
        let job_type = model.job_type;
        if self.kernel.id != job_type.kernel_id()
            || self.kernel.version != job_type.kernel_version()
        {
            return Err(fail(format!(
                "job {job} of model `{}` names kernel {} v{}; the model's {job_type} runs {} v{}",
                model.workload,
                self.kernel.id,
                self.kernel.version,
                job_type.kernel_id(),
                job_type.kernel_version()
            )));
        }
        let input_hash = self.model_job.input_hash;
        if self.kernel.input_hash != input_hash {
            return Err(fail(format!(
                "job {job} names input {}, but it was submitted with input {input_hash}",
                self.kernel.input_hash
            )));
        }
        let input = self.input(artifacts, input_hash)?;
        let output = runner
            .output(job_type, &model.weights, &input)
            .map_err(|err| fail(format!("job {job} of model `{}`: {err}", model.workload)))?;
        let output_hash = Hash32(*blake3::hash(&output).as_bytes());
        if output_hash != self.expected {
            return Err(fail(format!(
                "job {job} of model `{}`: re-executed on the CPU reference, its output hash is \
                 {output_hash}, not {}",
                model.workload, self.expected
            )));
        }
        Ok(())
    }

    /// The job's input from the ledger folder's artifacts, checked against its hash.
    fn input(&self, artifacts: &StoredArtifacts, input_hash: Hash32) -> Result<Vec<u8>, Failure> {
        let job = self.job;
        let stored = artifacts
            .get(&input_hash)
            .map_err(|err| {
                Failure::at(
                    self.seq,
                    "storage",
                    format!(
                        "job {job}: reading its input {input_hash} from the artifact store: {err}"
                    ),
                )
            })?
            .ok_or_else(|| {
                Failure::at(
                    self.seq,
                    "reexecute",
                    format!(
                        "job {job}: its input {input_hash} is not in the ledger folder's \
                         artifacts"
                    ),
                )
            })?;
        if blake3::hash(&stored).as_bytes() != input_hash.as_bytes() {
            return Err(Failure::at(
                self.seq,
                "storage",
                format!(
                    "job {job}: the artifact stored under {input_hash} is not its input (its \
                     BLAKE3 differs)"
                ),
            ));
        }
        Ok(stored.to_vec())
    }
}
