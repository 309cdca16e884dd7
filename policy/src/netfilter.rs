//! The network filter of a sandbox: what `network.mode` `allowlist` or `open` compile to, and
//! its rendering as one nftables `inet` table (an `nft -f` script) for the container's own
//! network namespace. Pure: the shim gathers the node's facts ([`NodeFacts`]), installs the
//! script and feeds DNS-learned addresses into the table's sets ([`learn_script`]).
//!
//! Order of the output chain: loopback, established flows and IPv6 neighbour discovery pass;
//! the shim's DNS forwarder (packets carrying [`FORWARDER_MARK`]) may reach its upstream on
//! port 53; entries that name a protected range (cloud metadata, link-local, the node's own
//! addresses) are accepted; every other packet to a protected range is refused; then the
//! allowlist entries (or, for `open`, everything) are accepted; the rest is refused. Refused
//! means a TCP reset for TCP and ICMP "administratively prohibited" for everything else, so a
//! program sees ECONNREFUSED / EHOSTUNREACH at once instead of a timeout.

use std::fmt::Write as _;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::egress::{range_contains, EgressRule, IngressRule};

/// Firewall mark the shim's DNS forwarder puts on its upstream sockets (`SO_MARK`); only
/// packets carrying it may reach the upstream resolver's port 53.
pub const FORWARDER_MARK: u32 = 0x5afe_0053;

/// The NFLOG group refused outbound packets other than TCP are logged to (in the sandbox's own
/// network namespace, so the group number is private to it), at most [`REFUSED_LOG_RATE`] a
/// second per address family: the shim reads them and records a `policy`/`violation` event
/// each. A refused TCP connect needs none: gVisor's `syscall/connect` point records it with
/// ECONNREFUSED. Multicast and broadcast are not logged: the namespace's own kernel sends
/// those (MLD, IGMP reports), not the sandbox.
pub const REFUSED_LOG_GROUP: u16 = 0x5afe;

/// The table's counter of refused packets eligible for the log, logged or not (over the rate):
/// at delete the shim reports the ones it did not record.
pub const REFUSED_COUNTER: &str = "refused_out";

/// Bytes of each refused packet the log copies (IP and transport headers): the rule's
/// `snaplen` and the copy range the shim's reader asks for.
pub const REFUSED_LOG_SNAPLEN: u32 = 128;

/// Refused packets logged per second at most (a burst of twice that), so a program spraying
/// datagrams cannot flood the audit stream.
pub const REFUSED_LOG_RATE: u32 = 20;

/// Prefix of every table the shim installs (followed by a digest of the sandbox id).
pub const TABLE_PREFIX: &str = "safehouse_";

/// Ranges closed unless an entry inside them names them explicitly.
pub const PROTECTED: &[(&str, &str)] = &[
    ("169.254.169.254/32", "cloud metadata service"),
    ("169.254.0.0/16", "IPv4 link-local"),
    ("fd00:ec2::254/128", "cloud metadata service (IPv6)"),
    ("fe80::/10", "IPv6 link-local"),
];

/// Ranges an address learned from a DNS answer may point into only when an egress range
/// covers it (the browser's private-network rule): a listed name whose answer points here is
/// refused, so a name the agent may resolve cannot be turned against the cluster, the node or
/// the sandbox's own loopback by rebinding. [`PROTECTED`] ranges and the node's own addresses
/// are refused in the same way.
pub const PRIVATE: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("10.0.0.0/8", "RFC 1918 private"),
    ("100.64.0.0/10", "CGNAT shared space"),
    ("127.0.0.0/8", "loopback"),
    ("172.16.0.0/12", "RFC 1918 private"),
    ("192.168.0.0/16", "RFC 1918 private"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "IPv6 loopback"),
    ("::ffff:0.0.0.0/96", "IPv4-mapped"),
    ("fc00::/7", "IPv6 unique local"),
    ("ff00::/8", "IPv6 multicast"),
];

/// Whether everything not protected is allowed (`open`) or only the entries (`allowlist`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterMode {
    /// Only the egress entries.
    Allowlist,
    /// Everything except the protected ranges (unless named).
    Open,
}

/// The compiled network filter of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFilter {
    /// `allowlist` or `open`.
    pub mode: FilterMode,
    /// Egress entries, in policy order.
    pub egress: Vec<EgressRule>,
    /// Sources allowed to open connections to the sandbox.
    pub ingress: Vec<IngressRule>,
}

