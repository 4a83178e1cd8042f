//! The ledger: one writer appending batches, any number of readers.

#[cfg(feature = "writer")]
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use fabric_events::{Entry, Hash32, PublicKey};
#[cfg(feature = "writer")]
use fabric_events::{SignedEvent, SigningKey};

use crate::artifacts::{ArtifactLog, StoredArtifacts, ARTIFACTS_FILE};
#[cfg(feature = "writer")]
use crate::error::AppendError;
use crate::error::LedgerError;
use crate::keys::LedgerKeys;
use crate::merkle::{self, ConsistencyProof, Frontier, InclusionProof};
#[cfg(feature = "writer")]
use crate::storage::BlockWriter;
use crate::storage::{
    block_key, decode_block, key_number, numbered_key, Head, KEY_FORMAT, KEY_HEAD, KEY_LEDGER_KEY,
    PREFIX_ROTATION, PREFIX_TREE_HEAD, STORAGE_FORMAT,
};
use crate::tree_head::SignedTreeHead;
#[cfg(feature = "writer")]
use crate::verify::{VerifiedBatch, Verifier};
#[cfg(feature = "writer")]
use std::sync::Arc;

/// Name of the sled tree holding state snapshots.
pub const SNAPSHOT_TREE: &str = "snapshots";
/// Name of the sled tree holding the NATS outbox's cursor.
pub const OUTBOX_TREE: &str = "outbox";
/// The tree where a follower of a replicated log keeps its place in the stream.
pub const REPLICA_TREE: &str = "replica";
/// Name of the sled tree of `fabric serve`'s artifacts (see [`LedgerReader::artifacts_tree`]).
pub const ARTIFACTS_TREE: &str = "artifacts";
/// Largest chunk of a stored snapshot.
pub const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes of a snapshot manifest before the Merkle frontier: length, chunk count, hash.
const SNAPSHOT_MANIFEST_FIXED_BYTES: usize = 8 + 4 + 32;
/// Snapshot manifests: `m` ‖ tree size (u64 BE).
const PREFIX_SNAPSHOT_MANIFEST: u8 = b'm';
/// Snapshot chunks: `c` ‖ tree size (u64 BE) ‖ chunk index (u32 BE).
const PREFIX_SNAPSHOT_CHUNK: u8 = b'c';

fn snapshot_chunk_key(tree_size: u64, index: u32) -> [u8; 13] {
    let mut key = [0; 13];
    key[0] = PREFIX_SNAPSHOT_CHUNK;
    key[1..9].copy_from_slice(&tree_size.to_be_bytes());
    key[9..].copy_from_slice(&index.to_be_bytes());
    key
}

/// A state snapshot read back from the ledger, checked against its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// The tree size it was taken at (its checkpoint covers that many entries).
    pub tree_size: u64,
    /// The snapshot bytes.
    pub bytes: Vec<u8>,
    /// BLAKE3 of the bytes (the checkpoint's `snapshot_hash`).
    pub hash: Hash32,
    /// The Merkle frontier of the log at `tree_size`: lets a replay go on from here without
    /// reading the entries before it.
    pub frontier: Frontier,
}

/// sled's segment size. sled writes any page larger than a quarter of a segment to a blob
/// file of its own that it never syncs, and a leaf page holds up to 17 values; with blocks and
/// snapshot chunks of at most 64 KiB, 16 MiB segments (a 4 MiB blob threshold) keep every page
/// in the `db` file that the ledger syncs. (sled's default, 512 KiB, put pages of a few blocks
/// in blobs.)
pub const SLED_SEGMENT_BYTES: usize = 16 * 1024 * 1024;

/// The sled settings of a ledger folder. Anything that opens one with sled directly must use
/// them: sled refuses a folder opened with another segment size.
pub fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .segment_size(SLED_SEGMENT_BYTES)
}

/// How long opening waits for a folder whose previous user is still closing it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens sled in `path`. sled releases a folder's lock only once its background flusher has
/// finished with a dropped database, a moment after the drop: opening waits that moment out
/// (up to [`LOCK_WAIT`]) instead of failing. A folder another live process holds still fails,
/// with sled's "could not acquire lock" error.
pub fn open_sled(path: &Path) -> Result<sled::Db, LedgerError> {
    let started = std::time::Instant::now();
    loop {
        match sled_config(path).open() {
            Ok(db) => return Ok(db),
            Err(err) if is_lock_contention(&err) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(cause) => {
                return Err(LedgerError::Storage {
                    context: "opening the ledger",
                    cause,
                })
            }
        }
    }
}

/// Whether sled failed because another handle holds the folder's lock.
fn is_lock_contention(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// Most events one append (one group commit) may hold.
pub const BATCH_EVENTS_MAX: usize = 262_144;
/// Authors whose decompressed keys are kept.
pub(crate) const KEY_CACHE_AUTHORS_MAX: usize = 1 << 16;

#[cfg(feature = "writer")]
/// What a successful append tells its caller: the batch is durable on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendReceipt {
    /// Seq given to the batch's first event.
    pub first_seq: u64,
    /// Events appended.
    pub count: u64,
    /// Hash of the last appended entry.
    pub last_hash: Hash32,
    /// The signed tree head after the batch.
    pub tree_head: SignedTreeHead,
}

#[cfg(feature = "writer")]
/// What opening found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Whether the folder was new.
    pub created: bool,
    /// Stored blocks past the durable head that were discarded (a batch that was never
    /// acknowledged).
    pub discarded_blocks: u64,
}

#[cfg(feature = "writer")]
/// The append-only log. Exactly one `Ledger` may be open on a folder (sled locks it); it is
/// the single sequencer. Reads go through [`LedgerReader`], which it hands out.
pub struct Ledger {
    reader: LedgerReader,
    db_file: File,
    /// The genesis key and its rotations: which key signs the tree head of each size.
    keys: LedgerKeys,
    /// The secrets the writer holds: the key it was opened with and the staged ones. The one
    /// of the key in force signs each tree head.
    secrets: Vec<SigningKey>,
    head: Head,
    tree_head: SignedTreeHead,
    verifier: Verifier,
    poisoned: Option<String>,
    open_report: OpenReport,
    /// The artifact store whose writes each commit makes durable before the log's.
    artifacts: Option<Arc<ArtifactLog>>,
}

#[cfg(feature = "writer")]
/// A batch given its place, not yet written.
struct Staged {
    first_seq: u64,
    head: Head,
    keys: LedgerKeys,
    sled_batch: sled::Batch,
}

