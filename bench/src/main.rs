//! `fabric-bench` (also run as `fabric bench`): Fabric measured against the physical limits of
//! this machine and against the alternatives a user would pick, side by side in the same run.
//!
//! Every figure is printed next to what it is compared with: a bound measured in the same run
//! (`limits`: the costs of ed25519, BLAKE3 and sled here, now), a peer measured on the same
//! events (`peers`: PostgreSQL and NATS JetStream, started by the bench on loopback), or a
//! target. So a busy machine moves a figure and its bound together, and every ratio is honest.
//!
//! Suites, in the order they run:
//! - [`limits`]: the costs that bound us, on one core and on all cores, and the bounds of a
//!   fully signed pipeline and of a verify-only audit derived from them.
//! - [`ingest`]: signed events appended per second (pre-signed, and signed in the pipeline).
//! - [`history`]: `audit` (events/s of `fabric audit` on a large log) and `restore` (long
//!   history vs. short with the same tail).
//! - [`route`]: router decision latency at 100, 1k and 10k nodes; `scale`: 1M jobs on 10k nodes.
//! - [`peers`]: the same signed-event append workload on PostgreSQL and JetStream.
//! - [`gpu`], [`nats`]: kernels vs. their CPU references; `fabric run --nats` vs. without.
//! - [`serve`]: `POST /v0/jobs` against a `fabric serve` child process on loopback (the
//!   `fabric` executable next to this one).
//! - [`celery`]: the model jobs (`encode_state`, `score_sequence`, `predict_next_state`) on
//!   Celery 5 with Redis, started here on loopback, vs. the same jobs on the CPU reference.
//!
//! A separate program so that the `fabric` binary carries none of the peers' clients: `fabric
//! bench ARGS...` runs the `fabric-bench` next to it with the same arguments.

mod celery;
mod failover;
mod gpu;
mod history;
mod ingest;
mod limits;
mod model_jobs;
mod nats;
mod nodes;
mod peers;
mod route;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Parser, ValueEnum};
use fabric_events::{derive_signing_key, Event, JobSubmitted, Role, SignedEvent, SigningKey};
use fabric_ledger::BATCH_EVENTS_MAX;
use rayon::prelude::*;

use serde::Serialize;

/// Seed of the bench's keys and events, so every run measures the same bytes.
const BENCH_SEED: u64 = 0xFAB_2026;
/// Distinct authors of the bench's events (like a fleet of nodes).
const BENCH_AUTHORS: usize = 64;
/// Ratio of measured throughput to its bound that the ledger aims for.
const TARGET_RATIO: f64 = 0.8;

/// Measure Fabric against the limits of this machine and against PostgreSQL and JetStream
#[derive(Parser)]
#[command(name = "fabric-bench")]
struct BenchArgs {
    /// Suites to run; all when none is named (`scale` is left out by --quick unless named)
    #[arg(value_enum)]
    suites: Vec<Suite>,
    /// Fewer events and one repetition instead of the median of three
    #[arg(long)]
    quick: bool,
    /// Print one JSON object instead of tables
    #[arg(long)]
    json: bool,
    /// Events per measurement of limits, ingest and peers [default: 200000, 40000 with --quick]
    #[arg(long, value_name = "N")]
    events: Option<usize>,
    /// Events per append (one group commit each)
    #[arg(long, value_name = "N", default_value_t = 8192)]
    batch: usize,
    /// Folder for the bench's temporary ledgers and servers [default: the system's temporary
    /// folder]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The world of the run-based suites (audit, restore, route, scale, nats) [default: the
    /// built-in world, config/fabric.toml of the source]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Jobs of the run-based suites. scale [default: 1000000, 100000 with --quick]; audit and
    /// restore: the long history, the short one has a tenth [default: 200000, 20000 with
    /// --quick]; route, per node count [default: 50000, 10000 with --quick]; nats [default:
    /// 100000, 20000 with --quick]
    #[arg(long, value_name = "N")]
    jobs: Option<u64>,
    /// The NATS server of the nats and peers suites [default: a nats-server the bench starts on
    /// a free loopback port, with its store in the bench's temporary folder]
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Nodes in all [default: 10000 for scale; the configured ones for audit, restore and nats,
    /// as `fabric run` does; route always measures 100, 1000 and 10000]
    #[arg(long, value_name = "N")]
    nodes: Option<usize>,
    /// Model jobs of suite celery [default: 3000, 600 with --quick]
    #[arg(long, value_name = "N")]
    model_jobs: Option<usize>,
    /// Worker processes of suites celery (Celery's prefork processes) and nodes (`fabric node`
    /// processes)
    #[arg(long, value_name = "K", default_value_t = 2)]
    workers: usize,
    /// A Python with celery, redis and numpy for suite celery [default: a virtual environment
    /// the bench makes with pip in the user's cache folder, once]
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Suite {
    /// ed25519, BLAKE3 and sled on one core and on all cores; the bounds derived from them
    Limits,
    /// Signed events appended per second (pre-signed and signed in the pipeline) vs. the bound
    #[value(alias = "ledger")]
    Ingest,
    /// `fabric audit` events/s on a large log vs. batch verification alone
    Audit,
    /// Router decision latency p50/p99/max at 100, 1k and 10k nodes
    Route,
    /// Restore time after a long history vs. a short one with the same tail
    Restore,
    /// 1M jobs on 10k nodes end to end (left out by --quick unless named)
    #[value(alias = "planetary")]
    Scale,
    /// The same signed appends on PostgreSQL and NATS JetStream, started here on loopback
    Peers,
    /// Each GPU kernel on the adapter vs. its CPU reference on every core
    Gpu,
    /// `fabric run --nats` vs. without: throughput, and the lag from append to JetStream ack
    Nats,
    /// `fabric serve`: POST /v0/jobs from many connections, accepted jobs/s and p99 latency
    Serve,
    /// The model jobs on Celery 5 with Redis (started here on loopback) vs. the CPU reference
    Celery,
    /// The model jobs end to end through `fabric node` processes over NATS vs. Celery+Redis
    /// and the signature bound
    Nodes,
    /// Sequencer failover of a replicated pair on a 3-server NATS cluster (p50/p99 over
    /// repeated kills), and its jobs/s vs. a single host
    Failover,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Limits => "limits",
            Suite::Ingest => "ingest",
            Suite::Audit => "audit",
            Suite::Route => "route",
            Suite::Restore => "restore",
            Suite::Scale => "scale",
            Suite::Peers => "peers",
            Suite::Gpu => "gpu",
            Suite::Nats => "nats",
            Suite::Serve => "serve",
            Suite::Celery => "celery",
            Suite::Nodes => "nodes",
            Suite::Failover => "failover",
        }
    }
}

