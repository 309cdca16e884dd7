//! Start, exec, kill, delete, pause and resume, and the exit of every process (with its
//! audit event and containerd's TaskExit).

use super::*;

impl TaskService {
    /// Publishes the exit of `p` once its Start call is over and its output drained.
    pub(super) fn watch_exit(
        &self,
        c: Arc<Container>,
        p: Arc<Process>,
        rx: oneshot::Receiver<Exit>,
    ) {
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        let output = self.audit.clone();
        tokio::spawn(async move {
            let exit = rx.await.unwrap_or(Exit {
                code: 255,
                at: SystemTime::now(),
            });
            p.wait_settled().await;
            p.io.lock().await.drain(DRAIN).await;
            if !p.mark_exited(exit) {
                return;
            }
            if p.exec_id.is_empty() && exit.code == 137 {
                // SIGKILLed: by the host's OOM killer, if the sandbox's cgroup says so. In a
                // pod every container dies with the sandbox, and each gets its TaskOOM (CRI
                // reports OOMKilled per container).
                use std::sync::atomic::Ordering;
                let ooms = c.cgroups_path.as_deref().and_then(crate::cgroup::oom_kills);
                if ooms.unwrap_or(0) > 0 {
                    c.sandbox_oom.store(true, Ordering::SeqCst);
                }
                if c.sandbox_oom.load(Ordering::SeqCst) {
                    warn!(container = %c.id, "out of memory: the kernel's OOM killer ended the sandbox");
                    c.set_exit_reason(ExitReason::Oom);
                    output.submit(c.audit.ctx.oom(&c.id).build());
                    let mut e = ev::TaskOOM::new();
                    e.container_id = c.id.clone();
                    publish(
                        &publisher,
                        &namespace,
                        topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(e),
                    )
                    .await;
                }
            }
            let reason = c.exit_reason_for(&p, exit.code);
            info!(container = %c.id, exec = %p.exec_id, code = exit.code, ?reason, "exited");
            let info = if exit.code > 128 {
                ExitInfo::signaled((exit.code - 128) as i32)
            } else {
                ExitInfo::exited(exit.code as i32)
            };
            let mut b = c.audit.ctx.exit(&c.id, info.with_reason(reason));
            if !p.exec_id.is_empty() {
                b = b.detail("exec_id", p.exec_id.clone());
            }
            output.submit(b.build());
            let mut e = ev::TaskExit::new();
            e.container_id = c.id.clone();
            e.id = if p.exec_id.is_empty() {
                c.id.clone()
            } else {
                p.exec_id.clone()
            };
            e.pid = p.pid();
            e.exit_status = exit.code;
            e.exited_at = ts(exit.at);
            publish(
                &publisher,
                &namespace,
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(e),
            )
            .await;
        });
    }

