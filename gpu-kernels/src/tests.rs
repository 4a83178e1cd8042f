//! Every kernel on this machine's adapter against its CPU reference, on random inputs with odd
//! sizes. With `FABRIC_GPU=require` these fail when there is no adapter; by default (`auto`)
//! they run wherever wgpu finds one (in CI: lavapipe).

use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::device::Engine;
use crate::embed::{embed, embed_cpu, Int8Matrix};
use crate::rerank::{rerank, rerank_cpu};
use crate::simulate::{simulate, simulate_cpu, Diffusion, Grid};

pub(crate) fn engine() -> Engine {
    let engine = Engine::from_env().expect("FABRIC_GPU asks for something this machine has");
    eprintln!("kernels run on: {}", engine.name());
    engine
}

fn int8s(rng: &mut ChaCha8Rng, count: usize) -> Vec<i8> {
    (0..count).map(|_| rng.next_u32() as i8).collect()
}

fn matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Int8Matrix {
    Int8Matrix::new(rows, cols, int8s(rng, rows * cols)).expect("sizes match")
}

#[test]
fn fabric_gpu_require_means_a_real_adapter() {
    if std::env::var("FABRIC_GPU").as_deref() == Ok("require") {
        assert!(
            matches!(engine(), Engine::Gpu(_)),
            "FABRIC_GPU=require without a GPU"
        );
    }
}

#[test]
fn embed_matches_its_reference_on_odd_and_extreme_sizes() {
    let engine = engine();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (n, k, m) in [
        (1, 1, 1),
        (3, 5, 7),
        (16, 64, 16),
        (17, 65, 33),
        (40, 257, 5),
        (64, 1000, 48),
    ] {
        let a = matrix(&mut rng, n, k);
        let b = matrix(&mut rng, m, k);
        assert_eq!(
            embed(engine, &a, &b).expect("embed"),
            embed_cpu(&a, &b),
            "{n}×{k}×{m}"
        );
    }
    // All -128: the largest products, so sums near the i32 range are exercised too.
    let a = Int8Matrix::new(2, 4099, vec![-128; 2 * 4099]).expect("sizes");
    let b = Int8Matrix::new(3, 4099, vec![-128; 3 * 4099]).expect("sizes");
    let expected = embed_cpu(&a, &b);
    assert_eq!(expected[0], 16_384 * 4099);
    assert_eq!(embed(engine, &a, &b).expect("embed"), expected);
    // Mismatched inner sizes are refused, not guessed.
    let wrong = matrix(&mut rng, 2, 3);
    assert!(embed(engine, &a, &wrong).is_err());
}

#[test]
fn rerank_matches_its_reference_with_ties_and_short_corpora() {
    let engine = engine();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (q, c, d, k) in [
        (1, 1, 1, 1),
        (5, 3, 9, 8),
        (70, 301, 33, 10),
        (3, 200, 4, 64),
    ] {
        let queries = matrix(&mut rng, q, d);
        let corpus = matrix(&mut rng, c, d);
        assert_eq!(
            rerank(engine, &queries, &corpus, k).expect("rerank"),
            rerank_cpu(&queries, &corpus, k),
            "{q} queries, {c} corpus rows, {d} dims, k {k}"
        );
    }
    // A corpus of identical rows: every score ties, so the order is by index alone.
    let queries = matrix(&mut rng, 2, 6);
    let corpus = Int8Matrix::new(20, 6, [1, -2, 3, -4, 5, -6].repeat(20)).expect("sizes");
    let hits = rerank(engine, &queries, &corpus, 5).expect("rerank");
    assert_eq!(hits, rerank_cpu(&queries, &corpus, 5));
    assert_eq!(
        hits[0].iter().map(|h| h.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(rerank(engine, &queries, &corpus, 65).is_err());
}

#[test]
fn simulate_matches_its_reference_with_borders_and_negative_values() {
    let engine = engine();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (h, w, steps) in [
        (1, 1, 3),
        (1, 17, 4),
        (19, 1, 5),
        (33, 47, 9),
        (64, 64, 2),
        (5, 5, 0),
    ] {
        let cells = (0..h * w).map(|_| (rng.next_u32() as i32) >> 8).collect();
        let grid = Grid { h, w, cells };
        let diffusion = Diffusion {
            alpha: 3,
            shift: 4,
            steps,
        };
        assert_eq!(
            simulate(engine, &grid, &diffusion).expect("simulate"),
            simulate_cpu(&grid, &diffusion),
            "{h}×{w}, {steps} steps"
        );
    }
    // Values that overflow i32 on the way: both sides wrap the same way.
    let grid = Grid {
        h: 4,
        w: 4,
        cells: (0..16).map(|i| i32::MAX - i * 1_000_003).collect(),
    };
    let diffusion = Diffusion {
        alpha: 7,
        shift: 1,
        steps: 3,
    };
    assert_eq!(
        simulate(engine, &grid, &diffusion).expect("simulate"),
        simulate_cpu(&grid, &diffusion)
    );
    assert!(simulate(
        engine,
        &grid,
        &Diffusion {
            alpha: 1,
            shift: 32,
            steps: 1
        }
    )
    .is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn embed_agrees_on_random_shapes(seed in any::<u64>(), n in 1usize..40, k in 1usize..300, m in 1usize..40) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = matrix(&mut rng, n, k);
        let b = matrix(&mut rng, m, k);
        prop_assert_eq!(embed(engine(), &a, &b).expect("embed"), embed_cpu(&a, &b));
    }

    #[test]
    fn simulate_agrees_on_random_grids(seed in any::<u64>(), h in 1usize..40, w in 1usize..40, steps in 0u32..6, alpha in -8i32..9, shift in 0u32..8) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let grid = Grid { h, w, cells: (0..h * w).map(|_| rng.next_u32() as i32).collect() };
        let diffusion = Diffusion { alpha, shift, steps };
        prop_assert_eq!(simulate(engine(), &grid, &diffusion).expect("simulate"), simulate_cpu(&grid, &diffusion));
    }
}
