//! The trace session runsc is started with (`--pod-init-config=FILE`): which
//! gVisor points to enable for the requested categories, with which fields,
//! sent to Safehouse's `remote` sink at a per-sandbox socket.
//!
//! runsc decodes this file with unknown fields disallowed, so only the keys of
//! its `InitConfig{trace_session: SessionConfig}` appear: `name` (must be
//! "Default"), `points[{name, optional_fields, context_fields}]`,
//! `ignore_missing`, `sinks[{name, config, ignore_setup_error}]`. Points and
//! fields are filtered against what the installed runsc supports (its
//! `runsc trace metadata` output, or [`TraceMetadata::baseline`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

/// A family of events an audit plan can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TraceCategory {
    /// Container start, every successful exec, every task exit.
    Process,
    /// open/openat/creat (with flags: writes show as write access) and chroot.
    File,
    /// Every read and write call (noisy; opt-in).
    FileIo,
    /// socket, connect, bind, accept, listen.
    Network,
}

impl TraceCategory {
    /// Parses `process`, `file`, `file_io` or `network`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "process" => Self::Process,
            "file" => Self::File,
            "file_io" => Self::FileIo,
            "network" => Self::Network,
            _ => return None,
        })
    }

    /// The gVisor points for this category, with the optional fields wanted.
    fn points(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Self::Process => &[
                ("container/start", &[]),
                ("sentry/execve", &["binary_info"]),
                ("sentry/task_exit", &[]),
            ],
            Self::File => &[
                ("syscall/open/exit", &[]),
                ("syscall/openat/exit", &["fd_path"]),
                ("syscall/creat/exit", &[]),
                ("syscall/chroot/exit", &[]),
            ],
            Self::FileIo => &[
                ("syscall/read/exit", &["fd_path"]),
                ("syscall/pread64/exit", &["fd_path"]),
                ("syscall/readv/exit", &["fd_path"]),
                ("syscall/write/exit", &["fd_path"]),
                ("syscall/pwrite64/exit", &["fd_path"]),
                ("syscall/writev/exit", &["fd_path"]),
            ],
            Self::Network => &[
                ("syscall/socket/exit", &[]),
                ("syscall/connect/exit", &["fd_path"]),
                ("syscall/bind/exit", &["fd_path"]),
                ("syscall/accept/exit", &["fd_path"]),
                ("syscall/accept4/exit", &["fd_path"]),
                ("syscall/listen/exit", &[]),
            ],
        }
    }
}

/// Context fields Safehouse asks for on every point (when supported).
const CONTEXT_FIELDS: &[&str] = &[
    "time",
    "thread_id",
    "group_id",
    "container_id",
    "credentials",
    "cwd",
    "process_name",
];

/// What one point supports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PointMeta {
    /// Optional fields it can collect.
    pub optional_fields: Vec<String>,
    /// Context fields it can collect.
    pub context_fields: Vec<String>,
}

/// The points an installed runsc supports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceMetadata {
    /// Points by name.
    pub points: BTreeMap<String, PointMeta>,
}

/// Why a trace session could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    /// `runsc trace metadata` output had no point lines.
    #[error("no points found in `runsc trace metadata` output")]
    NoPoints,
    /// No requested point is supported by this runsc.
    #[error("this runsc supports none of the requested points")]
    NothingToTrace,
    /// The endpoint path is not valid UTF-8 (runsc reads it from JSON).
    #[error("sink socket path is not UTF-8: {0}")]
    BadEndpoint(String),
}

