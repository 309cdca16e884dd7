//! Safehouse's audit stream.
//!
//! - [`sink`]: the per-sandbox SOCK_SEQPACKET server gVisor's Sentry connects
//!   to, and [`session`]: the `--pod-init-config` that makes it connect.
//! - [`decode`]: gVisor's wire format into [`AuditEvent`]s ([`wire`] holds the
//!   framing, `proto/` our description of the messages).
//! - [`event`], [`lifecycle`]: the event model and the shim's own events.
//! - [`chain`], [`writer`]: per-sandbox hash chain and the JSON Lines writer.
//! - [`verify`], [`follow`]: reading the file back; [`display`]: printing it safely.
//! - [`schema`]: the JSON Schema of a line; [`encode`]: synthetic packets for
//!   tests, benchmarks and hostile-client tools.

pub mod canonical;
pub mod chain;
pub mod decode;
pub mod display;
pub mod event;
pub mod follow;
pub mod lifecycle;
pub mod names;
pub mod ocsf;
pub mod schema;
pub mod seal;
pub mod session;
pub mod sink;
pub mod sockaddr;
pub mod timestamp;
pub mod verify;
pub mod wire;
pub mod writer;

pub mod encode;
pub mod proto;

pub use chain::{Chain, ChainError, GENESIS_HASH};
pub use decode::{decode_packet, Body, DecodeError, DecodedPacket};
pub use event::{
    Action, AuditEvent, BinaryInfo, Category, DropInfo, DropSource, ExitInfo, ExitReason, FileInfo,
    NetworkInfo, PodInfo, PolicyRef, ProcessInfo, SyscallInfo, SyscallResult, Violation,
};
pub use timestamp::Timestamp;
