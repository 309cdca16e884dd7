//! The compiler: a pure, deterministic, idempotent function from (policy, untrusted OCI spec)
//! to (confined spec, runsc flags, audit plan). No I/O. The parts live in `mounts`, `process`,
//! `tools` and `linux`; this file holds the public types and the order of the passes.

pub mod linux;
mod mounts;
mod process;
mod recorded;
pub mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oci_spec::runtime::Spec;

use crate::digest::policy_digest;
use crate::egress::{EgressRule, IngressRule};
use crate::finding::{render_all, Finding};
use crate::manifest::{AgentPolicy, AuditCategory, NetworkMode, ViolationAction};
use crate::netfilter::{FilterMode, NetFilter};
use crate::validate::validate;

/// Annotation carrying the name of the policy a spec was compiled with (also the selector).
pub const POLICY_ANNOTATION: &str = "safehouse.dev/policy";
/// Annotation carrying the digest of the policy a spec was compiled with.
pub const DIGEST_ANNOTATION: &str = "safehouse.dev/policy-digest";

/// Host directories under which CRI-managed files (`/etc/hosts`, service-account tokens, …)
/// usually live; see [`CompileContext::cri_source_roots`].
pub const DEFAULT_CRI_SOURCE_ROOTS: &[&str] = &[
    "/var/lib/containerd",
    "/run/containerd",
    "/var/run/containerd",
    "/var/lib/kubelet",
    "/var/lib/rancher",
    "/run/k3s",
    "/var/lib/nerdctl",
];

/// Facts about the node the compiler may not discover itself (it does no I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileContext {
    /// Host directories a CRI-added bind mount (`/etc/hosts`, `/etc/resolv.conf`, `/dev/shm`,
    /// termination log, service-account token) may come from. Such a mount with a source
    /// elsewhere is refused like any other host path. Empty means any source is accepted.
    pub cri_source_roots: Vec<PathBuf>,
}

impl Default for CompileContext {
    fn default() -> Self {
        CompileContext {
            cri_source_roots: DEFAULT_CRI_SOURCE_ROOTS.iter().map(PathBuf::from).collect(),
        }
    }
}

/// How the sandbox reaches the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkPlan {
    /// Loopback only (runsc `--network=none`).
    None,
    /// The container's own network namespace (runsc `--network=host` run inside it), filtered
    /// by the policy's [`NetFilter`] in `Open` mode: everything but the protected ranges.
    Open,
    /// The container's own network namespace, filtered to the allowlist.
    Allowlist,
}

/// What the audit stream must record for this container, and how to react to violations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPlan {
    /// Event classes to record, sorted, without duplicates.
    pub record: Vec<AuditCategory>,
    /// Kill the container or only record when it runs something outside `tools`.
    pub on_violation: ViolationAction,
    /// Executables the agent may run; empty means unrestricted.
    pub tools: Vec<PathBuf>,
}

/// The result of compiling a policy against a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledPolicy {
    /// The confined spec to hand to runsc.
    pub spec: Spec,
    /// runsc global flags (`name` → `value`, for `--name=value`) that override the runtime config.
    pub runsc_flags: BTreeMap<String, String>,
    /// What the audit stream must do for this container.
    pub audit_plan: AuditPlan,
    /// Wall-clock limit the shim enforces by killing the container.
    pub timeout: Option<Duration>,
    /// Network plan (also reflected in `runsc_flags`).
    pub network: NetworkPlan,
    /// The nftables filter the shim installs in the container's network namespace (`Some` for
    /// `Open` and `Allowlist`).
    pub filter: Option<NetFilter>,
    /// Executables the agent may run; empty means unrestricted.
    pub tools: Vec<PathBuf>,
    /// `metadata.name` of the policy.
    pub name: String,
    /// `sha256:<hex>` of the canonical manifest (see `digest`).
    pub digest: String,
    /// What the spec asked for beyond the policy's bounds and was narrowed to them (the shim
    /// logs and records each).
    pub narrowed: Vec<Narrowing>,
}

/// One field of the spec narrowed to the policy's bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Narrowing {
    /// The spec field, e.g. `process.capabilities`.
    pub field: String,
    /// What was asked and what stands, e.g. `CAP_NET_RAW dropped: not kept by the policy`.
    pub detail: String,
}

impl std::fmt::Display for Narrowing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

impl CompiledPolicy {
    /// The runsc flags as `--name=value` arguments, sorted by name.
    pub fn runsc_args(&self) -> Vec<String> {
        self.runsc_flags
            .iter()
            .map(|(k, v)| format!("--{k}={v}"))
            .collect()
    }
}

/// Why a spec cannot run under a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// The spec asks for something the policy forbids; `reason` names the policy.
    #[error("{field}: {reason}")]
    Refused {
        /// Name of the policy.
        policy: String,
        /// The offending spec field, e.g. `mounts[7] (destination /host, source /etc)`.
        field: String,
        /// What is wrong, naming the policy.
        reason: String,
    },
    /// The policy itself does not validate.
    #[error("policy {policy:?} is invalid:\n{}", render_all("", .findings))]
    InvalidPolicy {
        /// Name of the policy.
        policy: String,
        /// Its errors.
        findings: Vec<Finding>,
    },
}

impl CompileError {
    /// Name of the policy that refused the spec.
    pub fn policy(&self) -> &str {
        match self {
            CompileError::Refused { policy, .. } | CompileError::InvalidPolicy { policy, .. } => {
                policy
            }
        }
    }
}

