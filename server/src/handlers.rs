//! The v0 HTTP API's handlers (docs/FORMAT.md §14): each parses, size-checks and
//! signature-checks a request on its worker thread, queues what must be sequenced to the
//! driver (503 when the queue is full), and answers from the views updated after each durable
//! tick.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use fabric_actors::gate::{check_decoded, Verdict};
use fabric_actors::serve::{Ack, Request, ServedTick, Submission};
use fabric_api::job::{
    check_envelope, ArtifactRef, JobAccepted, JobBatchAnswer, JobBatchItem, JobEvent, JobLinks,
    JobRequest, JobResult, JobStatus, JobTimings,
};
use fabric_api::wire::{
    ErrorBody, Health, LedgerInfo, OwnerAccepted, OwnerRequest, TreeHead, Versions, API_VERSION,
    BATCH_BODY_BYTES_MAX, EVENTS_PER_RESPONSE_MAX, JOBS_PER_BATCH_MAX, JOB_SCHEMA_VERSION,
    REQUEST_BODY_BYTES_MAX,
};
use fabric_events::codec::encode_event;
use fabric_events::{Body, Event, Hash32, JobId, PublicKey, RejectReason, Role, SigningKey};
use fabric_ledger::{ArtifactLog, CheckpointNote, LedgerReader, SignedTreeHead};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::batch_readers::BatchReaders;
use crate::index::{index_event, owners_acted, settle, ResultArtifact, View};
use crate::metrics::ServeMetrics;
use crate::refusals::{PeerRefusals, PEER_REFUSALS_BURST_MAX, PEER_REFUSALS_PER_SECOND_MAX};
use crate::INTAKE_CAPACITY;

/// Everything the handlers share.
pub(crate) struct Shared {
    pub(crate) intake: mpsc::Sender<Submission>,
    pub(crate) reader: LedgerReader,
    pub(crate) ledger_key: PublicKey,
    pub(crate) artifacts: Arc<ArtifactLog>,
    pub(crate) view: RwLock<View>,
    pub(crate) metrics: ServeMetrics,
    /// Each peer's allowance of refused requests.
    pub(crate) refusals: PeerRefusals,
    /// The batch bodies being read and held now.
    pub(crate) batch_readers: BatchReaders,
    pub(crate) tick_ms: u64,
    /// Where the fabric's keys come from (its genesis).
    pub(crate) key_origin: fabric_events::KeyOrigin,
    pub(crate) started: Instant,
    /// A replica's or a follower's part in a replicated fabric.
    pub(crate) following: Option<Arc<crate::follow::Following>>,
    /// The latest tree head as a checkpoint note, signed when this process holds its key.
    pub(crate) checkpoints: CheckpointSigner,
    /// Whether heads must be witnessed, and the latest final one.
    pub(crate) finality: crate::witnesses::Finality,
    /// The fabrics this one federates with.
    pub(crate) federation: crate::federation::Federation,
}

/// Signs tree heads as checkpoint notes (docs/FORMAT.md §17) with the ledger key that signed
/// them, when this process holds its secret: once per head, however often it is asked.
#[derive(Default)]
pub(crate) struct CheckpointSigner {
    /// Where the genesis entry is read from (none: no log to sign for).
    reader: Option<LedgerReader>,
    /// The log's origin line, once its genesis entry is stored (a new fabric's is appended by
    /// its first tick).
    origin: std::sync::OnceLock<String>,
    /// The secrets of the ledger keys this process may sign with.
    secrets: Vec<SigningKey>,
    /// The last head signed, and its note.
    last: Mutex<Option<(SignedTreeHead, Arc<str>)>>,
}

impl CheckpointSigner {
    /// For the log of `reader` (its origin from its genesis entry) and the ledger `secrets`
    /// this process holds (none for a follower).
    pub(crate) fn new(reader: &LedgerReader, secrets: Vec<SigningKey>) -> Self {
        Self {
            reader: Some(reader.clone()),
            origin: std::sync::OnceLock::new(),
            secrets,
            last: Mutex::new(None),
        }
    }

