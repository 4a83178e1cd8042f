//! `fabric bench`: throughput measured against the bounds of this machine, in the same run.
//!
//! Suite `ledger`: how many signed events per second the ledger appends with one group commit
//! (flush + fdatasync) per batch, next to the bound set by what it cannot avoid doing per
//! event: batch signature verification on all cores plus storing the entry in this storage
//! layout. Both are measured here, now, on the same events.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use clap::ValueEnum;
use fabric_events::{
    derive_signing_key, Event, Hash32, JobSubmitted, Role, SignedEvent, SigningKey,
};
use fabric_ledger::storage::{block_key, BlockWriter};
use fabric_ledger::verify::{verify_batch, KeyCache, VerifiedBatch, Verifier};
use fabric_ledger::{Ledger, BATCH_EVENTS_MAX};
use rayon::prelude::*;

#[path = "serve_bench.rs"]
mod serve_bench;
use serde::Serialize;

/// Seed of the bench's keys and events, so every run measures the same bytes.
const BENCH_SEED: u64 = 0xFAB_2026;
/// Distinct authors of the bench's events (like a fleet of nodes).
const BENCH_AUTHORS: usize = 64;
/// Ratio of measured throughput to its bound that the ledger aims for.
const TARGET_RATIO: f64 = 0.8;

/// Options of `fabric bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Suites to run; all when none is named
    #[arg(value_enum)]
    suites: Vec<Suite>,
    /// Fewer events and one repetition instead of the median of three
    #[arg(long)]
    quick: bool,
    /// Print one JSON object instead of tables
    #[arg(long)]
    json: bool,
    /// Events per measurement [default: 200000, 40000 with --quick]
    #[arg(long, value_name = "N")]
    events: Option<usize>,
    /// Events per append (one group commit each)
    #[arg(long, value_name = "N", default_value_t = 8192)]
    batch: usize,
    /// Folder for the bench's temporary ledgers [default: the system's temporary folder]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Planetary suite: the world to run
    #[arg(long, value_name = "FILE", default_value = "config/fabric.toml")]
    config: PathBuf,
    /// Planetary suite: jobs [default: 1000000, 100000 with --quick]; audit suite: jobs of
    /// the long history (the short one has a tenth) [default: 200000, 20000 with --quick];
    /// nats suite [default: 100000, 20000 with --quick]
    #[arg(long, value_name = "N")]
    jobs: Option<u64>,
    /// The NATS server of the nats suite [default: a nats-server the bench starts on a free
    /// loopback port, with its store in the bench's temporary folder]
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Nodes in all [default: 10000 for the planetary suite; the configured ones for the audit
    /// suite, whose histories then run many ticks, and for the nats suite, as `fabric run` does]
    #[arg(long, value_name = "N")]
    nodes: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// Signed events appended per second vs. the verify + store bound
    Ledger,
    /// `fabric run` at scale: wall time, events/s vs. the sign + verify bound, router latency
    Planetary,
    /// Each GPU kernel on the adapter vs. its CPU reference on every core
    Gpu,
    /// `fabric audit` events/s vs. batch verification alone; restore time, long vs. short history
    Audit,
    /// `fabric run --nats` vs. without: throughput, and the lag from append to JetStream ack
    Nats,
    /// `fabric serve`: POST /v0/jobs from many connections, accepted jobs/s and p99 latency
    Serve,
}

#[derive(Serialize)]
struct Figure {
    figure: &'static str,
    value: f64,
    unit: &'static str,
    /// The bound this figure is compared with, in the same unit.
    bound: Option<f64>,
    ratio: Option<f64>,
    what: &'static str,
}

#[derive(Serialize)]
struct SuiteReport {
    suite: &'static str,
    events: usize,
    batch_events: usize,
    repetitions: usize,
    /// The GPU adapter the figures were measured on.
    #[serde(skip_serializing_if = "Option::is_none")]
    adapter: Option<String>,
    figures: Vec<Figure>,
}

#[derive(Serialize)]
struct Report {
    nproc: usize,
    suites: Vec<SuiteReport>,
}

