//! `process.tools` in the image: finds each listed tool in the container's root filesystem on
//! the host, with what the kernel needs to start it (its ELF interpreter, or a script's
//! interpreter and that one's), and builds the host views the mount table needs. The table
//! itself is the policy crate's pure [`safehouse_policy::tool_mounts`].
//!
//! A tool that is a symlink (busybox's `/bin/sh -> /bin/busybox`) cannot simply get an
//! exec-allowed bind at its path: a mount on a symlink lands on its target, and then every
//! name resolving to that file (`/bin/cat`) runs too. So the directory holding it is shown
//! through a read-only host overlay whose top layer has an empty regular file of that name;
//! the tool's bind goes on that file, and the other names keep pointing at the target, which
//! stays on a `noexec` mount. Nothing here runs code from the image; files are only read,
//! with bounded reads.

pub mod elf;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use safehouse_policy::{ExecFile, ShadowDir, ToolLayout};
use tracing::warn;

use crate::audit::resolve_in_root;
use crate::bundle::TOOLS_DIR;
use crate::error::{Result, ShimError};
use elf::Starter;

/// Interpreters followed from a tool: a script's interpreter may be a script (Linux allows a
/// few levels); past this the tool is left without them and fails to start.
const MAX_STARTERS: usize = 4;

/// What `tools` resolve to in the image, before anything is made on the host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Exec binds: (path in the container, path in the container of the file to bind).
    pub exec: Vec<(PathBuf, PathBuf)>,
    /// Directories (in the container) whose listed entries are symlinks, with those names.
    pub shadow: BTreeMap<PathBuf, Vec<OsString>>,
    /// Listed tools not found as files, for the log.
    pub missing: Vec<PathBuf>,
}

/// The host path of `path` (absolute, symlinks resolved) inside `rootfs`.
fn on_host(rootfs: &Path, path: &Path) -> PathBuf {
    rootfs.join(path.strip_prefix("/").unwrap_or(path))
}

fn is_file(rootfs: &Path, path: &Path) -> bool {
    std::fs::symlink_metadata(on_host(rootfs, path)).is_ok_and(|m| m.file_type().is_file())
}

/// Resolves `tools` in `rootfs` (read only; nothing is made).
pub fn find(rootfs: &Path, tools: &[PathBuf]) -> Found {
    let mut found = Found::default();
    let mut starters: Vec<PathBuf> = Vec::new();
    for tool in tools {
        let (Some(parent), Some(name)) = (tool.parent(), tool.file_name()) else {
            found.missing.push(tool.clone());
            continue;
        };
        let Some(dir) = resolve_in_root(rootfs, parent) else {
            found.missing.push(tool.clone());
            continue;
        };
        let at = dir.join(name);
        let Ok(meta) = std::fs::symlink_metadata(on_host(rootfs, &at)) else {
            found.missing.push(tool.clone());
            continue;
        };
        let target = if meta.file_type().is_symlink() {
            match resolve_in_root(rootfs, tool).filter(|t| is_file(rootfs, t)) {
                Some(t) => {
                    found.shadow.entry(dir).or_default().push(name.to_owned());
                    t
                }
                None => {
                    found.missing.push(tool.clone());
                    continue;
                }
            }
        } else if meta.file_type().is_file() {
            at.clone()
        } else {
            found.missing.push(tool.clone());
            continue;
        };
        starters.push(target.clone());
        found.exec.push((at, target));
    }
    // What the kernel opens to start each of them: an ELF interpreter, a script's interpreter
    // (and, in turn, what that one needs). Bound where they resolve: the kernel follows the
    // symlinks of the path the file names.
    let mut round = 0;
    while !starters.is_empty() && round < MAX_STARTERS {
        round += 1;
        let mut next = Vec::new();
        for file in starters.drain(..) {
            let needed = match elf::inspect(&on_host(rootfs, &file)) {
                Ok(Starter::Elf(Some(p)) | Starter::Script(p)) => p,
                _ => continue,
            };
            let Some(resolved) = resolve_in_root(rootfs, &needed).filter(|p| is_file(rootfs, p))
            else {
                found.missing.push(needed);
                continue;
            };
            if found.exec.iter().all(|(at, _)| *at != resolved) {
                found.exec.push((resolved.clone(), resolved.clone()));
                next.push(resolved);
            }
        }
        starters = next;
    }
    for names in found.shadow.values_mut() {
        names.sort();
        names.dedup();
    }
    found
}

