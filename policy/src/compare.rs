//! Is one policy no looser than another? [`compare`] answers dimension by dimension
//! (filesystem, network, process, resources, audit) and, for every way the candidate could let
//! an agent do something the base does not, names the field and says why.
//!
//! The comparison is conservative: a candidate is "no looser" only when every field can be
//! shown to grant at most what the base grants, from the two manifests alone. Whatever cannot be
//! shown that way counts as looser, even where it might not be on a given node. In particular:
//!
//! - a host directory zone must name the same host `source` and container `path` as a zone of
//!   the base (a subdirectory of a base source is not accepted: a symlink below it, on the host,
//!   could lead anywhere, and the bind mount follows it);
//! - a different `user` is looser (another identity owns other files), even a non-root one;
//! - an egress address range must lie inside a base range with a covering port; and an entry
//!   that can open a protected range (one inside cloud metadata or link-local, or a single
//!   address, which may be one of the node's own) needs a base entry that opens it too;
//! - a host name must be covered by a base name (equal, or below a base `*.` entry).
//!
//! Every manifest struct is destructured without `..` here, so a field added to the manifest
//! does not compile until this module says how to compare it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::egress::{range_contains, EgressRule, IngressRule};
use crate::manifest::{
    AgentPolicy, AuditPolicy, FilesystemPolicy, HostZone, NetworkMode, NetworkPolicy, PolicySpec,
    ProcessPolicy, ResourcePolicy, RootfsMode, ScratchZone, SymlinkRule, ViolationAction,
};
use crate::netfilter::PROTECTED;
use crate::validate::{capability_name, parse_capability};

/// A dimension of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    /// `spec.filesystem`: rootfs mode and zones.
    Filesystem,
    /// `spec.network`: mode, egress, DNS, ingress.
    Network,
    /// `spec.process` (but `timeout`): tools, user, capabilities, noNewPrivileges.
    Process,
    /// `spec.resources` and `spec.process.timeout`.
    Resources,
    /// `spec.audit`: what is recorded and what a violation does.
    Audit,
}

impl Dimension {
    /// Every dimension, in the order they are reported.
    pub const ALL: [Dimension; 5] = [
        Dimension::Filesystem,
        Dimension::Network,
        Dimension::Process,
        Dimension::Resources,
        Dimension::Audit,
    ];

    /// Its name: `filesystem`, `network`, `process`, `resources` or `audit`.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Filesystem => "filesystem",
            Dimension::Network => "network",
            Dimension::Process => "process",
            Dimension::Resources => "resources",
            Dimension::Audit => "audit",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One way the candidate grants more than the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loosening {
    /// The dimension it belongs to.
    pub dimension: Dimension,
    /// The candidate's field, e.g. `spec.network.egress[2]` (or the base's, for something the
    /// candidate dropped, such as a tool restriction).
    pub field: String,
    /// Why it is looser, in one sentence naming the values.
    pub reason: String,
}

impl fmt::Display for Loosening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// The outcome of [`compare`]: every loosening found, in dimension order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Comparison {
    /// Empty when the candidate is no looser than the base.
    pub loosenings: Vec<Loosening>,
}

impl Comparison {
    /// Whether the candidate grants nothing the base does not.
    pub fn is_no_looser(&self) -> bool {
        self.loosenings.is_empty()
    }

    /// The dimensions in which the candidate is looser.
    pub fn looser_dimensions(&self) -> BTreeSet<Dimension> {
        self.loosenings.iter().map(|l| l.dimension).collect()
    }

