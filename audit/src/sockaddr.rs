//! Decoding the raw `sockaddr` bytes a task passed to connect/bind/accept.
//!
//! The bytes come from inside the sandbox: any length, any family. Nothing
//! here indexes without a bounds check.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::event::NetworkInfo;

/// Longest unix socket path kept (sun_path is 108 bytes).
const MAX_UNIX_PATH: usize = 108;

/// Fills family/ip/port/unix_path of `net` from a raw sockaddr.
pub fn decode_sockaddr(raw: &[u8], net: &mut NetworkInfo) {
    let Some(family) = raw.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]])) else {
        return;
    };
    let rest = &raw[2..];
    net.family = Some(family_name(i32::from(family)));
    match i32::from(family) {
        libc::AF_INET => {
            if let (Some(port), Some(ip)) = (rest.get(0..2), rest.get(2..6)) {
                net.port = Some(u16::from_be_bytes([port[0], port[1]]));
                net.ip = Some(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string());
            }
        }
        libc::AF_INET6 => {
            if let (Some(port), Some(ip)) = (rest.get(0..2), rest.get(6..22)) {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(ip);
                net.port = Some(u16::from_be_bytes([port[0], port[1]]));
                net.ip = Some(Ipv6Addr::from(octets).to_string());
            }
        }
        libc::AF_UNIX => {
            let path = &rest[..rest.len().min(MAX_UNIX_PATH)];
            net.unix_path = Some(match path.first() {
                None => String::new(),
                Some(0) => {
                    // Abstract socket: the name is every remaining byte.
                    let name = String::from_utf8_lossy(&path[1..]).replace('\0', "\\0");
                    format!("@{name}")
                }
                Some(_) => {
                    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                    String::from_utf8_lossy(&path[..end]).into_owned()
                }
            });
        }
        _ => {}
    }
}

/// A readable name for an address family.
pub fn family_name(family: i32) -> String {
    match family {
        libc::AF_UNSPEC => "unspec".to_owned(),
        libc::AF_UNIX => "unix".to_owned(),
        libc::AF_INET => "inet".to_owned(),
        libc::AF_INET6 => "inet6".to_owned(),
        libc::AF_NETLINK => "netlink".to_owned(),
        libc::AF_PACKET => "packet".to_owned(),
        other => format!("af_{other}"),
    }
}

/// A readable name for a socket type (flags such as SOCK_CLOEXEC ignored).
pub fn socket_type_name(ty: i32) -> String {
    match ty & 0xf {
        libc::SOCK_STREAM => "stream".to_owned(),
        libc::SOCK_DGRAM => "dgram".to_owned(),
        libc::SOCK_SEQPACKET => "seqpacket".to_owned(),
        libc::SOCK_RAW => "raw".to_owned(),
        other => format!("type_{other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(raw: &[u8]) -> NetworkInfo {
        let mut n = NetworkInfo::default();
        decode_sockaddr(raw, &mut n);
        n
    }

    #[test]
    fn decodes_inet_inet6_and_unix() {
        let mut v4 = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        v4.extend_from_slice(&8080u16.to_be_bytes());
        v4.extend_from_slice(&[10, 200, 0, 1]);
        v4.extend_from_slice(&[0; 8]);
        let n = decode(&v4);
        assert_eq!(
            (n.family.as_deref(), n.ip.as_deref(), n.port),
            (Some("inet"), Some("10.200.0.1"), Some(8080))
        );

        let mut v6 = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        v6.extend_from_slice(&443u16.to_be_bytes());
        v6.extend_from_slice(&[0; 4]);
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        let n = decode(&v6);
        assert_eq!((n.ip.as_deref(), n.port), (Some("::1"), Some(443)));

        let mut un = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        un.extend_from_slice(b"/run/x.sock\0junk");
        assert_eq!(decode(&un).unix_path.as_deref(), Some("/run/x.sock"));
        let mut abs = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
        abs.extend_from_slice(b"\0name");
        assert_eq!(decode(&abs).unix_path.as_deref(), Some("@name"));
    }

    #[test]
    fn short_or_odd_addresses_do_not_panic() {
        for raw in [
            &[][..],
            &[2],
            &[2, 0, 1],
            &[10, 0, 0, 80, 1],
            &[1, 0],
            &[0xff, 0xff, 1, 2],
        ] {
            let _ = decode(raw);
        }
        assert_eq!(decode(&[2, 0, 1]).ip, None);
    }
}
