//! Process confinement: identity, capabilities, no_new_privs, the wall-clock timeout and the
//! `process.tools` allowlist.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use safehouse_integration::TestEnv;
use serde_json::Value;

use crate::lab::{says, Lab};

/// The `Cap*`/`NoNewPrivs` lines of /proc/self/status as (name, value).
fn status_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn field<'t>(fields: &'t [(String, String)], name: &str) -> Option<&'t str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The policy's uid/gid, no effective capabilities even when the spec asks for some (as root
/// too), and no_new_privs: in /proc when gVisor shows it, and in the confined bundle spec.
pub fn identity_and_privileges(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "ids")?;
    lab.policy("ids", r#"{process: {user: "1234:5678"}}"#)?;
    lab.policy("root-nocaps", r#"{process: {user: "0:0"}}"#)?;
    let user = env.id("ids");
    let root = env.id("rootcaps");
    let held = env.id("idsheld");
    env.scenario(&[&user, &root, &held], || {
        let check = "id -u; id -g; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status";
        for (policy, id, uid, gid) in [("ids", &user, "1234", "5678"), ("root-nocaps", &root, "0", "0")] {
            let out = lab.run(
                Some(policy),
                &["--rm", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_NET_RAW"],
                id,
                &["sh", "-c", check],
            )?
            .ok()?;
            let mut lines = out.stdout.lines();
            ensure!(
                lines.next() == Some(uid) && lines.next() == Some(gid),
                "policy {policy}: expected uid {uid} gid {gid}: {}",
                out.describe()
            );
            let fields = status_fields(&out.stdout);
            for cap in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
                if let Some(value) = field(&fields, cap) {
                    ensure!(
                        value.chars().all(|c| c == '0'),
                        "policy {policy}: {cap} is {value}, expected no capabilities: {}",
                        out.describe()
                    );
                }
            }
            ensure!(
                field(&fields, "CapEff").is_some(),
                "no CapEff in /proc/self/status: {}",
                out.describe()
            );
            if let Some(nnp) = field(&fields, "NoNewPrivs") {
                ensure!(nnp == "1", "policy {policy}: NoNewPrivs {nnp}: {}", out.describe());
            }
        }

        // The confined spec in the bundle, while the container runs.
        let running = lab.start(Some("ids"), &["--rm"], &held, &["sleep", "1000"])?;
        env.ctr.wait_status(&held, "RUNNING", Duration::from_secs(30))?;
        let path = lab.bundle(&held).join("config.json");
        let spec: Value = serde_json::from_slice(
            &fs::read(&path).with_context(|| format!("read {}", path.display()))?,
        )?;
        env.ctr.run(&["task", "kill", "-s", "SIGKILL", &held])?.ok()?;
        let out = running.wait(Duration::from_secs(30))?;
        ensure!(out.code == Some(137), "kill of the held container: {}", out.describe());
        let process = &spec["process"];
        ensure!(
            process["noNewPrivileges"] == true,
            "confined spec: noNewPrivileges is {}",
            process["noNewPrivileges"]
        );
        ensure!(
            process["user"]["uid"] == 1234 && process["user"]["gid"] == 5678,
            "confined spec user: {}",
            process["user"]
        );
        for set in ["bounding", "effective", "permitted", "inheritable", "ambient"] {
            let caps = &process["capabilities"][set];
            ensure!(
                caps.is_null() || caps.as_array().is_some_and(|a| a.is_empty()),
                "confined spec capabilities.{set}: {caps}"
            );
        }
        ensure!(
            spec["annotations"]["safehouse.dev/policy"] == "ids",
            "confined spec annotations: {}",
            spec["annotations"]
        );
        Ok(())
    })
}

/// `timeout: 3s` ends `sleep 1000` with 137 within seconds, and the audit stream says
/// why (a `timeout` event and an exit with reason `timeout`).
pub fn timeout_kills(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "timeout")?;
    lab.policy("three-seconds", "{process: {timeout: 3s}}")?;
    let id = env.id("timeout");
    env.scenario(&[&id], || {
        let started = Instant::now();
        let out = env.ctr.run_timeout(
            &lab.argv(Some("three-seconds"), &["--rm"], &id, &["sleep", "1000"]),
            Duration::from_secs(20),
        )?;
        let took = started.elapsed();
        ensure!(
            !out.timed_out && out.code == Some(137),
            "expected the timeout to kill the container (137): {}",
            out.describe()
        );
        ensure!(
            // The kill usually lands within 0.1 s of the limit; the slack is for a loaded
            // machine (once seen: 10 s from kill to exit while a memory hog ran beside it).
            took >= Duration::from_secs(3) && took < Duration::from_secs(15),
            "killed after {took:?}, expected about 3 s"
        );
        lab.wait_audit(&id, "action timeout", |e| e["action"] == "timeout")?;
        lab.wait_audit(&id, "exit with reason timeout", |e| {
            e["action"] == "exit" && e["exit"]["reason"] == "timeout"
        })?;
        Ok(())
    })
}

/// With `tools: [/bin/sh]` (busybox, whose applets the shell runs itself) and
/// `onViolation: kill`, the shell's applets run without a violation, and another executable (a
/// busybox copy in an input zone marked `exec: true`) cannot be executed at all. The init is
/// started as `/bin/sh` (see [`relative_init_is_resolved`] for a bare `sh`).
pub fn non_tool_exec_is_refused(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "tools")?;
    let tools_dir = lab.host_dir("tools")?;
    fs::copy("/bin/busybox", tools_dir.join("other-tool")).context("copy busybox")?;
    lab.policy(
        "shell-only",
        &format!(
            "{{filesystem: {{inputs: [{{source: {:?}, path: /opt/tools, exec: true}}]}}, \
             process: {{tools: [/bin/sh]}}, audit: {{onViolation: kill}}}}",
            tools_dir.display().to_string()
        ),
    )?;
    let allowed = env.id("toolok");
    let violating = env.id("toolbad");
    env.scenario(&[&allowed, &violating], || {
        // Applets are the allowed tool: the run ends normally.
        let out = lab.run(
            Some("shell-only"),
            &["--rm"],
            &allowed,
            &["/bin/sh", "-c", "echo applets-ok; ls / > /dev/null"],
        )?;
        ensure!(
            out.success() && out.stdout == "applets-ok\n",
            "allowed tools only: {}",
            out.describe()
        );
        let wrongly: Vec<String> = lab
            .audit_events(&allowed)
            .iter()
            .filter(|e| e["action"] == "violation" || e["category"] == "process")
            .map(|e| e.to_string().chars().take(500).collect())
            .collect();
        ensure!(
            !wrongly
                .iter()
                .any(|e| e.contains("\"action\":\"violation\"")),
            "only allowed tools ran, yet the audit has a violation; process events:\n  {}",
            wrongly.join("\n  ")
        );
        // The tool is compiled into the mounts: the other program sits on a noexec mount (the
        // zone's `exec: true` does not hold beside `tools`), so its execve fails with EACCES
        // before it runs, and the shell goes on.
        let out = env.ctr.run_timeout(
            &lab.argv(
                Some("shell-only"),
                &["--rm"],
                &violating,
                &[
                    "/bin/sh",
                    "-c",
                    "/opt/tools/other-tool echo RAN-OTHER; echo rc=$?",
                ],
            ),
            Duration::from_secs(35),
        )?;
        ensure!(
            !out.timed_out
                && !says(&out, "RAN-OTHER")
                && says(&out, "Permission denied")
                && says(&out, "rc=126"),
            "a non-tool exec must fail with EACCES: {}",
            out.describe()
        );
        Ok(())
    })
}

