//! What a sandbox's audit checks: the executables its policy allows (`process.tools`), judged
//! by the file an exec resolves to inside the container's root.

use std::path::{Path, PathBuf};

use safehouse_audit::AuditEvent;
use safehouse_policy::{CompiledPolicy, ViolationAction};

/// What a sandbox's audit needs from its policy.
#[derive(Debug, Clone)]
pub struct AuditRules {
    /// Executables the agent may run; empty = unrestricted.
    pub tools: Vec<PathBuf>,
    /// Kill the sandbox on a violation, or only record it.
    pub on_violation: ViolationAction,
    /// The init process's executable as the container resolves it (the `container/start`
    /// point reports only argv).
    pub init_binary: Option<String>,
}

impl AuditRules {
    /// From a compiled policy; each tool is also allowed under the path its symlinks resolve to
    /// inside `rootfs` (gVisor reports the resolved executable).
    pub fn from_policy(
        compiled: &CompiledPolicy,
        rootfs: &Path,
        spec: &serde_json::Value,
    ) -> AuditRules {
        let mut tools = compiled.audit_plan.tools.clone();
        for t in &compiled.audit_plan.tools {
            if let Some(resolved) = resolve_in_root(rootfs, t) {
                if !tools.contains(&resolved) {
                    tools.push(resolved);
                }
            }
        }
        AuditRules {
            tools,
            on_violation: compiled.audit_plan.on_violation,
            init_binary: init_binary(rootfs, spec),
        }
    }

    /// The executable an exec event ran, if the policy does not allow it.
    pub fn offending_binary(&self, event: &AuditEvent) -> Option<String> {
        let reported = event.executed_binary()?;
        // container/start reports the spec's argv[0] ("sh"), not the file that runs.
        let binary = match &event.point {
            Some(point) if point == "container/start" => {
                self.init_binary.as_deref().unwrap_or(reported)
            }
            _ => reported,
        };
        (!self.allows(binary)).then(|| binary.to_string())
    }

    /// Whether an exec of `binary` (the resolved executable gVisor reports) is allowed. argv[0]
    /// is never consulted: the caller chooses it.
    pub fn allows(&self, binary: &str) -> bool {
        self.tools.is_empty() || self.tools.iter().any(|t| t.as_os_str() == binary)
    }
}

/// The init's executable: `process.args[0]`, searched in the spec's PATH inside `rootfs`.
fn init_binary(rootfs: &Path, spec: &serde_json::Value) -> Option<String> {
    let arg0 = spec["process"]["args"][0].as_str()?;
    if arg0.starts_with('/') {
        return resolve_in_root(rootfs, Path::new(arg0)).map(|p| p.display().to_string());
    }
    let path_var = spec["process"]["env"]
        .as_array()
        .and_then(|env| {
            env.iter()
                .filter_map(|e| e.as_str())
                .find_map(|e| e.strip_prefix("PATH="))
        })
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path_var
        .split(':')
        .filter(|d| d.starts_with('/'))
        .find_map(|d| resolve_in_root(rootfs, &Path::new(d).join(arg0)))
        .map(|p| p.display().to_string())
}

/// Resolves `path`'s symlinks as the container would see them, never leaving `root`.
pub fn resolve_in_root(root: &Path, path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut pending: Vec<std::ffi::OsString> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::from("/");
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let on_host = root.join(candidate.strip_prefix("/").ok()?);
        match std::fs::symlink_metadata(&on_host) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = std::fs::read_link(&on_host).ok()?;
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Ok(_) => resolved = candidate,
            Err(_) => return None,
        }
    }
    Some(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_match_the_resolved_path_only() {
        let rules = AuditRules {
            tools: vec![PathBuf::from("/bin/sh"), PathBuf::from("/usr/bin/python3")],
            on_violation: ViolationAction::Kill,
            init_binary: None,
        };
        assert!(rules.allows("/usr/bin/python3"));
        assert!(!rules.allows("/bin/busybox"));
        assert!(!rules.allows("/tmp/evil"));
        let open = AuditRules {
            tools: vec![],
            on_violation: ViolationAction::Record,
            init_binary: None,
        };
        assert!(open.allows("/anything"));

        // The init is judged by the file it resolves to, not the argv[0] gVisor reports.
        let rules = AuditRules {
            tools: vec![PathBuf::from("/bin/busybox")],
            on_violation: ViolationAction::Kill,
            init_binary: Some("/bin/busybox".into()),
        };
        let mut start = AuditEvent {
            category: safehouse_audit::Category::Process,
            action: safehouse_audit::Action::Exec,
            point: Some("container/start".into()),
            process: Some(safehouse_audit::ProcessInfo {
                binary: Some(safehouse_audit::BinaryInfo {
                    path: "sh".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(rules.offending_binary(&start), None);
        start.point = Some("sentry/execve".into());
        assert_eq!(rules.offending_binary(&start).as_deref(), Some("sh"));
    }

    #[test]
    fn symlinks_resolve_inside_the_root_only() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("bin")).expect("mkdir");
        std::fs::create_dir_all(r.join("usr/bin")).expect("mkdir");
        std::fs::write(r.join("bin/busybox"), b"").expect("write");
        std::os::unix::fs::symlink("busybox", r.join("bin/sh")).expect("symlink");
        std::os::unix::fs::symlink("/bin/busybox", r.join("usr/bin/env")).expect("symlink");
        std::os::unix::fs::symlink("../../../../../etc/shadow", r.join("usr/bin/escape"))
            .expect("symlink");
        assert_eq!(
            resolve_in_root(r, Path::new("/bin/sh")),
            Some(PathBuf::from("/bin/busybox"))
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/usr/bin/env")),
            Some(PathBuf::from("/bin/busybox"))
        );
        // ".." stops at the container's root: the host's /etc/shadow is never looked at.
        assert_eq!(resolve_in_root(r, Path::new("/usr/bin/escape")), None);
        assert_eq!(resolve_in_root(r, Path::new("/missing")), None);
        std::os::unix::fs::symlink("loop", r.join("loop")).expect("symlink");
        assert_eq!(resolve_in_root(r, Path::new("/loop")), None);

        let spec = serde_json::json!({"process": {"args": ["sh", "-c", "x"], "env": ["PATH=/usr/bin:/bin"]}});
        assert_eq!(init_binary(r, &spec).as_deref(), Some("/bin/busybox"));
        let spec = serde_json::json!({"process": {"args": ["nope"]}});
        assert_eq!(init_binary(r, &spec), None);
    }
}
