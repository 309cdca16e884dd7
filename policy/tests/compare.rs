//! Tighten-only comparison and selection: a policy is no looser than itself, every single-field
//! loosening is found and named, every single-field tightening is accepted, and selection
//! refuses a looser policy (unless listed) or a file whose name is not the one selected.

mod common;

use proptest::prelude::*;
use safehouse_policy::manifest::{HostZone, NetworkMode, RootfsMode, ScratchZone, SymlinkRule};
use safehouse_policy::quantity::{ByteSize, Cpus, DurationSpec};
use safehouse_policy::{
    check_selectable, compare, AgentPolicy, AuditCategory, Dimension, SelectError, ViolationAction,
};

/// A base with something in every dimension to loosen and to tighten.
fn base() -> AgentPolicy {
    let mut p = AgentPolicy::strict_default();
    p.metadata.name = "base".into();
    let fs = &mut p.spec.filesystem;
    fs.scratch = vec![ScratchZone {
        path: "/tmp".into(),
        size: ByteSize::mib(128),
        exec: false,
    }];
    fs.inputs = vec![HostZone {
        source: "/srv/in".into(),
        path: "/input".into(),
        exec: false,
        size: None,
        symlinks: SymlinkRule::Record,
    }];
    fs.outputs = vec![HostZone {
        source: "/srv/out".into(),
        path: "/output".into(),
        exec: false,
        size: None,
        symlinks: SymlinkRule::Record,
    }];
    let net = &mut p.spec.network;
    net.mode = NetworkMode::Allowlist;
    net.egress = vec![
        "*.example.com:443".into(),
        "api.other.test".into(),
        "10.20.0.0/16:5432".into(),
        "192.0.2.10".into(),
        "169.254.0.0/16".into(),
    ];
    net.ingress = vec!["10.0.0.0/8:8080".into()];
    let proc = &mut p.spec.process;
    proc.user = "1000:1000".into();
    proc.tools = vec!["/bin/sh".into(), "/usr/bin/python3".into()];
    proc.capabilities = vec!["CAP_NET_BIND_SERVICE".into(), "CAP_CHOWN".into()];
    proc.timeout = Some(DurationSpec(std::time::Duration::from_secs(600)));
    let res = &mut p.spec.resources;
    res.memory = ByteSize::mib(512);
    res.cpus = Cpus(1.0);
    res.pids = 128;
    res.nofile = 1024;
    p.spec.audit.record = vec![AuditCategory::Process, AuditCategory::Network];
    p.spec.audit.on_violation = ViolationAction::Kill;
    assert!(safehouse_policy::validate(&p).iter().all(|f| !f.is_error()));
    p
}

type Edit = fn(&mut AgentPolicy);

