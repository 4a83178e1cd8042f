//! The audit of a whole history: everything a log commits to, checked.
//!
//! One pass over the entries, in chunks. Each chunk's signatures are batch-verified on every
//! core while this thread folds it with a [`Replay`] and checks, entry by entry: seqs and
//! `prev` links, that the entry decodes and is admissible (the authority table and a fit with
//! the state), the Merkle root and signature of every signed tree head as the tree reaches its
//! size, and at every `checkpoint` its Merkle root, the state hash of the projections rebuilt
//! from scratch, and the snapshot stored for it. A third thread reads (and hash-checks) the
//! next chunk meanwhile. The first failure, by seq, ends the audit.
//!
//! [`audit_ledger`] audits a stored log (from genesis, or from a checkpoint that verifies);
//! [`audit_export`] audits export lines (`fabric export`, a run's `events.ndjson`). After an
//! audit that passed, [`gpu_checks`] re-runs GPU receipts through inputs the caller
//! regenerates ([`Inputs`]), re-runs the receipts of registered models' jobs on their inputs
//! from the `artifacts` tree through a caller's [`ModelRunner`], and hashes every entry with a
//! caller's [`EntryHasher`].

mod gpu;
mod models;
#[cfg(test)]
mod models_tests;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use fabric_events::{Body, Entry, ExportLine, Hash32, PublicKey};
use fabric_ledger::{
    verify_batch, Frontier, KeyCache, LedgerError, LedgerReader, RefusalReason, SignedTreeHead,
};
use fabric_projections::state::state_hash_of;
use rayon::prelude::*;
use serde::Serialize;
use thiserror::Error;

pub use gpu::{gpu_checks, CallerError, EntryHasher, GpuChecks, Inputs};
pub use models::ModelRunner;

use crate::replay::{ledger_error_seq, Replay, ReplayError};

/// Entries per chunk: large enough for batch verification to use every core, small enough
/// that reading the next chunk overlaps verifying this one.
pub const AUDIT_CHUNK_ENTRIES: usize = 8_192;
/// Authors whose decompressed keys the audit keeps.
const AUDIT_KEY_CACHE_AUTHORS: usize = 1 << 16;

/// Why an audit could not run at all (what it found wrong is its report's [`Failure`]).
#[derive(Debug, Error)]
pub enum AuditError {
    /// The start asked for is past the log.
    #[error("--from {from} is past the end of the log ({size} entries)")]
    FromPastEnd {
        /// The seq asked for.
        from: u64,
        /// The log's size.
        size: u64,
    },
    /// The ledger could not be read.
    #[error("could not {context}")]
    Read {
        /// What was being read.
        context: &'static str,
        /// Why.
        source: LedgerError,
    },
    /// The export file could not be opened.
    #[error("could not open the export {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The first thing that did not verify.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    /// The first failing entry (absent when the failure is not about one entry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What failed: `signature`, `chain`, `root`, `state`, `storage`, `export`, `authority`,
    /// `reexecute` or `gpu`.
    pub what: &'static str,
    /// In words.
    pub detail: String,
}

impl Failure {
    /// A failure at entry `seq`.
    pub fn at(seq: u64, what: &'static str, detail: impl Into<String>) -> Self {
        Self {
            seq: Some(seq),
            what,
            detail: detail.into(),
        }
    }

    /// A failure of reading the ledger.
    pub fn from_ledger(error: &LedgerError) -> Self {
        let what = match error {
            LedgerError::BrokenChain { .. } => "chain",
            _ => "storage",
        };
        Self {
            seq: ledger_error_seq(error),
            what,
            detail: error.to_string(),
        }
    }

    /// A failure of the replay.
    pub fn from_replay(error: &ReplayError) -> Self {
        let what = match error {
            ReplayError::Read(error) => return Self::from_ledger(error),
            ReplayError::Gap { .. } | ReplayError::Link { .. } => "chain",
            ReplayError::Decode { .. } => "storage",
            ReplayError::Refused { .. } => "authority",
        };
        Self {
            seq: error.seq(),
            what,
            detail: error.to_string(),
        }
    }
}

