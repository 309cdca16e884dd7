//! The container process: user and groups, capabilities, no_new_privs, RLIMIT_NOFILE and
//! RLIMIT_NPROC.

use std::collections::HashSet;

use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Spec,
};

use super::{refused, CompileError, Narrowing};
use crate::manifest::{AgentPolicy, GroupsBound, IdBound, UserBound, NOBODY_ID, NONROOT_USER};
use crate::validate::{capability_name, parse_capability};

pub(super) fn confine(
    policy: &AgentPolicy,
    spec: &mut Spec,
    narrowed: &mut Vec<Narrowing>,
) -> Result<(), CompileError> {
    let p = &policy.spec.process;
    let bound = p.user_bound().ok_or_else(|| {
        refused(
            policy,
            "process.user",
            "the policy's user is neither a numeric uid:gid nor \"nonroot\"",
        )
    })?;
    let infra = is_infra(spec);
    let process = spec.process_mut().as_mut().ok_or_else(|| {
        refused(
            policy,
            "process",
            format!("is missing; refused by policy {:?}", policy.metadata.name),
        )
    })?;

    let user = process.user_mut();
    let asked = (user.uid(), user.gid());
    let asked_groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    let (uid, gid, groups) = identity(policy, bound, asked, &asked_groups, infra)?;
    if (uid, gid) != asked {
        narrowed.push(Narrowing {
            field: "process.user".into(),
            detail: format!(
                "uid:gid {}:{} narrowed to {uid}:{gid} (user bound {bound})",
                asked.0, asked.1
            ),
        });
    }
    let dropped: Vec<String> = asked_groups
        .iter()
        .filter(|g| !groups.contains(g))
        .map(u32::to_string)
        .collect();
    if !dropped.is_empty() {
        narrowed.push(Narrowing {
            field: "process.user.additionalGids".into(),
            detail: format!(
                "supplementary groups {} dropped (user bound {bound})",
                dropped.join(",")
            ),
        });
    }
    user.set_uid(uid);
    user.set_gid(gid);
    user.set_additional_gids((!groups.is_empty()).then_some(groups));
    user.set_username(None);

    let allowed: Capabilities = p
        .capabilities
        .iter()
        .filter_map(|c| parse_capability(c))
        .collect::<HashSet<_>>();
    let (caps, removed) = narrow_capabilities(process.capabilities().as_ref(), &allowed);
    if !removed.is_empty() {
        narrowed.push(Narrowing {
            field: "process.capabilities".into(),
            detail: format!("{} dropped: not kept by the policy", removed.join(", ")),
        });
    }
    process.set_capabilities(Some(caps));

    let nnp = p.no_new_privileges || process.no_new_privileges().unwrap_or(false);
    process.set_no_new_privileges(Some(nnp));

    let mut rlimits: Vec<PosixRlimit> = process.rlimits().clone().unwrap_or_default();
    // Open files, and processes: gVisor's Sentry enforces RLIMIT_NPROC, so a fork past the
    // policy's `pids` fails inside the sandbox (EAGAIN) instead of hitting the host cgroup,
    // whose pids limit also counts gVisor's own threads (see `linux::SANDBOX_PIDS_HEADROOM`).
    tighten_rlimit(
        policy,
        &mut rlimits,
        PosixRlimitType::RlimitNofile,
        u64::from(policy.spec.resources.nofile),
    )?;
    tighten_rlimit(
        policy,
        &mut rlimits,
        PosixRlimitType::RlimitNproc,
        u64::from(policy.spec.resources.pids),
    )?;
    process.set_rlimits(Some(rlimits));
    Ok(())
}

/// The annotation CRI sets on each container it creates: `sandbox` for the pod's
/// infrastructure container, `container` for the others.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// Whether `spec` is CRI's sandbox (pause) container. Anyone who writes a spec can claim it;
/// it only turns a refusal of another identity into the policy's own identity.
fn is_infra(spec: &Spec) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(CRI_CONTAINER_TYPE))
        .is_some_and(|t| t == "sandbox")
}

