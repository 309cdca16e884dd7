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
