//! The Merkle tree over entry hashes, exactly as RFC 9162 §2.1.1 with BLAKE3.
//!
//! - leaf = the entry hash, BLAKE3(0x00 ‖ entry) (already domain-separated, so it is used as is);
//! - node = BLAKE3(0x01 ‖ left ‖ right);
//! - the tree of n > 1 leaves splits at k, the largest power of two smaller than n;
//! - the empty tree's root is BLAKE3 of the empty string.
//!
//! [`Frontier`] keeps one hash per set bit of the tree size (the roots of its perfect
//! subtrees, largest first), so an append costs O(log n) and the root O(log n); the
//! from-scratch [`root`] is the reference the frontier is tested against.
//!
//! Proofs follow RFC 9162 too: inclusion (§2.1.3, [`inclusion_proof`], [`verify_inclusion`])
//! and consistency between two sizes of the tree (§2.1.4, [`consistency_proof`],
//! [`verify_consistency`]). Each builder also comes as a `*_from` variant over a
//! `subtree_root(start, end)` closure, for callers that hold subtree roots but not the leaves.

use fabric_events::Hash32;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// BLAKE3(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash32, right: &Hash32) -> Hash32 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&[0x01]);
    hasher.update(left.as_bytes());
    hasher.update(right.as_bytes());
    hasher.finalize().into()
}

/// The root of the empty tree: BLAKE3 of the empty string.
pub fn empty_root() -> Hash32 {
    blake3::hash(&[]).into()
}

