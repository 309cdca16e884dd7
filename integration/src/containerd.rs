//! A private containerd for one test binary: its own root, state, sockets and config in a temp
//! dir, the Safehouse shim first on its PATH, and a teardown that leaves nothing behind (it
//! stops containerd by pid, kills by pid whatever this run started and left, unmounts, removes
//! the temp dir), from `Drop` too, so a failing or panicking test still cleans up.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command::{self, wait_for};
use crate::host;
use crate::runtime::{RUNC_RUNTIME_TYPE, SAFEHOUSE_RUNTIME_TYPE, SAFEHOUSE_SHIM_NAME};

/// The CRI sandbox (pause) image, fully qualified and imported under exactly this name.
pub const PAUSE_IMAGE: &str = "docker.io/local/pause:latest";
/// The CRI handler running containerd's Go runc shim with runsc (the baseline).
pub const RUNSC_GO_HANDLER: &str = "runsc-go";
/// The runsc wrapper the `runsc-go` handler uses as its runc binary.
const RUNSC_CRI_WRAPPER: &str = "runsc-cri";

/// The harness policy with network access (`open`), for containers given a namespace:
/// select it with `--annotation safehouse.dev/policy=integration-net`.
pub const NET_POLICY_NAME: &str = "integration-net";

/// The agent policy of the generated config: the runtime scenarios test the shim's plumbing
/// (root user, writable rootfs), not policy enforcement, which has its own tests.
const OPEN_POLICY: &str = "\
apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: integration-open
  description: Runtime integration tests; no confinement beyond gVisor itself.
spec:
  filesystem:
    rootfs: read-write
  network:
    mode: none
  process:
    user: \"0:0\"
    noNewPrivileges: false
  resources:
    memory: 1Gi
    cpus: 2
    pids: 1024
    nofile: 4096
";

/// How long containerd gets to answer on its socket after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long containerd gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to set up a private containerd.
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// The Safehouse shim binary; a snapshot of it goes into a directory first on containerd's
    /// PATH.
    pub shim: Option<PathBuf>,
    /// A Safehouse config file, registered as the CRI runtime's `ConfigPath` option.
    pub shim_config: Option<PathBuf>,
    /// Without `shim_config`: write a Safehouse config that keeps runsc's state under the temp
    /// dir ([`Containerd::runsc_root`]) with an open agent policy, and register that one.
    pub private_runsc_root: bool,
    /// Strings unique to this run (namespaces): at teardown, any process whose argv mentions
    /// one of them or the temp dir is a leftover of this run and is killed by pid.
    pub markers: Vec<String>,
    /// A directory holding the `containerd` (and `ctr`, shims) to run instead of those on PATH
    /// (the compatibility matrix's 1.7 and 2.x builds).
    pub bin_dir: Option<PathBuf>,
    /// Pod networking for the CRI plugin; without it CRI has no CNI network (ctr-only runs).
    pub pod_network: Option<PodNetwork>,
}

/// A CNI bridge network private to one containerd: host-local IPAM on a /24, no masquerade,
/// routes only for the pod subnet, so pods reach each other and nothing off the machine.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// The CNI network name (also host-local's state directory name).
    pub name: String,
    /// The Linux bridge (at most 15 bytes).
    pub bridge: String,
    /// The first three octets of the /24, e.g. `"172.29.7"`.
    pub subnet_prefix: String,
}

/// A containerd version, from `containerd --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerdVersion {
    /// Major version (1 or 2).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl std::fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl ContainerdVersion {
    /// Asks `binary --version`.
    pub fn of(binary: &Path) -> Result<ContainerdVersion> {
        let out = command::run(
            Command::new(binary).arg("--version"),
            Duration::from_secs(10),
        )?
        .ok()
        .with_context(|| format!("{} --version", binary.display()))?;
        ContainerdVersion::parse(&out.stdout).with_context(|| {
            format!(
                "cannot read a version in {:?} ({} --version)",
                out.stdout.trim(),
                binary.display()
            )
        })
    }

    /// Parses `containerd github.com/containerd/containerd/v2 2.1.9+unknown` or
    /// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3`.
    pub fn parse(text: &str) -> Option<ContainerdVersion> {
        let word = text.split_whitespace().nth(2)?;
        let word = word.trim_start_matches('v');
        let end = word
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(word.len());
        let mut parts = word[..end].split('.').map(|p| p.parse::<u32>().ok());
        Some(ContainerdVersion {
            major: parts.next()??,
            minor: parts.next()??,
            patch: parts.next().flatten().unwrap_or(0),
        })
    }
}

