//! Jobs over the v0 API (docs/FORMAT.md §14.2, §14.3): the body of `POST /v0/jobs`, the rules
//! that bind its envelope to the signed event, building and signing one, and the bodies of
//! the answers about a job.
//!
//! As in [`crate::wire`], the fields of every body are declared in alphabetical order, the
//! order of the keys the server writes.

use std::fmt;

use fabric_events::codec::OversizeEvent;
use fabric_events::{
    Body, Event, Hash32, JobId, JobOutcome, JobSubmitted, PublicKey, Role, SignedEvent, SigningKey,
};
use serde::{Deserialize, Serialize};

use crate::wire::{WireSignedEvent, JOB_SCHEMA_VERSION, REQUEST_ID_BYTES_MAX, REQUEST_ID_CONTEXT};

/// The body of `POST /v0/jobs` (docs/FORMAT.md §14.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The signed `job_submitted` event.
    pub event: WireSignedEvent,
    /// The job's input bytes, standard base64 (their BLAKE3 must be `input_hash`); absent when
    /// the server already holds them (the input or output of an earlier job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The job's input hash, 64 hex digits (must be the event's).
    pub input_hash: String,
    /// The model (the job's `workload` is `model_id@model_version`).
    pub model_id: String,
    /// Its version.
    pub model_version: String,
    /// The client's id of this request; the job id is derived from it.
    pub request_id: String,
    /// Must be [`JOB_SCHEMA_VERSION`].
    pub schema_version: String,
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

/// How a job request's envelope contradicts its signed event (or breaks a rule of its own).
/// The server refuses such a request as `invalid` and records the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// `schema_version` is not [`JOB_SCHEMA_VERSION`].
    #[error("schema_version {0:?} is not supported; this server takes {JOB_SCHEMA_VERSION:?}")]
    SchemaVersion(String),
    /// `request_id` is empty or too long.
    #[error("request_id must have 1 to {REQUEST_ID_BYTES_MAX} bytes, not {0}")]
    RequestIdLength(usize),
    /// The event is not a `job_submitted`.
    #[error("event is a {0}, a job request carries a job_submitted")]
    NotAJob(&'static str),
    /// The event's job id is not the one of the request id.
    #[error("the event's job id {event} is not the one of request_id {request_id:?} ({expected})")]
    JobId {
        /// The event's.
        event: JobId,
        /// The envelope's request id.
        request_id: String,
        /// [`job_id_of`] it.
        expected: JobId,
    },
    /// The event's workload is not `model_id@model_version`.
    #[error("the event's workload {event:?} is not model_id@model_version {expected:?}")]
    Workload {
        /// The event's.
        event: String,
        /// The envelope's.
        expected: String,
    },
    /// The envelope's input hash is not the event's.
    #[error("input_hash {envelope} is not the event's input hash {event}")]
    InputHash {
        /// The envelope's.
        envelope: String,
        /// The event's.
        event: Hash32,
    },
}

/// The envelope must say what the signed event says: the client signs the event only, so the
/// envelope's fields are bound to it here.
pub fn check_envelope(request: &JobRequest, event: &Event) -> Result<(), EnvelopeError> {
    if request.schema_version != JOB_SCHEMA_VERSION {
        return Err(EnvelopeError::SchemaVersion(request.schema_version.clone()));
    }
    if request.request_id.is_empty() || request.request_id.len() > REQUEST_ID_BYTES_MAX {
        return Err(EnvelopeError::RequestIdLength(request.request_id.len()));
    }
    let Body::JobSubmitted(job) = &event.body else {
        return Err(EnvelopeError::NotAJob(event.kind().as_str()));
    };
    let expected_job = job_id_of(&request.request_id);
    if job.job != expected_job {
        return Err(EnvelopeError::JobId {
            event: job.job,
            request_id: request.request_id.clone(),
            expected: expected_job,
        });
    }
    let workload = format!("{}@{}", request.model_id, request.model_version);
    if job.workload != workload {
        return Err(EnvelopeError::Workload {
            event: job.workload.clone(),
            expected: workload,
        });
    }
    if request.input_hash != job.input_hash.to_string() {
        return Err(EnvelopeError::InputHash {
            envelope: request.input_hash.clone(),
            event: job.input_hash,
        });
    }
    Ok(())
}

