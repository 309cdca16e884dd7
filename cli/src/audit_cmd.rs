//! `safehouse audit`: read the audit stream the shims write (follow it, verify its chains).
//! The format, the chain and the reading live in the `safehouse-audit` crate.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};
use safehouse_audit::display::{escape, short_line};
use safehouse_audit::follow::{follow_with, FollowFilter, FollowOptions, Since};
use safehouse_audit::seal::key::{self, read_public_key};
use safehouse_audit::seal::proof::{prove, verify_proof, InclusionProof};
use safehouse_audit::seal::SealRecord;
use safehouse_audit::verify::{verify_files, VerifyOptions, VerifyReport};

/// The node-wide audit file the shims append to by default.
const DEFAULT_AUDIT_FILE: &str = "/var/log/safehouse/audit.jsonl";
/// The node's audit public key, as `safehouse node install` writes it.
const DEFAULT_PUBLIC_KEY: &str = "/etc/safehouse/audit.pub";

/// How `follow` prints events.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// The JSON line as written (for log shippers).
    Json,
    /// One short human-readable line per event.
    Short,
    /// One OCSF 1.1 event (JSON) per line, for SIEMs: Process, File System and Network
    /// Activity classes.
    Ocsf,
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
        /// The audit file; for a rotated set, every file oldest first (the history of all,
        /// then the last one is followed).
        #[arg(default_value = DEFAULT_AUDIT_FILE, num_args = 1..)]
        files: Vec<PathBuf>,
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
    /// Check the hash chains and the signed checkpoints; exit 1 at the first break, naming
    /// its file and line.
    #[command(
        long_about = "Check an audit log: every sandbox's hash chain, and the signed \
checkpoints with the node's public key (default /etc/safehouse/audit.pub when it exists). An \
edited, deleted, reordered or truncated line, a deleted sandbox, a chain recomputed after an \
edit, a checkpoint re-signed with another epoch's key, and (with --anchor) a tail cut back \
past an anchored checkpoint are caught. Give a rotated set oldest first. Exit 0 when \
intact, 1 at the first break (its file, line and why), 2 when a file cannot be read.\n\n\
Examples:\n  safehouse audit verify /var/log/safehouse/audit.jsonl\n  \
safehouse audit verify audit.jsonl.2 audit.jsonl.1 audit.jsonl --key node.pub \
--anchor /mnt/remote/checkpoints.jsonl"
    )]
    Verify {
        /// The audit files, oldest first.
        #[arg(default_value = DEFAULT_AUDIT_FILE, num_args = 1..)]
        files: Vec<PathBuf>,
        /// The node's public key file (or 64 hex digits): the log must be signed. Default:
        /// /etc/safehouse/audit.pub if it exists, which checks the seal records the log has
        /// (a log without any still verifies its chains, with a warning).
        #[arg(long)]
        key: Option<String>,
        /// Check the chains only, even if a key is installed.
        #[arg(long, conflicts_with = "key")]
        no_key: bool,
        /// A copy of the seal records kept elsewhere: each must be in the log, identical.
        #[arg(long)]
        anchor: Option<PathBuf>,
        /// The set starts mid-chain (older files rotated away): accept chains that do not
        /// start at seq 1. Checkpoints reaching before the set are not checked, and signatures
        /// only with --anchor.
        #[arg(long)]
        mid_chain: bool,
    },
    /// Create an audit signing key pair in DIR (audit.key, root only; audit.pub).
    Keygen {
        /// Where to write the key files.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Export a self-contained proof that one event is in a signed checkpoint.
    #[command(
        long_about = "Export a proof (JSON, to stdout) that one event is covered by a signed \
checkpoint: the event line, the checkpoint, the Merkle audit path and the epoch records that \
certify the checkpoint's key. `safehouse audit verify-proof` checks it offline with the \
node's public key.\n\nExample:\n  safehouse audit prove --sandbox sb-1 --seq 42 > proof.json"
    )]
    Prove {
        /// The audit files, oldest first.
        #[arg(default_value = DEFAULT_AUDIT_FILE, num_args = 1..)]
        files: Vec<PathBuf>,
        /// The event's sandbox.
        #[arg(long)]
        sandbox: String,
        /// The event's seq.
        #[arg(long)]
        seq: u64,
    },
    /// Make every running Safehouse shim reopen its audit destination (after a rotation).
    #[command(
        long_about = "Send SIGHUP to every running containerd-shim-safehouse-v2 process: each \
reopens its audit destination path, so the lines after a rename rotation go to the new file. \
Shims also notice a renamed path by themselves within a second; this makes it immediate (use \
it in logrotate's postrotate). Prints how many shims were told.\n\nExample:\n  safehouse audit reopen"
    )]
    Reopen,
    /// Check a proof from `audit prove` with the node's public key; exit 1 if it fails.
    VerifyProof {
        /// The proof file (`-` for stdin).
        proof: PathBuf,
        /// The node's public key file (or 64 hex digits).
        #[arg(long, default_value = DEFAULT_PUBLIC_KEY)]
        key: String,
    },
}

