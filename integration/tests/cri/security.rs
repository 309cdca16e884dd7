//! A pod's own security context inside the sandbox: each container's seccomp profile filters
//! its processes (runsc applies it only with `--oci-seccomp`, and only to a container's init:
//! the shim's helper applies it to what ExecSync starts), masked paths read as nothing and
//! read-only paths refuse writes (runsc ignores both lists; the shim turns them into mounts).
//! Each container reports what it saw on stdout and exits; the test reads its CRI log.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1 as cri;
use safehouse_integration::command::wait_for;
use safehouse_integration::cri_env::CriEnv;

use crate::pods::HANDLER;

/// A profile that allows everything but creating directories.
const DENY_MKDIR: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
}"#;

/// What a container reports: its seccomp mode and whether mkdir(2) works for it.
const SECCOMP_PROBE: &str = "grep Seccomp: /proc/self/status; if mkdir /probe-dir 2>/dev/null; then echo mkdir-allowed; else echo mkdir-denied; fi";

/// CRI's defaults for an unprivileged container, plus a file gVisor has with content.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/proc/meminfo",
];
const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What a container reports about its masked and read-only paths. Both sysctls are writable
/// in gVisor's /proc/sys unless something makes them read-only.
const PATHS_PROBE: &str = "\
echo meminfo-bytes=$(cat /proc/meminfo 2>/dev/null | wc -c); \
echo acpi-entries=$(ls -A /proc/acpi 2>/dev/null | wc -l); \
for f in /proc/sys/kernel/yama/ptrace_scope /proc/sys/net/ipv4/tcp_sack; do \
  if [ -e $f ]; then v=$(cat $f); if err=$(echo $v 2>&1 > $f); then echo $f=written; else echo \"$f=refused:$err\"; fi; fi; \
done; \
echo sysctl-readable=$(cat /proc/sys/kernel/yama/ptrace_scope)";

fn container(
    env: &CriEnv,
    name: &str,
    probe: &str,
    security: cri::LinuxContainerSecurityContext,
) -> cri::ContainerConfig {
    let mut c = env.container_config(name, &["sh", "-c", probe]);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(security),
        ..Default::default()
    });
    c
}

fn profile(kind: cri::security_profile::ProfileType, localhost: &str) -> cri::SecurityProfile {
    cri::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost.to_string(),
    }
}

