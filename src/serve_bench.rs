//! `fabric bench serve`: `POST /v0/jobs` driven from this process against a `fabric serve`
//! child process on loopback, on many connections at once; accepted jobs per second and the
//! latency of an accepted submission (request sent to 202 read, which includes the wait for the
//! tick and its group commit), next to the ledger's ingest bound measured in the same run
//! (appends of pre-signed job events, batch verification on every core).
//!
//! Each connection signs with a client key of its own, registered beforehand through
//! `POST /v0/owner/commands` (approved by the seed's owners): one key's nonces must rise in
//! the order the ledger sees them, which one sequential connection per key guarantees.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use fabric_events::{
    derive_signing_key, Event, Hash32, JobSubmitted, OwnerAction, OwnerCommand, PublicKey, Role,
    SignedEvent, SigningKey,
};
use fabric_ledger::Ledger;
use serde_json::{json, Value};

use super::{BenchArgs, Figure, SuiteReport};
use crate::client::{job_request_body, JobSpec};
use crate::http_client::{Client, Target};

/// The seed of the served fabric (its owner and ledger keys).
const SERVE_BENCH_SEED: u64 = 0x5E_2026;
/// Tick interval of the served fabric.
const TICK_MS: u64 = 10;
/// Concurrent connections, each with a client key of its own.
const CONNECTIONS: usize = 256;
/// Events of the ingest-bound measurement.
const BOUND_EVENTS: usize = 65_536;

