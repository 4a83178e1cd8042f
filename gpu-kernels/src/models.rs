//! Model jobs: what a node runs for a job of a registered model. A model is a job type (one
//! of the three below, each on one kernel) and its weights; a job of it is an input of the job
//! type's fixed size. The output is a pure function of (job type, weights, input), the same on
//! every engine.
//!
//! | job type | kernel | input bytes | weights bytes | output bytes |
//! | --- | --- | --- | --- | --- |
//! | `encode_state` | `embed` v1 | state: 16×64 int8 (1,024) | projection: 16×64 int8 (1,024) | 16×16 i32 LE (1,024) |
//! | `score_sequence` | `rerank` v1 | queries: 4×64 int8 (256) | corpus: 128×64 int8 (8,192) | per query 8 × (index u32 LE ‖ score i32 LE) (256) |
//! | `predict_next_state` | `simulate` v1 | 32×32 cells, i32 LE (4,096) | alpha i32 LE ‖ shift u32 LE ‖ steps u32 LE (12) | 32×32 cells, i32 LE (4,096) |
//!
//! `encode_state` is `input · weightsᵀ`; `score_sequence` ranks the corpus rows by their dot
//! product with each query (ties to the lower index), top 8; `predict_next_state` runs the
//! diffusion (`shift` ≤ 31, 1 ≤ `steps` ≤ [`PREDICT_STEPS_MAX`]) on the cells as they are.

use crate::device::{Engine, GpuError, KernelId};
use crate::embed::{embed, Int8Matrix, EMBED};
use crate::rerank::{rerank, RERANK};
use crate::simulate::{simulate, Diffusion, Grid, SIMULATE};

const ENCODE_ROWS: usize = 16;
const ENCODE_DIMS: usize = 64;
const ENCODE_OUTPUTS: usize = 16;
const SCORE_QUERIES: usize = 4;
const SCORE_DIMS: usize = 64;
const SCORE_CORPUS: usize = 128;
const SCORE_TOP: usize = 8;
const PREDICT_SIDE: usize = 32;
/// Most diffusion steps a `predict_next_state` model may ask for.
pub const PREDICT_STEPS_MAX: u32 = 64;

/// The job type of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelJob {
    /// `encode_state` on `embed`.
    EncodeState,
    /// `score_sequence` on `rerank`.
    ScoreSequence,
    /// `predict_next_state` on `simulate`.
    PredictNextState,
}

impl ModelJob {
    /// Every job type.
    pub const ALL: [ModelJob; 3] = [
        ModelJob::EncodeState,
        ModelJob::ScoreSequence,
        ModelJob::PredictNextState,
    ];

    /// Its name (`encode_state`, `score_sequence`, `predict_next_state`).
    pub fn name(self) -> &'static str {
        match self {
            ModelJob::EncodeState => "encode_state",
            ModelJob::ScoreSequence => "score_sequence",
            ModelJob::PredictNextState => "predict_next_state",
        }
    }

    /// The job type of a name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|job| job.name() == name)
    }

    /// The kernel it runs on.
    pub fn kernel(self) -> KernelId {
        match self {
            ModelJob::EncodeState => EMBED,
            ModelJob::ScoreSequence => RERANK,
            ModelJob::PredictNextState => SIMULATE,
        }
    }

    /// Bytes of a job's input.
    pub fn input_bytes(self) -> usize {
        match self {
            ModelJob::EncodeState => ENCODE_ROWS * ENCODE_DIMS,
            ModelJob::ScoreSequence => SCORE_QUERIES * SCORE_DIMS,
            ModelJob::PredictNextState => PREDICT_SIDE * PREDICT_SIDE * 4,
        }
    }

    /// Bytes of a model's weights.
    pub fn weights_bytes(self) -> usize {
        match self {
            ModelJob::EncodeState => ENCODE_OUTPUTS * ENCODE_DIMS,
            ModelJob::ScoreSequence => SCORE_CORPUS * SCORE_DIMS,
            ModelJob::PredictNextState => 12,
        }
    }

    /// Bytes of a job's output.
    pub fn output_bytes(self) -> usize {
        match self {
            ModelJob::EncodeState => ENCODE_ROWS * ENCODE_OUTPUTS * 4,
            ModelJob::ScoreSequence => SCORE_QUERIES * SCORE_TOP * 8,
            ModelJob::PredictNextState => PREDICT_SIDE * PREDICT_SIDE * 4,
        }
    }

    /// Why `weights` are not weights of this job type, if they are not.
    pub fn check_weights(self, weights: &[u8]) -> Result<(), GpuError> {
        self.check_len("weights", weights.len(), self.weights_bytes())?;
        if self == ModelJob::PredictNextState {
            diffusion_of(weights)?;
        }
        Ok(())
    }

    /// Runs a job of this type with `weights` on `input` on `engine`: its output bytes.
    pub fn execute(
        self,
        weights: &[u8],
        input: &[u8],
        engine: Engine,
    ) -> Result<Vec<u8>, GpuError> {
        self.check_weights(weights)?;
        self.check_len("input", input.len(), self.input_bytes())?;
        let output = match self {
            ModelJob::EncodeState => {
                let state = Int8Matrix::new(ENCODE_ROWS, ENCODE_DIMS, int8(input))?;
                let projection = Int8Matrix::new(ENCODE_OUTPUTS, ENCODE_DIMS, int8(weights))?;
                i32_bytes(&embed(engine, &state, &projection)?)
            }
            ModelJob::ScoreSequence => {
                let queries = Int8Matrix::new(SCORE_QUERIES, SCORE_DIMS, int8(input))?;
                let corpus = Int8Matrix::new(SCORE_CORPUS, SCORE_DIMS, int8(weights))?;
                let hits = rerank(engine, &queries, &corpus, SCORE_TOP)?;
                let mut out = Vec::with_capacity(self.output_bytes());
                for (index, score) in hits.iter().flatten() {
                    out.extend_from_slice(&index.to_le_bytes());
                    out.extend_from_slice(&score.to_le_bytes());
                }
                out
            }
            ModelJob::PredictNextState => {
                let grid = Grid {
                    h: PREDICT_SIDE,
                    w: PREDICT_SIDE,
                    cells: input
                        .chunks_exact(4)
                        .map(|word| i32::from_le_bytes([word[0], word[1], word[2], word[3]]))
                        .collect(),
                };
                i32_bytes(&simulate(engine, &grid, &diffusion_of(weights)?)?.cells)
            }
        };
        // The shapes above are this module's own: an output of another size is a bug here.
        debug_assert_eq!(output.len(), self.output_bytes());
        Ok(output)
    }

    fn check_len(self, what: &str, actual: usize, wanted: usize) -> Result<(), GpuError> {
        if actual == wanted {
            return Ok(());
        }
        Err(GpuError::BadInput {
            kernel: self.kernel().id,
            detail: format!(
                "{what} of a {} job has {actual} bytes, not {wanted}",
                self.name()
            ),
        })
    }
}

