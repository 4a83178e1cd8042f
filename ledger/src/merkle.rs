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
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH(D[n]) computed from scratch, in O(n): the reference definition.
pub fn root(leaves: &[Hash32]) -> Hash32 {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n);
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

/// PATH(index, leaves): the audit path of one leaf, from the full list of leaves (O(n)).
pub fn inclusion_proof(leaves: &[Hash32], index: u64) -> Result<InclusionProof, IndexOutOfRange> {
    let tree_size = leaves.len() as u64;
    if index >= tree_size {
        return Err(IndexOutOfRange { index, tree_size });
    }
    let mut path = Vec::new();
    collect_path(leaves, index as usize, &mut path);
    Ok(InclusionProof {
        index,
        tree_size,
        path,
    })
}

fn collect_path(leaves: &[Hash32], index: usize, path: &mut Vec<Hash32>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split_point(n);
    // The path is built leaf-first: recurse, then add this level's sibling.
    if index < k {
        collect_path(&leaves[..k], index, path);
        path.push(root(&leaves[k..]));
    } else {
        collect_path(&leaves[k..], index - k, path);
        path.push(root(&leaves[..k]));
    }
}

/// Why an inclusion proof does not verify.
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