/// Single-field loosenings of `base()`: the edit, the dimension and the field it must name.
fn loosenings() -> Vec<(&'static str, Edit, Dimension, &'static str)> {
    vec![
        (
            "rootfs read-write",
            |p| p.spec.filesystem.rootfs = RootfsMode::ReadWrite,
            Dimension::Filesystem,
            "spec.filesystem.rootfs",
        ),
        (
            "bigger scratch",
            |p| p.spec.filesystem.scratch[0].size = ByteSize::mib(256),
            Dimension::Filesystem,
            "spec.filesystem.scratch[0].size",
        ),
        (
            "exec scratch",
            |p| p.spec.filesystem.scratch[0].exec = true,
            Dimension::Filesystem,
            "spec.filesystem.scratch[0].exec",
        ),
        (
            "new scratch",
            |p| {
                p.spec.filesystem.scratch.push(ScratchZone {
                    path: "/var/tmp".into(),
                    size: ByteSize::mib(1),
                    exec: false,
                })
            },
            Dimension::Filesystem,
            "spec.filesystem.scratch[1]",
        ),
        (
            "scratch moved",
            |p| p.spec.filesystem.scratch[0].path = "/work".into(),
            Dimension::Filesystem,
            "spec.filesystem.scratch[0]",
        ),
        (
            "input other source",
            |p| p.spec.filesystem.inputs[0].source = "/etc".into(),
            Dimension::Filesystem,
            "spec.filesystem.inputs[0]",
        ),
        (
            "input subdirectory",
            |p| p.spec.filesystem.inputs[0].source = "/srv/in/sub".into(),
            Dimension::Filesystem,
            "spec.filesystem.inputs[0]",
        ),
        (
            "input moved",
            |p| p.spec.filesystem.inputs[0].path = "/usr/bin".into(),
            Dimension::Filesystem,
            "spec.filesystem.inputs[0]",
        ),
        (
            "input exec",
            |p| p.spec.filesystem.inputs[0].exec = true,
            Dimension::Filesystem,
            "spec.filesystem.inputs[0].exec",
        ),
        (
            "input made output",
            |p| {
                let z = p.spec.filesystem.inputs.remove(0);
                p.spec.filesystem.outputs.push(z);
            },
            Dimension::Filesystem,
            "spec.filesystem.outputs[1]",
        ),
        (
            "new output",
            |p| {
                p.spec.filesystem.outputs.push(HostZone {
                    source: "/srv/x".into(),
                    path: "/x".into(),
                    exec: false,
                    size: None,
                    symlinks: SymlinkRule::Record,
                })
            },
            Dimension::Filesystem,
            "spec.filesystem.outputs[1]",
        ),
        (
            "output exec",
            |p| p.spec.filesystem.outputs[0].exec = true,
            Dimension::Filesystem,
            "spec.filesystem.outputs[0].exec",
        ),
        (
            "output larger than the default",
            |p| p.spec.filesystem.outputs[0].size = Some(ByteSize::mib(2048)),
            Dimension::Filesystem,
            "spec.filesystem.outputs[0].size",
        ),
        (
            "mode open",
            |p| p.spec.network.mode = NetworkMode::Open,
            Dimension::Network,
            "spec.network.mode",
        ),
        (
            "new host",
            |p| p.spec.network.egress.push("evil.test:443".into()),
            Dimension::Network,
            "spec.network.egress[5]",
        ),
        (
            "host any port",
            |p| p.spec.network.egress[0] = "*.example.com".into(),
            Dimension::Network,
            "spec.network.egress[0]",
        ),
        (
            "host other port",
            |p| p.spec.network.egress[0] = "*.example.com:80".into(),
            Dimension::Network,
            "spec.network.egress[0]",
        ),
        (
            "zone apex under wildcard",
            |p| p.spec.network.egress.push("example.com:443".into()),
            Dimension::Network,
            "spec.network.egress[5]",
        ),
        (
            "wider wildcard",
            |p| p.spec.network.egress[0] = "*.com:443".into(),
            Dimension::Network,
            "spec.network.egress[0]",
        ),
        (
            "lookalike suffix",
            |p| p.spec.network.egress.push("evilexample.com:443".into()),
            Dimension::Network,
            "spec.network.egress[5]",
        ),
        (
            "host under exact name",
            |p| p.spec.network.egress.push("x.api.other.test".into()),
            Dimension::Network,
            "spec.network.egress[5]",
        ),
        (
            "wider range",
            |p| p.spec.network.egress[2] = "10.20.0.0/15:5432".into(),
            Dimension::Network,
            "spec.network.egress[2]",
        ),
        (
            "range any port",
            |p| p.spec.network.egress[2] = "10.20.0.0/16".into(),
            Dimension::Network,
            "spec.network.egress[2]",
        ),
        (
            "range as a name",
            |p| p.spec.network.egress.push("db.internal:5432".into()),
            Dimension::Network,
            "spec.network.egress[5]",
        ),
        (
            "single address in a base range",
            |p| p.spec.network.egress.push("10.20.1.2:5432".into()),
            Dimension::Network,
            "spec.network.egress[5]",
        ),
        (
            "every address",
            |p| p.spec.network.egress[4] = "0.0.0.0/0".into(),
            Dimension::Network,
            "spec.network.egress[4]",
        ),
        (
            "ipv6 range",
            |p| p.spec.network.egress.push("[fd00::/8]:443".into()),
            Dimension::Network,
            "spec.network.egress[5]",
        ),
        (
            "new ingress",
            |p| p.spec.network.ingress.push("192.168.0.0/16".into()),
            Dimension::Network,
            "spec.network.ingress[1]",
        ),
        (
            "ingress any port",
            |p| p.spec.network.ingress[0] = "10.0.0.0/8".into(),
            Dimension::Network,
            "spec.network.ingress[0]",
        ),
        (
            "tools unrestricted",
            |p| p.spec.process.tools.clear(),
            Dimension::Process,
            "spec.process.tools",
        ),
        (
            "new tool",
            |p| p.spec.process.tools.push("/usr/bin/curl".into()),
            Dimension::Process,
            "spec.process.tools[2]",
        ),
        (
            "other user",
            |p| p.spec.process.user = "1001:1000".into(),
            Dimension::Process,
            "spec.process.user",
        ),
        (
            "other group",
            |p| p.spec.process.user = "1000:0".into(),
            Dimension::Process,
            "spec.process.user",
        ),
        (
            "root",
            |p| p.spec.process.user = "0:0".into(),
            Dimension::Process,
            "spec.process.user",
        ),
        (
            "any non-root user",
            |p| p.spec.process.user = "nonroot".into(),
            Dimension::Process,
            "spec.process.user",
        ),
        (
            "new capability",
            |p| p.spec.process.capabilities.push("CAP_SYS_ADMIN".into()),
            Dimension::Process,
            "spec.process.capabilities[2]",
        ),
        (
            "new privileges",
            |p| p.spec.process.no_new_privileges = false,
            Dimension::Process,
            "spec.process.noNewPrivileges",
        ),
        (
            "more memory",
            |p| p.spec.resources.memory = ByteSize(ByteSize::mib(512).bytes() + 1),
            Dimension::Resources,
            "spec.resources.memory",
        ),
        (
            "more cpus",
            |p| p.spec.resources.cpus = Cpus(1.001),
            Dimension::Resources,
            "spec.resources.cpus",
        ),
        (
            "more pids",
            |p| p.spec.resources.pids = 129,
            Dimension::Resources,
            "spec.resources.pids",
        ),
        (
            "more files",
            |p| p.spec.resources.nofile = 1025,
            Dimension::Resources,
            "spec.resources.nofile",
        ),
        (
            "no timeout",
            |p| p.spec.process.timeout = None,
            Dimension::Resources,
            "spec.process.timeout",
        ),
        (
            "longer timeout",
            |p| {
                p.spec.process.timeout =
                    Some(DurationSpec(std::time::Duration::from_millis(600_001)))
            },
            Dimension::Resources,
            "spec.process.timeout",
        ),
        (
            "records less",
            |p| p.spec.audit.record = vec![AuditCategory::Process],
            Dimension::Audit,
            "spec.audit.record",
        ),
        (
            "record only",
            |p| p.spec.audit.on_violation = ViolationAction::Record,
            Dimension::Audit,
            "spec.audit.onViolation",
        ),
    ]
}

