//! What the shim knows about the node: runtime configs (one per `ConfigPath`) and the
//! installed runsc they were checked against, each loaded and probed once per shim process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use runsc_config::{NetworkMode, RunscProbe, RuntimeConfig};

use crate::error::{Result, ShimError};
use crate::reaper::Reaper;
use crate::runsc::{Runsc, SandboxFlags};

/// Where the shim keeps its own runtime files (console sockets).
pub const STATE_DIR: &str = "/run/safehouse";

/// A loaded, validated runtime config with its runsc probe.
pub struct RuntimeEnv {
    /// The config.
    pub config: RuntimeConfig,
    /// The probed runsc (its version decides which features policies may use).
    pub probe: RunscProbe,
    /// Global flags for every runsc invocation.
    pub global: Vec<String>,
}

impl RuntimeEnv {
    /// Loads and checks a config (None = the default path or built-in defaults).
    pub async fn load(path: Option<&Path>, reaper: &Reaper) -> Result<RuntimeEnv> {
        let config =
            RuntimeConfig::load(path).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        let probe = probe_cached(&config.binary, reaper).await?;
        let global = config
            .global_flags(&probe)
            .map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        Ok(RuntimeEnv {
            config,
            probe,
            global,
        })
    }

    /// A runsc for containerd namespace `namespace`, logging into `log_dir`.
    pub fn runsc(&self, namespace: &str, reaper: &Reaper, log_dir: &Path) -> Result<Runsc> {
        if namespace.is_empty() || namespace.contains('/') || namespace.starts_with('.') {
            return Err(ShimError::InvalidArgument(format!(
                "invalid namespace {namespace:?}"
            )));
        }
        let root = self.config.root.join(namespace);
        std::fs::create_dir_all(&root)
            .map_err(|e| ShimError::io(format!("create runsc root {}", root.display()), e))?;
        Ok(Runsc::new(
            self.config.binary.clone(),
            root,
            self.global.clone(),
            log_dir.to_path_buf(),
            reaper.clone(),
        ))
    }

    /// The network flags for a new sandbox whose spec names `netns` (or none).
    pub fn sandbox_flags(&self, netns: Option<PathBuf>) -> Result<SandboxFlags> {
        let (network, netns) = match (self.config.network, netns) {
            (NetworkMode::None, _) | (NetworkMode::Auto, None) => ("none", None),
            (NetworkMode::Auto | NetworkMode::Host, Some(ns)) => ("host", Some(ns)),
            (NetworkMode::Sandbox, ns) => ("sandbox", ns),
            (NetworkMode::Host, None) => {
                return Err(ShimError::FailedPrecondition(
                    "network = \"host\" needs a container with its own network namespace; Safehouse never runs a sandbox on the node's network (use `ctr run --with-ns network:PATH`, CRI, or network = \"auto\")".into(),
                ))
            }
        };
        Ok(SandboxFlags {
            network: network.to_string(),
            netns,
            extra: Vec::new(),
        })
    }
}

/// The node's configs, keyed by `ConfigPath`.
#[derive(Clone, Default)]
pub struct Node {
    envs: Arc<Mutex<HashMap<Option<PathBuf>, Arc<RuntimeEnv>>>>,
}

impl Node {
    /// The env for a `ConfigPath` (loaded and probed on first use).
    pub async fn env_for(&self, path: Option<&Path>, reaper: &Reaper) -> Result<Arc<RuntimeEnv>> {
        let key = path.map(Path::to_path_buf);
        if let Some(env) = self
            .envs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(env.clone());
        }
        let env = Arc::new(RuntimeEnv::load(path, reaper).await?);
        self.envs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, env.clone());
        Ok(env)
    }

    /// Directory for console sockets.
    pub fn console_dir(&self) -> PathBuf {
        Path::new(STATE_DIR).join("console")
    }
}

/// Probes `binary`, reusing an earlier probe of the very same file (same path, inode, size and
/// mtime) from `/run/safehouse/probe`: every shim would otherwise pay two runsc start-ups.
async fn probe_cached(binary: &Path, reaper: &Reaper) -> Result<RunscProbe> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(binary).map_err(|e| {
        ShimError::FailedPrecondition(format!(
            "runsc not found at {}: {e} (install gVisor: `apt-get install -t bookworm-backports runsc`, or set `binary` in the runtime config)",
            binary.display()
        ))
    })?;
    let identity = format!(
        "{}:{}:{}:{}:{}.{}",
        binary.display(),
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let key = hex::encode(&sha2::Sha256::digest(identity.as_bytes())[..12]);
    let dir = Path::new(STATE_DIR).join("probe");
    let file = dir.join(format!("{key}.json"));
    if let Some(probe) = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice::<RunscProbe>(&b).ok())
        .filter(|p| p.path == binary)
    {
        return Ok(probe);
    }
    let deadline = std::time::Duration::from_secs(20);
    let (_, version) = crate::runsc::capture(reaper, binary, &["--version"], deadline).await?;
    let (_, flags) = crate::runsc::capture(reaper, binary, &["flags"], deadline).await?;
    let probe = RunscProbe::from_outputs(binary, &version, &flags)
        .map_err(|e| ShimError::FailedPrecondition(e.to_string()))?;
    if let Ok(bytes) = serde_json::to_vec(&probe) {
        let tmp = dir.join(format!(".{key}.{}", std::process::id()));
        let saved = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &file));
        if let Err(e) = saved {
            tracing::debug!("cannot cache the runsc probe in {}: {e}", file.display());
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(network: &str) -> RuntimeEnv {
        let config = RuntimeConfig::parse(&format!("network = \"{network}\""), Path::new("t.toml"))
            .expect("config");
        RuntimeEnv {
            config,
            probe: RunscProbe {
                path: "/usr/bin/runsc".into(),
                version: runsc_config::RunscVersion(20240729),
                flags: Default::default(),
            },
            global: vec![],
        }
    }

    #[test]
    fn no_namespace_of_its_own_means_no_network() {
        let f = env("auto").sandbox_flags(None).expect("auto");
        assert_eq!((f.network.as_str(), f.netns), ("none", None));
        let f = env("auto")
            .sandbox_flags(Some("/var/run/netns/p".into()))
            .expect("auto with ns");
        assert_eq!(f.network, "host");
        assert_eq!(f.netns, Some(PathBuf::from("/var/run/netns/p")));
        let f = env("none")
            .sandbox_flags(Some("/var/run/netns/p".into()))
            .expect("none");
        assert_eq!((f.network.as_str(), f.netns), ("none", None));
        assert!(
            env("host").sandbox_flags(None).is_err(),
            "never the node's network"
        );
    }
}
