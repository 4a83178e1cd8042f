//! The work batch (docs/FORMAT.md §15.3): a node's assignments of one tick, each entry with
//! its inclusion proof against a signed tree head, in bytes. Entries travel as the log stores
//! them (wire format v1 entries, §3), hashes and signatures as their raw bytes, so neither side
//! spends its time on JSON, hex or base64 for what is mostly proofs.
//!
//! ```text
//! batch := MAGIC ‖ u32 model_count ‖ proof × model_count ‖ u32 order_count ‖ order × order_count
//! order := proof (assignment) ‖ proof (submission) ‖ u64 model_seq ‖ input
//! input := 0x00 (the node fetches it) | 0x01 ‖ u32 length ‖ bytes
//! proof := u64 seq ‖ head ‖ u32 entry_length ‖ entry ‖ u8 path_length ‖ hash × path_length
//! head  := u64 tree_size ‖ root (32) ‖ ledger_key (32) ‖ signature (64)
//! ```
//!
//! Integers are little-endian. A body is read whole or refused: [`WorkBatch::decode`] names
//! what is wrong and at which byte.

use fabric_events::{Hash32, PublicKey, SignatureBytes, MAX_ENTRY_BYTES};
use fabric_ledger::SignedTreeHead;
use thiserror::Error;

/// The first bytes of every work batch.
pub const WORK_BATCH_MAGIC: &[u8; 8] = b"FWORKv1\n";
/// Most hashes of one audit path (a tree of 2^64 entries needs 64).
pub const AUDIT_PATH_HASHES_MAX: usize = 64;
/// Bytes of an encoded signed tree head.
pub const TREE_HEAD_BYTES: usize = 8 + 32 + 32 + 64;
/// Most bytes of one job's input in an order.
pub const ORDER_INPUT_BYTES_MAX: usize = 1024 * 1024;

/// One entry of the log with its inclusion proof against a signed tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvedEntry {
    /// The entry's seq (its index in the tree).
    pub seq: u64,
    /// The signed tree head it is proved under; the proof is for its size and root.
    pub tree_head: SignedTreeHead,
    /// The entry's bytes (wire format v1 entry).
    pub entry: Vec<u8>,
    /// The RFC 9162 audit path, leaf side first.
    pub audit_path: Vec<Hash32>,
}

/// One assignment: two entries of the log, each proved, the seq of its model's registration,
/// and (usually) the job's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkOrder {
    /// The `job_assigned` entry naming the node, signed by the shard's router.
    pub assignment: ProvedEntry,
    /// The job's `job_submitted` entry (its input hash and workload).
    pub submission: ProvedEntry,
    /// The seq of the `owner_command` entry that registered the job's model: one of the
    /// batch's `models` (or one the node verified before).
    pub model_seq: u64,
    /// The job's input bytes; `None` when the node fetches them.
    pub input: Option<Vec<u8>>,
}

/// The assignments of one tick to one node, and the registration of every model the orders
/// name, once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkBatch {
    /// The `owner_command` entries that registered the orders' models (weights inline).
    pub models: Vec<ProvedEntry>,
    /// The assignments.
    pub orders: Vec<WorkOrder>,
}

/// Why bytes are not a work batch.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("not a work batch: {what} at byte {at}")]
pub struct WorkDecodeError {
    /// What is wrong.
    pub what: String,
    /// Where, from the body's first byte.
    pub at: usize,
}

impl ProvedEntry {
    /// Appends this proof's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        debug_assert!(self.audit_path.len() <= AUDIT_PATH_HASHES_MAX);
        out.extend_from_slice(&self.seq.to_le_bytes());
        encode_head(&self.tree_head, out);
        out.extend_from_slice(&(self.entry.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.entry);
        out.push(self.audit_path.len() as u8);
        for hash in &self.audit_path {
            out.extend_from_slice(hash.as_bytes());
        }
    }

    /// This proof's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// The length of [`ProvedEntry::encode`].
    pub fn encoded_len(&self) -> usize {
        8 + TREE_HEAD_BYTES + 4 + self.entry.len() + 1 + 32 * self.audit_path.len()
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, WorkDecodeError> {
        let seq = reader.u64()?;
        let tree_head = decode_head(reader)?;
        let entry_len = reader.u32()? as usize;
        if entry_len > MAX_ENTRY_BYTES {
            return Err(reader.error(format!(
                "an entry of {entry_len} bytes (at most {MAX_ENTRY_BYTES})"
            )));
        }
        let entry = reader.take(entry_len)?.to_vec();
        let path_len = usize::from(reader.u8()?);
        if path_len > AUDIT_PATH_HASHES_MAX {
            return Err(reader.error(format!(
                "an audit path of {path_len} hashes (at most {AUDIT_PATH_HASHES_MAX})"
            )));
        }
        let audit_path = (0..path_len)
            .map(|_| reader.array::<32>().map(Hash32))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            seq,
            tree_head,
            entry,
            audit_path,
        })
    }
}

