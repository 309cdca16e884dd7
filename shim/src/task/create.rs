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
use crate::process::ProcessRef;
use crate::sandbox::create::{create_sandbox, join_sandbox, Host, NewContainer};
use crate::stdio::IoPaths;
use tracing::info;

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
        let confinement = confine::confine(&env, &bundle)?;
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
