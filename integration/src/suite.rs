//! The runner of a `harness = false` test binary: one private containerd for the whole binary,
//! scenarios as libtest-mimic trials (so `cargo test`, filters and nextest behave as usual),
//! skip-or-fail on missing prerequisites, and teardown before the process exits.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use nix::sys::signal::{SigSet, Signal};

use crate::env::{describe_error, TestEnv};
use crate::runtime::{which, RuntimeKind};

/// A named scenario run against the shared environment.
pub struct Scenario {
    /// The trial name (`cargo test -- NAME` filters on it).
    pub name: &'static str,
    /// The scenario body.
    pub run: fn(&TestEnv) -> Result<()>,
}

/// A scenario returns this (as its error) when it does not apply to the runtime under test;
/// it is then reported as ignored with the reason.
#[derive(Debug)]
pub struct NotApplicable(pub String);

impl std::fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotApplicable {}

/// Fails with [`NotApplicable`] unless the runtime under test is `runtime`.
pub fn only_for(env: &TestEnv, runtime: RuntimeKind) -> Result<()> {
    if env.runtime == runtime {
        Ok(())
    } else {
        Err(NotApplicable(format!("only for the {} runtime", runtime.name())).into())
    }
}

/// Why the scenarios cannot run here, if they cannot.
pub fn missing_prerequisites(runtime: RuntimeKind) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("integration tests need root (containerd, runsc, mounts)".into());
    }
    let mut needed = vec!["containerd", "ctr", "umoci", "tar", "ip", "python3"];
    needed.extend_from_slice(runtime.required_binaries());
    let missing: Vec<&str> = needed.into_iter().filter(|b| which(b).is_none()).collect();
    if !std::path::Path::new("/bin/busybox").is_file() {
        return Some("/bin/busybox is missing (busybox-static; run `make deps`)".into());
    }
    (!missing.is_empty())
        .then(|| format!("missing on PATH: {} (run `make deps`)", missing.join(", ")))
}

/// True under CI, where a missing prerequisite is a failure rather than a skip.
pub fn is_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Runs `scenarios` with libtest-mimic against one shared environment and returns the exit code.
pub fn main(scenarios: &[Scenario]) -> ExitCode {
    let args = Arguments::from_args();
    if args.list {
        let trials = scenarios
            .iter()
            .map(|s| Trial::test(s.name, || Ok(())))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }
    let runtime = match RuntimeKind::from_env() {
        Ok(r) => r,
        Err(e) => return fail_all(&args, scenarios, format!("{e:#}")),
    };
    if let Some(reason) = missing_prerequisites(runtime) {
        if is_ci() {
            return fail_all(
                &args,
                scenarios,
                format!("{reason} (CI=true: not skipping)"),
            );
        }
        let trials = scenarios
            .iter()
            .map(|s| {
                let reason = reason.clone();
                Trial::ignorable_test(s.name, move || Ok(Completion::ignored_with(reason)))
            })
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }
    eprintln!(
        "safehouse-integration: runtime under test: {}",
        runtime.name()
    );
    // Signals go to one thread that cleans up; every other thread (and, through it, every
    // child: std resets the mask on exec) inherits the mask set here.
    let signals = interrupt_signals();
    if let Err(e) = signals.thread_block() {
        eprintln!("safehouse-integration: cannot block signals ({e}); Ctrl-C may leave leftovers");
    }
    let env = match TestEnv::start(runtime) {
        Ok(env) => Arc::new(env),
        Err(e) => return fail_all(&args, scenarios, format!("environment setup failed: {e:#}")),
    };
    let cleanup = env.emergency_cleanup();
    std::thread::spawn(move || {
        if let Ok(signal) = signals.wait() {
            eprintln!("safehouse-integration: {signal:?}: cleaning up and exiting");
            cleanup();
            std::process::exit(130);
        }
    });
    let trials = scenarios
        .iter()
        .map(|s| {
            let env = env.clone();
            let run = s.run;
            Trial::ignorable_test(s.name, move || match run(&env) {
                Ok(()) => Ok(Completion::Completed),
                Err(e) => match e.downcast_ref::<NotApplicable>() {
                    Some(reason) => Ok(Completion::ignored_with(reason)),
                    None => Err(Failed::from(describe_error(&e))),
                },
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let Ok(env) = Arc::try_unwrap(env) else {
        eprintln!("safehouse-integration: environment still shared at exit");
        return ExitCode::FAILURE;
    };
    let teardown = env.shutdown();
    for line in &teardown.forced {
        eprintln!("safehouse-integration teardown: {line}");
    }
    eprintln!(
        "safehouse-integration: containerd log kept at {}",
        teardown.log.display()
    );
    if !teardown.forced.is_empty() && !conclusion.has_failed() {
        eprintln!("safehouse-integration: FAILED: the teardown found leftovers the scenarios left");
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}

fn interrupt_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

fn fail_all(args: &Arguments, scenarios: &[Scenario], reason: String) -> ExitCode {
    let trials = scenarios
        .iter()
        .map(|s| {
            let reason = reason.clone();
            Trial::test(s.name, move || Err(Failed::from(reason)))
        })
        .collect();
    libtest_mimic::run(args, trials).exit_code()
}