/// The largest power of two strictly smaller than `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// `MTH(D[n])` computed from scratch, in O(n): the reference definition.
pub fn root(leaves: &[Hash32]) -> Hash32 {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontier {
    size: u64,
    /// One hash per set bit of `size`, from the most significant bit down.
    nodes: Vec<Hash32>,
}

/// A stored frontier that cannot belong to any tree.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("a tree of {size} leaves has {expected} frontier hashes, not {found}")]
pub struct FrontierMismatch {
    /// Claimed size.
    pub size: u64,
    /// popcount(size).
    pub expected: usize,
    /// Hashes given.
    pub found: usize,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from its parts, checking there is one hash per set bit of `size`.
    pub fn from_parts(size: u64, nodes: Vec<Hash32>) -> Result<Self, FrontierMismatch> {
        let expected = size.count_ones() as usize;
        if nodes.len() != expected {
            return Err(FrontierMismatch {
                size,
                expected,
                found: nodes.len(),
            });
        }
        Ok(Self { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The perfect-subtree roots, largest first.
    pub fn nodes(&self) -> &[Hash32] {
        &self.nodes
    }

    /// Appends one leaf: O(log n) node hashes at most, O(1) amortised.
    pub fn push(&mut self, leaf: Hash32) {
        let mut carry = leaf;
        let mut size = self.size;
        // Each trailing one bit is a perfect subtree of the same size as `carry`: merge them.
        while size & 1 == 1 {
            let left = self
                .nodes
                .pop()
                .expect("a set bit of the size always has its frontier node");
            carry = node_hash(&left, &carry);
            size >>= 1;
        }
        self.nodes.push(carry);
        self.size += 1;
        debug_assert_eq!(self.nodes.len(), self.size.count_ones() as usize);
    }

    /// The root: the perfect subtrees folded from the right, as RFC 9162's split prescribes.
    pub fn root(&self) -> Hash32 {
        let mut nodes = self.nodes.iter().rev();
        let Some(last) = nodes.next() else {
            return empty_root();
        };
        nodes.fold(*last, |right, left| node_hash(left, &right))
    }
}

/// An inclusion proof: the audit path of leaf `index` in the tree of `tree_size` leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The leaf's index (the entry's seq).
    pub index: u64,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// Sibling hashes from the leaf up (RFC 9162 §2.1.3.1 PATH order).
    pub path: Vec<Hash32>,
}

/// Why a proof cannot be built.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("leaf index {index} is outside a tree of {tree_size} leaves")]
pub struct IndexOutOfRange {
    /// Requested index.
    pub index: u64,
    /// Tree size.
    pub tree_size: u64,
}

/// `PATH(index, leaves)`: the audit path of one leaf, from the full list of leaves (O(n)).
pub fn inclusion_proof(leaves: &[Hash32], index: u64) -> Result<InclusionProof, IndexOutOfRange> {
    inclusion_proof_from(
        |start, end| root(&leaves[start as usize..end as usize]),
        index,
        leaves.len() as u64,
    )
}

/// `PATH(index, D[tree_size])` from subtree roots alone: `subtree_root(start, end)` must return
/// `MTH(D[start..end])`.
///
/// Only the O(log n) siblings on the path are asked for, so a caller that stores subtree roots
/// need not hold the leaves.
pub fn inclusion_proof_from(
    mut subtree_root: impl FnMut(u64, u64) -> Hash32,
    index: u64,
    tree_size: u64,
) -> Result<InclusionProof, IndexOutOfRange> {
    if index >= tree_size {
        return Err(IndexOutOfRange { index, tree_size });
    }
    let mut path = Vec::new();
    collect_path(&mut subtree_root, 0, tree_size, index, &mut path);
    Ok(InclusionProof {
        index,
        tree_size,
        path,
    })
}

/// The audit paths of a batch of new leaves, each in the tree that ends with the batch:
/// `before` is the tree's frontier before the batch, `leaves` the batch. Costs O(batch ·
/// log batch + batch · log n) in all, without the older leaves: every sibling of a new leaf
/// that lies wholly before the batch is one of `before`'s perfect subtrees (the set bits of
/// the new leaf's index above the highest bit it differs from `before.size()` in are the same
/// in both), and each sibling subtree among the new leaves is hashed once for all the paths
/// it is on.
pub fn batch_inclusion_proofs(before: &Frontier, leaves: &[Hash32]) -> Vec<InclusionProof> {
    let first = before.size();
    let tree_size = first + leaves.len() as u64;
    // The frontier's subtrees as (start, end) ranges, largest first.
    let mut old = Vec::with_capacity(before.nodes().len());
    let mut start = 0;
    for (bit, hash) in (0..u64::BITS)
        .rev()
        .filter(|bit| first & (1 << bit) != 0)
        .zip(before.nodes())
    {
        old.push((start, start + (1 << bit), *hash));
        start += 1 << bit;
    }
    let mut memo: std::collections::HashMap<(u64, u64), Hash32> = std::collections::HashMap::new();
    let mut subtree_root = |start: u64, end: u64| {
        *memo
            .entry((start, end))
            .or_insert_with(|| batch_subtree_root(&old, first, leaves, start, end))
    };
    (first..tree_size)
        .map(|index| {
            let mut path = Vec::new();
            collect_path(&mut subtree_root, 0, tree_size, index, &mut path);
            InclusionProof {
                index,
                tree_size,
                path,
            }
        })
        .collect()
}

/// `MTH(D[start..end])` from the old tree's perfect subtrees and the new leaves.
fn batch_subtree_root(
    old: &[(u64, u64, Hash32)],
    first: u64,
    leaves: &[Hash32],
    start: u64,
    end: u64,
) -> Hash32 {
    if start >= first {
        return root(&leaves[(start - first) as usize..(end - first) as usize]);
    }
    if end <= first {
        // Asked for only on the path of a new leaf: always one of the old perfect subtrees.
        let found = old.iter().find(|(s, e, _)| *s == start && *e == end);
        debug_assert!(
            found.is_some(),
            "{start}..{end} is no subtree of the old frontier"
        );
        return found.map_or_else(empty_root, |(_, _, hash)| *hash);
    }
    let k = split_point(end - start);
    node_hash(
        &batch_subtree_root(old, first, leaves, start, start + k),
        &batch_subtree_root(old, first, leaves, start + k, end),
    )
}

/// `PATH(index, D[start..end])`, with `index` relative to `start`.
fn collect_path<F: FnMut(u64, u64) -> Hash32>(
    subtree_root: &mut F,
    start: u64,
    end: u64,
    index: u64,
    path: &mut Vec<Hash32>,
) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    // The path is built leaf-first: recurse, then add this level's sibling.
    if index < k {
        collect_path(subtree_root, start, start + k, index, path);
        path.push(subtree_root(start + k, end));
    } else {
        collect_path(subtree_root, start + k, end, index - k, path);
        path.push(subtree_root(start, start + k));
    }
}

/// Why an inclusion or consistency proof does not verify.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// The index is not inside the tree.
    #[error("leaf index {index} is outside a tree of {tree_size} leaves")]
    IndexOutOfRange {
        /// The index.
        index: u64,
        /// The tree size.
        tree_size: u64,
    },
    /// The path has the wrong number of hashes for this index and size.
    #[error("audit path has the wrong length for leaf {index} of {tree_size}")]
    PathLength {
        /// The index.
        index: u64,
        /// The tree size.
        tree_size: u64,
    },
    /// The path leads to another root.
    #[error("audit path leads to root {computed}, not {expected}")]
    RootMismatch {
        /// Root the path gives.
        computed: Hash32,
        /// Root claimed.
        expected: Hash32,
    },
    /// A consistency proof between sizes that cannot have one: the old tree is empty or larger.
    #[error(
        "no consistency proof exists from {old_size} leaves to {new_size}: \
         the old size must be between 1 and the new size"
    )]
    ConsistencySizes {
        /// The old tree size.
        old_size: u64,
        /// The new tree size.
        new_size: u64,
    },
    /// The consistency path has the wrong number of hashes for these sizes.
    #[error(
        "consistency path from {old_size} to {new_size} leaves has length {found}, not {expected}"
    )]
    ConsistencyPathLength {
        /// The old tree size.
        old_size: u64,
        /// The new tree size.
        new_size: u64,
        /// Hashes the path has.
        found: usize,
        /// Hashes `PROOF(old_size, D[new_size])` has.
        expected: usize,
    },
    /// The consistency path does not lead to the old root.
    #[error("consistency path leads to old root {computed}, not {expected}")]
    OldRootMismatch {
        /// Old root the path gives.
        computed: Hash32,
        /// Old root claimed.
        expected: Hash32,
    },
    /// The consistency path does not lead to the new root.
    #[error("consistency path leads to new root {computed}, not {expected}")]
    NewRootMismatch {
        /// New root the path gives.
        computed: Hash32,
        /// New root claimed.
        expected: Hash32,
    },
    /// Two heads of the same size with different roots: not the same tree.
    #[error("trees of the same size {size} have different roots {old_root} and {new_root}")]
    SameSizeRootsDiffer {
        /// The size of both trees.
        size: u64,
        /// The old root.
        old_root: Hash32,
        /// The new root.
        new_root: Hash32,
    },
}

