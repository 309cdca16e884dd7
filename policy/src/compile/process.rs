//! The container process: user and groups, capabilities, no_new_privs and RLIMIT_NOFILE.

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

    let limit = u64::from(policy.spec.resources.nofile);
    let mut rlimits = Vec::new();
    let mut found = false;
    for r in process.rlimits().iter().flatten() {
        if r.typ() == PosixRlimitType::RlimitNofile {
            found = true;
            let hard = r.hard().min(limit);
            rlimits.push(rlimit(policy, hard, r.soft().min(hard))?);
        } else {
            rlimits.push(*r);
        }
    }
    if !found {
        rlimits.push(rlimit(policy, limit, limit)?);
    }
    process.set_rlimits(Some(rlimits));
    Ok(())
}

fn rlimit(policy: &AgentPolicy, hard: u64, soft: u64) -> Result<PosixRlimit, CompileError> {
    PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(hard)
        .soft(soft)
        .build()
        .map_err(|e| {
            refused(
                policy,
                "process.rlimits",
                format!("cannot set RLIMIT_NOFILE: {e}"),
            )
        })
}
