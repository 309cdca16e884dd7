//! The spec's `linux.maskedPaths` and `linux.readonlyPaths`, which runsc ignores, made to hold
//! with mounts the Sentry does honour.
//!
//! - A masked path under `/proc` or `/sys` gets an empty read-only tmpfs over it, file or
//!   directory: the Sentry mounts a tmpfs on a synthetic mount point of its own, over an entry
//!   its procfs or sysfs has (a file then shows as an empty directory: reading it fails with
//!   EISDIR) or lacks (most of CRI's defaults: gVisor has no `/proc/kcore`, `/proc/keys`, ...),
//!   so every one is covered and nothing is skipped. (A bind there would make runsc's gofer
//!   create the mount point in the image's rootfs on the host, and fail on a read-only one.)
//! - A masked path of the image is looked up in the rootfs without following the image's
//!   symlinks (one through a symlink is refused): a directory gets the tmpfs, a file a
//!   read-only bind of an empty file of the bundle ([`MASKED_FILE`]) and reads as empty; one the
//!   image does not have is not there to read, and gets nothing.
//! - gVisor cannot make part of a mount read-only (no bind from inside the sandbox), so a
//!   read-only path under `/proc` makes the whole `/proc` mount read-only (reads still work;
//!   writes anywhere in `/proc`, `/proc/self/oom_score_adj` too, fail with EROFS), and one
//!   under `/sys` the `/sys` mount. A read-only path elsewhere is accepted only where it
//!   already holds (a read-only rootfs or mount) and refused otherwise, naming the field.
//!
//! Not here: the mounts' order among the policy's own (they are appended last, so they cover
//! whatever the spec mounted below them).

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use serde_json::json;

use crate::bundle::MASKED_FILE;
use crate::error::{Result, ShimError};

/// What a masked path is before it is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory: an empty read-only tmpfs covers it.
    Dir,
    /// A file (or something gVisor makes as a file): an empty read-only file covers it.
    File,
    /// Nothing at all (a path of the image it does not have): nothing to cover.
    Absent,
    /// A path of the image that goes through a symlink: refused (what it names is only known
    /// inside the sandbox, and the node must not follow the image's links).
    ThroughSymlink,
}

/// Adds the mounts that make the spec's masked and read-only paths hold, writing the bundle's
/// empty file first when a masked file needs it. The rootfs must be mounted.
pub fn apply(bundle: &Path, spec: &mut Spec) -> Result<()> {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    let rootfs = bundle.join(root);
    let empty = bundle.join(MASKED_FILE);
    let needs_file = confine_paths(spec, &empty, &|p| kind_on_node(&rootfs, p))?;
    if needs_file {
        std::fs::write(&empty, b"")
            .map_err(|e| ShimError::io(format!("write {}", empty.display()), e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o444))
            .map_err(|e| ShimError::io(format!("chmod {}", empty.display()), e))?;
    }
    Ok(())
}

/// Where a path lies: a synthetic filesystem of the Sentry, the image, or another mount.
enum Home<'a> {
    Proc,
    Sys,
    Rootfs,
    Mount(usize, &'a Mount),
}

fn home<'a>(mounts: &'a [Mount], path: &Path) -> Home<'a> {
    let deepest = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(m.destination()) && m.destination() != Path::new("/"))
        .max_by_key(|(_, m)| m.destination().components().count());
    match deepest {
        // Without a mount of its own there, runsc mounts its procfs and sysfs itself.
        None if path.starts_with("/proc") => Home::Proc,
        None if path.starts_with("/sys") => Home::Sys,
        None => Home::Rootfs,
        Some((_, m)) if m.destination() == Path::new("/proc") => Home::Proc,
        Some((_, m)) if m.destination() == Path::new("/sys") => Home::Sys,
        Some((i, m)) => Home::Mount(i, m),
    }
}

