//! A small network for egress scenarios: one "pod" network namespace (what the container is
//! given with `ctr run --with-ns network:PATH`, or what a CRI pod would get) joined by a veth
//! pair to each of several "host" namespaces. Every host runs one python3 responder: a TCP
//! greeting on [`TCP_PORTS`], a UDP echo on [`UDP_PORT`] and a DNS server on port 53 answering
//! the test's own names with the test's TTLs; it logs every UDP datagram and DNS query it sees,
//! so a scenario can tell "dropped" from "answered". Everything is created here and removed on
//! drop; no traffic leaves these namespaces. [`NetLab::attach`] joins the hosts to a pod
//! namespace someone else made (a CRI pod's, made by CNI) instead, and leaves that namespace
//! to its owner.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::command::{run_args, wait_for, Running};

const IP_TIMEOUT: Duration = Duration::from_secs(10);
static NEXT: AtomicU32 = AtomicU32::new(1);

/// TCP ports every host answers on (with `<greeting> port <n>`).
pub const TCP_PORTS: [u16; 2] = [8080, 9090];
/// UDP port every host echoes on (`echo:<data>`).
pub const UDP_PORT: u16 = 5353;
/// The cloud metadata address; [`NetLab::start`] can give it to host 0.
pub const METADATA: &str = "169.254.169.254";

/// The responder: TCP greetings, UDP echo, DNS (UDP and TCP) for the names in its config.
/// Prints `ready` once every socket is bound, `udp <src> <data>` and
/// `query <name> <type> <udp|tcp> qd=<questions> an=.. ns=.. ar=<additional records>
/// opt=<EDNS option bytes, or -> len=<bytes>` as they arrive. Two kinds of listed name behave specially:
/// one whose first label is `hold` is never answered; one whose first label is `many` gets 40 A
/// records (its address, then 198.51.100.1-39), too many for a 512-byte UDP answer, so over
/// UDP it is answered truncated (TC set, no records) and only TCP gets it whole.
const RESPONDER: &str = r#"
import json, socket, struct, sys, threading
cfg = json.loads(sys.argv[1])
def out(line):
    print(line, flush=True)
def tcp_sock(port):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(64); return s
def tcp_loop(s, port):
    while True:
        c, _ = s.accept()
        try:
            c.sendall(("%s port %d\n" % (cfg["greeting"], port)).encode())
        except OSError:
            pass
        c.close()
def udp_loop(s):
    while True:
        data, src = s.recvfrom(2048)
        out("udp %s %s" % (src[0], data.decode(errors="replace").strip()))
        s.sendto(b"echo:" + data, src)
def respond(q, udp):
    if len(q) < 17:
        return None
    pos, labels = 12, []
    while pos < len(q) and q[pos] != 0:
        n = q[pos]; labels.append(q[pos + 1:pos + 1 + n].decode(errors="replace")); pos += 1 + n
    qtype = struct.unpack("!H", q[pos + 1:pos + 3])[0]
    name = ".".join(labels).lower()
    qd, an, ns, ar = struct.unpack("!HHHH", q[4:12])
    opt = "-"
    end = pos + 5
    if ar and len(q) >= end + 11 and q[end] == 0 and struct.unpack("!H", q[end + 1:end + 3])[0] == 41:
        opt = "%d" % struct.unpack("!H", q[end + 9:end + 11])[0]
    out("query %s %d %s qd=%d an=%d ns=%d ar=%d opt=%s len=%d" % (name, qtype, "udp" if udp else "tcp", qd, an, ns, ar, opt, len(q)))
    question = q[12:pos + 5]
    rec = cfg["names"].get(name)
    if rec is None:
        return q[:2] + b"\x81\x83" + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question
    if labels[0] == "hold":
        return None
    addrs = [rec[0]]
    if labels[0] == "many":
        addrs += ["198.51.100.%d" % i for i in range(1, 40)]
    answers = b""
    count = 0
    if qtype == 1 and ":" not in rec[0]:
        for a in addrs:
            answers += b"\xc0\x0c\x00\x01\x00\x01" + struct.pack("!IH", rec[1], 4) + socket.inet_aton(a)
        count = len(addrs)
    if qtype == 28 and ":" in rec[0]:
        answers = b"\xc0\x0c\x00\x1c\x00\x01" + struct.pack("!IH", rec[1], 16) + socket.inet_pton(socket.AF_INET6, rec[0])
        count = 1
    if qtype == 16:
        data = b"txt-data-for-" + name.encode()
        answers = b"\xc0\x0c\x00\x10\x00\x01" + struct.pack("!IHB", rec[1], len(data) + 1, len(data)) + data
        count = 1
    reply = q[:2] + b"\x81\x80" + struct.pack("!HHHH", 1, count, 0, 0) + question + answers
    if udp and len(reply) > 512:
        reply = q[:2] + b"\x83\x80" + struct.pack("!HHHH", 1, 0, 0, 0) + question
    return reply