/// A running private containerd.
pub struct Containerd {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    markers: Vec<String>,
    shim_config: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    version: ContainerdVersion,
}

impl Containerd {
    /// Writes the config, starts `containerd --config FILE` and waits until its socket answers.
    pub fn start(options: &ContainerdOptions) -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("safehouse-it-")
            .tempdir()
            .context("cannot create the containerd temp dir")?;
        let path = dir.path().to_path_buf();
        let binary = options
            .bin_dir
            .as_ref()
            .map(|d| d.join("containerd"))
            .unwrap_or_else(|| PathBuf::from("containerd"));
        let version = ContainerdVersion::of(&binary)?;
        let mut this = Containerd {
            child: None,
            dir: Some(dir),
            path: path.clone(),
            markers: options.markers.clone(),
            shim_config: None,
            bin_dir: options.bin_dir.clone(),
            version,
        };
        for sub in [
            "root",
            "state",
            "bin",
            "opt",
            "cni",
            "cni-state",
            "fifo",
            "work",
            "policies",
        ] {
            fs::create_dir_all(path.join(sub))?;
        }
        if let Some(shim) = &options.shim {
            // A snapshot (hard link, else copy), not a symlink: a rebuild of the shim during
            // the run must not change the binary containerd starts halfway through.
            let dest = path.join("bin").join(SAFEHOUSE_SHIM_NAME);
            if fs::hard_link(shim, &dest).is_err() {
                fs::copy(shim, &dest).with_context(|| {
                    format!(
                        "cannot put the shim {} on containerd's PATH",
                        shim.display()
                    )
                })?;
            }
        }
        let mut options = options.clone();
        if options.shim_config.is_none() && options.private_runsc_root {
            let config = path.join("safehouse.toml");
            let policies = path.join("policies");
            fs::create_dir_all(&policies)?;
            let policy = policies.join("integration-open.yaml");
            fs::write(&policy, OPEN_POLICY)?;
            // Network access needs the container's own namespace (Safehouse refuses `open`
            // without one), so it is a separate policy a scenario selects by annotation.
            fs::write(
                policies.join(format!("{NET_POLICY_NAME}.yaml")),
                OPEN_POLICY
                    .replace(
                        "name: integration-open",
                        &format!("name: {NET_POLICY_NAME}"),
                    )
                    .replace("mode: none", "mode: open"),
            )?;
            // No `cri_sources`: containerd's root here is not the default one, and the files
            // its CRI makes for each pod sandbox must pass without a setting.
            fs::write(
                &config,
                format!(
                    "root = {:?}\n\n[policy]\ndefault = {:?}\ndir = {:?}\nselectable = [\"*\"]\n\n[audit]\noutput = {:?}\n",
                    this.runsc_root().display().to_string(),
                    policy.display().to_string(),
                    this.policy_dir().display().to_string(),
                    this.audit_path().display().to_string(),
                ),
            )?;
            options.shim_config = Some(config);
        }
        this.shim_config = options.shim_config.clone();
        // The Go runc shim driving runsc (a CRI baseline): the wrapper fixes runsc's network.
        let wrapper = path.join("bin").join(RUNSC_CRI_WRAPPER);
        crate::host::write_executable(&wrapper, "#!/bin/sh\nexec runsc --network=none \"$@\"\n")?;
        if let Some(network) = &options.pod_network {
            fs::write(
                path.join("cni").join("10-safehouse-it.conflist"),
                this.cni_conflist(network),
            )?;
        }
        let config = if this.version.major >= 2 {
            this.config_toml_v3(&options)
        } else {
            this.config_toml(&options)
        };
        fs::write(this.config_path(), config)?;

