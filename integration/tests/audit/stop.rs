//! `safehouse stop`: the big red button kills every process of the named sandboxes through
//! their shims, the kill is in each sandbox's audit chain with who asked, and the command
//! returns only when nothing of those sandboxes is left.

use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::TestEnv;

use crate::lab::{is, safehouse, verify, Lab, Listing};

/// Container `id`'s kill event from `safehouse stop`, naming who asked.
fn stop_kill(lab: &Lab, id: &str) -> Result<serde_json::Value> {
    lab.wait_event(id, "the kill by safehouse stop", |e| {
        is(e, "lifecycle", "kill")
            && e["actor"]
                .as_str()
                .is_some_and(|s| s.starts_with("safehouse stop (uid 0"))
    })
}

/// Two running sandboxes, one `safehouse stop --namespace NS A B`: both gone, both recorded.
pub fn stop_kills_records_and_leaves_nothing(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "stop")?;
    lab.policy("recorded", "{audit: {record: [process]}}")?;
    let a = env.id("stopa");
    let b = env.id("stopb");
    env.scenario(&[&a, &b], || {
        // Detached: nobody but `safehouse stop` and this test touches their tasks.
        for (id, cmd) in [
            (&a, vec!["sleep", "1000"]),
            (&b, vec!["sh", "-c", "sleep 1000 & sleep 1000"]),
        ] {
            let out = lab.run(Some("recorded"), &["-d"], id, &cmd)?;
            ensure!(out.success(), "start {id}: {}", out.describe());
        }
        for id in [&a, &b] {
            env.ctr
                .wait_status(id, "RUNNING", Duration::from_secs(20))?;
        }
        let out = safehouse(&["stop", "--namespace", &env.ctr.namespace, &a, &b])?;
        ensure!(out.success(), "safehouse stop: {}", out.describe());
        for id in [&a, &b] {
            ensure!(
                out.stdout
                    .contains(&format!("stopped {}/{id} (exit 137)", env.ctr.namespace)),
                "stop should report {id} killed: {}",
                out.describe()
            );
            // It returned only when the sandbox's processes were gone.
            let left = safehouse_integration::host::processes_mentioning(id)
                .into_iter()
                .filter(|p| p.command_line().starts_with("runsc"))
                .count();
            ensure!(left == 0, "{left} runsc processes of {id} left after stop");
        }
        for id in [&a, &b] {
            let row = env.ctr.task(id)?;
            ensure!(
                row.as_ref().is_some_and(|r| r.status == "STOPPED"),
                "{id} should be STOPPED after safehouse stop: {row:?}"
            );
        }
        for id in [&a, &b] {
            let kill = stop_kill(&lab, id)?;
            ensure!(
                kill["detail"]["signal"] == 9 && kill["detail"]["all"] == true,
                "kill event: {kill}"
            );
            lab.wait_event(id, "the exit after the stop", |e| {
                is(e, "lifecycle", "exit") && e["exit"]["signal"] == 9
            })?;
        }
        let v = verify(&lab.path("audit.jsonl"))?;
        ensure!(
            v.success(),
            "the chains must verify after the stop: {}\n{}",
            v.describe(),
            Listing(&lab.events()?)
        );
        // An unknown id is an error, not a silent success.
        let out = safehouse(&[
            "stop",
            "--namespace",
            &env.ctr.namespace,
            "no-such-container",
        ])?;
        ensure!(out.code == Some(2), "unknown id: {}", out.describe());
        for id in [&a, &b] {
            env.ctr.run(&["tasks", "delete", id])?.ok()?;
            env.ctr.run(&["containers", "rm", id])?.ok()?;
        }
        Ok(())
    })
}

