//! Which fabric `fabric serve` serves, and with which keys: a fabric made by the ceremony
//! (`fabric init`), whose ledger and router secrets the operator hands in as files (its nodes
//! are node agents with keys of their own), or
//! with `--simulation` a simulated fabric whose keys derive from a public seed. Every key
//! given is checked against the key the log registered, and a simulation is never served
//! without `--simulation`.

use std::path::{Path, PathBuf};

use fabric_actors::gate::Attempt;
use fabric_actors::keyfiles;
use fabric_actors::world::World;
use fabric_actors::ActorKeys;
use fabric_events::{KeyOrigin, SigningKey};
use fabric_ledger::Ledger;

use crate::datadir::{self, ensure, DataDirError, KeySource, RUN_FILE};

/// The keys `fabric serve` is given.
#[derive(Clone, Debug, Default)]
pub struct KeyFiles {
    /// Serve a simulation: keys derived from the public seed.
    pub simulation: bool,
    /// The ledger's secret key file (`--ledger-key`).
    pub ledger_key: Option<PathBuf>,
    /// The folder of the routers' secret keys, `<shard>.key` (`--router-keys`).
    pub router_keys: Option<PathBuf>,
    /// A replica of a replicated fabric (`--replicated`): `ledger_key` is the replica's own
    /// sequencer key, which signs once it takes the log over.
    pub replica: bool,
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

/// Opens the fabric of `data` with the keys of `files`; a new simulation of `config` and
/// `seed` when `data` is empty and `--simulation` is given.
pub fn open(
    data: &Path,
    config: Option<&Path>,
    seed: u64,
    files: &KeyFiles,
    staged: &[SigningKey],
) -> Result<Served, DataDirError> {
    let exists = data.join(RUN_FILE).exists();
    if files.simulation {
        return simulation(data, config, seed);
    }
    ensure(exists, || {
        format!(
            "--data {} holds no fabric: make one with the genesis ceremony (`fabric keygen`, \
             `fabric init`, `fabric owner sign`, `fabric init --commit`; see the README), or \
             serve a simulation with --simulation",
            data.display()
        )
    })?;
    let (run_file, _) = datadir::read_run_file(data)?;
    ensure(run_file.keys == KeySource::Operator, || {
        format!(
            "--data {} holds a simulation (keys derived from the public seed {}): serve it only \
             with --simulation",
            data.display(),
            run_file.seed
        )
    })?;
    operator(data, run_file.world, files, staged)
}

fn simulation(data: &Path, config: Option<&Path>, seed: u64) -> Result<Served, DataDirError> {
    if data.join(RUN_FILE).exists() {
        let (run_file, _) = datadir::read_run_file(data)?;
        ensure(run_file.keys == KeySource::Simulation, || {
            format!(
                "--data {} holds a fabric with operator keys: serve it with --ledger-key \
                 and --router-keys, not --simulation",
                data.display()
            )
        })?;
    }
    let (run_file, ledger) = datadir::open_or_create_served(data, config, seed)?;
    let world = run_file.spec().world;
    let sim_keys = crate::SimKeys::derive(&world, run_file.seed);
    let genesis = if ledger.is_empty() {
        crate::genesis(&world, &sim_keys)?
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
    files: &KeyFiles,
    staged: &[SigningKey],
) -> Result<Served, DataDirError> {
    let flag = |value: &Option<PathBuf>, name: &str| -> Result<PathBuf, DataDirError> {
        value.clone().ok_or_else(|| {
            DataDirError::Refused(format!(
                "{name} is needed to serve a fabric with operator keys"
            ))
        })
    };
    let ledger_key_path = flag(&files.ledger_key, "--ledger-key")?;
    let ledger = if files.replica {
        replica_ledger(data, &ledger_key_path)?
    } else {
        datadir::open_operator_ledger(data, &ledger_key_path)?
    };
    ensure(!ledger.is_empty(), || {
        format!(
            "{} has no genesis yet: commit it with `fabric init --commit --data {} --ledger-key {}`",
            data.display(),
            data.display(),
            ledger_key_path.display()
        )
    })?;
    check_origin(data, &ledger, KeyOrigin::Operator)?;
    let ledger_key = fabric_events::keys::load_secret(&ledger_key_path).map_err(|err| {
        DataDirError::failed(format!("--ledger-key {}", ledger_key_path.display()), err)
    })?;
    let state = keyfiles::current_state(&ledger)?;
    let routers = keyfiles::registered_router_keys(
        &world,
        &state,
        &flag(&files.router_keys, "--router-keys")?,
        staged,
    )?;
    Ok(Served {
        keys: ActorKeys {
            ledger: ledger_key,
            routers,
            // The nodes are node agents on their own machines (`fabric node`), each with its
            // own key: the server holds none of their secrets.
            nodes: Vec::new(),
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

/// What a follower of a replicated log serves: its data folder's world and replica ledger.
pub struct Replica {
    /// The world, as the data folder records it.
    pub world: World,
    /// The ledger, opened as a replica (no secret: it stores what its sequencer signed).
    pub ledger: Ledger,
    /// Where the fabric's keys come from.
    pub key_origin: KeyOrigin,
}

/// Opens the fabric of `data` as a replica that follows a replicated log (`fabric serve
/// --follow`): the folder must hold the fabric already (a copy of the sequencer's folder, made
/// at any time after its genesis), whose genesis key is the root of trust of what it copies.
pub fn open_replica(data: &Path) -> Result<Replica, DataDirError> {
    ensure(data.join(RUN_FILE).exists(), || {
        format!(
            "--data {} holds no fabric: a replica starts from a copy of the fabric's data \
             folder (after its genesis)",
            data.display()
        )
    })?;
    let (run_file, ledger_path) = datadir::read_run_file(data)?;
    let ledger = Ledger::open_replica(&ledger_path).map_err(|err| {
        DataDirError::failed(format!("could not open {}", ledger_path.display()), err)
    })?;
    let key_origin = datadir::genesis_key_origin(&ledger.reader())?;
    let expected = match run_file.keys {
        KeySource::Operator => KeyOrigin::Operator,
        KeySource::Simulation => KeyOrigin::Simulation {
            seed: run_file.seed,
        },
    };
    check_origin(data, &ledger, expected)?;
    Ok(Replica {
        world: run_file.spec().world,
        ledger,
        key_origin,
    })
}

/// A replica's ledger: opened as a replica (the key in force may be another replica's), and
/// given the replica's own sequencer key, which must be one the log registered.
fn replica_ledger(data: &Path, key_path: &Path) -> Result<Ledger, DataDirError> {
    let ledger_path = data.join(datadir::LEDGER_DIR);
    let mut ledger = Ledger::open_replica(&ledger_path).map_err(|err| {
        DataDirError::failed(format!("could not open {}", ledger_path.display()), err)
    })?;
    let secret = fabric_events::keys::load_secret(key_path)
        .map_err(|err| DataDirError::failed(format!("--ledger-key {}", key_path.display()), err))?;
    let own = fabric_events::PublicKey::from(&secret.verifying_key());
    let state = keyfiles::current_state(&ledger)?;
    let sequencer = state.authority().key(&own).is_some_and(|record| {
        !record.retired
            && matches!(
                record.holder,
                fabric_projections::state::Holder::Sequencer
                    | fabric_projections::state::Holder::Ledger
            )
    });
    ensure(sequencer, || {
        format!(
            "--ledger-key {}: key {own} is no sequencer of this fabric: the owners register a \
             replica's key with the owner command `register-sequencer`",
            key_path.display()
        )
    })?;
    ledger.hold(secret);
    Ok(ledger)
}

/// The genesis of a non-empty log must say `expected`: a folder cannot claim to be what its
/// log is not.
fn check_origin(data: &Path, ledger: &Ledger, expected: KeyOrigin) -> Result<(), DataDirError> {
    if ledger.is_empty() {
        return Ok(());
    }
    let found = datadir::genesis_key_origin(&ledger.reader())?;
    ensure(found == expected, || {
        format!(
            "--data {}: the log's genesis says its keys are {found}, its run.json says \
             {expected}",
            data.display()
        )
    })
}
