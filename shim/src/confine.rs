//! Choosing a container's agent policy and confining its spec with it.
//!
//! The spec containerd hands over is untrusted; the policy is the operator's. The policy comes
//! from the `safehouse.dev/policy` annotation (a name in `[policy] dir`, if the operator made it
//! selectable), else `[policy] default`, else the built-in strict default. Compilation is the
//! policy crate's pure function; this module only does the I/O around it. A policy that cannot
//! be applied fails Create: Safehouse never runs a container open instead.

use std::path::{Path, PathBuf};

use safehouse_policy::{compile, AgentPolicy, CompileContext, CompiledPolicy, NetworkPlan};
use safehouse_runsc_config::{PolicySection, RunscProbe};
use serde_json::Value;

use crate::bundle::{Bundle, CONFIG};
use crate::container::SpecNetns;
use crate::error::{Result, ShimError};
use crate::node::RuntimeEnv;
use crate::runsc::{NetworkMode, SandboxFlags};

/// The annotation (pod or container) that selects a policy by name.
pub const SELECT_ANNOTATION: &str = "safehouse.dev/policy";

/// A `[policy] selectable` entry that lists every policy in the directory, looser ones too.
pub const SELECT_ANY: &str = "*";

/// Where a container's policy came from, for logs and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// Selected by annotation from the policy directory.
    Annotation(PathBuf),
    /// The runtime config's default policy file.
    ConfigDefault(PathBuf),
    /// The built-in strict default.
    BuiltIn,
}

/// Picks the policy for a spec.
pub fn select(
    section: &PolicySection,
    spec: &Value,
    config: &str,
) -> Result<(AgentPolicy, PolicySource)> {
    if let Some(name) = spec["annotations"][SELECT_ANNOTATION]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        let valid = name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !name.starts_with('.');
        if !valid {
            return Err(ShimError::InvalidArgument(format!(
                "annotation {SELECT_ANNOTATION}={name:?}: not a policy name (lowercase letters, digits, '-', '.')"
            )));
        }
        let Some(dir) = &section.dir else {
            return Err(ShimError::InvalidArgument(format!(
                "annotation {SELECT_ANNOTATION}={name:?}: runtime config {config} names no [policy] dir to select from"
            )));
        };
        let path = ["yaml", "yml", "json"]
            .iter()
            .map(|ext| dir.join(format!("{name}.{ext}")))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                ShimError::InvalidArgument(format!(
                    "annotation {SELECT_ANNOTATION}={name:?}: no policy {name}.yaml or {name}.json in {}",
                    dir.display()
                ))
            })?;
        let selected = load(&path)?;
        // Tighten-only: the selected policy may not be looser than the handler's default,
        // unless the operator listed it (or every policy, "*") in `selectable`.
        let default = match &section.default {
            Some(p) => load(p)?,
            None => AgentPolicy::strict_default(),
        };
        let listed = section
            .selectable
            .iter()
            .any(|s| s == name || s == SELECT_ANY);
        safehouse_policy::check_selectable(&default, &selected, name, listed).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "annotation {SELECT_ANNOTATION}={name:?} ({}): {e}",
                path.display()
            ))
        })?;
        return Ok((selected, PolicySource::Annotation(path)));
    }
    if let Some(path) = &section.default {
        return Ok((load(path)?, PolicySource::ConfigDefault(path.clone())));
    }
    Ok((AgentPolicy::strict_default(), PolicySource::BuiltIn))
}

fn load(path: &Path) -> Result<AgentPolicy> {
    Ok(safehouse_policy::load_file(path)?)
}

/// Where CRI-managed bind mounts may come from: the usual containerd/kubelet directories, the
/// operator's `[policy] cri_sources`, and the state directory of the containerd that made this
/// bundle (`STATE/io.containerd.runtime.v2.task/NS/ID`), which holds the pod's `/dev/shm`.
pub fn compile_context(section: &PolicySection, bundle: &Path) -> CompileContext {
    let mut ctx = CompileContext::default();
    ctx.cri_source_roots
        .extend(section.cri_sources.iter().cloned());
    let tasks_dir = bundle.parent().and_then(Path::parent);
    if let Some(tasks_dir) = tasks_dir {
        if tasks_dir
            .file_name()
            .is_some_and(|n| n == "io.containerd.runtime.v2.task")
        {
            if let Some(state) = tasks_dir.parent().filter(|s| s.is_absolute()) {
                ctx.cri_source_roots.push(state.to_path_buf());
            }
        }
    }
    ctx
}

