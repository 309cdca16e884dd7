//! The narrowings of limits and switches, found by comparing the spec as asked with the spec
//! as compiled: what the pod set explicitly and the policy made stricter (a lower memory, CPU
//! or pids limit, a lower RLIMIT, `noNewPrivileges` or a read-only rootfs turned on, device
//! rules dropped). What the pod left unset and the policy filled in is no narrowing.

use oci_spec::runtime::{LinuxResources, PosixRlimitType, Spec};

use super::Narrowing;

/// Appends to `narrowed` each limit or switch `asked` set that `compiled` made stricter.
pub(super) fn record(asked: &Spec, compiled: &Spec, narrowed: &mut Vec<Narrowing>) {
    let mut note = |field: &str, detail: String| {
        narrowed.push(Narrowing {
            field: field.into(),
            detail,
        })
    };
    let readonly = |s: &Spec| s.root().as_ref().and_then(|r| r.readonly());
    if readonly(asked) == Some(false) && readonly(compiled) == Some(true) {
        note(
            "root.readonly",
            "false narrowed to true (filesystem.rootfs)".into(),
        );
    }
    let nnp = |s: &Spec| s.process().as_ref().and_then(|p| p.no_new_privileges());
    if nnp(asked) == Some(false) && nnp(compiled) == Some(true) {
        note(
            "process.noNewPrivileges",
            "false narrowed to true (process.noNewPrivileges)".into(),
        );
    }

    let res = |s: &Spec| s.linux().as_ref().and_then(|l| l.resources().clone());
    let (a, c) = (
        res(asked).unwrap_or_default(),
        res(compiled).unwrap_or_default(),
    );
    let memory = |r: &LinuxResources| r.memory().as_ref().and_then(|m| m.limit());
    if let (Some(was), Some(now)) = (memory(&a).filter(|v| *v > 0), memory(&c)) {
        if now < was {
            note(
                "linux.resources.memory.limit",
                format!("{was} bytes narrowed to {now} (resources.memory)"),
            );
        }
    }
    // CPU as a share of one CPU, in millionths: quota / period.
    let cpu = |r: &LinuxResources| {
        let cpu = r.cpu().as_ref()?;
        let (q, p) = (cpu.quota()?, cpu.period()?);
        (q > 0 && p > 0).then(|| (q, p, q as u128 * 1_000_000 / u128::from(p)))
    };
    if let (Some((wq, wp, was)), Some((nq, np, now))) = (cpu(&a), cpu(&c)) {
        if now < was {
            note(
                "linux.resources.cpu",
                format!("quota {wq}/{wp} µs narrowed to {nq}/{np} µs (resources.cpus)"),
            );
        }
    }
    let pids = |r: &LinuxResources| r.pids().as_ref().map(|p| p.limit());
    if let (Some(was), Some(now)) = (pids(&a).filter(|v| *v > 0), pids(&c)) {
        if now < was {
            note(
                "linux.resources.pids.limit",
                format!("{was} narrowed to {now} (resources.pids, with room for gVisor's own)"),
            );
        }
    }
    let allowed = |r: &LinuxResources| r.devices().iter().flatten().filter(|d| d.allow()).count();
    let dropped = allowed(&a).saturating_sub(allowed(&c));
    if dropped > 0 {
        note(
            "linux.resources.devices",
            format!("{dropped} allow rule(s) beyond the standard devices dropped"),
        );
    }

    for (typ, name, bound) in [
        (
            PosixRlimitType::RlimitNofile,
            "RLIMIT_NOFILE",
            "resources.nofile",
        ),
        (
            PosixRlimitType::RlimitNproc,
            "RLIMIT_NPROC",
            "resources.pids",
        ),
    ] {
        let hard = |s: &Spec| {
            s.process()
                .as_ref()?
                .rlimits()
                .as_ref()?
                .iter()
                .find(|r| r.typ() == typ)
                .map(|r| r.hard())
        };
        if let (Some(was), Some(now)) = (hard(asked), hard(compiled)) {
            if now < was {
                note(
                    "process.rlimits",
                    format!("{name} {was} narrowed to {now} ({bound})"),
                );
            }
        }
    }
}
