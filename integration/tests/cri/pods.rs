//! A pod of two containers: one runsc sandbox and one shim for the whole pod, and the
//! containers reach each other over the pod's loopback.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::command::wait_for;
use safehouse_integration::cri_env::CriEnv;
use safehouse_integration::host::{processes, Process};
use safehouse_integration::runtime::SAFEHOUSE_SHIM_NAME;

/// The runtime handler under test.
pub const HANDLER: &str = "safehouse";

/// RunPodSandbox with the `safehouse` handler, two containers: counted, one shim process and
/// one runsc sandbox process serve all three; the second container fetches a page the first
/// serves on 127.0.0.1.
pub fn two_containers_one_sandbox(env: &CriEnv) -> Result<()> {
    let name = env.unique("two");
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let server = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config(
                "server",
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo served-by-server > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www",
                ],
            ),
        )?;
        let client = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("client", &["sleep", "1000"]),
        )?;
        let ids = vec![server.clone(), client.clone()];

        let mut last = String::new();
        let fetched = wait_for("the server's page over loopback", Duration::from_secs(20), || {
            let out = env
                .cri
                .exec_sync(&client, &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"], 10)?;
            last = format!("{out:?}");
            Ok((out.exit_code == 0).then_some(out.stdout))
        });
        ensure!(
            fetched.as_deref().map(str::trim).ok() == Some("served-by-server"),
            "client could not fetch the server's page over the pod loopback: {fetched:?}; last exec: {last}"
        );

        let procs = processes();
        let mentions = |p: &Process| {
            p.argv
                .iter()
                .any(|a| a.contains(pod_id) || ids.iter().any(|id| a.contains(id.as_str())))
        };
        let shims: Vec<&Process> = procs
            .iter()
            .filter(|p| p.program_name() == SAFEHOUSE_SHIM_NAME && mentions(p))
            .collect();
        ensure!(
            shims.len() == 1,
            "expected one shim process for the pod, found {}:\n{}",
            shims.len(),
            describe(&shims)
        );
        let sandboxes: Vec<&Process> = procs
            .iter()
            .filter(|p| p.program_name() == "runsc-sandbox" && mentions(p))
            .collect();
        ensure!(
            sandboxes.len() == 1,
            "expected one runsc sandbox process for the pod, found {}:\n{}",
            sandboxes.len(),
            describe(&sandboxes)
        );
        Ok(ids)
    })
}

/// One line per process.
pub fn describe(procs: &[&Process]) -> String {
    procs
        .iter()
        .map(|p| format!("  {} {}", p.pid, p.command_line()))
        .collect::<Vec<_>>()
        .join("\n")
}
