//! The JSON Lines writer: a bounded queue in front of one writer thread that
//! chains each sandbox's events and appends whole lines to a sink.
//!
//! - Producers call [`AuditWriter::submit`], which never blocks: when the
//!   queue is full the event is counted as dropped for its sandbox.
//! - The writer thread seals events with each sandbox's [`Chain`] *after* the
//!   queue, so a queue drop never leaves a gap in a chain. As soon as it has
//!   dequeued again (space freed) it writes one `audit`/`dropped` event per
//!   sandbox with the count.
//! - Lines are written whole: each `write(2)` carries one or more complete
//!   lines (at most [`WriterConfig::max_batch_bytes`]), so several shims can
//!   append to the same `O_APPEND` file without interleaving.
//! - A failing sink (disk full, closed pipe) is retried with backoff; the
//!   queue absorbs the wait and counts drops instead of blocking producers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::chain::Chain;
use crate::event::{Action, AuditEvent, Category, DropInfo, DropSource};
use crate::timestamp::Timestamp;

/// How the writer queues and batches.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Events the queue holds before new ones are dropped (and counted).
    pub capacity: usize,
    /// Largest single write(2); whole lines only. Use 4096 (PIPE_BUF) when
    /// several writers share one pipe or FIFO.
    pub max_batch_bytes: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            max_batch_bytes: 64 * 1024,
        }
    }
}

/// Counters of one writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Lines written.
    pub lines_written: u64,
    /// Events dropped because the queue was full.
    pub queue_dropped: u64,
    /// Failed write attempts (each retried).
    pub write_errors: u64,
    /// Writes the sink accepted only in part (the rest was then written).
    pub partial_writes: u64,
}

#[derive(Default)]
struct Shared {
    drops: Mutex<HashMap<String, u64>>,
    drops_pending: AtomicBool,
    stopping: AtomicBool,
    lines_written: AtomicU64,
    queue_dropped: AtomicU64,
    write_errors: AtomicU64,
    partial_writes: AtomicU64,
}

/// The producer side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct AuditWriter {
    tx: SyncSender<Box<AuditEvent>>,
    shared: Arc<Shared>,
}

/// The writer thread; [`WriterHandle::finish`] drains the queue and joins it.
pub struct WriterHandle {
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl AuditWriter {
    /// Starts the writer thread over `sink` with fresh chains.
    pub fn spawn<W: Write + Send + 'static>(
        sink: W,
        config: WriterConfig,
    ) -> io::Result<(Self, WriterHandle)> {
        Self::spawn_with_chains(sink, config, Vec::new())
    }

    /// Starts the writer thread, continuing the given chains (after a restart).
    pub fn spawn_with_chains<W: Write + Send + 'static>(
        sink: W,
        config: WriterConfig,
        chains: Vec<Chain>,
    ) -> io::Result<(Self, WriterHandle)> {
        let (tx, rx) = sync_channel(config.capacity.max(1));
        let shared = Arc::new(Shared::default());
        let chains = chains
            .into_iter()
            .map(|c| (c.sandbox_id().to_owned(), c))
            .collect();
        let mut worker = Worker {
            rx,
            sink,
            chains,
            shared: Arc::clone(&shared),
            batch: Vec::with_capacity(config.max_batch_bytes.max(4096)),
            max_batch: config.max_batch_bytes.max(1),
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || worker.run())?;
        Ok((
            Self {
                tx,
                shared: Arc::clone(&shared),
            },
            WriterHandle {
                thread: Some(thread),
                shared,
            },
        ))
    }

    /// Queues `event`; returns false (and counts a drop) if the queue is full
    /// or the writer is gone. Never blocks.
    pub fn submit(&self, event: AuditEvent) -> bool {
        match self.tx.try_send(Box::new(event)) {
            Ok(()) => true,
            Err(TrySendError::Full(ev) | TrySendError::Disconnected(ev)) => {
                self.shared.queue_dropped.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut drops) = self.shared.drops.lock() {
                    *drops.entry(ev.sandbox_id).or_insert(0) += 1;
                }
                self.shared.drops_pending.store(true, Ordering::Release);
                false
            }
        }
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }
}

