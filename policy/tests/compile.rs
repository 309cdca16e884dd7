//! The compiler against realistic specs (`ctr run`, a CRI container): what it grants, what it
//! keeps, and that it is deterministic and idempotent. Refusals are in `refusals.rs`.

mod common;

use safehouse_policy::compile::linux::SANDBOX_PIDS_HEADROOM;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{Mount, PosixRlimitType, Spec};
use safehouse_policy::{
    compile, AgentPolicy, CompileContext, CompiledPolicy, NetworkPlan, ViolationAction,
    DIGEST_ANNOTATION, POLICY_ANNOTATION,
};

fn ctx() -> CompileContext {
    CompileContext::default()
}

fn compiled(policy: &str, spec: &str) -> CompiledPolicy {
    compile(&common::example(policy), &common::spec(spec), &ctx()).unwrap()
}

fn mount_at<'a>(spec: &'a Spec, dest: &str) -> &'a Mount {
    spec.mounts()
        .iter()
        .flatten()
        .find(|m| m.destination() == Path::new(dest))
        .unwrap_or_else(|| panic!("no mount at {dest}"))
}

fn opts(m: &Mount) -> Vec<&str> {
    m.options().iter().flatten().map(String::as_str).collect()
}

#[test]
fn ctr_run_spec_is_confined_by_code_interpreter() {
    let c = compiled("code-interpreter", "ctr-run.json");
    let s = &c.spec;
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));

    let p = s.process().as_ref().unwrap();
    assert_eq!((p.user().uid(), p.user().gid()), (65534, 65534));
    assert_eq!(p.user().additional_gids(), &None);
    assert_eq!(p.no_new_privileges(), Some(true));
    let caps = p.capabilities().as_ref().unwrap();
    for set in [
        caps.bounding(),
        caps.effective(),
        caps.permitted(),
        caps.inheritable(),
        caps.ambient(),
    ] {
        assert_eq!(set.as_ref().map(HashSet::len), Some(0));
    }
    let nofile = p
        .rlimits()
        .iter()
        .flatten()
        .find(|r| r.typ() == PosixRlimitType::RlimitNofile)
        .unwrap();
    assert_eq!((nofile.hard(), nofile.soft()), (1024, 1024));

    let tmp = mount_at(s, "/tmp");
    assert_eq!(tmp.typ().as_deref(), Some("tmpfs"));
    assert_eq!(
        opts(tmp),
        [
            "rw",
            "nosuid",
            "nodev",
            "noexec",
            "mode=1777",
            "size=268435456"
        ]
    );
    let input = mount_at(s, "/input");
    assert_eq!(input.source().as_deref(), Some(Path::new("/srv/jobs/in")));
    assert_eq!(
        opts(input),
        ["rbind", "ro", "nosuid", "nodev", "noexec", "rprivate"]
    );
    assert_eq!(
        opts(mount_at(s, "/output")),
        ["rbind", "rw", "nosuid", "nodev", "noexec", "rprivate"]
    );
    // Writable spec tmpfs mounts become noexec too.
    assert!(opts(mount_at(s, "/run")).contains(&"noexec"));
    assert!(opts(mount_at(s, "/dev/shm")).contains(&"noexec"));

    let r = s.linux().as_ref().unwrap().resources().as_ref().unwrap();
    assert_eq!(r.memory().unwrap().limit(), Some(512 << 20));
    // The host cgroup leaves room for gVisor's own threads; the agent's limit is RLIMIT_NPROC.
    assert_eq!(r.pids().unwrap().limit(), 128 + SANDBOX_PIDS_HEADROOM);
    let nproc = s
        .process()
        .as_ref()
        .unwrap()
        .rlimits()
        .as_ref()
        .unwrap()
        .iter()
        .find(|l| l.typ() == oci_spec::runtime::PosixRlimitType::RlimitNproc)
        .expect("RLIMIT_NPROC set");
    assert_eq!((nproc.hard(), nproc.soft()), (128, 128));
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!((cpu.quota(), cpu.period()), (Some(100_000), Some(100_000)));
    // containerd's default device allowlist passes untouched.
    assert_eq!(r.devices().as_ref().map(Vec::len), Some(11));

    let ann = s.annotations().as_ref().unwrap();
    assert_eq!(
        ann.get(POLICY_ANNOTATION).map(String::as_str),
        Some("code-interpreter")
    );
    assert_eq!(ann.get(DIGEST_ANNOTATION), Some(&c.digest));
    assert_eq!(
        c.runsc_flags.get("network").map(String::as_str),
        Some("none")
    );
    assert_eq!(c.network, NetworkPlan::None);
    assert_eq!(c.runsc_args(), ["--network=none"]);
    assert_eq!(c.timeout, Some(Duration::from_secs(300)));
    assert_eq!(
        c.tools,
        [PathBuf::from("/bin/sh"), PathBuf::from("/usr/bin/python3")]
    );
    assert_eq!(c.audit_plan.tools, c.tools);
    assert_eq!(c.audit_plan.on_violation, ViolationAction::Kill);
    assert_eq!(c.name, "code-interpreter");
}

