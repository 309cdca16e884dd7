//! Checking an audit log: every sandbox's hash chain, in files where many sandboxes' lines
//! interleave, and the signed seal records (see `seal/mod.rs`) when there are any. Reports the
//! first break with its file, line and the kind of tampering it points to.
//!
//! The chains alone detect an edited line (its hash no longer matches), an edited line whose
//! hash was recomputed (the next line's `prev_hash` no longer links), deleted lines (a `seq`
//! gap), reordered lines, a cut last line, and a missing chain start. They cannot detect lines
//! removed from the very end of a chain, a whole sandbox removed, or a chain rewritten by
//! someone who recomputed every hash: sha256 is unkeyed.
//!
//! The seal records close those holes, as far as the node key's signatures reach: each
//! checkpoint's Merkle root must equal the root of the events it names (an edited and
//! recomputed chain, a deleted sandbox, an event moved after its checkpoint all change it),
//! seal records form one node-wide chain (deleting or reordering them breaks `seq`/`prev`),
//! every record must verify with the key of the epoch it sits in (learned only from the
//! previous epoch's signed `epoch` record, never from the record itself), a sandbox whose chain
//! ended must be covered by a checkpoint, and a copy of the records kept elsewhere (the
//! anchor) shows a tail cut back past its last checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use crate::chain::{recompute_hash, GENESIS_HASH};
use crate::seal::key::SEAL_GENESIS;
use crate::seal::merkle::{self, Hash};
use crate::seal::{event_leaf, is_seal_line, SealKind, SealRecord};

/// What kind of break was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// The line is not a JSON object with the chain fields.
    Malformed,
    /// The last line is cut short (no newline or not JSON).
    Truncated,
    /// The line's content does not match its hash.
    Edited,
    /// The line's prev_hash does not match the previous event of its sandbox:
    /// that event was edited (hash recomputed) or replaced.
    BrokenLink,
    /// Events are missing before this line.
    Deleted,
    /// Events of one sandbox appear out of order.
    Reordered,
    /// The sandbox's first event is not seq 1 with the genesis prev_hash.
    MissingStart,
    /// A seal record is malformed, claims the wrong epoch, or its signature does not verify
    /// with the key of the epoch it is in.
    BadSeal,
    /// The node's seal records do not follow each other (`seq` or `prev`): records were
    /// deleted, reordered or replaced.
    SealChain,
    /// A checkpoint's Merkle root or count does not match the events it names: an event was
    /// edited and its chain recomputed, or replaced.
    CheckpointMismatch,
    /// Events that must be sealed are not: a sandbox's chain ended but no checkpoint covers its
    /// last events, or a log read with the node key has no seal record at all.
    Unsealed,
    /// The log disagrees with the anchored copy of the seal records: its tail was cut back past
    /// an anchored checkpoint, or a record was rewritten.
    Anchor,
}

/// The first break in a file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainBreak {
    /// The file the line is in (as given; empty for a bare reader).
    pub file: String,
    /// 1-based line number within that file.
    pub line: u64,
    /// The sandbox whose chain broke, when the line names one.
    pub sandbox_id: Option<String>,
    /// The kind of break.
    pub kind: BreakKind,
    /// What exactly was found.
    pub detail: String,
}

/// One sandbox's chain as far as it was read.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SandboxChain {
    /// Events read.
    pub events: u64,
    /// seq of its first event in the file.
    pub first_seq: u64,
    /// seq of its last event read.
    pub last_seq: u64,
    /// hash of its last event read.
    pub last_hash: String,
    /// Line of its last event read.
    pub last_line: u64,
    /// Whether a lifecycle `delete` of the sandbox itself closed the chain.
    pub closed: bool,
    /// The file of its last event read.
    pub last_file: String,
    /// Its events after the last checkpoint that covers it, `[first, last]` seq, if any: not
    /// protected by a signature yet (only meaningful when the log has seal records).
    pub unsealed: Option<[u64; 2]>,
    /// Events that a later checkpoint skipped over: written by a writer that ended (killed)
    /// before its next checkpoint, before another writer continued the chain. Chained, not
    /// signed.
    pub never_sealed: u64,
}

