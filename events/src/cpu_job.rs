//! The output rule of a CPU job (docs/FORMAT.md §14.1, §14.5): what a node's receipt commits
//! to when it completes a job that runs no GPU kernel.
//!
//! The job's *artifact* is its result material, 44 bytes: `input_hash` (32) ‖ job id (u64 LE) ‖
//! attempt (u32 LE, 1 for the first assignment). The receipt's `output_hash` is
//! `blake3::derive_key(`[`OUTPUT_CONTEXT`]`, artifact)`, so anyone holding the artifact can
//! check it against the signed receipt, and a receipt commits to something only this attempt
//! of this job produces.

use crate::types::Hash32;

/// The BLAKE3 key-derivation context of a CPU job's output hash.
pub const OUTPUT_CONTEXT: &str = "fabric 2026-11 cpu job output v1";

/// Length of a CPU job's artifact: input hash, job id, attempt.
pub const ARTIFACT_LEN: usize = 32 + 8 + 4;

/// The artifact of attempt `attempt` of CPU job `job` on input `input_hash`:
/// `input_hash` ‖ `job` (LE) ‖ `attempt` (LE).
pub fn artifact(input_hash: &Hash32, job: u64, attempt: u32) -> Vec<u8> {
    let mut material = Vec::with_capacity(ARTIFACT_LEN);
    material.extend_from_slice(input_hash.as_bytes());
    material.extend_from_slice(&job.to_le_bytes());
    material.extend_from_slice(&attempt.to_le_bytes());
    material
}

/// The output hash an artifact commits to: `derive_key(`[`OUTPUT_CONTEXT`]`, artifact)`.
pub fn output_hash_of_artifact(artifact: &[u8]) -> Hash32 {
    Hash32(blake3::derive_key(OUTPUT_CONTEXT, artifact))
}

/// The output hash of attempt `attempt` of CPU job `job` on input `input_hash`: the hash of
/// its [`artifact`].
pub fn output_hash(input_hash: &Hash32, job: u64, attempt: u32) -> Hash32 {
    output_hash_of_artifact(&artifact(input_hash, job, attempt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_is_input_job_attempt_little_endian() {
        let input = Hash32([7; 32]);
        let bytes = artifact(&input, 0x0102_0304_0506_0708, 2);
        assert_eq!(bytes.len(), ARTIFACT_LEN);
        assert_eq!(&bytes[..32], &[7; 32]);
        assert_eq!(&bytes[32..40], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[40..], &[2, 0, 0, 0]);
    }

    #[test]
    fn output_hash_is_the_derived_key_of_the_artifact() {
        let input = Hash32([1; 32]);
        let expected =
            blake3::derive_key("fabric 2026-11 cpu job output v1", &artifact(&input, 42, 1));
        assert_eq!(output_hash(&input, 42, 1), Hash32(expected));
        assert_ne!(output_hash(&input, 42, 1), output_hash(&input, 42, 2));
    }
}
