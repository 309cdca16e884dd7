//! The spec's `linux.seccomp` inside the sandbox.
//!
//! runsc ignores a container's seccomp profile unless it runs with `--oci-seccomp`; with it,
//! the Sentry installs each container's own profile on that container's init (the root
//! container at `runsc create`, a pod member at its `runsc start`), so the flag goes on every
//! invocation, like the other global flags. A spec with a profile on a runsc that lacks the
//! flag is refused at Create: Safehouse never runs a container without the filter it asked for.
//!
//! Processes started by `runsc exec` get no filter from runsc: the shim compiles the profile
//! itself ([`profile`]) and has them start through a static helper that installs it
//! ([`exec`]).

pub mod exec;
pub mod profile;

use oci_spec::runtime::Spec;
use safehouse_runsc_config::{RunscProbe, OCI_SECCOMP_FLAG};

use crate::error::{Result, ShimError};

/// The global runsc flags that make the spec's seccomp profile hold: `--oci-seccomp` when this
/// runsc has it. Appended after the operator's flags, so `[runsc] oci-seccomp = false` cannot
/// turn it off.
pub fn runsc_flags(probe: &RunscProbe) -> Vec<String> {
    if probe.applies_oci_seccomp() {
        vec![format!("--{OCI_SECCOMP_FLAG}")]
    } else {
        Vec::new()
    }
}

/// Refuses a spec with a seccomp profile when this runsc cannot apply it.
pub fn check_spec(probe: &RunscProbe, spec: &Spec) -> Result<()> {
    let has_profile = spec.linux().as_ref().is_some_and(|l| l.seccomp().is_some());
    if !has_profile || probe.applies_oci_seccomp() {
        return Ok(());
    }
    Err(ShimError::FailedPrecondition(format!(
        "linux.seccomp: the spec asks for a seccomp profile, but runsc {} ({}) has no --{OCI_SECCOMP_FLAG} flag to apply it inside the sandbox; Safehouse does not run a container without the filter it asked for (upgrade runsc, or run the pod without a seccomp profile)",
        probe.version,
        probe.path.display()
    )))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn probe(flags: &str) -> RunscProbe {
        RunscProbe::from_outputs(
            Path::new("/usr/bin/runsc"),
            "runsc version 0.0~20240729.0\n",
            flags,
        )
        .expect("probe")
    }

    fn spec(seccomp: bool) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {}
        });
        if seccomp {
            v["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
            });
        }
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn the_flag_is_passed_whenever_runsc_has_it() {
        let with = probe("  -network value\n  -oci-seccomp\n");
        assert_eq!(runsc_flags(&with), vec!["--oci-seccomp".to_string()]);
        assert!(runsc_flags(&probe("  -network value\n")).is_empty());
    }

    #[test]
    fn a_profile_runsc_cannot_apply_is_refused_naming_the_field() {
        let without = probe("  -network value\n");
        let err = check_spec(&without, &spec(true)).expect_err("refused");
        assert!(matches!(err, ShimError::FailedPrecondition(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("linux.seccomp"), "{msg}");
        assert!(msg.contains("--oci-seccomp"), "{msg}");
        assert!(check_spec(&without, &spec(false)).is_ok());
        let with = probe("  -oci-seccomp\n");
        assert!(check_spec(&with, &spec(true)).is_ok());
    }
}
