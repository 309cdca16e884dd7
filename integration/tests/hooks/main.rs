//! OCI hooks through the real containerd, `ctr run --config` and runsc: a spec with every hook
//! kind pointing at a recorder script (each call leaves a file with its kind, argv, network
//! namespaces and the state JSON it read), then assertions on order, count, state and what a
//! failing hook does. `ctr` cannot add hooks from its command line, so each scenario writes the
//! whole spec (from `ctr oci spec`) with a rootfs directory of its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use safehouse_integration::env::LEAK_GRACE;
use safehouse_integration::suite::only_for;
use safehouse_integration::{RuntimeKind, Scenario, TestEnv};
use serde_json::{json, Value};

fn main() -> ExitCode {
    safehouse_integration::suite::main(&[
        Scenario {
            name: "hooks::every_kind_once_in_order",
            run: every_kind_once_in_order,
        },
        Scenario {
            name: "hooks::joining_a_pod_sandbox",
            run: joining_a_pod_sandbox,
        },
        Scenario {
            name: "hooks::failing_create_container_fails_create",
            run: failing_create_container_fails_create,
        },
        Scenario {
            name: "hooks::failing_start_container_fails_start",
            run: failing_start_container_fails_start,
        },
        Scenario {
            name: "hooks::timeout_is_honoured",
            run: timeout_is_honoured,
        },
        Scenario {
            name: "hooks::hook_from_the_image_is_refused",
            run: hook_from_the_image_is_refused,
        },
    ])
}

/// The recorder: one file per call in `$1` named by a nanosecond clock; `HOOK_FAIL` makes it
/// fail, `HOOK_SLEEP` makes it sleep first.
const RECORDER: &str = r#"#!/bin/sh
kind=$1; log=$2
state=$(cat)
pid=$(echo "$state" | sed -n 's/.*"pid": *\(-\{0,1\}[0-9]*\).*/\1/p')
n=$(date +%s%N)
{
  echo "kind=$kind"
  echo "argc=$#"
  echo "mark=$HOOK_MARK"
  echo "self_netns=$(readlink /proc/self/ns/net)"
  echo "pid_netns=$(readlink /proc/$pid/ns/net 2>/dev/null)"
  echo "state=$state"
} > "$log/$n-$kind"
if [ -n "$HOOK_SLEEP" ]; then sleep "$HOOK_SLEEP"; fi
if [ -n "$HOOK_FAIL" ]; then echo "recorder: $kind refuses" >&2; exit 3; fi
exit 0
"#;

const KINDS: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// One recorded hook call.
#[derive(Debug)]
struct Call {
    kind: String,
    argc: String,
    mark: String,
    self_netns: String,
    pid_netns: String,
    state: Value,
}

struct Lab {
    dir: PathBuf,
    log: PathBuf,
    recorder: PathBuf,
    rootfs: PathBuf,
}

impl Lab {
    fn new(env: &TestEnv, name: &str) -> Result<Lab> {
        let dir = env.scratch(&format!("hooks-{name}"))?;
        let log = dir.join("log");
        let rootfs = dir.join("rootfs");
        let hooks = dir.join("hooks");
        for d in [&log, &rootfs, &hooks] {
            fs::create_dir_all(d)?;
        }
        safehouse_integration::image::populate_rootfs(&rootfs)?;
        let recorder = hooks.join("record.sh");
        safehouse_integration::host::write_executable(&recorder, RECORDER)?;
        Ok(Lab {
            dir,
            log,
            recorder,
            rootfs,
        })
    }

    /// A hook entry calling the recorder for `kind`, with extra env.
    fn hook(&self, kind: &str, extra_env: &[&str]) -> Value {
        let mut env = vec![
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            format!("HOOK_MARK=mark-{kind}"),
        ];
        env.extend(extra_env.iter().map(|s| s.to_string()));
        json!({
            "path": self.recorder,
            "args": ["record.sh", kind, self.log],
            "env": env,
        })
    }

    /// `ctr oci spec` with our rootfs, `args`, and `hooks`; written to the lab dir.
    fn spec(&self, env: &TestEnv, args: &[&str], hooks: Value) -> Result<PathBuf> {
        self.spec_named(env, "config.json", args, hooks, json!({}))
    }

