//! Signed, forward-secure checkpoints over the audit log.
//!
//! Besides event lines, the writer appends *seal records*, one JSON line each:
//!
//! ```text
//! {"seal":{"covers":{"sb-1":[1,40]},"epoch":0,"kind":"checkpoint","leaves":40,"prev":"…","root":"…","seq":7,"time":"…"},"sig":"…"}
//! {"seal":{"epoch":0,"kind":"epoch","next_key":"…","prev":"…","seq":8,"time":"…"},"sig":"…"}
//! ```
//!
//! - Every seal record on a node has the next `seq` of one node-wide chain (`prev` is the
//!   previous record's hash), whichever shim wrote it: shims take the node key's lock, read the
//!   chain head from the key file, append, and store the new head.
//! - A `checkpoint` commits to the events its writer wrote since its previous checkpoint:
//!   `covers` gives each sandbox's seq range, and `root` is the RFC 6962 Merkle tree hash of
//!   their event hashes (leaf data = the 32 bytes of the event's `hash`), sandboxes in
//!   ascending id order and each sandbox's events in seq order; `leaves` is how many.
//! - An `epoch` record ends epoch `epoch`: it is signed with that epoch's key and names the
//!   next epoch's public key (`next_key`). The writer then evolves the key (see `key.rs`) and
//!   the old key is gone. Records after it must be signed by the new key.
//! - `sig` is the ed25519 signature, by the current epoch's key, of
//!   `"safehouse-audit-seal-v1\n"` followed by the canonical JSON of `seal` (keys sorted, no
//!   whitespace). A record's hash (the next one's `prev`) is the SHA-256 of that same message
//!   followed by the 64 signature bytes.
//!
//! A verifier holding only epoch 0's public key (the node's) walks the records in order and
//! checks each one with the key of the epoch it is in, which it learns only from the previous
//! epoch's signed `epoch` record. Someone who steals the key file in epoch N holds epoch N's
//! seed only: epochs before N cannot be re-signed, and a record of an earlier epoch re-signed
//! with a later key fails, because the verifier never takes a record's word for its epoch.

pub mod key;
pub mod merkle;
pub mod proof;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::timestamp::Timestamp;
use key::{KeyLock, KeyState};
use merkle::Hash;

/// Prefix of every signed message.
const SIGNING_CONTEXT: &[u8] = b"safehouse-audit-seal-v1\n";

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A key file is not what it should be.
    #[error("key file {path}: {why}")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// `generate` would replace a key.
    #[error("{0} exists: refusing to replace a node key")]
    KeyExists(PathBuf),
    /// The OS gave no randomness.
    #[error("no randomness for a new key: {0}")]
    Random(String),
    /// Writing the records to the log failed.
    #[error("writing seal records to the log: {0}")]
    Log(io::Error),
}

impl SealError {
    fn io(what: &'static str, path: &Path, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// The two kinds of seal record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealKind {
    /// Commits to events.
    Checkpoint,
    /// Ends an epoch and certifies the next epoch's key.
    Epoch,
}

/// The signed part of a seal record. Fields in ascending key order (canonical JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    /// Checkpoint: each sandbox's seq range `[first, last]` committed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub covers: BTreeMap<String, [u64; 2]>,
    /// The epoch whose key signed this record.
    pub epoch: u64,
    /// What the record is.
    pub kind: SealKind,
    /// Checkpoint: how many events `root` covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves: Option<u64>,
    /// Epoch record: the next epoch's public key (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_key: Option<String>,
    /// Hash of the node's previous seal record ([`key::SEAL_GENESIS`] for the first).
    pub prev: String,
    /// Checkpoint: Merkle tree hash of the covered events (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Position in the node's seal chain, from 1.
    pub seq: u64,
    /// When it was written.
    pub time: Timestamp,
}

/// A whole seal record line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealRecord {
    /// The signed content.
    pub seal: Seal,
    /// Hex ed25519 signature.
    pub sig: String,
}

impl Seal {
    /// The message the signature covers.
    pub fn message(&self) -> Vec<u8> {
        let mut m = SIGNING_CONTEXT.to_vec();
        // A struct of strings, integers and maps with string keys always serialises.
        let _ = serde_json::to_writer(&mut m, self);
        m
    }
}

impl SealRecord {
    /// Signs `seal` with `seed`'s key.
    pub fn sign(seal: Seal, seed: &[u8; 32]) -> Self {
        let sig = key::signing_key(seed).sign(&seal.message());
        Self {
            seal,
            sig: hex::encode(sig.to_bytes()),
        }
    }