/// What the renderer needs to know about the node (the shim finds it out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node's own addresses (from its root network namespace), closed by default.
    pub node_addrs: Vec<IpAddr>,
    /// Upstream resolvers the DNS forwarder may reach (with [`FORWARDER_MARK`]).
    pub dns_upstreams: Vec<IpAddr>,
}

/// One answer the DNS forwarder let through: these addresses are allowed for `ttl` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// The addresses of the answer.
    pub addrs: Vec<IpAddr>,
    /// Ports the name is allowed on; empty means any port and protocol.
    pub ports: Vec<u16>,
    /// Seconds the answer may be used (at least 1).
    pub ttl: u32,
}

/// The table name for a sandbox: recognisable prefix plus a digest of the id (ids may be long
/// and contain characters nft does not accept in names).
pub fn table_name(sandbox_id: &str) -> String {
    let digest = Sha256::digest(sandbox_id.as_bytes());
    format!("{TABLE_PREFIX}{}", hex::encode(&digest[..8]))
}

impl NetFilter {
    /// Host-name entries (the DNS forwarder answers only these).
    pub fn hosts(&self) -> impl Iterator<Item = (&str, Option<u16>)> {
        self.egress.iter().filter_map(|r| match r {
            EgressRule::Host { name, port } => Some((name.as_str(), *port)),
            EgressRule::Cidr { .. } => None,
        })
    }

