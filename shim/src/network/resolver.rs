//! Pointing a sandbox's `/etc/resolv.conf` at its DNS forwarder.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use safehouse_policy::CompiledPolicy;
use serde_json::Value;

use super::dns::LISTEN;
use crate::error::{Result, ShimError};

/// Points the container's `/etc/resolv.conf` at the sandbox's DNS forwarder (a file written
/// into the bundle, bind-mounted read-only) and returns the upstream resolvers: the runtime
/// config's `dns_upstreams`, else the nameservers of the resolv.conf the container was given,
/// else the node's. The confined spec (in memory) gains the mount; the caller writes it.
pub fn point_resolver(
    configured: &[IpAddr],
    spec: &Value,
    bundle: &Path,
    compiled: &mut CompiledPolicy,
) -> Result<Vec<IpAddr>> {
    let given_path = spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["destination"] == "/etc/resolv.conf")
        .and_then(|m| m["source"].as_str())
        .map(PathBuf::from);
    let given = given_path
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let node = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut upstreams = configured.to_vec();
    if upstreams.is_empty() {
        upstreams = nameservers(&given);
    }
    if upstreams.is_empty() {
        upstreams = nameservers(&node)
            .into_iter()
            .filter(|a| !a.is_loopback())
            .collect();
    }
    upstreams.retain(|a| !a.is_loopback() && !a.is_unspecified());
    if upstreams.is_empty() {
        return Err(ShimError::FailedPrecondition(format!(
            "policy {:?} names hosts, but no upstream DNS resolver is known: set dns_upstreams in the runtime config or give the container an /etc/resolv.conf",
            compiled.name
        )));
    }
    let ours = bundle.join(crate::bundle::RESOLV_CONF);
    std::fs::write(&ours, sandbox_resolv_conf(&given))
        .map_err(|e| ShimError::io(format!("write {}", ours.display()), e))?;
    let mount = oci_spec::runtime::MountBuilder::default()
        .destination("/etc/resolv.conf")
        .typ("bind")
        .source(&ours)
        .options(
            ["rbind", "ro", "nosuid", "nodev", "noexec"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(|e| ShimError::Internal(format!("resolv.conf mount: {e}")))?;
    let mounts = compiled.spec.mounts_mut().get_or_insert_with(Vec::new);
    mounts.retain(|m| m.destination() != Path::new("/etc/resolv.conf"));
    mounts.push(mount);
    Ok(upstreams)
}

/// Nameserver addresses in a resolv.conf text.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse::<IpAddr>().ok())
                .flatten()
        })
        .collect()
}

/// The resolv.conf the sandbox gets: only the forwarder (search and options lines kept).
pub fn sandbox_resolv_conf(given: &str) -> String {
    let mut out = format!(
        "# written by Safehouse: the sandbox's DNS forwarder\nnameserver {}\n",
        LISTEN.ip()
    );
    for l in given.lines() {
        let first = l.split_whitespace().next();
        if matches!(first, Some("search") | Some("domain") | Some("options")) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_points_at_the_forwarder_only() {
        let given = "search svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n";
        assert_eq!(
            nameservers(given),
            vec![
                "10.96.0.10".parse::<IpAddr>().expect("ip"),
                "fd00::a".parse().expect("ip")
            ]
        );
        let ours = sandbox_resolv_conf(given);
        assert_eq!(nameservers(&ours), vec![LISTEN.ip()]);
        assert!(ours.contains("search svc.cluster.local") && ours.contains("options ndots:5"));
    }
}
