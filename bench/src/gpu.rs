//! Suite `gpu`: each kernel of `fabric-gpu-kernels` on the adapter against its CPU reference
//! on every core, after checking both give the same output.

use std::time::Duration;

use anyhow::ensure;
use fabric_gpu_kernels::{device, GpuMode};

use super::{timed, Against, Bench, Figure, SuiteReport};

/// A kernel's throughput on the adapter against its CPU reference, after checking that both
/// gave the same output.
fn kernel_figure<T: PartialEq>(
    figure: &'static str,
    unit: &'static str,
    work_units: f64,
    gpu: (Duration, T),
    cpu: (Duration, T),
    what: &'static str,
) -> anyhow::Result<Figure> {
    ensure!(
        gpu.1 == cpu.1,
        "{figure}: the adapter and the CPU reference disagree"
    );
    let on_gpu = work_units / gpu.0.as_secs_f64();
    let on_cpu = work_units / cpu.0.as_secs_f64();
    Ok(Figure::new(
        figure,
        on_gpu,
        unit,
        (Against::Baseline, on_cpu),
        format!("{what}; vs. the CPU reference on every core"),
    ))
}

/// Why the gpu suite cannot run here, when it cannot: `FABRIC_GPU=off`, or no adapter at all.
/// The suite measures whatever adapter there is, a software one too (which `auto` leaves alone
/// in runs).
pub(super) fn unavailable() -> anyhow::Result<Option<String>> {
    Ok(match GpuMode::from_env()? {
        GpuMode::Off => Some("FABRIC_GPU=off".to_owned()),
        GpuMode::Auto | GpuMode::Require => match device::shared(GpuMode::Require) {
            Ok(Some(_)) => None,
            Ok(None) => Some("no GPU adapter".to_owned()),
            Err(error) => Some(error.to_string()),
        },
    })
}

pub(super) fn suite(bench: &Bench<'_>) -> anyhow::Result<SuiteReport> {
    let args = bench.args;
    use fabric_gpu_kernels::blake3_batch::{hash_batch, hash_batch_cpu};
    use fabric_gpu_kernels::embed::{embed, embed_cpu, Int8Matrix};
    use fabric_gpu_kernels::rerank::{rerank, rerank_cpu};
    use fabric_gpu_kernels::simulate::{simulate, simulate_cpu, Diffusion, Grid};
    use fabric_gpu_kernels::Engine;
    use filler::ints;

    let mode = match GpuMode::from_env()? {
        GpuMode::Off => GpuMode::Off,
        GpuMode::Auto | GpuMode::Require => GpuMode::Require,
    };
    let gpu = match device::shared(mode).ok().flatten() {
        Some(gpu) => gpu,
        None => anyhow::bail!(
            "bench gpu needs a GPU adapter and wgpu found none (FABRIC_GPU=off, or no Vulkan driver: on Debian, apt-get install mesa-vulkan-drivers libvulkan1)"
        ),
    };
    let engine = Engine::Gpu(gpu);
    let repetitions = bench.repetitions();
    let side = if args.quick { 256 } else { 1024 };
    let matrix = |salt: u64, rows: usize, cols: usize| {
        Int8Matrix::new(
            rows,
            cols,
            ints(salt, rows * cols).map(|v| v as i8).collect(),
        )
    };

    let a = matrix(1, side, side)?;
    let b = matrix(2, side, side)?;
    let ops = 2.0 * (side as f64).powi(3);
    let embed_figure = kernel_figure(
        "embed (int8 matmul)",
        "ops/s",
        ops,
        timed(repetitions, || Ok(embed(engine, &a, &b)?))?,
        timed(repetitions, || Ok(embed_cpu(&a, &b)))?,
        "n = k = m = side; 2·n·k·m multiply-adds per second, upload and readback included",
    )?;

    let (queries, corpus_rows, dims) = (side / 4, side * 16, 256);
    let q = matrix(3, queries, dims)?;
    let corpus = matrix(4, corpus_rows, dims)?;
    let rerank_figure = kernel_figure(
        "rerank (top 10)",
        "queries/s",
        queries as f64,
        timed(repetitions, || Ok(rerank(engine, &q, &corpus, 10)?))?,
        timed(repetitions, || Ok(rerank_cpu(&q, &corpus, 10)))?,
        "queries of 256 int8 against side·16 corpus rows, top 10 each",
    )?;

    let grid = Grid {
        h: side,
        w: side,
        cells: ints(5, side * side).map(|v| (v as i32) >> 4).collect(),
    };
    let diffusion = Diffusion {
        alpha: 3,
        shift: 4,
        steps: 20,
    };
    let simulate_figure = kernel_figure(
        "simulate (diffusion)",
        "cells/s",
        (side * side) as f64 * f64::from(diffusion.steps),
        timed(repetitions, || Ok(simulate(engine, &grid, &diffusion)?))?,
        timed(repetitions, || Ok(simulate_cpu(&grid, &diffusion)))?,
        "side × side grid, 20 steps; cell updates per second",
    )?;

    // Ledger entries: a few hundred bytes each, hashed in one batch.
    let entries: Vec<Vec<u8>> = (0..side as u64 * 64)
        .map(|i| ints(6 + i, 60).flat_map(u32::to_le_bytes).collect())
        .collect();
    let messages: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    let bytes: usize = entries.iter().map(Vec::len).sum();
    let blake3_figure = kernel_figure(
        "blake3 (batch hashing)",
        "bytes/s",
        bytes as f64,
        timed(repetitions, || Ok(hash_batch(engine, &messages)?))?,
        timed(repetitions, || Ok(hash_batch_cpu(&messages)))?,
        "side·64 messages of 240 bytes (ledger-entry sized); digests equal to the blake3 crate's",
    )?;

    let figures = vec![embed_figure, rerank_figure, simulate_figure, blake3_figure];
    Ok(SuiteReport {
        suite: "gpu",
        events: side,
        batch_events: 0,
        repetitions,
        adapter: Some(gpu.adapter_name().to_owned()),
        notes: Vec::new(),
        figures,
    })
}

/// Deterministic filler for the GPU bench's inputs.
mod filler {
    /// `count` pseudo-random u32 from `salt` (splitmix64), the same on every run.
    pub fn ints(salt: u64, count: usize) -> impl Iterator<Item = u32> {
        let mut state = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..count).map(move |_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u32
        })
    }
}
