//! Fabric's vocabulary: every event the fabric records, its canonical bytes, the keys that sign
//! it, and wire format v1 (signed bytes, ledger entries, entry hashes, export lines).
//!
//! This crate depends on no other Fabric crate, so a subscriber, an auditor or a client can
//! check signatures and hash links with it alone.
//!
//! The layers, from the inside out:
//!
//! - [`event`]: the [`Event`] = [`Header`] (author role, tick, nonce) + [`Body`] (one enum
//!   variant per kind).
//! - [`codec`]: the one canonical encoding (bincode 2, fixed-width little-endian integers) with
//!   a size limit and strict decoding (no trailing bytes).
//! - [`keys`]: ed25519 key generation, key files, deterministic derivation from a seed.
//! - [`ed25519`]: signature verification (RFC 8032's cofactored equation), single and batch,
//!   which always agree.
//! - [`terms`]: the field lists of a shard's and a node's terms, declared once for the
//!   registration events and the configured world.
//! - [`wire`]: `signed` = `FABRICv1` ‖ canonical event, [`Entry`] (what the ledger stores),
//!   entry hashes and the JSON export line. `docs/FORMAT.md` describes every byte.
//! - [`model`]: the job types of models ([`JobType`]) and a model's registration
//!   ([`ModelRegistered`]).
//! - [`cpu_job`]: the one rule for a CPU job's artifact and the output hash its receipt names.
//! - [`covenant`]: federation receipts, a federated peer's fork evidence, recorded artifacts.
//! - [`fs`]: the one atomic file write (reports, command files, `run.json`).
//!
//! Architecture invariant: the bytes of an existing event kind never change when a kind is
//! added; new kinds are appended to [`Body`] and so get a new, higher tag.
#![deny(missing_docs)]

pub mod codec;
pub mod covenant;
pub mod cpu_job;
pub mod ed25519;
pub mod event;
pub mod fs;
#[doc(hidden)]
pub mod golden;
pub mod hex_serde;
pub mod keys;
pub mod model;
pub mod terms;
pub mod types;
pub mod wire;

pub use codec::{decode_event, encode_event, DecodeError, MAX_EVENT_BYTES};
pub use covenant::{
    ArtifactRecorded, FederatedHead, FederationFork, FederationReceipt, ReceiptError,
};
pub use event::*;
pub use keys::{derive_signing_key, KeyError, SigningKey, VerifyingKey};
pub use model::{JobType, ModelRegistered, MODEL_WEIGHTS_MAX_BYTES};
pub use types::{Hash32, PublicKey, SignatureBytes};
pub use wire::{
    entry_hash, event_from_signed, signed_bytes, verify_signature, Entry, EntryError, ExportError,
    ExportLine, SignedEvent, VerifyError, ENTRY_HEADER_LEN, MAX_ENTRY_BYTES, MAX_SIGNED_BYTES,
    WIRE_MAGIC,
};

#[cfg(test)]
mod tests;
