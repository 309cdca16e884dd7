//! Create: a new sandbox with its first container ([`create_sandbox`]), or a container joining
//! a pod's sandbox ([`join_sandbox`]).
//!
//! Each is a short sequence of steps; each step that makes something on the host records it in
//! its owner's undo list (the container's or the sandbox's) before anything can fail, and a
//! failure anywhere releases both lists, last made first. On success the lists go to their
//! owners, for Delete.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::api::Mount;
use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::AuditEvent;
use tokio::sync::mpsc;
use tracing::info;

use super::persisted::PersistedState;
use super::undo::{Step, Teardown, Undo};
use super::Sandbox;
use crate::audit::{self, AuditOutput, AuditRules, Enforcer, KillRequest, SandboxAudit};
use crate::bundle::{Bundle, INIT_PID_FILE, POD_INIT_CONFIG, STATE_FILE};
use crate::confine::{self, Confinement};
use crate::container::{Container, CRI_SANDBOX_NAME, CRI_SANDBOX_NAMESPACE};
use crate::error::{Result, ShimError};
use crate::hooks::{HookState, ShimHooks};
use crate::network::{resolver, SandboxNetwork};
use crate::node::{Node, RuntimeEnv};
use crate::process::InitProcess;
use crate::reaper::Reaper;
use crate::runsc::{ChildStdio, CreateOpts, NetworkMode, SandboxRuntime};
use crate::stdio::{ConsoleSocket, IoPaths, ProcessIo};

/// What Create needs from the shim.
pub struct Host<'a> {
    /// The node (state directories, the runsc to use).
    pub node: &'a Node,
    /// The runtime config this container was created with.
    pub env: &'a RuntimeEnv,
    /// containerd's namespace.
    pub namespace: &'a str,
    /// The shim's reaper.
    pub reaper: &'a Reaper,
    /// The shim's audit writer.
    pub output: &'a Arc<AuditOutput>,
    /// Where a sandbox's enforcer sends its kill requests.
    pub kills: &'a mpsc::UnboundedSender<KillRequest>,
}

/// A container to create, its policy chosen and compiled.
pub struct NewContainer<'a> {
    /// containerd's id.
    pub id: String,
    /// The bundle (its spec without the hooks the shim runs itself).
    pub bundle: Bundle,
    /// containerd's rootfs mounts.
    pub rootfs: &'a [Mount],
    /// Its stdio.
    pub io: IoPaths,
    /// The hooks the shim runs itself.
    pub hooks: ShimHooks,
    /// Its policy.
    pub confinement: Confinement,
}

/// What a failed create releases: the container's steps, then the sandbox's.
#[derive(Default)]
struct Made {
    container: Undo,
    sandbox: Undo,
}

impl Made {
    async fn release(mut self, reaper: &Reaper) {
        let how = Teardown {
            reaper,
            sandbox_gone: false,
            strict: false,
        };
        let _ = self.container.run(&how).await;
        let _ = self.sandbox.run(&how).await;
    }
}

/// Boots a new sandbox with `new` as its root container. `record` hears the hooks it ran.
pub async fn create_sandbox(
    host: &Host<'_>,
    new: NewContainer<'_>,
    record: &(dyn Fn(AuditEvent) + Sync),
) -> Result<Arc<Container>> {
    let mut made = Made::default();
    match boot(host, new, &mut made, record).await {
        Ok(parts) => Ok(parts.assemble(made)),
        Err(e) => {
            made.release(host.reaper).await;
            Err(e)
        }
    }
}

/// Creates `new` in the running sandbox of its pod.
pub async fn join_sandbox(
    host: &Host<'_>,
    sandbox: &Arc<Sandbox>,
    mut new: NewContainer<'_>,
    record: &(dyn Fn(AuditEvent) + Sync),
) -> Result<Arc<Container>> {
    let compiled = &new.confinement.compiled;
    if sandbox.filter != compiled.filter {
        return Err(ShimError::FailedPrecondition(format!(
            "container {:?}: its policy {:?} asks for a different network than pod sandbox {:?}; all containers of a pod share one network namespace and its filter, so their network sections must match",
            new.id, compiled.name, sandbox.id
        )));
    }
    let mut undo = Undo::default();
    let runtime = sandbox.runtime.for_container(&new.bundle.dir);
    let result = async {
        // A member's resolv.conf points at the pod's forwarder too (its upstreams are the pod's).
        point_resolver(host.env, &mut new, runtime.flags().network)?;
        let rootfs_mounted = prepare_host(&mut new, &mut undo).await?;
        new.bundle.write_spec(&new.confinement.compiled.spec)?;
        let init = Arc::new(InitProcess::new(new.io.clone()));
        let pid = runsc_create(host, &new, runtime.as_ref(), &init, true, &mut undo).await?;
        run_create_hooks(&new, pid, &sandbox.audit, record).await?;
        Ok::<_, ShimError>((init, pid, rootfs_mounted))
    }
    .await;
    let result = match result {
        Ok((init, pid, rootfs_mounted)) => {
            persist(host, &new, runtime.as_ref(), pid, rootfs_mounted, None).map(|()| (init, pid))
        }
        Err(e) => Err(e),
    };
    match result {
        Ok((init, pid)) => {
            init.set_pid(pid);
            Ok(container(new, sandbox.clone(), runtime, init, undo))
        }
        Err(e) => {
            let how = Teardown {
                reaper: host.reaper,
                sandbox_gone: false,
                strict: false,
            };
            let _ = undo.run(&how).await;
            Err(e)
        }
    }
}

