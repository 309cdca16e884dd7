//! What the shim knows about the node: runtime configs (one per `ConfigPath`) and the
//! installed runsc they were checked against, each loaded and probed once per shim process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use safehouse_runsc_config::paths::STATE_DIR;
use safehouse_runsc_config::{NetworkMode as ConfigNetwork, RunscProbe, RuntimeConfig};

use crate::container::SpecNetns;
use crate::error::{Result, ShimError};
use crate::reaper::Reaper;
use crate::runsc::cli::Runsc;
use crate::runsc::{NetworkMode, SandboxFlags, SandboxRuntime};

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
    pub async fn load(
        path: Option<&Path>,
        reaper: &Reaper,
        probe_dir: &Path,
    ) -> Result<RuntimeEnv> {
        let config = RuntimeConfig::load(path)?;
        let probe = probe_cached(&config.binary, reaper, probe_dir).await?;
        let mut global = config.global_flags(&probe)?;
        global.extend(crate::seccomp::runsc_flags(&probe));
        Ok(RuntimeEnv {
            config,
            probe,
            global,
        })
    }

    /// runsc's state root for containerd namespace `namespace` (created if missing).
    pub fn runsc_root(&self, namespace: &str) -> Result<PathBuf> {
        if namespace.is_empty() || namespace.contains('/') || namespace.starts_with('.') {
            return Err(ShimError::InvalidArgument(format!(
                "invalid namespace {namespace:?}"
            )));
        }
        let root = self.config.root.join(namespace);
        std::fs::create_dir_all(&root)
            .map_err(|e| ShimError::io(format!("create runsc root {}", root.display()), e))?;
        Ok(root)
    }

    /// The network flags for a new sandbox given `netns` by its spec. A namespace without a
    /// path is made by runsc itself (its sandbox starts in a new one), so runsc runs where the
    /// shim does and no namespace is entered.
    pub fn sandbox_flags(&self, netns: &SpecNetns) -> Result<SandboxFlags> {
        let path = match netns {
            SpecNetns::Path(p) => Some(p.clone()),
            SpecNetns::Shared | SpecNetns::New => None,
        };
        let (network, netns) = match (self.config.network, netns) {
            (ConfigNetwork::None, _) | (ConfigNetwork::Auto, SpecNetns::Shared) => {
                (NetworkMode::None, None)
            }
            (ConfigNetwork::Auto | ConfigNetwork::Host, SpecNetns::Path(_) | SpecNetns::New) => {
                (NetworkMode::Host, path)
            }
            (ConfigNetwork::Sandbox, _) => (NetworkMode::Sandbox, path),
            (ConfigNetwork::Host, SpecNetns::Shared) => {
                return Err(ShimError::FailedPrecondition(
                    "network = \"host\" needs a container with its own network namespace; Safehouse never runs a sandbox on the node's network (use `ctr run --with-ns network:PATH`, CRI, or network = \"auto\")".into(),
                ))
            }
        };
        Ok(SandboxFlags {
            network,
            netns,
            extra: Vec::new(),
        })
    }
}

/// The node as one shim sees it: its runtime configs (keyed by `ConfigPath`, each loaded and
/// probed once) and where its state lives.
#[derive(Clone)]
pub struct Node {
    envs: Arc<Mutex<HashMap<Option<PathBuf>, Arc<RuntimeEnv>>>>,
    state_dir: PathBuf,
    #[cfg(test)]
    double: Option<Arc<crate::runsc::double::RunscDouble>>,
}

impl Default for Node {
    fn default() -> Node {
        Node::new(Path::new(STATE_DIR))
    }
}

impl Node {
    /// A node whose Safehouse state lives under `state_dir`.
    pub fn new(state_dir: &Path) -> Node {
        Node {
            envs: Arc::default(),
            state_dir: state_dir.to_path_buf(),
            #[cfg(test)]
            double: None,
        }
    }

