//! The shim's audit writer: one per shim process, appending every sandbox's chained lines to
//! the node's audit destination, which also becomes the shim's standard output.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::time::Duration;

use safehouse_audit::seal::SealConfig;
use safehouse_audit::writer::{
    AuditWriter, BudgetConfig, ReopeningFile, WriterConfig, WriterHandle,
};
use safehouse_audit::AuditEvent;
use safehouse_runsc_config::AuditSection;

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

    /// The writer, opening the section's destination (and making it the shim's stdout) on
    /// first use: it follows rename rotation, signs checkpoints when the node key exists,
    /// bounds each sandbox by the budget, and spools what it could not write at exit.
    pub fn writer(&self, section: &AuditSection) -> Result<AuditWriter> {
        let destination = section.output.as_path();
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
        let open = || {
            let file = ReopeningFile::open(destination, REOPEN_CHECK).map_err(|e| {
                ShimError::io(
                    format!("open audit destination {}", destination.display()),
                    e,
                )
            })?;
            // The audit stream is the shim's standard output (containerd started us with it
            // discarded); everything the shim logs goes to containerd's shim log instead.
            if self.claims_stdout {
                make_stdout(file.file(), destination);
                let path = destination.to_path_buf();
                Ok::<_, ShimError>(file.on_reopen(Box::new(move |f| make_stdout(f, &path))))
            } else {
                Ok(file)
            }
        };
        let max_batch = if is_fifo(destination) {
            4096
        } else {
            64 * 1024
        };
        let seal = section.signing_key.is_file().then(|| SealConfig {
            anchor: section.checkpoints.clone(),
            anchor_command: section.checkpoints_command.clone(),
            ..SealConfig::new(&section.signing_key)
        });
        let (b, d) = (section.budget, BudgetConfig::default());
        let config = WriterConfig {
            max_batch_bytes: max_batch,
            budget: Some(BudgetConfig {
                events_per_sec: b.events_per_sec.unwrap_or(d.events_per_sec),
                event_burst: b.event_burst.unwrap_or(d.event_burst),
                bytes_per_sec: b.bytes_per_sec.unwrap_or(d.bytes_per_sec),
                byte_burst: b.byte_burst.unwrap_or(d.byte_burst),
            }),
            spool: Some(section.spool.clone()),
            seal,
            ..WriterConfig::default()
        };
        let spawned = match AuditWriter::spawn_reopening(open()?, config.clone()) {
            Err(e) if config.seal.is_some() => {
                // An unusable key never stops containers: the chains still hold.
                tracing::warn!(
                    key = %section.signing_key.display(),
                    "audit checkpoints are not signed (the key cannot be used: {e})"
                );
                AuditWriter::spawn_reopening(
                    open()?,
                    WriterConfig {
                        seal: None,
                        ..config
                    },
                )
            }
            other => other,
        };
        let (writer, handle) = spawned.map_err(|e| ShimError::io("start audit writer", e))?;
        *guard = Some((writer.clone(), Some(handle), destination.to_path_buf()));
        Ok(writer)
    }

    /// Reopens the destination path (SIGHUP: after a rotation).
    pub fn reopen(&self) -> bool {
        self.open_writer().is_some_and(|w| w.reopen())
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
        // Never waits for a full destination past the budget: what is left is spooled.
        let joined = tokio::task::spawn_blocking(move || handle.finish_within(FINISH_WITHIN)).await;
        match joined {
            Ok(stats) => tracing::info!(
                lines = stats.lines_written,
                dropped = stats.queue_dropped,
                spooled = stats.spooled_lines,
                lost = stats.lost_lines,
                "audit writer finished"
            ),
            Err(e) => tracing::warn!("audit writer did not finish: {e}"),
        }
    }
}

/// How often the writer checks whether its path names another file (rename rotation).
const REOPEN_CHECK: Duration = Duration::from_secs(1);

/// How long the writer may take to write what is queued when the shim exits.
const FINISH_WITHIN: Duration = Duration::from_secs(2);

/// Makes `file` the process's standard output.
fn make_stdout(file: &std::fs::File, destination: &Path) {
    // SAFETY: dup2 onto fd 1 with a valid fd we own.
    if unsafe { libc::dup2(file.as_raw_fd(), libc::STDOUT_FILENO) } < 0 {
        tracing::warn!(
            "cannot make {} the shim's stdout: {}",
            destination.display(),
            std::io::Error::last_os_error()
        );
    }
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}
