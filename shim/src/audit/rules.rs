//! What a container's audit checks: the executables its policy allows (`process.tools`),
//! judged by what was invoked: the file an exec resolves to inside the container's root *and*
//! the name it was invoked under. A multi-call binary (busybox) runs the program its name
//! selects, so `/bin/cat` is not `/bin/sh` even when both are the same file: the name an exec
//! gives its program (`argv[0]`, which also covers symlinks and `exec -a`) must be the name of
//! a listed tool that resolves to that file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safehouse_audit::event::{PolicyRef, LOADER_VARIABLES};
use safehouse_audit::AuditEvent;
use safehouse_policy::{CompiledPolicy, ViolationAction};

/// What one container's audit needs from its policy.
#[derive(Debug, Clone)]
pub struct AuditRules {
    /// The policy, as its events are labelled.
    pub policy: Arc<PolicyRef>,
    /// Executables the agent may run, as listed; empty = unrestricted.
    pub tools: Vec<PathBuf>,
    /// Each path a listed tool is known by (as listed, as resolved): the file it leads to.
    files: HashMap<String, String>,
    /// For each such file: the names it may be invoked under.
    names: HashMap<String, Vec<String>>,
    /// Kill the sandbox on a violation, or only record it.
    pub on_violation: ViolationAction,
    /// Whether its process events are written (the sandbox's session may record them for a
    /// pod member whose policy does).
    pub records_process: bool,
    /// The init process's executable as the container resolves it (the `container/start`
    /// point reports only argv).
    pub init_binary: Option<String>,
    /// The loader variables ([`LOADER_VARIABLES`]) the container's spec sets (its image's or
    /// its pod's environment): an exec may carry these, with these values, and no others.
    pub loader_env: HashMap<String, String>,
}

impl AuditRules {
    /// From a compiled policy: each tool is allowed as the file its symlinks resolve to inside
    /// `rootfs` (gVisor reports the resolved executable), under the tool's own name.
    pub fn from_policy(
        compiled: &CompiledPolicy,
        rootfs: &Path,
        spec: &serde_json::Value,
    ) -> AuditRules {
        let mut rules = AuditRules::new(
            compiled.audit_plan.tools.clone(),
            compiled.audit_plan.on_violation,
            init_binary(rootfs, spec),
            |t| resolve_in_root(rootfs, t),
        );
        rules.loader_env = process_loader_env(&spec["process"]);
        rules.records_process = compiled
            .audit_plan
            .record
            .contains(&safehouse_policy::AuditCategory::Process);
        rules.policy = Arc::new(PolicyRef {
            changes: None,
            digest: Some(compiled.digest.clone()),
            name: compiled.name.clone(),
        });
        rules
    }

    /// Rules for `tools`, each resolved by `resolve` (None: taken as it is).
    pub fn new(
        tools: Vec<PathBuf>,
        on_violation: ViolationAction,
        init_binary: Option<String>,
        resolve: impl Fn(&Path) -> Option<PathBuf>,
    ) -> AuditRules {
        // Every path a listed tool is known by (as listed, and as resolved) leads to one file;
        // the names that file may run under are those of every listed tool leading to it.
        let mut files: HashMap<String, String> = HashMap::new();
        let mut names: HashMap<String, Vec<String>> = HashMap::new();
        for tool in &tools {
            let Some(name) = tool.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let listed = tool.display().to_string();
            let file = resolve(tool).map_or_else(|| listed.clone(), |p| p.display().to_string());
            files.insert(listed, file.clone());
            files.insert(file.clone(), file.clone());
            let entry = names.entry(file).or_default();
            if !entry.iter().any(|n| n == name) {
                entry.push(name.to_owned());
            }
        }
        AuditRules {
            policy: Arc::default(),
            tools,
            files,
            names,
            on_violation,
            records_process: true,
            init_binary,
            loader_env: HashMap::new(),
        }
    }

    /// Whether the policy restricts what may run.
    pub fn restricts(&self) -> bool {
        !self.tools.is_empty()
    }

