//! Reading a manifest from text or a file: syntax, then shape (serde, `deny_unknown_fields`),
//! then meaning (`validate`), every finding located by line and column. The only I/O in this
//! crate is `load_file`.
//!
//! Before any parser builds values, the text is held to the bounds of `limits` (1 MiB, 64
//! levels of nesting): the size in constant time, the depth in the same linear pass that indexes
//! positions, which stops at the first collection too deep.

use std::path::{Path, PathBuf};

use crate::finding::{render_all, Finding};
use crate::limits::{self, LimitError, MAX_MANIFEST_BYTES, MAX_NESTING_DEPTH};
use crate::manifest::AgentPolicy;
use crate::span::{IndexStop, Location, PositionIndex, Segment};
use crate::validate::validate;

/// The syntax of a manifest's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML (a single document).
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// `.json` files are JSON, `.yaml`/`.yml` YAML; otherwise guessed from the text.
    pub fn for_file(path: &Path, text: &str) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::detect(text),
        }
    }

    /// JSON when the first non-blank character opens an object, else YAML.
    pub fn detect(text: &str) -> Format {
        match text.trim_start().chars().next() {
            Some('{') => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// Everything found in one manifest, and the policy when it could be read at all.
#[derive(Debug, Clone)]
pub struct LintReport {
    /// The policy, when its syntax and shape were valid (it may still have findings).
    pub policy: Option<AgentPolicy>,
    /// Errors and warnings, in document order where known.
    pub findings: Vec<Finding>,
    /// Notes on what a valid policy does that its author may not expect (a listed tool that
    /// runs any code it is given); never a reason to fail.
    pub notes: Vec<Finding>,
}

impl LintReport {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(Finding::is_error)
    }
}

/// A manifest that cannot be used, with every error found (and warnings).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_all("", .findings))]
pub struct InvalidPolicy {
    /// The findings; at least one is an error.
    pub findings: Vec<Finding>,
}

/// Why `load_file` failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{}: cannot read policy: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a usable policy.
    #[error("{}", render_all(&.path.display().to_string(), &.invalid.findings))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Its findings.
        invalid: InvalidPolicy,
    },
}

/// Check a manifest and report every finding (syntax, shape, meaning).
pub fn lint_str(text: &str, format: Format) -> LintReport {
    let index = match bounded_index(text, format) {
        Ok(index) => index,
        Err(finding) => {
            return LintReport {
                policy: None,
                findings: vec![finding],
                notes: Vec::new(),
            }
        }
    };
    let policy = match deserialize(text, format, &index) {
        Ok(p) => p,
        Err(finding) => {
            return LintReport {
                policy: None,
                findings: vec![finding],
                notes: Vec::new(),
            }
        }
    };
    let mut findings = validate(&policy);
    for f in &mut findings {
        f.location = index.locate(&f.path);
    }
    findings.sort_by_key(|f| f.location);
    let mut notes = crate::explain::tool_notes(&policy);
    for n in &mut notes {
        n.location = index.locate(&n.path);
    }
    LintReport {
        policy: Some(policy),
        findings,
        notes,
    }
}

/// The size and depth limits, then the position index. A YAML syntax error is reported here,
/// by the indexing parser, so that no other parser ever reads text nested past the limit; a
/// JSON one is left to serde_json (whose messages are better), after an exact depth scan.
fn bounded_index(text: &str, format: Format) -> Result<PositionIndex, Finding> {
    let limit_finding = |e: LimitError| Finding {
        location: e.location(),
        ..Finding::error("", e.to_string())
    };
    limits::check_size(text).map_err(limit_finding)?;
    if format == Format::Json {
        limits::check_json_depth(text, MAX_NESTING_DEPTH).map_err(limit_finding)?;
    }
    let (index, outcome) = PositionIndex::build_checked(text, MAX_NESTING_DEPTH);
    match outcome {
        Ok(()) => Ok(index),
        Err(IndexStop::TooDeep { limit, location }) => Err(limit_finding(LimitError::TooDeep {
            limit,
            location: Some(location),
        })),
        Err(IndexStop::Syntax { message, location }) if format == Format::Yaml => {
            Err(syntax_finding(message, Some(location)))
        }
        Err(IndexStop::Syntax { .. }) => Ok(index),
    }
}