/// `safehouse stop --all --namespace NS`: every Safehouse sandbox of that containerd namespace
/// is stopped and recorded, and nothing of another namespace is touched (a container of the
/// test's own namespace runs on). The namespace is this scenario's own, so the other
/// scenarios running beside it are out of reach.
pub fn stop_all_in_a_namespace_stops_that_namespace_only(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "stopall")?;
    lab.policy("recorded", "{audit: {record: [process]}}")?;
    let ns = format!("{}-stopall", env.ctr.namespace);
    let own = safehouse_integration::ctr::Ctr {
        namespace: ns.clone(),
        ..env.ctr.clone()
    };
    safehouse_integration::image::import_busybox(&own.binary, &own.address, &ns)?;
    let a = env.id("alla");
    let b = env.id("allb");
    let bystander = env.id("allby");
    let result = env.scenario(&[&a, &b, &bystander], || {
        for id in [&a, &b] {
            let out = own.run(&lab.argv(Some("recorded"), &["-d"], id, &["sleep", "1000"]))?;
            ensure!(out.success(), "start {id} in {ns}: {}", out.describe());
            own.wait_status(id, "RUNNING", Duration::from_secs(20))?;
        }
        let out = lab.run(Some("recorded"), &["-d"], &bystander, &["sleep", "1000"])?;
        ensure!(out.success(), "start {bystander}: {}", out.describe());
        env.ctr
            .wait_status(&bystander, "RUNNING", Duration::from_secs(20))?;

        let out = safehouse(&["stop", "--all", "--namespace", &ns])?;
        ensure!(out.success(), "safehouse stop --all: {}", out.describe());
        for id in [&a, &b] {
            ensure!(
                out.stdout
                    .contains(&format!("stopped {ns}/{id} (exit 137)")),
                "stop --all should report {id} killed: {}",
                out.describe()
            );
            stop_kill(&lab, id)?;
        }
        ensure!(
            !out.stdout.contains(&bystander),
            "stop --all --namespace {ns} named a container of another namespace: {}",
            out.describe()
        );
        let row = env.ctr.task(&bystander)?;
        ensure!(
            row.as_ref().is_some_and(|r| r.status == "RUNNING"),
            "the other namespace's container should run on: {row:?}"
        );
        env.ctr.force_remove(&bystander);
        for id in [&a, &b] {
            own.run(&["tasks", "delete", id])?.ok()?;
            own.run(&["containers", "rm", id])?.ok()?;
        }
        Ok(())
    });
    // Whatever the body left (it failed): the scenario's own clean-up knows only the test's
    // namespace.
    for id in [&a, &b] {
        own.force_remove(id);
    }
    let _ = own.run(&["images", "rm", safehouse_integration::image::BUSYBOX_IMAGE]);
    let _ = own.run(&["namespaces", "rm", &ns]);
    result
}

/// A shim SIGKILLed while its sandbox runs never writes the sandbox's `delete`: containerd's
/// `delete` action (a new shim process) closes the chain for it, chained after the last line,
/// saying who closed it; the log still verifies and no chain is left open.
pub fn killed_shim_chain_is_closed_by_the_delete_action(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "orphan")?;
    lab.policy("recorded", crate::workload::RECORD_ALL_OFFLINE)?;
    let id = env.id("orphan");
    env.scenario(&[&id], || {
        let out = lab.run(Some("recorded"), &["-d"], &id, &["sleep", "1000"])?;
        ensure!(out.success(), "run -d: {}", out.describe());
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;
        // While it runs, verify names the open chain and why: its shim is alive.
        let out = verify(&lab.audit)?;
        ensure!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("open: sandbox {id}:"))
                    && l.contains("its shim (pid ")
                    && l.contains(") is still running")),
            "verify while the sandbox runs should name its open chain and its live shim: {}",
            out.describe()
        );
        env.sigkill_shim_and_remove(&id)?;
        let closing = lab.wait_event(&id, "the delete action's delete", |e| {
            e["category"] == "lifecycle"
                && e["action"] == "delete"
                && e["actor"] == "safehouse (delete action)"
        })?;
        ensure!(
            closing["message"]
                .as_str()
                .is_some_and(|m| m.contains("shim serving this sandbox died")),
            "the closing event says why: {closing}"
        );
        let out = verify(&lab.audit)?;
        ensure!(
            out.code == Some(0) && out.stdout.contains("(0 still open)"),
            "the chain is whole and closed: {}",
            out.describe()
        );
        Ok(())
    })
}
