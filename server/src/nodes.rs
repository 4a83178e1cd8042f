//! The node gateway: the server's side of the node protocol on NATS (docs/FORMAT.md §15;
//! the bodies are `fabric_node::protocol`'s).
//!
//! It runs on a thread of its own (a small tokio runtime) so that nothing a node sends costs
//! the driver's thread: it verifies signatures and decodes there, and hands each node event to
//! the driver as a [`Request::Node`] through the same intake as the HTTP submissions; the
//! driver puts it through the gate at its next tick and answers once the tick is durable.
//!
//! After each durable tick the driver tells it what was appended ([`NodeGateway::tick`]); it
//! keeps the Merkle frontier of the log and proves each new entry it needs against the tick's
//! signed tree head in O(batch) ([`fabric_ledger::merkle::batch_inclusion_proofs`]), then
//! publishes each node's new assignments of the tick, as a [`WorkBatch`](fabric_node::protocol::WorkBatch) of orders carrying
//! their inputs, on the node's `work` subject, and the tick's head on `fabric.v1.tick`.
//!
//! Hostile input: a node subject is only reachable by the NATS user the operator gave that
//! node (FORMAT §15.5), and even then every event must carry a valid signature of the node's
//! registered key, name that node and pass the gate; a batch is bounded
//! ([`ATTEMPTS_PER_BATCH_MAX`], [`OUTPUT_BYTES_MAX`]); an output is stored only when a
//! receipt of a job that node runs names its hash; an input is served only to the node that
//! runs its job; the requests worked on at once are bounded, per node
//! ([`NODE_REQUESTS_IN_FLIGHT_MAX`]) and in all ([`GATEWAY_REQUESTS_IN_FLIGHT_MAX`]), so a
//! node that floods its subjects is answered `busy` and holds no more of the server's memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use fabric_actors::gate::{self, Verdict};
use fabric_actors::serve::{Ack, Request, ServedTick, Submission};
use fabric_audit::{Observer, Step};
use fabric_events::{
    AttestationMismatch, Body, Entry, Event, Hash32, JobId, JobOutcome, JobReceipt,
    ModelRegistered, OwnerAction, RejectReason, SignedEvent,
};
use fabric_gpu_kernels::models::ModelJob;
use fabric_gpu_kernels::Engine;
use fabric_ledger::merkle::{self, Frontier, InclusionProof};
use fabric_ledger::{ArtifactLog, SignedTreeHead};
use fabric_node::protocol::{
    AttemptAck, AttemptBatch, AttemptResult, Fetch, Fetched, NodeSubject, ProvedEntry, TickHead,
    Welcome, WorkBatch, WorkOrder, ATTEMPTS_PER_BATCH_MAX, MESSAGE_BYTES_MAX,
    NODE_REQUESTS_IN_FLIGHT_MAX, NODE_SUBJECT_PREFIX, OUTPUT_BYTES_MAX, TICK_SUBJECT,
};
use fabric_projections::State;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::error::ServerError;
use crate::index::owners_acted;

/// Requests of all nodes the gateway works on at once (each holds its body, at most
/// [`MESSAGE_BYTES_MAX`]); the next ones are answered busy at once.
pub const GATEWAY_REQUESTS_IN_FLIGHT_MAX: usize = 2_048;
/// Attempts of one node per tick that are not receipts of jobs it runs: its heartbeat, a late
/// receipt of a job requeued away, anything the gate refuses and records as evidence. Past
/// this many in a tick they are answered `refused` (`too_many_attempts`) and never reach the
/// log, so that a node's key grows the log no faster than its work and its heartbeats do.
pub const NODE_OTHER_ATTEMPTS_PER_TICK_MAX: u32 = 4;
/// How long a node's batch waits for its tick before it is answered `unanswered`.
const ATTEMPTS_WAIT_MS: u64 = 30_000;
/// Ticks a receipt is remembered after it was appended, to answer a node's retry of it as a
/// `duplicate` instead of recording its refusal.
const RECEIPT_MEMORY_TICKS: u64 = 1_024;
/// Ticks between two sweeps of the receipts remembered (so one is remembered for at most
/// [`RECEIPT_MEMORY_TICKS`] + this many ticks).
const RECEIPT_SWEEP_TICKS: u64 = 64;
/// Most bytes of one [`WorkBatch`] body on a `work` subject: under NATS's payload limit.
const WORK_BATCH_BYTES_MAX: usize = MESSAGE_BYTES_MAX - 16 * 1024;
/// Most bytes of the [`WorkBatch`] a [`Welcome`] carries: in base64 (4 bytes for 3), with room
/// for the welcome's other fields, under NATS's payload limit.
const WELCOME_WORK_BYTES_MAX: usize = WORK_BATCH_BYTES_MAX / 4 * 3;

/// How the gateway reaches NATS.
#[derive(Clone, Debug)]
pub struct NatsLogin {
    /// The server's URL.
    pub url: String,
    /// The NATS user of the fabric's server, with its password.
    pub user: Option<(String, String)>,
}

/// What the gateway knows of one registered node after a tick.
#[derive(Clone, Debug)]
pub(crate) struct NodeInfo {
    heartbeat_interval_ticks: u32,
    max_concurrency: u32,
    last_nonce: Option<u64>,
    running: Vec<JobId>,
}

/// Registered nodes (not retired) by name.
type Directory = HashMap<String, NodeInfo>;

