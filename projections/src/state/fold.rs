//! The fold: [`State::apply`] and one step per event kind. Each step checks the event against
//! the state first and returns an [`ApplyError`] without changing anything when it does not
//! fit, so a log with such an event replays to the same state everywhere.

use std::collections::{BTreeMap, BTreeSet};

use fabric_events::{
    AttestationMismatch, Body, Event, FabricGenesis, JobAssigned, JobId, JobOutcome, JobReceipt,
    JobRequeued, JobSpilled, JobSubmitted, NodeHealthChanged, NodeRegistered, RefusalsCounted,
    RejectReason, Role, ShardRegistered,
};
use thiserror::Error;

use super::{
    ClassIx, Holder, Job, JobClass, JobIx, JobStatus, Node, NodeIx, Shard, ShardCounters, ShardIx,
    SkillSet, State, StatusChange, ATTESTATION_HALT_TICKS, CLASSES_MAX, JOBS_MAX,
    LATENCY_HISTOGRAM_TICKS, NO_NODE, PPM, REPUTATION_ATTESTATION_PPM, REPUTATION_COMPLETED_PPM,
    REPUTATION_FAILED_PPM, REPUTATION_OUTAGE_PPM, SHARDS_MAX, SKILLS_MAX,
};

/// Why an event does not fit the state. The state is left as it was (but for the anomaly
/// count), so a replay of a log with such an event stays deterministic.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The author's role may not say this.
    #[error("a {role} may not author {kind}")]
    WrongRole {
        /// The role.
        role: &'static str,
        /// The kind.
        kind: &'static str,
    },
    /// A name is not registered.
    #[error("unknown {what} `{name}`")]
    Unknown {
        /// Shard, node.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A job id is not known.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// A name or job registered twice.
    #[error("{what} `{name}` is already registered")]
    Duplicate {
        /// Shard, node, job.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The event contradicts the state.
    #[error("{0}")]
    Conflict(String),
    /// A limit of the state is reached.
    #[error("limit reached: {0}")]
    Limit(&'static str),
    /// The authority table refuses the event: the ledger records a `Rejected` event instead.
    #[error("refused ({}): {detail}", reason.as_str())]
    Refused {
        /// Why, as recorded.
        reason: RejectReason,
        /// What exactly.
        detail: String,
    },
}

impl ApplyError {
    /// The reason a `Rejected` event records for this error: the refusal's own, or `invalid`
    /// for an event that does not fit the state.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            ApplyError::Refused { reason, .. } => *reason,
            _ => RejectReason::Invalid,
        }
    }
}