        let log = fs::File::create(this.log_path())?;
        // Our bin first (the shim under test), then the matrix build's own shims, then PATH.
        let bin_dirs = match &options.bin_dir {
            Some(d) => format!("{}:{}", path.join("bin").display(), d.display()),
            None => path.join("bin").display().to_string(),
        };
        let search_path = format!(
            "{bin_dirs}:{}",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let mut cmd = Command::new(&binary);
        cmd.arg("--config")
            .arg(this.config_path())
            .env("PATH", search_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        this.child = Some(spawn_bound_to_tests(cmd).context("cannot start containerd")?);
        this.wait_ready()?;
        Ok(this)
    }

    /// The temp dir holding everything of this containerd.
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The version of the containerd binary running.
    pub fn version(&self) -> ContainerdVersion {
        self.version
    }

    /// The `ctr` matching this containerd.
    pub fn ctr_binary(&self) -> PathBuf {
        self.bin_dir
            .as_ref()
            .map(|d| d.join("ctr"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("ctr"))
    }

    /// The directory of policies a `safehouse.dev/policy` annotation may select (with the
    /// private config; every file in it is selectable: `selectable = ["*"]`).
    pub fn policy_dir(&self) -> PathBuf {
        self.path.join("policies")
    }

    /// The runc root of the CRI `runc` handler.
    pub fn cri_runc_root(&self) -> PathBuf {
        self.path.join("cri-runc-root")
    }

    /// The runsc root of the CRI `runsc-go` handler (containerd's Go runc shim with runsc).
    pub fn cri_runsc_go_root(&self) -> PathBuf {
        self.path.join("cri-runsc-go-root")
    }

    /// The gRPC socket (`ctr -a`).
    pub fn address(&self) -> PathBuf {
        self.path.join("containerd.sock")
    }

    /// containerd's `root` directory.
    pub fn root(&self) -> PathBuf {
        self.path.join("root")
    }

    /// containerd's `state` directory.
    pub fn state(&self) -> PathBuf {
        self.path.join("state")
    }

    /// The runsc root used with `private_runsc_root` (the shim appends the namespace).
    pub fn runsc_root(&self) -> PathBuf {
        self.path.join("runsc-root")
    }

    /// The audit file of the Safehouse config this harness writes (private to this
    /// containerd; without it the shim would write to the node's `/var/log/safehouse`).
    pub fn audit_path(&self) -> PathBuf {
        self.path.join("audit.jsonl")
    }

    /// The Safehouse config registered as `ConfigPath`, if any.
    pub fn shim_config(&self) -> Option<&Path> {
        self.shim_config.as_deref()
    }

    /// The directory for `ctr --fifo-dir`.
    pub fn fifo_dir(&self) -> PathBuf {
        self.path.join("fifo")
    }

    /// A scratch directory tests may use; removed at teardown.
    pub fn work_dir(&self) -> PathBuf {
        self.path.join("work")
    }

    /// containerd's log (its stderr, which includes every shim's log).
    pub fn log_path(&self) -> PathBuf {
        self.path.join("containerd.log")
    }

    /// The config file containerd was started with.
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.toml")
    }

    /// The last `max` lines of containerd's log that mention `needle`.
    pub fn log_lines_mentioning(&self, needle: &str, max: usize) -> Vec<String> {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect();
        lines[lines.len().saturating_sub(max)..].to_vec()
    }

    /// Copies containerd's log to `dest` (to keep it after teardown).
    pub fn save_log(&self, dest: &Path) -> Result<()> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(self.log_path(), dest)?;
        Ok(())
    }

    /// Stops everything and removes the temp dir. Returns what had to be cleaned up by force
    /// (leftover processes and mounts of this run); empty means a clean run.
    pub fn shutdown(mut self) -> Vec<String> {
        self.teardown()
    }

