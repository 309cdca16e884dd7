//! Create: choose and apply the policy, mount the rootfs, start the audit, run `runsc create`
//! (and leave nothing behind when any step fails).

use super::*;

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
        let spec: Value = serde_json::from_slice(&spec_text).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "{}: not a valid OCI spec: {e}",
                spec_path.display()
            ))
        })?;

        let runsc = env.runsc(&self.namespace, &self.reaper, &bundle)?;
        let config_name = env
            .config
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<built-in defaults>".into());
        let (policy, source) = confine::select(&env.config.policy, &spec, &config_name)?;
        let ctx = confine::compile_context(&env.config.policy, &bundle);
        let compiled = confine::confine_bundle(&policy, &ctx, &bundle, &spec_text)?;
        info!(container = %id, policy = %compiled.name, digest = %compiled.digest, ?source, "policy applied");
        let own_cgroup = spec["linux"]["cgroupsPath"].as_str().map(String::from);
        let (sandbox_id, flags, sandbox_cgroup, sandbox_oom) = match container::sandbox_role(
            &spec, &id,
        ) {
            SandboxRole::Root => {
                let mut flags = if confine::allows_network(&compiled) {
                    env.sandbox_flags(container::netns_path(&spec))?
                } else {
                    SandboxFlags {
                        network: "none".into(),
                        netns: None,
                        extra: Vec::new(),
                    }
                };
                flags.extra = confine::policy_flags(&compiled, &env.probe)?;
                (id.clone(), flags, own_cgroup.clone(), Arc::default())
            }
            SandboxRole::Join(sb) => {
                let root = self.get(&sb).map_err(|_| {
                    ShimError::FailedPrecondition(format!(
                        "container {id:?} joins pod sandbox {sb:?}, which this shim does not serve (create the sandbox container first)"
                    ))
                })?;
                // The pod's processes all live in the sandbox's cgroup, not in this
                // container's own (runsc only mirrors that one for tools).
                (
                    sb,
                    root.flags.clone(),
                    root.cgroups_path.clone(),
                    root.sandbox_oom.clone(),
                )
            }
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
        let paths = io_paths(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let init = Arc::new(Process::new("", paths.clone()));
        let pid_file = bundle.join("init.pid");
        let created = self
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
            .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                // Leave nothing behind: runsc state, sandbox, mounts, stdio.
                if let Err(de) = runsc.delete(&id, &flags).await {
                    warn!(container = %id, "cleanup after failed create: {de}");
                }
                init.io.lock().await.shutdown().await;
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

    /// The sandbox's audit: a new sink and pump for a sandbox's first container (its runsc flags
    /// gain the pod-init-config), the pod's for a container joining it.
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
        let (tx, rx) = mpsc::channel(audit::PUMP_QUEUE);
        let (sandbox_audit, flag) = audit::start_sandbox(ctx, compiled, bundle, tx)?;
        if let Some(flag) = flag {
            flags.extra.push(flag);
        }
        let root = spec["root"]["path"].as_str().unwrap_or("rootfs");
        let rules = AuditRules::from_policy(compiled, &bundle.join(root), spec);
        audit::spawn_pump(
            rx,
            sandbox_audit.clone(),
            rules,
            self.audit.clone(),
            self.kills.clone(),
        );
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
