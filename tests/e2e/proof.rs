//! `fabric proof` and `fabric verify-proof`: inclusion and consistency proofs of a run's log
//! round-trip, and every kind of tampering is refused with an error naming its cause.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use fabric_events::{Hash32, PublicKey};
use fabric_ledger::merkle::verify_consistency;
use fabric_ledger::{Ledger, LedgerError};
use fabric_sim::sim_ledger_key;
use serde_json::Value;

use crate::support::{fabric, heartbeats, ledger_key, small_run, stderr, stdout};

const SEED: u64 = 1;

/// One small run shared by the tests that are running at the same time; the last one to
/// finish removes it.
struct Fixture {
    dir: tempfile::TempDir,
    /// Tree sizes with a stored signed tree head, ascending (0 included).
    head_sizes: Vec<u64>,
    /// The ledger's public key, hex.
    ledger_key: String,
    /// `fabric proof` opens the ledger, which sled locks: one at a time.
    ledger_lock: Mutex<()>,
}

static FIXTURE: Mutex<Weak<Fixture>> = Mutex::new(Weak::new());

fn fixture() -> Arc<Fixture> {
    let mut slot = FIXTURE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(fixture) = slot.upgrade() {
        return fixture;
    }
    let fixture = Arc::new(Fixture::create());
    *slot = Arc::downgrade(&fixture);
    fixture
}

