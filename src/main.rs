//! `fabric`: the command line of the Fabric planetary compute orchestrator.

mod artifacts;
mod audit;
mod client;
mod export;
mod federation;
mod init;
mod node;
mod owner;
mod proof;
mod report;
mod run;
mod serve;
mod slo;
mod tail;
mod witness;

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
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
    /// Run this machine's nodes of a served fabric: verified work over NATS, each job in a
    /// sandbox, signed receipts
    Node(node::NodeArgs),
    /// Steer the fabric: propose, approve (M of N owners) and submit owner commands
    Owner {
        #[command(subcommand)]
        command: owner::OwnerCmd,
    },
    /// Create an ed25519 key pair: FILE (secret, mode 0600) and FILE.pub; with --world, the
    /// operator's keys of a world into the folder FILE
    Keygen {
        /// Where to write the secret key; the public key goes to FILE.pub. With --world, the
        /// folder: ledger.key, routers/<shard>.key, nodes/<node>.key
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace existing key files
        #[arg(long)]
        force: bool,
        /// Write the operator's keys of a world: the ledger key, a router key per shard, a
        /// node key per node
        #[arg(long)]
        world: bool,
        /// With --world: the world [default: the built-in world, config/fabric.toml of the
        /// source]
        #[arg(long, value_name = "FILE", requires = "world")]
        config: Option<PathBuf>,
    },
    /// The genesis ceremony: write a fabric's genesis from the owners' and the operator's
    /// public keys for the owners to approve, then (--commit) write its tick 0
    Init(init::InitArgs),
    /// Measure Fabric against the limits of this machine and against PostgreSQL and JetStream
    ///
    /// Runs the `fabric-bench` executable next to this one with the same arguments; `fabric
    /// bench --help` prints its options.
    #[command(disable_help_flag = true)]
    Bench {
        /// The arguments of `fabric-bench`, passed on unchanged
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
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
    /// Witness fabrics: cosign each tree head that extends the last one cosigned, keep the
    /// evidence of a fork (exit status 3)
    Witness(witness::WitnessArgs),
    /// Federate with other fabrics: exchange dual-signed receipts of both heads, verify them
    Federation {
        #[command(subcommand)]
        command: federation::FederationCmd,
    },
    /// Record a file in a served fabric's log: its BLAKE3 and SHA-256, size, name and kind
    Record(artifacts::RecordArgs),
    /// Write a recorded file's proof bundle: its event, inclusion proof, signed checkpoint,
    /// witness cosignatures and the federation receipts that cover it
    ExportProof(artifacts::ExportProofArgs),
    /// Check a file against its bundle offline: hashes, event signature, inclusion, head
    /// signature, cosignatures, federation receipts
    VerifyFull(artifacts::VerifyFullArgs),
    /// Print the recorded artifacts and federation events of a served fabric, in log order
    Timeline(artifacts::TimelineArgs),
    /// List the recorded artifacts of one kind
    List(artifacts::ListArgs),
    /// A node's job executor: runs the jobs framed on stdin in the sandbox (started by the
    /// node itself; docs/FORMAT.md §15.6)
    #[command(name = "node-executor", hide = true)]
    NodeExecutor {
        /// The empty directory to take as root once the engine is open
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
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
        Command::Keygen {
            out,
            force,
            world: true,
            config,
        } => init::keygen_world(config.as_deref(), &out, force),
        Command::Keygen { out, force, .. } => keygen(&out, force),
        Command::Init(args) => init::run(&args),
        Command::Node(args) => node::run(&args),
        // The bench's exit status is this command's.
        Command::Bench { args } => return bench(&args),
        Command::Proof(args) => proof::run(&args),
        Command::VerifyProof(args) => proof::verify(&args),
        Command::Serve(args) => serve::run(&args),
        Command::SloReport(args) => slo::run(&args),
        // Client commands say in their exit status whether the server said yes.
        Command::Submit(args) => return client::submit(&args),
        Command::Status(args) => return client::status(&args),
        Command::Result(args) => return client::result(&args),
        // A witness that saw a fork says so in its exit status.
        Command::Witness(args) => return witness::run(&args),
        Command::Federation { command } => return federation::run(&command),
        Command::Record(args) => return artifacts::record(&args),
        Command::ExportProof(args) => return artifacts::export_proof(&args),
        Command::VerifyFull(args) => return artifacts::verify_full(&args),
        Command::Timeline(args) => return artifacts::timeline(&args),
        Command::List(args) => return artifacts::list(&args),
        // The executor's exit status says why it stopped (docs/FORMAT.md §15.6).
        Command::NodeExecutor { root } => {
            return Ok(fabric_node::executor::executor_main(root.as_deref()))
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// `fabric bench ARGS...`: runs the `fabric-bench` executable next to this one with `args` and
/// returns its exit status. The bench is a program of its own so that this one carries none of
/// its peers' clients (PostgreSQL, JetStream).
fn bench(args: &[OsString]) -> anyhow::Result<ExitCode> {
    let fabric = std::env::current_exe()
        .context("cannot find this program, to run the `fabric-bench` next to it")?;
    let bench = fabric.with_file_name(format!("fabric-bench{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        bench.is_file(),
        "`fabric bench` runs the `fabric-bench` executable next to this one, and {} does not \
         exist: build it with `cargo build --release -p fabric-bench` (next to \
         target/release/fabric) or install it with `cargo install --path bench`",
        bench.display()
    );
    // The bench's usage lines and errors name the command as typed: `fabric bench`.
    let typed = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|typed| Some(typed.file_name()?.to_os_string()))
        .unwrap_or_else(|| "fabric".into());
    let mut arg0 = typed;
    arg0.push(" bench");
    let status = std::process::Command::new(&bench)
        .arg0(arg0)
        .args(args)
        .status()
        .with_context(|| format!("could not run {}", bench.display()))?;
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Killed by a signal: the shell's convention, 128 + the signal.
        None => {
            let signal = status.signal().unwrap_or(0);
            eprintln!("error: {} was killed by signal {signal}", bench.display());
            ExitCode::from(u8::try_from(128 + signal).unwrap_or(1))
        }
    })
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