/// What a figure is compared with.
#[derive(Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
enum Against {
    /// A bound of this machine measured in the same run.
    Bound,
    /// `cores` times the same cost measured on one core: ratio = parallel efficiency.
    LinearScaling,
    /// The same workload on another system, measured in the same run: ratio = Fabric / peer.
    Peer,
    /// A fixed target of the project.
    Target,
    /// Something else measured in the same run, named in `what`.
    Baseline,
}

impl Against {
    fn label(self) -> &'static str {
        match self {
            Against::Bound => "bound",
            Against::LinearScaling => "linear",
            Against::Peer => "peer",
            Against::Target => "target",
            Against::Baseline => "baseline",
        }
    }
}

/// One row of a suite's table.
#[derive(Serialize)]
struct Figure {
    figure: String,
    value: f64,
    unit: &'static str,
    /// What `value` is compared with, in the same unit.
    bound: f64,
    against: Against,
    /// `value / bound`.
    ratio: f64,
    what: String,
}

impl Figure {
    fn new(
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        (against, bound): (Against, f64),
        what: impl Into<String>,
    ) -> Self {
        Self {
            figure: figure.into(),
            value,
            unit,
            bound,
            against,
            ratio: value / bound,
            what: what.into(),
        }
    }
}

/// "met" or "MISSED", for the `what` of a figure with a target.
fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

#[derive(Serialize)]
struct SuiteReport {
    suite: &'static str,
    /// Events (or, for gpu, the problem size) of the suite's measurements.
    events: usize,
    batch_events: usize,
    repetitions: usize,
    /// The GPU adapter the figures were measured on.
    #[serde(skip_serializing_if = "Option::is_none")]
    adapter: Option<String>,
    /// Lines printed above the suite's table (sizes, versions of the peers).
    notes: Vec<String>,
    figures: Vec<Figure>,
}

/// A suite left out of a run of every suite, and why.
#[derive(Serialize)]
struct Skipped {
    suite: Suite,
    why: String,
}

#[derive(Serialize)]
struct Report {
    nproc: usize,
    quick: bool,
    /// Suites left out of a run of every suite: scale by --quick, gpu without an adapter (unless
    /// FABRIC_GPU=require). A suite named on the command line always runs or fails.
    skipped: Vec<Skipped>,
    suites: Vec<SuiteReport>,
}

/// State shared by the suites of one `fabric bench`: what one measures, another reuses.
struct Bench<'a> {
    args: &'a BenchArgs,
    limits: Option<limits::Limits>,
    histories: Option<history::Histories>,
    celery: Option<celery::PeerMeasure>,
}

