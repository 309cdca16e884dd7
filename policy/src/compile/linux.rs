//! The `linux` section: host namespaces and non-standard devices are refused, device cgroup
//! rules beyond the standard set are dropped, and cgroup limits are tightened to the policy.

use std::path::Path;

use oci_spec::runtime::{
    Linux, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxMemory, LinuxNamespaceType,
    LinuxPids, LinuxResources, Spec,
};

use super::{refused, CompileError};
use crate::manifest::{AgentPolicy, ResourcePolicy};
use crate::paths::normalize;

/// Namespaces whose absence from `linux.namespaces` means sharing the host's.
const REQUIRED_NAMESPACES: &[(LinuxNamespaceType, &str)] = &[
    (LinuxNamespaceType::Pid, "pid"),
    (LinuxNamespaceType::Ipc, "ipc"),
    (LinuxNamespaceType::Network, "network"),
];

/// Device nodes a container may have: (path, char major, minor).
const STANDARD_DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
    ("/dev/console", 5, 1),
    ("/dev/ptmx", 5, 2),
];

/// Character devices containerd's default spec allows in the device cgroup, beyond
/// `STANDARD_DEVICES`: `/dev/pts/*` (136:any) and `/dev/net/tun` (10:200).
const EXTRA_CGROUP_CHAR_DEVICES: &[(i64, Option<i64>)] = &[(136, None), (10, Some(200))];

/// Default CFS period when the spec sets none (100 ms).
const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
/// Longest CFS period the kernel accepts (1 s).
const MAX_CPU_PERIOD_US: u64 = 1_000_000;
/// Shortest CFS quota the kernel accepts (1 ms).
const MIN_CPU_QUOTA_US: i64 = 1_000;

/// Sysctls whose only effect is to let unprivileged processes do more (bind low ports, open
/// ICMP sockets): runtimes' defaults set them (Docker's and nerdctl's
/// `net.ipv4.ip_unprivileged_port_start=0`). runsc does not apply them, which narrows what the
/// spec asked; they are dropped and the narrowing is recorded.
pub const SYSCTLS_DROPPED_AS_NARROWING: &[&str] = &[
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
];

/// `linux.sysctl`: runsc applies none of the spec's sysctls (gVisor's Sentry has its own, and
/// most of Linux's are absent). One that only widens what the agent may do is dropped (a
/// narrowing, recorded); any other is refused naming it: the container would run without a
/// setting it asked for (`kernel.shm_rmid_forced=1` hardens, and would silently not hold).
pub(super) fn confine_sysctls(
    policy: &AgentPolicy,
    spec: &mut Spec,
    narrowed: &mut Vec<super::Narrowing>,
) -> Result<(), CompileError> {
    let Some(linux) = spec.linux_mut().as_mut() else {
        return Ok(());
    };
    let Some(sysctls) = linux.sysctl().clone() else {
        return Ok(());
    };
    if let Some(key) = sysctls
        .keys()
        .find(|k| !SYSCTLS_DROPPED_AS_NARROWING.contains(&k.as_str()))
    {
        return Err(refused(
            policy,
            format!("linux.sysctl.{key}"),
            format!(
                "gVisor does not apply sysctls from the spec, so {key}={:?} would not hold; refused by policy {:?}",
                sysctls[key], policy.metadata.name
            ),
        ));
    }
    for (key, value) in &sysctls {
        narrowed.push(super::Narrowing {
            field: format!("linux.sysctl.{key}"),
            detail: format!("{value:?} dropped: gVisor does not apply it, which only narrows what unprivileged processes may do"),
        });
    }
    linux.set_sysctl(None);
    Ok(())
}

