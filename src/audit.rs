//! `fabric audit`: replays a whole history and checks everything it commits to.
//!
//! One pass over the entries, in chunks. Each chunk's signatures are batch-verified on every
//! core while this thread checks, entry by entry: seqs and `prev` links, that the entry
//! decodes, the Merkle root and signature of every signed tree head as the tree reaches its
//! size, and at every `checkpoint` its Merkle root, the state hash of the projections rebuilt
//! from scratch, and the snapshot stored for it. A third thread reads (and hash-checks) the
//! next chunk meanwhile. The first failure, by seq, ends the audit.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::Context;
use fabric_events::{Body, Entry, ExportLine, Hash32, PublicKey};
use fabric_ledger::{
    verify_batch, Frontier, KeyCache, Ledger, LedgerError, LedgerReader, RefusalReason,
    SignedTreeHead,
};
use fabric_projections::state::state_hash_of;
use fabric_projections::State;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

/// Entries per chunk: large enough for batch verification to use every core, small enough
/// that reading the next chunk overlaps verifying this one.
pub const AUDIT_CHUNK_ENTRIES: usize = 8_192;
/// Authors whose decompressed keys the audit keeps.
const AUDIT_KEY_CACHE_AUTHORS: usize = 1 << 16;

/// Arguments of `fabric audit`.
#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// The data folder of a run
    #[arg(long, value_name = "DIR", default_value = "data")]
    data: PathBuf,
    /// Audit an export file (`fabric export`, a run's events.ndjson) instead of a data folder
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    /// Start at the newest checkpoint at or before SEQ that verifies, instead of genesis
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    from: u64,
    /// Print the result as one JSON object on stdout
    #[arg(long)]
    json: bool,
    /// Also re-run GPU receipts (and attestation mismatches) on the kernels' CPU references
    /// and compare their output hashes (data folders only)
    #[arg(long)]
    reexecute: bool,
    /// With --reexecute: the share (0 to 1) of GPU jobs to re-run, chosen by job id
    #[arg(
        long,
        value_name = "FRACTION",
        default_value_t = 1.0,
        requires = "reexecute"
    )]
    sample: f64,
    /// Also hash every entry with the BLAKE3 kernel on the GPU adapter and compare with the
    /// chain (data folders only; FABRIC_GPU picks the adapter)
    #[arg(long)]
    gpu: bool,
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
    fn at(seq: u64, what: &'static str, detail: impl Into<String>) -> Self {
        Self {
            seq: Some(seq),
            what,
            detail: detail.into(),
        }
    }

    fn from_ledger(error: &LedgerError) -> Self {
        let (seq, what) = match error {
            LedgerError::BrokenChain { seq } => (Some(*seq), "chain"),
            LedgerError::CorruptEntry { seq, .. } | LedgerError::Missing { seq } => {
                (Some(*seq), "storage")
            }
            LedgerError::CorruptBlock { first_seq, .. } => (Some(*first_seq), "storage"),
            _ => (None, "storage"),
        };
        Self {
            seq,
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
    pub root: String,
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
}

pub fn run(args: &AuditArgs) -> anyhow::Result<std::process::ExitCode> {
    let report = match &args.export {
        Some(path) => audit_export(path)?,
        None => audit_data(args)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    let summary = format!(
        "{} events verified from seq {} in {:.1} s ({:.0} events/s); {} checkpoints, {} snapshots, {} signed tree heads\nroot        {}\nstate hash  {}",
        report.events_verified,
        report.first_seq,
        report.elapsed_ms as f64 / 1e3,
        report.events_per_s,
        report.checkpoints_verified,
        report.snapshots_verified,
        report.tree_heads_verified,
        report.root,
        report.state_hash
    );
    let mut text = summary;
    if report.reexecuted > 0 {
        text.push_str(&format!(
            "\nre-executed {} GPU jobs on the CPU references",
            report.reexecuted
        ));
    }
    if let Some((hashed, adapter)) = &report.gpu_hashed {
        text.push_str(&format!(
            "\nhashed {hashed} entries with the BLAKE3 kernel on {adapter}"
        ));
    }
    for note in &report.notes {
        text.push_str(&format!("\nnote: {note}"));
    }
    match &report.failure {
        None => text.push_str(&format!("\naudit passed: {}", report.source)),
        Some(failure) => text.push_str(&format!(
            "\naudit FAILED at {}: {} ({})",
            failure
                .seq
                .map_or_else(|| "open".to_owned(), |seq| format!("seq {seq}")),
            failure.what,
            failure.detail
        )),
    }
    if args.json || report.failure.is_some() {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    Ok(if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// A chunk of entries with their hashes, or why reading stopped.
type Chunk = Result<(Vec<Hash32>, Vec<Entry>), Failure>;

fn audit_data(args: &AuditArgs) -> anyhow::Result<AuditReport> {
    let source = args.data.display().to_string();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.sample),
        "--sample {} is not a share between 0 and 1",
        args.sample
    );
    match crate::run::open_run(&args.data) {
        Ok((run_file, ledger)) => {
            let mut report = audit_ledger(&ledger, source, args.from)?;
            if report.ok && (args.reexecute || args.gpu) {
                let started = Instant::now();
                if let Err(failure) = gpu_checks(&ledger, &run_file, args, &mut report) {
                    report.ok = false;
                    report.failure = Some(failure);
                }
                report.elapsed_ms += started.elapsed().as_millis() as u64;
            }
            Ok(report)
        }
        Err(err) => Ok(AuditReport {
            source,
            failure: Some(Failure {
                seq: None,
                what: "storage",
                detail: format!("{err:#}"),
            }),
            ..AuditReport::default()
        }),
    }
}

/// Audits an open ledger from genesis, or from the newest checkpoint at or before `from`
/// that verifies.
pub fn audit_ledger(ledger: &Ledger, source: String, from: u64) -> anyhow::Result<AuditReport> {
    let started = Instant::now();
    let reader = ledger.reader();
    let ledger_key = ledger.ledger_key();
    let size = ledger.len();
    anyhow::ensure!(
        from < size.max(1),
        "--from {from} is past the end of the log ({size} entries)"
    );
    let mut notes = Vec::new();
    let mut start = (0, State::new(), Frontier::new());
    if from > 0 {
        let sizes = reader
            .snapshot_sizes()
            .context("could not list snapshots")?;
        for tree_size in sizes.into_iter().rev().filter(|size| *size <= from) {
            match fabric_actors::load_checkpoint(&reader, &ledger_key, tree_size) {
                Ok(loaded) => {
                    start = (tree_size, loaded.state, loaded.frontier);
                    break;
                }
                Err(why) => notes.push(format!(
                    "skipped the checkpoint at tree size {tree_size}: {why}"
                )),
            }
        }
        if start.0 == 0 {
            notes.push(format!(
                "no checkpoint at or before seq {from} verifies: audited from genesis"
            ));
        }
    }
    let (first_seq, state, frontier) = start;
    let heads: VecDeque<SignedTreeHead> = match reader.tree_heads() {
        Ok(heads) => heads
            .into_iter()
            .filter(|head| head.tree_size >= first_seq)
            .collect(),
        Err(err) => {
            return Ok(AuditReport {
                source,
                first_seq,
                failure: Some(Failure::from_ledger(&err)),
                ..AuditReport::default()
            })
        }
    };
    let entries = read_ledger(reader.clone(), first_seq..size);
    let auditor = Auditor {
        state,
        frontier,
        next_seq: first_seq,
        // From a checkpoint, the frontier vouches for the entries before it.
        prev: (first_seq == 0).then(Hash32::default),
        check_replay: true,
        ledger_key: Some(ledger_key),
        heads,
        snapshots: Some(reader),
        report: AuditReport {
            source,
            first_seq,
            notes,
            ..AuditReport::default()
        },
    };
    Ok(auditor.run(entries, size - first_seq, started))
}

/// The GPU checks of an audit that passed: `--reexecute` re-runs sampled GPU receipts (and
/// every attestation mismatch's job) on the CPU references, regenerating each input from the
/// run's seed and checking it against the receipt's `input_hash`; `--gpu` hashes every entry
/// with the BLAKE3 kernel and compares with the chain's hashes.
fn gpu_checks(
    ledger: &Ledger,
    run_file: &crate::run::RunFile,
    args: &AuditArgs,
    report: &mut AuditReport,
) -> Result<(), Failure> {
    use fabric_gpu_kernels::jobs::output_hash;
    use fabric_gpu_kernels::Engine;
    let spec = run_file.spec();
    let workload = fabric_sim::workload::Workload::new(&spec.world, spec.seed, spec.jobs);
    let engine = if args.gpu {
        Some(Engine::from_env().map_err(|err| Failure {
            seq: None,
            what: "gpu",
            detail: err.to_string(),
        })?)
    } else {
        None
    };
    let sample_ppm = (args.sample * 1e6).round() as u64;
    let sampled = |job: u64| {
        let draw = blake3::derive_key("fabric 2026-12 audit sample", &job.to_le_bytes());
        u64::from_le_bytes(draw[..8].try_into().unwrap_or_default()) % 1_000_000 < sample_ppm
    };
    let mut hashed = 0u64;
    let reader = ledger.reader();
    let size = ledger.len();
    let mut start = 0;
    while start < size {
        let end = (start + AUDIT_CHUNK_ENTRIES as u64).min(size);
        let entries: Vec<Entry> = reader
            .entries(start..end)
            .collect::<Result<_, _>>()
            .map_err(|err| Failure::from_ledger(&err))?;
        if let Some(engine) = engine {
            let messages: Vec<Vec<u8>> = entries
                .iter()
                .map(|entry| {
                    let mut message = vec![0u8];
                    message.extend_from_slice(&entry.encode());
                    message
                })
                .collect();
            let views: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            let digests = fabric_gpu_kernels::blake3_batch::hash_batch(engine, &views)
                .map_err(|err| Failure::at(start, "gpu", err.to_string()))?;
            for (entry, digest) in entries.iter().zip(digests) {
                if entry.hash().0 != digest {
                    return Err(Failure::at(
                        entry.seq,
                        "gpu",
                        format!(
                            "the BLAKE3 kernel on {} hashes entry {} differently from the chain",
                            engine.name(),
                            entry.seq
                        ),
                    ));
                }
            }
            hashed += entries.len() as u64;
        }
        if args.reexecute {
            // (seq, job, claimed input hash, the output hash re-execution must give)
            let mut jobs = Vec::new();
            for entry in &entries {
                let event = entry
                    .event()
                    .map_err(|err| Failure::at(entry.seq, "storage", err.to_string()))?;
                match &event.body {
                    Body::JobReceipt(receipt)
                        if receipt.outcome == fabric_events::JobOutcome::Completed
                            && sampled(receipt.job) =>
                    {
                        if let Some(kernel) = &receipt.kernel {
                            jobs.push((
                                entry.seq,
                                receipt.job,
                                kernel.input_hash,
                                receipt.output_hash,
                            ));
                        }
                    }
                    Body::AttestationMismatch(mismatch) => jobs.push((
                        entry.seq,
                        mismatch.job,
                        mismatch.kernel.input_hash,
                        mismatch.expected_output_hash,
                    )),
                    _ => {}
                }
            }
            let results: Vec<Result<(), Failure>> = jobs
                .par_iter()
                .map(|(seq, job, input_hash, expected)| {
                    let (_, input) = workload.job_with_input(*job, 0);
                    let input = input.ok_or_else(|| {
                        Failure::at(*seq, "reexecute", format!("job {job} is not a GPU job of this run's workload"))
                    })?;
                    if input.hash() != input_hash.0 {
                        return Err(Failure::at(
                            *seq,
                            "reexecute",
                            format!("job {job}: the input regenerated from the seed is not the input the receipt names"),
                        ));
                    }
                    let output = input
                        .execute(Engine::Cpu)
                        .map_err(|err| Failure::at(*seq, "reexecute", err.to_string()))?;
                    if output_hash(&output) != expected.0 {
                        return Err(Failure::at(
                            *seq,
                            "reexecute",
                            format!(
                                "job {job}: re-executed on the CPU reference, its output hash is {}, not {expected}",
                                Hash32(output_hash(&output))
                            ),
                        ));
                    }
                    Ok(())
                })
                .collect();
            for result in results {
                result?;
                report.reexecuted += 1;
            }
        }
        start = end;
    }
    if let Some(engine) = engine {
        report.gpu_hashed = Some((hashed, engine.name()));
    }
    Ok(())
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

fn audit_export(path: &std::path::Path) -> anyhow::Result<AuditReport> {
    let started = Instant::now();
    let file = std::fs::File::open(path)
        .with_context(|| format!("could not open the export {}", path.display()))?;
    let lines_total = BufReader::new(
        std::fs::File::open(path)
            .with_context(|| format!("could not open the export {}", path.display()))?,
    )
    .lines()
    .count() as u64;
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
    // The first line tells where the export starts.
    let auditor = Auditor {
        state: State::new(),
        frontier: Frontier::new(),
        next_seq: u64::MAX,
        prev: None,
        check_replay: true,
        ledger_key: None,
        heads: VecDeque::new(),
        snapshots: None,
        report: AuditReport {
            source: path.display().to_string(),
            ..AuditReport::default()
        },
    };
    Ok(auditor.run(receiver, lines_total, started))
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

/// The replay and its checks.
struct Auditor {
    state: State,
    frontier: Frontier,
    /// The seq the next entry must have (`u64::MAX`: take the first one's).
    next_seq: u64,
    /// The hash the next entry's `prev` must be (`None`: unknown, the first of a cut export).
    prev: Option<Hash32>,
    /// Whether roots and states can be checked (the replay started at a known state).
    check_replay: bool,
    /// The ledger key checkpoints and tree heads must be signed by, when known.
    ledger_key: Option<PublicKey>,
    /// Signed tree heads still to reach, by size.
    heads: VecDeque<SignedTreeHead>,
    /// Where the checkpoints' snapshots are stored.
    snapshots: Option<LedgerReader>,
    report: AuditReport,
}

impl Auditor {
    fn run(mut self, chunks: Receiver<Chunk>, expected: u64, started: Instant) -> AuditReport {
        let progress = progress_bar(expected);
        let mut cache = KeyCache::new(AUDIT_KEY_CACHE_AUTHORS);
        let mut failure = None;
        for chunk in chunks {
            let (hashes, entries) = match chunk {
                Ok(chunk) => chunk,
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            };
            if self.next_seq == u64::MAX {
                self.start_export_at(&entries[0]);
            }
            let first_seq = self.next_seq;
            // Signatures on every core while this thread replays the chunk.
            let (refusals, replayed) = std::thread::scope(|scope| {
                let cache = &mut cache;
                let entries = &entries;
                let verifying = scope.spawn(move || verify_batch(entries, cache));
                let replayed = self.replay(&hashes, entries);
                (verifying.join(), replayed)
            });
            let signature_failure = match refusals {
                Ok(refusals) => refusals.first().map(|refusal| {
                    let seq = first_seq + refusal.index as u64;
                    match &refusal.reason {
                        RefusalReason::Signature(err) => {
                            Failure::at(seq, "signature", err.to_string())
                        }
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
                failure = Some(found);
                break;
            }
            self.report.events_verified += entries.len() as u64;
            progress.set_position(self.report.events_verified);
        }
        progress.finish_and_clear();
        if failure.is_none() {
            failure = self.finish_checks(expected);
        }
        let elapsed = started.elapsed();
        self.report.ok = failure.is_none();
        self.report.failure = failure;
        self.report.elapsed_ms = elapsed.as_millis() as u64;
        self.report.events_per_s = self.report.events_verified as f64
            / elapsed.max(Duration::from_micros(1)).as_secs_f64();
        if self.check_replay {
            self.report.root = self.frontier.root().to_hex();
            self.report.state_hash = self.state.state_hash().to_hex();
        } else {
            self.report.root = "unknown (a cut export)".to_owned();
            self.report.state_hash = "unknown (a cut export)".to_owned();
        }
        self.report.anomalies = self.state.anomalies();
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
            self.check_replay = false;
            self.report.notes.push(format!(
                "the export starts at seq {}: lines, links and signatures were checked, roots \
                 and states need an export from seq 0",
                first.seq
            ));
        }
    }

    /// Checks links, decoding, checkpoints and tree heads of a chunk, in order.
    fn replay(&mut self, hashes: &[Hash32], entries: &[Entry]) -> Result<(), Failure> {
        for (hash, entry) in hashes.iter().zip(entries) {
            let seq = entry.seq;
            if seq != self.next_seq {
                return Err(Failure::at(
                    self.next_seq,
                    "chain",
                    format!(
                        "entry {} is missing: the next one says it is seq {seq}",
                        self.next_seq
                    ),
                ));
            }
            if self.prev.is_some_and(|prev| prev != entry.prev) {
                return Err(Failure::at(
                    seq,
                    "chain",
                    format!(
                        "entry {seq}'s prev is not the hash of entry {}",
                        seq.wrapping_sub(1)
                    ),
                ));
            }
            let event = entry.event().map_err(|err| {
                Failure::at(
                    seq,
                    "storage",
                    format!("entry {seq} is not a canonical event: {err}"),
                )
            })?;
            if self.check_replay {
                if let Body::Checkpoint(checkpoint) = &event.body {
                    self.check_checkpoint(seq, &entry.author, checkpoint)?;
                }
                // Each stored event must be one the ledger could admit: the authority table,
                // owner approvals, nonces, and a fit with the state.
                self.state.admit(&entry.author, &event).map_err(|err| {
                    Failure::at(
                        seq,
                        "authority",
                        format!(
                            "entry {seq} ({}) is not admissible: {err}",
                            event.kind().as_str()
                        ),
                    )
                })?;
                self.frontier.push(*hash);
                self.check_heads(seq)?;
            }
            self.prev = Some(*hash);
            self.next_seq = seq + 1;
        }
        Ok(())
    }

    fn check_checkpoint(
        &mut self,
        seq: u64,
        author: &PublicKey,
        checkpoint: &fabric_events::Checkpoint,
    ) -> Result<(), Failure> {
        if self.ledger_key.is_some_and(|key| key != *author) {
            return Err(Failure::at(
                seq,
                "signature",
                format!("checkpoint {seq} is not signed by the ledger key"),
            ));
        }
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
        let root = self.frontier.root();
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
        let snapshot = self.state.snapshot_bytes();
        let state_hash = state_hash_of(&snapshot);
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
        let snapshot_hash = Hash32(*blake3::hash(&snapshot).as_bytes());
        if checkpoint.snapshot_hash != snapshot_hash {
            return Err(Failure::at(
                seq,
                "state",
                format!("checkpoint {seq} says snapshot hash {}, the replayed state's is {snapshot_hash}", checkpoint.snapshot_hash),
            ));
        }
        self.report.checkpoints_verified += 1;
        if let Some(reader) = &self.snapshots {
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
            self.report.snapshots_verified += 1;
        }
        Ok(())
    }

    /// Checks every signed tree head the tree has now reached.
    fn check_heads(&mut self, seq: u64) -> Result<(), Failure> {
        while let Some(head) = self.heads.front() {
            if head.tree_size > self.frontier.size() {
                break;
            }
            let head = *head;
            self.heads.pop_front();
            if head.tree_size < self.frontier.size() {
                // Before the start of a replay from a checkpoint.
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
            let root = self.frontier.root();
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
            self.report.tree_heads_verified += 1;
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
        if let Some(head) = self.heads.front() {
            return Some(Failure {
                seq: None,
                what: "root",
                detail: format!(
                    "a signed tree head at size {} is past the end of the log ({} entries)",
                    head.tree_size,
                    self.frontier.size()
                ),
            });
        }
        if self.ledger_key.is_none() && self.check_replay {
            self.report.notes.push(
                "an export carries no signed tree head: compare the root above with one \
                 (`fabric proof`) to tie it to the ledger key"
                    .to_owned(),
            );
        }
        None
    }
}

fn progress_bar(events: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(events), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(events);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} events verified ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}
