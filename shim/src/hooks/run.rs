//! Running a hook on the host: in the sandbox's network namespace, its state on stdin, bounded
//! in time, its process group killed if it overstays.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::AuditEvent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::{Hook, HookState, STDERR_TAIL};
use crate::error::{Result, ShimError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    /// `createContainer` or `startContainer`.
    pub kind: String,
    /// The hook's path.
    pub path: PathBuf,
    /// How long it ran.
    pub duration: Duration,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// Runs `hooks` of `kind` in order, stopping at the first failure (an error naming the hook,
/// its exit status and the end of its stderr). `netns` is the network namespace to run them in.
/// `ran` hears of every hook that was started, failed or not.
pub async fn run(
    kind: &str,
    hooks: &[Hook],
    state: &HookState,
    netns: Option<&Path>,
    mut ran: impl FnMut(HookRun),
) -> Result<()> {
    let input = serde_json::to_vec(&state.to_json())
        .map_err(|e| ShimError::Internal(format!("hook state: {e}")))?;
    for (i, hook) in hooks.iter().enumerate() {
        let started = std::time::Instant::now();
        let outcome = run_one(hook, &input, &state.bundle, netns).await;
        ran(HookRun {
            kind: kind.to_owned(),
            path: hook.path.clone(),
            duration: started.elapsed(),
            failure: outcome.as_ref().err().cloned(),
        });
        outcome.map_err(|why| {
            ShimError::FailedPrecondition(format!(
                "{kind} hook {} ({}[{i}]) of {}: {why}",
                hook.path.display(),
                kind,
                state.id
            ))
        })?;
        info!(container = %state.id, hook = %hook.path.display(), "{kind} hook ran");
    }
    Ok(())
}

async fn run_one(
    hook: &Hook,
    input: &[u8],
    cwd: &Path,
    netns: Option<&Path>,
) -> std::result::Result<(), String> {
    let ns = match netns {
        Some(p) => Some(std::fs::File::open(p).map_err(|e| {
            format!(
                "cannot open the sandbox's network namespace {}: {e}",
                p.display()
            )
        })?),
        None => None,
    };
    let mut cmd = tokio::process::Command::new(&hook.path);
    cmd.arg0(&hook.args[0])
        .args(&hook.args[1..])
        .env_clear()
        .envs(hook.env.iter().filter_map(|kv| kv.split_once('=')))
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(ns) = ns {
        crate::network::netns::enter_on_exec(cmd.as_std_mut(), ns);
    }
    // ETXTBSY means some process still holds the hook binary open for writing: typically a
    // tool that wrote it a moment ago, or a writer's fd that a concurrent fork inherited for the
    // instant before its exec. Both clear within milliseconds; a hook does not fail for them.
    let mut attempt = 0u32;
    let mut child = loop {
        match cmd.spawn() {
            Ok(child) => break child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 8 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(5 << attempt.min(5))).await;
            }
            Err(e) => return Err(format!("cannot execute: {e}")),
        }
    };
    drop(cmd);
    let pgid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state closes the pipe: not an error.
        let _ = stdin.write_all(input).await;
    }
    let mut stderr = child.stderr.take();
    let mut stdout = child.stdout.take();
    let collect = tokio::spawn(async move {
        let mut err = Vec::new();
        let mut out = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut err).await;
        }
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut out).await;
        }
        (out, err)
    });
    let status = match hook.timeout {
        Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                kill_group(pgid);
                let _ = child.wait().await;
                collect.abort();
                return Err(format!("timed out after {}s (killed)", limit.as_secs()));
            }
        },
        None => child.wait().await,
    }
    .map_err(|e| format!("wait: {e}"))?;
    // A hook may leave a child holding its pipes: take what came, do not wait for them.
    let (_out, err) = match tokio::time::timeout(Duration::from_millis(500), collect).await {
        Ok(Ok(v)) => v,
        _ => (Vec::new(), Vec::new()),
    };
    if status.success() {
        return Ok(());
    }
    let tail = String::from_utf8_lossy(&err[err.len().saturating_sub(STDERR_TAIL)..])
        .trim()
        .to_string();
    Err(format!(
        "{status}{}",
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {tail}")
        }
    ))
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid {
        if let Err(e) = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid as i32),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            warn!("kill hook process group {pgid}: {e}");
        }
    }
}

