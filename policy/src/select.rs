//! Whether a policy selected by annotation may replace the runtime handler's default: the rule
//! the shim applies at Create, as a pure function.
//!
//! Selection is tighten-only: an annotation may select a policy only when [`compare`] shows it
//! is no looser than the handler's default on every dimension, unless the operator listed the
//! policy in `[policy] selectable` of the runtime config. In every case the selected file's
//! `metadata.name` must be the name the annotation used.

use crate::compare::{compare, Comparison};
use crate::manifest::AgentPolicy;

/// Why a selected policy may not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The file's `metadata.name` is not the name the annotation used.
    #[error("policy file selected as {name_used:?} is named {actual:?} (metadata.name); a selected policy's metadata.name must equal the name that selects it")]
    NameMismatch {
        /// The name in the annotation.
        name_used: String,
        /// The file's `metadata.name`.
        actual: String,
    },
    /// The policy is looser than the handler's default, and not listed as selectable.
    #[error("policy {candidate:?} is looser than the default policy {default:?} in {dimensions}: {comparison}; an annotation may select only a policy no looser than the default, unless [policy] selectable lists it")]
    Looser {
        /// The selected policy's name.
        candidate: String,
        /// The default policy's name.
        default: String,
        /// The looser dimensions, comma separated (`network, process`).
        dimensions: String,
        /// Every loosening found.
        comparison: Comparison,
    },
}

/// Checks that `candidate`, selected by the name `name_used`, may replace `default`:
/// its `metadata.name` is `name_used`, and it is no looser than `default` unless
/// `explicitly_selectable` (the operator listed it in `[policy] selectable`).
pub fn check_selectable(
    default: &AgentPolicy,
    candidate: &AgentPolicy,
    name_used: &str,
    explicitly_selectable: bool,
) -> Result<(), SelectError> {
    if candidate.name() != name_used {
        return Err(SelectError::NameMismatch {
            name_used: name_used.to_string(),
            actual: candidate.name().to_string(),
        });
    }
    if explicitly_selectable {
        return Ok(());
    }
    let comparison = compare(default, candidate);
    if comparison.is_no_looser() {
        return Ok(());
    }
    let dimensions = comparison
        .looser_dimensions()
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ");
    Err(SelectError::Looser {
        candidate: candidate.name().to_string(),
        default: default.name().to_string(),
        dimensions,
        comparison,
    })
}
