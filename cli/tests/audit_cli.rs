//! The `safehouse audit` commands as an operator runs them, on logs the real writer produced.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use safehouse_audit::chain::Chain;
use safehouse_audit::event::{FileInfo, ProcessInfo};
use safehouse_audit::{Action, AuditEvent, Category};

fn safehouse() -> Command {
    Command::cargo_bin("safehouse").unwrap()
}

/// A sealed line of sandbox `sb` whose file name, argv and task name hold terminal escapes.
fn hostile_log(dir: &Path) -> PathBuf {
    let mut chain = Chain::new("sb");
    let mut ev = AuditEvent {
        action: Action::Open,
        category: Category::File,
        container_id: Some("c1".into()),
        sandbox_id: "sb".into(),
        file: Some(FileInfo {
            path: Some("/tmp/\u{1b}[2J\u{1b}]0;owned\u{7}\nseq 99 policy/violation\u{9b}1m".into()),
            access: Some("write".into()),
            ..FileInfo::default()
        }),
        process: Some(ProcessInfo {
            name: Some("n\u{85}\u{2028}".into()),
            ..ProcessInfo::default()
        }),
        ..AuditEvent::default()
    };
    let line = chain.seal(&mut ev).unwrap();
    let path = dir.join("audit.jsonl");
    std::fs::write(&path, line).unwrap();
    path
}

#[test]
fn short_format_escapes_what_the_agent_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let log = hostile_log(dir.path());
    let out = safehouse()
        .args(["audit", "follow", "--no-follow", "--format", "short"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // One event, one line: the newline in the name did not start another.
    assert_eq!(text.lines().count(), 1, "{text:?}");
    for bad in ['\u{1b}', '\u{7}', '\u{9b}', '\u{85}', '\u{2028}'] {
        assert!(
            !text.contains(bad),
            "{bad:?} reached the terminal: {text:?}"
        );
    }
    assert!(
        text.contains(r"/tmp/\e[2J\e]0;owned\x07\nseq 99 policy/violation\u{009b}1m (write)"),
        "{text}"
    );
}

#[test]
fn json_format_is_the_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let log = hostile_log(dir.path());
    let out = safehouse()
        .args(["audit", "follow", "--no-follow", "--format", "json"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, std::fs::read(&log).unwrap());
}

/// A signed log written by the real writer: sandboxes `a` (ended) and `b` (still open), with
/// an anchor copy of the seal records. Returns (dir, log, public key file, anchor).
fn signed_log() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    use safehouse_audit::seal::SealConfig;
    use safehouse_audit::writer::{open_append, AuditWriter, WriterConfig};
    let dir = tempfile::tempdir().unwrap();
    safehouse()
        .args(["audit", "keygen", "--dir"])
        .arg(dir.path())
        .assert()
        .success();
    let log = dir.path().join("audit.jsonl");
    let anchor = dir.path().join("anchor.jsonl");
    let config = WriterConfig {
        seal: Some(SealConfig {
            anchor: Some(anchor.clone()),
            ..SealConfig::new(dir.path().join("audit.key"))
        }),
        ..WriterConfig::default()
    };
    let (w, h) = AuditWriter::spawn(open_append(&log).unwrap(), config).unwrap();
    let ev = |sb: &str, action: Action, n: u32| AuditEvent {
        action,
        category: if action == Action::Delete {
            Category::Lifecycle
        } else {
            Category::File
        },
        container_id: Some(sb.into()),
        sandbox_id: sb.into(),
        message: Some(format!("event {n}")),
        ..AuditEvent::default()
    };
    let mut batch: Vec<AuditEvent> = (0..10)
        .flat_map(|n| [ev("a", Action::Write, n), ev("b", Action::Open, n)])
        .collect();
    batch.push(ev("a", Action::Delete, 99));
    w.submit_batch(&mut batch, &|| false);
    drop(w);
    assert_eq!(h.finish().seal_errors, 0);
    (dir, log, dir_path_pub(&anchor), anchor)
}

fn dir_path_pub(anchor: &Path) -> PathBuf {
    anchor.with_file_name("audit.pub")
}

