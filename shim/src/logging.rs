//! The shim's own logs: into containerd's shim log fifo (`log` in the bundle) when serving,
//! to stderr for the short-lived `start`/`delete` actions. `-debug` raises the level; the
//! `SAFEHOUSE_LOG` environment variable (tracing's filter syntax) overrides it.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

fn filter(debug: bool) -> EnvFilter {
    EnvFilter::try_from_env("SAFEHOUSE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(if debug { "debug" } else { "info" }))
}

/// Prefixes every log line with the shim's id (the container, or the pod's sandbox container),
/// so lines from code that knows no container (the containerd-shim crate's own, shutdown) still
/// say whose they are. Each event is one `write` from the formatter.
struct Prefixed<W> {
    prefix: String,
    inner: W,
}

impl<W: Write> Write for Prefixed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut line = Vec::with_capacity(self.prefix.len() + buf.len());
        line.extend_from_slice(self.prefix.as_bytes());
        line.extend_from_slice(buf);
        self.inner.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Logs to containerd's `log` fifo in the working directory (the bundle).
pub fn init_for_serve(debug: bool, shim_id: &str) {
    let sink = OpenOptions::new().write(true).open("log");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(debug))
        .with_ansi(false)
        .with_target(false);
    let prefix = format!("shim={shim_id} ");
    let res = match sink {
        Ok(f) => builder
            .with_writer(Mutex::new(Prefixed { prefix, inner: f }))
            .try_init(),
        Err(_) => builder
            .with_writer(Mutex::new(Prefixed {
                prefix,
                inner: std::io::stderr(),
            }))
            .try_init(),
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
