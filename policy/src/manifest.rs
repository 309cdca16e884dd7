//! The `AgentPolicy` manifest as written by an operator (YAML or JSON), with its defaults.
//! Only the shape and defaults live here: semantic checks are in `validate`, meaning in `compile`.
//!
//! Every struct declares its fields in the byte order of their serialised names: the policy
//! digest hashes serde's output directly and relies on it being key-sorted (a test checks).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::quantity::{ByteSize, Cpus, DurationSpec};

/// The only `apiVersion` this crate understands.
pub const API_VERSION: &str = "safehouse.dev/v1alpha1";
/// The only `kind` this crate understands.
pub const KIND: &str = "AgentPolicy";

/// An agent capability policy: what a container started under it may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "AgentPolicy")]
pub struct AgentPolicy {
    /// Must be `safehouse.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `AgentPolicy`.
    pub kind: String,
    /// Name and description of the policy.
    pub metadata: Metadata,
    /// What the agent may do; every omitted field takes its safe default.
    #[serde(default)]
    pub spec: PolicySpec,
}

/// Identifies a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Free-form labels; not interpreted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Policy name: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
}

/// The body of a policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// What the audit stream records and what happens on a violation.
    #[serde(default)]
    pub audit: AuditPolicy,
    /// Root filesystem mode and the writable/readable zones.
    #[serde(default)]
    pub filesystem: FilesystemPolicy,
    /// Network access.
    #[serde(default)]
    pub network: NetworkPolicy,
    /// Identity, privileges and allowed executables of the agent's processes.
    #[serde(default)]
    pub process: ProcessPolicy,
    /// Resource limits.
    #[serde(default)]
    pub resources: ResourcePolicy,
}

/// Whether the container's root filesystem is writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RootfsMode {
    /// The image's filesystem cannot be written (default).
    #[default]
    ReadOnly,
    /// The image's filesystem is writable (unless the container spec already made it read-only).
    ReadWrite,
}

/// Filesystem view of the agent.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesystemPolicy {
    /// Host directories mounted read-only.
    #[serde(default)]
    pub inputs: Vec<HostZone>,
    /// Host directories mounted read-write.
    #[serde(default)]
    pub outputs: Vec<HostZone>,
    /// `read-only` (default) or `read-write`.
    #[serde(default)]
    pub rootfs: RootfsMode,
    /// Private tmpfs zones, gone when the sandbox ends.
    #[serde(default)]
    pub scratch: Vec<ScratchZone>,
}

/// A private in-memory (tmpfs) zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScratchZone {
    /// Allow executing files from this zone (default false: mounted noexec).
    #[serde(default, skip_serializing_if = "is_false")]
    pub exec: bool,
    /// Absolute path inside the container.
    pub path: String,
    /// Size of the tmpfs (default 64Mi).
    #[serde(default = "default_scratch_size")]
    pub size: ByteSize,
}

/// A host directory bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostZone {
    /// Allow executing files from this zone (default false: mounted noexec).
    #[serde(default, skip_serializing_if = "is_false")]
    pub exec: bool,
    /// Absolute path inside the container.
    pub path: String,
    /// Outputs only: the most the agent may write there (default 1Gi); a write past it fails
    /// with ENOSPC inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// Absolute path on the host.
    pub source: String,
    /// Outputs only: what happens to a symlink the agent leaves that points out of the zone
    /// (`record`, the default, or `refuse`).
    #[serde(default, skip_serializing_if = "SymlinkRule::is_record")]
    pub symlinks: SymlinkRule,
}

/// What becomes of a symlink left in an output that points out of the zone (an absolute
/// target, or one whose `..` climb above the zone). Either way it is recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SymlinkRule {
    /// It is written to the host directory and recorded (default).
    #[default]
    Record,
    /// It is not written to the host directory; its refusal is recorded.
    Refuse,
}

impl SymlinkRule {
    fn is_record(&self) -> bool {
        *self == SymlinkRule::Record
    }
}

/// The size an output zone gets when it names none.
pub const DEFAULT_OUTPUT_SIZE: ByteSize = ByteSize::mib(1024);

/// The smallest output `size` (its filesystem needs room for its own metadata).
pub const MIN_OUTPUT_SIZE: ByteSize = ByteSize::mib(1);

impl HostZone {
    /// The zone's quota as an output: its `size`, or [`DEFAULT_OUTPUT_SIZE`].
    pub fn output_size(&self) -> ByteSize {
        self.size.unwrap_or(DEFAULT_OUTPUT_SIZE)
    }
}

