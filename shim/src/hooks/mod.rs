//! OCI hooks: which the shim runs itself, and the check that none comes from the image.
//!
//! runsc 20240729 runs `prestart` and `createRuntime` in `runsc create`, `poststart` in
//! `runsc start` and `poststop` in `runsc delete`, and skips `createContainer` and
//! `startContainer` ("running inside container namespace is not supported"). The shim takes
//! those two kinds out of the spec before runsc sees it (so no runsc, old or new, can run them a
//! second time) and runs them at the points the runtime spec gives: `createContainer` after
//! `runsc create` (after the createRuntime hooks), `startContainer` before `runsc start`. The
//! "container namespace" of a gVisor container is the Sentry's, where no host binary can run:
//! the shim runs these hooks on the host, in the sandbox's network namespace, with the hook
//! path resolved on the host (docs/nerdctl.md says why).
//!
//! Every hook runs on the host as root, outside gVisor, so hooks belong to the operator and the
//! container engine (nerdctl, CDI, NRI), never to the agent: a hook whose binary lies in the
//! container's root filesystem (bundle, rootfs, snapshot layers) fails Create.
//! Nothing here knows about the task service or runsc.

mod run;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Result, ShimError};

pub use run::{audit_event, run};

/// Every hook kind of the runtime spec, in lifecycle order.
pub const ALL_KINDS: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// The hook kinds runsc skips, which the shim runs.
pub const SHIM_KINDS: [&str; 2] = ["createContainer", "startContainer"];

/// How much of a failed hook's stderr goes into the error.
const STDERR_TAIL: usize = 512;

/// One hook as the spec gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Absolute host path of the binary.
    pub path: PathBuf,
    /// argv, `args[0]` included (the path when the spec gives none).
    pub args: Vec<String>,
    /// The hook's whole environment.
    pub env: Vec<String>,
    /// Kill the hook and fail after this long.
    pub timeout: Option<Duration>,
}

/// The hooks the shim runs itself, taken out of a container's spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShimHooks {
    /// Run after `runsc create`.
    pub create_container: Vec<Hook>,
    /// Run before `runsc start`.
    pub start_container: Vec<Hook>,
}

/// The container state a hook reads on stdin (runtime spec, runtime.md "State").
#[derive(Debug, Clone)]
pub struct HookState {
    /// Container id.
    pub id: String,
    /// `created`, `running` or `stopped`.
    pub status: &'static str,
    /// The sandbox process (runsc's container pid).
    pub pid: u32,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The spec's annotations.
    pub annotations: Value,
}

impl HookState {
    /// The JSON the spec defines.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": self.status,
            "pid": self.pid,
            "bundle": self.bundle.display().to_string(),
        });
        if self.annotations.as_object().is_some_and(|a| !a.is_empty()) {
            v["annotations"] = self.annotations.clone();
        }
        v
    }
}

fn parse_hook(kind: &str, i: usize, v: &Value) -> Result<Hook> {
    let bad = |what: String| ShimError::InvalidArgument(format!("hooks.{kind}[{i}]: {what}"));
    let path = v["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("no path".into()))?;
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(bad(format!(
            "path {} is not absolute (hooks run on the host and need a host path)",
            path.display()
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        match &v[key] {
            Value::Null => Ok(Vec::new()),
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| bad(format!("{key} must be strings")))
                })
                .collect(),
            _ => Err(bad(format!("{key} must be a list of strings"))),
        }
    };
    let mut args = strings("args")?;
    if args.is_empty() {
        args.push(path.display().to_string());
    }
    let timeout = match &v["timeout"] {
        Value::Null => None,
        t => match t.as_i64() {
            Some(s) if s > 0 => Some(Duration::from_secs(s as u64)),
            _ => {
                return Err(bad(format!(
                    "timeout {t} must be a positive number of seconds"
                )))
            }
        },
    };
    Ok(Hook {
        path,
        args,
        env: strings("env")?,
        timeout,
    })
}

/// Every hook of the spec, by kind (validated: absolute path, string args/env, timeout > 0).
pub fn all_hooks(spec: &Value) -> Result<Vec<(&'static str, Hook)>> {
    let mut out = Vec::new();
    let hooks = &spec["hooks"];
    if hooks.is_null() {
        return Ok(out);
    }
    if !hooks.is_object() {
        return Err(ShimError::InvalidArgument("hooks must be an object".into()));
    }
    for kind in ALL_KINDS {
        match &hooks[kind] {
            Value::Null => {}
            Value::Array(list) => {
                for (i, h) in list.iter().enumerate() {
                    out.push((kind, parse_hook(kind, i, h)?));
                }
            }
            _ => {
                return Err(ShimError::InvalidArgument(format!(
                    "hooks.{kind} must be a list"
                )))
            }
        }
    }
    Ok(out)
}

/// Takes the kinds the shim runs out of `spec` (runsc must never see them) and returns them.
pub fn take_shim_hooks(spec: &mut Value) -> Result<ShimHooks> {
    let mut taken = ShimHooks::default();
    for (kind, hook) in all_hooks(spec)? {
        match kind {
            "createContainer" => taken.create_container.push(hook),
            "startContainer" => taken.start_container.push(hook),
            _ => {}
        }
    }
    if let Some(hooks) = spec.get_mut("hooks").and_then(Value::as_object_mut) {
        for kind in SHIM_KINDS {
            hooks.remove(kind);
        }
    }
    Ok(taken)
}