    pub(super) async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        p.check_startable()?;
        let res = if req.exec_id.is_empty() {
            self.start_init(&c, &p).await
        } else {
            self.start_exec(&c, &p).await
        };
        if let Err(e) = &res {
            self.release_after_failed_start(&c, &p, e).await;
        }
        p.settle();
        let pid = res?;
        if req.exec_id.is_empty() {
            self.record(c.audit.ctx.start(&c.id).build());
            let mut e = ev::TaskStart::new();
            e.container_id = c.id.clone();
            e.pid = pid;
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(e))
                .await;
        } else {
            let argv = std::fs::read(exec_file(&c.bundle, &req.exec_id, "process.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| v["args"].as_array().cloned())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            self.record(c.audit.ctx.exec(&c.id, &req.exec_id, argv).build());
            let mut e = ev::TaskExecStarted::new();
            e.container_id = c.id.clone();
            e.exec_id = req.exec_id.clone();
            e.pid = pid;
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e))
                .await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    /// A process whose start failed will never run: free the sandbox, mounts and stdio now
    /// rather than when (or if) the client deletes the task. The task stays, STOPPED, so the
    /// client still sees the error and can delete it.
    pub(super) async fn release_after_failed_start(
        &self,
        c: &Arc<Container>,
        p: &Arc<Process>,
        why: &ShimError,
    ) {
        warn!(container = %c.id, exec = %p.exec_id, "start failed, releasing its resources: {why}");
        p.io.lock().await.shutdown().await;
        if !p.exec_id.is_empty() {
            return;
        }
        if let Err(e) = c.runsc.delete(&c.id, &c.flags).await {
            warn!(container = %c.id, "runsc delete after failed start: {e}");
        }
        container::release_host_mounts(&c.bundle, c.rootfs_mounted);
        if !c.is_root() {
            // No sandbox process exit will come for a joined container: record one.
            p.mark_exited(Exit {
                code: 128,
                at: SystemTime::now(),
            });
        }
    }

    pub(super) async fn start_init(&self, c: &Arc<Container>, p: &Arc<Process>) -> Result<u32> {
        if !c.start_hooks.is_empty() {
            // startContainer hooks: before the container's process runs; a failure fails Start
            // (and the caller releases the sandbox, which runs runsc's poststop hooks).
            let netns = PathBuf::from(format!("/proc/{}/ns/net", p.pid()));
            crate::hooks::run(
                "startContainer",
                &c.start_hooks,
                &c.hook_state("created", p.pid()),
                Some(&netns),
                |r| self.record(super::create::hook_event(&c.audit.ctx, &c.id, &r)),
            )
            .await?;
        }
        let stdio = p
            .start_stdio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        c.runsc.start(&c.id, &c.flags, stdio).await?;
        let pid = p.pid();
        p.mark_started(pid)?;
        if !c.is_root() {
            // A container that joined a pod: its exit comes from `runsc wait`.
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| ShimError::io("create pipe", std::io::Error::from(e)))?;
            let (_wpid, exit) = c.runsc.spawn_wait(&c.id, &c.flags, w)?;
            let cgroup = c.cgroups_path.clone();
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
                        if sandbox_died(pid, cgroup.as_deref()) {
                            warn!(
                                "runsc wait gave no exit status: the sandbox died; reporting 137"
                            );
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
            self.watch_exit(c.clone(), p.clone(), rx);
        }
        if let Some(limit) = c.timeout {
            self.enforce_timeout(c.clone(), p.clone(), limit);
        }
        info!(container = %c.id, pid, "started");
        Ok(pid)
    }

    /// Kills the container when its policy's wall-clock limit is reached.
    pub(super) fn enforce_timeout(&self, c: Arc<Container>, p: Arc<Process>, limit: Duration) {
        let output = self.audit.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(limit, p.wait()).await.is_ok() {
                return;
            }
            warn!(
                container = %c.id,
                policy = %c.policy,
                limit_s = limit.as_secs_f64(),
                "timeout: the policy's wall-clock limit was reached; killing the container"
            );
            c.set_exit_reason(ExitReason::Timeout);
            output.submit(c.audit.ctx.timeout(&c.id, limit.as_secs()).build());
            if let Err(e) = c.runsc.kill(&c.id, 9, true, None, &c.flags).await {
                if p.status() != Status::Stopped {
                    warn!(container = %c.id, "kill at timeout: {e}");
                }
            }
        });
    }

    pub(super) async fn start_exec(&self, c: &Arc<Container>, p: &Arc<Process>) -> Result<u32> {
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
            let stdio = crate::runsc::ChildStdio {
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
        let (pid, exit) =
            c.runsc
                .spawn_exec(&c.id, &process_file, &internal_pid_file, stdio, &c.flags)?;
        if let Some(master) = master {
            p.io.lock().await.attach_console(&p.paths, master)?;
        }
        p.mark_started(pid)?;
        self.watch_exit(c.clone(), p.clone(), exit);
        // runsc writes the in-sandbox pid once the process runs; `kill` wants it.
        let proc2 = p.clone();
        tokio::spawn(async move {
            for _ in 0..100 {
                if let Some(ipid) = std::fs::read_to_string(&internal_pid_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                {
                    *proc2.internal_pid.lock().unwrap_or_else(|e| e.into_inner()) = Some(ipid);
                    return;
                }
                if proc2.status() == Status::Stopped {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        info!(container = %c.id, exec = %p.exec_id, pid, "exec started");
        Ok(pid)
    }

    pub(super) async fn do_kill(&self, req: api::KillRequest, actor: &str) -> Result<()> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.status() == Status::Stopped {
            return Err(ShimError::NotFound(format!(
                "process {} of {:?} already finished",
                label(&p),
                c.id
            )));
        }
        if !req.exec_id.is_empty() && p.status() == Status::Created {
            return Err(ShimError::FailedPrecondition(format!(
                "exec {:?} is not started",
                req.exec_id
            )));
        }
        let ipid = *p.internal_pid.lock().unwrap_or_else(|e| e.into_inner());
        let res = if req.exec_id.is_empty() {
            c.runsc
                .kill(&c.id, req.signal, req.all, None, &c.flags)
                .await
        } else if let Some(ipid) = ipid {
            c.runsc
                .kill(&c.id, req.signal, false, Some(ipid), &c.flags)
                .await
        } else {
            // Not yet known: the foreground `runsc exec` forwards signals to its process.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid() as i32),
                nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
                    ShimError::InvalidArgument(format!("invalid signal {}", req.signal))
                })?,
            )
            .map_err(|e| ShimError::io("signal runsc exec", std::io::Error::from(e)))
        };
        info!(container = %c.id, exec = %req.exec_id, signal = req.signal, all = req.all, "kill");
        let mut b = c.audit.ctx.kill(&c.id, req.signal as i32, req.all, actor);
        if !req.exec_id.is_empty() {
            b = b.detail("exec_id", req.exec_id.clone());
        }
        self.record(b.build());
        match res {
            Err(_) if p.status() == Status::Stopped => Err(ShimError::NotFound(format!(
                "process {} of {:?} already finished",
                label(&p),
                c.id
            ))),
            other => other,
        }
    }

    pub(super) async fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        p.check_deletable()?;
        if !req.exec_id.is_empty() {
            c.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.exec_id);
            let exit = p.exit();
            p.io.lock().await.shutdown().await;
            for f in ["process.json", "pid"] {
                let _ = std::fs::remove_file(exec_file(&c.bundle, &p.exec_id, f));
            }
            return Ok(api::DeleteResponse {
                pid: p.pid(),
                exit_status: exit.map(|e| e.code).unwrap_or(0),
                exited_at: ts(exit.map(|e| e.at).unwrap_or_else(SystemTime::now)),
                ..Default::default()
            });
        }
        if c.is_root() {
            let members: Vec<String> = self
                .map()
                .values()
                .filter(|o| o.sandbox_id == c.id && o.id != c.id)
                .map(|o| o.id.clone())
                .collect();
            if !members.is_empty() {
                warn!(container = %c.id, "deleting pod sandbox while containers remain: {members:?}");
            }
        }
        c.runsc.delete(&c.id, &c.flags).await?;
        if let Some(n) = &c.network {
            n.teardown(&self.reaper).await;
        }
        // A created-but-never-started container has no exit yet: deleting it is its end.
        p.settle();
        let exit = match p.exit() {
            Some(e) => e,
            None => {
                let e = Exit {
                    code: 137,
                    at: SystemTime::now(),
                };
                p.mark_exited(e);
                e
            }
        };
        p.io.lock().await.shutdown().await;
        container::release_host_mounts(&c.bundle, c.rootfs_mounted);
        c.runsc.remove_log(&c.id);
        if let Some(cgroup) = &c.own_cgroups_path {
            let removed = crate::cgroup::remove_leftover(Path::new("/sys/fs/cgroup"), cgroup);
            if !removed.is_empty() {
                info!(container = %c.id, cgroup, "removed the cgroup runsc left (its sandbox had died)");
            }
        }
        let _ = std::fs::remove_file(c.bundle.join(container::STATE_FILE));
        self.record(c.audit.ctx.delete(&c.id).build());
        if c.is_root() {
            self.reaper.forget(p.pid() as i32);
            c.audit.shutdown();
            let _ = std::fs::remove_file(c.bundle.join("safehouse-pod-init.json"));
        }
        self.map().remove(&c.id);
        unregister(&self.namespace, &c.id);
        info!(container = %c.id, code = exit.code, "deleted");
        let mut e = ev::TaskDelete::new();
        e.container_id = c.id.clone();
        e.id = c.id.clone();
        e.pid = p.pid();
        e.exit_status = exit.code;
        e.exited_at = ts(exit.at);
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(e))
            .await;
        Ok(api::DeleteResponse {
            pid: p.pid(),
            exit_status: exit.code,
            exited_at: ts(exit.at),
            ..Default::default()
        })
    }

    pub(super) async fn do_exec(&self, req: api::ExecProcessRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        if req.exec_id.is_empty() || req.exec_id.contains('/') {
            return Err(ShimError::InvalidArgument(format!(
                "invalid exec id {:?}",
                req.exec_id
            )));
        }
        if c.init.status() != Status::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container {:?} is {:?}, not running",
                c.id,
                c.init.status()
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument("exec request has no process spec".into()))?;
        let process: Value = serde_json::from_slice(&spec.value).map_err(|e| {
            ShimError::InvalidArgument(format!("exec process spec is not valid JSON: {e}"))
        })?;
        if process["args"].as_array().is_none_or(|a| a.is_empty()) {
            return Err(ShimError::InvalidArgument(
                "exec process spec has no args".into(),
            ));
        }
        // The container's spec as the policy left it (Create rewrote config.json).
        let spec_path = c.bundle.join("config.json");
        let container_process = std::fs::read(&spec_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| v["process"].clone())
            .filter(Value::is_object)
            .ok_or_else(|| {
                ShimError::FailedPrecondition(format!(
                    "exec in {:?}: cannot read the container's confined spec {}",
                    c.id,
                    spec_path.display()
                ))
            })?;
        {
            let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {:?} already exists in {:?}",
                    req.exec_id, c.id
                )));
            }
            let file = exec_file(&c.bundle, &req.exec_id, "process.json");
            let confined = confine::confine_exec(&container_process, &process);
            let bytes = serde_json::to_vec(&confined)
                .map_err(|e| ShimError::Internal(format!("encode exec process spec: {e}")))?;
            std::fs::write(&file, bytes)
                .map_err(|e| ShimError::io(format!("write {}", file.display()), e))?;
            let p = Process::new(
                &req.exec_id,
                io_paths(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            );
            execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        let mut e = ev::TaskExecAdded::new();
        e.container_id = c.id.clone();
        e.exec_id = req.exec_id.clone();
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e))
            .await;
        Ok(())
    }

    pub(super) async fn do_pause(&self, id: &str, resume: bool) -> Result<()> {
        let c = self.get(id)?;
        let want = if resume {
            Status::Paused
        } else {
            Status::Running
        };
        if c.init.status() != want {
            return Err(ShimError::FailedPrecondition(format!(
                "cannot {} container {id:?}: it is {:?}",
                if resume { "resume" } else { "pause" },
                c.init.status()
            )));
        }
        c.runsc.pause(id, resume, &c.flags).await?;
        c.init.mark_paused(!resume)?;
        self.record(if resume {
            c.audit.ctx.resume(id).build()
        } else {
            c.audit.ctx.pause(id).build()
        });
        if resume {
            let mut e = ev::TaskResumed::new();
            e.container_id = id.into();
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e))
                .await;
        } else {
            let mut e = ev::TaskPaused::new();
            e.container_id = id.into();
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e))
                .await;
        }
        Ok(())
    }

    /// New cgroup limits for a running container. runsc (20240729) has no `update` command,
    /// and the host kernel enforces gVisor's limits on the host cgroup anyway, so the shim
    /// writes the container's cgroup itself, after tightening the request to the policy's
    /// ceilings exactly as Create does (an Update never loosens the policy).
    pub(super) async fn do_update(&self, req: api::UpdateTaskRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        self.running(&c)?;
        let any = req.resources.as_ref().ok_or_else(|| {
            ShimError::InvalidArgument(format!("update of {:?}: no resources given", req.id))
        })?;
        let mut resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| {
            ShimError::InvalidArgument(format!(
                "update of {:?}: resources ({}) are not Linux resources in JSON: {e}",
                req.id, any.type_url
            ))
        })?;
        safehouse_policy::compile::linux::tighten_resources(&c.resource_policy, &mut resources);
        let cgroup = c.own_cgroups_path.as_deref().ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "update of {:?}: its spec has no linux.cgroupsPath to apply limits to",
                req.id
            ))
        })?;
        let written =
            crate::cgroup::apply_limits(std::path::Path::new("/sys/fs/cgroup"), cgroup, &resources)
                .map_err(|e| {
                    ShimError::FailedPrecondition(format!("update of {:?}: {e}", req.id))
                })?;
        info!(container = %c.id, cgroup, files = written.len(), policy = %c.policy, "resources updated");
        Ok(())
    }
}

/// True when the sandbox process `pid` is gone (or a zombie), or the OOM killer struck in the
/// sandbox's cgroup.
fn sandbox_died(pid: u32, cgroup: Option<&str>) -> bool {
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
