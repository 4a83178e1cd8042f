//! `fabric run`: the planetary simulation on the embedded store, with its reports.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{ensure, Context};
use fabric_reports::stats::quantile_ns;
use fabric_sim::workload::scale_nodes;
use fabric_sim::RunOutcome;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use fabric_sim::datadir::{self, RunFile};

/// Arguments of `fabric run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The world: shards, nodes, treaty terms, workload, failures [default: the built-in
    /// world, config/fabric.toml of the source]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the ledger and the run's parameters go (must be empty, or pass --force)
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Replace the run already stored in --data
    #[arg(long)]
    force: bool,
    /// Seed of every key and every random draw
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Jobs to submit
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Nodes in all: the configured ones plus generated ones spread over the shards
    /// (default: only the configured ones)
    #[arg(long)]
    nodes: Option<usize>,
    /// Where the reports go (default: reports/<data folder name>-seed<S>-jobs<J>-nodes<N>)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the summary as JSON on stdout (and nothing else there)
    #[arg(long)]
    json: bool,
    /// Owner commands to submit during the run, each at its `tick` (a command file of
    /// `fabric owner propose`, approved with `fabric owner sign`)
    #[arg(long, value_name = "FILE")]
    owner_script: Option<PathBuf>,
    /// A node that corrupts this share (0 to 1) of its GPU jobs' outputs, e.g.
    /// `mars.gpu-helion:0.2` (repeatable)
    #[arg(long, value_name = "NODE:RATE")]
    byzantine: Vec<String>,
    /// Share (0 to 1) of GPU receipts the ledger's verifier re-executes (default: the
    /// config's `[verification] fraction_ppm`, else 0.1)
    #[arg(long, value_name = "FRACTION")]
    verify_fraction: Option<f64>,
    #[command(flatten)]
    nats: NatsArgs,
}

/// Publication on NATS, shared by `fabric run` and `fabric resume`.
#[derive(clap::Args, Debug)]
pub struct NatsArgs {
    /// Publish every appended event on this NATS server's JetStream, e.g. nats://127.0.0.1:4222
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// At the end, wait this long for NATS to take the events not yet published
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "nats")]
    nats_drain_s: u64,
}

/// An outbox running beside a run, when `--nats` asks for one.
struct Publication {
    outbox: Option<fabric_bus::Outbox>,
    wait: std::time::Duration,
}

impl Publication {
    /// Connects and starts the outbox on `reader`'s log; lines it has to say go above the
    /// progress bar.
    fn start(
        args: &NatsArgs,
        reader: fabric_ledger::LedgerReader,
        progress: &ProgressBar,
    ) -> anyhow::Result<Self> {
        let outbox = match &args.nats {
            None => None,
            Some(url) => {
                let progress = progress.clone();
                let log: fabric_bus::outbox::Log =
                    std::sync::Arc::new(move |line: &str| progress.suspend(|| eprintln!("{line}")));
                Some(
                    fabric_bus::Outbox::start(reader, url, None, log)
                        .with_context(|| format!("--nats {url}: cannot publish there"))?,
                )
            }
        };
        Ok(Self {
            outbox,
            wait: std::time::Duration::from_secs(args.nats_drain_s),
        })
    }

    fn durable(&self, size: u64) {
        if let Some(outbox) = &self.outbox {
            outbox.durable(size);
        }
    }

    /// Waits for the backlog; the report, or why some events are still waiting.
    fn finish(self) -> Option<Result<fabric_bus::OutboxReport, fabric_bus::BusError>> {
        self.outbox.map(|outbox| outbox.finish(self.wait))
    }
}

/// Most jobs one run takes: the state holds only the jobs in the fabric, but the reports write
/// an export line per event (about 3 GB per million jobs).
const JOBS_PER_RUN_MAX: u64 = 10_000_000;
/// Most nodes one run takes.
const NODES_PER_RUN_MAX: usize = 1_000_000;

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    ensure!(args.jobs > 0, "--jobs must be at least 1");
    ensure!(
        args.jobs <= JOBS_PER_RUN_MAX,
        "--jobs {} is over the limit of {JOBS_PER_RUN_MAX} jobs per run (its reports would take tens of GB)",
        args.jobs
    );
    ensure!(
        args.nodes.is_none_or(|nodes| nodes <= NODES_PER_RUN_MAX),
        "--nodes is over the limit of {NODES_PER_RUN_MAX} nodes per run"
    );
    let mut world = fabric_config::load(args.config.as_deref())?;
    let config = fabric_config::origin(args.config.as_deref());
    if let Some(fraction) = args.verify_fraction {
        world.verify_ppm =
            fabric_sim::nodes::fraction_ppm(&fraction.to_string(), "--verify-fraction")?;
    }
    let nodes_total = args.nodes.unwrap_or(world.nodes.len());
    ensure!(
        nodes_total >= world.nodes.len(),
        "--nodes {nodes_total} is fewer than the {} nodes configured in {}",
        world.nodes.len(),
        config.display()
    );
    // The data folder's name keeps the reports of runs with the same parameters apart.
    let data_name = args
        .data
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| !name.is_empty() && name != "." && name != "..")
        .unwrap_or_else(|| "run".to_owned());
    let label = format!(
        "{data_name}-seed{}-jobs{}-nodes{}",
        args.seed, args.jobs, nodes_total
    );
    let owner_script = match &args.owner_script {
        Some(path) => crate::owner::load_script(path)?,
        None => Vec::new(),
    };
    let byzantine = fabric_sim::nodes::byzantine_nodes(
        &args.byzantine,
        &scale_nodes(&world, args.seed, nodes_total),
    )?;
    datadir::prepare(&args.data, args.force)?;
    let run_file = RunFile {
        format: datadir::RUN_FILE_FORMAT,
        label: label.clone(),
        seed: args.seed,
        jobs: args.jobs,
        nodes: nodes_total,
        config: config.to_path_buf(),
        world: world.clone(),
        owner_script,
        byzantine,
        keys: datadir::KeySource::Simulation,
    };
    datadir::write_run_file(&args.data, &run_file)?;

    let spec = run_file.spec();
    let ledger = datadir::open_ledger(&args.data, args.seed)?;

    let progress = progress_bar(args.jobs);
    let publication =
        Publication::start(&args.nats, ledger.reader(), &progress).with_context(|| {
            format!(
                "the run did not start; once NATS is reachable, start it with `fabric resume \
                 --data {} --nats URL`",
                args.data.display()
            )
        })?;
    let outcome = fabric_sim::run(&spec, ledger, |tick| {
        publication.durable(tick.events_total);
        show_progress(&progress, tick)
    })
    .context("the run failed")?;
    progress.finish_and_clear();
    finish(
        &run_file,
        &outcome,
        publication,
        args.out.clone(),
        args.json,
    )
}