/// What an audit saw.
#[derive(Debug, Default, Serialize)]
pub struct AuditReport {
    /// Whether everything verified.
    pub ok: bool,
    /// The data folder or export file.
    pub source: String,
    /// The seq the replay started at (0, or a checkpoint's with `--from`).
    pub first_seq: u64,
    /// Entries whose signature, hash, link and fit were checked.
    pub events_verified: u64,
    /// Of those, per second of wall time.
    pub events_per_s: f64,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Merkle root of the log as far as it verified.
    pub merkle_root: String,
    /// State hash of the projections rebuilt as far as the log verified.
    pub state_hash: String,
    /// Checkpoints whose root and state hash matched.
    pub checkpoints_verified: u64,
    /// Stored snapshots that matched their checkpoint.
    pub snapshots_verified: u64,
    /// Signed tree heads whose signature and root matched.
    pub tree_heads_verified: u64,
    /// Events that did not fit the state (a run's log has none).
    pub anomalies: u64,
    /// GPU jobs re-run on their CPU references (`--reexecute`).
    pub reexecuted: u64,
    /// Entries hashed by the BLAKE3 kernel (`--gpu`), and where.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_hashed: Option<(u64, String)>,
    /// Notes on what this audit could not check.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The first failure, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// Where the fabric's keys come from, as its genesis says (when the audit read it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_origin: Option<fabric_events::KeyOrigin>,
}

impl AuditReport {
    /// The report of an audit that could not start, at `source`.
    pub fn failed(source: String, failure: Failure) -> Self {
        Self {
            source,
            failure: Some(failure),
            ..Self::default()
        }
    }
}

/// Told the entries verified so far and the entries expected in all, after each chunk.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A chunk of entries with their hashes, or why reading stopped.
type Chunk = Result<(Vec<Hash32>, Vec<Entry>), Failure>;

/// Audits the log of `reader` (whose tree heads and checkpoints `ledger_key` signs) from
/// genesis, or from the newest checkpoint at or before `from` that verifies. `source` names it
/// in the report.
pub fn audit_ledger(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    source: String,
    from: u64,
    progress: Progress<'_>,
) -> Result<AuditReport, AuditError> {
    let started = Instant::now();
    let size = reader.len().map_err(|source| AuditError::Read {
        context: "read the log's size",
        source,
    })?;
    if from >= size.max(1) {
        return Err(AuditError::FromPastEnd { from, size });
    }
    let (replay, notes) = start_at(reader, ledger_key, from)?;
    let first_seq = replay.next_seq();
    let heads: VecDeque<SignedTreeHead> = match reader.tree_heads() {
        Ok(heads) => heads
            .into_iter()
            .filter(|head| head.tree_size >= first_seq)
            .collect(),
        Err(err) => {
            return Ok(AuditReport {
                first_seq,
                ..AuditReport::failed(source, Failure::from_ledger(&err))
            })
        }
    };
    let keys = match reader.ledger_keys() {
        Ok(keys) => keys,
        Err(err) => {
            return Ok(AuditReport {
                first_seq,
                ..AuditReport::failed(source, Failure::from_ledger(&err))
            })
        }
    };
    if keys.genesis() != *ledger_key {
        let failure = Failure {
            seq: None,
            what: "signature",
            detail: format!(
                "the log's genesis ledger key is {}, not the trusted {ledger_key}",
                keys.genesis()
            ),
        };
        return Ok(AuditReport {
            first_seq,
            ..AuditReport::failed(source, failure)
        });
    }
    let entries = read_ledger(reader.clone(), first_seq..size);
    let auditor = Auditor {
        next_seq: first_seq,
        // From a checkpoint, the frontier vouches for the entries before it.
        prev: replay.last_hash(),
        replay: Some(replay),
        checks: Checks {
            ledger_key: Some(keys.at(first_seq)),
            rotations: keys
                .rotations()
                .iter()
                .filter(|(seq, _)| *seq >= first_seq)
                .copied()
                .collect(),
            heads,
            head_roots: Default::default(),
            heads_before_start: 0,
            snapshots: Some(reader.clone()),
        },
        report: AuditReport {
            source,
            first_seq,
            notes,
            ..AuditReport::default()
        },
    };
    Ok(auditor.run(entries, size - first_seq, started, progress))
}