/// What a path of the image is, looked up in its rootfs one component at a time, never
/// following the image's symlinks.
fn kind_on_node(rootfs: &Path, path: &Path) -> Kind {
    let mut at = rootfs.to_path_buf();
    let mut kind = Kind::Dir;
    for part in path.components().skip(1) {
        at.push(part);
        kind = match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Kind::ThroughSymlink,
            Ok(m) if m.is_dir() => Kind::Dir,
            Ok(_) => Kind::File,
            Err(_) => return Kind::Absent,
        };
    }
    kind
}

fn checked<'a>(field: &str, i: usize, p: &'a str) -> Result<&'a Path> {
    let path = Path::new(p);
    let normal = path.is_absolute()
        && path.components().count() > 1
        && path
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)));
    if !normal {
        return Err(ShimError::InvalidArgument(format!(
            "linux.{field}[{i}] {p:?}: not an absolute, normalised path below /"
        )));
    }
    Ok(path)
}

fn mount(v: serde_json::Value) -> Result<Mount> {
    serde_json::from_value(v).map_err(|e| ShimError::Internal(format!("build a mount: {e}")))
}

fn make_read_only(m: &mut Mount) {
    let mut opts = m.options().clone().unwrap_or_default();
    opts.retain(|o| o != "rw");
    if !opts.iter().any(|o| o == "ro") {
        opts.push("ro".into());
    }
    m.set_options(Some(opts));
}

fn is_read_only(m: &Mount) -> bool {
    m.options()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|o| o == "ro")
}