impl Fixture {
    fn create() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = small_run(dir.path(), SEED, 300);
        let ledger = Ledger::open(data.join("ledger"), sim_ledger_key(SEED)).expect("opens");
        let head_sizes: Vec<u64> = ledger
            .reader()
            .tree_heads()
            .expect("tree heads read")
            .iter()
            .map(|head| head.tree_size)
            .collect();
        assert!(head_sizes.len() >= 4, "too few appends: {head_sizes:?}");
        assert_eq!(head_sizes.last(), Some(&ledger.len()));
        let ledger_key = ledger.ledger_key().to_hex();
        Self {
            dir,
            head_sizes,
            ledger_key,
            ledger_lock: Mutex::new(()),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn size(&self) -> u64 {
        *self.head_sizes.last().expect("a head")
    }

    /// A stored head size near the middle of the log, and a small one (both above 1).
    fn middle_and_small_sizes(&self) -> (u64, u64) {
        let sizes: Vec<u64> = self
            .head_sizes
            .iter()
            .copied()
            .filter(|&size| size > 1)
            .collect();
        let middle = sizes[sizes.len() / 2];
        let small = sizes[0];
        assert!(small < middle && middle < self.size(), "{sizes:?}");
        (middle, small)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.ledger_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `fabric proof --data DATA ARGS...`.
    fn proof_output(&self, args: &[&str]) -> Output {
        let data = self.data();
        let mut all = vec!["proof", "--data", data.to_str().expect("utf-8")];
        all.extend_from_slice(args);
        let _guard = self.lock();
        fabric(&all)
    }

    /// `fabric proof ARGS...`, which must succeed: the proof's JSON text.
    fn proof(&self, args: &[&str]) -> String {
        let output = self.proof_output(args);
        assert!(
            output.status.success(),
            "fabric proof {args:?}: {}",
            stderr(&output)
        );
        stdout(&output)
    }

    fn inclusion(&self, seq: u64, size: Option<u64>) -> String {
        let seq = seq.to_string();
        match size {
            Some(size) => self.proof(&["--seq", &seq, "--size", &size.to_string()]),
            None => self.proof(&["--seq", &seq]),
        }
    }

    fn consistency(&self, old: u64, new: u64) -> String {
        self.proof(&["--consistency", &old.to_string(), &new.to_string()])
    }

    /// Opens the run's ledger (under the lock) for `read`.
    fn with_ledger<T>(&self, read: impl FnOnce(&Ledger) -> T) -> T {
        let _guard = self.lock();
        let ledger = Ledger::open(self.data().join("ledger"), sim_ledger_key(SEED)).expect("opens");
        read(&ledger)
    }
}

/// Writes `text` to a file of its own and runs `fabric verify-proof` on it.
fn verify_text(text: &str, ledger_key: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("proof.json");
    std::fs::write(&path, text).expect("written");
    verify_file(&path, ledger_key)
}

fn verify_file(path: &Path, ledger_key: Option<&str>) -> Output {
    let mut args = vec!["verify-proof", "--proof", path.to_str().expect("utf-8")];
    if let Some(key) = ledger_key {
        args.extend(["--ledger-key", key]);
    }
    fabric(&args)
}

fn assert_verifies(text: &str, ledger_key: &str, expected_ok: &str) {
    let output = verify_text(text, Some(ledger_key));
    assert!(output.status.success(), "{}\n{text}", stderr(&output));
    let out = stdout(&output);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with(expected_ok), "{out}");
    assert!(
        out.trim_end().ends_with(&format!("signed by {ledger_key}")),
        "{out}"
    );
    assert!(stderr(&output).is_empty(), "{}", stderr(&output));
}

fn assert_refused(text: &str, ledger_key: Option<&str>, cause: &str, case: &str) {
    let output = verify_text(text, ledger_key);
    assert!(
        !output.status.success(),
        "{case}: a tampered proof verified:\n{text}"
    );
    let err = stderr(&output);
    assert!(
        err.contains(cause),
        "{case}: the error does not name {cause:?}: {err}"
    );
    assert!(stdout(&output).is_empty(), "{case}: {}", stdout(&output));
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("a proof is JSON")
}

fn render(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("serialises")
}

/// Flips the lowest bit of the first hex digit of a hash (or signature) string.
fn damage_hex(value: &mut Value) {
    let text = value.as_str().expect("a hex string");
    let mut bytes = hex::decode(text).expect("hex");
    bytes[0] ^= 1;
    *value = Value::String(hex::encode(bytes));
}

fn number(value: &Value) -> u64 {
    value.as_u64().expect("a number")
}

/// The document's keys in order, at the top level and inside `nested`.
fn keys_in_order(text: &str, keys: &[&str]) {
    let mut from = 0;
    for key in keys {
        let needle = format!("\"{key}\":");
        let at = text[from..]
            .find(&needle)
            .unwrap_or_else(|| panic!("key {key} missing or out of order in\n{text}"));
        from += at + needle.len();
    }
}

#[test]
fn inclusion_proofs_round_trip_for_first_middle_and_last_entries_at_several_sizes() {
    let fixture = fixture();
    let (middle, small) = fixture.middle_and_small_sizes();
    let size = fixture.size();
    let mut cases = Vec::new();
    for tree_size in [size, middle, small] {
        for seq in [0, tree_size / 2, tree_size - 1] {
            cases.push((seq, tree_size));
        }
    }
    let entries: Vec<(u64, Vec<u8>)> = fixture.with_ledger(|ledger| {
        cases
            .iter()
            .map(|&(seq, _)| (seq, ledger.get(seq).expect("reads").encode()))
            .collect()
    });
    for (&(seq, tree_size), (_, entry_bytes)) in cases.iter().zip(&entries) {
        let text = fixture.inclusion(seq, Some(tree_size));
        keys_in_order(
            &text,
            &[
                "format",
                "seq",
                "tree_size",
                "leaf_hash",
                "entry",
                "audit_path",
                "root",
                "tree_head",
                "tree_size",
                "root",
                "ledger_key",
                "signature",
            ],
        );
        let doc = parse(&text);
        assert_eq!(doc["format"], "fabric-inclusion-proof-v1");
        assert_eq!(number(&doc["seq"]), seq);
        assert_eq!(number(&doc["tree_size"]), tree_size);
        assert_eq!(number(&doc["tree_head"]["tree_size"]), tree_size);
        assert_eq!(doc["root"], doc["tree_head"]["root"]);
        assert_eq!(doc["tree_head"]["ledger_key"], fixture.ledger_key.as_str());
        let entry = BASE64
            .decode(doc["entry"].as_str().expect("a string"))
            .expect("base64");
        assert_eq!(&entry, entry_bytes, "entry {seq}");
        assert_eq!(
            doc["leaf_hash"],
            fabric_events::entry_hash(&entry).to_hex().as_str()
        );
        assert_verifies(
            &text,
            &fixture.ledger_key,
            &format!("ok: entry {seq} is in the log of {tree_size} entries with root "),
        );
    }

    // Without --size the proof is for the whole log; without --ledger-key the key in the
    // proof is trusted, with a warning.
    let text = fixture.inclusion(3, None);
    assert_eq!(number(&parse(&text)["tree_size"]), size);
    let output = verify_text(&text, None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with(&format!("ok: entry 3 is in the log of {size} entries")));
    assert!(
        stderr(&output).contains("warning") && stderr(&output).contains(&fixture.ledger_key),
        "{}",
        stderr(&output)
    );
}

#[test]
fn consistency_proofs_round_trip_between_stored_head_sizes() {
    let fixture = fixture();
    let (middle, small) = fixture.middle_and_small_sizes();
    let size = fixture.size();
    let first = fixture.head_sizes[1];
    for (old, new) in [
        (small, middle),
        (middle, size),
        (small, size),
        (first, size),
        (middle, middle),
        (size, size),
    ] {
        let text = fixture.consistency(old, new);
        keys_in_order(
            &text,
            &[
                "format",
                "old_size",
                "new_size",
                "path",
                "old_tree_head",
                "tree_size",
                "root",
                "ledger_key",
                "signature",
                "new_tree_head",
                "tree_size",
                "root",
                "ledger_key",
                "signature",
            ],
        );
        let doc = parse(&text);
        assert_eq!(doc["format"], "fabric-consistency-proof-v1");
        assert_eq!(number(&doc["old_size"]), old);
        assert_eq!(number(&doc["new_size"]), new);
        assert_eq!(number(&doc["old_tree_head"]["tree_size"]), old);
        assert_eq!(number(&doc["new_tree_head"]["tree_size"]), new);
        if old == new {
            assert_eq!(doc["path"], Value::Array(Vec::new()));
        }
        assert_verifies(
            &text,
            &fixture.ledger_key,
            &format!("ok: the log of {old} entries with root "),
        );
    }
}

#[test]
fn tampered_inclusion_proofs_are_refused_naming_the_cause() {
    let fixture = fixture();
    let (middle, _) = fixture.middle_and_small_sizes();
    let seq = middle / 2 + 1;
    let text = fixture.inclusion(seq, Some(middle));
    let other = parse(&fixture.inclusion(seq + 1, Some(middle)));
    let whole = parse(&fixture.inclusion(seq, None));
    let key = Some(fixture.ledger_key.as_str());
    assert_verifies(&text, &fixture.ledger_key, "ok: ");

    type Tamper = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "one byte of the entry changed",
            Box::new(|doc| {
                let mut bytes = BASE64
                    .decode(doc["entry"].as_str().expect("a string"))
                    .expect("base64");
                let last = bytes.len() - 1;
                bytes[last] ^= 1;
                doc["entry"] = Value::String(BASE64.encode(bytes));
            }),
            "leaf mismatch",
        ),
        (
            "leaf_hash changed",
            Box::new(|doc| damage_hex(&mut doc["leaf_hash"])),
            "leaf mismatch",
        ),
        (
            "entry not base64",
            Box::new(|doc| doc["entry"] = Value::String("not base64!".to_owned())),
            "base64",
        ),
        (
            "seq changed",
            Box::new(|doc| doc["seq"] = Value::from(number(&doc["seq"]) + 1)),
            "index mismatch",
        ),
        (
            "another entry (with its leaf hash) under this entry's audit path",
            Box::new(move |doc| {
                doc["entry"] = other["entry"].clone();
                doc["leaf_hash"] = other["leaf_hash"].clone();
                doc["seq"] = other["seq"].clone();
            }),
            "audit path",
        ),
        (
            "tree_size changed",
            Box::new(|doc| doc["tree_size"] = Value::from(number(&doc["tree_size"]) + 1)),
            "size mismatch",
        ),
        (
            "root changed",
            Box::new(|doc| damage_hex(&mut doc["root"])),
            "root mismatch",
        ),
        (
            "an audit path element damaged",
            Box::new(|doc| damage_hex(&mut doc["audit_path"][2])),
            "audit path",
        ),
        (
            "the last audit path element dropped",
            Box::new(|doc| {
                doc["audit_path"].as_array_mut().expect("an array").pop();
            }),
            "audit path",
        ),
        (
            "the entry's audit path in the whole log under the head of a smaller tree",
            Box::new(move |doc| doc["audit_path"] = whole["audit_path"].clone()),
            "audit path",
        ),
        (
            "tree head signature changed",
            Box::new(|doc| damage_hex(&mut doc["tree_head"]["signature"])),
            "signature",
        ),
        (
            "tree head root changed together with the root",
            Box::new(|doc| {
                damage_hex(&mut doc["tree_head"]["root"]);
                doc["root"] = doc["tree_head"]["root"].clone();
            }),
            "signature",
        ),
        (
            "tree head size changed together with the size",
            Box::new(|doc| {
                let size = number(&doc["tree_size"]) + 1;
                doc["tree_size"] = Value::from(size);
                doc["tree_head"]["tree_size"] = Value::from(size);
            }),
            "signature",
        ),
        (
            "an unknown key",
            Box::new(|doc| doc["comment"] = Value::from("trust me")),
            "unknown field",
        ),
        (
            "an unknown format",
            Box::new(|doc| doc["format"] = Value::from("fabric-inclusion-proof-v9")),
            "unknown proof format \"fabric-inclusion-proof-v9\"",
        ),
    ];
    for (case, tamper, cause) in cases {
        let mut doc = parse(&text);
        tamper(&mut doc);
        assert_refused(&render(&doc), key, cause, case);
    }

    // A valid proof checked against another key.
    let stranger = PublicKey::from(&ledger_key().verifying_key()).to_hex();
    assert_refused(
        &text,
        Some(&stranger),
        &format!("not by the --ledger-key {stranger}"),
        "wrong --ledger-key",
    );
    // A key that is not one.
    assert_refused(
        &text,
        Some("00ff"),
        "--ledger-key",
        "malformed --ledger-key",
    );
    // Whatever the proof says, the key that signed its head is named when none is given.
    let mut forged = parse(&text);
    forged["tree_head"]["ledger_key"] = Value::from(stranger.as_str());
    assert_refused(&render(&forged), None, "signature", "head key swapped");
}

