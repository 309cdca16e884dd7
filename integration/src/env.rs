//! The shared environment of one test binary: the private containerd, the imported image, the
//! runtime under test and how `ctr run` selects it, unique container ids, and the per-scenario
//! wrapper that always ends with a leak check (and a forced clean-up when a scenario failed).

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::command::{wait_for, Output};
use crate::containerd::{Containerd, ContainerdOptions};
use crate::cri_env::ContainerdBuild;
use crate::ctr::Ctr;
use crate::image::{import_busybox, BUSYBOX_IMAGE};
use crate::leaks::{remove_namespace_cgroups, shim_socket_path, LeakCheck};
use crate::runtime::{
    locate_shim, target_dir, RuntimeKind, DEFAULT_SAFEHOUSE_RUNSC_ROOT, RUNSC_ROOT_ENV,
    SHIM_CONFIG_ENV,
};

/// How long a scenario's traces may take to disappear after it removed its containers.
pub const LEAK_GRACE: Duration = Duration::from_secs(10);

/// Everything a scenario needs.
pub struct TestEnv {
    /// The runtime under test.
    pub runtime: RuntimeKind,
    /// The private containerd.
    pub containerd: Containerd,
    /// ctr pointed at it and at this run's namespace.
    pub ctr: Ctr,
    /// Leak checker for this run.
    pub leaks: LeakCheck,
    /// The image scenarios run.
    pub image: String,
    shim_config: Option<PathBuf>,
    runc_root: PathBuf,
    issued_ids: Arc<Mutex<Vec<String>>>,
}

impl TestEnv {
    /// Starts the system's containerd for `runtime`, imports the busybox image into a fresh
    /// namespace.
    pub fn start(runtime: RuntimeKind) -> Result<TestEnv> {
        TestEnv::start_build(runtime, &ContainerdBuild::system(), 0)
    }

