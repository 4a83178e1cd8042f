//! `fabric bench nodes`: model jobs end to end through node agents over NATS on loopback —
//! submitted over HTTP with their inputs, assigned, verified by K `fabric node` processes, run
//! in their sandboxed executors, and their receipts durable in the log — against Celery 5 with
//! Redis running the same jobs on the same number of worker processes (suite `celery`'s
//! measurement), and against the signature work of a job, measured in the same run.
//!
//! The fabric is made by the ceremony (one shard, K nodes), served with `--nats`; one model per
//! job type is registered by owner command. Jobs/s runs from the first submission to the last
//! receipt in the log; a job's latency from its submission to its receipt being seen in the
//! log (read every few milliseconds). Every output is downloaded and checked against the CPU
//! reference.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use fabric_api::http_client::{Client, Target};
use fabric_api::job::{job_id_of, job_request_body, JobSpec};
use fabric_events::{keys, Hash32, JobType, ModelRegistered, OwnerAction, SigningKey};
use fabric_gpu_kernels::models::ModelJob;
use serde_json::Value;

use super::model_jobs::ModelJobs;
use super::nats::BenchNatsServer;
use super::serve::{
    ceremony, fabric_exe, health, owner_command, post_batch, quantile_ms, register_clients,
    start_server, wait_for_tick, SUBMISSION_TICK_WINDOW,
};
use super::{scratch_dir, verdict, Against, Bench, Figure, SuiteReport};

/// Milliseconds between the fabric's ticks. A job takes several ticks from its submission to
/// its receipt (sequenced; assigned; its receipt sequenced; each answer sent once its tick is
/// durable): 5-ms ticks keep the nodes fed with a shorter pipeline than the serve suite's
/// 10 ms, with which runs here measured about a tenth fewer jobs per second and left a sixth
/// of the CPU idle.
const TICK_MS: u64 = 5;
/// Client connections submitting at once, each with a key of its own and one batch waiting
/// for its tick: 256 jobs being submitted at most, enough to keep the nodes busy at 5-ms
/// ticks (more only lengthen the queue and the latency).
const CLIENTS: usize = 4;
/// Jobs per `POST /v0/jobs/batch`, as a client with much to submit would send them.
const JOBS_PER_BATCH: usize = 64;
/// What Fabric aims for against the peer: ten times its jobs per second.
const PEER_RATIO_TARGET: f64 = 10.0;
/// Share of the signature-work bound Fabric aims for.
const CRYPTO_RATIO_TARGET: f64 = 0.5;
/// Signatures made, and verified, per job end to end: the client's submission, the router's
/// assignment, the node's receipt (each verified by the server, or by the node).
const SIGNATURES_PER_JOB: f64 = 3.0;
/// How long the run may take before it counts as stuck.
const RUN_DEADLINE_S: u64 = 600;

/// A world of one shard and `nodes` nodes for the bench.
fn world_toml(nodes: usize) -> String {
    let mut text = String::from(
        "[shards.bench]\nqueue_budget = 1000000\nlatency_budget_ms = 1000\nspillover = []\n\
         specialties = [\"models\"]\n\n[shards.bench.treaty]\nreputation_floor_ppm = 0\n\
         regions_served = [\"bench\"]\nnode_quota_jobs = 100000000\nquota_window_ticks = 100\n\n",
    );
    for index in 0..nodes {
        text.push_str(&format!(
            "[[nodes]]\nname = \"bench.node-{index}\"\nregion = \"bench\"\ncapacity = 512\n\
             max_concurrency = 512\nheartbeat_interval_ticks = 100\ncapabilities = [\"models\"]\n\
             latency_ms = 1\nprice_micros_per_hour = 1000000\nreputation_ppm = 990000\n\n"
        ));
    }
    text.push_str(
        "[workload]\nload_percent = 10\n\n[[workload.kinds]]\nname = \"models.run\"\n\
         shard = \"bench\"\nweight = 1\nskills = [\"models\"]\nduration_ticks_min = 1\n\
         duration_ticks_max = 1\ndeadline_slack_ticks = 100000\nbudget_micros = 1000\n\
         failure_ppm = 0\n\n[failures]\nepoch_ticks = 200\noutage_ppm = 0\n\
         outage_heartbeats_min = 1\noutage_heartbeats_max = 1\n\n[checkpoints]\n\
         interval_ticks = 1000\n\n[owners]\ncount = 3\nthreshold = 2\n\n[verification]\n\
         fraction_ppm = 0\n",
    );
    text
}

