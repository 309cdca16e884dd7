//! Specs the compiler must refuse (host paths, host namespaces, devices, unknown mount
//! types, allowlist) and the ones it must let through hardened.

mod common;

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxDeviceBuilder, LinuxDeviceType, LinuxNamespaceType, Mount, MountBuilder, Spec,
};
use safehouse_policy::{compile, AgentPolicy, CompileContext, Format};

fn ctx() -> CompileContext {
    CompileContext::default()
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

fn refusal(policy: &AgentPolicy, spec: &Spec) -> String {
    match compile(policy, spec, &ctx()) {
        Ok(_) => panic!("spec was not refused"),
        Err(e) => {
            assert_eq!(e.policy(), policy.metadata.name);
            e.to_string()
        }
    }
}

fn with_mount(spec: &str, m: Mount) -> Spec {
    let mut s = common::spec(spec);
    let mut mounts = s.mounts().clone().unwrap();
    mounts.push(m);
    s.set_mounts(Some(mounts));
    s
}

fn bind(dest: &str, source: &str) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(vec!["rbind".to_string(), "rw".to_string()])
        .build()
        .unwrap()
}

#[test]
fn host_bind_mount_not_named_is_refused() {
    let s = with_mount("ctr-run.json", bind("/host", "/etc"));
    assert_eq!(
        refusal(&common::example("code-interpreter"), &s),
        "mounts[7] (destination /host, source /etc): bind mount of a host path not named by policy \"code-interpreter\""
    );
}

#[test]
fn named_host_path_at_another_destination_is_hardened() {
    let s = with_mount("ctr-run.json", bind("/data", "/srv/jobs/in/batch-7"));
    let c = compile(&common::example("code-interpreter"), &s, &ctx()).unwrap();
    let o = opts(mount_at(&c.spec, "/data"));
    assert!(
        o.contains(&"ro") && !o.contains(&"rw") && o.contains(&"noexec"),
        "{o:?}"
    );
}

#[test]
fn spec_mount_at_a_zone_is_replaced_by_the_zone() {
    let s = with_mount("ctr-run.json", bind("/input", "/"));
    let c = compile(&common::example("code-interpreter"), &s, &ctx()).unwrap();
    let inputs: Vec<&Mount> = c
        .spec
        .mounts()
        .iter()
        .flatten()
        .filter(|m| m.destination() == Path::new("/input"))
        .collect();
    assert_eq!(inputs.len(), 1);
    assert_eq!(
        inputs[0].source().as_deref(),
        Some(Path::new("/srv/jobs/in"))
    );
}

#[test]
fn cri_destination_from_a_foreign_source_is_refused() {
    let s = with_mount("ctr-run.json", bind("/etc/hosts", "/"));
    let msg = refusal(&common::example("code-interpreter"), &s);
    assert!(
        msg.starts_with("mounts[7] (destination /etc/hosts, source /):"),
        "{msg}"
    );
    let open = CompileContext {
        cri_source_roots: vec![],
    };
    assert!(compile(&common::example("code-interpreter"), &s, &open).is_ok());
}

#[test]
fn unknown_mount_types_are_refused() {
    let m = MountBuilder::default()
        .destination("/merged")
        .typ("overlay")
        .source("overlay")
        .options(vec!["lowerdir=/etc".to_string()])
        .build()
        .unwrap();
    let msg = refusal(
        &common::example("code-interpreter"),
        &with_mount("ctr-run.json", m),
    );
    assert!(
        msg.contains("mount type \"overlay\" not allowed by policy \"code-interpreter\""),
        "{msg}"
    );
}

fn without_namespace(typ: LinuxNamespaceType) -> Spec {
    let mut s = common::spec("ctr-run.json");
    let linux = s.linux_mut().as_mut().unwrap();
    let ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .filter(|n| n.typ() != typ)
        .collect();
    linux.set_namespaces(Some(ns));
    s
}

#[test]
fn host_namespaces_are_refused() {
    let policy = common::example("code-interpreter");
    for (typ, label) in [
        (LinuxNamespaceType::Pid, "pid"),
        (LinuxNamespaceType::Ipc, "ipc"),
        (LinuxNamespaceType::Network, "network"),
    ] {
        let msg = refusal(&policy, &without_namespace(typ));
        assert_eq!(
            msg,
            format!("linux.namespaces: no {label} namespace means the host's {label} namespace, refused by policy \"code-interpreter\"")
        );
    }
    // Leaving out uts is not a host-namespace escape the policy polices.
    assert!(compile(&policy, &without_namespace(LinuxNamespaceType::Uts), &ctx()).is_ok());

    let mut s = common::spec("cri-container.json");
    let linux = s.linux_mut().as_mut().unwrap();
    let mut ns = linux.namespaces().clone().unwrap();
    ns[4].set_path(Some(PathBuf::from("/proc/1/ns/net")));
    linux.set_namespaces(Some(ns));
    assert!(refusal(&policy, &s).starts_with("linux.namespaces[4] (network, path /proc/1/ns/net)"));
}

