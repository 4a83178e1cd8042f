//! The routing policy of one shard for one tick: a pure function of the projected state.
//!
//! A [`TickPlan`] first watches its shard's nodes' health ([`TickPlan::health`]), then hands out
//! one decision per call of [`TickPlan::next_decision`], so a caller can time each decision.
//! Decisions made earlier in the same tick are remembered in the plan (slots taken, jobs
//! spilled), because the state only changes once the tick's batch is appended.
//!
//! Eligible nodes are healthy, not draining, have the job's skills, fit the shard's latency
//! budget, have a free slot under their max concurrency, and score above zero under the
//! shard's treaty. Among them the highest score wins; ties go to the node whose name sorts
//! first. A decision looks only at the shard's capable nodes of the job's class (through a
//! per-tick heap), never at the jobs.
//!
//! Spillover never ping-pongs: a job only moves to a shard it has not been queued in, so it
//! moves at most `shards - 1` times; when no such shard can take it, it waits where it is.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use fabric_events::SpillReason;

use crate::state::{ClassIx, JobIx, Node, NodeIx, Shard, ShardIx, State};

/// Weight of the price term of the treaty score (per credit-per-hour).
pub const TREATY_PRICE_WEIGHT: f64 = 0.3;
/// Weight of the latency term (per millisecond).
pub const TREATY_LATENCY_WEIGHT: f64 = 0.3;
/// Weight of reputation (0..=1).
pub const TREATY_REPUTATION_WEIGHT: f64 = 0.2;
/// Weight of availability (0..=1).
pub const TREATY_AVAILABILITY_WEIGHT: f64 = 0.2;
// The price and latency terms are always positive, so a score of 0 ("not eligible") means
// below the reputation floor and nothing else.
const _: () = assert!(
    TREATY_PRICE_WEIGHT > 0.0
        && TREATY_LATENCY_WEIGHT > 0.0
        && TREATY_REPUTATION_WEIGHT >= 0.0
        && TREATY_AVAILABILITY_WEIGHT >= 0.0
);

/// A health decision of the shard's router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthAction {
    /// The node's job goes back to this shard's queue (listed before the node's
    /// `MarkUnhealthy`, since a node marked dead holds no work).
    Requeue {
        /// The job.
        job: JobIx,
        /// The node it was on.
        node: NodeIx,
    },
    /// The node has been silent for more than twice its heartbeat interval.
    MarkUnhealthy {
        /// The node.
        node: NodeIx,
        /// Its last heartbeat.
        last_heartbeat_tick: u64,
    },
    /// The node heartbeats again after being marked unhealthy.
    MarkHealthy {
        /// The node.
        node: NodeIx,
        /// Its last heartbeat.
        last_heartbeat_tick: u64,
    },
}

/// What happens to one queued job this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run it on this node.
    Assign {
        /// The job.
        job: JobIx,
        /// The node.
        node: NodeIx,
    },
    /// Move it to another shard's queue.
    Spill {
        /// The job.
        job: JobIx,
        /// The shard.
        to: ShardIx,
        /// Why.
        reason: SpillReason,
    },
    /// Leave it queued: nothing can take it now and no spillover rule applies.
    Wait {
        /// The job.
        job: JobIx,
    },
}

/// The treaty score of a node for a shard at a tick, before free capacity and skill
/// alignment: `0.3/price_per_hour + 0.3/latency_ms + 0.2*reputation + 0.2*availability`, and
/// zero under the treaty's reputation floor. (Region and quota zeroes are checked per job.)
pub fn treaty_score(node: &Node, shard: &Shard, tick: u64) -> f64 {
    if node.reputation_ppm < shard.reputation_floor_ppm {
        return 0.0;
    }
    let price_per_hour = (node.price_micros_per_hour.max(1)) as f64 / 1e6;
    let latency_ms = f64::from(node.latency_ms.max(1));
    TREATY_PRICE_WEIGHT / price_per_hour
        + TREATY_LATENCY_WEIGHT / latency_ms
        + TREATY_REPUTATION_WEIGHT * (f64::from(node.reputation_ppm) / 1e6)
        + TREATY_AVAILABILITY_WEIGHT * node.availability(tick)
}

