//! A flooding sandbox is cut at its audit budget while another sandbox's events keep flowing
//! into the same log, and what the budget cut is counted.

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Result};
use safehouse_integration::TestEnv;

use crate::lab::{is, Lab};
use crate::workload::RECORD_ALL_OFFLINE;

/// With `[audit.budget]` at 100 events/s (bursts of 200), sandbox A writes a file 3,000 times
/// as fast as it can while sandbox B writes one 40 times, slowly. A's log has `dropped`
/// events with source `budget` whose counts add up to what is missing, its exec and exit are
/// there, and its chain has no gap; B lost nothing: all 40 of its writes are in the log.
pub fn flood_is_cut_while_another_sandbox_flows(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "flood")?;
    lab.policy("recorded", RECORD_ALL_OFFLINE)?;
    let config = fs::read_to_string(lab.config_path())?;
    fs::write(
        lab.config_path(),
        format!("{config}\n[audit.budget]\nevents_per_sec = 100\nevent_burst = 200\n"),
    )?;
    let flood = env.id("flooder");
    let calm = env.id("calm");
    env.scenario(&[&flood, &calm], || {
        let loud = "i=0; while [ $i -lt 3000 ]; do echo $i > /tmp/f; i=$((i+1)); done";
        let quiet = "i=0; while [ $i -lt 40 ]; do echo $i > /tmp/calm-$i; i=$((i+1)); sleep 0.05; done";
        let runs = [
            lab.start(Some("recorded"), &["--rm"], &flood, &["sh", "-c", loud])?,
            lab.start(Some("recorded"), &["--rm"], &calm, &["sh", "-c", quiet])?,
        ];
        for run in runs {
            let out = run.wait(Duration::from_secs(180))?;
            ensure!(out.success(), "workload: {}", out.describe());
        }
        for id in [&flood, &calm] {
            lab.wait_event(id, "its delete", |e| is(e, "lifecycle", "delete"))?;
        }

        let of_flood = lab.events_of(&flood);
        let cut: u64 = of_flood
            .iter()
            .filter(|e| e["dropped"]["source"] == "budget")
            .filter_map(|e| e["dropped"]["count"].as_u64())
            .sum();
        ensure!(
            cut > 1000,
            "the flood should be cut at its budget and the cut counted: {cut} counted, {} events kept",
            of_flood.len()
        );
        ensure!(
            of_flood.iter().any(|e| is(e, "lifecycle", "exit")),
            "the flooder's exit is never cut"
        );
        let seqs: Vec<u64> = of_flood.iter().filter_map(|e| e["seq"].as_u64()).collect();
        ensure!(
            seqs == (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "the flooder's chain has a gap: {seqs:?}"
        );

        let of_calm = lab.events_of(&calm);
        let writes = (0..40)
            .filter(|i| {
                let path = format!("/tmp/calm-{i}");
                of_calm
                    .iter()
                    .any(|e| e["category"] == "file" && e["file"]["path"] == path.as_str())
            })
            .count();
        ensure!(
            writes == 40
                && !of_calm
                    .iter()
                    .any(|e| e["dropped"]["source"] == "budget"),
            "the calm sandbox lost events beside the flood: {writes} of 40 writes recorded"
        );
        Ok(())
    })
}
