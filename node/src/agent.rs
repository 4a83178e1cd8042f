//! The node agent: one or more nodes of a served fabric over one NATS connection.
//!
//! Each node says hello (its registration and the work the log says it runs), then, at each
//! tick head the server publishes, sends its heartbeat when due and the receipts of the jobs
//! it finished, as one signed batch in nonce order, at most one batch in flight per node (the
//! receipts finished while a batch was in flight leave when it is acknowledged). A
//! receipt stays pending until the server answers it `admitted` or `duplicate` (re-signed with
//! a fresh nonce at each retry; the server recognises the job's receipt it already holds). A
//! work order is run only once the [`OrderVerifier`] accepts it; its input (carried by the
//! order, or fetched by content address) is checked against the job's input hash, then run by
//! the executor pool (sandboxed child processes).
//!
//! Stopping: once `stop` resolves, the agent takes no new order, finishes the jobs it holds and
//! sends their receipts (for at most [`DRAIN_MS_MAX`]), then closes. What it could not finish
//! its routers requeue once its heartbeats stop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use fabric_api::wire::WireSignedEvent;
use fabric_events::{
    Event, Hash32, Heartbeat, JobId, JobOutcome, JobReceipt, KernelRef, PublicKey, Role,
    SignedEvent, SigningKey,
};
use fabric_gpu_kernels::models::ModelJob;
use futures_util::StreamExt;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::executor::{Executor, ExecutorJob, JobFailure, JobResult, EXECUTOR_BATCH_JOBS_MAX};
use crate::protocol::{
    AttemptAck, AttemptBatch, Fetch, Fetched, Hello, NodeSubject, TickHead, Welcome, WorkBatch,
    ATTEMPTS_PER_BATCH_MAX, MESSAGE_BYTES_MAX, NODE_REQUESTS_IN_FLIGHT_MAX, TICK_SUBJECT,
};
use crate::sandbox::{SandboxLimits, SandboxMode};
use crate::verify::{OrderVerifier, VerifiedJob};

/// How long a request to the server may take before it counts as unanswered.
const REQUEST_TIMEOUT_MS: u64 = 40_000;
/// How long a stopping agent waits for its jobs and their receipts.
pub const DRAIN_MS_MAX: u64 = 30_000;
/// Most jobs one node keeps queued beyond its max concurrency.
const QUEUED_JOBS_MAX: usize = 1_024;
/// Inputs one node fetches at once: under the server's [`NODE_REQUESTS_IN_FLIGHT_MAX`], which
/// leaves room for the node's batch and hello.
const FETCHES_IN_FLIGHT_MAX: usize = NODE_REQUESTS_IN_FLIGHT_MAX / 2;
/// Finished assignments a node remembers, so that a late copy of an order is not run again.
const DONE_REMEMBERED_MAX: usize = 8_192;

/// What the agent runs.
pub struct AgentConfig {
    /// The NATS server.
    pub nats_url: String,
    /// The NATS user of these nodes, with its password; replies come on `_INBOX.<user>.>`.
    pub nats_user: Option<(String, String)>,
    /// The ledger keys tree heads must be signed by: the fabric's genesis key and, for a
    /// replicated fabric, its sequencers' keys.
    pub ledger_keys: Vec<PublicKey>,
    /// The nodes: name and secret key.
    pub nodes: Vec<(String, SigningKey)>,
    /// Executor processes shared by the nodes.
    pub executors: usize,
    /// What one job may use.
    pub limits: SandboxLimits,
    /// Whether jobs run sandboxed.
    pub sandbox: SandboxMode,
    /// Run the kernels on the GPU.
    pub gpu: bool,
    /// For tests: the share of completed jobs whose output the nodes falsify, in parts per
    /// million.
    pub byzantine_ppm: u32,
}

/// Why the agent stopped or could not start.
#[derive(Debug, Error)]
pub enum AgentError {
    /// NATS could not be reached.
    #[error("could not connect to NATS at {url}: {detail}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        detail: String,
    },
    /// The NATS server refused what the node did: its user's permissions.
    #[error("the NATS server refused node traffic: {0} (check the node's NATS user and its permissions)")]
    Refused(String),
    /// The fabric's server did not welcome a node.
    #[error("node `{node}`: {detail}")]
    Hello {
        /// The node.
        node: String,
        /// Why.
        detail: String,
    },
    /// No executor could be started.
    #[error("could not start the job executors: {0}")]
    Executors(JobFailure),
}

