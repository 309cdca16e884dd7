//! Where things are in a manifest's text: a tree of the first document's nodes, each with the
//! location of its value (and of its key, for a mapping entry), built in one pass over the
//! events of a YAML parser (JSON is YAML here). Looking a field path up walks the tree, one
//! step per path segment; a path the tree does not know resolves to its nearest ancestor.
//!
//! Building is linear in the text: every node and every key is stored once (no node stores its
//! full path), and the pass stops at the first collection nested deeper than the limit it is
//! given, so a hostile manifest costs at most one bounded scan. The parser (granit-parser)
//! bounds its own look-ahead for simple keys in flow collections, which keeps deep flow nesting
//! linear too.

use std::collections::HashMap;
use std::fmt;

use granit_parser::{ErrorKind, Event, Marker, Parser};

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

/// How far above the caller's depth limit the parser's own nesting limits are set: more than
/// its simple-key look-ahead (1024 characters) can open.
const PARSER_LIMIT_MARGIN: usize = 2048;

/// One step of a field path: a mapping key or a sequence index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A sequence index, from 0.
    Index(usize),
}

/// Splits a field path as `validate` writes it (`spec.filesystem.scratch[0].size`) into
/// segments. Keys are taken to contain no `.` and no `[`, which holds for every field name of
/// the manifest; a path built from arbitrary keys should be given as segments instead.
pub fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    if path.is_empty() {
        return out;
    }
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else { break };
            match r[..end].parse() {
                Ok(i) => out.push(Segment::Index(i)),
                Err(_) => break,
            }
            rest = &r[end + 1..];
        }
    }
    out
}

/// Why indexing stopped before the end of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexStop {
    /// A mapping or sequence opened deeper than the limit, at `location`.
    TooDeep {
        /// The limit that was passed.
        limit: usize,
        /// Where the collection past the limit starts.
        location: Location,
    },
    /// The parser found a syntax error.
    Syntax {
        /// The parser's message, without its position.
        message: String,
        /// Where.
        location: Location,
    },
}

#[derive(Debug, Clone)]
struct Node {
    value: Location,
    key: Option<Location>,
    children: Children,
}

#[derive(Debug, Clone)]
enum Children {
    Leaf,
    Map(HashMap<String, usize>),
    Seq(Vec<usize>),
}

/// Field path → location of its key and of its value.
#[derive(Debug, Default, Clone)]
pub struct PositionIndex {
    nodes: Vec<Node>,
    root: Option<usize>,
}

impl PositionIndex {
    /// Index `text` (best effort: on a syntax error, or past the default nesting limit, the
    /// index holds what was seen before).
    pub fn build(text: &str) -> Self {
        Self::build_checked(text, crate::limits::MAX_NESTING_DEPTH).0
    }

    /// Index `text`, stopping at the first mapping or sequence nested more than `max_depth`
    /// deep (the document's top-level collection is depth 1) or at the first syntax error; the
    /// index holds what was seen before the stop. Every document of the stream is checked
    /// against the limit; only the first is indexed.
    pub fn build_checked(text: &str, max_depth: usize) -> (Self, Result<(), IndexStop>) {
        // Tabs are YAML-illegal as indentation but legal JSON whitespace; one space for one tab
        // keeps every line and column where it was.
        let text = text.replace('\t', " ");
        let options = granit_parser::options! {
            // The parser's own limits stay above ours (passing them means passing ours), far
            // enough above for its bounded look-ahead, so that ours usually stops first and
            // points at the first collection past the limit.
            flow_nesting_limit: max_depth.saturating_add(PARSER_LIMIT_MARGIN),
            block_nesting_limit: max_depth.saturating_add(PARSER_LIMIT_MARGIN),
            emit_comments: false,
        };
        let mut parser = Parser::new_from_str_with_options(&text, options);
        let mut builder = Builder {
            index: PositionIndex::default(),
            stack: Vec::new(),
            max_depth,
        };
        while let Some(next) = parser.next_event() {
            let (event, span) = match next {
                Ok(ev) => ev,
                Err(e) => {
                    let location = (*e.marker()).into();
                    // The scanner reads ahead of the events: its own nesting limit (above ours)
                    // may fire first, on a text that is too deep all the same.
                    let stop = if *e.kind() == ErrorKind::RecursionLimitExceeded {
                        IndexStop::TooDeep {
                            limit: max_depth,
                            location,
                        }
                    } else {
                        IndexStop::Syntax {
                            message: e.info(),
                            location,
                        }
                    };
                    return (builder.index, Err(stop));
                }
            };
            if let Err(stop) = builder.on_event(event, span.start) {
                return (builder.index, Err(stop));
            }
        }
        (builder.index, Ok(()))
    }

