//! A real sandbox doing many `open` calls (busybox `: < /tmp/f` in a loop,
//! 100,000 by default; `SAFEHOUSE_STORM_OPENS` to change), run with the
//! default audit plan (process, file, network) through sink → writer → file,
//! and without audit. Prints events lost (target 0) and the run-time ratio
//! audit on / off (target under 1.3x), medians of 3 runs each.
//! Needs root, runsc and busybox-static; prints why it skipped otherwise.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::session::{PodInitConfig, SessionOptions, TraceCategory, TraceMetadata};
use safehouse_audit::sink::{SinkOptions, TraceSink};
use safehouse_audit::writer::{open_append, AuditWriter, WriterConfig};
use safehouse_audit::Action;
use tokio::sync::mpsc;

struct Sample {
    secs: f64,
    opens_seen: u64,
    sentry_dropped: u64,
    queue_dropped: u64,
}

async fn run(
    runsc: &Path,
    dir: &Path,
    opens: u64,
    audit: bool,
    round: u32,
) -> Result<Sample, String> {
    let script =
        format!("echo x > /tmp/f; i=0; while [ $i -lt {opens} ]; do : < /tmp/f; i=$((i+1)); done");
    let work = dir.join(format!("r{round}-{audit}"));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let bundle = support::make_bundle(runsc, &work, &["/bin/sh", "-c", &script])?;
    let root = work.join("root");
    let id = format!("storm-{}-{round}-{audit}", std::process::id());
    let mut cmd = tokio::process::Command::new(runsc);
    cmd.arg(format!("--root={}", root.display()))
        .arg("--network=none");

    let mut pipeline = None;
    if audit {
        let sock = work.join("trace.sock");
        let sink = TraceSink::bind(&sock, SinkOptions::default()).map_err(|e| e.to_string())?;
        let meta = std::process::Command::new(runsc)
            .args(["trace", "metadata"])
            .output()
            .map_err(|e| e.to_string())?;
        let metadata = TraceMetadata::parse(&String::from_utf8_lossy(&meta.stdout))
            .map_err(|e| e.to_string())?;
        let cfg = PodInitConfig::new(
            &[
                TraceCategory::Process,
                TraceCategory::File,
                TraceCategory::Network,
            ],
            &sock,
            &metadata,
            &SessionOptions::default(),
        )
        .map_err(|e| e.to_string())?;
        let cfg_path = work.join("init.json");
        std::fs::write(&cfg_path, cfg.to_json()).map_err(|e| e.to_string())?;
        cmd.arg(format!("--pod-init-config={}", cfg_path.display()));
        let (tx, mut rx) = mpsc::channel(4096);
        let handle = sink.spawn(SandboxContext::new(&id), tx);
        let file = open_append(&work.join("audit.jsonl")).map_err(|e| e.to_string())?;
        let (writer, done) =
            AuditWriter::spawn(file, WriterConfig::default()).map_err(|e| e.to_string())?;
        let counter = tokio::spawn(async move {
            let mut opens = 0u64;
            while let Some(ev) = rx.recv().await {
                // The loop's read-only opens (not the initial `echo x > /tmp/f`).
                let file = ev.file.as_ref();
                if ev.action == Action::Open
                    && file.and_then(|f| f.path.as_deref()) == Some("/tmp/f")
                    && file.and_then(|f| f.access.as_deref()) == Some("read")
                {
                    opens += 1;
                }
                writer.submit(ev);
            }
            (opens, writer.stats().queue_dropped)
        });
        pipeline = Some((handle, counter, done));
    }
    cmd.args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let pid = child.id();
    let out = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output()).await;
    let secs = start.elapsed().as_secs_f64();
    support::cleanup(runsc, &root, &id);
    let out = match out {
        Ok(out) => out.map_err(|e| e.to_string())?,
        Err(_) => {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err("runsc run timed out".into());
        }
    };
    if !out.status.success() {
        return Err(format!(
            "workload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut sample = Sample {
        secs,
        opens_seen: 0,
        sentry_dropped: 0,
        queue_dropped: 0,
    };
    if let Some((handle, counter, done)) = pipeline {
        // Let the last packets drain, then close the sink so the counter ends.
        tokio::time::sleep(Duration::from_millis(500)).await;
        sample.sentry_dropped = handle.stats().sentry_dropped.load(Ordering::Relaxed);
        drop(handle);
        let (opens, queue_dropped) = counter.await.map_err(|e| e.to_string())?;
        done.finish();
        sample.opens_seen = opens;
        sample.queue_dropped = queue_dropped;
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(sample)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("openat_storm: skipped (needs root to run runsc)");
        return;
    }
    let Some(runsc) =
        support::which(&std::env::var("SAFEHOUSE_TEST_RUNSC").unwrap_or_else(|_| "runsc".into()))
    else {
        println!("openat_storm: skipped (no runsc)");
        return;
    };
    if !Path::new("/bin/busybox").is_file() {
        println!("openat_storm: skipped (no /bin/busybox)");
        return;
    }
    let opens: u64 = std::env::var("SAFEHOUSE_STORM_OPENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("openat_storm: no tokio runtime: {e}");
            return;
        }
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            println!("openat_storm: no temp dir: {e}");
            return;
        }
    };
    rt.block_on(async {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for round in 0..3 {
            for audit in [false, true] {
                match run(&runsc, dir.path(), opens, audit, round).await {
                    Ok(s) => {
                        if audit {
                            println!(
                                "  audit on : {:.2} s, opens recorded {}/{opens}, gVisor dropped {}, queue dropped {}",
                                s.secs, s.opens_seen, s.sentry_dropped, s.queue_dropped
                            );
                            on.push(s);
                        } else {
                            println!("  audit off: {:.2} s", s.secs);
                            off.push(s.secs);
                        }
                    }
                    Err(e) => println!("  run failed: {e}"),
                }
            }
        }
        let lost: Vec<f64> = on.iter().map(|s| (opens - s.opens_seen.min(opens)) as f64).collect();
        let off_m = median(off);
        let on_m = median(on.iter().map(|s| s.secs).collect());
        println!(
            "openat_storm ({opens} opens, median of 3): audit off {off_m:.2} s, on {on_m:.2} s, ratio {:.2}x (target < 1.3x); events lost median {} (target 0)",
            on_m / off_m,
            median(lost)
        );
    });
}
