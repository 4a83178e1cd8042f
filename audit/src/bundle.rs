//! An artifact's proof bundle (docs/FORMAT.md §19.3): everything an auditor needs, offline,
//! to tie a file to a fabric's log: the `artifact_recorded` event with its inclusion proof
//! under a signed head, that head's checkpoint note with its witnesses' cosignatures, and the
//! federation receipts whose own head covers the event, each with the event's audit path in
//! the tree of that head.
//!
//! [`verify_bundle`] checks file hash → event signature → inclusion → head signature →
//! checkpoint note and cosignatures → federation receipts, and says what it checked.

use fabric_events::{ArtifactRecorded, Body, Entry, FederationReceipt, Hash32, PublicKey};
use fabric_ledger::merkle::{self, InclusionProof};
use fabric_ledger::note::CheckpointNote;
use serde::{Deserialize, Serialize};

use crate::proof::{verify_inclusion_doc, InclusionDoc, VerifyProofError};

/// `format` of a bundle.
pub const BUNDLE_FORMAT: &str = "fabric-artifact-bundle-v1";

/// `fabric-artifact-bundle-v1`; the field order is the document's key order.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// The record, as the event holds it.
    pub artifact: ArtifactRecorded,
    /// The event's inclusion proof under the head of `checkpoint`.
    pub inclusion: InclusionDoc,
    /// That head as a signed checkpoint note, with any witness cosignatures.
    pub checkpoint: String,
    /// The federation receipts whose own head covers the event.
    #[serde(default)]
    pub federation: Vec<CoveringReceipt>,
}

/// A federation receipt whose own head covers the event, with the event's audit path in the
/// tree of that head.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoveringReceipt {
    /// The receipt's seq in the log.
    pub seq: u64,
    /// The receipt.
    pub receipt: FederationReceipt,
    /// The RFC 9162 audit path of the artifact's entry in the tree of the receipt's own head.
    pub audit_path: Vec<Hash32>,
}

/// Why a bundle cannot be assembled from what a server gave.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// The checkpoint is not a note.
    #[error("the checkpoint: {0}")]
    Checkpoint(#[from] fabric_ledger::note::NoteError),
    /// The record is not under the checkpoint yet.
    #[error(
        "the record (seq {seq}) is not yet under the latest checkpoint (size {tree_size}): try \
         again once its head is signed (and, where the fabric has witnesses, cosigned)"
    )]
    NotYetUnder {
        /// The record's seq.
        seq: u64,
        /// The checkpoint's size.
        tree_size: u64,
    },
    /// A proof of the record at a receipt's size has another root than the receipt names.
    #[error(
        "the proof of seq {seq} at size {tree_size} has root {proved}, the receipt at seq \
         {receipt_seq} says {named}"
    )]
    OtherRoot {
        /// The record's seq.
        seq: u64,
        /// The receipt's own size.
        tree_size: u64,
        /// The proof's root.
        proved: Hash32,
        /// The receipt's seq.
        receipt_seq: u64,
        /// The root the receipt names.
        named: Hash32,
    },
}

impl Bundle {
    /// The bundle of the record `artifact` at `seq` under `checkpoint` (a note as served),
    /// with every one of `receipts` (each with its seq) whose head of the note's origin covers
    /// the record; `prove(size)` gives the record's inclusion proof in the tree of `size`
    /// entries (a server's `GET /v0/proofs/{seq}?size=`).
    pub fn assemble<E: From<AssembleError>>(
        artifact: ArtifactRecorded,
        seq: u64,
        checkpoint: String,
        receipts: Vec<(u64, FederationReceipt)>,
        mut prove: impl FnMut(u64) -> Result<InclusionDoc, E>,
    ) -> Result<Bundle, E> {
        let note = CheckpointNote::parse(&checkpoint).map_err(AssembleError::from)?;
        if seq >= note.tree_size {
            return Err(AssembleError::NotYetUnder {
                seq,
                tree_size: note.tree_size,
            }
            .into());
        }
        let inclusion = prove(note.tree_size)?;
        let mut federation = Vec::new();
        for (receipt_seq, receipt) in receipts {
            let Some((own, _)) = receipt.sides_of(&note.origin) else {
                continue;
            };
            if own.tree_size <= seq {
                continue;
            }
            let proof = prove(own.tree_size)?;
            if proof.root != own.root {
                return Err(AssembleError::OtherRoot {
                    seq,
                    tree_size: own.tree_size,
                    proved: proof.root,
                    receipt_seq,
                    named: own.root,
                }
                .into());
            }
            federation.push(CoveringReceipt {
                seq: receipt_seq,
                receipt,
                audit_path: proof.audit_path,
            });
        }
        Ok(Bundle {
            format: BUNDLE_FORMAT.to_owned(),
            artifact,
            inclusion,
            checkpoint,
            federation,
        })
    }
}