/// Runs the asked suites and prints their tables (or JSON).
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    ensure!(args.batch >= 1, "--batch must be at least 1");
    ensure!(
        args.batch <= BATCH_EVENTS_MAX,
        "--batch {} is over the ledger's limit of {BATCH_EVENTS_MAX} events per append",
        args.batch
    );
    let suites = if args.suites.is_empty() {
        Suite::value_variants().to_vec()
    } else {
        args.suites.clone()
    };
    let mut report = Report {
        nproc: rayon::current_num_threads(),
        suites: Vec::new(),
    };
    for suite in suites {
        let result = match suite {
            Suite::Ledger => ledger_suite(args)?,
            Suite::Planetary => planetary_suite(args)?,
            Suite::Gpu => gpu_suite(args)?,
            Suite::Audit => audit_suite(args)?,
            Suite::Nats => nats_suite(args)?,
            Suite::Serve => serve_bench::serve_suite(args)?,
        };
        if !args.json {
            print_table(&result);
        }
        report.suites.push(result);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
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
    println!(
        "{:<34} {:>14} {:<9} {:>14} {:>7}",
        "figure", "value", "unit", "bound", "ratio"
    );
    for figure in &suite.figures {
        let bound = figure.bound.map_or_else(|| "-".to_owned(), format_number);
        let ratio = figure
            .ratio
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
        println!(
            "{:<34} {:>14} {:<9} {:>14} {:>7}",
            figure.figure,
            format_number(figure.value),
            figure.unit,
            bound,
            ratio
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

fn ledger_suite(args: &BenchArgs) -> anyhow::Result<SuiteReport> {
    let events = args
        .events
        .unwrap_or(if args.quick { 40_000 } else { 200_000 })
        .max(1);
    let batch = args.batch;
    let repetitions = if args.quick { 1 } else { 3 };
    let scratch = scratch_dir(args)?;

    let authors: Vec<SigningKey> = (0..BENCH_AUTHORS)
        .map(|i| derive_signing_key(BENCH_SEED, &format!("bench/author-{i}")))
        .collect();
    let plain: Vec<Event> = (0..events as u64).map(bench_event).collect();

    let started = Instant::now();
    let signed: Vec<SignedEvent> = plain
        .par_iter()
        .enumerate()
        .map(|(i, event)| SignedEvent::sign(event, &authors[i % BENCH_AUTHORS]))
        .collect::<Result<_, _>>()?;
    let sign_time = started.elapsed();
    let signed_bytes_mean =
        signed.iter().map(|e| e.signed.len()).sum::<usize>() as f64 / events as f64;

    let verify_all = median(
        (0..repetitions)
            .map(|_| time_verify(&signed, batch))
            .collect::<anyhow::Result<_>>()?,
    );
    let one_core = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let verify_one = one_core.install(|| time_verify(&signed, batch))?;

    let store = median(
        (0..repetitions)
            .map(|run| {
                time_store_packed(
                    &scratch.path().join(format!("packed-{run}")),
                    &signed,
                    batch,
                )
            })
            .collect::<anyhow::Result<_>>()?,
    );
    let per_key_events = events.min(50_000);
    let per_key = time_store_per_key(
        &scratch.path().join("per-key"),
        &signed[..per_key_events],
        batch,
    )?;

    let append = median(
        (0..repetitions)
            .map(|run| {
                time_append(
                    &scratch.path().join(format!("ledger-{run}")),
                    &signed,
                    batch,
                )
            })
            .collect::<anyhow::Result<_>>()?,
    );

    let pipelined = median(
        (0..repetitions)
            .map(|run| {
                time_append_pipelined(
                    &scratch.path().join(format!("pipelined-{run}")),
                    &signed,
                    batch,
                )
            })
            .collect::<anyhow::Result<_>>()?,
    );

    let cores = rayon::current_num_threads() as f64;
    let verify_us = per_event_us(verify_all, events);
    let verify_one_us = per_event_us(verify_one, events);
    let store_us = per_event_us(store, events);
    let bound = 1e6 / (verify_us + store_us);
    let work_bound = cores * 1e6 / (verify_one_us + store_us);
    let verify_bound = 1e6 / verify_us;
    let appended = events_per_s(append, events);
    let appended_pipelined = events_per_s(pipelined, events);
    let figures = vec![
        Figure {
            figure: "sign, all cores",
            value: events_per_s(sign_time, events),
            unit: "events/s",
            bound: None,
            ratio: None,
            what: "ed25519 signatures made per second (clients' side, not part of append)",
        },
        Figure {
            figure: "signed event size",
            value: signed_bytes_mean,
            unit: "bytes",
            bound: None,
            ratio: None,
            what: "mean size of `signed` (FABRICv1 + canonical event)",
        },
        Figure {
            figure: "batch verify, 1 core",
            value: verify_one_us,
            unit: "us/event",
            bound: None,
            ratio: None,
            what: "ed25519 batch verification (chunks of 256) plus strict decoding, one thread",
        },
        Figure {
            figure: "batch verify, all cores",
            value: verify_us,
            unit: "us/event",
            bound: None,
            ratio: None,
            what: "the same on every core: the ledger's verification stage",
        },
        Figure {
            figure: "store, packed blocks",
            value: store_us,
            unit: "us/event",
            bound: None,
            ratio: None,
            what: "entries packed 256 per sled value, one flush + fdatasync per batch",
        },
        Figure {
            figure: "store, one sled key per event",
            value: per_event_us(per_key, per_key_events),
            unit: "us/event",
            bound: None,
            ratio: None,
            what: "for comparison: the layout packing avoids (flush + fdatasync per batch)",
        },
        Figure {
            figure: "bound: verify + store",
            value: bound,
            unit: "events/s",
            bound: None,
            ratio: None,
            what: "1 / (batch verify on all cores + packed store), per event",
        },
        Figure {
            figure: "append, pre-signed",
            value: appended,
            unit: "events/s",
            bound: Some(bound),
            ratio: Some(appended / bound),
            what: if appended / bound >= TARGET_RATIO {
                "Ledger::append, flush + fdatasync per batch; target >= 0.80 of the bound: met"
            } else {
                "Ledger::append, flush + fdatasync per batch; target >= 0.80 of the bound: MISSED"
            },
        },
        Figure {
            figure: "bound: all work on all cores",
            value: work_bound,
            unit: "events/s",
            bound: None,
            ratio: None,
            what: "cores / (batch verify on one core + packed store): no stage ever idle",
        },
        Figure {
            figure: "append, pipelined",
            value: appended_pipelined,
            unit: "events/s",
            bound: Some(work_bound),
            ratio: Some(appended_pipelined / work_bound),
            what: "Verifier on its own thread feeding Ledger::append_verified: batch n+1 is \
                   verified while batch n is stored",
        },
        Figure {
            figure: "append, pipelined, vs verify",
            value: appended_pipelined,
            unit: "events/s",
            bound: Some(verify_bound),
            ratio: Some(appended_pipelined / verify_bound),
            what: "the same, against batch verification alone on all cores",
        },
    ];
    Ok(SuiteReport {
        suite: "ledger",
        events,
        batch_events: batch,
        repetitions,
        adapter: None,
        figures,
    })
}

fn time_append_pipelined(
    dir: &Path,
    signed: &[SignedEvent],
    batch: usize,
) -> anyhow::Result<Duration> {
    let ledger_key = derive_signing_key(BENCH_SEED, "bench/ledger");
    let mut ledger = Ledger::open(dir, ledger_key)?;
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        // One batch in flight: the verifier stays at most one batch ahead of the writer.
        let (verified_tx, verified_rx) = std::sync::mpsc::sync_channel::<VerifiedBatch>(1);
        let verifier = scope.spawn(move || -> anyhow::Result<()> {
            let mut verifier = Verifier::new();
            for chunk in signed.chunks(batch) {
                let verified = verifier.verify(chunk.to_vec())?;
                if verified_tx.send(verified).is_err() {
                    break; // the writer stopped; its error is reported below
                }
            }
            Ok(())
        });
        for verified in verified_rx {
            ledger.append_verified(&verified)?;
        }
        verifier
            .join()
            .map_err(|_| anyhow!("the verifier thread panicked"))?
    })?;
    let elapsed = started.elapsed();
    ensure!(
        ledger.len() == signed.len() as u64,
        "the bench ledger lost events"
    );
    Ok(elapsed)
}

fn time_verify(signed: &[SignedEvent], batch: usize) -> anyhow::Result<Duration> {
    let mut cache = KeyCache::new(1024);
    let started = Instant::now();
    for chunk in signed.chunks(batch) {
        let refusals = verify_batch(chunk, &mut cache);
        ensure!(refusals.is_empty(), "bench events failed verification");
    }
    Ok(started.elapsed())
}

fn sync_sled(db: &sled::Db, data_file: &File) -> anyhow::Result<()> {
    db.flush()?;
    data_file.sync_data()?;
    Ok(())
}

fn time_store_packed(dir: &Path, signed: &[SignedEvent], batch: usize) -> anyhow::Result<Duration> {
    let db = fabric_ledger::sled_config(dir).open()?;
    let data_file = File::open(dir.join("db"))?;
    let started = Instant::now();
    let mut seq = 0u64;
    let mut prev = Hash32::default();
    for chunk in signed.chunks(batch) {
        let mut writer = BlockWriter::new();
        for event in chunk {
            prev = writer.push(seq, &prev, event);
            seq += 1;
        }
        let mut sled_batch = sled::Batch::default();
        for (first_seq, block) in writer.finish() {
            sled_batch.insert(&block_key(first_seq), block);
        }
        db.apply_batch(sled_batch)?;
        sync_sled(&db, &data_file)?;
    }
    Ok(started.elapsed())
}

fn time_store_per_key(
    dir: &Path,
    signed: &[SignedEvent],
    batch: usize,
) -> anyhow::Result<Duration> {
    let db = fabric_ledger::sled_config(dir).open()?;
    let data_file = File::open(dir.join("db"))?;
    let started = Instant::now();
    let mut seq = 0u64;
    for chunk in signed.chunks(batch) {
        for event in chunk {
            let mut value = Vec::with_capacity(136 + event.signed.len());
            value.extend_from_slice(event.author.as_bytes());
            value.extend_from_slice(event.signature.as_bytes());
            value.extend_from_slice(&event.signed);
            db.insert(seq.to_be_bytes(), value)?;
            seq += 1;
        }
        sync_sled(&db, &data_file)?;
    }
    Ok(started.elapsed())
}

fn time_append(dir: &Path, signed: &[SignedEvent], batch: usize) -> anyhow::Result<Duration> {
    let ledger_key = derive_signing_key(BENCH_SEED, "bench/ledger");
    let mut ledger = Ledger::open(dir, ledger_key)?;
    let started = Instant::now();
    for chunk in signed.chunks(batch) {
        ledger.append(chunk)?;
    }
    let elapsed = started.elapsed();
    ensure!(
        ledger.len() == signed.len() as u64,
        "the bench ledger lost events"
    );
    Ok(elapsed)
}

/// Wall time a million-job run on 10,000 nodes should stay under.
const PLANETARY_WALL_S_TARGET: f64 = 120.0;
/// Router decision latency the 99th percentile should stay under.
const ROUTER_P99_NS_TARGET: f64 = 25_000.0;

/// The world of `--config` with `--nodes` nodes in all (else `default_nodes`, else the
/// configured ones).
fn bench_world(
    args: &BenchArgs,
    default_nodes: Option<usize>,
) -> anyhow::Result<fabric_actors::world::World> {
    let mut world = crate::config::load(&args.config)?;
    let nodes = args.nodes.or(default_nodes).unwrap_or(world.nodes.len());
    ensure!(
        nodes >= world.nodes.len(),
        "--nodes {nodes} is fewer than the {} nodes configured in {}",
        world.nodes.len(),
        args.config.display()
    );
    world.nodes = fabric_actors::workload::scale_nodes(&world, BENCH_SEED, nodes);
    Ok(world)
}

/// A temporary folder for the bench's ledgers, in `--dir` when given.
fn scratch_dir(args: &BenchArgs) -> anyhow::Result<tempfile::TempDir> {
    match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("could not create a temporary folder for the bench")
}

fn planetary_suite(args: &BenchArgs) -> anyhow::Result<SuiteReport> {
    let jobs = args
        .jobs
        .unwrap_or(if args.quick { 100_000 } else { 1_000_000 })
        .max(1);
    let world = bench_world(args, Some(10_000))?;
    let scratch = scratch_dir(args)?;
    let spec = fabric_actors::RunSpec {
        world,
        seed: BENCH_SEED,
        jobs,
        append_events_max: fabric_ledger::BATCH_EVENTS_MAX,
        owner_script: Vec::new(),
        byzantine: Vec::new(),
    };
    let ledger = Ledger::open(
        scratch.path().join("ledger"),
        fabric_actors::sim_ledger_key(BENCH_SEED),
    )?;
    let outcome = fabric_actors::run(&spec, ledger, |_| {}).context("the planetary run failed")?;
    let events = outcome.tree_head.tree_size as usize;
    ensure!(
        outcome.stop.drained(),
        "the bench run stopped early: {}",
        outcome.stop.describe()
    );

    // The bound of a fully signed run: every event is signed once and verified once, on all
    // cores. Measured here on intake events of the run's size.
    let sample = 20_000usize;
    let authors: Vec<SigningKey> = (0..BENCH_AUTHORS)
        .map(|i| derive_signing_key(BENCH_SEED, &format!("bench/author-{i}")))
        .collect();
    let plain: Vec<Event> = (0..sample as u64).map(bench_event).collect();
    let started = Instant::now();
    let signed: Vec<SignedEvent> = plain
        .par_iter()
        .enumerate()
        .map(|(i, event)| SignedEvent::sign(event, &authors[i % BENCH_AUTHORS]))
        .collect::<Result<_, _>>()?;
    let sign_us = per_event_us(started.elapsed(), sample);
    let verify_us = per_event_us(time_verify(&signed, 4096)?, sample);
    let crypto_bound = 1e6 / (sign_us + verify_us);

    let mut decision_ns = outcome.decision_ns.clone();
    decision_ns.sort_unstable();
    let quantile = |q: f64| crate::run::quantile_ns(&decision_ns, q) as f64;
    let (p50, p99) = (quantile(0.5), quantile(0.99));
    let wall_s = outcome.wall.as_secs_f64();
    let events_per_s = events as f64 / wall_s;
    let figures = vec![
        Figure {
            figure: "run wall time",
            value: wall_s,
            unit: "s",
            bound: Some(PLANETARY_WALL_S_TARGET),
            ratio: Some(wall_s / PLANETARY_WALL_S_TARGET),
            what: if wall_s <= PLANETARY_WALL_S_TARGET {
                "genesis to last append, every event signed, verified and fsynced; target <= 120 s: met"
            } else {
                "genesis to last append, every event signed, verified and fsynced; target <= 120 s: MISSED"
            },
        },
        Figure {
            figure: "events signed and stored",
            value: events_per_s,
            unit: "events/s",
            bound: Some(crypto_bound),
            ratio: Some(events_per_s / crypto_bound),
            what: "the run's events per second vs. 1 / (sign + batch verify, all cores, per event)",
        },
        Figure {
            figure: "jobs finished",
            value: outcome.state.metrics().finished() as f64 / wall_s,
            unit: "jobs/s",
            bound: None,
            ratio: None,
            what: "completed + failed jobs per second of wall time",
        },
        Figure {
            figure: "router decision p50",
            value: p50,
            unit: "ns",
            bound: None,
            ratio: None,
            what: "one assign / spill / wait decision (TickPlan::next_decision), median",
        },
        Figure {
            figure: "router decision p99",
            value: p99,
            unit: "ns",
            bound: Some(ROUTER_P99_NS_TARGET),
            ratio: Some(p99 / ROUTER_P99_NS_TARGET),
            what: if p99 <= ROUTER_P99_NS_TARGET {
                "99th percentile; target <= 25 us: met"
            } else {
                "99th percentile; target <= 25 us: MISSED"
            },
        },
        Figure {
            figure: "sign + verify per event",
            value: sign_us + verify_us,
            unit: "us/event",
            bound: None,
            ratio: None,
            what: "what bounds the run: ed25519 signing plus batch verification, all cores",
        },
    ];
    Ok(SuiteReport {
        suite: "planetary",
        events,
        batch_events: events / outcome.last_tick.max(1) as usize,
        repetitions: 1,
        adapter: None,
        figures,
    })
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

/// A kernel's throughput on the adapter against its CPU reference, after checking that both
/// gave the same output.
fn kernel_figure<T: PartialEq>(
    figure: &'static str,
    unit: &'static str,
    work_units: f64,
    gpu: (Duration, T),
    cpu: (Duration, T),
    what: &'static str,
) -> anyhow::Result<Figure> {
    ensure!(
        gpu.1 == cpu.1,
        "{figure}: the adapter and the CPU reference disagree"
    );
    let on_gpu = work_units / gpu.0.as_secs_f64();
    let on_cpu = work_units / cpu.0.as_secs_f64();
    Ok(Figure {
        figure,
        value: on_gpu,
        unit,
        bound: Some(on_cpu),
        ratio: Some(on_gpu / on_cpu),
        what,
    })
}

fn gpu_suite(args: &BenchArgs) -> anyhow::Result<SuiteReport> {
    use fabric_gpu_kernels::blake3_batch::{hash_batch, hash_batch_cpu};
    use fabric_gpu_kernels::embed::{embed, embed_cpu, Int8Matrix};
    use fabric_gpu_kernels::rerank::{rerank, rerank_cpu};
    use fabric_gpu_kernels::simulate::{simulate, simulate_cpu, Diffusion, Grid};
    use fabric_gpu_kernels::{Engine, GpuMode};
    use filler::ints;

    // The suite measures whatever adapter there is, a software one too (which `auto` leaves
    // alone in runs).
    let mode = match GpuMode::from_env()? {
        GpuMode::Off => GpuMode::Off,
        GpuMode::Auto | GpuMode::Require => GpuMode::Require,
    };
    let gpu = match fabric_gpu_kernels::device::shared(mode).ok().flatten() {
        Some(gpu) => gpu,
        None => anyhow::bail!(
            "bench gpu needs a GPU adapter and wgpu found none (FABRIC_GPU=off, or no Vulkan driver: on Debian, apt-get install mesa-vulkan-drivers libvulkan1)"
        ),
    };
    let engine = Engine::Gpu(gpu);
    let repetitions = if args.quick { 1 } else { 3 };
    let side = if args.quick { 256 } else { 1024 };
    let matrix = |salt: u64, rows: usize, cols: usize| {
        Int8Matrix::new(
            rows,
            cols,
            ints(salt, rows * cols).map(|v| v as i8).collect(),
        )
    };

    let a = matrix(1, side, side)?;
    let b = matrix(2, side, side)?;
    let ops = 2.0 * (side as f64).powi(3);
    let embed_figure = kernel_figure(
        "embed (int8 matmul)",
        "ops/s",
        ops,
        timed(repetitions, || Ok(embed(engine, &a, &b)?))?,
        timed(repetitions, || Ok(embed_cpu(&a, &b)))?,
        "n = k = m = side; 2·n·k·m multiply-adds per second, upload and readback included",
    )?;

    let (queries, corpus_rows, dims) = (side / 4, side * 16, 256);
    let q = matrix(3, queries, dims)?;
    let corpus = matrix(4, corpus_rows, dims)?;
    let rerank_figure = kernel_figure(
        "rerank (top 10)",
        "queries/s",
        queries as f64,
        timed(repetitions, || Ok(rerank(engine, &q, &corpus, 10)?))?,
        timed(repetitions, || Ok(rerank_cpu(&q, &corpus, 10)))?,
        "queries of 256 int8 against side·16 corpus rows, top 10 each",
    )?;

    let grid = Grid {
        h: side,
        w: side,
        cells: ints(5, side * side).map(|v| (v as i32) >> 4).collect(),
    };
    let diffusion = Diffusion {
        alpha: 3,
        shift: 4,
        steps: 20,
    };
    let simulate_figure = kernel_figure(
        "simulate (diffusion)",
        "cells/s",
        (side * side) as f64 * f64::from(diffusion.steps),
        timed(repetitions, || Ok(simulate(engine, &grid, &diffusion)?))?,
        timed(repetitions, || Ok(simulate_cpu(&grid, &diffusion)))?,
        "side × side grid, 20 steps; cell updates per second",
    )?;

    // Ledger entries: a few hundred bytes each, hashed in one batch.
    let entries: Vec<Vec<u8>> = (0..side as u64 * 64)
        .map(|i| ints(6 + i, 60).flat_map(u32::to_le_bytes).collect())
        .collect();
    let messages: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
    let bytes: usize = entries.iter().map(Vec::len).sum();
    let blake3_figure = kernel_figure(
        "blake3 (batch hashing)",
        "bytes/s",
        bytes as f64,
        timed(repetitions, || Ok(hash_batch(engine, &messages)?))?,
        timed(repetitions, || Ok(hash_batch_cpu(&messages)))?,
        "side·64 messages of 240 bytes (ledger-entry sized); digests equal to the blake3 crate's",
    )?;

    let figures = vec![embed_figure, rerank_figure, simulate_figure, blake3_figure];
    Ok(SuiteReport {
        suite: "gpu",
        events: side,
        batch_events: 0,
        repetitions,
        adapter: Some(gpu.adapter_name().to_owned()),
        figures,
    })
}

/// Deterministic filler for the GPU bench's inputs.
mod filler {
    /// `count` pseudo-random u32 from `salt` (splitmix64), the same on every run.
    pub fn ints(salt: u64, count: usize) -> impl Iterator<Item = u32> {
        let mut state = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..count).map(move |_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as u32
        })
    }
}

