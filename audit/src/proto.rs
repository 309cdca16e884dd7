//! Rust types generated at build time from `proto/*.proto` (Safehouse's own
//! description of gVisor's trace-point messages). Public so that test tools
//! can speak the Sentry side; see `encode.rs`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]
include!(concat!(env!("OUT_DIR"), "/trace_proto/mod.rs"));
