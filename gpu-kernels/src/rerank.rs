//! `rerank`: int8 dot products of queries against a corpus, then the top k per query, ordered
//! by score descending and corpus index ascending.

use rayon::prelude::*;

use crate::device::{groups, Engine, GpuError, KernelId};
use crate::embed::{embed_cpu, Int8Matrix};

/// The kernel's identity.
pub const RERANK: KernelId = KernelId {
    id: "rerank",
    version: 1,
};

/// Largest k.
pub const RERANK_K_MAX: usize = 64;

const TOPK_SHADER: &str = include_str!("shaders/topk.wgsl");

/// One hit: corpus index and its score.
pub type Hit = (u32, i32);

fn check(queries: &Int8Matrix, corpus: &Int8Matrix, k: usize) -> Result<(), GpuError> {
    let bad = |detail: String| GpuError::BadInput {
        kernel: "rerank",
        detail,
    };
    if !(1..=RERANK_K_MAX).contains(&k) {
        return Err(bad(format!("k = {k} is outside 1..={RERANK_K_MAX}")));
    }
    if queries.cols() != corpus.cols() {
        return Err(bad(format!(
            "queries have {} dimensions but the corpus has {}",
            queries.cols(),
            corpus.cols()
        )));
    }
    if corpus.rows() > u32::MAX as usize || queries.rows() > u32::MAX as usize {
        return Err(bad("more than 2^32 rows".to_owned()));
    }
    Ok(())
}

/// The `k` best corpus rows for each query (fewer when the corpus is smaller than `k`).
pub fn rerank(
    engine: Engine,
    queries: &Int8Matrix,
    corpus: &Int8Matrix,
    k: usize,
) -> Result<Vec<Vec<Hit>>, GpuError> {
    check(queries, corpus, k)?;
    let gpu = match engine {
        Engine::Cpu => return Ok(rerank_cpu(queries, corpus, k)),
        Engine::Gpu(gpu) => gpu,
    };
    let (q, c) = (queries.rows(), corpus.rows());
    if q == 0 {
        return Ok(Vec::new());
    }
    if c == 0 {
        return Ok(vec![Vec::new(); q]);
    }
    let (packed_q, k4) = queries.packed_rows();
    let (packed_c, _) = corpus.packed_rows();
    for bytes in [packed_q.len() * 4, packed_c.len() * 4, q * c * 4, q * k * 8] {
        gpu.check_size("rerank", bytes as u64)?;
    }
    let (x, y) = (groups(c, 16), groups(q, 16));
    gpu.check_groups(x.max(y))?;
    let embed = gpu.pipeline("embed", crate::embed::SHADER, "main");
    let topk = gpu.pipeline("rerank-topk", TOPK_SHADER, "main");
    let embed_params = gpu.uniform("rerank scores params", &[q as u32, k4 as u32, c as u32, 0]);
    let topk_params = gpu.uniform("rerank topk params", &[q as u32, c as u32, k as u32, 0]);
    let q_buf = gpu.input("rerank queries", &packed_q);
    let c_buf = gpu.input("rerank corpus", &packed_c);
    let scores = gpu.output("rerank scores", q * c);
    let best = gpu.output("rerank best", q * k * 2);
    let words: Vec<u32> = gpu.run(
        &[
            (&embed, &[&embed_params, &q_buf, &c_buf, &scores], (x, y, 1)),
            (
                &topk,
                &[&topk_params, &scores, &best],
                (groups(q, 64), 1, 1),
            ),
        ],
        &best,
        q * k * 2,
    )?;
    let kept = k.min(c);
    Ok(words
        .chunks_exact(k * 2)
        .map(|row| {
            row.chunks_exact(2)
                .take(kept)
                .map(|pair| (pair[0], pair[1] as i32))
                .collect()
        })
        .collect())
}

/// The CPU reference: scores by the `embed` reference, then a full sort per query.
pub fn rerank_cpu(queries: &Int8Matrix, corpus: &Int8Matrix, k: usize) -> Vec<Vec<Hit>> {
    let c = corpus.rows();
    if c == 0 {
        return vec![Vec::new(); queries.rows()];
    }
    let scores = embed_cpu(queries, corpus);
    let top = |row: &[i32]| {
        let mut hits: Vec<Hit> = row
            .iter()
            .enumerate()
            .map(|(index, score)| (index as u32, *score))
            .collect();
        // Best score first, the lower index first among equals: a total order (indices
        // differ), so the k best are the same whichever way they are found.
        let order = |a: &Hit, b: &Hit| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        if k < hits.len() {
            hits.select_nth_unstable_by(k, order);
            hits.truncate(k);
        }
        hits.sort_unstable_by(order);
        hits
    };
    if scores.len() < crate::SEQUENTIAL_WORK_MAX {
        scores.chunks(c).map(top).collect()
    } else {
        scores.par_chunks(c).map(top).collect()
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;

    #[test]
    fn the_k_best_are_those_of_a_full_sort_ties_included() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        // Values from a small range, so that many scores tie.
        let mut matrix = |rows: usize, cols: usize| {
            let data = (0..rows * cols)
                .map(|_| (rng.next_u32() % 5) as i8 - 2)
                .collect();
            Int8Matrix::new(rows, cols, data).expect("shape")
        };
        let (queries, corpus) = (matrix(6, 4), matrix(40, 4));
        let scores = embed_cpu(&queries, &corpus);
        for k in [0, 1, 7, 39, 40, 41] {
            let expected: Vec<Vec<Hit>> = scores
                .chunks(corpus.rows())
                .map(|row| {
                    let mut hits: Vec<Hit> = (0..).zip(row.iter().copied()).collect();
                    hits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    hits.truncate(k);
                    hits
                })
                .collect();
            assert_eq!(rerank_cpu(&queries, &corpus, k), expected, "k = {k}");
        }
    }
}
