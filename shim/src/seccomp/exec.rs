//! The spec's seccomp profile for processes `runsc exec` starts, which runsc leaves unfiltered.
//!
//! At Create, [`prepare`] compiles the profile ([`super::profile`]) and writes the filters and
//! the static helper embedded in the shim into a directory of the bundle (world-readable, no
//! write bits), bound read-only (exec allowed, `nosuid`) into the container at [`DIR`]; the
//! bind is made read-only on the host too, like every read-only bind (`hostbind::harden`). At Exec, [`wrap_args`] has runsc start the helper, which installs
//! the filters and execs the command. A container without a profile gets none of this.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use safehouse_seccomp_exec::format::{DIR, FILTERS, HELPER};
use serde_json::Value;

use super::profile;
use crate::bundle::SECCOMP_EXEC_DIR;
use crate::error::{Result, ShimError};

/// The static helper (`seccomp-exec/src/main.rs`), built by the shim's build script.
pub static HELPER_BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/seccomp-exec"));

/// The helper's path inside the container.
fn helper_in_container() -> String {
    format!("{DIR}/{HELPER}")
}

/// When the final spec has `linux.seccomp`: writes the helper and the compiled filters under
/// `bundle`, makes the mount point in `rootfs` (the image may have none, and runsc cannot make
/// one in a read-only root) and returns the bind to add ([`add_bind`]). [`release`] removes
/// the directory (also after an error here). None when the spec has no profile.
pub fn prepare(bundle: &Path, rootfs: &Path, spec: &Spec) -> Result<Option<Mount>> {
    let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else {
        return Ok(None);
    };
    let filters = profile::compile(profile).map_err(|e| match e {
        profile::ProfileError::UnsupportedAction { .. } => ShimError::Unimplemented(e.to_string()),
        other => ShimError::InvalidArgument(other.to_string()),
    })?;
    let dir = bundle.join(SECCOMP_EXEC_DIR);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&dir)
        .map_err(|e| ShimError::io(format!("create {}", dir.display()), e))?;
    place_helper(&dir.join(HELPER), Path::new(SHARED_DIR))?;
    write_file(
        &dir.join(FILTERS),
        &safehouse_seccomp_exec::encode(&filters),
        0o444,
    )?;
    set_mode(&dir, 0o555)?;
    mount_point(rootfs)?;
    let bind = serde_json::json!({
        "destination": DIR,
        "type": "bind",
        "source": dir,
        "options": ["rbind", "ro", "nosuid", "nodev"],
    });
    serde_json::from_value(bind)
        .map(Some)
        .map_err(|e| ShimError::Internal(format!("the seccomp helper's mount: {e}")))
}

/// Adds the helper's bind last (over the image and, under `tools`, its `noexec` views).
pub fn add_bind(spec: &mut Spec, bind: Mount) {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.retain(|m| m.destination() != Path::new(DIR));
    mounts.push(bind);
    spec.set_mounts(Some(mounts));
}

/// Where one copy of the helper per helper build is kept, for every bundle on the same
/// filesystem (containerd's state under /run) to hard-link instead of copying 1.2 MB of
/// tmpfs per container. Root-only: nothing but root can change what the links show.
#[cfg(not(test))]
const SHARED_DIR: &str = "/run/safehouse/seccomp-exec";
/// Unit tests keep theirs out of the node's.
#[cfg(test)]
const SHARED_DIR: &str = "/tmp/safehouse-unit-seccomp-exec";

/// Puts the helper at `at`: a hard link to the node-wide copy under `shared` when the two are
/// on one filesystem, a copy of its own otherwise.
fn place_helper(at: &Path, shared: &Path) -> Result<()> {
    if let Ok(copy) = shared_helper(shared) {
        if std::fs::hard_link(&copy, at).is_ok() {
            return Ok(());
        }
    }
    write_file(at, HELPER_BINARY, 0o555)
}

