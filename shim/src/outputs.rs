//! Output zones with a quota. Each policy output is backed by an ext4 image file of the zone's
//! size, loop-mounted under the bundle and bound into the container in place of the host
//! directory: a write past the size fails inside the sandbox with ENOSPC. When the container is
//! deleted, what the agent left is copied into the host directory (no more than the size, and
//! never through a symlink), symlinks pointing out of the zone are reported (and left out under
//! `symlinks: refuse`), the image is unmounted (its loop device goes with it) and removed.
//!
//! Each zone is described in `BUNDLE/.safehouse-outputs/N.json` before anything is made for it,
//! so a teardown, or the delete action after a shim crash, finds what to release from the
//! bundle alone. What is not here: the bind of the zone into the sandbox (the compiled spec's
//! mount, re-pointed by [`prepare`]).

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{umount2, MntFlags};
use oci_spec::runtime::Spec;
use safehouse_policy::manifest::{HostZone, SymlinkRule};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, ShimError};
use crate::reaper::Reaper;

/// Where the zones' image files live (on the node's disk, not in the bundle's tmpfs).
pub const IMAGES_DIR: &str = "/var/lib/safehouse/outputs";
/// The bundle folder holding each zone's record and mount point.
const OUTPUTS_DIR: &str = ".safehouse-outputs";

/// What was made for one output zone.
#[derive(Debug, Serialize, Deserialize)]
struct ZoneRecord {
    /// The zone's path inside the container.
    zone: String,
    /// The host directory its contents go to.
    source: PathBuf,
    /// The image file.
    image: PathBuf,
    /// Where the image is mounted (the bind's new source).
    mount: PathBuf,
    /// The zone's size in bytes: at most this much is copied out.
    size: u64,
    /// Symlinks pointing out of the zone are left out.
    refuse_symlinks: bool,
}

/// A symlink the agent left in an output that points out of the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscapingSymlink {
    /// The zone's path inside the container.
    pub zone: String,
    /// The link's path inside the zone.
    pub path: String,
    /// What it points to.
    pub target: String,
    /// True when it was left out of the host directory.
    pub refused: bool,
}

/// Backs each output zone of the policy with a loop-mounted ext4 image of its size and points
/// the spec's bind of the zone at it. On an error what was made is described under the bundle:
/// [`release`] removes it.
pub async fn prepare(
    bundle: &Path,
    policy: &str,
    zones: &[HostZone],
    spec: &mut Spec,
    reaper: &Reaper,
) -> Result<()> {
    if zones.is_empty() {
        return Ok(());
    }
    let dir = bundle.join(OUTPUTS_DIR);
    create_dir(&dir, 0o700)?;
    create_dir(Path::new(IMAGES_DIR), 0o700)?;
    // One image name per bundle path: two namespaces may use the same container id.
    let tag = hex::encode(&Sha256::digest(bundle.as_os_str().as_encoded_bytes())[..8]);
    for (i, z) in zones.iter().enumerate() {
        let field = format!("policy {policy:?}: spec.filesystem.outputs[{i}].source");
        let meta = std::fs::metadata(&z.source)
            .map_err(|e| ShimError::InvalidArgument(format!("{field} {}: {e}", z.source)))?;
        if !meta.is_dir() {
            return Err(ShimError::InvalidArgument(format!(
                "{field} {}: not a directory",
                z.source
            )));
        }
        let record = ZoneRecord {
            zone: z.path.clone(),
            source: PathBuf::from(&z.source),
            image: Path::new(IMAGES_DIR).join(format!("{tag}-{i}.img")),
            mount: dir.join(i.to_string()),
            size: z.output_size().bytes(),
            refuse_symlinks: z.symlinks == SymlinkRule::Refuse,
        };
        let json = serde_json::to_vec(&record)
            .map_err(|e| ShimError::Internal(format!("output record: {e}")))?;
        let record_file = dir.join(format!("{i}.json"));
        std::fs::write(&record_file, json)
            .map_err(|e| ShimError::io(format!("write {}", record_file.display()), e))?;
        make_zone(&record, &meta, reaper).await?;
        repoint(spec, z, &record.mount)?;
    }
    Ok(())
}

