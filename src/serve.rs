//! `fabric serve`: the fabric as a long-running service. The serve driver
//! (`fabric_actors::serve`) runs the actors and the ledger with a tick every `--tick-ms`; this
//! module puts the v0 HTTP API in front of it (docs/FORMAT.md §14) on TCP and/or a Unix socket,
//! keeps the views the API reads (the job index, the artifacts, the metrics) up to date after
//! each durable tick, and shuts down gracefully on SIGINT/SIGTERM: the server stops accepting,
//! the requests in flight get their answers, the driver appends one last tick, exit 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{ensure, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use fabric_actors::gate::{check_signed, Verdict};
use fabric_actors::serve::{Ack, Request, ServeSpec, ServedTick, Submission};
use fabric_events::{
    Body, Event, Hash32, JobId, JobOutcome, OwnerCommand, PublicKey, RejectReason, SignatureBytes,
    SignedEvent,
};
use fabric_ledger::{LedgerReader, SignedTreeHead};
use fabric_projections::State;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::ServeMetrics;

/// The API's version, in every path.
pub const API_VERSION: &str = "v0";
/// The `schema_version` every job request must carry.
pub const JOB_SCHEMA_VERSION: &str = "fabric.job.v0";
/// Largest request body read; a longer one gets 413 without being read.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Submissions waiting for a tick; more get 503 (the fabric is overloaded).
pub const INTAKE_CAPACITY: usize = 65_536;
/// Export lines one `GET /v0/events` answer carries at most (`limit` may ask for fewer).
pub const EVENTS_PER_RESPONSE_MAX: u64 = 100_000;
/// What the context of a job id derived from a request id is (docs/FORMAT.md §14.2).
pub const REQUEST_ID_CONTEXT: &str = "fabric 2026-12 request id to job id";
/// What a CPU job's output hash is derived with (`fabric_actors::actors::cpu_output_hash`).
const CPU_OUTPUT_CONTEXT: &str = "fabric 2026-11 cpu job output v1";
/// Longest request id.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// Arguments of `fabric serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The data folder: created with a new fabric when empty or missing, resumed when it holds
    /// one `fabric serve` started
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// The world of a new fabric (ignored when resuming: the folder's run.json has it)
    /// [default: the built-in world, config/fabric.toml of the source]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seed of the keys of a new fabric (ignored when resuming)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// TCP address to listen on (port 0: any free port; the address is printed). Default
    /// 127.0.0.1:8080 unless only --unix is given
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Also (or only) listen on this Unix socket
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Publish every appended event on this NATS server's JetStream
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// On shutdown, wait this long for NATS to take the events not yet published
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "nats")]
    nats_drain_s: u64,
    /// Milliseconds between ticks
    #[arg(long, value_name = "N", default_value_t = 100)]
    tick_ms: u64,
    /// HTTP worker threads
    #[arg(long, value_name = "N", default_value_t = 2)]
    workers: usize,
}

/// One job as the API shows it, built from the log.
#[derive(Clone, Debug, Serialize)]
struct JobRecord {
    job: JobId,
    shard: String,
    workload: String,
    input_hash: Hash32,
    client: PublicKey,
    submitted_tick: u64,
    started_tick: Option<u64>,
    finished_tick: Option<u64>,
    attempts: u32,
    node: Option<String>,
    status: &'static str,
    events: Vec<JobEventRef>,
    receipt: Option<ReceiptRef>,
}

#[derive(Clone, Debug, Serialize)]
struct JobEventRef {
    seq: u64,
    tick: u64,
    kind: &'static str,
}

#[derive(Clone, Debug, Serialize)]
struct ReceiptRef {
    seq: u64,
    outcome: JobOutcome,
    node: String,
    output_hash: Hash32,
    artifact: Option<Hash32>,
}

/// What the API reads, updated after each durable tick.
struct View {
    tick: u64,
    tree_head: SignedTreeHead,
    jobs: HashMap<JobId, JobRecord>,
    /// Jobs without a receipt that were still in the fabric after the last tick.
    active: std::collections::HashSet<JobId>,
}

/// Everything the handlers share.
pub struct Shared {
    intake: mpsc::Sender<Submission>,
    reader: LedgerReader,
    ledger_key: PublicKey,
    artifacts: sled::Tree,
    view: RwLock<View>,
    metrics: ServeMetrics,
    tick_ms: u64,
    started: Instant,
}