/// What was found of the seal records.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SealSummary {
    /// Seal records read.
    pub records: u64,
    /// Checkpoints among them, each matching the events it names.
    pub checkpoints: u64,
    /// The epoch of the last record (epoch records passed).
    pub epoch: u64,
    /// seq of the last record.
    pub last_seq: u64,
    /// Whether signatures were checked with the node key (false: no key was given, or the
    /// set starts mid-chain so the epoch keys are unknown).
    pub signatures_checked: bool,
    /// Events covered by a checked checkpoint.
    pub events_covered: u64,
    /// Anchored records matched.
    pub anchored: u64,
}

/// The result of a verification.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Lines checked (up to and including the break).
    pub lines: u64,
    /// Every sandbox seen, by id.
    pub sandboxes: BTreeMap<String, SandboxChain>,
    /// The first break, if any.
    pub first_break: Option<ChainBreak>,
    /// The seal records, if the log has any.
    pub seals: Option<SealSummary>,
}

impl VerifyReport {
    /// True when no break was found.
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// How strict to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Require every sandbox's first event to be seq 1 with the genesis hash, and the seal
    /// chain to start at seq 1. Turn off for a rotated set that starts mid-chain (then
    /// checkpoints that reach before the set cannot be checked, and signatures only with
    /// `anchor`).
    pub require_genesis: bool,
    /// The node's public key (epoch 0). With it, every seal record's signature is checked.
    pub key: Option<VerifyingKey>,
    /// A log with events but no seal record fails (`unsealed`). Default true; the CLI turns it
    /// off only when it found the installed key by itself (no `--key`), so that logs of shims
    /// that do not sign yet still verify their chains.
    pub require_seals: bool,
    /// Seal records kept elsewhere (the anchor file): each must be in the log, identical.
    pub anchor: Vec<SealRecord>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            require_genesis: true,
            key: None,
            require_seals: true,
            anchor: Vec::new(),
        }
    }
}

/// Why verification could not run.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// Verifies every sandbox's chain in the JSON Lines file at `path`.
pub fn verify_file(path: &Path) -> Result<VerifyReport, VerifyError> {
    verify_file_with(path, VerifyOptions::default())
}

/// [`verify_file`] with options.
pub fn verify_file_with(path: &Path, options: VerifyOptions) -> Result<VerifyReport, VerifyError> {
    verify_files(&[path], options)
}

/// Verifies a set of files as one log, in the order given (a rotated set: oldest first).
pub fn verify_files<P: AsRef<Path>>(
    paths: &[P],
    options: VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let mut v = Verifier::new(options);
    for path in paths {
        let path = path.as_ref();
        let io_err = |source| VerifyError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let done = v
            .read(&path.display().to_string(), BufReader::new(file))
            .map_err(io_err)?;
        if done {
            break;
        }
    }
    Ok(v.finish())
}

/// The chain fields of one line.
struct Fields {
    sandbox_id: String,
    seq: u64,
    prev_hash: String,
    hash: String,
    closes: bool,
}

/// Verifies lines from any reader.
pub fn verify_reader(reader: impl BufRead, options: VerifyOptions) -> io::Result<VerifyReport> {
    let mut v = Verifier::new(options);
    v.read("", reader)?;
    Ok(v.finish())
}

/// Events of one sandbox not yet covered by a checkpoint.
#[derive(Default)]
struct Uncovered {
    /// seq of `leaves[0]`.
    first: u64,
    leaves: Vec<Hash>,
}

/// The seal chain as far as read.
struct SealState {
    /// The current epoch's key, when known.
    key: Option<VerifyingKey>,
    epoch: u64,
    /// The last record's seq and hash (None before the first).
    last: Option<(u64, String)>,
    /// Every record's hash by seq (for the anchor).
    hashes: BTreeMap<u64, String>,
    summary: SealSummary,
}

/// Reads lines in order, keeping every chain's state.
struct Verifier {
    options: VerifyOptions,
    report: VerifyReport,
    uncovered: HashMap<String, Uncovered>,
    seals: SealState,
}

impl Verifier {
    fn new(options: VerifyOptions) -> Self {
        let seals = SealState {
            key: options.key,
            epoch: 0,
            last: None,
            hashes: BTreeMap::new(),
            summary: SealSummary {
                signatures_checked: options.key.is_some(),
                ..SealSummary::default()
            },
        };
        Self {
            options,
            report: VerifyReport::default(),
            uncovered: HashMap::new(),
            seals,
        }
    }

