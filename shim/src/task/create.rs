//! Create: choose and apply the policy, mount the rootfs, start the audit, run `runsc create`
//! (and leave nothing behind when any step fails).

use super::*;
use crate::netfilter::SandboxNetwork;
use safehouse_audit::{Action, Category};

/// The audit event for one query the sandbox's DNS forwarder handled.
fn dns_event(
    audit: &SandboxAudit,
    container_id: &str,
    v: crate::dns::QueryVerdict,
) -> safehouse_audit::AuditEvent {
    let addrs: Vec<String> = v.addrs.iter().map(|a| a.to_string()).collect();
    let mut b = audit
        .ctx
        .event(Category::Network, Action::Dns)
        .container(container_id)
        .actor("safehouse-dns")
        .message(format!("dns {} {} {}", v.qtype, v.name, v.verdict))
        .detail("query", v.name)
        .detail("qtype", v.qtype)
        .detail("verdict", v.verdict)
        .detail("addresses", addrs)
        .detail("ttl", v.ttl);
    if let Some(r) = v.reason {
        b = b.detail("reason", r);
    }
    b.build()
}

/// The audit event for a packet the sandbox's filter refused (other than a TCP connect, which
/// gVisor's connect point records): `policy`/`violation` with the packet's destination.
fn refusal_event(
    audit: &SandboxAudit,
    container_id: &str,
    r: crate::refusals::Refused,
) -> safehouse_audit::AuditEvent {
    let peer = r.destination;
    let place = match r.port {
        Some(port) if peer.is_ipv6() => format!("[{peer}]:{port}"),
        Some(port) => format!("{peer}:{port}"),
        None => peer.to_string(),
    };
    let protocol = r.protocol_name();
    let reason = format!("{protocol} packet to {place} refused: not allowed by the policy");
    let mut ev = audit
        .ctx
        .violation(container_id, "network.egress", &reason, "refused")
        .actor("safehouse-netfilter")
        .message(reason.clone())
        .detail("protocol", protocol)
        .detail("source", r.source.to_string())
        .build();
    ev.network = Some(safehouse_audit::event::NetworkInfo {
        family: Some(if peer.is_ipv6() { "inet6" } else { "inet" }.to_owned()),
        ip: Some(peer.to_string()),
        port: r.port,
        protocol: Some(i32::from(r.protocol)),
        ..Default::default()
    });
    ev
}

/// The audit event for the refused packets the filter counted but the shim did not record
/// (over the log's rate, or unread when the sandbox ended).
fn unrecorded_refusals_event(audit: &SandboxAudit, missed: u64) -> safehouse_audit::AuditEvent {
    audit
        .ctx
        .dropped(missed, safehouse_audit::DropSource::NetfilterLog)
        .message(format!(
            "{missed} refused packets not recorded one by one (over the filter log's rate of {} a second, or unread when the sandbox ended)",
            safehouse_policy::REFUSED_LOG_RATE
        ))
        .build()
}

/// The audit event for one OCI hook the shim ran on the host.
pub(super) fn hook_event(
    ctx: &safehouse_audit::lifecycle::SandboxContext,
    container_id: &str,
    run: &crate::hooks::HookRun,
) -> safehouse_audit::AuditEvent {
    ctx.hook(
        container_id,
        &run.kind,
        &run.path.display().to_string(),
        run.duration,
        run.failure.as_deref(),
    )
    .build()
}

