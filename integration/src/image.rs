//! A busybox-static OCI image built locally with umoci (no registry is reachable), cached under
//! the target dir keyed by the busybox version, and imported into a containerd namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::command::{run, run_args};
use crate::runtime::target_dir;

/// The name tests run (fully qualified, so CRI would find it too).
pub const BUSYBOX_IMAGE: &str = "docker.io/local/busybox:latest";
/// The base name given to `ctr images import --base-name`.
const BUSYBOX_BASE: &str = "docker.io/local/busybox";
/// Bump when the image layout built here changes, so stale caches are not reused.
const LAYOUT_VERSION: &str = "v1";
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The CRI sandbox image: the same busybox rootfs, sleeping for ever (CRI stops it with
/// SIGKILL).
pub const PAUSE_IMAGE: &str = crate::containerd::PAUSE_IMAGE;
const PAUSE_BASE: &str = "docker.io/local/pause";

/// Returns the cached busybox image tarball, building it first if needed.
pub fn busybox_tarball() -> Result<PathBuf> {
    image_tarball("busybox", &["sh"])
}

/// Returns the cached pause image tarball, building it first if needed.
pub fn pause_tarball() -> Result<PathBuf> {
    image_tarball("pause", &["sleep", "2147483647"])
}

/// Imports busybox and pause into `namespace` with the given `ctr` (for CRI: `k8s.io`).
pub fn import_cri_images(ctr: &Path, address: &Path, namespace: &str) -> Result<()> {
    import(
        ctr,
        address,
        namespace,
        &busybox_tarball()?,
        BUSYBOX_BASE,
        BUSYBOX_IMAGE,
    )?;
    import(
        ctr,
        address,
        namespace,
        &pause_tarball()?,
        PAUSE_BASE,
        PAUSE_IMAGE,
    )
}

fn image_tarball(name: &str, cmd: &[&str]) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        bail!("/bin/busybox is missing: install busybox-static (make deps)");
    }
    let cache = target_dir().join("safehouse-it");
    fs::create_dir_all(&cache)?;
    let tarball = cache.join(format!(
        "{name}-{}-{LAYOUT_VERSION}.tar",
        busybox_version()?
    ));
    if tarball.is_file() {
        return Ok(tarball);
    }
    let scratch = tempfile::Builder::new()
        .prefix("busybox-image-")
        .tempdir_in(&cache)?;
    let built = build(scratch.path(), cmd)?;
    // Rename is atomic: concurrent test binaries either see no tarball or a whole one.
    fs::rename(&built, &tarball)?;
    Ok(tarball)
}

/// Imports the busybox image into namespace `namespace` of the containerd at `address`.
pub fn import_busybox(ctr: &Path, address: &Path, namespace: &str) -> Result<()> {
    import(
        ctr,
        address,
        namespace,
        &busybox_tarball()?,
        BUSYBOX_BASE,
        BUSYBOX_IMAGE,
    )
}

fn import(
    ctr: &Path,
    address: &Path,
    namespace: &str,
    tarball: &Path,
    base: &str,
    expected: &str,
) -> Result<()> {
    let out = run(
        Command::new(ctr)
            .arg("-a")
            .arg(address)
            .args(["-n", namespace, "images", "import", "--base-name", base])
            .arg(tarball),
        STEP_TIMEOUT,
    )?
    .ok()
    .with_context(|| format!("importing the image {expected}"))?;
    if !out.stdout.contains(expected) {
        bail!(
            "ctr images import did not report {expected}:\n{}",
            out.describe()
        );
    }
    Ok(())
}

fn busybox_version() -> Result<String> {
    let out = run_args("/bin/busybox", &["--help"], STEP_TIMEOUT)?;
    let first = format!("{}{}", out.stdout, out.stderr);
    let line = first.lines().next().unwrap_or("unknown");
    // "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary." -> a file-name key.
    let key: String = line
        .trim_start_matches("BusyBox ")
        .trim_end_matches(" multi-call binary.")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(key)
}

/// Builds the busybox image plus `extra` files (host file, path in the rootfs) in `scratch`
/// and imports it into `namespace` as `local/NAME:latest`; returns that name. Not cached: the
/// files are the test's own, built at test time.
pub fn import_busybox_with(
    ctr: &Path,
    address: &Path,
    namespace: &str,
    scratch: &Path,
    name: &str,
    extra: &[(PathBuf, &str)],
) -> Result<String> {
    let extra: Vec<(PathBuf, String)> = extra
        .iter()
        .map(|(h, p)| (h.clone(), p.to_string()))
        .collect();
    let tarball = build_with(scratch, &["sh"], &extra)?;
    let base = format!("docker.io/local/{name}");
    let image = format!("{base}:latest");
    import(ctr, address, namespace, &tarball, &base, &image)?;
    Ok(image)
}

