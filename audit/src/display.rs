//! Making untrusted event text safe for an operator's terminal.
//!
//! Much of an event's text comes from inside the sandbox (file names, argv, task names): an
//! agent chooses it. JSON escaping keeps it on one line of the file, but a human format prints
//! the decoded string, where ESC, BEL, a newline or a C1 control would reach the terminal and
//! could clear the screen, retitle the window or forge a whole extra line. [`escape`] rewrites
//! every such character as a visible escape; everything else passes through unchanged.
//!
//! Escaped: C0 controls (U+0000–U+001F), DEL (U+007F), C1 controls (U+0080–U+009F), the line
//! and paragraph separators (U+2028, U+2029), the bidirectional overrides and isolates
//! (U+202A–U+202E, U+2066–U+2069, which reorder what is shown), and the backslash itself, so an
//! escape in the output always means the byte was there (a literal `\e` in a name prints `\\e`).

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as itself.
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{2028}' | '\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\\')
}

/// `text` with every control character (and backslash) replaced by a visible escape:
/// `\n`, `\r`, `\t`, `\e` (ESC), `\\`, `\xHH` for other C0 controls and DEL, `\u{HHHH}` for
/// C1 controls, separators and bidi controls. Borrowed when nothing needed escaping.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs_escape(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

/// A JSON value as one escaped string: strings unquoted, anything else as compact JSON
/// (whose strings may still hold C1 or separator characters, so it is escaped too).
pub fn escape_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => escape(s).into_owned(),
        serde_json::Value::Null => String::new(),
        other => escape(&other.to_string()).into_owned(),
    }
}

/// Whether `text` is free of everything [`escape`] rewrites except the backslash: safe to
/// print as it is.
pub fn is_terminal_safe(text: &str) -> bool {
    !text.chars().any(|c| c != '\\' && needs_escape(c))
}

