//! What the installed runsc can do: its version and the flags it knows.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the installed runsc could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// runsc could not be executed at all.
    #[error("cannot run {path}: {source} (is gVisor's runsc installed? `apt-get install -t bookworm-backports runsc`)")]
    Exec {
        /// The binary that was tried.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// runsc ran but printed something we do not understand.
    #[error("{path} {args}: unexpected output: {output}")]
    Output {
        /// The binary.
        path: PathBuf,
        /// The subcommand that was run.
        args: String,
        /// What it printed (first line).
        output: String,
    },
}

/// The global runsc flag that makes the Sentry install each container's `linux.seccomp`
/// profile on the container's init (runsc ignores the profile without it).
pub const OCI_SECCOMP_FLAG: &str = "oci-seccomp";

/// A runsc release, as the date stamp Debian and gVisor use (`20240729`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct RunscVersion(pub u32);

impl RunscVersion {
    /// First release with the systrap platform (and the default switch to it).
    pub const SYSTRAP: RunscVersion = RunscVersion(20230417);

    /// Parses `runsc --version` output, e.g. `runsc version 0.0~20240729.0` or
    /// `runsc version release-20240729.0`.
    pub fn parse(output: &str) -> Option<RunscVersion> {
        let first = output.lines().next()?;
        let rest = first.strip_prefix("runsc version ")?;
        // Find the first run of 8 digits: the date stamp.
        let bytes = rest.as_bytes();
        let mut i = 0;
        while i + 8 <= bytes.len() {
            if bytes[i..i + 8].iter().all(u8::is_ascii_digit)
                && (i + 8 == bytes.len() || !bytes[i + 8].is_ascii_digit())
            {
                return rest[i..i + 8].parse().ok().map(RunscVersion);
            }
            i += 1;
        }
        None
    }

    /// Whether this release has the systrap platform.
    pub fn has_systrap(self) -> bool {
        self >= Self::SYSTRAP
    }
}

impl fmt::Display for RunscVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The result of probing one runsc binary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunscProbe {
    /// The binary probed.
    pub path: PathBuf,
    /// Its release.
    pub version: RunscVersion,
    /// Every global flag it accepts (without the leading dash).
    pub flags: BTreeSet<String>,
}

impl RunscProbe {
    /// Runs `runsc --version` and `runsc flags` once (with std's process waiting: not for use
    /// in a process whose own reaper collects every child, like the shim).
    pub fn probe(path: &Path) -> Result<RunscProbe, ProbeError> {
        let version_out = run(path, &["--version"])?;
        let flags_out = run(path, &["flags"])?;
        Self::from_outputs(path, &version_out, &flags_out)
    }

    /// Builds a probe from what `runsc --version` and `runsc flags` printed.
    pub fn from_outputs(
        path: &Path,
        version_out: &str,
        flags_out: &str,
    ) -> Result<RunscProbe, ProbeError> {
        let version = RunscVersion::parse(version_out).ok_or_else(|| ProbeError::Output {
            path: path.to_path_buf(),
            args: "--version".into(),
            output: version_out.lines().next().unwrap_or_default().to_string(),
        })?;
        let flags = parse_flags(flags_out);
        if flags.is_empty() {
            return Err(ProbeError::Output {
                path: path.to_path_buf(),
                args: "flags".into(),
                output: flags_out.lines().next().unwrap_or_default().to_string(),
            });
        }
        Ok(RunscProbe {
            path: path.to_path_buf(),
            version,
            flags,
        })
    }

    /// Whether the installed runsc knows the global flag `name`.
    pub fn knows_flag(&self, name: &str) -> bool {
        self.flags.contains(name)
    }

    /// Whether this runsc can apply a spec's `linux.seccomp` inside the sandbox
    /// ([`OCI_SECCOMP_FLAG`]).
    pub fn applies_oci_seccomp(&self) -> bool {
        self.knows_flag(OCI_SECCOMP_FLAG)
    }
}

fn run(path: &Path, args: &[&str]) -> Result<String, ProbeError> {
    let out = Command::new(path)
        .args(args)
        .output()
        .map_err(|source| ProbeError::Exec {
            path: path.to_path_buf(),
            source,
        })?;
    // `runsc flags` prints to stderr on some releases; take both.
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(text)
}

/// Parses Go `flag` usage output: lines like `  -name type` followed by indented help.
pub(crate) fn parse_flags(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| {
            let t = line.trim_start();
            let indent = line.len() - t.len();
            let name = t.strip_prefix('-')?;
            if indent > 4 {
                return None;
            }
            let name = name.split_whitespace().next()?;
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            valid.then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_debian_and_upstream_versions() {
        assert_eq!(
            RunscVersion::parse("runsc version 0.0~20240729.0\nspec: 1.0.2-dev"),
            Some(RunscVersion(20240729))
        );
        assert_eq!(
            RunscVersion::parse("runsc version 0.0~20221219.0"),
            Some(RunscVersion(20221219))
        );
        assert_eq!(
            RunscVersion::parse("runsc version release-20250512.0\n"),
            Some(RunscVersion(20250512))
        );
        assert_eq!(RunscVersion::parse("runc version 1.1.5"), None);
        assert_eq!(RunscVersion::parse(""), None);
        assert!(RunscVersion(20240729).has_systrap());
        assert!(!RunscVersion(20221219).has_systrap());
    }

    #[test]
    fn probe_from_outputs_rejects_what_is_not_runsc() {
        let p = RunscProbe::from_outputs(
            Path::new("/usr/bin/runsc"),
            "runsc version 0.0~20240729.0\n",
            "  -network value\n    \tnetwork\n",
        )
        .expect("runsc output");
        assert_eq!(p.version, RunscVersion(20240729));
        assert!(p.knows_flag("network"));
        assert!(!p.applies_oci_seccomp());
        let p = RunscProbe::from_outputs(
            Path::new("/usr/bin/runsc"),
            "runsc version 0.0~20221219.0\n",
            "  -oci-seccomp\n    \tEnables loading OCI seccomp filters inside the sandbox.\n",
        )
        .expect("runsc output");
        assert!(p.applies_oci_seccomp());
        assert!(RunscProbe::from_outputs(Path::new("/bin/true"), "", "").is_err());
        assert!(
            RunscProbe::from_outputs(Path::new("/x"), "runsc version 0.0~20240729.0", "").is_err()
        );
    }

    #[test]
    fn parses_go_flag_usage() {
        let text = "  -debug-log string\n    \tadditional location for logs.\n  -network value\n    \tnetwork mode\n  -root string\n    \troot directory\n  -x\n";
        let flags = parse_flags(text);
        assert!(flags.contains("debug-log"));
        assert!(flags.contains("network"));
        assert!(flags.contains("root"));
        assert!(flags.contains("x"));
        assert!(!flags.contains("additional"));
        assert_eq!(flags.len(), 4);
    }
}
