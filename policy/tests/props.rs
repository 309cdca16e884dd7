//! Property tests of the compiler over generated specs: it never widens what the policy
//! allows (capabilities, mounts, namespaces, resources), it is deterministic and idempotent,
//! and every kind of spec it must refuse is refused.

mod common;

use std::collections::HashSet;

use oci_spec::runtime::{
    Capability, LinuxDeviceBuilder, LinuxDeviceType, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Spec,
};
use proptest::prelude::*;
use safehouse_policy::manifest::{GroupsBound, IdBound};
use safehouse_policy::validate::parse_capability;
use safehouse_policy::{compile, AgentPolicy, CompileContext};

/// A mount the generator may add, and whether the policy must refuse it.
#[derive(Debug, Clone)]
enum ExtraMount {
    Tmpfs(&'static str),
    NamedBind {
        sub: &'static str,
        dest: &'static str,
    },
    HostBind(&'static str),
    CriFile {
        dest: &'static str,
        trusted: bool,
    },
    Overlay,
    AtZone,
    RelativeDest,
}

impl ExtraMount {
    fn refused(&self, policy: &AgentPolicy) -> bool {
        let fs = &policy.spec.filesystem;
        match self {
            ExtraMount::NamedBind { .. } => !fs.inputs.iter().any(|z| z.source == "/srv/jobs/in"),
            ExtraMount::AtZone => !fs.inputs.iter().any(|z| z.path == "/input"),
            ExtraMount::Tmpfs(_) | ExtraMount::CriFile { trusted: true, .. } => false,
            ExtraMount::HostBind(_)
            | ExtraMount::CriFile { trusted: false, .. }
            | ExtraMount::Overlay
            | ExtraMount::RelativeDest => true,
        }
    }

    fn mount(&self) -> Mount {
        let (dest, typ, source, opts): (&str, &str, String, &[&str]) = match self {
            ExtraMount::Tmpfs(d) => (d, "tmpfs", "tmpfs".into(), &["rw", "exec", "suid"]),
            ExtraMount::NamedBind { sub, dest } => {
                (dest, "bind", format!("/srv/jobs/in{sub}"), &["rbind", "rw"])
            }
            ExtraMount::HostBind(src) => ("/host", "bind", (*src).into(), &["rbind", "rw"]),
            ExtraMount::CriFile {
                dest,
                trusted: true,
            } => (
                dest,
                "bind",
                "/var/lib/kubelet/pods/x/f".into(),
                &["rbind", "rw"],
            ),
            ExtraMount::CriFile {
                dest,
                trusted: false,
            } => (dest, "bind", "/etc".into(), &["rbind", "rw"]),
            ExtraMount::Overlay => ("/merged", "overlay", "overlay".into(), &["lowerdir=/etc"]),
            ExtraMount::AtZone => ("/input", "bind", "/".into(), &["rbind", "rw"]),
            ExtraMount::RelativeDest => ("../escape", "tmpfs", "tmpfs".into(), &[]),
        };
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }
}

fn extra_mount() -> impl Strategy<Value = ExtraMount> {
    prop_oneof![
        prop::sample::select(vec!["/work", "/tmp/x", "/run/user"]).prop_map(ExtraMount::Tmpfs),
        (
            prop::sample::select(vec!["", "/a", "/a/b"]),
            prop::sample::select(vec!["/data", "/more/data"])
        )
            .prop_map(|(sub, dest)| ExtraMount::NamedBind { sub, dest }),
        prop::sample::select(vec!["/", "/etc", "/var/run/docker.sock", "/srv/jobs/input"])
            .prop_map(ExtraMount::HostBind),
        (
            prop::sample::select(vec![
                "/etc/hosts",
                "/etc/resolv.conf",
                "/dev/shm",
                "/var/run/secrets/kubernetes.io/serviceaccount"
            ]),
            any::<bool>()
        )
            .prop_map(|(dest, trusted)| ExtraMount::CriFile { dest, trusted }),
        Just(ExtraMount::Overlay),
        Just(ExtraMount::AtZone),
        Just(ExtraMount::RelativeDest),
    ]
}

/// Namespace entry choice: absent (host), new, joined by a pod path, or joined to host init.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ns {
    Absent,
    New,
    Pod,
    HostInit,
}

fn ns() -> impl Strategy<Value = Ns> {
    prop_oneof![1 => Just(Ns::Absent), 6 => Just(Ns::New), 3 => Just(Ns::Pod), 1 => Just(Ns::HostInit)]
}

#[derive(Debug, Clone)]
struct Case {
    policy: usize,
    namespaces: [(LinuxNamespaceType, Ns); 4],
    mounts: Vec<ExtraMount>,
    caps: Vec<&'static str>,
    memory: Option<i64>,
    quota: Option<i64>,
    period: Option<u64>,
    pids: Option<i64>,
    nofile: Option<(u64, u64)>,
    bad_device: bool,
    readonly: Option<bool>,
    nnp: Option<bool>,
    gids: Vec<u32>,
}

const CAP_POOL: &[&str] = &[
    "CAP_CHOWN",
    "CAP_SYS_ADMIN",
    "CAP_NET_RAW",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
    "CAP_SETUID",
];

fn case() -> impl Strategy<Value = Case> {
    let nss = (ns(), ns(), ns(), ns());
    let limits = (
        prop::option::of(prop_oneof![Just(-1i64), Just(0), 1i64..(1 << 40)]),
        prop::option::of(prop_oneof![Just(-1i64), 1000i64..1_000_000]),
        prop::option::of(prop_oneof![Just(0u64), 1000u64..1_000_000]),
        prop::option::of(prop_oneof![Just(-1i64), Just(0), 1i64..100_000]),
        prop::option::of((0u64..1 << 21, 0u64..1 << 21)),
    );
    let rest = (
        any::<bool>(),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::collection::vec(0u32..5, 0..3),
        prop::sample::subsequence(CAP_POOL.to_vec(), 0..CAP_POOL.len()),
    );
    (
        0usize..5,
        nss,
        prop::collection::vec(extra_mount(), 0..4),
        limits,
        rest,
    )
        .prop_map(
            |(
                policy,
                (pid, ipc, net, uts),
                mounts,
                (memory, quota, period, pids, nofile),
                (bad_device, readonly, nnp, gids, caps),
            )| {
                Case {
                    policy,
                    namespaces: [
                        (LinuxNamespaceType::Pid, pid),
                        (LinuxNamespaceType::Ipc, ipc),
                        (LinuxNamespaceType::Network, net),
                        (LinuxNamespaceType::Uts, uts),
                    ],
                    mounts,
                    caps,
                    memory,
                    quota,
                    period,
                    pids,
                    nofile,
                    bad_device,
                    readonly,
                    nnp,
                    gids,
                }
            },
        )
}

fn policies() -> Vec<AgentPolicy> {
    let mut with_caps = common::example("code-interpreter");
    with_caps.metadata.name = "with-caps".into();
    with_caps.spec.process.capabilities = vec!["CAP_NET_BIND_SERVICE".into(), "kill".into()];
    // A CPU share too small for a 1 ms quota at the default period.
    with_caps.spec.resources.cpus = safehouse_policy::quantity::Cpus(0.003);
    vec![
        common::example("code-interpreter"),
        common::example("web-research"),
        common::example("ci-job"),
        AgentPolicy::strict_default(),
        with_caps,
    ]
}

fn build(c: &Case) -> Spec {
    let mut s = common::spec("ctr-run.json");
    let namespaces: Vec<_> = c
        .namespaces
        .iter()
        .chain([(LinuxNamespaceType::Mount, Ns::New)].iter())
        .filter(|(_, n)| *n != Ns::Absent)
        .map(|(typ, n)| {
            let b = LinuxNamespaceBuilder::default().typ(*typ);
            match n {
                Ns::Pod => b.path("/proc/4242/ns/x"),
                Ns::HostInit => b.path("/proc/1/ns/x"),
                _ => b,
            }
            .build()
            .unwrap()
        })
        .collect();
    let linux = s.linux_mut().as_mut().unwrap();
    linux.set_namespaces(Some(namespaces));
    let mut devices = vec![LinuxDeviceBuilder::default()
        .path("/dev/null")
        .typ(LinuxDeviceType::C)
        .major(1)
        .minor(3)
        .build()
        .unwrap()];
    if c.bad_device {
        devices.push(
            LinuxDeviceBuilder::default()
                .path("/dev/sda")
                .typ(LinuxDeviceType::B)
                .major(8)
                .minor(0)
                .build()
                .unwrap(),
        );
    }
    linux.set_devices(Some(devices));
    let r = linux.resources_mut().as_mut().unwrap();
    let mut mem = oci_spec::runtime::LinuxMemory::default();
    mem.set_limit(c.memory);
    r.set_memory(Some(mem));
    let mut cpu = oci_spec::runtime::LinuxCpu::default();
    cpu.set_quota(c.quota);
    cpu.set_period(c.period);
    r.set_cpu(Some(cpu));
    r.set_pids(c.pids.map(|l| {
        let mut p = oci_spec::runtime::LinuxPids::default();
        p.set_limit(l);
        p
    }));

    let mut mounts = s.mounts().clone().unwrap();
    mounts.extend(c.mounts.iter().map(ExtraMount::mount));
    s.set_mounts(Some(mounts));
    s.root_mut().as_mut().unwrap().set_readonly(c.readonly);

    let p = s.process_mut().as_mut().unwrap();
    let caps: HashSet<Capability> = c.caps.iter().filter_map(|n| parse_capability(n)).collect();
    let mut lc = oci_spec::runtime::LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps.clone()));
    lc.set_ambient(Some(caps));
    p.set_capabilities(Some(lc));
    p.set_no_new_privileges(c.nnp);
    p.user_mut().set_additional_gids(Some(c.gids.clone()));
    p.set_rlimits(c.nofile.map(|(h, s)| {
        vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(h)
            .soft(s)
            .build()
            .unwrap()]
    }));
    s
}

