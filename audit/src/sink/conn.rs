//! One Sentry connection: the handshake, then packets until it closes.
//!
//! Each connection is read by a thread of its own with plain blocking calls, not by a task on
//! the shim's runtime, because of what waking up costs the sandbox. The Sentry writes one
//! packet per trace point from inside the syscall it reports; a reader parked in `epoll_wait`
//! (tokio's reactor) is woken by every one of them, and on a node with few cores those wake-ups
//! are paid by the sandbox: an `openat` storm ran 2-3x slower with a per-packet reader. So the
//! reader drains the socket, hands the batch on, and then *sleeps* (up to
//! [`SinkOptions::batch_interval`], less for a fast stream: [`next_pause`]) instead of waiting
//! on the socket: packets queue in the socket meanwhile without waking anyone. It sleeps only
//! while the stream is busy: when the last drain that found packets came less than one
//! interval earlier. After
//! a drain that follows a quiet spell, or one that found nothing, it blocks in `poll` again,
//! so a packet of a slow stream (an exec among few events, what the `tools` check waits for)
//! is read at once, and the wake-ups that costs are at most one per interval more than a
//! busy stream's; in a busy stream the wait adds at most one interval to a packet.
//!
//! Every packet is untrusted. Malformed ones and unknown types are counted and reported as
//! aggregated `audit`/`dropped` events (at most one per kind per report interval), never per
//! packet, so a hostile peer cannot flood the stream; each peer has its own thread, so a busy
//! or stuck one cannot stall another.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::socket::{peer_closed, ready_now, recv_packet, send_packet};
use super::{Deliver, SinkOptions, SinkStats};
use crate::decode::{decode_packet, Body};
use crate::event::{AuditEvent, DropSource};
use crate::lifecycle::SandboxContext;
use crate::wire::{handshake_bytes, parse_handshake, DropCounter, PROTOCOL_VERSION};

/// Events handed on at once at most (bounds the memory of one drain).
const MAX_BATCH: usize = 256;

pub(super) struct Connection {
    pub fd: OwnedFd,
    /// The read end of the sink's stop pipe: readable or hung up once the sink is dropped.
    pub stop: Arc<OwnedFd>,
    pub ctx: Arc<SandboxContext>,
    pub deliver: Arc<dyn Deliver>,
    pub stats: Arc<SinkStats>,
    pub options: SinkOptions,
    /// Live connections of the sink; this one's share is given back when it ends.
    pub live: Arc<AtomicUsize>,
}

/// Counts not yet reported as events.
#[derive(Default)]
struct Pending {
    malformed: u64,
    unknown: u64,
    last_report: Option<Instant>,
}

/// What a wait ended on.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Readable,
    Stop,
    Timeout,
}

/// Why reading ended.
enum End {
    Closed,
    Stopped,
    ReceiverGone,
}

/// The pause before the next drain: the last pause scaled so that, at the rate the last
/// drain saw, the next one finds about `target` packets ([`SinkOptions::batch_target`]);
/// between a tenth of the batching interval `max` and all of it.
pub(super) fn next_pause(last: Duration, got: usize, max: Duration, target: usize) -> Duration {
    let min = max / 10;
    let target = target.max(1) as u128;
    let scaled = last.as_nanos() * target / got.max(1) as u128;
    Duration::from_nanos(scaled.min(max.as_nanos()) as u64).max(min)
}

