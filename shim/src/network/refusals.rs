//! Refused packets other than TCP, as audit events.
//!
//! A refused TCP connect is visible inside the sandbox (gVisor's `syscall/connect` point records
//! it with ECONNREFUSED), but a datagram sent with `sendto` to a host the policy does not list
//! passes no trace point at all: the filter refuses it in the sandbox's network namespace, out
//! of gVisor's sight. The sandbox's nftables table therefore logs those refusals (outbound
//! unicast only, at most `safehouse_policy::REFUSED_LOG_RATE` a second) to an NFLOG group of
//! that namespace, and this module reads the group on a netlink socket opened inside it and
//! hands each refused packet on as a [`Refused`] (protocol, addresses, port), which the shim
//! records as a `policy`/`violation` event.
//!
//! The packets come from the sandbox, so they are untrusted: one that cannot be parsed is
//! counted and skipped, never fatal.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::error::{Result, ShimError};

/// Bytes of each refused packet the kernel copies to us: IP and transport headers.
const COPY_RANGE: u32 = safehouse_policy::REFUSED_LOG_SNAPLEN;

/// One refused packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The IP protocol number ([`Refused::protocol_name`] names it).
    pub protocol: u8,
    /// Where the packet came from.
    pub source: IpAddr,
    /// Where it was going.
    pub destination: IpAddr,
    /// Destination port, for UDP (and TCP, which the filter does not log).
    pub port: Option<u16>,
}

/// Called for every refused packet.
pub type OnRefused = Arc<dyn Fn(Refused) + Send + Sync>;

/// Called once, at the end, with the number of refused packets that were not recorded.
pub type OnUnrecorded = Box<dyn Fn(u64) + Send + Sync>;

/// Reads a sandbox's refusal log until stopped or dropped.
pub struct RefusalLog {
    task: JoinHandle<()>,
    /// Refused packets handed to `on_refused` so far.
    recorded: Arc<AtomicU64>,
    on_unrecorded: OnUnrecorded,
}

impl RefusalLog {
    /// Opens the NFLOG socket inside `netns`, binds `group` and starts reading.
    pub fn start(
        netns: &Path,
        group: u16,
        on_refused: OnRefused,
        on_unrecorded: OnUnrecorded,
    ) -> Result<RefusalLog> {
        let fd = super::netns::in_netns(netns, move || open(group)).map_err(|e| {
            ShimError::io(
                format!(
                    "open the refusal log (NFLOG group {group}) in {}",
                    netns.display()
                ),
                e,
            )
        })?;
        // SAFETY: an OwnedFd is an open descriptor that it alone owns and closes on drop, and
        // its raw fd never changes while the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| ShimError::io("register the refusal log", e.into()))?;
        let recorded = Arc::new(AtomicU64::new(0));
        Ok(RefusalLog {
            task: tokio::spawn(read(fd, on_refused, Arc::clone(&recorded))),
            recorded,
            on_unrecorded,
        })
    }

    /// Stops reading and closes the socket.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Given the table's count of refused packets eligible for the log, reports those not
    /// recorded (over the log's rate, or not read before [`RefusalLog::stop`]), if any.
    pub fn report_unrecorded(&self, counted: u64) {
        let missed = unrecorded(counted, self.recorded.load(Ordering::Relaxed));
        if missed > 0 {
            (self.on_unrecorded)(missed);
        }
    }
}

/// Refused packets counted by the table but not recorded (never negative: a packet read after
/// the counter was listed counts as recorded).
fn unrecorded(counted: u64, recorded: u64) -> u64 {
    counted.saturating_sub(recorded)
}

impl Drop for RefusalLog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A netlink socket of the current network namespace, bound to NFLOG `group`.
fn open(group: u16) -> std::io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    configure(
        &fd,
        group,
        vec![
            ConfigCmd::Bind.into(),
            ConfigMode::new_packet(COPY_RANGE).into(),
            // Hand each packet on at once (the default waits for 100 or for a second).
            ConfigNla::QThresh(1),
        ],
    )?;
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok(fd)
}

/// Sends one NFLOG config request and checks the kernel's acknowledgement.
fn configure(fd: &OwnedFd, group: u16, nlas: Vec<ConfigNla>) -> std::io::Result<()> {
    let request = config_request(NetfilterProtoFamily::Unspec, group, nlas);
    let mut buf = vec![0; request.header.length as usize];
    request.serialize(&mut buf);
    send(fd.as_raw_fd(), &buf, MsgFlags::empty())?;
    let mut reply = vec![0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty())?;
    let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&reply[..n])
        .map_err(|e| std::io::Error::other(format!("NFLOG config reply: {e}")))?;
    match msg.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(std::io::Error::other(format!(
            "NFLOG config: unexpected reply {other:?}"
        ))),
    }
}

async fn read(fd: AsyncFd<OwnedFd>, on_refused: OnRefused, recorded: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match fd.readable().await {
            Ok(mut ready) => {
                match ready.try_io(|inner| {
                    recv(inner.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).map_err(Into::into)
                }) {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        // The kernel dropped log messages we were too slow for: go on.
                        warn!("refusal log overran; some refused packets were not recorded");
                        continue;
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "refusal log read failed; no more refusals recorded");
                        return;
                    }
                    Err(_would_block) => continue,
                }
            }
            Err(e) => {
                warn!(error = %e, "refusal log wait failed; no more refusals recorded");
                return;
            }
        };
        let mut skipped = 0;
        for refused in parse_messages(&buf[..n], &mut skipped) {
            recorded.fetch_add(1, Ordering::Relaxed);
            on_refused(refused);
        }
        if skipped > 0 {
            debug!(skipped, "refusal log messages skipped (not parseable)");
        }
    }
}

