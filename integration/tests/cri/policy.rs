//! Policies through CRI: a pod annotation `safehouse.dev/policy` selects the pod's policy from
//! the runtime config's policy directory, and a pod whose policy cannot be applied fails
//! RunPodSandbox (or CreateContainer) at once with an error naming the cause.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use k8s_cri::v1 as cri;
use safehouse_integration::cri_env::CriEnv;
use safehouse_integration::host::processes;

use crate::pods::HANDLER;

const ANNOTATION: &str = "safehouse.dev/policy";
/// A selectable policy clearly unlike the harness's open default (root, writable rootfs).
const LOCKED: &str = "cri-locked";
const LOCKED_POLICY: &str = "\
apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: cri-locked
  description: CRI integration test; selected by pod annotation.
spec:
  filesystem:
    rootfs: read-only
    scratch:
      - {path: /tmp, size: 64Mi}
  network:
    mode: none
  process:
    user: \"1234:1234\"
    noNewPrivileges: true
  resources:
    memory: 256Mi
    cpus: 1
    pids: 128
    nofile: 1024
";

fn install_policies(env: &CriEnv) -> Result<()> {
    let dir = env.containerd.policy_dir();
    fs::write(dir.join(format!("{LOCKED}.yaml")), LOCKED_POLICY)?;
    // Not a policy at all: selecting it must fail, naming the file.
    fs::write(dir.join("cri-broken.yaml"), "apiVersion: [unterminated\n")?;
    Ok(())
}

/// A pod annotated `safehouse.dev/policy: cri-locked` runs its containers as that policy's
/// user on a read-only rootfs; an unannotated pod in the same run gets the default (root,
/// writable).
pub fn annotation_selects_policy(env: &CriEnv) -> Result<()> {
    install_policies(env)?;
    let probe = "id -u; if touch /probe 2>/dev/null; then echo writable; else echo read-only; fi";
    let run = |annotations: &[(&str, &str)], label: &str| -> Result<String> {
        let name = env.unique(label);
        let pod = env.pod_config(&name, annotations);
        let mut seen = String::new();
        env.with_pod(&pod, HANDLER, |pod_id| {
            let id = env.cri.create_and_start(
                pod_id,
                &pod,
                &env.container_config("app", &["sleep", "1000"]),
            )?;
            let out = env.cri.exec_sync(&id, &["sh", "-c", probe], 10)?;
            seen = out.stdout.clone();
            Ok(vec![id])
        })?;
        Ok(seen)
    };
    let locked = run(&[(ANNOTATION, LOCKED)], "locked")?;
    ensure!(
        locked == "1234\nread-only\n",
        "pod annotated {ANNOTATION}={LOCKED}: container saw {locked:?}, expected uid 1234 and a read-only rootfs"
    );
    let default = run(&[], "default")?;
    ensure!(
        default == "0\nwritable\n",
        "unannotated pod: container saw {default:?}, expected the open default (uid 0, writable)"
    );
    Ok(())
}