    /// The ports `name` is allowed on, or `None` if no entry names it. An empty list means any
    /// port. `*.example.com` matches names below example.com, not example.com itself.
    pub fn ports_for(&self, name: &str) -> Option<Vec<u16>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let mut ports = Vec::new();
        let mut any = false;
        let mut found = false;
        for (pattern, port) in self.hosts() {
            let hit = match pattern.strip_prefix("*.") {
                Some(base) => below(&name, base),
                None => name == pattern,
            };
            if hit {
                found = true;
                match port {
                    Some(p) => ports.push(p),
                    None => any = true,
                }
            }
        }
        ports.sort_unstable();
        ports.dedup();
        found.then(|| if any { Vec::new() } else { ports })
    }

    /// The `*.` entry `name` falls under, when no entry names it exactly: the DNS forwarder
    /// bounds how many names below a wildcard it asks for.
    pub fn wildcard_for(&self, name: &str) -> Option<&str> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.hosts().any(|(pattern, _)| pattern == name) {
            return None;
        }
        self.hosts().map(|(pattern, _)| pattern).find(|pattern| {
            pattern
                .strip_prefix("*.")
                .is_some_and(|base| below(&name, base))
        })
    }

    /// Whether an address a DNS answer gave may be opened: not when it lies in a [`PRIVATE`]
    /// or [`PROTECTED`] range or is one of the node's own addresses, unless an egress range
    /// covers it (for a protected range, one inside it, as the table requires). The error
    /// says which range refused it.
    pub fn learnable(&self, addr: IpAddr, node_addrs: &[IpAddr]) -> Result<(), String> {
        let full = if addr.is_ipv4() { 32 } else { 128 };
        let covered_within = |outer: IpAddr, outer_len: u8| {
            self.egress.iter().any(|r| match r {
                EgressRule::Cidr {
                    addr: a, prefix, ..
                } => {
                    range_contains(*a, *prefix, addr, full)
                        && range_contains(outer, outer_len, *a, *prefix)
                }
                EgressRule::Host { .. } => false,
            })
        };
        for (cidr, what) in PROTECTED {
            if let Some((outer, len)) = parse_range(cidr) {
                if range_contains(outer, len, addr, full) && !covered_within(outer, len) {
                    return Err(format!("{addr} is in {cidr} ({what}), closed unless an egress entry inside it names it"));
                }
            }
        }
        if node_addrs.contains(&addr) && !covered_within(addr, full) {
            return Err(format!("{addr} is one of the node's own addresses"));
        }
        let any_range = if addr.is_ipv4() {
            (IpAddr::from([0u8; 4]), 0)
        } else {
            (IpAddr::from([0u16; 8]), 0)
        };
        for (cidr, what) in PRIVATE {
            if let Some((outer, len)) = parse_range(cidr) {
                if range_contains(outer, len, addr, full)
                    && !covered_within(any_range.0, any_range.1)
                {
                    return Err(format!(
                        "{addr} is in {cidr} ({what}), which no egress range covers"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The `nft -f` script that (re)creates the sandbox's table atomically.
    pub fn render(&self, table: &str, sandbox_id: &str, facts: &NodeFacts) -> String {
        let mut s = String::new();
        // Declare-then-delete makes the script idempotent; nft applies it as one transaction.
        let _ = writeln!(s, "table inet {table} {{}}");
        let _ = writeln!(s, "delete table inet {table}");
        let _ = writeln!(s, "table inet {table} {{");
        let _ = writeln!(
            s,
            "  comment \"safehouse sandbox {}\"",
            comment_safe(sandbox_id)
        );
        for (name, kind) in [
            ("host4_any", "ipv4_addr"),
            ("host4_port", "ipv4_addr . inet_service"),
            ("host6_any", "ipv6_addr"),
            ("host6_port", "ipv6_addr . inet_service"),
        ] {
            let _ = writeln!(s, "  set {name} {{ type {kind}; flags timeout; }}");
        }
        let _ = writeln!(s, "  counter {REFUSED_COUNTER} {{}}");
        s.push_str("  chain refuse {\n");
        s.push_str("    meta l4proto tcp reject with tcp reset\n");
        s.push_str("    reject with icmpx admin-prohibited\n");
        s.push_str("  }\n");
        s.push_str("  chain refuse_out {\n");
        for unicast in [
            "ip daddr != { 224.0.0.0/4, 255.255.255.255 }",
            "ip6 daddr != ff00::/8",
        ] {
            let _ = writeln!(
                s,
                "    meta l4proto != tcp {unicast} counter name \"{REFUSED_COUNTER}\" limit rate {REFUSED_LOG_RATE}/second burst {} packets log group {REFUSED_LOG_GROUP} snaplen {REFUSED_LOG_SNAPLEN}",
                REFUSED_LOG_RATE * 2
            );
        }
        s.push_str("    goto refuse\n");
        s.push_str("  }\n");

        s.push_str("  chain output {\n");
        s.push_str("    type filter hook output priority filter; policy accept;\n");
        s.push_str("    oifname \"lo\" accept\n");
        s.push_str("    ct state established,related accept\n");
        s.push_str("    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept\n");
        for up in &facts.dns_upstreams {
            let fam = family(up);
            let _ = writeln!(
                s,
                "    meta mark {FORWARDER_MARK:#x} {fam} daddr {up} meta l4proto {{ tcp, udp }} th dport 53 accept"
            );
        }
        let protected = protected_ranges(facts);
        let (named, rest): (Vec<&EgressRule>, Vec<&EgressRule>) =
            self.egress.iter().partition(|r| match r {
                EgressRule::Cidr { addr, prefix, .. } => protected
                    .iter()
                    .any(|(p_addr, p_prefix)| range_contains(*p_addr, *p_prefix, *addr, *prefix)),
                EgressRule::Host { .. } => false,
            });
        for rule in named {
            s.push_str(&accept_line(rule));
        }
        for (addr, prefix) in &protected {
            let _ = writeln!(
                s,
                "    {} daddr {addr}/{prefix} goto refuse_out",
                family(addr)
            );
        }
        match self.mode {
            FilterMode::Open => s.push_str("    accept\n"),
            FilterMode::Allowlist => {
                for rule in rest {
                    s.push_str(&accept_line(rule));
                }
                if self.hosts().next().is_some() {
                    s.push_str("    ip daddr @host4_any accept\n");
                    s.push_str(
                        "    meta l4proto { tcp, udp } ip daddr . th dport @host4_port accept\n",
                    );
                    s.push_str("    ip6 daddr @host6_any accept\n");
                    s.push_str(
                        "    meta l4proto { tcp, udp } ip6 daddr . th dport @host6_port accept\n",
                    );
                }
                s.push_str("    goto refuse_out\n");
            }
        }
        s.push_str("  }\n");

        s.push_str("  chain input {\n");
        s.push_str("    type filter hook input priority filter; policy accept;\n");
        s.push_str("    iifname \"lo\" accept\n");
        s.push_str("    ct state established,related accept\n");
        s.push_str("    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept\n");
        for src in &self.ingress {
            let fam = family(&src.addr);
            let port = match src.port {
                Some(p) => format!(" meta l4proto {{ tcp, udp }} th dport {p}"),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "    {fam} saddr {}/{}{port} accept",
                src.addr, src.prefix
            );
        }
        s.push_str("    goto refuse\n");
        s.push_str("  }\n");
        s.push_str("}\n");
        s
    }
}

/// The `nft -f` script adding one DNS answer's addresses to the table's sets. An element that
/// is already there gets the new answer's timeout: `add` alone would keep the old expiry, so
/// each element is added (a no-op if present), deleted and added again in one transaction.
pub fn learn_script(table: &str, learned: &Learned) -> String {
    let ttl = learned.ttl.max(1);
    let mut s = String::new();
    let mut element = |set: String, key: String| {
        let _ = writeln!(
            s,
            "add element inet {table} {set} {{ {key} timeout {ttl}s }}"
        );
        let _ = writeln!(s, "delete element inet {table} {set} {{ {key} }}");
        let _ = writeln!(
            s,
            "add element inet {table} {set} {{ {key} timeout {ttl}s }}"
        );
    };
    for addr in &learned.addrs {
        let v = if addr.is_ipv4() { 4 } else { 6 };
        if learned.ports.is_empty() {
            element(format!("host{v}_any"), addr.to_string());
        }
        for port in &learned.ports {
            element(format!("host{v}_port"), format!("{addr} . {port}"));
        }
    }
    s
}

/// Whether `name` lies below `base` (not `base` itself).
fn below(name: &str, base: &str) -> bool {
    name.strip_suffix(base)
        .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
}

/// `addr/prefix` of a range constant.
fn parse_range(cidr: &str) -> Option<(IpAddr, u8)> {
    let (a, p) = cidr.split_once('/')?;
    Some((a.parse().ok()?, p.parse().ok()?))
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn accept_line(rule: &EgressRule) -> String {
    match rule {
        EgressRule::Cidr { addr, prefix, port } => {
            let fam = family(addr);
            match port {
                Some(p) => format!(
                    "    {fam} daddr {addr}/{prefix} meta l4proto {{ tcp, udp }} th dport {p} accept\n"
                ),
                None => format!("    {fam} daddr {addr}/{prefix} accept\n"),
            }
        }
        EgressRule::Host { .. } => String::new(),
    }
}

/// The protected ranges plus the node's own addresses, in a fixed order.
fn protected_ranges(facts: &NodeFacts) -> Vec<(IpAddr, u8)> {
    let mut out: Vec<(IpAddr, u8)> = PROTECTED
        .iter()
        .filter_map(|(cidr, _)| parse_range(cidr))
        .collect();
    let mut node: Vec<IpAddr> = facts
        .node_addrs
        .iter()
        .copied()
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect();
    node.sort();
    node.dedup();
    for a in node {
        let full = if a.is_ipv4() { 32 } else { 128 };
        if !out.iter().any(|(p, l)| range_contains(*p, *l, a, full)) {
            out.push((a, full));
        }
    }
    out
}

/// Keeps only characters that cannot end or break an nft string.
fn comment_safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(mode: FilterMode, egress: &[&str], ingress: &[&str]) -> NetFilter {
        NetFilter {
            mode,
            egress: egress
                .iter()
                .map(|e| EgressRule::parse(e).expect("entry"))
                .collect(),
            ingress: ingress
                .iter()
                .map(|e| IngressRule::parse(e).expect("entry"))
                .collect(),
        }
    }

    fn facts() -> NodeFacts {
        NodeFacts {
            node_addrs: vec![
                "192.0.2.7".parse().expect("ip"),
                "127.0.0.1".parse().expect("ip"),
                "2001:db8::7".parse().expect("ip"),
            ],
            dns_upstreams: vec!["10.0.0.53".parse().expect("ip")],
        }
    }

    fn position(script: &str, needle: &str) -> usize {
        script
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{script}"))
    }

    #[test]
    fn allowlist_accepts_entries_after_the_protected_ranges_and_refuses_the_rest() {
        let f = filter(
            FilterMode::Allowlist,
            &["10.1.0.0/16:443", "fd00::/8", "api.example.com:443"],
            &[],
        );
        let s = f.render("safehouse_t", "sb-1", &facts());
        let metadata = position(&s, "ip daddr 169.254.169.254/32 goto refuse");
        let node = position(&s, "ip daddr 192.0.2.7/32 goto refuse");
        let node6 = position(&s, "ip6 daddr 2001:db8::7/128 goto refuse");
        let entry = position(
            &s,
            "ip daddr 10.1.0.0/16 meta l4proto { tcp, udp } th dport 443 accept",
        );
        let v6 = position(&s, "ip6 daddr fd00::/8 accept");
        let learned = position(&s, "ip daddr . th dport @host4_port accept");
        let last = position(&s, "    goto refuse_out\n  }\n  chain input");
        assert!(metadata < entry && node < entry && node6 < entry);
        assert!(entry < v6 && v6 < learned && learned < last);
        assert!(!s.contains("127.0.0.1"), "loopback is not a node address");
        assert!(s.contains(
            "meta mark 0x5afe0053 ip daddr 10.0.0.53 meta l4proto { tcp, udp } th dport 53 accept"
        ));
        assert!(s.contains("meta l4proto tcp reject with tcp reset"));
        // Refused outbound unicast other than TCP is logged, then refused like the rest.
        let out = position(&s, "  chain refuse_out {\n");
        // Counted before the rate limit: what the log missed is known.
        let log4 = position(&s, "    meta l4proto != tcp ip daddr != { 224.0.0.0/4, 255.255.255.255 } counter name \"refused_out\" limit rate 20/second burst 40 packets log group 23294 snaplen 128\n");
        let log6 = position(&s, "    meta l4proto != tcp ip6 daddr != ff00::/8 counter name \"refused_out\" limit rate 20/second burst 40 packets log group 23294 snaplen 128\n");
        assert!(position(&s, "  counter refused_out {}\n") < position(&s, "  chain refuse {"));
        assert!(out < log4 && log4 < log6);
        assert!(log6 < position(&s, "    goto refuse\n  }\n  chain output"));
        assert_eq!(
            s.matches("log group").count(),
            2,
            "only refused egress is logged"
        );
        assert!(s.starts_with("table inet safehouse_t {}\ndelete table inet safehouse_t\n"));
    }

    #[test]
    fn rendering_is_deterministic() {
        let f = filter(
            FilterMode::Allowlist,
            &["a.example:80", "10.0.0.0/8"],
            &["10.9.0.0/16:8080"],
        );
        assert_eq!(f.render("t", "id", &facts()), f.render("t", "id", &facts()));
    }

    #[test]
    fn only_an_entry_inside_a_protected_range_opens_it() {
        let named = filter(FilterMode::Allowlist, &["169.254.169.254:80"], &[]);
        let s = named.render("t", "id", &NodeFacts::default());
        assert!(
            position(
                &s,
                "ip daddr 169.254.169.254/32 meta l4proto { tcp, udp } th dport 80 accept"
            ) < position(&s, "ip daddr 169.254.169.254/32 goto refuse")
        );
        // A wide range does not name the metadata service.
        let wide = filter(FilterMode::Allowlist, &["0.0.0.0/0"], &[]);
        let s = wide.render("t", "id", &NodeFacts::default());
        assert!(
            position(&s, "ip daddr 169.254.169.254/32 goto refuse")
                < position(&s, "ip daddr 0.0.0.0/0 accept")
        );
    }

    #[test]
    fn open_keeps_the_safe_defaults_and_refuses_inbound() {
        let f = filter(FilterMode::Open, &[], &[]);
        let s = f.render("t", "id", &facts());
        assert!(
            position(&s, "ip6 daddr fd00:ec2::254/128 goto refuse")
                < position(&s, "    accept\n  }")
        );
        let input = &s[position(&s, "chain input")..];
        assert!(input.contains("goto refuse"), "{input}");
        assert!(!s.contains("@host4_any"), "no learned sets used by open");
    }

    #[test]
    fn ingress_sources_are_accepted_in_the_input_chain() {
        let f = filter(
            FilterMode::Allowlist,
            &[],
            &["10.9.0.0/16:8080", "fd00::/8"],
        );
        let s = f.render("t", "id", &NodeFacts::default());
        let input = &s[position(&s, "chain input")..];
        assert!(
            input.contains("ip saddr 10.9.0.0/16 meta l4proto { tcp, udp } th dport 8080 accept")
        );
        assert!(input.contains("ip6 saddr fd00::/8 accept"));
    }

    #[test]
    fn host_names_match_exactly_or_below_a_wildcard() {
        let f = filter(
            FilterMode::Allowlist,
            &[
                "api.example.com:443",
                "api.example.com:80",
                "*.pypi.org",
                "x.test:1",
            ],
            &[],
        );
        assert_eq!(f.ports_for("API.example.com."), Some(vec![80, 443]));
        assert_eq!(f.ports_for("files.pypi.org"), Some(vec![]));
        assert_eq!(f.ports_for("pypi.org"), None);
        assert_eq!(f.ports_for("evilpypi.org"), None);
        assert_eq!(f.ports_for("example.com"), None);
    }

    #[test]
    fn answers_into_private_ranges_are_not_learned_unless_a_range_covers_them() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let node = [ip("192.0.2.7")];
        let names_only = filter(FilterMode::Allowlist, &["api.test:443"], &[]);
        for private in [
            "10.1.2.3",
            "127.0.0.1",
            "172.16.0.9",
            "192.168.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "fd00::1",
            "::1",
            "::ffff:10.0.0.1",
            "169.254.169.254",
            "fe80::1",
            "192.0.2.7",
        ] {
            let refused = names_only.learnable(ip(private), &node);
            assert!(refused.is_err(), "{private} should not be learnable");
        }
        assert!(names_only
            .learnable(ip("10.1.2.3"), &node)
            .is_err_and(|e| e.contains("10.0.0.0/8 (RFC 1918 private)")));
        assert_eq!(names_only.learnable(ip("198.51.100.4"), &node), Ok(()));
        assert_eq!(names_only.learnable(ip("2001:db8::4"), &node), Ok(()));
        let covered = filter(
            FilterMode::Allowlist,
            &[
                "api.test:443",
                "10.1.0.0/16:5432",
                "fd00::/8",
                "169.254.169.254:80",
            ],
            &[],
        );
        assert_eq!(covered.learnable(ip("10.1.2.3"), &node), Ok(()));
        assert!(covered.learnable(ip("10.2.0.1"), &node).is_err());
        assert_eq!(covered.learnable(ip("fd00::1"), &node), Ok(()));
        assert_eq!(covered.learnable(ip("169.254.169.254"), &node), Ok(()));
        assert!(covered.learnable(ip("169.254.1.1"), &node).is_err());
        // A range wider than a protected one does not open it, nor the node's addresses.
        let wide = filter(FilterMode::Allowlist, &["0.0.0.0/0"], &[]);
        assert_eq!(wide.learnable(ip("10.1.2.3"), &node), Ok(()));
        assert!(wide.learnable(ip("169.254.169.254"), &node).is_err());
        assert!(wide.learnable(ip("192.0.2.7"), &node).is_err());
    }

    #[test]
    fn wildcard_names_are_told_apart_from_exact_ones() {
        let f = filter(FilterMode::Allowlist, &["*.tun.test", "a.tun.test:80"], &[]);
        assert_eq!(f.wildcard_for("x.y.TUN.test."), Some("*.tun.test"));
        assert_eq!(f.wildcard_for("a.tun.test"), None);
        assert_eq!(f.wildcard_for("tun.test"), None);
        assert_eq!(f.wildcard_for("other.test"), None);
    }

    #[test]
    fn learned_addresses_get_the_answer_ttl() {
        let s = learn_script(
            "t",
            &Learned {
                addrs: vec![
                    "10.0.0.1".parse().expect("ip"),
                    "fd00::1".parse().expect("ip"),
                ],
                ports: vec![443],
                ttl: 0,
            },
        );
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines,
            [
                "add element inet t host4_port { 10.0.0.1 . 443 timeout 1s }",
                "delete element inet t host4_port { 10.0.0.1 . 443 }",
                "add element inet t host4_port { 10.0.0.1 . 443 timeout 1s }",
                "add element inet t host6_port { fd00::1 . 443 timeout 1s }",
                "delete element inet t host6_port { fd00::1 . 443 }",
                "add element inet t host6_port { fd00::1 . 443 timeout 1s }",
            ]
        );
        let any = learn_script(
            "t",
            &Learned {
                addrs: vec!["10.0.0.1".parse().expect("ip")],
                ports: vec![],
                ttl: 30,
            },
        );
        assert_eq!(
            any.lines().last(),
            Some("add element inet t host4_any { 10.0.0.1 timeout 30s }")
        );
    }

    #[test]
    fn table_names_are_recognisable_and_bounded() {
        let n = table_name(&"x".repeat(255));
        assert!(n.starts_with(TABLE_PREFIX) && n.len() == TABLE_PREFIX.len() + 16);
        assert_ne!(table_name("a"), table_name("b"));
        assert_eq!(comment_safe("a\"b;c d"), "abcd");
    }
}
