//! How the log lies in sled: a handful of keys in sled's default tree.
//!
//! | key | value |
//! | --- | --- |
//! | `v` | storage format, u32 LE (1) |
//! | `k` | ledger public key, 32 bytes |
//! | `h` | head: size u64 LE ‖ last entry hash (32) ‖ Merkle frontier (popcount(size) × 32) |
//! | `e` ‖ first seq (u64 BE) | block: count u16 LE, then per entry: len u32 LE ‖ entry hash (32) ‖ entry |
//! | `t` ‖ tree size (u64 BE) | signed tree head: root (32) ‖ signature (64) |
//!
//! Entries are packed into blocks (one sled value per block) because sled's cost is per key:
//! one key per event caps the log near 100k inserts/s, packed blocks do not limit it at all.
//! Blocks stay far below sled's blob threshold (a quarter of a 512 KiB segment) so that every
//! value lives in the segment file that a flush syncs. Keys are big-endian so that sled's
//! byte order is seq order and "the block holding seq n" is one reverse range lookup.

use fabric_events::{entry_hash, Entry, Hash32};
#[cfg(feature = "writer")]
use fabric_events::{SignedEvent, MAX_ENTRY_BYTES};

use crate::error::LedgerError;
use crate::merkle::Frontier;

/// Storage format written and read by this build.
pub const STORAGE_FORMAT: u32 = 1;
/// At most this many entries per block.
pub const BLOCK_ENTRIES_MAX: usize = 256;
/// A block is closed before it grows past this many bytes (one maximal entry may follow).
pub const BLOCK_BYTES_TARGET: usize = 64 * 1024;
/// Bytes of a block's count field.
const BLOCK_COUNT_LEN: usize = 2;
/// Bytes before each entry in a block: length + hash.
const BLOCK_ENTRY_PREFIX_LEN: usize = 4 + 32;
/// Values one sled leaf page holds at most.
const SLED_LEAF_VALUES_MAX: usize = 17;

/// The largest value the ledger stores: a block (the target, or one maximal entry alone in a
/// block) or a snapshot chunk.
const VALUE_BYTES_MAX: usize = {
    let lone_entry = BLOCK_COUNT_LEN + BLOCK_ENTRY_PREFIX_LEN + fabric_events::MAX_ENTRY_BYTES;
    let block = if lone_entry > BLOCK_BYTES_TARGET {
        lone_entry
    } else {
        BLOCK_BYTES_TARGET
    };
    if block > crate::SNAPSHOT_CHUNK_BYTES {
        block
    } else {
        crate::SNAPSHOT_CHUNK_BYTES
    }
};

// sled writes a page over a quarter of a segment to a blob file it never syncs: a page full
// of the largest values must stay under that, in the `db` file the ledger fdatasyncs.
const _: () = assert!(SLED_LEAF_VALUES_MAX * VALUE_BYTES_MAX <= crate::SLED_SEGMENT_BYTES / 4);
// A block's count field holds its entry count.
const _: () = assert!(BLOCK_ENTRIES_MAX <= u16::MAX as usize);

pub(crate) const KEY_FORMAT: &[u8] = b"v";
pub(crate) const KEY_LEDGER_KEY: &[u8] = b"k";
pub(crate) const KEY_HEAD: &[u8] = b"h";
pub(crate) const PREFIX_BLOCK: u8 = b'e';
pub(crate) const PREFIX_TREE_HEAD: u8 = b't';
/// Ledger-key rotations: `r` ‖ seq of the rotating entry (u64 BE) → the new key (32 bytes).
pub(crate) const PREFIX_ROTATION: u8 = b'r';

/// `prefix` ‖ n (u64 BE).
pub(crate) fn numbered_key(prefix: u8, n: u64) -> [u8; 9] {
    let mut key = [0; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&n.to_be_bytes());
    key
}

/// The sled key of the block whose first entry is `first_seq`: `e` ‖ first_seq (u64 BE).
pub fn block_key(first_seq: u64) -> [u8; 9] {
    numbered_key(PREFIX_BLOCK, first_seq)
}

/// The number in a key made by [`numbered_key`].
pub(crate) fn key_number(key: &[u8]) -> Option<u64> {
    let digits: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    (key.len() == 9).then(|| u64::from_be_bytes(digits))
}

/// The durable head of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub size: u64,
    pub last_hash: Hash32,
    pub frontier: Frontier,
}

impl Head {
    #[cfg(feature = "writer")]
    pub fn empty() -> Self {
        Self {
            size: 0,
            last_hash: Hash32::default(),
            frontier: Frontier::new(),
        }
    }

