//! The shim process itself dies (SIGKILL) while its container runs: containerd's clean-up (the
//! shim binary's `delete` action) must remove the sandbox, and the container can be removed.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::command::wait_for;
use safehouse_integration::host::{is_alive, kill_pid, processes};
use safehouse_integration::TestEnv;

/// SIGKILL the shim mid-run, then `ctr task delete` / `ctr containers rm` leave nothing behind.
pub fn shim_sigkill_then_cleanup(env: &TestEnv) -> Result<()> {
    let id = env.id("shimkill");
    env.scenario(&[&id], || {
        env.ctr_run(&["-d"], &id, &["sleep", "1000"])?.ok()?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;
        let shims: Vec<u32> = processes()
            .into_iter()
            .filter(|p| p.program_name() == env.runtime.shim_name() && p.has_flag_value("-id", &id))
            .map(|p| p.pid)
            .collect();
        ensure!(
            shims.len() == 1,
            "expected one shim with -id {id}, found pids {shims:?}"
        );
        kill_pid(shims[0]);
        wait_for("the shim to die", Duration::from_secs(10), || {
            Ok((!is_alive(shims[0])).then_some(()))
        })?;
        // containerd notices the dead shim and cleans up (asynchronously).
        wait_for(
            "containerd to drop the task",
            Duration::from_secs(30),
            || {
                Ok(env
                    .ctr
                    .task(&id)?
                    .map_or(Some(()), |t| (t.status == "STOPPED").then_some(())))
            },
        )?;
        if env.ctr.task(&id)?.is_some() {
            let out = env.ctr.run(&["task", "delete", &id])?;
            ensure!(
                out.success() || out.stderr.contains("not found"),
                "ctr task delete after the shim died: {}",
                out.describe()
            );
        }
        env.ctr.run(&["containers", "rm", &id])?.ok()?;
        // ctr removes the fifos of `ctr run -d` only in `ctr task delete`, which has no task
        // left to load here: they are ctr's, not the runtime's, so remove them as a user would.
        remove_ctr_fifos(env, &id)?;
        Ok(())
    })
}

/// Removes `<fifo-dir>/<random>/<id>-{stdin,stdout,stderr}` and the emptied directory.
fn remove_ctr_fifos(env: &TestEnv, id: &str) -> Result<()> {
    for dir in std::fs::read_dir(env.containerd.fifo_dir())?.flatten() {
        let mut mine = false;
        for entry in std::fs::read_dir(dir.path())?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(id) {
                std::fs::remove_file(entry.path())?;
                mine = true;
            }
        }
        if mine {
            let _ = std::fs::remove_dir(dir.path());
        }
    }
    Ok(())
}
