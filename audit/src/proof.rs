//! Inclusion and consistency proofs of a log as JSON documents, each bound to the ledger's
//! signed tree heads (docs/FORMAT.md §4), and their offline verification.
//!
//! A proof is only as good as the tree heads it carries: the Merkle math proves a leaf (or an
//! older tree) under a root, and the ledger key's signature on (tree size, root) is what makes
//! that root the log's. So [`verify_text`] checks the heads first and takes every size and
//! root from them, never from the proof's other fields alone.
//!
//! A log whose ledger key was rotated signs each tree head with the key in force at its size
//! (`fabric_ledger::keys`). A document whose head lies after a rotation carries every ledger
//! rotation before its head (`ledger_rotations`: the entry and its audit path under the
//! head), so a verifier that trusts only the genesis ledger key follows each rotation: every
//! rotation entry must be enveloped by the key in force before it and proved in the signed
//! tree, and the head must be signed by the key in force at its size.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use fabric_events::{entry_hash, Entry, EntryError, Hash32, PublicKey, VerifyError};
use fabric_ledger::merkle::{self, ConsistencyProof, InclusionProof};
use fabric_ledger::{LedgerError, LedgerKeys, LedgerReader, SignedTreeHead};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `format` of an inclusion proof document.
pub const INCLUSION_FORMAT: &str = "fabric-inclusion-proof-v1";
/// `format` of a consistency proof document.
pub const CONSISTENCY_FORMAT: &str = "fabric-consistency-proof-v1";

/// `fabric-inclusion-proof-v1`; the field order is the document's key order.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionDoc {
    /// [`INCLUSION_FORMAT`].
    pub format: String,
    /// The entry proved.
    pub seq: u64,
    /// The size of the tree it is proved in.
    pub tree_size: u64,
    /// The entry's hash (its Merkle leaf).
    pub leaf_hash: Hash32,
    /// The entry bytes, standard base64 with padding.
    pub entry: String,
    /// The RFC 9162 audit path.
    pub audit_path: Vec<Hash32>,
    /// The tree's Merkle root.
    pub root: Hash32,
    /// The signed tree head at `tree_size`.
    pub tree_head: SignedTreeHead,
    /// Every ledger-key rotation before `tree_size`, oldest first (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ledger_rotations: Vec<RotationProof>,
}

/// A ledger-key rotation with its inclusion proof under a document's (newest) signed head.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationProof {
    /// The rotation's entry.
    pub seq: u64,
    /// The entry bytes, standard base64 with padding.
    pub entry: String,
    /// The RFC 9162 audit path of the entry in the tree of the head.
    pub audit_path: Vec<Hash32>,
}

/// `fabric-consistency-proof-v1`; the field order is the document's key order.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyDoc {
    /// [`CONSISTENCY_FORMAT`].
    pub format: String,
    /// The older tree's size.
    pub old_size: u64,
    /// The newer tree's size.
    pub new_size: u64,
    /// The RFC 9162 consistency path.
    pub path: Vec<Hash32>,
    /// The signed tree head at `old_size`.
    pub old_tree_head: SignedTreeHead,
    /// The signed tree head at `new_size`.
    pub new_tree_head: SignedTreeHead,
    /// Every ledger-key rotation before `new_size`, oldest first, proved under the new head
    /// (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ledger_rotations: Vec<RotationProof>,
}

/// Only the `format` key, to pick the document's kind before parsing it strictly.
#[derive(Deserialize)]
struct FormatOnly {
    format: String,
}

