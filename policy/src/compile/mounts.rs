//! Mounts: the spec's mounts are checked one by one (standard kernel filesystems pass, CRI's
//! own files are forced read-only, host paths the policy does not name are refused), then the
//! policy's zones are appended (scratch tmpfs, input and output binds).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};

use super::{refused, CompileContext, CompileError};
use crate::manifest::AgentPolicy;
use crate::paths::{depth, is_within, normalize};

/// Mount types that carry no host path and pass (with hardened options).
const KERNEL_FS: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// Destinations CRI always fills with files it manages; forced read-only.
const CRI_FILES: &[&str] = &[
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/dev/termination-log",
];
/// Destinations (and everything below) of service-account tokens; forced read-only.
const CRI_SECRET_DIRS: &[&str] = &[
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/run/secrets/kubernetes.io/serviceaccount",
];
/// Shared memory: stays writable, never executable.
const SHM: &str = "/dev/shm";

const NO_EXEC: &[&str] = &["nosuid", "nodev", "noexec"];

/// How a zone bind is mounted.
#[derive(Clone, Copy)]
enum Access {
    ReadOnly,
    ReadWrite,
}

/// A host path the policy names, with how it must be mounted.
struct NamedSource<'a> {
    source: &'a str,
    access: Access,
    exec: bool,
}

