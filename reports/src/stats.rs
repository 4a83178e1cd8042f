//! The one quantile rule of every report: nearest rank over sorted samples.

/// The value under which a `quantile` of the sorted samples fall (nearest rank: the sample
/// at rank ⌈q·n⌉, at least the first); none without samples.
pub fn nearest_rank<T: Copy>(sorted: &[T], quantile: f64) -> Option<T> {
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

/// [`nearest_rank`] of nanoseconds (or any u32 samples), 0 without samples.
pub fn quantile_ns(sorted: &[u32], quantile: f64) -> u64 {
    nearest_rank(sorted, quantile).map_or(0, u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&values, 0.95), Some(95.0));
        assert_eq!(nearest_rank(&values, 0.99), Some(99.0));
        assert_eq!(nearest_rank(&[3.0], 0.95), Some(3.0));
        assert_eq!(nearest_rank::<f64>(&[], 0.5), None);
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 0.0), Some(1));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 1.0), Some(4));
    }

    #[test]
    fn quantile_ns_is_zero_without_samples() {
        assert_eq!(quantile_ns(&[], 0.99), 0);
        assert_eq!(quantile_ns(&[5, 7, 9], 0.5), 7);
    }
}
