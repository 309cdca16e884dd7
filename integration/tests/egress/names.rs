//! Host-name entries through the sandbox's DNS forwarder: a listed name resolves (the test's
//! own DNS server on a test host is the upstream) and its address connects until the answer's
//! TTL runs out; an unlisted name is refused by the forwarder and never reaches the upstream,
//! and the address it would have given stays closed. Every query is an audit event. The
//! forwarder answers queries side by side (an upstream that never answers holds up none but its
//! own) and asks the upstream over TCP what the sandbox asked over TCP (an answer too large for
//! UDP arrives whole, and its addresses open).

use anyhow::{ensure, Result};
use safehouse_integration::netlab::NetLab;
use safehouse_integration::TestEnv;

use crate::lab::Lab;
use crate::probe::{no_leftovers, ok, refused, results, script};

/// TTL of the short-lived answer, seconds; the checker sleeps past it.
const BRIEF_TTL: u32 = 2;

pub fn listed_names_resolve_and_connect_until_their_ttl(env: &TestEnv) -> Result<()> {
    // Host 0 is the upstream DNS server; the names point at hosts 1 and 2.
    let net = start_with_names()?;
    let (h0, h1, h2) = (&net.hosts[0], &net.hosts[1], &net.hosts[2]);
    let lab = Lab::new(env, "egress-names")?;
    lab.config_keys(&format!("dns_upstreams = [{:?}]", h0.ip))?;
    lab.policy(
        "names",
        r#"{network: {mode: allowlist, egress: ["api.test:8080", "brief.test:8080"]}}"#,
    )?;
    let id = env.id("egress-names");
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        let nc = |ip: &str| format!("nc -w 3 {ip} 8080 </dev/null");
        let checks = [
            ("resolv", "cat /etc/resolv.conf".to_string()),
            ("before", nc(&h1.ip)),
            ("lookup-listed", "nslookup api.test".to_string()),
            ("listed", nc(&h1.ip)),
            (
                "listed-other-port",
                format!("nc -w 3 {} 9090 </dev/null", h1.ip),
            ),
            ("lookup-unlisted", "nslookup evil.test".to_string()),
            ("unlisted", nc(&h2.ip)),
            // Straight to the upstream, bypassing the forwarder: port 53 there is closed to the
            // sandbox (only the forwarder's marked socket may reach it).
            ("direct", format!("nslookup direct.test {}", h0.ip)),
            ("lookup-brief", "nslookup brief.test".to_string()),
            ("brief", nc(&h2.ip)),
            (
                "expired",
                format!("sleep {}; {}", BRIEF_TTL * 2 + 1, nc(&h2.ip)),
            ),
        ];
        let out = lab.run(
            Some("names"),
            &["--rm", "--with-ns", &with_ns],
            &id,
            &["sh", "-c", &script(&checks)],
        )?;
        let r = results(&out);
        ok(&r, "resolv", "nameserver 127.0.0.53", &out)?;
        refused(&r, "before", "Connection refused", "hello", &out)?;
        ok(&r, "lookup-listed", &h1.ip, &out)?;
        ok(&r, "listed", &format!("{} port 8080", h1.greeting), &out)?;
        refused(&r, "listed-other-port", "Connection refused", "hello", &out)?;
        let (unlisted, _) = r.get("lookup-unlisted").cloned().unwrap_or_default();
        ensure!(
            !unlisted.contains(&h2.ip),
            "an unlisted name was resolved: {}",
            out.describe()
        );
        refused(&r, "unlisted", "Connection refused", "hello", &out)?;
        ok(&r, "lookup-brief", &h2.ip, &out)?;
        ok(&r, "brief", &format!("{} port 8080", h2.greeting), &out)?;
        refused(&r, "expired", "Connection refused", "hello", &out)?;
        let upstream = h0.log();
        ensure!(
            upstream.contains("query api.test")
                && !upstream.contains("evil.test")
                && !upstream.contains("direct.test"),
            "the upstream should see the listed name only: {upstream}"
        );
        lab.wait_audit(&id, "the refused query", |e| {
            e["action"] == "dns"
                && e["detail"]["query"] == "evil.test"
                && e["detail"]["verdict"] == "refused"
        })?;
        lab.wait_audit(&id, "the allowed query with its address", |e| {
            e["action"] == "dns"
                && e["detail"]["query"] == "api.test"
                && e["detail"]["verdict"] == "allowed"
                && e["detail"]["addresses"][0] == h1.ip.as_str()
        })?;
        no_leftovers(&net)
    })
}

