//! `safehouse doctor`: can this node run Safehouse? One check per prerequisite, each failure
//! with a one-line fix; the exit code is non-zero when a required check fails.
//!
//! Checks only read: they probe runsc (a `runsc do /bin/true` per platform, never kvm, which
//! hangs without nested virtualisation), ask containerd for its version and merged config, and
//! look at /proc and /sys. Nothing here changes the node.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::containerd_config as cc;
use crate::node_cmd::{containerd_version, SHIM};

/// `doctor` arguments.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The Safehouse runtime config to check (the one a handler's ConfigPath names).
    #[arg(long, default_value = safehouse_runsc_config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// containerd's config file.
    #[arg(long, default_value = crate::node_cmd::CONTAINERD_CONFIG)]
    containerd_config: PathBuf,
    /// The containerd binary.
    #[arg(long, default_value = "containerd")]
    containerd: String,
    /// Print the checks as JSON.
    #[arg(long)]
    json: bool,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, with a caveat (or a feature only some policies need is missing).
    Warn,
    /// Safehouse cannot work (if required) or a feature is unusable.
    Fail,
}

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name (`runsc`, `platform`, ...).
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// Whether a failure means Safehouse cannot run containers here.
    pub required: bool,
    /// What was found.
    pub detail: String,
    /// How to fix a failure or warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(
    name: &'static str,
    required: bool,
    r: std::result::Result<String, (Status, String, String)>,
) -> Check {
    match r {
        Ok(detail) => Check {
            name,
            status: Status::Ok,
            required,
            detail,
            fix: None,
        },
        Err((status, detail, fix)) => Check {
            name,
            status,
            required,
            detail,
            fix: Some(fix),
        },
    }
}

/// The last runsc release measured to check `noexec` on `execve` only (see docs/policy.md).
const EXECVE_ONLY_NOEXEC: u32 = 20240729;

/// What `process.tools` compiled into `noexec` mounts stops on this runsc: version facts,
/// not a probe (measuring `mmap(PROT_EXEC)` needs a sandbox and a test program).
fn tools_mounts(
    version: safehouse_runsc_config::RunscVersion,
) -> std::result::Result<String, (Status, String, String)> {
    if version.0 <= EXECVE_ONLY_NOEXEC {
        Err(warn(
            format!(
                "runsc {version} refuses execve of a file on a noexec mount, so process.tools holds for execve; it does not refuse mmap(PROT_EXEC), so the ELF loader run as a program and code mapped by hand are not stopped by the mounts (measured on 20240729); memfd_create, which no mount reaches, is refused by the seccomp rule process.tools adds (see the oci-seccomp check)"
            ),
            "rely on the audit stream for those, or use a runsc that refuses mmap(PROT_EXEC) on noexec mounts",
        ))
    } else {
        Ok(format!(
            "runsc {version} is newer than the last release measured ({EXECVE_ONLY_NOEXEC}); process.tools holds for execve, and mmap(PROT_EXEC) on noexec mounts is refused by newer gVisor (not measured here)"
        ))
    }
}

/// Whether the installed runsc applies a spec's `linux.seccomp` inside the sandbox.
fn oci_seccomp(
    probe: &safehouse_runsc_config::RunscProbe,
) -> std::result::Result<String, (Status, String, String)> {
    let flag = safehouse_runsc_config::OCI_SECCOMP_FLAG;
    if probe.applies_oci_seccomp() {
        Ok(format!(
            "runsc {} has --{flag}: each container's linux.seccomp profile is applied to its processes inside the sandbox (not to processes started by exec, a runsc limit)",
            probe.version
        ))
    } else {
        Err(warn(
            format!(
                "runsc {} has no --{flag}: a container whose spec has a linux.seccomp profile (a pod with a seccomp profile) is refused at create",
                probe.version
            ),
            "install a runsc with --oci-seccomp: apt-get install -t bookworm-backports runsc",
        ))
    }
}