/// What the agent did, when it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// Jobs run to a completed receipt.
    pub completed: u64,
    /// Jobs that failed on a node (a failed receipt).
    pub failed: u64,
    /// Work orders refused by verification.
    pub refused_orders: u64,
    /// Receipts the server acknowledged.
    pub receipts_acknowledged: u64,
    /// Jobs still held when the drain ended.
    pub abandoned: u64,
}

/// One finished job, waiting for its receipt to be acknowledged.
#[derive(Clone, Debug)]
struct Finished {
    job: VerifiedJob,
    outcome: JobOutcome,
    output: Vec<u8>,
    output_hash: Hash32,
    adapter: String,
    execution_us: u64,
}

/// One node's side of the protocol.
struct NodeState {
    name: String,
    key: SigningKey,
    heartbeat_interval_ticks: u64,
    max_concurrency: usize,
    last_nonce: Option<u64>,
    last_heartbeat_tick: Option<u64>,
    in_flight: bool,
    /// Jobs it holds (queued, running or finished and not acknowledged): assignment seq → job.
    held: HashMap<u64, JobId>,
    queued: VecDeque<Queued>,
    running: usize,
    /// Jobs whose input is being fetched (at most [`FETCHES_IN_FLIGHT_MAX`]).
    fetching: usize,
    finished: Vec<Finished>,
    /// Assignments it finished with, newest last (at most [`DONE_REMEMBERED_MAX`]): an order
    /// of one of them that comes late (a welcome read before the receipt's tick) is not run
    /// again.
    done: VecDeque<(u64, JobId)>,
    done_seqs: HashSet<u64>,
    done_jobs: HashSet<JobId>,
    /// Jobs the log said it runs that it had not received, at the last acknowledgement.
    missing: HashSet<JobId>,
    rehello: bool,
}

impl NodeState {
    fn new(name: String, key: SigningKey, welcome: &Welcome) -> Self {
        Self {
            name,
            key,
            heartbeat_interval_ticks: u64::from(welcome.heartbeat_interval_ticks.max(1)),
            max_concurrency: welcome.max_concurrency.max(1) as usize,
            last_nonce: welcome.last_nonce,
            last_heartbeat_tick: None,
            in_flight: false,
            held: HashMap::new(),
            queued: VecDeque::new(),
            running: 0,
            fetching: 0,
            finished: Vec::new(),
            done: VecDeque::new(),
            done_seqs: HashSet::new(),
            done_jobs: HashSet::new(),
            missing: HashSet::new(),
            rehello: false,
        }
    }

    /// The assignment `seq` of `job` is over for this node: its receipt was acknowledged or
    /// refused.
    fn finish(&mut self, seq: u64, job: JobId) {
        self.held.remove(&seq);
        if self.done.len() >= DONE_REMEMBERED_MAX {
            if let Some((old_seq, old_job)) = self.done.pop_front() {
                self.done_seqs.remove(&old_seq);
                self.done_jobs.remove(&old_job);
            }
        }
        self.done.push_back((seq, job));
        self.done_seqs.insert(seq);
        self.done_jobs.insert(job);
    }

    /// The next nonce at `tick`: above every nonce the key used, and at least `tick << 24`
    /// (a restarted node, which does not know its last batch's nonces, starts above them).
    fn next_nonce(&mut self, tick: u64) -> u64 {
        let floor = tick << 24;
        let nonce = self.last_nonce.map_or(floor, |last| (last + 1).max(floor));
        self.last_nonce = Some(nonce);
        nonce
    }

    /// Heartbeats go out at half the interval (at least every tick): the router marks a node
    /// unhealthy after twice the interval of silence, and a heartbeat may take a tick or two
    /// to be sequenced.
    fn heartbeat_due(&self, tick: u64) -> bool {
        let every = (self.heartbeat_interval_ticks / 2).max(1);
        self.last_heartbeat_tick
            .is_none_or(|last| tick >= last + every)
    }