/// `{"error": {"code", "message"}}` with `status`.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message.into()}}))
}

fn read_view(shared: &Shared) -> std::sync::RwLockReadGuard<'_, View> {
    shared
        .view
        .read()
        .unwrap_or_else(|poison| poison.into_inner())
}

/// The job id of a request id: the first 8 bytes (little-endian) of a keyed BLAKE3 of the
/// request id, top bit cleared. Retrying a request therefore submits the same job, which the
/// ledger refuses as a duplicate instead of running it twice.
pub fn job_id_of(request_id: &str) -> JobId {
    let hash = blake3::derive_key(REQUEST_ID_CONTEXT, request_id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(bytes) >> 1
}

/// The bytes of a served job's result artifact: the material its receipt's output hash is
/// derived from (input hash ‖ job id LE ‖ attempt LE), so anyone can check the receipt
/// against it (docs/FORMAT.md §14.5).
pub fn result_artifact(input_hash: &Hash32, job: JobId, attempt: u32) -> Vec<u8> {
    let mut material = Vec::with_capacity(44);
    material.extend_from_slice(input_hash.as_bytes());
    material.extend_from_slice(&job.to_le_bytes());
    material.extend_from_slice(&attempt.to_le_bytes());
    material
}

impl Shared {
    /// Folds one durable tick into the views: job index, artifacts, metrics.
    fn on_tick(&self, tick: &ServedTick<'_>) {
        let mut view = self
            .view
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let view = &mut *view;
        view.tick = tick.tick;
        view.tree_head = *tick.tree_head;
        for (index, (event, signed)) in tick.events.iter().zip(tick.signed).enumerate() {
            let seq = tick.first_seq + index as u64;
            if let Err(error) =
                index_event(&mut view.jobs, &self.artifacts, seq, event, &signed.author)
            {
                eprintln!("warning: {error:#}");
            }
            if let Body::JobSubmitted(job) = &event.body {
                view.active.insert(job.job);
            }
        }
        // Only an owner command (cancel-job, retire-shard) ends a job without a receipt, so
        // the other ticks need not look at every job in the fabric.
        if tick
            .events
            .iter()
            .any(|event| matches!(event.body, Body::OwnerCommand(_)))
        {
            settle(view, tick.state);
        }
        self.metrics.observe_tick(tick, tick.state, self.tick_ms);
    }
}

/// Jobs that left the fabric without a receipt were cancelled by the owners (a command, or a
/// retired shard): the state says so, the log has no event of the job for it. Called after a
/// tick with an owner command: only those cancel jobs.
fn settle(view: &mut View, state: &State) {
    let jobs = &mut view.jobs;
    view.active.retain(|job| {
        let Some(record) = jobs.get_mut(job) else {
            return false;
        };
        if record.receipt.is_some() {
            return false;
        }
        if state.job_ix(*job).is_none() {
            record.status = "cancelled";
            return false;
        }
        true
    });
}

/// Adds one event of the log to the job index (and a completed served job's artifact to the
/// store).
fn index_event(
    jobs: &mut HashMap<JobId, JobRecord>,
    artifacts: &sled::Tree,
    seq: u64,
    event: &Event,
    author: &PublicKey,
) -> anyhow::Result<()> {
    let tick = event.header.tick;
    let kind = event.kind().as_str();
    let job_id = match &event.body {
        Body::JobSubmitted(body) => {
            jobs.insert(
                body.job,
                JobRecord {
                    job: body.job,
                    shard: body.shard.clone(),
                    workload: body.workload.clone(),
                    input_hash: body.input_hash,
                    client: *author,
                    submitted_tick: tick,
                    started_tick: None,
                    finished_tick: None,
                    attempts: 0,
                    node: None,
                    status: "queued",
                    events: Vec::new(),
                    receipt: None,
                },
            );
            body.job
        }
        Body::JobAssigned(body) => {
            if let Some(record) = jobs.get_mut(&body.job) {
                record.attempts += 1;
                record.status = "running";
                record.started_tick = Some(tick);
                record.node = Some(body.node.clone());
            }
            body.job
        }
        Body::JobSpilled(body) => {
            if let Some(record) = jobs.get_mut(&body.job) {
                record.shard = body.to_shard.clone();
                record.status = "queued";
            }
            body.job
        }
        Body::JobRequeued(body) => {
            if let Some(record) = jobs.get_mut(&body.job) {
                record.status = "queued";
            }
            body.job
        }
        Body::JobReceipt(body) => {
            if let Some(record) = jobs.get_mut(&body.job) {
                record.finished_tick = Some(body.finished_tick);
                record.status = match body.outcome {
                    JobOutcome::Completed => "completed",
                    JobOutcome::Failed => "failed",
                };
                let mut artifact = None;
                if body.outcome == JobOutcome::Completed && body.kernel.is_none() {
                    let bytes = result_artifact(&record.input_hash, body.job, record.attempts);
                    let derived = Hash32(blake3::derive_key(CPU_OUTPUT_CONTEXT, &bytes));
                    ensure!(
                        derived == body.output_hash,
                        "the receipt of job {} (seq {seq}) names output {}, its result artifact \
                         gives {derived}: no artifact stored",
                        body.job,
                        body.output_hash
                    );
                    let hash = Hash32(*blake3::hash(&bytes).as_bytes());
                    artifacts.insert(hash.as_bytes(), bytes).with_context(|| {
                        format!("could not store the artifact of job {}", body.job)
                    })?;
                    artifact = Some(hash);
                }
                record.receipt = Some(ReceiptRef {
                    seq,
                    outcome: body.outcome,
                    node: body.node.clone(),
                    output_hash: body.output_hash,
                    artifact,
                });
            }
            body.job
        }
        _ => return Ok(()),
    };
    if let Some(record) = jobs.get_mut(&job_id) {
        record.events.push(JobEventRef { seq, tick, kind });
    }
    Ok(())
}

/// The job index and the artifacts of a log, read from its start (a restart of `fabric serve`).
fn index_log(
    reader: &LedgerReader,
    artifacts: &sled::Tree,
    size: u64,
) -> anyhow::Result<HashMap<JobId, JobRecord>> {
    let mut jobs = HashMap::new();
    for entry in reader.entries(0..size) {
        let entry = entry.context("could not read the log")?;
        let event = entry
            .event()
            .with_context(|| format!("entry {} does not decode", entry.seq))?;
        index_event(&mut jobs, artifacts, entry.seq, &event, &entry.author)?;
    }
    Ok(jobs)
}

/// `fabric serve`.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    ensure!(args.tick_ms > 0, "--tick-ms must be at least 1");
    ensure!(
        args.workers > 0 && args.workers <= 64,
        "--workers must be between 1 and 64"
    );
    let (run_file, ledger) =
        crate::run::open_or_create_served(&args.data, args.config.as_deref(), args.seed)?;
    let reader = ledger.reader();
    let artifacts = reader
        .artifacts_tree()
        .context("could not open the artifact store")?;
    let size = ledger.len();
    let jobs = index_log(&reader, &artifacts, size)?;
    let world = run_file.spec().world;
    let spill_routes: Vec<(String, String)> = world
        .shards
        .iter()
        .flat_map(|shard| {
            shard
                .spillover
                .iter()
                .map(|to| (shard.name.clone(), to.clone()))
        })
        .collect();
    let spec = ServeSpec {
        world,
        seed: run_file.seed,
        tick_interval: Duration::from_millis(args.tick_ms),
    };
    let outbox = match &args.nats {
        None => None,
        Some(url) => {
            let log: fabric_bus::outbox::Log = Arc::new(|line: &str| eprintln!("{line}"));
            Some(
                fabric_bus::Outbox::start(reader.clone(), url, log)
                    .with_context(|| format!("--nats {url}: cannot publish there"))?,
            )
        }
    };
    if let Some(outbox) = &outbox {
        outbox.durable(size);
    }
    // The driver's callback tells the outbox after each tick; it runs on this thread.
    let outbox = std::rc::Rc::new(std::cell::RefCell::new(outbox));
    let tick_outbox = std::rc::Rc::clone(&outbox);
    let outbox_cursor = reader.outbox_tree().ok();
    let (intake, intake_rx) = mpsc::channel(INTAKE_CAPACITY);
    let (stop, stop_rx) = watch::channel(false);
    let shared = web::Data::new(Shared {
        intake,
        ledger_key: ledger.ledger_key(),
        artifacts,
        view: RwLock::new(View {
            tick: 0,
            tree_head: ledger.tree_head(),
            active: jobs
                .values()
                .filter(|record| record.receipt.is_none() && record.status != "cancelled")
                .map(|record| record.job)
                .collect(),
            jobs,
        }),
        metrics: ServeMetrics::new(&spill_routes),
        tick_ms: args.tick_ms,
        started: Instant::now(),
        reader,
    });
    let system = actix_rt::System::new();
    let tcp = match (&args.listen, &args.unix) {
        (Some(listen), _) => Some(listen.clone()),
        (None, None) => Some("127.0.0.1:8080".to_owned()),
        (None, Some(_)) => None,
    };
    let result: anyhow::Result<()> = system.block_on(async {
        let app_shared = shared.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(app_shared.clone())
                .configure(routes)
                .default_service(web::to(|| async {
                    error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no such endpoint (see GET /v0/openapi.json)",
                    )
                }))
        })
        .workers(args.workers)
        .shutdown_timeout(30)
        // actix-server's own signal handling stops the whole actix system, actors included,
        // before the driver's last tick: the signals are handled below instead.
        .disable_signals();
        let mut listening = Vec::new();
        if let Some(listen) = &tcp {
            server = server
                .bind(listen)
                .with_context(|| format!("could not listen on {listen}"))?;
            listening.extend(server.addrs().iter().map(|addr| format!("http://{addr}")));
        }
        if let Some(path) = &args.unix {
            if path.exists() {
                // A socket left by a server that is gone: only a socket is replaced.
                let metadata = std::fs::symlink_metadata(path)
                    .with_context(|| format!("could not inspect {}", path.display()))?;
                use std::os::unix::fs::FileTypeExt;
                ensure!(
                    metadata.file_type().is_socket(),
                    "--unix {} exists and is not a socket",
                    path.display()
                );
                std::fs::remove_file(path).with_context(|| {
                    format!("could not remove the old socket {}", path.display())
                })?;
            }
            server = server.bind_uds(path).with_context(|| {
                format!("could not listen on the Unix socket {}", path.display())
            })?;
            listening.push(format!("unix:{}", path.display()));
        }
        let running = server.run();
        let handle = running.handle();
        let signal_handle = running.handle();
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("could not listen for SIGTERM")?;
        actix_rt::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            // Stop accepting; answer the requests in flight (their tick still comes).
            signal_handle.stop(true).await;
        });
        let on_tick_shared = shared.clone();
        let driver = actix_rt::spawn(async move {
            let outcome =
                fabric_actors::serve::serve(&spec, ledger, intake_rx, stop_rx, move |tick| {
                    if let Some(outbox) = &*tick_outbox.borrow() {
                        outbox.durable(tick.tree_head.tree_size);
                    }
                    if let Some(tree) = &outbox_cursor {
                        on_tick_shared
                            .metrics
                            .observe_outbox(tree, tick.tree_head.tree_size);
                    }
                    on_tick_shared.on_tick(tick);
                })
                .await;
            if let Err(error) = &outcome {
                // The fabric cannot go on: neither can the server.
                eprintln!("error: the fabric stopped: {error}");
                handle.stop(true).await;
            }
            outcome
        });
        for address in &listening {
            println!("listening on {address}");
        }
        println!("data {} (tree size {size})", args.data.display());
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // Returns after SIGINT/SIGTERM, once the requests in flight have been answered.
        let served = running.await;
        let _ = stop.send(true);
        let outcome = driver
            .await
            .context("the serve driver panicked")?
            .context("the fabric stopped")?;
        served.context("the HTTP server failed")?;
        let publisher = outbox.borrow_mut().take();
        if let Some(publisher) = publisher {
            let report = publisher
                .finish(Duration::from_secs(args.nats_drain_s))
                .context(
                "not every event reached NATS; the next `fabric serve --nats` publishes the rest",
            )?;
            println!(
                "published {} events on NATS ({} duplicates, {} retries)",
                report.published, report.duplicates, report.retries
            );
        }
        println!(
            "stopped at tick {} with {} events, root {}",
            outcome.last_tick, outcome.tree_head.tree_size, outcome.tree_head.root
        );
        Ok(())
    });
    if let Some(path) = &args.unix {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Every route of the v0 API (docs/FORMAT.md §14; `GET /v0/openapi.json` describes them).
fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v0/health", web::get().to(health))
        .route("/v0/jobs", web::post().to(submit_job))
        .route("/v0/jobs/{id}", web::get().to(job_status))
        .route("/v0/jobs/{id}/result", web::get().to(job_result))
        .route("/v0/artifacts/{hash}", web::get().to(artifact))
        .route("/v0/events", web::get().to(events))
        .route("/v0/proofs/{seq}", web::get().to(proof))
        .route("/v0/owner/commands", web::post().to(owner_command))
        .route("/v0/metrics", web::get().to(metrics))
        .route("/metrics", web::get().to(metrics))
        .route("/v0/openapi.json", web::get().to(openapi));
}

