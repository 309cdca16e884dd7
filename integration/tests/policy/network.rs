//! Network policy: `none` leaves loopback only and blocks a test host even when the container
//! is handed a namespace that reaches it; `open` (same setup) reaches it, so the policy and
//! not the setup is what blocks.

use anyhow::{ensure, Result};
use safehouse_integration::testhost::TestHost;
use safehouse_integration::TestEnv;

use crate::lab::Lab;

/// Interface names in a /proc/net/dev listing.
fn interfaces(proc_net_dev: &str) -> Vec<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect()
}

/// `network: none` with a reachable netns: only `lo`, and the connect fails; `open`: it works.
pub fn none_blocks_test_host_open_reaches_it(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "network")?;
    lab.policy("closed", "{network: {mode: none}}")?;
    lab.policy("open", "{network: {mode: open}}")?;
    let closed = env.id("netnone");
    let open = env.id("netopen");
    let host = TestHost::start(8080)?;
    env.scenario(&[&closed, &open], || {
        let with_ns = format!("network:{}", host.pod_netns_path().display());
        let check = format!(
            "cat /proc/net/dev; echo ---; nc -w 3 {} {} </dev/null; echo nc-exit=$?",
            host.host_ip, host.port
        );
        let flags = ["--rm", "--with-ns", with_ns.as_str()];
        let out = lab.run(Some("closed"), &flags, &closed, &["sh", "-c", &check])?;
        ensure!(out.success(), "network none: {}", out.describe());
        let (dev, rest) = out.stdout.split_once("---").unwrap_or((&out.stdout, ""));
        let names = interfaces(dev);
        ensure!(
            names == ["lo"],
            "network none: interfaces {names:?}: {}",
            out.describe()
        );
        ensure!(
            !rest.contains(&host.greeting)
                && rest.contains("nc-exit=1")
                && out.stderr.contains("nc: can't connect to remote host"),
            "network none: the connect to the test host should fail: {}",
            out.describe()
        );

        let out = lab.run(Some("open"), &flags, &open, &["sh", "-c", &check])?;
        ensure!(
            out.success()
                && out.stdout.contains(&host.greeting)
                && out.stdout.contains("nc-exit=0"),
            "network open, same namespace: the test host should answer: {}",
            out.describe()
        );
        Ok(())
    })
}
