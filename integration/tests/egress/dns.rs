//! The forwarder is not a channel: queries built by hand inside the sandbox (sent over TCP to
//! the forwarder) with two questions, an EDNS option carrying data, or a TXT/NULL/ANY type are
//! refused and never reach the upstream, whose own log shows every query it got carries one
//! question and at most an option-less EDNS section; names below a wildcard reach it at a
//! bounded rate. A listed name answering a private address (RFC 1918, loopback, ULA) does not
//! open it, and the refusal is recorded.

use anyhow::{ensure, Result};
use safehouse_integration::netlab::NetLab;
use safehouse_integration::TestEnv;

use crate::lab::Lab;
use crate::probe::{no_leftovers, ok, refused, results, script};

/// Names below one wildcard the forwarder asks the upstream for in a minute (the shim's
/// `wildcard::NAMES_PER_MINUTE`).
const WILDCARD_BOUND: usize = 30;

/// A DNS query (id 0x4242, RD) with `questions` and, if given, one additional record.
fn query(questions: &[(&str, u16)], additional: Option<&[u8]>) -> Vec<u8> {
    let mut q = vec![0x42, 0x42, 0x01, 0x00];
    q.extend_from_slice(&(questions.len() as u16).to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0]);
    q.extend_from_slice(&u16::from(additional.is_some()).to_be_bytes());
    for (name, qtype) in questions {
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
    }
    if let Some(extra) = additional {
        q.extend_from_slice(extra);
    }
    q
}

/// An EDNS OPT record carrying one option (code 65001) with `data`.
fn opt_with(data: &[u8]) -> Vec<u8> {
    let mut o = vec![0, 0, 41, 0x10, 0, 0, 0, 0, 0];
    o.extend_from_slice(&((data.len() + 4) as u16).to_be_bytes());
    o.extend_from_slice(&65001u16.to_be_bytes());
    o.extend_from_slice(&(data.len() as u16).to_be_bytes());
    o.extend_from_slice(data);
    o
}

/// A shell command sending `msg` over TCP to the forwarder and printing what came back,
/// filtered by `filter` (a shell pipeline stage).
fn over_tcp(msg: &[u8], filter: &str) -> String {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    let octal: String = framed.iter().map(|b| format!("\\{b:03o}")).collect();
    format!("(printf '{octal}'; sleep 1) | nc -w 2 127.0.0.53 53 | {filter}")
}

pub fn queries_carry_one_address_question_rebuilt(env: &TestEnv) -> Result<()> {
    let net = NetLab::start_named(2, |ips| vec![("api.test".into(), ips[1].clone(), 300)])?;
    let (h0, h1) = (&net.hosts[0], &net.hosts[1]);
    let lab = Lab::new(env, "egress-dnschan")?;
    lab.config_keys(&format!("dns_upstreams = [{:?}]", h0.ip))?;
    lab.policy(
        "chan",
        r#"{network: {mode: allowlist, egress: ["api.test:8080", "*.tun.test:8080"]}}"#,
    )?;
    let id = env.id("egress-dnschan");
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        let two = query(&[("api.test", 1), ("second-question.evil.test", 1)], None);
        let edns = query(&[("api.test", 1)], Some(&opt_with(b"exfil-edns-payload")));
        let checks = [
            ("two", over_tcp(&two, "wc -c")),
            ("edns", over_tcp(&edns, "wc -c")),
            (
                "txt",
                over_tcp(&query(&[("api.test", 16)], None), "grep -c txt-data"),
            ),
            ("null", over_tcp(&query(&[("api.test", 10)], None), "wc -c")),
            ("any", over_tcp(&query(&[("api.test", 255)], None), "wc -c")),
            ("lookup", "nslookup api.test".to_string()),
            ("listed", format!("nc -w 3 {} 8080 </dev/null", h1.ip)),
            (
                "tunnel",
                "i=0; while [ $i -lt 40 ]; do nslookup -type=a t$i.tun.test >/dev/null 2>&1; i=$((i+1)); done; echo asked".to_string(),
            ),
        ];
        let out = lab.run(
            Some("chan"),
            &["--rm", "--with-ns", &with_ns],
            &id,
            &["sh", "-c", &script(&checks)],
        )?;
        let r = results(&out);
        ok(&r, "lookup", &h1.ip, &out)?;
        ok(&r, "listed", &format!("{} port 8080", h1.greeting), &out)?;
        ok(&r, "tunnel", "asked", &out)?;
        // A TXT query gets no data back (grep finds nothing and fails).
        refused(&r, "txt", "0", "txt-data", &out)?;
        let upstream = h0.log();
        let queries: Vec<&str> = upstream.lines().filter(|l| l.starts_with("query ")).collect();
        ensure!(
            queries.iter().any(|l| l.starts_with("query api.test 1 ")),
            "the upstream should be asked for api.test: {upstream}"
        );
        for l in &queries {
            let t = l.split_whitespace().nth(2).unwrap_or_default();
            ensure!(
                l.contains(" qd=1 an=0 ns=0 ")
                    && (l.contains(" opt=- ") || l.contains(" opt=0 "))
                    && (t == "1" || t == "28"),
                "the upstream got a query carrying more than one address question: {l}\n{upstream}"
            );
        }
        let tunnelled = queries
            .iter()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|n| n.ends_with(".tun.test"))
            .collect::<std::collections::BTreeSet<_>>();
        ensure!(
            !tunnelled.is_empty() && tunnelled.len() <= WILDCARD_BOUND,
            "the upstream should see at most {WILDCARD_BOUND} names below *.tun.test, saw {}",
            tunnelled.len()
        );
        for (what, needle) in [
            ("two questions", "2 questions in one query"),
            ("an EDNS option", "EDNS options in a query"),
            ("a TXT query", "type TXT is not an address lookup"),
            ("a NULL query", "type NULL is not an address lookup"),
            ("an ANY query", "type ANY is not an address lookup"),
            ("the 31st name below the wildcard", "names below *.tun.test in a minute"),
        ] {
            lab.wait_audit(&id, what, |e| {
                e["action"] == "dns"
                    && e["detail"]["verdict"] == "refused"
                    && e["detail"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains(needle))
            })?;
        }
        no_leftovers(&net)
    })
}

