//! The audit events the sandbox's network reports: DNS queries, refused packets, and the
//! refusals the log could not record one by one.

use safehouse_audit::event::NetworkInfo;
use safehouse_audit::{Action, AuditEvent, Category, DropSource};

use super::dns::QueryVerdict;
use super::refusals::Refused;
use crate::audit::SandboxAudit;

/// The audit event for one query the sandbox's DNS forwarder handled.
pub fn dns_query(audit: &SandboxAudit, container_id: &str, v: QueryVerdict) -> AuditEvent {
    let addrs: Vec<String> = v.addrs.iter().map(|a| a.to_string()).collect();
    let mut b = audit
        .ctx
        .event(Category::Network, Action::Dns)
        .container(container_id)
        .actor("safehouse-dns")
        .message(format!("dns {} {} {}", v.qtype, v.name, v.verdict))
        .detail("query", v.name)
        .detail("qtype", v.qtype)
        .detail("verdict", v.verdict)
        .detail("addresses", addrs)
        .detail("ttl", v.ttl);
    if let Some(r) = v.reason {
        b = b.detail("reason", r);
    }
    b.build()
}

/// The audit event for a packet the sandbox's filter refused (other than a TCP connect, which
/// gVisor's connect point records): `policy`/`violation` with the packet's destination.
pub fn refusal(audit: &SandboxAudit, container_id: &str, r: Refused) -> AuditEvent {
    let peer = r.destination;
    let place = match r.port {
        Some(port) if peer.is_ipv6() => format!("[{peer}]:{port}"),
        Some(port) => format!("{peer}:{port}"),
        None => peer.to_string(),
    };
    let protocol = r.protocol_name();
    let reason = format!("{protocol} packet to {place} refused: not allowed by the policy");
    let mut ev = audit
        .ctx
        .violation(container_id, "network.egress", &reason, "refused")
        .actor("safehouse-netfilter")
        .message(reason.clone())
        .detail("protocol", protocol)
        .detail("source", r.source.to_string())
        .build();
    ev.network = Some(NetworkInfo {
        family: Some(if peer.is_ipv6() { "inet6" } else { "inet" }.to_owned()),
        ip: Some(peer.to_string()),
        port: r.port,
        protocol: Some(i32::from(r.protocol)),
        ..Default::default()
    });
    ev
}

/// The audit event for the refused packets the filter counted but the shim did not record
/// (over the log's rate, or unread when the sandbox ended).
pub fn unrecorded_refusals(audit: &SandboxAudit, missed: u64) -> AuditEvent {
    audit
        .ctx
        .dropped(missed, DropSource::NetfilterLog)
        .message(format!(
            "{missed} refused packets not recorded one by one (over the filter log's rate of {} a second, or unread when the sandbox ended)",
            safehouse_policy::REFUSED_LOG_RATE
        ))
        .build()
}
