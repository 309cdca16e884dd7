//! Resource limits: the pids limit bounds a fork loop, the memory limit ends a hog with an OOM
//! kill that containerd and the audit stream both hear about.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::ctr::expect_task_events;
use safehouse_integration::TestEnv;

use crate::lab::Lab;

/// `pids: 64` and a loop starting 200 background sleeps: the loop does not get past the limit
/// (without one, all 200 start and the checker prints `survived`). Counting uses only shell
/// builtins (a glob over /proc), which need no fork.
pub fn fork_loop_is_bounded(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "pids")?;
    lab.policy(
        "pids64",
        "{filesystem: {scratch: [{path: /tmp}]}, resources: {pids: 64}}",
    )?;
    let id = env.id("pids");
    env.scenario(&[&id], || {
        let check = "i=0; while [ $i -lt 200 ]; do i=$((i+1)); sleep 120 & done; \
                     set -- /proc/[0-9]*; echo survived procs=$#";
        let out = lab.run(Some("pids64"), &["--rm"], &id, &["sh", "-c", check])?;
        ensure!(!out.timed_out, "the fork loop hung: {}", out.describe());
        let procs: Option<usize> = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("survived procs="))
            .and_then(|n| n.trim().parse().ok());
        match procs {
            // Forks failed inside and the shell went on: the count must respect the limit.
            Some(n) => ensure!(n <= 64, "{n} processes under pids: 64: {}", out.describe()),
            // The loop was ended by a failed fork in the shell itself.
            None => ensure!(
                !out.success(),
                "the loop neither finished nor failed: {}",
                out.describe()
            ),
        }
        Ok(())
    })
}

/// What the policy promises for `pids: 16`: the container starts, forks past the limit fail
/// inside (EAGAIN, from RLIMIT_NPROC in the Sentry), and the agent survives them.
pub fn small_pids_limit_fails_forks_inside(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "pids16")?;
    lab.policy(
        "pids16",
        "{filesystem: {scratch: [{path: /tmp}]}, resources: {pids: 16}}",
    )?;
    let id = env.id("pids16");
    env.scenario(&[&id], || {
        // busybox sh exits when a fork fails, so the loop runs in a child shell and the
        // container's init counts what is left with builtins only.
        let check = "sh -c 'i=0; while [ $i -lt 40 ]; do i=$((i+1)); sleep 120 & done' \
                     2>/tmp/fork-errors; echo loop-exit=$?; \
                     set -- /proc/[0-9]*; echo procs=$#; \
                     read -r first < /tmp/fork-errors; echo \"error=$first\"; exit 0";
        let out = lab.run(Some("pids16"), &["--rm"], &id, &["sh", "-c", check])?;
        ensure!(out.success(), "the fork loop container: {}", out.describe());
        let procs: usize = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("procs="))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no procs= line: {}", out.describe()))?;
        ensure!(
            (2..=16).contains(&procs),
            "{procs} processes under pids: 16 (40 were attempted): {}",
            out.describe()
        );
        // EAGAIN, from the Sentry's RLIMIT_NPROC (not the host cgroup killing anything).
        ensure!(
            out.stdout.contains("error=")
                && out.stdout.contains("Resource temporarily unavailable"),
            "forks past the limit should have failed with EAGAIN: {}",
            out.describe()
        );
        Ok(())
    })
}

/// `memory: 64Mi` and a shell that reads 300 MB into a variable: 137, `/tasks/oom`, and an
/// audit `oom` event plus an exit with reason `oom`.
pub fn memory_limit_ooms(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "oom")?;
    lab.policy("mem64", "{resources: {memory: 64Mi}}")?;
    let id = env.id("oom");
    env.scenario(&[&id], || {
        let events = env.ctr.subscribe_events()?;
        let out = env.ctr.run_timeout(
            &lab.argv(
                Some("mem64"),
                &["--rm"],
                &id,
                &[
                    "sh",
                    "-c",
                    "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived",
                ],
            ),
            Duration::from_secs(90),
        )?;
        ensure!(
            !out.timed_out && out.code == Some(137) && !out.stdout.contains("survived"),
            "expected an OOM kill (137): {}",
            out.describe()
        );
        expect_task_events(events, &id, &["/tasks/oom"])?;
        lab.wait_audit(&id, "action oom", |e| e["action"] == "oom")?;
        lab.wait_audit(&id, "exit with reason oom", |e| {
            e["action"] == "exit" && e["exit"]["reason"] == "oom"
        })?;
        Ok(())
    })
}