fn directory_of(state: &State) -> Directory {
    state
        .nodes()
        .iter()
        .filter(|node| !node.retired)
        .map(|node| {
            let info = NodeInfo {
                heartbeat_interval_ticks: node.heartbeat_interval_ticks,
                max_concurrency: node.max_concurrency,
                last_nonce: state
                    .authority()
                    .key(&node.key)
                    .and_then(|record| record.last_nonce),
                running: node
                    .running
                    .iter()
                    .map(|job| state.jobs()[*job as usize].id)
                    .collect(),
            };
            (node.name.clone(), info)
        })
        .collect()
}

/// One appended tick, as the gateway needs it.
struct TickNews {
    tick: u64,
    first_seq: u64,
    signed: Vec<SignedEvent>,
    events: Vec<Event>,
    tree_head: SignedTreeHead,
    directory: Directory,
    /// Jobs the state holds after the tick, when the tick had an owner command (which may end
    /// jobs without an event of theirs: a cancel, a retired shard). The driver keeps the
    /// state to itself, so the gateway gets what it needs of it, not the state.
    in_state: Option<HashSet<JobId>>,
}

impl TickNews {
    fn of(tick: &ServedTick<'_>) -> Self {
        TickNews {
            tick: tick.tick,
            first_seq: tick.first_seq,
            signed: tick.signed.to_vec(),
            events: tick.events.to_vec(),
            tree_head: *tick.tree_head,
            directory: directory_of(tick.state),
            in_state: owners_acted(tick.events)
                .then(|| tick.state.live_jobs().map(|job| job.id).collect()),
        }
    }
}

/// A job's submission as the feed keeps it while the job is in the fabric.
struct Submitted {
    /// Its entry proved ([`ProvedEntry::encode`]).
    proof: Vec<u8>,
    workload: String,
    input_hash: Hash32,
}

/// An assignment in force: the node that runs it and its order.
struct Running {
    node: String,
    input_hash: Hash32,
    workload: String,
    model_seq: u64,
    /// Its order's bytes before the input ([`WorkOrder::encode_without_input`]).
    order: Vec<u8>,
}

/// What the gateway knows of the log: its frontier, the proofs it may have to send, who runs
/// what. Updated after each tick, read by the request handlers.
pub(crate) struct Feed {
    frontier: Frontier,
    last_hash: Hash32,
    tick: u64,
    tree_head: SignedTreeHead,
    submissions: HashMap<JobId, Submitted>,
    models: HashMap<String, Model>,
    running: HashMap<JobId, Running>,
    receipts: HashMap<(String, JobId), (u64, u64)>,
    directory: Directory,
    /// The proofs stop being right when the frontier does not give the signed root: then
    /// nothing is published (nodes would refuse it anyway) and the log says why once.
    broken: Option<String>,
}

/// The model an event registers.
fn registered_model(event: &Event) -> Option<&ModelRegistered> {
    match &event.body {
        Body::OwnerCommand(command) => match &command.action {
            OwnerAction::RegisterModel { registration } => Some(registration),
            _ => None,
        },
        _ => None,
    }
}

/// A registered model: its entry, proved, and what re-executing its jobs needs.
#[derive(Clone)]
struct Model {
    seq: u64,
    /// Its entry proved ([`ProvedEntry::encode`]).
    proof: Vec<u8>,
    job_type: ModelJob,
    weights: Vec<u8>,
}

impl Model {
    fn of(registration: &ModelRegistered, seq: u64, proof: Vec<u8>) -> Option<Self> {
        Some(Self {
            seq,
            proof,
            job_type: ModelJob::from_name(registration.job_type.name())?,
            weights: registration.weights.clone(),
        })
    }
}

/// The bytes of `entry` proved by `path` under `head` ([`ProvedEntry::encode`]).
fn proof_of(entry: &Entry, path: Vec<Hash32>, head: &SignedTreeHead) -> Vec<u8> {
    ProvedEntry {
        seq: entry.seq,
        tree_head: *head,
        entry: entry.encode(),
        audit_path: path,
    }
    .encode()
}

impl Feed {
    /// Takes in one appended tick; returns what to publish (subject, body). The orders carry
    /// their inputs, read from `artifacts`.
    fn apply(&mut self, news: TickNews, artifacts: &ArtifactLog) -> Vec<(String, Vec<u8>)> {
        let (tick, tree_head) = (news.tick, news.tree_head);
        let Some(assigned) = self.advance(news) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (node, jobs) in assigned {
            let subject = NodeSubject::Work.of(&node);
            let orders: Vec<(u64, Vec<u8>)> = jobs
                .iter()
                .filter_map(|job| self.running.get(job))
                .map(|running| {
                    let input = artifacts.get(&running.input_hash).ok().flatten();
                    let mut order = Vec::with_capacity(
                        running.order.len() + 5 + input.as_ref().map_or(0, |bytes| bytes.len()),
                    );
                    order.extend_from_slice(&running.order);
                    WorkOrder::encode_input(input.as_deref(), &mut order);
                    (running.model_seq, order)
                })
                .collect();
            for body in self.work_bodies(&orders, WORK_BATCH_BYTES_MAX) {
                out.push((subject.clone(), body));
            }
        }
        if let Ok(body) = serde_json::to_vec(&TickHead { tick, tree_head }) {
            out.push((TICK_SUBJECT.to_owned(), body));
        }
        out
    }

    /// Takes in one appended tick without publishing anything: how a replica's follower keeps
    /// the feed it starts its node gateway with, should it take the log over.
    pub(crate) fn follow(&mut self, tick: &ServedTick<'_>) {
        let _ = self.advance(TickNews::of(tick));
    }

