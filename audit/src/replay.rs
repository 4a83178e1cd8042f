//! The one replay of a Fabric log: entries in, checked, folded into the projections, shown to
//! observers.
//!
//! A [`Replay`] stands at a point of the log: the [`State`] after the entries before it, their
//! Merkle [`Frontier`] (whose size is the next seq) and, when known, the hash of the last one
//! (the next entry's `prev`). Each entry handed to it is checked (its seq is the next one, its
//! `prev` is the hash of the entry before), decoded, and folded in with [`State::admit`]: the
//! authority table, owner approvals, nonces and a fit with the state. A stored log holds only
//! admitted events, so an event the state refuses ends the replay with
//! [`ReplayError::Refused`], as every reader of a log did before this type existed.
//!
//! Around each fold, an [`Observer`] sees the event with its [`Step`] (seq, hash, author, the
//! frontier) and the state: [`Observer::before`] with the state the event is folded into,
//! [`Observer::after`] with the state it made. Several observers are one: a tuple, or `&mut`.
//! [`Sampled`] turns a [`Sample`] into an observer that samples the state at tick
//! boundaries.
//!
//! Entries come from a [`LedgerReader`] ([`Replay::read`]: the reader checks each one against
//! its stored hash and the chain) or one at a time ([`Replay::push`] with the hash the caller's
//! source vouches for, [`Replay::push_entry`] hashing it here). A replay starts at genesis
//! ([`Replay::genesis`]) or at a verified checkpoint's state and frontier
//! ([`Replay::resume`]).
//!
//! Where the caller must look at an entry between its checks and its fold (the audit checks a
//! checkpoint's roots against the state before it), [`Replay::check`], [`Replay::decode`] and
//! [`Replay::fold`] are the three steps of [`Replay::push`].

use fabric_events::{DecodeError, Entry, Event, Hash32, PublicKey};
use fabric_ledger::{Frontier, LedgerError, LedgerReader};
use fabric_projections::{ApplyError, State};
use thiserror::Error;

/// Why a replay stopped.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The log could not be read, or a stored entry failed its hash or chain check.
    #[error("could not read the log: {0}")]
    Read(#[from] LedgerError),
    /// An entry is not the next one.
    #[error("entry {expected} is missing: the next one says it is seq {found}")]
    Gap {
        /// The seq the replay expected.
        expected: u64,
        /// The seq the entry has.
        found: u64,
    },
    /// An entry's `prev` is not the hash of the entry before it.
    #[error("entry {seq}'s prev is not the hash of entry {}", seq.wrapping_sub(1))]
    Link {
        /// The entry.
        seq: u64,
    },
    /// An entry's signed bytes are not a canonical event.
    #[error("entry {seq} is not a canonical event: {source}")]
    Decode {
        /// The entry.
        seq: u64,
        /// Why.
        source: DecodeError,
    },
    /// The state refuses an event: the authority table, or no fit with the state.
    #[error("entry {seq} ({kind}) is not admissible: {source}")]
    Refused {
        /// The entry.
        seq: u64,
        /// The event's kind.
        kind: &'static str,
        /// Why.
        source: ApplyError,
    },
}

impl ReplayError {
    /// The entry the error is about, when it is about one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Self::Read(error) => ledger_error_seq(error),
            Self::Gap { expected, .. } => Some(*expected),
            Self::Link { seq } | Self::Decode { seq, .. } | Self::Refused { seq, .. } => Some(*seq),
        }
    }
}

/// The entry a ledger error names, when it names one.
pub(crate) fn ledger_error_seq(error: &LedgerError) -> Option<u64> {
    match error {
        LedgerError::BrokenChain { seq }
        | LedgerError::CorruptEntry { seq, .. }
        | LedgerError::Missing { seq } => Some(*seq),
        LedgerError::CorruptBlock { first_seq, .. } => Some(*first_seq),
        _ => None,
    }
}

/// One entry of the log as a replay folds it.
#[derive(Clone, Copy, Debug)]
pub struct Step<'a> {
    /// Its seq.
    pub seq: u64,
    /// Its hash (the Merkle leaf).
    pub hash: Hash32,
    /// Who signed it.
    pub author: &'a PublicKey,
    /// The event.
    pub event: &'a Event,
    /// The Merkle frontier: in [`Observer::before`], of the `seq` entries before this one; in
    /// [`Observer::after`], with this one.
    pub tree: &'a Frontier,
}

