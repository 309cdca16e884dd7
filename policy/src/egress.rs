//! Network allowlist entries: `egress` (`host:port`, `host`, `cidr`, `cidr:port`) and `ingress`
//! sources (`cidr`, `cidr:port`). Parsing only; `netfilter` turns them into rules.

use std::fmt;
use std::net::IpAddr;

/// One parsed `network.egress` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRule {
    /// A DNS name (optionally `*.`-prefixed), optionally with one port.
    Host {
        /// Lowercase host name.
        name: String,
        /// Destination port; `None` means any.
        port: Option<u16>,
    },
    /// An address range, optionally with one port.
    Cidr {
        /// Network address.
        addr: IpAddr,
        /// Prefix length.
        prefix: u8,
        /// Destination port; `None` means any.
        port: Option<u16>,
    },
}

/// Why an egress entry is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} entry {entry:?}: {reason} (expected {expected})")]
pub struct EgressError {
    /// `egress` or `ingress`.
    pub kind: &'static str,
    /// What the entry may look like.
    pub expected: &'static str,
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl EgressRule {
    /// Parse one entry.
    pub fn parse(entry: &str) -> Result<Self, EgressError> {
        let err = |reason| EgressError {
            kind: "egress",
            expected: "host:port, host, cidr or cidr:port",
            entry: entry.to_string(),
            reason,
        };
        let e = entry.trim();
        if e.is_empty() {
            return Err(err("empty"));
        }
        // `[v6cidr]:port`
        if let Some(rest) = e.strip_prefix('[') {
            let (cidr, port) = rest.split_once("]:").ok_or_else(|| err("unclosed '['"))?;
            let (addr, prefix) = parse_cidr(cidr).ok_or_else(|| err("bad address range"))?;
            return Ok(EgressRule::Cidr {
                addr,
                prefix,
                port: Some(parse_port(port).ok_or_else(|| err("bad port"))?),
            });
        }
        // A bare range (v4 or v6) or a bare address.
        if let Some((addr, prefix)) = parse_cidr(e) {
            return Ok(EgressRule::Cidr {
                addr,
                prefix,
                port: None,
            });
        }
        let Some((head, port)) = e.rsplit_once(':') else {
            return if valid_host(e) {
                Ok(EgressRule::Host {
                    name: e.to_ascii_lowercase(),
                    port: None,
                })
            } else {
                Err(err("bad host name"))
            };
        };
        let port = parse_port(port).ok_or_else(|| err("bad port"))?;
        if let Some((addr, prefix)) = parse_cidr(head) {
            if addr.is_ipv6() {
                return Err(err("write an IPv6 range with a port as [cidr]:port"));
            }
            return Ok(EgressRule::Cidr {
                addr,
                prefix,
                port: Some(port),
            });
        }
        if valid_host(head) {
            Ok(EgressRule::Host {
                name: head.to_ascii_lowercase(),
                port: Some(port),
            })
        } else {
            Err(err("bad host name"))
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressRule::Host { name, port: None } => write!(f, "{name}"),
            EgressRule::Host {
                name,
                port: Some(port),
            } => write!(f, "{name}:{port}"),
            EgressRule::Cidr {
                addr,
                prefix,
                port: None,
            } => write!(f, "{addr}/{prefix}"),
            EgressRule::Cidr {
                addr: addr @ IpAddr::V6(_),
                prefix,
                port: Some(p),
            } => write!(f, "[{addr}/{prefix}]:{p}"),
            EgressRule::Cidr {
                addr,
                prefix,
                port: Some(p),
            } => write!(f, "{addr}/{prefix}:{p}"),
        }
    }
}

/// One parsed `network.ingress` source: who may open connections to the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressRule {
    /// Source network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
    /// Port in the sandbox the source may connect to; `None` means any.
    pub port: Option<u16>,
}

impl IngressRule {
    /// Parse one entry: `cidr`, `cidr:port` or `[v6cidr]:port`.
    pub fn parse(entry: &str) -> Result<Self, EgressError> {
        let err = |reason| EgressError {
            kind: "ingress",
            expected: "cidr or cidr:port",
            entry: entry.to_string(),
            reason,
        };
        match EgressRule::parse(entry) {
            Ok(EgressRule::Cidr { addr, prefix, port }) => Ok(IngressRule { addr, prefix, port }),
            Ok(EgressRule::Host { .. }) => {
                Err(err("a source must be an address range, not a name"))
            }
            Err(e) => Err(err(e.reason)),
        }
    }
}

impl fmt::Display for IngressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        EgressRule::Cidr {
            addr: self.addr,
            prefix: self.prefix,
            port: self.port,
        }
        .fmt(f)
    }
}

fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
        None => {
            let a = s.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((addr, prefix))
}

fn valid_host(h: &str) -> bool {
    let h = h.strip_prefix("*.").unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `outer/outer_len` contains `inner/inner_len` (same family, at least as long a
/// prefix, same network bits).
pub fn range_contains(outer: IpAddr, outer_len: u8, inner: IpAddr, inner_len: u8) -> bool {
    if inner_len < outer_len {
        return false;
    }
    match (outer, inner) {
        (IpAddr::V4(o), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(outer_len)).unwrap_or(0);
            u32::from(o) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(o), IpAddr::V6(i)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(outer_len))
                .unwrap_or(0);
            u128::from(o) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            EgressRule::parse("api.example.com:443"),
            Ok(EgressRule::Host {
                name: "api.example.com".into(),
                port: Some(443)
            })
        );
        assert_eq!(
            EgressRule::parse("Example.com"),
            Ok(EgressRule::Host {
                name: "example.com".into(),
                port: None
            })
        );
        assert!(matches!(
            EgressRule::parse("10.0.0.0/8"),
            Ok(EgressRule::Cidr {
                prefix: 8,
                port: None,
                ..
            })
        ));
        assert!(matches!(
            EgressRule::parse("10.0.0.0/8:53"),
            Ok(EgressRule::Cidr { port: Some(53), .. })
        ));
        assert!(matches!(
            EgressRule::parse("[fd00::/8]:443"),
            Ok(EgressRule::Cidr {
                port: Some(443),
                ..
            })
        ));
        assert!(matches!(
            EgressRule::parse("fd00::/8"),
            Ok(EgressRule::Cidr { port: None, .. })
        ));
        assert!(matches!(
            EgressRule::parse("*.pypi.org:443"),
            Ok(EgressRule::Host { .. })
        ));
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            "example.com:0",
            "example.com:99999",
            "10.0.0.0/33",
            "bad_host:80",
            "[fd00::/8",
            ":80",
            "",
        ] {
            assert!(EgressRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ingress_takes_ranges_only() {
        assert_eq!(
            IngressRule::parse("10.0.0.0/8:8080").map(|r| r.to_string()),
            Ok("10.0.0.0/8:8080".to_string())
        );
        assert!(IngressRule::parse("fd00::1").is_ok());
        let err = IngressRule::parse("kubelet.local:80").expect_err("a name");
        assert!(err.to_string().contains("invalid ingress entry"), "{err}");
    }
}
