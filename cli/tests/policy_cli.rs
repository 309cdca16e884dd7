//! The `safehouse policy` commands as an operator runs them: exit codes, located findings,
//! compiled output, and the committed schema staying in sync.

use std::path::PathBuf;

use assert_cmd::Command;
use predicates::prelude::*;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn safehouse() -> Command {
    Command::cargo_bin("safehouse").unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const BAD: &str = "apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: demo
spec:
  filesystem:
    scratch:
      - {path: /tmp}
  process:
    tools:
      - /bin/sh
      - usr/bin/python3
";

#[test]
fn lint_examples_is_clean() {
    let mut cmd = safehouse();
    cmd.args(["policy", "lint"]);
    for f in ["code-interpreter", "web-research", "ci-job"] {
        cmd.arg(repo(&format!("examples/policies/{f}.yaml")));
    }
    cmd.assert()
        .success()
        .stdout(predicate::str::contains("code-interpreter.yaml: ok"));
}

#[test]
fn lint_findings_name_file_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "policy.yaml", BAD);
    safehouse()
        .args(["policy", "lint"])
        .arg(&p)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(format!(
            "{}:12:9: spec.process.tools[1]: must be an absolute path",
            p.display()
        )));
}

#[test]
fn lint_notes_a_tool_that_runs_any_code_without_failing() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "policy.yaml",
        &BAD.replace("usr/bin/python3", "/usr/bin/python3"),
    );
    safehouse()
        .args(["policy", "lint"])
        .arg(&p)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{}: ok", p.display())))
        .stdout(predicate::str::contains(format!(
            "{}:11:9: note: spec.process.tools[0]: /bin/sh runs whatever code it is given",
            p.display()
        )))
        .stdout(predicate::str::contains(
            ":12:9: note: spec.process.tools[1]: /usr/bin/python3 runs whatever code",
        ));
}

#[test]
fn lint_unknown_field_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "p.yaml",
        &BAD.replace("  process:\n", "  process:\n    privileged: true\n"),
    );
    safehouse()
        .args(["policy", "lint"])
        .arg(&p)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            ":10:5: spec.process.privileged: unknown field `privileged`",
        ));
}

#[test]
fn lint_unreadable_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = repo("examples/policies/ci-job.yaml");
    safehouse()
        .args(["policy", "lint"])
        .arg(&good)
        .arg(dir.path().join("missing.yaml"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing.yaml: cannot read"));
}

#[test]
fn compile_prints_confined_spec_and_flags() {
    let out = safehouse()
        .args(["policy", "compile"])
        .arg(repo("examples/policies/code-interpreter.yaml"))
        .arg("--spec")
        .arg(repo("policy/tests/fixtures/ctr-run.json"))
        .arg("--flags")
        .assert()
        .success()
        .stderr(predicate::str::contains("runsc flag: --network=none"))
        .get_output()
        .stdout
        .clone();
    let spec: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        spec["annotations"]["safehouse.dev/policy"],
        "code-interpreter"
    );
    assert_eq!(spec["root"]["readonly"], true);
    assert_eq!(spec["process"]["user"]["uid"], 65534);
}

#[test]
fn compile_refusal_names_field_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo("policy/tests/fixtures/ctr-run.json")).unwrap();
    let mut spec: serde_json::Value = serde_json::from_str(&text).unwrap();
    spec["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/host", "type": "bind", "source": "/etc", "options": ["rbind", "rw"]}));
    let p = write(&dir, "config.json", &spec.to_string());
    safehouse()
        .args(["policy", "compile"])
        .arg(repo("examples/policies/code-interpreter.yaml"))
        .arg("--spec")
        .arg(&p)
        .assert()
        .code(1)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(
            "mounts[7] (destination /host, source /etc): bind mount of a host path not named by policy \"code-interpreter\"",
        ));
}

#[test]
fn compile_invalid_policy_exits_1_with_location() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "bad.yaml", BAD);
    safehouse()
        .args(["policy", "compile"])
        .arg(&p)
        .arg("--spec")
        .arg(repo("policy/tests/fixtures/ctr-run.json"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "bad.yaml:12:9: spec.process.tools[1]",
        ));
}

#[test]
fn explain_speaks_plainly() {
    safehouse()
        .args(["policy", "explain"])
        .arg(repo("examples/policies/code-interpreter.yaml"))
        .assert()
        .success()
        .stdout(predicate::str::contains("It has no network access"))
        .stdout(predicate::str::contains(
            "It may run only /bin/sh, /usr/bin/python3",
        ));
    safehouse()
        .args(["policy", "explain", "--strict-default"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Policy \"strict-default\""));
}

