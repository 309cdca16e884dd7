//! Create: a new sandbox with its first container ([`create_sandbox`]), or a container joining
//! a pod's sandbox ([`join_sandbox`]).
//!
//! Each is a short sequence of steps; each step that makes something on the host records it in
//! its owner's undo list (the container's or the sandbox's) before anything can fail, and a
//! failure anywhere releases both lists, last made first. On success the lists go to their
//! owners, for Delete.

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::AuditEvent;
use tracing::info;

use super::memory::MemoryWatch;
pub use super::request::{Host, NewContainer};
use super::steps::{
    own_cgroup, persist, point_resolver, prepare_host, prepare_outputs, run_create_hooks,
    runsc_create,
};
use super::undo::{Step, Teardown, Undo};
use super::Sandbox;
use crate::audit::{self, AuditRules, Enforcer, KillSwitch, RuleBook, SandboxAudit};
use crate::bundle::{Bundle, POD_INIT_CONFIG};
use crate::confine;
use crate::container::{Container, SpecNetns, CRI_SANDBOX_NAME, CRI_SANDBOX_NAMESPACE};
use crate::error::{Result, ShimError};
use crate::network::{netns, SandboxNetwork};
use crate::process::InitProcess;
use crate::reaper::Reaper;
use crate::runsc::{NetworkMode, SandboxRuntime};

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
    let spec = serde_json::to_value(&compiled.spec)
        .map_err(|e| ShimError::Internal(format!("container {:?}: spec: {e}", new.id)))?;
    let memory = super::memory::member_watch(&new.id, &new.bundle.spec, &spec)?;
    let mut undo = Undo::default();
    let runtime = sandbox.runtime.for_container(&new.bundle.dir);
    let result = async {
        // A member resolves through the pod's forwarder too (it listens in the shared namespace).
        point_resolver(host.env, &mut new, runtime.flags().network)?;
        let rootfs_mounted = prepare_host(&mut new, &mut undo).await?;
        prepare_outputs(host, &mut new, sandbox.audit.ctx.clone(), &mut undo).await?;
        // Its execs are checked, and its events labelled, under its own policy (its tools
        // resolved in its rootfs, now mounted).
        sandbox.audit.book.insert(&new.id, container_rules(&new));
        new.bundle.write_spec(&new.confinement.compiled.spec)?;
        let init = Arc::new(InitProcess::new(new.io.clone()));
        let pid = runsc_create(host, &new, runtime.as_ref(), &init, true, &mut undo).await?;
        run_create_hooks(&new, pid, &sandbox.audit, record).await?;
        Ok::<_, ShimError>((init, pid, rootfs_mounted))
    }
    .await;
    let result = match result {
        Ok((init, pid, rootfs_mounted)) => persist(
            host,
            &new,
            runtime.as_ref(),
            pid,
            rootfs_mounted,
            None,
            None,
        )
        .map(|()| (init, pid)),
        Err(e) => Err(e),
    };
    match result {
        Ok((init, pid)) => {
            init.set_pid(pid);
            Ok(container(new, sandbox.clone(), runtime, init, undo, memory))
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
        container(
            self.new,
            sandbox,
            self.runtime,
            self.init,
            made.container,
            MemoryWatch::default(),
        )
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
    let spec_netns = crate::container::spec_netns(&new.bundle.spec);
    let mut flags = confine::network_flags(env, compiled, &spec_netns)?;
    flags.extra = confine::policy_flags(compiled, &env.probe)?;
    let upstreams = point_resolver(env, &mut new, flags.network)?;
    let rootfs_mounted = prepare_host(&mut new, &mut made.container).await?;
    let audit = start_audit(host, &new, &mut made.sandbox)?;
    if let Some(flag) = audit.1 {
        flags.extra.push(flag);
    }
    let audit = audit.0;
    prepare_outputs(host, &mut new, audit.ctx.clone(), &mut made.container).await?;
    // A namespace the spec names gets its filter before runsc starts anything in it.
    let mut network = match (&new.confinement.compiled.filter, &flags.netns) {
        (Some(filter), Some(netns)) if flags.network == NetworkMode::Host => {
            let network = SandboxNetwork::start(
                host.reaper,
                netns,
                &new.id,
                filter,
                upstreams.clone(),
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
    // A namespace runsc made (a network entry without a path) exists from `runsc create` on,
    // configured by the spec's createRuntime hooks: its filter goes in now, before Create
    // returns and so before `runsc start` runs the agent's first instruction.
    let new_netns = spec_netns == SpecNetns::New && flags.network == NetworkMode::Host;
    if let (true, None, Some(filter)) = (new_netns, &network, &new.confinement.compiled.filter) {
        let (pinned, path) = netns::pin_sandbox_netns(pid)?;
        let mut started = SandboxNetwork::start(
            host.reaper,
            &path,
            &new.id,
            filter,
            upstreams,
            &audit,
            host.output,
        )
        .await?;
        started.pinned = Some(pinned);
        let started = Arc::new(started);
        made.sandbox.push(Step::Network(started.clone()));
        network = Some(started);
    }
    run_create_hooks(&new, pid, &audit, record).await?;
    if let Some((file, unlimited)) = own_cgroup(&new.bundle).and_then(|path| {
        crate::cgroup::cpu_quota_release(std::path::Path::new(crate::cgroup::ROOT), &path)
    }) {
        audit.switch.lift_cpu_cap_on_kill(file, unlimited);
    }
    if let Err(e) = audit.switch.arm(pid) {
        // The task service's runsc kill stands in for it.
        tracing::warn!(container = %new.id, "cannot arm the kill switch for pid {pid}: {e}");
    }
    // The sandbox process is re-parented to the shim; from now on the reaper watches it.
    made.sandbox.push(Step::ReaperWatch(pid as i32));
    // The delete action of a dead shim reaches a table only through a namespace path that
    // outlives the shim; a namespace runsc made goes with its sandbox, and the table with it.
    let table = network
        .as_ref()
        .filter(|n| n.pinned.is_none())
        .map(|n| n.table.table.clone());
    let output = Some(env.config.audit.output.clone());
    persist(
        host,
        &new,
        runtime.as_ref(),
        pid,
        rootfs_mounted,
        table,
        output,
    )?;
    Ok(Parts {
        new,
        runtime,
        audit,
        init,
        pid,
    })
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
    host.output.writer(&host.env.config.audit)?;
    let ctx = sandbox_context(&new.id, host.namespace, &new.bundle)
        .with_policy(&compiled.name, Some(compiled.digest.clone()));
    let rules = container_rules(new);
    let book = Arc::new(RuleBook::new(&new.id, rules));
    let switch = Arc::new(KillSwitch::default());
    let enforcer = Enforcer::new(
        ctx.clone(),
        book.clone(),
        switch.clone(),
        host.output.clone(),
        host.kills.clone(),
    );
    let pod_sandbox = new.bundle.annotations()[crate::container::CRI_CONTAINER_TYPE] == "sandbox";
    let started = audit::start_sandbox(
        ctx,
        &audit::categories(compiled, pod_sandbox),
        book,
        switch,
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

/// The audit fields of a new sandbox `id` in containerd namespace `namespace`: with its pod's
/// name and namespace when CRI made it.
pub(crate) fn sandbox_context(id: &str, namespace: &str, bundle: &Bundle) -> SandboxContext {
    let ctx = SandboxContext::new(id).with_namespace(namespace);
    let ann = bundle.annotations();
    match (
        ann[CRI_SANDBOX_NAME].as_str(),
        ann[CRI_SANDBOX_NAMESPACE].as_str(),
    ) {
        (Some(name), Some(ns)) => ctx.with_pod(name, ns),
        _ => ctx,
    }
}

/// The rules the enforcer checks this container's events against (its own policy's).
fn container_rules(new: &NewContainer<'_>) -> AuditRules {
    let root = new.bundle.spec["root"]["path"].as_str().unwrap_or("rootfs");
    AuditRules::from_policy(
        &new.confinement.compiled,
        &new.bundle.dir.join(root),
        &new.bundle.spec,
    )
}

fn container(
    new: NewContainer<'_>,
    sandbox: Arc<Sandbox>,
    runtime: Arc<dyn SandboxRuntime>,
    init: Arc<InitProcess>,
    undo: Undo,
    memory: MemoryWatch,
) -> Arc<Container> {
    let compiled = new.confinement.compiled;
    info!(container = %new.id, sandbox = %sandbox.id, pid = init.pid(), policy = %compiled.name, digest = %compiled.digest, source = ?new.confinement.source, "created");
    let ctx = sandbox
        .audit
        .ctx
        .clone()
        .with_policy(&compiled.name, Some(compiled.digest.clone()));
    Arc::new(Container {
        ctx,
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
        tools: !compiled.tools.is_empty(),
        timeout: compiled.timeout,
        resource_policy: new.confinement.policy.spec.resources,
        exit_reason: Mutex::new(None),
        memory,
        start_hooks: new.hooks.start_container,
        undo: tokio::sync::Mutex::new(undo),
    })
}
