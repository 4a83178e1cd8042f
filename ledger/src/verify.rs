//! Signature verification of whole batches, on every core.
//!
//! ed25519 verification is the most expensive thing the ledger does (tens of microseconds per
//! event against well under one for hashing and storage), so a batch is cut into chunks that
//! are verified in parallel with ed25519 batch verification. A chunk that fails as a whole is
//! verified one signature at a time to name the culprits. Public keys are decompressed once per
//! author and cached: decompression alone costs about a fifth of a verification.

use std::collections::HashMap;
use std::fmt;

use ed25519_dalek::VerifyingKey;
use fabric_events::ed25519::{self, Item};
use fabric_events::wire::event_from_signed;
use fabric_events::{DecodeError, Entry, PublicKey, SignatureBytes, SignedEvent, VerifyError};
use rayon::prelude::*;

/// Events verified together by one ed25519 batch verification. Large enough that the batch
/// equation's savings are near their peak, small enough that every core gets work.
pub const VERIFY_CHUNK_EVENTS: usize = 256;

/// Why one event of a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReason {
    /// Its bytes are not a canonical, size-limited event.
    Malformed(DecodeError),
    /// Its signature or key is not acceptable.
    Signature(VerifyError),
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::Malformed(err) => write!(f, "{err}"),
            RefusalReason::Signature(err) => write!(f, "{err}"),
        }
    }
}

/// One refused event: its position in the batch and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Index of the event in the batch given to the ledger.
    pub index: usize,
    /// Why it was refused.
    pub reason: RefusalReason,
}

/// Decompressed, checked public keys by author, bounded in size.
#[derive(Debug)]
pub struct KeyCache {
    keys: HashMap<PublicKey, Result<VerifyingKey, VerifyError>>,
    capacity: usize,
}

