//! The node's forward-secure signing key: files, generation and evolution.
//!
//! The key file (root only, mode 0600) holds the current epoch's 32-byte ed25519 seed and the
//! node's seal chain head (the seq and hash of the last seal record written). Evolving to the
//! next epoch replaces the seed with `SHA-256("safehouse-audit-epoch-v1\0" || seed)`, a one-way
//! step, and the file is rewritten (new file, fsync, rename over the old), so no earlier seed
//! stays on disk or in memory (seeds are wiped when dropped). Epoch 0's public key is the
//! node's public key: it is published at install (the `.pub` file) and every later epoch's
//! public key is certified in the log by the epoch before it (see `seal/mod.rs`).
//!
//! Several shims share one key file: every read-modify-write of it holds an exclusive
//! `flock(2)` on `<key>.lock`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::SealError;

/// Format tag of the key file.
const KEY_FORMAT: &str = "safehouse-audit-key-v1";
/// First word of the public key file.
const PUB_FORMAT: &str = "safehouse-audit-pub-v1";
/// Domain separation of the evolution step.
const EVOLVE_PREFIX: &[u8] = b"safehouse-audit-epoch-v1\0";
/// `prev` of the first seal record.
pub const SEAL_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The key file's name in a key directory.
pub const KEY_FILE: &str = "audit.key";
/// The public key file's name in a key directory.
pub const PUB_FILE: &str = "audit.pub";

/// The next epoch's seed: one-way, so a seed says nothing about the ones before it.
pub fn evolve_seed(seed: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(EVOLVE_PREFIX);
    h.update(seed);
    Zeroizing::new(h.finalize().into())
}

/// The ed25519 key pair of a seed.
pub fn signing_key(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// What the key file holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    epoch: u64,
    /// Unix seconds when the current epoch began.
    epoch_started: i64,
    format: String,
    seal_hash: String,
    seal_seq: u64,
    seed: String,
}

/// The node key's current state (read and written under the lock).
pub struct KeyState {
    /// The current epoch (0 at generation).
    pub epoch: u64,
    /// Unix seconds when it began.
    pub epoch_started: i64,
    /// The current epoch's seed.
    pub seed: Zeroizing<[u8; 32]>,
    /// seq of the last seal record written on the node (0: none yet).
    pub seal_seq: u64,
    /// Hash of that record (hex; [`SEAL_GENESIS`] before the first).
    pub seal_hash: String,
}

impl KeyState {
    /// Reads the key file.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| SealError::io("read key file", path, e))?,
        );
        let bad = |why: String| SealError::BadKeyFile {
            path: path.to_owned(),
            why,
        };
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let seed_hex = Zeroizing::new(file.seed);
        if file.format != KEY_FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {KEY_FORMAT:?}",
                file.format
            )));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(seed_hex.as_bytes(), &mut seed[..])
            .map_err(|e| bad(format!("seed: {e}")))?;
        Ok(Self {
            epoch: file.epoch,
            epoch_started: file.epoch_started,
            seed,
            seal_seq: file.seal_seq,
            seal_hash: file.seal_hash,
        })
    }

    /// Writes the key file, always [`KEY_FILE_LEN`] bytes (JSON padded with spaces).
    ///
    /// With `durable` (a new epoch, or a new key): a new 0600 file beside it, fsynced, renamed
    /// over the old one, directory fsynced, so the file is always whole and the old seed is
    /// gone from it for good. Otherwise (a checkpoint only moves the chain head; the seed is
    /// unchanged) the file is overwritten in place with one `pwrite` of the same length, no
    /// fsync: on this VM's disk an fsync or a rename-over per checkpoint cost 0.15-0.33 s of
    /// the writer thread's time. After a crash the head can lag the log; `verify` then reports
    /// the repeated seal `seq` at the first record written after it.
    pub fn store(&self, path: &Path, durable: bool) -> Result<(), SealError> {
        let file = KeyFile {
            epoch: self.epoch,
            epoch_started: self.epoch_started,
            format: KEY_FORMAT.to_owned(),
            seal_hash: self.seal_hash.clone(),
            seal_seq: self.seal_seq,
            seed: hex::encode(&self.seed[..]),
        };
        let mut text =
            Zeroizing::new(
                serde_json::to_vec(&file).map_err(|e| SealError::BadKeyFile {
                    path: path.to_owned(),
                    why: e.to_string(),
                })?,
            );
        drop(Zeroizing::new(file.seed));
        if text.len() >= KEY_FILE_LEN {
            return Err(SealError::BadKeyFile {
                path: path.to_owned(),
                why: format!("state of {} bytes does not fit {KEY_FILE_LEN}", text.len()),
            });
        }
        text.resize(KEY_FILE_LEN - 1, b' ');
        text.push(b'\n');
        if !durable {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path)
                .map_err(|e| SealError::io("open key file", path, e))?;
            return f
                .write_all_at(&text, 0)
                .map_err(|e| SealError::io("write key file", path, e));
        }
        let tmp = tmp_path(path);
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| SealError::io("create key file", &tmp, e))?;
        f.write_all(&text)
            .and_then(|_| f.sync_all())
            .map_err(|e| SealError::io("write key file", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| SealError::io("replace key file", path, e))?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

/// The key file's fixed length (its JSON is about 240 bytes).
pub const KEY_FILE_LEN: usize = 512;

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    path.with_file_name(name)
}