/// Runs an audit subcommand.
pub fn run(cmd: AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::Reopen => {
            let told = signal_shims(nix::sys::signal::Signal::SIGHUP)?;
            println!("{told} Safehouse shim(s) told to reopen the audit destination");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Follow {
            files,
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
            let stdout = std::io::stdout();
            let last = files.len().saturating_sub(1);
            for (i, file) in files.iter().enumerate() {
                let options = FollowOptions {
                    follow: !no_follow && i == last,
                    ..FollowOptions::default()
                };
                let lines = follow_with(file, filter.clone(), options)
                    .with_context(|| format!("cannot follow {}", file.display()))?;
                for line in lines {
                    let line = line.with_context(|| format!("reading {}", file.display()))?;
                    let text = match format {
                        OutputFormat::Json => line,
                        OutputFormat::Short => short_line(&line),
                        OutputFormat::Ocsf => match safehouse_audit::ocsf::to_ocsf(&line) {
                            Some(v) => v.to_string(),
                            None => continue,
                        },
                    };
                    let mut out = stdout.lock();
                    // A closed pipe (`| head`) ends the command quietly.
                    if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            files,
            key,
            no_key,
            anchor,
            mid_chain,
        } => {
            // An explicit --key means the log must be signed; the installed key found by
            // itself checks whatever seal records there are.
            let require_seals = key.is_some();
            let key = match (key, no_key) {
                (_, true) => None,
                (Some(k), false) => Some(load_key(&k)?),
                (None, false) if Path::new(DEFAULT_PUBLIC_KEY).exists() => {
                    Some(load_key(DEFAULT_PUBLIC_KEY)?)
                }
                (None, false) => None,
            };
            let anchor = match &anchor {
                Some(path) => read_anchor(path)?,
                None => Vec::new(),
            };
            let options = VerifyOptions {
                require_genesis: !mid_chain,
                key,
                require_seals,
                anchor,
            };
            let report = verify_files(&files, options).context("cannot verify")?;
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            let shims = running_shims().unwrap_or_default();
            print!(
                "{}",
                describe(&names.join(" "), &report, key.is_some(), &shims)
            );
            Ok(if report.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Keygen { dir } => {
            let public = key::generate(&dir)
                .with_context(|| format!("cannot create a key in {}", dir.display()))?;
            println!(
                "created {} (private, mode 0600) and {}",
                dir.join(key::KEY_FILE).display(),
                dir.join(key::PUB_FILE).display()
            );
            print!("{}", key::public_key_text(&public));
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Prove {
            files,
            sandbox,
            seq,
        } => {
            let mut readers: Vec<Box<dyn Read>> = Vec::new();
            for f in &files {
                let file = std::fs::File::open(f)
                    .with_context(|| format!("cannot read {}", f.display()))?;
                readers.push(Box::new(file));
            }
            let log = readers
                .into_iter()
                .fold(Box::new(std::io::empty()) as Box<dyn Read>, |a, b| {
                    Box::new(a.chain(b))
                });
            let proof = prove(BufReader::new(log), &sandbox, seq)?;
            println!("{}", serde_json::to_string_pretty(&proof)?);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::VerifyProof { proof, key } => {
            let text = if proof.as_os_str() == "-" {
                let mut t = String::new();
                std::io::stdin().read_to_string(&mut t)?;
                t
            } else {
                std::fs::read_to_string(&proof)
                    .with_context(|| format!("cannot read {}", proof.display()))?
            };
            let proof: InclusionProof =
                serde_json::from_str(&text).context("not an inclusion proof")?;
            let key = load_key(&key)?;
            match verify_proof(&proof, &key) {
                Ok(p) => {
                    println!(
                        "proof ok: sandbox {} seq {} is in checkpoint seq {} (epoch {})",
                        escape(&p.sandbox),
                        p.seq,
                        p.checkpoint_seq,
                        p.epoch
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => {
                    println!("proof FAILED: {}", escape(&why));
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// The shim binary's name, as `/proc/PID/exe` ends.
const SHIM_BINARY: &str = "containerd-shim-safehouse-v2";

/// Every running Safehouse shim: its pid and the id it serves (`-id ID` on its command line:
/// the sandbox's id, which a pod's members share).
fn running_shims() -> Result<Vec<(i32, String)>> {
    let mut shims = Vec::new();
    for entry in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let is_shim = std::fs::read_link(entry.path().join("exe")).is_ok_and(|exe| {
            exe.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.trim_end_matches(" (deleted)") == SHIM_BINARY)
        });
        if !is_shim {
            continue;
        }
        let argv = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
        let id = args
            .iter()
            .position(|a| *a == b"-id")
            .and_then(|i| args.get(i + 1))
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default();
        shims.push((pid, id));
    }
    Ok(shims)
}

/// Sends `signal` to every running Safehouse shim; returns how many were signalled.
fn signal_shims(signal: nix::sys::signal::Signal) -> Result<usize> {
    let mut told = 0;
    for (pid, _) in running_shims()? {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).is_ok() {
            told += 1;
        }
    }
    Ok(told)
}

/// Why a sandbox's chain is still open, from the shims running on this node.
fn why_open(sandbox: &str, shims: &[(i32, String)]) -> String {
    match shims.iter().find(|(_, id)| id == sandbox) {
        Some((pid, _)) => format!("its shim (pid {pid}) is still running"),
        None => "no shim for it runs on this node: it was killed before delete (the next `task delete` closes the chain), or the log comes from another node".to_string(),
    }
}

/// A public key from a file or 64 hex digits.
fn load_key(spec: &str) -> Result<ed25519_dalek::VerifyingKey> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(read_public_key(path)?);
    }
    match key::parse_public_key(spec) {
        Ok(k) => Ok(k),
        Err(_) => bail!("--key {spec:?}: no such file, and not a public key"),
    }
}

/// The seal records of an anchor file (one per line).
fn read_anchor(path: &Path) -> Result<Vec<SealRecord>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = SealRecord::parse(line.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}:{}: not a seal record: {e}", path.display(), i + 1))?;
        out.push(record);
    }
    Ok(out)
}

/// The verify report in words: the verdict, then every open chain by name.
fn describe(files: &str, report: &VerifyReport, keyed: bool, shims: &[(i32, String)]) -> String {
    let mut out = String::new();
    let open: Vec<_> = report.sandboxes.iter().filter(|(_, c)| !c.closed).collect();
    match &report.first_break {
        None => {
            out.push_str(&format!(
                "{files}: intact: {} lines, {} sandboxes ({} still open)\n",
                report.lines,
                report.sandboxes.len(),
                open.len()
            ));
        }
        Some(b) => {
            let at = if b.file.is_empty() {
                files.to_owned()
            } else {
                b.file.clone()
            };
            out.push_str(&format!(
                "{}:{}: chain broken ({:?}){}: {}\n",
                at,
                b.line,
                b.kind,
                b.sandbox_id
                    .as_deref()
                    .map(|s| format!(" in sandbox {}", escape(s)))
                    .unwrap_or_default(),
                escape(&b.detail)
            ));
        }
    }
    match &report.seals {
        Some(s) if s.records == 0 => out.push_str(
            "seals: none: the log is NOT signed (chains only: a rewritten chain cannot be detected; pass --key to require signatures)\n",
        ),
        Some(s) => out.push_str(&format!(
            "seals: {} records, {} checkpoints covering {} events, epoch {}, signatures {}{}\n",
            s.records,
            s.checkpoints,
            s.events_covered,
            s.epoch,
            if s.signatures_checked {
                "verified with the node key"
            } else if keyed {
                "NOT checked (the set starts mid-chain; pass --anchor)"
            } else {
                "NOT checked (no key: pass --key)"
            },
            if s.anchored > 0 {
                format!(", {} anchored records matched", s.anchored)
            } else {
                String::new()
            }
        )),
        None => out.push_str("seals: none (chains only: a rewritten chain cannot be detected)\n"),
    }
    for (id, c) in report.sandboxes.iter().filter(|(_, c)| c.never_sealed > 0) {
        out.push_str(&format!(
            "unsigned: sandbox {}: {} events chained but never covered by a checkpoint (their writer ended before its next one)\n",
            escape(id),
            c.never_sealed
        ));
    }
    for (id, c) in open {
        out.push_str(&format!(
            "open: sandbox {}: last seq {} at {}:{}; no delete event yet: {}{}\n",
            escape(id),
            c.last_seq,
            c.last_file,
            c.last_line,
            why_open(id, shims),
            c.unsealed
                .map(|[a, b]| format!("; seq {a}..{b} not yet covered by a checkpoint"))
                .unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lines_still_say_what_happened() {
        let line = r#"{"seq":3,"category":"file","action":"open","container_id":"c1","file":{"path":"/tmp/x","access":"write"}}"#;
        let out = short_line(line);
        assert!(
            out.contains("file/open") && out.contains("/tmp/x (write)") && out.contains("c1"),
            "{out}"
        );
        assert!(short_line("not json").starts_with("(unreadable line)"));
    }

    #[test]
    fn an_open_chain_says_whether_its_shim_runs() {
        let shims = vec![(41, "sb-live".to_string())];
        assert_eq!(
            why_open("sb-live", &shims),
            "its shim (pid 41) is still running"
        );
        assert!(why_open("sb-gone", &shims).starts_with("no shim for it runs on this node"));
    }

    #[test]
    fn this_test_process_is_no_shim() {
        let me = std::process::id() as i32;
        assert!(running_shims()
            .expect("reads /proc")
            .iter()
            .all(|(pid, _)| *pid != me));
    }
}
