//! Decoding the process and file syscall/* points (message types 6-34 and
//! 36, 38 on newer gVisor); network points are in `network.rs`.

use std::collections::BTreeMap;

use protobuf::MessageField;

use super::fields::{
    argv, dirfd, event_from_context, process_mut, resolve_path, result, syscall_point, text,
};
use super::sentry::parse;
use super::DecodeError;
use crate::event::{Action, AuditEvent, BinaryInfo, Category, FileInfo, SyscallInfo};
use crate::names::{message_type as mt, open_access, open_flag_names, syscall_name};
use crate::proto::common::ContextData;
use crate::proto::syscall::*;

/// The event skeleton every syscall point shares: point name from the syscall
/// number (falling back to `default_name`), context and result.
fn base(
    category: Category,
    action: Action,
    default_name: &str,
    sysno: u64,
    ctx: MessageField<ContextData>,
    exit: &MessageField<SyscallExit>,
) -> AuditEvent {
    let known = syscall_name(sysno);
    let mut ev = event_from_context(
        category,
        action,
        syscall_point(sysno, default_name, exit),
        ctx,
    );
    ev.result = result(exit);
    if known.is_none() {
        ev.syscall = Some(SyscallInfo {
            nr: sysno,
            ..SyscallInfo::default()
        });
    }
    ev
}

/// The fields every syscall message carries: number, context, result.
pub(super) trait SyscallHead: protobuf::Message {
    fn head(&mut self) -> (u64, MessageField<ContextData>, &MessageField<SyscallExit>);
}

macro_rules! syscall_head {
    ($($t:ty),* $(,)?) => {
        $(impl SyscallHead for $t {
            /// Takes the context out (its strings move into the event, not copied).
            fn head(&mut self) -> (u64, MessageField<ContextData>, &MessageField<SyscallExit>) {
                (self.sysno, std::mem::take(&mut self.context_data), &self.exit)
            }
        })*
    };
}

syscall_head!(
    SyscallChdir,
    SyscallChroot,
    SyscallClone,
    SyscallClose,
    SyscallCommon,
    SyscallConnect,
    SyscallDup,
    SyscallEventfd,
    SyscallExecve,
    SyscallFcntl,
    SyscallFork,
    SyscallInotifyAddWatch,
    SyscallInotifyInit,
    SyscallInotifyRmWatch,
    SyscallOpen,
    SyscallPipe,
    SyscallPrlimit,
    SyscallReadWrite,
    SyscallSetid,
    SyscallSetresid,
    SyscallSignalfd,
    SyscallSockaddr,
    SyscallSocket,
    SyscallTimerfdCreate,
    SyscallTimerfdGetTime,
    SyscallTimerfdSetTime,
);

/// Parses a syscall message and builds its event skeleton (see [`base`]).
pub(super) fn start<M: SyscallHead>(
    message_type: u16,
    p: &[u8],
    category: Category,
    action: Action,
    default_name: &str,
) -> Result<(M, AuditEvent), DecodeError> {
    let mut m = parse::<M>(message_type, p)?;
    let (sysno, ctx, exit) = m.head();
    let ev = base(category, action, default_name, sysno, ctx, exit);
    Ok((m, ev))
}

pub(super) fn detail(ev: &mut AuditEvent, key: &str, value: impl Into<serde_json::Value>) {
    ev.detail
        .get_or_insert_with(BTreeMap::new)
        .insert(key.to_owned(), value.into());
}

fn fd_file(fd: i64, fd_path: &[u8]) -> FileInfo {
    FileInfo {
        fd: Some(fd),
        path: text(fd_path),
        ..FileInfo::default()
    }
}