async fn health(shared: web::Data<Shared>) -> HttpResponse {
    let view = read_view(&shared);
    HttpResponse::Ok().json(json!({
        "status": "ok",
        "versions": {
            "fabric": env!("CARGO_PKG_VERSION"),
            "api": API_VERSION,
            "schema": JOB_SCHEMA_VERSION,
            "wire_format": String::from_utf8_lossy(&fabric_events::wire::WIRE_MAGIC),
        },
        "tick": view.tick,
        "tick_ms": shared.tick_ms,
        "uptime_ms": shared.started.elapsed().as_millis() as u64,
        "ledger": {
            "size": view.tree_head.tree_size,
            "root": view.tree_head.root,
            "ledger_key": shared.ledger_key,
            "tree_head": view.tree_head,
        },
    }))
}

/// The request's body parsed as JSON of `T` (`what` names it in the error): 413 over the size
/// limit, 400 when it cannot be read or is not `what`.
async fn read_json<T: serde::de::DeserializeOwned>(
    request: &HttpRequest,
    payload: web::Payload,
    what: &str,
) -> Result<T, HttpResponse> {
    let body = read_body(request, payload).await?;
    serde_json::from_slice(&body).map_err(|err| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("the body is not {what}: {err}"),
        )
    })
}

/// Reads a request body of at most [`REQUEST_BODY_BYTES_MAX`] bytes.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
) -> Result<Vec<u8>, HttpResponse> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {REQUEST_BODY_BYTES_MAX} bytes"),
        )
    };
    let declared = request
        .headers()
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > REQUEST_BODY_BYTES_MAX as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|err| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("could not read the request body: {err}"),
            )
        })?;
        if body.len() + chunk.len() > REQUEST_BODY_BYTES_MAX {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The body of `POST /v0/jobs` (docs/FORMAT.md §14.2).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The client's id of this request; the job id is derived from it.
    pub request_id: String,
    /// The model (the job's `workload` is `model_id@model_version`).
    pub model_id: String,
    /// Its version.
    pub model_version: String,
    /// Must be [`JOB_SCHEMA_VERSION`].
    pub schema_version: String,
    /// The job's input hash, 64 hex digits (must be the event's).
    pub input_hash: String,
    /// The signed `job_submitted` event.
    pub event: WireSignedEvent,
}

