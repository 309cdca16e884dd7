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
mod output;
mod rules;

use std::path::Path;
use std::sync::{Arc, Mutex};

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::session::{PodInitConfig, SessionOptions, TraceCategory, TraceMetadata};
use safehouse_audit::sink::{sandbox_socket_path, Deliver, SinkHandle, SinkOptions, TraceSink};
use safehouse_policy::{AuditCategory, CompiledPolicy};

pub use enforcer::{Enforcer, KillRequest};
pub use output::AuditOutput;
pub use rules::{resolve_in_root, AuditRules};

use crate::bundle::POD_INIT_CONFIG;
use crate::error::{Result, ShimError};

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
    trace_dir: &Path,
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
        &cats,
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
