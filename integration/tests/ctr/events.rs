//! Task events: what `ctr events` shows for a container's life must include every event
//! containerd expects from a shim.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::command::wait_for;
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
        let missing_now = |text: &str| -> Vec<&str> {
            expected
                .iter()
                .copied()
                .filter(|topic| {
                    !text
                        .lines()
                        .any(|l| l.contains(&id) && l.split_whitespace().any(|w| w == *topic))
                })
                .collect()
        };
        let seen = wait_for("all task events", Duration::from_secs(5), || {
            let text = events.stdout_so_far();
            Ok(missing_now(&text).is_empty().then_some(()))
        });
        let text = events.stdout_so_far();
        drop(events);
        let missing = missing_now(&text);
        ensure!(
            seen.is_ok(),
            "events missing for {id}: {missing:?}; ctr events printed:\n{}",
            text.lines()
                .filter(|l| l.contains(&id))
                .collect::<Vec<_>>()
                .join("\n")
        );
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
        Ok(())
    })
}