/// A signed event in JSON: author and signature in hex, the signed bytes in standard base64.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireSignedEvent {
    /// The author's public key, 64 hex digits.
    pub author: String,
    /// The signature, 128 hex digits; a missing one is an unsigned attempt.
    #[serde(default)]
    pub signature: Option<String>,
    /// `FABRICv1` ‖ canonical event, standard base64.
    pub signed: String,
}

impl WireSignedEvent {
    /// The JSON form of `signed`.
    pub fn from_signed(signed: &SignedEvent) -> Self {
        Self {
            author: signed.author.to_string(),
            signature: Some(hex::encode(signed.signature.0)),
            signed: BASE64.encode(&signed.signed),
        }
    }

    /// Parses the hex and base64 fields; the signature of an unsigned attempt is all zeros
    /// (which no key's signature is), so it is refused and recorded as a bad signature.
    fn decode(&self) -> Result<SignedEvent, String> {
        let author = PublicKey::from_hex(&self.author)
            .map_err(|reason| format!("event.author: {reason}"))?;
        let signature = match &self.signature {
            None => [0u8; 64],
            Some(text) => {
                let bytes = hex::decode(text)
                    .map_err(|err| format!("event.signature is not hex: {err}"))?;
                <[u8; 64]>::try_from(bytes.as_slice()).map_err(|_| {
                    format!(
                        "event.signature has {} bytes, an ed25519 signature has 64",
                        bytes.len()
                    )
                })?
            }
        };
        let signed = BASE64
            .decode(&self.signed)
            .map_err(|err| format!("event.signed is not standard base64: {err}"))?;
        Ok(SignedEvent {
            author,
            signature: SignatureBytes(signature),
            signed,
        })
    }
}