#[test]
fn tampered_consistency_proofs_are_refused_naming_the_cause() {
    let fixture = fixture();
    let (middle, small) = fixture.middle_and_small_sizes();
    let size = fixture.size();
    let text = fixture.consistency(small, middle);
    let later = parse(&fixture.consistency(middle, size));
    let key = Some(fixture.ledger_key.as_str());
    assert_verifies(&text, &fixture.ledger_key, "ok: ");

    type Tamper = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        (
            "old_size changed",
            Box::new(|doc| doc["old_size"] = Value::from(number(&doc["old_size"]) + 1)),
            "size mismatch: the proof's old_size",
        ),
        (
            "new_size changed",
            Box::new(|doc| doc["new_size"] = Value::from(number(&doc["new_size"]) - 1)),
            "size mismatch: the proof's new_size",
        ),
        (
            "a path element damaged",
            Box::new(|doc| damage_hex(&mut doc["path"][0])),
            "consistency path",
        ),
        (
            "the last path element dropped",
            Box::new(|doc| {
                doc["path"].as_array_mut().expect("an array").pop();
            }),
            "consistency path",
        ),
        (
            "the roots swapped between the heads",
            Box::new(|doc| {
                let old_root = doc["old_tree_head"]["root"].clone();
                doc["old_tree_head"]["root"] = doc["new_tree_head"]["root"].clone();
                doc["new_tree_head"]["root"] = old_root;
            }),
            "signature",
        ),
        (
            "the heads and sizes swapped",
            Box::new(|doc| {
                let old_head = doc["old_tree_head"].clone();
                doc["old_tree_head"] = doc["new_tree_head"].clone();
                doc["new_tree_head"] = old_head;
                let old_size = doc["old_size"].clone();
                doc["old_size"] = doc["new_size"].clone();
                doc["new_size"] = old_size;
            }),
            "size",
        ),
        (
            "a genuine head of another size as the new head",
            Box::new(move |doc| {
                doc["new_tree_head"] = later["new_tree_head"].clone();
                doc["new_size"] = later["new_size"].clone();
            }),
            "consistency path",
        ),
        (
            "the old head's signature changed",
            Box::new(|doc| damage_hex(&mut doc["old_tree_head"]["signature"])),
            "old tree head signature",
        ),
        (
            "the new head's size changed together with the size",
            Box::new(|doc| {
                let size = number(&doc["new_size"]) + 1;
                doc["new_size"] = Value::from(size);
                doc["new_tree_head"]["tree_size"] = Value::from(size);
            }),
            "new tree head signature",
        ),
        (
            "an unknown key in a head",
            Box::new(|doc| doc["old_tree_head"]["note"] = Value::from(1)),
            "unknown field",
        ),
    ];
    for (case, tamper, cause) in cases {
        let mut doc = parse(&text);
        tamper(&mut doc);
        assert_refused(&render(&doc), key, cause, case);
    }
    let stranger = PublicKey::from(&ledger_key().verifying_key()).to_hex();
    assert_refused(
        &text,
        Some(&stranger),
        &format!("not by the --ledger-key {stranger}"),
        "wrong --ledger-key",
    );
}