    fn idle(&self) -> bool {
        self.held.is_empty()
    }
}

/// What the tasks tell the main loop.
enum Note {
    Tick(TickHead),
    Orders(usize, Box<WorkBatch>),
    Fetched(usize, VerifiedJob, Result<Vec<u8>, String>),
    Ran(usize, Vec<Ran>),
    Answered(usize, Vec<Finished>, Result<AttemptAck, String>),
    Welcomed(usize, Result<(Welcome, WorkBatch), String>),
}

/// Runs the nodes of `config` until `stop` resolves; `ready` is called once every node has
/// been welcomed and is subscribed.
pub async fn run(
    config: AgentConfig,
    stop: impl Future<Output = ()>,
    ready: impl FnOnce(usize),
) -> Result<AgentReport, AgentError> {
    let executors = start_executors(&config).await?;
    let (notes, mut inbox) = mpsc::unbounded_channel();
    let (refusals, mut refused) = mpsc::unbounded_channel();
    let client = connect(&config, refusals).await?;
    subscribe(&client, &config, &notes).await?;
    let mut nodes = Vec::with_capacity(config.nodes.len());
    let mut verifier = OrderVerifier::trusting(config.ledger_keys.clone());
    for (name, key) in &config.nodes {
        // A refusal of the NATS server (a permission) comes as an error event, not as the
        // request's answer: whichever comes first decides.
        let (welcome, work) = tokio::select! {
            welcome = hello(&client, name) => welcome.map_err(|detail| AgentError::Hello {
                node: name.clone(),
                detail,
            })?,
            Some(detail) = refused.recv() => return Err(AgentError::Refused(detail)),
        };
        let mut node = NodeState::new(name.clone(), key.clone(), &welcome);
        take_orders(&mut node, &work, &mut verifier, &mut AgentReport::default());
        nodes.push(node);
    }
    ready(nodes.len());
    let mut agent = Agent {
        client,
        config,
        busy: vec![false; executors.len()],
        executors,
        ready: VecDeque::new(),
        notes,
        nodes,
        verifier,
        tick: 0,
        report: AgentReport::default(),
    };
    agent.start_jobs();
    tokio::pin!(stop);
    let mut draining: Option<Instant> = None;
    loop {
        if let Some(since) = draining {
            if agent.nodes.iter().all(NodeState::idle)
                || since.elapsed() > Duration::from_millis(DRAIN_MS_MAX)
            {
                break;
            }
        }
        let note = tokio::select! {
            note = inbox.recv() => note,
            Some(detail) = refused.recv() => return Err(AgentError::Refused(detail)),
            () = &mut stop, if draining.is_none() => {
                draining = Some(Instant::now());
                continue;
            }
            () = tokio::time::sleep(Duration::from_millis(200)), if draining.is_some() => continue,
        };
        let Some(note) = note else { break };
        agent.take(note, draining.is_some());
    }
    agent.report.abandoned = agent.nodes.iter().map(|node| node.held.len() as u64).sum();
    let _ = agent.client.flush().await;
    Ok(agent.report)
}

struct Agent {
    client: async_nats::Client,
    config: AgentConfig,
    executors: Vec<Executor>,
    /// Whether each executor has a batch.
    busy: Vec<bool>,
    /// Jobs with their inputs, waiting for an idle executor.
    ready: VecDeque<Ready>,
    notes: mpsc::UnboundedSender<Note>,
    nodes: Vec<NodeState>,
    verifier: OrderVerifier,
    tick: u64,
    report: AgentReport,
}

