//! Seal records end to end: a signed log verifies; each tamper the chains alone miss is
//! caught and named; a key stolen later cannot re-seal the past; proofs check offline.

use std::time::Duration;

use super::key::{self, KeyState};
use super::proof::{prove, verify_proof};
use super::*;
use crate::chain::Chain;
use crate::event::{Action, AuditEvent, Category};
use crate::verify::{verify_reader, BreakKind, VerifyOptions, VerifyReport};
use crate::writer::{AuditWriter, WriterConfig};

fn event(sandbox: &str, action: Action, i: i64) -> AuditEvent {
    AuditEvent {
        action,
        category: if action == Action::Delete {
            Category::Lifecycle
        } else {
            Category::File
        },
        container_id: Some(sandbox.to_owned()),
        sandbox_id: sandbox.to_owned(),
        message: Some(format!("event {i}")),
        time: Timestamp::from_unix_nanos(i),
        ..AuditEvent::default()
    }
}

/// Builds a log line by line the way the writer does: sealed events, then checkpoints.
struct Log {
    dir: tempfile::TempDir,
    key: VerifyingKey,
    sealer: Sealer,
    chains: BTreeMap<String, Chain>,
    lines: Vec<String>,
    n: i64,
}

impl Log {
    fn new(epoch_length: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key = key::generate(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let config = SealConfig {
            every_events: u64::MAX,
            every: Duration::from_secs(3600),
            epoch_length,
            anchor: Some(dir.path().join("anchor.jsonl")),
            ..SealConfig::new(dir.path().join(key::KEY_FILE))
        };
        let sealer = Sealer::open(config).unwrap_or_else(|e| panic!("{e}"));
        Self {
            dir,
            key,
            sealer,
            chains: BTreeMap::new(),
            lines: Vec::new(),
            n: 0,
        }
    }

    fn emit(&mut self, sandbox: &str, action: Action) {
        self.n += 1;
        let chain = self
            .chains
            .entry(sandbox.to_owned())
            .or_insert_with(|| Chain::new(sandbox));
        let mut ev = event(sandbox, action, self.n);
        let line = chain.seal(&mut ev).unwrap_or_default();
        let mut hash = [0u8; 32];
        hex::decode_to_slice(chain.last_hash(), &mut hash).unwrap_or_else(|e| panic!("{e}"));
        self.sealer.add(sandbox, ev.seq, &hash);
        self.lines.push(String::from_utf8(line).unwrap_or_default());
    }

    fn checkpoint(&mut self) {
        let mut out = Vec::new();
        self.sealer
            .checkpoint(&mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8(out).unwrap_or_default();
        self.lines
            .extend(text.split_inclusive('\n').map(str::to_owned));
    }

    fn key_path(&self) -> std::path::PathBuf {
        self.dir.path().join(key::KEY_FILE)
    }

    fn anchor(&self) -> Vec<SealRecord> {
        let text =
            std::fs::read_to_string(self.dir.path().join("anchor.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| SealRecord::parse(l.as_bytes()).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn verify(&self, lines: &[String]) -> VerifyReport {
        verify_with(lines, Some(self.key), Vec::new())
    }
}

fn verify_with(
    lines: &[String],
    key: Option<VerifyingKey>,
    anchor: Vec<SealRecord>,
) -> VerifyReport {
    let options = VerifyOptions {
        key,
        anchor,
        ..VerifyOptions::default()
    };
    verify_reader(lines.concat().as_bytes(), options).unwrap_or_else(|e| panic!("{e}"))
}

fn brk(r: &VerifyReport) -> Option<(u64, BreakKind)> {
    r.first_break.as_ref().map(|b| (b.line, b.kind))
}

/// Two sandboxes interleaved, three checkpoints; `a` ends (delete) before the last one.
fn standard_log(epoch_length: Duration) -> Log {
    let mut log = Log::new(epoch_length);
    for _ in 0..3 {
        log.emit("a", Action::Write);
        log.emit("b", Action::Open);
    }
    log.checkpoint(); // covers a 1..3, b 1..3
    log.emit("a", Action::Write);
    log.emit("b", Action::Open);
    log.emit("a", Action::Write);
    log.checkpoint(); // covers a 4..5, b 4
    log.emit("b", Action::Open);
    log.emit("a", Action::Delete);
    log.checkpoint(); // covers a 6, b 5
    log
}

fn is_seal(line: &str) -> bool {
    is_seal_line(line.as_bytes())
}

/// Index of the `nth` line (0-based) of `sandbox`.
fn nth_of(lines: &[String], sandbox: &str, nth: usize) -> usize {
    let needle = format!("\"sandbox_id\":\"{sandbox}\"");
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(&needle))
        .nth(nth)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no line {nth} of {sandbox}"))
}

/// Re-seals `sandbox`'s events from scratch, as someone who edits and recomputes would.
fn recompute_chain(lines: &mut [String], sandbox: &str) {
    let mut chain = Chain::new(sandbox);
    let needle = format!("\"sandbox_id\":\"{sandbox}\"");
    for line in lines.iter_mut().filter(|l| l.contains(&needle)) {
        let mut ev: AuditEvent = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}"));
        ev.hash = None;
        *line = String::from_utf8(chain.seal(&mut ev).unwrap_or_default()).unwrap_or_default();
    }
}

#[test]
fn a_signed_log_verifies_and_says_what_it_checked() {
    let log = standard_log(Duration::from_secs(3600));
    let r = log.verify(&log.lines);
    assert!(r.is_intact(), "{:?}", r.first_break);
    let seals = r.seals.unwrap_or_default();
    assert_eq!(
        (seals.records, seals.checkpoints, seals.events_covered),
        (3, 3, 11)
    );
    assert!(seals.signatures_checked);
    assert_eq!(
        r.sandboxes.get("a").map(|c| (c.closed, c.unsealed)),
        Some((true, None))
    );
    // The anchor holds the same records, and the log matches them.
    let r = verify_with(&log.lines, Some(log.key), log.anchor());
    assert!(r.is_intact(), "{:?}", r.first_break);
    assert_eq!(r.seals.map(|s| s.anchored), Some(3));
}

#[test]
fn the_key_file_keeps_the_node_chain_head() {
    let log = standard_log(Duration::from_secs(3600));
    let state = KeyState::load(&log.key_path()).unwrap_or_else(|e| panic!("{e}"));
    let last = log
        .lines
        .iter()
        .rev()
        .find(|l| is_seal(l))
        .cloned()
        .unwrap_or_default();
    let record = SealRecord::parse(last.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((state.seal_seq, state.seal_hash), (3, record.hash()));
    // Rewritten in place at every checkpoint: always the same length.
    let len = std::fs::metadata(log.key_path())
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(len, key::KEY_FILE_LEN as u64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(log.key_path()).map(|m| m.permissions().mode());
        assert_eq!(mode.ok().map(|m| m & 0o777), Some(0o600));
    }
}

#[test]
fn a_deleted_line_is_named() {
    let log = standard_log(Duration::from_secs(3600));
    let mut lines = log.lines.clone();
    lines.remove(nth_of(&lines, "a", 1));
    let r = log.verify(&lines);
    assert_eq!(r.first_break.map(|b| b.kind), Some(BreakKind::Deleted));
}

#[test]
fn a_whole_deleted_sandbox_is_caught_at_the_checkpoint_that_covers_it() {
    let log = standard_log(Duration::from_secs(3600));
    let lines: Vec<String> = log
        .lines
        .iter()
        .filter(|l| !l.contains("\"sandbox_id\":\"b\""))
        .cloned()
        .collect();
    // The chains alone see nothing wrong.
    assert!(verify_with(&lines, None, Vec::new())
        .first_break
        .is_none_or(|b| b.kind != BreakKind::Deleted || b.detail.contains("checkpoint")));
    let r = log.verify(&lines);
    let b = r
        .first_break
        .unwrap_or_else(|| panic!("deleted sandbox not detected"));
    assert_eq!(b.kind, BreakKind::Deleted);
    assert_eq!(b.sandbox_id.as_deref(), Some("b"));
    assert!(b.detail.contains("checkpoint seq 1"), "{}", b.detail);
    assert!(
        is_seal(&lines[b.line as usize - 1]),
        "named line {} is not the checkpoint",
        b.line
    );
}

#[test]
fn a_cut_tail_with_its_checkpoint_is_caught() {
    let log = standard_log(Duration::from_secs(3600));
    // Cut everything after a's last write: its delete and the last checkpoint are gone.
    let cut = nth_of(&log.lines, "a", 5);
    let lines = log.lines[..cut].to_vec();
    assert!(
        verify_with(&lines, None, Vec::new()).is_intact(),
        "the chains alone miss it"
    );
    // The anchor (a copy kept elsewhere) holds the removed checkpoint.
    let r = verify_with(&lines, Some(log.key), log.anchor());
    let b = r
        .first_break
        .unwrap_or_else(|| panic!("cut tail not detected"));
    assert_eq!(b.kind, BreakKind::Anchor);
    assert!(
        b.detail.contains("end at seq 2") && b.detail.contains("seq 3"),
        "{}",
        b.detail
    );
}

#[test]
fn a_closed_chain_must_be_sealed() {
    let log = standard_log(Duration::from_secs(3600));
    // Only the last checkpoint removed: a's delete is there but nothing covers it.
    let mut lines = log.lines.clone();
    let last = lines.len() - 1;
    assert!(is_seal(&lines[last]));
    lines.truncate(last);
    let r = log.verify(&lines);
    let b = r
        .first_break
        .unwrap_or_else(|| panic!("unsealed end not detected"));
    assert_eq!(
        (b.kind, b.sandbox_id.as_deref()),
        (BreakKind::Unsealed, Some("a"))
    );
}

#[test]
fn reordered_lines_and_records_are_named() {
    let log = standard_log(Duration::from_secs(3600));
    let mut lines = log.lines.clone();
    let (i, j) = (nth_of(&lines, "a", 1), nth_of(&lines, "a", 2));
    lines.swap(i, j);
    assert_eq!(
        log.verify(&lines).first_break.map(|b| b.kind),
        Some(BreakKind::Reordered)
    );

    let mut lines = log.lines.clone();
    let seals: Vec<usize> = (0..lines.len()).filter(|&i| is_seal(&lines[i])).collect();
    lines.swap(seals[1], seals[2]);
    let r = log.verify(&lines);
    assert!(r.first_break.is_some(), "swapped checkpoints not detected");

    // An event moved after the checkpoint that covers it.
    let mut lines = log.lines.clone();
    let i = nth_of(&lines, "b", 2);
    assert!(i < seals[0]);
    let moved = lines.remove(i);
    lines.insert(seals[0], moved); // just after the checkpoint, which moved up one line
    assert!(is_seal(&lines[seals[0] - 1]));
    let r = log.verify(&lines);
    assert_eq!(
        r.first_break.map(|b| (b.kind, b.line)),
        Some((BreakKind::Deleted, seals[0] as u64))
    );
}

#[test]
fn an_edited_and_recomputed_chain_breaks_its_checkpoint() {
    let log = standard_log(Duration::from_secs(3600));
    let mut lines = log.lines.clone();
    let i = nth_of(&lines, "b", 1);
    lines[i] = lines[i].replace("event ", "EVENT ");
    recompute_chain(&mut lines, "b");
    // The chain itself is consistent again ...
    let chains_only: Vec<String> = lines.iter().filter(|l| !is_seal(l)).cloned().collect();
    assert!(verify_with(&chains_only, None, Vec::new()).is_intact());
    // ... but the first checkpoint signed the original events.
    let r = log.verify(&lines);
    let first_seal = lines.iter().position(|l| is_seal(l)).unwrap_or_default();
    assert_eq!(
        brk(&r),
        Some((first_seal as u64 + 1, BreakKind::CheckpointMismatch))
    );
}

#[test]
fn a_log_without_seals_fails_with_the_key_and_another_key_fails_the_first_record() {
    let log = standard_log(Duration::from_secs(3600));
    let events: Vec<String> = log.lines.iter().filter(|l| !is_seal(l)).cloned().collect();
    assert_eq!(
        log.verify(&events).first_break.map(|b| b.kind),
        Some(BreakKind::Unsealed)
    );
    // Unless seal records are not required (the CLI's implicit installed key).
    let lenient = VerifyOptions {
        key: Some(log.key),
        require_seals: false,
        ..VerifyOptions::default()
    };
    let r = verify_reader(events.concat().as_bytes(), lenient).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.is_intact(), "{:?}", r.first_break);
    assert_eq!(r.seals.map(|s| s.records), Some(0));
    let other = Log::new(Duration::from_secs(3600));
    let r = verify_with(&log.lines, Some(other.key), Vec::new());
    let first_seal = log
        .lines
        .iter()
        .position(|l| is_seal(l))
        .unwrap_or_default();
    assert_eq!(brk(&r), Some((first_seal as u64 + 1, BreakKind::BadSeal)));
}

#[test]
fn epochs_evolve_and_each_is_checked_with_its_own_key() {
    // Epoch length zero: every checkpoint ends the epoch first.
    let log = standard_log(Duration::ZERO);
    let r = log.verify(&log.lines);
    assert!(r.is_intact(), "{:?}", r.first_break);
    let seals = r.seals.unwrap_or_default();
    assert_eq!((seals.records, seals.checkpoints, seals.epoch), (6, 3, 3));
    let state = KeyState::load(&log.key_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state.epoch, 3);
    assert_ne!(
        key::signing_key(&state.seed).verifying_key(),
        log.key,
        "the key file no longer holds epoch 0's key"
    );
}

/// CVE-2023-31439's class: with the key file stolen in a later epoch, rewrite an old event and
/// re-seal its checkpoint with the stolen key. The verifier must check the old checkpoint with
/// its own epoch's key, whatever epoch the forged record claims.
#[test]
fn a_past_epoch_re_sealed_with_a_later_key_is_rejected() {
    let log = standard_log(Duration::ZERO);
    let stolen = KeyState::load(&log.key_path()).unwrap_or_else(|e| panic!("{e}"));
    for claim in [None, Some(stolen.epoch)] {
        let mut lines = log.lines.clone();
        let i = nth_of(&lines, "b", 0);
        lines[i] = lines[i].replace("event ", "EVENT ");
        recompute_chain(&mut lines, "b");
        // Re-seal every record from the first checkpoint on with the stolen seed, keeping the
        // node chain's links consistent.
        let mut prev: Option<String> = None;
        let mut uncovered: BTreeMap<String, Vec<Hash>> = BTreeMap::new();
        for line in lines.iter_mut() {
            if !is_seal(line) {
                let ev: AuditEvent = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}"));
                let mut h = [0u8; 32];
                let _ = hex::decode_to_slice(ev.hash.unwrap_or_default(), &mut h);
                uncovered
                    .entry(ev.sandbox_id)
                    .or_default()
                    .push(event_leaf(&h));
                continue;
            }
            let mut record = SealRecord::parse(line.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            if let Some(p) = &prev {
                record.seal.prev.clone_from(p);
            }
            if record.seal.kind == SealKind::Checkpoint {
                let leaves: Vec<Hash> = record
                    .seal
                    .covers
                    .iter()
                    .flat_map(|(id, [a, b])| {
                        let n = (b - a + 1) as usize;
                        uncovered
                            .get_mut(id)
                            .map(|v| v.drain(..n).collect::<Vec<_>>())
                            .unwrap_or_default()
                    })
                    .collect();
                record.seal.root = Some(hex::encode(merkle::root(&leaves)));
            }
            if let Some(e) = claim {
                record.seal.epoch = e;
            }
            let resealed = SealRecord::sign(record.seal, &stolen.seed);
            prev = Some(resealed.hash());
            *line = String::from_utf8(resealed.line()).unwrap_or_default();
        }
        let r = log.verify(&lines);
        let first_seal = lines.iter().position(|l| is_seal(l)).unwrap_or_default();
        let b = r
            .first_break
            .unwrap_or_else(|| panic!("re-sealed log accepted ({claim:?})"));
        assert_eq!(
            (b.line, b.kind),
            (first_seal as u64 + 1, BreakKind::BadSeal),
            "{}",
            b.detail
        );
        assert!(b.detail.contains("epoch 0"), "{}", b.detail);
    }
}

#[test]
fn inclusion_proofs_verify_offline_and_reject_a_changed_event() {
    let log = standard_log(Duration::ZERO);
    let text = log.lines.concat();
    for (sandbox, seq) in [("a", 1), ("b", 3), ("a", 5), ("a", 6), ("b", 5)] {
        let proof = prove(text.as_bytes(), sandbox, seq).unwrap_or_else(|e| panic!("{e}"));
        let proven =
            verify_proof(&proof, &log.key).unwrap_or_else(|e| panic!("{sandbox} {seq}: {e}"));
        assert_eq!((proven.sandbox.as_str(), proven.seq), (sandbox, seq));
        // The same proof for a changed event fails.
        let mut forged = proof.clone();
        forged.event = forged.event.replace("event ", "EVENT ");
        assert!(verify_proof(&forged, &log.key).is_err());
        // And with another node's key.
        let other = Log::new(Duration::from_secs(60));
        assert!(verify_proof(&proof, &other.key).is_err());
        // A proof without its epoch certificates cannot reach the checkpoint's key.
        if !proof.epochs.is_empty() {
            let mut short = proof.clone();
            short.epochs.pop();
            assert!(verify_proof(&short, &log.key).is_err());
        }
    }
    assert!(prove(text.as_bytes(), "a", 99).is_err());
}

#[test]
fn the_writer_seals_what_it_writes_and_checkpoints_a_sandbox_end() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = key::generate(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("audit.jsonl");
    let file = crate::writer::open_append(&path).unwrap_or_else(|e| panic!("{e}"));
    let config = WriterConfig {
        seal: Some(SealConfig {
            every: Duration::from_secs(3600),
            ..SealConfig::new(dir.path().join(key::KEY_FILE))
        }),
        ..WriterConfig::default()
    };
    let (writer, handle) = AuditWriter::spawn(file, config).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..20 {
        writer.submit(event("a", Action::Write, i));
        writer.submit(event("b", Action::Open, i));
    }
    writer.submit(event("a", Action::Delete, 99));
    // The sandbox's end is checkpointed without waiting for the interval.
    let mut waited = 0;
    while !std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains("{\"seal\":")
    {
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
        assert!(waited < 1000, "no checkpoint after a sandbox's end");
    }
    writer.submit(event("b", Action::Open, 100));
    drop(writer);
    let stats = handle.finish();
    assert!(stats.checkpoints >= 2, "{stats:?}");
    assert_eq!(stats.seal_errors, 0);
    let options = VerifyOptions {
        key: Some(key),
        ..VerifyOptions::default()
    };
    let r = crate::verify::verify_file_with(&path, options).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.is_intact(), "{:?}", r.first_break);
    assert_eq!(r.seals.map(|s| s.events_covered), Some(42));
}

#[test]
fn a_writer_without_a_readable_key_does_not_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = WriterConfig {
        seal: Some(SealConfig::new(dir.path().join("missing.key"))),
        ..WriterConfig::default()
    };
    let err = AuditWriter::spawn(Vec::new(), config).err();
    assert!(
        err.is_some_and(|e| e.to_string().contains("missing.key")),
        "spawn accepted an unreadable key"
    );
}

