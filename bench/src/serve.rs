//! `fabric bench serve`: `POST /v0/jobs` driven from this process against a `fabric serve`
//! child process on loopback, on many connections at once; accepted jobs per second and the
//! latency of an accepted submission (request sent to 202 read, which includes the wait for the
//! tick and its group commit), next to the bounds of suite `limits` measured in the same run:
//! the ledger's ingest of pre-signed events, and the signature work every served job needs.
//!
//! The served fabric is made by the genesis ceremony, as an operator makes one: `fabric keygen`
//! for the owners and `--world` for the operator's keys, `fabric init`, `fabric owner sign` by
//! M owners, `fabric init --commit`, then `fabric serve` with the operator's key files. Each
//! connection signs with a fresh client key of its own, registered beforehand through
//! `POST /v0/owner/commands` (approved by M owners): one key's nonces must rise in the order
//! the ledger sees them, which one sequential connection per key guarantees.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use fabric_api::http_client::{Client, Target};
use fabric_api::job::{job_batch_body, job_request_body, JobBatchAnswer, JobSpec};
use fabric_events::{keys, Hash32, OwnerAction, OwnerCommand, PublicKey, SigningKey};
use serde_json::{json, Value};

use super::{scratch_dir, verdict, Against, Bench, Figure, SuiteReport};

/// Tick interval of the served fabric.
const TICK_MS: u64 = 10;
/// Concurrent connections, each with a client key of its own.
const CONNECTIONS: usize = 256;
/// Share of the signature-work bound the served fabric aims for: the HTTP parsing, the JSON,
/// the gate and the actors share the same cores.
const CRYPTO_RATIO_TARGET: f64 = 0.5;
/// How many ticks old a bench job's signed tick may be: a client signs the tick of its last
/// answer, and 10 ms ticks pass quickly on a loaded machine; the window is the server's policy,
/// not what the bench measures.
pub(super) const SUBMISSION_TICK_WINDOW: &str = "100";
/// Submission latency the 99th percentile aims under: ten ticks.
const LATENCY_MS_P99_TARGET: f64 = 10.0 * TICK_MS as f64;

