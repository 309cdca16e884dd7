//! Leak checks: after a container is gone, nothing of it may remain on the host — no process
//! whose argv mentions its id (shim, runsc sandbox/gofer/wait, logger), no mount mentioning it,
//! no runtime state (runsc root), no fifo, no bundle in containerd's state, no cgroup, and no
//! container, task or snapshot in containerd.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::ctr::Ctr;
use crate::host;

/// Where the traces of a container could remain.
#[derive(Debug, Clone)]
pub struct LeakCheck {
    /// containerd's `state` dir (bundles live in `io.containerd.runtime.v2.task/<ns>/<id>`).
    pub containerd_state: PathBuf,
    /// The `--fifo-dir` the tests give ctr.
    pub fifo_dir: PathBuf,
    /// The runtime's state root for this namespace (e.g. `/run/safehouse/runsc/<ns>`).
    pub runtime_root: PathBuf,
    /// The containerd namespace (ctr puts cgroups at `/<ns>/<id>`).
    pub namespace: String,
    /// ctr, to ask containerd about containers, tasks and snapshots (and containerd's address,
    /// from which shims name their sockets).
    pub ctr: Ctr,
}

impl LeakCheck {
    /// Everything of `id` still present right now, one description per item.
    pub fn find(&self, id: &str) -> Vec<String> {
        let mut leaks = Vec::new();
        for p in host::processes_mentioning(id) {
            leaks.push(format!("process {}: {}", p.pid, p.command_line()));
        }
        for m in host::mounts().into_iter().filter(|m| m.line.contains(id)) {
            leaks.push(format!("mount: {}", m.line));
        }
        for entry in entries_named(&self.runtime_root, id, false) {
            leaks.push(format!("runtime state: {}", entry.display()));
        }
        for entry in entries_named(&self.fifo_dir, id, true) {
            leaks.push(format!("fifo: {}", entry.display()));
        }
        let bundle = self
            .containerd_state
            .join("io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id);
        if bundle.exists() {
            leaks.push(format!("bundle dir: {}", bundle.display()));
        }
        let socket = shim_socket_path(&self.ctr.address, &self.namespace, id);
        if socket.exists() {
            leaks.push(format!("shim socket: {}", socket.display()));
        }
        let trace = trace_socket_path(&self.namespace, id);
        if trace.exists() {
            leaks.push(format!("audit trace socket: {}", trace.display()));
        }
        for cgroup in cgroup_dirs(&self.namespace, id) {
            leaks.push(format!("cgroup: {}", cgroup.display()));
        }
        match self.ctr.containers() {
            Ok(ids) if ids.iter().any(|c| c == id) => leaks.push("containerd container".into()),
            Ok(_) => {}
            Err(e) => leaks.push(format!("cannot list containers: {e:#}")),
        }
        match self.ctr.tasks() {
            Ok(tasks) => {
                if let Some(t) = tasks.iter().find(|t| t.id == id) {
                    leaks.push(format!("containerd task ({} pid {})", t.status, t.pid));
                }
            }
            Err(e) => leaks.push(format!("cannot list tasks: {e:#}")),
        }
        match self.ctr.snapshots() {
            Ok(keys) if keys.iter().any(|k| k == id) => leaks.push("snapshot".into()),
            Ok(_) => {}
            Err(e) => leaks.push(format!("cannot list snapshots: {e:#}")),
        }
        leaks
    }

    /// Waits up to `within` for every trace of `ids` to disappear; fails listing what remains.
    pub fn assert_clean(&self, ids: &[&str], within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let leaks: Vec<String> = ids
                .iter()
                .flat_map(|id| self.find(id).into_iter().map(move |l| format!("{id}: {l}")))
                .collect();
            if leaks.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!("leaked after {within:?}:\n  {}", leaks.join("\n  "));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Where a shim v2 started for (`namespace`, `id`) by the containerd at `address` puts its
/// socket: `/run/containerd/s/` + hex sha256 of `ADDRESS/NAMESPACE/ID` (the convention of
/// containerd's shims, Go and Rust alike). A pod's shim is named by its sandbox id.
pub fn shim_socket_path(address: &Path, namespace: &str, id: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let key = address.join(namespace).join(id).display().to_string();
    let hex: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    PathBuf::from("/run/containerd/s").join(hex)
}

/// The Safehouse shim's audit trace socket for sandbox `id` of containerd namespace
/// `namespace`: `/run/safehouse/trace/` + the first 16 hex digits of sha256("NAMESPACE/ID") +
/// `.sock` (the audit crate's `sandbox_socket_path`).
pub fn trace_socket_path(namespace: &str, id: &str) -> PathBuf {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(format!("{namespace}/{id}").as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    PathBuf::from("/run/safehouse/trace").join(format!("{hex}.sock"))
}

/// Entries under `dir` whose file name contains `id` (recursively when `deep`).
fn entries_named(dir: &Path, id: &str, deep: bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(id) {
            found.push(path.clone());
        }
        if deep && entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            found.extend(entries_named(&path, id, true));
        }
    }
    found
}

/// `/sys/fs/cgroup/<controller>/<ns>/<id>` (v1) and `/sys/fs/cgroup/<ns>/<id>` (v2) that exist.
fn cgroup_dirs(namespace: &str, id: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join(namespace).join(id)];
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            candidates.push(entry.path().join(namespace).join(id));
        }
    }
    candidates.into_iter().filter(|p| p.is_dir()).collect()
}

/// Removes this run's per-namespace cgroup directories (children first; rmdir only).
pub fn remove_namespace_cgroups(namespace: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(namespace)];
    if let Ok(entries) = fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(namespace)));
    }
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        if let Ok(children) = fs::read_dir(&dir) {
            for child in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = fs::remove_dir(child.path());
            }
        }
        let _ = fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_socket_is_named_like_the_audit_sink() {
        // sha256("k8s.io/abc") = dc8322dde99ae159... (the audit crate's test has the same)
        assert_eq!(
            trace_socket_path("k8s.io", "abc"),
            PathBuf::from("/run/safehouse/trace/dc8322dde99ae159.sock")
        );
    }

    #[test]
    fn shim_socket_is_sha256_of_address_namespace_id() {
        // sha256("/a.sock/ns/id")
        assert_eq!(
            shim_socket_path(Path::new("/a.sock"), "ns", "id"),
            Path::new(
                "/run/containerd/s/f6313b2d9ad31811719d7ed3eb4f00b98593275e46e79ea6d17ec6ddbfb4e0ff"
            )
        );
    }
}
