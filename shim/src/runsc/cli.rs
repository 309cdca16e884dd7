//! The one place that builds runsc command lines: [`Runsc`], the real [`SandboxRuntime`].
//!
//! Every runsc invocation for a sandbox carries the same global flags (runsc re-reads them on
//! each call, so `create` with `--network=none` followed by a `start` without it fails), runs in
//! the sandbox's network namespace when it has one, has a deadline, and reports failures with
//! runsc's own last error message rather than "exit status 128".

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim_protos::ttrpc::Code;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{ChildStdio, CreateOpts, ExecOpts, KillOpts, SandboxFlags, SandboxRuntime, Spawned};
use crate::error::{Result, ShimError};
use crate::reaper::{Exit, Reaper};

/// Deadline for short runsc commands (start, kill, state, ...).
const SHORT: Duration = Duration::from_secs(30);
/// Deadline for `runsc create` (boots the sandbox; slow on a loaded node).
const CREATE: Duration = Duration::from_secs(120);

fn to_stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

/// What a runsc command's stdio is.
enum CommandIo {
    /// The container's stdio, handed to runsc to donate to the sandbox.
    Donate(ChildStdio),
    /// Nothing is read (errors come from runsc's json log).
    Discard,
    /// stdout is collected.
    Capture,
}

/// One `runsc` binary with its node-wide flags, its state root (per containerd namespace) and
/// one sandbox's flags, logging into a container's bundle.
#[derive(Clone)]
pub struct Runsc {
    binary: PathBuf,
    root: PathBuf,
    global: Vec<String>,
    flags: SandboxFlags,
    log_dir: PathBuf,
    reaper: Reaper,
}

impl Runsc {
    /// A runsc driven with `--root=root`, the node's global flags and a sandbox's flags.
    pub fn new(
        binary: PathBuf,
        root: PathBuf,
        global: Vec<String>,
        flags: SandboxFlags,
        log_dir: PathBuf,
        reaper: Reaper,
    ) -> Runsc {
        Runsc {
            binary,
            root,
            global,
            flags,
            log_dir,
            reaper,
        }
    }

    /// The argv (after the binary) of an invocation, without spawning it: for tests and logs.
    pub fn argv(&self, log: &Path, sub: &[String]) -> Vec<String> {
        let mut argv = vec![
            format!("--root={}", self.root.display()),
            format!("--log={}", log.display()),
            "--log-format=json".to_string(),
            format!("--network={}", self.flags.network.as_str()),
        ];
        argv.extend(self.global.iter().cloned());
        argv.extend(self.flags.extra.iter().cloned());
        argv.extend(sub.iter().cloned());
        argv
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.log_dir.join(format!("{id}.runsc.log"))
    }

    fn command(&self, id: &str, sub: &[String]) -> Result<(Command, PathBuf)> {
        let log = self.log_path(id);
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.argv(&log, sub));
        if let Some(ns) = &self.flags.netns {
            crate::network::netns::enter_on_exec(&mut cmd, crate::network::netns::open(ns)?);
        }
        Ok((cmd, log))
    }

    /// Runs a short command to completion. With `capture`, stdout is collected; stderr never
    /// is (runsc's errors come from its json log). Output pipes are read asynchronously and
    /// only briefly after the exit: a process runsc started (a pod container's gofer is started
    /// by `runsc start`) may inherit them and never close them.
    async fn run(
        &self,
        id: &str,
        name: &str,
        sub: Vec<String>,
        io: CommandIo,
        deadline: Duration,
    ) -> Result<String> {
        let (mut cmd, log) = self.command(id, &sub)?;
        let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        match io {
            CommandIo::Donate(s) => {
                cmd.stdin(to_stdio(s.stdin))
                    .stdout(to_stdio(s.stdout))
                    .stderr(to_stdio(s.stderr));
            }
            CommandIo::Discard => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
            CommandIo::Capture => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
            }
        }
        tracing::debug!(
            container = id,
            "runsc {name}: {:?}",
            cmd.get_args().collect::<Vec<_>>()
        );
        let (mut child, exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| ShimError::io(format!("run {}", self.binary.display()), e))?;
        drop(cmd);
        let pid = child.id() as i32;
        let stdout = child
            .stdout
            .take()
            .map(|o| tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(o)))
            .transpose()
            .map_err(|e| ShimError::io("watch runsc output", e))?;
        let (exit, stdout) = match tokio::time::timeout(deadline, collect(exit, stdout)).await {
            Ok((Ok(exit), out)) => (exit, out),
            Ok((Err(_), _)) => {
                return Err(ShimError::Internal(format!(
                    "runsc {name} {id}: lost its exit status"
                )))
            }
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(ShimError::Runsc {
                    command: name.into(),
                    id: id.into(),
                    message: format!(
                        "did not finish within {}s and was killed",
                        deadline.as_secs()
                    ),
                    code: Code::DEADLINE_EXCEEDED,
                });
            }
        };
        if exit.code == 0 {
            return Ok(stdout);
        }
        let message = last_error(&log, log_start)
            .unwrap_or_else(|| format!("exited with status {}", exit.code));
        Err(ShimError::Runsc {
            command: name.into(),
            id: id.into(),
            code: classify(&message),
            message,
        })
    }

    fn spawn_long(&self, id: &str, sub: Vec<String>, stdio: ChildStdio) -> Result<Spawned> {
        let (mut cmd, _log) = self.command(id, &sub)?;
        cmd.stdin(to_stdio(stdio.stdin))
            .stdout(to_stdio(stdio.stdout))
            .stderr(to_stdio(stdio.stderr));
        let (child, exit) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| ShimError::io(format!("run {}", self.binary.display()), e))?;
        Ok((child.id(), exit))
    }
}