    /// The log's origin, once its genesis entry is stored and readable.
    pub(crate) fn origin(&self) -> Option<&str> {
        if let Some(origin) = self.origin.get() {
            return Some(origin);
        }
        let genesis = self.reader.as_ref()?.get(0).ok()?;
        Some(
            self.origin
                .get_or_init(|| fabric_ledger::note::origin_of(&genesis.hash())),
        )
    }

    /// The secret of `key`, when this process holds it.
    pub(crate) fn secret_of(&self, key: &PublicKey) -> Option<&SigningKey> {
        self.secrets
            .iter()
            .find(|secret| PublicKey::from(&secret.verifying_key()) == *key)
    }

    /// The note of `head`, or none when this process holds no secret of the key that signed
    /// it (a follower, or a replica whose place another took), or the log is empty.
    pub(crate) fn note(&self, head: &SignedTreeHead) -> Option<Arc<str>> {
        let origin = self.origin()?;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some((signed, note)) = last.as_ref().filter(|(signed, _)| signed == head) {
            debug_assert_eq!(signed.tree_size, head.tree_size);
            return Some(Arc::clone(note));
        }
        let secret = self.secret_of(&head.ledger_key)?;
        let note: Arc<str> = CheckpointNote::sign(origin, head.tree_size, head.root, secret)
            .encode()
            .into();
        *last = Some((*head, Arc::clone(&note)));
        Some(note)
    }
}

/// The header every answer of a simulated fabric carries, and its value.
pub(crate) const SIMULATION_HEADER: (&str, &str) = ("fabric-simulation", "keys are public");
/// What a simulated fabric says in `/v0/health`, every answer's header and its start log.
pub(crate) const SIMULATION_NOTICE: &str = "simulation: keys are public";

/// On a simulation, the `Fabric-Simulation: keys are public` header on every answer: anyone
/// can compute its keys, so nothing it says is anyone's word.
pub(crate) fn simulation_banner(
    simulation: bool,
) -> actix_web::middleware::Condition<actix_web::middleware::DefaultHeaders> {
    actix_web::middleware::Condition::new(
        simulation,
        actix_web::middleware::DefaultHeaders::new().add(SIMULATION_HEADER),
    )
}

/// `{"error": {"code", "message"}}` with `status`.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> HttpResponse {
    Refusal::new(status, code, message).response()
}

/// A request's refusal before it is an HTTP answer: its status and error body. A batch's
/// items are refusals too, answered inside the batch's answer.
pub(crate) struct Refusal {
    status: StatusCode,
    body: ErrorBody,
}

impl Refusal {
    /// A refusal that stored nothing.
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }

    pub(crate) fn response(self) -> HttpResponse {
        HttpResponse::build(self.status).json(self.body)
    }

    /// What is wrong, for a person.
    pub(crate) fn message(&self) -> &str {
        &self.body.error.message
    }
}

pub(crate) fn read_view(shared: &Shared) -> std::sync::RwLockReadGuard<'_, View> {
    shared
        .view
        .read()
        .unwrap_or_else(|poison| poison.into_inner())
}

impl Shared {
    /// The latest durable tree head.
    pub(crate) fn latest_head(&self) -> SignedTreeHead {
        read_view(self).tree_head
    }

    /// Folds one durable tick into the views: job index, artifacts, metrics.
    pub(crate) fn on_tick(&self, tick: &ServedTick<'_>) {
        let mut view = self
            .view
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let view = &mut *view;
        view.tick = tick.tick;
        view.tree_head = *tick.tree_head;
        for (index, (event, signed)) in tick.events.iter().zip(tick.signed).enumerate() {
            let seq = tick.first_seq + index as u64;
            if let Err(error) = index_event(
                &mut view.jobs,
                &self.artifacts,
                seq,
                event,
                &signed.author,
                tick.tick,
            ) {
                eprintln!("warning: {error}");
            }
            if let Body::JobSubmitted(job) = &event.body {
                view.active.insert(job.job);
            }
        }
        if owners_acted(tick.events) {
            settle(view, tick.state);
        }
        if tick.events.iter().any(crate::index::changes_covenant) {
            view.covenant = tick.state.covenant().clone();
        }
        self.metrics.observe_tick(tick, tick.state, self.tick_ms);
    }
}