#[test]
fn proof_at_a_size_without_a_stored_head_names_the_nearest_ones() {
    let fixture = fixture();
    let (below, above) = fixture
        .head_sizes
        .windows(2)
        .map(|pair| (pair[0], pair[1]))
        .find(|&(below, above)| below > 0 && above - below >= 2)
        .expect("two appends of more than one event");
    let missing = below + 1;
    for args in [
        vec![
            "--seq".to_owned(),
            "0".to_owned(),
            "--size".to_owned(),
            missing.to_string(),
        ],
        vec![
            "--consistency".to_owned(),
            missing.to_string(),
            fixture.size().to_string(),
        ],
        vec![
            "--consistency".to_owned(),
            below.to_string(),
            missing.to_string(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = fixture.proof_output(&args);
        assert!(!output.status.success(), "{args:?}: {}", stdout(&output));
        let err = stderr(&output);
        assert!(
            err.contains(&format!(
                "no signed tree head is stored at tree size {missing}"
            )),
            "{args:?}: {err}"
        );
        assert!(
            err.contains(&format!("{below} below")) && err.contains(&format!("{above} above")),
            "{args:?}: {err}"
        );
        assert!(stdout(&output).is_empty());
    }
}

#[test]
fn proof_refuses_seqs_and_sizes_outside_the_log() {
    let fixture = fixture();
    let size = fixture.size();
    let past = (size + 1).to_string();
    let size_text = size.to_string();
    for (args, cause) in [
        (
            vec!["--seq", "0", "--size", &past],
            "past the end of the log",
        ),
        (vec!["--seq", &size_text], "is not in the tree"),
        (
            vec!["--consistency", "0", &size_text],
            "OLD must be at least 1",
        ),
        (
            vec!["--consistency", "2", "1"],
            "OLD must not be larger than NEW",
        ),
        (vec!["--consistency", "1", &past], "past the end of the log"),
    ] {
        let output = fixture.proof_output(&args);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            stderr(&output).contains(cause),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn ledger_builds_consistency_proofs_that_match_its_signed_heads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = Ledger::open(dir.path(), ledger_key()).expect("opens");
    let events = heartbeats(0, 300);
    for range in [0..1, 1..64, 64..100, 100..300] {
        ledger.append(&events[range]).expect("appends");
    }
    let reader = ledger.reader();
    let root_at = |size: u64| -> Hash32 {
        reader
            .tree_head_at(size)
            .expect("reads")
            .expect("a head is stored there")
            .root
    };
    for (old, new) in [
        (1, 300),
        (64, 100),
        (64, 300),
        (100, 300),
        (300, 300),
        (1, 1),
    ] {
        let (proof, old_root, new_root) = reader.consistency_proof(old, new).expect("proof");
        assert_eq!(
            (old_root, new_root),
            (root_at(old), root_at(new)),
            "{old}->{new}"
        );
        assert_eq!((proof.old_size, proof.new_size), (old, new));
        assert_eq!(verify_consistency(&old_root, &new_root, &proof), Ok(()));
        // Another tree's root does not pass. (A changed size may: the roots do not commit to
        // the sizes, which is why `verify-proof` takes them from the signed heads.)
        let other_root = root_at(if new == 300 { 100 } else { 300 });
        assert!(verify_consistency(&old_root, &other_root, &proof).is_err());
        // The writer's forwards give the same.
        assert_eq!(
            ledger.consistency_proof(old, new).expect("proof"),
            (proof, old_root, new_root)
        );
    }
    let (proof, root) = reader.inclusion_proof(70, 100).expect("proof");
    assert_eq!(root, root_at(100));
    assert_eq!((proof.index, proof.tree_size), (70, 100));
    for (old, new) in [(0, 10), (11, 10), (1, 301)] {
        assert!(
            matches!(
                reader.consistency_proof(old, new),
                Err(LedgerError::OutOfRange { .. })
            ),
            "{old}->{new}"
        );
    }
    for (seq, size) in [(100, 100), (0, 301)] {
        assert!(matches!(
            reader.inclusion_proof(seq, size),
            Err(LedgerError::OutOfRange { .. })
        ));
    }
}