    /// The feed's part of [`Feed::apply`]: the tick's entries proved and folded in; returns
    /// the jobs the tick assigned, by node (none once the feed is broken).
    fn advance(&mut self, news: TickNews) -> Option<BTreeMap<String, Vec<JobId>>> {
        let before = self.frontier.clone();
        let mut entries = Vec::with_capacity(news.signed.len());
        for (offset, signed) in news.signed.into_iter().enumerate() {
            let entry = Entry::new(news.first_seq + offset as u64, self.last_hash, signed);
            self.last_hash = entry.hash();
            self.frontier.push(self.last_hash);
            entries.push(entry);
        }
        self.tick = news.tick;
        self.tree_head = news.tree_head;
        self.directory = news.directory;
        if (self.frontier.size() != news.tree_head.tree_size
            || self.frontier.root() != news.tree_head.root)
            && self.broken.is_none()
        {
            {
                let why = format!(
                    "the node feed's frontier ({} entries) does not give the signed root of {} \
                     entries: no more work orders are published",
                    self.frontier.size(),
                    news.tree_head.tree_size
                );
                eprintln!("error: {why}");
                self.broken = Some(why);
            }
        }
        if self.broken.is_some() {
            return None;
        }
        let leaves: Vec<Hash32> = entries.iter().map(Entry::hash).collect();
        let proofs = merkle::batch_inclusion_proofs(&before, &leaves);
        let mut assigned: BTreeMap<String, Vec<JobId>> = BTreeMap::new();
        for ((entry, event), proof) in entries.iter().zip(&news.events).zip(proofs) {
            let proved = || proof_of(entry, proof.path.clone(), &news.tree_head);
            self.observe(entry.seq, event, news.tick, proved, &mut assigned);
        }
        self.forget_ended(news.in_state.as_ref());
        Some(assigned)
    }

    /// One entry of the log: what it changes in the feed, and the job it assigns (by node).
    fn observe(
        &mut self,
        seq: u64,
        event: &Event,
        tick: u64,
        proved: impl FnOnce() -> Vec<u8>,
        assigned_jobs: &mut BTreeMap<String, Vec<JobId>>,
    ) {
        match &event.body {
            Body::JobSubmitted(job) => {
                self.submissions.insert(
                    job.job,
                    Submitted {
                        proof: proved(),
                        workload: job.workload.clone(),
                        input_hash: job.input_hash,
                    },
                );
            }
            Body::JobAssigned(assigned) => {
                if let Some(running) = self.order(assigned.job, &assigned.node, &proved()) {
                    self.running.insert(assigned.job, running);
                    assigned_jobs
                        .entry(assigned.node.clone())
                        .or_default()
                        .push(assigned.job);
                }
            }
            Body::JobRequeued(requeued) => {
                self.running.remove(&requeued.job);
            }
            Body::JobReceipt(receipt) => {
                self.running.remove(&receipt.job);
                self.submissions.remove(&receipt.job);
                self.receipts
                    .insert((receipt.node.clone(), receipt.job), (seq, tick));
            }
            _ => {
                if let Some(registration) = registered_model(event) {
                    if let Some(model) = Model::of(registration, seq, proved()) {
                        self.models.insert(registration.workload(), model);
                    }
                }
            }
        }
    }

    /// The order of an assignment, when the job is one of a registered model.
    fn order(&self, job: JobId, node: &str, assignment: &[u8]) -> Option<Running> {
        let submitted = self.submissions.get(&job)?;
        let model = self.models.get(&submitted.workload)?;
        Some(Running {
            node: node.to_owned(),
            input_hash: submitted.input_hash,
            workload: submitted.workload.clone(),
            model_seq: model.seq,
            order: WorkOrder::encode_without_input(assignment, &submitted.proof, model.seq),
        })
    }

    /// Jobs that left the fabric without a receipt or a requeue (after a tick with an owner
    /// command, whose jobs in the state are `in_state`) leave the feed; receipts are
    /// remembered a while.
    fn forget_ended(&mut self, in_state: Option<&HashSet<JobId>>) {
        if let Some(in_state) = in_state {
            let in_fabric: HashSet<JobId> = self
                .directory
                .values()
                .flat_map(|node| node.running.iter().copied())
                .collect();
            self.running.retain(|job, _| in_fabric.contains(job));
            self.submissions.retain(|job, _| in_state.contains(job));
        }
        let tick = self.tick;
        if tick % RECEIPT_SWEEP_TICKS == 0 {
            self.receipts
                .retain(|_, (_, at)| tick.saturating_sub(*at) <= RECEIPT_MEMORY_TICKS);
        }
    }

    /// The welcome of `node`: its registration and as many of its orders (without inputs) as
    /// fit in one message.
    fn welcome(&self, node: &str) -> Option<Welcome> {
        let info = self.directory.get(node)?;
        let orders: Vec<(u64, Vec<u8>)> = self
            .running
            .values()
            .filter(|running| running.node == node)
            .map(|running| {
                let mut order = running.order.clone();
                WorkOrder::encode_input(None, &mut order);
                (running.model_seq, order)
            })
            .collect();
        let work = self
            .work_bodies(&orders, WELCOME_WORK_BYTES_MAX)
            .into_iter()
            .next()
            .unwrap_or_else(|| WorkBatch::default().encode());
        let work = BASE64.encode(work);
        Some(Welcome {
            heartbeat_interval_ticks: info.heartbeat_interval_ticks,
            last_nonce: info.last_nonce,
            max_concurrency: info.max_concurrency,
            node: node.to_owned(),
            tick: self.tick,
            tree_head: self.tree_head,
            work,
        })
    }

