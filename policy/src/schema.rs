//! The JSON Schema of the manifest, generated from the Rust types so the two cannot drift.

use crate::manifest::AgentPolicy;

/// JSON Schema (draft 2020-12) of an `AgentPolicy` manifest.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(AgentPolicy).to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".to_string(),
            serde_json::Value::String(
                "https://safehouse.dev/schemas/agent-policy.v1alpha1.json".to_string(),
            ),
        );
    }
    crate::digest::sorted(schema)
}