    /// Like [`Lab::spec`], written to `name`, with `annotations`.
    fn spec_named(
        &self,
        env: &TestEnv,
        name: &str,
        args: &[&str],
        hooks: Value,
        annotations: Value,
    ) -> Result<PathBuf> {
        let out = env.ctr.run(&["oci", "spec"])?.ok()?;
        let mut spec: Value = serde_json::from_str(&out.stdout).context("ctr oci spec")?;
        spec["root"] = json!({"path": self.rootfs, "readonly": false});
        spec["process"]["args"] = json!(args);
        spec["process"]["terminal"] = json!(false);
        spec["process"]["env"] = json!(["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
        spec["hooks"] = hooks;
        spec["annotations"] = annotations;
        let path = self.dir.join(name);
        fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
        Ok(path)
    }

    fn every_kind(&self, failing: Option<&str>) -> Value {
        let mut hooks = serde_json::Map::new();
        for kind in KINDS {
            let extra: &[&str] = if Some(kind) == failing {
                &["HOOK_FAIL=1"]
            } else {
                &[]
            };
            hooks.insert(kind.into(), json!([self.hook(kind, extra)]));
        }
        Value::Object(hooks)
    }

    /// The calls recorded so far, in the order they happened.
    fn calls(&self) -> Result<Vec<Call>> {
        let mut names: Vec<String> = fs::read_dir(&self.log)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort_by_key(|n| {
            n.split('-')
                .next()
                .and_then(|t| t.parse::<u128>().ok())
                .unwrap_or(0)
        });
        names
            .iter()
            .map(|n| {
                let text = fs::read_to_string(self.log.join(n))?;
                let field = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k}=")))
                        .unwrap_or("")
                        .to_string()
                };
                Ok(Call {
                    kind: field("kind"),
                    argc: field("argc"),
                    mark: field("mark"),
                    self_netns: field("self_netns"),
                    pid_netns: field("pid_netns"),
                    state: serde_json::from_str(&field("state"))
                        .with_context(|| format!("state JSON of {n}: {text}"))?,
                })
            })
            .collect()
    }

    fn kinds(&self) -> Result<Vec<String>> {
        Ok(self.calls()?.into_iter().map(|c| c.kind).collect())
    }
}

fn run_config(
    env: &TestEnv,
    config: &Path,
    id: &str,
) -> Result<safehouse_integration::command::Output> {
    let mut argv = vec!["run".to_string(), "--rm".into(), "--config".into()];
    argv.push(config.display().to_string());
    argv.extend(env.runtime_args());
    argv.push(id.to_string());
    env.ctr.run(&argv)
}

/// Waits for `count` `lifecycle`/`hook` events of sandbox `id` in the audit file (in order).
fn hook_events(env: &TestEnv, id: &str, count: usize) -> Result<Vec<Value>> {
    let path = env.containerd.audit_path();
    let read = || -> Vec<Value> {
        safehouse_integration::lab::audit_lines(&path)
            .into_iter()
            .filter(|e| e["sandbox_id"] == id && e["action"] == "hook")
            .collect()
    };
    safehouse_integration::command::wait_for(
        "the hook runs in the audit stream",
        Duration::from_secs(10),
        || Ok(Some(read()).filter(|v| v.len() >= count)),
    )
    .with_context(|| format!("hook events of {id} in {}: {:?}", path.display(), read()))
}

fn host_netns() -> Result<String> {
    Ok(fs::read_link("/proc/self/ns/net")?.display().to_string())
}