/// A `fabric serve` child, killed when dropped if it is still running.
pub(super) struct ServeChild {
    child: Child,
    pub(super) target: Target,
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `fabric` executable next to this one, which `fabric serve` is started from.
pub(super) fn fabric_exe() -> anyhow::Result<std::path::PathBuf> {
    let bench = std::env::current_exe()
        .context("cannot find this program, to start the `fabric` next to it")?;
    let exe = bench.with_file_name(format!("fabric{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        exe.is_file(),
        "suite serve starts `fabric serve` from the `fabric` executable next to this one, and \
         {} does not exist: build both (`cargo build --release -p fabric -p fabric-bench`) or \
         install both (`cargo install --path . && cargo install --path bench`)",
        exe.display()
    );
    Ok(exe)
}

/// The keys and data folder of a fabric made by the ceremony.
pub(super) struct Ceremony {
    pub(super) data: PathBuf,
    pub(super) operator: PathBuf,
    /// The owners that approve (the first M).
    pub(super) approvers: Vec<SigningKey>,
}

/// Runs `fabric ARGS` to its end; an error with its stderr when it fails.
fn fabric(args: &[&OsStr]) -> anyhow::Result<()> {
    let output = Command::new(fabric_exe()?)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("could not run `fabric`")?;
    ensure!(
        output.status.success(),
        "`fabric {}` failed: {}",
        args.iter()
            .map(|arg| arg.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The genesis ceremony in `scratch`, through the CLI: the owners' keys, the operator's keys
/// of the world, `fabric init` (with `extra_init` arguments), M approvals, `fabric init
/// --commit`.
pub(super) fn ceremony(
    config: Option<&Path>,
    world: &fabric_actors::world::World,
    scratch: &Path,
    extra_init: &[&OsStr],
) -> anyhow::Result<Ceremony> {
    let operator = scratch.join("operator");
    let data = scratch.join("served");
    let config: Vec<&OsStr> = config
        .iter()
        .flat_map(|config| [OsStr::new("--config"), config.as_os_str()])
        .collect();
    let mut keygen_world = vec![OsStr::new("keygen"), OsStr::new("--world")];
    keygen_world.extend(&config);
    keygen_world.extend([OsStr::new("--out"), operator.as_os_str()]);
    fabric(&keygen_world)?;
    let owners: Vec<PathBuf> = (0..world.owners.count)
        .map(|index| scratch.join(format!("owner-{index}.key")))
        .collect();
    let owner_pubs: Vec<PathBuf> = owners
        .iter()
        .map(|owner| keys::public_path(owner))
        .collect();
    for owner in &owners {
        fabric(&[OsStr::new("keygen"), OsStr::new("--out"), owner.as_os_str()])?;
    }
    let threshold = world.owners.threshold.to_string();
    let (ledger_key, routers, nodes) = (
        operator.join("ledger.key"),
        operator.join("routers"),
        operator.join("nodes"),
    );
    let mut init: Vec<&OsStr> = vec![OsStr::new("init"), OsStr::new("--data"), data.as_os_str()];
    init.extend(&config);
    init.extend([OsStr::new("--threshold"), OsStr::new(&threshold)]);
    init.extend([OsStr::new("--ledger-key"), ledger_key.as_os_str()]);
    init.extend([OsStr::new("--router-keys"), routers.as_os_str()]);
    init.extend([OsStr::new("--node-keys"), nodes.as_os_str()]);
    for owner in &owner_pubs {
        init.extend([OsStr::new("--owner"), owner.as_os_str()]);
    }
    init.extend(extra_init);
    fabric(&init)?;
    let commands = data.join("genesis-commands.json");
    let approving = &owners[..world.owners.threshold as usize];
    for owner in approving {
        fabric(&[
            OsStr::new("owner"),
            OsStr::new("sign"),
            commands.as_os_str(),
            OsStr::new("--key"),
            owner.as_os_str(),
        ])?;
    }
    fabric(&[
        OsStr::new("init"),
        OsStr::new("--commit"),
        OsStr::new("--data"),
        data.as_os_str(),
        OsStr::new("--ledger-key"),
        ledger_key.as_os_str(),
    ])?;
    let approvers = approving
        .iter()
        .map(|owner| {
            keys::load_secret(owner).with_context(|| format!("owner key {}", owner.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Ceremony {
        data,
        operator,
        approvers,
    })
}

/// Starts `fabric serve` on the ceremony's fabric with ticks of `tick_ms` and `extra`
/// arguments.
pub(super) fn start_server(
    ceremony: &Ceremony,
    tick_ms: u64,
    extra: &[&str],
) -> anyhow::Result<ServeChild> {
    let exe = fabric_exe()?;
    let mut child = Command::new(exe)
        .args(["serve", "--data"])
        .arg(&ceremony.data)
        .arg("--ledger-key")
        .arg(ceremony.operator.join("ledger.key"))
        .arg("--router-keys")
        .arg(ceremony.operator.join("routers"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--tick-ms", &tick_ms.to_string()])
        .args(extra)
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

pub(super) fn health(client: &mut Client) -> anyhow::Result<Value> {
    let response = client.request("GET", "/v0/health", None)?;
    ensure!(
        response.status == 200,
        "GET /v0/health: {}",
        response.status
    );
    Ok(serde_json::from_slice(&response.body)?)
}

pub(super) fn wait_for_tick(client: &mut Client, tick: u64) -> anyhow::Result<u64> {
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

/// Registers one client key per connection, each by an owner command approved by M owners.
pub(super) fn register_clients(
    client: &mut Client,
    owners: &[SigningKey],
    keys: &[SigningKey],
) -> anyhow::Result<()> {
    let tick = health(client)?["tick"].as_u64().unwrap_or(0);
    for (index, key) in keys.iter().enumerate() {
        let action = OwnerAction::RegisterClient {
            client: format!("bench.client-{index}"),
            key: PublicKey::from(&key.verifying_key()),
        };
        let what = format!("registering bench client {index}");
        owner_command(
            client,
            owners,
            (1_000_000 + index as u64, tick),
            action,
            &what,
        )?;
    }
    register_model(client, owners, tick)
}

/// Posts `action` approved by `owners` under `nonce`, valid for a long while after `tick`;
/// an error naming `what` unless it is executed.
pub(super) fn owner_command(
    client: &mut Client,
    owners: &[SigningKey],
    (nonce, tick): (u64, u64),
    action: OwnerAction,
    what: &str,
) -> anyhow::Result<()> {
    let mut command = OwnerCommand {
        action,
        expiry_tick: tick + 100_000,
        approvals: Vec::new(),
    };
    for owner in owners {
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
        "{what}: {} {}",
        response.status,
        response.text()
    );
    Ok(())
}

/// The model the bench's jobs name (`bench@1`, an `encode_state` model): a fabric of node
/// agents takes jobs of registered models only.
fn register_model(client: &mut Client, owners: &[SigningKey], tick: u64) -> anyhow::Result<()> {
    let nonce = 2_000_000;
    let job_type = fabric_events::JobType::EncodeState;
    let mut weights = vec![0u8; job_type.weights_bytes()];
    blake3::Hasher::new()
        .update(b"bench weights")
        .finalize_xof()
        .fill(&mut weights);
    let action = OwnerAction::RegisterModel {
        registration: fabric_events::ModelRegistered {
            model_id: "bench".to_owned(),
            model_version: "1".to_owned(),
            job_type,
            weights,
        },
    };
    owner_command(
        client,
        owners,
        (nonce, tick),
        action,
        "registering the bench model",
    )
}

/// The input of a bench job: 1,024 bytes (an `encode_state` state) drawn from its request id.
fn bench_input(request_id: &str) -> Vec<u8> {
    let mut input = vec![0u8; fabric_events::JobType::EncodeState.input_bytes()];
    blake3::Hasher::new()
        .update(request_id.as_bytes())
        .finalize_xof()
        .fill(&mut input);
    input
}

/// The shard served jobs go to (the world's first) and a skill a node of it has.
pub(super) fn served_shard(
    world: &fabric_actors::world::World,
    config: Option<&Path>,
) -> anyhow::Result<(String, String)> {
    let Some(shard) = world.shards.first().map(|shard| shard.name.clone()) else {
        bail!("{} has no shard", fabric_config::origin(config).display());
    };
    let skill = world
        .nodes
        .iter()
        .find(|node| node.region == shard)
        .and_then(|node| node.capabilities.first().cloned())
        .ok_or_else(|| anyhow!("shard {shard} has no node with a capability"))?;
    Ok((shard, skill))
}

/// `POST /v0/jobs/batch` of `bodies` (each a job's request body): the answer, or an error
/// when the batch as a whole is refused.
pub(super) fn post_batch(http: &mut Client, bodies: &[Vec<u8>]) -> anyhow::Result<JobBatchAnswer> {
    let body = job_batch_body(bodies);
    let response = http.request("POST", "/v0/jobs/batch", Some(("application/json", &body)))?;
    ensure!(
        response.status == 200,
        "a batch was refused: {} {}",
        response.status,
        response.text()
    );
    Ok(serde_json::from_slice(&response.body)?)
}

/// Nearest-rank quantile of sorted latencies, in milliseconds (0 without any).
pub(super) fn quantile_ms(sorted: &[Duration], quantile: f64) -> f64 {
    fabric_reports::stats::nearest_rank(sorted, quantile)
        .map_or(0.0, |latency| latency.as_secs_f64() * 1e3)
}

/// The `serve` suite.
pub(super) fn suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let args = bench.args;
    let scratch = scratch_dir(args)?;
    let world = fabric_config::load(args.config.as_deref())?;
    let (shard, skill) = served_shard(&world, args.config.as_deref())?;
    let duration = Duration::from_secs(if args.quick { 5 } else { 20 });

    let ceremony = ceremony(args.config.as_deref(), &world, scratch.path(), &[])?;
    let server = start_server(
        &ceremony,
        TICK_MS,
        &["--submission-tick-window", SUBMISSION_TICK_WINDOW],
    )?;
    let mut control = Client::new(server.target.clone(), Duration::from_secs(30));
    wait_for_tick(&mut control, 1)?;
    let keys: Vec<SigningKey> = (0..CONNECTIONS).map(|_| keys::generate()).collect();
    register_clients(&mut control, &ceremony.approvers, &keys)?;
    let size_before = health(&mut control)?["ledger"]["size"]
        .as_u64()
        .unwrap_or(0);

    let (mut latencies, refused, elapsed) = load(&server.target, keys, &shard, &skill, duration)?;
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
    let (p50, p99) = (quantile_ms(&latencies, 0.5), quantile_ms(&latencies, 0.99));
    let limits = bench.limits()?;
    let ingest_bound = limits.presigned_bound();
    // Every served job is signed once by its client and verified once, in its tick's batch
    // (the ledger does not verify it again), on the same cores.
    let crypto_bound =
        limits.cores as f64 * 1e6 / (limits.sign.one_core_us + limits.batch_verify.one_core_us);
    Ok(SuiteReport {
        suite: "serve",
        events: accepted,
        batch_events: 0,
        repetitions: 1,
        adapter: None,
        notes: vec![format!(
            "{CONNECTIONS} connections for {} s, {TICK_MS} ms ticks; {accepted} jobs accepted",
            duration.as_secs()
        )],
        figures: figures(
            jobs_per_s,
            events_per_s,
            (p50, p99),
            crypto_bound,
            ingest_bound,
        ),
    })
}

/// Every connection submits jobs as fast as its answers come, for `duration`: the latency of
/// each accepted job, the refusals, and the time it took.
fn load(
    target: &Target,
    keys: Vec<SigningKey>,
    shard: &str,
    skill: &str,
    duration: Duration,
) -> anyhow::Result<(Vec<Duration>, u64, Duration)> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = keys
        .into_iter()
        .enumerate()
        .map(|(connection, key)| {
            let (target, stop, shard, skill) = (
                target.clone(),
                Arc::clone(&stop),
                shard.to_owned(),
                skill.to_owned(),
            );
            std::thread::spawn(move || {
                connection_load(target, &stop, &shard, &skill, connection, &key)
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
    Ok((latencies, refused, started.elapsed()))
}

/// One connection's submissions until `stop`: the latency of each accepted job, and the
/// refusals.
fn connection_load(
    target: Target,
    stop: &AtomicBool,
    shard: &str,
    skill: &str,
    connection: usize,
    key: &SigningKey,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let mut client = Client::new(target, Duration::from_secs(30));
    // A client signs the newest tick it saw (the server refuses one older than its window):
    // each 202 names the tick its job was sequenced at.
    let mut tick = health(&mut client)?["tick"].as_u64().unwrap_or(0);
    let mut latencies = Vec::new();
    let mut refused = 0;
    for index in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let request_id = format!("bench-{connection}-{index}");
        let input = bench_input(&request_id);
        let job = JobSpec {
            request_id: request_id.clone(),
            shard: shard.to_owned(),
            model_id: "bench".to_owned(),
            model_version: "1".to_owned(),
            skills: vec![skill.to_owned()],
            duration_ticks: 2,
            deadline_ticks: 1_000,
            budget_micros: 1_000,
            input_hash: Hash32(*blake3::hash(&input).as_bytes()),
        };
        let body = job_request_body(&job, key, tick, index + 1, Some(&input))?;
        let sent = Instant::now();
        let response = client.request("POST", "/v0/jobs", Some(("application/json", &body)))?;
        if response.status == 202 {
            latencies.push(sent.elapsed());
            let answer: Value = serde_json::from_slice(&response.body)?;
            tick = answer["tick"].as_u64().unwrap_or(tick);
        } else {
            refused += 1;
            tick = health(&mut client)?["tick"].as_u64().unwrap_or(tick);
        }
    }
    Ok((latencies, refused))
}

/// The suite's figures, each against its bound or target.
fn figures(
    jobs_per_s: f64,
    events_per_s: f64,
    (p50, p99): (f64, f64),
    crypto_bound: f64,
    ingest_bound: f64,
) -> Vec<Figure> {
    vec![
        Figure::new(
            "accepted jobs",
            jobs_per_s,
            "jobs/s",
            (Against::Bound, crypto_bound),
            format!(
                "POST /v0/jobs answered 202 (durable) per second vs. the signature work of \
             a served job on every core (client sign + batch verify); \
             target >= {CRYPTO_RATIO_TARGET}: {}",
                verdict(jobs_per_s >= CRYPTO_RATIO_TARGET * crypto_bound)
            ),
        ),
        Figure::new(
            "accepted jobs vs ingest",
            jobs_per_s,
            "jobs/s",
            (Against::Bound, ingest_bound),
            "the same next to the ledger's ingest bound of pre-signed events (limits)",
        ),
        Figure::new(
            "events appended by the server",
            events_per_s,
            "events/s",
            (Against::Bound, ingest_bound),
            "the served log's growth during the load (submissions with their 1,024-byte \
         inputs, assignments; no node agent runs them) vs. the ledger's ingest bound",
        ),
        Figure::new(
            "submission latency p50",
            p50,
            "ms",
            (Against::Target, LATENCY_MS_P99_TARGET),
            "request sent to 202 read: the wait for the next tick and its group commit; \
         next to the p99 target",
        ),
        Figure::new(
            "submission latency p99",
            p99,
            "ms",
            (Against::Target, LATENCY_MS_P99_TARGET),
            format!(
                "99th percentile; target <= {LATENCY_MS_P99_TARGET} ms (ten ticks): {}",
                verdict(p99 <= LATENCY_MS_P99_TARGET)
            ),
        ),
    ]
}
