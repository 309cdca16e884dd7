//! Writer tests: whole lines, contiguous chains, counted drops, short writes,
//! concurrent appenders.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::*;

/// A sink that stores everything, optionally accepting few bytes per write and
/// optionally blocking until opened.
#[derive(Clone, Default)]
struct Memory {
    data: Arc<Mutex<Vec<u8>>>,
    max_write: Option<usize>,
    gate: Option<Arc<(Mutex<bool>, Condvar)>>,
    /// The length of every write accepted.
    writes: Arc<Mutex<Vec<usize>>>,
}

impl Write for Memory {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(gate) = &self.gate {
            let (open, cv) = &**gate;
            let mut g = open.lock().map_err(|_| io::Error::other("poisoned"))?;
            while !*g {
                g = cv.wait(g).map_err(|_| io::Error::other("poisoned"))?;
            }
        }
        let n = self.max_write.map_or(buf.len(), |m| m.min(buf.len()));
        self.data
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .extend_from_slice(&buf[..n]);
        if let Ok(mut w) = self.writes.lock() {
            w.push(n);
        }
        Ok(n)
    }
    /// Like a file: takes the buffers in order, as one write.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        self.write(&all)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn event(sandbox: &str) -> AuditEvent {
    AuditEvent {
        action: Action::Open,
        category: Category::File,
        sandbox_id: sandbox.to_owned(),
        time: Timestamp::now(),
        ..AuditEvent::default()
    }
}

fn lines(mem: &Memory) -> Vec<Value> {
    let data = mem.data.lock().map(|d| d.clone()).unwrap_or_default();
    assert_eq!(data.last(), Some(&b'\n'));
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap_or(Value::Null))
        .collect()
}

fn assert_contiguous(values: &[Value]) {
    let mut next: HashMap<String, u64> = HashMap::new();
    for v in values {
        let sb = v["sandbox_id"].as_str().unwrap_or("?").to_owned();
        let seq = v["seq"].as_u64().unwrap_or(0);
        let want = next.entry(sb).or_insert(1);
        assert_eq!(seq, *want, "line {v}");
        *want += 1;
    }
}

type Gate = Arc<(Mutex<bool>, Condvar)>;

/// A writer over a sink whose writes block until [`open`] is called on the gate.
fn gated(config: WriterConfig) -> (Gate, Memory, AuditWriter, WriterHandle) {
    let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
    let mem = Memory {
        gate: Some(Arc::clone(&gate)),
        ..Memory::default()
    };
    let (w, h) = AuditWriter::spawn(mem.clone(), config).unwrap_or_else(|e| panic!("{e}"));
    (gate, mem, w, h)
}

fn open(gate: &(Mutex<bool>, Condvar)) {
    let (open, cv) = gate;
    if let Ok(mut g) = open.lock() {
        *g = true;
    }
    cv.notify_all();
}