    /// The loosenings in one dimension.
    pub fn in_dimension(&self, dimension: Dimension) -> impl Iterator<Item = &Loosening> {
        self.loosenings
            .iter()
            .filter(move |l| l.dimension == dimension)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.loosenings.is_empty() {
            return f.write_str("no looser on any dimension");
        }
        let parts: Vec<String> = self.loosenings.iter().map(|l| l.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

/// Compares `candidate` with `base`: empty when the candidate is no looser on every dimension.
/// `metadata` is not compared (it grants nothing).
pub fn compare(base: &AgentPolicy, candidate: &AgentPolicy) -> Comparison {
    let AgentPolicy {
        api_version: _,
        kind: _,
        metadata: _,
        spec: base_spec,
    } = base;
    let PolicySpec {
        audit: b_audit,
        filesystem: b_fs,
        network: b_net,
        process: b_proc,
        resources: b_res,
    } = base_spec;
    let PolicySpec {
        audit: c_audit,
        filesystem: c_fs,
        network: c_net,
        process: c_proc,
        resources: c_res,
    } = &candidate.spec;
    let mut out = Out::default();
    filesystem(b_fs, c_fs, &mut out);
    network(b_net, c_net, &mut out);
    process(b_proc, c_proc, &mut out);
    resources(b_res, c_res, b_proc, c_proc, &mut out);
    audit(b_audit, c_audit, &mut out);
    Comparison { loosenings: out.0 }
}

#[derive(Default)]
struct Out(Vec<Loosening>);

impl Out {
    fn push(&mut self, dimension: Dimension, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Loosening {
            dimension,
            field: field.into(),
            reason: reason.into(),
        });
    }
}

fn filesystem(base: &FilesystemPolicy, cand: &FilesystemPolicy, out: &mut Out) {
    let FilesystemPolicy {
        inputs: b_inputs,
        outputs: b_outputs,
        rootfs: b_rootfs,
        scratch: b_scratch,
    } = base;
    let FilesystemPolicy {
        inputs: c_inputs,
        outputs: c_outputs,
        rootfs: c_rootfs,
        scratch: c_scratch,
    } = cand;
    let d = Dimension::Filesystem;
    if *c_rootfs == RootfsMode::ReadWrite && *b_rootfs == RootfsMode::ReadOnly {
        out.push(
            d,
            "spec.filesystem.rootfs",
            "read-write, where the base's is read-only",
        );
    }
    // An input is covered by a base input, or by a base output (read-write covers read-only).
    let readable: Vec<&HostZone> = b_inputs.iter().chain(b_outputs).collect();
    host_zones("inputs", c_inputs, &readable, out);
    let writable: Vec<&HostZone> = b_outputs.iter().collect();
    host_zones("outputs", c_outputs, &writable, out);
    for (i, z) in c_scratch.iter().enumerate() {
        let ScratchZone { exec, path, size } = z;
        let field = format!("spec.filesystem.scratch[{i}]");
        let Some(b) = b_scratch.iter().find(|b| b.path == *path) else {
            out.push(
                d,
                field,
                format!("a scratch zone at {path}, where the base has none"),
            );
            continue;
        };
        let ScratchZone {
            exec: b_exec,
            path: _,
            size: b_size,
        } = b;
        if size > b_size {
            out.push(
                d,
                format!("{field}.size"),
                format!("{size} at {path}, more than the base's {b_size}"),
            );
        }
        if *exec && !*b_exec {
            out.push(
                d,
                format!("{field}.exec"),
                format!("executable at {path}, where the base's zone is not"),
            );
        }
    }
}

/// Each candidate zone needs a base zone with the same source and path, as executable or more.
fn host_zones(kind: &str, cand: &[HostZone], base: &[&HostZone], out: &mut Out) {
    let d = Dimension::Filesystem;
    for (i, z) in cand.iter().enumerate() {
        let HostZone {
            exec,
            path,
            size: _,
            source,
            symlinks,
        } = z;
        let field = format!("spec.filesystem.{kind}[{i}]");
        let same = base.iter().find(|b| b.source == *source && b.path == *path);
        let Some(b) = same else {
            let what = if kind == "outputs" {
                "a writable"
            } else {
                "a readable"
            };
            out.push(
                d,
                field,
                format!("{what} host directory {source} at {path}, which no base zone exposes there (a zone must name the same source and path)"),
            );
            continue;
        };
        if *exec && !b.exec {
            out.push(
                d,
                format!("{field}.exec"),
                format!("executable at {path}, where the base's zone is not"),
            );
        }
        if kind != "outputs" {
            // An input's size and symlink rule mean nothing (validation refuses them).
            continue;
        }
        // A base output covering this one; an input cannot (checked above for outputs).
        let (size, b_size) = (z.output_size(), b.output_size());
        if size > b_size {
            out.push(
                d,
                format!("{field}.size"),
                format!("{size} at {path}, more than the base's {b_size}"),
            );
        }
        if *symlinks == SymlinkRule::Record && b.symlinks == SymlinkRule::Refuse {
            out.push(
                d,
                format!("{field}.symlinks"),
                format!("record keeps symlinks escaping {path}, which the base refuses"),
            );
        }
    }
}

/// What a mode makes reachable, for coverage: `none` reaches nothing, so its entries count for
/// nothing; `open` reaches every address no protected range holds.
fn network(base: &NetworkPolicy, cand: &NetworkPolicy, out: &mut Out) {
    let NetworkPolicy {
        egress: b_egress,
        ingress: b_ingress,
        mode: b_mode,
    } = base;
    let NetworkPolicy {
        egress: c_egress,
        ingress: c_ingress,
        mode: c_mode,
    } = cand;
    let d = Dimension::Network;
    let rank = |m: NetworkMode| match m {
        NetworkMode::None => 0,
        NetworkMode::Allowlist => 1,
        NetworkMode::Open => 2,
    };
    if rank(*c_mode) > rank(*b_mode) {
        out.push(
            d,
            "spec.network.mode",
            format!(
                "{}, looser than the base's {}",
                mode_name(*c_mode),
                mode_name(*b_mode)
            ),
        );
    }
    if *c_mode == NetworkMode::None {
        // Loopback only: entries are ignored.
        return;
    }
    // A base without network covers nothing; its entries are ignored.
    let b_rules: Vec<EgressRule> = if *b_mode == NetworkMode::None {
        Vec::new()
    } else {
        b_egress
            .iter()
            .filter_map(|e| EgressRule::parse(e).ok())
            .collect()
    };
    for (i, e) in c_egress.iter().enumerate() {
        let field = format!("spec.network.egress[{i}]");
        let rule = match EgressRule::parse(e) {
            Ok(r) => r,
            Err(err) => {
                out.push(d, field, format!("cannot be compared: {err}"));
                continue;
            }
        };
        if let Some(why) = egress_uncovered(&rule, *c_mode, *b_mode, &b_rules) {
            out.push(d, field, why);
        }
    }
    // DNS: which names the sandbox can have resolved.
    match (*c_mode, *b_mode) {
        (NetworkMode::Open, NetworkMode::Allowlist | NetworkMode::None) => out.push(
            d,
            "spec.network.mode",
            "open keeps the resolver the sandbox was given, so every name resolves (DNS), where the base resolves only its listed names",
        ),
        (NetworkMode::Allowlist, NetworkMode::Allowlist) => {
            for (i, e) in c_egress.iter().enumerate() {
                let Ok(EgressRule::Host { name, .. }) = EgressRule::parse(e) else {
                    continue;
                };
                let listed = b_rules.iter().any(|b| match b {
                    EgressRule::Host { name: b_name, .. } => name_covers(b_name, &name),
                    EgressRule::Cidr { .. } => false,
                });
                if !listed {
                    out.push(
                        d,
                        format!("spec.network.egress[{i}]"),
                        format!("{name} is resolved by the sandbox's DNS forwarder, which the base does not resolve: a query for it reaches the upstream (DNS)"),
                    );
                }
            }
        }
        (NetworkMode::Allowlist, NetworkMode::None)
            if c_egress
                .iter()
                .any(|e| matches!(EgressRule::parse(e), Ok(EgressRule::Host { .. }))) =>
        {
            out.push(
                d,
                "spec.network.egress",
                "host names are resolved through a DNS forwarder, where the base has no network (DNS)",
            );
        }
        _ => {}
    }
    let b_sources: Vec<IngressRule> = if *b_mode == NetworkMode::None {
        Vec::new()
    } else {
        b_ingress
            .iter()
            .filter_map(|e| IngressRule::parse(e).ok())
            .collect()
    };
    for (i, e) in c_ingress.iter().enumerate() {
        let field = format!("spec.network.ingress[{i}]");
        let src = match IngressRule::parse(e) {
            Ok(r) => r,
            Err(err) => {
                out.push(d, field, format!("cannot be compared: {err}"));
                continue;
            }
        };
        let covered = b_sources.iter().any(|b| {
            range_contains(b.addr, b.prefix, src.addr, src.prefix) && port_covers(b.port, src.port)
        });
        if !covered {
            out.push(
                d,
                field,
                format!("{src} may open connections to the sandbox; no ingress source of the base covers it"),
            );
        }
    }
}

fn mode_name(m: NetworkMode) -> &'static str {
    match m {
        NetworkMode::None => "none",
        NetworkMode::Allowlist => "allowlist",
        NetworkMode::Open => "open",
    }
}

/// Why `rule` (of a candidate in mode `c_mode`) reaches something the base does not, if it does.
fn egress_uncovered(
    rule: &EgressRule,
    c_mode: NetworkMode,
    b_mode: NetworkMode,
    base: &[EgressRule],
) -> Option<String> {
    match rule {
        EgressRule::Host { name, port } => {
            // A name never opens a protected range: under a base `open` it reaches nothing new.
            // Under a candidate `open` it has no effect at all.
            if b_mode == NetworkMode::Open || c_mode == NetworkMode::Open {
                return None;
            }
            let covered = base.iter().any(|b| match b {
                EgressRule::Host {
                    name: b_name,
                    port: b_port,
                } => name_covers(b_name, name) && port_covers(*b_port, *port),
                EgressRule::Cidr { .. } => false,
            });
            (!covered).then(|| {
                format!("{rule} is not covered by a host entry of the base (equal, or below a base \"*.\" entry, with the same port or the base's any port)")
            })
        }
        EgressRule::Cidr { addr, prefix, port } => {
            let lifts = may_open_protected(*addr, *prefix);
            if b_mode == NetworkMode::Open && !lifts {
                return None;
            }
            let covered = base.iter().any(|b| match b {
                EgressRule::Cidr {
                    addr: b_addr,
                    prefix: b_prefix,
                    port: b_port,
                } => {
                    range_contains(*b_addr, *b_prefix, *addr, *prefix)
                        && port_covers(*b_port, *port)
                        && (!lifts || opens_protected_like(*b_addr, *b_prefix, *addr, *prefix))
                }
                EgressRule::Host { .. } => false,
            });
            if covered {
                return None;
            }
            Some(if lifts {
                format!("{rule} can open a protected range (cloud metadata, link-local, or, for a single address, one of the node's own addresses), and no base entry opens it the same way")
            } else {
                format!("{rule} is not inside an address range of the base with the same port or the base's any port")
            })
        }
    }
}

/// Whether an entry for `addr/prefix` can open a protected range: it lies inside a fixed one
/// (metadata, link-local), or it is a single address, which may be one of the node's own.
fn may_open_protected(addr: IpAddr, prefix: u8) -> bool {
    prefix == full_prefix(addr) || inside_fixed_protected(addr, prefix)
}

/// Whether a base entry `b` containing the candidate's `c` opens every protected address `c`
/// opens: `b` is inside a fixed protected range (so it opens all of itself), or `b` is the
/// same single address as `c`.
fn opens_protected_like(b_addr: IpAddr, b_prefix: u8, c_addr: IpAddr, c_prefix: u8) -> bool {
    inside_fixed_protected(b_addr, b_prefix)
        || (b_prefix == full_prefix(b_addr) && c_prefix == b_prefix && c_addr == b_addr)
}

fn inside_fixed_protected(addr: IpAddr, prefix: u8) -> bool {
    PROTECTED.iter().any(|(cidr, _)| {
        let Some((a, p)) = cidr.split_once('/') else {
            return false;
        };
        match (a.parse::<IpAddr>(), p.parse::<u8>()) {
            (Ok(pa), Ok(pp)) => range_contains(pa, pp, addr, prefix),
            _ => false,
        }
    })
}

fn full_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// Whether a base port (`None`: any port and protocol) covers a candidate's.
fn port_covers(base: Option<u16>, cand: Option<u16>) -> bool {
    match (base, cand) {
        (None, _) => true,
        (Some(b), Some(c)) => b == c,
        (Some(_), None) => false,
    }
}

/// Whether the base host entry `base` (a name, or `*.zone` for the names strictly below it)
/// covers every name the candidate's `cand` stands for. Both are lowercase (as parsed).
pub fn name_covers(base: &str, cand: &str) -> bool {
    if base == cand {
        return true;
    }
    let Some(zone) = base.strip_prefix("*.") else {
        return false;
    };
    // `*.zone` stands for the names strictly below `zone`: `x.zone`, `*.x.zone`, never `zone`.
    let below = |n: &str| {
        n.len() > zone.len() + 1
            && n.ends_with(zone)
            && n.as_bytes()[n.len() - zone.len() - 1] == b'.'
    };
    match cand.strip_prefix("*.") {
        Some(sub) => sub == zone || below(sub),
        None => below(cand),
    }
}

fn process(base: &ProcessPolicy, cand: &ProcessPolicy, out: &mut Out) {
    let ProcessPolicy {
        capabilities: b_caps,
        no_new_privileges: b_nnp,
        timeout: _,
        tools: b_tools,
        user: b_user,
    } = base;
    let ProcessPolicy {
        capabilities: c_caps,
        no_new_privileges: c_nnp,
        timeout: _,
        tools: c_tools,
        user: c_user,
    } = cand;
    let d = Dimension::Process;
    if !b_tools.is_empty() {
        if c_tools.is_empty() {
            out.push(
                d,
                "spec.process.tools",
                format!(
                    "empty (any executable may run), where the base allows only {}",
                    b_tools.join(", ")
                ),
            );
        }
        for (i, t) in c_tools.iter().enumerate() {
            if !b_tools.contains(t) {
                out.push(
                    d,
                    format!("spec.process.tools[{i}]"),
                    format!("{t} is not among the base's tools"),
                );
            }
        }
    }
    match (base.user_bound(), cand.user_bound()) {
        (Some(b), Some(c)) if c.within(b) => {}
        (Some(b), Some(c)) => out.push(
            d,
            "spec.process.user",
            format!("{c} differs from the base's {b} and admits an identity it does not: another identity owns other files, so it is not shown to be tighter"),
        ),
        _ if c_user == b_user => {}
        _ => out.push(
            d,
            "spec.process.user",
            format!("{c_user} differs from the base's {b_user} and is not a user bound"),
        ),
    }
    let b_set: Option<BTreeSet<String>> = b_caps
        .iter()
        .map(|c| parse_capability(c).map(capability_name))
        .collect();
    for (i, c) in c_caps.iter().enumerate() {
        let field = format!("spec.process.capabilities[{i}]");
        match (parse_capability(c).map(capability_name), &b_set) {
            (Some(name), Some(b)) if b.contains(&name) => {}
            (Some(name), _) => out.push(d, field, format!("{name} is not kept by the base")),
            (None, _) => out.push(d, field, format!("{c:?} is not a capability")),
        }
    }
    if *b_nnp && !*c_nnp {
        out.push(
            d,
            "spec.process.noNewPrivileges",
            "false lets setuid binaries raise privileges, where the base sets no_new_privs",
        );
    }
}

fn resources(
    base: &ResourcePolicy,
    cand: &ResourcePolicy,
    b_proc: &ProcessPolicy,
    c_proc: &ProcessPolicy,
    out: &mut Out,
) {
    let ResourcePolicy {
        cpus: b_cpus,
        memory: b_memory,
        nofile: b_nofile,
        pids: b_pids,
    } = base;
    let ResourcePolicy {
        cpus: c_cpus,
        memory: c_memory,
        nofile: c_nofile,
        pids: c_pids,
    } = cand;
    let d = Dimension::Resources;
    if c_memory > b_memory {
        out.push(
            d,
            "spec.resources.memory",
            format!("{c_memory}, more than the base's {b_memory}"),
        );
    }
    // A NaN (which validation refuses) compares as neither, so counts as looser too.
    if !matches!(
        c_cpus.0.partial_cmp(&b_cpus.0),
        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
    ) {
        out.push(
            d,
            "spec.resources.cpus",
            format!("{}, more than the base's {}", c_cpus.0, b_cpus.0),
        );
    }
    if c_pids > b_pids {
        out.push(
            d,
            "spec.resources.pids",
            format!("{c_pids}, more than the base's {b_pids}"),
        );
    }
    if c_nofile > b_nofile {
        out.push(
            d,
            "spec.resources.nofile",
            format!("{c_nofile}, more than the base's {b_nofile}"),
        );
    }
    match (b_proc.timeout, c_proc.timeout) {
        (Some(b), None) => out.push(
            d,
            "spec.process.timeout",
            format!("none, where the base kills the container after {b}"),
        ),
        (Some(b), Some(c)) if c > b => out.push(
            d,
            "spec.process.timeout",
            format!("{c}, longer than the base's {b}"),
        ),
        _ => {}
    }
}

fn audit(base: &AuditPolicy, cand: &AuditPolicy, out: &mut Out) {
    let AuditPolicy {
        on_violation: b_on,
        record: b_record,
    } = base;
    let AuditPolicy {
        on_violation: c_on,
        record: c_record,
    } = cand;
    let d = Dimension::Audit;
    for cat in b_record {
        if !c_record.contains(cat) {
            let name = match serde_json::to_value(cat) {
                Ok(serde_json::Value::String(s)) => s,
                _ => format!("{cat:?}"),
            };
            out.push(
                d,
                "spec.audit.record",
                format!("does not record {name} events, which the base records"),
            );
        }
    }
    if *b_on == ViolationAction::Kill && *c_on == ViolationAction::Record {
        out.push(
            d,
            "spec.audit.onViolation",
            "record only, where the base kills the container on a violation",
        );
    }
}
