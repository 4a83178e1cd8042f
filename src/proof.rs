//! `fabric proof` and `fabric verify-proof`: inclusion and consistency proofs of a run's log as
//! JSON documents, each bound to the ledger's signed tree heads, and their offline verification.
//!
//! A proof is only as good as the tree heads it carries: the Merkle math proves a leaf (or an
//! older tree) under a root, and the ledger key's signature on (tree size, root) is what makes
//! that root the log's. So `verify-proof` checks the heads first and takes every size and root
//! from them, never from the proof's other fields alone.

use std::path::PathBuf;

use anyhow::{anyhow, bail, ensure, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use clap::ArgGroup;
use fabric_events::{entry_hash, Entry, Hash32, PublicKey};
use fabric_ledger::merkle::{self, ConsistencyProof, InclusionProof};
use fabric_ledger::{LedgerReader, SignedTreeHead};
use serde::{Deserialize, Serialize};

/// `format` of an inclusion proof document.
pub const INCLUSION_FORMAT: &str = "fabric-inclusion-proof-v1";
/// `format` of a consistency proof document.
pub const CONSISTENCY_FORMAT: &str = "fabric-consistency-proof-v1";

/// Arguments of `fabric proof`.
#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("proof_kind").required(true).args(["seq", "consistency"])))]
pub struct ProofArgs {
    /// The data folder of a run
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Prove that entry SEQ is in the log (an inclusion proof)
    #[arg(long, value_name = "SEQ")]
    seq: Option<u64>,
    /// With --seq: the tree size to prove it in (default: the log's size); a signed tree head
    /// must be stored at exactly that size (one is stored where every append ended)
    #[arg(long, value_name = "SIZE", requires = "seq")]
    size: Option<u64>,
    /// Prove that the log of OLD entries is a prefix of the log of NEW entries (a consistency
    /// proof); signed tree heads must be stored at both sizes
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    consistency: Option<Vec<u64>>,
}

/// Arguments of `fabric verify-proof`.
#[derive(clap::Args, Debug)]
pub struct VerifyProofArgs {
    /// The proof document written by `fabric proof`
    #[arg(long, value_name = "FILE")]
    proof: PathBuf,
    /// The ledger's public key (64 hex digits) that must have signed the tree heads; without
    /// it the key written in the proof is trusted
    #[arg(long, value_name = "HEX")]
    ledger_key: Option<String>,
}

/// `fabric-inclusion-proof-v1`; the field order is the document's key order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InclusionDoc {
    format: String,
    seq: u64,
    tree_size: u64,
    leaf_hash: Hash32,
    /// The entry bytes, standard base64 with padding.
    entry: String,
    audit_path: Vec<Hash32>,
    root: Hash32,
    tree_head: SignedTreeHead,
}

/// `fabric-consistency-proof-v1`; the field order is the document's key order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyDoc {
    format: String,
    old_size: u64,
    new_size: u64,
    path: Vec<Hash32>,
    old_tree_head: SignedTreeHead,
    new_tree_head: SignedTreeHead,
}

/// Only the `format` key, to pick the document's kind before parsing it strictly.
#[derive(Deserialize)]
struct FormatOnly {
    format: String,
}

/// `fabric proof`: prints an inclusion or a consistency proof as pretty JSON on stdout.
pub fn run(args: &ProofArgs) -> anyhow::Result<()> {
    let (_, ledger) = crate::run::open_run(&args.data)?;
    let reader = ledger.reader();
    let ledger_key = ledger.ledger_key();
    let log_size = ledger.len();
    let document = match (args.seq, args.consistency.as_deref()) {
        (Some(seq), None) => {
            let tree_size = args.size.unwrap_or(log_size);
            let doc = inclusion_doc(&reader, &ledger_key, log_size, seq, tree_size)?;
            serde_json::to_string_pretty(&doc)
        }
        (None, Some(&[old_size, new_size])) => {
            let doc = consistency_doc(&reader, &ledger_key, log_size, old_size, new_size)?;
            serde_json::to_string_pretty(&doc)
        }
        _ => bail!("give either --seq SEQ [--size SIZE] or --consistency OLD NEW"),
    }
    .context("could not write the proof as JSON")?;
    println!("{document}");
    Ok(())
}