/// A node in a class's candidate heap: greatest score first, then the name that sorts first
/// (`rank` is the node's position in the class's name-sorted capable list).
#[derive(Clone, Copy, Debug)]
struct Candidate {
    score: f64,
    rank: u32,
    node: NodeIx,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.rank.cmp(&self.rank))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Place jobs from the front of each class queue.
    Place,
    /// Spill the newest jobs while the queue is over budget.
    OverBudget,
    Done,
}

/// One shard's routing for one tick.
pub struct TickPlan<'a> {
    state: &'a State,
    shard_ix: ShardIx,
    shard: &'a Shard,
    tick: u64,
    health: Vec<HealthAction>,
    /// Per node (global index): slots taken this tick.
    taken: Vec<u32>,
    /// Per node: marked unhealthy this tick.
    down: Vec<bool>,
    /// Per node: treaty score this tick (0 = not eligible).
    treaty: Vec<f64>,
    /// Per target shard: jobs spilled to it this tick.
    incoming: Vec<u64>,
    /// (target, class) → whether the target has a node that could take the class now.
    target_fit: HashMap<(ShardIx, ClassIx), bool>,
    /// Per class: eligible nodes by score, built at the class's first decision of the tick.
    candidates: HashMap<ClassIx, BinaryHeap<Candidate>>,
    classes: Vec<(ClassIx, u64)>,
    class_cursor: usize,
    /// Jobs of the current class still to look at in this phase.
    pending: Box<dyn Iterator<Item = JobIx> + 'a>,
    /// Per class position in `classes`: jobs taken from the front in the place phase.
    taken_from_front: Vec<u64>,
    phase: Phase,
    removed: u64,
    over_budget_left: u64,
    stop_class: bool,
    class_has_node: bool,
}

impl<'a> TickPlan<'a> {
    /// Plans shard `shard` at `tick` from `state` (the state after tick - 1).
    pub fn new(state: &'a State, shard_ix: ShardIx, tick: u64) -> Self {
        let shard = &state.shards()[shard_ix as usize];
        let node_count = state.nodes().len();
        let mut plan = Self {
            state,
            shard_ix,
            shard,
            tick,
            health: Vec::new(),
            taken: vec![0; node_count],
            down: vec![false; node_count],
            treaty: vec![0.0; node_count],
            incoming: vec![0; state.shards().len()],
            target_fit: HashMap::new(),
            candidates: HashMap::new(),
            classes: shard.queued_classes().collect(),
            class_cursor: 0,
            pending: Box::new(std::iter::empty()),
            taken_from_front: Vec::new(),
            phase: Phase::Place,
            removed: 0,
            over_budget_left: 0,
            stop_class: true,
            class_has_node: false,
        };
        plan.taken_from_front = vec![0; plan.classes.len()];
        plan.watch_health();
        for node_ix in &shard.nodes {
            let node = &state.nodes()[*node_ix as usize];
            if node.takes_work(tick) && !plan.down[*node_ix as usize] {
                plan.treaty[*node_ix as usize] = treaty_score(node, shard, tick);
            }
        }
        if shard.paused {
            plan.phase = Phase::Done;
        }
        plan
    }

    fn watch_health(&mut self) {
        for node_ix in &self.shard.nodes {
            let node = &self.state.nodes()[*node_ix as usize];
            let grace_ticks = 2 * u64::from(node.heartbeat_interval_ticks);
            if node.healthy && self.tick.saturating_sub(node.last_heartbeat_tick) > grace_ticks {
                for job in &node.running {
                    self.health.push(HealthAction::Requeue {
                        job: *job,
                        node: *node_ix,
                    });
                }
                self.health.push(HealthAction::MarkUnhealthy {
                    node: *node_ix,
                    last_heartbeat_tick: node.last_heartbeat_tick,
                });
                self.down[*node_ix as usize] = true;
            } else if !node.healthy && node.last_heartbeat_tick > node.unhealthy_since_tick {
                self.health.push(HealthAction::MarkHealthy {
                    node: *node_ix,
                    last_heartbeat_tick: node.last_heartbeat_tick,
                });
            }
        }
    }

    /// The health decisions of this tick, in the order they must be appended.
    pub fn health(&self) -> &[HealthAction] {
        &self.health
    }

