//! What a sandbox or a container holds on the host, as a list of steps to release it.
//!
//! Create pushes a step for each thing it makes, in order; if Create fails the list is run at
//! once, and if it succeeds the list is kept for Delete. A failed Start and Delete run the very
//! same list: there is one way to release what was made, whichever call ends it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use safehouse_audit::lifecycle::SandboxContext;

use crate::audit::{AuditOutput, SandboxAudit};
use crate::error::Result;
use crate::network::SandboxNetwork;
use crate::process::InitProcess;
use crate::reaper::Reaper;
use crate::runsc::SandboxRuntime;

/// One thing to release.
pub enum Step {
    /// The read-only host binds made under the bundle.
    HostBinds(PathBuf),
    /// The rootfs the shim mounted in the bundle.
    Rootfs(PathBuf),
    /// The output zones' images under the bundle: copied out, reported, unmounted, removed.
    Outputs(OutputsStep),
    /// The views `process.tools` needs, made under the bundle.
    Tools(PathBuf),
    /// The seccomp exec helper and its filters, written under the bundle.
    SeccompExec(PathBuf),
    /// A file the shim wrote (pod-init config, state file).
    File(PathBuf),
    /// The sandbox's trace sink (its socket goes with it).
    AuditSink(Arc<SandboxAudit>),
    /// The sandbox's network filter, refusal log and DNS forwarder.
    Network(Arc<SandboxNetwork>),
    /// A process's stdio (copiers, fifos, log binaries).
    Stdio(Arc<InitProcess>),
    /// The container's runsc log.
    RuntimeLog(Arc<dyn SandboxRuntime>, String),
    /// runsc's state of the container: `runsc delete`, or, once its sandbox is gone, no
    /// process is left in its cgroup and it has no poststop hook for runsc to run, its state
    /// files removed without a runsc start-up.
    RuntimeState {
        /// The container's runsc.
        runtime: Arc<dyn SandboxRuntime>,
        /// The container.
        id: String,
        /// Whether its spec has poststop hooks (only `runsc delete` runs them).
        poststop_hooks: bool,
        /// Its `linux.cgroupsPath` (runsc delete also ends what is left in it, a gofer say).
        cgroup: Option<String>,
    },
    /// The reaper's watch on the sandbox process.
    ReaperWatch(i32),
}

impl Step {
    /// A short name, for tests and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Step::HostBinds(_) => "host-binds",
            Step::Rootfs(_) => "rootfs",
            Step::Outputs(_) => "outputs",
            Step::Tools(_) => "tools",
            Step::SeccompExec(_) => "seccomp-exec",
            Step::File(_) => "file",
            Step::AuditSink(_) => "audit-sink",
            Step::Network(_) => "network",
            Step::Stdio(_) => "stdio",
            Step::RuntimeLog(..) => "runsc-log",
            Step::RuntimeState { .. } => "runsc-state",
            Step::ReaperWatch(_) => "reaper-watch",
        }
    }
}

/// A container's output zones and where their findings are recorded.
pub struct OutputsStep {
    /// The bundle.
    pub bundle: PathBuf,
    /// The container.
    pub id: String,
    /// Its audit fields.
    pub ctx: SandboxContext,
    /// The shim's audit writer.
    pub output: Arc<AuditOutput>,
}

impl OutputsStep {
    fn release(&self) {
        crate::outputs::release(&self.bundle, &mut |link| {
            let (reason, enforcement) = if link.refused {
                ("left out of the host directory", "refused")
            } else {
                ("kept in the host directory", "audit")
            };
            let event = self
                .ctx
                .violation(
                    &self.id,
                    "filesystem.outputs.symlinks",
                    &format!("a symlink pointing out of output {}: {reason}", link.zone),
                    enforcement,
                )
                .detail("zone", link.zone)
                .detail("path", link.path)
                .detail("target", link.target)
                .build();
            self.output.submit(event);
        });
    }
}

/// How a teardown runs.
pub struct Teardown<'a> {
    /// The shim's reaper (nft runs through it).
    pub reaper: &'a Reaper,
    /// The sandbox process has exited.
    pub sandbox_gone: bool,
    /// Delete: a failed `runsc delete` of a live sandbox stops the teardown (and is returned,
    /// the rest kept for a retry). Otherwise (a failed create or start) it is logged and the
    /// teardown goes on.
    pub strict: bool,
}

/// The steps, in the order they were made.
#[derive(Default)]
pub struct Undo {
    steps: Vec<Step>,
}

impl Undo {
    /// Records something made.
    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Releases everything, last made first.
    pub async fn run(&mut self, how: &Teardown<'_>) -> Result<()> {
        while let Some(step) = self.steps.pop() {
            if let Err(e) = release(&step, how).await {
                if how.strict {
                    self.steps.push(step);
                    return Err(e);
                }
                warn!("releasing {}: {e}", step.name());
            }
        }
        Ok(())
    }
}

async fn release(step: &Step, how: &Teardown<'_>) -> Result<()> {
    match step {
        Step::HostBinds(bundle) => crate::hostbind::release(bundle),
        Step::Rootfs(bundle) => crate::rootfs::unmount(bundle),
        Step::Outputs(o) => o.release(),
        Step::Tools(bundle) => crate::tools::release(bundle),
        Step::SeccompExec(bundle) => crate::seccomp::exec::release(bundle),
        Step::File(path) => {
            let _ = std::fs::remove_file(path);
        }
        Step::AuditSink(audit) => audit.shutdown(),
        Step::Network(network) => network.teardown(how.reaper).await,
        Step::Stdio(process) => process.io.lock().await.shutdown().await,
        Step::RuntimeLog(runtime, id) => runtime.remove_log(id),
        Step::RuntimeState {
            runtime,
            id,
            poststop_hooks,
            cgroup,
        } => {
            let emptied = cgroup
                .as_deref()
                .is_none_or(|c| crate::cgroup::holds_no_process(Path::new(crate::cgroup::ROOT), c));
            if how.sandbox_gone && !poststop_hooks && emptied {
                runtime.forget_dead(id);
                return Ok(());
            }
            match runtime.delete(id).await {
                Err(_) if how.sandbox_gone => {
                    runtime.forget_dead(id);
                }
                other => other?,
            }
        }
        Step::ReaperWatch(pid) => how.reaper.forget(*pid),
    }
    Ok(())
}
