//! Turning protobuf fields from the Sentry into event fields: lossy UTF-8 with
//! size caps, the context (process, time, container), syscall results, and
//! path resolution.

use std::borrow::Cow;

use protobuf::MessageField;

use crate::event::{Action, AuditEvent, Category, ProcessInfo, SyscallResult};
use crate::names::{errno_name, syscall_point_name};
use crate::proto::common::ContextData;
use crate::proto::syscall::SyscallExit;
use crate::timestamp::Timestamp;

/// Longest string field kept (PATH_MAX); longer ones are cut and marked.
pub const MAX_TEXT: usize = 4096;
/// Most argv entries kept.
pub const MAX_ARGS: usize = 256;
/// Most argv bytes kept in total.
pub const MAX_ARGV_BYTES: usize = 32 * 1024;

/// `AT_FDCWD`: "relative to the current directory".
const AT_FDCWD: i64 = -100;

/// Lossy UTF-8 of at most [`MAX_TEXT`] bytes; `None` when empty.
pub fn text(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return None;
    }
    Some(capped(bytes, MAX_TEXT))
}

/// [`text`] of a field the decoder owns: valid UTF-8 within [`MAX_TEXT`] becomes the
/// string without a copy.
pub fn text_owned(bytes: &mut Vec<u8>) -> Option<String> {
    if bytes.len() <= MAX_TEXT {
        match String::from_utf8(std::mem::take(bytes)) {
            Ok(s) => return (!s.is_empty()).then_some(s),
            Err(e) => *bytes = e.into_bytes(),
        }
    }
    text(bytes)
}

/// Lossy UTF-8 of at most `cap` bytes; a cut string ends with `...[truncated]`.
fn capped(bytes: &[u8], cap: usize) -> String {
    if bytes.len() <= cap {
        // Valid UTF-8 (nearly every field) takes the fast check, not the lossy scan.
        return match std::str::from_utf8(bytes) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        };
    }
    let mut s = String::from_utf8_lossy(&bytes[..cap]).into_owned();
    s.push_str("...[truncated]");
    s
}

/// argv with entry-count and byte caps; the flag says whether anything was cut.
pub fn argv(args: &[Vec<u8>]) -> (Vec<String>, bool) {
    let mut out = Vec::with_capacity(args.len().min(MAX_ARGS));
    let mut budget = MAX_ARGV_BYTES;
    let mut truncated = args.len() > MAX_ARGS;
    for arg in args.iter().take(MAX_ARGS) {
        if budget == 0 {
            truncated = true;
            break;
        }
        let cap = budget.min(MAX_TEXT);
        if arg.len() > cap {
            truncated = true;
        }
        let s = capped(arg, cap);
        budget = budget.saturating_sub(arg.len().min(cap));
        out.push(s);
    }
    (out, truncated)
}

/// A new event with the context's time, container and process filled in.
pub fn event_from_context(
    category: Category,
    action: Action,
    point: impl Into<Cow<'static, str>>,
    ctx: MessageField<ContextData>,
) -> AuditEvent {
    let mut event = AuditEvent {
        category,
        action,
        point: Some(point.into()),
        ..AuditEvent::default()
    };
    let Some(mut ctx) = ctx.0 else {
        event.time = Timestamp::now();
        return event;
    };
    event.time = if ctx.time_ns != 0 {
        Timestamp::from_unix_nanos(ctx.time_ns)
    } else {
        Timestamp::now()
    };
    event.container_id = text_owned(&mut ctx.container_id);
    let creds = ctx.credentials.as_ref();
    let process = ProcessInfo {
        cwd: text_owned(&mut ctx.cwd),
        gid: creds.map(|c| c.effective_gid),
        name: text_owned(&mut ctx.process_name),
        pid: nonzero(ctx.thread_group_id),
        tid: nonzero(ctx.thread_id),
        uid: creds.map(|c| c.effective_uid),
        ..ProcessInfo::default()
    };
    if process != ProcessInfo::default() {
        event.process = Some(process);
    }
    event
}

