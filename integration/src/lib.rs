//! Safehouse's integration harness: a private containerd with the freshly built shim, a
//! busybox image built locally, the real `ctr` with a deadline on every call, leak checks, pty
//! sessions and private-namespace test hosts. Test binaries (`tests/*`) describe scenarios and
//! hand them to [`suite::main`], which runs them with libtest-mimic against one containerd.
//!
//! Nothing here contacts anything but loopback and namespaces it creates itself.

#![warn(missing_docs)]

pub mod command;
pub mod containerd;
pub mod cri;
pub mod cri_env;
pub mod ctr;
pub mod env;
pub mod host;
pub mod image;
pub mod lab;
pub mod leaks;
pub mod netlab;
pub mod pty;
pub mod runtime;
pub mod suite;
pub mod testhost;

pub use env::TestEnv;
pub use runtime::RuntimeKind;
pub use suite::Scenario;
