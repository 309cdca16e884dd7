//! Audit events as OCSF 1.1 events, for SIEMs (`safehouse audit follow --format ocsf`).
//!
//! | Safehouse | OCSF class (`class_uid`) | `activity_id` |
//! |---|---|---|
//! | `process`/`exec`, `exit` | Process Activity (1007) | 1 Launch, 2 Terminate |
//! | `file`/`open`, `read`, `write`, `close` | File System Activity (1001) | 14 Open, 2 Read, 3 Update, 99 Other |
//! | `network`/`connect`, `accept`, `listen` | Network Activity (4001) | 1 Open, 1 Open, 7 Listen |
//! | anything else (other syscalls, lifecycle, policy, audit) | its category's class, or Base Event (0) | 99 Other |
//!
//! `type_uid` is `class_uid * 100 + activity_id`, `time` is milliseconds since the epoch, and
//! `metadata.uid` is the event's `hash`, `metadata.sequence` its `seq`. The sandbox, container
//! and chain fields go into `unmapped`, so nothing is lost. Policy violations get severity 4
//! (High), drops 2 (Low), the rest 1 (Informational).

use serde_json::{json, Map, Value};

use crate::timestamp::Timestamp;

/// The OCSF version these events follow.
pub const OCSF_VERSION: &str = "1.1.0";

