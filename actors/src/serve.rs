//! The driver of `fabric serve`: the same actors, gate and ledger as a planetary run, but ticks
//! follow a wall-clock interval and jobs come from clients instead of the seed's workload.
//!
//! At each tick the driver asks the checkpointer, the routers and the nodes for their events
//! (as a simulation's driver does), then takes the submissions that arrived since the last tick, in
//! arrival order, and puts each through the gate after the actors' events. A submission without
//! a valid signature of a registered key is only counted, in the tick's one `refusals_counted`
//! event; every other refusal is recorded as its own `Rejected` event. The batch is appended as
//! one group commit; only then is each submitter told the seq of its event (or of the
//! `Rejected` or `refusals_counted` event standing for it). Wall-clock time decides only at
//! which tick a submission is sequenced, never a byte of an event. Nothing a submission holds
//! can stop the driver: what fails on its behalf is its refusal.
//!
//! Differences from a run, on purpose: there are no simulated arrivals and no simulated node
//! outages, and a served job is a CPU job whose input hash its client named
//! ([`ServedJobs`]); it completes on its node after its `duration_ticks`. The keys and the
//! genesis come from the caller ([`ServeSpec`]): nothing here derives a key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use fabric_events::codec::encode_event;
use fabric_events::{
    verify_signature, Body, Event, Hash32, JobId, OwnerCommand, PublicKey, RejectReason, Role,
    SequencerTakeover, SignedEvent,
};
use fabric_ledger::{Ledger, SignedTreeHead};
use fabric_projections::State;
use tokio::sync::{mpsc, oneshot, watch};

use crate::actors::{Append, Close, LedgerWriter};
use crate::fleet::{ActorKeys, Actors, ACTOR_THREADS};
use crate::gate::{self, Admitted, Attempt, AttemptId, Verdict};
use crate::restore::restore;
use crate::work::{NodeWork, ServedJobs};
use crate::world::World;
use crate::RunError;

/// Most submissions one tick takes; the rest wait for the next tick (their order is kept).
pub const SUBMISSIONS_PER_TICK_MAX: usize = 16_384;
/// How far behind the current tick a submission's own tick may be, unless the server is told
/// otherwise (`fabric serve --submission-tick-window`). A client signs the tick it last saw
/// (`GET /v0/health`); a tick from the future, or older than the window, is refused so that
/// no client can move the fabric's clock or backdate a job.
pub const SUBMISSION_TICK_WINDOW_DEFAULT: u64 = 8;

/// What to serve.
pub struct ServeSpec {
    /// The world (its failure schedule and workload are ignored: served nodes have no
    /// simulated outages and served jobs come from clients).
    pub world: World,
    /// The keys of the ledger, the routers and the nodes.
    pub keys: ActorKeys,
    /// The events of tick 0, appended when the ledger is empty (ignored otherwise).
    pub genesis: Vec<Attempt>,
    /// Wall-clock time between ticks.
    pub tick_interval: Duration,
    /// How many ticks old a submission's signed tick may be (see
    /// [`SUBMISSION_TICK_WINDOW_DEFAULT`]).
    pub submission_tick_window: u64,
    /// Where jobs' inputs are kept (the server's artifact store; none: inputs are refused).
    pub inputs: Option<Arc<dyn crate::work::InputStore>>,
    /// Whether every job must be of a registered model (a fabric of node agents).
    pub models_required: bool,
    /// A replicated fabric's quorum: no tick is acknowledged before it holds the tick.
    pub quorum: Option<Arc<dyn Quorum>>,
}

/// What the sequencer of a replicated log waits for before it acknowledges a tick
/// (docs/FORMAT.md §16): the stream's quorum holding the log.
pub trait Quorum: Send + Sync {
    /// Answers once the replicated log holds the first `size` entries (waiting out an outage
    /// of the quorum), or says why it never will.
    fn holds(&self, size: u64) -> QuorumAnswer;
}

/// The answer of [`Quorum::holds`].
pub type QuorumAnswer =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// One thing a client asks the fabric to append.
#[derive(Debug)]
pub enum Request {
    /// A job submission as its client signed it, decoded by [`gate::check_decoded`] (off the
    /// driver's thread): the event, or why it is refused. Its signature is verified by the
    /// tick that sequences it, together with the tick's other attempts.
    Job {
        /// As received.
        signed: SignedEvent,
        /// The decoded event, or the reason and detail of its refusal.
        checked: Result<Event, (RejectReason, String)>,
        /// The job's input bytes, when the request carried them (their BLAKE3 checked).
        input: Option<Vec<u8>>,
    },
    /// A node's heartbeat or receipt as the node signed it (from `node`'s own subject), checked
    /// by [`gate::check_signed`] off the driver's thread.
    Node {
        /// The node whose subject it came on: the event must name it.
        node: String,
        /// As received.
        signed: SignedEvent,
        /// The decoded event, or the reason and detail of its refusal.
        checked: Result<Event, (RejectReason, String)>,
    },
    /// A node's completed receipt that the server's re-execution contradicted: the ledger's
    /// `attestation_mismatch` stands in its place (the node's signed receipt is its evidence).
    /// Only when the receipt's author is the node's registered key; otherwise the receipt
    /// goes through the gate as it is (and is refused there).
    Mismatch {
        /// The node whose subject it came on.
        node: String,
        /// The receipt, as the node signed it.
        signed: SignedEvent,
        /// The receipt, decoded.
        event: Box<Event>,
        /// What the ledger says of it.
        mismatch: Box<fabric_events::AttestationMismatch>,
    },
    /// An owner command with its approvals; the ledger key signs its envelope at the tick it
    /// is sequenced at.
    Owner {
        /// The nonce the approvals are bound to.
        nonce: u64,
        /// The command.
        command: OwnerCommand,
    },
    /// An artifact's record as its recorder (an owner or a registered recorder) signed it,
    /// decoded by [`gate::check_decoded`] off the driver's thread; its signature is verified
    /// by the tick, like a job's.
    Record {
        /// As received.
        signed: SignedEvent,
        /// The decoded event, or the reason and detail of its refusal.
        checked: Result<Event, (RejectReason, String)>,
    },
    /// What the ledger itself says (a federation receipt or a peer's fork): the ledger key
    /// in force signs it at the tick it is sequenced at.
    Ledger {
        /// The body.
        body: Box<Body>,
    },
}