#[async_trait]
impl SandboxRuntime for Runsc {
    fn for_container(&self, log_dir: &Path) -> Arc<dyn SandboxRuntime> {
        let mut other = self.clone();
        other.log_dir = log_dir.to_path_buf();
        Arc::new(other)
    }

    fn flags(&self) -> &SandboxFlags {
        &self.flags
    }

    fn root(&self) -> &Path {
        &self.root
    }

    async fn create(&self, id: &str, opts: CreateOpts<'_>) -> Result<()> {
        let mut sub = vec![
            "create".to_string(),
            format!("--bundle={}", opts.bundle.display()),
            format!("--pid-file={}", opts.pid_file.display()),
        ];
        if let Some(sock) = opts.console_socket {
            sub.push(format!("--console-socket={}", sock.display()));
        }
        sub.push(id.to_string());
        self.run(id, "create", sub, CommandIo::Donate(opts.stdio), CREATE)
            .await
            .map(drop)
    }

    /// A container joining a pod gets the stdio of its `start` command (runsc donates it to
    /// the sandbox then), so its stdio is given here, not at create.
    async fn start(&self, id: &str, stdio: Option<ChildStdio>) -> Result<()> {
        let io = stdio.map(CommandIo::Donate).unwrap_or(CommandIo::Discard);
        self.run(id, "start", vec!["start".into(), id.into()], io, SHORT)
            .await
            .map(drop)
    }

    async fn kill(&self, id: &str, opts: KillOpts) -> Result<()> {
        let mut sub = vec!["kill".to_string()];
        if opts.all {
            sub.push("--all".into());
        }
        if let Some(p) = opts.pid {
            sub.push(format!("--pid={p}"));
        }
        sub.push(id.into());
        sub.push(opts.signal.to_string());
        self.run(id, "kill", sub, CommandIo::Discard, SHORT)
            .await
            .map(drop)
    }

    /// `runsc delete --force`. A container runsc no longer knows is already deleted.
    async fn delete(&self, id: &str) -> Result<()> {
        let sub = vec!["delete".into(), "--force".into(), id.into()];
        match self.run(id, "delete", sub, CommandIo::Discard, SHORT).await {
            Err(e) if e.code() == Code::NOT_FOUND => Ok(()),
            other => other.map(drop),
        }
    }

    async fn pause(&self, id: &str, resume: bool) -> Result<()> {
        let name = if resume { "resume" } else { "pause" };
        let sub = vec![name.into(), id.into()];
        self.run(id, name, sub, CommandIo::Discard, SHORT)
            .await
            .map(drop)
    }

    async fn ps(&self, id: &str) -> Result<Vec<u32>> {
        let sub = vec!["ps".into(), "--format=json".into(), id.into()];
        let out = self.run(id, "ps", sub, CommandIo::Capture, SHORT).await?;
        let trimmed = out.trim();
        if trimmed.is_empty() || trimmed == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(trimmed)
            .map_err(|e| ShimError::Internal(format!("runsc ps {id}: unreadable output: {e}")))
    }

    async fn stats(&self, id: &str) -> Result<serde_json::Value> {
        let sub = vec!["events".into(), "--stats".into(), id.into()];
        let out = self
            .run(id, "events", sub, CommandIo::Capture, SHORT)
            .await?;
        serde_json::from_str(out.trim()).map_err(|e| {
            ShimError::Internal(format!("runsc events --stats {id}: unreadable output: {e}"))
        })
    }

    /// For a terminal, `stdio` is a pty the caller opened (runsc ignores --console-socket for
    /// a foreground exec).
    fn spawn_exec(&self, id: &str, opts: ExecOpts<'_>) -> Result<Spawned> {
        let sub = vec![
            "exec".to_string(),
            format!("--process={}", opts.process_file.display()),
            format!("--internal-pid-file={}", opts.internal_pid_file.display()),
            id.into(),
        ];
        self.spawn_long(id, sub, opts.stdio)
    }

    fn spawn_wait(&self, id: &str, stdout: OwnedFd) -> Result<Spawned> {
        let stdio = ChildStdio {
            stdout: Some(stdout),
            ..ChildStdio::default()
        };
        self.spawn_long(id, vec!["wait".into(), id.into()], stdio)
    }

    fn forget_dead(&self, id: &str) -> bool {
        super::state::remove_container_files(&self.root, id)
    }

    fn remove_log(&self, id: &str) {
        let _ = std::fs::remove_file(self.log_path(id));
    }
}

