//! The runtime's own configuration reaches it: for Safehouse the config file given as
//! `ConfigPath` (`ctr run --runtime-config-path`), for the runc shim `--runc-root`.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::env::LEAK_GRACE;
use safehouse_integration::runtime::DEFAULT_SAFEHOUSE_RUNSC_ROOT;
use safehouse_integration::suite::only_for;
use safehouse_integration::{RuntimeKind, TestEnv};

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

/// Safehouse with no `ConfigPath` at all runs on built-in defaults (a first run needs no
/// config) and keeps runsc state under `/run/safehouse/runsc/<namespace>` unless
/// `/etc/safehouse/config.toml` says otherwise.
pub fn runs_without_config_file(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let id = env.id("nocfg");
    let default_root = std::path::Path::new(DEFAULT_SAFEHOUSE_RUNSC_ROOT).join(&env.ctr.namespace);
    let mut leaks = env.leaks.clone();
    leaks.runtime_root = default_root.clone();
    let system_config = std::path::Path::new("/etc/safehouse/config.toml").exists();
    let result = env.scenario(&[&id], || {
        let fifo = env.containerd.fifo_dir().display().to_string();
        let argv = [
            "run",
            "-d",
            "--runtime",
            env.runtime.runtime_type(),
            "--fifo-dir",
            &fifo,
            &env.image,
            &id,
            "sleep",
            "1000",
        ];
        env.ctr.run(&argv)?.ok()?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;
        if !system_config {
            let has_state = std::fs::read_dir(&default_root)
                .map(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().contains(&id))
                })
                .unwrap_or(false);
            ensure!(
                has_state,
                "no runsc state for {id} under {}",
                default_root.display()
            );
        }
        env.ctr.run(&["task", "kill", "-s", "SIGKILL", &id])?.ok()?;
        env.ctr
            .wait_status(&id, "STOPPED", Duration::from_secs(30))?;
        env.ctr.run(&["task", "delete", &id])?.ok()?;
        env.ctr.run(&["containers", "rm", &id])?.ok()?;
        leaks.assert_clean(&[&id], LEAK_GRACE)
    });
    // This scenario's namespace directory under the default root is ours to remove.
    let _ = std::fs::remove_dir(&default_root);
    result
}