def dns_loop(s):
    while True:
        q, src = s.recvfrom(2048)
        r = respond(q, True)
        if r is not None:
            s.sendto(r, src)
def dns_tcp_conn(c):
    try:
        while True:
            n = c.recv(2)
            if len(n) < 2:
                break
            want = struct.unpack("!H", n)[0]; q = b""
            while len(q) < want:
                more = c.recv(want - len(q))
                if not more:
                    return
                q += more
            r = respond(q, False)
            if r is not None:
                c.sendall(struct.pack("!H", len(r)) + r)
    except OSError:
        pass
    finally:
        c.close()
def dns_tcp_loop(s):
    while True:
        c, _ = s.accept()
        threading.Thread(target=dns_tcp_conn, args=(c,), daemon=True).start()
tcps = [(tcp_sock(p), p) for p in cfg["tcp"]]
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
u.bind(("::", cfg["udp"]))
d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d.bind(("0.0.0.0", 53))
dt = socket.socket(socket.AF_INET); dt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
dt.bind(("0.0.0.0", 53)); dt.listen(16)
for s, p in tcps:
    threading.Thread(target=tcp_loop, args=(s, p), daemon=True).start()
threading.Thread(target=udp_loop, args=(u,), daemon=True).start()
threading.Thread(target=dns_loop, args=(d,), daemon=True).start()
threading.Thread(target=dns_tcp_loop, args=(dt,), daemon=True).start()
out("ready")
threading.Event().wait()
"#;

/// Labs with different addresses: each gets [`HOSTS_PER_LAB`] /24 links of 198.18.0.0/15.
const SUBNETS: u32 = 512 / HOSTS_PER_LAB;
/// Hosts a lab may have at most.
const HOSTS_PER_LAB: u32 = 4;

/// The first three octets of host `i`'s link in lab `subnet`: inside 198.18.0.0/15, the
/// range set aside for test networks (RFC 2544). Not a private range, so a listed name
/// answering a test host's address opens it (the forwarder refuses private answers no egress
/// range covers).
fn link_net(i: usize, subnet: u32) -> String {
    let k = subnet * HOSTS_PER_LAB + i as u32 % HOSTS_PER_LAB;
    format!("198.{}.{}", 18 + k / 256, k % 256)
}

/// One test host: its namespace, addresses and responder.
pub struct LabHost {
    /// Namespace name.
    pub netns: String,
    /// IPv4 address, reachable from the pod namespace.
    pub ip: String,
    /// IPv6 address, reachable from the pod namespace.
    pub ip6: String,
    /// What its TCP ports send.
    pub greeting: String,
    /// The pod side of its link: the interface's name in the pod namespace and its IPv4
    /// address there (a /24 with the host's).
    pub pod_if: String,
    /// See `pod_if`.
    pub pod_ip: String,
    server: Option<Running>,
}

impl LabHost {
    /// Everything the responder printed so far (`udp ...`, `query ...` lines).
    pub fn log(&self) -> String {
        self.server
            .as_ref()
            .map(Running::stdout_so_far)
            .unwrap_or_default()
    }

    /// Runs `python3 -c CODE ARGS...` inside this host's namespace (e.g. an inbound connect).
    pub fn python(&self, code: &str, args: &[&str]) -> Result<crate::command::Output> {
        let mut argv = vec!["netns", "exec", self.netns.as_str(), python(), "-c", code];
        argv.extend_from_slice(args);
        run_args("ip", &argv, Duration::from_secs(20))
    }
}

