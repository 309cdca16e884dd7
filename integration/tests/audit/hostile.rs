//! A hostile client of a sandbox's trace socket (`/run/safehouse/trace/<digest>.sock`, the one
//! gVisor's Sentry connects to): it handshakes like a Sentry, then sends garbage (short
//! packets, `header_size` past the end or under 8, bad protobuf, unknown message types, an
//! oversized packet). Every bad packet is counted exactly in `audit`/`dropped` (`malformed`,
//! `unknown_type`); the sandbox keeps running, its real Sentry connection still delivers, it
//! is killed normally; a second sandbox started meanwhile gets all its events; both chains
//! verify and are closed.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::socket::{
    connect, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::time::TimeVal;
use safehouse_integration::leaks::trace_socket_path;
use safehouse_integration::TestEnv;

use crate::lab::{is, verify, Lab, Listing, RUN_TIMEOUT};
use crate::workload::RECORD_ALL_OFFLINE;

/// A trace packet: the 8-byte little-endian header, then `payload` at `header_size`.
fn packet(header_size: u16, message_type: u16, dropped: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + payload.len());
    p.extend(header_size.to_le_bytes());
    p.extend(message_type.to_le_bytes());
    p.extend(dropped.to_le_bytes());
    p.extend(payload);
    p
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be replayed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The garbage: packets that are each malformed (short, header past the end, bad protobuf).
fn malformed_packets() -> Vec<Vec<u8>> {
    let mut packets = vec![
        vec![0x01],
        vec![0xff, 0xff, 0x01],
        packet(u16::MAX, 1, 0, b"short"),
        packet(4, 1, 0, &[]),
        packet(8, 1, 0, &[0xff; 64]),
        packet(8, 7, 0, &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]),
    ];
    for seed in 1..=20u64 {
        // Random bodies behind a header of a known type (container/start): bad protobuf.
        let mut body = noise(seed, 16 + (seed as usize * 37) % 500);
        body[0] = 0xff;
        packets.push(packet(8, 1, 0, &body));
    }
    packets
}

/// How many packets of an unknown message type the attack sends.
const UNKNOWN_SENT: u64 = 5;

/// The sum of `dropped.count` over `events` of `source`.
fn dropped_count(events: &[serde_json::Value], source: &str) -> u64 {
    events
        .iter()
        .filter(|e| is(e, "audit", "dropped") && e["dropped"]["source"] == source)
        .filter_map(|e| e["dropped"]["count"].as_u64())
        .sum()
}

/// Connects to `path` like a Sentry, handshakes, sends the garbage; returns the number of
/// malformed packets sent. The connection is closed on return.
fn attack(path: &Path) -> Result<u64> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(5, 0))?;
    let addr = UnixAddr::new(path)?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
        .with_context(|| format!("connect to {}", path.display()))?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    send(raw, &[0x08, 0x01], MsgFlags::empty()).context("send handshake")?;
    let mut reply = [0u8; 64];
    let n = recv(raw, &mut reply, MsgFlags::empty()).context("receive the handshake reply")?;
    ensure!(
        reply[..n] == [0x08, 0x01],
        "handshake reply should be Handshake{{version=1}} (08 01), got {:02x?}",
        &reply[..n]
    );
    let packets = malformed_packets();
    for p in &packets {
        send(raw, p, MsgFlags::empty()).context("send a garbage packet")?;
    }
    // Message types this build does not know: counted apart, as `unknown_type`.
    for seq in 0..UNKNOWN_SENT {
        send(
            raw,
            &packet(8, 999, 0, &[0x08, seq as u8]),
            MsgFlags::empty(),
        )
        .context("send an unknown-type packet")?;
    }
    // An oversized packet (over the sink's 256 KiB): the kernel may refuse it outright.
    let oversized = send(raw, &packet(8, 1, 0, &[0u8; 300 * 1024]), MsgFlags::empty()).is_ok();
    Ok(packets.len() as u64 + u64::from(oversized))
}