    /// Reads one file; true when a break ended the verification.
    fn read(&mut self, file: &str, mut reader: impl BufRead) -> io::Result<bool> {
        let mut buf = Vec::with_capacity(1024);
        let mut line_no = 0u64;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf)? == 0 {
                return Ok(false);
            }
            line_no += 1;
            self.report.lines += 1;
            let complete = buf.last() == Some(&b'\n');
            let seal = is_seal_line(&buf) && complete;
            let brk = if seal {
                self.seal_line(&buf)
            } else {
                match parse_line(&buf, complete) {
                    Err((kind, detail, sandbox_id)) => Some((kind, detail, sandbox_id)),
                    Ok(f) => check(&mut self.report, &f, line_no, file, &self.options)
                        .map(|(kind, detail)| (kind, detail, Some(f.sandbox_id.clone())))
                        .or_else(|| {
                            self.event_sealed(&f);
                            None
                        }),
                }
            };
            if let Some((kind, detail, sandbox_id)) = brk {
                let mut brk = ChainBreak {
                    file: file.to_owned(),
                    line: line_no,
                    sandbox_id,
                    kind,
                    detail,
                };
                if brk.kind == BreakKind::Deleted && !seal {
                    classify_gap(&mut reader, &mut brk, &self.report)?;
                }
                self.report.first_break = Some(brk);
                return Ok(true);
            }
        }
    }

    /// Keeps an intact event's leaf until a checkpoint covers it.
    fn event_sealed(&mut self, f: &Fields) {
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(&f.hash, &mut hash).is_err() {
            return;
        }
        let u = self.uncovered.entry(f.sandbox_id.clone()).or_default();
        if u.leaves.is_empty() {
            u.first = f.seq;
        }
        u.leaves.push(event_leaf(&hash));
    }

    /// Checks one seal record line.
    fn seal_line(&mut self, buf: &[u8]) -> Option<LineError> {
        let bad = |kind: BreakKind, detail: String| Some((kind, detail, None));
        let record = match SealRecord::parse(buf) {
            Ok(r) => r,
            Err(e) => return bad(BreakKind::BadSeal, format!("unreadable seal record: {e}")),
        };
        let seal = &record.seal;
        let st = &mut self.seals;
        // Its place in the node's seal chain.
        match &st.last {
            None if seal.seq != 1 || seal.prev != SEAL_GENESIS => {
                if self.options.require_genesis {
                    return bad(
                        BreakKind::SealChain,
                        format!(
                            "the first seal record is seq {} (want seq 1 with the genesis prev): records before it were removed",
                            seal.seq
                        ),
                    );
                }
                // A set that starts mid-chain: epoch keys come only from the anchor.
                match anchor_epoch_key(&self.options, seal.seq) {
                    Some((epoch, key)) => {
                        st.epoch = epoch;
                        st.key = Some(key);
                    }
                    None => {
                        st.key = None;
                        st.epoch = seal.epoch;
                        st.summary.signatures_checked = false;
                    }
                }
            }
            None => {}
            Some((last_seq, last_hash)) => {
                if seal.seq != last_seq + 1 {
                    let why = if seal.seq <= *last_seq {
                        "reordered or repeated"
                    } else {
                        "records between them were removed"
                    };
                    return bad(
                        BreakKind::SealChain,
                        format!("seal record seq {} follows seq {last_seq}: {why}", seal.seq),
                    );
                }
                if &seal.prev != last_hash {
                    return bad(
                        BreakKind::SealChain,
                        format!(
                            "seal record seq {}'s prev does not match record seq {last_seq}: a record was replaced",
                            seal.seq
                        ),
                    );
                }
            }
        }
        // Its epoch and signature: the epoch is the one the chain is in, whatever it claims.
        if seal.epoch != st.epoch {
            return bad(
                BreakKind::BadSeal,
                format!(
                    "seal record seq {} claims epoch {} but the log is in epoch {} here: re-sealed under another epoch's key",
                    seal.seq, seal.epoch, st.epoch
                ),
            );
        }
        if let Some(key) = &st.key {
            if let Err(why) = record.verify(key) {
                return bad(
                    BreakKind::BadSeal,
                    format!(
                        "seal record seq {}: {why} with epoch {}'s key: forged or re-signed",
                        seal.seq, st.epoch
                    ),
                );
            }
        }
        match seal.kind {
            SealKind::Epoch => match record.next_key() {
                Ok(next) => {
                    st.epoch += 1;
                    st.key = st.key.map(|_| next);
                }
                Err(e) => {
                    return bad(
                        BreakKind::BadSeal,
                        format!("seal record seq {}: {e}", seal.seq),
                    )
                }
            },
            SealKind::Checkpoint => {
                if let Some(brk) = self.checkpoint(&record) {
                    return Some(brk);
                }
            }
        }
        let st = &mut self.seals;
        let hash = record.hash();
        st.hashes.insert(record.seal.seq, hash.clone());
        st.last = Some((record.seal.seq, hash));
        st.summary.records += 1;
        st.summary.epoch = st.epoch;
        st.summary.last_seq = record.seal.seq;
        None
    }

    /// Checks a checkpoint against the uncovered events it names.
    fn checkpoint(&mut self, record: &SealRecord) -> Option<LineError> {
        let seal = &record.seal;
        let n = seal.seq;
        let mut leaves: Vec<Hash> = Vec::new();
        let mut checkable = true;
        for (sandbox, &[first, last]) in &seal.covers {
            let want = last.checked_sub(first).map(|d| d + 1).unwrap_or(0);
            let Some(u) = self.uncovered.get_mut(sandbox) else {
                if !self.options.require_genesis && !self.report.sandboxes.contains_key(sandbox) {
                    checkable = false; // its events are in an earlier file of the rotation
                    continue;
                }
                return Some((
                    BreakKind::Deleted,
                    format!(
                        "checkpoint seq {n} covers sandbox {sandbox} seq {first}..{last}, but none of those events precede it: they were deleted (or moved after it)"
                    ),
                    Some(sandbox.clone()),
                ));
            };
            if !u.leaves.is_empty() && u.first > first && !self.options.require_genesis {
                // Reaches before the set's first event of the sandbox: not checkable.
                let skip = (last + 1).saturating_sub(u.first) as usize;
                let skip = skip.min(u.leaves.len());
                u.leaves.drain(..skip);
                u.first += skip as u64;
                checkable = false;
                continue;
            }
            if !u.leaves.is_empty() && u.first < first {
                // Events before the covered range that no checkpoint will ever cover: their
                // writer ended (killed) before its next checkpoint and another writer went on
                // with the chain. They are still chained, only not signed: counted, reported.
                let skip = (first - u.first).min(u.leaves.len() as u64);
                u.leaves.drain(..skip as usize);
                u.first += skip;
                if let Some(c) = self.report.sandboxes.get_mut(sandbox) {
                    c.never_sealed += skip;
                }
            }
            let have = u.leaves.len() as u64;
            if u.leaves.is_empty() || u.first != first || have < want {
                let seen = if u.leaves.is_empty() {
                    "none".to_owned()
                } else {
                    format!("seq {}..{}", u.first, u.first + have - 1)
                };
                return Some((
                    BreakKind::Deleted,
                    format!(
                        "checkpoint seq {n} covers sandbox {sandbox} seq {first}..{last}, but the uncovered events before it are {seen}: lines were deleted (or moved after it)"
                    ),
                    Some(sandbox.clone()),
                ));
            }
            leaves.extend(u.leaves.drain(..want as usize));
            u.first += want;
        }
        if !checkable {
            return None;
        }
        let root = hex::encode(merkle::root(&leaves));
        if seal.leaves != Some(leaves.len() as u64) || seal.root.as_deref() != Some(root.as_str()) {
            return Some((
                BreakKind::CheckpointMismatch,
                format!(
                    "checkpoint seq {n}: the {} events it names hash to root {root}, it signed {}: an event was edited and its chain recomputed, or replaced",
                    leaves.len(),
                    seal.root.as_deref().unwrap_or("nothing")
                ),
                None,
            ));
        }
        self.seals.summary.checkpoints += 1;
        self.seals.summary.events_covered += leaves.len() as u64;
        None
    }

    /// End of the log: what must be sealed, the anchor.
    fn finish(mut self) -> VerifyReport {
        for (id, u) in &self.uncovered {
            if let Some(chain) = self.report.sandboxes.get_mut(id) {
                if !u.leaves.is_empty() {
                    chain.unsealed = Some([u.first, u.first + u.leaves.len() as u64 - 1]);
                }
            }
        }
        let has_seals = self.seals.summary.records > 0;
        if has_seals || self.options.key.is_some() {
            self.report.seals = Some(self.seals.summary.clone());
        }
        if self.report.first_break.is_some() {
            return self.report;
        }
        let end =
            |detail: String, kind: BreakKind, sandbox_id: Option<String>, file: &str, line: u64| {
                ChainBreak {
                    file: file.to_owned(),
                    line,
                    sandbox_id,
                    kind,
                    detail,
                }
            };
        if self.options.key.is_some()
            && self.options.require_seals
            && !has_seals
            && !self.report.sandboxes.is_empty()
        {
            self.report.first_break = Some(end(
                "no seal record in the log: it was written without signing, or every checkpoint was removed".into(),
                BreakKind::Unsealed,
                None,
                "",
                self.report.lines,
            ));
            return self.report;
        }
        if has_seals {
            // A closed chain is always followed by a checkpoint of its end.
            let closed_unsealed = self
                .report
                .sandboxes
                .iter()
                .filter(|(_, c)| c.closed)
                .find_map(|(id, c)| c.unsealed.map(|r| (id.clone(), c.clone(), r)));
            if let Some((id, c, [a, b])) = closed_unsealed {
                self.report.first_break = Some(end(
                    format!("sandbox {id}'s chain ended (delete at line {}) but no checkpoint covers seq {a}..{b}: the checkpoint written at its end was removed with the tail", c.last_line),
                    BreakKind::Unsealed,
                    Some(id.clone()),
                    &c.last_file,
                    c.last_line,
                ));
                return self.report;
            }
        }
        for anchored in &self.options.anchor {
            let n = anchored.seal.seq;
            match self.seals.hashes.get(&n) {
                Some(h) if *h == anchored.hash() => {
                    self.seals.summary.anchored += 1;
                }
                Some(_) => {
                    self.report.first_break = Some(end(
                        format!("seal record seq {n} differs from its anchored copy: the log was rewritten"),
                        BreakKind::Anchor,
                        None,
                        "",
                        self.report.lines,
                    ));
                    break;
                }
                None if self.seals.summary.last_seq < n => {
                    self.report.first_break = Some(end(
                        format!(
                            "the log's seal records end at seq {} but the anchor holds seq {n}: the tail was cut",
                            self.seals.summary.last_seq
                        ),
                        BreakKind::Anchor,
                        None,
                        "",
                        self.report.lines,
                    ));
                    break;
                }
                None => {} // before the set's start (rotated away)
            }
        }
        if let Some(s) = &mut self.report.seals {
            s.anchored = self.seals.summary.anchored;
        }
        self.report
    }
}