/// The HTTP status of a refusal.
fn refusal_status(reason: RejectReason) -> StatusCode {
    match reason {
        RejectReason::BadSignature
        | RejectReason::UnknownKey
        | RejectReason::RetiredKey
        | RejectReason::WeakKey => StatusCode::UNAUTHORIZED,
        RejectReason::Oversize => StatusCode::PAYLOAD_TOO_LARGE,
        RejectReason::Malformed | RejectReason::Invalid => StatusCode::BAD_REQUEST,
        RejectReason::WrongRole
        | RejectReason::TooFewOwnerSignatures
        | RejectReason::DuplicateOwnerSigner => StatusCode::FORBIDDEN,
        RejectReason::ReplayedNonce | RejectReason::ExpiredNonce => StatusCode::CONFLICT,
        RejectReason::ShardPaused => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Hands a request to the driver and waits until its tick is durable.
async fn sequence(shared: &Shared, request: Request) -> Result<Ack, HttpResponse> {
    let (reply, answer) = oneshot::channel();
    match shared.intake.try_send(Submission { request, reply }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            shared.metrics.dropped_request();
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("{INTAKE_CAPACITY} submissions are waiting for a tick; try again"),
            ));
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            shared.metrics.dropped_request();
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the fabric is stopping and takes no more submissions",
            ));
        }
    }
    answer.await.map_err(|_| {
        shared.metrics.dropped_request();
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_sequenced",
            "the fabric stopped before this request's tick was durable: it was not stored",
        )
    })
}