/// Parse and validate a manifest; warnings are dropped, any error refuses it.
pub fn parse_str(text: &str, format: Format) -> Result<AgentPolicy, InvalidPolicy> {
    let report = lint_str(text, format);
    match report.policy {
        Some(policy) if !report.has_errors() => Ok(policy),
        _ => Err(InvalidPolicy {
            findings: report.findings,
        }),
    }
}

/// Read, parse and validate a policy file (format from its extension or content). A file over
/// the size limit is refused after reading one byte past the limit, never read whole.
pub fn load_file(path: &Path) -> Result<AgentPolicy, LoadError> {
    let invalid = |findings| LoadError::Invalid {
        path: path.to_path_buf(),
        invalid: InvalidPolicy { findings },
    };
    let text = match read_bounded(path) {
        Ok(Ok(text)) => text,
        Ok(Err(limit)) => return Err(invalid(vec![Finding::error("", limit.to_string())])),
        Err(source) => {
            return Err(LoadError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse_str(&text, Format::for_file(path, &text)).map_err(|e| invalid(e.findings))
}

/// A file's text as UTF-8, or the size error when it holds more than the limit (its size from
/// its metadata when it is a regular file, else what was read).
fn read_bounded(path: &Path) -> std::io::Result<Result<String, LimitError>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        let regular = meta.is_file() && meta.len() >= bytes.len() as u64;
        return Ok(Err(LimitError::TooLarge {
            size: if regular {
                meta.len()
            } else {
                bytes.len() as u64
            },
            limit: MAX_MANIFEST_BYTES,
            at_least: !regular,
        }));
    }
    let text = String::from_utf8(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(Ok(text))
}

/// Syntax first (located by the parser), then shape (located through the index).
fn deserialize(text: &str, format: Format, index: &PositionIndex) -> Result<AgentPolicy, Finding> {
    match format {
        Format::Yaml => {
            let mut value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
                let location = e.location().map(|l| Location {
                    line: l.line(),
                    column: l.column(),
                });
                syntax_finding(strip_location_suffix(&e.to_string()), location)
            })?;
            value
                .apply_merge()
                .map_err(|e| syntax_finding(e.to_string(), None))?;
            serde_path_to_error::deserialize(value).map_err(|e| shape_finding(e, index))
        }
        Format::Json => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                let location = (e.line() > 0).then(|| Location {
                    line: e.line(),
                    column: e.column().max(1),
                });
                syntax_finding(strip_location_suffix(&e.to_string()), location)
            })?;
            serde_path_to_error::deserialize(value).map_err(|e| shape_finding(e, index))
        }
    }
}

fn syntax_finding(message: String, location: Option<Location>) -> Finding {
    Finding {
        location,
        ..Finding::error("", message)
    }
}

fn shape_finding<E: std::fmt::Display>(
    e: serde_path_to_error::Error<E>,
    index: &PositionIndex,
) -> Finding {
    let path = path_string(e.path());
    let segments = path_segments(e.path());
    let message = strip_location_suffix(&e.inner().to_string());
    // An unknown field is best pointed at by its key; anything else by its value.
    let location = if message.starts_with("unknown field") {
        index.locate_key_segments(&segments)
    } else {
        index.locate_segments(&segments)
    };
    Finding {
        location,
        ..Finding::error(path, message)
    }
}

/// The path as index segments, keys kept whole (an unknown key may contain `.` or `[`).
fn path_segments(path: &serde_path_to_error::Path) -> Vec<Segment<'_>> {
    use serde_path_to_error::Segment as S;
    path.iter()
        .filter_map(|seg| match seg {
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Map { key } | S::Enum { variant: key } => Some(Segment::Key(key)),
            S::Unknown => None,
        })
        .collect()
}

fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Parsers append " at line N column M"; the location is carried separately.
fn strip_location_suffix(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_string(),
        _ => message.to_string(),
    }
}
