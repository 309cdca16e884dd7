//! The policy as an upper bound on the pod's identity and capabilities: what the spec asks
//! within the bound stands, what is beyond it is narrowed (and reported) or refused with an
//! error naming the field and the policy; nothing is widened.

mod common;

use std::collections::HashSet;

use oci_spec::runtime::{Capability, LinuxCapabilities, Spec};
use safehouse_policy::compile::Narrowing;
use safehouse_policy::{compile, AgentPolicy, CompileContext, CompileError, CompiledPolicy};

fn policy(user: &str, caps: &[&str]) -> AgentPolicy {
    let mut p = common::example("code-interpreter");
    p.spec.process.user = user.into();
    p.spec.process.capabilities = caps.iter().map(|c| c.to_string()).collect();
    p
}

/// The CRI fixture asking for `uid:gid`, `groups`, and `caps` in every capability set (`None`:
/// no capabilities object at all).
fn spec(uid: u32, gid: u32, groups: &[u32], caps: Option<&[Capability]>) -> Spec {
    let mut s = common::spec("cri-container.json");
    let p = s.process_mut().as_mut().unwrap();
    p.user_mut().set_uid(uid);
    p.user_mut().set_gid(gid);
    p.user_mut().set_additional_gids(Some(groups.to_vec()));
    p.set_capabilities(caps.map(|caps| {
        let set: HashSet<Capability> = caps.iter().copied().collect();
        let mut lc = LinuxCapabilities::default();
        lc.set_bounding(Some(set.clone()));
        lc.set_effective(Some(set.clone()));
        lc.set_permitted(Some(set.clone()));
        lc.set_inheritable(Some(set.clone()));
        lc.set_ambient(Some(set));
        lc
    }));
    s
}

fn run(policy: &AgentPolicy, spec: &Spec) -> Result<CompiledPolicy, CompileError> {
    compile(policy, spec, &CompileContext::default())
}

/// The narrowings of the identity (user and groups), leaving out the limits'.
fn identity_narrowed(c: &CompiledPolicy) -> Vec<&Narrowing> {
    c.narrowed
        .iter()
        .filter(|n| n.field.starts_with("process.user"))
        .collect()
}

fn ids(c: &CompiledPolicy) -> (u32, u32, Vec<u32>) {
    let u = c.spec.process().as_ref().unwrap().user();
    (
        u.uid(),
        u.gid(),
        u.additional_gids().clone().unwrap_or_default(),
    )
}

fn cap_sets(c: &CompiledPolicy) -> Vec<HashSet<Capability>> {
    let lc = c
        .spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    [
        lc.bounding(),
        lc.effective(),
        lc.permitted(),
        lc.inheritable(),
        lc.ambient(),
    ]
    .into_iter()
    .map(|s| s.clone().unwrap())
    .collect()
}

#[test]
fn nonroot_lets_the_pods_own_ids_and_groups_stand() {
    let c = run(
        &policy("nonroot", &[]),
        &spec(1001, 1002, &[1234], Some(&[])),
    )
    .unwrap();
    assert_eq!(ids(&c), (1001, 1002, vec![1234]));
    assert!(identity_narrowed(&c).is_empty(), "{:?}", c.narrowed);
}

#[test]
fn nonroot_narrows_root_to_nobody_and_drops_group_zero() {
    let c = run(
        &policy("nonroot", &[]),
        &spec(0, 0, &[0, 10, 10], Some(&[])),
    )
    .unwrap();
    assert_eq!(ids(&c), (65534, 65534, vec![10]));
    let said: Vec<String> = c.narrowed.iter().map(ToString::to_string).collect();
    assert!(
        said.iter()
            .any(|n| n == "process.user: uid:gid 0:0 narrowed to 65534:65534 (user bound nonroot)"),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|n| n.starts_with("process.user.additionalGids: supplementary groups 0")),
        "{said:?}"
    );
    // A non-root uid with the root group keeps its uid; the group is narrowed.
    let c = run(&policy("nonroot", &[]), &spec(1001, 0, &[], Some(&[]))).unwrap();
    assert_eq!(ids(&c), (1001, 65534, vec![]));
}