/// Why a proof could not be built from a ledger.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The tree asked for is larger than the log.
    #[error("tree size {tree_size} is past the end of the log ({log_size} entries)")]
    PastEnd {
        /// The tree size asked for.
        tree_size: u64,
        /// The log's size.
        log_size: u64,
    },
    /// The entry is not in the tree.
    #[error("seq {seq} is not in the tree of {tree_size} entries (seqs 0..{tree_size})")]
    NotInTree {
        /// The entry.
        seq: u64,
        /// The tree size.
        tree_size: u64,
    },
    /// A consistency proof needs a non-empty old tree no larger than the new one.
    #[error(
        "no consistency proof from {old_size} to {new_size}: the old size must be at least 1 \
         and at most the new size"
    )]
    Sizes {
        /// The old size.
        old_size: u64,
        /// The new size.
        new_size: u64,
    },
    /// The ledger could not be read.
    #[error("{context}")]
    Read {
        /// What was being read.
        context: String,
        /// Why.
        source: LedgerError,
    },
    /// No signed tree head is stored at the size.
    #[error(
        "no signed tree head is stored at tree size {tree_size} (one is stored where each \
         append ended): {nearest}"
    )]
    NoTreeHead {
        /// The size.
        tree_size: u64,
        /// The nearest sizes that have one, in words.
        nearest: String,
    },
    /// The stored tree head does not verify.
    #[error("the stored tree head at size {tree_size} does not verify with the ledger key {key}")]
    HeadSignature {
        /// The size.
        tree_size: u64,
        /// The ledger key.
        key: PublicKey,
        /// Why.
        source: VerifyError,
    },
    /// The stored entries and the signed head disagree.
    #[error(
        "the ledger is inconsistent: its first {size} entries give root {computed}, its signed \
         tree head at that size says {signed}"
    )]
    Inconsistent {
        /// The tree size.
        size: u64,
        /// The root of the stored entries.
        computed: Hash32,
        /// The signed head's root.
        signed: Hash32,
    },
    /// The proof just built does not verify.
    #[error("{what} does not verify")]
    SelfCheck {
        /// Which proof.
        what: String,
        /// Why.
        source: merkle::ProofError,
    },
}

/// Why a proof document does not verify.
#[derive(Debug, Error)]
pub enum VerifyProofError {
    /// The text has no `format` key.
    #[error("not a Fabric proof: no string `format` key")]
    NoFormat(#[source] serde_json::Error),
    /// The document does not have its format's shape.
    #[error("not a valid {format} document")]
    Malformed {
        /// Its format.
        format: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// Another format.
    #[error(
        "unknown proof format {0:?} (this build reads {INCLUSION_FORMAT:?} and \
         {CONSISTENCY_FORMAT:?})"
    )]
    UnknownFormat(String),
    /// A check failed; the message says which (`size mismatch`, `root mismatch`, `leaf
    /// mismatch`, `index mismatch`, `leaf`, `signature`, `audit path`, `consistency path`).
    #[error("{0}")]
    Refused(String),
}

/// Builds the inclusion proof of entry `seq` in the tree of the first `tree_size` entries of
/// a log of `log_size` entries, bound to the signed tree head stored at `tree_size`.
pub fn inclusion_doc(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    log_size: u64,
    seq: u64,
    tree_size: u64,
) -> Result<InclusionDoc, BuildError> {
    if tree_size > log_size {
        return Err(BuildError::PastEnd {
            tree_size,
            log_size,
        });
    }
    if seq >= tree_size {
        return Err(BuildError::NotInTree { seq, tree_size });
    }
    let head = stored_head(reader, ledger_key, tree_size)?;
    let (proof, root) = reader
        .inclusion_proof(seq, tree_size)
        .map_err(read(format!(
            "could not build the proof of entry {seq} in {tree_size}"
        )))?;
    consistent(tree_size, root, &head)?;
    let entry = reader
        .get(seq)
        .map_err(read(format!("could not read entry {seq}")))?;
    let bytes = entry.encode();
    let leaf_hash = entry_hash(&bytes);
    merkle::verify_inclusion(&leaf_hash, &proof, &root).map_err(|source| {
        BuildError::SelfCheck {
            what: format!("the proof built for entry {seq}"),
            source,
        }
    })?;
    Ok(InclusionDoc {
        format: INCLUSION_FORMAT.to_owned(),
        seq,
        tree_size,
        leaf_hash,
        entry: BASE64.encode(&bytes),
        audit_path: proof.path,
        root,
        tree_head: head,
        ledger_rotations: rotation_proofs(reader, tree_size)?,
    })
}

