//! `process.tools` by construction: every mount the agent sees is `noexec`, the image's own
//! files too (the rootfs bound again over `/`, read-only and `noexec`), and only the listed
//! tools, with the ELF interpreters they need, sit on exec-allowed read-only binds of their
//! own. gVisor refuses `execve` of anything else with EACCES before it runs.
//!
//! Two halves: [`confine`] runs inside [`super::compile`] and needs only the policy (every
//! mount `noexec`, a `noexec` `/tmp` so runsc does not add an exec-allowed one of its own);
//! [`apply_layout`] adds the mounts that depend on the image's files, which the shim finds on
//! the host once the rootfs is mounted ([`ToolLayout`]). Both are pure.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSyscall, Mount, Spec};

use super::{refused, CompileError};
use crate::manifest::AgentPolicy;
use crate::paths::depth;

/// A directory of the image in which listed tools are symlinks (busybox's applets, say): the
/// shim builds a read-only view of it where each such tool is a regular file, so an exec bind
/// at the tool's path covers that name only, not every name resolving to the same file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowDir {
    /// The directory, as the container sees it (symlinks resolved).
    pub dir: PathBuf,
    /// The host directory holding the view.
    pub source: PathBuf,
}

/// A file the agent may run: a listed tool, its ELF interpreter, or a script's interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecFile {
    /// Where it is bound, as the container sees it.
    pub path: PathBuf,
    /// The host file.
    pub source: PathBuf,
}

/// What the shim found in the image for a policy's `process.tools`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolLayout {
    /// The container's root filesystem on the host.
    pub rootfs: PathBuf,
    /// Directories where symlinked tools were turned into files.
    pub shadowed: Vec<ShadowDir>,
    /// The exec-allowed binds.
    pub exec: Vec<ExecFile>,
}

const NOEXEC: &str = "noexec";

/// With `tools` set: every mount of the spec `noexec` (zones with `exec: true` included: a
/// place the agent can write and run from would make the list meaningless), and a `noexec`
/// tmpfs at `/tmp` unless the spec has a mount there (runsc otherwise mounts an exec-allowed,
/// writable tmpfs at `/tmp` itself).
pub(super) fn confine(policy: &AgentPolicy, spec: &mut Spec) {
    if policy.spec.process.tools.is_empty() {
        return;
    }
    let mut mounts = spec.mounts_mut().take().unwrap_or_default();
    for m in &mut mounts {
        force_noexec(m);
    }
    if !mounts.iter().any(|m| m.destination() == Path::new("/tmp")) {
        // Before the policy's zones, where a second compile (which keeps the spec's mounts
        // and appends the zones) would put it: compiling stays idempotent.
        let fs = &policy.spec.filesystem;
        let zone = |m: &Mount| {
            let d = m.destination();
            fs.scratch.iter().any(|z| Path::new(&z.path) == d)
                || fs.inputs.iter().any(|z| Path::new(&z.path) == d)
                || fs.outputs.iter().any(|z| Path::new(&z.path) == d)
        };
        let at = mounts.iter().position(zone).unwrap_or(mounts.len());
        mounts.insert(
            at,
            mount(
                Path::new("/tmp"),
                "tmpfs",
                Path::new("tmpfs"),
                &["rw", "nosuid", "nodev", NOEXEC, "mode=1777"],
            ),
        );
    }
    spec.set_mounts(Some(mounts));
    deny_anonymous_executables(spec);
}

/// Syscalls that make an executable file no mount can mark `noexec`: `memfd_create` gives a
/// file on the Sentry's internal memory filesystem, which `fexecve` (or `execve` of
/// `/proc/self/fd/N`) runs. With `tools` set they fail with EPERM, through a rule added to the
/// spec's seccomp profile (a profile allowing everything else when the spec has none). gVisor
/// applies it inside the sandbox when runsc runs with `--oci-seccomp`.
pub const ANONYMOUS_EXEC_SYSCALLS: &[&str] = &["memfd_create"];

/// EPERM, the error the denied syscalls return.
const EPERM: u32 = 1;