fn fail(detail: impl Into<String>, fix: impl Into<String>) -> (Status, String, String) {
    (Status::Fail, detail.into(), fix.into())
}

fn warn(detail: impl Into<String>, fix: impl Into<String>) -> (Status, String, String) {
    (Status::Warn, detail.into(), fix.into())
}

/// Runs `cmd` with a deadline; `None` when it could not run or took too long (then killed).
fn output_within(cmd: &mut Command, limit: Duration) -> Option<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return child.wait_with_output().ok(),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Runs every check.
pub fn checks(a: &DoctorArgs) -> Vec<Check> {
    let mut out = Vec::new();
    // The runtime config.
    let config = safehouse_runsc_config::RuntimeConfig::load(Some(&a.config));
    let cfg = match &config {
        Ok(c) => c.clone(),
        Err(_) => safehouse_runsc_config::RuntimeConfig::default(),
    };
    let missing_default =
        !a.config.exists() && a.config == Path::new(safehouse_runsc_config::DEFAULT_CONFIG_PATH);
    out.push(check(
        "config",
        true,
        match &config {
            Ok(_) if missing_default => {
                Ok(format!("{} absent: built-in defaults", a.config.display()))
            }
            Ok(_) => Ok(format!("{} is valid", a.config.display())),
            Err(e) if missing_default => {
                Ok(format!("{}: built-in defaults ({e})", a.config.display()))
            }
            Err(e) => Err(fail(
                e.to_string(),
                "fix the file (see deploy/config/config.toml for every key)",
            )),
        },
    ));
    if let Some(policy) = &cfg.policy.default {
        out.push(check(
            "policy",
            true,
            safehouse_policy::load_file(policy)
                .map(|p| format!("default policy {} ({})", p.metadata.name, policy.display()))
                .map_err(|e| {
                    fail(
                        e.to_string(),
                        format!(
                            "`safehouse policy lint {}` and fix what it says",
                            policy.display()
                        ),
                    )
                }),
        ));
    }
    // runsc.
    let probe = safehouse_runsc_config::RunscProbe::probe(&cfg.binary);
    out.push(check(
        "runsc",
        true,
        match &probe {
            Ok(p) if p.version.has_systrap() => {
                Ok(format!("{} version {}", cfg.binary.display(), p.version))
            }
            Ok(p) => Err(warn(
                format!(
                    "{} version {}: ptrace platform only (slow)",
                    cfg.binary.display(),
                    p.version
                ),
                "install a newer runsc: apt-get install -t bookworm-backports runsc",
            )),
            Err(e) => Err(fail(
                e.to_string(),
                "apt-get install -t bookworm-backports runsc (or set `binary` in the config)",
            )),
        },
    ));
    if let Ok(p) = &probe {
        out.push(check("tools-mounts", false, tools_mounts(p.version)));
        out.push(check("oci-seccomp", false, oci_seccomp(p)));
        if config.is_ok() || missing_default {
            out.push(check(
                "runsc-flags",
                true,
                cfg.global_flags(p)
                    .map(|f| format!("global flags accepted: {}", f.join(" ")))
                    .map_err(|e| {
                        fail(
                            e.to_string(),
                            "remove the flag from [runsc] or upgrade runsc",
                        )
                    }),
            ));
        }
        let platform = cfg
            .resolved_platform(p)
            .unwrap_or_else(|_| "systrap".into());
        out.push(check(
            "platform",
            true,
            try_platform(&cfg.binary, &platform),
        ));
    }
    // The shim containerd starts.
    out.push(check(
        "shim",
        true,
        match which(SHIM) {
            Some(p) => Ok(format!("{} on PATH", p.display())),
            None => Err(fail(
                format!("{SHIM} is not on PATH, so containerd cannot start it"),
                "make install (or `safehouse node install --from DIR`)",
            )),
        },
    ));
    // containerd.
    let version = output_within(
        Command::new(&a.containerd).arg("--version"),
        Duration::from_secs(10),
    )
    .and_then(|o| containerd_version(&String::from_utf8_lossy(&o.stdout)));
    out.push(check(
        "containerd",
        true,
        match &version {
            Some(v) => Ok(format!("containerd {v}")),
            None => Err(fail(
                format!("cannot run `{} --version`", a.containerd),
                "apt-get install containerd",
            )),
        },
    ));
    if version.is_some() {
        out.push(check("runtime-registered", true, registered(a)));
        handler_configs(a, &mut out);
    }
    // Kernel and host.
    out.push(check("cgroup", false, cgroup_version()));
    out.push(check(
        "seccomp",
        false,
        match std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail") {
            Ok(a) => Ok(format!("seccomp filters available ({})", a.trim())),
            Err(_) => Err(warn(
                "no seccomp in this kernel: runsc cannot filter its own syscalls",
                "use a kernel with CONFIG_SECCOMP_FILTER",
            )),
        },
    ));
    out.push(check(
        "user-namespaces",
        false,
        match std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .map(|s| s.trim().parse::<u64>())
        {
            Ok(Ok(n)) if n > 0 => Ok(format!("user namespaces enabled (max {n})")),
            _ => Err(warn(
                "user namespaces disabled",
                "sysctl -w user.max_user_namespaces=15000 (rootless runsc needs them)",
            )),
        },
    ));
    out.push(check(
        "nftables",
        false,
        match output_within(
            Command::new("nft").args(["list", "tables"]),
            Duration::from_secs(10),
        ) {
            Some(o) if o.status.success() => {
                Ok("nft works (egress rules of network policies)".into())
            }
            Some(o) => Err(warn(
                format!(
                    "nft list tables: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                "load nf_tables (modprobe nf_tables); egress allowlists need it",
            )),
            None => Err(warn(
                "nft not found",
                "apt-get install nftables (egress allowlists need it)",
            )),
        },
    ));
    out
}

