//! A hostile client of a sandbox's trace socket (`/run/safehouse/trace/<digest>.sock`, the one
//! gVisor's Sentry connects to): it handshakes like a Sentry, then sends garbage. The sandbox
//! keeps running and is killed normally, a second sandbox started meanwhile gets all its
//! events with an intact chain, and the skipped packets are reported as `audit`/`dropped`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::socket::{
    connect, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use nix::sys::time::TimeVal;
use safehouse_integration::TestEnv;
use sha2::{Digest, Sha256};

use crate::lab::{is, verify, Lab, Listing, RUN_TIMEOUT};
use crate::workload::RECORD_ALL;

/// Where the shim puts its sandboxes' trace sockets.
const TRACE_DIR: &str = "/run/safehouse/trace";

/// The trace socket of `sandbox_id` (as the audit crate's `short_socket_path` names it).
fn trace_socket(sandbox_id: &str) -> PathBuf {
    let digest = hex(&Sha256::digest(sandbox_id.as_bytes()));
    Path::new(TRACE_DIR).join(format!("{}.sock", &digest[..16]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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
    // An oversized packet (over the sink's 256 KiB): the kernel may refuse it outright.
    let oversized = send(raw, &packet(8, 1, 0, &[0u8; 300 * 1024]), MsgFlags::empty()).is_ok();
    Ok(packets.len() as u64 + u64::from(oversized))
}

/// Sandbox A runs; a fake Sentry sends garbage to A's sink; sandbox B runs and is audited.
pub fn garbage_on_trace_socket_is_contained(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "hostile")?;
    lab.policy("recorded", RECORD_ALL)?;
    let a = env.id("victim");
    let b = env.id("bystander");
    env.scenario(&[&a, &b], || {
        let victim = lab.start("recorded", &["--rm"], &a, &["sleep", "60"])?;
        env.ctr
            .wait_status(&a, "RUNNING", Duration::from_secs(20))?;
        lab.wait_event(&a, "container/start of A", |e| {
            is(e, "process", "exec") && e["point"] == "container/start"
        })?;
        let socket = trace_socket(&a);
        ensure!(
            socket.exists(),
            "no trace socket {} for {a}",
            socket.display()
        );
        let sent = attack(&socket)?;

        let dropped = lab.wait_event(&a, "audit/dropped (malformed) of A", |e| {
            is(e, "audit", "dropped") && e["dropped"]["source"] == "malformed"
        })?;
        // Reports are aggregated: wait for all of them (one per second, and one at close).
        let counted = || -> u64 {
            lab.events_of(&a)
                .iter()
                .filter(|e| is(e, "audit", "dropped") && e["dropped"]["source"] == "malformed")
                .filter_map(|e| e["dropped"]["count"].as_u64())
                .sum()
        };
        safehouse_integration::command::wait_for(
            "every malformed packet counted",
            Duration::from_secs(5),
            || Ok((counted() >= sent - 1).then_some(())),
        )
        .with_context(|| format!("sent {sent}, counted {}: {dropped}", counted()))?;
        ensure!(
            counted() <= sent,
            "counted {} malformed packets, sent {sent}",
            counted()
        );

        let row = env.ctr.task(&a)?;
        ensure!(
            row.as_ref().is_some_and(|r| r.status == "RUNNING"),
            "A should still run after the garbage: {row:?}"
        );

        let out = lab.run("recorded", &["--rm"], &b, &["sh", "-c", "echo ok; exit 0"])?;
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
        let exit = lab.wait_event(&a, "lifecycle/exit of A", |e| is(e, "lifecycle", "exit"))?;
        ensure!(
            exit["exit"]["signal"] == 9 && exit["exit"]["reason"] == "killed",
            "A's exit: {exit}"
        );
        lab.wait_event(&a, "lifecycle/delete of A", |e| {
            is(e, "lifecycle", "delete")
        })?;

        let verified = verify(&lab.audit)?;
        ensure!(
            verified.code == Some(0) && verified.stdout.contains("2 sandboxes (0 still open)"),
            "both chains should verify and be closed: {}",
            verified.describe()
        );
        Ok(())
    })
}
