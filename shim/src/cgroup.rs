//! The host cgroups of a sandbox: whether the kernel's OOM killer struck in one, and new
//! limits written into one (Task Update: runsc has no `update` command).
//!
//! gVisor does not enforce the memory limit itself; the host kernel does, on the cgroup runsc
//! puts the sandbox in (`linux.cgroupsPath`). Handles cgroup v2 (`memory.events`, `memory.max`,
//! ...) and v1 (`memory.oom_control`, `memory.limit_in_bytes`, ...), as nodes run both.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

/// Where the node mounts its cgroup hierarchies.
pub const ROOT: &str = "/sys/fs/cgroup";

/// The file holding the OOM kill counter for `cgroups_path` (an absolute cgroupfs path; the
/// systemd `slice:prefix:name` form is not resolved).
pub fn oom_counter_file(root: &Path, cgroups_path: &str) -> Option<PathBuf> {
    if !cgroups_path.starts_with('/') || cgroups_path.contains("..") {
        return None;
    }
    let rel = cgroups_path.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        Some(root.join(rel).join("memory.events"))
    } else {
        Some(root.join("memory").join(rel).join("memory.oom_control"))
    }
}

/// How many processes the OOM killer has killed in the sandbox's cgroup.
pub fn oom_kills(cgroups_path: &str) -> Option<u64> {
    let file = oom_counter_file(Path::new(ROOT), cgroups_path)?;
    parse_oom_kill(&std::fs::read_to_string(file).ok()?)
}

/// The file that caps the CPU time of the cgroup `cgroups_path`, and the value that lifts
/// the cap: a killed sandbox's threads must run to exit, and a sandbox that spent its quota
/// (an agent busy on purpose) has them wait for the next period, tens of milliseconds.
pub fn cpu_quota_release(root: &Path, cgroups_path: &str) -> Option<(PathBuf, &'static str)> {
    if !cgroups_path.starts_with('/') || cgroups_path.contains("..") {
        return None;
    }
    let rel = cgroups_path.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        Some((root.join(rel).join("cpu.max"), "max"))
    } else {
        Some((root.join("cpu").join(rel).join("cpu.cfs_quota_us"), "-1"))
    }
}

/// Reads `oom_kill N` from memory.events or memory.oom_control.
fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// Writes the limits of `res` (memory, memory+swap, CPU quota/period/shares, pids, cpuset)
/// into the cgroup `cgroups_path` under `root`; returns the files written. Fails naming the
/// file when the cgroup is missing or the kernel refuses a value (a memory limit below the
/// current usage, say): a half-applied update is reported, never hidden.
pub fn apply_limits(
    root: &Path,
    cgroups_path: &str,
    res: &LinuxResources,
) -> Result<Vec<PathBuf>, String> {
    if !cgroups_path.starts_with('/') || cgroups_path.contains("..") {
        return Err(format!(
            "cgroup {cgroups_path:?} is not an absolute cgroupfs path (systemd slices are not supported)"
        ));
    }
    let rel = cgroups_path.trim_start_matches('/');
    let writes = if root.join("cgroup.controllers").exists() {
        v2_writes(&root.join(rel), res)
    } else {
        v1_writes(root, rel, res)
    };
    let mut written = Vec::new();
    for (file, value) in writes {
        if !file.parent().is_some_and(Path::is_dir) {
            return Err(format!(
                "cgroup {} does not exist",
                file.parent().unwrap_or(&file).display()
            ));
        }
        std::fs::write(&file, &value)
            .map_err(|e| format!("cannot write {value:?} to {}: {e}", file.display()))?;
        written.push(file);
    }
    Ok(written)
}

/// Removes the (empty) cgroup `cgroups_path` from every hierarchy under `root` (rmdir only:
/// a cgroup that still holds processes stays). runsc removes the cgroups it made when it
/// deletes a container, except when the sandbox had already died (OOM-killed, say); returns
/// the directories removed then.
pub fn remove_leftover(root: &Path, cgroups_path: &str) -> Vec<PathBuf> {
    if !cgroups_path.starts_with('/') || cgroups_path.contains("..") || cgroups_path == "/" {
        return Vec::new();
    }
    let rel = cgroups_path.trim_start_matches('/');
    let mut dirs = vec![root.join(rel)];
    if !root.join("cgroup.controllers").exists() {
        if let Ok(entries) = std::fs::read_dir(root) {
            dirs.extend(entries.flatten().map(|e| e.path().join(rel)));
        }
    }
    dirs.into_iter()
        .filter(|d| d.is_dir() && std::fs::remove_dir(d).is_ok())
        .collect()
}

