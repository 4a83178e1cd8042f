//! `simulate`: fixed-point 2-D diffusion, `steps` times.
//!
//! For each cell `c` with neighbours up, down, left, right (a neighbour outside the grid takes
//! the cell's own value): `next = c + (((up + down + left + right - 4c) * alpha) >> shift)`,
//! `>>` being the arithmetic shift (rounding toward negative infinity), every operation
//! wrapping on i32 overflow. Bit-identical on every adapter and on the CPU.

use rayon::prelude::*;

use crate::device::{groups, Engine, GpuError, KernelId};

/// The kernel's identity.
pub const SIMULATE: KernelId = KernelId {
    id: "simulate",
    version: 1,
};

const SHADER: &str = include_str!("shaders/simulate.wgsl");
const TILE: u32 = 16;

/// The diffusion's coefficients: the rate is `alpha / 2^shift`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Diffusion {
    /// Numerator of the rate.
    pub alpha: i32,
    /// Binary exponent of the rate's denominator (0..=31).
    pub shift: u32,
    /// Steps to run.
    pub steps: u32,
}

/// An `h` × `w` grid of i32, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// `h * w` cells.
    pub cells: Vec<i32>,
}

fn check(grid: &Grid, diffusion: &Diffusion) -> Result<(), GpuError> {
    let bad = |detail: String| GpuError::BadInput {
        kernel: "simulate",
        detail,
    };
    if grid.h.checked_mul(grid.w) != Some(grid.cells.len()) {
        return Err(bad(format!(
            "{} cells do not make a {}×{} grid",
            grid.cells.len(),
            grid.h,
            grid.w
        )));
    }
    if grid.h > u32::MAX as usize || grid.w > u32::MAX as usize {
        return Err(bad("a side over 2^32 cells".to_owned()));
    }
    if diffusion.shift > 31 {
        return Err(bad(format!("shift {} is over 31", diffusion.shift)));
    }
    Ok(())
}

/// Runs `diffusion` on `grid` and returns the grid after its last step.
pub fn simulate(engine: Engine, grid: &Grid, diffusion: &Diffusion) -> Result<Grid, GpuError> {
    check(grid, diffusion)?;
    let gpu = match engine {
        Engine::Cpu => return Ok(simulate_cpu(grid, diffusion)),
        Engine::Gpu(gpu) => gpu,
    };
    if diffusion.steps == 0 || grid.cells.is_empty() {
        return Ok(grid.clone());
    }
    gpu.check_size("simulate", (grid.cells.len() * 4) as u64)?;
    let (x, y) = (groups(grid.w, TILE), groups(grid.h, TILE));
    gpu.check_groups(x.max(y))?;
    let pipeline = gpu.pipeline("simulate", SHADER, "main");
    let params = gpu.uniform(
        "simulate params",
        &[
            grid.h as u32,
            grid.w as u32,
            diffusion.alpha as u32,
            diffusion.shift,
        ],
    );
    let ping = gpu.input("simulate ping", &grid.cells);
    let pong = gpu.output("simulate pong", grid.cells.len());
    let forward: [&wgpu::Buffer; 3] = [&params, &ping, &pong];
    let backward: [&wgpu::Buffer; 3] = [&params, &pong, &ping];
    let passes: Vec<_> = (0..diffusion.steps)
        .map(|step| {
            let buffers: &[&wgpu::Buffer] = if step % 2 == 0 { &forward } else { &backward };
            (pipeline.as_ref(), buffers, (x, y, 1))
        })
        .collect();
    let result = if diffusion.steps % 2 == 1 {
        &pong
    } else {
        &ping
    };
    let cells = gpu.run(&passes, result, grid.cells.len())?;
    Ok(Grid {
        h: grid.h,
        w: grid.w,
        cells,
    })
}

