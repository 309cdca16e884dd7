//! Parsing and linting: located findings, formats, examples lint clean, parser never panics.

mod common;

use safehouse_policy::{
    lint_str, parse_str, policy_digest, AgentPolicy, Format, Location, Severity,
};

const BASE: &str = "apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: demo
spec:
  process:
    tools:
      - /bin/sh
      - usr/bin/python3
";

#[test]
fn examples_lint_clean() {
    let mut seen = 0;
    for entry in std::fs::read_dir(common::examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let report = lint_str(&text, Format::for_file(&path, &text));
        assert!(
            report.findings.is_empty(),
            "{}: {:?}",
            path.display(),
            report.findings
        );
        seen += 1;
    }
    assert!(seen >= 3);
}

#[test]
fn strict_default_is_clean() {
    let p = AgentPolicy::strict_default();
    assert!(safehouse_policy::validate(&p).is_empty());
    let yaml = serde_norway::to_string(&p).unwrap();
    assert_eq!(parse_str(&yaml, Format::Yaml).unwrap(), p);
}

#[test]
fn relative_tool_is_located() {
    let report = lint_str(BASE, Format::Yaml);
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    let f = &report.findings[0];
    assert_eq!(f.path, "spec.process.tools[1]");
    assert_eq!(f.location, Some(Location { line: 9, column: 9 }));
    assert_eq!(
        f.render("policy.yaml"),
        "policy.yaml:9:9: spec.process.tools[1]: must be an absolute path"
    );
}

#[test]
fn unknown_field_names_path_and_key_position() {
    let text = BASE.replace("  process:\n", "  process:\n    sudo: true\n");
    let report = lint_str(&text, Format::Yaml);
    assert!(report.policy.is_none());
    let f = &report.findings[0];
    assert_eq!(f.path, "spec.process.sudo");
    assert!(
        f.message.starts_with("unknown field `sudo`"),
        "{}",
        f.message
    );
    assert_eq!(f.location, Some(Location { line: 7, column: 5 }));
}

#[test]
fn bad_size_is_located() {
    let text = format!("{BASE}  filesystem:\n    scratch:\n      - {{path: /tmp, size: 256Xi}}\n");
    let f = &lint_str(&text, Format::Yaml).findings[0];
    assert_eq!(f.path, "spec.filesystem.scratch[0].size");
    assert_eq!(
        f.location,
        Some(Location {
            line: 12,
            column: 28
        })
    );
    assert!(
        f.message.contains("invalid size \"256Xi\""),
        "{}",
        f.message
    );
}

#[test]
fn syntax_error_is_located() {
    let f = &lint_str("kind: [unclosed\n", Format::Yaml).findings[0];
    assert!(f.location.is_some(), "{f:?}");
    assert_eq!(f.path, "");
}

#[test]
fn semantic_findings_are_all_reported() {
    let text = "apiVersion: safehouse.dev/v1\nkind: AgentPolicy\nmetadata: {name: Bad_Name}\nspec:\n  process: {user: root, capabilities: [CAP_NOPE, CAP_SYS_ADMIN]}\n  network: {mode: none, egress: [\"no_pe\"]}\n";
    let report = lint_str(text, Format::Yaml);
    let paths: Vec<&str> = report.findings.iter().map(|f| f.path.as_str()).collect();
    for want in [
        "apiVersion",
        "metadata.name",
        "spec.process.user",
        "spec.process.capabilities[0]",
        "spec.process.capabilities[1]",
        "spec.network.egress[0]",
        "spec.network.egress",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    let sys_admin = report
        .findings
        .iter()
        .find(|f| f.path == "spec.process.capabilities[1]")
        .unwrap();
    assert_eq!(sys_admin.severity, Severity::Warning);
    assert!(report.has_errors());
}

#[test]
fn json_manifests_parse_and_locate() {
    let json = r#"{
	"apiVersion": "safehouse.dev/v1alpha1",
	"kind": "AgentPolicy",
	"metadata": {"name": "j"},
	"spec": {"process": {"tools": ["rel"]}}
}"#;
    assert_eq!(Format::detect(json), Format::Json);
    let f = &lint_str(json, Format::Json).findings[0];
    assert_eq!(f.path, "spec.process.tools[0]");
    assert_eq!(f.location.map(|l| l.line), Some(5));
    let bad = lint_str("{\"kind\": }", Format::Json);
    assert_eq!(bad.findings[0].location.map(|l| l.line), Some(1));
}

