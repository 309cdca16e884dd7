//! A process's stdio: containerd's fifos, nerdctl's `binary://` and `file://` log URIs, and
//! terminals (runsc hands the pty master back over a console socket).
//!
//! Without a terminal the container gets the destinations' file descriptors directly (runsc
//! donates them to the sandbox), so no byte passes through the shim. Only stdin goes through
//! a pipe, so that closing it reaches the container as EOF; a terminal needs two copy threads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::sync::oneshot;

use crate::error::{Result, ShimError};
use crate::reaper::{Exit, Reaper};
use crate::runsc::ChildStdio;

/// The stdio paths/URIs containerd gave for a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoPaths {
    /// stdin fifo ("" = none).
    pub stdin: String,
    /// stdout fifo or log URI.
    pub stdout: String,
    /// stderr fifo or log URI.
    pub stderr: String,
    /// Whether the process has a terminal.
    pub terminal: bool,
}

/// What the shim keeps of a process's stdio while it runs.
#[derive(Default)]
pub struct ProcessIo {
    stdin_fifo: Option<String>,
    copiers: Vec<JoinHandle<()>>,
    console: Option<File>,
    logger: Option<(u32, oneshot::Receiver<Exit>)>,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> ShimError {
    move |e| ShimError::io(context, e)
}

/// Opens a fifo for writing without blocking (O_RDWR never waits for a reader).
fn open_fifo_writer(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(format!("open stdio fifo {path}")))
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::io("create pipe", std::io::Error::from(e)))
}

/// Copies the stdin fifo into `sink` on a thread; EOF on the fifo closes `sink`. Nobody waits
/// for it: it ends when containerd closes stdin, or when `close_stdin` releases it.
fn spawn_stdin_copier(path: String, mut sink: File) {
    std::thread::spawn(move || {
        // Blocks until containerd's side opens the fifo for writing.
        if let Ok(mut fifo) = File::open(&path) {
            let _ = std::io::copy(&mut fifo, &mut sink);
        }
    });
}

impl ProcessIo {
    /// Sets up stdio for a process without a terminal; returns what runsc gets.
    pub async fn plain(
        paths: &IoPaths,
        id: &str,
        namespace: &str,
        reaper: &Reaper,
    ) -> Result<(ChildStdio, ProcessIo)> {
        let mut io = ProcessIo::default();
        let mut stdio = ChildStdio::null();
        if !paths.stdin.is_empty() {
            let (r, w) = pipe()?;
            stdio.stdin = Some(r);
            spawn_stdin_copier(paths.stdin.clone(), File::from(w));
            io.stdin_fifo = Some(paths.stdin.clone());
        }
        match LogTarget::parse(&paths.stdout)? {
            LogTarget::None => {}
            LogTarget::Fifo(p) => {
                stdio.stdout = Some(open_fifo_writer(&p)?.into());
                if !paths.stderr.is_empty() {
                    stdio.stderr = Some(open_fifo_writer(&paths.stderr)?.into());
                }
            }
            LogTarget::File(p) => {
                let f = open_log_file(&p)?;
                let dup = f
                    .try_clone()
                    .map_err(io_err(format!("dup log file {}", p.display())))?;
                stdio.stdout = Some(f.into());
                stdio.stderr = Some(dup.into());
            }
            LogTarget::Binary { path, args } => {
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                io.logger =
                    Some(start_logger(&path, &args, id, namespace, out_r, err_r, reaper).await?);
                stdio.stdout = Some(out_w);
                stdio.stderr = Some(err_w);
            }
        }
        Ok((stdio, io))
    }

