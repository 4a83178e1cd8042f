//! The driver of `fabric serve`: the same actors, gate and ledger as a planetary run, but ticks
//! follow a wall-clock interval and jobs come from clients instead of the seed's workload.
//!
//! At each tick the driver asks the checkpointer, the routers and the nodes for their events
//! (as a simulation's driver does), then takes the submissions that arrived since the last tick, in
//! arrival order, and puts each through the gate after the actors' events. The batch is
//! appended as one group commit; only then is each submitter told the seq of its event (or of
//! its `Rejected` event). Wall-clock time decides only at which tick a submission is sequenced,
//! never a byte of an event.
//!
//! Differences from a run, on purpose: there are no simulated arrivals and no simulated node
//! outages, and a served job is a CPU job whose input hash its client named
//! ([`ServedJobs`]); it completes on its node after its `duration_ticks`. The keys and the
//! genesis come from the caller ([`ServeSpec`]): nothing here derives a key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use fabric_events::{Body, Event, JobId, OwnerCommand, RejectReason, SignedEvent};
use fabric_ledger::{Ledger, SignedTreeHead};
use fabric_projections::State;
use tokio::sync::{mpsc, oneshot, watch};

use crate::actors::{Append, Close, LedgerWriter};
use crate::fleet::{ActorKeys, Actors, ACTOR_THREADS};
use crate::gate::{self, Admitted, Attempt, Verdict};
use crate::restore::restore;
use crate::work::{NodeWork, ServedJobs};
use crate::world::World;
use crate::RunError;

/// Most submissions one tick takes; the rest wait for the next tick (their order is kept).
pub const SUBMISSIONS_PER_TICK_MAX: usize = 16_384;
/// How far behind the current tick a submission's own tick may be. A client signs the tick it
/// last saw (`GET /v0/health`); a tick from the future, or older than this, is refused so that
/// no client can move the fabric's clock or backdate a job.
pub const SUBMISSION_TICK_LAG_MAX: u64 = 100_000;

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
}

/// One thing a client asks the fabric to append.
#[derive(Debug)]
pub enum Request {
    /// A job submission as its client signed it, checked by [`gate::check_signed`] (off the
    /// driver's thread): the event, or why it is refused.
    Job {
        /// As received.
        signed: SignedEvent,
        /// The decoded event, or the reason and detail of its refusal.
        checked: Result<Event, (RejectReason, String)>,
    },
    /// An owner command with its approvals; the ledger key signs its envelope at the tick it
    /// is sequenced at.
    Owner {
        /// The nonce the approvals are bound to.
        nonce: u64,
        /// The command.
        command: OwnerCommand,
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
    /// Seq of its event, or of the `Rejected` event standing in its place.
    pub seq: u64,
    /// Admitted or refused (with why).
    pub verdict: Verdict,
}

/// One appended tick, for the server's views (job index, metrics, artifacts).
pub struct ServedTick<'a> {
    /// The tick.
    pub tick: u64,
    /// The state after it.
    pub state: &'a Arc<State>,
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

fn start_from(ledger: &Ledger) -> Result<Start, RunError> {
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
    // The nodes need the input of every served job still in the fabric; its submission may be
    // anywhere in the log, so read the log once.
    let mut inputs = HashMap::new();
    for entry in reader.entries(0..ledger.len()) {
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
    let start = start_from(&ledger)?;
    if let Some(key) = keys.missing_secret(&start.state) {
        return Err(RunError::MissingSecret(key));
    }
    let served_jobs = Arc::new(ServedJobs::new(start.inputs));
    let mut tree_head = ledger.tree_head();
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
        while !genesis_tick && replies.len() < SUBMISSIONS_PER_TICK_MAX {
            let Ok(submission) = intake.try_recv() else {
                break;
            };
            let position = batch.signed.len();
            let one = sequence(state, tick, submission.request, keys)?;
            if let Some(Body::JobSubmitted(job)) = one
                .events
                .first()
                .filter(|_| one.verdicts.first() == Some(&Verdict::Admitted))
                .map(|event| &event.body)
            {
                served_jobs.admitted(job.job, job.input_hash);
            }
            let verdict = one.verdicts.into_iter().next().unwrap_or(Verdict::Admitted);
            batch.signed.extend(one.signed);
            batch.events.extend(one.events);
            replies.push((position, verdict, submission.reply));
        }
        batch
    };
    if admitted.signed.is_empty() {
        return Ok(());
    }
    let first_seq = tree_head.tree_size;
    let started = std::time::Instant::now();
    *tree_head = writer
        .send(Append {
            events: admitted.signed.clone(),
            snapshot,
        })
        .await??
        .tree_head;
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
        state,
        first_seq,
        events: &admitted.events,
        signed: &admitted.signed,
        tree_head,
        append_ns,
        decision_ns: &decision_ns,
    });
    // Durable, and the server's views know of it: now the submitters may hear of it, and a
    // `GET` right after the answer finds the job. One who stopped waiting loses nothing.
    for (position, verdict, reply) in replies {
        let _ = reply.send(Ack {
            tick,
            seq: first_seq + position as u64,
            verdict,
        });
    }
    Ok(())
}

/// The rules of a submitted job beyond the gate's: it is a `job_submitted` event, signed for
/// a tick that is not ahead of the fabric's nor more than [`SUBMISSION_TICK_LAG_MAX`] behind.
fn submission_fits(event: Event, tick: u64) -> Result<Event, (RejectReason, String)> {
    if !matches!(event.body, Body::JobSubmitted(_)) {
        return Err((
            RejectReason::Invalid,
            format!(
                "only job_submitted events may be submitted as jobs, not {}",
                event.kind().as_str()
            ),
        ));
    }
    let signed_tick = event.header.tick;
    if signed_tick > tick || tick - signed_tick > SUBMISSION_TICK_LAG_MAX {
        return Err((
            RejectReason::Invalid,
            format!(
                "the submission is signed for tick {signed_tick}, the fabric is at tick {tick} \
                 (a submission may be at most {SUBMISSION_TICK_LAG_MAX} ticks old and never \
                 from the future)"
            ),
        ));
    }
    Ok(event)
}

/// Puts one request through the gate at `tick`: exactly one event comes out, the request's
/// own or a `Rejected` in its place.
fn sequence(
    state: &mut State,
    tick: u64,
    request: Request,
    keys: &ActorKeys,
) -> Result<Admitted, RunError> {
    match request {
        Request::Job { signed, checked } => {
            match checked.and_then(|event| submission_fits(event, tick)) {
                Err((reason, detail)) => gate::refuse(state, tick, &signed, reason, &detail, keys),
                Ok(event) => gate::admit(state, tick, vec![Attempt::external(event, signed)], keys),
            }
        }
        Request::Owner { nonce, command } => {
            // The envelope is the ledger key's in force now (a rotation before it in this
            // tick has already moved it).
            let ledger_key = keys.ledger_secret(state)?;
            let attempt = gate::owner_command_attempt(tick, nonce, command, ledger_key)?;
            gate::admit(state, tick, vec![attempt], keys)
        }
    }
}
