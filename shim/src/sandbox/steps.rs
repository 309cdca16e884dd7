//! The steps every container's Create takes, root or pod member: its resolv.conf, its host
//! binds and rootfs, its stdio and `runsc create`, its createContainer hooks, and the state the
//! delete action reads. Each records what it makes in the undo list it is given.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::AuditEvent;

use super::persisted::PersistedState;
use super::request::{Host, NewContainer};
use super::undo::{OutputsStep, Step, Undo};
use crate::audit::SandboxAudit;
use crate::bundle::{Bundle, INIT_PID_FILE, MASKED_FILE, STATE_FILE};
use crate::error::{Result, ShimError};
use crate::hooks::HookState;
use crate::network::resolver;
use crate::node::RuntimeEnv;
use crate::process::InitProcess;
use crate::runsc::{ChildStdio, CreateOpts, NetworkMode, SandboxRuntime};
use crate::stdio::{ConsoleSocket, ProcessIo};

/// Writes what the `delete` action needs if the shim dies.
pub(super) fn persist(
    host: &Host<'_>,
    new: &NewContainer<'_>,
    runtime: &dyn SandboxRuntime,
    pid: u32,
    rootfs_mounted: bool,
    nft_table: Option<String>,
    audit_output: Option<PathBuf>,
) -> Result<()> {
    let flags = runtime.flags();
    PersistedState {
        binary: host.env.config.binary.clone(),
        root: runtime.root().to_path_buf(),
        global: host.env.global.clone(),
        network: flags.network,
        netns: flags.netns.clone(),
        pid,
        rootfs_mounted,
        nft_table,
        audit_output,
    }
    .save(&new.bundle.dir)
}

/// Host names mean something only to an allowlist (in `open` everything but the protected
/// ranges is reachable anyway, and a name never opens a protected range): then the container's
/// resolv.conf points at the sandbox's forwarder, and these are its upstreams.
pub(super) fn point_resolver(
    env: &RuntimeEnv,
    new: &mut NewContainer<'_>,
    network: NetworkMode,
) -> Result<Option<Vec<IpAddr>>> {
    let names_hosts = new.confinement.compiled.filter.as_ref().is_some_and(|f| {
        f.mode == safehouse_policy::FilterMode::Allowlist && f.hosts().next().is_some()
    });
    if !names_hosts || network != NetworkMode::Host {
        return Ok(None);
    }
    resolver::point_resolver(
        &env.config.dns_upstreams,
        &new.bundle.spec,
        &new.bundle.dir,
        &mut new.confinement.compiled,
    )
    .map(Some)
}

/// The rootfs mounts, the mounts that make `process.tools` hold by construction (they need
/// the image's files), read-only host binds for the spec's read-only bind mounts, and the
/// mounts that make its masked and read-only paths hold (last: they cover the others). True
/// when the shim mounted the rootfs. The state file the delete action reads (written once
/// runsc created the container) is released last of all.
pub(super) async fn prepare_host(new: &mut NewContainer<'_>, undo: &mut Undo) -> Result<bool> {
    let dir = new.bundle.dir.clone();
    undo.push(Step::File(new.bundle.file(STATE_FILE)));
    let mounted = crate::rootfs::mount(&dir, new.rootfs).await?;
    if mounted {
        undo.push(Step::Rootfs(dir.clone()));
    }
    let compiled = &mut new.confinement.compiled;
    let root = new.bundle.spec["root"]["path"].as_str().unwrap_or("rootfs");
    let rootfs = dir.join(root);
    // The /dev/fuse mask goes in first: under `tools` the mount points are made below.
    undo.push(Step::HostBinds(dir.clone()));
    crate::hostbind::mask_fuse(&dir, &mut compiled.spec)?;
    // The exec helper's bind (its mount point made now, before `tools` reads the image) goes
    // after the `tools` mounts, not `noexec`, and is made read-only on the host with the
    // other read-only binds.
    undo.push(Step::SeccompExec(dir.clone()));
    let exec_helper = crate::seccomp::exec::prepare(&dir, &rootfs, &compiled.spec)?;
    if !compiled.tools.is_empty() {
        undo.push(Step::Tools(dir.clone()));
        let layout = crate::tools::prepare(&dir, &rootfs, &compiled.tools)?;
        safehouse_policy::apply_layout(&mut compiled.spec, &layout);
        crate::tools::make_mount_points(&rootfs, &compiled.spec)?;
    }
    if let Some(bind) = exec_helper {
        crate::seccomp::exec::add_bind(&mut compiled.spec, bind);
    }
    crate::hostbind::harden(&dir, &mut compiled.spec)?;
    undo.push(Step::File(new.bundle.file(MASKED_FILE)));
    crate::masked::apply(&dir, &mut compiled.spec)?;
    Ok(mounted)
}

