//! The containerd Task API: what each call does, in one place.
//!
//! Every call resolves its container and process, checks the state machine, drives runsc
//! through [`crate::runsc::Runsc`] and publishes the event containerd expects. Errors carry the
//! ttrpc code containerd acts on (see [`crate::error`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::protobuf::{
    well_known_types::any::Any, Message, MessageDyn, MessageField,
};
use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{self, context::Context, r#async::TtrpcContext};
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::{info, instrument, warn};

use crate::audit::{self, AuditOutput, AuditRules, KillRequest, SandboxAudit};
use crate::confine;
use crate::container::{self, Container, PersistedState, SandboxRole};
use crate::error::{Result, ShimError};
use crate::node::{Node, RuntimeEnv};
use crate::process::{Process, Status};
use crate::reaper::{Exit, Reaper};
use crate::runsc::{Runsc, SandboxFlags};
use crate::stats;
use crate::stdio::{ConsoleSocket, IoPaths, ProcessIo};
use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::{ExitInfo, ExitReason};
use tokio::sync::mpsc;

/// How long output copiers may take to drain after an exit.
const DRAIN: Duration = Duration::from_secs(2);

/// The Task service of one shim process (one sandbox: a pod, or a single container).
pub struct TaskService {
    namespace: String,
    publisher: Arc<RemotePublisher>,
    reaper: Reaper,
    node: Node,
    containers: Arc<Mutex<HashMap<String, Arc<Container>>>>,
    exit: Arc<ExitSignal>,
    audit: Arc<AuditOutput>,
    kills: mpsc::UnboundedSender<KillRequest>,
}

fn ts(
    t: SystemTime,
) -> MessageField<containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut stamp = containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp::new();
    stamp.seconds = d.as_secs() as i64;
    stamp.nanos = d.subsec_nanos() as i32;
    MessageField::some(stamp)
}

