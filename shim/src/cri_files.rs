//! containerd's own files for a pod sandbox: CRI writes `resolv.conf`, `hosts` and `hostname`
//! for each sandbox under its root (`<root>/io.containerd.grpc.v1.cri/sandboxes/<id>/`) and
//! binds them into every container of the pod. Their source is trusted without an operator's
//! `[policy] cri_sources` entry when it is exactly that shape for *this* pod's sandbox id (the
//! `io.kubernetes.cri.sandbox-id` annotation), bound at the matching destination, and a plain
//! file of its own on the host: no symlink anywhere on its path, one link only, owned by root
//! and writable by root alone, in a directory that is the same.
//!
//! What a tenant cannot imitate: a pod's hostPath volumes are fixed before its sandbox id
//! exists (containerd picks it at RunPodSandbox), so a hostPath cannot name this sandbox's
//! directory; one naming another sandbox's files, a symlink to a node file, or a hard link to
//! one is refused like any other host path. Deciding this needs the host's file system, so it
//! lives here and not in the policy compiler (which does no I/O): the files that pass are
//! handed to it as exact trusted sources.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::container::CRI_SANDBOX_ID;

/// The folder of containerd's CRI plugin that holds one directory per pod sandbox.
pub const CRI_SANDBOXES_DIR: &str = "io.containerd.grpc.v1.cri/sandboxes";

/// Where each CRI-made file is bound in a container, and its name in the sandbox directory.
const SANDBOX_FILES: &[(&str, &str)] = &[
    ("/etc/resolv.conf", "resolv.conf"),
    ("/etc/hosts", "hosts"),
    ("/etc/hostname", "hostname"),
];

/// The bind sources of `spec` that are files containerd's CRI made for this very pod sandbox.
pub fn sandbox_files(spec: &Value) -> Vec<PathBuf> {
    let Some(sandbox) = spec["annotations"][CRI_SANDBOX_ID]
        .as_str()
        .filter(|id| is_plain_name(id))
    else {
        return Vec::new();
    };
    let Some(mounts) = spec["mounts"].as_array() else {
        return Vec::new();
    };
    mounts
        .iter()
        .filter_map(|m| Some((m["destination"].as_str()?, m["source"].as_str()?)))
        .filter(|(dest, source)| has_sandbox_shape(dest, source, sandbox))
        .filter(|(_, source)| is_plain_root_file(Path::new(source)))
        .map(|(_, source)| PathBuf::from(source))
        .collect()
}

/// A single path component: not empty, no `/`, not `.` or `..`.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0')
}

/// Whether `source` is `<root>/io.containerd.grpc.v1.cri/sandboxes/<sandbox>/<file>` with the
/// file that belongs at `dest`, written plainly (absolute, no `.`, `..` or empty component).
fn has_sandbox_shape(dest: &str, source: &str, sandbox: &str) -> bool {
    let Some((_, file)) = SANDBOX_FILES.iter().find(|(d, _)| *d == dest) else {
        return false;
    };
    let Some(root) = source.strip_suffix(&format!("/{CRI_SANDBOXES_DIR}/{sandbox}/{file}")) else {
        return false;
    };
    root.starts_with('/') && root[1..].split('/').all(is_plain_name)
}

