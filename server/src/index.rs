//! The job index the API reads: every served job's record (status, attempts, node, its
//! events, its receipt), built from the log's events after each durable tick and, at a
//! restart, from the whole log; a completed CPU job's result artifact is stored on the way.

use std::collections::HashMap;

use fabric_api::job::JobState;
use fabric_audit::{Observer, Replay, Step};
use fabric_events::{cpu_job, Body, Event, Hash32, JobId, JobOutcome, PublicKey};
use fabric_ledger::{ArtifactLog, LedgerReader, SignedTreeHead};
use fabric_projections::State;

use crate::error::ServerError;

/// One job as the API shows it, built from the log.
#[derive(Clone, Debug)]
pub(crate) struct JobRecord {
    pub(crate) job: JobId,
    pub(crate) shard: String,
    pub(crate) workload: String,
    pub(crate) input_hash: Hash32,
    pub(crate) client: PublicKey,
    pub(crate) submitted_tick: u64,
    pub(crate) started_tick: Option<u64>,
    pub(crate) finished_tick: Option<u64>,
    pub(crate) attempts: u32,
    pub(crate) node: Option<String>,
    pub(crate) status: JobState,
    pub(crate) events: Vec<JobEventRef>,
    pub(crate) receipt: Option<ReceiptRef>,
}

#[derive(Clone, Debug)]
pub(crate) struct JobEventRef {
    pub(crate) seq: u64,
    pub(crate) tick: u64,
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug)]
pub(crate) struct ReceiptRef {
    pub(crate) seq: u64,
    pub(crate) outcome: JobOutcome,
    pub(crate) node: String,
    pub(crate) output_hash: Hash32,
    pub(crate) artifact: ResultArtifact,
    pub(crate) execution_us: Option<u64>,
}

/// Where a receipt's result artifact is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ResultArtifact {
    /// None: a failed job.
    None,
    /// Stored by the index (an in-process node's output, derived from its input).
    Stored(Hash32),
    /// A node agent's output, stored by the node gateway before its receipt reached the log
    /// (so unless the receipt came another way): looked up when a client asks, not once per
    /// receipt on the driver's thread.
    NodeOutput(Hash32),
}

/// What the API reads, updated after each durable tick.
pub(crate) struct View {
    pub(crate) tick: u64,
    pub(crate) tree_head: SignedTreeHead,
    pub(crate) jobs: HashMap<JobId, JobRecord>,
    /// Jobs without a receipt that were still in the fabric after the last tick.
    pub(crate) active: std::collections::HashSet<JobId>,
    /// Federation peers, recorders and artifacts, as of the last tick.
    pub(crate) covenant: fabric_projections::state::Covenant,
}

/// Whether an event changes the state's covenant part (federation, recorders, artifacts).
pub(crate) fn changes_covenant(event: &Event) -> bool {
    match &event.body {
        Body::FederationReceipt(_) | Body::FederationFork(_) | Body::ArtifactRecorded(_) => true,
        Body::OwnerCommand(command) => matches!(
            command.action,
            fabric_events::OwnerAction::RegisterRecorder { .. }
        ),
        _ => false,
    }
}

/// Whether a tick's events hold an owner command: only one (cancel-job, retire-shard) ends a
/// job without an event of the job, so other ticks need not look at every job in the fabric.
pub(crate) fn owners_acted(events: &[Event]) -> bool {
    events
        .iter()
        .any(|event| matches!(event.body, Body::OwnerCommand(_)))
}

/// Jobs that left the fabric without a receipt were cancelled by the owners (a command, or a
/// retired shard): the state says so, the log has no event of the job for it. Called after a
/// tick with an owner command: only those cancel jobs.
pub(crate) fn settle(view: &mut View, state: &State) {
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
/// store). `sequenced_tick` is the tick the event was sequenced at: a job counts from it, not
/// from the (up to a few ticks older) tick its client signed.
pub(crate) fn index_event(
    jobs: &mut HashMap<JobId, JobRecord>,
    artifacts: &ArtifactLog,
    seq: u64,
    event: &Event,
    author: &PublicKey,
    sequenced_tick: u64,
) -> Result<(), ServerError> {
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
                    submitted_tick: sequenced_tick,
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
                let mut artifact = ResultArtifact::None;
                if body.outcome == JobOutcome::Completed && body.kernel.is_none() {
                    let bytes = cpu_job::artifact(&record.input_hash, body.job, record.attempts);
                    let derived = cpu_job::output_hash_of_artifact(&bytes);
                    if derived != body.output_hash {
                        return Err(ServerError::ArtifactMismatch {
                            job: body.job,
                            seq,
                            named: body.output_hash,
                            derived,
                        });
                    }
                    let hash = Hash32(*blake3::hash(&bytes).as_bytes());
                    artifacts.insert(&hash, &bytes).map_err(|error| {
                        ServerError::ArtifactWrite {
                            job: body.job,
                            error,
                        }
                    })?;
                    artifact = ResultArtifact::Stored(hash);
                }
                if body.outcome == JobOutcome::Completed && body.kernel.is_some() {
                    artifact = ResultArtifact::NodeOutput(body.output_hash);
                }
                record.receipt = Some(ReceiptRef {
                    seq,
                    outcome: body.outcome,
                    node: body.node.clone(),
                    output_hash: body.output_hash,
                    artifact,
                    execution_us: body.execution_us,
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

/// What the start's replay gives: the job index and the replay at the log's end.
pub(crate) type Indexed = (HashMap<JobId, JobRecord>, Replay);

/// The job index and the artifacts of a log, read from its start (a restart of `fabric serve`)
/// by the one replay of the log, which checks and folds every entry on the way.
/// With it, what the node gateway's feed needs is gathered in the same replay; the state at
/// the end comes back too.
pub(crate) fn index_log(
    reader: &LedgerReader,
    artifacts: &ArtifactLog,
    size: u64,
    feed: &mut crate::nodes::FeedBuilder,
) -> Result<Indexed, ServerError> {
    let mut indexer = Indexer {
        jobs: HashMap::new(),
        artifacts,
        failed: None,
        feed,
    };
    let mut replay = Replay::genesis();
    replay
        .read(reader, size, &mut indexer)
        .map_err(|error| ServerError::Replay { error })?;
    match indexer.failed {
        Some(error) => Err(error),
        None => Ok((indexer.jobs, replay)),
    }
}

/// Indexes each event of a replay; the first failure stops the indexing.
struct Indexer<'a> {
    jobs: HashMap<JobId, JobRecord>,
    artifacts: &'a ArtifactLog,
    failed: Option<ServerError>,
    feed: &'a mut crate::nodes::FeedBuilder,
}

impl Observer for Indexer<'_> {
    fn after(&mut self, step: &Step<'_>, state: &State) {
        if self.failed.is_some() {
            return;
        }
        self.feed.after(step, state);
        // The state's tick is the newest of the log so far: the tick the event was
        // sequenced at (the serve driver puts an event of the tick before a backdated job).
        let indexed = index_event(
            &mut self.jobs,
            self.artifacts,
            step.seq,
            step.event,
            step.author,
            state.tick(),
        );
        self.failed = indexed.err();
    }
}