#[test]
fn cri_spec_keeps_tighter_limits_and_forces_cri_mounts_read_only() {
    let c = compiled("code-interpreter", "cri-container.json");
    let s = &c.spec;
    let r = s.linux().as_ref().unwrap().resources().as_ref().unwrap();
    assert_eq!(
        r.memory().unwrap().limit(),
        Some(256 << 20),
        "the spec's lower memory limit stays"
    );
    assert_eq!(
        r.cpu().as_ref().unwrap().quota(),
        Some(50_000),
        "the spec's lower quota stays"
    );
    assert_eq!(
        r.pids().unwrap().limit(),
        128 + SANDBOX_PIDS_HEADROOM,
        "the policy's lower pids limit (plus gVisor's headroom) wins"
    );
    for dest in [
        "/etc/hosts",
        "/etc/hostname",
        "/etc/resolv.conf",
        "/dev/termination-log",
        "/var/run/secrets/kubernetes.io/serviceaccount",
    ] {
        let o = opts(mount_at(s, dest));
        assert!(o.contains(&"ro") && !o.contains(&"rw"), "{dest}: {o:?}");
    }
    let shm = opts(mount_at(s, "/dev/shm"));
    assert!(
        shm.contains(&"rw") && shm.contains(&"noexec") && shm.contains(&"nosuid"),
        "{shm:?}"
    );
    let caps = s
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .as_ref()
        .unwrap();
    assert!(
        caps.bounding().as_ref().unwrap().is_empty(),
        "CAP_SYS_ADMIN and friends dropped"
    );
    // Joined pod namespaces stay as they are.
    let ns = s.linux().as_ref().unwrap().namespaces().as_ref().unwrap();
    assert_eq!(
        ns,
        common::spec("cri-container.json")
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
    );
}

#[test]
fn every_example_compiles_idempotently_and_deterministically() {
    for policy in ["code-interpreter", "web-research", "ci-job"] {
        for spec in ["ctr-run.json", "cri-container.json"] {
            let a = compiled(policy, spec);
            let b = compiled(policy, spec);
            assert_eq!(a, b, "{policy} on {spec} is not deterministic");
            let again = compile(&common::example(policy), &a.spec, &ctx()).unwrap();
            assert_eq!(again.spec, a.spec, "{policy} on {spec} is not idempotent");
        }
    }
    let web = compiled("web-research", "ctr-run.json");
    assert_eq!(web.network, NetworkPlan::Allowlist);
    assert_eq!(
        web.runsc_flags.get("network").map(String::as_str),
        Some("host")
    );
    let filter = web.filter.as_ref().expect("an allowlist has a filter");
    assert_eq!(filter.ports_for("en.wikipedia.org"), Some(vec![443]));
    let ci = compiled("ci-job", "ctr-run.json");
    assert_eq!(
        opts(mount_at(&ci.spec, "/build")),
        ["rw", "nosuid", "nodev", "mode=1777", "size=2147483648"]
    );
}

#[test]
fn strict_default_compiles() {
    let c = compile(
        &AgentPolicy::strict_default(),
        &common::spec("ctr-run.json"),
        &ctx(),
    )
    .unwrap();
    assert_eq!(c.name, "strict-default");
    assert_eq!(c.network, NetworkPlan::None);
    assert_eq!(c.timeout, None);
    assert!(opts(mount_at(&c.spec, "/tmp")).contains(&"noexec"));
}

#[test]
fn tools_always_record_exec_whatever_record_says() {
    let text = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: t}\nspec:\n  process: {tools: [/bin/sh]}\n  audit: {record: [file]}\n";
    let policy = safehouse_policy::parse_str(text, safehouse_policy::Format::Yaml).expect("policy");
    let c = compile(&policy, &common::spec("ctr-run.json"), &ctx()).expect("compiles");
    use safehouse_policy::AuditCategory::{File, Process};
    assert_eq!(c.audit_plan.record, vec![Process, File]);
    let explained = safehouse_policy::explain::explain(&policy).join(" ");
    assert!(
        explained.contains("recorded because tools are listed"),
        "{explained}"
    );
    assert!(
        explained.contains("/bin/sh run(s) whatever code"),
        "{explained}"
    );
}

#[test]
fn with_tools_every_mount_is_noexec_even_an_exec_zone_and_tmp_is_covered() {
    let mut policy = common::example("code-interpreter");
    assert!(!policy.spec.process.tools.is_empty());
    for z in &mut policy.spec.filesystem.outputs {
        z.exec = true;
    }
    policy.spec.filesystem.scratch.clear();
    let warned: Vec<String> = safehouse_policy::validate(&policy)
        .into_iter()
        .filter(|f| !f.is_error())
        .map(|f| f.to_string())
        .collect();
    assert!(
        warned
            .iter()
            .any(|w| w.contains("outputs[0].exec") && w.contains("no effect")),
        "{warned:?}"
    );
    let c = compile(&policy, &common::spec("ctr-run.json"), &ctx()).unwrap();
    let mounts = c.spec.mounts().as_ref().unwrap();
    for m in mounts {
        let o = opts(m);
        assert!(o.contains(&"noexec"), "{m:?}");
        assert!(!o.contains(&"exec"), "{m:?}");
    }
    // runsc would otherwise mount a writable, exec-allowed tmpfs at /tmp.
    let tmp = mount_at(&c.spec, "/tmp");
    assert_eq!(tmp.typ().as_deref(), Some("tmpfs"));
    let again = compile(&policy, &c.spec, &ctx()).unwrap();
    assert_eq!(again.spec, c.spec);

    // Without tools an exec zone stays exec and no /tmp is added.
    policy.spec.process.tools.clear();
    let c = compile(&policy, &common::spec("ctr-run.json"), &ctx()).unwrap();
    let out = &policy.spec.filesystem.outputs[0].path;
    assert!(!opts(mount_at(&c.spec, out)).contains(&"noexec"));
    assert!(c
        .spec
        .mounts()
        .iter()
        .flatten()
        .all(|m| m.destination() != Path::new("/tmp")));
}