/// Builds the consistency proof from the tree of the first `old_size` entries to that of the
/// first `new_size`, bound to the signed tree heads stored at both sizes.
pub fn consistency_doc(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    log_size: u64,
    old_size: u64,
    new_size: u64,
) -> Result<ConsistencyDoc, BuildError> {
    if old_size == 0 || old_size > new_size {
        return Err(BuildError::Sizes { old_size, new_size });
    }
    if new_size > log_size {
        return Err(BuildError::PastEnd {
            tree_size: new_size,
            log_size,
        });
    }
    let old_head = stored_head(reader, ledger_key, old_size)?;
    let new_head = stored_head(reader, ledger_key, new_size)?;
    let (proof, old_root, new_root) =
        reader
            .consistency_proof(old_size, new_size)
            .map_err(read(format!(
                "could not build the consistency proof from {old_size} to {new_size}"
            )))?;
    consistent(old_size, old_root, &old_head)?;
    consistent(new_size, new_root, &new_head)?;
    merkle::verify_consistency(&old_root, &new_root, &proof).map_err(|source| {
        BuildError::SelfCheck {
            what: format!("the consistency proof built from {old_size} to {new_size}"),
            source,
        }
    })?;
    Ok(ConsistencyDoc {
        format: CONSISTENCY_FORMAT.to_owned(),
        old_size,
        new_size,
        path: proof.path,
        old_tree_head: old_head,
        new_tree_head: new_head,
        ledger_rotations: rotation_proofs(reader, new_size)?,
    })
}

/// The ledger rotations before `tree_size`, each with its audit path in that tree.
fn rotation_proofs(
    reader: &LedgerReader,
    tree_size: u64,
) -> Result<Vec<RotationProof>, BuildError> {
    let keys = reader
        .ledger_keys()
        .map_err(read("could not read the ledger key rotations".to_owned()))?;
    let mut proofs = Vec::new();
    for (seq, _) in keys.rotations().iter().filter(|(seq, _)| *seq < tree_size) {
        let (proof, _) = reader
            .inclusion_proof(*seq, tree_size)
            .map_err(read(format!(
                "could not prove rotation {seq} in {tree_size}"
            )))?;
        let entry = reader
            .get(*seq)
            .map_err(read(format!("could not read entry {seq}")))?;
        proofs.push(RotationProof {
            seq: *seq,
            entry: BASE64.encode(entry.encode()),
            audit_path: proof.path,
        });
    }
    Ok(proofs)
}

fn read(context: String) -> impl FnOnce(LedgerError) -> BuildError {
    move |source| BuildError::Read { context, source }
}

fn consistent(size: u64, computed: Hash32, head: &SignedTreeHead) -> Result<(), BuildError> {
    if computed == head.root {
        Ok(())
    } else {
        Err(BuildError::Inconsistent {
            size,
            computed,
            signed: head.root,
        })
    }
}

/// The signed tree head stored at exactly `tree_size`, verified with the ledger key in force
/// at that size (the genesis `ledger_key` followed through the log's rotations); when none is
/// stored there, an error naming the nearest sizes that have one.
pub fn stored_head(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    tree_size: u64,
) -> Result<SignedTreeHead, BuildError> {
    let stored = reader.tree_head_at(tree_size).map_err(read(format!(
        "could not read the tree head at size {tree_size}"
    )))?;
    let Some(head) = stored else {
        let sizes: Vec<u64> = reader
            .tree_heads()
            .map_err(read("could not list the stored tree heads".to_owned()))?
            .iter()
            .map(|head| head.tree_size)
            .collect();
        let below = sizes.iter().rev().find(|&&size| size < tree_size);
        let above = sizes.iter().find(|&&size| size > tree_size);
        let nearest = match (below, above) {
            (Some(below), Some(above)) => {
                format!("the nearest are {below} below and {above} above")
            }
            (Some(below), None) => format!("the nearest is {below} below, none is above"),
            (None, Some(above)) => format!("none is below, the nearest is {above} above"),
            (None, None) => "none is stored at all".to_owned(),
        };
        return Err(BuildError::NoTreeHead { tree_size, nearest });
    };
    let keys = reader
        .ledger_keys()
        .map_err(read("could not read the ledger key rotations".to_owned()))?;
    let key = if keys.genesis() == *ledger_key {
        keys.at(tree_size)
    } else {
        // Not this log's genesis key: the head cannot verify, and the error says with what.
        *ledger_key
    };
    head.verify(&key)
        .map_err(|source| BuildError::HeadSignature {
            tree_size,
            key,
            source,
        })?;
    Ok(head)
}

/// Parses and verifies a proof document; `untrusted` is told the key the proof's heads name
/// when no key was given (`trusted`). Returns the `ok:` line.
pub fn verify_text(
    text: &str,
    trusted: Option<&PublicKey>,
    untrusted: impl FnOnce(&PublicKey),
) -> Result<String, VerifyProofError> {
    verify_text_trusting(text, trusted, &[], untrusted)
}