/// Sees each event of a replay around its fold. Both methods do nothing by default.
pub trait Observer {
    /// The event, with the state it is about to be folded into.
    fn before(&mut self, step: &Step<'_>, state: &State) {
        let _ = (step, state);
    }

    /// The event, with the state after its fold.
    fn after(&mut self, step: &Step<'_>, state: &State) {
        let _ = (step, state);
    }
}

/// No observer.
impl Observer for () {}

impl<O: Observer + ?Sized> Observer for &mut O {
    fn before(&mut self, step: &Step<'_>, state: &State) {
        (**self).before(step, state);
    }

    fn after(&mut self, step: &Step<'_>, state: &State) {
        (**self).after(step, state);
    }
}

macro_rules! tuple_observer {
    ($($name:ident),+) => {
        /// Each observer in turn, in order.
        impl<$($name: Observer),+> Observer for ($($name,)+) {
            #[allow(non_snake_case)]
            fn before(&mut self, step: &Step<'_>, state: &State) {
                let ($($name,)+) = self;
                $($name.before(step, state);)+
            }

            #[allow(non_snake_case)]
            fn after(&mut self, step: &Step<'_>, state: &State) {
                let ($($name,)+) = self;
                $($name.after(step, state);)+
            }
        }
    };
}

tuple_observer!(A);
tuple_observer!(A, B);
tuple_observer!(A, B, C);
tuple_observer!(A, B, C, D);
tuple_observer!(A, B, C, D, E);
tuple_observer!(A, B, C, D, E, F);

/// A fold of the log into the projections; see the module documentation.
#[derive(Clone, Debug)]
pub struct Replay {
    state: State,
    tree: Frontier,
    /// The hash the next entry's `prev` must be (`None`: not known, after a checkpoint).
    prev: Option<Hash32>,
}

impl Default for Replay {
    fn default() -> Self {
        Self::genesis()
    }
}

impl Replay {
    /// A replay of the log from its first entry: the empty state and tree.
    pub fn genesis() -> Self {
        Self {
            state: State::new(),
            tree: Frontier::new(),
            prev: Some(Hash32::default()),
        }
    }

    /// A replay that goes on after the first `tree.size()` entries, whose state is `state`
    /// and whose Merkle frontier is `tree` (a checkpoint that verified: see
    /// [`load_checkpoint`](crate::load_checkpoint)). `prev` is the hash of the last of those
    /// entries when known; when it is not (a snapshot keeps only the frontier), the first
    /// entry's link is taken as it is and vouched for by the root its leaf gives.
    pub fn resume(state: State, tree: Frontier, prev: Option<Hash32>) -> Self {
        Self { state, tree, prev }
    }

    /// The seq of the next entry.
    pub fn next_seq(&self) -> u64 {
        self.tree.size()
    }

    /// The state after the entries folded so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The Merkle frontier of the entries folded so far (its root is their Merkle root).
    pub fn tree(&self) -> &Frontier {
        &self.tree
    }

    /// The hash of the last entry folded, when known.
    pub fn last_hash(&self) -> Option<Hash32> {
        self.prev
    }

    /// The state, ending the replay.
    pub fn into_state(self) -> State {
        self.state
    }

    /// The state and the Merkle frontier, ending the replay.
    pub fn into_parts(self) -> (State, Frontier) {
        (self.state, self.tree)
    }

    /// Checks that `entry` is the next one: its seq, and its `prev` link when the hash before
    /// it is known.
    pub fn check(&self, entry: &Entry) -> Result<(), ReplayError> {
        let expected = self.next_seq();
        if entry.seq != expected {
            return Err(ReplayError::Gap {
                expected,
                found: entry.seq,
            });
        }
        if self.prev.is_some_and(|prev| prev != entry.prev) {
            return Err(ReplayError::Link { seq: entry.seq });
        }
        Ok(())
    }

    /// Decodes the event of `entry`.
    pub fn decode(entry: &Entry) -> Result<Event, ReplayError> {
        entry.event().map_err(|source| ReplayError::Decode {
            seq: entry.seq,
            source,
        })
    }

