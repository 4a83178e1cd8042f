//! `fabric owner`: commands that only the owners can give, M of N approvals each.
//!
//! A command file (`owner-script.json` of a run, or what `propose` writes) lists commands,
//! each with its nonce, its expiry tick, its approvals and the exact bytes an owner signs.
//! `propose` writes one, `sign` adds an owner's approval to every command in it, `submit`
//! hands it to a data folder's ledger, and `fabric run --owner-script` submits each command at
//! its `tick` during a run. The ledger's authority table decides: a command without enough
//! valid, distinct owner approvals, with a nonce seen before or past its expiry is refused,
//! and the refusal is recorded as a `Rejected` event.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context};
use fabric_actors::gate::{self, Verdict};
use fabric_actors::{owner_command_attempt, sim_ledger_key, sim_owner_key, ScriptedCommand};
use fabric_events::{
    keys, Event, NodeRegistered, OwnerAction, OwnerCommand, PublicKey, RetiredQueue,
    ShardRegistered,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::run::write_atomically;

/// What `fabric owner` does.
#[derive(clap::Subcommand, Debug)]
pub enum OwnerCmd {
    /// Write a command file with one unapproved command
    Propose(ProposeArgs),
    /// Add an owner's approval to every command of a command file
    Sign(SignArgs),
    /// Submit a command file's commands to a data folder's ledger
    Submit(SubmitArgs),
    /// Write the owner keys of a simulated run (derived from its seed) to a folder
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

const COMMANDS_HELP: &str = "The command and its arguments:
  pause-all | resume-all
  pause-shard SHARD | resume-shard SHARD
  set-queue-budget SHARD JOBS | set-latency-budget SHARD MS
  set-spillover SHARD [TARGET...]
  set-treaty SHARD FLOOR_PPM QUOTA_JOBS WINDOW_TICKS [REGION...]
  register-shard JSON (a shard_registered body) | retire-shard SHARD spill|cancel
  register-node JSON (a node_registered body) | update-node NODE MAX_CONCURRENCY LATENCY_MS PRICE_MICROS_PER_HOUR
  drain-node NODE | resume-node NODE | retire-node NODE
  register-client NAME PUBLIC_KEY_HEX
  cancel-job JOB | reroute-job JOB SHARD
  checkpoint-now | set-checkpoint-interval TICKS
  governance PAYLOAD_HEX";

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

/// A command file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandFile {
    /// What the file is.
    #[serde(default)]
    pub description: String,
    /// The domain every approval message starts with (informational).
    #[serde(default)]
    pub approval_domain: String,
    /// The commands, in submission order.
    pub commands: Vec<FileCommand>,
}

/// One command of a command file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCommand {
    /// The tick `fabric run --owner-script` submits it at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<u64>,
    /// What it is for.
    #[serde(default)]
    pub purpose: String,
    /// Its nonce.
    pub nonce: u64,
    /// The command and its approvals.
    pub command: OwnerCommand,
    /// The bytes each owner signs, hex (checked against the command).
    pub approval_message_hex: String,
}

const DESCRIPTION: &str = "Owner commands. Each owner approves with `fabric owner sign FILE --key KEYFILE` (an ed25519 signature over approval_message_hex, added to command.approvals); `fabric owner submit FILE --data DIR` hands them to the ledger, which executes a command once it carries enough distinct owner approvals.";

impl FileCommand {
    /// A command with no approvals yet.
    pub fn new(tick: Option<u64>, purpose: &str, nonce: u64, command: OwnerCommand) -> Self {
        let approval_message_hex = hex::encode(command.approval_message(nonce));
        Self {
            tick,
            purpose: purpose.to_owned(),
            nonce,
            command,
            approval_message_hex,
        }
    }
}

impl CommandFile {
    /// A file of `commands`.
    pub fn new(commands: Vec<FileCommand>) -> Self {
        Self {
            description: DESCRIPTION.to_owned(),
            approval_domain: String::from_utf8_lossy(OwnerCommand::APPROVAL_DOMAIN).into_owned(),
            commands,
        }
    }

