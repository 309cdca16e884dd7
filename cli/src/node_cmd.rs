//! `safehouse node install|uninstall`: put Safehouse on a node (or take it off) the way the
//! DaemonSet installer (deploy/kubernetes/installer.yaml) and `make install` do it.
//!
//! Everything is relative to `--host-root` (`/host` in the DaemonSet), so the same code runs in
//! a pod with the node's filesystem mounted and in tests against a temp dir. The containerd
//! config edits are [`crate::containerd_config`]'s; this file does the I/O around them: copy
//! the binaries and configs (atomically, so running shims are not disturbed), check runsc,
//! register the handlers, and restart containerd only when its config changed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::containerd_config::{self as cc, Handler};

/// Default install prefix (the Makefile's `PREFIX`).
pub const PREFIX: &str = "/usr/local";
/// Default Safehouse config dir (the Makefile's `CONFIG_DIR`).
pub const CONFIG_DIR: &str = "/etc/safehouse";
/// containerd's config file.
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// The drop-in written for containerd 2.x.
pub const DROPIN: &str = "/etc/containerd/conf.d/safehouse.toml";
/// The shim's file name.
pub const SHIM: &str = "containerd-shim-safehouse-v2";

/// Node subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Copy the shim, the CLI and the configs onto the node and register the runtime handlers
    /// with containerd (idempotent).
    Install(InstallArgs),
    /// Unregister the handlers and remove the binaries (configs stay unless --purge).
    Uninstall(UninstallArgs),
}

/// Where things are on the node.
#[derive(Debug, Args, Clone)]
pub struct NodeLayout {
    /// The node's filesystem root (`/host` when running in the installer pod).
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
    /// Install prefix on the node (binaries go to PREFIX/bin).
    #[arg(long, default_value = PREFIX)]
    pub prefix: PathBuf,
    /// Safehouse config dir on the node.
    #[arg(long, default_value = CONFIG_DIR)]
    pub config_dir: PathBuf,
    /// containerd's config file on the node.
    #[arg(long, default_value = CONTAINERD_CONFIG)]
    pub containerd_config: PathBuf,
    /// Drop-in file for containerd 2.x (config version 3).
    #[arg(long, default_value = DROPIN)]
    pub dropin: PathBuf,
    /// Runtime handlers as NAME=CONFIG (CONFIG a file name in --config-dir).
    #[arg(long = "handler", value_name = "NAME=CONFIG", default_values = ["safehouse=config.toml", "safehouse-net=config-net.toml"])]
    pub handlers: Vec<String>,
    /// Run this (with `sh -c`) when containerd's config changed, e.g.
    /// `nsenter -t 1 -m -- systemctl restart containerd`; without it, say a restart is needed.
    #[arg(long)]
    pub restart_command: Option<String>,
}

/// `node install` arguments.
#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    layout: NodeLayout,
    /// What to install: DIR/bin/{containerd-shim-safehouse-v2,safehouse}, DIR/config/*.toml,
    /// DIR/policies/*.yaml.
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// containerd config version to write for: auto (the existing file's `version`, else
    /// `containerd --version` on the node), 2 (edit config.toml) or 3 (drop-in).
    #[arg(long, default_value = "auto")]
    config_version: String,
    /// Register even when runsc is missing (the check is still reported).
    #[arg(long)]
    skip_checks: bool,
    /// Only copy files; leave containerd's config alone.
    #[arg(long)]
    no_register: bool,
}

/// `node uninstall` arguments.
#[derive(Debug, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    layout: NodeLayout,
    /// Also remove the config dir (configs and policies).
    #[arg(long)]
    purge: bool,
}

impl NodeLayout {
    /// `path` (absolute on the node) under the host root.
    pub fn host(&self, path: &Path) -> PathBuf {
        self.host_root.join(path.strip_prefix("/").unwrap_or(path))
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.host(&self.prefix.join("bin").join(name))
    }

