//! Egress allowlists through CRI pods: the pod's network namespace is made by CNI (the private
//! bridge), its policy is selected with the pod annotation `safehouse.dev/policy`, and the test
//! hosts (`safehouse_integration::netlab`) are joined to that namespace by veth pairs after
//! RunPodSandbox, in namespaces the test creates. A busybox container of the pod runs the
//! checks through ExecSync. After StopPodSandbox/RemovePodSandbox nothing of the pod's network
//! plumbing may remain: no process, open handle or mount keeps its namespace (and with it the
//! `safehouse_` table and the forwarder's socket) alive, and the node's own namespace holds no
//! `safehouse_` table.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1 as cri;
use safehouse_integration::command::{run_args, wait_for};
use safehouse_integration::cri_env::CriEnv;
use safehouse_integration::netlab::{
    check_results, check_script, netns_holders, netns_inode, node_namespace_clean, tables_in,
    DnsNames, LabPlan, NetLab, METADATA, UDP_PORT,
};
use serde_json::Value;

use crate::pods::HANDLER;

const ANNOTATION: &str = "safehouse.dev/policy";

/// Writes policy `name` with network section `network` (YAML flow style) to the runtime
/// config's policy directory, selectable by the pod annotation.
fn install_policy(env: &CriEnv, name: &str, network: &str) -> Result<()> {
    let text = format!(
        "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {name}\n  \
         description: CRI egress integration test\nspec:\n  network: {network}\n"
    );
    let path = env.containerd.policy_dir().join(format!("{name}.yaml"));
    fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

/// A policy name unique to this run (policy names: lower case, digits, dashes).
fn policy_name(env: &CriEnv, label: &str) -> String {
    env.unique(label).to_lowercase()
}

/// Seconds a refused connect may take, `nc` start included (its timeout is 3 s).
const REFUSED_WITHIN: f64 = 1.0;

/// A connect with busybox `nc` (3 s timeout), timed by busybox `time` (`real 0m 0.01s`).
fn nc(ip: &str, port: u16) -> String {
    format!("time nc -w 3 {ip} {port} </dev/null")
}

/// Seconds of the `real` line busybox `time` printed, if any.
fn real_seconds(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.trim_start().starts_with("real"))?;
    let value = line.trim_start().strip_prefix("real")?.trim();
    let (min, sec) = value.split_once('m')?;
    let min: f64 = min.trim().parse().ok()?;
    let sec: f64 = sec.trim().trim_end_matches('s').parse().ok()?;
    Some(min * 60.0 + sec)
}

struct Checked {
    results: BTreeMap<String, (String, i32)>,
    raw: String,
}

impl Checked {
    fn get(&self, name: &str) -> (String, i32) {
        self.results.get(name).cloned().unwrap_or_default()
    }

    /// Check `name` exited 0 and printed `needle`.
    fn ok(&self, name: &str, needle: &str) -> Result<()> {
        let (text, rc) = self.get(name);
        ensure!(
            rc == 0 && text.contains(needle),
            "{name}: expected success printing {needle:?}, got rc={rc}: {text:?}\nall output:\n{}",
            self.raw
        );
        Ok(())
    }

    /// Check `name` failed with "Connection refused" (a reset, not a timeout), printed no
    /// greeting, and took well under the 3 s `nc` timeout by busybox `time` (a bound for "not
    /// a timeout", not a latency figure: on a loaded 2-core machine starting `nc` in gVisor
    /// alone can take 100 ms; `scripts/bench-egress.sh` measures the refusal latency).
    fn refused_fast(&self, name: &str) -> Result<()> {
        let (text, rc) = self.get(name);
        ensure!(
            rc != 0 && text.contains("Connection refused") && !text.contains("hello"),
            "{name}: expected \"Connection refused\", got rc={rc}: {text:?}\nall output:\n{}",
            self.raw
        );
        let took =
            real_seconds(&text).with_context(|| format!("{name}: no `real` time in {text:?}"))?;
        ensure!(
            took < REFUSED_WITHIN,
            "{name}: the refusal took {took} s (expected under {REFUSED_WITHIN} s: a reset, not a timeout)"
        );
        Ok(())
    }
}