/// How the agent may reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// Loopback only (default).
    #[default]
    None,
    /// Only the `egress` entries, enforced by an nftables table in the container's own network
    /// namespace; host names through the shim's DNS forwarder.
    Allowlist,
    /// Any destination except the protected ranges (cloud metadata, link-local, the node's own
    /// addresses) unless an `egress` entry names them.
    Open,
}

/// Network access.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Allowlist entries: `host:port`, `host`, `cidr` or `cidr:port` (IPv6 as `[cidr]:port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    /// Sources (`cidr` or `cidr:port`, the port being the sandbox's) that may open connections
    /// to the sandbox; empty means no new inbound connection is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<String>,
    /// `none` (default), `allowlist` or `open`.
    #[serde(default)]
    pub mode: NetworkMode,
}

/// Identity and privileges of the agent's processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessPolicy {
    /// Capabilities kept (e.g. `CAP_NET_BIND_SERVICE`); all others are dropped. Default none.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Set the no_new_privs bit (default true).
    #[serde(default = "default_true")]
    pub no_new_privileges: bool,
    /// Wall-clock limit, after which the container is killed. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationSpec>,
    /// Absolute paths of executables the agent may run; empty means unrestricted.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Who the agent's processes may run as: a numeric `uid:gid` (exactly that identity; a
    /// pod asking for root is narrowed to it, one asking for another user is refused; `0:0`
    /// lets any identity stand), or `nonroot` (the pod's own non-root uid, gid and
    /// supplementary groups stand; root is narrowed to 65534). Default `65534:65534`, nobody.
    #[serde(default = "default_user")]
    pub user: String,
}

/// Resource limits, always bounded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourcePolicy {
    /// CPU limit in CPUs (default 1).
    #[serde(default = "default_cpus")]
    pub cpus: Cpus,
    /// Memory limit (default 512Mi).
    #[serde(default = "default_memory")]
    pub memory: ByteSize,
    /// Maximum number of open files, RLIMIT_NOFILE (default 1024).
    #[serde(default = "default_nofile")]
    pub nofile: u32,
    /// Maximum number of processes and threads (default 128).
    #[serde(default = "default_pids")]
    pub pids: u32,
}

/// A class of audit events.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AuditCategory {
    /// Process creation, exec and exit.
    Process,
    /// File opens.
    File,
    /// Sockets, connects, binds and accepts.
    Network,
}

/// What happens when the agent breaks a rule the audit stream checks (e.g. runs a non-tool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ViolationAction {
    /// Record the violation and kill the container (default).
    #[default]
    Kill,
    /// Record the violation only.
    Record,
}

/// Audit settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditPolicy {
    /// `kill` (default) or `record`.
    #[serde(default)]
    pub on_violation: ViolationAction,
    /// Event classes recorded (default all: process, file, network).
    #[serde(default = "default_record")]
    pub record: Vec<AuditCategory>,
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn default_true() -> bool {
    true
}
fn default_scratch_size() -> ByteSize {
    ByteSize::mib(64)
}
fn default_user() -> String {
    "65534:65534".to_string()
}
fn default_memory() -> ByteSize {
    ByteSize::mib(512)
}
fn default_cpus() -> Cpus {
    Cpus(1.0)
}
fn default_pids() -> u32 {
    128
}
fn default_nofile() -> u32 {
    1024
}
fn default_record() -> Vec<AuditCategory> {
    vec![
        AuditCategory::Process,
        AuditCategory::File,
        AuditCategory::Network,
    ]
}

impl Default for ProcessPolicy {
    fn default() -> Self {
        ProcessPolicy {
            user: default_user(),
            capabilities: Vec::new(),
            no_new_privileges: true,
            tools: Vec::new(),
            timeout: None,
        }
    }
}

impl Default for ResourcePolicy {
    fn default() -> Self {
        ResourcePolicy {
            memory: default_memory(),
            cpus: default_cpus(),
            pids: default_pids(),
            nofile: default_nofile(),
        }
    }
}

impl Default for AuditPolicy {
    fn default() -> Self {
        AuditPolicy {
            record: default_record(),
            on_violation: ViolationAction::Kill,
        }
    }
}

/// `process.user` value that lets the pod's own non-root identity stand.
pub const NONROOT_USER: &str = "nonroot";
/// The uid and gid a root identity is narrowed to under [`UserBound::NonRoot`] (nobody).
pub const NOBODY_ID: u32 = 65534;

/// The bound `process.user` sets on the identity of the agent's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserBound {
    /// `uid:gid`. Each id that is not 0 is exactly that id (a spec asking for root gets it);
    /// an id of 0 admits whatever the spec asks (root is the top of the bound).
    Fixed {
        /// The policy's uid.
        uid: u32,
        /// The policy's gid.
        gid: u32,
    },
    /// Any uid and gid other than 0 (a spec asking for root gets 65534); supplementary
    /// groups other than 0.
    NonRoot,
}