    /// The handlers, with config paths as the node sees them.
    pub fn handlers(&self) -> Result<Vec<Handler>> {
        self.handlers
            .iter()
            .map(|h| {
                let (name, file) = h
                    .split_once('=')
                    .filter(|(n, f)| !n.is_empty() && !f.is_empty())
                    .with_context(|| format!("--handler {h:?}: want NAME=CONFIG"))?;
                if !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    bail!("--handler {h:?}: a handler name is lowercase letters, digits and '-'");
                }
                Ok(Handler {
                    name: name.into(),
                    config_path: self.config_dir.join(file).display().to_string(),
                })
            })
            .collect()
    }
}

/// Runs a node subcommand.
pub fn run(cmd: NodeCommand) -> Result<ExitCode> {
    match cmd {
        NodeCommand::Install(a) => install(&a),
        NodeCommand::Uninstall(a) => uninstall(&a),
    }
}

/// Writes `data` to `dest` (write aside, then rename) unless it already holds it.
fn put(dest: &Path, data: &[u8], mode: u32) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(dest).ok().as_deref() == Some(data) {
        return Ok(false);
    }
    let dir = dest.parent().context("destination has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.safehouse-new",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, dest).with_context(|| format!("replace {}", dest.display()))?;
    Ok(true)
}

/// runsc as the node's config names it, probed: `Ok(version)` or why not.
pub fn check_runsc(layout: &NodeLayout, config: &Path) -> std::result::Result<String, String> {
    let cfg =
        safehouse_runsc_config::RuntimeConfig::load(Some(config)).map_err(|e| e.to_string())?;
    let path = layout.host(&cfg.binary);
    let probe = safehouse_runsc_config::RunscProbe::probe(&path).map_err(|e| e.to_string())?;
    Ok(format!("{} {}", cfg.binary.display(), probe.version))
}

fn containerd_major(layout: &NodeLayout) -> Option<u32> {
    for bin in ["/usr/bin/containerd", "/usr/local/bin/containerd"] {
        if !layout.host(Path::new(bin)).is_file() {
            continue;
        }
        // containerd links the node's libc: run it in the node's root, not the installer's.
        let mut cmd = if layout.host_root == Path::new("/") {
            Command::new(bin)
        } else {
            let mut c = Command::new("chroot");
            c.arg(&layout.host_root).arg(bin);
            c
        };
        if let Ok(out) = cmd.arg("--version").output() {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(v) = containerd_version(&text) {
                return v.split('.').next().and_then(|m| m.parse().ok());
            }
        }
    }
    None
}

/// The version in `containerd --version` output (`containerd github.com/... 1.6.20~ds1 ...`).
pub fn containerd_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .map(|w| w.trim_start_matches('v'))
        .find(|w| {
            let mut parts = w.split('.');
            parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
                && parts.next().is_some_and(|p| p.parse::<u32>().is_ok())
        })
        .map(|w| w.split(['~', '+', '-']).next().unwrap_or(w).to_string())
}