impl TaskService {
    pub(super) async fn do_create(
        &self,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse> {
        let id = req.id.clone();
        if id.is_empty() || id.contains('/') || id.len() > 255 {
            return Err(ShimError::InvalidArgument(format!(
                "invalid container id {id:?}"
            )));
        }
        if self.map().contains_key(&id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {id:?} already exists"
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported by Safehouse yet".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let env = self
            .node
            .env_for(
                options_config_path(req.options.as_ref())?.as_deref(),
                &self.reaper,
            )
            .await?;
        let spec_path = bundle.join("config.json");
        let spec_text = std::fs::read(&spec_path)
            .map_err(|e| ShimError::io(format!("read {}", spec_path.display()), e))?;
        let mut spec: Value = serde_json::from_slice(&spec_text).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "{}: not a valid OCI spec: {e}",
                spec_path.display()
            ))
        })?;
        // Hooks run on the host as root: they must be host binaries, not the image's. The kinds
        // runsc skips leave the spec here and are run by the shim (crate::hooks).
        crate::hooks::check_origin(
            &crate::hooks::all_hooks(&spec)?,
            &crate::hooks::container_dirs(&bundle, &spec, &req.rootfs),
        )?;
        let shim_hooks = crate::hooks::take_shim_hooks(&mut spec)?;
        let spec_text = if shim_hooks.is_empty() {
            spec_text
        } else {
            serde_json::to_vec(&spec)
                .map_err(|e| ShimError::Internal(format!("serialise spec: {e}")))?
        };

        let runsc = env.runsc(&self.namespace, &self.reaper, &bundle)?;
        let config_name = env
            .config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<built-in defaults>".into());
        let (policy, source) = confine::select(&env.config.policy, &spec, &config_name)?;
        let ctx = confine::compile_context(&env.config.policy, &bundle);
        let mut compiled = confine::confine_bundle(&policy, &ctx, &bundle, &spec_text)?;
        info!(container = %id, policy = %compiled.name, digest = %compiled.digest, ?source, "policy applied");
        let own_cgroup = spec["linux"]["cgroupsPath"].as_str().map(String::from);
        let (sandbox_id, flags, sandbox_cgroup, sandbox_oom) = match container::sandbox_role(
            &spec, &id,
        ) {
            SandboxRole::Root => {
                let mut flags =
                    confine::network_flags(&env, &compiled, container::netns_path(&spec))?;
                flags.extra = confine::policy_flags(&compiled, &env.probe)?;
                (id.clone(), flags, own_cgroup.clone(), Arc::default())
            }
            SandboxRole::Join(sb) => {
                let root = self.get(&sb).map_err(|_| {
                    ShimError::FailedPrecondition(format!(
                        "container {id:?} joins pod sandbox {sb:?}, which this shim does not serve (create the sandbox container first)"
                    ))
                })?;
                if root.filter != compiled.filter {
                    return Err(ShimError::FailedPrecondition(format!(
                        "container {id:?}: its policy {:?} asks for a different network than pod sandbox {sb:?} (policy {:?}); all containers of a pod share one network namespace and its filter, so their network sections must match",
                        compiled.name, root.policy
                    )));
                }
                (
                    sb,
                    root.flags.clone(),
                    root.cgroups_path.clone(),
                    root.sandbox_oom.clone(),
                )
            }
        };

        // Host names mean something only to an allowlist (in `open` everything but the
        // protected ranges is reachable anyway, and a name never opens a protected range).
        let upstreams = if compiled.filter.as_ref().is_some_and(|f| {
            f.mode == safehouse_policy::FilterMode::Allowlist && f.hosts().next().is_some()
        }) && flags.network == "host"
        {
            Some(confine::point_resolver(
                &env,
                &spec,
                &bundle,
                &mut compiled,
            )?)
        } else {
            None
        };
        crate::hostbind::harden(&bundle).inspect_err(|_| crate::hostbind::release(&bundle))?;
        let rootfs_mounted = match container::mount_rootfs(&bundle, &req.rootfs).await {
            Ok(m) => m,
            Err(e) => {
                crate::hostbind::release(&bundle);
                return Err(e);
            }
        };
        let mut flags = flags;
        let sandbox_audit = match self.start_audit(
            &env,
            &spec,
            &sandbox_id,
            &id,
            &compiled,
            &bundle,
            &mut flags,
        ) {
            Ok(a) => a,
            Err(e) => {
                container::release_host_mounts(&bundle, rootfs_mounted);
                return Err(e);
            }
        };
        let network = if sandbox_id == id {
            match self
                .start_network(&id, &flags, &compiled, upstreams, &sandbox_audit)
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    container::release_host_mounts(&bundle, rootfs_mounted);
                    sandbox_audit.shutdown();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let paths = io_paths(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let init = Arc::new(Process::new("", paths.clone()));
        let pid_file = bundle.join("init.pid");
        let created = match self
            .create_in_runsc(
                &id,
                &bundle,
                &pid_file,
                &runsc,
                &flags,
                &init,
                &paths,
                sandbox_id != id,
            )
            .await
        {
            // createContainer hooks: after runsc's createRuntime hooks, before Create returns.
            Ok(pid) if !shim_hooks.create_container.is_empty() => {
                let state = crate::hooks::HookState {
                    id: id.clone(),
                    status: "created",
                    pid,
                    bundle: bundle.clone(),
                    annotations: spec["annotations"].clone(),
                };
                let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
                crate::hooks::run(
                    "createContainer",
                    &shim_hooks.create_container,
                    &state,
                    Some(&netns),
                    |r| self.record(hook_event(&sandbox_audit.ctx, &id, &r)),
                )
                .await
                .map(|()| pid)
            }
            other => other,
        };
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                // Leave nothing behind: runsc state, sandbox, mounts, stdio.
                if let Err(de) = runsc.delete(&id, &flags).await {
                    warn!(container = %id, "cleanup after failed create: {de}");
                }
                init.io.lock().await.shutdown().await;
                if let Some(n) = &network {
                    n.teardown(&self.reaper).await;
                }
                container::release_host_mounts(&bundle, rootfs_mounted);
                if sandbox_id == id {
                    sandbox_audit.shutdown();
                }
                runsc.remove_log(&id);
                return Err(e);
            }
        };
        init.set_pid(pid);
        PersistedState {
            binary: env.config.binary.clone(),
            root: runsc.root().to_path_buf(),
            global: env.global.clone(),
            network: flags.network.clone(),
            netns: flags.netns.clone(),
            pid,
            rootfs_mounted,
            nft_table: network.as_ref().map(|n| n.table.table.clone()),
        }
        .save(&bundle)?;

        let c = Arc::new(Container {
            id: id.clone(),
            bundle: bundle.clone(),
            sandbox_id: sandbox_id.clone(),
            flags,
            runsc,
            rootfs_mounted,
            init: init.clone(),
            execs: Mutex::new(HashMap::new()),
            policy: compiled.name.clone(),
            policy_digest: compiled.digest.clone(),
            timeout: compiled.timeout,
            audit: sandbox_audit.clone(),
            cgroups_path: sandbox_cgroup,
            sandbox_oom,
            own_cgroups_path: own_cgroup,
            resource_policy: policy.spec.resources.clone(),
            exit_reason: Mutex::new(None),
            start_hooks: shim_hooks.start_container,
            annotations: spec["annotations"].clone(),
            filter: compiled.filter.clone(),
            network,
        });
        self.record(
            sandbox_audit
                .ctx
                .create(
                    &id,
                    vec![format!(
                        "confined by policy {} ({})",
                        compiled.name, compiled.digest
                    )],
                )
                .build(),
        );
        if c.is_root() {
            // The sandbox process is re-parented to us; its exit status is the container's.
            let rx = self.reaper.watch(pid as i32);
            self.watch_exit(c.clone(), init.clone(), rx);
        }
        info!(
            container = %id,
            sandbox = %sandbox_id,
            pid,
            policy = %c.policy,
            digest = %c.policy_digest,
            "created"
        );
        self.map().insert(id.clone(), c);
        register(&self.namespace, &id, &bundle);

        let mut e = ev::TaskCreate::new();
        e.container_id = id;
        e.bundle = req.bundle.clone();
        e.rootfs = req.rootfs.clone();
        let mut tio = ev::TaskIO::new();
        tio.stdin = req.stdin.clone();
        tio.stdout = req.stdout.clone();
        tio.stderr = req.stderr.clone();
        tio.terminal = req.terminal;
        e.io = MessageField::some(tio);
        e.pid = pid;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(e))
            .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// The sandbox's network filter (and DNS forwarder when `upstreams` is given), installed in
    /// its namespace before runsc starts anything there.
    async fn start_network(
        &self,
        id: &str,
        flags: &SandboxFlags,
        compiled: &safehouse_policy::CompiledPolicy,
        upstreams: Option<Vec<std::net::IpAddr>>,
        sandbox_audit: &Arc<SandboxAudit>,
    ) -> Result<Option<Arc<SandboxNetwork>>> {
        let (Some(filter), Some(netns)) = (&compiled.filter, &flags.netns) else {
            return Ok(None);
        };
        if flags.network != "host" {
            return Ok(None);
        }
        let facts = safehouse_policy::NodeFacts {
            node_addrs: crate::netfilter::node_addrs(),
            dns_upstreams: upstreams.clone().unwrap_or_default(),
        };
        let started = std::time::Instant::now();
        let table = crate::netfilter::install(&self.reaper, netns, id, filter, &facts).await?;
        info!(container = %id, table = %table.table, elapsed_ms = started.elapsed().as_millis() as u64, "network filter installed");
        let refusals = {
            let audit = sandbox_audit.clone();
            let output = self.audit.clone();
            let cid = id.to_string();
            let on_unrecorded: crate::refusals::OnUnrecorded = {
                let (audit, output) = (audit.clone(), output.clone());
                Box::new(move |missed| output.submit(unrecorded_refusals_event(&audit, missed)))
            };
            let on_refused: crate::refusals::OnRefused = Arc::new(move |r| {
                output.submit(refusal_event(&audit, &cid, r));
            });
            match crate::refusals::RefusalLog::start(
                netns,
                safehouse_policy::REFUSED_LOG_GROUP,
                on_refused,
                on_unrecorded,
            ) {
                Ok(log) => log,
                Err(e) => {
                    crate::netfilter::remove(&self.reaper, &table).await;
                    return Err(e);
                }
            }
        };
        let dns = match upstreams {
            Some(ups) => {
                let audit = sandbox_audit.clone();
                let output = self.audit.clone();
                let cid = id.to_string();
                let on_query: crate::dns::OnQuery = Arc::new(move |v| {
                    output.submit(dns_event(&audit, &cid, v));
                });
                match crate::dns::DnsForwarder::start(
                    netns,
                    ups,
                    filter.clone(),
                    table.clone(),
                    self.reaper.clone(),
                    on_query,
                ) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        crate::netfilter::remove(&self.reaper, &table).await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        Ok(Some(Arc::new(SandboxNetwork {
            table,
            dns,
            refusals,
        })))
    }

    /// The sandbox's audit: a new sink and policy enforcer for a sandbox's first container (its
    /// runsc flags gain the pod-init-config), the pod's for a container joining it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_audit(
        &self,
        env: &RuntimeEnv,
        spec: &Value,
        sandbox_id: &str,
        id: &str,
        compiled: &safehouse_policy::CompiledPolicy,
        bundle: &Path,
        flags: &mut SandboxFlags,
    ) -> Result<Arc<SandboxAudit>> {
        if sandbox_id != id {
            return Ok(self.get(sandbox_id)?.audit.clone());
        }
        self.audit.writer(&env.config.audit.output)?;
        let mut ctx = SandboxContext::new(sandbox_id)
            .with_namespace(&self.namespace)
            .with_policy(&compiled.name, Some(compiled.digest.clone()));
        let ann = &spec["annotations"];
        if let (Some(name), Some(ns)) = (
            ann[container::CRI_SANDBOX_NAME].as_str(),
            ann[container::CRI_SANDBOX_NAMESPACE].as_str(),
        ) {
            ctx = ctx.with_pod(name, ns);
        }
        let root = spec["root"]["path"].as_str().unwrap_or("rootfs");
        let rules = AuditRules::from_policy(compiled, &bundle.join(root), spec);
        let enforcer =
            audit::Enforcer::new(ctx.clone(), rules, self.audit.clone(), self.kills.clone());
        let (sandbox_audit, flag) = audit::start_sandbox(ctx, compiled, bundle, enforcer)?;
        if let Some(flag) = flag {
            flags.extra.push(flag);
        }
        Ok(sandbox_audit)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_in_runsc(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        runsc: &Runsc,
        flags: &SandboxFlags,
        init: &Arc<Process>,
        paths: &IoPaths,
        joins_pod: bool,
    ) -> Result<u32> {
        let (stdio, console) = if paths.terminal {
            let sock = ConsoleSocket::bind(
                &self.node.console_dir(),
                &format!("{}/{id}", self.namespace),
            )?;
            let rx = sock.receive();
            (crate::runsc::ChildStdio::null(), Some((sock, rx)))
        } else {
            let (stdio, io) = ProcessIo::plain(paths, id, &self.namespace, &self.reaper).await?;
            *init.io.lock().await = io;
            if joins_pod {
                *init.start_stdio.lock().unwrap_or_else(|p| p.into_inner()) = Some(stdio);
                (crate::runsc::ChildStdio::null(), None)
            } else {
                (stdio, None)
            }
        };
        let res = runsc
            .create(
                id,
                bundle,
                pid_file,
                console.as_ref().map(|(s, _)| s.path()),
                stdio,
                flags,
            )
            .await;
        if let Some((sock, rx)) = console {
            if res.is_err() {
                sock.cancel();
            }
            let master = recv_console(rx).await;
            res?;
            let mut io = ProcessIo::default();
            io.attach_console(paths, master?)?;
            *init.io.lock().await = io;
        } else {
            res?;
        }
        let pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                ShimError::Internal(format!(
                    "runsc create {id}: no pid in {}",
                    pid_file.display()
                ))
            })?;
        Ok(pid)
    }
}