#[test]
fn a_fixed_user_narrows_root_and_refuses_another_identity() {
    let fixed = policy("1000:1000", &[]);
    let c = run(&fixed, &spec(0, 0, &[0, 1, 2], Some(&[]))).unwrap();
    assert_eq!(ids(&c), (1000, 1000, vec![]));
    let c = run(&fixed, &spec(1000, 1000, &[], Some(&[]))).unwrap();
    assert_eq!(ids(&c), (1000, 1000, vec![]));
    assert!(identity_narrowed(&c).is_empty(), "{:?}", c.narrowed);

    for (uid, gid) in [(1001, 1000), (1000, 1002), (1001, 0)] {
        let err = run(&fixed, &spec(uid, gid, &[], Some(&[]))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("process.user: the container asks to run as"),
            "{msg}"
        );
        assert!(
            msg.contains("policy \"code-interpreter\" allows only 1000:1000"),
            "{msg}"
        );
    }
}

#[test]
fn a_root_policy_user_lets_the_pods_own_identity_stand() {
    let root = policy("0:0", &[]);
    let c = run(&root, &spec(1001, 1002, &[1234], Some(&[]))).unwrap();
    assert_eq!(ids(&c), (1001, 1002, vec![1234]));
    let c = run(&root, &spec(0, 0, &[0], Some(&[]))).unwrap();
    assert_eq!(ids(&c), (0, 0, vec![0]));
}

#[test]
fn the_pods_sandbox_container_is_narrowed_to_a_fixed_user_not_refused() {
    // pause images run as 65535; under a fixed user the sandbox container gets the policy's
    // identity, while an agent container asking the same is refused.
    let fixed = policy("65534:65534", &[]);
    let mut pause = spec(65535, 65535, &[], Some(&[]));
    pause
        .annotations_mut()
        .get_or_insert_with(Default::default)
        .insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
    let c = run(&fixed, &pause).unwrap();
    assert_eq!(ids(&c), (65534, 65534, vec![]));
    assert_eq!(identity_narrowed(&c).len(), 1, "{:?}", c.narrowed);
    assert!(run(&fixed, &spec(65535, 65535, &[], Some(&[]))).is_err());
}

#[test]
fn the_strict_default_still_runs_a_pod_without_security_context_as_nobody() {
    let strict = AgentPolicy::strict_default();
    let c = run(&strict, &spec(0, 0, &[0, 10], None)).unwrap();
    assert_eq!(ids(&c), (65534, 65534, vec![]));
    for set in cap_sets(&c) {
        assert!(set.is_empty(), "{set:?}");
    }
}

#[test]
fn dropping_all_capabilities_leaves_every_set_empty_whatever_the_policy_keeps() {
    let generous = policy("nonroot", &["CAP_NET_BIND_SERVICE", "CAP_KILL"]);
    for asked in [Some(&[][..]), None] {
        let c = run(&generous, &spec(1001, 1001, &[], asked)).unwrap();
        for set in cap_sets(&c) {
            assert!(set.is_empty(), "asked {asked:?}, got {set:?}");
        }
    }
}

#[test]
fn capabilities_are_the_intersection_and_what_is_dropped_is_named() {
    let p = policy("nonroot", &["CAP_NET_BIND_SERVICE", "CAP_KILL"]);
    let asked = [
        Capability::NetBindService,
        Capability::SysAdmin,
        Capability::NetRaw,
    ];
    let c = run(&p, &spec(1001, 1001, &[], Some(&asked))).unwrap();
    let only: HashSet<Capability> = [Capability::NetBindService].into();
    for set in cap_sets(&c) {
        assert_eq!(set, only);
    }
    let said: Vec<String> = c.narrowed.iter().map(ToString::to_string).collect();
    assert!(
        said.contains(
            &"process.capabilities: CAP_NET_RAW, CAP_SYS_ADMIN dropped: not kept by the policy"
                .to_string()
        ),
        "{said:?}"
    );
}

