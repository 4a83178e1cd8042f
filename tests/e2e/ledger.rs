//! The ledger on a real sled folder: appends, reads, reopen, refusals, damage on disk.

use fabric_events::{
    derive_signing_key, Entry, Event, Hash32, OwnerAction, OwnerCommand, PublicKey, Role,
    SignedEvent, VerifyError, MAX_SIGNED_BYTES,
};
use fabric_ledger::merkle::{self, verify_inclusion};
use fabric_ledger::storage::{block_key, BlockWriter};
use fabric_ledger::{
    verify_and_remember, AppendError, KeyCache, Ledger, LedgerError, RefusalReason, SignatureMemo,
    Verifier, BATCH_EVENTS_MAX,
};
use proptest::prelude::*;

use crate::support::{heartbeats, ledger_key, node_key};

fn open(dir: &std::path::Path) -> Ledger {
    Ledger::open(dir, ledger_key()).expect("ledger opens")
}

fn all_entries(ledger: &Ledger) -> Vec<Entry> {
    ledger
        .entries(0..ledger.len())
        .collect::<Result<_, _>>()
        .expect("entries read back")
}

/// Checks seqs, links, the stored events and every root against a from-scratch computation.
fn assert_log_matches(ledger: &Ledger, events: &[SignedEvent]) {
    let entries = all_entries(ledger);
    assert_eq!(entries.len(), events.len());
    let mut prev = Hash32::default();
    for (seq, (entry, event)) in entries.iter().zip(events).enumerate() {
        assert_eq!(entry.seq, seq as u64);
        assert_eq!(entry.prev, prev, "link of entry {seq}");
        assert_eq!(entry.author, event.author);
        assert_eq!(entry.signature, event.signature);
        assert_eq!(entry.signed, event.signed);
        prev = entry.hash();
    }
    assert_eq!(ledger.last_hash(), prev);
    for entry in &entries {
        assert_eq!(
            &ledger.get(entry.seq).expect("point read"),
            entry,
            "point read of {}",
            entry.seq
        );
    }
    let leaves: Vec<Hash32> = entries.iter().map(Entry::hash).collect();
    assert_eq!(ledger.root(), merkle::root(&leaves));
    let head = ledger.tree_head();
    assert_eq!(head.tree_size, events.len() as u64);
    assert_eq!(head.verify(&ledger.ledger_key()), Ok(()));
    for stored in ledger.reader().tree_heads().expect("tree heads read") {
        assert_eq!(stored.verify(&ledger.ledger_key()), Ok(()));
        assert_eq!(
            stored.root,
            merkle::root(&leaves[..stored.tree_size as usize])
        );
    }
}

#[test]
fn appends_get_consecutive_seqs_chain_links_and_the_scratch_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open(dir.path());
    assert!(ledger.open_report().created);
    assert_eq!(ledger.root(), merkle::empty_root());
    let events = heartbeats(0, 1 + 300 + 1000);
    let mut next = 0;
    for size in [1, 300, 1000] {
        let receipt = ledger.append(&events[next..next + size]).expect("appends");
        assert_eq!(receipt.first_seq, next as u64);
        assert_eq!(receipt.count, size as u64);
        assert_eq!(receipt.tree_head, ledger.tree_head());
        next += size;
    }
    assert_log_matches(&ledger, &events);
    let entry = ledger.get(777).expect("point read");
    assert_eq!(entry.seq, 777);
    assert_eq!(
        entry.event().expect("decodes"),
        events[777].event().expect("decodes")
    );
    assert!(matches!(
        ledger.get(1301),
        Err(LedgerError::OutOfRange {
            seq: 1301,
            size: 1301
        })
    ));
}

