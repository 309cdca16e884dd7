//! Policies through CRI: a pod annotation `safehouse.dev/policy` selects the pod's policy from
//! the runtime config's policy directory, and a pod whose policy cannot be applied fails
//! RunPodSandbox (or CreateContainer) at once with an error naming the cause.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
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
/// policy has none: the container's execs are checked against its own tools (busybox run as
/// `cat`), its violation carries its own id and policy, and the pod's other container runs
/// cat freely.
pub fn member_tools_are_enforced_under_its_own_policy(env: &CriEnv) -> Result<()> {
    let policy = env.unique("cri-tools").to_lowercase();
    let text = format!(
        "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {policy}\n  \
         description: CRI per-container tools\nspec:\n  filesystem: {{rootfs: read-write}}\n  \
         process: {{user: \"0:0\", noNewPrivileges: false, tools: [/bin/sh, /bin/sleep]}}\n  \
         audit: {{record: [], onViolation: record}}\n"
    );
    let path = env.containerd.policy_dir().join(format!("{policy}.yaml"));
    fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    let name = env.unique("membertools");
    let pod = env.pod_config(&name, &[]);
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
        Ok(vec![tooled_id, free_id])
    })?;
    Ok(())
}
