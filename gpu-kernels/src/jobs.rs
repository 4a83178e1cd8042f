//! GPU jobs v1: what a GPU job of the fabric computes, as bytes anyone can regenerate.
//!
//! A job's input is a pure function of its kernel and a 32-byte input seed (which the
//! workload draws from the run's seed and the job id): the kernel's input bytes are the first
//! `input_len` bytes of the BLAKE3 XOF of `derive_key("fabric 2026-12 gpu job input v1",
//! kernel id ‖ 0x00 ‖ input seed)`. The job's `input_hash` is BLAKE3 of those bytes, its
//! `output_hash` BLAKE3 of the output bytes. Shapes (fixed by this version):
//!
//! | kernel | input bytes | output bytes |
//! | --- | --- | --- |
//! | `embed` | A (16×64 int8) ‖ Bᵀ (16×64 int8) | 16×16 i32 LE |
//! | `rerank` | queries (4×64 int8) ‖ corpus (128×64 int8); k = 8 | per query 8 × (index u32 LE ‖ score i32 LE) |
//! | `simulate` | 32×32 cells, each i32 LE of 4 bytes shifted right by 12 (arithmetic); alpha 1, shift 3, 16 steps | 32×32 i32 LE |
//! | `blake3` | 32 messages of 128 bytes | 32 digests of 32 bytes |

use crate::blake3_batch::{hash_batch, BLAKE3};
use crate::device::{Engine, GpuError, KernelId};
use crate::embed::{embed, Int8Matrix, EMBED};
use crate::rerank::{rerank, RERANK};
use crate::simulate::{simulate, Diffusion, Grid, SIMULATE};

/// Derivation context of job inputs.
pub const JOB_INPUT_CONTEXT: &str = "fabric 2026-12 gpu job input v1";

const EMBED_N: usize = 16;
const EMBED_K: usize = 64;
const EMBED_M: usize = 16;
const RERANK_QUERIES: usize = 4;
const RERANK_DIMS: usize = 64;
const RERANK_CORPUS: usize = 128;
const RERANK_K: usize = 8;
const GRID_SIDE: usize = 32;
const DIFFUSION: Diffusion = Diffusion {
    alpha: 1,
    shift: 3,
    steps: 16,
};
const BLAKE3_MESSAGES: usize = 32;
const BLAKE3_MESSAGE_BYTES: usize = 128;

/// The kernel a GPU job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobKernel {
    /// int8 matrix product.
    Embed,
    /// Top-k of dot products.
    Rerank,
    /// Fixed-point diffusion.
    Simulate,
    /// Batch hashing.
    Blake3,
}

impl JobKernel {
    /// Every kernel.
    pub const ALL: [JobKernel; 4] = [
        JobKernel::Embed,
        JobKernel::Rerank,
        JobKernel::Simulate,
        JobKernel::Blake3,
    ];

    /// The kernel of an id (`embed`, `rerank`, `simulate`, `blake3`).
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kernel| kernel.id().id == id)
    }

    /// Its id and version, as receipts carry them.
    pub fn id(self) -> KernelId {
        match self {
            JobKernel::Embed => EMBED,
            JobKernel::Rerank => RERANK,
            JobKernel::Simulate => SIMULATE,
            JobKernel::Blake3 => BLAKE3,
        }
    }

    fn input_len(self) -> usize {
        match self {
            JobKernel::Embed => (EMBED_N + EMBED_M) * EMBED_K,
            JobKernel::Rerank => (RERANK_QUERIES + RERANK_CORPUS) * RERANK_DIMS,
            JobKernel::Simulate => GRID_SIDE * GRID_SIDE * 4,
            JobKernel::Blake3 => BLAKE3_MESSAGES * BLAKE3_MESSAGE_BYTES,
        }
    }
}