/// [`verify_text`] for a replicated fabric: a `sequencer_takeover` among the document's
/// rotations puts its key in force only when it is one of `sequencers` (the replicas' keys
/// the verifier trusts), signed by that key itself.
pub fn verify_text_trusting(
    text: &str,
    trusted: Option<&PublicKey>,
    sequencers: &[PublicKey],
    untrusted: impl FnOnce(&PublicKey),
) -> Result<String, VerifyProofError> {
    let FormatOnly { format } = serde_json::from_str(text).map_err(VerifyProofError::NoFormat)?;
    match format.as_str() {
        INCLUSION_FORMAT => {
            let doc: InclusionDoc =
                serde_json::from_str(text).map_err(|source| VerifyProofError::Malformed {
                    format: INCLUSION_FORMAT,
                    source,
                })?;
            verify_inclusion_doc(&doc, trusted, sequencers, untrusted)
        }
        CONSISTENCY_FORMAT => {
            let doc: ConsistencyDoc =
                serde_json::from_str(text).map_err(|source| VerifyProofError::Malformed {
                    format: CONSISTENCY_FORMAT,
                    source,
                })?;
            verify_consistency_doc(&doc, trusted, sequencers, untrusted)
        }
        _ => Err(VerifyProofError::UnknownFormat(format)),
    }
}

/// A refusal unless `ok`.
fn ensure(ok: bool, message: impl FnOnce() -> String) -> Result<(), VerifyProofError> {
    if ok {
        Ok(())
    } else {
        Err(VerifyProofError::Refused(message()))
    }
}

/// Follows a document's ledger rotations from `start` (the trusted genesis key): each entry is
/// a canonical, validly signed owner command rotating the ledger key, enveloped by the key in
/// force before it, at a seq above the previous one and inside the tree of `head`. Their
/// inclusion under `head` is checked by [`check_rotations_in`] once the head's signature is.
fn follow_rotations(
    start: PublicKey,
    rotations: &[RotationProof],
    head: &SignedTreeHead,
    sequencers: &[PublicKey],
) -> Result<LedgerKeys, VerifyProofError> {
    let mut keys = LedgerKeys::new(start);
    for rotation in rotations {
        let (entry, _) = decode_entry(&rotation.entry, "rotation")?;
        let seq = rotation.seq;
        ensure(entry.seq == seq, || {
            format!(
                "rotation: the entry bytes hold seq {}, the rotation is for seq {seq}",
                entry.seq
            )
        })?;
        ensure(
            keys.last_rotation().is_none_or(|last| last < seq) && seq < head.tree_size,
            || {
                format!(
                    "rotation: seq {seq} is out of order or not in the tree of {} entries",
                    head.tree_size
                )
            },
        )?;
        let new_key = fabric_ledger::keys::rotation_in(&entry.signed).ok_or_else(|| {
            VerifyProofError::Refused(format!(
                "rotation: entry {seq} is not an owner command rotating the ledger key, nor a \
                 sequencer's takeover"
            ))
        })?;
        if fabric_ledger::keys::is_takeover(&entry.signed) {
            // Signed by the sequencer it puts in force, which the verifier must trust.
            ensure(
                entry.author == new_key && sequencers.contains(&new_key),
                || {
                    format!(
                    "rotation: entry {seq} is a takeover by sequencer {new_key}, not one of the \
                     sequencer keys trusted (--sequencer-key)"
                )
                },
            )?;
            keys.push(seq, new_key);
            continue;
        }
        ensure(entry.author == keys.current(), || {
            format!(
                "rotation: entry {seq} is enveloped by {}, not by the ledger key in force {}",
                entry.author,
                keys.current()
            )
        })?;
        keys.push(seq, new_key);
    }
    Ok(keys)
}

/// Each rotation's entry is in the tree of `head` (whose signature was checked).
fn check_rotations_in(
    rotations: &[RotationProof],
    head: &SignedTreeHead,
) -> Result<(), VerifyProofError> {
    for rotation in rotations {
        let (_, leaf) = decode_entry(&rotation.entry, "rotation")?;
        let proof = InclusionProof {
            index: rotation.seq,
            tree_size: head.tree_size,
            path: rotation.audit_path.clone(),
        };
        merkle::verify_inclusion(&leaf, &proof, &head.root).map_err(|err| {
            VerifyProofError::Refused(format!(
                "rotation: the audit path of entry {} does not prove it under the signed root: \
                 {err}",
                rotation.seq
            ))
        })?;
    }
    Ok(())
}