fn io_paths(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> IoPaths {
    IoPaths {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    }
}

impl TaskService {
    /// A service for containerd namespace `namespace`.
    pub fn new(
        namespace: &str,
        publisher: RemotePublisher,
        reaper: Reaper,
        node: Node,
        exit: Arc<ExitSignal>,
    ) -> TaskService {
        let (kills, kill_rx) = mpsc::unbounded_channel();
        let service = TaskService {
            namespace: namespace.to_string(),
            publisher: Arc::new(publisher),
            reaper,
            node,
            containers: Arc::new(Mutex::new(HashMap::new())),
            exit,
            audit: Arc::new(AuditOutput::default()),
            kills,
        };
        service.carry_out_violation_kills(kill_rx);
        service
    }

    /// Kills sandboxes whose audit pump found a violation of an `onViolation: kill` policy.
    fn carry_out_violation_kills(&self, mut rx: mpsc::UnboundedReceiver<KillRequest>) {
        let containers = self.containers.clone();
        let output = self.audit.clone();
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let root = containers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&req.sandbox_id)
                    .cloned();
                let Some(c) = root else { continue };
                warn!(container = %c.id, reason = %req.reason, "policy violation: killing the sandbox");
                c.set_exit_reason(ExitReason::Violation);
                output.submit(
                    c.audit
                        .ctx
                        .kill(&c.id, 9, true, "safehouse (policy violation)")
                        .message(&req.reason)
                        .build(),
                );
                if let Err(e) = c.runsc.kill(&c.id, 9, true, None, &c.flags).await {
                    if c.init.status() != Status::Stopped {
                        warn!(container = %c.id, "kill after violation: {e}");
                    }
                }
            }
        });
    }

    /// Records a lifecycle event.
    fn record(&self, event: safehouse_audit::AuditEvent) {
        self.audit.submit(event);
    }

    /// SIGTERM ends an idle shim (no container left); one that still serves containers keeps
    /// them: only containerd's Shutdown, or their deletion, ends it.
    pub fn exit_on_sigterm_when_idle(&self) {
        let containers = self.containers.clone();
        let exit = self.exit.clone();
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            while term.recv().await.is_some() {
                let left = containers.lock().unwrap_or_else(|p| p.into_inner()).len();
                if left == 0 {
                    info!("SIGTERM with no container left: exiting");
                    exit.signal();
                    return;
                }
                warn!(left, "SIGTERM ignored: containers still running");
            }
        });
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(format!("container {id:?} not found")))
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, event).await;
    }

    async fn do_create(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        let id = req.id.clone();
        if id.is_empty() || id.contains('/') || id.len() > 255 {
            return Err(ShimError::InvalidArgument(format!(
                "invalid container id {id:?}"
            )));
        }
        if self.map().contains_key(&id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {id:?} already exists"
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported by Safehouse yet".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let env = self
            .node
            .env_for(
                options_config_path(req.options.as_ref())?.as_deref(),
                &self.reaper,
            )
            .await?;
        let spec_path = bundle.join("config.json");
        let spec_text = std::fs::read(&spec_path)
            .map_err(|e| ShimError::io(format!("read {}", spec_path.display()), e))?;
        let spec: Value = serde_json::from_slice(&spec_text).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "{}: not a valid OCI spec: {e}",
                spec_path.display()
            ))
        })?;

        let runsc = env.runsc(&self.namespace, &self.reaper, &bundle)?;
        let config_name = env
            .config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<built-in defaults>".into());
        let (policy, source) = confine::select(&env.config.policy, &spec, &config_name)?;
        let compiled = confine::confine_bundle(&policy, &bundle, &spec_text)?;
        info!(container = %id, policy = %compiled.name, digest = %compiled.digest, ?source, "policy applied");
        let (sandbox_id, flags) = match container::sandbox_role(&spec, &id) {
            SandboxRole::Root => {
                let mut flags = if confine::allows_network(&compiled) {
                    env.sandbox_flags(container::netns_path(&spec))?
                } else {
                    SandboxFlags {
                        network: "none".into(),
                        netns: None,
                        extra: Vec::new(),
                    }
                };
                flags.extra = confine::policy_flags(&compiled, &env.probe)?;
                (id.clone(), flags)
            }
            SandboxRole::Join(sb) => {
                let root = self.get(&sb).map_err(|_| {
                    ShimError::FailedPrecondition(format!(
                        "container {id:?} joins pod sandbox {sb:?}, which this shim does not serve (create the sandbox container first)"
                    ))
                })?;
                (sb, root.flags.clone())
            }
        };

        crate::hostbind::harden(&bundle).inspect_err(|_| crate::hostbind::release(&bundle))?;
        let rootfs_mounted = match container::mount_rootfs(&bundle, &req.rootfs).await {
            Ok(m) => m,
            Err(e) => {
                crate::hostbind::release(&bundle);
                return Err(e);
            }
        };
        let mut flags = flags;
        let sandbox_audit = match self.start_audit(
            &env,
            &spec,
            &sandbox_id,
            &id,
            &compiled,
            &bundle,
            &mut flags,
        ) {
            Ok(a) => a,
            Err(e) => {
                if rootfs_mounted {
                    container::unmount_rootfs(&bundle);
                }
                crate::hostbind::release(&bundle);
                return Err(e);
            }
        };
        let paths = io_paths(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let init = Arc::new(Process::new("", paths.clone()));
        let pid_file = bundle.join("init.pid");
        let created = self
            .create_in_runsc(&id, &bundle, &pid_file, &runsc, &flags, &init, &paths)
            .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                // Leave nothing behind: runsc state, sandbox, mounts, stdio.
                if let Err(de) = runsc.delete(&id, &flags).await {
                    if de.code() != ttrpc::Code::NOT_FOUND {
                        warn!(container = %id, "cleanup after failed create: {de}");
                    }
                }
                init.io.lock().await.shutdown().await;
                if rootfs_mounted {
                    container::unmount_rootfs(&bundle);
                }
                crate::hostbind::release(&bundle);
                if sandbox_id == id {
                    sandbox_audit.shutdown();
                }
                runsc.remove_log(&id);
                return Err(e);
            }
        };
        init.set_pid(pid);
        PersistedState {
            binary: env.config.binary.clone(),
            root: runsc.root().to_path_buf(),
            global: env.global.clone(),
            network: flags.network.clone(),
            netns: flags.netns.clone(),
            pid,
            rootfs_mounted,
        }
        .save(&bundle)?;

        let c = Arc::new(Container {
            id: id.clone(),
            bundle: bundle.clone(),
            sandbox_id: sandbox_id.clone(),
            flags,
            runsc,
            rootfs_mounted,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            policy: compiled.name.clone(),
            policy_digest: compiled.digest.clone(),
            timeout: compiled.timeout,
            audit: sandbox_audit.clone(),
            cgroups_path: spec["linux"]["cgroupsPath"].as_str().map(String::from),
            exit_reason: Mutex::new(None),
        });
        self.record(
            sandbox_audit
                .ctx
                .create(
                    &id,
                    vec![format!(
                        "confined by policy {} ({})",
                        compiled.name, compiled.digest
                    )],
                )
                .build(),
        );
        if c.is_root() {
            // The sandbox process is re-parented to us; its exit status is the container's.
            let rx = self.reaper.watch(pid as i32);
            self.watch_exit(c.clone(), init.clone(), rx);
        }
        info!(
            container = %id,
            sandbox = %sandbox_id,
            pid,
            policy = %c.policy,
            digest = %c.policy_digest,
            "created"
        );
        self.map().insert(id.clone(), c);

        let mut e = ev::TaskCreate::new();
        e.container_id = id;
        e.bundle = req.bundle.clone();
        e.rootfs = req.rootfs.clone();
        let mut tio = ev::TaskIO::new();
        tio.stdin = req.stdin.clone();
        tio.stdout = req.stdout.clone();
        tio.stderr = req.stderr.clone();
        tio.terminal = req.terminal;
        e.io = MessageField::some(tio);
        e.pid = pid;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(e))
            .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// The sandbox's audit: a new sink and pump for a sandbox's first container (its runsc flags
    /// gain the pod-init-config), the pod's for a container joining it.
    #[allow(clippy::too_many_arguments)]
    fn start_audit(
        &self,
        env: &RuntimeEnv,
        spec: &Value,
        sandbox_id: &str,
        id: &str,
        compiled: &safehouse_policy::CompiledPolicy,
        bundle: &Path,
        flags: &mut SandboxFlags,
    ) -> Result<Arc<SandboxAudit>> {
        if sandbox_id != id {
            return Ok(self.get(sandbox_id)?.audit.clone());
        }
        self.audit.writer(&env.config.audit.output)?;
        let mut ctx = SandboxContext::new(sandbox_id)
            .with_namespace(&self.namespace)
            .with_policy(&compiled.name, Some(compiled.digest.clone()));
        let ann = &spec["annotations"];
        if let (Some(name), Some(ns)) = (
            ann[container::CRI_SANDBOX_NAME].as_str(),
            ann[container::CRI_SANDBOX_NAMESPACE].as_str(),
        ) {
            ctx = ctx.with_pod(name, ns);
        }
        let (tx, rx) = mpsc::channel(audit::PUMP_QUEUE);
        let (sandbox_audit, flag) = audit::start_sandbox(ctx, compiled, bundle, tx)?;
        if let Some(flag) = flag {
            flags.extra.push(flag);
        }
        let root = spec["root"]["path"].as_str().unwrap_or("rootfs");
        let rules = AuditRules::from_policy(compiled, &bundle.join(root), spec);
        audit::spawn_pump(
            rx,
            sandbox_audit.clone(),
            rules,
            self.audit.clone(),
            self.kills.clone(),
        );
        Ok(sandbox_audit)
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_in_runsc(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        runsc: &Runsc,
        flags: &SandboxFlags,
        init: &Arc<Process>,
        paths: &IoPaths,
    ) -> Result<u32> {
        let (stdio, console) = if paths.terminal {
            let sock = ConsoleSocket::bind(
                &self.node.console_dir(),
                &format!("{}/{id}", self.namespace),
            )?;
            let rx = sock.receive();
            (crate::runsc::ChildStdio::null(), Some((sock, rx)))
        } else {
            let (stdio, io) = ProcessIo::plain(paths, id, &self.namespace, &self.reaper).await?;
            *init.io.lock().await = io;
            (stdio, None)
        };
        let res = runsc
            .create(
                id,
                bundle,
                pid_file,
                console.as_ref().map(|(s, _)| s.path()),
                stdio,
                flags,
            )
            .await;
        if let Some((sock, rx)) = console {
            if res.is_err() {
                sock.cancel();
            }
            let master = recv_console(rx).await;
            res?;
            let mut io = ProcessIo::default();
            io.attach_console(paths, master?)?;
            *init.io.lock().await = io;
        } else {
            res?;
        }
        let pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                ShimError::Internal(format!(
                    "runsc create {id}: no pid in {}",
                    pid_file.display()
                ))
            })?;
        Ok(pid)
    }

    /// Publishes the exit of `p` once its Start call is over and its output drained.
    fn watch_exit(&self, c: Arc<Container>, p: Arc<Process>, rx: oneshot::Receiver<Exit>) {
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
            if p.exec_id.is_empty() && c.is_root() && exit.code == 137 {
                // The sandbox was SIGKILLed: by the host's OOM killer, if its cgroup says so.
                let ooms = c.cgroups_path.as_deref().and_then(crate::cgroup::oom_kills);
                if ooms.unwrap_or(0) > 0 {
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

    async fn do_start(&self, req: api::StartRequest) -> Result<api::StartResponse> {
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
    async fn release_after_failed_start(
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
            if e.code() != ttrpc::Code::NOT_FOUND {
                warn!(container = %c.id, "runsc delete after failed start: {e}");
            }
        }
        if c.rootfs_mounted {
            container::unmount_rootfs(&c.bundle);
        }
        crate::hostbind::release(&c.bundle);
        if !c.is_root() {
            // No sandbox process exit will come for a joined container: record one.
            p.mark_exited(Exit {
                code: 128,
                at: SystemTime::now(),
            });
        }
    }

    async fn start_init(&self, c: &Arc<Container>, p: &Arc<Process>) -> Result<u32> {
        c.runsc.start(&c.id, &c.flags).await?;
        let pid = p.pid();
        p.mark_started(pid)?;
        if !c.is_root() {
            // A container that joined a pod: its exit comes from `runsc wait`.
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| ShimError::io("create pipe", std::io::Error::from(e)))?;
            let (_wpid, exit) = c.runsc.spawn_wait(&c.id, &c.flags, w)?;
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
                        warn!(
                            "runsc wait gave no exit status ({:?}); reporting 255",
                            out.trim()
                        );
                        255
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
    fn enforce_timeout(&self, c: Arc<Container>, p: Arc<Process>, limit: Duration) {
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

    async fn start_exec(&self, c: &Arc<Container>, p: &Arc<Process>) -> Result<u32> {
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

    async fn do_kill(&self, req: api::KillRequest) -> Result<()> {
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
        let mut b = c
            .audit
            .ctx
            .kill(&c.id, req.signal as i32, req.all, "containerd");
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

    async fn do_delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
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
        if let Err(e) = c.runsc.delete(&c.id, &c.flags).await {
            if e.code() != ttrpc::Code::NOT_FOUND {
                return Err(e);
            }
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
        if c.rootfs_mounted {
            container::unmount_rootfs(&c.bundle);
        }
        crate::hostbind::release(&c.bundle);
        c.runsc.remove_log(&c.id);
        let _ = std::fs::remove_file(c.bundle.join(container::STATE_FILE));
        self.record(c.audit.ctx.delete(&c.id).build());
        if c.is_root() {
            self.reaper.forget(p.pid() as i32);
            c.audit.shutdown();
            let _ = std::fs::remove_file(c.bundle.join("safehouse-pod-init.json"));
        }
        self.map().remove(&c.id);
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

    async fn do_exec(&self, req: api::ExecProcessRequest) -> Result<()> {
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
        {
            let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec {:?} already exists in {:?}",
                    req.exec_id, c.id
                )));
            }
            let file = exec_file(&c.bundle, &req.exec_id, "process.json");
            std::fs::write(&file, &spec.value)
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

    async fn do_pause(&self, id: &str, resume: bool) -> Result<()> {
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

    fn running(&self, c: &Container) -> Result<()> {
        match c.init.status() {
            Status::Running | Status::Paused => Ok(()),
            other => Err(ShimError::FailedPrecondition(format!(
                "container {:?} is {other:?}",
                c.id
            ))),
        }
    }
}

fn label(p: &Process) -> String {
    if p.exec_id.is_empty() {
        "init".into()
    } else {
        format!("exec {:?}", p.exec_id)
    }
}

fn exec_file(bundle: &Path, exec_id: &str, what: &str) -> PathBuf {
    bundle.join(format!("exec-{exec_id}.{what}"))
}

async fn recv_console(rx: oneshot::Receiver<Result<std::fs::File>>) -> Result<std::fs::File> {
    rx.await
        .map_err(|_| ShimError::Internal("console socket thread ended".into()))?
}

/// Publishes an event; failures are logged (the publisher retries), never fatal.
async fn publish(
    publisher: &RemotePublisher,
    namespace: &str,
    topic: &str,
    event: Box<dyn MessageDyn>,
) {
    if let Err(e) = publisher
        .publish(Context::default(), topic, namespace, event)
        .await
    {
        warn!("publish {topic}: {e}");
    }
}

/// The `ConfigPath` from containerd's runtime options (CRI's runtimeoptions.v1.Options), if any.
pub fn options_config_path(options: Option<&Any>) -> Result<Option<PathBuf>> {
    let Some(any) = options else { return Ok(None) };
    if any.value.is_empty() {
        return Ok(None);
    }
    if any.type_url.ends_with("runtimeoptions.v1.Options") {
        // message Options { string type_url = 1; string config_path = 2; string config_body = 3; }
        let mut input = containerd_shim_protos::protobuf::CodedInputStream::from_bytes(&any.value);
        while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
            let (field, wire) = (tag >> 3, tag & 7);
            if field == 2 && wire == 2 {
                let path = input
                    .read_string()
                    .map_err(|e| ShimError::InvalidArgument(format!("runtime options: {e}")))?;
                return Ok(Some(PathBuf::from(path)).filter(|p| !p.as_os_str().is_empty()));
            }
            input
                .skip_field(
                    containerd_shim_protos::protobuf::rt::WireType::new(wire).ok_or_else(|| {
                        ShimError::InvalidArgument("runtime options: bad wire type".into())
                    })?,
                )
                .map_err(|e| ShimError::InvalidArgument(format!("runtime options: {e}")))?;
        }
        return Ok(None);
    }
    // runc's Options (what `ctr` sends by default) carry nothing Safehouse uses.
    Ok(None)
}

#[async_trait]
impl Task for TaskService {
    #[instrument(skip_all, fields(id = %req.id))]
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        Ok(self.do_create(req).await?)
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        Ok(self.do_start(req).await?)
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.exit();
        Ok(api::StateResponse {
            id: if req.exec_id.is_empty() {
                c.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.display().to_string(),
            pid: p.pid(),
            status: p.status().to_proto().into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: exit.map(|e| e.code).unwrap_or(0),
            exited_at: exit.map(|e| ts(e.at)).unwrap_or_default(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.wait().await;
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: ts(exit.at),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        self.do_kill(req).await?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        Ok(self.do_delete(req).await?)
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.do_exec(req).await?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        p.io.lock().await.resize(req.width, req.height)?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin {
            p.io.lock().await.close_stdin();
        }
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let c = self.get(&req.id)?;
        self.running(&c)?;
        let pids = c.runsc.ps(&c.id, &c.flags).await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pause(
        &self,
        _ctx: &TtrpcContext,
        req: api::PauseRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.do_pause(&req.id, false).await?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.do_pause(&req.id, true).await?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(ShimError::Unimplemented(format!(
            "checkpoint of {:?}: not supported by Safehouse yet (runsc checkpoint is experimental)",
            req.id
        ))
        .into())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        let c = self.get(&req.id)?;
        self.running(&c)?;
        Err(ShimError::Unimplemented(format!(
            "update of {:?}: the installed runsc has no `update` command, so a running gVisor sandbox's resources cannot be changed",
            req.id
        ))
        .into())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let c = self.get(&req.id)?;
        self.running(&c)?;
        let raw = c.runsc.stats(&c.id, &c.flags).await?;
        let metrics = stats::metrics_from_runsc(&raw);
        let value = metrics
            .write_to_bytes()
            .map_err(|e| ShimError::Internal(format!("encode metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: "io.containerd.cgroups.v1.Metrics".into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let task_pid = self.get(&req.id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    #[instrument(skip_all)]
    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        let left = self.map().len();
        if left == 0 {
            info!("no container left: shutting down");
            self.audit.finish().await;
            self.exit.signal();
        } else {
            info!(
                left,
                "shutdown requested while containers remain: staying up"
            );
        }
        Ok(api::Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_config_path_from_cri_runtime_options() {
        // Options{type_url: "x", config_path: "/etc/safehouse/net.toml"}
        let mut value = vec![0x0a, 1, b'x', 0x12];
        let path = b"/etc/safehouse/net.toml";
        value.push(path.len() as u8);
        value.extend_from_slice(path);
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            options_config_path(Some(&any)).expect("decodes"),
            Some(PathBuf::from("/etc/safehouse/net.toml"))
        );
        assert_eq!(options_config_path(None).expect("none"), None);
        let junk = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 50, b'a'],
            ..Default::default()
        };
        assert!(
            options_config_path(Some(&junk)).is_err(),
            "truncated options must fail"
        );
    }
}
