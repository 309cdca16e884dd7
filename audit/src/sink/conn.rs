//! One Sentry connection: the handshake, then packets until it closes.
//!
//! Every packet is untrusted. Malformed ones and unknown types are counted
//! and reported as aggregated `audit`/`dropped` events (at most one per kind
//! per report interval), never per packet, so a hostile peer cannot flood the
//! stream. The task yields regularly so a busy peer cannot starve others.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::socket::{peer_closed, recv_packet, send_packet};
use super::{SinkOptions, SinkStats};
use crate::decode::{decode_packet, Body};
use crate::event::{AuditEvent, DropSource};
use crate::lifecycle::SandboxContext;
use crate::wire::{handshake_bytes, parse_handshake, PROTOCOL_VERSION};

/// Packets handled between voluntary yields.
const YIELD_EVERY: u32 = 64;

pub(super) struct Connection {
    pub fd: AsyncFd<OwnedFd>,
    pub ctx: Arc<SandboxContext>,
    pub tx: mpsc::Sender<AuditEvent>,
    pub stats: Arc<SinkStats>,
    pub options: SinkOptions,
}

/// Counts not yet reported as events.
#[derive(Default)]
struct Pending {
    malformed: u64,
    unknown: u64,
    last_report: Option<Instant>,
}

/// Why the connection ended.
enum End {
    Closed,
    ReceiverGone,
}

impl Connection {
    pub async fn run(self) {
        let ok = tokio::time::timeout(self.options.handshake_timeout, self.handshake()).await;
        if !matches!(ok, Ok(Ok(()))) {
            self.stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sandbox = %self.ctx.sandbox_id, "trace sink handshake failed");
            return;
        }
        let _ = self.read_loop().await;
        self.stats
            .connections_closed
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| recv_packet(fd.get_ref(), buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    async fn handshake(&self) -> std::io::Result<()> {
        let mut buf = [0u8; 1024];
        let n = self.recv(&mut buf).await?;
        let packet = buf
            .get(..n)
            .ok_or_else(|| std::io::Error::other("oversized handshake"))?;
        parse_handshake(packet).map_err(std::io::Error::other)?;
        let reply = handshake_bytes(PROTOCOL_VERSION);
        loop {
            let mut guard = self.fd.ready(Interest::WRITABLE).await?;
            match guard.try_io(|fd| send_packet(fd.get_ref(), &reply)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    async fn read_loop(&self) -> End {
        let mut buf = vec![0u8; self.options.max_packet];
        let mut pending = Pending::default();
        let mut last_dropped: u32 = 0;
        let mut handled: u32 = 0;
        let end = loop {
            let n = match self.recv(&mut buf).await {
                Ok(0) if peer_closed(self.fd.get_ref()) => break End::Closed,
                Ok(n) => n,
                Err(_) => break End::Closed,
            };
            self.stats.packets.fetch_add(1, Ordering::Relaxed);
            if n > buf.len() {
                self.stats.oversized.fetch_add(1, Ordering::Relaxed);
                pending.malformed += 1;
            } else {
                match decode_packet(&buf[..n]) {
                    Ok(decoded) => {
                        let dropped = decoded.header.dropped_count;
                        if dropped != last_dropped {
                            let lost = u64::from(dropped.wrapping_sub(last_dropped));
                            last_dropped = dropped;
                            self.stats.sentry_dropped.fetch_add(lost, Ordering::Relaxed);
                            let ev = self.ctx.dropped(lost, DropSource::Sentry).message(format!(
                                "gVisor dropped {lost} trace points (sink socket full)"
                            ));
                            if self.tx.send(ev.build()).await.is_err() {
                                break End::ReceiverGone;
                            }
                        }
                        match decoded.body {
                            Body::Event(mut event) => {
                                self.ctx.stamp(&mut event);
                                self.stats.events.fetch_add(1, Ordering::Relaxed);
                                if self.tx.send(*event).await.is_err() {
                                    break End::ReceiverGone;
                                }
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
            if self.report(&mut pending, false).await.is_err() {
                break End::ReceiverGone;
            }
            handled += 1;
            if handled >= YIELD_EVERY {
                handled = 0;
                tokio::task::yield_now().await;
            }
        };
        if matches!(end, End::Closed) {
            let _ = self.report(&mut pending, true).await;
        }
        end
    }

    /// Emits aggregated drop events for malformed and unknown packets, at most
    /// once per report interval (or now, when `force`).
    async fn report(&self, pending: &mut Pending, force: bool) -> Result<(), ()> {
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
                self.tx.send(ev.build()).await.map_err(|_| ())?;
            }
        }
        Ok(())
    }
}