/// A GPU job's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInput {
    /// Its kernel.
    pub kernel: JobKernel,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl JobInput {
    /// The input of a `kernel` job with this input seed.
    pub fn generate(kernel: JobKernel, input_seed: &[u8; 32]) -> Self {
        let mut hasher = blake3::Hasher::new_derive_key(JOB_INPUT_CONTEXT);
        hasher.update(kernel.id().id.as_bytes());
        hasher.update(&[0]);
        hasher.update(input_seed);
        let mut bytes = vec![0u8; kernel.input_len()];
        hasher.finalize_xof().fill(&mut bytes);
        Self { kernel, bytes }
    }

    /// BLAKE3 of the input bytes: the job's content address.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.bytes).as_bytes()
    }

    /// Runs the job on `engine` and returns its output bytes.
    pub fn execute(&self, engine: Engine) -> Result<Vec<u8>, GpuError> {
        let int8 = |bytes: &[u8]| bytes.iter().map(|b| *b as i8).collect::<Vec<i8>>();
        let i32_bytes = |values: &[i32]| {
            values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let bytes = &self.bytes;
        Ok(match self.kernel {
            JobKernel::Embed => {
                let split = EMBED_N * EMBED_K;
                let a = Int8Matrix::new(EMBED_N, EMBED_K, int8(&bytes[..split]))?;
                let b_t = Int8Matrix::new(EMBED_M, EMBED_K, int8(&bytes[split..]))?;
                i32_bytes(&embed(engine, &a, &b_t)?)
            }
            JobKernel::Rerank => {
                let split = RERANK_QUERIES * RERANK_DIMS;
                let queries = Int8Matrix::new(RERANK_QUERIES, RERANK_DIMS, int8(&bytes[..split]))?;
                let corpus = Int8Matrix::new(RERANK_CORPUS, RERANK_DIMS, int8(&bytes[split..]))?;
                let hits = rerank(engine, &queries, &corpus, RERANK_K)?;
                let mut out = Vec::with_capacity(RERANK_QUERIES * RERANK_K * 8);
                for (index, score) in hits.iter().flatten() {
                    out.extend_from_slice(&index.to_le_bytes());
                    out.extend_from_slice(&score.to_le_bytes());
                }
                out
            }
            JobKernel::Simulate => {
                let cells = bytes
                    .chunks_exact(4)
                    .map(|word| i32::from_le_bytes([word[0], word[1], word[2], word[3]]) >> 12)
                    .collect();
                let grid = Grid {
                    h: GRID_SIDE,
                    w: GRID_SIDE,
                    cells,
                };
                i32_bytes(&simulate(engine, &grid, &DIFFUSION)?.cells)
            }
            JobKernel::Blake3 => {
                let messages: Vec<&[u8]> = bytes.chunks_exact(BLAKE3_MESSAGE_BYTES).collect();
                hash_batch(engine, &messages)?.concat()
            }
        })
    }
}

/// BLAKE3 of a job's output bytes, as its receipt carries it.
pub fn output_hash(output: &[u8]) -> [u8; 32] {
    *blake3::hash(output).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every job kernel gives the same output bytes on the machine's adapter as on its CPU
    /// reference, and inputs are a function of the seed alone.
    #[test]
    fn jobs_are_bit_identical_on_the_adapter_and_the_cpu_reference() {
        let engine = crate::tests::engine();
        for kernel in JobKernel::ALL {
            for seed in [[0u8; 32], [7u8; 32], [0xff; 32]] {
                let input = JobInput::generate(kernel, &seed);
                assert_eq!(input, JobInput::generate(kernel, &seed));
                assert_eq!(input.bytes.len(), kernel.input_len());
                let reference = input.execute(Engine::Cpu).expect("cpu");
                let on_adapter = input.execute(engine).expect("adapter");
                assert_eq!(
                    output_hash(&reference),
                    output_hash(&on_adapter),
                    "{kernel:?} on {}",
                    engine.name()
                );
            }
            assert_eq!(JobKernel::from_id(kernel.id().id), Some(kernel));
        }
        assert_ne!(
            JobInput::generate(JobKernel::Embed, &[1; 32]).hash(),
            JobInput::generate(JobKernel::Embed, &[2; 32]).hash()
        );
    }
}

#[cfg(test)]
mod vectors {
    use super::*;

    /// Pinned input and output hashes of each kernel's job with input seed 0x07…07 (FORMAT.md
    /// §13): a verifier in another language can check its generator and kernels against them.
    #[test]
    fn job_vectors_are_stable() {
        let expected = [
            (
                JobKernel::Embed,
                "e0929a68be729d41530404c7f14336397d8413d3e08a6cf510e6defe25325545",
                "4f2fe1a98ccdc27a96ca7b36b5ce1afa2c693206d0c3dc9e44e0a87476beae13",
            ),
            (
                JobKernel::Rerank,
                "fdd1177ce5711659214b6705d3b98786e1f18b6f104024bce83655b3c1de3c71",
                "4963cebaadab76c85b5598319ffdb6f942701e8c8503b405116146b8baf23613",
            ),
            (
                JobKernel::Simulate,
                "c5b59e40dcb8a4306f2a3d66e58492cda5d53d4a0a6f5e4a912bf9f522595603",
                "e517474cdec42daecbb55039036b2a7cca52c27f8254c498f06936735dfa73d5",
            ),
            (
                JobKernel::Blake3,
                "580838e5e287442a8cd336cd649613cccfbc3ce42c0f87e74f657b776b449359",
                "f3da3f76c9154f8bf2137cd45cf263aad2918d83485b1fb653ee902feff7f73e",
            ),
        ];
        let actual: Vec<(JobKernel, String, String)> = expected
            .iter()
            .map(|(kernel, _, _)| {
                let input = JobInput::generate(*kernel, &[7; 32]);
                let out = input.execute(Engine::Cpu).expect("cpu");
                (*kernel, hex(&input.hash()), hex(&output_hash(&out)))
            })
            .collect();
        for ((kernel, input_hash, output), (_, got_input, got_output)) in
            expected.iter().zip(&actual)
        {
            assert_eq!(got_input, input_hash, "{kernel:?} input hash");
            assert_eq!(got_output, output, "{kernel:?} output hash");
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
