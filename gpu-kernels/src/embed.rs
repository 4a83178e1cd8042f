//! `embed`: int8 × int8 matrix product with i32 accumulation.

use rayon::prelude::*;

use crate::device::{groups, Engine, GpuError, KernelId};

/// The kernel's identity.
pub const EMBED: KernelId = KernelId {
    id: "embed",
    version: 1,
};

/// The `embed` shader (also the first pass of `rerank`).
pub(crate) const SHADER: &str = include_str!("shaders/embed.wgsl");
const TILE: u32 = 16;

/// A row-major int8 matrix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Int8Matrix {
    rows: usize,
    cols: usize,
    data: Vec<i8>,
}

impl Int8Matrix {
    /// A `rows` × `cols` matrix from row-major `data`.
    pub fn new(rows: usize, cols: usize, data: Vec<i8>) -> Result<Self, GpuError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(GpuError::BadInput {
                kernel: "embed",
                detail: format!("{} values do not make a {rows}×{cols} matrix", data.len()),
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Rows packed four int8 to a u32 (little-endian), each padded with zeros to whole words.
    pub(crate) fn packed_rows(&self) -> (Vec<u32>, usize) {
        let words_per_row = self.cols.div_ceil(4);
        let mut packed = vec![0u32; self.rows * words_per_row];
        for r in 0..self.rows {
            for (c, value) in self.row(r).iter().enumerate() {
                packed[r * words_per_row + c / 4] |= u32::from(*value as u8) << (8 * (c % 4));
            }
        }
        (packed, words_per_row)
    }
}

/// `A × Bᵀ`: `a` is n×k, `b_t` is m×k (B given as its transpose); the result is n×m, row-major,
/// each entry the wrapping i32 sum of k products.
pub fn embed(engine: Engine, a: &Int8Matrix, b_t: &Int8Matrix) -> Result<Vec<i32>, GpuError> {
    check(a, b_t)?;
    match engine {
        Engine::Cpu => Ok(embed_cpu(a, b_t)),
        Engine::Gpu(gpu) => {
            let (n, m) = (a.rows(), b_t.rows());
            if n == 0 || m == 0 {
                return Ok(Vec::new());
            }
            let (packed_a, k4) = a.packed_rows();
            let (packed_b, _) = b_t.packed_rows();
            for bytes in [packed_a.len() * 4, packed_b.len() * 4, n * m * 4] {
                gpu.check_size("embed", bytes as u64)?;
            }
            let (x, y) = (groups(m, TILE), groups(n, TILE));
            gpu.check_groups(x.max(y))?;
            let pipeline = gpu.pipeline("embed", SHADER, "main");
            let params = gpu.uniform("embed params", &[n as u32, k4 as u32, m as u32, 0]);
            let a_buf = gpu.input("embed a", &packed_a);
            let b_buf = gpu.input("embed bt", &packed_b);
            let c_buf = gpu.output("embed c", n * m);
            gpu.run(
                &[(&pipeline, &[&params, &a_buf, &b_buf, &c_buf], (x, y, 1))],
                &c_buf,
                n * m,
            )
        }
    }
}

fn check(a: &Int8Matrix, b_t: &Int8Matrix) -> Result<(), GpuError> {
    if a.cols() != b_t.cols() {
        return Err(GpuError::BadInput {
            kernel: "embed",
            detail: format!(
                "A is {}×{} but Bᵀ is {}×{}: the inner dimensions differ",
                a.rows(),
                a.cols(),
                b_t.rows(),
                b_t.cols()
            ),
        });
    }
    if a.rows() > u32::MAX as usize || b_t.rows() > u32::MAX as usize {
        return Err(GpuError::BadInput {
            kernel: "embed",
            detail: "more than 2^32 rows".to_owned(),
        });
    }
    Ok(())
}

/// The CPU reference: every row on its own core (one core for small products), wrapping i32
/// sums.
pub fn embed_cpu(a: &Int8Matrix, b_t: &Int8Matrix) -> Vec<i32> {
    let m = b_t.rows();
    let mut out = vec![0i32; a.rows() * m];
    if m == 0 {
        return out;
    }
    let fill_row = |(r, out_row): (usize, &mut [i32])| {
        let row = a.row(r);
        for (col, cell) in out_row.iter_mut().enumerate() {
            *cell = dot_i8(row, b_t.row(col));
        }
    };
    if out.len() * a.cols() < crate::SEQUENTIAL_WORK_MAX {
        out.chunks_mut(m).enumerate().for_each(fill_row);
    } else {
        out.par_chunks_mut(m).enumerate().for_each(fill_row);
    }
    out
}

/// Wrapping i32 dot product of two int8 vectors.
pub(crate) fn dot_i8(x: &[i8], y: &[i8]) -> i32 {
    x.iter().zip(y).fold(0i32, |sum, (p, q)| {
        sum.wrapping_add(i32::from(*p).wrapping_mul(i32::from(*q)))
    })
}