    /// `orders` (each its model's seq and its bytes) as [`WorkBatch`] bodies of at most
    /// `bytes_max` bytes (a body holds at least one order), each with the proved registrations
    /// of the models its orders name, once.
    fn work_bodies(&self, orders: &[(u64, Vec<u8>)], bytes_max: usize) -> Vec<Vec<u8>> {
        let mut bodies = Vec::new();
        let mut batch = BatchParts::default();
        for (model_seq, order) in orders {
            let model = self.models.values().find(|model| model.seq == *model_seq);
            let model = model.map(|model| model.proof.as_slice());
            if !batch.orders.is_empty() && batch.len_with(model, order) > bytes_max {
                bodies.push(std::mem::take(&mut batch).body());
            }
            batch.add(model, order);
        }
        if !batch.orders.is_empty() {
            bodies.push(batch.body());
        }
        bodies
    }
}

/// One [`WorkBatch`] body on its way: its models' and its orders' bytes.
#[derive(Default)]
struct BatchParts<'a> {
    models: Vec<&'a [u8]>,
    orders: Vec<&'a [u8]>,
    model_bytes: usize,
    order_bytes: usize,
}

impl<'a> BatchParts<'a> {
    /// The body's length with one more order (and its model, when new to the batch).
    fn len_with(&self, model: Option<&[u8]>, order: &[u8]) -> usize {
        let model_bytes = match model {
            Some(part) if !self.has(part) => part.len(),
            _ => 0,
        };
        WorkBatch::joined_len(
            self.model_bytes + model_bytes,
            self.order_bytes + order.len(),
        )
    }

    fn has(&self, model: &[u8]) -> bool {
        self.models.iter().any(|known| std::ptr::eq(*known, model))
    }

    fn add(&mut self, model: Option<&'a [u8]>, order: &'a [u8]) {
        if let Some(part) = model {
            if !self.has(part) {
                self.model_bytes += part.len();
                self.models.push(part);
            }
        }
        self.order_bytes += order.len();
        self.orders.push(order);
    }

    fn body(self) -> Vec<u8> {
        WorkBatch::join(&self.models, &self.orders)
    }
}

/// Gathers, in the server's one replay of the log at start, what the feed needs: every leaf,
/// the submissions, assignments and models, and the receipts of late.
#[derive(Default)]
pub(crate) struct FeedBuilder {
    leaves: Vec<Hash32>,
    submitted: HashMap<JobId, (u64, String, Hash32)>,
    assigned: HashMap<JobId, (u64, String)>,
    models: HashMap<String, (u64, ModelRegistered)>,
    receipts: HashMap<(String, JobId), (u64, u64)>,
    tick: u64,
}

impl Observer for FeedBuilder {
    fn after(&mut self, step: &Step<'_>, state: &State) {
        self.leaves.push(step.hash);
        self.tick = state.tick();
        match &step.event.body {
            Body::JobSubmitted(job) => {
                self.submitted
                    .insert(job.job, (step.seq, job.workload.clone(), job.input_hash));
            }
            Body::JobAssigned(assigned) => {
                self.assigned
                    .insert(assigned.job, (step.seq, assigned.node.clone()));
            }
            Body::JobRequeued(requeued) => {
                self.assigned.remove(&requeued.job);
            }
            Body::JobReceipt(JobReceipt { job, node, .. }) => {
                self.assigned.remove(job);
                self.submitted.remove(job);
                self.receipts
                    .insert((node.clone(), *job), (step.seq, state.tick()));
            }
            _ => {
                if let Some(registration) = registered_model(step.event) {
                    self.models
                        .insert(registration.workload(), (step.seq, registration.clone()));
                }
            }
        }
    }
}

impl FeedBuilder {
    /// The feed of a log whose replay this observed, its newest head `head`, its state `state`.
    pub(crate) fn build(
        self,
        reader: &fabric_ledger::LedgerReader,
        state: &State,
        head: &SignedTreeHead,
    ) -> Result<Feed, ServerError> {
        let mut frontier = Frontier::new();
        for leaf in &self.leaves {
            frontier.push(*leaf);
        }
        let mut roots = SubtreeRoots {
            leaves: &self.leaves,
            memo: HashMap::new(),
        };
        let mut prove = |seq: u64| -> Result<Vec<u8>, ServerError> {
            let entry = reader
                .get(seq)
                .map_err(|error| ServerError::NodeFeed { seq, error })?;
            let proof = merkle::inclusion_proof_from(
                |start, end| roots.root(start, end),
                seq,
                head.tree_size,
            )
            .map_err(|_| ServerError::NodeFeedRange {
                seq,
                size: head.tree_size,
            })?;
            let InclusionProof { path, .. } = proof;
            Ok(proof_of(&entry, path, head))
        };
        let mut submissions = HashMap::new();
        for (job, (seq, workload, input_hash)) in &self.submitted {
            if state.job_ix(*job).is_some() {
                submissions.insert(
                    *job,
                    Submitted {
                        proof: prove(*seq)?,
                        workload: workload.clone(),
                        input_hash: *input_hash,
                    },
                );
            }
        }
        let mut models = HashMap::new();
        for (workload, (seq, registration)) in &self.models {
            if let Some(model) = Model::of(registration, *seq, prove(*seq)?) {
                models.insert(workload.clone(), model);
            }
        }
        let mut feed = Feed {
            last_hash: self.leaves.last().copied().unwrap_or(Hash32([0; 32])),
            frontier,
            tick: self.tick,
            tree_head: *head,
            submissions,
            models,
            running: HashMap::new(),
            receipts: self.receipts,
            directory: directory_of(state),
            broken: None,
        };
        for (job, (seq, node)) in &self.assigned {
            if state.job_ix(*job).is_none() {
                continue;
            }
            let assignment = prove(*seq)?;
            if let Some(running) = feed.order(*job, node, &assignment) {
                feed.running.insert(*job, running);
            }
        }
        Ok(feed)
    }
}