#[test]
fn generate_refuses_to_replace_a_key() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    assert!(key::generate(dir.path()).is_ok());
    assert!(matches!(
        key::generate(dir.path()),
        Err(SealError::KeyExists(_))
    ));
    let text = std::fs::read_to_string(dir.path().join(key::PUB_FILE)).unwrap_or_default();
    assert!(key::parse_public_key(&text).is_ok());
}

/// Rename rotation while two sandboxes emit: every event lands in exactly one file, in order,
/// and the set verifies (signatures included) when given oldest first.
fn rotate_while_emitting(check_every: Duration, ask: bool) {
    use crate::writer::ReopeningFile;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let key = key::generate(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("audit.jsonl");
    let rotated = dir.path().join("audit.jsonl.1");
    let file = ReopeningFile::open(&path, check_every).unwrap_or_else(|e| panic!("{e}"));
    let config = WriterConfig {
        seal: Some(SealConfig {
            every_events: 50,
            ..SealConfig::new(dir.path().join(key::KEY_FILE))
        }),
        ..WriterConfig::default()
    };
    let (writer, handle) =
        AuditWriter::spawn_reopening(file, config).unwrap_or_else(|e| panic!("{e}"));
    let emit = |sb: &'static str, from: i64, to: i64| {
        let w = writer.clone();
        std::thread::spawn(move || {
            for i in from..to {
                let mut batch = vec![event(sb, Action::Write, i)];
                w.submit_batch(&mut batch, &|| false);
            }
        })
    };
    let (a, b) = (emit("a", 0, 300), emit("b", 0, 300));
    // Rename once the old file has something, then (maybe) ask for the reopen.
    while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
        std::thread::yield_now();
    }
    std::fs::rename(&path, &rotated).unwrap_or_else(|e| panic!("{e}"));
    if ask {
        assert!(writer.reopen());
    }
    let _ = (a.join(), b.join());
    let (c, d) = (emit("a", 300, 400), emit("b", 300, 400));
    let _ = (c.join(), d.join());
    drop(writer);
    let stats = handle.finish();
    assert_eq!(stats.reopens, 1, "{stats:?}");
    let old = std::fs::read_to_string(&rotated).unwrap_or_default();
    let new = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(!new.is_empty(), "nothing went to the new file");
    for sb in ["a", "b"] {
        let needle = format!("\"sandbox_id\":\"{sb}\"");
        let seqs: Vec<u64> = old
            .lines()
            .chain(new.lines())
            .filter(|l| l.contains(&needle))
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(seqs, (1..=400).collect::<Vec<u64>>(), "sandbox {sb}");
    }
    let options = VerifyOptions {
        key: Some(key),
        ..VerifyOptions::default()
    };
    let r =
        crate::verify::verify_files(&[&rotated, &path], options).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.is_intact(), "{:?}", r.first_break);
    assert_eq!(r.seals.map(|s| s.events_covered), Some(800));
}