#[test]
fn a_reopened_ledger_continues_the_chain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = heartbeats(0, 1000);
    let (root, last_hash) = {
        let mut ledger = open(dir.path());
        ledger.append(&events[..700]).expect("appends");
        (ledger.root(), ledger.last_hash())
    };
    let mut ledger = open(dir.path());
    assert!(!ledger.open_report().created);
    assert_eq!(ledger.len(), 700);
    assert_eq!(ledger.root(), root);
    assert_eq!(ledger.last_hash(), last_hash);
    let receipt = ledger.append(&events[700..]).expect("appends after reopen");
    assert_eq!(receipt.first_seq, 700);
    assert_eq!(ledger.get(700).expect("reads").prev, last_hash);
    assert_log_matches(&ledger, &events);
    drop(ledger);
    assert_log_matches(&open(dir.path()), &events);
}

#[test]
fn inclusion_proofs_from_the_ledger_verify_against_signed_tree_heads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open(dir.path());
    let events = heartbeats(0, 600);
    ledger.append(&events[..257]).expect("appends");
    ledger.append(&events[257..]).expect("appends");
    let early_head = ledger
        .reader()
        .tree_head_at(257)
        .expect("reads")
        .expect("a commit ended at 257");
    for (seq, tree_size, root) in [
        (0, 600, ledger.root()),
        (599, 600, ledger.root()),
        (256, 600, ledger.root()),
        (100, 257, early_head.root),
    ] {
        let (proof, proof_root) = ledger.inclusion_proof(seq, tree_size).expect("proof");
        assert_eq!(proof_root, root);
        let leaf = ledger.get(seq).expect("reads").hash();
        assert_eq!(verify_inclusion(&leaf, &proof, &root), Ok(()));
        let other = ledger.get((seq + 1) % tree_size).expect("reads").hash();
        assert!(verify_inclusion(&other, &proof, &root).is_err());
    }
    assert!(ledger.inclusion_proof(600, 600).is_err());
    assert!(ledger.inclusion_proof(0, 601).is_err());
    // A tree head whose size or root was changed no longer verifies.
    let mut forged = early_head;
    forged.tree_size += 1;
    assert!(forged.verify(&ledger.ledger_key()).is_err());
    // Nor does one checked against another key.
    let stranger = PublicKey::from(&node_key(0).verifying_key());
    assert!(early_head.verify(&stranger).is_err());
}

#[test]
fn tampered_events_are_refused_and_nothing_of_their_batch_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open(dir.path());
    ledger.append(&heartbeats(0, 5)).expect("appends");
    let root = ledger.root();

    let mut batch = heartbeats(5, 600);
    let last_signed_byte = batch[3].signed.len() - 1;
    batch[3].signed[last_signed_byte] ^= 0x01; // a tampered `signed` byte
    batch[300].signature.0[10] ^= 0x01; // a tampered signature
    batch[555].author = PublicKey::from(&node_key(9).verifying_key()); // someone else's key
    let err = ledger.append(&batch).expect_err("refused");
    let AppendError::Refused {
        refusals,
        batch_len,
    } = &err
    else {
        panic!("expected a refusal, got {err}");
    };
    assert_eq!(*batch_len, 600);
    let indices: Vec<usize> = refusals.iter().map(|r| r.index).collect();
    assert_eq!(indices, [3, 300, 555]);
    for refusal in refusals {
        assert!(
            matches!(
                refusal.reason,
                RefusalReason::Signature(VerifyError::BadSignature(_))
            ),
            "{:?}",
            refusal
        );
    }
    assert!(err.to_string().contains("3 of 600 events refused"), "{err}");
    assert_eq!(ledger.len(), 5, "nothing of a refused batch is stored");
    assert_eq!(ledger.root(), root);
    drop(ledger);
    let mut ledger = open(dir.path());
    assert_eq!(ledger.len(), 5);
    // The untampered events go through afterwards.
    let good: Vec<SignedEvent> = heartbeats(5, 600)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| ![3, 300, 555].contains(i))
        .map(|(_, e)| e)
        .collect();
    ledger.append(&good).expect("appends");
    assert_eq!(ledger.len(), 602);
}

