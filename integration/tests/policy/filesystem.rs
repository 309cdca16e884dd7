//! Filesystem zones: a read-only rootfs, private noexec scratch, host outputs that persist and
//! host inputs that cannot be written.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use safehouse_integration::command::wait_for;
use safehouse_integration::TestEnv;
use sha2::{Digest, Sha256};

use crate::lab::{says, Lab};

/// The strict default (uid 65534) and a root policy both fail to write the rootfs; as root the
/// error is the read-only mount's (EROFS), not a permission check.
pub fn rootfs_is_read_only(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "rootfs")?;
    lab.policy("root-ro", r#"{process: {user: "0:0"}}"#)?;
    let strict = env.id("rofs-strict");
    let root = env.id("rofs-root");
    env.scenario(&[&strict, &root], || {
        let check = "touch /written-by-agent && echo WROTE; id -u";
        let out = lab.run(None, &["--rm"], &strict, &["sh", "-c", check])?;
        ensure!(
            out.success() && !says(&out, "WROTE") && out.stdout.trim() == "65534",
            "strict default: the rootfs write should fail, as uid 65534: {}",
            out.describe()
        );
        ensure!(
            says(&out, "Read-only file system") || says(&out, "Permission denied"),
            "strict default: no write error reported: {}",
            out.describe()
        );
        let out = lab.run(Some("root-ro"), &["--rm"], &root, &["sh", "-c", check])?;
        ensure!(
            out.success() && !says(&out, "WROTE") && out.stdout.trim() == "0",
            "root policy: the rootfs write should fail, as uid 0: {}",
            out.describe()
        );
        ensure!(
            out.stderr.contains("Read-only file system"),
            "root policy: expected EROFS: {}",
            out.describe()
        );
        Ok(())
    })
}

/// `/tmp` (the strict default's scratch) is writable, and the next container does not see what
/// the previous one wrote.
pub fn scratch_is_writable_and_private(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "scratch")?;
    let first = env.id("scratch-a");
    let second = env.id("scratch-b");
    env.scenario(&[&first, &second], || {
        let out = lab.run(
            None,
            &["--rm"],
            &first,
            &["sh", "-c", "echo scratch-data > /tmp/note && cat /tmp/note"],
        )?;
        ensure!(
            out.success() && out.stdout == "scratch-data\n",
            "write to /tmp: {}",
            out.describe()
        );
        let out = lab.run(
            None,
            &["--rm"],
            &second,
            &[
                "sh",
                "-c",
                "ls -A /tmp; test -e /tmp/note && echo STILL-THERE; true",
            ],
        )?;
        ensure!(
            out.success() && out.stdout.trim().is_empty(),
            "the next container's /tmp must be empty: {}",
            out.describe()
        );
        Ok(())
    })
}

/// A binary copied into noexec scratch cannot run (EACCES); with `exec: true` it can.
pub fn scratch_is_noexec_unless_exec(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "noexec")?;
    lab.policy(
        "exec-scratch",
        "{filesystem: {scratch: [{path: /tmp, exec: true}]}}",
    )?;
    let denied = env.id("noexec");
    let allowed = env.id("execok");
    env.scenario(&[&denied, &allowed], || {
        let check = "cp /bin/busybox /tmp/busybox && /tmp/busybox echo RAN-FROM-TMP";
        let out = lab.run(None, &["--rm"], &denied, &["sh", "-c", check])?;
        ensure!(
            out.code == Some(126) && !says(&out, "RAN-FROM-TMP"),
            "exec from noexec /tmp should fail with 126: {}",
            out.describe()
        );
        ensure!(
            out.stderr.contains("Permission denied"),
            "expected EACCES from noexec: {}",
            out.describe()
        );
        let out = lab.run(
            Some("exec-scratch"),
            &["--rm"],
            &allowed,
            &["sh", "-c", check],
        )?;
        ensure!(
            out.success() && out.stdout == "RAN-FROM-TMP\n",
            "exec from /tmp with exec: true: {}",
            out.describe()
        );
        Ok(())
    })
}