impl Bench<'_> {
    fn repetitions(&self) -> usize {
        if self.args.quick {
            1
        } else {
            3
        }
    }

    /// Events per measurement of limits, ingest and peers.
    fn events(&self) -> usize {
        self.args
            .events
            .unwrap_or(if self.args.quick { 40_000 } else { 200_000 })
            .max(1)
    }

    /// The costs of this machine, measured on first use.
    fn limits(&mut self) -> anyhow::Result<&limits::Limits> {
        if self.limits.is_none() {
            self.limits = Some(limits::Limits::measure(self)?);
        }
        self.limits
            .as_ref()
            .context("the limits were just measured")
    }

    /// Model jobs of suite celery.
    fn model_jobs(&self) -> usize {
        self.args
            .model_jobs
            .unwrap_or(if self.args.quick { 600 } else { 3000 })
            .max(1)
    }

    /// Worker processes of suite celery.
    fn workers(&self) -> usize {
        self.args.workers.max(1)
    }

    /// The Celery peer on the model jobs, measured on first use.
    fn celery(&mut self) -> anyhow::Result<&celery::PeerMeasure> {
        if self.celery.is_none() {
            self.celery = Some(celery::PeerMeasure::measure(self, self.model_jobs())?);
        }
        self.celery
            .as_ref()
            .context("the Celery peer was just measured")
    }

    /// The long and short histories of audit and restore, run on first use.
    fn histories(&mut self) -> anyhow::Result<&history::Histories> {
        if self.histories.is_none() {
            self.histories = Some(history::Histories::run(self.args)?);
        }
        self.histories
            .as_ref()
            .context("the histories were just run")
    }
}

