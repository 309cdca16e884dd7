//! The shim process itself dies (SIGKILL) while its container runs: containerd's clean-up (the
//! shim binary's `delete` action) must remove the sandbox, and the container can be removed.

use std::time::Duration;

use anyhow::Result;
use safehouse_integration::TestEnv;

/// SIGKILL the shim mid-run, then `ctr task delete` / `ctr containers rm` leave nothing behind.
pub fn shim_sigkill_then_cleanup(env: &TestEnv) -> Result<()> {
    let id = env.id("shimkill");
    env.scenario(&[&id], || {
        env.ctr_run(&["-d"], &id, &["sleep", "1000"])?.ok()?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;
        env.sigkill_shim_and_remove(&id)?;
        Ok(())
    })
}