pub(super) fn confine(
    policy: &AgentPolicy,
    ctx: &CompileContext,
    spec: &mut Spec,
) -> Result<(), CompileError> {
    let fs = &policy.spec.filesystem;
    let zone_dests: Vec<&str> = fs
        .scratch
        .iter()
        .map(|z| z.path.as_str())
        .chain(fs.inputs.iter().map(|z| z.path.as_str()))
        .chain(fs.outputs.iter().map(|z| z.path.as_str()))
        .collect();
    let named: Vec<NamedSource> = fs
        .inputs
        .iter()
        .map(|z| NamedSource {
            source: &z.source,
            access: Access::ReadOnly,
            exec: z.exec,
        })
        .chain(fs.outputs.iter().map(|z| NamedSource {
            source: &z.source,
            access: Access::ReadWrite,
            exec: z.exec,
        }))
        .collect();

    let mounts = spec.mounts_mut().take().unwrap_or_default();
    let mut kept = Vec::with_capacity(mounts.len() + zone_dests.len());
    for (i, mut m) in mounts.into_iter().enumerate() {
        let dest = m.destination().to_string_lossy().into_owned();
        let field = |m: &Mount| match m.source() {
            Some(s) => format!("mounts[{i}] (destination {dest}, source {})", s.display()),
            None => format!("mounts[{i}] (destination {dest})"),
        };
        let Some(dest) = normalize(&dest) else {
            return Err(refused(
                policy,
                field(&m),
                format!(
                    "destination must be an absolute path without '..'; refused by policy {:?}",
                    policy.metadata.name
                ),
            ));
        };
        if zone_dests.contains(&&*dest) {
            // The policy's zone replaces whatever the spec put there.
            continue;
        }
        if is_bind(&m) {
            confine_bind(policy, ctx, &named, &dest, &mut m)
                .map_err(|reason| refused(policy, field(&m), reason))?;
        } else {
            let typ = m.typ().clone().unwrap_or_default();
            if !KERNEL_FS.contains(&typ.as_str()) {
                let reason = format!(
                    "mount type {typ:?} not allowed by policy {:?}",
                    policy.metadata.name
                );
                return Err(refused(policy, field(&m), reason));
            }
            let forced: &[&str] = match typ.as_str() {
                "sysfs" | "cgroup" | "cgroup2" => &["ro", "nosuid", "nodev", "noexec"],
                "devpts" => &["nosuid", "noexec"],
                _ => NO_EXEC,
            };
            set_options(&mut m, forced);
        }
        kept.push(m);
    }
    kept.extend(zone_mounts(policy));
    spec.set_mounts(Some(kept));
    Ok(())
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Checks one bind mount of the spec and hardens its options; `Err` is the refusal reason.
fn confine_bind(
    policy: &AgentPolicy,
    ctx: &CompileContext,
    named: &[NamedSource],
    dest: &str,
    m: &mut Mount,
) -> Result<(), String> {
    let name = &policy.metadata.name;
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let Some(source) = normalize(&source) else {
        return Err(format!(
            "bind mount source must be an absolute path without '..'; refused by policy {name:?}"
        ));
    };
    let cri_file = CRI_FILES.contains(&dest) || CRI_SECRET_DIRS.iter().any(|d| is_within(dest, d));
    if cri_file || dest == SHM {
        let trusted = ctx.cri_source_roots.is_empty()
            || ctx
                .cri_source_roots
                .iter()
                .any(|r| is_within(&source, &r.to_string_lossy()));
        if !trusted {
            return Err(format!(
                "bind mount at a CRI-managed path from a host path outside the runtime's state directories, refused by policy {name:?}"
            ));
        }
        if dest == SHM {
            set_options(m, NO_EXEC);
        } else {
            set_options(m, &["ro", "nosuid", "nodev", "noexec"]);
        }
        return Ok(());
    }
    if let Some(zone) = named.iter().find(|z| is_within(&source, z.source)) {
        let mut forced: Vec<&str> = match zone.access {
            Access::ReadOnly => vec!["ro", "nosuid", "nodev"],
            Access::ReadWrite => vec!["nosuid", "nodev"],
        };
        if !zone.exec {
            forced.push("noexec");
        }
        set_options(m, &forced);
        return Ok(());
    }
    Err(format!(
        "bind mount of a host path not named by policy {name:?}"
    ))
}

/// Adds each of `forced` that is missing, removing its opposite (`ro` removes `rw`, …).
fn set_options(m: &mut Mount, forced: &[&str]) {
    let opts = m.options_mut().get_or_insert_with(Vec::new);
    for f in forced {
        let opposite = match *f {
            "ro" => "rw",
            "noexec" => "exec",
            "nosuid" => "suid",
            "nodev" => "dev",
            _ => "",
        };
        opts.retain(|o| o != opposite);
        if !opts.iter().any(|o| o == f) {
            opts.push((*f).to_string());
        }
    }
}

/// The policy's zones as mounts, parents before children (by depth, then path).
fn zone_mounts(policy: &AgentPolicy) -> Vec<Mount> {
    let fs = &policy.spec.filesystem;
    let mut zones: Vec<(String, Mount)> = Vec::new();
    for z in &fs.scratch {
        let mut opts = vec!["rw".to_string()];
        opts.extend(flags(z.exec));
        opts.push("mode=1777".to_string());
        opts.push(format!("size={}", z.size.bytes()));
        zones.push((
            z.path.clone(),
            mount(&z.path, "tmpfs", Path::new("tmpfs"), opts),
        ));
    }
    for (zs, access) in [(&fs.inputs, "ro"), (&fs.outputs, "rw")] {
        for z in zs {
            let mut opts = vec!["rbind".to_string(), access.to_string()];
            opts.extend(flags(z.exec));
            opts.push("rprivate".to_string());
            zones.push((
                z.path.clone(),
                mount(&z.path, "bind", Path::new(&z.source), opts),
            ));
        }
    }
    zones.sort_by(|a, b| (depth(&a.0), &a.0).cmp(&(depth(&b.0), &b.0)));
    zones.into_iter().map(|(_, m)| m).collect()
}

fn flags(exec: bool) -> Vec<String> {
    let mut v = vec!["nosuid".to_string(), "nodev".to_string()];
    if !exec {
        v.push("noexec".to_string());
    }
    v
}

fn mount(dest: &str, typ: &str, source: &Path, options: Vec<String>) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.to_path_buf()));
    m.set_options(Some(options));
    m
}