/// A container's policy, where it came from, and what it compiled to.
pub struct Confinement {
    /// The policy.
    pub policy: AgentPolicy,
    /// Where it came from.
    pub source: PolicySource,
    /// The confined spec, runsc flags and audit plan (the spec is written by the caller).
    pub compiled: CompiledPolicy,
}

/// Chooses the policy for the bundle's spec and compiles it (nothing is written).
pub fn confine(env: &RuntimeEnv, bundle: &Bundle) -> Result<Confinement> {
    let config_name = env
        .config
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "<built-in defaults>".into());
    let (policy, source) = select(&env.config.policy, &bundle.spec, &config_name)?;
    let mut ctx = compile_context(&env.config.policy, &bundle.dir);
    if !ctx.cri_source_roots.is_empty() {
        // containerd's own files for this pod sandbox, wherever its root is.
        ctx.cri_source_roots
            .extend(crate::cri_files::sandbox_files(&bundle.spec));
    }
    let compiled = compile_spec(&policy, &ctx, &bundle.spec, &bundle.file(CONFIG))?;
    crate::seccomp::check_spec(&env.probe, &compiled.spec)?;
    Ok(Confinement {
        policy,
        source,
        compiled,
    })
}

/// Compiles `policy` against `spec` (read from `path`, for messages).
pub fn compile_spec(
    policy: &AgentPolicy,
    ctx: &CompileContext,
    spec: &Value,
    path: &Path,
) -> Result<CompiledPolicy> {
    let spec: oci_spec::runtime::Spec = serde_json::from_value(spec.clone()).map_err(|e| {
        ShimError::InvalidArgument(format!(
            "{}: not a valid OCI runtime spec: {e}",
            path.display()
        ))
    })?;
    Ok(compile(policy, &spec, ctx)?)
}

/// The process fields a policy decides: an exec into the container gets the container's
/// (already confined) values for them, whatever the exec request asked.
const CONFINED_PROCESS_FIELDS: &[&str] = &[
    "user",
    "capabilities",
    "noNewPrivileges",
    "rlimits",
    "apparmorProfile",
    "selinuxLabel",
    "oomScoreAdj",
];

/// Confines an exec's process spec like the container it runs in: CRI (and `ctr task exec`)
/// build it from containerd's copy of the spec, from before the policy was applied, so an
/// exec would otherwise run as root with every capability under a policy that forbids it.
/// Arguments, environment, working directory and terminal stay the exec's own.
pub fn confine_exec(container_process: &Value, exec: &Value) -> Value {
    let mut out = exec.clone();
    if let (Some(out), Some(confined)) = (out.as_object_mut(), container_process.as_object()) {
        for field in CONFINED_PROCESS_FIELDS {
            match confined.get(*field) {
                Some(v) => out.insert((*field).to_string(), v.clone()),
                None => out.remove(*field),
            };
        }
    }
    out
}

/// Under `tools` (policy `policy`), an exec brings no loader variables of its own: each one it
/// sets must have the value the container's spec (checked at Create) gives it. Otherwise
/// `LD_PRELOAD` and the like would run code no tool names inside a listed tool; the stream
/// would catch it after the fact, this refuses it before anything runs.
pub fn check_exec_loader_env(policy: &str, container_process: &Value, exec: &Value) -> Result<()> {
    let theirs = crate::audit::process_loader_env(container_process);
    let asked = crate::audit::process_loader_env(exec);
    let Some((name, _)) = crate::audit::foreign_loader_var(&theirs, &asked) else {
        return Ok(());
    };
    Err(safehouse_policy::CompileError::Refused {
        policy: policy.to_string(),
        field: format!("process.env ({name})"),
        reason: format!(
            "the exec sets {name} other than the container's spec does, which would make the \
             dynamic loader run code no tool names; refused by policy {policy:?}, which sets \
             process.tools"
        ),
    }
    .into())
}