/// Backs the policy's output zones with images of their size (released after runsc's state,
/// so after the sandbox is gone); their symlink findings go to the audit log under `ctx`.
pub(super) async fn prepare_outputs(
    host: &Host<'_>,
    new: &mut NewContainer<'_>,
    ctx: SandboxContext,
    undo: &mut Undo,
) -> Result<()> {
    let zones = &new.confinement.policy.spec.filesystem.outputs;
    if zones.is_empty() {
        return Ok(());
    }
    undo.push(Step::Outputs(OutputsStep {
        bundle: new.bundle.dir.clone(),
        id: new.id.clone(),
        ctx,
        output: host.output.clone(),
    }));
    crate::outputs::prepare(
        &new.bundle.dir,
        &new.confinement.compiled.name,
        zones,
        &mut new.confinement.compiled.spec,
        host.reaper,
    )
    .await
}

/// Sets up the init's stdio and runs `runsc create`; returns the sandbox (or container) pid.
pub(super) async fn runsc_create(
    host: &Host<'_>,
    new: &NewContainer<'_>,
    runtime: &dyn SandboxRuntime,
    init: &Arc<InitProcess>,
    joins_pod: bool,
    undo: &mut Undo,
) -> Result<u32> {
    let id = &new.id;
    let paths = &new.io;
    undo.push(Step::Stdio(init.clone()));
    let (stdio, console) = if paths.terminal {
        let sock = ConsoleSocket::bind(
            &host.node.console_dir(),
            &format!("{}/{id}", host.namespace),
        )?;
        let rx = sock.receive();
        (ChildStdio::null(), Some((sock, rx)))
    } else {
        let (stdio, io) = ProcessIo::plain(paths, id, host.namespace, host.reaper).await?;
        *init.io.lock().await = io;
        if joins_pod {
            *init.start_stdio.lock().unwrap_or_else(|p| p.into_inner()) = Some(stdio);
            (ChildStdio::null(), None)
        } else {
            (stdio, None)
        }
    };
    let poststop_hooks = new.bundle.spec["hooks"]["poststop"]
        .as_array()
        .is_some_and(|h| !h.is_empty());
    undo.push(Step::RuntimeLog(
        runtime.for_container(&new.bundle.dir),
        id.clone(),
    ));
    undo.push(Step::RuntimeState {
        runtime: runtime.for_container(&new.bundle.dir),
        id: id.clone(),
        poststop_hooks,
        cgroup: own_cgroup(&new.bundle),
    });
    let pid_file = new.bundle.file(INIT_PID_FILE);
    let opts = CreateOpts {
        bundle: &new.bundle.dir,
        pid_file: &pid_file,
        console_socket: console.as_ref().map(|(s, _)| s.path()),
        stdio,
    };
    let res = runtime.create(id, opts).await;
    if let Some((sock, rx)) = console {
        if res.is_err() {
            sock.cancel();
        }
        let master = rx
            .await
            .map_err(|_| ShimError::Internal("console socket thread ended".into()))?;
        res?;
        let mut io = ProcessIo::default();
        io.attach_console(paths, master?)?;
        *init.io.lock().await = io;
    } else {
        res?;
    }
    read_pid(&pid_file).ok_or_else(|| {
        ShimError::Internal(format!(
            "runsc create {id}: no pid in {}",
            pid_file.display()
        ))
    })
}

fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
}

/// createContainer hooks: after runsc's createRuntime hooks, before Create returns.
pub(super) async fn run_create_hooks(
    new: &NewContainer<'_>,
    pid: u32,
    audit: &SandboxAudit,
    record: &(dyn Fn(AuditEvent) + Sync),
) -> Result<()> {
    if new.hooks.create_container.is_empty() {
        return Ok(());
    }
    let state = HookState {
        id: new.id.clone(),
        status: "created",
        pid,
        bundle: new.bundle.dir.clone(),
        annotations: new.bundle.annotations().clone(),
    };
    let netns = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    crate::hooks::run(
        "createContainer",
        &new.hooks.create_container,
        &state,
        Some(&netns),
        |r| record(crate::hooks::audit_event(&audit.ctx, &new.id, &r)),
    )
    .await
}

/// The container's `linux.cgroupsPath`.
pub(super) fn own_cgroup(bundle: &Bundle) -> Option<String> {
    bundle.spec["linux"]["cgroupsPath"]
        .as_str()
        .map(String::from)
}