/// Decodes a syscall message type (6-34, 36-38) into an event.
pub fn decode(message_type: u16, p: &[u8]) -> Result<AuditEvent, DecodeError> {
    use Action as A;
    use Category as C;
    let ev = match message_type {
        mt::SYSCALL_CONNECT
        | mt::SYSCALL_BIND
        | mt::SYSCALL_ACCEPT
        | mt::SYSCALL_SOCKET
        | mt::SYSCALL_SOCKETPAIR
        | mt::SYSCALL_LISTEN => return super::network::decode(message_type, p),
        mt::SYSCALL_RAW => {
            let mut m = parse::<SyscallRaw>(message_type, p)?;
            let phase = if m.exit.is_some() { "exit" } else { "enter" };
            let point = format!("syscall/sysno/{}/{phase}", m.sysno);
            let ctx = std::mem::take(&mut m.context_data);
            let mut ev = event_from_context(C::Process, A::Syscall, point, ctx);
            ev.result = result(&m.exit);
            ev.syscall = Some(SyscallInfo {
                args: Some(vec![m.arg1, m.arg2, m.arg3, m.arg4, m.arg5, m.arg6]),
                name: syscall_name(m.sysno).map(str::to_owned),
                nr: m.sysno,
            });
            ev
        }
        mt::SYSCALL_OPEN => {
            let (m, mut ev) = start::<SyscallOpen>(message_type, p, C::File, A::Open, "open")?;
            let cwd = ev.process.as_ref().and_then(|p| p.cwd.as_deref());
            let (path, raw_path) = resolve_path(&m.pathname, m.fd, &m.fd_path, cwd);
            ev.file = Some(FileInfo {
                access: Some(open_access(m.flags).into()),
                dirfd: dirfd(m.fd),
                flag_names: Some(open_flag_names(m.flags)),
                flags: Some(m.flags),
                mode: (m.mode != 0).then_some(m.mode),
                path,
                raw_path,
                ..FileInfo::default()
            });
            ev
        }
        mt::SYSCALL_CLOSE => {
            let (m, mut ev) = start::<SyscallClose>(message_type, p, C::File, A::Close, "close")?;
            ev.file = Some(fd_file(m.fd, &m.fd_path));
            ev
        }
        mt::SYSCALL_READ | mt::SYSCALL_WRITE => {
            let (action, name) = if message_type == mt::SYSCALL_READ {
                (A::Read, "read")
            } else {
                (A::Write, "write")
            };
            let (m, mut ev) = start::<SyscallReadWrite>(message_type, p, C::File, action, name)?;
            ev.file = Some(FileInfo {
                count: Some(m.count),
                flags: (m.flags != 0).then_some(m.flags),
                offset: m.has_offset.then_some(m.offset),
                ..fd_file(m.fd, &m.fd_path)
            });
            ev
        }
        mt::SYSCALL_EXECVE => {
            let (m, mut ev) =
                start::<SyscallExecve>(message_type, p, C::Process, A::Exec, "execve")?;
            let cwd = ev.process.as_ref().and_then(|p| p.cwd.clone());
            let (path, _) = resolve_path(&m.pathname, m.fd, &m.fd_path, cwd.as_deref());
            let (args, truncated) = argv(&m.argv);
            let proc_ = process_mut(&mut ev);
            proc_.binary = path.map(|path| BinaryInfo {
                path,
                ..BinaryInfo::default()
            });
            proc_.argv = Some(args);
            proc_.argv_truncated = truncated.then_some(true);
            ev
        }
        mt::SYSCALL_CHDIR => {
            let (m, mut ev) = start::<SyscallChdir>(message_type, p, C::File, A::Chdir, "chdir")?;
            let cwd = ev.process.as_ref().and_then(|p| p.cwd.as_deref());
            let (path, raw_path) = if m.pathname.is_empty() {
                (text(&m.fd_path), None)
            } else {
                resolve_path(&m.pathname, -100, b"", cwd)
            };
            ev.file = Some(FileInfo {
                fd: (m.pathname.is_empty()).then_some(m.fd),
                path,
                raw_path,
                ..FileInfo::default()
            });
            ev
        }
        mt::SYSCALL_CHROOT => {
            let (m, mut ev) =
                start::<SyscallChroot>(message_type, p, C::File, A::Chroot, "chroot")?;
            let cwd = ev.process.as_ref().and_then(|p| p.cwd.as_deref());
            let (path, raw_path) = resolve_path(&m.pathname, -100, b"", cwd);
            ev.file = Some(FileInfo {
                path,
                raw_path,
                ..FileInfo::default()
            });
            ev
        }
        mt::SYSCALL_SETID => {
            let (m, mut ev) =
                start::<SyscallSetid>(message_type, p, C::Process, A::Setid, "setuid")?;
            detail(&mut ev, "id", m.id);
            ev
        }
        mt::SYSCALL_SETRESID => {
            let (m, mut ev) =
                start::<SyscallSetresid>(message_type, p, C::Process, A::Setid, "setresuid")?;
            detail(&mut ev, "real", m.rid);
            detail(&mut ev, "effective", m.eid);
            detail(&mut ev, "saved", m.sid);
            ev
        }
        mt::SYSCALL_PRLIMIT64 => {
            let (m, mut ev) =
                start::<SyscallPrlimit>(message_type, p, C::Process, A::Prlimit, "prlimit64")?;
            detail(&mut ev, "target_pid", m.pid);
            detail(&mut ev, "resource", m.resource);
            if let Some(new) = m.new_limit.as_ref() {
                detail(&mut ev, "new_cur", new.cur);
                detail(&mut ev, "new_max", new.max);
            }
            ev
        }
        mt::SYSCALL_PIPE => {
            let (m, mut ev) = start::<SyscallPipe>(message_type, p, C::File, A::Pipe, "pipe")?;
            detail(&mut ev, "fds", vec![m.reader, m.writer]);
            ev.file = Some(FileInfo {
                flags: (m.flags != 0).then_some(m.flags),
                ..FileInfo::default()
            });
            ev
        }
        mt::SYSCALL_FCNTL => {
            let (m, mut ev) = start::<SyscallFcntl>(message_type, p, C::File, A::Fcntl, "fcntl")?;
            ev.file = Some(fd_file(i64::from(m.fd), &m.fd_path));
            detail(&mut ev, "cmd", m.cmd);
            detail(&mut ev, "arg", m.args);
            ev
        }
        mt::SYSCALL_DUP => {
            let (m, mut ev) = start::<SyscallDup>(message_type, p, C::File, A::Dup, "dup")?;
            ev.file = Some(FileInfo {
                flags: (m.flags != 0).then_some(m.flags),
                ..fd_file(i64::from(m.old_fd), &m.fd_path)
            });
            detail(&mut ev, "new_fd", m.new_fd);
            ev
        }
        mt::SYSCALL_SIGNALFD => {
            let (m, mut ev) =
                start::<SyscallSignalfd>(message_type, p, C::File, A::Signalfd, "signalfd")?;
            ev.file = Some(fd_file(i64::from(m.fd), &m.fd_path));
            detail(&mut ev, "sigset", m.sigset);
            ev
        }
        mt::SYSCALL_EVENTFD => {
            let (m, mut ev) =
                start::<SyscallEventfd>(message_type, p, C::File, A::Eventfd, "eventfd")?;
            detail(&mut ev, "initval", m.val);
            ev
        }
        mt::SYSCALL_CLONE => {
            let (m, mut ev) =
                start::<SyscallClone>(message_type, p, C::Process, A::Clone, "clone")?;
            detail(&mut ev, "clone_flags", m.flags);
            ev
        }
        mt::SYSCALL_FORK => start::<SyscallFork>(message_type, p, C::Process, A::Fork, "fork")?.1,
        mt::SYSCALL_TIMERFD_CREATE => {
            let (m, mut ev) = start::<SyscallTimerfdCreate>(
                message_type,
                p,
                C::File,
                A::Timerfd,
                "timerfd_create",
            )?;
            detail(&mut ev, "clock_id", m.clock_id);
            ev
        }
        mt::SYSCALL_TIMERFD_SETTIME => {
            let (m, mut ev) = start::<SyscallTimerfdSetTime>(
                message_type,
                p,
                C::File,
                A::Timerfd,
                "timerfd_settime",
            )?;
            ev.file = Some(fd_file(i64::from(m.fd), &m.fd_path));
            ev
        }
        mt::SYSCALL_TIMERFD_GETTIME => {
            let (m, mut ev) = start::<SyscallTimerfdGetTime>(
                message_type,
                p,
                C::File,
                A::Timerfd,
                "timerfd_gettime",
            )?;
            ev.file = Some(fd_file(i64::from(m.fd), &m.fd_path));
            ev
        }
        mt::SYSCALL_INOTIFY_INIT => {
            start::<SyscallInotifyInit>(message_type, p, C::File, A::Inotify, "inotify_init")?.1
        }
        mt::SYSCALL_INOTIFY_ADD_WATCH => {
            let (m, mut ev) = start::<SyscallInotifyAddWatch>(
                message_type,
                p,
                C::File,
                A::Inotify,
                "inotify_add_watch",
            )?;
            let cwd = ev.process.as_ref().and_then(|p| p.cwd.as_deref());
            let (path, raw_path) = resolve_path(&m.pathname, -100, b"", cwd);
            ev.file = Some(FileInfo {
                fd: Some(i64::from(m.fd)),
                path,
                raw_path,
                ..FileInfo::default()
            });
            detail(&mut ev, "mask", m.mask);
            ev
        }
        mt::SYSCALL_INOTIFY_RM_WATCH => {
            let (m, mut ev) = start::<SyscallInotifyRmWatch>(
                message_type,
                p,
                C::File,
                A::Inotify,
                "inotify_rm_watch",
            )?;
            ev.file = Some(fd_file(i64::from(m.fd), &m.fd_path));
            detail(&mut ev, "wd", m.wd);
            ev
        }
        mt::SYSCALL_MMAP => context_only(message_type, C::File, A::Mmap, "mmap", p)?,
        mt::SYSCALL_PTRACE => context_only(message_type, C::Process, A::Ptrace, "ptrace", p)?,
        other => return Err(DecodeError::NotASyscallType(other)),
    };
    Ok(ev)
}

/// Types 36-38 from newer gVisor: only the shared fields (context, exit,
/// sysno) are decoded; the rest is skipped as unknown protobuf fields.
pub(super) fn context_only(
    message_type: u16,
    category: Category,
    action: Action,
    name: &str,
    p: &[u8],
) -> Result<AuditEvent, DecodeError> {
    Ok(start::<SyscallCommon>(message_type, p, category, action, name)?.1)
}
