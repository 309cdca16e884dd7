//! `process.tools` by construction: in an image with a forbidden static program, an unlisted
//! dynamic one and busybox's applets, only the listed tools (and the ELF interpreter they
//! need) can be `execve`d; anything else fails with EACCES before it runs, whatever
//! `audit.record` says. The test programs are built here from C (`gcc`, `gcc -static`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use safehouse_integration::command::{Output, Running};
use safehouse_integration::image::import_busybox_with;
use safehouse_integration::TestEnv;
use serde_json::Value;

use crate::lab::{says, Lab};

/// A static program: `probe unlink PATH` removes PATH as its first act.
const PROBE_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "unlink") == 0) {
        int r = unlink(argv[2]);
        printf("PROBE-RAN unlink=%d\n", r);
        return 0;
    }
    printf("PROBE-RAN\n");
    return 0;
}
"#;

/// A dynamically linked program.
const DYN_C: &str = r#"
#include <stdio.h>
int main(void) { printf("DYNAMIC-RAN\n"); return 0; }
"#;

/// The host's loader and libc, where a Debian image has them.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

fn gcc(dir: &Path, name: &str, source: &str, static_: bool) -> Result<PathBuf> {
    let c = dir.join(format!("{name}.c"));
    fs::write(&c, source)?;
    let out = dir.join(name);
    let mut cmd = Command::new("gcc");
    if static_ {
        cmd.arg("-static");
    }
    let status = cmd
        .arg("-O2")
        .arg("-o")
        .arg(&out)
        .arg(&c)
        .status()
        .context("run gcc (install gcc: make deps)")?;
    if !status.success() {
        bail!("gcc {name}: {status}");
    }
    Ok(out)
}

/// Builds and imports the test image: busybox, `/usr/local/bin/probe` (static, never listed)
/// and `/usr/local/bin/probe-dyn` (the same, dynamic), `/usr/bin/dyn` and
/// `/usr/local/bin/dyn-other` (the same dynamic program, one listed), `/usr/bin/memexec`,
/// `/usr/bin/fdexec`, with
/// the host's loader and libc.
fn tools_image(env: &TestEnv, lab: &Lab) -> Result<String> {
    let dir = lab.path("tools-image");
    fs::create_dir_all(&dir)?;
    let probe = gcc(&dir, "probe", PROBE_C, true)?;
    let probe_dyn = gcc(&dir, "probe-dyn", PROBE_C, false)?;
    let memexec = gcc(&dir, "memexec", MEMEXEC_C, true)?;
    let fdexec = gcc(&dir, "fdexec", FDEXEC_C, true)?;
    let dyn_ = gcc(&dir, "dyn", DYN_C, false)?;
    let loader = fs::canonicalize(LOADER).context("the host's ELF loader")?;
    let libc = fs::canonicalize(LIBC).context("the host's libc")?;
    import_busybox_with(
        &env.ctr.binary,
        &env.ctr.address,
        &env.ctr.namespace,
        &dir,
        // One name per lab: the scenarios run in parallel in one namespace, each importing its
        // own build (its own digest); under a shared name one import's unpack would find its
        // content collected once another import took the name.
        &format!("tools-{}-{}", std::process::id(), lab_tag(&dir)),
        &[
            (probe, "/usr/local/bin/probe"),
            (probe_dyn, "/usr/local/bin/probe-dyn"),
            (memexec, "/usr/bin/memexec"),
            (fdexec, "/usr/bin/fdexec"),
            (dyn_.clone(), "/usr/bin/dyn"),
            (dyn_, "/usr/local/bin/dyn-other"),
            (loader, LOADER),
            (libc, LIBC),
        ],
    )
}

/// The lab's own tag (`lab-TAG` is its directory), from a path inside it.
fn lab_tag(inside: &Path) -> String {
    inside
        .parent()
        .and_then(|lab| lab.file_name())
        .map(|n| n.to_string_lossy().trim_start_matches("lab-").to_string())
        .unwrap_or_default()
}

/// An output zone the policy's (non-root) user can delete in.
fn output_dir(lab: &Lab) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let out = lab.host_dir("out")?;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777))?;
    Ok(out)
}