/// A request with the way back to whoever sent it.
#[derive(Debug)]
pub struct Submission {
    /// What to append.
    pub request: Request,
    /// Told once the batch holding the request's event (or its `Rejected`) is durable.
    pub reply: oneshot::Sender<Ack>,
}

/// The answer to a submission, sent after the append is durable.
#[derive(Clone, Debug)]
pub struct Ack {
    /// The tick it was sequenced at.
    pub tick: u64,
    /// Seq of its event, or of the `Rejected` event standing in its place, or of the tick's
    /// `refusals_counted` event that counts it.
    pub seq: u64,
    /// Admitted or refused (with why).
    pub verdict: Verdict,
}

/// One tick, for the server's views (job index, metrics, artifacts): what it appended (nothing,
/// when no event came), and the tree head after it.
pub struct ServedTick<'a> {
    /// The tick.
    pub tick: u64,
    /// The state after it.
    pub state: &'a State,
    /// Seq of the first event of the tick (when it appended any).
    pub first_seq: u64,
    /// The events appended, in order.
    pub events: &'a [Event],
    /// Their signed forms.
    pub signed: &'a [SignedEvent],
    /// The tree head after the tick.
    pub tree_head: &'a SignedTreeHead,
    /// Wall-clock nanoseconds the tick's append took (telemetry only).
    pub append_ns: u64,
    /// Routing decisions of the tick, in nanoseconds each (telemetry only).
    pub decision_ns: &'a [u32],
}

/// How serving ended.
pub struct ServeOutcome {
    /// The ledger, handed back by the writer.
    pub ledger: Ledger,
    /// The last tick.
    pub last_tick: u64,
    /// The tree head after it.
    pub tree_head: SignedTreeHead,
}

/// The state of an existing served log (or a fresh one): its tick, state and the inputs of
/// its served jobs still in flight.
struct Start {
    state: State,
    next_tick: u64,
    inputs: HashMap<JobId, fabric_events::Hash32>,
}

fn start_from(ledger: &Ledger, served_nodes: bool) -> Result<Start, RunError> {
    if ledger.is_empty() {
        return Ok(Start {
            state: State::new(),
            next_tick: 0,
            inputs: HashMap::new(),
        });
    }
    let reader = ledger.reader();
    let restored = restore(&reader, &ledger.ledger_key())?;
    let mut state = restored.state;
    // Serve appends a tick in one group commit (at most `SUBMISSIONS_PER_TICK_MAX` requests
    // plus the actors' events), so the last stored tick is whole: fold it and go on after it.
    for (index, (event, signed)) in restored.stored.iter().enumerate() {
        state
            .admit(&signed.author, event)
            .map_err(|error| RunError::Apply {
                tick: restored.tick,
                index,
                kind: event.kind().as_str(),
                error,
            })?;
    }
    // The nodes this server runs need the input of every served job still in the fabric; its
    // submission may be anywhere in the log, so read the log once. (Node agents fetch inputs
    // from the artifact store: a server without nodes of its own reads nothing here.)
    let mut inputs = HashMap::new();
    let scanned = if served_nodes { ledger.len() } else { 0 };
    for entry in reader.entries(0..scanned) {
        let entry = entry?;
        let event = fabric_audit::Replay::decode(&entry)?;
        if let Body::JobSubmitted(job) = &event.body {
            if state.job_ix(job.job).is_some() {
                inputs.insert(job.job, job.input_hash);
            }
        }
    }
    Ok(Start {
        state,
        next_tick: restored.tick + 1,
        inputs,
    })
}

