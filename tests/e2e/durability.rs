//! Durability under SIGKILL. The test binary re-executes itself as a child (`appender_child`)
//! that appends batches and reports each acknowledged tree head on stdout; the parent kills it
//! at a random moment, reopens the ledger and checks that everything acknowledged is there, that
//! the log reads back whole and that whatever a torn last batch left was discarded cleanly.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fabric_events::{Entry, Hash32};
use fabric_ledger::{merkle, Ledger};

use crate::support::{heartbeats, ledger_key};

/// Set in the child's environment: the ledger folder it appends to.
const DIR_VAR: &str = "FABRIC_TEST_APPENDER_DIR";
/// Set in the child's environment: the seed of its batch sizes.
const SEED_VAR: &str = "FABRIC_TEST_APPENDER_SEED";
/// Set when running the parent to replay the seed a failure printed.
const PARENT_SEED_VAR: &str = "FABRIC_TEST_DURABILITY_SEED";
/// Kill-and-reopen rounds on the same folder.
const ROUNDS: usize = 4;
/// Largest batch the child appends (blocks hold at most 256 entries, so most batches span
/// several blocks).
const BATCH_MAX: u64 = 1000;
/// How long the parent waits for the child to open the ledger.
const READY_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long a child nobody kills (its parent died) keeps appending: it must not fill the disk.
const CHILD_RUN_MAX: Duration = Duration::from_secs(60);

/// A tiny deterministic generator (Knuth's MMIX LCG), so a failing seed can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// The child: does nothing unless `DIR_VAR` is set (so it passes in ordinary runs); otherwise
/// opens the ledger, prints `ready`, then appends batches of heartbeats until killed, printing
/// `acked <tree_size> <root hex>` after each append has returned.
#[test]
fn appender_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let seed = std::env::var(SEED_VAR)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    let mut rng = Lcg(seed);
    let mut ledger = Ledger::open(&dir, ledger_key()).expect("the child opens the ledger");
    let mut out = std::io::stdout().lock();
    // libtest has printed "test durability::appender_child ... " without a line end.
    writeln!(out, "\nready")
        .and_then(|()| out.flush())
        .expect("the child writes to stdout");
    let started = Instant::now();
    while started.elapsed() < CHILD_RUN_MAX {
        let count = 1 + rng.below(BATCH_MAX) as usize;
        // Nonce = seq, so every event differs from every other in the folder.
        let batch = heartbeats(ledger.len(), count);
        let receipt = ledger.append(&batch).expect("the child appends");
        let head = receipt.tree_head;
        let written = writeln!(out, "acked {} {}", head.tree_size, head.root.to_hex())
            .and_then(|()| out.flush());
        if written.is_err() {
            // The parent is gone.
            return;
        }
    }
}

/// Reads the child's stdout to its end; signals `ready` when the child has opened the ledger
/// and returns the acknowledged (tree size, root) pairs, in order. Other lines (libtest's own)
/// are skipped; a line cut short by the kill (no line end) was never reported, so it is
/// skipped too.
fn read_acks(stdout: ChildStdout, ready: Sender<()>) -> Result<Vec<(u64, Hash32)>, String> {
    let mut reader = BufReader::new(stdout);
    let mut acks = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|err| format!("reading the child's stdout: {err}"))?;
        if read == 0 {
            return Ok(acks);
        }
        if line == "ready\n" {
            // The parent may have stopped waiting; nothing to do then.
            let _ = ready.send(());
            continue;
        }
        let Some(rest) = line.strip_prefix("acked ") else {
            continue;
        };
        let Some(rest) = rest.strip_suffix('\n') else {
            continue;
        };
        let parsed = rest.split_once(' ').and_then(|(size, root)| {
            Some((size.parse::<u64>().ok()?, Hash32::from_hex(root).ok()?))
        });
        acks.push(parsed.ok_or_else(|| format!("malformed ack line {line:?}"))?);
    }
}