/// Each registered handler's own runtime config (other than the one checked above) must load:
/// a handler whose ConfigPath is missing or invalid fails every container it is asked for.
fn handler_configs(a: &DoctorArgs, out: &mut Vec<Check>) {
    let Some(text) = merged_config(a) else { return };
    let Ok(handlers) = cc::registered_handlers(&text) else {
        return;
    };
    for (name, config) in handlers {
        let Some(config) = config.map(PathBuf::from).filter(|c| *c != a.config) else {
            continue;
        };
        let res = safehouse_runsc_config::RuntimeConfig::load(Some(&config))
            .map(|_| format!("handler {name}: {} is valid", config.display()))
            .map_err(|e| {
                fail(
                    format!("handler {name}: {e}"),
                    format!(
                        "safehouse doctor --config {} for details; fix or reinstall it",
                        config.display()
                    ),
                )
            });
        out.push(check("handler-config", true, res));
    }
}

/// containerd's merged config (imports included) as it reads it itself; else the file.
fn merged_config(a: &DoctorArgs) -> Option<String> {
    output_within(
        Command::new(&a.containerd)
            .arg("--config")
            .arg(&a.containerd_config)
            .args(["config", "dump"]),
        Duration::from_secs(10),
    )
    .filter(|o| o.status.success())
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .or_else(|| std::fs::read_to_string(&a.containerd_config).ok())
}

fn registered(a: &DoctorArgs) -> std::result::Result<String, (Status, String, String)> {
    let text = match merged_config(a) {
        Some(t) => t,
        None => {
            return Err(fail(
                format!("cannot read {}", a.containerd_config.display()),
                "safehouse node install --from DIR (registers the safehouse handlers)",
            ))
        }
    };
    let handlers = cc::registered_handlers(&text)
        .map_err(|e| fail(e.to_string(), "fix containerd's config"))?;
    if handlers.is_empty() {
        return Err(fail(
            format!(
                "no runtime handler with runtime_type {} in containerd's config",
                cc::RUNTIME_TYPE
            ),
            "safehouse node install --from DIR, then restart containerd",
        ));
    }
    Ok(handlers
        .iter()
        .map(|(n, c)| format!("{n} ({})", c.as_deref().unwrap_or("default config")))
        .collect::<Vec<_>>()
        .join(", "))
}

