//! Which fabric `fabric serve` serves, and with which keys: a fabric made by the ceremony
//! (`fabric init`), whose ledger, router and node secrets the operator hands in as files, or
//! with `--simulation` a simulated fabric whose keys derive from a public seed. Every key
//! given is checked against the key the log registered, and a simulation is never served
//! without `--simulation`.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use fabric_actors::gate::Attempt;
use fabric_actors::world::World;
use fabric_actors::ActorKeys;
use fabric_events::{keys, KeyOrigin, PublicKey, SigningKey};
use fabric_ledger::Ledger;
use fabric_projections::State;

use crate::datadir::{self, KeySource, RUN_FILE};

/// The keys flags of `fabric serve`.
#[derive(clap::Args, Debug)]
pub struct KeyArgs {
    /// Serve a simulation: keys derived from the public --seed (anyone can sign as any actor).
    /// An empty --data gets a new simulated fabric; without this flag a simulated folder is
    /// refused
    #[arg(long, conflicts_with_all = ["ledger_key", "router_keys", "node_keys"])]
    pub simulation: bool,
    /// The ledger's secret key file (mode 0600; `fabric keygen --world` writes ledger.key)
    #[arg(long, value_name = "FILE", required_unless_present = "simulation")]
    pub ledger_key: Option<PathBuf>,
    /// The folder of the routers' secret keys, `<shard>.key` (mode 0600)
    #[arg(long, value_name = "DIR", required_unless_present = "simulation")]
    pub router_keys: Option<PathBuf>,
    /// The folder of the nodes' secret keys, `<node>.key` (mode 0600): the world's nodes run
    /// in this process until node agents run elsewhere
    #[arg(long, value_name = "DIR", required_unless_present = "simulation")]
    pub node_keys: Option<PathBuf>,
}

/// What `fabric serve` serves.
pub struct Served {
    /// The world, as the data folder records it.
    pub world: World,
    /// The ledger, opened with its key.
    pub ledger: Ledger,
    /// The actors' keys.
    pub keys: ActorKeys,
    /// Tick 0 when the ledger is empty (a new simulation), else nothing.
    pub genesis: Vec<Attempt>,
    /// Where the keys come from.
    pub key_origin: KeyOrigin,
}

/// Opens the fabric of `data` with the keys of `args`; a new simulation of `config` and
/// `seed` when `data` is empty and `--simulation` is given.
pub fn open(
    data: &Path,
    config: Option<&Path>,
    seed: u64,
    args: &KeyArgs,
    staged: &[SigningKey],
) -> anyhow::Result<Served> {
    let exists = data.join(RUN_FILE).exists();
    if args.simulation {
        return simulation(data, config, seed);
    }
    ensure!(
        exists,
        "--data {} holds no fabric: make one with the genesis ceremony (`fabric keygen`, \
         `fabric init`, `fabric owner sign`, `fabric init --commit`; see the README), or \
         serve a simulation with --simulation",
        data.display()
    );
    let (run_file, _) = datadir::read_run_file(data)?;
    ensure!(
        run_file.keys == KeySource::Operator,
        "--data {} holds a simulation (keys derived from the public seed {}): serve it only \
         with --simulation",
        data.display(),
        run_file.seed
    );
    operator(data, run_file.world, args, staged)
}

fn simulation(data: &Path, config: Option<&Path>, seed: u64) -> anyhow::Result<Served> {
    if data.join(RUN_FILE).exists() {
        let (run_file, _) = datadir::read_run_file(data)?;
        ensure!(
            run_file.keys == KeySource::Simulation,
            "--data {} holds a fabric with operator keys: serve it with --ledger-key, \
             --router-keys and --node-keys, not --simulation",
            data.display()
        );
    }
    let (run_file, ledger) = datadir::open_or_create_served(data, config, seed)?;
    let world = run_file.spec().world;
    let sim_keys = fabric_sim::SimKeys::derive(&world, run_file.seed);
    let genesis = if ledger.is_empty() {
        fabric_sim::genesis(&world, &sim_keys)?
    } else {
        Vec::new()
    };
    let key_origin = KeyOrigin::Simulation {
        seed: run_file.seed,
    };
    check_origin(data, &ledger, key_origin)?;
    Ok(Served {
        keys: sim_keys.actor_keys(),
        world,
        ledger,
        genesis,
        key_origin,
    })
}

