//! The genesis ceremony of a fabric whose keys its operator and owners hold (docs/FORMAT.md
//! §10.3):
//!
//! 1. each owner runs `fabric keygen --out owner.key` on their own machine and hands over only
//!    `owner.key.pub`; the operator runs `fabric keygen --world --out keys` for the ledger key,
//!    a router key per shard and a node key per node;
//! 2. [`init`] (`fabric init`) writes the data folder: `run.json` (the world), `genesis.json`
//!    (the `fabric_genesis` event, signed by the ledger key: the owners, the threshold, key
//!    origin `operator`) and `genesis-commands.json` (an owner command file registering every
//!    client, shard and node with its public key);
//! 3. the owners approve the command file with `fabric owner sign` (M of N);
//! 4. [`commit`] (`fabric init --commit`) checks every command against the genesis owners (the
//!    ledger's own authority table) and writes tick 0 durably. Only then can `fabric serve`
//!    serve it.
//!
//! Nothing here derives a key: every key comes from a file.

use std::path::{Path, PathBuf};

use fabric_actors::gate::{Attempt, Origin};
use fabric_actors::genesis::{admit_genesis, founding, registrations, WorldKeys};
use fabric_actors::keyfiles::{self, public};
use fabric_actors::world::World;
use fabric_api::genesis::{GenesisFile, GenesisFileError};
use fabric_api::owner::{CommandFile, CommandFileError, FileCommand};
use fabric_events::{Hash32, KeyOrigin, OwnerCommand, PublicKey, SignedEvent};
use fabric_ledger::Ledger;

use crate::datadir::{self, ensure, DataDirError, KeySource, RunFile, LEDGER_DIR, RUN_FILE_FORMAT};

/// The signed `fabric_genesis` event `fabric init` writes into the data folder.
pub const GENESIS_FILE: &str = "genesis.json";
/// The owner command file with the world's registrations, for the owners to approve.
pub const GENESIS_COMMANDS_FILE: &str = "genesis-commands.json";

