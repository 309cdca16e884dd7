//! Reading an audit file as a stream: history first, then new lines as they
//! are appended (`tail -F`-like: a truncated or replaced file is reopened from
//! its start). Filters by seq or time, container, sandbox and category.
//!
//! The iterator blocks while waiting for new lines; run it on its own thread
//! and stop it with [`Follow::stop_handle`]. Lines are yielded exactly as
//! written (the caller prints them), whole lines only. Seal records (signed
//! checkpoints, see `seal/mod.rs`) are not events and are skipped.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::timestamp::Timestamp;

/// Where to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// Events whose (per-sandbox) seq is at least this.
    Seq(u64),
    /// Events at or after this time.
    Time(Timestamp),
}

impl Since {
    /// Parses `--since`: a number is a seq, anything else an RFC 3339 time.
    pub fn parse(text: &str) -> Option<Self> {
        match text.parse::<u64>() {
            Ok(seq) => Some(Self::Seq(seq)),
            Err(_) => Timestamp::parse_rfc3339(text).ok().map(Self::Time),
        }
    }
}

/// Which lines to yield; `None` fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowFilter {
    /// Start point.
    pub since: Option<Since>,
    /// Only this container.
    pub container: Option<String>,
    /// Only this sandbox.
    pub sandbox: Option<String>,
    /// Only this category (`process`, `file`, ...).
    pub category: Option<String>,
}

/// How to read.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// Keep waiting for new lines at the end of the file (false: history only).
    pub follow: bool,
    /// How often to look for new lines.
    pub poll_interval: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            follow: true,
            poll_interval: Duration::from_millis(200),
        }
    }
}

/// Why a line could not be read or checked.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line is not an audit event (yielded, then reading goes on).
    #[error("line at byte {offset} is not an audit event: {reason}")]
    Malformed {
        /// Byte offset of the line.
        offset: u64,
        /// The parse error.
        reason: String,
    },
}

/// The fields the filter looks at.
#[derive(Deserialize)]
struct Head {
    seq: u64,
    time: Timestamp,
    sandbox_id: String,
    #[serde(default)]
    container_id: Option<String>,
    category: String,
}

impl FollowFilter {
    fn matches(&self, head: &Head) -> bool {
        let since = match self.since {
            None => true,
            Some(Since::Seq(seq)) => head.seq >= seq,
            Some(Since::Time(t)) => head.time >= t,
        };
        since
            && self
                .container
                .as_ref()
                .is_none_or(|c| head.container_id.as_ref() == Some(c))
            && self.sandbox.as_ref().is_none_or(|s| &head.sandbox_id == s)
            && self.category.as_ref().is_none_or(|c| &head.category == c)
    }
}

/// An iterator over matching lines (without their newline).
pub struct Follow {
    path: PathBuf,
    reader: BufReader<File>,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
    filter: FollowFilter,
    options: FollowOptions,
    stop: Arc<AtomicBool>,
}

/// Follows `path` from its start: history, then new lines as they come.
pub fn follow(path: &Path, filter: FollowFilter) -> Result<Follow, FollowError> {
    follow_with(path, filter, FollowOptions::default())
}

/// [`follow`] with options.
pub fn follow_with(
    path: &Path,
    filter: FollowFilter,
    options: FollowOptions,
) -> Result<Follow, FollowError> {
    let (reader, inode) = open(path)?;
    Ok(Follow {
        path: path.to_owned(),
        reader,
        inode,
        offset: 0,
        partial: Vec::new(),
        filter,
        options,
        stop: Arc::new(AtomicBool::new(false)),
    })
}

fn open(path: &Path) -> Result<(BufReader<File>, u64), FollowError> {
    let io_err = |source| FollowError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let inode = file.metadata().map_err(io_err)?.ino();
    Ok((BufReader::new(file), inode))
}

impl Follow {
    /// A flag that ends the iteration (checked while waiting) when set.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Reopens the file from its start if it was replaced or truncated.
    fn check_rotation(&mut self) -> Result<(), FollowError> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Ok(()); // gone for now (rotation in progress): keep waiting
        };
        if meta.ino() != self.inode || meta.len() < self.offset {
            let (reader, inode) = open(&self.path)?;
            self.reader = reader;
            self.inode = inode;
            self.offset = 0;
            self.partial.clear();
        }
        Ok(())
    }

    fn io(&self, source: io::Error) -> FollowError {
        FollowError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl Iterator for Follow {
    type Item = Result<String, FollowError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            let start = self.offset - self.partial.len() as u64;
            let n = match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(n) => n,
                Err(e) => return Some(Err(self.io(e))),
            };
            self.offset += n as u64;
            if self.partial.last() == Some(&b'\n') {
                let mut line = std::mem::take(&mut self.partial);
                line.pop();
                if crate::seal::is_seal_line(&line) {
                    continue; // a checkpoint, not an event (`verify` reads those)
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                match serde_json::from_str::<Head>(&text) {
                    Ok(head) if self.filter.matches(&head) => return Some(Ok(text)),
                    Ok(_) => continue,
                    Err(e) => {
                        return Some(Err(FollowError::Malformed {
                            offset: start,
                            reason: e.to_string(),
                        }))
                    }
                }
            }
            // At the end of the file, maybe inside a line still being written.
            if !self.options.follow {
                return None;
            }
            std::thread::sleep(self.options.poll_interval);
            if let Err(e) = self.check_rotation() {
                return Some(Err(e));
            }
            // Re-sync the reader's position after EOF (BufReader keeps no state at EOF).
            if let Err(e) = self.reader.seek(SeekFrom::Start(self.offset)) {
                return Some(Err(self.io(e)));
            }
        }
    }
}

#[cfg(test)]
mod tests;