/// Runs `config` in the pod to its exit and returns its stdout lines.
fn report(
    env: &CriEnv,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    config: &cri::ContainerConfig,
    ids: &mut Vec<String>,
) -> Result<Vec<String>> {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = env.cri.create_and_start(pod_id, pod, config)?;
    ids.push(id.clone());
    let status = env.wait_exited(&id, Duration::from_secs(30))?;
    ensure!(status.exit_code == 0, "{name} exited {}", status.exit_code);
    let path = Path::new(&pod.log_directory).join(format!("{name}.log"));
    let text = wait_for("the probe's report", Duration::from_secs(10), || {
        let text = fs::read_to_string(&path).unwrap_or_default();
        Ok((!text.is_empty() && text.lines().count() >= 2).then_some(text))
    })
    .with_context(|| format!("log file {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            (f.len() == 4 && f[1] == "stdout")
                .then(|| f[3].split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect())
}

/// Two containers of one pod: one under a Localhost profile that denies mkdir(2), one under
/// RuntimeDefault. Each is filtered (`Seccomp: 2`) by its own profile: mkdir fails in the first
/// only.
pub fn seccomp_profiles_per_container(env: &CriEnv) -> Result<()> {
    use cri::security_profile::ProfileType;
    let name = env.unique("seccomp");
    let pod = env.pod_config(&name, &[]);
    let profile_file = env
        .containerd
        .work_dir()
        .join(format!("{name}-deny-mkdir.json"));
    fs::write(&profile_file, DENY_MKDIR)?;
    let local = profile(ProfileType::Localhost, &profile_file.display().to_string());
    let default = profile(ProfileType::RuntimeDefault, "");
    let mut seen = Vec::new();
    env.with_pod(&pod, HANDLER, |pod_id| {
        let mut ids = Vec::new();
        for (label, security) in [("localhost", local), ("runtime-default", default)] {
            let config = container(
                env,
                label,
                SECCOMP_PROBE,
                cri::LinuxContainerSecurityContext {
                    seccomp: Some(security),
                    ..Default::default()
                },
            );
            let lines = report(env, pod_id, &pod, &config, &mut ids)?;
            seen.push((label, lines));
        }
        Ok(ids)
    })?;
    let want = [
        ("localhost", vec!["Seccomp: 2", "mkdir-denied"]),
        ("runtime-default", vec!["Seccomp: 2", "mkdir-allowed"]),
    ];
    for ((label, lines), (_, want)) in seen.iter().zip(want) {
        ensure!(
            *lines == want,
            "container with the {label} seccomp profile reported {lines:?}, expected {want:?} (its own profile in force inside the sandbox)"
        );
    }
    Ok(())
}

/// Three running containers of one pod, under a Localhost profile that denies mkdir(2),
/// RuntimeDefault and Unconfined: a command started in each by ExecSync is filtered by that
/// container's profile (`Seccomp: 2`, mkdir denied under the first only) or, unconfined, not
/// at all (`Seccomp: 0`). runsc itself filters only a container's init.
pub fn seccomp_profiles_hold_in_exec(env: &CriEnv) -> Result<()> {
    use cri::security_profile::ProfileType;
    let name = env.unique("seccompexec");
    let pod = env.pod_config(&name, &[]);
    let profile_file = env
        .containerd
        .work_dir()
        .join(format!("{name}-deny-mkdir.json"));
    fs::write(&profile_file, DENY_MKDIR)?;
    let cases = [
        (
            "localhost",
            profile(ProfileType::Localhost, &profile_file.display().to_string()),
            "Seccomp: 2\nmkdir-denied\n",
        ),
        (
            "runtime-default",
            profile(ProfileType::RuntimeDefault, ""),
            "Seccomp: 2\nmkdir-allowed\n",
        ),
        (
            "unconfined",
            profile(ProfileType::Unconfined, ""),
            "Seccomp: 0\nmkdir-allowed\n",
        ),
    ];
    let mut seen = Vec::new();
    env.with_pod(&pod, HANDLER, |pod_id| {
        let mut ids = Vec::new();
        for (label, security, _) in &cases {
            let config = container(
                env,
                label,
                "sleep 1000",
                cri::LinuxContainerSecurityContext {
                    seccomp: Some(security.clone()),
                    ..Default::default()
                },
            );
            ids.push(env.cri.create_and_start(pod_id, &pod, &config)?);
        }
        for ((label, _, _), id) in cases.iter().zip(&ids) {
            let out = env.cri.exec_sync(id, &["sh", "-c", SECCOMP_PROBE], 20)?;
            seen.push((*label, out));
        }
        Ok(ids)
    })?;
    for ((label, out), (_, _, want)) in seen.iter().zip(&cases) {
        // gVisor separates the status field with a tab.
        let got: String = out
            .stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
            .collect();
        ensure!(
            out.exit_code == 0 && got == *want,
            "ExecSync in the container with the {label} seccomp profile: {out:?}, expected stdout {want:?} (the container's own profile on what exec starts)"
        );
    }
    Ok(())
}

/// A container with CRI's masked and read-only paths (and /proc/meminfo masked): the masked
/// file reads as nothing, the masked directory is empty, and the sysctls under the read-only
/// /proc/sys can be read but not written.
pub fn masked_and_readonly_paths(env: &CriEnv) -> Result<()> {
    let name = env.unique("masked");
    let pod = env.pod_config(&name, &[]);
    let mut lines = Vec::new();
    env.with_pod(&pod, HANDLER, |pod_id| {
        let mut ids = Vec::new();
        let config = container(
            env,
            "paths",
            PATHS_PROBE,
            cri::LinuxContainerSecurityContext {
                masked_paths: MASKED.iter().map(|s| s.to_string()).collect(),
                readonly_paths: READONLY.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        );
        lines = report(env, pod_id, &pod, &config, &mut ids)?;
        Ok(ids)
    })?;
    let has = |l: &str| lines.iter().any(|x| x == l);
    ensure!(
        has("meminfo-bytes=0"),
        "masked /proc/meminfo could be read: {lines:?}"
    );
    ensure!(
        has("acpi-entries=0"),
        "masked /proc/acpi is not empty: {lines:?}"
    );
    let writes: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("/proc/sys/"))
        .collect();
    ensure!(!writes.is_empty(), "no sysctl probed: {lines:?}");
    // Refused by the read-only mount (EROFS), not for lack of a capability or by gVisor's own
    // sysctl table: that is what readonlyPaths adds.
    ensure!(
        writes
            .iter()
            .all(|l| l.contains("=refused:") && l.contains("Read-only file system")),
        "a sysctl under the read-only /proc/sys was written, or refused otherwise than by a read-only mount: {lines:?}"
    );
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with("sysctl-readable=") && l.len() > "sysctl-readable=".len()),
        "/proc/sys can no longer be read: {lines:?}"
    );
    Ok(())
}