#[test]
fn malformed_oversize_and_weak_key_events_are_refused_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open(dir.path());
    let key = node_key(1);
    let sign_raw = |signed: Vec<u8>| {
        use ed25519_dalek::Signer;
        SignedEvent {
            author: PublicKey::from(&key.verifying_key()),
            signature: key.sign(&signed).into(),
            signed,
        }
    };
    let mut trailing = heartbeats(0, 1).remove(0).signed;
    trailing.push(0);
    let mut no_magic = heartbeats(0, 1).remove(0).signed;
    no_magic[0] = b'X';
    let oversize = vec![b'F'; MAX_SIGNED_BYTES + 1];
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = SignedEvent {
        author: PublicKey(identity),
        ..heartbeats(0, 1).remove(0)
    };
    let batch = vec![
        sign_raw(trailing),
        sign_raw(no_magic),
        sign_raw(oversize),
        weak,
        heartbeats(0, 1).remove(0),
    ];
    let Err(AppendError::Refused { refusals, .. }) = ledger.append(&batch) else {
        panic!("expected refusals");
    };
    let reasons: Vec<String> = refusals
        .iter()
        .map(|r| format!("{}: {}", r.index, r.reason))
        .collect();
    assert_eq!(refusals.len(), 4, "{reasons:?}");
    assert!(reasons[0].starts_with("0: 1 trailing bytes"), "{reasons:?}");
    assert!(
        reasons[1].starts_with("1: signed bytes do not start with the wire magic"),
        "{reasons:?}"
    );
    assert!(reasons[2].contains("over the limit"), "{reasons:?}");
    assert!(reasons[3].contains("weak"), "{reasons:?}");
    assert!(ledger.is_empty());

    assert!(matches!(ledger.append(&[]), Err(AppendError::EmptyBatch)));
    let too_many = vec![batch[4].clone(); BATCH_EVENTS_MAX + 1];
    assert!(matches!(
        ledger.append(&too_many),
        Err(AppendError::BatchTooLarge { .. })
    ));
}

#[test]
fn a_gate_remembers_only_what_verified_and_the_ledger_still_refuses_forgeries() {
    // Nonces of their own: no other test of this process verifies these heartbeats.
    let mut events = heartbeats(70_000, 40);
    events[7].signature.0[3] ^= 1;
    let refusals = verify_and_remember(&events, &mut KeyCache::new(16));
    let refused: Vec<usize> = refusals.iter().map(|refusal| refusal.index).collect();
    assert_eq!(refused, [7]);
    for (index, event) in events.iter().enumerate() {
        assert_eq!(SignatureMemo::holds(event), index != 7, "event {index}");
    }
    // The memo names author, signature and signed bytes together: change any one and the
    // event is a stranger that the ledger verifies, and refuses.
    let genuine = events[8].clone();
    let mut other_author = genuine.clone();
    other_author.author = PublicKey::from(&node_key(9).verifying_key());
    let mut other_bytes = genuine.clone();
    let last = other_bytes.signed.len() - 1;
    other_bytes.signed[last] ^= 1;
    let mut other_signature = genuine.clone();
    other_signature.signature.0[40] ^= 1;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open(dir.path());
    for (what, forged) in [
        ("author", other_author),
        ("signed bytes", other_bytes),
        ("signature", other_signature),
        ("refused event", events[7].clone()),
    ] {
        assert!(!SignatureMemo::holds(&forged), "{what}");
        let batch = [events[0].clone(), forged];
        let Err(AppendError::Refused { refusals, .. }) = ledger.append(&batch) else {
            panic!("a forged {what} is appended");
        };
        assert_eq!(refusals.len(), 1, "{what}");
        assert_eq!(refusals[0].index, 1, "{what}");
    }
    assert!(ledger.is_empty());
    // What the gate verified appends as it would have anyway.
    let good: Vec<SignedEvent> = events
        .into_iter()
        .enumerate()
        .filter(|(index, _)| *index != 7)
        .map(|(_, event)| event)
        .collect();
    ledger.append(&good).expect("appends");
    assert_log_matches(&ledger, &good);
}

