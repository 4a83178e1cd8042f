//! The data folder of a fabric (docs/FORMAT.md §10): `run.json`, which records what the
//! folder holds (a simulated run's parameters, or a served fabric's world and seed), and
//! `ledger/`, the sled folder of its log. Every command that takes `--data` opens it here.

use std::fs;
use std::path::{Path, PathBuf};

use fabric_actors::world::World;
use fabric_events::{KeyOrigin, PublicKey, SigningKey};
use fabric_ledger::{Ledger, LedgerReader};
use serde::{Deserialize, Serialize};

use crate::workload::scale_nodes;
use crate::{sim_ledger_key, RunSpec};

/// Version of `run.json`.
pub const RUN_FILE_FORMAT: u32 = 1;
/// The file that records what a data folder holds.
pub const RUN_FILE: &str = "run.json";
/// The folder of the ledger.
pub const LEDGER_DIR: &str = "ledger";

/// What is wrong with a data folder, its files, its log or the flags that open it; each
/// message names the folder or the file.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The folder does not hold what the command needs, or holds something else.
    #[error("{0}")]
    Refused(String),
    /// A file, folder or log could not be read, written or opened; `context` names it.
    #[error("{context}")]
    Failed {
        /// What could not be done, and where.
        context: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The world's config.
    #[error(transparent)]
    Config(#[from] fabric_config::ConfigError),
    /// A key file.
    #[error(transparent)]
    KeyFile(#[from] fabric_actors::keyfiles::KeyFileError),
    /// An atomic write.
    #[error(transparent)]
    Write(#[from] fabric_events::fs::WriteError),
    /// The actors (a simulated genesis).
    #[error(transparent)]
    Run(#[from] fabric_actors::RunError),
    /// `run.json` could not be encoded.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
}

impl DataDirError {
    pub(crate) fn failed(
        context: String,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        DataDirError::Failed {
            context,
            source: Box::new(source),
        }
    }
}

/// Refuses with `message` unless `condition` holds.
pub(crate) fn ensure(
    condition: bool,
    message: impl FnOnce() -> String,
) -> Result<(), DataDirError> {
    if condition {
        Ok(())
    } else {
        Err(DataDirError::Refused(message()))
    }
}

/// What `run.json` in a data folder records, so later commands need only `--data`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    /// Version of this file.
    pub format: u32,
    /// Name of the run (also the default report folder).
    pub label: String,
    /// Seed.
    pub seed: u64,
    /// Jobs.
    pub jobs: u64,
    /// Nodes in all.
    pub nodes: usize,
    /// The config file it was read from (`config/fabric.toml` for the embedded default
    /// world, which is where it comes from; the world itself is in `world`).
    pub config: PathBuf,
    /// The world as configured (before generated nodes are added).
    pub world: World,
    /// Owner commands submitted during the run (`--owner-script`).
    #[serde(default)]
    pub owner_script: Vec<crate::ScriptedCommand>,
    /// Nodes that corrupt GPU outputs (`--byzantine`).
    #[serde(default)]
    pub byzantine: Vec<crate::Byzantine>,
    /// Where the keys come from: derived from `seed` (a simulation, the default and absent
    /// from the file) or held by the operator and the owners (`fabric init`).
    #[serde(default, skip_serializing_if = "KeySource::is_simulation")]
    pub keys: KeySource,
}

/// Where the keys of a data folder's fabric come from (`keys` in `run.json`; its genesis
/// event says the same, and is what counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// Every key derives from the run's seed: anyone can compute them.
    #[default]
    Simulation,
    /// The operator holds the ledger, router and node keys, the owners their own.
    Operator,
}

impl KeySource {
    /// Whether the keys derive from the seed.
    pub fn is_simulation(&self) -> bool {
        *self == KeySource::Simulation
    }
}

impl RunFile {
    /// What to run: the configured world with its generated nodes.
    pub fn spec(&self) -> RunSpec {
        let mut world = self.world.clone();
        world.nodes = scale_nodes(&world, self.seed, self.nodes);
        RunSpec {
            world,
            seed: self.seed,
            jobs: self.jobs,
            append_events_max: fabric_ledger::BATCH_EVENTS_MAX,
            owner_script: self.owner_script.clone(),
            byzantine: self.byzantine.clone(),
        }
    }
}

/// Writes `run.json` into `data`.
pub fn write_run_file(data: &Path, run_file: &RunFile) -> Result<(), DataDirError> {
    Ok(fabric_events::fs::write_atomically(
        &data.join(RUN_FILE),
        serde_json::to_string_pretty(run_file)?.as_bytes(),
    )?)
}

fn could_not_open(
    ledger_path: &Path,
) -> impl FnOnce(fabric_ledger::LedgerError) -> DataDirError + '_ {
    move |err| {
        DataDirError::failed(
            format!("could not open the ledger in {}", ledger_path.display()),
            err,
        )
    }
}

/// Opens (or creates) the ledger of `data`, whose keys derive from `seed`.
pub fn open_ledger(data: &Path, seed: u64) -> Result<Ledger, DataDirError> {
    let ledger_path = data.join(LEDGER_DIR);
    Ledger::open(&ledger_path, sim_ledger_key(seed)).map_err(could_not_open(&ledger_path))
}

/// Opens the ledger of an operator fabric's `data` with the ledger key in `key_path`
/// (`--ledger-key`): it must be the key the ledger was created with.
pub fn open_operator_ledger(data: &Path, key_path: &Path) -> Result<Ledger, DataDirError> {
    let ledger_path = data.join(LEDGER_DIR);
    ensure(ledger_path.is_dir(), || {
        format!(
            "{} holds no ledger yet: the owners approve genesis-commands.json, then `fabric init \
             --commit --data {} --ledger-key FILE` writes it",
            data.display(),
            data.display()
        )
    })?;
    let key = fabric_actors::keyfiles::load_secret(key_path, "--ledger-key")?;
    let given = PublicKey::from(&key.verifying_key());
    let keys = LedgerReader::open(&ledger_path)
        .and_then(|reader| reader.ledger_keys())
        .map_err(|err| {
            DataDirError::failed(
                format!("could not read the ledger in {}", ledger_path.display()),
                err,
            )
        })?;
    // The genesis ledger key, or one the owners rotated it to.
    ensure(keys.held(&given), || {
        format!(
            "--ledger-key {} holds the key {given}, not a ledger key of {} (its genesis key is {})",
            key_path.display(),
            data.display(),
            keys.genesis()
        )
    })?;
    Ledger::open(&ledger_path, key).map_err(could_not_open(&ledger_path))
}

/// A data folder's log opened for reading: a simulation's through its writer (which repairs
/// an interrupted append first), an operator fabric's read-only, since its ledger key stays
/// with the operator.
pub enum Log {
    /// Opened with the seed's ledger key.
    Writer(Box<Ledger>),
    /// Opened read-only.
    Reader {
        /// The log.
        reader: LedgerReader,
        /// Its key.
        ledger_key: PublicKey,
        /// Entries.
        len: u64,
        /// Merkle root of the entries.
        root: fabric_events::Hash32,
    },
}

impl Log {
    /// A reader of the log.
    pub fn reader(&self) -> LedgerReader {
        match self {
            Log::Writer(ledger) => ledger.reader(),
            Log::Reader { reader, .. } => reader.clone(),
        }
    }

    /// The ledger key the folder records.
    pub fn ledger_key(&self) -> PublicKey {
        match self {
            Log::Writer(ledger) => ledger.ledger_key(),
            Log::Reader { ledger_key, .. } => *ledger_key,
        }
    }

    /// Entries.
    pub fn len(&self) -> u64 {
        match self {
            Log::Writer(ledger) => ledger.len(),
            Log::Reader { len, .. } => *len,
        }
    }

    /// Whether the log has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Merkle root.
    pub fn root(&self) -> fabric_events::Hash32 {
        match self {
            Log::Writer(ledger) => ledger.root(),
            Log::Reader { root, .. } => *root,
        }
    }
}

/// Opens an operator fabric's log read-only.
fn open_log_read_only(data: &Path) -> Result<Log, DataDirError> {
    let ledger_path = data.join(LEDGER_DIR);
    let read = || -> Result<Log, fabric_ledger::LedgerError> {
        let reader = LedgerReader::open(&ledger_path)?;
        let ledger_key = reader.ledger_key()?;
        let len = reader.len()?;
        let root = match reader.tree_head_at(len)? {
            Some(head) => head.root,
            None => fabric_ledger::merkle::root(&[]),
        };
        Ok(Log::Reader {
            reader,
            ledger_key,
            len,
            root,
        })
    };
    read().map_err(|err| {
        DataDirError::failed(
            format!("could not read the ledger in {}", ledger_path.display()),
            err,
        )
    })
}

/// The data folder of `fabric serve`: one it served before is resumed (its `run.json` says
/// the world and the seed); an empty or missing one gets a new fabric of `config` and `seed`
/// with no simulated workload (`jobs` = 0: jobs come from clients); without `config`, of the
/// embedded default world.
pub fn open_or_create_served(
    data: &Path,
    config: Option<&Path>,
    seed: u64,
) -> Result<(RunFile, Ledger), DataDirError> {
    if data.join(RUN_FILE).exists() {
        let (run_file, ledger) = open_run_with(data, true)?;
        ensure(
            run_file.jobs == 0 && run_file.owner_script.is_empty(),
            || {
                format!(
                    "--data {} holds the simulated run {}; `fabric serve` serves only folders it \
                     started (or an empty folder)",
                    data.display(),
                    run_file.label
                )
            },
        )?;
        return Ok((run_file, ledger));
    }
    prepare(data, false)?;
    let world = fabric_config::load(config)?;
    let run_file = RunFile {
        format: RUN_FILE_FORMAT,
        label: format!("serve-seed{seed}"),
        seed,
        jobs: 0,
        nodes: world.nodes.len(),
        config: fabric_config::origin(config).to_path_buf(),
        world,
        owner_script: Vec::new(),
        byzantine: Vec::new(),
        keys: KeySource::Simulation,
    };
    write_run_file(data, &run_file)?;
    let ledger = open_ledger(data, seed)?;
    Ok((run_file, ledger))
}

/// Reads a data folder's `run.json` and opens its log for reading.
pub fn open_run(data: &Path) -> Result<(RunFile, Log), DataDirError> {
    let (run_file, ledger_path) = read_run_file(data)?;
    ensure(ledger_path.is_dir(), || {
        format!(
            "{} holds no ledger (no folder {})",
            data.display(),
            ledger_path.display()
        )
    })?;
    let log = match run_file.keys {
        KeySource::Simulation => Log::Writer(Box::new(open_ledger(data, run_file.seed)?)),
        KeySource::Operator => open_log_read_only(data)?,
    };
    Ok((run_file, log))
}

/// Reads a data folder's `run.json` and opens its ledger to write: a simulation's with the
/// seed's ledger key, an operator fabric's with the key in `ledger_key` (`--ledger-key`).
pub fn open_run_writer(
    data: &Path,
    ledger_key: Option<&Path>,
) -> Result<(RunFile, Ledger, SigningKey), DataDirError> {
    let (run_file, _) = read_run_file(data)?;
    match (run_file.keys, ledger_key) {
        (KeySource::Simulation, None) => {
            let (run_file, ledger) = open_run_with(data, false)?;
            let key = sim_ledger_key(run_file.seed);
            Ok((run_file, ledger, key))
        }
        (KeySource::Simulation, Some(_)) => Err(DataDirError::Refused(format!(
            "--data {} holds a simulation, whose ledger key derives from its seed: leave out \
             --ledger-key",
            data.display()
        ))),
        (KeySource::Operator, Some(path)) => {
            let ledger = open_operator_ledger(data, path)?;
            let key = fabric_events::keys::load_secret(path).map_err(|err| {
                DataDirError::failed(format!("--ledger-key {}", path.display()), err)
            })?;
            Ok((run_file, ledger, key))
        }
        (KeySource::Operator, None) => Err(DataDirError::Refused(format!(
            "--data {} holds a fabric with operator keys: give its --ledger-key FILE",
            data.display()
        ))),
    }
}

/// Reads and checks a data folder's `run.json`; also the path of its ledger folder.
pub fn read_run_file(data: &Path) -> Result<(RunFile, PathBuf), DataDirError> {
    let run_path = data.join(RUN_FILE);
    let text = fs::read_to_string(&run_path).map_err(|err| {
        DataDirError::failed(
            format!(
                "{} is not the data folder of a run: cannot read {}",
                data.display(),
                run_path.display()
            ),
            err,
        )
    })?;
    let run_file: RunFile = serde_json::from_str(&text).map_err(|err| {
        DataDirError::failed(
            format!("{} is not a valid run file", run_path.display()),
            err,
        )
    })?;
    ensure(run_file.format == RUN_FILE_FORMAT, || {
        format!(
            "{}: run file format {} is not supported (this build reads format {RUN_FILE_FORMAT})",
            run_path.display(),
            run_file.format
        )
    })?;
    Ok((run_file, data.join(LEDGER_DIR)))
}

/// Reads a simulation's `run.json` and opens its ledger; with `create`, a run stopped before
/// its ledger existed gets an empty one (and starts from genesis).
pub fn open_run_with(data: &Path, create: bool) -> Result<(RunFile, Ledger), DataDirError> {
    let (run_file, ledger_path) = read_run_file(data)?;
    ensure(run_file.keys == KeySource::Simulation, || {
        format!(
            "--data {} holds a fabric with operator keys, not a simulated run",
            data.display()
        )
    })?;
    ensure(create || ledger_path.is_dir(), || {
        format!(
            "{} holds no ledger (no folder {})",
            data.display(),
            ledger_path.display()
        )
    })?;
    let ledger = open_ledger(data, run_file.seed)?;
    Ok((run_file, ledger))
}

/// Makes `data` ready for a new run: created when missing; a folder holding anything is
/// refused unless `force`, and then only what a run wrote is removed.
pub fn prepare(data: &Path, force: bool) -> Result<(), DataDirError> {
    if !data.exists() {
        fs::create_dir_all(data).map_err(|err| {
            DataDirError::failed(
                format!("could not create the data folder {}", data.display()),
                err,
            )
        })?;
        return Ok(());
    }
    ensure(data.is_dir(), || {
        format!("--data {} is not a folder", data.display())
    })?;
    let could_not_read =
        |err| DataDirError::failed(format!("could not read {}", data.display()), err);
    let entries: Vec<String> = fs::read_dir(data)
        .map_err(could_not_read)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(could_not_read)?;
    if entries.is_empty() {
        return Ok(());
    }
    let describe = match fs::read_to_string(data.join(RUN_FILE))
        .ok()
        .and_then(|text| serde_json::from_str::<RunFile>(&text).ok())
    {
        Some(previous) => format!("the run {}", previous.label),
        None => "files that are not a Fabric run".to_owned(),
    };
    ensure(force, || {
        format!(
            "--data {} already holds {describe}; choose another folder, pass --force to replace it, \
             or continue an interrupted run with `fabric resume --data {}`",
            data.display(),
            data.display()
        )
    })?;
    let foreign: Vec<&String> = entries
        .iter()
        .filter(|name| *name != RUN_FILE && *name != LEDGER_DIR)
        .collect();
    ensure(foreign.is_empty(), || {
        format!(
            "--data {} holds files a run did not write ({}); --force only replaces a run, so remove them yourself",
            data.display(),
            foreign.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let could_not_remove = |path: &Path, err: std::io::Error| {
        DataDirError::failed(format!("could not remove {}", path.display()), err)
    };
    let ledger = data.join(LEDGER_DIR);
    if ledger.exists() {
        fs::remove_dir_all(&ledger).map_err(|err| could_not_remove(&ledger, err))?;
    }
    let run_file = data.join(RUN_FILE);
    if run_file.exists() {
        fs::remove_file(&run_file).map_err(|err| could_not_remove(&run_file, err))?;
    }
    Ok(())
}

/// Where the keys of a stored log come from, as its genesis (seq 0) says.
pub fn genesis_key_origin(reader: &LedgerReader) -> Result<KeyOrigin, DataDirError> {
    let entry = reader.get(0).map_err(|err| {
        DataDirError::failed(
            "could not read the genesis (seq 0) of the log".to_owned(),
            err,
        )
    })?;
    let event = fabric_audit::Replay::decode(&entry).map_err(|err| {
        DataDirError::failed(
            "the genesis (seq 0) of the log does not decode".to_owned(),
            err,
        )
    })?;
    match event.body {
        fabric_events::Body::FabricGenesis(genesis) => Ok(genesis.key_origin),
        _ => Err(DataDirError::Refused(format!(
            "seq 0 of the log is a {}, not its fabric_genesis",
            event.kind().as_str()
        ))),
    }
}

/// Writes the owner keys of the simulation in `data` into `out` as `owner-<i>.key` (and
/// `.pub`), replacing key files already there only with `force`; the keys derive from the
/// seed, which only a simulation's genesis says.
pub fn write_sim_owner_keys(data: &Path, out: &Path, force: bool) -> Result<RunFile, DataDirError> {
    let (run_file, log) = open_run(data)?;
    // The log's genesis decides, whatever run.json says: only a simulation's owner keys
    // derive from its seed.
    if !log.is_empty() {
        let origin = genesis_key_origin(&log.reader())?;
        ensure(
            origin
                == (KeyOrigin::Simulation {
                    seed: run_file.seed,
                }),
            || {
                format!(
                    "--data {}: the fabric's keys are {origin}; its owners' keys derive from no \
                     seed and are held by the owners alone",
                    data.display()
                )
            },
        )?;
    }
    ensure(run_file.keys.is_simulation(), || {
        format!(
            "--data {}: a fabric with operator keys; its owners' keys derive from no seed and \
             are held by the owners alone",
            data.display()
        )
    })?;
    fs::create_dir_all(out)
        .map_err(|err| DataDirError::failed(format!("could not create {}", out.display()), err))?;
    for index in 0..run_file.world.owners.count {
        let key = crate::sim_owner_key(run_file.seed, index);
        let path = out.join(format!("owner-{index}.key"));
        fabric_events::keys::save_secret(&path, &key, force).map_err(|err| {
            DataDirError::failed(format!("could not write {}", path.display()), err)
        })?;
        fabric_events::keys::save_public(
            &fabric_events::keys::public_path(&path),
            &key.verifying_key(),
        )
        .map_err(|err| {
            DataDirError::failed(
                format!("could not write the public key of {}", path.display()),
                err,
            )
        })?;
    }
    Ok(run_file)
}
