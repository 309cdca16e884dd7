//! runsc's own state files under its root, for a container whose sandbox is already gone.
//!
//! runsc (20221219, 20240729) keeps, per container, `ID_sandbox:SANDBOX.state` and
//! `ID_sandbox:SANDBOX.lock` under `--root`, and per sandbox its control socket
//! `runsc-SANDBOX.sock`. When the sandbox process has exited, `runsc delete` only removes those
//! (after a CLI start-up of its own, and a wait on the dead sandbox): the shim removes them
//! itself instead, and keeps `runsc delete` for sandboxes that still run or have hooks to run.

use std::path::Path;

/// Removes the state files of container `id` (and the control socket of the sandbox it was the
/// root of). True when none is left.
pub fn remove_container_files(root: &Path, id: &str) -> bool {
    if id.is_empty() || id.contains('/') {
        return false;
    }
    let prefix = format!("{id}_sandbox:");
    let Ok(entries) = std::fs::read_dir(root) else {
        return true;
    };
    let mut clean = true;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = (name.starts_with(&prefix)
            && (name.ends_with(".state") || name.ends_with(".lock")))
            || name == format!("runsc-{id}.sock");
        if ours {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("remove runsc state {}: {e}", entry.path().display());
                    clean = false;
                }
            }
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_that_containers_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        for f in [
            "pod_sandbox:pod.state",
            "pod_sandbox:pod.lock",
            "runsc-pod.sock",
            "app_sandbox:pod.state",
            "app_sandbox:pod.lock",
            "pod2_sandbox:pod2.state",
            "podx_sandbox:podx.state",
        ] {
            std::fs::write(r.join(f), b"").expect("write");
        }
        assert!(remove_container_files(r, "pod"));
        let mut left: Vec<String> = std::fs::read_dir(r)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "app_sandbox:pod.lock",
                "app_sandbox:pod.state",
                "pod2_sandbox:pod2.state",
                "podx_sandbox:podx.state"
            ]
        );
        assert!(!remove_container_files(r, "../etc"), "never a path");
        assert!(remove_container_files(&r.join("missing"), "pod"));
    }
}
