//! The lab of one policy or audit scenario: its own Safehouse runtime config (handed to the
//! shim with `ctr run --runtime-config-path`), a policy directory the config selects from by
//! annotation, and the audit file the shim writes, all in a scratch directory of the run; plus
//! the `safehouse` CLI built next to the shim. Nothing here asserts anything; the scenarios do.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::command::{run, wait_for, Output, Running};
use crate::suite::only_for;
use crate::{RuntimeKind, TestEnv};

/// The annotation that selects a policy by name.
pub const SELECT_ANNOTATION: &str = "safehouse.dev/policy";
/// Deadline for one `ctr run` of a checker.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the shim may take to write an audit event after the container is gone.
const AUDIT_WAIT: Duration = Duration::from_secs(10);

/// A runtime config, its policy directory and its audit file.
pub struct Lab<'a> {
    env: &'a TestEnv,
    dir: PathBuf,
    config: PathBuf,
    policies: PathBuf,
    /// The audit file the shim writes.
    pub audit: PathBuf,
}

impl<'a> Lab<'a> {
    /// A lab whose every policy in the directory is selectable, looser than the strict default
    /// or not (`selectable = ["*"]`).
    pub fn new(env: &'a TestEnv, tag: &str) -> Result<Lab<'a>> {
        Lab::with_selectable(env, tag, &["*"])
    }

    /// A lab whose config lists `selectable` (empty: only policies no looser than the default).
    /// No `[policy] default`: a container without an annotation gets the built-in strict
    /// default.
    /// Not applicable to the baselines, which have no policies.
    pub fn with_selectable(env: &'a TestEnv, tag: &str, selectable: &[&str]) -> Result<Lab<'a>> {
        only_for(env, RuntimeKind::Safehouse)?;
        let dir = env.scratch(&format!("lab-{tag}"))?;
        let policies = dir.join("policies");
        fs::create_dir_all(&policies)?;
        let audit = dir.join("audit.jsonl");
        let config = dir.join("safehouse.toml");
        // The runsc root the harness's leak check looks in (it appends the namespace).
        let runsc_root = env
            .leaks
            .runtime_root
            .parent()
            .context("the harness's runtime root has no parent")?;
        let selectable: Vec<String> = selectable.iter().map(|s| format!("{s:?}")).collect();
        let toml = format!(
            "root = {:?}\n\n[policy]\ndir = {:?}\nselectable = [{}]\n\n[audit]\noutput = {:?}\nsigning_key = {:?}\n",
            runsc_root.display().to_string(),
            policies.display().to_string(),
            selectable.join(", "),
            audit.display().to_string(),
            // Unsigned unless a scenario asks (`Lab::sign`): the node's own key, if one is
            // installed, never changes what a lab's log holds.
            dir.join("keys").join("audit.key").display().to_string(),
        );
        fs::write(&config, toml).with_context(|| format!("write {}", config.display()))?;
        Ok(Lab {
            env,
            dir,
            config,
            policies,
            audit,
        })
    }

    /// Adds top-level keys (e.g. `dns_upstreams = [...]`) to the lab's runtime config.
    pub fn config_keys(&self, toml: &str) -> Result<()> {
        let old = fs::read_to_string(&self.config)?;
        fs::write(&self.config, format!("{toml}\n{old}"))
            .with_context(|| format!("write {}", self.config.display()))
    }

    /// Gives the lab a signing key of its own (its shims then write signed checkpoints);
    /// returns the public key file.
    pub fn sign(&self) -> Result<PathBuf> {
        let keys = self.dir.join("keys");
        let out = safehouse(&["audit", "keygen", "--dir", &keys.display().to_string()])?;
        anyhow::ensure!(out.success(), "audit keygen: {}", out.describe());
        Ok(keys.join("audit.pub"))
    }

    /// Writes policy `name` (`policies/NAME.yaml`) with `spec` (YAML, flow style is handy).
    pub fn policy(&self, name: &str, spec: &str) -> Result<()> {
        let text = format!(
            "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {name}\n  \
             description: integration test\nspec: {spec}\n"
        );
        let path = self.policies.join(format!("{name}.yaml"));
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    /// The lab's runtime config (for `ctr run --runtime-config-path`).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// A path in this lab's scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A fresh host directory of this lab (for inputs and outputs zones).
    pub fn host_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join("host").join(name);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The argv after `ctr` for a run under `policy` (`None`: no annotation).
    pub fn argv(
        &self,
        policy: Option<&str>,
        flags: &[&str],
        id: &str,
        command: &[&str],
    ) -> Vec<String> {
        self.argv_of(&self.env.image, policy, flags, id, command)
    }

    /// The same with another image than the harness's busybox.
    pub fn argv_of(
        &self,
        image: &str,
        policy: Option<&str>,
        flags: &[&str],
        id: &str,
        command: &[&str],
    ) -> Vec<String> {
        let mut argv = vec!["run".to_string()];
        argv.extend(flags.iter().map(|s| s.to_string()));
        if let Some(name) = policy {
            argv.push("--annotation".into());
            argv.push(format!("{SELECT_ANNOTATION}={name}"));
        }
        argv.extend([
            "--runtime".to_string(),
            self.env.runtime.runtime_type().to_string(),
            "--fifo-dir".to_string(),
            self.env.containerd.fifo_dir().display().to_string(),
            "--runtime-config-path".to_string(),
            self.config.display().to_string(),
            image.to_string(),
            id.to_string(),
        ]);
        argv.extend(command.iter().map(|s| s.to_string()));
        argv
    }

    /// `ctr run FLAGS [--annotation] ... IMAGE ID COMMAND...` to completion.
    pub fn run(
        &self,
        policy: Option<&str>,
        flags: &[&str],
        id: &str,
        command: &[&str],
    ) -> Result<Output> {
        self.env
            .ctr
            .run_timeout(&self.argv(policy, flags, id, command), RUN_TIMEOUT)
    }

    /// The same, started in the background (for detached or long runs).
    pub fn start(
        &self,
        policy: Option<&str>,
        flags: &[&str],
        id: &str,
        command: &[&str],
    ) -> Result<Running> {
        Running::start(
            self.env
                .ctr
                .command()
                .args(self.argv(policy, flags, id, command)),
        )
    }

    /// The audit events of container `id` written so far.
    pub fn audit_events(&self, id: &str) -> Vec<Value> {
        audit_lines(&self.audit)
            .into_iter()
            .filter(|e| e.to_string().contains(id))
            .collect()
    }

    /// Waits for an audit event of `id` that `matches`; fails listing the events seen.
    pub fn wait_audit(
        &self,
        id: &str,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.wait_among(what, || self.audit_events(id), matches)
    }

    /// Every line of the audit file, parsed (a line that is not JSON fails).
    pub fn events(&self) -> Result<Vec<Value>> {
        let text = fs::read_to_string(&self.audit)
            .with_context(|| format!("read {}", self.audit.display()))?;
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: not JSON: {l}", self.audit.display(), i + 1))
            })
            .collect()
    }

    /// The events whose `sandbox_id` is `id`.
    pub fn events_of(&self, id: &str) -> Vec<Value> {
        self.events()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["sandbox_id"] == id)
            .collect()
    }