fn must_refuse(c: &Case, policy: &AgentPolicy) -> bool {
    c.bad_device
        || c.mounts.iter().any(|m| m.refused(policy))
        || c.namespaces.iter().any(|(typ, n)| {
            matches!(n, Ns::HostInit | Ns::Absent) && *typ != LinuxNamespaceType::Uts
        })
}

fn positive(v: Option<i64>) -> Option<i64> {
    v.filter(|v| *v > 0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compile_never_widens_and_is_idempotent(c in case()) {
        let policies = policies();
        let policy = &policies[c.policy];
        let spec = build(&c);
        let ctx = CompileContext::default();
        let result = compile(policy, &spec, &ctx);
        prop_assert_eq!(result.is_err(), must_refuse(&c, policy), "{:?}", result.as_ref().err());
        let Ok(out) = result else { return Ok(()) };

        // Deterministic and idempotent.
        prop_assert_eq!(&compile(policy, &spec, &ctx).unwrap(), &out);
        prop_assert_eq!(&compile(policy, &out.spec, &ctx).unwrap().spec, &out.spec);

        // Capabilities: every set within both the policy's and the spec's own set of the same
        // name (never widened), consistent (effective and ambient within permitted), and the
        // bounding set exactly their intersection.
        let allowed: HashSet<Capability> = policy.spec.process.capabilities.iter().filter_map(|n| parse_capability(n)).collect();
        let in_caps = spec.process().as_ref().unwrap().capabilities().clone().unwrap_or_default();
        let p = out.spec.process().as_ref().unwrap();
        let caps = p.capabilities().as_ref().unwrap();
        let pairs = [
            (caps.bounding(), in_caps.bounding()),
            (caps.effective(), in_caps.effective()),
            (caps.permitted(), in_caps.permitted()),
            (caps.inheritable(), in_caps.inheritable()),
            (caps.ambient(), in_caps.ambient()),
        ];
        for (got, asked) in pairs {
            let got = got.clone().unwrap();
            let asked = asked.clone().unwrap_or_default();
            prop_assert!(got.is_subset(&allowed) && got.is_subset(&asked), "{got:?} beyond {allowed:?} or {asked:?}");
        }
        let both: HashSet<Capability> = allowed.intersection(in_caps.bounding().as_ref().unwrap()).copied().collect();
        prop_assert_eq!(caps.bounding().as_ref().unwrap(), &both);
        let permitted = caps.permitted().clone().unwrap();
        prop_assert!(caps.effective().as_ref().unwrap().is_subset(&permitted));
        prop_assert!(caps.ambient().as_ref().unwrap().is_subset(&permitted));
        let bound = policy.spec.process.user_bound().unwrap();
        let asked = spec.process().as_ref().unwrap().user();
        for (id, bound, asked) in [(p.user().uid(), bound.uid(), asked.uid()), (p.user().gid(), bound.gid(), asked.gid())] {
            match bound {
                IdBound::Exactly(f) => prop_assert_eq!(id, f),
                IdBound::NotRoot => prop_assert!(id != 0),
                IdBound::Any => prop_assert_eq!(id, asked),
            }
        }
        let groups = p.user().additional_gids().clone().unwrap_or_default();
        match bound.groups() {
            GroupsBound::None => prop_assert!(groups.is_empty()),
            GroupsBound::NotRoot => prop_assert!(!groups.contains(&0)),
            GroupsBound::Any => {}
        }
        prop_assert_eq!(p.no_new_privileges(), Some(policy.spec.process.no_new_privileges || c.nnp == Some(true)));
        let nofile = u64::from(policy.spec.resources.nofile);
        for r in p.rlimits().iter().flatten().filter(|r| r.typ() == PosixRlimitType::RlimitNofile) {
            prop_assert!(r.hard() <= nofile && r.soft() <= r.hard());
            if let Some((h, _)) = c.nofile { prop_assert!(r.hard() <= h); }
        }
        // Processes: RLIMIT_NPROC is exactly the policy's pids, enforced inside the sandbox.
        let nproc: Vec<_> = out.spec.process().as_ref().unwrap().rlimits().as_ref().unwrap().iter()
            .filter(|r| r.typ() == oci_spec::runtime::PosixRlimitType::RlimitNproc).collect();
        prop_assert_eq!(nproc.len(), 1);
        prop_assert!(nproc[0].hard() <= u64::from(policy.spec.resources.pids));

        // Root filesystem: read-only if either side says so.
        let ro = out.spec.root().as_ref().unwrap().readonly() == Some(true);
        let policy_ro = policy.spec.filesystem.rootfs == safehouse_policy::manifest::RootfsMode::ReadOnly;
        prop_assert_eq!(ro, policy_ro || c.readonly == Some(true));

        // Namespaces: exactly the spec's.
        prop_assert_eq!(out.spec.linux().as_ref().unwrap().namespaces(), spec.linux().as_ref().unwrap().namespaces());

        // Resources: never above the policy, never above a positive spec limit.
        let r = out.spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let mem = r.memory().unwrap().limit().unwrap();
        prop_assert!(mem > 0 && mem as u64 <= policy.spec.resources.memory.bytes());
        if let Some(m) = positive(c.memory) { prop_assert!(mem <= m); }
        let pids = r.pids().unwrap().limit();
        prop_assert!(
            pids > 0
                && pids <= i64::from(policy.spec.resources.pids)
                    + safehouse_policy::compile::linux::SANDBOX_PIDS_HEADROOM
        );
        if let Some(l) = positive(c.pids) { prop_assert!(pids <= l); }
        let cpu = r.cpu().as_ref().unwrap();
        let (quota, period) = (cpu.quota().unwrap(), cpu.period().unwrap());
        prop_assert!(quota > 0 && period > 0);
        prop_assert!(quota as f64 / period as f64 <= policy.spec.resources.cpus.0 + 1e-9);
        if let (Some(q), Some(per)) = (positive(c.quota), c.period.filter(|p| *p > 0)) {
            prop_assert!(quota as f64 / period as f64 <= q as f64 / per as f64 + 1e-9);
        }

        // Mounts: writable means not executable, except zones marked exec; every bind names a
        // policy source, a zone, or a CRI file forced read-only.
        let fs = &policy.spec.filesystem;
        let exec_zones: Vec<&str> = fs.scratch.iter().filter(|z| z.exec).map(|z| z.path.as_str())
            .chain(fs.inputs.iter().chain(&fs.outputs).filter(|z| z.exec).map(|z| z.path.as_str())).collect();
        let sources: Vec<&str> = fs.inputs.iter().chain(&fs.outputs).map(|z| z.source.as_str()).collect();
        for m in out.spec.mounts().iter().flatten() {
            let dest = m.destination().to_string_lossy().to_string();
            let opts: Vec<&str> = m.options().iter().flatten().map(String::as_str).collect();
            let writable = !opts.contains(&"ro");
            if writable && !exec_zones.contains(&dest.as_str()) {
                prop_assert!(opts.contains(&"noexec"), "{} is writable and executable: {:?}", dest, opts);
            }
            if m.typ().as_deref() == Some("bind") {
                let src = m.source().as_ref().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
                let named = sources.iter().any(|s| safehouse_policy::paths::is_within(&src, s));
                let cri = src.starts_with("/var/lib/kubelet/");
                prop_assert!(named || cri, "bind of {} at {}", src, dest);
                if cri && dest != "/dev/shm" { prop_assert!(!writable); }
            }
        }
    }
}