/// The extra global runsc flags a compiled policy asks for (the network flag is decided with
/// the container's namespace by the caller), checked against the installed runsc.
pub fn policy_flags(compiled: &CompiledPolicy, probe: &RunscProbe) -> Result<Vec<String>> {
    let mut flags = Vec::new();
    for (name, value) in &compiled.runsc_flags {
        if name == "network" {
            continue;
        }
        if !probe.knows_flag(name) {
            return Err(ShimError::FailedPrecondition(format!(
                "policy {:?} needs runsc flag --{name}, which runsc {} does not have",
                compiled.name, probe.version
            )));
        }
        flags.push(format!("--{name}={value}"));
    }
    Ok(flags)
}

/// Whether the policy lets the sandbox use a network namespace it was given.
pub fn allows_network(compiled: &CompiledPolicy) -> bool {
    compiled.network != NetworkPlan::None
}

/// The network flags of a new sandbox. A policy with network access (always filtered) needs
/// the container's own namespace, entered with runsc `--network=host`: the filter lives in that
/// namespace. Without one the container is refused, never run on the node's network or unfiltered.
pub fn network_flags(
    env: &RuntimeEnv,
    compiled: &CompiledPolicy,
    netns: &SpecNetns,
) -> Result<SandboxFlags> {
    if !allows_network(compiled) {
        return Ok(SandboxFlags::loopback_only());
    }
    let mode = match compiled.network {
        NetworkPlan::Open => "open",
        _ => "allowlist",
    };
    if *netns == SpecNetns::Shared {
        return Err(ShimError::FailedPrecondition(format!(
            "policy {:?}: network.mode {mode} needs a container with a network namespace of its own (CRI, nerdctl, `ctr run --with-ns network:PATH`, or a spec's network namespace entry); this container has none, and Safehouse never gives a sandbox the node's network",
            compiled.name
        )));
    }
    let flags = env.sandbox_flags(netns)?;
    if flags.network == NetworkMode::Sandbox {
        return Err(ShimError::FailedPrecondition(format!(
            "policy {:?}: network.mode {mode} is enforced by nftables in the container's namespace, which gVisor's own netstack (runtime config network = \"sandbox\") bypasses; use network = \"auto\" or \"host\"",
            compiled.name
        )));
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::ttrpc::Code;
    use serde_json::json;

    fn section(dir: Option<&Path>, selectable: &[&str]) -> PolicySection {
        PolicySection {
            default: None,
            dir: dir.map(Path::to_path_buf),
            selectable: selectable.iter().map(|s| s.to_string()).collect(),
            cri_sources: Vec::new(),
        }
    }

    const OPEN: &str = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: web\nspec:\n  network:\n    mode: open\n";

    #[test]
    fn no_annotation_and_no_config_means_strict_default() {
        let (p, src) = select(&section(None, &[]), &json!({}), "c.toml").expect("default");
        assert_eq!(src, PolicySource::BuiltIn);
        assert_eq!(p.metadata.name, safehouse_policy::STRICT_DEFAULT_NAME);
    }

    #[test]
    fn annotation_selects_only_a_tighter_policy_unless_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("web.yaml"), OPEN).expect("write");
        let tight = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: tight\nspec:\n  resources: {memory: 64Mi}\n";
        std::fs::write(dir.path().join("tight.yaml"), tight).expect("write");
        std::fs::write(dir.path().join("alias.yaml"), tight).expect("write");
        let select_name = |n: &str| json!({"annotations": {SELECT_ANNOTATION: n}});
        // Looser than the strict default (open network): refused unless listed, naming why.
        let err = select(
            &section(Some(dir.path()), &[]),
            &select_name("web"),
            "c.toml",
        )
        .expect_err("looser");
        assert!(err.to_string().contains("looser than the default"), "{err}");
        assert!(err.to_string().contains("network"), "{err}");
        for listed in [&["web"][..], &[SELECT_ANY][..]] {
            let (p, src) = select(
                &section(Some(dir.path()), listed),
                &select_name("web"),
                "c.toml",
            )
            .expect("listed");
            assert_eq!(p.metadata.name, "web");
            assert!(matches!(src, PolicySource::Annotation(_)));
        }
        // Tighter than the default: selectable without a listing.
        let (p, _) = select(
            &section(Some(dir.path()), &[]),
            &select_name("tight"),
            "c.toml",
        )
        .expect("tighter");
        assert_eq!(p.metadata.name, "tight");
        // A file whose metadata.name is not the name used is refused, listed or not.
        let err = select(
            &section(Some(dir.path()), &[SELECT_ANY]),
            &select_name("alias"),
            "c.toml",
        )
        .expect_err("name mismatch");
        assert!(err.to_string().contains("metadata.name"), "{err}");
        let err = select(&section(None, &[]), &select_name("web"), "c.toml").expect_err("no dir");
        assert!(err.to_string().contains("no [policy] dir"), "{err}");
        assert!(select(
            &section(Some(dir.path()), &[]),
            &select_name("nope"),
            "c.toml"
        )
        .is_err());
        let traversal = select_name("../etc/passwd");
        assert!(select(&section(Some(dir.path()), &[]), &traversal, "c.toml").is_err());
    }

    fn env(network: safehouse_runsc_config::NetworkMode) -> RuntimeEnv {
        let probe = RunscProbe::from_outputs(
            Path::new("/usr/bin/runsc"),
            "runsc version release-20240729.0\n",
            "  -network value\n    \tnetwork\n",
        )
        .expect("probe");
        RuntimeEnv {
            config: safehouse_runsc_config::RuntimeConfig {
                network,
                ..Default::default()
            },
            probe,
            global: Vec::new(),
        }
    }

    fn compiled(mode: &str) -> CompiledPolicy {
        let text = format!(
            "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {{name: net}}\nspec:\n  network: {{mode: {mode}, egress: [\"10.0.0.1:80\"]}}\n"
        );
        let policy =
            safehouse_policy::parse_str(&text, safehouse_policy::Format::Yaml).expect("policy");
        let spec: oci_spec::runtime::Spec = serde_json::from_value(json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "network"}]}
        }))
        .expect("spec");
        compile(&policy, &spec, &CompileContext::default()).expect("compiles")
    }

    #[test]
    fn network_modes_need_a_namespace_of_their_own_and_never_netstack() {
        use safehouse_runsc_config::NetworkMode as M;
        let path = PathBuf::from("/var/run/netns/pod");
        let ns = SpecNetns::Path(path.clone());
        for mode in ["allowlist", "open"] {
            let c = compiled(mode);
            let flags = network_flags(&env(M::Auto), &c, &ns).expect("host in its netns");
            assert_eq!(
                (flags.network, flags.netns.clone()),
                (NetworkMode::Host, Some(path.clone()))
            );
            // nerdctl's shape: a new namespace without a path is the container's own.
            let flags = network_flags(&env(M::Auto), &c, &SpecNetns::New).expect("new netns");
            assert_eq!((flags.network, flags.netns), (NetworkMode::Host, None));
            let err = network_flags(&env(M::Auto), &c, &SpecNetns::Shared).expect_err("no netns");
            assert!(
                err.to_string().contains(&format!(
                    "network.mode {mode} needs a container with a network namespace of its own"
                )),
                "{err}"
            );
            let err = network_flags(&env(M::Sandbox), &c, &ns).expect_err("netstack");
            assert!(err.to_string().contains("bypasses"), "{err}");
            // An operator's `network = "none"` is stricter than the policy: loopback only.
            let flags = network_flags(&env(M::None), &c, &ns).expect("none");
            assert_eq!((flags.network, flags.netns), (NetworkMode::None, None));
        }
        let flags = network_flags(&env(M::Auto), &compiled("none"), &ns).expect("none");
        assert_eq!(flags.network, NetworkMode::None);
    }

    #[test]
    fn an_exec_gets_the_containers_confined_user_and_capabilities() {
        let container = json!({
            "args": ["sleep", "1000"], "user": {"uid": 1234, "gid": 1234},
            "noNewPrivileges": true, "capabilities": {"bounding": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
        });
        let exec = json!({
            "args": ["sh"], "env": ["A=1"], "cwd": "/work", "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_SYS_ADMIN"]},
            "apparmorProfile": "unconfined"
        });
        let out = confine_exec(&container, &exec);
        assert_eq!(out["user"]["uid"], 1234);
        assert_eq!(out["capabilities"]["bounding"], json!([]));
        assert_eq!(out["noNewPrivileges"], true);
        assert_eq!(out["rlimits"][0]["hard"], 1024);
        assert!(out.get("apparmorProfile").is_none());
        assert_eq!(out["args"], json!(["sh"]));
        assert_eq!(out["env"], json!(["A=1"]));
        assert_eq!(out["cwd"], "/work");
        assert_eq!(out["terminal"], true);
    }

    #[test]
    fn an_exec_under_tools_brings_no_loader_variables_of_its_own() {
        let container =
            json!({"args": ["sleep", "1"], "env": ["PATH=/bin", "LD_LIBRARY_PATH=/opt/lib"]});
        let same = json!({"args": ["sh"], "env": ["LD_LIBRARY_PATH=/opt/lib", "A=1"]});
        check_exec_loader_env("agent", &container, &same).expect("the container's own value");
        let none = json!({"args": ["sh"]});
        check_exec_loader_env("agent", &container, &none).expect("none at all");
        for env in [
            json!(["LD_PRELOAD=/tmp/x.so"]),
            json!(["LD_LIBRARY_PATH=/tmp"]),
            json!(["GCONV_PATH=/output"]),
        ] {
            let exec = json!({"args": ["sh"], "env": env});
            let err = check_exec_loader_env("agent", &container, &exec).expect_err("refused");
            let name = env[0].as_str().unwrap().split('=').next().unwrap();
            assert_eq!(err.code(), Code::INVALID_ARGUMENT);
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("process.env ({name})")) && msg.contains("policy \"agent\""),
                "{msg}"
            );
        }
    }

    #[test]
    fn trusts_the_bundle_containerds_state_and_the_configured_sources() {
        let section = PolicySection {
            cri_sources: vec![PathBuf::from("/srv/containerd-root")],
            ..Default::default()
        };
        let ctx = compile_context(
            &section,
            Path::new("/tmp/x/state/io.containerd.runtime.v2.task/k8s.io/abc"),
        );
        assert!(ctx
            .cri_source_roots
            .contains(&PathBuf::from("/tmp/x/state")));
        assert!(ctx
            .cri_source_roots
            .contains(&PathBuf::from("/srv/containerd-root")));
        assert!(ctx
            .cri_source_roots
            .contains(&PathBuf::from("/run/containerd")));
        // A bundle elsewhere adds nothing of its own.
        let ctx = compile_context(&PolicySection::default(), Path::new("/tmp/bundles/abc"));
        assert_eq!(ctx, CompileContext::default());
    }

    #[test]
    fn confines_a_ctr_spec_and_refuses_a_host_mount() {
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "capabilities": {"bounding": ["CAP_SYS_ADMIN"], "effective": ["CAP_SYS_ADMIN"], "permitted": ["CAP_SYS_ADMIN"]}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]}
        });
        let path = Path::new("/b/config.json");
        let compiled = compile_spec(
            &AgentPolicy::strict_default(),
            &CompileContext::default(),
            &spec,
            path,
        )
        .expect("confined");
        let written = serde_json::to_value(&compiled.spec).expect("json");
        assert_eq!(written["root"]["readonly"], true);
        assert_ne!(
            written["process"]["user"]["uid"], 0,
            "strict default is not root"
        );
        assert_eq!(
            written["annotations"]["safehouse.dev/policy"],
            compiled.name.as_str()
        );
        assert!(!allows_network(&compiled));

        let mut bad = spec.clone();
        bad["mounts"] = json!([{"destination": "/host", "source": "/etc", "type": "bind", "options": ["rbind"]}]);
        let err = compile_spec(
            &AgentPolicy::strict_default(),
            &CompileContext::default(),
            &bad,
            path,
        )
        .expect_err("host mount refused");
        assert!(err.to_string().contains("/host"), "{err}");
    }
}