    /// Waits for an event of sandbox `id` that `matches`; fails listing the events seen.
    pub fn wait_event(
        &self,
        id: &str,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.wait_among(what, || self.events_of(id), matches)
    }

    /// Waits until one of `events()` `matches`; fails listing the events seen.
    fn wait_among(
        &self,
        what: &str,
        events: impl Fn() -> Vec<Value>,
        matches: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        wait_for(what, AUDIT_WAIT, || {
            Ok(events().into_iter().find(|e| matches(e)))
        })
        .with_context(|| format!("in {}: {}", self.audit.display(), Listing(&events())))
    }

    /// The bundle containerd made for `id` (its `config.json` is what the shim confined).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.env
            .containerd
            .state()
            .join("io.containerd.runtime.v2.task")
            .join(&self.env.leaks.namespace)
            .join(id)
    }

    /// Removes a container whose create failed (no task), as `ctr run` without `--rm` leaves it.
    pub fn remove_container(&self, id: &str) -> Result<()> {
        if self.env.ctr.containers()?.iter().any(|c| c == id) {
            self.env.ctr.run(&["containers", "rm", id])?.ok()?;
        }
        Ok(())
    }
}

/// True when `out` (stdout or stderr) contains `needle`.
pub fn says(out: &Output, needle: &str) -> bool {
    out.stdout.contains(needle) || out.stderr.contains(needle)
}

/// Events, one a line, for error messages.
pub struct Listing<'e>(pub &'e [Value]);

impl std::fmt::Display for Listing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} events:", self.0.len())?;
        for e in self.0 {
            let line: String = e.to_string().chars().take(400).collect();
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// `category`/`action` of an event.
pub fn is(event: &Value, category: &str, action: &str) -> bool {
    event["category"] == category && event["action"] == action
}

/// The `safehouse` CLI next to the shim under test (target/{debug,release}).
fn cli() -> Result<PathBuf> {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let candidates = [
        target.join("debug/safehouse"),
        target.join("release/safehouse"),
    ];
    candidates
        .iter()
        .filter_map(|p| Some((fs::metadata(p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.clone())
        .context("no target/{debug,release}/safehouse: run cargo build -p safehouse-cli")
}

/// `safehouse ARGS...` (the CLI built next to the shim under test).
pub fn safehouse(args: &[&str]) -> Result<Output> {
    run(Command::new(cli()?).args(args), Duration::from_secs(30))
}

/// `safehouse audit verify FILE`.
pub fn verify(file: &Path) -> Result<Output> {
    run(
        Command::new(cli()?).arg("audit").arg("verify").arg(file),
        Duration::from_secs(30),
    )
}

/// The events in an audit file so far (a missing file has none; a torn last line is skipped).
pub fn audit_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}