#[cfg(feature = "writer")]
impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.reader.path)
            .field("size", &self.head.size)
            .field("root", &self.tree_head.root)
            .finish_non_exhaustive()
    }
}

fn storage(context: &'static str) -> impl FnOnce(sled::Error) -> LedgerError {
    move |cause| LedgerError::Storage { context, cause }
}

#[cfg(feature = "writer")]
impl Ledger {
    /// Opens (or creates) the ledger in `path` with `ledger_key`, which names a new ledger and
    /// signs its tree heads while it is the key in force.
    ///
    /// Opening checks the stored format, that the folder belongs to this ledger key (the key
    /// named at genesis or one it was rotated to: the writer signs only while it holds the
    /// secret of the key in force, see [`Ledger::stage_keys`]), that the head's Merkle
    /// frontier gives the root of the last signed tree head and that the head's last hash is
    /// the hash of the last stored entry. Blocks past the head (a batch whose commit never
    /// completed) are removed.
    pub fn open(path: impl AsRef<Path>, ledger_key: SigningKey) -> Result<Self, LedgerError> {
        Self::open_as(path.as_ref(), Some(ledger_key))
    }

    /// Opens the ledger in `path` as a replica of a replicated log (docs/FORMAT.md §16): it
    /// holds no secret, signs nothing, and stores only what its sequencer signed
    /// ([`Ledger::append_replicated`]). The folder must hold a ledger already (a copy of the
    /// fabric's folder: its genesis key is the root of trust); the same checks as
    /// [`Ledger::open`] run on it, and the same repairs.
    pub fn open_replica(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        Self::open_as(path.as_ref(), None)
    }

    fn open_as(path: &Path, ledger_key: Option<SigningKey>) -> Result<Self, LedgerError> {
        let path = path.to_path_buf();
        let db = open_sled(&path)?;
        // sled's Db::flush writes with sync_file_range and never fsyncs; the ledger syncs
        // sled's data file itself before it acknowledges anything.
        let db_file_path = path.join("db");
        let db_file = File::open(&db_file_path).map_err(|cause| LedgerError::Io {
            path: db_file_path,
            cause,
        })?;
        let reader = LedgerReader {
            db,
            path: path.clone(),
        };
        let public = ledger_key
            .as_ref()
            .map(|key| PublicKey::from(&key.verifying_key()));
        let mut report = OpenReport::default();
        let (head, tree_head, keys) = match reader
            .db
            .get(KEY_FORMAT)
            .map_err(storage("reading the format"))?
        {
            None => {
                let Some(ledger_key) = &ledger_key else {
                    return Err(LedgerError::NoLedger { path });
                };
                if reader.db.iter().next().is_some() {
                    return Err(LedgerError::UnsupportedFormat {
                        path,
                        found: "none (the folder holds other data)".to_owned(),
                        supported: STORAGE_FORMAT,
                    });
                }
                report.created = true;
                let head = Head::empty();
                let tree_head = SignedTreeHead::sign(0, head.frontier.root(), ledger_key);
                let public = PublicKey::from(&ledger_key.verifying_key());
                (head, tree_head, LedgerKeys::new(public))
            }
            Some(format) => {
                if format.as_ref() != STORAGE_FORMAT.to_le_bytes() {
                    return Err(LedgerError::UnsupportedFormat {
                        path,
                        found: format!("{:?}", format.as_ref()),
                        supported: STORAGE_FORMAT,
                    });
                }
                let keys = reader.ledger_keys()?;
                if let Some(public) = public.filter(|public| !keys.held(public)) {
                    return Err(LedgerError::KeyMismatch {
                        path,
                        stored: keys.genesis(),
                        given: public,
                    });
                }
                let head = reader.head()?;
                let tree_head = reader.verified_tree_head(&head, &keys)?;
                (head, tree_head, keys)
            }
        };
        let mut ledger = Self {
            tree_head,
            reader,
            db_file,
            keys,
            secrets: ledger_key.into_iter().collect(),
            head,
            verifier: Verifier::new(),
            poisoned: None,
            open_report: report,
            artifacts: None,
        };
        if ledger.open_report.created {
            ledger.initialise()?;
        } else {
            ledger.check_and_repair_tail()?;
            ledger.remove_orphan_snapshots()?;
        }
        Ok(ledger)
    }

    /// Writes the format, the key, the empty head and the empty tree's signed head, durably.
    fn initialise(&mut self) -> Result<(), LedgerError> {
        let mut batch = sled::Batch::default();
        batch.insert(KEY_FORMAT, &STORAGE_FORMAT.to_le_bytes());
        batch.insert(KEY_LEDGER_KEY, self.keys.genesis().as_bytes());
        batch.insert(KEY_HEAD, self.head.encode());
        insert_tree_head(&mut batch, &self.tree_head);
        self.commit(batch)
    }

    /// Checks the head's last hash against the last stored entry, and removes blocks and tree
    /// heads past the head.
    fn check_and_repair_tail(&mut self) -> Result<(), LedgerError> {
        let size = self.head.size;
        if size > 0 {
            let last = self.reader.get(size - 1)?;
            if last.hash() != self.head.last_hash {
                return Err(LedgerError::CorruptHead(format!(
                    "last hash does not match stored entry {}",
                    size - 1
                )));
            }
        }
        let mut batch = sled::Batch::default();
        let mut stale = false;
        for key in self
            .reader
            .db
            .range(block_key(size)..=block_key(u64::MAX))
            .keys()
        {
            batch.remove(key.map_err(storage("scanning for blocks past the head"))?);
            self.open_report.discarded_blocks += 1;
            stale = true;
        }
        for key in self
            .reader
            .db
            .range(
                numbered_key(PREFIX_TREE_HEAD, size + 1)..=numbered_key(PREFIX_TREE_HEAD, u64::MAX),
            )
            .keys()
        {
            batch.remove(key.map_err(storage("scanning for tree heads past the head"))?);
            stale = true;
        }
        for key in self
            .reader
            .db
            .range(numbered_key(PREFIX_ROTATION, size)..=numbered_key(PREFIX_ROTATION, u64::MAX))
            .keys()
        {
            batch.remove(key.map_err(storage("scanning for rotations past the head"))?);
            stale = true;
        }
        if stale {
            self.commit(batch)?;
        }
        Ok(())
    }

    /// Makes every later commit sync `artifacts` before the log's own data, so that an
    /// artifact stored before an append is durable when the append is (a served fabric's
    /// inputs and outputs, docs/FORMAT.md §7).
    pub fn sync_with(&mut self, artifacts: Arc<ArtifactLog>) {
        self.artifacts = Some(artifacts);
    }