/// An output zone's writes land on the host; an input zone is readable and not writable.
pub fn outputs_persist_inputs_read_only(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "zones")?;
    let input = lab.host_dir("in")?;
    let output = lab.host_dir("out")?;
    fs::write(input.join("task.txt"), "input-content\n")?;
    // Root in the container, so only the read-only mount (not file modes) stops the write.
    lab.policy(
        "zones",
        &format!(
            r#"{{process: {{user: "0:0"}}, filesystem: {{inputs: [{{source: {:?}, path: /in}}], outputs: [{{source: {:?}, path: /out}}]}}}}"#,
            input.display().to_string(),
            output.display().to_string()
        ),
    )?;
    let id = env.id("zones");
    env.scenario(&[&id], || {
        let check = "cat /in/task.txt; echo result-data > /out/result.txt && echo OUT-OK; \
                     echo tamper >> /in/task.txt && echo IN-WRITTEN; \
                     touch /in/new.txt && echo IN-CREATED; true";
        let out = lab.run(Some("zones"), &["--rm"], &id, &["sh", "-c", check])?;
        ensure!(
            out.success() && out.stdout == "input-content\nOUT-OK\n",
            "read input, write output, no input writes: {}",
            out.describe()
        );
        ensure!(
            out.stderr.matches("Read-only file system").count() == 2,
            "both writes to /in should fail with EROFS: {}",
            out.describe()
        );
        let written = fs::read_to_string(output.join("result.txt"))?;
        ensure!(
            written == "result-data\n",
            "host output file holds {written:?}"
        );
        let kept = fs::read_to_string(input.join("task.txt"))?;
        ensure!(
            kept == "input-content\n",
            "the host input file changed to {kept:?}: {}",
            out.describe()
        );
        ensure!(
            !input.join("new.txt").exists(),
            "a file appeared in the host input dir"
        );
        Ok(())
    })
}

/// A truncating open (`>`) of an input file fails with EROFS and leaves the host file whole.
pub fn input_survives_truncating_open(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "truncate")?;
    let input = lab.host_dir("in")?;
    fs::write(input.join("task.txt"), "input-content\n")?;
    lab.policy(
        "input-only",
        &format!(
            r#"{{process: {{user: "0:0"}}, filesystem: {{inputs: [{{source: {:?}, path: /in}}]}}}}"#,
            input.display().to_string()
        ),
    )?;
    let id = env.id("truncate");
    env.scenario(&[&id], || {
        let out = lab.run(
            Some("input-only"),
            &["--rm"],
            &id,
            &[
                "sh",
                "-c",
                "echo tamper > /in/task.txt && echo IN-WRITTEN; true",
            ],
        )?;
        ensure!(
            out.success() && out.stderr.contains("Read-only file system"),
            "the truncating open should fail with EROFS: {}",
            out.describe()
        );
        let kept = fs::read_to_string(input.join("task.txt"))?;
        ensure!(
            kept == "input-content\n",
            "the host input file is now {kept:?} although the container got EROFS: {}",
            out.describe()
        );
        Ok(())
    })
}

