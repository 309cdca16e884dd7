//! Packet → [`AuditEvent`]: gVisor's wire format in, events out.
//!
//! Knows the Sentry's framing and protobuf messages and nothing about output.
//! Every packet is untrusted: malformed ones return a typed [`DecodeError`]
//! (the sink counts and skips them), unknown message types return
//! [`Body::Unknown`], and nothing here panics on any input (fuzzed).

mod fields;
mod network;
mod sentry;
mod syscalls;

use crate::event::{Action, AuditEvent, Category};
use crate::names::message_type as mt;
use crate::wire::{split_packet, Header, WireError};

pub use fields::{MAX_ARGS, MAX_ARGV_BYTES, MAX_TEXT};
pub use sentry::wait_status;

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The framing is broken.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The payload is not a valid protobuf of the announced type.
    #[error("message type {message_type}: bad protobuf: {reason}")]
    Protobuf {
        /// The header's message type.
        message_type: u16,
        /// What the protobuf parser said.
        reason: String,
    },
    /// Internal: a non-syscall type reached the syscall decoder.
    #[error("message type {0} is not a syscall point")]
    NotASyscallType(u16),
}

/// What a packet carried.
#[derive(Debug, Clone, PartialEq)]
// Not boxed: the event moves straight into the reader's batch, and a 1 KB allocation per
// event (glibc consolidates its free lists for every allocation that large) cost more
// than the move.
#[allow(clippy::large_enum_variant)]
pub enum Body {
    /// A decoded event (sandbox fields not yet stamped).
    Event(AuditEvent),
    /// A message type this build does not know; counted, not decoded.
    Unknown,
}

/// A decoded packet: its header and what it carried.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedPacket {
    /// The packet header (message type, gVisor's dropped count).
    pub header: Header,
    /// The event, or `Unknown`.
    pub body: Body,
}

/// Decodes one packet received from the Sentry.
pub fn decode_packet(packet: &[u8]) -> Result<DecodedPacket, DecodeError> {
    let (header, payload) = split_packet(packet)?;
    let body = match decode_payload(header.message_type, payload)? {
        Some(event) => Body::Event(event),
        None => Body::Unknown,
    };
    Ok(DecodedPacket { header, body })
}

/// Decodes a payload of `message_type`; `None` for unknown types.
pub fn decode_payload(
    message_type: u16,
    payload: &[u8],
) -> Result<Option<AuditEvent>, DecodeError> {
    let event = match message_type {
        mt::CONTAINER_START => sentry::container_start(payload)?,
        mt::SENTRY_CLONE => sentry::clone(payload)?,
        mt::SENTRY_EXEC => sentry::execve(payload)?,
        mt::SENTRY_EXIT_NOTIFY_PARENT | mt::SENTRY_TASK_EXIT => {
            sentry::exit(message_type, payload)?
        }
        mt::SENTRY_MMAP => sentry::context_only(
            message_type,
            Category::File,
            Action::Mmap,
            "sentry/mmap",
            payload,
        )?,
        mt::SYSCALL_RAW..=mt::SYSCALL_WRITE | mt::SYSCALL_MMAP..=mt::SYSCALL_PTRACE => {
            syscalls::decode(message_type, payload)?
        }
        _ => return Ok(None),
    };
    Ok(Some(event))
}

/// The gVisor point family a message type belongs to, for messages and stats.
pub fn message_type_name(message_type: u16) -> &'static str {
    match message_type {
        mt::CONTAINER_START => "container/start",
        mt::SENTRY_CLONE => "sentry/clone",
        mt::SENTRY_EXEC => "sentry/execve",
        mt::SENTRY_EXIT_NOTIFY_PARENT => "sentry/exit_notify_parent",
        mt::SENTRY_TASK_EXIT => "sentry/task_exit",
        mt::SYSCALL_RAW => "syscall/sysno",
        mt::SYSCALL_OPEN => "syscall/open",
        mt::SYSCALL_CLOSE => "syscall/close",
        mt::SYSCALL_READ => "syscall/read",
        mt::SYSCALL_CONNECT => "syscall/connect",
        mt::SYSCALL_EXECVE => "syscall/execve",
        mt::SYSCALL_SOCKET => "syscall/socket",
        mt::SYSCALL_CHDIR => "syscall/chdir",
        mt::SYSCALL_SETID => "syscall/setid",
        mt::SYSCALL_SETRESID => "syscall/setresid",
        mt::SYSCALL_PRLIMIT64 => "syscall/prlimit64",
        mt::SYSCALL_PIPE => "syscall/pipe",
        mt::SYSCALL_FCNTL => "syscall/fcntl",
        mt::SYSCALL_DUP => "syscall/dup",
        mt::SYSCALL_SIGNALFD => "syscall/signalfd",
        mt::SYSCALL_CHROOT => "syscall/chroot",
        mt::SYSCALL_EVENTFD => "syscall/eventfd",
        mt::SYSCALL_CLONE => "syscall/clone",
        mt::SYSCALL_BIND => "syscall/bind",
        mt::SYSCALL_ACCEPT => "syscall/accept",
        mt::SYSCALL_TIMERFD_CREATE => "syscall/timerfd_create",
        mt::SYSCALL_TIMERFD_SETTIME => "syscall/timerfd_settime",
        mt::SYSCALL_TIMERFD_GETTIME => "syscall/timerfd_gettime",
        mt::SYSCALL_FORK => "syscall/fork",
        mt::SYSCALL_INOTIFY_INIT => "syscall/inotify_init",
        mt::SYSCALL_INOTIFY_ADD_WATCH => "syscall/inotify_add_watch",
        mt::SYSCALL_INOTIFY_RM_WATCH => "syscall/inotify_rm_watch",
        mt::SYSCALL_SOCKETPAIR => "syscall/socketpair",
        mt::SYSCALL_WRITE => "syscall/write",
        mt::SENTRY_MMAP => "sentry/mmap",
        mt::SYSCALL_MMAP => "syscall/mmap",
        mt::SYSCALL_LISTEN => "syscall/listen",
        mt::SYSCALL_PTRACE => "syscall/ptrace",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests;
