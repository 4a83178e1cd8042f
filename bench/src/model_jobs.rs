//! The model jobs of the bench: a third of each job type (`encode_state`, `score_sequence`,
//! `predict_next_state`), inputs of the job type's size from the bench's seed, one model per job
//! type, and each job's output on the CPU reference, which every output a system under test
//! gives is checked against.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use fabric_gpu_kernels::models::ModelJob;
use fabric_gpu_kernels::Engine;
use rayon::prelude::*;

use super::BENCH_SEED;

/// The inputs, models and expected outputs of the suite's jobs.
pub(super) struct ModelJobs {
    /// Each job type's weights, in [`ModelJob::ALL`]'s order.
    weights: Vec<Vec<u8>>,
    /// Each job's type and input.
    jobs: Vec<(ModelJob, Vec<u8>)>,
    /// Each job's output on the CPU reference.
    expected: Vec<Vec<u8>>,
}

/// `len` bytes of the bench's seed, named by `what`.
fn seeded_bytes(what: &str, index: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&BENCH_SEED.to_le_bytes())
        .update(what.as_bytes())
        .update(&index.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// The weights of the bench's model of `job`.
fn model_weights(job: ModelJob) -> Vec<u8> {
    match job {
        // alpha 1, shift 3, 16 steps: a stable diffusion of a few steps.
        ModelJob::PredictNextState => {
            [1i32.to_le_bytes(), 3u32.to_le_bytes(), 16u32.to_le_bytes()].concat()
        }
        _ => seeded_bytes(job.name(), 0, job.weights_bytes()),
    }
}

impl ModelJobs {
    /// `count` jobs, job types in turn, with their expected outputs.
    pub(super) fn new(count: usize) -> anyhow::Result<Self> {
        let weights: Vec<Vec<u8>> = ModelJob::ALL.into_iter().map(model_weights).collect();
        let jobs: Vec<(ModelJob, Vec<u8>)> = (0..count)
            .map(|index| {
                let job = ModelJob::ALL[index % ModelJob::ALL.len()];
                (
                    job,
                    seeded_bytes("nodes/input", index as u64, job.input_bytes()),
                )
            })
            .collect();
        let expected = jobs
            .iter()
            .map(|(job, input)| {
                job.execute(&weights[type_index(*job)], input, Engine::Cpu)
                    .map_err(|err| anyhow!("the CPU reference of {}: {err}", job.name()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            weights,
            jobs,
            expected,
        })
    }

    /// How many jobs.
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Job `index`: its type and input.
    pub(super) fn job(&self, index: usize) -> (ModelJob, &[u8]) {
        let (job, input) = &self.jobs[index];
        (*job, input)
    }

    /// Job `index`'s output on the CPU reference.
    pub(super) fn expected(&self, index: usize) -> &[u8] {
        &self.expected[index]
    }

    /// The weights of the model of `job`.
    pub(super) fn weights(&self, job: ModelJob) -> &[u8] {
        &self.weights[type_index(job)]
    }

    /// The jobs of `range` as the Celery client reads them: a u32 LE count, then per job its
    /// type's index and its input.
    pub(super) fn encode(&self, range: Range<usize>) -> anyhow::Result<Vec<u8>> {
        let jobs = self
            .jobs
            .get(range.clone())
            .ok_or_else(|| anyhow!("jobs {range:?} of {}", self.jobs.len()))?;
        let mut out = u32::try_from(jobs.len())?.to_le_bytes().to_vec();
        for (job, input) in jobs {
            out.push(type_index(*job) as u8);
            out.extend_from_slice(input);
        }
        Ok(out)
    }

    /// Checks `outputs` (the outputs of the jobs of `range`, one after another) against the
    /// CPU reference.
    pub(super) fn check_outputs(
        &self,
        range: Range<usize>,
        outputs: &[u8],
        who: &str,
    ) -> anyhow::Result<()> {
        let mut at = 0;
        for index in range {
            let expected = &self.expected[index];
            let output = outputs.get(at..at + expected.len());
            ensure!(
                output == Some(expected.as_slice()),
                "{who}'s output of job {index} ({}) is not the CPU reference's",
                self.jobs[index].0.name()
            );
            at += expected.len();
        }
        ensure!(
            at == outputs.len(),
            "{who} gave {} bytes of outputs, not {at}",
            outputs.len()
        );
        Ok(())
    }
}

/// The index of `job` in [`ModelJob::ALL`].
fn type_index(job: ModelJob) -> usize {
    ModelJob::ALL
        .iter()
        .position(|candidate| *candidate == job)
        .unwrap_or_default()
}

impl ModelJobs {
    /// The jobs of `range` on the CPU reference in this process: jobs/s on `threads` threads,
    /// and one job's average time on one core.
    pub(super) fn reference_rates(
        &self,
        range: Range<usize>,
        threads: usize,
    ) -> anyhow::Result<(f64, Duration)> {
        let jobs = self
            .jobs
            .get(range.clone())
            .ok_or_else(|| anyhow!("jobs {range:?} of {}", self.jobs.len()))?;
        ensure!(!jobs.is_empty(), "no jobs to time");
        let run = |(job, input): &(ModelJob, Vec<u8>)| {
            job.execute(self.weights(*job), input, Engine::Cpu)
                .map(|output| output.len())
                .map_err(|err| anyhow!("the CPU reference of {}: {err}", job.name()))
        };
        let started = Instant::now();
        for job in jobs {
            run(job)?;
        }
        let one_job = started.elapsed() / jobs.len() as u32;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .context("could not start the reference's threads")?;
        let started = Instant::now();
        pool.install(|| jobs.par_iter().map(run).collect::<anyhow::Result<Vec<_>>>())?;
        let jobs_per_s = jobs.len() as f64 / started.elapsed().as_secs_f64();
        Ok((jobs_per_s, one_job))
    }
}