/// How much of a failed node's stderr an error quotes (its end), in characters.
const NODE_WORDS_CHARS_MAX: usize = 2_000;

/// The `fabric node` processes, killed when dropped.
struct NodeChildren(Vec<Child>);

impl Drop for NodeChildren {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts one `fabric node` per node key of `operator/nodes`, each in a key folder of its own.
fn start_nodes(
    operator: &Path,
    scratch: &Path,
    nats: &str,
    genesis: &Path,
    count: usize,
) -> anyhow::Result<NodeChildren> {
    let mut children = NodeChildren(Vec::new());
    for index in 0..count {
        let name = format!("bench.node-{index}");
        let dir = scratch.join(format!("node-{index}"));
        std::fs::create_dir_all(&dir)?;
        let key = dir.join(format!("{name}.key"));
        // A copy keeps the key file's mode (0600).
        std::fs::copy(operator.join("nodes").join(format!("{name}.key")), &key)?;
        // What the node says goes to a file of its own: its last words name why it stopped.
        let said = scratch.join(format!("node-{index}.stderr"));
        let mut child = Command::new(fabric_exe()?)
            .args(["node", "--nats", nats, "--genesis"])
            .arg(genesis)
            .arg("--key-dir")
            .arg(&dir)
            .args(["--executors", "1"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&said)?)
            .spawn()
            .context("could not start `fabric node`")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout of `fabric node`"))?;
        children.0.push(child);
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.starts_with("node ready"));
        if !ready {
            let words = std::fs::read_to_string(&said).unwrap_or_default();
            let tail = words
                .char_indices()
                .rev()
                .nth(NODE_WORDS_CHARS_MAX - 1)
                .map_or(words.as_str(), |(at, _)| &words[at..]);
            bail!(
                "`fabric node` for {name} exited before it was ready: {}",
                tail.trim()
            );
        }
        std::thread::spawn(move || for _ in lines {});
    }
    Ok(children)
}

/// Registers the bench's model of each job type, `<job type>@1`, approved by the owners.
fn register_models(
    client: &mut Client,
    owners: &[SigningKey],
    jobs: &ModelJobs,
) -> anyhow::Result<()> {
    let tick = health(client)?["tick"].as_u64().unwrap_or(0);
    for (index, job) in ModelJob::ALL.into_iter().enumerate() {
        let job_type =
            JobType::from_name(job.name()).ok_or_else(|| anyhow!("no job type {}", job.name()))?;
        let action = OwnerAction::RegisterModel {
            registration: ModelRegistered {
                model_id: model_id(job),
                model_version: "1".to_owned(),
                job_type,
                weights: jobs.weights(job).to_vec(),
            },
        };
        let what = format!("registering the model of {}", job.name());
        owner_command(
            client,
            owners,
            (3_000_000 + index as u64, tick),
            action,
            &what,
        )?;
    }
    Ok(())
}

fn model_id(job: ModelJob) -> String {
    job.name().replace('_', "-")
}

/// What the run measured.
struct NodesRun {
    jobs_per_s: f64,
    latencies: Vec<Duration>,
}