    /// Whether the signature is `key`'s over this record.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), String> {
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(&self.sig, &mut bytes).map_err(|e| format!("sig: {e}"))?;
        key.verify(&self.seal.message(), &Signature::from_bytes(&bytes))
            .map_err(|_| "signature does not verify".to_owned())
    }

    /// The record's hash (hex): what the next record's `prev` must be.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.seal.message());
        h.update(hex::decode(&self.sig).unwrap_or_default());
        hex::encode(h.finalize())
    }

    /// The line as written (with its newline).
    pub fn line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses a line that starts with `{"seal":`.
    pub fn parse(line: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(line).map_err(|e| e.to_string())
    }

    /// The epoch record's next key.
    pub fn next_key(&self) -> Result<VerifyingKey, String> {
        let text = self
            .seal
            .next_key
            .as_deref()
            .ok_or("epoch record without next_key")?;
        key::parse_public_key(text)
    }
}

/// Whether a line is a seal record rather than an event.
pub fn is_seal_line(line: &[u8]) -> bool {
    line.starts_with(b"{\"seal\":")
}

/// The leaf of an event: RFC 6962 leaf hash of its 32-byte `hash`.
pub fn event_leaf(event_hash: &Hash) -> Hash {
    merkle::leaf_hash(event_hash)
}

/// The Merkle root over `covers`' leaves, in covers order (sandbox id, then seq).
pub fn checkpoint_root<'a>(leaves: impl IntoIterator<Item = &'a [Hash]>) -> (u64, Hash) {
    let all: Vec<Hash> = leaves.into_iter().flatten().copied().collect();
    (all.len() as u64, merkle::root(&all))
}

/// How and when the writer seals.
#[derive(Clone, Debug)]
pub struct SealConfig {
    /// The node key file (see `key.rs`).
    pub key: PathBuf,
    /// A checkpoint after this many events...
    pub every_events: u64,
    /// ...or this long after the first event not yet checkpointed (and at every sandbox's
    /// end, and when the writer finishes).
    pub every: Duration,
    /// How long one key epoch lasts: the window in which a stolen key can re-sign the past.
    pub epoch_length: Duration,
    /// A copy of every seal record is appended here too (an off-node mount), if set.
    pub anchor: Option<PathBuf>,
    /// A command (argv) that gets every batch of new seal records on its stdin: the way to
    /// send them off the node (`curl --data-binary @- https://...`, `logger`, an agent's
    /// client). Run without a shell; never waited for by the writer.
    pub anchor_command: Option<Vec<String>>,
}

impl SealConfig {
    /// Defaults for `key`: every 10 000 events or 1 s, 15-minute epochs, no anchor.
    pub fn new(key: impl Into<PathBuf>) -> Self {
        Self {
            key: key.into(),
            every_events: 10_000,
            every: Duration::from_secs(1),
            epoch_length: Duration::from_secs(15 * 60),
            anchor: None,
            anchor_command: None,
        }
    }
}

/// One sandbox's events written since the last checkpoint.
#[derive(Default)]
struct Pending {
    first: u64,
    leaves: Vec<Hash>,
}

/// The writer's side: collects the leaves of written events and appends signed records.
pub struct Sealer {
    config: SealConfig,
    pending: BTreeMap<String, Pending>,
    count: u64,
    since: Option<Instant>,
    forced: bool,
    /// When the epoch was last looked at: an idle writer still evolves the key on time.
    epoch_checked: Instant,
}

/// Counters of a sealer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SealStats {
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Epochs evolved.
    pub epochs: u64,
    /// Failed attempts (each retried at the next opportunity).
    pub errors: u64,
}

impl Sealer {
    /// A sealer over `config`'s key, which must be readable now.
    pub fn open(config: SealConfig) -> Result<Self, SealError> {
        KeyState::load(&config.key)?;
        Ok(Self {
            config,
            pending: BTreeMap::new(),
            count: 0,
            since: None,
            forced: false,
            epoch_checked: Instant::now(),
        })
    }

