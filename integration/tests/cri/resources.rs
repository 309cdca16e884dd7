//! Resources through CRI: OOMKilled in ContainerStatus, real numbers in ContainerStats and
//! PodSandboxStats, and UpdateContainerResources reaching the host cgroup (runsc has no
//! `update`: the shim writes the cgroup itself, within the policy's ceilings).

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1 as cri;
use safehouse_integration::command::wait_for;
use safehouse_integration::cri_env::CriEnv;

use crate::pods::HANDLER;

const MIB: i64 = 1024 * 1024;
/// The memory ceiling of the harness's open policy (1Gi).
const POLICY_MEMORY: i64 = 1024 * MIB;

/// A pod whose memory limit (set on the pod cgroup, as kubelet does) is far below what its
/// container allocates: the kernel's OOM killer ends the sandbox, and CRI reports the
/// container as exited 137 with reason OOMKilled.
pub fn oom_killed(env: &CriEnv) -> Result<()> {
    let name = env.unique("oom");
    // kubelet creates the pod cgroup with the pod's limit before RunPodSandbox.
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dir = env.create_pod_cgroup(&name, "memory")?;
    let limit_file = dir.join(if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    });
    fs::write(&limit_file, (96 * MIB).to_string())
        .with_context(|| format!("write {}", limit_file.display()))?;
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let mut config = env.container_config(
            "hog",
            &[
                "sh",
                "-c",
                "sleep 1; dd if=/dev/zero of=/dev/null bs=400M count=1; echo survived",
            ],
        );
        config.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 96 * MIB,
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = env.cri.create_and_start(pod_id, &pod, &config)?;
        let status = env.wait_exited(&id, Duration::from_secs(60))?;
        ensure!(
            status.reason == "OOMKilled" && status.exit_code == 137,
            "expected exit 137 with reason OOMKilled, got exit {} reason {:?} message {:?}",
            status.exit_code,
            status.reason,
            status.message
        );
        Ok(vec![id])
    })
}

/// ContainerStats and PodSandboxStats carry real numbers: CPU time after a busy loop, and
/// memory after filling 32 MiB of tmpfs.
pub fn stats(env: &CriEnv) -> Result<()> {
    let name = env.unique("stats");
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let id = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config(
                "busy",
                &[
                    "sh",
                    "-c",
                    "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; dd if=/dev/zero of=/tmp/fill bs=1M count=32 2>/dev/null; touch /tmp/done; sleep 1000",
                ],
            ),
        )?;
        wait_for("the workload to finish", Duration::from_secs(60), || {
            Ok((env.cri.exec_sync(&id, &["test", "-e", "/tmp/done"], 10)?.exit_code == 0)
                .then_some(()))
        })?;
        let stats = env.cri.container_stats(&id)?;
        let (cpu, memory) = cpu_and_working_set(stats.cpu.as_ref(), stats.memory.as_ref());
        ensure!(
            cpu > 10_000_000,
            "ContainerStats: CPU {cpu} ns after a busy loop (expected > 10 ms): {stats:?}"
        );
        ensure!(
            memory > 32 * MIB as u64,
            "ContainerStats: working set {memory} bytes with 32 MiB in tmpfs: {stats:?}"
        );
        let pod_stats = env.cri.pod_stats(pod_id)?;
        let linux = pod_stats.linux.as_ref().context("PodSandboxStats: no linux stats")?;
        let (pod_cpu, pod_memory) = cpu_and_working_set(linux.cpu.as_ref(), linux.memory.as_ref());
        // The container's CPU is the Sentry's accounting, the pod's the host cgroup's: both
        // real, not comparable to the nanosecond.
        ensure!(
            pod_cpu > 10_000_000,
            "PodSandboxStats: CPU {pod_cpu} ns after a busy loop (expected > 10 ms): {pod_stats:?}"
        );
        ensure!(
            pod_memory > 32 * MIB as u64,
            "PodSandboxStats: working set {pod_memory} bytes with 32 MiB in tmpfs: {pod_stats:?}"
        );
        Ok(vec![id])
    })
}

/// CPU time (ns) and working set (bytes) of a container's or a pod's stats; 0 when missing.
fn cpu_and_working_set(
    cpu: Option<&cri::CpuUsage>,
    memory: Option<&cri::MemoryUsage>,
) -> (u64, u64) {
    (
        cpu.and_then(|c| c.usage_core_nano_seconds.as_ref())
            .map_or(0, |v| v.value),
        memory
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value),
    )
}

/// UpdateContainerResources: new memory, CPU quota and shares land in the container's host
/// cgroup; a memory limit above the policy's ceiling is tightened to it, not applied.
pub fn update(env: &CriEnv) -> Result<()> {
    let name = env.unique("update");
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let id = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("app", &["sleep", "1000"]),
        )?;
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let read = |controller: &str, v1: &str, v2name: &str| -> Result<String> {
            let file = env.cgroup_file(&name, &id, controller, if v2 { v2name } else { v1 });
            Ok(fs::read_to_string(&file)
                .with_context(|| format!("read {}", file.display()))?
                .trim()
                .to_string())
        };
        env.cri.update_resources(
            &id,
            cri::LinuxContainerResources {
                memory_limit_in_bytes: 200 * MIB,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 512,
                ..Default::default()
            },
        )?;
        let memory = read("memory", "memory.limit_in_bytes", "memory.max")?;
        ensure!(
            memory == (200 * MIB).to_string(),
            "memory limit after the update: {memory}, expected {}",
            200 * MIB
        );
        if v2 {
            let cpu = read("cpu", "", "cpu.max")?;
            ensure!(cpu == "50000 100000", "cpu.max after the update: {cpu}");
        } else {
            let quota = read("cpu", "cpu.cfs_quota_us", "")?;
            ensure!(quota == "50000", "cfs quota after the update: {quota}");
            let shares = read("cpu", "cpu.shares", "")?;
            ensure!(shares == "512", "cpu shares after the update: {shares}");
        }

        // Beyond the policy's ceiling: applied as the ceiling.
        env.cri.update_resources(
            &id,
            cri::LinuxContainerResources {
                memory_limit_in_bytes: 8 * POLICY_MEMORY,
                ..Default::default()
            },
        )?;
        let memory = read("memory", "memory.limit_in_bytes", "memory.max")?;
        ensure!(
            memory == POLICY_MEMORY.to_string(),
            "an update asking 8 GiB against a 1 GiB policy left {memory} in the cgroup"
        );
        // The container still runs.
        let out = env.cri.exec_sync(&id, &["echo", "alive"], 10)?;
        ensure!(out.stdout == "alive\n", "after the updates: {out:?}");
        Ok(vec![id])
    })
}