/// The replay an audit starts with: genesis, or the newest checkpoint at or before `from` that
/// verifies (each one skipped is a note).
fn start_at(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    from: u64,
) -> Result<(Replay, Vec<String>), AuditError> {
    let mut notes = Vec::new();
    if from == 0 {
        return Ok((Replay::genesis(), notes));
    }
    let sizes = reader.snapshot_sizes().map_err(|source| AuditError::Read {
        context: "list snapshots",
        source,
    })?;
    for tree_size in sizes.into_iter().rev().filter(|size| *size <= from) {
        match crate::load_checkpoint(reader, ledger_key, tree_size) {
            Ok(loaded) => return Ok((Replay::resume(loaded.state, loaded.frontier, None), notes)),
            Err(why) => notes.push(format!(
                "skipped the checkpoint at tree size {tree_size}: {why}"
            )),
        }
    }
    notes.push(format!(
        "no checkpoint at or before seq {from} verifies: audited from genesis"
    ));
    Ok((Replay::genesis(), notes))
}

/// Reads the ledger's entries (hash-checked and chained by the reader) on a thread of their
/// own, a chunk ahead of the audit.
fn read_ledger(reader: LedgerReader, range: std::ops::Range<u64>) -> Receiver<Chunk> {
    let (sender, receiver) = sync_channel(2);
    std::thread::spawn(move || {
        let mut entries = reader.entries(range);
        loop {
            let mut hashes = Vec::with_capacity(AUDIT_CHUNK_ENTRIES);
            let mut chunk = Vec::with_capacity(AUDIT_CHUNK_ENTRIES);
            let mut failure = None;
            while chunk.len() < AUDIT_CHUNK_ENTRIES {
                match entries.next_with_hash() {
                    Ok(Some((hash, entry))) => {
                        hashes.push(hash);
                        chunk.push(entry);
                    }
                    Ok(None) => break,
                    Err(err) => {
                        failure = Some(Failure::from_ledger(&err));
                        break;
                    }
                }
            }
            let done = chunk.len() < AUDIT_CHUNK_ENTRIES || failure.is_some();
            if !chunk.is_empty() && sender.send(Ok((hashes, chunk))).is_err() {
                return;
            }
            if let Some(failure) = failure {
                let _ = sender.send(Err(failure));
            }
            if done {
                return;
            }
        }
    });
    receiver
}

