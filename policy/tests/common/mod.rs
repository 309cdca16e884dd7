//! Shared helpers for the policy crate's integration tests: fixtures and example policies.
#![allow(dead_code)]

use std::path::PathBuf;

use oci_spec::runtime::Spec;
use safehouse_policy::{load_file, AgentPolicy};

/// Path of a file under `policy/tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An OCI spec fixture.
pub fn spec(name: &str) -> Spec {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The committed example policies directory.
pub fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policies")
}

/// An example policy by file stem.
pub fn example(stem: &str) -> AgentPolicy {
    load_file(&examples_dir().join(format!("{stem}.yaml"))).unwrap()
}
