//! Black-box tests of `pyrepl3 repl`: the real binary on a real pseudo-terminal, driven as a
//! person would drive it (keys in, screen text out).
//!
//! The pty driver is a few lines here rather than a crate: the expect crates wait by spinning
//! on non-blocking reads (expectrl) or by sleeping between reads (rexpect), while this one
//! blocks a reader thread on the pty and wakes the test on each chunk (a condvar), so waits
//! end on the event, and the guard deadline turns a hang into a failure.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{process_exists, wait_child_until};

/// Upper bound for any one wait; reaching it is a failure.
const GUARD: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Screen {
    raw: Vec<u8>,
    eof: bool,
}

/// One `pyrepl3 repl` on its own pseudo-terminal, with a private home (history file).
struct Repl {
    child: Child,
    master: std::fs::File,
    screen: Arc<(Mutex<Screen>, Condvar)>,
    /// Raw bytes already matched by earlier waits.
    consumed: usize,
    home: tempfile::TempDir,
}

impl Repl {
    /// Starts the REPL and waits for its first prompt.
    fn start() -> Repl {
        let home = tempfile::tempdir().unwrap();
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: 30,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: valid out-pointers; null name and termios (defaults: a cooked terminal).
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: openpty returned two fresh fds that nothing else owns.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        for fd in [&master, &slave] {
            // SAFETY: plain fcntl on an fd we own; the child gets the slave as 0/1/2 only.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        let mut command = Command::new(env!("CARGO_BIN_EXE_pyrepl3"));
        command
            .arg("repl")
            .env("HOME", home.path())
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
        // controlling terminal is the pty, so Ctrl-C there sends SIGINT, as in a real terminal.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("pyrepl3 starts");
        drop(slave);
        let screen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let mut reader = std::fs::File::from(master.try_clone().unwrap());
        let shared = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // Blocks until output; EIO once the last holder of the slave side is gone.
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, changed) = &*shared;
                let mut screen = lock.lock().unwrap();
                if n == 0 {
                    screen.eof = true;
                } else {
                    screen.raw.extend_from_slice(&buf[..n]);
                }
                changed.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        let mut repl = Repl {
            child,
            master: std::fs::File::from(master),
            screen,
            consumed: 0,
            home,
        };
        repl.expect("for commands.");
        repl.expect(">>> ");
        repl
    }

    fn send(&mut self, bytes: &str) {
        self.master.write_all(bytes.as_bytes()).unwrap();
    }

    /// Types `text` and Enter.
    fn line(&mut self, text: &str) {
        self.send(&format!("{text}\r"));
    }

    /// Waits until `needle` appears after what earlier waits matched; returns the text up to
    /// and including it.
    fn expect(&mut self, needle: &str) -> String {
        self.wait_for(needle, |text| {
            text.find(needle).map(|at| {
                let end = at + needle.len();
                (end, text[..end].to_string())
            })
        })
    }

    /// Waits until `find` recognises the screen text (escape sequences and `\r` removed)
    /// that follows what earlier waits matched. `find` returns where its match ends.
    fn wait_for<T>(&mut self, what: &str, mut find: impl FnMut(&str) -> Option<(usize, T)>) -> T {
        let deadline = Instant::now() + GUARD;
        let (lock, changed) = &*self.screen;
        let mut screen = lock.lock().unwrap();
        loop {
            let (text, raw_ends) = plain_text(&screen.raw[self.consumed..]);
            if let Some((end, value)) = find(&text) {
                if end > 0 {
                    self.consumed += raw_ends[end - 1];
                }
                return value;
            }
            let now = Instant::now();
            if screen.eof || now >= deadline {
                // The panic is the failure; the kill only keeps the REPL from outliving it.
                let _ = self.child.kill();
                panic!(
                    "{} waiting for {what:?}; the screen since the last match:\n{text}",
                    if screen.eof {
                        "pyrepl3 exited"
                    } else {
                        "timed out"
                    }
                );
            }
            screen = changed.wait_timeout(screen, deadline - now).unwrap().0;
        }
    }

