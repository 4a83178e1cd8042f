//! Inclusion and consistency proofs of a log as JSON documents, each bound to the ledger's
//! signed tree heads (docs/FORMAT.md §4), and their offline verification.
//!
//! A proof is only as good as the tree heads it carries: the Merkle math proves a leaf (or an
//! older tree) under a root, and the ledger key's signature on (tree size, root) is what makes
//! that root the log's. So [`verify_text`] checks the heads first and takes every size and
//! root from them, never from the proof's other fields alone.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use fabric_events::{entry_hash, Entry, EntryError, Hash32, PublicKey, VerifyError};
use fabric_ledger::merkle::{self, ConsistencyProof, InclusionProof};
use fabric_ledger::{LedgerError, LedgerReader, SignedTreeHead};
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
    })
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

/// The signed tree head stored at exactly `tree_size`, verified with the ledger's key; when
/// none is stored there, an error naming the nearest sizes that have one.
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
    head.verify(ledger_key)
        .map_err(|source| BuildError::HeadSignature {
            tree_size,
            key: *ledger_key,
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
    let FormatOnly { format } = serde_json::from_str(text).map_err(VerifyProofError::NoFormat)?;
    match format.as_str() {
        INCLUSION_FORMAT => {
            let doc: InclusionDoc =
                serde_json::from_str(text).map_err(|source| VerifyProofError::Malformed {
                    format: INCLUSION_FORMAT,
                    source,
                })?;
            verify_inclusion_doc(&doc, trusted, untrusted)
        }
        CONSISTENCY_FORMAT => {
            let doc: ConsistencyDoc =
                serde_json::from_str(text).map_err(|source| VerifyProofError::Malformed {
                    format: CONSISTENCY_FORMAT,
                    source,
                })?;
            verify_consistency_doc(&doc, trusted, untrusted)
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

/// Checks a tree head's key against the trusted one and its signature; `which` names it.
fn check_head(which: &str, head: &SignedTreeHead, key: &PublicKey) -> Result<(), VerifyProofError> {
    ensure(head.ledger_key == *key, || {
        format!(
            "{which} is signed by key {}, not by the --ledger-key {key}",
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
    untrusted: impl FnOnce(&PublicKey),
) -> Result<String, VerifyProofError> {
    let head = doc.tree_head;
    let key = trusted.copied().unwrap_or_else(|| {
        untrusted(&head.ledger_key);
        head.ledger_key
    });
    check_head("the tree head", &head, &key)?;
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
        "ok: entry {} is in the log of {} entries with root {}, signed by {}",
        doc.seq, head.tree_size, head.root, key
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
    untrusted: impl FnOnce(&PublicKey),
) -> Result<String, VerifyProofError> {
    let (old, new) = (doc.old_tree_head, doc.new_tree_head);
    let key = match trusted {
        Some(key) => *key,
        None => {
            ensure(old.ledger_key == new.ledger_key, || {
                format!(
                    "signature: the old tree head names key {}, the new one {}: not one ledger",
                    old.ledger_key, new.ledger_key
                )
            })?;
            untrusted(&old.ledger_key);
            old.ledger_key
        }
    };
    check_head("the old tree head", &old, &key)?;
    check_head("the new tree head", &new, &key)?;
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
         {}, signed by {}",
        old.tree_size, old.root, new.tree_size, new.root, key
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
