//! The JSON Schema of one audit line, generated from the event types, and
//! committed as `docs/audit-event.schema.json` (a test keeps them equal).

use crate::event::AuditEvent;

/// The schema's `$id`.
pub const SCHEMA_ID: &str = "https://safehouse.dev/schemas/audit-event.schema.json";

/// The JSON Schema (draft 2020-12) of a written audit line: what Safehouse
/// serialises (so defaulted fields such as `seq` are required), plus `hash`,
/// which every written line carries.
pub fn event_schema() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator();
    let mut value = generator.into_root_schema_for::<AuditEvent>().to_value();
    if let Some(obj) = value.as_object_mut() {
        if let Some(serde_json::Value::Array(required)) = obj.get_mut("required") {
            if !required.iter().any(|r| r == "hash") {
                required.push("hash".into());
            }
        }
        obj.insert("$id".to_owned(), SCHEMA_ID.into());
        obj.insert("title".to_owned(), "Safehouse audit event".into());
        obj.insert(
            "description".to_owned(),
            "One line of Safehouse's JSON Lines audit stream; see docs/audit-events.md.".into(),
        );
    }
    value
}

/// The schema as committed: pretty JSON with a trailing newline.
pub fn event_schema_json() -> String {
    let mut text = serde_json::to_string_pretty(&event_schema()).unwrap_or_default();
    text.push('\n');
    text
}