#[test]
fn batches_verified_apart_from_the_ledger_append_like_any_other() {
    let events = heartbeats(0, 900);
    let reference = {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ledger = open(dir.path());
        for chunk in events.chunks(300) {
            ledger.append(chunk).expect("appends");
        }
        ledger.root()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open(dir.path());
    let mut verifier = Verifier::new();
    // Verify on another thread while the ledger commits, as a pipelined writer does.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for chunk in events.chunks(300) {
                tx.send(verifier.verify(chunk.to_vec()).expect("verifies"))
                    .expect("writer listens");
            }
        });
        for (i, verified) in rx.into_iter().enumerate() {
            let receipt = ledger.append_verified(&verified).expect("appends");
            assert_eq!(receipt.first_seq, 300 * i as u64);
        }
    });
    assert_eq!(ledger.root(), reference);
    assert_log_matches(&ledger, &heartbeats(0, 900));

    let mut tampered = heartbeats(900, 3);
    tampered[1].signature.0[0] ^= 1;
    let mut verifier = Verifier::new();
    assert!(matches!(
        verifier.verify(tampered),
        Err(AppendError::Refused { ref refusals, .. }) if refusals.len() == 1 && refusals[0].index == 1
    ));
    assert!(matches!(
        verifier.verify(vec![]),
        Err(AppendError::EmptyBatch)
    ));
}

#[test]
fn large_events_up_to_the_limit_are_stored_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open(dir.path());
    let owner = derive_signing_key(11, "tests/owner");
    let mut batch = Vec::new();
    for (nonce, len) in [(0u64, 10_000usize), (1, 16_000), (2, 5), (3, 12_000)] {
        let event = Event::new(
            Role::Owner,
            1,
            nonce,
            OwnerCommand {
                action: OwnerAction::Governance {
                    payload: vec![nonce as u8; len],
                },
                expiry_tick: 9,
                approvals: vec![],
            },
        );
        batch.push(SignedEvent::sign(&event, &owner).expect("under the limit"));
    }
    batch.extend(heartbeats(0, 50));
    ledger.append(&batch).expect("appends");
    drop(ledger);
    let ledger = open(dir.path());
    assert_log_matches(&ledger, &batch);
}

#[test]
fn the_ledger_folder_belongs_to_one_key_and_one_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = open(dir.path());
    let second = Ledger::open(dir.path(), ledger_key());
    assert!(
        matches!(second, Err(LedgerError::Storage { .. })),
        "a second writer must be refused"
    );
    drop(ledger);
    let other = derive_signing_key(12, "another ledger");
    let err = Ledger::open(dir.path(), other).expect_err("wrong key");
    assert!(matches!(err, LedgerError::KeyMismatch { .. }));
    assert!(err.to_string().contains("holds the ledger of key"), "{err}");
}

/// Rewrites one stored value of a closed ledger through sled (opened as the ledger opens it,
/// waiting out the lock the closed ledger's flusher still holds for a moment).
fn with_sled(dir: &std::path::Path, change: impl FnOnce(&sled::Db)) {
    let db = fabric_ledger::open_sled(dir).expect("sled opens");
    change(&db);
    db.flush().expect("flush");
}