#[test]
fn effective_and_ambient_stay_within_permitted() {
    let p = policy("nonroot", &["CAP_NET_BIND_SERVICE", "CAP_KILL"]);
    let mut s = spec(
        1001,
        1001,
        &[],
        Some(&[Capability::NetBindService, Capability::Kill]),
    );
    let process = s.process_mut().as_mut().unwrap();
    let mut lc = process.capabilities().clone().unwrap();
    lc.set_permitted(Some([Capability::Kill].into()));
    process.set_capabilities(Some(lc));
    let c = run(&p, &s).unwrap();
    let sets = cap_sets(&c);
    let kill: HashSet<Capability> = [Capability::Kill].into();
    assert_eq!(sets[1], kill, "effective");
    assert_eq!(sets[2], kill, "permitted");
    assert_eq!(sets[4], kill, "ambient");
}

#[test]
fn compiling_the_output_again_narrows_nothing_more() {
    let p = policy("nonroot", &["CAP_NET_BIND_SERVICE"]);
    let first = run(&p, &spec(0, 0, &[0, 5], Some(&[Capability::SysAdmin]))).unwrap();
    let again = run(&p, &first.spec).unwrap();
    assert_eq!(again.spec, first.spec);
    assert!(again.narrowed.is_empty(), "{:?}", again.narrowed);
}

#[test]
fn a_user_that_is_no_bound_is_refused_by_validation() {
    let bad = policy("anyone", &[]);
    let err = run(&bad, &spec(0, 0, &[], None)).unwrap_err().to_string();
    assert!(err.contains("spec.process.user"), "{err}");
    assert!(err.contains("nor \"nonroot\""), "{err}");
}

#[test]
fn sysctls_gvisor_does_not_apply_are_refused_or_dropped_as_narrowing() {
    let p = policy("nonroot", &[]);
    let with = |key: &str, value: &str| {
        let mut s = spec(1001, 1001, &[], Some(&[]));
        s.linux_mut()
            .as_mut()
            .unwrap()
            .set_sysctl(Some([(key.to_string(), value.to_string())].into()));
        s
    };
    let err = run(&p, &with("kernel.shm_rmid_forced", "1"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("linux.sysctl.kernel.shm_rmid_forced: gVisor does not apply sysctls"),
        "{err}"
    );
    assert!(err.contains("code-interpreter"), "{err}");

    let c = run(&p, &with("net.ipv4.ip_unprivileged_port_start", "0")).unwrap();
    assert!(c.spec.linux().as_ref().unwrap().sysctl().is_none());
    let said: Vec<String> = c.narrowed.iter().map(ToString::to_string).collect();
    assert!(
        said.iter()
            .any(|n| n
                .starts_with("linux.sysctl.net.ipv4.ip_unprivileged_port_start: \"0\" dropped")),
        "{said:?}"
    );
}

#[test]
fn limits_the_pod_set_beyond_the_policy_are_recorded_as_narrowed() {
    let mut p = policy("nonroot", &[]);
    p.spec.resources.memory = "256Mi".parse().unwrap();
    p.spec.resources.nofile = 1024;
    let mut s = spec(1001, 1001, &[], Some(&[]));
    s.root_mut().as_mut().unwrap().set_readonly(Some(false));
    s.process_mut()
        .as_mut()
        .unwrap()
        .set_no_new_privileges(Some(false));
    let r = s
        .linux_mut()
        .as_mut()
        .unwrap()
        .resources_mut()
        .get_or_insert_with(Default::default);
    let mut memory = oci_spec::runtime::LinuxMemory::default();
    memory.set_limit(Some(1 << 30));
    r.set_memory(Some(memory));
    let c = run(&p, &s).unwrap();
    let said: Vec<String> = c.narrowed.iter().map(ToString::to_string).collect();
    for expected in [
        "root.readonly: false narrowed to true (filesystem.rootfs)",
        "process.noNewPrivileges: false narrowed to true (process.noNewPrivileges)",
        "linux.resources.memory.limit: 1073741824 bytes narrowed to 268435456 (resources.memory)",
    ] {
        assert!(said.iter().any(|n| n == expected), "{expected}: {said:?}");
    }
    // Compiling again changes nothing, so nothing more is narrowed.
    let again = run(&p, &c.spec).unwrap();
    assert!(again.narrowed.is_empty(), "{:?}", again.narrowed);
}