/// Submits every job (client `c` takes jobs `c`, `c + CLIENTS`, …) while a watcher follows
/// the receipts the fabric publishes on NATS until each job has its receipt.
fn run(
    target: &Target,
    nats_url: &str,
    keys: &[SigningKey],
    jobs: &ModelJobs,
) -> anyhow::Result<NodesRun> {
    let mut control = Client::new(target.clone(), Duration::from_secs(30));
    let expected: HashSet<u64> = (0..jobs.len())
        .map(|index| job_id_of(&format!("nodes-{index}")))
        .collect();
    // Subscribed before the first submission, so that no receipt is published unseen.
    let watch = ReceiptWatch::subscribe(nats_url)?;
    let gave_up = AtomicBool::new(false);
    let started = Instant::now();
    let (submitted, finished) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch.until_all(&expected, &gave_up));
        let handles: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(client, key)| scope.spawn(move || submit_share(target, key, jobs, client)))
            .collect();
        let submitted = handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow!("a client thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<Vec<_>>>>()
            .map(|shares| shares.into_iter().flatten().collect::<Vec<_>>());
        if submitted.is_err() {
            gave_up.store(true, Ordering::Relaxed);
        }
        let finished = watcher
            .join()
            .map_err(|_| anyhow!("the receipt watcher panicked"))
            .and_then(|finished| finished);
        anyhow::Ok((submitted?, finished?))
    })?;
    let submitted_at: HashMap<u64, Instant> = submitted.into_iter().collect();
    let last = finished.values().max().copied().unwrap_or(started);
    let mut latencies: Vec<Duration> = finished
        .iter()
        .map(|(job, at)| at.saturating_duration_since(submitted_at[job]))
        .collect();
    latencies.sort_unstable();
    check_outputs(&mut control, jobs)?;
    Ok(NodesRun {
        jobs_per_s: jobs.len() as f64 / last.duration_since(started).as_secs_f64(),
        latencies,
    })
}

/// One client's share of the jobs, in batches of [`JOBS_PER_BATCH`], each job signed at the
/// tick last seen: job id and submission instant of each.
fn submit_share(
    target: &Target,
    key: &SigningKey,
    jobs: &ModelJobs,
    client: usize,
) -> anyhow::Result<Vec<(u64, Instant)>> {
    let mut http = Client::new(target.clone(), Duration::from_secs(60));
    let mut tick = health(&mut http)?["tick"].as_u64().unwrap_or(0);
    let mut out = Vec::new();
    let share: Vec<usize> = (client..jobs.len()).step_by(CLIENTS).collect();
    for batch in share.chunks(JOBS_PER_BATCH) {
        let mut bodies = Vec::with_capacity(batch.len());
        for &index in batch {
            let (job, input) = jobs.job(index);
            let spec = JobSpec {
                request_id: format!("nodes-{index}"),
                shard: "bench".to_owned(),
                model_id: model_id(job),
                model_version: "1".to_owned(),
                skills: vec!["models".to_owned()],
                duration_ticks: 1,
                deadline_ticks: 100_000,
                budget_micros: 1_000,
                input_hash: Hash32(*blake3::hash(input).as_bytes()),
            };
            let nonce = out.len() + bodies.len() + 1;
            bodies.push(job_request_body(
                &spec,
                key,
                tick,
                nonce as u64,
                Some(input),
            )?);
        }
        let sent = Instant::now();
        let answer = post_batch(&mut http, &bodies)?;
        for (item, &index) in answer.results.iter().zip(batch) {
            let accepted = item.accepted.as_ref().ok_or_else(|| {
                anyhow!("job {index} was refused: {} {:?}", item.status, item.error)
            })?;
            tick = tick.max(accepted.tick);
            out.push((job_id_of(&format!("nodes-{index}")), sent));
        }
    }
    Ok(out)
}

/// The receipts the fabric publishes on NATS once they are durable (docs/FORMAT.md §12:
/// `fabric.events.<region>.job_receipt`, each an export line), followed on a runtime of its
/// own. A client waiting for results follows them so; polling `GET /v0/events` would cost the
/// server an export line per event of the log besides the outbox's.
struct ReceiptWatch {
    runtime: tokio::runtime::Runtime,
    receipts: async_nats::Subscriber,
}

impl ReceiptWatch {
    fn subscribe(url: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let receipts = runtime.block_on(async {
            let client = async_nats::connect(url).await?;
            let receipts = client.subscribe("fabric.events.*.job_receipt").await?;
            // The subscription is in force at the server once the flush returns.
            client.flush().await?;
            anyhow::Ok(receipts)
        })?;
        Ok(Self { runtime, receipts })
    }

