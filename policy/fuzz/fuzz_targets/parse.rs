//! Fuzz the manifest reader: any bytes, as YAML and as JSON, must yield findings or a policy,
//! never a panic; a policy that parses must compile (or be refused) without panicking, and
//! compiling its output again must give the same spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safehouse_policy::{compile, lint_str, CompileContext, Format};

const SPEC: &str = include_str!("../../tests/fixtures/cri-container.json");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for format in [Format::Yaml, Format::Json] {
        let report = lint_str(text, format);
        let Some(policy) = report.policy else {
            continue;
        };
        let Ok(spec) = serde_json::from_str::<oci_spec::runtime::Spec>(SPEC) else {
            return;
        };
        let ctx = CompileContext::default();
        if let Ok(out) = compile(&policy, &spec, &ctx) {
            let again = compile(&policy, &out.spec, &ctx).map(|c| c.spec);
            assert_eq!(again.as_ref(), Ok(&out.spec), "compile is not idempotent");
        }
    }
});
