//! The genesis ceremony of a fabric whose keys its operator and owners hold (docs/FORMAT.md
//! §10.3):
//!
//! 1. each owner runs `fabric keygen --out owner.key` on their own machine and hands over only
//!    `owner.key.pub`; the operator runs `fabric keygen --world --out keys` for the ledger key,
//!    a router key per shard and a node key per node;
//! 2. `fabric init` writes the data folder: `run.json` (the world), `genesis.json` (the
//!    `fabric_genesis` event, signed by the ledger key: the owners, the threshold, key origin
//!    `operator`) and `genesis-commands.json` (an owner command file registering every client,
//!    shard and node with its public key);
//! 3. the owners approve the command file with `fabric owner sign` (M of N);
//! 4. `fabric init --commit` checks every command against the genesis owners (the ledger's own
//!    authority table) and writes tick 0 durably. Only then can `fabric serve` serve it.
//!
//! Nothing here derives a key: every key comes from a file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use fabric_actors::gate::{Attempt, Origin};
use fabric_actors::genesis::{admit_genesis, founding, registrations, WorldKeys};
use fabric_actors::world::World;
use fabric_api::genesis::GenesisFile;
use fabric_api::owner::{CommandFile, FileCommand};
use fabric_events::{keys, KeyOrigin, OwnerCommand, PublicKey, SignedEvent, SigningKey};
use fabric_ledger::Ledger;

use crate::datadir::{self, KeySource, RunFile, LEDGER_DIR, RUN_FILE_FORMAT};

/// The signed `fabric_genesis` event `fabric init` writes into the data folder.
pub const GENESIS_FILE: &str = "genesis.json";
/// The owner command file with the world's registrations, for the owners to approve.
pub const GENESIS_COMMANDS_FILE: &str = "genesis-commands.json";
/// The ledger key's file in the folder `fabric keygen --world` writes.
pub const LEDGER_KEY_FILE: &str = "ledger.key";
/// The folder of router keys (`<shard>.key`) in the folder `fabric keygen --world` writes.
pub const ROUTER_KEYS_DIR: &str = "routers";
/// The folder of node keys (`<node>.key`) in the folder `fabric keygen --world` writes.
pub const NODE_KEYS_DIR: &str = "nodes";

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
    let owners = owner_keys(&args.owners, threshold)?;
    let ledger_key = load_secret(&args.ledger_key, "--ledger-key")?;
    let mut world = fabric_config::load(args.config.as_deref())?;
    world.owners.count = u32::try_from(owners.len()).context("too many owners")?;
    world.owners.threshold = threshold;
    let world_keys = WorldKeys {
        clients: client_keys(&args.clients)?,
        routers: public_keys_of(
            args.router_keys
                .as_deref()
                .context("--router-keys is needed")?,
            "--router-keys",
            world.shards.iter().map(|shard| shard.name.as_str()),
        )?,
        nodes: public_keys_of(
            args.node_keys.as_deref().context("--node-keys is needed")?,
            "--node-keys",
            world.nodes.iter().map(|node| node.name.as_str()),
        )?,
    };
    datadir::prepare(&args.data, false)?;
    let genesis = founding(public(&ledger_key), owners, threshold, KeyOrigin::Operator);
    let signed = SignedEvent::sign(&genesis, &ledger_key)?;
    GenesisFile::save(&args.data.join(GENESIS_FILE), &signed)?;
    let commands = registration_commands(&world, &world_keys);
    let command_path = args.data.join(GENESIS_COMMANDS_FILE);
    CommandFile::new(commands).save(&command_path)?;
    datadir::write_run_file(
        &args.data,
        &operator_run_file(args.config.as_deref(), world),
    )?;
    eprintln!(
        "wrote the genesis of {} (ledger key {}, {} owners, {threshold} approve a command) and \
         its registrations to {}\neach of {threshold} owners approves them with `fabric owner \
         sign {} --key OWNER.key`; then `fabric init --commit --data {} --ledger-key {}`",
        args.data.display(),
        public(&ledger_key),
        args.owners.len(),
        command_path.display(),
        command_path.display(),
        args.data.display(),
        args.ledger_key.display()
    );
    Ok(())
}

fn operator_run_file(config: Option<&Path>, world: World) -> RunFile {
    RunFile {
        format: RUN_FILE_FORMAT,
        label: "serve".to_owned(),
        seed: 0,
        jobs: 0,
        nodes: world.nodes.len(),
        config: fabric_config::origin(config).to_path_buf(),
        world,
        owner_script: Vec::new(),
        byzantine: Vec::new(),
        keys: KeySource::Operator,
    }
}

/// The world's registrations as unapproved commands, nonce `n` for the action at `n - 1`,
/// valid at tick 0 only.
fn registration_commands(world: &World, world_keys: &WorldKeys) -> Vec<FileCommand> {
    registrations(world, world_keys)
        .into_iter()
        .enumerate()
        .map(|(index, action)| {
            let purpose = format!("genesis: {}", fabric_api::owner::effect(&action));
            FileCommand::new(
                None,
                &purpose,
                index as u64 + 1,
                OwnerCommand {
                    action,
                    expiry_tick: 0,
                    approvals: Vec::new(),
                },
            )
        })
        .collect()
}

fn public(key: &SigningKey) -> PublicKey {
    PublicKey::from(&key.verifying_key())
}

fn load_secret(path: &Path, flag: &str) -> anyhow::Result<SigningKey> {
    keys::load_secret(path)
        .with_context(|| format!("{flag} {}: cannot load the secret key", path.display()))
}

fn load_public(path: &Path, what: &str) -> anyhow::Result<PublicKey> {
    let key = keys::load_public(path)
        .with_context(|| format!("{what}: cannot load the public key {}", path.display()))?;
    Ok(PublicKey::from(&key))
}