    /// Location of the value at `path`, or of its nearest indexed ancestor.
    pub fn locate(&self, path: &str) -> Option<Location> {
        self.locate_segments(&segments(path))
    }

    /// Location of the key naming `path` (for a mapping entry), else as `locate`.
    pub fn locate_key(&self, path: &str) -> Option<Location> {
        self.locate_key_segments(&segments(path))
    }

    /// As [`PositionIndex::locate`], for a path given as segments.
    pub fn locate_segments(&self, path: &[Segment<'_>]) -> Option<Location> {
        let (node, _) = self.walk(path)?;
        Some(self.nodes[node].value)
    }

    /// As [`PositionIndex::locate_key`], for a path given as segments.
    pub fn locate_key_segments(&self, path: &[Segment<'_>]) -> Option<Location> {
        let (node, complete) = self.walk(path)?;
        let node = &self.nodes[node];
        match (complete, node.key) {
            (true, Some(key)) => Some(key),
            _ => Some(node.value),
        }
    }

    /// The deepest node along `path`, and whether it is the node the whole path names.
    fn walk(&self, path: &[Segment<'_>]) -> Option<(usize, bool)> {
        let mut at = self.root?;
        for seg in path {
            let next = match (&self.nodes[at].children, seg) {
                (Children::Map(keys), Segment::Key(k)) => keys.get(*k).copied(),
                (Children::Seq(items), Segment::Index(i)) => items.get(*i).copied(),
                _ => None,
            };
            match next {
                Some(n) => at = n,
                None => return Some((at, false)),
            }
        }
        Some((at, true))
    }
}

/// What a mapping waits for next.
enum Awaiting {
    /// A key.
    Key,
    /// The value of this key (`None`: of a key that is not a scalar, so not indexed).
    Value(Option<(String, Location)>),
}

enum Frame {
    Map {
        node: usize,
        awaiting: Awaiting,
        seen_key: bool,
    },
    Seq {
        node: usize,
    },
}

struct Builder {
    index: PositionIndex,
    stack: Vec<Frame>,
    max_depth: usize,
}

impl Builder {
    fn new_node(&mut self, value: Location, children: Children) -> usize {
        self.index.nodes.push(Node {
            value,
            key: None,
            children,
        });
        self.index.nodes.len() - 1
    }

    /// A node (scalar, alias or the start of a collection) at `loc`; returns whether it is
    /// complete already (not a collection, not a key).
    fn on_node(&mut self, loc: Location, scalar: Option<&str>, children: Children) -> bool {
        let is_collection = !matches!(children, Children::Leaf);
        // A scalar key is no node of its own: it names the next value.
        if let Some(Frame::Map {
            node,
            awaiting: awaiting @ Awaiting::Key,
            seen_key,
        }) = self.stack.last_mut()
        {
            if !*seen_key {
                // A block mapping's start is marked after its first key: point the mapping
                // itself at that first key instead.
                *seen_key = true;
                self.index.nodes[*node].value = loc;
            }
            match scalar {
                Some(text) => {
                    *awaiting = Awaiting::Value(Some((text.to_string(), loc)));
                    return false;
                }
                None if !is_collection => {
                    *awaiting = Awaiting::Value(None);
                    return false;
                }
                // A collection as a key: indexed as a detached node; its value is not indexed.
                None => {}
            }
        }
        let id = self.new_node(loc, children);
        match self.stack.last_mut() {
            None => {
                if self.index.root.is_none() {
                    self.index.root = Some(id);
                }
            }
            Some(Frame::Seq { node }) => {
                if let Children::Seq(items) = &mut self.index.nodes[*node].children {
                    items.push(id);
                }
            }
            Some(Frame::Map {
                node,
                awaiting: Awaiting::Value(Some((key, key_loc))),
                ..
            }) => {
                let key_loc = *key_loc;
                if let Children::Map(keys) = &mut self.index.nodes[*node].children {
                    // The first of duplicate keys wins.
                    if !keys.contains_key(key.as_str()) {
                        keys.insert(std::mem::take(key), id);
                        self.index.nodes[id].key = Some(key_loc);
                    }
                }
            }
            Some(Frame::Map { .. }) => {}
        }
        !is_collection
    }

    /// After a complete node: its parent waits for what comes next.
    fn complete(&mut self) {
        if let Some(Frame::Map { awaiting, .. }) = self.stack.last_mut() {
            *awaiting = match awaiting {
                Awaiting::Key => Awaiting::Value(None),
                Awaiting::Value(_) => Awaiting::Key,
            };
        }
    }

    fn open(&mut self, loc: Location, map: bool) -> Result<(), IndexStop> {
        if self.stack.len() >= self.max_depth {
            return Err(IndexStop::TooDeep {
                limit: self.max_depth,
                location: loc,
            });
        }
        let children = if map {
            Children::Map(HashMap::new())
        } else {
            Children::Seq(Vec::new())
        };
        self.on_node(loc, None, children);
        let node = self.index.nodes.len() - 1;
        self.stack.push(if map {
            Frame::Map {
                node,
                awaiting: Awaiting::Key,
                seen_key: false,
            }
        } else {
            Frame::Seq { node }
        });
        Ok(())
    }

    fn on_event(&mut self, ev: Event<'_>, mark: Marker) -> Result<(), IndexStop> {
        let loc: Location = mark.into();
        match ev {
            Event::DocumentStart(..) => self.stack.clear(),
            Event::Scalar(text, ..) => {
                let complete = self.on_node(loc, Some(text.as_ref()), Children::Leaf);
                if complete {
                    self.complete();
                }
            }
            Event::Alias(_) => {
                let complete = self.on_node(loc, None, Children::Leaf);
                if complete {
                    self.complete();
                }
            }
            Event::MappingStart(..) => self.open(loc, true)?,
            Event::SequenceStart(..) => self.open(loc, false)?,
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.complete();
            }
            _ => {}
        }
        Ok(())
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
        assert_eq!(
            segments("a.b[2][0].c"),
            [
                Segment::Key("a"),
                Segment::Key("b"),
                Segment::Index(2),
                Segment::Index(0),
                Segment::Key("c")
            ]
        );
        assert_eq!(segments(""), []);
    }

    #[test]
    fn json_with_tabs_is_indexed() {
        let idx = PositionIndex::build(
            "{\n\t\"kind\": \"AgentPolicy\",\n\t\"spec\": {\"process\": {\"tools\": [\"a\"]}}\n}",
        );
        assert_eq!(idx.locate("kind").map(|l| l.line), Some(2));
        assert_eq!(idx.locate("spec.process.tools[0]").map(|l| l.line), Some(3));
    }

    #[test]
    fn keys_are_not_paths_and_duplicates_keep_the_first() {
        let idx = PositionIndex::build(
            "a.b: 1
a:
  b: 2
  b: 3
? [x]
: 4
z: 5
",
        );
        assert_eq!(
            idx.locate_segments(&[Segment::Key("a.b")]),
            Some(Location { line: 1, column: 6 })
        );
        assert_eq!(idx.locate("a.b"), Some(Location { line: 3, column: 6 }));
        // A non-scalar key does not shift the keys after it.
        assert_eq!(idx.locate("z"), Some(Location { line: 7, column: 4 }));
        assert_eq!(idx.locate_key("z"), Some(Location { line: 7, column: 1 }));
    }

    #[test]
    fn stops_at_the_depth_limit() {
        let ok = format!("{}{}", "[".repeat(4), "]".repeat(4));
        assert_eq!(PositionIndex::build_checked(&ok, 4).1, Ok(()));
        let deep = format!(
            "a:
  - {}{}",
            "[".repeat(3),
            "]".repeat(3)
        );
        assert_eq!(
            PositionIndex::build_checked(&deep, 4).1,
            Err(IndexStop::TooDeep {
                limit: 4,
                location: Location { line: 2, column: 7 }
            })
        );
        // Every document counts, not only the indexed first one.
        let second = format!("a: 1\n---\n{}{}", "[".repeat(10), "]".repeat(10));
        let r = PositionIndex::build_checked(&second, 4).1;
        assert!(matches!(r, Err(IndexStop::TooDeep { .. })), "{r:?}");
    }
}