#[test]
fn a_corrupted_entry_is_a_typed_error_naming_its_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = heartbeats(0, 20);
    {
        let mut ledger = open(dir.path());
        ledger.append(&events[..10]).expect("appends");
        ledger.append(&events[10..]).expect("appends");
    }
    with_sled(dir.path(), |db| {
        let mut block = db
            .get(block_key(0))
            .expect("reads")
            .expect("block 0")
            .to_vec();
        // Walk to entry 4 (count u16, then per entry: len u32 ‖ hash 32 ‖ entry).
        let mut at = 2;
        for _ in 0..4 {
            let len = u32::from_le_bytes(block[at..at + 4].try_into().expect("4"));
            at += 4 + 32 + len as usize;
        }
        let last_byte_of_entry_4 =
            at + 4 + 32 + u32::from_le_bytes(block[at..at + 4].try_into().expect("4")) as usize - 1;
        block[last_byte_of_entry_4] ^= 0x01;
        db.insert(block_key(0), block).expect("writes");
    });
    let ledger = open(dir.path());
    assert_eq!(
        ledger.get(3).expect("entries before the damage read").seq,
        3
    );
    match ledger.get(4) {
        Err(LedgerError::CorruptEntry { seq: 4, .. }) => {}
        other => panic!("expected entry 4 to be reported corrupt, got {other:?}"),
    }
    let err = ledger
        .entries(0..20)
        .find_map(Result::err)
        .expect("a range over the damage fails");
    assert!(
        matches!(err, LedgerError::CorruptEntry { seq: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("entry 4 is corrupted"), "{err}");
    assert_eq!(ledger.get(15).expect("other blocks read").seq, 15);
}

#[test]
fn a_broken_chain_is_a_typed_error_naming_its_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = heartbeats(0, 30);
    {
        let mut ledger = open(dir.path());
        for chunk in events.chunks(10) {
            ledger.append(chunk).expect("appends");
        }
    }
    // Replace the middle block by a self-consistent one that links to the wrong entry.
    with_sled(dir.path(), |db| {
        let mut writer = BlockWriter::new();
        let mut prev = Hash32([7; 32]);
        for (offset, event) in events[10..20].iter().enumerate() {
            prev = writer.push(10 + offset as u64, &prev, event);
        }
        let blocks = writer.finish();
        assert_eq!(blocks.len(), 1);
        db.insert(block_key(10), blocks[0].1.clone())
            .expect("writes");
    });
    let ledger = open(dir.path());
    let err = ledger
        .entries(0..30)
        .find_map(Result::err)
        .expect("the broken link is found");
    assert!(matches!(err, LedgerError::BrokenChain { seq: 10 }), "{err}");
    assert!(
        err.to_string().contains("broken chain at entry 10"),
        "{err}"
    );
    let err = ledger
        .entries(15..30)
        .find_map(Result::err)
        .expect("the link into the last block is broken too");
    assert!(matches!(err, LedgerError::BrokenChain { seq: 20 }), "{err}");
}

#[test]
fn blocks_past_the_durable_head_are_discarded_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = heartbeats(0, 340);
    let root = {
        let mut ledger = open(dir.path());
        ledger.append(&events[..25]).expect("appends");
        ledger.root()
    };
    // Blocks whose head record never made it: what a torn, unacknowledged batch leaves. The one
    // at 200 sits where later appends will not put a block of their own.
    with_sled(dir.path(), |db| {
        for first_seq in [25u64, 200] {
            let mut writer = BlockWriter::new();
            let mut prev = Hash32([1; 32]);
            for seq in first_seq..first_seq + 60 {
                let event = &events[seq as usize];
                prev = writer.push(seq, &prev, event);
            }
            db.insert(block_key(first_seq), writer.finish().remove(0).1)
                .expect("writes");
        }
    });
    let mut ledger = open(dir.path());
    assert_eq!(ledger.open_report().discarded_blocks, 2);
    assert_eq!(ledger.len(), 25);
    assert_eq!(ledger.root(), root);
    ledger
        .append(&events[25..40])
        .expect("appends over the discarded tail");
    ledger
        .append(&events[40..])
        .expect("appends past the stale block's seqs");
    assert_log_matches(&ledger, &events);
}