/// Every route of the v0 API (docs/FORMAT.md §14; `GET /v0/openapi.json` describes them).
pub(crate) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v0/health", web::get().to(health))
        .route("/v0/jobs", web::post().to(submit_job))
        .route("/v0/jobs/batch", web::post().to(submit_jobs))
        .route("/v0/jobs/{id}", web::get().to(job_status))
        .route("/v0/jobs/{id}/result", web::get().to(job_result))
        .route("/v0/artifacts/{hash}", web::get().to(artifact))
        .route("/v0/events", web::get().to(events))
        .route("/v0/proofs/{seq}", web::get().to(proof))
        .route(
            "/v0/proofs/consistency/{old}/{new}",
            web::get().to(consistency_proof),
        )
        .route("/v0/checkpoints/latest", web::get().to(latest_checkpoint))
        .route("/v0/owner/commands", web::post().to(owner_command))
        .route("/v0/records", web::post().to(crate::records::record))
        .route("/v0/federation", web::get().to(crate::federation::status))
        .route(
            "/v0/federation/sync",
            web::post().to(crate::federation::sync),
        )
        .route(
            "/v0/federation/countersign",
            web::post().to(crate::federation::countersign),
        )
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
            checkpoint_origin: shared.checkpoints.origin().map(str::to_owned),
            checkpoint_verifier_key: shared
                .checkpoints
                .origin()
                .map(|origin| fabric_ledger::note::verifier_key(origin, &head.ledger_key)),
        },
        status: "ok".to_owned(),
        key_origin: shared.key_origin,
        simulation: shared
            .key_origin
            .is_simulation()
            .then(|| SIMULATION_NOTICE.to_owned()),
        replica: shared.following.as_ref().map(|following| {
            match following.is_sequencing() {
                true => "sequencer",
                false => "follower",
            }
            .to_owned()
        }),
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

/// `GET /v0/checkpoints/latest`: the latest tree head as a signed checkpoint note. A replica
/// that does not hold the key in force sends the client to the sequencer.
async fn latest_checkpoint(shared: web::Data<Shared>) -> HttpResponse {
    let head = read_view(&shared).tree_head;
    if shared.finality.required && shared.checkpoints.note(&head).is_some() {
        return match shared.finality.latest() {
            Some((_, note)) => HttpResponse::Ok()
                .content_type("text/plain; charset=utf-8")
                .body(note.to_string()),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_witnessed",
                "no tree head has the cosignatures of enough witnesses yet",
            ),
        };
    }
    if let Some(note) = shared.checkpoints.note(&head) {
        return HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(note.to_string());
    }
    match shared.following.as_deref() {
        Some(following) => crate::requests::to_sequencer(following, "/v0/checkpoints/latest"),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_checkpoint",
            "this server holds no secret of the ledger key that signed the latest tree head",
        ),
    }
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
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    request: &HttpRequest,
    payload: web::Payload,
    what: &str,
) -> Result<T, HttpResponse> {
    let parsed = match read_body(request, payload, REQUEST_BODY_BYTES_MAX).await {
        Ok(body) => serde_json::from_slice(&body).map_err(|err| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the body is not {what}: {err}"),
            )
        }),
        Err(response) => Err(response),
    };
    // Nothing of it reaches the ledger (no attempt to attribute): counted in the metrics.
    if parsed.is_err() {
        shared.metrics.unreadable_request();
    }
    parsed
}

