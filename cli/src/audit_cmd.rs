//! `safehouse audit`: read the audit stream the shims write (follow it, verify its chains).
//! The format, the chain and the reading live in the `safehouse-audit` crate.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use safehouse_audit::display::short_line;
use safehouse_audit::follow::{follow_with, FollowFilter, FollowOptions, Since};
use safehouse_audit::verify::verify_file;

/// The node-wide audit file the shims append to by default.
const DEFAULT_AUDIT_FILE: &str = "/var/log/safehouse/audit.jsonl";

/// How `follow` prints events.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// The JSON line as written (for log shippers).
    Json,
    /// One short human-readable line per event.
    Short,
}

/// Audit subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the audit stream: its history, then every new event as it is appended.
    #[command(
        long_about = "Print the audit stream: its history, then every new event as it is \
appended (Ctrl-C to stop). Filters combine.\n\nExamples:\n  safehouse audit follow\n  \
safehouse audit follow --container agent-7 --category process\n  \
safehouse audit follow --since 2026-11-27T03:00:00Z --no-follow --format short"
    )]
    Follow {
        /// The audit file.
        #[arg(default_value = DEFAULT_AUDIT_FILE)]
        file: PathBuf,
        /// Start at this per-sandbox seq number or RFC 3339 time.
        #[arg(long, value_name = "SEQ|TIME")]
        since: Option<String>,
        /// Only events of this container.
        #[arg(long)]
        container: Option<String>,
        /// Only events of this sandbox (pod).
        #[arg(long)]
        sandbox: Option<String>,
        /// Only this category: process, file, network, lifecycle, policy, audit.
        #[arg(long)]
        category: Option<String>,
        /// Print the history and stop instead of waiting for new events.
        #[arg(long)]
        no_follow: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
        format: OutputFormat,
    },
    /// Check every sandbox's hash chain; exit 1 at the first break, naming its line.
    #[command(
        long_about = "Check every sandbox's hash chain in an audit file: an edited, \
deleted, reordered or truncated line breaks it. Exit 0 when intact, 1 at the first break \
(its line and why), 2 when the file cannot be read.\n\nExample:\n  safehouse audit verify \
/var/log/safehouse/audit.jsonl"
    )]
    Verify {
        /// The audit file.
        #[arg(default_value = DEFAULT_AUDIT_FILE)]
        file: PathBuf,
    },
}

/// Runs an audit subcommand.
pub fn run(cmd: AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::Follow {
            file,
            since,
            container,
            sandbox,
            category,
            no_follow,
            format,
        } => {
            let since = match since {
                Some(s) => Some(Since::parse(&s).with_context(|| {
                    format!("--since {s:?}: expected a seq number or an RFC 3339 time")
                })?),
                None => None,
            };
            let filter = FollowFilter {
                since,
                container,
                sandbox,
                category,
            };
            let options = FollowOptions {
                follow: !no_follow,
                ..FollowOptions::default()
            };
            let lines = follow_with(&file, filter, options)
                .with_context(|| format!("cannot follow {}", file.display()))?;
            let stdout = std::io::stdout();
            for line in lines {
                let line = line.with_context(|| format!("reading {}", file.display()))?;
                let text = match format {
                    OutputFormat::Json => line,
                    OutputFormat::Short => short_line(&line),
                };
                let mut out = stdout.lock();
                // A closed pipe (`| head`) ends the command quietly.
                if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { file } => {
            let report =
                verify_file(&file).with_context(|| format!("cannot verify {}", file.display()))?;
            let open = report.sandboxes.values().filter(|c| !c.closed).count();
            match &report.first_break {
                None => {
                    println!(
                        "{}: intact: {} lines, {} sandboxes ({} still open)",
                        file.display(),
                        report.lines,
                        report.sandboxes.len(),
                        open
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Some(b) => {
                    println!(
                        "{}:{}: chain broken ({:?}){}: {}",
                        file.display(),
                        b.line,
                        b.kind,
                        b.sandbox_id
                            .as_deref()
                            .map(|s| format!(" in sandbox {s}"))
                            .unwrap_or_default(),
                        b.detail
                    );
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lines_say_what_happened() {
        let line = r#"{"seq":3,"category":"file","action":"open","container_id":"c1","file":{"path":"/tmp/x","access":"write"}}"#;
        let out = short_line(line);
        assert!(
            out.contains("file/open") && out.contains("/tmp/x (write)") && out.contains("c1"),
            "{out}"
        );
        assert!(short_line("not json").starts_with("(unreadable line)"));
    }
}