/// Finds `tools` in `rootfs` and makes the views they need under `bundle`; [`release`] removes
/// them (also after an error here).
pub fn prepare(bundle: &Path, rootfs: &Path, tools: &[PathBuf]) -> Result<ToolLayout> {
    let found = find(rootfs, tools);
    if !found.missing.is_empty() {
        warn!(missing = ?found.missing, "process.tools: not found as files in the image; they cannot run");
    }
    let dir = bundle.join(TOOLS_DIR);
    let mut shadowed = Vec::new();
    for (i, (at, names)) in found.shadow.iter().enumerate() {
        let top = dir.join(format!("{i}.top"));
        let view = dir.join(i.to_string());
        for d in [&top, &view] {
            std::fs::create_dir_all(d)
                .map_err(|e| ShimError::io(format!("create {}", d.display()), e))?;
        }
        for name in names {
            let f = top.join(name);
            std::fs::write(&f, b"")
                .map_err(|e| ShimError::io(format!("create {}", f.display()), e))?;
        }
        overlay(&top, &on_host(rootfs, at), &view)?;
        shadowed.push(ShadowDir {
            dir: at.clone(),
            source: view,
        });
    }
    Ok(ToolLayout {
        rootfs: rootfs.to_path_buf(),
        shadowed,
        exec: found
            .exec
            .into_iter()
            .map(|(path, file)| ExecFile {
                source: on_host(rootfs, &file),
                path,
            })
            .collect(),
    })
}

/// Creates in `rootfs` the mount points of `spec`'s mounts that the image lacks (a directory,
/// or an empty file for a bind of a file), as runc does: with the rootfs bound read-only over
/// `/`, runsc cannot create them inside the sandbox. Symlinks are resolved inside `rootfs`.
pub fn make_mount_points(rootfs: &Path, spec: &oci_spec::runtime::Spec) -> Result<()> {
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination();
        if dest == Path::new("/") || resolve_in_root(rootfs, dest).is_some() {
            continue;
        }
        let file =
            m.source().as_deref().is_some_and(Path::is_file) && m.typ().as_deref() == Some("bind");
        let mut at = PathBuf::from("/");
        let parts: Vec<_> = dest.components().skip(1).collect();
        for (i, part) in parts.iter().enumerate() {
            let next = at.join(part);
            if let Some(resolved) = resolve_in_root(rootfs, &next) {
                at = resolved;
                continue;
            }
            let host = on_host(rootfs, &at.join(part));
            let made = if file && i + 1 == parts.len() {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&host)
                    .map(drop)
            } else {
                std::fs::create_dir(&host)
            };
            made.map_err(|e| ShimError::io(format!("create mount point {}", host.display()), e))?;
            at = at.join(part);
        }
    }
    Ok(())
}

/// A read-only overlay of `top` over `lower` at `view`.
fn overlay(top: &Path, lower: &Path, view: &Path) -> Result<()> {
    let path_ok = |p: &Path| {
        p.to_str()
            .filter(|s| !s.contains([',', ':', '\\']))
            .map(str::to_string)
    };
    let (Some(top_s), Some(lower_s)) = (path_ok(top), path_ok(lower)) else {
        return Err(ShimError::FailedPrecondition(format!(
            "process.tools: cannot build an overlay of {} (a path with ',', ':' or '\\\\' cannot be named to overlayfs)",
            lower.display()
        )));
    };
    let data = format!("lowerdir={top_s}:{lower_s}");
    mount(
        Some("overlay"),
        view,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| {
        ShimError::io(
            format!(
                "overlay {} over {} at {}",
                top.display(),
                lower.display(),
                view.display()
            ),
            std::io::Error::from(e),
        )
    })
}

