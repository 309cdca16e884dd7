//! The committed JSON Schema equals the generated one, and real lines
//! validate against it. Regenerate the file with
//! `SAFEHOUSE_BLESS=1 cargo test -p safehouse-audit --test schema`.

use std::path::PathBuf;

use safehouse_audit::chain::Chain;
use safehouse_audit::encode::{exit, packet, sockaddr_in, Context};
use safehouse_audit::lifecycle::SandboxContext;
use safehouse_audit::names::message_type as mt;
use safehouse_audit::proto::container::ContainerStart;
use safehouse_audit::proto::syscall::{SyscallConnect, SyscallOpen};
use safehouse_audit::schema::event_schema_json;
use safehouse_audit::{decode_packet, AuditEvent, Body, DropSource, ExitInfo, ExitReason};

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/audit-event.schema.json")
}

#[test]
fn committed_schema_is_the_generated_one() {
    let generated = event_schema_json();
    let path = committed_path();
    if std::env::var_os("SAFEHOUSE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("{e}"));
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/audit-event.schema.json is stale: run SAFEHOUSE_BLESS=1 cargo test -p safehouse-audit --test schema"
    );
}

fn sample_events() -> Vec<AuditEvent> {
    let sb = SandboxContext::new("sb")
        .with_namespace("k8s.io")
        .with_pod("agent", "agents")
        .with_policy("coding-agent", Some("sha256:00".into()));
    let ctx = Context {
        time_ns: 5,
        tid: 3,
        pid: 3,
        container_id: "c".into(),
        cwd: "/w".into(),
        name: "python3".into(),
        uid_gid: Some((0, 0)),
    };
    let mut events = vec![
        sb.create("c", vec!["network: none".into()]).build(),
        sb.start("c").build(),
        sb.exec("c", "e1", vec!["ls".into()]).build(),
        sb.kill("c", 9, true, "safehouse stop").build(),
        sb.violation("c", "process.tools", "exec of /bin/nc", "kill")
            .build(),
        sb.exit(
            "c",
            ExitInfo::signaled(9).with_reason(ExitReason::Violation),
        )
        .build(),
        sb.dropped(3, DropSource::Queue).build(),
        sb.delete("sb").build(),
    ];
    let packets = [
        packet(
            mt::CONTAINER_START,
            0,
            &ContainerStart {
                context_data: ctx.to_proto(),
                args: vec![b"sh".to_vec()],
                ..Default::default()
            },
        ),
        packet(
            mt::SYSCALL_OPEN,
            0,
            &SyscallOpen {
                context_data: ctx.to_proto(),
                exit: exit(-1, 13),
                sysno: 257,
                fd: -100,
                pathname: b"x".to_vec(),
                flags: 0o101,
                mode: 0o600,
                ..Default::default()
            },
        ),
        packet(
            mt::SYSCALL_CONNECT,
            0,
            &SyscallConnect {
                context_data: ctx.to_proto(),
                exit: exit(0, 0),
                sysno: 42,
                fd: 3,
                address: sockaddr_in([10, 0, 0, 1].into(), 80),
                ..Default::default()
            },
        ),
    ];
    for p in packets {
        if let Ok(d) = decode_packet(&p) {
            if let Body::Event(mut ev) = d.body {
                sb.stamp(&mut ev);
                events.push(ev);
            }
        }
    }
    events
}

#[test]
fn produced_lines_validate_against_the_schema() {
    let schema: serde_json::Value = serde_json::from_str(&event_schema_json()).unwrap_or_default();
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}"));
    let mut chain = Chain::new("sb");
    let events = sample_events();
    assert_eq!(events.len(), 11);
    for mut ev in events {
        let line = chain.seal(&mut ev).unwrap_or_else(|e| panic!("{e}"));
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{value}: {errors:?}");
    }
    // And an unsealed event (no hash) does not pass: lines always carry one.
    let unsealed =
        serde_json::to_value(SandboxContext::new("x").start("c").build()).unwrap_or_default();
    assert!(!validator.is_valid(&unsealed));
}

#[test]
fn struct_serialisation_is_canonical_json() {
    // The chain hashes serde's output directly; that is only sound if it is
    // already canonical (sorted keys at every level). Check on every sample,
    // with every field populated.
    for mut ev in sample_events() {
        ev.hash = Some("0".repeat(64));
        let direct = serde_json::to_vec(&ev).unwrap_or_default();
        let value: serde_json::Value = serde_json::from_slice(&direct).unwrap_or_default();
        let mut canon = safehouse_audit::canonical::to_canonical_vec(&value).unwrap_or_default();
        // `hash` is written last, outside the canonical order; compare without it.
        ev.hash = None;
        let direct = serde_json::to_vec(&ev).unwrap_or_default();
        let mut v2 = value.clone();
        if let Some(o) = v2.as_object_mut() {
            o.remove("hash");
        }
        canon = safehouse_audit::canonical::to_canonical_vec(&v2).unwrap_or(canon);
        assert_eq!(
            String::from_utf8_lossy(&direct),
            String::from_utf8_lossy(&canon)
        );
    }
}
