//! The shim's own logs: into containerd's shim log fifo (`log` in the bundle) when serving,
//! to stderr for the short-lived `start`/`delete` actions. `-debug` raises the level; the
//! `SAFEHOUSE_LOG` environment variable (tracing's filter syntax) overrides it.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `SAFEHOUSE_LOG` (`debug`, or `info,safehouse=debug`-style targets) or the `-debug` level.
fn filter(debug: bool) -> Targets {
    std::env::var("SAFEHOUSE_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| {
            Targets::new().with_default(if debug {
                tracing::Level::DEBUG
            } else {
                tracing::Level::INFO
            })
        })
}

/// Installs the one formatting layer (no colours, no module paths) writing to `writer`.
fn init<W>(writer: W, debug: bool) -> Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::Layer;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_target(false)
                .with_writer(writer)
                .with_filter(filter(debug)),
        )
        .try_init()
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
    let prefix = format!("shim={shim_id} ");
    let res = match sink {
        Ok(f) => init(Mutex::new(Prefixed { prefix, inner: f }), debug),
        Err(_) => init(
            Mutex::new(Prefixed {
                prefix,
                inner: std::io::stderr(),
            }),
            debug,
        ),
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
    let _ = init(std::io::stderr, debug);
}