fn operator(
    data: &Path,
    world: World,
    args: &KeyArgs,
    staged: &[SigningKey],
) -> anyhow::Result<Served> {
    let flag = |value: &Option<PathBuf>, name: &str| -> anyhow::Result<PathBuf> {
        value
            .clone()
            .with_context(|| format!("{name} is needed to serve a fabric with operator keys"))
    };
    let ledger_key_path = flag(&args.ledger_key, "--ledger-key")?;
    let ledger = datadir::open_operator_ledger(data, &ledger_key_path)?;
    ensure!(
        !ledger.is_empty(),
        "{} has no genesis yet: commit it with `fabric init --commit --data {} --ledger-key {}`",
        data.display(),
        data.display(),
        ledger_key_path.display()
    );
    check_origin(data, &ledger, KeyOrigin::Operator)?;
    let ledger_key = keys::load_secret(&ledger_key_path)
        .with_context(|| format!("--ledger-key {}", ledger_key_path.display()))?;
    let state = current_state(&ledger)?;
    let routers = registered_keys(
        &flag(&args.router_keys, "--router-keys")?,
        "--router-keys",
        staged,
        world.shards.iter().map(|shard| {
            let registered = state.shards().iter().find(|s| s.name == shard.name);
            (shard.name.as_str(), registered.map(|s| s.router_key))
        }),
    )?;
    let nodes = registered_keys(
        &flag(&args.node_keys, "--node-keys")?,
        "--node-keys",
        staged,
        world.nodes.iter().map(|node| {
            let registered = state.nodes().iter().find(|n| n.name == node.name);
            (node.name.as_str(), registered.map(|n| n.key))
        }),
    )?;
    Ok(Served {
        keys: ActorKeys {
            ledger: ledger_key,
            routers,
            nodes,
            // Served jobs come from clients with their own keys: no intake signs for them.
            clients: Vec::new(),
            staged: staged.to_vec(),
        },
        world,
        ledger,
        genesis: Vec::new(),
        key_origin: KeyOrigin::Operator,
    })
}

/// The genesis of a non-empty log must say `expected`: a folder cannot claim to be what its
/// log is not.
fn check_origin(data: &Path, ledger: &Ledger, expected: KeyOrigin) -> anyhow::Result<()> {
    if ledger.is_empty() {
        return Ok(());
    }
    let found = datadir::genesis_key_origin(&ledger.reader())?;
    if found != expected {
        bail!(
            "--data {}: the log's genesis says its keys are {found}, its run.json says \
             {expected}",
            data.display()
        );
    }
    Ok(())
}

/// The state of the stored log, to check the keys against what it registered.
fn current_state(ledger: &Ledger) -> anyhow::Result<State> {
    let restored = fabric_actors::restore(&ledger.reader(), &ledger.ledger_key())
        .context("could not restore the state of the log")?;
    let mut state = restored.state;
    for (event, signed) in &restored.stored {
        state
            .admit(&signed.author, event)
            .map_err(|err| anyhow::anyhow!("the stored log does not fit its state: {err}"))?;
    }
    Ok(state)
}

/// The secret key of each `(name, registered key)` from `dir/<name>.key`, which must be the
/// key the log registered for it, or the key it held before a rotation to a `staged` key.
fn registered_keys<'a>(
    dir: &Path,
    flag: &str,
    staged: &[SigningKey],
    names: impl Iterator<Item = (&'a str, Option<PublicKey>)>,
) -> anyhow::Result<Vec<SigningKey>> {
    names
        .map(|(name, registered)| {
            let path = dir.join(format!("{name}.key"));
            let key = keys::load_secret(&path)
                .with_context(|| format!("{flag}: cannot load the key of {name}"))?;
            let given = PublicKey::from(&key.verifying_key());
            let Some(registered) = registered else {
                bail!("{flag}: {name} is not registered in the log");
            };
            let rotated_to_staged = staged
                .iter()
                .any(|secret| PublicKey::from(&secret.verifying_key()) == registered);
            ensure!(
                given == registered || rotated_to_staged,
                "{flag}: {} holds the key {given}, but the log registered {registered} for {name}",
                path.display()
            );
            Ok(key)
        })
        .collect()
}