/// Subtree roots of a list of leaves, each computed once.
struct SubtreeRoots<'a> {
    leaves: &'a [Hash32],
    memo: HashMap<(u64, u64), Hash32>,
}

impl SubtreeRoots<'_> {
    fn root(&mut self, start: u64, end: u64) -> Hash32 {
        if let Some(root) = self.memo.get(&(start, end)) {
            return *root;
        }
        let root = merkle::root(&self.leaves[start as usize..end as usize]);
        self.memo.insert((start, end), root);
        root
    }
}

/// The requests being worked on: in all, and per node.
#[derive(Default)]
struct InFlight {
    total: usize,
    per_node: HashMap<String, usize>,
}

/// One request's place among those in flight, given back when dropped.
struct InFlightPermit {
    gateway: Arc<Gateway>,
    node: String,
}

impl Drop for InFlightPermit {
    fn drop(&mut self) {
        let mut in_flight = self.gateway.in_flight();
        in_flight.total = in_flight.total.saturating_sub(1);
        if let Some(count) = in_flight.per_node.get_mut(&self.node) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                in_flight.per_node.remove(&self.node);
            }
        }
    }
}

/// What the request handlers share.
struct Gateway {
    client: async_nats::Client,
    feed: Mutex<Feed>,
    intake: mpsc::Sender<Submission>,
    artifacts: Arc<ArtifactLog>,
    /// Share of completed receipts re-executed on the CPU reference, in parts per million.
    verify_ppm: u32,
    in_flight: Mutex<InFlight>,
    other_attempts: Mutex<OtherAttempts>,
}

/// The attempts each node sent in the current tick that were not receipts of its own running
/// jobs ([`NODE_OTHER_ATTEMPTS_PER_TICK_MAX`]); forgotten when the tick moves on.
#[derive(Default)]
struct OtherAttempts {
    tick: u64,
    per_node: HashMap<String, u32>,
}

impl Gateway {
    fn feed(&self) -> MutexGuard<'_, Feed> {
        self.feed
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes one of `node`'s attempts of this tick that are not receipts of its running jobs,
    /// or says why none is left.
    fn other_attempt(&self, node: &str, tick: u64) -> Result<(), String> {
        let mut other = self
            .other_attempts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if other.tick != tick {
            other.tick = tick;
            other.per_node.clear();
        }
        let count = other.per_node.entry(node.to_owned()).or_insert(0);
        if *count >= NODE_OTHER_ATTEMPTS_PER_TICK_MAX {
            return Err(format!(
                "node `{node}` sent {count} attempts after tick {tick} that are not receipts of \
                 its running jobs (heartbeats, receipts of jobs it does not run, refusals), the \
                 limit (NODE_OTHER_ATTEMPTS_PER_TICK_MAX); the rest wait for the next tick"
            ));
        }
        *count += 1;
        Ok(())
    }

    fn in_flight(&self) -> MutexGuard<'_, InFlight> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A place for one more request of `node`, or why there is none.
    fn admit(self: &Arc<Self>, node: &str) -> Result<InFlightPermit, String> {
        let mut in_flight = self.in_flight();
        let of_node = in_flight.per_node.get(node).copied().unwrap_or(0);
        if of_node >= NODE_REQUESTS_IN_FLIGHT_MAX {
            return Err(format!(
                "busy: node `{node}` has {of_node} requests in flight, the limit \
                 (NODE_REQUESTS_IN_FLIGHT_MAX {NODE_REQUESTS_IN_FLIGHT_MAX}); retry once one is answered"
            ));
        }
        if in_flight.total >= GATEWAY_REQUESTS_IN_FLIGHT_MAX {
            return Err(format!(
                "busy: the server has {} node requests in flight, the limit \
                 (GATEWAY_REQUESTS_IN_FLIGHT_MAX {GATEWAY_REQUESTS_IN_FLIGHT_MAX}); retry later",
                in_flight.total
            ));
        }
        in_flight.total += 1;
        *in_flight.per_node.entry(node.to_owned()).or_insert(0) += 1;
        Ok(InFlightPermit {
            gateway: Arc::clone(self),
            node: node.to_owned(),
        })
    }
}

