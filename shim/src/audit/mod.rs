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

mod enforcer;
mod kill_switch;
pub mod orphan;
mod output;
mod rules;

use std::path::Path;
use std::sync::{Arc, Mutex};

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::session::{PodInitConfig, SessionOptions, TraceCategory, TraceMetadata};
use safehouse_audit::sink::{sandbox_socket_path, Deliver, SinkHandle, SinkOptions, TraceSink};
use safehouse_policy::{AuditCategory, CompiledPolicy};

pub use enforcer::{Enforcer, KillRequest, RuleBook};
pub use kill_switch::KillSwitch;
pub use output::AuditOutput;
pub use rules::{foreign_loader_var, process_loader_env, resolve_in_root, AuditRules};

use crate::bundle::POD_INIT_CONFIG;
use crate::error::{Result, ShimError};

/// A sandbox's running audit: the sink, its context, the rules its enforcer checks each
/// container against, and the switch that kills the sandbox on a violation.
pub struct SandboxAudit {
    /// Fields every event of the sandbox carries.
    pub ctx: SandboxContext,
    /// Each container's rules (a pod member adds its own).
    pub book: Arc<RuleBook>,
    /// Kills the sandbox process from the host.
    pub switch: Arc<KillSwitch>,
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

/// The trace categories a sandbox's session records: its root policy's, and process events
/// too for a pod's sandbox, whose members may come with `tools` of their own (their enforcer
/// needs every exec; members whose policy does not record them do not get them written).
pub fn categories(compiled: &CompiledPolicy, pod_sandbox: bool) -> Vec<TraceCategory> {
    let mut cats: Vec<TraceCategory> = compiled
        .audit_plan
        .record
        .iter()
        .map(|c| match c {
            AuditCategory::Process => TraceCategory::Process,
            AuditCategory::File => TraceCategory::File,
            AuditCategory::Network => TraceCategory::Network,
        })
        .collect();
    if pod_sandbox && !cats.contains(&TraceCategory::Process) {
        cats.push(TraceCategory::Process);
    }
    cats
}

/// Binds the sink for a new sandbox and writes its pod-init-config into the bundle; returns
/// the sandbox's audit and the flag to give runsc. Events go to `events`.
#[allow(clippy::too_many_arguments)]
pub fn start_sandbox(
    ctx: SandboxContext,
    cats: &[TraceCategory],
    book: Arc<RuleBook>,
    switch: Arc<KillSwitch>,
    bundle: &Path,
    trace_dir: &Path,
    events: impl Deliver,
) -> Result<(Arc<SandboxAudit>, Option<String>)> {
    let audit = Arc::new(SandboxAudit {
        ctx: ctx.clone(),
        book,
        switch,
        sink: Mutex::new(None),
    });
    if cats.is_empty() {
        return Ok((audit, None));
    }
    std::fs::create_dir_all(trace_dir)
        .map_err(|e| ShimError::io(format!("create {}", trace_dir.display()), e))?;
    let path = sandbox_socket_path(
        trace_dir,
        ctx.namespace.as_deref().unwrap_or_default(),
        &ctx.sandbox_id,
    );
    let _ = std::fs::remove_file(&path);
    let sink = TraceSink::bind(&path, SinkOptions::default())
        .map_err(|e| ShimError::Internal(format!("bind audit sink {}: {e}", path.display())))?;
    let config = PodInitConfig::new(
        cats,
        &path,
        &TraceMetadata::baseline(),
        &SessionOptions::default(),
    )
    .map_err(|e| ShimError::Internal(format!("audit session for {}: {e}", ctx.sandbox_id)))?;
    let file = bundle.join(POD_INIT_CONFIG);
    std::fs::write(&file, config.to_json())
        .map_err(|e| ShimError::io(format!("write {}", file.display()), e))?;
    *audit.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink.spawn(ctx, events));
    Ok((audit, Some(format!("--pod-init-config={}", file.display()))))
}
