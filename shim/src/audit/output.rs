//! The shim's audit writer: one per shim process, appending every sandbox's chained lines to
//! the node's audit destination, which also becomes the shim's standard output.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use safehouse_audit::writer::{open_append, AuditWriter, WriterConfig, WriterHandle};
use safehouse_audit::AuditEvent;

use crate::error::{Result, ShimError};

/// The shim's audit writer, opened on the first Create (its config names the destination).
#[derive(Default)]
pub struct AuditOutput {
    inner: Mutex<Option<(AuditWriter, Option<WriterHandle>, PathBuf)>>,
    /// Whether the destination becomes the process's stdout (the shim's; not a test's).
    claims_stdout: bool,
}

impl AuditOutput {
    /// The shim's output: the destination, once open, is also the process's stdout.
    pub fn claiming_stdout() -> AuditOutput {
        AuditOutput {
            claims_stdout: true,
            ..AuditOutput::default()
        }
    }

    /// The writer, opening `destination` (and making it the shim's stdout) on first use.
    pub fn writer(&self, destination: &Path) -> Result<AuditWriter> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((w, _, path)) = guard.as_ref() {
            if path != destination {
                tracing::warn!(
                    "audit destination {} differs from this shim's {}; keeping the first",
                    destination.display(),
                    path.display()
                );
            }
            return Ok(w.clone());
        }
        if let Some(dir) = destination.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                ShimError::io(format!("create audit directory {}", dir.display()), e)
            })?;
        }
        let file = open_append(destination).map_err(|e| {
            ShimError::io(
                format!("open audit destination {}", destination.display()),
                e,
            )
        })?;
        // The audit stream is the shim's standard output (containerd started us with it
        // discarded); everything the shim logs goes to containerd's shim log instead.
        // SAFETY: dup2 onto fd 1 with a valid fd we own.
        if self.claims_stdout && unsafe { libc::dup2(file.as_raw_fd(), libc::STDOUT_FILENO) } < 0 {
            tracing::warn!(
                "cannot make {} the shim's stdout: {}",
                destination.display(),
                std::io::Error::last_os_error()
            );
        }
        let max_batch = if is_fifo(destination) {
            4096
        } else {
            64 * 1024
        };
        let (writer, handle) = AuditWriter::spawn(
            file,
            WriterConfig {
                max_batch_bytes: max_batch,
                ..WriterConfig::default()
            },
        )
        .map_err(|e| ShimError::io("start audit writer", e))?;
        *guard = Some((writer.clone(), Some(handle), destination.to_path_buf()));
        Ok(writer)
    }

    /// The open writer, if any (none before the first Create and after `finish`).
    fn open_writer(&self) -> Option<AuditWriter> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(w, _, _)| w.clone())
    }

    /// Submits an event if the writer is open (lifecycle events before the first Create have
    /// nowhere to go).
    pub fn submit(&self, event: AuditEvent) {
        if let Some(w) = self.open_writer() {
            if !w.submit(event) {
                tracing::debug!("audit queue full: event dropped and counted");
            }
        }
    }

    /// Seals and queues a sink's drain, waiting while the queue is full (see
    /// [`AuditWriter::submit_batch`]); dropped if the writer is not open.
    pub fn submit_batch(&self, events: &mut Vec<AuditEvent>, stopping: &dyn Fn() -> bool) {
        match self.open_writer() {
            Some(w) => {
                w.submit_batch(events, stopping);
            }
            None => events.clear(),
        }
    }

    /// Seals and queues a drain if the writer's queue has room now; false (events untouched)
    /// when it is full. With no writer open the drain is dropped and this is true.
    pub fn try_submit_batch(&self, events: &mut Vec<AuditEvent>) -> bool {
        match self.open_writer() {
            Some(w) => w.try_submit_batch(events),
            None => {
                events.clear();
                true
            }
        }
    }

    /// Flushes and stops the writer (shim shutdown): drops the shim's writer so the queue
    /// closes, then waits (bounded, off the runtime thread) for the last lines to be written.
    pub async fn finish(&self) {
        let taken = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((writer, Some(handle), _)) = taken else {
            return;
        };
        drop(writer);
        let joined = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::task::spawn_blocking(move || handle.finish()),
        )
        .await;
        match joined {
            Ok(Ok(stats)) => tracing::info!(
                lines = stats.lines_written,
                dropped = stats.queue_dropped,
                "audit writer finished"
            ),
            _ => tracing::warn!("audit writer did not finish within 2s"),
        }
    }
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}
