//! `fabric node`: this machine's nodes of a served fabric (`fabric_node::agent`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use fabric_events::{Body, PublicKey, SigningKey};
use fabric_node::agent::{self, AgentConfig};
use fabric_node::sandbox::{self, SandboxLimits, SandboxMode};

/// Arguments of `fabric node`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The NATS server the fabric's server listens on (`fabric serve --nats`)
    #[arg(long, value_name = "URL")]
    nats: String,
    /// The node's NATS user (its permissions reach only its own subjects)
    #[arg(long, value_name = "USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// The NATS user's password
    #[arg(long, value_name = "PASSWORD", requires = "nats_user")]
    nats_password: Option<String>,
    /// The fabric's genesis.json (from its operator): the ledger key every tree head must be
    /// signed by
    #[arg(long, value_name = "FILE")]
    genesis: PathBuf,
    /// A replicated fabric's sequencer key (a .pub file of `fabric keygen`, or hex): tree
    /// heads it signs are trusted too, once it has taken the log over (repeatable)
    #[arg(long = "sequencer-key", value_name = "KEY")]
    sequencer_keys: Vec<String>,
    /// The node's secret key (mode 0600; `fabric keygen`); its public key is the one the
    /// owners registered
    #[arg(
        long,
        value_name = "FILE",
        requires = "name",
        conflicts_with = "key_dir"
    )]
    key: Option<PathBuf>,
    /// The node's name, as registered
    #[arg(long, value_name = "NODE", requires = "key")]
    name: Option<String>,
    /// Run one node per `<node>.key` file of this folder (the name is the file's)
    #[arg(long, value_name = "DIR", required_unless_present = "key")]
    key_dir: Option<PathBuf>,
    /// With --key-dir: only the first N key files, by name
    #[arg(long, value_name = "N", requires = "key_dir")]
    count: Option<usize>,
    /// Executor processes the nodes share (jobs run at once on this machine)
    #[arg(long, value_name = "N", default_value_t = 2)]
    executors: usize,
    /// Memory a job may use, in MiB
    #[arg(long, value_name = "MIB", default_value_t = sandbox::JOB_MEMORY_BYTES_DEFAULT >> 20)]
    job_memory_mib: u64,
    /// CPU time a job may use, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = sandbox::JOB_CPU_MS_DEFAULT)]
    job_cpu_ms: u64,
    /// Wall-clock time a job may take, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = sandbox::JOB_WALL_MS_DEFAULT)]
    job_wall_ms: u64,
    /// Run jobs without the sandbox (no network namespace, no empty root): only where the
    /// host cannot give one, and only for jobs you trust
    #[arg(long)]
    no_sandbox: bool,
    /// Run the kernels on the GPU (`FABRIC_GPU` picks the adapter) instead of the CPU
    /// references
    #[arg(long)]
    gpu: bool,
    /// For tests: falsify this share (0 to 1) of the outputs
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    byzantine: f64,
}

/// `fabric node`.
pub fn run(args: &NodeArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.byzantine) {
        bail!(
            "--byzantine must be between 0 and 1, not {}",
            args.byzantine
        );
    }
    let mut ledger_keys = vec![ledger_key_of(&args.genesis)?];
    for key in &args.sequencer_keys {
        ledger_keys.push(public_key(key)?);
    }
    let nodes = node_keys(args)?;
    let mode = if args.no_sandbox {
        eprintln!("warning: --no-sandbox: jobs run with this machine's network and files");
        SandboxMode::Disabled
    } else {
        sandbox::probe().context(
            "this host cannot sandbox jobs (run as root, or allow user namespaces); \
             --no-sandbox runs them unconfined",
        )?;
        SandboxMode::Enforced
    };
    let config = AgentConfig {
        nats_url: args.nats.clone(),
        nats_user: args.nats_user.clone().zip(args.nats_password.clone()),
        ledger_keys,
        nodes,
        executors: args.executors.max(1),
        limits: SandboxLimits {
            memory_bytes: args.job_memory_mib << 20,
            cpu_ms_per_job: args.job_cpu_ms,
            wall_ms_per_job: args.job_wall_ms,
        },
        sandbox: mode,
        gpu: args.gpu,
        byzantine_ppm: (args.byzantine * 1_000_000.0).round() as u32,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the node's runtime")?;
    // The handlers are in place before the node says it is ready: a SIGTERM right after the
    // word is a clean stop, not the default death.
    let stopped = {
        let _entered = runtime.enter();
        stop_signals()?
    };
    let report = runtime.block_on(agent::run(config, stopped, |count| {
        println!("node ready: {count} nodes");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }))?;
    println!(
        "node stopped: {} completed, {} failed, {} receipts acknowledged, {} orders refused, {} \
         jobs left to be requeued",
        report.completed,
        report.failed,
        report.receipts_acknowledged,
        report.refused_orders,
        report.abandoned
    );
    Ok(())
}

/// Registers SIGTERM and SIGINT handlers now (inside a runtime): the future resolves on either.
fn stop_signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("could not handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("could not handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// The ledger key the genesis names (its signature by that key checked).
/// A public key in hex, or the `.pub` file of `fabric keygen`.
fn public_key(text: &str) -> anyhow::Result<PublicKey> {
    if let Ok(key) = PublicKey::from_hex(text) {
        return Ok(key);
    }
    let key = fabric_events::keys::load_public(Path::new(text))
        .with_context(|| format!("--sequencer-key {text}: neither a key in hex nor a key file"))?;
    Ok(PublicKey::from(&key))
}

fn ledger_key_of(path: &Path) -> anyhow::Result<PublicKey> {
    let (_, event) = fabric_api::genesis::GenesisFile::load(path)
        .with_context(|| format!("--genesis {}", path.display()))?;
    match event.body {
        Body::FabricGenesis(genesis) => Ok(genesis.ledger_key),
        _ => bail!("--genesis {} holds no fabric_genesis", path.display()),
    }
}

/// The nodes to run: `--key` and `--name`, or the key files of `--key-dir`.
fn node_keys(args: &NodeArgs) -> anyhow::Result<Vec<(String, SigningKey)>> {
    let load = |path: &Path| {
        fabric_events::keys::load_secret(path).with_context(|| format!("{}", path.display()))
    };
    if let (Some(key), Some(name)) = (&args.key, &args.name) {
        return Ok(vec![(name.clone(), load(key)?)]);
    }
    let Some(dir) = &args.key_dir else {
        bail!("give --key and --name, or --key-dir");
    };
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("--key-dir {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let name = path.file_name()?.to_str()?.strip_suffix(".key")?.to_owned();
            Some((name, path))
        })
        .collect();
    files.sort();
    if let Some(count) = args.count {
        if count > files.len() {
            bail!(
                "--count {count}: --key-dir {} has only {} key files",
                dir.display(),
                files.len()
            );
        }
        files.truncate(count);
    }
    if files.is_empty() {
        bail!("--key-dir {} has no <node>.key file", dir.display());
    }
    files
        .iter()
        .map(|(name, path)| Ok((name.clone(), load(path)?)))
        .collect()
}
