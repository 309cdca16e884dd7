//! Read-only bind mounts made read-only on the host as well.
//!
//! gVisor honours a read-only bind for writes, but an `open(O_TRUNC)` of a file in one still
//! truncates the host file (seen with runsc 20240729, directfs on or off). So every bind mount
//! the confined spec marks `ro` is given its own host bind mount under the bundle, remounted
//! read-only, and the spec points at that: the host kernel then refuses any write, whatever
//! gVisor does. Removed when the container is deleted.
//!
//! The same way, an empty read-only file hides gVisor's `/dev/fuse` ([`mask_fuse`]).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::{Mount, Spec};

use crate::bundle::RO_BINDS_DIR;
use crate::error::{Result, ShimError};

fn is_ro_bind(m: &Mount) -> bool {
    let opts: Vec<&str> = m
        .options()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    let bind =
        m.typ().as_deref() == Some("bind") || opts.iter().any(|o| *o == "bind" || *o == "rbind");
    bind && opts.contains(&"ro")
}

/// Re-points every read-only bind mount of `spec` (the confined spec, in memory) at a read-only
/// host bind under `bundle`. On an error some binds may be made: [`release`] removes them.
pub fn harden(bundle: &Path, spec: &mut Spec) -> Result<()> {
    let Some(mounts) = spec.mounts_mut() else {
        return Ok(());
    };
    let dir = bundle.join(RO_BINDS_DIR);
    for (i, m) in mounts.iter_mut().enumerate() {
        if !is_ro_bind(m) {
            continue;
        }
        let Some(source) = m.source().clone() else {
            continue;
        };
        if !source.is_absolute() {
            continue;
        }
        let meta = std::fs::metadata(&source).map_err(|e| {
            ShimError::InvalidArgument(format!("mounts[{i}]: source {}: {e}", source.display()))
        })?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| ShimError::io(format!("create {}", dir.display()), e))?;
        let target = dir.join(i.to_string());
        let created = if meta.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::write(&target, b"")
        };
        created.map_err(|e| ShimError::io(format!("create {}", target.display()), e))?;
        bind_read_only(&source, &target)?;
        m.set_source(Some(target));
    }
    Ok(())
}

/// The empty file the shim binds over `/dev/fuse`, in the bundle.
const NO_FUSE: &str = ".safehouse-nofuse";

/// Hides gVisor's `/dev/fuse`, which is outside the standard device set: runsc creates it in
/// every sandbox's devtmpfs (no flag or spec field turns it off), so the spec gets a read-only
/// bind of an empty mode-000 file over it, made read-only on the host by [`harden`] too. Call
/// before [`harden`]; [`release`] removes the file.
pub fn mask_fuse(bundle: &Path, spec: &mut Spec) -> Result<()> {
    let file = bundle.join(NO_FUSE);
    let _ = std::fs::remove_file(&file);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&file)
        .map_err(|e| ShimError::io(format!("create {}", file.display()), e))?;
    let mask = serde_json::json!({
        "destination": "/dev/fuse",
        "type": "bind",
        "source": file,
        "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
    });
    let mask: Mount = serde_json::from_value(mask)
        .map_err(|e| ShimError::Internal(format!("the /dev/fuse mask: {e}")))?;
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.retain(|m| m.destination() != Path::new("/dev/fuse"));
    mounts.push(mask);
    spec.set_mounts(Some(mounts));
    Ok(())
}

fn bind_read_only(source: &Path, target: &Path) -> Result<()> {
    let err = |what: &str, e: nix::Error| {
        ShimError::io(
            format!("{what} {} at {}", source.display(), target.display()),
            std::io::Error::from(e),
        )
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| err("bind", e))?;
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if let Err(e) = mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        return Err(err("make read-only", e));
    }
    Ok(())
}

/// Unmounts and removes the read-only host binds of a bundle.
pub fn release(bundle: &Path) {
    let _ = std::fs::remove_file(bundle.join(NO_FUSE));
    let dir = bundle.join(RO_BINDS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL {
                tracing::warn!("unmount {}: {e}", p.display());
            }
        }
        let _ = std::fs::remove_dir(&p).or_else(|_| std::fs::remove_file(&p));
    }
    let _ = std::fs::remove_dir(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mount(v: serde_json::Value) -> Mount {
        serde_json::from_value(v).expect("mount")
    }

    #[test]
    fn only_read_only_binds_are_hardened() {
        assert!(is_ro_bind(&mount(
            json!({"destination": "/a", "type": "bind", "options": ["rbind", "ro"]})
        )));
        assert!(is_ro_bind(&mount(
            json!({"destination": "/a", "type": "none", "options": ["bind", "ro", "nosuid"]})
        )));
        assert!(!is_ro_bind(&mount(
            json!({"destination": "/a", "type": "bind", "options": ["rbind", "rw"]})
        )));
        assert!(!is_ro_bind(&mount(
            json!({"destination": "/a", "type": "tmpfs", "options": ["ro"]})
        )));
    }
}
