//! The canonical snapshot of a state (FORMAT.md §9) and its hash: [`State::snapshot_bytes`],
//! [`State::state_hash`], [`state_hash_of`] and the inverse [`State::from_snapshot_bytes`].
//!
//! The snapshot holds everything observable, in index order; lookup maps, class queue
//! entries' generations and the derived per-shard lists are left out and rebuilt on decoding.
//! The bytes and hashes are pinned by tests: any change here is a format change.

use std::collections::BTreeMap;

use bincode::{Decode, Encode};
use fabric_events::Hash32;
use thiserror::Error;

use super::queues::ClassQueue;
use super::{
    ClassIx, Covenant, Job, JobIx, JobStatus, Model, NodeIx, Sequencing, Shard, ShardIx, State,
    CLASSES_MAX, JOBS_MAX, LATENCY_HISTOGRAM_TICKS, NO_NODE, SHARDS_MAX, SKILLS_MAX,
};

/// The magic the snapshot starts with (its version).
const MAGIC: &[u8] = b"fabric-state-v3";
/// Ends a shard's list of queued classes (no class has this index).
const END_OF_QUEUES: ClassIx = u32::MAX;
const _: () = assert!(CLASSES_MAX < END_OF_QUEUES as usize);

/// The queued jobs a snapshot lists per shard, per class, in queue order; checked once the
/// job table is read.
type QueuedLists = Vec<Vec<(ClassIx, Vec<JobIx>)>>;

/// Writes the values of a snapshot one after the other.
struct SnapshotWriter {
    out: Vec<u8>,
}

impl SnapshotWriter {
    fn put<T: Encode>(&mut self, value: &T) {
        fabric_events::codec::encode_canonical_into(value, &mut self.out);
    }
}

impl State {
    /// The canonical bytes of the state: everything [`State::state_hash`] covers, in index
    /// order. Lookup maps and derived indices are left out (they follow from these).
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        let mut w = SnapshotWriter {
            out: Vec::with_capacity(64 + self.jobs.len() * 128),
        };
        self.write_header(&mut w);
        w.put(&(self.shards.len() as u64));
        for (ix, shard) in self.shards.iter().enumerate() {
            self.write_shard(ix as ShardIx, shard, &mut w);
        }
        w.put(&self.nodes);
        self.write_job_table(&mut w);
        self.write_submitted_ids(&mut w);
        w.put(&self.metrics);
        w.put(&self.authority);
        w.put(&self.checkpoint_interval_ticks);
        w.put(&self.checkpoint_requested);
        w.put(&(self.models.len() as u64));
        for model in self.models.values() {
            w.put(model);
        }
        // Only a replicated fabric's states have it, so every other state keeps its bytes;
        // the covenant section after it likewise (with a default sequencing before it).
        let covenant = self.covenant != Covenant::default();
        if self.sequencing != Sequencing::default() || covenant {
            w.put(&self.sequencing);
        }
        if covenant {
            w.put(&self.covenant);
        }
        w.out
    }

    /// The magic, the counters, the skills and the job classes.
    fn write_header(&self, w: &mut SnapshotWriter) {
        w.put(&MAGIC);
        w.put(&self.tick);
        w.put(&self.events_applied);
        w.put(&self.anomalies);
        w.put(&self.last_checkpoint_tree_size);
        w.put(&self.jobs_moved_tick);
        w.put(&self.generations);
        w.put(&self.skills);
        w.put(&self.classes);
    }

    /// One shard: its settings and counters, then its queued jobs per class (classes with no
    /// queued job are left out), ended by [`END_OF_QUEUES`].
    fn write_shard(&self, ix: ShardIx, shard: &Shard, w: &mut SnapshotWriter) {
        w.put(&shard.name);
        w.put(&shard.router_key);
        w.put(&shard.queue_budget);
        w.put(&shard.latency_budget_ms);
        w.put(&shard.spillover);
        w.put(&shard.specialties);
        w.put(&shard.reputation_floor_ppm);
        w.put(&shard.regions_served);
        w.put(&shard.node_quota_jobs);
        w.put(&shard.quota_window_ticks);
        w.put(&shard.paused);
        w.put(&shard.retired);
        w.put(&shard.nodes);
        w.put(&shard.running);
        w.put(&shard.counters);
        w.put(&shard.queued);
        for (class, queue) in &shard.queues {
            if queue.live == 0 {
                continue;
            }
            w.put(class);
            w.put(&queue.live);
            for job in self.queue(ix, *class) {
                w.put(&job);
            }
        }
        w.put(&END_OF_QUEUES);
    }

    /// The job table: its length, its free slots (in reuse order), then the live jobs with
    /// their slots. Vacant slots carry nothing, so the snapshot follows the jobs in the
    /// fabric, not every job that ever was.
    fn write_job_table(&self, w: &mut SnapshotWriter) {
        w.put(&(self.jobs.len() as u64));
        w.put(&self.free_slots);
        w.put(&((self.jobs.len() - self.free_slots.len()) as u64));
        for (slot, job) in self.jobs.iter().enumerate() {
            if job.status != JobStatus::Vacant {
                w.put(&(slot as JobIx));
                w.put(job);
            }
        }
    }

    /// The ids ever submitted, as ranges.
    fn write_submitted_ids(&self, w: &mut SnapshotWriter) {
        w.put(&(self.submitted_ids.len() as u64));
        for (start, end) in self.submitted_ids.ranges() {
            w.put(&start);
            w.put(&end);
        }
    }

    /// BLAKE3 (keyed by the context `fabric 2026-11 state hash v1`) of
    /// [`State::snapshot_bytes`]: two folds of the same log give the same hash.
    pub fn state_hash(&self) -> Hash32 {
        state_hash_of(&self.snapshot_bytes())
    }
}