/// Verifies an inclusion proof for `leaf` against `root`, as RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    leaf: &Hash32,
    proof: &InclusionProof,
    root: &Hash32,
) -> Result<(), ProofError> {
    let InclusionProof {
        index,
        tree_size,
        ref path,
    } = *proof;
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange { index, tree_size });
    }
    let mut fn_ = index;
    let mut sn = tree_size - 1;
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return Err(ProofError::PathLength { index, tree_size });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::PathLength { index, tree_size });
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: r,
            expected: *root,
        });
    }
    Ok(())
}

/// A consistency proof: that the tree of `old_size` leaves is a prefix of the tree of
/// `new_size` leaves (RFC 9162 §2.1.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The old (smaller) tree size.
    pub old_size: u64,
    /// The new (larger) tree size.
    pub new_size: u64,
    /// `PROOF(old_size, D[new_size])` (RFC 9162 §2.1.4.1 order); empty when the sizes are equal.
    pub path: Vec<Hash32>,
}

/// Why a consistency proof cannot be built.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "no consistency proof exists from {old_size} leaves to {new_size}: \
     the old size must be between 1 and the new size"
)]
pub struct SizeOutOfRange {
    /// Requested old size.
    pub old_size: u64,
    /// The new tree size.
    pub new_size: u64,
}

/// `PROOF(old_size, D[n])` from the full list of the first n leaves (O(n)).
pub fn consistency_proof(
    leaves: &[Hash32],
    old_size: u64,
) -> Result<ConsistencyProof, SizeOutOfRange> {
    consistency_proof_from(
        |start, end| root(&leaves[start as usize..end as usize]),
        old_size,
        leaves.len() as u64,
    )
}

/// `PROOF(old_size, D[new_size])` from subtree roots alone: `subtree_root(start, end)` must return
/// `MTH(D[start..end])`.
///
/// Only the O(log n) nodes of the proof are asked for, so a caller that stores subtree roots
/// need not hold the leaves. The empty tree (old_size 0) is refused: RFC 9162 gives it no proof,
/// since every tree extends it.
pub fn consistency_proof_from(
    mut subtree_root: impl FnMut(u64, u64) -> Hash32,
    old_size: u64,
    new_size: u64,
) -> Result<ConsistencyProof, SizeOutOfRange> {
    if old_size == 0 || old_size > new_size {
        return Err(SizeOutOfRange { old_size, new_size });
    }
    let mut path = Vec::new();
    subproof(&mut subtree_root, old_size, 0, new_size, true, &mut path);
    Ok(ConsistencyProof {
        old_size,
        new_size,
        path,
    })
}

