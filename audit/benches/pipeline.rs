//! Decode + stamp + chain + serialise throughput of the audit pipeline on
//! synthetic Sentry packets (one core). Prints events/s, then the same with signed
//! checkpoints on (leaf hashing per event, a checkpoint every 10,000 events) and the cost of
//! one checkpoint, then runs criterion. Target: at least 200,000 events/s; with signing,
//! 300,000 events per CPU-second (issue 16).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use criterion::{criterion_group, Criterion, Throughput};
use safehouse_audit::encode::{exit, packet, sockaddr_in, Context};
use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::names::message_type as mt;
use safehouse_audit::proto::sentry::{SentryExecve, SentryExit};
use safehouse_audit::proto::syscall::{SyscallConnect, SyscallOpen};
use safehouse_audit::{decode_packet, Body, Chain};

/// A realistic mix: mostly opens, some execs, connects and exits.
fn packets() -> Vec<Vec<u8>> {
    let ctx = Context {
        time_ns: 1_795_744_503_000_000_000,
        tid: 42,
        pid: 42,
        container_id: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        cwd: "/workspace/project".into(),
        name: "python3".into(),
        uid_gid: Some((1000, 1000)),
    };
    let open = packet(
        mt::SYSCALL_OPEN,
        0,
        &SyscallOpen {
            context_data: ctx.to_proto(),
            exit: exit(5, 0),
            sysno: 257,
            fd: -100,
            pathname: b"src/module/file_under_test.py".to_vec(),
            flags: 0o2101,
            mode: 0o644,
            ..Default::default()
        },
    );
    let exec = packet(
        mt::SENTRY_EXEC,
        0,
        &SentryExecve {
            context_data: ctx.to_proto(),
            binary_path: b"/usr/bin/git".to_vec(),
            argv: vec![
                b"git".to_vec(),
                b"commit".to_vec(),
                b"-m".to_vec(),
                b"fix the parser".to_vec(),
            ],
            binary_mode: 0o100755,
            ..Default::default()
        },
    );
    let connect = packet(
        mt::SYSCALL_CONNECT,
        0,
        &SyscallConnect {
            context_data: ctx.to_proto(),
            exit: exit(0, 0),
            sysno: 42,
            fd: 7,
            address: sockaddr_in(Ipv4Addr::new(10, 200, 0, 1), 443),
            ..Default::default()
        },
    );
    let gone = packet(
        mt::SENTRY_TASK_EXIT,
        0,
        &SentryExit {
            context_data: ctx.to_proto(),
            exit_status: 0,
            ..Default::default()
        },
    );
    let mut mix = Vec::new();
    for _ in 0..7 {
        mix.push(open.clone());
    }
    mix.extend([exec, connect, gone]);
    mix
}

/// One event through the pipeline, sealed into `out` as the sink's reader does (a drain's
/// lines share one buffer); returns the line length.
fn pipeline(p: &[u8], sb: &SandboxContext, chain: &mut Chain, out: &mut Vec<u8>) -> usize {
    if out.len() > 16 * 1024 {
        out.clear();
    }
    let before = out.len();
    match decode_packet(p) {
        Ok(d) => match d.body {
            Body::Event(mut ev) => {
                sb.stamp(&mut ev);
                chain
                    .seal_into(&mut ev, out)
                    .map_or(0, |()| out.len() - before)
            }
            Body::Unknown => 0,
        },
        Err(_) => 0,
    }
}

fn report_events_per_second() {
    let mix = packets();
    let sb = SandboxContext::new("sb-bench")
        .with_namespace("k8s.io")
        .with_policy("default", Some("sha256:abc".into()));
    let mut chain = Chain::new("sb-bench");
    let n = std::env::var("SAFEHOUSE_PIPELINE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let mut out = Vec::with_capacity(32 * 1024);
    // Warm up.
    for p in mix.iter().cycle().take(10_000) {
        black_box(pipeline(p, &sb, &mut chain, &mut out));
    }
    let mut bytes = 0usize;
    let start = Instant::now();
    let cpu_start = thread_cpu_secs();
    for p in mix.iter().cycle().take(n) {
        bytes += black_box(pipeline(p, &sb, &mut chain, &mut out));
    }
    let cpu = thread_cpu_secs() - cpu_start;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "pipeline: {n} events, {:.0} events per CPU-second on one core ({cpu:.3} s CPU; {:.0} events/s wall clock over {secs:.3} s on a shared machine), {} bytes/event",
        n as f64 / cpu,
        n as f64 / secs,
        bytes / n
    );
}