/// Ratio of restore times, long history over short with the same tail, that restores aim for.
const RESTORE_RATIO_TARGET: f64 = 1.5;

/// A finished planetary run of `jobs` jobs in `dir`, for the audit suite.
fn bench_run(world: &fabric_actors::world::World, jobs: u64, dir: &Path) -> anyhow::Result<Ledger> {
    let spec = fabric_actors::RunSpec {
        world: world.clone(),
        seed: BENCH_SEED,
        jobs,
        append_events_max: fabric_ledger::BATCH_EVENTS_MAX,
        owner_script: Vec::new(),
        byzantine: Vec::new(),
    };
    let ledger = Ledger::open(dir, fabric_actors::sim_ledger_key(BENCH_SEED))?;
    let outcome = fabric_actors::run(&spec, ledger, |_| {}).context("the bench run failed")?;
    Ok(outcome.ledger)
}

/// The checkpoint in the middle of `ledger`'s history and the one after it.
fn middle_checkpoints(ledger: &Ledger) -> anyhow::Result<(u64, u64)> {
    let checkpoints = ledger.reader().snapshot_sizes()?;
    ensure!(
        checkpoints.len() >= 2,
        "the bench run made fewer than two checkpoints: give it more jobs"
    );
    let middle = (checkpoints.len() - 1) / 2;
    Ok((checkpoints[middle], checkpoints[middle + 1]))
}