/// The state hash of snapshot bytes made by [`State::snapshot_bytes`], for callers that keep
/// the bytes (a checkpoint stores them and hashes them once).
pub fn state_hash_of(snapshot: &[u8]) -> Hash32 {
    Hash32(blake3::derive_key("fabric 2026-11 state hash v1", snapshot))
}

/// Why snapshot bytes cannot be a state.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// The bytes do not decode as the canonical encoding.
    #[error("state snapshot does not decode at byte {offset}: {detail}")]
    Malformed {
        /// Where decoding stopped.
        offset: usize,
        /// What went wrong.
        detail: String,
    },
    /// The bytes decode, but into something no log can produce.
    #[error("state snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

/// Reads the values of a snapshot one after the other.
struct SnapshotReader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl SnapshotReader<'_> {
    fn take<T: Decode<()>>(&mut self) -> Result<T, SnapshotError> {
        let (value, used) = fabric_events::codec::decode_canonical_prefix(&self.bytes[self.at..])
            .map_err(|err| SnapshotError::Malformed {
            offset: self.at,
            detail: err.to_string(),
        })?;
        self.at += used;
        Ok(value)
    }

    /// Bytes not read yet.
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
}

pub(super) fn inconsistent(detail: String) -> SnapshotError {
    SnapshotError::Inconsistent(detail)
}

pub(super) fn check_index(what: &str, index: usize, len: usize) -> Result<(), SnapshotError> {
    if index < len {
        Ok(())
    } else {
        Err(inconsistent(format!(
            "{what} {index} is out of range ({len})"
        )))
    }
}

impl State {
    /// Rebuilds a state from [`State::snapshot_bytes`]: `from_snapshot_bytes(s.snapshot_bytes())`
    /// has the same snapshot bytes as `s` and evolves exactly as `s` under every event. Indices
    /// are checked, so inconsistent bytes are an error rather than a panic; decode only bytes
    /// whose hash matched a signed checkpoint (lengths are trusted up to the input's size).
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<State, SnapshotError> {
        let mut r = SnapshotReader { bytes, at: 0 };
        let mut state = Self::read_header(&mut r)?;
        let queued_lists = state.read_shards(&mut r)?;
        state.nodes = r.take()?;
        state.read_job_table(&mut r)?;
        state.read_submitted_ids(&mut r)?;
        state.metrics = r.take()?;
        state.authority = r.take()?;
        state.checkpoint_interval_ticks = r.take()?;
        state.checkpoint_requested = r.take()?;
        state.read_models(&mut r)?;
        if r.at != bytes.len() {
            state.sequencing = r.take()?;
            if r.at != bytes.len() {
                state.covenant = r.take()?;
                if state.covenant == Covenant::default() {
                    return Err(inconsistent("an empty covenant section".to_owned()));
                }
            } else if state.sequencing == Sequencing::default() {
                return Err(inconsistent("an empty sequencing section".to_owned()));
            }
        }
        if r.at != bytes.len() {
            return Err(SnapshotError::Malformed {
                offset: r.at,
                detail: format!("{} bytes after the state", r.remaining()),
            });
        }
        state.check_and_index(queued_lists)?;
        Ok(state)
    }

