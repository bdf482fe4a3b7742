//! The read-eval-print loop: prompts, statements that continue over several lines, the `:`
//! commands, running code (output as it comes, the value's repr, tracebacks, `input()`),
//! Ctrl-C while code runs, and bringing a dead session back. It knows the session only
//! through [`ReplBackend`] and the terminal only through [`Terminal`].

use crate::cli::displays::DisplayFiles;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::signal::unix::Signal;

use super::backend::ReplBackend;
use super::terminal::{LineReply, Terminal};
use super::{EXIT_FAILURE, EXIT_OK};
use crate::protocol::StreamName;
use crate::session::{Completeness, Event, SessionInfo, SessionState};

const PS1: &str = ">>> ";
const PS2: &str = "... ";
/// How long code interrupted by Ctrl-C may take to stop before its worker is restarted.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

const HELP: &str = "\
Python statements run in an isolated worker process; variables persist between them.
  :help    this help
  :info    the session: worker pid, state, executions, memory, CPU time, namespace size
  :reset   a fresh worker with an empty namespace
Ctrl-C stops running code (KeyboardInterrupt; a second Ctrl-C restarts the worker) or clears
the line at the prompt. Ctrl-D or exit() leaves and shuts the worker down.
";

pub struct Console {
    backend: Arc<dyn ReplBackend>,
    term: Terminal,
    /// SIGINT. The editor holds the terminal in raw mode while it reads, so Ctrl-C is a key
    /// there (`LineReply::Interrupted`); this sees Ctrl-C only while code runs.
    interrupts: Signal,
    /// Where displayed images are saved (`--display-dir`).
    displays: DisplayFiles,
}

impl Console {
    pub fn new(
        backend: Arc<dyn ReplBackend>,
        term: Terminal,
        interrupts: Signal,
        displays: DisplayFiles,
    ) -> Console {
        Console {
            backend,
            term,
            interrupts,
            displays,
        }
    }

    /// Runs until Ctrl-D (or `exit()`), then shuts the session down. Returns the exit status.
    pub async fn run(mut self) -> i32 {
        self.banner().await;
        let status = self.read_eval_print().await;
        self.term.save_history().await;
        if let Err(e) = self.backend.shutdown().await {
            self.term
                .note(&format!("pyrepl3: shutting the session down: {e}"));
        }
        status
    }

    async fn banner(&mut self) {
        let (python, pid) = match self.backend.info().await {
            Ok(info) => (info.python_version, info.pid),
            Err(_) => (String::new(), None),
        };
        let pid = pid.map_or_else(|| "?".to_string(), |p| p.to_string());
        self.say(&format!(
            "pyrepl3 {} — Python {python} in an isolated worker (pid {pid}). :help for commands.",
            env!("CARGO_PKG_VERSION")
        ));
    }

    async fn read_eval_print(&mut self) -> i32 {
        // The lines of the statement being entered.
        let mut lines: Vec<String> = Vec::new();
        loop {
            self.term
                .request_code(if lines.is_empty() { PS1 } else { PS2 });
            let line = match self.term.reply().await {
                LineReply::Line(line) => line,
                LineReply::Interrupted => {
                    self.term.note("KeyboardInterrupt");
                    lines.clear();
                    continue;
                }
                LineReply::Eof => return EXIT_OK,
                LineReply::Failed(e) => {
                    self.term
                        .note(&format!("pyrepl3: cannot read the terminal: {e}"));
                    return EXIT_FAILURE;
                }
            };
            if lines.is_empty() {
                let trimmed = line.trim();
                if trimmed.is_empty() {
                    continue;
                }
                // No Python statement starts with `:`, so commands cannot shadow code.
                if let Some(command) = trimmed.strip_prefix(':') {
                    self.term.add_history(trimmed);
                    self.command(command.trim()).await;
                    continue;
                }
            }
            // A statement of several lines recalled from the history (or pasted) comes as one
            // line with newlines in it: it ended with the blank line that ran it before.
            let block = line.contains('\n');
            lines.push(line);
            let source = lines.join("\n");
            if !self.revive().await {
                lines.clear();
                continue;
            }
            let asked = if block {
                format!("{source}\n")
            } else {
                source.clone()
            };
            match self.backend.is_complete(asked).await {
                Ok(Completeness::Incomplete { .. }) => continue,
                // Invalid runs too: the worker reports the SyntaxError with its caret.
                Ok(Completeness::Complete | Completeness::Invalid) => {}
                Err(e) => self.term.note(&format!(
                    "pyrepl3: could not check whether the statement is complete ({e}); running it as it is"
                )),
            }
            lines.clear();
            // One history entry per statement, however many lines it took.
            self.term.add_history(source.trim_end());
            if let Some(status) = self.run_code(source).await {
                return status;
            }
        }
    }