pub(super) fn confine(policy: &AgentPolicy, spec: &mut Spec) -> Result<(), CompileError> {
    let name = &policy.metadata.name;
    let linux = spec.linux_mut().get_or_insert_with(Linux::default);

    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    for (typ, label) in REQUIRED_NAMESPACES {
        let entry = namespaces.iter().position(|n| n.typ() == *typ);
        match entry {
            None => {
                return Err(refused(
                    policy,
                    "linux.namespaces",
                    format!("no {label} namespace means the host's {label} namespace, refused by policy {name:?}"),
                ))
            }
            Some(i) => {
                let path = namespaces[i].path().as_deref().map(Path::to_string_lossy);
                if let Some(p) = path.filter(|p| normalize(p).is_some_and(|p| p.starts_with("/proc/1/"))) {
                    return Err(refused(
                        policy,
                        format!("linux.namespaces[{i}] ({label}, path {p})"),
                        format!("joining the host init's {label} namespace is refused by policy {name:?}"),
                    ));
                }
            }
        }
    }

    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let path = d.path().to_string_lossy();
        let standard = d.typ() == LinuxDeviceType::C
            && normalize(&path).is_some_and(|p| {
                STANDARD_DEVICES
                    .iter()
                    .any(|(sp, ma, mi)| *sp == p && *ma == d.major() && *mi == d.minor())
            });
        if !standard {
            return Err(refused(
                policy,
                format!(
                    "linux.devices[{i}] ({path}, {} {}:{})",
                    d.typ().as_str(),
                    d.major(),
                    d.minor()
                ),
                format!("device outside the standard set refused by policy {name:?}"),
            ));
        }
    }

    let resources = linux
        .resources_mut()
        .get_or_insert_with(LinuxResources::default);
    if let Some(rules) = resources.devices_mut().take() {
        let kept: Vec<LinuxDeviceCgroup> = rules
            .into_iter()
            .filter(|r| !r.allow() || standard_rule(r))
            .collect();
        resources.set_devices(Some(kept));
    }

    tighten_resources(&policy.spec.resources, resources);
    Ok(())
}

/// Tightens cgroup limits to the policy's: memory (and memory+swap, no swap), CPU quota and
/// the host pids limit are each the smaller of what was asked and what the policy allows. The
/// same rule applies at create and when a running container's resources are updated.
pub fn tighten_resources(r: &ResourcePolicy, resources: &mut LinuxResources) {
    let policy_mem = i64::try_from(r.memory.bytes()).unwrap_or(i64::MAX);
    let memory = resources
        .memory_mut()
        .get_or_insert_with(LinuxMemory::default);
    let limit = tighter(memory.limit(), policy_mem);
    memory.set_limit(Some(limit));
    // Memory+swap equal to memory: no swap.
    memory.set_swap(Some(limit));

    let cpu = resources.cpu_mut().get_or_insert_with(LinuxCpu::default);
    let period = cpu
        .period()
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_CPU_PERIOD_US);
    let policy_quota = r.cpus.quota_for_period(period);
    let spec_is_tighter = cpu.quota().is_some_and(|q| q > 0 && q <= policy_quota);
    if spec_is_tighter {
        cpu.set_period(Some(period));
    } else if policy_quota >= MIN_CPU_QUOTA_US {
        cpu.set_period(Some(period));
        cpu.set_quota(Some(policy_quota));
    } else {
        // The kernel refuses quotas under 1 ms: express small CPU shares over a longer period.
        cpu.set_period(Some(MAX_CPU_PERIOD_US));
        cpu.set_quota(Some(
            r.cpus
                .quota_for_period(MAX_CPU_PERIOD_US)
                .max(MIN_CPU_QUOTA_US),
        ));
    }

    // The host cgroup's pids limit counts the whole sandbox: the Sentry's threads, the gofer
    // and one systrap stub per process inside. The agent's own limit is RLIMIT_NPROC (see
    // process.rs); the cgroup is the backstop, with room for gVisor itself.
    let pids = resources.pids_mut().get_or_insert_with(LinuxPids::default);
    let spec_pids = Some(pids.limit());
    pids.set_limit(tighter(
        spec_pids,
        i64::from(r.pids) + SANDBOX_PIDS_HEADROOM,
    ));
}

/// Host pids the sandbox's own machinery (Sentry threads, gofer, stubs) may use on top of the
/// policy's `pids`, which RLIMIT_NPROC enforces inside.
pub const SANDBOX_PIDS_HEADROOM: i64 = 256;

/// The lower of the spec's limit (≤ 0 or absent means unlimited) and the policy's.
fn tighter(spec: Option<i64>, policy: i64) -> i64 {
    match spec {
        Some(s) if s > 0 => s.min(policy),
        _ => policy,
    }
}

/// Whether an allow rule only grants standard devices (or only `mknod`).
fn standard_rule(r: &LinuxDeviceCgroup) -> bool {
    let access = r.access().as_deref().unwrap_or("rwm");
    if access == "m" {
        return true;
    }
    if r.typ() != Some(LinuxDeviceType::C) {
        return false;
    }
    let (Some(major), minor) = (r.major(), r.minor()) else {
        return false;
    };
    STANDARD_DEVICES
        .iter()
        .any(|(_, ma, mi)| *ma == major && minor == Some(*mi))
        || EXTRA_CGROUP_CHAR_DEVICES
            .iter()
            .any(|(ma, mi)| *ma == major && (mi.is_none() || *mi == minor))
}
