//! Controlling a running task: pause/resume, metrics, ps.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use safehouse_integration::{RuntimeKind, TestEnv};

const START: Duration = Duration::from_secs(30);

/// Starts `sh -c SCRIPT` detached and waits until it runs.
fn start_detached(env: &TestEnv, id: &str, script: &str) -> Result<()> {
    env.ctr_run(&["-d"], id, &["sh", "-c", script])?.ok()?;
    env.ctr.wait_status(id, "RUNNING", START)?;
    Ok(())
}

/// SIGKILL, delete and remove, asserting each step.
fn kill_and_remove(env: &TestEnv, id: &str) -> Result<()> {
    env.ctr.run(&["task", "kill", "-s", "SIGKILL", id])?.ok()?;
    env.ctr.wait_status(id, "STOPPED", START)?;
    env.ctr.run(&["task", "delete", id])?.ok()?;
    env.ctr.run(&["containers", "rm", id])?.ok()?;
    Ok(())
}

/// Pause shows PAUSED and freezes the workload; resume shows RUNNING and it continues.
pub fn pause_resume(env: &TestEnv) -> Result<()> {
    let id = env.id("pause");
    env.scenario(&[&id], || {
        start_detached(env, &id, "sleep 1000")?;
        env.ctr.run(&["task", "pause", &id])?.ok()?;
        env.ctr
            .wait_status(&id, "PAUSED", Duration::from_secs(10))?;
        env.ctr.run(&["task", "resume", &id])?.ok()?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(10))?;
        let alive = env
            .ctr_exec(&id, "after-resume", &["echo", "still-alive"])?
            .ok()?;
        ensure!(alive.stdout == "still-alive\n", "{}", alive.describe());
        kill_and_remove(env, &id)
    })
}

/// `ctr task metrics` reports a non-zero memory usage for a running task.
pub fn metrics_show_memory(env: &TestEnv) -> Result<()> {
    let id = env.id("metrics");
    env.scenario(&[&id], || {
        // Touch some memory so usage is clearly above zero.
        start_detached(
            env,
            &id,
            "x=$(head -c 4000000 /dev/zero | tr '\\0' a); sleep 1000",
        )?;
        let out = env
            .ctr
            .run(&["task", "metrics", "--format", "json", &id])?
            .ok()?;
        let json: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("metrics are not JSON: {}", out.describe()))?;
        let usage = memory_usage(&json);
        ensure!(
            usage.unwrap_or(0) > 0,
            "memory usage is {usage:?} in:\n{}",
            out.stdout
        );
        let table = env.ctr.run(&["task", "metrics", &id])?.ok()?;
        ensure!(
            table.stdout.contains("memory"),
            "metrics table: {}",
            table.describe()
        );
        kill_and_remove(env, &id)
    })
}

/// cgroup v1 metrics carry `memory.usage.usage`, v2 `memory.usage`.
fn memory_usage(json: &serde_json::Value) -> Option<u64> {
    let memory = json.get("memory")?;
    let usage = memory.get("usage")?;
    usage
        .get("usage")
        .and_then(serde_json::Value::as_u64)
        .or_else(|| usage.as_u64())
}

/// `ctr task ps` lists every process of the task, including ones started by exec.
pub fn ps_lists_processes(env: &TestEnv) -> Result<()> {
    let id = env.id("ps");
    env.scenario(&[&id], || {
        start_detached(env, &id, "sleep 1001 & sleep 1002 & wait")?;
        let before = wait_pids(env, &id, 3)?;
        let fifo = env.containerd.fifo_dir().display().to_string();
        let argv = [
            "task",
            "exec",
            "-d",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "extra",
            &id,
            "sleep",
            "1003",
        ];
        env.ctr.run(&argv)?.ok()?;
        let after = wait_pids(env, &id, 4)?;
        ensure!(
            before.iter().all(|p| after.contains(p)),
            "pids changed: before {before:?}, after {after:?}"
        );
        kill_and_remove(env, &id)
    })
}

/// Waits until `ctr task ps` lists exactly `count` distinct non-zero pids.
fn wait_pids(env: &TestEnv, id: &str, count: usize) -> Result<Vec<u32>> {
    safehouse_integration::command::wait_for(
        &format!("{count} processes in ctr task ps {id}"),
        Duration::from_secs(10),
        || {
            let mut pids = env.ctr.task_pids(id)?;
            pids.sort_unstable();
            pids.dedup();
            let plausible = pids.iter().all(|p| *p > 0);
            Ok((pids.len() == count && plausible).then_some(pids))
        },
    )
}

/// `ctr task checkpoint`: Safehouse answers Unimplemented with a message saying so (the
/// baselines may do anything but hang); either way the task keeps running.
pub fn checkpoint_answers_clearly(env: &TestEnv) -> Result<()> {
    let id = env.id("ckpt");
    env.scenario(&[&id], || {
        start_detached(env, &id, "sleep 1000")?;
        let out = env.ctr.run(&["task", "checkpoint", &id])?;
        ensure!(!out.timed_out, "checkpoint hung: {}", out.describe());
        if env.runtime == RuntimeKind::Safehouse {
            let text = out.stderr.to_lowercase();
            ensure!(
                !out.success()
                    && (text.contains("not implemented") || text.contains("unimplemented")),
                "checkpoint should answer Unimplemented with a message: {}",
                out.describe()
            );
        }
        let task = env.ctr.task(&id)?;
        ensure!(
            task.as_ref().map(|t| t.status.as_str()) == Some("RUNNING"),
            "the task should still run after checkpoint: {task:?}"
        );
        kill_and_remove(env, &id)
    })
}

/// Kill reaches one exec process only (`--exec-id`), then every process (`--all`).
pub fn kill_exec_then_all(env: &TestEnv) -> Result<()> {
    let id = env.id("killexec");
    env.scenario(&[&id], || {
        // A TERM trap keeps the init alive through the targeted kill.
        start_detached(env, &id, "trap '' TERM; sleep 1001 & wait; sleep 1000")?;
        let fifo = env.containerd.fifo_dir().display().to_string();
        let argv = [
            "task",
            "exec",
            "-d",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "victim",
            &id,
            "sleep",
            "1003",
        ];
        env.ctr.run(&argv)?.ok()?;
        let before = wait_pids(env, &id, 3)?;
        env.ctr
            .run(&["task", "kill", "--exec-id", "victim", "-s", "SIGKILL", &id])?
            .ok()?;
        let after = wait_pids(env, &id, 2)?;
        ensure!(
            after.iter().all(|p| before.contains(p)),
            "killing the exec changed other pids: before {before:?}, after {after:?}"
        );
        let task = env.ctr.task(&id)?;
        ensure!(
            task.as_ref().map(|t| t.status.as_str()) == Some("RUNNING"),
            "killing an exec process must leave the task running: {task:?}"
        );
        env.ctr
            .run(&["task", "kill", "--all", "-s", "SIGKILL", &id])?
            .ok()?;
        env.ctr.wait_status(&id, "STOPPED", START)?;
        env.ctr.run(&["task", "delete", &id])?.ok()?;
        env.ctr.run(&["containers", "rm", &id])?.ok()?;
        Ok(())
    })
}
