//! `safehouse node install|uninstall` and `safehouse doctor` on this machine, never touching
//! the node's own containerd: the installer writes into a private tree (its own containerd
//! config, prefix and config dir), containerd reads that config (`config dump`), a second
//! private containerd started from it runs a container through the installed shim, and
//! uninstall gives the original config back. Doctor runs against the harness's containerd and
//! against a broken setup (runsc missing, shim not on PATH).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use safehouse_integration::command::{run, Output};
use safehouse_integration::runtime::{locate_shim, target_dir, SAFEHOUSE_RUNTIME_TYPE};
use safehouse_integration::suite::only_for;
use safehouse_integration::{RuntimeKind, Scenario, TestEnv};
use serde_json::Value;

fn main() -> ExitCode {
    safehouse_integration::suite::main(&[
        Scenario {
            name: "node::install_run_uninstall_private_containerd",
            run: install_run_uninstall_private_containerd,
        },
        Scenario {
            name: "node::install_dropin_for_containerd_2",
            run: install_dropin_for_containerd_2,
        },
        Scenario {
            name: "node::installer_image_installs_a_node",
            run: installer_image_installs_a_node,
        },
        Scenario {
            name: "node::doctor_on_this_machine",
            run: doctor_on_this_machine,
        },
        Scenario {
            name: "node::doctor_finds_a_broken_setup",
            run: doctor_finds_a_broken_setup,
        },
    ])
}

fn cli() -> Result<PathBuf> {
    ["debug", "release"]
        .iter()
        .map(|p| target_dir().join(p).join("safehouse"))
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .context("no target/{debug,release}/safehouse: run cargo build -p safehouse-cli")
}

fn safehouse(args: &[&str], path_env: Option<&str>) -> Result<Output> {
    let mut cmd = Command::new(cli()?);
    cmd.args(args);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    run(&mut cmd, Duration::from_secs(120))
}

/// A containerd of the test's own, stopped by PID on drop.
struct OwnContainerd {
    child: Child,
}