/// `SUBPROOF(m, D[start..end], b)` of RFC 9162 §2.1.4.1, appended to `path`.
///
/// `b` says whether `D[start..start + m]` is the old tree itself, whose root the verifier already
/// has (so it is left out), rather than one of its subtrees (which must be sent).
fn subproof<F: FnMut(u64, u64) -> Hash32>(
    subtree_root: &mut F,
    m: u64,
    start: u64,
    end: u64,
    b: bool,
    path: &mut Vec<Hash32>,
) {
    let n = end - start;
    if m == n {
        if !b {
            path.push(subtree_root(start, end));
        }
        return;
    }
    let k = split_point(n);
    if m <= k {
        // The old tree lies in the left half: prove it there, then give the right half.
        subproof(subtree_root, m, start, start + k, b, path);
        path.push(subtree_root(start + k, end));
    } else {
        // The left half is shared whole; the old tree's remainder lies in the right half.
        subproof(subtree_root, m - k, start + k, end, false, path);
        path.push(subtree_root(start, start + k));
    }
}

/// The length of `PROOF(m, D[n])` for 0 < m ≤ n: the same recursion as [`subproof`], no hashing.
fn consistency_path_len(m: u64, n: u64) -> usize {
    let (mut m, mut n, mut b, mut len) = (m, n, true, 0);
    while m != n {
        let k = split_point(n);
        if m > k {
            m -= k;
            n -= k;
            b = false;
        } else {
            n = k;
        }
        len += 1;
    }
    len + usize::from(!b)
}