/// The OCSF event for one JSON event line, or None if the line is not an event.
pub fn to_ocsf(line: &str) -> Option<Value> {
    let e: Value = serde_json::from_str(line).ok()?;
    let category = e.get("category")?.as_str()?;
    let action = e.get("action")?.as_str()?;
    let (class_uid, category_uid, activity_id, class_name): (u64, u64, u64, &str) =
        match (category, action) {
            ("process", "exec") => (1007, 1, 1, "Process Activity"),
            ("process", "exit") => (1007, 1, 2, "Process Activity"),
            ("process", _) => (1007, 1, 99, "Process Activity"),
            ("file", "open") => (1001, 1, 14, "File System Activity"),
            ("file", "read") => (1001, 1, 2, "File System Activity"),
            ("file", "write") => (1001, 1, 3, "File System Activity"),
            ("file", _) => (1001, 1, 99, "File System Activity"),
            ("network", "connect" | "accept") => (4001, 4, 1, "Network Activity"),
            ("network", "listen") => (4001, 4, 7, "Network Activity"),
            ("network", _) => (4001, 4, 99, "Network Activity"),
            _ => (0, 0, 99, "Base Event"),
        };
    let time_ms = e
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| Timestamp::parse_rfc3339(t).ok())
        .map_or(0, |t| t.unix_nanos().div_euclid(1_000_000));
    let severity_id = match (category, action) {
        ("policy", "violation") => 4,
        ("audit", "dropped") => 2,
        _ => 1,
    };
    let mut out = Map::new();
    out.insert("activity_id".into(), json!(activity_id));
    out.insert("activity_name".into(), json!(action));
    out.insert("category_uid".into(), json!(category_uid));
    out.insert("class_name".into(), json!(class_name));
    out.insert("class_uid".into(), json!(class_uid));
    out.insert("severity_id".into(), json!(severity_id));
    out.insert("time".into(), json!(time_ms));
    out.insert("type_uid".into(), json!(class_uid * 100 + activity_id));
    out.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "product": {"name": "Safehouse", "vendor_name": "Safehouse"},
            "uid": e.get("hash"),
            "sequence": e.get("seq"),
            "original_time": e.get("time"),
            "log_name": "safehouse-audit",
        }),
    );
    let p = &e["process"];
    if p.is_object() {
        let mut process = Map::new();
        for (from, to) in [
            ("pid", "pid"),
            ("tid", "tid"),
            ("name", "name"),
            ("cwd", "cwd"),
        ] {
            if !p[from].is_null() {
                process.insert(to.into(), p[from].clone());
            }
        }
        if let Some(argv) = p["argv"].as_array() {
            let words: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
            process.insert("cmd_line".into(), json!(words.join(" ")));
        }
        if let Some(path) = p["binary"]["path"].as_str() {
            process.insert("file".into(), json!({"path": path, "name": basename(path)}));
        }
        if !p["uid"].is_null() {
            process.insert("user".into(), json!({"uid": p["uid"].to_string()}));
        }
        let process = Value::Object(process);
        out.insert("actor".into(), json!({"process": process.clone()}));
        if class_uid == 1007 {
            out.insert("process".into(), process);
        }
    }
    if let Some(path) = e["file"]["path"].as_str() {
        out.insert(
            "file".into(),
            json!({"path": path, "name": basename(path), "type_id": 0}),
        );
    }
    if let Some(ip) = e["network"]["ip"].as_str() {
        out.insert(
            "dst_endpoint".into(),
            json!({"ip": ip, "port": e["network"]["port"]}),
        );
    }
    if !e["result"].is_null() {
        let failed = !e["result"]["errno"].is_null();
        out.insert("status_id".into(), json!(if failed { 2 } else { 1 }));
        out.insert(
            "status".into(),
            json!(if failed { "Failure" } else { "Success" }),
        );
        if let Some(code) = e["result"]["errno_name"].as_str() {
            out.insert("status_code".into(), json!(code));
        }
    }
    if let Some(m) = e["message"].as_str() {
        out.insert("message".into(), json!(m));
    } else if let Some(r) = e["violation"]["reason"].as_str() {
        out.insert("message".into(), json!(r));
    }
    let mut unmapped = Map::new();
    for k in [
        "sandbox_id",
        "container_id",
        "namespace",
        "pod",
        "policy",
        "point",
        "violation",
        "dropped",
        "exit",
        "actor",
        "detail",
        "syscall",
        "prev_hash",
    ] {
        if let Some(v) = e.get(k) {
            unmapped.insert(k.into(), v.clone());
        }
    }
    out.insert("unmapped".into(), Value::Object(unmapped));
    Some(Value::Object(out))
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ocsf(line: &str) -> Value {
        to_ocsf(line).unwrap_or(Value::Null)
    }

    #[test]
    fn an_exec_is_a_process_launch() {
        let v = ocsf(
            r#"{"action":"exec","category":"process","process":{"argv":["git","commit"],"binary":{"path":"/usr/bin/git"},"pid":7,"uid":1000},"sandbox_id":"sb","seq":3,"time":"2026-11-27T02:28:47.206834180Z","hash":"ab"}"#,
        );
        assert_eq!(
            (v["class_uid"].as_u64(), v["activity_id"].as_u64()),
            (Some(1007), Some(1))
        );
        assert_eq!(v["type_uid"], 100701);
        assert_eq!(v["time"], 1_795_746_527_206_i64);
        assert_eq!(v["process"]["cmd_line"], "git commit");
        assert_eq!(v["process"]["file"]["name"], "git");
        assert_eq!(v["metadata"]["uid"], "ab");
        assert_eq!(v["metadata"]["sequence"], 3);
        assert_eq!(v["unmapped"]["sandbox_id"], "sb");
    }

    #[test]
    fn a_failed_open_is_a_file_open_with_its_errno() {
        let v = ocsf(
            r#"{"action":"open","category":"file","file":{"path":"/etc/shadow"},"result":{"errno":13,"errno_name":"EACCES","retval":-13},"sandbox_id":"sb","seq":1,"time":"2026-11-27T02:28:47Z"}"#,
        );
        assert_eq!(
            (v["class_uid"].as_u64(), v["type_uid"].as_u64()),
            (Some(1001), Some(100114))
        );
        assert_eq!(
            (v["file"]["name"].as_str(), v["status"].as_str()),
            (Some("shadow"), Some("Failure"))
        );
        assert_eq!(v["status_code"], "EACCES");
    }

    #[test]
    fn a_connect_has_its_destination_and_a_violation_is_high() {
        let v = ocsf(
            r#"{"action":"connect","category":"network","network":{"ip":"10.0.0.1","port":443},"sandbox_id":"sb","seq":1,"time":"2026-11-27T02:28:47Z"}"#,
        );
        assert_eq!(
            (v["class_uid"].as_u64(), v["activity_id"].as_u64()),
            (Some(4001), Some(1))
        );
        assert_eq!(v["dst_endpoint"], json!({"ip": "10.0.0.1", "port": 443}));
        let v = ocsf(
            r#"{"action":"violation","category":"policy","violation":{"enforcement":"kill","reason":"exec of /bin/curl","rule":"process.tools"},"sandbox_id":"sb","seq":2,"time":"2026-11-27T02:28:47Z"}"#,
        );
        assert_eq!(
            (v["class_uid"].as_u64(), v["severity_id"].as_u64()),
            (Some(0), Some(4))
        );
        assert_eq!(v["message"], "exec of /bin/curl");
        assert_eq!(v["unmapped"]["violation"]["rule"], "process.tools");
        assert!(to_ocsf("not json").is_none());
    }
}
