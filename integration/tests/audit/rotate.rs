//! Rename rotation with sandboxes running: the shims follow the path to the new file, every
//! event lands in exactly one file, in order, and the rotated set verifies.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::TestEnv;

use crate::lab::{audit_lines, is, safehouse, Lab};
use crate::workload::RECORD_ALL_OFFLINE;

/// Two sandboxes write files in a loop; the log is renamed (as logrotate does, without
/// copytruncate) while both run. Afterwards each sandbox's `seq` runs 1..=N without a gap or a
/// repeat across the renamed file and the new one, the new file holds events of both (the
/// running shims moved to it), and `audit verify OLD NEW` accepts the set with no chain open.
pub fn rename_rotation_keeps_every_event_once(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "rotate")?;
    lab.policy("recorded", RECORD_ALL_OFFLINE)?;
    let a = env.id("rota");
    let b = env.id("rotb");
    env.scenario(&[&a, &b], || {
        let script = "i=0; while [ $i -lt 300 ]; do echo $i > /tmp/f; i=$((i+1)); sleep 0.01; done";
        let runs = [
            lab.start(Some("recorded"), &["--rm"], &a, &["sh", "-c", script])?,
            lab.start(Some("recorded"), &["--rm"], &b, &["sh", "-c", script])?,
        ];
        // Rotate once both have written something.
        for id in [&a, &b] {
            lab.wait_event(id, "a file event before the rotation", |e| {
                e["category"] == "file"
            })?;
        }
        let rotated = lab.path("audit.jsonl.1");
        fs::rename(&lab.audit, &rotated)?;
        for run in runs {
            let out = run.wait(Duration::from_secs(120))?;
            ensure!(out.success(), "workload: {}", out.describe());
        }
        for id in [&a, &b] {
            lab.wait_event(id, "the delete in the new file", |e| {
                is(e, "lifecycle", "delete")
            })?;
        }

        let old = audit_lines(&rotated);
        let new = audit_lines(&lab.audit);
        let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in old.iter().chain(new.iter()) {
            if let (Some(sb), Some(seq)) = (e["sandbox_id"].as_str(), e["seq"].as_u64()) {
                seqs.entry(sb.to_owned()).or_default().push(seq);
            }
        }
        for id in [&a, &b] {
            let got = seqs.get(id.as_str()).cloned().unwrap_or_default();
            let want: Vec<u64> = (1..=got.len() as u64).collect();
            ensure!(
                got.len() > 10 && got == want,
                "sandbox {id}: seq across the rotated and the new file should run 1..={} once each, in order; got {got:?}",
                got.len()
            );
            let in_new = new.iter().filter(|e| e["sandbox_id"] == id.as_str()).count();
            let in_old = old.iter().filter(|e| e["sandbox_id"] == id.as_str()).count();
            ensure!(
                in_new > 1 && in_old > 0,
                "sandbox {id}: {in_old} events in the rotated file and {in_new} in the new one; the running shim should have moved to the new file"
            );
        }
        let out = safehouse(&[
            "audit",
            "verify",
            &rotated.display().to_string(),
            &lab.audit.display().to_string(),
        ])?;
        ensure!(
            out.code == Some(0) && out.stdout.contains("(0 still open)"),
            "the rotated set verifies with every chain closed: {}",
            out.describe()
        );
        Ok(())
    })
}