/// A lab with the tools image and an output zone `/output` holding the file `keep`.
struct ToolsLab<'a> {
    env: &'a TestEnv,
    lab: Lab<'a>,
    image: String,
    /// The host side of `/output`.
    out: PathBuf,
    /// `/output/keep` on the host: the file a forbidden program would delete.
    keep: PathBuf,
}

/// The tools the scenarios list unless they need others.
const TOOLS: &[&str] = &["/bin/sh", "/bin/echo", "/usr/bin/dyn"];

impl<'a> ToolsLab<'a> {
    fn new(env: &'a TestEnv, tag: &str) -> Result<ToolsLab<'a>> {
        let lab = Lab::new(env, tag)?;
        let out = output_dir(&lab)?;
        let image = tools_image(env, &lab)?;
        let keep = out.join("keep");
        Ok(ToolsLab {
            env,
            lab,
            image,
            out,
            keep,
        })
    }

    /// Writes policy `name`: the output zone (and `/input` from `input`, read-only), `tools`,
    /// `record`, `on_violation`.
    fn policy(
        &self,
        name: &str,
        tools: &[&str],
        record: &str,
        on_violation: &str,
        input: Option<&Path>,
    ) -> Result<()> {
        let inputs = input
            .map(|i| {
                format!(
                    "inputs: [{{source: {:?}, path: /input}}], ",
                    i.display().to_string()
                )
            })
            .unwrap_or_default();
        self.lab.policy(
            name,
            &format!(
                "{{filesystem: {{{inputs}outputs: [{{source: {:?}, path: /output}}]}}, \
                 process: {{tools: [{}]}}, \
                 audit: {{record: [{record}], onViolation: {on_violation}}}}}",
                self.out.display().to_string(),
                tools.join(", ")
            ),
        )
    }

    /// `ctr run --rm` of `argv` under `policy`, to completion.
    fn run(&self, policy: &str, id: &str, argv: &[&str]) -> Result<Output> {
        self.run_with(policy, &[], id, argv)
    }

    /// The same with more `ctr run` flags.
    fn run_with(&self, policy: &str, flags: &[&str], id: &str, argv: &[&str]) -> Result<Output> {
        let flags: Vec<&str> = ["--rm"].iter().chain(flags).copied().collect();
        self.env.ctr.run_timeout(
            &self
                .lab
                .argv_of(&self.image, Some(policy), &flags, id, argv),
            Duration::from_secs(90),
        )
    }

    /// `/bin/sh -c script` the same way.
    fn sh(&self, policy: &str, id: &str, script: &str) -> Result<Output> {
        self.run(policy, id, &["/bin/sh", "-c", script])
    }
}

/// A forbidden static program whose first act is to delete a file in the writable output zone
/// never runs: the file is there after each of 20 runs, as the init and from a listed shell.
pub fn forbidden_binary_never_runs(env: &TestEnv) -> Result<()> {
    let t = ToolsLab::new(env, "tools-forbidden")?;
    t.policy("tools", TOOLS, "process", "kill", None)?;
    let keep = &t.keep;
    let ids: Vec<String> = (0..20).map(|i| env.id(&format!("forbid{i}"))).collect();
    let shell = env.id("forbidsh");
    let mut all: Vec<&str> = ids.iter().map(String::as_str).collect();
    all.push(&shell);
    env.scenario(&all, || {
        for id in &ids {
            fs::write(keep, "precious")?;
            let run = t.run(
                "tools",
                id,
                &["/usr/local/bin/probe", "unlink", "/output/keep"],
            )?;
            ensure!(
                keep.is_file() && !says(&run, "PROBE-RAN"),
                "run {id}: the forbidden program ran (output file gone: {}): {}",
                !keep.is_file(),
                run.describe()
            );
            ensure!(
                !run.success(),
                "run {id}: an init that cannot run succeeded: {}",
                run.describe()
            );
            let _ = t.lab.remove_container(id);
        }
        fs::write(keep, "precious")?;
        let run = t.sh(
            "tools",
            &shell,
            "/usr/local/bin/probe unlink /output/keep; echo rc=$?",
        )?;
        ensure!(
            keep.is_file()
                && !says(&run, "PROBE-RAN")
                && says(&run, "Permission denied")
                && says(&run, "rc=126"),
            "from a listed shell: {}",
            run.describe()
        );
        Ok(())
    })
}

/// busybox: with `tools: [/bin/sh, /bin/echo]` every applet is the same file, yet `/bin/cat`
/// cannot be `execve`d (as the init or from the shell) and neither can `/bin/busybox`, while
/// `/bin/echo` can.
pub fn busybox_applets_are_not_tools(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "tools-busybox")?;
    lab.policy(
        "sh-echo",
        "{process: {tools: [/bin/sh, /bin/echo]}, audit: {onViolation: kill}}",
    )?;
    let init = env.id("bbcat");
    let shell = env.id("bbsh");
    env.scenario(&[&init, &shell], || {
        let run = lab.run(
            Some("sh-echo"),
            &["--rm"],
            &init,
            &["/bin/cat", "/etc/passwd"],
        )?;
        ensure!(
            !run.success() && !says(&run, "root:x:0"),
            "/bin/cat as the init: {}",
            run.describe()
        );
        let _ = lab.remove_container(&init);
        let script = "/bin/echo echo-ran; /bin/cat /etc/passwd; echo cat=$?; \
                      /bin/busybox cat /etc/passwd; echo busybox=$?";
        let run = lab.run(
            Some("sh-echo"),
            &["--rm"],
            &shell,
            &["/bin/sh", "-c", script],
        )?;
        ensure!(
            says(&run, "echo-ran")
                && says(&run, "cat=126")
                && says(&run, "busybox=126")
                && !says(&run, "root:x:0"),
            "from the shell: {}",
            run.describe()
        );
        Ok(())
    })
}

