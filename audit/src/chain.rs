//! The per-sandbox hash chain that makes the audit file tamper-evident.
//!
//! Each sandbox's events are numbered `seq = 1, 2, ...`; each carries
//! `prev_hash`, the `hash` of the sandbox's previous event (64 zeros for the
//! first), and its own `hash`:
//!
//! ```text
//! hash = hex(sha256(canonical JSON of the event without its "hash" member)))
//! ```
//!
//! where canonical JSON has keys sorted, no whitespace and serde_json's string
//! and number encoding (see `canonical.rs`). A written line is exactly that
//! canonical JSON with `,"hash":"<hex>"` inserted before the final `}`, then
//! `\n`. Editing, deleting, reordering or truncating lines breaks either a
//! hash, a `prev_hash` link or the `seq` sequence; `verify.rs` reports which.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::canonical::to_canonical_vec;
use crate::event::AuditEvent;

/// `prev_hash` of a sandbox's first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Why an event could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The event belongs to another sandbox's chain.
    #[error("event of sandbox {event:?} given to the chain of sandbox {chain:?}")]
    WrongSandbox {
        /// The chain's sandbox.
        chain: String,
        /// The event's sandbox.
        event: String,
    },
    /// The event could not be serialised.
    #[error("serialising the event: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The sequence number would overflow.
    #[error("sequence number overflow in sandbox {0:?}")]
    SeqOverflow(String),
}

/// Stamps `seq`, `prev_hash` and `hash` on one sandbox's events.
#[derive(Clone, Debug)]
pub struct Chain {
    sandbox_id: String,
    seq: u64,
    last_hash: String,
}

impl Chain {
    /// A new chain for `sandbox_id`, starting at seq 1 with the genesis hash.
    pub fn new(sandbox_id: impl Into<String>) -> Self {
        Self::resume(sandbox_id, 0, GENESIS_HASH)
    }

    /// Continues a chain whose last written event had `last_seq` and `last_hash`.
    pub fn resume(
        sandbox_id: impl Into<String>,
        last_seq: u64,
        last_hash: impl Into<String>,
    ) -> Self {
        Self {
            sandbox_id: sandbox_id.into(),
            seq: last_seq,
            last_hash: last_hash.into(),
        }
    }

    /// The sandbox this chain belongs to.
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    /// The seq of the last sealed event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// The hash of the last sealed event (the genesis hash before the first).
    pub fn last_hash(&self) -> &str {
        &self.last_hash
    }

    /// Stamps the next seq, prev_hash and hash on `event` and returns its line
    /// (canonical JSON, hash last, trailing newline). An empty `sandbox_id` is
    /// filled in with the chain's.
    pub fn seal(&mut self, event: &mut AuditEvent) -> Result<Vec<u8>, ChainError> {
        let mut line = Vec::with_capacity(1024);
        self.seal_into(event, &mut line)?;
        Ok(line)
    }

    /// [`Chain::seal`], appending the line to `out` instead of allocating one (the writer
    /// seals a whole drain of events into one buffer). On error `out` is left as it was and
    /// the chain does not advance.
    pub fn seal_into(
        &mut self,
        event: &mut AuditEvent,
        out: &mut Vec<u8>,
    ) -> Result<(), ChainError> {
        if event.sandbox_id.is_empty() {
            event.sandbox_id.clone_from(&self.sandbox_id);
        } else if event.sandbox_id != self.sandbox_id {
            return Err(ChainError::WrongSandbox {
                chain: self.sandbox_id.clone(),
                event: event.sandbox_id.clone(),
            });
        }
        let seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| ChainError::SeqOverflow(self.sandbox_id.clone()))?;
        event.seq = seq;
        event.prev_hash.clone_from(&self.last_hash);
        event.hash = None;
        let start = out.len();
        if let Err(e) = serde_json::to_writer(&mut *out, event) {
            out.truncate(start);
            return Err(e.into());
        }
        let mut hex = [0u8; 64];
        // The digest is 32 bytes, the buffer 64: cannot fail.
        let _ = hex::encode_to_slice(Sha256::digest(&out[start..]), &mut hex);
        // Only hex digits were written.
        let hash = std::str::from_utf8(&hex).unwrap_or_default();
        // The line is a JSON object, so it ends with '}'.
        out.pop();
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(&hex);
        out.extend_from_slice(b"\"}\n");
        self.seq = seq;
        self.last_hash.clear();
        self.last_hash.push_str(hash);
        event.hash = Some(hash.to_owned());
        Ok(())
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Recomputes the hash of a parsed line: sha256 of the canonical JSON of the
/// object without its `hash` member. Returns the hash the line claims (if any)
/// and the recomputed one.
pub fn recompute_hash(mut line: Value) -> Result<(Option<String>, String), serde_json::Error> {
    let claimed = match &mut line {
        Value::Object(map) => match map.remove("hash") {
            Some(Value::String(h)) => Some(h),
            _ => None,
        },
        _ => None,
    };
    let canonical = to_canonical_vec(&line)?;
    Ok((claimed, sha256_hex(&canonical)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, Category};

    fn event(sandbox: &str) -> AuditEvent {
        AuditEvent {
            action: Action::Start,
            category: Category::Lifecycle,
            sandbox_id: sandbox.to_owned(),
            ..AuditEvent::default()
        }
    }

    #[test]
    fn links_events_and_hash_matches_recomputation() {
        let mut chain = Chain::new("sb");
        let mut first = event("sb");
        let line1 = chain.seal(&mut first).unwrap_or_default();
        let mut second = event("");
        let line2 = chain.seal(&mut second).unwrap_or_default();
        assert_eq!(first.seq, 1);
        assert_eq!(first.prev_hash, GENESIS_HASH);
        assert_eq!(second.seq, 2);
        assert_eq!(Some(second.prev_hash.clone()), first.hash);
        assert_eq!(second.sandbox_id, "sb");
        for (line, ev) in [(line1, first), (line2, second)] {
            assert_eq!(line.last(), Some(&b'\n'));
            let value: Value = serde_json::from_slice(&line).unwrap_or_default();
            let (claimed, recomputed) = recompute_hash(value).unwrap_or_default();
            assert_eq!(claimed.as_deref(), Some(recomputed.as_str()));
            assert_eq!(ev.hash, Some(recomputed));
        }
    }

    #[test]
    fn refuses_other_sandboxes_events() {
        let mut chain = Chain::new("a");
        assert!(matches!(
            chain.seal(&mut event("b")),
            Err(ChainError::WrongSandbox { .. })
        ));
        assert_eq!(chain.last_seq(), 0);
    }
}