pub fn answers_into_private_ranges_are_not_opened(env: &TestEnv) -> Result<()> {
    // Host 0 is the upstream; host 1 also owns a private address (routed from the pod), which
    // `ten.test` answers with.
    let private = "10.199.7.1";
    let net = NetLab::start_named(2, |_| {
        vec![
            ("ten.test".into(), private.into(), 300),
            ("loop.test".into(), "127.0.0.1".into(), 300),
            ("ula.test".into(), "fd00::1".into(), 300),
        ]
    })?;
    net.add_host_address(1, private)?;
    let (h0, h1) = (&net.hosts[0], &net.hosts[1]);
    let lab = Lab::new(env, "egress-rebind")?;
    lab.config_keys(&format!("dns_upstreams = [{:?}]", h0.ip))?;
    lab.policy(
        "rebind",
        r#"{network: {mode: allowlist, egress: ["ten.test:8080", "loop.test:8080", "ula.test:8080"]}}"#,
    )?;
    let id = env.id("egress-rebind");
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", net.pod_netns_path().display());
        let checks = [
            ("lookup-ten", "nslookup -type=a ten.test".to_string()),
            ("ten", format!("nc -w 3 {private} 8080 </dev/null")),
            ("lookup-loop", "nslookup -type=a loop.test".to_string()),
            ("lookup-ula", "nslookup -type=aaaa ula.test".to_string()),
        ];
        let out = lab.run(
            Some("rebind"),
            &["--rm", "--with-ns", &with_ns],
            &id,
            &["sh", "-c", &script(&checks)],
        )?;
        let r = results(&out);
        refused(&r, "ten", "Connection refused", &h1.greeting, &out)?;
        for (check, addr) in [
            ("lookup-ten", private),
            ("lookup-loop", "127.0.0.1"),
            ("lookup-ula", "fd00::1"),
        ] {
            let (text, _) = r.get(check).cloned().unwrap_or_default();
            ensure!(
                !text.contains(&format!("Address: {addr}"))
                    && !text.contains(&format!("Address 1: {addr}")),
                "{check}: the private answer reached the sandbox: {}",
                out.describe()
            );
        }
        for (name, range) in [
            ("ten.test", "10.0.0.0/8"),
            ("loop.test", "127.0.0.0/8"),
            ("ula.test", "fc00::/7"),
        ] {
            lab.wait_audit(&id, &format!("the refused answer for {name}"), |e| {
                e["action"] == "dns"
                    && e["detail"]["query"] == name
                    && e["detail"]["verdict"] == "refused"
                    && e["detail"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains(range))
            })?;
        }
        no_leftovers(&net)
    })
}
