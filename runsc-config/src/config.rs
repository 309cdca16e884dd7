//! The runtime config file: which runsc, with which flags, which policies and where audit goes.
//!
//! ```toml
//! binary = "/usr/bin/runsc"          # the runsc to drive
//! root = "/run/safehouse/runsc"      # runsc --root (one subdirectory per containerd namespace)
//! platform = "auto"                  # auto | systrap | ptrace | kvm
//! network = "auto"                   # auto | none | host | sandbox
//! debug_log_dir = ""                 # runsc --debug-log directory; empty = off
//! dns_upstreams = ["10.96.0.10"]     # resolvers the allowlist DNS forwarder asks (default: the
//!                                    # container's /etc/resolv.conf mount, else the node's)
//!
//! [runsc]                            # extra global runsc flags, checked against `runsc flags`
//! overlay2 = "root:memory"
//!
//! [policy]
//! default = "/etc/safehouse/policies/strict.yaml"
//! dir = "/etc/safehouse/policies"
//! selectable = ["code-interpreter"]  # may be looser than default; tighter ones need no listing
//!
//! [audit]
//! output = "/var/log/safehouse/audit.jsonl"
//! ```
//! Every key is optional: with no file at all the built-in defaults apply.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::probe::RunscProbe;

/// Where the shim looks for its config when containerd passes no `ConfigPath`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/safehouse/config.toml";

/// Flags the shim sets itself; a `[runsc]` entry may not override them.
const MANAGED_FLAGS: &[&str] = &[
    "root",
    "network",
    "platform",
    "debug-log",
    "debug",
    "log",
    "log-format",
    "pod-init-config",
    "panic-log",
];

/// Flags that would let the untrusted spec loosen the sandbox or that are never safe.
const FORBIDDEN_FLAGS: &[&str] = &["allow-flag-override", "rootless"];

/// Flags that would open the sandbox to the host for every container of the node, each with
/// the one value that leaves it closed: host Unix sockets and FIFOs reached through the
/// gofer, raw sockets, and running outside the cgroup limits.
const LOOSENING_FLAGS: &[(&str, &str)] = &[
    ("host-uds", "none"),
    ("host-fifo", "none"),
    ("net-raw", "false"),
    ("ignore-cgroups", "false"),
];

/// Why a runtime config was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read runtime config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped keys.
    #[error("runtime config {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What toml said, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("runtime config {path}: {key}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `[runsc]` flag the installed runsc does not know.
    #[error(
        "runtime config {path}: [runsc] {flag}: runsc {version} ({binary}) has no flag --{flag}"
    )]
    UnknownFlag {
        /// The config file.
        path: PathBuf,
        /// The flag.
        flag: String,
        /// The installed runsc release.
        version: String,
        /// The runsc binary.
        binary: PathBuf,
    },
}

/// How a sandbox gets its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// `none` for a container without a network namespace of its own; for one given a namespace
    /// (CRI, nerdctl, `ctr --with-ns`), `host` run inside that namespace (never the node's).
    #[default]
    Auto,
    /// Loopback only.
    None,
    /// runsc's host network stack, inside the container's own network namespace.
    Host,
    /// gVisor's netstack (needs a kernel where runsc's root-namespace check passes).
    Sandbox,
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkMode::Auto => "auto",
            NetworkMode::None => "none",
            NetworkMode::Host => "host",
            NetworkMode::Sandbox => "sandbox",
        })
    }
}

/// `[policy]`: which agent policies apply.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// The policy every container gets unless an annotation selects another.
    pub default: Option<PathBuf>,
    /// Directory of `NAME.yaml`/`NAME.json` policies selectable by annotation.
    pub dir: Option<PathBuf>,
    /// Policies in `dir` an annotation may select even though they are looser than `default`
    /// (`"*"`: every policy in `dir`). Any policy in `dir` no looser than `default` on every
    /// dimension is selectable without being listed.
    #[serde(default)]
    pub selectable: Vec<String>,
    /// Host directories, beyond the usual containerd/kubelet ones, that CRI-managed bind
    /// mounts may come from. Not needed for the `hosts`, `resolv.conf` and `hostname`
    /// containerd made for the container's own pod sandbox (the shim recognises those under
    /// any root), nor for `/dev/shm` under the bundle's containerd state.
    #[serde(default)]
    pub cri_sources: Vec<PathBuf>,
}

