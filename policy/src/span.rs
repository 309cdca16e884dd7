//! Where things are in a manifest's text: an index from field paths (`spec.process.tools[1]`)
//! to 1-based line and column, built from the marked events of a YAML parser (JSON is YAML
//! here). The index is best effort: a path it does not know falls back to its nearest ancestor.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in a manifest's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Line, counting from 1.
    pub line: usize,
    /// Column, counting from 1 (in characters).
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl From<Marker> for Location {
    fn from(m: Marker) -> Self {
        Location {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// Field path → location of its key and of its value.
#[derive(Debug, Default, Clone)]
pub struct PositionIndex {
    values: HashMap<String, Location>,
    keys: HashMap<String, Location>,
}

impl PositionIndex {
    /// Index `text`; on a syntax error the index holds what was seen before it.
    pub fn build(text: &str) -> Self {
        // Tabs are YAML-illegal as indentation but legal JSON whitespace; one space for one tab
        // keeps every line and column where it was.
        let text = text.replace('\t', " ");
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(&text);
        // A syntax error is reported by the real parser; the index keeps what it has.
        let _ = parser.load(&mut builder, false);
        builder.index
    }

    /// Location of the value at `path`, or of its nearest indexed ancestor.
    pub fn locate(&self, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(loc) = self.values.get(p) {
                return Some(*loc);
            }
            p = parent(p)?;
        }
    }

    /// Location of the key naming `path` (for a mapping entry), else as `locate`.
    pub fn locate_key(&self, path: &str) -> Option<Location> {
        self.keys.get(path).copied().or_else(|| self.locate(path))
    }
}

/// The parent of a field path: `a.b[2]` → `a.b`, `a.b` → `a`, `a` → `` (the root), `` → none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

enum Frame {
    Map {
        path: String,
        pending_key: Option<String>,
        seen_key: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Builder {
    index: PositionIndex,
    stack: Vec<Frame>,
    started: bool,
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Builder {
    /// The path the next value event belongs to, or `None` when the next scalar is a map key.
    fn value_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Map {
                path, pending_key, ..
            }) => pending_key.as_ref().map(|k| join_key(path, k)),
            Some(Frame::Seq { path, next }) => Some(format!("{path}[{next}]")),
        }
    }

    /// After a complete value: the parent waits for its next key or item.
    fn advance(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { pending_key, .. }) => *pending_key = None,
            Some(Frame::Seq { next, .. }) => *next += 1,
            None => {}
        }
    }

    fn on_value(&mut self, mark: Marker) -> String {
        let path = match self.value_path() {
            Some(p) => p,
            None => {
                // A non-scalar key: give it a placeholder so its contents do not collide.
                if let Some(Frame::Map {
                    path, pending_key, ..
                }) = self.stack.last_mut()
                {
                    *pending_key = Some("?".to_string());
                    return join_key(path, "?");
                }
                String::new()
            }
        };
        self.index
            .values
            .entry(path.clone())
            .or_insert_with(|| mark.into());
        path
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart if self.started => {
                // Only the first document is indexed.
                self.stack.clear();
            }
            Event::DocumentStart => self.started = true,
            Event::Scalar(text, ..) => {
                if let Some(Frame::Map {
                    path,
                    pending_key: pending @ None,
                    seen_key,
                }) = self.stack.last_mut()
                {
                    // A block mapping's start is marked after its first key: point the
                    // mapping itself at that first key instead.
                    if !*seen_key {
                        *seen_key = true;
                        self.index.values.insert(path.clone(), mark.into());
                    }
                    let key_path = join_key(path, &text);
                    self.index
                        .keys
                        .entry(key_path)
                        .or_insert_with(|| mark.into());
                    *pending = Some(text);
                } else {
                    self.on_value(mark);
                    self.advance();
                }
            }
            Event::Alias(_) => {
                self.on_value(mark);
                self.advance();
            }
            Event::MappingStart(..) => {
                let path = self.on_value(mark);
                self.stack.push(Frame::Map {
                    path,
                    pending_key: None,
                    seen_key: false,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.on_value(mark);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.advance();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: x
spec:
  process:
    tools:
      - /bin/sh
      - usr/bin/python3
  filesystem:
    scratch:
      - {path: /tmp, size: 256Mi}
";

    #[test]
    fn locates_values_keys_and_sequence_items() {
        let idx = PositionIndex::build(DOC);
        assert_eq!(
            idx.locate("spec.process.tools[1]"),
            Some(Location { line: 9, column: 9 })
        );
        assert_eq!(
            idx.locate_key("spec.process"),
            Some(Location { line: 6, column: 3 })
        );
        assert_eq!(
            idx.locate("metadata.name"),
            Some(Location { line: 4, column: 9 })
        );
        assert_eq!(
            idx.locate("spec.filesystem.scratch[0].size"),
            Some(Location {
                line: 12,
                column: 28
            })
        );
    }

    #[test]
    fn unknown_paths_fall_back_to_ancestors() {
        let idx = PositionIndex::build(DOC);
        assert_eq!(idx.locate("spec.process.user"), idx.locate("spec.process"));
        assert_eq!(
            idx.locate("spec.process"),
            Some(Location { line: 7, column: 5 })
        );
        assert_eq!(idx.locate(""), Some(Location { line: 1, column: 1 }));
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a"), Some(""));
    }

    #[test]
    fn json_with_tabs_is_indexed() {
        let idx = PositionIndex::build(
            "{\n\t\"kind\": \"AgentPolicy\",\n\t\"spec\": {\"process\": {\"tools\": [\"a\"]}}\n}",
        );
        assert_eq!(idx.locate("kind").map(|l| l.line), Some(2));
        assert_eq!(idx.locate("spec.process.tools[0]").map(|l| l.line), Some(3));
    }
}