/// Shorthand for a refusal by `policy`.
pub(crate) fn refused(
    policy: &AgentPolicy,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> CompileError {
    CompileError::Refused {
        policy: policy.metadata.name.clone(),
        field: field.into(),
        reason: reason.into(),
    }
}

/// Annotations runsc itself interprets: mount hints (`dev.gvisor.spec.mount.*`), flag
/// overrides (`dev.gvisor.flag.*`), device proxies (`dev.gvisor.internal.nvproxy`) and more,
/// which change the sandbox in ways no policy states.
pub const RUNSC_ANNOTATION_PREFIX: &str = "dev.gvisor.";

/// Refuses a spec carrying a runsc annotation (any case, first key in sorted order, so the
/// error is deterministic).
fn refuse_runsc_annotations(policy: &AgentPolicy, spec: &Spec) -> Result<(), CompileError> {
    let Some(annotations) = spec.annotations() else {
        return Ok(());
    };
    let first = annotations
        .keys()
        .filter(|k| {
            k.len() >= RUNSC_ANNOTATION_PREFIX.len()
                && k.as_bytes()[..RUNSC_ANNOTATION_PREFIX.len()]
                    .eq_ignore_ascii_case(RUNSC_ANNOTATION_PREFIX.as_bytes())
        })
        .min();
    match first {
        None => Ok(()),
        Some(key) => Err(refused(
            policy,
            format!("annotations[{key:?}]"),
            format!(
                "runsc interprets {RUNSC_ANNOTATION_PREFIX}* annotations itself (mount hints, flag overrides, device proxies), so one in the container's spec is refused by policy {:?}",
                policy.metadata.name
            ),
        )),
    }
}

/// The filter for `open` and `allowlist` (entries already validated).
fn net_filter(policy: &AgentPolicy) -> Option<NetFilter> {
    let net = &policy.spec.network;
    let mode = match net.mode {
        NetworkMode::None => return None,
        NetworkMode::Open => FilterMode::Open,
        NetworkMode::Allowlist => FilterMode::Allowlist,
    };
    Some(NetFilter {
        mode,
        egress: net
            .egress
            .iter()
            .filter_map(|e| EgressRule::parse(e).ok())
            .collect(),
        ingress: net
            .ingress
            .iter()
            .filter_map(|e| IngressRule::parse(e).ok())
            .collect(),
    })
}

/// Confine `spec` by `policy`. Pure, deterministic and idempotent: compiling the output spec
/// again gives the same spec. Fails when the spec asks for more than the policy allows.
pub fn compile(
    policy: &AgentPolicy,
    spec: &Spec,
    ctx: &CompileContext,
) -> Result<CompiledPolicy, CompileError> {
    let errors: Vec<Finding> = validate(policy)
        .into_iter()
        .filter(Finding::is_error)
        .collect();
    if !errors.is_empty() {
        return Err(CompileError::InvalidPolicy {
            policy: policy.metadata.name.clone(),
            findings: errors,
        });
    }
    let network = match policy.spec.network.mode {
        NetworkMode::None => NetworkPlan::None,
        NetworkMode::Open => NetworkPlan::Open,
        NetworkMode::Allowlist => NetworkPlan::Allowlist,
    };
    let filter = net_filter(policy);

    let mut out = spec.clone();
    let root = out.root_mut().as_mut().ok_or_else(|| {
        refused(
            policy,
            "root",
            format!("is missing; refused by policy {:?}", policy.metadata.name),
        )
    })?;
    let policy_ro = policy.spec.filesystem.rootfs == crate::manifest::RootfsMode::ReadOnly;
    root.set_readonly(Some(policy_ro || root.readonly().unwrap_or(false)));

    let mut narrowed = Vec::new();
    linux::confine_sysctls(policy, &mut out, &mut narrowed)?;
    linux::confine(policy, &mut out)?;
    mounts::confine(policy, ctx, &mut out)?;
    tools::confine(policy, &mut out);
    tools::check_loader_env(
        policy,
        out.process()
            .as_ref()
            .and_then(|p| p.env().as_deref())
            .unwrap_or_default(),
        out.mounts().as_deref().unwrap_or_default(),
    )?;
    process::confine(policy, &mut out, &mut narrowed)?;
    recorded::record(spec, &out, &mut narrowed);

    refuse_runsc_annotations(policy, &out)?;

    let name = policy.metadata.name.clone();
    let digest = policy_digest(policy);
    let annotations = out.annotations_mut().get_or_insert_with(Default::default);
    annotations.insert(POLICY_ANNOTATION.to_string(), name.clone());
    annotations.insert(DIGEST_ANNOTATION.to_string(), digest.clone());

    let mut runsc_flags = BTreeMap::new();
    let net_flag = match network {
        NetworkPlan::None => "none",
        NetworkPlan::Open | NetworkPlan::Allowlist => "host",
    };
    runsc_flags.insert("network".to_string(), net_flag.to_string());

    let tools: Vec<PathBuf> = policy
        .spec
        .process
        .tools
        .iter()
        .map(PathBuf::from)
        .collect();
    let mut record = policy.spec.audit.record.clone();
    // Fail closed: `tools` is checked on the exec events, so a policy with tools records them
    // whatever `record` says (explain and lint say so).
    if !tools.is_empty() {
        record.push(AuditCategory::Process);
    }
    record.sort();
    record.dedup();
    Ok(CompiledPolicy {
        spec: out,
        runsc_flags,
        audit_plan: AuditPlan {
            record,
            on_violation: policy.spec.audit.on_violation,
            tools: tools.clone(),
        },
        timeout: policy.spec.process.timeout.map(|t| t.0),
        network,
        filter,
        tools,
        name,
        digest,
        narrowed,
    })
}