/// The peer's IP address (none on the Unix socket).
fn peer_of(request: &HttpRequest) -> Option<std::net::IpAddr> {
    request.peer_addr().map(|address| address.ip())
}

/// Runs a POST handler under the peer's refusal allowance: a peer whose allowance is spent is
/// answered 429 before its request is read, and every refusal (a 4xx answer) takes from it.
pub(crate) async fn within_allowance(
    shared: &Shared,
    request: &HttpRequest,
    handler: impl std::future::Future<Output = HttpResponse>,
) -> HttpResponse {
    let peer = peer_of(request);
    if !shared.refusals.allows(peer) {
        shared.metrics.rate_limited_request();
        return HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
            .insert_header(("retry-after", "1"))
            .json(ErrorBody::new(
                "rate_limited",
                format!(
                    "this address made more than {PEER_REFUSALS_BURST_MAX} refused requests \
                     lately (the allowance refills by {PEER_REFUSALS_PER_SECOND_MAX} a second); \
                     try again later"
                ),
            ));
    }
    let response = handler.await;
    if response.status().is_client_error() {
        shared.refusals.refused(peer);
    }
    response
}

/// Reads a request body of at most `bytes_max` bytes.
async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    bytes_max: usize,
) -> Result<Vec<u8>, HttpResponse> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is over the limit of {bytes_max} bytes"),
        )
    };
    let declared = request
        .headers()
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > bytes_max as u64) {
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
        if body.len() + chunk.len() > bytes_max {
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
pub(crate) async fn sequence(shared: &Shared, request: Request) -> Result<Ack, Refusal> {
    durable(shared, queue(shared, request)?).await
}

/// Hands a request to the driver: what will carry its answer once its tick is durable, or 503
/// when the driver's queue is full or closed.
fn queue(shared: &Shared, request: Request) -> Result<oneshot::Receiver<Ack>, Refusal> {
    let (reply, answer) = oneshot::channel();
    match shared.intake.try_send(Submission { request, reply }) {
        Ok(()) => Ok(answer),
        Err(mpsc::error::TrySendError::Full(_)) => {
            shared.metrics.dropped_request();
            Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("{INTAKE_CAPACITY} submissions are waiting for a tick; try again"),
            ))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            shared.metrics.dropped_request();
            Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the fabric is stopping and takes no more submissions",
            ))
        }
    }
}

/// The answer to a queued request, once its tick is durable.
async fn durable(shared: &Shared, answer: oneshot::Receiver<Ack>) -> Result<Ack, Refusal> {
    answer.await.map_err(|_| {
        shared.metrics.dropped_request();
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_sequenced",
            "the fabric stopped before this request's tick was durable: it was not stored",
        )
    })
}

/// The answer to a refused request: recorded as its own `rejected` event (evidence against
/// its signer), or counted in the tick's `refusals_counted` event.
pub(crate) fn refused(ack: &Ack) -> Option<Refusal> {
    let (reason, body) = match &ack.verdict {
        Verdict::Admitted => return None,
        Verdict::Refused { reason, detail } => (
            *reason,
            ErrorBody::refusal(reason.as_str(), detail, ack.seq, ack.tick),
        ),
        Verdict::Counted { reason, detail } => (
            *reason,
            ErrorBody::counted(reason.as_str(), detail, ack.seq, ack.tick),
        ),
    };
    Some(Refusal {
        status: refusal_status(reason),
        body,
    })
}

async fn submit_job(
    shared: web::Data<Shared>,
    request: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    within_allowance(
        &shared,
        &request,
        submit_job_heard(&shared, &request, payload),
    )
    .await
}

