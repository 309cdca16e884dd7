//! The per-sandbox DNS forwarder of an `allowlist` policy with host names.
//!
//! Its sockets live in the container's network namespace (bound by a short-lived thread that
//! enters the namespace): it listens on [`LISTEN`] (UDP and TCP), the address the sandbox's
//! `/etc/resolv.conf` names, and asks the upstream resolvers from sockets carrying
//! [`FORWARDER_MARK`], the only packets the sandbox's table lets reach port 53 upstream.
//!
//! It forwards only what the policy lets the sandbox learn: one address lookup (A or AAAA) of
//! a listed name per query, asked upstream as a query rebuilt from the parsed question
//! ([`message`]), at most [`wildcard::NAMES_PER_MINUTE`] distinct names a minute below a
//! wildcard entry; the answer the sandbox gets is rebuilt too (the CNAME chain and the
//! addresses, nothing else). Addresses in private ranges no egress range covers are not
//! opened: such an answer is refused. The addresses of an answer are added to the table's
//! sets for the answer's TTL before the sandbox sees it, and every query is reported with
//! its verdict. It does no DNS parsing of its own (hickory-proto does).

mod message;
mod upstream;
pub mod wildcard;

use std::collections::HashMap;
use std::hash::RandomState;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use safehouse_policy::netfilter::FORWARDER_MARK;
use safehouse_policy::{Learned, NetFilter};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use super::filter::{learn, InstalledTable};
use super::netns::in_netns;
use crate::error::{Result, ShimError};
use crate::reaper::Reaper;
use message::{check_query, error_reply, first_question, rebuild_answer, reply};
use upstream::{read_framed, write_framed, Pending};
use wildcard::WildcardBudget;

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
        node_addrs: Vec<IpAddr>,
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
            node_addrs,
            wildcards: Mutex::default(),
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
    /// The node's own addresses (an answer pointing at one is refused).
    node_addrs: Vec<IpAddr>,
    /// The names asked below each wildcard entry lately.
    wildcards: Mutex<WildcardBudget>,
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

    async fn answer(&self, bytes: &[u8], how: Transport) -> Option<(Vec<u8>, QueryVerdict)> {
        // Not a DNS query at all: drop it silently (there is no one to answer).
        let msg = Message::from_vec(bytes).ok()?;
        if msg.message_type() != MessageType::Query {
            return None;
        }
        let (name, qtype) = first_question(&msg);
        let refuse = |code: ResponseCode, what: &'static str, why: &str| {
            Some((
                error_reply(&msg, code)?,
                verdict(&name, &qtype, what, Some(why.to_owned())),
            ))
        };
        let q = match check_query(&msg) {
            Ok(q) => q,
            Err(r) => return refuse(r.code, "refused", &r.why),
        };
        let Some(ports) = self.filter.ports_for(&q.name) else {
            return refuse(
                ResponseCode::Refused,
                "refused",
                "name not in the policy's egress list",
            );
        };
        if let Some(wildcard) = self.filter.wildcard_for(&q.name) {
            let admitted = self
                .wildcards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .admit(wildcard, &q.name, Instant::now());
            if !admitted {
                let why = format!(
                    "more than {} names below {wildcard} in a minute",
                    wildcard::NAMES_PER_MINUTE
                );
                return refuse(ResponseCode::Refused, "refused", &why);
            }
        }
        let failed = |why: &str| refuse(ResponseCode::ServFail, "failed", why);
        let upstream = match self.ask_upstream(&q, how).await {
            Ok(m) => m,
            Err(why) => return failed(&why),
        };
        let answer = match rebuild_answer(&q, &upstream) {
            Ok(a) => a,
            Err(why) => return failed(&why),
        };
        if let Some(why) = answer
            .addrs
            .iter()
            .find_map(|a| self.filter.learnable(*a, &self.node_addrs).err())
        {
            return refuse(
                ResponseCode::Refused,
                "refused",
                &format!("the answer points into a closed range: {why}"),
            );
        }
        let (reply, carried) = match reply(&msg, &answer, how == Transport::Udp) {
            Ok(r) => r,
            Err(why) => return failed(&why),
        };
        let addrs = if carried { answer.addrs } else { Vec::new() };
        let ttl = if addrs.is_empty() { 0 } else { answer.ttl };
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
