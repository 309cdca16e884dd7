//! A gVisor sandbox and what belongs to it as a whole: the runsc that booted it, its cgroup and
//! OOM record, its audit session and enforcer, its network (filter, DNS forwarder, refusal
//! log). The containers of a pod each hold an `Arc<Sandbox>`; what is a container's own lives
//! in [`crate::container::Container`].
//!
//! [`create`] makes a sandbox with its first container (or adds a container to a pod's), with
//! one undo list per owner; [`undo`] is how everything made is released, whichever call ends it.

pub mod create;
pub mod memory;
pub mod persisted;
pub mod request;
mod steps;
pub mod undo;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use safehouse_policy::NetFilter;

use crate::audit::SandboxAudit;
use crate::error::Result;
use crate::runsc::SandboxRuntime;
use undo::{Teardown, Undo};

/// A sandbox: one per pod, or per plain container.
pub struct Sandbox {
    /// The id of its root container (the pod's sandbox container, or the plain container).
    pub id: String,
    /// The root container's runsc, the sandbox's flags bound in.
    pub runtime: Arc<dyn SandboxRuntime>,
    /// The host cgroup runsc put the sandbox in (the root container's `linux.cgroupsPath`).
    pub cgroups_path: Option<String>,
    /// Set once the kernel's OOM killer ended the sandbox: a member whose exit is handled after
    /// the cgroup is gone still knows.
    pub oom: AtomicBool,
    /// Its audit session (shared by every container of the pod).
    pub audit: Arc<SandboxAudit>,
    /// The network filter its policy compiled to (a pod member's must match).
    pub filter: Option<NetFilter>,
    /// The sandbox process's host pid.
    pid: AtomicU32,
    /// The sandbox process has exited (set as soon as it is reaped).
    exited: AtomicBool,
    /// What the sandbox holds on the host beyond its containers' own.
    undo: tokio::sync::Mutex<Undo>,
}

impl Sandbox {
    /// The sandbox process's host pid (0 before `runsc create` returned).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Records that the sandbox process exited.
    pub fn mark_exited(&self) {
        self.exited.store(true, Ordering::SeqCst);
    }

    /// Whether the sandbox process is gone: reaped, a zombie, or no longer there, or ended by
    /// the OOM killer in its cgroup.
    pub fn is_gone(&self) -> bool {
        if self.exited.load(Ordering::SeqCst) || self.oom.load(Ordering::SeqCst) {
            return true;
        }
        let pid = self.pid();
        pid != 0 && process_gone(pid, self.cgroups_path.as_deref())
    }

    /// Releases what the sandbox holds beyond its containers (network, trace sink, reaper
    /// watch). Its root container's teardown comes first.
    pub async fn teardown(&self, how: &Teardown<'_>) -> Result<()> {
        self.undo.lock().await.run(how).await
    }
}

/// True when process `pid` is gone (or a zombie), or the OOM killer struck in `cgroup`.
pub fn process_gone(pid: u32, cgroup: Option<&str>) -> bool {
    if cgroup.and_then(crate::cgroup::oom_kills).unwrap_or(0) > 0 {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name's closing parenthesis.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
        Err(_) => true,
    }
}
