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
