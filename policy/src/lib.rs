//! Safehouse agent capability policies.
//!
//! An operator writes an `AgentPolicy` manifest (YAML or JSON) stating what an agent may do;
//! this crate reads it with located findings ([`lint_str`], [`parse_str`], [`load_file`]),
//! compiles it against the untrusted OCI spec containerd hands the shim ([`compile()`]), explains
//! it in plain sentences ([`explain()`]), compares two policies dimension by dimension
//! ([`compare()`], [`check_selectable`]: tighten-only selection) and publishes its JSON Schema
//! ([`json_schema`]). Manifests are held to [`MAX_MANIFEST_BYTES`] and [`MAX_NESTING_DEPTH`]
//! before any parser builds values. Everything but [`load_file`] is pure.

pub mod compare;
pub mod compile;
pub mod digest;
pub mod egress;
pub mod explain;
pub mod finding;
pub mod limits;
pub mod manifest;
pub mod netfilter;
pub mod parse;
pub mod paths;
pub mod quantity;
pub mod schema;
pub mod select;
pub mod span;
pub mod validate;

pub use compare::{compare, Comparison, Dimension, Loosening};
pub use compile::tools::{apply_layout, tool_mounts, ExecFile, ShadowDir, ToolLayout};
pub use compile::{
    compile, AuditPlan, CompileContext, CompileError, CompiledPolicy, NetworkPlan,
    DIGEST_ANNOTATION, POLICY_ANNOTATION,
};
pub use digest::policy_digest;
pub use explain::explain;
pub use finding::{Finding, Severity};
pub use limits::{LimitError, MAX_MANIFEST_BYTES, MAX_NESTING_DEPTH};
pub use manifest::{AgentPolicy, AuditCategory, NetworkMode, ViolationAction, STRICT_DEFAULT_NAME};
pub use netfilter::{
    FilterMode, Learned, NetFilter, NodeFacts, REFUSED_COUNTER, REFUSED_LOG_GROUP,
    REFUSED_LOG_RATE, REFUSED_LOG_SNAPLEN,
};
pub use parse::{lint_str, load_file, parse_str, Format, InvalidPolicy, LintReport, LoadError};
pub use schema::json_schema;
pub use select::{check_selectable, SelectError};
pub use span::Location;
pub use validate::validate;
