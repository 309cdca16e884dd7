//! The container's root filesystem as containerd hands it over: mounts the shim makes at
//! `BUNDLE/rootfs` (when containerd passes them) and removes at the end.

use std::path::Path;

use crate::bundle::ROOTFS;
use crate::error::{Result, ShimError};

/// Mounts containerd's rootfs mounts at `bundle/rootfs`; false when there were none (the
/// bundle's rootfs is ready as it is).
pub async fn mount(bundle: &Path, mounts: &[containerd_shim_protos::api::Mount]) -> Result<bool> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let target = bundle.join(ROOTFS);
    std::fs::create_dir_all(&target)
        .map_err(|e| ShimError::io(format!("create {}", target.display()), e))?;
    for m in mounts {
        if let Err(e) = containerd_shim::asynchronous::util::mount_rootfs(m, &target).await {
            unmount(bundle);
            return Err(ShimError::Internal(format!(
                "mount rootfs ({} {}) at {}: {e}",
                m.type_,
                m.source,
                target.display()
            )));
        }
    }
    Ok(true)
}

/// Unmounts everything under `bundle/rootfs` (lazily: a busy mount must not block delete).
pub fn unmount(bundle: &Path) {
    let target = bundle.join(ROOTFS);
    if let Some(t) = target.to_str() {
        if let Err(e) = containerd_shim::mount::umount_recursive(Some(t), libc::MNT_DETACH) {
            tracing::warn!("unmount {t}: {e}");
        }
    }
}