/// Bytes of the files under `dir` (recursively, not following links).
fn bytes_under(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = fs::symlink_metadata(entry.path())?;
        if meta.is_dir() {
            total += bytes_under(&entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

/// An output with `size: 8Mi`: writing 32Mi there fails inside with ENOSPC, what fitted reaches
/// the host directory, and the host directory holds no more than 8Mi.
pub fn output_size_is_enforced(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "quota")?;
    let output = lab.host_dir("out")?;
    lab.policy(
        "quota",
        &format!(
            r#"{{process: {{user: "0:0"}}, filesystem: {{outputs: [{{source: {:?}, path: /out, size: 8Mi}}]}}}}"#,
            output.display().to_string()
        ),
    )?;
    let id = env.id("quota");
    env.scenario(&[&id], || {
        let check = "echo result-data > /out/result.txt && echo SMALL-OK; \
                     dd if=/dev/zero of=/out/big bs=1M count=32 && echo BIG-WRITTEN; true";
        let out = lab.run(Some("quota"), &["--rm"], &id, &["sh", "-c", check])?;
        ensure!(
            out.success() && says(&out, "SMALL-OK") && !says(&out, "BIG-WRITTEN"),
            "the small write should work and the 32Mi one fail: {}",
            out.describe()
        );
        ensure!(
            out.stderr.contains("No space left on device"),
            "expected ENOSPC inside: {}",
            out.describe()
        );
        let written = fs::read_to_string(output.join("result.txt"))?;
        ensure!(written == "result-data\n", "host output holds {written:?}");
        let total = bytes_under(&output)?;
        ensure!(
            total <= 8 << 20,
            "the host output holds {total} bytes, more than its 8Mi size"
        );
        Ok(())
    })
}

/// The copy of an output into its host directory: the agent (root, with `CAP_CHOWN`) starts
/// from an empty zone although the host directory holds a file; setuid and setgid files and a
/// setgid directory arrive without their set-id bits, a 0640 file chowned to 1234:5678 keeps
/// that mode and owner, and a fifo is left out. What the host directory held before stays (the
/// copy only writes the agent's entries).
pub fn output_copy_drops_set_id_and_special_files(env: &TestEnv) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    let lab = Lab::new(env, "copyout")?;
    let output = lab.host_dir("out")?;
    fs::write(output.join("preexisting"), "host-data\n")?;
    lab.policy(
        "copyout",
        &format!(
            r#"{{process: {{user: "0:0", capabilities: [CAP_CHOWN]}}, filesystem: {{outputs: [{{source: {:?}, path: /out, size: 4Mi}}]}}}}"#,
            output.display().to_string()
        ),
    )?;
    let id = env.id("copyout");
    env.scenario(&[&id], || {
        // Chown last: without CAP_FOWNER, root may not chmod a file it gave away.
        let check = "echo \"zone:[$(ls -A /out)]\"; \
                     echo u > /out/suid && chmod 4755 /out/suid && \
                     echo g > /out/sgid && chmod 2755 /out/sgid && \
                     mkdir /out/dir && chmod 2775 /out/dir && \
                     echo p > /out/private && chmod 0640 /out/private && \
                     chown 1234:5678 /out/private && mkfifo /out/fifo && \
                     stat -c '%n %a %u:%g %F' /out/suid /out/sgid /out/dir /out/private /out/fifo";
        let out = lab.run(Some("copyout"), &["--rm"], &id, &["sh", "-c", check])?;
        ensure!(
            out.success() && out.stdout.starts_with("zone:[]\n"),
            "the zone should look empty to the agent, and the writes work: {}",
            out.describe()
        );
        // Inside, the modes took: the host copy has something to drop.
        for line in [
            "/out/suid 4755 0:0 regular file",
            "/out/sgid 2755 0:0 regular file",
            "/out/dir 2775 0:0 directory",
            "/out/private 640 1234:5678 regular file",
            "/out/fifo 644 0:0 fifo",
        ] {
            ensure!(
                out.stdout.lines().any(|l| l == line),
                "inside the zone, expected {line:?}: {}",
                out.describe()
            );
        }
        for (name, mode, owner) in [
            ("suid", 0o100755, (0, 0)),
            ("sgid", 0o100755, (0, 0)),
            ("dir", 0o040775, (0, 0)),
            ("private", 0o100640, (1234, 5678)),
        ] {
            let meta = fs::symlink_metadata(output.join(name))
                .with_context(|| format!("host copy of {name}"))?;
            ensure!(
                meta.mode() == mode && (meta.uid(), meta.gid()) == owner,
                "host copy of {name}: mode {:o} owner {}:{}, expected {mode:o} {}:{}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                owner.0,
                owner.1
            );
        }
        ensure!(
            fs::read_to_string(output.join("private"))? == "p\n",
            "host copy of private lost its contents"
        );
        match fs::symlink_metadata(output.join("fifo")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("host fifo"),
            Ok(m) => anyhow::bail!(
                "the fifo reached the host directory (fifo: {})",
                m.file_type().is_fifo()
            ),
        }
        let kept = fs::read_to_string(output.join("preexisting"))?;
        ensure!(
            kept == "host-data\n",
            "the host directory's own file now holds {kept:?}"
        );
        Ok(())
    })
}

/// Symlinks left in outputs that point out of them are recorded when the container ends; under
/// `symlinks: refuse` they do not reach the host directory, and links that stay inside do.
pub fn escaping_output_symlinks_are_recorded_or_refused(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "links")?;
    let kept = lab.host_dir("kept")?;
    let refused = lab.host_dir("refused")?;
    lab.policy(
        "links",
        &format!(
            r#"{{process: {{user: "0:0"}}, filesystem: {{outputs: [{{source: {:?}, path: /kept}}, {{source: {:?}, path: /refused, size: 4Mi, symlinks: refuse}}]}}}}"#,
            kept.display().to_string(),
            refused.display().to_string()
        ),
    )?;
    let id = env.id("links");
    env.scenario(&[&id], || {
        let check = "ln -s /etc /kept/evil && ln -s / /refused/root && \
                     mkdir /refused/sub && echo data > /refused/data && \
                     ln -s ../data /refused/sub/inside && echo LINKED";
        let out = lab.run(Some("links"), &["--rm"], &id, &["sh", "-c", check])?;
        ensure!(
            out.success() && says(&out, "LINKED"),
            "making the links: {}",
            out.describe()
        );
        let evil = fs::read_link(kept.join("evil"))?;
        ensure!(evil == Path::new("/etc"), "kept/evil points to {evil:?}");
        ensure!(
            fs::symlink_metadata(refused.join("root")).is_err(),
            "refused/root reached the host directory"
        );
        let inside = fs::read_to_string(refused.join("sub/inside"))?;
        ensure!(inside == "data\n", "refused/sub/inside reads {inside:?}");
        for (path, target, enforcement) in [("evil", "/etc", "audit"), ("root", "/", "refused")] {
            lab.wait_audit(&id, &format!("the {path} symlink"), |e| {
                e["category"] == "policy"
                    && e["violation"]["rule"] == "filesystem.outputs.symlinks"
                    && e["violation"]["enforcement"] == enforcement
                    && e["detail"]["path"] == path
                    && e["detail"]["target"] == target
            })?;
        }
        let inside_recorded = lab.audit_events(&id).into_iter().any(|e| {
            e["violation"]["rule"] == "filesystem.outputs.symlinks"
                && e["detail"]["path"] == "sub/inside"
        });
        ensure!(
            !inside_recorded,
            "a link staying inside the zone was recorded"
        );
        Ok(())
    })
}