/// For a set that starts mid-chain: the epoch and key in force at seal seq `seq`, from the
/// anchor's records (checked from epoch 0's key up), when the anchor reaches that far.
fn anchor_epoch_key(options: &VerifyOptions, seq: u64) -> Option<(u64, VerifyingKey)> {
    let mut key = options.key?;
    let mut epoch = 0u64;
    let mut last: Option<(u64, String)> = None;
    for r in &options.anchor {
        if r.seal.seq >= seq {
            break;
        }
        let follows = match &last {
            None => r.seal.seq == 1 && r.seal.prev == SEAL_GENESIS,
            Some((n, h)) => r.seal.seq == n + 1 && &r.seal.prev == h,
        };
        if !follows || r.seal.epoch != epoch || r.verify(&key).is_err() {
            return None;
        }
        if r.seal.kind == SealKind::Epoch {
            key = r.next_key().ok()?;
            epoch += 1;
        }
        last = Some((r.seal.seq, r.hash()));
    }
    match last {
        Some((n, _)) if n + 1 == seq => Some((epoch, key)),
        _ => None,
    }
}

/// A line that cannot be part of a chain: kind, detail, sandbox if known.
type LineError = (BreakKind, String, Option<String>);

fn parse_line(buf: &[u8], complete: bool) -> Result<Fields, LineError> {
    let bad = |what: &str| {
        if complete {
            (BreakKind::Malformed, what.to_owned(), None)
        } else {
            let detail = format!("last line has no newline ({what})");
            (BreakKind::Truncated, detail, None)
        }
    };
    let value: Value = serde_json::from_slice(buf).map_err(|e| bad(&format!("not JSON: {e}")))?;
    if !complete {
        return Err(bad("JSON complete but line cut before its newline"));
    }
    let text = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    let sandbox_id = text("sandbox_id").ok_or_else(|| bad("no sandbox_id"))?;
    let seq = value
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("no seq"))?;
    let prev_hash = text("prev_hash").ok_or_else(|| bad("no prev_hash"))?;
    let closes = value.get("action").and_then(Value::as_str) == Some("delete")
        && value.get("container_id").and_then(Value::as_str) == Some(sandbox_id.as_str());
    let (claimed, actual) = recompute_hash(value).map_err(|e| bad(&e.to_string()))?;
    let hash = claimed.ok_or_else(|| bad("no hash"))?;
    if hash != actual {
        return Err((
            BreakKind::Edited,
            format!("seq {seq}: content does not match its hash (claims {hash}, content hashes to {actual})"),
            Some(sandbox_id),
        ));
    }
    Ok(Fields {
        sandbox_id,
        seq,
        prev_hash,
        hash,
        closes,
    })
}