async fn submit_job_heard(
    shared: &Shared,
    request: &HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let job_request: JobRequest = match read_json(
        shared,
        request,
        payload,
        "a job request (docs/FORMAT.md §14.2)",
    )
    .await
    {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    match answer_of(shared, queue_job(shared, job_request)).await {
        Ok(accepted) => HttpResponse::Accepted().json(accepted),
        Err(refusal) => refusal.response(),
    }
}

/// A job request's answer: once its tick is durable when it was queued, else its refusal.
async fn answer_of(
    shared: &Shared,
    queued: Result<QueuedJob, Refusal>,
) -> Result<JobAccepted, Refusal> {
    queued?.answer(shared).await
}

/// A job request handed to the driver, waiting for its tick.
struct QueuedJob {
    job: Option<JobId>,
    request_id: String,
    answer: oneshot::Receiver<Ack>,
}

impl QueuedJob {
    /// The request's answer once its tick is durable: accepted, or why not.
    async fn answer(self, shared: &Shared) -> Result<JobAccepted, Refusal> {
        let ack = durable(shared, self.answer).await?;
        if let Some(refusal) = refused(&ack) {
            return Err(refusal);
        }
        Ok(JobAccepted {
            job: self.job,
            links: JobLinks::new(self.job, ack.seq),
            request_id: self.request_id,
            seq: ack.seq,
            status: "accepted".to_owned(),
            tick: ack.tick,
        })
    }
}

/// Checks what a job request's bytes alone can tell and hands it to the driver (the single
/// and the batch route share this). Checks that need no state run here, on the HTTP worker's
/// thread; the signature is verified by the tick, in one batch with the tick's other attempts.
/// What fails them is counted in the tick's `refusals_counted` event (or recorded as a
/// `Rejected` event when a registered key signed it).
fn queue_job(shared: &Shared, job_request: JobRequest) -> Result<QueuedJob, Refusal> {
    let signed = job_request.event.decode().map_err(|wrong| {
        // Not even an attempt to attribute (hex or base64 that does not parse).
        shared.metrics.unreadable_request();
        Refusal::new(StatusCode::BAD_REQUEST, "bad_body", wrong.to_string())
    })?;
    let checked = check_decoded(&signed).and_then(|event| {
        check_envelope(&job_request, &event)
            .map_err(|wrong| (RejectReason::Invalid, wrong.to_string()))?;
        Ok(event)
    });
    let (job, input) = match &checked {
        Ok(Event {
            body: Body::JobSubmitted(body),
            ..
        }) => (Some(body.job), crate::inputs::input_of(&job_request, body)?),
        _ => (None, None),
    };
    let request = Request::Job {
        signed,
        checked,
        input,
    };
    Ok(QueuedJob {
        job,
        request_id: job_request.request_id,
        answer: queue(shared, request)?,
    })
}

async fn submit_jobs(
    shared: web::Data<Shared>,
    request: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    within_allowance(
        &shared,
        &request,
        submit_jobs_heard(&shared, &request, payload),
    )
    .await
}

/// The body of `POST /v0/jobs/batch`, each job request still unparsed so that each is judged
/// (and refused) on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    jobs: Vec<&'a serde_json::value::RawValue>,
}

/// `POST /v0/jobs/batch` (docs/FORMAT.md §14.2): every job request of the batch queued in
/// order for the same tick, then each answered as `POST /v0/jobs` would answer it. Each
/// refused item takes one from the peer's allowance.
async fn submit_jobs_heard(
    shared: &Shared,
    request: &HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    // Bodies this large are read a few at a time, and a few per peer, so that connections
    // cannot hold much memory: the rest wait for a later try.
    let _place = match shared.batch_readers.enter(peer_of(request)) {
        Ok(place) => place,
        Err(why) => {
            shared.metrics.dropped_request();
            return error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", why);
        }
    };
    let body = match read_body(request, payload, BATCH_BODY_BYTES_MAX).await {
        Ok(body) => body,
        Err(response) => {
            shared.metrics.unreadable_request();
            return response;
        }
    };
    let batch: BatchBody<'_> = match serde_json::from_slice(&body) {
        Ok(batch) => batch,
        Err(err) => {
            shared.metrics.unreadable_request();
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the body is not a batch of job requests (docs/FORMAT.md §14.2): {err}"),
            );
        }
    };
    if batch.jobs.is_empty() || batch.jobs.len() > JOBS_PER_BATCH_MAX {
        shared.metrics.unreadable_request();
        return error(
            StatusCode::BAD_REQUEST,
            "bad_batch",
            format!(
                "a batch holds 1 to {JOBS_PER_BATCH_MAX} job requests, not {}",
                batch.jobs.len()
            ),
        );
    }
    // All are queued before any answer is awaited: in order, and for the same tick.
    let queued: Vec<Result<QueuedJob, Refusal>> = batch
        .jobs
        .iter()
        .enumerate()
        .map(|(index, raw)| queue_job(shared, batch_item(shared, index, raw)?))
        .collect();
    drop(body);
    HttpResponse::Ok().json(batch_answer(shared, request, queued).await)
}