fn main() -> ExitCode {
    match run_suites(&BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the asked suites and prints their tables (or JSON).
fn run_suites(args: &BenchArgs) -> anyhow::Result<()> {
    ensure!(args.batch >= 1, "--batch must be at least 1");
    ensure!(
        args.batch <= BATCH_EVENTS_MAX,
        "--batch {} is over the ledger's limit of {BATCH_EVENTS_MAX} events per append",
        args.batch
    );
    let mut skipped = Vec::new();
    let suites = if args.suites.is_empty() {
        let mut suites = Vec::new();
        for suite in Suite::value_variants() {
            let why = match suite {
                Suite::Scale if args.quick => Some("left out by --quick".to_owned()),
                Suite::Gpu if std::env::var("FABRIC_GPU").as_deref() != Ok("require") => {
                    gpu::unavailable()?
                }
                _ => None,
            };
            match why {
                Some(why) => skipped.push(Skipped { suite: *suite, why }),
                None => suites.push(*suite),
            }
        }
        suites
    } else {
        args.suites.clone()
    };
    let mut bench = Bench {
        args,
        limits: None,
        histories: None,
        celery: None,
    };
    let mut report = Report {
        nproc: rayon::current_num_threads(),
        quick: args.quick,
        skipped,
        suites: Vec::new(),
    };
    for suite in suites {
        let result = match suite {
            Suite::Limits => limits::suite(&mut bench),
            Suite::Ingest => ingest::suite(&mut bench),
            Suite::Audit => history::audit_suite(&mut bench),
            Suite::Route => route::route_suite(&bench),
            Suite::Restore => history::restore_suite(&mut bench),
            Suite::Scale => route::scale_suite(&mut bench),
            Suite::Peers => peers::suite(&mut bench),
            Suite::Gpu => gpu::suite(&bench),
            Suite::Nats => nats::suite(&bench),
            Suite::Serve => serve::suite(&mut bench),
            Suite::Celery => celery::suite(&mut bench),
            Suite::Nodes => nodes::suite(&mut bench),
            Suite::Failover => failover::suite(&mut bench),
        }
        .with_context(|| format!("bench suite {} failed", suite.name()))?;
        if !args.json {
            print_table(&result);
        }
        report.suites.push(result);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for skipped in &report.skipped {
            println!(
                "suite {} not run: {} (name it to run it anyway)",
                skipped.suite.name(),
                skipped.why
            );
        }
    }
    Ok(())
}

fn print_table(suite: &SuiteReport) {
    if suite.adapter.is_some() {
        println!(
            "suite {}: size {}, median of {}",
            suite.suite, suite.events, suite.repetitions
        );
    } else {
        println!(
            "suite {}: {} events, {} per append, median of {}",
            suite.suite, suite.events, suite.batch_events, suite.repetitions
        );
    }
    if let Some(adapter) = &suite.adapter {
        println!(
            "adapter: {adapter} (bound = the CPU reference on every core, ratio = adapter / CPU)"
        );
    }
    for note in &suite.notes {
        println!("{note}");
    }
    println!(
        "{:<36} {:>14} {:<9} {:>14} {:<8} {:>7}",
        "figure", "value", "unit", "compared", "with", "ratio"
    );
    for figure in &suite.figures {
        println!(
            "{:<36} {:>14} {:<9} {:>14} {:<8} {:>7.2}",
            figure.figure,
            format_number(figure.value),
            figure.unit,
            format_number(figure.bound),
            figure.against.label(),
            figure.ratio
        );
    }
    for figure in &suite.figures {
        println!("  {}: {}", figure.figure, figure.what);
    }
    println!();
}

fn format_number(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn per_event_us(elapsed: Duration, events: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / events as f64
}

fn events_per_s(elapsed: Duration, events: usize) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

/// Times `work` (after one untimed call that compiles pipelines and warms caches): the median
/// of `repetitions`, and the last output.
fn timed<T>(
    repetitions: usize,
    mut work: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Duration, T)> {
    let mut output = work()?;
    let mut samples = Vec::with_capacity(repetitions);
    for _ in 0..repetitions {
        let started = Instant::now();
        output = work()?;
        samples.push(started.elapsed());
    }
    Ok((median(samples), output))
}

/// The median of `repetitions` calls of `work`, each timing itself (no warm-up call).
fn median_of(
    repetitions: usize,
    mut work: impl FnMut(usize) -> anyhow::Result<Duration>,
) -> anyhow::Result<Duration> {
    Ok(median(
        (0..repetitions)
            .map(&mut work)
            .collect::<anyhow::Result<_>>()?,
    ))
}

/// A job intake event of realistic size (about 200 bytes signed).
fn bench_event(index: u64) -> Event {
    Event::new(
        Role::Client,
        index / 1000,
        index,
        JobSubmitted {
            job: index,
            shard: "earth".to_owned(),
            workload: "finance.settlement".to_owned(),
            skills: vec!["finance".to_owned(), "compliance".to_owned()],
            duration_ticks: 3 + (index % 7) as u32,
            deadline_tick: index / 1000 + 40,
            budget_micros: 2_500_000,
            input_hash: blake3::hash(&index.to_le_bytes()).into(),
        },
    )
}

/// The bench's authors, derived from its seed.
fn bench_authors() -> Vec<SigningKey> {
    (0..BENCH_AUTHORS)
        .map(|i| derive_signing_key(BENCH_SEED, &format!("bench/author-{i}")))
        .collect()
}

/// `events[i]` signed by author `first + i` (round robin), on every core.
fn sign_events(
    events: &[Event],
    first: usize,
    authors: &[SigningKey],
) -> anyhow::Result<Vec<SignedEvent>> {
    Ok(events
        .par_iter()
        .enumerate()
        .map(|(i, event)| SignedEvent::sign(event, &authors[(first + i) % authors.len()]))
        .collect::<Result<_, _>>()?)
}

/// The world of `--config` with `nodes` nodes in all (at least the configured ones).
fn bench_world_with(args: &BenchArgs, nodes: Option<usize>) -> anyhow::Result<BenchWorld> {
    let mut world = fabric_config::load(args.config.as_deref())?;
    let nodes = nodes.unwrap_or(world.nodes.len());
    ensure!(
        nodes >= world.nodes.len(),
        "--nodes {nodes} is fewer than the {} nodes configured in {}",
        world.nodes.len(),
        fabric_config::origin(args.config.as_deref()).display()
    );
    world.nodes = fabric_sim::workload::scale_nodes(&world, BENCH_SEED, nodes);
    Ok(world)
}

type BenchWorld = fabric_actors::world::World;

/// A planetary run of `jobs` jobs of `world` into a new ledger in `dir`.
fn bench_run(world: &BenchWorld, jobs: u64, dir: &Path) -> anyhow::Result<fabric_sim::RunOutcome> {
    let spec = fabric_sim::RunSpec {
        world: world.clone(),
        seed: BENCH_SEED,
        jobs,
        append_events_max: BATCH_EVENTS_MAX,
        owner_script: Vec::new(),
        byzantine: Vec::new(),
    };
    let ledger = fabric_ledger::Ledger::open(dir, fabric_sim::sim_ledger_key(BENCH_SEED))?;
    let outcome = fabric_sim::run(&spec, ledger, |_| {}).context("the bench run failed")?;
    ensure!(
        outcome.stop.drained(),
        "the bench run stopped early: {}",
        outcome.stop.describe()
    );
    Ok(outcome)
}

/// A temporary folder for the bench's ledgers, in `--dir` when given.
fn scratch_dir(args: &BenchArgs) -> anyhow::Result<tempfile::TempDir> {
    match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("could not create a temporary folder for the bench")
}
