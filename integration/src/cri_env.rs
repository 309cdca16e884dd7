//! One private containerd with its CRI plugin serving pods, as a kubelet node would: the
//! `safehouse`, `runc` and `runsc-go` runtime handlers, a CNI bridge on a private /24, the
//! busybox and pause images in `k8s.io`, pod cgroups under a parent unique to this run, and a
//! leak check for pods (process, mount, cgroup, netns, runsc state, shim socket, bundle).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_cri::v1 as cri;

use crate::containerd::{Containerd, ContainerdOptions, ContainerdVersion, PodNetwork};
use crate::cri::CriClient;
use crate::host;
use crate::image::{import_cri_images, BUSYBOX_IMAGE, PAUSE_IMAGE};
use crate::leaks::{shim_socket_path, trace_socket_path};
use crate::runtime::locate_shim;

/// The containerd namespace CRI works in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// How long a pod's traces may take to disappear after RemovePodSandbox.
pub const POD_LEAK_GRACE: Duration = Duration::from_secs(15);

/// Where the compatibility matrix (`scripts/containerd-matrix.sh`) unpacks containerd builds.
pub const MATRIX_DIR: &str = "/var/lib/safehouse-test/containerd";

/// A containerd build to test: the one on PATH, or one unpacked by the matrix script.
#[derive(Debug, Clone)]
pub struct ContainerdBuild {
    /// Its short label (the version for matrix builds, `system` for the one on PATH).
    pub label: String,
    /// The directory holding `containerd` and `ctr`, or `None` for PATH.
    pub bin_dir: Option<PathBuf>,
}

impl ContainerdBuild {
    /// The system containerd and every matrix build present (1.7.x, 2.x), or those named in
    /// `SAFEHOUSE_IT_CONTAINERD` (comma-separated: `system`, `1.7.24`, `2.1.9`).
    pub fn selected() -> Vec<ContainerdBuild> {
        let wanted = std::env::var("SAFEHOUSE_IT_CONTAINERD")
            .unwrap_or_else(|_| "system,1.7.24,2.1.9".into());
        wanted
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(|w| ContainerdBuild {
                label: w.to_string(),
                bin_dir: (w != "system")
                    .then(|| Path::new(MATRIX_DIR).join(w).join("usr").join("bin")),
            })
            .collect()
    }

    /// The containerd on PATH.
    pub fn system() -> ContainerdBuild {
        ContainerdBuild {
            label: "system".into(),
            bin_dir: None,
        }
    }

    /// Why this build cannot run here, if it cannot.
    pub fn missing(&self) -> Option<String> {
        let dir = self.bin_dir.as_ref()?;
        (!dir.join("containerd").is_file()).then(|| {
            format!(
                "containerd {} is not unpacked at {} (run `make deps`)",
                self.label,
                dir.display()
            )
        })
    }
}

/// A private containerd with CRI, and a CRI client connected to it.
pub struct CriEnv {
    /// The containerd version running (`1.6.20`, ...).
    pub version: ContainerdVersion,
    /// The private containerd.
    pub containerd: Containerd,
    /// The CRI client.
    pub cri: CriClient,
    /// The CNI network of the pods.
    pub network: PodNetwork,
    tag: String,
    next: AtomicU32,
    /// Every pod netns seen: the teardown removes those still there (a pod CRI could not
    /// stop, a run interrupted), so none outlives the run.
    netns_seen: std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>,
}

