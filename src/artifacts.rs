//! `fabric record`, `export-proof`, `verify-full`, `timeline` and `list`: artifacts in a
//! served fabric's log (docs/FORMAT.md §19). A record is an `artifact_recorded` event signed
//! by an owner or a registered recorder; its bundle is checked offline by
//! [`fabric_audit::bundle::verify_bundle`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use fabric_api::client::clock_nonce;
use fabric_api::http_client::Client;
use fabric_audit::bundle::{verify_bundle, Bundle, Trust};
use fabric_audit::proof::InclusionDoc;
use fabric_events::{ArtifactRecorded, Body, PublicKey};
use fabric_ledger::note::{parse_verifier_key, COSIGNATURE_TYPE};

use crate::client::ServerArgs;

/// Arguments of `fabric record`.
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The file to record
    file: PathBuf,
    /// What it is: deploy, decision, report, … (a-z 0-9 . _ -)
    #[arg(long)]
    kind: String,
    /// A name for it [default: the file's name]
    #[arg(long)]
    name: Option<String>,
    /// The recorder's key file: an owner's, or a key registered with register-recorder
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
}

/// Arguments of `fabric export-proof`.
#[derive(clap::Args, Debug)]
pub struct ExportProofArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The recorded file
    file: PathBuf,
    /// Where to write the bundle (JSON)
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The record's seq [default: the last record of the file's hashes]
    #[arg(long)]
    seq: Option<u64>,
}

/// Arguments of `fabric verify-full`.
#[derive(clap::Args, Debug)]
pub struct VerifyFullArgs {
    /// The file
    file: PathBuf,
    /// Its bundle, from `fabric export-proof`
    #[arg(long, value_name = "FILE")]
    bundle: PathBuf,
    /// The fabric's ledger key at genesis: hex, a .pub file, or its checkpoint verifier key
    #[arg(long, value_name = "KEY")]
    ledger_key: String,
    /// A witness whose cosignature must be on the checkpoint (its cosigner verifier key)
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// A federation peer whose receipts must name this key (its checkpoint verifier key)
    #[arg(long = "peer", value_name = "VKEY")]
    peers: Vec<String>,
}

/// Arguments of `fabric timeline`.
#[derive(clap::Args, Debug)]
pub struct TimelineArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The first seq to read
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Only artifacts of this kind (federation events are left out then)
    #[arg(long)]
    kind: Option<String>,
}

/// Arguments of `fabric list`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The artifacts' kind
    #[arg(long)]
    kind: String,
}

/// The record of the file at `path`, hashed as it is read.
fn record_of(path: &Path, name: String, kind: String) -> anyhow::Result<ArtifactRecorded> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    ArtifactRecorded::of_reader(&mut file, name, kind)
        .with_context(|| format!("could not read {}", path.display()))
}

/// `fabric record`.
pub fn record(args: &RecordArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => match args.file.file_name() {
            Some(name) => name.to_string_lossy().into_owned(),
            None => bail!("{}: give --name", args.file.display()),
        },
    };
    let record = record_of(&args.file, name, args.kind.clone())?;
    record
        .check_shape()
        .map_err(|wrong| anyhow::anyhow!("{wrong}"))?;
    let key = fabric_events::keys::load_secret(&args.key)
        .with_context(|| format!("--key {}", args.key.display()))?;
    let mut client = args.server.client()?;
    let answer = fabric_api::client::record(&mut client, record, &key, clock_nonce())?;
    let text = serde_json::to_string_pretty(&answer.body)?;
    if answer.status == 202 {
        println!("{text}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{text}");
        Ok(ExitCode::FAILURE)
    }
}

