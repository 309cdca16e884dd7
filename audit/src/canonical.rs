//! Canonical JSON: the exact bytes the hash chain hashes.
//!
//! Objects have their keys in ascending byte order, there is no whitespace,
//! strings and numbers are written the way `serde_json` writes them. This is
//! done by hand instead of trusting `serde_json::Value`'s map order, which
//! another crate in the build can switch to insertion order (`preserve_order`).

use serde_json::Value;

/// Appends the canonical JSON of `value` to `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

/// The canonical JSON of `value` as bytes.
pub fn to_canonical_vec(value: &Value) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(512);
    write_canonical(value, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_keys_recursively_and_drops_whitespace() {
        let v: Value = match serde_json::from_str(
            r#"{ "b": 1, "a": {"z": [1, {"y": "\n", "x": null}], "c": true}, "A": -2 }"#,
        ) {
            Ok(v) => v,
            Err(e) => panic!("test input: {e}"),
        };
        let bytes = to_canonical_vec(&v).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            r#"{"A":-2,"a":{"c":true,"z":[1,{"x":null,"y":"\n"}]},"b":1}"#
        );
    }
}