/// Serves `ledger` (opened with the seed's ledger key; empty, or a log `fabric serve` wrote):
/// a tick every `spec.tick_interval`, with the submissions of `intake`, until `stop` turns
/// true; then one last tick takes what is left in `intake`. Must run inside an actix system.
pub async fn serve(
    spec: &ServeSpec,
    ledger: Ledger,
    mut intake: mpsc::Receiver<Submission>,
    mut stop: watch::Receiver<bool>,
    mut on_tick: impl FnMut(&ServedTick<'_>),
) -> Result<ServeOutcome, RunError> {
    let keys = &spec.keys;
    if ledger.is_empty() && spec.genesis.is_empty() {
        return Err(RunError::NoGenesis);
    }
    let mut start = start_from(&ledger, !keys.nodes.is_empty())?;
    let mut ledger = ledger;
    let mut tree_head = ledger.tree_head();
    if let Some(quorum) = spec.quorum.as_deref() {
        let tick = start.next_tick;
        let first_seq = ledger.len();
        if let Some((event, signed, head)) =
            take_over(keys, &mut start, &mut ledger, quorum).await?
        {
            tree_head = head;
            on_tick(&ServedTick {
                tick,
                state: &start.state,
                first_seq,
                events: &[event],
                signed: &[signed],
                tree_head: &tree_head,
                append_ns: 0,
                decision_ns: &[],
            });
        }
    }
    if let Some(key) = keys.missing_secret(&start.state) {
        return Err(RunError::MissingSecret(key));
    }
    let served_jobs = Arc::new(ServedJobs::new(start.inputs));
    let mut genesis = ledger.is_empty().then(|| spec.genesis.clone());

    let arbiters: Vec<Arbiter> = (0..ACTOR_THREADS).map(|_| Arbiter::new()).collect();
    let writer = LedgerWriter {
        ledger: Some(ledger),
        append_events_max: fabric_ledger::BATCH_EVENTS_MAX,
    }
    .start();
    // No intakes (served jobs come from clients) and no GPU: served jobs are CPU jobs with the
    // inputs their clients named.
    let work: Arc<dyn NodeWork> = Arc::clone(&served_jobs) as Arc<dyn NodeWork>;
    let actors = Actors::start(&spec.world, keys, &work, None, &arbiters);

    let mut state = Arc::new(start.state);
    let mut tick = start.next_tick;
    let mut ticker = tokio::time::interval(spec.tick_interval.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = *stop.borrow();
    let result = loop {
        if !stopping && tick > 0 {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = stop.changed() => {
                    // A dropped sender means nobody can stop us any more: stop now.
                    stopping = changed.is_err() || *stop.borrow();
                }
            }
        }
        let outcome = serve_tick(
            tick,
            &actors,
            &writer,
            keys,
            &mut state,
            &mut tree_head,
            &served_jobs,
            &mut intake,
            &mut on_tick,
            genesis.take(),
            spec.submission_tick_window,
            InputRules {
                store: spec.inputs.as_deref(),
                models_required: spec.models_required,
            },
            spec.quorum.as_deref(),
        )
        .await;
        if let Err(error) = outcome {
            break Err(error);
        }
        if stopping {
            break Ok(());
        }
        tick += 1;
    };
    // Whoever still waits gets no answer: their senders drop with the channel.
    intake.close();
    let closed = writer.send(Close).await;
    for arbiter in &arbiters {
        arbiter.stop();
    }
    result?;
    let ledger = closed?.ok_or(RunError::LedgerClosed)?;
    Ok(ServeOutcome {
        ledger,
        last_tick: tick,
        tree_head,
    })
}

/// A replicated fabric's sequencer whose key is not the ledger key in force takes the log
/// over first (docs/FORMAT.md §16): a tick of its own holding one `sequencer_takeover`
/// signed by its key, opening the next term, appended and held by the quorum before anything
/// else is sequenced. Returns the event and the tree head after it, or `None` when the key is
/// in force already (this replica sequenced last).
async fn take_over(
    keys: &ActorKeys,
    start: &mut Start,
    ledger: &mut Ledger,
    quorum: &dyn Quorum,
) -> Result<Option<(Event, SignedEvent, SignedTreeHead)>, RunError> {
    let own = PublicKey::from(&keys.ledger.verifying_key());
    let state = &mut start.state;
    if !state.authority().founded() || state.authority().ledger_key() == own {
        return Ok(None);
    }
    let tick = start.next_tick;
    let event = Event::new(
        Role::Ledger,
        tick,
        gate::next_ledger_nonce(state, &own, tick),
        SequencerTakeover {
            term: state.sequencing().term + 1,
            sequencer: own,
        },
    );
    // Refused (a key that is no sequencer, or retired): this replica may not sequence.
    state.admit(&own, &event).map_err(|error| {
        RunError::Replication(format!("this replica cannot take over: {error}"))
    })?;
    let signed = SignedEvent::sign(&event, &keys.ledger)
        .map_err(|error| RunError::Replication(format!("signing the takeover: {error}")))?;
    let receipt = ledger.append(std::slice::from_ref(&signed))?;
    quorum
        .holds(receipt.tree_head.tree_size)
        .await
        .map_err(RunError::Replication)?;
    start.next_tick = tick + 1;
    Ok(Some((event, signed, receipt.tree_head)))
}

#[allow(clippy::too_many_arguments)]
async fn serve_tick(
    tick: u64,
    actors: &Actors,
    writer: &Addr<LedgerWriter>,
    keys: &ActorKeys,
    state: &mut Arc<State>,
    tree_head: &mut SignedTreeHead,
    served_jobs: &ServedJobs,
    intake: &mut mpsc::Receiver<Submission>,
    on_tick: &mut impl FnMut(&ServedTick<'_>),
    genesis: Option<Vec<Attempt>>,
    submission_tick_window: u64,
    rules: InputRules<'_>,
    quorum: Option<&dyn Quorum>,
) -> Result<(), RunError> {
    let tree = (tree_head.tree_size, tree_head.root);
    let genesis_tick = genesis.is_some();
    let (attempts, snapshot, decision_ns) = match genesis {
        Some(genesis) => (genesis, None, Vec::new()),
        None => {
            let proposals = actors.propose(tick, state, tree).await?;
            (
                proposals.attempts,
                proposals.snapshot,
                proposals.decision_ns,
            )
        }
    };
    let mut replies = Vec::new();
    let admitted = {
        let state = Arc::get_mut(state).ok_or(RunError::StateShared)?;
        let mut batch = gate::admit(state, tick, attempts, keys)?;
        // Genesis registers the clients: submissions wait for tick 1.
        if !genesis_tick {
            let submissions = take_submissions(intake);
            let mut intake = TickIntake {
                state,
                tick,
                keys,
                submission_tick_window,
                rules,
                batch: &mut batch,
                replies: &mut replies,
            };
            intake.sequence_all(submissions, served_jobs)?;
        }
        batch
    };
    let first_seq = tree_head.tree_size;
    if admitted.signed.is_empty() {
        // Nothing to store, but the tick happened: the views (and the nodes, whose clock the
        // server's tick heads are) hear of it with the unchanged tree head.
        on_tick(&ServedTick {
            tick,
            state: state.as_ref(),
            first_seq,
            events: &[],
            signed: &[],
            tree_head,
            append_ns: 0,
            decision_ns: &decision_ns,
        });
        return Ok(());
    }
    let started = std::time::Instant::now();
    *tree_head = writer
        .send(Append {
            events: admitted.signed.clone(),
            snapshot,
        })
        .await??
        .tree_head;
    // Durable here; in a replicated fabric, also held by the stream's quorum before anyone
    // hears of it.
    if let Some(quorum) = quorum {
        quorum
            .holds(tree_head.tree_size)
            .await
            .map_err(RunError::Replication)?;
    }
    let append_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    // Jobs that ended leave the nodes' table of inputs.
    for event in &admitted.events {
        if let Body::JobReceipt(receipt) = &event.body {
            if state.job_ix(receipt.job).is_none() {
                served_jobs.ended(receipt.job);
            }
        }
    }
    on_tick(&ServedTick {
        tick,
        state: state.as_ref(),
        first_seq,
        events: &admitted.events,
        signed: &admitted.signed,
        tree_head,
        append_ns,
        decision_ns: &decision_ns,
    });
    // Durable, and the server's views know of it: now the submitters may hear of it, and a
    // `GET` right after the answer finds the job. One who stopped waiting loses nothing.
    for Reply {
        position,
        verdict,
        reply,
    } in replies
    {
        let _ = reply.send(Ack {
            tick,
            seq: first_seq + position as u64,
            verdict,
        });
    }
    Ok(())
}

/// The rules of a submitted job beyond the gate's: it is a `job_submitted` event, signed for
/// a tick that is not ahead of the fabric's nor more than `window` ticks behind (so no client
/// moves the fabric's clock or backdates a job).
fn submission_fits(event: Event, tick: u64, window: u64) -> Result<Event, (RejectReason, String)> {
    if !matches!(event.body, Body::JobSubmitted(_)) {
        return Err((
            RejectReason::Invalid,
            format!(
                "only job_submitted events may be submitted as jobs, not {}",
                event.kind().as_str()
            ),
        ));
    }
    within_window(event, tick, window)
}

/// Where a served job's input must be, and whether every job must be of a registered model.
#[derive(Clone, Copy)]
pub struct InputRules<'a> {
    /// The artifact store (none: no input can be kept).
    pub store: Option<&'a dyn crate::work::InputStore>,
    /// A fabric of node agents runs only jobs of registered models.
    pub models_required: bool,
}

/// The rule of a job's model and input: a job of a registered model has input bytes of its
/// job type's size (sent with it, or stored already); on a fabric of node agents, the
/// workload must be a registered model.
fn input_fits(
    state: &State,
    event: Event,
    input: Option<&[u8]>,
    rules: InputRules<'_>,
) -> Result<Event, (RejectReason, String)> {
    let Body::JobSubmitted(job) = &event.body else {
        return Ok(event);
    };
    let invalid = |detail: String| Err((RejectReason::Invalid, detail));
    let Some(model) = state.model(&job.workload) else {
        if rules.models_required {
            return invalid(format!(
                "no model {} is registered in this fabric (the owners register one with \
                 register-model)",
                job.workload
            ));
        }
        return Ok(event);
    };
    let len = match input {
        Some(bytes) => bytes.len(),
        None => match rules.store.and_then(|store| store.len_of(&job.input_hash)) {
            Some(len) => len,
            None => {
                return invalid(format!(
                    "the server holds no input {}: send its bytes in `input`",
                    job.input_hash
                ))
            }
        },
    };
    let wanted = model.job_type.input_bytes();
    if len != wanted {
        return invalid(format!(
            "a {} job of model {} takes {wanted} input bytes, not {len}",
            model.job_type.name(),
            job.workload
        ));
    }
    Ok(event)
}

/// Stores a job's input before the gate judges the job: only a registered key's request gets
/// this far (the others are counted first), and the tick's append makes it durable.
fn store_input(
    event: &Event,
    input: Option<&[u8]>,
    rules: InputRules<'_>,
) -> Result<(), (RejectReason, String)> {
    let (Body::JobSubmitted(job), Some(bytes)) = (&event.body, input) else {
        return Ok(());
    };
    let Some(store) = rules.store else {
        return Err((
            RejectReason::Invalid,
            "this server keeps no job inputs".to_owned(),
        ));
    };
    store.store(&job.input_hash, bytes).map_err(|detail| {
        (
            RejectReason::Invalid,
            format!("the input was not stored: {detail}"),
        )
    })
}

/// The rules of a node's event beyond the gate's: a heartbeat or a receipt naming the node
/// whose subject it came on, signed for a tick within the window (as [`submission_fits`]).
fn node_event_fits(
    event: Event,
    node: &str,
    tick: u64,
    window: u64,
) -> Result<Event, (RejectReason, String)> {
    let named = match &event.body {
        Body::Heartbeat(heartbeat) => &heartbeat.node,
        Body::JobReceipt(receipt) => &receipt.node,
        _ => {
            return Err((
                RejectReason::Invalid,
                format!(
                    "a node sends only heartbeats and job receipts, not {}",
                    event.kind().as_str()
                ),
            ))
        }
    };
    if named != node {
        return Err((
            RejectReason::Invalid,
            format!("the event names node `{named}` but came on the subject of node `{node}`"),
        ));
    }
    within_window(event, tick, window)
}

/// An artifact's record: only `artifact_recorded`, signed within the window.
fn record_fits(event: Event, tick: u64, window: u64) -> Result<Event, (RejectReason, String)> {
    if !matches!(event.body, Body::ArtifactRecorded(_)) {
        return Err((
            RejectReason::Invalid,
            format!(
                "only artifact_recorded events may be recorded, not {}",
                event.kind().as_str()
            ),
        ));
    }
    within_window(event, tick, window)
}

fn within_window(event: Event, tick: u64, window: u64) -> Result<Event, (RejectReason, String)> {
    let signed_tick = event.header.tick;
    if signed_tick > tick || tick - signed_tick > window {
        return Err((
            RejectReason::Invalid,
            format!(
                "the submission is signed for tick {signed_tick}, the fabric is at tick {tick}: \
                 a submission may be at most {window} ticks old (the submission tick window) \
                 and never from the future"
            ),
        ));
    }
    Ok(event)
}

/// The refusals that carry no valid signature of a registered key: counted, not recorded.
const UNSIGNED_REFUSALS: [RejectReason; 4] = [
    RejectReason::BadSignature,
    RejectReason::Malformed,
    RejectReason::Oversize,
    RejectReason::WeakKey,
];

/// Takes the submissions that arrived since the last tick, in arrival order, at most
/// [`SUBMISSIONS_PER_TICK_MAX`].
fn take_submissions(intake: &mut mpsc::Receiver<Submission>) -> Vec<Submission> {
    let mut taken = Vec::new();
    while taken.len() < SUBMISSIONS_PER_TICK_MAX {
        let Ok(submission) = intake.try_recv() else {
            break;
        };
        taken.push(submission);
    }
    taken
}

/// Where a submitter hears of its request: the position of its event (or of the `Rejected`
/// or `refusals_counted` event standing for it) in the tick's batch.
struct Reply {
    position: usize,
    verdict: Verdict,
    reply: oneshot::Sender<Ack>,
}

/// The submissions of one tick being put into its batch.
struct TickIntake<'a> {
    state: &'a mut State,
    tick: u64,
    keys: &'a ActorKeys,
    submission_tick_window: u64,
    rules: InputRules<'a>,
    batch: &'a mut Admitted,
    replies: &'a mut Vec<Reply>,
}