fn check(
    report: &mut VerifyReport,
    f: &Fields,
    line: u64,
    file: &str,
    options: &VerifyOptions,
) -> Option<(BreakKind, String)> {
    match report.sandboxes.get(&f.sandbox_id) {
        None => {
            let starts = f.seq == 1 && f.prev_hash == GENESIS_HASH;
            if options.require_genesis && !starts {
                return Some((
                    BreakKind::MissingStart,
                    format!("first event of the sandbox is seq {} (want seq 1 with the genesis prev_hash)", f.seq),
                ));
            }
        }
        Some(chain) => {
            let want = chain.last_seq.saturating_add(1);
            if f.seq > want {
                return Some((
                    BreakKind::Deleted,
                    format!(
                        "seq {} follows seq {} (line {}): seq {want}..{} missing",
                        f.seq,
                        chain.last_seq,
                        chain.last_line,
                        f.seq - 1
                    ),
                ));
            }
            if f.seq < want {
                return Some((
                    BreakKind::Reordered,
                    format!(
                        "seq {} appears after seq {} (line {})",
                        f.seq, chain.last_seq, chain.last_line
                    ),
                ));
            }
            if f.prev_hash != chain.last_hash {
                return Some((
                    BreakKind::BrokenLink,
                    format!("prev_hash does not match the hash of seq {} (line {}): that event was edited or replaced", chain.last_seq, chain.last_line),
                ));
            }
        }
    }
    let chain = report.sandboxes.entry(f.sandbox_id.clone()).or_default();
    if chain.events == 0 {
        chain.first_seq = f.seq;
    }
    chain.events += 1;
    chain.last_seq = f.seq;
    chain.last_hash.clone_from(&f.hash);
    chain.last_line = line;
    if chain.last_file != file {
        chain.last_file = file.to_owned();
    }
    chain.closed |= f.closes;
    None
}

/// A seq gap is a deletion unless the missing seq turns up later in the file,
/// which makes it a reordering. Reads the rest of the file to decide.
fn classify_gap(
    reader: &mut impl BufRead,
    brk: &mut ChainBreak,
    report: &VerifyReport,
) -> io::Result<()> {
    let Some(sandbox) = brk.sandbox_id.clone() else {
        return Ok(());
    };
    let missing = report.sandboxes.get(&sandbox).map_or(1, |c| c.last_seq + 1);
    let mut later: HashMap<u64, u64> = HashMap::new();
    let mut buf = Vec::new();
    let mut line = brk.line;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line += 1;
        let Ok(v) = serde_json::from_slice::<Value>(&buf) else {
            continue;
        };
        if v.get("sandbox_id").and_then(Value::as_str) == Some(sandbox.as_str()) {
            if let Some(seq) = v.get("seq").and_then(Value::as_u64) {
                later.entry(seq).or_insert(line);
            }
        }
        if later.contains_key(&missing) {
            break;
        }
    }
    if let Some(at) = later.get(&missing) {
        brk.kind = BreakKind::Reordered;
        brk.detail = format!("{}; seq {missing} appears later, at line {at}", brk.detail);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
