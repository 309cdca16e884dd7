//! Several containers at once: a CRI-style pod (two containers, one shim, one sandbox) and ten
//! containers started in parallel.

use std::thread;
use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::host::{processes, Process};
use safehouse_integration::TestEnv;

const TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Two containers annotated as CRI does (sandbox + container of the same sandbox id) are served
/// by one shim process and, under gVisor, one runsc sandbox process.
pub fn pod_shares_shim_and_sandbox(env: &TestEnv) -> Result<()> {
    let pod = env.id("pod");
    let app = env.id("app");
    env.scenario(&[&app, &pod], || {
        let sandbox_annotations = [
            "--annotation".to_string(),
            format!("{TYPE}=sandbox"),
            "--annotation".to_string(),
            format!("{SANDBOX_ID}={pod}"),
        ];
        let container_annotations = [
            "--annotation".to_string(),
            format!("{TYPE}=container"),
            "--annotation".to_string(),
            format!("{SANDBOX_ID}={pod}"),
        ];
        let flags = |a: &[String]| -> Vec<String> {
            let mut f = vec!["-d".to_string()];
            f.extend_from_slice(a);
            f
        };
        let start = |flags: Vec<String>, id: &str, cmd: &[&str]| -> Result<()> {
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            env.ctr_run(&flags, id, cmd)?.ok()?;
            env.ctr
                .wait_status(id, "RUNNING", Duration::from_secs(30))?;
            Ok(())
        };
        start(flags(&sandbox_annotations), &pod, &["sleep", "1000"])?;
        start(flags(&container_annotations), &app, &["sleep", "1000"])?;

        let exec = env.ctr_exec(&app, "in-app", &["echo", "app-exec"])?.ok()?;
        ensure!(exec.stdout == "app-exec\n", "{}", exec.describe());

        let procs = processes();
        let mentions = |p: &Process| p.argv.iter().any(|a| a.contains(&pod) || a.contains(&app));
        let shims: Vec<&Process> = procs
            .iter()
            .filter(|p| p.program_name() == env.runtime.shim_name() && mentions(p))
            .collect();
        ensure!(
            shims.len() == 1,
            "expected one shim for the pod, found {}:\n{}",
            shims.len(),
            describe(&shims)
        );
        if env.runtime.is_gvisor() {
            let sandboxes: Vec<&Process> = procs
                .iter()
                .filter(|p| p.program_name() == "runsc-sandbox" && mentions(p))
                .collect();
            ensure!(
                sandboxes.len() == 1,
                "expected one runsc sandbox for the pod, found {}:\n{}",
                sandboxes.len(),
                describe(&sandboxes)
            );
        }
        for id in [&app, &pod] {
            env.ctr.run(&["task", "kill", "-s", "SIGKILL", id])?.ok()?;
            env.ctr
                .wait_status(id, "STOPPED", Duration::from_secs(30))?;
            env.ctr.run(&["task", "delete", id])?.ok()?;
            env.ctr.run(&["containers", "rm", id])?.ok()?;
            if id == &app {
                // Removing a container of the pod leaves the pod (its shim, its sandbox) alive.
                let still = env
                    .ctr_exec(&pod, "after-app", &["echo", "pod-alive"])?
                    .ok()?;
                ensure!(still.stdout == "pod-alive\n", "{}", still.describe());
            }
        }
        Ok(())
    })
}

/// Ten `ctr run --rm` at once: all exit 0 with their own output, and nothing leaks.
pub fn ten_in_parallel(env: &TestEnv) -> Result<()> {
    let ids: Vec<String> = (0..10).map(|i| env.id(&format!("par{i}"))).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    env.scenario(&id_refs, || {
        let results: Vec<Result<()>> = thread::scope(|s| {
            let handles: Vec<_> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    s.spawn(move || -> Result<()> {
                        let script = format!("echo ok-{i}");
                        let out = env.ctr_run(&["--rm"], id, &["sh", "-c", &script])?;
                        ensure!(out.success(), "{id}: {}", out.describe());
                        ensure!(
                            out.stdout == format!("ok-{i}\n"),
                            "{id}: {}",
                            out.describe()
                        );
                        Ok(())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
                })
                .collect()
        });
        let failures: Vec<String> = results
            .into_iter()
            .filter_map(|r| r.err().map(|e| format!("{e:#}")))
            .collect();
        ensure!(
            failures.is_empty(),
            "{} of 10 failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        Ok(())
    })
}

fn describe(procs: &[&Process]) -> String {
    procs
        .iter()
        .map(|p| format!("  {} {}", p.pid, p.command_line()))
        .collect::<Vec<_>>()
        .join("\n")
}
