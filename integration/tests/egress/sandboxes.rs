//! Rules belong to one sandbox: two sandboxes with different allowlists each get one table in
//! their own namespace (none in the node's), each reaches only its own host, and everything
//! goes with them. A container without a namespace of its own is refused for network modes.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::command::wait_for;
use safehouse_integration::netlab::{node_namespace_clean, NetLab};
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
            node_namespace_clean()
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
        // `--net-host`: no network namespace entry in the spec at all (ctr's default spec has
        // one without a path, a new namespace of the container's own).
        let out = lab.run(Some("open"), &["--net-host"], &id, &["sh", "-c", "echo STARTED"])?;
        // The compiler refuses a spec without a network namespace entry (the node's) first.
        let needle = "refused by policy \"open\": linux.namespaces: no network namespace means the host's network namespace";
        ensure!(
            !out.success() && !out.stdout.contains("STARTED") && out.stderr.contains(needle),
            "expected a refusal saying {needle:?}: {}",
            out.describe()
        );
        ensure!(
            env.ctr.task(&id)?.is_none(),
            "a task exists after a refused create"
        );
        lab.remove_container(&id)?;
        node_namespace_clean()
    })
}

/// The shim is SIGKILLed while its sandbox runs: containerd's clean-up (the shim binary's
/// `delete` action) removes the table from the namespace as well, and the forwarder's socket
/// died with the shim.
pub fn killed_shim_leaves_no_table(env: &TestEnv) -> Result<()> {
    let net = NetLab::start(1, &[], false)?;
    let h0 = &net.hosts[0];
    let lab = Lab::new(env, "egress-kill")?;
    lab.config_keys(&format!("dns_upstreams = [{:?}]", h0.ip))?;
    lab.policy(
        "killed",
        &format!(
            r#"{{network: {{mode: allowlist, egress: ["{}:8080", "api.test:8080"]}}}}"#,
            h0.ip
        ),
    )?;
    let id = env.id("egress-kill");
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        lab.run(
            Some("killed"),
            &["-d", "--with-ns", &with_ns],
            &id,
            &["sleep", "1000"],
        )?
        .ok()?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;
        let running = net.leftovers()?;
        ensure!(
            running.iter().any(|l| l.contains("nftables table"))
                && running.iter().filter(|l| l.contains("127.0.0.53")).count() == 2,
            "a running sandbox should have its table and forwarder sockets (UDP, TCP): {running:?}"
        );
        // DNS over TCP reaches the forwarder too (asked from the pod namespace): an unlisted
        // name is REFUSED (rcode 5).
        let tcp = net.python_in_pod(TCP_QUERY, &["nope.test"])?;
        ensure!(
            tcp.stdout.trim() == "rcode=5",
            "a TCP query for an unlisted name should be refused: {}",
            tcp.describe()
        );
        env.sigkill_shim_and_remove(&id)?;
        wait_for("the table to go", Duration::from_secs(10), || {
            Ok(net.leftovers()?.is_empty().then_some(()))
        })?;
        no_leftovers(&net)
    })
}

/// Sends a DNS query for argv[1] over TCP to the forwarder and prints its rcode.
const TCP_QUERY: &str = r#"
import socket, struct, sys
q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in sys.argv[1].split(".")) + b"\0" + struct.pack("!HH", 1, 1)
s = socket.create_connection(("127.0.0.53", 53), timeout=5)
s.sendall(struct.pack("!H", len(q)) + q)
n = struct.unpack("!H", s.recv(2))[0]
r = b""
while len(r) < n:
    r += s.recv(n - len(r))
print("rcode=%d" % (r[3] & 15))
"#;

const CRI_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A CRI-style pod (annotations as CRI sets them, through ctr): a member container shares the
/// sandbox's namespace, table and DNS forwarder (it resolves a listed name and reaches only
/// what the pod's policy lists); a member whose policy asks for another network is refused.
pub fn pod_members_share_the_sandbox_filter(env: &TestEnv) -> Result<()> {
    let net = NetLab::start_named(2, |ips| vec![("api.test".into(), ips[1].clone(), 300)])?;
    let (h0, h1) = (&net.hosts[0], &net.hosts[1]);
    let lab = Lab::new(env, "egress-pod")?;
    lab.config_keys(&format!("dns_upstreams = [{:?}]", h0.ip))?;
    lab.policy(
        "pod",
        r#"{network: {mode: allowlist, egress: ["api.test:8080"]}}"#,
    )?;
    lab.policy(
        "other",
        &format!(
            r#"{{network: {{mode: allowlist, egress: ["{}:8080"]}}}}"#,
            h0.ip
        ),
    )?;
    let pod = env.id("egress-pod");
    let app = env.id("egress-app");
    let odd = env.id("egress-odd");
    env.scenario(&[&app, &odd, &pod], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        let role = |kind: &str| {
            vec![
                "--with-ns".to_string(),
                with_ns.clone(),
                "--annotation".to_string(),
                format!("{CRI_TYPE}={kind}"),
                "--annotation".to_string(),
                format!("{CRI_SANDBOX_ID}={pod}"),
            ]
        };
        let mut sandbox_flags = vec!["-d".to_string()];
        sandbox_flags.extend(role("sandbox"));
        let sandbox_flags: Vec<&str> = sandbox_flags.iter().map(String::as_str).collect();
        lab.run(Some("pod"), &sandbox_flags, &pod, &["sleep", "1000"])?
            .ok()?;
        env.ctr
            .wait_status(&pod, "RUNNING", Duration::from_secs(30))?;
        let mut member_flags = vec!["-d".to_string()];
        member_flags.extend(role("container"));
        let member_flags: Vec<&str> = member_flags.iter().map(String::as_str).collect();
        let check = format!(
            "nslookup api.test; nc -w 3 {} 8080 </dev/null; echo listed=$?; nc -w 3 {} 8080 </dev/null 2>&1; echo other=$?",
            h1.ip, h0.ip
        );
        // The member's output is read through an exec (as the ctr pod scenario does).
        let member = lab
            .run(Some("pod"), &member_flags, &app, &["sleep", "1000"])
            .and_then(|o| o.ok())
            .and_then(|_| env.ctr.wait_status(&app, "RUNNING", Duration::from_secs(30)))
            .and_then(|_| env.ctr_exec(&app, "check", &["sh", "-c", &check]));
        let odd_run = lab.run(Some("other"), &member_flags, &odd, &["sleep", "1000"]);
        for id in [&app, &pod] {
            let _ = env.ctr.run(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = env.ctr.wait_status(id, "STOPPED", Duration::from_secs(30));
            let _ = env.ctr.run(&["task", "delete", id]);
            let _ = env.ctr.run(&["containers", "rm", id]);
        }
        let _ = lab.remove_container(&odd);
        let member = member?;
        ensure!(
            member.stdout.contains(&format!("{} port 8080", h1.greeting))
                && member.stdout.contains("listed=0")
                && member.stdout.contains("Connection refused")
                && member.stdout.contains("other=1"),
            "the member should resolve through the pod's forwarder and reach only the listed host: {}",
            member.describe()
        );
        let odd_run = odd_run?;
        ensure!(
            !odd_run.success() && odd_run.stderr.contains("asks for a different network than pod sandbox"),
            "a member with another network policy should be refused: {}",
            odd_run.describe()
        );
        no_leftovers(&net)
    })
}