/// The running gateway: its thread, and the way to tell it of each tick.
pub(crate) struct NodeGateway {
    news: mpsc::UnboundedSender<TickNews>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeGateway {
    /// Connects to NATS, subscribes to the node subjects and starts serving them.
    pub(crate) fn start(
        login: &NatsLogin,
        feed: Feed,
        intake: mpsc::Sender<Submission>,
        artifacts: Arc<ArtifactLog>,
        verify_ppm: u32,
    ) -> Result<Self, ServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("node-gateway")
            .build()
            .map_err(|error| ServerError::NodeGateway {
                detail: format!("could not start its runtime: {error}"),
            })?;
        let client = runtime
            .block_on(connect(login))
            .map_err(|detail| ServerError::NodeGateway { detail })?;
        let subscriptions = runtime
            .block_on(subscribe(&client))
            .map_err(|detail| ServerError::NodeGateway { detail })?;
        let (news, news_rx) = mpsc::unbounded_channel();
        let gateway = Arc::new(Gateway {
            client,
            feed: Mutex::new(feed),
            intake,
            artifacts,
            verify_ppm,
            in_flight: Mutex::new(InFlight::default()),
            other_attempts: Mutex::new(OtherAttempts::default()),
        });
        let thread = std::thread::Builder::new()
            .name("node-gateway".to_owned())
            .spawn(move || runtime.block_on(serve(gateway, subscriptions, news_rx)))
            .map_err(|error| ServerError::NodeGateway {
                detail: format!("could not start its thread: {error}"),
            })?;
        Ok(Self {
            news,
            thread: Some(thread),
        })
    }

    /// Tells the gateway of a durable tick (called on the driver's thread).
    pub(crate) fn tick(&self, tick: &ServedTick<'_>) {
        let _ = self.news.send(TickNews::of(tick));
    }

    /// Stops serving once the last tick is published.
    pub(crate) fn finish(mut self) {
        let (news, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.news, news));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn connect(login: &NatsLogin) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name("fabric-serve")
        .retry_on_initial_connect();
    if let Some((user, password)) = &login.user {
        options = options.user_and_password(user.clone(), password.clone());
    }
    let connecting = options.connect(login.url.split(',').map(str::trim).collect::<Vec<_>>());
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(format!(
            "could not connect to NATS at {}: {error}",
            login.url
        )),
        Err(_) => Err(format!(
            "could not connect to NATS at {} within 10 s",
            login.url
        )),
    }
}

async fn subscribe(client: &async_nats::Client) -> Result<Vec<async_nats::Subscriber>, String> {
    let mut subscriptions = Vec::new();
    for kind in [
        NodeSubject::Hello,
        NodeSubject::Attempts,
        NodeSubject::Fetch,
    ] {
        let subject = format!("{NODE_SUBJECT_PREFIX}.*.{}", kind.as_str());
        let subscriber = client
            .subscribe(subject.clone())
            .await
            .map_err(|error| format!("could not subscribe to {subject}: {error}"))?;
        subscriptions.push(subscriber);
    }
    // Subscriptions are in place at the server before the first tick is published.
    client
        .flush()
        .await
        .map_err(|error| format!("could not reach NATS: {error}"))?;
    Ok(subscriptions)
}

async fn serve(
    gateway: Arc<Gateway>,
    subscriptions: Vec<async_nats::Subscriber>,
    mut news: mpsc::UnboundedReceiver<TickNews>,
) {
    let mut messages = futures_util::stream::select_all(subscriptions);
    loop {
        tokio::select! {
            next = news.recv() => {
                let Some(news) = next else { break };
                let out = gateway.feed().apply(news, &gateway.artifacts);
                for (subject, body) in out {
                    let _ = gateway.client.publish(subject, body.into()).await;
                }
            }
            Some(message) = messages.next() => {
                let (Some(reply), Some((node, kind))) =
                    (message.reply.clone(), NodeSubject::parse(&message.subject))
                else {
                    continue;
                };
                match gateway.admit(&node) {
                    Ok(permit) => {
                        let gateway = Arc::clone(&gateway);
                        tokio::spawn(async move {
                            answer(&gateway, &node, kind, reply, &message.payload).await;
                            drop(permit);
                        });
                    }
                    Err(busy) => {
                        let _ = gateway.client.publish(reply, error_body(busy).into()).await;
                    }
                }
            }
        }
    }
    let _ = gateway.client.flush().await;
}

/// Answers one request on a node subject.
async fn answer(
    gateway: &Gateway,
    node: &str,
    kind: NodeSubject,
    reply: async_nats::Subject,
    payload: &Bytes,
) {
    let body = match kind {
        NodeSubject::Hello => hello(gateway, node),
        NodeSubject::Attempts => attempts(gateway, node, payload).await,
        NodeSubject::Fetch => fetch(gateway, node, payload),
        NodeSubject::Work => return,
    };
    let _ = gateway.client.publish(reply, body.into()).await;
}

fn error_body(detail: String) -> Vec<u8> {
    serde_json::json!({ "error": detail })
        .to_string()
        .into_bytes()
}

fn hello(gateway: &Gateway, node: &str) -> Vec<u8> {
    match gateway.feed().welcome(node) {
        Some(welcome) => serde_json::to_vec(&welcome).unwrap_or_default(),
        None => error_body(format!(
            "node `{node}` is not registered in this fabric (or is retired)"
        )),
    }
}