    /// Whether a node can take a job of `class` from this shard now (ignoring free slots).
    fn available(&self, node_ix: NodeIx) -> bool {
        let node = &self.state.nodes()[node_ix as usize];
        self.treaty[node_ix as usize] > 0.0
            && node.quota_left(
                self.tick,
                self.shard.node_quota_jobs,
                self.shard.quota_window_ticks,
            ) > self.taken[node_ix as usize]
    }

    fn free_slots(&self, node_ix: NodeIx) -> u32 {
        let node = &self.state.nodes()[node_ix as usize];
        node.max_concurrency
            .saturating_sub(node.running.len() as u32 + self.taken[node_ix as usize])
    }

    /// A node's score for `class` now, or `None` when it cannot take a job: no free slot, no
    /// quota left, unhealthy, draining or under the treaty floor.
    fn score(&self, node_ix: NodeIx, class_skills: u32) -> Option<f64> {
        let free = self.free_slots(node_ix);
        if free == 0 || !self.available(node_ix) {
            return None;
        }
        let node = &self.state.nodes()[node_ix as usize];
        let alignment = if node.capabilities.is_empty() {
            0.0
        } else {
            f64::from(class_skills) / f64::from(node.capabilities.len())
        };
        let capacity_share = f64::from(free) / f64::from(node.max_concurrency);
        Some(self.treaty[node_ix as usize] * (1.0 + capacity_share + alignment))
    }

    /// The best eligible node for a job of `class`, if any: the highest score, ties to the
    /// name that sorts first.
    ///
    /// The first call for a class in a tick scores its capable nodes into a max-heap
    /// (O(capable nodes)); later calls cost O(log n). Within a tick a node's score only goes
    /// down (slots and quota are taken, nothing is freed), so a heap entry is never below
    /// its node's true score: an entry whose score went down is re-scored and pushed back,
    /// and the first entry that is still exact is the best node.
    pub fn best_node(&mut self, class: ClassIx) -> Option<NodeIx> {
        let skills = self.state.classes()[class as usize].skills.len();
        if !self.candidates.contains_key(&class) {
            let heap: BinaryHeap<Candidate> = self
                .shard
                .capable_nodes(class)
                .iter()
                .enumerate()
                .filter_map(|(rank, node)| {
                    self.score(*node, skills).map(|score| Candidate {
                        score,
                        rank: rank as u32,
                        node: *node,
                    })
                })
                .collect();
            self.candidates.insert(class, heap);
        }
        loop {
            let top = *self.candidates.get(&class)?.peek()?;
            let current = self.score(top.node, skills);
            let heap = self.candidates.get_mut(&class)?;
            match current {
                Some(score) if score == top.score => return Some(top.node),
                Some(score) => {
                    heap.pop();
                    heap.push(Candidate { score, ..top });
                }
                None => {
                    heap.pop();
                }
            }
        }
    }

    fn has_available_node(&self, class: ClassIx) -> bool {
        self.shard
            .capable_nodes(class)
            .iter()
            .any(|node| self.available(*node))
    }

    /// Whether `target` has a healthy capable node over the floor with quota left for `class`.
    fn target_can_run(&mut self, target: ShardIx, class: ClassIx) -> bool {
        let shard = &self.state.shards()[target as usize];
        if shard.paused {
            return false;
        }
        let state = self.state;
        let tick = self.tick;
        *self.target_fit.entry((target, class)).or_insert_with(|| {
            shard.capable_nodes(class).iter().any(|node_ix| {
                let node = &state.nodes()[*node_ix as usize];
                node.takes_work(tick)
                    && node.reputation_ppm >= shard.reputation_floor_ppm
                    && node.quota_left(tick, shard.node_quota_jobs, shard.quota_window_ticks) > 0
            })
        })
    }

    /// Whether `target`'s queue is under its budget, counting this tick's spills to it.
    fn target_has_room(&self, target: ShardIx) -> bool {
        let shard = &self.state.shards()[target as usize];
        shard.queued() + self.incoming[target as usize] < u64::from(shard.queue_budget)
    }