/// A restore point of `ledger`: `tail` entries (rounded up to the next signed tree head) past
/// the checkpoint in the middle of its history. Returns (checkpoint, point).
fn restore_point(ledger: &Ledger, tail: u64) -> anyhow::Result<(u64, u64)> {
    let (checkpoint, _) = middle_checkpoints(ledger)?;
    let point = ledger
        .reader()
        .tree_heads()?
        .into_iter()
        .map(|head| head.tree_size)
        .find(|size| *size >= checkpoint + tail)
        .ok_or_else(|| anyhow!("no signed tree head {tail} entries past the checkpoint"))?;
    Ok((checkpoint, point))
}

/// Half the distance between the middle checkpoints: a tail that ends before the next one.
fn checkpoint_gap(ledger: &Ledger) -> anyhow::Result<u64> {
    let (checkpoint, next) = middle_checkpoints(ledger)?;
    Ok((next - checkpoint) / 2)
}

fn audit_suite(args: &BenchArgs) -> anyhow::Result<SuiteReport> {
    let jobs = args
        .jobs
        .unwrap_or(if args.quick { 20_000 } else { 200_000 })
        .max(10);
    let repetitions = if args.quick { 1 } else { 3 };
    let world = bench_world(args, None)?;
    let scratch = scratch_dir(args)?;
    let long = bench_run(&world, jobs, &scratch.path().join("long"))?;
    let short = bench_run(&world, jobs / 10, &scratch.path().join("short"))?;
    let events = long.len() as usize;

    // The bound: batch verification of the same entries on every core, nothing else.
    let entries: Vec<fabric_events::Entry> = long
        .entries(0..long.len())
        .collect::<Result<_, _>>()
        .context("could not read the bench ledger")?;
    let (verify_time, ()) = timed(repetitions, || {
        let mut cache = KeyCache::new(1 << 16);
        for chunk in entries.chunks(crate::audit::AUDIT_CHUNK_ENTRIES) {
            ensure!(
                verify_batch(chunk, &mut cache).is_empty(),
                "a bench signature failed"
            );
        }
        Ok(())
    })?;
    drop(entries);
    let bound = events_per_s(verify_time, events);
    let (_, audit) = timed(repetitions, || {
        let report = crate::audit::audit_ledger(&long, "bench".to_owned(), 0)?;
        ensure!(report.ok, "the bench audit failed: {:?}", report.failure);
        Ok(report)
    })?;
    let audit_eps = audit.events_per_s;

    let tail = checkpoint_gap(&long)?.min(checkpoint_gap(&short)?);
    let mut restores = Vec::new();
    for ledger in [&short, &long] {
        let (checkpoint, point) = restore_point(ledger, tail)?;
        let reader = ledger.reader();
        let key = ledger.ledger_key();
        let (took, restored) = timed(repetitions, || {
            Ok(fabric_actors::restore_to(&reader, &key, point)?)
        })?;
        ensure!(
            restored.report.checkpoint_tree_size == Some(checkpoint),
            "the bench restore did not start at its checkpoint"
        );
        let snapshot_bytes = reader.snapshot(checkpoint)?.bytes.len();
        restores.push((took, point, point - checkpoint, snapshot_bytes));
    }
    let (short_ms, long_ms) = (
        restores[0].0.as_secs_f64() * 1e3,
        restores[1].0.as_secs_f64() * 1e3,
    );
    // What a restore without checkpoints costs: the whole long history folded from genesis.
    let (replay_time, ()) = timed(repetitions, || {
        let mut state = fabric_projections::State::new();
        for entry in long.entries(0..restores[1].1) {
            let entry = entry?;
            let _ = state.admit(&entry.author, &entry.event()?);
        }
        Ok(())
    })?;
    let ratio = long_ms / short_ms.max(1e-9);
    let figures = vec![
        Figure {
            figure: "audit",
            value: audit_eps,
            unit: "events/s",
            bound: Some(bound),
            ratio: Some(audit_eps / bound),
            what: if audit_eps >= TARGET_RATIO * bound {
                "fabric audit (signatures, links, roots, tree heads, states) vs. batch verify alone; target >= 0.8: met"
            } else {
                "fabric audit (signatures, links, roots, tree heads, states) vs. batch verify alone; target >= 0.8: MISSED"
            },
        },
        Figure {
            figure: "batch verify bound",
            value: bound,
            unit: "events/s",
            bound: None,
            ratio: None,
            what: "ed25519 batch verification of the same entries on every core, nothing else",
        },
        Figure {
            figure: "restore, short history",
            value: short_ms,
            unit: "ms",
            bound: None,
            ratio: None,
            what: "checkpoint + tail replay at a point of the short run (history and tail printed above)",
        },
        Figure {
            figure: "replay from genesis, long",
            value: replay_time.as_secs_f64() * 1e3,
            unit: "ms",
            bound: None,
            ratio: None,
            what: "for comparison: folding the long history up to its restore point from genesis",
        },
        Figure {
            figure: "restore, long history",
            value: long_ms,
            unit: "ms",
            bound: Some(short_ms * RESTORE_RATIO_TARGET),
            ratio: Some(ratio / RESTORE_RATIO_TARGET),
            what: if ratio <= RESTORE_RATIO_TARGET {
                "the same tail after a longer history (both printed above); target <= 1.5x the short restore: met"
            } else {
                "the same tail after a longer history (both printed above); target <= 1.5x the short restore: MISSED"
            },
        },
    ];
    if !args.json {
        println!(
            "restore points: short history {} entries (tail {}, snapshot {} bytes), long history {} entries (tail {}, snapshot {} bytes)",
            restores[0].1, restores[0].2, restores[0].3, restores[1].1, restores[1].2, restores[1].3
        );
    }
    Ok(SuiteReport {
        suite: "audit",
        events,
        batch_events: crate::audit::AUDIT_CHUNK_ENTRIES,
        repetitions,
        adapter: None,
        figures,
    })
}

