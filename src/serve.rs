//! `fabric serve`: the fabric as a long-running service. The serve driver
//! (`fabric_actors::serve`) runs the actors and the ledger with a tick every `--tick-ms`; this
//! module puts the v0 HTTP API in front of it (docs/FORMAT.md §14) on TCP and/or a Unix socket,
//! keeps the views the API reads (the job index, the artifacts, the metrics) up to date after
//! each durable tick, and shuts down gracefully on SIGINT/SIGTERM: the server stops accepting,
//! the requests in flight get their answers, the driver appends one last tick, exit 0.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{ensure, Context};
use fabric_actors::gate::{check_signed, Verdict};
use fabric_actors::serve::{Ack, Request, ServeSpec, ServedTick, Submission};
use fabric_api::job::{
    check_envelope, ArtifactRef, JobAccepted, JobEvent, JobLinks, JobRequest, JobResult, JobState,
    JobStatus, JobTimings,
};
use fabric_api::wire::{
    ErrorBody, Health, LedgerInfo, OwnerAccepted, OwnerRequest, TreeHead, Versions, API_VERSION,
    EVENTS_PER_RESPONSE_MAX, JOB_SCHEMA_VERSION, REQUEST_BODY_BYTES_MAX,
};
use fabric_events::{cpu_job, Body, Event, Hash32, JobId, JobOutcome, PublicKey, RejectReason};
use fabric_ledger::{LedgerReader, SignedTreeHead};
use fabric_projections::State;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::ServeMetrics;

/// Submissions waiting for a tick; more get 503 (the fabric is overloaded).
pub const INTAKE_CAPACITY: usize = 65_536;

/// Arguments of `fabric serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The data folder: created with a new fabric when empty or missing, resumed when it holds
    /// one `fabric serve` started
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// The world of a new fabric (ignored when resuming: the folder's run.json has it)
    #[arg(long, value_name = "FILE", default_value = "config/fabric.toml")]
    config: PathBuf,
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
#[derive(Clone, Debug)]
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
    status: JobState,
    events: Vec<JobEventRef>,
    receipt: Option<ReceiptRef>,
}

#[derive(Clone, Debug)]
struct JobEventRef {
    seq: u64,
    tick: u64,
    kind: &'static str,
}

#[derive(Clone, Debug)]
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
    HttpResponse::build(status).json(ErrorBody::new(code, message))
}

