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
    // The manifest structs declare their fields in sorted order and their maps are BTreeMaps,
    // so serde's compact output is already canonical (checked against `write_canonical` in
    // the tests); this avoids building a `serde_json::Value` on every compile.
    serde_json::to_vec(policy).unwrap_or_else(|_| format!("{policy:?}").into_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{HostZone, ScratchZone, SymlinkRule};
    use crate::quantity::{ByteSize, DurationSpec};

    fn slow_canonical(policy: &AgentPolicy) -> Vec<u8> {
        let mut out = Vec::new();
        write_canonical(&serde_json::to_value(policy).unwrap(), &mut out);
        out
    }

    #[test]
    fn serde_output_is_key_sorted_canonical_json() {
        let mut full = AgentPolicy::strict_default();
        full.metadata.labels.insert("b".into(), "2".into());
        full.metadata.labels.insert("a".into(), "1".into());
        full.spec.filesystem.scratch.push(ScratchZone {
            path: "/build".into(),
            size: ByteSize::mib(3),
            exec: true,
        });
        let zone = HostZone {
            source: "/srv/x".into(),
            path: "/x".into(),
            exec: true,
            size: None,
            symlinks: SymlinkRule::Record,
        };
        full.spec.filesystem.inputs.push(zone.clone());
        full.spec.filesystem.outputs.push(HostZone {
            size: Some(ByteSize::mib(5)),
            symlinks: SymlinkRule::Refuse,
            ..zone
        });
        full.spec.network.egress.push("pypi.org:443".into());
        full.spec.process.capabilities.push("CAP_KILL".into());
        full.spec.process.tools.push("/bin/sh".into());
        full.spec.process.timeout = Some(DurationSpec(std::time::Duration::from_millis(1500)));
        for p in [AgentPolicy::strict_default(), full] {
            assert_eq!(
                String::from_utf8(canonical_bytes(&p)).unwrap(),
                String::from_utf8(slow_canonical(&p)).unwrap()
            );
        }
    }
}
