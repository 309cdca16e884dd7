//! The shim's own logs: into containerd's shim log fifo (`log` in the bundle) when serving,
//! to stderr for the short-lived `start`/`delete` actions. `-debug` raises the level; the
//! `SAFEHOUSE_LOG` environment variable (tracing's filter syntax) overrides it.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

fn filter(debug: bool) -> EnvFilter {
    EnvFilter::try_from_env("SAFEHOUSE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if debug { "debug" } else { "info" }))
}

/// Logs to containerd's `log` fifo in the working directory (the bundle).
pub fn init_for_serve(debug: bool, shim_id: &str) {
    let sink = OpenOptions::new().write(true).open("log");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(debug))
        .with_ansi(false)
        .with_target(false);
    let res = match sink {
        Ok(f) => builder.with_writer(Mutex::new(f)).try_init(),
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
    if res.is_ok() {
        tracing::info!(
            shim = shim_id,
            version = env!("CARGO_PKG_VERSION"),
            "safehouse shim serving"
        );
    }
}

/// Logs to stderr (containerd shows it when `start` or `delete` fails).
pub fn init_stderr(debug: bool) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(debug))
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}