impl Drop for OwnContainerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_containerd(
    config: &Path,
    path_env: &str,
    log: &Path,
    sock: &Path,
) -> Result<OwnContainerd> {
    let log = fs::File::create(log)?;
    let mut cmd = Command::new("containerd");
    cmd.arg("--config")
        .arg(config)
        .env("PATH", path_env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut own = OwnContainerd {
        child: safehouse_integration::containerd::spawn_bound_to_tests(cmd)
            .context("start containerd")?,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = own.child.try_wait()? {
            bail!("the private containerd exited at start: {status}");
        }
        if sock.exists() {
            let out = run(
                Command::new("ctr").arg("-a").arg(sock).arg("version"),
                Duration::from_secs(5),
            )?;
            if out.success() {
                return Ok(own);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the private containerd did not answer on {}",
                sock.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The operator's config of the private node: CRI settings that must survive the install.
fn operator_config(r: &Path) -> String {
    let p = |s: &str| r.join(s).display().to_string();
    format!(
        r#"# The operator's own containerd config (a private one for this test).
version = 2
root = {root:?}
state = {state:?}

[grpc]
  address = {grpc:?}

[ttrpc]
  address = {ttrpc:?}

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt:?}

[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  sandbox_image = "docker.io/local/pause:latest"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = {cni:?}
"#,
        root = p("var/lib/containerd"),
        state = p("run/containerd"),
        grpc = p("run/containerd/containerd.sock"),
        ttrpc = p("run/containerd/containerd.sock.ttrpc"),
        opt = p("opt"),
        cni = p("cni"),
    )
}

/// The node install into a private tree, a container through the installed shim, idempotent
/// reinstall (no second restart), and an uninstall that gives back the operator's config.
fn install_run_uninstall_private_containerd(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let id = env.id("node-installed");
    let r = env.scratch("node-root")?;
    let stage = env.scratch("node-stage")?;
    for d in ["bin", "config", "policies"] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::copy(
        locate_shim()?,
        stage.join("bin/containerd-shim-safehouse-v2"),
    )?;
    fs::copy(cli()?, stage.join("bin/safehouse"))?;
    let runsc_root = r.join("run/safehouse/runsc");
    fs::write(
        stage.join("config/config.toml"),
        format!(
            "root = {:?}\n[audit]\noutput = {:?}\n",
            runsc_root.display().to_string(),
            r.join("audit.jsonl").display().to_string()
        ),
    )?;
    let cfg = r.join("etc/containerd/config.toml");
    fs::create_dir_all(cfg.parent().context("parent")?)?;
    let original = operator_config(&r);
    fs::write(&cfg, &original)?;
    let restarts = r.join("restarts");
    let restart = format!("echo restarted >> {}", restarts.display());
    let s = |p: &Path| p.display().to_string();
    let (prefix, confdir, dropin) = (
        s(&r.join("usr/local")),
        s(&r.join("etc/safehouse")),
        s(&r.join("etc/containerd/conf.d/safehouse.toml")),
    );
    let (cfg_s, stage_s) = (s(&cfg), s(&stage));
    let common = [
        "--prefix",
        prefix.as_str(),
        "--config-dir",
        confdir.as_str(),
        "--containerd-config",
        cfg_s.as_str(),
        "--dropin",
        dropin.as_str(),
        "--handler",
        "safehouse=config.toml",
        "--restart-command",
        restart.as_str(),
    ];
    let mut install = vec!["node", "install", "--from", stage_s.as_str()];
    install.extend_from_slice(&common);
    let out = safehouse(&install, None)?;
    ensure!(out.success(), "install: {}", out.describe());
    ensure!(
        out.stdout
            .contains("check: handler safehouse: runsc /usr/bin/runsc"),
        "install should report the runsc it found: {}",
        out.describe()
    );

    // containerd itself reads the edit (each 1.x version at hand): handler present, the
    // operator's settings and containerd's runc runtime kept.
    for bin in containerd_binaries(1) {
        let cri = cri_of(&dump(&bin, &cfg)?, "io.containerd.grpc.v1.cri")?;
        let handler = &cri["containerd"]["runtimes"]["safehouse"];
        ensure!(
            handler["runtime_type"].as_str() == Some(SAFEHOUSE_RUNTIME_TYPE)
                && handler["options"]["ConfigPath"].as_str()
                    == Some(&format!("{confdir}/config.toml")),
            "{}: handler in the merged config: {handler:?}",
            bin.display()
        );
        ensure!(
            cri["restrict_oom_score_adj"].as_bool() == Some(true)
                && cri["containerd"]["runtimes"]["runc"]["runtime_type"].as_str()
                    == Some("io.containerd.runc.v2"),
            "{}: the operator's CRI settings or the runc runtime were lost: {cri:?}",
            bin.display()
        );
    }

    // A container through the installed shim (containerd finds it on PATH in the prefix).
    let path_env = format!("{prefix}/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let sock = r.join("run/containerd/containerd.sock");
    let ns = format!("safehouse-node-{}", std::process::id());
    let result = (|| -> Result<()> {
        let own = start_containerd(&cfg, &path_env, &r.join("containerd.log"), &sock)?;
        safehouse_integration::image::import_busybox(std::path::Path::new("ctr"), &sock, &ns)?;
        let ctr = |args: &[&str]| {
            run(
                Command::new("ctr")
                    .arg("-a")
                    .arg(&sock)
                    .arg("-n")
                    .arg(&ns)
                    .args(args),
                Duration::from_secs(60),
            )
        };
        let conf = format!("{confdir}/config.toml");
        let out = ctr(&[
            "run",
            "--rm",
            "--runtime",
            SAFEHOUSE_RUNTIME_TYPE,
            "--runtime-config-path",
            &conf,
            "--fifo-dir",
            &s(&r.join("fifo")),
            safehouse_integration::image::BUSYBOX_IMAGE,
            &id,
            "sh",
            "-c",
            "echo installed-shim-ran; uname -s",
        ])?;
        ensure!(
            out.success() && out.stdout == "installed-shim-ran\nLinux\n",
            "container through the installed shim: {}",
            out.describe()
        );
        ensure!(
            ctr(&["containers", "ls", "-q"])?.stdout.trim().is_empty(),
            "container left behind"
        );
        drop(own);
        Ok(())
    })();
    // The namespace-level cgroup runsc made for `/NAMESPACE/ID` stays after the container
    // (as with every ctr namespace); this test's namespace is its own to remove.
    safehouse_integration::leaks::remove_namespace_cgroups(&ns);
    // Whatever happened, the runsc state of the private tree must be empty.
    let leftovers: Vec<PathBuf> = fs::read_dir(&runsc_root)
        .map(|d| {
            d.flatten()
                .flat_map(|e| {
                    fs::read_dir(e.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|x| x.path())
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    result?;
    ensure!(leftovers.is_empty(), "runsc state left: {leftovers:?}");

    // Reinstall: nothing changes, no restart.
    let again = safehouse(&install, None)?;
    ensure!(again.success(), "reinstall: {}", again.describe());
    ensure!(
        again.stdout.contains("unchanged: no restart"),
        "reinstall should change nothing: {}",
        again.describe()
    );
    ensure!(
        fs::read_to_string(&restarts)?.lines().count() == 1,
        "containerd must be restarted once (only when its config changed)"
    );

    let mut uninstall = vec!["node", "uninstall"];
    uninstall.extend_from_slice(&common);
    let out = safehouse(&uninstall, None)?;
    ensure!(out.success(), "uninstall: {}", out.describe());
    ensure!(
        fs::read_to_string(&cfg)? == original,
        "uninstall must give back the operator's config byte for byte:\n{}",
        fs::read_to_string(&cfg)?
    );
    ensure!(
        !Path::new(&prefix)
            .join("bin/containerd-shim-safehouse-v2")
            .exists(),
        "shim left on the node"
    );
    ensure!(
        fs::read_to_string(&restarts)?.lines().count() == 2,
        "uninstall restarts containerd once"
    );
    Ok(())
}

/// The system containerd and the private matrix builds of major version `major`.
fn containerd_binaries(major: u32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if major == 1 {
        out.push(PathBuf::from("containerd"));
    }
    let matrix = std::env::var_os("SAFEHOUSE_CONTAINERD_MATRIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/safehouse-test/containerd"));
    for e in fs::read_dir(matrix).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let bin = e.path().join("usr/bin/containerd");
        if name.starts_with(&format!("{major}.")) && bin.is_file() {
            out.push(bin);
        }
    }
    out
}

fn dump(bin: &Path, cfg: &Path) -> Result<toml::Table> {
    let out = run(
        Command::new(bin)
            .arg("--config")
            .arg(cfg)
            .args(["config", "dump"]),
        Duration::from_secs(30),
    )?
    .ok()?;
    out.stdout.parse().context("config dump is TOML")
}

fn cri_of(dumped: &toml::Table, plugin: &str) -> Result<toml::Value> {
    dumped
        .get("plugins")
        .and_then(|p| p.get(plugin))
        .cloned()
        .with_context(|| format!("no plugin {plugin} in the dump"))
}

/// containerd 2.x (version 3 config): a drop-in and an `imports` entry; containerd's merged
/// config has the handler and keeps the operator's runc options; uninstall restores the file.
fn install_dropin_for_containerd_2(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let bins = containerd_binaries(2);
    if bins.is_empty() {
        return Err(safehouse_integration::suite::NotApplicable(
            "no containerd 2.x unpacked (scripts/containerd-matrix.sh)".into(),
        )
        .into());
    }
    let r = env.scratch("node-root-2x")?;
    let stage = env.scratch("node-stage-2x")?;
    for d in ["bin", "config"] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::copy(
        locate_shim()?,
        stage.join("bin/containerd-shim-safehouse-v2"),
    )?;
    fs::copy(cli()?, stage.join("bin/safehouse"))?;
    fs::write(stage.join("config/config.toml"), "platform = \"ptrace\"\n")?;
    let cfg = r.join("etc/containerd/config.toml");
    fs::create_dir_all(cfg.parent().context("parent")?)?;
    let original = format!(
        "version = 3\nroot = {:?}\n\n[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n",
        r.join("root").display().to_string()
    );
    fs::write(&cfg, &original)?;
    let s = |p: &Path| p.display().to_string();
    let (prefix, confdir, dropin, cfg_s, stage_s) = (
        s(&r.join("usr/local")),
        s(&r.join("etc/safehouse")),
        s(&r.join("etc/containerd/conf.d/safehouse.toml")),
        s(&cfg),
        s(&stage),
    );
    let common = [
        "--prefix",
        &prefix,
        "--config-dir",
        &confdir,
        "--containerd-config",
        &cfg_s,
        "--dropin",
        &dropin,
        "--handler",
        "safehouse=config.toml",
    ];
    let mut install = vec!["node", "install", "--from", stage_s.as_str()];
    install.extend_from_slice(&common);
    let out = safehouse(&install, None)?;
    ensure!(out.success(), "install: {}", out.describe());
    ensure!(
        Path::new(&dropin).is_file(),
        "no drop-in written: {}",
        out.describe()
    );
    for bin in bins {
        let cri = cri_of(&dump(&bin, &cfg)?, "io.containerd.cri.v1.runtime")?;
        let runtimes = &cri["containerd"]["runtimes"];
        ensure!(
            runtimes["safehouse"]["runtime_type"].as_str() == Some(SAFEHOUSE_RUNTIME_TYPE),
            "{}: handler missing from the merged config: {runtimes:?}",
            bin.display()
        );
        ensure!(
            runtimes["runc"]["options"]["SystemdCgroup"].as_bool() == Some(true),
            "{}: the operator's runc options were lost: {runtimes:?}",
            bin.display()
        );
    }
    let mut uninstall = vec!["node", "uninstall"];
    uninstall.extend_from_slice(&common);
    safehouse(&uninstall, None)?.ok()?;
    ensure!(
        fs::read_to_string(&cfg)? == original,
        "uninstall must restore config.toml"
    );
    ensure!(!Path::new(&dropin).exists(), "drop-in left behind");
    Ok(())
}

/// The installer image (scripts/installer-image.sh, from the binaries under test) run under
/// runc the way the DaemonSet runs it, against a node tree mounted at /host: the binaries it
/// carries run (their libraries came along), and the node gets files and handlers.
fn installer_image_installs_a_node(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let id = env.id("node-image");
    let bin_dir = locate_shim()?.parent().context("shim dir")?.to_path_buf();
    let repo = target_dir().parent().context("repo")?.to_path_buf();
    let built = run(
        Command::new("bash")
            .arg(repo.join("scripts/installer-image.sh"))
            .arg(&bin_dir)
            .current_dir(&repo),
        Duration::from_secs(300),
    )?;
    ensure!(built.success(), "installer-image.sh: {}", built.describe());
    let tarball = target_dir().join("safehouse-node-installer.tar");
    let image = "docker.io/safehouse/node-installer:0.1.0";
    // The image carries the debug binaries (about 90 MB): more than ctr's usual deadline on a
    // loaded machine.
    env.ctr
        .run_timeout(
            &[
                "images",
                "import",
                "--base-name",
                "docker.io/safehouse/node-installer",
                &tarball.display().to_string(),
            ],
            Duration::from_secs(180),
        )?
        .ok()?;
    let r = env.scratch("node-image-host")?;
    fs::create_dir_all(r.join("etc/containerd"))?;
    fs::create_dir_all(r.join("usr/bin"))?;
    fs::copy("/usr/bin/runsc", r.join("usr/bin/runsc"))?;
    let original = "version = 2\n# the operator's\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n";
    fs::write(r.join("etc/containerd/config.toml"), original)?;
    let runc_root = env.scratch("node-image-runc")?;
    let result = env.scenario(&[&id], || {
        let mount = format!("type=bind,src={},dst=/host,options=rbind:rw", r.display());
        let out = env.ctr.run(&[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.runc.v2",
            "--runc-root",
            &runc_root.display().to_string(),
            "--fifo-dir",
            &env.containerd.fifo_dir().display().to_string(),
            "--mount",
            &mount,
            image,
            &id,
            "/opt/safehouse/bin/safehouse",
            "node",
            "install",
            "--from",
            "/opt/safehouse",
            "--host-root",
            "/host",
        ])?;
        ensure!(out.success(), "the installer image: {}", out.describe());
        ensure!(
            out.stdout
                .contains("check: handler safehouse: runsc /usr/bin/runsc"),
            "{}",
            out.describe()
        );
        for f in [
            "usr/local/bin/containerd-shim-safehouse-v2",
            "usr/local/bin/safehouse",
            "etc/safehouse/config.toml",
            "etc/safehouse/config-net.toml",
            "etc/safehouse/policies/network.yaml",
        ] {
            ensure!(r.join(f).is_file(), "{f} not installed: {}", out.describe());
        }
        let after = fs::read_to_string(r.join("etc/containerd/config.toml"))?;
        ensure!(
            after.starts_with(original) && after.contains("runtimes.safehouse-net.options]"),
            "containerd config after the image ran:\n{after}"
        );
        Ok(())
    });
    let _ = env.ctr.run(&["images", "rm", image]);
    result
}

fn doctor_json(out: &Output) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(&out.stdout).with_context(|| out.describe())?;
    Ok(v["checks"].as_array().cloned().unwrap_or_default())
}

fn status_of<'a>(checks: &'a [Value], name: &str) -> &'a str {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("absent")
}

/// On this machine, with the shim on PATH and the harness's containerd config: every required
/// check passes and the exit code is 0.
fn doctor_on_this_machine(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let shim_dir = locate_shim()?
        .parent()
        .context("shim dir")?
        .display()
        .to_string();
    let path_env = format!("{shim_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let config = env
        .containerd
        .shim_config()
        .context("harness shim config")?;
    let out = safehouse(
        &[
            "doctor",
            "--json",
            "--config",
            &config.display().to_string(),
            "--containerd-config",
            &env.containerd.config_path().display().to_string(),
        ],
        Some(&path_env),
    )?;
    let checks = doctor_json(&out)?;
    ensure!(
        out.code == Some(0),
        "doctor should pass here: {}",
        out.describe()
    );
    for name in [
        "config",
        "runsc",
        "platform",
        "shim",
        "containerd",
        "runtime-registered",
        "cgroup",
    ] {
        ensure!(
            status_of(&checks, name) == "ok",
            "check {name} is {}: {}",
            status_of(&checks, name),
            out.stdout
        );
    }
    Ok(())
}

/// runsc missing (the config names a binary that is not there) and the shim not on PATH: both
/// fail with a fix, the exit code is 1, and the text output names them.
fn doctor_finds_a_broken_setup(env: &TestEnv) -> Result<()> {
    only_for(env, RuntimeKind::Safehouse)?;
    let dir = env.scratch("doctor-broken")?;
    let config = dir.join("config.toml");
    fs::write(&config, "binary = \"/nonexistent/safehouse-test/runsc\"\n")?;
    let args = [
        "doctor",
        "--config",
        &config.display().to_string(),
        "--containerd-config",
        &env.containerd.config_path().display().to_string(),
    ];
    let text = safehouse(&args, Some("/usr/sbin:/usr/bin:/sbin:/bin"))?;
    ensure!(
        text.code == Some(1),
        "doctor must fail: {}",
        text.describe()
    );
    ensure!(
        text.stdout.contains("[FAIL] runsc") && text.stdout.contains("fix: apt-get install"),
        "runsc failure and its fix: {}",
        text.describe()
    );
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = safehouse(&json_args, Some("/usr/sbin:/usr/bin:/sbin:/bin"))?;
    let checks = doctor_json(&out)?;
    ensure!(
        out.code == Some(1),
        "doctor --json must fail too: {}",
        out.describe()
    );
    for name in ["runsc", "shim"] {
        let c = checks
            .iter()
            .find(|c| c["name"] == name)
            .context(name.to_string())?;
        ensure!(
            c["status"] == "fail" && c["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "{name}: {c}"
        );
    }
    ensure!(
        status_of(&checks, "platform") == "absent",
        "no platform probe without runsc"
    );

    // A registered handler whose ConfigPath is gone fails too, named.
    let containerd_config = dir.join("containerd.toml");
    fs::write(
        &containerd_config,
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gone]\nruntime_type = \"io.containerd.safehouse.v2\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gone.options]\nConfigPath = \"/nonexistent/safehouse-test/gone.toml\"\n",
    )?;
    let out = safehouse(
        &[
            "doctor",
            "--json",
            "--containerd-config",
            &containerd_config.display().to_string(),
        ],
        None,
    )?;
    let checks = doctor_json(&out)?;
    let gone = checks
        .iter()
        .find(|c| c["name"] == "handler-config")
        .context("handler-config check")?;
    ensure!(
        gone["status"] == "fail"
            && gone["detail"]
                .as_str()
                .is_some_and(|d| d.contains("handler gone")),
        "{gone}"
    );
    ensure!(out.code == Some(1), "doctor must fail: {}", out.describe());
    Ok(())
}