/// The spec edit itself: `kind` tells what a masked path is, `empty` is the file masked files
/// are covered with. True when some mount binds `empty`.
pub fn confine_paths(spec: &mut Spec, empty: &Path, kind: &dyn Fn(&Path) -> Kind) -> Result<bool> {
    let (masked, readonly) = match spec.linux() {
        Some(l) => (
            l.masked_paths().clone().unwrap_or_default(),
            l.readonly_paths().clone().unwrap_or_default(),
        ),
        None => return Ok(false),
    };
    if masked.is_empty() && readonly.is_empty() {
        return Ok(false);
    }
    let root_ro = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let (mut proc_ro, mut sys_ro) = (false, false);
    for (i, p) in readonly.iter().enumerate() {
        let path = checked("readonlyPaths", i, p)?;
        match home(&mounts, path) {
            Home::Proc => proc_ro = true,
            Home::Sys => sys_ro = true,
            Home::Rootfs if root_ro => {}
            Home::Mount(_, m) if is_read_only(m) => {}
            Home::Rootfs | Home::Mount(..) => {
                return Err(ShimError::InvalidArgument(format!(
                    "linux.readonlyPaths[{i}] {p:?}: gVisor cannot make part of a writable filesystem read-only; Safehouse makes paths under /proc and /sys read-only (their whole mount), and accepts others only on a read-only rootfs or mount"
                )))
            }
        }
    }
    for (dest, typ, wanted) in [("/proc", "proc", proc_ro), ("/sys", "sysfs", sys_ro)] {
        if !wanted {
            continue;
        }
        match mounts
            .iter_mut()
            .find(|m| m.destination() == Path::new(dest))
        {
            Some(m) => make_read_only(m),
            None => mounts.push(mount(json!({
                "destination": dest, "type": typ, "source": typ,
                "options": ["ro", "nosuid", "nodev", "noexec"]
            }))?),
        }
    }
    let mut added = Vec::new();
    for (i, p) in masked.iter().enumerate() {
        let path = checked("maskedPaths", i, p)?;
        let found = match home(&mounts, path) {
            Home::Mount(at, m) => {
                return Err(ShimError::InvalidArgument(format!(
                    "linux.maskedPaths[{i}] {p:?}: lies on mounts[{at}] ({}), which Safehouse cannot look into to mask; only paths of the image, /proc and /sys can be masked",
                    m.destination().display()
                )))
            }
            // The Sentry's own filesystems: only a tmpfs, which the Sentry mounts itself on a
            // synthetic mount point. A bind would make runsc's gofer create the mount point
            // in the image's rootfs on the host, and fail where that is read-only.
            Home::Proc | Home::Sys => Kind::Dir,
            Home::Rootfs => kind(path),
        };
        let cover = match found {
            Kind::Absent => continue,
            Kind::ThroughSymlink => {
                return Err(ShimError::InvalidArgument(format!(
                    "linux.maskedPaths[{i}] {p:?}: goes through a symlink in the image; name the path it points to"
                )))
            }
            Kind::Dir => json!({
                "destination": p, "type": "tmpfs", "source": "tmpfs",
                "options": ["ro", "nosuid", "nodev", "noexec", "mode=0555"]
            }),
            Kind::File => json!({
                "destination": p, "type": "bind", "source": empty,
                "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]
            }),
        };
        added.push(mount(cover)?);
    }
    let needs_file = added.iter().any(|m| m.source().as_deref() == Some(empty));
    mounts.extend(added);
    spec.set_mounts(Some(mounts));
    Ok(needs_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRI's defaults for an unprivileged container.
    const MASKED: &[&str] = &[
        "/proc/acpi",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
    ];
    const READONLY: &[&str] = &[
        "/proc/asound",
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ];

    fn cri_spec(masked: &[&str], readonly: &[&str]) -> Spec {
        serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "rw"]}
            ],
            "linux": {"maskedPaths": masked, "readonlyPaths": readonly}
        }))
        .expect("spec")
    }

    /// An image with a directory /etc/secret and a file /etc/shadow.
    fn dirs(p: &Path) -> Kind {
        if p == Path::new("/etc/secret") {
            Kind::Dir
        } else if p == Path::new("/etc/shadow") {
            Kind::File
        } else {
            Kind::Absent
        }
    }

    fn find<'a>(spec: &'a Spec, dest: &str) -> Vec<&'a Mount> {
        spec.mounts()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|m| m.destination() == Path::new(dest))
            .collect()
    }

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    #[test]
    fn cri_defaults_become_mounts_and_read_only_proc_and_sys() {
        let mut spec = cri_spec(MASKED, READONLY);
        let empty = Path::new("/b/.safehouse-masked");
        // /proc and /sys are the Sentry's: tmpfs only, the node's files never consulted.
        assert!(
            !confine_paths(&mut spec, empty, &|p| panic!("looked up {p:?}")).expect("confined")
        );
        for p in MASKED {
            let covers = find(&spec, p);
            assert_eq!(covers.len(), 1, "{p} covered once");
            let m = covers[0];
            assert!(opts(m).contains(&"ro".to_string()), "{p}: {:?}", opts(m));
            assert_eq!(m.typ().as_deref(), Some("tmpfs"), "{p}");
        }
        let proc = find(&spec, "/proc")[0];
        assert!(opts(proc).contains(&"ro".to_string()));
        // No read-only path under /sys: its mount is left as it was.
        assert!(!opts(find(&spec, "/sys")[0]).contains(&"ro".to_string()));
        // The covers come after the mounts they lie on.
        let all = spec.mounts().clone().unwrap_or_default();
        let at = |d: &str| all.iter().position(|m| m.destination() == Path::new(d));
        assert!(at("/proc") < at("/proc/kcore"));
        assert!(at("/sys") < at("/sys/firmware"));
    }

    #[test]
    fn image_paths_are_masked_when_present_and_skipped_when_absent() {
        let mut spec = cri_spec(&["/etc/shadow", "/etc/secret", "/opt/none"], &[]);
        assert!(confine_paths(&mut spec, Path::new("/e"), &dirs).expect("confined"));
        assert_eq!(find(&spec, "/etc/shadow")[0].typ().as_deref(), Some("bind"));
        assert_eq!(
            find(&spec, "/etc/secret")[0].typ().as_deref(),
            Some("tmpfs")
        );
        assert!(find(&spec, "/opt/none").is_empty());
        // Nothing asked, nothing changed.
        let mut plain = cri_spec(&[], &[]);
        assert!(!confine_paths(&mut plain, Path::new("/e"), &dirs).expect("plain"));
        assert!(!opts(find(&plain, "/proc")[0]).contains(&"ro".to_string()));
    }

    #[test]
    fn proc_and_sys_mounts_are_added_read_only_when_the_spec_has_none() {
        let mut spec: Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "mounts": [],
            "linux": {"readonlyPaths": ["/proc/sys", "/sys/kernel"]}
        }))
        .expect("spec");
        confine_paths(&mut spec, Path::new("/e"), &dirs).expect("confined");
        for (dest, typ) in [("/proc", "proc"), ("/sys", "sysfs")] {
            let m = find(&spec, dest);
            assert_eq!(m.len(), 1, "{dest}");
            assert_eq!(m[0].typ().as_deref(), Some(typ));
            assert!(opts(m[0]).contains(&"ro".to_string()), "{dest}");
        }
        // A read-only path under a writable /sys is made to hold by its mount.
        let mut spec = cri_spec(&[], &["/sys/kernel"]);
        confine_paths(&mut spec, Path::new("/e"), &dirs).expect("confined");
        let sys = opts(find(&spec, "/sys")[0]);
        assert!(sys.contains(&"ro".to_string()) && !sys.contains(&"rw".to_string()));
    }

    #[test]
    fn the_images_paths_are_looked_up_without_following_its_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path();
        std::fs::create_dir_all(rootfs.join("etc/secret")).expect("mkdir");
        std::fs::write(rootfs.join("etc/shadow"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc", rootfs.join("link")).expect("symlink");
        let kind = |p: &str| kind_on_node(rootfs, Path::new(p));
        assert_eq!(kind("/etc/secret"), Kind::Dir);
        assert_eq!(kind("/etc/shadow"), Kind::File);
        assert_eq!(kind("/etc/none"), Kind::Absent);
        assert_eq!(kind("/link/shadow"), Kind::ThroughSymlink);
        assert_eq!(kind("/link"), Kind::ThroughSymlink);
        let mut spec = cri_spec(&["/link/shadow"], &[]);
        let err = confine_paths(&mut spec, Path::new("/e"), &|p| kind_on_node(rootfs, p))
            .expect_err("through a symlink");
        assert!(err.to_string().contains("linux.maskedPaths[0]"), "{err}");
    }

    #[test]
    fn what_cannot_hold_is_refused_naming_the_field() {
        let mut spec = cri_spec(&[], &["/etc"]);
        let err = confine_paths(&mut spec, Path::new("/e"), &dirs).expect_err("rw rootfs");
        assert!(err.to_string().contains("linux.readonlyPaths[0]"), "{err}");
        let mut spec = cri_spec(&["/dev/mqueue"], &[]);
        let err = confine_paths(&mut spec, Path::new("/e"), &dirs).expect_err("on /dev");
        assert!(err.to_string().contains("linux.maskedPaths[0]"), "{err}");
        for bad in ["proc/kcore", "/proc/../etc/shadow", "/", ""] {
            let mut spec = cri_spec(&[bad], &[]);
            let err = confine_paths(&mut spec, Path::new("/e"), &dirs).expect_err(bad);
            assert!(
                err.to_string().contains("linux.maskedPaths[0]"),
                "{bad}: {err}"
            );
        }
        // On a read-only rootfs a read-only path of the image already holds.
        let mut spec = cri_spec(&[], &["/etc"]);
        let mut root = spec.root().clone().expect("root");
        root.set_readonly(Some(true));
        spec.set_root(Some(root));
        confine_paths(&mut spec, Path::new("/e"), &dirs).expect("ro rootfs");
    }
}