/// What one host answers in DNS: `name` → (address, TTL seconds): A records for an IPv4
/// address, one AAAA record for an IPv6 one, and a TXT record for any listed name.
pub type DnsNames<'a> = &'a [(&'a str, &'a str, u32)];

/// The addresses of a lab to be built ([`NetLab::plan`]).
pub struct LabPlan {
    tag: String,
    subnet: u32,
    /// The hosts' IPv4 addresses, in order.
    pub ips: Vec<String>,
}

impl LabPlan {
    /// The test hosts, joined to an existing named namespace `pod_netns`
    /// (`/var/run/netns/NAME`, e.g. the one CNI made for a CRI pod): veth pairs, addresses and
    /// routes are added to it, and the namespace itself is left alone on drop (its owner
    /// removes it). Host 0 serves the DNS names `names` and, with `metadata`, owns
    /// [`METADATA`].
    pub fn attach(self, pod_netns: &Path, names: DnsNames<'_>, metadata: bool) -> Result<NetLab> {
        let named = pod_netns
            .parent()
            .is_some_and(|d| d == Path::new("/var/run/netns") || d == Path::new("/run/netns"));
        let name = pod_netns.file_name().and_then(|n| n.to_str());
        let (true, Some(name)) = (named, name) else {
            bail!(
                "cannot attach test hosts to {}: not a named network namespace under /var/run/netns",
                pod_netns.display()
            );
        };
        if !pod_netns.exists() {
            bail!(
                "cannot attach test hosts to {}: no such namespace",
                pod_netns.display()
            );
        }
        let names: Vec<(String, String, u32)> = names
            .iter()
            .map(|(n, a, t)| (n.to_string(), a.to_string(), *t))
            .collect();
        self.build(move |_| names, metadata, Some(name.to_string()))
    }

    fn build(
        self,
        names: impl FnOnce(&[String]) -> Vec<(String, String, u32)>,
        metadata: bool,
        existing: Option<String>,
    ) -> Result<NetLab> {
        let LabPlan { tag, subnet, ips } = self;
        let hosts = ips.len();
        let names = names(&ips);
        let mut lab = NetLab {
            pod_netns: existing.clone().unwrap_or_else(|| format!("sfe-pod-{tag}")),
            pod_ip: format!("{}.2", link_net(0, subnet)),
            hosts: Vec::new(),
            owns_pod_netns: existing.is_none(),
        };
        if lab.owns_pod_netns {
            run_args("ip", &["netns", "add", &lab.pod_netns], IP_TIMEOUT)?.ok()?;
        }
        run_args(
            "ip",
            &["-n", &lab.pod_netns, "link", "set", "lo", "up"],
            IP_TIMEOUT,
        )?
        .ok()?;
        for i in 0..hosts {
            let host_names: &[(String, String, u32)] = if i == 0 { &names } else { &[] };
            let host = lab
                .add_host(i, &tag, subnet, host_names, metadata && i == 0)
                .with_context(|| format!("creating test host {i}"))?;
            lab.hosts.push(host);
        }
        Ok(lab)
    }
}

/// The pod namespace and its hosts.
pub struct NetLab {
    /// The pod namespace name (`/var/run/netns/<name>`).
    pub pod_netns: String,
    /// The pod side IPv4 address towards host 0.
    pub pod_ip: String,
    /// The hosts, in creation order.
    pub hosts: Vec<LabHost>,
    /// Whether the pod namespace is the lab's (deleted on drop) or attached to.
    owns_pod_netns: bool,
}

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

impl NetLab {
    /// A pod namespace with `hosts` test hosts; host 0 serves `names` in DNS and, with
    /// `metadata`, also owns [`METADATA`] (routed from the pod namespace).
    pub fn start(hosts: usize, names: DnsNames<'_>, metadata: bool) -> Result<NetLab> {
        let names: Vec<(String, String, u32)> = names
            .iter()
            .map(|(n, a, t)| (n.to_string(), a.to_string(), *t))
            .collect();
        NetLab::build(hosts, move |_| names, metadata, None)
    }