    /// What opening found.
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    /// A reader over the same storage (cheap to clone, usable from other threads).
    pub fn reader(&self) -> LedgerReader {
        self.reader.clone()
    }

    /// Entries in the log.
    pub fn len(&self) -> u64 {
        self.head.size
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.head.size == 0
    }

    /// Hash of the last entry (zeros when empty): the next entry's `prev`.
    pub fn last_hash(&self) -> Hash32 {
        self.head.last_hash
    }

    /// The Merkle root of the whole log.
    pub fn root(&self) -> Hash32 {
        self.tree_head.root
    }

    /// The latest signed tree head.
    pub fn tree_head(&self) -> SignedTreeHead {
        self.tree_head
    }

    /// The ledger key named at genesis: the root of trust that restores, audits and proofs
    /// follow every rotation from ([`LedgerReader::ledger_keys`]).
    pub fn ledger_key(&self) -> PublicKey {
        self.keys.genesis()
    }

    /// The ledger key in force now (it signs the next tree head).
    pub fn current_ledger_key(&self) -> PublicKey {
        self.keys.current()
    }

    /// The genesis key and its rotations so far.
    pub fn ledger_keys(&self) -> &LedgerKeys {
        &self.keys
    }

    /// Gives the writer more secrets: the one whose public key a ledger rotation names signs
    /// the tree heads from that rotation on. Fails when, after them, the writer still holds no
    /// secret of the key in force.
    pub fn stage_keys(
        &mut self,
        staged: impl IntoIterator<Item = SigningKey>,
    ) -> Result<(), LedgerError> {
        self.secrets.extend(staged);
        self.signer(&self.keys.current()).map(|_| ())
    }

    /// Gives the writer the secret of a key that may come into force (a replica's own
    /// sequencer key, before it takes over): unlike [`Ledger::stage_keys`], the key in force
    /// need not be among those held.
    pub fn hold(&mut self, secret: SigningKey) {
        self.secrets.push(secret);
    }

    /// The secret of `key`, among those held.
    fn secret_of(&self, key: &PublicKey) -> Option<&SigningKey> {
        self.secrets
            .iter()
            .find(|secret| secret.verifying_key().as_bytes() == key.as_bytes())
    }

    /// The secret of the key in force, `key`.
    fn signer(&self, key: &PublicKey) -> Result<&SigningKey, LedgerError> {
        self.secret_of(key)
            .ok_or_else(|| LedgerError::NoCurrentSecret {
                current: *key,
                rotated_at: self.keys.last_rotation().unwrap_or(0),
            })
    }

    /// Reads one entry.
    pub fn get(&self, seq: u64) -> Result<Entry, LedgerError> {
        self.reader.get(seq)
    }

    /// Reads a range of entries, checking the chain as it goes.
    pub fn entries(&self, range: Range<u64>) -> Entries {
        self.reader.entries(range)
    }

    /// Appends a batch of signed events as one group commit.
    ///
    /// Every event is verified first (canonical decoding within the size limit, valid key,
    /// valid signature; batch verification on all cores). If any is refused, nothing is stored
    /// and the error lists every refused event. Otherwise the events get consecutive seqs,
    /// are chained, stored in blocks together with the new head and signed tree head in one
    /// atomic sled batch, flushed and synced to disk; only then does `append` return.
    pub fn append(&mut self, batch: &[SignedEvent]) -> Result<AppendReceipt, AppendError> {
        self.check_writable()?;
        self.verifier.check(batch)?;
        Ok(self.commit_events(batch)?)
    }

    /// Appends a batch verified beforehand (see [`Verifier`]): the same group commit as
    /// [`Ledger::append`] without verifying again. Lets a caller verify batch n+1 on other
    /// threads while this commits batch n.
    pub fn append_verified(&mut self, batch: &VerifiedBatch) -> Result<AppendReceipt, LedgerError> {
        self.check_writable()?;
        self.commit_events(batch.events())
    }

    /// Appends entries a replicated log's sequencer sequenced, with the tree head it signed at
    /// their end: how a replica copies the log (docs/FORMAT.md §16). Each entry must be the
    /// next one (its seq, and its `prev` the hash of the entry before), every signature is
    /// verified as by [`Ledger::append`], and the tree head must be at the new size, give the
    /// root of the entries, and be signed by the ledger key in force at that size (rotations
    /// in the batch followed). Otherwise nothing is stored. Durable when it returns.
    pub fn append_replicated(
        &mut self,
        entries: &[Entry],
        tree_head: &SignedTreeHead,
    ) -> Result<AppendReceipt, AppendError> {
        self.check_writable()?;
        let mut prev = self.head.last_hash;
        for (offset, entry) in entries.iter().enumerate() {
            let seq = self.head.size + offset as u64;
            let not_next = |detail: String| AppendError::NotNext { seq, detail };
            if entry.seq != seq {
                return Err(not_next(format!("the entry says seq {}", entry.seq)));
            }
            if entry.prev != prev {
                return Err(not_next(
                    "its prev is not the hash of the entry before it".to_owned(),
                ));
            }
            prev = entry.hash();
        }
        let batch: Vec<SignedEvent> = entries.iter().map(Entry::signed_event).collect();
        self.verifier.check(&batch)?;
        self.commit_replicated(&batch, tree_head)
    }