impl CriEnv {
    /// Starts containerd `build` (the `index`-th of this run: it picks the bridge and subnet),
    /// imports the images and waits until CRI sees them.
    pub fn start(build: &ContainerdBuild, index: u32) -> Result<CriEnv> {
        let pid = std::process::id();
        let tag = format!("sfc{pid}x{index}");
        let network = PodNetwork {
            name: format!("safehouse-it-{tag}"),
            bridge: tag.chars().take(15).collect(),
            subnet_prefix: format!("172.{}.{}", 24 + index % 8, pid % 250 + 1),
        };
        let containerd = Containerd::start(&ContainerdOptions {
            shim: Some(locate_shim()?),
            private_runsc_root: true,
            markers: vec![tag.clone()],
            bin_dir: build.bin_dir.clone(),
            pod_network: Some(network.clone()),
            ..Default::default()
        })
        .with_context(|| format!("starting containerd {}", build.label))?;
        import_cri_images(
            &containerd.ctr_binary(),
            &containerd.address(),
            CRI_NAMESPACE,
        )?;
        let cri = CriClient::connect(&containerd.address())?;
        let started = Instant::now();
        loop {
            let seen = cri.has_image(PAUSE_IMAGE)? && cri.has_image(BUSYBOX_IMAGE)?;
            if seen {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("CRI does not list the imported images {PAUSE_IMAGE} and {BUSYBOX_IMAGE}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        fs::create_dir_all(containerd.work_dir().join("pods"))?;
        Ok(CriEnv {
            version: containerd.version(),
            containerd,
            cri,
            network,
            tag,
            next: AtomicU32::new(1),
            netns_seen: Default::default(),
        })
    }

    /// A pod name unique in this run (also its uid and log directory name).
    pub fn unique(&self, name: &str) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{name}-{}-{n}", self.tag)
    }

    /// The cgroup parent of all this environment's pods (cgroupfs driver).
    pub fn cgroup_root(&self) -> String {
        format!("/safehouse-cri-{}", self.tag)
    }

    /// A pod config as kubelet would send it: metadata, log directory, cgroup parent, and the
    /// given annotations.
    pub fn pod_config(&self, name: &str, annotations: &[(&str, &str)]) -> cri::PodSandboxConfig {
        let log_dir = self.containerd.work_dir().join("pods").join(name);
        let _ = fs::create_dir_all(&log_dir);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: name.to_string(),
                namespace: "safehouse-it".to_string(),
                attempt: 0,
            }),
            hostname: "pod".to_string(),
            log_directory: log_dir.display().to_string(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/{name}", self.cgroup_root()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A busybox container running `command`, logging to `NAME.log` in the pod's log dir.
    pub fn container_config(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: BUSYBOX_IMAGE.to_string(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// Waits until container `id` has exited; returns its final status.
    pub fn wait_exited(&self, id: &str, within: Duration) -> Result<cri::ContainerStatus> {
        let mut last = None;
        let found = crate::command::wait_for(&format!("container {id} to exit"), within, || {
            let status = self.cri.container_status(id)?.status;
            let exited = status
                .as_ref()
                .is_some_and(|s| s.state == cri::ContainerState::ContainerExited as i32);
            last = status.clone();
            Ok(if exited { status } else { None })
        });
        found.with_context(|| format!("last status: {last:?}"))
    }

    /// The host cgroup file `file` of controller `controller` (v1; ignored on v2) for the
    /// cgroup CRI gave `id` in pod `pod_name` (cgroupfs: `PARENT/ID`).
    pub fn cgroup_file(&self, pod_name: &str, id: &str, controller: &str, file: &str) -> PathBuf {
        self.pod_cgroup_dir(pod_name, controller)
            .join(id)
            .join(file)
    }

    /// Creates the pod's cgroup parent ahead of RunPodSandbox, as kubelet does, and returns
    /// it for `controller`. On cgroup v2 the run's own root first delegates the memory, cpu
    /// and pids controllers to its children, or the pod cgroup would have no `memory.max`.
    pub fn create_pod_cgroup(&self, pod_name: &str, controller: &str) -> Result<PathBuf> {
        let dir = self.pod_cgroup_dir(pod_name, controller);
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        if v2 {
            let root = Path::new("/sys/fs/cgroup").join(self.cgroup_root().trim_start_matches('/'));
            fs::create_dir_all(&root)?;
            let control = root.join("cgroup.subtree_control");
            fs::write(&control, "+memory +cpu +pids")
                .with_context(|| format!("enable controllers in {}", control.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(dir)
    }

    /// The pod's cgroup parent directory for `controller` (v1) or the unified one (v2).
    pub fn pod_cgroup_dir(&self, pod_name: &str, controller: &str) -> PathBuf {
        let base = Path::new("/sys/fs/cgroup");
        let rel = format!("{}/{pod_name}", self.cgroup_root());
        let rel = rel.trim_start_matches('/');
        if base.join("cgroup.controllers").exists() {
            base.join(rel)
        } else {
            base.join(controller).join(rel)
        }
    }

    /// The runsc state directory of CRI's namespace.
    pub fn runsc_state(&self) -> PathBuf {
        self.containerd.runsc_root().join(CRI_NAMESPACE)
    }

    /// The pod's network namespace path, from containerd's verbose status.
    pub fn pod_netns(&self, pod_id: &str) -> Result<Option<PathBuf>> {
        let status = self.cri.pod_status(pod_id)?;
        let Some(info) = status.info.get("info") else {
            return Ok(None);
        };
        let info: serde_json::Value = serde_json::from_str(info)
            .with_context(|| format!("PodSandboxStatus {pod_id}: info is not JSON"))?;
        let namespaces = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let path = namespaces
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        if let Some(path) = &path {
            self.netns_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(path.clone());
        }
        Ok(path)
    }

    /// Everything of pod `pod_id` (and its containers `ids`) still on the host.
    pub fn leaks(&self, pod_id: &str, ids: &[&str], netns: Option<&Path>) -> Vec<String> {
        let mut leaks = Vec::new();
        let all: Vec<&str> = std::iter::once(pod_id).chain(ids.iter().copied()).collect();
        for id in &all {
            for p in host::processes_mentioning(id) {
                leaks.push(format!("process {}: {}", p.pid, p.command_line()));
            }
            for m in host::mounts().into_iter().filter(|m| m.line.contains(id)) {
                leaks.push(format!("mount: {}", m.line));
            }
            if let Ok(entries) = fs::read_dir(self.runsc_state()) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().contains(id) {
                        leaks.push(format!("runsc state: {}", e.path().display()));
                    }
                }
            }
            let bundle = self
                .containerd
                .state()
                .join("io.containerd.runtime.v2.task")
                .join(CRI_NAMESPACE)
                .join(id);
            if bundle.exists() {
                leaks.push(format!("bundle dir: {}", bundle.display()));
            }
            for dir in cgroup_dirs_named(&self.cgroup_root(), id) {
                leaks.push(format!("cgroup: {}", dir.display()));
            }
        }
        let socket = shim_socket_path(&self.containerd.address(), CRI_NAMESPACE, pod_id);
        if socket.exists() {
            leaks.push(format!("shim socket: {}", socket.display()));
        }
        let trace = trace_socket_path(CRI_NAMESPACE, pod_id);
        if trace.exists() {
            leaks.push(format!("audit trace socket: {}", trace.display()));
        }
        if let Some(netns) = netns {
            if netns.exists() {
                leaks.push(format!("network namespace: {}", netns.display()));
            }
        }
        match self.cri.pod_ids() {
            Ok(pods) if pods.iter().any(|p| p == pod_id) => leaks.push("CRI pod sandbox".into()),
            Ok(_) => {}
            Err(e) => leaks.push(format!("cannot list pods: {e:#}")),
        }
        match self.cri.container_ids() {
            Ok(cs) => {
                for id in ids.iter().filter(|id| cs.iter().any(|c| c == *id)) {
                    leaks.push(format!("CRI container {id}"));
                }
            }
            Err(e) => leaks.push(format!("cannot list containers: {e:#}")),
        }
        leaks
    }

    /// Waits for every trace of the pod to go; fails listing what remains.
    pub fn assert_pod_gone(&self, pod_id: &str, ids: &[&str], netns: Option<&Path>) -> Result<()> {
        let deadline = Instant::now() + POD_LEAK_GRACE;
        loop {
            let leaks = self.leaks(pod_id, ids, netns);
            if leaks.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "pod {pod_id} leaked after {POD_LEAK_GRACE:?}:\n  {}",
                    leaks.join("\n  ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a pod scenario: `body` gets the pod id and returns the ids of the containers it
    /// made; then the pod is stopped and removed through CRI and nothing of it may remain. On
    /// a failure the pod is still stopped and removed, and the error carries the shim's log
    /// lines for the pod.
    pub fn with_pod(
        &self,
        config: &cri::PodSandboxConfig,
        handler: &str,
        body: impl FnOnce(&str) -> Result<Vec<String>>,
    ) -> Result<()> {
        let pod_id = self.cri.run_pod(config, handler)?;
        // The netns CRI made for the pod must be gone afterwards: find it now.
        let netns = self.pod_netns(&pod_id).and_then(|n| {
            n.with_context(|| {
                format!("PodSandboxStatus {pod_id}: no network namespace path in its spec")
            })
        });
        let (netns, result) = match netns {
            Ok(n) => (Some(n), body(&pod_id)),
            Err(e) => (None, Err(e)),
        };
        let removed = self.cri.stop_and_remove_pod(&pod_id);
        let ids = result.as_ref().cloned().unwrap_or_default();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let outcome = match (result, removed) {
            (Ok(_), removed) => {
                removed.and_then(|()| self.assert_pod_gone(&pod_id, &id_refs, netns.as_deref()))
            }
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(removal)) => Err(e.context(format!(
                "and removing the pod after that failure failed too: {removal:#}"
            ))),
        };
        outcome.map_err(|e| {
            let lines: Vec<String> = self
                .containerd
                .log_lines_mentioning(&pod_id, 400)
                .into_iter()
                .filter(|l| !l.contains("level=debug") && !l.contains(" DEBUG "))
                .map(|l| l.chars().take(600).collect())
                .collect();
            e.context(format!(
                "containerd {} pod {pod_id}; last log lines:\n{}",
                self.version,
                lines[lines.len().saturating_sub(12)..].join("\n")
            ))
        })
    }

    /// Stops containerd and removes everything of this environment; returns what had to be
    /// removed by force.
    pub fn shutdown(self) -> Vec<String> {
        let mut forced: Vec<String> = fs::read_dir(self.runsc_state())
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|p| format!("leftover runsc state {}", p.display()))
            .collect();
        let log = crate::runtime::target_dir()
            .join("safehouse-it")
            .join("logs")
            .join(format!(
                "containerd-cri-{}-{}.log",
                self.version,
                std::process::id()
            ));
        let _ = self.containerd.save_log(&log);
        let cgroup_root = self.cgroup_root();
        let bridge = self.network.bridge.clone();
        drop(self.cri);
        forced.extend(self.containerd.shutdown());
        forced.extend(remove_netns(&self.netns_seen));
        remove_cgroup_tree(&cgroup_root);
        // The bridge CNI made lives in the node's namespace; it is this run's.
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &bridge])
            .stderr(std::process::Stdio::null())
            .status();
        forced
    }

    /// Clean-up for an interrupted run.
    pub fn emergency_cleanup(&self) -> impl Fn() + Send + Sync + 'static {
        let containerd = self.containerd.emergency_cleanup();
        let cgroup_root = self.cgroup_root();
        let bridge = self.network.bridge.clone();
        let netns = self.netns_seen.clone();
        move || {
            containerd.run();
            remove_netns(&netns);
            remove_cgroup_tree(&cgroup_root);
            let _ = std::process::Command::new("ip")
                .args(["link", "delete", &bridge])
                .status();
        }
    }
}

/// Deletes the pod network namespaces in `seen` that still exist (`ip netns del`, which
/// unmounts and removes the file; the pod's veth goes with it); returns what it removed.
fn remove_netns(seen: &std::sync::Mutex<Vec<PathBuf>>) -> Vec<String> {
    let paths = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut removed = Vec::new();
    for path in paths.iter().filter(|p| p.exists()) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let ok = std::process::Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            removed.push(format!("removed leftover pod network namespace {name}"));
        }
    }
    removed
}

/// Cgroup directories under `root` (in any v1 controller or v2) whose name contains `id`.
fn cgroup_dirs_named(root: &str, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for base in cgroup_bases(root) {
        let Ok(pods) = fs::read_dir(&base) else {
            continue;
        };
        for pod in pods.flatten().filter(|e| e.path().is_dir()) {
            if pod.file_name().to_string_lossy().contains(id) {
                found.push(pod.path());
            }
            if let Ok(children) = fs::read_dir(pod.path()) {
                for c in children.flatten() {
                    if c.path().is_dir() && c.file_name().to_string_lossy().contains(id) {
                        found.push(c.path());
                    }
                }
            }
        }
    }
    found
}

/// `/sys/fs/cgroup/<controller>/<root>` for each v1 controller, and `/sys/fs/cgroup/<root>`.
fn cgroup_bases(root: &str) -> Vec<PathBuf> {
    let rel = root.trim_start_matches('/');
    let base = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![base.join(rel)];
    if let Ok(entries) = fs::read_dir(base) {
        dirs.extend(entries.flatten().map(|e| e.path().join(rel)));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// Removes the (empty) cgroup tree `root` in every hierarchy, deepest first (rmdir only).
fn remove_cgroup_tree(root: &str) {
    fn rmdir_deep(dir: &Path) {
        if let Ok(children) = fs::read_dir(dir) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                rmdir_deep(&c.path());
            }
        }
        let _ = fs::remove_dir(dir);
    }
    for base in cgroup_bases(root) {
        rmdir_deep(&base);
    }
}