impl TickIntake<'_> {
    /// Sequences the tick's submissions: first the attempts without a valid signature of a
    /// registered key are counted (judged against the state before the tick's submissions),
    /// then one `refusals_counted` event stands for all of them, then every other request
    /// is admitted or recorded as refused, in arrival order. No request can stop the driver:
    /// whatever fails on its behalf is its refusal.
    fn sequence_all(
        &mut self,
        mut submissions: Vec<Submission>,
        served_jobs: &ServedJobs,
    ) -> Result<(), RunError> {
        let ledger = PublicKey::from(&self.keys.ledger_secret(self.state)?.verifying_key());
        verify_signatures(&mut submissions);
        let mut counts = [0u64; RejectReason::ALL.len()];
        let judged: Vec<(Submission, Option<(RejectReason, String)>)> = submissions
            .into_iter()
            .map(|submission| {
                let refusal = counted_refusal(self.state, self.tick, &ledger, &submission.request);
                if let Some((reason, _)) = &refusal {
                    counts[reason.tag()] += 1;
                }
                (submission, refusal)
            })
            .collect();
        // A job signed for an earlier tick folds at the newest tick of the log: an event of
        // this tick must come before it, so that its latency counts from now.
        let backdated = judged.iter().any(|(submission, refusal)| {
            refusal.is_none() && signed_tick(&submission.request).is_some_and(|t| t < self.tick)
        });
        let counted_at = if counts.iter().any(|count| *count > 0)
            || (backdated && self.state.tick() < self.tick)
        {
            let position = self.batch.signed.len();
            gate::count_refusals(self.state, self.tick, &counts, self.keys, self.batch)?;
            Some(position)
        } else {
            None
        };
        for (submission, refusal) in judged {
            match (refusal, counted_at) {
                (Some((reason, detail)), Some(position)) => self.replies.push(Reply {
                    position,
                    verdict: Verdict::Counted { reason, detail },
                    reply: submission.reply,
                }),
                _ => self.sequence_one(submission, served_jobs)?,
            }
        }
        Ok(())
    }

    /// Admits one request or records its refusal: exactly one event comes out, the request's
    /// own or a `Rejected` in its place.
    fn sequence_one(
        &mut self,
        submission: Submission,
        served_jobs: &ServedJobs,
    ) -> Result<(), RunError> {
        let position = self.batch.signed.len();
        let one = sequence(
            self.state,
            self.tick,
            submission.request,
            self.keys,
            self.submission_tick_window,
            self.rules,
        )?;
        if let Some(Body::JobSubmitted(job)) = one
            .events
            .first()
            .filter(|_| one.verdicts.first() == Some(&Verdict::Admitted))
            .map(|event| &event.body)
        {
            served_jobs.admitted(job.job, job.input_hash);
        }
        let verdict = one.verdicts.into_iter().next().unwrap_or(Verdict::Admitted);
        self.batch.signed.extend(one.signed);
        self.batch.events.extend(one.events);
        self.replies.push(Reply {
            position,
            verdict,
            reply: submission.reply,
        });
        Ok(())
    }
}

