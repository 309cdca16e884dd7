//! A file destination that follows rotation by rename: when the path no longer names the file
//! being written (logrotate renamed it and created a new one), or when asked to (the shim's
//! SIGHUP, `AuditWriter::reopen`), the next write goes to a freshly opened path. The path is
//! looked at no more than once per `check_every` (1 s by default), and only between whole
//! lines, so a line is never split across two files.
//!
//! `copytruncate` is not supported: truncating a file that writers hold open loses whatever was
//! appended between the copy and the truncation, and `verify` then reports those lines as
//! deleted, because they were.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::open_append;

/// Called with the new file after every reopen (the shim makes it its stdout again).
pub type OnReopen = Box<dyn FnMut(&File) + Send>;

/// An append-only file sink that reopens its path after a rename or on request.
pub struct ReopeningFile {
    path: PathBuf,
    file: File,
    id: (u64, u64),
    check_every: Duration,
    last_check: Instant,
    at_line_start: bool,
    request: Arc<AtomicBool>,
    reopens: Arc<AtomicU64>,
    on_reopen: Option<OnReopen>,
}

fn file_id(file: &File) -> io::Result<(u64, u64)> {
    let m = file.metadata()?;
    Ok((m.dev(), m.ino()))
}

impl ReopeningFile {
    /// Opens `path` for appending (created 0640 if missing).
    pub fn open(path: &Path, check_every: Duration) -> io::Result<Self> {
        let file = open_append(path)?;
        let id = file_id(&file)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            id,
            check_every,
            last_check: Instant::now(),
            at_line_start: true,
            request: Arc::new(AtomicBool::new(false)),
            reopens: Arc::new(AtomicU64::new(0)),
            on_reopen: None,
        })
    }

    /// Calls `f` with the new file after each reopen.
    pub fn on_reopen(mut self, f: OnReopen) -> Self {
        self.on_reopen = Some(f);
        self
    }

    /// The flag that asks for a reopen before the next line.
    pub fn request_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.request)
    }

    /// The count of reopens so far.
    pub fn reopen_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.reopens)
    }

    /// The file being written now.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Between lines: reopens if asked to, or if the path names another file (checked at most
    /// once per interval). A failed reopen keeps the current file and is retried later.
    fn check(&mut self) {
        if !self.at_line_start {
            return;
        }
        let requested = self.request.swap(false, Ordering::AcqRel);
        if !requested && self.last_check.elapsed() < self.check_every {
            return;
        }
        self.last_check = Instant::now();
        let moved = match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != self.id,
            Err(_) => true,
        };
        if !moved {
            return;
        }
        match open_append(&self.path).and_then(|f| file_id(&f).map(|id| (f, id))) {
            Ok((file, id)) => {
                self.file = file;
                self.id = id;
                self.reopens.fetch_add(1, Ordering::Relaxed);
                if let Some(f) = &mut self.on_reopen {
                    f(&self.file);
                }
            }
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "audit destination moved but cannot be reopened; still writing the old file"
            ),
        }
    }
}

impl Write for ReopeningFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check();
        let n = self.file.write(buf)?;
        if n > 0 {
            self.at_line_start = buf[n - 1] == b'\n';
        }
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.check();
        let n = self.file.write_vectored(bufs)?;
        let mut rest = n;
        for b in bufs {
            if rest <= b.len() {
                if rest > 0 {
                    self.at_line_start = b[rest - 1] == b'\n';
                }
                break;
            }
            rest -= b.len();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