/// A listed dynamic program runs (its loader is bound exec-allowed, its libc stays on a
/// noexec mount), while the very same program under an unlisted path does not; every mount
/// but the tool binds and the seccomp exec helper's directory (`tools` adds a seccomp rule, so
/// the container has a profile) is noexec.
pub fn dynamic_tool_runs_and_mounts_are_noexec(env: &TestEnv) -> Result<()> {
    let t = ToolsLab::new(env, "tools-dynamic")?;
    t.policy("tools", TOOLS, "process", "kill", None)?;
    let id = env.id("tooldyn");
    env.scenario(&[&id], || {
        // Only shell builtins read /proc/mounts (cat is not a tool).
        let script = "/usr/bin/dyn; echo dyn=$?; /usr/local/bin/dyn-other; echo other=$?; \
                      while read -r dev at typ opts rest; do echo \"MOUNT $at $opts\"; done < /proc/mounts";
        let run = t.sh("tools", &id, script)?;
        ensure!(
            says(&run, "DYNAMIC-RAN") && says(&run, "dyn=0") && says(&run, "other=126"),
            "listed and unlisted dynamic program: {}",
            run.describe()
        );
        let exec_allowed: Vec<&str> = run
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("MOUNT "))
            .filter(|l| {
                let opts = l.split(' ').nth(1).unwrap_or("");
                !opts.split(',').any(|o| o == "noexec")
            })
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        let mut expected = vec![
            "/.safehouse",
            "/bin/echo",
            "/bin/sh",
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "/usr/bin/dyn",
        ];
        expected.sort_unstable();
        let mut got = exec_allowed.clone();
        got.sort_unstable();
        // The loader is bound where it resolves; the host's may be named otherwise.
        ensure!(
            got.len() == expected.len()
                && got.contains(&"/bin/sh")
                && got.contains(&"/bin/echo")
                && got.contains(&"/usr/bin/dyn")
                && got.contains(&"/.safehouse")
                && got.iter().any(|m| m.contains("ld-linux")),
            "exec-allowed mounts: {got:?}, expected {expected:?}: {}",
            run.describe()
        );
        Ok(())
    })
}

/// `audit.record: [file]` (no `process`) does not turn the list off: the construction does not
/// depend on the stream.
pub fn tools_hold_without_recording_process(env: &TestEnv) -> Result<()> {
    let t = ToolsLab::new(env, "tools-record")?;
    t.policy("tools-file", TOOLS, "file", "kill", None)?;
    let id = env.id("toolrec");
    env.scenario(&[&id], || {
        fs::write(&t.keep, "precious")?;
        let run = t.sh(
            "tools-file",
            &id,
            "/usr/local/bin/probe unlink /output/keep; echo rc=$?",
        )?;
        ensure!(
            t.keep.is_file() && !says(&run, "PROBE-RAN") && says(&run, "rc=126"),
            "record: [file] + tools: {}",
            run.describe()
        );
        Ok(())
    })
}

