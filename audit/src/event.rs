//! The audit event model: one [`AuditEvent`] is one JSON Lines record.
//!
//! Field names follow the OCSF Process, File System and Network Activity
//! classes where that costs nothing (`process.pid`, `file.path`,
//! `network.ip`...). Every struct here declares its fields in ascending key
//! order: serialising an event with serde therefore yields its canonical JSON
//! (sorted keys, no whitespace), which is what the hash chain hashes (see
//! `chain.rs`). A test guards that property; keep new fields in order.
//!
//! Building events from gVisor packets lives in `decode/`, building shim
//! lifecycle events in `lifecycle.rs`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::timestamp::Timestamp;

/// What kind of activity an event records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Process activity inside the sandbox (exec, exit, clone...).
    #[default]
    Process,
    /// File system activity inside the sandbox (open, write...).
    File,
    /// Network activity inside the sandbox (connect, bind...).
    Network,
    /// The shim's own view of the container (create, start, exit, kill...).
    Lifecycle,
    /// Policy decisions (violations).
    Policy,
    /// The audit pipeline itself (drops).
    Audit,
}

impl Category {
    /// The JSON name of the category.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::File => "file",
            Self::Network => "network",
            Self::Lifecycle => "lifecycle",
            Self::Policy => "policy",
            Self::Audit => "audit",
        }
    }
}

/// The activity within a category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A program image was started (container start or execve).
    #[default]
    Exec,
    /// A task, process or container ended.
    Exit,
    /// A task was cloned.
    Clone,
    /// fork or vfork.
    Fork,
    /// open, openat, creat.
    Open,
    /// close.
    Close,
    /// The read family.
    Read,
    /// The write family.
    Write,
    /// chdir, fchdir.
    Chdir,
    /// chroot.
    Chroot,
    /// setuid, setgid, setsid, setresuid, setresgid.
    Setid,
    /// prlimit64.
    Prlimit,
    /// pipe, pipe2.
    Pipe,
    /// fcntl.
    Fcntl,
    /// dup, dup2, dup3.
    Dup,
    /// signalfd, signalfd4.
    Signalfd,
    /// eventfd, eventfd2.
    Eventfd,
    /// timerfd_create, timerfd_settime, timerfd_gettime.
    Timerfd,
    /// inotify_init, inotify_add_watch, inotify_rm_watch.
    Inotify,
    /// mmap (newer gVisor only).
    Mmap,
    /// ptrace (newer gVisor only).
    Ptrace,
    /// A raw syscall point (`syscall/sysno/N`).
    Syscall,
    /// socket.
    Socket,
    /// socketpair.
    Socketpair,
    /// connect.
    Connect,
    /// bind.
    Bind,
    /// accept, accept4.
    Accept,
    /// listen (newer gVisor only).
    Listen,
    /// A DNS query the shim's per-sandbox forwarder answered or refused.
    Dns,
    /// The shim created the container (with the policy applied).
    Create,
    /// The shim started the container.
    Start,
    /// The shim deleted the container.
    Delete,
    /// The container was paused.
    Pause,
    /// The container was resumed.
    Resume,
    /// Someone asked to kill the container's processes.
    Kill,
    /// The container hit its memory limit.
    Oom,
    /// The container ran past its time limit.
    Timeout,
    /// The shim ran one of the container's OCI hooks on the host.
    Hook,
    /// The policy was violated.
    Violation,
    /// Events were lost; `dropped` says how many and where.
    Dropped,
}

/// One audit record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// The activity.
    pub action: Action,
    /// Who asked for a lifecycle action (for example `safehouse stop` and its uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The kind of activity.
    pub category: Category,
    /// The container the event belongs to (gVisor's container id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Extra lifecycle facts that have no field of their own (signal sent, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<BTreeMap<String, serde_json::Value>>,
    /// For `audit`/`dropped`: how many events were lost and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<DropInfo>,
    /// For exits: code, signal and reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitInfo>,
    /// The file acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileInfo>,
    /// Short human-readable note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The containerd namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    /// The network endpoint acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkInfo>,
    /// The Kubernetes pod, when CRI gave its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<PodInfo>>,
    /// gVisor's trace point name, for events that came from the Sentry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<Cow<'static, str>>,
    /// The policy in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Arc<PolicyRef>>,
    /// Hex sha256 of the previous event of this sandbox (64 zeros for the first).
    #[serde(default)]
    #[schemars(pattern(r"^[0-9a-f]{64}$"))]
    pub prev_hash: String,
    /// The process (task) that acted, as seen inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    /// The syscall's return value and errno, where the point gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<SyscallResult>,
    /// The sandbox (pod) the event belongs to; chains are per sandbox.
    pub sandbox_id: String,
    /// Position in this sandbox's chain, from 1.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// The syscall, for raw syscall points and unknown syscall numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<SyscallInfo>,
    /// When it happened (the Sentry's clock for sandbox events).
    pub time: Timestamp,
    /// For `policy`/`violation`: which rule and what was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
    /// Hex sha256 of this event's canonical JSON without `hash`; always last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", pattern(r"^[0-9a-f]{64}$"))]
    pub hash: Option<String>,
}

