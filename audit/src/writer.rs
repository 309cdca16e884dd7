//! The JSON Lines writer: producers seal events into their sandbox's chain and
//! queue whole lines; one writer thread appends them to a sink.
//!
//! - Sealing happens in the producer's thread, under the sandbox's chain lock,
//!   together with queueing the lines: a sandbox's lines reach the queue in seq
//!   order, and the sandboxes' sink threads seal in parallel. Only bytes cross
//!   threads, one buffer per drain, not one hand-off per event.
//! - The queue is bounded in bytes ([`WriterConfig::queue_bytes`]). A trace
//!   sink's batch ([`AuditWriter::submit_batch`]) waits for room, which pushes
//!   back onto the sandbox's socket, where gVisor counts what it drops. A single
//!   event ([`AuditWriter::submit`], the shim's lifecycle and policy events)
//!   never waits: over the bound it is dropped *before* sealing and counted per
//!   sandbox, so a drop never leaves a gap in a chain; the writer thread seals
//!   an `audit`/`dropped` event with the count as soon as the queue has room.
//! - Lines are written whole: each `writev(2)` carries one or more complete
//!   lines (at most [`WriterConfig::max_batch_bytes`]), so several shims can
//!   append to the same `O_APPEND` file without interleaving. The queued
//!   buffers are written where they are, not copied into a batch first, and
//!   carry their line count, so the writer never scans them.
//! - A failing sink (disk full, closed pipe) is retried with backoff; the
//!   queue absorbs the wait.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use std::time::Instant;

use crate::chain::Chain;
use crate::event::{Action, AuditEvent, Category, DropInfo, DropSource};
use crate::seal::merkle::Hash;
use crate::seal::{SealConfig, Sealer};
use crate::timestamp::Timestamp;

/// How the writer queues and batches.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Bytes of sealed lines the queue holds: over it, batches wait and single events are
    /// dropped (and counted).
    pub queue_bytes: usize,
    /// Largest single write(2); whole lines only. Use 4096 (PIPE_BUF) when
    /// several writers share one pipe or FIFO.
    pub max_batch_bytes: usize,
    /// Signed checkpoints with the node key (see `seal/mod.rs`); None: chains only.
    pub seal: Option<SealConfig>,
    /// Per-sandbox allowance of events and bytes (see `writer/budget.rs`;
    /// `BudgetConfig::default()` is the recommended one); None: unbounded.
    pub budget: Option<BudgetConfig>,
    /// Where lines go that could not be written when the writer had to stop, and where it
    /// finds those of earlier writers to write first (see `writer/spool.rs`); None: such
    /// lines are counted as lost.
    pub spool: Option<PathBuf>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_bytes: 16 * 1024 * 1024,
            max_batch_bytes: 64 * 1024,
            seal: None,
            budget: None,
            spool: None,
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
    /// Checkpoints written (with signing on).
    pub checkpoints: u64,
    /// Key epochs evolved by this writer.
    pub epochs: u64,
    /// Failed checkpoint attempts (retried after a second; the events stay pending).
    pub seal_errors: u64,
    /// Times a [`ReopeningFile`] destination was reopened (rotation).
    pub reopens: u64,
    /// Events cut by the sandboxes' budgets.
    pub budget_dropped: u64,
    /// Lines the writer could not write when it had to stop, kept in the spool.
    pub spooled_lines: u64,
    /// Lines neither written nor spooled (no spool, or the spool failed too; a line torn by a
    /// partial write).
    pub lost_lines: u64,
    /// Lines of earlier writers' spool files written at start.
    pub unspooled_lines: u64,
}

/// One sandbox's chain and the events dropped for it that no event reports yet.
struct Slot {
    chain: Chain,
    dropped: u64,
    budget: Option<Budget>,
    /// Cut by the budget, not reported yet.
    budget_dropped: u64,
    /// When the last budget report was sealed.
    budget_reported: Option<Instant>,
}