/// The answer to a batch's queued items, in order, once each is durable or refused; each
/// refused item (4xx) takes one from the peer's allowance.
async fn batch_answer(
    shared: &Shared,
    request: &HttpRequest,
    queued: Vec<Result<QueuedJob, Refusal>>,
) -> JobBatchAnswer {
    let mut answer = JobBatchAnswer {
        accepted: 0,
        refused: 0,
        results: Vec::with_capacity(queued.len()),
    };
    for item in queued {
        answer.results.push(match answer_of(shared, item).await {
            Ok(accepted) => {
                answer.accepted += 1;
                JobBatchItem {
                    accepted: Some(accepted),
                    error: None,
                    status: StatusCode::ACCEPTED.as_u16(),
                }
            }
            Err(refusal) => {
                answer.refused += 1;
                if refusal.status.is_client_error() {
                    shared.refusals.refused(peer_of(request));
                }
                JobBatchItem {
                    accepted: None,
                    error: Some(refusal.body.error),
                    status: refusal.status.as_u16(),
                }
            }
        });
    }
    answer
}

/// Item `index` of a batch as a job request: 413 over a single request's size limit, 400
/// when it is not a job request.
fn batch_item(
    shared: &Shared,
    index: usize,
    raw: &serde_json::value::RawValue,
) -> Result<JobRequest, Refusal> {
    let text = raw.get();
    let refused = |status, code, message: String| {
        shared.metrics.unreadable_request();
        Refusal::new(status, code, format!("jobs[{index}]: {message}"))
    };
    if text.len() > REQUEST_BODY_BYTES_MAX {
        return Err(refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "{} bytes, over the limit of {REQUEST_BODY_BYTES_MAX} bytes of a job request",
                text.len()
            ),
        ));
    }
    serde_json::from_str(text).map_err(|err| {
        refused(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("not a job request (docs/FORMAT.md §14.2): {err}"),
        )
    })
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
    let (model_id, model_version) = fabric_api::job::model_of(&record.workload);
    let mut timings = JobTimings::new(
        shared.tick_ms,
        record.submitted_tick,
        record.started_tick,
        record.finished_tick,
    );
    timings.execution_us = record
        .receipt
        .as_ref()
        .and_then(|receipt| receipt.execution_us);
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
        model_id: model_id.to_owned(),
        model_version: model_version.to_owned(),
        node: record.node.clone(),
        shard: record.shard.clone(),
        status: record.status,
        timings,
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
        artifact: stored_artifact(&shared, receipt.artifact).map(ArtifactRef::new),
        execution_us: receipt.execution_us,
        input_hash: record.input_hash,
        job,
        node: receipt.node.clone(),
        outcome: receipt.outcome,
        output_hash: receipt.output_hash,
        receipt_seq: receipt.seq,
    })
}

/// The address of a result's artifact, when the store holds it.
fn stored_artifact(shared: &Shared, artifact: ResultArtifact) -> Option<Hash32> {
    match artifact {
        ResultArtifact::None => None,
        ResultArtifact::Stored(hash) => Some(hash),
        ResultArtifact::NodeOutput(hash) => shared.artifacts.contains(&hash).then_some(hash),
    }
}