/// A listed program that runs other code the way an interpreter can: `memexec FILE ARGS...`
/// copies FILE into an anonymous memfd and `fexecve`s it (no path, no mount involved).
const MEMEXEC_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int in = open(argv[1], O_RDONLY);
    if (in < 0) { printf("MEMEXEC-OPEN-FAILED errno=%d\n", errno); return 3; }
    int fd = memfd_create("payload", 0);
    if (fd < 0) { printf("MEMEXEC-MEMFD-FAILED errno=%d\n", errno); return 4; }
    char buf[65536];
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        if (write(fd, buf, n) != n) { printf("MEMEXEC-WRITE-FAILED\n"); return 5; }
    }
    fflush(stdout);
    fexecve(fd, argv + 1, environ);
    printf("MEMEXEC-EXEC-FAILED errno=%d (%s)\n", errno, strerror(errno));
    return 126;
}
"#;

/// Payloads that reach code without `execve` of a listed path, as an agent would try them
/// with a listed program that runs other code (here `memexec`, standing for an interpreter):
/// - the forbidden probe copied into a memfd and `fexecve`d: `memfd_create` fails (EPERM) by
///   construction (the seccomp rule `tools` adds), so the probe never runs;
/// - a forbidden exec issued while the container floods the audit stream with file events:
///   refused by the mounts (126), the stream plays no part;
/// - the ELF loader (exec-allowed for the listed dynamic tool) run as a program on an unlisted
///   dynamic probe: no mount stops it on this runsc (it maps the probe without `execve`), so it
///   is caught after the fact: the exec of the loader's path is a violation and the sandbox is
///   killed (137), with the violation naming the loader.
pub fn payloads_without_a_listed_path_never_run(env: &TestEnv) -> Result<()> {
    let t = ToolsLab::new(env, "tools-payloads")?;
    t.policy(
        "payloads",
        &["/bin/sh", "/bin/echo", "/usr/bin/dyn", "/usr/bin/memexec"],
        "process, file",
        "kill",
        None,
    )?;
    let (lab, keep) = (&t.lab, &t.keep);
    let memfd = env.id("paymemfd");
    let flood = env.id("payflood");
    let loader_id = env.id("payloader");
    env.scenario(&[&memfd, &flood, &loader_id], || {
        let run_in = |id: &str, script: &str| -> Result<Output> {
            fs::write(keep, "precious")?;
            let run = t.sh("payloads", id, script)?;
            let _ = lab.remove_container(id);
            Ok(run)
        };

        let run = run_in(
            &memfd,
            "/usr/bin/memexec /usr/local/bin/probe unlink /output/keep; echo rc=$?",
        )?;
        ensure!(
            keep.is_file()
                && !says(&run, "PROBE-RAN")
                && says(&run, "MEMEXEC-MEMFD-FAILED errno=1"),
            "memfd + fexecve: expected memfd_create to fail with EPERM and the output file kept (gone: {}): {}",
            !keep.is_file(),
            run.describe()
        );

        let run = run_in(
            &flood,
            "i=0; while [ $i -lt 2000 ]; do echo x > /output/f$i; i=$((i+1)); done & \
             /usr/local/bin/probe unlink /output/keep; echo rc=$?; wait",
        )?;
        ensure!(
            keep.is_file() && !says(&run, "PROBE-RAN") && says(&run, "rc=126"),
            "a forbidden exec during a flood of file events (gone: {}): {}",
            !keep.is_file(),
            run.describe()
        );

        let run = run_in(
            &loader_id,
            &format!(
                "{LOADER} /usr/local/bin/probe-dyn unlink /output/keep; echo rc=$?; \
                 i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done; echo SURVIVED"
            ),
        )?;
        // Caught after the fact: the mapped program and the shell may run on for as long as
        // the kill takes (the docs say so), so what is asserted is that it ends in the kill,
        // seconds before the shell's loop could finish.
        ensure!(
            run.code == Some(137) && !says(&run, "SURVIVED"),
            "the loader run as a program: expected the sandbox killed (137): {}",
            run.describe()
        );
        lab.wait_audit(&loader_id, "a violation naming the loader", |e| {
            e["action"] == "violation"
                && e["violation"]["rule"] == "process.tools"
                && e["violation"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("ld-linux"))
        })?;
        // The shim confirmed the stop: every thread of the sandbox was exiting.
        let kill = lab.wait_audit(&loader_id, "the violation's kill event", |e| {
            e["action"] == "kill" && e["actor"] == "safehouse (policy violation)"
        })?;
        ensure!(
            kill["detail"]["stopped_after_us"].as_u64().is_some(),
            "the kill event should say how soon the sandbox stopped: {kill}"
        );
        Ok(())
    })
}

