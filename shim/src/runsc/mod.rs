//! What a sandbox asks of runsc, as typed calls.
//!
//! [`SandboxRuntime`] is the only way the rest of the shim drives runsc: one value per
//! container, with the sandbox's global flags bound in, so no caller builds a command line or
//! passes flags around. [`cli::Runsc`] is the real thing (the one place that spawns runsc);
//! `double::RunscDouble` stands in for it in the task tests, which run without root or runsc.

pub mod cli;
#[cfg(test)]
pub mod double;
mod state;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::Result;
use crate::reaper::Exit;

/// runsc's `--network` mode for a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only.
    None,
    /// The kernel stack of the namespace runsc runs in (always the container's own).
    Host,
    /// gVisor's own netstack.
    Sandbox,
}

impl NetworkMode {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
            NetworkMode::Sandbox => "sandbox",
        }
    }
}

/// The flags and namespace every invocation for one sandbox shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxFlags {
    /// `--network=`.
    pub network: NetworkMode,
    /// The container's own network namespace, entered before exec'ing runsc.
    pub netns: Option<PathBuf>,
    /// Extra global flags the policy asked for (e.g. `--pod-init-config=...`).
    pub extra: Vec<String>,
}

impl SandboxFlags {
    /// Loopback only, no namespace entered, no extra flag.
    pub fn loopback_only() -> SandboxFlags {
        SandboxFlags {
            network: NetworkMode::None,
            netns: None,
            extra: Vec::new(),
        }
    }
}

/// The three stdio handles given to a runsc command that donates them to the container.
#[derive(Default)]
pub struct ChildStdio {
    /// stdin (None = /dev/null).
    pub stdin: Option<OwnedFd>,
    /// stdout (None = /dev/null).
    pub stdout: Option<OwnedFd>,
    /// stderr (None = /dev/null).
    pub stderr: Option<OwnedFd>,
}

impl ChildStdio {
    /// All three on /dev/null.
    pub fn null() -> ChildStdio {
        ChildStdio::default()
    }
}

/// `runsc create`.
pub struct CreateOpts<'a> {
    /// The bundle.
    pub bundle: &'a Path,
    /// Where runsc writes the sandbox (or container) pid.
    pub pid_file: &'a Path,
    /// For a terminal: the socket runsc sends the pty master to.
    pub console_socket: Option<&'a Path>,
    /// The container's stdio (a root container's; a pod member's comes at start).
    pub stdio: ChildStdio,
}

/// `runsc kill`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillOpts {
    /// The signal number.
    pub signal: u32,
    /// Every process of the container (`--all`).
    pub all: bool,
    /// One process, by its pid inside the sandbox (`--pid`).
    pub pid: Option<i32>,
}

/// `runsc exec` (foreground: its exit status is the process's).
pub struct ExecOpts<'a> {
    /// The process spec file.
    pub process_file: &'a Path,
    /// Where runsc writes the process's pid inside the sandbox.
    pub internal_pid_file: &'a Path,
    /// Its stdio (a pty slave for a terminal).
    pub stdio: ChildStdio,
}

/// A spawned long-running runsc command: its host pid and its exit.
pub type Spawned = (u32, oneshot::Receiver<Exit>);

/// What the shim needs from runsc for one container, its sandbox's flags bound in.
#[async_trait]
pub trait SandboxRuntime: Send + Sync {
    /// The same runtime for another container of the sandbox, logging into `log_dir`.
    fn for_container(&self, log_dir: &Path) -> Arc<dyn SandboxRuntime>;
    /// The sandbox's flags.
    fn flags(&self) -> &SandboxFlags;
    /// runsc's state root.
    fn root(&self) -> &Path;
    /// Boots the sandbox (or joins the pod's).
    async fn create(&self, id: &str, opts: CreateOpts<'_>) -> Result<()>;
    /// Starts the container's process.
    async fn start(&self, id: &str, stdio: Option<ChildStdio>) -> Result<()>;
    /// Signals the container's processes.
    async fn kill(&self, id: &str, opts: KillOpts) -> Result<()>;
    /// Stops and forgets the container (the sandbox too, for its root). Idempotent.
    async fn delete(&self, id: &str) -> Result<()>;
    /// Freezes (`pause`) or thaws (`resume`) the container.
    async fn pause(&self, id: &str, resume: bool) -> Result<()>;
    /// The sandbox-internal pids of the container.
    async fn ps(&self, id: &str) -> Result<Vec<u32>>;
    /// cgroup-style counters of the container.
    async fn stats(&self, id: &str) -> Result<serde_json::Value>;
    /// Spawns a foreground exec.
    fn spawn_exec(&self, id: &str, opts: ExecOpts<'_>) -> Result<Spawned>;
    /// Spawns a wait for a pod member; its stdout carries `{"exitStatus":N}`.
    fn spawn_wait(&self, id: &str, stdout: OwnedFd) -> Result<Spawned>;
    /// Forgets a container whose sandbox is gone without a `runsc delete`: its state files
    /// under the root. True when nothing of it is left there.
    fn forget_dead(&self, id: &str) -> bool;
    /// Removes the container's runsc log.
    fn remove_log(&self, id: &str);
}
