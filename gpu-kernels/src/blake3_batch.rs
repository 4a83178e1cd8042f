//! `blake3`: the BLAKE3 hash (default mode: no key, no key derivation, 32-byte digest) of many
//! messages in one dispatch, one GPU invocation per message.
//!
//! The digests are BLAKE3's own, so they equal [`blake3::hash`] byte for byte; the CPU
//! reference is the `blake3` crate, one message per rayon task.
//!
//! Layout on the device (all little-endian u32 words):
//!
//! - binding 0, uniform: `[count, 0, 0, 0]`, the number of messages;
//! - binding 1, `data`: every message's bytes, 4 bytes per word, each message starting at a
//!   word boundary and its last word zero-padded (a message of `n` bytes takes `ceil(n / 4)`
//!   words, the empty message none);
//! - binding 2, `spans`: per message `i`, `spans[2i]` = its first word in `data` and
//!   `spans[2i + 1]` = its length in bytes;
//! - binding 3, `digests`: per message `i`, words `8i..8i + 8` = its digest, the 32 bytes as
//!   little-endian words.
//!
//! A message may hold up to [`MAX_MESSAGE_BYTES`] (64 KiB: 64 chunks of 1024 bytes); longer
//! ones are refused on both engines so that a batch's outcome never depends on the engine.

use rayon::prelude::*;

use crate::device::{groups, Engine, GpuError, KernelId};

/// The kernel's identity.
pub const BLAKE3: KernelId = KernelId {
    id: "blake3",
    version: 1,
};

/// The longest message the kernel takes, in bytes (64 KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

const SHADER: &str = include_str!("shaders/blake3.wgsl");
const WORKGROUP: u32 = 64;

fn check(messages: &[&[u8]]) -> Result<(), GpuError> {
    match messages
        .iter()
        .enumerate()
        .find(|(_, message)| message.len() > MAX_MESSAGE_BYTES)
    {
        Some((index, message)) => Err(GpuError::BadInput {
            kernel: "blake3",
            detail: format!(
                "message {index} holds {} bytes, over the limit of {MAX_MESSAGE_BYTES}",
                message.len()
            ),
        }),
        None => Ok(()),
    }
}

/// The BLAKE3 digest of each of `messages`, in order. Refuses a message over
/// [`MAX_MESSAGE_BYTES`]; no messages give no digests.
pub fn hash_batch(engine: Engine, messages: &[&[u8]]) -> Result<Vec<[u8; 32]>, GpuError> {
    check(messages)?;
    let gpu = match engine {
        Engine::Cpu => return Ok(hash_batch_cpu(messages)),
        Engine::Gpu(gpu) => gpu,
    };
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let count = messages.len();
    let data_words: usize = messages
        .iter()
        .map(|message| message.len().div_ceil(4))
        .sum();
    gpu.check_size("blake3", (data_words as u64) * 4)?;
    gpu.check_size("blake3", (count as u64) * 8)?;
    gpu.check_size("blake3", (count as u64) * 32)?;
    // Under the binding limit (itself a u32), every offset, length and count fits in a u32.
    let workgroups = groups(count, WORKGROUP);
    gpu.check_groups(workgroups)?;

    let mut data = Vec::with_capacity(data_words);
    let mut spans = Vec::with_capacity(2 * count);
    for message in messages {
        spans.push(data.len() as u32);
        spans.push(message.len() as u32);
        data.extend(message.chunks(4).map(|bytes| {
            let mut word = [0u8; 4];
            word[..bytes.len()].copy_from_slice(bytes);
            u32::from_le_bytes(word)
        }));
    }

    let pipeline = gpu.pipeline("blake3", SHADER, "main");
    let params = gpu.uniform("blake3 params", &[count as u32, 0, 0, 0]);
    let data = gpu.input("blake3 data", &data);
    let spans = gpu.input("blake3 spans", &spans);
    let digests = gpu.output("blake3 digests", 8 * count);
    let words: Vec<u32> = gpu.run(
        &[(
            pipeline.as_ref(),
            &[&params, &data, &spans, &digests],
            (workgroups, 1, 1),
        )],
        &digests,
        8 * count,
    )?;
    Ok(words
        .chunks_exact(8)
        .map(|digest| {
            let mut bytes = [0u8; 32];
            for (out, word) in bytes.chunks_exact_mut(4).zip(digest) {
                out.copy_from_slice(&word.to_le_bytes());
            }
            bytes
        })
        .collect())
}