/// `fabric export-proof`.
pub fn export_proof(args: &ExportProofArgs) -> anyhow::Result<ExitCode> {
    let file = record_of(&args.file, String::new(), String::new())?;
    let mut client = args.server.client()?;
    let mut found = None;
    let mut receipts = Vec::new();
    fabric_api::client::scan_events::<anyhow::Error>(&mut client, 0, |seq, event| {
        match &event.body {
            Body::ArtifactRecorded(record)
                if record.same_bytes(&file) && args.seq.is_none_or(|wanted| wanted == seq) =>
            {
                found = Some((seq, record.clone()));
            }
            Body::FederationReceipt(receipt) => receipts.push((seq, receipt.clone())),
            _ => {}
        }
        Ok(())
    })?;
    let Some((seq, artifact)) = found else {
        bail!(
            "no record of {} ({} bytes, BLAKE3 {}) in the log{}",
            args.file.display(),
            file.size_bytes,
            file.blake3,
            args.seq
                .map(|seq| format!(" at seq {seq}"))
                .unwrap_or_default()
        );
    };
    let response = client.request("GET", "/v0/checkpoints/latest", None)?;
    if response.status != 200 {
        bail!(
            "GET /v0/checkpoints/latest: {} {}",
            response.status,
            response.text()
        );
    }
    let bundle =
        Bundle::assemble::<anyhow::Error>(artifact, seq, response.text(), receipts, |size| {
            inclusion_proof(&mut client, seq, size)
        })?;
    let text = serde_json::to_string_pretty(&bundle)?;
    fabric_events::fs::write_atomically(&args.out, text.as_bytes())
        .with_context(|| format!("could not write {}", args.out.display()))?;
    println!(
        "bundle of seq {seq} under the checkpoint of size {} with {} federation receipt(s): {}",
        bundle.inclusion.tree_size,
        bundle.federation.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The inclusion proof of `seq` in the tree of `size` entries.
fn inclusion_proof(client: &mut Client, seq: u64, size: u64) -> anyhow::Result<InclusionDoc> {
    let path = format!("/v0/proofs/{seq}?size={size}");
    let response = client.request("GET", &path, None)?;
    if response.status != 200 {
        bail!("GET {path}: {} {}", response.status, response.text());
    }
    serde_json::from_slice(&response.body).with_context(|| format!("GET {path}"))
}

/// A public key as hex, a `.pub` file, or a verifier key (`NAME+ID+KEY`) of `kind`.
fn public_key(text: &str, kind: u8) -> anyhow::Result<(String, PublicKey)> {
    if text.contains('+') {
        let (name, found, key) =
            parse_verifier_key(text).map_err(|wrong| anyhow::anyhow!("{text}: {wrong}"))?;
        anyhow::ensure!(
            found == kind,
            "{text}: a verifier key of type {found}, not {kind}"
        );
        return Ok((name, key));
    }
    if let Ok(key) = PublicKey::from_hex(text) {
        return Ok((String::new(), key));
    }
    let key = fabric_events::keys::load_public(Path::new(text))
        .with_context(|| format!("{text}: neither hex, a verifier key nor a .pub file"))?;
    Ok((String::new(), PublicKey::from(&key)))
}

/// `fabric verify-full`.
pub fn verify_full(args: &VerifyFullArgs) -> anyhow::Result<ExitCode> {
    let file = record_of(&args.file, String::new(), String::new())?;
    let text = std::fs::read_to_string(&args.bundle)
        .with_context(|| format!("could not read {}", args.bundle.display()))?;
    let bundle: Bundle = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an artifact bundle", args.bundle.display()))?;
    let keyed = |texts: &[String], kind| {
        texts
            .iter()
            .map(|text| public_key(text, kind))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let (origin, ledger_key) = public_key(
        &args.ledger_key,
        fabric_ledger::note::ED25519_SIGNATURE_TYPE,
    )?;
    let trust = Trust {
        ledger_key: Some(ledger_key),
        origin: (!origin.is_empty()).then_some(origin),
        witnesses: keyed(&args.witnesses, COSIGNATURE_TYPE)?,
        peers: keyed(&args.peers, fabric_ledger::note::ED25519_SIGNATURE_TYPE)?,
    };
    match verify_bundle(&file, &bundle, &trust) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(wrong) => {
            eprintln!("FAILED: {wrong}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `fabric timeline`.
pub fn timeline(args: &TimelineArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.server.client()?;
    fabric_api::client::scan_events::<anyhow::Error>(&mut client, args.from, |seq, event| {
        let tick = event.header.tick;
        match (&event.body, &args.kind) {
            (Body::ArtifactRecorded(record), kind)
                if kind
                    .as_ref()
                    .is_none_or(|kind| *kind == record.artifact_kind) =>
            {
                println!(
                    "{seq}\ttick {tick}\t{}\t{}\t{} bytes\tblake3 {}",
                    record.artifact_kind, record.name, record.size_bytes, record.blake3
                );
            }
            (Body::FederationReceipt(receipt), None) => println!(
                "{seq}\ttick {tick}\tfederation receipt\t{} {} + {} {}\tmerged {}",
                receipt.left.origin,
                receipt.left.tree_size,
                receipt.right.origin,
                receipt.right.tree_size,
                receipt.merged_root
            ),
            (Body::FederationFork(fork), None) => println!(
                "{seq}\ttick {tick}\tFEDERATION FORK\t{}\t{}",
                fork.peer_origin, fork.detail
            ),
            _ => {}
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `fabric list`.
pub fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.server.client()?;
    println!("seq\tname\tsize_bytes\tblake3\tsha256");
    fabric_api::client::scan_events::<anyhow::Error>(&mut client, 0, |seq, event| {
        if let Body::ArtifactRecorded(record) = &event.body {
            if record.artifact_kind == args.kind {
                println!(
                    "{seq}\t{}\t{}\t{}\t{}",
                    record.name, record.size_bytes, record.blake3, record.sha256
                );
            }
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
