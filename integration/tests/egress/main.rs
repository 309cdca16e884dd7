//! Egress allowlists end to end: each scenario builds its own pod network namespace and test
//! hosts (`safehouse_integration::netlab`), runs a busybox checker in a Safehouse container given
//! that namespace (`ctr run --with-ns network:PATH`), asserts what reached which host (from the
//! checker's output and the hosts' own logs), what the audit stream recorded, and that no
//! table, set, forwarder socket or process of the sandbox is left. Only the Safehouse runtime
//! has policies; the baselines report every scenario as ignored.
//!
//! CRI: the same checks through CRI pods (the lab's hosts attached to the pod's CNI namespace)
//! are in `integration/tests/cri/egress.rs`.

use safehouse_integration::lab;

mod dns;
mod filter;
mod names;
mod nerdctl;
mod sandboxes;

use std::process::ExitCode;

use safehouse_integration::Scenario;

fn main() -> ExitCode {
    safehouse_integration::suite::main(&[
        Scenario {
            name: "filter::allowed_port_answers_the_rest_is_refused_at_once",
            run: filter::allowed_port_answers_the_rest_is_refused_at_once,
        },
        Scenario {
            name: "filter::udp_icmp_and_raw_to_unlisted_hosts_go_nowhere",
            run: filter::udp_icmp_and_raw_to_unlisted_hosts_go_nowhere,
        },
        Scenario {
            name: "filter::open_keeps_metadata_closed_unless_named",
            run: filter::open_keeps_metadata_closed_unless_named,
        },
        Scenario {
            name: "filter::inbound_refused_unless_ingress_lists_the_source",
            run: filter::inbound_refused_unless_ingress_lists_the_source,
        },
        Scenario {
            name: "names::listed_names_resolve_and_connect_until_their_ttl",
            run: names::listed_names_resolve_and_connect_until_their_ttl,
        },
        Scenario {
            name: "names::slow_upstream_answers_hold_up_nothing_and_tcp_gets_whole_answers",
            run: names::slow_upstream_answers_hold_up_nothing_and_tcp_gets_whole_answers,
        },
        Scenario {
            name: "dns::queries_carry_one_address_question_rebuilt",
            run: dns::queries_carry_one_address_question_rebuilt,
        },
        Scenario {
            name: "dns::answers_into_private_ranges_are_not_opened",
            run: dns::answers_into_private_ranges_are_not_opened,
        },
        Scenario {
            name: "nerdctl::pathless_namespace_with_a_cni_hook_is_filtered",
            run: nerdctl::pathless_namespace_with_a_cni_hook_is_filtered,
        },
        Scenario {
            name: "sandboxes::two_sandboxes_keep_their_own_rules",
            run: sandboxes::two_sandboxes_keep_their_own_rules,
        },
        Scenario {
            name: "sandboxes::pod_members_share_the_sandbox_filter",
            run: sandboxes::pod_members_share_the_sandbox_filter,
        },
        Scenario {
            name: "sandboxes::killed_shim_leaves_no_table",
            run: sandboxes::killed_shim_leaves_no_table,
        },
        Scenario {
            name: "sandboxes::no_namespace_of_its_own_is_refused",
            run: sandboxes::no_namespace_of_its_own_is_refused,
        },
    ])
}

/// Shared by the scenarios: the checker script and what it printed.
pub mod probe {
    use std::collections::BTreeMap;

    use anyhow::{ensure, Result};
    use safehouse_integration::command::Output;
    use safehouse_integration::netlab::{
        check_results, check_script, node_namespace_clean, NetLab,
    };

    /// A busybox `sh` script running each `(name, command)` ([`check_script`]).
    pub fn script(checks: &[(&str, String)]) -> String {
        check_script(checks)
    }

    /// The checker's output split by check: name → (text, exit status).
    pub fn results(out: &Output) -> BTreeMap<String, (String, i32)> {
        check_results(&out.stdout)
    }

    /// Fails unless check `name` exited 0 and printed `needle`.
    pub fn ok(
        r: &BTreeMap<String, (String, i32)>,
        name: &str,
        needle: &str,
        out: &Output,
    ) -> Result<()> {
        let (text, rc) = r.get(name).cloned().unwrap_or_default();
        ensure!(
            rc == 0 && text.contains(needle),
            "{name}: expected success printing {needle:?}, got rc={rc}: {text:?}\n{}",
            out.describe()
        );
        Ok(())
    }

    /// Fails unless check `name` failed with `reason` in its output (e.g. "Connection refused":
    /// refused at once, not timed out) and without `absent`.
    pub fn refused(
        r: &BTreeMap<String, (String, i32)>,
        name: &str,
        reason: &str,
        absent: &str,
        out: &Output,
    ) -> Result<()> {
        let (text, rc) = r.get(name).cloned().unwrap_or_default();
        ensure!(
            rc != 0 && text.contains(reason) && !text.contains(absent),
            "{name}: expected a failure saying {reason:?} (and no {absent:?}), got rc={rc}: {text:?}\n{}",
            out.describe()
        );
        Ok(())
    }

    /// The leak check of the network part: no Safehouse table or forwarder socket left in the
    /// pod namespace, no Safehouse table in the node's namespace.
    pub fn no_leftovers(lab: &NetLab) -> Result<()> {
        let left = lab.leftovers()?;
        ensure!(left.is_empty(), "left behind: {left:?}");
        node_namespace_clean()
    }
}