/// The lock file guarding `key`.
pub fn lock_path(key: &Path) -> PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    key.with_file_name(name)
}

/// An exclusive `flock(2)`, released when dropped.
pub struct KeyLock {
    _file: File,
}

impl KeyLock {
    /// Takes the lock of `key` (waits for other writers).
    pub fn take(key: &Path) -> Result<Self, SealError> {
        let path = lock_path(key);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| SealError::io("open key lock", &path, e))?;
        loop {
            // SAFETY: flock on a valid fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Self { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(SealError::io("lock key", &path, e));
            }
        }
    }
}

/// Creates a new node key in `dir`: `audit.key` (0600, epoch 0) and `audit.pub` (0644). Refuses
/// to replace an existing key file. Returns the public key.
pub fn generate(dir: &Path) -> Result<VerifyingKey, SealError> {
    std::fs::create_dir_all(dir).map_err(|e| SealError::io("create key directory", dir, e))?;
    let key = dir.join(KEY_FILE);
    if key.exists() {
        return Err(SealError::KeyExists(key));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut seed[..]).map_err(|e| SealError::Random(e.to_string()))?;
    let public = signing_key(&seed).verifying_key();
    let state = KeyState {
        epoch: 0,
        epoch_started: unix_now(),
        seed,
        seal_seq: 0,
        seal_hash: SEAL_GENESIS.to_owned(),
    };
    state.store(&key, true)?;
    write_public_key(&dir.join(PUB_FILE), &public)?;
    Ok(public)
}

/// The text of a public key file.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUB_FORMAT} ed25519 {}\n", hex::encode(key.as_bytes()))
}

/// Writes a public key file (0644).
pub fn write_public_key(path: &Path, key: &VerifyingKey) -> Result<(), SealError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| SealError::io("create public key file", path, e))?;
    f.write_all(public_key_text(key).as_bytes())
        .map_err(|e| SealError::io("write public key file", path, e))
}

/// Parses a public key: the file's text, or the bare 64 hex digits.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let hex_key = match words.as_slice() {
        [PUB_FORMAT, "ed25519", k] => *k,
        [k] => *k,
        _ => return Err(format!("expected \"{PUB_FORMAT} ed25519 <64 hex digits>\"")),
    };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes).map_err(|e| format!("public key: {e}"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("public key: {e}"))
}

/// Reads a public key file.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, SealError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SealError::io("read public key", path, e))?;
    parse_public_key(&text).map_err(|why| SealError::BadKeyFile {
        path: path.to_owned(),
        why,
    })
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    crate::timestamp::Timestamp::now().unix_nanos() / 1_000_000_000
}
