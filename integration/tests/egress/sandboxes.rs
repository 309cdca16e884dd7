//! Rules belong to one sandbox: two sandboxes with different allowlists each get one table in
//! their own namespace (none in the node's), each reaches only its own host, and everything
//! goes with them. A container without a namespace of its own is refused for network modes.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::command::wait_for;
use safehouse_integration::netlab::{tables_in, NetLab};
use safehouse_integration::TestEnv;

use crate::lab::Lab;
use crate::probe::no_leftovers;

pub fn two_sandboxes_keep_their_own_rules(env: &TestEnv) -> Result<()> {
    let net_a = NetLab::start(1, &[], false)?;
    let net_b = NetLab::start(1, &[], false)?;
    let (ha, hb) = (&net_a.hosts[0], &net_b.hosts[0]);
    let lab = Lab::new(env, "egress-two")?;
    lab.policy(
        "only-a",
        &format!(
            r#"{{network: {{mode: allowlist, egress: ["{}:8080"]}}}}"#,
            ha.ip
        ),
    )?;
    lab.policy(
        "only-b",
        &format!(
            r#"{{network: {{mode: allowlist, egress: ["{}:9090"]}}}}"#,
            hb.ip
        ),
    )?;
    let a = env.id("egress-a");
    let b = env.id("egress-b");
    env.scenario(&[&a, &b], || {
        let ns_a = format!("network:{}", net_a.pod_netns_path().display());
        let ns_b = format!("network:{}", net_b.pod_netns_path().display());
        // Both stay up while the tables are inspected.
        let hold = ["sleep", "60"];
        let run_a = lab.start(Some("only-a"), &["--rm", "--with-ns", &ns_a], &a, &hold)?;
        let run_b = lab.start(Some("only-b"), &["--rm", "--with-ns", &ns_b], &b, &hold)?;
        let both_up = wait_for("both sandboxes' tables", Duration::from_secs(30), || {
            // Running, not only created: a kill before start would race the start.
            let tasks = env.ctr.run(&["task", "ls"])?.stdout;
            let running = |id: &str| {
                tasks
                    .lines()
                    .any(|l| l.starts_with(id) && l.contains("RUNNING"))
            };
            let (ta, tb) = (net_a.tables()?, net_b.tables()?);
            Ok((running(&a)
                && running(&b)
                && ta.iter().any(|t| t.contains("safehouse_"))
                && tb.iter().any(|t| t.contains("safehouse_")))
            .then_some((ta, tb)))
        });
        let inspected = both_up.and_then(|(ta, tb)| {
            ensure!(
                ta.len() == 1 && tb.len() == 1 && ta != tb,
                "one table per sandbox namespace, each its own: {ta:?} / {tb:?}"
            );
            let rules_a = list_ruleset(&net_a.pod_netns)?;
            let rules_b = list_ruleset(&net_b.pod_netns)?;
            ensure!(
                rules_a.contains(&ha.ip) && !rules_a.contains(&hb.ip),
                "sandbox a's namespace holds b's rules: {rules_a}"
            );
            ensure!(
                rules_b.contains(&hb.ip) && !rules_b.contains(&ha.ip),
                "sandbox b's namespace holds a's rules: {rules_b}"
            );
            let root: Vec<String> = tables_in(None)?
                .into_iter()
                .filter(|t| t.contains("safehouse_"))
                .collect();
            ensure!(root.is_empty(), "tables in the node's namespace: {root:?}");
            Ok(())
        });
        for id in [&a, &b] {
            let _ = env.ctr.run(&["task", "kill", "-s", "SIGKILL", id]);
        }
        let _ = run_a.wait(Duration::from_secs(30));
        let _ = run_b.wait(Duration::from_secs(30));
        inspected?;
        no_leftovers(&net_a)?;
        no_leftovers(&net_b)
    })
}

fn list_ruleset(netns: &str) -> Result<String> {
    let out = safehouse_integration::command::run_args(
        "ip",
        &["netns", "exec", netns, "nft", "list", "ruleset"],
        Duration::from_secs(10),
    )?
    .ok()?;
    Ok(out.stdout)
}

/// `open` and `allowlist` need the container's own namespace: without `--with-ns` Create fails
/// with a message naming the policy and the fix, and nothing is left.
pub fn no_namespace_of_its_own_is_refused(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "egress-nons")?;
    lab.policy("open", "{network: {mode: open}}")?;
    let id = env.id("egress-nons");
    env.scenario(&[&id], || {
        let out = lab.run(Some("open"), &["--rm"], &id, &["true"])?;
        let needle = "policy \"open\": network.mode open needs a container with a network namespace of its own";
        ensure!(
            !out.success() && out.stderr.contains(needle),
            "expected a refusal saying {needle:?}: {}",
            out.describe()
        );
        lab.remove_container(&id)?;
        let root: Vec<String> = tables_in(None)?
            .into_iter()
            .filter(|t| t.contains("safehouse_"))
            .collect();
        ensure!(root.is_empty(), "tables in the node's namespace: {root:?}");
        Ok(())
    })
}