/// What else a bundle is checked against.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// The fabric's ledger key (at genesis; rotations are followed through the proof).
    pub ledger_key: Option<PublicKey>,
    /// The fabric's checkpoint origin, when the key was given as its verifier key.
    pub origin: Option<String>,
    /// Witnesses whose cosignatures count: (name, key).
    pub witnesses: Vec<(String, PublicKey)>,
    /// Federation peers whose keys a receipt must name: (origin, key).
    pub peers: Vec<(String, PublicKey)>,
}

/// Checks `bundle` for the file whose size and hashes are `file` (see
/// [`ArtifactRecorded::of_reader`]) under `trust`; the lines say what held.
pub fn verify_bundle(
    file: &ArtifactRecorded,
    bundle: &Bundle,
    trust: &Trust,
) -> Result<Vec<String>, VerifyProofError> {
    let refused = |detail: String| VerifyProofError::Refused(detail);
    for (format, expected) in [
        (&bundle.format, BUNDLE_FORMAT),
        (&bundle.inclusion.format, crate::proof::INCLUSION_FORMAT),
    ] {
        if format != expected {
            return Err(VerifyProofError::UnknownFormat(format.clone()));
        }
    }
    let mut lines = Vec::new();
    lines.push(check_file(file, &bundle.artifact)?);
    let entry = recorded_entry(&bundle.inclusion, &bundle.artifact)?;
    lines.push(format!(
        "ok: event {} records it, signed by {}",
        entry.seq, entry.author
    ));
    let mut untrusted = None;
    lines.push(verify_inclusion_doc(
        &bundle.inclusion,
        trust.ledger_key.as_ref(),
        &[],
        |key| untrusted = Some(*key),
    )?);
    if let Some(key) = untrusted {
        lines.push(format!(
            "warning: no --ledger-key given: the head is signed by {key}, which only the bundle names"
        ));
    }
    let head = bundle.inclusion.tree_head;
    let note = CheckpointNote::parse(&bundle.checkpoint)
        .map_err(|wrong| refused(format!("checkpoint: {wrong}")))?;
    if (note.tree_size, note.root) != (head.tree_size, head.root) {
        return Err(refused(format!(
            "checkpoint: the note is of size {} root {}, the proof's head of size {} root {}",
            note.tree_size, note.root, head.tree_size, head.root
        )));
    }
    if let Some(origin) = trust
        .origin
        .as_ref()
        .filter(|origin| **origin != note.origin)
    {
        return Err(refused(format!(
            "checkpoint: the note is of log {}, the key given is {origin}'s",
            note.origin
        )));
    }
    note.verify(&note.origin, &head.ledger_key)
        .map_err(|wrong| refused(format!("checkpoint: {wrong}")))?;
    lines.push(format!(
        "ok: checkpoint note of {} signed by the same key",
        note.origin
    ));
    lines.push(check_cosignatures(&note, &trust.witnesses)?);
    for (origin, _) in &trust.peers {
        let covered = bundle.federation.iter().any(|covering| {
            covering
                .receipt
                .sides_of(&note.origin)
                .is_some_and(|(_, peer)| peer.origin == *origin)
        });
        if !covered {
            return Err(refused(format!(
                "federation: the bundle has no receipt with {origin} that covers the event"
            )));
        }
    }
    for covering in &bundle.federation {
        lines.push(check_receipt(
            covering,
            &note.origin,
            &head.ledger_key,
            entry.seq,
            &bundle.inclusion.leaf_hash,
            &trust.peers,
        )?);
    }
    Ok(lines)
}

/// The file's size and hashes are the record's.
fn check_file(
    actual: &ArtifactRecorded,
    recorded: &ArtifactRecorded,
) -> Result<String, VerifyProofError> {
    if !actual.same_bytes(recorded) {
        return Err(VerifyProofError::Refused(format!(
            "file: {} bytes with BLAKE3 {} and SHA-256 {}; the record says {} bytes, {} and {}",
            actual.size_bytes,
            actual.blake3,
            actual.sha256,
            recorded.size_bytes,
            recorded.blake3,
            recorded.sha256
        )));
    }
    Ok(format!(
        "ok: the file's {} bytes have BLAKE3 {} and SHA-256 {} as recorded",
        actual.size_bytes, actual.blake3, actual.sha256
    ))
}

