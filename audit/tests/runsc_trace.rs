//! The real thing: runsc with a trace session pointing at our sink, a busybox
//! workload, and the decoded events checked. Needs root, runsc and
//! busybox-static; skipped (with the reason printed) otherwise.
//!
//! Binaries tried: `$SAFEHOUSE_TEST_RUNSC` (colon-separated paths), default
//! `runsc` from PATH. runsc 20221219 is run with `--platform=ptrace`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

mod support;

use support::{cleanup, default_session, make_bundle, which};

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::sink::{SinkOptions, TraceSink};
use safehouse_audit::{Action, AuditEvent, Category};
use tokio::sync::mpsc;

const SCRIPT: &str = "echo hi > /tmp/x; cat /tmp/x; exit 7";

fn skip(why: &str) {
    eprintln!("skipped: {why}");
}

struct Run {
    events: Vec<AuditEvent>,
    exit_code: Option<i32>,
    version: String,
}

async fn run_once(runsc: &Path, dir: &Path) -> Result<Run, String> {
    let version = std::process::Command::new(runsc)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .map_err(|e| e.to_string())?;
    let bundle = make_bundle(runsc, dir, &["/bin/sh", "-c", SCRIPT])?;
    let sock = dir.join("trace.sock");
    let sink = TraceSink::bind(&sock, SinkOptions::default()).map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::channel(4096);
    let handle = sink.spawn(SandboxContext::new("sb-test"), tx);

    let cfg_path = dir.join("pod-init.json");
    std::fs::write(&cfg_path, default_session(runsc, &sock)?).map_err(|e| e.to_string())?;

    let root = dir.join("runsc-root");
    let id = format!("sh-audit-{}", std::process::id());
    let mut cmd = tokio::process::Command::new(runsc);
    cmd.arg(format!("--root={}", root.display()))
        .arg("--network=none");
    if version.contains("20221219") {
        cmd.arg("--platform=ptrace");
    }
    cmd.arg(format!("--pod-init-config={}", cfg_path.display()))
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let pid = child.id();
    let output = match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await
    {
        Ok(out) => out.map_err(|e| e.to_string())?,
        Err(_) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            cleanup(runsc, &root, &id);
            return Err("runsc run timed out".into());
        }
    };
    cleanup(runsc, &root, &id);
    eprintln!(
        "{version}: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut events = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await {
        events.push(ev);
    }
    drop(handle);
    Ok(Run {
        events,
        exit_code: output.status.code(),
        version,
    })
}

fn describe(ev: &AuditEvent) -> String {
    let p = ev.process.as_ref();
    format!(
        "{:?}/{:?} {} pid={:?} name={:?} argv={:?} file={:?} exit={:?} result={:?}",
        ev.category,
        ev.action,
        ev.point.as_deref().unwrap_or("-"),
        p.and_then(|p| p.pid),
        p.and_then(|p| p.name.clone()),
        p.and_then(|p| p.argv.clone()),
        ev.file.as_ref().map(|f| (f.path.clone(), f.access.clone())),
        ev.exit.as_ref().map(|e| (e.code, e.signal)),
        ev.result.as_ref().map(|r| (r.retval, r.errno)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_trace_points_decode_into_events() {
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root to run runsc");
    }
    if !Path::new("/bin/busybox").is_file() {
        return skip("needs busybox-static at /bin/busybox");
    }
    let wanted = std::env::var("SAFEHOUSE_TEST_RUNSC").unwrap_or_else(|_| "runsc".into());
    let binaries: Vec<PathBuf> = wanted.split(':').filter_map(which).collect();
    if binaries.is_empty() {
        return skip("no runsc binary found");
    }
    for runsc in binaries {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let run = match run_once(&runsc, dir.path()).await {
            Ok(run) => run,
            Err(e) => panic!("{}: {e}", runsc.display()),
        };
        eprintln!(
            "== {} ({}): {} events",
            runsc.display(),
            run.version,
            run.events.len()
        );
        for ev in &run.events {
            eprintln!("  {}", describe(ev));
        }
        // Chain the real events as the writer would, print the lines, verify them.
        let mut chain = safehouse_audit::Chain::new("sb-test");
        let mut file = Vec::new();
        for ev in &run.events {
            let mut ev = ev.clone();
            let line = chain.seal(&mut ev).unwrap_or_else(|e| panic!("{e}"));
            eprint!("  {}", String::from_utf8_lossy(&line));
            file.extend(line);
        }
        let report = safehouse_audit::verify::verify_reader(file.as_slice(), Default::default());
        assert!(
            report.is_ok_and(|r| r.is_intact()),
            "real events must verify"
        );
        assert_eq!(run.exit_code, Some(7), "exit code of the workload");
        let id_is_ours = |ev: &&AuditEvent| {
            ev.container_id
                .as_deref()
                .is_some_and(|c| c.starts_with("sh-audit-"))
        };
        let start = run
            .events
            .iter()
            .find(|e| e.point.as_deref() == Some("container/start"));
        assert!(
            start.is_some_and(|e| id_is_ours(&e)),
            "container/start with the container id"
        );
        assert!(
            run.events
                .iter()
                .filter(id_is_ours)
                .any(|e| e.action == Action::Exec
                    && e.process
                        .as_ref()
                        .and_then(|p| p.argv.as_ref())
                        .is_some_and(|a| a.iter().any(|s| s.contains("sh") || s.contains("cat")))),
            "an exec of sh or cat"
        );
        assert!(
            run.events.iter().any(|e| e.category == Category::File
                && e.action == Action::Open
                && e.file
                    .as_ref()
                    .is_some_and(|f| f.path.as_deref() == Some("/tmp/x")
                        && f.access.as_deref() == Some("write"))),
            "an open of /tmp/x for writing"
        );
        assert!(
            run.events
                .iter()
                .any(|e| e.point.as_deref() == Some("sentry/task_exit")
                    && e.exit.as_ref().and_then(|x| x.code) == Some(7)),
            "the task exit with code 7"
        );
    }
}
