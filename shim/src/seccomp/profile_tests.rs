//! The converter, on a RuntimeDefault-shaped profile and on edge cases, and the compiled stack
//! run by the host kernel in a forked child (the Sentry combines stacked filters the same way:
//! newest first, least permissive action wins, the newest one's data among equals).

use oci_spec::runtime::LinuxSeccomp;
use serde_json::json;

use super::*;

fn profile(v: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(v).expect("profile")
}

/// The shape of containerd's RuntimeDefault (written for this test, abridged): default ERRNO,
/// a long ALLOW list with names from other architectures among them, `personality` allowed
/// for a few personas only, `clone` unless it asks for new namespaces, and a capability-gated
/// block.
fn runtime_default() -> LinuxSeccomp {
    let allowed = json!([
        "accept",
        "accept4",
        "access",
        "arch_prctl",
        "bind",
        "brk",
        "capget",
        "capset",
        "chdir",
        "chmod",
        "chown",
        "clock_gettime",
        "close",
        "connect",
        "dup",
        "dup2",
        "dup3",
        "epoll_create1",
        "epoll_ctl",
        "epoll_pwait",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "faccessat",
        "faccessat2",
        "fchdir",
        "fchmod",
        "fchmodat",
        "fchown",
        "fcntl",
        "fstat",
        "fstatfs",
        "futex",
        "getcwd",
        "getdents64",
        "getegid",
        "geteuid",
        "getgid",
        "getpid",
        "getppid",
        "getrandom",
        "gettid",
        "getuid",
        "ioctl",
        "kill",
        "lseek",
        "lstat",
        "madvise",
        "memfd_create",
        "mkdir",
        "mkdirat",
        "mmap",
        "mprotect",
        "munmap",
        "nanosleep",
        "newfstatat",
        "open",
        "openat",
        "pipe",
        "pipe2",
        "poll",
        "prctl",
        "pread64",
        "prlimit64",
        "read",
        "readlink",
        "readlinkat",
        "rename",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "sched_yield",
        "set_robust_list",
        "set_tid_address",
        "setgid",
        "setuid",
        "sigaltstack",
        "socket",
        "stat",
        "statx",
        "umask",
        "uname",
        "unlink",
        "unlinkat",
        "wait4",
        "write",
        "writev",
        "_llseek",
        "arm_fadvise64_64",
        "send",
        "recv",
        "sigreturn",
        "waitpid",
        "ugetrlimit",
        "set_tls",
        "cacheflush"
    ]);
    profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": allowed,
             "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["mount", "umount2", "setns", "unshare", "sethostname", "setdomainname",
                       "bpf", "perf_event_open", "ptrace"], "action": "SCMP_ACT_ALLOW",
             "comment": "granted with CAP_SYS_ADMIN only; kept here to test a second list"}
        ]
    }))
}

#[test]
fn runtime_default_compiles_to_a_base_and_one_errno_filter() {
    let filters = compile(&runtime_default()).expect("compile");
    // ERRNO(38) for clone3, then the base (default ERRNO(1), everything named allowed).
    assert_eq!(filters.len(), 2, "{filters:?}");
    for f in &filters {
        assert!(!f.is_empty() && f.len() <= 4096, "{}", f.len());
    }
    let rets = |f: &[Instruction]| -> Vec<u32> {
        f.iter().filter(|i| i.code == 0x06).map(|i| i.k).collect()
    };
    assert!(rets(&filters[0]).contains(&(0x0005_0000 | 38)));
    assert!(!rets(&filters[0]).contains(&(0x0005_0000 | 1)));
    assert!(rets(&filters[1]).contains(&(0x0005_0000 | 1)));
    // Names of other architectures are skipped, not refused.
    assert!(syscall_number("arm_fadvise64_64").is_none());
    assert_eq!(syscall_number("read"), Some(0));
    assert_eq!(syscall_number("memfd_create"), Some(319));
    // Newer than the build host's headers may be.
    assert_eq!(syscall_number("fchmodat2"), Some(452));
}

#[test]
fn actions_map_and_notify_is_refused_naming_where() {
    let p = |action: &str| {
        profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": action}]
        }))
    };
    for action in [
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_LOG",
    ] {
        let filters = compile(&p(action)).unwrap_or_else(|e| panic!("{action}: {e}"));
        assert_eq!(filters.len(), 2, "{action}");
    }
    // ALLOW under a default ALLOW: one filter that allows everything (seccomp mode 2 all the
    // same).
    assert_eq!(compile(&p("SCMP_ACT_ALLOW")).expect("allow").len(), 1);
    let err = compile(&p("SCMP_ACT_NOTIFY")).expect_err("notify");
    let msg = err.to_string();
    assert!(msg.contains("linux.seccomp.syscalls[0].action"), "{msg}");
    assert!(msg.contains("SCMP_ACT_NOTIFY"), "{msg}");
    let err = compile(&profile(json!({"defaultAction": "SCMP_ACT_NOTIFY"}))).expect_err("d");
    assert!(
        err.to_string().contains("linux.seccomp.defaultAction"),
        "{err}"
    );
}

#[test]
fn edge_cases() {
    // No rules at all, default ERRNO: one filter.
    let only_default = profile(json!({"defaultAction": "SCMP_ACT_ERRNO"}));
    assert_eq!(compile(&only_default).expect("compile").len(), 1);
    // Only unknown names: the rule vanishes, its action filter with it.
    let unknown = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}]
    }));
    assert_eq!(compile(&unknown).expect("compile").len(), 1);
    // An argument index past the sixth.
    let bad = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                      "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]
    }));
    let msg = compile(&bad).expect_err("index").to_string();
    assert!(msg.contains("syscalls[0].args[0]"), "{msg}");
    // Distinct ERRNO values are distinct filters; the same one twice is one.
    let errnos = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 30},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
        ]
    }));
    assert_eq!(compile(&errnos).expect("compile").len(), 3);
}