/// Base64 entry bytes: the entry (its signature checked) and its leaf hash.
fn decode_entry(base64: &str, what: &str) -> Result<(Entry, Hash32), VerifyProofError> {
    let bytes = BASE64.decode(base64).map_err(|err| {
        VerifyProofError::Refused(format!(
            "{what}: `entry` is not standard padded base64: {err}"
        ))
    })?;
    let entry = Entry::decode(&bytes).map_err(|err: EntryError| {
        VerifyProofError::Refused(format!("{what}: the entry bytes are no entry: {err}"))
    })?;
    entry.verify_signature().map_err(|err| {
        VerifyProofError::Refused(format!(
            "{what}: the entry's event signature by {} does not verify: {err}",
            entry.author
        ))
    })?;
    Ok((entry, entry_hash(&bytes)))
}

/// The key a verification starts from: the trusted one, or (told to `untrusted`) the key that
/// envelopes the first rotation, or else the one the head names.
fn start_key(
    trusted: Option<&PublicKey>,
    rotations: &[RotationProof],
    head: &SignedTreeHead,
    untrusted: impl FnOnce(&PublicKey),
) -> Result<PublicKey, VerifyProofError> {
    if let Some(key) = trusted {
        return Ok(*key);
    }
    let key = match rotations.first() {
        Some(first) => decode_entry(&first.entry, "rotation")?.0.author,
        None => head.ledger_key,
    };
    untrusted(&key);
    Ok(key)
}

/// How the key that signed the newest head was reached, for the `ok:` line.
fn key_path(keys: &LedgerKeys) -> String {
    match keys.rotations().len() {
        0 => String::new(),
        n => format!(
            " (the genesis ledger key {}, rotated {n} time{})",
            keys.genesis(),
            if n == 1 { "" } else { "s" }
        ),
    }
}

/// Checks a tree head's key against the one in force at its size and its signature; `which`
/// names it.
fn check_head(
    which: &str,
    head: &SignedTreeHead,
    keys: &LedgerKeys,
) -> Result<(), VerifyProofError> {
    let key = &keys.at(head.tree_size);
    ensure(head.ledger_key == *key, || {
        let expected = if *key == keys.genesis() {
            "the --ledger-key"
        } else {
            "the ledger key in force at its size, rotated from the --ledger-key,"
        };
        format!(
            "{which} is signed by key {}, not by {expected} {key}",
            head.ledger_key
        )
    })?;
    head.verify(key).map_err(|err| {
        VerifyProofError::Refused(format!(
            "{which} signature does not verify with key {key} ({err}): the head's size, root \
             or signature was changed"
        ))
    })
}

/// Verifies an inclusion proof document.
pub fn verify_inclusion_doc(
    doc: &InclusionDoc,
    trusted: Option<&PublicKey>,
    sequencers: &[PublicKey],
    untrusted: impl FnOnce(&PublicKey),
) -> Result<String, VerifyProofError> {
    let head = doc.tree_head;
    let start = start_key(trusted, &doc.ledger_rotations, &head, untrusted)?;
    let keys = follow_rotations(start, &doc.ledger_rotations, &head, sequencers)?;
    let key = keys.at(head.tree_size);
    check_head("the tree head", &head, &keys)?;
    check_rotations_in(&doc.ledger_rotations, &head)?;
    ensure(doc.tree_size == head.tree_size, || {
        format!(
            "size mismatch: the proof's tree_size is {}, its signed tree head is for {} entries",
            doc.tree_size, head.tree_size
        )
    })?;
    ensure(doc.root == head.root, || {
        format!(
            "root mismatch: the proof's root is {}, its signed tree head says {}",
            doc.root, head.root
        )
    })?;
    let entry = check_leaf(doc)?;
    let proof = InclusionProof {
        index: doc.seq,
        tree_size: head.tree_size,
        path: doc.audit_path.clone(),
    };
    merkle::verify_inclusion(&doc.leaf_hash, &proof, &head.root).map_err(|err| {
        VerifyProofError::Refused(format!(
            "audit path of {} hashes does not prove entry {} under the signed root: {err}",
            doc.audit_path.len(),
            doc.seq
        ))
    })?;
    debug_assert_eq!(entry.seq, doc.seq);
    Ok(format!(
        "ok: entry {} is in the log of {} entries with root {}, signed by {}{}",
        doc.seq,
        head.tree_size,
        head.root,
        key,
        key_path(&keys)
    ))
}

