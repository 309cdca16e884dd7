//! A spec's `linux.seccomp` compiled to BPF, for the processes `runsc exec` starts (the Sentry
//! compiles it itself for a container's init). x86_64 only: gVisor's only ABI here.
//!
//! seccompiler builds filters with one match action each, so a profile becomes a stack whose
//! combination, by the kernel's (and the Sentry's) rule for stacked filters, is the profile:
//! every filter runs, newest first, and the least permissive action wins, the newest filter's
//! data (its errno) among equals.
//! - The base filter: a syscall named by any rule is allowed under that rule's argument
//!   conditions, anything else gets the profile's `defaultAction`.
//! - One filter per distinct action other than ALLOW (an ERRNO with another errno is another
//!   action), in the order the profile first uses them: the syscalls of its rules, under their
//!   conditions, get that action; anything else is allowed.
//!
//! So a rule that matches gets its own action (the base allows it, so the base never ties with
//! another filter), and a syscall whose rules do not match gets the default. Where two rules
//! with different actions both match one call, the less permissive action wins; of two
//! matching ERRNO (or TRACE) rules, the later one in the profile. The helper installs the
//! filters with `seccomp()`, which each filter already installed must let through: the action
//! filters go first, then the base, then any action filter that names `seccomp` itself (one
//! whose rule matches the helper's own call makes the exec fail, never run unfiltered).
//!
//! As libseccomp and runc do: a name unknown on x86_64 is skipped; conditions on distinct
//! arguments must all hold, but conditions repeating an argument index are alternatives (each
//! becomes a rule of its own); values are compared as unsigned 64-bit numbers; `MASKED_EQ`
//! takes `value` as the mask and `valueTwo` as the value. `flags` and `architectures` change
//! nothing here (the filters check for x86_64 and kill any other ABI). NOTIFY cannot be
//! applied (no listener is reachable from the helper) and is refused.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator};
use safehouse_seccomp_exec::format::{Instruction, MAX_FILTERS};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

mod table {
    include!(concat!(env!("OUT_DIR"), "/syscalls_x86_64.rs"));
}

/// The errno of an ERRNO or TRACE action that names none (as runc: EPERM).
const EPERM: u32 = 1;

/// The most instructions the kernel accepts on one process, a 4-instruction penalty per filter
/// included (`MAX_INSNS_PER_PATH`).
const MAX_TOTAL_INSTRUCTIONS: usize = 32_768;

/// Why a profile cannot be compiled.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// An action the helper cannot apply.
    #[error("linux.seccomp.{at}: action {action} cannot be applied to processes started by exec (Safehouse compiles the profile itself for them; it supports ALLOW, ERRNO, KILL, KILL_THREAD, KILL_PROCESS, TRAP, TRACE and LOG)")]
    UnsupportedAction {
        /// Where (`defaultAction`, `syscalls[3].action`).
        at: String,
        /// The action as the spec names it.
        action: String,
    },
    /// An argument index past the six a syscall has.
    #[error(
        "linux.seccomp.syscalls[{rule}].args[{arg}]: index {index} is not an argument (0 to 5)"
    )]
    ArgumentIndex {
        /// The rule.
        rule: usize,
        /// The condition.
        arg: usize,
        /// Its index.
        index: usize,
    },
    /// More than the kernel takes.
    #[error(
        "linux.seccomp: the profile compiles to {0}, more than the kernel accepts on one process"
    )]
    TooLarge(String),
    /// seccompiler refused a filter.
    #[error("linux.seccomp: {0}")]
    Backend(#[from] BackendError),
}

/// The x86_64 number of system call `name`, if it has one.
pub fn syscall_number(name: &str) -> Option<i64> {
    table::SYSCALLS
        .binary_search_by_key(&name, |(n, _)| n)
        .ok()
        .map(|i| i64::from(table::SYSCALLS[i].1))
}

