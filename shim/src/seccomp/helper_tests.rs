//! The real seccomp exec helper ([`HELPER_BINARY`]), run on the host as it runs in a
//! container: its filters at `/.safehouse/seccomp.bpf`, which on the host means a chroot. Each
//! run forks a child that enters a private mount namespace, binds the host's `/usr` and
//! `/proc` into a temporary root (with `/bin`, `/lib`... as on the host), chroots there and
//! execs `/.safehouse/seccomp-exec`; the namespace, and its binds, end with the process.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxSeccomp;
use safehouse_seccomp_exec::format::{Instruction, FILTERS, HELPER, MAGIC};

use super::super::profile;
use super::HELPER_BINARY;

/// Exit status of the helper when it does not run the command.
const FAILED: i32 = 127;

/// A container-like root for the helper: `/.safehouse/seccomp-exec`, a writable `/tmp`, and
/// the host's `/usr` and `/proc` bound in at run time.
struct Root {
    dir: tempfile::TempDir,
    /// Host directories bound at the same place under the root.
    binds: Vec<PathBuf>,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let mut binds = Vec::new();
        for name in ["usr", "bin", "sbin", "lib", "lib64", "proc"] {
            let host = Path::new("/").join(name);
            let Ok(meta) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                // Merged /usr: the same link, resolved inside the root.
                let target = std::fs::read_link(&host).expect("readlink");
                std::os::unix::fs::symlink(target, root.join(name)).expect("symlink");
            } else if meta.is_dir() {
                std::fs::create_dir(root.join(name)).expect("mount point");
                binds.push(host);
            }
        }
        let tmp = root.join("tmp");
        std::fs::create_dir(&tmp).expect("tmp");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let safehouse = root.join(".safehouse");
        std::fs::create_dir(&safehouse).expect(".safehouse");
        let helper = safehouse.join(HELPER);
        std::fs::write(&helper, HELPER_BINARY).expect("helper");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        Root { dir, binds }
    }

    /// The filters file, as the host sees it.
    fn filters(&self) -> PathBuf {
        self.dir.path().join(".safehouse").join(FILTERS)
    }

    /// A path under the root's `/tmp`, as the host sees it.
    fn tmp(&self, name: &str) -> PathBuf {
        self.dir.path().join("tmp").join(name)
    }

    /// The helper, in the root, with `args`; as `uid` when given (set after the chroot).
    fn command(&self, args: &[&str], uid: Option<u32>) -> Command {
        let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).expect("path");
        let root = cstr(self.dir.path());
        let binds: Vec<(CString, CString)> = self
            .binds
            .iter()
            .map(|h| {
                let inside = self.dir.path().join(h.strip_prefix("/").expect("absolute"));
                (cstr(h), cstr(&inside))
            })
            .collect();
        let slash = cstr(Path::new("/"));
        let mut cmd = Command::new(format!("/.safehouse/{HELPER}"));
        cmd.args(args)
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let fail = || std::io::Error::last_os_error();
        // SAFETY: the closure runs in the forked child and only makes system calls on strings
        // prepared before the fork: it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(fail());
                }
                let none = std::ptr::null();
                if libc::mount(
                    none,
                    slash.as_ptr(),
                    none,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(fail());
                }
                for (host, inside) in &binds {
                    if libc::mount(
                        host.as_ptr(),
                        inside.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(fail());
                    }
                }
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(slash.as_ptr()) != 0 {
                    return Err(fail());
                }
                if let Some(uid) = uid {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(fail());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args, None).output().expect("run the helper")
    }
}