impl Agent {
    fn take(&mut self, note: Note, draining: bool) {
        match note {
            Note::Tick(head) => {
                // A head the ledger key did not sign says nothing about the fabric's clock.
                if !crate::verify::trusted(&self.config.ledger_keys, &head.tree_head) {
                    return;
                }
                self.tick = self.tick.max(head.tick);
                self.send_batches();
            }
            Note::Orders(index, batch) => {
                if !draining {
                    let node = &mut self.nodes[index];
                    take_orders(node, &batch, &mut self.verifier, &mut self.report);
                    self.start_jobs();
                }
            }
            Note::Fetched(index, job, fetched) => {
                self.nodes[index].fetching -= 1;
                match fetched {
                    Ok(input) => self.ready.push_back(Ready {
                        node: index,
                        job,
                        input,
                    }),
                    Err(why) => {
                        let finished = failed(job, &why, &self.nodes[index].name);
                        self.finish_run(index, finished);
                    }
                }
                self.start_jobs();
            }
            Note::Ran(slot, ran) => {
                self.busy[slot] = false;
                for ran in ran {
                    let index = ran.node;
                    let node = &self.nodes[index];
                    let key = node.key.verifying_key().to_bytes();
                    let finished = finished_of(ran, &key, self.config.byzantine_ppm, &node.name);
                    self.finish_run(index, finished);
                }
                self.start_jobs();
            }
            Note::Answered(index, sent, answer) => self.answered(index, sent, answer),
            Note::Welcomed(index, welcome) => {
                if let Ok((_, work)) = welcome {
                    let node = &mut self.nodes[index];
                    take_orders(node, &work, &mut self.verifier, &mut self.report);
                    self.start_jobs();
                }
            }
        }
    }

    /// A job of node `index` has run (or failed before it could).
    fn finish_run(&mut self, index: usize, finished: Finished) {
        let node = &mut self.nodes[index];
        node.running -= 1;
        match finished.outcome {
            JobOutcome::Completed => self.report.completed += 1,
            JobOutcome::Failed => self.report.failed += 1,
        }
        node.finished.push(finished);
    }

    /// Starts every queued job a node has room for: one whose input came with its order is
    /// ready for an executor, the others fetch theirs first (at most
    /// [`FETCHES_IN_FLIGHT_MAX`] at once; the queue waits behind the next one).
    fn start_jobs(&mut self) {
        for (index, node) in self.nodes.iter_mut().enumerate() {
            while node.running < node.max_concurrency {
                let fetch_next = node.queued.front().is_some_and(|next| next.input.is_none());
                if fetch_next && node.fetching >= FETCHES_IN_FLIGHT_MAX {
                    break;
                }
                let Some(Queued { job, input }) = node.queued.pop_front() else {
                    break;
                };
                node.running += 1;
                match input {
                    Some(input) => self.ready.push_back(Ready {
                        node: index,
                        job,
                        input,
                    }),
                    None => {
                        node.fetching += 1;
                        let client = self.client.clone();
                        let name = node.name.clone();
                        let notes = self.notes.clone();
                        tokio::spawn(async move {
                            let fetched = fetch(&client, &name, job.input_hash).await;
                            let _ = notes.send(Note::Fetched(index, job, fetched));
                        });
                    }
                }
            }
        }
        self.dispatch();
    }

    /// Hands the ready jobs to the idle executors, shared out evenly, at most
    /// [`EXECUTOR_BATCH_JOBS_MAX`] to each.
    fn dispatch(&mut self) {
        let idle: Vec<usize> = (0..self.busy.len()).filter(|&at| !self.busy[at]).collect();
        if idle.is_empty() || self.ready.is_empty() {
            return;
        }
        let share = self
            .ready
            .len()
            .div_ceil(idle.len())
            .min(EXECUTOR_BATCH_JOBS_MAX);
        for slot in idle {
            let take = share.min(self.ready.len());
            if take == 0 {
                break;
            }
            let mut jobs = Vec::with_capacity(take);
            let mut held = Vec::with_capacity(take);
            let taken: Vec<Ready> = self.ready.drain(..take).collect();
            for ready in taken {
                let Some(model_job) = ModelJob::from_name(ready.job.job_type.name()) else {
                    let why = format!("no kernel runs job type {}", ready.job.job_type.name());
                    let finished = failed(ready.job, &why, &self.nodes[ready.node].name);
                    self.finish_run(ready.node, finished);
                    continue;
                };
                jobs.push(ExecutorJob {
                    job: model_job,
                    weights: ready.job.weights.clone(),
                    input: ready.input,
                });
                held.push((ready.node, ready.job));
            }
            if jobs.is_empty() {
                continue;
            }
            self.busy[slot] = true;
            let notes = self.notes.clone();
            self.executors[slot].submit(
                jobs,
                Box::new(move |results| {
                    let ran = held
                        .into_iter()
                        .zip(results)
                        .map(|((node, job), result)| Ran { node, job, result })
                        .collect();
                    let _ = notes.send(Note::Ran(slot, ran));
                }),
            );
        }
    }