#[test]
fn rotation_by_rename_is_followed_on_request() {
    // No periodic look at the path: only the request makes the writer reopen.
    rotate_while_emitting(Duration::from_secs(3600), true);
}

#[test]
fn rotation_by_rename_is_noticed_without_a_request() {
    rotate_while_emitting(Duration::ZERO, false);
}

#[test]
fn events_a_killed_writer_left_unsealed_are_counted_not_failed() {
    let mut log = standard_log(Duration::from_secs(3600));
    log.emit("b", Action::Open); // b seq 6: its writer is killed before checkpointing it
    let sealer_config = SealConfig {
        every_events: u64::MAX,
        every: Duration::from_secs(3600),
        epoch_length: Duration::from_secs(3600),
        ..SealConfig::new(log.key_path())
    };
    log.sealer = Sealer::open(sealer_config).unwrap_or_else(|e| panic!("{e}"));
    log.emit("b", Action::Open); // a new writer continues b's chain at seq 7
    log.checkpoint();
    let r = log.verify(&log.lines);
    assert!(r.is_intact(), "{:?}", r.first_break);
    assert_eq!(r.sandboxes.get("b").map(|c| c.never_sealed), Some(1));
    // Deleting the unsealed event is still a chain break.
    let mut lines = log.lines.clone();
    lines.remove(nth_of(&lines, "b", 5));
    assert_eq!(
        log.verify(&lines).first_break.map(|b| b.kind),
        Some(BreakKind::Deleted)
    );
}