fn read_view(shared: &Shared) -> std::sync::RwLockReadGuard<'_, View> {
    shared
        .view
        .read()
        .unwrap_or_else(|poison| poison.into_inner())
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
            record.status = JobState::Cancelled;
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
                    status: JobState::Queued,
                    events: Vec::new(),
                    receipt: None,
                },
            );
            body.job
        }
        Body::JobAssigned(body) => {
            if let Some(record) = jobs.get_mut(&body.job) {
                record.attempts += 1;
                record.status = JobState::Running;
                record.started_tick = Some(tick);
                record.node = Some(body.node.clone());
            }
            body.job
        }
        Body::JobSpilled(body) => {
            if let Some(record) = jobs.get_mut(&body.job) {
                record.shard = body.to_shard.clone();
                record.status = JobState::Queued;
            }
            body.job
        }
        Body::JobRequeued(body) => {
            if let Some(record) = jobs.get_mut(&body.job) {
                record.status = JobState::Queued;
            }
            body.job
        }
        Body::JobReceipt(body) => {
            if let Some(record) = jobs.get_mut(&body.job) {
                record.finished_tick = Some(body.finished_tick);
                record.status = match body.outcome {
                    JobOutcome::Completed => JobState::Completed,
                    JobOutcome::Failed => JobState::Failed,
                };
                let mut artifact = None;
                if body.outcome == JobOutcome::Completed && body.kernel.is_none() {
                    let bytes = cpu_job::artifact(&record.input_hash, body.job, record.attempts);
                    let derived = cpu_job::output_hash_of_artifact(&bytes);
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
        crate::run::open_or_create_served(&args.data, &args.config, args.seed)?;
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
    // Until operators hold their own keys, a served fabric runs on the seed's simulated keys
    // and genesis, plugged in here: the server and its driver never derive a key.
    let sim_keys = fabric_sim::SimKeys::derive(&world, run_file.seed);
    let genesis = if size == 0 {
        fabric_sim::genesis(&world, &sim_keys)?
    } else {
        Vec::new()
    };
    let spec = ServeSpec {
        keys: sim_keys.actor_keys(),
        genesis,
        world,
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
                .filter(|record| record.receipt.is_none() && record.status != JobState::Cancelled)
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
    let head = view.tree_head;
    HttpResponse::Ok().json(Health {
        ledger: LedgerInfo {
            ledger_key: shared.ledger_key,
            root: head.root,
            size: head.tree_size,
            tree_head: tree_head(&head),
        },
        status: "ok".to_owned(),
        tick: view.tick,
        tick_ms: shared.tick_ms,
        uptime_ms: shared.started.elapsed().as_millis() as u64,
        versions: Versions {
            api: API_VERSION.to_owned(),
            fabric: env!("CARGO_PKG_VERSION").to_owned(),
            schema: JOB_SCHEMA_VERSION.to_owned(),
            wire_format: String::from_utf8_lossy(&fabric_events::wire::WIRE_MAGIC).into_owned(),
        },
    })
}

/// A signed tree head as the API shows it.
fn tree_head(head: &SignedTreeHead) -> TreeHead {
    TreeHead {
        ledger_key: head.ledger_key,
        root: head.root,
        signature: head.signature,
        tree_size: head.tree_size,
    }
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
    HttpResponse::build(refusal_status(reason)).json(ErrorBody::refusal(
        reason.as_str(),
        detail,
        ack.seq,
        ack.tick,
    ))
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
        Err(wrong) => return error(StatusCode::BAD_REQUEST, "bad_body", wrong.to_string()),
    };
    // Checks that need no state run here, on the HTTP worker's thread; the signature check is
    // the expensive one. What fails them is still recorded (as a `Rejected` event).
    let checked = check_signed(&signed).and_then(|event| {
        check_envelope(&job_request, &event)
            .map_err(|wrong| (RejectReason::Invalid, wrong.to_string()))?;
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
        Verdict::Admitted => HttpResponse::Accepted().json(JobAccepted {
            job,
            links: JobLinks::new(job, ack.seq),
            request_id: job_request.request_id,
            seq: ack.seq,
            status: "accepted".to_owned(),
            tick: ack.tick,
        }),
        Verdict::Refused { reason, detail } => refused(&ack, *reason, detail),
    }
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
    HttpResponse::Ok().json(JobStatus {
        attempts: record.attempts,
        client: record.client,
        events: record
            .events
            .iter()
            .map(|event| JobEvent {
                kind: event.kind.to_owned(),
                seq: event.seq,
                tick: event.tick,
            })
            .collect(),
        input_hash: record.input_hash,
        job: record.job,
        node: record.node.clone(),
        shard: record.shard.clone(),
        status: record.status,
        timings: JobTimings::new(
            shared.tick_ms,
            record.submitted_tick,
            record.started_tick,
            record.finished_tick,
        ),
        workload: record.workload.clone(),
    })
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
    HttpResponse::Ok().json(JobResult {
        artifact: receipt.artifact.map(ArtifactRef::new),
        job,
        node: receipt.node.clone(),
        outcome: receipt.outcome,
        output_hash: receipt.output_hash,
        receipt_seq: receipt.seq,
    })
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
        Verdict::Admitted => HttpResponse::Accepted().json(OwnerAccepted {
            nonce: owner.nonce,
            seq: ack.seq,
            status: "executed".to_owned(),
            tick: ack.tick,
        }),
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