pub fn slow_upstream_answers_hold_up_nothing_and_tcp_gets_whole_answers(
    env: &TestEnv,
) -> Result<()> {
    // Host 0 answers api.test with host 1, many.test with host 2 first among 40 records (too
    // many for UDP), and never answers hold.test.
    let net = NetLab::start_named(3, |hosts| {
        vec![
            ("api.test".to_string(), hosts[1].clone(), 300),
            ("many.test".to_string(), hosts[2].clone(), 300),
            ("hold.test".to_string(), hosts[1].clone(), 300),
        ]
    })?;
    let (h0, h1, h2) = (&net.hosts[0], &net.hosts[1], &net.hosts[2]);
    let lab = Lab::new(env, "egress-dns")?;
    lab.config_keys(&format!("dns_upstreams = [{:?}]", h0.ip))?;
    lab.policy(
        "dns",
        r#"{network: {mode: allowlist, egress: ["api.test:8080", "many.test:8080", "hold.test:8080"]}}"#,
    )?;
    let id = env.id("egress-dns");
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        // A DNS-over-TCP query for many.test (id 0x1234, RD), the stream kept open long enough
        // for the answer; wc counts the bytes of the length-prefixed answer.
        let tcp_query =
            r"(printf '\000\033\0224\001\000\000\001\000\000\000\000\000\000\004many\004test\000\000\001\000\001'; sleep 2) | nc -w 3 127.0.0.53 53 | wc -c";
        let checks = [
            // Held at the upstream in the background while the next lookup goes through.
            (
                "hold",
                "(nslookup hold.test >/dev/null 2>&1 &); sleep 1; echo sent".to_string(),
            ),
            ("lookup-listed", "nslookup api.test".to_string()),
            ("before", format!("nc -w 3 {} 8080 </dev/null", h2.ip)),
            ("tcp", tcp_query.to_string()),
            ("after", format!("nc -w 3 {} 8080 </dev/null", h2.ip)),
        ];
        let out = lab.run(
            Some("dns"),
            &["--rm", "--with-ns", &with_ns],
            &id,
            &["sh", "-c", &script(&checks)],
        )?;
        let r = results(&out);
        ok(&r, "hold", "sent", &out)?;
        ok(&r, "lookup-listed", &h1.ip, &out)?;
        refused(&r, "before", "Connection refused", "hello", &out)?;
        // 2 + 12 + 15 + 40 * 16 bytes: every record, not the truncated UDP answer.
        let (bytes, _) = r.get("tcp").cloned().unwrap_or_default();
        ensure!(
            bytes.split_whitespace().next().and_then(|n| n.parse::<usize>().ok()) == Some(669),
            "the TCP answer for many.test should be 669 bytes, got {bytes:?}\n{}",
            out.describe()
        );
        ok(&r, "after", &format!("{} port 8080", h2.greeting), &out)?;
        let upstream = h0.log();
        ensure!(
            upstream.contains("query many.test 1 tcp") && upstream.contains("query hold.test"),
            "the upstream should see many.test over TCP and the held query: {upstream}"
        );
        // The held query fails only when its upstream time is up, after api.test was answered:
        // a forwarder asking one query at a time would have answered api.test after it.
        lab.wait_audit(&id, "the held query's failure", |e| {
            e["detail"]["query"] == "hold.test" && e["detail"]["verdict"] == "failed"
        })?;
        let order: Vec<String> = lab
            .audit_events(&id)
            .iter()
            .filter(|e| e["action"] == "dns")
            .map(|e| {
                format!(
                    "{}:{}",
                    e["detail"]["query"].as_str().unwrap_or_default(),
                    e["detail"]["verdict"].as_str().unwrap_or_default()
                )
            })
            .collect();
        let api = order.iter().position(|q| q == "api.test:allowed");
        let held = order.iter().position(|q| q == "hold.test:failed");
        ensure!(
            matches!((api, held), (Some(a), Some(h)) if a < h),
            "api.test should be answered while hold.test waits: dns events {order:?}"
        );
        lab.wait_audit(&id, "the TCP answer's 40 addresses", |e| {
            e["detail"]["query"] == "many.test"
                && e["detail"]["verdict"] == "allowed"
                && e["detail"]["addresses"].as_array().map(Vec::len) == Some(40)
        })?;
        no_leftovers(&net)
    })
}

/// Three hosts; host 0 answers `api.test` with host 1's address (TTL 300), `evil.test` and
/// `brief.test` with host 2's (TTL 300 and [`BRIEF_TTL`]).
fn start_with_names() -> Result<NetLab> {
    NetLab::start_named(3, |hosts| {
        vec![
            ("api.test".to_string(), hosts[1].clone(), 300),
            ("evil.test".to_string(), hosts[2].clone(), 300),
            ("brief.test".to_string(), hosts[2].clone(), BRIEF_TTL),
        ]
    })
}
