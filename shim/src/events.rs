//! Task events to containerd, in the order they happened.
//!
//! containerd-shim's own publisher retries a failed event from a task of its own a second
//! later, while the events behind it go on: after containerd restarts, the first event each
//! shim publishes fails ("LocalClosed") and `/tasks/exit` was seen after `/tasks/delete`, or
//! lost when the shim exited within that second. Here one task forwards the queue in order: an
//! event that fails is retried (reconnecting first) before any later one is sent, for up to
//! [`RETRY_FOR`]; and the shim flushes the queue before it exits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::ttrpc::context::Context;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// How long one event is retried before it is given up (logged).
pub const RETRY_FOR: Duration = Duration::from_secs(30);

/// Pauses between attempts at one event.
const BACKOFF: [Duration; 6] = [
    Duration::from_millis(0),
    Duration::from_millis(10),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
];

/// Where events go: containerd's ttrpc Events service, or a test's record.
#[async_trait]
pub trait Forward: Send + 'static {
    /// Sends one event; an error means it was not delivered.
    async fn forward(&mut self, envelope: &Envelope) -> Result<(), String>;
}

/// containerd's Events service, reconnected after a failure.
pub struct TtrpcForward {
    address: String,
    client: Option<EventsClient>,
}

impl TtrpcForward {
    /// For containerd's ttrpc address (as containerd passed it to the shim).
    pub fn new(address: &str) -> TtrpcForward {
        TtrpcForward {
            address: address.to_owned(),
            client: None,
        }
    }

    async fn connect(&self) -> Result<EventsClient, String> {
        let address = self.address.clone();
        let fd = tokio::task::spawn_blocking(move || containerd_shim::util::connect(address))
            .await
            .map_err(|e| format!("connect: {e}"))?
            .map_err(|e| format!("connect to {}: {e}", self.address))?;
        // SAFETY: `fd` is a connected unix socket that nothing else owns.
        let client = unsafe { Client::from_raw_unix_socket_fd(fd) };
        Ok(EventsClient::new(client))
    }
}

#[async_trait]
impl Forward for TtrpcForward {
    async fn forward(&mut self, envelope: &Envelope) -> Result<(), String> {
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let Some(client) = &self.client else {
            return Err("not connected".into());
        };
        let mut req = ForwardRequest::new();
        req.set_envelope(envelope.clone());
        let ctx = Context::default();
        match client.forward(ctx, &req).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // A closed connection (containerd restarted) is reopened for the next attempt.
                self.client = None;
                Err(e.to_string())
            }
        }
    }
}

/// The shim's event queue.
#[derive(Clone)]
pub struct Events {
    namespace: String,
    tx: mpsc::UnboundedSender<Envelope>,
    pending: Arc<watch::Sender<usize>>,
}

impl Events {
    /// Starts forwarding events of containerd namespace `namespace` through `forward`.
    pub fn start(namespace: &str, forward: impl Forward) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(watch::channel(0usize).0);
        tokio::spawn(deliver(rx, forward, pending.clone()));
        Events {
            namespace: namespace.to_owned(),
            tx,
            pending,
        }
    }

    /// Queues an event, stamped now.
    pub fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let mut value = Vec::new();
        if let Err(e) = event.write_to_vec_dyn(&mut value) {
            warn!("encode {topic}: {e}");
            return;
        }
        let mut any = Any::new();
        any.type_url = event.descriptor_dyn().full_name().to_string();
        any.value = value;
        let mut envelope = Envelope::new();
        envelope.set_topic(topic.to_owned());
        envelope.set_namespace(self.namespace.clone());
        envelope.set_timestamp(now());
        envelope.set_event(any);
        self.pending.send_modify(|n| *n += 1);
        if self.tx.send(envelope).is_err() {
            self.pending.send_modify(|n| *n = n.saturating_sub(1));
            warn!("event queue closed: {topic} not published");
        }
    }

    /// Waits until every queued event was delivered or given up, at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let mut rx = self.pending.subscribe();
        if tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            warn!(
                left = *self.pending.borrow(),
                "events not delivered within {}s of shutdown",
                limit.as_secs()
            );
        }
    }
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

async fn deliver(
    mut rx: mpsc::UnboundedReceiver<Envelope>,
    mut forward: impl Forward,
    pending: Arc<watch::Sender<usize>>,
) {
    while let Some(envelope) = rx.recv().await {
        let started = Instant::now();
        let mut attempt = 0usize;
        loop {
            match forward.forward(&envelope).await {
                Ok(()) => break,
                Err(e) if started.elapsed() >= RETRY_FOR => {
                    warn!(topic = %envelope.topic, "event given up after {attempt} attempts: {e}");
                    break;
                }
                Err(e) => {
                    debug!(topic = %envelope.topic, attempt, "publish failed, retrying: {e}");
                    tokio::time::sleep(BACKOFF[attempt.min(BACKOFF.len() - 1)]).await;
                    attempt += 1;
                }
            }
        }
        pending.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A test's destination: records topics in delivery order, failing the first attempts.
#[cfg(test)]
pub mod record {
    use super::*;
    use std::sync::Mutex;

    /// What was delivered, shared with the test.
    #[derive(Clone, Default)]
    pub struct Delivered(pub Arc<Mutex<Vec<Envelope>>>);

    impl Delivered {
        /// Topics in delivery order.
        pub fn topics(&self) -> Vec<String> {
            let got = self.0.lock().unwrap_or_else(|p| p.into_inner());
            got.iter().map(|e| e.topic.clone()).collect()
        }
    }

    /// Fails its first `failures` attempts, then delivers.
    pub struct Flaky {
        /// Attempts still to fail.
        pub failures: usize,
        /// The record.
        pub delivered: Delivered,
    }

    #[async_trait]
    impl Forward for Flaky {
        async fn forward(&mut self, envelope: &Envelope) -> Result<(), String> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err("LocalClosed".into());
            }
            let mut got = self.delivered.0.lock().unwrap_or_else(|p| p.into_inner());
            got.push(envelope.clone());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::record::{Delivered, Flaky};
    use super::*;
    use containerd_shim_protos::events::task::{TaskDelete, TaskExit};

    #[tokio::test]
    async fn a_failed_event_is_retried_before_the_next_one_leaves() {
        let delivered = Delivered::default();
        let events = Events::start(
            "k8s.io",
            Flaky {
                failures: 3,
                delivered: delivered.clone(),
            },
        );
        let mut exit = TaskExit::new();
        exit.container_id = "c1".into();
        events.publish("/tasks/exit", Box::new(exit));
        events.publish("/tasks/delete", Box::new(TaskDelete::new()));
        events.flush(Duration::from_secs(5)).await;
        assert_eq!(delivered.topics(), vec!["/tasks/exit", "/tasks/delete"]);
        let got = delivered.0.lock().expect("lock");
        assert_eq!(got[0].namespace, "k8s.io");
        assert_eq!(
            got[0].event.type_url, "containerd.events.TaskExit",
            "the payload's own type"
        );
    }
}
