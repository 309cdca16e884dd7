//! Closing the chain of a sandbox whose shim was killed: the `delete` action (a new shim
//! process containerd runs in the bundle) appends the `delete` event the dead shim never wrote,
//! chained after the sandbox's last line, saying why.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::Chain;
use serde::Deserialize;

/// How much of the end of the audit file is searched for the sandbox's last line.
const TAIL: u64 = 64 * 1024 * 1024;

#[derive(Deserialize)]
struct ChainedLine {
    #[serde(default)]
    sandbox_id: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    action: String,
    #[serde(default)]
    container_id: Option<String>,
}

/// What closing did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The chain already ended with its root container's delete.
    AlreadyClosed,
    /// No line of the sandbox was found (nothing to close).
    NotFound,
    /// A delete event was appended after seq `.0`.
    Appended(u64),
}

/// Appends a `lifecycle`/`delete` event to `sandbox_id`'s chain in `audit_file`, unless the
/// chain already ended with the root container's delete.
pub fn close_chain(
    audit_file: &Path,
    namespace: &str,
    sandbox_id: &str,
) -> std::io::Result<Outcome> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(audit_file)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(start))?;
    let mut text = Vec::new();
    Read::by_ref(&mut file).take(TAIL).read_to_end(&mut text)?;
    let last = text
        .split(|b| *b == b'\n')
        .rev()
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<ChainedLine>(l).ok())
        .find(|l| l.sandbox_id == sandbox_id && l.hash.is_some());
    let Some(last) = last else {
        return Ok(Outcome::NotFound);
    };
    if last.action == "delete" && last.container_id.as_deref() == Some(sandbox_id) {
        return Ok(Outcome::AlreadyClosed);
    }
    let mut chain = Chain::resume(sandbox_id, last.seq, last.hash.unwrap_or_default());
    let mut event = SandboxContext::new(sandbox_id)
        .with_namespace(namespace)
        .delete(sandbox_id)
        .actor("safehouse (delete action)")
        .message("the shim serving this sandbox died; its delete action closed the chain")
        .build();
    let line = chain
        .seal(&mut event)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // One write of a whole line to a file opened for appending.
    file.write_all(&line)?;
    Ok(Outcome::Appended(last.seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(chain: &mut Chain, ctx: &SandboxContext, action: &str) -> Vec<u8> {
        let mut ev = match action {
            "create" => ctx.create("sb", vec![]).build(),
            "start" => ctx.start("sb").build(),
            _ => ctx.delete("sb").build(),
        };
        chain.seal(&mut ev).expect("seal")
    }

    #[test]
    fn an_open_chain_gets_its_delete_and_a_closed_one_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("audit.jsonl");
        let ctx = SandboxContext::new("sb");
        let mut chain = Chain::new("sb");
        let mut other = Chain::new("other");
        let mut text = line(&mut chain, &ctx, "create");
        text.extend(line(&mut chain, &ctx, "start"));
        text.extend(line(&mut other, &SandboxContext::new("other"), "create"));
        std::fs::write(&file, &text).expect("write");
        assert_eq!(
            close_chain(&file, "k8s.io", "sb").expect("close"),
            Outcome::Appended(2)
        );
        let written = std::fs::read_to_string(&file).expect("read");
        let last: serde_json::Value =
            serde_json::from_str(written.lines().last().expect("line")).expect("json");
        assert_eq!(last["seq"], 3);
        assert_eq!(last["action"], "delete");
        assert_eq!(last["prev_hash"].as_str(), Some(chain.last_hash()));
        // The chain verifies whole, and is closed.
        let options = safehouse_audit::verify::VerifyOptions {
            require_seals: false,
            ..Default::default()
        };
        let report =
            safehouse_audit::verify::verify_reader(written.as_bytes(), options).expect("verify");
        assert!(report.is_intact(), "{report:?}");
        assert!(report.sandboxes["sb"].closed);
        assert!(!report.sandboxes["other"].closed);
        assert_eq!(
            close_chain(&file, "k8s.io", "sb").expect("again"),
            Outcome::AlreadyClosed
        );
        assert_eq!(
            close_chain(&file, "k8s.io", "nope").expect("none"),
            Outcome::NotFound
        );
    }
}