    /// Sends each node's batch (heartbeat when due, pending receipts) where none is in flight.
    fn send_batches(&mut self) {
        for index in 0..self.nodes.len() {
            self.send_batch(index);
        }
    }

    /// Sends node `index`'s batch (heartbeat when due, pending receipts), unless one is in
    /// flight or there is nothing to send.
    fn send_batch(&mut self, index: usize) {
        let tick = self.tick;
        let node = &mut self.nodes[index];
        if node.in_flight {
            return;
        }
        if node.rehello {
            node.rehello = false;
            let client = self.client.clone();
            let name = node.name.clone();
            let notes = self.notes.clone();
            tokio::spawn(async move {
                let _ = notes.send(Note::Welcomed(index, hello(&client, &name).await));
            });
        }
        let heartbeat = node.heartbeat_due(tick);
        if !heartbeat && node.finished.is_empty() {
            return;
        }
        let fitting = receipts_fitting(&node.finished, heartbeat);
        let sent: Vec<Finished> = node.finished.drain(..fitting).collect();
        let Some(batch) = batch_of(node, tick, heartbeat, &sent) else {
            node.finished.splice(0..0, sent);
            return;
        };
        if heartbeat {
            node.last_heartbeat_tick = Some(tick);
        }
        node.in_flight = true;
        let client = self.client.clone();
        let subject = NodeSubject::Attempts.of(&node.name);
        let notes = self.notes.clone();
        tokio::spawn(async move {
            let answer = request::<AttemptAck, _>(&client, subject, &batch).await;
            let _ = notes.send(Note::Answered(index, sent, answer));
        });
    }

    fn answered(&mut self, index: usize, sent: Vec<Finished>, answer: Result<AttemptAck, String>) {
        let node = &mut self.nodes[index];
        node.in_flight = false;
        let ack = match answer {
            Ok(ack) if ack.error.is_none() => ack,
            Ok(ack) => {
                eprintln!(
                    "node {}: the server refused a batch: {}",
                    node.name,
                    ack.error.unwrap_or_default()
                );
                node.finished.extend(sent);
                return;
            }
            Err(detail) => {
                eprintln!("node {}: batch unanswered ({detail}); retrying", node.name);
                node.finished.extend(sent);
                return;
            }
        };
        // The heartbeat, when sent, is the first result; receipts follow in order.
        let split = ack.results.len().saturating_sub(sent.len());
        for refused in ack.results[..split]
            .iter()
            .filter(|result| result.status != "admitted")
        {
            eprintln!(
                "node {}: its heartbeat was {}: {} {}",
                node.name,
                refused.status,
                refused.reason.as_deref().unwrap_or(""),
                refused.detail.as_deref().unwrap_or("")
            );
        }
        let receipt_results = &ack.results[split..];
        for (finished, result) in sent.into_iter().zip(receipt_results) {
            match result.status.as_str() {
                "admitted" | "duplicate" => {
                    node.finish(finished.job.assignment_seq, finished.job.job);
                    self.report.receipts_acknowledged += 1;
                }
                "refused" | "counted" => {
                    // Judged and refused (the job was requeued elsewhere, or is no longer
                    // this node's): nothing to retry.
                    eprintln!(
                        "node {}: the receipt of job {} was refused: {} {}",
                        node.name,
                        finished.job.job,
                        result.reason.as_deref().unwrap_or(""),
                        result.detail.as_deref().unwrap_or("")
                    );
                    node.finish(finished.job.assignment_seq, finished.job.job);
                }
                _ => node.finished.push(finished),
            }
        }
        // The log gives this node work it never received: its order may still be on its way
        // (the acknowledgement can overtake it), so only work missing at two acknowledgements
        // in a row makes the node ask for its orders again.
        let known: HashSet<JobId> = node.held.values().copied().collect();
        let missing: HashSet<JobId> = ack
            .running
            .iter()
            .filter(|job| !known.contains(job) && !node.done_jobs.contains(job))
            .copied()
            .collect();
        if missing.iter().any(|job| node.missing.contains(job)) {
            node.rehello = true;
        }
        node.missing = missing;
        // The receipts finished meanwhile go now, not at the next tick head: a node's
        // receipts then wait for one batch's round trip at most.
        if !node.finished.is_empty() {
            self.send_batch(index);
        }
    }
}

