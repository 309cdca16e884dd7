//! Asking the upstream resolvers: over the shared marked UDP socket of the upstream's family
//! (under ids the forwarder picks, an answer taken only from the upstream asked and only
//! under the id it was given), or over a new marked TCP connection made from the sandbox's
//! namespace. What is sent is always a query rebuilt from the parsed question.

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hickory_proto::op::Message;
use safehouse_policy::netfilter::FORWARDER_MARK;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;

use super::message::{upstream_query, Question};
use super::{Forwarder, Transport, UPSTREAM_TIMEOUT};
use crate::network::netns::in_netns;

/// Upstream exchanges in flight on the shared UDP sockets, by (upstream, the id we gave the
/// query), each waiting for its answer.
pub(super) type Pending = std::collections::HashMap<(SocketAddr, u16), oneshot::Sender<Vec<u8>>>;

impl Forwarder {
    /// Hands the answers arriving on one upstream socket to the exchanges waiting for them.
    pub(super) async fn dispatch(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
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

    /// Asks each upstream in turn, the way the sandbox asked, until one answers.
    pub(super) async fn ask_upstream(
        &self,
        q: &Question,
        how: Transport,
    ) -> Result<Message, String> {
        let mut last = String::from("no upstream answered");
        for up in &self.upstreams {
            let dest = SocketAddr::new(*up, 53);
            let asked = async {
                match how {
                    Transport::Udp => self.ask_udp(q, dest).await,
                    Transport::Tcp => self.ask_tcp(q, dest).await,
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

    /// A fresh id (not guessable).
    fn fresh_id(&self) -> u16 {
        self.ids.hash_one(self.next.fetch_add(1, Ordering::Relaxed)) as u16
    }

    /// One exchange over the shared marked UDP socket of `dest`'s family.
    async fn ask_udp(&self, q: &Question, dest: SocketAddr) -> Result<Message, String> {
        let sock = match dest {
            SocketAddr::V4(_) => self.up4.as_ref(),
            SocketAddr::V6(_) => self.up6.as_ref(),
        }
        .ok_or_else(|| format!("no socket for {dest}"))?;
        let (tx, rx) = oneshot::channel();
        let ours = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let mut id = self.fresh_id();
            while pending.contains_key(&(dest, id)) {
                id = self.fresh_id();
            }
            pending.insert((dest, id), tx);
            id
        };
        // Whatever happens next (error, timeout, abort), the entry goes.
        let _forget = Forget {
            pending: &self.pending,
            key: (dest, ours),
        };
        let out = upstream_query(q, ours)?;
        sock.send_to(&out, dest)
            .await
            .map_err(|e| format!("send to {dest}: {e}"))?;
        let reply = rx.await.map_err(|_| format!("{dest}: forwarder stopped"))?;
        Message::from_vec(&reply).map_err(|_| format!("{dest}: the answer does not parse"))
    }

    /// One exchange over a new TCP connection made from the sandbox's namespace with the mark.
    async fn ask_tcp(&self, q: &Question, dest: SocketAddr) -> Result<Message, String> {
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
        let id = self.fresh_id();
        write_framed(&mut conn, &upstream_query(q, id)?)
            .await
            .map_err(|e| format!("{dest} over TCP: {e}"))?;
        let reply = read_framed(&mut conn)
            .await
            .map_err(|e| format!("{dest} over TCP: {e}"))?;
        let msg = Message::from_vec(&reply)
            .map_err(|_| format!("{dest} over TCP: the answer does not parse"))?;
        if msg.id() != id {
            return Err(format!("{dest} over TCP answered another query"));
        }
        Ok(msg)
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
pub(super) async fn read_framed(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).await?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut msg).await?;
    Ok(msg)
}

/// Writes one length-prefixed DNS message (cut at 65,535 bytes, the most TCP framing holds).
pub(super) async fn write_framed(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let n = u16::try_from(msg.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(2 + usize::from(n));
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&msg[..usize::from(n)]);
    conn.write_all(&out).await
}
