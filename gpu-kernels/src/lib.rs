//! Fabric's GPU kernels (wgpu compute, WGSL), each with a CPU reference implementation that
//! gives bit-identical output, so anyone can re-execute a job and check its receipt.
//!
//! Architecture invariant (for what lands here): every kernel is integer or fixed-point; its
//! output never depends on the adapter, the thread count or the order of work.
//!
//! This crate is empty until the GPU workloads land: it has no API yet, and its manifest pulls
//! in no GPU stack, so builds stay lean until then.
#![deny(missing_docs)]
