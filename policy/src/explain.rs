//! Plain-language summary of a policy: one sentence per thing the agent may or may not do.

use crate::egress::EgressRule;
use crate::manifest::{AgentPolicy, AuditCategory, NetworkMode, RootfsMode, ViolationAction};
use crate::validate::{capability_name, parse_capability};

/// Sentences describing what an agent under `policy` may and may not do.
pub fn explain(policy: &AgentPolicy) -> Vec<String> {
    let s = &policy.spec;
    let mut out = Vec::new();
    out.push(format!(
        "Policy {:?} ({}).",
        policy.metadata.name,
        crate::digest::policy_digest(policy)
    ));
    if let Some(d) = &policy.metadata.description {
        out.push(format!("Purpose: {d}"));
    }

    let fs = &s.filesystem;
    out.push(match fs.rootfs {
        RootfsMode::ReadOnly => "The agent cannot write to the container image's filesystem.".to_string(),
        RootfsMode::ReadWrite => {
            "The agent may write to the container image's filesystem (changes are lost when the container ends)."
                .to_string()
        }
    });
    for z in &fs.scratch {
        out.push(format!(
            "It may write up to {} of private scratch files in {}, gone when the sandbox ends; {}.",
            z.size,
            z.path,
            exec_phrase(z.exec)
        ));
    }
    for z in &fs.inputs {
        out.push(format!(
            "It may read, but not change, the host directory {} at {}; {}.",
            z.source,
            z.path,
            exec_phrase(z.exec)
        ));
    }
    for z in &fs.outputs {
        out.push(format!(
            "It may read and write the host directory {} at {}; {}.",
            z.source,
            z.path,
            exec_phrase(z.exec)
        ));
    }
    out.push("It cannot see any other host path, host device, or the host's process, IPC or network namespace.".to_string());

    out.push(match s.network.mode {
        NetworkMode::None => "It has no network access: only a loopback interface.".to_string(),
        NetworkMode::Open => "It may connect to any network address the node can reach, including cloud metadata and private ranges.".to_string(),
        NetworkMode::Allowlist => {
            let entries: Vec<String> = s
                .network
                .egress
                .iter()
                .map(|e| EgressRule::parse(e).map(|r| r.to_string()).unwrap_or_else(|_| e.clone()))
                .collect();
            format!(
                "It asks for network access only to {}, but allowlists are not enforced yet: containers under this policy are refused.",
                if entries.is_empty() { "nothing".to_string() } else { entries.join(", ") }
            )
        }
    });

    let p = &s.process;
    match p.user_ids() {
        Some((0, gid)) => out.push(format!("It runs as root (uid 0, gid {gid}).")),
        Some((uid, gid)) => out.push(format!(
            "It runs as uid {uid}, gid {gid}, with no supplementary groups."
        )),
        None => out.push(format!("Its user {:?} is invalid.", p.user)),
    }
    let caps: Vec<String> = p
        .capabilities
        .iter()
        .map(|c| {
            parse_capability(c)
                .map(capability_name)
                .unwrap_or_else(|| c.clone())
        })
        .collect();
    out.push(if caps.is_empty() {
        "It holds no Linux capabilities.".to_string()
    } else {
        format!(
            "It holds only these Linux capabilities: {}.",
            caps.join(", ")
        )
    });
    out.push(if p.no_new_privileges {
        "It cannot gain privileges through setuid or file-capability binaries.".to_string()
    } else {
        "It may gain privileges through setuid or file-capability binaries in the image."
            .to_string()
    });
    out.push(if p.tools.is_empty() {
        "It may run any executable it can read.".to_string()
    } else {
        let consequence = match s.audit.on_violation {
            ViolationAction::Kill => "running anything else kills the container",
            ViolationAction::Record => "running anything else is recorded as a violation",
        };
        format!("It may run only {}; {consequence}.", p.tools.join(", "))
    });
    if let Some(t) = p.timeout {
        out.push(format!("It is killed after {t} of wall-clock time."));
    }

    let r = &s.resources;
    out.push(format!(
        "It may use at most {} of memory, {} CPU(s), {} processes and threads, and {} open files.",
        r.memory, r.cpus.0, r.pids, r.nofile
    ));

    let record: Vec<&str> = s
        .audit
        .record
        .iter()
        .map(|c| match c {
            AuditCategory::Process => "process starts and exits",
            AuditCategory::File => "file opens",
            AuditCategory::Network => "network connections",
        })
        .collect();
    out.push(if record.is_empty() {
        "Nothing it does is recorded in the audit stream beyond container lifecycle.".to_string()
    } else {
        format!("The audit stream records its {}.", record.join(", "))
    });
    out
}

fn exec_phrase(exec: bool) -> &'static str {
    if exec {
        "files there may be executed"
    } else {
        "nothing there can be executed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{HostZone, NetworkMode};

    #[test]
    fn strict_default_says_what_is_forbidden() {
        let text = explain(&AgentPolicy::strict_default()).join("\n");
        for want in [
            "cannot write to the container image's filesystem",
            "/tmp, gone when the sandbox ends; nothing there can be executed",
            "no network access",
            "uid 65534, gid 65534",
            "no Linux capabilities",
            "cannot gain privileges",
            "may run any executable",
            "512Mi of memory",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn open_network_exec_zone_and_allowlist_are_spelled_out() {
        let mut p = AgentPolicy::strict_default();
        p.spec.network.mode = NetworkMode::Open;
        p.spec.filesystem.outputs.push(HostZone {
            source: "/srv/out".into(),
            path: "/out".into(),
            exec: true,
        });
        let text = explain(&p).join("\n");
        assert!(text.contains("including cloud metadata"), "{text}");
        assert!(
            text.contains("/srv/out at /out; files there may be executed"),
            "{text}"
        );
        p.spec.network.mode = NetworkMode::Allowlist;
        p.spec.network.egress = vec!["pypi.org:443".into()];
        let text = explain(&p).join("\n");
        assert!(
            text.contains("only to pypi.org:443") && text.contains("refused"),
            "{text}"
        );
    }
}