    /// Folds the next entry, whose hash is `hash` and whose decoded event is `event`: checks it
    /// ([`Replay::check`]), shows it to `observer` before, admits it into the state, pushes its
    /// leaf, and shows it to `observer` after. On an error nothing changed.
    pub fn fold(
        &mut self,
        hash: Hash32,
        entry: &Entry,
        event: &Event,
        mut observer: impl Observer,
    ) -> Result<(), ReplayError> {
        self.check(entry)?;
        let step = Step {
            seq: entry.seq,
            hash,
            author: &entry.author,
            event,
            tree: &self.tree,
        };
        observer.before(&step, &self.state);
        self.state
            .admit(&entry.author, event)
            .map_err(|source| ReplayError::Refused {
                seq: entry.seq,
                kind: event.kind().as_str(),
                source,
            })?;
        self.tree.push(hash);
        self.prev = Some(hash);
        let step = Step {
            seq: entry.seq,
            hash,
            author: &entry.author,
            event,
            tree: &self.tree,
        };
        observer.after(&step, &self.state);
        Ok(())
    }

    /// Checks, decodes and folds the next entry, whose hash `hash` its source computed or
    /// checked (a [`LedgerReader`] checks every entry against its stored hash); returns its
    /// event.
    pub fn push(
        &mut self,
        hash: Hash32,
        entry: &Entry,
        observer: impl Observer,
    ) -> Result<Event, ReplayError> {
        self.check(entry)?;
        let event = Self::decode(entry)?;
        self.fold(hash, entry, &event, observer)?;
        Ok(event)
    }

    /// [`Replay::push`], hashing the entry here.
    pub fn push_entry(
        &mut self,
        entry: &Entry,
        observer: impl Observer,
    ) -> Result<Event, ReplayError> {
        self.push(entry.hash(), entry, observer)
    }

    /// Reads and folds the entries of `reader` from the next seq up to `end` (or the end of the
    /// log, when it is shorter); returns how many were folded.
    pub fn read(
        &mut self,
        reader: &LedgerReader,
        end: u64,
        mut observer: impl Observer,
    ) -> Result<u64, ReplayError> {
        let start = self.next_seq();
        let mut entries = reader.entries(start..end);
        while let Some((hash, entry)) = entries.next_with_hash()? {
            self.push(hash, &entry, &mut observer)?;
        }
        Ok(self.next_seq() - start)
    }
}

/// What [`Sampled`] does at each sample tick.
pub trait Sample {
    /// The state after `tick` (the state has not changed since that tick's last event).
    fn sample(&mut self, tick: u64, state: &State);
}

/// An observer that samples the state at tick 0, at every multiple of `every_ticks`, and (with
/// [`Sampled::finish`]) at the last tick: the telemetry of a run's `shards.json` and report
/// charts, a function of the log alone. A tick is sampled when the first event of a later tick
/// arrives, with the state before that event; events whose tick is below one already seen (a
/// served client's submission signed at an older tick) change nothing. `inner` is an observer
/// too: it sees every event as well.
#[derive(Clone, Debug)]
pub struct Sampled<S> {
    every_ticks: u64,
    next_tick: u64,
    last_sampled: Option<u64>,
    /// What samples (and observes).
    pub inner: S,
}

impl<S: Sample> Sampled<S> {
    /// Samples every `every_ticks` ticks (at least 1) into `inner`.
    pub fn new(every_ticks: u64, inner: S) -> Self {
        Self {
            every_ticks: every_ticks.max(1),
            next_tick: 0,
            last_sampled: None,
            inner,
        }
    }

    /// Samples every due tick before `tick`.
    fn sample_before(&mut self, tick: u64, state: &State) {
        while self.next_tick < tick {
            self.inner.sample(self.next_tick, state);
            self.last_sampled = Some(self.next_tick);
            self.next_tick += self.every_ticks;
        }
    }

    /// After the replay: samples every due tick up to and including `last_tick` (the run's
    /// last tick) and `last_tick` itself, from `state` (the replay's final state).
    pub fn finish(&mut self, last_tick: u64, state: &State) {
        self.sample_before(last_tick + 1, state);
        if self.last_sampled != Some(last_tick) {
            self.inner.sample(last_tick, state);
            self.last_sampled = Some(last_tick);
        }
    }