    /// Like [`NetLab::start`] without metadata, with host 0's DNS names made from the hosts'
    /// IPv4 addresses (known before they are created).
    pub fn start_named(
        hosts: usize,
        names: impl FnOnce(&[String]) -> Vec<(String, String, u32)>,
    ) -> Result<NetLab> {
        NetLab::build(hosts, names, false, None)
    }

    /// The addresses of a lab not built yet, for what must name them before the pod namespace
    /// exists (a CRI pod's policy and DNS servers are fixed at RunPodSandbox); build it with
    /// [`LabPlan::attach`].
    pub fn plan(hosts: usize) -> LabPlan {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet = (std::process::id() * 7 + n) % SUBNETS;
        LabPlan {
            tag: format!("{}x{n}", std::process::id()),
            subnet,
            ips: (0..hosts)
                .map(|i| format!("{}.1", link_net(i, subnet)))
                .collect(),
        }
    }

    fn build(
        hosts: usize,
        names: impl FnOnce(&[String]) -> Vec<(String, String, u32)>,
        metadata: bool,
        existing: Option<String>,
    ) -> Result<NetLab> {
        NetLab::plan(hosts).build(names, metadata, existing)
    }

    /// `/var/run/netns/<pod>`, for `--with-ns network:PATH`.
    pub fn pod_netns_path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.pod_netns)
    }

    fn add_host(
        &self,
        i: usize,
        tag: &str,
        subnet: u32,
        names: &[(String, String, u32)],
        metadata: bool,
    ) -> Result<LabHost> {
        let netns = format!("sfe-h{i}-{tag}");
        let pod_if = format!("sep{i}{tag}");
        let host_if = format!("seh{i}{tag}");
        let third = 210 + i as u32;
        let net = link_net(i, subnet);
        let ip = format!("{net}.1");
        let pod_ip = format!("{net}.2");
        let ip6 = format!("fd5a:{third}:{subnet}::1");
        let pod_ip6 = format!("fd5a:{third}:{subnet}::2");
        let pod = self.pod_netns.as_str();
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), netns.clone()],
            vec![
                "link".into(),
                "add".into(),
                pod_if.clone(),
                "netns".into(),
                pod.into(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                host_if.clone(),
                "netns".into(),
                netns.clone(),
            ],
            vec![
                "-n".into(),
                pod.into(),
                "addr".into(),
                "add".into(),
                format!("{pod_ip}/24"),
                "dev".into(),
                pod_if.clone(),
            ],
            vec![
                "-n".into(),
                netns.clone(),
                "addr".into(),
                "add".into(),
                format!("{ip}/24"),
                "dev".into(),
                host_if.clone(),
            ],
            vec![
                "-n".into(),
                pod.into(),
                "addr".into(),
                "add".into(),
                format!("{pod_ip6}/64"),
                "dev".into(),
                pod_if.clone(),
                "nodad".into(),
            ],
            vec![
                "-n".into(),
                netns.clone(),
                "addr".into(),
                "add".into(),
                format!("{ip6}/64"),
                "dev".into(),
                host_if.clone(),
                "nodad".into(),
            ],
            vec![
                "-n".into(),
                netns.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                pod.into(),
                "link".into(),
                "set".into(),
                pod_if.clone(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                netns.clone(),
                "link".into(),
                "set".into(),
                host_if.clone(),
                "up".into(),
            ],
        ];
        let mut host = LabHost {
            netns: netns.clone(),
            ip,
            ip6,
            greeting: format!("hello-from-{netns}"),
            pod_if: pod_if.clone(),
            pod_ip: pod_ip.clone(),
            server: None,
        };
        for step in steps {
            run_args("ip", &step, IP_TIMEOUT)?.ok()?;
        }
        if metadata {
            run_args(
                "ip",
                &[
                    "-n",
                    &netns,
                    "addr",
                    "add",
                    &format!("{METADATA}/32"),
                    "dev",
                    &host_if,
                ],
                IP_TIMEOUT,
            )?
            .ok()?;
            run_args(
                "ip",
                &[
                    "-n",
                    pod,
                    "route",
                    "add",
                    &format!("{METADATA}/32"),
                    "dev",
                    &pod_if,
                ],
                IP_TIMEOUT,
            )?
            .ok()?;
        }
        let mut dns = serde_json::Map::new();
        for (name, addr, ttl) in names {
            addr.parse::<std::net::IpAddr>()
                .with_context(|| format!("DNS test name {name}: {addr} is not an address"))?;
            dns.insert(name.clone(), serde_json::json!([addr, ttl]));
        }
        let cfg = serde_json::json!({
            "greeting": host.greeting,
            "tcp": TCP_PORTS,
            "udp": UDP_PORT,
            "names": dns,
        });
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns, python(), "-c", RESPONDER])
            .arg(cfg.to_string())
            .stdin(std::process::Stdio::null());
        let server = Running::start(&mut cmd)?;
        let ready = wait_for("the test host responder", Duration::from_secs(10), || {
            Ok(server.stdout_so_far().contains("ready").then_some(()))
        });
        host.server = Some(server);
        if let Err(e) = ready {
            bail!("test host responder did not start: {e:#}");
        }
        Ok(host)
    }

    /// Gives host `i` the extra address `addr` (IPv4, a /32), routed from the pod namespace
    /// over its link: e.g. a private address a test name may answer with.
    pub fn add_host_address(&self, i: usize, addr: &str) -> Result<()> {
        let h = &self.hosts[i];
        let host_if = h.pod_if.replacen("sep", "seh", 1);
        run_args(
            "ip",
            &[
                "-n",
                &h.netns,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                &host_if,
            ],
            IP_TIMEOUT,
        )?
        .ok()?;
        run_args(
            "ip",
            &[
                "-n",
                &self.pod_netns,
                "route",
                "add",
                &format!("{addr}/32"),
                "dev",
                &h.pod_if,
            ],
            IP_TIMEOUT,
        )?
        .ok()?;
        Ok(())
    }

    /// Runs `python3 -c CODE ARGS...` inside the pod namespace (beside the sandbox).
    pub fn python_in_pod(&self, code: &str, args: &[&str]) -> Result<crate::command::Output> {
        let mut argv = vec![
            "netns",
            "exec",
            self.pod_netns.as_str(),
            python(),
            "-c",
            code,
        ];
        argv.extend_from_slice(args);
        run_args("ip", &argv, Duration::from_secs(20))
    }

    /// The nftables tables in the pod namespace (`inet NAME` each).
    pub fn tables(&self) -> Result<Vec<String>> {
        tables_in(Some(&self.pod_netns))
    }

    /// What of a sandbox's network plumbing is left in the pod namespace: Safehouse tables and
    /// a DNS forwarder socket (anything listening on 127.0.0.53; a closed connection lingering in
    /// TIME-WAIT is not one).
    pub fn leftovers(&self) -> Result<Vec<String>> {
        let mut left: Vec<String> = self
            .tables()?
            .into_iter()
            .filter(|t| t.contains("safehouse_"))
            .map(|t| format!("nftables table {t} in {}", self.pod_netns))
            .collect();
        let ss = run_args(
            "ip",
            &["netns", "exec", &self.pod_netns, "ss", "-H", "-lutn"],
            IP_TIMEOUT,
        )?
        .ok()?;
        left.extend(
            ss.stdout
                .lines()
                .filter(|l| l.contains("127.0.0.53"))
                .map(|l| format!("socket in {}: {}", self.pod_netns, l.trim())),
        );
        Ok(left)
    }
}

