//! The runner of a `harness = false` test binary: one private containerd for the whole binary,
//! scenarios as libtest-mimic trials (so `cargo test`, filters and nextest behave as usual),
//! skip-or-fail on missing prerequisites, and teardown before the process exits.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use nix::sys::signal::{SigSet, Signal};

use crate::cri_env::ContainerdBuild;
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

/// Runs `scenarios` with libtest-mimic against one shared environment (the system's
/// containerd) and returns the exit code.
pub fn main(scenarios: &[Scenario]) -> ExitCode {
    run_matrix(scenarios, &[])
}

/// Like [`main`], and also runs the scenarios named in `core` against every other containerd
/// build of the compatibility matrix (`SAFEHOUSE_IT_CONTAINERD`, default `system,1.7.24,2.1.9`;
/// see [`ContainerdBuild::selected`]), one private containerd per build, started when its first
/// scenario runs. Trial names of the other builds carry the version
/// (`containerd-2.1.9::lifecycle::sigkill_is_137`). Only the Safehouse runtime has a matrix.
pub fn run_matrix(scenarios: &[Scenario], core: &[&str]) -> ExitCode {
    let args = Arguments::from_args();
    let runtime = RuntimeKind::from_env();
    let mut builds = vec![ContainerdBuild::system()];
    if matches!(runtime, Ok(RuntimeKind::Safehouse)) && !core.is_empty() {
        builds = ContainerdBuild::selected();
    }
    let named: Vec<(String, usize, &Scenario)> = builds
        .iter()
        .enumerate()
        .flat_map(|(i, build)| {
            scenarios
                .iter()
                .filter(move |s| build.bin_dir.is_none() || core.contains(&s.name))
                .map(move |s| {
                    let name = if build.bin_dir.is_none() {
                        s.name.to_string()
                    } else {
                        format!("containerd-{}::{}", build.label, s.name)
                    };
                    (name, i, s)
                })
        })
        .collect();
    if args.list {
        let trials = named
            .iter()
            .map(|(name, _, _)| Trial::test(name.clone(), || Ok(())))
            .collect();
        return libtest_mimic::run(&args, trials).exit_code();
    }
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => return fail_all(&args, &named, format!("{e:#}")),
    };
    if let Some(reason) = missing_prerequisites(runtime) {
        if is_ci() {
            return fail_all(&args, &named, format!("{reason} (CI=true: not skipping)"));
        }
        let trials = named
            .iter()
            .map(|(name, _, _)| {
                let reason = reason.clone();
                Trial::ignorable_test(name.clone(), move || Ok(Completion::ignored_with(reason)))
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
    let cleanups: Arc<Mutex<Vec<Cleanup>>> = Arc::default();
    let slots: Vec<Arc<Slot>> = builds
        .into_iter()
        .enumerate()
        .map(|(i, build)| {
            Arc::new(Slot {
                build,
                index: i as u32,
                runtime,
                env: OnceLock::new(),
                cleanups: cleanups.clone(),
            })
        })
        .collect();
    let on_signal = cleanups.clone();
    std::thread::spawn(move || {
        if let Ok(signal) = signals.wait() {
            eprintln!("safehouse-integration: {signal:?}: cleaning up and exiting");
            for cleanup in on_signal.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                cleanup();
            }
            std::process::exit(130);
        }
    });
    let trials = named
        .into_iter()
        .map(|(name, i, s)| {
            let slot = slots[i].clone();
            let run = s.run;
            Trial::ignorable_test(name, move || {
                if let (Some(missing), false) = (slot.build.missing(), is_ci()) {
                    return Ok(Completion::ignored_with(missing));
                }
                let env = slot.get().map_err(|e| Failed::from(format!("{e:#}")))?;
                match run(&env) {
                    Ok(()) => Ok(Completion::Completed),
                    Err(e) => match e.downcast_ref::<NotApplicable>() {
                        Some(reason) => Ok(Completion::ignored_with(reason)),
                        None => Err(Failed::from(describe_error(&e))),
                    },
                }
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let mut leftovers = false;
    for slot in slots {
        let Ok(slot) = Arc::try_unwrap(slot) else {
            eprintln!("safehouse-integration: environment still shared at exit");
            return ExitCode::FAILURE;
        };
        let Some(Ok(env)) = slot.env.into_inner() else {
            continue;
        };
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
        leftovers |= !teardown.forced.is_empty();
    }
    if leftovers && !conclusion.has_failed() {
        eprintln!("safehouse-integration: FAILED: the teardown found leftovers the scenarios left");
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}

type Cleanup = Box<dyn Fn() + Send + Sync>;

/// One containerd build's environment, started by the first scenario that needs it.
struct Slot {
    build: ContainerdBuild,
    index: u32,
    runtime: RuntimeKind,
    env: OnceLock<std::result::Result<Arc<TestEnv>, String>>,
    cleanups: Arc<Mutex<Vec<Cleanup>>>,
}

impl Slot {
    fn get(&self) -> Result<Arc<TestEnv>> {
        let env = self.env.get_or_init(|| {
            if let Some(missing) = self.build.missing() {
                return Err(missing);
            }
            // (containerd is spawned from a thread that outlives this trial's worker: see
            // `containerd::spawn_from_lasting_thread`.)
            let env = TestEnv::start_build(self.runtime, &self.build, self.index)
                .map(Arc::new)
                .map_err(|e| {
                    format!(
                        "containerd {}: environment setup failed: {e:#}",
                        self.build.label
                    )
                })?;
            self.cleanups
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Box::new(env.emergency_cleanup()));
            Ok(env)
        });
        env.clone().map_err(anyhow::Error::msg)
    }
}

fn interrupt_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

fn fail_all(args: &Arguments, named: &[(String, usize, &Scenario)], reason: String) -> ExitCode {
    let trials = named
        .iter()
        .map(|(name, _, _)| {
            let reason = reason.clone();
            Trial::test(name.clone(), move || Err(Failed::from(reason)))
        })
        .collect();
    libtest_mimic::run(args, trials).exit_code()
}