fn deny_anonymous_executables(spec: &mut Spec) {
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let mut seccomp = linux.seccomp().clone().unwrap_or_else(|| {
        let mut s = LinuxSeccomp::default();
        s.set_default_action(LinuxSeccompAction::ScmpActAllow);
        s
    });
    // The denial must win over any rule of the spec's profile that allows them: take them out
    // of every rule, then deny them in one rule of their own at the end (where a second
    // compile puts it again: compiling stays idempotent).
    let mut rules: Vec<LinuxSyscall> = seccomp.syscalls().clone().unwrap_or_default();
    for rule in &mut rules {
        let names: Vec<String> = rule
            .names()
            .iter()
            .filter(|n| !ANONYMOUS_EXEC_SYSCALLS.contains(&n.as_str()))
            .cloned()
            .collect();
        rule.set_names(names);
    }
    rules.retain(|r| !r.names().is_empty());
    let mut deny = LinuxSyscall::default();
    deny.set_names(
        ANONYMOUS_EXEC_SYSCALLS
            .iter()
            .map(|n| n.to_string())
            .collect(),
    );
    deny.set_action(LinuxSeccompAction::ScmpActErrno);
    deny.set_errno_ret(Some(EPERM));
    rules.push(deny);
    seccomp.set_syscalls(Some(rules));
    linux.set_seccomp(Some(seccomp));
}

/// Variables whose value names code for the dynamic loader to run inside a dynamic program
/// before the program itself: libraries to preload, audit libraries, `iconv` modules.
pub const LOADER_CODE_VARIABLES: &[&str] = &["LD_PRELOAD", "LD_AUDIT", "GCONV_PATH"];

/// Where runsc mounts file systems of its own when the spec has none there; `/dev/shm` and
/// `/tmp` are writable by the agent.
const RUNSC_MOUNTS: &[&str] = &["/dev", "/proc", "/sys", "/tmp"];