/// Whether no process is left in cgroup `cgroups_path` under `root`, in any hierarchy (an
/// absent cgroup holds none).
pub fn holds_no_process(root: &Path, cgroups_path: &str) -> bool {
    // The systemd form (`slice:prefix:name`) is not resolved here: not known to be empty.
    let Some(rel) = cgroups_path.strip_prefix('/') else {
        return false;
    };
    if rel.is_empty() || rel.contains("..") {
        return false;
    }
    let mut dirs = vec![root.join(rel)];
    if !root.join("cgroup.controllers").exists() {
        if let Ok(entries) = std::fs::read_dir(root) {
            dirs.extend(entries.flatten().map(|e| e.path().join(rel)));
        }
    }
    dirs.iter().all(|d| {
        std::fs::read_to_string(d.join("cgroup.procs"))
            .map(|procs| procs.trim().is_empty())
            .unwrap_or(true)
    })
}

fn v1_writes(root: &Path, rel: &str, res: &LinuxResources) -> Vec<(PathBuf, String)> {
    let mut w = Vec::new();
    if let Some(m) = res.memory() {
        let dir = root.join("memory").join(rel);
        let current: i64 = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(i64::MAX);
        let limit = m
            .limit()
            .map(|l| (dir.join("memory.limit_in_bytes"), l.to_string()));
        // memsw exists only with swap accounting; it must stay >= the memory limit, so it
        // goes first when the limit grows and last when it shrinks.
        let swap = m
            .swap()
            .filter(|_| dir.join("memory.memsw.limit_in_bytes").exists())
            .map(|s| (dir.join("memory.memsw.limit_in_bytes"), s.to_string()));
        let grows = m.limit().is_some_and(|l| l < 0 || l > current);
        if grows {
            w.extend(swap.clone());
            w.extend(limit);
        } else {
            w.extend(limit);
            w.extend(swap);
        }
    }
    if let Some(c) = res.cpu() {
        let dir = root.join("cpu").join(rel);
        if let Some(p) = c.period().filter(|p| *p > 0) {
            w.push((dir.join("cpu.cfs_period_us"), p.to_string()));
        }
        if let Some(q) = c.quota() {
            w.push((dir.join("cpu.cfs_quota_us"), q.to_string()));
        }
        if let Some(s) = c.shares().filter(|s| *s > 0) {
            w.push((dir.join("cpu.shares"), s.to_string()));
        }
        let cpuset = root.join("cpuset").join(rel);
        if let Some(cpus) = c.cpus().as_deref().filter(|v| !v.is_empty()) {
            w.push((cpuset.join("cpuset.cpus"), cpus.to_string()));
        }
        if let Some(mems) = c.mems().as_deref().filter(|v| !v.is_empty()) {
            w.push((cpuset.join("cpuset.mems"), mems.to_string()));
        }
    }
    if let Some(p) = res.pids() {
        w.push((
            root.join("pids").join(rel).join("pids.max"),
            pids_value(p.limit()),
        ));
    }
    w
}

fn v2_writes(dir: &Path, res: &LinuxResources) -> Vec<(PathBuf, String)> {
    let mut w = Vec::new();
    if let Some(m) = res.memory() {
        if let Some(l) = m.limit() {
            w.push((dir.join("memory.max"), max_or(l)));
            // v2 counts swap apart: memory+swap minus memory.
            if let Some(s) = m.swap() {
                if dir.join("memory.swap.max").exists() {
                    let swap = if s < 0 || l < 0 { -1 } else { (s - l).max(0) };
                    w.push((dir.join("memory.swap.max"), max_or(swap)));
                }
            }
        }
    }
    if let Some(c) = res.cpu() {
        let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
        if let Some(q) = c.quota() {
            w.push((dir.join("cpu.max"), format!("{} {period}", max_or(q))));
        }
        if let Some(s) = c.shares().filter(|s| *s > 0) {
            w.push((dir.join("cpu.weight"), shares_to_weight(s).to_string()));
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|v| !v.is_empty()) {
            w.push((dir.join("cpuset.cpus"), cpus.to_string()));
        }
        if let Some(mems) = c.mems().as_deref().filter(|v| !v.is_empty()) {
            w.push((dir.join("cpuset.mems"), mems.to_string()));
        }
    }
    if let Some(p) = res.pids() {
        w.push((dir.join("pids.max"), pids_value(p.limit())));
    }
    w
}

/// `max` for "no limit" (≤ 0), else the number.
fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

