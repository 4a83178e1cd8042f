//! The GPU checks of an audit that passed, through what the caller supplies: `--reexecute`
//! re-runs sampled GPU receipts (and every attestation mismatch's job) on the kernels' CPU
//! references, regenerating each input from the run's parameters ([`Inputs`]) and checking it
//! against the receipt's `input_hash`, or, for a job of a registered model, reading its input
//! from the ledger folder's artifact store and running it through a [`ModelRunner`]
//! (`super::models`); `--gpu` hashes every entry with a BLAKE3 kernel ([`EntryHasher`]) and
//! compares with the chain's hashes.

use fabric_events::{Body, Entry, Hash32, JobOutcome};
use fabric_ledger::{LedgerReader, StoredArtifacts};
use rayon::prelude::*;

use super::models::{ModelJobs, ModelRerun, ModelRunner};
use super::{AuditReport, Failure, AUDIT_CHUNK_ENTRIES};

/// An error of the caller's GPU code, in words in the failure.
pub type CallerError = Box<dyn std::error::Error + Send + Sync>;

/// The inputs of a run's GPU jobs, regenerated from its parameters (a simulated run's seed
/// and workload), and their re-execution on the kernels' CPU references.
pub trait Inputs: Sync {
    /// A job's input.
    type Input;
    /// The input of GPU job `job` (`None`: not a GPU job of this run).
    fn input(&self, job: u64) -> Option<Self::Input>;
    /// The hash a receipt names for the input (`input_hash`).
    fn input_hash(&self, input: &Self::Input) -> Hash32;
    /// Runs the input on the CPU reference; the output's hash (`output_hash`).
    fn output_hash(&self, input: &Self::Input) -> Result<Hash32, CallerError>;
}

/// Hashes entries with a BLAKE3 kernel (on a GPU adapter, say).
pub trait EntryHasher {
    /// The adapter, for the report.
    fn name(&self) -> String;
    /// BLAKE3 of each message.
    fn hash_batch(&self, messages: &[&[u8]]) -> Result<Vec<[u8; 32]>, CallerError>;
}

/// What [`gpu_checks`] does.
pub struct GpuChecks<'a, I> {
    /// Re-execute GPU receipts through these inputs.
    pub reexecute: Option<&'a I>,
    /// The share (0 to 1) of GPU jobs to re-run, chosen by job id.
    pub sample: f64,
    /// Hash every entry with this kernel.
    pub hasher: Option<&'a dyn EntryHasher>,
    /// With `reexecute`: re-run the jobs of registered models with this (a log with model
    /// jobs fails the re-execution without it).
    pub models: Option<&'a dyn ModelRunner>,
}

/// A job to re-run.
enum Rerun {
    /// A job whose input the caller regenerates: (seq, job, claimed input hash, the output
    /// hash re-execution must give).
    Seeded(u64, u64, Hash32, Hash32),
    /// A job of a registered model.
    Model(ModelRerun),
}

/// Runs the checks over the first `size` entries of `reader`, counting into `report`; the
/// first failure.
pub fn gpu_checks<I: Inputs>(
    reader: &LedgerReader,
    size: u64,
    checks: &GpuChecks<'_, I>,
    report: &mut AuditReport,
) -> Result<(), Failure> {
    let sample_ppm = (checks.sample * 1e6).round() as u64;
    let mut hashed = 0u64;
    let mut model_jobs = ModelJobs::default();
    let mut artifacts = None;
    let mut start = 0;
    while start < size {
        let end = (start + AUDIT_CHUNK_ENTRIES as u64).min(size);
        let entries: Vec<Entry> = reader
            .entries(start..end)
            .collect::<Result<_, _>>()
            .map_err(|err| Failure::from_ledger(&err))?;
        if let Some(hasher) = checks.hasher {
            hash_entries(hasher, start, &entries)?;
            hashed += entries.len() as u64;
        }
        if let Some(inputs) = checks.reexecute {
            let jobs = reruns(&entries, sample_ppm, &mut model_jobs)?;
            let first_model = jobs.iter().find_map(|job| match job {
                Rerun::Model(model_rerun) => Some(model_rerun),
                Rerun::Seeded(..) => None,
            });
            let models = match first_model {
                Some(first) => Some(model_context(reader, checks.models, first, &mut artifacts)?),
                None => None,
            };
            let results: Vec<Result<(), Failure>> = jobs
                .par_iter()
                .map(|job| match job {
                    Rerun::Seeded(seq, id, input_hash, expected) => {
                        rerun(inputs, (*seq, *id, *input_hash, *expected))
                    }
                    Rerun::Model(model_rerun) => match models {
                        Some((runner, artifacts)) => model_rerun.run(runner, artifacts),
                        // Set whenever the chunk has a model job; refused all the same.
                        None => Err(no_runner(model_rerun)),
                    },
                })
                .collect();
            for result in results {
                result?;
                report.reexecuted += 1;
            }
        }
        start = end;
    }
    if let Some(hasher) = checks.hasher {
        report.gpu_hashed = Some((hashed, hasher.name()));
    }
    Ok(())
}