fn try_platform(
    runsc: &Path,
    platform: &str,
) -> std::result::Result<String, (Status, String, String)> {
    if platform == "kvm" {
        return Err(warn(
            "platform kvm: not tried (it hangs where nested virtualisation is missing)",
            "set platform = \"systrap\" unless this node has /dev/kvm and is not a VM",
        ));
    }
    let root = std::env::temp_dir().join(format!("safehouse-doctor-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&root);
    let started = Instant::now();
    let res = output_within(
        Command::new(runsc)
            .arg(format!("--root={}", root.display()))
            .arg("--network=none")
            .arg(format!("--platform={platform}"))
            .args(["do", "/bin/true"]),
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_dir_all(&root);
    match res {
        Some(o) if o.status.success() => Ok(format!(
            "{platform}: a sandbox ran /bin/true in {} ms",
            started.elapsed().as_millis()
        )),
        Some(o) => Err(fail(
            format!(
                "{platform}: runsc do /bin/true failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
            ),
            "try platform = \"ptrace\" in the config; run doctor as root",
        )),
        None => Err(fail(
            format!("{platform}: runsc do /bin/true did not finish in 30 s"),
            "try platform = \"ptrace\" in the config",
        )),
    }
}

fn cgroup_version() -> std::result::Result<String, (Status, String, String)> {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let hybrid = Path::new("/sys/fs/cgroup/unified").exists();
    let v1 = Path::new("/sys/fs/cgroup/memory").exists();
    match (v2, v1, hybrid) {
        (true, _, _) => Ok("cgroup v2 (unified)".into()),
        (false, true, true) => Ok("cgroup v1 with a unified hierarchy beside it (hybrid)".into()),
        (false, true, false) => Ok("cgroup v1".into()),
        _ => Err(warn(
            "no cgroup hierarchy found under /sys/fs/cgroup",
            "mount cgroup2 at /sys/fs/cgroup (memory limits and OOM reporting need it)",
        )),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs doctor.
pub fn run(a: DoctorArgs) -> Result<ExitCode> {
    let all = checks(&a);
    let failed = all.iter().any(|c| c.required && c.status == Status::Fail);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": !failed, "checks": all}))?
        );
    } else {
        for c in &all {
            let mark = match c.status {
                Status::Ok => "ok  ",
                Status::Warn => "warn",
                Status::Fail if c.required => "FAIL",
                Status::Fail => "fail",
            };
            println!("[{mark}] {:<18} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("       {:<18} fix: {fix}", "");
            }
        }
        println!(
            "{}",
            if failed {
                "This node cannot run Safehouse yet: fix the FAIL lines above."
            } else {
                "This node can run Safehouse."
            }
        );
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use safehouse_runsc_config::RunscProbe;

    use super::*;

    fn probe(flags: &str) -> RunscProbe {
        RunscProbe::from_outputs(
            Path::new("/usr/bin/runsc"),
            "runsc version 0.0~20240729.0\n",
            flags,
        )
        .expect("probe")
    }

    #[test]
    fn says_whether_runsc_applies_the_specs_seccomp_profile() {
        let ok = oci_seccomp(&probe("  -network value\n  -oci-seccomp\n")).expect("has it");
        assert!(ok.contains("--oci-seccomp"), "{ok}");
        let (status, detail, fix) =
            oci_seccomp(&probe("  -network value\n")).expect_err("lacks it");
        assert_eq!(status, Status::Warn);
        assert!(
            detail.contains("linux.seccomp") && detail.contains("refused"),
            "{detail}"
        );
        assert!(fix.contains("runsc"), "{fix}");
    }
}