/// The refused packets in one netlink datagram (several messages may share it); what cannot
/// be parsed is counted in `skipped`.
pub fn parse_messages(mut data: &[u8], skipped: &mut u64) -> Vec<Refused> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let Some(one) = data.get(..len).filter(|_| len >= 16) else {
            *skipped += 1;
            break;
        };
        match NetlinkMessage::<NetfilterMessage>::deserialize(one) {
            Ok(msg) => {
                if let Some(r) = refused(&msg) {
                    out.push(r);
                } else if !matches!(msg.payload, NetlinkPayload::Error(_)) {
                    *skipped += 1;
                }
            }
            Err(_) => *skipped += 1,
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or_default();
    }
    out
}

fn refused(msg: &NetlinkMessage<NetfilterMessage>) -> Option<Refused> {
    let NetlinkPayload::InnerMessage(NetfilterMessage {
        inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
        ..
    }) = &msg.payload
    else {
        return None;
    };
    let payload = nlas.iter().find_map(|n| match n {
        PacketNla::Payload(p) => Some(p.as_slice()),
        _ => None,
    })?;
    parse_ip(payload)
}

/// Reads the addresses, protocol and destination port of an IPv4 or IPv6 packet (its first
/// [`COPY_RANGE`] bytes).
pub fn parse_ip(packet: &[u8]) -> Option<Refused> {
    // Lax: the copy stops at COPY_RANGE bytes, so a long packet's lengths overrun it.
    let sliced = etherparse::LaxSlicedPacket::from_ip(packet).ok()?;
    let net = sliced.net.as_ref()?;
    let (source, destination) = match net {
        etherparse::LaxNetSlice::Ipv4(v4) => (
            IpAddr::from(v4.header().source_addr()),
            IpAddr::from(v4.header().destination_addr()),
        ),
        etherparse::LaxNetSlice::Ipv6(v6) => (
            IpAddr::from(v6.header().source_addr()),
            IpAddr::from(v6.header().destination_addr()),
        ),
        etherparse::LaxNetSlice::Arp(_) => return None,
    };
    let protocol = net.ip_payload_ref()?.ip_number.0;
    let port = match &sliced.transport {
        Some(etherparse::TransportSlice::Udp(u)) => Some(u.destination_port()),
        Some(etherparse::TransportSlice::Tcp(t)) => Some(t.destination_port()),
        _ => None,
    };
    Some(Refused {
        protocol,
        source,
        destination,
        port,
    })
}

impl Refused {
    /// `udp`, `icmp`, `icmpv6`, `sctp`... or the protocol number.
    pub fn protocol_name(&self) -> String {
        match self.protocol {
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            58 => "icmpv6".into(),
            132 => "sctp".into(),
            136 => "udplite".into(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(dst: [u8; 4], dport: u16) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ipv4([10, 0, 0, 2], dst, 64).udp(40000, dport);
        let payload = b"hello";
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder
            .write(&mut out, payload)
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }

    #[test]
    fn reads_a_udp_datagram() {
        let r = parse_ip(&udp4([203, 0, 113, 5], 53));
        assert_eq!(
            r.as_ref().map(Refused::protocol_name).as_deref(),
            Some("udp")
        );
        assert_eq!(
            r,
            Some(Refused {
                protocol: 17,
                source: "10.0.0.2".parse().unwrap_or(IpAddr::from([0u8; 4])),
                destination: "203.0.113.5".parse().unwrap_or(IpAddr::from([0u8; 4])),
                port: Some(53),
            })
        );
    }

    #[test]
    fn reads_icmpv6_without_a_port() {
        let builder =
            etherparse::PacketBuilder::ipv6([0xfd; 16], [0xfe; 16], 64).icmpv6_echo_request(1, 1);
        let mut out = Vec::new();
        builder
            .write(&mut out, b"ping")
            .unwrap_or_else(|e| panic!("{e}"));
        let r = parse_ip(&out).unwrap_or_else(|| panic!("not parsed"));
        assert_eq!((r.protocol_name().as_str(), r.port), ("icmpv6", None));
    }

    #[test]
    fn a_truncated_copy_still_names_the_destination() {
        // The kernel copies COPY_RANGE bytes; a big datagram arrives cut short.
        let mut p = udp4([198, 51, 100, 7], 9999);
        p.extend_from_slice(&[0u8; 400]);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.truncate(COPY_RANGE as usize);
        let r = parse_ip(&p);
        assert_eq!(
            r.map(|r| (r.destination.to_string(), r.port)),
            Some(("198.51.100.7".into(), Some(9999)))
        );
    }

    #[test]
    fn unrecorded_is_the_counter_minus_the_recorded() {
        assert_eq!(unrecorded(7, 1), 6);
        assert_eq!(unrecorded(3, 3), 0);
        assert_eq!(unrecorded(2, 5), 0);
    }

    #[test]
    fn garbage_is_skipped_not_fatal() {
        assert_eq!(parse_ip(&[0x45, 0, 0]), None);
        assert_eq!(parse_ip(&[0xff; 64]), None);
        let mut skipped = 0;
        let junk = [0xffu8; 40];
        assert!(parse_messages(&junk, &mut skipped).is_empty());
        assert!(skipped > 0);
        skipped = 0;
        assert!(parse_messages(&[0u8; 16], &mut skipped).is_empty());
        assert_eq!(skipped, 1);
    }
}