    #[cfg(feature = "writer")]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 + 32 * self.frontier.nodes().len());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(self.last_hash.as_bytes());
        for node in self.frontier.nodes() {
            out.extend_from_slice(node.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, LedgerError> {
        let corrupt = |detail: String| LedgerError::CorruptHead(detail);
        if bytes.len() < 40 || (bytes.len() - 40) % 32 != 0 {
            return Err(corrupt(format!("head record has {} bytes", bytes.len())));
        }
        let size = u64::from_le_bytes(array(&bytes[..8]));
        let last_hash = Hash32(array(&bytes[8..40]));
        let nodes = bytes[40..]
            .chunks_exact(32)
            .map(|c| Hash32(array(c)))
            .collect();
        let frontier = Frontier::from_parts(size, nodes).map_err(|err| corrupt(err.to_string()))?;
        if size == 0 && last_hash != Hash32::default() {
            return Err(corrupt("empty log with a non-zero last hash".to_owned()));
        }
        Ok(Self {
            size,
            last_hash,
            frontier,
        })
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    <[u8; N]>::try_from(bytes).expect("caller slices exactly N bytes")
}

#[cfg(feature = "writer")]
/// Packs entries into blocks as they are appended (also used by `fabric bench` to measure
/// the storage cost of this layout on its own).
pub struct BlockWriter {
    blocks: Vec<(u64, Vec<u8>)>,
    count: usize,
}

#[cfg(feature = "writer")]
impl Default for BlockWriter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "writer")]
impl BlockWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self {
            blocks: Vec::new(),
            count: 0,
        }
    }

    /// Writes the entry of `event` at `seq` after `prev` straight into the current block
    /// (without building an [`Entry`]) and returns the entry's hash.
    pub fn push(&mut self, seq: u64, prev: &Hash32, event: &SignedEvent) -> Hash32 {
        let entry_len = fabric_events::ENTRY_HEADER_LEN + event.signed.len();
        debug_assert!(entry_len <= MAX_ENTRY_BYTES);
        let full = match self.blocks.last() {
            None => true,
            Some((_, block)) => {
                self.count == BLOCK_ENTRIES_MAX
                    || block.len() + BLOCK_ENTRY_PREFIX_LEN + entry_len > BLOCK_BYTES_TARGET
            }
        };
        if full {
            self.finish_block();
            let mut block = Vec::with_capacity(BLOCK_BYTES_TARGET);
            block.extend_from_slice(&[0; BLOCK_COUNT_LEN]);
            self.blocks.push((seq, block));
        }
        let (_, block) = self.blocks.last_mut().expect("a block was just ensured");
        block.extend_from_slice(&(entry_len as u32).to_le_bytes());
        let hash_at = block.len();
        block.extend_from_slice(&[0; 32]);
        let entry_at = block.len();
        block.extend_from_slice(&seq.to_le_bytes());
        block.extend_from_slice(prev.as_bytes());
        block.extend_from_slice(event.author.as_bytes());
        block.extend_from_slice(event.signature.as_bytes());
        block.extend_from_slice(&event.signed);
        let hash = entry_hash(&block[entry_at..]);
        block[hash_at..entry_at].copy_from_slice(hash.as_bytes());
        self.count += 1;
        hash
    }

    fn finish_block(&mut self) {
        if let Some((_, block)) = self.blocks.last_mut() {
            block[..BLOCK_COUNT_LEN].copy_from_slice(&(self.count as u16).to_le_bytes());
        }
        self.count = 0;
    }

    /// The finished blocks: (first seq, value).
    pub fn finish(mut self) -> Vec<(u64, Vec<u8>)> {
        self.finish_block();
        self.blocks
    }
}

/// Splits a stored block into its first `take` entries (all when `None`), checking each against
/// its stored hash, its position and its link to the entry before it in the block.
pub(crate) fn decode_block(
    first_seq: u64,
    bytes: &[u8],
    take: Option<usize>,
) -> Result<Vec<(Hash32, Entry)>, LedgerError> {
    let corrupt_block = |detail: String| LedgerError::CorruptBlock { first_seq, detail };
    let count_bytes = bytes
        .get(..BLOCK_COUNT_LEN)
        .ok_or_else(|| corrupt_block("shorter than its count field".to_owned()))?;
    let count = u16::from_le_bytes(array(count_bytes)) as usize;
    if count == 0 || count > BLOCK_ENTRIES_MAX {
        return Err(corrupt_block(format!("claims {count} entries")));
    }
    let wanted = take.map_or(count, |take| take.min(count));
    let mut entries: Vec<(Hash32, Entry)> = Vec::with_capacity(wanted);
    let mut rest = &bytes[BLOCK_COUNT_LEN..];
    for position in 0..wanted {
        let seq = first_seq + position as u64;
        let corrupt = |detail: String| LedgerError::CorruptEntry { seq, detail };
        if rest.len() < BLOCK_ENTRY_PREFIX_LEN {
            return Err(corrupt(
                "block ends inside the entry's length and hash".to_owned(),
            ));
        }
        let entry_len = u32::from_le_bytes(array(&rest[..4])) as usize;
        let stored_hash = Hash32(array(&rest[4..BLOCK_ENTRY_PREFIX_LEN]));
        rest = &rest[BLOCK_ENTRY_PREFIX_LEN..];
        let entry_bytes = rest
            .get(..entry_len)
            .ok_or_else(|| corrupt(format!("length {entry_len} runs past the end of its block")))?;
        rest = &rest[entry_len..];
        if entry_hash(entry_bytes) != stored_hash {
            return Err(corrupt("its bytes do not match its stored hash".to_owned()));
        }
        let entry = Entry::decode(entry_bytes).map_err(|err| corrupt(err.to_string()))?;
        if entry.seq != seq {
            return Err(corrupt(format!("it says it is seq {}", entry.seq)));
        }
        if let Some((previous_hash, _)) = entries.last() {
            if entry.prev != *previous_hash {
                return Err(LedgerError::BrokenChain { seq });
            }
        }
        entries.push((stored_hash, entry));
    }
    if wanted == count && !rest.is_empty() {
        return Err(corrupt_block(format!(
            "{} bytes after its last entry",
            rest.len()
        )));
    }
    Ok(entries)
}
