//! The shim process's lifecycle as containerd drives it: `start` (spawn or reuse the shim for
//! a pod), serving the Task API, and `delete` (clean up after a shim that died).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, Error as ShimCrateError, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::MessageField;

use crate::audit::AuditOutput;
use crate::bundle::{ADDRESS_FILE, CONFIG, STATE_FILE};
use crate::events::{Events, TtrpcForward};
use crate::node::Node;
use crate::reaper::Reaper;
use crate::runsc::cli::Runsc;
use crate::runsc::{SandboxFlags, SandboxRuntime};
use crate::sandbox::persisted::PersistedState;
use crate::task::TaskService;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_TYPE: &str = "io.containerd.safehouse.v2";

/// The shim process.
pub struct SafehouseShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    /// The ttrpc socket this shim serves on (`unix:///run/containerd/s/...`; empty outside
    /// the serving process).
    socket: String,
}

#[async_trait]
impl Shim for SafehouseShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        if args.action.is_empty() {
            crate::logging::init_for_serve(args.debug, &args.id);
        } else {
            crate::logging::init_stderr(args.debug);
        }
        SafehouseShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, ShimCrateError> {
        // All containers of a pod share one shim: group by CRI's sandbox id.
        let spec: serde_json::Value = std::fs::read(CONFIG)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let grouping = crate::container::grouping_id(&spec, &opts.id);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file(ADDRESS_FILE, &address).await?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, ShimCrateError> {
        // containerd runs this in the bundle after the shim died: remove every trace of the
        // container (sandbox, runsc state, mounts) from what Create persisted.
        let bundle = std::env::current_dir().map_err(|e| ShimCrateError::Other(e.to_string()))?;
        let mut pid = 0;
        let mut socket_gone = remove_dead_shim_socket(&bundle);
        if let Some(st) = PersistedState::load(&bundle) {
            pid = st.pid;
            cleanup_after_dead_shim(&self.namespace, &self.id, &bundle, &st).await;
            // The sockets the dead shim hosted for this container: its sandbox's trace sink and
            // its terminal (both named from the ids; absent ones are fine).
            let node = Node::default();
            let trace = safehouse_audit::sink::sandbox_socket_path(
                &node.trace_dir(),
                &self.namespace,
                &self.id,
            );
            let console = crate::stdio::ConsoleSocket::path_for(
                &node.console_dir(),
                &format!("{}/{}", self.namespace, self.id),
            );
            for sock in [trace, console] {
                let _ = std::fs::remove_file(sock);
            }
            crate::task::unregister(&node, &self.namespace, &self.id);
            // A listener still answering before the clean-up can have been a process of the
            // dead shim's that the clean-up has just ended: look once more.
            if !socket_gone {
                socket_gone = remove_dead_shim_socket(&bundle);
            }
            if !socket_gone {
                tracing::info!(container = %self.id, "the shim socket still answers: left to the live shim serving it");
            }
        } else {
            tracing::debug!(container = %self.id, "no Safehouse state in {}", bundle.display());
        }
        // A Create cut short (its client timed out and the shim went away) persists no state
        // but may have mounted host binds under the bundle: with no live shim left to own
        // them, every mount of ours below the bundle goes, so containerd can remove it.
        if socket_gone {
            detach_own_mounts(&bundle);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut ts =
            containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp::new();
        ts.seconds = now.as_secs() as i64;
        ts.nanos = now.subsec_nanos() as i32;
        Ok(DeleteResponse {
            pid,
            exit_status: 137,
            exited_at: MessageField::some(ts),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // Remove the socket now, while the process still serves the connections it has. The
        // crate removes it only after its server has shut down, reading the path from the
        // bundle's `address` file, which containerd may have deleted by then: the socket was
        // then left behind (seen under load in CI).
        remove_own_socket(&self.socket);
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let reaper = Reaper::default();
        tokio::spawn(reaper.clone().run());
        // Events go out through a queue of the shim's own that keeps their order (events.rs);
        // containerd-shim's publisher is kept for its address only.
        let events = Events::start(&self.namespace, TtrpcForward::new(&publisher.address));
        drop(publisher);
        let service = TaskService::new(
            &self.namespace,
            events,
            reaper,
            Node::default(),
            self.exit.clone(),
            AuditOutput::claiming_stdout(),
        );
        service.exit_on_sigterm_when_idle();
        service.reopen_audit_on_sighup();
        service
    }
}

async fn cleanup_after_dead_shim(namespace: &str, id: &str, bundle: &Path, st: &PersistedState) {
    // The same runsc wrapper the live shim used, with the flags it persisted (and its own
    // reaper: nothing else waits for children in this short-lived process).
    let reaper = Reaper::default();
    tokio::spawn(reaper.clone().run());
    let runsc_reaper = reaper.clone();
    let flags = SandboxFlags {
        network: st.network,
        netns: st.netns.clone(),
        extra: Vec::new(),
    };
    let runsc = Runsc::new(
        st.binary.clone(),
        st.root.clone(),
        st.global.clone(),
        flags,
        bundle.to_path_buf(),
        reaper,
    );
    match runsc.delete(id).await {
        Ok(()) => tracing::info!(container = %id, "deleted sandbox left by a dead shim"),
        Err(e) => tracing::warn!(container = %id, "{e}"),
    }
    // The sandbox process may outlive the runsc state if it was never registered; it is not
    // ours to wait for, but it is ours to end.
    if st.pid > 1 && is_runsc_sandbox(st.pid, id) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(st.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if let (Some(table), Some(netns)) = (&st.nft_table, &st.netns) {
        let t = crate::network::filter::InstalledTable {
            table: table.clone(),
            netns: netns.clone(),
        };
        crate::network::filter::remove(&runsc_reaper, &t).await;
    }
    crate::hostbind::release(bundle);
    crate::outputs::release(
        bundle,
        &mut |link| tracing::warn!(container = %id, zone = %link.zone, path = %link.path, target = %link.target, refused = link.refused, "symlink pointing out of an output"),
    );
    crate::tools::release(bundle);
    crate::seccomp::exec::release(bundle);
    if st.rootfs_mounted {
        crate::rootfs::unmount(bundle);
    }
    // The dead shim never wrote the sandbox's delete: close its chain, saying so.
    if let Some(output) = &st.audit_output {
        match crate::audit::orphan::close_chain(output, namespace, id) {
            Ok(done) => {
                tracing::info!(container = %id, ?done, "audit chain of a dead shim's sandbox")
            }
            Err(e) => {
                tracing::warn!(container = %id, "closing the audit chain in {}: {e}", output.display())
            }
        }
    }
    runsc.remove_log(id);
    let _ = std::fs::remove_file(bundle.join(STATE_FILE));
}

/// Removes the ttrpc socket a killed shim left in /run/containerd/s (named in the bundle's
/// `address` file), if nothing listens on it any more: a pod's other containers may still be
/// served by a live shim on the same socket. True when no socket is left (removed now, or there
/// was none).
fn remove_dead_shim_socket(bundle: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let Ok(address) = std::fs::read_to_string(bundle.join(ADDRESS_FILE)) else {
        return true;
    };
    let path = Path::new(address.trim().trim_start_matches("unix://"));
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if !is_socket {
        return true;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return false;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!("removed the dead shim's socket {}", path.display());
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!("remove {}: {e}", path.display());
            false
        }
    }
}

/// Detaches every mount below `bundle` in one of the shim's own directories (`.safehouse-*`),
/// deepest first, leaving containerd's rootfs mount to containerd.
fn detach_own_mounts(bundle: &Path) {
    let Ok(entries) = std::fs::read_dir(bundle) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".safehouse"));
        if let (true, Some(target)) = (ours, dir.to_str()) {
            if let Err(e) = containerd_shim::mount::umount_recursive(Some(target), libc::MNT_DETACH)
            {
                tracing::warn!("detach the mounts under {target}: {e}");
            }
        }
    }
}

