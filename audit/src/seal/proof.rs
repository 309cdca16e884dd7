//! Inclusion proofs: one event, the signed checkpoint that covers it, the Merkle audit path
//! between them, and the epoch records that certify the checkpoint's key. Self-contained: it
//! verifies offline with only the node's public key.

use std::io::BufRead;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::merkle::{self, Hash};
use super::{event_leaf, is_seal_line, SealKind, SealRecord};
use crate::chain::recompute_hash;

/// Format tag of a proof.
const PROOF_FORMAT: &str = "safehouse-audit-inclusion-v1";

/// A self-contained inclusion proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// [`PROOF_FORMAT`].
    pub format: String,
    /// The event's line, exactly as in the log (without its newline).
    pub event: String,
    /// Its position among the checkpoint's leaves.
    pub index: u64,
    /// The Merkle audit path (hex), leaf's sibling first.
    pub path: Vec<String>,
    /// The checkpoint that covers it.
    pub checkpoint: SealRecord,
    /// Every `epoch` record from epoch 0 up to the checkpoint's epoch, in order.
    pub epochs: Vec<SealRecord>,
}

/// Why no proof could be made.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// Reading the log failed.
    #[error("reading the log: {0}")]
    Io(#[from] std::io::Error),
    /// The event is not in the log.
    #[error("no event of sandbox {0:?} with seq {1} in the log")]
    NoEvent(String, u64),
    /// No checkpoint covers it.
    #[error("no checkpoint covers sandbox {0:?} seq {1} (written after the last one?)")]
    NotCovered(String, u64),
}

/// One event line with its parsed chain fields.
struct Leaf {
    sandbox: String,
    seq: u64,
    leaf: Hash,
}

fn parse_event(line: &[u8]) -> Option<Leaf> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let sandbox = v.get("sandbox_id")?.as_str()?.to_owned();
    let seq = v.get("seq")?.as_u64()?;
    let hash_hex = v.get("hash")?.as_str()?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hash_hex, &mut hash).ok()?;
    Some(Leaf {
        sandbox,
        seq,
        leaf: event_leaf(&hash),
    })
}

/// Builds the proof for `sandbox`'s event `seq` from a log (the lines of a rotated set, in
/// order). The log is trusted only to find things: the proof checks on its own.
pub fn prove(log: impl BufRead, sandbox: &str, seq: u64) -> Result<InclusionProof, ProofError> {
    let mut event: Option<String> = None;
    let mut epochs = Vec::new();
    // Leaves of every sandbox not yet covered, in order.
    let mut pending: std::collections::HashMap<String, Vec<(u64, Hash)>> =
        std::collections::HashMap::new();
    for line in log.split(b'\n') {
        let line = line?;
        if is_seal_line(&line) {
            let Ok(record) = SealRecord::parse(&line) else {
                continue;
            };
            match record.seal.kind {
                SealKind::Epoch => epochs.push(record),
                SealKind::Checkpoint => {
                    let mut leaves = Vec::new();
                    let mut index = None;
                    for (id, &[first, last]) in &record.seal.covers {
                        let list = pending.entry(id.clone()).or_default();
                        for (s, leaf) in list.iter().filter(|(s, _)| (first..=last).contains(s)) {
                            if id == sandbox && *s == seq {
                                index = Some(leaves.len());
                            }
                            leaves.push(*leaf);
                        }
                        list.retain(|(s, _)| *s > last);
                    }
                    if let (Some(index), Some(event)) = (index, event.take()) {
                        let path = merkle::inclusion_proof(&leaves, index)
                            .unwrap_or_default()
                            .iter()
                            .map(hex::encode)
                            .collect();
                        let epoch = record.seal.epoch;
                        epochs.retain(|e: &SealRecord| e.seal.epoch < epoch);
                        return Ok(InclusionProof {
                            format: PROOF_FORMAT.to_owned(),
                            event,
                            index: index as u64,
                            path,
                            checkpoint: record,
                            epochs,
                        });
                    }
                }
            }
            continue;
        }
        let Some(leaf) = parse_event(&line) else {
            continue;
        };
        if leaf.sandbox == sandbox && leaf.seq == seq {
            event = Some(String::from_utf8_lossy(&line).into_owned());
        }
        pending
            .entry(leaf.sandbox)
            .or_default()
            .push((leaf.seq, leaf.leaf));
    }
    match event {
        Some(_) => Err(ProofError::NotCovered(sandbox.to_owned(), seq)),
        None => Err(ProofError::NoEvent(sandbox.to_owned(), seq)),
    }
}