/// The nftables tables of a named namespace (`None`: the namespace this process runs in).
pub fn tables_in(netns: Option<&str>) -> Result<Vec<String>> {
    let out = match netns {
        Some(ns) => run_args(
            "ip",
            &["netns", "exec", ns, "nft", "list", "tables"],
            IP_TIMEOUT,
        )?,
        None => run_args("nft", &["list", "tables"], IP_TIMEOUT)?,
    }
    .ok()?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(str::to_string)
        .collect())
}

/// Fails unless the node's own namespace (the one this process runs in) holds no Safehouse
/// table: the shim must only ever touch the container's namespace.
pub fn node_namespace_clean() -> Result<()> {
    let root: Vec<String> = tables_in(None)?
        .into_iter()
        .filter(|t| t.contains("safehouse_"))
        .collect();
    anyhow::ensure!(
        root.is_empty(),
        "the node's own namespace has Safehouse tables: {root:?}"
    );
    Ok(())
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            // Dropping `Running` kills the responder's process group (by the pid we started).
            h.server.take();
            // Deleting the host's namespace also deletes the veth's end in the pod namespace.
            let _ = run_args("ip", &["netns", "del", h.netns.as_str()], IP_TIMEOUT);
        }
        if self.owns_pod_netns {
            let _ = run_args("ip", &["netns", "del", self.pod_netns.as_str()], IP_TIMEOUT);
        }
    }
}

