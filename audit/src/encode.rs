//! Synthetic Sentry-side packets: Safehouse's own encoder for gVisor's wire
//! format, for unit tests, the benchmark, fuzz seeds and hostile-client test
//! tools. Production code only decodes.

use std::net::{Ipv4Addr, Ipv6Addr};

use protobuf::{Message, MessageField};

use crate::proto::common::{ContextData, Credentials};
use crate::proto::syscall::SyscallExit;
use crate::wire::frame;

/// The context fields of a synthetic point.
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// Event time, ns since the epoch.
    pub time_ns: i64,
    /// Thread id.
    pub tid: i32,
    /// Thread group id.
    pub pid: i32,
    /// Container id.
    pub container_id: String,
    /// Working directory.
    pub cwd: String,
    /// Task name.
    pub name: String,
    /// Effective uid and gid.
    pub uid_gid: Option<(u32, u32)>,
}

impl Context {
    /// The protobuf form.
    pub fn to_proto(&self) -> MessageField<ContextData> {
        let creds = self.uid_gid.map(|(uid, gid)| Credentials {
            real_uid: uid,
            effective_uid: uid,
            saved_uid: uid,
            real_gid: gid,
            effective_gid: gid,
            saved_gid: gid,
            ..Credentials::default()
        });
        MessageField::some(ContextData {
            time_ns: self.time_ns,
            thread_id: self.tid,
            thread_group_id: self.pid,
            container_id: self.container_id.clone().into_bytes(),
            credentials: creds.into(),
            cwd: self.cwd.clone().into_bytes(),
            process_name: self.name.clone().into_bytes(),
            ..ContextData::default()
        })
    }
}

/// A syscall exit (present on /exit points).
pub fn exit(result: i64, errno: i64) -> MessageField<SyscallExit> {
    MessageField::some(SyscallExit {
        result,
        errorno: errno,
        ..SyscallExit::default()
    })
}

/// A whole packet: 8-byte header then the serialised message.
pub fn packet(message_type: u16, dropped_count: u32, message: &impl Message) -> Vec<u8> {
    // Serialising a well-formed in-memory message cannot fail.
    let payload = message.write_to_bytes().unwrap_or_default();
    frame(message_type, dropped_count, &payload)
}

/// A raw `sockaddr_in`.
pub fn sockaddr_in(ip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut out = (libc::AF_INET as u16).to_ne_bytes().to_vec();
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&[0; 8]);
    out
}

/// A raw `sockaddr_in6`.
pub fn sockaddr_in6(ip: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut out = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&[0; 4]);
    out
}

/// A raw `sockaddr_un` for a path (or an abstract name when it starts with '@').
pub fn sockaddr_un(path: &str) -> Vec<u8> {
    let mut out = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    match path.strip_prefix('@') {
        Some(name) => {
            out.push(0);
            out.extend_from_slice(name.as_bytes());
        }
        None => {
            out.extend_from_slice(path.as_bytes());
            out.push(0);
        }
    }
    out
}

/// A blocking client speaking the Sentry's side of the remote-sink protocol:
/// for tests and hostile-client tools.
pub struct SentryClient {
    fd: std::os::fd::OwnedFd,
}

impl SentryClient {
    /// Connects to a sink socket (no handshake yet).
    pub fn connect(path: &std::path::Path) -> std::io::Result<Self> {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        use std::os::fd::AsRawFd;
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(Self { fd })
    }

    /// Sends one raw packet.
    pub fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        use nix::sys::socket::{send, MsgFlags};
        use std::os::fd::AsRawFd;
        send(self.fd.as_raw_fd(), packet, MsgFlags::MSG_NOSIGNAL)?;
        Ok(())
    }

    /// Receives one packet (blocking).
    pub fn recv(&self) -> std::io::Result<Vec<u8>> {
        use nix::sys::socket::{recv, MsgFlags};
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; 10240];
        let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Connects and performs the handshake like runsc does; returns the
    /// sink's protocol version.
    pub fn handshake(path: &std::path::Path) -> std::io::Result<(Self, u32)> {
        let client = Self::connect(path)?;
        client.send(&crate::wire::handshake_bytes(crate::wire::PROTOCOL_VERSION))?;
        let reply = client.recv()?;
        let version = crate::wire::parse_handshake(&reply).map_err(std::io::Error::other)?;
        Ok((client, version))
    }
}
