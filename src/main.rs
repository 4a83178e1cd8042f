//! `fabric`: the command line of the Fabric planetary compute orchestrator.

mod audit;
mod bench;
mod client;
mod datadir;
mod export;
mod owner;
mod proof;
mod report;
mod run;
mod serve;
mod slo;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Fabric: planetary compute orchestration over a signed, append-only event ledger.
#[derive(Parser)]
#[command(name = "fabric", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the planetary simulation: every event signed, chained and stored in --data
    Run(run::RunArgs),
    /// Continue an interrupted run from its newest valid checkpoint to its end
    Resume(run::ResumeArgs),
    /// Write a run's log as export lines (docs/FORMAT.md §5)
    Export(export::ExportArgs),
    /// Verify a run's whole history: signatures, links, hashes, roots, states, snapshots
    Audit(audit::AuditArgs),
    /// Follow the log on NATS, verifying each event's signature and link as it arrives
    Tail(tail::TailArgs),
    /// Write a run's mission report: one HTML page with its charts, and topology.mmd
    Report(report::ReportArgs),
    /// Steer the fabric: propose, approve (M of N owners) and submit owner commands
    Owner {
        #[command(subcommand)]
        command: owner::OwnerCmd,
    },
    /// Create an ed25519 key pair: FILE (secret, mode 0600) and FILE.pub
    Keygen {
        /// Where to write the secret key; the public key goes to FILE.pub
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace existing key files
        #[arg(long)]
        force: bool,
    },
    /// Measure Fabric against the limits of this machine and against PostgreSQL and JetStream
    Bench(bench::BenchArgs),
    /// Print an inclusion or consistency proof of a run's log, with its signed tree heads (JSON)
    Proof(proof::ProofArgs),
    /// Check a proof written by `fabric proof` offline, against the ledger's key
    VerifyProof(proof::VerifyProofArgs),
    /// Serve the fabric: the v0 HTTP API, ticks on a wall-clock interval, jobs from clients
    Serve(serve::ServeArgs),
    /// Write canary_slo_report.json of a stored log: fill rate, RTT, provenance, policy latency
    SloReport(slo::SloArgs),
    /// Submit a signed job to a running `fabric serve`
    Submit(client::SubmitArgs),
    /// Print a job's status and event history from a running `fabric serve`
    Status(client::JobArgs),
    /// Print a job's result (and fetch its artifact) from a running `fabric serve`
    Result(client::JobArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Resume(args) => run::resume(&args),
        Command::Export(args) => export::run(&args),
        Command::Report(args) => report::run(&args),
        // An audit that ran gives its verdict as the exit status.
        Command::Audit(args) => return audit::run(&args),
        // A tail that saw something wrong says so in its exit status.
        Command::Tail(args) => return tail::run(&args),
        // A submission with a refused command says so in its exit status.
        Command::Owner { command } => return owner::run(&command),
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Bench(args) => bench::run(&args),
        Command::Proof(args) => proof::run(&args),
        Command::VerifyProof(args) => proof::verify(&args),
        Command::Serve(args) => serve::run(&args),
        Command::SloReport(args) => slo::run(&args),
        // Client commands say in their exit status whether the server said yes.
        Command::Submit(args) => return client::submit(&args),
        Command::Status(args) => return client::status(&args),
        Command::Result(args) => return client::result(&args),
    };
    done.map(|()| ExitCode::SUCCESS)
}

fn keygen(out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    let key = fabric_events::keys::generate();
    fabric_events::keys::save_secret(out, &key, force)
        .with_context(|| format!("could not write the key to {}", out.display()))?;
    println!(
        "wrote {} (secret, mode 0600) and {}\npublic key {}",
        out.display(),
        fabric_events::keys::public_path(out).display(),
        fabric_events::PublicKey::from(&key.verifying_key())
    );
    Ok(())
}