/// A verified job waiting for an executor, with its input when its order carried it.
struct Queued {
    job: VerifiedJob,
    input: Option<Vec<u8>>,
}

/// Verifies a batch of orders and queues their jobs, once per assignment.
fn take_orders(
    node: &mut NodeState,
    batch: &WorkBatch,
    verifier: &mut OrderVerifier,
    report: &mut AgentReport,
) {
    let verified = verifier.verify(batch, &node.name);
    for (order, verified) in batch.orders.iter().zip(verified) {
        match verified {
            Ok(job) => {
                if node.held.len() < node.max_concurrency + QUEUED_JOBS_MAX
                    && !node.held.contains_key(&job.assignment_seq)
                    && !node.done_seqs.contains(&job.assignment_seq)
                {
                    node.held.insert(job.assignment_seq, job.job);
                    // An input that is not the job's (never sent by a sound server) is
                    // dropped: the job's own is fetched by its hash instead.
                    let input = order
                        .input
                        .clone()
                        .filter(|bytes| Hash32(*blake3::hash(bytes).as_bytes()) == job.input_hash);
                    node.queued.push_back(Queued { job, input });
                }
            }
            Err(refused) => {
                report.refused_orders += 1;
                eprintln!("node {}: refused a work order: {refused}", node.name);
            }
        }
    }
}

/// Bytes an [`AttemptBatch`] may hold beside its outputs: its signed events (a few hundred
/// bytes each as JSON) and the keys around them.
const BATCH_EVENT_BYTES_MAX: usize = 1_024;

/// How many of the finished jobs (from the first) the next batch carries: at most
/// [`ATTEMPTS_PER_BATCH_MAX`] events with the heartbeat, and a body under
/// [`MESSAGE_BYTES_MAX`]; the rest wait for the next batch.
fn receipts_fitting(finished: &[Finished], heartbeat: bool) -> usize {
    let events_max = ATTEMPTS_PER_BATCH_MAX - usize::from(heartbeat);
    let mut bytes = BATCH_EVENT_BYTES_MAX * usize::from(heartbeat);
    let mut count = 0;
    for done in finished.iter().take(events_max) {
        bytes += BATCH_EVENT_BYTES_MAX + done.output.len().div_ceil(3) * 4;
        if count > 0 && bytes > MESSAGE_BYTES_MAX {
            break;
        }
        count += 1;
    }
    count
}

/// Signs a node's batch: its heartbeat (when due), then a receipt per finished job.
fn batch_of(
    node: &mut NodeState,
    tick: u64,
    heartbeat: bool,
    finished: &[Finished],
) -> Option<AttemptBatch> {
    let newest_assignment = finished
        .iter()
        .map(|f| f.job.assigned_tick)
        .max()
        .unwrap_or(0);
    let tick = tick.max(newest_assignment);
    let mut batch = AttemptBatch::default();
    let mut sign = |node: &mut NodeState, body: fabric_events::Body| -> Option<()> {
        let nonce = node.next_nonce(tick);
        let event = Event::new(Role::Node, tick, nonce, body);
        let signed = SignedEvent::sign(&event, &node.key).ok()?;
        batch.events.push(WireSignedEvent::from_signed(&signed));
        Some(())
    };
    if heartbeat {
        let running = node.held.len() as u32;
        sign(
            node,
            Heartbeat {
                node: node.name.clone(),
                running_jobs: running,
            }
            .into(),
        )?;
    }
    for done in finished {
        sign(
            node,
            JobReceipt {
                job: done.job.job,
                node: node.name.clone(),
                outcome: done.outcome,
                output_hash: done.output_hash,
                kernel: Some(kernel_ref(done)),
                started_tick: done.job.assigned_tick,
                finished_tick: tick,
                execution_us: Some(done.execution_us),
            }
            .into(),
        )?;
    }
    batch.outputs = finished
        .iter()
        .filter(|done| done.outcome == JobOutcome::Completed)
        .map(|done| BASE64.encode(&done.output))
        .collect();
    Some(batch)
}