/// Removes the socket at `address` (`unix://PATH` or `PATH`) if it is a socket.
fn remove_own_socket(address: &str) {
    use std::os::unix::fs::FileTypeExt;
    let path = address.trim().trim_start_matches("unix://");
    if path.is_empty() {
        return;
    }
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false);
    if is_socket {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!("remove the shim's socket {path}: {e}");
        }
    }
}

/// Whether `pid` is still the runsc sandbox of container `id` (not a recycled pid).
fn is_runsc_sandbox(pid: u32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.first().is_some_and(|a| a.starts_with(b"runsc")) && args.contains(&id.as_bytes())
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_socket_is_removed_while_still_listening_and_other_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("shim.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        remove_own_socket(&format!("unix://{}", sock.display()));
        assert!(!sock.exists(), "the listening socket should be gone");

        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        remove_own_socket(&plain.display().to_string());
        assert!(plain.exists(), "a file that is no socket must stay");
        remove_own_socket("");
    }

    #[test]
    fn a_dead_shims_mounts_under_the_bundle_are_detached_and_the_rootfs_is_left() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path();
        let ours = bundle.join(".safehouse-ro/1");
        let rootfs = bundle.join("rootfs");
        let src = bundle.join("src");
        for d in [&ours, &rootfs, &src] {
            std::fs::create_dir_all(d).unwrap();
        }
        let bind = |at: &Path| {
            nix::mount::mount(
                Some(&src),
                at,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap()
        };
        bind(&ours);
        bind(&rootfs);
        let mounted = |p: &Path| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
        };
        detach_own_mounts(bundle);
        assert!(!mounted(&ours), "the shim's own bind is detached");
        assert!(
            mounted(&rootfs),
            "containerd's rootfs is left to containerd"
        );
        nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
}
