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
    ClassIx, Job, JobIx, JobStatus, NodeIx, Shard, ShardIx, State, CLASSES_MAX, JOBS_MAX,
    LATENCY_HISTOGRAM_TICKS, NO_NODE, SHARDS_MAX, SKILLS_MAX,
};

impl State {
    /// The canonical bytes of the state: everything [`State::state_hash`] covers, in index
    /// order. Lookup maps and derived indices are left out (they follow from these).
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.jobs.len() * 128);
        fn enc<T: Encode>(value: &T, out: &mut Vec<u8>) {
            fabric_events::codec::encode_canonical_into(value, out);
        }
        enc(&b"fabric-state-v2".as_slice(), &mut out);
        enc(&self.tick, &mut out);
        enc(&self.events_applied, &mut out);
        enc(&self.anomalies, &mut out);
        enc(&self.last_checkpoint_tree_size, &mut out);
        enc(&self.jobs_moved_tick, &mut out);
        enc(&self.generations, &mut out);
        enc(&self.skills, &mut out);
        enc(&self.classes, &mut out);
        enc(&(self.shards.len() as u64), &mut out);
        for (ix, shard) in self.shards.iter().enumerate() {
            let ix = ix as ShardIx;
            enc(&shard.name, &mut out);
            enc(&shard.router_key, &mut out);
            enc(&shard.queue_budget, &mut out);
            enc(&shard.latency_budget_ms, &mut out);
            enc(&shard.spillover, &mut out);
            enc(&shard.specialties, &mut out);
            enc(&shard.reputation_floor_ppm, &mut out);
            enc(&shard.regions_served, &mut out);
            enc(&shard.node_quota_jobs, &mut out);
            enc(&shard.quota_window_ticks, &mut out);
            enc(&shard.paused, &mut out);
            enc(&shard.retired, &mut out);
            enc(&shard.nodes, &mut out);
            enc(&shard.running, &mut out);
            enc(&shard.counters, &mut out);
            enc(&shard.queued, &mut out);
            for (class, queue) in &shard.queues {
                if queue.live == 0 {
                    continue;
                }
                enc(class, &mut out);
                enc(&queue.live, &mut out);
                for job in self.queue(ix, *class) {
                    enc(&job, &mut out);
                }
            }
            enc(&u32::MAX, &mut out);
        }
        enc(&self.nodes, &mut out);
        // The job table: its length, its free slots (in reuse order), then the live jobs with
        // their slots. Vacant slots carry nothing, so the snapshot follows the jobs in the
        // fabric, not every job that ever was.
        enc(&(self.jobs.len() as u64), &mut out);
        enc(&self.free_slots, &mut out);
        enc(
            &((self.jobs.len() - self.free_slots.len()) as u64),
            &mut out,
        );
        for (slot, job) in self.jobs.iter().enumerate() {
            if job.status != JobStatus::Vacant {
                enc(&(slot as JobIx), &mut out);
                enc(job, &mut out);
            }
        }
        enc(&(self.submitted_ids.len() as u64), &mut out);
        for (start, end) in self.submitted_ids.ranges() {
            enc(&start, &mut out);
            enc(&end, &mut out);
        }
        enc(&self.metrics, &mut out);
        enc(&self.authority, &mut out);
        enc(&self.checkpoint_interval_ticks, &mut out);
        enc(&self.checkpoint_requested, &mut out);
        out
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
        let magic: Vec<u8> = r.take()?;
        if magic != b"fabric-state-v2" {
            return Err(SnapshotError::Malformed {
                offset: 0,
                detail: "it does not start with \"fabric-state-v2\"".to_owned(),
            });
        }
        let mut state = State {
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
        let shard_count: u64 = r.take()?;
        if shard_count > SHARDS_MAX as u64 {
            return Err(inconsistent(format!("{shard_count} shards")));
        }
        // Queued jobs per shard, checked once the jobs are read.
        let mut queued_lists: Vec<Vec<(ClassIx, Vec<JobIx>)>> = Vec::new();
        for _ in 0..shard_count {
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
            let mut lists = Vec::new();
            loop {
                let class: u32 = r.take()?;
                if class == u32::MAX {
                    break;
                }
                check_index("queued class", class as usize, state.classes.len())?;
                let count: u64 = r.take()?;
                if count > (bytes.len() - r.at) as u64 / 4 {
                    return Err(inconsistent(format!(
                        "shard `{}` claims {count} queued jobs of class {class}",
                        shard.name
                    )));
                }
                let jobs = (0..count)
                    .map(|_| r.take())
                    .collect::<Result<Vec<JobIx>, _>>()?;
                lists.push((class, jobs));
            }
            state
                .shard_index
                .insert(shard.name.clone(), state.shards.len() as ShardIx);
            state.shards.push(shard);
            queued_lists.push(lists);
        }
        state.nodes = r.take()?;
        let slots: u64 = r.take()?;
        // A slot costs at least four bytes (a free one is its index in the free list).
        if slots > JOBS_MAX as u64 || slots > bytes.len() as u64 / 4 {
            return Err(inconsistent(format!("a job table of {slots} slots")));
        }
        state.free_slots = r.take()?;
        let live: u64 = r.take()?;
        if live + state.free_slots.len() as u64 != slots {
            return Err(inconsistent(format!(
                "{live} live jobs and {} free slots in a table of {slots}",
                state.free_slots.len()
            )));
        }
        state.jobs = vec![Job::vacant(); slots as usize];
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
            state.jobs[slot as usize] = job;
        }
        for slot in &state.free_slots {
            check_index("free job slot", *slot as usize, slots as usize)?;
            if state.jobs[*slot as usize].status != JobStatus::Vacant {
                return Err(inconsistent(format!("free slot {slot} holds a job")));
            }
        }
        let ranges: u64 = r.take()?;
        if ranges > bytes.len() as u64 / 16 {
            return Err(inconsistent(format!("{ranges} ranges of submitted ids")));
        }
        for _ in 0..ranges {
            let (start, end): (u64, u64) = (r.take()?, r.take()?);
            let after_last = state
                .submitted_ids
                .ranges
                .last_key_value()
                .map(|(_, end)| *end);
            if start >= end || after_last.is_some_and(|last_end| start <= last_end) {
                return Err(inconsistent(format!(
                    "submitted id range {start}..{end} is empty, overlaps or touches the one before"
                )));
            }
            state.submitted_ids.ranges.insert(start, end);
        }
        state.metrics = r.take()?;
        state.authority = r.take()?;
        state.checkpoint_interval_ticks = r.take()?;
        state.checkpoint_requested = r.take()?;
        if r.at != bytes.len() {
            return Err(SnapshotError::Malformed {
                offset: r.at,
                detail: format!("{} bytes after the state", bytes.len() - r.at),
            });
        }
        state.check_and_index(queued_lists)?;
        Ok(state)
    }

    /// Checks every index of a decoded state and rebuilds what the snapshot leaves out: the
    /// lookup maps, the class queues and the derived per-shard lists.
    fn check_and_index(
        &mut self,
        queued_lists: Vec<Vec<(ClassIx, Vec<JobIx>)>>,
    ) -> Result<(), SnapshotError> {
        let (shards, nodes, jobs, classes) = (
            self.shards.len(),
            self.nodes.len(),
            self.jobs.len(),
            self.classes.len(),
        );
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
        self.authority.check(shards, nodes)?;
        for shard in &self.shards {
            for node in &shard.nodes {
                check_index("shard node", *node as usize, nodes)?;
            }
        }
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
        for (ix, name) in self.skills.iter().enumerate() {
            self.skill_index.insert(name.clone(), ix as u8);
        }
        for (ix, class) in self.classes.iter().enumerate() {
            self.class_index
                .insert((class.skills.0, class.origin), ix as ClassIx);
        }
        if self.shard_index.len() != shards
            || self.skill_index.len() != self.skills.len()
            || self.class_index.len() != classes
        {
            return Err(inconsistent(
                "a shard, skill or class appears twice".to_owned(),
            ));
        }
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
        for shard in 0..shards {
            self.resolve_shard_names(shard as ShardIx);
            self.rebuild_capable(shard as ShardIx);
        }
        Ok(())
    }
}
