//! The audit stream end to end: a known workload in one sandbox produces exactly the expected
//! events with an intact chain, `safehouse audit verify` finds tampering at the right line,
//! and a hostile client of a sandbox's trace socket neither disturbs that sandbox nor another
//! one. Each scenario writes its own Safehouse runtime config (`[audit] output` in its scratch
//! directory) and ends with the harness's leak check. Only the Safehouse runtime writes an
//! audit stream; the baselines report every scenario as ignored.

mod flood;
mod full;
mod hostile;
mod rotate;
use safehouse_integration::lab;
mod stop;
mod tamper;
mod workload;

use std::process::ExitCode;

use safehouse_integration::Scenario;

fn main() -> ExitCode {
    safehouse_integration::suite::main(&[
        Scenario {
            name: "workload::known_workload_expected_events",
            run: workload::known_workload_expected_events,
        },
        Scenario {
            name: "tamper::verify_names_the_broken_line",
            run: tamper::verify_names_the_broken_line,
        },
        Scenario {
            name: "tamper::signed_log_catches_a_deleted_sandbox",
            run: tamper::signed_log_catches_a_deleted_sandbox,
        },
        Scenario {
            name: "stop::killed_shim_chain_is_closed_by_the_delete_action",
            run: stop::killed_shim_chain_is_closed_by_the_delete_action,
        },
        Scenario {
            name: "full::full_destination_spools_and_orphans_nothing",
            run: full::full_destination_spools_and_orphans_nothing,
        },
        Scenario {
            name: "flood::flood_is_cut_while_another_sandbox_flows",
            run: flood::flood_is_cut_while_another_sandbox_flows,
        },
        Scenario {
            name: "rotate::rename_rotation_keeps_every_event_once",
            run: rotate::rename_rotation_keeps_every_event_once,
        },
        Scenario {
            name: "hostile::garbage_on_trace_socket_is_contained",
            run: hostile::garbage_on_trace_socket_is_contained,
        },
        Scenario {
            name: "stop::stop_kills_records_and_leaves_nothing",
            run: stop::stop_kills_records_and_leaves_nothing,
        },
        Scenario {
            name: "stop::stop_all_in_a_namespace_stops_that_namespace_only",
            run: stop::stop_all_in_a_namespace_stops_that_namespace_only,
        },
    ])
}
