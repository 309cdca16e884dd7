//! A known workload in one sandbox produces exactly the expected events: the exec of `cat`,
//! a read-only open of `/etc/hostname` (the image has none: the open fails with ENOENT,
//! and that attempt is what is recorded), a write open of `/tmp/out.txt`, a connect to a test
//! host, the shim's create/exit(7)/delete, every event stamped with the sandbox and namespace,
//! and a chain that `safehouse audit verify` accepts.

use anyhow::{ensure, Result};
use safehouse_integration::testhost::TestHost;
use safehouse_integration::TestEnv;
use serde_json::Value;

use crate::lab::{is, verify, Lab, Listing};

/// The policy of the workload: root, open network, every Sentry category recorded.
pub const RECORD_ALL: &str =
    "{process: {user: \"0:0\"}, network: {mode: open}, audit: {record: [process, file, network]}}";

/// The same without network access: `open` needs the container's own network namespace
/// (`--with-ns`), which only the workload scenario gives.
pub const RECORD_ALL_OFFLINE: &str =
    "{process: {user: \"0:0\"}, network: {mode: none}, audit: {record: [process, file, network]}}";

/// True when `event` is a `file`/`open` of `path`.
fn opens(event: &Value, path: &str) -> bool {
    is(event, "file", "open") && event["file"]["path"] == path
}