/// Pods whose policy cannot be applied: a name with no file, a file that is not a policy. Each
/// RunPodSandbox fails quickly with an error naming the cause, and leaves no sandbox process
/// or pod behind. A container annotation naming a missing policy fails CreateContainer the
/// same way in a pod that runs.
pub fn unusable_policy_fails(env: &CriEnv) -> Result<()> {
    install_policies(env)?;
    for (policy, cause) in [
        ("cri-missing", "no policy cri-missing.yaml"),
        ("cri-broken", "cri-broken.yaml"),
        ("Not_A_Name", "not a policy name"),
    ] {
        let name = env.unique("refused");
        let pod = env.pod_config(&name, &[(ANNOTATION, policy)]);
        let started = Instant::now();
        let result = env.cri.run_pod(&pod, HANDLER);
        let took = started.elapsed();
        let err = match result {
            Ok(id) => {
                let _ = env.cri.stop_and_remove_pod(&id);
                anyhow::bail!("RunPodSandbox with {ANNOTATION}={policy} succeeded (pod {id})");
            }
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains(cause),
            "RunPodSandbox with {ANNOTATION}={policy}: the error does not name the cause ({cause:?}): {err}"
        );
        ensure!(
            took < Duration::from_secs(30),
            "RunPodSandbox with {ANNOTATION}={policy} took {took:?} to fail"
        );
        // Nothing of the refused pod: CRI does not list it, no process mentions its name.
        let listed = env.cri.pod_ids()?;
        for id in &listed {
            let status = env.cri.pod_status(id)?;
            let pod_name = status
                .status
                .and_then(|s| s.metadata)
                .map(|m| m.name)
                .unwrap_or_default();
            ensure!(
                pod_name != name,
                "refused pod {name} is still listed as {id}"
            );
        }
        let strays: Vec<String> = processes()
            .into_iter()
            .filter(|p| p.argv.iter().any(|a| a.contains(&name)))
            .map(|p| p.command_line())
            .collect();
        ensure!(
            strays.is_empty(),
            "processes of the refused pod: {strays:?}"
        );
    }

    // In a pod that runs, a container-level annotation naming a missing policy.
    let name = env.unique("refused-container");
    let pod = env.pod_config(&name, &[]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let mut config = env.container_config("app", &["sleep", "1000"]);
        config
            .annotations
            .insert(ANNOTATION.to_string(), "cri-missing".to_string());
        // CRI creates the task (the shim's Create, where the policy is applied) at
        // StartContainer: that is the call that must fail, as kubelet's RunContainerError.
        let refused = env.cri.create_container(pod_id, &pod, &config)?;
        let started = Instant::now();
        let result = env.cri.start_container(&refused);
        let took = started.elapsed();
        let _ = env.cri.remove_container(&refused);
        let err = match result {
            Ok(()) => anyhow::bail!("StartContainer with a missing policy succeeded ({refused})"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains("no policy cri-missing.yaml"),
            "StartContainer error does not name the cause: {err}"
        );
        ensure!(
            took < Duration::from_secs(30),
            "StartContainer took {took:?} to fail"
        );
        // The pod itself still works.
        let id = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("ok", &["sleep", "1000"]),
        )?;
        let out = env.cri.exec_sync(&id, &["echo", "still-fine"], 10)?;
        ensure!(out.stdout == "still-fine\n", "{out:?}");
        Ok(vec![id, refused])
    })
}