/// Single-field tightenings of `base()` (or edits that grant nothing more).
fn tightenings() -> Vec<(&'static str, Edit)> {
    vec![
        ("same policy", |_| {}),
        ("renamed, described, labelled", |p| {
            p.metadata.name = "other".into();
            p.metadata.description = Some("x".into());
            p.metadata.labels.insert("a".into(), "b".into());
        }),
        ("smaller scratch", |p| {
            p.spec.filesystem.scratch[0].size = ByteSize::mib(1)
        }),
        ("no scratch", |p| p.spec.filesystem.scratch.clear()),
        ("no inputs", |p| p.spec.filesystem.inputs.clear()),
        ("no outputs", |p| p.spec.filesystem.outputs.clear()),
        ("output made input", |p| {
            let z = p.spec.filesystem.outputs.remove(0);
            p.spec.filesystem.inputs.push(z);
        }),
        ("mode none", |p| p.spec.network.mode = NetworkMode::None),
        ("mode none keeps any entries", |p| {
            p.spec.network.mode = NetworkMode::None;
            p.spec.network.egress.push("evil.test".into());
        }),
        ("fewer entries", |p| p.spec.network.egress.truncate(1)),
        ("name below a wildcard", |p| {
            p.spec.network.egress[0] = "api.example.com:443".into()
        }),
        ("narrower wildcard", |p| {
            p.spec.network.egress[0] = "*.eu.example.com:443".into()
        }),
        ("port on an any-port name", |p| {
            p.spec.network.egress[1] = "api.other.test:443".into()
        }),
        ("narrower range", |p| {
            p.spec.network.egress[2] = "10.20.3.0/24:5432".into()
        }),
        ("same single address, one port", |p| {
            p.spec.network.egress[3] = "192.0.2.10:443".into()
        }),
        ("metadata inside a base link-local entry", |p| {
            p.spec.network.egress[4] = "169.254.169.254:80".into()
        }),
        ("no ingress", |p| p.spec.network.ingress.clear()),
        ("narrower ingress", |p| {
            p.spec.network.ingress[0] = "10.1.0.0/16:8080".into()
        }),
        ("fewer tools", |p| p.spec.process.tools.truncate(1)),
        ("fewer capabilities", |p| {
            p.spec.process.capabilities.truncate(1)
        }),
        ("capability spelled otherwise", |p| {
            p.spec.process.capabilities[0] = "net_bind_service".into()
        }),
        ("less memory", |p| {
            p.spec.resources.memory = ByteSize::mib(256)
        }),
        ("fewer cpus", |p| p.spec.resources.cpus = Cpus(0.5)),
        ("fewer pids", |p| p.spec.resources.pids = 1),
        ("fewer files", |p| p.spec.resources.nofile = 16),
        ("shorter timeout", |p| {
            p.spec.process.timeout = Some(DurationSpec(std::time::Duration::from_secs(1)))
        }),
        ("records more", |p| {
            p.spec.audit.record.push(AuditCategory::File)
        }),
        ("records in another order", |p| {
            p.spec.audit.record.reverse()
        }),
    ]
}