impl TraceMetadata {
    /// Parses the output of `runsc trace metadata`
    /// (`Name: P, optional fields: [a|b], context fields: [c|d]` per point).
    pub fn parse(text: &str) -> Result<Self, SessionError> {
        let mut points = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("Name: ") else {
                continue;
            };
            let (name, fields) = rest.split_once(',').unwrap_or((rest, ""));
            let list = |key: &str| -> Vec<String> {
                fields
                    .split_once(key)
                    .and_then(|(_, after)| after.split_once('['))
                    .and_then(|(_, inner)| inner.split_once(']'))
                    .map(|(inner, _)| {
                        inner
                            .split('|')
                            .filter(|f| !f.is_empty())
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            points.insert(
                name.trim().to_owned(),
                PointMeta {
                    optional_fields: list("optional fields:"),
                    context_fields: list("context fields:"),
                },
            );
        }
        if points.is_empty() {
            return Err(SessionError::NoPoints);
        }
        Ok(Self { points })
    }

    /// What both supported runsc versions (20221219 and 20240729) offer for
    /// the points Safehouse uses, for when `runsc trace metadata` was not run.
    pub fn baseline() -> Self {
        let all_context = [
            "time",
            "thread_id",
            "task_start_time",
            "group_id",
            "thread_group_start_time",
            "container_id",
            "credentials",
            "cwd",
            "process_name",
        ];
        let mut points = BTreeMap::new();
        for category in [
            TraceCategory::Process,
            TraceCategory::File,
            TraceCategory::FileIo,
            TraceCategory::Network,
        ] {
            for &(name, optional) in category.points() {
                // listen points appeared after 20240729.
                if name.starts_with("syscall/listen/") {
                    continue;
                }
                let optional = match name {
                    "container/start" => vec!["env".to_owned()],
                    _ => optional.iter().map(|s| (*s).to_owned()).collect(),
                };
                points.insert(
                    name.to_owned(),
                    PointMeta {
                        optional_fields: optional,
                        context_fields: all_context.iter().map(|s| (*s).to_owned()).collect(),
                    },
                );
            }
        }
        Self { points }
    }
}

/// runsc's `InitConfig`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PodInitConfig {
    /// The one session runsc allows.
    pub trace_session: TraceSession,
}

/// runsc's `SessionConfig`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TraceSession {
    /// Always "Default" (the only name runsc accepts).
    pub name: String,
    /// Enabled points.
    pub points: Vec<TracePoint>,
    /// Sinks (one `remote`).
    pub sinks: Vec<TraceSink>,
}

/// runsc's `PointConfig`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TracePoint {
    /// Point name.
    pub name: String,
    /// Optional fields to collect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub optional_fields: Vec<String>,
    /// Context fields to collect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub context_fields: Vec<String>,
}

/// runsc's `SinkConfig`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TraceSink {
    /// `remote`.
    pub name: String,
    /// `{"endpoint": PATH, "retries": N}`.
    pub config: BTreeMap<String, serde_json::Value>,
    /// If true a sink that cannot connect does not stop the sandbox.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ignore_setup_error: bool,
}

/// Knobs of the generated session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOptions {
    /// Ask gVisor for the executed binary's mode and owner (`binary_info`).
    /// gVisor 20221219 and 20240729 never fill its sha256 field.
    pub binary_info: bool,
    /// How often the Sentry retries a full socket before counting a drop
    /// (gVisor's default is 0: drop at once). Retries back off from 25 µs to
    /// 10 ms, so 16 bounds the stall per point to about 85 ms: a busy node
    /// slows the sandbox a little instead of losing its events (8 still lost
    /// 1 event in 300,000 in the openat storm on a loaded 2-core machine).
    pub retries: u32,
    /// Start the sandbox even if the sink is unreachable (fail-open). Off by
    /// default: no audit, no sandbox.
    pub ignore_setup_error: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            binary_info: true,
            retries: 16,
            ignore_setup_error: false,
        }
    }
}