    /// Cuts the log back to its first `size` entries: a replica's tail that never reached its
    /// replicated log's quorum, so was never acknowledged (docs/FORMAT.md §16.4). `head` is
    /// the tree head the replicated log holds at `size` (signed by its sequencer): it must
    /// give the root of those entries and verify with the ledger key in force at `size`.
    /// Entries, tree heads, rotations and snapshots past `size` go in one atomic batch, made
    /// durable before this returns. Returns how many entries were discarded.
    pub fn discard_after(&mut self, size: u64, head: &SignedTreeHead) -> Result<u64, LedgerError> {
        self.check_writable()?;
        let discarded = self
            .head
            .size
            .checked_sub(size)
            .ok_or(LedgerError::OutOfRange {
                seq: size,
                size: self.head.size,
            })?;
        if discarded == 0 {
            return Ok(0);
        }
        let mut frontier = Frontier::new();
        for leaf in self.reader.leaf_hashes(0..size)? {
            frontier.push(leaf);
        }
        let key = self.keys.at(size);
        if head.tree_size != size || head.root != frontier.root() || head.verify(&key).is_err() {
            return Err(LedgerError::CorruptHead(format!(
                "the tree head given to cut the log back to {size} entries is not theirs, \
                 signed by {key}"
            )));
        }
        let last_hash = match size {
            0 => Hash32::default(),
            _ => self.reader.get(size - 1)?.hash(),
        };
        let mut batch = sled::Batch::default();
        // The block holding seq `size` keeps the entries before it.
        let mut first_removed = size;
        if size > 0 {
            let (first_seq, entries) = self.reader.block_containing(size - 1, false)?;
            if first_seq + entries.len() as u64 > size {
                let mut writer = BlockWriter::new();
                let mut prev = entries[0].1.prev;
                for (_, entry) in entries.iter().take((size - first_seq) as usize) {
                    prev = writer.push(entry.seq, &prev, &entry.signed_event());
                }
                for (block_first_seq, block) in writer.finish() {
                    batch.insert(&block_key(block_first_seq), block);
                }
                first_removed = first_seq + 1;
            }
        }
        let ranges = [
            (block_key(first_removed), block_key(u64::MAX)),
            (
                numbered_key(PREFIX_TREE_HEAD, size + 1),
                numbered_key(PREFIX_TREE_HEAD, u64::MAX),
            ),
            (
                numbered_key(PREFIX_ROTATION, size),
                numbered_key(PREFIX_ROTATION, u64::MAX),
            ),
        ];
        for (from, to) in ranges {
            for stored in self.reader.db.range(from.to_vec()..=to.to_vec()).keys() {
                batch.remove(stored.map_err(storage("scanning what is past the cut"))?);
            }
        }
        let cut = Head {
            size,
            last_hash,
            frontier,
        };
        batch.insert(KEY_HEAD, cut.encode());
        insert_tree_head(&mut batch, head);
        self.commit(batch)?;
        self.head = cut;
        self.tree_head = *head;
        self.keys = self.reader.ledger_keys()?;
        self.remove_orphan_snapshots()?;
        Ok(discarded)
    }