#[test]
fn every_single_field_loosening_is_found_and_named() {
    let b = base();
    for (what, edit, dimension, field) in loosenings() {
        let mut c = base();
        edit(&mut c);
        let cmp = compare(&b, &c);
        assert!(!cmp.is_no_looser(), "{what}: not found looser");
        assert!(
            cmp.loosenings
                .iter()
                .any(|l| l.dimension == dimension && l.field == field),
            "{what}: expected {dimension} {field}, got {cmp}"
        );
        assert_eq!(
            cmp.looser_dimensions().into_iter().collect::<Vec<_>>(),
            [dimension],
            "{what}: {cmp}"
        );
    }
}

#[test]
fn every_single_field_tightening_is_accepted() {
    let b = base();
    for (what, edit) in tightenings() {
        let mut c = base();
        edit(&mut c);
        let cmp = compare(&b, &c);
        assert!(cmp.is_no_looser(), "{what}: {cmp}");
    }
}

#[test]
fn the_examples_and_the_strict_default_are_no_looser_than_themselves() {
    let mut all = vec![AgentPolicy::strict_default(), base()];
    for stem in ["code-interpreter", "web-research", "ci-job"] {
        all.push(common::example(stem));
    }
    for p in &all {
        assert!(
            compare(p, p).is_no_looser(),
            "{}: {}",
            p.name(),
            compare(p, p)
        );
    }
    // Every example is looser than the strict default in some way, and names how.
    let strict = AgentPolicy::strict_default();
    for p in &all[2..] {
        let cmp = compare(&strict, p);
        assert!(!cmp.is_no_looser(), "{}", p.name());
    }
    // web-research: its network, user, memory, and its record-only audit.
    let cmp = compare(&strict, &common::example("web-research"));
    for d in [
        Dimension::Filesystem,
        Dimension::Network,
        Dimension::Process,
        Dimension::Resources,
        Dimension::Audit,
    ] {
        assert!(cmp.looser_dimensions().contains(&d), "{d}: {cmp}");
    }
}