/// A container policy with `tools` (selected by a container annotation) in a pod whose own
/// policy has none and records nothing: the container's execs are checked against its own tools (busybox run as
/// `cat`), its violation carries its own id and policy, and the pod's other container runs
/// cat freely.
pub fn member_tools_are_enforced_under_its_own_policy(env: &CriEnv) -> Result<()> {
    let policy = write_policy(
        env,
        "cri-tools",
        "filesystem: {rootfs: read-write}\n  \
         process: {user: \"0:0\", noNewPrivileges: false, tools: [/bin/sh, /bin/sleep]}\n  \
         audit: {record: [], onViolation: record}",
    )?;
    // The pod's own policy records nothing: the member's tools still need its execs, so the
    // sandbox's trace session must report them anyway.
    let quiet = write_policy(
        env,
        "cri-quiet",
        "filesystem: {rootfs: read-write}\n  \
         process: {user: \"0:0\", noNewPrivileges: false}\n  \
         audit: {record: [], onViolation: record}",
    )?;
    let name = env.unique("membertools");
    let pod = env.pod_config(&name, &[(ANNOTATION, quiet.as_str())]);
    let audit = env.containerd.audit_path();
    env.with_pod(&pod, HANDLER, |pod_id| {
        let mut tooled = env.container_config("tooled", &["sleep", "1000"]);
        tooled.annotations.insert(ANNOTATION.into(), policy.clone());
        let free = env.container_config("free", &["sleep", "1000"]);
        let tooled_id = env.cri.create_and_start(pod_id, &pod, &tooled)?;
        let free_id = env.cri.create_and_start(pod_id, &pod, &free)?;
        let seen = |id: &str| -> Vec<serde_json::Value> {
            safehouse_integration::lab::audit_lines(&audit)
                .into_iter()
                .filter(|e| e["container_id"] == id && e["action"] == "violation")
                .collect()
        };
        env.cri
            .exec_sync(&free_id, &["/bin/sh", "-c", "/bin/cat /etc/hostname"], 10)?;
        // The mounts refuse an unlisted file outright; the listed busybox under another
        // name (exec -a) is what only the stream can tell.
        env.cri.exec_sync(
            &tooled_id,
            &["/bin/sh", "-c", "(exec -a cat /bin/sh /etc/hostname)"],
            10,
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let violation = loop {
            if let Some(v) = seen(&tooled_id).into_iter().next() {
                break v;
            }
            ensure!(
                Instant::now() < deadline,
                "no violation for the tooled container {tooled_id} in {}",
                audit.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        ensure!(
            violation["policy"]["name"] == policy.as_str()
                && violation["violation"]["rule"] == "process.tools"
                && violation["violation"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("cat")),
            "the violation is the tooled container's cat, under its own policy: {}",
            violation["violation"]
        );
        ensure!(
            seen(&free_id).is_empty(),
            "the pod's other container has no tools: no violation for it"
        );
        ensure!(
            safehouse_integration::lab::audit_lines(&audit)
                .iter()
                .any(|e| {
                    e["container_id"] == pod_id
                        && e["action"] == "create"
                        && e["policy"]["name"] == quiet.as_str()
                }),
            "the pod's sandbox runs under the policy recording nothing"
        );
        // `onViolation: record`: the violation is written after a kill would have been sent,
        // so by now a killed sandbox would be on its way down. The container still serves an
        // exec (a shell builtin: nothing else runs) and CRI reports it running.
        let out = env
            .cri
            .exec_sync(&tooled_id, &["/bin/sh", "-c", "echo alive"], 10)
            .context("exec in the tooled container after its recorded violation")?;
        ensure!(
            out.exit_code == 0 && out.stdout == "alive\n",
            "exec in the tooled container after its recorded violation: {out:?}"
        );
        let status = env
            .cri
            .container_status(&tooled_id)?
            .status
            .context("ContainerStatus of the tooled container: no status")?;
        ensure!(
            status.state == cri::ContainerState::ContainerRunning as i32,
            "the tooled container did not survive its recorded violation: {status:?}"
        );
        Ok(vec![tooled_id, free_id])
    })?;
    Ok(())
}

/// A pod spec's `env` is the tenant's: under a container policy with `tools`, one that sets
/// `LD_PRELOAD` would make every listed dynamic tool load what the agent later writes there. It
/// is refused at StartContainer (where CRI creates the task) naming the variable, the field
/// and the policy; the refusal is a `policy`/`violation` (`enforcement: refused`) in the pod's
/// chain, and the pod runs on.
pub fn pod_env_loader_variables_are_refused_under_tools(env: &CriEnv) -> Result<()> {
    let policy = write_policy(
        env,
        "cri-envtools",
        "process: {tools: [/bin/sh, /bin/sleep]}",
    )?;
    let name = env.unique("envtools");
    let pod = env.pod_config(&name, &[]);
    let audit = env.containerd.audit_path();
    env.with_pod(&pod, HANDLER, |pod_id| {
        let mut config = env.container_config("preload", &["sleep", "1000"]);
        config.annotations.insert(ANNOTATION.into(), policy.clone());
        config.envs.push(cri::KeyValue {
            key: "LD_PRELOAD".into(),
            value: "/tmp/payload.so".into(),
        });
        let (refused, err) = refused_start(env, pod_id, &pod, &config)?;
        ensure!(
            err.contains("LD_PRELOAD") && err.contains("process.env") && err.contains(&policy),
            "the refusal names the variable, the field and the policy: {err}"
        );
        let recorded = safehouse_integration::lab::audit_lines(&audit)
            .into_iter()
            .find(|e| e["container_id"] == refused.as_str() && e["action"] == "violation");
        ensure!(
            recorded
                .as_ref()
                .is_some_and(|e| e["violation"]["enforcement"] == "refused"
                    && e["sandbox_id"] == pod_id
                    && e["violation"]["rule"]
                        .as_str()
                        .is_some_and(|r| r.contains("LD_PRELOAD"))),
            "the refusal in the pod's audit chain: {recorded:?}"
        );
        let id = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("ok", &["sleep", "1000"]),
        )?;
        Ok(vec![id, refused])
    })
}

/// Writes a policy named `prefix` made unique, with `spec` (YAML, indented as a key of
/// `spec:`), into the CRI harness's policy directory; returns its name.
fn write_policy(env: &CriEnv, prefix: &str, spec: &str) -> Result<String> {
    let name = env.unique(prefix).to_lowercase();
    let text = format!(
        "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {name}\n  \
         description: CRI integration test\nspec:\n  {spec}\n"
    );
    let path = env.containerd.policy_dir().join(format!("{name}.yaml"));
    fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(name)
}

/// CreateContainer, then a StartContainer that must fail (CRI creates the task, where the
/// policy is applied, at StartContainer); removes the container and returns its id and the
/// error.
fn refused_start(
    env: &CriEnv,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    config: &cri::ContainerConfig,
) -> Result<(String, String)> {
    let id = env.cri.create_container(pod_id, pod, config)?;
    let result = env.cri.start_container(&id);
    let _ = env.cri.remove_container(&id);
    match result {
        Ok(()) => anyhow::bail!("StartContainer of {id} succeeded where it must be refused"),
        Err(e) => Ok((id, format!("{e:#}"))),
    }
}

/// A policy that lets the pod's own non-root identity stand and keeps at most two
/// capabilities.
const NONROOT_POLICY: &str = "\
apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: cri-nonroot
  description: CRI integration test; the pod's securityContext inside the bound.
spec:
  filesystem:
    rootfs: read-write
  process:
    user: nonroot
    capabilities: [CAP_NET_BIND_SERVICE, CAP_KILL]
";

/// `/proc/self/status` capability lines of an exec in `id`, by name.
fn cap_lines(env: &CriEnv, id: &str) -> Result<Vec<(String, String)>> {
    let out = env.cri.exec_sync(
        id,
        &[
            "sh",
            "-c",
            "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status",
        ],
        10,
    )?;
    let lines: Vec<(String, String)> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    ensure!(
        lines.len() >= 4,
        "capability lines of {id}: {:?}",
        out.stdout
    );
    Ok(lines)
}

/// The pod's securityContext stands inside the policy's bound (issue #14): under a `nonroot`
/// policy runAsUser/runAsGroup/supplementalGroups are exactly what the container sees;
/// `drop: [ALL]` leaves every capability set empty although the policy keeps two; `add:
/// [SYS_ADMIN]` is narrowed to what the policy keeps (the bounding set is the policy's two, out
/// of CRI's default set); a container with no runAsUser (image root) runs as 65534; and a fixed
/// policy user refuses another identity, naming the field and the policy.
pub fn security_context_within_policy(env: &CriEnv) -> Result<()> {
    install_policies(env)?;
    fs::write(
        env.containerd.policy_dir().join("cri-nonroot.yaml"),
        NONROOT_POLICY,
    )?;
    let name = env.unique("secctx");
    let pod = env.pod_config(&name, &[(ANNOTATION, "cri-nonroot")]);
    let with = |name: &str, edit: &dyn Fn(&mut k8s_cri::v1::LinuxContainerSecurityContext)| {
        let mut config = env.container_config(name, &["sleep", "1000"]);
        let mut sc = k8s_cri::v1::LinuxContainerSecurityContext::default();
        edit(&mut sc);
        config.linux = Some(k8s_cri::v1::LinuxContainerConfig {
            security_context: Some(sc),
            ..Default::default()
        });
        config
    };
    let caps = |add: &[&str], drop: &[&str]| k8s_cri::v1::Capability {
        add_capabilities: add.iter().map(|s| s.to_string()).collect(),
        drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    env.with_pod(&pod, HANDLER, |pod_id| {
        let mut ids = Vec::new();

        let own = env.cri.create_and_start(
            pod_id,
            &pod,
            &with("ids", &|sc| {
                sc.run_as_user = Some(k8s_cri::v1::Int64Value { value: 1001 });
                sc.run_as_group = Some(k8s_cri::v1::Int64Value { value: 1002 });
                sc.supplemental_groups = vec![1234];
            }),
        )?;
        ids.push(own.clone());
        let out = env.cri.exec_sync(&own, &["sh", "-c", "id -u; id -g; id -G"], 10)?;
        let lines: Vec<&str> = out.stdout.lines().collect();
        let mut groups: Vec<&str> = lines.get(2).map(|l| l.split_whitespace().collect()).unwrap_or_default();
        groups.sort();
        ensure!(
            lines.first() == Some(&"1001") && lines.get(1) == Some(&"1002") && groups == ["1002", "1234"],
            "runAsUser 1001, runAsGroup 1002, supplementalGroups [1234] under a nonroot policy: the container saw {:?}",
            out.stdout
        );

        let dropped = env.cri.create_and_start(
            pod_id,
            &pod,
            &with("dropall", &|sc| {
                sc.run_as_user = Some(k8s_cri::v1::Int64Value { value: 1001 });
                sc.capabilities = Some(caps(&[], &["ALL"]));
            }),
        )?;
        ids.push(dropped.clone());
        for (k, v) in cap_lines(env, &dropped)? {
            ensure!(
                v.chars().all(|c| c == '0'),
                "drop: [ALL] under a policy keeping two capabilities: {k} is {v}, expected none"
            );
        }

        let added = env.cri.create_and_start(
            pod_id,
            &pod,
            &with("addadmin", &|sc| {
                sc.capabilities = Some(caps(&["SYS_ADMIN"], &[]));
            }),
        )?;
        ids.push(added.clone());
        let lines = cap_lines(env, &added)?;
        let bnd = lines
            .iter()
            .find(|(k, _)| k == "CapBnd")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        // CAP_KILL is bit 5, CAP_NET_BIND_SERVICE bit 10; CAP_SYS_ADMIN (bit 21) is narrowed.
        ensure!(
            u64::from_str_radix(bnd, 16).ok() == Some((1 << 5) | (1 << 10)),
            "add: [SYS_ADMIN] under a policy keeping NET_BIND_SERVICE and KILL: CapBnd is {bnd:?}, expected 0000000000000420"
        );
        let uid = env.cri.exec_sync(&added, &["id", "-u"], 10)?;
        ensure!(
            uid.stdout == "65534\n",
            "no runAsUser (the image's root) under nonroot: uid {:?}, expected 65534",
            uid.stdout
        );

        // A fixed policy user refuses another identity (at StartContainer, where CRI creates the
        // task), naming the field and the policy.
        let mut other = with("other", &|sc| {
            sc.run_as_user = Some(k8s_cri::v1::Int64Value { value: 1001 });
        });
        other
            .annotations
            .insert(ANNOTATION.to_string(), LOCKED.to_string());
        let refused = env.cri.create_container(pod_id, &pod, &other)?;
        ids.push(refused.clone());
        let result = env.cri.start_container(&refused);
        let _ = env.cri.remove_container(&refused);
        let err = match result {
            Ok(()) => anyhow::bail!("runAsUser 1001 under the fixed user 1234:1234 of {LOCKED} started"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            err.contains("process.user") && err.contains(LOCKED) && err.contains("uid 1001"),
            "the refusal does not name the field, the policy and the uid: {err}"
        );
        Ok(ids)
    })
}

/// An image that needs its own user (`USER 101:101`, as nginx's does) and serves on its port:
/// under a `nonroot` policy it runs as 101 (its own user stands) and serves a file only 101
/// can read to another container of the pod; under the fixed user of `cri-locked` it is
/// refused at StartContainer naming `process.user`, the policy and uid 101, instead of being
/// run as another user and exiting at once.
pub fn own_user_image_serves_within_policy(env: &CriEnv) -> Result<()> {
    install_policies(env)?;
    fs::write(
        env.containerd.policy_dir().join("cri-nonroot.yaml"),
        NONROOT_POLICY,
    )?;
    let label = env.unique("ownuser");
    let scratch = env.containerd.work_dir().join(&label);
    fs::create_dir_all(&scratch)?;
    let image = safehouse_integration::image::import_busybox_as_user(
        &env.containerd.ctr_binary(),
        &env.containerd.address(),
        safehouse_integration::cri_env::CRI_NAMESPACE,
        &scratch,
        &safehouse_integration::image::OwnUserImage {
            name: &label.to_lowercase(),
            user: (101, 101),
            cmd: &["httpd", "-f", "-p", "8080", "-h", "/www"],
            owned: &[("/www/secret", "only-101-reads-this\n")],
        },
    )?;
    safehouse_integration::command::wait_for(
        "CRI to list the image",
        Duration::from_secs(30),
        || Ok(env.cri.has_image(&image)?.then_some(())),
    )?;
    let own_image = |name: &str| {
        let mut config = env.container_config(name, &[]);
        config.image = Some(k8s_cri::v1::ImageSpec {
            image: image.clone(),
            ..Default::default()
        });
        config
    };
    let pod_name = env.unique("ownuserpod");
    let pod = env.pod_config(&pod_name, &[(ANNOTATION, "cri-nonroot")]);
    env.with_pod(&pod, HANDLER, |pod_id| {
        let server = env
            .cri
            .create_and_start(pod_id, &pod, &own_image("server"))?;
        let client = env.cri.create_and_start(
            pod_id,
            &pod,
            &env.container_config("client", &["sleep", "1000"]),
        )?;
        let ids = vec![server.clone(), client.clone()];
        let uid = env.cri.exec_sync(&server, &["id", "-u"], 10)?;
        ensure!(
            uid.stdout == "101\n",
            "the image's own user under a nonroot policy: uid {:?}, expected 101",
            uid.stdout
        );
        let mut last = String::new();
        let served = safehouse_integration::command::wait_for(
            "the image's server to answer on its port",
            Duration::from_secs(20),
            || {
                let out = env.cri.exec_sync(
                    &client,
                    &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/secret"],
                    10,
                )?;
                last = format!("{out:?}");
                Ok((out.stdout == "only-101-reads-this\n").then_some(()))
            },
        );
        ensure!(
            served.is_ok(),
            "the server (uid 101) should serve its 0400 file to the pod's other container: {last}"
        );

        // The same image under a fixed user: refused, not replaced.
        let mut locked = own_image("locked");
        locked
            .annotations
            .insert(ANNOTATION.to_string(), LOCKED.to_string());
        let (refused, err) = refused_start(env, pod_id, &pod, &locked)?;
        ensure!(
            err.contains("process.user") && err.contains(LOCKED) && err.contains("uid 101"),
            "the refusal does not name the field, the policy and the uid: {err}"
        );
        let mut all = ids;
        all.push(refused);
        Ok(all)
    })
}