#[test]
fn non_standard_devices_are_refused_and_cgroup_rules_dropped() {
    let policy = common::example("code-interpreter");
    let mut s = common::spec("ctr-run.json");
    let null = LinuxDeviceBuilder::default()
        .path("/dev/null")
        .typ(LinuxDeviceType::C)
        .major(1)
        .minor(3)
        .build()
        .unwrap();
    let sda = LinuxDeviceBuilder::default()
        .path("/dev/sda")
        .typ(LinuxDeviceType::B)
        .major(8)
        .minor(0)
        .build()
        .unwrap();
    let fake_null = LinuxDeviceBuilder::default()
        .path("/dev/null")
        .typ(LinuxDeviceType::B)
        .major(8)
        .minor(0)
        .build()
        .unwrap();
    s.linux_mut()
        .as_mut()
        .unwrap()
        .set_devices(Some(vec![null.clone()]));
    assert!(compile(&policy, &s, &ctx()).is_ok());
    for bad in [sda, fake_null] {
        s.linux_mut()
            .as_mut()
            .unwrap()
            .set_devices(Some(vec![null.clone(), bad]));
        let msg = refusal(&policy, &s);
        assert!(msg.starts_with("linux.devices[1] ("), "{msg}");
        assert!(
            msg.ends_with("device outside the standard set refused by policy \"code-interpreter\""),
            "{msg}"
        );
    }

    let mut s = common::spec("ctr-run.json");
    let allow_all: oci_spec::runtime::LinuxDeviceCgroup =
        serde_json::from_str(r#"{"allow": true, "access": "rwm"}"#).unwrap();
    let r = s
        .linux_mut()
        .as_mut()
        .unwrap()
        .resources_mut()
        .as_mut()
        .unwrap();
    let mut rules = r.devices().clone().unwrap();
    rules.push(allow_all.clone());
    r.set_devices(Some(rules));
    let c = compile(&policy, &s, &ctx()).unwrap();
    let kept = c
        .spec
        .linux()
        .as_ref()
        .unwrap()
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(!kept.contains(&allow_all));
    assert_eq!(kept.len(), 11);
}

#[test]
fn allowlist_compiles_to_a_filter_never_an_open_network() {
    let text = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: allow}\nspec:\n  network: {mode: allowlist, egress: [\"pypi.org:443\"]}\n";
    let policy = safehouse_policy::parse_str(text, Format::Yaml).unwrap();
    let c = compile(&policy, &common::spec("ctr-run.json"), &ctx()).unwrap();
    let filter = c.filter.expect("an allowlist always has a filter");
    assert_eq!(filter.mode, safehouse_policy::FilterMode::Allowlist);
    assert_eq!(filter.ports_for("pypi.org"), Some(vec![443]));
    assert_eq!(
        c.runsc_flags.get("network").map(String::as_str),
        Some("host")
    );
}

#[test]
fn invalid_policies_do_not_compile() {
    let mut policy = common::example("code-interpreter");
    policy.spec.process.tools.push("relative".to_string());
    let err = compile(&policy, &common::spec("ctr-run.json"), &ctx()).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.process.tools[2]: must be an absolute path"),
        "{err}"
    );
}

#[test]
fn rootfs_read_write_never_loosens_a_read_only_spec() {
    let mut policy = common::example("code-interpreter");
    policy.spec.filesystem.rootfs = safehouse_policy::manifest::RootfsMode::ReadWrite;
    let mut s = common::spec("ctr-run.json");
    assert_eq!(
        compile(&policy, &s, &ctx())
            .unwrap()
            .spec
            .root()
            .as_ref()
            .unwrap()
            .readonly(),
        Some(false)
    );
    s.root_mut().as_mut().unwrap().set_readonly(Some(true));
    assert_eq!(
        compile(&policy, &s, &ctx())
            .unwrap()
            .spec
            .root()
            .as_ref()
            .unwrap()
            .readonly(),
        Some(true)
    );
}

#[test]
fn runsc_annotations_are_refused() {
    let policy = AgentPolicy::strict_default();
    for key in [
        "dev.gvisor.spec.mount.data.share",
        "dev.gvisor.flag.network",
        "dev.gvisor.internal.nvproxy",
        "DEV.gVisor.flag.platform",
    ] {
        let mut s = common::spec("cri-container.json");
        let mut a = s.annotations().clone().unwrap_or_default();
        a.insert(key.to_string(), "true".to_string());
        a.insert("dev.gvisor.zzz".to_string(), "x".to_string());
        s.set_annotations(Some(a));
        let err = refusal(&policy, &s);
        let first = if key < "dev.gvisor.zzz" {
            key
        } else {
            "dev.gvisor.zzz"
        };
        assert!(
            err.starts_with(&format!(
                "annotations[{first:?}]: runsc interprets dev.gvisor.* annotations itself"
            )),
            "{err}"
        );
    }
    // Other annotations (CRI's, the policy's own) pass, and the output compiles again.
    let mut s = common::spec("cri-container.json");
    let mut a = s.annotations().clone().unwrap_or_default();
    a.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    a.insert("gvisor.dev/note".into(), "x".into());
    s.set_annotations(Some(a));
    let out = compile(&policy, &s, &ctx()).unwrap();
    assert!(compile(&policy, &out.spec, &ctx()).is_ok());
}