/// An init started as a bare `sh` (as `ctr run IMAGE ID sh` and most images' CMD do) is the
/// same executable as `/bin/sh`, so a `tools: [/bin/sh]` policy must not kill it.
pub fn relative_init_is_resolved(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "relinit")?;
    lab.policy(
        "shell-only",
        "{process: {tools: [/bin/sh]}, audit: {onViolation: kill}}",
    )?;
    let id = env.id("relinit");
    env.scenario(&[&id], || {
        let out = lab.run(
            Some("shell-only"),
            &["--rm"],
            &id,
            // Builtins only: every applet exec'd would be a program of its own (not /bin/sh).
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo still-alive",
            ],
        )?;
        ensure!(
            out.success() && out.stdout == "still-alive\n",
            "a bare `sh` init under tools [/bin/sh]: {}",
            out.describe()
        );
        let violations: Vec<String> = lab
            .audit_events(&id)
            .iter()
            .filter(|e| e["action"] == "violation")
            .map(|e| e["violation"].to_string())
            .collect();
        ensure!(violations.is_empty(), "violations recorded: {violations:?}");
        Ok(())
    })
}

/// With a busybox image and `tools: [/bin/sh, /bin/echo, /bin/cat]`, the listed `/bin/sh` is
/// busybox, which runs the program its name selects: `exec -a wget /bin/sh` runs wget, which
/// the mounts cannot refuse. The stream catches that: an exec of a listed file under a name
/// the list does not give that file is a violation, recorded with the name, and kills the
/// sandbox; the listed names of the same file (sh re-running itself as cat) run. A symlink
/// named `wget` to `/bin/sh` (here in an input zone, as an agent would leave one in its
/// scratch space) runs the listed file too, the mounts letting it through (the exec lands on
/// the tool's bind): the name it was invoked under makes it a violation the same way.
pub fn multicall_binary_under_an_unlisted_name_is_a_violation(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "multicall")?;
    let input = lab.host_dir("in")?;
    std::os::unix::fs::symlink("/bin/sh", input.join("wget"))?;
    lab.policy(
        "sh-echo",
        &format!(
            "{{filesystem: {{inputs: [{{source: {:?}, path: /input}}]}}, \
             process: {{tools: [/bin/sh, /bin/echo, /bin/cat]}}, \
             audit: {{record: [file], onViolation: kill}}}}",
            input.display().to_string()
        ),
    )?;
    let allowed = env.id("mcok");
    let applet = env.id("mccat");
    let link = env.id("mclink");
    env.scenario(&[&allowed, &applet, &link], || {
        // The listed names run (echo is exec'd by its path), with process recording forced on.
        let out = lab.run(
            Some("sh-echo"),
            &["--rm"],
            &allowed,
            // `cat` without a path: busybox sh runs it by re-executing its own file (the listed
            // /bin/sh) under the name cat, which the list also gives that file.
            &[
                "/bin/sh",
                "-c",
                "/bin/echo listed-ok; echo x | cat > /dev/null",
            ],
        )?;
        ensure!(
            out.success() && out.stdout == "listed-ok\n",
            "listed tools only: {}",
            out.describe()
        );
        let events = lab.audit_events(&allowed);
        ensure!(
            events.iter().any(|e| e["action"] == "exec"
                && e["process"]["binary"]["path"].is_string()
                && e["process"]["argv"][0] == "/bin/echo"),
            "record: [file] with tools still records the exec of /bin/echo"
        );
        ensure!(
            !events.iter().any(|e| e["action"] == "violation"),
            "no violation for listed names"
        );
        let out = env.ctr.run_timeout(
            &lab.argv(
                Some("sh-echo"),
                &["--rm"],
                &applet,
                &[
                    "/bin/sh",
                    "-c",
                    "(exec -a wget /bin/sh -q -O /dev/null http://127.0.0.1/); i=0; \
                     while [ $i -lt 3000000 ]; do i=$((i+1)); done; echo SURVIVED",
                ],
            ),
            Duration::from_secs(35),
        )?;
        ensure!(
            !out.timed_out && out.code == Some(137) && !says(&out, "SURVIVED"),
            "busybox run as wget should kill the sandbox (137): {}",
            out.describe()
        );
        let violation =
            lab.wait_audit(&applet, "action violation", |e| e["action"] == "violation")?;
        let reason = violation["violation"]["reason"]
            .as_str()
            .unwrap_or_default();
        ensure!(
            violation["violation"]["rule"] == "process.tools" && reason.contains("\"wget\""),
            "the violation names the name cat was invoked under: {violation}"
        );
        ensure!(
            violation["policy"]["name"] == "sh-echo",
            "labelled with the container's policy: {violation}"
        );

        let out = env.ctr.run_timeout(
            &lab.argv(
                Some("sh-echo"),
                &["--rm"],
                &link,
                &[
                    "/bin/sh",
                    "-c",
                    "/input/wget -q -O /dev/null http://127.0.0.1/; i=0; \
                     while [ $i -lt 3000000 ]; do i=$((i+1)); done; echo SURVIVED",
                ],
            ),
            Duration::from_secs(35),
        )?;
        ensure!(
            !out.timed_out && out.code == Some(137) && !says(&out, "SURVIVED"),
            "a symlink named wget to the listed /bin/sh should kill the sandbox (137): {}",
            out.describe()
        );
        let violation =
            lab.wait_audit(&link, "action violation", |e| e["action"] == "violation")?;
        ensure!(
            violation["violation"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("\"wget\"")),
            "the violation names the symlink's name: {violation}"
        );
        Ok(())
    })
}