/// `/dev/fuse` is outside the standard device set: no FUSE device is there to open, under the
/// strict default or as root.
pub fn dev_fuse_is_absent(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "fuse")?;
    lab.policy("fuse-root", r#"{process: {user: "0:0"}}"#)?;
    let strict = env.id("fuse-strict");
    let root = env.id("fuse-root");
    env.scenario(&[&strict, &root], || {
        let check = "test -c /dev/fuse && echo FUSE-DEVICE; \
                     cat /dev/fuse < /dev/null && echo FUSE-OPENED; \
                     ls /dev; true";
        for (policy, id) in [(None, &strict), (Some("fuse-root"), &root)] {
            let out = lab.run(policy, &["--rm"], id, &["sh", "-c", check])?;
            ensure!(
                out.success() && !says(&out, "FUSE-DEVICE") && !says(&out, "FUSE-OPENED"),
                "{policy:?}: /dev/fuse should be no device and not open: {}",
                out.describe()
            );
            ensure!(
                says(&out, "null") && says(&out, "urandom"),
                "{policy:?}: the standard devices should be listed: {}",
                out.describe()
            );
        }
        Ok(())
    })
}

/// Nothing an output zone of `id` was backed with is left: no image file, no loop device
/// reading one (its mounts are in the harness's leak check).
fn no_output_image_left(lab: &Lab, id: &str) -> Result<()> {
    let bundle = lab.bundle(id);
    let digest = Sha256::digest(bundle.as_os_str().as_encoded_bytes());
    let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    if let Ok(images) = fs::read_dir("/var/lib/safehouse/outputs") {
        for image in images.flatten() {
            let name = image.file_name().to_string_lossy().into_owned();
            ensure!(!name.starts_with(&tag), "image left: {name}");
        }
    }
    for dev in fs::read_dir("/sys/block")?.flatten() {
        let backing = fs::read_to_string(dev.path().join("loop/backing_file")).unwrap_or_default();
        ensure!(
            !backing.contains(&tag),
            "loop device {:?} left on {}",
            dev.file_name(),
            backing.trim()
        );
    }
    Ok(())
}

