//! End-to-end agent policy enforcement: each scenario writes its own Safehouse runtime config
//! and policies (selected per container by the `safehouse.dev/policy` annotation), runs a
//! busybox checker inside the container through the real containerd, shim and runsc, asserts
//! what the policy promises, and ends with the harness's leak check. Only the Safehouse runtime
//! has policies; the baselines report every scenario as ignored.

mod filesystem;
use safehouse_integration::lab;
mod network;
mod process;
mod refusals;
mod resources;
mod tools;

use std::process::ExitCode;

use safehouse_integration::Scenario;

fn main() -> ExitCode {
    safehouse_integration::suite::main(&[
        Scenario {
            name: "filesystem::rootfs_is_read_only",
            run: filesystem::rootfs_is_read_only,
        },
        Scenario {
            name: "filesystem::scratch_is_writable_and_private",
            run: filesystem::scratch_is_writable_and_private,
        },
        Scenario {
            name: "filesystem::scratch_is_noexec_unless_exec",
            run: filesystem::scratch_is_noexec_unless_exec,
        },
        Scenario {
            name: "filesystem::outputs_persist_inputs_read_only",
            run: filesystem::outputs_persist_inputs_read_only,
        },
        Scenario {
            name: "filesystem::input_survives_truncating_open",
            run: filesystem::input_survives_truncating_open,
        },
        Scenario {
            name: "filesystem::output_size_is_enforced",
            run: filesystem::output_size_is_enforced,
        },
        Scenario {
            name: "filesystem::output_copy_drops_set_id_and_special_files",
            run: filesystem::output_copy_drops_set_id_and_special_files,
        },
        Scenario {
            name: "filesystem::escaping_output_symlinks_are_recorded_or_refused",
            run: filesystem::escaping_output_symlinks_are_recorded_or_refused,
        },
        Scenario {
            name: "filesystem::output_survives_a_shim_crash",
            run: filesystem::output_survives_a_shim_crash,
        },
        Scenario {
            name: "filesystem::output_without_host_directory_is_refused",
            run: filesystem::output_without_host_directory_is_refused,
        },
        Scenario {
            name: "filesystem::dev_fuse_is_absent",
            run: filesystem::dev_fuse_is_absent,
        },
        Scenario {
            name: "process::identity_and_privileges",
            run: process::identity_and_privileges,
        },
        Scenario {
            name: "process::timeout_kills",
            run: process::timeout_kills,
        },
        Scenario {
            name: "process::non_tool_exec_is_refused",
            run: process::non_tool_exec_is_refused,
        },
        Scenario {
            name: "process::relative_init_is_resolved",
            run: process::relative_init_is_resolved,
        },
        Scenario {
            name: "tools::forbidden_binary_never_runs",
            run: tools::forbidden_binary_never_runs,
        },
        Scenario {
            name: "tools::busybox_applets_are_not_tools",
            run: tools::busybox_applets_are_not_tools,
        },
        Scenario {
            name: "tools::dynamic_tool_runs_and_mounts_are_noexec",
            run: tools::dynamic_tool_runs_and_mounts_are_noexec,
        },
        Scenario {
            name: "tools::tools_hold_without_recording_process",
            run: tools::tools_hold_without_recording_process,
        },
        Scenario {
            name: "tools::payloads_without_a_listed_path_never_run",
            run: tools::payloads_without_a_listed_path_never_run,
        },
        Scenario {
            name: "tools::preloaded_library_in_a_listed_tool_is_a_violation",
            run: tools::preloaded_library_in_a_listed_tool_is_a_violation,
        },
        Scenario {
            name: "tools::descriptor_paths_to_an_unlisted_file_never_run",
            run: tools::descriptor_paths_to_an_unlisted_file_never_run,
        },
        Scenario {
            name: "tools::exec_gets_the_profile_and_the_list",
            run: tools::exec_gets_the_profile_and_the_list,
        },
        Scenario {
            name: "tools::loader_variables_in_the_spec_are_refused",
            run: tools::loader_variables_in_the_spec_are_refused,
        },
        Scenario {
            name: "resources::fork_loop_is_bounded",
            run: resources::fork_loop_is_bounded,
        },
        Scenario {
            name: "resources::small_pids_limit_fails_forks_inside",
            run: resources::small_pids_limit_fails_forks_inside,
        },
        Scenario {
            name: "resources::memory_limit_ooms",
            run: resources::memory_limit_ooms,
        },
        Scenario {
            name: "network::none_blocks_test_host_open_reaches_it",
            run: network::none_blocks_test_host_open_reaches_it,
        },
        Scenario {
            name: "process::multicall_binary_under_an_unlisted_name_is_a_violation",
            run: process::multicall_binary_under_an_unlisted_name_is_a_violation,
        },
        Scenario {
            name: "refusals::unnamed_host_bind_is_refused",
            run: refusals::unnamed_host_bind_is_refused,
        },
        Scenario {
            name: "refusals::allowlist_policy_is_refused",
            run: refusals::allowlist_policy_is_refused,
        },
        Scenario {
            name: "refusals::unknown_or_unlisted_policy_is_refused",
            run: refusals::unknown_or_unlisted_policy_is_refused,
        },
    ])
}