    async fn command(&mut self, command: &str) {
        match command {
            "help" | "h" | "?" => self.term.write(StreamName::Stdout, HELP),
            "info" => match self.backend.info().await {
                Ok(info) => self.term.write(StreamName::Stdout, &describe(&info)),
                Err(e) => self.term.note(&format!("pyrepl3: no session info: {e}")),
            },
            "reset" => match self.backend.restart().await {
                Ok(()) => {
                    let pid = self.backend.info().await.ok().and_then(|i| i.pid);
                    let pid =
                        pid.map_or_else(String::new, |p| format!(" (a fresh worker, pid {p})"));
                    self.say(&format!("namespace cleared{pid}"));
                }
                Err(e) => self
                    .term
                    .note(&format!("pyrepl3: could not restart the worker: {e}")),
            },
            other => self.term.note(&format!(
                "pyrepl3: unknown command :{other} (:help lists the commands)"
            )),
        }
    }

    /// Before code goes to the session: if its worker died, a new one, and say that the state
    /// is gone. False when no working session could be had.
    async fn revive(&mut self) -> bool {
        let Some(reason) = self.backend.dead_reason().await else {
            return true;
        };
        match self.backend.restart().await {
            Ok(()) => {
                self.term.note(&format!(
                    "pyrepl3: the worker died ({reason}); started a new one — all state was lost"
                ));
                true
            }
            Err(e) => {
                self.term.note(&format!(
                    "pyrepl3: the worker died ({reason}) and a new one could not be started: {e}"
                ));
                false
            }
        }
    }

    /// Runs one statement to its end. `Some(status)` when the code asked to leave (`exit()`).
    async fn run_code(&mut self, code: String) -> Option<i32> {
        let mut running = match self.backend.execute(code).await {
            Ok(running) => running,
            Err(e) => {
                self.term.note(&format!("pyrepl3: {e}"));
                return None;
            }
        };
        // A Ctrl-C pressed between prompts, before this code started, is not meant for it.
        // One look at what is already pending; nothing waits here.
        let _ = self.interrupts.recv().now_or_never();
        let mut interrupts = 0u32;
        let mut pending_input: Option<String> = None;
        let mut exit = None;
        loop {
            tokio::select! {
                event = running.events.next() => {
                    let Some(event) = event else { break };
                    match event {
                        Event::Output { stream, data } => self.term.write(stream, &data),
                        Event::Input { input_id, prompt, password } => {
                            pending_input = Some(input_id);
                            self.term.request_input(&prompt, password);
                        }
                        Event::Display(display) => {
                            let shown = self.displays.render(&display.data, false);
                            self.term.write(StreamName::Stdout, &shown);
                        }
                        Event::Result { repr, bundle, .. } => {
                            if let Some(repr) = repr {
                                self.term.write(StreamName::Stdout, &format!("{repr}\n"));
                            }
                            if let Some(bundle) = bundle {
                                let shown = self.displays.render(&bundle.data, true);
                                self.term.write(StreamName::Stdout, &shown);
                            }
                        }
                        Event::Error { exception_type, exception_message, traceback, .. } => {
                            match exception_type.as_str() {
                                // Its message speaks of the protocol; say what it means here.
                                "ExecutionKilled" => self.term.note(
                                    "pyrepl3: the code did not stop; the worker was restarted and its state is lost",
                                ),
                                "SystemExit" => exit = Some(self.exit_status(&exception_message)),
                                _ => self.term.write(StreamName::Stderr, &traceback),
                            }
                        }
                    }
                }
                reply = self.term.reply(), if self.term.reading() => {
                    let Some(input_id) = pending_input.take() else { continue };
                    let answer = match reply {
                        // A terminal line, as `input()` and `sys.stdin` read it from a tty.
                        LineReply::Line(line) => Some(line + "\n"),
                        LineReply::Eof => None,
                        LineReply::Failed(e) => {
                            self.term.note(&format!("pyrepl3: cannot read the terminal: {e}"));
                            None
                        }
                        LineReply::Interrupted => {
                            self.interrupt(&running.execution_id, &mut interrupts);
                            continue;
                        }
                    };
                    // An unknown input id: the code ended meanwhile; nothing to answer.
                    let _ = self.backend.input_response(input_id, answer).await;
                }
                Some(()) = self.interrupts.recv() => {
                    self.interrupt(&running.execution_id, &mut interrupts);
                }
            }
        }
        if self.term.reading() {
            // The editor thread is still in that read and cannot be called back.
            self.term.note(
                "pyrepl3: the code ended while waiting for input; press Enter for the prompt",
            );
        }
        exit
    }