impl PodInitConfig {
    /// The session for `categories`, sending to the socket at `endpoint`,
    /// limited to what `metadata` says this runsc supports.
    pub fn new(
        categories: &[TraceCategory],
        endpoint: &Path,
        metadata: &TraceMetadata,
        options: &SessionOptions,
    ) -> Result<Self, SessionError> {
        let endpoint = endpoint
            .to_str()
            .ok_or_else(|| SessionError::BadEndpoint(endpoint.display().to_string()))?;
        let mut cats = categories.to_vec();
        cats.sort();
        cats.dedup();
        let mut points = Vec::new();
        for cat in cats {
            for &(name, optional) in cat.points() {
                let Some(meta) = metadata.points.get(name) else {
                    continue;
                };
                let optional_fields = optional
                    .iter()
                    .filter(|f| **f != "binary_info" || options.binary_info)
                    .filter(|f| meta.optional_fields.iter().any(|m| m == *f))
                    .map(|f| (*f).to_owned())
                    .collect();
                let context_fields = CONTEXT_FIELDS
                    .iter()
                    .filter(|f| meta.context_fields.iter().any(|m| m == *f))
                    .map(|f| (*f).to_owned())
                    .collect();
                points.push(TracePoint {
                    name: name.to_owned(),
                    optional_fields,
                    context_fields,
                });
            }
        }
        if points.is_empty() {
            return Err(SessionError::NothingToTrace);
        }
        let mut config = BTreeMap::new();
        config.insert("endpoint".to_owned(), endpoint.into());
        if options.retries > 0 {
            config.insert("retries".to_owned(), options.retries.into());
        }
        Ok(Self {
            trace_session: TraceSession {
                name: "Default".to_owned(),
                points,
                sinks: vec![TraceSink {
                    name: "remote".to_owned(),
                    config,
                    ignore_setup_error: options.ignore_setup_error,
                }],
            },
        })
    }

    /// The JSON runsc reads.
    pub fn to_json(&self) -> String {
        // A tree of strings, numbers and bools always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "POINTS (3)\n\
Name: container/start, optional fields: [env], context fields: [time|thread_id|container_id|cwd]\n\
Name: sentry/exit_notify_parent, optional fields: [], context fields: [time|container_id]\n\
Name: syscall/openat/exit, optional fields: [fd_path], context fields: [time|container_id|credentials]\n\
\nSINKS (2)\nName: null\nName: remote\n";

    #[test]
    fn parses_runsc_trace_metadata() {
        let m = TraceMetadata::parse(SAMPLE).unwrap_or_default();
        assert_eq!(m.points.len(), 5);
        let open = m
            .points
            .get("syscall/openat/exit")
            .cloned()
            .unwrap_or_default();
        assert_eq!(open.optional_fields, ["fd_path"]);
        assert_eq!(open.context_fields, ["time", "container_id", "credentials"]);
        assert_eq!(TraceMetadata::parse("nothing"), Err(SessionError::NoPoints));
    }

    #[test]
    fn only_supported_points_and_fields_are_requested() {
        let m = TraceMetadata::parse(SAMPLE).unwrap_or_default();
        let cfg = PodInitConfig::new(
            &[TraceCategory::File, TraceCategory::Process],
            Path::new("/run/sb/trace.sock"),
            &m,
            &SessionOptions::default(),
        );
        let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = cfg
            .trace_session
            .points
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["container/start", "syscall/openat/exit"]);
        assert_eq!(
            cfg.trace_session.points[0].context_fields,
            ["time", "thread_id", "container_id", "cwd"]
        );
        let json: serde_json::Value = serde_json::from_str(&cfg.to_json()).unwrap_or_default();
        assert_eq!(json["trace_session"]["name"], "Default");
        assert_eq!(json["trace_session"]["sinks"][0]["name"], "remote");
        assert_eq!(
            json["trace_session"]["sinks"][0]["config"]["endpoint"],
            "/run/sb/trace.sock"
        );
        assert!(json["trace_session"]["sinks"][0]
            .get("ignore_setup_error")
            .is_none());
        assert!(!cfg.to_json().contains("\"env\""), "env is never requested");
        let none = PodInitConfig::new(
            &[TraceCategory::Network],
            Path::new("/s"),
            &m,
            &SessionOptions::default(),
        );
        assert_eq!(none, Err(SessionError::NothingToTrace));
    }

    #[test]
    fn baseline_matches_the_installed_runsc_when_present() {
        let Ok(out) = std::process::Command::new("runsc")
            .args(["trace", "metadata"])
            .output()
        else {
            eprintln!("skipped: runsc not installed");
            return;
        };
        let Ok(installed) = TraceMetadata::parse(&String::from_utf8_lossy(&out.stdout)) else {
            eprintln!("skipped: runsc trace metadata printed no points");
            return;
        };
        for (name, meta) in TraceMetadata::baseline().points {
            let Some(have) = installed.points.get(&name) else {
                panic!("baseline point {name} missing from installed runsc");
            };
            for f in &meta.context_fields {
                assert!(have.context_fields.contains(f), "{name}: {f}");
            }
        }
    }
}
