//! `fabric witness`: the CLI of `fabric-witness` (docs/FORMAT.md §17.4).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use fabric_api::http_client::Target;
use fabric_events::{keys, PublicKey};
use fabric_ledger::note::cosigner_verifier_key;
use fabric_witness::http::{Identity, SharedView, SharedWitness, WitnessView};
use fabric_witness::{Outcome, Witness, WitnessConfig};
use std::sync::{Arc, Mutex};

/// The exit status of a witness that saw a fork.
const EXIT_FORK: u8 = 3;

#[derive(clap::Args)]
pub struct WitnessArgs {
    /// The witness's secret key file (`fabric keygen`); it signs cosignatures only
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The witness's key name in its cosignatures: a schema-less URL without spaces or `+`
    /// (e.g. witness.example.org/w1)
    #[arg(long, value_name = "NAME")]
    name: String,
    /// A log to witness, by its verifier key as `GET /v0/health` gives it
    /// (`ledger.checkpoint_verifier_key`: origin+key ID+key); repeat for each log, and for
    /// each key of a log whose key changed
    #[arg(long = "log-key", value_name = "VKEY", required = true)]
    log_keys: Vec<String>,
    /// A server of a witnessed log to ask for its latest checkpoint note (host:port,
    /// http://…, https://…, unix:PATH); repeat to watch several, as several auditors would
    #[arg(
        long = "follow",
        value_name = "SERVER",
        required_unless_present = "listen"
    )]
    follow: Vec<String>,
    /// The witness's state folder: the last head it cosigned of each log, and forks/ with
    /// the evidence of any fork
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// Milliseconds between rounds
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    poll_ms: u64,
    /// Stop after this many rounds [default: run until stopped]
    #[arg(long, value_name = "N")]
    rounds: Option<u64>,
    /// Serve on this address (host:port): fabrics ask for cosignatures there (POST
    /// /v0/add-checkpoint), and anyone reads what it cosigned, the forks it saw and its
    /// metrics (GET /v0/witness, /v0/cosigned?origin=O, /v0/forks, /metrics)
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

/// Runs rounds until `--rounds` or a signal; exit status 3 when a log it witnesses forked.
pub fn run(args: &WitnessArgs) -> anyhow::Result<ExitCode> {
    let secret = keys::load_secret(&args.key)
        .with_context(|| format!("the witness key {}", args.key.display()))?;
    let sources = args
        .follow
        .iter()
        .map(|server| Target::parse(server).with_context(|| format!("--follow {server}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cosigner = cosigner_verifier_key(&args.name, &PublicKey::from(&secret.verifying_key()));
    let witness = Witness::open(WitnessConfig {
        name: args.name.clone(),
        secret,
        logs: WitnessConfig::logs_of(&args.log_keys)?,
        sources,
        state_dir: args.state.clone(),
    })?;
    println!("witness {} (cosigner key {cosigner})", args.name);
    let view: SharedView = Arc::new(std::sync::RwLock::new(WitnessView {
        state: witness.state().clone(),
        ..WitnessView::default()
    }));
    let witness: SharedWitness = Arc::new(Mutex::new(witness));
    if let Some(listen) = &args.listen {
        let identity = Identity {
            name: args.name.clone(),
            cosigner_key: cosigner.clone(),
        };
        let address =
            fabric_witness::http::serve(listen, identity, Arc::clone(&view), Arc::clone(&witness))?;
        println!("listening on http://{address}");
    }
    let mut round = 0u64;
    let mut said = std::collections::HashMap::<String, String>::new();
    while args.rounds.is_none_or(|rounds| round < rounds) {
        if round > 0 {
            std::thread::sleep(Duration::from_millis(args.poll_ms));
        }
        let mut cosigned = 0;
        for (source, outcome) in fabric_witness::round(&witness)? {
            match outcome {
                Outcome::Cosigned { origin, tree_size } => {
                    cosigned += 1;
                    println!("cosigned {origin} at size {tree_size} (from {source})");
                }
                Outcome::Fork(_) => println!("fork: the log {source} serves forked"),
                Outcome::Skipped(why) => {
                    // Said once while it stays the same, not every round.
                    let key = source.to_string();
                    if said.get(&key) != Some(&why) {
                        eprintln!("{source}: not cosigned: {why}");
                        said.insert(key, why);
                    }
                }
                Outcome::NothingNew => {}
            }
        }
        round += 1;
        let locked = witness.lock().unwrap_or_else(|poison| poison.into_inner());
        WitnessView::show(&view, &locked, cosigned);
        view.write()
            .unwrap_or_else(|poison| poison.into_inner())
            .rounds_total = round;
    }
    let witness = witness.lock().unwrap_or_else(|poison| poison.into_inner());
    if witness.state().forked() {
        for (origin, log) in &witness.state().logs {
            if let Some(fork) = &log.fork {
                eprintln!("FORK: {origin}: {}", fork.detail);
            }
        }
        return Ok(ExitCode::from(EXIT_FORK));
    }
    Ok(ExitCode::SUCCESS)
}
