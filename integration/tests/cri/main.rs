//! CRI pods driven the way kubelet drives them, against each containerd version users run:
//! 1.6 (the system's), 1.7 and 2.x (the compatibility matrix's private builds). One private
//! containerd per version, started when its first scenario runs; trial names carry the version
//! (`containerd-2.1.9::pod_two_containers_one_sandbox`). The 1.7 and 2.x runs keep to the core
//! scenarios so the matrix stays cheap. Choose versions with `SAFEHOUSE_IT_CONTAINERD`
//! (comma-separated: `system`, `1.7.24`, `2.1.9`).

mod egress;
mod lifecycle;
mod pod_limits;
mod pods;
mod policy;
mod resources;
mod security;

use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use safehouse_integration::cri_env::{ContainerdBuild, CriEnv};
use safehouse_integration::env::describe_error;
use safehouse_integration::suite::{is_ci, missing_prerequisites};
use safehouse_integration::RuntimeKind;

/// A CRI scenario.
struct CriScenario {
    name: &'static str,
    run: fn(&CriEnv) -> Result<()>,
    /// Runs on every containerd version (else only on the system's).
    core: bool,
}

const SCENARIOS: &[CriScenario] = &[
    CriScenario {
        name: "pod_two_containers_one_sandbox",
        run: pods::two_containers_one_sandbox,
        core: true,
    },
    CriScenario {
        name: "exec_sync_output_exit_code_timeout",
        run: lifecycle::exec_sync,
        core: true,
    },
    CriScenario {
        name: "container_log_file",
        run: lifecycle::container_log_file,
        core: true,
    },
    CriScenario {
        name: "container_status_exit_code_and_reason",
        run: lifecycle::exit_code_and_reason,
        core: true,
    },
    CriScenario {
        name: "container_status_oom_killed",
        run: resources::oom_killed,
        core: true,
    },
    CriScenario {
        name: "pod_member_oom_killed_alone",
        run: pod_limits::member_past_its_memory_limit,
        core: true,
    },
    CriScenario {
        name: "containerd_files_under_a_custom_root",
        run: pod_limits::containerd_files_under_a_custom_root,
        core: true,
    },
    CriScenario {
        name: "stats_real_cpu_and_memory",
        run: resources::stats,
        core: true,
    },
    CriScenario {
        name: "update_container_resources",
        run: resources::update,
        core: true,
    },
    CriScenario {
        name: "stop_container_grace_period",
        run: lifecycle::stop_grace_period,
        core: true,
    },
    CriScenario {
        name: "pod_annotation_selects_policy",
        run: policy::annotation_selects_policy,
        core: true,
    },
    CriScenario {
        name: "pod_member_tools_under_its_own_policy",
        run: policy::member_tools_are_enforced_under_its_own_policy,
        core: false,
    },
    CriScenario {
        name: "pod_env_loader_variables_refused_under_tools",
        run: policy::pod_env_loader_variables_are_refused_under_tools,
        core: false,
    },
    CriScenario {
        name: "pod_own_user_image_serves_within_policy",
        run: policy::own_user_image_serves_within_policy,
        core: false,
    },
    CriScenario {
        name: "pod_security_context_within_policy",
        run: policy::security_context_within_policy,
        core: false,
    },
    CriScenario {
        name: "pod_with_unusable_policy_fails_fast",
        run: policy::unusable_policy_fails,
        core: true,
    },
    // A pod's own security context inside the sandbox (issue #14).
    CriScenario {
        name: "pod_seccomp_profiles_per_container",
        run: security::seccomp_profiles_per_container,
        core: false,
    },
    CriScenario {
        name: "pod_seccomp_profiles_hold_in_exec",
        run: security::seccomp_profiles_hold_in_exec,
        core: false,
    },
    CriScenario {
        name: "pod_masked_and_readonly_paths",
        run: security::masked_and_readonly_paths,
        core: false,
    },
    // Egress allowlists through CRI pods (issue #6), on every containerd version.
    CriScenario {
        name: "egress_allowlist_through_pod",
        run: egress::allowlist_through_pod,
        core: true,
    },
    CriScenario {
        name: "egress_names_through_pod_forwarder",
        run: egress::names_through_pod,
        core: true,
    },
    CriScenario {
        name: "egress_udp_icmp_and_inbound_through_pod",
        run: egress::udp_icmp_and_inbound_through_pod,
        core: true,
    },
    CriScenario {
        name: "egress_two_pods_keep_their_own_rules",
        run: egress::two_pods_keep_their_own_rules,
        core: true,
    },
];