fn install(a: &InstallArgs) -> Result<ExitCode> {
    let l = &a.layout;
    let handlers = l.handlers()?;
    // 1. Files.
    let mut copied = Vec::new();
    for name in [SHIM, "safehouse"] {
        let src = a.from.join("bin").join(name);
        let data = std::fs::read(&src).with_context(|| format!("read {}", src.display()))?;
        if put(&l.bin(name), &data, 0o755)? {
            copied.push(l.prefix.join("bin").join(name));
        }
    }
    let config_dir = l.host(&l.config_dir);
    for (sub, dest) in [
        ("config", config_dir.clone()),
        ("policies", config_dir.join("policies")),
    ] {
        let Ok(entries) = std::fs::read_dir(a.from.join(sub)) else {
            continue;
        };
        for e in entries.flatten() {
            let target = dest.join(e.file_name());
            // An operator's edited config is theirs: only missing files are added.
            if target.exists() {
                continue;
            }
            let data = std::fs::read(e.path())?;
            put(&target, &data, 0o644)?;
            copied.push(l.config_dir.join(target.strip_prefix(&config_dir)?));
        }
    }
    for p in &copied {
        println!("installed {}", p.display());
    }
    if copied.is_empty() {
        println!("files: already up to date");
    }
    // The audit signing key: created once, never replaced (its public half verifies every log
    // this node wrote).
    let key_dir = config_dir.clone();
    match safehouse_audit::seal::key::generate(&key_dir) {
        Ok(public) => println!(
            "audit key: created {} (root only) and {}; public key: {}",
            l.config_dir
                .join(safehouse_audit::seal::key::KEY_FILE)
                .display(),
            l.config_dir
                .join(safehouse_audit::seal::key::PUB_FILE)
                .display(),
            safehouse_audit::seal::key::public_key_text(&public).trim_end()
        ),
        Err(safehouse_audit::seal::SealError::KeyExists(_)) => {
            let pub_path = key_dir.join(safehouse_audit::seal::key::PUB_FILE);
            match std::fs::read_to_string(&pub_path) {
                Ok(text) => println!("audit key: kept; public key: {}", text.trim_end()),
                Err(_) => println!("audit key: kept ({} missing)", pub_path.display()),
            }
        }
        Err(e) => return Err(e).context("create the audit signing key"),
    }
    // 2. Prerequisites, reported.
    let mut healthy = true;
    for h in &handlers {
        match check_runsc(l, &l.host(Path::new(&h.config_path))) {
            Ok(v) => println!("check: handler {}: runsc {v}: ok", h.name),
            Err(e) => {
                healthy = false;
                println!("check: handler {}: FAILED: {e}", h.name);
            }
        }
    }
    if !healthy && !a.skip_checks && !a.no_register {
        bail!("node prerequisites missing (see the checks above); nothing registered with containerd. Fix them, or pass --skip-checks");
    }
    if a.no_register {
        return Ok(ExitCode::SUCCESS);
    }
    // 3. containerd.
    let cfg_path = l.host(&l.containerd_config);
    let original = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context(format!("read {}", cfg_path.display())),
    };
    let version = match (a.config_version.as_str(), &original) {
        ("2", _) => 2,
        ("3", _) => 3,
        ("auto", Some(text)) if !text.trim().is_empty() => cc::config_version(text)?,
        ("auto", _) => match containerd_major(l) {
            Some(m) if m >= 2 => 3,
            _ => 2,
        },
        (other, _) => bail!("--config-version {other:?}: want auto, 2 or 3"),
    };
    let text = original.clone().unwrap_or_default();
    let mut changed = false;
    if version >= 3 {
        let dropin = cc::dropin(&handlers)?;
        changed |= put(&l.host(&l.dropin), dropin.as_bytes(), 0o644)?;
        let new = cc::import_in(&text, &l.dropin.display().to_string())?;
        if new != text {
            backup(&cfg_path, original.as_deref())?;
            changed |= put(&cfg_path, new.as_bytes(), 0o644)?;
        }
        println!(
            "containerd (config version 3): handlers {} in {}",
            names(&handlers),
            l.dropin.display()
        );
    } else {
        let new = cc::edit_in(&text, &handlers)?;
        if new != text {
            backup(&cfg_path, original.as_deref())?;
            changed |= put(&cfg_path, new.as_bytes(), 0o644)?;
        }
        println!(
            "containerd (config version {version}): handlers {} in {}",
            names(&handlers),
            l.containerd_config.display()
        );
    }
    restart_if(changed, l)?;
    Ok(ExitCode::SUCCESS)
}