    /// Waits for the process to exit (the pty reports end of file when it closed its end)
    /// and returns its exit status.
    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + GUARD;
        let (lock, changed) = &*self.screen;
        let screen = lock.lock().unwrap();
        let (screen, timeout) = changed
            .wait_timeout_while(screen, GUARD, |s| !s.eof)
            .unwrap();
        if timeout.timed_out() {
            let (text, _) = plain_text(&screen.raw[self.consumed..]);
            // The panic is the failure; the kill only keeps the REPL from outliving it.
            let _ = self.child.kill();
            panic!("pyrepl3 did not exit; the screen since the last match:\n{text}");
        }
        drop(screen);
        match wait_child_until(&mut self.child, deadline) {
            Some(status) => status.code().unwrap_or(-1),
            None => {
                // As above: the panic is the failure.
                let _ = self.child.kill();
                panic!("pyrepl3 closed the terminal but did not exit within {GUARD:?}");
            }
        }
    }
}

impl Drop for Repl {
    fn drop(&mut self) {
        // A failed test must not leave the REPL behind; its worker follows on socket EOF.
        // Errors are ignored: it may have exited already (then the kill fails), and a panic
        // in a drop during unwinding would abort the test binary.
        let _ = self.child.kill();
        wait_child_until(&mut self.child, Instant::now() + GUARD);
    }
}

/// The text a terminal would show, roughly: ANSI escape sequences and carriage returns
/// removed. Also returns, for each byte of the text, the raw length consumed through it.
fn plain_text(raw: &[u8]) -> (String, Vec<usize>) {
    let mut out = Vec::with_capacity(raw.len());
    let mut ends = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            0x1b => {
                i += 1;
                match raw.get(i) {
                    // CSI: parameters and intermediates, then one final byte.
                    Some(b'[') => {
                        i += 1;
                        while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                            i += 1;
                        }
                        i += 1;
                    }
                    // OSC: up to BEL or ESC \.
                    Some(b']') => {
                        while i < raw.len() && raw[i] != 0x07 && raw[i] != 0x1b {
                            i += 1;
                        }
                        i += if raw.get(i) == Some(&0x1b) { 2 } else { 1 };
                    }
                    Some(_) => i += 1,
                    None => {}
                }
            }
            b'\r' => i += 1,
            byte => {
                out.push(byte);
                i += 1;
                ends.push(i);
            }
        }
    }
    // A character split across reads completes with the next chunk.
    let valid = match std::str::from_utf8(&out) {
        Ok(_) => out.len(),
        Err(e) => e.valid_up_to(),
    };
    out.truncate(valid);
    ends.truncate(valid);
    (String::from_utf8(out).unwrap(), ends)
}

#[test]
fn a_multi_line_definition_then_a_call() {
    let mut r = Repl::start();
    r.line("def f(x):");
    r.expect("... ");
    r.line("    return x*2");
    r.expect("... ");
    r.line("");
    r.expect(">>> ");
    r.line("f(21)");
    r.expect("f(21)\n42\n");
    r.expect(">>> ");
    // An open bracket continues too.
    r.line("(1 +");
    r.expect("... ");
    r.line(" 2)");
    r.expect("\n3\n");
}

#[test]
fn output_streams_while_the_code_runs() {
    let mut r = Repl::start();
    r.line("import time");
    r.expect(">>> ");
    r.line("for i in range(3): print('tick', i); time.sleep(0.5)");
    r.expect("... ");
    let submitted = Instant::now();
    r.line("");
    r.expect("tick 0");
    let first = submitted.elapsed();
    r.expect("tick 2");
    r.expect(">>> ");
    let all = submitted.elapsed();
    assert!(first < Duration::from_secs(1), "first line after {first:?}");
    assert!(
        all - first >= Duration::from_secs(1),
        "the first line came {first:?} after submitting, the end {all:?}: not streamed"
    );
}