fn refused(ack: &Ack, reason: RejectReason, detail: &str) -> HttpResponse {
    HttpResponse::build(refusal_status(reason)).json(json!({
        "error": {
            "code": reason.as_str(),
            "message": detail,
            "rejected_seq": ack.seq,
            "tick": ack.tick,
        }
    }))
}

async fn submit_job(
    shared: web::Data<Shared>,
    request: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let job_request: JobRequest =
        match read_json(&request, payload, "a job request (docs/FORMAT.md §14.2)").await {
            Ok(parsed) => parsed,
            Err(response) => return response,
        };
    let signed = match job_request.event.decode() {
        Ok(signed) => signed,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_body", message),
    };
    // Checks that need no state run here, on the HTTP worker's thread; the signature check is
    // the expensive one. What fails them is still recorded (as a `Rejected` event).
    let checked = check_signed(&signed).and_then(|event| {
        check_envelope(&job_request, &event)?;
        Ok(event)
    });
    let job = match &checked {
        Ok(event) => match &event.body {
            Body::JobSubmitted(body) => Some(body.job),
            _ => None,
        },
        Err(_) => None,
    };
    let ack = match sequence(&shared, Request::Job { signed, checked }).await {
        Ok(ack) => ack,
        Err(response) => return response,
    };
    match &ack.verdict {
        Verdict::Admitted => HttpResponse::Accepted().json(json!({
            "job": job,
            "request_id": job_request.request_id,
            "status": "accepted",
            "seq": ack.seq,
            "tick": ack.tick,
            "links": {
                "status": job.map(|job| format!("/v0/jobs/{job}")),
                "result": job.map(|job| format!("/v0/jobs/{job}/result")),
                "proof": format!("/v0/proofs/{}", ack.seq),
            },
        })),
        Verdict::Refused { reason, detail } => refused(&ack, *reason, detail),
    }
}

/// The envelope must say what the signed event says: the client signs the event only, so the
/// envelope's fields are bound to it here.
fn check_envelope(request: &JobRequest, event: &Event) -> Result<(), (RejectReason, String)> {
    let invalid = |detail: String| Err((RejectReason::Invalid, detail));
    if request.schema_version != JOB_SCHEMA_VERSION {
        return invalid(format!(
            "schema_version {:?} is not supported; this server takes {JOB_SCHEMA_VERSION:?}",
            request.schema_version
        ));
    }
    if request.request_id.is_empty() || request.request_id.len() > REQUEST_ID_BYTES_MAX {
        return invalid(format!(
            "request_id must have 1 to {REQUEST_ID_BYTES_MAX} bytes, not {}",
            request.request_id.len()
        ));
    }
    let Body::JobSubmitted(job) = &event.body else {
        return invalid(format!(
            "event is a {}, a job request carries a job_submitted",
            event.kind().as_str()
        ));
    };
    let expected_job = job_id_of(&request.request_id);
    if job.job != expected_job {
        return invalid(format!(
            "the event's job id {} is not the one of request_id {:?} ({expected_job})",
            job.job, request.request_id
        ));
    }
    let workload = format!("{}@{}", request.model_id, request.model_version);
    if job.workload != workload {
        return invalid(format!(
            "the event's workload {:?} is not model_id@model_version {workload:?}",
            job.workload
        ));
    }
    if request.input_hash != job.input_hash.to_string() {
        return invalid(format!(
            "input_hash {} is not the event's input hash {}",
            request.input_hash, job.input_hash
        ));
    }
    Ok(())
}