/// A busybox image that runs `cmd` as its own `user` (an image that needs its own user, as
/// nginx's does), with `owned` files (path in the rootfs, content) readable by that user only
/// (mode 0400).
pub struct OwnUserImage<'a> {
    /// Imported as `docker.io/local/NAME:latest`.
    pub name: &'a str,
    /// The config's `User`, `(uid, gid)`.
    pub user: (u32, u32),
    /// The config's `Cmd`.
    pub cmd: &'a [&'a str],
    /// Files owned by `user`, mode 0400.
    pub owned: &'a [(&'a str, &'a str)],
}

/// Builds `spec` in `scratch` and imports it into `namespace`; returns the image name.
pub fn import_busybox_as_user(
    ctr: &Path,
    address: &Path,
    namespace: &str,
    scratch: &Path,
    spec: &OwnUserImage,
) -> Result<String> {
    let staged = scratch.join("owned");
    let mut extra = Vec::new();
    for (i, (path, content)) in spec.owned.iter().enumerate() {
        let file = staged.join(i.to_string());
        fs::create_dir_all(&staged)?;
        fs::write(&file, content)?;
        extra.push((file, path.to_string()));
    }
    let options = BuildOptions {
        user: Some(spec.user),
        owned: spec.owned.iter().map(|(p, _)| p.to_string()).collect(),
    };
    let tarball = build_with_options(scratch, spec.cmd, &extra, &options)?;
    let base = format!("docker.io/local/{}", spec.name);
    let image = format!("{base}:latest");
    import(ctr, address, namespace, &tarball, &base, &image)?;
    Ok(image)
}

/// What an image's config and files carry beyond busybox.
#[derive(Default)]
struct BuildOptions {
    /// The config's `User` (uid, gid).
    user: Option<(u32, u32)>,
    /// Extra files (paths in the rootfs) owned by `user`, mode 0400.
    owned: Vec<String>,
}

fn build(scratch: &Path, cmd: &[&str]) -> Result<PathBuf> {
    build_with(scratch, cmd, &[])
}

fn build_with(scratch: &Path, cmd: &[&str], extra: &[(PathBuf, String)]) -> Result<PathBuf> {
    build_with_options(scratch, cmd, extra, &BuildOptions::default())
}

fn build_with_options(
    scratch: &Path,
    cmd: &[&str],
    extra: &[(PathBuf, String)],
    options: &BuildOptions,
) -> Result<PathBuf> {
    let layout = scratch.join("layout");
    let bundle = scratch.join("bundle");
    let image = format!("{}:latest", layout.display());
    let step = |args: &[&str]| -> Result<()> {
        run_args("umoci", args, STEP_TIMEOUT)?
            .ok()
            .map(|_| ())
            .context("building the busybox image with umoci")
    };
    step(&["init", "--layout", &layout.display().to_string()])?;
    step(&["new", "--image", &image])?;
    step(&["unpack", "--image", &image, &bundle.display().to_string()])?;
    populate_rootfs(&bundle.join("rootfs"))?;
    for (host, path) in extra {
        let dest = bundle.join("rootfs").join(path.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(host, &dest).with_context(|| format!("copy {} to {path}", host.display()))?;
    }
    if let Some((uid, gid)) = options.user {
        use std::os::unix::fs::PermissionsExt;
        for path in &options.owned {
            let dest = bundle.join("rootfs").join(path.trim_start_matches('/'));
            std::os::unix::fs::chown(&dest, Some(uid), Some(gid))
                .with_context(|| format!("chown {path}"))?;
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o400))?;
        }
    }
    step(&["repack", "--image", &image, &bundle.display().to_string()])?;
    let image_arg = image.clone();
    let mut config = vec![
        "config".to_string(),
        "--image".to_string(),
        image_arg,
        "--config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "--config.workingdir=/".into(),
    ];
    config.extend(cmd.iter().map(|c| format!("--config.cmd={c}")));
    if let Some((uid, gid)) = options.user {
        config.push(format!("--config.user={uid}:{gid}"));
    }
    step(&config.iter().map(String::as_str).collect::<Vec<_>>())?;
    let tarball = scratch.join("busybox.tar");
    run(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
        STEP_TIMEOUT,
    )?
    .ok()?;
    Ok(tarball)
}

/// busybox plus a symlink for every applet, and the few files a shell session expects.
pub fn populate_rootfs(rootfs: &Path) -> Result<()> {
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root",
    ] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    let list = run_args("/bin/busybox", &["--list-full"], STEP_TIMEOUT)?.ok()?;
    for applet in list.stdout.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let link = rootfs.join(applet);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("/bin/busybox", &link)?;
        }
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}