/// Deletes the namespaces labs of this process created, and kills the responders running in
/// them (for an interrupted run).
pub fn remove_leftover_namespaces() {
    remove_namespaces_matching(|name| {
        name.starts_with("sfe-") && name.contains(&format!("-{}x", std::process::id()))
    });
}

/// Runs `ip ARGS` straight away and returns its stdout. For clean-up after an interrupt:
/// [`crate::command::Running`] refuses new commands by then.
fn ip_during_cleanup(args: &[&str]) -> Option<String> {
    Command::new("ip")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Deletes every named network namespace `matches` accepts, after killing the processes
/// running in it (the test's own responders: nothing else runs in a namespace a test made).
pub(crate) fn remove_namespaces_matching(matches: impl Fn(&str) -> bool) {
    let Some(list) = ip_during_cleanup(&["netns", "list"]) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| matches(n))
    {
        if let Some(pids) = ip_during_cleanup(&["netns", "pids", name]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = ip_during_cleanup(&["netns", "del", name]);
    }
}

/// The inode of the network namespace at `path` (what `/proc/PID/ns/net` reads as
/// `net:[INODE]`), to recognise it after its name is gone.
pub fn netns_inode(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)
        .with_context(|| format!("network namespace {}", path.display()))?
        .ino())
}

/// What still keeps network namespace `inode` alive where this process can see it: processes
/// running in it, file descriptors open on it (an nsfs handle kept for `setns`) and mounts of
/// it. With none of these (and no process of its owner left to hold a socket made in it), the
/// namespace, its nftables tables and its sockets are gone.
pub fn netns_holders(inode: u64) -> Vec<String> {
    let link = format!("net:[{inode}]");
    let mut held = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return vec!["cannot read /proc".to_string()];
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if pid == std::process::id().to_string() {
            continue;
        }
        let dir = p.path();
        let argv = std::fs::read(dir.join("cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim()
                    .to_string()
            })
            .unwrap_or_default();
        if std::fs::read_link(dir.join("ns/net")).is_ok_and(|l| l.as_os_str() == link.as_str()) {
            held.push(format!("process {pid} runs in it: {argv}"));
        }
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link.as_str()) {
                    held.push(format!("process {pid} holds it open: {argv}"));
                }
            }
        }
    }
    if let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") {
        held.extend(
            mountinfo
                .lines()
                .filter(|l| l.contains(&link))
                .map(|l| format!("mount: {l}")),
        );
    }
    held
}

/// A busybox `sh` script running each `(name, command)` of a checker, printing `== name`, the
/// command's stdout+stderr and `rc=<status>` (read back with [`check_results`]).
pub fn check_script(checks: &[(&str, String)]) -> String {
    checks
        .iter()
        .map(|(name, cmd)| format!("echo '== {name}'; {cmd} 2>&1; echo \"rc=$?\""))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a [`check_script`] printed, split by check: name → (text, exit status; -1 if none).
pub fn check_results(stdout: &str) -> std::collections::BTreeMap<String, (String, i32)> {
    let mut map = std::collections::BTreeMap::new();
    for section in stdout.split("== ").skip(1) {
        let (name, body) = section.split_once('\n').unwrap_or((section, ""));
        let rc = body
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("rc="))
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or(-1);
        map.insert(name.trim().to_string(), (body.to_string(), rc));
    }
    map
}
