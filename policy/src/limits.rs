//! Bounds on a manifest's text, checked before any parser builds values from it: a policy is a
//! few kilobytes nested about five levels deep, and a hostile one must fail in one cheap pass
//! instead of costing the shim seconds of CPU at Create.
//!
//! - size: at most [`MAX_MANIFEST_BYTES`] (1 MiB), checked first, in constant time;
//! - nesting: mappings and sequences at most [`MAX_NESTING_DEPTH`] (64) inside one another,
//!   the document's top-level mapping counting as 1. For JSON a byte scan finds the depth
//!   exactly; for YAML (and again for JSON) the indexing pass of `span` stops at the first
//!   collection past the limit.

use crate::span::Location;

/// Largest manifest accepted, in bytes (1 MiB).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Deepest nesting of mappings and sequences accepted (the top-level mapping is depth 1).
pub const MAX_NESTING_DEPTH: usize = 64;

/// A manifest over one of the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// More bytes than [`MAX_MANIFEST_BYTES`].
    #[error("the manifest is {}{size} bytes, over the limit of {limit} bytes (1 MiB)", if *.at_least { "at least " } else { "" })]
    TooLarge {
        /// The manifest's size (or as much of it as was read).
        size: u64,
        /// The limit.
        limit: usize,
        /// Whether `size` is only what was read of something larger (not a regular file).
        at_least: bool,
    },
    /// Mappings and sequences nested deeper than [`MAX_NESTING_DEPTH`].
    #[error("mappings and sequences are nested more than {limit} levels deep (the limit)")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// Where the first collection past the limit starts, when known.
        location: Option<Location>,
    },
}

impl LimitError {
    /// Where in the text the limit was passed, when that is one place.
    pub fn location(&self) -> Option<Location> {
        match self {
            LimitError::TooLarge { .. } => None,
            LimitError::TooDeep { location, .. } => *location,
        }
    }
}

/// Refuses a text larger than [`MAX_MANIFEST_BYTES`].
pub fn check_size(text: &str) -> Result<(), LimitError> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(LimitError::TooLarge {
            size: text.len() as u64,
            limit: MAX_MANIFEST_BYTES,
            at_least: false,
        });
    }
    Ok(())
}

/// Refuses JSON whose arrays and objects nest deeper than `max_depth`, in one pass over the
/// bytes (brackets inside strings do not count). Exact for valid JSON; for invalid JSON it
/// counts what a JSON parser would read before failing, or more.
pub fn check_json_depth(text: &str, max_depth: usize) -> Result<(), LimitError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let (mut line, mut column) = (1usize, 0usize);
    for c in text.chars() {
        if c == '\n' {
            line += 1;
            column = 0;
        } else {
            column += 1;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(LimitError::TooDeep {
                        limit: max_depth,
                        location: Some(Location { line, column }),
                    });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_structure_not_strings() {
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(check_json_depth(&ok, 64), Ok(()));
        let deep = format!("{{\"a\":\n {}", "[".repeat(64));
        assert_eq!(
            check_json_depth(&deep, 64),
            Err(LimitError::TooDeep {
                limit: 64,
                location: Some(Location {
                    line: 2,
                    column: 65
                })
            })
        );
        let quoted = format!("{{\"a\": \"{}\\\"{}\"}}", "[".repeat(100), "{".repeat(100));
        assert_eq!(check_json_depth(&quoted, 64), Ok(()));
    }

    #[test]
    fn size_limit_is_inclusive() {
        assert_eq!(check_size(&" ".repeat(MAX_MANIFEST_BYTES)), Ok(()));
        assert!(matches!(
            check_size(&" ".repeat(MAX_MANIFEST_BYTES + 1)),
            Err(LimitError::TooLarge { size, at_least: false, .. }) if size == MAX_MANIFEST_BYTES as u64 + 1
        ));
    }
}
