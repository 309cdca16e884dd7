//! Networking: a plain `ctr run` (no network namespace of its own) gets loopback only; a
//! container given a namespace (`--with-ns network:PATH`) uses it and reaches a test host there.

use anyhow::{ensure, Result};
use safehouse_integration::testhost::TestHost;
use safehouse_integration::TestEnv;

/// Interface names in a /proc/net/dev listing.
fn interfaces(proc_net_dev: &str) -> Vec<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect()
}

/// Without a namespace of its own the container sees only `lo` and does not fail.
pub fn plain_run_has_loopback_only(env: &TestEnv) -> Result<()> {
    let id = env.id("netnone");
    env.scenario(&[&id], || {
        let out = env
            .ctr_run(&["--rm"], &id, &["cat", "/proc/net/dev"])?
            .ok()?;
        let names = interfaces(&out.stdout);
        ensure!(names == ["lo"], "interfaces {names:?}:\n{}", out.describe());
        Ok(())
    })
}

/// Given a network namespace, the container uses it: it reaches the test host behind it.
pub fn given_netns_is_used(env: &TestEnv) -> Result<()> {
    let id = env.id("netns");
    let host = TestHost::start(8080)?;
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", host.pod_netns_path().display());
        let port = host.port.to_string();
        let select = format!(
            "safehouse.dev/policy={}",
            safehouse_integration::containerd::NET_POLICY_NAME
        );
        let out = env.ctr_run(
            &["--rm", "--with-ns", &with_ns, "--annotation", &select],
            &id,
            &["nc", "-w", "5", &host.host_ip, &port],
        )?;
        ensure!(
            out.success(),
            "nc from inside the container: {}",
            out.describe()
        );
        ensure!(
            out.stdout.trim() == host.greeting,
            "expected {:?}: {}",
            host.greeting,
            out.describe()
        );
        Ok(())
    })
}
