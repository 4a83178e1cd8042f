//! Restoring a run from its ledger: the newest checkpoint that verifies, then the tail after it.
//!
//! The cost follows the tail, not the history: the checkpoint's snapshot carries the state and
//! the Merkle frontier at its tree size, so no entry before it is read.
//!
//! What is trusted and why: the head's signed tree head was verified when the ledger opened. A
//! checkpoint at tree size `T` is used only when its `checkpoint` event (the entry at seq `T`,
//! the first event of its tick) is signed by the ledger key and names that size, its snapshot's
//! bytes hash to the event's `snapshot_hash`, the bytes decode to a state with the event's
//! `state_hash`, and the snapshot's frontier gives the root of the signed tree head at `T`
//! (which the event's `merkle_root` must also say). The tail's leaves, pushed onto that
//! frontier, must then give the root of the signed head: so every entry replayed is the one
//! the ledger signed for.

use fabric_events::{Body, Event, Hash32, PublicKey, SignedEvent};
use fabric_ledger::{LedgerReader, SignedTreeHead};
use fabric_projections::State;

use crate::RunError;

/// Where a resumed run picks up: the state before the log's last tick, and what that tick
/// already stored (perhaps only part of it: a tick larger than one group commit is appended
/// in several).
pub struct Restored {
    /// The state after every tick before `tick`.
    pub state: State,
    /// The last tick in the log; it is proposed again and completed.
    pub tick: u64,
    /// The events of `tick` already stored, in order.
    pub stored: Vec<(Event, SignedEvent)>,
    /// Tree size and Merkle root before `tick`.
    pub tree_before: (u64, Hash32),
    /// What the restore did, for the operator.
    pub report: RestoreReport,
}

/// What a restore used and skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// The tree size of the checkpoint the state was loaded from (none: replayed from genesis).
    pub checkpoint_tree_size: Option<u64>,
    /// Newer checkpoints that did not verify, newest first, with why.
    pub skipped: Vec<String>,
    /// Entries read after the checkpoint.
    pub tail_events: u64,
    /// Entries in the log.
    pub log_events: u64,
}

/// A checkpoint that verified: its state and the Merkle frontier at its size.
pub struct Loaded {
    /// The state after the first `tree_size` entries.
    pub state: State,
    /// The Merkle frontier of those entries.
    pub frontier: fabric_ledger::Frontier,
}

/// Loads the checkpoint at `tree_size` if it verifies as described in the module
/// documentation; otherwise says why not.
pub fn load_checkpoint(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    tree_size: u64,
) -> Result<Loaded, String> {
    let snapshot = reader.snapshot(tree_size).map_err(|err| err.to_string())?;
    let entry = reader.get(tree_size).map_err(|err| err.to_string())?;
    if entry.author != *ledger_key {
        return Err(format!("entry {tree_size} is not signed by the ledger key"));
    }
    entry
        .verify_signature()
        .map_err(|err| format!("entry {tree_size}: {err}"))?;
    let event = entry
        .event()
        .map_err(|err| format!("entry {tree_size}: {err}"))?;
    let Body::Checkpoint(checkpoint) = event.body else {
        return Err(format!(
            "entry {tree_size} is a {}, not its checkpoint",
            event.kind().as_str()
        ));
    };
    if checkpoint.tree_size != tree_size {
        return Err(format!(
            "the checkpoint at entry {tree_size} covers {} entries",
            checkpoint.tree_size
        ));
    }
    if checkpoint.snapshot_hash != snapshot.hash {
        return Err(format!(
            "the snapshot hashes to {}, its checkpoint says {}",
            snapshot.hash, checkpoint.snapshot_hash
        ));
    }
    let head = signed_head(reader, ledger_key, tree_size)?;
    let frontier_root = snapshot.frontier.root();
    if frontier_root != head.root || checkpoint.merkle_root != head.root {
        return Err(format!(
            "the signed tree head at {tree_size} says root {}, the snapshot's frontier {} and \
             the checkpoint {}",
            head.root, frontier_root, checkpoint.merkle_root
        ));
    }
    let state = State::from_snapshot_bytes(&snapshot.bytes).map_err(|err| err.to_string())?;
    let state_hash = fabric_projections::state::state_hash_of(&snapshot.bytes);
    if state_hash != checkpoint.state_hash {
        return Err(format!(
            "the snapshot's state hash is {state_hash}, its checkpoint says {}",
            checkpoint.state_hash
        ));
    }
    Ok(Loaded {
        state,
        frontier: snapshot.frontier,
    })
}

