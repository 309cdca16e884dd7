//! `seccomp-exec -- COMMAND [ARGS...]`: what the shim has `runsc exec` start in a container
//! with a seccomp profile. runsc installs the spec's profile on a container's init only; this
//! installs it on the exec'd process, then execs the command.
//!
//! It reads the compiled filters from `/.safehouse/seccomp.bpf` (a read-only bind the shim
//! adds at Create), makes itself non-dumpable (so no other process of the container's user
//! can ptrace it before the filters hold), sets `no_new_privs` (the kernel
//! requires it of a process without CAP_SYS_ADMIN that installs a filter), installs each
//! filter in order, and execs COMMAND, looked up in `PATH` like `runsc exec` does, with its
//! own name as `argv[0]`. Any failure ends it with a message on stderr and status 127 (126
//! when the command exists but cannot be run): the command never runs without the filters.
//!
//! Built static (std only, no loader or libc needed in the image) by the shim's build script,
//! and embedded in the shim. x86_64 only, like the filters.

mod format;

use std::ffi::OsStr;
use std::io;
use std::os::raw::{c_int, c_long, c_ulong, c_ushort};
use std::os::unix::process::CommandExt;
use std::process::Command;

use format::{Instruction, DIR, FILTERS, HELPER};

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the seccomp exec helper is x86_64 only (the filters are compiled for x86_64)");

/// `SYS_seccomp` on x86_64 (glibc has no wrapper).
const SYS_SECCOMP: c_long = 317;
/// `SECCOMP_SET_MODE_FILTER`.
const SECCOMP_SET_MODE_FILTER: c_ulong = 1;
/// `PR_SET_DUMPABLE`.
const PR_SET_DUMPABLE: c_int = 4;
/// `PR_SET_NO_NEW_PRIVS`.
const PR_SET_NO_NEW_PRIVS: c_int = 38;

/// Exit status when the filters could not be installed, or the command was not found.
const EXIT_FAILED: i32 = 127;
/// Exit status when the command was found but could not be run.
const EXIT_CANNOT_RUN: i32 = 126;

extern "C" {
    fn prctl(option: c_int, arg2: c_ulong, arg3: c_ulong, arg4: c_ulong, arg5: c_ulong) -> c_int;
    fn syscall(number: c_long, ...) -> c_long;
}

/// The kernel's `struct sock_fprog`.
#[repr(C)]
struct SockFprog {
    len: c_ushort,
    filter: *const Instruction,
}

fn main() {
    let (status, message) = run();
    eprintln!("{HELPER}: {message}");
    std::process::exit(status);
}

/// Installs the filters and execs the command; returns only on failure.
fn run() -> (i32, String) {
    // First of all: no other process of the container's user may trace this one before its
    // filters hold (the exec makes the command dumpable again).
    // SAFETY: prctl with integer arguments only.
    if unsafe { prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return (
            EXIT_FAILED,
            format!("prctl(PR_SET_DUMPABLE): {}", io::Error::last_os_error()),
        );
    }
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(OsStr::new("--")) {
        return (
            EXIT_FAILED,
            "usage: seccomp-exec -- COMMAND [ARGS...]".into(),
        );
    }
    let Some(program) = args.next() else {
        return (EXIT_FAILED, "no command after --".into());
    };
    let path = format!("{DIR}/{FILTERS}");
    let filters = match std::fs::read(&path) {
        Ok(bytes) => match format::decode(&bytes) {
            Ok(f) => f,
            Err(e) => return (EXIT_FAILED, format!("{path}: {e}")),
        },
        Err(e) => return (EXIT_FAILED, format!("read {path}: {e}")),
    };
    // Built before the filters hold: allocating may need system calls the profile denies.
    let mut command = Command::new(&program);
    command.arg0(&program).args(args);
    if let Err(e) = confine(&filters) {
        return (EXIT_FAILED, e);
    }
    let err = command.exec();
    let status = if err.kind() == io::ErrorKind::NotFound {
        EXIT_FAILED
    } else {
        EXIT_CANNOT_RUN
    };
    (status, format!("exec {}: {err}", program.to_string_lossy()))
}

/// Installs `filters`, in order, on this process.
fn confine(filters: &[Vec<Instruction>]) -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "prctl(PR_SET_NO_NEW_PRIVS): {}",
            io::Error::last_os_error()
        ));
    }
    for (i, filter) in filters.iter().enumerate() {
        let len = c_ushort::try_from(filter.len())
            .map_err(|_| format!("filter {i} is too long ({})", filter.len()))?;
        let prog = SockFprog {
            len,
            filter: filter.as_ptr(),
        };
        // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
        let r = unsafe {
            syscall(
                SYS_SECCOMP,
                SECCOMP_SET_MODE_FILTER,
                0 as c_ulong,
                &prog as *const SockFprog,
            )
        };
        if r != 0 {
            return Err(format!(
                "seccomp(SECCOMP_SET_MODE_FILTER) of filter {i} of {}: {}",
                filters.len(),
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}