    /// The sampler, ending the sampling.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Sample + ?Sized> Sample for &mut S {
    fn sample(&mut self, tick: u64, state: &State) {
        (**self).sample(tick, state);
    }
}

macro_rules! tuple_sample {
    ($($name:ident),+) => {
        /// Each sampler in turn, in order.
        impl<$($name: Sample),+> Sample for ($($name,)+) {
            #[allow(non_snake_case)]
            fn sample(&mut self, tick: u64, state: &State) {
                let ($($name,)+) = self;
                $($name.sample(tick, state);)+
            }
        }
    };
}

tuple_sample!(A);
tuple_sample!(A, B);
tuple_sample!(A, B, C);
tuple_sample!(A, B, C, D);

impl<S: Sample + Observer> Observer for Sampled<S> {
    fn before(&mut self, step: &Step<'_>, state: &State) {
        self.inner.before(step, state);
        self.sample_before(step.event.header.tick, state);
    }

    fn after(&mut self, step: &Step<'_>, state: &State) {
        self.inner.after(step, state);
    }
}

#[cfg(test)]
mod tests {
    use fabric_events::{derive_signing_key, Heartbeat, Role, SignedEvent};

    use super::*;

    /// Counts what it sees.
    #[derive(Default)]
    struct Count {
        before: u64,
        after: u64,
    }

    impl Observer for Count {
        fn before(&mut self, _: &Step<'_>, _: &State) {
            self.before += 1;
        }

        fn after(&mut self, _: &Step<'_>, _: &State) {
            self.after += 1;
        }
    }

    fn heartbeat(seq: u64, prev: Hash32) -> Entry {
        let key = derive_signing_key(7, "replay test node");
        let event = Event::new(
            Role::Node,
            1,
            seq,
            Heartbeat {
                node: "n0".to_owned(),
                running_jobs: 0,
            },
        );
        Entry::new(
            seq,
            prev,
            SignedEvent::sign(&event, &key).expect("small event"),
        )
    }

    #[test]
    fn a_gap_a_broken_link_and_a_refused_event_stop_the_replay_with_nothing_folded() {
        let mut replay = Replay::genesis();
        let mut count = Count::default();
        let gap = replay.push_entry(&heartbeat(1, Hash32::default()), &mut count);
        assert!(
            matches!(
                gap,
                Err(ReplayError::Gap {
                    expected: 0,
                    found: 1
                })
            ),
            "{gap:?}"
        );
        let link = replay.push_entry(&heartbeat(0, Hash32([1; 32])), &mut count);
        assert!(
            matches!(link, Err(ReplayError::Link { seq: 0 })),
            "{link:?}"
        );
        // An unregistered node may say nothing: the authority table refuses it.
        let refused = replay.push_entry(&heartbeat(0, Hash32::default()), &mut count);
        assert!(
            matches!(refused, Err(ReplayError::Refused { seq: 0, .. })),
            "{refused:?}"
        );
        assert_eq!(refused.map(drop).unwrap_err().seq(), Some(0));
        assert_eq!((count.before, count.after), (1, 0));
        assert_eq!(replay.next_seq(), 0);
        assert_eq!(replay.tree().root(), Frontier::new().root());
    }

    /// Records the ticks it samples.
    #[derive(Default)]
    struct Ticks(Vec<u64>);

    impl Sample for Ticks {
        fn sample(&mut self, tick: u64, _: &State) {
            self.0.push(tick);
        }
    }

    impl Observer for Ticks {}

    #[test]
    fn sampling_takes_tick_zero_every_nth_tick_and_the_last() {
        let key = derive_signing_key(7, "replay test node");
        let state = State::new();
        let tree = Frontier::new();
        let mut sampled = Sampled::new(10, Ticks::default());
        for tick in [0, 3, 25, 24, 31] {
            let event = Event::new(
                Role::Node,
                tick,
                tick,
                Heartbeat {
                    node: "n0".to_owned(),
                    running_jobs: 0,
                },
            );
            let author = PublicKey::from(&key.verifying_key());
            let step = Step {
                seq: 0,
                hash: Hash32::default(),
                author: &author,
                event: &event,
                tree: &tree,
            };
            sampled.before(&step, &state);
        }
        sampled.finish(42, &state);
        assert_eq!(sampled.into_inner().0, vec![0, 10, 20, 30, 40, 42]);
    }
}