/// Clean-ups of the started environments, run on an interrupt.
type Cleanups = Mutex<Vec<Box<dyn Fn() + Send + Sync>>>;

/// One containerd version's environment, started on first use.
struct Slot {
    build: ContainerdBuild,
    index: u32,
    env: OnceLock<std::result::Result<Arc<CriEnv>, String>>,
}

impl Slot {
    fn get(&self, cleanups: &Cleanups) -> Result<Arc<CriEnv>> {
        let env = self.env.get_or_init(|| {
            if let Some(missing) = self.build.missing() {
                return Err(missing);
            }
            let env = CriEnv::start(&self.build, self.index)
                .map(Arc::new)
                .map_err(|e| format!("containerd {}: setup failed: {e:#}", self.build.label))?;
            if let Ok(mut list) = cleanups.lock() {
                list.push(Box::new(env.emergency_cleanup()));
            }
            Ok(env)
        });
        env.clone().map_err(anyhow::Error::msg)
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let builds = ContainerdBuild::selected();
    let slots: Vec<Arc<Slot>> = builds
        .into_iter()
        .enumerate()
        .map(|(i, build)| {
            Arc::new(Slot {
                build,
                index: i as u32,
                env: OnceLock::new(),
            })
        })
        .collect();
    let skip = if args.list {
        None
    } else {
        missing_prerequisites(RuntimeKind::Safehouse)
    };
    let cleanups: Arc<Cleanups> = Arc::default();
    interrupt_handler(cleanups.clone());

    let mut trials = Vec::new();
    for (n, slot) in slots.iter().enumerate() {
        for s in SCENARIOS.iter().filter(|s| n == 0 || s.core) {
            let name = format!("containerd-{}::{}", slot.build.label, s.name);
            let slot = slot.clone();
            let run = s.run;
            let skip = skip.clone();
            let cleanups = cleanups.clone();
            trials.push(Trial::ignorable_test(name, move || {
                if let Some(reason) = skip {
                    return if is_ci() {
                        Err(Failed::from(format!("{reason} (CI=true: not skipping)")))
                    } else {
                        Ok(Completion::ignored_with(reason))
                    };
                }
                if let (Some(missing), false) = (slot.build.missing(), is_ci()) {
                    return Ok(Completion::ignored_with(missing));
                }
                let env = slot
                    .get(&cleanups)
                    .map_err(|e| Failed::from(format!("{e:#}")))?;
                run(&env)
                    .map(|()| Completion::Completed)
                    .map_err(|e| Failed::from(describe_error(&e)))
            }));
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    // An interrupt's clean-up in progress ends the process itself (exit 130); wait for it.
    drop(CLEANING.lock());
    let mut forced = Vec::new();
    for slot in slots {
        let Ok(slot) = Arc::try_unwrap(slot) else {
            continue;
        };
        if let Some(Ok(env)) = slot.env.into_inner() {
            match Arc::try_unwrap(env) {
                Ok(env) => forced.extend(env.shutdown()),
                Err(_) => eprintln!("safehouse-integration: a CRI environment is still shared"),
            }
        }
    }
    for line in &forced {
        eprintln!("safehouse-integration teardown: {line}");
    }
    if !forced.is_empty() && !conclusion.has_failed() {
        eprintln!("safehouse-integration: FAILED: the teardown found leftovers the scenarios left");
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}

/// Held by the interrupt handler while it cleans up.
static CLEANING: Mutex<()> = Mutex::new(());

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread and cleans up every started environment on
/// one of them.
fn interrupt_handler(cleanups: Arc<Cleanups>) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    if set.thread_block().is_err() {
        eprintln!("safehouse-integration: cannot block signals; Ctrl-C may leave leftovers");
        return;
    }
    std::thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            // Held until exit: main waits on it, so it cannot end the process mid-clean-up.
            let _cleaning = CLEANING.lock();
            eprintln!("safehouse-integration: {signal:?}: cleaning up and exiting");
            if let Ok(list) = cleanups.lock() {
                for cleanup in list.iter() {
                    cleanup();
                }
            }
            // The egress scenarios' test hosts (their own namespaces and responders).
            safehouse_integration::netlab::remove_leftover_namespaces();
            std::process::exit(130);
        }
    });
}
