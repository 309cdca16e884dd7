//! The container process: user and groups, capabilities, no_new_privs, RLIMIT_NOFILE and
//! RLIMIT_NPROC.

use std::collections::HashSet;

use oci_spec::runtime::{
    Capabilities, LinuxCapabilities, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Spec,
};

use super::{refused, CompileError};
use crate::manifest::AgentPolicy;
use crate::validate::parse_capability;

pub(super) fn confine(policy: &AgentPolicy, spec: &mut Spec) -> Result<(), CompileError> {
    let p = &policy.spec.process;
    let (uid, gid) = p.user_ids().ok_or_else(|| {
        refused(
            policy,
            "process.user",
            "the policy's user is not a numeric uid:gid",
        )
    })?;
    let process = spec.process_mut().as_mut().ok_or_else(|| {
        refused(
            policy,
            "process",
            format!("is missing; refused by policy {:?}", policy.metadata.name),
        )
    })?;

    let user = process.user_mut();
    user.set_uid(uid);
    user.set_gid(gid);
    // Supplementary groups from the image (e.g. gid 0) would widen file access.
    user.set_additional_gids(None);
    user.set_username(None);

    let caps: Capabilities = p
        .capabilities
        .iter()
        .filter_map(|c| parse_capability(c))
        .collect::<HashSet<_>>();
    let mut lc = LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps.clone()));
    lc.set_permitted(Some(caps.clone()));
    lc.set_inheritable(Some(caps.clone()));
    lc.set_ambient(Some(caps));
    process.set_capabilities(Some(lc));

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
