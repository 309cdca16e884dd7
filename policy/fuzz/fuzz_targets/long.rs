//! Fuzz the manifest reader with long and deep inputs, which the byte-level `parse` target
//! rarely reaches: the input is a fragment repeated up to the size limit and past it, then its
//! brackets closed in reverse, inside a valid manifest's `spec`. Every text must yield a policy
//! or findings, without a panic; a text over the size limit yields exactly the size finding;
//! and a finding carries a location inside the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safehouse_policy::{lint_str, Format, MAX_MANIFEST_BYTES};

const HEAD: &str = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: f}\nspec:\n  process:\n    tools: ";

fuzz_target!(|data: &[u8]| {
    let [hi, lo, rest @ ..] = data else {
        return;
    };
    let Ok(fragment) = std::str::from_utf8(rest) else {
        return;
    };
    if fragment.is_empty() {
        return;
    }
    // Up to twice the size limit, so both sides of it are reached.
    let budget = 2 * MAX_MANIFEST_BYTES;
    let wanted = usize::from(u16::from_be_bytes([*hi, *lo])) * 64;
    let reps = wanted.min(budget / (2 * fragment.len()));
    let closing: String = fragment
        .chars()
        .rev()
        .filter_map(|c| match c {
            '[' => Some(']'),
            '{' => Some('}'),
            '"' | '\'' => Some(c),
            _ => None,
        })
        .collect();
    let text = format!("{HEAD}{}{}\n", fragment.repeat(reps), closing.repeat(reps));
    let lines = text.lines().count().max(1);
    for format in [Format::Yaml, Format::Json] {
        let report = lint_str(&text, format);
        assert!(report.policy.is_some() || report.has_errors());
        if text.len() > MAX_MANIFEST_BYTES {
            assert_eq!(report.findings.len(), 1);
            assert!(report.findings[0].message.contains("over the limit"));
        }
        for f in &report.findings {
            if let Some(loc) = f.location {
                assert!(loc.line <= lines + 1, "{f} is past the end of the text");
            }
        }
    }
});
