//! Container lifecycle through CRI: ExecSync, the CRI log file, exit codes and reasons in
//! ContainerStatus, and StopContainer's grace period.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_cri::v1 as cri;
use safehouse_integration::command::wait_for;
use safehouse_integration::cri_env::CriEnv;

use crate::pods::HANDLER;

/// ExecSync returns stdout, stderr and the exit code apart; a command outliving its timeout
/// fails the call within the timeout (plus slack) and does not keep running in the pod.
pub fn exec_sync(env: &CriEnv) -> Result<()> {
    let name = env.unique("exec");
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let id = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("app", &["sleep", "1000"]),
        )?;
        let out = env.cri.exec_sync(
            &id,
            &["sh", "-c", "echo to-out; echo to-err >&2; exit 3"],
            10,
        )?;
        ensure!(
            out.stdout == "to-out\n" && out.stderr == "to-err\n" && out.exit_code == 3,
            "ExecSync output: {out:?}"
        );

        let started = Instant::now();
        let timed_out = env.cri.exec_sync(&id, &["sleep", "77"], 2);
        let took = started.elapsed();
        let err = match timed_out {
            Ok(out) => anyhow::bail!("ExecSync of sleep 77 with a 2 s timeout returned {out:?}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.to_lowercase().contains("timeout") || err.contains("DeadlineExceeded"),
            "ExecSync timeout error does not say so: {err}"
        );
        ensure!(
            took < Duration::from_secs(20),
            "ExecSync with a 2 s timeout took {took:?}"
        );
        // The timed-out command is killed, not left running in the sandbox.
        wait_for(
            "the timed-out exec to be gone",
            Duration::from_secs(15),
            || {
                let ps = env.cri.exec_sync(&id, &["ps"], 10)?;
                Ok((!ps.stdout.contains("sleep 77")).then_some(()))
            },
        )?;
        Ok(vec![id])
    })
}

/// What a container writes lands in the CRI log file containerd writes for it, in the CRI
/// format (`TIMESTAMP STREAM TAG LINE`), each line tagged with its stream.
pub fn container_log_file(env: &CriEnv) -> Result<()> {
    let name = env.unique("logs");
    let pod = env.pod_config(&name, &[]);
    let log_dir = std::path::PathBuf::from(&pod.log_directory);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let id = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config(
                "writer",
                &[
                    "sh",
                    "-c",
                    "echo line-on-stdout; echo line-on-stderr >&2; echo second-stdout-line",
                ],
            ),
        )?;
        let status = env.wait_exited(&id, Duration::from_secs(30))?;
        ensure!(status.exit_code == 0, "writer exited {}", status.exit_code);
        let path = log_dir.join("writer.log");
        ensure!(
            status.log_path == path.display().to_string(),
            "ContainerStatus log path {:?}, expected {}",
            status.log_path,
            path.display()
        );
        let text = wait_for("the log lines", Duration::from_secs(10), || {
            let text = fs::read_to_string(&path).unwrap_or_default();
            Ok(text.contains("second-stdout-line").then_some(text))
        })
        .with_context(|| format!("log file {}", path.display()))?;
        let mut lines = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.splitn(4, ' ').collect();
            ensure!(fields.len() == 4, "not a CRI log line: {line:?}");
            ensure!(
                fields[0].contains('T') && fields[2] == "F",
                "not a CRI log line (timestamp, stream, F): {line:?}"
            );
            lines.push((fields[1].to_string(), fields[3].to_string()));
        }
        for (stream, want) in [
            ("stdout", "line-on-stdout"),
            ("stderr", "line-on-stderr"),
            ("stdout", "second-stdout-line"),
        ] {
            ensure!(
                lines.iter().any(|(s, l)| s == stream && l == want),
                "{want:?} on {stream} missing from the CRI log:\n{text}"
            );
        }
        Ok(vec![id])
    })
}

/// ContainerStatus after exits: 0 is Completed, 7 is Error with code 7, a container killed by
/// a signal reports 128+signal.
pub fn exit_code_and_reason(env: &CriEnv) -> Result<()> {
    let name = env.unique("exits");
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let ok = env
            .cri
            .create_and_start(pod_id, &pod, &env.container_config("ok", &["true"]))?;
        let seven = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("seven", &["sh", "-c", "exit 7"]),
        )?;
        let killed = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("killed", &["sh", "-c", "kill -9 $$"]),
        )?;
        let ids = vec![ok.clone(), seven.clone(), killed.clone()];
        for (id, code, reason) in [
            (&ok, 0, "Completed"),
            (&seven, 7, "Error"),
            (&killed, 137, "Error"),
        ] {
            let status = env.wait_exited(id, Duration::from_secs(30))?;
            ensure!(
                status.exit_code == code && status.reason == reason,
                "container {}: exit {} reason {:?}, expected {code} {reason}",
                status
                    .metadata
                    .as_ref()
                    .map(|m| m.name.as_str())
                    .unwrap_or("?"),
                status.exit_code,
                status.reason
            );
            ensure!(
                status.finished_at >= status.started_at && status.started_at > 0,
                "container times: started {} finished {}",
                status.started_at,
                status.finished_at
            );
        }
        Ok(ids)
    })
}

/// StopContainer with a grace period: a container that handles SIGTERM exits at once with
/// its own code; one that ignores SIGTERM is SIGKILLed when the grace period ends, not before.
pub fn stop_grace_period(env: &CriEnv) -> Result<()> {
    let name = env.unique("stop");
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let polite = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config(
                "polite",
                &["sh", "-c", "trap 'echo got-term; exit 0' TERM; touch /tmp/ready; while :; do sleep 0.2; done"],
            ),
        )?;
        let stubborn = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config(
                "stubborn",
                &["sh", "-c", "trap '' TERM; touch /tmp/ready; while :; do sleep 0.2; done"],
            ),
        )?;
        for id in [&polite, &stubborn] {
            wait_for("the trap to be set", Duration::from_secs(20), || {
                Ok((env.cri.exec_sync(id, &["test", "-e", "/tmp/ready"], 10)?.exit_code == 0)
                    .then_some(()))
            })?;
        }

        let started = Instant::now();
        env.cri.stop_container(&polite, 30)?;
        let took = started.elapsed();
        let status = env.cri.container_status(&polite)?.status.context("no status")?;
        ensure!(
            status.state == cri::ContainerState::ContainerExited as i32 && status.exit_code == 0,
            "polite container after StopContainer: state {} exit {}",
            status.state,
            status.exit_code
        );
        ensure!(
            took < Duration::from_secs(10),
            "a container that exits on SIGTERM took {took:?} to stop (grace 30 s)"
        );

        let grace = 3;
        let started = Instant::now();
        env.cri.stop_container(&stubborn, grace)?;
        let took = started.elapsed();
        let status = env.cri.container_status(&stubborn)?.status.context("no status")?;
        ensure!(
            status.state == cri::ContainerState::ContainerExited as i32 && status.exit_code == 137,
            "stubborn container after StopContainer: state {} exit {} (expected 137, SIGKILL)",
            status.state,
            status.exit_code
        );
        ensure!(
            took >= Duration::from_secs(grace as u64) && took < Duration::from_secs(grace as u64 + 10),
            "a container ignoring SIGTERM stopped after {took:?}, grace period {grace} s"
        );
        Ok(vec![polite, stubborn])
    })
}
