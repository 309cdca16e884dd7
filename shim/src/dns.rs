//! The per-sandbox DNS forwarder of an `allowlist` policy with host names.
//!
//! Its sockets live in the container's network namespace (bound by a short-lived thread that
//! enters the namespace): it listens on [`LISTEN`] (UDP and TCP), the address the sandbox's
//! `/etc/resolv.conf` names, and asks the upstream resolvers from a socket carrying
//! [`FORWARDER_MARK`], the only packets the sandbox's table lets reach port 53 upstream. It
//! answers only names the policy lists (others get REFUSED), adds the addresses of each answer
//! to the table's sets for the answer's TTL before the sandbox sees the answer, and reports
//! every query and its verdict. It does no DNS parsing of its own (hickory-proto does).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use safehouse_policy::netfilter::FORWARDER_MARK;
use safehouse_policy::{Learned, NetFilter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::error::{Result, ShimError};
use crate::netfilter::{learn, InstalledTable};
use crate::reaper::Reaper;

/// Where the forwarder listens inside the sandbox's namespace.
pub const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)), 53);

/// How long a DNS-over-TCP connection may stay open.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How long one upstream may take to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// One query and what the forwarder did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryVerdict {
    /// The name asked for, without the trailing dot.
    pub name: String,
    /// The record type (`A`, `AAAA`, ...).
    pub qtype: String,
    /// `allowed`, `refused` or `failed`.
    pub verdict: &'static str,
    /// Addresses the answer added to the allowed set.
    pub addrs: Vec<IpAddr>,
    /// Seconds they stay allowed.
    pub ttl: u32,
    /// Why it failed or was refused.
    pub reason: Option<String>,
}

/// Called for every query (the audit stream).
pub type OnQuery = Arc<dyn Fn(QueryVerdict) + Send + Sync>;

/// A running forwarder; stopped (its sockets closed) by [`DnsForwarder::stop`] or drop.
pub struct DnsForwarder {
    tasks: [JoinHandle<()>; 2],
}

impl DnsForwarder {
    /// Binds the sockets in `netns` and starts answering.
    pub fn start(
        netns: &Path,
        upstreams: Vec<IpAddr>,
        filter: NetFilter,
        table: InstalledTable,
        reaper: Reaper,
        on_query: OnQuery,
    ) -> Result<DnsForwarder> {
        if upstreams.is_empty() {
            return Err(ShimError::FailedPrecondition(
                "the policy names hosts but no upstream DNS resolver is known (set dns_upstreams in the runtime config or give the container an /etc/resolv.conf)".into(),
            ));
        }
        let (listen, tcp, up4, up6) = bind_in(netns, &upstreams)?;
        let f = Arc::new(Forwarder {
            listen,
            up4,
            up6,
            ask: tokio::sync::Mutex::new(()),
            upstreams,
            filter,
            table,
            reaper,
            on_query,
        });
        let udp = tokio::spawn(f.clone().run());
        let tcp = tokio::spawn(f.serve_tcp(tcp));
        Ok(DnsForwarder { tasks: [udp, tcp] })
    }

    /// Stops answering and closes the sockets.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for DnsForwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

type Sockets = (UdpSocket, TcpListener, Option<UdpSocket>, Option<UdpSocket>);

/// Binds the listening socket and one marked upstream socket per address family, all inside
/// `netns`, from a thread that enters it (the shim's own threads stay in the node's namespace).
fn bind_in(netns: &Path, upstreams: &[IpAddr]) -> Result<Sockets> {
    let ns = File::open(netns)
        .map_err(|e| ShimError::io(format!("open network namespace {}", netns.display()), e))?;
    let want4 = upstreams.iter().any(IpAddr::is_ipv4);
    let want6 = upstreams.iter().any(IpAddr::is_ipv6);
    type Std = (
        std::net::UdpSocket,
        std::net::TcpListener,
        Option<std::net::UdpSocket>,
        Option<std::net::UdpSocket>,
    );
    let bound = std::thread::spawn(move || -> std::io::Result<Std> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let listen = std::net::UdpSocket::bind(LISTEN)?;
        let tcp = std::net::TcpListener::bind(LISTEN)?;
        tcp.set_nonblocking(true)?;
        let marked = |addr: SocketAddr| -> std::io::Result<std::net::UdpSocket> {
            let s = std::net::UdpSocket::bind(addr)?;
            nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Mark, &FORWARDER_MARK)?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let up4 = want4
            .then(|| marked(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)))
            .transpose()?;
        let up6 = want6
            .then(|| marked(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)))
            .transpose()?;
        listen.set_nonblocking(true)?;
        Ok((listen, tcp, up4, up6))
    })
    .join()
    .map_err(|_| ShimError::Internal("the DNS forwarder's bind thread panicked".into()))?
    .map_err(|e| {
        ShimError::io(
            format!("bind the DNS forwarder at {LISTEN} in {}", netns.display()),
            e,
        )
    })?;
    let tokio_sock = |s: std::net::UdpSocket| {
        UdpSocket::from_std(s).map_err(|e| ShimError::io("register a DNS forwarder socket", e))
    };
    Ok((
        tokio_sock(bound.0)?,
        TcpListener::from_std(bound.1)
            .map_err(|e| ShimError::io("register the DNS forwarder's TCP socket", e))?,
        bound.2.map(tokio_sock).transpose()?,
        bound.3.map(tokio_sock).transpose()?,
    ))
}