impl KeyCache {
    /// A cache holding at most `capacity` authors (emptied when full: simple and bounded).
    pub fn new(capacity: usize) -> Self {
        Self {
            keys: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The author's key, refusing bytes that are not a point or are a small-order point.
    pub fn resolve(&mut self, author: &PublicKey) -> Result<VerifyingKey, VerifyError> {
        if let Some(known) = self.keys.get(author) {
            return known.clone();
        }
        if self.keys.len() >= self.capacity {
            self.keys.clear();
        }
        let resolved = match VerifyingKey::from_bytes(author.as_bytes()) {
            Err(_) => Err(VerifyError::InvalidKey(*author)),
            Ok(key) if key.is_weak() => Err(VerifyError::WeakKey(*author)),
            Ok(key) => Ok(key),
        };
        self.keys.insert(*author, resolved.clone());
        resolved
    }
}

/// Something signed by an author: a [`SignedEvent`] on its way in, or an [`Entry`] read back.
pub trait SignedItem: Sync {
    /// The author's key.
    fn author(&self) -> &PublicKey;
    /// The signature over [`SignedItem::signed`].
    fn signature(&self) -> &SignatureBytes;
    /// `FABRICv1` ‖ canonical event.
    fn signed(&self) -> &[u8];
}

impl SignedItem for SignedEvent {
    fn author(&self) -> &PublicKey {
        &self.author
    }
    fn signature(&self) -> &SignatureBytes {
        &self.signature
    }
    fn signed(&self) -> &[u8] {
        &self.signed
    }
}

impl SignedItem for Entry {
    fn author(&self) -> &PublicKey {
        &self.author
    }
    fn signature(&self) -> &SignatureBytes {
        &self.signature
    }
    fn signed(&self) -> &[u8] {
        &self.signed
    }
}

/// Verifies every event of a batch: each must decode as a canonical event within the size
/// limit and carry a valid signature by a valid key. Returns the refusals, in batch order;
/// an empty list means the whole batch is good. Used by the ledger on the way in and by
/// audits of what was stored.
pub fn verify_batch<T: SignedItem>(events: &[T], cache: &mut KeyCache) -> Vec<Refusal> {
    // Keys are resolved serially (the cache is mutable), then shared read-only by the workers.
    let keys: Vec<Result<VerifyingKey, VerifyError>> = events
        .iter()
        .map(|event| cache.resolve(event.author()))
        .collect();
    let mut refusals: Vec<Refusal> = events
        .par_chunks(VERIFY_CHUNK_EVENTS)
        .zip(keys.par_chunks(VERIFY_CHUNK_EVENTS))
        .enumerate()
        .flat_map_iter(|(chunk_index, (chunk, chunk_keys))| {
            verify_chunk(chunk_index * VERIFY_CHUNK_EVENTS, chunk, chunk_keys)
        })
        .collect();
    refusals.sort_by_key(|refusal| refusal.index);
    refusals
}

fn verify_chunk<T: SignedItem>(
    offset: usize,
    events: &[T],
    keys: &[Result<VerifyingKey, VerifyError>],
) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let mut candidates = Vec::with_capacity(events.len());
    for (position, (event, key)) in events.iter().zip(keys).enumerate() {
        let index = offset + position;
        if let Err(err) = event_from_signed(event.signed()) {
            refusals.push(Refusal {
                index,
                reason: RefusalReason::Malformed(err),
            });
            continue;
        }
        match key {
            Ok(key) => candidates.push((index, event, key)),
            Err(err) => refusals.push(Refusal {
                index,
                reason: RefusalReason::Signature(err.clone()),
            }),
        }
    }
    let items: Vec<Item<'_>> = candidates
        .iter()
        .map(|(_, event, key)| Item {
            key,
            message: event.signed(),
            signature: event.signature().as_bytes(),
        })
        .collect();
    if !ed25519::verify_batch(&items) {
        // Some signature is bad: find which, one by one (the same equation, so the same answer).
        for ((index, event, _), item) in candidates.iter().zip(&items) {
            if !ed25519::verify(item) {
                refusals.push(Refusal {
                    index: *index,
                    reason: RefusalReason::Signature(VerifyError::BadSignature(*event.author())),
                });
            }
        }
        debug_assert!(!refusals.is_empty(), "a failed batch has a failing item");
    }
    refusals
}

/// A batch whose every event passed [`Verifier::verify`]. Only verification makes one, so the
/// ledger can take it without checking again: the type is the proof.
#[derive(Debug, Clone)]
pub struct VerifiedBatch {
    events: Vec<SignedEvent>,
}

impl VerifiedBatch {
    /// The verified events, in order.
    pub fn events(&self) -> &[SignedEvent] {
        &self.events
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there are none (never true: empty batches are refused).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events back.
    pub fn into_events(self) -> Vec<SignedEvent> {
        self.events
    }
}

/// Verifies batches away from the ledger, e.g. on another thread while the ledger commits the
/// previous batch: the two stages overlap and the writer never waits for signatures.
#[derive(Debug)]
pub struct Verifier {
    cache: KeyCache,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    /// A verifier with its own key cache.
    pub fn new() -> Self {
        Self {
            cache: KeyCache::new(crate::ledger::KEY_CACHE_AUTHORS_MAX),
        }
    }

    /// Checks a batch's size and every event (see [`verify_batch`]).
    pub fn check(&mut self, batch: &[SignedEvent]) -> Result<(), crate::AppendError> {
        use crate::AppendError;
        if batch.is_empty() {
            return Err(AppendError::EmptyBatch);
        }
        if batch.len() > crate::BATCH_EVENTS_MAX {
            return Err(AppendError::BatchTooLarge {
                len: batch.len(),
                max: crate::BATCH_EVENTS_MAX,
            });
        }
        let refusals = verify_batch(batch, &mut self.cache);
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(AppendError::Refused {
                refusals,
                batch_len: batch.len(),
            })
        }
    }

    /// Verifies a batch and wraps it for [`crate::Ledger::append_verified`].
    pub fn verify(&mut self, batch: Vec<SignedEvent>) -> Result<VerifiedBatch, crate::AppendError> {
        self.check(&batch)?;
        Ok(VerifiedBatch { events: batch })
    }
}