/// What stopped a step of the ceremony; each message names the flag, the file or the folder.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// The data folder, its files or its ledger.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A key file.
    #[error(transparent)]
    KeyFile(#[from] keyfiles::KeyFileError),
    /// The world's config.
    #[error(transparent)]
    Config(#[from] fabric_config::ConfigError),
    /// `genesis.json`.
    #[error(transparent)]
    GenesisFile(#[from] GenesisFileError),
    /// `genesis-commands.json`.
    #[error(transparent)]
    CommandFile(#[from] CommandFileError),
    /// The genesis event is over the size limit.
    #[error(transparent)]
    Oversize(#[from] fabric_events::codec::OversizeEvent),
}

/// What `fabric init` is given.
pub struct Genesis<'a> {
    /// The data folder to create (`--data`; empty or missing).
    pub data: &'a Path,
    /// The owners' public key files (`--owner`).
    pub owners: &'a [PathBuf],
    /// Distinct owner approvals a command needs (`--threshold`).
    pub threshold: u32,
    /// The ledger's secret key file (`--ledger-key`).
    pub ledger_key: &'a Path,
    /// The folder of the routers' public keys (`--router-keys`).
    pub router_keys: &'a Path,
    /// The folder of the nodes' public keys (`--node-keys`).
    pub node_keys: &'a Path,
    /// The clients to register, `NAME=FILE.pub` (`--client`).
    pub clients: &'a [String],
    /// The other replicas' sequencer public key files (`--sequencer`).
    pub sequencers: &'a [PathBuf],
    /// The world's config file (`--config`; the built-in world without).
    pub config: Option<&'a Path>,
}

/// What [`init`] wrote.
pub struct Written {
    /// The ledger key's public half.
    pub ledger_key: PublicKey,
    /// The command file for the owners to approve.
    pub commands: PathBuf,
}

/// `fabric init`: writes `run.json`, the signed genesis and the command file of the world's
/// registrations into `genesis.data`.
pub fn init(genesis: &Genesis<'_>) -> Result<Written, CeremonyError> {
    let threshold = genesis.threshold;
    let owners = keyfiles::owner_keys(genesis.owners, threshold)?;
    let ledger_key = keyfiles::load_secret(genesis.ledger_key, "--ledger-key")?;
    let mut world = fabric_config::load(genesis.config)?;
    world.owners.count = u32::try_from(owners.len())
        .map_err(|err| DataDirError::failed("too many owners".to_owned(), err))?;
    world.owners.threshold = threshold;
    let world_keys = WorldKeys {
        clients: keyfiles::client_keys(genesis.clients)?,
        routers: keyfiles::public_keys_of(
            genesis.router_keys,
            "--router-keys",
            world.shards.iter().map(|shard| shard.name.as_str()),
        )?,
        nodes: keyfiles::public_keys_of(
            genesis.node_keys,
            "--node-keys",
            world.nodes.iter().map(|node| node.name.as_str()),
        )?,
        sequencers: genesis
            .sequencers
            .iter()
            .map(|path| keyfiles::load_public(path, "--sequencer"))
            .collect::<Result<_, _>>()?,
    };
    let data = genesis.data;
    datadir::prepare(data, false)?;
    let founding = founding(public(&ledger_key), owners, threshold, KeyOrigin::Operator);
    let signed = SignedEvent::sign(&founding, &ledger_key)?;
    GenesisFile::save(&data.join(GENESIS_FILE), &signed)?;
    let commands = registration_commands(&world, &world_keys);
    let command_path = data.join(GENESIS_COMMANDS_FILE);
    CommandFile::new(commands).save(&command_path)?;
    datadir::write_run_file(data, &operator_run_file(genesis.config, world))?;
    Ok(Written {
        ledger_key: public(&ledger_key),
        commands: command_path,
    })
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

/// What [`commit`] appended.
pub struct Committed {
    /// Events at tick 0.
    pub events: usize,
    /// The Merkle root of the log after them.
    pub root: Hash32,
    /// The verifier key of its checkpoint notes (docs/FORMAT.md §17.2): what its witnesses
    /// are given.
    pub checkpoint_verifier_key: String,
}

/// `fabric init --commit`: tick 0 (the genesis and every approved registration) into the
/// ledger of `data`, or nothing when any command is refused.
pub fn commit(data: &Path, ledger_key_path: &Path) -> Result<Committed, CeremonyError> {
    let (run_file, _) = datadir::read_run_file(data)?;
    ensure(run_file.keys == KeySource::Operator, || {
        format!(
            "--data {} holds a simulation, which has no ceremony",
            data.display()
        )
    })?;
    let ledger_key = keyfiles::load_secret(ledger_key_path, "--ledger-key")?;
    let (signed, event) = GenesisFile::load(&data.join(GENESIS_FILE))?;
    ensure(signed.author == public(&ledger_key), || {
        format!(
            "--ledger-key {}: not the ledger key of the genesis in {} (which names {})",
            ledger_key_path.display(),
            data.display(),
            signed.author
        )
    })?;
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
        .map_err(|err| DataDirError::failed(format!("{}", commands_path.display()), err))?;
    let ledger_path = data.join(LEDGER_DIR);
    ensure(!ledger_path.exists(), || {
        format!(
            "{} already holds a ledger: the genesis was committed",
            ledger_path.display()
        )
    })?;
    let ledger_public = public(&ledger_key);
    let mut ledger = Ledger::open(&ledger_path, ledger_key).map_err(|err| {
        DataDirError::failed(
            format!("could not create the ledger in {}", ledger_path.display()),
            err,
        )
    })?;
    let receipt = ledger
        .append(&admitted.signed)
        .map_err(|err| DataDirError::failed("could not append the genesis".to_owned(), err))?;
    let genesis = ledger
        .get(0)
        .map_err(|err| DataDirError::failed("could not read the genesis back".to_owned(), err))?;
    let origin = fabric_ledger::note::origin_of(&genesis.hash());
    Ok(Committed {
        events: admitted.signed.len(),
        root: receipt.tree_head.root,
        checkpoint_verifier_key: fabric_ledger::note::verifier_key(&origin, &ledger_public),
    })
}