/// Processes started by `ctr task exec` (`runsc exec`) under `tools`: runsc gives them no
/// seccomp filter, so the shim starts them through its helper, which installs the container's
/// profile, the rule `tools` adds with it. With `record: [process]` and `onViolation: kill`:
/// - a listed tool exec'd runs, and is no violation (the sandbox lives on);
/// - `memexec` exec'd (listed) cannot `memfd_create`: EPERM, the probe never runs;
/// - an unlisted program exec'd still cannot run (EACCES from its `noexec` mount);
/// - the helper run by hand from the container is itself an unlisted exec: a violation naming
///   it, and the sandbox is killed, while the program it was asked to run never runs.
pub fn exec_gets_the_profile_and_the_list(env: &TestEnv) -> Result<()> {
    let t = ToolsLab::new(env, "tools-exec")?;
    t.policy(
        "execs",
        &["/bin/sh", "/bin/echo", "/bin/sleep", "/usr/bin/memexec"],
        "process",
        "kill",
        None,
    )?;
    let (lab, image, keep) = (&t.lab, &t.image, &t.keep);
    let id = env.id("toolexec");
    env.scenario(&[&id], || {
        fs::write(keep, "precious")?;
        let init = Running::start(env.ctr.command().args(lab.argv_of(
            image,
            Some("execs"),
            &["--rm"],
            &id,
            &["/bin/sleep", "1000"],
        )))?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(60))?;

        let run = env.ctr_exec(&id, "listed", &["/bin/echo", "listed-ran"])?;
        ensure!(
            run.success() && says(&run, "listed-ran"),
            "a listed tool exec'd: {}",
            run.describe()
        );

        let run = env.ctr_exec(
            &id,
            "memfd",
            &[
                "/usr/bin/memexec",
                "/usr/local/bin/probe",
                "unlink",
                "/output/keep",
            ],
        )?;
        ensure!(
            keep.is_file()
                && !says(&run, "PROBE-RAN")
                && says(&run, "MEMEXEC-MEMFD-FAILED errno=1"),
            "memfd + fexecve from an exec'd process: expected memfd_create to fail with EPERM (output file gone: {}): {}",
            !keep.is_file(),
            run.describe()
        );

        let run = env.ctr_exec(
            &id,
            "unlisted",
            &["/usr/local/bin/probe", "unlink", "/output/keep"],
        )?;
        ensure!(
            keep.is_file() && !says(&run, "PROBE-RAN") && !run.success(),
            "an unlisted program exec'd ran (output file gone: {}): {}",
            !keep.is_file(),
            run.describe()
        );
        let task = env.ctr.task(&id)?;
        ensure!(
            task.as_ref().is_some_and(|t| t.status == "RUNNING"),
            "the sandbox should live on after execs of listed tools: {task:?}"
        );
        let violations: Vec<Value> = lab
            .audit_events(&id)
            .into_iter()
            .filter(|e| e["action"] == "violation")
            .collect();
        ensure!(
            violations.is_empty(),
            "execs through the helper counted as violations: {violations:?}"
        );

        let _ = env.ctr_exec(
            &id,
            "byhand",
            &[
                "/bin/sh",
                "-c",
                "/.safehouse/seccomp-exec -- /usr/local/bin/probe unlink /output/keep; echo rc=$?",
            ],
        );
        ensure!(
            keep.is_file(),
            "the helper run by hand ran an unlisted program"
        );
        lab.wait_audit(&id, "a violation naming the helper run by hand", |e| {
            e["action"] == "violation"
                && e["violation"]["rule"] == "process.tools"
                && e["violation"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("/.safehouse/seccomp-exec"))
        })?;
        let init = init.wait(Duration::from_secs(60))?;
        ensure!(
            init.code == Some(137),
            "the sandbox should be killed for the violation: {}",
            init.describe()
        );
        Ok(())
    })
}