/// Sandbox A runs; a fake Sentry sends garbage to A's sink; sandbox B runs and is audited.
pub fn garbage_on_trace_socket_is_contained(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "hostile")?;
    lab.policy("recorded", RECORD_ALL_OFFLINE)?;
    let a = env.id("victim");
    let b = env.id("bystander");
    env.scenario(&[&a, &b], || {
        let victim = lab.start(Some("recorded"), &["--rm"], &a, &["sleep", "60"])?;
        env.ctr
            .wait_status(&a, "RUNNING", Duration::from_secs(20))?;
        lab.wait_event(&a, "container/start of A", |e| {
            is(e, "process", "exec") && e["point"] == "container/start"
        })?;
        let socket = trace_socket_path(&env.leaks.namespace, &a);
        ensure!(
            socket.exists(),
            "no trace socket {} for {a}",
            socket.display()
        );
        let sent = attack(&socket)?;

        let first = lab.wait_event(&a, "audit/dropped (malformed) of A", |e| {
            is(e, "audit", "dropped") && e["dropped"]["source"] == "malformed"
        })?;
        // Reports are aggregated: wait for all of them (one per second, and one at close).
        let counted = || dropped_count(&lab.events_of(&a), "malformed");
        safehouse_integration::command::wait_for(
            "every malformed packet counted",
            Duration::from_secs(5),
            || Ok((counted() >= sent).then_some(())),
        )
        .with_context(|| format!("sent {sent}, counted {}: {first}", counted()))?;
        ensure!(
            counted() == sent,
            "counted {} malformed packets, sent {sent}",
            counted()
        );

        let unknown = dropped_count(&lab.events_of(&a), "unknown_type");
        ensure!(
            unknown == UNKNOWN_SENT,
            "{UNKNOWN_SENT} unknown-type packets sent, {unknown} reported: {}",
            Listing(&lab.events_of(&a))
        );

        let row = env.ctr.task(&a)?;
        ensure!(
            row.as_ref().is_some_and(|r| r.status == "RUNNING"),
            "A should still run after the garbage: {row:?}"
        );

        // A's real Sentry connection still delivers: an exec into A is recorded.
        let out = env.ctr_exec(&a, "after", &["cat", "/proc/version"])?;
        ensure!(
            out.success(),
            "exec into A after the garbage: {}",
            out.describe()
        );
        // (gVisor reports no exec point for a process `runsc exec` starts; the shim's
        // lifecycle exec carries its argv, and the Sentry reports what it does.)
        lab.wait_event(&a, "the shim's lifecycle exec into A", |e| {
            is(e, "lifecycle", "exec")
                && e["detail"]["exec_id"] == "after"
                && e["process"]["argv"] == serde_json::json!(["cat", "/proc/version"])
        })?;
        lab.wait_event(&a, "the Sentry's open of /proc/version in A", |e| {
            is(e, "file", "open")
                && e["point"] == "syscall/openat/exit"
                && e["file"]["path"] == "/proc/version"
        })?;

        let out = lab.run(
            Some("recorded"),
            &["--rm"],
            &b,
            &["sh", "-c", "echo ok; exit 0"],
        )?;
        ensure!(
            out.success() && out.stdout.trim() == "ok",
            "B should run normally: {}",
            out.describe()
        );
        lab.wait_event(&b, "lifecycle/delete of B", |e| {
            is(e, "lifecycle", "delete")
        })?;
        let events_b = lab.events_of(&b);
        let listing = Listing(&events_b);
        let has = |category: &str, action: &str| events_b.iter().any(|e| is(e, category, action));
        ensure!(
            ["create", "start", "exit", "delete"]
                .iter()
                .all(|action| has("lifecycle", action))
                && events_b.iter().any(|e| {
                    is(e, "process", "exec")
                        && e["process"]["argv"]
                            == serde_json::json!(["sh", "-c", "echo ok; exit 0"])
                })
                && !has("audit", "dropped"),
            "B's events should all be there and none dropped: {listing}"
        );

        env.ctr.run(&["task", "kill", "-s", "SIGKILL", &a])?.ok()?;
        let out = victim.wait(RUN_TIMEOUT)?;
        ensure!(
            out.code == Some(137),
            "A should exit 137 when killed: {}",
            out.describe()
        );
        let exit = lab.wait_event(&a, "lifecycle/exit of A", |e| {
            is(e, "lifecycle", "exit") && e["detail"]["exec_id"].is_null()
        })?;
        ensure!(
            exit["exit"]["signal"] == 9 && exit["exit"]["reason"] == "killed",
            "A's exit: {exit}"
        );
        lab.wait_event(&a, "lifecycle/delete of A", |e| {
            is(e, "lifecycle", "delete")
        })?;

        for id in [&a, &b] {
            let path = trace_socket_path(&env.leaks.namespace, id);
            safehouse_integration::command::wait_for(
                "the trace socket removed",
                Duration::from_secs(5),
                || Ok((!path.exists()).then_some(())),
            )
            .with_context(|| format!("{} of {id} is left after delete", path.display()))?;
        }

        let verified = verify(&lab.audit)?;
        ensure!(
            verified.code == Some(0) && verified.stdout.contains("2 sandboxes (0 still open)"),
            "both chains should verify and be closed: {}",
            verified.describe()
        );
        Ok(())
    })
}