/// The open flag names of a `file` event.
fn flag_names(event: &Value) -> Vec<&str> {
    event["file"]["flag_names"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A short description of a Sentry event: what it did and to what.
fn summary(event: &Value) -> String {
    let kind = format!(
        "{}/{}",
        event["category"].as_str().unwrap_or("?"),
        event["action"].as_str().unwrap_or("?")
    );
    let what = match kind.as_str() {
        "process/exec" => {
            let argv: Vec<&str> = event["process"]["argv"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("{argv:?}")
        }
        "process/exit" => event["exit"]["code"].to_string(),
        "file/open" => format!(
            "{} {}",
            event["file"]["path"].as_str().unwrap_or("?"),
            event["file"]["access"].as_str().unwrap_or("?")
        ),
        "network/socket" => event["network"]["family"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        "network/connect" => format!(
            "{}:{}",
            event["network"]["ip"].as_str().unwrap_or("?"),
            event["network"]["port"]
        ),
        _ => event.to_string(),
    };
    format!("{kind} {what}")
}

/// Runs the workload and checks its events one by one.
pub fn known_workload_expected_events(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "workload")?;
    lab.policy("recorded", RECORD_ALL)?;
    let id = env.id("workload");
    let host = TestHost::start(8080)?;
    env.scenario(&[&id], || {
        let with_ns = format!("network:{}", host.pod_netns_path().display());
        let script = format!(
            "cat /etc/hostname >/dev/null; echo data > /tmp/out.txt; \
             nc -w 2 {} {} </dev/null; exit 7",
            host.host_ip, host.port
        );
        let flags = ["--rm", "--with-ns", with_ns.as_str()];
        let out = lab.run(Some("recorded"), &flags, &id, &["sh", "-c", &script])?;
        ensure!(
            out.code == Some(7),
            "workload should exit 7: {}",
            out.describe()
        );
        lab.wait_event(&id, "lifecycle/delete", |e| is(e, "lifecycle", "delete"))?;

        let all = lab.events()?;
        let events = lab.events_of(&id);
        let listing = Listing(&all);
        ensure!(
            events.len() == all.len(),
            "every event should carry sandbox_id {id}: {listing}"
        );
        let namespace = &env.ctr.namespace;
        ensure!(
            all.iter().all(|e| e["namespace"] == namespace.as_str()),
            "every event should carry namespace {namespace}: {listing}"
        );
        let find = |what: &str, f: &dyn Fn(&Value) -> bool| -> Result<Value> {
            events
                .iter()
                .find(|e| f(e))
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no {what} event: {listing}"))
        };

        let cat = find("process/exec of cat", &|e| {
            is(e, "process", "exec")
                && e["process"]["argv"]
                    .as_array()
                    .is_some_and(|a| a.first() == Some(&Value::from("cat")))
        })?;
        ensure!(
            cat["container_id"] == id.as_str()
                && cat["process"]["argv"] == serde_json::json!(["cat", "/etc/hostname"]),
            "exec of cat: {cat}"
        );

        let hostname = find("file/open of /etc/hostname", &|e| opens(e, "/etc/hostname"))?;
        ensure!(
            hostname["file"]["access"] == "read"
                && !flag_names(&hostname)
                    .iter()
                    .any(|f| { matches!(*f, "O_WRONLY" | "O_RDWR" | "O_CREAT" | "O_TRUNC") })
                && flag_names(&hostname).contains(&"O_RDONLY")
                && hostname["container_id"] == id.as_str(),
            "/etc/hostname should be opened read-only: {hostname}"
        );

        let written = find("file/open of /tmp/out.txt", &|e| opens(e, "/tmp/out.txt"))?;
        let names = flag_names(&written);
        ensure!(
            written["file"]["access"] == "write"
                && names.contains(&"O_WRONLY")
                && names.contains(&"O_CREAT")
                && written["result"]["errno"].is_null(),
            "/tmp/out.txt should be opened for writing and succeed: {written}"
        );

        let connect = find("network/connect", &|e| is(e, "network", "connect"))?;
        ensure!(
            connect["network"]["ip"] == host.host_ip.as_str()
                && connect["network"]["port"] == host.port
                && connect["network"]["family"] == "inet",
            "connect should name {}:{}: {connect}",
            host.host_ip,
            host.port
        );

        let exit = find("lifecycle/exit", &|e| is(e, "lifecycle", "exit"))?;
        ensure!(
            exit["exit"]["code"] == 7 && exit["exit"]["reason"] == "normal",
            "lifecycle exit should have code 7, reason normal: {exit}"
        );
        for action in ["create", "start", "delete"] {
            let n = events.iter().filter(|e| is(e, "lifecycle", action)).count();
            ensure!(
                n == 1,
                "one lifecycle/{action} expected, got {n}: {listing}"
            );
        }
        let first = &events[0];
        let last = &events[events.len() - 1];
        ensure!(
            is(first, "lifecycle", "create") && is(last, "lifecycle", "delete"),
            "the chain should open with create and close with delete: {listing}"
        );
        let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
        let expected: Vec<u64> = (1..=events.len() as u64).collect();
        ensure!(
            seqs == expected,
            "seq should count 1..={}: {seqs:?}",
            events.len()
        );

        // Exactly these, in this order: the Sentry's events come over one connection in the
        // order they happened; the shim's own events are listed apart (start may race with
        // container/start).
        let sentry: Vec<String> = events
            .iter()
            .filter(|e| e["category"] != "lifecycle")
            .map(summary)
            .collect();
        let target = format!("{}:{}", host.host_ip, host.port);
        let expected = [
            format!("process/exec {:?}", ["sh", "-c", script.as_str()]),
            "file/open /dev/null write".to_string(),
            "process/exec [\"cat\", \"/etc/hostname\"]".to_string(),
            "file/open /etc/hostname read".to_string(),
            "process/exit 1".to_string(),
            "file/open /tmp/out.txt write".to_string(),
            "file/open /dev/null read".to_string(),
            format!(
                "process/exec {:?}",
                [
                    "nc",
                    "-w",
                    "2",
                    host.host_ip.as_str(),
                    &host.port.to_string()
                ]
            ),
            "network/socket inet".to_string(),
            format!("network/connect {target}"),
            "process/exit 0".to_string(),
            "process/exit 7".to_string(),
        ];
        ensure!(
            sentry == expected,
            "the Sentry's events:\n  {}\nexpected:\n  {}",
            sentry.join("\n  "),
            expected.join("\n  ")
        );
        let lifecycle: Vec<&str> = events
            .iter()
            .filter(|e| e["category"] == "lifecycle")
            .filter_map(|e| e["action"].as_str())
            .collect();
        ensure!(
            lifecycle == ["create", "start", "exit", "delete"],
            "lifecycle events: {lifecycle:?}"
        );

        let verified = verify(&lab.audit)?;
        ensure!(
            verified.code == Some(0) && verified.stdout.contains("intact"),
            "audit verify should accept the file: {}",
            verified.describe()
        );
        Ok(())
    })
}