/// `[audit]`: where the audit stream goes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// File or fifo the shims append JSON Lines to.
    #[serde(default = "default_audit_output")]
    pub output: PathBuf,
    /// The node's audit signing key (`safehouse node install` creates it). When the file
    /// exists, the writer appends signed, forward-secure checkpoints; when it does not, the log
    /// has its hash chains only.
    #[serde(default = "default_signing_key")]
    pub signing_key: PathBuf,
    /// A file on another mount (one the node's root cannot rewrite) that receives a copy of
    /// every checkpoint.
    #[serde(default)]
    pub checkpoints: Option<PathBuf>,
    /// A command (argv, run without a shell) that gets every batch of new checkpoints on its
    /// stdin, to send them off the node: `["curl", "-fsS", "--data-binary", "@-",
    /// "https://anchor.example/ingest"]` for an HTTP(S) endpoint, `["logger", "-t",
    /// "safehouse-anchor"]` for syslog forwarding.
    #[serde(default)]
    pub checkpoints_command: Option<Vec<String>>,
    /// Where a shim spools lines it could not write before it had to exit (a full
    /// destination); the next writer writes them first.
    #[serde(default = "default_audit_spool")]
    pub spool: PathBuf,
    /// Each sandbox's allowance of audit events and bytes; what is cut is counted in a
    /// `dropped` event (source `budget`), and exec, violation, kill and lifecycle events are
    /// never cut.
    #[serde(default)]
    pub budget: AuditBudget,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            output: default_audit_output(),
            signing_key: default_signing_key(),
            checkpoints: None,
            checkpoints_command: None,
            spool: default_audit_spool(),
            budget: AuditBudget::default(),
        }
    }
}

/// `[audit.budget]`: per-sandbox rates (sustained per second, and bursts); a key left out
/// takes the audit writer's default (10 000 events/s, bursts of 50 000; 4 MiB/s, bursts of
/// 32 MiB).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditBudget {
    /// Events per second.
    pub events_per_sec: Option<u64>,
    /// Events at once.
    pub event_burst: Option<u64>,
    /// Bytes of audit lines per second.
    pub bytes_per_sec: Option<u64>,
    /// Bytes at once.
    pub byte_burst: Option<u64>,
}

fn default_signing_key() -> PathBuf {
    PathBuf::from("/etc/safehouse/audit.key")
}

fn default_audit_spool() -> PathBuf {
    PathBuf::from("/run/safehouse/audit-spool")
}

fn default_audit_output() -> PathBuf {
    PathBuf::from("/var/log/safehouse/audit.jsonl")
}

/// The whole runtime config, with defaults filled in.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The runsc binary.
    #[serde(default = "default_binary")]
    pub binary: PathBuf,
    /// runsc's state root; the shim appends the containerd namespace.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// `auto`, `systrap`, `ptrace` or `kvm`.
    #[serde(default = "default_platform")]
    pub platform: String,
    /// Default network mode.
    #[serde(default)]
    pub network: NetworkMode,
    /// Directory for runsc's debug logs (`--debug --debug-log=DIR/`); unset = off.
    #[serde(default)]
    pub debug_log_dir: Option<PathBuf>,
    /// Upstream resolvers of the per-sandbox DNS forwarder (`allowlist` policies with host
    /// names). Empty: the container's `/etc/resolv.conf` mount, else the node's.
    #[serde(default)]
    pub dns_upstreams: Vec<std::net::IpAddr>,
    /// Extra global runsc flags, `name = value`.
    #[serde(default, rename = "runsc")]
    pub runsc_flags: BTreeMap<String, toml::Value>,
    /// Policy selection.
    #[serde(default)]
    pub policy: PolicySection,
    /// Audit output.
    #[serde(default)]
    pub audit: AuditSection,
    /// Where this config came from (`None` = built-in defaults).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_binary() -> PathBuf {
    PathBuf::from("/usr/bin/runsc")
}
fn default_root() -> PathBuf {
    PathBuf::from("/run/safehouse/runsc")
}
fn default_platform() -> String {
    "auto".into()
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            binary: default_binary(),
            root: default_root(),
            platform: default_platform(),
            network: NetworkMode::Auto,
            debug_log_dir: None,
            dns_upstreams: Vec::new(),
            runsc_flags: BTreeMap::new(),
            policy: PolicySection::default(),
            audit: AuditSection::default(),
            source: None,
        }
    }
}

