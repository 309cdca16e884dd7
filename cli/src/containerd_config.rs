//! Registering Safehouse runtime handlers in containerd's config, and taking them out again.
//!
//! Pure text-to-text functions over `toml_edit` documents, so the operator's comments, order and
//! settings survive and every case is testable without a node:
//! - config `version = 2` (containerd 1.6/1.7; 2.x migrates it): the handlers are edited into
//!   `config.toml` under `plugins."io.containerd.grpc.v1.cri".containerd.runtimes`. containerd 1.x
//!   `imports` replace whole plugin tables (an imported CRI table would wipe the operator's CRI
//!   settings), hence an edit rather than a drop-in. Removing them prunes only the tables the
//!   edit created, so install then uninstall gives back the original text.
//! - config `version = 3` (containerd 2.x): a drop-in file under
//!   `plugins."io.containerd.cri.v1.runtime"`, listed in `config.toml`'s `imports`.

use anyhow::{bail, Context, Result};
use toml_edit::{value, Array, DocumentMut, Item, Table};

/// The runtime type every Safehouse handler names.
pub const RUNTIME_TYPE: &str = "io.containerd.safehouse.v2";
/// The CRI plugin of config version 2.
pub const CRI_V2: &str = "io.containerd.grpc.v1.cri";
/// The CRI runtime plugin of config version 3.
pub const CRI_V3: &str = "io.containerd.cri.v1.runtime";
/// Annotations a pod passes to Safehouse (policy selection).
pub const ANNOTATIONS: &str = "safehouse.dev/*";

/// One runtime handler (the name a RuntimeClass uses) and its Safehouse config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handler {
    /// Handler name, e.g. `safehouse`.
    pub name: String,
    /// The Safehouse runtime config it passes as `ConfigPath`.
    pub config_path: String,
}

/// The config version a containerd config text declares (1 when absent, as containerd reads it).
pub fn config_version(text: &str) -> Result<i64> {
    let doc: DocumentMut = text
        .parse()
        .context("containerd config is not valid TOML")?;
    Ok(doc.get("version").and_then(Item::as_integer).unwrap_or(1))
}

fn table_at<'a>(doc: &'a mut DocumentMut, path: &[&str]) -> Result<&'a mut Table> {
    let mut t = doc.as_table_mut();
    for (i, key) in path.iter().enumerate() {
        if !t.contains_key(key) {
            let mut new = Table::new();
            new.set_implicit(true);
            t.insert(key, Item::Table(new));
        }
        t = t[*key].as_table_mut().with_context(|| {
            format!(
                "containerd config: {} is not a plain table (inline or dotted); edit it by hand",
                path[..=i].join(".")
            )
        })?;
    }
    Ok(t)
}

fn runtimes_path(plugin: &str) -> [&str; 4] {
    ["plugins", plugin, "containerd", "runtimes"]
}

/// Marks the runc table an edit adds (containerd 1.x drops its built-in runc runtime as soon as
/// config.toml names any runtime, so the edit must name runc too; uninstall takes it out again).
pub const RUNC_MARK: &str = "# Added by `safehouse node install`: containerd 1.x drops its built-in runc runtime once config.toml names any runtime.";

fn add_handlers(doc: &mut DocumentMut, plugin: &str, handlers: &[Handler]) -> Result<()> {
    let runtimes = table_at(doc, &runtimes_path(plugin))?;
    if plugin == CRI_V2 && runtimes.is_empty() {
        let mut runc = Table::new();
        runc["runtime_type"] = value("io.containerd.runc.v2");
        runc.decor_mut().set_prefix(format!("\n{RUNC_MARK}\n"));
        runtimes.insert("runc", Item::Table(runc));
    }
    for h in handlers {
        if let Some(existing) = runtimes.get(&h.name) {
            let kind = existing
                .get("runtime_type")
                .and_then(Item::as_str)
                .unwrap_or("");
            if kind != RUNTIME_TYPE {
                bail!(
                    "containerd config already has a runtime handler {:?} with runtime_type {kind:?}; not overwriting it (choose another handler name)",
                    h.name
                );
            }
        } else {
            runtimes.insert(&h.name, Item::Table(Table::new()));
        }
        let t = runtimes[&h.name]
            .as_table_mut()
            .with_context(|| format!("runtime handler {:?} is not a plain table", h.name))?;
        if t.get("runtime_type").and_then(Item::as_str) != Some(RUNTIME_TYPE) {
            t["runtime_type"] = value(RUNTIME_TYPE);
        }
        for key in ["pod_annotations", "container_annotations"] {
            if !t.contains_key(key) {
                let mut a = Array::new();
                a.push(ANNOTATIONS);
                t[key] = value(a);
            }
        }
        if !t.contains_key("options") {
            t.insert("options", Item::Table(Table::new()));
        }
        let opts = t["options"]
            .as_table_mut()
            .with_context(|| format!("runtime handler {:?}: options is not a table", h.name))?;
        if opts.get("ConfigPath").and_then(Item::as_str) != Some(h.config_path.as_str()) {
            opts["ConfigPath"] = value(h.config_path.as_str());
        }
    }
    Ok(())
}