/// The process part of an event, created empty if missing.
pub fn process_mut(event: &mut AuditEvent) -> &mut ProcessInfo {
    event.process.get_or_insert_with(ProcessInfo::default)
}

fn nonzero(v: i32) -> Option<i32> {
    (v != 0).then_some(v)
}

/// The syscall result, when the point is an /exit point.
pub fn result(exit: &MessageField<SyscallExit>) -> Option<SyscallResult> {
    exit.as_ref().map(|e| SyscallResult {
        errno: (e.errorno != 0).then_some(e.errorno),
        errno_name: errno_name(e.errorno).map(str::to_owned),
        retval: e.result,
    })
}

/// `syscall/<name>/<enter|exit>`: from the names table without allocating, else named
/// `default_name` (a syscall the table does not know).
pub fn syscall_point(
    sysno: u64,
    default_name: &str,
    exit: &MessageField<SyscallExit>,
) -> Cow<'static, str> {
    if let Some(name) = syscall_point_name(sysno, exit.is_some()) {
        return Cow::Borrowed(name);
    }
    let phase = if exit.is_some() { "exit" } else { "enter" };
    Cow::Owned(format!("syscall/{default_name}/{phase}"))
}

/// Resolves `pathname` the way the kernel would start to: absolute as is,
/// relative against the directory fd's path or the cwd. Returns (path, raw
/// path when it differs).
pub fn resolve_path(
    pathname: &[u8],
    dirfd: i64,
    dirfd_path: &[u8],
    cwd: Option<&str>,
) -> (Option<String>, Option<String>) {
    let Some(raw) = text(pathname) else {
        return (None, None);
    };
    if raw.starts_with('/') {
        return (Some(raw), None);
    }
    let base = if dirfd == AT_FDCWD {
        cwd.map(str::to_owned)
    } else {
        text(dirfd_path)
    };
    match base.filter(|b| b.starts_with('/')) {
        Some(base) => {
            let rel = raw.strip_prefix("./").unwrap_or(&raw);
            let joined = format!("{}/{}", base.trim_end_matches('/'), rel);
            (Some(joined), Some(raw))
        }
        None => (Some(raw), None),
    }
}

/// The directory fd worth recording (not AT_FDCWD).
pub fn dirfd(fd: i64) -> Option<i64> {
    (fd != AT_FDCWD).then_some(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_text_and_argv() {
        assert_eq!(text(b""), None);
        assert_eq!(text(b"a\xffb").as_deref(), Some("a\u{fffd}b"));
        let long = vec![b'x'; MAX_TEXT + 10];
        assert!(text(&long).is_some_and(|s| s.ends_with("...[truncated]")));
        let many: Vec<Vec<u8>> = (0..MAX_ARGS + 5)
            .map(|i| i.to_string().into_bytes())
            .collect();
        let (kept, cut) = argv(&many);
        assert_eq!((kept.len(), cut), (MAX_ARGS, true));
        let huge: Vec<Vec<u8>> = (0..20).map(|_| vec![b'y'; MAX_TEXT]).collect();
        let (kept, cut) = argv(&huge);
        assert!(cut);
        assert!(kept.iter().map(String::len).sum::<usize>() < MAX_ARGV_BYTES + 20 * 20);
    }

    #[test]
    fn resolves_relative_paths() {
        assert_eq!(
            resolve_path(b"/tmp/x", AT_FDCWD, b"", Some("/w")),
            (Some("/tmp/x".into()), None)
        );
        assert_eq!(
            resolve_path(b"./x", AT_FDCWD, b"", Some("/w/")),
            (Some("/w/x".into()), Some("./x".into()))
        );
        assert_eq!(
            resolve_path(b"y", 5, b"/etc", None),
            (Some("/etc/y".into()), Some("y".into()))
        );
        assert_eq!(
            resolve_path(b"y", 5, b"", Some("/w")),
            (Some("y".into()), None)
        );
        assert_eq!(resolve_path(b"", 5, b"", None), (None, None));
    }
}
