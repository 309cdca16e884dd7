//! A sandbox's network: the nftables table in the container's own namespace, the refusal log
//! that turns refused datagrams into audit events, and the DNS forwarder of an allowlist that
//! names hosts. Everything here runs in a namespace the container was given, never the node's.
//!
//! `netns` is the only place that enters a namespace; `filter` runs nft; `refusals` reads the
//! filter's NFLOG group; `dns` answers the sandbox's queries; `resolver` points the container's
//! `/etc/resolv.conf` at the forwarder; `events` turns what they report into audit events.

pub mod dns;
mod events;
pub mod filter;
pub mod netns;
pub mod refusals;
pub mod resolver;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use safehouse_policy::{NetFilter, NodeFacts, REFUSED_LOG_GROUP};
use tracing::info;

use crate::audit::{AuditOutput, SandboxAudit};
use crate::error::Result;
use crate::reaper::Reaper;
use dns::{DnsForwarder, OnQuery};
use filter::InstalledTable;
use refusals::{OnRefused, OnUnrecorded, RefusalLog};

/// A sandbox's network plumbing: its table, the reader of its refusals and, for host-name
/// entries, its DNS forwarder.
pub struct SandboxNetwork {
    /// The installed table.
    pub table: InstalledTable,
    /// The DNS forwarder, if the policy names hosts.
    pub dns: Option<DnsForwarder>,
    /// The reader of refused packets.
    pub refusals: RefusalLog,
    /// The handle that keeps a namespace runsc made (a spec entry without a path) the one
    /// the table's path names, for as long as the sandbox's network lives.
    pub pinned: Option<std::fs::File>,
}

impl SandboxNetwork {
    /// Installs the filter in `netns` (before runsc starts anything there), starts its refusal
    /// log and, when `upstreams` is given, the DNS forwarder. What it reports goes to `output`
    /// as events of `audit`'s sandbox. A failure removes what was installed.
    pub async fn start(
        reaper: &Reaper,
        netns: &Path,
        sandbox_id: &str,
        filter: &NetFilter,
        upstreams: Option<Vec<IpAddr>>,
        audit: &Arc<SandboxAudit>,
        output: &Arc<AuditOutput>,
    ) -> Result<SandboxNetwork> {
        let facts = NodeFacts {
            node_addrs: filter::node_addrs()?,
            dns_upstreams: upstreams.clone().unwrap_or_default(),
        };
        let started = std::time::Instant::now();
        let table = filter::install(reaper, netns, sandbox_id, filter, &facts).await?;
        info!(container = %sandbox_id, table = %table.table, elapsed_ms = started.elapsed().as_millis() as u64, "network filter installed");
        let on_refused: OnRefused = {
            let (audit, output, cid) = (audit.clone(), output.clone(), sandbox_id.to_string());
            Arc::new(move |r| output.submit(events::refusal(&audit, &cid, r)))
        };
        let on_unrecorded: OnUnrecorded = {
            let (audit, output) = (audit.clone(), output.clone());
            Box::new(move |missed| output.submit(events::unrecorded_refusals(&audit, missed)))
        };
        let refusals = match RefusalLog::start(netns, REFUSED_LOG_GROUP, on_refused, on_unrecorded)
        {
            Ok(log) => log,
            Err(e) => {
                filter::remove(reaper, &table).await;
                return Err(e);
            }
        };
        let dns = match upstreams {
            Some(ups) => {
                let on_query: OnQuery = {
                    let (audit, output) = (audit.clone(), output.clone());
                    let cid = sandbox_id.to_string();
                    Arc::new(move |v| output.submit(events::dns_query(&audit, &cid, v)))
                };
                let started = DnsForwarder::start(
                    netns,
                    ups,
                    filter.clone(),
                    facts.node_addrs.clone(),
                    table.clone(),
                    reaper.clone(),
                    on_query,
                );
                match started {
                    Ok(d) => Some(d),
                    Err(e) => {
                        refusals.stop();
                        filter::remove(reaper, &table).await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        Ok(SandboxNetwork {
            table,
            dns,
            refusals,
            pinned: None,
        })
    }

    /// Stops the forwarder and the refusal log, reports the refusals it did not record, and
    /// removes the table.
    pub async fn teardown(&self, reaper: &Reaper) {
        if let Some(dns) = &self.dns {
            dns.stop();
        }
        self.refusals.stop();
        if let Some(counted) = filter::refused_count(reaper, &self.table).await {
            self.refusals.report_unrecorded(counted);
        }
        filter::remove(reaper, &self.table).await;
    }
}
