//! Semantic checks of a parsed manifest: every rule serde cannot express (absolute paths,
//! unique zones, known capabilities, well-formed user and egress entries). Findings carry field
//! paths; `parse` turns them into lines and columns.

use std::collections::BTreeSet;

use oci_spec::runtime::Capability;

use crate::egress::{EgressRule, IngressRule};
use crate::finding::Finding;
use crate::manifest::{
    AgentPolicy, HostZone, NetworkMode, RootfsMode, SymlinkRule, UserBound, API_VERSION, KIND,
    MIN_OUTPUT_SIZE, NONROOT_USER,
};
use crate::paths::{absolute_path_problem, is_within};

/// Capabilities that amount to (near) root on their own; granting one earns a warning.
const DANGEROUS_CAPS: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_NET_ADMIN",
    "CAP_DAC_READ_SEARCH",
    "CAP_DAC_OVERRIDE",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SETUID",
    "CAP_SETGID",
];

/// Container paths a zone may not cover: the runtime owns them.
const RESERVED_DESTINATIONS: &[&str] = &["/proc", "/sys", "/dev"];

/// Every finding about `policy`, errors and warnings, without locations.
pub fn validate(policy: &AgentPolicy) -> Vec<Finding> {
    let mut out = Vec::new();
    if policy.api_version != API_VERSION {
        out.push(Finding::error(
            "apiVersion",
            format!("must be {API_VERSION:?}, not {:?}", policy.api_version),
        ));
    }
    if policy.kind != KIND {
        out.push(Finding::error(
            "kind",
            format!("must be {KIND:?}, not {:?}", policy.kind),
        ));
    }
    if let Some(problem) = name_problem(&policy.metadata.name) {
        out.push(Finding::error("metadata.name", problem));
    }
    filesystem(policy, &mut out);
    network(policy, &mut out);
    process(policy, &mut out);
    resources(policy, &mut out);
    let mut seen = BTreeSet::new();
    for (i, cat) in policy.spec.audit.record.iter().enumerate() {
        if !seen.insert(*cat) {
            out.push(Finding::error(
                format!("spec.audit.record[{i}]"),
                "listed twice",
            ));
        }
    }
    out
}

/// `size` and `symlinks` belong to outputs; an output's size leaves room for its filesystem.
fn output_fields(kind: &str, base: &str, z: &HostZone, out: &mut Vec<Finding>) {
    if kind != "outputs" {
        if z.size.is_some() {
            out.push(Finding::error(
                format!("{base}.size"),
                "only outputs take a size: an input is read-only",
            ));
        }
        if z.symlinks != SymlinkRule::Record {
            out.push(Finding::error(
                format!("{base}.symlinks"),
                "only outputs take a symlink rule: an input is read-only",
            ));
        }
        return;
    }
    if let Some(size) = z.size {
        if size < MIN_OUTPUT_SIZE {
            out.push(Finding::error(
                format!("{base}.size"),
                format!("{size} is too small: an output needs at least {MIN_OUTPUT_SIZE}"),
            ));
        }
    }
}

/// Why `name` is not a valid policy name (a DNS label), if it is not.
pub fn name_problem(name: &str) -> Option<String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty()
        || name.len() > 63
        || !ok_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Some(format!(
            "{name:?} is not a valid name: use 1-63 lowercase letters, digits and '-', not starting or ending with '-'"
        ));
    }
    None
}

fn filesystem(policy: &AgentPolicy, out: &mut Vec<Finding>) {
    let fs = &policy.spec.filesystem;
    if !policy.spec.process.tools.is_empty() {
        let exec_zones = fs
            .scratch
            .iter()
            .enumerate()
            .filter(|(_, z)| z.exec)
            .map(|(i, _)| format!("spec.filesystem.scratch[{i}].exec"))
            .chain(
                [("inputs", &fs.inputs), ("outputs", &fs.outputs)]
                    .into_iter()
                    .flat_map(|(kind, zones)| {
                        zones
                            .iter()
                            .enumerate()
                            .filter(|(_, z)| z.exec)
                            .map(move |(i, _)| format!("spec.filesystem.{kind}[{i}].exec"))
                    }),
            );
        if fs.rootfs == RootfsMode::ReadWrite {
            out.push(Finding::warning(
                "spec.filesystem.rootfs",
                "read-write beside spec.process.tools: the agent can rewrite the image files its user owns, and a listed dynamic tool loads its libraries (and the loader its configuration) from those files, so its code can change; keep the rootfs read-only and give the agent scratch or output zones, or list static tools",
            ));
        }
        for field in exec_zones {
            out.push(Finding::warning(
                field,
                "has no effect beside spec.process.tools: with tools every mount is noexec, so only the listed tools can be executed",
            ));
        }
    }
    // (field path, container path) of every zone, to check overlaps.
    let mut dests: Vec<(String, &str)> = Vec::new();
    for (i, z) in fs.scratch.iter().enumerate() {
        let base = format!("spec.filesystem.scratch[{i}]");
        if z.size.bytes() == 0 {
            out.push(Finding::error(
                format!("{base}.size"),
                "must be greater than zero",
            ));
        }
        dests.push((format!("{base}.path"), &z.path));
    }
    for (kind, zones) in [("inputs", &fs.inputs), ("outputs", &fs.outputs)] {
        for (i, z) in zones.iter().enumerate() {
            let base = format!("spec.filesystem.{kind}[{i}]");
            if let Some(problem) = absolute_path_problem(&z.source) {
                out.push(Finding::error(format!("{base}.source"), problem));
            } else if z.source == "/" {
                out.push(Finding::warning(
                    format!("{base}.source"),
                    "exposes the host's whole filesystem",
                ));
            }
            output_fields(kind, &base, z, out);
            dests.push((format!("{base}.path"), &z.path));
        }
    }
    // First field using each container path, to report duplicates in linear time.
    let mut first_use: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (field, dest) in &dests {
        if let Some(problem) = absolute_path_problem(dest) {
            out.push(Finding::error(field.clone(), problem));
            continue;
        }
        if *dest == "/" {
            out.push(Finding::error(
                field.clone(),
                "cannot be '/': the root filesystem is set by `rootfs`",
            ));
            continue;
        }
        if let Some(r) = RESERVED_DESTINATIONS.iter().find(|r| is_within(dest, r)) {
            out.push(Finding::error(
                field.clone(),
                format!("cannot be at or under {r}: the runtime provides it"),
            ));
        }
        if let Some(other) = first_use.get(dest) {
            out.push(Finding::error(
                field.clone(),
                format!("{dest} is already used by {other}"),
            ));
        } else {
            first_use.insert(dest, field);
        }
    }
}

