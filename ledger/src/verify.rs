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

impl<T: SignedItem + ?Sized> SignedItem for &T {
    fn author(&self) -> &PublicKey {
        (**self).author()
    }
    fn signature(&self) -> &SignatureBytes {
        (**self).signature()
    }
    fn signed(&self) -> &[u8] {
        (**self).signed()
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
/// an empty list means the whole batch is good. Used by audits of what was stored, and by
/// nodes: it neither consults nor fills the [`SignatureMemo`].
pub fn verify_batch<T: SignedItem>(events: &[T], cache: &mut KeyCache) -> Vec<Refusal> {
    verify_with(events, cache, Memo::Ignore)
}

/// [`verify_batch`] for a gate in front of the ledger: what verifies is remembered in the
/// process's [`SignatureMemo`], so the ledger does not verify it again on the way in. What the
/// memo already holds is not verified twice.
pub fn verify_and_remember<T: SignedItem>(events: &[T], cache: &mut KeyCache) -> Vec<Refusal> {
    verify_with(events, cache, Memo::Fill)
}

/// Whether a verification reads or writes the [`SignatureMemo`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Memo {
    /// Verify everything, remember nothing (audits).
    Ignore,
    /// Skip what the memo holds, remember what verifies (gates).
    Fill,
    /// Skip what the memo holds, remember nothing (the ledger on the way in).
    Consult,
}

fn verify_with<T: SignedItem>(events: &[T], cache: &mut KeyCache, memo: Memo) -> Vec<Refusal> {
    if memo == Memo::Ignore {
        return verify_unknown(events, &vec![false; events.len()], cache);
    }
    let digests: Vec<[u8; 32]> = events.iter().map(SignatureMemo::digest).collect();
    let known = SignatureMemo::hold_digests(&digests);
    let refusals = verify_unknown(events, &known, cache);
    if memo == Memo::Fill {
        let mut refused = refusals.iter().map(|refusal| refusal.index).peekable();
        let verified = (0..events.len())
            .filter(|index| refused.next_if_eq(index).is_none() && !known[*index])
            .map(|index| digests[index]);
        SignatureMemo::remember(verified);
    }
    refusals
}

/// Verifies the events not `known` (decoding is checked for all of them).
fn verify_unknown<T: SignedItem>(
    events: &[T],
    known: &[bool],
    cache: &mut KeyCache,
) -> Vec<Refusal> {
    debug_assert_eq!(events.len(), known.len());
    // Keys are resolved serially (the cache is mutable), then shared read-only by the workers.
    // A known event's key verified with it: `None` marks it, and it is only decoded.
    let keys: Vec<Option<Result<VerifyingKey, VerifyError>>> = events
        .iter()
        .zip(known)
        .map(|(event, known)| (!known).then(|| cache.resolve(event.author())))
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
    keys: &[Option<Result<VerifyingKey, VerifyError>>],
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
        let Some(key) = key else {
            continue;
        };
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
        let refusals = verify_with(batch, &mut self.cache, Memo::Consult);
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

/// Signatures this process has verified (by a gate in front of the ledger, see
/// [`verify_and_remember`]) or made itself ([`SignatureMemo::remember_own`]), so that the
/// ledger, which verifies every event on its way in, need not verify them a second time. Each
/// is remembered by the BLAKE3 of author ‖ signature ‖ signed bytes: only a successful
/// verification or the process's own signing puts a digest in, and whoever wants a digest of
/// bytes of their choosing to be in it must find a BLAKE3 collision. Bounded: two
/// generations of [`MEMO_GENERATION_ENTRIES`] digests; when the newer one is full the older one
/// is dropped. A signature forgotten before its event reaches the ledger is verified again,
/// nothing worse.
pub struct SignatureMemo {
    generations: std::sync::Mutex<[std::collections::HashSet<[u8; 32]>; 2]>,
}

/// Digests in one generation of the [`SignatureMemo`]: many ticks' worth of served attempts.
pub const MEMO_GENERATION_ENTRIES: usize = 1 << 16;

static MEMO: std::sync::LazyLock<SignatureMemo> = std::sync::LazyLock::new(|| SignatureMemo {
    generations: std::sync::Mutex::new(Default::default()),
});

impl SignatureMemo {
    fn digest<T: SignedItem>(event: &T) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(event.author().as_bytes());
        hasher.update(event.signature().as_bytes());
        hasher.update(event.signed());
        *hasher.finalize().as_bytes()
    }

    fn generations() -> std::sync::MutexGuard<'static, [std::collections::HashSet<[u8; 32]>; 2]> {
        // A poisoned lock only means another thread panicked mid-insert: the sets are whole.
        MEMO.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn remember(digests: impl Iterator<Item = [u8; 32]>) {
        let mut generations = Self::generations();
        for digest in digests {
            if generations[0].len() >= MEMO_GENERATION_ENTRIES {
                generations[1] = std::mem::take(&mut generations[0]);
            }
            generations[0].insert(digest);
        }
    }

    fn hold_digests(digests: &[[u8; 32]]) -> Vec<bool> {
        let generations = Self::generations();
        digests
            .iter()
            .map(|digest| {
                generations
                    .iter()
                    .any(|generation| generation.contains(digest))
            })
            .collect()
    }

    /// Remembers signatures this process made itself with [`SignedEvent::sign`], whose author
    /// is the public key of the very key that signed: such a signature verifies by
    /// construction, so the ledger need not check it on the way in (an audit still does).
    /// Bytes changed after signing have another digest and are verified as usual.
    pub fn remember_own<'a>(events: impl IntoIterator<Item = &'a SignedEvent>) {
        Self::remember(events.into_iter().map(Self::digest));
    }

    /// Whether this process verified `event` (its author, signature and signed bytes, all
    /// three) and still remembers it.
    pub fn holds<T: SignedItem>(event: &T) -> bool {
        Self::hold_digests(&[Self::digest(event)]) == [true]
    }
}