impl State {
    /// Folds one event in without judging its author (see [`State::admit`] for the ledger's
    /// rule, which every log is replayed with). An event that does not fit is counted as an
    /// anomaly and changes nothing else.
    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        self.events_applied += 1;
        self.tick = self.tick.max(event.header.tick);
        let moved_before = self.metrics.jobs_moved();
        let result = self.apply_body(event);
        if result.is_err() {
            self.anomalies += 1;
        }
        if self.metrics.jobs_moved() != moved_before {
            self.jobs_moved_tick = self.jobs_moved_tick.max(event.header.tick);
        }
        self.debug_assert_job_table();
        result
    }

    /// What every event leaves true of the job table, checked in O(1) in debug builds (the
    /// full check is [`State::check_invariants`]): it holds exactly the jobs submitted and not
    /// ended yet, each in the id index once.
    fn debug_assert_job_table(&self) {
        let live = self.jobs.len() - self.free_slots.len();
        debug_assert_eq!(
            live as u64,
            self.metrics.submitted - self.metrics.finished() - self.metrics.cancelled,
            "live jobs = submitted - finished - cancelled"
        );
        debug_assert_eq!(
            self.job_index.len(),
            live,
            "one id index entry per live job"
        );
        debug_assert!(self.jobs_moved_tick <= self.tick);
    }

    /// Checks the author's role for the kind, then folds the body in.
    fn apply_body(&mut self, event: &Event) -> Result<(), ApplyError> {
        let tick = event.header.tick;
        let role = event.header.role;
        let kind = event.kind();
        let expect = |wanted: Role| {
            if role == wanted {
                Ok(())
            } else {
                Err(ApplyError::WrongRole {
                    role: role.as_str(),
                    kind: kind.as_str(),
                })
            }
        };
        match &event.body {
            Body::FabricGenesis(body) => {
                expect(Role::Ledger)?;
                self.found(body)
            }
            Body::ShardRegistered(body) => {
                expect(Role::Owner)?;
                self.register_shard(body)
            }
            Body::NodeRegistered(body) => {
                expect(Role::Owner)?;
                self.register_node(body, tick)
            }
            Body::JobSubmitted(body) => {
                expect(Role::Client)?;
                // A job counts from the tick it was sequenced at, not the tick its client
                // signed (which may be a few ticks older): the newest tick of the log so far.
                self.submit(body, self.tick)
            }
            Body::JobAssigned(body) => {
                expect(Role::Router)?;
                self.assign(body, tick)
            }
            Body::JobSpilled(body) => {
                expect(Role::Router)?;
                self.spill(body, tick)
            }
            Body::Heartbeat(body) => {
                expect(Role::Node)?;
                let node = self.lookup_node(&body.node)?;
                let node = &mut self.nodes[node as usize];
                node.last_heartbeat_tick = node.last_heartbeat_tick.max(tick);
                self.metrics.heartbeats += 1;
                Ok(())
            }
            Body::NodeHealthChanged(body) => {
                expect(Role::Router)?;
                self.health(body, tick)
            }
            Body::JobRequeued(body) => {
                expect(Role::Router)?;
                self.requeue(body, tick)
            }
            Body::JobReceipt(body) => {
                expect(Role::Node)?;
                self.receipt(body, tick)
            }
            Body::OwnerCommand(body) => {
                expect(Role::Owner)?;
                self.owner_action(&body.action, tick)?;
                self.metrics.owner_commands += 1;
                Ok(())
            }
            Body::Checkpoint(body) => {
                expect(Role::Ledger)?;
                self.last_checkpoint_tree_size = body.tree_size;
                self.checkpoint_requested = false;
                self.metrics.checkpoints += 1;
                Ok(())
            }
            Body::AttestationMismatch(body) => {
                expect(Role::Ledger)?;
                self.attestation_mismatch(body, tick)
            }
            Body::Rejected(body) => {
                expect(Role::Ledger)?;
                self.metrics.rejections += 1;
                self.authority.count_rejection(body.reason);
                Ok(())
            }
            Body::RefusalsCounted(body) => {
                expect(Role::Ledger)?;
                self.refusals_counted(body)
            }
            Body::SequencerTakeover(body) => {
                expect(Role::Ledger)?;
                self.authority.set_ledger_key(body.sequencer);
                self.sequencing.term = body.term;
                Ok(())
            }
            Body::FederationReceipt(body) => {
                expect(Role::Ledger)?;
                self.fold_receipt(body)
            }
            Body::FederationFork(body) => {
                expect(Role::Ledger)?;
                self.fold_fork(body)
            }
            Body::ArtifactRecorded(_) => {
                expect(Role::Recorder)?;
                self.covenant.artifacts += 1;
                Ok(())
            }
        }
    }

    /// A registered shard's index, or [`ApplyError::Unknown`].
    pub(super) fn lookup_shard(&self, name: &str) -> Result<ShardIx, ApplyError> {
        self.shard_ix(name).ok_or_else(|| ApplyError::Unknown {
            what: "shard",
            name: name.to_owned(),
        })
    }

    /// A registered node's index, or [`ApplyError::Unknown`].
    pub(super) fn lookup_node(&self, name: &str) -> Result<NodeIx, ApplyError> {
        self.node_ix(name).ok_or_else(|| ApplyError::Unknown {
            what: "node",
            name: name.to_owned(),
        })
    }

    /// A live job's slot, or [`ApplyError::UnknownJob`].
    pub(super) fn lookup_job(&self, job: JobId) -> Result<JobIx, ApplyError> {
        self.job_ix(job).ok_or(ApplyError::UnknownJob(job))
    }

    /// The skill set of names, interning the new ones (all or none, within [`SKILLS_MAX`]).
    fn intern_skills(&mut self, names: &[String]) -> Result<SkillSet, ApplyError> {
        let new = names
            .iter()
            .filter(|name| !self.skill_index.contains_key(*name))
            .collect::<BTreeSet<_>>();
        if self.skills.len() + new.len() > SKILLS_MAX {
            return Err(ApplyError::Limit("128 distinct skills"));
        }
        for name in names {
            if !self.skill_index.contains_key(name) {
                self.skill_index
                    .insert(name.clone(), self.skills.len() as u8);
                self.skills.push(name.clone());
            }
        }
        Ok(self.skill_set(names).unwrap_or_default())
    }

    /// A shard joins: its router key is registered and every shard's names are resolved again.
    pub(super) fn register_shard(&mut self, body: &ShardRegistered) -> Result<(), ApplyError> {
        if self.shard_index.contains_key(&body.shard) {
            return Err(ApplyError::Duplicate {
                what: "shard",
                name: body.shard.clone(),
            });
        }
        if self.shards.len() >= SHARDS_MAX {
            return Err(ApplyError::Limit("64 shards"));
        }
        let index = self.shards.len() as ShardIx;
        self.shard_index.insert(body.shard.clone(), index);
        self.shards.push(Shard {
            name: body.shard.clone(),
            router_key: body.router_key,
            queue_budget: body.queue_budget,
            latency_budget_ms: body.latency_budget_ms,
            spillover: body.spillover.clone(),
            specialties: body.specialties.clone(),
            reputation_floor_ppm: body.reputation_floor_ppm,
            regions_served: body.regions_served.clone(),
            node_quota_jobs: body.node_quota_jobs,
            quota_window_ticks: body.quota_window_ticks.max(1),
            paused: false,
            retired: false,
            nodes: Vec::new(),
            running: 0,
            counters: ShardCounters::default(),
            queues: BTreeMap::new(),
            queued: 0,
            capable: Vec::new(),
            spillover_ix: Vec::new(),
            served_mask: 0,
        });
        self.authority
            .register_key(body.router_key, Holder::Router(index));
        // A new name may complete other shards' rules and treaties.
        for shard in 0..self.shards.len() {
            self.resolve_shard_names(shard as ShardIx);
            self.rebuild_capable(shard as ShardIx);
        }
        Ok(())
    }

    /// A node joins its region's shard: its key is registered and it enters the capable lists.
    pub(super) fn register_node(
        &mut self,
        body: &NodeRegistered,
        tick: u64,
    ) -> Result<(), ApplyError> {
        if self.node_index.contains_key(&body.node) {
            return Err(ApplyError::Duplicate {
                what: "node",
                name: body.node.clone(),
            });
        }
        let region = self.lookup_shard(&body.region)?;
        if body.max_concurrency == 0 || body.heartbeat_interval_ticks == 0 {
            return Err(ApplyError::Conflict(format!(
                "node `{}` needs a max concurrency and a heartbeat interval of at least 1",
                body.node
            )));
        }
        if self.nodes.len() >= NO_NODE as usize {
            return Err(ApplyError::Limit("u32::MAX nodes"));
        }
        let capabilities = self.intern_skills(&body.capabilities)?;
        let index = self.nodes.len() as NodeIx;
        self.node_index.insert(body.node.clone(), index);
        self.nodes.push(Node {
            name: body.node.clone(),
            region,
            key: body.node_key,
            capacity: body.capacity,
            max_concurrency: body.max_concurrency,
            heartbeat_interval_ticks: body.heartbeat_interval_ticks,
            capabilities,
            latency_ms: body.latency_ms,
            price_micros_per_hour: body.price_micros_per_hour,
            reputation_ppm: body.reputation_ppm.min(PPM),
            registered_tick: tick,
            healthy: true,
            draining: false,
            last_heartbeat_tick: tick,
            unhealthy_since_tick: 0,
            unhealthy_ticks_total: 0,
            outages: 0,
            running: Vec::new(),
            quota_window: 0,
            quota_used: 0,
            completed: 0,
            failed: 0,
            retired: false,
            halted_until_tick: 0,
            attestation_failures: 0,
        });
        self.authority
            .register_key(body.node_key, Holder::Node(index));
        // Keep the shard's capable lists sorted by name: insert where the name belongs.
        let shard = &mut self.shards[region as usize];
        shard.nodes.push(index);
        let shard = &self.shards[region as usize];
        let mut inserts = Vec::new();
        for (class_ix, class) in self.classes.iter().enumerate() {
            if self.node_capable(shard, index, class) {
                let list = &shard.capable[class_ix];
                let at = list.partition_point(|other| {
                    self.nodes[*other as usize].name.as_str() < body.node.as_str()
                });
                inserts.push((class_ix, at));
            }
        }
        let shard = &mut self.shards[region as usize];
        for (class_ix, at) in inserts {
            shard.capable[class_ix].insert(at, index);
        }
        Ok(())
    }

    /// The class of a skill set and origin, added (with its capable lists) on first sight.
    fn class_of(&mut self, skills: SkillSet, origin: ShardIx) -> Result<ClassIx, ApplyError> {
        if let Some(class) = self.class_index.get(&(skills.0, origin)) {
            return Ok(*class);
        }
        if self.classes.len() >= CLASSES_MAX {
            return Err(ApplyError::Limit("4096 job classes"));
        }
        let class_ix = self.classes.len() as ClassIx;
        let class = JobClass { skills, origin };
        for shard_ix in 0..self.shards.len() {
            let list = self.capable_list(&self.shards[shard_ix], &class);
            self.shards[shard_ix].capable.push(list);
        }
        self.classes.push(class);
        self.class_index.insert((skills.0, origin), class_ix);
        Ok(class_ix)
    }

    /// Appends the job's current status to its history.
    pub(super) fn record(&mut self, job: JobIx, tick: u64) {
        let j = &mut self.jobs[job as usize];
        j.history.push(StatusChange {
            tick,
            status: j.status,
            shard: j.shard,
            node: j.node,
        });
    }

    /// A job enters the table (a free slot first) and its origin shard's queue.
    /// Adds a tick's counted refusals to the rejection counters. The counts must name each
    /// reason once, in tag order, each at least once: one encoding per count.
    fn refusals_counted(&mut self, body: &RefusalsCounted) -> Result<(), ApplyError> {
        let in_order = body
            .counts
            .windows(2)
            .all(|pair| pair[0].reason.tag() < pair[1].reason.tag());
        if !in_order || body.counts.iter().any(|count| count.attempts == 0) {
            return Err(ApplyError::Conflict(
                "refusals_counted must name each reason once, in tag order, with at least one attempt"
                    .to_owned(),
            ));
        }
        for count in &body.counts {
            self.metrics.rejections = self.metrics.rejections.saturating_add(count.attempts);
            self.authority
                .count_rejections(count.reason, count.attempts);
        }
        Ok(())
    }

    fn submit(&mut self, body: &JobSubmitted, tick: u64) -> Result<(), ApplyError> {
        let shard = self.lookup_shard(&body.shard)?;
        if self.shards[shard as usize].retired {
            return Err(ApplyError::Conflict(format!(
                "shard `{}` is retired and takes no jobs",
                body.shard
            )));
        }
        if self.submitted_ids.contains(body.job) {
            return Err(ApplyError::Duplicate {
                what: "job",
                name: body.job.to_string(),
            });
        }
        if self.free_slots.is_empty() && self.jobs.len() >= JOBS_MAX {
            return Err(ApplyError::Limit("u32::MAX jobs in the fabric at once"));
        }
        if body.duration_ticks == 0 {
            return Err(ApplyError::Conflict(format!(
                "job {} has a duration of 0 ticks",
                body.job
            )));
        }
        let skills = self.intern_skills(&body.skills)?;
        let class = self.class_of(skills, shard)?;
        let job = Job {
            id: body.job,
            class,
            origin: shard,
            shard,
            node: NO_NODE,
            status: JobStatus::Queued,
            submitted_tick: tick,
            started_tick: 0,
            finished_tick: 0,
            duration_ticks: body.duration_ticks,
            deadline_tick: body.deadline_tick,
            visited: 0,
            spills: 0,
            requeues: 0,
            attempts: 0,
            generation: 0,
            history: Vec::with_capacity(3),
        };
        let index = match self.free_slots.pop() {
            Some(slot) => {
                self.jobs[slot as usize] = job;
                slot
            }
            None => {
                self.jobs.push(job);
                (self.jobs.len() - 1) as JobIx
            }
        };
        self.job_index.insert(body.job, index);
        self.submitted_ids.insert(body.job);
        self.enqueue(index, shard);
        self.record(index, tick);
        self.shards[shard as usize].counters.submitted += 1;
        self.metrics.submitted += 1;
        self.metrics.spills_per_job[0] += 1;
        Ok(())
    }

    /// The slot of a job queued in the named shard, or why not.
    fn queued_job_in(&self, job: JobId, shard_name: &str) -> Result<(JobIx, ShardIx), ApplyError> {
        let job_ix = self.lookup_job(job)?;
        let shard = self.lookup_shard(shard_name)?;
        let j = &self.jobs[job_ix as usize];
        if j.status != JobStatus::Queued || j.shard != shard {
            return Err(ApplyError::Conflict(format!(
                "job {job} is not queued in shard `{shard_name}`"
            )));
        }
        Ok((job_ix, shard))
    }

    /// A queued job goes to a node of its shard that may take it now.
    fn assign(&mut self, body: &JobAssigned, tick: u64) -> Result<(), ApplyError> {
        let (job, shard) = self.queued_job_in(body.job, &body.shard)?;
        let node_ix = self.lookup_node(&body.node)?;
        let node = &self.nodes[node_ix as usize];
        let s = &self.shards[shard as usize];
        let class = &self.classes[self.jobs[job as usize].class as usize];
        let refuse = |why: &str| {
            Err(ApplyError::Conflict(format!(
                "job {} may not go to node `{}`: {why}",
                body.job, body.node
            )))
        };
        if node.region != shard {
            return refuse("the node is in another shard");
        }
        if !node.healthy {
            return refuse("the node is unhealthy");
        }
        if node.draining {
            return refuse("the node is draining");
        }
        if node.halted_until_tick > tick {
            return refuse("the node's treaty is halted after an attestation mismatch");
        }
        if !node.capabilities.covers(class.skills) {
            return refuse("the node lacks the job's skills");
        }
        if node.running.len() as u32 >= node.max_concurrency {
            return refuse("the node is at its max concurrency");
        }
        if node.quota_left(tick, s.node_quota_jobs, s.quota_window_ticks) == 0 {
            return refuse("the node's treaty quota is used up");
        }
        let window = tick / u64::from(s.quota_window_ticks);
        self.dequeue(job);
        let j = &mut self.jobs[job as usize];
        j.status = JobStatus::Running;
        j.node = node_ix;
        j.started_tick = tick;
        j.attempts += 1;
        let class = j.class;
        let node = &mut self.nodes[node_ix as usize];
        node.running.push(job);
        if node.quota_window != window {
            node.quota_window = window;
            node.quota_used = 0;
        }
        node.quota_used += 1;
        debug_assert!(node.running.len() as u32 <= node.max_concurrency);
        let s = &mut self.shards[shard as usize];
        debug_assert!(node.quota_used <= s.node_quota_jobs);
        s.running += 1;
        debug_assert!(node.running.len() as u64 <= s.running);
        s.counters.assigned += 1;
        self.metrics.assigned += 1;
        self.compact(shard, class);
        self.record(job, tick);
        Ok(())
    }

    /// A queued job moves to another shard's queue.
    fn spill(&mut self, body: &JobSpilled, tick: u64) -> Result<(), ApplyError> {
        let (job, from) = self.queued_job_in(body.job, &body.from_shard)?;
        let to = self.lookup_shard(&body.to_shard)?;
        if to == from {
            return Err(ApplyError::Conflict(format!(
                "job {} cannot spill from `{}` to itself",
                body.job, body.to_shard
            )));
        }
        self.spill_queued(job, from, to, tick);
        Ok(())
    }

    /// Moves a job queued in `from` to the queue of `to`, counted as a spill.
    pub(super) fn spill_queued(&mut self, job: JobIx, from: ShardIx, to: ShardIx, tick: u64) {
        let class = self.jobs[job as usize].class;
        self.dequeue(job);
        let j = &mut self.jobs[job as usize];
        j.spills += 1;
        let spills = j.spills as usize;
        let per_job = &mut self.metrics.spills_per_job;
        per_job[(spills - 1).min(SHARDS_MAX)] -= 1;
        per_job[spills.min(SHARDS_MAX)] += 1;
        self.enqueue(job, to);
        self.compact(from, class);
        self.shards[from as usize].counters.spilled_out += 1;
        self.shards[to as usize].counters.spilled_in += 1;
        self.metrics.spillovers += 1;
        self.record(job, tick);
    }

    /// Cancels a queued job: it leaves its queue and the job table.
    pub(super) fn cancel_queued(&mut self, job: JobIx) {
        let (shard, class) = (self.jobs[job as usize].shard, self.jobs[job as usize].class);
        self.dequeue(job);
        self.jobs[job as usize].status = JobStatus::Cancelled;
        self.compact(shard, class);
        self.metrics.cancelled += 1;
        self.vacate(job);
    }

    /// Takes a running job off its node and queues it in `shard` again, counted as a requeue.
    fn requeue_running(&mut self, job: JobIx, shard: ShardIx, tick: u64) {
        self.release(job);
        let j = &mut self.jobs[job as usize];
        j.requeues += 1;
        j.node = NO_NODE;
        self.enqueue(job, shard);
        self.shards[shard as usize].counters.requeued += 1;
        self.metrics.requeues += 1;
        self.record(job, tick);
    }

    /// A node is marked healthy, or unhealthy once it runs nothing.
    fn health(&mut self, body: &NodeHealthChanged, tick: u64) -> Result<(), ApplyError> {
        let node_ix = self.lookup_node(&body.node)?;
        let node = &mut self.nodes[node_ix as usize];
        if node.healthy == body.healthy {
            return Err(ApplyError::Conflict(format!(
                "node `{}` is already {}",
                body.node,
                if body.healthy { "healthy" } else { "unhealthy" }
            )));
        }
        if !body.healthy && !node.running.is_empty() {
            // Its jobs must be requeued first: a node marked dead holds no work.
            return Err(ApplyError::Conflict(format!(
                "node `{}` still runs {} jobs",
                body.node,
                node.running.len()
            )));
        }
        node.healthy = body.healthy;
        if body.healthy {
            node.unhealthy_ticks_total += tick.saturating_sub(node.unhealthy_since_tick);
        } else {
            node.unhealthy_since_tick = tick;
            node.outages += 1;
            node.reputation_ppm = node.reputation_ppm.saturating_sub(REPUTATION_OUTAGE_PPM);
            self.metrics.failures += 1;
        }
        Ok(())
    }

    /// Takes a running job off its node.
    fn release(&mut self, job: JobIx) {
        let j = &self.jobs[job as usize];
        let (node_ix, shard) = (j.node, j.shard);
        let node = &mut self.nodes[node_ix as usize];
        debug_assert_eq!(node.region, shard, "a job runs on a node of its shard");
        let at = node.running.iter().position(|running| *running == job);
        debug_assert!(at.is_some(), "a running job is on its node's list");
        if let Some(at) = at {
            node.running.remove(at);
        }
        let s = &mut self.shards[shard as usize];
        s.running -= 1;
        debug_assert!(node.running.len() as u64 <= s.running);
    }

    /// The slot of a job running on the named node, or why not.
    fn running_job_on(&self, job: JobId, node_name: &str) -> Result<(JobIx, NodeIx), ApplyError> {
        let job_ix = self.lookup_job(job)?;
        let node = self.lookup_node(node_name)?;
        let j = &self.jobs[job_ix as usize];
        if j.status != JobStatus::Running || j.node != node {
            return Err(ApplyError::Conflict(format!(
                "job {job} is not running on node `{node_name}`"
            )));
        }
        Ok((job_ix, node))
    }

    /// A running job goes back to a queue.
    fn requeue(&mut self, body: &JobRequeued, tick: u64) -> Result<(), ApplyError> {
        let (job, _) = self.running_job_on(body.job, &body.node)?;
        let shard = self.lookup_shard(&body.shard)?;
        self.requeue_running(job, shard, tick);
        Ok(())
    }

    /// A receipt re-execution contradicts: the job goes back to the queue of the shard that
    /// assigned it, the node loses reputation and its treaty halts for a while.
    fn attestation_mismatch(
        &mut self,
        body: &AttestationMismatch,
        tick: u64,
    ) -> Result<(), ApplyError> {
        let (job, node_ix) = self.running_job_on(body.job, &body.node)?;
        if body.expected_output_hash == body.reported_output_hash {
            return Err(ApplyError::Conflict(format!(
                "job {}: the expected and reported outputs are the same",
                body.job
            )));
        }
        let shard = self.jobs[job as usize].shard;
        self.requeue_running(job, shard, tick);
        self.metrics.attestation_mismatches += 1;
        let node = &mut self.nodes[node_ix as usize];
        node.reputation_ppm = node
            .reputation_ppm
            .saturating_sub(REPUTATION_ATTESTATION_PPM);
        node.halted_until_tick = tick + ATTESTATION_HALT_TICKS;
        node.attestation_failures += 1;
        Ok(())
    }

    /// A running job finishes: counted in the node, shard and fabric metrics, then it leaves.
    fn receipt(&mut self, body: &JobReceipt, tick: u64) -> Result<(), ApplyError> {
        let (job, node_ix) = self.running_job_on(body.job, &body.node)?;
        self.release(job);
        let j = &mut self.jobs[job as usize];
        j.status = match body.outcome {
            JobOutcome::Completed => JobStatus::Completed,
            JobOutcome::Failed => JobStatus::Failed,
        };
        j.finished_tick = tick;
        let latency_ticks = tick.saturating_sub(j.submitted_tick);
        let late = tick > j.deadline_tick;
        let shard = j.shard;
        let node = &mut self.nodes[node_ix as usize];
        let counters = &mut self.shards[shard as usize].counters;
        match body.outcome {
            JobOutcome::Completed => {
                node.completed += 1;
                node.reputation_ppm = (node.reputation_ppm + REPUTATION_COMPLETED_PPM).min(PPM);
                counters.completed += 1;
                self.metrics.completed += 1;
            }
            JobOutcome::Failed => {
                node.failed += 1;
                node.reputation_ppm = node.reputation_ppm.saturating_sub(REPUTATION_FAILED_PPM);
                counters.failed += 1;
                self.metrics.dropped += 1;
            }
        }
        counters.latency_ticks_sum += latency_ticks;
        let metrics = &mut self.metrics;
        metrics.latency_ticks_sum += latency_ticks;
        metrics.latency_ticks_max = metrics.latency_ticks_max.max(latency_ticks);
        metrics.latency_histogram[(latency_ticks as usize).min(LATENCY_HISTOGRAM_TICKS)] += 1;
        metrics.deadline_missed += u64::from(late);
        self.vacate(job);
        Ok(())
    }

    /// An ended job leaves the job table: its slot is freed for the next submission.
    fn vacate(&mut self, job: JobIx) {
        debug_assert!(self.jobs[job as usize].status.is_terminal());
        let id = self.jobs[job as usize].id;
        self.job_index.remove(&id);
        self.jobs[job as usize] = Job::vacant();
        self.free_slots.push(job);
    }

    /// The first event: the ledger key and the owners.
    fn found(&mut self, body: &FabricGenesis) -> Result<(), ApplyError> {
        if self.authority.founded {
            return Err(ApplyError::Conflict(
                "the fabric already has its genesis".to_owned(),
            ));
        }
        self.authority.found(body);
        Ok(())
    }
}