/// A job to submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// The request id (the job id is derived from it).
    pub request_id: String,
    /// The shard to submit to.
    pub shard: String,
    /// The model.
    pub model_id: String,
    /// The model's version.
    pub model_version: String,
    /// Skills a node needs.
    pub skills: Vec<String>,
    /// Ticks the job runs once started.
    pub duration_ticks: u32,
    /// Deadline, in ticks from the submission's tick.
    pub deadline_ticks: u64,
    /// What the client pays, in millionths of a credit.
    pub budget_micros: u64,
    /// The input's BLAKE3 hash.
    pub input_hash: Hash32,
}

impl JobSpec {
    /// The job id: [`job_id_of`] the request id.
    pub fn job_id(&self) -> JobId {
        job_id_of(&self.request_id)
    }

    /// The `job_submitted` event of this job at `tick` with `nonce`.
    pub fn event(&self, tick: u64, nonce: u64) -> Event {
        Event::new(
            Role::Client,
            tick,
            nonce,
            JobSubmitted {
                job: self.job_id(),
                shard: self.shard.clone(),
                workload: format!("{}@{}", self.model_id, self.model_version),
                skills: self.skills.clone(),
                duration_ticks: self.duration_ticks,
                deadline_tick: tick.saturating_add(self.deadline_ticks),
                budget_micros: self.budget_micros,
                input_hash: self.input_hash,
            },
        )
    }

    /// The job request of this job, its event signed by `key` at `tick` with `nonce`.
    pub fn request(
        &self,
        key: &SigningKey,
        tick: u64,
        nonce: u64,
    ) -> Result<JobRequest, OversizeEvent> {
        let signed = SignedEvent::sign(&self.event(tick, nonce), key)?;
        Ok(JobRequest {
            event: WireSignedEvent::from_signed(&signed),
            input: None,
            input_hash: self.input_hash.to_string(),
            model_id: self.model_id.clone(),
            model_version: self.model_version.clone(),
            request_id: self.request_id.clone(),
            schema_version: JOB_SCHEMA_VERSION.to_owned(),
        })
    }
}

/// Why a job request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JobRequestError {
    /// The signed event would be over the size limit.
    #[error("the job does not fit in an event")]
    Oversize(#[source] OversizeEvent),
    /// The body could not be written as JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The JSON body of `POST /v0/jobs` for `job`, signed by `key` at `tick` with `nonce`, with
/// its input bytes when given (their BLAKE3 should be the job's input hash).
pub fn job_request_body(
    job: &JobSpec,
    key: &SigningKey,
    tick: u64,
    nonce: u64,
    input: Option<&[u8]>,
) -> Result<Vec<u8>, JobRequestError> {
    use base64::Engine as _;
    let mut request = job
        .request(key, tick, nonce)
        .map_err(JobRequestError::Oversize)?;
    request.input = input.map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
    Ok(serde_json::to_vec(&request)?)
}

/// The JSON body of `POST /v0/jobs/batch` holding `requests`, each a body made by
/// [`job_request_body`], in the order they are to be sequenced.
pub fn job_batch_body(requests: &[Vec<u8>]) -> Vec<u8> {
    let mut body = b"{\"jobs\":[".to_vec();
    for (index, request) in requests.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(request);
    }
    body.extend_from_slice(b"]}");
    body
}

/// The body of a `200` answer to `POST /v0/jobs/batch`: one item per job request, in the
/// order they came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBatchAnswer {
    /// How many items are accepted.
    pub accepted: usize,
    /// How many items are refused.
    pub refused: usize,
    /// Each request's answer.
    pub results: Vec<JobBatchItem>,
}

/// One request's answer in a [`JobBatchAnswer`]: the status and body `POST /v0/jobs` would
/// have given it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobBatchItem {
    /// The `202` body, when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<JobAccepted>,
    /// The error, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::wire::ErrorDetail>,
    /// The HTTP status `POST /v0/jobs` would have answered.
    pub status: u16,
}

/// Where a job is, as `GET /v0/jobs/{id}` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a node (submitted, spilled or requeued).
    Queued,
    /// Assigned to a node.
    Running,
    /// Its receipt says completed.
    Completed,
    /// Its receipt says failed.
    Failed,
    /// It left the fabric without a receipt: an owner command.
    Cancelled,
}

