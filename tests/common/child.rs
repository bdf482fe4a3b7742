//! A child process (the `pyrepl3` binary) whose every wait has a deadline: reader threads
//! drain its pipes and wake the test on each chunk, its exit is awaited on its pidfd. At the
//! deadline the child is killed and the test fails with what the child wrote so far.

use std::io::Read;
use std::process::{Child, ChildStdin, Command, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::process::wait_child_until;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pipe {
    Stdout,
    Stderr,
}

pub struct Watched {
    child: Child,
    /// The command line, for messages.
    what: String,
    within: Duration,
    deadline: Instant,
    /// Chunks from the reader threads; `None` is the end of that pipe.
    chunks: Receiver<(Pipe, Option<Vec<u8>>)>,
    open_pipes: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// How much of stdout `read_line` has returned already.
    lines_read: usize,
    status: Option<ExitStatus>,
}

impl Watched {
    /// Spawns `command`; its piped stdout and stderr are drained by reader threads. Every wait
    /// on it ends at most `within` from now.
    pub fn spawn(command: &mut Command, within: Duration) -> Watched {
        let what = format!("{command:?}");
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{what} starts: {e}"));
        let (tx, chunks) = mpsc::channel();
        let mut open_pipes = 0;
        let pipes: [(Pipe, Option<Box<dyn Read + Send>>); 2] = [
            (Pipe::Stdout, child.stdout.take().map(|p| Box::new(p) as _)),
            (Pipe::Stderr, child.stderr.take().map(|p| Box::new(p) as _)),
        ];
        for (pipe, reader) in pipes {
            let Some(mut reader) = reader else { continue };
            open_pipes += 1;
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    // Blocks until the child writes or closes the pipe.
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            // The test may have finished with the child: nobody listens.
                            let _ = tx.send((pipe, None));
                            return;
                        }
                        Ok(n) => {
                            if tx.send((pipe, Some(buf[..n].to_vec()))).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        Watched {
            child,
            what,
            within,
            deadline: Instant::now() + within,
            chunks,
            open_pipes,
            stdout: Vec::new(),
            stderr: Vec::new(),
            lines_read: 0,
            status: None,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("stdin was piped")
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The next line of stdout, `\n` included.
    pub fn read_line(&mut self) -> String {
        loop {
            if let Some(at) = self.stdout[self.lines_read..]
                .iter()
                .position(|b| *b == b'\n')
            {
                let end = self.lines_read + at + 1;
                let line = String::from_utf8_lossy(&self.stdout[self.lines_read..end]);
                self.lines_read = end;
                return line.into_owned();
            }
            if !self.receive("a line on stdout") {
                self.fail("a line on stdout, but its output ended");
            }
        }
    }

    /// Reads stdout and stderr to their end, then waits for the exit.
    pub fn finish(&mut self) -> ExitStatus {
        while self.receive("the end of its output") {}
        self.wait()
    }

    /// Waits for the exit (output still arriving is kept).
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        match wait_child_until(&mut self.child, self.deadline) {
            Some(status) => {
                self.status = Some(status);
                status
            }
            None => self.fail("its exit"),
        }
    }

    /// Sends SIGKILL and waits for the exit.
    pub fn kill_and_wait(&mut self) -> ExitStatus {
        self.child.kill().expect("killing our own child");
        self.wait()
    }

    /// Takes one chunk of output, waiting until the deadline; false once every pipe ended.
    fn receive(&mut self, waiting_for: &str) -> bool {
        if self.open_pipes == 0 {
            return false;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.chunks.recv_timeout(left) {
            Ok((pipe, Some(data))) => {
                match pipe {
                    Pipe::Stdout => self.stdout.extend_from_slice(&data),
                    Pipe::Stderr => self.stderr.extend_from_slice(&data),
                }
                true
            }
            Ok((_, None)) => {
                self.open_pipes -= 1;
                true
            }
            Err(RecvTimeoutError::Timeout) => self.fail(waiting_for),
            Err(RecvTimeoutError::Disconnected) => unreachable!("a reader ends with None"),
        }
    }

    /// Kills the child and fails the test with what it wrote so far.
    fn fail(&mut self, waiting_for: &str) -> ! {
        // The panic below is the failure; whether the kill worked adds nothing to it.
        let _ = self.child.kill();
        let reaped = wait_child_until(&mut self.child, Instant::now() + Duration::from_secs(5));
        self.status = reaped;
        // What is still in flight from the reader threads belongs to the report.
        while let Ok((pipe, data)) = self.chunks.try_recv() {
            match (pipe, data) {
                (Pipe::Stdout, Some(data)) => self.stdout.extend_from_slice(&data),
                (Pipe::Stderr, Some(data)) => self.stderr.extend_from_slice(&data),
                (_, None) => {}
            }
        }
        panic!(
            "{}: waited {:?} for {waiting_for}; killed it.\n--- stdout so far ---\n{}\n--- stderr so far ---\n{}",
            self.what,
            self.within,
            self.stdout(),
            self.stderr()
        );
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.status.is_none() {
            // A failed test must not leave the process behind. Errors are ignored: it may
            // have exited (and the kill fail) after the test stopped looking, and a panic in
            // a drop during unwinding would abort the whole test binary.
            let _ = self.child.kill();
            wait_child_until(&mut self.child, Instant::now() + Duration::from_secs(5));
        }
    }
}