    /// Ctrl-C while code runs: KeyboardInterrupt, with the grace period after which the worker
    /// is restarted; the second one restarts it at once. Both run in the background, so the
    /// code's output (and its traceback) keep streaming meanwhile.
    fn interrupt(&mut self, execution_id: &str, count: &mut u32) {
        *count += 1;
        let backend = self.backend.clone();
        let id = execution_id.to_string();
        if *count == 1 {
            tokio::spawn(async move { backend.cancel(id, CANCEL_GRACE).await });
        } else {
            tokio::spawn(async move { backend.interrupt(id, true).await });
        }
    }

    /// The process exit status for `SystemExit(code)`, as the Python REPL computes it; its
    /// message, if any, goes to stderr.
    fn exit_status(&mut self, message: &str) -> i32 {
        match message {
            "" | "None" | "False" => EXIT_OK,
            "True" => EXIT_FAILURE,
            text => match text.parse::<i32>() {
                Ok(code) => code,
                Err(_) => {
                    self.term.note(text);
                    EXIT_FAILURE
                }
            },
        }
    }

    /// A line of pyrepl3's own on stdout.
    fn say(&mut self, text: &str) {
        self.term.write(StreamName::Stdout, &format!("{text}\n"));
    }
}

fn describe(info: &SessionInfo) -> String {
    let state = match info.state {
        SessionState::Starting => "starting",
        SessionState::Idle => "idle",
        SessionState::Busy => "busy",
        SessionState::Restarting => "restarting",
        SessionState::Dead => "dead",
        SessionState::ShuttingDown => "shutting down",
        SessionState::Closed => "closed",
    };
    let unknown = || "?".to_string();
    let pid = info.pid.map_or_else(unknown, |p| p.to_string());
    let rss = info
        .rss_bytes
        .map_or_else(unknown, |b| format!("{:.1}", b as f64 / 1e6));
    let cpu = info
        .cpu_time_secs
        .map_or_else(unknown, |s| format!("{s:.2}"));
    let names = match info.namespace_size {
        Some(1) => "1 name".to_string(),
        Some(n) => format!("{n} names"),
        None => "?".to_string(),
    };
    let mut text = format!(
        "session     {} ({state})\n\
         pid         {pid}\n\
         python      {}\n\
         executions  {} ({} failed)\n\
         restarts    {}\n\
         memory      {rss} MB resident\n\
         cpu         {cpu} s\n\
         namespace   {names}\n\
         cwd         {}\n",
        info.id,
        info.python_version,
        info.execution_count,
        info.error_count,
        info.restarts,
        info.cwd.display(),
    );
    if let Some(reason) = &info.dead_reason {
        text.push_str(&format!("died        {reason}\n"));
    }
    text
}