/// The filters that make `profile` hold, in the order they must be installed.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Vec<Instruction>>, ProfileError> {
    let default = action(
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultAction",
    )?;
    let mut base = Matches::default();
    // Distinct actions other than ALLOW, in the order the profile first uses them.
    let mut by_action: Vec<(SeccompAction, Matches)> = Vec::new();
    for (i, rule) in profile.syscalls().iter().flatten().enumerate() {
        let act = action(
            rule.action(),
            rule.errno_ret(),
            &format!("syscalls[{i}].action"),
        )?;
        let when = conditions(i, rule.args().as_deref().unwrap_or_default())?;
        if matches!(when, When::Never) {
            continue;
        }
        let numbers: Vec<i64> = rule
            .names()
            .iter()
            .filter_map(|n| syscall_number(n))
            .collect();
        for &nr in &numbers {
            base.add(nr, &when);
        }
        if act == SeccompAction::Allow {
            continue;
        }
        let at = match by_action.iter().position(|(a, _)| *a == act) {
            Some(at) => at,
            None => {
                by_action.push((act, Matches::default()));
                by_action.len() - 1
            }
        };
        for &nr in &numbers {
            by_action[at].1.add(nr, &when);
        }
    }
    if 1 + by_action.len() > MAX_FILTERS {
        return Err(ProfileError::TooLarge(format!(
            "{} filters",
            1 + by_action.len()
        )));
    }
    let base = if default == SeccompAction::Allow {
        // Every rule of the base would allow what the default allows anyway: a filter that
        // allows everything still puts the process in seccomp mode 2, as the spec asks.
        SeccompFilter::new(
            BTreeMap::new(),
            SeccompAction::Allow,
            SeccompAction::KillProcess,
            TargetArch::x86_64,
        )?
    } else {
        SeccompFilter::new(
            base.into_rules(),
            default,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?
    };
    // The helper installs them one by one with `seccomp()`, which each filter installed must
    // let through: the action filters first (they allow everything they do not name), the
    // base next, and last those that name `seccomp` itself.
    let seccomp_nr = syscall_number("seccomp");
    let (mut early, mut late) = (Vec::new(), Vec::new());
    for (act, matches) in by_action {
        if matches.is_empty() {
            continue;
        }
        let names_seccomp = seccomp_nr.is_some_and(|nr| matches.0.contains_key(&nr));
        let filter = SeccompFilter::new(
            matches.into_rules(),
            SeccompAction::Allow,
            act,
            TargetArch::x86_64,
        )?;
        if names_seccomp {
            late.push(filter);
        } else {
            early.push(filter);
        }
    }
    let mut filters = early;
    filters.push(base);
    filters.append(&mut late);
    let mut out = Vec::with_capacity(filters.len());
    for f in filters {
        let prog = BpfProgram::try_from(f)?;
        out.push(
            prog.into_iter()
                .map(|i| Instruction {
                    code: i.code,
                    jt: i.jt,
                    jf: i.jf,
                    k: i.k,
                })
                .collect::<Vec<_>>(),
        );
    }
    let total: usize = out.iter().map(|f| f.len() + 4).sum();
    if total > MAX_TOTAL_INSTRUCTIONS {
        return Err(ProfileError::TooLarge(format!(
            "{total} instructions (with the kernel's per-filter penalty)"
        )));
    }
    Ok(out)
}

/// When a rule matches a call of one of its syscalls.
enum When {
    /// Its conditions can never all hold.
    Never,
    /// On the number alone.
    Always,
    /// When any of these holds.
    Any(Vec<SeccompRule>),
}

/// Syscalls and the conditions under which a filter matches them (`None`: always).
#[derive(Default)]
struct Matches(BTreeMap<i64, Option<Vec<SeccompRule>>>);

impl Matches {
    fn add(&mut self, nr: i64, when: &When) {
        let entry = self.0.entry(nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), when) {
            (Some(existing), When::Any(more)) => existing.extend(more.iter().cloned()),
            (Some(_), When::Always) => *entry = None,
            (None, _) | (_, When::Never) => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// seccompiler's form: an empty rule list matches on the number alone.
    fn into_rules(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.0
            .into_iter()
            .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
            .collect()
    }
}

/// When a rule with these conditions matches.
fn conditions(rule: usize, args: &[LinuxSeccompArg]) -> Result<When, ProfileError> {
    if args.is_empty() {
        return Ok(When::Always);
    }
    let mut conds = Vec::with_capacity(args.len());
    for (i, arg) in args.iter().enumerate() {
        conds.push(condition(rule, i, arg)?);
    }
    let mut indices: Vec<usize> = args.iter().map(|a| a.index()).collect();
    indices.sort_unstable();
    indices.dedup();
    let rules = if indices.len() == args.len() {
        // All must hold: one that never does makes the rule never match.
        let Some(all) = conds.into_iter().collect::<Option<Vec<_>>>() else {
            return Ok(When::Never);
        };
        vec![SeccompRule::new(all)?]
    } else {
        // An argument named twice: each condition is an alternative (runc's reading).
        conds
            .into_iter()
            .flatten()
            .map(|c| SeccompRule::new(vec![c]))
            .collect::<Result<Vec<_>, _>>()?
    };
    if rules.is_empty() {
        return Ok(When::Never);
    }
    Ok(When::Any(rules))
}

/// One condition: `None` when it can never hold (a MASKED_EQ value outside its mask).
fn condition(
    rule: usize,
    at: usize,
    arg: &LinuxSeccompArg,
) -> Result<Option<SeccompCondition>, ProfileError> {
    let index =
        u8::try_from(arg.index())
            .ok()
            .filter(|i| *i <= 5)
            .ok_or(ProfileError::ArgumentIndex {
                rule,
                arg: at,
                index: arg.index(),
            })?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            let (mask, value) = (arg.value(), arg.value_two().unwrap_or(0));
            if value & !mask != 0 {
                return Ok(None);
            }
            (SeccompCmpOp::MaskedEq(mask), value)
        }
    };
    Ok(Some(SeccompCondition::new(
        index,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?))
}

/// The seccompiler action for a spec's action and errno.
fn action(
    act: LinuxSeccompAction,
    errno: Option<u32>,
    at: &str,
) -> Result<SeccompAction, ProfileError> {
    Ok(match act {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(ProfileError::UnsupportedAction {
                at: at.to_string(),
                action: "SCMP_ACT_NOTIFY".into(),
            })
        }
    })
}

#[cfg(test)]
#[path = "profile_tests.rs"]
mod tests;