#[test]
fn a_damaged_head_or_tree_head_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut ledger = open(dir.path());
        ledger.append(&heartbeats(0, 13)).expect("appends");
    }
    let flip_last_byte = |key: Vec<u8>| {
        with_sled(dir.path(), |db| {
            let mut value = db.get(&key).expect("reads").expect("present").to_vec();
            let last = value.len() - 1;
            value[last] ^= 0x01;
            db.insert(key, value).expect("writes");
        })
    };
    // Inside the head's Merkle frontier.
    flip_last_byte(b"h".to_vec());
    let err = Ledger::open(dir.path(), ledger_key()).expect_err("damaged head");
    assert!(matches!(err, LedgerError::CorruptHead(_)), "{err}");
    assert!(err.to_string().contains("Merkle frontier"), "{err}");
    flip_last_byte(b"h".to_vec()); // repaired
    assert_eq!(open(dir.path()).len(), 13);
    // Inside the signature of the tree head at size 13.
    let mut tree_head_key = vec![b't'];
    tree_head_key.extend_from_slice(&13u64.to_be_bytes());
    flip_last_byte(tree_head_key);
    let err = Ledger::open(dir.path(), ledger_key()).expect_err("damaged tree head");
    assert!(matches!(err, LedgerError::CorruptHead(_)), "{err}");
    assert!(err.to_string().contains("tree head at size 13"), "{err}");
}

#[test]
fn a_folder_of_other_data_is_not_taken_for_a_ledger() {
    let dir = tempfile::tempdir().expect("tempdir");
    with_sled(dir.path(), |db| {
        db.insert(b"something", b"else".to_vec()).expect("writes");
    });
    let err = Ledger::open(dir.path(), ledger_key()).expect_err("not a ledger");
    assert!(
        matches!(err, LedgerError::UnsupportedFormat { .. }),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Any split of the same events into batches and reopens gives the same log and root.
    #[test]
    fn batching_and_reopening_do_not_change_the_log(
        cuts in prop::collection::vec(1usize..120, 1..6),
        reopen_after in any::<prop::sample::Index>(),
    ) {
        let total: usize = cuts.iter().sum();
        let events = heartbeats(0, total);
        let reference = {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut ledger = open(dir.path());
            ledger.append(&events).expect("appends");
            (ledger.root(), ledger.last_hash())
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let reopen_at = reopen_after.index(cuts.len());
        let mut ledger = open(dir.path());
        let mut next = 0;
        for (i, cut) in cuts.iter().enumerate() {
            ledger.append(&events[next..next + cut]).expect("appends");
            next += cut;
            if i == reopen_at {
                drop(ledger);
                ledger = open(dir.path());
            }
        }
        prop_assert_eq!((ledger.root(), ledger.last_hash()), reference);
        assert_log_matches(&ledger, &events);
    }
}

/// sled writes pages over a quarter of a segment to blob files it never syncs; the ledger's
/// segment size must keep every page of full 64 KiB blocks and snapshot chunks in `db`.
#[test]
fn a_long_ledger_keeps_every_page_in_the_synced_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open(dir.path());
    // Many appends of a few full blocks each, so leaf pages fill with 64 KiB values.
    let mut next_nonce = 0;
    for _ in 0..40 {
        let batch = heartbeats(next_nonce, 1_200);
        next_nonce += batch.len() as u64;
        ledger.append(&batch).expect("append");
    }
    let snapshot = vec![7u8; 3 * fabric_ledger::SNAPSHOT_CHUNK_BYTES + 5];
    ledger
        .store_snapshot(ledger.len(), &snapshot)
        .expect("snapshot stored");
    ledger.append(&heartbeats(next_nonce, 10)).expect("append");
    let blobs = dir.path().join("blobs");
    let blob_files = std::fs::read_dir(&blobs).map_or(0, |entries| entries.count());
    assert_eq!(
        blob_files,
        0,
        "sled wrote pages to unsynced blob files in {}",
        blobs.display()
    );
    assert_eq!(ledger.len(), 48_010);
}

#[test]
fn a_ledger_opens_read_only_with_its_stored_key_and_an_empty_folder_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = fabric_ledger::LedgerReader::open(dir.path());
    assert!(
        matches!(refused, Err(LedgerError::Io { .. })),
        "{:?}",
        refused.err()
    );
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    let size = {
        let mut ledger = open(dir.path());
        ledger.append(&heartbeats(0, 10)).expect("append");
        ledger.len()
    };
    let reader = fabric_ledger::LedgerReader::open(dir.path()).expect("opens read-only");
    let key = PublicKey::from(&ledger_key().verifying_key());
    assert_eq!(reader.ledger_key().expect("stored key"), key);
    assert_eq!(reader.len().expect("size"), size);
    assert_eq!(reader.entries(0..size).count() as u64, size);
}

