//! The Task calls against a runsc double: what each path leaves behind, above all the failed
//! ones. No root, no runsc, no containerd.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api;
use containerd_shim_protos::ttrpc::Code;
use serde_json::{json, Value};

use super::TaskService;
use crate::audit::AuditOutput;
use crate::bundle::{CONFIG, POD_INIT_CONFIG, STATE_FILE};
use crate::container::{CRI_CONTAINER_TYPE, CRI_SANDBOX_ID};
use crate::events::record::{Delivered, Flaky};
use crate::events::Events;
use crate::node::{Node, RuntimeEnv};
use crate::process::Status;
use crate::reaper::{Exit, Reaper};
use crate::runsc::double::{sandbox_pid, RunscDouble};

struct Harness {
    dir: tempfile::TempDir,
    double: RunscDouble,
    service: TaskService,
    delivered: Delivered,
}

fn harness() -> Harness {
    harness_with_policy(None)
}

/// A harness whose node's default policy is `policy` (a manifest's text), or the built-in
/// strict default.
fn harness_with_policy(policy: Option<&str>) -> Harness {
    harness_with_section(|dir| match policy {
        Some(text) => {
            let file = dir.join("policy.yaml");
            std::fs::write(&file, text).expect("write policy");
            format!("[policy]\ndefault = \"{}\"\n", file.display())
        }
        None => String::new(),
    })
}

/// A harness whose runtime config has the `[policy]` section `section` returns, given the
/// harness's directory (where it may write policy files), or none.
fn harness_with_section(section: impl FnOnce(&Path) -> String) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let section = section(dir.path());
    let config = format!(
        "root = \"{root}\"\n{section}[audit]\noutput = \"{audit}\"\n",
        root = dir.path().join("runsc-root").display(),
        audit = dir.path().join("audit.jsonl").display()
    );
    let config =
        safehouse_runsc_config::RuntimeConfig::parse(&config, Path::new("t.toml")).expect("config");
    let probe = safehouse_runsc_config::RunscProbe::from_outputs(
        Path::new("/usr/bin/runsc"),
        "runsc version release-20240729.0\n",
        "  -network value\n    \tnetwork\n  -oci-seccomp\n",
    )
    .expect("probe");
    let env = RuntimeEnv {
        config,
        probe,
        global: Vec::new(),
    };
    let double = RunscDouble::default();
    let node = Node::for_tests(&dir.path().join("state"), env, Arc::new(double.clone()));
    let delivered = Delivered::default();
    let events = Events::start(
        "default",
        Flaky {
            failures: 0,
            delivered: delivered.clone(),
        },
    );
    let service = TaskService::new(
        "default",
        events,
        Reaper::default(),
        node,
        Arc::new(ExitSignal::default()),
        AuditOutput::default(),
    );
    Harness {
        dir,
        double,
        service,
        delivered,
    }
}

impl Drop for Harness {
    /// Tests that end with containers still created leave their host binds mounted under the
    /// tempdir: detach every mount below it (deepest first) so no test run leaks a mount.
    fn drop(&mut self) {
        let _ =
            containerd_shim::mount::umount_recursive(self.dir.path().to_str(), libc::MNT_DETACH);
    }
}