/// The directories holding the container's own files: the bundle, the spec's root, and the
/// rootfs mounts' sources and overlay layers. A hook binary must lie outside all of them.
pub fn container_dirs(
    bundle: &Path,
    spec: &Value,
    rootfs: &[containerd_shim_protos::api::Mount],
) -> Vec<PathBuf> {
    let mut dirs = vec![bundle.to_path_buf()];
    if let Some(root) = spec["root"]["path"].as_str() {
        dirs.push(bundle.join(root));
    }
    for m in rootfs {
        if !m.source.is_empty() && m.source.starts_with('/') {
            dirs.push(PathBuf::from(&m.source));
        }
        for opt in &m.options {
            for key in ["lowerdir=", "upperdir=", "workdir="] {
                if let Some(list) = opt.strip_prefix(key) {
                    dirs.extend(list.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
                }
            }
        }
    }
    dirs.into_iter()
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d))
        .collect()
}

/// Fails when a hook's binary lies inside the container's own files (the image could then
/// choose code the host runs as root).
pub fn check_origin(hooks: &[(&'static str, Hook)], container_dirs: &[PathBuf]) -> Result<()> {
    for (kind, hook) in hooks {
        let real = std::fs::canonicalize(&hook.path).unwrap_or_else(|_| hook.path.clone());
        if let Some(dir) = container_dirs
            .iter()
            .find(|d| real.starts_with(d) || hook.path.starts_with(d))
        {
            return Err(ShimError::InvalidArgument(format!(
                "{kind} hook {}: lies in the container's own files ({}); hooks run on the host as root, so they must be host binaries, never the image's",
                hook.path.display(),
                dir.display()
            )));
        }
    }
    Ok(())
}

/// One hook the shim ran, for the audit stream.
/// A shell script the hook tests run.
#[cfg(test)]
pub(crate) fn test_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_script as script;

    #[test]
    fn takes_only_the_kinds_runsc_skips() {
        let mut spec = json!({"hooks": {
            "createRuntime": [{"path": "/bin/true"}],
            "createContainer": [{"path": "/bin/cc", "args": ["cc", "x"], "env": ["A=1"], "timeout": 3}],
            "startContainer": [{"path": "/bin/sc"}],
            "poststop": [{"path": "/bin/true"}]
        }});
        let taken = take_shim_hooks(&mut spec).expect("valid");
        assert_eq!(taken.create_container.len(), 1);
        assert_eq!(taken.create_container[0].args, vec!["cc", "x"]);
        assert_eq!(taken.create_container[0].env, vec!["A=1"]);
        assert_eq!(
            taken.create_container[0].timeout,
            Some(Duration::from_secs(3))
        );
        assert_eq!(taken.start_container[0].args, vec!["/bin/sc"]);
        let left: Vec<&String> = spec["hooks"].as_object().expect("obj").keys().collect();
        assert_eq!(left, vec!["createRuntime", "poststop"]);
    }

    #[test]
    fn bad_hooks_are_named() {
        for (spec, needle) in [
            (
                json!({"hooks": {"prestart": [{"path": "rel/hook"}]}}),
                "not absolute",
            ),
            (
                json!({"hooks": {"poststart": [{}]}}),
                "hooks.poststart[0]: no path",
            ),
            (
                json!({"hooks": {"createContainer": [{"path": "/x", "timeout": 0}]}}),
                "positive",
            ),
            (
                json!({"hooks": {"poststop": {"path": "/x"}}}),
                "must be a list",
            ),
            (
                json!({"hooks": {"prestart": [{"path": "/x", "args": [1]}]}}),
                "strings",
            ),
        ] {
            let e = all_hooks(&spec).expect_err("must fail").to_string();
            assert!(e.contains(needle), "{e} should contain {needle}");
        }
    }

    #[test]
    fn a_hook_from_the_image_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let bundle = dir.path().join("bundle");
        let layer = dir.path().join("layer");
        std::fs::create_dir_all(bundle.join("rootfs/bin")).expect("mkdir");
        std::fs::create_dir_all(&layer).expect("mkdir");
        let inside = script(&bundle.join("rootfs/bin"), "evil", "true");
        let in_layer = script(&layer, "evil", "true");
        let host = script(dir.path(), "ok", "true");
        // A host path that is a symlink into the rootfs is the rootfs.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&inside, &link).expect("symlink");
        let spec = json!({"root": {"path": "rootfs"}});
        let mount = containerd_shim_protos::api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}:/nonexistent", layer.display())],
            ..Default::default()
        };
        let dirs = container_dirs(&bundle, &spec, &[mount]);
        let hook = |p: &Path| Hook {
            path: p.to_path_buf(),
            args: vec!["h".into()],
            env: vec![],
            timeout: None,
        };
        for bad in [&inside, &in_layer, &link] {
            let e = check_origin(&[("createRuntime", hook(bad))], &dirs)
                .expect_err("must refuse")
                .to_string();
            assert!(e.contains("never the image's"), "{e}");
        }
        check_origin(&[("createRuntime", hook(&host))], &dirs).expect("host hook allowed");
    }
}