impl JobState {
    /// Its name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The 202 answer to `POST /v0/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAccepted {
    /// The job id (null when the event was not a job).
    pub job: Option<JobId>,
    /// Where to read about it.
    pub links: JobLinks,
    /// The request's id.
    pub request_id: String,
    /// Where its `job_submitted` is in the log.
    pub seq: u64,
    /// Always `accepted`.
    pub status: String,
    /// The tick it was sequenced at.
    pub tick: u64,
}

/// The links of a [`JobAccepted`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLinks {
    /// `/v0/proofs/{seq}`.
    pub proof: String,
    /// `/v0/jobs/{id}/result`.
    pub result: Option<String>,
    /// `/v0/jobs/{id}`.
    pub status: Option<String>,
}

impl JobLinks {
    /// The links of job `job` stored at `seq`.
    pub fn new(job: Option<JobId>, seq: u64) -> Self {
        Self {
            proof: format!("/v0/proofs/{seq}"),
            result: job.map(|job| format!("/v0/jobs/{job}/result")),
            status: job.map(|job| format!("/v0/jobs/{job}")),
        }
    }
}

/// The body of `GET /v0/jobs/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Assignments so far.
    pub attempts: u32,
    /// The key that submitted it.
    pub client: PublicKey,
    /// The log's events naming the job, in seq order.
    pub events: Vec<JobEvent>,
    /// Its input hash.
    pub input_hash: Hash32,
    /// The job id.
    pub job: JobId,
    /// The model (`model_id@model_version`, split at its last `@`).
    pub model_id: String,
    /// Its version.
    pub model_version: String,
    /// The node it was last assigned to.
    pub node: Option<String>,
    /// Where it is queued or ran last.
    pub shard: String,
    /// Where it is.
    pub status: JobState,
    /// When things happened.
    pub timings: JobTimings,
    /// `model_id@model_version`.
    pub workload: String,
}

/// One event of a [`JobStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The event's kind (`job_submitted`, `job_assigned`, …).
    pub kind: String,
    /// Its seq.
    pub seq: u64,
    /// Its tick.
    pub tick: u64,
}

/// The timings of a [`JobStatus`], in ticks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTimings {
    /// The node's measured execution time of its last run, in microseconds (from its
    /// receipt; `null` before one, or from a simulated node).
    pub execution_us: Option<u64>,
    /// The tick of its receipt.
    pub finished_tick: Option<u64>,
    /// Finished minus submitted.
    pub latency_ticks: Option<u64>,
    /// Started minus submitted.
    pub queued_ticks: Option<u64>,
    /// The tick of its last assignment.
    pub started_tick: Option<u64>,
    /// The tick it was submitted at.
    pub submitted_tick: u64,
    /// Milliseconds between ticks.
    pub tick_ms: u64,
}

impl JobTimings {
    /// The timings of a job submitted, started and finished at these ticks.
    pub fn new(
        tick_ms: u64,
        submitted_tick: u64,
        started_tick: Option<u64>,
        finished_tick: Option<u64>,
    ) -> Self {
        Self {
            execution_us: None,
            finished_tick,
            latency_ticks: finished_tick.map(|finished| finished.saturating_sub(submitted_tick)),
            queued_ticks: started_tick.map(|started| started.saturating_sub(submitted_tick)),
            started_tick,
            submitted_tick,
            tick_ms,
        }
    }
}

/// The body of `GET /v0/jobs/{id}/result`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The stored output of a completed job (`GET /v0/artifacts/{hash}`).
    pub artifact: Option<ArtifactRef>,
    /// The node's measured execution time, in microseconds (`null` from a simulated node).
    pub execution_us: Option<u64>,
    /// The job's input hash.
    pub input_hash: Hash32,
    /// The job id.
    pub job: JobId,
    /// The node that ran it.
    pub node: String,
    /// Completed or failed.
    pub outcome: JobOutcome,
    /// The output hash its receipt names.
    pub output_hash: Hash32,
    /// Where its receipt is in the log.
    pub receipt_seq: u64,
}

/// The artifact of a [`JobResult`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// `blake3(artifact)`.
    pub hash: Hash32,
    /// `/v0/artifacts/{hash}`.
    pub url: String,
}

impl ArtifactRef {
    /// The reference of the artifact stored under `hash`.
    pub fn new(hash: Hash32) -> Self {
        Self {
            hash,
            url: format!("/v0/artifacts/{hash}"),
        }
    }
}