#[test]
fn network_modes_and_protected_ranges() {
    let with = |mode: NetworkMode, egress: &[&str]| {
        let mut p = AgentPolicy::strict_default();
        p.spec.network.mode = mode;
        p.spec.network.egress = egress.iter().map(|s| s.to_string()).collect();
        p
    };
    use NetworkMode::{Allowlist, None as Off, Open};
    // Base open: every name, every range that cannot open a protected one.
    let open = with(Open, &[]);
    assert!(compare(&open, &with(Allowlist, &["a.test:443", "10.0.0.0/8"])).is_no_looser());
    assert!(compare(&open, &with(Open, &["a.test"])).is_no_looser());
    // ... but not a single address (it may be the node's own) nor metadata.
    for entry in [
        "10.1.2.3",
        "169.254.169.254:80",
        "[fe80::/64]:22",
        "2001:db8::1",
    ] {
        let cmp = compare(&open, &with(Allowlist, &[entry]));
        assert_eq!(
            cmp.looser_dimensions().into_iter().collect::<Vec<_>>(),
            [Dimension::Network],
            "{entry}"
        );
        assert!(cmp.to_string().contains("protected"), "{cmp}");
    }
    // ... unless the base names the same.
    assert!(compare(&with(Open, &["10.1.2.3"]), &with(Open, &["10.1.2.3:22"])).is_no_looser());
    assert!(compare(
        &with(Open, &["169.254.169.254"]),
        &with(Allowlist, &["169.254.169.254:80"])
    )
    .is_no_looser());
    // A base without network covers nothing, its entries included.
    let cmp = compare(&with(Off, &["a.test"]), &with(Allowlist, &["a.test"]));
    assert!(cmp
        .loosenings
        .iter()
        .any(|l| l.field == "spec.network.mode"));
    assert!(cmp
        .loosenings
        .iter()
        .any(|l| l.field == "spec.network.egress[0]"));
    // DNS: open resolves every name; an allowlist only its own.
    let cmp = compare(&with(Allowlist, &["a.test"]), &with(Open, &[]));
    assert!(cmp.to_string().contains("every name resolves"), "{cmp}");
    let cmp = compare(
        &with(Allowlist, &["1.2.3.0/24"]),
        &with(Allowlist, &["1.2.3.4"]),
    );
    assert!(cmp.to_string().contains("protected"), "{cmp}");
    let cmp = compare(
        &with(Allowlist, &["a.test:443"]),
        &with(Allowlist, &["b.test:443"]),
    );
    assert!(cmp.to_string().contains("(DNS)"), "{cmp}");
}

