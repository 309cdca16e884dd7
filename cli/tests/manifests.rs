//! The Kubernetes manifests under deploy/kubernetes: well-formed, the fields Kubernetes
//! requires, and consistent with what the installer and `make install` lay down (handler names
//! and their config files, install paths, the installer image, labels and service accounts).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn docs(file: &str) -> Vec<Value> {
    let path = repo().join("deploy/kubernetes").join(file);
    let text = std::fs::read_to_string(&path).expect("manifest readable");
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("missing string at {}", path.join(".")))
}

/// `NAME ?= VALUE` from the Makefile.
fn make_var(name: &str) -> String {
    let text = std::fs::read_to_string(repo().join("Makefile")).expect("Makefile");
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once("?=")?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("Makefile has no {name} ?="))
}

/// Parses a Kubernetes quantity like `64Mi` or `50m` into bytes / millicores.
fn quantity(q: &str) -> f64 {
    let (num, unit) = q.split_at(q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len()));
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("quantity {q:?}"));
    match unit {
        "" => n,
        "m" => n / 1000.0,
        "Ki" => n * 1024.0,
        "Mi" => n * 1024.0 * 1024.0,
        "Gi" => n * 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other:?} in {q:?}"),
    }
}

#[test]
fn every_manifest_is_well_formed() {
    let dir = repo().join("deploy/kubernetes");
    let mut files = 0;
    for e in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        if !name.ends_with(".yaml") {
            continue;
        }
        files += 1;
        for d in docs(&name) {
            for key in ["apiVersion", "kind"] {
                assert!(
                    d[key].as_str().is_some(),
                    "{name}: a document without {key}"
                );
            }
            assert!(
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()),
                "{name}: {} without metadata.name",
                s(&d, &["kind"])
            );
        }
    }
    assert!(
        files >= 3,
        "runtimeclass, installer and uninstaller manifests"
    );
}

#[test]
fn runtime_classes_match_the_installed_handlers() {
    let classes = docs("runtimeclass.yaml");
    let handlers: BTreeSet<&str> = classes
        .iter()
        .inspect(|c| {
            assert_eq!(s(c, &["apiVersion"]), "node.k8s.io/v1");
            assert_eq!(s(c, &["kind"]), "RuntimeClass");
        })
        .map(|c| s(c, &["handler"]))
        .collect();
    // The handlers `safehouse node install` registers by default, each with its config shipped.
    assert_eq!(
        handlers,
        BTreeSet::from(["safehouse", "safehouse-net"]),
        "RuntimeClass handlers"
    );
    for (handler, config) in [
        ("safehouse", "config.toml"),
        ("safehouse-net", "config-net.toml"),
    ] {
        assert!(handlers.contains(handler));
        let path = repo().join("deploy/config").join(config);
        let text = std::fs::read_to_string(&path).expect("handler config shipped");
        safehouse_runsc_config::RuntimeConfig::parse(&text, &path)
            .expect("handler config is valid");
    }
    for c in &classes {
        let memory = quantity(s(c, &["overhead", "podFixed", "memory"]));
        let cpu = quantity(s(c, &["overhead", "podFixed", "cpu"]));
        assert!(memory >= 16.0 * 1024.0 * 1024.0, "podFixed memory {memory}");
        assert!(cpu > 0.0 && cpu < 1.0, "podFixed cpu {cpu}");
        assert_eq!(
            s(c, &["scheduling", "nodeSelector", "safehouse.dev/runtime"]),
            "enabled"
        );
    }
}

fn daemonset(file: &str) -> (Vec<Value>, Value) {
    let all = docs(file);
    let ds = all
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .cloned()
        .expect("a DaemonSet");
    (all, ds)
}

#[test]
fn installer_paths_image_and_accounts_are_consistent() {
    let image_script =
        std::fs::read_to_string(repo().join("scripts/installer-image.sh")).expect("image recipe");
    let image = image_script
        .lines()
        .find_map(|l| l.strip_prefix("IMAGE="))
        .expect("IMAGE= in scripts/installer-image.sh");
    let prefix = make_var("PREFIX");
    let config_dir = make_var("CONFIG_DIR");
    let (install_docs, _) = daemonset("installer.yaml");
    let accounts: BTreeSet<String> = install_docs
        .iter()
        .filter(|d| d["kind"] == "ServiceAccount")
        .map(|d| s(d, &["metadata", "name"]).to_string())
        .collect();
    let namespaces: BTreeSet<String> = install_docs
        .iter()
        .filter(|d| d["kind"] == "Namespace")
        .map(|d| s(d, &["metadata", "name"]).to_string())
        .collect();
    for (file, verb) in [
        ("installer.yaml", "install"),
        ("uninstaller.yaml", "uninstall"),
    ] {
        let (_, ds) = daemonset(file);
        assert!(
            namespaces.contains(s(&ds, &["metadata", "namespace"])),
            "{file}: namespace"
        );
        let spec = &ds["spec"]["template"]["spec"];
        assert!(
            accounts.contains(s(spec, &["serviceAccountName"])),
            "{file}: service account defined in installer.yaml"
        );
        assert_eq!(
            ds["spec"]["selector"]["matchLabels"],
            ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
                .as_str()
                .map(|n| {
                    let mut m = serde_norway::Mapping::new();
                    m.insert("app.kubernetes.io/name".into(), n.into());
                    Value::Mapping(m)
                })
                .expect("pod label"),
            "{file}: selector matches the pod template"
        );
        assert_eq!(
            spec["hostPID"].as_bool(),
            Some(true),
            "{file}: nsenter into PID 1"
        );
        assert_eq!(
            s(spec, &["nodeSelector", "safehouse.dev/runtime"]),
            "enabled",
            "{file}: same nodes as the RuntimeClasses"
        );
        let c = &spec["containers"][0];
        assert_eq!(
            s(c, &["image"]),
            image,
            "{file}: the image scripts/installer-image.sh builds"
        );
        assert_eq!(c["securityContext"]["privileged"].as_bool(), Some(true));
        let script = c["command"]
            .as_sequence()
            .expect("command")
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            script.contains(&format!("/opt/safehouse/bin/safehouse node {verb}")),
            "{file}: runs node {verb}"
        );
        assert!(script.contains("--host-root /host"), "{file}: host root");
        assert!(
            script.contains(&format!("--prefix {prefix}")),
            "{file}: Makefile PREFIX"
        );
        assert!(
            script.contains(&format!("--config-dir {config_dir}")),
            "{file}: Makefile CONFIG_DIR"
        );
        if verb == "install" {
            assert!(script.contains("--from /opt/safehouse"));
            assert!(image_script
                .contains("/opt/safehouse/bin/{containerd-shim-safehouse-v2,safehouse}"));
        }
        let mount = c["volumeMounts"]
            .as_sequence()
            .and_then(|m| m.iter().find(|m| m["mountPath"] == "/host"))
            .expect("/host mount");
        let volume = spec["volumes"]
            .as_sequence()
            .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
            .expect("volume of the /host mount");
        assert_eq!(
            s(volume, &["hostPath", "path"]),
            "/",
            "{file}: the node's root"
        );
    }
}