/// What a checked proof shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenEvent {
    /// The event's sandbox.
    pub sandbox: String,
    /// Its seq.
    pub seq: u64,
    /// The checkpoint's seal seq.
    pub checkpoint_seq: u64,
    /// The checkpoint's epoch.
    pub epoch: u64,
}

/// Checks a proof with the node's public key (epoch 0): the epoch records certify the key of
/// each next epoch, the checkpoint verifies with its epoch's key, the event's content matches
/// its hash, and the audit path leads from its leaf to the checkpoint's root at its position.
pub fn verify_proof(
    proof: &InclusionProof,
    node_key: &VerifyingKey,
) -> Result<ProvenEvent, String> {
    if proof.format != PROOF_FORMAT {
        return Err(format!(
            "format {:?}, expected {PROOF_FORMAT:?}",
            proof.format
        ));
    }
    let mut key = *node_key;
    for (epoch, record) in proof.epochs.iter().enumerate() {
        let epoch = epoch as u64;
        if record.seal.kind != SealKind::Epoch || record.seal.epoch != epoch {
            return Err(format!("epoch record {epoch} is missing or out of order"));
        }
        record
            .verify(&key)
            .map_err(|e| format!("epoch record {epoch}: {e} with epoch {epoch}'s key"))?;
        key = record.next_key()?;
    }
    let cp = &proof.checkpoint;
    let epoch = proof.epochs.len() as u64;
    if cp.seal.kind != SealKind::Checkpoint || cp.seal.epoch != epoch {
        return Err(format!(
            "the checkpoint claims epoch {} but the epoch records lead to epoch {epoch}",
            cp.seal.epoch
        ));
    }
    cp.verify(&key).map_err(|e| {
        format!(
            "checkpoint seq {}: {e} with epoch {epoch}'s key",
            cp.seal.seq
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&proof.event).map_err(|e| format!("event: {e}"))?;
    let sandbox = value["sandbox_id"].as_str().unwrap_or_default().to_owned();
    let seq = value["seq"].as_u64().unwrap_or_default();
    let (claimed, actual) = recompute_hash(value).map_err(|e| format!("event: {e}"))?;
    if claimed.as_deref() != Some(actual.as_str()) {
        return Err("the event's content does not match its hash".into());
    }
    // Where the checkpoint puts this sandbox and seq.
    let mut offset = 0u64;
    let mut index = None;
    for (id, &[first, last]) in &cp.seal.covers {
        if *id == sandbox && (first..=last).contains(&seq) {
            index = Some(offset + (seq - first));
        }
        offset += last.saturating_sub(first) + 1;
    }
    if index != Some(proof.index) {
        return Err(format!(
            "the checkpoint does not cover sandbox {sandbox} seq {seq} at index {}",
            proof.index
        ));
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&actual, &mut hash).map_err(|e| e.to_string())?;
    let path = proof
        .path
        .iter()
        .map(|h| {
            let mut b = [0u8; 32];
            hex::decode_to_slice(h, &mut b).map(|_| b)
        })
        .collect::<Result<Vec<Hash>, _>>()
        .map_err(|e| format!("path: {e}"))?;
    let mut root = [0u8; 32];
    hex::decode_to_slice(cp.seal.root.as_deref().unwrap_or_default(), &mut root)
        .map_err(|e| format!("checkpoint root: {e}"))?;
    let size = cp.seal.leaves.unwrap_or_default();
    if !merkle::verify_inclusion(&event_leaf(&hash), proof.index, size, &path, &root) {
        return Err("the audit path does not lead to the checkpoint's root".into());
    }
    Ok(ProvenEvent {
        sandbox,
        seq,
        checkpoint_seq: cp.seal.seq,
        epoch,
    })
}
