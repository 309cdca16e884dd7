//! Task events: what `ctr events` shows for a container's life must include every event
//! containerd expects from a shim.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::ctr::expect_task_events;
use safehouse_integration::TestEnv;

/// Create, start, exec added/started, paused, resumed, exit, delete: all published.
pub fn task_events_published(env: &TestEnv) -> Result<()> {
    let id = env.id("events");
    env.scenario(&[&id], || {
        let events = env.ctr.subscribe_events()?;
        env.ctr_run(&["-d"], &id, &["sleep", "1000"])?.ok()?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;
        env.ctr_exec(&id, "ev-exec", &["true"])?.ok()?;
        env.ctr.run(&["task", "pause", &id])?.ok()?;
        env.ctr
            .wait_status(&id, "PAUSED", Duration::from_secs(10))?;
        env.ctr.run(&["task", "resume", &id])?.ok()?;
        env.ctr.run(&["task", "kill", "-s", "SIGKILL", &id])?.ok()?;
        env.ctr
            .wait_status(&id, "STOPPED", Duration::from_secs(30))?;
        env.ctr.run(&["task", "delete", &id])?.ok()?;
        env.ctr.run(&["containers", "rm", &id])?.ok()?;

        let expected = [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete",
        ];
        let text = expect_task_events(events, &id, &expected)?;
        // The init process's exit event (its exec id is the container id) carries the status.
        let init = format!("\"id\":\"{id}\"");
        let exit_line = text
            .lines()
            .find(|l| l.contains("/tasks/exit") && l.contains(&init))
            .unwrap_or_default();
        ensure!(
            exit_line.contains("\"exit_status\":137"),
            "TaskExit should carry exit_status 137: {exit_line}"
        );
        // In the order containerd relies on: the init's exit before the delete, the create
        // before the start.
        let at = |topic: &str, extra: &str| {
            text.lines().position(|l| {
                l.contains(&id) && l.contains(extra) && l.split_whitespace().any(|w| w == topic)
            })
        };
        let (exit, delete) = (at("/tasks/exit", &init), at("/tasks/delete", ""));
        let (create, start) = (at("/tasks/create", ""), at("/tasks/start", ""));
        ensure!(
            matches!((exit, delete, create, start),
                (Some(e), Some(d), Some(c), Some(s)) if e < d && c < s),
            "events out of order (exit {exit:?}, delete {delete:?}, create {create:?}, start {start:?}):\n{text}"
        );
        Ok(())
    })
}