fn names(handlers: &[Handler]) -> String {
    handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Keeps the operator's config as it was before Safehouse first touched it.
fn backup(path: &Path, original: Option<&str>) -> Result<()> {
    let Some(text) = original else { return Ok(()) };
    let bak = path.with_extension("toml.before-safehouse");
    if !bak.exists() {
        std::fs::write(&bak, text).with_context(|| format!("write {}", bak.display()))?;
        println!("saved the original as {}", bak.display());
    }
    Ok(())
}

fn restart_if(changed: bool, l: &NodeLayout) -> Result<()> {
    if !changed {
        println!("containerd config unchanged: no restart");
        return Ok(());
    }
    match &l.restart_command {
        Some(cmd) => {
            let status = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .status()
                .with_context(|| format!("run {cmd:?}"))?;
            if !status.success() {
                bail!("containerd config changed but the restart command {cmd:?} failed: {status}");
            }
            println!("containerd config changed: restarted ({cmd})");
        }
        None => println!(
            "containerd config changed: restart containerd to apply it (systemctl restart containerd)"
        ),
    }
    Ok(())
}

fn uninstall(a: &UninstallArgs) -> Result<ExitCode> {
    let l = &a.layout;
    let handlers = l.handlers()?;
    let cfg_path = l.host(&l.containerd_config);
    let mut changed = false;
    if let Ok(text) = std::fs::read_to_string(&cfg_path) {
        let mut new = cc::edit_out(&text, &handlers)?;
        new = cc::import_out(&new, &l.dropin.display().to_string())?;
        if new != text {
            changed |= put(&cfg_path, new.as_bytes(), 0o644)?;
            println!(
                "containerd: handlers removed from {}",
                l.containerd_config.display()
            );
        }
    }
    let dropin = l.host(&l.dropin);
    if dropin.exists() {
        std::fs::remove_file(&dropin).with_context(|| format!("remove {}", dropin.display()))?;
        changed = true;
        println!("removed {}", l.dropin.display());
    }
    for name in [SHIM, "safehouse"] {
        let p = l.bin(name);
        if p.exists() {
            // Running shims keep their (unlinked) binary; new containers can no longer start.
            std::fs::remove_file(&p).with_context(|| format!("remove {}", p.display()))?;
            println!("removed {}", l.prefix.join("bin").join(name).display());
        }
    }
    if a.purge {
        let dir = l.host(&l.config_dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
            println!("removed {}", l.config_dir.display());
        }
    }
    restart_if(changed, l)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(subcommand)]
        cmd: NodeCommand,
    }

    fn fake_from(dir: &Path) -> PathBuf {
        let from = dir.join("from");
        std::fs::create_dir_all(from.join("bin")).expect("mkdir");
        std::fs::create_dir_all(from.join("config")).expect("mkdir");
        std::fs::write(from.join("bin").join(SHIM), b"shim-v1").expect("w");
        std::fs::write(from.join("bin/safehouse"), b"cli-v1").expect("w");
        // runsc "installed" on the fake node: a script answering --version and flags.
        let runsc = dir.join("root/usr/bin/runsc");
        std::fs::create_dir_all(runsc.parent().expect("p")).expect("mkdir");
        // Written by `install`, not by this process: a concurrently forked test child would
        // otherwise hold our write descriptor and running the script would fail with ETXTBSY.
        let draft = dir.join("runsc.draft");
        std::fs::write(
            &draft,
            "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'runsc version 0.0~20240729.0'; else echo '-network string'; echo '-platform string'; fi\n",
        )
        .expect("w");
        let ok = std::process::Command::new("install")
            .args(["-m", "0755"])
            .arg(&draft)
            .arg(&runsc)
            .status()
            .expect("install");
        assert!(ok.success(), "install runsc: {ok}");
        for name in ["config.toml", "config-net.toml"] {
            std::fs::write(from.join("config").join(name), "platform = \"ptrace\"\n").expect("w");
        }
        from
    }

    fn cmd(args: &[&str]) -> NodeCommand {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .expect("args")
            .cmd
    }

    #[test]
    fn install_twice_then_uninstall_restores_a_16_node() {
        let dir = tempfile::tempdir().expect("tmp");
        let from = fake_from(dir.path());
        let root = dir.path().join("root");
        let cfg = root.join("etc/containerd/config.toml");
        std::fs::create_dir_all(cfg.parent().expect("p")).expect("mkdir");
        let original = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n";
        std::fs::write(&cfg, original).expect("w");
        let marker = dir.path().join("restarts");
        let restart = format!("echo x >> {}", marker.display());
        let r = root.display().to_string();
        let f = from.display().to_string();
        let install = [
            "install",
            "--host-root",
            &r,
            "--from",
            &f,
            "--restart-command",
            &restart,
        ];
        run(cmd(&install)).expect("install");
        let after = std::fs::read_to_string(&cfg).expect("read");
        assert!(after.contains("restrict_oom_score_adj = true"));
        assert_eq!(cc::registered_handlers(&after).expect("parse").len(), 2);
        assert_eq!(
            std::fs::read(root.join("usr/local/bin").join(SHIM)).expect("shim"),
            b"shim-v1"
        );
        assert!(root.join("etc/safehouse/config-net.toml").is_file());
        assert!(root
            .join("etc/containerd/config.toml.before-safehouse")
            .is_file());
        // The audit key pair: private root-only, public readable; kept across installs.
        let key = root.join("etc/safehouse/audit.key");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let public = std::fs::read_to_string(root.join("etc/safehouse/audit.pub")).expect("pub");
        assert!(safehouse_audit::seal::key::parse_public_key(&public).is_ok());
        let key_text = std::fs::read(&key).expect("key");
        run(cmd(&install)).expect("install again");
        assert_eq!(std::fs::read(&key).expect("key"), key_text, "key replaced");
        assert_eq!(std::fs::read_to_string(&cfg).expect("read"), after);
        assert_eq!(
            std::fs::read_to_string(&marker)
                .expect("restarted")
                .lines()
                .count(),
            1,
            "containerd restarted only when its config changed"
        );
        run(cmd(&[
            "uninstall",
            "--host-root",
            &r,
            "--restart-command",
            &restart,
        ]))
        .expect("uninstall");
        assert_eq!(std::fs::read_to_string(&cfg).expect("read"), original);
        assert!(!root.join("usr/local/bin").join(SHIM).exists());
        assert!(
            root.join("etc/safehouse/config.toml").exists(),
            "configs kept"
        );
        assert_eq!(
            std::fs::read_to_string(&marker).expect("m").lines().count(),
            2
        );
    }

    #[test]
    fn a_2x_node_gets_a_dropin() {
        let dir = tempfile::tempdir().expect("tmp");
        let from = fake_from(dir.path());
        let root = dir.path().join("root");
        let cfg = root.join("etc/containerd/config.toml");
        std::fs::create_dir_all(cfg.parent().expect("p")).expect("mkdir");
        let original =
            "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\"]\n  enable_selinux = false\n";
        std::fs::write(&cfg, original).expect("w");
        let r = root.display().to_string();
        let f = from.display().to_string();
        run(cmd(&["install", "--host-root", &r, "--from", &f])).expect("install");
        let dropin = std::fs::read_to_string(root.join("etc/containerd/conf.d/safehouse.toml"))
            .expect("dropin");
        assert_eq!(cc::registered_handlers(&dropin).expect("p").len(), 2);
        let main = std::fs::read_to_string(&cfg).expect("read");
        assert!(
            main.contains("/etc/containerd/conf.d/safehouse.toml"),
            "{main}"
        );
        run(cmd(&["uninstall", "--host-root", &r, "--purge"])).expect("uninstall");
        assert_eq!(std::fs::read_to_string(&cfg).expect("read"), original);
        assert!(!root.join("etc/containerd/conf.d/safehouse.toml").exists());
        assert!(!root.join("etc/safehouse").exists());
    }

    #[test]
    fn missing_runsc_registers_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let from = fake_from(dir.path());
        let root = dir.path().join("root");
        std::fs::remove_file(root.join("usr/bin/runsc")).expect("rm");
        let r = root.display().to_string();
        let f = from.display().to_string();
        let e = run(cmd(&[
            "install",
            "--host-root",
            &r,
            "--from",
            &f,
            "--config-version",
            "2",
        ]))
        .expect_err("must fail")
        .to_string();
        assert!(e.contains("prerequisites"), "{e}");
        assert!(!root.join("etc/containerd/config.toml").exists());
    }

    #[test]
    fn parses_containerd_versions() {
        assert_eq!(
            containerd_version(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1"
            )
            .as_deref(),
            Some("1.6.20")
        );
        assert_eq!(
            containerd_version("containerd containerd.io v2.1.9 abc").as_deref(),
            Some("2.1.9")
        );
        assert_eq!(containerd_version("nothing here"), None);
    }
}