/// Runs `checks` in container `id` through ExecSync.
fn check(env: &CriEnv, id: &str, checks: &[(&str, String)]) -> Result<Checked> {
    let out = env
        .cri
        .exec_sync(id, &["sh", "-c", &check_script(checks)], 60)?;
    Ok(Checked {
        results: check_results(&out.stdout),
        raw: format!("{}{}", out.stdout, out.stderr),
    })
}

/// Waits for an event in the CRI containerd's audit file that `matches`; fails listing the
/// network events seen.
fn wait_audit(env: &CriEnv, what: &str, matches: impl Fn(&Value) -> bool) -> Result<Value> {
    let path = env.containerd.audit_path();
    let events = || safehouse_integration::lab::audit_lines(&path);
    let found = wait_for(what, Duration::from_secs(10), || {
        Ok(events().into_iter().find(|e| matches(e)))
    });
    found.with_context(|| {
        let seen: Vec<String> = events()
            .iter()
            .filter(|e| e["category"] == "network")
            .map(|e| e.to_string().chars().take(400).collect())
            .collect();
        format!(
            "no audit event: {what} in {}; network events:\n  {}",
            path.display(),
            seen.join("\n  ")
        )
    })
}

/// The `safehouse_` tables in named namespace `netns` with their full listing.
fn safehouse_tables(netns: &str) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for table in tables_in(Some(netns))?
        .into_iter()
        .filter(|t| t.contains("safehouse_"))
    {
        let mut argv = vec!["netns", "exec", netns, "nft", "list", "table"];
        argv.extend(table.split_whitespace());
        let listing = run_args("ip", &argv, Duration::from_secs(10))?.ok()?;
        found.push((table, listing.stdout));
    }
    Ok(found)
}

/// One running pod of a scenario: its id, its CNI namespace and the test hosts joined to it.
struct EgressPod {
    id: String,
    /// The pod's CRI name.
    name: String,
    /// The app container (busybox `sleep`).
    app: String,
    netns_name: String,
    lab: NetLab,
}

/// What identifies a pod's namespace once its name is gone.
struct PodTrace {
    id: String,
    netns: PathBuf,
    inode: u64,
}

/// What a scenario's pod gets.
struct PodNet<'a> {
    /// Pod name label.
    label: &'a str,
    /// The policy its annotation selects.
    policy: &'a str,
    /// Its CRI DNS servers (none: CRI's default).
    dns_servers: &'a [String],
    /// What host 0 answers in DNS.
    names: DnsNames<'a>,
    /// Whether host 0 also owns the metadata address.
    metadata: bool,
}

/// Runs a pod as `net` says, joins the hosts of `plan` to its namespace, starts a busybox
/// app container and hands all of it to `body`.
/// Afterwards the pod is stopped and removed through CRI (the harness's leak check runs), and
/// this checks that its network namespace is gone (nothing holds it) and the node's namespace
/// has no `safehouse_` table.
fn with_egress_pod(
    env: &CriEnv,
    net: &PodNet<'_>,
    plan: LabPlan,
    body: impl FnOnce(&EgressPod) -> Result<()>,
) -> Result<()> {
    let name = env.unique(net.label);
    let mut pod = env.pod_config(&name, &[(ANNOTATION, net.policy)]);
    if !net.dns_servers.is_empty() {
        pod.dns_config = Some(cri::DnsConfig {
            servers: net.dns_servers.to_vec(),
            ..Default::default()
        });
    }
    let mut trace = None;
    env.with_pod(&pod, HANDLER, |pod_id| {
        let netns = env
            .pod_netns(pod_id)?
            .with_context(|| format!("pod {pod_id}: CRI reports no network namespace"))?;
        trace = Some(PodTrace {
            id: pod_id.to_string(),
            netns: netns.clone(),
            inode: netns_inode(&netns)?,
        });
        let lab = plan.attach(&netns, net.names, net.metadata)?;
        let app = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("app", &["sleep", "1000"]),
        )?;
        let netns_name = lab.pod_netns.clone();
        let run = EgressPod {
            id: pod_id.to_string(),
            name: name.clone(),
            app: app.clone(),
            netns_name,
            lab,
        };
        body(&run)?;
        Ok(vec![app])
    })?;
    let trace = trace.context("the pod never ran")?;
    assert_network_gone(&trace)
}

