//! Create: check the request, choose and compile the policy, then boot a sandbox (or join the
//! pod's) — see [`crate::sandbox::create`] for the steps and how a failure releases them.

use std::path::Path;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics;

use super::{options_config_path, TaskService};
use crate::bundle::Bundle;
use crate::confine;
use crate::container::{sandbox_role, SandboxRole};
use crate::error::{Result, ShimError};
use crate::hooks;
use crate::node::RuntimeEnv;
use crate::process::ProcessRef;
use crate::sandbox::create::{create_sandbox, join_sandbox, sandbox_context, Host, NewContainer};
use crate::stdio::IoPaths;
use safehouse_policy::CompileError;
use tracing::{info, warn};

impl TaskService {
    pub(super) async fn create_task(
        &self,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse> {
        let id = self.check_new_id(&req)?;
        let config = options_config_path(req.options.as_ref())?;
        let env = self.node.env_for(config.as_deref(), &self.reaper).await?;
        let mut bundle = Bundle::read(Path::new(&req.bundle))?;
        // Hooks run on the host as root: they must be host binaries, not the image's. The kinds
        // runsc skips leave the spec here and are run by the shim.
        hooks::check_origin(
            &hooks::all_hooks(&bundle.spec)?,
            &hooks::container_dirs(&bundle.dir, &bundle.spec, &req.rootfs),
        )?;
        let shim_hooks = hooks::take_shim_hooks(&mut bundle.spec)?;
        let confinement = match confine::confine(&env, &bundle) {
            Ok(c) => c,
            Err(e) => {
                self.record_refusal(&env, &id, &bundle, &e);
                return Err(e);
            }
        };
        // What the spec asked beyond the policy's bounds and was narrowed: logged now, and
        // recorded in the create event once the container exists.
        let narrowed: Vec<String> = confinement
            .compiled
            .narrowed
            .iter()
            .map(|n| format!("narrowed {n}"))
            .collect();
        for n in &narrowed {
            info!(container = %id, policy = %confinement.compiled.name, "{n}");
        }
        let role = sandbox_role(&bundle.spec, &id);
        let new = NewContainer {
            id: id.clone(),
            bundle,
            rootfs: &req.rootfs,
            io: IoPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            hooks: shim_hooks,
            confinement,
        };
        let host = Host {
            node: &self.node,
            env: &env,
            namespace: &self.namespace,
            reaper: &self.reaper,
            output: &self.audit,
            kills: &self.kills,
        };
        let record = |e| self.record(e);
        let c = match role {
            SandboxRole::Root => create_sandbox(&host, new, &record).await?,
            SandboxRole::Join(pod) => {
                let sandbox = self.get(&pod).map(|root| root.sandbox.clone()).map_err(|_| {
                    ShimError::FailedPrecondition(format!(
                        "container {id:?} joins pod sandbox {pod:?}, which this shim does not serve (create the sandbox container first)"
                    ))
                })?;
                join_sandbox(&host, &sandbox, new, &record).await?
            }
        };
        let pid = c.init.pid();
        let mut changes = vec![format!(
            "confined by policy {} ({})",
            c.policy, c.policy_digest
        )];
        changes.extend(narrowed);
        self.record(c.ctx.create(&id, changes).build());
        if c.is_root() {
            // The sandbox process is re-parented to us; its exit status is the container's.
            let rx = self.reaper.watch(pid as i32);
            self.watch_exit(c.clone(), ProcessRef::Init(c.init.clone()), rx);
        }
        self.map().insert(id.clone(), c);
        self.register(&id, Path::new(&req.bundle));
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
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(e));
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Records a spec the policy refused (or a policy that does not load) in the audit log: a
    /// `policy`/`violation` with `enforcement: refused`, naming the field. A pod member's goes
    /// into its pod's chain; any other container's gets a chain of its own, closed at once by
    /// a `delete` (nothing ran). Other failures of Create are not the spec's doing.
    fn record_refusal(&self, env: &RuntimeEnv, id: &str, bundle: &Bundle, err: &ShimError) {
        let ShimError::Refused { source } = err else {
            return;
        };
        let (field, reason) = match source {
            CompileError::Refused { field, reason, .. } => (field.clone(), reason.clone()),
            CompileError::InvalidPolicy { .. } => ("policy".to_string(), source.to_string()),
        };
        if let Err(e) = self.audit.writer(&env.config.audit) {
            warn!(container = %id, "the refusal could not be recorded: {e}");
            return;
        }
        let message = "create refused: nothing ran";
        if let SandboxRole::Join(pod) = sandbox_role(&bundle.spec, id) {
            if let Ok(root) = self.get(&pod) {
                let ctx = root
                    .sandbox
                    .audit
                    .ctx
                    .clone()
                    .with_policy(source.policy(), None);
                self.record(
                    ctx.violation(id, &field, &reason, "refused")
                        .message(message)
                        .build(),
                );
                return;
            }
        }
        let ctx = sandbox_context(id, &self.namespace, bundle).with_policy(source.policy(), None);
        self.record(
            ctx.violation(id, &field, &reason, "refused")
                .message(message)
                .build(),
        );
        self.record(ctx.delete(id).message(message).build());
    }

    /// The new container's id, if it is valid and free and the request is one Safehouse serves.
    fn check_new_id(&self, req: &api::CreateTaskRequest) -> Result<String> {
        let id = &req.id;
        if id.is_empty() || id.contains('/') || id.len() > 255 {
            return Err(ShimError::InvalidArgument(format!(
                "invalid container id {id:?}"
            )));
        }
        if self.map().contains_key(id) {
            return Err(ShimError::AlreadyExists(format!(
                "container {id:?} already exists"
            )));
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported by Safehouse yet".into(),
            ));
        }
        Ok(id.clone())
    }
}
