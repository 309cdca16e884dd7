//! Address entries: what is listed answers, the rest is refused at once (TCP) or goes nowhere
//! (UDP, ICMP), the metadata address stays closed unless named, inbound needs `ingress`.

use anyhow::{ensure, Result};
use safehouse_integration::command::wait_for;
use safehouse_integration::netlab::{NetLab, METADATA, UDP_PORT};
use safehouse_integration::TestEnv;
use std::time::Duration;

use crate::lab::Lab;
use crate::probe::{no_leftovers, ok, refused, results, script};

fn nc(ip: &str, port: u16) -> String {
    format!("nc -w 3 {ip} {port} </dev/null")
}

/// `H0:8080` listed: it answers; H0:9090, an unlisted host (v4 and v6) are refused with a
/// reset at once, and the refused connect is an audit `network` event with ECONNREFUSED.
pub fn allowed_port_answers_the_rest_is_refused_at_once(env: &TestEnv) -> Result<()> {
    let net = NetLab::start(2, &[], false)?;
    let (h0, h1) = (&net.hosts[0], &net.hosts[1]);
    let lab = Lab::new(env, "egress-ports")?;
    lab.policy(
        "ports",
        &format!(
            r#"{{network: {{mode: allowlist, egress: ["{}:8080", "[{}/128]:8080"]}}}}"#,
            h0.ip, h0.ip6
        ),
    )?;
    let id = env.id("egress-ports");
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        let checks = [
            ("allowed", nc(&h0.ip, 8080)),
            ("allowed6", nc(&h0.ip6, 8080)),
            ("other-port", nc(&h0.ip, 9090)),
            ("other-host", nc(&h1.ip, 8080)),
            ("other-host6", nc(&h1.ip6, 8080)),
        ];
        let out = lab.run(
            Some("ports"),
            &["--rm", "--with-ns", &with_ns],
            &id,
            &["sh", "-c", &script(&checks)],
        )?;
        let r = results(&out);
        ok(&r, "allowed", &format!("{} port 8080", h0.greeting), &out)?;
        ok(&r, "allowed6", &format!("{} port 8080", h0.greeting), &out)?;
        refused(&r, "other-port", "Connection refused", "hello", &out)?;
        refused(&r, "other-host", "Connection refused", "hello", &out)?;
        refused(&r, "other-host6", "Connection refused", "hello", &out)?;
        lab.wait_audit(&id, "a refused connect to port 9090", |e| {
            e["category"] == "network"
                && e["action"] == "connect"
                && e["network"]["ip"] == h0.ip.as_str()
                && e["network"]["port"] == 9090
                && e["result"]["errno_name"] == "ECONNREFUSED"
        })?;
        no_leftovers(&net)
    })
}

/// UDP to a listed `cidr:port` arrives; UDP and ICMP to an unlisted host never arrive (the
/// host's own log shows nothing), and the refused datagram is a `policy`/`violation` event; a
/// raw socket cannot be opened.
pub fn udp_icmp_and_raw_to_unlisted_hosts_go_nowhere(env: &TestEnv) -> Result<()> {
    let net = NetLab::start(2, &[], false)?;
    let (h0, h1) = (&net.hosts[0], &net.hosts[1]);
    let lab = Lab::new(env, "egress-udp")?;
    lab.policy(
        "udp",
        &format!(
            r#"{{network: {{mode: allowlist, egress: ["{}/32:{UDP_PORT}"]}}, process: {{user: "0:0"}}}}"#,
            h0.ip
        ),
    )?;
    let id = env.id("egress-udp");
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        let checks = [
            // busybox has no UDP nc: tftp sends one datagram naming the file (the responder
            // logs it) and gives up on the echo it gets back.
            (
                "udp-allowed",
                format!(
                    "timeout 4 tftp -g -r udp-allowed -l /tmp/u {} {UDP_PORT}",
                    h0.ip
                ),
            ),
            (
                "udp-denied",
                format!(
                    "timeout 4 tftp -g -r udp-denied -l /tmp/u {} {UDP_PORT}",
                    h1.ip
                ),
            ),
            ("icmp-denied", format!("ping -c 1 -W 2 {}", h1.ip)),
        ];
        let out = lab.run(
            Some("udp"),
            &["--rm", "--with-ns", &with_ns],
            &id,
            &["sh", "-c", &script(&checks)],
        )?;
        let r = results(&out);
        let (icmp, icmp_rc) = r.get("icmp-denied").cloned().unwrap_or_default();
        ensure!(
            icmp_rc != 0 && !icmp.contains(" 0% packet loss"),
            "ping to an unlisted host succeeded: {}",
            out.describe()
        );
        // Raw sockets are not available to the sandbox at all (gVisor without --net-raw): busybox
        // ping needs one (or an ICMP datagram socket, which the filter then refuses).
        ensure!(
            icmp.contains("permission denied")
                || icmp.contains("Operation not permitted")
                || icmp.contains("100% packet loss")
                || icmp.contains("unreachable")
                || icmp.contains("prohibited"),
            "ping to an unlisted host should fail for want of a raw socket or be refused: {icmp:?}"
        );
        let log = h1.log();
        ensure!(
            !log.contains("udp-denied"),
            "the unlisted host received the datagram: {log}"
        );
        ensure!(
            h0.log().contains("udp-allowed"),
            "the listed host's log lacks the datagram: {}",
            h0.log()
        );
        // No trace point sees a refused datagram; the filter's log does, and the shim records it.
        let refused = lab.wait_audit(&id, "the refused datagram as a violation", |e| {
            e["category"] == "policy"
                && e["action"] == "violation"
                && e["violation"]["rule"] == "network.egress"
                && e["network"]["ip"] == h1.ip.as_str()
        })?;
        ensure!(
            refused["network"]["port"] == UDP_PORT
                && refused["network"]["protocol"] == 17
                && refused["violation"]["enforcement"] == "refused",
            "the refusal event names the wrong packet: {refused}"
        );
        // The table's count is read at delete, before the delete event: every refused packet
        // was recorded, so no `netfilter_log` drop is reported.
        lab.wait_audit(&id, "the delete event", |e| {
            e["category"] == "lifecycle" && e["action"] == "delete"
        })?;
        let events = lab.events_of(&id);
        let wrong: Vec<_> = events
            .iter()
            .filter(|e| e["violation"]["rule"] == "network.egress")
            .filter(|e| e["network"]["ip"] != h1.ip.as_str())
            .collect();
        ensure!(
            wrong.is_empty(),
            "refusals recorded for packets the policy allows: {wrong:?}"
        );
        let missed: Vec<_> = events
            .iter()
            .filter(|e| e["dropped"]["source"] == "netfilter_log")
            .collect();
        ensure!(
            missed.is_empty(),
            "refusals under the log's rate reported as unrecorded: {missed:?}"
        );
        no_leftovers(&net)
    })
}