    fn check_writable(&self) -> Result<(), LedgerError> {
        match &self.poisoned {
            Some(reason) => Err(LedgerError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Sequences, chains, packs and durably commits events that have been verified, with a
    /// tree head the writer signs with the secret of the key in force.
    fn commit_events(&mut self, batch: &[SignedEvent]) -> Result<AppendReceipt, LedgerError> {
        let staged = self.stage(batch, true)?;
        let signer = self.signer(&staged.keys.at(staged.head.size))?;
        let tree_head = SignedTreeHead::sign(staged.head.size, staged.head.frontier.root(), signer);
        self.finish(staged, tree_head)
    }

    /// [`Ledger::commit_events`] with the tree head a replicated log's sequencer signed: it
    /// must be at the batch's end, give its root, and verify with the key in force there.
    fn commit_replicated(
        &mut self,
        batch: &[SignedEvent],
        given: &SignedTreeHead,
    ) -> Result<AppendReceipt, AppendError> {
        let staged = self.stage(batch, false)?;
        let head = &staged.head;
        let at_end = |detail: String| AppendError::NotNext {
            seq: head.size,
            detail,
        };
        if given.tree_size != head.size || given.root != head.frontier.root() {
            return Err(at_end(format!(
                "its tree head says size {} root {}, the entries give size {} root {}",
                given.tree_size,
                given.root,
                head.size,
                head.frontier.root()
            )));
        }
        given.verify(&staged.keys.at(head.size)).map_err(|error| {
            at_end(format!(
                "its tree head is not signed by the ledger key in force: {error}"
            ))
        })?;
        Ok(self.finish(staged, *given)?)
    }

    /// Gives a verified batch its seqs and links, packs its blocks and follows its ledger-key
    /// rotations, writing nothing yet. `own_secrets`: the writer signs what follows, so a
    /// rotation to a key whose secret it does not hold is refused here, before anything is
    /// written, and the ledger stays writable.
    fn stage(&self, batch: &[SignedEvent], own_secrets: bool) -> Result<Staged, LedgerError> {
        debug_assert!(!batch.is_empty() && batch.len() <= BATCH_EVENTS_MAX);
        let first_seq = self.head.size;
        let mut frontier = self.head.frontier.clone();
        let mut prev = self.head.last_hash;
        let mut writer = BlockWriter::new();
        let mut keys = self.keys.clone();
        let mut sled_batch = sled::Batch::default();
        for (offset, event) in batch.iter().enumerate() {
            let seq = first_seq + offset as u64;
            if let Some(key) = crate::keys::rotation_in(&event.signed) {
                if own_secrets && self.secret_of(&key).is_none() {
                    return Err(LedgerError::RotationWithoutSecret { seq, key });
                }
                keys.push(seq, key);
                sled_batch.insert(&numbered_key(PREFIX_ROTATION, seq), key.as_bytes());
            }
            prev = writer.push(seq, &prev, event);
            frontier.push(prev);
        }
        for (block_first_seq, block) in writer.finish() {
            sled_batch.insert(&block_key(block_first_seq), block);
        }
        Ok(Staged {
            first_seq,
            head: Head {
                size: first_seq + batch.len() as u64,
                last_hash: prev,
                frontier,
            },
            keys,
            sled_batch,
        })
    }

    /// Commits a staged batch with its tree head durably, and makes it the head.
    fn finish(
        &mut self,
        staged: Staged,
        tree_head: SignedTreeHead,
    ) -> Result<AppendReceipt, LedgerError> {
        let Staged {
            first_seq,
            head,
            keys,
            mut sled_batch,
        } = staged;
        sled_batch.insert(KEY_HEAD, head.encode());
        insert_tree_head(&mut sled_batch, &tree_head);
        self.commit(sled_batch)?;
        let receipt = AppendReceipt {
            first_seq,
            count: head.size - first_seq,
            last_hash: head.last_hash,
            tree_head,
        };
        self.head = head;
        self.tree_head = tree_head;
        self.keys = keys;
        debug_assert_eq!(self.head.frontier.size(), self.head.size);
        Ok(receipt)
    }

    /// Applies a batch atomically and makes it durable: sled flush, then fdatasync of sled's
    /// data file. A failure poisons the ledger: after a failed sync the kernel may have dropped
    /// the dirty pages, so only a reopen knows what is on disk.
    fn commit(&mut self, batch: sled::Batch) -> Result<(), LedgerError> {
        let result = (|| {
            // An entry may name an artifact written before it: the artifact is durable first.
            if let Some(artifacts) = &self.artifacts {
                artifacts.sync()?;
            }
            self.reader
                .db
                .apply_batch(batch)
                .map_err(storage("writing a batch"))?;
            self.reader
                .db
                .flush()
                .map_err(storage("flushing a batch"))?;
            self.db_file.sync_data().map_err(|cause| LedgerError::Io {
                path: self.reader.path.join("db"),
                cause,
            })
        })();
        if let Err(err) = &result {
            self.poisoned = Some(err.to_string());
        }
        result
    }

    /// Stores a state snapshot taken at the current head (`tree_size` must be the log's size)
    /// in the `snapshots` tree and returns its BLAKE3 hash. The chunks (at most
    /// [`SNAPSHOT_CHUNK_BYTES`] each: sled keeps larger values in files it never syncs) and the
    /// manifest go in one atomic sled batch under keys no other snapshot uses, so a snapshot is
    /// never written in place and a crash leaves either all of it or none. It becomes durable
    /// with the next append's flush and sync: store it just before appending the `Checkpoint`
    /// event that names its hash. Layout: docs/FORMAT.md §7.
    pub fn store_snapshot(&mut self, tree_size: u64, bytes: &[u8]) -> Result<Hash32, LedgerError> {
        self.check_writable()?;
        if tree_size != self.head.size {
            return Err(LedgerError::SnapshotNotAtHead {
                tree_size,
                size: self.head.size,
            });
        }
        let tree = self.reader.snapshot_tree()?;
        let hash = Hash32(*blake3::hash(bytes).as_bytes());
        let mut batch = sled::Batch::default();
        let mut chunks = 0u32;
        for (index, chunk) in bytes.chunks(SNAPSHOT_CHUNK_BYTES).enumerate() {
            batch.insert(&snapshot_chunk_key(tree_size, index as u32), chunk);
            chunks += 1;
        }
        let frontier = self.head.frontier.nodes();
        let mut manifest = Vec::with_capacity(SNAPSHOT_MANIFEST_FIXED_BYTES + 32 * frontier.len());
        manifest.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        manifest.extend_from_slice(&chunks.to_le_bytes());
        manifest.extend_from_slice(hash.as_bytes());
        for node in frontier {
            manifest.extend_from_slice(node.as_bytes());
        }
        batch.insert(&numbered_key(PREFIX_SNAPSHOT_MANIFEST, tree_size), manifest);
        tree.apply_batch(batch)
            .map_err(storage("writing a snapshot"))?;
        Ok(hash)
    }

    /// Removes snapshots at or past the head: stored for a checkpoint whose append never
    /// committed, so nothing refers to them.
    fn remove_orphan_snapshots(&mut self) -> Result<(), LedgerError> {
        let size = self.head.size;
        let tree = self.reader.snapshot_tree()?;
        let mut batch = sled::Batch::default();
        let mut stale = false;
        for key in tree
            .range(numbered_key(PREFIX_SNAPSHOT_MANIFEST, size)..)
            .keys()
            .chain(
                tree.range(snapshot_chunk_key(size, 0)..snapshot_chunk_key(u64::MAX, u32::MAX))
                    .keys(),
            )
        {
            batch.remove(key.map_err(storage("scanning for snapshots past the head"))?);
            stale = true;
        }
        if stale {
            tree.apply_batch(batch)
                .map_err(storage("removing snapshots past the head"))?;
            self.commit(sled::Batch::default())?;
        }
        Ok(())
    }

    /// An inclusion proof for entry `seq` in the tree of the first `tree_size` entries, with
    /// that tree's root; see [`LedgerReader::inclusion_proof`].
    pub fn inclusion_proof(
        &self,
        seq: u64,
        tree_size: u64,
    ) -> Result<(InclusionProof, Hash32), LedgerError> {
        self.reader.inclusion_proof(seq, tree_size)
    }

    /// A consistency proof from the tree of the first `old_size` entries to the tree of the
    /// first `new_size`, with both roots; see [`LedgerReader::consistency_proof`].
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<(ConsistencyProof, Hash32, Hash32), LedgerError> {
        self.reader.consistency_proof(old_size, new_size)
    }
}

#[cfg(feature = "writer")]
fn insert_tree_head(batch: &mut sled::Batch, tree_head: &SignedTreeHead) {
    let mut value = Vec::with_capacity(96);
    value.extend_from_slice(tree_head.root.as_bytes());
    value.extend_from_slice(tree_head.signature.as_bytes());
    batch.insert(&numbered_key(PREFIX_TREE_HEAD, tree_head.tree_size), value);
}

/// Read access to a ledger's storage. It sees every batch the writer has applied; a batch is
/// acknowledged (durable) only once the writer's `append` has returned.
#[derive(Clone)]
pub struct LedgerReader {
    db: sled::Db,
    path: PathBuf,
}

impl LedgerReader {
    /// The folder of the ledger.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the stored ledger in `path` for reading only, without a writer (no key to sign
    /// with, nothing repaired): for an auditor's own program. The folder must hold a ledger of
    /// this build's storage format whose head's signed tree head verifies with the stored
    /// ledger key ([`LedgerReader::ledger_key`]) and gives the head's Merkle root. Like the
    /// writer, it takes the folder's lock while open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, LedgerError> {
        let path = path.as_ref().to_path_buf();
        if !path.join("db").is_file() {
            return Err(LedgerError::Io {
                path: path.join("db"),
                cause: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no ledger is stored in this folder",
                ),
            });
        }
        let reader = Self {
            db: open_sled(&path)?,
            path: path.clone(),
        };
        match reader
            .db
            .get(KEY_FORMAT)
            .map_err(storage("reading the format"))?
        {
            Some(format) if format.as_ref() == STORAGE_FORMAT.to_le_bytes() => {}
            found => {
                return Err(LedgerError::UnsupportedFormat {
                    path,
                    found: found.map_or_else(|| "none".to_owned(), |f| format!("{:?}", f.as_ref())),
                    supported: STORAGE_FORMAT,
                })
            }
        }
        let keys = reader.ledger_keys()?;
        reader.verified_tree_head(&reader.head()?, &keys)?;
        Ok(reader)
    }

    /// The ledger key named at genesis, recorded in the folder: it signs tree heads and
    /// checkpoints until the first rotation ([`LedgerReader::ledger_keys`]).
    pub fn ledger_key(&self) -> Result<PublicKey, LedgerError> {
        self.db
            .get(KEY_LEDGER_KEY)
            .map_err(storage("reading the ledger key"))?
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_ref()).ok())
            .map(PublicKey)
            .ok_or_else(|| LedgerError::CorruptHead("ledger key missing".to_owned()))
    }

    pub(crate) fn head(&self) -> Result<Head, LedgerError> {
        let bytes = self
            .db
            .get(KEY_HEAD)
            .map_err(storage("reading the head"))?
            .ok_or_else(|| LedgerError::CorruptHead("head record missing".to_owned()))?;
        Head::decode(&bytes)
    }

    /// The log's size and the Merkle frontier of its entries, from the head record (no entry is
    /// read).
    pub fn head_frontier(&self) -> Result<(u64, Frontier), LedgerError> {
        let head = self.head()?;
        Ok((head.size, head.frontier))
    }

    /// The genesis ledger key and the rotations recorded up to the head, each checked against
    /// its entry: the entry at its seq is an owner command rotating the ledger key to the
    /// recorded key, enveloped by the key in force before it.
    pub fn ledger_keys(&self) -> Result<LedgerKeys, LedgerError> {
        let mut keys = LedgerKeys::new(self.ledger_key()?);
        let size = self.head()?.size;
        for record in self
            .db
            .range(numbered_key(PREFIX_ROTATION, 0)..numbered_key(PREFIX_ROTATION, size))
        {
            let (key, value) = record.map_err(storage("reading the ledger key rotations"))?;
            let seq = key_number(&key)
                .ok_or_else(|| LedgerError::CorruptHead("malformed rotation key".to_owned()))?;
            let corrupt = |detail: String| LedgerError::CorruptRotation { seq, detail };
            let recorded = <[u8; 32]>::try_from(value.as_ref())
                .map(PublicKey)
                .map_err(|_| corrupt(format!("{} bytes, not a 32-byte key", value.len())))?;
            let entry = self.get(seq)?;
            let rotated = crate::keys::rotation_in(&entry.signed);
            if rotated != Some(recorded) {
                return Err(corrupt(format!(
                    "the entry is no rotation of the ledger key to {recorded}"
                )));
            }
            // A takeover is signed by the key it puts in force; a rotation's envelope by the
            // key before it.
            let signer = if crate::keys::is_takeover(&entry.signed) {
                recorded
            } else {
                keys.at(seq)
            };
            if entry.author != signer {
                return Err(corrupt(format!(
                    "it is signed by {}, not by {signer}",
                    entry.author,
                )));
            }
            keys.push(seq, recorded);
        }
        Ok(keys)
    }

    /// The tree head signed at the head's size, checked: signed by the ledger key in force at
    /// that size, and its root is the root of the head's Merkle frontier.
    fn verified_tree_head(
        &self,
        head: &Head,
        keys: &LedgerKeys,
    ) -> Result<SignedTreeHead, LedgerError> {
        let size = head.size;
        let ledger_key = &keys.at(size);
        let stored = self.tree_head_with(size, ledger_key)?.ok_or_else(|| {
            LedgerError::CorruptHead(format!("no signed tree head for the head's size {size}"))
        })?;
        stored
            .verify(ledger_key)
            .map_err(|err| LedgerError::CorruptHead(format!("tree head at size {size}: {err}")))?;
        let frontier_root = head.frontier.root();
        if stored.root != frontier_root {
            return Err(LedgerError::CorruptHead(format!(
                "Merkle frontier gives root {frontier_root}, the signed tree head at size {size} \
                 says {}",
                stored.root
            )));
        }
        Ok(stored)
    }

    /// Entries in the log.
    pub fn len(&self) -> Result<u64, LedgerError> {
        Ok(self.head()?.size)
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> Result<bool, LedgerError> {
        Ok(self.len()? == 0)
    }

    /// Reads one entry, checked against its stored hash and its block's chain.
    pub fn get(&self, seq: u64) -> Result<Entry, LedgerError> {
        let size = self.len()?;
        if seq >= size {
            return Err(LedgerError::OutOfRange { seq, size });
        }
        let (first_seq, entries) = self.block_containing(seq, true)?;
        let position = (seq - first_seq) as usize;
        entries
            .into_iter()
            .nth(position)
            .map(|(_, entry)| entry)
            .ok_or(LedgerError::Missing { seq })
    }

    /// The decoded block that holds `seq`: only up to `seq` when `up_to_seq`, else all of it.
    fn block_containing(
        &self,
        seq: u64,
        up_to_seq: bool,
    ) -> Result<(u64, Vec<(Hash32, Entry)>), LedgerError> {
        let found = self
            .db
            .range(block_key(0)..=block_key(seq))
            .next_back()
            .transpose()
            .map_err(storage("looking up a block"))?;
        let (key, value) = found.ok_or(LedgerError::Missing { seq })?;
        let first_seq = key_number(&key).ok_or(LedgerError::Missing { seq })?;
        let take = up_to_seq.then(|| (seq - first_seq) as usize + 1);
        let entries = decode_block(first_seq, &value, take)?;
        if seq >= first_seq + entries.len() as u64 {
            return Err(LedgerError::Missing { seq });
        }
        Ok((first_seq, entries))
    }

    /// Reads entries in `range` (clamped to the log), checking each against its stored hash,
    /// its seq and its link to the entry before it.
    pub fn entries(&self, range: Range<u64>) -> Entries {
        Entries {
            reader: self.clone(),
            next_seq: range.start,
            end: range.end,
            buffered: std::collections::VecDeque::new(),
            previous_hash: None,
            failed: false,
            size: None,
        }
    }

    /// The entry hashes (Merkle leaves) of a range.
    pub fn leaf_hashes(&self, range: Range<u64>) -> Result<Vec<Hash32>, LedgerError> {
        let mut leaves = Vec::with_capacity((range.end.saturating_sub(range.start)) as usize);
        let mut entries = self.entries(range);
        while let Some((hash, _)) = entries.next_with_hash()? {
            leaves.push(hash);
        }
        Ok(leaves)
    }

    /// The first `tree_size` leaf hashes, read once; an error if any is not stored.
    fn leaves_up_to(&self, tree_size: u64) -> Result<Vec<Hash32>, LedgerError> {
        let leaves = self.leaf_hashes(0..tree_size)?;
        if (leaves.len() as u64) < tree_size {
            return Err(LedgerError::Missing {
                seq: leaves.len() as u64,
            });
        }
        Ok(leaves)
    }

    /// An inclusion proof for entry `seq` in the tree of the first `tree_size` entries
    /// (RFC 9162 §2.1.3), with that tree's root computed from the stored entries.
    ///
    /// Costs O(tree_size): it reads every leaf hash below `tree_size` once. A `tree_size` past
    /// the log is [`LedgerError::OutOfRange`] for its last seq against the log's size; a `seq`
    /// outside the tree is [`LedgerError::OutOfRange`] for `seq` against `tree_size`.
    pub fn inclusion_proof(
        &self,
        seq: u64,
        tree_size: u64,
    ) -> Result<(InclusionProof, Hash32), LedgerError> {
        let size = self.len()?;
        if tree_size > size {
            return Err(LedgerError::OutOfRange {
                seq: tree_size - 1,
                size,
            });
        }
        if seq >= tree_size {
            return Err(LedgerError::OutOfRange {
                seq,
                size: tree_size,
            });
        }
        let leaves = self.leaves_up_to(tree_size)?;
        let proof = merkle::inclusion_proof(&leaves, seq).map_err(|_| LedgerError::OutOfRange {
            seq,
            size: tree_size,
        })?;
        Ok((proof, merkle::root(&leaves)))
    }

    /// A consistency proof (RFC 9162 §2.1.4) that the tree of the first `old_size` entries is
    /// a prefix of the tree of the first `new_size`, with the old root and the new root
    /// computed from the stored entries.
    ///
    /// Costs O(new_size): it reads every leaf hash below `new_size` once. Needs
    /// 1 ≤ `old_size` ≤ `new_size` ≤ the log's size (RFC 9162 gives the empty tree no proof);
    /// otherwise [`LedgerError::OutOfRange`]: for `new_size - 1` against the log's size when
    /// `new_size` is past the log, for `old_size - 1` against `new_size` when the old tree is
    /// larger, and for seq 0 against size 0 when the old tree is empty.
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<(ConsistencyProof, Hash32, Hash32), LedgerError> {
        let size = self.len()?;
        if new_size > size {
            return Err(LedgerError::OutOfRange {
                seq: new_size - 1,
                size,
            });
        }
        if old_size == 0 {
            return Err(LedgerError::OutOfRange { seq: 0, size: 0 });
        }
        if old_size > new_size {
            return Err(LedgerError::OutOfRange {
                seq: old_size - 1,
                size: new_size,
            });
        }
        let leaves = self.leaves_up_to(new_size)?;
        let proof = merkle::consistency_proof(&leaves, old_size).map_err(|err| {
            LedgerError::OutOfRange {
                seq: err.old_size.saturating_sub(1),
                size: err.new_size,
            }
        })?;
        let old_root = merkle::root(&leaves[..old_size as usize]);
        Ok((proof, old_root, merkle::root(&leaves)))
    }

    /// The signed tree head stored for `tree_size`, if a commit ended at that size, naming the
    /// ledger key in force at that size (signature not checked).
    pub fn tree_head_at(&self, tree_size: u64) -> Result<Option<SignedTreeHead>, LedgerError> {
        let keys = self.ledger_keys()?;
        self.tree_head_with(tree_size, &keys.at(tree_size))
    }

    /// The tree head stored for `tree_size`, naming `ledger_key` (signature not checked).
    fn tree_head_with(
        &self,
        tree_size: u64,
        ledger_key: &PublicKey,
    ) -> Result<Option<SignedTreeHead>, LedgerError> {
        let ledger_key = *ledger_key;
        let Some(value) = self
            .db
            .get(numbered_key(PREFIX_TREE_HEAD, tree_size))
            .map_err(storage("reading a tree head"))?
        else {
            return Ok(None);
        };
        if value.len() != 96 {
            return Err(LedgerError::CorruptHead(format!(
                "tree head at size {tree_size} has {} bytes, not 96",
                value.len()
            )));
        }
        Ok(Some(SignedTreeHead {
            tree_size,
            root: Hash32(value[..32].try_into().expect("32 bytes")),
            ledger_key,
            signature: fabric_events::SignatureBytes(value[32..].try_into().expect("64 bytes")),
        }))
    }

    /// The `outbox` tree, where a publisher of the log keeps its cursor (docs/FORMAT.md §7).
    /// It lives in the ledger's folder so it moves with the log, and nothing in it is part of
    /// the log.
    pub fn outbox_tree(&self) -> Result<sled::Tree, LedgerError> {
        self.db
            .open_tree(OUTBOX_TREE)
            .map_err(storage("opening the outbox tree"))
    }

    /// The `replica` tree, where a follower of a replicated log keeps its place in the
    /// stream (docs/FORMAT.md §16); nothing in it is part of the log.
    pub fn replica_tree(&self) -> Result<sled::Tree, LedgerError> {
        self.db
            .open_tree(REPLICA_TREE)
            .map_err(storage("opening the replica tree"))
    }

    /// The folder's artifacts, read-only: the artifact store ([`ARTIFACTS_FILE`], a missing
    /// one is empty) and the legacy `artifacts` tree (docs/FORMAT.md §7).
    pub fn artifacts(&self) -> Result<StoredArtifacts, LedgerError> {
        let (log, _) = ArtifactLog::open_read_only(&self.path.join(ARTIFACTS_FILE))?;
        Ok(StoredArtifacts {
            log,
            legacy: self.artifacts_tree()?,
        })
    }

    /// The `artifacts` tree, where servers of earlier builds kept their artifacts, keyed by
    /// their BLAKE3 hash (docs/FORMAT.md §7); a server moves them into its artifact store.
    pub fn artifacts_tree(&self) -> Result<sled::Tree, LedgerError> {
        self.db
            .open_tree(ARTIFACTS_TREE)
            .map_err(storage("opening the artifacts tree"))
    }

    fn snapshot_tree(&self) -> Result<sled::Tree, LedgerError> {
        self.db
            .open_tree(SNAPSHOT_TREE)
            .map_err(storage("opening the snapshot tree"))
    }

    /// Tree sizes that have a stored snapshot (a manifest), oldest first.
    pub fn snapshot_sizes(&self) -> Result<Vec<u64>, LedgerError> {
        let tree = self.snapshot_tree()?;
        let mut sizes = Vec::new();
        for key in tree
            .range(
                numbered_key(PREFIX_SNAPSHOT_MANIFEST, 0)
                    ..=numbered_key(PREFIX_SNAPSHOT_MANIFEST, u64::MAX),
            )
            .keys()
        {
            let key = key.map_err(storage("listing snapshots"))?;
            let size = key_number(&key).ok_or_else(|| LedgerError::CorruptSnapshot {
                tree_size: 0,
                detail: format!("malformed manifest key {key:?}"),
            })?;
            sizes.push(size);
        }
        Ok(sizes)
    }

    /// Tree sizes below `size` that have a stored snapshot, newest first, read lazily: finding
    /// the newest one costs the same however many there are.
    pub fn snapshot_sizes_before(
        &self,
        size: u64,
    ) -> Result<impl Iterator<Item = Result<u64, LedgerError>>, LedgerError> {
        let tree = self.snapshot_tree()?;
        Ok(tree
            .range(
                numbered_key(PREFIX_SNAPSHOT_MANIFEST, 0)
                    ..numbered_key(PREFIX_SNAPSHOT_MANIFEST, size),
            )
            .keys()
            .rev()
            .map(|key| {
                let key = key.map_err(storage("listing snapshots"))?;
                key_number(&key).ok_or_else(|| LedgerError::CorruptSnapshot {
                    tree_size: 0,
                    detail: format!("malformed manifest key {key:?}"),
                })
            }))
    }

    /// Reads the snapshot taken at `tree_size`, checking the manifest, every chunk, the
    /// length and the hash.
    pub fn snapshot(&self, tree_size: u64) -> Result<StoredSnapshot, LedgerError> {
        let corrupt = |detail: String| LedgerError::CorruptSnapshot { tree_size, detail };
        let tree = self.snapshot_tree()?;
        let manifest = tree
            .get(numbered_key(PREFIX_SNAPSHOT_MANIFEST, tree_size))
            .map_err(storage("reading a snapshot manifest"))?
            .ok_or_else(|| corrupt("no snapshot is stored at this size".to_owned()))?;
        let frontier_len = 32 * tree_size.count_ones() as usize;
        if manifest.len() != SNAPSHOT_MANIFEST_FIXED_BYTES + frontier_len {
            return Err(corrupt(format!(
                "its manifest has {} bytes, not {}",
                manifest.len(),
                SNAPSHOT_MANIFEST_FIXED_BYTES + frontier_len
            )));
        }
        let len = u64::from_le_bytes(manifest[..8].try_into().expect("8 bytes"));
        let chunks = u32::from_le_bytes(manifest[8..12].try_into().expect("4 bytes"));
        let hash = Hash32(manifest[12..44].try_into().expect("32 bytes"));
        let nodes = manifest[44..]
            .chunks_exact(32)
            .map(|node| Hash32(node.try_into().expect("32 bytes")))
            .collect();
        let frontier =
            Frontier::from_parts(tree_size, nodes).map_err(|err| corrupt(err.to_string()))?;
        if len.div_ceil(SNAPSHOT_CHUNK_BYTES as u64) != u64::from(chunks) {
            return Err(corrupt(format!(
                "its manifest says {len} bytes in {chunks} chunks"
            )));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        let mut stored_chunks = 0u32;
        for chunk in
            tree.range(snapshot_chunk_key(tree_size, 0)..=snapshot_chunk_key(tree_size, u32::MAX))
        {
            let (key, value) = chunk.map_err(storage("reading a snapshot chunk"))?;
            if key.as_ref() != snapshot_chunk_key(tree_size, stored_chunks) {
                return Err(corrupt(format!("chunk {stored_chunks} is missing")));
            }
            bytes.extend_from_slice(&value);
            stored_chunks += 1;
        }
        if stored_chunks != chunks || bytes.len() as u64 != len {
            return Err(corrupt(format!(
                "{stored_chunks} chunks of {} bytes are stored, its manifest says {chunks} of {len}",
                bytes.len()
            )));
        }
        let computed = Hash32(*blake3::hash(&bytes).as_bytes());
        if computed != hash {
            return Err(corrupt(format!(
                "its bytes hash to {computed}, its manifest says {hash}"
            )));
        }
        Ok(StoredSnapshot {
            tree_size,
            bytes,
            hash,
            frontier,
        })
    }

    /// Every stored signed tree head, by tree size.
    pub fn tree_heads(&self) -> Result<Vec<SignedTreeHead>, LedgerError> {
        let keys = self.ledger_keys()?;
        let mut heads = Vec::new();
        for key in self
            .db
            .range(numbered_key(PREFIX_TREE_HEAD, 0)..=numbered_key(PREFIX_TREE_HEAD, u64::MAX))
            .keys()
        {
            let key = key.map_err(storage("listing tree heads"))?;
            let size = key_number(&key)
                .ok_or_else(|| LedgerError::CorruptHead("malformed tree head key".to_owned()))?;
            if let Some(head) = self.tree_head_with(size, &keys.at(size))? {
                heads.push(head);
            }
        }
        Ok(heads)
    }
}

/// Iterator over a range of entries; see [`LedgerReader::entries`]. Stops after the first
/// error.
pub struct Entries {
    reader: LedgerReader,
    next_seq: u64,
    end: u64,
    buffered: std::collections::VecDeque<(Hash32, Entry)>,
    previous_hash: Option<Hash32>,
    failed: bool,
    size: Option<u64>,
}

impl Entries {
    /// The next entry with its hash.
    pub fn next_with_hash(&mut self) -> Result<Option<(Hash32, Entry)>, LedgerError> {
        if self.failed {
            return Ok(None);
        }
        let result = self.advance();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn advance(&mut self) -> Result<Option<(Hash32, Entry)>, LedgerError> {
        let size = match self.size {
            Some(size) => size,
            None => *self.size.insert(self.reader.len()?),
        };
        if self.next_seq >= self.end.min(size) {
            return Ok(None);
        }
        let seq = self.next_seq;
        if self.buffered.is_empty() {
            let (first_seq, entries) = self.reader.block_containing(seq, false)?;
            self.buffered = entries.into();
            self.buffered.drain(..(seq - first_seq) as usize);
        }
        let (hash, entry) = self
            .buffered
            .pop_front()
            .ok_or(LedgerError::Missing { seq })?;
        let expected_prev = match self.previous_hash {
            Some(previous) => Some(previous),
            None if seq == 0 => Some(Hash32::default()),
            None => None,
        };
        if expected_prev.is_some_and(|expected| expected != entry.prev) {
            return Err(LedgerError::BrokenChain { seq });
        }
        self.previous_hash = Some(hash);
        self.next_seq += 1;
        Ok(Some((hash, entry)))
    }
}

impl Iterator for Entries {
    type Item = Result<Entry, LedgerError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_hash()
            .transpose()
            .map(|r| r.map(|(_, entry)| entry))
    }
}