    /// Why an exec event breaks the policy, if it does.
    pub fn offense(&self, event: &AuditEvent) -> Option<String> {
        if !self.restricts() {
            return None;
        }
        let reported = event.executed_binary()?;
        let argv0 = event
            .process
            .as_ref()
            .and_then(|p| p.argv.as_ref())
            .and_then(|a| a.first())
            .map(String::as_str);
        // container/start reports the spec's argv[0] ("sh"), not the file that runs.
        let binary = match &event.point {
            Some(point) if point == "container/start" => {
                self.init_binary.as_deref().unwrap_or(reported)
            }
            _ => reported,
        };
        self.refuse(binary, argv0)
            .or_else(|| self.refuse_loader_env(binary, event))
    }

    /// Why an exec's loader variables break the policy: a listed dynamic tool run with
    /// `LD_PRELOAD` (or `LD_AUDIT`, `LD_LIBRARY_PATH`, `GCONV_PATH`) set to anything the
    /// container's spec does not set maps code from a file of the agent's choosing, and no
    /// mount stops that mapping on a runsc that checks `noexec` on `execve` only.
    fn refuse_loader_env(&self, binary: &str, event: &AuditEvent) -> Option<String> {
        let env = event.process.as_ref()?.loader_env.as_ref()?;
        let (name, value) = foreign_loader_var(&self.loader_env, env)?;
        Some(format!(
            "exec of {binary} with {name}={value:?}: the loader would map code from a file the tools list does not name (the container's own environment sets {})",
            self.loader_env
                .get(name)
                .map_or_else(|| format!("no {name}"), |v| format!("{name}={v:?}"))
        ))
    }