/// With `tools` set, the loader's environment may not bring code: a spec (the pod's `env`, an
/// image's `ENV`, `nerdctl run -e`) that sets [`LOADER_CODE_VARIABLES`], or a
/// `LD_LIBRARY_PATH` reaching outside the image's own files (an empty, relative or `..` entry,
/// or one inside a mount: a zone, a volume, `/tmp`, `/dev/shm`), is refused naming the
/// variable. Otherwise every listed dynamic tool would run whatever the agent later wrote
/// there, with no exec the list could refuse and no variable the stream would see as new.
pub(super) fn check_loader_env(
    policy: &AgentPolicy,
    env: &[String],
    mounts: &[Mount],
) -> Result<(), CompileError> {
    if policy.spec.process.tools.is_empty() {
        return Ok(());
    }
    for (i, entry) in env.iter().enumerate() {
        let Some((name, value)) = entry.split_once('=') else {
            continue;
        };
        let field = || format!("process.env[{i}] ({name})");
        if LOADER_CODE_VARIABLES.contains(&name) && !value.is_empty() {
            return Err(refused(
                policy,
                field(),
                format!(
                    "{name} makes the dynamic loader run the code it names inside every listed tool; \
                     refused by policy {:?}, which sets process.tools",
                    policy.metadata.name
                ),
            ));
        }
        if name == "LD_LIBRARY_PATH" {
            if let Some(why) = value
                .split([':', ';'])
                .find_map(|d| outside_image(d, mounts))
            {
                return Err(refused(
                    policy,
                    field(),
                    format!(
                        "{why}: the loader would take libraries from there into every listed tool; \
                         refused by policy {:?}, which sets process.tools",
                        policy.metadata.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Why a library directory is not one of the image's own, if it is not.
fn outside_image(dir: &str, mounts: &[Mount]) -> Option<String> {
    if dir.is_empty() {
        return Some("an empty entry (the loader reads it as the working directory)".into());
    }
    let path = Path::new(dir);
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Some(format!("{dir:?} is not an absolute path without '..'"));
    }
    let mounted = mounts
        .iter()
        .map(|m| m.destination().as_path())
        .chain(RUNSC_MOUNTS.iter().map(Path::new))
        .find(|d| *d != Path::new("/") && path.starts_with(d));
    mounted.map(|d| format!("{dir:?} lies in the mount at {}", d.display()))
}

fn force_noexec(m: &mut Mount) {
    let opts = m.options_mut().get_or_insert_with(Vec::new);
    opts.retain(|o| o != "exec");
    if !opts.iter().any(|o| o == NOEXEC) {
        opts.push(NOEXEC.to_string());
    }
}

/// The mounts that make `layout` hold, in the order they must be made: the rootfs over `/`
/// (read-only unless `root_readonly` is false), then the shadowed directories, parents first,
/// then whatever `existing` holds (the confined spec's mounts), then the exec binds, parents
/// first so a tool inside a shadowed directory lands on the view.
pub fn tool_mounts(layout: &ToolLayout, root_readonly: bool, existing: Vec<Mount>) -> Vec<Mount> {
    let access = if root_readonly { "ro" } else { "rw" };
    let view_opts = ["rbind", access, "nosuid", "nodev", NOEXEC, "rprivate"];
    let mut out =
        Vec::with_capacity(existing.len() + layout.shadowed.len() + layout.exec.len() + 1);
    let root_view = layout
        .shadowed
        .iter()
        .find(|s| s.dir == Path::new("/"))
        .map(|s| s.source.as_path())
        .unwrap_or(&layout.rootfs);
    out.push(mount(Path::new("/"), "bind", root_view, &view_opts));
    let mut shadowed: Vec<&ShadowDir> = layout
        .shadowed
        .iter()
        .filter(|s| s.dir != Path::new("/"))
        .collect();
    shadowed.sort_by_key(|s| key(&s.dir));
    shadowed.dedup_by(|a, b| a.dir == b.dir);
    for s in shadowed {
        out.push(mount(&s.dir, "bind", &s.source, &view_opts));
    }
    out.extend(
        existing
            .into_iter()
            .filter(|m| m.destination() != Path::new("/")),
    );
    let mut exec: Vec<&ExecFile> = layout.exec.iter().collect();
    exec.sort_by_key(|e| key(&e.path));
    exec.dedup_by(|a, b| a.path == b.path);
    for e in exec {
        out.push(mount(
            &e.path,
            "bind",
            &e.source,
            &["bind", "ro", "nosuid", "nodev", "rprivate"],
        ));
    }
    out
}

/// Puts `layout`'s mounts into a spec already confined by [`super::compile`].
pub fn apply_layout(spec: &mut Spec, layout: &ToolLayout) {
    let root_readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    let existing = spec.mounts_mut().take().unwrap_or_default();
    spec.set_mounts(Some(tool_mounts(layout, root_readonly, existing)));
}

fn key(p: &Path) -> (usize, String) {
    let s = p.to_string_lossy().into_owned();
    (depth(&s), s)
}

fn mount(dest: &Path, typ: &str, source: &Path, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(dest.to_path_buf());
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options.iter().map(|o| (*o).to_string()).collect()));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd_rules(spec: &Spec) -> Vec<(Vec<String>, LinuxSeccompAction, Option<u32>)> {
        let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        seccomp
            .syscalls()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.names().iter().any(|n| n == "memfd_create"))
            .map(|r| (r.names().clone(), r.action(), r.errno_ret()))
            .collect()
    }

    fn env(vars: &[&str]) -> Vec<String> {
        vars.iter().map(|v| v.to_string()).collect()
    }

    #[test]
    fn under_tools_the_loaders_environment_may_not_bring_code() {
        let mut policy = AgentPolicy::strict_default();
        policy.metadata.name = "agent".into();
        let zone = mount(Path::new("/output"), "bind", Path::new("/srv/out"), &["rw"]);
        let mounts = [zone];
        // Without tools nothing is checked.
        check_loader_env(&policy, &env(&["LD_PRELOAD=/output/x.so"]), &mounts).expect("no tools");

        policy.spec.process.tools = vec!["/usr/bin/python3".into()];
        let ok = env(&[
            "PATH=/usr/bin",
            "LD_LIBRARY_PATH=/usr/local/lib:/opt/cuda/lib64",
            "LD_PRELOAD=",
        ]);
        check_loader_env(&policy, &ok, &mounts).expect("the image's own directories");

        for (var, names) in [
            ("LD_PRELOAD=/output/x.so", "LD_PRELOAD"),
            ("LD_AUDIT=/usr/lib/libaudit.so", "LD_AUDIT"),
            ("GCONV_PATH=/tmp", "GCONV_PATH"),
            ("LD_LIBRARY_PATH=/usr/lib:/output/lib", "/output"),
            ("LD_LIBRARY_PATH=/tmp/lib", "/tmp"),
            ("LD_LIBRARY_PATH=/dev/shm", "/dev"),
            ("LD_LIBRARY_PATH=/usr/lib::/lib", "empty entry"),
            ("LD_LIBRARY_PATH=lib", "absolute"),
            ("LD_LIBRARY_PATH=/usr/lib/../../output", "absolute"),
            ("LD_LIBRARY_PATH=$ORIGIN/lib", "absolute"),
        ] {
            let err = check_loader_env(&policy, &env(&["PATH=/bin", var]), &mounts)
                .expect_err(var)
                .to_string();
            assert!(
                err.starts_with("process.env[1] (")
                    && err.contains(names)
                    && err.contains("policy \"agent\""),
                "{var}: {err}"
            );
        }
    }

    #[test]
    fn tools_deny_memfd_create_in_the_specs_seccomp_profile() {
        let mut policy = AgentPolicy::strict_default();
        policy.spec.process.tools = vec!["/bin/sh".into()];

        // No profile in the spec: one allowing everything but memfd_create.
        let mut spec = Spec::default();
        confine(&policy, &mut spec);
        let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActAllow);
        let deny = (
            vec!["memfd_create".to_string()],
            LinuxSeccompAction::ScmpActErrno,
            Some(1),
        );
        assert_eq!(memfd_rules(&spec), vec![deny.clone()]);

        // A profile that allows it (RuntimeDefault does): taken out of that rule, denied last.
        let mut spec = Spec::default();
        let mut allow = LinuxSyscall::default();
        allow.set_names(vec!["read".into(), "memfd_create".into()]);
        allow.set_action(LinuxSeccompAction::ScmpActAllow);
        let mut profile = LinuxSeccomp::default();
        profile.set_default_action(LinuxSeccompAction::ScmpActErrno);
        profile.set_syscalls(Some(vec![allow]));
        spec.linux_mut()
            .get_or_insert_with(Default::default)
            .set_seccomp(Some(profile));
        confine(&policy, &mut spec);
        let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
        let rules = seccomp.syscalls().clone().unwrap();
        assert_eq!(rules[0].names(), &vec!["read".to_string()]);
        assert_eq!(memfd_rules(&spec), vec![deny.clone()]);

        // Idempotent.
        let before = spec.clone();
        confine(&policy, &mut spec);
        assert_eq!(spec, before);

        // Without tools the profile is the spec's own.
        let mut spec = Spec::default();
        let mut unrestricted = policy.clone();
        unrestricted.spec.process.tools.clear();
        let before = spec.clone();
        confine(&unrestricted, &mut spec);
        assert_eq!(spec, before);
    }

    fn dests(ms: &[Mount]) -> Vec<String> {
        ms.iter()
            .map(|m| m.destination().display().to_string())
            .collect()
    }

    fn opts(m: &Mount) -> Vec<String> {
        m.options().clone().unwrap_or_default()
    }

    fn layout() -> ToolLayout {
        ToolLayout {
            rootfs: PathBuf::from("/b/rootfs"),
            shadowed: vec![ShadowDir {
                dir: PathBuf::from("/bin"),
                source: PathBuf::from("/b/.tools/view/0"),
            }],
            exec: vec![
                ExecFile {
                    path: PathBuf::from("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
                    source: PathBuf::from("/b/rootfs/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
                },
                ExecFile {
                    path: PathBuf::from("/bin/sh"),
                    source: PathBuf::from("/b/rootfs/bin/busybox"),
                },
                ExecFile {
                    path: PathBuf::from("/bin/sh"),
                    source: PathBuf::from("/b/rootfs/bin/busybox"),
                },
            ],
        }
    }

    #[test]
    fn root_view_first_then_shadows_then_spec_then_exec_binds() {
        let proc_mount = mount(Path::new("/proc"), "proc", Path::new("proc"), &["noexec"]);
        let stale_root = mount(Path::new("/"), "bind", Path::new("/elsewhere"), &["rbind"]);
        let out = tool_mounts(&layout(), true, vec![proc_mount, stale_root]);
        assert_eq!(
            dests(&out),
            [
                "/",
                "/bin",
                "/proc",
                "/bin/sh",
                "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
            ]
        );
        assert_eq!(out[0].source().as_deref(), Some(Path::new("/b/rootfs")));
        for view in &out[..2] {
            let o = opts(view);
            assert!(o.contains(&"noexec".to_string()), "{o:?}");
            assert!(o.contains(&"ro".to_string()), "{o:?}");
        }
        for bind in &out[3..] {
            let o = opts(bind);
            assert!(!o.iter().any(|x| x == "noexec"), "{o:?}");
            assert!(o.contains(&"ro".to_string()), "{o:?}");
            assert!(o.contains(&"nosuid".to_string()), "{o:?}");
        }
    }

    #[test]
    fn a_writable_root_stays_writable_and_a_shadowed_root_replaces_the_rootfs() {
        let mut l = layout();
        l.shadowed.push(ShadowDir {
            dir: PathBuf::from("/"),
            source: PathBuf::from("/b/.tools/view/1"),
        });
        let out = tool_mounts(&l, false, Vec::new());
        assert_eq!(
            out[0].source().as_deref(),
            Some(Path::new("/b/.tools/view/1"))
        );
        assert!(opts(&out[0]).contains(&"rw".to_string()));
        assert_eq!(
            out.iter()
                .filter(|m| m.destination() == Path::new("/"))
                .count(),
            1
        );
    }

    #[test]
    fn no_tools_found_still_makes_the_image_noexec() {
        let l = ToolLayout {
            rootfs: PathBuf::from("/r"),
            ..Default::default()
        };
        let out = tool_mounts(&l, true, Vec::new());
        assert_eq!(dests(&out), ["/"]);
        assert!(opts(&out[0]).contains(&"noexec".to_string()));
    }
}