async fn make_zone(r: &ZoneRecord, source: &std::fs::Metadata, reaper: &Reaper) -> Result<()> {
    let image = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&r.image)
        .map_err(|e| ShimError::io(format!("create {}", r.image.display()), e))?;
    image
        .set_len(r.size)
        .map_err(|e| ShimError::io(format!("size {}", r.image.display()), e))?;
    drop(image);
    let owner = format!("root_owner={}:{}", source.uid(), source.gid());
    run(
        reaper,
        "mkfs.ext4",
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-m".as_ref(),
            "0".as_ref(),
            "-O".as_ref(),
            "^has_journal".as_ref(),
            "-E".as_ref(),
            owner.as_ref(),
            r.image.as_os_str(),
        ],
    )
    .await?;
    create_dir(&r.mount, 0o700)?;
    run(
        reaper,
        "mount",
        &[
            "-t".as_ref(),
            "ext4".as_ref(),
            "-o".as_ref(),
            "loop,nosuid,nodev".as_ref(),
            r.image.as_os_str(),
            r.mount.as_os_str(),
        ],
    )
    .await?;
    // The agent sees an empty zone with the host directory's mode.
    let _ = std::fs::remove_dir(r.mount.join("lost+found"));
    let mode = std::fs::Permissions::from_mode(source.mode() & 0o1777);
    std::fs::set_permissions(&r.mount, mode)
        .map_err(|e| ShimError::io(format!("chmod {}", r.mount.display()), e))
}

/// Points the spec's bind of zone `z` at `mount`.
fn repoint(spec: &mut Spec, z: &HostZone, mount: &Path) -> Result<()> {
    let bind = spec.mounts_mut().as_mut().and_then(|ms| {
        ms.iter_mut().find(|m| {
            m.destination() == Path::new(&z.path)
                && m.source().as_deref() == Some(Path::new(&z.source))
        })
    });
    let Some(bind) = bind else {
        return Err(ShimError::Internal(format!(
            "the confined spec has no bind of output {} at {}",
            z.source, z.path
        )));
    };
    bind.set_source(Some(mount.to_path_buf()));
    Ok(())
}

/// Copies every zone's contents into its host directory and removes its mount and image;
/// `report` hears each symlink pointing out of a zone. Safe to call again, and on a bundle
/// without outputs.
pub fn release(bundle: &Path, report: &mut dyn FnMut(EscapingSymlink)) {
    let dir = bundle.join(OUTPUTS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut records: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension() == Some(OsStr::new("json")))
        .collect();
    records.sort();
    for file in records {
        let record = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice::<ZoneRecord>(&b).ok());
        let Some(r) = record else {
            tracing::warn!("unreadable output record {}", file.display());
            let _ = std::fs::remove_file(&file);
            continue;
        };
        if is_mount_point(&r.mount) {
            let mut out = CopyOut {
                record: &r,
                budget: r.size,
                report: &mut *report,
            };
            if let Err(e) = out.dir(Path::new(""), 0) {
                tracing::warn!(zone = %r.zone, "copying output to {}: {e}", r.source.display());
            }
            if let Err(e) = umount2(&r.mount, MntFlags::empty()) {
                tracing::warn!("unmount {}: {e}; detaching", r.mount.display());
                let _ = umount2(&r.mount, MntFlags::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir(&r.mount);
        let _ = std::fs::remove_file(&r.image);
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_dir(&dir);
}

fn is_mount_point(p: &Path) -> bool {
    let (Ok(m), Some(Ok(parent))) = (
        std::fs::symlink_metadata(p),
        p.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    m.is_dir() && m.dev() != parent.dev()
}

/// True unless `target`, read from a link in a directory `depth` levels below the zone's root,
/// provably stays inside the zone: relative, its `..` all leading and no more than `depth`.
/// (A `..` after a name could climb out of a directory a link leads to, so it counts as out.)
pub fn escapes(depth: usize, target: &Path) -> bool {
    let mut up = 0;
    let mut named = false;
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(_) => named = true,
            Component::ParentDir if !named && up < depth => up += 1,
            _ => return true,
        }
    }
    false
}

/// One zone's copy into its host directory. The agent is gone: nothing changes the tree
/// meanwhile. Nothing in the host directory is followed: whatever stands where an entry goes
/// (a file, a link) is replaced, and files are created afresh (`O_EXCL`).
struct CopyOut<'a> {
    record: &'a ZoneRecord,
    /// Bytes of file contents still allowed.
    budget: u64,
    report: &'a mut dyn FnMut(EscapingSymlink),
}

impl CopyOut<'_> {
    fn dir(&mut self, rel: &Path, depth: usize) -> std::io::Result<()> {
        let from = self.record.mount.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&from)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            if let Err(e) = self.entry(&rel, depth) {
                tracing::warn!(zone = %self.record.zone, "output entry {}: {e}", rel.display());
            }
        }
        Ok(())
    }

    fn entry(&mut self, rel: &Path, depth: usize) -> std::io::Result<()> {
        let from = self.record.mount.join(rel);
        let to = self.record.source.join(rel);
        let meta = std::fs::symlink_metadata(&from)?;
        let kind = meta.file_type();
        let existing = std::fs::symlink_metadata(&to).ok();
        let existing_dir = existing.as_ref().is_some_and(|m| m.is_dir());
        if kind.is_dir() {
            if !existing_dir {
                if existing.is_some() {
                    std::fs::remove_file(&to)?;
                }
                std::fs::create_dir(&to)?;
            }
            own(&to, &meta)?;
            return self.dir(rel, depth + 1);
        }
        if existing_dir {
            return Err(std::io::Error::other("a host directory stands there"));
        }
        if kind.is_symlink() {
            let target = std::fs::read_link(&from)?;
            let refused = escapes(depth, &target) && self.record.refuse_symlinks;
            if escapes(depth, &target) {
                (self.report)(EscapingSymlink {
                    zone: self.record.zone.clone(),
                    path: rel.display().to_string(),
                    target: target.display().to_string(),
                    refused,
                });
            }
            if refused {
                return Ok(());
            }
            if existing.is_some() {
                std::fs::remove_file(&to)?;
            }
            std::os::unix::fs::symlink(&target, &to)?;
            return std::os::unix::fs::lchown(&to, Some(meta.uid()), Some(meta.gid()));
        }
        if !kind.is_file() {
            return Err(std::io::Error::other(
                "not a file, directory or symlink: left out",
            ));
        }
        if meta.len() > self.budget {
            return Err(std::io::Error::other(
                "left out: the zone's copies would pass its size (sparse or hard-linked files)",
            ));
        }
        self.budget -= meta.len();
        if existing.is_some() {
            std::fs::remove_file(&to)?;
        }
        let mut src = std::fs::File::open(&from)?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&to)?;
        std::io::copy(&mut (&mut src).take(meta.len()), &mut dst)?;
        own(&to, &meta)
    }
}

