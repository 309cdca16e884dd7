//! `safehouse stop`: the big red button. Kills every process of the named sandboxes (or all of
//! them on the node) through their shims, so the kill is recorded in each sandbox's audit chain
//! with who asked, and returns only when no process of those sandboxes is left.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use containerd_shim_protos::api::{KillRequest, WaitRequest};
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::asynchronous::Client;
use containerd_shim_protos::ttrpc::context::Context as TtrpcContext;
use safehouse_runsc_config::paths::{ACTOR_METADATA, SHIM_REGISTRY, STATE_DIR};

/// `safehouse stop` arguments.
#[derive(Debug, Args)]
#[command(
    long_about = "Kill every process of the given containers' sandboxes at once \
(SIGKILL to all of them, through their Safehouse shims), record a `kill` event naming who asked \
in each sandbox's audit stream, and return only when none of their processes is left.\n\n\
Exit 0 when all are stopped, 1 when some could not be, 2 when an ID is unknown.\n\n\
Examples:\n  safehouse stop agent-7\n  safehouse stop --all\n  safehouse stop --all --namespace k8s.io"
)]
pub struct StopArgs {
    /// Container IDs to stop.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<String>,
    /// Stop every Safehouse container on this node.
    #[arg(long)]
    all: bool,
    /// Only containers of this containerd namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// How long to wait for the processes to be gone.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 10s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: expected e.g. 10s or 500ms")),
    }
}

/// One registered container: namespace, id, and its shim's ttrpc address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    namespace: String,
    id: String,
    address: String,
}

fn registered(root: &Path) -> Vec<Target> {
    let mut found = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(root) else {
        return found;
    };
    for ns in namespaces.flatten() {
        let Ok(ids) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for entry in ids.flatten() {
            if let Ok(address) = std::fs::read_to_string(entry.path()) {
                found.push(Target {
                    namespace: ns.file_name().to_string_lossy().into_owned(),
                    id: entry.file_name().to_string_lossy().into_owned(),
                    address: address.trim().to_string(),
                });
            }
        }
    }
    found.sort_by(|a, b| (&a.namespace, &a.id).cmp(&(&b.namespace, &b.id)));
    found
}

/// Who is asking, for the audit stream.
fn actor() -> String {
    let uid = nix::unistd::getuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| format!(" {}", u.name))
        .unwrap_or_default();
    format!(
        "safehouse stop (uid {uid}{name}, pid {})",
        std::process::id()
    )
}

