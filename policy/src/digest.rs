//! The policy digest: SHA-256 over the canonical serialisation of the manifest.
//!
//! Canonical form: the manifest with every default filled in, serialised as JSON with object
//! keys sorted by their UTF-8 bytes, no insignificant whitespace, sizes as `<n>Ki|Mi|Gi|Ti` or
//! bytes, durations as `<n>s`/`<n>ms`, capability names as written. Two manifests that differ
//! only in formatting, key order or spelled-out defaults have the same digest.

use sha2::{Digest, Sha256};

use crate::manifest::AgentPolicy;

/// `sha256:<hex>` of the canonical form of `policy`.
pub fn policy_digest(policy: &AgentPolicy) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical_bytes(policy)))
    )
}

/// Canonical JSON of `policy`, the bytes `policy_digest` hashes.
pub fn canonical_json(policy: &AgentPolicy) -> String {
    String::from_utf8_lossy(&canonical_bytes(policy)).into_owned()
}

fn canonical_bytes(policy: &AgentPolicy) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    match serde_json::to_value(policy) {
        Ok(v) => write_canonical(&v, &mut out),
        // Serialising plain data structs cannot fail; fall back to Debug to stay total.
        Err(_) => out = format!("{policy:?}").into_bytes(),
    }
    out
}

/// Writes `v` with sorted keys and no whitespace, whatever map order serde_json was built with.
pub fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(k, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

/// Compact JSON of a string or scalar, appended to `out`.
fn write_scalar<T: serde::Serialize + ?Sized>(v: &T, out: &mut Vec<u8>) {
    // Writing a string or scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// `v` rebuilt with every object's keys inserted in sorted order (stable output for printing).
pub fn sorted(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
