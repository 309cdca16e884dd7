//! Scenarios driven through the real `ctr` against the runtime under test
//! (`SAFEHOUSE_IT_RUNTIME`: `safehouse` by default, or the baselines `runc-runsc` and `runc`).
//! One private containerd serves them all; every scenario ends with a leak check. The core
//! scenarios ([`CORE`]) also run against containerd 1.7 and 2.x (the compatibility matrix,
//! `scripts/containerd-matrix.sh`), each with a private containerd of its own.

mod config;
mod control;
mod crash;
mod errors;
mod events;
mod lifecycle;
mod logging;
mod network;
mod oom;
mod pods;
mod stdio;

use std::process::ExitCode;

use safehouse_integration::Scenario;

/// What every containerd version users run must pass: the lifecycle, exit codes, exec, stdio
/// and nerdctl's binary:// logging, pause, events, pods, OOM and the clean-up after a killed shim.
const CORE: &[&str] = &[
    "lifecycle::run_output_and_exit_code",
    "lifecycle::sigkill_is_137",
    "lifecycle::run_rm_removes_everything",
    "lifecycle::detached_exec_kill_delete",
    "stdio::stdin_reaches_process",
    "stdio::log_uri_binary",
    "control::pause_resume",
    "events::task_events_published",
    "pods::pod_shares_shim_and_sandbox",
    "oom::oom_kill_is_reported",
    "crash::shim_sigkill_then_cleanup",
];

fn main() -> ExitCode {
    safehouse_integration::suite::run_matrix(
        &[
            Scenario {
                name: "lifecycle::run_output_and_exit_code",
                run: lifecycle::run_output_and_exit_code,
            },
            Scenario {
                name: "lifecycle::sigkill_is_137",
                run: lifecycle::sigkill_is_137,
            },
            Scenario {
                name: "lifecycle::run_rm_removes_everything",
                run: lifecycle::run_rm_removes_everything,
            },
            Scenario {
                name: "lifecycle::detached_exec_kill_delete",
                run: lifecycle::detached_exec_kill_delete,
            },
            Scenario {
                name: "lifecycle::failed_start_leaks_nothing",
                run: lifecycle::failed_start_leaks_nothing,
            },
            Scenario {
                name: "lifecycle::failed_create_leaks_nothing",
                run: lifecycle::failed_create_leaks_nothing,
            },
            Scenario {
                name: "errors::errors_are_clear",
                run: errors::errors_are_clear,
            },
            Scenario {
                name: "stdio::terminal_session",
                run: stdio::terminal_session,
            },
            Scenario {
                name: "stdio::exec_terminal",
                run: stdio::exec_terminal,
            },
            Scenario {
                name: "stdio::stdin_reaches_process",
                run: stdio::stdin_reaches_process,
            },
            Scenario {
                name: "stdio::log_uri_binary",
                run: stdio::log_uri_binary,
            },
            Scenario {
                name: "stdio::log_uri_file",
                run: stdio::log_uri_file,
            },
            Scenario {
                name: "control::pause_resume",
                run: control::pause_resume,
            },
            Scenario {
                name: "control::metrics_show_memory",
                run: control::metrics_show_memory,
            },
            Scenario {
                name: "control::ps_lists_processes",
                run: control::ps_lists_processes,
            },
            Scenario {
                name: "control::kill_exec_then_all",
                run: control::kill_exec_then_all,
            },
            Scenario {
                name: "control::checkpoint_answers_clearly",
                run: control::checkpoint_answers_clearly,
            },
            Scenario {
                name: "oom::oom_kill_is_reported",
                run: oom::oom_kill_is_reported,
            },
            Scenario {
                name: "pods::pod_shares_shim_and_sandbox",
                run: pods::pod_shares_shim_and_sandbox,
            },
            Scenario {
                name: "pods::ten_in_parallel",
                run: pods::ten_in_parallel,
            },
            Scenario {
                name: "crash::shim_sigkill_then_cleanup",
                run: crash::shim_sigkill_then_cleanup,
            },
            Scenario {
                name: "events::task_events_published",
                run: events::task_events_published,
            },
            Scenario {
                name: "config::runtime_state_in_configured_root",
                run: config::runtime_state_in_configured_root,
            },
            Scenario {
                name: "config::runs_without_config_file",
                run: config::runs_without_config_file,
            },
            Scenario {
                name: "logging::shim_log_lines_name_their_container",
                run: logging::shim_log_lines_name_their_container,
            },
            Scenario {
                name: "network::plain_run_has_loopback_only",
                run: network::plain_run_has_loopback_only,
            },
            Scenario {
                name: "network::given_netns_is_used",
                run: network::given_netns_is_used,
            },
        ],
        CORE,
    )
}