    /// The magic, the counters, the skills and the job classes, into an otherwise empty state.
    fn read_header(r: &mut SnapshotReader) -> Result<State, SnapshotError> {
        let magic: Vec<u8> = r.take()?;
        if magic != MAGIC {
            return Err(SnapshotError::Malformed {
                offset: 0,
                detail: "it does not start with \"fabric-state-v3\"".to_owned(),
            });
        }
        let state = State {
            tick: r.take()?,
            events_applied: r.take()?,
            anomalies: r.take()?,
            last_checkpoint_tree_size: r.take()?,
            jobs_moved_tick: r.take()?,
            generations: r.take()?,
            skills: r.take()?,
            classes: r.take()?,
            ..State::default()
        };
        if state.skills.len() > SKILLS_MAX {
            return Err(inconsistent(format!("{} skills", state.skills.len())));
        }
        if state.classes.len() > CLASSES_MAX {
            return Err(inconsistent(format!("{} job classes", state.classes.len())));
        }
        Ok(state)
    }

    /// The shards (registered in `shard_index`) and the queued jobs each lists.
    fn read_shards(&mut self, r: &mut SnapshotReader) -> Result<QueuedLists, SnapshotError> {
        let shard_count: u64 = r.take()?;
        if shard_count > SHARDS_MAX as u64 {
            return Err(inconsistent(format!("{shard_count} shards")));
        }
        let mut queued_lists = Vec::new();
        for _ in 0..shard_count {
            let shard = Self::read_shard(r)?;
            let lists = self.read_queued(r, &shard.name)?;
            self.shard_index
                .insert(shard.name.clone(), self.shards.len() as ShardIx);
            self.shards.push(shard);
            queued_lists.push(lists);
        }
        Ok(queued_lists)
    }

    /// One shard's settings and counters; its queues are rebuilt later.
    fn read_shard(r: &mut SnapshotReader) -> Result<Shard, SnapshotError> {
        let mut shard = Shard {
            name: r.take()?,
            router_key: r.take()?,
            queue_budget: r.take()?,
            latency_budget_ms: r.take()?,
            spillover: r.take()?,
            specialties: r.take()?,
            reputation_floor_ppm: r.take()?,
            regions_served: r.take()?,
            node_quota_jobs: r.take()?,
            quota_window_ticks: r.take()?,
            paused: r.take()?,
            retired: r.take()?,
            nodes: r.take()?,
            running: r.take()?,
            counters: r.take()?,
            queues: BTreeMap::new(),
            queued: 0,
            capable: Vec::new(),
            spillover_ix: Vec::new(),
            served_mask: 0,
        };
        shard.queued = r.take()?;
        Ok(shard)
    }

    /// One shard's queued jobs per class, up to [`END_OF_QUEUES`].
    fn read_queued(
        &self,
        r: &mut SnapshotReader,
        shard_name: &str,
    ) -> Result<Vec<(ClassIx, Vec<JobIx>)>, SnapshotError> {
        let mut lists = Vec::new();
        loop {
            let class: ClassIx = r.take()?;
            if class == END_OF_QUEUES {
                return Ok(lists);
            }
            check_index("queued class", class as usize, self.classes.len())?;
            let count: u64 = r.take()?;
            if count > r.remaining() as u64 / 4 {
                return Err(inconsistent(format!(
                    "shard `{shard_name}` claims {count} queued jobs of class {class}"
                )));
            }
            let jobs = (0..count)
                .map(|_| r.take())
                .collect::<Result<Vec<JobIx>, _>>()?;
            lists.push((class, jobs));
        }
    }