impl Slot {
    fn new(chain: Chain, budget: Option<&BudgetConfig>) -> Self {
        Self {
            chain,
            dropped: 0,
            budget: budget.map(|b| Budget::new(b, Instant::now())),
            budget_dropped: 0,
            budget_reported: None,
        }
    }
}

/// Budget cuts are reported at most this often per sandbox (and before every event
/// enforcement needs, and when the writer finishes).
const BUDGET_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Sealed lines of one sandbox, queued as one item.
struct Lines {
    buf: Vec<u8>,
    /// How many lines `buf` holds.
    count: u64,
    /// With signing on: the sandbox, and each line's seq and event hash (for checkpoints).
    sandbox: String,
    leaves: Vec<(u64, Hash)>,
    /// The lines end the sandbox's chain (its lifecycle `delete`): checkpoint right after.
    closes: bool,
}

impl Lines {
    fn new(buf: Vec<u8>) -> Self {
        Self {
            buf,
            count: 0,
            sandbox: String::new(),
            leaves: Vec::new(),
            closes: false,
        }
    }
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Lines>,
    bytes: usize,
    /// Every producer is gone: the writer ends once the queue is empty.
    closed: bool,
}

/// Written buffers kept for producers to fill again (no allocation per drain).
const SPARE_BUFFERS: usize = 8;
/// Larger buffers are freed instead of kept.
const SPARE_MAX_BYTES: usize = 1024 * 1024;

struct Shared {
    chains: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    queue: Mutex<Queue>,
    spare: Mutex<Vec<Vec<u8>>>,
    /// Signalled when lines are queued (or the last producer leaves).
    ready: Condvar,
    /// Signalled when written lines free room.
    room: Condvar,
    queue_bytes: usize,
    producers: AtomicUsize,
    drops_pending: AtomicBool,
    stopping: AtomicBool,
    lines_written: AtomicU64,
    queue_dropped: AtomicU64,
    write_errors: AtomicU64,
    partial_writes: AtomicU64,
    checkpoints: AtomicU64,
    epochs: AtomicU64,
    seal_errors: AtomicU64,
    /// Producers collect leaves for checkpoints.
    sealing: bool,
    /// With a [`ReopeningFile`] destination: its reopen request flag and counter.
    reopen: Option<(Arc<AtomicBool>, Arc<AtomicU64>)>,
    budget: Option<BudgetConfig>,
    budget_dropped: AtomicU64,
    budget_pending: AtomicBool,
    spooled_lines: AtomicU64,
    lost_lines: AtomicU64,
    unspooled_lines: AtomicU64,
    /// `finish_within` ran out of time: spool what is left and end.
    abandon: AtomicBool,
    /// Set by the writer thread when it ends.
    done: Mutex<bool>,
    done_cv: Condvar,
}

/// The producer side: cheap to clone; [`AuditWriter::submit`] never blocks.
pub struct AuditWriter {
    shared: Arc<Shared>,
}

/// The writer thread; [`WriterHandle::finish`] drains the queue and joins it.
pub struct WriterHandle {
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AuditWriter {
    /// Starts the writer thread over `sink` with fresh chains.
    pub fn spawn<W: Write + Send + 'static>(
        sink: W,
        config: WriterConfig,
    ) -> io::Result<(Self, WriterHandle)> {
        Self::spawn_with_chains(sink, config, Vec::new())
    }

    /// Starts the writer thread over a file that follows rotation: it is reopened when its
    /// path names another file (checked at most once per the file's interval) and after
    /// [`AuditWriter::reopen`].
    pub fn spawn_reopening(
        file: ReopeningFile,
        config: WriterConfig,
    ) -> io::Result<(Self, WriterHandle)> {
        let handles = (file.request_handle(), file.reopen_counter());
        Self::spawn_inner(file, config, Vec::new(), Some(handles))
    }

