//! Errors reach the user as the runtime's own words with the right code, never a bare
//! "exit status N".

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::{RuntimeKind, TestEnv};

/// Exec into a task whose init has exited, and resume a task that is not paused: both fail,
/// clearly (for Safehouse with the FailedPrecondition code), and leave the task deletable.
pub fn errors_are_clear(env: &TestEnv) -> Result<()> {
    let id = env.id("errors");
    env.scenario(&[&id], || {
        env.ctr_run(&["-d"], &id, &["true"])?.ok()?;
        env.ctr
            .wait_status(&id, "STOPPED", Duration::from_secs(30))?;
        let exec = env.ctr_exec(&id, "late", &["echo", "too-late"])?;
        let resume = env.ctr.run(&["task", "resume", &id])?;
        for out in [&exec, &resume] {
            ensure!(
                !out.success() && !out.timed_out,
                "should fail: {}",
                out.describe()
            );
            ensure!(
                !out.stderr.contains("exit status"),
                "a bare runsc exit status reached the user: {}",
                out.describe()
            );
            // containerd's own Go shim answers `unknown` here; Safehouse maps the state error.
            if env.runtime == RuntimeKind::Safehouse {
                ensure!(
                    out.stderr.contains("failed precondition"),
                    "expected the FailedPrecondition code: {}",
                    out.describe()
                );
            }
        }
        env.ctr.run(&["task", "delete", &id])?.ok()?;
        env.ctr.run(&["containers", "rm", &id])?.ok()?;
        Ok(())
    })
}
