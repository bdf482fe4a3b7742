//! A pseudo-terminal driver for black-box tests of the interactive commands: the real binary
//! on a real pty, driven as a person would drive it (keys in, screen text out).
//!
//! The driver is a few lines here rather than a crate: the expect crates wait by spinning on
//! non-blocking reads (expectrl) or by sleeping between reads (rexpect), while this one blocks
//! a reader thread on the pty and wakes the test on each chunk (a condvar), so waits end on
//! the event, and the guard deadline turns a hang into a failure.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::wait_child_until;

/// Upper bound for any one wait; reaching it is a failure.
const PTY_GUARD: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Screen {
    raw: Vec<u8>,
    eof: bool,
}

/// One `pyrepl3` command on its own pseudo-terminal (its controlling terminal, so Ctrl-C
/// there sends SIGINT), with a private home (the REPL's history file).
pub struct Pty {
    pub child: Child,
    master: std::fs::File,
    screen: Arc<(Mutex<Screen>, Condvar)>,
    /// Raw bytes already matched by earlier waits.
    consumed: usize,
    pub home: tempfile::TempDir,
}

impl Pty {
    /// Starts `pyrepl3 ARGS` in `dir` (the caller's directory with `None`).
    pub fn spawn(args: &[&str], dir: Option<&std::path::Path>) -> Pty {
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
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        command
            .args(args)
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
        Pty {
            child,
            master: std::fs::File::from(master),
            screen,
            consumed: 0,
            home,
        }
    }

    /// Starts `pyrepl3 repl` and waits for its first prompt.
    pub fn repl() -> Pty {
        let mut repl = Pty::spawn(&["repl"], None);
        repl.expect("for commands.");
        repl.expect(">>> ");
        repl
    }

    pub fn send(&mut self, bytes: &str) {
        self.master.write_all(bytes.as_bytes()).unwrap();
    }

    /// Types `text` and Enter.
    pub fn line(&mut self, text: &str) {
        self.send(&format!("{text}\r"));
    }

    /// Whether the terminal echoes what is typed (its settings, read through the master).
    pub fn echo_is_on(&self) -> bool {
        // SAFETY: tcgetattr on an fd we own, into a termios owned here.
        unsafe {
            let mut settings: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(self.master.as_raw_fd(), &mut settings), 0);
            settings.c_lflag & libc::ECHO != 0
        }
    }

    /// Waits until `needle` appears after what earlier waits matched; returns the text up to
    /// and including it.
    pub fn expect(&mut self, needle: &str) -> String {
        self.wait_for(needle, |text| {
            text.find(needle).map(|at| {
                let end = at + needle.len();
                (end, text[..end].to_string())
            })
        })
    }

    /// Waits until `find` recognises the screen text (escape sequences and `\r` removed)
    /// that follows what earlier waits matched. `find` returns where its match ends.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        mut find: impl FnMut(&str) -> Option<(usize, T)>,
    ) -> T {
        let deadline = Instant::now() + PTY_GUARD;
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
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + PTY_GUARD;
        let (lock, changed) = &*self.screen;
        let screen = lock.lock().unwrap();
        let (screen, timeout) = changed
            .wait_timeout_while(screen, PTY_GUARD, |s| !s.eof)
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
                panic!("pyrepl3 closed the terminal but did not exit within {PTY_GUARD:?}");
            }
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        // A failed test must not leave the REPL behind; its worker follows on socket EOF.
        // Errors are ignored: it may have exited already (then the kill fails), and a panic
        // in a drop during unwinding would abort the test binary.
        let _ = self.child.kill();
        wait_child_until(&mut self.child, Instant::now() + PTY_GUARD);
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