/// Everything allowed but `mkdir`/`mkdirat` (EPERM), compiled as the shim compiles a profile.
fn deny_mkdir() -> Vec<u8> {
    let p: LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
    }))
    .expect("profile");
    safehouse_seccomp_exec::encode(&profile::compile(&p).expect("compile"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_helper_sets_no_new_privs_and_installs_the_filters_before_the_command() {
    let root = Root::new();
    std::fs::write(root.filters(), deny_mkdir()).expect("filters");
    // Root in the test: the kernel would install the filters without no_new_privs, so a
    // NoNewPrivs of 1 is the helper's own doing.
    let out = root.run(&[
        "--",
        "/bin/sh",
        "-c",
        "grep NoNewPrivs /proc/self/status; grep '^Seccomp:' /proc/self/status; \
         mkdir /tmp/made && echo made || echo denied; touch /tmp/touched",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{:?}: {stdout}{stderr}", out.status);
    assert!(stdout.contains("NoNewPrivs:\t1\n"), "{stdout}{stderr}");
    assert!(stdout.contains("Seccomp:\t2\n"), "{stdout}{stderr}");
    assert!(stdout.contains("denied\n"), "{stdout}{stderr}");
    assert!(!root.tmp("made").exists(), "mkdir ran unfiltered");
    assert!(root.tmp("touched").exists(), "the profile allows the rest");
}

#[test]
fn a_filters_file_that_cannot_be_used_never_runs_the_command() {
    let root = Root::new();
    let marker = root.tmp("MARKER");
    let touch = ["--", "/bin/sh", "-c", "touch /tmp/MARKER"];
    // The same command with good filters: it runs, so an absent marker below means it did not.
    std::fs::write(root.filters(), deny_mkdir()).expect("filters");
    let out = root.run(&touch);
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(marker.exists(), "the control run made the marker");
    std::fs::remove_file(&marker).expect("remove marker");

    let good = deny_mkdir();
    let magic_only = MAGIC.to_vec();
    // Well formed, but no return at the end: the kernel refuses to install it, after the
    // first filter already holds in the second case.
    let no_return = vec![Instruction {
        code: 0x20,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let refused = safehouse_seccomp_exec::encode(std::slice::from_ref(&no_return));
    let mut second_refused = good.clone();
    second_refused.extend_from_slice(&safehouse_seccomp_exec::encode(&[no_return])[MAGIC.len()..]);
    let cases: [(&str, Option<Vec<u8>>); 7] = [
        ("refused by the kernel", Some(refused)),
        ("second filter refused by the kernel", Some(second_refused)),
        ("truncated", Some(good[..good.len() - 3].to_vec())),
        ("bad magic", Some(b"NOTMAGIC\x01\x00\x00\x00".to_vec())),
        ("no filter after the magic", Some(magic_only)),
        ("empty", Some(Vec::new())),
        ("missing", None),
    ];
    for (what, bytes) in cases {
        let _ = std::fs::remove_file(root.filters());
        if let Some(b) = bytes {
            std::fs::write(root.filters(), b).expect("filters");
        }
        let out = root.run(&touch);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(FAILED), "{what}: {stderr}");
        assert!(
            stderr.contains("seccomp.bpf") || stderr.contains("SECCOMP_SET_MODE_FILTER"),
            "{what}: says what failed: {stderr}"
        );
        assert!(!marker.exists(), "{what}: the command ran");
    }
}

#[test]
fn bad_arguments_never_run_the_command() {
    let root = Root::new();
    std::fs::write(root.filters(), deny_mkdir()).expect("filters");
    let marker = root.tmp("MARKER");
    for args in [
        &["/bin/sh", "-c", "touch /tmp/MARKER"][..],
        &["-x", "/bin/sh", "-c", "touch /tmp/MARKER"][..],
        &["--"][..],
        &[][..],
    ] {
        let out = root.run(args);
        assert_eq!(
            out.status.code(),
            Some(FAILED),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!marker.exists(), "{args:?}: the command ran");
    }
    // A command that is not there: 127 too, as the doc says.
    let out = root.run(&["--", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(FAILED), "{}", text(&out.stderr));
}

/// Kills and reaps the child unless the test reaped it.
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn the_helper_is_not_dumpable_while_it_reads_its_filters() {
    use std::os::unix::fs::MetadataExt;
    let root = Root::new();
    // A FIFO holds the helper in its open of the filters until the test writes them.
    let fifo = CString::new(root.filters().as_os_str().as_bytes()).expect("path");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    // Another user: exec leaves it dumpable, so the files of /proc/PID would be its own unless
    // the helper makes itself non-dumpable; then they belong to root (not /proc/PID itself,
    // which is always the process's user's).
    let nobody = 65534;
    let mut child = Reap(Some(
        root.command(&["--", "/bin/sh", "-c", "exit 0"], Some(nobody))
            .spawn()
            .expect("spawn"),
    ));
    let pid = child.0.as_ref().expect("child").id();
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(proc_dir.join("status")).unwrap_or_default();
        let waiting = status.contains(&format!("Name:\t{HELPER}\n"))
            && status.lines().any(|l| l.starts_with("State:\tS"));
        if waiting {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the helper never waited: {status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = std::fs::read_to_string(proc_dir.join("status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&format!("Uid:\t{nobody}\t"))),
        "{status}"
    );
    let owner = std::fs::metadata(proc_dir.join("status"))
        .expect("stat /proc/PID/status")
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/{pid}/status is the helper's user's: it is dumpable"
    );
    // Let it go on: good filters, and the command runs as that user.
    std::fs::write(root.filters(), deny_mkdir()).expect("write the FIFO");
    let mut c = child.0.take().expect("child");
    let st = c.wait().expect("wait");
    assert!(st.success(), "{st:?} (signal {:?})", st.signal());
}
