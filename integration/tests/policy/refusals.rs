//! What Create refuses: a host bind mount the policy does not name, a policy with an egress
//! allowlist but no network namespace of its own, and an annotation naming an unknown or unlisted policy. Each
//! refusal is an exact error and leaves nothing behind.

use anyhow::{ensure, Result};
use safehouse_integration::command::Output;
use safehouse_integration::env::LEAK_GRACE;
use safehouse_integration::TestEnv;

use crate::lab::{says, Lab};

/// Runs `true` under `policy` with `flags`, expects Create to fail without a task, removes the
/// container record and checks for leaks; returns `ctr run`'s output for the message checks.
fn refused_run(
    env: &TestEnv,
    lab: &Lab,
    policy: Option<&str>,
    flags: &[&str],
    id: &str,
) -> Result<Output> {
    let out = lab.run(policy, flags, id, &["sh", "-c", "echo STARTED"])?;
    ensure!(!out.timed_out, "ctr run hung: {}", out.describe());
    ensure!(
        !out.success() && !says(&out, "STARTED"),
        "create should have been refused: {}",
        out.describe()
    );
    ensure!(
        env.ctr.task(id)?.is_none(),
        "a task exists after a refused create"
    );
    lab.remove_container(id)?;
    // Leaks first, so a vague message does not hide them; the caller checks the message.
    env.leaks.assert_clean(&[id], LEAK_GRACE)?;
    Ok(out)
}

/// `--mount type=bind,src=/etc,dst=/host` under the strict default: refused, naming the mount,
/// the field and the policy.
pub fn unnamed_host_bind_is_refused(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "bind")?;
    let id = env.id("hostbind");
    env.scenario(&[&id], || {
        let mount = "type=bind,src=/etc,dst=/host,options=rbind:ro";
        let out = refused_run(env, &lab, None, &["--mount", mount], &id)?;
        for needle in [
            "(destination /host, source /etc): bind mount of a host path not named by policy \"strict-default\"",
            "mounts[",
        ] {
            ensure!(
                out.stderr.contains(needle),
                "the error should say {needle:?}: {}",
                out.describe()
            );
        }
        Ok(())
    })
}

/// `network.mode: allowlist` (and `open`) without a network namespace of the container's own is
/// refused at Create rather than run on the node's network or unfiltered.
pub fn allowlist_policy_is_refused(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "allowlist")?;
    lab.policy(
        "egress-list",
        r#"{network: {mode: allowlist, egress: ["10.201.0.1:8080"]}}"#,
    )?;
    let id = env.id("allowlist");
    env.scenario(&[&id], || {
        // `--net-host`: no network namespace entry (ctr's default, one without a path, is a
        // new namespace of the container's own, which allowlist may use).
        let out = refused_run(env, &lab, Some("egress-list"), &["--net-host"], &id)?;
        // The compiler refuses a spec without a network namespace entry (the node's) first.
        let needle = "refused by policy \"egress-list\": linux.namespaces: no network namespace \
                      means the host's network namespace";
        ensure!(
            out.stderr.contains(needle),
            "the error should say {needle:?}: {}",
            out.describe()
        );
        Ok(())
    })
}

/// An annotation naming a policy that does not exist, or one looser than the default that
/// `[policy] selectable` does not list, or a file whose `metadata.name` is another, fails
/// Create; it never falls back to another policy. A tighter policy needs no listing.
pub fn unknown_or_unlisted_policy_is_refused(env: &TestEnv) -> Result<()> {
    let open_dir = Lab::new(env, "select-any")?;
    let listed = Lab::with_selectable(env, "select-listed", &["listed"])?;
    for lab in [&open_dir, &listed] {
        lab.policy("listed", r#"{process: {user: "0:0"}}"#)?;
        lab.policy("unlisted", r#"{process: {user: "0:0"}}"#)?;
        lab.policy("tighter", r#"{resources: {memory: 64Mi}}"#)?;
    }
    // A file that calls itself "listed" under another name.
    std::fs::copy(
        listed.path("policies/listed.yaml"),
        listed.path("policies/impostor.yaml"),
    )?;
    let unknown = env.id("unknownpol");
    let unlisted = env.id("unlistedpol");
    let impostor = env.id("impostorpol");
    let tighter = env.id("tighterpol");
    let ok = env.id("listedpol");
    env.scenario(&[&unknown, &unlisted, &impostor, &tighter, &ok], || {
        let out = refused_run(env, &open_dir, Some("no-such-policy"), &[], &unknown)?;
        let needle = "annotation safehouse.dev/policy=\"no-such-policy\": no policy no-such-policy.yaml or no-such-policy.json in";
        ensure!(
            out.stderr.contains(needle),
            "the error should say {needle:?}: {}",
            out.describe()
        );
        let out = refused_run(env, &listed, Some("unlisted"), &[], &unlisted)?;
        for needle in [
            "annotation safehouse.dev/policy=\"unlisted\"",
            "is looser than the default policy \"strict-default\" in process",
        ] {
            ensure!(
                out.stderr.contains(needle),
                "the error should say {needle:?}: {}",
                out.describe()
            );
        }
        let out = refused_run(env, &listed, Some("impostor"), &[], &impostor)?;
        let needle = "metadata.name";
        ensure!(
            out.stderr.contains(needle),
            "the error should name {needle:?}: {}",
            out.describe()
        );
        // No looser than the default on any dimension: selectable without a listing.
        let out = listed.run(Some("tighter"), &["--rm"], &tighter, &["true"])?;
        ensure!(
            out.success(),
            "a tighter policy should be selectable: {}",
            out.describe()
        );
        // The same config selects the listed one (so the refusal is about the list).
        let out = listed.run(Some("listed"), &["--rm"], &ok, &["id", "-u"])?;
        ensure!(
            out.success() && out.stdout == "0\n",
            "the listed policy should run as root: {}",
            out.describe()
        );
        Ok(())
    })
}