/// Runs `safehouse stop`.
pub fn run(args: StopArgs) -> Result<ExitCode> {
    let all = registered(&Path::new(STATE_DIR).join(SHIM_REGISTRY));
    let in_ns = |t: &&Target| args.namespace.as_ref().is_none_or(|n| *n == t.namespace);
    let targets: Vec<Target> = if args.all {
        all.iter().filter(in_ns).cloned().collect()
    } else {
        let mut picked = Vec::new();
        for id in &args.ids {
            let matches: Vec<&Target> = all.iter().filter(in_ns).filter(|t| &t.id == id).collect();
            match matches.as_slice() {
                [] => {
                    eprintln!("safehouse stop: no Safehouse container {id:?} on this node");
                    return Ok(ExitCode::from(2));
                }
                [one] => picked.push((*one).clone()),
                _ => bail!("{id:?} exists in several namespaces; add --namespace"),
            }
        }
        picked
    };
    if targets.is_empty() {
        println!("no Safehouse container is running");
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let actor = actor();
    let deadline = Instant::now() + args.timeout;
    let results = runtime.block_on(async {
        // Each Wait is asked for before its Kill, so the exit is known even if the
        // container's owner (`ctr run --rm`, kubelet) deletes it right after it dies.
        let mut pending = Vec::with_capacity(targets.len());
        for t in &targets {
            pending.push(match connect(t).await {
                Ok(tasks) => {
                    let waiting = tokio::spawn(wait_exit(tasks.clone(), t.id.clone()));
                    tokio::task::yield_now().await;
                    kill(&tasks, t, &actor, deadline).await.map(|()| waiting)
                }
                Err(e) => Err(e),
            });
        }
        let mut results = Vec::with_capacity(targets.len());
        for (t, p) in targets.iter().zip(pending) {
            results.push(match p {
                Ok(waiting) => wait_gone(t, waiting, deadline).await,
                Err(e) => Err(e),
            });
        }
        results
    });
    let mut failed = 0;
    for (t, r) in targets.iter().zip(results) {
        match r {
            Ok(Some(code)) => println!("stopped {}/{} (exit {code})", t.namespace, t.id),
            Ok(None) => println!(
                "stopped {}/{} (exit not known: its owner deleted it first)",
                t.namespace, t.id
            ),
            Err(e) => {
                failed += 1;
                eprintln!("safehouse stop: {}/{}: {e:#}", t.namespace, t.id);
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A ttrpc client of the container's shim.
async fn connect(t: &Target) -> Result<TaskClient> {
    let client = Client::connect(&t.address)
        .await
        .with_context(|| format!("connect to its shim at {}", t.address))?;
    Ok(TaskClient::new(client))
}

/// The container's exit status, or None when it was deleted before the shim could answer.
async fn wait_exit(tasks: TaskClient, id: String) -> Result<Option<u32>> {
    let req = WaitRequest {
        id,
        ..Default::default()
    };
    match tasks.wait(TtrpcContext::default(), &req).await {
        Ok(exit) => Ok(Some(exit.exit_status)),
        Err(e) if e.to_string().contains("NOT_FOUND") => Ok(None),
        Err(e) => Err(anyhow::anyhow!("wait: {e}")),
    }
}

/// Sends SIGKILL to every process of the container through its shim, naming the actor.
async fn kill(tasks: &TaskClient, t: &Target, actor: &str, deadline: Instant) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut ctx = TtrpcContext::default();
    ctx.add(ACTOR_METADATA.to_string(), actor.to_string());
    let req = KillRequest {
        id: t.id.clone(),
        signal: 9,
        all: true,
        ..Default::default()
    };
    if let Err(e) = tokio::time::timeout(left, tasks.kill(ctx, &req))
        .await
        .context("kill timed out")?
    {
        // Already stopped is fine: the wait returns its exit.
        if !e.to_string().contains("already finished") {
            bail!("kill: {e}");
        }
    }
    Ok(())
}

/// Waits for the container's exit, then for its runsc processes to be gone from the host.
async fn wait_gone(
    t: &Target,
    waiting: tokio::task::JoinHandle<Result<Option<u32>>>,
    deadline: Instant,
) -> Result<Option<u32>> {
    let left = || deadline.saturating_duration_since(Instant::now());
    let exit = tokio::time::timeout(left(), waiting)
        .await
        .context("the container did not exit in time")?
        .context("wait task")??;
    while !sandbox_processes(&t.id).is_empty() {
        if left().is_zero() {
            bail!("processes still running: {:?}", sandbox_processes(&t.id));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(exit)
}

/// runsc processes (sandbox, gofer, exec) whose command line names container `id`.
fn sandbox_processes(id: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline: PathBuf = ["/proc", &pid.to_string(), "cmdline"].iter().collect();
            std::fs::read(cmdline)
                .map(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.first().is_some_and(|a| a.starts_with(b"runsc"))
                        && args.contains(&id.as_bytes())
                })
                .unwrap_or(false)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_registry() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("k8s.io")).expect("mkdir");
        std::fs::write(
            dir.path().join("k8s.io/c1"),
            "unix:///run/containerd/s/ab\n",
        )
        .expect("write");
        let t = registered(dir.path());
        assert_eq!(
            t,
            vec![Target {
                namespace: "k8s.io".into(),
                id: "c1".into(),
                address: "unix:///run/containerd/s/ab".into()
            }]
        );
        assert!(registered(Path::new("/nonexistent")).is_empty());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
    }
}