struct Forwarder {
    listen: UdpSocket,
    up4: Option<UdpSocket>,
    up6: Option<UdpSocket>,
    /// One upstream exchange at a time on the shared upstream sockets.
    ask: tokio::sync::Mutex<()>,
    upstreams: Vec<IpAddr>,
    filter: NetFilter,
    table: InstalledTable,
    reaper: Reaper,
    on_query: OnQuery,
}

impl Forwarder {
    /// Answers UDP queries one at a time (a sandbox's resolver traffic is small).
    async fn run(self: Arc<Self>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, client)) = self.listen.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let query = buf[..n].to_vec();
            if let Some((reply, verdict)) = self.answer(&query).await {
                let _ = self.listen.send_to(&reply, client).await;
                (self.on_query)(verdict);
            }
        }
    }

    /// Answers DNS over TCP (length-prefixed messages), one task per connection; the upstream
    /// is still asked over UDP.
    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let f = self.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(TCP_IDLE, f.tcp_conn(conn)).await;
            });
        }
    }

    async fn tcp_conn(&self, mut conn: TcpStream) -> std::io::Result<()> {
        loop {
            let mut len = [0u8; 2];
            conn.read_exact(&mut len).await?;
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            conn.read_exact(&mut query).await?;
            let Some((reply, verdict)) = self.answer(&query).await else {
                return Ok(());
            };
            let n = u16::try_from(reply.len()).unwrap_or(u16::MAX);
            conn.write_all(&n.to_be_bytes()).await?;
            conn.write_all(&reply[..usize::from(n)]).await?;
            (self.on_query)(verdict);
        }
    }

    async fn answer(&self, bytes: &[u8]) -> Option<(Vec<u8>, QueryVerdict)> {
        // Not a DNS query at all: drop it silently (there is no one to answer).
        let msg = Message::from_vec(bytes).ok()?;
        if msg.message_type() != MessageType::Query {
            return None;
        }
        let Some(q) = msg.queries().first() else {
            return Some((
                error_reply(&msg, ResponseCode::FormErr)?,
                verdict("", "", "refused", Some("no question".into())),
            ));
        };
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let qtype = q.query_type().to_string();
        let Some(ports) = self.filter.ports_for(&name) else {
            return Some((
                error_reply(&msg, ResponseCode::Refused)?,
                verdict(
                    &name,
                    &qtype,
                    "refused",
                    Some("name not in the policy's egress list".into()),
                ),
            ));
        };
        let reply = match self.ask_upstream(bytes, msg.id()).await {
            Ok(r) => r,
            Err(why) => {
                return Some((
                    error_reply(&msg, ResponseCode::ServFail)?,
                    verdict(&name, &qtype, "failed", Some(why)),
                ))
            }
        };
        let Ok(answer) = Message::from_vec(&reply) else {
            return Some((
                error_reply(&msg, ResponseCode::ServFail)?,
                verdict(
                    &name,
                    &qtype,
                    "failed",
                    Some("upstream answer does not parse".into()),
                ),
            ));
        };
        let mut addrs = Vec::new();
        let mut ttl = u32::MAX;
        for r in answer.answers() {
            let addr = match r.data() {
                Some(RData::A(a)) => IpAddr::V4(a.0),
                Some(RData::AAAA(a)) => IpAddr::V6(a.0),
                _ => continue,
            };
            addrs.push(addr);
            ttl = ttl.min(r.ttl());
        }
        if addrs.is_empty() {
            ttl = 0;
        }
        // The addresses are allowed before the sandbox learns them, so its connect never races
        // the rule.
        let learned = Learned {
            addrs: addrs.clone(),
            ports,
            ttl,
        };
        if let Err(e) = learn(&self.reaper, &self.table, &learned).await {
            return Some((
                error_reply(&msg, ResponseCode::ServFail)?,
                verdict(
                    &name,
                    &qtype,
                    "failed",
                    Some(format!("allowing the answer: {e}")),
                ),
            ));
        }
        let mut v = verdict(&name, &qtype, "allowed", None);
        v.addrs = addrs;
        v.ttl = ttl.max(u32::from(!learned.addrs.is_empty()));
        Some((reply, v))
    }

    /// Forwards the query to each upstream in turn until one answers with the same id.
    async fn ask_upstream(&self, query: &[u8], id: u16) -> std::result::Result<Vec<u8>, String> {
        let _one_at_a_time = self.ask.lock().await;
        let mut last = String::from("no upstream answered");
        for up in &self.upstreams {
            let sock = match up {
                IpAddr::V4(_) => self.up4.as_ref(),
                IpAddr::V6(_) => self.up6.as_ref(),
            };
            let Some(sock) = sock else { continue };
            let dest = SocketAddr::new(*up, 53);
            if let Err(e) = sock.send_to(query, dest).await {
                last = format!("send to {dest}: {e}");
                continue;
            }
            let mut buf = vec![0u8; 4096];
            let wait = async {
                loop {
                    let (n, from) = sock.recv_from(&mut buf).await?;
                    if from == dest && n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                        return Ok::<usize, std::io::Error>(n);
                    }
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, wait).await {
                Ok(Ok(n)) => return Ok(buf[..n].to_vec()),
                Ok(Err(e)) => last = format!("{dest}: {e}"),
                Err(_) => {
                    last = format!(
                        "{dest} did not answer within {}s",
                        UPSTREAM_TIMEOUT.as_secs()
                    )
                }
            }
        }
        Err(last)
    }
}

