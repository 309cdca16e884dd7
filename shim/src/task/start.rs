//! Start: the init (`runsc start`, after the shim's startContainer hooks) or an exec (a
//! foreground `runsc exec`). A process whose start failed never runs: what it held is released
//! at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::topics;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::TaskService;
use crate::bundle::exec_file;
use crate::container::Container;
use crate::error::{Result, ShimError};
use crate::process::{ExecProcess, InitProcess, ProcessRef, Status};
use crate::reaper::Exit;
use crate::runsc::{ChildStdio, ExecOpts};
use crate::sandbox::undo::Teardown;
use crate::stdio::ProcessIo;

impl TaskService {
    pub(super) async fn start_process(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        p.check_startable()?;
        let res = match &p {
            ProcessRef::Init(init) => self.start_init(&c, init).await,
            ProcessRef::Exec(exec) => self.start_exec(&c, exec).await,
        };
        if let Err(e) = &res {
            self.release_after_failed_start(&c, &p, e).await;
        }
        p.settle();
        let pid = res?;
        match &p {
            ProcessRef::Init(_) => {
                self.record(c.ctx.start(&c.id).build());
                let mut e = ev::TaskStart::new();
                e.container_id = c.id.clone();
                e.pid = pid;
                self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(e));
            }
            ProcessRef::Exec(exec) => {
                let argv = exec_argv(&c, &exec.exec_id);
                self.record(c.ctx.exec(&c.id, &exec.exec_id, argv).build());
                let mut e = ev::TaskExecStarted::new();
                e.container_id = c.id.clone();
                e.exec_id = exec.exec_id.clone();
                e.pid = pid;
                self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e));
            }
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// A process whose start failed will never run: free what it holds now rather than when
    /// (or if) the client deletes the task — for an init, the container's whole teardown. The
    /// task stays, STOPPED, so the client still sees the error and can delete it.
    async fn release_after_failed_start(&self, c: &Container, p: &ProcessRef, why: &ShimError) {
        warn!(container = %c.id, process = %p.label(), "start failed, releasing its resources: {why}");
        p.io.lock().await.shutdown().await;
        let ProcessRef::Init(init) = p else {
            return;
        };
        let how = Teardown {
            reaper: &self.reaper,
            sandbox_gone: false,
            strict: false,
        };
        let _ = c.teardown(&how).await;
        if !c.is_root() {
            // No sandbox process exit will come for a joined container: record one.
            init.mark_exited(Exit {
                code: 128,
                at: SystemTime::now(),
            });
        }
    }

    async fn start_init(&self, c: &Arc<Container>, p: &Arc<InitProcess>) -> Result<u32> {
        if !c.start_hooks.is_empty() {
            // startContainer hooks: before the container's process runs; a failure fails Start
            // (and the caller releases the sandbox, which runs runsc's poststop hooks).
            let netns = PathBuf::from(format!("/proc/{}/ns/net", p.pid()));
            crate::hooks::run(
                "startContainer",
                &c.start_hooks,
                &c.hook_state("created", p.pid()),
                Some(&netns),
                |r| self.record(crate::hooks::audit_event(&c.ctx, &c.id, &r)),
            )
            .await?;
        }
        let stdio = p
            .start_stdio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        c.runtime.start(&c.id, stdio).await?;
        let pid = p.pid();
        p.mark_started(pid)?;
        if !c.is_root() {
            // A container that joined a pod: its exit comes from `runsc wait`.
            let rx = self.wait_for_member(c, pid)?;
            self.watch_exit(c.clone(), ProcessRef::Init(p.clone()), rx);
            self.watch_memory(c.clone());
        }
        if let Some(limit) = c.timeout {
            self.enforce_timeout(c.clone(), limit);
        }
        info!(container = %c.id, pid, "started");
        Ok(pid)
    }

    /// The exit of a pod member's init, from `runsc wait`.
    fn wait_for_member(&self, c: &Container, pid: u32) -> Result<oneshot::Receiver<Exit>> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| ShimError::io("create pipe", std::io::Error::from(e)))?;
        let (_wpid, exit) = c.runtime.spawn_wait(&c.id, w)?;
        let cgroup = c.sandbox.cgroups_path.clone();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let out = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut s = String::new();
                let _ = std::fs::File::from(r).read_to_string(&mut s);
                s
            })
            .await
            .unwrap_or_default();
            let waited = exit.await.ok();
            let code = serde_json::from_str::<Value>(out.trim())
                .ok()
                .and_then(|v| v["exitStatus"].as_u64())
                .map(|c| c as u32)
                .unwrap_or_else(|| {
                    // No status because the whole sandbox died (OOM-killed, say): the
                    // container was killed with it, as SIGKILL would.
                    if crate::sandbox::process_gone(pid, cgroup.as_deref()) {
                        warn!("runsc wait gave no exit status: the sandbox died; reporting 137");
                        137
                    } else {
                        warn!(
                            "runsc wait gave no exit status ({:?}); reporting 255",
                            out.trim()
                        );
                        255
                    }
                });
            let _ = tx.send(Exit {
                code,
                at: waited.map(|w| w.at).unwrap_or_else(SystemTime::now),
            });
        });
        Ok(rx)
    }

    async fn start_exec(&self, c: &Arc<Container>, p: &Arc<ExecProcess>) -> Result<u32> {
        if c.init.status() != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot start exec {:?}: container {:?} is {:?}",
                p.exec_id,
                c.id,
                c.init.status()
            )));
        }
        let process_file = exec_file(&c.bundle, &p.exec_id, "process.json");
        let internal_pid_file = exec_file(&c.bundle, &p.exec_id, "pid");
        // A foreground `runsc exec` ignores --console-socket and uses its own stdio as the
        // process's terminal, so the shim opens the pty and keeps the master.
        let (stdio, master) = if p.paths.terminal {
            let pty = nix::pty::openpty(None, None)
                .map_err(|e| ShimError::io("open a pty", std::io::Error::from(e)))?;
            let dup =
                |fd: &std::os::fd::OwnedFd| fd.try_clone().map_err(|e| ShimError::io("dup pty", e));
            let stdio = ChildStdio {
                stdin: Some(dup(&pty.slave)?),
                stdout: Some(dup(&pty.slave)?),
                stderr: Some(pty.slave),
            };
            (stdio, Some(std::fs::File::from(pty.master)))
        } else {
            let (stdio, io) =
                ProcessIo::plain(&p.paths, &c.id, &self.namespace, &self.reaper).await?;
            *p.io.lock().await = io;
            (stdio, None)
        };
        let opts = ExecOpts {
            process_file: &process_file,
            internal_pid_file: &internal_pid_file,
            stdio,
        };
        let (pid, exit) = c.runtime.spawn_exec(&c.id, opts)?;
        if let Some(master) = master {
            p.io.lock().await.attach_console(&p.paths, master)?;
        }
        p.mark_started(pid)?;
        self.watch_exit(c.clone(), ProcessRef::Exec(p.clone()), exit);
        // runsc writes the in-sandbox pid once the process runs; `kill` wants it.
        let exec = p.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                if let Some(ipid) = std::fs::read_to_string(&internal_pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    *exec.internal_pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(ipid);
                    return;
                }
                if exec.status() == Status::Stopped {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        info!(container = %c.id, exec = %p.exec_id, pid, "exec started");
        Ok(pid)
    }
}

/// The argv an exec was started with, for its audit event: the command's, not the seccomp
/// helper's it starts through.
fn exec_argv(c: &Container, exec_id: &str) -> Vec<String> {
    let args: Vec<String> = std::fs::read(exec_file(&c.bundle, exec_id, "process.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["args"].as_array().cloned())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if crate::seccomp::exec::has_helper(&c.bundle) {
        crate::seccomp::exec::unwrap_args(args)
    } else {
        args
    }
}