/// Removes the handlers (only those whose runtime_type is Safehouse's) and then every empty
/// implicit table left on their path.
fn remove_handlers(doc: &mut DocumentMut, plugin: &str, handlers: &[Handler]) -> bool {
    let path = runtimes_path(plugin);
    let mut removed = false;
    {
        let mut t = Some(doc.as_table_mut());
        for key in path {
            t = t.and_then(|t| t.get_mut(key)).and_then(Item::as_table_mut);
        }
        if let Some(runtimes) = t {
            for h in handlers {
                let ours = runtimes
                    .get(&h.name)
                    .and_then(|r| r.get("runtime_type"))
                    .and_then(Item::as_str)
                    == Some(RUNTIME_TYPE);
                if ours {
                    runtimes.remove(&h.name);
                    removed = true;
                }
            }
            let added_runc = runtimes.len() == 1
                && runtimes
                    .get("runc")
                    .and_then(Item::as_table)
                    .and_then(|t| t.decor().prefix())
                    .and_then(|p| p.as_str())
                    .is_some_and(|p| p.contains(RUNC_MARK));
            if removed && added_runc {
                runtimes.remove("runc");
            }
        }
    }
    // Prune from the deepest table up: empty and implicit means the install created it.
    for depth in (1..=path.len()).rev() {
        let (parent_path, key) = (&path[..depth - 1], path[depth - 1]);
        let mut t = Some(doc.as_table_mut());
        for k in parent_path {
            t = t.and_then(|t| t.get_mut(k)).and_then(Item::as_table_mut);
        }
        let Some(parent) = t else { continue };
        let empty_implicit = parent
            .get(key)
            .and_then(Item::as_table)
            .is_some_and(|c| c.is_empty() && c.is_implicit());
        if empty_implicit {
            parent.remove(key);
        }
    }
    removed
}

/// `config.toml` (version 1/2) with the handlers edited in; unchanged text when they already
/// are.
pub fn edit_in(text: &str, handlers: &[Handler]) -> Result<String> {
    let mut doc: DocumentMut = text
        .parse()
        .context("containerd config is not valid TOML")?;
    if config_version(text)? >= 3 {
        bail!("containerd config version 3: use a drop-in (imports), not an edit");
    }
    if text.trim().is_empty() {
        doc["version"] = value(2);
    }
    add_handlers(&mut doc, CRI_V2, handlers)?;
    let out = doc.to_string();
    Ok(if same_toml(&out, text) {
        text.to_string()
    } else {
        out
    })
}

/// `config.toml` with the handlers taken out again.
pub fn edit_out(text: &str, handlers: &[Handler]) -> Result<String> {
    let mut doc: DocumentMut = text
        .parse()
        .context("containerd config is not valid TOML")?;
    if !remove_handlers(&mut doc, CRI_V2, handlers) {
        return Ok(text.to_string());
    }
    Ok(doc.to_string())
}

/// The drop-in file for containerd 2.x.
pub fn dropin(handlers: &[Handler]) -> Result<String> {
    let mut doc = DocumentMut::new();
    doc["version"] = value(3);
    add_handlers(&mut doc, CRI_V3, handlers)?;
    Ok(format!(
        "# Written by `safehouse node install`; removed by `safehouse node uninstall`.\n{doc}"
    ))
}