/// The pipeline with signing on: every event's hash becomes a Merkle leaf, and every
/// `SAFEHOUSE_CHECKPOINT_EVENTS` (10,000) events a checkpoint is signed and the key file
/// rewritten (flock, read, sign, write, fsync, rename), as the writer thread does.
fn report_signing() {
    use safehouse_audit::seal::{key, SealConfig, Sealer};
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    if key::generate(dir.path()).is_err() {
        return;
    }
    let config = SealConfig {
        every_events: u64::MAX,
        ..SealConfig::new(dir.path().join(key::KEY_FILE))
    };
    let Ok(mut sealer) = Sealer::open(config) else {
        return;
    };
    let every: usize = std::env::var("SAFEHOUSE_CHECKPOINT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let n = std::env::var("SAFEHOUSE_PIPELINE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let mix = packets();
    let sb = SandboxContext::new("sb-bench").with_namespace("k8s.io");
    let mut chain = Chain::new("sb-bench");
    let mut out = Vec::with_capacity(32 * 1024);
    let mut log = Vec::new();
    let (mut checkpoints, mut checkpoint_cpu, mut checkpoint_wall) = (0u32, 0.0, 0.0);
    let start = Instant::now();
    let cpu_start = thread_cpu_secs();
    for (i, p) in mix.iter().cycle().take(n).enumerate() {
        if black_box(pipeline(p, &sb, &mut chain, &mut out)) > 0 {
            let mut hash = [0u8; 32];
            let _ = hex::decode_to_slice(chain.last_hash(), &mut hash);
            sealer.add("sb-bench", chain.last_seq(), &hash);
        }
        if (i + 1) % every == 0 {
            let (c0, w0) = (thread_cpu_secs(), Instant::now());
            if sealer.checkpoint(&mut log).is_err() {
                return;
            }
            checkpoint_cpu += thread_cpu_secs() - c0;
            checkpoint_wall += w0.elapsed().as_secs_f64();
            checkpoints += 1;
            log.clear();
        }
    }
    let cpu = thread_cpu_secs() - cpu_start;
    let secs = start.elapsed().as_secs_f64();
    let per = f64::from(checkpoints.max(1));
    println!(
        "pipeline with signing: {n} events, {:.0} events per CPU-second ({cpu:.3} s CPU, {secs:.3} s wall); {checkpoints} checkpoints of {every} events, {:.0} us CPU and {:.0} us wall each (flock, key file read, Merkle root, ed25519 sign, key file rewritten in place; fsync and rename only at a new epoch)",
        n as f64 / cpu,
        checkpoint_cpu / per * 1e6,
        checkpoint_wall / per * 1e6,
    );
}

/// Verify throughput: a signed log of `SAFEHOUSE_VERIFY_EVENTS` (100,000) events of the
/// pipeline's mix, checkpointed every 10,000, written to a temporary file and verified with
/// the node key (chains, Merkle roots, signatures).
fn report_verify() {
    use safehouse_audit::seal::{key, SealConfig, Sealer};
    use safehouse_audit::verify::{verify_files, VerifyOptions};
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    let Ok(public) = key::generate(dir.path()) else {
        return;
    };
    let config = SealConfig {
        every_events: u64::MAX,
        ..SealConfig::new(dir.path().join(key::KEY_FILE))
    };
    let Ok(mut sealer) = Sealer::open(config) else {
        return;
    };
    let n: usize = std::env::var("SAFEHOUSE_VERIFY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mix = packets();
    let sb = SandboxContext::new("sb-bench").with_namespace("k8s.io");
    let mut chain = Chain::new("sb-bench");
    let mut log = Vec::with_capacity(n * 800);
    let mut out = Vec::new();
    for (i, p) in mix.iter().cycle().take(n).enumerate() {
        out.clear();
        if pipeline(p, &sb, &mut chain, &mut out) > 0 {
            log.extend_from_slice(&out);
            let mut hash = [0u8; 32];
            let _ = hex::decode_to_slice(chain.last_hash(), &mut hash);
            sealer.add("sb-bench", chain.last_seq(), &hash);
        }
        if (i + 1) % 10_000 == 0 && sealer.checkpoint(&mut log).is_err() {
            return;
        }
    }
    let path = dir.path().join("audit.jsonl");
    if std::fs::write(&path, &log).is_err() {
        return;
    }
    let options = VerifyOptions {
        key: Some(public),
        ..VerifyOptions::default()
    };
    let (c0, w0) = (thread_cpu_secs(), Instant::now());
    let Ok(report) = verify_files(&[&path], options) else {
        return;
    };
    let cpu = thread_cpu_secs() - c0;
    let secs = w0.elapsed().as_secs_f64();
    let mb = log.len() as f64 / 1e6;
    println!(
        "verify: {n} events, {mb:.0} MB, intact {}: {:.0} events and {:.1} MB per CPU-second ({cpu:.2} s CPU, {secs:.2} s wall): a 1 GB log in ~{:.0} s of CPU",
        report.is_intact(),
        n as f64 / cpu,
        mb / cpu,
        1000.0 / (mb / cpu),
    );
}

/// CPU time consumed by this thread, in seconds (immune to other load).
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn bench(c: &mut Criterion) {
    let mix = packets();
    let sb = SandboxContext::new("sb-bench");
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(mix.len() as u64));
    group.bench_function("decode+chain+serialise (10-event mix)", |b| {
        let mut chain = Chain::new("sb-bench");
        let mut out = Vec::with_capacity(32 * 1024);
        b.iter(|| {
            for p in &mix {
                black_box(pipeline(p, &sb, &mut chain, &mut out));
            }
        })
    });
    group.bench_function("decode only (10-event mix)", |b| {
        b.iter(|| {
            for p in &mix {
                let _ = black_box(decode_packet(p));
            }
        })
    });
    let sample = match decode_packet(&mix[0]) {
        Ok(d) => match d.body {
            Body::Event(ev) => ev,
            Body::Unknown => return,
        },
        Err(_) => return,
    };
    group.throughput(Throughput::Elements(1));
    group.bench_function("seal only (open event)", |b| {
        let mut chain = Chain::new("sb-bench");
        b.iter(|| {
            let mut ev = sample.clone();
            sb.stamp(&mut ev);
            black_box(chain.seal(&mut ev).map(|l| l.len()).unwrap_or(0))
        })
    });
    group.bench_function("sha256 of 720 bytes", |b| {
        let data = vec![7u8; 720];
        b.iter(|| black_box(safehouse_audit::chain::sha256_hex(black_box(&data))))
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    report_events_per_second();
    report_signing();
    report_verify();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