/// `open`: any test host answers, the metadata address (routed to a test host that owns it)
/// is refused; a policy naming `169.254.169.254:8080` reaches it.
pub fn open_keeps_metadata_closed_unless_named(env: &TestEnv) -> Result<()> {
    let net = NetLab::start(1, &[], true)?;
    let h0 = &net.hosts[0];
    let lab = Lab::new(env, "egress-open")?;
    lab.policy("open", "{network: {mode: open}}")?;
    lab.policy(
        "metadata",
        &format!(r#"{{network: {{mode: open, egress: ["{METADATA}:8080"]}}}}"#),
    )?;
    let closed = env.id("egress-open");
    let named = env.id("egress-meta");
    env.scenario(&[&closed, &named], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        let checks = [("host", nc(&h0.ip, 9090)), ("metadata", nc(METADATA, 8080))];
        let flags = ["--rm", "--with-ns", with_ns.as_str()];
        let out = lab.run(
            Some("open"),
            &flags,
            &closed,
            &["sh", "-c", &script(&checks)],
        )?;
        let r = results(&out);
        ok(&r, "host", &format!("{} port 9090", h0.greeting), &out)?;
        refused(&r, "metadata", "Connection refused", "hello", &out)?;
        let out = lab.run(
            Some("metadata"),
            &flags,
            &named,
            &["sh", "-c", &script(&checks)],
        )?;
        let r = results(&out);
        ok(&r, "metadata", &format!("{} port 8080", h0.greeting), &out)?;
        no_leftovers(&net)
    })
}

/// A listener in the sandbox: a test host listed in `ingress` connects, another is refused.
pub fn inbound_refused_unless_ingress_lists_the_source(env: &TestEnv) -> Result<()> {
    let net = NetLab::start(2, &[], false)?;
    let (h0, h1) = (&net.hosts[0], &net.hosts[1]);
    let lab = Lab::new(env, "egress-ingress")?;
    lab.policy(
        "ingress",
        &format!(
            r#"{{network: {{mode: allowlist, egress: ["{}/32:9"], ingress: ["{}/32:7070"]}}}}"#,
            h0.ip, h0.ip
        ),
    )?;
    let id = env.id("egress-ingress");
    // The pod's address on each host's link.
    let pod_on = |h: &safehouse_integration::netlab::LabHost| {
        let (net, _) = h.ip.rsplit_once('.').unwrap_or((h.ip.as_str(), ""));
        format!("{net}.2")
    };
    let connect = "import socket,sys\ntry:\n    socket.create_connection((sys.argv[1], 7070), timeout=3).close(); print('connected')\nexcept Exception as e:\n    print(type(e).__name__)\n";
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        let server = lab.start(
            Some("ingress"),
            &["--rm", "--with-ns", &with_ns],
            &id,
            &["httpd", "-f", "-p", "7070", "-h", "/"],
        )?;
        let from_listed = wait_for(
            "the listed source to connect",
            Duration::from_secs(20),
            || {
                let out = h0.python(connect, &[&pod_on(h0)])?;
                Ok(out.stdout.contains("connected").then_some(()))
            },
        );
        let from_other = h1.python(connect, &[&pod_on(h1)]);
        let _ = env.ctr.run(&["task", "kill", "-s", "SIGKILL", &id]);
        let _ = server.wait(Duration::from_secs(20));
        from_listed?;
        let other = from_other?;
        ensure!(
            other.stdout.contains("ConnectionRefusedError"),
            "an unlisted source should be refused at once: {}",
            other.describe()
        );
        no_leftovers(&net)
    })
}
