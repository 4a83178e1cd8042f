//! `fabric audit`: a clean run passes; a flipped byte anywhere in the stored entries, tree
//! heads, head record or snapshots, or anywhere in an export, is detected (or refused at open)
//! with an error naming what is broken. No flip is accepted silently.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::{fabric, path, small_run};
use serde_json::Value;

/// One small run shared by the tests of this file: (its folder, its data folder). A ledger is
/// opened by one process at a time, so tests work on copies of it (see [`copy_of_pristine`]).
fn pristine() -> &'static (tempfile::TempDir, PathBuf) {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = small_run(dir.path(), 3, 2500);
        (dir, data)
    })
}

/// A private copy of the pristine run's data folder.
fn copy_of_pristine(name: &str) -> (tempfile::TempDir, PathBuf) {
    let (_, data) = pristine();
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join(name);
    copy_dir(data, &copy);
    (dir, copy)
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("readable") {
        let entry = entry.expect("readable");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// The audit's verdict as JSON, and whether it passed.
fn audit(args: &[&str]) -> (bool, Value) {
    let output = fabric(&[&["audit", "--json"], args].concat());
    let verdict: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "audit printed no JSON verdict: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(output.status.success(), verdict["ok"] == true);
    (output.status.success(), verdict)
}

#[test]
fn a_clean_run_passes_its_audit_from_genesis_and_from_a_checkpoint() {
    let (_dir, data) = copy_of_pristine("data");
    let data = &data;
    let (ok, full) = audit(&["--data", path(data)]);
    assert!(ok, "{full}");
    assert!(full["checkpoints_verified"].as_u64() >= Some(2), "{full}");
    assert_eq!(full["checkpoints_verified"], full["snapshots_verified"]);
    assert!(full["tree_heads_verified"].as_u64() > Some(10));
    assert_eq!(full["anomalies"], 0);
    let events = full["events_verified"].as_u64().expect("count");
    let (ok, tail) = audit(&["--data", path(data), "--from", &(events - 10).to_string()]);
    assert!(ok, "{tail}");
    assert!(tail["first_seq"].as_u64() > Some(0), "{tail}");
    assert_eq!(tail["merkle_root"], full["merkle_root"]);
    assert_eq!(tail["state_hash"], full["state_hash"]);
}

/// Where to flip: (sled tree, key, byte offset in the value, what the audit must say).
struct Flip {
    tree: Option<&'static str>,
    key: Vec<u8>,
    offset: usize,
    expect: &'static [&'static str],
}

/// sled keys.
type Keys = Vec<Vec<u8>>;

/// Keys of the stored blocks, tree heads and snapshots of the pristine run.
fn stored_keys(data: &Path) -> (Keys, Keys, Keys) {
    let db = fabric_ledger::sled_config(&data.join("ledger"))
        .open()
        .expect("sled opens");
    let keys = |prefix: u8| -> Keys {
        db.scan_prefix([prefix])
            .keys()
            .map(|k| k.expect("readable").to_vec())
            .collect()
    };
    let (blocks, heads) = (keys(b'e'), keys(b't'));
    let snapshots = db
        .open_tree(fabric_ledger::SNAPSHOT_TREE)
        .expect("snapshots")
        .iter()
        .keys()
        .map(|k| k.expect("readable").to_vec())
        .collect();
    (blocks, heads, snapshots)
}

#[test]
fn every_flipped_stored_byte_is_detected_or_refused_at_open() {
    let (dir, data) = copy_of_pristine("data");
    let data = &data;
    let (blocks, heads, snapshots) = stored_keys(data);
    let middle_block = blocks[blocks.len() / 2].clone();
    let last_block = blocks[blocks.len() - 1].clone();
    let middle_head = heads[heads.len() / 2].clone();
    let manifest = snapshots
        .iter()
        .find(|k| k[0] == b'm')
        .expect("a manifest")
        .clone();
    let chunk = snapshots
        .iter()
        .find(|k| k[0] == b'c')
        .expect("a chunk")
        .clone();
    let flips = vec![
        // A block: its entry count, the first entry's length and hash, bytes inside entries.
        Flip {
            tree: None,
            key: middle_block.clone(),
            offset: 0,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: middle_block.clone(),
            offset: 3,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: middle_block.clone(),
            offset: 9,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: middle_block.clone(),
            offset: 2 + 36 + 60,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: middle_block.clone(),
            offset: 2 + 36 + 150,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: middle_block.clone(),
            offset: 2000,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: last_block,
            offset: 2 + 36 + 140,
            expect: &["storage"],
        },
        // A signed tree head: its root and its signature.
        Flip {
            tree: None,
            key: middle_head.clone(),
            offset: 5,
            expect: &["root", "signature"],
        },
        Flip {
            tree: None,
            key: middle_head,
            offset: 40,
            expect: &["signature"],
        },
        // The head record (size, last hash, frontier) and the ledger key.
        Flip {
            tree: None,
            key: b"h".to_vec(),
            offset: 0,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: b"h".to_vec(),
            offset: 20,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: b"h".to_vec(),
            offset: 50,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: b"k".to_vec(),
            offset: 3,
            expect: &["storage"],
        },
        Flip {
            tree: None,
            key: b"v".to_vec(),
            offset: 0,
            expect: &["storage"],
        },
        // A snapshot's chunk and manifest (length, hash, frontier).
        Flip {
            tree: Some(fabric_ledger::SNAPSHOT_TREE),
            key: chunk,
            offset: 100,
            expect: &["storage"],
        },
        Flip {
            tree: Some(fabric_ledger::SNAPSHOT_TREE),
            key: manifest.clone(),
            offset: 1,
            expect: &["storage"],
        },
        Flip {
            tree: Some(fabric_ledger::SNAPSHOT_TREE),
            key: manifest.clone(),
            offset: 20,
            expect: &["storage"],
        },
        Flip {
            tree: Some(fabric_ledger::SNAPSHOT_TREE),
            key: manifest,
            offset: 50,
            expect: &["storage"],
        },
    ];
    for (index, flip) in flips.iter().enumerate() {
        let copy = dir.path().join(format!("flip-{index}"));
        copy_dir(data, &copy);
        {
            let db = fabric_ledger::sled_config(&copy.join("ledger"))
                .open()
                .expect("sled opens");
            let tree: sled::Tree = match flip.tree {
                Some(name) => db.open_tree(name).expect("tree"),
                None => (*db).clone(),
            };
            let mut value = tree
                .get(&flip.key)
                .expect("readable")
                .expect("stored")
                .to_vec();
            let offset = flip.offset.min(value.len() - 1);
            value[offset] ^= 0x04;
            tree.insert(&flip.key, value).expect("write");
            db.flush().expect("flush");
        }
        let (ok, verdict) = audit(&["--data", path(&copy)]);
        assert!(
            !ok,
            "flip {index} (key {:?}, byte {}) was accepted: {verdict}",
            flip.key, flip.offset
        );
        let what = verdict["failure"]["what"].as_str().expect("what failed");
        let detail = verdict["failure"]["detail"].as_str().expect("why");
        assert!(
            flip.expect.contains(&what) && !detail.is_empty(),
            "flip {index} (key {:?}) reported as {what}: {detail}",
            flip.key
        );
        std::fs::remove_dir_all(&copy).expect("cleanup");
    }
}

#[test]
fn every_flipped_byte_of_an_export_is_detected() {
    let (dir, data) = copy_of_pristine("data");
    let data = &data;
    let export = dir.path().join("export.ndjson");
    let output = fabric(&["export", "--data", path(data), "--out", path(&export)]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (ok, verdict) = audit(&["--export", path(&export)]);
    assert!(ok, "{verdict}");
    let bytes = std::fs::read(&export).expect("export");
    // Bytes spread over the whole file, and every byte of one line.
    let first_line_end = bytes.iter().position(|b| *b == b'\n').expect("a line");
    let positions: Vec<usize> = (0..bytes.len())
        .step_by(bytes.len() / 24)
        .chain((0..=first_line_end).step_by(37))
        .chain([bytes.len() - 1])
        .collect();
    let flipped = dir.path().join("flipped.ndjson");
    for position in positions {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x01;
        std::fs::write(&flipped, &damaged).expect("write");
        let (ok, verdict) = audit(&["--export", path(&flipped)]);
        assert!(
            !ok,
            "a flip at byte {position} of the export was accepted: {verdict}"
        );
        assert!(
            verdict["failure"]["detail"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{verdict}"
        );
    }
    // A cut export audits its lines, links and signatures.
    let cut = dir.path().join("cut.ndjson");
    let output = fabric(&[
        "export",
        "--data",
        path(data),
        "--out",
        path(&cut),
        "--from",
        "100",
        "--to",
        "300",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (ok, verdict) = audit(&["--export", path(&cut)]);
    assert!(ok, "{verdict}");
    assert_eq!(verdict["events_verified"], 200);
    assert_eq!(verdict["first_seq"], 100);
}

/// A validly signed event that the authority table refuses (here a heartbeat by a key no owner
/// registered), written straight into the ledger by someone holding the ledger key, is found
/// by the audit's replay: signatures alone do not make history.
#[test]
fn a_signed_but_unauthorised_stored_event_fails_the_audit() {
    use fabric_events::{Event, Heartbeat, Role, SignedEvent};

    let (_dir, data) = copy_of_pristine("data");
    let size = {
        let mut ledger =
            fabric_ledger::Ledger::open(data.join("ledger"), fabric_sim::sim_ledger_key(3))
                .expect("the run's ledger opens with its key");
        let stranger = fabric_events::derive_signing_key(42, "stranger");
        let forged = Event::new(
            Role::Node,
            1_000_000,
            1 << 40,
            Heartbeat {
                node: "mars.gpu-helion".to_owned(),
                running_jobs: 0,
            },
        );
        let signed = SignedEvent::sign(&forged, &stranger).expect("small");
        ledger
            .append(&[signed])
            .expect("the ledger itself checks signatures, not authority");
        ledger.len()
    };
    let (ok, report) = audit(&["--data", path(&data)]);
    assert!(!ok, "{report}");
    assert_eq!(report["failure"]["what"], "authority", "{report}");
    assert_eq!(report["failure"]["seq"].as_u64(), Some(size - 1));
}

/// What an auditor's own program does with fabric-audit alone: opens the ledger read-only,
/// audits it, and replays it from genesis and from a checkpoint, to the CLI audit's root and
/// state.
#[test]
fn the_audit_library_alone_verifies_and_replays_a_run_read_only() {
    use fabric_audit::{Observer, Replay, Step};

    #[derive(Default)]
    struct Seen(u64);

    impl Observer for Seen {
        fn after(&mut self, step: &Step<'_>, _: &fabric_projections::State) {
            assert_eq!(step.tree.size(), step.seq + 1);
            self.0 += 1;
        }
    }

    let (_dir, data) = copy_of_pristine("data");
    let (ok, cli) = audit(&["--data", path(&data)]);
    assert!(ok, "{cli}");
    let reader =
        fabric_ledger::LedgerReader::open(data.join("ledger")).expect("the ledger opens read-only");
    let key = reader.ledger_key().expect("the stored key");
    let size = reader.len().expect("size");
    let report =
        fabric_audit::audit::audit_ledger(&reader, &key, "library".to_owned(), 0, &mut |_, _| {})
            .expect("the audit runs");
    assert!(report.ok, "{report:?}");
    assert_eq!(
        report.merkle_root,
        cli["merkle_root"].as_str().expect("root")
    );
    assert_eq!(
        report.state_hash,
        cli["state_hash"].as_str().expect("state")
    );

    let mut seen = Seen::default();
    let mut replay = Replay::genesis();
    assert_eq!(
        replay.read(&reader, size, &mut seen).expect("replays"),
        size
    );
    assert_eq!(seen.0, size);
    assert_eq!(replay.tree().root().to_hex(), report.merkle_root);
    assert_eq!(replay.state().state_hash().to_hex(), report.state_hash);

    let checkpoint = *reader
        .snapshot_sizes()
        .expect("snapshots")
        .last()
        .expect("a run stores checkpoints");
    let loaded = fabric_audit::load_checkpoint(&reader, &key, checkpoint).expect("it verifies");
    let mut tail = Replay::resume(loaded.state, loaded.frontier, None);
    assert_eq!(tail.next_seq(), checkpoint);
    assert_eq!(
        tail.read(&reader, size, ()).expect("replays"),
        size - checkpoint
    );
    assert_eq!(tail.tree().root().to_hex(), report.merkle_root);
    assert_eq!(tail.state().state_hash().to_hex(), report.state_hash);
}
