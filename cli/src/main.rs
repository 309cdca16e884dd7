//! `safehouse`: the operator's command line, a thin clap front over the same crates the shim
//! uses so the CLI and the shim never disagree. This file is only the command tree; each
//! command group lives in its own `*_cmd.rs`.

mod audit_cmd;
mod containerd_config;
mod doctor_cmd;
mod node_cmd;
mod policy_cmd;
mod stop_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const LONG_ABOUT: &str = "\
Safehouse runs every container inside gVisor, confined by an agent capability policy, with an
audit stream. This tool lets an operator check and understand policies before the runtime
applies them, and read and verify the audit stream the runtime writes.

Examples:
  safehouse policy lint examples/policies/*.yaml
  safehouse policy explain examples/policies/code-interpreter.yaml
  safehouse policy compile examples/policies/code-interpreter.yaml --spec bundle/config.json --flags
  safehouse policy compare --strict-default examples/policies/web-research.yaml
  safehouse policy schema > agent-policy.schema.json
  safehouse audit follow --container agent-7 --format short
  safehouse audit verify /var/log/safehouse/audit.jsonl
  safehouse stop --all
  safehouse doctor
  safehouse node install --from /opt/safehouse --host-root /host";

/// Safehouse operator CLI.
#[derive(Debug, Parser)]
#[command(name = "safehouse", version, about = "Safehouse: isolation runtime for AI agents", long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Top-level command groups; add a variant and a `*_cmd.rs` file per group.
#[derive(Debug, Subcommand)]
enum Command {
    /// Lint, compile, explain and compare agent capability policies; print their JSON Schema.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Follow the audit stream and verify its hash chains.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Kill every process of Safehouse sandboxes at once (the big red button).
    Stop(stop_cmd::StopArgs),
    /// Install Safehouse on this node (or remove it): binaries, configs, containerd handlers.
    #[command(subcommand)]
    Node(node_cmd::NodeCommand),
    /// Check whether this node can run Safehouse (runsc, platform, containerd, kernel), and
    /// what the installed runsc enforces (e.g. whether it applies a spec's seccomp profile
    /// inside the sandbox, `--oci-seccomp`), with a fix for each failure.
    Doctor(doctor_cmd::DoctorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Stop(args) => stop_cmd::run(args),
        Command::Node(cmd) => node_cmd::run(cmd),
        Command::Doctor(args) => doctor_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("safehouse: {e:#}");
            ExitCode::from(2)
        }
    }
}