    /// What an interrupted run must remove; usable from another thread while tests run.
    pub fn emergency_cleanup(&self) -> EmergencyCleanup {
        EmergencyCleanup {
            dir: self.path.clone(),
            markers: self.markers.clone(),
            containerd_pid: self.child.as_ref().map(Child::id),
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut forced = Vec::new();
        // Shims and sandboxes are not containerd's children: find this run's by argv.
        let mut needles = self.markers.clone();
        needles.push(self.path.display().to_string());
        let containerd_pid = self.child.as_ref().map(Child::id);
        for p in host::processes() {
            if Some(p.pid) != containerd_pid
                && needles.iter().any(|n| p.argv.iter().any(|a| a.contains(n)))
            {
                forced.push(format!(
                    "killed leftover process {}: {}",
                    p.pid,
                    p.command_line()
                ));
                host::kill_pid(p.pid);
            }
        }
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        for point in host::unmount_under(&self.path) {
            forced.push(format!("unmounted leftover {}", point.display()));
        }
        if let Some(dir) = self.dir.take() {
            if let Err(e) = dir.close() {
                forced.push(format!("could not remove {}: {e}", self.path.display()));
            }
        }
        forced
    }

    fn wait_ready(&mut self) -> Result<()> {
        let address = self.address();
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "containerd exited during start ({status}); its log:\n{}",
                        tail(&self.log_path(), 40)
                    );
                }
            }
            if address.exists() {
                let out = command::run(
                    Command::new(self.ctr_binary())
                        .arg("-a")
                        .arg(&address)
                        .arg("version"),
                    Duration::from_secs(5),
                )?;
                if out.success() {
                    return Ok(());
                }
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "containerd did not answer on {} within {START_TIMEOUT:?}; its log:\n{}",
                    address.display(),
                    tail(&self.log_path(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn config_toml(&self, options: &ContainerdOptions) -> String {
        let p = |sub: &str| self.path.join(sub).display().to_string();
        // NRI's socket is node-wide (/var/run/nri): a private containerd must not take it.
        let disabled = if self.version.minor >= 7 {
            "disabled_plugins = [\"io.containerd.nri.v1.nri\"]\n"
        } else {
            ""
        };
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        format!(
            r#"version = 2
root = {root:?}
state = {state:?}
{disabled}
[grpc]
  address = {grpc:?}

[ttrpc]
  address = {ttrpc:?}

[debug]
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt:?}

[{cri}]
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "{PAUSE_IMAGE}"

[{cri}.cni]
  conf_dir = {cni:?}
  bin_dir = "/usr/lib/cni"

[{cri}.containerd]
  default_runtime_name = "runc"
{runtimes}"#,
            root = p("root"),
            state = p("state"),
            grpc = self.address().display().to_string(),
            ttrpc = p("containerd.sock.ttrpc"),
            opt = p("opt"),
            cni = p("cni"),
            runtimes = self.runtimes_toml(&format!("{cri}.containerd.runtimes"), options),
        )
    }

    /// containerd 2.x: config version 3, the CRI plugin split into runtime and images parts.
    fn config_toml_v3(&self, options: &ContainerdOptions) -> String {
        let p = |sub: &str| self.path.join(sub).display().to_string();
        let rt = "plugins.\"io.containerd.cri.v1.runtime\"";
        format!(
            r#"version = 3
root = {root:?}
state = {state:?}
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = {grpc:?}

[ttrpc]
  address = {ttrpc:?}

[debug]
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt:?}

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{PAUSE_IMAGE}"

[{rt}]
  restrict_oom_score_adj = true
  enable_cdi = false

[{rt}.cni]
  conf_dir = {cni:?}
  bin_dirs = ["/usr/lib/cni"]

[{rt}.containerd]
  default_runtime_name = "runc"
{runtimes}"#,
            root = p("root"),
            state = p("state"),
            grpc = self.address().display().to_string(),
            ttrpc = p("containerd.sock.ttrpc"),
            opt = p("opt"),
            cni = p("cni"),
            runtimes = self.runtimes_toml(&format!("{rt}.containerd.runtimes"), options),
        )
    }

    /// The CRI runtime handlers: `runc`, `safehouse` (the shim under test, letting
    /// `safehouse.dev/*` annotations through) and `runsc-go` (containerd's Go runc shim
    /// driving runsc, the baseline). Same keys in config versions 2 and 3.
    fn runtimes_toml(&self, table: &str, options: &ContainerdOptions) -> String {
        let config_path = options
            .shim_config
            .as_ref()
            .map(|c| format!("    ConfigPath = {:?}\n", c.display().to_string()))
            .unwrap_or_default();
        let wrapper = self.path.join("bin").join(RUNSC_CRI_WRAPPER);
        format!(
            r#"
[{table}.runc]
  runtime_type = "{RUNC_RUNTIME_TYPE}"
  [{table}.runc.options]
    Root = {runc_root:?}

[{table}.safehouse]
  runtime_type = "{SAFEHOUSE_RUNTIME_TYPE}"
  pod_annotations = ["safehouse.dev/*"]
  container_annotations = ["safehouse.dev/*"]
  [{table}.safehouse.options]
{config_path}
[{table}.{RUNSC_GO_HANDLER}]
  runtime_type = "{RUNC_RUNTIME_TYPE}"
  [{table}.{RUNSC_GO_HANDLER}.options]
    BinaryName = {wrapper:?}
    Root = {runsc_root:?}
"#,
            runc_root = self.cri_runc_root().display().to_string(),
            runsc_root = self.cri_runsc_go_root().display().to_string(),
            wrapper = wrapper.display().to_string(),
        )
    }

    fn cni_conflist(&self, network: &PodNetwork) -> String {
        let prefix = &network.subnet_prefix;
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": network.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": network.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": self.path.join("cni-state").display().to_string(),
                        "ranges": [[{"subnet": format!("{prefix}.0/24"), "gateway": format!("{prefix}.1")}]],
                        "routes": [{"dst": format!("{prefix}.0/24")}]
                    }
                }
            ]
        })
        .to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for line in self.teardown() {
            eprintln!("safehouse-integration teardown: {line}");
        }
    }
}

