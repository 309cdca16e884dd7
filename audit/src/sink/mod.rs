//! The per-sandbox `remote` sink gVisor's Sentry connects to.
//!
//! [`TraceSink::bind`] listens on a SOCK_SEQPACKET unix socket (one per
//! sandbox, in the shim's state dir); [`TraceSink::spawn`] runs a tokio task
//! that accepts the Sentry's connection(s). Each connection is read by a
//! thread of its own that answers the handshake, drains the socket in batches
//! (see `conn` for why it sleeps between drains instead of waiting on the
//! socket), decodes every packet into [`AuditEvent`]s stamped with the
//! sandbox's ids, pod and policy, and hands each drain to a [`Deliver`] on
//! that same thread: the shim's checks the policy and seals the batch into the
//! writer's queue, so a busy stream costs one hand-off per drain, not one per
//! event. A slow [`Deliver`] pushes back onto the socket, where gVisor's
//! retries and `dropped_count` take over (reported as `audit`/`dropped`).
//!
//! Bind before `runsc create`: runsc connects and handshakes synchronously
//! while creating the sandbox.

mod conn;
mod socket;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::event::AuditEvent;
use crate::lifecycle::SandboxContext;

/// The receiver is gone: the connection stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Where a sink's reader threads hand the events of each drain.
pub trait Deliver: Send + Sync + 'static {
    /// Takes one drain's events, in the order their packets arrived, leaving `batch` empty.
    /// Runs on the connection's reader thread and may block to push back; it should give up
    /// waiting once `stopping()` is true (the sink is being dropped).
    fn deliver(
        &self,
        batch: &mut Vec<AuditEvent>,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), Closed>;

    /// The longest the reader may let a busy stream's packets gather between drains, when the
    /// destination needs less than [`SinkOptions::batch_interval`]: one that acts on events
    /// (the `process.tools` check) wants an exec seen soon even in a flood. Asked before
    /// every pause.
    fn pause_limit(&self) -> Option<std::time::Duration> {
        None
    }
}

/// A shared destination (the caller keeps a handle, e.g. to read its counters).
impl<D: Deliver> Deliver for Arc<D> {
    fn deliver(
        &self,
        batch: &mut Vec<AuditEvent>,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), Closed> {
        (**self).deliver(batch, stopping)
    }

    fn pause_limit(&self) -> Option<std::time::Duration> {
        (**self).pause_limit()
    }
}

/// A channel as the destination (tests, tools): one blocking send per event.
impl Deliver for mpsc::Sender<AuditEvent> {
    fn deliver(
        &self,
        batch: &mut Vec<AuditEvent>,
        _stopping: &dyn Fn() -> bool,
    ) -> Result<(), Closed> {
        for ev in batch.drain(..) {
            self.blocking_send(ev).map_err(|_| Closed)?;
        }
        Ok(())
    }
}

/// The writer as the destination: the batch is sealed and queued, waiting for room.
impl Deliver for crate::writer::AuditWriter {
    fn deliver(
        &self,
        batch: &mut Vec<AuditEvent>,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), Closed> {
        self.submit_batch(batch, stopping);
        Ok(())
    }
}

/// Limits of one sink.
#[derive(Clone, Debug)]
pub struct SinkOptions {
    /// Largest packet accepted; larger ones are counted and skipped.
    pub max_packet: usize,
    /// Concurrent connections served; more are closed at once.
    pub max_connections: usize,
    /// Time a peer has to send its handshake.
    pub handshake_timeout: Duration,
    /// Least time between two reports of malformed/unknown packets.
    pub report_interval: Duration,
    /// While packets keep coming, the longest the reader lets them gather in the socket between
    /// two drains (the most a busy stream's events are delayed). Zero reads each at once.
    pub batch_interval: Duration,
    /// Packets a drain aims at: a faster stream gets shorter pauses (down to a tenth of
    /// `batch_interval`), so the Sentry's socket, which holds about 200 packets, never fills.
    pub batch_target: usize,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            max_packet: 256 * 1024,
            max_connections: 4,
            handshake_timeout: Duration::from_secs(5),
            report_interval: Duration::from_secs(1),
            batch_interval: Duration::from_millis(3),
            batch_target: 64,
        }
    }
}

/// Longest socket path the kernel (and runsc's connect) accepts, in bytes.
pub const MAX_SOCKET_PATH: usize = 107;

/// A short socket path for `sandbox_id` under `dir`: containerd's per-task
/// state dirs (`.../k8s.io/<64-hex id>/`) are too long for a unix socket.
pub fn short_socket_path(dir: &Path, sandbox_id: &str) -> PathBuf {
    let digest = crate::chain::sha256_hex(sandbox_id.as_bytes());
    dir.join(format!("{}.sock", &digest[..16]))
}

