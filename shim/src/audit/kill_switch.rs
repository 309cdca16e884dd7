//! Killing a sandbox from the host at once: SIGKILL to its sandbox process through a pidfd.
//!
//! The sandbox process (runsc's `boot`, the Sentry) holds every process of the agent; killing
//! it ends them all within the kernel's teardown, with no runsc start-up in between. The pidfd
//! is opened while the process is known to be the shim's unreaped child (right after
//! `runsc create`), so the signal can never reach a process that reused its pid.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// A sandbox's kill switch: armed once its sandbox process exists.
#[derive(Default)]
pub struct KillSwitch {
    pidfd: OnceLock<OwnedFd>,
}

impl KillSwitch {
    /// Arms the switch for the sandbox process `pid`.
    pub fn arm(&self, pid: u32) -> std::io::Result<()> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid too large"))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let _ = self.pidfd.set(fd);
        Ok(())
    }

    /// SIGKILL to the sandbox process; false if the switch is not armed or the kernel refused.
    pub fn kill(&self) -> bool {
        let Some(fd) = self.pidfd.get() else {
            return false;
        };
        // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        // ESRCH: it has already exited, which is what was wanted.
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_the_process_it_was_armed_for_and_only_once_armed() {
        let switch = KillSwitch::default();
        assert!(!switch.kill(), "not armed");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        switch.arm(child.id()).expect("arm");
        assert!(switch.kill());
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(switch.kill(), "an exited process is a kill done");
    }
}
