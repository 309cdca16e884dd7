//! Checking an audit file: every sandbox's hash chain, in a file where many
//! sandboxes' lines interleave. Reports the first break with its line number
//! and the kind of tampering it points to.
//!
//! What is detected: an edited line (its hash no longer matches), an edited
//! line whose hash was recomputed (the next line's `prev_hash` no longer
//! links), deleted lines (a `seq` gap), reordered lines (a `seq` that appears
//! out of order, or a gap whose missing `seq` turns up later), a cut last line
//! (no newline / not JSON), and a missing chain start. What is not: lines
//! removed from the very end of a chain (see `open` sandboxes in the report,
//! whose chain has no `delete` event yet) and a chain rewritten from the edit
//! onwards by someone who recomputed every hash; anchor the last hash
//! elsewhere for that.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use crate::chain::{recompute_hash, GENESIS_HASH};

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
}

/// The first break in a file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainBreak {
    /// 1-based line number.
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
}

impl VerifyReport {
    /// True when no break was found.
    pub fn is_intact(&self) -> bool {
        self.first_break.is_none()
    }
}

/// How strict to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Require every sandbox's first event to be seq 1 with the genesis hash.
    /// Turn off for rotated files that start mid-chain.
    pub require_genesis: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            require_genesis: true,
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
    let io_err = |source| VerifyError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    verify_reader(BufReader::new(file), options).map_err(io_err)
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
pub fn verify_reader(mut reader: impl BufRead, options: VerifyOptions) -> io::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut buf = Vec::with_capacity(1024);
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line_no += 1;
        report.lines = line_no;
        let complete = buf.last() == Some(&b'\n');
        let brk = match parse_line(&buf, complete) {
            Err((kind, detail, sandbox_id)) => Some(ChainBreak {
                line: line_no,
                sandbox_id,
                kind,
                detail,
            }),
            Ok(f) => check(&mut report, &f, line_no, options).map(|(kind, detail)| ChainBreak {
                line: line_no,
                sandbox_id: Some(f.sandbox_id.clone()),
                kind,
                detail,
            }),
        };
        if let Some(mut brk) = brk {
            if brk.kind == BreakKind::Deleted {
                classify_gap(&mut reader, &mut brk, &report)?;
            }
            report.first_break = Some(brk);
            break;
        }
    }
    Ok(report)
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
    options: VerifyOptions,
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