    /// Why running `binary` (the resolved executable) under the name `argv0` is not allowed.
    pub fn refuse(&self, binary: &str, argv0: Option<&str>) -> Option<String> {
        if !self.restricts() {
            return None;
        }
        // With the tools bound by construction, gVisor reports the listed path (`/bin/sh`),
        // otherwise the resolved file (`/bin/busybox`): either leads to the same file.
        let file = self.files.get(binary).map_or(binary, String::as_str);
        let Some(names) = self.names.get(file) else {
            return Some(format!(
                "exec of {binary}, which is not in the policy's tools list"
            ));
        };
        let invoked = argv0
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or_default();
        if names.iter().any(|n| n == invoked) {
            return None;
        }
        Some(format!(
            "exec of {binary} as {invoked:?}: the policy's tools list allows that file only as {} (a multi-call binary runs the program its name selects)",
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// An OCI process's `env` as (name, value) pairs.
fn process_env(process: &serde_json::Value) -> impl Iterator<Item = (&str, &str)> {
    process["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str()?.split_once('='))
}

/// The loader variables ([`LOADER_VARIABLES`]) an OCI process's `env` sets.
pub fn process_loader_env(process: &serde_json::Value) -> HashMap<String, String> {
    process_env(process)
        .filter(|(name, _)| LOADER_VARIABLES.contains(name))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The first (by name) of the loader variables `asked` sets that `own` (the container spec's)
/// does not set to the same value: what an exec may not bring, at Exec and on the stream.
pub fn foreign_loader_var<'a>(
    own: &HashMap<String, String>,
    asked: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Option<(&'a String, &'a String)> {
    asked
        .into_iter()
        .filter(|(name, value)| own.get(*name) != Some(*value))
        .min_by_key(|(name, _)| *name)
}

/// The init's executable: `process.args[0]`, searched in the spec's PATH inside `rootfs`.
fn init_binary(rootfs: &Path, spec: &serde_json::Value) -> Option<String> {
    let arg0 = spec["process"]["args"][0].as_str()?;
    if arg0.starts_with('/') {
        return resolve_in_root(rootfs, Path::new(arg0)).map(|p| p.display().to_string());
    }
    let path_var = process_env(&spec["process"])
        .find_map(|(name, value)| (name == "PATH").then_some(value))
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

    fn busybox() -> AuditRules {
        // /bin/sh and /bin/echo are links to /bin/busybox; python3 is a file of its own.
        AuditRules::new(
            vec![
                "/bin/sh".into(),
                "/bin/echo".into(),
                "/usr/bin/python3".into(),
            ],
            ViolationAction::Kill,
            Some("/bin/busybox".into()),
            |t| match t.to_str() {
                Some("/bin/sh" | "/bin/echo") => Some("/bin/busybox".into()),
                _ => None,
            },
        )
    }

    fn exec(point: &str, binary: &str, argv0: &str) -> AuditEvent {
        AuditEvent {
            category: safehouse_audit::Category::Process,
            action: safehouse_audit::Action::Exec,
            point: Some(point.to_owned().into()),
            process: Some(safehouse_audit::ProcessInfo {
                argv: Some(vec![argv0.into()]),
                binary: Some(safehouse_audit::BinaryInfo {
                    path: binary.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_loader_env(mut e: AuditEvent, vars: &[(&str, &str)]) -> AuditEvent {
        if let Some(p) = e.process.as_mut() {
            p.loader_env = Some(
                vars.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
        }
        e
    }

    #[test]
    fn a_listed_tool_with_loader_variables_of_its_own_is_a_violation() {
        let mut rules = busybox();
        let python = exec("sentry/execve", "/usr/bin/python3", "python3");
        assert_eq!(rules.offense(&python), None);
        let preload = with_loader_env(python.clone(), &[("LD_PRELOAD", "/tmp/x.so")]);
        let why = rules.offense(&preload).expect("a violation");
        assert!(
            why.contains("LD_PRELOAD=\"/tmp/x.so\"") && why.contains("/usr/bin/python3"),
            "{why}"
        );
        // What the container's own spec sets (an image's LD_LIBRARY_PATH) stands, with that
        // value only.
        rules.loader_env = process_loader_env(&serde_json::json!({"env": [
            "PATH=/bin", "LD_LIBRARY_PATH=/opt/lib", "LD_PRELOADX=1"
        ]}));
        assert_eq!(rules.loader_env.len(), 1);
        let image = with_loader_env(python.clone(), &[("LD_LIBRARY_PATH", "/opt/lib")]);
        assert_eq!(rules.offense(&image), None);
        let changed = with_loader_env(python, &[("LD_LIBRARY_PATH", "/tmp:/opt/lib")]);
        assert!(rules
            .offense(&changed)
            .is_some_and(|w| w.contains("/opt/lib")));
        // Without tools nothing is checked.
        let open = AuditRules::new(Vec::new(), ViolationAction::Kill, None, |_| None);
        assert_eq!(open.offense(&preload), None);
    }

    #[test]
    fn a_tool_is_its_file_under_its_own_name() {
        let rules = busybox();
        assert_eq!(rules.refuse("/usr/bin/python3", Some("python3")), None);
        assert_eq!(
            rules.refuse("/usr/bin/python3", Some("/usr/bin/python3")),
            None
        );
        assert_eq!(rules.refuse("/bin/busybox", Some("sh")), None);
        assert_eq!(rules.refuse("/bin/busybox", Some("/bin/echo")), None);
        // Reported by its listed path (tools bound by construction): the same file, so both
        // listed names, and only those.
        assert_eq!(rules.refuse("/bin/sh", Some("echo")), None);
        assert_eq!(rules.refuse("/bin/echo", Some("sh")), None);
        assert!(rules.refuse("/bin/sh", Some("cat")).is_some());
        // Another file.
        let why = rules.refuse("/tmp/evil", Some("evil")).expect("refused");
        assert!(why.contains("not in the policy's tools list"), "{why}");
        // The same file under another name: busybox's cat applet, `exec -a`, `busybox cat`.
        for argv0 in ["cat", "/bin/cat", "busybox", "", "sh2"] {
            let why = rules
                .refuse("/bin/busybox", Some(argv0))
                .unwrap_or_else(|| panic!("{argv0:?} allowed"));
            assert!(why.contains("allows that file only as"), "{why}");
        }
        assert!(
            rules.refuse("/bin/busybox", None).is_some(),
            "no argv at all"
        );
        let open = AuditRules::new(vec![], ViolationAction::Record, None, |_| None);
        assert_eq!(open.refuse("/anything", Some("x")), None);
    }

    #[test]
    fn the_init_is_its_resolved_file_under_the_spec_name() {
        let rules = busybox();
        // container/start reports argv only; the init's file comes from the rules.
        assert_eq!(rules.offense(&exec("container/start", "sh", "sh")), None);
        assert!(rules
            .offense(&exec("container/start", "cat", "cat"))
            .is_some());
        assert!(rules.offense(&exec("sentry/execve", "sh", "sh")).is_some());
        assert_eq!(
            rules.offense(&exec("sentry/execve", "/bin/busybox", "echo")),
            None
        );
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
