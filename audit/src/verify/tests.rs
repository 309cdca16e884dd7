//! Tampering with a chained file is caught at the right line.

use super::*;
use crate::chain::{sha256_hex, Chain};
use crate::event::{Action, AuditEvent, Category};
use crate::timestamp::Timestamp;

/// 12 lines alternating sandboxes a, b, a, b... (a at odd lines).
fn file_lines() -> Vec<String> {
    let mut a = Chain::new("a");
    let mut b = Chain::new("b");
    (0..12)
        .map(|i| {
            let (chain, sb) = if i % 2 == 0 {
                (&mut a, "a")
            } else {
                (&mut b, "b")
            };
            let mut ev = AuditEvent {
                action: Action::Write,
                category: Category::File,
                sandbox_id: sb.to_owned(),
                message: Some(format!("event {i}")),
                time: Timestamp::from_unix_nanos(i),
                ..AuditEvent::default()
            };
            let line = chain.seal(&mut ev).unwrap_or_default();
            String::from_utf8(line).unwrap_or_default()
        })
        .collect()
}

fn verify(lines: &[String]) -> VerifyReport {
    verify_text(&lines.concat())
}

fn verify_text(text: &str) -> VerifyReport {
    verify_reader(text.as_bytes(), VerifyOptions::default()).unwrap_or_default()
}

fn brk(report: &VerifyReport) -> (u64, BreakKind) {
    report
        .first_break
        .as_ref()
        .map_or((0, BreakKind::Malformed), |b| (b.line, b.kind))
}

#[test]
fn intact_interleaved_file_verifies() {
    let r = verify(&file_lines());
    assert!(r.is_intact(), "{r:?}");
    assert_eq!(r.lines, 12);
    assert_eq!(r.sandboxes.len(), 2);
    assert_eq!(
        r.sandboxes.get("a").map(|c| (c.events, c.last_seq)),
        Some((6, 6))
    );
}

#[test]
fn edited_line_fails_at_that_line() {
    let mut lines = file_lines();
    lines[4] = lines[4].replace("event 4", "event X");
    let r = verify(&lines);
    assert_eq!(brk(&r), (5, BreakKind::Edited));
    assert_eq!(
        r.first_break.and_then(|b| b.sandbox_id).as_deref(),
        Some("a")
    );
}

#[test]
fn edited_line_with_recomputed_hash_breaks_the_next_link() {
    let mut lines = file_lines();
    let mut v: Value = serde_json::from_str(&lines[4]).unwrap_or_default();
    v["message"] = "event X".into();
    let (_, h) = recompute_hash(v.clone()).unwrap_or_default();
    v["hash"] = h.into();
    lines[4] = format!("{v}\n");
    let r = verify(&lines);
    // Line 5 now verifies on its own; a's next event (line 7) no longer links.
    assert_eq!(brk(&r), (7, BreakKind::BrokenLink));
}

#[test]
fn deleted_line_fails_at_the_sandboxes_next_line() {
    let mut lines = file_lines();
    lines.remove(4); // a's seq 3
    let r = verify(&lines);
    // a's seq 4 was line 7, now line 6.
    assert_eq!(brk(&r), (6, BreakKind::Deleted));
}

#[test]
fn swapped_lines_are_reported_as_reordered() {
    let mut lines = file_lines();
    lines.swap(4, 6); // a's seq 3 and 4
    let r = verify(&lines);
    assert_eq!(brk(&r), (5, BreakKind::Reordered));
    let mut lines = file_lines();
    lines.swap(2, 10);
    assert_eq!(brk(&verify(&lines)), (3, BreakKind::Reordered));
}

#[test]
fn truncated_file_fails_at_the_cut_line() {
    let text = file_lines().concat();
    let cut = &text[..text.len() - 30];
    let r = verify_text(cut);
    assert_eq!(brk(&r), (12, BreakKind::Truncated));
    // Cut exactly before the final newline: JSON is complete but the line is not.
    let r = verify_text(&text[..text.len() - 1]);
    assert_eq!(brk(&r), (12, BreakKind::Truncated));
}

#[test]
fn missing_start_and_rotated_files() {
    let lines = file_lines();
    let r = verify(&lines[2..]);
    assert_eq!(brk(&r), (1, BreakKind::MissingStart));
    let lenient = verify_reader(
        lines[2..].concat().as_bytes(),
        VerifyOptions {
            require_genesis: false,
            ..VerifyOptions::default()
        },
    );
    assert!(lenient.is_ok_and(|r| r.is_intact()));
}

#[test]
fn garbage_lines_are_malformed_and_swapped_hash_is_edit() {
    let mut lines = file_lines();
    lines.insert(3, "not json\n".to_owned());
    assert_eq!(brk(&verify(&lines)), (4, BreakKind::Malformed));
    let mut lines = file_lines();
    lines[0] = lines[0].replace(GENESIS_HASH, &sha256_hex(b"x"));
    assert_eq!(brk(&verify(&lines)), (1, BreakKind::Edited));
}

#[test]
fn verify_file_reads_from_disk() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, file_lines().concat()).unwrap_or_else(|e| panic!("{e}"));
    assert!(verify_file(&path).is_ok_and(|r| r.is_intact()));
    assert!(matches!(
        verify_file(&dir.path().join("missing")),
        Err(VerifyError::Io { .. })
    ));
}
