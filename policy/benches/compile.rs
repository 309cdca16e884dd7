//! Compile time per example policy against a `ctr run` spec and a CRI container spec
//! (target: under 50 µs each), plus parse time of each example.

use std::path::PathBuf;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use oci_spec::runtime::Spec;
use safehouse_policy::{compile, load_file, parse_str, AgentPolicy, CompileContext, Format};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn spec(name: &str) -> Spec {
    let text = std::fs::read_to_string(root().join("tests/fixtures").join(name)).expect("fixture");
    serde_json::from_str(&text).expect("fixture is an OCI spec")
}

fn policies() -> Vec<(String, AgentPolicy)> {
    let mut out = vec![("strict-default".to_string(), AgentPolicy::strict_default())];
    for stem in ["code-interpreter", "web-research", "ci-job"] {
        let path = root()
            .join("../examples/policies")
            .join(format!("{stem}.yaml"));
        out.push((stem.to_string(), load_file(&path).expect("example policy")));
    }
    out
}

fn bench_compile(c: &mut Criterion) {
    let ctx = CompileContext::default();
    let mut group = c.benchmark_group("compile");
    for spec_name in ["ctr-run.json", "cri-container.json"] {
        let s = spec(spec_name);
        for (name, policy) in policies() {
            let id = format!("{name}/{}", spec_name.trim_end_matches(".json"));
            group.bench_function(id, |b| {
                b.iter(|| compile(black_box(&policy), black_box(&s), &ctx))
            });
        }
    }
    group.finish();
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for stem in ["code-interpreter", "web-research", "ci-job"] {
        let path = root()
            .join("../examples/policies")
            .join(format!("{stem}.yaml"));
        let text = std::fs::read_to_string(path).expect("example policy");
        group.bench_function(stem, |b| {
            b.iter(|| parse_str(black_box(&text), Format::Yaml))
        });
    }
    group.finish();
}

/// The parts of a compile, to see where its time goes.
fn bench_parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("parts");
    let s = spec("cri-container.json");
    let policy = policies().remove(1).1;
    group.bench_function("spec-clone", |b| b.iter(|| black_box(&s).clone()));
    group.bench_function("validate", |b| {
        b.iter(|| safehouse_policy::validate(black_box(&policy)))
    });
    group.bench_function("digest", |b| {
        b.iter(|| safehouse_policy::policy_digest(black_box(&policy)))
    });
    group.finish();
}

criterion_group!(benches, bench_compile, bench_parse, bench_parts);
criterion_main!(benches);