    /// When each job of `submitted` was seen with its completed receipt.
    fn until_all(
        mut self,
        submitted: &HashSet<u64>,
        gave_up: &AtomicBool,
    ) -> anyhow::Result<HashMap<u64, Instant>> {
        use futures_util::StreamExt as _;
        let deadline = Instant::now() + Duration::from_secs(RUN_DEADLINE_S);
        let mut finished = HashMap::new();
        while finished.len() < submitted.len() {
            ensure!(
                Instant::now() < deadline,
                "{} of {} jobs had their receipt within {RUN_DEADLINE_S} s",
                finished.len(),
                submitted.len()
            );
            ensure!(
                !gave_up.load(Ordering::Relaxed),
                "the clients stopped submitting"
            );
            let receipts = &mut self.receipts;
            let next = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_millis(100), receipts.next()).await
            });
            let message = match next {
                Err(_) => continue,
                Ok(None) => bail!("the NATS connection closed"),
                Ok(Some(message)) => message,
            };
            let now = Instant::now();
            let line: ReceiptLine = serde_json::from_slice(&message.payload)?;
            let data = line.body.data;
            if !submitted.contains(&data.job) {
                continue;
            }
            ensure!(data.outcome == "completed", "job {} failed", data.job);
            finished.entry(data.job).or_insert(now);
        }
        Ok(finished)
    }
}

/// What the watcher reads of a receipt's export line.
#[derive(serde::Deserialize)]
struct ReceiptLine<'a> {
    #[serde(borrow)]
    body: ReceiptBody<'a>,
}

#[derive(serde::Deserialize)]
struct ReceiptBody<'a> {
    #[serde(borrow)]
    data: ReceiptData<'a>,
}

#[derive(serde::Deserialize)]
struct ReceiptData<'a> {
    job: u64,
    #[serde(borrow)]
    outcome: std::borrow::Cow<'a, str>,
}

/// Every output, downloaded, is the CPU reference's.
fn check_outputs(client: &mut Client, jobs: &ModelJobs) -> anyhow::Result<()> {
    for index in 0..jobs.len() {
        let job = job_id_of(&format!("nodes-{index}"));
        let response = client.request("GET", &format!("/v0/jobs/{job}/result"), None)?;
        let result: Value = serde_json::from_slice(&response.body)?;
        let url = result["artifact"]["url"]
            .as_str()
            .ok_or_else(|| anyhow!("job {index} has no output: {result}"))?;
        let output = client.request("GET", url, None)?;
        ensure!(
            output.status == 200 && output.body == jobs.expected(index),
            "job {index}'s output is not the CPU reference's"
        );
    }
    Ok(())
}

/// The `nodes` suite.
/// One measurement on a fabric of its own: made by the ceremony, served, its clients and
/// models registered, `workers` nodes started; torn down after the run.
fn measure_once(bench: &Bench<'_>, workers: usize, jobs: &ModelJobs) -> anyhow::Result<NodesRun> {
    let scratch = scratch_dir(bench.args)?;
    let config = scratch.path().join("nodes.toml");
    std::fs::write(&config, world_toml(workers))?;
    let world = fabric_config::load(Some(&config))?;
    let ceremony = ceremony(Some(&config), &world, scratch.path(), &[])?;
    let nats = BenchNatsServer::start(&scratch.path().join("nats"))?;
    let server = start_server(
        &ceremony,
        TICK_MS,
        &[
            "--nats",
            &nats.url,
            "--submission-tick-window",
            SUBMISSION_TICK_WINDOW,
        ],
    )?;
    let mut control = Client::new(server.target.clone(), Duration::from_secs(30));
    wait_for_tick(&mut control, 1)?;
    let keys: Vec<SigningKey> = (0..CLIENTS).map(|_| keys::generate()).collect();
    register_clients(&mut control, &ceremony.approvers, &keys)?;
    register_models(&mut control, &ceremony.approvers, jobs)?;
    let nodes = start_nodes(
        &ceremony.operator,
        scratch.path(),
        &nats.url,
        &ceremony.data.join("genesis.json"),
        workers,
    )?;
    let measured = run(&server.target, &nats.url, &keys, jobs)?;
    drop(nodes);
    drop(server);
    Ok(measured)
}