fn policy_strategy() -> impl Strategy<Value = AgentPolicy> {
    (
        any::<bool>(),
        prop::sample::subsequence(vec!["/bin/sh", "/usr/bin/python3", "/usr/bin/git"], 0..=3),
        prop::sample::subsequence(
            vec![
                "a.test:443",
                "*.b.test",
                "10.0.0.0/8:80",
                "192.0.2.1",
                "[fd00::/8]:443",
            ],
            0..=5,
        ),
        prop::sample::select(vec![
            NetworkMode::None,
            NetworkMode::Allowlist,
            NetworkMode::Open,
        ]),
        1u32..512,
        4u64..2048,
        prop::sample::subsequence(
            vec![
                AuditCategory::Process,
                AuditCategory::File,
                AuditCategory::Network,
            ],
            0..=3,
        ),
        any::<bool>(),
        prop::option::of(1u64..10_000),
        prop::sample::select(vec!["65534:65534", "1000:1000", "nonroot", "0:0"]),
    )
        .prop_map(
            |(rw, tools, egress, mode, pids, mem, record, kill, timeout, user)| {
                let mut p = AgentPolicy::strict_default();
                if rw {
                    p.spec.filesystem.rootfs = RootfsMode::ReadWrite;
                }
                p.spec.process.tools = tools.into_iter().map(String::from).collect();
                p.spec.network.egress = egress.into_iter().map(String::from).collect();
                p.spec.network.mode = mode;
                p.spec.resources.pids = pids;
                p.spec.resources.memory = ByteSize::mib(mem);
                p.spec.audit.record = record;
                if !kill {
                    p.spec.audit.on_violation = ViolationAction::Record;
                }
                p.spec.process.timeout =
                    timeout.map(|s| DurationSpec(std::time::Duration::from_secs(s)));
                p.spec.process.user = user.into();
                p
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// No policy is looser than itself; "no looser" is transitive (so a chain of selections
    /// never ends looser than its start).
    #[test]
    fn reflexive_and_transitive(a in policy_strategy(), b in policy_strategy(), c in policy_strategy()) {
        prop_assert!(compare(&a, &a).is_no_looser());
        if compare(&a, &b).is_no_looser() && compare(&b, &c).is_no_looser() {
            prop_assert!(compare(&a, &c).is_no_looser(), "{}", compare(&a, &c));
        }
    }
}

#[test]
fn selection_refuses_a_looser_policy_unless_listed() {
    let default = base();
    let mut looser = base();
    looser.metadata.name = "web".into();
    looser.spec.network.mode = NetworkMode::Open;
    looser.spec.process.user = "0:0".into();
    let err = check_selectable(&default, &looser, "web", false).unwrap_err();
    assert!(matches!(err, SelectError::Looser { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with("policy \"web\" is looser than the default policy \"base\" in network, process: spec.network.mode: open, looser than the base's allowlist"),
        "{msg}"
    );
    assert!(msg.contains("spec.process.user: 0:0 differs"), "{msg}");
    assert!(msg.contains("unless [policy] selectable lists it"), "{msg}");
    assert_eq!(check_selectable(&default, &looser, "web", true), Ok(()));

    let mut tighter = base();
    tighter.metadata.name = "tight".into();
    tighter.spec.resources.pids = 8;
    assert_eq!(check_selectable(&default, &tighter, "tight", false), Ok(()));
}

#[test]
fn a_fixed_non_root_user_is_within_nonroot_and_root_is_not() {
    let mut any = base();
    any.spec.process.user = "nonroot".into();
    let fixed = base();
    assert!(
        compare(&any, &fixed).is_no_looser(),
        "{}",
        compare(&any, &fixed)
    );
    let report = compare(&fixed, &any);
    assert!(!report.is_no_looser());
    assert!(
        report
            .to_string()
            .contains("spec.process.user: nonroot differs"),
        "{report}"
    );
    for user in ["0:0", "0:1000", "1000:0"] {
        let mut root = base();
        root.spec.process.user = user.into();
        assert!(
            !compare(&any, &root).is_no_looser(),
            "{user} is no non-root identity"
        );
    }
}

#[test]
fn selection_refuses_a_file_named_otherwise() {
    let default = base();
    let mut other = base();
    other.metadata.name = "strict".into();
    for listed in [false, true] {
        let err = check_selectable(&default, &other, "web-research", listed).unwrap_err();
        assert_eq!(
            err,
            SelectError::NameMismatch {
                name_used: "web-research".into(),
                actual: "strict".into()
            }
        );
        assert!(err
            .to_string()
            .contains("must equal the name that selects it"));
    }
}

/// An output's size and symlink rule: more room, or keeping symlinks the base refuses, is
/// looser; less room (against the base's default) is not.
#[test]
fn output_size_and_symlinks_compare() {
    let mut base = base();
    base.spec.filesystem.outputs[0].size = Some(ByteSize::mib(100));
    base.spec.filesystem.outputs[0].symlinks = SymlinkRule::Refuse;
    let mut cand = base.clone();
    cand.spec.filesystem.outputs[0].size = None;
    cand.spec.filesystem.outputs[0].symlinks = SymlinkRule::Record;
    let fields: Vec<String> = compare(&base, &cand)
        .loosenings
        .iter()
        .map(|l| l.field.clone())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.filesystem.outputs[0].size",
            "spec.filesystem.outputs[0].symlinks"
        ]
    );
    let mut tighter = base.clone();
    tighter.spec.filesystem.outputs[0].size = Some(ByteSize::mib(10));
    assert!(compare(&base, &tighter).loosenings.is_empty());
    let mut unsized_base = base;
    unsized_base.spec.filesystem.outputs[0].size = None;
    assert!(compare(&unsized_base, &tighter).loosenings.is_empty());
}
