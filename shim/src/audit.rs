//! The shim's end of the audit stream.
//!
//! Per sandbox: a trace sink (the SOCK_SEQPACKET socket gVisor's Sentry connects to, bound before
//! `runsc create` so nothing before the first instruction is missed), the `--pod-init-config`
//! asking for the policy's points, and an [`Enforcer`] that checks each drain of decoded events
//! against the policy (`process.tools`) on the sink's reader thread, asks the task service for a
//! kill on a violation, and seals the drain into the writer's queue. Per shim: one writer that
//! appends every sandbox's chained lines to the node's audit destination, which also becomes
//! the shim's standard output. Decoding and chaining live in the `safehouse-audit` crate; this
//! module only connects them to containers.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::session::{PodInitConfig, SessionOptions, TraceCategory, TraceMetadata};
use safehouse_audit::sink::{
    sandbox_socket_path, Closed, Deliver, SinkHandle, SinkOptions, TraceSink,
};
use safehouse_audit::writer::{open_append, AuditWriter, WriterConfig, WriterHandle};
use safehouse_audit::AuditEvent;
use safehouse_policy::{AuditCategory, CompiledPolicy, ViolationAction};
use tokio::sync::mpsc;

use crate::error::{Result, ShimError};
use crate::node::STATE_DIR;

/// The shim's audit writer, opened on the first Create (its config names the destination).
#[derive(Default)]
pub struct AuditOutput {
    inner: Mutex<Option<(AuditWriter, Option<WriterHandle>, PathBuf)>>,
}

impl AuditOutput {
    /// The writer, opening `destination` (and making it the shim's stdout) on first use.
    pub fn writer(&self, destination: &Path) -> Result<AuditWriter> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((w, _, path)) = guard.as_ref() {
            if path != destination {
                tracing::warn!(
                    "audit destination {} differs from this shim's {}; keeping the first",
                    destination.display(),
                    path.display()
                );
            }
            return Ok(w.clone());
        }
        if let Some(dir) = destination.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                ShimError::io(format!("create audit directory {}", dir.display()), e)
            })?;
        }
        let file = open_append(destination).map_err(|e| {
            ShimError::io(
                format!("open audit destination {}", destination.display()),
                e,
            )
        })?;
        // The audit stream is the shim's standard output (containerd started us with it
        // discarded); everything the shim logs goes to containerd's shim log instead.
        // SAFETY: dup2 onto fd 1 with a valid fd we own.
        if unsafe { libc::dup2(file.as_raw_fd(), libc::STDOUT_FILENO) } < 0 {
            tracing::warn!(
                "cannot make {} the shim's stdout: {}",
                destination.display(),
                std::io::Error::last_os_error()
            );
        }
        let max_batch = if is_fifo(destination) {
            4096
        } else {
            64 * 1024
        };
        let (writer, handle) = AuditWriter::spawn(
            file,
            WriterConfig {
                max_batch_bytes: max_batch,
                ..WriterConfig::default()
            },
        )
        .map_err(|e| ShimError::io("start audit writer", e))?;
        *guard = Some((writer.clone(), Some(handle), destination.to_path_buf()));
        Ok(writer)
    }

    /// The open writer, if any (none before the first Create and after `finish`).
    fn open_writer(&self) -> Option<AuditWriter> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(w, _, _)| w.clone())
    }

    /// Submits an event if the writer is open (lifecycle events before the first Create have
    /// nowhere to go).
    pub fn submit(&self, event: AuditEvent) {
        if let Some(w) = self.open_writer() {
            if !w.submit(event) {
                tracing::debug!("audit queue full: event dropped and counted");
            }
        }
    }

    /// Seals and queues a sink's drain, waiting while the queue is full (see
    /// [`AuditWriter::submit_batch`]); dropped if the writer is not open.
    pub fn submit_batch(&self, events: &mut Vec<AuditEvent>, stopping: &dyn Fn() -> bool) {
        match self.open_writer() {
            Some(w) => {
                w.submit_batch(events, stopping);
            }
            None => events.clear(),
        }
    }

    /// Seals and queues a drain if the writer's queue has room now; false (events untouched)
    /// when it is full. With no writer open the drain is dropped and this is true.
    pub fn try_submit_batch(&self, events: &mut Vec<AuditEvent>) -> bool {
        match self.open_writer() {
            Some(w) => w.try_submit_batch(events),
            None => {
                events.clear();
                true
            }
        }
    }

    /// Flushes and stops the writer (shim shutdown): drops the shim's writer so the queue
    /// closes, then waits (bounded, off the runtime thread) for the last lines to be written.
    pub async fn finish(&self) {
        let taken = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((writer, Some(handle), _)) = taken else {
            return;
        };
        drop(writer);
        let joined = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::task::spawn_blocking(move || handle.finish()),
        )
        .await;
        match joined {
            Ok(Ok(stats)) => tracing::info!(
                lines = stats.lines_written,
                dropped = stats.queue_dropped,
                "audit writer finished"
            ),
            _ => tracing::warn!("audit writer did not finish within 2s"),
        }
    }
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

