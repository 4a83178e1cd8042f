//! `fabric proof` and `fabric verify-proof`: the arguments and printing of fabric-audit's proof
//! documents (inclusion and consistency proofs of a run's log, each bound to the ledger's
//! signed tree heads) and of their offline verification.

use std::path::PathBuf;

use anyhow::{anyhow, bail, ensure, Context};
use clap::ArgGroup;
use fabric_audit::proof::{consistency_doc, verify_text_trusting};
use fabric_events::PublicKey;

/// The inclusion proof document of an entry (fabric-audit's), for `GET /v0/proof`.
pub(crate) use fabric_audit::proof::inclusion_doc;

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
    /// The ledger's genesis public key (64 hex digits): the tree heads must be signed by it, or
    /// by the key the proof's ledger rotations lead to from it; without it the key written in
    /// the proof is trusted
    #[arg(long, value_name = "HEX")]
    ledger_key: Option<String>,
    /// A replicated fabric's sequencer key (64 hex digits): a takeover by it among the proof's
    /// rotations puts it in force (repeatable)
    #[arg(long = "sequencer-key", value_name = "HEX")]
    sequencer_keys: Vec<String>,
}

/// `fabric proof`: prints an inclusion or a consistency proof as pretty JSON on stdout.
pub fn run(args: &ProofArgs) -> anyhow::Result<()> {
    let (_, ledger) = fabric_sim::datadir::open_run(&args.data)?;
    let reader = ledger.reader();
    let ledger_key = ledger.ledger_key();
    let log_size = ledger.len();
    let document = match (args.seq, args.consistency.as_deref()) {
        (Some(seq), None) => {
            let tree_size = args.size.unwrap_or(log_size);
            ensure!(
                tree_size <= log_size,
                "--size {tree_size} is past the end of the log ({log_size} entries)"
            );
            ensure!(
                seq < tree_size,
                "--seq {seq} is not in the tree of {tree_size} entries (seqs 0..{tree_size})"
            );
            let doc = inclusion_doc(&reader, &ledger_key, log_size, seq, tree_size)?;
            serde_json::to_string_pretty(&doc)
        }
        (None, Some(&[old_size, new_size])) => {
            check_consistency_sizes(log_size, old_size, new_size)?;
            let doc = consistency_doc(&reader, &ledger_key, log_size, old_size, new_size)?;
            serde_json::to_string_pretty(&doc)
        }
        _ => bail!("give either --seq SEQ [--size SIZE] or --consistency OLD NEW"),
    }
    .context("could not write the proof as JSON")?;
    println!("{document}");
    Ok(())
}

/// The sizes of `--consistency OLD NEW`, checked with the flags' names.
fn check_consistency_sizes(log_size: u64, old_size: u64, new_size: u64) -> anyhow::Result<()> {
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
    Ok(())
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
    let sequencers = args
        .sequencer_keys
        .iter()
        .map(|text| {
            PublicKey::from_hex(text.trim())
                .map_err(|reason| anyhow!("--sequencer-key {text} is not a public key: {reason}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let verdict = verify_text_trusting(&text, trusted.as_ref(), &sequencers, |key| {
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
