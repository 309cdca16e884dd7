//! Out of memory: a container over its memory limit is killed, `ctr run` reports it, and
//! TaskOOM is published.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::command::wait_for;
use safehouse_integration::TestEnv;

/// 64 MiB limit, 400 MB allocated: killed (137), and `/tasks/oom` for the container.
pub fn oom_kill_is_reported(env: &TestEnv) -> Result<()> {
    let id = env.id("oom");
    env.scenario(&[&id], || {
        let events = env.ctr.subscribe_events()?;
        // The shell (the container's init) reads 400 MB into a variable: it is the process the
        // OOM killer picks, so the container itself dies.
        let out = env.ctr_run(
            &["--rm", "--memory-limit", "67108864"],
            &id,
            &[
                "sh",
                "-c",
                "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived",
            ],
        )?;
        ensure!(!out.timed_out, "the OOM run hung: {}", out.describe());
        ensure!(
            out.code == Some(137),
            "expected the OOM kill to end the container with 137: {}",
            out.describe()
        );
        let seen = wait_for("a /tasks/oom event", Duration::from_secs(5), || {
            let text = events.stdout_so_far();
            Ok(text
                .lines()
                .any(|l| l.contains("/tasks/oom") && l.contains(&id))
                .then_some(()))
        });
        let text = events.stdout_so_far();
        drop(events);
        ensure!(
            seen.is_ok(),
            "no /tasks/oom event for {id}; events:\n{}",
            text.lines()
                .filter(|l| l.contains(&id))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    })
}
