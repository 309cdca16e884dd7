//! Kill: a signal to the init (all of the container's processes with `all`) or to one exec.
//! A process that has exited, or whose sandbox has died, is NotFound: containerd and kubelet
//! take that as "already stopped".

use containerd_shim_protos::api;
use tracing::info;

use super::TaskService;
use crate::container::Container;
use crate::error::{Result, ShimError};
use crate::process::{ProcessRef, Status};
use crate::runsc::KillOpts;

impl TaskService {
    pub(super) async fn kill_process(&self, req: api::KillRequest, actor: &str) -> Result<()> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let gone = || {
            ShimError::NotFound(format!(
                "process {} of {:?} already finished",
                p.label(),
                c.id
            ))
        };
        if p.status() == Status::Stopped || c.sandbox.is_gone() {
            return Err(gone());
        }
        let res = match &p {
            ProcessRef::Init(_) => {
                let opts = KillOpts {
                    signal: req.signal,
                    all: req.all,
                    pid: None,
                };
                c.runtime.kill(&c.id, opts).await
            }
            ProcessRef::Exec(exec) => {
                if exec.status() == Status::Created {
                    return Err(ShimError::FailedPrecondition(format!(
                        "exec {:?} is not started",
                        req.exec_id
                    )));
                }
                kill_exec(&c, exec, req.signal).await
            }
        };
        info!(container = %c.id, exec = %req.exec_id, signal = req.signal, all = req.all, "kill");
        let mut b = c.ctx.kill(&c.id, req.signal as i32, req.all, actor);
        if !req.exec_id.is_empty() {
            b = b.detail("exec_id", req.exec_id.clone());
        }
        self.record(b.build());
        match res {
            // It ended (or its sandbox died) while runsc was asked.
            Err(_) if p.status() == Status::Stopped || c.sandbox.is_gone() => Err(gone()),
            other => other,
        }
    }
}

/// Signals an exec: through runsc by its pid in the sandbox once known, else through the
/// foreground `runsc exec`, which forwards signals to its process.
async fn kill_exec(c: &Container, exec: &crate::process::ExecProcess, signal: u32) -> Result<()> {
    if let Some(ipid) = exec.internal_pid() {
        let opts = KillOpts {
            signal,
            all: false,
            pid: Some(ipid),
        };
        return c.runtime.kill(&c.id, opts).await;
    }
    let sig = nix::sys::signal::Signal::try_from(signal as i32)
        .map_err(|_| ShimError::InvalidArgument(format!("invalid signal {signal}")))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(exec.pid() as i32), sig)
        .map_err(|e| ShimError::io("signal runsc exec", std::io::Error::from(e)))
}
