//! The containerd Task API: what each call does, in one place.
//!
//! Every call resolves its container and process, checks the state machine, drives runsc
//! through [`crate::runsc::Runsc`] and publishes the event containerd expects. Errors carry the
//! ttrpc code containerd acts on (see [`crate::error`]).

mod create;
mod lifecycle;
mod ttrpc_service;

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

    /// Kills sandboxes whose audit enforcer found a violation of an `onViolation: kill` policy.
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

/// ttrpc metadata key naming who asked for a Kill (set by `safehouse stop`).
pub const ACTOR_METADATA: &str = "safehouse-actor";

/// Where each running container's shim address is registered, for `safehouse stop`:
/// `/run/safehouse/shims/<namespace>/<id>` holds the ttrpc address.
pub fn registry_file(namespace: &str, id: &str) -> PathBuf {
    Path::new(crate::node::STATE_DIR)
        .join("shims")
        .join(namespace)
        .join(id)
}

/// Registers a created container (its bundle's `address` file names this shim's socket).
fn register(namespace: &str, id: &str, bundle: &Path) {
    let Ok(address) = std::fs::read_to_string(bundle.join("address")) else {
        return;
    };
    let file = registry_file(namespace, id);
    let written = file
        .parent()
        .map(std::fs::create_dir_all)
        .unwrap_or(Ok(()))
        .and_then(|_| std::fs::write(&file, address.trim()));
    if let Err(e) = written {
        warn!(container = %id, "cannot register in {}: {e}", file.display());
    }
}

/// Removes a deleted container's registration.
pub fn unregister(namespace: &str, id: &str) {
    let file = registry_file(namespace, id);
    let _ = std::fs::remove_file(&file);
    // The namespace's directory goes with its last container (remove_dir fails if not empty).
    if let Some(dir) = file.parent() {
        let _ = std::fs::remove_dir(dir);
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