fn stop_child(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let stopped = wait_for("containerd to exit", STOP_TIMEOUT, || {
        Ok(child.try_wait()?.map(|_| ()))
    });
    if stopped.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The clean-up of a run interrupted by a signal (the normal teardown never runs then): kill by
/// pid every process of this run, containerd included, unmount and remove the temp dir.
#[derive(Debug, Clone)]
pub struct EmergencyCleanup {
    dir: PathBuf,
    markers: Vec<String>,
    containerd_pid: Option<u32>,
}

impl EmergencyCleanup {
    /// Does it. Best effort: every step runs even when an earlier one failed.
    pub fn run(&self) {
        command::refuse_new_commands();
        let mut needles = self.markers.clone();
        needles.push(self.dir.display().to_string());
        // Twice: a test thread may have been starting a command during the first pass.
        for pass in 0..2 {
            if pass > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            for p in host::processes() {
                if needles.iter().any(|n| p.argv.iter().any(|a| a.contains(n))) {
                    host::kill_pid(p.pid);
                }
            }
        }
        if let Some(pid) = self.containerd_pid {
            host::kill_pid(pid);
        }
        host::unmount_under(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `cmd` (a containerd) so that it gets SIGTERM if the test process dies without its
/// teardown, and not before: `PR_SET_PDEATHSIG` fires when the *thread* that forked the child
/// exits, not the process, so the fork happens on a thread that lives as long as the process
/// (a containerd started lazily by one scenario's libtest-mimic worker got SIGTERM when that
/// worker ran out of scenarios, under the scenarios other threads were still running).
pub fn spawn_bound_to_tests(mut cmd: Command) -> std::io::Result<std::process::Child> {
    // SAFETY: prctl(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Mutex, OnceLock};
    type Request = (Command, Sender<std::io::Result<std::process::Child>>);
    static SPAWNER: OnceLock<Mutex<Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<Request>();
        std::thread::Builder::new()
            .name("containerd-spawner".into())
            .spawn(move || {
                // Never returns while the process lives (the sender is in a static).
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the containerd spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = channel();
    spawner
        .lock()
        .map_err(|_| std::io::Error::other("the containerd spawner lock is poisoned"))?
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the containerd spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the containerd spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_versions_of_debian_and_upstream_builds() {
        let v = |s: &str| ContainerdVersion::parse(s).map(|v| v.to_string());
        assert_eq!(
            v("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"),
            Some("1.6.20".into())
        );
        assert_eq!(
            v("containerd github.com/containerd/containerd/v2 2.1.9+unknown "),
            Some("2.1.9".into())
        );
        assert_eq!(
            v("containerd containerd.io v1.7.24 abc"),
            Some("1.7.24".into())
        );
        assert_eq!(v("garbage"), None);
    }
}
