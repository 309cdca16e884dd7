//! `safehouse audit verify` finds tampering at the right line: an edited field (that line), a
//! deleted line (the line after it, now at its place), a last line cut mid-way (truncated).

use std::fs;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use safehouse_integration::TestEnv;

use crate::lab::{is, verify, Lab, Listing};
use crate::workload::RECORD_ALL_OFFLINE;

/// The line of the audit file that gets tampered with (1-based).
const N: usize = 3;

/// Writes `lines` (each ending in a newline) to `path`, then runs verify on it and checks it
/// exits 1 naming `line` and `kind`.
fn expect_break(path: &Path, text: &str, line: usize, kind: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    let out = verify(path)?;
    let expected = format!("{}:{line}: chain broken ({kind})", path.display());
    ensure!(
        out.code == Some(1) && out.stdout.contains(&expected),
        "verify should exit 1 with {expected:?}: {}",
        out.describe()
    );
    Ok(())
}

/// Runs a short workload, then tampers with copies of its audit file three ways.
pub fn verify_names_the_broken_line(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "tamper")?;
    lab.policy("recorded", RECORD_ALL_OFFLINE)?;
    let id = env.id("tamper");
    env.scenario(&[&id], || {
        let script = "cat /etc/hostname; echo data > /tmp/out.txt; exit 0";
        let out = lab.run(Some("recorded"), &["--rm"], &id, &["sh", "-c", script])?;
        ensure!(out.success(), "workload: {}", out.describe());
        lab.wait_event(&id, "lifecycle/delete", |e| is(e, "lifecycle", "delete"))?;
        let original = fs::read_to_string(&lab.audit)?;
        let lines: Vec<&str> = original.lines().collect();
        ensure!(
            lines.len() > N + 1 && original.ends_with('\n'),
            "too few events to tamper with: {}",
            Listing(&lab.events()?)
        );
        let intact = verify(&lab.audit)?;
        ensure!(
            intact.code == Some(0),
            "the original should verify: {}",
            intact.describe()
        );

        // (a) One field of line N edited (its `time`, keeping it valid JSON and a valid time).
        let target = lines[N - 1];
        let (before, after) = target
            .split_once("\"time\":\"")
            .with_context(|| format!("line {N} has no time: {target}"))?;
        let digit = after.chars().next().context("empty time")?;
        let other = if digit == '1' { '2' } else { '1' };
        let edited_line = format!("{before}\"time\":\"{other}{}", &after[1..]);
        let mut edited = lines.clone();
        edited[N - 1] = &edited_line;
        expect_break(
            &lab.path("edited.jsonl"),
            &(edited.join("\n") + "\n"),
            N,
            "Edited",
        )?;

        // (b) Line N deleted: the break is the next surviving line, now line N.
        let mut deleted = lines.clone();
        deleted.remove(N - 1);
        expect_break(
            &lab.path("deleted.jsonl"),
            &(deleted.join("\n") + "\n"),
            N,
            "Deleted",
        )?;

        // (c) The last line cut half-way (no newline, not JSON).
        let last = lines[lines.len() - 1];
        let cut = &last[..last.len() / 2];
        let mut truncated = lines[..lines.len() - 1].join("\n");
        truncated.push('\n');
        truncated.push_str(cut);
        expect_break(
            &lab.path("truncated.jsonl"),
            &truncated,
            lines.len(),
            "Truncated",
        )?;
        Ok(())
    })
}

/// With a signing key, the log carries signed checkpoints: an untouched log verifies with the
/// public key, and removing every line of one sandbox (each remaining hash chain is intact) is
/// caught at the checkpoint that covered it, naming the sandbox; so is an event edited with the
/// chain recomputed after it (which the chains alone accept).
pub fn signed_log_catches_a_deleted_sandbox(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "signed")?;
    let public = lab.sign()?;
    lab.policy("recorded", RECORD_ALL_OFFLINE)?;
    let gone = env.id("signgone");
    let kept = env.id("signkept");
    env.scenario(&[&gone, &kept], || {
        for id in [&gone, &kept] {
            let out = lab.run(Some("recorded"), &["--rm"], id, &["sh", "-c", "echo hi"])?;
            ensure!(out.success(), "workload: {}", out.describe());
            lab.wait_event(id, "lifecycle/delete", |e| is(e, "lifecycle", "delete"))?;
        }
        let key = public.display().to_string();
        let check = |file: &Path| {
            crate::lab::safehouse(&[
                "audit",
                "verify",
                "--key",
                &key,
                &file.display().to_string(),
            ])
        };
        // The shims seal at each sandbox's end; give the last one its moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = check(&lab.audit)?;
            if out.code == Some(0) {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the untouched signed log should verify with its key: {}",
                out.describe()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let original = fs::read_to_string(&lab.audit)?;
        ensure!(
            original.lines().any(|l| l.starts_with("{\"seal\"")),
            "the log has seal records"
        );
        let without: String = original
            .lines()
            .filter(|l| !l.contains(&format!("\"sandbox_id\":\"{gone}\"")))
            .map(|l| format!("{l}\n"))
            .collect();
        ensure!(
            without.len() < original.len(),
            "the sandbox's lines were found"
        );
        let path = lab.path("no-sandbox.jsonl");
        fs::write(&path, &without)?;
        let signed = check(&path)?;
        ensure!(
            signed.code != Some(0)
                && signed.stdout.contains(&path.display().to_string())
                && signed.stdout.contains(gone.as_str()),
            "the deleted sandbox is caught at the checkpoint that covered it: {}",
            signed.describe()
        );

        // An attacker who edits an event and recomputes the whole chain after it: every hash
        // chain is intact again, but the checkpoint's signed Merkle root no longer matches.
        let mut chain = safehouse_audit::chain::Chain::new(kept.as_str());
        let mut edited_one = false;
        let mut rechained = String::new();
        for line in original.lines() {
            if !line.contains(&format!("\"sandbox_id\":\"{kept}\"")) {
                rechained.push_str(line);
                rechained.push('\n');
                continue;
            }
            let mut value: serde_json::Value = serde_json::from_str(line)?;
            if !edited_one && value["category"] == "process" && value["action"] == "exec" {
                value["container_id"] = serde_json::Value::from("forged");
                edited_one = true;
            }
            let mut event: safehouse_audit::AuditEvent = serde_json::from_value(value)?;
            let sealed = chain.seal(&mut event)?;
            rechained.push_str(std::str::from_utf8(&sealed)?);
        }
        ensure!(edited_one, "no exec event of {kept} to edit");
        let path = lab.path("rechained.jsonl");
        fs::write(&path, &rechained)?;
        let signed = check(&path)?;
        ensure!(
            signed.code != Some(0)
                && signed.stdout.contains("CheckpointMismatch")
                && signed.stdout.contains("chain recomputed"),
            "a recomputed chain is caught at the checkpoint that covered it: {}",
            signed.describe()
        );
        Ok(())
    })
}
