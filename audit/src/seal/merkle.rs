//! The Merkle tree hash of RFC 6962 (section 2.1; RFC 9162 section 2.1), over SHA-256.
//!
//! `MTH({}) = SHA-256()`, `MTH({d}) = SHA-256(0x00 || d)` and, for n > 1 leaves split at `k`,
//! the largest power of two smaller than n, `MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) ||
//! MTH(D[k:n]))`. Inclusion proofs are the audit paths of RFC 6962 section 2.1.1, checked with
//! the algorithm of RFC 9162 section 2.1.3.2. This is a hash construction over `sha2`; no
//! cryptographic primitive is implemented here.

use sha2::{Digest, Sha256};

/// A SHA-256 output.
pub type Hash = [u8; 32];

/// The leaf hash of `data`: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// The interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The tree hash of already leaf-hashed entries.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` (None when out of range), from the leaf's sibling upwards.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    path_into(leaves, index, &mut path);
    Some(path)
}

fn path_into(leaves: &[Hash], index: usize, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if index < k {
        path_into(&leaves[..k], index, out);
        out.push(root(&leaves[k..]));
    } else {
        path_into(&leaves[k..], index - k, out);
        out.push(root(&leaves[..k]));
    }
}

/// Whether `path` proves that `leaf` is entry `index` of a tree of `size` entries whose hash
/// is `expected_root` (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    expected_root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if sn == 0 {
            return false;
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
    sn == 0 && r == *expected_root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn empty_and_single_trees_follow_the_rfc() {
        assert_eq!(
            hex::encode(root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // RFC 6962 leaf hash of the empty string (a published test vector).
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let one = leaves(1);
        assert_eq!(root(&one), one[0]);
    }

    #[test]
    fn three_leaves_split_two_and_one() {
        let l = leaves(3);
        assert_eq!(root(&l), node_hash(&node_hash(&l[0], &l[1]), &l[2]));
    }

    #[test]
    fn every_inclusion_proof_verifies_and_a_wrong_one_does_not() {
        for n in 1..=33usize {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let path = inclusion_proof(&l, i).unwrap_or_default();
                assert!(
                    verify_inclusion(&l[i], i as u64, n as u64, &path, &r),
                    "leaf {i} of {n}"
                );
                let other = leaf_hash(b"not in the tree");
                assert!(!verify_inclusion(&other, i as u64, n as u64, &path, &r));
                if n > 1 {
                    let j = (i + 1) % n;
                    assert!(
                        !verify_inclusion(&l[i], j as u64, n as u64, &path, &r),
                        "leaf {i} of {n} accepted at index {j}"
                    );
                }
            }
            assert!(inclusion_proof(&l, n).is_none());
        }
    }
}
