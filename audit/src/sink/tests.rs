//! The sink against synthetic Sentry clients, healthy and hostile.

use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::encode::{exit, packet, Context, SentryClient};
use crate::event::{Action, Category, DropSource};
use crate::names::message_type as mt;
use crate::proto::container::ContainerStart;
use crate::proto::sentry::SentryExit;
use crate::proto::syscall::SyscallOpen;

fn ctx() -> Context {
    Context {
        time_ns: 1,
        tid: 1,
        pid: 1,
        container_id: "c1".into(),
        ..Context::default()
    }
}

async fn next(rx: &mut mpsc::Receiver<AuditEvent>) -> AuditEvent {
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(ev)) => ev,
        other => panic!("no event: {other:?}"),
    }
}

fn start(
    dir: &Path,
    name: &str,
    options: SinkOptions,
) -> (SinkHandle, mpsc::Receiver<AuditEvent>, PathBuf) {
    let path = dir.join(name);
    let sink = TraceSink::bind(&path, options).unwrap_or_else(|e| panic!("{e}"));
    let (tx, rx) = mpsc::channel(1024);
    let handle = sink.spawn(SandboxContext::new(name).with_namespace("ns"), tx);
    (handle, rx, path)
}

/// Runs blocking client code off the async threads.
async fn client<F: FnOnce() + Send + 'static>(f: F) {
    let _ = tokio::task::spawn_blocking(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodes_a_sentry_stream_and_reports_gvisor_drops() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (handle, mut rx, path) = start(dir.path(), "sb1", SinkOptions::default());
    client(move || {
        let (c, version) = SentryClient::handshake(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(version, 1);
        let start = ContainerStart {
            context_data: ctx().to_proto(),
            id: b"c1".to_vec(),
            args: vec![b"sh".to_vec()],
            ..Default::default()
        };
        let open = SyscallOpen {
            context_data: ctx().to_proto(),
            exit: exit(3, 0),
            sysno: 257,
            fd: -100,
            pathname: b"/tmp/x".to_vec(),
            flags: 0o1101,
            ..Default::default()
        };
        let gone = SentryExit {
            context_data: ctx().to_proto(),
            exit_status: 7 << 8,
            ..Default::default()
        };
        for p in [
            packet(mt::CONTAINER_START, 0, &start),
            packet(mt::SYSCALL_OPEN, 5, &open),
            packet(mt::SENTRY_TASK_EXIT, 5, &gone),
        ] {
            c.send(&p).unwrap_or_else(|e| panic!("{e}"));
        }
    })
    .await;
    let first = next(&mut rx).await;
    assert_eq!(
        (
            first.point.as_deref(),
            first.sandbox_id.as_str(),
            first.namespace.as_deref()
        ),
        (Some("container/start"), "sb1", Some("ns"))
    );
    let dropped = next(&mut rx).await;
    assert_eq!(
        (dropped.category, dropped.action),
        (Category::Audit, Action::Dropped)
    );
    assert_eq!(
        dropped.dropped.map(|d| (d.count, d.source)),
        Some((5, DropSource::Sentry))
    );
    let open = next(&mut rx).await;
    assert_eq!(open.file.and_then(|f| f.path).as_deref(), Some("/tmp/x"));
    let exit = next(&mut rx).await;
    assert_eq!(exit.exit.and_then(|e| e.code), Some(7));
    assert_eq!(handle.stats().events.load(Ordering::Relaxed), 3);
    let path = handle.path().to_owned();
    handle.shutdown();
    assert!(!path.exists(), "socket file removed on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_sentry_drop_counts_are_reported_exactly() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (handle, mut rx, path) = start(dir.path(), "sb-drops", SinkOptions::default());
    // gVisor's running counts as they arrive: 7, then an older 3, then 9, 8, 9, then 12.
    let counts = [7u32, 3, 9, 8, 9, 12];
    client(move || {
        let (c, _) = SentryClient::handshake(&path).unwrap_or_else(|e| panic!("{e}"));
        for (i, dropped) in counts.into_iter().enumerate() {
            let gone = SentryExit {
                context_data: ctx().to_proto(),
                exit_status: (i as i32) << 8,
                ..Default::default()
            };
            c.send(&packet(mt::SENTRY_TASK_EXIT, dropped, &gone))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    })
    .await;
    let mut reported = Vec::new();
    let mut exits = 0;
    while exits < counts.len() {
        let ev = next(&mut rx).await;
        match ev.dropped {
            Some(d) => {
                assert_eq!(d.source, DropSource::Sentry);
                reported.push(d.count);
            }
            None => exits += 1,
        }
    }
    assert_eq!(
        reported,
        vec![7, 2, 3],
        "each drop event counts only new losses"
    );
    assert_eq!(handle.stats().sentry_dropped.load(Ordering::Relaxed), 12);
    handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_client_is_counted_and_does_not_disturb_a_healthy_sink() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let options = SinkOptions {
        max_packet: 1024,
        handshake_timeout: Duration::from_millis(300),
        ..SinkOptions::default()
    };
    let (hostile, mut hostile_rx, hpath) = start(dir.path(), "evil", options.clone());
    let (healthy, mut healthy_rx, gpath) = start(dir.path(), "good", options);

    // A peer that connects and never handshakes, and one that sends garbage as a handshake.
    let silent = SentryClient::connect(&hpath).unwrap_or_else(|e| panic!("{e}"));
    let hp = hpath.clone();
    client(move || {
        if let Ok(c) = SentryClient::connect(&hp) {
            let _ = c.send(&[0xff, 0xff, 0xff]);
        }
        let (c, _) = SentryClient::handshake(&hp).unwrap_or_else(|e| panic!("{e}"));
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..3000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 200) as usize;
            let mut p: Vec<u8> = (0..len).map(|j| (seed >> (j % 56)) as u8).collect();
            if i % 3 == 0 && p.len() >= 4 {
                p[0] = 8;
                p[1] = 0;
                p[2] = (i % 60) as u8;
                p[3] = 0;
            }
            let _ = c.send(&p);
        }
        let _ = c.send(&vec![7u8; 2000]); // over max_packet
        let _ = c.send(&packet(300, 0, &SentryExit::default())); // unknown type
    })
    .await;

    let gp = gpath.clone();
    client(move || {
        let (c, _) = SentryClient::handshake(&gp).unwrap_or_else(|e| panic!("{e}"));
        let gone = SentryExit {
            context_data: ctx().to_proto(),
            exit_status: 0,
            ..Default::default()
        };
        let _ = c.send(&packet(mt::SENTRY_TASK_EXIT, 0, &gone));
    })
    .await;
    let ev = next(&mut healthy_rx).await;
    assert_eq!((ev.sandbox_id.as_str(), ev.action), ("good", Action::Exit));

    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(silent);
    let stats = hostile.stats();
    assert!(stats.handshake_failures.load(Ordering::Relaxed) >= 1);
    assert!(stats.malformed.load(Ordering::Relaxed) > 0);
    assert_eq!(stats.oversized.load(Ordering::Relaxed), 1);
    assert!(stats.unknown_types.load(Ordering::Relaxed) >= 1);
    // Drain: the garbage shows up only as aggregated audit/dropped reports.
    let mut reported = 0;
    while let Ok(Some(ev)) =
        tokio::time::timeout(Duration::from_millis(1500), hostile_rx.recv()).await
    {
        // Garbage with a valid header also claims gVisor drops; only count ours.
        match ev.dropped {
            Some(d) if d.source != DropSource::Sentry => reported += d.count,
            _ => {}
        }
    }
    let counted = stats.malformed.load(Ordering::Relaxed)
        + stats.oversized.load(Ordering::Relaxed)
        + stats.unknown_types.load(Ordering::Relaxed);
    assert_eq!(reported, counted);
    drop(healthy);
}

#[tokio::test]
async fn bind_refuses_to_replace_a_regular_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        TraceSink::bind(&path, SinkOptions::default()),
        Err(SinkError::Socket { .. })
    ));
}

