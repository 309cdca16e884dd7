//! Every message type through the decoder, built with `encode.rs`, plus
//! malformed packets.

use std::net::{Ipv4Addr, Ipv6Addr};

use protobuf::MessageField;

use super::*;
use crate::encode::{exit, packet, sockaddr_in, sockaddr_in6, sockaddr_un, Context};
use crate::proto::container::ContainerStart;
use crate::proto::sentry::{ContextOnly, SentryClone, SentryExecve, SentryExit};
use crate::proto::syscall::*;

fn ctx() -> Context {
    Context {
        time_ns: 1_795_744_503_000_000_001,
        tid: 12,
        pid: 10,
        container_id: "c1".into(),
        cwd: "/work".into(),
        name: "sh".into(),
        uid_gid: Some((1000, 100)),
    }
}

fn decode_ok(p: &[u8]) -> AuditEvent {
    match decode_packet(p) {
        Ok(DecodedPacket {
            body: Body::Event(ev),
            ..
        }) => ev,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn point(ev: &AuditEvent) -> &str {
    ev.point.as_deref().unwrap_or("")
}

#[test]
fn container_start_carries_id_argv_and_context() {
    let m = ContainerStart {
        context_data: ctx().to_proto(),
        id: b"c1".to_vec(),
        cwd: b"/".to_vec(),
        args: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo hi".to_vec()],
        env: vec![b"SECRET=1".to_vec()],
        ..Default::default()
    };
    let ev = decode_ok(&packet(mt::CONTAINER_START, 0, &m));
    assert_eq!(
        (ev.category, ev.action, point(&ev)),
        (Category::Process, Action::Exec, "container/start")
    );
    assert_eq!(ev.container_id.as_deref(), Some("c1"));
    assert_eq!(ev.time.to_string(), "2026-11-27T01:55:03.000000001Z");
    let p = ev.process.unwrap_or_default();
    assert_eq!(
        p.argv,
        Some(vec!["sh".into(), "-c".into(), "echo hi".into()])
    );
    assert_eq!(
        (p.pid, p.tid, p.uid, p.gid),
        (Some(10), Some(12), Some(1000), Some(100))
    );
    assert_eq!(p.cwd.as_deref(), Some("/"));
    let json =
        serde_json::to_string(&decode_ok(&packet(mt::CONTAINER_START, 0, &m))).unwrap_or_default();
    assert!(!json.contains("SECRET"), "env must never be recorded");
}

#[test]
fn sentry_points() {
    let clone = SentryClone {
        context_data: ctx().to_proto(),
        created_thread_id: 13,
        created_thread_group_id: 13,
        ..Default::default()
    };
    let ev = decode_ok(&packet(mt::SENTRY_CLONE, 0, &clone));
    assert_eq!((ev.action, point(&ev)), (Action::Clone, "sentry/clone"));
    assert_eq!(
        ev.detail.and_then(|d| d.get("child_pid").cloned()),
        Some(13.into())
    );

    let exec = SentryExecve {
        context_data: ctx().to_proto(),
        binary_path: b"/bin/cat".to_vec(),
        argv: vec![b"cat".to_vec(), b"/tmp/x".to_vec()],
        binary_mode: 0o100755,
        binary_sha256: vec![0xab; 32],
        env: vec![
            b"TOKEN=secret".to_vec(),
            b"LD_PRELOAD=/tmp/x.so".to_vec(),
            b"LD_PRELOADX=no".to_vec(),
            b"GCONV_PATH=/tmp/g".to_vec(),
            b"PATH=/bin".to_vec(),
        ],
        ..Default::default()
    };
    let ev = decode_ok(&packet(mt::SENTRY_EXEC, 0, &exec));
    assert_eq!((ev.action, point(&ev)), (Action::Exec, "sentry/execve"));
    assert_eq!(ev.executed_binary(), Some("/bin/cat"));
    // Only the loader's variables are kept from the environment, never the rest.
    let line = serde_json::to_string(&ev).unwrap_or_default();
    assert!(
        !line.contains("secret") && !line.contains("PATH=") && !line.contains("LD_PRELOADX"),
        "{line}"
    );
    let loader = ev
        .process
        .as_ref()
        .and_then(|p| p.loader_env.clone())
        .unwrap_or_default();
    assert_eq!(
        loader.into_iter().collect::<Vec<_>>(),
        vec![
            ("GCONV_PATH".to_owned(), "/tmp/g".to_owned()),
            ("LD_PRELOAD".to_owned(), "/tmp/x.so".to_owned())
        ]
    );
    let bin = ev.process.and_then(|p| p.binary).unwrap_or_default();
    assert_eq!(bin.path, "/bin/cat");
    assert_eq!(bin.sha256.map(|s| s.len()), Some(64));

    for (ty, name) in [
        (mt::SENTRY_TASK_EXIT, "sentry/task_exit"),
        (mt::SENTRY_EXIT_NOTIFY_PARENT, "sentry/exit_notify_parent"),
    ] {
        let m = SentryExit {
            context_data: ctx().to_proto(),
            exit_status: 7 << 8,
            ..Default::default()
        };
        let ev = decode_ok(&packet(ty, 0, &m));
        assert_eq!((ev.action, point(&ev)), (Action::Exit, name));
        assert_eq!(ev.exit.and_then(|e| e.code), Some(7));
    }
}

#[test]
fn open_resolves_path_and_names_flags() {
    let m = SyscallOpen {
        context_data: ctx().to_proto(),
        exit: exit(3, 0),
        sysno: 257,
        fd: -100,
        pathname: b"out.txt".to_vec(),
        flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC) as u32,
        mode: 0o644,
        ..Default::default()
    };
    let ev = decode_ok(&packet(mt::SYSCALL_OPEN, 0, &m));
    assert_eq!((ev.category, ev.action), (Category::File, Action::Open));
    if cfg!(target_arch = "x86_64") {
        assert_eq!(point(&ev), "syscall/openat/exit");
    }
    let f = ev.file.unwrap_or_default();
    assert_eq!(f.path.as_deref(), Some("/work/out.txt"));
    assert_eq!(f.raw_path.as_deref(), Some("out.txt"));
    assert_eq!(f.access.as_deref(), Some("write"));
    assert_eq!(f.mode, Some(0o644));
    assert_eq!(ev.result.map(|r| r.retval), Some(3));

    let failed = SyscallOpen {
        exit: exit(-2, 2),
        ..m.clone()
    };
    let r = decode_ok(&packet(mt::SYSCALL_OPEN, 0, &failed))
        .result
        .unwrap_or_default();
    assert_eq!(
        (r.errno, r.errno_name.as_deref()),
        (Some(2), Some("ENOENT"))
    );
    let enter = SyscallOpen {
        exit: MessageField::none(),
        ..m
    };
    let ev = decode_ok(&packet(mt::SYSCALL_OPEN, 0, &enter));
    assert!(point(&ev).ends_with("/enter") && ev.result.is_none());
}

/// (type, sockaddr, action, ip, port, unix path)
type NetCase = (
    u16,
    Vec<u8>,
    Action,
    Option<&'static str>,
    Option<u16>,
    Option<&'static str>,
);

#[test]
fn network_points_decode_addresses() {
    let cases: [NetCase; 4] = [
        (
            mt::SYSCALL_CONNECT,
            sockaddr_in(Ipv4Addr::new(10, 200, 0, 1), 8080),
            Action::Connect,
            Some("10.200.0.1"),
            Some(8080),
            None,
        ),
        (
            mt::SYSCALL_BIND,
            sockaddr_in6(Ipv6Addr::LOCALHOST, 9090),
            Action::Bind,
            Some("::1"),
            Some(9090),
            None,
        ),
        (
            mt::SYSCALL_ACCEPT,
            sockaddr_in(Ipv4Addr::LOCALHOST, 40000),
            Action::Accept,
            Some("127.0.0.1"),
            Some(40000),
            None,
        ),
        (
            mt::SYSCALL_CONNECT,
            sockaddr_un("/run/agent.sock"),
            Action::Connect,
            None,
            None,
            Some("/run/agent.sock"),
        ),
    ];
    for (ty, addr, action, ip, port, unix) in cases {
        let ev = if ty == mt::SYSCALL_CONNECT {
            decode_ok(&packet(
                ty,
                0,
                &SyscallConnect {
                    context_data: ctx().to_proto(),
                    exit: exit(0, 0),
                    sysno: 42,
                    fd: 4,
                    address: addr,
                    ..Default::default()
                },
            ))
        } else {
            decode_ok(&packet(
                ty,
                0,
                &SyscallSockaddr {
                    context_data: ctx().to_proto(),
                    exit: exit(0, 0),
                    sysno: 49,
                    fd: 4,
                    address: addr,
                    ..Default::default()
                },
            ))
        };
        assert_eq!((ev.category, ev.action), (Category::Network, action));
        let n = ev.network.unwrap_or_default();
        assert_eq!(
            (n.ip.as_deref(), n.port, n.unix_path.as_deref(), n.fd),
            (ip, port, unix, Some(4))
        );
    }
    for (ty, action) in [
        (mt::SYSCALL_SOCKET, Action::Socket),
        (mt::SYSCALL_SOCKETPAIR, Action::Socketpair),
    ] {
        let m = SyscallSocket {
            context_data: ctx().to_proto(),
            sysno: 41,
            domain: libc::AF_INET,
            type_: libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            protocol: 6,
            ..Default::default()
        };
        let ev = decode_ok(&packet(ty, 0, &m));
        let n = ev.network.unwrap_or_default();
        assert_eq!(
            (ev.action, n.family.as_deref(), n.socket_type.as_deref()),
            (action, Some("inet"), Some("stream"))
        );
    }
}

#[test]
fn exec_and_file_io_points() {
    let m = SyscallExecve {
        context_data: ctx().to_proto(),
        sysno: 59,
        fd: -100,
        pathname: b"/bin/cat".to_vec(),
        argv: vec![b"cat".to_vec()],
        envv: vec![b"TOKEN=x".to_vec()],
        ..Default::default()
    };
    let ev = decode_ok(&packet(mt::SYSCALL_EXECVE, 0, &m));
    assert_eq!((ev.category, ev.action), (Category::Process, Action::Exec));
    assert_eq!(
        ev.process
            .as_ref()
            .and_then(|p| p.binary.as_ref())
            .map(|b| b.path.as_str()),
        Some("/bin/cat")
    );
    assert!(!serde_json::to_string(&ev)
        .unwrap_or_default()
        .contains("TOKEN"));

    for (ty, action) in [
        (mt::SYSCALL_READ, Action::Read),
        (mt::SYSCALL_WRITE, Action::Write),
    ] {
        let m = SyscallReadWrite {
            context_data: ctx().to_proto(),
            exit: exit(3, 0),
            sysno: 1,
            fd: 1,
            fd_path: b"/tmp/x".to_vec(),
            count: 3,
            has_offset: true,
            offset: 9,
            ..Default::default()
        };
        let ev = decode_ok(&packet(ty, 0, &m));
        let f = ev.file.unwrap_or_default();
        assert_eq!(
            (ev.action, f.path.as_deref(), f.count, f.offset),
            (action, Some("/tmp/x"), Some(3), Some(9))
        );
    }
    let m = SyscallClose {
        context_data: ctx().to_proto(),
        sysno: 3,
        fd: 3,
        fd_path: b"/tmp/x".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        decode_ok(&packet(mt::SYSCALL_CLOSE, 0, &m)).action,
        Action::Close
    );
    let m = SyscallChdir {
        context_data: ctx().to_proto(),
        sysno: 80,
        pathname: b"sub".to_vec(),
        ..Default::default()
    };
    let ev = decode_ok(&packet(mt::SYSCALL_CHDIR, 0, &m));
    assert_eq!(ev.file.and_then(|f| f.path).as_deref(), Some("/work/sub"));
    let m = SyscallChroot {
        context_data: ctx().to_proto(),
        sysno: 161,
        pathname: b"/jail".to_vec(),
        ..Default::default()
    };
    assert_eq!(
        decode_ok(&packet(mt::SYSCALL_CHROOT, 0, &m)).action,
        Action::Chroot
    );
}

#[test]
fn remaining_syscall_types_decode() {
    let c = || ctx().to_proto();
    let cases: Vec<(u16, Vec<u8>, Action)> = vec![
        (
            mt::SYSCALL_RAW,
            packet(
                mt::SYSCALL_RAW,
                0,
                &SyscallRaw {
                    context_data: c(),
                    sysno: 39,
                    arg1: 1,
                    ..Default::default()
                },
            ),
            Action::Syscall,
        ),
        (
            mt::SYSCALL_SETID,
            packet(
                mt::SYSCALL_SETID,
                0,
                &SyscallSetid {
                    context_data: c(),
                    sysno: 105,
                    id: 0,
                    ..Default::default()
                },
            ),
            Action::Setid,
        ),
        (
            mt::SYSCALL_SETRESID,
            packet(
                mt::SYSCALL_SETRESID,
                0,
                &SyscallSetresid {
                    context_data: c(),
                    sysno: 117,
                    rid: 1,
                    eid: 2,
                    sid: 3,
                    ..Default::default()
                },
            ),
            Action::Setid,
        ),
        (
            mt::SYSCALL_PRLIMIT64,
            packet(
                mt::SYSCALL_PRLIMIT64,
                0,
                &SyscallPrlimit {
                    context_data: c(),
                    sysno: 302,
                    new_limit: MessageField::some(Rlimit {
                        cur: 1,
                        max: 2,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            Action::Prlimit,
        ),
        (
            mt::SYSCALL_PIPE,
            packet(
                mt::SYSCALL_PIPE,
                0,
                &SyscallPipe {
                    context_data: c(),
                    sysno: 293,
                    reader: 3,
                    writer: 4,
                    ..Default::default()
                },
            ),
            Action::Pipe,
        ),
        (
            mt::SYSCALL_FCNTL,
            packet(
                mt::SYSCALL_FCNTL,
                0,
                &SyscallFcntl {
                    context_data: c(),
                    sysno: 72,
                    fd: 3,
                    cmd: 1,
                    ..Default::default()
                },
            ),
            Action::Fcntl,
        ),
        (
            mt::SYSCALL_DUP,
            packet(
                mt::SYSCALL_DUP,
                0,
                &SyscallDup {
                    context_data: c(),
                    sysno: 33,
                    old_fd: 3,
                    new_fd: 1,
                    ..Default::default()
                },
            ),
            Action::Dup,
        ),
        (
            mt::SYSCALL_SIGNALFD,
            packet(
                mt::SYSCALL_SIGNALFD,
                0,
                &SyscallSignalfd {
                    context_data: c(),
                    sysno: 289,
                    fd: -1,
                    ..Default::default()
                },
            ),
            Action::Signalfd,
        ),
        (
            mt::SYSCALL_EVENTFD,
            packet(
                mt::SYSCALL_EVENTFD,
                0,
                &SyscallEventfd {
                    context_data: c(),
                    sysno: 290,
                    ..Default::default()
                },
            ),
            Action::Eventfd,
        ),
        (
            mt::SYSCALL_CLONE,
            packet(
                mt::SYSCALL_CLONE,
                0,
                &SyscallClone {
                    context_data: c(),
                    sysno: 56,
                    flags: 0x11,
                    ..Default::default()
                },
            ),
            Action::Clone,
        ),
        (
            mt::SYSCALL_TIMERFD_CREATE,
            packet(
                mt::SYSCALL_TIMERFD_CREATE,
                0,
                &SyscallTimerfdCreate {
                    context_data: c(),
                    sysno: 283,
                    ..Default::default()
                },
            ),
            Action::Timerfd,
        ),
        (
            mt::SYSCALL_TIMERFD_SETTIME,
            packet(
                mt::SYSCALL_TIMERFD_SETTIME,
                0,
                &SyscallTimerfdSetTime {
                    context_data: c(),
                    sysno: 286,
                    new_value: MessageField::some(ItimerSpec::default()),
                    ..Default::default()
                },
            ),
            Action::Timerfd,
        ),
        (
            mt::SYSCALL_TIMERFD_GETTIME,
            packet(
                mt::SYSCALL_TIMERFD_GETTIME,
                0,
                &SyscallTimerfdGetTime {
                    context_data: c(),
                    sysno: 287,
                    ..Default::default()
                },
            ),
            Action::Timerfd,
        ),
        (
            mt::SYSCALL_FORK,
            packet(
                mt::SYSCALL_FORK,
                0,
                &SyscallFork {
                    context_data: c(),
                    sysno: 57,
                    exit: exit(11, 0),
                    ..Default::default()
                },
            ),
            Action::Fork,
        ),
        (
            mt::SYSCALL_INOTIFY_INIT,
            packet(
                mt::SYSCALL_INOTIFY_INIT,
                0,
                &SyscallInotifyInit {
                    context_data: c(),
                    sysno: 294,
                    ..Default::default()
                },
            ),
            Action::Inotify,
        ),
        (
            mt::SYSCALL_INOTIFY_ADD_WATCH,
            packet(
                mt::SYSCALL_INOTIFY_ADD_WATCH,
                0,
                &SyscallInotifyAddWatch {
                    context_data: c(),
                    sysno: 254,
                    pathname: b"/etc".to_vec(),
                    ..Default::default()
                },
            ),
            Action::Inotify,
        ),
        (
            mt::SYSCALL_INOTIFY_RM_WATCH,
            packet(
                mt::SYSCALL_INOTIFY_RM_WATCH,
                0,
                &SyscallInotifyRmWatch {
                    context_data: c(),
                    sysno: 255,
                    ..Default::default()
                },
            ),
            Action::Inotify,
        ),
        (
            mt::SYSCALL_MMAP,
            packet(
                mt::SYSCALL_MMAP,
                0,
                &SyscallCommon {
                    context_data: c(),
                    sysno: 9,
                    ..Default::default()
                },
            ),
            Action::Mmap,
        ),
        (
            mt::SYSCALL_LISTEN,
            packet(
                mt::SYSCALL_LISTEN,
                0,
                &SyscallCommon {
                    context_data: c(),
                    sysno: 50,
                    ..Default::default()
                },
            ),
            Action::Listen,
        ),
        (
            mt::SYSCALL_PTRACE,
            packet(
                mt::SYSCALL_PTRACE,
                0,
                &SyscallCommon {
                    context_data: c(),
                    sysno: 101,
                    ..Default::default()
                },
            ),
            Action::Ptrace,
        ),
        (
            mt::SENTRY_MMAP,
            packet(
                mt::SENTRY_MMAP,
                0,
                &ContextOnly {
                    context_data: c(),
                    ..Default::default()
                },
            ),
            Action::Mmap,
        ),
    ];
    for (ty, p, action) in cases {
        let ev = decode_ok(&p);
        assert_eq!(ev.action, action, "type {ty}");
        assert_eq!(ev.container_id.as_deref(), Some("c1"), "type {ty}");
        assert!(
            point(&ev).starts_with(message_type_name(ty).split('/').next().unwrap_or("")),
            "type {ty}: {}",
            point(&ev)
        );
    }
}

#[test]
fn unknown_types_and_dropped_count_pass_through() {
    let p = packet(200, 42, &SyscallFork::default());
    let d = decode_packet(&p);
    assert!(
        matches!(d, Ok(DecodedPacket { body: Body::Unknown, header }) if header.dropped_count == 42 && header.message_type == 200)
    );
    // A message with no fields at all is still an event (proto3 defaults).
    assert!(matches!(
        decode_packet(&packet(mt::SENTRY_TASK_EXIT, 0, &SentryExit::default())),
        Ok(DecodedPacket {
            body: Body::Event(_),
            ..
        })
    ));
}

#[test]
fn malformed_packets_are_typed_errors() {
    assert!(matches!(
        decode_packet(&[1, 2, 3]),
        Err(DecodeError::Wire(WireError::ShortHeader { len: 3 }))
    ));
    assert!(matches!(
        decode_packet(&[0xff, 0xff, 7, 0, 0, 0, 0, 0]),
        Err(DecodeError::Wire(WireError::HeaderBeyondPacket { .. }))
    ));
    // Field 6 (pathname) claims 2^31 bytes in a 20-byte packet.
    let mut p = crate::wire::frame(
        mt::SYSCALL_OPEN,
        0,
        &[0x32, 0x80, 0x80, 0x80, 0x80, 0x08, b'x'],
    );
    assert!(matches!(
        decode_packet(&p),
        Err(DecodeError::Protobuf {
            message_type: 7,
            ..
        })
    ));
    // Truncated varint, invalid wire type, deep nesting of unknown groups.
    p = crate::wire::frame(mt::SYSCALL_OPEN, 0, &[0x18, 0xff]);
    assert!(decode_packet(&p).is_err());
    p = crate::wire::frame(mt::SENTRY_EXEC, 0, &[0x0f]);
    assert!(decode_packet(&p).is_err());
    let nested: Vec<u8> = std::iter::repeat_n(0x0a_u8, 1)
        .chain(std::iter::repeat_n(0x7f_u8, 1))
        .collect();
    let _ = decode_packet(&crate::wire::frame(mt::CONTAINER_START, 0, &nested));
    let groups = vec![0x0b_u8; 10_000];
    assert!(decode_packet(&crate::wire::frame(mt::CONTAINER_START, 0, &groups)).is_err());
}

#[test]
fn strings_are_lossy_and_capped() {
    let m = SyscallOpen {
        context_data: ctx().to_proto(),
        sysno: 2,
        fd: -100,
        pathname: [b"/tmp/\xff\xfe".as_slice(), &vec![b'a'; 10_000]].concat(),
        ..Default::default()
    };
    let f = decode_ok(&packet(mt::SYSCALL_OPEN, 0, &m))
        .file
        .unwrap_or_default();
    let path = f.path.unwrap_or_default();
    assert!(path.starts_with("/tmp/\u{fffd}\u{fffd}"));
    assert!(path.len() < MAX_TEXT + 64 && path.ends_with("[truncated]"));
}