impl RuntimeConfig {
    /// Loads `path`; a missing file at the default path means built-in defaults, a missing file
    /// anywhere else (an operator named it) is an error.
    pub fn load(path: Option<&Path>) -> Result<RuntimeConfig, ConfigError> {
        let (path, explicit) = match path {
            Some(p) if !p.as_os_str().is_empty() => (p.to_path_buf(), true),
            _ => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(RuntimeConfig::default())
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Parses config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<RuntimeConfig, ConfigError> {
        let mut cfg: RuntimeConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        cfg.source = Some(path.to_path_buf());
        cfg.check_static()?;
        Ok(cfg)
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source_display(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn source_display(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<built-in defaults>"))
    }

    /// Checks what can be checked without runsc.
    fn check_static(&self) -> Result<(), ConfigError> {
        if !self.root.is_absolute() {
            return Err(self.invalid("root", "must be an absolute path"));
        }
        if !matches!(
            self.platform.as_str(),
            "auto" | "systrap" | "ptrace" | "kvm"
        ) {
            return Err(self.invalid(
                "platform",
                format!(
                    "unknown platform {:?} (auto, systrap, ptrace or kvm)",
                    self.platform
                ),
            ));
        }
        if let Some(dir) = &self.debug_log_dir {
            if !dir.as_os_str().is_empty() && !dir.is_absolute() {
                return Err(self.invalid("debug_log_dir", "must be an absolute path"));
            }
        }
        if let Some(argv) = &self.audit.checkpoints_command {
            if argv.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(self.invalid(
                    "audit.checkpoints_command",
                    "must name a program: [\"PROGRAM\", \"ARG\", ...]",
                ));
            }
        }
        for (name, value) in &self.runsc_flags {
            let key = format!("runsc.{name}");
            if MANAGED_FLAGS.contains(&name.as_str()) {
                return Err(self.invalid(
                    &key,
                    "is set by Safehouse itself; use the top-level key instead",
                ));
            }
            if FORBIDDEN_FLAGS.contains(&name.as_str()) || name.starts_with("TESTONLY") {
                return Err(self.invalid(&key, "would weaken the sandbox and is not allowed"));
            }
            if let Some((_, closed)) = LOOSENING_FLAGS.iter().find(|(n, _)| n == name) {
                let given = match value {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if given != *closed {
                    return Err(self.invalid(
                        &key,
                        format!(
                            "would open the sandbox to the host and is not allowed (only {closed:?})"
                        ),
                    ));
                }
            }
            if !matches!(
                value,
                toml::Value::String(_)
                    | toml::Value::Boolean(_)
                    | toml::Value::Integer(_)
                    | toml::Value::Float(_)
            ) {
                return Err(self.invalid(&key, "must be a string, boolean or number"));
            }
        }
        for name in &self.policy.selectable {
            if name == "*" {
                continue;
            }
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(self.invalid(
                    "policy.selectable",
                    format!("{name:?} is not a policy name"),
                ));
            }
        }
        Ok(())
    }

    /// The platform to use with the installed runsc (`auto` picks systrap where it exists).
    pub fn resolved_platform(&self, probe: &RunscProbe) -> Result<String, ConfigError> {
        match self.platform.as_str() {
            "auto" if probe.version.has_systrap() => Ok("systrap".into()),
            "auto" => Ok("ptrace".into()),
            "systrap" if !probe.version.has_systrap() => Err(self.invalid(
                "platform",
                format!(
                    "runsc {} has no systrap platform (use ptrace or auto)",
                    probe.version
                ),
            )),
            other => Ok(other.to_string()),
        }
    }

    /// Global runsc flags for every invocation (the shim adds `--root` per namespace and
    /// `--network` per sandbox). Rejects flags the installed runsc does not know.
    pub fn global_flags(&self, probe: &RunscProbe) -> Result<Vec<String>, ConfigError> {
        let mut flags = vec![format!("--platform={}", self.resolved_platform(probe)?)];
        if let Some(dir) = self
            .debug_log_dir
            .as_ref()
            .filter(|d| !d.as_os_str().is_empty())
        {
            flags.push("--debug".into());
            // runsc expands %ID% and %COMMAND%; a trailing slash makes one file per command.
            flags.push(format!("--debug-log={}/", dir.display()));
        }
        for (name, value) in &self.runsc_flags {
            if !probe.knows_flag(name) {
                return Err(ConfigError::UnknownFlag {
                    path: self.source_display(),
                    flag: name.clone(),
                    version: probe.version.to_string(),
                    binary: probe.path.clone(),
                });
            }
            let value = match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            flags.push(format!("--{name}={value}"));
        }
        Ok(flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::RunscVersion;

    fn probe(version: u32, flags: &[&str]) -> RunscProbe {
        RunscProbe {
            path: PathBuf::from("/usr/bin/runsc"),
            version: RunscVersion(version),
            flags: flags.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn no_file_at_default_path_means_defaults() {
        let cfg = RuntimeConfig::default();
        assert_eq!(cfg.binary, PathBuf::from("/usr/bin/runsc"));
        assert_eq!(cfg.network, NetworkMode::Auto);
        assert!(cfg.policy.default.is_none());
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let err = RuntimeConfig::load(Some(Path::new("/nonexistent/safehouse.toml")))
            .expect_err("missing explicit config must fail");
        assert!(
            err.to_string().contains("/nonexistent/safehouse.toml"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_checkpoints_command_is_refused_naming_the_key() {
        for text in [
            "[audit]\ncheckpoints_command = []\n",
            "[audit]\ncheckpoints_command = [\" \"]\n",
        ] {
            let err = RuntimeConfig::parse(text, Path::new("c.toml")).unwrap_err();
            assert!(
                err.to_string().contains("audit.checkpoints_command"),
                "{err}"
            );
        }
        let ok = RuntimeConfig::parse(
            "[audit]\ncheckpoints_command = [\"logger\", \"-t\", \"x\"]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(ok.audit.checkpoints_command.unwrap()[0], "logger");
    }

    #[test]
    fn parses_a_full_config() {
        let text = r#"
binary = "/opt/runsc"
root = "/run/sh"
platform = "ptrace"
network = "none"
debug_log_dir = "/var/log/runsc"
[runsc]
overlay2 = "root:memory"
directfs = false
[policy]
default = "/etc/safehouse/p.yaml"
dir = "/etc/safehouse/policies"
selectable = ["code-interpreter"]
[audit]
output = "/tmp/audit.jsonl"
"#;
        let cfg = RuntimeConfig::parse(text, Path::new("c.toml")).expect("valid config");
        assert_eq!(cfg.network, NetworkMode::None);
        assert_eq!(cfg.policy.selectable, vec!["code-interpreter".to_string()]);
        let flags = cfg
            .global_flags(&probe(20240729, &["overlay2", "directfs"]))
            .expect("flags known");
        assert_eq!(
            flags,
            vec![
                "--platform=ptrace",
                "--debug",
                "--debug-log=/var/log/runsc/",
                "--directfs=false",
                "--overlay2=root:memory"
            ]
        );
    }

    #[test]
    fn unknown_key_names_line() {
        let err = RuntimeConfig::parse("binray = \"/x\"\n", Path::new("c.toml"))
            .expect_err("typo must fail");
        let msg = err.to_string();
        assert!(msg.contains("c.toml") && msg.contains("binray"), "{msg}");
    }

    #[test]
    fn unknown_runsc_flag_names_flag_and_version() {
        let cfg = RuntimeConfig::parse("[runsc]\nnot-a-flag = true\n", Path::new("c.toml"))
            .expect("parses");
        let err = cfg
            .global_flags(&probe(20221219, &["overlay2"]))
            .expect_err("unknown flag");
        let msg = err.to_string();
        assert!(
            msg.contains("not-a-flag") && msg.contains("20221219"),
            "{msg}"
        );
    }

    #[test]
    fn managed_and_forbidden_flags_are_refused() {
        for text in [
            "[runsc]\nnetwork = \"host\"\n",
            "[runsc]\nallow-flag-override = true\n",
            "[runsc]\nTESTONLY-unsafe-nonroot = true\n",
            "[runsc]\nhost-uds = \"open\"\n",
            "[runsc]\nhost-fifo = \"open\"\n",
            "[runsc]\nnet-raw = true\n",
            "[runsc]\nignore-cgroups = true\n",
        ] {
            let err = RuntimeConfig::parse(text, Path::new("c.toml"))
                .expect_err(text)
                .to_string();
            let flag = text["[runsc]\n".len()..]
                .split(' ')
                .next()
                .unwrap_or_default();
            assert!(err.contains(&format!("runsc.{flag}")), "{text}: {err}");
        }
        // The closed value of each is no loosening.
        let closed = "[runsc]\nhost-uds = \"none\"\nnet-raw = false\nignore-cgroups = false\n";
        RuntimeConfig::parse(closed, Path::new("c.toml")).expect("closed values");
    }

    #[test]
    fn platform_auto_follows_version() {
        let cfg = RuntimeConfig::default();
        assert_eq!(
            cfg.resolved_platform(&probe(20240729, &[])).unwrap(),
            "systrap"
        );
        assert_eq!(
            cfg.resolved_platform(&probe(20221219, &[])).unwrap(),
            "ptrace"
        );
        let cfg = RuntimeConfig::parse("platform = \"systrap\"", Path::new("c.toml")).unwrap();
        assert!(cfg.resolved_platform(&probe(20221219, &[])).is_err());
        assert!(RuntimeConfig::parse("platform = \"vm\"", Path::new("c.toml")).is_err());
    }
}
