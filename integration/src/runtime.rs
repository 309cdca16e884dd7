//! The runtime under test: Safehouse's shim, or one of the baselines it is compared against
//! (containerd's Go runc shim driving runsc through a wrapper, and plain runc). The same
//! scenarios run against any of them, so the harness can be validated on the baselines and the
//! benchmarks can reuse it.

use std::env;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Environment variable choosing the runtime: `safehouse` (default), `runc-runsc` or `runc`.
pub const RUNTIME_ENV: &str = "SAFEHOUSE_IT_RUNTIME";
/// Environment variable pointing at the shim binary to test.
pub const SHIM_ENV: &str = "SAFEHOUSE_SHIM";
/// Environment variable with a Safehouse config file handed to the shim as `ConfigPath`.
pub const SHIM_CONFIG_ENV: &str = "SAFEHOUSE_IT_SHIM_CONFIG";
/// Environment variable with the runsc root the shim uses (namespace is appended).
pub const RUNSC_ROOT_ENV: &str = "SAFEHOUSE_IT_RUNSC_ROOT";
/// Where the shim keeps runsc state unless its config says otherwise.
pub const DEFAULT_SAFEHOUSE_RUNSC_ROOT: &str = "/run/safehouse/runsc";

/// Name of Safehouse's shim binary.
pub const SAFEHOUSE_SHIM_NAME: &str = "containerd-shim-safehouse-v2";
/// Runtime type containerd maps to [`SAFEHOUSE_SHIM_NAME`].
pub const SAFEHOUSE_RUNTIME_TYPE: &str = "io.containerd.safehouse.v2";
/// containerd's own runc shim.
pub const RUNC_RUNTIME_TYPE: &str = "io.containerd.runc.v2";

/// Which runtime a test run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// `io.containerd.safehouse.v2`: Safehouse's shim over runsc.
    Safehouse,
    /// `io.containerd.runc.v2` with `--runc-binary` = `runsc --network=none` (baseline).
    RuncShimRunsc,
    /// `io.containerd.runc.v2` with runc (baseline, no gVisor).
    Runc,
}

impl RuntimeKind {
    /// Reads [`RUNTIME_ENV`]; defaults to Safehouse.
    pub fn from_env() -> Result<RuntimeKind> {
        match env::var(RUNTIME_ENV).as_deref() {
            Err(_) | Ok("") | Ok("safehouse") => Ok(RuntimeKind::Safehouse),
            Ok("runc-runsc") => Ok(RuntimeKind::RuncShimRunsc),
            Ok("runc") => Ok(RuntimeKind::Runc),
            Ok(other) => bail!("{RUNTIME_ENV}={other}: expected safehouse, runc-runsc or runc"),
        }
    }

    /// A short name for messages and file names.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Safehouse => "safehouse",
            RuntimeKind::RuncShimRunsc => "runc-runsc",
            RuntimeKind::Runc => "runc",
        }
    }

    /// The containerd runtime type (`ctr run --runtime`).
    pub fn runtime_type(self) -> &'static str {
        match self {
            RuntimeKind::Safehouse => SAFEHOUSE_RUNTIME_TYPE,
            RuntimeKind::RuncShimRunsc | RuntimeKind::Runc => RUNC_RUNTIME_TYPE,
        }
    }

    /// The file name of the shim binary containerd starts.
    pub fn shim_name(self) -> &'static str {
        match self {
            RuntimeKind::Safehouse => SAFEHOUSE_SHIM_NAME,
            RuntimeKind::RuncShimRunsc | RuntimeKind::Runc => "containerd-shim-runc-v2",
        }
    }

    /// True when containers run inside gVisor (one `runsc-sandbox` process per sandbox).
    pub fn is_gvisor(self) -> bool {
        !matches!(self, RuntimeKind::Runc)
    }

    /// Host binaries this runtime needs besides containerd and ctr.
    pub fn required_binaries(self) -> &'static [&'static str] {
        match self {
            RuntimeKind::Safehouse | RuntimeKind::RuncShimRunsc => {
                &["runsc", "containerd-shim-runc-v2"]
            }
            RuntimeKind::Runc => &["runc", "containerd-shim-runc-v2"],
        }
    }
}

/// Finds the Safehouse shim binary: [`SHIM_ENV`], else `target/{release,debug}` of this
/// workspace (the newer of the two when both exist).
pub fn locate_shim() -> Result<PathBuf> {
    if let Ok(path) = env::var(SHIM_ENV) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{SHIM_ENV}={} does not name a file: build the shim or fix the variable",
            path.display()
        );
    }
    let target = target_dir();
    let candidates: Vec<PathBuf> = ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join(SAFEHOUSE_SHIM_NAME))
        .collect();
    candidates
        .iter()
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, p)| p.clone())
        .with_context(|| {
            format!(
                "the Safehouse shim is not built: looked for {} and {} (run \
                 `cargo build -p safehouse-shim`, or set {SHIM_ENV})",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// The Cargo target directory of this workspace (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("target")
}

/// Finds `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
