//! Reaping child processes and handing their exit statuses to whoever waits for them.
//!
//! The shim is a child subreaper: runsc's sandbox and gofer processes are re-parented to it when
//! `runsc create` exits, and the sandbox process's exit status *is* the root container's exit
//! status. One SIGCHLD loop reaps everything (`waitpid(-1)`) and routes each status to the
//! waiter registered for that pid. Spawning happens under the same lock the reaper takes, so a
//! child that exits at once is never reaped before its waiter exists; a status for a pid nobody
//! registered yet is parked for a while (re-parented sandboxes can exit before we learn their pid).

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How long an unclaimed exit status is kept for a late waiter.
const UNCLAIMED_TTL: Duration = Duration::from_secs(120);

/// An exit: the code containerd expects (128+signal for a signalled process) and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal number.
    pub code: u32,
    /// When it was reaped.
    pub at: std::time::SystemTime,
}

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: HashMap<i32, (Exit, Instant)>,
}

/// The process-wide reaper.
#[derive(Default, Clone)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the maps are still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `cmd` and registers a waiter for it before the reaper can see its exit.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut state = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Registers a waiter for a process that is (or will be) re-parented to us.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<Exit> {
        let mut state = self.lock();
        let (tx, rx) = oneshot::channel();
        if let Some((exit, _)) = state.unclaimed.remove(&pid) {
            let _ = tx.send(exit);
        } else {
            state.waiters.insert(pid, tx);
        }
        rx
    }

    /// Hands `exit` to the waiter of `pid`, as reaping it would (the task tests' sandboxes are
    /// not real processes).
    #[cfg(test)]
    pub fn deliver(&self, pid: i32, exit: Exit) {
        if let Some(tx) = self.lock().waiters.remove(&pid) {
            let _ = tx.send(exit);
        }
    }

    /// Stops waiting for `pid` (the exit, if any, is dropped).
    pub fn forget(&self, pid: i32) {
        let mut state = self.lock();
        state.waiters.remove(&pid);
        state.unclaimed.remove(&pid);
    }

    /// Reaps every exited child; returns how many were reaped.
    pub fn reap_all(&self) -> usize {
        let mut n = 0;
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code as u32),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as u32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("waitpid: {e}");
                    break;
                }
            };
            n += 1;
            let exit = Exit {
                code,
                at: std::time::SystemTime::now(),
            };
            let mut state = self.lock();
            match state.waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => {
                    let now = Instant::now();
                    state
                        .unclaimed
                        .retain(|_, (_, t)| now.duration_since(*t) < UNCLAIMED_TTL);
                    state.unclaimed.insert(pid, (exit, now));
                }
            }
        }
        n
    }

    /// Runs the SIGCHLD loop forever.
    pub async fn run(self) {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot watch SIGCHLD, exits will be missed: {e}");
                return;
            }
        };
        loop {
            self.reap_all();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: waitpid(-1) in a parallel test would steal another test's children.
    #[tokio::test]
    async fn routes_exits_and_parks_unregistered_ones() {
        let reaper = Reaper::default();
        #[allow(clippy::zombie_processes)] // reaped below by reap_all, on purpose
        let child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id() as i32;
        // Reap it with nobody registered: the status must be parked for a late waiter.
        let deadline = Instant::now() + Duration::from_secs(5);
        while reaper.reap_all() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(reaper.watch(pid).await.expect("parked exit").code, 0);

        tokio::spawn(reaper.clone().run());
        let (_c, rx) = reaper
            .spawn(Command::new("sh").args(["-c", "exit 3"]))
            .expect("spawn sh");
        assert_eq!(rx.await.expect("exit").code, 3);
        let (_c, rx) = reaper
            .spawn(Command::new("sh").args(["-c", "kill -9 $$"]))
            .expect("spawn sh");
        assert_eq!(rx.await.expect("exit").code, 137);
    }
}