/// Verifies the signatures of the tick's decoded job and node attempts together (one ed25519
/// batch verification; a node's attempts were verified by the node gateway, and are known):
/// a bad one's `checked` becomes its refusal. What verifies is remembered, so the ledger does
/// not verify it again ([`fabric_ledger::SignatureMemo`]).
fn verify_signatures(submissions: &mut [Submission]) {
    gate::check_signatures_of(
        submissions,
        |submission| match &submission.request {
            Request::Job {
                signed,
                checked: Ok(_),
                ..
            }
            | Request::Node {
                signed,
                checked: Ok(_),
                ..
            }
            | Request::Record {
                signed,
                checked: Ok(_),
            } => Some(signed),
            _ => None,
        },
        |submission, refusal| {
            if let Request::Job { checked, .. }
            | Request::Node { checked, .. }
            | Request::Record { checked, .. } = &mut submission.request
            {
                *checked = Err(refusal);
            }
        },
    );
}

/// The tick a job request's client signed, when it is a well-signed event.
fn signed_tick(request: &Request) -> Option<u64> {
    match request {
        Request::Job {
            checked: Ok(event), ..
        }
        | Request::Node {
            checked: Ok(event), ..
        }
        | Request::Record {
            checked: Ok(event), ..
        } => Some(event.header.tick),
        Request::Mismatch { event, .. } => Some(event.header.tick),
        _ => None,
    }
}