/// Everything a booted sandbox and its root container are made of, but their undo lists.
struct Parts<'a> {
    new: NewContainer<'a>,
    runtime: Arc<dyn SandboxRuntime>,
    audit: Arc<SandboxAudit>,
    init: Arc<InitProcess>,
    pid: u32,
}

impl Parts<'_> {
    fn assemble(self, made: Made) -> Arc<Container> {
        let compiled = &self.new.confinement.compiled;
        let sandbox = Arc::new(Sandbox {
            id: self.new.id.clone(),
            runtime: self.runtime.clone(),
            cgroups_path: own_cgroup(&self.new.bundle),
            oom: AtomicBool::new(false),
            audit: self.audit,
            filter: compiled.filter.clone(),
            pid: AtomicU32::new(self.pid),
            exited: AtomicBool::new(false),
            undo: tokio::sync::Mutex::new(made.sandbox),
        });
        self.init.set_pid(self.pid);
        container(self.new, sandbox, self.runtime, self.init, made.container)
    }
}

/// The sequence of a new sandbox.
async fn boot<'a>(
    host: &Host<'_>,
    mut new: NewContainer<'a>,
    made: &mut Made,
    record: &(dyn Fn(AuditEvent) + Sync),
) -> Result<Parts<'a>> {
    let env = host.env;
    let compiled = &new.confinement.compiled;
    let netns = crate::container::netns_path(&new.bundle.spec);
    let mut flags = confine::network_flags(env, compiled, netns)?;
    flags.extra = confine::policy_flags(compiled, &env.probe)?;
    let upstreams = point_resolver(env, &mut new, flags.network)?;
    let rootfs_mounted = prepare_host(&mut new, &mut made.container).await?;
    let audit = start_audit(host, &new, &mut made.sandbox)?;
    if let Some(flag) = audit.1 {
        flags.extra.push(flag);
    }
    let audit = audit.0;
    let network = match (&new.confinement.compiled.filter, &flags.netns) {
        (Some(filter), Some(netns)) if flags.network == NetworkMode::Host => {
            let network = SandboxNetwork::start(
                host.reaper,
                netns,
                &new.id,
                filter,
                upstreams,
                &audit,
                host.output,
            )
            .await?;
            let network = Arc::new(network);
            made.sandbox.push(Step::Network(network.clone()));
            Some(network)
        }
        _ => None,
    };
    new.bundle.write_spec(&new.confinement.compiled.spec)?;
    let runtime = host.node.runtime(
        env,
        host.namespace,
        host.reaper,
        flags.clone(),
        &new.bundle.dir,
    )?;
    let init = Arc::new(InitProcess::new(new.io.clone()));
    let pid = runsc_create(
        host,
        &new,
        runtime.as_ref(),
        &init,
        false,
        &mut made.container,
    )
    .await?;
    run_create_hooks(&new, pid, &audit, record).await?;
    // The sandbox process is re-parented to the shim; from now on the reaper watches it.
    made.sandbox.push(Step::ReaperWatch(pid as i32));
    let table = network.as_ref().map(|n| n.table.table.clone());
    persist(host, &new, runtime.as_ref(), pid, rootfs_mounted, table)?;
    Ok(Parts {
        new,
        runtime,
        audit,
        init,
        pid,
    })
}

/// Writes what the `delete` action needs if the shim dies.
fn persist(
    host: &Host<'_>,
    new: &NewContainer<'_>,
    runtime: &dyn SandboxRuntime,
    pid: u32,
    rootfs_mounted: bool,
    nft_table: Option<String>,
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
    }
    .save(&new.bundle.dir)
}