fn verdict(name: &str, qtype: &str, verdict: &'static str, reason: Option<String>) -> QueryVerdict {
    QueryVerdict {
        name: name.to_string(),
        qtype: qtype.to_string(),
        verdict,
        addrs: Vec::new(),
        ttl: 0,
        reason,
    }
}

fn error_reply(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(query.id(), query.op_code(), code);
    m.add_queries(query.queries().to_vec());
    m.set_recursion_desired(query.recursion_desired());
    m.set_recursion_available(true);
    m.to_vec().ok()
}

/// Nameserver addresses in a resolv.conf text.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse::<IpAddr>().ok())
                .flatten()
        })
        .collect()
}

/// The resolv.conf the sandbox gets: only the forwarder (search and options lines kept).
pub fn sandbox_resolv_conf(given: &str) -> String {
    let mut out = format!(
        "# written by Safehouse: the sandbox's DNS forwarder\nnameserver {}\n",
        LISTEN.ip()
    );
    for l in given.lines() {
        let first = l.split_whitespace().next();
        if matches!(first, Some("search") | Some("domain") | Some("options")) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    #[test]
    fn resolv_conf_points_at_the_forwarder_only() {
        let given = "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n";
        assert_eq!(
            nameservers(given),
            vec![
                "10.96.0.10".parse::<IpAddr>().expect("ip"),
                "fd00::a".parse().expect("ip")
            ]
        );
        let ours = sandbox_resolv_conf(given);
        assert_eq!(nameservers(&ours), vec![LISTEN.ip()]);
        assert!(ours.contains("search svc.cluster.local") && ours.contains("options ndots:5"));
    }

    #[test]
    fn refusal_keeps_the_id_and_question() {
        let mut q = Message::new();
        q.set_id(4242);
        q.add_query(Query::query(
            Name::from_ascii("evil.test.").expect("name"),
            RecordType::A,
        ));
        let bytes = error_reply(&q, ResponseCode::Refused).expect("reply");
        let r = Message::from_vec(&bytes).expect("parses");
        assert_eq!(r.id(), 4242);
        assert_eq!(r.response_code(), ResponseCode::Refused);
        assert_eq!(r.message_type(), MessageType::Response);
        assert_eq!(r.queries().len(), 1);
    }
}