fn fetch(gateway: &Gateway, node: &str, payload: &Bytes) -> Vec<u8> {
    let fetched = |bytes: Option<String>, error: Option<String>| {
        serde_json::to_vec(&Fetched { bytes, error }).unwrap_or_default()
    };
    let request: Fetch = match serde_json::from_slice(payload) {
        Ok(request) => request,
        Err(error) => return fetched(None, Some(format!("not a fetch request: {error}"))),
    };
    let allowed = gateway
        .feed()
        .running
        .values()
        .any(|running| running.node == node && running.input_hash == request.hash);
    if !allowed {
        return fetched(
            None,
            Some(format!(
                "{} is not the input of a job node `{node}` runs",
                request.hash
            )),
        );
    }
    match gateway.artifacts.get(&request.hash) {
        Ok(Some(bytes)) if *blake3::hash(&bytes).as_bytes() == request.hash.0 => {
            fetched(Some(BASE64.encode(&bytes)), None)
        }
        Ok(Some(_)) => fetched(
            None,
            Some(format!("the stored {} is damaged", request.hash)),
        ),
        Ok(None) => fetched(
            None,
            Some(format!("no artifact {} is stored", request.hash)),
        ),
        Err(error) => fetched(None, Some(format!("the artifact store failed: {error}"))),
    }
}

/// One event of a batch on its way: answered at once, or waiting for its tick.
enum Pending {
    Now(AttemptResult),
    Tick(oneshot::Receiver<Ack>),
}

fn result(status: &str, seq: Option<u64>, refusal: Option<(String, String)>) -> AttemptResult {
    let (reason, detail) = refusal.unzip();
    AttemptResult {
        detail,
        reason,
        seq,
        status: status.to_owned(),
    }
}