/// A shared library whose constructor does the probe's work: `PRELOAD-RAN` and the unlink
/// of `/output/keep`, before the program it was preloaded into starts.
const PRELOAD_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void payload(void) {
    int r = unlink("/output/keep");
    printf("PRELOAD-RAN unlink=%d\n", r);
    fflush(stdout);
}
"#;

/// A tools lab whose policy `preload` lists [`TOOLS`] and reads `/input`, which holds
/// `payload.so`: a library whose constructor deletes `/output/keep` and says `PRELOAD-RAN`.
fn preload_lab<'a>(env: &'a TestEnv, tag: &str) -> Result<ToolsLab<'a>> {
    let t = ToolsLab::new(env, tag)?;
    let dir = t.lab.path("tools-image");
    let lib = dir.join("payload.so");
    let c = dir.join("payload.c");
    fs::write(&c, PRELOAD_C)?;
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&c)
        .status()
        .context("run gcc (install gcc: make deps)")?;
    ensure!(status.success(), "gcc payload.so: {status}");
    let input = t.lab.host_dir("in")?;
    fs::copy(&lib, input.join("payload.so"))?;
    t.policy("preload", TOOLS, "file", "kill", Some(&input))?;
    Ok(t)
}

/// Code the agent wrote, run inside a listed dynamic tool through the loader's environment:
/// `LD_PRELOAD=/input/x.so /usr/bin/dyn` (bytes the agent did not bring as a tool, on a
/// `noexec` zone; an agent would write them to its scratch space). No mount stops it on runsc 20240729 (the loader maps
/// the library from a `noexec` zone, and that runsc checks `noexec` on `execve` only), and the
/// exec is of a listed tool. The exec event carries the loader variables (only those, never
/// the rest of the environment), and an exec under `tools` with one is a violation: the
/// sandbox is killed, with a violation naming the variable.
pub fn preloaded_library_in_a_listed_tool_is_a_violation(env: &TestEnv) -> Result<()> {
    let t = preload_lab(env, "tools-preload")?;
    let (lab, keep) = (&t.lab, &t.keep);
    let id = env.id("toolpreload");
    let plain = env.id("toolplain");
    env.scenario(&[&id, &plain], || {
        fs::write(keep, "precious")?;
        let run = t.sh("preload", &plain, "/usr/bin/dyn; echo rc=$?")?;
        ensure!(
            says(&run, "DYNAMIC-RAN") && says(&run, "rc=0"),
            "the listed dynamic tool runs without a preload: {}",
            run.describe()
        );
        let run = t.sh(
            "preload",
            &id,
            "LD_PRELOAD=/input/payload.so /usr/bin/dyn; echo rc=$?; \
             i=0; while [ $i -lt 3000000 ]; do i=$((i+1)); done; echo SURVIVED",
        )?;
        ensure!(
            run.code == Some(137) && !says(&run, "SURVIVED"),
            "LD_PRELOAD into a listed tool: expected the sandbox killed (137): {}",
            run.describe()
        );
        let v = lab.wait_audit(&id, "a violation naming LD_PRELOAD", |e| {
            e["action"] == "violation"
                && e["violation"]["rule"] == "process.tools"
                && e["violation"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("LD_PRELOAD"))
        })?;
        ensure!(
            v["policy"]["name"] == "preload",
            "labelled with the container's policy: {v}"
        );
        // The shim's own record of the end says why the sandbox died.
        lab.wait_audit(&id, "the container's exit with reason violation", |e| {
            e["category"] == "lifecycle"
                && e["action"] == "exit"
                && e["container_id"] == id.as_str()
                && e["exit"]["reason"] == "violation"
        })?;
        Ok(())
    })
}

/// A listed program that runs a file through a descriptor instead of its path, the ways that
/// skip a path check: `fdexec FILE ARGS...` opens FILE `O_PATH`, tries `execveat(fd, "",
/// AT_EMPTY_PATH)`, then opens it for reading and tries `execve("/proc/self/fd/N")`.
const FDEXEC_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[1], O_PATH);
    if (fd < 0) { printf("FDEXEC-OPEN-FAILED errno=%d\n", errno); return 3; }
    fflush(stdout);
    syscall(SYS_execveat, fd, "", argv + 1, environ, AT_EMPTY_PATH);
    printf("FDEXEC-EXECVEAT-FAILED errno=%d\n", errno);
    int rd = open(argv[1], O_RDONLY);
    if (rd < 0) { printf("FDEXEC-OPEN-FAILED errno=%d\n", errno); return 3; }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", rd);
    fflush(stdout);
    execve(path, argv + 1, environ);
    printf("FDEXEC-PROCFD-FAILED errno=%d\n", errno);
    return 126;
}
"#;