impl AuditEvent {
    /// For an exec inside the sandbox (`process`/`exec`), the executed binary's
    /// path: what a `process.tools` allowlist is checked against.
    pub fn executed_binary(&self) -> Option<&str> {
        if self.category != Category::Process || self.action != Action::Exec {
            return None;
        }
        let process = self.process.as_ref()?;
        match &process.binary {
            Some(binary) => Some(binary.path.as_str()),
            None => process.argv.as_ref()?.first().map(String::as_str),
        }
    }
}

/// The process (task) an event is about, as seen inside the sandbox.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    /// Arguments of an exec (capped; see `argv_truncated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// True when argv was cut to fit the line size limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv_truncated: Option<bool>,
    /// The executable of an exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<BinaryInfo>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Effective group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// The variables of an exec's environment that make the ELF loader map other code
    /// ([`LOADER_VARIABLES`]), with their values (each capped at 4096 bytes). No other
    /// variable of the environment is ever recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loader_env: Option<BTreeMap<String, String>>,
    /// Task name (comm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Process id (thread group id) inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Thread id inside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<i32>,
    /// Effective user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// Environment variables that make the dynamic loader (glibc's or musl's) or glibc itself
/// load code from a file the variable names: what an exec's `process.loader_env` records.
pub const LOADER_VARIABLES: &[&str] = &["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "GCONV_PATH"];

/// The executable file of an exec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BinaryInfo {
    /// Owner group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// File mode bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Path of the executable.
    pub path: String,
    /// Hex sha256 of the file, when gVisor computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Owner user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// The file an event is about.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileInfo {
    /// `read`, `write` or `read_write`, from the open flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Cow<'static, str>>,
    /// Bytes asked for by a read or write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Directory fd a relative path was resolved against (not AT_FDCWD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirfd: Option<i64>,
    /// The file descriptor acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i64>,
    /// Names of the set open flags (`O_WRONLY`, `O_CREAT`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag_names: Option<Vec<Cow<'static, str>>>,
    /// Raw flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    /// Mode given to open with O_CREAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Offset of a positional read or write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Path, made absolute (lexically) from cwd or the dirfd's path when possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The path exactly as the task passed it, when it differs from `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_path: Option<String>,
}

/// The network endpoint an event is about.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkInfo {
    /// Address family: `inet`, `inet6`, `unix`, `netlink`, `packet` or `af_N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// The socket's file descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i64>,
    /// IP address (v4 dotted, v6 RFC 5952).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Protocol number given to socket().
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<i32>,
    /// Socket type: `stream`, `dgram`, `seqpacket`, `raw` or `type_N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_type: Option<String>,
    /// Unix socket path (abstract names start with `@`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix_path: Option<String>,
}

/// A syscall's outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyscallResult {
    /// errno when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i64>,
    /// Symbolic errno (`ENOENT`...), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<String>,
    /// Return value.
    pub retval: i64,
}

/// The syscall itself, for raw points and unknown numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyscallInfo {
    /// Raw arguments (raw syscall points only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<u64>>,
    /// Name, when known for this architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Syscall number.
    pub nr: u64,
}

/// How something ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitInfo {
    /// Exit code, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// True when a core dump was requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_dumped: Option<bool>,
    /// Why it ended, when the shim knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ExitReason>,
    /// Terminating signal, when it was killed by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The raw wait status (gVisor points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

/// Why a container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// It exited on its own.
    Normal,
    /// It was killed (by a signal someone sent).
    Killed,
    /// It was killed for running out of memory.
    Oom,
    /// It was killed for running past its time limit.
    Timeout,
    /// It was killed for violating its policy.
    Violation,
}

/// Lost events.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropInfo {
    /// How many events were lost since the last report.
    pub count: u64,
    /// Where they were lost.
    pub source: DropSource,
}

/// Where events were lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DropSource {
    /// Inside gVisor (the header's dropped_count grew: the sink socket was full).
    #[default]
    Sentry,
    /// In Safehouse's bounded queue in front of the writer.
    Queue,
    /// Packets that could not be decoded (malformed or hostile).
    Malformed,
    /// Packets of a message type this build does not know.
    UnknownType,
    /// Packets the network filter refused but did not log (over its rate), or that the shim
    /// had not read when the sandbox ended: counted by the table, reported at delete.
    NetfilterLog,
    /// Events over the sandbox's audit budget (events or bytes per second), cut by the
    /// writer; events enforcement needs (exec, exit, lifecycle, policy) are never cut.
    Budget,
}

/// The Kubernetes pod, from the CRI annotations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodInfo {
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pod namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The policy in force.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// What applying the policy changed in the spec (create events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<Vec<String>>,
    /// Digest of the compiled policy (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Policy name.
    pub name: String,
}

/// A policy violation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    /// What was done: `audit` (recorded only) or `kill`.
    pub enforcement: String,
    /// What happened, in words.
    pub reason: String,
    /// The policy rule broken (for example `process.tools`).
    pub rule: String,
}