/// Every kind runs exactly once, in the runtime spec's order, with the state the spec defines;
/// the two kinds runsc skips run in the sandbox's network namespace.
fn every_kind_once_in_order(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let id = env.id("hooks-all");
    let lab = Lab::new(env, "all")?;
    env.scenario(&[&id], || {
        let config = lab.spec(env, &["sh", "-c", "echo ran-inside"], lab.every_kind(None))?;
        let out = run_config(env, &config, &id)?;
        ensure!(out.success(), "ctr run: {}", out.describe());
        ensure!(
            out.stdout.contains("ran-inside"),
            "output: {}",
            out.describe()
        );
        let calls = lab.calls()?;
        let kinds: Vec<&str> = calls.iter().map(|c| c.kind.as_str()).collect();
        ensure!(
            kinds == KINDS,
            "hooks ran as {kinds:?}, want each once in order {KINDS:?}"
        );
        // The two hooks the shim ran are in the audit stream, with the recorder's path.
        let runs = hook_events(env, &id, 2)?;
        let audited: Vec<(&str, &str, bool)> = runs
            .iter()
            .map(|e| {
                (
                    e["detail"]["kind"].as_str().unwrap_or_default(),
                    e["detail"]["path"].as_str().unwrap_or_default(),
                    e["detail"]["ok"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        let recorder = lab.recorder.display().to_string();
        ensure!(
            audited
                == [
                    ("createContainer", recorder.as_str(), true),
                    ("startContainer", recorder.as_str(), true)
                ],
            "audited hook runs {audited:?}"
        );
        ensure!(
            runs.iter().all(|e| e["container_id"] == id.as_str()),
            "hook events of another container: {runs:?}"
        );
        let host = host_netns()?;
        let mut sandbox_pid = None;
        for c in &calls {
            ensure!(
                c.state["id"] == id.as_str(),
                "{}: state id {}",
                c.kind,
                c.state
            );
            ensure!(
                c.state["bundle"]
                    .as_str()
                    .is_some_and(|b| b.ends_with(&format!("/{id}"))),
                "{}: state bundle {}",
                c.kind,
                c.state
            );
            ensure!(
                c.argc == "2",
                "{}: argv lost its args (argc {})",
                c.kind,
                c.argc
            );
            ensure!(
                c.mark == format!("mark-{}", c.kind),
                "{}: env {:?}",
                c.kind,
                c.mark
            );
            let pid = c.state["pid"].as_i64().unwrap_or(0);
            if c.kind == "poststop" {
                ensure!(c.state["status"] == "stopped", "poststop state {}", c.state);
                continue;
            }
            ensure!(pid > 0, "{}: state pid {}", c.kind, c.state);
            ensure!(
                *sandbox_pid.get_or_insert(pid) == pid,
                "{}: pid {pid} is not the sandbox's",
                c.kind
            );
            ensure!(
                c.state["status"] == "created",
                "{}: status {}",
                c.kind,
                c.state
            );
            if c.kind == "createContainer" || c.kind == "startContainer" {
                ensure!(
                    c.self_netns == c.pid_netns && c.self_netns != host,
                    "{} ran in netns {} (sandbox {}, host {host})",
                    c.kind,
                    c.self_netns,
                    c.pid_netns
                );
            }
            if c.kind == "createRuntime" {
                ensure!(
                    c.self_netns == host,
                    "createRuntime ran in {}, want the runtime's {host}",
                    c.self_netns
                );
            }
        }
        Ok(())
    })
}

/// A container joining a pod sandbox (CRI annotations): its hooks run once each, in order,
/// and the two the shim runs see the pod sandbox's pid and network namespace.
fn joining_a_pod_sandbox(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let pod = env.id("hooks-pod");
    let member = env.id("hooks-member");
    // Two labs: each container needs a rootfs of its own.
    let pod_lab = Lab::new(env, "pod")?;
    let lab = Lab::new(env, "pod-member")?;
    env.scenario(&[&member, &pod], || {
        let sandbox = pod_lab.spec_named(
            env,
            "sandbox.json",
            &["sleep", "600"],
            json!({}),
            json!({"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": pod}),
        )?;
        let mut argv = vec!["run".to_string(), "-d".into(), "--config".into()];
        argv.push(sandbox.display().to_string());
        argv.extend(env.runtime_args());
        argv.push(pod.clone());
        env.ctr.run(&argv)?.ok()?;
        env.ctr.wait_status(&pod, "RUNNING", Duration::from_secs(30))?;
        let pod_pid = env.ctr.task(&pod)?.context("pod task")?.pid;
        let config = lab.spec_named(
            env,
            "member.json",
            &["sh", "-c", "echo member-ran; exit 7"],
            lab.every_kind(None),
            json!({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": pod}),
        )?;
        let out = run_config(env, &config, &member)?;
        // runsc gives a joining container the stdio of `runsc start`: the output must arrive.
        ensure!(
            out.code == Some(7) && out.stdout == "member-ran\n",
            "member: {}",
            out.describe()
        );
        let calls = lab.calls()?;
        let kinds: Vec<&str> = calls.iter().map(|c| c.kind.as_str()).collect();
        ensure!(kinds == KINDS, "member hooks ran as {kinds:?}");
        let pod_netns = fs::read_link(format!("/proc/{pod_pid}/ns/net"))?
            .display()
            .to_string();
        for c in calls.iter().filter(|c| c.kind == "createContainer" || c.kind == "startContainer") {
            ensure!(c.state["id"] == member.as_str(), "{}: state {}", c.kind, c.state);
            ensure!(
                c.state["pid"].as_u64() == Some(pod_pid as u64),
                "{}: pid {} is not the pod sandbox's {pod_pid}",
                c.kind,
                c.state
            );
            ensure!(
                c.self_netns == pod_netns,
                "{} ran in {}, the pod sandbox is in {pod_netns}",
                c.kind,
                c.self_netns
            );
        }
        env.ctr.run(&["task", "kill", "-s", "SIGKILL", &pod])?.ok()?;
        env.ctr.wait_status(&pod, "STOPPED", Duration::from_secs(30))?;
        env.ctr.run(&["task", "delete", &pod])?.ok()?;
        env.ctr.run(&["containers", "rm", &pod])?.ok()?;
        Ok(())
    })
}

/// A failing createContainer hook fails Create with its message; the sandbox is torn down
/// (poststop runs once, through runsc delete); nothing leaks; later hooks never run.
fn failing_create_container_fails_create(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let id = env.id("hooks-cc");
    let lab = Lab::new(env, "cc")?;
    env.scenario(&[&id], || {
        let config = lab.spec(env, &["true"], lab.every_kind(Some("createContainer")))?;
        let out = run_config(env, &config, &id)?;
        ensure!(
            !out.success(),
            "a failing createContainer hook must fail: {}",
            out.describe()
        );
        ensure!(!out.timed_out, "ctr run hung: {}", out.describe());
        ensure!(
            out.stderr.contains("createContainer hook")
                && out.stderr.contains("createContainer refuses"),
            "the error should name the hook and carry its stderr: {}",
            out.describe()
        );
        ensure!(
            env.ctr.task(&id)?.is_none(),
            "a task exists after the failed create"
        );
        let _ = env.ctr.run(&["containers", "rm", &id]);
        let kinds = lab.kinds()?;
        ensure!(
            kinds == ["prestart", "createRuntime", "createContainer", "poststop"],
            "hooks ran as {kinds:?}"
        );
        Ok(())
    })
}

/// A failing startContainer hook fails Start before the process runs (no poststart), and the
/// sandbox is released at once.
fn failing_start_container_fails_start(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let id = env.id("hooks-sc");
    let lab = Lab::new(env, "sc")?;
    env.scenario(&[&id], || {
        let config = lab.spec(
            env,
            &["sh", "-c", "echo should-not-run"],
            lab.every_kind(Some("startContainer")),
        )?;
        let out = run_config(env, &config, &id)?;
        ensure!(
            !out.success(),
            "a failing startContainer hook must fail: {}",
            out.describe()
        );
        ensure!(!out.timed_out, "ctr run hung: {}", out.describe());
        ensure!(
            out.stderr.contains("startContainer refuses"),
            "the error should carry the hook's stderr: {}",
            out.describe()
        );
        ensure!(
            !out.stdout.contains("should-not-run"),
            "the process ran: {}",
            out.describe()
        );
        // The failed hook is audited with its cause.
        let failed = hook_events(env, &id, 2)?;
        ensure!(
            failed[1]["detail"]["kind"] == "startContainer"
                && failed[1]["detail"]["ok"] == false
                && failed[1]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("startContainer refuses")),
            "the failed startContainer run in the audit: {failed:?}"
        );
        if env.ctr.task(&id)?.is_some() {
            env.ctr.run(&["task", "delete", &id])?.ok()?;
        }
        let _ = env.ctr.run(&["containers", "rm", &id]);
        env.leaks.assert_clean(&[&id], LEAK_GRACE)?;
        let kinds = lab.kinds()?;
        ensure!(
            kinds
                == [
                    "prestart",
                    "createRuntime",
                    "createContainer",
                    "startContainer",
                    "poststop"
                ],
            "hooks ran as {kinds:?}"
        );
        Ok(())
    })
}

/// A hook past its `timeout` is killed and fails Create, well before it would have finished.
fn timeout_is_honoured(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let id = env.id("hooks-slow");
    let lab = Lab::new(env, "slow")?;
    env.scenario(&[&id], || {
        let mut slow = lab.hook("createContainer", &["HOOK_SLEEP=60"]);
        slow["timeout"] = json!(1);
        let config = lab.spec(env, &["true"], json!({"createContainer": [slow]}))?;
        let started = Instant::now();
        let out = run_config(env, &config, &id)?;
        let took = started.elapsed();
        ensure!(
            !out.success(),
            "a hook past its timeout must fail: {}",
            out.describe()
        );
        ensure!(
            out.stderr.contains("timed out after 1s"),
            "error: {}",
            out.describe()
        );
        ensure!(
            took < Duration::from_secs(30),
            "create took {took:?}: the timeout was not applied"
        );
        let _ = env.ctr.run(&["containers", "rm", &id]);
        Ok(())
    })
}

/// A hook whose binary lies in the container's root filesystem is refused before anything
/// runs (the image must not choose what the host runs as root).
fn hook_from_the_image_is_refused(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let id = env.id("hooks-img");
    let lab = Lab::new(env, "img")?;
    env.scenario(&[&id], || {
        let planted = lab.rootfs.join("bin/planted-hook");
        fs::copy(&lab.recorder, &planted)?;
        let mut evil = lab.hook("createRuntime", &[]);
        evil["path"] = json!(planted);
        let config = lab.spec(env, &["true"], json!({"createRuntime": [evil]}))?;
        let out = run_config(env, &config, &id)?;
        ensure!(
            !out.success(),
            "a hook from the rootfs must be refused: {}",
            out.describe()
        );
        ensure!(
            out.stderr.contains("never the image's"),
            "the error should say why: {}",
            out.describe()
        );
        ensure!(
            lab.kinds()?.is_empty(),
            "the planted hook ran: {:?}",
            lab.kinds()?
        );
        let _ = env.ctr.run(&["containers", "rm", &id]);
        Ok(())
    })
}
