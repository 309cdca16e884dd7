//! The runtime's own configuration reaches it: for Safehouse the config file given as
//! `ConfigPath` (`ctr run --runtime-config-path`), for the runc shim `--runc-root`.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::TestEnv;

/// While a container runs, its runtime state is in the configured root, and only there.
pub fn runtime_state_in_configured_root(env: &TestEnv) -> Result<()> {
    let id = env.id("cfgroot");
    env.scenario(&[&id], || {
        env.ctr_run(&["-d"], &id, &["sleep", "1000"])?.ok()?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;
        let root = &env.leaks.runtime_root;
        let entries: Vec<String> = std::fs::read_dir(root)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            entries.iter().any(|e| e.contains(&id)),
            "no runtime state for {id} in the configured root {}: {entries:?}",
            root.display()
        );
        env.ctr.run(&["task", "kill", "-s", "SIGKILL", &id])?.ok()?;
        env.ctr
            .wait_status(&id, "STOPPED", Duration::from_secs(30))?;
        env.ctr.run(&["task", "delete", &id])?.ok()?;
        env.ctr.run(&["containers", "rm", &id])?.ok()?;
        Ok(())
    })
}
