//! The spool: lines a writer could not write when it had to stop (its destination full or
//! gone, and the shim's delete budget spent) are kept in files under a spool directory (by
//! default on `/run`, a different file system from `/var/log`) instead of being lost. The next
//! writer started with the same spool directory appends them to its destination before its
//! own lines, whole and in their order, and adds them to its next checkpoint.
//!
//! Spool files are named `<unix nanos>-<pid>.jsonl` (so they sort in the order they were
//! made) and created mode 0600. A file is removed only once all of it was written.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::timestamp::Timestamp;

/// Creates a new spool file in `dir` (created 0700 if missing).
pub(super) fn create(dir: &Path) -> io::Result<(PathBuf, File)> {
    std::fs::create_dir_all(dir)?;
    let name = format!(
        "{:020}-{}.jsonl",
        Timestamp::now().unix_nanos().max(0),
        std::process::id()
    );
    let path = dir.join(name);
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)?;
    Ok((path, file))
}

/// The spool files in `dir`, oldest first.
pub fn pending(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "jsonl") {
                    files.push(p);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    files.sort();
    Ok(files)
}

/// Reads one spool file's whole lines (a torn last line, from a crash while spooling, is
/// left out).
pub(super) fn read_lines(path: &Path) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    data.truncate(whole);
    Ok(data)
}

/// Appends whole lines to a spool file.
pub(super) fn append(file: &mut File, lines: &[u8]) -> io::Result<()> {
    file.write_all(lines)
}