    /// Starts containerd `build` for `runtime` (`index` tells apart several in one run).
    pub fn start_build(
        runtime: RuntimeKind,
        build: &ContainerdBuild,
        index: u32,
    ) -> Result<TestEnv> {
        let namespace = format!("safehouse-it-{}-{index}", std::process::id());
        let shim = match runtime {
            RuntimeKind::Safehouse => Some(locate_shim()?),
            _ => None,
        };
        let given_config = std::env::var_os(SHIM_CONFIG_ENV).map(PathBuf::from);
        let containerd = Containerd::start(&ContainerdOptions {
            shim,
            private_runsc_root: given_config.is_none(),
            shim_config: given_config.clone(),
            markers: vec![namespace.clone()],
            bin_dir: build.bin_dir.clone(),
            ..Default::default()
        })?;
        let shim_config = containerd.shim_config().map(PathBuf::from);
        let ctr = Ctr {
            binary: containerd.ctr_binary(),
            address: containerd.address(),
            namespace: namespace.clone(),
        };
        import_busybox(&ctr.binary, &containerd.address(), &namespace)?;
        let runc_root = containerd.dir().join("runc-root");
        fs::create_dir_all(&runc_root)?;
        let wrapper = containerd.dir().join("bin").join("runsc-network-none");
        crate::host::write_executable(&wrapper, "#!/bin/sh\nexec runsc --network=none \"$@\"\n")
            .with_context(|| format!("writing {}", wrapper.display()))?;
        let runtime_root = match runtime {
            RuntimeKind::Safehouse if given_config.is_none() => {
                containerd.runsc_root().join(&namespace)
            }
            RuntimeKind::Safehouse => std::env::var_os(RUNSC_ROOT_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SAFEHOUSE_RUNSC_ROOT))
                .join(&namespace),
            _ => runc_root.join(&namespace),
        };
        let leaks = LeakCheck {
            containerd_state: containerd.state(),
            fifo_dir: containerd.fifo_dir(),
            runtime_root,
            namespace,
            ctr: ctr.clone(),
        };
        Ok(TestEnv {
            runtime,
            containerd,
            ctr,
            leaks,
            image: BUSYBOX_IMAGE.to_string(),
            shim_config,
            runc_root,
            issued_ids: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// A container id unique in this run, across every containerd the test binary runs (a
    /// process looked up by id must be this containerd's); no id is a substring of another.
    pub fn id(&self, name: &str) -> String {
        static NEXT_ID: AtomicU32 = AtomicU32::new(1);
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let id = format!("sfh{}x{n}-{name}", std::process::id());
        self.issued_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id.clone());
        id
    }

    /// The `ctr run` flags that select the runtime under test (and keep fifos private).
    pub fn runtime_args(&self) -> Vec<String> {
        let mut args = vec![
            "--runtime".to_string(),
            self.runtime.runtime_type().to_string(),
            "--fifo-dir".to_string(),
            self.containerd.fifo_dir().display().to_string(),
        ];
        match self.runtime {
            RuntimeKind::Safehouse => {
                if let Some(config) = &self.shim_config {
                    args.push("--runtime-config-path".into());
                    args.push(config.display().to_string());
                }
            }
            RuntimeKind::RuncShimRunsc => {
                args.push("--runc-binary".into());
                args.push(self.runsc_wrapper().display().to_string());
                args.push("--runc-root".into());
                args.push(self.runc_root.display().to_string());
            }
            RuntimeKind::Runc => {
                args.push("--runc-root".into());
                args.push(self.runc_root.display().to_string());
            }
        }
        args
    }

    /// The full argv after `ctr` for `ctr run FLAGS <runtime> IMAGE ID COMMAND...`.
    pub fn run_argv(&self, flags: &[&str], id: &str, command: &[&str]) -> Vec<String> {
        let mut argv = vec!["run".to_string()];
        argv.extend(flags.iter().map(|s| s.to_string()));
        argv.extend(self.runtime_args());
        argv.push(self.image.clone());
        argv.push(id.to_string());
        argv.extend(command.iter().map(|s| s.to_string()));
        argv
    }

    /// Runs `ctr run FLAGS IMAGE ID COMMAND...` with the runtime under test.
    pub fn ctr_run(&self, flags: &[&str], id: &str, command: &[&str]) -> Result<Output> {
        self.ctr.run(&self.run_argv(flags, id, command))
    }

    /// `ctr task exec --exec-id EXEC ID COMMAND...` (fifos in the private fifo dir).
    pub fn ctr_exec(&self, id: &str, exec_id: &str, command: &[&str]) -> Result<Output> {
        let fifo = self.containerd.fifo_dir().display().to_string();
        let mut argv = vec![
            "task",
            "exec",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            exec_id,
            id,
        ];
        argv.extend_from_slice(command);
        self.ctr.run(&argv)
    }

    /// SIGKILLs the one shim serving container `id`, waits until containerd has noticed (the
    /// task gone or stopped), deletes the task if containerd still lists it, removes the
    /// container and ctr's fifos: what an operator does after a shim crash. The shim binary's `delete` action,
    /// which containerd runs meanwhile, is what the callers then check.
    pub fn sigkill_shim_and_remove(&self, id: &str) -> Result<()> {
        // Ids are unique only per containerd: the test binaries run one per containerd version
        // in parallel, with the same ids, so the shim is also told apart by its containerd.
        let address = self.containerd.address().display().to_string();
        let shims: Vec<u32> = crate::host::processes()
            .into_iter()
            .filter(|p| {
                p.program_name() == self.runtime.shim_name()
                    && p.has_flag_value("-id", id)
                    && p.has_flag_value("-address", &address)
            })
            .map(|p| p.pid)
            .collect();
        anyhow::ensure!(
            shims.len() == 1,
            "expected one shim with -id {id}, found pids {shims:?}"
        );
        crate::host::kill_pid(shims[0]);
        wait_for("the shim to die", Duration::from_secs(10), || {
            Ok((!crate::host::is_alive(shims[0])).then_some(()))
        })?;
        // containerd notices the dead shim and cleans up (asynchronously).
        wait_for(
            "containerd to drop the task",
            Duration::from_secs(30),
            || {
                Ok(self
                    .ctr
                    .task(id)?
                    .map_or(Some(()), |t| (t.status == "STOPPED").then_some(())))
            },
        )?;
        if self.ctr.task(id)?.is_some() {
            let out = self.ctr.run(&["task", "delete", id])?;
            anyhow::ensure!(
                out.success() || out.stderr.contains("not found"),
                "ctr task delete after the shim died: {}",
                out.describe()
            );
        }
        self.ctr.run(&["containers", "rm", id])?.ok()?;
        // ctr removes the fifos of `ctr run -d` only in `ctr task delete`, which had no task
        // left to load: they are ctr's, not the runtime's, so remove them as a user would.
        self.remove_ctr_fifos(id)
    }

    /// Removes `<fifo-dir>/<random>/<id>-{stdin,stdout,stderr}` and the emptied directory.
    fn remove_ctr_fifos(&self, id: &str) -> Result<()> {
        for dir in fs::read_dir(self.containerd.fifo_dir())?.flatten() {
            let mut mine = false;
            for entry in fs::read_dir(dir.path())?.flatten() {
                if entry.file_name().to_string_lossy().starts_with(id) {
                    fs::remove_file(entry.path())?;
                    mine = true;
                }
            }
            if mine {
                let _ = fs::remove_dir(dir.path());
            }
        }
        Ok(())
    }

    /// A scratch directory for one scenario, inside the run's temp dir.
    pub fn scratch(&self, name: &str) -> Result<PathBuf> {
        let dir = self.containerd.work_dir().join(name);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Runs a scenario using containers `ids`, then checks that nothing of them is left. On a
    /// failure it removes the containers by force (so later scenarios start clean) and adds
    /// containerd's log lines about them (which carry the shim's log) to the error.
    pub fn scenario(&self, ids: &[&str], body: impl FnOnce() -> Result<()>) -> Result<()> {
        let result = body().and_then(|()| self.leaks.assert_clean(ids, LEAK_GRACE));
        if let Err(error) = result {
            for id in ids {
                self.ctr.force_remove(id);
            }
            // Log lines of the containers the error names first (e.g. the failing 2 of 10).
            let message = describe_error(&error);
            let mut ordered: Vec<&str> = ids.to_vec();
            ordered.sort_by_key(|id| !message.contains(id));
            let mut log = Vec::new();
            for id in ordered.iter().take(3) {
                let lines = self.containerd.log_lines_mentioning(id, 200);
                let useful: Vec<String> = lines
                    .into_iter()
                    .filter(|l| !l.contains(" DEBUG ") && !l.contains("level=debug"))
                    .map(|l| l.chars().take(600).collect())
                    .collect();
                log.extend(useful[useful.len().saturating_sub(12)..].to_vec());
            }
            // The reason comes last, so the tail of a CI log shows it.
            anyhow::bail!(
                "--- runtime {}; containerd/shim log lines for {:?} ---\n{}\n--- failed: {}",
                self.runtime.name(),
                &ordered[..ordered.len().min(3)],
                log.join("\n"),
                message,
            );
        }
        Ok(())
    }

    /// Stops everything and reports what had to be cleaned by force. Keeps containerd's log in
    /// `target/safehouse-it/logs/`.
    pub fn shutdown(self) -> Teardown {
        let log = target_dir().join("safehouse-it").join("logs").join(format!(
            "containerd-{}-{}.log",
            self.runtime.name(),
            self.leaks.namespace
        ));
        let _ = self.containerd.save_log(&log);
        if let Some(dir) = log.parent() {
            prune_old_logs(dir, 20);
        }
        // Runtime state left behind is a leak; look before the temp dir (which may hold the
        // runsc root) goes away.
        let mut forced: Vec<String> = fs::read_dir(&self.leaks.runtime_root)
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|entry| format!("leftover runtime state {}", entry.display()))
            .collect();
        let address = self.containerd.address();
        forced.extend(self.containerd.shutdown());
        // Shim sockets outlive shims that were killed; they are named by (address, ns, id).
        let ids = self
            .issued_ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for id in ids {
            let socket = shim_socket_path(&address, &self.leaks.namespace, &id);
            if fs::remove_file(&socket).is_ok() {
                forced.push(format!(
                    "removed leftover shim socket of {id}: {}",
                    socket.display()
                ));
            }
        }
        remove_namespace_cgroups(&self.leaks.namespace);
        let _ = fs::remove_dir_all(&self.leaks.runtime_root);
        Teardown { forced, log }
    }

    /// Clean-up for an interrupted run: containerd's, plus cgroups, runsc state and netns.
    pub fn emergency_cleanup(&self) -> impl Fn() + Send + 'static {
        let containerd = self.containerd.emergency_cleanup();
        let namespace = self.leaks.namespace.clone();
        let runtime_root = self.leaks.runtime_root.clone();
        let address = self.containerd.address();
        let ids = self.issued_ids.clone();
        move || {
            containerd.run();
            for id in ids.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                let _ = fs::remove_file(shim_socket_path(&address, &namespace, id));
            }
            remove_namespace_cgroups(&namespace);
            let _ = fs::remove_dir_all(&runtime_root);
            crate::testhost::remove_leftover_namespaces();
            crate::netlab::remove_leftover_namespaces();
        }
    }

    fn runsc_wrapper(&self) -> PathBuf {
        self.containerd.dir().join("bin").join("runsc-network-none")
    }
}

/// What the teardown found and where containerd's log was kept.
#[derive(Debug)]
pub struct Teardown {
    /// Leftovers it had to remove by force (processes, mounts, runtime state); empty when the
    /// scenarios cleaned up after themselves.
    pub forced: Vec<String>,
    /// The saved containerd log.
    pub log: PathBuf,
}

/// Keeps the `keep` newest files of `dir`.
fn prune_old_logs(dir: &std::path::Path, keep: usize) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in files.into_iter().skip(keep) {
        let _ = fs::remove_file(path);
    }
}

/// The error and its causes, one per line, without a backtrace.
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        text.push_str(&format!("\ncaused by: {cause}"));
    }
    text
}
