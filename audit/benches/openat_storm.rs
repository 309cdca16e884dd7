//! A real sandbox doing many `open` calls (busybox `: < /tmp/f` in a loop,
//! 100,000 by default; `SAFEHOUSE_STORM_OPENS` to change), run with the
//! default audit plan (process, file, network) through sink → writer → file,
//! and without audit. Prints events lost (target 0) and the run-time ratio
//! audit on / off (target under 1.3x), medians of 5 rounds
//! (`SAFEHOUSE_STORM_ROUNDS`), and the consumer's CPU per recorded open.
//! Needs root, runsc and busybox-static; prints why it skipped otherwise.
//!
//! Knobs for finding where the time goes (docs/benchmarks.md has the figures):
//! `SAFEHOUSE_STORM_SINK=discard` replaces the pipeline by a reader that drains
//! and discards; `SAFEHOUSE_STORM_BATCH_US` sets the sink's batch interval (0:
//! read each packet as it arrives); `SAFEHOUSE_STORM_DROP_CTX` and
//! `SAFEHOUSE_STORM_DROP_OPT` (comma-separated) remove context and optional
//! fields from every point; `SAFEHOUSE_STORM_SPIN=F` (0 < F < 1) runs, during
//! every round, a thread at `SCHED_IDLE` that is busy for F of each millisecond:
//! what CPU taken on the other core costs the sandbox, audit or not.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::sink::{Closed, Deliver, SinkOptions, TraceSink};
use safehouse_audit::writer::{open_append, AuditWriter, WriterConfig};
use safehouse_audit::{Action, AuditEvent};

/// The sink's destination here: counts the loop's read-only opens of `/tmp/f` (not the
/// initial `echo x > /tmp/f`), then seals the drain into the writer, as the shim's does.
struct Counting {
    writer: AuditWriter,
    opens: AtomicU64,
}