/// Why a request is refused without being evidence against anyone, if it is: its attempt
/// carries no valid signature (bad signature, malformed, oversize, weak key), its key is not
/// registered, or an owner command has no valid approval of an owner. Judged against `state`.
fn counted_refusal(
    state: &State,
    tick: u64,
    ledger: &PublicKey,
    request: &Request,
) -> Option<(RejectReason, String)> {
    match request {
        Request::Mismatch { signed, .. } => {
            state.authority().key(&signed.author).is_none().then(|| {
                (
                    RejectReason::UnknownKey,
                    format!("key {} is not registered", signed.author),
                )
            })
        }
        Request::Job {
            signed, checked, ..
        }
        | Request::Node {
            signed, checked, ..
        } => match checked {
            Err((reason, detail)) if UNSIGNED_REFUSALS.contains(reason) => {
                Some((*reason, detail.clone()))
            }
            _ if state.authority().key(&signed.author).is_none() => Some((
                RejectReason::UnknownKey,
                format!("key {} is not registered", signed.author),
            )),
            _ => None,
        },
        Request::Record { signed, checked } => match checked {
            Err((reason, detail)) if UNSIGNED_REFUSALS.contains(reason) => {
                Some((*reason, detail.clone()))
            }
            _ if state.authority().key(&signed.author).is_none()
                && !state.authority().owners().contains(&signed.author) =>
            {
                Some((
                    RejectReason::UnknownKey,
                    format!("key {} is neither an owner nor registered", signed.author),
                ))
            }
            _ => None,
        },
        Request::Ledger { .. } => None,
        Request::Owner { nonce, command } => {
            if gate::has_owner_approval(state, command, *nonce) {
                return None;
            }
            let event = Event::new(Role::Owner, tick, *nonce, command.clone());
            if let Err(oversize) = encode_event(&event) {
                return Some((RejectReason::Oversize, oversize.to_string()));
            }
            match state.authorize(ledger, &event) {
                Err(error) => Some((error.reject_reason(), error.to_string())),
                // No approval of an owner, yet authorised: no threshold to meet.
                Ok(()) => None,
            }
        }
    }
}