/// Audits an export file: every line canonical, and the entries as [`audit_ledger`] checks
/// them (roots and states only for an export from seq 0; an export carries no tree head).
pub fn audit_export(path: &Path, progress: Progress<'_>) -> Result<AuditReport, AuditError> {
    let started = Instant::now();
    let open = || {
        std::fs::File::open(path).map_err(|source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    let file = open()?;
    let lines_total = BufReader::new(open()?).lines().count() as u64;
    let receiver = read_export(file);
    // The first line tells where the export starts.
    let auditor = Auditor {
        next_seq: u64::MAX,
        prev: None,
        replay: Some(Replay::genesis()),
        checks: Checks {
            ledger_key: None,
            rotations: VecDeque::new(),
            heads: VecDeque::new(),
            head_roots: Default::default(),
            heads_before_start: 0,
            snapshots: None,
        },
        report: AuditReport {
            source: path.display().to_string(),
            ..AuditReport::default()
        },
    };
    Ok(auditor.run(receiver, lines_total, started, progress))
}

/// Parses and checks the lines of an export on a thread of their own (each chunk's lines on
/// every core), a chunk ahead of the audit.
fn read_export(file: std::fs::File) -> Receiver<Chunk> {
    let (sender, receiver) = sync_channel::<Chunk>(2);
    std::thread::spawn(move || {
        let mut lines = BufReader::new(file).lines().enumerate();
        loop {
            let mut batch = Vec::with_capacity(AUDIT_CHUNK_ENTRIES);
            for (number, line) in lines.by_ref().take(AUDIT_CHUNK_ENTRIES) {
                batch.push((number + 1, line));
            }
            if batch.is_empty() {
                return;
            }
            let parsed: Result<Vec<(Hash32, Entry)>, Failure> = batch
                .into_par_iter()
                .map(|(number, line)| check_line(number, line))
                .collect();
            let chunk = parsed.map(|pairs| pairs.into_iter().unzip());
            let failed = chunk.is_err();
            if sender.send(chunk).is_err() || failed {
                return;
            }
        }
    });
    receiver
}

/// One export line: JSON of the right shape, fields that agree with the entry bytes, and the
/// exact bytes `fabric export` writes for that entry (so no change to a line goes unseen).
fn check_line(number: usize, line: std::io::Result<String>) -> Result<(Hash32, Entry), Failure> {
    let fail = |seq: Option<u64>, detail: String| Failure {
        seq,
        what: "export",
        detail: format!("line {number}: {detail}"),
    };
    let line = line.map_err(|err| fail(None, err.to_string()))?;
    let parsed = ExportLine::parse(&line).map_err(|err| fail(None, err.to_string()))?;
    let entry = parsed
        .check_fields()
        .map_err(|err| fail(Some(parsed.seq), err.to_string()))?;
    let canonical = entry
        .export_line()
        .map_err(|err| fail(Some(entry.seq), err.to_string()))?;
    if canonical != line {
        return Err(fail(
            Some(entry.seq),
            "the line is not the canonical export of its entry".to_owned(),
        ));
    }
    Ok((entry.hash(), entry))
}

/// What the audit checks beside the replay: checkpoints, snapshots and tree heads.
struct Checks {
    /// The ledger key in force, which checkpoints and tree heads must be signed by, when
    /// known: the trusted genesis key followed through each ledger rotation replayed.
    ledger_key: Option<PublicKey>,
    /// The ledger-key rotations the ledger recorded (its index of them) still to reach: each
    /// must be met by the rotation in the log at its seq, and none may be missing.
    rotations: VecDeque<(u64, PublicKey)>,
    /// Signed tree heads still to reach, by size.
    heads: VecDeque<SignedTreeHead>,
    /// The root of each size a signed tree head verified at: a federation receipt's own head
    /// must be one of them.
    head_roots: std::collections::HashMap<u64, Hash32>,
    /// The largest size of a head before the replay's start (unchecked, so unknown).
    heads_before_start: u64,
    /// Where the checkpoints' snapshots are stored.
    snapshots: Option<LedgerReader>,
}

/// The replay and its checks.
struct Auditor {
    /// The seq the next entry must have (`u64::MAX`: take the first one's).
    next_seq: u64,
    /// The hash the next entry's `prev` must be (`None`: unknown, the first of a cut export).
    prev: Option<Hash32>,
    /// The fold (`None`: a cut export, whose state and roots cannot be known).
    replay: Option<Replay>,
    checks: Checks,
    report: AuditReport,
}

impl Auditor {
    fn run(
        mut self,
        chunks: Receiver<Chunk>,
        expected: u64,
        started: Instant,
        progress: Progress<'_>,
    ) -> AuditReport {
        let mut cache = KeyCache::new(AUDIT_KEY_CACHE_AUTHORS);
        let mut failure = None;
        for chunk in chunks {
            let verified = chunk.and_then(|(hashes, entries)| {
                if self.next_seq == u64::MAX {
                    self.start_export_at(&entries[0]);
                }
                self.chunk(&hashes, &entries, &mut cache)
            });
            if let Err(found) = verified {
                failure = Some(found);
                break;
            }
            progress(self.report.events_verified, expected);
        }
        if failure.is_none() {
            failure = self.finish_checks(expected);
        }
        self.finish(failure, started)
    }

    /// Verifies the signatures of a chunk on every core while this thread replays it; the
    /// earliest failure of either, by seq.
    fn chunk(
        &mut self,
        hashes: &[Hash32],
        entries: &[Entry],
        cache: &mut KeyCache,
    ) -> Result<(), Failure> {
        let first_seq = self.next_seq;
        let (refusals, replayed) = std::thread::scope(|scope| {
            let verifying = scope.spawn(move || verify_batch(entries, cache));
            let replayed = self.replay_chunk(hashes, entries);
            (verifying.join(), replayed)
        });
        let signature_failure = match refusals {
            Ok(refusals) => refusals.first().map(|refusal| {
                let seq = first_seq + refusal.index as u64;
                match &refusal.reason {
                    RefusalReason::Signature(err) => Failure::at(seq, "signature", err.to_string()),
                    RefusalReason::Malformed(err) => Failure::at(
                        seq,
                        "storage",
                        format!("entry {seq} is not a canonical event: {err}"),
                    ),
                }
            }),
            Err(_) => Some(Failure::at(
                first_seq,
                "signature",
                "signature verification panicked",
            )),
        };
        let earliest = [signature_failure, replayed.err()]
            .into_iter()
            .flatten()
            .min_by_key(|failure| failure.seq.unwrap_or(u64::MAX));
        if let Some(found) = earliest {
            let verified_to = found.seq.unwrap_or(first_seq);
            self.report.events_verified += verified_to.saturating_sub(first_seq);
            return Err(found);
        }
        self.report.events_verified += entries.len() as u64;
        Ok(())
    }

    /// The report, once the entries are done.
    fn finish(mut self, failure: Option<Failure>, started: Instant) -> AuditReport {
        let elapsed = started.elapsed();
        self.report.ok = failure.is_none();
        self.report.failure = failure;
        self.report.elapsed_ms = elapsed.as_millis() as u64;
        self.report.events_per_s = self.report.events_verified as f64
            / elapsed.max(Duration::from_micros(1)).as_secs_f64();
        match &self.replay {
            Some(replay) => {
                self.report.merkle_root = replay.tree().root().to_hex();
                self.report.state_hash = replay.state().state_hash().to_hex();
                self.report.anomalies = replay.state().anomalies();
            }
            None => {
                self.report.merkle_root = "unknown (a cut export)".to_owned();
                self.report.state_hash = "unknown (a cut export)".to_owned();
                self.report.anomalies = 0;
            }
        }
        self.report
    }

    /// An export may be cut (`fabric export --from`): it starts at its first line's seq, and
    /// only an export from genesis can be replayed into states and roots.
    fn start_export_at(&mut self, first: &Entry) {
        self.next_seq = first.seq;
        self.report.first_seq = first.seq;
        if first.seq == 0 {
            self.prev = Some(Hash32::default());
        } else {
            self.replay = None;
            self.report.notes.push(format!(
                "the export starts at seq {}: lines, links and signatures were checked, roots \
                 and states need an export from seq 0",
                first.seq
            ));
        }
    }

    /// Checks links and decoding, folds, and checks checkpoints and tree heads of a chunk, in
    /// order.
    fn replay_chunk(&mut self, hashes: &[Hash32], entries: &[Entry]) -> Result<(), Failure> {
        for (hash, entry) in hashes.iter().zip(entries) {
            let seq = entry.seq;
            self.check_link(entry)
                .map_err(|e| Failure::from_replay(&e))?;
            let event = Replay::decode(entry).map_err(|e| Failure::from_replay(&e))?;
            if let Some(replay) = &mut self.replay {
                if let Body::Checkpoint(checkpoint) = &event.body {
                    let (root, snapshot_hash) =
                        self.checks
                            .checkpoint(seq, &entry.author, checkpoint, replay)?;
                    self.report.checkpoints_verified += 1;
                    self.report.snapshots_verified +=
                        self.checks.stored_snapshot(seq, root, snapshot_hash)?;
                }
                if let Body::FederationReceipt(receipt) = &event.body {
                    self.checks.receipt(seq, &entry.author, receipt)?;
                }
                // Each stored event must be one the ledger could admit: the authority table,
                // owner approvals, nonces, and a fit with the state.
                replay
                    .fold(*hash, entry, &event, ())
                    .map_err(|e| Failure::from_replay(&e))?;
                if let Some(key) = event.ledger_rotation() {
                    self.checks.rotated(seq, key)?;
                }
                // The genesis fold admitted says where the fabric's keys come from.
                if let Body::FabricGenesis(genesis) = &event.body {
                    self.report.key_origin = Some(genesis.key_origin);
                }
                self.report.tree_heads_verified += self.checks.heads(seq, replay.tree())?;
            }
            self.prev = Some(*hash);
            self.next_seq = seq + 1;
        }
        Ok(())
    }

    /// The entry's seq is the next one and its `prev` the hash of the one before (when known).
    fn check_link(&self, entry: &Entry) -> Result<(), ReplayError> {
        if entry.seq != self.next_seq {
            return Err(ReplayError::Gap {
                expected: self.next_seq,
                found: entry.seq,
            });
        }
        if self.prev.is_some_and(|prev| prev != entry.prev) {
            return Err(ReplayError::Link { seq: entry.seq });
        }
        Ok(())
    }

    /// After the last chunk: every entry was seen and the last head was reached.
    fn finish_checks(&mut self, expected: u64) -> Option<Failure> {
        let first = self.report.first_seq;
        if self.report.events_verified != expected {
            return Some(Failure::at(
                first + self.report.events_verified,
                "storage",
                format!(
                    "{} entries were expected, {} were read",
                    expected, self.report.events_verified
                ),
            ));
        }
        if let Some((seq, key)) = self.checks.rotations.front() {
            return Some(Failure::at(
                *seq,
                "storage",
                format!("the ledger records a rotation to {key} at seq {seq} that the log does not hold"),
            ));
        }
        if let Some(head) = self.checks.heads.front() {
            let size = self
                .replay
                .as_ref()
                .map_or(self.next_seq, |replay| replay.tree().size());
            return Some(Failure {
                seq: None,
                what: "root",
                detail: format!(
                    "a signed tree head at size {} is past the end of the log ({size} entries)",
                    head.tree_size
                ),
            });
        }
        if self.checks.ledger_key.is_none() && self.replay.is_some() {
            self.report.notes.push(
                "an export carries no signed tree head: compare the root above with one \
                 (`fabric proof`) to tie it to the ledger key"
                    .to_owned(),
            );
        }
        None
    }
}

impl Checks {
    /// A ledger rotation at `seq` was replayed: the key in force is `key` from the next seq
    /// on, and the ledger's own record of the rotation must say the same.
    fn rotated(&mut self, seq: u64, key: PublicKey) -> Result<(), Failure> {
        if self.ledger_key.is_none() {
            return Ok(());
        }
        self.ledger_key = Some(key);
        match self.rotations.pop_front() {
            Some(recorded) if recorded == (seq, key) => Ok(()),
            recorded => Err(Failure::at(
                seq,
                "storage",
                format!(
                    "entry {seq} rotates the ledger key to {key}; the ledger's record of \
                     rotations says {}",
                    recorded.map_or("nothing".to_owned(), |(at, to)| format!("{to} at seq {at}"))
                ),
            )),
        }
    }

    /// Checks a checkpoint against the replay before it: signed by the ledger key, at its
    /// size, with the replay's root, state hash and snapshot hash. Returns the root and the
    /// snapshot hash.
    fn checkpoint(
        &self,
        seq: u64,
        author: &PublicKey,
        checkpoint: &fabric_events::Checkpoint,
        replay: &Replay,
    ) -> Result<(Hash32, Hash32), Failure> {
        if self.ledger_key.is_some_and(|key| key != *author) {
            return Err(Failure::at(
                seq,
                "signature",
                format!("checkpoint {seq} is not signed by the ledger key"),
            ));
        }
        let verified = verify_checkpoint(seq, checkpoint, replay)?;
        Ok((verified.root, verified.snapshot_hash))
    }

    /// For a stored log, the snapshot stored for the checkpoint at `seq` against the replay's
    /// root and snapshot hash; returns how many snapshots verified (0 without a store).
    fn stored_snapshot(
        &self,
        seq: u64,
        root: Hash32,
        snapshot_hash: Hash32,
    ) -> Result<u64, Failure> {
        let Some(reader) = &self.snapshots else {
            return Ok(0);
        };
        let stored = reader
            .snapshot(seq)
            .map_err(|err| Failure::at(seq, "storage", format!("checkpoint {seq}: {err}")))?;
        if stored.hash != snapshot_hash || stored.frontier.root() != root {
            return Err(Failure::at(
                seq,
                "storage",
                format!("the snapshot stored for checkpoint {seq} is not the replayed state"),
            ));
        }
        Ok(1)
    }

    /// Checks every signed tree head the tree has now reached; returns how many verified.
    fn heads(&mut self, seq: u64, tree: &Frontier) -> Result<u64, Failure> {
        let mut verified = 0;
        while let Some(head) = self.heads.front() {
            if head.tree_size > tree.size() {
                break;
            }
            let head = *head;
            self.heads.pop_front();
            if head.tree_size < tree.size() {
                // Before the start of a replay from a checkpoint.
                self.heads_before_start = self.heads_before_start.max(head.tree_size);
                continue;
            }
            if let Some(key) = &self.ledger_key {
                head.verify(key).map_err(|err| {
                    Failure::at(
                        seq,
                        "signature",
                        format!("signed tree head at size {}: {err}", head.tree_size),
                    )
                })?;
            }
            let root = tree.root();
            if head.root != root {
                return Err(Failure::at(
                    seq,
                    "root",
                    format!(
                        "the signed tree head at size {} says root {}, the entries give {root}",
                        head.tree_size, head.root
                    ),
                ));
            }
            self.head_roots.insert(head.tree_size, root);
            verified += 1;
        }
        Ok(verified)
    }

    /// A federation receipt's own head (the side its author, the ledger, names) must be a
    /// head of this log: the root a verified signed tree head has at that size. Without
    /// stored heads (an export) there is nothing to compare with.
    fn receipt(
        &self,
        seq: u64,
        author: &PublicKey,
        receipt: &fabric_events::FederationReceipt,
    ) -> Result<(), Failure> {
        if self.ledger_key.is_none() {
            return Ok(());
        }
        // A receipt that names its author on neither side is the fold's to refuse.
        let Some((own, _)) = receipt.sides_of_key(author) else {
            return Ok(());
        };
        match self.head_roots.get(&own.tree_size) {
            Some(root) if *root == own.root => Ok(()),
            Some(root) => Err(Failure::at(
                seq,
                "root",
                format!(
                    "federation receipt {seq} says this log's root at size {} is {}; its signed tree head \
                     says {root}",
                    own.tree_size, own.root
                ),
            )),
            // Before the replay's start: its root was not computed here.
            None if own.tree_size <= self.heads_before_start => Ok(()),
            None => Err(Failure::at(
                seq,
                "root",
                format!(
                    "federation receipt {seq} names this log's head of size {}, which no \
                     signed tree head before it has",
                    own.tree_size
                ),
            )),
        }
    }
}

/// A checkpoint that matched the replay before it.
pub struct VerifiedCheckpoint {
    /// The Merkle root of the entries before it.
    pub root: Hash32,
    /// The hash of the state's snapshot.
    pub snapshot_hash: Hash32,
    /// The snapshot (docs/FORMAT.md §9) of the state after the entries before it.
    pub snapshot: Vec<u8>,
}

/// Checks the checkpoint at `seq` against `replay`, which has folded the entries before it:
/// it covers them (`tree_size` = `seq`), names their root, and the state's hash and snapshot
/// hash. Its author is the authority table's to judge (the replay's fold).
pub fn verify_checkpoint(
    seq: u64,
    checkpoint: &fabric_events::Checkpoint,
    replay: &Replay,
) -> Result<VerifiedCheckpoint, Failure> {
    if checkpoint.tree_size != seq {
        return Err(Failure::at(
            seq,
            "root",
            format!(
                "checkpoint {seq} covers {} entries, not the {seq} before it",
                checkpoint.tree_size
            ),
        ));
    }
    let root = replay.tree().root();
    if checkpoint.merkle_root != root {
        return Err(Failure::at(
            seq,
            "root",
            format!(
                "checkpoint {seq} says root {}, the entries before it give {root}",
                checkpoint.merkle_root
            ),
        ));
    }
    let snapshot = replay.state().snapshot_bytes();
    let snapshot_hash = check_state(seq, checkpoint, &snapshot)?;
    Ok(VerifiedCheckpoint {
        root,
        snapshot_hash,
        snapshot,
    })
}

/// The replayed state's snapshot against a checkpoint's state and snapshot hashes; returns
/// the snapshot's hash.
fn check_state(
    seq: u64,
    checkpoint: &fabric_events::Checkpoint,
    snapshot: &[u8],
) -> Result<Hash32, Failure> {
    let state_hash = state_hash_of(snapshot);
    if checkpoint.state_hash != state_hash {
        return Err(Failure::at(
            seq,
            "state",
            format!(
                "checkpoint {seq} says state hash {}, the replayed state has {state_hash}",
                checkpoint.state_hash
            ),
        ));
    }
    let snapshot_hash = Hash32(*blake3::hash(snapshot).as_bytes());
    if checkpoint.snapshot_hash != snapshot_hash {
        return Err(Failure::at(
            seq,
            "state",
            format!(
                "checkpoint {seq} says snapshot hash {}, the replayed state's is {snapshot_hash}",
                checkpoint.snapshot_hash
            ),
        ));
    }
    Ok(snapshot_hash)
}
