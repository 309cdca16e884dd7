//! The processes of a container, its init and its execs, and the state machine they share.
//!
//! Created → Running ⇄ Paused, and any of them → Stopped when the exit arrives. Anything else
//! (start twice, resume a running process, delete a running one) is an error, never a no-op.
//! [`InitProcess`] and [`ExecProcess`] are two types (what differs between them lives there);
//! [`ProcessRef`] is what a Task call that names either gets.

use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::error::{Result, ShimError};
use crate::reaper::Exit;
use crate::stdio::{IoPaths, ProcessIo};

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// Exited; the exit is recorded.
    Stopped,
}

impl Status {
    /// containerd's task status enum.
    pub fn to_proto(self) -> containerd_shim_protos::api::Status {
        use containerd_shim_protos::api::Status as S;
        match self {
            Status::Created => S::CREATED,
            Status::Running => S::RUNNING,
            Status::Paused => S::PAUSED,
            Status::Stopped => S::STOPPED,
        }
    }
}

/// The state every process of a container has.
pub struct Process {
    /// How errors name it: `task`, or `exec "ID"`.
    label: String,
    /// Its stdio as containerd gave it.
    pub paths: IoPaths,
    state: Mutex<(Status, u32)>,
    exit_tx: watch::Sender<Option<Exit>>,
    /// Its stdio while it lives.
    pub io: tokio::sync::Mutex<ProcessIo>,
    settled: watch::Sender<bool>,
}

impl Process {
    /// A new process in the Created state.
    fn new(label: String, paths: IoPaths) -> Process {
        let (exit_tx, _) = watch::channel(None);
        Process {
            label,
            paths,
            state: Mutex::new((Status::Created, 0)),
            exit_tx,
            io: tokio::sync::Mutex::new(ProcessIo::default()),
            settled: watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Status, u32)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn what(&self) -> &str {
        &self.label
    }

    /// How logs and errors name it: `init` or `exec "ID"`.
    pub fn label(&self) -> &str {
        if self.label == "task" {
            "init"
        } else {
            &self.label
        }
    }

    /// Current status.
    pub fn status(&self) -> Status {
        self.lock().0
    }

    /// The host pid containerd sees.
    pub fn pid(&self) -> u32 {
        self.lock().1
    }

    /// Records the host pid.
    pub fn set_pid(&self, pid: u32) {
        self.lock().1 = pid;
    }

    /// The exit, once stopped.
    pub fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    /// Says the Start call is over (succeeded or not): only then is an exit published, so
    /// containerd always sees TaskStart before TaskExit.
    pub fn settle(&self) {
        self.settled.send_replace(true);
    }

    /// Waits until [`Process::settle`] was called.
    pub async fn wait_settled(&self) {
        let mut rx = self.settled.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Created → Running (a process that already exited stays Stopped).
    pub fn mark_started(&self, pid: u32) -> Result<()> {
        let mut s = self.lock();
        if pid != 0 {
            s.1 = pid;
        }
        match s.0 {
            Status::Created => {
                s.0 = Status::Running;
                Ok(())
            }
            Status::Stopped => Ok(()),
            other => Err(ShimError::FailedPrecondition(format!(
                "cannot start {}: it is {other:?}",
                self.what()
            ))),
        }
    }

    /// Checks that the process may be started (without changing state).
    pub fn check_startable(&self) -> Result<()> {
        match self.status() {
            Status::Created => Ok(()),
            other => Err(ShimError::FailedPrecondition(format!(
                "cannot start {}: it is {other:?}",
                self.what()
            ))),
        }
    }

    /// Running ⇄ Paused.
    pub fn mark_paused(&self, paused: bool) -> Result<()> {
        let mut s = self.lock();
        match (s.0, paused) {
            (Status::Running, true) => s.0 = Status::Paused,
            (Status::Paused, false) => s.0 = Status::Running,
            (other, _) => {
                return Err(ShimError::FailedPrecondition(format!(
                    "cannot {} {}: it is {other:?}",
                    if paused { "pause" } else { "resume" },
                    self.what()
                )))
            }
        }
        Ok(())
    }

    /// Any → Stopped with this exit (the first exit wins).
    pub fn mark_exited(&self, exit: Exit) -> bool {
        let mut s = self.lock();
        if s.0 == Status::Stopped {
            return false;
        }
        s.0 = Status::Stopped;
        drop(s);
        self.exit_tx.send_replace(Some(exit));
        true
    }

    /// Waits for the exit.
    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        loop {
            if let Some(exit) = *rx.borrow_and_update() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The sender lives in self, so this cannot happen while we hold &self.
                return Exit {
                    code: 255,
                    at: SystemTime::now(),
                };
            }
        }
    }

