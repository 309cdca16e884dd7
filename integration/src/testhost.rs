//! Test hosts for network scenarios: a private "pod" network namespace joined by a veth pair to
//! a private "host" namespace where a tiny python3 TCP server answers with a fixed greeting.
//! Everything (namespaces, veth, server) is created here and removed on drop; no traffic ever
//! leaves these namespaces.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::command::{run_args, wait_for, Running};

const IP_TIMEOUT: Duration = Duration::from_secs(10);
static NEXT: AtomicU32 = AtomicU32::new(1);

/// The server: sends the greeting to every client and closes (so busybox `nc` with stdin at
/// EOF prints it); prints "ready" once listening.
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(sys.argv[3].encode() + b"\n")
    except OSError:
        pass
    c.close()
"#;

/// A pod namespace with a route to one test host.
pub struct TestHost {
    /// The pod side namespace name (`/var/run/netns/<name>`), for `ctr run --with-ns`.
    pub pod_netns: String,
    /// The test host's namespace name.
    pub host_netns: String,
    /// The test host's address, reachable from the pod namespace.
    pub host_ip: String,
    /// The pod side address.
    pub pod_ip: String,
    /// The port the server listens on.
    pub port: u16,
    /// What the server sends to every client.
    pub greeting: String,
    server: Option<Running>,
}

impl TestHost {
    /// Creates both namespaces, the veth pair and starts the server.
    pub fn start(port: u16) -> Result<TestHost> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id());
        let subnet = 1 + (std::process::id() + n) % 250;
        let mut host = TestHost {
            pod_netns: format!("sfh-pod-{tag}"),
            host_netns: format!("sfh-host-{tag}"),
            host_ip: format!("10.201.{subnet}.1"),
            pod_ip: format!("10.201.{subnet}.2"),
            port,
            greeting: format!("hello-from-testhost-{tag}"),
            server: None,
        };
        host.create_namespaces(&tag)
            .context("creating the test host namespaces")?;
        host.start_server()?;
        Ok(host)
    }

    /// The path of the pod namespace, for `--with-ns network:PATH`.
    pub fn pod_netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.pod_netns)
    }

    fn create_namespaces(&mut self, tag: &str) -> Result<()> {
        let pod_if = format!("sfp{tag}");
        let host_if = format!("sfh{tag}");
        let (pod, host) = (self.pod_netns.as_str(), self.host_netns.as_str());
        let pod_cidr = format!("{}/24", self.pod_ip);
        let host_cidr = format!("{}/24", self.host_ip);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", pod],
            vec!["netns", "add", host],
            vec![
                "link", "add", &pod_if, "netns", pod, "type", "veth", "peer", "name", &host_if,
                "netns", host,
            ],
            vec!["-n", pod, "addr", "add", &pod_cidr, "dev", &pod_if],
            vec!["-n", host, "addr", "add", &host_cidr, "dev", &host_if],
            vec!["-n", pod, "link", "set", "lo", "up"],
            vec!["-n", host, "link", "set", "lo", "up"],
            vec!["-n", pod, "link", "set", &pod_if, "up"],
            vec!["-n", host, "link", "set", &host_if, "up"],
        ];
        for step in steps {
            run_args("ip", &step, IP_TIMEOUT)?.ok()?;
        }
        Ok(())
    }

    fn start_server(&mut self) -> Result<()> {
        let python = if std::path::Path::new("/usr/bin/python3").is_file() {
            "/usr/bin/python3"
        } else {
            "python3"
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host_netns, python, "-c", SERVER])
            .arg(&self.host_ip)
            .arg(self.port.to_string())
            .arg(&self.greeting)
            .stdin(std::process::Stdio::null());
        let server = Running::start(&mut cmd)?;
        let ready = wait_for("the test host server", Duration::from_secs(10), || {
            Ok(server.stdout_so_far().contains("ready").then_some(()))
        });
        self.server = Some(server);
        if let Err(e) = ready {
            bail!("test host server did not start: {e:#}");
        }
        Ok(())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Dropping `Running` kills the server's process group (by the pid we started).
        self.server.take();
        for ns in [&self.pod_netns, &self.host_netns] {
            let _ = run_args("ip", &["netns", "del", ns.as_str()], IP_TIMEOUT);
        }
    }
}

/// Deletes the namespaces test hosts of this process created (for an interrupted run), after
/// killing their servers.
pub fn remove_leftover_namespaces() {
    let prefixes = [
        format!("sfh-pod-{}x", std::process::id()),
        format!("sfh-host-{}x", std::process::id()),
    ];
    crate::netlab::remove_namespaces_matching(|name| {
        prefixes.iter().any(|p| name.starts_with(p.as_str()))
    });
}