#[test]
fn committed_schema_matches_the_cli() {
    let out = safehouse()
        .args(["policy", "schema"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let committed = std::fs::read_to_string(repo("docs/agent-policy.schema.json")).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        committed,
        "docs/agent-policy.schema.json is stale: regenerate with `safehouse policy schema > docs/agent-policy.schema.json`"
    );
}

#[test]
fn help_has_examples() {
    safehouse()
        .args(["policy", "lint", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit status: 0"))
        .stdout(predicate::str::contains("Examples:"));
    safehouse()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("safehouse policy lint"));
}

const TIGHT: &str = "apiVersion: safehouse.dev/v1alpha1
kind: AgentPolicy
metadata: {name: tight}
spec:
  filesystem:
    scratch: [{path: /tmp, size: 16Mi}]
  resources: {memory: 256Mi, pids: 32}
";

#[test]
fn compare_tighter_exits_0_and_says_so_per_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let tight = write(&dir, "tight.yaml", TIGHT);
    let out = safehouse()
        .args(["policy", "compare", "--strict-default"])
        .arg(&tight)
        .assert()
        .code(0)
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    for d in ["filesystem", "network", "process", "resources", "audit"] {
        assert!(out.contains(&format!("{d}: no looser\n")), "{out}");
    }
    assert!(
        out.starts_with("base: strict-default (built-in)\ncandidate: tight ("),
        "{out}"
    );
    assert!(
        out.ends_with("tight is no looser than strict-default on every dimension\n"),
        "{out}"
    );
}

#[test]
fn compare_looser_exits_1_naming_dimensions_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let tight = write(&dir, "tight.yaml", TIGHT);
    let web = repo("examples/policies/web-research.yaml");
    let assert = safehouse()
        .args(["policy", "compare"])
        .arg(&tight)
        .arg(&web)
        .assert()
        .code(1);
    let out = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    for want in [
        "filesystem: LOOSER\n",
        "  spec.filesystem.scratch[0].size: 128Mi at /tmp, more than the base's 16Mi\n",
        "network: LOOSER\n",
        "  spec.network.mode: allowlist, looser than the base's none\n",
        "process: LOOSER\n",
        "  spec.process.user: 1000:1000 differs from the base's 65534:65534",
        "resources: LOOSER\n",
        "  spec.resources.memory: 1Gi, more than the base's 256Mi\n",
        "audit: LOOSER\n",
        "  spec.audit.onViolation: record only",
        "web-research is looser than tight in filesystem, network, process, resources, audit\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    // The other way round: tight is no looser than web-research? No: web-research restricts
    // tools and times out, tight does neither.
    let assert = safehouse()
        .args(["policy", "compare"])
        .arg(&web)
        .arg(&tight)
        .assert()
        .code(1);
    let out = String::from_utf8(assert.get_output().stdout.clone()).unwrap();
    assert!(
        out.contains("spec.process.tools: empty (any executable may run)"),
        "{out}"
    );
    assert!(
        out.contains("spec.process.timeout: none, where the base kills the container after 1800s"),
        "{out}"
    );
}

#[test]
fn compare_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(&dir, "bad.yaml", BAD);
    let tight = write(&dir, "tight.yaml", TIGHT);
    safehouse()
        .args(["policy", "compare"])
        .arg(&tight)
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "bad.yaml:12:9: spec.process.tools[1]",
        ));
    safehouse()
        .args(["policy", "compare"])
        .arg(dir.path().join("missing.yaml"))
        .arg(&tight)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read policy"));
    // One file needs --strict-default; --strict-default takes only one.
    safehouse()
        .args(["policy", "compare"])
        .arg(&tight)
        .assert()
        .code(2);
    safehouse()
        .args(["policy", "compare", "--strict-default"])
        .arg(&tight)
        .arg(&tight)
        .assert()
        .code(2);
}

#[test]
fn compare_help_explains_exit_codes_with_an_example() {
    safehouse()
        .args(["policy", "compare", "--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "Exit status: 0 when CANDIDATE is no looser than BASE, 1 when it is looser, 2",
        ))
        .stdout(predicate::str::contains(
            "safehouse policy compare --strict-default examples/policies/web-research.yaml",
        ));
}
