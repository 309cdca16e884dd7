//! `containerd-shim-safehouse-v2`: containerd starts it for the `io.containerd.safehouse.v2`
//! runtime; every container it serves runs in a gVisor sandbox.

mod audit;
mod bundle;
mod cgroup;
mod confine;
mod container;
mod cri_files;
mod error;
mod events;
mod hooks;
mod hostbind;
mod logging;
mod masked;
mod network;
mod node;
mod outputs;
mod process;
mod reaper;
mod rootfs;
mod runsc;
mod sandbox;
mod seccomp;
mod service;
mod stats;
mod stdio;
mod task;
mod tools;

const HELP: &str = "\
containerd-shim-safehouse-v2 — Safehouse's containerd shim (runtime io.containerd.safehouse.v2)

containerd starts this binary itself; you do not run it by hand. Register it with containerd:

  # /etc/containerd/config.toml (containerd 1.6/1.7)
  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.safehouse]
    runtime_type = \"io.containerd.safehouse.v2\"
    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.safehouse.options]
      ConfigPath = \"/etc/safehouse/config.toml\"   # optional

then: ctr run --runtime io.containerd.safehouse.v2 IMAGE ID CMD...
  or: nerdctl run --runtime io.containerd.safehouse.v2 IMAGE CMD...

The runtime config (default /etc/safehouse/config.toml, optional) names the runsc binary,
its root, platform, network mode and extra runsc flags; see docs/ in the Safehouse repo.

Flags containerd passes: -namespace NS -id ID -address SOCK -publish-binary PATH
  [-debug] [-socket ADDR] [-bundle DIR] start|delete
Other flags: -v/-version prints the version; -h/--help prints this text.
Environment: SAFEHOUSE_LOG=debug (tracing filter) overrides the log level.
";

// One thread is plenty for a shim (everything blocking runs on threads of its own) and keeps
// its memory small: it runs once per pod on every node.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "-help")
    {
        print!("{HELP}");
        return;
    }
    if args
        .iter()
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!(
            "{}:\n  Version: {}\n  Runtime: {}",
            env!("CARGO_BIN_NAME"),
            env!("CARGO_PKG_VERSION"),
            service::RUNTIME_TYPE
        );
        return;
    }
    let config = containerd_shim::Config {
        // The shim reaps its children itself (see reaper.rs) and logs through tracing.
        no_reaper: true,
        no_setup_logger: true,
        no_sub_reaper: false,
        default_log_level: "info".into(),
    };
    containerd_shim::asynchronous::run::<service::SafehouseShim>(
        service::RUNTIME_TYPE,
        Some(config),
    )
    .await;
}