/// An unlisted file run through a descriptor (`execveat` on an `O_PATH` fd, `/proc/self/fd/N`)
/// by a listed program: the mount of the file is `noexec` whichever name reaches it, so both
/// fail with EACCES and the probe never runs; while a listed tool reached the same way runs.
pub fn descriptor_paths_to_an_unlisted_file_never_run(env: &TestEnv) -> Result<()> {
    let t = ToolsLab::new(env, "tools-fd")?;
    t.policy(
        "fdexec",
        &["/bin/sh", "/bin/echo", "/usr/bin/dyn", "/usr/bin/fdexec"],
        "file",
        "record",
        None,
    )?;
    let id = env.id("toolfd");
    env.scenario(&[&id], || {
        let run = t.sh(
            "fdexec",
            &id,
            "echo kept > /output/keep; \
             /usr/bin/fdexec /usr/local/bin/probe unlink /output/keep; \
             echo rc=$?; [ -f /output/keep ] && echo KEEP-THERE; \
             /usr/bin/fdexec /usr/bin/dyn",
        )?;
        ensure!(
            !says(&run, "PROBE-RAN")
                && says(&run, &format!("FDEXEC-EXECVEAT-FAILED errno={}", libc::EACCES))
                && says(&run, &format!("FDEXEC-PROCFD-FAILED errno={}", libc::EACCES))
                && says(&run, "KEEP-THERE"),
            "an unlisted file run through a descriptor: expected EACCES both ways and the probe never run: {}",
            run.describe()
        );
        ensure!(
            says(&run, "DYNAMIC-RAN"),
            "a listed tool reached through a descriptor still runs: {}",
            run.describe()
        );
        Ok(())
    })
}

/// The loader's environment set by the spec (a pod's `env`, an image's `ENV`, `ctr run
/// --env`), not by the agent: with `tools`, a spec that sets `LD_PRELOAD`, or a
/// `LD_LIBRARY_PATH` into a zone the agent can fill, is refused at create naming the variable
/// and the policy, and the library never loads; an `LD_LIBRARY_PATH` of the image's own
/// directories runs. (Before, the exec matched the spec, so the stream saw nothing new and the
/// payload ran in the listed tool.)
pub fn loader_variables_in_the_spec_are_refused(env: &TestEnv) -> Result<()> {
    let t = preload_lab(env, "tools-specenv")?;
    let ids: Vec<String> = ["envpre", "envlib", "envok"]
        .iter()
        .map(|n| env.id(n))
        .collect();
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    env.scenario(&all, || {
        for (id, var, names) in [
            (&ids[0], "LD_PRELOAD=/input/payload.so", "process.env"),
            (&ids[1], "LD_LIBRARY_PATH=/input", "lies in the mount at /input"),
        ] {
            fs::write(&t.keep, "precious")?;
            let run = t.run_with("preload", &["--env", var], id, &["/usr/bin/dyn"])?;
            let _ = t.lab.remove_container(id);
            let variable = var.split('=').next().unwrap_or(var);
            ensure!(
                !run.success()
                    && !says(&run, "PRELOAD-RAN")
                    && !says(&run, "DYNAMIC-RAN")
                    && t.keep.is_file()
                    && says(&run, names)
                    && says(&run, variable)
                    && says(&run, "policy \"preload\""),
                "{var} in the spec: expected a refusal naming it, the field and the policy, and the library never loaded (output file gone: {}): {}",
                !t.keep.is_file(),
                run.describe()
            );
        }
        let run = t.run_with(
            "preload",
            &["--env", "LD_LIBRARY_PATH=/usr/local/lib:/usr/lib"],
            &ids[2],
            &["/usr/bin/dyn"],
        )?;
        ensure!(
            run.success() && says(&run, "DYNAMIC-RAN"),
            "an LD_LIBRARY_PATH of the image's own directories runs: {}",
            run.describe()
        );
        Ok(())
    })
}