/// The model runner and the `artifacts` tree (opened at the first model job) for the model
/// jobs of a chunk; `first`, the first of them, is named in the failure when there is no
/// runner.
fn model_context<'a>(
    reader: &LedgerReader,
    models: Option<&'a dyn ModelRunner>,
    first: &ModelRerun,
    artifacts: &'a mut Option<StoredArtifacts>,
) -> Result<(&'a dyn ModelRunner, &'a StoredArtifacts), Failure> {
    let Some(runner) = models else {
        return Err(no_runner(first));
    };
    let tree = match artifacts {
        Some(tree) => tree,
        None => artifacts.insert(
            reader
                .artifacts()
                .map_err(|err| Failure::at(first.seq, "storage", err.to_string()))?,
        ),
    };
    Ok((runner, tree))
}

/// The failure of a model job re-run without a model runner.
fn no_runner(model_rerun: &ModelRerun) -> Failure {
    Failure::at(
        model_rerun.seq,
        "reexecute",
        format!(
            "job {} is a job of a registered model, and no model runner was given",
            model_rerun.job
        ),
    )
}

/// Whether job `job` is in the re-executed share.
fn sampled(job: u64, sample_ppm: u64) -> bool {
    let draw = blake3::derive_key("fabric 2026-12 audit sample", &job.to_le_bytes());
    u64::from_le_bytes(draw[..8].try_into().unwrap_or_default()) % 1_000_000 < sample_ppm
}

/// Hashes a chunk (its first seq `start`) with the kernel and compares with the chain.
fn hash_entries(hasher: &dyn EntryHasher, start: u64, entries: &[Entry]) -> Result<(), Failure> {
    let messages: Vec<Vec<u8>> = entries
        .iter()
        .map(|entry| {
            let mut message = vec![0u8];
            message.extend_from_slice(&entry.encode());
            message
        })
        .collect();
    let views: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let digests = hasher
        .hash_batch(&views)
        .map_err(|err| Failure::at(start, "gpu", err.to_string()))?;
    for (entry, digest) in entries.iter().zip(digests) {
        if entry.hash().0 != digest {
            return Err(Failure::at(
                entry.seq,
                "gpu",
                format!(
                    "the BLAKE3 kernel on {} hashes entry {} differently from the chain",
                    hasher.name(),
                    entry.seq
                ),
            ));
        }
    }
    Ok(())
}

/// The sampled completed GPU receipts and every attestation mismatch of a chunk; `model_jobs`
/// follows the models and model jobs of the log from one chunk to the next.
fn reruns(
    entries: &[Entry],
    sample_ppm: u64,
    model_jobs: &mut ModelJobs,
) -> Result<Vec<Rerun>, Failure> {
    let mut jobs = Vec::new();
    for entry in entries {
        let event = entry
            .event()
            .map_err(|err| Failure::at(entry.seq, "storage", err.to_string()))?;
        match &event.body {
            Body::JobReceipt(receipt) => {
                // A receipt ends its job, so the job leaves the model jobs followed either way.
                let model = model_jobs.receipt(receipt.job);
                let (Some(kernel), JobOutcome::Completed) = (&receipt.kernel, receipt.outcome)
                else {
                    continue;
                };
                if !sampled(receipt.job, sample_ppm) {
                    continue;
                }
                jobs.push(match model {
                    Some(model) => Rerun::Model(ModelRerun::new(
                        entry.seq,
                        receipt.job,
                        kernel,
                        receipt.output_hash,
                        model,
                    )),
                    None => Rerun::Seeded(
                        entry.seq,
                        receipt.job,
                        kernel.input_hash,
                        receipt.output_hash,
                    ),
                });
            }
            Body::AttestationMismatch(mismatch) => {
                jobs.push(match model_jobs.model_of(mismatch.job) {
                    Some(model) => Rerun::Model(ModelRerun::new(
                        entry.seq,
                        mismatch.job,
                        &mismatch.kernel,
                        mismatch.expected_output_hash,
                        model,
                    )),
                    None => Rerun::Seeded(
                        entry.seq,
                        mismatch.job,
                        mismatch.kernel.input_hash,
                        mismatch.expected_output_hash,
                    ),
                })
            }
            _ => model_jobs.observe(&event),
        }
    }
    Ok(jobs)
}

/// Regenerates one job's input, checks it, re-runs it and compares the output hash.
fn rerun<I: Inputs>(
    inputs: &I,
    (seq, job, input_hash, expected): (u64, u64, Hash32, Hash32),
) -> Result<(), Failure> {
    let input = inputs.input(job).ok_or_else(|| {
        Failure::at(
            seq,
            "reexecute",
            format!("job {job} is not a GPU job of this run's workload"),
        )
    })?;
    if inputs.input_hash(&input) != input_hash {
        return Err(Failure::at(
            seq,
            "reexecute",
            format!(
                "job {job}: the input regenerated from the seed is not the input the receipt \
                 names"
            ),
        ));
    }
    let output = inputs
        .output_hash(&input)
        .map_err(|err| Failure::at(seq, "reexecute", err.to_string()))?;
    if output != expected {
        return Err(Failure::at(
            seq,
            "reexecute",
            format!(
                "job {job}: re-executed on the CPU reference, its output hash is {output}, not \
                 {expected}"
            ),
        ));
    }
    Ok(())
}
