//! `safehouse policy …`: lint, compile, explain, compare and schema. Exit codes: 0 success, 1
//! the policy or spec has findings or is refused (for compare: the candidate is looser), 2 a
//! file could not be read (for compare: or is not a valid policy).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use oci_spec::runtime::Spec;
use safehouse_policy::{
    compare, compile, digest, explain, json_schema, lint_str, AgentPolicy, CompileContext,
    Dimension, Format, LoadError,
};

const LINT_HELP: &str = "\
Checks each file's syntax, shape and meaning and prints every finding as
FILE:LINE:COLUMN: FIELD: MESSAGE. Warnings are findings too. Notes (`note:`) say what a
valid policy does that its author may not expect, such as a listed tool that runs any code
it is given (python3, sh, busybox, env); they never change the exit status.

Exit status: 0 when every file is clean, 1 when any file has findings, 2 when a file
cannot be read.

Examples:
  safehouse policy lint policy.yaml
  safehouse policy lint /etc/safehouse/policies/*.yaml";

const COMPILE_HELP: &str = "\
Compiles the policy against an OCI runtime spec (a bundle's config.json) exactly as the
shim does at container create, and prints the confined spec as JSON on stdout. A spec the
policy refuses (host namespaces, foreign host mounts, extra devices) is reported with the
offending field and exit status 1.

Examples:
  safehouse policy compile code-interpreter.yaml --spec bundle/config.json
  safehouse policy compile --strict-default --spec config.json --flags";

const EXPLAIN_HELP: &str = "\
Prints, one sentence per line, what an agent under the policy may and may not do.

Examples:
  safehouse policy explain examples/policies/web-research.yaml
  safehouse policy explain --strict-default";

const COMPARE_HELP: &str = "\
Says, dimension by dimension (filesystem, network, process, resources, audit), whether the
CANDIDATE policy is no looser than the BASE policy, and for each way it is looser, which field
and why. This is the check the runtime applies when a pod annotation selects a policy: the
base is the handler's default, and a looser candidate is refused unless [policy] selectable
lists it.

The comparison is conservative: only what can be shown from the two manifests to grant no
more counts as no looser. A host zone must name the same source and path as a base zone, the
user must be the same, an egress entry must lie within a base entry (host names equal or
below a base '*.' entry; address ranges inside a base range; the same port or the base's any
port), tools must be a subset of a non-empty base list, limits lower or equal, audit records a
superset, and kill stays kill.

Exit status: 0 when CANDIDATE is no looser than BASE, 1 when it is looser, 2 when a file
cannot be read or is not a valid policy.

Examples:
  safehouse policy compare /etc/safehouse/policies/strict.yaml ci-job.yaml
  safehouse policy compare --strict-default examples/policies/web-research.yaml";

/// `safehouse policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check policy files and report findings with file:line:column and field.
    #[command(long_about = LINT_HELP)]
    Lint {
        /// Policy files (YAML or JSON).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compile a policy against an OCI spec and print the confined spec.
    #[command(long_about = COMPILE_HELP)]
    Compile {
        #[command(flatten)]
        policy: PolicySource,
        /// The OCI runtime spec (config.json) to confine.
        #[arg(long, value_name = "CONFIG_JSON")]
        spec: PathBuf,
        /// Also print the runsc flags, audit plan and timeout (on stderr, so stdout stays JSON).
        #[arg(long)]
        flags: bool,
    },
    /// Say in plain sentences what an agent under the policy may and may not do.
    #[command(long_about = EXPLAIN_HELP)]
    Explain {
        #[command(flatten)]
        policy: PolicySource,
    },
    /// Say, dimension by dimension, whether CANDIDATE is looser than BASE.
    #[command(long_about = COMPARE_HELP)]
    Compare {
        /// BASE then CANDIDATE policy files; only CANDIDATE with --strict-default.
        #[arg(required = true, num_args = 1..=2, value_names = ["BASE", "CANDIDATE"])]
        files: Vec<PathBuf>,
        /// Compare against the built-in strict default as BASE.
        #[arg(long)]
        strict_default: bool,
    },
    /// Print the JSON Schema of the AgentPolicy manifest.
    Schema,
}

/// A policy file, or the built-in strict default.
#[derive(Debug, Args)]
pub struct PolicySource {
    /// Policy file (YAML or JSON).
    #[arg(required_unless_present = "strict_default")]
    file: Option<PathBuf>,
    /// Use the built-in strict default policy instead of a file.
    #[arg(long, conflicts_with = "file")]
    strict_default: bool,
}

/// Runs one `safehouse policy` subcommand.
pub fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Lint { files } => Ok(lint(&files)),
        PolicyCommand::Compile {
            policy,
            spec,
            flags,
        } => compile_cmd(&policy, &spec, flags),
        PolicyCommand::Explain { policy } => {
            let Some(policy) = load(&policy)? else {
                return Ok(ExitCode::from(1));
            };
            let mut out = std::io::stdout().lock();
            for line in explain(&policy) {
                writeln!(out, "{line}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Compare {
            files,
            strict_default,
        } => compare_cmd(&files, strict_default),
        PolicyCommand::Schema => {
            println!("{}", serde_json::to_string_pretty(&json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn lint(files: &[PathBuf]) -> ExitCode {
    let mut unreadable = false;
    let mut findings = false;
    for file in files {
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{name}: cannot read: {e}");
                unreadable = true;
                continue;
            }
        };
        let report = lint_str(&text, Format::for_file(file, &text));
        if report.findings.is_empty() {
            println!("{name}: ok");
        }
        for f in &report.findings {
            println!("{}", f.render(&name));
            findings = true;
        }
        // Notes say what a valid policy does that its author may not expect; never a failure.
        for n in &report.notes {
            println!("{}", n.render(&name));
        }
    }
    match (unreadable, findings) {
        (true, _) => ExitCode::from(2),
        (false, true) => ExitCode::from(1),
        (false, false) => ExitCode::SUCCESS,
    }
}

/// The policy, or `None` after printing its findings; `Err` when the file cannot be read.
fn load(source: &PolicySource) -> Result<Option<AgentPolicy>> {
    let Some(file) = &source.file else {
        return Ok(Some(AgentPolicy::strict_default()));
    };
    match safehouse_policy::load_file(file) {
        Ok(p) => Ok(Some(p)),
        Err(e @ LoadError::Io { .. }) => Err(e.into()),
        Err(e @ LoadError::Invalid { .. }) => {
            eprintln!("{e}");
            Ok(None)
        }
    }
}

fn read_spec(path: &Path) -> Result<std::result::Result<Spec, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read spec", path.display()))?;
    Ok(serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}:{}:{}: invalid OCI spec: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    }))
}

fn compile_cmd(source: &PolicySource, spec_path: &Path, flags: bool) -> Result<ExitCode> {
    let Some(policy) = load(source)? else {
        return Ok(ExitCode::from(1));
    };
    let spec = match read_spec(spec_path)? {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("{msg}");
            return Ok(ExitCode::from(1));
        }
    };
    let compiled = match compile(&policy, &spec, &CompileContext::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", spec_path.display());
            return Ok(ExitCode::from(1));
        }
    };
    let value = digest::sorted(serde_json::to_value(&compiled.spec)?);
    println!("{}", serde_json::to_string_pretty(&value)?);
    if flags {
        let mut err = std::io::stderr().lock();
        for arg in compiled.runsc_args() {
            writeln!(err, "runsc flag: {arg}")?;
        }
        let plan = &compiled.audit_plan;
        writeln!(
            err,
            "audit record: {}",
            serde_json::to_string(&plan.record)?
        )?;
        writeln!(
            err,
            "audit on violation: {}",
            serde_json::to_string(&plan.on_violation)?
        )?;
        writeln!(err, "tools: {:?}", compiled.tools)?;
        match compiled.timeout {
            Some(t) => writeln!(err, "timeout: {}s", t.as_secs_f64())?,
            None => writeln!(err, "timeout: none")?,
        }
        writeln!(err, "policy: {} {}", compiled.name, compiled.digest)?;
        if let Some(filter) = &compiled.filter {
            // The node's own addresses and the DNS upstreams are added by the shim at create.
            let table = safehouse_policy::netfilter::table_name("SANDBOX-ID");
            let script = filter.render(&table, "SANDBOX-ID", &Default::default());
            writeln!(
                err,
                "network filter (nft -f, in the container's network namespace; the shim adds the node's addresses and DNS upstreams):\n{script}"
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn compare_cmd(files: &[PathBuf], strict_default: bool) -> Result<ExitCode> {
    let (base_file, cand_file) = match (strict_default, files) {
        (true, [cand]) => (None, cand),
        (false, [base, cand]) => (Some(base), cand),
        (true, _) => {
            eprintln!("safehouse policy compare: with --strict-default, give only CANDIDATE");
            return Ok(ExitCode::from(2));
        }
        (false, _) => {
            eprintln!(
                "safehouse policy compare: give BASE and CANDIDATE (or --strict-default CANDIDATE)"
            );
            return Ok(ExitCode::from(2));
        }
    };
    let base = match base_file {
        None => AgentPolicy::strict_default(),
        Some(f) => match load_for_compare(f) {
            Some(p) => p,
            None => return Ok(ExitCode::from(2)),
        },
    };
    let Some(cand) = load_for_compare(cand_file) else {
        return Ok(ExitCode::from(2));
    };
    let base_label = match base_file {
        None => format!("{} (built-in)", base.name()),
        Some(f) => format!("{} ({})", base.name(), f.display()),
    };
    let cmp = compare(&base, &cand);
    let mut out = std::io::stdout().lock();
    writeln!(out, "base: {base_label}")?;
    writeln!(out, "candidate: {} ({})", cand.name(), cand_file.display())?;
    for d in Dimension::ALL {
        let found: Vec<_> = cmp.in_dimension(d).collect();
        if found.is_empty() {
            writeln!(out, "{d}: no looser")?;
        } else {
            writeln!(out, "{d}: LOOSER")?;
            for l in found {
                writeln!(out, "  {l}")?;
            }
        }
    }
    if cmp.is_no_looser() {
        writeln!(
            out,
            "{} is no looser than {} on every dimension",
            cand.name(),
            base.name()
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        let dims: Vec<&str> = cmp.looser_dimensions().iter().map(|d| d.name()).collect();
        writeln!(
            out,
            "{} is looser than {} in {}",
            cand.name(),
            base.name(),
            dims.join(", ")
        )?;
        Ok(ExitCode::from(1))
    }
}

/// The policy, or `None` after saying on stderr why it cannot be compared.
fn load_for_compare(file: &Path) -> Option<AgentPolicy> {
    match safehouse_policy::load_file(file) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("{e}");
            None
        }
    }
}