impl Harness {
    /// A bundle for container `id` with a minimal spec, edited by `edit`.
    fn bundle(&self, id: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        let bundle = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(bundle.join("rootfs/bin")).expect("mkdir");
        let mut spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/bin/sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}, {"type": "network"}]}
        });
        edit(&mut spec);
        std::fs::write(bundle.join(CONFIG), spec.to_string()).expect("write spec");
        bundle
    }

    async fn create(&self, id: &str, bundle: &Path) -> crate::error::Result<u32> {
        let req = api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        };
        self.service.create_task(req).await.map(|r| r.pid)
    }

    /// The first line of the audit log holding every one of `needles`, waiting up to 5 s for
    /// the writer.
    async fn audit_line(&self, needles: &[&str]) -> Option<String> {
        let log = self.dir.path().join("audit.jsonl");
        for _ in 0..100 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_owned);
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The bundle of a pod's sandbox container, `pod`, as CRI makes it.
    fn pod_bundle(&self) -> PathBuf {
        self.bundle("pod", |spec| {
            spec["annotations"] = json!({CRI_CONTAINER_TYPE: "sandbox", CRI_SANDBOX_ID: "pod"});
        })
    }

    /// The bundle of container `id` joining pod `pod`, edited by `edit`.
    fn member_bundle(&self, id: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
        self.bundle(id, |spec| {
            spec["annotations"] = json!({CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod"});
            edit(spec);
        })
    }

    /// Adds exec `exec_id` with process `spec` to container `id`.
    async fn exec(&self, id: &str, exec_id: &str, spec: &Value) -> crate::error::Result<()> {
        let req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: Some(
                containerd_shim_protos::protobuf::well_known_types::any::Any {
                    value: spec.to_string().into_bytes(),
                    ..Default::default()
                },
            )
            .into(),
            ..Default::default()
        };
        self.service.add_exec(req).await
    }

    async fn start(&self, id: &str) -> crate::error::Result<u32> {
        let req = api::StartRequest {
            id: id.into(),
            ..Default::default()
        };
        self.service.start_process(req).await.map(|r| r.pid)
    }

    async fn kill(&self, id: &str) -> crate::error::Result<()> {
        let req = api::KillRequest {
            id: id.into(),
            signal: 9,
            all: true,
            ..Default::default()
        };
        self.service.kill_process(req, "test").await
    }

    async fn delete(&self, id: &str) -> crate::error::Result<u32> {
        let req = api::DeleteRequest {
            id: id.into(),
            ..Default::default()
        };
        self.service
            .delete_process(req)
            .await
            .map(|r| r.exit_status)
    }

    /// The sandbox process exits with `code`, as the reaper would report it.
    async fn sandbox_exits(&self, id: &str, code: u32) {
        self.service.reaper.deliver(
            sandbox_pid() as i32,
            Exit {
                code,
                at: SystemTime::now(),
            },
        );
        let c = self.service.get(id).expect("container");
        tokio::time::timeout(Duration::from_secs(5), c.init.wait())
            .await
            .expect("the exit is handled");
    }

    fn trace_sockets(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("state/trace"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    async fn topics(&self) -> Vec<String> {
        self.service.events.flush(Duration::from_secs(5)).await;
        self.delivered.topics()
    }
}

#[tokio::test]
async fn create_start_exit_delete_of_a_dead_sandbox_needs_no_runsc_delete() {
    let h = harness();
    let b = h.bundle("c1", |_| {});
    h.create("c1", &b).await.expect("created");
    assert_eq!(h.double.calls(), vec!["create c1"]);
    assert!(b.join(STATE_FILE).exists(), "the delete action's state");
    assert!(
        b.join(POD_INIT_CONFIG).exists(),
        "the strict default records"
    );
    assert_eq!(h.trace_sockets().len(), 1, "the sandbox's trace sink");
    let confined: Value =
        serde_json::from_slice(&std::fs::read(b.join(CONFIG)).expect("read")).expect("json");
    assert_eq!(
        confined["root"]["readonly"], true,
        "the confined spec was written"
    );

    h.start("c1").await.expect("started");
    h.sandbox_exits("c1", 0).await;
    assert_eq!(h.delete("c1").await.expect("deleted"), 0);
    // The sandbox was gone: its state is forgotten without a runsc start-up.
    assert_eq!(h.double.calls(), vec!["create c1", "start c1", "forget c1"]);
    assert!(!b.join(STATE_FILE).exists());
    assert!(!b.join(POD_INIT_CONFIG).exists());
    assert!(h.trace_sockets().is_empty(), "the sink's socket is gone");
    assert!(h.service.get("c1").is_err());
    assert_eq!(
        h.topics().await,
        vec![
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
}

#[tokio::test]
async fn a_failed_runsc_create_releases_exactly_what_was_made() {
    let h = harness();
    h.double.fail("create", Code::UNKNOWN, "boom at boot");
    let b = h.bundle("c1", |_| {});
    let err = h.create("c1", &b).await.expect_err("create fails");
    assert!(err.to_string().contains("boom at boot"), "{err}");
    // runsc may have made state before failing: it is deleted; the sandbox's sink and files go.
    assert_eq!(h.double.calls(), vec!["create c1", "delete c1"]);
    assert!(h.trace_sockets().is_empty());
    assert!(!b.join(POD_INIT_CONFIG).exists());
    assert!(!b.join(STATE_FILE).exists());
    assert!(h.service.get("c1").is_err(), "no container is kept");
    assert!(
        h.topics().await.is_empty(),
        "no event for a task that never was"
    );
}

#[tokio::test]
async fn a_policy_refusal_starts_nothing_and_writes_nothing() {
    let h = harness();
    let b = h.bundle("c1", |spec| {
        spec["mounts"] = json!([{"destination": "/host", "source": "/etc", "type": "bind", "options": ["rbind"]}]);
    });
    let before = std::fs::read(b.join(CONFIG)).expect("read");
    let err = h.create("c1", &b).await.expect_err("refused");
    assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    assert!(err.to_string().contains("/host"), "{err}");
    assert!(h.double.calls().is_empty(), "runsc never ran");
    assert!(h.trace_sockets().is_empty(), "no sink was bound");
    assert_eq!(std::fs::read(b.join(CONFIG)).expect("read"), before);
}

#[tokio::test]
async fn a_broken_default_policy_fails_create_naming_it_and_runs_nothing() {
    const STRICT: &str = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\n\
                          metadata: {name: tight}\nspec: {}\n";
    // (what is wrong, the config's [policy] section given the harness's directory, whether
    // the container selects a policy by annotation, what the error says besides the file)
    type Section = fn(&Path) -> String;
    let cases: [(&str, Section, bool, &str); 4] = [
        (
            "not YAML",
            |d| write_default(d, "apiVersion: [safehouse.dev/v1alpha1\nkind: {"),
            false,
            ":2:",
        ),
        (
            "an unknown field",
            |d| {
                write_default(
                    d,
                    "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\n\
                     metadata: {name: node}\nspec: {netwrok: {mode: open}}\n",
                )
            },
            false,
            "unknown field `netwrok`",
        ),
        (
            "a missing file",
            |d| {
                format!(
                    "[policy]\ndefault = \"{}\"\n",
                    d.join("default.yaml").display()
                )
            },
            false,
            "cannot read policy",
        ),
        (
            // A policy selected by annotation is checked against the default: the default is
            // loaded then too, and a broken one fails the selection as well.
            "a missing file, under a selected policy",
            |d| {
                let dir = d.join("policies");
                std::fs::create_dir(&dir).expect("mkdir");
                std::fs::write(dir.join("tight.yaml"), STRICT).expect("write");
                format!(
                    "[policy]\ndefault = \"{}\"\ndir = \"{}\"\n",
                    d.join("default.yaml").display(),
                    dir.display()
                )
            },
            true,
            "cannot read policy",
        ),
    ];
    for (what, section, select, says) in cases {
        let h = harness_with_section(section);
        let file = h.dir.path().join("default.yaml");
        let b = h.bundle("c1", |spec| {
            if select {
                spec["annotations"] = json!({crate::confine::SELECT_ANNOTATION: "tight"});
            }
        });
        let before = std::fs::read(b.join(CONFIG)).expect("read");
        let err = h.create("c1", &b).await.expect_err(what);
        let msg = err.to_string();
        assert_eq!(err.code(), Code::INVALID_ARGUMENT, "{what}: {msg}");
        assert!(msg.contains(says), "{what}: {msg}");
        assert!(
            msg.contains(&file.display().to_string()),
            "{what}: the error names the policy file: {msg}"
        );
        assert!(h.double.calls().is_empty(), "{what}: runsc ran: {msg}");
        assert!(h.trace_sockets().is_empty(), "{what}: a sink was bound");
        assert!(!b.join(STATE_FILE).exists(), "{what}");
        assert!(h.service.get("c1").is_err(), "{what}: a container is kept");
        assert_eq!(
            std::fs::read(b.join(CONFIG)).expect("read"),
            before,
            "{what}: the spec was rewritten"
        );
        assert!(h.topics().await.is_empty(), "{what}: an event was sent");
    }
}

/// A `[policy]` section whose default is `dir/default.yaml` holding `text`.
fn write_default(dir: &Path, text: &str) -> String {
    let file = dir.join("default.yaml");
    std::fs::write(&file, text).expect("write policy");
    format!("[policy]\ndefault = \"{}\"\n", file.display())
}

#[tokio::test]
async fn a_failed_start_releases_the_container_at_once_and_delete_still_works() {
    let h = harness();
    h.double.fail("start", Code::UNKNOWN, "no such binary");
    let b = h.bundle("c1", |_| {});
    h.create("c1", &b).await.expect("created");
    let err = h.start("c1").await.expect_err("start fails");
    assert!(err.to_string().contains("no such binary"), "{err}");
    assert_eq!(
        h.double.calls(),
        vec!["create c1", "start c1", "delete c1"],
        "the sandbox is deleted with the failed start"
    );
    assert!(!b.join(STATE_FILE).exists());
    // The task stays for the client to see and delete; nothing is released twice.
    h.sandbox_exits("c1", 137).await;
    h.delete("c1").await.expect("deleted");
    assert_eq!(h.double.calls_of("delete").len(), 1);
    assert!(h.trace_sockets().is_empty());
}

#[tokio::test]
async fn kill_of_an_exited_process_is_not_found() {
    let h = harness();
    let b = h.bundle("c1", |_| {});
    h.create("c1", &b).await.expect("created");
    h.start("c1").await.expect("started");
    h.sandbox_exits("c1", 0).await;
    let err = h.kill("c1").await.expect_err("already exited");
    assert_eq!(err.code(), Code::NOT_FOUND, "{err}");
    assert!(h.double.calls_of("kill").is_empty(), "runsc was not asked");
}

#[tokio::test]
async fn kill_and_delete_after_the_sandbox_died_succeed_as_not_found_and_deleted() {
    let h = harness();
    let b = h.bundle("c1", |_| {});
    h.create("c1", &b).await.expect("created");
    h.start("c1").await.expect("started");
    // kubelet SIGKILLs the pod's cgroup: runsc can no longer reach the sandbox.
    h.double.die();
    h.service.reaper.deliver(
        sandbox_pid() as i32,
        Exit {
            code: 137,
            at: SystemTime::now(),
        },
    );
    tokio::task::yield_now().await;
    let err = h.kill("c1").await.expect_err("gone");
    assert_eq!(err.code(), Code::NOT_FOUND, "{err}");
    assert_eq!(h.delete("c1").await.expect("deleted"), 137);
    assert_eq!(
        h.double.calls_of("delete").len(),
        0,
        "no runsc delete of a dead sandbox"
    );
    assert_eq!(h.double.calls_of("forget"), vec!["forget c1"]);
}

#[tokio::test]
async fn a_failed_runsc_delete_of_a_live_sandbox_keeps_it_for_a_retry() {
    let h = harness();
    let b = h.bundle("c1", |_| {});
    h.create("c1", &b).await.expect("created");
    h.double.fail("delete", Code::UNKNOWN, "busy");
    let err = h.delete("c1").await.expect_err("delete fails");
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(h.service.get("c1").is_ok(), "still served");
    assert!(
        b.join(STATE_FILE).exists(),
        "still recorded for the delete action"
    );
    assert_eq!(h.trace_sockets().len(), 1, "the sandbox's sink is kept");
    h.double.succeed("delete");
    h.delete("c1").await.expect("deleted on retry");
    assert_eq!(h.double.calls_of("delete").len(), 2);
    assert!(!b.join(STATE_FILE).exists());
    assert!(h.trace_sockets().is_empty());
}

#[tokio::test]
async fn a_pod_member_shares_the_sandbox_and_is_deleted_alone() {
    let h = harness();
    let pod = h.pod_bundle();
    let app = h.member_bundle("app", |_| {});
    h.create("pod", &pod).await.expect("pod");
    h.create("app", &app).await.expect("member");
    let root = h.service.get("pod").expect("pod");
    let member = h.service.get("app").expect("member");
    assert!(Arc::ptr_eq(&root.sandbox, &member.sandbox), "one sandbox");
    assert_eq!(h.trace_sockets().len(), 1, "one trace sink per sandbox");
    assert!(
        !app.join(POD_INIT_CONFIG).exists(),
        "a member joins the session"
    );
    h.delete("app").await.expect("member deleted");
    assert_eq!(h.double.calls_of("delete"), vec!["delete app"]);
    assert_eq!(
        h.trace_sockets().len(),
        1,
        "the pod's sink outlives the member"
    );
    h.delete("pod").await.expect("pod deleted");
    assert!(h.trace_sockets().is_empty());
    assert_eq!(member.init.status(), Status::Stopped);
}

#[tokio::test]
async fn a_member_of_a_pod_this_shim_does_not_serve_is_refused() {
    let h = harness();
    let app = h.bundle("app", |spec| {
        spec["annotations"] = json!({CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "nope"});
    });
    let err = h.create("app", &app).await.expect_err("refused");
    assert_eq!(err.code(), Code::FAILED_PRECONDITION);
    assert!(h.double.calls().is_empty());
}

#[tokio::test]
async fn an_exec_runs_confined_and_reports_its_own_exit() {
    let h = harness();
    let b = h.bundle("c1", |_| {});
    h.create("c1", &b).await.expect("created");
    h.start("c1").await.expect("started");
    let spec = json!({"args": ["id"], "cwd": "/", "user": {"uid": 0, "gid": 0},
        "capabilities": {"bounding": ["CAP_SYS_ADMIN"]}});
    h.exec("c1", "e1", &spec).await.expect("exec added");
    let written: Value = serde_json::from_slice(
        &std::fs::read(crate::bundle::exec_file(&b, "e1", "process.json")).expect("read"),
    )
    .expect("json");
    assert_ne!(written["user"]["uid"], 0, "the container's confined user");
    assert_eq!(written["args"], json!(["id"]), "no profile: run as asked");
    assert_eq!(
        written["capabilities"]["bounding"],
        json!([]),
        "no capability"
    );
    let start = api::StartRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        ..Default::default()
    };
    let pid = h
        .service
        .start_process(start)
        .await
        .expect("exec started")
        .pid;
    h.double.finish(pid, 3);
    let c = h.service.get("c1").expect("container");
    let exec = c.process("e1").expect("exec");
    let exit = tokio::time::timeout(Duration::from_secs(5), exec.wait())
        .await
        .expect("exit handled");
    assert_eq!(exit.code, 3);
    let del = api::DeleteRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        ..Default::default()
    };
    let resp = h.service.delete_process(del).await.expect("exec deleted");
    assert_eq!(resp.exit_status, 3);
    assert!(c.process("e1").is_err(), "forgotten");
    assert_eq!(c.init.status(), Status::Running, "the container runs on");
    let topics = h.topics().await;
    let exec_topics: Vec<&str> = topics
        .iter()
        .map(String::as_str)
        .filter(|t| t.starts_with("/tasks/exec") || *t == "/tasks/exit")
        .collect();
    assert_eq!(
        exec_topics,
        vec!["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]
    );
}

#[tokio::test]
async fn a_sandbox_ended_by_the_kill_switch_exits_for_a_violation() {
    use safehouse_audit::ExitReason;
    let h = harness();
    let pod = h.pod_bundle();
    let app = h.member_bundle("app", |_| {});
    h.create("pod", &pod).await.expect("pod");
    h.create("app", &app).await.expect("member");
    let (root, member) = (
        h.service.get("pod").expect("pod"),
        h.service.get("app").expect("member"),
    );
    for c in [&root, &member] {
        assert_eq!(
            c.init_exit_reason(137),
            ExitReason::Killed,
            "before the switch"
        );
    }
    // The enforcer throws the switch and only then tells the task service, whose record of
    // the reason may come after the exit is handled: the exit still says violation, for the
    // root and the member alike (the switch ends the whole sandbox).
    // (Not `kill()`: the double's sandbox pid is the test process.)
    root.sandbox.audit.switch.throw();
    for c in [&root, &member] {
        assert_eq!(c.init_exit_reason(137), ExitReason::Violation, "{}", c.id);
        assert_eq!(
            c.init_exit_reason(0),
            ExitReason::Normal,
            "an init that had exited by itself"
        );
    }
}

#[tokio::test]
async fn the_create_event_names_what_the_policy_narrowed() {
    let h = harness();
    let b = h.bundle("c1", |spec| {
        spec["process"]["capabilities"] = json!({"bounding": ["CAP_SYS_ADMIN"]});
    });
    h.create("c1", &b).await.expect("created");
    let create = h
        .audit_line(&["\"action\":\"create\""])
        .await
        .expect("a create event in the audit log");
    assert!(
        create.contains("narrowed process.user: uid:gid 0:0 narrowed to 65534:65534"),
        "{create}"
    );
    assert!(
        create.contains("narrowed process.capabilities: CAP_SYS_ADMIN dropped"),
        "{create}"
    );
}

#[tokio::test]
async fn a_pod_member_past_its_memory_limit_is_oom_killed_alone() {
    const MIB: u64 = 1024 * 1024;
    let h = harness();
    let pod = h.pod_bundle();
    let member = |id: &str, limit: Option<u64>| {
        h.member_bundle(id, |spec| {
            spec["mounts"] =
                json!([{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}]);
            if let Some(l) = limit {
                spec["linux"]["resources"] = json!({"memory": {"limit": l}});
            }
        })
    };
    let (hog, calm) = (member("hog", Some(64 * MIB)), member("calm", None));
    h.create("pod", &pod).await.expect("pod");
    h.start("pod").await.expect("pod started");
    h.create("hog", &hog).await.expect("hog");
    h.create("calm", &calm).await.expect("calm");
    h.start("hog").await.expect("hog started");
    h.start("calm").await.expect("calm started");
    // Both use as much; only the one with a limit of its own is past it.
    h.double.set_memory_usage("hog", 100 * MIB);
    h.double.set_memory_usage("calm", 100 * MIB);
    // A bounded wait for the watch's next poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.double.calls_of("kill").is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !h.double.calls_of("kill").is_empty(),
        "no kill after the usage passed the limit: {:?}",
        h.double.calls()
    );
    assert_eq!(h.double.calls_of("kill"), vec!["kill hog 9 --all"]);
    assert!(
        h.double.calls_of("stats").iter().all(|c| c == "stats hog"),
        "only the limited member is watched: {:?}",
        h.double.calls_of("stats")
    );
    let topics = h.topics().await;
    assert!(topics.iter().any(|t| t == "/tasks/oom"), "{topics:?}");
    let c = h.service.get("hog").expect("hog");
    assert_eq!(
        c.init_exit_reason(137),
        safehouse_audit::ExitReason::Oom,
        "its exit is reported as an OOM kill"
    );
    let calm = h.service.get("calm").expect("calm");
    assert_eq!(
        calm.init.status(),
        Status::Running,
        "the other member runs on"
    );
}

#[tokio::test]
async fn an_exec_in_a_container_with_a_seccomp_profile_starts_through_the_helper() {
    let h = harness();
    let b = h.bundle("c1", |spec| {
        spec["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]
        });
    });
    h.create("c1", &b).await.expect("created");
    let helper_dir = b.join(crate::bundle::SECCOMP_EXEC_DIR);
    assert!(helper_dir.join("seccomp-exec").is_file(), "helper written");
    let config: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).expect("config"))
            .expect("json");
    let binds: Vec<&Value> = config["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .filter(|m| m["destination"] == "/.safehouse")
        .collect();
    assert_eq!(binds.len(), 1, "{}", config["mounts"]);
    h.start("c1").await.expect("started");
    let spec = json!({"args": ["ls", "-l"], "cwd": "/"});
    h.exec("c1", "e1", &spec).await.expect("exec added");
    let written: Value = serde_json::from_slice(
        &std::fs::read(crate::bundle::exec_file(&b, "e1", "process.json")).expect("read"),
    )
    .expect("json");
    assert_eq!(
        written["args"],
        json!(["/.safehouse/seccomp-exec", "--", "ls", "-l"])
    );
    h.sandbox_exits("c1", 0).await;
    h.delete("c1").await.expect("deleted");
    assert!(!helper_dir.exists(), "released with the container");
}