/// A `fabric serve` child, killed when dropped if it is still running.
struct ServeChild {
    child: Child,
    target: Target,
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(args: &BenchArgs, data: &std::path::Path) -> anyhow::Result<ServeChild> {
    let exe =
        std::env::current_exe().context("cannot find this program to start `fabric serve`")?;
    let mut child = Command::new(exe)
        .args(["serve", "--data"])
        .arg(data)
        .arg("--config")
        .arg(&args.config)
        .args([
            "--seed",
            &SERVE_BENCH_SEED.to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--tick-ms", &TICK_MS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("could not start `fabric serve`")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout of `fabric serve`"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut target = None;
    for line in lines.by_ref() {
        let line = line.context("could not read `fabric serve`'s output")?;
        if let Some(address) = line.strip_prefix("listening on ") {
            target = Some(Target::parse(address).map_err(|reason| anyhow!(reason))?);
        }
        if line.starts_with("data ") {
            break;
        }
    }
    // Keep reading (and dropping) its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let target = target.ok_or_else(|| anyhow!("`fabric serve` did not say where it listens"))?;
    Ok(ServeChild { child, target })
}

fn health(client: &mut Client) -> anyhow::Result<Value> {
    let response = client.request("GET", "/v0/health", None)?;
    ensure!(
        response.status == 200,
        "GET /v0/health: {}",
        response.status
    );
    Ok(serde_json::from_slice(&response.body)?)
}

fn wait_for_tick(client: &mut Client, tick: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = health(client)?["tick"].as_u64().unwrap_or(0);
        if now >= tick {
            return Ok(now);
        }
        ensure!(
            Instant::now() < deadline,
            "the served fabric does not reach tick {tick}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Registers one client key per connection, each by an owner command approved by the first
/// `threshold` owners of the seed.
fn register_clients(
    client: &mut Client,
    world: &fabric_actors::world::World,
    keys: &[SigningKey],
) -> anyhow::Result<()> {
    let owners: Vec<SigningKey> = (0..world.owners.threshold)
        .map(|index| fabric_actors::sim_owner_key(SERVE_BENCH_SEED, index))
        .collect();
    let tick = health(client)?["tick"].as_u64().unwrap_or(0);
    for (index, key) in keys.iter().enumerate() {
        let nonce = 1_000_000 + index as u64;
        let mut command = OwnerCommand {
            action: OwnerAction::RegisterClient {
                client: format!("bench.client-{index}"),
                key: PublicKey::from(&key.verifying_key()),
            },
            expiry_tick: tick + 100_000,
            approvals: Vec::new(),
        };
        for owner in &owners {
            command.approve(nonce, owner);
        }
        let body = serde_json::to_vec(&json!({"nonce": nonce, "command": command}))?;
        let response = client.request(
            "POST",
            "/v0/owner/commands",
            Some(("application/json", &body)),
        )?;
        ensure!(
            response.status == 202,
            "registering bench client {index}: {} {}",
            response.status,
            response.text()
        );
    }
    Ok(())
}

/// The ledger's ingest bound on this machine: pre-signed job events appended (verified on every
/// core, committed, synced) per second, in appends of 8,192.
fn ingest_bound(dir: &std::path::Path) -> anyhow::Result<f64> {
    let keys: Vec<SigningKey> = (0..CONNECTIONS)
        .map(|index| derive_signing_key(SERVE_BENCH_SEED, &format!("bench/bound/{index}")))
        .collect();
    let events: Vec<SignedEvent> = (0..BOUND_EVENTS as u64)
        .map(|index| {
            let event = Event::new(
                Role::Client,
                index / 1_000,
                index,
                JobSubmitted {
                    job: index,
                    shard: "earth".to_owned(),
                    workload: "bench@1".to_owned(),
                    skills: vec!["general".to_owned()],
                    duration_ticks: 3,
                    deadline_tick: index + 1_000,
                    budget_micros: 1_000_000,
                    input_hash: Hash32(*blake3::hash(&index.to_le_bytes()).as_bytes()),
                },
            );
            SignedEvent::sign(&event, &keys[index as usize % keys.len()])
                .map_err(|err| anyhow!("a bench event: {err}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut ledger = Ledger::open(
        dir,
        derive_signing_key(SERVE_BENCH_SEED, "bench/bound/ledger"),
    )?;
    let started = Instant::now();
    for chunk in events.chunks(8_192) {
        ledger.append(chunk)?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// Nearest-rank quantile of sorted latencies, in milliseconds.
fn quantile_ms(sorted: &[Duration], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// The `serve` suite.
pub(super) fn serve_suite(args: &BenchArgs) -> anyhow::Result<SuiteReport> {
    let scratch = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .context("could not create a temporary folder for the bench")?;
    let world = crate::config::load(&args.config)?;
    let Some(shard) = world.shards.first().map(|shard| shard.name.clone()) else {
        bail!("{} has no shard", args.config.display());
    };
    let skill = world
        .nodes
        .iter()
        .find(|node| node.region == shard)
        .and_then(|node| node.capabilities.first().cloned())
        .ok_or_else(|| anyhow!("shard {shard} has no node with a capability"))?;
    let duration = Duration::from_secs(if args.quick { 5 } else { 20 });

    let server = start_server(args, &scratch.path().join("served"))?;
    let mut control = Client::new(server.target.clone(), Duration::from_secs(30));
    wait_for_tick(&mut control, 1)?;
    let keys: Vec<SigningKey> = (0..CONNECTIONS)
        .map(|index| derive_signing_key(SERVE_BENCH_SEED, &format!("bench/client/{index}")))
        .collect();
    register_clients(&mut control, &world, &keys)?;
    let size_before = health(&mut control)?["ledger"]["size"]
        .as_u64()
        .unwrap_or(0);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = keys
        .into_iter()
        .enumerate()
        .map(|(connection, key)| {
            let (target, stop, shard, skill) = (
                server.target.clone(),
                Arc::clone(&stop),
                shard.clone(),
                skill.clone(),
            );
            std::thread::spawn(move || -> anyhow::Result<(Vec<Duration>, u64)> {
                let mut client = Client::new(target, Duration::from_secs(30));
                let tick = health(&mut client)?["tick"].as_u64().unwrap_or(0);
                let mut latencies = Vec::new();
                let mut refused = 0;
                for index in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let request_id = format!("bench-{connection}-{index}");
                    let job = JobSpec {
                        request_id: request_id.clone(),
                        shard: shard.clone(),
                        model_id: "bench".to_owned(),
                        model_version: "1".to_owned(),
                        skills: vec![skill.clone()],
                        duration_ticks: 2,
                        deadline_ticks: 1_000,
                        budget_micros: 1_000,
                        input_hash: Hash32(*blake3::hash(request_id.as_bytes()).as_bytes()),
                    };
                    let body = job_request_body(&job, &key, tick, index + 1)?;
                    let sent = Instant::now();
                    let response =
                        client.request("POST", "/v0/jobs", Some(("application/json", &body)))?;
                    if response.status == 202 {
                        latencies.push(sent.elapsed());
                    } else {
                        refused += 1;
                    }
                }
                Ok((latencies, refused))
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut refused = 0;
    for worker in workers {
        let (mut worker_latencies, worker_refused) = worker
            .join()
            .map_err(|_| anyhow!("a bench connection panicked"))??;
        latencies.append(&mut worker_latencies);
        refused += worker_refused;
    }
    let elapsed = started.elapsed();
    let size_after = health(&mut control)?["ledger"]["size"]
        .as_u64()
        .unwrap_or(0);
    drop(server);
    ensure!(
        refused == 0,
        "{refused} submissions were refused during the bench"
    );
    latencies.sort_unstable();
    let accepted = latencies.len();
    let jobs_per_s = accepted as f64 / elapsed.as_secs_f64();
    let events_per_s = size_after.saturating_sub(size_before) as f64 / elapsed.as_secs_f64();
    let bound = ingest_bound(&scratch.path().join("bound"))?;
    Ok(SuiteReport {
        suite: "serve",
        events: accepted,
        batch_events: 0,
        repetitions: 1,
        adapter: None,
        figures: vec![
            Figure {
                figure: "accepted jobs",
                value: jobs_per_s,
                unit: "jobs/s",
                bound: Some(bound),
                ratio: Some(jobs_per_s / bound),
                what: "POST /v0/jobs answered 202 per second, 256 connections on loopback, each job signed by its connection's key; bound = the ledger's ingest of pre-signed events (events/s)",
            },
            Figure {
                figure: "events appended by the server",
                value: events_per_s,
                unit: "events/s",
                bound: Some(bound),
                ratio: Some(events_per_s / bound),
                what: "the served log's growth during the load (submissions, assignments, receipts, heartbeats) vs. the ledger's ingest bound",
            },
            Figure {
                figure: "submission latency p50",
                value: quantile_ms(&latencies, 0.5),
                unit: "ms",
                bound: None,
                ratio: None,
                what: "request sent to 202 read: the wait for the next tick (10 ms ticks) and its group commit",
            },
            Figure {
                figure: "submission latency p99",
                value: quantile_ms(&latencies, 0.99),
                unit: "ms",
                bound: None,
                ratio: None,
                what: "as above, 99th percentile",
            },
        ],
    })
}