/// Unmounts and removes the views made under `bundle`.
pub fn release(bundle: &Path) {
    let dir = bundle.join(TOOLS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "top") {
            let _ = std::fs::remove_dir_all(&p);
            continue;
        }
        if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
            if e != nix::errno::Errno::EINVAL {
                warn!("unmount {}: {e}", p.display());
            }
        }
        // Never recursive: a view still mounted must not be emptied through.
        let _ = std::fs::remove_dir(&p);
    }
    let _ = std::fs::remove_dir(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(root: &Path, path: &str, bytes: &[u8]) {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }

    #[test]
    fn busybox_symlinks_are_shadowed_and_point_at_the_one_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        write(r, "bin/busybox", b"\x7fELF static enough");
        for applet in ["sh", "echo", "cat"] {
            symlink("/bin/busybox", r.join("bin").join(applet)).expect("symlink");
        }
        let found = find(r, &[PathBuf::from("/bin/sh"), PathBuf::from("/bin/echo")]);
        assert_eq!(
            found.exec,
            [
                (PathBuf::from("/bin/sh"), PathBuf::from("/bin/busybox")),
                (PathBuf::from("/bin/echo"), PathBuf::from("/bin/busybox")),
            ]
        );
        assert_eq!(
            found.shadow.get(Path::new("/bin")),
            Some(&vec![OsString::from("echo"), OsString::from("sh")])
        );
        assert!(found.missing.is_empty());
    }

    #[test]
    fn a_dynamic_tool_brings_its_loader_and_a_script_its_interpreter() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        // merged /usr: /bin -> usr/bin, /lib64/ld -> /lib/x86_64-linux-gnu/ld
        std::fs::create_dir_all(r.join("usr/bin")).expect("mkdir");
        symlink("usr/bin", r.join("bin")).expect("symlink");
        write(r, "lib/x86_64-linux-gnu/ld.so.2", b"\x7fELF loader");
        std::fs::create_dir_all(r.join("lib64")).expect("mkdir");
        symlink("/lib/x86_64-linux-gnu/ld.so.2", r.join("lib64/ld.so.2")).expect("symlink");
        write(
            r,
            "usr/bin/python3.11",
            &super::elf::elf64(b"/lib64/ld.so.2"),
        );
        symlink("python3.11", r.join("usr/bin/python3")).expect("symlink");
        write(r, "usr/local/bin/job", b"#!/usr/bin/python3 -u\nprint(1)\n");
        let found = find(
            r,
            &[PathBuf::from("/usr/local/bin/job"), PathBuf::from("/nope")],
        );
        assert_eq!(
            found.exec,
            [
                (
                    PathBuf::from("/usr/local/bin/job"),
                    PathBuf::from("/usr/local/bin/job")
                ),
                (
                    PathBuf::from("/usr/bin/python3.11"),
                    PathBuf::from("/usr/bin/python3.11")
                ),
                (
                    PathBuf::from("/lib/x86_64-linux-gnu/ld.so.2"),
                    PathBuf::from("/lib/x86_64-linux-gnu/ld.so.2")
                ),
            ]
        );
        assert!(found.shadow.is_empty());
        assert_eq!(found.missing, [PathBuf::from("/nope")]);
        // A symlinked tool through a symlinked directory is shadowed where it really is.
        let found = find(r, &[PathBuf::from("/bin/python3")]);
        assert_eq!(
            found.exec[0],
            (
                PathBuf::from("/usr/bin/python3"),
                PathBuf::from("/usr/bin/python3.11")
            )
        );
        assert!(found.shadow.contains_key(Path::new("/usr/bin")));
    }

    #[test]
    fn symlinks_never_leave_the_root() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("bin")).expect("mkdir");
        // An absolute link to a host file resolves inside the root, where there is none.
        symlink("/etc/hostname", r.join("bin/evil")).expect("symlink");
        symlink("../../../../../../etc/hostname", r.join("bin/evil2")).expect("symlink");
        let found = find(
            r,
            &[PathBuf::from("/bin/evil"), PathBuf::from("/bin/evil2")],
        );
        assert!(found.exec.is_empty(), "{found:?}");
        assert_eq!(found.missing.len(), 2);
    }
}