#[test]
fn bind_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    assert!(TraceSink::bind(&dir.path().join("s"), SinkOptions::default()).is_err());
}

#[test]
fn sandbox_sockets_are_named_by_namespace_and_id() {
    let dir = Path::new("/run/safehouse/trace");
    // sha256("k8s.io/abc") = dc8322dde99ae159... (the integration harness's leak check has it too)
    assert_eq!(
        sandbox_socket_path(dir, "k8s.io", "abc"),
        dir.join("dc8322dde99ae159.sock")
    );
    // The same id in two namespaces: two sockets.
    assert_ne!(
        sandbox_socket_path(dir, "ns-a", "agent"),
        sandbox_socket_path(dir, "ns-b", "agent")
    );
}

#[tokio::test]
async fn long_paths_are_refused_and_short_paths_offered() {
    let long = PathBuf::from(format!(
        "/run/containerd/io.containerd.runtime.v2.task/k8s.io/{}/trace.sock",
        "a".repeat(64)
    ));
    assert!(matches!(
        TraceSink::bind(&long, SinkOptions::default()),
        Err(SinkError::PathTooLong { .. })
    ));
    let short = short_socket_path(Path::new("/run/safehouse/trace"), &"a".repeat(64));
    assert!(short.as_os_str().len() <= MAX_SOCKET_PATH);
    assert_eq!(
        short,
        short_socket_path(Path::new("/run/safehouse/trace"), &"a".repeat(64))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_arrives_whole_and_in_order_and_dropping_the_sink_ends_its_reader() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let options = SinkOptions {
        batch_interval: Duration::from_millis(5),
        ..SinkOptions::default()
    };
    let (handle, mut rx, path) = start(dir.path(), "burst", options);
    // More packets than one batch, sent faster than the reader drains: the socket holds them
    // while the reader sleeps between drains.
    const N: i64 = 1000;
    let (tx_client, rx_client) = std::sync::mpsc::channel();
    client(move || {
        let (c, _) = SentryClient::handshake(&path).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..N {
            c.send(&open_packet(i)).unwrap_or_else(|e| panic!("{e}"));
        }
        let _ = tx_client.send(c);
    })
    .await;
    for i in 0..N {
        let ev = next(&mut rx).await;
        assert_eq!(
            ev.file.and_then(|f| f.path),
            Some(format!("/tmp/{i}")),
            "event {i} out of order or missing"
        );
    }
    assert_eq!(handle.live_connections(), 1);
    let c = rx_client.recv().unwrap_or_else(|e| panic!("{e}"));
    handle.shutdown();
    // The reader thread closes its end: the Sentry side reads EOF, not a hang.
    let eof = tokio::task::spawn_blocking(move || c.recv())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(eof.map(|p| p.len()).ok(), Some(0), "sink reader still open");
}

#[test]
fn pauses_shrink_as_the_stream_speeds_up_and_stay_bounded() {
    let options = SinkOptions::default();
    let max = options.batch_interval;
    // A trickle: the whole interval.
    assert_eq!(conn::next_pause(max, 1, max, options.batch_target), max);
    // Exactly the target: unchanged.
    assert_eq!(
        conn::next_pause(max, options.batch_target, max, options.batch_target),
        max
    );
    // Four times the target: a quarter of the pause, so the next drain finds about the target.
    assert_eq!(
        conn::next_pause(max, options.batch_target * 4, max, options.batch_target),
        max / 4
    );
    // A flood: never below a tenth, never above the interval.
    assert_eq!(
        conn::next_pause(max, 1_000_000, max, options.batch_target),
        max / 10
    );
    assert_eq!(
        conn::next_pause(max / 10, 1, max, options.batch_target),
        max
    );
}

/// An open of `/tmp/{i}` as the Sentry reports it.
fn open_packet(i: i64) -> Vec<u8> {
    let open = SyscallOpen {
        context_data: ctx().to_proto(),
        exit: exit(i, 0),
        sysno: 257,
        fd: -100,
        pathname: format!("/tmp/{i}").into_bytes(),
        ..Default::default()
    };
    packet(mt::SYSCALL_OPEN, 0, &open)
}

/// A Sentry client on a thread of its own that sends the open of `/tmp/{i}` for each `i` it
/// is given, when it is given it; the connection comes back once the sender is dropped.
fn paced_client(
    path: PathBuf,
) -> (
    std::sync::mpsc::Sender<i64>,
    std::sync::mpsc::Receiver<SentryClient>,
) {
    let (send, sends) = std::sync::mpsc::channel::<i64>();
    let (conn_tx, conn_rx) = std::sync::mpsc::channel();
    tokio::task::spawn_blocking(move || {
        let (c, _) = SentryClient::handshake(&path).unwrap_or_else(|e| panic!("{e}"));
        while let Ok(i) = sends.recv() {
            c.send(&open_packet(i)).unwrap_or_else(|e| panic!("{e}"));
        }
        let _ = conn_tx.send(c);
    });
    (send, conn_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_is_read_at_once_and_a_busy_one_in_batches() {
    // A long interval makes the difference between "read at once" and "held for the pause"
    // seconds wide, far beyond scheduling noise.
    let interval = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let options = SinkOptions {
        batch_interval: interval,
        ..SinkOptions::default()
    };
    let (handle, mut rx, path) = start(dir.path(), "slow", options);
    let (send, conn_rx) = paced_client(path);
    let path_of = |ev: AuditEvent| ev.file.and_then(|f| f.path);
    // The first packet after a quiet spell, and one right after it: the drain before the
    // second came after a quiet spell, so the reader waits on the socket, not for the pause.
    send.send(0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(path_of(next(&mut rx).await).as_deref(), Some("/tmp/0"));
    let sent = std::time::Instant::now();
    send.send(1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(path_of(next(&mut rx).await).as_deref(), Some("/tmp/1"));
    let took = sent.elapsed();
    assert!(
        took < interval / 2,
        "a packet of a slow stream waited {took:?}, as if for the batching pause"
    );
    // Two drains within the interval: the stream is busy now, and the reader lets the next
    // packets gather for a pause instead of being woken by each.
    let sent = std::time::Instant::now();
    send.send(2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(path_of(next(&mut rx).await).as_deref(), Some("/tmp/2"));
    let took = sent.elapsed();
    assert!(
        took > interval / 4,
        "a packet of a busy stream was read after {took:?}, not after a pause"
    );
    drop(send);
    let _c = conn_rx.recv().unwrap_or_else(|e| panic!("{e}"));
    handle.shutdown();
}

/// A destination that asks for short pauses, as the tools check does.
struct Limited(mpsc::Sender<AuditEvent>, Duration);

impl Deliver for Limited {
    fn deliver(
        &self,
        batch: &mut Vec<AuditEvent>,
        stopping: &dyn Fn() -> bool,
    ) -> Result<(), Closed> {
        self.0.deliver(batch, stopping)
    }

    fn pause_limit(&self) -> Option<Duration> {
        Some(self.1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_acts_on_events_shortens_a_busy_streams_pause() {
    let interval = Duration::from_secs(3);
    let limit = Duration::from_millis(100);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("limited");
    let options = SinkOptions {
        batch_interval: interval,
        ..SinkOptions::default()
    };
    let sink = TraceSink::bind(&path, options).unwrap_or_else(|e| panic!("{e}"));
    let (tx, mut rx) = mpsc::channel(1024);
    let handle = sink.spawn(SandboxContext::new("limited"), Limited(tx, limit));
    let (send, conn_rx) = paced_client(path);
    for i in 0..2 {
        send.send(i).unwrap_or_else(|e| panic!("{e}"));
        next(&mut rx).await;
    }
    // Two drains close together: busy, so the reader pauses, but for the destination's limit,
    // not the sink's 3 s.
    let sent = std::time::Instant::now();
    send.send(2).unwrap_or_else(|e| panic!("{e}"));
    let ev = next(&mut rx).await;
    let took = sent.elapsed();
    assert_eq!(ev.file.and_then(|f| f.path).as_deref(), Some("/tmp/2"));
    assert!(
        took < interval / 2,
        "a busy stream's packet waited {took:?}: the destination's limit was {limit:?}"
    );
    drop(send);
    let _c = conn_rx.recv().unwrap_or_else(|e| panic!("{e}"));
    handle.shutdown();
}