/// What one id (uid or gid) of a [`UserBound`] admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdBound {
    /// Exactly this id (never 0); a spec asking for 0 gets it.
    Exactly(u32),
    /// Any id but 0; a spec asking for 0 gets [`NOBODY_ID`].
    NotRoot,
    /// Whatever the spec asks.
    Any,
}

impl IdBound {
    fn of_fixed(id: u32) -> IdBound {
        if id == 0 {
            IdBound::Any
        } else {
            IdBound::Exactly(id)
        }
    }

    /// Whether every id this admits is also admitted by `outer`.
    pub fn within(self, outer: IdBound) -> bool {
        match (self, outer) {
            (_, IdBound::Any) => true,
            (IdBound::Any, _) => false,
            (IdBound::NotRoot, IdBound::NotRoot) => true,
            (IdBound::NotRoot, IdBound::Exactly(_)) => false,
            (IdBound::Exactly(a), IdBound::Exactly(b)) => a == b,
            (IdBound::Exactly(a), IdBound::NotRoot) => a != 0,
        }
    }
}

/// Which supplementary groups of the spec a [`UserBound`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GroupsBound {
    /// None: a fixed non-root identity is exactly that identity.
    None,
    /// All but group 0.
    NotRoot,
    /// All (a fixed root uid).
    Any,
}

impl UserBound {
    /// What the uid may be.
    pub fn uid(self) -> IdBound {
        match self {
            UserBound::Fixed { uid, .. } => IdBound::of_fixed(uid),
            UserBound::NonRoot => IdBound::NotRoot,
        }
    }

    /// What the gid may be.
    pub fn gid(self) -> IdBound {
        match self {
            UserBound::Fixed { gid, .. } => IdBound::of_fixed(gid),
            UserBound::NonRoot => IdBound::NotRoot,
        }
    }

    /// Which supplementary groups are kept.
    pub fn groups(self) -> GroupsBound {
        match self {
            UserBound::Fixed { uid: 0, .. } => GroupsBound::Any,
            UserBound::Fixed { .. } => GroupsBound::None,
            UserBound::NonRoot => GroupsBound::NotRoot,
        }
    }

    /// Whether every identity this bound admits is also admitted by `outer`.
    pub fn within(self, outer: UserBound) -> bool {
        self.uid().within(outer.uid())
            && self.gid().within(outer.gid())
            && self.groups() <= outer.groups()
    }
}

impl std::fmt::Display for UserBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserBound::Fixed { uid, gid } => write!(f, "{uid}:{gid}"),
            UserBound::NonRoot => f.write_str(NONROOT_USER),
        }
    }
}

impl ProcessPolicy {
    /// The numeric `(uid, gid)` of a fixed `user`, if it is one and well formed.
    pub fn user_ids(&self) -> Option<(u32, u32)> {
        let (uid, gid) = self.user.split_once(':')?;
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(uid) || !all_digits(gid) {
            return None;
        }
        Some((uid.parse().ok()?, gid.parse().ok()?))
    }

    /// The bound `user` sets, if it is well formed.
    pub fn user_bound(&self) -> Option<UserBound> {
        if self.user == NONROOT_USER {
            return Some(UserBound::NonRoot);
        }
        self.user_ids()
            .map(|(uid, gid)| UserBound::Fixed { uid, gid })
    }
}

impl AgentPolicy {
    /// The built-in strict policy used when the runtime config names none.
    ///
    /// Read-only rootfs, a 64Mi noexec `/tmp`, no network, user 65534:65534, no capabilities,
    /// no new privileges, 512Mi memory, 1 CPU, 128 pids, 1024 open files, full audit, kill on
    /// violation.
    pub fn strict_default() -> Self {
        AgentPolicy {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: Metadata {
                name: STRICT_DEFAULT_NAME.to_string(),
                description: Some(
                    "Built-in strict default: no network, read-only rootfs, noexec /tmp"
                        .to_string(),
                ),
                labels: BTreeMap::new(),
            },
            spec: PolicySpec {
                filesystem: FilesystemPolicy {
                    rootfs: RootfsMode::ReadOnly,
                    scratch: vec![ScratchZone {
                        path: "/tmp".to_string(),
                        size: ByteSize::mib(64),
                        exec: false,
                    }],
                    inputs: Vec::new(),
                    outputs: Vec::new(),
                },
                ..PolicySpec::default()
            },
        }
    }

    /// The policy's name (`metadata.name`).
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// Name of the built-in strict default policy.
pub const STRICT_DEFAULT_NAME: &str = "strict-default";
