//! `fabric federation sync|verify|status`: the operator's side of federation (docs/FORMAT.md
//! §18). A sync asks this fabric's server to exchange a receipt with a configured peer; a
//! receipt file is verified offline with the two fabrics' verifier keys.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use fabric_api::client::{get_json, json_of};
use fabric_api::http_client::Target;
use fabric_events::{Body, FederationReceipt};
use fabric_ledger::note::parse_log_verifier_key;

use crate::client::ServerArgs;

/// The federation commands.
#[derive(clap::Subcommand, Debug)]
pub enum FederationCmd {
    /// Exchange a receipt with a peer now: both fabrics check each other's head, sign the
    /// receipt of both and append it (exit status 3 when the peer presented a fork)
    Sync(SyncArgs),
    /// Check a receipt file offline: its merged root and both ledgers' signatures
    Verify(VerifyArgs),
    /// List the peers, the last receipt with each, and (with --out) write every receipt
    Status(StatusArgs),
}

/// Arguments of `fabric federation sync`.
#[derive(clap::Args, Debug)]
pub struct SyncArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The peer: its URL (its origin is read from its /v0/health) or its origin; it must be
    /// a --federation-peer of the server
    #[arg(long, value_name = "URL|ORIGIN")]
    peer: String,
}

/// Arguments of `fabric federation verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The receipt: a JSON file as `fabric federation status --out` writes it
    receipt: PathBuf,
    /// A fabric's checkpoint verifier key (ORIGIN+ID+KEY); one for each side of the receipt
    #[arg(long = "key", value_name = "VKEY", required = true)]
    keys: Vec<String>,
}

/// Arguments of `fabric federation status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Write every federation receipt of the log into DIR, as receipt-SEQ.json
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `fabric federation …`.
pub fn run(command: &FederationCmd) -> anyhow::Result<ExitCode> {
    match command {
        FederationCmd::Sync(args) => sync(args),
        FederationCmd::Verify(args) => verify(args),
        FederationCmd::Status(args) => status(args),
    }
}

fn sync(args: &SyncArgs) -> anyhow::Result<ExitCode> {
    let origin = match Target::parse(&args.peer) {
        Ok(_) if args.peer.contains(':') => {
            let mut peer = args.server.client_of(&args.peer, "--peer", false)?;
            let health = fabric_api::client::health(&mut peer)
                .with_context(|| format!("--peer {}", args.peer))?;
            match health["ledger"]["checkpoint_origin"].as_str() {
                Some(origin) => origin.to_owned(),
                None => bail!(
                    "--peer {}: its /v0/health gives no checkpoint origin",
                    args.peer
                ),
            }
        }
        _ => args.peer.clone(),
    };
    let mut client = args.server.client()?;
    let body = serde_json::to_vec(&fabric_api::wire::FederationSyncRequest { peer: origin })?;
    let response = client
        .request(
            "POST",
            "/v0/federation/sync",
            Some(("application/json", &body)),
        )
        .context("POST /v0/federation/sync")?;
    let answer = json_of(&response, "POST /v0/federation/sync")?;
    let text = serde_json::to_string_pretty(&answer)?;
    if response.status == 200 {
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{text}");
    let forked = answer["error"]["code"] == "peer_forked";
    Ok(ExitCode::from(if forked { 3 } else { 1 }))
}

fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.receipt)
        .with_context(|| format!("could not read {}", args.receipt.display()))?;
    let receipt: FederationReceipt = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a federation receipt", args.receipt.display()))?;
    let keys = args
        .keys
        .iter()
        .map(|vkey| parse_log_verifier_key(vkey).map_err(|wrong| anyhow::anyhow!("--key: {wrong}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    receipt
        .verify_trusting(&keys)
        .map_err(|wrong| anyhow::anyhow!("{}: {wrong}", args.receipt.display()))?;
    println!(
        "ok: {} (size {}) and {} (size {}) both signed merged root {}",
        receipt.left.origin,
        receipt.left.tree_size,
        receipt.right.origin,
        receipt.right.tree_size,
        receipt.merged_root
    );
    Ok(ExitCode::SUCCESS)
}

fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.server.client()?;
    let answer = get_json(&mut client, "/v0/federation")?;
    if answer.status != 200 {
        eprintln!("{}", serde_json::to_string_pretty(&answer.body)?);
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", serde_json::to_string_pretty(&answer.body)?);
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .with_context(|| format!("could not create {}", out.display()))?;
        let mut written = 0;
        fabric_api::client::scan_events::<anyhow::Error>(&mut client, 0, |seq, event| {
            if let Body::FederationReceipt(receipt) = &event.body {
                let path = out.join(format!("receipt-{seq}.json"));
                let text = serde_json::to_string_pretty(receipt)?;
                fabric_events::fs::write_atomically(&path, text.as_bytes())
                    .with_context(|| format!("could not write {}", path.display()))?;
                written += 1;
            }
            Ok(())
        })?;
        eprintln!("{written} receipt(s) written to {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}