fn import_covers(entry: &str, dropin_path: &str) -> bool {
    if entry == dropin_path {
        return true;
    }
    let parent = std::path::Path::new(dropin_path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    entry == format!("{parent}/*.toml") || entry == format!("{parent}/*")
}

/// `config.toml` (version 3) importing `dropin_path` (unchanged when an entry already covers it).
pub fn import_in(text: &str, dropin_path: &str) -> Result<String> {
    let mut doc: DocumentMut = text
        .parse()
        .context("containerd config is not valid TOML")?;
    if text.trim().is_empty() {
        doc["version"] = value(3);
    }
    let imports = doc
        .entry("imports")
        .or_insert_with(|| value(Array::new()))
        .as_array_mut()
        .context("containerd config: imports is not an array")?;
    if imports
        .iter()
        .any(|v| v.as_str().is_some_and(|e| import_covers(e, dropin_path)))
    {
        return Ok(text.to_string());
    }
    imports.push(dropin_path);
    Ok(doc.to_string())
}

/// `config.toml` without the exact `dropin_path` import (and without `imports` if that left it
/// empty).
pub fn import_out(text: &str, dropin_path: &str) -> Result<String> {
    let mut doc: DocumentMut = text
        .parse()
        .context("containerd config is not valid TOML")?;
    let Some(imports) = doc.get_mut("imports").and_then(Item::as_array_mut) else {
        return Ok(text.to_string());
    };
    let before = imports.len();
    imports.retain(|v| v.as_str() != Some(dropin_path));
    if imports.len() == before {
        return Ok(text.to_string());
    }
    if imports.is_empty() {
        doc.remove("imports");
    }
    Ok(doc.to_string())
}

/// Whether two TOML texts mean the same (comments and layout aside).
pub fn same_toml(a: &str, b: &str) -> bool {
    match (a.parse::<toml::Table>(), b.parse::<toml::Table>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The handlers registered (with Safehouse's runtime type) in a config text, by name, under
/// either CRI plugin id.
pub fn registered_handlers(text: &str) -> Result<Vec<(String, Option<String>)>> {
    let doc: toml::Table = text
        .parse()
        .context("containerd config is not valid TOML")?;
    let mut out = Vec::new();
    for plugin in [CRI_V2, CRI_V3] {
        let runtimes = doc
            .get("plugins")
            .and_then(|p| p.get(plugin))
            .and_then(|p| p.get("containerd"))
            .and_then(|c| c.get("runtimes"))
            .and_then(|r| r.as_table());
        for (name, r) in runtimes.into_iter().flatten() {
            if r.get("runtime_type").and_then(|t| t.as_str()) == Some(RUNTIME_TYPE) {
                let cfg = r
                    .get("options")
                    .and_then(|o| o.get("ConfigPath"))
                    .and_then(|c| c.as_str())
                    .map(String::from);
                out.push((name.clone(), cfg));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handlers() -> Vec<Handler> {
        vec![
            Handler {
                name: "safehouse".into(),
                config_path: "/etc/safehouse/config.toml".into(),
            },
            Handler {
                name: "safehouse-net".into(),
                config_path: "/etc/safehouse/config-net.toml".into(),
            },
        ]
    }

    /// Debian's containerd 1.6 ships this (everything commented but the version).
    const DEBIAN_16: &str =
        "# containerd config\nversion = 2\n\n# root = \"/var/lib/containerd\"\n";

    /// An operator's 1.7 config with CRI settings and a runtime of their own.
    const OPERATOR_17: &str = r#"version = 2
root = "/data/containerd"  # on the big disk

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.local/pause:3.9"
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = true
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
        runtime_type = "io.containerd.kata.v2"
"#;

    /// containerd 2.x's own `config default` shape (version 3).
    const V2X: &str = r#"version = 3
root = "/var/lib/containerd"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
"#;

    #[test]
    fn edit_is_idempotent_keeps_the_operators_and_reverses() {
        for original in [DEBIAN_16, OPERATOR_17, ""] {
            let once = edit_in(original, &handlers()).expect("edit in");
            assert_ne!(once, original);
            let twice = edit_in(&once, &handlers()).expect("edit in again");
            assert_eq!(once, twice, "second install must change nothing");
            let reg = registered_handlers(&once).expect("parse");
            assert_eq!(
                reg,
                vec![
                    (
                        "safehouse".into(),
                        Some("/etc/safehouse/config.toml".into())
                    ),
                    (
                        "safehouse-net".into(),
                        Some("/etc/safehouse/config-net.toml".into())
                    )
                ]
            );
            let back = edit_out(&once, &handlers()).expect("edit out");
            if original.is_empty() {
                assert!(same_toml(&back, "version = 2"), "{back}");
            } else {
                assert_eq!(back, original, "uninstall must give the original text back");
            }
            assert_eq!(edit_out(&back, &handlers()).expect("again"), back);
        }
        // A config naming no runtime gets runc named too (1.x would drop its built-in one).
        let debian = edit_in(DEBIAN_16, &handlers()).expect("edit in");
        let v: toml::Table = debian.parse().expect("toml");
        assert_eq!(
            v["plugins"][CRI_V2]["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2"),
            "{debian}"
        );
        let once = edit_in(OPERATOR_17, &handlers()).expect("edit in");
        assert!(
            !once.contains(RUNC_MARK),
            "the operator's runc is not touched"
        );
        let v: toml::Table = once.parse().expect("toml");
        let cri = &v["plugins"][CRI_V2];
        assert_eq!(
            cri["sandbox_image"].as_str(),
            Some("registry.local/pause:3.9")
        );
        assert_eq!(
            cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
            Some(true)
        );
        assert!(cri["containerd"]["runtimes"].get("kata").is_some());
        assert!(once.contains("# on the big disk"), "comments survive");
    }

    #[test]
    fn an_operators_handler_of_the_same_name_is_not_overwritten() {
        let clash = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.safehouse]\nruntime_type = \"io.containerd.runc.v2\"\n";
        let e = edit_in(clash, &handlers()).expect_err("clash").to_string();
        assert!(e.contains("not overwriting"), "{e}");
        // And uninstall leaves it alone.
        assert_eq!(edit_out(clash, &handlers()).expect("out"), clash);
    }

    #[test]
    fn an_operators_tweaks_to_our_handler_survive_reinstall() {
        let once = edit_in(DEBIAN_16, &handlers()).expect("in");
        let tweaked = once.replace(
            "container_annotations = [\"safehouse.dev/*\"]",
            "container_annotations = [\"safehouse.dev/*\", \"example.com/*\"]",
        );
        assert_ne!(tweaked, once);
        assert_eq!(edit_in(&tweaked, &handlers()).expect("again"), tweaked);
    }

    #[test]
    fn version_3_uses_a_dropin_and_imports() {
        assert_eq!(config_version(V2X).expect("v"), 3);
        assert!(edit_in(V2X, &handlers()).is_err());
        let path = "/etc/containerd/conf.d/safehouse.toml";
        let with = import_in(V2X, path).expect("import");
        assert_eq!(import_in(&with, path).expect("again"), with);
        let v: toml::Table = with.parse().expect("toml");
        assert_eq!(v["imports"].as_array().map(|a| a.len()), Some(1));
        assert_eq!(import_out(&with, path).expect("out"), V2X);
        // A glob already covering conf.d: nothing to add.
        let globbed = format!("imports = [\"/etc/containerd/conf.d/*.toml\"]\n{V2X}");
        assert_eq!(import_in(&globbed, path).expect("glob"), globbed);
        let d = dropin(&handlers()).expect("dropin");
        assert_eq!(config_version(&d).expect("v"), 3);
        let reg = registered_handlers(&d).expect("parse");
        assert_eq!(reg.len(), 2);
    }

    #[test]
    fn a_layout_it_cannot_edit_is_an_error_not_a_clobber() {
        let inline = "version = 2\nplugins = { \"io.containerd.grpc.v1.cri\" = { sandbox_image = \"x\" } }\n";
        let e = edit_in(inline, &handlers())
            .expect_err("inline")
            .to_string();
        assert!(e.contains("not a plain table"), "{e}");
        assert!(edit_in("version = [", &handlers()).is_err());
    }
}