    /// Records a written event of `sandbox` (seq order within a sandbox).
    pub fn add(&mut self, sandbox: &str, seq: u64, event_hash: &Hash) {
        let p = match self.pending.get_mut(sandbox) {
            Some(p) => p,
            None => self.pending.entry(sandbox.to_owned()).or_insert(Pending {
                first: seq,
                leaves: Vec::new(),
            }),
        };
        p.leaves.push(event_leaf(event_hash));
        self.count += 1;
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether a checkpoint is due (count or age).
    pub fn due(&self) -> bool {
        self.forced
            || self.epoch_checked.elapsed() >= self.config.epoch_length
            || self.count >= self.config.every_events
            || self.since.is_some_and(|t| t.elapsed() >= self.config.every)
    }

    /// Makes a checkpoint due now (a sandbox's chain ended).
    pub fn force(&mut self) {
        if self.count > 0 {
            self.forced = true;
        }
    }

    /// Whether events wait for a checkpoint.
    pub fn has_pending(&self) -> bool {
        self.count > 0
    }

    /// Appends the due records to `log`: an epoch record first if the epoch is over, then a
    /// checkpoint of the pending events (if any). Holds the node key's lock throughout; on
    /// error nothing is stored and the events stay pending.
    pub fn checkpoint(&mut self, log: &mut dyn Write) -> Result<SealStats, SealError> {
        self.epoch_checked = Instant::now();
        let _lock = KeyLock::take(&self.config.key)?;
        let mut state = KeyState::load(&self.config.key)?;
        let mut out = Vec::new();
        let mut stats = SealStats::default();
        let now = Timestamp::now();
        let epoch_secs = i64::try_from(self.config.epoch_length.as_secs()).unwrap_or(i64::MAX);
        if key::unix_now().saturating_sub(state.epoch_started) >= epoch_secs {
            let next_seed = key::evolve_seed(&state.seed);
            let next_key = key::signing_key(&next_seed).verifying_key();
            append_record(
                Seal {
                    covers: BTreeMap::new(),
                    epoch: state.epoch,
                    kind: SealKind::Epoch,
                    leaves: None,
                    next_key: Some(hex::encode(next_key.as_bytes())),
                    prev: state.seal_hash.clone(),
                    root: None,
                    seq: state.seal_seq + 1,
                    time: now,
                },
                &mut state,
                &mut out,
            );
            state.seed = next_seed;
            state.epoch += 1;
            state.epoch_started = key::unix_now();
            stats.epochs += 1;
        }
        if self.count > 0 {
            let covers = self
                .pending
                .iter()
                .map(|(id, p)| (id.clone(), [p.first, p.first + p.leaves.len() as u64 - 1]))
                .collect();
            let (leaves, root) = checkpoint_root(self.pending.values().map(|p| &p.leaves[..]));
            append_record(
                Seal {
                    covers,
                    epoch: state.epoch,
                    kind: SealKind::Checkpoint,
                    leaves: Some(leaves),
                    next_key: None,
                    prev: state.seal_hash.clone(),
                    root: Some(hex::encode(root)),
                    seq: state.seal_seq + 1,
                    time: now,
                },
                &mut state,
                &mut out,
            );
            stats.checkpoints += 1;
        }
        if out.is_empty() {
            return Ok(stats);
        }
        log.write_all(&out)
            .and_then(|_| log.flush())
            .map_err(SealError::Log)?;
        state.store(&self.config.key, stats.epochs > 0)?;
        self.pending.clear();
        self.count = 0;
        self.since = None;
        self.forced = false;
        if let Some(anchor) = &self.config.anchor {
            let appended = OpenOptions::new()
                .append(true)
                .create(true)
                .open(anchor)
                .and_then(|mut f| f.write_all(&out));
            if let Err(e) = appended {
                tracing::warn!(anchor = %anchor.display(), error = %e, "seal records not anchored");
            }
        }
        if let Some(argv) = &self.config.anchor_command {
            send_to_command(argv, out);
        }
        Ok(stats)
    }
}

/// How many anchor commands may run at once; a batch beyond that is not sent (and logged), so a
/// hung command never piles up processes or holds the writer.
pub const ANCHOR_COMMANDS_IN_FLIGHT: usize = 4;

static ANCHORS_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Starts `argv` with `records` on its stdin, on a thread of its own that waits for it.
fn send_to_command(argv: &[String], records: Vec<u8>) {
    use std::sync::atomic::Ordering;
    let Some((program, args)) = argv.split_first() else {
        return;
    };
    if ANCHORS_IN_FLIGHT.fetch_add(1, Ordering::SeqCst) >= ANCHOR_COMMANDS_IN_FLIGHT {
        ANCHORS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!(command = %program, "seal records not anchored: {ANCHOR_COMMANDS_IN_FLIGHT} anchor commands still running");
        return;
    }
    let program = program.clone();
    let args = args.to_vec();
    let spawned = std::thread::Builder::new()
        .name("audit-anchor".into())
        .spawn(move || {
            let result = std::process::Command::new(&program)
                .args(&args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .and_then(|mut child| {
                    let written = child
                        .stdin
                        .take()
                        .map(|mut stdin| stdin.write_all(&records))
                        .unwrap_or(Ok(()));
                    let status = child.wait()?;
                    written?;
                    Ok(status)
                });
            match result {
                Ok(status) if status.success() => {}
                Ok(status) => tracing::warn!(command = %program, %status, "seal records not anchored: the anchor command failed"),
                Err(e) => tracing::warn!(command = %program, error = %e, "seal records not anchored"),
            }
            ANCHORS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        ANCHORS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!(error = %e, "seal records not anchored: no thread for the anchor command");
    }
}

/// Signs `seal` with the current epoch's seed, appends its line to `out`, and moves the seal
/// chain's head (`seal_seq`, `seal_hash`) to it.
fn append_record(seal: Seal, state: &mut KeyState, out: &mut Vec<u8>) {
    let record = SealRecord::sign(seal, &state.seed);
    out.extend_from_slice(&record.line());
    state.seal_seq += 1;
    state.seal_hash = record.hash();
}

#[cfg(test)]
mod tests;