/// Lag from append to JetStream acknowledgement that publication aims under, at the 99th
/// percentile.
const NATS_LAG_P99_MS_TARGET: f64 = 50.0;

/// A `nats-server` the bench started, stopped when dropped.
struct BenchNatsServer {
    child: std::process::Child,
    url: String,
}

impl BenchNatsServer {
    /// Starts `nats-server -js` on a free loopback port with its store in `dir`.
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let binary = ["nats-server", "/usr/sbin/nats-server"]
            .into_iter()
            .find(|candidate| {
                std::process::Command::new(candidate)
                    .arg("--version")
                    .output()
                    .is_ok_and(|output| output.status.success())
            })
            .ok_or_else(|| {
                anyhow!("nats-server is not installed (Debian: apt-get install nats-server); or pass --nats URL")
            })?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = std::process::Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("could not start {binary}"))?;
        let server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not listen on port {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for BenchNatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_suite(args: &BenchArgs) -> anyhow::Result<SuiteReport> {
    let jobs = args
        .jobs
        .unwrap_or(if args.quick { 20_000 } else { 100_000 })
        .max(1);
    let world = bench_world(args, None)?;
    let scratch = scratch_dir(args)?;
    let server = match &args.nats {
        Some(_) => None,
        None => Some(BenchNatsServer::start(&scratch.path().join("nats"))?),
    };
    let url = args
        .nats
        .clone()
        .or_else(|| server.as_ref().map(|server| server.url.clone()))
        .ok_or_else(|| anyhow!("no NATS server"))?;
    let spec = fabric_actors::RunSpec {
        world,
        seed: BENCH_SEED,
        jobs,
        append_events_max: fabric_ledger::BATCH_EVENTS_MAX,
        owner_script: Vec::new(),
        byzantine: Vec::new(),
    };
    let ledger_key = || fabric_actors::sim_ledger_key(BENCH_SEED);

    let plain = fabric_actors::run(
        &spec,
        Ledger::open(scratch.path().join("plain"), ledger_key())?,
        |_| {},
    )
    .context("the run without NATS failed")?;
    let events = plain.tree_head.tree_size as usize;
    let plain_eps = events_per_s(plain.wall, events);
    drop(plain);

    let ledger = Ledger::open(scratch.path().join("published"), ledger_key())?;
    let log: fabric_bus::outbox::Log = std::sync::Arc::new(|line: &str| eprintln!("{line}"));
    let outbox = fabric_bus::Outbox::start(ledger.reader(), &url, log)
        .with_context(|| format!("cannot publish on {url}"))?;
    let published = fabric_actors::run(&spec, ledger, |tick| outbox.durable(tick.events_total))
        .context("the run with NATS failed")?;
    let drain_started = Instant::now();
    let report = outbox.finish(Duration::from_secs(120))?;
    let drain = drain_started.elapsed();
    ensure!(
        report.published == published.tree_head.tree_size,
        "{} of {} events were published",
        report.published,
        published.tree_head.tree_size
    );
    let published_eps = events_per_s(published.wall, events);
    let mut lag_us = report.lag_us;
    lag_us.sort_unstable();
    let lag_ms = |quantile: f64| crate::run::quantile_ns(&lag_us, quantile) as f64 / 1e3;
    let (p50, p99) = (lag_ms(0.5), lag_ms(0.99));
    let ratio = published_eps / plain_eps;
    let figures = vec![
        Figure {
            figure: "run with --nats",
            value: published_eps,
            unit: "events/s",
            bound: Some(plain_eps),
            ratio: Some(ratio),
            what: if ratio >= 0.9 {
                "signed, stored and published vs. the same run without NATS; target >= 0.9: met"
            } else {
                "signed, stored and published vs. the same run without NATS; target >= 0.9: MISSED"
            },
        },
        Figure {
            figure: "publication lag p50",
            value: p50,
            unit: "ms",
            bound: None,
            ratio: None,
            what: "from the append's return (durable) to JetStream's acknowledgement, median",
        },
        Figure {
            figure: "publication lag p99",
            value: p99,
            unit: "ms",
            bound: Some(NATS_LAG_P99_MS_TARGET),
            ratio: Some(p99 / NATS_LAG_P99_MS_TARGET),
            what: if p99 <= NATS_LAG_P99_MS_TARGET {
                "99th percentile; target <= 50 ms: met"
            } else {
                "99th percentile; target <= 50 ms: MISSED"
            },
        },
        Figure {
            figure: "drain after the run",
            value: drain.as_secs_f64() * 1e3,
            unit: "ms",
            bound: None,
            ratio: None,
            what: "from the last append to the last acknowledgement",
        },
    ];
    Ok(SuiteReport {
        suite: "nats",
        events,
        batch_events: events / published.last_tick.max(1) as usize,
        repetitions: 1,
        adapter: None,
        figures,
    })
}