/// The proved entry: a well-signed `artifact_recorded` event holding exactly the record.
fn recorded_entry(
    inclusion: &InclusionDoc,
    recorded: &ArtifactRecorded,
) -> Result<Entry, VerifyProofError> {
    use base64::Engine as _;
    let refused = |detail: String| VerifyProofError::Refused(detail);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&inclusion.entry)
        .map_err(|wrong| refused(format!("event: the entry is not base64: {wrong}")))?;
    let entry = Entry::decode(&bytes)
        .map_err(|wrong| refused(format!("event: the entry bytes are no entry: {wrong}")))?;
    entry
        .verify_signature()
        .map_err(|wrong| refused(format!("event: its signature does not verify: {wrong}")))?;
    let event = fabric_events::event_from_signed(&entry.signed)
        .map_err(|wrong| refused(format!("event: {wrong}")))?;
    match &event.body {
        Body::ArtifactRecorded(body) if body == recorded => Ok(entry),
        Body::ArtifactRecorded(_) => Err(refused(
            "event: it records other hashes, size, name or kind than the bundle's artifact"
                .to_owned(),
        )),
        other => Err(refused(format!(
            "event: it is {}, not artifact_recorded",
            other.kind().as_str()
        ))),
    }
}

/// The cosignatures of the given witnesses on the note.
fn check_cosignatures(
    note: &CheckpointNote,
    witnesses: &[(String, PublicKey)],
) -> Result<String, VerifyProofError> {
    let lines = note.signatures.len().saturating_sub(1);
    if witnesses.is_empty() {
        return Ok(format!(
            "note: {lines} cosignature line(s) not checked (no --witness key given)"
        ));
    }
    let mut checked = Vec::new();
    for (name, key) in witnesses {
        let timestamp = note.verify_cosignature(name, key).map_err(|wrong| {
            VerifyProofError::Refused(format!("cosignature of witness {name}: {wrong}"))
        })?;
        checked.push(format!("{name} (at {timestamp})"));
    }
    Ok(format!("ok: cosigned by {}", checked.join(", ")))
}

/// A covering receipt: both signatures, its own side this fabric under its key, the event in
/// the tree of that side's head, and any peer key the auditor knows.
fn check_receipt(
    covering: &CoveringReceipt,
    origin: &str,
    ledger_key: &PublicKey,
    seq: u64,
    leaf: &Hash32,
    peers: &[(String, PublicKey)],
) -> Result<String, VerifyProofError> {
    let refused = |detail: String| VerifyProofError::Refused(detail);
    let receipt = &covering.receipt;
    receipt
        .verify()
        .map_err(|wrong| refused(format!("receipt {}: {wrong}", covering.seq)))?;
    let Some((own, peer)) = receipt.sides_of(origin) else {
        return Err(refused(format!(
            "receipt {}: it has no head of {origin}",
            covering.seq
        )));
    };
    if own.ledger_key != *ledger_key {
        return Err(refused(format!(
            "receipt {}: it names key {} for {origin}, the checkpoint's is {ledger_key}",
            covering.seq, own.ledger_key
        )));
    }
    let proof = InclusionProof {
        index: seq,
        tree_size: own.tree_size,
        path: covering.audit_path.clone(),
    };
    merkle::verify_inclusion(leaf, &proof, &own.root).map_err(|wrong| {
        refused(format!(
            "receipt {}: the event is not proved in its head of size {}: {wrong}",
            covering.seq, own.tree_size
        ))
    })?;
    let known = peers.iter().find(|(name, _)| *name == peer.origin);
    let trust = match known {
        Some((_, key)) if *key == peer.ledger_key => "its key as given",
        Some((_, key)) => {
            return Err(refused(format!(
                "receipt {}: peer {} signed with {}, not the given key {key}",
                covering.seq, peer.origin, peer.ledger_key
            )))
        }
        None => "its key as the receipt names it",
    };
    Ok(format!(
        "ok: receipt {} with {} (size {}, {trust}) covers the event; merged root {}",
        covering.seq, peer.origin, peer.tree_size, receipt.merged_root
    ))
}