    /// Where a job should spill, by the shard's rules, if anywhere: the first shard it has not
    /// been queued in that can run it and has room. A job that cannot run here at all also
    /// takes a shard that can run it but is over budget (it would only wait here forever, and
    /// two shards full of each other's jobs would otherwise block each other); a job spilled
    /// for room never goes to a shard without room.
    fn spill_target(&mut self, job: JobIx, reason: SpillReason) -> Option<ShardIx> {
        let j = &self.state.jobs()[job as usize];
        let (visited, class) = (j.visited, j.class);
        let targets = self.shard.spillover_targets();
        let open: Vec<ShardIx> = targets
            .iter()
            .copied()
            .filter(|target| visited & (1u64 << target) == 0)
            .collect();
        let mut fallback = None;
        for target in open {
            if !self.target_can_run(target, class) {
                continue;
            }
            if self.target_has_room(target) {
                return Some(target);
            }
            fallback = fallback.or(Some(target));
        }
        match reason {
            SpillReason::NoEligibleNode => fallback,
            SpillReason::QueueOverBudget | SpillReason::ShardPaused => None,
        }
    }

    fn spill_or_wait(&mut self, job: JobIx, reason: SpillReason) -> Decision {
        match self.spill_target(job, reason) {
            Some(to) => {
                self.incoming[to as usize] += 1;
                self.removed += 1;
                Decision::Spill { job, to, reason }
            }
            None => Decision::Wait { job },
        }
    }

    /// The next decision of this tick, or `None` when the shard is done.
    pub fn next_decision(&mut self) -> Option<Decision> {
        loop {
            match self.phase {
                Phase::Done => return None,
                Phase::Place => {
                    if !self.stop_class {
                        if let Some(job) = self.pending.next() {
                            return Some(self.place(job));
                        }
                    }
                    // Next class with queued jobs.
                    if self.class_cursor >= self.classes.len() {
                        self.start_over_budget();
                        continue;
                    }
                    let (class, _) = self.classes[self.class_cursor];
                    self.class_cursor += 1;
                    self.class_has_node = self.has_available_node(class);
                    self.stop_class = false;
                    self.pending = Box::new(self.state.queue(self.shard_ix, class));
                }
                Phase::OverBudget => {
                    if self.over_budget_left == 0 {
                        self.phase = Phase::Done;
                        continue;
                    }
                    if let Some(job) = self.pending.next() {
                        let decision = self.spill_or_wait(job, SpillReason::QueueOverBudget);
                        if matches!(decision, Decision::Spill { .. }) {
                            self.over_budget_left -= 1;
                        }
                        return Some(decision);
                    }
                    if self.class_cursor >= self.classes.len() {
                        self.phase = Phase::Done;
                        continue;
                    }
                    let position = self.class_cursor;
                    let (class, live) = self.classes[position];
                    self.class_cursor += 1;
                    // Newest first, leaving the jobs this tick already placed or moved.
                    let untouched = live.saturating_sub(self.taken_from_front[position]) as usize;
                    self.pending =
                        Box::new(self.state.queue(self.shard_ix, class).rev().take(untouched));
                }
            }
        }
    }

    fn place(&mut self, job: JobIx) -> Decision {
        let position = self.class_cursor - 1;
        let class = self.classes[position].0;
        if !self.class_has_node {
            // Nothing in this shard can ever take it now: move it on, or it waits.
            let decision = self.spill_or_wait(job, SpillReason::NoEligibleNode);
            self.taken_from_front[position] += 1;
            return decision;
        }
        match self.best_node(class) {
            Some(node) => {
                self.taken[node as usize] += 1;
                self.taken_from_front[position] += 1;
                self.removed += 1;
                Decision::Assign { job, node }
            }
            None => {
                // Every capable node is busy: the rest of the class waits behind this job.
                self.stop_class = true;
                Decision::Wait { job }
            }
        }
    }

    fn start_over_budget(&mut self) {
        let left = self.shard.queued().saturating_sub(self.removed);
        let budget = u64::from(self.shard.queue_budget);
        self.over_budget_left = left.saturating_sub(budget);
        self.phase = if self.over_budget_left > 0 {
            Phase::OverBudget
        } else {
            Phase::Done
        };
        self.class_cursor = 0;
        self.pending = Box::new(std::iter::empty());
    }
}
