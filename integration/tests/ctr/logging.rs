//! The shim's own log: it reaches containerd's log (the shim's stderr goes there), and every
//! line names the container it is about.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::command::wait_for;
use safehouse_integration::env::LEAK_GRACE;
use safehouse_integration::suite::only_for;
use safehouse_integration::{RuntimeKind, TestEnv};

/// After a container ran, containerd's log holds the shim's lines for it, at debug level
/// (`-debug`), and no shim line (anything not written by containerd itself, whose lines start
/// with `time="`) lacks a container id of this run.
pub fn shim_log_lines_name_their_container(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let id = env.id("logging");
    env.scenario(&[&id], || {
        env.ctr_run(&["--rm"], &id, &["true"])?.ok()?;
        // The shim has exited once nothing of the container is left; containerd copies its
        // log asynchronously, so wait for the container's lines too.
        env.leaks.assert_clean(&[&id], LEAK_GRACE)?;
        wait_for("the shim's log lines", Duration::from_secs(5), || {
            let text = std::fs::read_to_string(env.containerd.log_path())?;
            Ok(text.contains(id.as_str()).then_some(()))
        })?;
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(env.containerd.log_path())?;
        let shim_lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("time=\""))
            .collect();
        ensure!(
            shim_lines.iter().any(|l| l.contains(&id)),
            "no shim log line mentions {id} in {}",
            env.containerd.log_path().display()
        );
        // containerd runs at debug level here, so it starts shims with `-debug`.
        ensure!(
            shim_lines
                .iter()
                .any(|l| l.contains(&id) && l.contains("DEBUG")),
            "containerd logs at debug level but the shim wrote no DEBUG line for {id}"
        );
        let run_ids = format!("sfh{}x", std::process::id());
        let anonymous: Vec<&str> = shim_lines
            .iter()
            .copied()
            .filter(|l| !l.contains(&run_ids))
            .collect();
        ensure!(
            anonymous.is_empty(),
            "{} shim log lines name no container, e.g.:\n{}",
            anonymous.len(),
            anonymous
                .iter()
                .take(8)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    })
}