impl Connection {
    /// Serves the connection on a thread of its own.
    pub fn spawn(self) -> io::Result<()> {
        let live = Arc::clone(&self.live);
        live.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("trace-sink".into())
            .spawn(move || self.run());
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::SeqCst);
        }
        spawned.map(|_| ())
    }

    fn run(self) {
        if let Err(e) = self.handshake() {
            self.stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sandbox = %self.ctx.sandbox_id, "trace sink handshake failed: {e}");
        } else if matches!(self.read_loop(), End::Closed) {
            self.stats
                .connections_closed
                .fetch_add(1, Ordering::Relaxed);
        }
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// Blocks until the socket is readable (or hung up), the sink stops, or `timeout` passes.
    fn wait(&self, timeout: Option<Duration>) -> Wake {
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        let mut fds = [
            libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: two valid pollfds over descriptors this connection keeps open.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Wake::Stop;
            }
            if fds[1].revents != 0 {
                return Wake::Stop;
            }
            return if n == 0 {
                Wake::Timeout
            } else {
                Wake::Readable
            };
        }
    }

    /// True once the sink is dropped (the stop pipe hung up), or if that cannot be told.
    fn stopping(&self) -> bool {
        ready_now(&self.stop, libc::POLLIN).is_none_or(|r| r != 0)
    }

    fn handshake(&self) -> Result<(), String> {
        let deadline = Instant::now() + self.options.handshake_timeout;
        let mut buf = [0u8; 1024];
        let n = loop {
            match recv_packet(&self.fd, &mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait(Some(left)) {
                Wake::Readable if !left.is_zero() => {}
                Wake::Stop => return Err("sink stopped".into()),
                _ => {
                    return Err(format!(
                        "no handshake within {:?}",
                        self.options.handshake_timeout
                    ))
                }
            }
        };
        let packet = buf.get(..n).ok_or("oversized handshake")?;
        parse_handshake(packet).map_err(|e| e.to_string())?;
        send_packet(&self.fd, &handshake_bytes(PROTOCOL_VERSION))
            .map(|_| ())
            .map_err(|e| format!("cannot answer the handshake: {e}"))
    }

    /// The batching interval: the sink's, or less when the destination asks for less.
    fn interval(&self) -> Duration {
        let own = self.options.batch_interval;
        self.deliver
            .pause_limit()
            .map_or(own, |limit| limit.min(own))
    }

    fn read_loop(&self) -> End {
        let mut buf = vec![0u8; self.options.max_packet];
        let mut pending = Pending::default();
        let mut sentry_drops = DropCounter::default();
        let mut batch: Vec<AuditEvent> = Vec::with_capacity(MAX_BATCH);
        let mut pause = self.options.batch_interval;
        let mut last_drain: Option<Instant> = None;
        loop {
            // Drain everything queued, handing events on in bounded batches.
            let drain_started = Instant::now();
            let interval = self.interval();
            let busy = last_drain.is_some_and(|t| drain_started.duration_since(t) < interval);
            let mut got = 0usize;
            let closed = loop {
                let n = match recv_packet(&self.fd, &mut buf) {
                    Ok(0) if peer_closed(&self.fd) => break true,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break true,
                };
                got += 1;
                self.handle(&buf, n, &mut batch, &mut pending, &mut sentry_drops);
                if batch.len() >= MAX_BATCH && self.hand_on(&mut batch).is_err() {
                    return End::ReceiverGone;
                }
            };
            if self.hand_on(&mut batch).is_err() || self.report(&mut pending, closed).is_err() {
                return End::ReceiverGone;
            }
            if closed {
                return End::Closed;
            }
            if got > 0 {
                last_drain = Some(drain_started);
            }
            if got > 0 && busy {
                // Busy: let packets gather in the socket instead of being woken by each.
                pause = next_pause(pause, got, interval, self.options.batch_target);
                std::thread::sleep(pause);
                if self.stopping() {
                    return End::Stopped;
                }
                continue;
            }
            // Quiet. Counts waiting for their report interval are reported when it ends.
            let idle =
                (pending.malformed + pending.unknown > 0).then_some(self.options.report_interval);
            if self.wait(idle) == Wake::Stop {
                return End::Stopped;
            }
        }
    }

    /// Decodes one packet of length `n` from `buf` into `batch` (or the counters).
    fn handle(
        &self,
        buf: &[u8],
        n: usize,
        batch: &mut Vec<AuditEvent>,
        pending: &mut Pending,
        sentry_drops: &mut DropCounter,
    ) {
        self.stats.packets.fetch_add(1, Ordering::Relaxed);
        let Some(packet) = buf.get(..n) else {
            self.stats.oversized.fetch_add(1, Ordering::Relaxed);
            pending.malformed += 1;
            return;
        };
        match decode_packet(packet) {
            Ok(decoded) => {
                let lost = sentry_drops.observe(decoded.header.dropped_count);
                if lost > 0 {
                    self.stats.sentry_dropped.fetch_add(lost, Ordering::Relaxed);
                    let ev = self.ctx.dropped(lost, DropSource::Sentry).message(format!(
                        "gVisor dropped {lost} trace points (sink socket full)"
                    ));
                    batch.push(ev.build());
                }
                match decoded.body {
                    Body::Event(mut event) => {
                        self.ctx.stamp(&mut event);
                        self.stats.events.fetch_add(1, Ordering::Relaxed);
                        batch.push(event);
                    }
                    Body::Unknown => {
                        self.stats.unknown_types.fetch_add(1, Ordering::Relaxed);
                        pending.unknown += 1;
                    }
                }
            }
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "malformed trace packet skipped");
                pending.malformed += 1;
            }
        }
    }

    /// Hands the batch on, waiting for room (a full queue pushes back onto the socket).
    fn hand_on(&self, batch: &mut Vec<AuditEvent>) -> Result<(), ()> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = self.deliver.deliver(batch, &|| self.stopping());
        batch.clear();
        result.map_err(|_| ())
    }

    /// Emits aggregated drop events for malformed and unknown packets, at most
    /// once per report interval (or now, when `force`).
    fn report(&self, pending: &mut Pending, force: bool) -> Result<(), ()> {
        if pending.malformed == 0 && pending.unknown == 0 {
            return Ok(());
        }
        let due = pending
            .last_report
            .is_none_or(|t| t.elapsed() >= self.options.report_interval);
        if !force && !due {
            return Ok(());
        }
        pending.last_report = Some(Instant::now());
        for (count, source, what) in [
            (
                std::mem::take(&mut pending.malformed),
                DropSource::Malformed,
                "malformed trace packets skipped",
            ),
            (
                std::mem::take(&mut pending.unknown),
                DropSource::UnknownType,
                "trace packets of unknown message types skipped",
            ),
        ] {
            if count > 0 {
                let ev = self
                    .ctx
                    .dropped(count, source)
                    .message(format!("{count} {what}"));
                self.hand_on(&mut vec![ev.build()])?;
            }
        }
        Ok(())
    }
}
