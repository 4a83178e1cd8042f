//! `fabric run`: the planetary simulation on the embedded store, with its reports.

use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context};
use fabric_audit::export::write_lines;
use fabric_audit::{Observer, Replay, Sample, Sampled, Step};
use fabric_events::{OwnerAction, OwnerCommand};
use fabric_projections::state::JobStatus;
use fabric_sim::workload::scale_nodes;
use fabric_sim::RunOutcome;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::datadir::{self, RunFile};

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

/// A share from 0 to 1 in parts per million.
fn fraction_ppm(text: &str, what: &str) -> anyhow::Result<u32> {
    let value: f64 = text
        .parse()
        .map_err(|_| anyhow::anyhow!("{what}: `{text}` is not a number from 0 to 1"))?;
    ensure!(
        (0.0..=1.0).contains(&value),
        "{what}: {value} is not between 0 and 1"
    );
    Ok((value * 1_000_000.0).round() as u32)
}

/// `--byzantine NODE:RATE` arguments, checked against the run's nodes.
fn byzantine_nodes(
    args: &[String],
    nodes: &[fabric_actors::world::NodeSpec],
) -> anyhow::Result<Vec<fabric_sim::Byzantine>> {
    let mut out: Vec<fabric_sim::Byzantine> = Vec::new();
    for arg in args {
        let Some((node, rate)) = arg.rsplit_once(':') else {
            anyhow::bail!("--byzantine {arg}: expected NODE:RATE, e.g. mars.gpu-helion:0.2");
        };
        ensure!(
            nodes.iter().any(|n| n.name == node),
            "--byzantine {arg}: the run has no node `{node}`"
        );
        ensure!(
            out.iter().all(|b| b.node != node),
            "--byzantine names node `{node}` twice"
        );
        out.push(fabric_sim::Byzantine {
            node: node.to_owned(),
            rate_ppm: fraction_ppm(rate, &format!("--byzantine {arg}"))?,
        });
    }
    Ok(out)
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
                    fabric_bus::Outbox::start(reader, url, log)
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
        world.verify_ppm = fraction_ppm(&fraction.to_string(), "--verify-fraction")?;
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
    let byzantine = byzantine_nodes(
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
    let mut summary = summary(run_file, outcome);
    let published = publication.finish();
    if let Some(Ok(report)) = &published {
        summary["nats"] = nats_summary(report);
    }
    write_reports(run_file, &out, outcome, &mut summary)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        eprint!("{}", table(outcome, &summary, &out));
    } else {
        print!("{}", table(outcome, &summary, &out));
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

/// Refuses a folder holding anything, unless `force`; then removes only what a run wrote.
/// The value under which a `quantile` of the sorted samples fall (nearest rank); none without
/// samples.
pub(crate) fn nearest_rank<T: Copy>(sorted: &[T], quantile: f64) -> Option<T> {
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

/// [`nearest_rank`] of nanoseconds (or any u32 samples), 0 without samples.
pub(crate) fn quantile_ns(sorted: &[u32], quantile: f64) -> u64 {
    nearest_rank(sorted, quantile).map_or(0, u64::from)
}

/// `Rejected` events recorded, by reason (every reason, zeros included).
pub(crate) fn rejections_by_reason(state: &fabric_projections::State) -> Value {
    let authority = state.authority();
    let counts: serde_json::Map<String, Value> = fabric_events::RejectReason::ALL
        .iter()
        .map(|reason| {
            (
                reason.as_str().to_owned(),
                json!(authority.rejections(*reason)),
            )
        })
        .collect();
    Value::Object(counts)
}

fn summary(run: &RunFile, outcome: &RunOutcome) -> Value {
    let state = &outcome.state;
    let metrics = state.metrics();
    let mut decision_ns = outcome.decision_ns.clone();
    decision_ns.sort_unstable();
    let (mut queued, mut running) = (0u64, 0u64);
    for job in state.jobs() {
        match job.status {
            JobStatus::Queued => queued += 1,
            JobStatus::Running => running += 1,
            _ => {}
        }
    }
    let spills_per_job: serde_json::Map<String, Value> = metrics
        .spills_per_job
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(spills, count)| (spills.to_string(), json!(count)))
        .collect();
    let spills_per_job_max = metrics
        .spills_per_job
        .iter()
        .rposition(|count| *count > 0)
        .unwrap_or(0);
    // Mean latency of the nodes that ran jobs, weighted by the jobs each finished.
    let (rtt_weighted, finished_on_nodes) = state.nodes().iter().fold((0u64, 0u64), |acc, n| {
        let finished = n.completed + n.failed;
        (acc.0 + u64::from(n.latency_ms) * finished, acc.1 + finished)
    });
    let wall_s = outcome.wall.as_secs_f64().max(1e-9);
    let events = outcome.tree_head.tree_size;
    let appended = outcome.events_appended;
    let shards: Vec<Value> = state
        .shards()
        .iter()
        .map(|shard| {
            let c = &shard.counters;
            json!({
                "shard": shard.name,
                "submitted": c.submitted,
                "completed": c.completed,
                "failed": c.failed,
                "spilled_in": c.spilled_in,
                "spilled_out": c.spilled_out,
                "requeued": c.requeued,
                "queue_peak": c.queue_peak,
                "queued_at_end": shard.queued(),
                "latency_ticks_mean": c.latency_ticks_mean(),
            })
        })
        .collect();
    let mut summary = json!({
        "label": run.label,
        "seed": run.seed,
        "jobs": run.jobs,
        "nodes": state.nodes().len(),
        "shards_count": state.shards().len(),
        "ticks": outcome.last_tick,
        "drained": outcome.stop.drained(),
        "stop_reason": outcome.stop.describe(),
        "arrivals_per_tick": outcome.arrivals_per_tick,
        "events": events,
        "final_seq": events.saturating_sub(1),
        "merkle_root": outcome.tree_head.root.to_hex(),
        "tree_head_signature": outcome.tree_head.signature.to_hex(),
        "state_hash": state.state_hash().to_hex(),
        "wall_ms": outcome.wall.as_millis() as u64,
        "throughput": {
            "events_per_s": appended as f64 / wall_s,
            "jobs_per_s": metrics.finished() as f64 / wall_s,
            "jobs_per_tick": metrics.finished() as f64 / outcome.last_tick.max(1) as f64,
        },
        "jobs_status": {
            "submitted": metrics.submitted,
            "completed": metrics.completed,
            "failed": metrics.dropped,
            "cancelled": metrics.cancelled,
            "queued": queued,
            "running": running,
        },
        "latency_ticks": {
            "mean": metrics.latency_ticks_mean(),
            "p50": metrics.latency_ticks_quantile(0.5),
            "p99": metrics.latency_ticks_quantile(0.99),
            "max": metrics.latency_ticks_max,
        },
        "spillovers": metrics.spillovers,
        "spills_per_job": spills_per_job,
        "spills_per_job_max": spills_per_job_max,
        "requeues": metrics.requeues,
        "node_failures": metrics.failures,
        "deadline_missed": metrics.deadline_missed,
        "heartbeats": metrics.heartbeats,
        "checkpoints": metrics.checkpoints,
        "anomalies": state.anomalies(),
        "owner_commands": metrics.owner_commands,
        "rejections": rejections_by_reason(state),
        "router": {
            "decisions": decision_ns.len(),
            "waits": outcome.waits,
            "decision_ns_p50": quantile_ns(&decision_ns, 0.5),
            "decision_ns_p99": quantile_ns(&decision_ns, 0.99),
            "decision_ns_max": decision_ns.last().copied().unwrap_or(0),
        },
        "metrics": {
            "treaty_fill_rate": metrics.fill_rate(),
            "treaty_rtt_ms": if finished_on_nodes == 0 { 0.0 } else { rtt_weighted as f64 / finished_on_nodes as f64 },
            "treaty_provenance_coverage": if metrics.finished() == 0 { 0.0 } else { metrics.completed as f64 / metrics.finished() as f64 },
            "gpu_hours_total": 0.0,
            "treaty_dropped_requests": metrics.dropped,
            "treaty_failover_events_total": metrics.requeues + metrics.spillovers,
        },
        "shards": shards,
    });
    if let Some((report, took)) = &outcome.restored {
        summary["resumed"] = json!({
            "checkpoint_tree_size": report.checkpoint_tree_size.unwrap_or(0),
            "from_genesis": report.checkpoint_tree_size.is_none(),
            "tail_events": report.tail_events,
            "skipped_checkpoints": report.skipped,
            "restore_ms": took.as_millis() as u64,
            "events_appended": appended,
        });
    }
    summary
}

/// Writes the reports. `events.ndjson` and `shards.json` come from one replay of the log, so
/// a resumed run reports every event exactly once and the same samples as an uninterrupted
/// one; the replay must end in the run's own state. Each file is replaced atomically.
fn write_reports(
    run_file: &RunFile,
    out: &Path,
    outcome: &RunOutcome,
    summary: &mut Value,
) -> anyhow::Result<()> {
    fs::create_dir_all(out)
        .with_context(|| format!("could not create the report folder {}", out.display()))?;
    let write_json = |name: &str, value: &Value| -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(value)? + "\n";
        crate::export::write_file(&out.join(name), |writer| {
            Ok(writer.write_all(text.as_bytes())?)
        })
    };
    let reader = outcome.ledger.reader();
    let mut replay = Replay::genesis();
    let mut sampled = Sampled::new(
        outcome.sample_every_ticks,
        (
            crate::report::Chronicle::new(outcome.sample_every_ticks),
            ShardSamples::default(),
        ),
    );
    let mut executed = crate::owner::ExecutedCommands::default();
    let mut attestation = AttestationTally::new(run_file);
    crate::export::write_file(&out.join("events.ndjson"), |writer| {
        let mut observers = (&mut sampled, &mut executed, &mut attestation);
        Ok(write_lines(
            &reader,
            0..outcome.ledger.len(),
            writer,
            |hash, entry| replay.push(hash, entry, &mut observers).map(drop),
        )?)
    })?;
    sampled.finish(outcome.last_tick, replay.state());
    let (chronicle, ShardSamples(samples)) = sampled.into_inner();
    let replayed = replay.into_state();
    let (replayed_hash, run_hash) = (replayed.state_hash(), outcome.state.state_hash());
    ensure!(
        replayed_hash == run_hash,
        "the log replays to state {replayed_hash}, but the run ended in state {run_hash}"
    );
    write_json(
        "shards.json",
        &json!({
            "sample_every_ticks": outcome.sample_every_ticks,
            "samples": samples,
        }),
    )?;
    write_json("owner-script.json", &owner_script(outcome)?)?;
    write_json("owner-commands-executed.json", &executed.to_json())?;
    let headline = crate::report::Headline::new(
        &run_file.label,
        run_file.seed,
        run_file.jobs,
        &replayed,
        outcome.tree_head.root,
        outcome.tree_head.tree_size,
        Some(summary),
    );
    crate::report::write(out, &chronicle, &headline, &replayed)?;
    summary["attestation"] = attestation.to_json(run_file);
    write_json("summary.json", summary)?;
    Ok(())
}

/// The per-shard samples of `shards.json`, at each sample tick of the reports' replay.
#[derive(Default)]
struct ShardSamples(Vec<fabric_sim::ShardSample>);

impl Observer for ShardSamples {}

impl Sample for ShardSamples {
    fn sample(&mut self, tick: u64, state: &fabric_projections::State) {
        self.0.extend(fabric_sim::shard_samples(state, tick));
    }
}

/// GPU receipts and what re-execution made of them, counted in the reports' replay. Which
/// outputs a byzantine node corrupted is a draw of the seed, so the log and the run's
/// parameters tell injected, detected (an `attestation_mismatch`) and missed (a corrupted
/// receipt that was admitted) apart without re-executing anything.
struct AttestationTally {
    workload: fabric_sim::workload::Workload,
    nodes: Vec<fabric_sim::Byzantine>,
    gpu_receipts: u64,
    mismatches: u64,
    /// Per byzantine node: injected, detected, missed.
    byzantine: Vec<(u64, u64, u64)>,
}

impl AttestationTally {
    fn new(run_file: &RunFile) -> Self {
        let spec = run_file.spec();
        Self {
            workload: fabric_sim::workload::Workload::new(&spec.world, spec.seed, spec.jobs),
            nodes: run_file.byzantine.clone(),
            gpu_receipts: 0,
            mismatches: 0,
            byzantine: vec![(0, 0, 0); run_file.byzantine.len()],
        }
    }

    fn see(&mut self, event: &fabric_events::Event) {
        match &event.body {
            fabric_events::Body::JobReceipt(receipt) if receipt.kernel.is_some() => {
                self.gpu_receipts += 1;
                if receipt.outcome != fabric_events::JobOutcome::Completed {
                    return;
                }
                for (index, byzantine) in self.nodes.iter().enumerate() {
                    if byzantine.node == receipt.node
                        && self.workload.corrupts(
                            receipt.job,
                            receipt.started_tick,
                            byzantine.rate_ppm,
                        )
                    {
                        self.byzantine[index].0 += 1;
                        self.byzantine[index].2 += 1;
                    }
                }
            }
            fabric_events::Body::AttestationMismatch(mismatch) => {
                self.mismatches += 1;
                for (index, byzantine) in self.nodes.iter().enumerate() {
                    if byzantine.node == mismatch.node {
                        self.byzantine[index].0 += 1;
                        self.byzantine[index].1 += 1;
                    }
                }
            }
            _ => {}
        }
    }

    fn to_json(&self, run_file: &RunFile) -> Value {
        let byzantine: Vec<Value> = run_file
            .byzantine
            .iter()
            .zip(&self.byzantine)
            .map(|(node, (injected, detected, missed))| {
                json!({
                    "node": node.node,
                    "rate_ppm": node.rate_ppm,
                    "corruptions_injected": injected,
                    "corruptions_detected": detected,
                    "corruptions_missed": missed,
                })
            })
            .collect();
        json!({
            "verify_ppm": run_file.world.verify_ppm,
            "gpu_receipts": self.gpu_receipts,
            "mismatches": self.mismatches,
            "byzantine": byzantine,
        })
    }
}

impl Observer for AttestationTally {
    fn before(&mut self, step: &Step<'_>, _: &fabric_projections::State) {
        self.see(step.event);
    }
}

/// Owner commands that pause, resume and re-budget each shard, unapproved, as a command file:
/// each owner approves them with `fabric owner sign`, then `fabric owner submit` hands them to
/// the ledger (they expire 1,000 ticks after the run's last tick).
fn owner_script(outcome: &RunOutcome) -> anyhow::Result<Value> {
    let state = &outcome.state;
    let expiry_tick = outcome.last_tick + 1_000;
    let first_nonce = (outcome.last_tick + 1) << 24;
    let mut commands = Vec::new();
    for shard in state.shards().iter().filter(|shard| !shard.retired) {
        let actions = [
            (
                "pause the shard",
                OwnerAction::PauseShard {
                    shard: shard.name.clone(),
                },
            ),
            (
                "resume the shard",
                OwnerAction::ResumeShard {
                    shard: shard.name.clone(),
                },
            ),
            (
                "double the queue budget",
                OwnerAction::SetQueueBudget {
                    shard: shard.name.clone(),
                    queue_budget: shard.queue_budget.saturating_mul(2),
                },
            ),
            (
                "widen the latency budget by half",
                OwnerAction::SetLatencyBudget {
                    shard: shard.name.clone(),
                    latency_budget_ms: shard
                        .latency_budget_ms
                        .saturating_add(shard.latency_budget_ms / 2),
                },
            ),
        ];
        for (purpose, action) in actions {
            let nonce = first_nonce + commands.len() as u64;
            let command = OwnerCommand {
                action,
                expiry_tick,
                approvals: Vec::new(),
            };
            commands.push(crate::owner::FileCommand::new(
                None,
                &format!("{}: {purpose}", shard.name),
                nonce,
                command,
            ));
        }
    }
    Ok(serde_json::to_value(crate::owner::CommandFile::new(
        commands,
    ))?)
}

fn table(outcome: &RunOutcome, summary: &Value, out: &Path) -> String {
    let state = &outcome.state;
    let mut text = String::new();
    let line = |text: &mut String, s: String| {
        text.push_str(&s);
        text.push('\n');
    };
    line(
        &mut text,
        format!(
            "{:<8} {:>10} {:>10} {:>8} {:>10} {:>11} {:>9} {:>10} {:>13}",
            "shard",
            "submitted",
            "completed",
            "failed",
            "spilled in",
            "spilled out",
            "requeued",
            "queue peak",
            "latency ticks"
        ),
    );
    for shard in state.shards() {
        let c = &shard.counters;
        let latency = c.latency_ticks_mean();
        line(
            &mut text,
            format!(
                "{:<8} {:>10} {:>10} {:>8} {:>10} {:>11} {:>9} {:>10} {:>13.1}",
                shard.name,
                c.submitted,
                c.completed,
                c.failed,
                c.spilled_in,
                c.spilled_out,
                c.requeued,
                c.queue_peak,
                latency
            ),
        );
    }
    let metrics = state.metrics();
    line(
        &mut text,
        format!(
            "\n{} jobs ({} completed, {} failed, {} still queued) on {} nodes in {} ticks; {} events signed and stored in {:.1} s",
            metrics.submitted,
            metrics.completed,
            metrics.dropped,
            summary["jobs_status"]["queued"],
            state.nodes().len(),
            outcome.last_tick,
            outcome.tree_head.tree_size,
            outcome.wall.as_secs_f64()
        ),
    );
    line(
        &mut text,
        format!(
            "spillovers {} (per job: {}), requeues {}, node failures {}, router decision p50 {} ns / p99 {} ns",
            metrics.spillovers,
            summary["spills_per_job"],
            metrics.requeues,
            metrics.failures,
            summary["router"]["decision_ns_p50"],
            summary["router"]["decision_ns_p99"],
        ),
    );
    line(&mut text, format!("merkle root {}", outcome.tree_head.root));
    line(
        &mut text,
        format!(
            "state hash  {}",
            summary["state_hash"].as_str().unwrap_or("")
        ),
    );
    line(&mut text, format!("reports in  {}", out.display()));
    text
}
