//! Lookup tables: gVisor message types, x86-64 syscall numbers, errno names
//! and open(2) flag names. Used to rebuild point names and readable fields.

/// gVisor's message types (points/common.proto `MessageType`).
pub mod message_type {
    /// container/start.
    pub const CONTAINER_START: u16 = 1;
    /// sentry/clone.
    pub const SENTRY_CLONE: u16 = 2;
    /// sentry/execve.
    pub const SENTRY_EXEC: u16 = 3;
    /// sentry/exit_notify_parent.
    pub const SENTRY_EXIT_NOTIFY_PARENT: u16 = 4;
    /// sentry/task_exit.
    pub const SENTRY_TASK_EXIT: u16 = 5;
    /// syscall/sysno/N.
    pub const SYSCALL_RAW: u16 = 6;
    /// open, openat, creat.
    pub const SYSCALL_OPEN: u16 = 7;
    /// close.
    pub const SYSCALL_CLOSE: u16 = 8;
    /// The read family.
    pub const SYSCALL_READ: u16 = 9;
    /// connect.
    pub const SYSCALL_CONNECT: u16 = 10;
    /// execve, execveat.
    pub const SYSCALL_EXECVE: u16 = 11;
    /// socket.
    pub const SYSCALL_SOCKET: u16 = 12;
    /// chdir, fchdir.
    pub const SYSCALL_CHDIR: u16 = 13;
    /// setuid, setgid, setsid.
    pub const SYSCALL_SETID: u16 = 14;
    /// setresuid, setresgid.
    pub const SYSCALL_SETRESID: u16 = 15;
    /// prlimit64.
    pub const SYSCALL_PRLIMIT64: u16 = 16;
    /// pipe, pipe2.
    pub const SYSCALL_PIPE: u16 = 17;
    /// fcntl.
    pub const SYSCALL_FCNTL: u16 = 18;
    /// dup, dup2, dup3.
    pub const SYSCALL_DUP: u16 = 19;
    /// signalfd, signalfd4.
    pub const SYSCALL_SIGNALFD: u16 = 20;
    /// chroot.
    pub const SYSCALL_CHROOT: u16 = 21;
    /// eventfd, eventfd2.
    pub const SYSCALL_EVENTFD: u16 = 22;
    /// clone.
    pub const SYSCALL_CLONE: u16 = 23;
    /// bind.
    pub const SYSCALL_BIND: u16 = 24;
    /// accept, accept4.
    pub const SYSCALL_ACCEPT: u16 = 25;
    /// timerfd_create.
    pub const SYSCALL_TIMERFD_CREATE: u16 = 26;
    /// timerfd_settime.
    pub const SYSCALL_TIMERFD_SETTIME: u16 = 27;
    /// timerfd_gettime.
    pub const SYSCALL_TIMERFD_GETTIME: u16 = 28;
    /// fork, vfork.
    pub const SYSCALL_FORK: u16 = 29;
    /// inotify_init, inotify_init1.
    pub const SYSCALL_INOTIFY_INIT: u16 = 30;
    /// inotify_add_watch.
    pub const SYSCALL_INOTIFY_ADD_WATCH: u16 = 31;
    /// inotify_rm_watch.
    pub const SYSCALL_INOTIFY_RM_WATCH: u16 = 32;
    /// socketpair.
    pub const SYSCALL_SOCKETPAIR: u16 = 33;
    /// The write family.
    pub const SYSCALL_WRITE: u16 = 34;
    /// sentry/mmap (newer gVisor; decoded context-only).
    pub const SENTRY_MMAP: u16 = 35;
    /// mmap (newer gVisor; decoded context-only).
    pub const SYSCALL_MMAP: u16 = 36;
    /// listen (newer gVisor; decoded context-only).
    pub const SYSCALL_LISTEN: u16 = 37;
    /// ptrace (newer gVisor; decoded context-only).
    pub const SYSCALL_PTRACE: u16 = 38;
    /// The highest message type this build decodes.
    pub const MAX_KNOWN: u16 = 38;
}

/// x86-64 syscall numbers of the syscalls gVisor has points for.
#[cfg(target_arch = "x86_64")]
const SYSCALLS: &[(u64, &str)] = &[
    (0, "read"),
    (1, "write"),
    (2, "open"),
    (3, "close"),
    (9, "mmap"),
    (17, "pread64"),
    (18, "pwrite64"),
    (19, "readv"),
    (20, "writev"),
    (22, "pipe"),
    (32, "dup"),
    (33, "dup2"),
    (41, "socket"),
    (42, "connect"),
    (43, "accept"),
    (49, "bind"),
    (50, "listen"),
    (53, "socketpair"),
    (56, "clone"),
    (57, "fork"),
    (58, "vfork"),
    (59, "execve"),
    (72, "fcntl"),
    (80, "chdir"),
    (81, "fchdir"),
    (85, "creat"),
    (101, "ptrace"),
    (105, "setuid"),
    (106, "setgid"),
    (112, "setsid"),
    (117, "setresuid"),
    (119, "setresgid"),
    (161, "chroot"),
    (253, "inotify_init"),
    (254, "inotify_add_watch"),
    (255, "inotify_rm_watch"),
    (257, "openat"),
    (282, "signalfd"),
    (283, "timerfd_create"),
    (284, "eventfd"),
    (286, "timerfd_settime"),
    (287, "timerfd_gettime"),
    (288, "accept4"),
    (289, "signalfd4"),
    (290, "eventfd2"),
    (292, "dup3"),
    (293, "pipe2"),
    (294, "inotify_init1"),
    (295, "preadv"),
    (296, "pwritev"),
    (302, "prlimit64"),
    (322, "execveat"),
    (327, "preadv2"),
    (328, "pwritev2"),
];