    /// Wires a pty master received from runsc to the process's fifos.
    pub fn attach_console(&mut self, paths: &IoPaths, master: File) -> Result<()> {
        if !paths.stdin.is_empty() {
            let sink = master.try_clone().map_err(io_err("dup console".into()))?;
            spawn_stdin_copier(paths.stdin.clone(), sink);
            self.stdin_fifo = Some(paths.stdin.clone());
        }
        if let LogTarget::Fifo(p) = LogTarget::parse(&paths.stdout)? {
            let mut out = open_fifo_writer(&p)?;
            let mut src = master.try_clone().map_err(io_err("dup console".into()))?;
            self.copiers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 32 * 1024];
                // Ends with EIO when the last process holding the pty exits.
                while let Ok(n) = src.read(&mut buf) {
                    if n == 0 || out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }));
        }
        self.console = Some(master);
        Ok(())
    }

    /// Resizes the terminal.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let Some(console) = &self.console else {
            return Err(ShimError::FailedPrecondition(
                "process has no terminal".into(),
            ));
        };
        let ws = libc::winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct we own from a valid fd.
        let rc = unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc != 0 {
            return Err(ShimError::io(
                "resize terminal",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Closes stdin: unblocks a copier still waiting for containerd to open the fifo.
    pub fn close_stdin(&mut self) {
        if let Some(path) = self.stdin_fifo.take() {
            // Opening the write side (non-blocking) releases a reader blocked in open(2); closing
            // it at once gives that reader EOF.
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
        }
    }

    /// Waits (bounded) for the output copiers to drain after the process exited.
    pub async fn drain(&mut self, deadline: Duration) {
        self.close_stdin();
        let copiers = std::mem::take(&mut self.copiers);
        let _ = tokio::time::timeout(
            deadline,
            tokio::task::spawn_blocking(move || {
                for c in copiers {
                    let _ = c.join();
                }
            }),
        )
        .await;
    }

    /// Releases everything: stdin, the console, and the log binary (given a moment to flush).
    pub async fn shutdown(&mut self) {
        self.close_stdin();
        self.console = None;
        if let Some((pid, exit)) = self.logger.take() {
            if tokio::time::timeout(Duration::from_secs(5), exit)
                .await
                .is_err()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Where stdout goes.
#[derive(Debug, PartialEq, Eq)]
enum LogTarget {
    None,
    Fifo(String),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

impl LogTarget {
    /// Parses containerd's stdio value: a fifo path, or `fifo://`, `file://` and
    /// `binary://PATH?k=v&flag` URIs (query values percent-decoded, as containerd encodes them).
    fn parse(s: &str) -> Result<LogTarget> {
        if s.is_empty() {
            return Ok(LogTarget::None);
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Ok(LogTarget::Fifo(s.to_string()));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let decode = |v: &str| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        let path = decode(path);
        if !path.starts_with('/') {
            return Err(ShimError::InvalidArgument(format!(
                "stdio URI {s:?}: the path must be absolute"
            )));
        }
        match scheme {
            "fifo" => Ok(LogTarget::Fifo(path)),
            "file" => Ok(LogTarget::File(PathBuf::from(path))),
            "binary" => {
                let mut args = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    args.push(decode(k));
                    if !v.is_empty() {
                        args.push(decode(v));
                    }
                }
                Ok(LogTarget::Binary {
                    path: PathBuf::from(path),
                    args,
                })
            }
            other => Err(ShimError::InvalidArgument(format!(
                "unsupported stdio URI scheme {other:?} in {s:?} (fifo path, file:// or binary://)"
            ))),
        }
    }
}

fn open_log_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(io_err(format!("create log directory {}", dir.display())))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(io_err(format!("open log file {}", path.display())))
}

/// Starts a containerd logging binary: stdout on fd 3, stderr on fd 4, a ready pipe on fd 5.
async fn start_logger(
    path: &Path,
    args: &[String],
    id: &str,
    namespace: &str,
    out_r: OwnedFd,
    err_r: OwnedFd,
    reaper: &Reaper,
) -> Result<(u32, oneshot::Receiver<Exit>)> {
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the source fds stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let (child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(io_err(format!("start log binary {}", path.display())))?;
    drop((out_r, err_r, ready_w));
    // The binary closes fd 5 when it is ready; wait for that (bounded).
    let ready = async {
        use tokio::io::AsyncReadExt;
        let mut r = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_r)?;
        let mut b = [0u8; 1];
        r.read(&mut b).await
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(10), ready).await,
        Ok(Ok(_))
    ) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        return Err(ShimError::Internal(format!(
            "log binary {} did not signal ready within 10s",
            path.display()
        )));
    }
    Ok((child.id(), exit))
}

/// A unix socket runsc sends the pty master to (`--console-socket`).
pub struct ConsoleSocket {
    path: PathBuf,
    listener: Arc<Mutex<Option<UnixListener>>>,
}

impl ConsoleSocket {
    /// The socket path for `key` under `dir` (kept short: sun_path is 108 bytes).
    pub fn path_for(dir: &Path, key: &str) -> PathBuf {
        let name = hex::encode(&sha2::Sha256::digest(key.as_bytes())[..8]);
        dir.join(format!("{name}.sock"))
    }

    /// Binds a socket under `dir`.
    pub fn bind(dir: &Path, key: &str) -> Result<ConsoleSocket> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let path = Self::path_for(dir, key);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(io_err(format!("bind console socket {}", path.display())))?;
        Ok(ConsoleSocket {
            path,
            listener: Arc::new(Mutex::new(Some(listener))),
        })
    }

    /// The socket's path, for `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts accepting the master fd in the background (call before running runsc).
    pub fn receive(&self) -> oneshot::Receiver<Result<File>> {
        let (tx, rx) = oneshot::channel();
        let listener = self.listener.lock().ok().and_then(|mut l| l.take());
        std::thread::spawn(move || {
            let res = match listener {
                Some(l) => recv_master(&l),
                None => Err(ShimError::Internal("console socket already used".into())),
            };
            let _ = tx.send(res);
        });
        rx
    }

    /// Unblocks a pending accept (runsc failed) by connecting once.
    pub fn cancel(&self) {
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

use sha2::Digest as _;

fn recv_master(listener: &UnixListener) -> Result<File> {
    let (stream, _) = listener
        .accept()
        .map_err(io_err("accept on console socket".into()))?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| ShimError::io("receive pty master", std::io::Error::from(e)))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| ShimError::io("receive pty master", std::io::Error::from(e)))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                for extra in &fds[1..] {
                    // SAFETY: received fds are ours to close.
                    drop(unsafe { OwnedFd::from_raw_fd(*extra) });
                }
                // SAFETY: the kernel just installed this fd in our table.
                return Ok(unsafe { File::from_raw_fd(fd) });
            }
        }
    }
    Err(ShimError::Internal(
        "runsc closed the console socket without sending a pty".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_log_uris_like_containerd() {
        assert_eq!(LogTarget::parse("").unwrap(), LogTarget::None);
        assert_eq!(
            LogTarget::parse("/run/containerd/fifo/1-stdout").unwrap(),
            LogTarget::Fifo("/run/containerd/fifo/1-stdout".into())
        );
        assert_eq!(
            LogTarget::parse("file:///var/log/c.log").unwrap(),
            LogTarget::File("/var/log/c.log".into())
        );
        match LogTarget::parse("binary:///usr/bin/logger?tag=x&verbose").unwrap() {
            LogTarget::Binary { path, args } => {
                assert_eq!(path, PathBuf::from("/usr/bin/logger"));
                assert_eq!(args, vec!["tag", "x", "verbose"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(LogTarget::parse("http://example.invalid/x").is_err());
        assert!(LogTarget::parse("file://relative/x").is_err());
        match LogTarget::parse(
            "binary:///usr/bin/nerdctl?_NERDCTL_INTERNAL_LOGGING=%2Fvar%2Flib%2Fnerdctl",
        )
        .unwrap()
        {
            LogTarget::Binary { args, .. } => {
                assert_eq!(args, vec!["_NERDCTL_INTERNAL_LOGGING", "/var/lib/nerdctl"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