#[test]
fn digest_ignores_formatting_and_spelled_out_defaults() {
    let a = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: d}\n";
    let b = "kind: AgentPolicy\nmetadata:\n  name: d\napiVersion: safehouse.dev/v1alpha1\nspec:\n  network: {mode: none}\n  resources: {memory: 512Mi, pids: 128}\n";
    let c = "{\"apiVersion\":\"safehouse.dev/v1alpha1\",\"kind\":\"AgentPolicy\",\"metadata\":{\"name\":\"d\"},\"spec\":{\"resources\":{\"memory\":536870912}}}";
    let da = policy_digest(&parse_str(a, Format::Yaml).unwrap());
    assert_eq!(da, policy_digest(&parse_str(b, Format::Yaml).unwrap()));
    assert_eq!(da, policy_digest(&parse_str(c, Format::Json).unwrap()));
    assert!(da.starts_with("sha256:") && da.len() == 7 + 64);
    let d = a.replace("name: d", "name: e");
    assert_ne!(da, policy_digest(&parse_str(&d, Format::Yaml).unwrap()));
}

/// A small deterministic generator so the garbage test needs no extra dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn parser_never_panics_on_garbage() {
    let alphabet = b"{}[]:,-'\"\n\t #&*!|>?%@`abc019/\\.";
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..3000 {
        let len = (xorshift(&mut state) % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                let r = xorshift(&mut state);
                if round % 2 == 0 {
                    alphabet[(r % alphabet.len() as u64) as usize]
                } else {
                    r as u8
                }
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = lint_str(&text, Format::Yaml);
        let _ = lint_str(&text, Format::Json);
    }
    // Mutations of a valid manifest reach deeper into the shape and semantic checks.
    let base =
        std::fs::read_to_string(common::examples_dir().join("code-interpreter.yaml")).unwrap();
    for _ in 0..2000 {
        let mut bytes = base.clone().into_bytes();
        for _ in 0..(1 + xorshift(&mut state) % 4) {
            let at = (xorshift(&mut state) % bytes.len() as u64) as usize;
            bytes[at] = alphabet[(xorshift(&mut state) % alphabet.len() as u64) as usize];
        }
        let _ = lint_str(&String::from_utf8_lossy(&bytes), Format::Yaml);
    }
}

#[test]
fn host_names_under_open_are_flagged_as_without_effect() {
    let text = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: web}\nspec:\n  network: {mode: open, egress: [\"metadata.internal:80\", \"169.254.169.254:80\"]}\n";
    let report = lint_str(text, Format::Yaml);
    let flagged: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.message.contains("no effect with mode open"))
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(flagged, ["spec.network.egress[0]"], "{:?}", report.findings);
}

#[test]
fn a_writable_rootfs_beside_tools_is_flagged_and_notes_name_what_runs_anything() {
    let text = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: t}\nspec:\n  filesystem: {rootfs: read-write}\n  process: {tools: [/usr/bin/curl, /usr/bin/python3]}\n";
    let report = lint_str(text, Format::Yaml);
    let warned: Vec<&str> = report
        .findings
        .iter()
        .filter(|f| f.message.contains("libraries"))
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(warned, ["spec.filesystem.rootfs"], "{:?}", report.findings);
    let noted: Vec<&str> = report.notes.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(noted, ["spec.process.tools[1]"], "{:?}", report.notes);
    // Read-only (the default) with the same tools: no warning.
    let report = lint_str(&text.replace("read-write", "read-only"), Format::Yaml);
    assert!(report.findings.is_empty(), "{:?}", report.findings);
}