/// What the child reports: each call's return value, or minus its errno.
fn probe_in_child(filters: &[Vec<Instruction>], calls: &[(i64, [u64; 2])]) -> Vec<i64> {
    let programs: Vec<Vec<seccompiler::sock_filter>> = filters
        .iter()
        .map(|f| {
            f.iter()
                .map(|i| seccompiler::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect()
        })
        .collect();
    let mut results = vec![0i64; calls.len()];
    let mut fds = [0; 2];
    // SAFETY: a fresh array for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child allocates nothing (other test threads may hold the allocator's lock):
    // it installs the prepared filters, makes raw system calls into a prepared buffer, writes
    // it and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        for p in &programs {
            if seccompiler::apply_filter(p).is_err() {
                // SAFETY: ending the child.
                unsafe { libc::_exit(2) };
            }
        }
        for (slot, (nr, args)) in results.iter_mut().zip(calls) {
            // SAFETY: the calls probed take integer arguments only.
            let r = unsafe { libc::syscall(*nr, args[0], args[1]) };
            *slot = if r == -1 {
                // SAFETY: errno of this thread.
                -i64::from(unsafe { *libc::__errno_location() })
            } else {
                r
            };
        }
        let bytes = results.len() * 8;
        // SAFETY: writing the buffer's own bytes, then leaving.
        unsafe {
            libc::write(fds[1], results.as_ptr().cast(), bytes);
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut buf = vec![0u8; results.len() * 8];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the rest of `buf`.
        let n = unsafe { libc::read(fds[0], buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    let mut status = 0;
    // SAFETY: reaping our child.
    unsafe {
        libc::close(fds[0]);
        libc::waitpid(pid, &mut status, 0);
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 && got == buf.len(),
        "child status {status:#x}, {got} bytes"
    );
    buf.chunks_exact(8)
        .map(|c| i64::from_ne_bytes(c.try_into().unwrap_or_default()))
        .collect()
}

#[test]
fn the_host_kernel_runs_the_stack_as_the_profile_says() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["write", "exit", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["umask"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 63, "valueTwo": 18, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["getpriority"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LE"}]},
            {"names": ["getpriority"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": 4294967296u64, "op": "SCMP_CMP_GT"}]},
            {"names": ["getpgid"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 999999, "op": "SCMP_CMP_NE"}]},
            {"names": ["gettid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
            {"names": ["gettid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7}
        ]
    }));
    let filters = compile(&p).expect("compile");
    let calls = [
        (libc::SYS_getpid, [0, 0]),
        (libc::SYS_getppid, [0, 0]),
        (libc::SYS_getuid, [0, 0]),
        (libc::SYS_personality, [0, 0]),
        (libc::SYS_personality, [0xffff_ffff, 0]),
        (libc::SYS_umask, [0o022, 0]),
        (libc::SYS_umask, [0o027, 0]),
        (libc::SYS_getpriority, [1, 0]),
        (libc::SYS_getpriority, [2, 0]),
        (libc::SYS_getpriority, [7, 0x1_0000_0001]),
        (libc::SYS_getpgid, [0, 0]),
        (libc::SYS_getpgid, [999999, 0]),
        (libc::SYS_gettid, [0, 0]),
    ];
    let r = probe_in_child(&filters, &calls);
    assert!(r[0] > 0, "getpid allowed: {r:?}");
    assert_eq!(r[1], -38, "getppid: the rule's errnoRet");
    assert_eq!(r[2], -1, "getuid: unlisted, the default EPERM");
    assert!(r[3] >= 0, "personality(0): allowed by its condition: {r:?}");
    assert_eq!(r[4], -1, "personality(0xffffffff): the condition fails");
    assert!(r[5] >= 0, "umask(022): (022 & 077) == 022: {r:?}");
    assert_eq!(r[6], -1, "umask(027): masked value differs");
    assert!(r[7] >= 0, "getpriority(1, 0): LE 1: {r:?}");
    assert_eq!(r[8], -1, "getpriority(2, 0): neither alternative");
    assert_eq!(
        r[9],
        -i64::from(libc::EINVAL),
        "getpriority(7, 2^32+1): GT on the high half lets it through to the kernel"
    );
    assert!(r[10] >= 0, "getpgid(0): NE 999999: {r:?}");
    assert_eq!(r[11], -1, "getpgid(999999)");
    assert_eq!(r[12], -7, "two ERRNO rules: the later one's errno");
}

#[test]
fn a_kill_rule_under_a_default_allow_kills_the_child() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]
    }));
    let filters = compile(&p).expect("compile");
    let programs: Vec<Vec<seccompiler::sock_filter>> = filters
        .iter()
        .map(|f| {
            f.iter()
                .map(|i| seccompiler::sock_filter {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect()
        })
        .collect();
    // SAFETY: as in probe_in_child: no allocation in the child.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        for p in &programs {
            if seccompiler::apply_filter(p).is_err() {
                // SAFETY: ending the child.
                unsafe { libc::_exit(2) };
            }
        }
        // SAFETY: raw calls with no arguments, then leaving.
        unsafe {
            if libc::syscall(libc::SYS_getpid) <= 0 {
                libc::_exit(3);
            }
            libc::syscall(libc::SYS_getppid);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: reaping our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "status {status:#x}"
    );
}
