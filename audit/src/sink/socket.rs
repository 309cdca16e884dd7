//! The few socket calls the sink needs (SOCK_SEQPACKET over AF_UNIX), all
//! non-blocking and close-on-exec, through nix.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{
    accept4, bind, listen, recv, send, socket, AddressFamily, Backlog, MsgFlags, SockFlag,
    SockType, UnixAddr,
};

/// Binds and listens on a SOCK_SEQPACKET socket at `path` (mode 0600). A stale
/// socket file left at `path` is replaced; any other file is an error.
pub fn listen_seqpacket(path: &Path) -> io::Result<OwnedFd> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    bind(fd.as_raw_fd(), &addr)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listen(&fd, Backlog::new(16)?)?;
    Ok(fd)
}

/// Accepts one connection, non-blocking.
pub fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    let fd = accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: accept4 just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Receives one packet into `buf`; returns the packet's full length, which is
/// larger than `buf` when the packet was truncated.
pub fn recv_packet(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    Ok(recv(
        fd.as_raw_fd(),
        buf,
        MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT,
    )?)
}

/// Sends one packet.
pub fn send_packet(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    Ok(send(
        fd.as_raw_fd(),
        data,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )?)
}

/// Registers `fd` with the current tokio reactor (an error, not a panic,
/// outside a runtime).
pub fn register(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other("not inside a tokio runtime"));
    }
    // SAFETY: an OwnedFd is an open descriptor that it alone owns and closes
    // on drop, and its as_raw_fd() never changes while the AsyncFd holds it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(io::Error::from)
}

/// The poll events `fd` has right now among `events` (and POLLHUP/POLLERR, always
/// reported), without waiting; `None` when poll itself fails.
pub fn ready_now(fd: &OwnedFd, events: libc::c_short) -> Option<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1, zero timeout; fd stays open (borrowed).
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    (n >= 0).then_some(pfd.revents)
}

/// True when the peer has hung up (a zero-length read is then EOF, not an
/// empty packet).
pub fn peer_closed(fd: &OwnedFd) -> bool {
    ready_now(fd, libc::POLLRDHUP)
        .is_none_or(|r| r & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0)
}