/// After RemovePodSandbox: the pod's namespace path is gone, nothing keeps the namespace
/// alive, and the node's namespace has no `safehouse_` table.
fn assert_network_gone(trace: &PodTrace) -> Result<()> {
    let mut last = Vec::new();
    let gone = wait_for(
        &format!("the network namespace of pod {} to go", trace.id),
        Duration::from_secs(15),
        || {
            last = netns_holders(trace.inode);
            if trace.netns.exists() {
                last.push(format!("{} still exists", trace.netns.display()));
            }
            Ok(last.is_empty().then_some(()))
        },
    );
    if gone.is_err() {
        bail!(
            "pod {} removed, but its network namespace {} (with its safehouse_ table and forwarder socket) is still alive:\n  {}",
            trace.id,
            trace.netns.display(),
            last.join("\n  ")
        );
    }
    node_namespace_clean()
}

/// Fails unless named namespace `netns` holds exactly one `safehouse_` table, commented with
/// pod `pod_id`, whose rules mention every one of `present` and none of `absent`.
fn one_table_of(netns: &str, pod_id: &str, present: &[&str], absent: &[&str]) -> Result<()> {
    let tables = safehouse_tables(netns)?;
    ensure!(
        tables.len() == 1,
        "namespace {netns} of pod {pod_id}: expected one safehouse_ table, found {:?}",
        tables.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    let (table, listing) = &tables[0];
    ensure!(
        listing.contains(&format!("safehouse sandbox {pod_id}")),
        "table {table} in {netns} does not name pod {pod_id}:\n{listing}"
    );
    for p in present {
        ensure!(
            listing.contains(p),
            "table {table} of pod {pod_id} lacks {p}:\n{listing}"
        );
    }
    for a in absent {
        ensure!(
            !listing.contains(a),
            "table {table} of pod {pod_id} mentions {a}, which is not its policy's:\n{listing}"
        );
    }
    Ok(())
}

/// Connects to `argv[1]:argv[2]` and prints what the server sends.
const GREET: &str = "import socket,sys\nprint(socket.create_connection((sys.argv[1], int(sys.argv[2])), 3).recv(200).decode())\n";

/// A pod whose policy lists `H0:8080`: the container reaches it; H0:9090, another host and the
/// metadata address (routed to a test host that owns it) are refused at once (ECONNREFUSED,
/// not a timeout). The pod's namespace has the pod's one table; after the pod, nothing remains.
pub fn allowlist_through_pod(env: &CriEnv) -> Result<()> {
    let plan = NetLab::plan(2);
    let (h0, h1) = (plan.ips[0].clone(), plan.ips[1].clone());
    let policy = policy_name(env, "cri-egress-ports");
    install_policy(
        env,
        &policy,
        &format!(r#"{{mode: allowlist, egress: ["{h0}:8080"]}}"#),
    )?;
    let net = PodNet {
        label: "egress-ports",
        policy: &policy,
        dns_servers: &[],
        names: &[],
        metadata: true,
    };
    with_egress_pod(env, &net, plan, |pod| {
        let greeting = &pod.lab.hosts[0].greeting;
        let checks = [
            ("allowed", nc(&h0, 8080)),
            ("other-port", nc(&h0, 9090)),
            ("other-host", nc(&h1, 8080)),
            ("metadata", nc(METADATA, 8080)),
        ];
        let r = check(env, &pod.app, &checks)?;
        r.ok("allowed", &format!("{greeting} port 8080"))?;
        r.refused_fast("other-port")?;
        r.refused_fast("other-host")?;
        r.refused_fast("metadata")?;
        // The refused destinations are alive: each answers from its own namespace. (Not from
        // the pod's namespace outside the sandbox: the table filters that whole namespace.)
        for (host, ip, port) in [
            (&pod.lab.hosts[0], &h0, "9090"),
            (&pod.lab.hosts[1], &h1, "8080"),
        ] {
            let out = host.python(GREET, &[ip, port])?;
            ensure!(
                out.stdout.contains(&host.greeting),
                "test host {ip}:{port} does not answer even locally, so its refusal proves nothing: {}",
                out.describe()
            );
        }
        // The refused connect is an audit event of the app container, in the pod's sandbox,
        // naming the pod.
        wait_audit(
            env,
            "a refused connect to port 9090 of the app container",
            |e| {
                e["category"] == "network"
                    && e["action"] == "connect"
                    && e["network"]["ip"] == h0.as_str()
                    && e["network"]["port"] == 9090
                    && e["result"]["errno_name"] == "ECONNREFUSED"
                    && e["container_id"] == pod.app.as_str()
                    && e["sandbox_id"] == pod.id.as_str()
                    && e["pod"]["name"] == pod.name.as_str()
            },
        )?;
        one_table_of(&pod.netns_name, &pod.id, &[&h0], &[&h1])?;
        node_namespace_clean()
    })
}

/// TTL of the short-lived answer in the names scenario, seconds; the checker sleeps past it.
const BRIEF_TTL: u32 = 2;

/// A pod whose policy lists `api.test:8080`, with the test's DNS server (host 0) as its CRI
/// DNS server: the container's resolv.conf points at the forwarder, `api.test` resolves to
/// host 1 and connects on 8080 only, `evil.test` is not resolved (and never reaches the
/// upstream) and host 2, which it would name, is refused; `brief.test` (host 2, a 2 s TTL)
/// opens host 2 until its answer expires. While the pod runs its namespace
/// has the forwarder's socket and the table; afterwards nothing of them remains.
pub fn names_through_pod(env: &CriEnv) -> Result<()> {
    let plan = NetLab::plan(3);
    let (h0, h1, h2) = (
        plan.ips[0].clone(),
        plan.ips[1].clone(),
        plan.ips[2].clone(),
    );
    let policy = policy_name(env, "cri-egress-names");
    install_policy(
        env,
        &policy,
        r#"{mode: allowlist, egress: ["api.test:8080", "brief.test:8080"]}"#,
    )?;
    let names = [
        ("api.test", h1.as_str(), 300),
        ("evil.test", h2.as_str(), 300),
        ("brief.test", h2.as_str(), BRIEF_TTL),
    ];
    let net = PodNet {
        label: "egress-names",
        policy: &policy,
        dns_servers: std::slice::from_ref(&h0),
        names: &names,
        metadata: false,
    };
    with_egress_pod(env, &net, plan, |pod| {
        let checks = [
            ("resolv", "cat /etc/resolv.conf".to_string()),
            ("before", nc(&h1, 8080)),
            ("lookup-listed", "nslookup api.test".to_string()),
            ("listed", nc(&h1, 8080)),
            ("listed-other-port", nc(&h1, 9090)),
            ("lookup-unlisted", "nslookup evil.test".to_string()),
            ("unlisted", nc(&h2, 8080)),
            ("lookup-brief", "nslookup brief.test".to_string()),
            ("brief", nc(&h2, 8080)),
            (
                "expired",
                format!("sleep {}; {}", BRIEF_TTL * 2 + 1, nc(&h2, 8080)),
            ),
        ];
        let r = check(env, &pod.app, &checks)?;
        r.ok("resolv", "nameserver 127.0.0.53")?;
        r.refused_fast("before")?;
        r.ok("lookup-listed", &h1)?;
        r.ok(
            "listed",
            &format!("{} port 8080", pod.lab.hosts[1].greeting),
        )?;
        r.refused_fast("listed-other-port")?;
        let (unlisted, _) = r.get("lookup-unlisted");
        ensure!(
            !unlisted.contains(&h2),
            "an unlisted name was resolved: {unlisted:?}"
        );
        r.refused_fast("unlisted")?;
        // An address learned from a short-lived answer is open until the answer expires.
        r.ok("lookup-brief", &h2)?;
        r.ok("brief", &format!("{} port 8080", pod.lab.hosts[2].greeting))?;
        r.refused_fast("expired")?;
        let upstream = pod.lab.hosts[0].log();
        ensure!(
            upstream.contains("query api.test") && !upstream.contains("evil.test"),
            "the upstream (the pod's CRI DNS server) should see the listed name only: {upstream:?}"
        );
        // The forwarder's socket and the table are there while the pod runs (so the
        // check after the pod can see them go).
        let plumbing = pod.lab.leftovers()?;
        ensure!(
                plumbing.iter().any(|l| l.contains("127.0.0.53"))
                    && plumbing.iter().any(|l| l.contains("safehouse_")),
                "the running pod's namespace should hold the forwarder socket and the table: {plumbing:?}"
            );
        Ok(())
    })
}

/// Two pods at once with different allowlists (pod A: its host 0, pod B: its host 1, each
/// with its own test hosts): each reaches its own entry only, each namespace holds exactly
/// its pod's table, naming its entry and not the other's, and the node's namespace none.
pub fn two_pods_keep_their_own_rules(env: &CriEnv) -> Result<()> {
    let (plan_a, plan_b) = (NetLab::plan(2), NetLab::plan(2));
    let (a0, a1) = (plan_a.ips[0].clone(), plan_a.ips[1].clone());
    let (b0, b1) = (plan_b.ips[0].clone(), plan_b.ips[1].clone());
    let (policy_a, policy_b) = (
        policy_name(env, "cri-egress-a"),
        policy_name(env, "cri-egress-b"),
    );
    install_policy(
        env,
        &policy_a,
        &format!(r#"{{mode: allowlist, egress: ["{a0}:8080"]}}"#),
    )?;
    install_policy(
        env,
        &policy_b,
        &format!(r#"{{mode: allowlist, egress: ["{b1}:8080"]}}"#),
    )?;
    let net = |label, policy| PodNet {
        label,
        policy,
        dns_servers: &[],
        names: &[],
        metadata: false,
    };
    with_egress_pod(env, &net("egress-a", &policy_a), plan_a, |a| {
        with_egress_pod(env, &net("egress-b", &policy_b), plan_b, |b| {
            let ra = check(
                env,
                &a.app,
                &[("own", nc(&a0, 8080)), ("other", nc(&a1, 8080))],
            )?;
            let rb = check(
                env,
                &b.app,
                &[("own", nc(&b1, 8080)), ("other", nc(&b0, 8080))],
            )?;
            ra.ok("own", &format!("{} port 8080", a.lab.hosts[0].greeting))?;
            ra.refused_fast("other")?;
            rb.ok("own", &format!("{} port 8080", b.lab.hosts[1].greeting))?;
            rb.refused_fast("other")?;
            ensure!(
                a.netns_name != b.netns_name,
                "both pods got namespace {}",
                a.netns_name
            );
            one_table_of(&a.netns_name, &a.id, &[&a0], &[&b1, &a1])?;
            one_table_of(&b.netns_name, &b.id, &[&b1], &[&a0, &b0])?;
            node_namespace_clean()
        })?;
        // Pod B is gone; pod A's rules are untouched.
        let ra = check(
            env,
            &a.app,
            &[("own", nc(&a0, 8080)), ("other", nc(&a1, 8080))],
        )?;
        ra.ok("own", &format!("{} port 8080", a.lab.hosts[0].greeting))?;
        ra.refused_fast("other")?;
        one_table_of(&a.netns_name, &a.id, &[&a0], &[&b1])
    })
}

/// Connects to `argv[1]:7070` and prints `connected` or the exception's name.
const INBOUND: &str = "import socket,sys\ntry:\n    socket.create_connection((sys.argv[1], 7070), timeout=3).close(); print('connected')\nexcept Exception as e:\n    print(type(e).__name__)\n";

/// A pod whose policy lists UDP to `H0/32:5353` and inbound from `H0/32:7070`: a datagram to
/// host 0 arrives, one to host 1 never does (host 1's own log), ping to host 1 fails; a
/// listener in the container is reachable from host 0 and refused at once to host 1.
pub fn udp_icmp_and_inbound_through_pod(env: &CriEnv) -> Result<()> {
    let plan = NetLab::plan(2);
    let (h0, h1) = (plan.ips[0].clone(), plan.ips[1].clone());
    let policy = policy_name(env, "cri-egress-udp");
    install_policy(
        env,
        &policy,
        &format!(
            r#"{{mode: allowlist, egress: ["{h0}/32:{UDP_PORT}"], ingress: ["{h0}/32:7070"]}}"#
        ),
    )?;
    let net = PodNet {
        label: "egress-udp",
        policy: &policy,
        dns_servers: &[],
        names: &[],
        metadata: false,
    };
    with_egress_pod(env, &net, plan, |pod| {
        // busybox has no UDP nc: tftp sends one datagram naming the file (the responder logs
        // it) and gives up on the echo it gets back.
        let tftp = |ip: &str, file: &str| {
            format!("timeout 4 tftp -g -r {file} -l /dev/null {ip} {UDP_PORT}")
        };
        let checks = [
            ("udp-allowed", tftp(&h0, "cri-udp-allowed")),
            ("udp-denied", tftp(&h1, "cri-udp-denied")),
            ("icmp-denied", format!("ping -c 1 -W 2 {h1}")),
        ];
        let r = check(env, &pod.app, &checks)?;
        let (icmp, icmp_rc) = r.get("icmp-denied");
        ensure!(
            icmp_rc != 0 && !icmp.contains(" 0% packet loss"),
            "ping to an unlisted host succeeded: {icmp:?}"
        );
        let (h0_log, h1_log) = (pod.lab.hosts[0].log(), pod.lab.hosts[1].log());
        ensure!(
            h0_log.contains("cri-udp-allowed"),
            "the listed host's log lacks the datagram: {h0_log:?}\nchecker:\n{}",
            r.raw
        );
        ensure!(
            !h1_log.contains("cri-udp-denied"),
            "the unlisted host received the datagram: {h1_log:?}"
        );

        // Inbound: busybox httpd daemonises inside the sandbox and keeps listening.
        let started = env
            .cri
            .exec_sync(&pod.app, &["httpd", "-p", "7070", "-h", "/"], 10)?;
        ensure!(started.exit_code == 0, "httpd did not start: {started:?}");
        // The pod's address on each host's link (`.2` of the host's /24).
        let pod_on = |ip: &str| format!("{}.2", ip.rsplit_once('.').map_or(ip, |(n, _)| n));
        let listed = &pod.lab.hosts[0];
        wait_for(
            "the ingress source to connect to the pod",
            Duration::from_secs(20),
            || {
                let out = listed.python(INBOUND, &[&pod_on(&h0)])?;
                Ok(out.stdout.contains("connected").then_some(()))
            },
        )?;
        let other = pod.lab.hosts[1].python(INBOUND, &[&pod_on(&h1)])?;
        ensure!(
            other.stdout.contains("ConnectionRefusedError"),
            "a source not in ingress should be refused at once: {}",
            other.describe()
        );
        Ok(())
    })
}