fn encode_head(head: &SignedTreeHead, out: &mut Vec<u8>) {
    out.extend_from_slice(&head.tree_size.to_le_bytes());
    out.extend_from_slice(head.root.as_bytes());
    out.extend_from_slice(head.ledger_key.as_bytes());
    out.extend_from_slice(&head.signature.0);
}

fn decode_head(reader: &mut Reader<'_>) -> Result<SignedTreeHead, WorkDecodeError> {
    Ok(SignedTreeHead {
        tree_size: reader.u64()?,
        root: Hash32(reader.array()?),
        ledger_key: PublicKey(reader.array()?),
        signature: SignatureBytes(reader.array()?),
    })
}

impl WorkOrder {
    /// The bytes of an order before its input, from its two proofs' bytes
    /// ([`ProvedEntry::encode`]) and its model's seq. A server keeps them while the job runs
    /// and adds the input ([`WorkOrder::encode_input`]) when it sends the order.
    pub fn encode_without_input(assignment: &[u8], submission: &[u8], model_seq: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(assignment.len() + submission.len() + 8 + 1);
        out.extend_from_slice(assignment);
        out.extend_from_slice(submission);
        out.extend_from_slice(&model_seq.to_le_bytes());
        out
    }

    /// The order's bytes: [`WorkOrder::encode_without_input`], then
    /// [`WorkOrder::encode_input`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Self::encode_without_input(
            &self.assignment.encode(),
            &self.submission.encode(),
            self.model_seq,
        );
        Self::encode_input(self.input.as_deref(), &mut out);
        out
    }

    /// Appends the input part of an order to `out`.
    pub fn encode_input(input: Option<&[u8]>, out: &mut Vec<u8>) {
        match input {
            None => out.push(0),
            Some(bytes) => {
                debug_assert!(bytes.len() <= ORDER_INPUT_BYTES_MAX);
                out.push(1);
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }

    /// The length of the input part of an order.
    pub fn input_len(input: Option<&[u8]>) -> usize {
        input.map_or(1, |bytes| 1 + 4 + bytes.len())
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, WorkDecodeError> {
        let assignment = ProvedEntry::decode(reader)?;
        let submission = ProvedEntry::decode(reader)?;
        let model_seq = reader.u64()?;
        let input = match reader.u8()? {
            0 => None,
            1 => {
                let len = reader.u32()? as usize;
                if len > ORDER_INPUT_BYTES_MAX {
                    return Err(reader.error(format!(
                        "an input of {len} bytes (at most {ORDER_INPUT_BYTES_MAX})"
                    )));
                }
                Some(reader.take(len)?.to_vec())
            }
            tag => return Err(reader.error(format!("input tag {tag} (0 or 1)"))),
        };
        Ok(Self {
            assignment,
            submission,
            model_seq,
            input,
        })
    }
}

impl WorkBatch {
    /// The batch's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let models: Vec<Vec<u8>> = self.models.iter().map(ProvedEntry::encode).collect();
        let orders: Vec<Vec<u8>> = self.orders.iter().map(WorkOrder::encode).collect();
        Self::join(&models, &orders)
    }

    /// A batch's bytes from its parts, each already encoded: models as
    /// [`ProvedEntry::encode`], orders as [`WorkOrder::encode_without_input`] followed by
    /// [`WorkOrder::encode_input`].
    pub fn join<M: AsRef<[u8]>, O: AsRef<[u8]>>(models: &[M], orders: &[O]) -> Vec<u8> {
        let len = Self::joined_len(
            models.iter().map(|part| part.as_ref().len()).sum(),
            orders.iter().map(|part| part.as_ref().len()).sum(),
        );
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(WORK_BATCH_MAGIC);
        out.extend_from_slice(&(models.len() as u32).to_le_bytes());
        for part in models {
            out.extend_from_slice(part.as_ref());
        }
        out.extend_from_slice(&(orders.len() as u32).to_le_bytes());
        for part in orders {
            out.extend_from_slice(part.as_ref());
        }
        debug_assert_eq!(out.len(), len);
        out
    }

    /// The length of a joined batch whose model parts and order parts have these lengths.
    pub fn joined_len(model_bytes: usize, order_bytes: usize) -> usize {
        WORK_BATCH_MAGIC.len() + 4 + model_bytes + 4 + order_bytes
    }

    /// Reads a whole batch; trailing bytes are refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, WorkDecodeError> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(WORK_BATCH_MAGIC.len())? != WORK_BATCH_MAGIC {
            return Err(WorkDecodeError {
                what: format!("the first bytes are not {WORK_BATCH_MAGIC:?}"),
                at: 0,
            });
        }
        let model_count = reader.u32()? as usize;
        let mut models = Vec::with_capacity(model_count.min(reader.left() / PROOF_BYTES_MIN));
        for _ in 0..model_count {
            models.push(ProvedEntry::decode(&mut reader)?);
        }
        let order_count = reader.u32()? as usize;
        let mut orders = Vec::with_capacity(order_count.min(reader.left() / ORDER_BYTES_MIN));
        for _ in 0..order_count {
            orders.push(WorkOrder::decode(&mut reader)?);
        }
        if reader.left() > 0 {
            return Err(reader.error(format!("{} bytes after the last order", reader.left())));
        }
        Ok(Self { models, orders })
    }
}