fn kernel_ref(done: &Finished) -> KernelRef {
    KernelRef {
        id: done.job.job_type.kernel_id().to_owned(),
        version: done.job.job_type.kernel_version(),
        adapter: done.adapter.clone(),
        input_hash: done.job.input_hash,
    }
}

async fn start_executors(config: &AgentConfig) -> Result<Vec<Executor>, AgentError> {
    let (limits, mode, gpu, count) = (
        config.limits,
        config.sandbox,
        config.gpu,
        config.executors.max(1),
    );
    tokio::task::spawn_blocking(move || {
        (0..count)
            .map(|_| Executor::start(limits, mode, gpu))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| AgentError::Executors(JobFailure::Start("the start task panicked".to_owned())))?
    .map_err(AgentError::Executors)
}

/// A job whose input is at hand, waiting for an executor.
struct Ready {
    node: usize,
    job: VerifiedJob,
    input: Vec<u8>,
}

/// A job back from an executor: its node, its assignment and what became of it.
struct Ran {
    node: usize,
    job: VerifiedJob,
    result: JobResult,
}

/// A finished job's record: its output (falsified when this byzantine node lies about it) and
/// the output's hash, or its failure.
fn finished_of(ran: Ran, key: &[u8; 32], byzantine_ppm: u32, node: &str) -> Finished {
    match ran.result {
        Ok(mut out) => {
            if lies(key, ran.job.assignment_seq, byzantine_ppm) {
                if let Some(first) = out.output.first_mut() {
                    *first ^= 0x5a;
                }
            }
            Finished {
                output_hash: Hash32(*blake3::hash(&out.output).as_bytes()),
                output: out.output,
                outcome: JobOutcome::Completed,
                adapter: out.adapter,
                execution_us: out.execution_us,
                job: ran.job,
            }
        }
        Err(failure) => failed(ran.job, &failure.to_string(), node),
    }
}

fn failed(job: VerifiedJob, why: &str, node: &str) -> Finished {
    eprintln!("node {node}: job {} failed: {why}", job.job);
    Finished {
        job,
        outcome: JobOutcome::Failed,
        output: Vec::new(),
        output_hash: Hash32([0; 32]),
        adapter: String::new(),
        execution_us: 0,
    }
}

/// The input `input_hash` of a job of `node`, fetched by content address and checked
/// against it.
async fn fetch(
    client: &async_nats::Client,
    node: &str,
    input_hash: Hash32,
) -> Result<Vec<u8>, String> {
    let subject = NodeSubject::Fetch.of(node);
    let fetched: Fetched = request(client, subject, &Fetch { hash: input_hash }).await?;
    let Some(bytes) = fetched.bytes else {
        return Err(format!(
            "the server has no input {input_hash}: {}",
            fetched.error.unwrap_or_default()
        ));
    };
    let bytes = BASE64
        .decode(bytes)
        .map_err(|err| format!("the input is not base64: {err}"))?;
    let hash = Hash32(*blake3::hash(&bytes).as_bytes());
    if hash != input_hash {
        return Err(format!(
            "the input sent hashes to {hash}, not to the job's input hash {input_hash}"
        ));
    }
    Ok(bytes)
}

/// Whether a (byzantine, for tests) node of `key` falsifies the output of assignment `seq`:
/// a keyed hash of the assignment decides, so a rerun lies the same way.
fn lies(key: &[u8; 32], seq: u64, byzantine_ppm: u32) -> bool {
    if byzantine_ppm == 0 {
        return false;
    }
    let draw = blake3::keyed_hash(key, &seq.to_le_bytes());
    let value = u32::from_le_bytes([
        draw.as_bytes()[0],
        draw.as_bytes()[1],
        draw.as_bytes()[2],
        draw.as_bytes()[3],
    ]);
    u64::from(value) * 1_000_000 < u64::from(byzantine_ppm) * (u64::from(u32::MAX) + 1)
}

async fn connect(
    config: &AgentConfig,
    refusals: mpsc::UnboundedSender<String>,
) -> Result<async_nats::Client, AgentError> {
    let mut options = async_nats::ConnectOptions::new()
        .name("fabric-node")
        .event_callback(move |event| {
            let refusals = refusals.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = refusals.send(error.to_string());
                }
            }
        });
    if let Some((user, password)) = &config.nats_user {
        options = options
            .user_and_password(user.clone(), password.clone())
            .custom_inbox_prefix(format!("_INBOX.{user}"));
    }
    let connecting = options.connect(
        config
            .nats_url
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>(),
    );
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(AgentError::Connect {
            url: config.nats_url.clone(),
            detail: error.to_string(),
        }),
        Err(_) => Err(AgentError::Connect {
            url: config.nats_url.clone(),
            detail: "no answer within 10 s".to_owned(),
        }),
    }
}

