//! Plain-language summary of a policy: one sentence per thing the agent may or may not do.

use crate::egress::{EgressRule, IngressRule};
use crate::finding::Finding;
use crate::manifest::{
    AgentPolicy, AuditCategory, NetworkMode, RootfsMode, SymlinkRule, UserBound, ViolationAction,
    NOBODY_ID,
};
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
        let links = match z.symlinks {
            SymlinkRule::Record => "kept and recorded",
            SymlinkRule::Refuse => "left out and recorded",
        };
        out.push(format!(
            "It may write up to {} at {}, copied into the host directory {} when the container is deleted (symlinks pointing out of it are {links}); {}.",
            z.output_size(),
            z.path,
            z.source,
            exec_phrase(z.exec)
        ));
    }
    out.push("It cannot see any other host path, host device, or the host's process, IPC or network namespace.".to_string());

    network_sentences(&s.network, &mut out);

    let p = &s.process;
    match p.user_bound() {
        Some(UserBound::Fixed { uid: 0, gid }) => out.push(format!(
            "It may run as root: the pod's own uid stands, uid 0 when it names none (gid {}).",
            if gid == 0 { "likewise".to_string() } else { gid.to_string() }
        )),
        Some(UserBound::Fixed { uid, gid }) => out.push(format!(
            "It runs as uid {uid}, gid {gid}, with no supplementary groups."
        )),
        Some(UserBound::NonRoot) => out.push(format!(
            "It runs as the non-root user the pod asks for; a pod asking for root (uid or gid 0) runs as {NOBODY_ID}, and supplementary group 0 is dropped."
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
        format!("It may run only {}; {consequence}. A listed tool is checked as that file under that name: another program of the same multi-call binary (busybox's cat beside its sh) is not allowed.", p.tools.join(", "))
    });
    let runs_anything: Vec<&str> = p
        .tools
        .iter()
        .map(String::as_str)
        .filter(|t| runs_other_code(t))
        .collect();
    if !runs_anything.is_empty() {
        out.push(format!(
            "{} run(s) whatever code it is given (an interpreter, a shell, or a program that runs others): no runtime can stop that code, only check the programs it starts; a busybox shell also runs many of its applets in-process, with no exec to check.",
            runs_anything.join(", ")
        ));
    }
    if let Some(t) = p.timeout {
        out.push(format!("It is killed after {t} of wall-clock time."));
    }

    let r = &s.resources;
    out.push(format!(
        "It may use at most {} of memory, {} CPU(s), {} processes and threads, and {} open files.",
        r.memory, r.cpus.0, r.pids, r.nofile
    ));

    let mut recorded = s.audit.record.clone();
    if !p.tools.is_empty() && !recorded.contains(&AuditCategory::Process) {
        // The compiler adds them: the tools check reads the exec events.
        recorded.push(AuditCategory::Process);
        out.push(
            "Process starts are recorded because tools are listed (the check reads them).".into(),
        );
    }
    let record: Vec<&str> = recorded
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

/// A note for each listed tool that runs code it is given (what `policy lint` prints beside
/// its findings): the tools list cannot confine what such a tool does.
pub fn tool_notes(policy: &AgentPolicy) -> Vec<Finding> {
    policy
        .spec
        .process
        .tools
        .iter()
        .enumerate()
        .filter(|(_, t)| runs_other_code(t))
        .map(|(i, t)| {
            Finding::note(
                format!("spec.process.tools[{i}]"),
                format!("{t} runs whatever code it is given (an interpreter, a shell, a multi-call binary, or a program that starts others): no runtime can stop that code; only the programs it execs are checked against the list"),
            )
        })
        .collect()
}

/// Whether a tool runs code it is given rather than only itself: shells, interpreters,
/// multi-call binaries and programs that start others.
fn runs_other_code(tool: &str) -> bool {
    let name = tool.rsplit('/').next().unwrap_or(tool);
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    const RUNNERS: &[&str] = &[
        "sh", "bash", "dash", "ash", "zsh", "ksh", "fish", "busybox", "python", "perl", "ruby",
        "node", "nodejs", "deno", "bun", "php", "lua", "luajit", "tclsh", "wish", "R", "Rscript",
        "java", "env", "xargs", "find", "awk", "gawk", "mawk", "nawk", "make", "git", "ssh",
        "nice", "nohup", "timeout", "strace", "gdb", "vim", "vi", "emacs", "ld.so", "sudo", "su",
        "chroot", "setsid", "flock", "watch", "parallel",
    ];
    RUNNERS.contains(&base) || name.starts_with("ld-linux")
}

/// Plain sentences for `spec.network`: what the agent can reach and what stays closed.
fn network_sentences(net: &crate::manifest::NetworkPolicy, out: &mut Vec<String>) {
    let rules: Vec<EgressRule> = net
        .egress
        .iter()
        .filter_map(|e| EgressRule::parse(e).ok())
        .collect();
    let mut reach = Vec::new();
    for r in &rules {
        reach.push(match r {
            EgressRule::Host { name, port } => {
                let who = match name.strip_prefix("*.") {
                    Some(base) => format!("any name below {base}"),
                    None => name.clone(),
                };
                match port {
                    Some(p) => format!("{who} on port {p} (TCP or UDP)"),
                    None => format!("{who} on any port and protocol"),
                }
            }
            EgressRule::Cidr { addr, prefix, port } => {
                let range = if (addr.is_ipv4() && *prefix == 32) || *prefix == 128 {
                    format!("{addr}")
                } else {
                    format!("{addr}/{prefix}")
                };
                match port {
                    Some(p) => format!("{range} on port {p} (TCP or UDP)"),
                    None => format!("{range} on any port and protocol"),
                }
            }
        });
    }
    let safe = "the cloud metadata service (169.254.169.254, fd00:ec2::254), link-local addresses and the node's own addresses";
    match net.mode {
        NetworkMode::None => {
            out.push("It has no network access: only a loopback interface.".to_string());
            return;
        }
        NetworkMode::Open => out.push(format!(
            "It may connect to any address its network namespace can reach, except {safe}, unless listed below."
        )),
        NetworkMode::Allowlist => {
            if reach.is_empty() {
                out.push("It may connect to nothing outside the sandbox (the allowlist is empty).".to_string());
            } else {
                out.push(format!("It may connect only to: {}.", reach.join("; ")));
            }
            if rules.iter().any(|r| matches!(r, EgressRule::Host { .. })) {
                out.push("Names are resolved by the sandbox's own DNS forwarder, which answers only the names listed; an address is reachable only while an answer for a listed name that returned it is valid (its TTL).".to_string());
            }
            out.push(format!(
                "Everything else is refused at once (TCP reset or ICMP administratively prohibited), including {safe} unless an entry names them."
            ));
        }
    }
    if net.mode == NetworkMode::Open {
        let opened: Vec<&str> = rules
            .iter()
            .zip(&reach)
            .filter(|(r, _)| matches!(r, EgressRule::Cidr { .. }))
            .map(|(_, text)| text.as_str())
            .collect();
        if !opened.is_empty() {
            out.push(format!(
                "Listed addresses it may reach even inside those ranges: {}.",
                opened.join("; ")
            ));
        }
    }
    let sources: Vec<String> = net
        .ingress
        .iter()
        .filter_map(|e| IngressRule::parse(e).ok())
        .map(|r| match r.port {
            Some(p) => format!("{}/{} to port {p}", r.addr, r.prefix),
            None => format!("{}/{} to any port", r.addr, r.prefix),
        })
        .collect();
    if sources.is_empty() {
        out.push("No one may open a connection to it.".to_string());
    } else {
        out.push(format!(
            "Only these sources may open connections to it: {}.",
            sources.join("; ")
        ));
    }
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
            size: None,
            symlinks: SymlinkRule::Record,
        });
        let text = explain(&p).join("\n");
        assert!(text.contains("except the cloud metadata service"), "{text}");
        p.spec.network.egress = vec!["169.254.169.254:80".into(), "meta.internal".into()];
        let opened = explain(&p).join("\n");
        assert!(
            opened.contains("Listed addresses it may reach even inside those ranges: 169.254.169.254 on port 80 (TCP or UDP).")
                && !opened.contains("meta.internal"),
            "{opened}"
        );
        p.spec.network.egress.clear();
        assert!(
            text.contains("It may write up to 1Gi at /out, copied into the host directory /srv/out when the container is deleted (symlinks pointing out of it are kept and recorded); files there may be executed"),
            "{text}"
        );
        p.spec.network.mode = NetworkMode::Allowlist;
        p.spec.network.egress = vec!["pypi.org:443".into(), "10.0.0.0/8".into()];
        p.spec.network.ingress = vec!["10.9.0.0/16:8080".into()];
        let text = explain(&p).join("\n");
        for want in [
            "It may connect only to: pypi.org on port 443 (TCP or UDP); 10.0.0.0/8 on any port and protocol.",
            "DNS forwarder, which answers only the names listed",
            "Everything else is refused at once",
            "Only these sources may open connections to it: 10.9.0.0/16 to port 8080.",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