    /// The job table: slots, free slots, and the live jobs in slot order.
    fn read_job_table(&mut self, r: &mut SnapshotReader) -> Result<(), SnapshotError> {
        let slots: u64 = r.take()?;
        // A slot costs at least four bytes (a free one is its index in the free list).
        if slots > JOBS_MAX as u64 || slots > r.bytes.len() as u64 / 4 {
            return Err(inconsistent(format!("a job table of {slots} slots")));
        }
        self.free_slots = r.take()?;
        let live: u64 = r.take()?;
        if live + self.free_slots.len() as u64 != slots {
            return Err(inconsistent(format!(
                "{live} live jobs and {} free slots in a table of {slots}",
                self.free_slots.len()
            )));
        }
        self.jobs = vec![Job::vacant(); slots as usize];
        let mut previous: Option<JobIx> = None;
        for _ in 0..live {
            let slot: JobIx = r.take()?;
            let job: Job = r.take()?;
            check_index("job slot", slot as usize, slots as usize)?;
            if previous.is_some_and(|previous| previous >= slot) || job.status == JobStatus::Vacant
            {
                return Err(inconsistent(format!(
                    "job slot {slot} out of order or vacant"
                )));
            }
            previous = Some(slot);
            self.jobs[slot as usize] = job;
        }
        for slot in &self.free_slots {
            check_index("free job slot", *slot as usize, slots as usize)?;
            if self.jobs[*slot as usize].status != JobStatus::Vacant {
                return Err(inconsistent(format!("free slot {slot} holds a job")));
            }
        }
        Ok(())
    }

    /// The ranges of submitted ids: in order, non-empty, neither overlapping nor touching.
    fn read_submitted_ids(&mut self, r: &mut SnapshotReader) -> Result<(), SnapshotError> {
        let ranges: u64 = r.take()?;
        if ranges > r.bytes.len() as u64 / 16 {
            return Err(inconsistent(format!("{ranges} ranges of submitted ids")));
        }
        for _ in 0..ranges {
            let (start, end): (u64, u64) = (r.take()?, r.take()?);
            let after_last = self
                .submitted_ids
                .ranges
                .last_key_value()
                .map(|(_, end)| *end);
            if start >= end || after_last.is_some_and(|last_end| start <= last_end) {
                return Err(inconsistent(format!(
                    "submitted id range {start}..{end} is empty, overlaps or touches the one before"
                )));
            }
            self.submitted_ids.ranges.insert(start, end);
        }
        Ok(())
    }

    /// The registered models: each a model a registration could make, in ascending order of
    /// workload, each workload once.
    fn read_models(&mut self, r: &mut SnapshotReader) -> Result<(), SnapshotError> {
        let count: u64 = r.take()?;
        // A model costs at least 62 bytes: two non-empty strings (9 each), a job type (4), a
        // hash (32) and a tick (8).
        if count > r.remaining() as u64 / 62 {
            return Err(inconsistent(format!("{count} models")));
        }
        for _ in 0..count {
            let model: Model = r.take()?;
            let workload = model.workload();
            fabric_events::model::check_model_name("model id", &model.model_id)
                .and_then(|()| {
                    fabric_events::model::check_model_name("model version", &model.model_version)
                })
                .map_err(inconsistent)?;
            if self
                .models
                .last_key_value()
                .is_some_and(|(last, _)| *last >= workload)
            {
                return Err(inconsistent(format!(
                    "model `{workload}` out of order or listed twice"
                )));
            }
            self.models.insert(workload, model);
        }
        Ok(())
    }

    /// Checks every index of a decoded state and rebuilds what the snapshot leaves out: the
    /// lookup maps, the class queues and the derived per-shard lists.
    fn check_and_index(&mut self, queued_lists: QueuedLists) -> Result<(), SnapshotError> {
        self.check_tables()?;
        self.index_nodes()?;
        self.index_jobs()?;
        self.index_skills_and_classes()?;
        self.rebuild_queues(queued_lists)?;
        for shard in 0..self.shards.len() {
            self.resolve_shard_names(shard as ShardIx);
            self.rebuild_capable(shard as ShardIx);
        }
        Ok(())
    }