/// The fewest bytes of one proof and of one order: a count read from a body reserves no more
/// room than the body's bytes could fill.
const PROOF_BYTES_MIN: usize = 8 + TREE_HEAD_BYTES + 4 + 1;
const ORDER_BYTES_MIN: usize = 2 * PROOF_BYTES_MIN + 8 + 1;

/// A cursor over a body, every read bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn error(&self, what: String) -> WorkDecodeError {
        WorkDecodeError { what, at: self.at }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], WorkDecodeError> {
        if len > self.left() {
            return Err(self.error(format!(
                "{len} bytes wanted, the body ends {} bytes on",
                self.left()
            )));
        }
        let taken = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WorkDecodeError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, WorkDecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, WorkDecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, WorkDecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proved(seq: u64, entry_len: usize, path_len: usize) -> ProvedEntry {
        ProvedEntry {
            seq,
            tree_head: SignedTreeHead {
                tree_size: seq + 9,
                root: Hash32([seq as u8; 32]),
                ledger_key: PublicKey([7; 32]),
                signature: SignatureBytes([8; 64]),
            },
            entry: (0..entry_len).map(|byte| byte as u8).collect(),
            audit_path: (0..path_len).map(|hash| Hash32([hash as u8; 32])).collect(),
        }
    }

    fn batch() -> WorkBatch {
        WorkBatch {
            models: vec![proved(0, 40, 3)],
            orders: vec![
                WorkOrder {
                    assignment: proved(5, 30, 4),
                    submission: proved(4, 31, 4),
                    model_seq: 0,
                    input: Some(vec![1, 2, 3]),
                },
                WorkOrder {
                    assignment: proved(7, 30, 0),
                    submission: proved(6, 0, 64),
                    model_seq: 0,
                    input: None,
                },
            ],
        }
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        let batch = batch();
        let bytes = batch.encode();
        assert_eq!(&bytes[..8], WORK_BATCH_MAGIC);
        assert_eq!(WorkBatch::decode(&bytes), Ok(batch.clone()));
        assert_eq!(
            WorkBatch::decode(&WorkBatch::default().encode()),
            Ok(WorkBatch::default())
        );
        // The parts a server keeps join to the same bytes.
        let orders: Vec<Vec<u8>> = batch.orders.iter().map(WorkOrder::encode).collect();
        assert_eq!(WorkBatch::join(&[batch.models[0].encode()], &orders), bytes);
    }

    #[test]
    fn every_cut_changed_tag_or_trailing_byte_is_refused_with_its_place() {
        let bytes = batch().encode();
        for len in 0..bytes.len() {
            let error = WorkBatch::decode(&bytes[..len]).expect_err("a cut body");
            assert!(error.at <= len, "{error} for a body of {len}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        let error = WorkBatch::decode(&trailing).expect_err("trailing");
        assert_eq!(error.at, bytes.len());
        assert!(error.to_string().contains("1 bytes after"), "{error}");
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(WorkBatch::decode(&magic).expect_err("magic").at, 0);
        // The first order's input tag is 1: a 2 is refused where it stands.
        let tag_at = 8
            + 4
            + batch().models[0].encoded_len()
            + 4
            + batch().orders[0].assignment.encoded_len()
            + batch().orders[0].submission.encoded_len()
            + 8;
        assert_eq!(bytes[tag_at], 1);
        let mut tag = bytes.clone();
        tag[tag_at] = 2;
        let error = WorkBatch::decode(&tag).expect_err("tag");
        assert_eq!(error.at, tag_at + 1);
        assert!(error.to_string().contains("input tag 2"), "{error}");
    }

    #[test]
    fn counts_and_lengths_past_their_limits_are_refused_before_anything_is_reserved() {
        // A model count of 4 billion in a body of a few bytes.
        let mut huge = WORK_BATCH_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(WorkBatch::decode(&huge).is_err());
        // An entry length over the entry limit.
        let mut long = WORK_BATCH_MAGIC.to_vec();
        long.extend_from_slice(&1u32.to_le_bytes());
        long.extend_from_slice(&0u64.to_le_bytes());
        long.extend_from_slice(&[0; TREE_HEAD_BYTES]);
        long.extend_from_slice(&(MAX_ENTRY_BYTES as u32 + 1).to_le_bytes());
        let error = WorkBatch::decode(&long).expect_err("long entry");
        assert!(error.to_string().contains("at most"), "{error}");
        // An audit path of 65 hashes.
        let mut deep = proved(1, 2, 0).encode();
        let at = deep.len() - 1;
        deep[at] = 65;
        let mut body = WORK_BATCH_MAGIC.to_vec();
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&deep);
        let error = WorkBatch::decode(&body).expect_err("deep path");
        assert!(error.to_string().contains("65 hashes"), "{error}");
    }
}