/// The audit event for one hook the shim ran.
pub fn audit_event(ctx: &SandboxContext, container_id: &str, run: &HookRun) -> AuditEvent {
    ctx.hook(
        container_id,
        &run.kind,
        &run.path.display().to_string(),
        run.duration,
        run.failure.as_deref(),
    )
    .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::test_script as script;
    use serde_json::{json, Value};

    fn state(bundle: &Path) -> HookState {
        HookState {
            id: "c1".into(),
            status: "created",
            pid: 42,
            bundle: bundle.to_path_buf(),
            annotations: json!({"a": "b"}),
        }
    }

    #[tokio::test]
    async fn runs_with_state_argv_env_and_cwd() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("out");
        let rec = script(
            dir.path(),
            "rec",
            &format!(
                "{{ echo \"$# $1\"; echo \"$MARK\"; pwd; cat; }} > {}",
                out.display()
            ),
        );
        let hook = Hook {
            path: rec,
            args: vec!["recorder".into(), "one".into()],
            env: vec!["MARK=yes".into()],
            timeout: Some(Duration::from_secs(5)),
        };
        let mut runs = Vec::new();
        run("createContainer", &[hook], &state(dir.path()), None, |r| {
            runs.push(r)
        })
        .await
        .expect("runs");
        assert_eq!(runs.len(), 1);
        assert_eq!(
            (
                runs[0].kind.as_str(),
                runs[0].path.file_name(),
                &runs[0].failure
            ),
            ("createContainer", Some(std::ffi::OsStr::new("rec")), &None)
        );
        let text = std::fs::read_to_string(&out).expect("recorded");
        let lines: Vec<&str> = text.lines().collect();
        // A script sees its own path as $0 (the kernel runs it); args[1..] are its arguments.
        assert_eq!(lines[0], "1 one");
        assert_eq!(lines[1], "yes");
        assert_eq!(
            Path::new(lines[2]),
            std::fs::canonicalize(dir.path()).expect("canon")
        );
        let st: Value = serde_json::from_str(lines[3]).expect("state json");
        assert_eq!(st["id"], "c1");
        assert_eq!(st["status"], "created");
        assert_eq!(st["pid"], 42);
        assert_eq!(st["annotations"]["a"], "b");
    }

    #[tokio::test]
    async fn failure_and_timeout_stop_the_list() {
        let dir = tempfile::tempdir().expect("tmp");
        let marker = dir.path().join("second-ran");
        let fail = script(dir.path(), "fail", "echo broken network >&2; exit 3");
        let slow = script(dir.path(), "slow", "sleep 30");
        let second = script(dir.path(), "second", &format!("touch {}", marker.display()));
        let h = |p: &PathBuf, t: Option<u64>| Hook {
            path: p.clone(),
            args: vec![p.display().to_string()],
            env: vec![],
            timeout: t.map(Duration::from_secs),
        };
        let mut runs = Vec::new();
        let e = run(
            "startContainer",
            &[h(&fail, None), h(&second, None)],
            &state(dir.path()),
            None,
            |r| runs.push(r),
        )
        .await
        .expect_err("fails")
        .to_string();
        // The failing hook is reported (with its cause); the one after it never ran.
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].path, fail);
        assert!(
            runs[0]
                .failure
                .as_deref()
                .is_some_and(|f| f.contains("exit status: 3")),
            "{runs:?}"
        );
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains("broken network"), "{e}");
        assert!(e.contains("startContainer[0]"), "{e}");
        assert!(!marker.exists(), "a hook after the failing one ran");

        let started = std::time::Instant::now();
        let e = run(
            "createContainer",
            &[h(&slow, Some(1))],
            &state(dir.path()),
            None,
            |_| {},
        )
        .await
        .expect_err("times out")
        .to_string();
        assert!(e.contains("timed out after 1s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// A process still running, by PID, if its state is not zombie (a killed child of a killed
    /// hook is reparented and may stay a zombie until its new parent reaps it).
    fn alive(pid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // "PID (COMM) STATE ...": the state follows the last ')'.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    }

    /// Kills the hook's background child if the test did not see it go.
    struct KillSleep(Option<i32>);

    impl Drop for KillSleep {
        fn drop(&mut self) {
            let Some(pid) = self.0 else { return };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"sleep\0") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    #[tokio::test]
    async fn a_timed_out_hook_is_killed_with_its_process_group() {
        let dir = tempfile::tempdir().expect("tmp");
        let pidfile = dir.path().join("child.pid");
        let tmp = dir.path().join("child.pid.tmp");
        // A child in the background, in the hook's process group (no job control in sh -c),
        // its PID written atomically before the hook waits for it.
        let slow = script(
            dir.path(),
            "slow",
            &format!(
                "sleep 30 & echo $! > {tmp}; mv {tmp} {pid}; wait",
                tmp = tmp.display(),
                pid = pidfile.display()
            ),
        );
        let hook = Hook {
            path: slow.clone(),
            args: vec![slow.display().to_string()],
            env: vec![],
            timeout: Some(Duration::from_secs(1)),
        };
        let mut guard = KillSleep(None);
        let e = run("createContainer", &[hook], &state(dir.path()), None, |_| {})
            .await
            .expect_err("times out")
            .to_string();
        assert!(e.contains("timed out after 1s"), "{e}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("the hook wrote its child's PID")
            .trim()
            .parse()
            .expect("a PID");
        guard.0 = Some(pid);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while alive(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !alive(pid),
            "the hook's background child {pid} outlived the timeout"
        );
    }
}