/// Runs `binary args` to completion through the reaper, returning stdout and stderr together.
pub async fn capture(
    reaper: &Reaper,
    binary: &Path,
    args: &[&str],
    deadline: Duration,
) -> Result<(Exit, String)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io("create pipe", std::io::Error::from(e)))?;
    let w2 = w.try_clone().map_err(|e| ShimError::io("dup pipe", e))?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::from(w2));
    let (child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| ShimError::io(format!("run {}", binary.display()), e))?;
    drop(cmd);
    let out = tokio::net::unix::pipe::Receiver::from_owned_fd(r)
        .map_err(|e| ShimError::io("watch output", e))?;
    match tokio::time::timeout(deadline, collect(exit, Some(out))).await {
        Ok((Ok(exit), text)) => Ok((exit, text)),
        Ok((Err(_), _)) => Err(ShimError::Internal(format!(
            "{} lost its exit status",
            binary.display()
        ))),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(ShimError::Internal(format!(
                "{} {} did not finish within {}s",
                binary.display(),
                args.join(" "),
                deadline.as_secs()
            )))
        }
    }
}

/// How long to keep reading a command's output after it exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// Reads `stdout` while waiting for the exit, then drains it briefly.
async fn collect(
    mut exit: oneshot::Receiver<Exit>,
    stdout: Option<tokio::net::unix::pipe::Receiver>,
) -> (std::result::Result<Exit, oneshot::error::RecvError>, String) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let Some(mut out) = stdout else {
        return (exit.await, String::new());
    };
    let mut chunk = [0u8; 8192];
    let status = loop {
        tokio::select! {
            status = &mut exit => break status,
            n = out.read(&mut chunk) => match n {
                Ok(0) | Err(_) => break exit.await,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
        }
    };
    let drain = async {
        while let Ok(n) = out.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, drain).await;
    (status, String::from_utf8_lossy(&buf).into_owned())
}

#[derive(Deserialize)]
struct LogLine {
    #[serde(default)]
    msg: String,
    #[serde(default)]
    level: String,
}

/// Reads runsc's json log from `offset` and returns the last error-level message.
fn last_error(log: &Path, offset: u64) -> Option<String> {
    let bytes = std::fs::read(log).ok()?;
    let start = usize::try_from(offset)
        .ok()
        .filter(|&o| o <= bytes.len())
        .unwrap_or(0);
    let stream = serde_json::Deserializer::from_slice(&bytes[start..]).into_iter::<LogLine>();
    let mut last = None;
    for line in stream {
        match line {
            Ok(l) if l.level == "error" || l.level == "fatal" => last = Some(l.msg),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    last.map(|m| m.trim().to_string()).filter(|m| !m.is_empty())
}

/// The ttrpc code a runsc failure maps to, from the structure of runsc's message.
fn classify(message: &str) -> Code {
    let m = message.to_ascii_lowercase();
    if m.contains("file does not exist") || m.contains("not found") || m.contains("no such") {
        Code::NOT_FOUND
    } else if m.contains("already exists") {
        Code::ALREADY_EXISTS
    } else if m.contains("invalid argument")
        || m.contains("invalid spec")
        || m.contains("validating")
    {
        Code::INVALID_ARGUMENT
    } else if m.contains("not running")
        || m.contains("not stopped")
        || m.contains("is not paused")
        || m.contains("cannot") && m.contains("state")
    {
        Code::FAILED_PRECONDITION
    } else {
        Code::UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_error_from_concatenated_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.runsc.log");
        let old = r#"{"msg":"old failure","level":"error","time":"t"}"#;
        let new = r#"{"msg":"starting","level":"info","time":"t"}{"msg":"loading container: file does not exist","level":"error","time":"t"}"#;
        std::fs::write(&log, format!("{old}{new}")).expect("write");
        assert_eq!(
            last_error(&log, old.len() as u64).as_deref(),
            Some("loading container: file does not exist")
        );
        assert_eq!(last_error(&log, (old.len() + new.len()) as u64), None);
        assert_eq!(
            classify("loading container: file does not exist"),
            Code::NOT_FOUND
        );
        assert_eq!(classify("something odd"), Code::UNKNOWN);
    }

    #[test]
    fn every_invocation_carries_the_same_global_flags() {
        let sb = SandboxFlags {
            extra: vec!["--pod-init-config=/x.json".into()],
            ..SandboxFlags::loopback_only()
        };
        let runsc = Runsc::new(
            "/usr/bin/runsc".into(),
            "/run/safehouse/runsc/default".into(),
            vec!["--platform=systrap".into()],
            sb,
            "/tmp".into(),
            Reaper::default(),
        );
        let argv = runsc.argv(Path::new("/tmp/c.log"), &["start".into(), "c".into()]);
        assert_eq!(
            argv,
            vec![
                "--root=/run/safehouse/runsc/default",
                "--log=/tmp/c.log",
                "--log-format=json",
                "--network=none",
                "--platform=systrap",
                "--pod-init-config=/x.json",
                "start",
                "c"
            ]
        );
    }
}