#[test]
fn the_ledger_skips_only_the_signatures_the_process_made() {
    use fabric_actors::actors::Signer;
    use fabric_events::Heartbeat;
    // Tick 80,000: no other test of this process signs these.
    let key = node_key(2);
    let mut signer = Signer::new(&key, Role::Node, 80_000);
    for running_jobs in 0..5 {
        signer
            .sign(Heartbeat {
                node: "earth.node-2".to_owned(),
                running_jobs,
            })
            .expect("signs");
    }
    let made: Vec<SignedEvent> = signer
        .finish()
        .into_iter()
        .map(|proposal| proposal.signed)
        .collect();
    assert!(made.iter().all(SignatureMemo::holds));
    // A copy changed after signing is a stranger: verified, and refused.
    let mut changed = made[4].clone();
    let last = changed.signed.len() - 1;
    changed.signed[last] ^= 1;
    assert!(!SignatureMemo::holds(&changed));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ledger = open(dir.path());
    let batch = [made[0].clone(), changed];
    let Err(AppendError::Refused { refusals, .. }) = ledger.append(&batch) else {
        panic!("a signature changed after signing is appended");
    };
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].index, 1);
    ledger.append(&made).expect("appends");
    assert_log_matches(&ledger, &made);
}

#[test]
fn a_replica_stores_only_what_continues_its_log_under_the_sequencers_tree_head() {
    let sequencer_dir = tempfile::tempdir().expect("temp dir");
    let replica_dir = tempfile::tempdir().expect("temp dir");
    let mut sequencer = open(sequencer_dir.path());
    let genesis = heartbeats(1, 1);
    sequencer.append(&genesis).expect("first batch");
    // A replica starts from a copy of the fabric's folder; an empty one is refused.
    assert!(matches!(
        Ledger::open_replica(replica_dir.path().join("none")),
        Err(LedgerError::NoLedger { .. })
    ));
    open(replica_dir.path()).append(&genesis).expect("the copy");
    let mut replica = Ledger::open_replica(replica_dir.path()).expect("a replica opens");
    let batch = heartbeats(2, 5);
    let receipt = sequencer.append(&batch).expect("second batch");
    let entries: Vec<Entry> = sequencer
        .entries(receipt.first_seq..sequencer.len())
        .collect::<Result<_, _>>()
        .expect("entries read");
    let head = receipt.tree_head;

    // Out of place, unlinked, under another root, under another key, badly signed: refused,
    // nothing stored.
    let refused = |replica: &mut Ledger, entries: &[Entry], head, what: &str| {
        let error = replica.append_replicated(entries, &head).expect_err(what);
        assert_eq!(replica.len(), 1, "{what}: nothing stored ({error})");
    };
    refused(&mut replica, &entries[1..], head, "a gap");
    let mut unlinked = entries.clone();
    unlinked[0].prev = Hash32([9; 32]);
    refused(&mut replica, &unlinked, head, "a broken link");
    let mut other_root = head;
    other_root.root = Hash32([7; 32]);
    refused(&mut replica, &entries, other_root, "another root");
    let forged = fabric_ledger::SignedTreeHead::sign(head.tree_size, head.root, &node_key(1));
    refused(&mut replica, &entries, forged, "another key's tree head");
    let mut bad_signature = entries.clone();
    bad_signature[4].signature.0[0] ^= 1;
    let error = replica
        .append_replicated(&bad_signature, &head)
        .expect_err("a bad signature");
    assert!(matches!(error, AppendError::Refused { .. }), "{error}");
    assert_eq!(replica.len(), 1);
    // A replica signs nothing of its own.
    assert!(replica.append(&heartbeats(20, 1)).is_err());

    let stored = replica
        .append_replicated(&entries, &head)
        .expect("the sequencer's batch");
    assert_eq!(stored.tree_head, head);
    drop(replica);
    let reopened = Ledger::open_replica(replica_dir.path()).expect("it reopens");
    assert_eq!(reopened.tree_head(), sequencer.tree_head());
    assert_eq!(all_entries(&reopened), all_entries(&sequencer));
}