/// The CPU reference: [`blake3::hash`] of each message, messages spread over every core.
/// Takes messages of any length.
pub fn hash_batch_cpu(messages: &[&[u8]]) -> Vec<[u8; 32]> {
    let hash = |message: &&[u8]| *blake3::hash(message).as_bytes();
    let bytes: usize = messages.iter().map(|m| m.len()).sum();
    if bytes < crate::SEQUENTIAL_WORK_MAX {
        messages.iter().map(hash).collect()
    } else {
        messages.par_iter().map(hash).collect()
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;

    fn engine() -> Engine {
        let engine = crate::device::Engine::from_env()
            .expect("FABRIC_GPU asks for something this machine has");
        eprintln!("blake3 runs on: {}", engine.name());
        if std::env::var("FABRIC_GPU").as_deref() == Ok("require") {
            assert!(
                matches!(engine, Engine::Gpu(_)),
                "FABRIC_GPU=require without a GPU"
            );
        }
        engine
    }

    fn bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        rng.fill_bytes(&mut out);
        out
    }

    fn expected(messages: &[&[u8]]) -> Vec<[u8; 32]> {
        messages
            .iter()
            .map(|message| *blake3::hash(message).as_bytes())
            .collect()
    }

    #[test]
    fn blake3_matches_the_crate_at_chunk_and_block_edges() {
        let engine = engine();
        let mut rng = ChaCha8Rng::seed_from_u64(30);
        let lengths = [
            0, 1, 3, 4, 63, 64, 65, 1023, 1024, 1025, 2048, 3073, 16_520, 65_536,
        ];
        let owned: Vec<Vec<u8>> = lengths.iter().map(|&len| bytes(&mut rng, len)).collect();
        let messages: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let want = expected(&messages);
        // All in one batch, and each alone (so every length is also the only one in a dispatch).
        assert_eq!(hash_batch(engine, &messages).expect("blake3"), want);
        for (message, want) in messages.iter().zip(&want) {
            assert_eq!(
                hash_batch(engine, &[message]).expect("blake3"),
                vec![*want],
                "{} bytes",
                message.len()
            );
        }
        assert_eq!(hash_batch_cpu(&messages), want);
        assert_eq!(hash_batch(Engine::Cpu, &messages).expect("blake3"), want);
        // The published digest of the empty message.
        assert_eq!(
            blake3::Hash::from(hash_batch(engine, &[&[]]).expect("blake3")[0])
                .to_hex()
                .as_str(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn blake3_matches_the_crate_on_a_mixed_batch() {
        let engine = engine();
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let owned: Vec<Vec<u8>> = (0..200)
            .map(|_| {
                let len = (rng.next_u32() % 20_000) as usize;
                bytes(&mut rng, len)
            })
            .collect();
        let mut messages: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        // Duplicates and every power of two of chunks up to the limit share the dispatch too.
        let big = bytes(&mut rng, MAX_MESSAGE_BYTES);
        for chunks in [1, 2, 4, 8, 16, 32, 64, 3, 5, 7, 31, 33, 63] {
            messages.push(&big[..chunks * 1024]);
            messages.push(&big[..chunks * 1024 - 1]);
        }
        messages.push(messages[0]);
        messages.push(&[]);
        assert_eq!(
            hash_batch(engine, &messages).expect("blake3"),
            expected(&messages)
        );
    }

    #[test]
    fn blake3_refuses_long_messages_and_takes_empty_batches() {
        let engine = engine();
        let long = vec![7u8; MAX_MESSAGE_BYTES + 1];
        let short = [1u8, 2, 3];
        for engine in [engine, Engine::Cpu] {
            let refused = hash_batch(engine, &[&short, &long]);
            assert!(
                matches!(
                    refused,
                    Err(GpuError::BadInput {
                        kernel: "blake3",
                        ..
                    })
                ),
                "{refused:?}"
            );
            assert_eq!(
                hash_batch(engine, &[]).expect("blake3"),
                Vec::<[u8; 32]>::new()
            );
        }
        // The CPU reference itself takes any length.
        assert_eq!(hash_batch_cpu(&[&long]), expected(&[&long]));
    }
}
