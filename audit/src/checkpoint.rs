//! Loading a stored checkpoint, only when it verifies.
//!
//! A checkpoint at tree size `T` is used only when its `checkpoint` event (the entry at seq
//! `T`, the first event of its tick) is signed by the ledger key in force at `T` (the genesis
//! key followed through the ledger rotations before `T`) and names that size, its
//! snapshot's bytes hash to the event's `snapshot_hash`, the bytes decode to a state with the
//! event's `state_hash`, and the snapshot's frontier gives the root of the signed tree head at
//! `T` (which the event's `merkle_root` must also say). A [`Replay`](crate::Replay) resumed
//! from it ([`Replay::resume`](crate::Replay::resume)) then goes on without reading any entry
//! before `T`.

use fabric_events::{Body, Hash32, PublicKey, VerifyError};
use fabric_ledger::{Frontier, LedgerError, LedgerReader, SignedTreeHead};
use fabric_projections::{SnapshotError, State};
use thiserror::Error;

/// A checkpoint that verified: its state and the Merkle frontier at its size.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The state after the first `tree_size` entries.
    pub state: State,
    /// The Merkle frontier of those entries.
    pub frontier: Frontier,
}

/// Why a stored checkpoint is not used.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// Its snapshot, entry or tree head could not be read.
    #[error(transparent)]
    Read(#[from] LedgerError),
    /// The entry at its size is not signed by the ledger key.
    #[error("entry {tree_size} is not signed by the ledger key in force there")]
    NotLedgerKey {
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// The log's genesis ledger key is not the one trusted.
    #[error("the log's genesis ledger key is {stored}, not the trusted {trusted}")]
    GenesisKey {
        /// The key the folder records.
        stored: PublicKey,
        /// The key trusted.
        trusted: PublicKey,
    },
    /// The entry's signature does not verify.
    #[error("entry {tree_size}: {source}")]
    Signature {
        /// The checkpoint's tree size.
        tree_size: u64,
        /// Why.
        source: VerifyError,
    },
    /// The entry is not a canonical event.
    #[error("entry {tree_size}: {source}")]
    Decode {
        /// The checkpoint's tree size.
        tree_size: u64,
        /// Why.
        source: fabric_events::DecodeError,
    },
    /// The entry at its size is another kind of event.
    #[error("entry {tree_size} is a {kind}, not its checkpoint")]
    NotCheckpoint {
        /// The checkpoint's tree size.
        tree_size: u64,
        /// The kind of the entry there.
        kind: &'static str,
    },
    /// The checkpoint event names another size.
    #[error("the checkpoint at entry {tree_size} covers {covers} entries")]
    WrongSize {
        /// The checkpoint's tree size.
        tree_size: u64,
        /// The size the event names.
        covers: u64,
    },
    /// The snapshot's bytes are not the ones the checkpoint names.
    #[error("the snapshot hashes to {stored}, its checkpoint says {named}")]
    SnapshotHash {
        /// BLAKE3 of the stored bytes.
        stored: Hash32,
        /// The checkpoint's `snapshot_hash`.
        named: Hash32,
    },
    /// No signed tree head is stored at the checkpoint's size.
    #[error("no signed tree head is stored at size {tree_size}")]
    NoTreeHead {
        /// The checkpoint's tree size.
        tree_size: u64,
    },
    /// The tree head at the checkpoint's size does not verify.
    #[error("the signed tree head at {tree_size}: {source}")]
    TreeHead {
        /// The checkpoint's tree size.
        tree_size: u64,
        /// Why.
        source: VerifyError,
    },
    /// The roots disagree.
    #[error(
        "the signed tree head at {tree_size} says root {head}, the snapshot's frontier {frontier} \
         and the checkpoint {checkpoint}"
    )]
    Root {
        /// The checkpoint's tree size.
        tree_size: u64,
        /// The signed head's root.
        head: Hash32,
        /// The snapshot frontier's root.
        frontier: Hash32,
        /// The checkpoint's `merkle_root`.
        checkpoint: Hash32,
    },
    /// The snapshot bytes are no state.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot's state is not the one the checkpoint names.
    #[error("the snapshot's state hash is {stored}, its checkpoint says {named}")]
    StateHash {
        /// The state hash of the stored bytes.
        stored: Hash32,
        /// The checkpoint's `state_hash`.
        named: Hash32,
    },
}

/// Loads the checkpoint at `tree_size` if it verifies as described in the module
/// documentation; otherwise says why not.
pub fn load_checkpoint(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    tree_size: u64,
) -> Result<Loaded, CheckpointError> {
    let snapshot = reader.snapshot(tree_size)?;
    let entry = reader.get(tree_size)?;
    if entry.author != ledger_key_at(reader, ledger_key, tree_size)? {
        return Err(CheckpointError::NotLedgerKey { tree_size });
    }
    entry
        .verify_signature()
        .map_err(|source| CheckpointError::Signature { tree_size, source })?;
    let event = entry
        .event()
        .map_err(|source| CheckpointError::Decode { tree_size, source })?;
    let Body::Checkpoint(checkpoint) = event.body else {
        return Err(CheckpointError::NotCheckpoint {
            tree_size,
            kind: event.kind().as_str(),
        });
    };
    if checkpoint.tree_size != tree_size {
        return Err(CheckpointError::WrongSize {
            tree_size,
            covers: checkpoint.tree_size,
        });
    }
    if checkpoint.snapshot_hash != snapshot.hash {
        return Err(CheckpointError::SnapshotHash {
            stored: snapshot.hash,
            named: checkpoint.snapshot_hash,
        });
    }
    let head = signed_head(reader, ledger_key, tree_size)?;
    let frontier_root = snapshot.frontier.root();
    if frontier_root != head.root || checkpoint.merkle_root != head.root {
        return Err(CheckpointError::Root {
            tree_size,
            head: head.root,
            frontier: frontier_root,
            checkpoint: checkpoint.merkle_root,
        });
    }
    let state = State::from_snapshot_bytes(&snapshot.bytes)?;
    let state_hash = fabric_projections::state::state_hash_of(&snapshot.bytes);
    if state_hash != checkpoint.state_hash {
        return Err(CheckpointError::StateHash {
            stored: state_hash,
            named: checkpoint.state_hash,
        });
    }
    Ok(Loaded {
        state,
        frontier: snapshot.frontier,
    })
}

/// The ledger key in force at `tree_size` of the log whose genesis key is `genesis_key` (the
/// trusted root): the genesis key followed through the log's ledger rotations before
/// `tree_size`, each checked against its entry ([`LedgerReader::ledger_keys`]).
pub fn ledger_key_at(
    reader: &LedgerReader,
    genesis_key: &PublicKey,
    tree_size: u64,
) -> Result<PublicKey, CheckpointError> {
    let keys = reader.ledger_keys()?;
    if keys.genesis() != *genesis_key {
        return Err(CheckpointError::GenesisKey {
            stored: keys.genesis(),
            trusted: *genesis_key,
        });
    }
    Ok(keys.at(tree_size))
}

/// The signed tree head stored at exactly `tree_size`, verified with the ledger key in force
/// at that size ([`ledger_key_at`]; `ledger_key` is the genesis key).
pub fn signed_head(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    tree_size: u64,
) -> Result<SignedTreeHead, CheckpointError> {
    let key = ledger_key_at(reader, ledger_key, tree_size)?;
    let head = reader
        .tree_head_at(tree_size)?
        .ok_or(CheckpointError::NoTreeHead { tree_size })?;
    head.verify(&key)
        .map_err(|source| CheckpointError::TreeHead { tree_size, source })?;
    Ok(head)
}