fn pids_value(limit: i64) -> String {
    if limit <= 0 {
        "max".into()
    } else {
        limit.to_string()
    }
}

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), the conversion runc uses.
fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_cap_to_lift_is_found_for_v1_and_v2() {
        let v1 = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            cpu_quota_release(v1.path(), "/k8s/pod1"),
            Some((v1.path().join("cpu/k8s/pod1/cpu.cfs_quota_us"), "-1"))
        );
        let v2 = tempfile::tempdir().expect("tempdir");
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu memory").expect("write");
        assert_eq!(
            cpu_quota_release(v2.path(), "/k8s/pod1"),
            Some((v2.path().join("k8s/pod1/cpu.max"), "max"))
        );
        assert_eq!(cpu_quota_release(v1.path(), "k8s/../x"), None);
    }

    #[test]
    fn finds_the_counter_for_v1_and_v2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 = oom_counter_file(dir.path(), "/k8s/pod1").expect("v1");
        assert!(v1.ends_with("memory/k8s/pod1/memory.oom_control"));
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids").expect("write");
        let v2 = oom_counter_file(dir.path(), "/k8s/pod1").expect("v2");
        assert!(v2.ends_with("k8s/pod1/memory.events"));
        assert_eq!(oom_counter_file(dir.path(), "system.slice:cri:abc"), None);
        assert_eq!(oom_counter_file(dir.path(), "/../../etc"), None);
    }

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).expect("resources json")
    }

    #[test]
    fn writes_v1_limits_into_each_controller() {
        let root = tempfile::tempdir().expect("tempdir");
        for c in ["memory", "cpu", "pids"] {
            std::fs::create_dir_all(root.path().join(c).join("k8s/pod1")).expect("mkdir");
        }
        std::fs::write(
            root.path().join("memory/k8s/pod1/memory.limit_in_bytes"),
            "1073741824",
        )
        .expect("write");
        let res = resources(
            r#"{"memory":{"limit":67108864,"swap":67108864},"cpu":{"quota":50000,"period":100000,"shares":512},"pids":{"limit":300}}"#,
        );
        let written = apply_limits(root.path(), "/k8s/pod1", &res).expect("applied");
        let read = |f: &str| std::fs::read_to_string(root.path().join(f)).expect("read");
        assert_eq!(read("memory/k8s/pod1/memory.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu/k8s/pod1/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/k8s/pod1/cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu/k8s/pod1/cpu.shares"), "512");
        assert_eq!(read("pids/k8s/pod1/pids.max"), "300");
        assert_eq!(
            written.len(),
            5,
            "no memsw file, so no swap write: {written:?}"
        );
    }

    #[test]
    fn writes_v2_limits_and_converts_shares() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").expect("w");
        std::fs::create_dir_all(root.path().join("k8s/pod1")).expect("mkdir");
        let res = resources(
            r#"{"memory":{"limit":67108864},"cpu":{"quota":-1,"shares":1024},"pids":{"limit":0}}"#,
        );
        apply_limits(root.path(), "/k8s/pod1", &res).expect("applied");
        let read = |f: &str| std::fs::read_to_string(root.path().join(f)).expect("read");
        assert_eq!(read("k8s/pod1/memory.max"), "67108864");
        assert_eq!(read("k8s/pod1/cpu.max"), "max 100000");
        assert_eq!(read("k8s/pod1/cpu.weight"), "39");
        assert_eq!(read("k8s/pod1/pids.max"), "max");
    }

    #[test]
    fn refuses_a_missing_cgroup_or_a_relative_path() {
        let root = tempfile::tempdir().expect("tempdir");
        let res = resources(r#"{"memory":{"limit":1000000}}"#);
        let err = apply_limits(root.path(), "/k8s/gone", &res).expect_err("missing");
        assert!(err.contains("does not exist"), "{err}");
        let err = apply_limits(root.path(), "kubepods.slice:cri:x", &res).expect_err("systemd");
        assert!(err.contains("not an absolute"), "{err}");
    }

    #[test]
    fn removes_only_empty_leftover_cgroups() {
        let root = tempfile::tempdir().expect("tempdir");
        for c in ["memory", "cpu"] {
            std::fs::create_dir_all(root.path().join(c).join("k8s/pod1/c1")).expect("mkdir");
        }
        // A cgroup with a child (as one with processes) is not removable: rmdir fails.
        std::fs::create_dir_all(root.path().join("cpu/k8s/pod1/c2/busy")).expect("mkdir");
        let removed = remove_leftover(root.path(), "/k8s/pod1/c1");
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!root.path().join("memory/k8s/pod1/c1").exists());
        assert!(remove_leftover(root.path(), "/k8s/pod1/c2").is_empty());
        assert!(root.path().join("cpu/k8s/pod1/c2").exists());
        assert!(remove_leftover(root.path(), "/").is_empty());
        assert!(remove_leftover(root.path(), "/k8s/../etc").is_empty());
    }

    #[test]
    fn parses_both_formats() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            Some(2)
        );
        assert_eq!(
            parse_oom_kill("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
            Some(1)
        );
        assert_eq!(parse_oom_kill("garbage"), None);
    }

    #[test]
    fn a_cgroup_with_a_process_in_any_hierarchy_is_not_empty() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        for h in ["memory", "pids"] {
            std::fs::create_dir_all(r.join(h).join("pod/c1")).expect("mkdir");
            std::fs::write(r.join(h).join("pod/c1/cgroup.procs"), "").expect("write");
        }
        assert!(holds_no_process(r, "/pod/c1"));
        std::fs::write(r.join("pids/pod/c1/cgroup.procs"), "4242\n").expect("write");
        assert!(!holds_no_process(r, "/pod/c1"), "the gofer is still there");
        assert!(holds_no_process(r, "/pod/absent"));
        assert!(!holds_no_process(r, "/pod/../etc"));
        assert!(!holds_no_process(r, "kubepods.slice:cri:c1"), "unresolved");
    }
}