pub(crate) fn inclusion_doc(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    log_size: u64,
    seq: u64,
    tree_size: u64,
) -> anyhow::Result<InclusionDoc> {
    ensure!(
        tree_size <= log_size,
        "--size {tree_size} is past the end of the log ({log_size} entries)"
    );
    ensure!(
        seq < tree_size,
        "--seq {seq} is not in the tree of {tree_size} entries (seqs 0..{tree_size})"
    );
    let head = stored_head(reader, ledger_key, tree_size)?;
    let (proof, root) = reader
        .inclusion_proof(seq, tree_size)
        .with_context(|| format!("could not build the proof of entry {seq} in {tree_size}"))?;
    ensure!(
        root == head.root,
        "the ledger is inconsistent: its first {tree_size} entries give root {root}, its signed \
         tree head at that size says {}",
        head.root
    );
    let entry = reader
        .get(seq)
        .with_context(|| format!("could not read entry {seq}"))?;
    let bytes = entry.encode();
    let leaf_hash = entry_hash(&bytes);
    merkle::verify_inclusion(&leaf_hash, &proof, &root)
        .with_context(|| format!("the proof built for entry {seq} does not verify"))?;
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

fn consistency_doc(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    log_size: u64,
    old_size: u64,
    new_size: u64,
) -> anyhow::Result<ConsistencyDoc> {
    ensure!(
        old_size >= 1,
        "--consistency {old_size} {new_size}: the empty log has no consistency proof (every log \
         extends it); OLD must be at least 1"
    );
    ensure!(
        old_size <= new_size,
        "--consistency {old_size} {new_size}: OLD must not be larger than NEW"
    );
    ensure!(
        new_size <= log_size,
        "--consistency {old_size} {new_size}: NEW is past the end of the log ({log_size} entries)"
    );
    let old_head = stored_head(reader, ledger_key, old_size)?;
    let new_head = stored_head(reader, ledger_key, new_size)?;
    let (proof, old_root, new_root) =
        reader
            .consistency_proof(old_size, new_size)
            .with_context(|| {
                format!("could not build the consistency proof from {old_size} to {new_size}")
            })?;
    for (size, computed, head) in [
        (old_size, old_root, &old_head),
        (new_size, new_root, &new_head),
    ] {
        ensure!(
            computed == head.root,
            "the ledger is inconsistent: its first {size} entries give root {computed}, its \
             signed tree head at that size says {}",
            head.root
        );
    }
    merkle::verify_consistency(&old_root, &new_root, &proof).with_context(|| {
        format!("the consistency proof built from {old_size} to {new_size} does not verify")
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

/// The signed tree head stored at exactly `tree_size`, verified with the ledger's key; when
/// none is stored there, an error naming the nearest sizes that have one.
fn stored_head(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    tree_size: u64,
) -> anyhow::Result<SignedTreeHead> {
    let stored = reader
        .tree_head_at(tree_size)
        .with_context(|| format!("could not read the tree head at size {tree_size}"))?;
    let Some(head) = stored else {
        let sizes: Vec<u64> = reader
            .tree_heads()
            .context("could not list the stored tree heads")?
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
        bail!(
            "no signed tree head is stored at tree size {tree_size} (one is stored where each \
             append ended): {nearest}"
        );
    };
    head.verify(ledger_key).with_context(|| {
        format!("the stored tree head at size {tree_size} does not verify with the ledger key {ledger_key}")
    })?;
    Ok(head)
}

/// `fabric verify-proof`: checks a proof document offline; prints one `ok:` line on success.
pub fn verify(args: &VerifyProofArgs) -> anyhow::Result<()> {
    let trusted = args
        .ledger_key
        .as_deref()
        .map(|text| {
            PublicKey::from_hex(text.trim())
                .map_err(|reason| anyhow!("--ledger-key is not a public key: {reason}"))
        })
        .transpose()?;
    let text = std::fs::read_to_string(&args.proof)
        .with_context(|| format!("could not read {}", args.proof.display()))?;
    let verdict = verify_text(&text, trusted.as_ref(), |key| {
        eprintln!(
            "warning: no --ledger-key given: trusting the key written in the proof, {key}; \
             anyone can sign a proof with a key of their own, so check that this is the \
             ledger's key"
        );
    })
    .with_context(|| format!("{} does not verify", args.proof.display()))?;
    println!("{verdict}");
    Ok(())
}

/// Parses and verifies a proof document; `untrusted` is told the key the proof's heads name
/// when no key was given. Returns the `ok:` line.
fn verify_text(
    text: &str,
    trusted: Option<&PublicKey>,
    untrusted: impl FnOnce(&PublicKey),
) -> anyhow::Result<String> {
    let FormatOnly { format } =
        serde_json::from_str(text).context("not a Fabric proof: no string `format` key")?;
    match format.as_str() {
        INCLUSION_FORMAT => {
            let doc: InclusionDoc = serde_json::from_str(text)
                .with_context(|| format!("not a valid {INCLUSION_FORMAT} document"))?;
            verify_inclusion_doc(&doc, trusted, untrusted)
        }
        CONSISTENCY_FORMAT => {
            let doc: ConsistencyDoc = serde_json::from_str(text)
                .with_context(|| format!("not a valid {CONSISTENCY_FORMAT} document"))?;
            verify_consistency_doc(&doc, trusted, untrusted)
        }
        other => bail!(
            "unknown proof format {other:?} (this build reads {INCLUSION_FORMAT:?} and \
             {CONSISTENCY_FORMAT:?})"
        ),
    }
}

/// Checks a tree head's key against the trusted one and its signature; `which` names it.
fn check_head(which: &str, head: &SignedTreeHead, key: &PublicKey) -> anyhow::Result<()> {
    ensure!(
        head.ledger_key == *key,
        "{which} is signed by key {}, not by the --ledger-key {key}",
        head.ledger_key
    );
    head.verify(key).map_err(|err| {
        anyhow!(
            "{which} signature does not verify with key {key} ({err}): the head's size, root \
             or signature was changed"
        )
    })
}

fn verify_inclusion_doc(
    doc: &InclusionDoc,
    trusted: Option<&PublicKey>,
    untrusted: impl FnOnce(&PublicKey),
) -> anyhow::Result<String> {
    let head = doc.tree_head;
    let key = trusted.copied().unwrap_or_else(|| {
        untrusted(&head.ledger_key);
        head.ledger_key
    });
    check_head("the tree head", &head, &key)?;
    ensure!(
        doc.tree_size == head.tree_size,
        "size mismatch: the proof's tree_size is {}, its signed tree head is for {} entries",
        doc.tree_size,
        head.tree_size
    );
    ensure!(
        doc.root == head.root,
        "root mismatch: the proof's root is {}, its signed tree head says {}",
        doc.root,
        head.root
    );
    let bytes = BASE64
        .decode(&doc.entry)
        .map_err(|err| anyhow!("leaf: `entry` is not standard padded base64: {err}"))?;
    let computed = entry_hash(&bytes);
    ensure!(
        computed == doc.leaf_hash,
        "leaf mismatch: the entry bytes hash to {computed}, the proof's leaf_hash is {}",
        doc.leaf_hash
    );
    let entry = Entry::decode(&bytes)
        .map_err(|err| anyhow!("leaf: the entry bytes are no entry: {err}"))?;
    ensure!(
        entry.seq == doc.seq,
        "index mismatch: the entry bytes hold seq {}, the proof is for seq {}",
        entry.seq,
        doc.seq
    );
    entry.verify_signature().map_err(|err| {
        anyhow!(
            "leaf: the entry's event signature by {} does not verify: {err}",
            entry.author
        )
    })?;
    let proof = InclusionProof {
        index: doc.seq,
        tree_size: head.tree_size,
        path: doc.audit_path.clone(),
    };
    merkle::verify_inclusion(&doc.leaf_hash, &proof, &head.root).map_err(|err| {
        anyhow!(
            "audit path of {} hashes does not prove entry {} under the signed root: {err}",
            doc.audit_path.len(),
            doc.seq
        )
    })?;
    Ok(format!(
        "ok: entry {} is in the log of {} entries with root {}, signed by {}",
        doc.seq, head.tree_size, head.root, key
    ))
}

fn verify_consistency_doc(
    doc: &ConsistencyDoc,
    trusted: Option<&PublicKey>,
    untrusted: impl FnOnce(&PublicKey),
) -> anyhow::Result<String> {
    let (old, new) = (doc.old_tree_head, doc.new_tree_head);
    let key = match trusted {
        Some(key) => *key,
        None => {
            ensure!(
                old.ledger_key == new.ledger_key,
                "signature: the old tree head names key {}, the new one {}: not one ledger",
                old.ledger_key,
                new.ledger_key
            );
            untrusted(&old.ledger_key);
            old.ledger_key
        }
    };
    check_head("the old tree head", &old, &key)?;
    check_head("the new tree head", &new, &key)?;
    ensure!(
        doc.old_size == old.tree_size,
        "size mismatch: the proof's old_size is {}, its old signed tree head is for {} entries",
        doc.old_size,
        old.tree_size
    );
    ensure!(
        doc.new_size == new.tree_size,
        "size mismatch: the proof's new_size is {}, its new signed tree head is for {} entries",
        doc.new_size,
        new.tree_size
    );
    let proof = ConsistencyProof {
        old_size: old.tree_size,
        new_size: new.tree_size,
        path: doc.path.clone(),
    };
    merkle::verify_consistency(&old.root, &new.root, &proof).map_err(|err| {
        anyhow!(
            "consistency path of {} hashes does not prove the signed roots consistent: {err}",
            doc.path.len()
        )
    })?;
    Ok(format!(
        "ok: the log of {} entries with root {} is a prefix of the log of {} entries with root \
         {}, signed by {}",
        old.tree_size, old.root, new.tree_size, new.root, key
    ))
}