async fn artifact(shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let Ok(hash) = Hash32::from_hex(&path) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_hash",
            format!("{:?} is not a BLAKE3 hash (64 hex digits)", path.as_str()),
        );
    };
    let stored = match shared.artifacts.get(&hash) {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofQuery {
    /// The tree size to prove in (default: the latest); a size with a signed tree head.
    size: Option<u64>,
}

async fn proof(
    shared: web::Data<Shared>,
    path: web::Path<String>,
    query: web::Query<ProofQuery>,
) -> HttpResponse {
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
    let tree_size = query.size.unwrap_or(size);
    use fabric_audit::proof::BuildError;
    match fabric_audit::proof::inclusion_doc(
        &shared.reader,
        &shared.ledger_key,
        size,
        seq,
        tree_size,
    ) {
        Ok(doc) => HttpResponse::Ok().json(doc),
        Err(err @ (BuildError::PastEnd { .. } | BuildError::NoTreeHead { .. })) => {
            error(StatusCode::NOT_FOUND, "unknown_size", err.to_string())
        }
        Err(err @ BuildError::NotInTree { .. }) => {
            error(StatusCode::BAD_REQUEST, "bad_size", err.to_string())
        }
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "proof",
            format!("could not build the proof: {err:#}"),
        ),
    }
}

/// `GET /v0/proofs/consistency/{old}/{new}`: the consistency proof document between two
/// sizes of the durable log that have signed tree heads (what a witness asks before it
/// cosigns a bigger head).
async fn consistency_proof(
    shared: web::Data<Shared>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (old, new) = path.into_inner();
    let (Ok(old_size), Ok(new_size)) = (old.parse::<u64>(), new.parse::<u64>()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_size",
            format!("{old:?} and {new:?} must be tree sizes (unsigned 64-bit integers)"),
        );
    };
    let size = read_view(&shared).tree_head.tree_size;
    let built = fabric_audit::proof::consistency_doc(
        &shared.reader,
        &shared.ledger_key,
        size,
        old_size,
        new_size,
    );
    use fabric_audit::proof::BuildError;
    match built {
        Ok(doc) => HttpResponse::Ok().json(doc),
        Err(err @ BuildError::Sizes { .. }) => {
            error(StatusCode::BAD_REQUEST, "bad_size", err.to_string())
        }
        Err(err @ (BuildError::PastEnd { .. } | BuildError::NoTreeHead { .. })) => {
            error(StatusCode::NOT_FOUND, "unknown_size", err.to_string())
        }
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
    within_allowance(
        &shared,
        &request,
        owner_command_heard(&shared, &request, payload),
    )
    .await
}

async fn owner_command_heard(
    shared: &Shared,
    request: &HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let owner: OwnerRequest = match read_json(
        shared,
        request,
        payload,
        "an owner command with its nonce (docs/FORMAT.md §10.1)",
    )
    .await
    {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    // The ledger signs the command's envelope at its tick; an event over the size limit could
    // not be signed there and would stop the driver. It is refused here, and nothing is
    // stored: the tick an event carries is fixed-width, so its size is known now.
    let event = Event::new(Role::Owner, 0, owner.nonce, owner.command.clone());
    if let Err(oversize) = encode_event(&event) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "oversize",
            format!(
                "the owner command encodes to {} bytes; an event may have at most {}",
                oversize.len, oversize.max
            ),
        );
    }
    let ack = match sequence(
        shared,
        Request::Owner {
            nonce: owner.nonce,
            command: owner.command,
        },
    )
    .await
    {
        Ok(ack) => ack,
        Err(refusal) => return refusal.response(),
    };
    if let Some(refusal) = refused(&ack) {
        return refusal.response();
    }
    HttpResponse::Accepted().json(OwnerAccepted {
        nonce: owner.nonce,
        seq: ack.seq,
        status: "executed".to_owned(),
        tick: ack.tick,
    })
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

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(crate::OPENAPI_JSON)
}