/// The model id and version of a workload `model_id@model_version` (split at the last `@`; a
/// workload without one is all id, with an empty version).
pub fn model_of(workload: &str) -> (&str, &str) {
    workload.rsplit_once('@').unwrap_or((workload, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            request_id: "r-42".to_owned(),
            shard: "earth".to_owned(),
            model_id: "vision".to_owned(),
            model_version: "3".to_owned(),
            skills: vec!["general".to_owned()],
            duration_ticks: 2,
            deadline_ticks: 100,
            budget_micros: 5_000,
            input_hash: Hash32([9; 32]),
        }
    }

    /// Serialized directly, a body is what the server's sorted JSON objects give.
    fn sorted<T: Serialize>(value: &T) {
        assert_eq!(
            serde_json::to_string(value).unwrap(),
            serde_json::to_value(value).unwrap().to_string()
        );
    }

    #[test]
    fn job_id_is_the_documented_derivation() {
        let hash = blake3::derive_key("fabric 2026-12 request id to job id", b"r-42");
        let expected = u64::from_le_bytes(hash[..8].try_into().unwrap()) >> 1;
        assert_eq!(job_id_of("r-42"), expected);
        assert!(job_id_of("anything") < 1 << 63);
    }

    #[test]
    fn a_built_request_passes_the_envelope_check() {
        let key = fabric_events::derive_signing_key(3, "sim/client/earth");
        let request = spec().request(&key, 10, 1).unwrap();
        sorted(&request);
        let signed = request.event.decode().unwrap();
        let event = fabric_events::event_from_signed(&signed.signed).unwrap();
        assert_eq!(check_envelope(&request, &event), Ok(()));
        let Body::JobSubmitted(job) = &event.body else {
            panic!("a job event")
        };
        assert_eq!(job.deadline_tick, 110);
        assert_eq!(job.workload, "vision@3");
        let body = job_request_body(&spec(), &key, 10, 1, None).unwrap();
        let parsed: JobRequest = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed, request);
    }

    #[test]
    fn envelope_contradictions_are_named() {
        let key = fabric_events::derive_signing_key(3, "sim/client/earth");
        let request = spec().request(&key, 10, 1).unwrap();
        let event = spec().event(10, 1);
        let check = |change: &dyn Fn(&mut JobRequest)| {
            let mut changed = request.clone();
            change(&mut changed);
            check_envelope(&changed, &event).unwrap_err().to_string()
        };
        assert_eq!(
            check(&|r| r.schema_version = "x".to_owned()),
            "schema_version \"x\" is not supported; this server takes \"fabric.job.v0\""
        );
        assert_eq!(
            check(&|r| r.request_id = String::new()),
            "request_id must have 1 to 128 bytes, not 0"
        );
        assert!(check(&|r| r.request_id = "other".to_owned()).starts_with("the event's job id "));
        assert_eq!(
            check(&|r| r.model_version = "4".to_owned()),
            "the event's workload \"vision@3\" is not model_id@model_version \"vision@4\""
        );
        assert!(check(&|r| r.input_hash = "00".to_owned())
            .starts_with("input_hash 00 is not the event's input hash "));
    }

    #[test]
    fn answers_are_in_the_servers_order() {
        sorted(&JobAccepted {
            job: Some(1),
            links: JobLinks::new(Some(1), 4),
            request_id: "r".to_owned(),
            seq: 4,
            status: "accepted".to_owned(),
            tick: 2,
        });
        sorted(&JobStatus {
            attempts: 1,
            client: PublicKey([1; 32]),
            events: vec![JobEvent {
                kind: "job_submitted".to_owned(),
                seq: 4,
                tick: 2,
            }],
            input_hash: Hash32([2; 32]),
            job: 1,
            model_id: "a".to_owned(),
            model_version: "1".to_owned(),
            node: None,
            shard: "earth".to_owned(),
            status: JobState::Queued,
            timings: JobTimings::new(10, 2, Some(3), None),
            workload: "a@1".to_owned(),
        });
        sorted(&JobResult {
            artifact: Some(ArtifactRef::new(Hash32([3; 32]))),
            execution_us: Some(120),
            input_hash: Hash32([2; 32]),
            job: 1,
            node: "n".to_owned(),
            outcome: JobOutcome::Completed,
            output_hash: Hash32([4; 32]),
            receipt_seq: 9,
        });
        assert_eq!(
            serde_json::to_string(&JobState::Cancelled).unwrap(),
            "\"cancelled\""
        );
    }
}