/// Verifies that `new_root` (of `proof.new_size` leaves) extends `old_root` (of
/// `proof.old_size` leaves), as RFC 9162 §2.1.4.2.
///
/// Equal sizes need no path: the proof holds iff it is empty and the roots are equal.
///
/// The sizes are taken as given: a root does not commit to its tree's size, so they must come
/// from the same signed tree heads as the roots.
pub fn verify_consistency(
    old_root: &Hash32,
    new_root: &Hash32,
    proof: &ConsistencyProof,
) -> Result<(), ProofError> {
    let ConsistencyProof {
        old_size,
        new_size,
        ref path,
    } = *proof;
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::ConsistencySizes { old_size, new_size });
    }
    let length_error = || ProofError::ConsistencyPathLength {
        old_size,
        new_size,
        found: path.len(),
        expected: consistency_path_len(old_size, new_size),
    };
    if old_size == new_size {
        if !path.is_empty() {
            return Err(length_error());
        }
        if old_root != new_root {
            return Err(ProofError::SameSizeRootsDiffer {
                size: old_size,
                old_root: *old_root,
                new_root: *new_root,
            });
        }
        return Ok(());
    }
    // 1. An empty path proves nothing between different sizes.
    if path.is_empty() {
        return Err(length_error());
    }
    // 2. A power-of-two old tree is a whole subtree of the new one, so the proof leaves out its
    //    root, which the verifier already has: put it back in front.
    let prepend = old_size.is_power_of_two().then_some(old_root);
    let mut hashes = prepend.into_iter().chain(path);
    // 3.
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    // 4.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // 5.
    let first = *hashes.next().expect("the path is not empty");
    let mut fr = first;
    let mut sr = first;
    // 6.
    for c in hashes {
        if sn == 0 {
            return Err(length_error());
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // 7.
    if sn != 0 {
        return Err(length_error());
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(ProofError::NewRootMismatch {
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(seed: u64, count: usize) -> Vec<Hash32> {
        (0..count as u64)
            .map(|i| {
                let mut input = seed.to_le_bytes().to_vec();
                input.extend_from_slice(&i.to_le_bytes());
                fabric_events::entry_hash(&input)
            })
            .collect()
    }

    #[test]
    fn small_trees_have_the_rfc_9162_shape() {
        let l = leaves(1, 7);
        assert_eq!(root(&[]), Hash32::from(blake3::hash(b"")));
        assert_eq!(root(&l[..1]), l[0]);
        assert_eq!(root(&l[..2]), node_hash(&l[0], &l[1]));
        // n = 3 splits at 2: H(H(l0, l1), l2).
        assert_eq!(root(&l[..3]), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
        // n = 7 splits at 4, then 2: H(H(H01, H23), H(H45, l6)).
        let left = node_hash(&node_hash(&l[0], &l[1]), &node_hash(&l[2], &l[3]));
        let right = node_hash(&node_hash(&l[4], &l[5]), &l[6]);
        assert_eq!(root(&l), node_hash(&left, &right));
        // Interior nodes are domain-separated from leaves: 0x01 ‖ left ‖ right.
        let mut manual = blake3::Hasher::new();
        manual.update(&[1]);
        manual.update(l[0].as_bytes());
        manual.update(l[1].as_bytes());
        assert_eq!(node_hash(&l[0], &l[1]), Hash32::from(manual.finalize()));
    }

    /// The vectors of docs/FORMAT.md: leaves BLAKE3(0x00 ‖ [i]) for i = 0, 1, 2.
    #[test]
    fn format_document_vectors_hold() {
        let l: Vec<Hash32> = (0u8..3).map(|i| fabric_events::entry_hash(&[i])).collect();
        let hex: Vec<String> = l.iter().map(Hash32::to_hex).collect();
        assert_eq!(
            hex,
            [
                "1ad48f49627079d806b802c74f40c39d55fe1d78b3faf0f8017aec62cec42122",
                "7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63",
                "0013f4c84c09ed4f906f561e31fb6cb5336107f6813206a1f8860ab1ad35f2b8",
            ]
        );
        assert_eq!(
            root(&l).to_hex(),
            "b8a32224c977fedb0f8860d7bb067da5e88821ebc3a518f29bf21afeee562d43"
        );
        assert_eq!(
            empty_root().to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let proof = inclusion_proof(&l, 2).expect("in range");
        assert_eq!(
            proof.path.iter().map(Hash32::to_hex).collect::<Vec<_>>(),
            ["a7c40517c3ba6ed1c930a04047fc7d941e0c6c86dff760457784186431014629"]
        );
        assert_eq!(proof.path[0], node_hash(&l[0], &l[1]));
        let head = crate::SignedTreeHead::sign(
            3,
            root(&l),
            &fabric_events::derive_signing_key(7, "golden/ledger"),
        );
        assert_eq!(
            head.ledger_key.to_hex(),
            "f2646112e460cda727ed59f8ef270dd0e809b2c3e8b922e20c58aa29b49f8b56"
        );
        assert_eq!(
            head.signature.to_hex(),
            "59dfbcc18d798790e30a9cf8d861a05c5b376a3ac8097f048782ac741139eb6e\
             344d9c373d018adc7a476952b133ef6469c92d5eb47b509eab9014db2efff803"
        );
        assert_eq!(head.verify(&head.ledger_key), Ok(()));
    }

    #[test]
    fn frontier_round_trips_through_its_parts() {
        let mut frontier = Frontier::new();
        for leaf in leaves(3, 37) {
            frontier.push(leaf);
        }
        let rebuilt = Frontier::from_parts(frontier.size(), frontier.nodes().to_vec())
            .expect("consistent parts");
        assert_eq!(rebuilt, frontier);
        // 39 has four set bits, 37 three: three hashes cannot be a tree of 39.
        assert!(Frontier::from_parts(39, frontier.nodes().to_vec()).is_err());
    }

    proptest! {
        /// Batch proofs are the proofs built from every leaf, for any split of any tree.
        #[test]
        fn batch_proofs_are_the_full_proofs(total in 1usize..300, cut in 0usize..300) {
            let leaves = leaves(9, total);
            let first = cut % total;
            let mut before = Frontier::new();
            for hash in &leaves[..first] {
                before.push(*hash);
            }
            let proofs = batch_inclusion_proofs(&before, &leaves[first..]);
            prop_assert_eq!(proofs.len(), total - first);
            for proof in proofs {
                let full = inclusion_proof(&leaves, proof.index).unwrap();
                prop_assert_eq!(&proof, &full);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        #[test]
        fn incremental_root_equals_scratch_root_for_every_size_to_1000(seed in any::<u64>()) {
            let all = leaves(seed, 1000);
            let mut frontier = Frontier::new();
            prop_assert_eq!(frontier.root(), root(&[]));
            for size in 1..=1000 {
                frontier.push(all[size - 1]);
                prop_assert_eq!(frontier.size(), size as u64);
                prop_assert_eq!(frontier.root(), root(&all[..size]), "size {}", size);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn inclusion_proofs_verify_for_their_leaf_only(
            seed in any::<u64>(),
            size in 1usize..600,
            pick in any::<prop::sample::Index>(),
            other in any::<prop::sample::Index>(),
        ) {
            let all = leaves(seed, size);
            let index = pick.index(size);
            let tree_root = root(&all);
            let proof = inclusion_proof(&all, index as u64).expect("index in range");
            prop_assert_eq!(verify_inclusion(&all[index], &proof, &tree_root), Ok(()));

            // A wrong leaf.
            let wrong_leaf = fabric_events::entry_hash(b"not in the tree");
            prop_assert!(verify_inclusion(&wrong_leaf, &proof, &tree_root).is_err());
            // Another leaf of the same tree with this leaf's path.
            let other_index = other.index(size);
            if all[other_index] != all[index] {
                prop_assert!(verify_inclusion(&all[other_index], &proof, &tree_root).is_err());
            }
            // A wrong index.
            if other_index != index {
                let moved = InclusionProof { index: other_index as u64, ..proof.clone() };
                prop_assert!(verify_inclusion(&all[index], &moved, &tree_root).is_err());
            }
            // A wrong tree size: the path does not lead to the root of the larger tree.
            let grown = InclusionProof { tree_size: proof.tree_size + 1, ..proof.clone() };
            let grown_root = root(&leaves(seed, size + 1));
            prop_assert!(verify_inclusion(&all[index], &grown, &grown_root).is_err());
            // A wrong root.
            prop_assert!(verify_inclusion(&all[index], &proof, &wrong_leaf).is_err());
            // A damaged path.
            if let Some(first) = proof.path.first() {
                let mut damaged = proof.clone();
                damaged.path[0] = node_hash(first, first);
                prop_assert!(verify_inclusion(&all[index], &damaged, &tree_root).is_err());
            }
        }
    }

    /// Every one-change forgery of a valid consistency proof, labelled; none may verify.
    /// `old_sizes` and `new_sizes` are the other sizes to claim (those equal to the proof's own
    /// are skipped, so each forgery really changes something), `root_of(size)` the honest root
    /// of the tree of that size.
    ///
    /// A changed new size is only paired with its own root: a root does not commit to its
    /// tree's size (a leaf hash can stand where a node would be), so the stale new root under
    /// another size may verify; the signed tree head is what binds the two.
    fn forgeries(
        old_root: Hash32,
        new_root: Hash32,
        proof: &ConsistencyProof,
        old_sizes: impl IntoIterator<Item = u64>,
        new_sizes: impl IntoIterator<Item = u64>,
        root_of: impl Fn(u64) -> Hash32,
    ) -> Vec<(String, Hash32, Hash32, ConsistencyProof)> {
        let stranger = fabric_events::entry_hash(b"not a root of this tree");
        let mut out = vec![
            ("wrong old root".into(), stranger, new_root, proof.clone()),
            ("wrong new root".into(), old_root, stranger, proof.clone()),
        ];
        for i in 0..proof.path.len() {
            let mut damaged = proof.clone();
            damaged.path[i] = node_hash(&damaged.path[i], &damaged.path[i]);
            out.push((format!("damaged path[{i}]"), old_root, new_root, damaged));
        }
        if !proof.path.is_empty() {
            let mut truncated = proof.clone();
            truncated.path.pop();
            out.push(("truncated path".into(), old_root, new_root, truncated));
        }
        let mut extended = proof.clone();
        extended.path.push(stranger);
        out.push(("extra path element".into(), old_root, new_root, extended));
        for old_size in old_sizes.into_iter().filter(|&m| m != proof.old_size) {
            let moved = ConsistencyProof {
                old_size,
                ..proof.clone()
            };
            let label = format!("old size {old_size}");
            out.push((label.clone(), old_root, new_root, moved.clone()));
            out.push((label + " and its root", root_of(old_size), new_root, moved));
        }
        for new_size in new_sizes.into_iter().filter(|&n| n != proof.new_size) {
            let moved = ConsistencyProof {
                new_size,
                ..proof.clone()
            };
            let label = format!("new size {new_size} and its root");
            out.push((label, old_root, root_of(new_size), moved));
        }
        out
    }

    /// The examples of RFC 9162 §2.1.5 on its 7-leaf tree (leaves a..f, j = d0..d6).
    #[test]
    fn consistency_proofs_match_the_rfc_9162_examples() {
        let l = leaves(11, 7);
        let (c, d, j) = (l[2], l[3], l[6]);
        let g = node_hash(&l[0], &l[1]);
        let h = node_hash(&c, &d);
        let i = node_hash(&l[4], &l[5]);
        let k = node_hash(&g, &h);
        let big_l = node_hash(&i, &j);
        let cases: [(u64, Vec<Hash32>); 3] = [
            (3, vec![c, d, g, big_l]),
            (4, vec![big_l]),
            (6, vec![i, j, k]),
        ];
        for (m, expected) in cases {
            let proof = consistency_proof(&l, m).expect("sizes in range");
            assert_eq!(proof.path, expected, "PROOF({m}, D[7])");
            assert_eq!(
                verify_consistency(&root(&l[..m as usize]), &root(&l), &proof),
                Ok(())
            );
        }
    }

    /// Consistency vectors over the leaves of `format_document_vectors_hold`.
    #[test]
    fn consistency_format_document_vectors_hold() {
        let l: Vec<Hash32> = (0u8..3).map(|i| fabric_events::entry_hash(&[i])).collect();
        let hex = |proof: &ConsistencyProof| -> Vec<String> {
            proof.path.iter().map(Hash32::to_hex).collect()
        };
        // PROOF(2, D[3]) = SUBPROOF(2, D[0:2], true) ++ [MTH(D[2:3])] = [] ++ [l2].
        let two_to_three = consistency_proof(&l, 2).expect("in range");
        assert_eq!(
            hex(&two_to_three),
            ["0013f4c84c09ed4f906f561e31fb6cb5336107f6813206a1f8860ab1ad35f2b8"]
        );
        // PROOF(1, D[3]) = SUBPROOF(1, D[0:2], true) ++ [l2]
        //               = (SUBPROOF(1, D[0:1], true) ++ [l1]) ++ [l2] = [l1, l2].
        let one_to_three = consistency_proof(&l, 1).expect("in range");
        assert_eq!(
            hex(&one_to_three),
            [
                "7b7015bb92cf0b318037702a6cdd81dee41224f734684c2c122cd6359cb1ee63",
                "0013f4c84c09ed4f906f561e31fb6cb5336107f6813206a1f8860ab1ad35f2b8",
            ]
        );
        // PROOF(3, D[3]) is empty.
        assert!(consistency_proof(&l, 3).expect("in range").path.is_empty());
        // The old roots: MTH(D[1]) = l0, MTH(D[2]) = the inclusion vector's sibling.
        let root_three = root(&l);
        assert_eq!(
            root_three.to_hex(),
            "b8a32224c977fedb0f8860d7bb067da5e88821ebc3a518f29bf21afeee562d43"
        );
        assert_eq!(
            root(&l[..2]).to_hex(),
            "a7c40517c3ba6ed1c930a04047fc7d941e0c6c86dff760457784186431014629"
        );
        assert_eq!(
            verify_consistency(&root(&l[..2]), &root_three, &two_to_three),
            Ok(())
        );
        assert_eq!(
            verify_consistency(&l[0], &root_three, &one_to_three),
            Ok(())
        );
    }

    #[test]
    fn consistency_proofs_round_trip_for_every_pair_to_70() {
        let all = leaves(9, 72);
        let roots: Vec<Hash32> = (0..=all.len()).map(|n| root(&all[..n])).collect();
        for n in 1..=70 {
            for m in 1..=n {
                let proof = consistency_proof(&all[..n], m as u64).expect("sizes in range");
                assert_eq!(proof.old_size, m as u64);
                assert_eq!(proof.new_size, n as u64);
                assert_eq!(proof.path.len(), consistency_path_len(m as u64, n as u64));
                assert_eq!(
                    verify_consistency(&roots[m], &roots[n], &proof),
                    Ok(()),
                    "PROOF({m}, D[{n}])"
                );
                // Every other claimed size, including the out-of-range 0 and n + 1.
                let forged = forgeries(
                    roots[m],
                    roots[n],
                    &proof,
                    0..=n as u64 + 1,
                    0..=72,
                    |size| roots[size as usize],
                );
                for (what, old_root, new_root, forged_proof) in forged {
                    assert!(
                        verify_consistency(&old_root, &new_root, &forged_proof).is_err(),
                        "PROOF({m}, D[{n}]) with {what} verifies"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn consistency_proofs_verify_for_their_roots_only(
            seed in any::<u64>(),
            new_size in 1usize..600,
            pick in any::<prop::sample::Index>(),
            other_old in any::<prop::sample::Index>(),
            other_new in 1u64..700,
        ) {
            let longer = leaves(seed, 700);
            let all = &longer[..new_size];
            let old_size = pick.index(new_size) + 1;
            let old_root = root(&all[..old_size]);
            let new_root = root(all);
            let proof = consistency_proof(all, old_size as u64).expect("sizes in range");
            prop_assert_eq!(verify_consistency(&old_root, &new_root, &proof), Ok(()));
            // The generic builder asks only for the nodes it returns.
            let mut asked = 0;
            let from_subtrees = consistency_proof_from(
                |start, end| {
                    asked += 1;
                    root(&all[start as usize..end as usize])
                },
                old_size as u64,
                new_size as u64,
            );
            prop_assert_eq!(from_subtrees, Ok(proof.clone()));
            prop_assert_eq!(asked, proof.path.len());

            let old_sizes = [
                other_old.index(new_size) as u64 + 1,
                old_size as u64 - 1,
                old_size as u64 + 1,
            ];
            let new_sizes = [other_new, new_size as u64 - 1, new_size as u64 + 1];
            for (what, forged_old, forged_new, forged) in
                forgeries(old_root, new_root, &proof, old_sizes, new_sizes, |size| {
                    root(&longer[..size as usize])
                })
            {
                prop_assert!(
                    verify_consistency(&forged_old, &forged_new, &forged).is_err(),
                    "PROOF({}, D[{}]) with {} verifies", old_size, new_size, what
                );
            }
        }
    }

    #[test]
    fn consistency_sizes_out_of_range_are_refused() {
        let all = leaves(5, 4);
        assert_eq!(
            consistency_proof(&all, 0),
            Err(SizeOutOfRange {
                old_size: 0,
                new_size: 4
            })
        );
        let too_big = consistency_proof(&all, 5).expect_err("old size above new size");
        assert_eq!(
            too_big.to_string(),
            "no consistency proof exists from 5 leaves to 4: \
             the old size must be between 1 and the new size"
        );
        let r = root(&all);
        for (old_size, new_size) in [(0, 4), (5, 4), (0, 0)] {
            let proof = ConsistencyProof {
                old_size,
                new_size,
                path: vec![],
            };
            assert_eq!(
                verify_consistency(&r, &r, &proof),
                Err(ProofError::ConsistencySizes { old_size, new_size })
            );
        }
    }

    #[test]
    fn equal_sizes_need_an_empty_path_and_equal_roots() {
        let all = leaves(6, 5);
        let r = root(&all);
        let proof = consistency_proof(&all, 5).expect("in range");
        assert_eq!(proof.path, vec![]);
        assert_eq!(verify_consistency(&r, &r, &proof), Ok(()));
        let other = root(&all[..4]);
        assert_eq!(
            verify_consistency(&other, &r, &proof),
            Err(ProofError::SameSizeRootsDiffer {
                size: 5,
                old_root: other,
                new_root: r
            })
        );
        let padded = ConsistencyProof {
            path: vec![r],
            ..proof
        };
        let err = verify_consistency(&r, &r, &padded).expect_err("a path between equal sizes");
        assert_eq!(
            err.to_string(),
            "consistency path from 5 to 5 leaves has length 1, not 0"
        );
    }

    #[test]
    fn inclusion_proof_from_asks_only_for_the_path() {
        let all = leaves(8, 45);
        for index in 0..all.len() as u64 {
            let mut asked = 0;
            let proof = inclusion_proof_from(
                |start, end| {
                    asked += 1;
                    root(&all[start as usize..end as usize])
                },
                index,
                all.len() as u64,
            )
            .expect("in range");
            assert_eq!(Ok(proof.clone()), inclusion_proof(&all, index));
            assert_eq!(asked, proof.path.len());
        }
    }

    #[test]
    fn out_of_range_indices_are_refused() {
        let all = leaves(5, 4);
        assert!(inclusion_proof(&all, 4).is_err());
        let proof = InclusionProof {
            index: 4,
            tree_size: 4,
            path: vec![],
        };
        assert!(matches!(
            verify_inclusion(&all[0], &proof, &root(&all)),
            Err(ProofError::IndexOutOfRange { .. })
        ));
    }
}