pub(super) fn suite(bench: &mut Bench<'_>) -> anyhow::Result<SuiteReport> {
    let workers = bench.workers();
    let count = bench.model_jobs();
    let repetitions = bench.repetitions();
    let jobs = ModelJobs::new(count)?;
    // Each repetition on a fresh fabric; the median by jobs/s (with its latencies) counts, as
    // the peer's median does: this shared machine's speed drifts by a third from one run of
    // seconds to the next.
    let mut runs = (0..repetitions)
        .map(|_| measure_once(bench, workers, &jobs))
        .collect::<anyhow::Result<Vec<_>>>()?;
    runs.sort_by(|a, b| a.jobs_per_s.total_cmp(&b.jobs_per_s));
    let every_run = runs
        .iter()
        .map(|run| format!("{:.0}", run.jobs_per_s))
        .collect::<Vec<_>>()
        .join(", ");
    let measured = runs.swap_remove(runs.len() / 2);
    let limits = bench.limits()?;
    let signature_bound = limits.cores as f64 * 1e6
        / (SIGNATURES_PER_JOB * (limits.sign.one_core_us + limits.verify.one_core_us));
    let peer = bench.celery()?;
    let peer_jobs_per_s = peer.run.jobs_per_s;
    let (p50, p99) = (
        quantile_ms(&measured.latencies, 0.5),
        quantile_ms(&measured.latencies, 0.99),
    );
    let peer_ratio = measured.jobs_per_s / peer_jobs_per_s;
    let bound_ratio = measured.jobs_per_s / signature_bound;
    Ok(SuiteReport {
        suite: "nodes",
        events: count,
        batch_events: 0,
        repetitions,
        adapter: None,
        notes: vec![format!(
            "{count} jobs (a third of each model job type) through {workers} `fabric node` \
             processes (one executor each) over NATS on loopback, {CLIENTS} HTTP clients \
             sending batches of {JOBS_PER_BATCH}; jobs/s of each run: {every_run}; \
             every output checked against the CPU reference; vs. Celery+Redis on {workers} \
             prefork workers: target >= {PEER_RATIO_TARGET}x {} ({peer_ratio:.2}x), and >= \
             {CRYPTO_RATIO_TARGET} of the signature bound {} ({bound_ratio:.2})",
            verdict(peer_ratio >= PEER_RATIO_TARGET),
            verdict(bound_ratio >= CRYPTO_RATIO_TARGET),
        )],
        figures: vec![
            Figure::new(
                "node jobs vs Celery+Redis",
                measured.jobs_per_s,
                "jobs/s",
                (Against::Peer, peer_jobs_per_s),
                format!(
                    "first submission to last receipt in the log, through {workers} node \
                     processes, vs. Celery 5 + Redis on {workers} prefork workers (acks late, \
                     results stored); target >= {PEER_RATIO_TARGET}x"
                ),
            ),
            Figure::new(
                "node jobs vs signatures",
                measured.jobs_per_s,
                "jobs/s",
                (Against::Bound, signature_bound),
                format!(
                    "the same, vs. {SIGNATURES_PER_JOB} signatures and {SIGNATURES_PER_JOB} \
                     verifications per job (submission, assignment, receipt) on every core; \
                     target >= {CRYPTO_RATIO_TARGET}"
                ),
            ),
            Figure::new(
                "node job latency p50",
                p50,
                "ms",
                (Against::Peer, quantile_ms(&peer.run.latencies, 0.5)),
                "submission sent to its receipt seen in the log, vs. Celery+Redis's p50",
            ),
            Figure::new(
                "node job latency p99",
                p99,
                "ms",
                (Against::Peer, quantile_ms(&peer.run.latencies, 0.99)),
                "99th percentile, vs. Celery+Redis's p99",
            ),
        ],
    })
}