/// The CPU reference: rows of each step on every core (one core for small grids, where
/// handing rows to other threads costs more than the rows).
pub fn simulate_cpu(grid: &Grid, diffusion: &Diffusion) -> Grid {
    let (h, w) = (grid.h, grid.w);
    let mut current = grid.cells.clone();
    let mut next = vec![0i32; current.len()];
    if w == 0 {
        return grid.clone();
    }
    let sequential = current.len() < crate::SEQUENTIAL_WORK_MAX;
    let (alpha, shift) = (diffusion.alpha, diffusion.shift);
    let cell = move |c: i32, up: i32, down: i32, left: i32, right: i32| {
        let lap = up
            .wrapping_add(down)
            .wrapping_add(left)
            .wrapping_add(right)
            .wrapping_sub(c.wrapping_mul(4));
        c.wrapping_add(lap.wrapping_mul(alpha) >> shift)
    };
    for _ in 0..diffusion.steps {
        // A border cell's missing neighbour is the cell itself. A row's first and last cells
        // are done apart, so that the loop over the others has no branch and vectorises.
        let step_row = |(y, out): (usize, &mut [i32])| {
            let row = &current[y * w..(y + 1) * w];
            let up = if y > 0 {
                &current[(y - 1) * w..y * w]
            } else {
                row
            };
            let down = if y + 1 < h {
                &current[(y + 1) * w..(y + 2) * w]
            } else {
                row
            };
            let last = w - 1;
            out[0] = cell(row[0], up[0], down[0], row[0], row[1.min(last)]);
            if last == 0 {
                return;
            }
            out[last] = cell(row[last], up[last], down[last], row[last - 1], row[last]);
            let inner = 1..last;
            let out = &mut out[inner.clone()];
            let (centre, up, down) = (&row[inner.clone()], &up[inner.clone()], &down[inner]);
            let (left, right) = (&row[..last - 1], &row[2..]);
            let neighbours = up.iter().zip(down).zip(left.iter().zip(right));
            for ((out, &c), ((&up, &down), (&left, &right))) in
                out.iter_mut().zip(centre).zip(neighbours)
            {
                *out = cell(c, up, down, left, right);
            }
        };
        if sequential {
            next.chunks_mut(w).enumerate().for_each(step_row);
        } else {
            next.par_chunks_mut(w).enumerate().for_each(step_row);
        }
        std::mem::swap(&mut current, &mut next);
    }
    Grid {
        h,
        w,
        cells: current,
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;

    /// The rule cell by cell, as the module documentation states it.
    fn simulate_cell_by_cell(grid: &Grid, diffusion: &Diffusion) -> Vec<i32> {
        let (h, w) = (grid.h, grid.w);
        let mut current = grid.cells.clone();
        for _ in 0..diffusion.steps {
            let at = |y: usize, x: usize| current[y * w + x];
            let mut next = current.clone();
            for y in 0..h {
                for x in 0..w {
                    let c = at(y, x);
                    let up = if y > 0 { at(y - 1, x) } else { c };
                    let down = if y + 1 < h { at(y + 1, x) } else { c };
                    let left = if x > 0 { at(y, x - 1) } else { c };
                    let right = if x + 1 < w { at(y, x + 1) } else { c };
                    let lap = up
                        .wrapping_add(down)
                        .wrapping_add(left)
                        .wrapping_add(right)
                        .wrapping_sub(c.wrapping_mul(4));
                    next[y * w + x] =
                        c.wrapping_add(lap.wrapping_mul(diffusion.alpha) >> diffusion.shift);
                }
            }
            current = next;
        }
        current
    }

    #[test]
    fn the_reference_follows_the_rule_on_every_shape_and_at_the_edges_of_wrapping() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for (h, w) in [
            (1, 1),
            (1, 2),
            (2, 1),
            (1, 7),
            (7, 1),
            (2, 2),
            (3, 5),
            (32, 32),
            (17, 64),
        ] {
            for (alpha, shift, steps) in [(1, 2, 1), (3, 4, 5), (i32::MAX, 31, 3), (-7, 0, 2)] {
                let cells = (0..h * w).map(|_| rng.next_u32() as i32).collect();
                let grid = Grid { h, w, cells };
                let diffusion = Diffusion {
                    alpha,
                    shift,
                    steps,
                };
                assert_eq!(
                    simulate_cpu(&grid, &diffusion).cells,
                    simulate_cell_by_cell(&grid, &diffusion),
                    "{h}x{w}, alpha {alpha}, shift {shift}, steps {steps}"
                );
            }
        }
    }
}
