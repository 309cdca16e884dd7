//! Installing and removing a sandbox's nftables table in the container's own network namespace.
//!
//! The rules themselves are rendered by the policy crate (`safehouse_policy::netfilter`); this
//! module only runs `nft -f -` inside the namespace (setns in the child before exec) and finds
//! the node's own addresses. The node's root namespace is never touched: every nft command
//! runs in a namespace the container was given.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use safehouse_policy::netfilter::{learn_script, table_name};
use safehouse_policy::{Learned, NetFilter, NodeFacts, REFUSED_COUNTER};

use crate::error::{Result, ShimError};
use crate::reaper::Reaper;

/// Deadline for one nft command.
const NFT_DEADLINE: Duration = Duration::from_secs(10);

/// A sandbox's installed table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledTable {
    /// `inet` table name.
    pub table: String,
    /// The network namespace it lives in.
    pub netns: PathBuf,
}

fn nft_binary() -> PathBuf {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nft"))
}

/// Runs `nft -f -` with `script` inside the network namespace at `netns`; returns what it
/// printed.
pub async fn nft(reaper: &Reaper, netns: &Path, script: &str) -> Result<String> {
    let ns = super::netns::open(netns)?;
    let binary = nft_binary();
    let mut cmd = Command::new(&binary);
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    super::netns::enter_on_exec(&mut cmd, ns);
    let (mut child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| ShimError::io(format!("run {}", binary.display()), e))?;
    drop(cmd);
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let script = script.to_owned();
    let io = tokio::task::spawn_blocking(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(script.as_bytes());
        }
        // stdout is short (a listing) and read before stderr; nft writes errors only on failure.
        let mut out = String::new();
        if let Some(mut stdout) = stdout {
            let _ = stdout.read_to_string(&mut out);
        }
        let mut err = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut err);
        }
        (out, err)
    });
    let status = match tokio::time::timeout(NFT_DEADLINE, exit).await {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => return Err(ShimError::Internal("nft: lost its exit status".into())),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(ShimError::Internal(format!(
                "nft in {} did not finish within {}s",
                netns.display(),
                NFT_DEADLINE.as_secs()
            )));
        }
    };
    let (stdout, stderr) = io.await.unwrap_or_default();
    if status.code != 0 {
        return Err(ShimError::FailedPrecondition(format!(
            "nft in network namespace {} failed (status {}): {}",
            netns.display(),
            status.code,
            stderr.trim()
        )));
    }
    Ok(stdout)
}

/// Installs the sandbox's table (atomically replacing one left by an earlier attempt).
pub async fn install(
    reaper: &Reaper,
    netns: &Path,
    sandbox_id: &str,
    filter: &NetFilter,
    facts: &NodeFacts,
) -> Result<InstalledTable> {
    let table = table_name(sandbox_id);
    let script = filter.render(&table, sandbox_id, facts);
    nft(reaper, netns, &script).await.map_err(|e| {
        ShimError::FailedPrecondition(format!(
            "installing the network filter of sandbox {sandbox_id}: {e}"
        ))
    })?;
    Ok(InstalledTable {
        table,
        netns: netns.to_path_buf(),
    })
}

/// Adds a DNS answer's addresses to the table's sets.
pub async fn learn(reaper: &Reaper, t: &InstalledTable, learned: &Learned) -> Result<()> {
    let script = learn_script(&t.table, learned);
    if script.is_empty() {
        return Ok(());
    }
    nft(reaper, &t.netns, &script).await.map(|_| ())
}

/// Removes the table. A namespace that is already gone took the table with it.
pub async fn remove(reaper: &Reaper, t: &InstalledTable) {
    if !t.netns.exists() {
        return;
    }
    // Declaring first makes the delete succeed whether or not the table is still there.
    let script = format!("table inet {0} {{}}\ndelete table inet {0}\n", t.table);
    match nft(reaper, &t.netns, &script).await {
        Ok(_) => {
            tracing::info!(table = %t.table, netns = %t.netns.display(), "network filter removed")
        }
        Err(e) => tracing::warn!(table = %t.table, "removing the network filter: {e}"),
    }
}

/// Packets the table's [`REFUSED_COUNTER`] has counted: every refused packet eligible for the
/// refusal log, logged or not. `None` if it cannot be read.
pub async fn refused_count(reaper: &Reaper, t: &InstalledTable) -> Option<u64> {
    let script = format!("list counter inet {} {REFUSED_COUNTER}\n", t.table);
    match nft(reaper, &t.netns, &script).await {
        Ok(out) => counter_packets(&out),
        Err(e) => {
            tracing::warn!(table = %t.table, "reading the refusal counter: {e}");
            None
        }
    }
}

/// The `packets N` of an `nft list counter` listing.
fn counter_packets(listing: &str) -> Option<u64> {
    let mut words = listing.split_whitespace();
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}

/// The node's own addresses (the shim runs in the node's network namespace). Failing to list
/// them fails the sandbox's network: an empty list would leave every one of them open.
pub fn node_addrs() -> Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| {
        ShimError::io(
            "list the node's own addresses (getifaddrs) to close them to the sandbox",
            e.into(),
        )
    })?;
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|ifa| {
            let a = ifa.address?;
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|a| !a.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::counter_packets;

    #[test]
    fn reads_the_counter_listing() {
        let listing =
            "table inet t {\n\tcounter refused_out {\n\t\tpackets 61 bytes 2093\n\t}\n}\n";
        assert_eq!(counter_packets(listing), Some(61));
        assert_eq!(counter_packets("table inet t {}"), None);
        assert_eq!(counter_packets("packets lots"), None);
    }
}