#[tokio::test]
async fn an_exec_under_tools_with_a_loader_variable_of_its_own_is_refused_before_it_runs() {
    let h = harness_with_policy(Some(
        "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: agent-tools}\n\
         spec: {process: {tools: [/bin/sh]}}\n",
    ));
    let b = h.bundle("c1", |spec| {
        spec["process"]["env"] = json!(["PATH=/bin", "LD_LIBRARY_PATH=/opt/lib"]);
    });
    std::fs::copy("/bin/busybox", b.join("rootfs/bin/sh")).expect("a static tool");
    h.create("c1", &b).await.expect("created");
    h.start("c1").await.expect("started");

    let preload = json!({"args": ["/bin/sh"], "cwd": "/", "env": ["LD_PRELOAD=/tmp/x.so"]});
    let err = h.exec("c1", "e1", &preload).await.expect_err("refused");
    assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    let msg = err.to_string();
    assert!(
        msg.contains("process.env (LD_PRELOAD)") && msg.contains("\"agent-tools\""),
        "{msg}"
    );
    assert!(
        !crate::bundle::exec_file(&b, "e1", "process.json").exists(),
        "nothing written for runsc"
    );
    assert!(h.double.calls_of("exec").is_empty(), "nothing run");

    let own = json!({"args": ["/bin/sh"], "cwd": "/", "env": ["LD_LIBRARY_PATH=/opt/lib"]});
    h.exec("c1", "e2", &own)
        .await
        .expect("the container's own value");
    h.sandbox_exits("c1", 0).await;
    h.delete("c1").await.expect("deleted");
}

