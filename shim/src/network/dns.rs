//! The per-sandbox DNS forwarder of an `allowlist` policy with host names.
//!
//! Its sockets live in the container's network namespace (bound by a short-lived thread that
//! enters the namespace): it listens on [`LISTEN`] (UDP and TCP), the address the sandbox's
//! `/etc/resolv.conf` names, and asks the upstream resolvers from a socket carrying
//! [`FORWARDER_MARK`], the only packets the sandbox's table lets reach port 53 upstream. It
//! answers only names the policy lists (others get REFUSED), adds the addresses of each answer
//! to the table's sets for the answer's TTL before the sandbox sees the answer, and reports
//! every query and its verdict. It does no DNS parsing of its own (hickory-proto does).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use safehouse_policy::netfilter::FORWARDER_MARK;
use safehouse_policy::{Learned, NetFilter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::filter::{learn, InstalledTable};
use super::netns::in_netns;
use crate::error::{Result, ShimError};
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

/// Queries being answered at once at most; more wait for a slot (their packets wait in the
/// socket).
const MAX_IN_FLIGHT: usize = 64;

/// A running forwarder; stopped (its sockets closed, its exchanges ended) by
/// [`DnsForwarder::stop`] or drop.
pub struct DnsForwarder {
    tasks: Vec<JoinHandle<()>>,
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
        let up4 = up4.map(Arc::new);
        let up6 = up6.map(Arc::new);
        let f = Arc::new(Forwarder {
            listen,
            up4: up4.clone(),
            up6: up6.clone(),
            pending: Mutex::new(HashMap::new()),
            ids: RandomState::new(),
            next: AtomicU64::new(0),
            netns: netns.to_path_buf(),
            upstreams,
            filter,
            table,
            reaper,
            on_query,
        });
        let mut tasks = vec![
            tokio::spawn(f.clone().run()),
            tokio::spawn(f.clone().serve_tcp(tcp)),
        ];
        for sock in [up4, up6].into_iter().flatten() {
            tasks.push(tokio::spawn(f.clone().dispatch(sock)));
        }
        Ok(DnsForwarder { tasks })
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
    let want4 = upstreams.iter().any(IpAddr::is_ipv4);
    let want6 = upstreams.iter().any(IpAddr::is_ipv6);
    type Std = (
        std::net::UdpSocket,
        std::net::TcpListener,
        Option<std::net::UdpSocket>,
        Option<std::net::UdpSocket>,
    );
    let bound = in_netns(netns, move || -> std::io::Result<Std> {
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

/// Upstream exchanges in flight on the shared UDP sockets, by (upstream, the id we gave the
/// query), each waiting for its answer.
type Pending = HashMap<(SocketAddr, u16), oneshot::Sender<Vec<u8>>>;

struct Forwarder {
    listen: UdpSocket,
    up4: Option<Arc<UdpSocket>>,
    up6: Option<Arc<UdpSocket>>,
    pending: Mutex<Pending>,
    /// Keys for the ids given to upstream queries (not guessable, never two alike in flight).
    ids: RandomState,
    next: AtomicU64,
    /// The namespace TCP upstream connections are made from (opened per connection: holding
    /// it open would keep the namespace alive after the sandbox).
    netns: PathBuf,
    upstreams: Vec<IpAddr>,
    filter: NetFilter,
    table: InstalledTable,
    reaper: Reaper,
    on_query: OnQuery,
}

/// How a query reached the forwarder; the upstream is asked the same way (a truncated UDP
/// answer goes back truncated, so the client asks again over TCP, and then gets it whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl Forwarder {
    /// Answers UDP queries, each in a task of its own (at most [`MAX_IN_FLIGHT`] at once), so
    /// a slow upstream answer does not hold up the others.
    async fn run(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        // Dropped with this task on stop: that aborts every query still being answered.
        let mut queries = JoinSet::new();
        let mut buf = vec![0u8; 4096];
        loop {
            while queries.try_join_next().is_some() {}
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((n, client)) = self.listen.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let query = buf[..n].to_vec();
            let f = self.clone();
            queries.spawn(async move {
                let _slot = slot;
                if let Some((reply, verdict)) = f.answer(&query, Transport::Udp).await {
                    let _ = f.listen.send_to(&reply, client).await;
                    (f.on_query)(verdict);
                }
            });
        }
    }

    /// Answers DNS over TCP (length-prefixed messages), one task per connection.
    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let Ok((conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if conns.len() >= MAX_IN_FLIGHT {
                continue;
            }
            let f = self.clone();
            conns.spawn(async move {
                let _ = tokio::time::timeout(TCP_IDLE, f.tcp_conn(conn)).await;
            });
        }
    }

    async fn tcp_conn(&self, mut conn: TcpStream) -> std::io::Result<()> {
        loop {
            let query = read_framed(&mut conn).await?;
            let Some((reply, verdict)) = self.answer(&query, Transport::Tcp).await else {
                return Ok(());
            };
            write_framed(&mut conn, &reply).await?;
            (self.on_query)(verdict);
        }
    }

    /// Hands the answers arriving on one upstream socket to the exchanges waiting for them.
    async fn dispatch(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if n < 12 {
                continue;
            }
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            let waiting = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(from, id));
            // An answer nobody waits for (late, or not from the upstream asked) is dropped.
            if let Some(tx) = waiting {
                let _ = tx.send(buf[..n].to_vec());
            }
        }
    }

    async fn answer(&self, bytes: &[u8], how: Transport) -> Option<(Vec<u8>, QueryVerdict)> {
        // Not a DNS query at all: drop it silently (there is no one to answer).
        let msg = Message::from_vec(bytes).ok()?;
        if msg.message_type() != MessageType::Query {
            return None;
        }
        let Some(q) = msg.queries().first() else {
            return refuse(
                &msg,
                ResponseCode::FormErr,
                "",
                "",
                "refused",
                "no question",
            );
        };
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let qtype = q.query_type().to_string();
        let Some(ports) = self.filter.ports_for(&name) else {
            return refuse(
                &msg,
                ResponseCode::Refused,
                &name,
                &qtype,
                "refused",
                "name not in the policy's egress list",
            );
        };
        let failed = |why: &str| refuse(&msg, ResponseCode::ServFail, &name, &qtype, "failed", why);
        let reply = match self.ask_upstream(bytes, how).await {
            Ok(r) => r,
            Err(why) => return failed(&why),
        };
        let Ok(answer) = Message::from_vec(&reply) else {
            return failed("upstream answer does not parse");
        };
        // An answer opens addresses: it must be an answer to this question, not another's.
        if answer.message_type() != MessageType::Response || answer.queries() != msg.queries() {
            return failed("upstream answer is not for this question");
        }
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
            return failed(&format!("allowing the answer: {e}"));
        }
        let mut v = verdict(&name, &qtype, "allowed", None);
        v.addrs = addrs;
        v.ttl = ttl.max(u32::from(!learned.addrs.is_empty()));
        Some((reply, v))
    }

    /// Forwards the query to each upstream in turn, the way it came, until one answers.
    async fn ask_upstream(
        &self,
        query: &[u8],
        how: Transport,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut last = String::from("no upstream answered");
        for up in &self.upstreams {
            let dest = SocketAddr::new(*up, 53);
            let asked = async {
                match how {
                    Transport::Udp => self.ask_udp(query, dest).await,
                    Transport::Tcp => self.ask_tcp(query, dest).await,
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, asked).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => last = e,
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

    /// One exchange over the shared marked UDP socket of `dest`'s family. The query goes out
    /// under an id of ours (clients' ids may collide, and ours are not guessable) and the
    /// answer comes back under the client's.
    async fn ask_udp(
        &self,
        query: &[u8],
        dest: SocketAddr,
    ) -> std::result::Result<Vec<u8>, String> {
        let sock = match dest {
            SocketAddr::V4(_) => self.up4.as_ref(),
            SocketAddr::V6(_) => self.up6.as_ref(),
        }
        .ok_or_else(|| format!("no socket for {dest}"))?;
        if query.len() < 12 {
            return Err("query shorter than a DNS header".into());
        }
        let (tx, rx) = oneshot::channel();
        let ours = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let mut id;
            loop {
                id = self.ids.hash_one(self.next.fetch_add(1, Ordering::Relaxed)) as u16;
                if !pending.contains_key(&(dest, id)) {
                    break;
                }
            }
            pending.insert((dest, id), tx);
            id
        };
        // Whatever happens next (error, timeout, abort), the entry goes.
        let _forget = Forget {
            pending: &self.pending,
            key: (dest, ours),
        };
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&ours.to_be_bytes());
        sock.send_to(&out, dest)
            .await
            .map_err(|e| format!("send to {dest}: {e}"))?;
        let mut reply = rx.await.map_err(|_| format!("{dest}: forwarder stopped"))?;
        reply[..2].copy_from_slice(&query[..2]);
        Ok(reply)
    }

    /// One exchange over a new TCP connection made from the sandbox's namespace with the mark.
    async fn ask_tcp(
        &self,
        query: &[u8],
        dest: SocketAddr,
    ) -> std::result::Result<Vec<u8>, String> {
        let v4 = dest.is_ipv4();
        let std = in_netns(
            &self.netns,
            move || -> std::io::Result<std::net::TcpStream> {
                use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
                let family = if v4 {
                    AddressFamily::Inet
                } else {
                    AddressFamily::Inet6
                };
                let fd = socket(
                    family,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                    None,
                )?;
                nix::sys::socket::setsockopt(
                    &fd,
                    nix::sys::socket::sockopt::Mark,
                    &FORWARDER_MARK,
                )?;
                Ok(std::net::TcpStream::from(fd))
            },
        )
        .map_err(|e| format!("TCP socket for {dest}: {e}"))?;
        let mut conn = tokio::net::TcpSocket::from_std_stream(std)
            .connect(dest)
            .await
            .map_err(|e| format!("connect to {dest} over TCP: {e}"))?;
        write_framed(&mut conn, query)
            .await
            .map_err(|e| format!("{dest} over TCP: {e}"))?;
        read_framed(&mut conn)
            .await
            .map_err(|e| format!("{dest} over TCP: {e}"))
    }
}

/// Removes a pending exchange when its asker is done with it, however that happened.
struct Forget<'a> {
    pending: &'a Mutex<Pending>,
    key: (SocketAddr, u16),
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

/// Reads one length-prefixed DNS message (DNS over TCP).
async fn read_framed(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut msg).await?;
    Ok(msg)
}

/// Writes one length-prefixed DNS message (cut at 65,535 bytes, the most TCP framing holds).
async fn write_framed(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let n = u16::try_from(msg.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + usize::from(n));
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&msg[..usize::from(n)]);
    conn.write_all(&out).await
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

/// The error answer to `query` with `code`, and the verdict that goes with it.
fn refuse(
    query: &Message,
    code: ResponseCode,
    name: &str,
    qtype: &str,
    what: &'static str,
    why: &str,
) -> Option<(Vec<u8>, QueryVerdict)> {
    Some((
        error_reply(query, code)?,
        verdict(name, qtype, what, Some(why.to_owned())),
    ))
}

fn error_reply(query: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut m = Message::error_msg(query.id(), query.op_code(), code);
    m.add_queries(query.queries().to_vec());
    m.set_recursion_desired(query.recursion_desired());
    m.set_recursion_available(true);
    m.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

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
