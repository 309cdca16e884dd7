//! Decoding the network syscall points: socket, socketpair, connect, bind,
//! accept (message types 10, 12, 24, 25, 33) and listen (37, newer gVisor).

use super::syscalls::{context_only, detail, start};
use super::DecodeError;
use crate::event::{Action, AuditEvent, Category, NetworkInfo};
use crate::names::message_type as mt;
use crate::proto::syscall::{SyscallConnect, SyscallSockaddr, SyscallSocket};
use crate::sockaddr::{decode_sockaddr, family_name, socket_type_name};

/// Decodes a network message type into an event.
pub fn decode(message_type: u16, p: &[u8]) -> Result<AuditEvent, DecodeError> {
    use Action as A;
    use Category as C;
    let ev = match message_type {
        mt::SYSCALL_CONNECT => {
            let (m, mut ev) =
                start::<SyscallConnect>(message_type, p, C::Network, A::Connect, "connect")?;
            ev.network = Some(sockaddr_info(m.fd, &m.address));
            ev
        }
        mt::SYSCALL_BIND | mt::SYSCALL_ACCEPT => {
            let (action, name) = if message_type == mt::SYSCALL_BIND {
                (A::Bind, "bind")
            } else {
                (A::Accept, "accept")
            };
            let (m, mut ev) = start::<SyscallSockaddr>(message_type, p, C::Network, action, name)?;
            ev.network = Some(sockaddr_info(i64::from(m.fd), &m.address));
            ev
        }
        mt::SYSCALL_SOCKET | mt::SYSCALL_SOCKETPAIR => {
            let (action, name) = if message_type == mt::SYSCALL_SOCKET {
                (A::Socket, "socket")
            } else {
                (A::Socketpair, "socketpair")
            };
            let (m, mut ev) = start::<SyscallSocket>(message_type, p, C::Network, action, name)?;
            ev.network = Some(NetworkInfo {
                family: Some(family_name(m.domain)),
                protocol: Some(m.protocol),
                socket_type: Some(socket_type_name(m.type_)),
                ..NetworkInfo::default()
            });
            if message_type == mt::SYSCALL_SOCKETPAIR {
                detail(&mut ev, "fds", vec![m.socket1, m.socket2]);
            }
            ev
        }
        mt::SYSCALL_LISTEN => context_only(message_type, C::Network, A::Listen, "listen", p)?,
        other => return Err(DecodeError::NotASyscallType(other)),
    };
    Ok(ev)
}

/// Fields of a connect/bind/accept: the fd and the decoded address.
fn sockaddr_info(fd: i64, address: &[u8]) -> NetworkInfo {
    let mut net = NetworkInfo {
        fd: Some(fd),
        ..NetworkInfo::default()
    };
    decode_sockaddr(address, &mut net);
    net
}