#[tokio::test]
async fn a_spec_the_policy_refuses_is_recorded_and_nothing_runs() {
    let h = harness_with_policy(Some(
        "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: agent-tools}\n\
         spec: {process: {tools: [/bin/sh]}}\n",
    ));
    let b = h.bundle("c1", |spec| {
        spec["process"]["env"] = json!(["PATH=/bin", "LD_PRELOAD=/tmp/x.so"]);
    });
    std::fs::copy("/bin/busybox", b.join("rootfs/bin/sh")).expect("a static tool");
    let err = h.create("c1", &b).await.expect_err("refused");
    assert_eq!(err.code(), Code::INVALID_ARGUMENT);
    assert!(h.double.calls().is_empty(), "runsc never ran");
    assert!(h.trace_sockets().is_empty(), "no trace sink left");
    let refused = h
        .audit_line(&["\"action\":\"violation\"", "\"container_id\":\"c1\""])
        .await
        .expect("the refusal in the audit log");
    let v: Value = serde_json::from_str(&refused).expect("json");
    assert_eq!(v["violation"]["enforcement"], "refused", "{v}");
    assert_eq!(v["violation"]["rule"], "process.env[1] (LD_PRELOAD)", "{v}");
    assert_eq!(v["policy"]["name"], "agent-tools", "{v}");
    // The chain it opened is closed: nothing runs for it.
    let closed = h
        .audit_line(&["\"action\":\"delete\"", "\"container_id\":\"c1\""])
        .await
        .expect("the chain closed");
    assert!(closed.contains("create refused"), "{closed}");
}

#[tokio::test]
async fn a_pod_members_refusal_goes_into_its_pods_chain() {
    let h = harness();
    let pod = h.pod_bundle();
    let app = h.member_bundle("app", |spec| {
        spec["mounts"] = json!([{"destination": "/host", "source": "/etc", "type": "bind", "options": ["rbind"]}]);
    });
    h.create("pod", &pod).await.expect("pod");
    h.create("app", &app).await.expect_err("refused");
    let refused = h
        .audit_line(&["\"action\":\"violation\"", "\"container_id\":\"app\""])
        .await
        .expect("the member's refusal in the audit log");
    let v: Value = serde_json::from_str(&refused).expect("json");
    assert_eq!(v["sandbox_id"], "pod", "in the pod's chain: {v}");
    assert_eq!(v["violation"]["enforcement"], "refused", "{v}");
    // Written in order: a delete closing the chain would be there by now.
    let log = std::fs::read_to_string(h.dir.path().join("audit.jsonl")).expect("log");
    assert!(
        !log.contains("\"action\":\"delete\""),
        "the pod's chain stays open: {log}"
    );
    h.delete("pod").await.expect("pod deleted");
}
