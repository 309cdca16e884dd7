//! Terminals and the `binary://` / `file://` log URIs nerdctl uses.

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use safehouse_integration::command::{run_with_input, wait_for};
use safehouse_integration::host::is_alive;
use safehouse_integration::pty::PtySession;
use safehouse_integration::TestEnv;

/// `ctr run -t`: stdin/stdout are a tty, typed input arrives, the caller's terminal size is
/// passed on and follows a resize (ResizePty), and the exit code comes back. (`tty` is not
/// asserted: inside gVisor the terminal is an imported host fd that `ttyname` cannot name.)
pub fn terminal_session(env: &TestEnv) -> Result<()> {
    let id = env.id("tty");
    env.scenario(&[&id], || {
        // Every empty line typed prints the size; "q" ends with 7. ctr sizes the terminal
        // just after start and forwards resizes asynchronously, so poll by typing.
        let script = "[ -t 0 ] && [ -t 1 ] && echo IS-A-$((6*7)); read a; echo got:$a; \
                      while read b; do [ \"$b\" = q ] && exit 7; stty size; done";
        let argv = env.run_argv(&["--rm", "-t"], &id, &["sh", "-c", script]);
        let mut session = PtySession::start(env.ctr.command().args(&argv), 33, 101)?;
        session.wait_for_text("IS-A-42", Duration::from_secs(30))?;
        session.type_text("ping\r")?;
        session.wait_for_text("got:ping", Duration::from_secs(10))?;
        let size_shows = |session: &mut PtySession, size: &str| -> Result<()> {
            wait_for(
                &format!("stty size {size:?}"),
                Duration::from_secs(10),
                || {
                    session.type_text("\r")?;
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(session.screen().contains(size).then_some(()))
                },
            )
            .with_context(|| format!("terminal so far:\n{}", session.screen()))
        };
        size_shows(&mut session, "33 101")?;
        session.resize(40, 120)?;
        size_shows(&mut session, "40 120")?;
        session.type_text("q\r")?;
        let out = session.wait(Duration::from_secs(30))?;
        ensure!(!out.timed_out, "terminal session hung:\n{}", out.text);
        ensure!(
            out.code == Some(7),
            "exit code 7 expected, got {:?}:\n{}",
            out.code,
            out.text
        );
        ensure!(
            out.text.contains("got:ping"),
            "typed input did not arrive:\n{}",
            out.text
        );
        ensure!(
            out.text.contains("40 120"),
            "the resize did not arrive:\n{}",
            out.text
        );
        ensure!(
            out.text.contains("\r\n"),
            "no tty line discipline (CR LF):\n{}",
            out.text
        );
        Ok(())
    })
}

/// `ctr task exec -t` into a running container: a tty, typed input, the exit code.
pub fn exec_terminal(env: &TestEnv) -> Result<()> {
    let id = env.id("exectty");
    env.scenario(&[&id], || {
        env.ctr_run(&["-d"], &id, &["sleep", "1000"])?.ok()?;
        env.ctr
            .wait_status(&id, "RUNNING", Duration::from_secs(30))?;
        let fifo = env.containerd.fifo_dir().display().to_string();
        let script = "[ -t 0 ] && echo EXEC-TTY-$((2*21)); read a; echo exec-got:$a; exit 3";
        let argv = [
            "task",
            "exec",
            "-t",
            "--fifo-dir",
            &fifo,
            "--exec-id",
            "t1",
            &id,
            "sh",
            "-c",
            script,
        ];
        let mut session = PtySession::start(env.ctr.command().args(argv), 24, 80)?;
        session.wait_for_text("EXEC-TTY-42", Duration::from_secs(30))?;
        session.type_text("pong\r")?;
        let out = session.wait(Duration::from_secs(30))?;
        ensure!(!out.timed_out, "exec terminal hung:\n{}", out.text);
        ensure!(
            out.code == Some(3),
            "exit code 3 expected, got {:?}:\n{}",
            out.code,
            out.text
        );
        ensure!(
            out.text.contains("exec-got:pong"),
            "typed input did not arrive:\n{}",
            out.text
        );
        env.ctr.run(&["task", "kill", "-s", "SIGKILL", &id])?.ok()?;
        env.ctr
            .wait_status(&id, "STOPPED", Duration::from_secs(30))?;
        env.ctr.run(&["task", "delete", &id])?.ok()?;
        env.ctr.run(&["containers", "rm", &id])?.ok()?;
        Ok(())
    })
}