fn parse_job_id(text: &str) -> Option<JobId> {
    text.parse().ok()
}

fn bad_job_id(text: &str) -> HttpResponse {
    error(
        StatusCode::BAD_REQUEST,
        "bad_job_id",
        format!("{text:?} is not a job id (an unsigned 64-bit integer)"),
    )
}

fn unknown_job(job: JobId) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "unknown_job",
        format!("no job {job} was submitted to this fabric"),
    )
}

async fn job_status(shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let Some(job) = parse_job_id(&path) else {
        return bad_job_id(&path);
    };
    let view = read_view(&shared);
    let Some(record) = view.jobs.get(&job) else {
        return unknown_job(job);
    };
    let status = record.status;
    let tick_ms = shared.tick_ms;
    HttpResponse::Ok().json(json!({
        "job": record.job,
        "status": status,
        "shard": record.shard,
        "workload": record.workload,
        "input_hash": record.input_hash,
        "client": record.client,
        "node": record.node,
        "attempts": record.attempts,
        "events": record.events,
        "timings": {
            "tick_ms": tick_ms,
            "submitted_tick": record.submitted_tick,
            "started_tick": record.started_tick,
            "finished_tick": record.finished_tick,
            "queued_ticks": record.started_tick.map(|started| started.saturating_sub(record.submitted_tick)),
            "latency_ticks": record.finished_tick.map(|finished| finished.saturating_sub(record.submitted_tick)),
        },
    }))
}

async fn job_result(shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let Some(job) = parse_job_id(&path) else {
        return bad_job_id(&path);
    };
    let view = read_view(&shared);
    let Some(record) = view.jobs.get(&job) else {
        return unknown_job(job);
    };
    let Some(receipt) = &record.receipt else {
        let status = record.status;
        return error(
            StatusCode::CONFLICT,
            "no_result",
            format!("job {job} is {status}: it has no result"),
        );
    };
    HttpResponse::Ok().json(json!({
        "job": job,
        "outcome": receipt.outcome,
        "node": receipt.node,
        "output_hash": receipt.output_hash,
        "receipt_seq": receipt.seq,
        "artifact": receipt.artifact.map(|hash| json!({
            "hash": hash,
            "url": format!("/v0/artifacts/{hash}"),
        })),
    }))
}

async fn artifact(shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let Ok(hash) = Hash32::from_hex(&path) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_hash",
            format!("{:?} is not a BLAKE3 hash (64 hex digits)", path.as_str()),
        );
    };
    let stored = match shared.artifacts.get(hash.as_bytes()) {
        Ok(stored) => stored,
        Err(err) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                format!("could not read the artifact store: {err}"),
            )
        }
    };
    let Some(bytes) = stored else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_artifact",
            format!("no artifact {hash} is stored"),
        );
    };
    // Verified on every read: a damaged artifact is never served.
    let actual = Hash32(*blake3::hash(&bytes).as_bytes());
    if actual != hash {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "artifact_corrupt",
            format!("the stored artifact {hash} hashes to {actual}: it is damaged"),
        );
    }
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("x-fabric-blake3", hash.to_string()))
        .body(bytes.to_vec())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    from: u64,
    limit: Option<u64>,
    #[serde(default)]
    follow: bool,
}