fn network(policy: &AgentPolicy, out: &mut Vec<Finding>) {
    let net = &policy.spec.network;
    for (i, e) in net.egress.iter().enumerate() {
        if let Err(err) = EgressRule::parse(e) {
            out.push(Finding::error(
                format!("spec.network.egress[{i}]"),
                err.to_string(),
            ));
        }
    }
    for (i, e) in net.ingress.iter().enumerate() {
        if let Err(err) = IngressRule::parse(e) {
            out.push(Finding::error(
                format!("spec.network.ingress[{i}]"),
                err.to_string(),
            ));
        }
    }
    if net.mode == NetworkMode::None {
        if !net.egress.is_empty() {
            out.push(Finding::warning(
                "spec.network.egress",
                "is ignored when mode is none",
            ));
        }
        if !net.ingress.is_empty() {
            out.push(Finding::warning(
                "spec.network.ingress",
                "is ignored when mode is none",
            ));
        }
    }
    if net.mode == NetworkMode::Open {
        for (i, e) in net.egress.iter().enumerate() {
            if let Ok(EgressRule::Host { .. }) = EgressRule::parse(e) {
                out.push(Finding::warning(
                    format!("spec.network.egress[{i}]"),
                    "a host name has no effect with mode open (everything but the protected ranges is reachable, and a name never opens a protected range: name an address)",
                ));
            }
        }
    }
    if net.mode == NetworkMode::Allowlist && net.egress.is_empty() {
        out.push(Finding::warning(
            "spec.network.egress",
            "is empty: an allowlist without entries reaches nothing (use mode none)",
        ));
    }
}

fn process(policy: &AgentPolicy, out: &mut Vec<Finding>) {
    let p = &policy.spec.process;
    match p.user_bound() {
        None => out.push(Finding::error(
            "spec.process.user",
            format!(
                "{:?} is neither a numeric uid:gid such as \"65534:65534\" nor \"{NONROOT_USER}\"",
                p.user
            ),
        )),
        Some(UserBound::Fixed { uid: 0, .. }) => out.push(Finding::warning(
            "spec.process.user",
            "runs the agent as root (uid 0)",
        )),
        Some(_) => {}
    }
    let mut seen = BTreeSet::new();
    for (i, c) in p.capabilities.iter().enumerate() {
        let field = format!("spec.process.capabilities[{i}]");
        match parse_capability(c) {
            None => out.push(Finding::error(
                field,
                format!("{c:?} is not a Linux capability"),
            )),
            Some(cap) => {
                let name = capability_name(cap);
                if !seen.insert(name.clone()) {
                    out.push(Finding::error(field, format!("{name} listed twice")));
                } else if DANGEROUS_CAPS.contains(&name.as_str()) {
                    out.push(Finding::warning(
                        field,
                        format!("{name} gives the agent near-root power"),
                    ));
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (i, t) in p.tools.iter().enumerate() {
        let field = format!("spec.process.tools[{i}]");
        if let Some(problem) = absolute_path_problem(t) {
            out.push(Finding::error(field, problem));
        } else if !seen.insert(t) {
            out.push(Finding::error(field, format!("{t} listed twice")));
        }
    }
    if p.timeout.is_some_and(|t| t.0.is_zero()) {
        out.push(Finding::error(
            "spec.process.timeout",
            "must be greater than zero",
        ));
    }
    if !p.no_new_privileges {
        out.push(Finding::warning(
            "spec.process.noNewPrivileges",
            "false lets setuid binaries in the image raise privileges",
        ));
    }
}

fn resources(policy: &AgentPolicy, out: &mut Vec<Finding>) {
    let r = &policy.spec.resources;
    if r.memory.bytes() < (4 << 20) {
        out.push(Finding::error(
            "spec.resources.memory",
            "must be at least 4Mi",
        ));
    }
    if r.memory.bytes() > i64::MAX as u64 {
        out.push(Finding::error("spec.resources.memory", "is too large"));
    }
    if r.pids == 0 {
        out.push(Finding::error("spec.resources.pids", "must be at least 1"));
    }
    if r.nofile < 16 {
        out.push(Finding::error(
            "spec.resources.nofile",
            "must be at least 16",
        ));
    }
}

/// Parse a capability name, with or without `CAP_`, any case.
pub fn parse_capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// Canonical `CAP_…` name of a capability.
pub fn capability_name(cap: Capability) -> String {
    match serde_json::to_value(cap) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("CAP_{cap}"),
    }
}