/// What a sandbox's audit needs from its policy.
#[derive(Debug, Clone)]
pub struct AuditRules {
    /// Executables the agent may run; empty = unrestricted.
    pub tools: Vec<PathBuf>,
    /// Kill the sandbox on a violation, or only record it.
    pub on_violation: ViolationAction,
    /// The init process's executable as the container resolves it (the `container/start`
    /// point reports only argv).
    pub init_binary: Option<String>,
}

impl AuditRules {
    /// From a compiled policy; each tool is also allowed under the path its symlinks resolve to
    /// inside `rootfs` (gVisor reports the resolved executable).
    pub fn from_policy(
        compiled: &CompiledPolicy,
        rootfs: &Path,
        spec: &serde_json::Value,
    ) -> AuditRules {
        let mut tools = compiled.audit_plan.tools.clone();
        for t in &compiled.audit_plan.tools {
            if let Some(resolved) = resolve_in_root(rootfs, t) {
                if !tools.contains(&resolved) {
                    tools.push(resolved);
                }
            }
        }
        AuditRules {
            tools,
            on_violation: compiled.audit_plan.on_violation,
            init_binary: init_binary(rootfs, spec),
        }
    }

    /// The executable an exec event ran, if the policy does not allow it.
    pub fn offending_binary(&self, event: &AuditEvent) -> Option<String> {
        let reported = event.executed_binary()?;
        // container/start reports the spec's argv[0] ("sh"), not the file that runs.
        let binary = match &event.point {
            Some(point) if point == "container/start" => {
                self.init_binary.as_deref().unwrap_or(reported)
            }
            _ => reported,
        };
        (!self.allows(binary)).then(|| binary.to_string())
    }

    /// Whether an exec of `binary` (the resolved executable gVisor reports) is allowed. argv[0]
    /// is never consulted: the caller chooses it.
    pub fn allows(&self, binary: &str) -> bool {
        self.tools.is_empty() || self.tools.iter().any(|t| t.as_os_str() == binary)
    }
}

/// The init's executable: `process.args[0]`, searched in the spec's PATH inside `rootfs`.
fn init_binary(rootfs: &Path, spec: &serde_json::Value) -> Option<String> {
    let arg0 = spec["process"]["args"][0].as_str()?;
    if arg0.starts_with('/') {
        return resolve_in_root(rootfs, Path::new(arg0)).map(|p| p.display().to_string());
    }
    let path_var = spec["process"]["env"]
        .as_array()
        .and_then(|env| {
            env.iter()
                .filter_map(|e| e.as_str())
                .find_map(|e| e.strip_prefix("PATH="))
        })
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path_var
        .split(':')
        .filter(|d| d.starts_with('/'))
        .find_map(|d| resolve_in_root(rootfs, &Path::new(d).join(arg0)))
        .map(|p| p.display().to_string())
}