/// The owners' public keys: distinct, at least `threshold` of them, `threshold` ≥ 1.
fn owner_keys(paths: &[PathBuf], threshold: u32) -> anyhow::Result<Vec<PublicKey>> {
    let mut owners = Vec::with_capacity(paths.len());
    let mut seen = BTreeSet::new();
    for path in paths {
        let key = load_public(path, "--owner")?;
        ensure!(
            seen.insert(key),
            "--owner {}: the same key as an earlier --owner ({key}); owners must be distinct",
            path.display()
        );
        owners.push(key);
    }
    ensure!(
        threshold >= 1 && threshold as usize <= owners.len(),
        "--threshold {threshold}: must be between 1 and the number of owners ({})",
        owners.len()
    );
    Ok(owners)
}

/// `NAME=FILE.pub` pairs.
fn client_keys(specs: &[String]) -> anyhow::Result<Vec<(String, PublicKey)>> {
    let mut names = BTreeSet::new();
    let mut clients = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some((name, path)) = spec
            .split_once('=')
            .filter(|(name, path)| !name.is_empty() && !path.is_empty())
        else {
            bail!("--client {spec}: expected NAME=FILE.pub");
        };
        ensure!(
            names.insert(name.to_owned()),
            "--client {name} is given twice"
        );
        let key = load_public(Path::new(path), &format!("--client {name}"))?;
        clients.push((name.to_owned(), key));
    }
    Ok(clients)
}

/// The public key of each of `names` in `dir`: `<name>.key.pub` (as `fabric keygen` writes
/// it) or `<name>.pub`.
fn public_keys_of<'a>(
    dir: &Path,
    flag: &str,
    names: impl Iterator<Item = &'a str>,
) -> anyhow::Result<Vec<PublicKey>> {
    names
        .map(|name| {
            let path = [format!("{name}.key.pub"), format!("{name}.pub")]
                .into_iter()
                .map(|file| dir.join(file))
                .find(|path| path.is_file())
                .with_context(|| {
                    format!(
                        "{flag} {}: no public key of {name} ({name}.key.pub or {name}.pub)",
                        dir.display()
                    )
                })?;
            load_public(&path, &format!("{flag} ({name})"))
        })
        .collect()
}

/// `fabric init --commit`: tick 0 (the genesis and every approved registration) into the
/// ledger, or nothing when any command is refused.
fn commit(data: &Path, ledger_key_path: &Path) -> anyhow::Result<()> {
    let (run_file, _) = datadir::read_run_file(data)?;
    ensure!(
        run_file.keys == KeySource::Operator,
        "--data {} holds a simulation, which has no ceremony",
        data.display()
    );
    let ledger_key = load_secret(ledger_key_path, "--ledger-key")?;
    let (signed, event) = GenesisFile::load(&data.join(GENESIS_FILE))?;
    ensure!(
        signed.author == public(&ledger_key),
        "--ledger-key {}: not the ledger key of the genesis in {} (which names {})",
        ledger_key_path.display(),
        data.display(),
        signed.author
    );
    let commands_path = data.join(GENESIS_COMMANDS_FILE);
    let commands: Vec<(u64, OwnerCommand)> = CommandFile::load(&commands_path)?
        .commands
        .into_iter()
        .map(|command| (command.nonce, command.command))
        .collect();
    let genesis = Attempt {
        event,
        signed,
        origin: Origin::Internal,
    };
    let admitted = admit_genesis(&run_file.world, genesis, &commands, &ledger_key)
        .with_context(|| format!("{}", commands_path.display()))?;
    let ledger_path = data.join(LEDGER_DIR);
    ensure!(
        !ledger_path.exists(),
        "{} already holds a ledger: the genesis was committed",
        ledger_path.display()
    );
    let mut ledger = Ledger::open(&ledger_path, ledger_key)
        .with_context(|| format!("could not create the ledger in {}", ledger_path.display()))?;
    let receipt = ledger
        .append(&admitted.signed)
        .context("could not append the genesis")?;
    eprintln!(
        "committed the genesis of {}: {} events at tick 0, root {}; serve it with `fabric serve \
         --data {} --ledger-key FILE --router-keys DIR --node-keys DIR`",
        data.display(),
        admitted.signed.len(),
        receipt.tree_head.root,
        data.display()
    );
    Ok(())
}

/// `fabric keygen --world --out DIR`: the operator's keys of a world: `DIR/ledger.key`,
/// `DIR/routers/<shard>.key`, `DIR/nodes/<node>.key`, each mode 0600 with its `.pub`.
pub fn keygen_world(config: Option<&Path>, out: &Path, force: bool) -> anyhow::Result<()> {
    let world = fabric_config::load(config)?;
    let mut paths = vec![out.join(LEDGER_KEY_FILE)];
    paths.extend(world.shards.iter().map(|shard| {
        out.join(ROUTER_KEYS_DIR)
            .join(format!("{}.key", shard.name))
    }));
    paths.extend(
        world
            .nodes
            .iter()
            .map(|node| out.join(NODE_KEYS_DIR).join(format!("{}.key", node.name))),
    );
    for dir in [out.join(ROUTER_KEYS_DIR), out.join(NODE_KEYS_DIR)] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    for path in &paths {
        keys::save_secret(path, &keys::generate(), force)
            .with_context(|| format!("could not write the key to {}", path.display()))?;
    }
    println!(
        "wrote {} key pairs (secret mode 0600, public .pub) to {}: {LEDGER_KEY_FILE}, \
         {ROUTER_KEYS_DIR}/<shard>.key, {NODE_KEYS_DIR}/<node>.key",
        paths.len(),
        out.display()
    );
    Ok(())
}