/// One short human-readable line for a JSON event line:
/// `#seq category/action container what`, every field from the line escaped with [`escape`].
/// A line that is not JSON is shown escaped after `(unreadable line)`.
pub fn short_line(line: &str) -> String {
    let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
        return format!("(unreadable line) {}", escape(line));
    };
    let s = |v: &serde_json::Value| escape_value(v);
    let mut what = Vec::new();
    if e["process"]["binary"]["path"].is_string() {
        what.push(s(&e["process"]["binary"]["path"]));
    }
    if let Some(argv) = e["process"]["argv"].as_array() {
        let quoted: Vec<String> = argv
            .iter()
            .map(|a| format!("\"{}\"", s(a).replace('"', "\\\"")))
            .collect();
        what.push(format!("[{}]", quoted.join(", ")));
    }
    if e["file"]["path"].is_string() {
        what.push(format!(
            "{} ({})",
            s(&e["file"]["path"]),
            s(&e["file"]["access"])
        ));
    }
    if e["network"]["ip"].is_string() {
        what.push(format!(
            "{}:{}",
            s(&e["network"]["ip"]),
            s(&e["network"]["port"])
        ));
    }
    if !e["exit"]["code"].is_null() {
        what.push(format!("code {}", s(&e["exit"]["code"])));
    }
    if !e["exit"]["signal"].is_null() {
        what.push(format!("signal {}", s(&e["exit"]["signal"])));
    }
    if !e["exit"]["reason"].is_null() {
        what.push(format!("reason {}", s(&e["exit"]["reason"])));
    }
    if !e["violation"]["reason"].is_null() {
        what.push(format!(
            "{}: {} -> {}",
            s(&e["violation"]["rule"]),
            s(&e["violation"]["reason"]),
            s(&e["violation"]["enforcement"])
        ));
    }
    if !e["result"]["errno_name"].is_null() {
        what.push(format!("errno {}", s(&e["result"]["errno_name"])));
    } else if !e["result"]["errno"].is_null() {
        what.push(format!("errno {}", s(&e["result"]["errno"])));
    }
    if !e["dropped"]["count"].is_null() {
        what.push(format!(
            "{} lost ({})",
            s(&e["dropped"]["count"]),
            s(&e["dropped"]["source"])
        ));
    }
    if !e["message"].is_null() {
        // After what the event's fields said, set apart from it.
        let message = s(&e["message"]);
        what.push(if what.is_empty() {
            message
        } else {
            format!("({message})")
        });
    }
    format!(
        "#{:<4} {:<22} {:<12} {}",
        s(&e["seq"]),
        format!("{}/{}", s(&e["category"]), s(&e["action"])),
        s(&e["container_id"]),
        what.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let text = "/tmp/ordinary file-name_ü€😀.txt";
        assert!(matches!(escape(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn terminal_controls_are_escaped() {
        let cases = [
            ("a\u{1b}[2Jb", "a\\e[2Jb"),
            ("\u{1b}]0;pwned\u{7}", "\\e]0;pwned\\x07"),
            ("x\ny", "x\\ny"),
            ("x\r\ty", "x\\r\\ty"),
            ("nul\u{0}", "nul\\x00"),
            ("del\u{7f}", "del\\x7f"),
            ("csi\u{9b}2J", "csi\\u{009b}2J"),
            ("c1\u{80}\u{9f}", "c1\\u{0080}\\u{009f}"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("rlo\u{202e}txt", "rlo\\u{202e}txt"),
            ("back\\slash", "back\\\\slash"),
        ];
        for (input, want) in cases {
            let got = escape(input);
            assert_eq!(got, want, "escaping {input:?}");
            assert!(is_terminal_safe(&got), "{got:?} still holds a control");
        }
    }

    #[test]
    fn a_literal_escape_sequence_is_told_apart_from_a_real_one() {
        assert_ne!(escape("\\e[2J"), escape("\u{1b}[2J"));
    }

    #[test]
    fn values_are_escaped_whatever_their_type() {
        assert_eq!(escape_value(&serde_json::json!("a\u{1b}b")), "a\\eb");
        assert_eq!(escape_value(&serde_json::json!(7)), "7");
        // serde_json leaves C1 unescaped inside JSON strings: still escaped here.
        assert_eq!(
            escape_value(&serde_json::json!(["\u{85}"])),
            "[\"\\u{0085}\"]"
        );
        assert_eq!(escape_value(&serde_json::Value::Null), "");
    }

    #[test]
    fn short_lines_say_what_happened() {
        let line = r#"{"seq":3,"category":"file","action":"open","container_id":"c1","file":{"path":"/tmp/x","access":"write"},"result":{"errno":2,"errno_name":"ENOENT","retval":-2}}"#;
        let out = short_line(line);
        assert_eq!(
            out,
            "#3    file/open              c1           /tmp/x (write) errno ENOENT"
        );
    }

    #[test]
    fn a_violation_names_its_rule_and_sets_the_message_apart() {
        let line = r#"{"seq":1,"category":"policy","action":"violation","container_id":"c1","violation":{"rule":"process.env[1] (LD_PRELOAD)","reason":"no preloads","enforcement":"refused"},"message":"create refused: nothing ran"}"#;
        assert_eq!(
            short_line(line),
            "#1    policy/violation       c1           process.env[1] (LD_PRELOAD): no preloads -> refused (create refused: nothing ran)"
        );
    }

    #[test]
    fn hostile_names_print_escaped_in_short_lines() {
        // What an agent can put in a file name, argv and task name, JSON-encoded as the
        // writer does (serde_json escapes C0 but leaves C1 and U+2028 raw).
        let event = serde_json::json!({
            "seq": 9,
            "category": "file",
            "action": "open",
            "container_id": "c\u{1b}]0;x\u{7}",
            "file": {"path": "/tmp/\u{1b}[2J\nseq 10 policy/violation\u{9b}31m\u{2028}", "access": "write"},
            "process": {"argv": ["sh", "-c", "\u{1b}[2J\"q\""], "binary": {"path": "/bin/\u{85}sh"}},
            "message": "m\r\u{7f}",
        });
        let line = serde_json::to_string(&event).unwrap_or_default();
        let out = short_line(&line);
        assert!(
            is_terminal_safe(&out),
            "control characters reached the output: {out:?}"
        );
        assert!(!out.contains('\n') && !out.contains('\u{1b}'), "{out:?}");
        assert!(
            out.contains("/tmp/\\e[2J\\nseq 10 policy/violation\\u{009b}31m\\u{2028}"),
            "{out}"
        );
        assert!(out.contains("c\\e]0;x\\x07"), "{out}");
        assert!(out.contains(r#"["sh", "-c", "\e[2J\"q\""]"#), "{out}");
        assert!(out.contains("/bin/\\u{0085}sh"), "{out}");
        assert!(out.contains("m\\r\\x7f"), "{out}");
    }

    #[test]
    fn unreadable_lines_are_escaped_too() {
        let out = short_line("not json \u{1b}[2J\u{9d}");
        assert_eq!(out, "(unreadable line) not json \\e[2J\\u{009d}");
    }
}
