//! Decoding container/start and the sentry/* points (message types 1-5, 35).

use protobuf::Message;

use super::fields::{argv, event_from_context, process_mut, text};
use super::DecodeError;
use crate::event::{Action, AuditEvent, BinaryInfo, Category, ExitInfo};
use crate::names::message_type as mt;
use crate::proto::container::ContainerStart;
use crate::proto::sentry::{ContextOnly, SentryClone, SentryExecve, SentryExit};

/// container/start: the container's first process, with its argv and cwd.
/// The environment is never recorded (it holds secrets).
pub fn container_start(payload: &[u8]) -> Result<AuditEvent, DecodeError> {
    let mut m = parse::<ContainerStart>(mt::CONTAINER_START, payload)?;
    let mut ev = event_from_context(
        Category::Process,
        Action::Exec,
        "container/start",
        std::mem::take(&mut m.context_data),
    );
    if ev.container_id.is_none() {
        ev.container_id = text(&m.id);
    }
    let (args, truncated) = argv(&m.args);
    let p = process_mut(&mut ev);
    if let Some(cwd) = text(&m.cwd) {
        p.cwd = Some(cwd);
    }
    if let Some(first) = args.first() {
        p.binary = Some(BinaryInfo {
            path: first.clone(),
            ..BinaryInfo::default()
        });
    }
    p.argv = Some(args);
    p.argv_truncated = truncated.then_some(true);
    p.loader_env = loader_env(&m.env);
    Ok(ev)
}

/// The loader variables of an exec's environment (`NAME=value` entries), values capped.
fn loader_env(env: &[Vec<u8>]) -> Option<std::collections::BTreeMap<String, String>> {
    const MAX_VALUE: usize = 4096;
    let found: std::collections::BTreeMap<String, String> = env
        .iter()
        .filter_map(|entry| {
            let eq = entry.iter().position(|&b| b == b'=')?;
            let name = std::str::from_utf8(&entry[..eq]).ok()?;
            if !crate::event::LOADER_VARIABLES.contains(&name) {
                return None;
            }
            let value = &entry[eq + 1..];
            let value = String::from_utf8_lossy(&value[..value.len().min(MAX_VALUE)]);
            Some((name.to_owned(), value.into_owned()))
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// sentry/clone: a new task; the new ids go into `detail`.
pub fn clone(payload: &[u8]) -> Result<AuditEvent, DecodeError> {
    let mut m = parse::<SentryClone>(mt::SENTRY_CLONE, payload)?;
    let mut ev = event_from_context(
        Category::Process,
        Action::Clone,
        "sentry/clone",
        std::mem::take(&mut m.context_data),
    );
    let mut detail = std::collections::BTreeMap::new();
    detail.insert("child_pid".to_owned(), m.created_thread_group_id.into());
    detail.insert("child_tid".to_owned(), m.created_thread_id.into());
    detail.insert("clone_flags".to_owned(), m.flags.into());
    ev.detail = Some(detail);
    Ok(ev)
}

/// sentry/execve: a successful exec with the binary's path, argv and (when
/// `binary_info` was requested) its mode, owner and sha256.
pub fn execve(payload: &[u8]) -> Result<AuditEvent, DecodeError> {
    let mut m = parse::<SentryExecve>(mt::SENTRY_EXEC, payload)?;
    let mut ev = event_from_context(
        Category::Process,
        Action::Exec,
        "sentry/execve",
        std::mem::take(&mut m.context_data),
    );
    let (args, truncated) = argv(&m.argv);
    let has_info = m.binary_mode != 0 || !m.binary_sha256.is_empty();
    let p = process_mut(&mut ev);
    p.binary = text(&m.binary_path).map(|path| BinaryInfo {
        gid: has_info.then_some(m.binary_gid),
        mode: has_info.then_some(m.binary_mode),
        path,
        sha256: (!m.binary_sha256.is_empty()).then(|| hex::encode(&m.binary_sha256)),
        uid: has_info.then_some(m.binary_uid),
    });
    p.argv = Some(args);
    p.argv_truncated = truncated.then_some(true);
    p.loader_env = loader_env(&m.env);
    Ok(ev)
}

/// sentry/task_exit and sentry/exit_notify_parent, with the wait status decoded.
pub fn exit(message_type: u16, payload: &[u8]) -> Result<AuditEvent, DecodeError> {
    let mut m = parse::<SentryExit>(message_type, payload)?;
    let point = if message_type == mt::SENTRY_TASK_EXIT {
        "sentry/task_exit"
    } else {
        "sentry/exit_notify_parent"
    };
    let mut ev = event_from_context(
        Category::Process,
        Action::Exit,
        point,
        std::mem::take(&mut m.context_data),
    );
    ev.exit = Some(wait_status(m.exit_status));
    Ok(ev)
}

/// Decodes a Linux wait status: `code << 8` for an exit, the signal in the
/// low 7 bits (0x80 for a core dump) for a kill.
pub fn wait_status(status: i32) -> ExitInfo {
    let sig = status & 0x7f;
    if sig == 0 {
        ExitInfo {
            code: Some((status >> 8) & 0xff),
            status: Some(status),
            ..ExitInfo::default()
        }
    } else {
        ExitInfo {
            core_dumped: (status & 0x80 != 0).then_some(true),
            signal: Some(sig),
            status: Some(status),
            ..ExitInfo::default()
        }
    }
}

/// Newer message types whose layout this build only knows up to the context
/// (35 sentry/mmap; see `syscall::context_only` for 36-38).
pub fn context_only(
    message_type: u16,
    category: Category,
    action: Action,
    point: &'static str,
    payload: &[u8],
) -> Result<AuditEvent, DecodeError> {
    let mut m = parse::<ContextOnly>(message_type, payload)?;
    Ok(event_from_context(
        category,
        action,
        point,
        std::mem::take(&mut m.context_data),
    ))
}

/// Parses a protobuf payload, mapping failure to a typed error.
pub fn parse<M: Message>(message_type: u16, payload: &[u8]) -> Result<M, DecodeError> {
    M::parse_from_bytes(payload).map_err(|e| DecodeError::Protobuf {
        message_type,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(wait_status(7 << 8).code, Some(7));
        let killed = wait_status(9);
        assert_eq!((killed.signal, killed.code), (Some(9), None));
        assert_eq!(wait_status(0x80 | 11).core_dumped, Some(true));
    }
}