/// Arguments of `fabric resume`.
#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// The data folder of the interrupted run
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Where the reports go (default: reports/<the run's label>)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the summary as JSON on stdout (and nothing else there)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
}

/// `fabric resume`: continues the run stored in `--data` from its newest valid checkpoint to
/// its end, then writes its reports (from the log, so every event appears exactly once).
pub fn resume(args: &ResumeArgs) -> anyhow::Result<()> {
    let (run_file, ledger) = datadir::open_run_with(&args.data, true)?;
    // A simulated run has jobs; a folder without is a served fabric, whose log goes on only
    // under `fabric serve` (a resume would append simulated ticks to it).
    ensure!(
        run_file.jobs > 0,
        "{} holds the fabric {} that `fabric serve` started; start it again with `fabric serve \
         --data {}`",
        args.data.display(),
        run_file.label,
        args.data.display()
    );
    let discarded = ledger.open_report().discarded_blocks;
    let spec = run_file.spec();
    let progress = progress_bar(run_file.jobs);
    let publication = Publication::start(&args.nats, ledger.reader(), &progress)?;
    let outcome = fabric_sim::resume(&spec, ledger, |tick| {
        publication.durable(tick.events_total);
        show_progress(&progress, tick)
    })
    .context("the resumed run failed")?;
    progress.finish_and_clear();
    if discarded > 0 {
        eprintln!(
            "discarded {discarded} stored blocks past the last acknowledged batch (a batch that \
             was being written when the run stopped)"
        );
    }
    if let Some((report, took)) = &outcome.restored {
        for skipped in &report.skipped {
            eprintln!("skipped {skipped}; falling back to the one before");
        }
        match report.checkpoint_tree_size {
            Some(size) => eprintln!(
                "restored from the checkpoint at tree size {size}, replaying {} of {} events, in {} ms",
                report.tail_events,
                report.log_events,
                took.as_millis()
            ),
            None => eprintln!(
                "no usable checkpoint: replayed all {} events from genesis in {} ms",
                report.log_events,
                took.as_millis()
            ),
        }
    }
    finish(
        &run_file,
        &outcome,
        publication,
        args.out.clone(),
        args.json,
    )
}

fn show_progress(progress: &ProgressBar, tick: &fabric_sim::TickProgress<'_>) {
    let metrics = tick.state.metrics();
    progress.set_position(metrics.completed + metrics.dropped + metrics.cancelled);
    progress.set_message(format!(
        "tick {} · {} events · {} queued",
        tick.tick,
        tick.events_total,
        tick.state.shards().iter().map(|s| s.queued()).sum::<u64>()
    ));
}

/// Waits for the publication, writes the reports of a finished run and prints its summary.
/// Events NATS did not take in time are an error, after the reports (the run itself is
/// complete and durable; the outbox sends them on the next `fabric resume --nats`).
fn finish(
    run_file: &RunFile,
    outcome: &RunOutcome,
    publication: Publication,
    out: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(|| PathBuf::from("reports").join(&run_file.label));
    let spec = run_file.spec();
    let run = fabric_reports::RunInfo {
        label: &run_file.label,
        spec: &spec,
    };
    let mut summary = fabric_reports::summary(&run, outcome);
    let published = publication.finish();
    if let Some(Ok(report)) = &published {
        summary["nats"] = nats_summary(report);
    }
    fabric_reports::write_reports(&run, &out, outcome, &mut summary)?;
    let table = fabric_reports::summary::table(outcome, &summary, &out);
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        eprint!("{table}");
    } else {
        print!("{table}");
    }
    match published {
        Some(Err(err)) => Err(err).context("publishing on NATS did not finish"),
        _ => Ok(()),
    }
}

/// The `nats` object of a summary.
fn nats_summary(report: &fabric_bus::OutboxReport) -> Value {
    let mut lag_us = report.lag_us.clone();
    lag_us.sort_unstable();
    let ms = |quantile: f64| quantile_ns(&lag_us, quantile) as f64 / 1e3;
    json!({
        "published": report.published,
        "duplicates": report.duplicates,
        "retries": report.retries,
        "cursor": report.cursor,
        "lag_ms_p50": ms(0.5),
        "lag_ms_p99": ms(0.99),
        "lag_ms_max": lag_us.last().map_or(0.0, |us| f64::from(*us) / 1e3),
    })
}

fn progress_bar(jobs: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(jobs), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(jobs);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} jobs ended · {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
