//! The data folder of a fabric (docs/FORMAT.md §10): `run.json`, which records what the
//! folder holds (a simulated run's parameters, or a served fabric's world and seed), and
//! `ledger/`, the sled folder of its log. Every command that takes `--data` opens it here.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use fabric_actors::world::World;
use fabric_ledger::Ledger;
use fabric_sim::workload::scale_nodes;
use fabric_sim::{sim_ledger_key, RunSpec};
use serde::{Deserialize, Serialize};

/// Version of `run.json`.
pub const RUN_FILE_FORMAT: u32 = 1;
/// The file that records what a data folder holds.
pub const RUN_FILE: &str = "run.json";
/// The folder of the ledger.
pub const LEDGER_DIR: &str = "ledger";

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
    pub owner_script: Vec<fabric_sim::ScriptedCommand>,
    /// Nodes that corrupt GPU outputs (`--byzantine`).
    #[serde(default)]
    pub byzantine: Vec<fabric_sim::Byzantine>,
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
pub fn write_run_file(data: &Path, run_file: &RunFile) -> anyhow::Result<()> {
    write_atomically(
        &data.join(RUN_FILE),
        serde_json::to_string_pretty(run_file)?.as_bytes(),
    )
}

/// Opens (or creates) the ledger of `data`, whose keys derive from `seed`.
pub fn open_ledger(data: &Path, seed: u64) -> anyhow::Result<Ledger> {
    let ledger_path = data.join(LEDGER_DIR);
    Ledger::open(&ledger_path, sim_ledger_key(seed))
        .with_context(|| format!("could not open the ledger in {}", ledger_path.display()))
}

/// The data folder of `fabric serve`: one it served before is resumed (its `run.json` says
/// the world and the seed); an empty or missing one gets a new fabric of `config` and `seed`
/// with no simulated workload (`jobs` = 0: jobs come from clients); without `config`, of the
/// embedded default world.
pub fn open_or_create_served(
    data: &Path,
    config: Option<&Path>,
    seed: u64,
) -> anyhow::Result<(RunFile, Ledger)> {
    if data.join(RUN_FILE).exists() {
        let (run_file, ledger) = open_run_with(data, true)?;
        ensure!(
            run_file.jobs == 0 && run_file.owner_script.is_empty(),
            "--data {} holds the simulated run {}; `fabric serve` serves only folders it \
             started (or an empty folder)",
            data.display(),
            run_file.label
        );
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
    };
    write_run_file(data, &run_file)?;
    let ledger = open_ledger(data, seed)?;
    Ok((run_file, ledger))
}

/// Reads a data folder's `run.json` and opens its ledger.
pub fn open_run(data: &Path) -> anyhow::Result<(RunFile, Ledger)> {
    open_run_with(data, false)
}

/// Reads a data folder's `run.json` and opens its ledger; with `create`, a run stopped
/// before its ledger existed gets an empty one (and starts from genesis).
pub fn open_run_with(data: &Path, create: bool) -> anyhow::Result<(RunFile, Ledger)> {
    let run_path = data.join(RUN_FILE);
    let text = fs::read_to_string(&run_path).with_context(|| {
        format!(
            "{} is not the data folder of a run: cannot read {}",
            data.display(),
            run_path.display()
        )
    })?;
    let run_file: RunFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid run file", run_path.display()))?;
    ensure!(
        run_file.format == RUN_FILE_FORMAT,
        "{}: run file format {} is not supported (this build reads format {RUN_FILE_FORMAT})",
        run_path.display(),
        run_file.format
    );
    let ledger_path = data.join(LEDGER_DIR);
    ensure!(
        create || ledger_path.is_dir(),
        "{} holds no ledger (no folder {})",
        data.display(),
        ledger_path.display()
    );
    let ledger = open_ledger(data, run_file.seed)?;
    Ok((run_file, ledger))
}

/// Makes `data` ready for a new run: created when missing; a folder holding anything is
/// refused unless `force`, and then only what a run wrote is removed.
pub fn prepare(data: &Path, force: bool) -> anyhow::Result<()> {
    if !data.exists() {
        fs::create_dir_all(data)
            .with_context(|| format!("could not create the data folder {}", data.display()))?;
        return Ok(());
    }
    ensure!(data.is_dir(), "--data {} is not a folder", data.display());
    let entries: Vec<String> = fs::read_dir(data)
        .with_context(|| format!("could not read {}", data.display()))?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("could not read {}", data.display()))?;
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
    if !force {
        bail!(
            "--data {} already holds {describe}; choose another folder, pass --force to replace it, \
             or continue an interrupted run with `fabric resume --data {}`",
            data.display(),
            data.display()
        );
    }
    let foreign: Vec<&String> = entries
        .iter()
        .filter(|name| *name != RUN_FILE && *name != LEDGER_DIR)
        .collect();
    ensure!(
        foreign.is_empty(),
        "--data {} holds files a run did not write ({}); --force only replaces a run, so remove them yourself",
        data.display(),
        foreign.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    let ledger = data.join(LEDGER_DIR);
    if ledger.exists() {
        fs::remove_dir_all(&ledger)
            .with_context(|| format!("could not remove {}", ledger.display()))?;
    }
    let run_file = data.join(RUN_FILE);
    if run_file.exists() {
        fs::remove_file(&run_file)
            .with_context(|| format!("could not remove {}", run_file.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically (the one atomic write, [`fabric_reports::fs`]).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    Ok(fabric_reports::fs::write_atomically(path, bytes)?)
}
