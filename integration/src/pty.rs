//! Drives a command on a pseudo-terminal, as a user at a terminal would: `ctr run -t` needs its
//! stdin to be a terminal, copies the terminal size into the container and puts it in raw mode.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::pty::{openpty, Winsize};

use crate::command::kill_group;

/// A command running with a new pty as its controlling terminal and stdio.
pub struct PtySession {
    master: File,
    child: Option<Child>,
    output: Arc<Mutex<Vec<u8>>>,
}

/// What a terminal session printed and how it ended.
#[derive(Debug)]
pub struct PtyOutput {
    /// Exit code (None when killed by a signal or the deadline).
    pub code: Option<i32>,
    /// Everything the terminal showed (with the terminal's CR LF line ends).
    pub text: String,
    /// True when the deadline expired.
    pub timed_out: bool,
}

impl PtySession {
    /// Starts `cmd` in a new session on a pty of `rows` x `cols`.
    pub fn start(cmd: &mut Command, rows: u16, cols: u16) -> Result<PtySession> {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).context("openpty")?;
        let slave: OwnedFd = pty.slave;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave.try_clone()?));
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("cannot start the terminal session")?;
        drop(slave);
        let master = File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone()?;
        let sink = output.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once every holder of the slave side has closed it.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        Ok(PtySession {
            master,
            child: Some(child),
            output,
        })
    }

    /// Types `text` at the terminal.
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        self.master.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Changes the terminal size, as a user resizing the window (the kernel sends SIGWINCH to
    /// the session's foreground process group).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a `winsize` from the pointer; `size` outlives the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("TIOCSWINSZ");
        }
        Ok(())
    }

    /// What the terminal has shown so far.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }

    /// Waits until the terminal has shown `needle`.
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> Result<()> {
        crate::command::wait_for(&format!("{needle:?} on the terminal"), timeout, || {
            Ok(self.screen().contains(needle).then_some(()))
        })
        .with_context(|| format!("terminal so far:\n{}", self.screen()))
    }

    /// Waits for the command to exit (killing its session after `timeout`).
    pub fn wait(mut self, timeout: Duration) -> Result<PtyOutput> {
        let mut child = self.child.take().context("already waited")?;
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                kill_group(child.id());
                break child.wait()?;
            }
            thread::sleep(Duration::from_millis(10));
        };
        // Let the reader pick up the last bytes.
        thread::sleep(Duration::from_millis(100));
        Ok(PtyOutput {
            code: status.code(),
            text: self.screen(),
            timed_out,
        })
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                kill_group(child.id());
            }
            let _ = child.wait();
        }
    }
}