    /// Reads and checks a command file: each approval message must be the command's.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read the command file {}", path.display()))?;
        let file: CommandFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a command file", path.display()))?;
        for (index, command) in file.commands.iter().enumerate() {
            let expected = hex::encode(command.command.approval_message(command.nonce));
            ensure!(
                command.approval_message_hex == expected,
                "{}: command {index} (nonce {}): approval_message_hex is not the message of this \
                 command and nonce (was the command edited after it was proposed?)",
                path.display(),
                command.nonce
            );
        }
        Ok(file)
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        write_atomically(path, serde_json::to_string_pretty(self)?.as_bytes())
    }

    /// The commands as a run's script: each needs its tick.
    pub fn script(&self, path: &Path) -> anyhow::Result<Vec<ScriptedCommand>> {
        let mut nonces = BTreeSet::new();
        self.commands
            .iter()
            .enumerate()
            .map(|(index, command)| {
                let Some(tick) = command.tick else {
                    bail!(
                        "{}: command {index} (nonce {}) has no `tick`: a run submits each \
                         command of its owner script at its tick",
                        path.display(),
                        command.nonce
                    );
                };
                ensure!(
                    tick > 0,
                    "{}: command {index}: tick 0 is the fabric's genesis; submit at tick 1 or later",
                    path.display()
                );
                if !nonces.insert(command.nonce) {
                    eprintln!(
                        "warning: {}: nonce {} appears twice; the ledger will refuse the second",
                        path.display(),
                        command.nonce
                    );
                }
                Ok(ScriptedCommand {
                    tick,
                    nonce: command.nonce,
                    command: command.command.clone(),
                })
            })
            .collect()
    }
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

fn words<'a>(args: &'a [String], count: usize, usage: &str) -> anyhow::Result<&'a [String]> {
    ensure!(args.len() == count, "usage: {usage}");
    Ok(args)
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> anyhow::Result<T> {
    text.parse()
        .map_err(|_| anyhow::anyhow!("{what} must be a non-negative integer, not `{text}`"))
}

