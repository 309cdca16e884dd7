//! A CRI v1 client, as kubelet talks to containerd: gRPC (tonic, the `k8s-cri` bindings) over
//! containerd's unix socket. Calls are blocking for the scenarios (each on a small tokio
//! runtime owned by the client) and every call has a deadline, so a hang fails the test
//! instead of stalling it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// The deadline of an ordinary CRI call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected CRI client.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

/// Output of ExecSync.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    /// The command's stdout.
    pub stdout: String,
    /// The command's stderr.
    pub stderr: String,
    /// Its exit code.
    pub exit_code: i32,
}

impl CriClient {
    /// Connects to containerd's gRPC socket at `socket`.
    pub fn connect(socket: &Path) -> Result<CriClient> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("cannot build the CRI client's tokio runtime")?;
        let path: PathBuf = socket.to_path_buf();
        let channel = runtime
            .block_on(async move {
                Endpoint::try_from("http://[::]:50051")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
            })
            .with_context(|| format!("cannot connect to CRI at {}", socket.display()))?;
        Ok(CriClient { runtime, channel })
    }

    /// Runs one RuntimeService call with `timeout`; the gRPC status is kept as the error.
    pub fn runtime_call<R, F, Fut>(&self, timeout: Duration, call: F) -> Result<R, tonic::Status>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let client = RuntimeServiceClient::new(self.channel.clone());
        self.block(timeout, call(client))
    }

    /// Runs one ImageService call with the default deadline.
    pub fn image_call<R, F, Fut>(&self, call: F) -> Result<R, tonic::Status>
    where
        F: FnOnce(ImageServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let client = ImageServiceClient::new(self.channel.clone());
        self.block(CALL_TIMEOUT, call(client))
    }

    fn block<R>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    ) -> Result<R, tonic::Status> {
        self.runtime.block_on(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                    "no answer within {timeout:?} (the test's deadline)"
                ))),
            }
        })
    }

    /// RunPodSandbox with `handler`; returns the pod sandbox id.
    pub fn run_pod(&self, config: &cri::PodSandboxConfig, handler: &str) -> Result<String> {
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let name = pod_name(config);
        self.runtime_call(
            CALL_TIMEOUT,
            |mut c| async move { c.run_pod_sandbox(req).await },
        )
        .map(|r| r.pod_sandbox_id)
        .map_err(|s| status_error(s, &format!("RunPodSandbox {name} ({handler})")))
    }

    /// CreateContainer + StartContainer; returns the container id.
    pub fn create_and_start(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        container: &cri::ContainerConfig,
    ) -> Result<String> {
        let id = self.create_container(pod_id, pod, container)?;
        self.start_container(&id)?;
        Ok(id)
    }

    /// CreateContainer; returns the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        pod: &cri::PodSandboxConfig,
        container: &cri::ContainerConfig,
    ) -> Result<String> {
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(container.clone()),
            sandbox_config: Some(pod.clone()),
        };
        let name = container
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        self.runtime_call(CALL_TIMEOUT, |mut c| async move {
            c.create_container(req).await
        })
        .map(|r| r.container_id)
        .map_err(|s| status_error(s, &format!("CreateContainer {name} in pod {pod_id}")))
    }

    /// StartContainer.
    pub fn start_container(&self, id: &str) -> Result<()> {
        let req = cri::StartContainerRequest {
            container_id: id.to_string(),
        };
        self.runtime_call(
            CALL_TIMEOUT,
            |mut c| async move { c.start_container(req).await },
        )
        .map(|_| ())
        .map_err(|s| status_error(s, &format!("StartContainer {id}")))
    }

    /// StopContainer with a grace period of `grace_secs`.
    pub fn stop_container(&self, id: &str, grace_secs: i64) -> Result<()> {
        let req = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout: grace_secs,
        };
        let deadline = CALL_TIMEOUT + Duration::from_secs(grace_secs.max(0) as u64);
        self.runtime_call(deadline, |mut c| async move { c.stop_container(req).await })
            .map(|_| ())
            .map_err(|s| status_error(s, &format!("StopContainer {id}")))
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        let req = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.runtime_call(CALL_TIMEOUT, |mut c| async move {
            c.remove_container(req).await
        })
        .map(|_| ())
        .map_err(|s| status_error(s, &format!("RemoveContainer {id}")))
    }

    /// ContainerStatus (verbose: with containerd's info JSON).
    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatusResponse> {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: true,
        };
        self.runtime_call(CALL_TIMEOUT, |mut c| async move {
            c.container_status(req).await
        })
        .map_err(|s| status_error(s, &format!("ContainerStatus {id}")))
    }

    /// PodSandboxStatus (verbose: with containerd's info JSON).
    pub fn pod_status(&self, id: &str) -> Result<cri::PodSandboxStatusResponse> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        self.runtime_call(CALL_TIMEOUT, |mut c| async move {
            c.pod_sandbox_status(req).await
        })
        .map_err(|s| status_error(s, &format!("PodSandboxStatus {id}")))
    }

    /// StopPodSandbox then RemovePodSandbox. Both are idempotent, so each is tried once more
    /// when the connection itself failed (as kubelet retries), never on an answer from CRI.
    pub fn stop_and_remove_pod(&self, id: &str) -> Result<()> {
        let stop = || {
            let req = cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            };
            self.runtime_call(CALL_TIMEOUT, |mut c| async move {
                c.stop_pod_sandbox(req).await
            })
        };
        retry_on_transport(stop).map_err(|s| status_error(s, &format!("StopPodSandbox {id}")))?;
        let remove = || {
            let req = cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            };
            self.runtime_call(CALL_TIMEOUT, |mut c| async move {
                c.remove_pod_sandbox(req).await
            })
        };
        retry_on_transport(remove)
            .map_err(|s| status_error(s, &format!("RemovePodSandbox {id}")))?;
        Ok(())
    }

    /// ExecSync with a timeout in seconds (0: none).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout_secs: i64) -> Result<ExecOutput> {
        let req = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        let deadline = CALL_TIMEOUT + Duration::from_secs(timeout_secs.max(0) as u64);
        self.runtime_call(deadline, |mut c| async move { c.exec_sync(req).await })
            .map(|r| ExecOutput {
                stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
                exit_code: r.exit_code,
            })
            .map_err(|s| status_error(s, &format!("ExecSync {cmd:?} in {id}")))
    }

    /// ContainerStats.
    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let req = cri::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        self.runtime_call(
            CALL_TIMEOUT,
            |mut c| async move { c.container_stats(req).await },
        )
        .map_err(|s| status_error(s, &format!("ContainerStats {id}")))?
        .stats
        .with_context(|| format!("ContainerStats {id}: no stats in the answer"))
    }

    /// PodSandboxStats.
    pub fn pod_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let req = cri::PodSandboxStatsRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.runtime_call(CALL_TIMEOUT, |mut c| async move {
            c.pod_sandbox_stats(req).await
        })
        .map_err(|s| status_error(s, &format!("PodSandboxStats {id}")))?
        .stats
        .with_context(|| format!("PodSandboxStats {id}: no stats in the answer"))
    }

    /// UpdateContainerResources.
    pub fn update_resources(&self, id: &str, linux: cri::LinuxContainerResources) -> Result<()> {
        let req = cri::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(linux),
            ..Default::default()
        };
        self.runtime_call(CALL_TIMEOUT, |mut c| async move {
            c.update_container_resources(req).await
        })
        .map(|_| ())
        .map_err(|s| status_error(s, &format!("UpdateContainerResources {id}")))
    }

    /// The ids of all pod sandboxes CRI knows.
    pub fn pod_ids(&self) -> Result<Vec<String>> {
        let req = cri::ListPodSandboxRequest::default();
        self.runtime_call(CALL_TIMEOUT, |mut c| async move {
            c.list_pod_sandbox(req).await
        })
        .map(|r| r.items.into_iter().map(|p| p.id).collect())
        .map_err(|s| status_error(s, "ListPodSandbox"))
    }

    /// The ids of all containers CRI knows.
    pub fn container_ids(&self) -> Result<Vec<String>> {
        let req = cri::ListContainersRequest::default();
        self.runtime_call(
            CALL_TIMEOUT,
            |mut c| async move { c.list_containers(req).await },
        )
        .map(|r| r.containers.into_iter().map(|c| c.id).collect())
        .map_err(|s| status_error(s, "ListContainers"))
    }

    /// True when CRI's image service knows `image`.
    pub fn has_image(&self, image: &str) -> Result<bool> {
        let req = cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        };
        self.image_call(|mut c| async move { c.image_status(req).await })
            .map(|r| r.image.is_some())
            .map_err(|s| status_error(s, &format!("ImageStatus {image}")))
    }
}

/// Runs an idempotent call again once if the transport (not CRI) failed.
fn retry_on_transport<R>(
    mut call: impl FnMut() -> Result<R, tonic::Status>,
) -> Result<R, tonic::Status> {
    match call() {
        Err(s) if s.code() == tonic::Code::Unknown && s.message().contains("transport error") => {
            std::thread::sleep(Duration::from_millis(200));
            call()
        }
        other => other,
    }
}

fn pod_name(config: &cri::PodSandboxConfig) -> String {
    config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

/// A gRPC status as an error that names the call and keeps the status code and message.
pub fn status_error(status: tonic::Status, call: &str) -> anyhow::Error {
    anyhow::anyhow!("{call}: {:?}: {}", status.code(), status.message().trim())
}