/// The node-wide copy of this helper build, written (atomically, by rename) if missing.
fn shared_helper(dir: &Path) -> std::io::Result<PathBuf> {
    let digest = env!("SAFEHOUSE_SECCOMP_EXEC_SHA256");
    let path = dir.join(format!("{HELPER}-{}", &digest[..16]));
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == HELPER_BINARY.len() as u64) {
        return Ok(path);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = dir.join(format!(
        ".{HELPER}-{}.{}",
        &digest[..16],
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    write_file(&tmp, HELPER_BINARY, 0o555).map_err(std::io::Error::other)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| ShimError::io(format!("create {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| ShimError::io(format!("write {}", path.display()), e))?;
    // The umask may have narrowed the mode: the exec'd user may be anyone.
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ShimError::io(format!("chmod {}", path.display()), e))
}

/// Makes [`DIR`] in `rootfs` unless the image has it as a directory; refuses an image where it
/// is anything else (a symlink would point the bind elsewhere).
fn mount_point(rootfs: &Path) -> Result<()> {
    let at: PathBuf = rootfs.join(DIR.trim_start_matches('/'));
    match std::fs::symlink_metadata(&at) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err(ShimError::FailedPrecondition(format!(
            "the image has {DIR}, not a directory: Safehouse mounts the seccomp exec helper there"
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&at)
            .map_err(|e| ShimError::io(format!("create mount point {}", at.display()), e)),
        Err(e) => Err(ShimError::io(format!("stat {}", at.display()), e)),
    }
}

/// Removes what [`prepare`] wrote (the mount point in the rootfs goes with the rootfs).
pub fn release(bundle: &Path) {
    let dir = bundle.join(SECCOMP_EXEC_DIR);
    let _ = set_mode(&dir, 0o755);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the container of `bundle` execs through the helper.
pub fn has_helper(bundle: &Path) -> bool {
    bundle.join(SECCOMP_EXEC_DIR).join(HELPER).is_file()
}

/// Has an exec process spec start the helper, which runs `args` once the filters hold.
pub fn wrap_args(process: &mut Value) {
    let Some(args) = process["args"].as_array_mut() else {
        return;
    };
    let mut wrapped = vec![Value::from(helper_in_container()), Value::from("--")];
    wrapped.append(args);
    *args = wrapped;
}

/// The command's own argv from args [`wrap_args`] made.
pub fn unwrap_args(mut args: Vec<String>) -> Vec<String> {
    if args.len() >= 2 && args[0] == helper_in_container() && args[1] == "--" {
        args.drain(..2);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use safehouse_seccomp_exec::format;

    fn spec(seccomp: Option<serde_json::Value>) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {}
        });
        if let Some(s) = seccomp {
            v["linux"]["seccomp"] = s;
        }
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn bundles_on_one_filesystem_share_one_copy_of_the_helper() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let shared = tmp.path().join("shared");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        place_helper(&a, &shared).expect("first");
        place_helper(&b, &shared).expect("second");
        let (ma, mb) = (
            std::fs::metadata(&a).expect("a"),
            std::fs::metadata(&b).expect("b"),
        );
        assert_eq!(ma.ino(), mb.ino(), "one inode for both bundles");
        assert_eq!(ma.nlink(), 3, "the shared copy and two links");
        assert_eq!(ma.mode() & 0o777, 0o555);
        assert_eq!(std::fs::read(&a).expect("read"), HELPER_BINARY);
        let dir_mode = std::fs::metadata(&shared).expect("shared").mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "only root can reach the shared copy");
        // A shared directory that cannot be made: a copy of its own.
        let blocked = tmp.path().join("file");
        std::fs::write(&blocked, b"x").expect("write");
        let c = tmp.path().join("c");
        place_helper(&c, &blocked.join("shared")).expect("fallback");
        assert_eq!(std::fs::metadata(&c).expect("c").nlink(), 1);
        assert_eq!(std::fs::read(&c).expect("read"), HELPER_BINARY);
    }

    #[test]
    fn the_helper_is_a_static_executable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("helper");
        std::fs::write(&f, HELPER_BINARY).expect("write");
        // No PT_INTERP: it starts in an image without a loader.
        match crate::tools::elf::inspect(&f).expect("inspect") {
            crate::tools::elf::Starter::Elf(interp) => assert_eq!(interp, None),
            other => panic!("not an ELF executable: {other:?}"),
        }
    }

    #[test]
    fn a_profile_gets_the_helper_bound_read_only_and_exec_allowed() {
        let bundle = tempfile::tempdir().expect("tempdir");
        let rootfs = bundle.path().join("rootfs");
        std::fs::create_dir(&rootfs).expect("rootfs");
        let mut s = spec(Some(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]
        })));
        let bind = prepare(bundle.path(), &rootfs, &s)
            .expect("prepare")
            .expect("a bind");
        add_bind(&mut s, bind);
        let dir = bundle.path().join(SECCOMP_EXEC_DIR);
        assert_eq!(
            std::fs::read(dir.join(HELPER)).expect("helper"),
            HELPER_BINARY
        );
        let filters =
            format::decode(&std::fs::read(dir.join(FILTERS)).expect("filters")).expect("decode");
        assert!(!filters.is_empty());
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join(HELPER)), 0o555);
        assert_eq!(mode(&dir.join(FILTERS)), 0o444);
        assert_eq!(mode(&dir), 0o555);
        assert!(rootfs.join(".safehouse").is_dir(), "the mount point");
        let mounts = s.mounts().clone().expect("mounts");
        let bind = mounts.last().expect("bind");
        assert_eq!(bind.destination(), Path::new(DIR));
        assert_eq!(bind.source().as_deref(), Some(dir.as_path()));
        let opts = bind.options().clone().expect("options");
        assert!(opts.iter().any(|o| o == "ro"), "{opts:?}");
        assert!(opts.iter().any(|o| o == "nosuid"), "{opts:?}");
        assert!(!opts.iter().any(|o| o == "noexec"), "{opts:?}");
        assert!(has_helper(bundle.path()));
        release(bundle.path());
        assert!(!dir.exists());
        assert!(!has_helper(bundle.path()));
    }

    #[test]
    fn no_profile_no_helper_and_notify_is_refused() {
        let bundle = tempfile::tempdir().expect("tempdir");
        let rootfs = bundle.path().join("rootfs");
        std::fs::create_dir(&rootfs).expect("rootfs");
        let s = spec(None);
        assert!(prepare(bundle.path(), &rootfs, &s)
            .expect("prepare")
            .is_none());
        assert!(!rootfs.join(".safehouse").exists());
        let s = spec(Some(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/notify.sock",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        })));
        let err = prepare(bundle.path(), &rootfs, &s).expect_err("notify");
        assert!(matches!(err, ShimError::Unimplemented(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("linux.seccomp.syscalls[0]"), "{msg}");
        assert!(msg.contains("SCMP_ACT_NOTIFY"), "{msg}");
    }

    #[test]
    fn an_image_with_a_file_at_the_mount_point_is_refused() {
        let bundle = tempfile::tempdir().expect("tempdir");
        let rootfs = bundle.path().join("rootfs");
        std::fs::create_dir(&rootfs).expect("rootfs");
        std::os::unix::fs::symlink("/etc", rootfs.join(".safehouse")).expect("symlink");
        let s = spec(Some(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"})));
        let err = prepare(bundle.path(), &rootfs, &s).expect_err("symlink");
        assert!(matches!(err, ShimError::FailedPrecondition(_)), "{err:?}");
        release(bundle.path());
    }

    #[test]
    fn exec_args_go_through_the_helper_unchanged() {
        let mut p = serde_json::json!({"args": ["sh", "-c", "echo hi"], "cwd": "/"});
        wrap_args(&mut p);
        assert_eq!(
            p["args"],
            serde_json::json!(["/.safehouse/seccomp-exec", "--", "sh", "-c", "echo hi"])
        );
        assert_eq!(p["cwd"], "/");
        let args: Vec<String> = serde_json::from_value(p["args"].clone()).expect("args");
        assert_eq!(unwrap_args(args), ["sh", "-c", "echo hi"]);
        assert_eq!(unwrap_args(vec!["sh".into()]), ["sh"]);
    }
}

#[cfg(test)]
#[path = "helper_tests.rs"]
mod helper_tests;
