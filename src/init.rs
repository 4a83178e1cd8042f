//! `fabric init` and `fabric init --commit`, the genesis ceremony of a fabric whose keys its
//! operator and owners hold ([`fabric_sim::ceremony`], docs/FORMAT.md §10.3), and `fabric
//! keygen --world`, the operator's keys of a world ([`fabric_actors::keyfiles`]).

use std::path::{Path, PathBuf};

use anyhow::Context;
use fabric_actors::keyfiles::{LEDGER_KEY_FILE, NODE_KEYS_DIR, ROUTER_KEYS_DIR};
use fabric_sim::ceremony::{self, Genesis};

/// Arguments of `fabric init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The data folder: created (it must be empty or missing); with --commit, the folder
    /// `fabric init` wrote
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Commit the approved genesis: check every command of genesis-commands.json against the
    /// genesis owners and write tick 0 into the ledger
    #[arg(long)]
    commit: bool,
    /// An owner's public key file (`fabric keygen`'s FILE.pub); once per owner
    #[arg(
        long = "owner",
        value_name = "FILE.pub",
        required_unless_present = "commit",
        conflicts_with = "commit"
    )]
    owners: Vec<PathBuf>,
    /// Distinct owner approvals a command needs (M of the N owners)
    #[arg(
        long,
        value_name = "M",
        required_unless_present = "commit",
        conflicts_with = "commit"
    )]
    threshold: Option<u32>,
    /// The ledger's secret key file (mode 0600): it signs the genesis and, with --commit,
    /// the ledger's records
    #[arg(long, value_name = "FILE")]
    ledger_key: PathBuf,
    /// The folder of the routers' public keys, `<shard>.key.pub` (or `<shard>.pub`)
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "commit",
        conflicts_with = "commit"
    )]
    router_keys: Option<PathBuf>,
    /// The folder of the nodes' public keys, `<node>.key.pub` (or `<node>.pub`)
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "commit",
        conflicts_with = "commit"
    )]
    node_keys: Option<PathBuf>,
    /// A client to register: its name and public key file; repeatable
    #[arg(
        long = "client",
        value_name = "NAME=FILE.pub",
        conflicts_with = "commit"
    )]
    clients: Vec<String>,
    /// Another replica's sequencer public key file, for a replicated fabric (the ledger key
    /// is the first sequencer); repeatable
    #[arg(long = "sequencer", value_name = "FILE.pub", conflicts_with = "commit")]
    sequencers: Vec<PathBuf>,
    /// The world [default: the built-in world, config/fabric.toml of the source]
    #[arg(long, value_name = "FILE", conflicts_with = "commit")]
    config: Option<PathBuf>,
}

/// `fabric init`, or `fabric init --commit`.
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    if args.commit {
        commit(&args.data, &args.ledger_key)
    } else {
        init(args)
    }
}

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let threshold = args.threshold.context("--threshold is needed")?;
    let written = ceremony::init(&Genesis {
        data: &args.data,
        owners: &args.owners,
        threshold,
        ledger_key: &args.ledger_key,
        router_keys: args
            .router_keys
            .as_deref()
            .context("--router-keys is needed")?,
        node_keys: args.node_keys.as_deref().context("--node-keys is needed")?,
        clients: &args.clients,
        sequencers: &args.sequencers,
        config: args.config.as_deref(),
    })?;
    eprintln!(
        "wrote the genesis of {} (ledger key {}, {} owners, {threshold} approve a command) and \
         its registrations to {}\neach of {threshold} owners approves them with `fabric owner \
         sign {} --key OWNER.key`; then `fabric init --commit --data {} --ledger-key {}`",
        args.data.display(),
        written.ledger_key,
        args.owners.len(),
        written.commands.display(),
        written.commands.display(),
        args.data.display(),
        args.ledger_key.display()
    );
    Ok(())
}

/// `fabric init --commit`: tick 0 (the genesis and every approved registration) into the
/// ledger, or nothing when any command is refused.
fn commit(data: &Path, ledger_key_path: &Path) -> anyhow::Result<()> {
    let committed = ceremony::commit(data, ledger_key_path)?;
    eprintln!(
        "committed the genesis of {}: {} events at tick 0, root {}; serve it with `fabric serve \
         --data {} --ledger-key FILE --router-keys DIR --node-keys DIR`",
        data.display(),
        committed.events,
        committed.root,
        data.display()
    );
    // What witnesses are given (`fabric witness --log-key`), on stdout for scripts.
    println!(
        "checkpoint verifier key {}",
        committed.checkpoint_verifier_key
    );
    Ok(())
}

/// `fabric keygen --world --out DIR`: the operator's keys of a world: `DIR/ledger.key`,
/// `DIR/routers/<shard>.key`, `DIR/nodes/<node>.key`, each mode 0600 with its `.pub`.
pub fn keygen_world(config: Option<&Path>, out: &Path, force: bool) -> anyhow::Result<()> {
    let world = fabric_config::load(config)?;
    let paths = fabric_actors::keyfiles::write_world_keys(&world, out, force)?;
    println!(
        "wrote {} key pairs (secret mode 0600, public .pub) to {}: {LEDGER_KEY_FILE}, \
         {ROUTER_KEYS_DIR}/<shard>.key, {NODE_KEYS_DIR}/<node>.key",
        paths.len(),
        out.display()
    );
    Ok(())
}