/// The trace socket of sandbox `sandbox_id` in containerd namespace `namespace`, under `dir`.
/// Container ids are unique only within a namespace (two namespaces, or two containerds, may
/// run a sandbox of the same id at once), so the name is made from both.
pub fn sandbox_socket_path(dir: &Path, namespace: &str, sandbox_id: &str) -> PathBuf {
    short_socket_path(dir, &format!("{namespace}/{sandbox_id}"))
}

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The path does not fit in a `sockaddr_un`.
    #[error("trace sink socket path {path} is {len} bytes; at most {MAX_SOCKET_PATH} fit (use short_socket_path)")]
    PathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The socket could not be created, bound or registered.
    #[error("trace sink socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Counters of one sink (all connections).
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections closed by the peer.
    pub connections_closed: AtomicU64,
    /// Connections refused over `max_connections`.
    pub connections_refused: AtomicU64,
    /// Peers that failed the handshake.
    pub handshake_failures: AtomicU64,
    /// Packets received.
    pub packets: AtomicU64,
    /// Events decoded and sent.
    pub events: AtomicU64,
    /// Packets that failed to decode.
    pub malformed: AtomicU64,
    /// Packets larger than `max_packet`.
    pub oversized: AtomicU64,
    /// Packets of unknown message types.
    pub unknown_types: AtomicU64,
    /// Points gVisor reported as dropped.
    pub sentry_dropped: AtomicU64,
}

/// A bound, listening sink that is not yet accepting.
pub struct TraceSink {
    path: PathBuf,
    listener: AsyncFd<OwnedFd>,
    options: SinkOptions,
}

/// A running sink. Dropping it stops the sink and removes the socket file.
pub struct SinkHandle {
    path: PathBuf,
    task: JoinHandle<()>,
    stats: Arc<SinkStats>,
    /// The write end of the stop pipe: closing it (on drop) ends every connection's reader.
    _stop: Option<OwnedFd>,
    live: Arc<AtomicUsize>,
}

impl TraceSink {
    /// Listens at `path` (must be called inside a tokio runtime).
    pub fn bind(path: &Path, options: SinkOptions) -> Result<Self, SinkError> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(SinkError::PathTooLong {
                path: path.to_owned(),
                len,
            });
        }
        let err = |source| SinkError::Socket {
            path: path.to_owned(),
            source,
        };
        let fd = socket::listen_seqpacket(path).map_err(err)?;
        let listener = socket::register(fd, Interest::READABLE).map_err(err)?;
        Ok(Self {
            path: path.to_owned(),
            listener,
            options,
        })
    }

    /// The socket path (the `endpoint` for the trace session).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts accepting; decoded events of this sandbox go to `events`, a drain at a time.
    pub fn spawn(self, ctx: SandboxContext, events: impl Deliver) -> SinkHandle {
        let events: Arc<dyn Deliver> = Arc::new(events);
        let stats = Arc::new(SinkStats::default());
        let live = Arc::new(AtomicUsize::new(0));
        let path = self.path.clone();
        // Readers learn that the sink is gone from the pipe's read end hanging up. Without a
        // pipe (descriptors exhausted) the sink accepts nothing: no reader it could not stop.
        let (stop_rx, stop_tx) = match nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK) {
            Ok((r, w)) => (Some(Arc::new(r)), Some(w)),
            Err(e) => {
                tracing::error!(error = %e, "trace sink: no stop pipe; accepting nothing");
                (None, None)
            }
        };
        let task = tokio::spawn(accept_loop(
            self,
            Arc::new(ctx),
            events,
            Arc::clone(&stats),
            stop_rx,
            Arc::clone(&live),
        ));
        SinkHandle {
            path,
            task,
            stats,
            _stop: stop_tx,
            live,
        }
    }
}

impl SinkHandle {
    /// The sink's counters.
    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections being read now.
    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(
    sink: TraceSink,
    ctx: Arc<SandboxContext>,
    events: Arc<dyn Deliver>,
    stats: Arc<SinkStats>,
    stop: Option<Arc<OwnedFd>>,
    live: Arc<AtomicUsize>,
) {
    let Some(stop) = stop else { return };
    loop {
        let accepted = match sink.listener.readable().await {
            Ok(mut g) => match g.try_io(|fd| socket::accept(fd.get_ref())) {
                Ok(result) => result,
                Err(_would_block) => continue,
            },
            Err(e) => {
                tracing::error!(error = %e, "trace sink listener failed");
                return;
            }
        };
        let fd = match accepted {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(error = %e, "trace sink accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if live.load(Ordering::SeqCst) >= sink.options.max_connections {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let spawned = conn::Connection {
            fd,
            stop: Arc::clone(&stop),
            ctx: Arc::clone(&ctx),
            deliver: Arc::clone(&events),
            stats: Arc::clone(&stats),
            options: sink.options.clone(),
            live: Arc::clone(&live),
        }
        .spawn();
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "trace sink: no thread for a connection");
        }
    }
}

#[cfg(test)]
mod tests;
