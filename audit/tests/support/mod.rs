//! Shared by the real-runsc test and the openat storm benchmark: finding
//! runsc, building a busybox bundle, the default plan's trace session,
//! cleaning up a container.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Path::new(name).is_file().then(|| PathBuf::from(name));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// The JSON for `runsc --pod-init-config`: the default plan's categories (process, file,
/// network) as far as this runsc supports them, sending to the sink at `sock`.
pub fn default_session(runsc: &Path, sock: &Path) -> Result<String, String> {
    use safehouse_audit::session::{PodInitConfig, SessionOptions, TraceCategory, TraceMetadata};
    let meta = std::process::Command::new(runsc)
        .args(["trace", "metadata"])
        .output()
        .map_err(|e| e.to_string())?;
    let metadata =
        TraceMetadata::parse(&String::from_utf8_lossy(&meta.stdout)).map_err(|e| e.to_string())?;
    PodInitConfig::new(
        &[
            TraceCategory::Process,
            TraceCategory::File,
            TraceCategory::Network,
        ],
        sock,
        &metadata,
        &SessionOptions::default(),
    )
    .map(|c| c.to_json())
    .map_err(|e| e.to_string())
}

/// A bundle whose rootfs holds busybox and a few applet links.
pub fn make_bundle(runsc: &Path, dir: &Path, args: &[&str]) -> Result<PathBuf, String> {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for sub in ["bin", "tmp", "proc", "dev", "sys", "etc"] {
        std::fs::create_dir_all(rootfs.join(sub)).map_err(|e| e.to_string())?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).map_err(|e| e.to_string())?;
    for applet in ["sh", "cat", "echo", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .map_err(|e| e.to_string())?;
    }
    let out = std::process::Command::new(runsc)
        .arg("spec")
        .current_dir(&bundle)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "runsc spec: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let mut spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["terminal"] = false.into();
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    spec["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
    std::fs::write(&path, spec.to_string()).map_err(|e| e.to_string())?;
    Ok(bundle)
}

/// Removes whatever is left of the container (normally nothing) and its root.
pub fn cleanup(runsc: &Path, root: &Path, id: &str) {
    let _ = std::process::Command::new(runsc)
        .arg(format!("--root={}", root.display()))
        .args(["delete", "--force", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(root);
}
