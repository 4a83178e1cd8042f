//! Fabric's GPU kernels (wgpu compute, WGSL), each with a multithreaded CPU reference that
//! gives bit-identical output, so anyone can re-execute a job and check its receipt.
//!
//! - [`blake3_batch`]: BLAKE3 digests of many messages (up to 64 KiB each) in one dispatch.
//! - [`device`]: the one device of a process ([`device::shared`], chosen by `FABRIC_GPU` =
//!   `auto` | `off` | `require`) and the [`Engine`] a kernel runs on.
//! - [`embed`]: int8 × int8 matrix product, i32 sums, tiled through workgroup memory.
//! - [`jobs`]: the fabric's GPU jobs: inputs regenerated from a seed, executed on any engine,
//!   output bytes and hashes that receipts carry.
//! - [`models`]: the job types of registered models (`encode_state`, `score_sequence`,
//!   `predict_next_state`) over those kernels.
//! - [`rerank`]: int8 dot products of queries against a corpus, then top-k per query.
//! - [`simulate`]: a fixed-point 2-D diffusion stencil.
//!
//! Architecture invariant: every kernel is integer or fixed-point, and every rounding,
//! overflow and border rule is written down; its output never depends on the adapter, the
//! thread count or the order of work. The tests run each kernel on the machine's adapter
//! against its CPU reference on random inputs, odd sizes included.
#![deny(missing_docs)]

pub mod blake3_batch;
pub mod device;
pub mod embed;
pub mod jobs;
pub mod models;
pub mod rerank;
pub mod simulate;

pub use device::{Engine, Gpu, GpuError, GpuMode, KernelId};

/// Below this much work (cells × steps, multiply-adds, bytes) a CPU reference runs on the
/// calling thread: handing a small job to the thread pool costs more than the job.
pub const SEQUENTIAL_WORK_MAX: usize = 1 << 16;

#[cfg(test)]
mod tests;