async fn attempts(gateway: &Gateway, node: &str, payload: &Bytes) -> Vec<u8> {
    let ack = |error: String| AttemptAck {
        error: Some(error),
        results: Vec::new(),
        running: Vec::new(),
        tick: 0,
    };
    let batch: AttemptBatch = match serde_json::from_slice(payload) {
        Ok(batch) => batch,
        Err(error) => return encode(&ack(format!("not an attempt batch: {error}"))),
    };
    if batch.events.len() > ATTEMPTS_PER_BATCH_MAX {
        return encode(&ack(format!(
            "{} events in one batch, over the limit of {ATTEMPTS_PER_BATCH_MAX}",
            batch.events.len()
        )));
    }
    let outputs = match decode_outputs(&batch.outputs) {
        Ok(outputs) => outputs,
        Err(error) => return encode(&ack(error)),
    };
    // Decoded, then verified together: one ed25519 batch verification for the node's batch.
    type Checked = Result<Event, (RejectReason, String)>;
    let mut decoded: Vec<Result<(SignedEvent, Checked), String>> = batch
        .events
        .iter()
        .map(|wire| {
            let signed = wire.decode().map_err(|error| error.to_string())?;
            let checked = gate::check_decoded(&signed);
            Ok((signed, checked))
        })
        .collect();
    gate::check_signatures_of(
        &mut decoded,
        |item| match item {
            Ok((signed, Ok(_))) => Some(signed),
            _ => None,
        },
        |item, refusal| {
            if let Ok((_, checked)) = item {
                *checked = Err(refusal);
            }
        },
    );
    let pending: Vec<Pending> = decoded
        .into_iter()
        .map(|decoded| match decoded {
            Ok((signed, checked)) => submit(gateway, node, signed, checked, &outputs),
            Err(error) => Pending::Now(result(
                "refused",
                None,
                Some(("malformed".to_owned(), error)),
            )),
        })
        .collect();
    let mut results = Vec::with_capacity(pending.len());
    let mut tick = 0;
    for pending in pending {
        results.push(match pending {
            Pending::Now(result) => result,
            Pending::Tick(reply) => {
                match tokio::time::timeout(Duration::from_millis(ATTEMPTS_WAIT_MS), reply).await {
                    Ok(Ok(ack)) => {
                        tick = ack.tick;
                        verdict_result(&ack)
                    }
                    _ => result("unanswered", None, None),
                }
            }
        });
    }
    let running = gateway
        .feed()
        .directory
        .get(node)
        .map(|info| info.running.clone())
        .unwrap_or_default();
    encode(&AttemptAck {
        error: None,
        results,
        running,
        tick,
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn verdict_result(ack: &Ack) -> AttemptResult {
    match &ack.verdict {
        Verdict::Admitted => result("admitted", Some(ack.seq), None),
        Verdict::Refused { reason, detail } => result(
            "refused",
            Some(ack.seq),
            Some((reason.as_str().to_owned(), detail.clone())),
        ),
        Verdict::Counted { reason, detail } => result(
            "counted",
            Some(ack.seq),
            Some((reason.as_str().to_owned(), detail.clone())),
        ),
    }
}

/// The outputs of a batch by their BLAKE3.
fn decode_outputs(outputs: &[String]) -> Result<HashMap<Hash32, Vec<u8>>, String> {
    if outputs.len() > ATTEMPTS_PER_BATCH_MAX {
        return Err(format!(
            "{} outputs in one batch, over the limit of {ATTEMPTS_PER_BATCH_MAX}",
            outputs.len()
        ));
    }
    let mut decoded = HashMap::new();
    for (index, output) in outputs.iter().enumerate() {
        if output.len() > OUTPUT_BYTES_MAX.div_ceil(3) * 4 {
            return Err(format!(
                "outputs[{index}] is over the limit of {OUTPUT_BYTES_MAX} bytes"
            ));
        }
        let bytes = BASE64
            .decode(output)
            .map_err(|error| format!("outputs[{index}] is not standard base64: {error}"))?;
        decoded.insert(Hash32(*blake3::hash(&bytes).as_bytes()), bytes);
    }
    Ok(decoded)
}

/// Hands one signed event of a batch, checked ([`gate::check_decoded`],
/// [`gate::check_signatures_of`]), to the driver.
fn submit(
    gateway: &Gateway,
    node: &str,
    signed: SignedEvent,
    checked: Result<Event, (RejectReason, String)>,
    outputs: &HashMap<Hash32, Vec<u8>>,
) -> Pending {
    let refused = |reason: &str, detail: String| {
        Pending::Now(result("refused", None, Some((reason.to_owned(), detail))))
    };
    // A receipt of a job the log says this node runs is its work: its output is stored, and
    // it is not counted against the node's other attempts.
    let work = match &checked {
        Ok(Event {
            body: Body::JobReceipt(receipt),
            ..
        }) if receipt.node == node => {
            let feed = gateway.feed();
            if let Some((seq, _)) = feed.receipts.get(&(node.to_owned(), receipt.job)) {
                return Pending::Now(result("duplicate", Some(*seq), None));
            }
            feed.running
                .get(&receipt.job)
                .is_some_and(|running| running.node == node)
                .then_some(receipt)
        }
        _ => None,
    };
    let passed = match work {
        Some(receipt) => {
            store_output(receipt, outputs, &gateway.artifacts).map_err(|detail| ("invalid", detail))
        }
        None => {
            let tick = gateway.feed().tick;
            gateway
                .other_attempt(node, tick)
                .map_err(|detail| ("too_many_attempts", detail))
        }
    };
    if let Err((reason, detail)) = passed {
        return refused(reason, detail);
    }
    let request = match checked {
        Ok(event) => match contradicted(gateway, node, &signed, &event, outputs) {
            Some(mismatch) => Request::Mismatch {
                node: node.to_owned(),
                signed,
                event: Box::new(event),
                mismatch: Box::new(mismatch),
            },
            None => Request::Node {
                node: node.to_owned(),
                signed,
                checked: Ok(event),
            },
        },
        Err(refusal) => Request::Node {
            node: node.to_owned(),
            signed,
            checked: Err(refusal),
        },
    };
    let (reply, answer) = oneshot::channel();
    let submission = Submission { request, reply };
    match gateway.intake.try_send(submission) {
        Ok(()) => Pending::Tick(answer),
        Err(_) => refused(
            "overloaded",
            "the server's intake is full: send it again later".to_owned(),
        ),
    }
}

/// Stores the output a completed receipt names, before the receipt reaches the gate: the
/// tick's group commit then makes both durable together. Only for a receipt of a job its node
/// runs (the caller's check): the gate refuses any other and records why, and nothing is
/// stored for it.
fn store_output(
    receipt: &JobReceipt,
    outputs: &HashMap<Hash32, Vec<u8>>,
    artifacts: &ArtifactLog,
) -> Result<(), String> {
    if receipt.outcome != JobOutcome::Completed {
        return Ok(());
    }
    let Some(bytes) = outputs.get(&receipt.output_hash) else {
        return Err(format!(
            "the receipt of job {} names output {}, which the batch does not carry",
            receipt.job, receipt.output_hash
        ));
    };
    artifacts
        .insert(&receipt.output_hash, bytes)
        .map_err(|error| format!("the artifact store failed: {error}"))
}

/// The ledger's verifier: a sampled completed receipt of a job this node runs is re-executed
/// on the CPU reference (the input from the artifact store, the weights from the model's
/// registration); the mismatch, when the outputs differ. A receipt is sampled when the first
/// 4 bytes (LE) of the BLAKE3 of its signature, scaled to a million, fall under the share.
fn contradicted(
    gateway: &Gateway,
    node: &str,
    signed: &SignedEvent,
    event: &Event,
    outputs: &HashMap<Hash32, Vec<u8>>,
) -> Option<AttestationMismatch> {
    let Body::JobReceipt(receipt) = &event.body else {
        return None;
    };
    let kernel = receipt.kernel.as_ref()?;
    if receipt.outcome != JobOutcome::Completed
        || receipt.node != node
        || !sampled(signed, gateway.verify_ppm)
    {
        return None;
    }
    let (model, input_hash) = {
        let feed = gateway.feed();
        let running = feed
            .running
            .get(&receipt.job)
            .filter(|running| running.node == node)?;
        (
            feed.models.get(&running.workload)?.clone(),
            running.input_hash,
        )
    };
    let input = gateway.artifacts.get(&input_hash).ok()??;
    let expected = model
        .job_type
        .execute(&model.weights, &input, Engine::Cpu)
        .ok()?;
    let expected_hash = Hash32(*blake3::hash(&expected).as_bytes());
    let reported = outputs
        .get(&receipt.output_hash)
        .map(|bytes| bytes.as_slice());
    if expected_hash == receipt.output_hash && reported == Some(expected.as_slice()) {
        return None;
    }
    let mut evidence = Vec::with_capacity(96 + signed.signed.len());
    evidence.extend_from_slice(signed.author.as_bytes());
    evidence.extend_from_slice(signed.signature.as_bytes());
    evidence.extend_from_slice(&signed.signed);
    Some(AttestationMismatch {
        job: receipt.job,
        node: node.to_owned(),
        kernel: kernel.clone(),
        expected_output_hash: expected_hash,
        reported_output_hash: receipt.output_hash,
        evidence,
    })
}

fn sampled(signed: &SignedEvent, ppm: u32) -> bool {
    let draw = blake3::hash(signed.signature.as_bytes());
    let bytes = draw.as_bytes();
    let value = u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    value * 1_000_000 < u64::from(ppm) * (u64::from(u32::MAX) + 1)
}