/// The entry bytes of an inclusion proof: they hash to its leaf, hold its seq, and carry a
/// signature that verifies.
fn check_leaf(doc: &InclusionDoc) -> Result<Entry, VerifyProofError> {
    let bytes = BASE64.decode(&doc.entry).map_err(|err| {
        VerifyProofError::Refused(format!(
            "leaf: `entry` is not standard padded base64: {err}"
        ))
    })?;
    let computed = entry_hash(&bytes);
    ensure(computed == doc.leaf_hash, || {
        format!(
            "leaf mismatch: the entry bytes hash to {computed}, the proof's leaf_hash is {}",
            doc.leaf_hash
        )
    })?;
    let entry = Entry::decode(&bytes).map_err(|err: EntryError| {
        VerifyProofError::Refused(format!("leaf: the entry bytes are no entry: {err}"))
    })?;
    ensure(entry.seq == doc.seq, || {
        format!(
            "index mismatch: the entry bytes hold seq {}, the proof is for seq {}",
            entry.seq, doc.seq
        )
    })?;
    entry.verify_signature().map_err(|err| {
        VerifyProofError::Refused(format!(
            "leaf: the entry's event signature by {} does not verify: {err}",
            entry.author
        ))
    })?;
    Ok(entry)
}

/// Verifies a consistency proof document.
pub fn verify_consistency_doc(
    doc: &ConsistencyDoc,
    trusted: Option<&PublicKey>,
    sequencers: &[PublicKey],
    untrusted: impl FnOnce(&PublicKey),
) -> Result<String, VerifyProofError> {
    let (old, new) = (doc.old_tree_head, doc.new_tree_head);
    let start = match trusted {
        Some(key) => *key,
        None if doc.ledger_rotations.is_empty() => {
            ensure(old.ledger_key == new.ledger_key, || {
                format!(
                    "signature: the old tree head names key {}, the new one {}: not one ledger",
                    old.ledger_key, new.ledger_key
                )
            })?;
            untrusted(&old.ledger_key);
            old.ledger_key
        }
        None => start_key(None, &doc.ledger_rotations, &new, untrusted)?,
    };
    let keys = follow_rotations(start, &doc.ledger_rotations, &new, sequencers)?;
    let key = keys.at(new.tree_size);
    check_head("the old tree head", &old, &keys)?;
    check_head("the new tree head", &new, &keys)?;
    check_rotations_in(&doc.ledger_rotations, &new)?;
    ensure(doc.old_size == old.tree_size, || {
        format!(
            "size mismatch: the proof's old_size is {}, its old signed tree head is for {} \
             entries",
            doc.old_size, old.tree_size
        )
    })?;
    ensure(doc.new_size == new.tree_size, || {
        format!(
            "size mismatch: the proof's new_size is {}, its new signed tree head is for {} \
             entries",
            doc.new_size, new.tree_size
        )
    })?;
    let proof = ConsistencyProof {
        old_size: old.tree_size,
        new_size: new.tree_size,
        path: doc.path.clone(),
    };
    merkle::verify_consistency(&old.root, &new.root, &proof).map_err(|err| {
        VerifyProofError::Refused(format!(
            "consistency path of {} hashes does not prove the signed roots consistent: {err}",
            doc.path.len()
        ))
    })?;
    Ok(format!(
        "ok: the log of {} entries with root {} is a prefix of the log of {} entries with root \
         {}, signed by {}{}",
        old.tree_size,
        old.root,
        new.tree_size,
        new.root,
        key,
        key_path(&keys)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_of_no_or_another_format_are_refused_by_name() {
        let refuse = |text: &str| verify_text(text, None, |_| {}).unwrap_err().to_string();
        assert!(refuse("{}").contains("no string `format` key"));
        assert!(refuse(r#"{"format": "x"}"#).contains("unknown proof format \"x\""));
        assert!(refuse(r#"{"format": "fabric-inclusion-proof-v1"}"#)
            .contains("not a valid fabric-inclusion-proof-v1 document"));
    }
}