/// `depth` nested flow sequences under `spec.process.tools`, as an attacker would write them.
fn nested(depth: usize) -> String {
    format!(
        "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {{name: deep}}\nspec:\n  process:\n    tools: {}{}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

fn assert_depth_error(report: &safehouse_policy::LintReport) {
    assert!(report.policy.is_none());
    assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
    let f = &report.findings[0];
    assert!(
        f.message.contains("nested more than 64 levels deep"),
        "{}",
        f.message
    );
}

#[test]
fn deeply_nested_manifests_fail_with_the_depth_error() {
    // 100,000 levels (about 200 KB) and 30,000 levels: both used to cost seconds of CPU.
    for depth in [100_000, 30_000] {
        let report = lint_str(&nested(depth), Format::Yaml);
        assert_depth_error(&report);
        // Pointed at the first sequence past the limit: line 6, after `tools: ` and the 61
        // brackets of levels 4 to 64 (the root, spec and process are levels 1 to 3).
        assert_eq!(
            report.findings[0].location,
            Some(Location {
                line: 6,
                column: 12 + 61
            })
        );
        let err = parse_str(&nested(depth), Format::Yaml).unwrap_err();
        assert!(err.to_string().contains("64 levels"), "{err}");
    }
    // Block nesting counts the same way.
    let mut block = String::from("apiVersion: safehouse.dev/v1alpha1\nspec:\n");
    for level in 0..70 {
        block.push_str(&format!("{}k{level}:\n", " ".repeat(level + 2)));
    }
    assert_depth_error(&lint_str(&block, Format::Yaml));
    // JSON, in both readers.
    let json = format!(
        "{{\"kind\": \"AgentPolicy\", \"spec\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_depth_error(&lint_str(&json, Format::Json));
    assert_depth_error(&lint_str(&json, Format::Yaml));
}

#[test]
fn nesting_up_to_the_limit_is_read() {
    // 64 levels: refused for its shape (a tool is a string), not for its depth.
    let report = lint_str(&nested(61), Format::Yaml);
    let f = &report.findings[0];
    assert_eq!(f.path, "spec.process.tools[0]");
    assert!(f.message.contains("invalid type"), "{}", f.message);
    let report = lint_str(&nested(62), Format::Yaml);
    assert_depth_error(&report);
}

#[test]
fn manifests_over_the_size_limit_fail_with_the_size_error() {
    let base = "apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: big}\n";
    let pad = |total: usize| format!("{base}{}", "#".repeat(total - base.len()));
    let at_limit = pad(safehouse_policy::MAX_MANIFEST_BYTES);
    assert_eq!(at_limit.len(), safehouse_policy::MAX_MANIFEST_BYTES);
    assert!(parse_str(&at_limit, Format::Yaml).is_ok());
    let over = pad(safehouse_policy::MAX_MANIFEST_BYTES + 1);
    let report = lint_str(&over, Format::Yaml);
    assert!(report.policy.is_none());
    assert_eq!(
        report.findings[0].message,
        "the manifest is 1048577 bytes, over the limit of 1048576 bytes (1 MiB)"
    );
    assert_eq!(lint_str(&over, Format::Json).findings, report.findings);
}

#[test]
fn load_file_refuses_a_large_file_with_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    // Two-byte characters, so the cut one byte past the limit falls inside one: the size error
    // all the same, not a UTF-8 error.
    std::fs::write(
        &path,
        "é".repeat(3 * safehouse_policy::MAX_MANIFEST_BYTES / 2 + 1),
    )
    .unwrap();
    let err = safehouse_policy::load_file(&path).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "huge.yaml: the manifest is 3145730 bytes, over the limit of 1048576 bytes (1 MiB)"
        ),
        "{err}"
    );
}

#[test]
fn unknown_keys_with_dots_are_located_at_their_key() {
    let text = BASE.replace("  process:\n", "  process:\n    \"a.b\": true\n");
    let f = &lint_str(&text, Format::Yaml).findings[0];
    assert_eq!(f.path, "spec.process.a.b");
    assert_eq!(f.location, Some(Location { line: 7, column: 5 }));
}

