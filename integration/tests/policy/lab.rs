//! The policy lab of one scenario: its own Safehouse runtime config (handed to the shim with
//! `ctr run --runtime-config-path`), a policy directory the config selects from by annotation,
//! and an audit file, all in a scratch directory of the run. Nothing here asserts anything;
//! the feature files do.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use safehouse_integration::command::{wait_for, Output, Running};
use safehouse_integration::suite::only_for;
use safehouse_integration::{RuntimeKind, TestEnv};
use serde_json::Value;

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
    audit: PathBuf,
}

impl<'a> Lab<'a> {
    /// A lab whose every policy in the directory is selectable.
    pub fn new(env: &'a TestEnv, tag: &str) -> Result<Lab<'a>> {
        Lab::with_selectable(env, tag, &[])
    }

    /// A lab whose config lists `selectable` (empty: everything in the directory). No
    /// `[policy] default`: a container without an annotation gets the built-in strict default.
    /// Not applicable to the baselines, which have no policies.
    pub fn with_selectable(env: &'a TestEnv, tag: &str, selectable: &[&str]) -> Result<Lab<'a>> {
        only_for(env, RuntimeKind::Safehouse)?;
        let dir = env.scratch(&format!("policy-lab-{tag}"))?;
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
            "root = {:?}\n\n[policy]\ndir = {:?}\nselectable = [{}]\n\n[audit]\noutput = {:?}\n",
            runsc_root.display().to_string(),
            policies.display().to_string(),
            selectable.join(", "),
            audit.display().to_string(),
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
    #[allow(dead_code)]
    pub fn config_keys(&self, toml: &str) -> Result<()> {
        let old = fs::read_to_string(&self.config)?;
        fs::write(&self.config, format!("{toml}\n{old}"))
            .with_context(|| format!("write {}", self.config.display()))
    }

    /// Writes policy `name` (`policies/NAME.yaml`) with `spec` (YAML, flow style is handy).
    pub fn policy(&self, name: &str, spec: &str) -> Result<()> {
        let text = format!(
            "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: {name}\n  \
             description: integration policy test\nspec: {spec}\n"
        );
        let path = self.policies.join(format!("{name}.yaml"));
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))
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
            self.env.image.clone(),
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
        let text = fs::read_to_string(&self.audit).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains(id))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
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
        let found = wait_for(what, AUDIT_WAIT, || {
            Ok(self.audit_events(id).into_iter().find(|e| matches(e)))
        });
        found.with_context(|| {
            let seen: Vec<String> = self
                .audit_events(id)
                .iter()
                .map(|e| e.to_string().chars().take(500).collect())
                .collect();
            format!(
                "no audit event: {what} in {}; events of {id}:\n  {}",
                self.audit.display(),
                seen.join("\n  ")
            )
        })
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