/// Spawns the child on `dir`, kills it `delay` after it has opened the ledger and returns what
/// it acknowledged. (Timing from the open rather than the spawn keeps the rounds meaningful on
/// a loaded machine, where starting the process alone may take longer than the shortest delay.)
fn run_child_and_kill(
    dir: &Path,
    child_seed: u64,
    delay: Duration,
    context: &str,
) -> Vec<(u64, Hash32)> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = Command::new(exe)
        .args([
            "durability::appender_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(SEED_VAR, child_seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the child starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (ready_tx, ready_rx) = mpsc::channel();
    let acks = thread::spawn(move || read_acks(stdout, ready_tx));
    let errors = thread::spawn(move || {
        let mut text = String::new();
        // Whatever could be read is enough for a failure message.
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let ready = ready_rx.recv_timeout(READY_WAIT_MAX);
    if ready.is_ok() {
        thread::sleep(delay);
    }
    let exited_early = child.try_wait().expect("polling the child");
    // SIGKILL on Unix: no destructor, no flush, no chance to finish the batch in flight.
    child.kill().expect("killing the child");
    let status = child.wait().expect("reaping the child");
    let acks = acks.join().expect("the stdout reader thread");
    let errors = errors.join().expect("the stderr reader thread");
    assert!(
        ready.is_ok(),
        "{context}: the child did not open the ledger ({status}); stderr:\n{errors}"
    );
    assert!(
        exited_early.is_none(),
        "{context}: the child exited by itself ({status}) before the kill; stderr:\n{errors}"
    );
    acks.unwrap_or_else(|err| panic!("{context}: {err}; stderr:\n{errors}"))
}

/// Reopens the ledger after a kill and checks it against what was acknowledged. Returns the
/// length and the blocks discarded at open.
fn check_reopened(dir: &Path, start_len: u64, acks: &[(u64, Hash32)], context: &str) -> (u64, u64) {
    let ledger = Ledger::open(dir, ledger_key())
        .unwrap_or_else(|err| panic!("{context}: reopening after the kill: {err}"));
    let discarded = ledger.open_report().discarded_blocks;
    let len = ledger.len();
    let key = ledger.ledger_key();
    let reader = ledger.reader();

    // Acks come in order, each past the length the round started from.
    let mut previous = start_len;
    for &(size, _) in acks {
        assert!(
            size > previous,
            "{context}: ack of size {size} after {previous}"
        );
        previous = size;
    }
    if let Some(&(last_size, _)) = acks.last() {
        assert!(
            len >= last_size,
            "{context}: {len} entries after reopening, {last_size} were acknowledged"
        );
    }
    // Every acknowledged tree head is stored, signed, and names the acknowledged root.
    for &(size, root) in acks {
        let head = reader
            .tree_head_at(size)
            .unwrap_or_else(|err| panic!("{context}: reading the tree head at {size}: {err}"))
            .unwrap_or_else(|| panic!("{context}: no tree head at acknowledged size {size}"));
        assert_eq!(
            head.root, root,
            "{context}: root at acknowledged size {size}"
        );
        assert_eq!(
            head.verify(&key),
            Ok(()),
            "{context}: signature of the tree head at {size}"
        );
    }

    // The whole log reads back and chains, and its Merkle root is the head's.
    let entries: Vec<Entry> = ledger
        .entries(0..len)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|err| panic!("{context}: reading entries 0..{len}: {err}"));
    assert_eq!(entries.len() as u64, len, "{context}: entries read back");
    let mut prev = Hash32::default();
    for (seq, entry) in entries.iter().enumerate() {
        assert_eq!(entry.seq, seq as u64, "{context}: seq of entry {seq}");
        assert_eq!(entry.prev, prev, "{context}: link of entry {seq}");
        prev = entry.hash();
    }
    assert_eq!(ledger.last_hash(), prev, "{context}: head's last hash");
    let leaves: Vec<Hash32> = entries.iter().map(Entry::hash).collect();
    assert_eq!(
        merkle::root(&leaves),
        ledger.root(),
        "{context}: root recomputed from the entries"
    );
    if let Some(&(last_size, last_root)) = acks.last() {
        assert_eq!(
            merkle::root(&leaves[..last_size as usize]),
            last_root,
            "{context}: acknowledged root recomputed from the entries"
        );
    }
    let stored = reader
        .tree_head_at(len)
        .unwrap_or_else(|err| panic!("{context}: reading the tree head at {len}: {err}"))
        .unwrap_or_else(|| panic!("{context}: no tree head at the length {len}"));
    assert_eq!(
        stored.root,
        ledger.root(),
        "{context}: stored head at {len}"
    );
    assert_eq!(
        stored.verify(&key),
        Ok(()),
        "{context}: stored head's signature"
    );
    assert_eq!(
        ledger.tree_head().verify(&key),
        Ok(()),
        "{context}: head's signature"
    );
    assert!(
        ledger.get(len).is_err(),
        "{context}: an entry past the head reads back"
    );
    let root = ledger.root();
    // Both hold the sled folder (and its lock) open.
    drop(reader);
    drop(ledger);

    // The repair was done at the first open, durably: a second open finds nothing to discard.
    let again = Ledger::open(dir, ledger_key())
        .unwrap_or_else(|err| panic!("{context}: second reopen: {err}"));
    assert_eq!(
        again.open_report().discarded_blocks,
        0,
        "{context}: blocks discarded again at the second open"
    );
    assert_eq!(again.len(), len, "{context}: length at the second open");
    assert_eq!(again.root(), root, "{context}: root at the second open");
    (len, discarded)
}

#[test]
fn acknowledged_batches_survive_sigkill_and_a_torn_batch_is_discarded() {
    let seed = std::env::var(PARENT_SEED_VAR)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("the clock is past 1970")
                .as_nanos() as u64
        });
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut len = 0;
    let mut rounds_with_acks = 0;
    let mut summary = Vec::new();
    for round in 0..ROUNDS {
        let context = format!("seed {seed} ({PARENT_SEED_VAR} replays it), round {round}");
        let child_seed = rng.next();
        let delay = Duration::from_millis(100 + rng.below(501));
        let acks = run_child_and_kill(dir.path(), child_seed, delay, &context);
        let (new_len, discarded) = check_reopened(dir.path(), len, &acks, &context);
        if !acks.is_empty() {
            rounds_with_acks += 1;
        }
        summary.push(format!(
            "round {round}: killed {} ms after the open, {} acks, last acked size {}, length after reopen {new_len}, discarded blocks {discarded}",
            delay.as_millis(),
            acks.len(),
            acks.last().map_or(0, |&(size, _)| size),
        ));
        len = new_len;
    }
    println!("durability seed {seed}:\n{}", summary.join("\n"));
    assert!(
        rounds_with_acks >= 3,
        "seed {seed}: only {rounds_with_acks} of {ROUNDS} rounds acknowledged anything before the kill:\n{}",
        summary.join("\n")
    );
}
