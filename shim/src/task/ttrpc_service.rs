//! The ttrpc Task service: each containerd call handed to its file in this module, with errors
//! converted to ttrpc statuses.

use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};
use safehouse_runsc_config::paths::ACTOR_METADATA;
use tracing::{info, instrument};

use super::{ts, TaskService, FLUSH_EVENTS};
use crate::error::ShimError;
use crate::stats;

#[async_trait]
impl Task for TaskService {
    #[instrument(skip_all, fields(id = %req.id))]
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        Ok(self.create_task(req).await?)
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> ttrpc::Result<api::StartResponse> {
        Ok(self.start_process(req).await?)
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.exit();
        Ok(api::StateResponse {
            id: if req.exec_id.is_empty() {
                c.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.display().to_string(),
            pid: p.pid(),
            status: p.status().to_proto().into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: exit.map(|e| e.code).unwrap_or(0),
            exited_at: exit.map(|e| ts(e.at)).unwrap_or_default(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let exit = p.wait().await;
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: ts(exit.at),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn kill(&self, ctx: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        // `safehouse stop` says who asked; anything else is containerd acting for a client.
        let actor = ctx
            .metadata
            .get(ACTOR_METADATA)
            .and_then(|v| v.first())
            .map(|a| a.chars().take(200).collect::<String>())
            .unwrap_or_else(|| "containerd".into());
        self.kill_process(req, &actor).await?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        Ok(self.delete_process(req).await?)
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.add_exec(req).await?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        p.io.lock().await.resize(req.width, req.height)?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        let c = self.get(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin {
            p.io.lock().await.close_stdin();
        }
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let c = self.get(&req.id)?;
        self.running(&c)?;
        let pids = c.runtime.ps(&c.id).await?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pause(
        &self,
        _ctx: &TtrpcContext,
        req: api::PauseRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.set_paused(&req.id, false).await?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.set_paused(&req.id, true).await?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        Err(ShimError::Unimplemented(format!(
            "checkpoint of {:?}: not supported by Safehouse yet (runsc checkpoint is experimental)",
            req.id
        ))
        .into())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        self.update_resources(req).await?;
        Ok(api::Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> ttrpc::Result<api::StatsResponse> {
        let c = self.get(&req.id)?;
        self.running(&c)?;
        let raw = c.runtime.stats(&c.id).await?;
        let metrics = stats::metrics_from_runsc(&raw);
        let value = metrics
            .write_to_bytes()
            .map_err(|e| ShimError::Internal(format!("encode metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: "io.containerd.cgroups.v1.Metrics".into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let task_pid = self.get(&req.id).map(|c| c.init.pid()).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    #[instrument(skip_all)]
    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        let left = self.map().len();
        if left == 0 {
            info!("no container left: shutting down");
            self.events.flush(FLUSH_EVENTS).await;
            self.audit.finish().await;
            self.exit.signal();
        } else {
            info!(
                left,
                "shutdown requested while containers remain: staying up"
            );
        }
        Ok(api::Empty::new())
    }
}
