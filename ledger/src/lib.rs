//! Fabric's ledger: an append-only, hash-chained, Merkle-committed log of signed events in sled.
//!
//! - [`Ledger`] is the single writer (sequencer). [`Ledger::append`] takes a batch of
//!   [`SignedEvent`](fabric_events::SignedEvent)s, verifies every signature with ed25519 batch
//!   verification on all cores, assigns seqs and `prev` links, packs the entries into blocks,
//!   extends the Merkle frontier in O(log n), signs a new tree head, and commits all of it in
//!   one atomic sled batch that is flushed and synced before `append` returns (group commit).
//! - [`Verifier`] does the verification stage on its own, so a caller can verify batch n+1
//!   while [`Ledger::append_verified`] commits batch n.
//! - [`LedgerReader`] reads by seq and by range, checking every entry against its stored hash
//!   and the chain; damage is a typed [`LedgerError`] naming the seq.
//! - [`merkle`] is RFC 9162's tree with BLAKE3: from-scratch root, incremental [`Frontier`],
//!   inclusion proofs and their verification.
//! - [`SignedTreeHead`] is the ledger key's signature over (size, root).
//!
//! Cargo feature `writer` (on by default): [`Ledger`], the writer, and what only it uses.
//! Without it the crate reads and verifies a stored log but cannot write one (what an
//! auditor links: [`LedgerReader::open`] opens a folder read-only).
//!
//! Architecture invariant: nothing is stored that did not verify, and nothing is acknowledged
//! before it is on disk. The storage layout is described in [`storage`] and `docs/FORMAT.md`.
#![deny(missing_docs)]

pub mod artifacts;
pub mod error;
pub mod keys;
mod ledger;
pub mod merkle;
pub mod note;
pub mod storage;
pub mod tree_head;
pub mod verify;

pub use artifacts::{
    ArtifactLog, ArtifactsOpened, StoredArtifacts, ARTIFACTS_FILE, ARTIFACT_BYTES_MAX,
};
pub use error::{AppendError, LedgerError};
pub use keys::LedgerKeys;
pub use ledger::{
    open_sled, sled_config, Entries, LedgerReader, StoredSnapshot, ARTIFACTS_TREE,
    BATCH_EVENTS_MAX, OUTBOX_TREE, REPLICA_TREE, SLED_SEGMENT_BYTES, SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_TREE,
};
#[cfg(feature = "writer")]
pub use ledger::{AppendReceipt, Ledger, OpenReport};
pub use merkle::{Frontier, InclusionProof};
pub use note::CheckpointNote;
pub use tree_head::SignedTreeHead;
pub use verify::{
    verify_and_remember, verify_batch, KeyCache, Refusal, RefusalReason, SignatureMemo, SignedItem,
    VerifiedBatch, Verifier,
};
