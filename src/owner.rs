//! `fabric owner`: commands that only the owners can give, M of N approvals each.
//!
//! A command file (`owner-script.json` of a run, or what `propose` writes) lists commands,
//! each with its nonce, its expiry tick, its approvals and the exact bytes an owner signs.
//! `propose` writes one, `sign` adds an owner's approval to every command in it, `submit`
//! hands it to a data folder's ledger, and `fabric run --owner-script` submits each command at
//! its `tick` during a run. The ledger's authority table decides: a command without enough
//! valid, distinct owner approvals, with a nonce seen before or past its expiry is refused,
//! and the refusal is recorded as a `Rejected` event.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{ensure, Context};
use fabric_actors::gate::Verdict;
pub use fabric_api::owner::{effect, CommandFile, FileCommand};
use fabric_api::owner::{parse_action, COMMANDS_HELP};
use fabric_events::{keys, OwnerCommand, PublicKey};
use fabric_sim::ScriptedCommand;
use serde_json::json;

/// What `fabric owner` does.
#[derive(clap::Subcommand, Debug)]
pub enum OwnerCmd {
    /// Write a command file with one unapproved command
    Propose(ProposeArgs),
    /// Add an owner's approval to every command of a command file
    Sign(SignArgs),
    /// Submit a command file's commands to a data folder's ledger
    Submit(SubmitArgs),
    /// Write the owner keys of a simulated run (derived from its public seed) to a folder;
    /// refused on a fabric with operator keys
    Keys(KeysArgs),
}

/// Arguments of `fabric owner propose`.
#[derive(clap::Args, Debug)]
pub struct ProposeArgs {
    /// The command and its arguments, e.g. `pause-shard mars`, `set-queue-budget earth 8000`,
    /// `retire-shard luna spill` (see `fabric owner propose --help` for the list)
    #[arg(required = true, num_args = 1.., value_name = "COMMAND",
          long_help = COMMANDS_HELP)]
    command: Vec<String>,
    /// The command's nonce: unique among the fabric's owner commands
    #[arg(long)]
    nonce: u64,
    /// The last tick at which the command may still be applied
    #[arg(long, default_value_t = fabric_projections::state::OWNER_COMMAND_LIFETIME_TICKS_MAX)]
    expiry_tick: u64,
    /// For `fabric run --owner-script`: the tick to submit it at
    #[arg(long)]
    tick: Option<u64>,
    /// What it is for (kept in the file)
    #[arg(long, default_value = "")]
    purpose: String,
    /// The command file to write
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Add the command to an existing command file instead of refusing to overwrite it
    #[arg(long)]
    append: bool,
}

/// Arguments of `fabric owner sign`.
#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The command file (rewritten with the approvals added)
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The owner's secret key file (from `fabric keygen` or `fabric owner keys`)
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
}

/// Arguments of `fabric owner submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The command file
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The data folder of a run
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// The ledger's secret key file, for a fabric with operator keys (a simulation's derives
    /// from its seed)
    #[arg(long, value_name = "FILE")]
    ledger_key: Option<PathBuf>,
    /// Print the verdicts as JSON
    #[arg(long)]
    json: bool,
}

/// Arguments of `fabric owner keys`.
#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    /// The data folder of a simulated run
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Where to write `owner-<i>.key` (and `.pub`)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Replace key files already there
    #[arg(long)]
    force: bool,
}

/// The commands of the command file at `path` as a run's script (`fabric run
/// --owner-script`): each needs its tick; a nonce seen twice is warned of.
pub fn load_script(path: &Path) -> anyhow::Result<Vec<ScriptedCommand>> {
    let script = CommandFile::load(path)?.script(path, |nonce| {
        eprintln!(
            "warning: {}: nonce {nonce} appears twice; the ledger will refuse the second",
            path.display()
        );
    })?;
    Ok(script
        .into_iter()
        .map(|(tick, nonce, command)| ScriptedCommand {
            tick,
            nonce,
            command,
        })
        .collect())
}

/// Runs `fabric owner …`.
pub fn run(cmd: &OwnerCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        OwnerCmd::Propose(args) => propose(args).map(|()| ExitCode::SUCCESS),
        OwnerCmd::Sign(args) => sign(args).map(|()| ExitCode::SUCCESS),
        OwnerCmd::Submit(args) => submit(args),
        OwnerCmd::Keys(args) => owner_keys(args).map(|()| ExitCode::SUCCESS),
    }
}