async fn events(shared: web::Data<Shared>, query: web::Query<EventsQuery>) -> HttpResponse {
    let query = query.into_inner();
    let limit = query
        .limit
        .unwrap_or(EVENTS_PER_RESPONSE_MAX)
        .min(EVENTS_PER_RESPONSE_MAX);
    let size = read_view(&shared).tree_head.tree_size;
    if query.from > size {
        return error(
            StatusCode::NOT_FOUND,
            "past_the_end",
            format!(
                "from={} is past the end of the log ({size} entries)",
                query.from
            ),
        );
    }
    let shared = shared.into_inner();
    let end = query.from.saturating_add(limit);
    let tick = Duration::from_millis(shared.tick_ms);
    let follow = query.follow;
    // Lines from `from` to the durable size; with `follow`, then each new durable tick's, until
    // `limit` lines are sent or the client goes away.
    let stream = futures_util::stream::unfold(query.from, move |next| {
        let shared = Arc::clone(&shared);
        async move {
            loop {
                if next >= end {
                    return None;
                }
                let size = read_view(&shared).tree_head.tree_size;
                if next < size {
                    let upto = size.min(end).min(next + 1024);
                    let mut out = Vec::new();
                    for entry in shared.reader.entries(next..upto) {
                        let line = entry
                            .map_err(|err| err.to_string())
                            .and_then(|entry| entry.export_line().map_err(|err| err.to_string()));
                        match line {
                            Ok(line) => {
                                out.extend_from_slice(line.as_bytes());
                                out.push(b'\n');
                            }
                            Err(err) => {
                                let error: Box<dyn std::error::Error> = err.into();
                                return Some((
                                    Err(actix_web::error::ErrorInternalServerError(error)),
                                    end,
                                ));
                            }
                        }
                    }
                    return Some((Ok(web::Bytes::from(out)), upto));
                }
                if !follow {
                    return None;
                }
                actix_rt::time::sleep(tick).await;
            }
        }
    });
    HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(stream)
}

async fn proof(shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let Ok(seq) = path.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_seq",
            format!(
                "{:?} is not a seq (an unsigned 64-bit integer)",
                path.as_str()
            ),
        );
    };
    let size = read_view(&shared).tree_head.tree_size;
    if seq >= size {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_seq",
            format!("seq {seq} is not in the log ({size} entries)"),
        );
    }
    match crate::proof::inclusion_doc(&shared.reader, &shared.ledger_key, size, seq, size) {
        Ok(doc) => HttpResponse::Ok().json(doc),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "proof",
            format!("could not build the proof: {err:#}"),
        ),
    }
}

/// The body of `POST /v0/owner/commands`: one command of a command file (docs/FORMAT.md
/// §10.1); fields other than `nonce` and `command` are ignored.
#[derive(Debug, Deserialize)]
struct OwnerRequest {
    nonce: u64,
    command: OwnerCommand,
}

async fn owner_command(
    shared: web::Data<Shared>,
    request: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let owner: OwnerRequest = match read_json(
        &request,
        payload,
        "an owner command with its nonce (docs/FORMAT.md §10.1)",
    )
    .await
    {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let ack = match sequence(
        &shared,
        Request::Owner {
            nonce: owner.nonce,
            command: owner.command,
        },
    )
    .await
    {
        Ok(ack) => ack,
        Err(response) => return response,
    };
    match &ack.verdict {
        Verdict::Admitted => HttpResponse::Accepted().json(json!({
            "status": "executed",
            "nonce": owner.nonce,
            "seq": ack.seq,
            "tick": ack.tick,
        })),
        Verdict::Refused { reason, detail } => refused(&ack, *reason, detail),
    }
}

async fn metrics(shared: web::Data<Shared>, request: HttpRequest) -> HttpResponse {
    let openmetrics = request
        .headers()
        .get("accept")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    match shared.metrics.encode(openmetrics) {
        Ok((content_type, text)) => HttpResponse::Ok().content_type(content_type).body(text),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics",
            format!("could not encode the metrics: {err}"),
        ),
    }
}

/// The OpenAPI document of the v0 API.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI_JSON)
}

/// Loads a client key for `fabric submit`: a key file, or the simulated client key of a shard
/// of a fabric started with `--seed`.
pub fn client_key(
    key: Option<&Path>,
    sim_client: Option<&str>,
    seed: u64,
) -> anyhow::Result<fabric_events::SigningKey> {
    match (key, sim_client) {
        (Some(path), None) => fabric_events::keys::load_secret(path)
            .with_context(|| format!("--key {}: cannot load the client key", path.display())),
        (None, Some(shard)) => Ok(fabric_events::derive_signing_key(
            seed,
            &format!("sim/client/{shard}"),
        )),
        _ => anyhow::bail!("give either --key FILE or --sim-client SHARD"),
    }
}

/// Renders a JSON value for the terminal.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}
