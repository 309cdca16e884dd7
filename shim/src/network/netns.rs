//! Entering a container's network namespace: the one place the shim calls setns(2).
//!
//! Two ways in, both leaving the shim's own threads in the node's namespace: a child process
//! that enters the namespace between fork and exec ([`enter_on_exec`], for runsc, nft and
//! hooks), and a short-lived thread that enters it to create sockets ([`in_netns`]); a socket
//! belongs to the namespace it was created in wherever it is used afterwards.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Result, ShimError};

/// Opens the namespace file at `netns`.
pub fn open(netns: &Path) -> Result<File> {
    File::open(netns)
        .map_err(|e| ShimError::io(format!("open network namespace {}", netns.display()), e))
}

/// Makes `cmd`'s child enter the network namespace `ns` before it execs.
pub fn enter_on_exec(cmd: &mut Command, ns: File) {
    // SAFETY: setns(2) is async-signal-safe; `ns` is moved into the closure, so its fd stays
    // open until `cmd` is dropped, after spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `make` on a short-lived thread inside the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let ns = File::open(netns)?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        make()
    })
    .join()
    .map_err(|_| std::io::Error::other("a namespace thread panicked"))?
}

/// The network namespace runsc made for sandbox process `pid` (a spec entry without a path),
/// held open so it stays this namespace, whatever becomes of the pid, until the handle is
/// dropped; and a path that opens it (`/proc/self/fd/N`, the shim's own handle). Refused if
/// it is the shim's own namespace: a sandbox with network access never runs on the node's.
pub fn pin_sandbox_netns(pid: u32) -> Result<(File, PathBuf)> {
    use std::os::unix::fs::MetadataExt;
    let theirs = Path::new("/proc").join(pid.to_string()).join("ns/net");
    let ns = open(&theirs)?;
    let inode = |f: &File, what: &str| {
        f.metadata()
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| ShimError::io(format!("stat the network namespace of {what}"), e))
    };
    let own = open(Path::new("/proc/self/ns/net"))?;
    if inode(&ns, &format!("sandbox process {pid}"))? == inode(&own, "the shim")? {
        return Err(ShimError::FailedPrecondition(format!(
            "the sandbox (pid {pid}) runs in the shim's own network namespace, not a new one: refusing to give it network access"
        )));
    }
    let path = PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
    Ok((ns, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_in_the_shims_own_namespace_is_refused() {
        // This test process stands for a sandbox that runsc left in the shim's namespace.
        let err = pin_sandbox_netns(std::process::id()).expect_err("own namespace");
        assert!(
            err.to_string().contains("the shim's own network namespace"),
            "{err}"
        );
    }
}