    /// Starts the writer thread, continuing the given chains (after a restart).
    pub fn spawn_with_chains<W: Write + Send + 'static>(
        sink: W,
        config: WriterConfig,
        chains: Vec<Chain>,
    ) -> io::Result<(Self, WriterHandle)> {
        Self::spawn_inner(sink, config, chains, None)
    }

    fn spawn_inner<W: Write + Send + 'static>(
        sink: W,
        config: WriterConfig,
        chains: Vec<Chain>,
        reopen: Option<(Arc<AtomicBool>, Arc<AtomicU64>)>,
    ) -> io::Result<(Self, WriterHandle)> {
        let chains = chains
            .into_iter()
            .map(|c| {
                let id = c.sandbox_id().to_owned();
                (
                    id,
                    Arc::new(Mutex::new(Slot::new(c, config.budget.as_ref()))),
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            chains: Mutex::new(chains),
            queue: Mutex::new(Queue::default()),
            spare: Mutex::new(Vec::new()),
            ready: Condvar::new(),
            room: Condvar::new(),
            queue_bytes: config.queue_bytes.max(1),
            producers: AtomicUsize::new(1),
            drops_pending: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            lines_written: AtomicU64::new(0),
            queue_dropped: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            partial_writes: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            epochs: AtomicU64::new(0),
            seal_errors: AtomicU64::new(0),
            sealing: config.seal.is_some(),
            reopen,
            budget: config.budget,
            budget_dropped: AtomicU64::new(0),
            budget_pending: AtomicBool::new(false),
            spooled_lines: AtomicU64::new(0),
            lost_lines: AtomicU64::new(0),
            unspooled_lines: AtomicU64::new(0),
            abandon: AtomicBool::new(false),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
        });
        let sealer = match config.seal {
            Some(seal) => Some(Sealer::open(seal).map_err(io::Error::other)?),
            None => None,
        };
        let mut worker = Worker {
            sink,
            shared: Arc::clone(&shared),
            max_batch: config.max_batch_bytes.max(1),
            sealer,
            seal_retry: None,
            incomplete: false,
            spool_dir: config.spool,
            spool: None,
            giving_up: false,
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || worker.run())?;
        Ok((
            Self {
                shared: Arc::clone(&shared),
            },
            WriterHandle {
                thread: Some(thread),
                shared,
            },
        ))
    }

    /// Seals and queues `event`; returns false (and counts a drop for its sandbox, reported
    /// later as an `audit`/`dropped` event) when the queue is full. Never blocks on the sink.
    pub fn submit(&self, event: AuditEvent) -> bool {
        let mut one = vec![event];
        if self.try_submit_batch(&mut one) {
            return true;
        }
        self.shared.count_drops(one);
        false
    }

    /// Seals and queues a batch (a trace sink's drain, in order), leaving `events` empty.
    /// Waits while the queue is full; gives up when `stopping()` turns true (or the writer
    /// is being torn down), and then drops the batch, counted. Returns the events queued.
    pub fn submit_batch(&self, events: &mut Vec<AuditEvent>, stopping: &dyn Fn() -> bool) -> usize {
        if events.is_empty() {
            return 0;
        }
        if !self.shared.wait_for_room(stopping) {
            self.shared.count_drops(events.drain(..));
            return 0;
        }
        self.seal_and_queue(events)
    }

    /// [`AuditWriter::submit_batch`] only if the queue has room now: false (and `events`
    /// untouched) when it is full. For a caller that must not wait (a kill waits on nothing).
    pub fn try_submit_batch(&self, events: &mut Vec<AuditEvent>) -> bool {
        if self.shared.queued() >= self.shared.queue_bytes {
            return false;
        }
        self.seal_and_queue(events);
        true
    }

    fn seal_and_queue(&self, events: &mut Vec<AuditEvent>) -> usize {
        let total = events.len();
        let mut rest = events.drain(..).peekable();
        while let Some(first) = rest.next() {
            // A run of one sandbox's events is sealed under one lock and queued as one item.
            let mut lines = Lines::new(self.shared.buffer());
            let slot = self.shared.slot(&first.sandbox_id);
            let mut guard = lock(&slot);
            if self.shared.sealing {
                lines.sandbox = guard.chain.sandbox_id().to_owned();
            }
            self.shared.seal_drop_report(&mut guard, &mut lines);
            self.shared
                .seal_budget_report(&mut guard, &mut lines, false);
            let now = Instant::now();
            let mut ev = first;
            loop {
                if self.shared.admit(&mut guard, &ev, now, &mut lines) {
                    let before = lines.buf.len();
                    seal_one(&mut guard.chain, &mut ev, &mut lines, self.shared.sealing);
                    if let Some(b) = &mut guard.budget {
                        b.charge_bytes(lines.buf.len() - before);
                    }
                }
                match rest.next_if(|next| next.sandbox_id == ev.sandbox_id) {
                    Some(next) => ev = next,
                    None => break,
                }
            }
            self.shared.push(lines);
        }
        total
    }

    /// The writer's counters so far.
    pub fn stats(&self) -> WriterStats {
        self.shared.stats()
    }

    /// Asks a [`ReopeningFile`] destination to look at its path before the next line and
    /// reopen it if it names another file (the shim calls this on SIGHUP). False when the
    /// destination is not a reopening file.
    pub fn reopen(&self) -> bool {
        match &self.shared.reopen {
            Some((request, _)) => {
                request.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }
}

/// Seals `event` into `out`; an event that cannot be sealed is logged and left out. With
/// `leaves`, also notes its seq and hash for the next checkpoint.
fn seal_one(chain: &mut Chain, event: &mut AuditEvent, out: &mut Lines, leaves: bool) {
    match chain.seal_into(event, &mut out.buf) {
        Ok(()) => {
            out.count += 1;
            if leaves {
                let mut hash = [0u8; 32];
                // The chain's hash is always 64 hex digits.
                let _ = hex::decode_to_slice(chain.last_hash(), &mut hash);
                out.leaves.push((chain.last_seq(), hash));
                out.closes |= event.action == Action::Delete
                    && event.container_id.as_deref() == Some(chain.sandbox_id());
            }
        }
        Err(e) => tracing::error!(error = %e, "audit event could not be sealed"),
    }
}

impl Clone for AuditWriter {
    fn clone(&self) -> Self {
        self.shared.producers.fetch_add(1, Ordering::SeqCst);
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        if self.shared.producers.fetch_sub(1, Ordering::SeqCst) == 1 {
            lock(&self.shared.queue).closed = true;
            self.shared.ready.notify_all();
        }
    }
}

impl Shared {
    fn stats(&self) -> WriterStats {
        WriterStats {
            lines_written: self.lines_written.load(Ordering::Relaxed),
            queue_dropped: self.queue_dropped.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            partial_writes: self.partial_writes.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            epochs: self.epochs.load(Ordering::Relaxed),
            seal_errors: self.seal_errors.load(Ordering::Relaxed),
            budget_dropped: self.budget_dropped.load(Ordering::Relaxed),
            spooled_lines: self.spooled_lines.load(Ordering::Relaxed),
            lost_lines: self.lost_lines.load(Ordering::Relaxed),
            unspooled_lines: self.unspooled_lines.load(Ordering::Relaxed),
            reopens: self
                .reopen
                .as_ref()
                .map_or(0, |(_, n)| n.load(Ordering::Relaxed)),
        }
    }

    /// The chain slot of `sandbox_id`, created on first use.
    fn slot(&self, sandbox_id: &str) -> Arc<Mutex<Slot>> {
        let mut chains = lock(&self.chains);
        if let Some(slot) = chains.get(sandbox_id) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(Mutex::new(Slot::new(
            Chain::new(sandbox_id),
            self.budget.as_ref(),
        )));
        chains.insert(sandbox_id.to_owned(), Arc::clone(&slot));
        slot
    }

    /// An empty buffer for sealed lines, recycled if one is spare.
    fn buffer(&self) -> Vec<u8> {
        lock(&self.spare)
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(64 * 1024))
    }

    /// Keeps a written buffer for reuse (a few, of a drain's size: not a single event's, not
    /// a flood's).
    fn recycle(&self, mut buf: Vec<u8>) {
        if !(16 * 1024..=SPARE_MAX_BYTES).contains(&buf.capacity()) {
            return;
        }
        buf.clear();
        let mut spare = lock(&self.spare);
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    }

    fn queued(&self) -> usize {
        lock(&self.queue).bytes
    }

    /// Counts `events` as dropped for their sandboxes, unsealed (so no chain has a gap); each
    /// sandbox's next seal, or the writer once there is room, reports the count.
    fn count_drops(&self, events: impl IntoIterator<Item = AuditEvent>) {
        for ev in events {
            lock(&self.slot(&ev.sandbox_id)).dropped += 1;
            self.queue_dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.drops_pending.store(true, Ordering::Release);
    }

    /// Seals the `audit`/`dropped` event for the slot's unreported drops, if any, into `out`.
    fn seal_drop_report(&self, slot: &mut Slot, out: &mut Lines) {
        let count = std::mem::take(&mut slot.dropped);
        if count == 0 {
            return;
        }
        let mut event = AuditEvent {
            action: Action::Dropped,
            category: Category::Audit,
            dropped: Some(DropInfo {
                count,
                source: DropSource::Queue,
            }),
            message: Some(format!("{count} events dropped: audit queue full")),
            sandbox_id: slot.chain.sandbox_id().to_owned(),
            time: Timestamp::now(),
            ..AuditEvent::default()
        };
        seal_one(&mut slot.chain, &mut event, out, self.sealing);
    }

    /// Whether the slot's budget lets `event` through; a cut is counted. Before an event that
    /// enforcement needs, the unreported cuts are reported (so the report precedes it).
    fn admit(&self, slot: &mut Slot, event: &AuditEvent, now: Instant, out: &mut Lines) -> bool {
        let Some(budget) = &mut slot.budget else {
            return true;
        };
        if !budget.admit(event, now) {
            slot.budget_dropped += 1;
            self.budget_dropped.fetch_add(1, Ordering::Relaxed);
            self.budget_pending.store(true, Ordering::Release);
            return false;
        }
        if is_protected(event) {
            self.seal_budget_report(slot, out, true);
        }
        true
    }

    /// Seals the `audit`/`dropped` event (source `budget`) for the slot's unreported cuts, if
    /// any and if the last report is a second old (or `force`).
    fn seal_budget_report(&self, slot: &mut Slot, out: &mut Lines, force: bool) {
        if slot.budget_dropped == 0
            || !force
                && slot
                    .budget_reported
                    .is_some_and(|t| t.elapsed() < BUDGET_REPORT_EVERY)
        {
            return;
        }
        let count = std::mem::take(&mut slot.budget_dropped);
        slot.budget_reported = Some(Instant::now());
        let mut event = AuditEvent {
            action: Action::Dropped,
            category: Category::Audit,
            dropped: Some(DropInfo {
                count,
                source: DropSource::Budget,
            }),
            message: Some(format!(
                "{count} events cut: over the sandbox's audit budget"
            )),
            sandbox_id: slot.chain.sandbox_id().to_owned(),
            time: Timestamp::now(),
            ..AuditEvent::default()
        };
        seal_one(&mut slot.chain, &mut event, out, self.sealing);
    }

    /// Queues sealed lines (called with their sandbox's slot locked, so in seq order).
    fn push(&self, lines: Lines) {
        if lines.buf.is_empty() {
            return;
        }
        let mut q = lock(&self.queue);
        q.bytes += lines.buf.len();
        q.items.push_back(lines);
        drop(q);
        self.ready.notify_one();
    }

    /// Waits until the queue is under its bound; false if it gave up (`stopping`).
    fn wait_for_room(&self, stopping: &dyn Fn() -> bool) -> bool {
        let mut q = lock(&self.queue);
        while q.bytes >= self.queue_bytes {
            if stopping() || self.stopping.load(Ordering::Acquire) {
                return false;
            }
            q = self
                .room
                .wait_timeout(q, Duration::from_millis(50))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    /// Seals drop reports for every sandbox with unreported drops, if there is room now
    /// (budget cuts once their report is due, or all of them when `finishing`).
    fn report_drops(&self, finishing: bool) {
        if self.queued() >= self.queue_bytes {
            return;
        }
        let queue = self.drops_pending.swap(false, Ordering::AcqRel);
        let budget = self.budget_pending.swap(false, Ordering::AcqRel);
        if !queue && !budget {
            return;
        }
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.chains).values().cloned().collect();
        for slot in slots {
            let mut slot = lock(&slot);
            let mut lines = Lines::new(Vec::new());
            if self.sealing {
                lines.sandbox = slot.chain.sandbox_id().to_owned();
            }
            self.seal_drop_report(&mut slot, &mut lines);
            self.seal_budget_report(&mut slot, &mut lines, finishing);
            if slot.budget_dropped > 0 {
                self.budget_pending.store(true, Ordering::Release);
            }
            self.push(lines);
        }
    }
}

impl WriterHandle {
    /// [`WriterHandle::finish`] within a time budget (the shim's delete or shutdown): waits up
    /// to `timeout` for the queue to be written, then stops retrying a failing destination,
    /// puts what is left in the spool (or counts it lost), and ends the writer thread even if
    /// producers remain. Never waits for a full disk to free.
    pub fn finish_within(mut self, timeout: Duration) -> WriterStats {
        let deadline = Instant::now() + timeout;
        {
            let mut done = lock(&self.shared.done);
            while !*done {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                done = self
                    .shared
                    .done_cv
                    .wait_timeout(done, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
        self.shared.abandon.store(true, Ordering::Release);
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.room.notify_all();
        self.shared.ready.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Whatever producers queued after the thread ended was not written anywhere.
        let stranded: u64 = lock(&self.shared.queue).items.iter().map(|i| i.count).sum();
        self.shared
            .lost_lines
            .fetch_add(stranded, Ordering::Relaxed);
        self.shared.stats()
    }

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
        self.shared.room.notify_all();
    }
}

struct Worker<W> {
    sink: W,
    shared: Arc<Shared>,
    max_batch: usize,
    sealer: Option<Sealer>,
    /// After a failed checkpoint: not before this.
    seal_retry: Option<Instant>,
    /// A write gave up (teardown): lines are missing, so no more checkpoints.
    incomplete: bool,
    spool_dir: Option<PathBuf>,
    spool: Option<File>,
    /// A write gave up: every later line goes straight to the spool.
    giving_up: bool,
}

/// Most buffers handed to one `writev(2)` (Linux's `IOV_MAX`).
const MAX_IOV: usize = 1024;

impl<W: Write> Worker<W> {
    fn run(&mut self) {
        self.unspool();
        self.run_queue();
        *lock(&self.shared.done) = true;
        self.shared.done_cv.notify_all();
    }

    fn run_queue(&mut self) {
        let mut taken = VecDeque::new();
        loop {
            let closed = {
                let mut q = lock(&self.shared.queue);
                if q.items.is_empty() && !q.closed {
                    q = self
                        .shared
                        .ready
                        .wait_timeout(q, Duration::from_millis(100))
                        .map(|(g, _)| g)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
                std::mem::swap(&mut taken, &mut q.items);
                q.closed
            };
            self.write_items(&taken);
            self.note_leaves(&taken);
            let mut bytes = 0;
            for item in taken.drain(..) {
                bytes += item.buf.len();
                self.shared.recycle(item.buf);
            }
            if bytes > 0 {
                lock(&self.shared.queue).bytes -= bytes;
                self.shared.room.notify_all();
            }
            self.shared.report_drops(closed);
            let empty = lock(&self.shared.queue).items.is_empty();
            let end = empty && (closed || self.shared.abandon.load(Ordering::Acquire));
            self.maybe_checkpoint(end);
            if end {
                break;
            }
        }
    }

    /// Hands the written lines' leaves to the sealer; a sandbox's end makes a checkpoint due.
    fn note_leaves(&mut self, items: &VecDeque<Lines>) {
        if self.incomplete {
            self.sealer = None;
        }
        let Some(sealer) = &mut self.sealer else {
            return;
        };
        for item in items {
            for (seq, hash) in &item.leaves {
                sealer.add(&item.sandbox, *seq, hash);
            }
            if item.closes {
                self.seal_retry = None;
                sealer.force();
            }
        }
    }

    /// Writes a checkpoint when one is due (or `now`), unless a failure asks to wait.
    fn maybe_checkpoint(&mut self, now: bool) {
        let Some(sealer) = &mut self.sealer else {
            return;
        };
        if !(now && sealer.has_pending() || sealer.due()) {
            return;
        }
        if !now && self.seal_retry.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match sealer.checkpoint(&mut self.sink) {
            Ok(stats) => {
                self.seal_retry = None;
                self.shared
                    .checkpoints
                    .fetch_add(stats.checkpoints, Ordering::Relaxed);
                self.shared
                    .epochs
                    .fetch_add(stats.epochs, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared.seal_errors.fetch_add(1, Ordering::Relaxed);
                self.seal_retry = Some(Instant::now() + Duration::from_secs(1));
                tracing::warn!(error = %e, "audit checkpoint not written; retrying");
            }
        }
    }

    /// Writes the items' lines where they lie: runs of whole lines, at most `max_batch`
    /// bytes per `writev(2)` (a line longer than that goes alone).
    fn write_items(&mut self, items: &VecDeque<Lines>) {
        let mut group: Vec<IoSlice<'_>> = Vec::new();
        let (mut bytes, mut lines) = (0, 0);
        for item in items {
            let mut data = &item.buf[..];
            while !data.is_empty() {
                let room = self.max_batch.saturating_sub(bytes);
                let cut = if data.len() <= room {
                    data.len()
                } else {
                    // The longest run of whole lines that fits; none fits an empty group only
                    // when the first line alone is longer than a batch.
                    match data[..room].iter().rposition(|&b| b == b'\n') {
                        Some(i) => i + 1,
                        None if group.is_empty() => data
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(data.len(), |i| i + 1),
                        None => 0,
                    }
                };
                if cut > 0 {
                    group.push(IoSlice::new(&data[..cut]));
                    bytes += cut;
                    data = &data[cut..];
                }
                if cut == 0 || group.len() == MAX_IOV {
                    self.write_group(&mut group, bytes, lines);
                    (bytes, lines) = (0, 0);
                }
            }
            // Counted with the write that carries the item's last line.
            lines += item.count;
        }
        self.write_group(&mut group, bytes, lines);
    }

    /// Writes `group` (whole lines, `bytes` in all, completing `lines` lines) with as few
    /// `writev(2)` calls as the sink allows, then empties it.
    fn write_group(&mut self, group: &mut Vec<IoSlice<'_>>, bytes: usize, lines: u64) {
        if self.giving_up {
            let data: Vec<u8> = group.iter().flat_map(|s| s.iter().copied()).collect();
            self.spool_lines(data, false);
            group.clear();
            return;
        }
        let mut rest = &mut group[..];
        let mut written = 0;
        let mut mid_line = false;
        let mut backoff = Duration::from_millis(10);
        while written < bytes {
            match self.sink.write_vectored(rest) {
                Ok(0) => self.failed(&mut backoff, "sink accepted no bytes"),
                Ok(n) => {
                    written += n;
                    mid_line = !ends_a_line(rest, n);
                    if written < bytes && mid_line {
                        self.shared.partial_writes.fetch_add(1, Ordering::Relaxed);
                    }
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.failed(&mut backoff, &e.to_string()),
            }
            if self.shared.stopping.load(Ordering::Acquire) && written < bytes {
                self.incomplete = true;
                self.giving_up = true;
                let data: Vec<u8> = rest.iter().flat_map(|s| s.iter().copied()).collect();
                self.spool_lines(data, mid_line);
                break;
            }
        }
        if bytes > 0 && written == bytes {
            self.shared
                .lines_written
                .fetch_add(lines, Ordering::Relaxed);
            let _ = self.sink.flush();
        }
        group.clear();
    }

    /// Keeps unwritten whole lines in the spool (or counts them lost). With `torn`, `data`
    /// starts with the rest of a line the sink took only in part: that line is lost.
    fn spool_lines(&mut self, mut data: Vec<u8>, torn: bool) {
        if torn {
            let cut = data
                .iter()
                .position(|&b| b == b'\n')
                .map_or(data.len(), |i| i + 1);
            data.drain(..cut);
            self.shared.lost_lines.fetch_add(1, Ordering::Relaxed);
        }
        let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
        if lines == 0 {
            return;
        }
        if self.spool.is_none() {
            if let Some(dir) = &self.spool_dir {
                match spool::create(dir) {
                    Ok((_, f)) => self.spool = Some(f),
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "cannot create an audit spool file")
                    }
                }
            }
        }
        let kept = match &mut self.spool {
            Some(f) => spool::append(f, &data).is_ok(),
            None => false,
        };
        let counter = if kept {
            &self.shared.spooled_lines
        } else {
            tracing::error!(
                lines,
                "audit lines lost: destination unwritable and no spool"
            );
            &self.shared.lost_lines
        };
        counter.fetch_add(lines, Ordering::Relaxed);
    }

    /// Writes earlier writers' spool files first (and seals their events at the next
    /// checkpoint); a file is removed once written. Stops at the first failure, leaving the
    /// rest for the next writer.
    fn unspool(&mut self) {
        let Some(dir) = self.spool_dir.clone() else {
            return;
        };
        let files = match spool::pending(&dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read the audit spool");
                return;
            }
        };
        for path in files {
            let data = match spool::read_lines(&path) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read a spool file");
                    return;
                }
            };
            if let Err(e) = self.sink.write_all(&data).and_then(|_| self.sink.flush()) {
                tracing::warn!(file = %path.display(), error = %e, "spooled audit lines not written yet");
                return;
            }
            let mut lines = 0;
            for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                lines += 1;
                if let Some(sealer) = &mut self.sealer {
                    add_spooled_leaf(sealer, line);
                }
            }
            self.shared
                .unspooled_lines
                .fetch_add(lines, Ordering::Relaxed);
            self.shared
                .lines_written
                .fetch_add(lines, Ordering::Relaxed);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(file = %path.display(), error = %e, "written spool file not removed: it will be written again");
            }
        }
    }

    fn failed(&self, backoff: &mut Duration, why: &str) {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = why, "audit sink write failed; retrying");
        if self.shared.stopping.load(Ordering::Acquire) {
            return;
        }
        std::thread::sleep(*backoff);
        *backoff = (*backoff * 2).min(Duration::from_secs(1));
    }
}