impl Shared {
    fn stats(&self) -> WriterStats {
        WriterStats {
            lines_written: self.lines_written.load(Ordering::Relaxed),
            queue_dropped: self.queue_dropped.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            partial_writes: self.partial_writes.load(Ordering::Relaxed),
        }
    }
}

impl WriterHandle {
    /// Waits until every queued event is written (all [`AuditWriter`] clones
    /// must be dropped first) and returns the final counters.
    pub fn finish(mut self) -> WriterStats {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.stats()
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        // Without finish(): stop retrying a broken sink so the thread can end.
        self.shared.stopping.store(true, Ordering::Release);
    }
}

struct Worker<W> {
    rx: Receiver<Box<AuditEvent>>,
    sink: W,
    chains: HashMap<String, Chain>,
    shared: Arc<Shared>,
    batch: Vec<u8>,
    max_batch: usize,
}

impl<W: Write> Worker<W> {
    fn run(&mut self) {
        loop {
            let first = match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if let Some(ev) = first {
                self.append(*ev);
                while self.batch.len() < self.max_batch {
                    match self.rx.try_recv() {
                        Ok(ev) => self.append(*ev),
                        Err(_) => break,
                    }
                }
            }
            self.report_drops();
            self.flush_batch();
        }
        self.report_drops();
        self.flush_batch();
    }

    /// Seals `event` and adds its line to the batch (writing first if full).
    fn append(&mut self, mut event: AuditEvent) {
        let chain = self
            .chains
            .entry(event.sandbox_id.clone())
            .or_insert_with(|| Chain::new(event.sandbox_id.clone()));
        match chain.seal(&mut event) {
            Ok(line) => {
                if !self.batch.is_empty() && self.batch.len() + line.len() > self.max_batch {
                    self.flush_batch();
                }
                self.batch.extend_from_slice(&line);
            }
            Err(e) => tracing::error!(error = %e, "audit event could not be sealed"),
        }
    }

    /// Turns the drop counts collected by producers into `audit`/`dropped` events.
    fn report_drops(&mut self) {
        if !self.shared.drops_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let drops = match self.shared.drops.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => return,
        };
        let mut sandboxes: Vec<(String, u64)> = drops.into_iter().collect();
        sandboxes.sort();
        for (sandbox_id, count) in sandboxes {
            self.append(AuditEvent {
                action: Action::Dropped,
                category: Category::Audit,
                dropped: Some(DropInfo {
                    count,
                    source: DropSource::Queue,
                }),
                message: Some(format!("{count} events dropped: audit queue full")),
                sandbox_id,
                time: Timestamp::now(),
                ..AuditEvent::default()
            });
        }
    }

    /// Writes the batch (whole lines) with as few write(2) calls as the sink allows.
    fn flush_batch(&mut self) {
        let mut written = 0;
        let mut backoff = Duration::from_millis(10);
        while written < self.batch.len() {
            match self.sink.write(&self.batch[written..]) {
                Ok(0) => self.failed(&mut backoff, "sink accepted no bytes"),
                Ok(n) => {
                    if written + n < self.batch.len() {
                        self.shared.partial_writes.fetch_add(1, Ordering::Relaxed);
                    }
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.failed(&mut backoff, &e.to_string()),
            }
            if self.shared.stopping.load(Ordering::Acquire) && written < self.batch.len() {
                break;
            }
        }
        let lines = self.batch.iter().filter(|&&b| b == b'\n').count() as u64;
        if written == self.batch.len() {
            self.shared
                .lines_written
                .fetch_add(lines, Ordering::Relaxed);
            let _ = self.sink.flush();
        }
        self.batch.clear();
    }

    fn failed(&self, backoff: &mut Duration, why: &str) {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = why, "audit sink write failed; retrying");
        std::thread::sleep(*backoff);
        *backoff = (*backoff * 2).min(Duration::from_secs(1));
    }
}

/// Opens (creating 0640 if needed) a file for appending whole lines.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// An unbuffered handle on this process's standard output (fd 1).
pub fn stdout_file() -> io::Result<File> {
    use std::os::fd::AsFd;
    let fd = io::stdout().as_fd().try_clone_to_owned()?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests;
