//! Out of memory: a container over its memory limit is killed, `ctr run` reports it, and
//! TaskOOM is published.

use anyhow::{ensure, Result};
use safehouse_integration::ctr::expect_task_events;
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
        expect_task_events(events, &id, &["/tasks/oom"])?;
        Ok(())
    })
}
