//! Killing a sandbox from the host at once: SIGKILL to its sandbox process through a pidfd.
//!
//! The sandbox process (runsc's `boot`, the Sentry) holds every process of the agent; killing
//! it ends them all within the kernel's teardown, with no runsc start-up in between. The pidfd
//! is opened while the process is known to be the shim's unreaped child (right after
//! `runsc create`), so the signal can never reach a process that reused its pid.
//!
//! After the signal the switch confirms the stop: the sandbox has *stopped* once every thread
//! of the sandbox process has entered the kernel's exit path (`PF_EXITING`), from which no
//! thread returns to run another instruction, of the Sentry or for the agent (the agent's own
//! code runs in the Sentry's stub processes, whose system calls only the Sentry serves, and
//! which the kernel kills when the Sentry goes). The kernel then still tears down the
//! sandbox's namespaces and memory before the process can be reaped: milliseconds more, in
//! which nothing of the sandbox runs.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The kernel's task flag for a thread that has begun to exit (`include/linux/sched.h`).
const PF_EXITING: u64 = 0x4;

/// A sandbox's kill switch: armed once its sandbox process exists.
#[derive(Default)]
pub struct KillSwitch {
    armed: OnceLock<(OwnedFd, u32)>,
    /// The sandbox cgroup's CPU cap and the value that lifts it.
    cpu_cap: OnceLock<(PathBuf, &'static str)>,
    /// Set by [`kill`](Self::kill) before anything else: the sandbox's end is the enforcer's,
    /// known before the signal can make its process exit.
    thrown: AtomicBool,
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
        let _ = self.armed.set((fd, pid as u32));
        Ok(())
    }

    /// Has [`kill`](Self::kill) lift the CPU cap `file` of the sandbox's cgroup (writing
    /// `unlimited` to it) right after the signal: a sandbox that has spent its CPU quota would
    /// otherwise have its threads wait for the next period (tens of milliseconds) before they
    /// can run to their exit. Measured in a flood: 2 kills in 35 took 31 ms, each time with
    /// the Sentry's threads runnable but not run.
    pub fn lift_cpu_cap_on_kill(&self, file: PathBuf, unlimited: &'static str) {
        let _ = self.cpu_cap.set((file, unlimited));
    }

    /// SIGKILL to the sandbox process; false if the switch is not armed or the kernel refused.
    pub fn kill(&self) -> bool {
        self.throw();
        let Some((fd, _)) = self.armed.get() else {
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
        let killed = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if killed {
            if let Some((file, unlimited)) = self.cpu_cap.get() {
                // Best effort: the cgroup may be gone with the sandbox already.
                let _ = std::fs::write(file, unlimited);
            }
        }
        killed
    }

    /// Records that the sandbox is being ended for a violation ([`kill`](Self::kill) does it
    /// first).
    pub fn throw(&self) {
        self.thrown.store(true, Ordering::SeqCst);
    }

    /// Whether [`kill`](Self::kill) was called (whether or not it could act): the sandbox is
    /// being ended for a violation. Set before the signal, so an exit handled at once after it
    /// already sees it.
    pub fn thrown(&self) -> bool {
        self.thrown.load(Ordering::SeqCst)
    }

    /// After [`kill`](Self::kill): waits (polling, at most `within`) until the sandbox process
    /// has stopped, and returns how long that took; `None` if it had not stopped by then or
    /// the switch is not armed.
    pub fn wait_stopped(&self, within: Duration) -> Option<Duration> {
        let (fd, pid) = self.armed.get()?;
        let start = Instant::now();
        loop {
            // Exited (the pidfd is readable) or every thread on its way out. The pidfd is
            // asked first: a process not yet exited cannot have been reaped, so the pid in
            // /proc is still this sandbox's.
            if exited(fd.as_fd()) || all_threads_exiting(*pid) {
                return Some(start.elapsed());
            }
            if start.elapsed() >= within {
                return None;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// Whether the process behind `pidfd` has exited (its pidfd polls readable).
fn exited(pidfd: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Whether every thread of `pid` has begun to exit (or is gone).
fn all_threads_exiting(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .map(|stat| thread_exiting(&stat))
            .unwrap_or(true)
    })
}

/// Whether a `/proc/PID/task/TID/stat` line is of a thread that has begun to exit: the
/// `PF_EXITING` flag, or the zombie/dead states. Parsed after the last `)`, since the
/// command name may hold anything.
fn thread_exiting(stat: &str) -> bool {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next().unwrap_or("");
    // state ppid pgrp session tty_nr tpgid flags
    let flags = fields
        .nth(5)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep")
    }

    #[test]
    fn kills_the_process_it_was_armed_for_and_only_once_armed() {
        let switch = KillSwitch::default();
        assert!(!switch.thrown());
        assert!(!switch.kill(), "not armed");
        assert!(switch.thrown(), "thrown even when it could not act");
        let mut child = sleeper();
        switch.arm(child.id()).expect("arm");
        assert!(switch.kill());
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(switch.kill(), "an exited process is a kill done");
    }

    #[test]
    fn a_killed_process_is_confirmed_stopped_and_a_live_one_is_not() {
        let switch = KillSwitch::default();
        assert_eq!(
            switch.wait_stopped(Duration::from_millis(5)),
            None,
            "not armed"
        );
        let mut child = sleeper();
        switch.arm(child.id()).expect("arm");
        assert_eq!(
            switch.wait_stopped(Duration::from_millis(20)),
            None,
            "a sleeping process has not stopped"
        );
        assert!(switch.kill());
        let took = switch.wait_stopped(Duration::from_secs(5));
        assert!(took.is_some(), "a SIGKILLed process stops");
        child.wait().expect("wait");
    }

    #[test]
    fn the_kill_lifts_the_cpu_cap_it_was_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cap = dir.path().join("cpu.cfs_quota_us");
        std::fs::write(&cap, "100000").expect("write");
        let switch = KillSwitch::default();
        switch.lift_cpu_cap_on_kill(cap.clone(), "-1");
        let mut child = sleeper();
        switch.arm(child.id()).expect("arm");
        assert_eq!(
            std::fs::read_to_string(&cap).expect("read"),
            "100000",
            "not before"
        );
        assert!(switch.kill());
        assert_eq!(std::fs::read_to_string(&cap).expect("read"), "-1");
        child.wait().expect("wait");
    }

    #[test]
    fn stat_lines_are_read_after_the_command_name() {
        // A command name that imitates the fields must not be read as them.
        let running = "42 (a) Z 1 1 1 0 -1 4) S 1 42 42 0 -1 4194560 100 0 0 0";
        assert!(!thread_exiting(running));
        let exiting = "42 (sleep) R 1 42 42 0 -1 4194564 100 0 0 0";
        assert!(thread_exiting(exiting));
        assert!(thread_exiting("42 (sleep) Z 1 42 42 0 -1 4194560 1 0"));
        assert!(!thread_exiting("garbage"));
    }
}