#[test]
fn writes_whole_chained_lines_per_sandbox() {
    let mem = Memory::default();
    let (w, h) =
        AuditWriter::spawn(mem.clone(), WriterConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..1000 {
        assert!(w.submit(event(if i % 3 == 0 { "a" } else { "b" })));
    }
    drop(w);
    let stats = h.finish();
    assert_eq!(stats.lines_written, 1000);
    let values = lines(&mem);
    assert_eq!(values.len(), 1000);
    assert_contiguous(&values);
}

#[test]
fn full_queue_counts_drops_and_reports_them_without_gaps() {
    let (gate, mem, w, h) = gated(WriterConfig {
        queue_bytes: 4,
        max_batch_bytes: 1,
        ..WriterConfig::default()
    });
    let accepted = (0..200).filter(|_| w.submit(event("a"))).count() as u64;
    let stats = w.stats();
    assert!(stats.queue_dropped > 0);
    assert_eq!(stats.queue_dropped + accepted, 200);
    open(&gate);
    drop(w);
    h.finish();
    let values = lines(&mem);
    assert_contiguous(&values);
    let reported: u64 = values
        .iter()
        .filter(|v| v["action"] == "dropped")
        .map(|v| v["dropped"]["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(reported, stats.queue_dropped);
    assert!(values.iter().any(|v| v["dropped"]["source"] == "queue"));
}

#[test]
fn batches_wait_for_room_instead_of_dropping() {
    let (gate, mem, w, h) = gated(WriterConfig {
        queue_bytes: 1,
        ..WriterConfig::default()
    });
    let producer = {
        let w = w.clone();
        std::thread::spawn(move || {
            let mut queued = 0;
            for _ in 0..5 {
                let mut batch: Vec<AuditEvent> = (0..10).map(|_| event("a")).collect();
                queued += w.submit_batch(&mut batch, &|| false);
                assert!(batch.is_empty());
            }
            queued
        })
    };
    // The writer is stuck in its first write; the producer waits for room meanwhile.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !producer.is_finished(),
        "a full queue must hold the batch back"
    );
    open(&gate);
    assert_eq!(producer.join().unwrap_or(0), 50);
    drop(w);
    let stats = h.finish();
    assert_eq!((stats.lines_written, stats.queue_dropped), (50, 0));
    let values = lines(&mem);
    assert_eq!(values.len(), 50);
    assert_contiguous(&values);
}

#[test]
fn a_batch_given_up_is_counted_and_the_chain_has_no_gap() {
    let (gate, mem, w, h) = gated(WriterConfig {
        queue_bytes: 1,
        ..WriterConfig::default()
    });
    let mut first: Vec<AuditEvent> = (0..3).map(|_| event("a")).collect();
    assert_eq!(w.submit_batch(&mut first, &|| false), 3);
    std::thread::sleep(Duration::from_millis(100));
    // Queue full and the sink stopping: the batch is dropped, not sealed.
    let mut second: Vec<AuditEvent> = (0..7).map(|_| event("a")).collect();
    assert_eq!(w.submit_batch(&mut second, &|| true), 0);
    assert_eq!(w.stats().queue_dropped, 7);
    open(&gate);
    let mut third: Vec<AuditEvent> = (0..2).map(|_| event("a")).collect();
    assert_eq!(w.submit_batch(&mut third, &|| false), 2);
    drop(w);
    h.finish();
    let values = lines(&mem);
    assert_contiguous(&values);
    let actions: Vec<&str> = values.iter().filter_map(|v| v["action"].as_str()).collect();
    assert_eq!(actions.iter().filter(|a| **a == "open").count(), 5);
    let reported: Vec<u64> = values
        .iter()
        .filter(|v| v["action"] == "dropped")
        .filter_map(|v| v["dropped"]["count"].as_u64())
        .collect();
    assert_eq!(reported, vec![7]);
}

#[test]
fn try_submit_batch_never_waits() {
    let (gate, mem, w, h) = gated(WriterConfig {
        queue_bytes: 1,
        ..WriterConfig::default()
    });
    let mut first = vec![event("a")];
    assert!(w.try_submit_batch(&mut first));
    assert!(first.is_empty());
    std::thread::sleep(Duration::from_millis(100));
    // Full (the writer is stuck in its first write): refused at once, events kept.
    let mut second = vec![event("a"), event("a")];
    assert!(!w.try_submit_batch(&mut second));
    assert_eq!(second.len(), 2);
    open(&gate);
    assert_eq!(w.submit_batch(&mut second, &|| false), 2);
    drop(w);
    let stats = h.finish();
    assert_eq!((stats.lines_written, stats.queue_dropped), (3, 0));
    assert_contiguous(&lines(&mem));
}

#[test]
fn writes_split_only_between_lines() {
    let mem = Memory::default();
    let config = WriterConfig {
        max_batch_bytes: 1500,
        ..WriterConfig::default()
    };
    let (w, h) = AuditWriter::spawn(mem.clone(), config).unwrap_or_else(|e| panic!("{e}"));
    let mut batch: Vec<AuditEvent> = (0..40)
        .map(|i| {
            let mut ev = event(if i < 30 { "a" } else { "b" });
            // Lines of 300 to 4,200 bytes: some longer than a whole batch.
            ev.message = Some("m".repeat(300 * (i % 14 + 1)));
            ev
        })
        .collect();
    assert_eq!(w.submit_batch(&mut batch, &|| false), 40);
    // A second sandbox's single events: queued as items of their own, written together.
    for _ in 0..5 {
        assert!(w.submit(event("c")));
    }
    drop(w);
    let stats = h.finish();
    assert_eq!(stats.lines_written, 45);
    assert_eq!(stats.partial_writes, 0);
    let data = mem.data.lock().map(|d| d.clone()).unwrap_or_default();
    let writes = mem.writes.lock().map(|w| w.clone()).unwrap_or_default();
    let mut at = 0;
    for n in writes {
        at += n;
        assert_eq!(data[at - 1], b'\n', "a write ended inside a line");
        let line_count = data[at - n..at].iter().filter(|&&b| b == b'\n').count();
        assert!(
            n <= 1500 || line_count == 1,
            "{n} bytes in {line_count} lines"
        );
    }
    let values = lines(&mem);
    assert_eq!(values.len(), 45);
    assert_contiguous(&values);
}

#[test]
fn short_writes_still_produce_whole_lines() {
    let mem = Memory {
        max_write: Some(7),
        ..Memory::default()
    };
    let (w, h) =
        AuditWriter::spawn(mem.clone(), WriterConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..10 {
        w.submit(event("a"));
    }
    drop(w);
    let stats = h.finish();
    assert!(stats.partial_writes > 0);
    assert_eq!(stats.lines_written, 10);
    assert_eq!(lines(&mem).len(), 10);
}

#[test]
fn concurrent_appenders_never_interleave_lines() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("audit.jsonl");
    let mut handles = Vec::new();
    for sb in ["x", "y", "z"] {
        let file = open_append(&path).unwrap_or_else(|e| panic!("{e}"));
        let (w, h) =
            AuditWriter::spawn(file, WriterConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        handles.push(std::thread::spawn(move || {
            for _ in 0..2000 {
                let mut ev = event(sb);
                ev.message = Some("m".repeat(300));
                while !w.submit(ev.clone()) {
                    std::thread::yield_now();
                }
            }
            drop(w);
            h.finish()
        }));
    }
    for t in handles {
        let _ = t.join();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let values: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
        .collect();
    assert_eq!(values.len(), 6000);
    assert_contiguous(&values);
}

#[test]
fn a_flooding_sandbox_is_cut_at_its_budget_and_the_others_keep_flowing() {
    let mem = Memory::default();
    let config = WriterConfig {
        budget: Some(BudgetConfig {
            events_per_sec: 0,
            event_burst: 10,
            bytes_per_sec: 0,
            byte_burst: 1 << 30,
        }),
        ..WriterConfig::default()
    };
    let (w, h) = AuditWriter::spawn(mem.clone(), config).unwrap_or_else(|e| panic!("{e}"));
    let mut flood: Vec<AuditEvent> = (0..100).map(|_| event("flood")).collect();
    let exec = AuditEvent {
        action: Action::Exec,
        category: Category::Process,
        ..event("flood")
    };
    let kill = AuditEvent {
        action: Action::Kill,
        category: Category::Lifecycle,
        ..event("flood")
    };
    flood.push(exec);
    flood.extend((0..50).map(|_| event("flood")));
    flood.push(kill);
    w.submit_batch(&mut flood, &|| false);
    let mut quiet: Vec<AuditEvent> = (0..8).map(|_| event("quiet")).collect();
    w.submit_batch(&mut quiet, &|| false);
    drop(w);
    let stats = h.finish();
    let text = String::from_utf8(mem.data.lock().map(|d| d.clone()).unwrap_or_default())
        .unwrap_or_default();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    let of = |sb: &'static str| lines.iter().filter(move |v| v["sandbox_id"] == sb);
    let count = |sb: &'static str, action: &str| of(sb).filter(|v| v["action"] == action).count();
    // The other sandbox lost nothing.
    assert_eq!(count("quiet", "open"), 8);
    // The flood kept its burst, and every event enforcement needs.
    assert_eq!(count("flood", "open"), 10);
    assert_eq!((count("flood", "exec"), count("flood", "kill")), (1, 1));
    // Every cut event is reported, with its source, before the kill.
    let reported: u64 = of("flood")
        .filter(|v| v["dropped"]["source"] == "budget")
        .filter_map(|v| v["dropped"]["count"].as_u64())
        .sum();
    assert_eq!(reported, 140);
    assert_eq!(stats.budget_dropped, 140);
    let kill_at = lines.iter().position(|v| v["action"] == "kill");
    let last_report = lines
        .iter()
        .rposition(|v| v["dropped"]["source"] == "budget");
    assert!(
        last_report < kill_at,
        "the cut count is reported before the kill"
    );
    // No gap in the chain: cut events were never sealed.
    let seqs: Vec<u64> = of("flood").filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

/// A destination that refuses every write, like a full disk.
struct Full;

impl Write for Full {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_full_destination_is_spooled_within_the_budget_and_written_by_the_next_writer() {
    use crate::seal::{key, SealConfig};
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let public = key::generate(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let spool = dir.path().join("spool");
    let config = WriterConfig {
        spool: Some(spool.clone()),
        seal: Some(SealConfig::new(dir.path().join(key::KEY_FILE))),
        ..WriterConfig::default()
    };
    let (w, h) = AuditWriter::spawn(Full, config.clone()).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..10 {
        assert!(w.submit(event("a")));
    }
    w.submit(AuditEvent {
        action: Action::Delete,
        category: Category::Lifecycle,
        container_id: Some("a".into()),
        ..event("a")
    });
    // A producer still holds a clone: finish_within must not wait for it, nor for space.
    let still_held = w.clone();
    drop(w);
    let stats = h.finish_within(Duration::from_millis(50));
    assert_eq!(
        (stats.lines_written, stats.spooled_lines, stats.lost_lines),
        (0, 11, 0),
        "{stats:?}"
    );
    drop(still_held);
    assert_eq!(spool::pending(&spool).map(|f| f.len()).unwrap_or(0), 1);

    // Space again: the next writer writes the spooled lines first, then its own.
    let path = dir.path().join("audit.jsonl");
    let file = open_append(&path).unwrap_or_else(|e| panic!("{e}"));
    let (w, h) = AuditWriter::spawn(file, config).unwrap_or_else(|e| panic!("{e}"));
    w.submit(event("b"));
    drop(w);
    let stats = h.finish();
    assert_eq!(stats.unspooled_lines, 11, "{stats:?}");
    assert!(spool::pending(&spool).is_ok_and(|f| f.is_empty()));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let first_b = text.find("\"sandbox_id\":\"b\"").unwrap_or(0);
    assert_eq!(text[..first_b].matches("\"sandbox_id\":\"a\"").count(), 11);
    // Both sandboxes' events are covered by the second writer's checkpoints.
    let options = crate::verify::VerifyOptions {
        key: Some(public),
        ..crate::verify::VerifyOptions::default()
    };
    let r = crate::verify::verify_file_with(&path, options).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.is_intact(), "{:?}", r.first_break);
    assert_eq!(r.seals.map(|s| s.events_covered), Some(12));
}

#[test]
fn without_a_spool_unwritten_lines_are_counted_lost() {
    let (w, h) =
        AuditWriter::spawn(Full, WriterConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..5 {
        assert!(w.submit(event("a")));
    }
    drop(w);
    let stats = h.finish_within(Duration::from_millis(20));
    assert_eq!((stats.spooled_lines, stats.lost_lines), (0, 5), "{stats:?}");
}