/// Resolves `path`'s symlinks as the container would see them, never leaving `root`.
pub fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::from("/");
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let on_host = root.join(candidate.strip_prefix("/").ok()?);
        match std::fs::symlink_metadata(&on_host) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = std::fs::read_link(&on_host).ok()?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => resolved = candidate,
            Err(_) => return None,
        }
    }
    Some(resolved)
}

/// A sandbox's running audit: the sink and its context.
pub struct SandboxAudit {
    /// Fields every event of the sandbox carries.
    pub ctx: SandboxContext,
    sink: Mutex<Option<SinkHandle>>,
}

impl SandboxAudit {
    /// Stops the sink (the socket file goes with it).
    pub fn shutdown(&self) {
        if let Some(h) = self.sink.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.shutdown();
        }
    }
}

/// The trace categories a policy records.
pub fn categories(compiled: &CompiledPolicy) -> Vec<TraceCategory> {
    compiled
        .audit_plan
        .record
        .iter()
        .map(|c| match c {
            AuditCategory::Process => TraceCategory::Process,
            AuditCategory::File => TraceCategory::File,
            AuditCategory::Network => TraceCategory::Network,
        })
        .collect()
}

/// Binds the sink for a new sandbox and writes its pod-init-config into the bundle; returns
/// the sandbox's audit and the flag to give runsc. Events go to `events`.
pub fn start_sandbox(
    ctx: SandboxContext,
    compiled: &CompiledPolicy,
    bundle: &Path,
    events: impl Deliver,
) -> Result<(Arc<SandboxAudit>, Option<String>)> {
    let cats = categories(compiled);
    let audit = Arc::new(SandboxAudit {
        ctx: ctx.clone(),
        sink: Mutex::new(None),
    });
    if cats.is_empty() {
        return Ok((audit, None));
    }
    let dir = Path::new(STATE_DIR).join("trace");
    std::fs::create_dir_all(&dir)
        .map_err(|e| ShimError::io(format!("create {}", dir.display()), e))?;
    let path = sandbox_socket_path(
        &dir,
        ctx.namespace.as_deref().unwrap_or_default(),
        &ctx.sandbox_id,
    );
    let _ = std::fs::remove_file(&path);
    let sink = TraceSink::bind(&path, SinkOptions::default())
        .map_err(|e| ShimError::Internal(format!("bind audit sink {}: {e}", path.display())))?;
    let config = PodInitConfig::new(
        &cats,
        &path,
        &TraceMetadata::baseline(),
        &SessionOptions::default(),
    )
    .map_err(|e| ShimError::Internal(format!("audit session for {}: {e}", ctx.sandbox_id)))?;
    let file = bundle.join("safehouse-pod-init.json");
    std::fs::write(&file, config.to_json())
        .map_err(|e| ShimError::io(format!("write {}", file.display()), e))?;
    *audit.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink.spawn(ctx, events));
    Ok((audit, Some(format!("--pod-init-config={}", file.display()))))
}

/// What the enforcer asks the task service to do about a violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    /// The sandbox to end.
    pub sandbox_id: String,
    /// Why.
    pub reason: String,
}

/// A sandbox's policy checks, run on its trace sink's reader thread for each drain of events:
/// an exec the policy's `process.tools` does not allow is followed by a `policy`/`violation`
/// event and, under `onViolation: kill`, one kill request to the task service. The drain is
/// sealed into the writer's queue up to the violation first, so the audit shows the exec and
/// the violation before the kill they caused; if the queue is full at that moment the kill
/// leaves first (enforcement never waits on the audit destination).
pub struct Enforcer {
    ctx: SandboxContext,
    rules: AuditRules,
    output: Arc<AuditOutput>,
    kills: mpsc::UnboundedSender<KillRequest>,
    killed: AtomicBool,
}

impl Enforcer {
    /// Checks `ctx`'s events against `rules`, writing them to `output` and asking `kills`.
    pub fn new(
        ctx: SandboxContext,
        rules: AuditRules,
        output: Arc<AuditOutput>,
        kills: mpsc::UnboundedSender<KillRequest>,
    ) -> Self {
        Self {
            ctx,
            rules,
            output,
            kills,
            killed: AtomicBool::new(false),
        }
    }

