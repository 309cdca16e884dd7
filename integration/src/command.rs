//! External commands with a deadline: every process the tests start goes through here, so none
//! can hang a test. A command that outlives its deadline is killed (its own process group, by
//! the group id we created) and reported as timed out.
//!
//! What does not live here: knowledge of any particular tool (see `ctr.rs`, `containerd.rs`).

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Set once the run is being torn down after a signal: no new command may start.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Makes every later [`Running::start`] fail (used when an interrupted run cleans up).
pub fn refuse_new_commands() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// How long readers may keep draining stdout/stderr after the process itself has exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What a finished (or killed) command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Exit code, when the process exited normally.
    pub code: Option<i32>,
    /// Signal number, when the process was killed by a signal.
    pub signal: Option<i32>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
    /// True when the deadline expired and the process was killed.
    pub timed_out: bool,
}

impl Output {
    /// True when the command exited with code 0 before its deadline.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// Fails with a full description unless the command exited 0.
    pub fn ok(self) -> Result<Output> {
        if self.success() {
            Ok(self)
        } else {
            anyhow::bail!("command failed: {}", self.describe())
        }
    }

    /// A multi-line description: command, how it ended, stdout and stderr.
    pub fn describe(&self) -> String {
        let end = if self.timed_out {
            "timed out and was killed".to_string()
        } else if let Some(code) = self.code {
            format!("exit code {code}")
        } else {
            format!("killed by signal {}", self.signal.unwrap_or(0))
        };
        format!(
            "`{}`: {end}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// A started command whose output is being collected.
pub struct Running {
    child: Option<Child>,
    command: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Running {
    /// Starts `cmd` in its own process group with piped stdout/stderr (stdin is /dev/null
    /// unless the caller set it).
    pub fn start(cmd: &mut Command) -> Result<Running> {
        let command = describe_command(cmd);
        if STOPPING.load(Ordering::SeqCst) {
            anyhow::bail!("not starting `{command}`: the run is being interrupted");
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{command}`"))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(pipe) = child.stdout.take() {
            readers.push(drain(pipe, stdout.clone()));
        }
        if let Some(pipe) = child.stderr.take() {
            readers.push(drain(pipe, stderr.clone()));
        }
        Ok(Running {
            child: Some(child),
            command,
            stdout,
            stderr,
            readers,
        })
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Output collected so far (stdout), without waiting.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stdout)).into_owned()
    }

    /// Waits for the process to exit; kills its process group when `timeout` expires, and
    /// whatever it left running in its group once it exits.
    pub fn wait(mut self, timeout: Duration) -> Result<Output> {
        let mut child = self.child.take().context("process already waited for")?;
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        loop {
            if exited_but_not_reaped(child.id()) {
                break;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        // The leader is a zombie (or still running): its group id cannot be reused yet, so
        // killing the group reaches only what this command left behind.
        kill_group(child.id());
        let status = child.wait()?;
        // Readers finish when every writer closed the pipe; a stray grandchild may keep it
        // open, so give them a short grace and then take what they have.
        let drain_deadline = Instant::now() + DRAIN_GRACE;
        for reader in std::mem::take(&mut self.readers) {
            while !reader.is_finished() && Instant::now() < drain_deadline {
                thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(Output {
            command: self.command.clone(),
            code: status.code(),
            signal: status.signal(),
            stdout: String::from_utf8_lossy(&lock(&self.stdout)).into_owned(),
            stderr: String::from_utf8_lossy(&lock(&self.stderr)).into_owned(),
            timed_out,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                kill_group(child.id());
            }
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` to completion with stdin from /dev/null, killing it (and anything it left in its
/// process group) when `timeout` expires.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null());
    Running::start(cmd)?.wait(timeout)
}

/// Runs `cmd` with `input` written to its stdin (then closed), killing it after `timeout`.
pub fn run_with_input(cmd: &mut Command, input: &[u8], timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::piped());
    let mut running = Running::start(cmd)?;
    let stdin = running.child.as_mut().and_then(|c| c.stdin.take());
    if let Some(mut stdin) = stdin {
        let input = input.to_vec();
        // A writer thread: a process that does not read must not block us past the deadline.
        thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
    }
    running.wait(timeout)
}

/// Runs `program args...` with a deadline; a convenience over [`run`].
pub fn run_args<S: AsRef<std::ffi::OsStr>>(
    program: &str,
    args: &[S],
    timeout: Duration,
) -> Result<Output> {
    run(Command::new(program).args(args), timeout)
}

/// Sends SIGKILL to the process group `pgid` (a group this crate created).
pub fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Polls `probe` until it returns `Some`, or fails after `timeout` with `what` in the message.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            let detail = last_error.map(|e| format!(": last error: {e:#}"));
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                detail.unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn drain(
    mut pipe: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => lock(&into).extend_from_slice(&buf[..n]),
            }
        }
    })
}

fn lock(buf: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    buf.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// True once `pid` (our child) has exited; it stays a zombie until `Child::wait`.
fn exited_but_not_reaped(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return true;
    };
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    !matches!(
        waitid(Id::Pid(Pid::from_raw(raw)), flags),
        Ok(WaitStatus::StillAlive)
    )
}

fn describe_command(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_code() {
        let out = run_args(
            "sh",
            &["-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert!(!out.success());
    }

    #[test]
    fn kills_on_deadline() {
        let start = Instant::now();
        let out = run_args("sh", &["-c", "sleep 30"], Duration::from_millis(200)).unwrap();
        assert!(out.timed_out);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn does_not_wait_for_grandchildren_holding_the_pipe() {
        let start = Instant::now();
        let out = run_args(
            "sh",
            &["-c", "echo x; sleep 20 & exit 0"],
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.code, Some(0));
        assert_eq!(out.stdout, "x\n");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
