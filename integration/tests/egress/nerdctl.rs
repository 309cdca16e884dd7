//! nerdctl's networking, reproduced with `ctr run --config`: a spec whose network namespace
//! entry has no path (runsc makes a new namespace for the sandbox) and a `createRuntime` hook
//! that configures it from the state on its stdin, as nerdctl's CNI set-up does: here it moves
//! the pod-side ends of the test hosts' veth pairs into the namespace of the state's pid and
//! gives them their addresses. The policy's filter must hold there: the listed host:port
//! answers, anything else is refused at once, and a server in the sandbox is reachable from
//! the `ingress` source only (what a published port, `nerdctl run -p`, delivers to the
//! sandbox after CNI's port mapping). The table is in the sandbox's namespace, not the node's.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use safehouse_integration::command::{run_args, wait_for, Running};
use safehouse_integration::netlab::{node_namespace_clean, NetLab};
use safehouse_integration::TestEnv;
use serde_json::json;

use crate::lab::Lab;
use crate::probe::{ok, refused, script};

/// The CNI stand-in: `$1` is the lab's pod namespace, then `IF:ADDR` pairs to move from it into
/// the namespace of the pid in the state.
const CNI_HOOK: &str = r#"#!/bin/sh
pod=$1; shift
state=$(cat)
pid=$(echo "$state" | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
[ -n "$pid" ] || { echo "no pid in the state: $state" >&2; exit 1; }
for link in "$@"; do
  ifname=${link%%:*}; addr=${link#*:}
  ip -n "$pod" link set "$ifname" netns "$pid" || exit 1
  nsenter --net=/proc/$pid/ns/net ip addr add "$addr/24" dev "$ifname" || exit 1
  nsenter --net=/proc/$pid/ns/net ip link set "$ifname" up || exit 1
done
nsenter --net=/proc/$pid/ns/net ip link set lo up
"#;

pub fn pathless_namespace_with_a_cni_hook_is_filtered(env: &TestEnv) -> Result<()> {
    let net = NetLab::start(3, &[], false)?;
    let (h0, h1, h2) = (&net.hosts[0], &net.hosts[1], &net.hosts[2]);
    let lab = Lab::new(env, "egress-nerdctl")?;
    lab.policy(
        "nerd",
        &format!(
            r#"{{network: {{mode: allowlist, egress: ["{}:8080"], ingress: ["{}/32:7070"]}}}}"#,
            h0.ip, h1.ip
        ),
    )?;
    let rootfs = lab.path("rootfs");
    safehouse_integration::image::populate_rootfs(&rootfs)?;
    let hook = lab.path("cni-hook.sh");
    safehouse_integration::host::write_executable(&hook, CNI_HOOK)?;
    let id = env.id("egress-nerdctl");
    let checks = [
        ("listed", format!("nc -w 3 {} 8080 </dev/null", h0.ip)),
        ("other-port", format!("nc -w 3 {} 9090 </dev/null", h0.ip)),
        ("other-host", format!("nc -w 3 {} 8080 </dev/null", h2.ip)),
    ];
    let command = format!(
        "{}; echo checked; exec httpd -f -p 7070 -h /",
        script(&checks)
    );
    let mut spec: serde_json::Value =
        serde_json::from_str(&env.ctr.run(&["oci", "spec"])?.ok()?.stdout)
            .context("ctr oci spec")?;
    spec["root"] = json!({"path": rootfs, "readonly": false});
    spec["process"]["args"] = json!(["sh", "-c", command]);
    spec["process"]["terminal"] = json!(false);
    spec["process"]["env"] = json!(["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    spec["annotations"] = json!({"safehouse.dev/policy": "nerd"});
    let mut namespaces: Vec<serde_json::Value> = spec["linux"]["namespaces"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns["type"] != "network")
        .collect();
    namespaces.push(json!({"type": "network"}));
    spec["linux"]["namespaces"] = json!(namespaces);
    let mut hook_args = vec!["cni-hook.sh".to_string(), net.pod_netns.clone()];
    hook_args.extend(
        net.hosts
            .iter()
            .map(|h| format!("{}:{}", h.pod_if, h.pod_ip)),
    );
    spec["hooks"] = json!({"createRuntime": [{
        "path": hook,
        "args": hook_args,
        "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    }]});
    let config = lab.path("config.json");
    std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
    let connect = "import socket,sys\ntry:\n    socket.create_connection((sys.argv[1], 7070), timeout=3).close(); print('connected')\nexcept Exception as e:\n    print(type(e).__name__)\n";
    env.scenario(&[&id], || {
        let mut argv = vec!["run".to_string(), "--rm".into(), "--config".into()];
        argv.push(config.display().to_string());
        argv.extend([
            "--runtime".to_string(),
            env.runtime.runtime_type().to_string(),
            "--fifo-dir".to_string(),
            env.containerd.fifo_dir().display().to_string(),
            "--runtime-config-path".to_string(),
            lab.config_path().display().to_string(),
            id.clone(),
        ]);
        let running = Running::start(env.ctr.command().args(&argv))?;
        let checked = wait_for("the checks inside", Duration::from_secs(40), || {
            Ok(running.stdout_so_far().contains("checked").then_some(()))
        });
        let tables = checked.and_then(|()| sandbox_tables(env, &id));
        let from_listed = tables
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .and_then(|_| {
                wait_for(
                    "the ingress source to connect",
                    Duration::from_secs(20),
                    || {
                        let out = h1.python(connect, &[&h1.pod_ip])?;
                        Ok(out.stdout.contains("connected").then_some(()))
                    },
                )
            });
        let from_other = h2.python(connect, &[&h2.pod_ip]);
        let _ = env.ctr.run(&["task", "kill", "-s", "SIGKILL", &id]);
        let out = running.wait(Duration::from_secs(30))?;
        let tables = tables?;
        ensure!(
            tables.iter().filter(|t| t.contains("safehouse_")).count() == 1,
            "the sandbox's own namespace should hold its table: {tables:?}"
        );
        let r = crate::probe::results(&out);
        ok(&r, "listed", &format!("{} port 8080", h0.greeting), &out)?;
        refused(&r, "other-port", "Connection refused", "hello", &out)?;
        refused(&r, "other-host", "Connection refused", "hello", &out)?;
        from_listed?;
        let other = from_other?;
        ensure!(
            other.stdout.contains("ConnectionRefusedError"),
            "a source the policy does not list should be refused at once: {}",
            other.describe()
        );
        node_namespace_clean()
    })
}

/// The nftables tables in the network namespace of `id`'s sandbox (found by its task pid).
fn sandbox_tables(env: &TestEnv, id: &str) -> Result<Vec<String>> {
    let tasks = env.ctr.run(&["task", "ls"])?.ok()?.stdout;
    let pid = tasks
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("the task's pid")?
        .to_string();
    let ns = format!("--net=/proc/{pid}/ns/net");
    let node = std::fs::read_link("/proc/self/ns/net")?;
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    ensure!(
        node != theirs,
        "the sandbox runs in the node's network namespace ({})",
        node.display()
    );
    let out = run_args(
        "nsenter",
        &[&ns, "nft", "list", "tables"],
        Duration::from_secs(10),
    )?
    .ok()?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(str::to_string)
        .collect())
}