/// Other architectures: names are not rebuilt; points fall back to generic names.
#[cfg(not(target_arch = "x86_64"))]
const SYSCALLS: &[(u64, &str)] = &[];

/// The syscall's name for this architecture, when it is one gVisor has a point for.
pub fn syscall_name(nr: u64) -> Option<&'static str> {
    SYSCALLS
        .binary_search_by_key(&nr, |&(n, _)| n)
        .ok()
        .and_then(|i| SYSCALLS.get(i))
        .map(|&(_, name)| name)
}

/// The point name `syscall/<name>/<enter|exit>` of a syscall in [`syscall_name`]'s table,
/// built once per process (points are named once per event).
pub fn syscall_point_name(nr: u64, exit: bool) -> Option<&'static str> {
    static NAMES: std::sync::OnceLock<Vec<[&'static str; 2]>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        SYSCALLS
            .iter()
            .map(|&(_, name)| {
                let leak = |phase: &str| -> &'static str {
                    Box::leak(format!("syscall/{name}/{phase}").into_boxed_str())
                };
                [leak("enter"), leak("exit")]
            })
            .collect()
    });
    let i = SYSCALLS.binary_search_by_key(&nr, |&(n, _)| n).ok()?;
    names.get(i).map(|pair| pair[usize::from(exit)])
}

/// The symbolic name of a Linux errno, for the common ones.
pub fn errno_name(errno: i64) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        6 => "ENXIO",
        7 => "E2BIG",
        8 => "ENOEXEC",
        9 => "EBADF",
        10 => "ECHILD",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        18 => "EXDEV",
        19 => "ENODEV",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        23 => "ENFILE",
        24 => "EMFILE",
        25 => "ENOTTY",
        26 => "ETXTBSY",
        27 => "EFBIG",
        28 => "ENOSPC",
        29 => "ESPIPE",
        30 => "EROFS",
        31 => "EMLINK",
        32 => "EPIPE",
        36 => "ENAMETOOLONG",
        38 => "ENOSYS",
        39 => "ENOTEMPTY",
        40 => "ELOOP",
        88 => "ENOTSOCK",
        95 => "EOPNOTSUPP",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        101 => "ENETUNREACH",
        104 => "ECONNRESET",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        113 => "EHOSTUNREACH",
        115 => "EINPROGRESS",
        _ => return None,
    })
}

/// open(2) flags worth naming, besides the access mode.
const OPEN_FLAGS: &[(libc::c_int, &str)] = &[
    (libc::O_CREAT, "O_CREAT"),
    (libc::O_EXCL, "O_EXCL"),
    (libc::O_NOCTTY, "O_NOCTTY"),
    (libc::O_TRUNC, "O_TRUNC"),
    (libc::O_APPEND, "O_APPEND"),
    (libc::O_NONBLOCK, "O_NONBLOCK"),
    (libc::O_DSYNC, "O_DSYNC"),
    (libc::O_DIRECT, "O_DIRECT"),
    (libc::O_DIRECTORY, "O_DIRECTORY"),
    (libc::O_NOFOLLOW, "O_NOFOLLOW"),
    (libc::O_NOATIME, "O_NOATIME"),
    (libc::O_CLOEXEC, "O_CLOEXEC"),
    (libc::O_PATH, "O_PATH"),
];

/// `read`, `write` or `read_write` from open flags (`path` for O_PATH).
pub fn open_access(flags: u32) -> &'static str {
    let flags = flags as libc::c_int;
    if flags & libc::O_PATH != 0 {
        return "path";
    }
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => "write",
        libc::O_RDWR => "read_write",
        libc::O_RDONLY => "read",
        _ => "invalid",
    }
}

/// Names of the flags set in `flags`, access mode first (static: one small vector per open).
pub fn open_flag_names(flags: u32) -> Vec<std::borrow::Cow<'static, str>> {
    let flags = flags as libc::c_int;
    let mut names = Vec::with_capacity(4);
    names.push(
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => "O_WRONLY",
            libc::O_RDWR => "O_RDWR",
            libc::O_RDONLY => "O_RDONLY",
            _ => "O_ACCMODE",
        }
        .into(),
    );
    for &(bit, name) in OPEN_FLAGS {
        if flags & bit == bit {
            names.push(name.into());
        }
    }
    names
}

/// True when open flags can change the file (write access, create or truncate).
pub fn open_may_write(flags: u32) -> bool {
    let flags = flags as libc::c_int;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_CREAT | libc::O_TRUNC) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syscall_table_is_sorted_and_finds_names() {
        assert!(SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(syscall_point_name(257, true), Some("syscall/openat/exit"));
            assert_eq!(syscall_point_name(257, false), Some("syscall/openat/enter"));
            assert_eq!(syscall_point_name(100_000, true), None);
        }
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(syscall_name(257), Some("openat"));
            assert_eq!(syscall_name(59), Some("execve"));
        }
        assert_eq!(syscall_name(100_000), None);
    }

    #[test]
    fn names_open_flags() {
        let f = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32;
        assert_eq!(open_access(f), "write");
        assert_eq!(open_flag_names(f), ["O_WRONLY", "O_CREAT", "O_TRUNC"]);
        assert!(open_may_write(f));
        assert!(!open_may_write(libc::O_RDONLY as u32));
        assert_eq!(errno_name(2), Some("ENOENT"));
    }
}