    /// Checks the process may be deleted: stopped, or created and never started.
    pub fn check_deletable(&self) -> Result<()> {
        match self.status() {
            Status::Stopped | Status::Created => Ok(()),
            other => Err(ShimError::FailedPrecondition(format!(
                "cannot delete {}: it is {other:?}; kill it first",
                self.what()
            ))),
        }
    }
}

/// A container's init process: its exit is the container's.
pub struct InitProcess {
    process: Process,
    /// A pod member's stdio between create and start: runsc gives a container joining a
    /// sandbox the stdio of the `runsc start` command.
    pub start_stdio: Mutex<Option<crate::runsc::ChildStdio>>,
}

impl InitProcess {
    /// A new init in the Created state.
    pub fn new(paths: IoPaths) -> InitProcess {
        InitProcess {
            process: Process::new("task".into(), paths),
            start_stdio: Mutex::new(None),
        }
    }
}

impl Deref for InitProcess {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

/// A process started in a running container by Exec.
pub struct ExecProcess {
    /// containerd's exec id.
    pub exec_id: String,
    process: Process,
    /// The pid inside the sandbox, for `runsc kill --pid` (known once runsc wrote it).
    pub internal_pid: Mutex<Option<i32>>,
}

impl ExecProcess {
    /// A new exec in the Created state.
    pub fn new(exec_id: &str, paths: IoPaths) -> ExecProcess {
        ExecProcess {
            exec_id: exec_id.to_string(),
            process: Process::new(format!("exec {exec_id:?}"), paths),
            internal_pid: Mutex::new(None),
        }
    }

    /// Its pid inside the sandbox, if known yet.
    pub fn internal_pid(&self) -> Option<i32> {
        *self.internal_pid.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Deref for ExecProcess {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

/// The process a Task call names: the init (empty exec id) or an exec.
#[derive(Clone)]
pub enum ProcessRef {
    /// The container's init.
    Init(Arc<InitProcess>),
    /// One of its execs.
    Exec(Arc<ExecProcess>),
}

impl ProcessRef {
    /// The exec id containerd knows it by ("" for the init).
    pub fn exec_id(&self) -> &str {
        match self {
            ProcessRef::Init(_) => "",
            ProcessRef::Exec(e) => &e.exec_id,
        }
    }
}

impl Deref for ProcessRef {
    type Target = Process;
    fn deref(&self) -> &Process {
        match self {
            ProcessRef::Init(p) => p,
            ProcessRef::Exec(p) => p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn illegal_transitions_are_errors() {
        let p = InitProcess::new(IoPaths::default());
        assert!(
            p.mark_paused(true).is_err(),
            "cannot pause a created process"
        );
        p.mark_started(42).expect("created -> running");
        assert!(p.mark_started(42).is_err(), "cannot start twice");
        assert!(
            p.check_startable().is_err(),
            "a running process is not startable"
        );
        assert!(
            p.check_deletable().is_err(),
            "cannot delete a running process"
        );
        p.mark_paused(true).expect("running -> paused");
        assert!(p.mark_paused(true).is_err(), "cannot pause twice");
        p.mark_paused(false).expect("paused -> running");
        let exit = Exit {
            code: 3,
            at: SystemTime::now(),
        };
        assert!(p.mark_exited(exit));
        assert!(
            !p.mark_exited(Exit {
                code: 9,
                at: SystemTime::now()
            }),
            "first exit wins"
        );
        assert_eq!(p.wait().await.code, 3);
        assert_eq!(p.status(), Status::Stopped);
        p.check_deletable().expect("stopped is deletable");
    }
}