/// The action of `propose`'s words.
pub fn parse_action(words_in: &[String]) -> anyhow::Result<OwnerAction> {
    let (name, rest) = words_in
        .split_first()
        .context("name a command, e.g. `pause-shard mars`")?;
    let s = |i: usize| rest[i].clone();
    Ok(match name.as_str() {
        "pause-all" => {
            words(rest, 0, "pause-all")?;
            OwnerAction::PauseAll
        }
        "resume-all" => {
            words(rest, 0, "resume-all")?;
            OwnerAction::ResumeAll
        }
        "pause-shard" => {
            words(rest, 1, "pause-shard SHARD")?;
            OwnerAction::PauseShard { shard: s(0) }
        }
        "resume-shard" => {
            words(rest, 1, "resume-shard SHARD")?;
            OwnerAction::ResumeShard { shard: s(0) }
        }
        "set-queue-budget" => {
            words(rest, 2, "set-queue-budget SHARD JOBS")?;
            OwnerAction::SetQueueBudget {
                shard: s(0),
                queue_budget: number(&rest[1], "JOBS")?,
            }
        }
        "set-latency-budget" => {
            words(rest, 2, "set-latency-budget SHARD MS")?;
            OwnerAction::SetLatencyBudget {
                shard: s(0),
                latency_budget_ms: number(&rest[1], "MS")?,
            }
        }
        "set-spillover" => {
            ensure!(!rest.is_empty(), "usage: set-spillover SHARD [TARGET...]");
            OwnerAction::SetSpillover {
                shard: s(0),
                targets: rest[1..].to_vec(),
            }
        }
        "set-treaty" => {
            ensure!(
                rest.len() >= 4,
                "usage: set-treaty SHARD FLOOR_PPM QUOTA_JOBS WINDOW_TICKS [REGION...]"
            );
            OwnerAction::SetTreaty {
                shard: s(0),
                reputation_floor_ppm: number(&rest[1], "FLOOR_PPM")?,
                node_quota_jobs: number(&rest[2], "QUOTA_JOBS")?,
                quota_window_ticks: number(&rest[3], "WINDOW_TICKS")?,
                regions_served: rest[4..].to_vec(),
            }
        }
        "register-shard" => {
            words(rest, 1, "register-shard JSON")?;
            let registration: ShardRegistered = serde_json::from_str(&rest[0])
                .context("register-shard takes a shard_registered body as JSON")?;
            OwnerAction::RegisterShard { registration }
        }
        "retire-shard" => {
            words(rest, 2, "retire-shard SHARD spill|cancel")?;
            let queue = match rest[1].as_str() {
                "spill" => RetiredQueue::Spill,
                "cancel" => RetiredQueue::Cancel,
                other => bail!("retire-shard: the queue is `spill` or `cancel`, not `{other}`"),
            };
            OwnerAction::RetireShard { shard: s(0), queue }
        }
        "register-node" => {
            words(rest, 1, "register-node JSON")?;
            let registration: NodeRegistered = serde_json::from_str(&rest[0])
                .context("register-node takes a node_registered body as JSON")?;
            OwnerAction::RegisterNode { registration }
        }
        "update-node" => {
            words(
                rest,
                4,
                "update-node NODE MAX_CONCURRENCY LATENCY_MS PRICE_MICROS_PER_HOUR",
            )?;
            OwnerAction::UpdateNode {
                node: s(0),
                max_concurrency: number(&rest[1], "MAX_CONCURRENCY")?,
                latency_ms: number(&rest[2], "LATENCY_MS")?,
                price_micros_per_hour: number(&rest[3], "PRICE_MICROS_PER_HOUR")?,
            }
        }
        "drain-node" => {
            words(rest, 1, "drain-node NODE")?;
            OwnerAction::DrainNode { node: s(0) }
        }
        "resume-node" => {
            words(rest, 1, "resume-node NODE")?;
            OwnerAction::ResumeNode { node: s(0) }
        }
        "retire-node" => {
            words(rest, 1, "retire-node NODE")?;
            OwnerAction::RetireNode { node: s(0) }
        }
        "register-client" => {
            words(rest, 2, "register-client NAME PUBLIC_KEY_HEX")?;
            let key = PublicKey::from_hex(&rest[1])
                .map_err(|err| anyhow::anyhow!("register-client: PUBLIC_KEY_HEX: {err}"))?;
            OwnerAction::RegisterClient { client: s(0), key }
        }
        "cancel-job" => {
            words(rest, 1, "cancel-job JOB")?;
            OwnerAction::CancelJob {
                job: number(&rest[0], "JOB")?,
            }
        }
        "reroute-job" => {
            words(rest, 2, "reroute-job JOB SHARD")?;
            OwnerAction::RerouteJob {
                job: number(&rest[0], "JOB")?,
                shard: s(1),
            }
        }
        "checkpoint-now" => {
            words(rest, 0, "checkpoint-now")?;
            OwnerAction::CheckpointNow
        }
        "set-checkpoint-interval" => {
            words(rest, 1, "set-checkpoint-interval TICKS")?;
            OwnerAction::SetCheckpointInterval {
                interval_ticks: number(&rest[0], "TICKS")?,
            }
        }
        "governance" => {
            words(rest, 1, "governance PAYLOAD_HEX")?;
            OwnerAction::Governance {
                payload: hex::decode(&rest[0])
                    .map_err(|err| anyhow::anyhow!("governance: PAYLOAD_HEX: {err}"))?,
            }
        }
        other => bail!("unknown owner command `{other}`\n{COMMANDS_HELP}"),
    })
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

/// A plain description of what an executed command did.
pub fn effect(action: &OwnerAction) -> String {
    match action {
        OwnerAction::PauseAll => "every shard paused: no assignment from here on".to_owned(),
        OwnerAction::ResumeAll => "every shard resumed".to_owned(),
        OwnerAction::PauseShard { shard } => {
            format!("shard `{shard}` paused: no assignment there from here on")
        }
        OwnerAction::ResumeShard { shard } => format!("shard `{shard}` resumed"),
        OwnerAction::SetQueueBudget {
            shard,
            queue_budget,
        } => format!("shard `{shard}` spills above {queue_budget} queued jobs"),
        OwnerAction::SetLatencyBudget {
            shard,
            latency_budget_ms,
        } => format!("shard `{shard}` takes nodes up to {latency_budget_ms} ms"),
        OwnerAction::SetSpillover { shard, targets } => {
            format!("shard `{shard}` spills to {}", targets.join(", "))
        }
        OwnerAction::DrainNode { node } => format!("node `{node}` gets no new jobs"),
        OwnerAction::ResumeNode { node } => format!("node `{node}` takes jobs again"),
        OwnerAction::RetireNode { node } => {
            format!("node `{node}` retired: no new jobs, its key authors nothing")
        }
        OwnerAction::CancelJob { job } => format!("job {job} cancelled"),
        OwnerAction::RerouteJob { job, shard } => format!("job {job} moved to shard `{shard}`"),
        OwnerAction::CheckpointNow => "a checkpoint at the next tick".to_owned(),
        OwnerAction::SetCheckpointInterval { interval_ticks } => {
            format!("a checkpoint every {interval_ticks} ticks")
        }
        OwnerAction::Governance { payload } => {
            format!("governance payload of {} bytes recorded", payload.len())
        }
        OwnerAction::RegisterShard { registration } => {
            format!("shard `{}` registered", registration.shard)
        }
        OwnerAction::RetireShard { shard, queue } => format!(
            "shard `{shard}` retired; its queue {}",
            match queue {
                RetiredQueue::Spill => "spilled to its neighbours",
                RetiredQueue::Cancel => "cancelled",
            }
        ),
        OwnerAction::RegisterNode { registration } => format!(
            "node `{}` registered in shard `{}`",
            registration.node, registration.region
        ),
        OwnerAction::UpdateNode { node, .. } => format!("node `{node}` has new terms"),
        OwnerAction::SetTreaty { shard, .. } => format!("shard `{shard}` has new treaty terms"),
        OwnerAction::RegisterClient { client, .. } => format!("client `{client}` registered"),
    }
}

/// The owner commands of a log, as `owner-commands-executed.json` lists them: every stored
/// owner command was admitted, so executed.
#[derive(Default)]
pub struct ExecutedCommands {
    commands: Vec<Value>,
}

impl ExecutedCommands {
    /// Sees the stored event at `seq`.
    pub fn see(&mut self, seq: u64, event: &Event) {
        if let fabric_events::Body::OwnerCommand(command) = &event.body {
            self.commands.push(json!({
                "seq": seq,
                "tick": event.header.tick,
                "nonce": event.header.nonce,
                "command": command.action,
                "signers": command.approvals.iter().map(|a| a.owner.to_hex()).collect::<Vec<_>>(),
                "effect": effect(&command.action),
            }));
        }
    }

    /// The report's JSON.
    pub fn to_json(&self) -> Value {
        json!({ "commands": self.commands })
    }
}

impl fabric_audit::Observer for ExecutedCommands {
    fn before(&mut self, step: &fabric_audit::Step<'_>, _: &fabric_projections::State) {
        self.see(step.seq, step.event);
    }
}

fn submit(args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let file = CommandFile::load(&args.file)?;
    ensure!(
        !file.commands.is_empty(),
        "{} has no commands",
        args.file.display()
    );
    let (run_file, mut ledger) = crate::run::open_run(&args.data)?;
    let ledger_key = sim_ledger_key(run_file.seed);
    let reader = ledger.reader();
    let restored = fabric_actors::restore(&reader, &ledger.ledger_key())
        .context("could not restore the state of the log")?;
    let mut state = restored.state;
    for (event, signed) in &restored.stored {
        state
            .admit(&signed.author, event)
            .map_err(|err| anyhow::anyhow!("the stored log does not fit its state: {err}"))?;
    }
    let tick = state.tick();
    let mut attempts = Vec::with_capacity(file.commands.len());
    for command in &file.commands {
        attempts.push(owner_command_attempt(
            tick,
            command.nonce,
            command.command.clone(),
            &ledger_key,
        )?);
    }
    let admitted = gate::admit(&mut state, tick, attempts, &ledger_key)?;
    let first_seq = ledger.len();
    ledger
        .append(&admitted.signed)
        .context("could not append the commands")?;
    let mut verdicts = Vec::new();
    let mut refused = 0;
    for (index, (command, verdict)) in file.commands.iter().zip(&admitted.verdicts).enumerate() {
        let seq = first_seq + index as u64;
        let (status, reason, detail) = match verdict {
            Verdict::Admitted => ("executed", None, effect(&command.command.action)),
            Verdict::Refused { reason, detail } => {
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
    let (run_file, _ledger) = crate::run::open_run(&args.data)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("could not create {}", args.out.display()))?;
    for index in 0..run_file.world.owners.count {
        let key = sim_owner_key(run_file.seed, index);
        let path = args.out.join(format!("owner-{index}.key"));
        keys::save_secret(&path, &key, args.force)
            .with_context(|| format!("could not write {}", path.display()))?;
        keys::save_public(&keys::public_path(&path), &key.verifying_key())
            .with_context(|| format!("could not write the public key of {}", path.display()))?;
    }
    eprintln!(
        "wrote {} owner keys of the run (seed {}; {} of them approve a command) to {}",
        run_file.world.owners.count,
        run_file.seed,
        run_file.world.owners.threshold,
        args.out.display()
    );
    Ok(())
}