/// Puts one request through the gate at `tick`: exactly one event comes out, the request's
/// own or a `Rejected` in its place. An owner command too large for the ledger to envelope is
/// refused as oversize, recorded under the hash of the message its owners approved.
fn sequence(
    state: &mut State,
    tick: u64,
    request: Request,
    keys: &ActorKeys,
    window: u64,
    rules: InputRules<'_>,
) -> Result<Admitted, RunError> {
    match request {
        Request::Job {
            signed,
            checked,
            input,
        } => {
            let fits = checked
                .and_then(|event| submission_fits(event, tick, window))
                .and_then(|event| input_fits(state, event, input.as_deref(), rules))
                .and_then(|event| store_input(&event, input.as_deref(), rules).map(|()| event));
            match fits {
                Err((reason, detail)) => {
                    gate::refuse(state, tick, AttemptId::of(&signed), reason, &detail, keys)
                }
                Ok(event) => gate::admit(state, tick, vec![Attempt::external(event, signed)], keys),
            }
        }
        Request::Mismatch {
            node,
            signed,
            event,
            mismatch,
        } => {
            let registered = state
                .nodes()
                .iter()
                .any(|candidate| candidate.name == node && candidate.key == signed.author);
            match node_event_fits(*event, &node, tick, window) {
                Ok(_) if registered => gate::attest(state, tick, *mismatch, keys),
                Ok(event) => gate::admit(state, tick, vec![Attempt::external(event, signed)], keys),
                Err((reason, detail)) => {
                    gate::refuse(state, tick, AttemptId::of(&signed), reason, &detail, keys)
                }
            }
        }
        Request::Node {
            node,
            signed,
            checked,
        } => match checked.and_then(|event| node_event_fits(event, &node, tick, window)) {
            Err((reason, detail)) => {
                gate::refuse(state, tick, AttemptId::of(&signed), reason, &detail, keys)
            }
            Ok(event) => gate::admit(state, tick, vec![Attempt::external(event, signed)], keys),
        },
        Request::Record { signed, checked } => {
            match checked.and_then(|event| record_fits(event, tick, window)) {
                Err((reason, detail)) => {
                    gate::refuse(state, tick, AttemptId::of(&signed), reason, &detail, keys)
                }
                Ok(event) => gate::admit(state, tick, vec![Attempt::external(event, signed)], keys),
            }
        }
        Request::Ledger { body } => gate::ledger_says(state, tick, *body, keys),
        Request::Owner { nonce, command } => {
            // Owner commands are few: a copy keeps the command at hand for a refusal. The
            // envelope is the ledger key's in force now (a rotation before it in this tick has
            // already moved it).
            let ledger_key = keys.ledger_secret(state)?;
            let event = Event::new(Role::Owner, tick, nonce, command.clone());
            match SignedEvent::sign(&event, ledger_key) {
                Ok(signed) => {
                    gate::admit(state, tick, vec![Attempt::external(event, signed)], keys)
                }
                Err(oversize) => {
                    let approved = AttemptId {
                        hash: Hash32(*blake3::hash(&command.approval_message(nonce)).as_bytes()),
                        claimed_author: approving_owner(state, &command, nonce),
                    };
                    gate::refuse(
                        state,
                        tick,
                        approved,
                        RejectReason::Oversize,
                        &oversize.to_string(),
                        keys,
                    )
                }
            }
        }
    }
}

/// The first owner whose approval of `command` verifies (the ledger key when none does).
fn approving_owner(state: &State, command: &OwnerCommand, nonce: u64) -> PublicKey {
    let message = command.approval_message(nonce);
    command
        .approvals
        .iter()
        .find(|approval| {
            state.authority().owners().contains(&approval.owner)
                && verify_signature(&approval.owner, &approval.signature, &message).is_ok()
        })
        .map_or_else(|| state.authority().ledger_key(), |approval| approval.owner)
}

#[cfg(test)]
mod tests {
    use fabric_events::{
        derive_signing_key, FabricGenesis, JobSubmitted, OwnerAction, Rejected, SigningKey,
    };

    use super::*;

