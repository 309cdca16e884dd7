//! A finding about a manifest: severity, field path, location and message, printed the way
//! compilers print diagnostics (`policy.yaml:12:7: spec.process.tools[1]: must be …`).

use std::fmt;

use crate::span::Location;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The policy is unusable as written.
    Error,
    /// The policy is usable but probably not what was meant.
    Warning,
    /// Worth knowing about what the policy does; nothing to fix.
    Note,
}

/// One problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Field path, e.g. `spec.process.tools[1]`; empty for the whole document.
    pub path: String,
    /// Where in the text, when known.
    pub location: Option<Location>,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl Finding {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            path: path.into(),
            location: None,
            message: message.into(),
        }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Warning,
            ..Finding::error(path, message)
        }
    }

    /// A note at `path`.
    pub fn note(path: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Note,
            ..Finding::error(path, message)
        }
    }

    /// Whether this finding makes the policy unusable.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// The finding prefixed by a file name: `file:line:col: path: message`.
    pub fn render(&self, file: &str) -> String {
        match (file.is_empty(), self.location.is_some()) {
            (true, _) => self.to_string(),
            (false, true) => format!("{file}:{self}"),
            (false, false) => format!("{file}: {self}"),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = self.location {
            write!(f, "{loc}: ")?;
        }
        match self.severity {
            Severity::Warning => f.write_str("warning: ")?,
            Severity::Note => f.write_str("note: ")?,
            Severity::Error => {}
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Renders findings one per line, each prefixed by `file` when it is not empty.
pub fn render_all(file: &str, findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| f.render(file))
        .collect::<Vec<_>>()
        .join("\n")
}