/// Subscribes to the tick heads and each node's work, forwarding them to the main loop.
async fn subscribe(
    client: &async_nats::Client,
    config: &AgentConfig,
    notes: &mpsc::UnboundedSender<Note>,
) -> Result<(), AgentError> {
    let subscribe_error = |subject: &str, error: async_nats::SubscribeError| {
        AgentError::Refused(format!("could not subscribe to {subject}: {error}"))
    };
    let mut ticks = client
        .subscribe(TICK_SUBJECT)
        .await
        .map_err(|error| subscribe_error(TICK_SUBJECT, error))?;
    let tick_notes = notes.clone();
    tokio::spawn(async move {
        while let Some(message) = ticks.next().await {
            if let Ok(head) = serde_json::from_slice::<TickHead>(&message.payload) {
                let _ = tick_notes.send(Note::Tick(head));
            }
        }
    });
    for (index, (name, _)) in config.nodes.iter().enumerate() {
        let subject = NodeSubject::Work.of(name);
        let mut orders = client
            .subscribe(subject.clone())
            .await
            .map_err(|error| subscribe_error(&subject, error))?;
        let order_notes = notes.clone();
        let subject_read = subject.clone();
        tokio::spawn(async move {
            while let Some(message) = orders.next().await {
                match WorkBatch::decode(&message.payload) {
                    Ok(batch) => {
                        let _ = order_notes.send(Note::Orders(index, Box::new(batch)));
                    }
                    Err(error) => eprintln!("a message on {subject_read} is refused: {error}"),
                }
            }
        });
    }
    client
        .flush()
        .await
        .map_err(|error| AgentError::Refused(format!("could not reach NATS: {error}")))
}

/// Says hello for `node`: its registration and running work, or why not.
async fn hello(client: &async_nats::Client, node: &str) -> Result<(Welcome, WorkBatch), String> {
    let welcome: Welcome = request(client, NodeSubject::Hello.of(node), &Hello {}).await?;
    let bytes = BASE64
        .decode(&welcome.work)
        .map_err(|error| format!("the welcome's work is not base64: {error}"))?;
    let work = WorkBatch::decode(&bytes).map_err(|error| format!("the welcome's {error}"))?;
    Ok((welcome, work))
}

/// A request on a node subject, with its answer parsed (or the server's `{"error": …}`).
async fn request<T: serde::de::DeserializeOwned, B: serde::Serialize>(
    client: &async_nats::Client,
    subject: String,
    body: &B,
) -> Result<T, String> {
    let payload = serde_json::to_vec(body).map_err(|err| err.to_string())?;
    let asked = client.request(subject.clone(), payload.into());
    let message = match tokio::time::timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), asked).await
    {
        Ok(Ok(message)) => message,
        Ok(Err(error)) => {
            return Err(format!(
            "no answer on {subject} ({error}): is `fabric serve --nats` running for this fabric?"
        ))
        }
        Err(_) => {
            return Err(format!(
                "no answer on {subject} within {REQUEST_TIMEOUT_MS} ms"
            ))
        }
    };
    if let Ok(answer) = serde_json::from_slice::<T>(&message.payload) {
        return Ok(answer);
    }
    #[derive(serde::Deserialize)]
    struct ErrorReply {
        error: String,
    }
    match serde_json::from_slice::<ErrorReply>(&message.payload) {
        Ok(reply) => Err(reply.error),
        Err(error) => Err(format!("the answer on {subject} does not parse: {error}")),
    }
}