    const TICK: u64 = 200;
    const NO_INPUTS: InputRules<'static> = InputRules {
        store: None,
        models_required: false,
    };

    /// A state after a genesis of a ledger key and three owners (2 of 3), with their keys.
    fn founded() -> (State, SigningKey, Vec<SigningKey>) {
        let ledger = derive_signing_key(3, "tests/ledger");
        let owners: Vec<SigningKey> = (0..3)
            .map(|index| derive_signing_key(3, &format!("tests/owner/{index}")))
            .collect();
        let genesis = Event::new(
            Role::Ledger,
            0,
            0,
            FabricGenesis {
                ledger_key: PublicKey::from(&ledger.verifying_key()),
                owners: owners
                    .iter()
                    .map(|owner| PublicKey::from(&owner.verifying_key()))
                    .collect(),
                owner_threshold: 2,
                key_origin: fabric_events::KeyOrigin::Operator,
            },
        );
        let mut state = State::new();
        state
            .admit(&PublicKey::from(&ledger.verifying_key()), &genesis)
            .expect("the genesis founds the fabric");
        (state, ledger, owners)
    }

    fn command(action: OwnerAction, nonce: u64, approvers: &[&SigningKey]) -> Request {
        let mut command = OwnerCommand {
            action,
            expiry_tick: TICK + 100,
            approvals: Vec::new(),
        };
        for approver in approvers {
            command.approve(nonce, approver);
        }
        Request::Owner { nonce, command }
    }

    fn job(key: &SigningKey, tick: u64, nonce: u64) -> Request {
        let event = Event::new(
            Role::Client,
            tick,
            nonce,
            JobSubmitted {
                job: nonce,
                shard: "earth".to_owned(),
                workload: "w@1".to_owned(),
                skills: Vec::new(),
                duration_ticks: 1,
                deadline_tick: tick + 10,
                budget_micros: 1,
                input_hash: Hash32([9; 32]),
            },
        );
        let signed = SignedEvent::sign(&event, key).expect("small");
        Request::Job {
            checked: gate::check_signed(&signed),
            signed,
            input: None,
        }
    }

    fn ledger_of(key: &SigningKey) -> PublicKey {
        PublicKey::from(&key.verifying_key())
    }

    /// An owner command too large for the ledger to envelope is that command's refusal:
    /// counted without an owner's approval, recorded (naming the approving owner) with one;
    /// never an error that would stop the driver.
    #[test]
    fn an_owner_command_the_ledger_cannot_envelope_is_refused_not_a_stop() {
        let (mut state, ledger, owners) = founded();
        let huge = || OwnerAction::Governance {
            payload: vec![7; 17_000],
        };
        let unapproved = command(huge(), 1, &[]);
        let counted = counted_refusal(&state, TICK, &ledger_of(&ledger), &unapproved);
        assert_eq!(
            counted.map(|(reason, _)| reason),
            Some(RejectReason::Oversize)
        );

        let approved = command(huge(), 2, &[&owners[0], &owners[1]]);
        assert_eq!(
            counted_refusal(&state, TICK, &ledger_of(&ledger), &approved),
            None
        );
        let Request::Owner { command: sent, .. } = &approved else {
            unreachable!("an owner request")
        };
        let message_hash = Hash32(*blake3::hash(&sent.approval_message(2)).as_bytes());
        let out = sequence(
            &mut state,
            TICK,
            approved,
            &ActorKeys::ledger_only(ledger.clone()),
            8,
            NO_INPUTS,
        )
        .expect("a refusal, no stop");
        assert!(matches!(
            out.verdicts.as_slice(),
            [Verdict::Refused {
                reason: RejectReason::Oversize,
                ..
            }]
        ));
        match &out.events[..] {
            [Event {
                body:
                    Body::Rejected(Rejected {
                        attempt_hash,
                        claimed_author,
                        reason: RejectReason::Oversize,
                        ..
                    }),
                ..
            }] => {
                assert_eq!(*attempt_hash, message_hash);
                assert_eq!(*claimed_author, ledger_of(&owners[0]));
            }
            other => panic!("one rejected event, not {other:?}"),
        }
    }

    /// What carries no valid signature of a registered key is counted; what a registered key
    /// signed (or one owner approved) is evidence and goes through the gate to be recorded.
    #[test]
    fn only_attempts_of_registered_keys_are_evidence() {
        let (mut state, ledger, owners) = founded();
        let ledger_key = ledger_of(&ledger);
        let client = derive_signing_key(3, "tests/client");
        let stranger = derive_signing_key(3, "tests/stranger");
        let reason_of = |state: &State, request: &Request| {
            counted_refusal(state, TICK, &ledger_key, request).map(|(reason, _)| reason)
        };

        let mut bad_signature = job(&client, TICK, 1);
        if let Request::Job {
            signed, checked, ..
        } = &mut bad_signature
        {
            signed.signature.0[0] ^= 1;
            *checked = gate::check_signed(signed);
        }
        assert_eq!(
            reason_of(&state, &bad_signature),
            Some(RejectReason::BadSignature)
        );
        assert_eq!(
            reason_of(&state, &job(&stranger, TICK, 1)),
            Some(RejectReason::UnknownKey)
        );
        let strangers_command = command(OwnerAction::PauseAll, 5, &[&stranger]);
        assert_eq!(
            reason_of(&state, &strangers_command),
            Some(RejectReason::UnknownKey)
        );

        // Registered, the client's job is judged by the gate: one signed 100 ticks ago is
        // recorded against it.
        let register = command(
            OwnerAction::RegisterClient {
                client: "tests.client".to_owned(),
                key: PublicKey::from(&client.verifying_key()),
            },
            6,
            &[&owners[0], &owners[2]],
        );
        let out = sequence(
            &mut state,
            TICK,
            register,
            &ActorKeys::ledger_only(ledger.clone()),
            8,
            NO_INPUTS,
        )
        .expect("sequenced");
        assert_eq!(out.verdicts, [Verdict::Admitted]);
        let backdated = job(&client, TICK - 100, 2);
        assert_eq!(reason_of(&state, &backdated), None);
        let out = sequence(
            &mut state,
            TICK,
            backdated,
            &ActorKeys::ledger_only(ledger.clone()),
            8,
            NO_INPUTS,
        )
        .expect("sequenced");
        assert!(matches!(
            &out.verdicts[..],
            [Verdict::Refused { reason: RejectReason::Invalid, detail }] if detail.contains("window")
        ));
        let at_the_edge = job(&client, TICK - 8, 3);
        let out = sequence(
            &mut state,
            TICK,
            at_the_edge,
            &ActorKeys::ledger_only(ledger.clone()),
            8,
            NO_INPUTS,
        )
        .expect("sequenced");
        assert!(
            matches!(&out.verdicts[..], [Verdict::Refused { reason: RejectReason::Invalid, detail }] if detail.contains("shard")),
            "past the window check, the job is judged by the state (no shard earth here): {:?}",
            out.verdicts
        );

        // One real approval of the two needed: evidence against its approver.
        let one_approval = command(OwnerAction::PauseAll, 7, &[&owners[1]]);
        assert_eq!(reason_of(&state, &one_approval), None);
        let out = sequence(
            &mut state,
            TICK,
            one_approval,
            &ActorKeys::ledger_only(ledger.clone()),
            8,
            NO_INPUTS,
        )
        .expect("sequenced");
        assert!(matches!(
            &out.verdicts[..],
            [Verdict::Refused {
                reason: RejectReason::TooFewOwnerSignatures,
                ..
            }]
        ));
    }
}