/// The shim dies (SIGKILL) while the agent runs: containerd's clean-up (the shim's delete
/// action) still copies what the agent wrote into the host directory, and leaves no mount, loop
/// device or image behind.
pub fn output_survives_a_shim_crash(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "outcrash")?;
    let output = lab.host_dir("out")?;
    lab.policy(
        "outcrash",
        &format!(
            r#"{{process: {{user: "0:0"}}, filesystem: {{outputs: [{{source: {:?}, path: /out, size: 4Mi}}]}}}}"#,
            output.display().to_string()
        ),
    )?;
    let id = env.id("outcrash");
    env.scenario(&[&id], || {
        let out = lab.run(
            Some("outcrash"),
            &["-d"],
            &id,
            &["sh", "-c", "echo crash-data > /out/r.txt; sleep 1000"],
        )?;
        ensure!(out.success(), "ctr run -d: {}", out.describe());
        let staged = lab.bundle(&id).join(".safehouse-outputs/0/r.txt");
        wait_for("the agent's write", Duration::from_secs(30), || {
            Ok(staged.exists().then_some(()))
        })?;
        ensure!(
            !output.join("r.txt").exists(),
            "the host directory got the file while the agent runs"
        );
        env.sigkill_shim_and_remove(&id)
            .context("kill the shim and remove the container")?;
        // containerd runs the shim's delete action after it dropped the task.
        wait_for(
            "the dead shim's clean-up to release the output",
            Duration::from_secs(60),
            || Ok(no_output_image_left(&lab, &id).ok()),
        )?;
        let written = fs::read_to_string(output.join("r.txt"))
            .context("the agent's file in the host directory")?;
        ensure!(written == "crash-data\n", "host output holds {written:?}");
        Ok(())
    })
}

/// An output whose host directory is missing fails Create with the field and the policy named,
/// and leaves nothing behind.
pub fn output_without_host_directory_is_refused(env: &TestEnv) -> Result<()> {
    let lab = Lab::new(env, "outmissing")?;
    let missing = lab.path("no-such-dir");
    lab.policy(
        "outmissing",
        &format!(
            r#"{{filesystem: {{outputs: [{{source: {:?}, path: /out, size: 2Mi}}]}}}}"#,
            missing.display().to_string()
        ),
    )?;
    let id = env.id("outmissing");
    env.scenario(&[&id], || {
        let out = lab.run(Some("outmissing"), &["--rm"], &id, &["true"])?;
        lab.remove_container(&id)?;
        ensure!(
            !out.success()
                && says(&out, "spec.filesystem.outputs[0].source")
                && says(&out, "outmissing"),
            "Create should fail naming the field and the policy: {}",
            out.describe()
        );
        no_output_image_left(&lab, &id)
    })
}
