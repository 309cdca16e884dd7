//! What holds for one container of a pod (issue #14): its own memory limit ends it alone,
//! reported OOMKilled; and the files containerd's CRI made for the pod's sandbox pass under a
//! containerd root that is not the default one, while a host path imitating them does not.

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_cri::v1 as cri;
use safehouse_integration::command::wait_for;
use safehouse_integration::cri_env::CriEnv;

use crate::pods::HANDLER;

const MIB: i64 = 1024 * 1024;

/// Two containers in a pod; one holds 200 MiB against its 64 MiB limit (dd blocks writing into
/// a pipe nobody reads, its buffer filled). The host cgroup is the pod's and has no limit here,
/// so only the shim's watch can end it: OOMKilled with exit 137, while the other container
/// keeps running and answers an exec.
pub fn member_past_its_memory_limit(env: &CriEnv) -> Result<()> {
    let name = env.unique("memlimit");
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let steady = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("steady", &["sleep", "1000"]),
        )?;
        let mut config = env.container_config(
            "hog",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero bs=200M count=1 | sleep 1000",
            ],
        );
        config.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 * MIB,
                ..Default::default()
            }),
            ..Default::default()
        });
        let hog = env.cri.create_and_start(pod_id, &pod, &config)?;
        let ids = vec![steady.clone(), hog.clone()];
        let status = env.wait_exited(&hog, Duration::from_secs(60))?;
        ensure!(
            status.reason == "OOMKilled" && status.exit_code == 137,
            "the container past its limit: expected exit 137 with reason OOMKilled, got exit {} reason {:?} message {:?}",
            status.exit_code,
            status.reason,
            status.message
        );
        // The audit log says why, with the numbers the watch saw.
        let audit = env.containerd.audit_path();
        let oom = wait_for("the oom audit event", Duration::from_secs(10), || {
            Ok(safehouse_integration::lab::audit_lines(&audit)
                .into_iter()
                .find(|e| e["action"] == "oom" && e["container_id"] == hog.as_str()))
        })
        .with_context(|| format!("no oom audit event for {hog} in {}", audit.display()))?;
        let usage = oom["detail"]["usage_bytes"].as_i64().unwrap_or(0);
        ensure!(
            oom["detail"]["enforced_by"] == "shim"
                && oom["detail"]["limit_bytes"] == 64 * MIB
                && usage > 64 * MIB,
            "the oom audit event does not show the limit and a usage past it: {oom}"
        );
        let other = env
            .cri
            .container_status(&steady)?
            .status
            .context("ContainerStatus of the other container: no status")?;
        ensure!(
            other.state == cri::ContainerState::ContainerRunning as i32,
            "the other container of the pod did not keep running: {other:?}"
        );
        let out = env.cri.exec_sync(&steady, &["echo", "alive"], 10)?;
        ensure!(
            out.exit_code == 0 && out.stdout == "alive\n",
            "exec in the other container after the OOM kill: {out:?}"
        );
        Ok(ids)
    })
}

/// The harness's containerd has its root under a temporary directory and the shim's config
/// lists no `cri_sources`: a container still gets the `hostname`, `hosts` and `resolv.conf`
/// CRI made for its pod. A host path bound at /etc/hosts that imitates them is refused: one
/// in the shape of another sandbox's file, and a symlink in the shape of this sandbox's file (refused at
/// StartContainer, where CRI makes the task).
pub fn containerd_files_under_a_custom_root(env: &CriEnv) -> Result<()> {
    let name = env.unique("crifiles");
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let reader = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("reader", &["sleep", "1000"]),
        )?;
        let out = env.cri.exec_sync(
            &reader,
            &[
                "sh",
                "-c",
                "cat /etc/hostname && grep -c . /etc/hosts && test -e /etc/resolv.conf && echo ok",
            ],
            10,
        )?;
        ensure!(
            out.exit_code == 0 && out.stdout.starts_with("pod\n") && out.stdout.ends_with("ok\n"),
            "the CRI-made files inside the container: {out:?}"
        );

        let fake_root = env.containerd.work_dir().join(&name);
        let sandboxes = fake_root
            .join("io.containerd.grpc.v1.cri")
            .join("sandboxes");
        let other = sandboxes.join("0123456789abcdef").join("hosts");
        let secret = fake_root.join("node-secret");
        let link = sandboxes.join(pod_id).join("hosts");
        fs::create_dir_all(other.parent().context("parent")?)?;
        fs::create_dir_all(link.parent().context("parent")?)?;
        fs::write(&other, "10.0.0.1 imitation\n")?;
        fs::write(&secret, "node secret\n")?;
        std::os::unix::fs::symlink(&secret, &link)?;

        let mut ids = vec![reader];
        for (n, (label, source)) in [("another sandbox's file", &other), ("a symlink", &link)]
            .into_iter()
            .enumerate()
        {
            let mut config = env.container_config(&format!("imitation{n}"), &["sleep", "1000"]);
            config.mounts = vec![cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: source.display().to_string(),
                readonly: true,
                ..Default::default()
            }];
            // CRI makes the task (and the shim confines the spec) at StartContainer.
            let id = env.cri.create_container(pod_id, &pod, &config)?;
            ids.push(id.clone());
            match env.cri.start_container(&id) {
                Ok(()) => anyhow::bail!(
                    "a host path at /etc/hosts imitating CRI's file ({label}, {}) was accepted",
                    source.display()
                ),
                Err(e) => {
                    let text = format!("{e:#}");
                    ensure!(
                        text.contains("/etc/hosts") && text.contains("refused"),
                        "{label}: StartContainer failed, but not with the refusal: {text}"
                    );
                }
            }
        }
        let _ = fs::remove_dir_all(&fake_root);
        Ok(ids)
    })
}
