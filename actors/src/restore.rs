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

use fabric_audit::checkpoint::signed_head;
use fabric_audit::{load_checkpoint, Loaded, Replay};
use fabric_events::{Entry, Event, Hash32, PublicKey, SignedEvent};
use fabric_ledger::{Frontier, LedgerReader};
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
    let (start, loaded) = newest_checkpoint(reader, ledger_key, size, &mut report)?;
    let head = signed_head(reader, ledger_key, size)?;
    let mut replay = Replay::resume(loaded.state, loaded.frontier, None);

    // Every entry but the last tick's is folded; the last tick's are kept. An entry's tick is
    // the one its author signed: the fabric's own events carry the tick they were sequenced at,
    // but a served client's submission carries the tick the client last saw, which may be
    // older. So a tick starts at the first entry of a higher tick than any before it, and an
    // entry of a lower tick belongs to the tick it was sequenced in.
    let mut tick = None;
    let mut last_tick: Vec<(Hash32, Entry, Event)> = Vec::new();
    let mut entries = reader.entries(start..size);
    while let Some((hash, entry)) = entries.next_with_hash()? {
        let event = Replay::decode(&entry)?;
        let event_tick = event.header.tick;
        if tick.is_none_or(|current| event_tick > current) {
            for (hash, entry, event) in last_tick.drain(..) {
                // The run stops at an event that does not fit; so does its restore.
                replay.fold(hash, &entry, &event, ())?;
            }
            tick = Some(event_tick);
        }
        last_tick.push((hash, entry, event));
        report.tail_events += 1;
    }
    let tick = tick.unwrap_or(0);
    let tree_before = (replay.tree().size(), replay.tree().root());
    let mut frontier = replay.tree().clone();
    for (hash, _, _) in &last_tick {
        frontier.push(*hash);
    }
    if frontier.root() != head.root {
        return Err(RunError::RestoreRoot {
            size,
            computed: frontier.root(),
            signed: head.root,
        });
    }
    let stored = last_tick
        .into_iter()
        .map(|(_, entry, event)| {
            let signed = SignedEvent {
                author: entry.author,
                signature: entry.signature,
                signed: entry.signed,
            };
            (event, signed)
        })
        .collect();
    Ok(Restored {
        state: replay.into_state(),
        tick,
        stored,
        tree_before,
        report,
    })
}

/// The newest checkpoint before `size` that verifies (each one skipped is reported with why),
/// or genesis when none does.
fn newest_checkpoint(
    reader: &LedgerReader,
    ledger_key: &PublicKey,
    size: u64,
    report: &mut RestoreReport,
) -> Result<(u64, Loaded), RunError> {
    for tree_size in reader.snapshot_sizes_before(size)? {
        let tree_size = tree_size?;
        match load_checkpoint(reader, ledger_key, tree_size) {
            Ok(found) => {
                report.checkpoint_tree_size = Some(tree_size);
                return Ok((tree_size, found));
            }
            Err(why) => report
                .skipped
                .push(format!("checkpoint at tree size {tree_size}: {why}")),
        }
    }
    let genesis = Loaded {
        state: State::new(),
        frontier: Frontier::new(),
    };
    Ok((0, genesis))
}
