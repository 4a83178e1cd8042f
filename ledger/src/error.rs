//! Typed errors of the ledger. Every error about stored data names the seq (or block) at fault.

use std::path::PathBuf;

use fabric_events::PublicKey;
use thiserror::Error;

use crate::verify::Refusal;

/// Errors reading, opening or writing the ledger.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// sled failed.
    // The cause is part of the message and deliberately not a `source`, so error chains
    // printed with their causes do not repeat it.
    #[error("storage error while {context}: {cause}")]
    Storage {
        /// What the ledger was doing.
        context: &'static str,
        /// sled's error.
        cause: sled::Error,
    },
    /// A file operation outside sled failed.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A stored entry does not match its recorded hash, or is not a well-formed entry.
    #[error("entry {seq} is corrupted: {detail}")]
    CorruptEntry {
        /// The entry's seq.
        seq: u64,
        /// What does not match.
        detail: String,
    },
    /// A stored block cannot be split into entries.
    #[error("block starting at seq {first_seq} is corrupted: {detail}")]
    CorruptBlock {
        /// The block's first seq.
        first_seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// An entry's `prev` is not the hash of the entry before it.
    #[error("broken chain at entry {seq}: its prev is not the hash of entry {}", seq.wrapping_sub(1))]
    BrokenChain {
        /// The entry whose link is wrong.
        seq: u64,
    },
    /// An entry inside the log is not stored.
    #[error("entry {seq} is missing from storage")]
    Missing {
        /// The missing seq.
        seq: u64,
    },
    /// A read past the end of the log.
    #[error("seq {seq} is past the end of the log ({size} entries)")]
    OutOfRange {
        /// The seq asked for.
        seq: u64,
        /// Entries in the log.
        size: u64,
    },
    /// The ledger's head record (size, last hash, Merkle frontier, tree head) is damaged.
    #[error("ledger head is corrupted: {0}")]
    CorruptHead(String),
    /// The folder holds a ledger of another ledger key.
    #[error("{path} holds the ledger of key {stored}, not of the given key {given}")]
    KeyMismatch {
        /// The ledger folder.
        path: PathBuf,
        /// Key recorded in it.
        stored: PublicKey,
        /// Key given to open it.
        given: PublicKey,
    },
    /// The ledger's current key (after its rotations) has no secret among the keys given: the
    /// writer cannot sign its tree heads.
    #[error(
        "the ledger's key is now {current} (rotated at seq {rotated_at}), and its secret is not \
         among the keys given (give it as a staged key)"
    )]
    NoCurrentSecret {
        /// The key in force.
        current: PublicKey,
        /// Seq of the rotation that made it the ledger key.
        rotated_at: u64,
    },
    /// A batch rotates the ledger key to a key whose secret the writer does not hold; nothing
    /// of it was written.
    #[error(
        "entry {seq} rotates the ledger key to {key}, whose secret the writer does not hold: \
         nothing was appended"
    )]
    RotationWithoutSecret {
        /// Seq the rotation would have had.
        seq: u64,
        /// The new key.
        key: PublicKey,
    },
    /// A stored ledger-key rotation does not match its entry.
    #[error("ledger key rotation recorded at seq {seq}: {detail}")]
    CorruptRotation {
        /// The seq it is recorded at.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// The folder holds data this build cannot read.
    #[error(
        "{path}: storage format {found} is not supported (this build reads format {supported})"
    )]
    UnsupportedFormat {
        /// The ledger folder.
        path: PathBuf,
        /// Format found.
        found: String,
        /// Format supported.
        supported: u32,
    },
    /// A stored state snapshot is incomplete or does not match its manifest.
    #[error("snapshot at tree size {tree_size} is unusable: {detail}")]
    CorruptSnapshot {
        /// The tree size it was taken at.
        tree_size: u64,
        /// What is wrong.
        detail: String,
    },
    /// A snapshot must be taken at the head of the log.
    #[error("a snapshot at tree size {tree_size} cannot be stored: the log has {size} entries")]
    SnapshotNotAtHead {
        /// Size given.
        tree_size: u64,
        /// The log's size.
        size: u64,
    },
    /// A replica opens only a folder that holds a ledger (a copy of the fabric's folder).
    #[error("{path} holds no ledger: a replica starts from a copy of the fabric's data folder")]
    NoLedger {
        /// The folder.
        path: PathBuf,
    },
    /// An earlier write failed; what is on disk is unknown until the ledger is reopened.
    #[error("ledger refuses writes after an earlier storage failure ({0}); reopen it")]
    Poisoned(String),
}

/// Errors of [`crate::Ledger::append`].
#[derive(Debug, Error)]
pub enum AppendError {
    /// Nothing to append.
    #[error("empty batch: nothing to append")]
    EmptyBatch,
    /// More events than one group commit may hold.
    #[error("batch of {len} events is over the limit of {max} events per append")]
    BatchTooLarge {
        /// Events given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Some events failed verification; nothing of the batch was stored.
    #[error(
        "{} of {batch_len} events refused, nothing stored; first: event {} ({})",
        refusals.len(),
        refusals.first().map_or(0, |r| r.index),
        refusals.first().map_or_else(String::new, |r| r.reason.to_string())
    )]
    Refused {
        /// Every refused event, in batch order.
        refusals: Vec<Refusal>,
        /// Size of the batch.
        batch_len: usize,
    },
    /// A replicated batch does not continue this log, or its tree head does not vouch for it;
    /// nothing of it was stored.
    #[error("replicated batch at seq {seq}: {detail}; nothing stored")]
    NotNext {
        /// The seq where it stops fitting.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// Storage failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}