    /// A node for the task tests: `env` for every config path, `double` instead of runsc.
    #[cfg(test)]
    pub fn for_tests(
        state_dir: &Path,
        env: RuntimeEnv,
        double: Arc<crate::runsc::double::RunscDouble>,
    ) -> Node {
        let node = Node {
            double: Some(double),
            ..Node::new(state_dir)
        };
        node.envs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(None, Arc::new(env));
        node
    }

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
        let env = Arc::new(RuntimeEnv::load(path, reaper, &self.probe_dir()).await?);
        self.envs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, env.clone());
        Ok(env)
    }

    /// The runsc of a new sandbox: `env`'s binary and flags, `flags` bound in, its state under
    /// the root for `namespace`, logging into `log_dir`.
    pub fn runtime(
        &self,
        env: &RuntimeEnv,
        namespace: &str,
        reaper: &Reaper,
        flags: SandboxFlags,
        log_dir: &Path,
    ) -> Result<Arc<dyn SandboxRuntime>> {
        let root = env.runsc_root(namespace)?;
        #[cfg(test)]
        if let Some(double) = &self.double {
            return Ok(double.bound(root, flags));
        }
        Ok(Arc::new(Runsc::new(
            env.config.binary.clone(),
            root,
            env.global.clone(),
            flags,
            log_dir.to_path_buf(),
            reaper.clone(),
        )))
    }

    /// Directory for console sockets.
    pub fn console_dir(&self) -> PathBuf {
        self.state_dir.join("console")
    }

    /// Directory for the sandboxes' trace sockets.
    pub fn trace_dir(&self) -> PathBuf {
        self.state_dir.join("trace")
    }

    /// Where probes of runsc binaries are cached.
    fn probe_dir(&self) -> PathBuf {
        self.state_dir.join("probe")
    }

    /// The registry file of a container (see [`safehouse_runsc_config::paths::registry_file`]).
    pub fn registry_file(&self, namespace: &str, id: &str) -> PathBuf {
        safehouse_runsc_config::paths::registry_file(&self.state_dir, namespace, id)
    }
}

/// Probes `binary`, reusing an earlier probe of the very same file (same path, inode, size and
/// mtime) from `/run/safehouse/probe`: every shim would otherwise pay two runsc start-ups.
async fn probe_cached(binary: &Path, reaper: &Reaper, dir: &Path) -> Result<RunscProbe> {
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
    let file = dir.join(format!("{key}.json"));
    if let Some(probe) = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice::<RunscProbe>(&b).ok())
        .filter(|p| p.path == binary)
    {
        return Ok(probe);
    }
    let deadline = std::time::Duration::from_secs(20);
    let (_, version) = crate::runsc::cli::capture(reaper, binary, &["--version"], deadline).await?;
    let (_, flags) = crate::runsc::cli::capture(reaper, binary, &["flags"], deadline).await?;
    let probe = RunscProbe::from_outputs(binary, &version, &flags)?;
    if let Ok(bytes) = serde_json::to_vec(&probe) {
        let tmp = dir.join(format!(".{key}.{}", std::process::id()));
        let saved = std::fs::create_dir_all(dir)
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
                version: safehouse_runsc_config::RunscVersion(20240729),
                flags: Default::default(),
            },
            global: vec![],
        }
    }

    #[test]
    fn no_namespace_of_its_own_means_no_network() {
        let path = SpecNetns::Path("/var/run/netns/p".into());
        let f = env("auto").sandbox_flags(&SpecNetns::Shared).expect("auto");
        assert_eq!((f.network, f.netns), (NetworkMode::None, None));
        let f = env("auto").sandbox_flags(&path).expect("auto with ns");
        assert_eq!(f.network, NetworkMode::Host);
        assert_eq!(f.netns, Some(PathBuf::from("/var/run/netns/p")));
        // A new namespace runsc makes: host network inside it, no namespace entered.
        let f = env("auto")
            .sandbox_flags(&SpecNetns::New)
            .expect("auto, new");
        assert_eq!((f.network, f.netns), (NetworkMode::Host, None));
        let f = env("none").sandbox_flags(&path).expect("none");
        assert_eq!((f.network, f.netns), (NetworkMode::None, None));
        assert!(
            env("host").sandbox_flags(&SpecNetns::Shared).is_err(),
            "never the node's network"
        );
    }
}