#[test]
fn an_idle_sealer_still_evolves_the_key_when_the_epoch_ends() {
    let mut log = Log::new(Duration::ZERO);
    assert!(!log.sealer.has_pending());
    assert!(
        log.sealer.due(),
        "an ended epoch makes a checkpoint due without events"
    );
    log.checkpoint();
    assert_eq!(log.lines.len(), 1);
    let record = SealRecord::parse(log.lines[0].as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((record.seal.kind, record.seal.epoch), (SealKind::Epoch, 0));
    let state = KeyState::load(&log.key_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state.epoch, 1);
    assert!(log.verify(&log.lines).seals.is_some_and(|s| s.epoch == 1));
}

#[test]
fn the_anchor_command_gets_every_seal_record_on_its_stdin() {
    let mut log = Log::new(Duration::from_secs(3600));
    let copied = log.dir.path().join("from-command.jsonl");
    log.sealer.config.anchor_command = Some(vec![
        "sh".into(),
        "-c".into(),
        format!("cat >> '{}'", copied.display()),
    ]);
    for _ in 0..3 {
        log.emit("sb", Action::Exec);
    }
    log.checkpoint();
    let wanted = log.anchor();
    assert!(!wanted.is_empty(), "the file anchor holds the records");
    let mut got = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&copied).unwrap_or_default();
        got = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| SealRecord::parse(l.as_bytes()).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if got.len() >= wanted.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(got, wanted, "the command's copy equals the file anchor's");
}