    /// Inserts a violation event after every offending exec of `batch`. Returns the sandbox's
    /// kill request (once per sandbox) with the index just after the violation that asks it.
    fn check(&self, batch: &mut Vec<AuditEvent>) -> Option<(usize, KillRequest)> {
        let mut request = None;
        let mut i = 0;
        while i < batch.len() {
            if let Some(binary) = self.rules.offending_binary(&batch[i]) {
                let kill = self.rules.on_violation == ViolationAction::Kill;
                let container = batch[i].container_id.clone().unwrap_or_default();
                let v = self
                    .ctx
                    .violation(
                        &container,
                        "process.tools",
                        &format!("exec of {binary}, which is not in the policy's tools list"),
                        if kill { "kill" } else { "record" },
                    )
                    .build();
                batch.insert(i + 1, v);
                i += 1;
                if kill && request.is_none() && !self.killed.swap(true, Ordering::SeqCst) {
                    request = Some((
                        i + 1,
                        KillRequest {
                            sandbox_id: self.ctx.sandbox_id.clone(),
                            reason: format!("exec of {binary} violates process.tools"),
                        },
                    ));
                }
            }
            i += 1;
        }
        request
    }
}

impl Deliver for Enforcer {
    fn deliver(
        &self,
        batch: &mut Vec<AuditEvent>,
        stopping: &dyn Fn() -> bool,
    ) -> std::result::Result<(), Closed> {
        let Some((cut, request)) = self.check(batch) else {
            self.output.submit_batch(batch, stopping);
            return Ok(());
        };
        let mut rest = batch.split_off(cut.min(batch.len()));
        // Up to the violation now if there is room; the kill never waits for room.
        let sealed = self.output.try_submit_batch(batch);
        let _ = self.kills.send(request);
        if !sealed {
            self.output.submit_batch(batch, stopping);
        }
        self.output.submit_batch(&mut rest, stopping);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_match_the_resolved_path_only() {
        let rules = AuditRules {
            tools: vec![PathBuf::from("/bin/sh"), PathBuf::from("/usr/bin/python3")],
            on_violation: ViolationAction::Kill,
            init_binary: None,
        };
        assert!(rules.allows("/usr/bin/python3"));
        assert!(!rules.allows("/bin/busybox"));
        assert!(!rules.allows("/tmp/evil"));
        let open = AuditRules {
            tools: vec![],
            on_violation: ViolationAction::Record,
            init_binary: None,
        };
        assert!(open.allows("/anything"));

        // The init is judged by the file it resolves to, not the argv[0] gVisor reports.
        let rules = AuditRules {
            tools: vec![PathBuf::from("/bin/busybox")],
            on_violation: ViolationAction::Kill,
            init_binary: Some("/bin/busybox".into()),
        };
        let mut start = AuditEvent {
            category: safehouse_audit::Category::Process,
            action: safehouse_audit::Action::Exec,
            point: Some("container/start".into()),
            process: Some(safehouse_audit::ProcessInfo {
                binary: Some(safehouse_audit::BinaryInfo {
                    path: "sh".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(rules.offending_binary(&start), None);
        start.point = Some("sentry/execve".into());
        assert_eq!(rules.offending_binary(&start).as_deref(), Some("sh"));
    }

    fn exec(binary: &str) -> AuditEvent {
        AuditEvent {
            category: safehouse_audit::Category::Process,
            action: safehouse_audit::Action::Exec,
            container_id: Some("c1".into()),
            point: Some("sentry/execve".into()),
            process: Some(safehouse_audit::ProcessInfo {
                binary: Some(safehouse_audit::BinaryInfo {
                    path: binary.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn enforcer_follows_each_offending_exec_with_a_violation_and_asks_one_kill() {
        let (kills, mut asked) = mpsc::unbounded_channel();
        let rules = AuditRules {
            tools: vec![PathBuf::from("/bin/sh")],
            on_violation: ViolationAction::Kill,
            init_binary: None,
        };
        let enforcer = Enforcer::new(
            SandboxContext::new("sb"),
            rules,
            Arc::new(AuditOutput::default()),
            kills,
        );
        let mut batch = vec![
            exec("/bin/sh"),
            exec("/bin/nc"),
            exec("/bin/sh"),
            exec("/bin/dd"),
        ];
        let (cut, first) = enforcer.check(&mut batch).expect("a kill request");
        // The drain is written up to the first violation before the kill leaves.
        assert_eq!(cut, 3);
        let actions: Vec<_> = batch
            .iter()
            .map(|e| (e.action, e.executed_binary().map(str::to_owned)))
            .collect();
        use safehouse_audit::Action::{Exec, Violation};
        assert_eq!(
            actions,
            vec![
                (Exec, Some("/bin/sh".into())),
                (Exec, Some("/bin/nc".into())),
                (Violation, None),
                (Exec, Some("/bin/sh".into())),
                (Exec, Some("/bin/dd".into())),
                (Violation, None),
            ]
        );
        assert_eq!(batch[2].container_id.as_deref(), Some("c1"));
        assert_eq!(first.sandbox_id, "sb");
        assert!(first.reason.contains("/bin/nc"), "{}", first.reason);
        // One kill request per sandbox: later drains record violations only.
        let mut later = vec![exec("/bin/nc")];
        assert!(enforcer.check(&mut later).is_none());
        assert_eq!(later.len(), 2);
        assert!(asked.try_recv().is_err(), "check itself sends nothing");

        // Delivered (no writer open yet: the drain is dropped, not kept), the kill is sent.
        let fresh = Enforcer::new(
            SandboxContext::new("sb2"),
            AuditRules {
                tools: vec![PathBuf::from("/bin/sh")],
                on_violation: ViolationAction::Kill,
                init_binary: None,
            },
            Arc::new(AuditOutput::default()),
            enforcer.kills.clone(),
        );
        let mut drain = vec![exec("/bin/nc"), exec("/bin/sh")];
        fresh.deliver(&mut drain, &|| false).expect("delivered");
        assert!(drain.is_empty());
        let sent = asked.try_recv().map(|r| r.sandbox_id).ok();
        assert_eq!(sent.as_deref(), Some("sb2"));
    }

    #[test]
    fn symlinks_resolve_inside_the_root_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("bin")).expect("mkdir");
        std::fs::create_dir_all(r.join("usr/bin")).expect("mkdir");
        std::fs::write(r.join("bin/busybox"), b"").expect("write");
        std::os::unix::fs::symlink("busybox", r.join("bin/sh")).expect("symlink");
        std::os::unix::fs::symlink("/bin/busybox", r.join("usr/bin/env")).expect("symlink");
        std::os::unix::fs::symlink("../../../../../etc/shadow", r.join("usr/bin/escape"))
            .expect("symlink");
        assert_eq!(
            resolve_in_root(r, Path::new("/bin/sh")),
            Some(PathBuf::from("/bin/busybox"))
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/usr/bin/env")),
            Some(PathBuf::from("/bin/busybox"))
        );
        // ".." stops at the container's root: the host's /etc/shadow is never looked at.
        assert_eq!(resolve_in_root(r, Path::new("/usr/bin/escape")), None);
        assert_eq!(resolve_in_root(r, Path::new("/missing")), None);
        std::os::unix::fs::symlink("loop", r.join("loop")).expect("symlink");
        assert_eq!(resolve_in_root(r, Path::new("/loop")), None);

        let spec = serde_json::json!({"process": {"args": ["sh", "-c", "x"], "env": ["PATH=/usr/bin:/bin"]}});
        assert_eq!(init_binary(r, &spec).as_deref(), Some("/bin/busybox"));
        let spec = serde_json::json!({"process": {"args": ["nope"]}});
        assert_eq!(init_binary(r, &spec), None);
    }
}