#[test]
fn alias_bombs_are_refused_not_expanded() {
    // Nine levels of nine aliases: 387 million strings if expanded.
    let mut text = String::from("apiVersion: safehouse.dev/v1alpha1\nkind: AgentPolicy\nmetadata: {name: bomb}\nx0: &x0 [a, a, a, a, a, a, a, a, a]\n");
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "x{i}: &x{i} [*x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}]\n"
        ));
    }
    let report = lint_str(&text, Format::Yaml);
    assert!(report.policy.is_none());
    assert!(
        report.findings[0].message.contains("repetition limit"),
        "{:?}",
        report.findings
    );
}

#[test]
fn shape_errors_keep_their_positions_in_json_and_flow_yaml() {
    let text = "{\"apiVersion\": \"safehouse.dev/v1alpha1\", \"kind\": \"AgentPolicy\",\n \"metadata\": {\"name\": \"p\"},\n \"spec\": {\"resources\": {\"pids\": \"many\"}}}";
    for format in [Format::Json, Format::Yaml] {
        let f = &lint_str(text, format).findings[0];
        assert_eq!(f.path, "spec.resources.pids");
        assert_eq!(
            f.location,
            Some(Location {
                line: 3,
                column: 33
            }),
            "{format:?}"
        );
        assert!(
            f.message.starts_with("invalid type: string \"many\""),
            "{}",
            f.message
        );
    }
}

const OUTPUTS: &str = "apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: outs
spec:
  filesystem:
    inputs:
      - {source: /srv/in, path: /in}
    outputs:
      - {source: /srv/a, path: /a}
      - {source: /srv/b, path: /b, size: 16Mi, symlinks: refuse}
";

/// An output without `size` gets the documented default and keeps its old digest; one with a
/// size and a symlink rule reads them.
#[test]
fn outputs_take_a_size_and_a_symlink_rule() {
    use safehouse_policy::manifest::{SymlinkRule, DEFAULT_OUTPUT_SIZE};
    use safehouse_policy::quantity::ByteSize;
    let p = parse_str(OUTPUTS, Format::Yaml).unwrap();
    let outs = &p.spec.filesystem.outputs;
    assert_eq!(outs[0].size, None);
    assert_eq!(outs[0].output_size(), DEFAULT_OUTPUT_SIZE);
    assert_eq!(DEFAULT_OUTPUT_SIZE, ByteSize::mib(1024));
    assert_eq!(outs[0].symlinks, SymlinkRule::Record);
    assert_eq!(outs[1].output_size(), ByteSize::mib(16));
    assert_eq!(outs[1].symlinks, SymlinkRule::Refuse);
    // Spelling out the defaults changes nothing but the size, which is a different policy.
    let spelled = OUTPUTS.replace(
        "{source: /srv/a, path: /a}",
        "{source: /srv/a, path: /a, symlinks: record}",
    );
    assert_eq!(
        policy_digest(&parse_str(&spelled, Format::Yaml).unwrap()),
        policy_digest(&p)
    );
    let sized = OUTPUTS.replace(
        "{source: /srv/a, path: /a}",
        "{source: /srv/a, path: /a, size: 1Gi}",
    );
    assert_ne!(
        policy_digest(&parse_str(&sized, Format::Yaml).unwrap()),
        policy_digest(&p)
    );
}

/// `size` and `symlinks` on an input, and an output too small for its filesystem, are errors
/// naming the field.
#[test]
fn output_fields_are_checked() {
    let bad = OUTPUTS
        .replace(
            "{source: /srv/in, path: /in}",
            "{source: /srv/in, path: /in, size: 4Mi, symlinks: refuse}",
        )
        .replace("size: 16Mi", "size: 4Ki");
    let report = lint_str(&bad, Format::Yaml);
    let mut errors: Vec<(&str, &str)> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| (f.path.as_str(), f.message.as_str()))
        .collect();
    errors.sort();
    assert_eq!(
        errors,
        [
            (
                "spec.filesystem.inputs[0].size",
                "only outputs take a size: an input is read-only"
            ),
            (
                "spec.filesystem.inputs[0].symlinks",
                "only outputs take a symlink rule: an input is read-only"
            ),
            (
                "spec.filesystem.outputs[1].size",
                "4Ki is too small: an output needs at least 1Mi"
            ),
        ],
        "{:?}",
        report.findings
    );
}