/// The identity a process asking for `asked` (uid, gid) and `groups` runs as under `bound`:
/// root is narrowed to the bound; another identity than a fixed bound's is refused, except for
/// the pod's infrastructure container (`infra`: CRI's sandbox container, e.g. pause, which runs
/// as 65535 and no agent code), which is narrowed to it.
fn identity(
    policy: &AgentPolicy,
    bound: UserBound,
    asked: (u32, u32),
    groups: &[u32],
    infra: bool,
) -> Result<(u32, u32, Vec<u32>), CompileError> {
    let one = |what: &str, asked: u32, id: IdBound| -> Result<u32, CompileError> {
        match id {
            IdBound::Any => Ok(asked),
            IdBound::NotRoot if asked == 0 => Ok(NOBODY_ID),
            IdBound::NotRoot => Ok(asked),
            IdBound::Exactly(fixed) if asked == 0 || asked == fixed || infra => Ok(fixed),
            IdBound::Exactly(_) => Err(refused(
                policy,
                "process.user",
                format!(
                    "the container asks to run as {what} {asked}, and policy {:?} allows only {bound} (a policy with user \"{NONROOT_USER}\" lets the pod's own non-root user stand)",
                    policy.metadata.name
                ),
            )),
        }
    };
    let uid = one("uid", asked.0, bound.uid())?;
    let gid = one("gid", asked.1, bound.gid())?;
    let mut kept: Vec<u32> = Vec::new();
    for g in groups.iter().copied() {
        let keep = match bound.groups() {
            // Supplementary groups (e.g. gid 0 from the image's /etc/group) would widen file
            // access beyond a fixed identity.
            GroupsBound::None => false,
            GroupsBound::NotRoot => g != 0,
            GroupsBound::Any => true,
        };
        if keep && !kept.contains(&g) {
            kept.push(g);
        }
    }
    Ok((uid, gid, kept))
}

/// Each capability set of the spec narrowed to `allowed` (a set the spec leaves out stays
/// empty), kept consistent: effective within permitted, ambient within permitted and
/// inheritable. Also the names of the capabilities the spec asked for and does not get.
fn narrow_capabilities(
    asked: Option<&LinuxCapabilities>,
    allowed: &Capabilities,
) -> (LinuxCapabilities, Vec<String>) {
    let set = |s: Option<&Capabilities>| -> Capabilities {
        s.into_iter()
            .flatten()
            .filter(|c| allowed.contains(c))
            .copied()
            .collect()
    };
    let get = |f: fn(&LinuxCapabilities) -> &Option<Capabilities>| -> Option<&Capabilities> {
        asked.and_then(|a| f(a).as_ref())
    };
    let bounding = set(get(LinuxCapabilities::bounding));
    let permitted: Capabilities = set(get(LinuxCapabilities::permitted))
        .intersection(&bounding)
        .copied()
        .collect();
    let effective: Capabilities = set(get(LinuxCapabilities::effective))
        .intersection(&permitted)
        .copied()
        .collect();
    let inheritable: Capabilities = set(get(LinuxCapabilities::inheritable))
        .intersection(&bounding)
        .copied()
        .collect();
    let ambient: Capabilities = set(get(LinuxCapabilities::ambient))
        .into_iter()
        .filter(|c| permitted.contains(c) && inheritable.contains(c))
        .collect();

    let mut removed: Vec<String> = [
        LinuxCapabilities::bounding,
        LinuxCapabilities::permitted,
        LinuxCapabilities::effective,
        LinuxCapabilities::inheritable,
        LinuxCapabilities::ambient,
    ]
    .into_iter()
    .filter_map(get)
    .flatten()
    .filter(|c| !allowed.contains(c))
    .map(|c| capability_name(*c))
    .collect();
    removed.sort();
    removed.dedup();

    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(bounding));
    lc.set_effective(Some(effective));
    lc.set_permitted(Some(permitted));
    lc.set_inheritable(Some(inheritable));
    lc.set_ambient(Some(ambient));
    (lc, removed)
}

/// Caps the `typ` rlimit at `limit` (adding it when the spec has none; a lower spec value stays).
fn tighten_rlimit(
    policy: &AgentPolicy,
    rlimits: &mut Vec<PosixRlimit>,
    typ: PosixRlimitType,
    limit: u64,
) -> Result<(), CompileError> {
    let mut found = false;
    for r in rlimits.iter_mut().filter(|r| r.typ() == typ) {
        found = true;
        let hard = r.hard().min(limit);
        *r = rlimit(policy, typ, hard, r.soft().min(hard))?;
    }
    if !found {
        rlimits.push(rlimit(policy, typ, limit, limit)?);
    }
    Ok(())
}

fn rlimit(
    policy: &AgentPolicy,
    typ: PosixRlimitType,
    hard: u64,
    soft: u64,
) -> Result<PosixRlimit, CompileError> {
    PosixRlimitBuilder::default()
        .typ(typ)
        .hard(hard)
        .soft(soft)
        .build()
        .map_err(|e| {
            refused(
                policy,
                "process.rlimits",
                format!("cannot set {typ:?}: {e}"),
            )
        })
}