fn int8(bytes: &[u8]) -> Vec<i8> {
    bytes.iter().map(|byte| *byte as i8).collect()
}

fn i32_bytes(values: &[i32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

/// The diffusion of `predict_next_state` weights (already 12 bytes long).
fn diffusion_of(weights: &[u8]) -> Result<Diffusion, GpuError> {
    let word = |at: usize| {
        [
            weights[at],
            weights[at + 1],
            weights[at + 2],
            weights[at + 3],
        ]
    };
    let diffusion = Diffusion {
        alpha: i32::from_le_bytes(word(0)),
        shift: u32::from_le_bytes(word(4)),
        steps: u32::from_le_bytes(word(8)),
    };
    if diffusion.shift > 31 || diffusion.steps == 0 || diffusion.steps > PREDICT_STEPS_MAX {
        return Err(GpuError::BadInput {
            kernel: SIMULATE.id,
            detail: format!(
                "predict_next_state weights need shift <= 31 and 1 <= steps <= \
                 {PREDICT_STEPS_MAX}, not shift {} and steps {}",
                diffusion.shift, diffusion.steps
            ),
        });
    }
    Ok(diffusion)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut out);
        out
    }

    fn weights(job: ModelJob, seed: u8) -> Vec<u8> {
        match job {
            ModelJob::PredictNextState => {
                [1i32.to_le_bytes(), 3u32.to_le_bytes(), 16u32.to_le_bytes()].concat()
            }
            _ => bytes(job.weights_bytes(), seed),
        }
    }

    /// Every job type gives the same bytes on the machine's adapter as on the CPU reference,
    /// of the documented size.
    #[test]
    fn model_jobs_agree_on_the_adapter_and_the_cpu() {
        let engine = crate::tests::engine();
        for job in ModelJob::ALL {
            for seed in [1u8, 2, 3] {
                let weights = weights(job, seed);
                let input = bytes(job.input_bytes(), seed.wrapping_add(100));
                let reference = job.execute(&weights, &input, Engine::Cpu).expect("cpu");
                assert_eq!(reference.len(), job.output_bytes());
                let on_adapter = job.execute(&weights, &input, engine).expect("adapter");
                assert_eq!(reference, on_adapter, "{job:?} on {}", engine.name());
            }
            assert_eq!(ModelJob::from_name(job.name()), Some(job));
        }
    }

    /// Wrong sizes and impossible diffusions are named, not run.
    #[test]
    fn bad_weights_and_inputs_are_refused() {
        let job = ModelJob::EncodeState;
        let error = job
            .execute(&[0; 1024], &[0; 1023], Engine::Cpu)
            .expect_err("short input");
        assert!(
            error
                .to_string()
                .contains("input of a encode_state job has 1023 bytes, not 1024"),
            "{error}"
        );
        let steps_zero = [1i32.to_le_bytes(), 3u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        let error = ModelJob::PredictNextState
            .check_weights(&steps_zero)
            .expect_err("no steps");
        assert!(error.to_string().contains("steps 0"), "{error}");
        assert!(ModelJob::ScoreSequence.check_weights(&[0; 12]).is_err());
    }

    /// Pinned output hashes (FORMAT.md §13): a node in another language checks its kernels
    /// against them. Inputs and weights are BLAKE3 XOF bytes of one seed byte.
    #[test]
    fn model_job_vectors_are_stable() {
        let hashes: Vec<String> = ModelJob::ALL
            .iter()
            .map(|job| {
                let output = job
                    .execute(&weights(*job, 7), &bytes(job.input_bytes(), 8), Engine::Cpu)
                    .expect("cpu");
                blake3::hash(&output).to_hex().to_string()
            })
            .collect();
        assert_eq!(
            hashes,
            [
                "abefef62b747fbc2de96c8b106345eefb064244c6499e851ae466f14eabf956c",
                "3ffbcc4f999d89a217b85fa6d7383afd5493d3647f4e0d015f48cb4bc9aaac5a",
                "7f2cf8463abb9d45d34d6a35276c28423cdbfc1fedf3b7adace53dd8261982b6",
            ]
        );
    }
}
