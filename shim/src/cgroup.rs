//! The sandbox's host cgroup, read for one fact: whether the kernel's OOM killer struck in it.
//!
//! gVisor does not enforce the memory limit itself; the host kernel does, on the cgroup runsc
//! puts the sandbox in (`linux.cgroupsPath`). Handles cgroup v2 (`memory.events`) and v1
//! (`memory.oom_control`), as nodes run both.

use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

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
    let file = oom_counter_file(Path::new(CGROUP_ROOT), cgroups_path)?;
    parse_oom_kill(&std::fs::read_to_string(file).ok()?)
}

/// Reads `oom_kill N` from memory.events or memory.oom_control.
fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