impl Deliver for Counting {
    fn deliver(
        &self,
        batch: &mut Vec<AuditEvent>,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), Closed> {
        let opens = batch
            .iter()
            .filter(|ev| {
                let file = ev.file.as_ref();
                ev.action == Action::Open
                    && file.and_then(|f| f.path.as_deref()) == Some("/tmp/f")
                    && file.and_then(|f| f.access.as_deref()) == Some("read")
            })
            .count();
        self.opens.fetch_add(opens as u64, Ordering::Relaxed);
        self.writer.submit_batch(batch, stopping);
        Ok(())
    }
}

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
    let mut raw = None;
    let variant = std::env::var("SAFEHOUSE_STORM_SINK").unwrap_or_default();
    if audit {
        let sock = work.join("trace.sock");
        if variant == "discard" {
            raw = Some(discard_sink(&sock)?);
        }
        let cfg_path = work.join("init.json");
        let session = support::default_session(runsc, &sock)?;
        std::fs::write(&cfg_path, trimmed(&session)).map_err(|e| e.to_string())?;
        cmd.arg(format!("--pod-init-config={}", cfg_path.display()));
    }
    if audit && variant != "discard" {
        let sock = work.join("trace.sock");
        let mut options = SinkOptions::default();
        if let Some(us) = std::env::var("SAFEHOUSE_STORM_BATCH_US")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            options.batch_interval = Duration::from_micros(us);
        }
        let sink = TraceSink::bind(&sock, options).map_err(|e| e.to_string())?;
        let file = open_append(&work.join("audit.jsonl")).map_err(|e| e.to_string())?;
        let (writer, done) =
            AuditWriter::spawn(file, WriterConfig::default()).map_err(|e| e.to_string())?;
        let counter = Arc::new(Counting {
            writer,
            opens: AtomicU64::new(0),
        });
        // What the shim stamps on every event of a CRI pod: namespace, pod and policy.
        let ctx = SandboxContext::new(&id)
            .with_namespace("k8s.io")
            .with_pod("agent-7f9c", "agents")
            .with_policy("coding-agent", Some(format!("sha256:{}", "5e".repeat(32))));
        let handle = sink.spawn(ctx, Arc::clone(&counter));
        pipeline = Some((handle, counter, done));
    }
    cmd.args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spinner = Spinner::start();
    let cpu0 = self_cpu();
    let sandbox_cpu0 = cpu_of(libc::RUSAGE_CHILDREN);
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let pid = child.id();
    let out = tokio::time::timeout(Duration::from_secs(600), child.wait_with_output()).await;
    let secs = start.elapsed().as_secs_f64();
    let sandbox_cpu = cpu_of(libc::RUSAGE_CHILDREN) - sandbox_cpu0;
    let spun = spinner.map(Spinner::stop);
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
    println!(
        "    sandbox CPU {sandbox_cpu:.2} s = {:.1} us per open (runsc and everything under it)",
        sandbox_cpu * 1e6 / opens as f64
    );
    let mut sample = Sample {
        secs,
        opens_seen: 0,
        sentry_dropped: 0,
        queue_dropped: 0,
    };
    if let Some(t) = raw {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sample.opens_seen = t.join().unwrap_or(0);
    }
    if let Some((handle, counter, done)) = pipeline {
        // Let the last packets drain, then close the sink and the writer.
        tokio::time::sleep(Duration::from_millis(500)).await;
        sample.sentry_dropped = handle.stats().sentry_dropped.load(Ordering::Relaxed);
        drop(handle);
        sample.opens_seen = counter.opens.load(Ordering::Relaxed);
        sample.queue_dropped = counter.writer.stats().queue_dropped;
        drop(counter);
        done.finish();
    }
    let written = std::fs::metadata(work.join("audit.jsonl")).map_or(0, |m| m.len());
    if std::env::var_os("SAFEHOUSE_STORM_KEEP").is_some() {
        println!("    kept {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    if audit {
        let cpu = self_cpu() - cpu0 - spun.unwrap_or(0.0);
        println!(
            "    consumer CPU {:.3} s = {:.2} us per open; audit file {:.1} MB ({} bytes per open)",
            cpu,
            cpu * 1e6 / opens as f64,
            written as f64 / 1e6,
            written / opens.max(1)
        );
    }
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
        // on / off of the same round: the machine's drift between rounds cancels out.
        let mut paired = Vec::new();
        let rounds: u32 = std::env::var("SAFEHOUSE_STORM_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        for round in 0..rounds {
            let mut this_off = None;
            for audit in [false, true] {
                match run(&runsc, dir.path(), opens, audit, round).await {
                    Ok(s) => {
                        if audit {
                            println!(
                                "  audit on : {:.2} s, opens recorded {}/{opens}, gVisor dropped {}, queue dropped {}",
                                s.secs, s.opens_seen, s.sentry_dropped, s.queue_dropped
                            );
                            if let Some(o) = this_off {
                                paired.push(s.secs / o);
                            }
                            on.push(s);
                        } else {
                            println!("  audit off: {:.2} s", s.secs);
                            off.push(s.secs);
                            this_off = Some(s.secs);
                        }
                    }
                    Err(e) => println!("  run failed: {e}"),
                }
            }
        }
        let lost: Vec<f64> = on.iter().map(|s| (opens - s.opens_seen.min(opens)) as f64).collect();
        let off_m = median(off);
        let on_m = median(on.iter().map(|s| s.secs).collect());
        let (lo, hi) = paired
            .iter()
            .fold((f64::INFINITY, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        println!(
            "openat_storm ({opens} opens, median of {rounds}): audit off {off_m:.2} s, on {on_m:.2} s, ratio {:.2}x (target < 1.3x); events lost median {} (target 0)",
            on_m / off_m,
            median(lost)
        );
        println!(
            "  per round (on / off of the same round): median {:.2}x, range {lo:.2}x-{hi:.2}x",
            median(paired)
        );
    });
}