/// Without a tty, stdin reaches the process through containerd's fifo. (EOF is not asserted:
/// ctr 1.6 never calls CloseIO, so even runc's process would wait forever.)
pub fn stdin_reaches_process(env: &TestEnv) -> Result<()> {
    let id = env.id("stdin");
    env.scenario(&[&id], || {
        let argv = env.run_argv(&["--rm"], &id, &["sh", "-c", "read a; read b; echo $b-$a"]);
        let out = run_with_input(
            env.ctr.command().args(&argv),
            b"one\ntwo\n",
            Duration::from_secs(30),
        )?;
        ensure!(
            !out.timed_out,
            "stdin never reached the process: {}",
            out.describe()
        );
        ensure!(out.success(), "{}", out.describe());
        ensure!(out.stdout == "two-one\n", "stdout: {}", out.describe());
        Ok(())
    })
}

/// `--log-uri binary://RECORDER`: the recorder gets stdout on fd 3 and stderr on fd 4 and
/// the container id in its environment, and exits when the container is gone.
pub fn log_uri_binary(env: &TestEnv) -> Result<()> {
    let id = env.id("logbin");
    env.scenario(&[&id], || {
        let dir = env.scratch("log-binary")?;
        let recorder = dir.join("recorder");
        let script = format!(
            "#!/bin/sh\n\
             out={dir}/${{CONTAINER_ID:-unknown}}\n\
             echo $$ > \"$out.pid\"\n\
             echo \"$CONTAINER_NAMESPACE\" > \"$out.ns\"\n\
             exec 5>&-\n\
             cat <&3 > \"$out.stdout\" &\n\
             cat <&4 > \"$out.stderr\" &\n\
             wait\n",
            dir = dir.display()
        );
        safehouse_integration::host::write_executable(&recorder, &script)?;
        let uri = format!("binary://{}", recorder.display());
        let out = env.ctr_run(
            &["--rm", "--log-uri", &uri],
            &id,
            &["sh", "-c", "echo log-out; echo log-err >&2; exit 4"],
        )?;
        ensure!(
            out.code == Some(4),
            "exit code 4 expected: {}",
            out.describe()
        );
        let base = dir.join(&id);
        let read = |ext: &str| fs::read_to_string(base.with_extension(ext)).unwrap_or_default();
        ensure!(
            read("stdout") == "log-out\n",
            "recorded stdout: {:?}",
            read("stdout")
        );
        ensure!(
            read("stderr") == "log-err\n",
            "recorded stderr: {:?}",
            read("stderr")
        );
        ensure!(
            read("ns").trim() == env.ctr.namespace,
            "CONTAINER_NAMESPACE: {:?}",
            read("ns")
        );
        let pid: u32 = read("pid").trim().parse().unwrap_or(0);
        wait_for(
            "the recorder process to exit",
            Duration::from_secs(10),
            || Ok((!is_alive(pid)).then_some(())),
        )?;
        Ok(())
    })
}

/// `--log-uri file:///PATH`: stdout and stderr end up in the file.
pub fn log_uri_file(env: &TestEnv) -> Result<()> {
    let id = env.id("logfile");
    env.scenario(&[&id], || {
        let path = env.scratch("log-file")?.join(format!("{id}.log"));
        let uri = format!("file://{}", path.display());
        let out = env.ctr_run(
            &["--rm", "--log-uri", &uri],
            &id,
            &["sh", "-c", "echo file-out; echo file-err >&2"],
        )?;
        ensure!(out.success(), "{}", out.describe());
        let read = || fs::read_to_string(&path).unwrap_or_default();
        let text = wait_for("the log file", Duration::from_secs(10), || {
            let text = read();
            Ok((text.contains("file-out") && text.contains("file-err")).then_some(text))
        })
        .with_context(|| format!("{} holds {:?}", path.display(), read()))?;
        ensure!(
            text.lines().count() == 2,
            "log file has extra lines:\n{text}"
        );
        Ok(())
    })
}
