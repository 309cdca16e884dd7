//! Read-only views of the host the tests inspect: processes (from /proc) and mounts (from
//! /proc/self/mountinfo), plus the few targeted clean-up actions the harness is allowed:
//! killing a process by its pid and lazily unmounting a mount point it created.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A process seen in /proc.
#[derive(Debug, Clone)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its argv (empty for zombies and kernel threads).
    pub argv: Vec<String>,
}

impl Process {
    /// The argv joined by spaces, for matching and messages.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }

    /// True when argv contains `flag` immediately followed by `value` (e.g. `-id X`).
    pub fn has_flag_value(&self, flag: &str, value: &str) -> bool {
        self.argv.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    /// The last path component of argv[0].
    pub fn program_name(&self) -> &str {
        self.argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or("")
    }
}

/// All processes except the calling one, with a readable non-empty argv.
pub fn processes() -> Vec<Process> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv: Vec<String> = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!argv.is_empty()).then_some(Process { pid, argv })
        })
        .collect()
}

/// Processes whose argv mentions `needle` anywhere.
pub fn processes_mentioning(needle: &str) -> Vec<Process> {
    processes()
        .into_iter()
        .filter(|p| p.argv.iter().any(|a| a.contains(needle)))
        .collect()
}

/// Sends SIGKILL to one process, by pid. Only for processes the tests started.
pub fn kill_pid(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// True while `/proc/<pid>` exists and the process is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The whole line, for matching and messages.
    pub line: String,
}

/// The mounts of this process's mount namespace.
pub fn mounts() -> Vec<Mount> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let point = line.split(' ').nth(4)?;
            Some(Mount {
                mount_point: PathBuf::from(unescape_mountinfo(point)),
                line: line.to_string(),
            })
        })
        .collect()
}

/// Lazily unmounts every mount at or under `dir`, deepest first. Returns what it unmounted.
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mounts()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
        .into_iter()
        .filter(|p| umount2(p, MntFlags::MNT_DETACH).is_ok())
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes an executable script so that executing it can never fail with "Text file busy".
///
/// Tests run in parallel threads that spawn processes all the time; a file written by this
/// process is held open for writing by any child forked in that instant until the child execs,
/// and executing the file meanwhile fails with ETXTBSY. So the executable itself is written by
/// a separate process (`install`), whose descriptor no fork of ours can inherit.
pub fn write_executable(path: &Path, content: &str) -> std::io::Result<()> {
    let draft = path.with_file_name(format!(
        ".{}.draft",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("script")
    ));
    fs::write(&draft, content)?;
    let status = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(&draft)
        .arg(path)
        .status();
    let _ = fs::remove_file(&draft);
    match status? {
        s if s.success() => Ok(()),
        s => Err(std::io::Error::other(format!(
            "install -m 0755 {} failed: {s}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }

    #[test]
    fn sees_itself_as_parent_of_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("7.25")
            .spawn()
            .unwrap();
        // Between fork and exec the child still shows our argv: poll.
        let found =
            crate::command::wait_for("the child", std::time::Duration::from_secs(5), || {
                Ok(processes_mentioning("7.25")
                    .iter()
                    .any(|p| p.pid == child.id() && p.program_name() == "sleep")
                    .then_some(()))
            })
            .is_ok();
        kill_pid(child.id());
        let _ = child.wait();
        assert!(found);
        assert!(!is_alive(child.id()));
    }
}