/// The `discard` variant: a sink that drains the socket every millisecond while busy (the real
/// one pauses up to 3 ms, so this one wakes more often, not less) but decodes and writes
/// nothing: what the Sentry's emission alone costs the sandbox. Returns the packets it read.
fn discard_sink(path: &Path) -> Result<std::thread::JoinHandle<u64>, String> {
    use nix::sys::socket::{
        accept, bind, listen, recv, send, socket, AddressFamily, Backlog, MsgFlags, SockFlag,
        SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| e.to_string())?;
    bind(
        fd.as_raw_fd(),
        &UnixAddr::new(path).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    listen(&fd, Backlog::new(4).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok(std::thread::spawn(move || {
        let Ok(c) = accept(fd.as_raw_fd()) else {
            return 0;
        };
        let mut buf = vec![0u8; 256 * 1024];
        let _ = recv(c, &mut buf, MsgFlags::empty());
        let _ = send(
            c,
            &safehouse_audit::wire::handshake_bytes(safehouse_audit::wire::PROTOCOL_VERSION),
            MsgFlags::empty(),
        );
        let mut packets = 0u64;
        loop {
            let mut got = 0u64;
            loop {
                match recv(c, &mut buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(0) => {
                        let _ = nix::unistd::close(c);
                        return packets;
                    }
                    Ok(_) => got += 1,
                    Err(_) => break,
                }
            }
            packets += got;
            if got > 0 {
                std::thread::sleep(Duration::from_millis(1));
            } else {
                let mut fds = [libc::pollfd {
                    fd: c,
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
            }
        }
    }))
}

/// Drops the context fields named in SAFEHOUSE_STORM_DROP_CTX and the optional
/// fields in SAFEHOUSE_STORM_DROP_OPT (comma-separated) from every point.
fn trimmed(json: &str) -> String {
    let drop_ctx = std::env::var("SAFEHOUSE_STORM_DROP_CTX").unwrap_or_default();
    let drop_opt = std::env::var("SAFEHOUSE_STORM_DROP_OPT").unwrap_or_default();
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_owned();
    };
    if let Some(points) = v["trace_session"]["points"].as_array_mut() {
        for p in points {
            for (key, names) in [
                ("context_fields", &drop_ctx),
                ("optional_fields", &drop_opt),
            ] {
                if let Some(list) = p[key].as_array_mut() {
                    list.retain(|f| !names.split(',').any(|n| Some(n) == f.as_str()));
                }
            }
        }
    }
    v.to_string()
}

/// The `SAFEHOUSE_STORM_SPIN` load: a `SCHED_IDLE` thread busy for a share of every
/// millisecond, so any runnable thread of the sandbox preempts it at once.
struct Spinner {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl Spinner {
    fn start() -> Option<Self> {
        let duty: f64 = std::env::var("SAFEHOUSE_STORM_SPIN").ok()?.parse().ok()?;
        if !(duty > 0.0 && duty < 1.0) {
            return None;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sets this thread's own policy; the param is valid.
            unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            let cpu0 = thread_cpu();
            let busy = Duration::from_secs_f64(duty / 1000.0);
            let idle = Duration::from_secs_f64((1.0 - duty) / 1000.0);
            while !flag.load(Ordering::Relaxed) {
                let t = Instant::now();
                while t.elapsed() < busy {
                    std::hint::spin_loop();
                }
                std::thread::sleep(idle);
            }
            thread_cpu() - cpu0
        });
        Some(Self { stop, thread })
    }

    /// Stops the load; returns the CPU seconds it used (not the consumer's).
    fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn self_cpu() -> f64 {
    cpu_of(libc::RUSAGE_SELF)
}

/// User + system CPU seconds of this process (`RUSAGE_SELF`) or of its waited-for
/// descendants (`RUSAGE_CHILDREN`: `runsc run` waits for the sandbox and gofer it starts).
fn cpu_of(who: libc::c_int) -> f64 {
    // SAFETY: rusage is plain data (all-zero is valid); getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid rusage to fill.
    unsafe { libc::getrusage(who, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}