    /// The metrics' histogram lengths, the classes' origins, the authority table's holders and
    /// the shards' nodes.
    fn check_tables(&self) -> Result<(), SnapshotError> {
        let (shards, nodes) = (self.shards.len(), self.nodes.len());
        if self.metrics.latency_histogram.len() != LATENCY_HISTOGRAM_TICKS + 1
            || self.metrics.spills_per_job.len() != SHARDS_MAX + 1
        {
            return Err(inconsistent(
                "metric histograms of the wrong length".to_owned(),
            ));
        }
        for class in &self.classes {
            check_index("class origin shard", class.origin as usize, shards)?;
        }
        self.authority
            .check(shards, nodes, self.covenant.recorders.len())?;
        for shard in &self.shards {
            for node in &shard.nodes {
                check_index("shard node", *node as usize, nodes)?;
            }
        }
        Ok(())
    }

    /// Checks each node's region and running jobs, and fills `node_index`.
    fn index_nodes(&mut self) -> Result<(), SnapshotError> {
        let (shards, jobs) = (self.shards.len(), self.jobs.len());
        for (ix, node) in self.nodes.iter().enumerate() {
            check_index("node region", node.region as usize, shards)?;
            for job in &node.running {
                check_index("running job", *job as usize, jobs)?;
                if self.jobs[*job as usize].status != JobStatus::Running {
                    return Err(inconsistent(format!(
                        "node `{}` runs slot {job}, which holds no running job",
                        node.name
                    )));
                }
            }
            if self
                .node_index
                .insert(node.name.clone(), ix as NodeIx)
                .is_some()
            {
                return Err(inconsistent(format!("node `{}` appears twice", node.name)));
            }
        }
        Ok(())
    }

    /// Checks each live job's id and indices, and fills `job_index`.
    fn index_jobs(&mut self) -> Result<(), SnapshotError> {
        let (shards, nodes, classes) = (self.shards.len(), self.nodes.len(), self.classes.len());
        for (ix, job) in self.jobs.iter().enumerate() {
            if job.status == JobStatus::Vacant {
                continue;
            }
            if !self.submitted_ids.contains(job.id) {
                return Err(inconsistent(format!("job {} was never submitted", job.id)));
            }
            check_index("job class", job.class as usize, classes)?;
            check_index("job shard", job.shard as usize, shards)?;
            check_index("job origin", job.origin as usize, shards)?;
            if job.node != NO_NODE {
                check_index("job node", job.node as usize, nodes)?;
            }
            if self.job_index.insert(job.id, ix as JobIx).is_some() {
                return Err(inconsistent(format!("job {} appears twice", job.id)));
            }
        }
        Ok(())
    }

    /// Fills `skill_index` and `class_index`; no shard, skill or class may appear twice.
    fn index_skills_and_classes(&mut self) -> Result<(), SnapshotError> {
        for (ix, name) in self.skills.iter().enumerate() {
            self.skill_index.insert(name.clone(), ix as u8);
        }
        for (ix, class) in self.classes.iter().enumerate() {
            self.class_index
                .insert((class.skills.0, class.origin), ix as ClassIx);
        }
        if self.shard_index.len() != self.shards.len()
            || self.skill_index.len() != self.skills.len()
            || self.class_index.len() != self.classes.len()
        {
            return Err(inconsistent(
                "a shard, skill or class appears twice".to_owned(),
            ));
        }
        Ok(())
    }

    /// Rebuilds the class queues from the lists the snapshot holds: every listed job must be
    /// queued in that shard and class, and each shard's count must match its lists.
    fn rebuild_queues(&mut self, queued_lists: QueuedLists) -> Result<(), SnapshotError> {
        let jobs = self.jobs.len();
        for (shard_ix, lists) in queued_lists.into_iter().enumerate() {
            let mut queued = 0u64;
            for (class, list) in lists {
                let mut queue = ClassQueue::default();
                for job in list {
                    check_index("queued job", job as usize, jobs)?;
                    let j = &self.jobs[job as usize];
                    if j.status != JobStatus::Queued
                        || j.shard as usize != shard_ix
                        || j.class != class
                    {
                        return Err(inconsistent(format!(
                            "job {} is listed in a queue of shard {shard_ix} it is not in",
                            j.id
                        )));
                    }
                    queue.entries.push_back((job, j.generation));
                    queue.live += 1;
                }
                queued += queue.live;
                self.shards[shard_ix].queues.insert(class, queue);
            }
            if queued != self.shards[shard_ix].queued {
                return Err(inconsistent(format!(
                    "shard {shard_ix} says {} queued jobs and lists {queued}",
                    self.shards[shard_ix].queued
                )));
            }
        }
        Ok(())
    }
}
