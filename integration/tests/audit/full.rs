//! A full audit destination never orphans a shim: delete finishes, no shim process stays, and
//! the events that could not be written are written (from the spool) once space frees.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use safehouse_integration::TestEnv;

use crate::lab::{audit_lines, is, Lab};
use crate::workload::RECORD_ALL_OFFLINE;

/// A small tmpfs this scenario mounts; unmounted when dropped, whatever happened.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(at: &Path, size: &str) -> Result<SmallTmpfs> {
        fs::create_dir_all(at)?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "safehouse-it-full",
            ])
            .arg(at)
            .status()
            .context("run mount")?;
        if !status.success() {
            bail!("mount a {size} tmpfs at {}: {status}", at.display());
        }
        Ok(SmallTmpfs(at.to_path_buf()))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The log lives on a 256 KiB tmpfs that a filler file leaves almost no room on. A container
/// writes 200 files and is removed (`ctr run --rm`): the run ends (delete finished), no process
/// mentions the container afterwards (the harness's leak check), and once the filler is gone
/// the next sandbox's writer writes the spooled lines first: the first container's `delete`
/// is in the log, before the second's first event.
pub fn full_destination_spools_and_orphans_nothing(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "full")?;
    lab.policy("recorded", RECORD_ALL_OFFLINE)?;
    let disk = lab.path("small");
    let _tmpfs = SmallTmpfs::mount(&disk, "256k")?;
    let log = disk.join("audit.jsonl");
    let spool = lab.path("spool");
    let config = fs::read_to_string(lab.config_path())?;
    let config = config.replace(
        &format!("output = {:?}", lab.audit.display().to_string()),
        &format!(
            "output = {:?}\nspool = {:?}",
            log.display().to_string(),
            spool.display().to_string()
        ),
    );
    ensure!(
        config.contains("spool = "),
        "the lab's config names no output to move: {config}"
    );
    fs::write(lab.config_path(), config)?;
    // Leave about 8 KiB.
    let filler = disk.join("filler");
    fs::write(&filler, vec![b'x'; 248 * 1024])?;

    let first = env.id("fullfirst");
    let second = env.id("fullsecond");
    env.scenario(&[&first, &second], || {
        let script = "i=0; while [ $i -lt 200 ]; do echo $i > /tmp/f$i; i=$((i+1)); done";
        let out = env.ctr.run_timeout(
            &lab.argv(Some("recorded"), &["--rm"], &first, &["sh", "-c", script]),
            Duration::from_secs(90),
        )?;
        ensure!(
            !out.timed_out && out.success(),
            "run --rm with a full audit destination must finish: {}",
            out.describe()
        );
        let before = audit_lines(&log);
        ensure!(
            !before
                .iter()
                .any(|e| e["sandbox_id"] == first.as_str() && is(e, "lifecycle", "delete")),
            "the destination was not full: the first container's delete is already written"
        );

        // Space again; the next writer writes what was spooled first.
        fs::remove_file(&filler)?;
        let out = env.ctr.run_timeout(
            &lab.argv(Some("recorded"), &["--rm"], &second, &["true"]),
            Duration::from_secs(90),
        )?;
        ensure!(out.success(), "second run: {}", out.describe());
        let after = audit_lines(&log);
        let first_delete = after
            .iter()
            .position(|e| e["sandbox_id"] == first.as_str() && is(e, "lifecycle", "delete"));
        let second_start = after
            .iter()
            .position(|e| e["sandbox_id"] == second.as_str());
        ensure!(
            first_delete.is_some() && first_delete < second_start,
            "the spooled lines (the first container's delete among them) should be written before the next sandbox's: first delete at {first_delete:?}, second's first event at {second_start:?}; {} lines",
            after.len()
        );
        Ok(())
    })
}