fn verify_cmd(files: &[&Path], extra: &[&str]) -> (i32, String) {
    let out = safehouse()
        .args(["audit", "verify"])
        .args(files)
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn verify_checks_signatures_and_names_open_chains() {
    let (_dir, log, public, anchor) = signed_log();
    let key = public.to_str().unwrap();
    let (code, text) = verify_cmd(
        &[&log],
        &["--key", key, "--anchor", anchor.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact"), "{text}");
    assert!(
        text.contains("signatures verified with the node key"),
        "{text}"
    );
    assert!(text.contains("open: sandbox b"), "{text}");
    assert!(!text.contains("open: sandbox a"), "{text}");
}

#[test]
fn verify_fails_on_a_deleted_sandbox_and_names_the_line() {
    let (_dir, log, public, _) = signed_log();
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: String = text
        .split_inclusive('\n')
        .filter(|l| !l.contains("\"sandbox_id\":\"b\""))
        .collect();
    std::fs::write(&log, kept).unwrap();
    let (code, out) = verify_cmd(&[&log], &["--key", public.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("chain broken (Deleted) in sandbox b"), "{out}");
    assert!(out.contains(&format!("{}:", log.display())), "{out}");
}

#[test]
fn verify_with_the_anchor_catches_a_cut_tail() {
    let (_dir, log, public, anchor) = signed_log();
    let text = std::fs::read_to_string(&log).unwrap();
    // Cut from the first seal record on: the events stay, every checkpoint is gone.
    let cut = text.find("{\"seal\":").unwrap();
    std::fs::write(&log, &text[..cut]).unwrap();
    let (code, out) = verify_cmd(&[&log], &["--no-key"]);
    assert_eq!(code, 0, "the chains alone cannot tell: {out}");
    let (code, out) = verify_cmd(
        &[&log],
        &[
            "--key",
            public.to_str().unwrap(),
            "--anchor",
            anchor.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Unsealed") || out.contains("Anchor"), "{out}");
}

#[test]
fn a_rotated_set_verifies_in_order_and_follows_whole() {
    let (dir, log, public, _) = signed_log();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let (old, new) = lines.split_at(lines.len() / 2);
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::write(&rotated, old.concat()).unwrap();
    std::fs::write(&log, new.concat()).unwrap();
    let key = public.to_str().unwrap();
    let (code, out) = verify_cmd(&[&rotated, &log], &["--key", key]);
    assert_eq!(code, 0, "{out}");
    // Out of order, the set does not verify.
    let (code, _) = verify_cmd(&[&log, &rotated], &["--key", key]);
    assert_eq!(code, 1);
    let out = safehouse()
        .args(["audit", "follow", "--no-follow"])
        .arg(&rotated)
        .arg(&log)
        .output()
        .unwrap();
    let events = text
        .lines()
        .filter(|l| !l.starts_with("{\"seal\":"))
        .count();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), events);
}

#[test]
fn prove_and_verify_proof_round_trip_offline() {
    let (dir, log, public, _) = signed_log();
    let out = safehouse()
        .args(["audit", "prove", "--sandbox", "a", "--seq", "4"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proof = dir.path().join("proof.json");
    std::fs::write(&proof, &out.stdout).unwrap();
    safehouse()
        .args(["audit", "verify-proof"])
        .arg(&proof)
        .args(["--key", public.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicates::str::contains("sandbox a seq 4"));
    // Another node's key does not verify it; nor does an edited event.
    let other = tempfile::tempdir().unwrap();
    safehouse()
        .args(["audit", "keygen", "--dir"])
        .arg(other.path())
        .assert()
        .success();
    safehouse()
        .args(["audit", "verify-proof"])
        .arg(&proof)
        .arg("--key")
        .arg(other.path().join("audit.pub"))
        .assert()
        .code(1);
    let edited = String::from_utf8(out.stdout)
        .unwrap()
        .replace("event 3", "event 7");
    std::fs::write(&proof, edited).unwrap();
    safehouse()
        .args(["audit", "verify-proof"])
        .arg(&proof)
        .args(["--key", public.to_str().unwrap()])
        .assert()
        .code(1);
}

#[test]
fn keygen_refuses_to_replace_a_key() {
    let dir = tempfile::tempdir().unwrap();
    safehouse()
        .args(["audit", "keygen", "--dir"])
        .arg(dir.path())
        .assert()
        .success()
        .stdout(predicates::str::contains("safehouse-audit-pub-v1 ed25519 "));
    safehouse()
        .args(["audit", "keygen", "--dir"])
        .arg(dir.path())
        .assert()
        .code(2);
}

#[test]
fn ocsf_format_prints_one_ocsf_event_per_event_and_skips_seals() {
    let (_dir, log, _, _) = signed_log();
    let out = safehouse()
        .args(["audit", "follow", "--no-follow", "--format", "ocsf"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events.len(),
        21,
        "20 file events and a delete; no seal records"
    );
    assert!(events
        .iter()
        .filter(|v| v["unmapped"]["sandbox_id"] == "b")
        .all(|v| v["class_uid"] == 1001 && v["type_uid"] == 100114));
    assert_eq!(
        events.last().map(|v| v["class_uid"].clone()),
        Some(0.into())
    );
}