/// Whether `path` is a regular file reached without a symlink, with one link, owned by root
/// and writable only by it, in a directory owned by root and writable only by it.
fn is_plain_root_file(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    let root_only = |m: &std::fs::Metadata| m.uid() == 0 && m.mode() & 0o022 == 0;
    if !meta.file_type().is_file() || meta.nlink() != 1 || !root_only(&meta) {
        return false;
    }
    let dir_ok = path
        .parent()
        .and_then(|d| std::fs::symlink_metadata(d).ok())
        .is_some_and(|d| d.file_type().is_dir() && root_only(&d));
    // No symlink in any component: the path resolves to itself.
    dir_ok && std::fs::canonicalize(path).is_ok_and(|real| real == path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::json;

    use super::*;

    const SB: &str = "5f1c0ffee";

    fn bind(dest: &str, source: &Path) -> Value {
        json!({"destination": dest, "type": "bind", "source": source, "options": ["rbind", "ro"]})
    }

    fn spec(sandbox: &str, mounts: Vec<Value>) -> Value {
        json!({"annotations": {CRI_SANDBOX_ID: sandbox}, "mounts": mounts})
    }

    /// `<tmp>/root/io.containerd.grpc.v1.cri/sandboxes/<id>/` with the three files, as
    /// containerd makes them (root-owned when the tests run as root).
    fn sandbox_dir(tmp: &Path, id: &str) -> PathBuf {
        let dir = tmp.join("root").join(CRI_SANDBOXES_DIR).join(id);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for (_, name) in SANDBOX_FILES {
            let f = dir.join(name);
            std::fs::write(&f, "x\n").expect("write");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        dir
    }

    fn running_as_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn only_the_exact_shape_for_this_sandbox_at_its_destination() {
        let root = "/data/ctd";
        let file = |id: &str, name: &str| format!("{root}/{CRI_SANDBOXES_DIR}/{id}/{name}");
        assert!(has_sandbox_shape("/etc/hosts", &file(SB, "hosts"), SB));
        assert!(has_sandbox_shape(
            "/etc/resolv.conf",
            &file(SB, "resolv.conf"),
            SB
        ));
        assert!(has_sandbox_shape(
            "/etc/hostname",
            &file(SB, "hostname"),
            SB
        ));
        // Another sandbox's files, or this one's at another destination.
        assert!(!has_sandbox_shape(
            "/etc/hosts",
            &file("other", "hosts"),
            SB
        ));
        assert!(!has_sandbox_shape("/etc/hosts", &file(SB, "hostname"), SB));
        assert!(!has_sandbox_shape("/data", &file(SB, "hosts"), SB));
        // Anything but the plain shape.
        for source in [
            format!("{root}/{CRI_SANDBOXES_DIR}/{SB}/../{SB}/hosts"),
            format!("/data/../{CRI_SANDBOXES_DIR}/{SB}/hosts"),
            format!("/data//ctd/{CRI_SANDBOXES_DIR}/{SB}/hosts"),
            format!("{root}/{CRI_SANDBOXES_DIR}/{SB}/hosts/"),
            format!("data/{CRI_SANDBOXES_DIR}/{SB}/hosts"),
            format!("{root}/{CRI_SANDBOXES_DIR}/x{SB}/hosts"),
        ] {
            assert!(!has_sandbox_shape("/etc/hosts", &source, SB), "{source}");
        }
    }

    #[test]
    fn trusts_the_files_containerd_made_for_this_sandbox() {
        if !running_as_root() {
            eprintln!("skipped: needs root to make root-owned files");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = sandbox_dir(tmp.path(), SB);
        let mounts = SANDBOX_FILES
            .iter()
            .map(|(dest, name)| bind(dest, &dir.join(name)))
            .collect();
        let trusted = sandbox_files(&spec(SB, mounts));
        assert_eq!(trusted.len(), 3, "{trusted:?}");
        // The same files for a container of another pod: not its own.
        let mounts = vec![bind("/etc/hosts", &dir.join("hosts"))];
        assert!(sandbox_files(&spec("another", mounts.clone())).is_empty());
        assert!(sandbox_files(&json!({"mounts": mounts})).is_empty());
    }

    #[test]
    fn a_symlink_or_a_hard_link_in_that_shape_is_not_trusted() {
        if !running_as_root() {
            eprintln!("skipped: needs root to make root-owned files");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "node secret\n").expect("write");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");

        // A symlink at the file's place.
        let dir = sandbox_dir(tmp.path(), SB);
        std::fs::remove_file(dir.join("hosts")).expect("rm");
        std::os::unix::fs::symlink(&secret, dir.join("hosts")).expect("symlink");
        // A hard link at the file's place (a regular file, but the node's).
        std::fs::remove_file(dir.join("hostname")).expect("rm");
        std::fs::hard_link(&secret, dir.join("hostname")).expect("link");
        // A symlinked directory on the way to a real file.
        let real = sandbox_dir(&tmp.path().join("real"), SB);
        let via = tmp.path().join("via");
        std::os::unix::fs::symlink(tmp.path().join("real").join("root"), &via).expect("symlink");
        let through = via.join(CRI_SANDBOXES_DIR).join(SB).join("resolv.conf");
        assert!(real.join("resolv.conf").exists() && through.exists());
        // A file others may write.
        let loose = sandbox_dir(&tmp.path().join("loose"), SB).join("hosts");
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o666)).expect("chmod");

        for (dest, source) in [
            ("/etc/hosts", dir.join("hosts")),
            ("/etc/hostname", dir.join("hostname")),
            ("/etc/resolv.conf", through),
            ("/etc/hosts", loose),
        ] {
            let s = spec(SB, vec![bind(dest, &source)]);
            assert!(
                sandbox_files(&s).is_empty(),
                "{} was trusted",
                source.display()
            );
        }
        // The untouched file of that directory still passes.
        let s = spec(SB, vec![bind("/etc/resolv.conf", &dir.join("resolv.conf"))]);
        assert_eq!(sandbox_files(&s), vec![dir.join("resolv.conf")]);
    }
}