/// Adds a spooled event line to the next checkpoint (a sandbox's end makes it due).
fn add_spooled_leaf(sealer: &mut Sealer, line: &[u8]) {
    if crate::seal::is_seal_line(line) {
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
        return;
    };
    let (Some(sandbox), Some(seq), Some(hash_hex)) = (
        v["sandbox_id"].as_str(),
        v["seq"].as_u64(),
        v["hash"].as_str(),
    ) else {
        return;
    };
    let mut hash = [0u8; 32];
    if hex::decode_to_slice(hash_hex, &mut hash).is_err() {
        return;
    }
    sealer.add(sandbox, seq, &hash);
    if v["action"] == "delete" && v["container_id"].as_str() == Some(sandbox) {
        sealer.force();
    }
}

/// Whether the first `n` bytes of `slices` end with a newline (a short write that stopped
/// between lines).
fn ends_a_line(slices: &[IoSlice<'_>], mut n: usize) -> bool {
    for s in slices {
        if n <= s.len() {
            return n > 0 && s[n - 1] == b'\n';
        }
        n -= s.len();
    }
    false
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

mod budget;
mod file;
pub mod spool;
pub use budget::{is_protected, Budget, BudgetConfig};
pub use file::{OnReopen, ReopeningFile};

#[cfg(test)]
mod tests;