fn signed_head(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    tree_size: u64,
) -> Result<SignedTreeHead, String> {
    let head = reader
        .tree_head_at(tree_size)
        .map_err(|err| err.to_string())?
        .ok_or_else(|| format!("no signed tree head is stored at size {tree_size}"))?;
    head.verify(ledger_key)
        .map_err(|err| format!("the signed tree head at {tree_size}: {err}"))?;
    Ok(head)
}

/// Restores the state of the run stored in `reader`: the newest checkpoint that verifies
/// (each one skipped says why in the report), then every later entry but those of the last
/// tick, which are handed back for the driver to complete.
pub fn restore(reader: &LedgerReader, ledger_key: &PublicKey) -> Result<Restored, RunError> {
    restore_to(reader, ledger_key, reader.len()?)
}

/// [`restore`] as if the log ended after its first `size` entries (a size with a signed tree
/// head): what a restore costs at any point of a history, for benchmarks and audits.
pub fn restore_to(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    size: u64,
) -> Result<Restored, RunError> {
    let mut report = RestoreReport {
        log_events: size,
        ..RestoreReport::default()
    };
    let mut loaded = None;
    for tree_size in reader.snapshot_sizes_before(size)? {
        let tree_size = tree_size?;
        match load_checkpoint(reader, ledger_key, tree_size) {
            Ok(found) => {
                report.checkpoint_tree_size = Some(tree_size);
                loaded = Some((tree_size, found));
                break;
            }
            Err(why) => report
                .skipped
                .push(format!("checkpoint at tree size {tree_size}: {why}")),
        }
    }
    let (
        start,
        Loaded {
            mut state,
            mut frontier,
        },
    ) = loaded.unwrap_or_else(|| {
        (
            0,
            Loaded {
                state: State::new(),
                frontier: fabric_ledger::Frontier::new(),
            },
        )
    });
    let head = signed_head(reader, ledger_key, size).map_err(RunError::Restore)?;

    // Every entry but the last tick's is applied; the last tick's are kept. An entry's tick is
    // the one its author signed: the fabric's own events carry the tick they were sequenced at,
    // but a served client's submission carries the tick the client last saw, which may be
    // older. So a tick starts at the first entry of a higher tick than any before it, and an
    // entry of a lower tick belongs to the tick it was sequenced in.
    let mut tick = None;
    let mut tree_before = (frontier.size(), frontier.root());
    let mut stored: Vec<(Event, SignedEvent)> = Vec::new();
    let mut entries = reader.entries(start..size);
    while let Some((hash, entry)) = entries.next_with_hash()? {
        let event = entry
            .event()
            .map_err(|err| RunError::Restore(format!("entry {}: {err}", entry.seq)))?;
        let event_tick = event.header.tick;
        if tick.is_none_or(|current| event_tick > current) {
            for (offset, (previous, signed)) in stored.drain(..).enumerate() {
                // The run stops at an event that does not fit; so does its restore.
                state.admit(&signed.author, &previous).map_err(|err| {
                    RunError::Restore(format!(
                        "entry {} does not fit the state: {err}",
                        tree_before.0 + offset as u64
                    ))
                })?;
            }
            tick = Some(event_tick);
            tree_before = (frontier.size(), frontier.root());
        }
        frontier.push(hash);
        let signed = SignedEvent {
            author: entry.author,
            signature: entry.signature,
            signed: entry.signed,
        };
        stored.push((event, signed));
        report.tail_events += 1;
    }
    let tick = tick.unwrap_or(0);
    if frontier.root() != head.root {
        return Err(RunError::Restore(format!(
            "the entries after the checkpoint give root {}, the signed tree head at {size} says {}",
            frontier.root(),
            head.root
        )));
    }
    Ok(Restored {
        state,
        tick,
        stored,
        tree_before,
        report,
    })
}