#[test]
fn a_takeover_puts_its_key_in_force_and_a_discarded_tail_takes_it_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut ledger = open(dir.path());
    let first = heartbeats(1, 3);
    let before = ledger.append(&first).expect("first batch").tree_head;
    let successor = derive_signing_key(3, "tests/sequencer b");
    let successor_key = PublicKey::from(&successor.verifying_key());
    let takeover = Event::new(
        Role::Ledger,
        9,
        9 << 24,
        fabric_events::SequencerTakeover {
            term: 1,
            sequencer: successor_key,
        },
    );
    let signed = SignedEvent::sign(&takeover, &successor).expect("signed");
    // A writer that does not hold the successor's secret cannot follow its takeover.
    assert!(matches!(
        ledger.append(std::slice::from_ref(&signed)),
        Err(AppendError::Ledger(
            LedgerError::RotationWithoutSecret { .. }
        ))
    ));
    ledger.hold(successor.clone());
    ledger.append(&[signed]).expect("the takeover");
    let tail = ledger.append(&heartbeats(10, 2)).expect("a tail").tree_head;
    assert_eq!(
        tail.ledger_key, successor_key,
        "the successor signs from the takeover on"
    );
    drop(ledger);
    // Read back, the takeover is the key in force from the next seq.
    let mut reopened = Ledger::open_replica(dir.path()).expect("reopens");
    assert_eq!(reopened.current_ledger_key(), successor_key);
    assert_eq!(
        reopened.ledger_keys().at(3),
        PublicKey::from(&ledger_key().verifying_key())
    );
    assert_eq!(reopened.ledger_keys().at(4), successor_key);
    // Cut back before the takeover with the tree head there: the key in force is the first's.
    let wrong = fabric_ledger::SignedTreeHead::sign(3, before.root, &successor);
    assert!(
        reopened.discard_after(3, &wrong).is_err(),
        "a head its key did not sign"
    );
    assert_eq!(reopened.discard_after(3, &before).expect("cut"), 3);
    assert_eq!(reopened.len(), 3);
    assert_eq!(reopened.tree_head(), before);
    // A cut inside a block keeps the entries before it.
    let leaves: Vec<Hash32> = all_entries(&reopened).iter().map(Entry::hash).collect();
    let at_two = fabric_ledger::SignedTreeHead::sign(2, merkle::root(&leaves[..2]), &ledger_key());
    assert_eq!(reopened.discard_after(2, &at_two).expect("cut"), 1);
    drop(reopened);
    let mut reopened = open(dir.path());
    assert_eq!(
        reopened.current_ledger_key(),
        PublicKey::from(&ledger_key().verifying_key())
    );
    assert_log_matches(&reopened, &first[..2]);
    reopened.append(&first[2..]).expect("it goes on");
    assert_log_matches(&reopened, &first);
}