#[test]
fn input_is_asked_inline_and_answered_at_the_terminal() {
    let mut r = Repl::start();
    r.line("x = input('name? ')");
    r.expect("input('name? ')\n");
    r.expect("name? ");
    r.line("bob");
    r.expect(">>> ");
    r.line("x");
    r.expect("x\n'bob'\n");
}

#[test]
fn ctrl_c_interrupts_running_code_and_keeps_the_variables() {
    let mut r = Repl::start();
    r.line("y = 5");
    r.expect(">>> ");
    r.line("def spin():");
    r.line("    print('spinning', flush=True)");
    r.line("    while True: pass");
    r.line("");
    r.expect(">>> ");
    r.line("spin()");
    r.expect("spin()\n");
    r.expect("spinning\n");
    r.send("\x03");
    r.expect("KeyboardInterrupt");
    r.expect(">>> ");
    r.line("y");
    r.expect("y\n5\n");
    r.expect(">>> ");
    // At the prompt, Ctrl-C drops the line being typed.
    r.send("y = 6\x03");
    r.expect("KeyboardInterrupt");
    r.expect(">>> ");
    r.line("y");
    r.expect("y\n5\n");
}

#[test]
fn ctrl_d_exits_with_status_0_and_leaves_no_worker() {
    let mut r = Repl::start();
    r.line("import os; print('PID', os.getpid(), 'DIP')");
    let pid: u32 = r.wait_for("the worker's pid", |text| {
        let start = text.find("PID ")? + 4;
        let len = text[start..].find(" DIP")?;
        Some((start + len, text[start..start + len].parse().ok()?))
    });
    r.expect(">>> ");
    assert!(process_exists(pid));
    r.send("\x04");
    assert_eq!(r.wait_exit(), 0);
    // The REPL reaped the worker before exiting: not even a zombie is left.
    assert!(!process_exists(pid), "worker {pid} outlived the REPL");
    let history = r.home.path().join("data/pyrepl3/history");
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("os.getpid()"), "history: {saved:?}");
}

#[test]
fn a_dead_worker_is_reported_and_replaced_on_the_next_input() {
    let mut r = Repl::start();
    r.line("x = 1");
    r.expect(">>> ");
    r.line("import os; os._exit(1)");
    r.expect("WorkerDied");
    r.expect(">>> ");
    r.line("1+1");
    r.expect("all state was lost");
    r.expect("\n2\n");
    r.expect(">>> ");
    r.line("x");
    r.expect("NameError");
}

#[test]
fn a_syntax_error_shows_the_caret() {
    let mut r = Repl::start();
    r.line("1 +");
    let before = r.expect("SyntaxError");
    assert!(
        before
            .lines()
            .any(|l| l.trim_start().starts_with('^') && l.trim().chars().all(|c| c == '^')),
        "no caret line in {before:?}"
    );
    r.expect(">>> ");
    r.line("'still here'");
    r.expect("\n'still here'\n");
}

#[test]
fn commands_info_reset_and_help() {
    let mut r = Repl::start();
    r.line(":info");
    let pid: u32 = r.wait_for("a pid in :info", |text| {
        let start = text.find("\npid")? + 4;
        let digits = text[start..].trim_start();
        let offset = text.len() - digits.len();
        let len = digits.find('\n')?;
        Some((offset + len, digits[..len].parse().ok()?))
    });
    assert!(process_exists(pid));
    r.expect(">>> ");
    r.line("z = 3");
    r.expect(">>> ");
    r.line(":reset");
    r.expect("namespace cleared");
    r.expect(">>> ");
    r.line("z");
    r.expect("NameError");
    r.expect(">>> ");
    r.line(":help");
    r.expect(":reset");
    r.expect(">>> ");
    r.line(":nope");
    r.expect("unknown command");
}