/// Gives `to` the owner and mode (without set-id bits) of the agent's file.
fn own(to: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o1777))
}

fn create_dir(dir: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| ShimError::io(format!("create {}", dir.display()), e))
}

/// Runs a host tool through the reaper (which reaps every child of the shim).
async fn run(reaper: &Reaper, program: &str, args: &[&OsStr]) -> Result<()> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (mut child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| ShimError::io(format!("run {program} (needed for output zones)"), e))?;
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    let exit = exit
        .await
        .map_err(|_| ShimError::Internal(format!("{program}: no exit status")))?;
    if exit.code != 0 {
        return Err(ShimError::Internal(format!(
            "{program} {}: exit {}: {}",
            args.last().map(|a| a.to_string_lossy()).unwrap_or_default(),
            exit.code,
            err.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies `zone` (a 1 MiB zone at `/out` that keeps symlinks) into `host`, as at delete.
    fn copy_zone(zone: &Path, host: &Path) {
        let record = ZoneRecord {
            zone: "/out".into(),
            source: host.to_path_buf(),
            image: PathBuf::new(),
            mount: zone.to_path_buf(),
            size: 1 << 20,
            refuse_symlinks: false,
        };
        let mut report = |_: EscapingSymlink| {};
        let mut out = CopyOut {
            record: &record,
            budget: record.size,
            report: &mut report,
        };
        out.dir(Path::new(""), 0).expect("copy");
    }

    #[test]
    fn links_that_leave_the_zone_escape() {
        for (depth, target) in [
            (0, "/etc"),
            (0, "/"),
            (0, ".."),
            (1, "../.."),
            (2, "a/../../../x"),
            (1, "c/.."),
        ] {
            assert!(escapes(depth, Path::new(target)), "{depth} {target}");
        }
        for (depth, target) in [(0, "a/b"), (1, "../a"), (2, "../../a"), (0, "./x"), (0, "")] {
            assert!(!escapes(depth, Path::new(target)), "{depth} {target}");
        }
    }

    #[test]
    fn copy_out_replaces_host_links_and_reports_escaping_ones() {
        let tmp = tempfile::tempdir().expect("tmp");
        let zone = tmp.path().join("zone");
        let host = tmp.path().join("host");
        let outside = tmp.path().join("outside");
        for d in [&zone, &host, &outside, &zone.join("sub")] {
            std::fs::create_dir(d).expect("mkdir");
        }
        std::fs::write(zone.join("sub/result"), "data").expect("write");
        std::os::unix::fs::symlink("/etc", zone.join("evil")).expect("link");
        std::os::unix::fs::symlink("../result-link", zone.join("sub/up")).expect("link");
        // A link already in the host directory is replaced, not written through.
        std::os::unix::fs::symlink(&outside, host.join("sub")).expect("link");
        for refuse in [false, true] {
            let record = ZoneRecord {
                zone: "/out".into(),
                source: host.clone(),
                image: PathBuf::new(),
                mount: zone.clone(),
                size: 1 << 20,
                refuse_symlinks: refuse,
            };
            let mut seen = Vec::new();
            let mut report = |l: EscapingSymlink| seen.push(l);
            let mut out = CopyOut {
                record: &record,
                budget: record.size,
                report: &mut report,
            };
            out.dir(Path::new(""), 0).expect("copy");
            assert_eq!(
                seen,
                [EscapingSymlink {
                    zone: "/out".into(),
                    path: "evil".into(),
                    target: "/etc".into(),
                    refused: refuse,
                }]
            );
            assert_eq!(
                std::fs::read_to_string(host.join("sub/result")).expect("read"),
                "data"
            );
            assert!(std::fs::read_dir(&outside).expect("dir").next().is_none());
            assert!(std::fs::symlink_metadata(host.join("sub/up")).is_ok());
            // The host keeps the link from the first (record) pass unless removed by hand.
            if !refuse {
                std::fs::remove_file(host.join("evil")).expect("rm");
            } else {
                assert!(std::fs::symlink_metadata(host.join("evil")).is_err());
            }
        }
    }

    #[test]
    fn copy_out_drops_set_id_bits_and_leaves_out_fifos_and_sockets() {
        let tmp = tempfile::tempdir().expect("tmp");
        let zone = tmp.path().join("zone");
        let host = tmp.path().join("host");
        std::fs::create_dir(&zone).expect("mkdir");
        std::fs::create_dir(&host).expect("mkdir");
        for (name, mode) in [("suid", 0o4755), ("sgid", 0o2755), ("private", 0o640)] {
            std::fs::write(zone.join(name), name).expect("write");
            std::fs::set_permissions(zone.join(name), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
        }
        std::fs::create_dir(zone.join("shared")).expect("mkdir");
        std::fs::set_permissions(zone.join("shared"), std::fs::Permissions::from_mode(0o3775))
            .expect("chmod");
        nix::unistd::mkfifo(
            &zone.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("mkfifo");
        let _socket = std::os::unix::net::UnixListener::bind(zone.join("socket")).expect("bind");
        std::fs::write(host.join("preexisting"), "host").expect("write");
        copy_zone(&zone, &host);
        let mode = |name: &str| {
            std::fs::symlink_metadata(host.join(name))
                .expect(name)
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("suid"), 0o755);
        assert_eq!(mode("sgid"), 0o755);
        assert_eq!(mode("private"), 0o640);
        // The sticky bit is not a set-id bit: it stays.
        assert_eq!(mode("shared"), 0o1775);
        assert!(std::fs::symlink_metadata(host.join("fifo")).is_err());
        assert!(std::fs::symlink_metadata(host.join("socket")).is_err());
        assert_eq!(
            std::fs::read_to_string(host.join("preexisting")).expect("read"),
            "host"
        );
    }

    #[test]
    fn copy_out_stops_at_the_zone_size() {
        let tmp = tempfile::tempdir().expect("tmp");
        let zone = tmp.path().join("zone");
        let host = tmp.path().join("host");
        std::fs::create_dir(&zone).expect("mkdir");
        std::fs::create_dir(&host).expect("mkdir");
        // Sparse: takes no room in the zone, but would be 1Gi on the host.
        let f = std::fs::File::create(zone.join("sparse")).expect("create");
        f.set_len(1 << 30).expect("truncate");
        std::fs::write(zone.join("small"), "x").expect("write");
        copy_zone(&zone, &host);
        assert!(!host.join("sparse").exists());
        assert!(host.join("small").exists());
    }
}
