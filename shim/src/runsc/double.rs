//! A stand-in for runsc in the task tests: it records every call, fails the calls a test asks
//! it to, and behaves like runsc where the shim depends on it (create writes a pid file; kill
//! and delete of a dead sandbox fail as runsc's do).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::Code;
use tokio::sync::oneshot;

use super::{CreateOpts, ExecOpts, KillOpts, SandboxFlags, SandboxRuntime, Spawned};
use crate::error::{Result, ShimError};
use crate::reaper::Exit;

/// The pid the double's `create` writes for a sandbox: the test process's own, a process that
/// is alive and not a zombie, so the sandbox counts as running until a test ends it.
pub fn sandbox_pid() -> u32 {
    std::process::id()
}

#[derive(Default)]
struct Record {
    calls: Vec<String>,
    fail: HashMap<&'static str, (Code, String)>,
    /// The sandbox process has died: runsc's calls fail as they do then.
    dead: bool,
    /// Spawned exec/wait commands, by host pid, waiting for their exit.
    spawned: HashMap<u32, oneshot::Sender<Exit>>,
    next_pid: u32,
    /// The memory usage `stats` reports, by container.
    memory: HashMap<String, u64>,
}

/// The double; clones share one record.
#[derive(Clone, Default)]
pub struct RunscDouble {
    record: Arc<Mutex<Record>>,
}

impl RunscDouble {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A runtime bound to `flags` and `root`, recording into this double.
    pub fn bound(&self, root: PathBuf, flags: SandboxFlags) -> Arc<dyn SandboxRuntime> {
        Arc::new(BoundDouble {
            double: self.clone(),
            root,
            flags,
        })
    }

    /// Makes every later call of `command` fail with `code` and runsc's `message`.
    pub fn fail(&self, command: &'static str, code: Code, message: &str) {
        self.lock().fail.insert(command, (code, message.to_owned()));
    }

    /// Lets `command` succeed again.
    pub fn succeed(&self, command: &'static str) {
        self.lock().fail.remove(command);
    }

    /// The sandbox process died (OOM, a SIGKILL to its cgroup): later calls fail as runsc's do.
    pub fn die(&self) {
        self.lock().dead = true;
    }

    /// Makes `stats` of container `id` report `bytes` of memory in use.
    pub fn set_memory_usage(&self, id: &str, bytes: u64) {
        self.lock().memory.insert(id.to_owned(), bytes);
    }

    /// The calls so far, as `command id [args]`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The calls of one command.
    pub fn calls_of(&self, command: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.split(' ').next() == Some(command))
            .collect()
    }

    /// Ends spawned command `pid` with `code`.
    pub fn finish(&self, pid: u32, code: u32) {
        if let Some(tx) = self.lock().spawned.remove(&pid) {
            let _ = tx.send(Exit {
                code,
                at: SystemTime::now(),
            });
        }
    }

    fn call(&self, command: &'static str, line: String) -> Result<()> {
        let mut r = self.lock();
        r.calls.push(line);
        let id = String::new();
        if let Some((code, message)) = r.fail.get(command) {
            return Err(ShimError::Runsc {
                command: command.into(),
                id,
                message: message.clone(),
                code: *code,
            });
        }
        let needs_sandbox = matches!(command, "start" | "kill" | "pause" | "resume" | "ps");
        if r.dead && needs_sandbox {
            return Err(ShimError::Runsc {
                command: command.into(),
                id,
                message: "sandbox is not running".into(),
                code: Code::FAILED_PRECONDITION,
            });
        }
        Ok(())
    }

    fn spawn(&self, command: &'static str, line: String) -> Result<Spawned> {
        self.call(command, line)?;
        let mut r = self.lock();
        r.next_pid += 1;
        let pid = 5_000_000 + r.next_pid;
        let (tx, rx) = oneshot::channel();
        r.spawned.insert(pid, tx);
        Ok((pid, rx))
    }
}

struct BoundDouble {
    double: RunscDouble,
    root: PathBuf,
    flags: SandboxFlags,
}

#[async_trait]
impl SandboxRuntime for BoundDouble {
    fn for_container(&self, _log_dir: &Path) -> Arc<dyn SandboxRuntime> {
        self.double.bound(self.root.clone(), self.flags.clone())
    }

    fn flags(&self) -> &SandboxFlags {
        &self.flags
    }

    fn root(&self) -> &Path {
        &self.root
    }

    async fn create(&self, id: &str, opts: CreateOpts<'_>) -> Result<()> {
        self.double.call("create", format!("create {id}"))?;
        std::fs::write(opts.pid_file, sandbox_pid().to_string())
            .map_err(|e| ShimError::io("write pid file", e))
    }

    async fn start(&self, id: &str, _stdio: Option<super::ChildStdio>) -> Result<()> {
        self.double.call("start", format!("start {id}"))
    }

    async fn kill(&self, id: &str, opts: KillOpts) -> Result<()> {
        let mut line = format!("kill {id} {}", opts.signal);
        if opts.all {
            line.push_str(" --all");
        }
        if let Some(pid) = opts.pid {
            line.push_str(&format!(" --pid={pid}"));
        }
        self.double.call("kill", line)
    }

    async fn delete(&self, id: &str) -> Result<()> {
        self.double.call("delete", format!("delete {id}"))
    }

    async fn pause(&self, id: &str, resume: bool) -> Result<()> {
        let name = if resume { "resume" } else { "pause" };
        self.double.call(name, format!("{name} {id}"))
    }

    async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        self.double.call("ps", format!("ps {id}")).map(|()| vec![1])
    }

    async fn stats(&self, id: &str) -> Result<serde_json::Value> {
        self.double.call("stats", format!("stats {id}"))?;
        Ok(match self.double.lock().memory.get(id) {
            Some(bytes) => serde_json::json!({"data": {"memory": {"usage": {"usage": bytes}}}}),
            None => serde_json::json!({}),
        })
    }

    fn spawn_exec(&self, id: &str, opts: ExecOpts<'_>) -> Result<Spawned> {
        let line = format!("exec {id} {}", opts.process_file.display());
        self.double.spawn("exec", line)
    }

    fn spawn_wait(&self, id: &str, _stdout: OwnedFd) -> Result<Spawned> {
        self.double.spawn("wait", format!("wait {id}"))
    }

    fn forget_dead(&self, id: &str) -> bool {
        let _ = self.double.call("forget", format!("forget {id}"));
        true
    }

    fn remove_log(&self, _id: &str) {}
}
