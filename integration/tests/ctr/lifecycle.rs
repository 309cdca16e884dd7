//! Run, exit codes, `--rm`, detached run + exec + kill + delete, and a failed start.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use safehouse_integration::command::Running;
use safehouse_integration::env::LEAK_GRACE;
use safehouse_integration::TestEnv;

/// stdout and stderr come through, and `exit 3` is exit code 3.
pub fn run_output_and_exit_code(env: &TestEnv) -> Result<()> {
    let id = env.id("exit3");
    let id0 = env.id("exit0");
    env.scenario(&[&id, &id0], || {
        let out = env.ctr_run(
            &["--rm"],
            &id,
            &["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
        )?;
        ensure!(
            out.code == Some(3),
            "expected exit code 3: {}",
            out.describe()
        );
        ensure!(out.stdout == "to-stdout\n", "stdout: {}", out.describe());
        ensure!(
            out.stderr.contains("to-stderr"),
            "stderr: {}",
            out.describe()
        );

        let ok = env.ctr_run(&["--rm"], &id0, &["sh", "-c", "id -u; uname -s"])?;
        ensure!(ok.success(), "exit 0 expected: {}", ok.describe());
        ensure!(ok.stdout == "0\nLinux\n", "stdout: {}", ok.describe());
        Ok(())
    })
}

/// A container killed by SIGKILL exits with 137 as `ctr run` reports it.
pub fn sigkill_is_137(env: &TestEnv) -> Result<()> {
    let id = env.id("sigkill");
    env.scenario(&[&id], || {
        let argv = env.run_argv(&["--rm"], &id, &["sleep", "1000"]);
        let attached = Running::start(env.ctr.command().args(&argv))?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;
        env.ctr.run(&["task", "kill", "-s", "SIGKILL", &id])?.ok()?;
        let out = attached.wait(Duration::from_secs(30))?;
        ensure!(
            out.code == Some(137),
            "expected 137 from ctr run: {}",
            out.describe()
        );
        Ok(())
    })
}

/// `--rm` removes the container and its snapshot.
pub fn run_rm_removes_everything(env: &TestEnv) -> Result<()> {
    let id = env.id("rm");
    env.scenario(&[&id], || {
        let out = env.ctr_run(&["--rm"], &id, &["true"])?.ok()?;
        ensure!(
            out.stdout.is_empty(),
            "unexpected output: {}",
            out.describe()
        );
        ensure!(
            !env.ctr.containers()?.contains(&id),
            "container {id} still listed"
        );
        ensure!(
            !env.ctr.snapshots()?.contains(&id),
            "snapshot {id} still listed"
        );
        Ok(())
    })
}

/// Detached run, exec with output and exit code, SIGTERM reaches the trap, delete reports the
/// exit code, container removal.
pub fn detached_exec_kill_delete(env: &TestEnv) -> Result<()> {
    let id = env.id("detached");
    env.scenario(&[&id], || {
        let script = "trap 'exit 42' TERM; echo started > /tmp/state; \
                      while true; do sleep 0.1; done";
        env.ctr_run(&["-d"], &id, &["sh", "-c", script])?.ok()?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;

        let exec = env.ctr_exec(
            &id,
            "e1",
            &["sh", "-c", "cat /tmp/state; echo err >&2; exit 5"],
        )?;
        ensure!(
            exec.code == Some(5),
            "exec exit code 5 expected: {}",
            exec.describe()
        );
        ensure!(
            exec.stdout == "started\n",
            "exec stdout: {}",
            exec.describe()
        );
        ensure!(
            exec.stderr.contains("err"),
            "exec stderr: {}",
            exec.describe()
        );

        let exec0 = env.ctr_exec(&id, "e2", &["echo", "second-exec"])?.ok()?;
        ensure!(
            exec0.stdout == "second-exec\n",
            "exec stdout: {}",
            exec0.describe()
        );

        let missing = env.ctr_exec(&id, "e3", &["/no/such/binary"])?;
        ensure!(
            !missing.success(),
            "exec of a missing binary succeeded: {}",
            missing.describe()
        );
        ensure!(
            env.ctr.task(&id)?.map(|t| t.status) == Some("RUNNING".into()),
            "a failed exec must not stop the task"
        );

        env.ctr.run(&["task", "kill", &id])?.ok()?;
        env.ctr
            .wait_status(&id, "STOPPED", Duration::from_secs(30))?;
        let deleted = env.ctr.run(&["task", "delete", &id])?;
        ensure!(
            deleted.stderr.contains("exit code 42"),
            "ctr task delete should report exit code 42 (the TERM trap): {}",
            deleted.describe()
        );
        env.ctr.run(&["containers", "rm", &id])?.ok()?;
        Ok(())
    })
}

/// A command missing from the image: a clear error, and after delete nothing is left.
pub fn failed_start_leaks_nothing(env: &TestEnv) -> Result<()> {
    let id = env.id("badcmd");
    env.scenario(&[&id], || {
        let out = env.ctr_run(&[], &id, &["/no/such/command"])?;
        ensure!(
            !out.success(),
            "running a missing command succeeded: {}",
            out.describe()
        );
        ensure!(!out.timed_out, "ctr run hung: {}", out.describe());
        if env.ctr.task(&id)?.is_some() {
            let deleted = env.ctr.run(&["task", "delete", &id])?;
            ensure!(
                deleted.success(),
                "ctr task delete after a failed start: {}",
                deleted.describe()
            );
        }
        env.ctr
            .run(&["containers", "rm", &id])?
            .ok()
            .context("removing the container after a failed start")?;
        // Leaks first, so a vague message does not hide them; then the message.
        env.leaks.assert_clean(&[&id], LEAK_GRACE)?;
        ensure!(
            out.stderr.contains("/no/such/command"),
            "the error should name the missing command: {}",
            out.describe()
        );
        Ok(())
    })
}

/// A create that fails (a bind mount whose source does not exist): a clear error, no task,
/// and once the container is removed nothing is left.
pub fn failed_create_leaks_nothing(env: &TestEnv) -> Result<()> {
    let id = env.id("badmount");
    env.scenario(&[&id], || {
        let missing = env.scratch("no-such-dir")?.join("missing");
        let mount = format!(
            "type=bind,src={},dst=/x,options=rbind:ro",
            missing.display()
        );
        let out = env.ctr_run(&["--mount", &mount], &id, &["true"])?;
        ensure!(
            !out.success(),
            "create with a missing bind source succeeded: {}",
            out.describe()
        );
        ensure!(!out.timed_out, "ctr run hung: {}", out.describe());
        ensure!(
            env.ctr.task(&id)?.is_none(),
            "a task exists after a failed create"
        );
        env.ctr.run(&["containers", "rm", &id])?.ok()?;
        // Leaks first, so a vague message does not hide them; then the message.
        env.leaks.assert_clean(&[&id], LEAK_GRACE)?;
        ensure!(
            out.stderr.contains("missing") || out.stderr.contains("no such file"),
            "the error should name the missing mount source: {}",
            out.describe()
        );
        Ok(())
    })
}
