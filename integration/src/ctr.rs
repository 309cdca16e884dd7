//! The real `ctr`, pointed at the private containerd and namespace, with a deadline on every
//! call, plus parsers for the tables it prints.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::command::{run, wait_for, Output, Running};

/// Deadline for one ctr call unless the caller gives another.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(30);

/// `ctr -a SOCKET -n NAMESPACE`.
#[derive(Debug, Clone)]
pub struct Ctr {
    /// The `ctr` binary (the one of the containerd build under test).
    pub binary: PathBuf,
    /// containerd's gRPC socket.
    pub address: PathBuf,
    /// The containerd namespace.
    pub namespace: String,
}

/// One row of `ctr task ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    /// Container id.
    pub id: String,
    /// Host pid of the task as the shim reports it.
    pub pid: u32,
    /// RUNNING, STOPPED, PAUSED, CREATED, UNKNOWN...
    pub status: String,
}

impl Ctr {
    /// A `ctr` command with the address and namespace set; add the rest.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        // containerd's client gives up dialling after 10 s; a loaded CI machine can take longer
        // to accept, and that is not what a scenario tests.
        cmd.arg("--connect-timeout")
            .arg("30s")
            .arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace);
        cmd
    }

    /// Runs `ctr ARGS` with the default deadline.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        self.run_timeout(args, CTR_TIMEOUT)
    }

    /// Runs `ctr ARGS` with a deadline.
    pub fn run_timeout<S: AsRef<std::ffi::OsStr>>(
        &self,
        args: &[S],
        timeout: Duration,
    ) -> Result<Output> {
        run(self.command().args(args), timeout)
    }

    /// The rows of `ctr task ls`.
    pub fn tasks(&self) -> Result<Vec<TaskRow>> {
        let out = self.run(&["task", "ls"])?.ok()?;
        Ok(parse_task_ls(&out.stdout))
    }

    /// The task row of `id`, if containerd has a task for it.
    pub fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        Ok(self.tasks()?.into_iter().find(|t| t.id == id))
    }

    /// Waits until the task of `id` reports `status`.
    pub fn wait_status(&self, id: &str, status: &str, timeout: Duration) -> Result<TaskRow> {
        wait_for(&format!("task {id} to be {status}"), timeout, || {
            Ok(self.task(id)?.filter(|t| t.status == status))
        })
    }

    /// Container ids in the namespace (`ctr containers ls -q`).
    pub fn containers(&self) -> Result<Vec<String>> {
        let out = self.run(&["containers", "ls", "-q"])?.ok()?;
        Ok(out.stdout.split_whitespace().map(str::to_string).collect())
    }

    /// Snapshot keys in the namespace (`ctr snapshots ls`, first column).
    pub fn snapshots(&self) -> Result<Vec<String>> {
        let out = self.run(&["snapshots", "ls"])?.ok()?;
        Ok(out
            .stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    }

    /// The pids `ctr task ps ID` lists.
    pub fn task_pids(&self, id: &str) -> Result<Vec<u32>> {
        let out = self.run(&["task", "ps", id])?.ok()?;
        out.stdout
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(|pid| {
                pid.parse()
                    .with_context(|| format!("bad pid {pid:?} in ctr task ps"))
            })
            .collect()
    }

    /// Starts `ctr events` and returns once it is subscribed (it has seen a namespace-label
    /// update made for the purpose), so no later event can be missed.
    pub fn subscribe_events(&self) -> Result<Running> {
        let events = Running::start(self.command().arg("events"))?;
        let marker = format!(
            "probe-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let label = format!("safehouse-it-events={marker}");
        wait_for("ctr events to subscribe", Duration::from_secs(10), || {
            self.run(&["namespaces", "label", &self.namespace, &label])?
                .ok()?;
            std::thread::sleep(Duration::from_millis(100));
            Ok(events.stdout_so_far().contains(&marker).then_some(()))
        })?;
        Ok(events)
    }

    /// Best-effort removal of a container and its task, whatever state they are in.
    pub fn force_remove(&self, id: &str) {
        let short = Duration::from_secs(20);
        let _ = self.run_timeout(&["task", "kill", "-a", "-s", "SIGKILL", id], short);
        let _ = wait_for("task to stop", Duration::from_secs(5), || {
            Ok(self
                .task(id)?
                .map_or(Some(()), |t| (t.status != "RUNNING").then_some(())))
        });
        let _ = self.run_timeout(&["task", "delete", "--force", id], short);
        let _ = self.run_timeout(&["containers", "rm", id], short);
    }
}

/// Parses the table `ctr task ls` prints (header `TASK PID STATUS`).
pub fn parse_task_ls(text: &str) -> Vec<TaskRow> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            Some(TaskRow {
                id: cols.next()?.to_string(),
                pid: cols.next()?.parse().ok()?,
                status: cols.next()?.to_string(),
            })
        })
        .collect()
}

/// Waits (up to 5 s) until the `ctr events` subscription `events` has printed every topic of
/// `topics` (e.g. `/tasks/oom`) on a line about container `id`, then ends the subscription and
/// returns all it printed. The error lists the missing topics and the lines about `id`.
pub fn expect_task_events(events: Running, id: &str, topics: &[&str]) -> Result<String> {
    let missing = |text: &str| -> Vec<String> {
        topics
            .iter()
            .filter(|topic| {
                !text
                    .lines()
                    .any(|l| l.contains(id) && l.split_whitespace().any(|w| w == **topic))
            })
            .map(|t| t.to_string())
            .collect()
    };
    let seen = wait_for("task events", Duration::from_secs(5), || {
        Ok(missing(&events.stdout_so_far()).is_empty().then_some(()))
    });
    let text = events.stdout_so_far();
    drop(events);
    if seen.is_err() {
        let about: Vec<&str> = text.lines().filter(|l| l.contains(id)).collect();
        anyhow::bail!(
            "events missing for {id}: {:?}; ctr events printed about it:\n{}",
            missing(&text),
            about.join("\n")
        );
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_task_ls() {
        let text =
            "TASK    PID      STATUS    \nd1      15386    RUNNING\ng2      0        UNKNOWN\n";
        assert_eq!(
            parse_task_ls(text),
            vec![
                TaskRow {
                    id: "d1".into(),
                    pid: 15386,
                    status: "RUNNING".into()
                },
                TaskRow {
                    id: "g2".into(),
                    pid: 0,
                    status: "UNKNOWN".into()
                },
            ]
        );
    }
}