/// Host names mean something only to an allowlist (in `open` everything but the protected
/// ranges is reachable anyway, and a name never opens a protected range): then the container's
/// resolv.conf points at the sandbox's forwarder, and these are its upstreams.
fn point_resolver(
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
/// the image's files), and read-only host binds for the spec's read-only bind mounts. True
/// when the shim mounted the rootfs. The state file the delete action reads (written once
/// runsc created the container) is released last of all.
async fn prepare_host(new: &mut NewContainer<'_>, undo: &mut Undo) -> Result<bool> {
    let dir = new.bundle.dir.clone();
    undo.push(Step::File(new.bundle.file(STATE_FILE)));
    let mounted = crate::rootfs::mount(&dir, new.rootfs).await?;
    if mounted {
        undo.push(Step::Rootfs(dir.clone()));
    }
    let compiled = &mut new.confinement.compiled;
    if !compiled.tools.is_empty() {
        undo.push(Step::Tools(dir.clone()));
        let root = new.bundle.spec["root"]["path"].as_str().unwrap_or("rootfs");
        let rootfs = dir.join(root);
        let layout = crate::tools::prepare(&dir, &rootfs, &compiled.tools)?;
        safehouse_policy::apply_layout(&mut compiled.spec, &layout);
        crate::tools::make_mount_points(&rootfs, &compiled.spec)?;
    }
    undo.push(Step::HostBinds(dir.clone()));
    crate::hostbind::harden(&dir, &mut compiled.spec)?;
    Ok(mounted)
}

/// The sandbox's audit session: its sink, bound before runsc starts, with the policy enforcer
/// reading it. Returns the runsc flag that points the Sentry at the sink, when the policy
/// records anything.
fn start_audit(
    host: &Host<'_>,
    new: &NewContainer<'_>,
    undo: &mut Undo,
) -> Result<(Arc<SandboxAudit>, Option<String>)> {
    let compiled = &new.confinement.compiled;
    host.output.writer(&host.env.config.audit.output)?;
    let mut ctx = SandboxContext::new(&new.id)
        .with_namespace(host.namespace)
        .with_policy(&compiled.name, Some(compiled.digest.clone()));
    let ann = new.bundle.annotations();
    if let (Some(name), Some(ns)) = (
        ann[CRI_SANDBOX_NAME].as_str(),
        ann[CRI_SANDBOX_NAMESPACE].as_str(),
    ) {
        ctx = ctx.with_pod(name, ns);
    }
    let root = new.bundle.spec["root"]["path"].as_str().unwrap_or("rootfs");
    let rules = AuditRules::from_policy(compiled, &new.bundle.dir.join(root), &new.bundle.spec);
    let enforcer = Enforcer::new(ctx.clone(), rules, host.output.clone(), host.kills.clone());
    let started = audit::start_sandbox(
        ctx,
        compiled,
        &new.bundle.dir,
        &host.node.trace_dir(),
        enforcer,
    )?;
    undo.push(Step::AuditSink(started.0.clone()));
    if started.1.is_some() {
        undo.push(Step::File(new.bundle.file(POD_INIT_CONFIG)));
    }
    Ok(started)
}

/// Sets up the init's stdio and runs `runsc create`; returns the sandbox (or container) pid.
async fn runsc_create(
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
async fn run_create_hooks(
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
fn own_cgroup(bundle: &Bundle) -> Option<String> {
    bundle.spec["linux"]["cgroupsPath"]
        .as_str()
        .map(String::from)
}

fn container(
    new: NewContainer<'_>,
    sandbox: Arc<Sandbox>,
    runtime: Arc<dyn SandboxRuntime>,
    init: Arc<InitProcess>,
    undo: Undo,
) -> Arc<Container> {
    let compiled = new.confinement.compiled;
    info!(container = %new.id, sandbox = %sandbox.id, pid = init.pid(), policy = %compiled.name, digest = %compiled.digest, source = ?new.confinement.source, "created");
    Arc::new(Container {
        id: new.id,
        runtime,
        cgroups_path: own_cgroup(&new.bundle),
        annotations: new.bundle.annotations().clone(),
        bundle: new.bundle.dir,
        sandbox,
        init,
        execs: Mutex::default(),
        policy: compiled.name,
        policy_digest: compiled.digest,
        timeout: compiled.timeout,
        resource_policy: new.confinement.policy.spec.resources,
        exit_reason: Mutex::new(None),
        start_hooks: new.hooks.start_container,
        undo: tokio::sync::Mutex::new(undo),
    })
}