fn propose(args: &ProposeArgs) -> anyhow::Result<()> {
    let action = parse_action(&args.command)?;
    let command = FileCommand::new(
        args.tick,
        &args.purpose,
        args.nonce,
        OwnerCommand {
            action,
            expiry_tick: args.expiry_tick,
            approvals: Vec::new(),
        },
    );
    let file = if args.out.exists() {
        ensure!(
            args.append,
            "{} exists; pass --append to add the command to it",
            args.out.display()
        );
        let mut file = CommandFile::load(&args.out)?;
        ensure!(
            file.commands.iter().all(|c| c.nonce != args.nonce),
            "{} already has a command with nonce {}",
            args.out.display(),
            args.nonce
        );
        file.commands.push(command);
        file
    } else {
        CommandFile::new(vec![command])
    };
    file.save(&args.out)?;
    eprintln!(
        "wrote {} ({} command(s)); each owner signs it with `fabric owner sign {} --key KEYFILE`",
        args.out.display(),
        file.commands.len(),
        args.out.display()
    );
    Ok(())
}

fn sign(args: &SignArgs) -> anyhow::Result<()> {
    let key = keys::load_secret(&args.key)
        .with_context(|| format!("could not load the key {}", args.key.display()))?;
    let owner = PublicKey::from(&key.verifying_key());
    let mut file = CommandFile::load(&args.file)?;
    ensure!(
        !file.commands.is_empty(),
        "{} has no commands",
        args.file.display()
    );
    let mut signed = 0;
    for command in &mut file.commands {
        if command.command.approvals.iter().any(|a| a.owner == owner) {
            eprintln!(
                "command with nonce {} already carries {owner}'s approval; left as it is",
                command.nonce
            );
            continue;
        }
        command.command.approve(command.nonce, &key);
        signed += 1;
    }
    file.save(&args.file)?;
    eprintln!(
        "added {owner}'s approval to {signed} command(s) of {}",
        args.file.display()
    );
    Ok(())
}

fn submit(args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let file = CommandFile::load(&args.file)?;
    ensure!(
        !file.commands.is_empty(),
        "{} has no commands",
        args.file.display()
    );
    let (_, mut ledger, ledger_key) =
        fabric_sim::datadir::open_run_writer(&args.data, args.ledger_key.as_deref())?;
    let commands: Vec<_> = file
        .commands
        .iter()
        .map(|command| (command.nonce, command.command.clone()))
        .collect();
    let submitted = fabric_actors::submit::submit(&mut ledger, ledger_key, &commands)?;
    let (tick, first_seq) = (submitted.tick, submitted.first_seq);
    let mut verdicts = Vec::new();
    let mut refused = 0;
    for (index, (command, verdict)) in file.commands.iter().zip(&submitted.verdicts).enumerate() {
        let seq = first_seq + index as u64;
        let (status, reason, detail) = match verdict {
            Verdict::Admitted => ("executed", None, effect(&command.command.action)),
            // `gate::admit` records every refusal; it counts none.
            Verdict::Refused { reason, detail } | Verdict::Counted { reason, detail } => {
                refused += 1;
                ("refused", Some(reason.as_str()), detail.clone())
            }
        };
        if !args.json {
            match reason {
                None => println!("seq {seq}: command {} executed: {detail}", command.nonce),
                Some(reason) => println!(
                    "seq {seq}: command {} refused ({reason}): {detail}; recorded as a rejected event",
                    command.nonce
                ),
            }
        }
        verdicts.push(json!({
            "seq": seq,
            "nonce": command.nonce,
            "status": status,
            "reason": reason,
            "detail": detail,
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "tick": tick, "verdicts": verdicts }))?
        );
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn owner_keys(args: &KeysArgs) -> anyhow::Result<()> {
    let run_file = fabric_sim::datadir::write_sim_owner_keys(&args.data, &args.out, args.force)?;
    eprintln!(
        "wrote {} owner keys of the run (seed {}; {} of them approve a command) to {}",
        run_file.world.owners.count,
        run_file.seed,
        run_file.world.owners.threshold,
        args.out.display()
    );
    Ok(())
}
