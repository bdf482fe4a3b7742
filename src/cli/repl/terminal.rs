//! The REPL's terminal: the line editor and what is written between prompts.
//!
//! Reading a line blocks and cannot be cancelled, so the editor (rustyline: editing, history,
//! Ctrl-C and Ctrl-D as keys while it holds the terminal in raw mode) lives on a thread of its
//! own that reads one line per request; the async side keeps streaming output and handling
//! signals meanwhile. Replies carry the request's sequence number, so a reply nobody waits for
//! any more is dropped instead of being taken as the answer to a later question. This module
//! also owns the history file and remembers what is on the terminal's current line, so that
//! prompts start where the user expects them. Tab completes from the session's namespace
//! (through a [`CompleteFn`]); a statement of several lines is one history entry.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use rustyline::completion::Completer;
use rustyline::config::Configurer;
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{ColorMode, CompletionType, Config, Editor, Helper};
use tokio::sync::{mpsc, oneshot};

use crate::protocol::StreamName;

/// Entries kept in the history file.
const HISTORY_SIZE: usize = 10_000;
/// A partial output line up to this many characters is re-drawn as part of an `input()`
/// prompt (see [`Terminal::request_input`]); a longer one may have wrapped, so the prompt
/// starts on a line of its own instead.
const INLINE_PROMPT_LIMIT: usize = 60;

/// What a line is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// Code at the `>>> ` / `... ` prompt: kept in the history.
    Code,
    /// An answer to `input()`: not kept.
    Input,
    /// An answer to `getpass()`: not shown, not kept.
    Password,
}

/// The outcome of reading one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineReply {
    Line(String),
    /// Ctrl-C.
    Interrupted,
    /// Ctrl-D on an empty line, or the end of standard input.
    Eof,
    /// The terminal could not be read; the REPL cannot go on.
    Failed(String),
}

enum Request {
    Read {
        seq: u64,
        prompt: String,
        kind: ReadKind,
    },
    SaveHistory {
        done: oneshot::Sender<()>,
    },
    /// A whole statement (all its lines) or command, as one entry.
    AddHistory(String),
}

/// Asks the session how the text before the cursor could go on: the end of the text the
/// matches replace, and the matches; `None` when it cannot be asked. Called on the editor's
/// thread, so it may block.
pub type CompleteFn = Box<dyn Fn(&str) -> Option<(String, Vec<String>)> + Send>;

/// The async side's handle on the terminal.
pub struct Terminal {
    requests: std::sync::mpsc::Sender<Request>,
    replies: mpsc::UnboundedReceiver<(u64, LineReply)>,
    next_seq: u64,
    /// The read whose reply is awaited; at most one at a time.
    outstanding: Option<u64>,
    /// Output on the terminal's current line, after the last line break.
    partial_line: String,
    /// Both stdin and stdout are a terminal, so the editor draws the prompts.
    interactive: bool,
}

impl Terminal {
    /// Creates the line editor, loads the history (a failure is a warning) and starts the
    /// editor's thread.
    pub fn start(history: Option<PathBuf>, complete: CompleteFn) -> Result<Terminal, String> {
        let config = Config::builder()
            .max_history_size(HISTORY_SIZE)
            .map_err(|e| e.to_string())?
            .auto_add_history(false)
            // As Python's REPL: Tab completes what all matches share, a second Tab lists them.
            .completion_type(CompletionType::List)
            .build();
        let mut editor: Editor<LineHelper, FileHistory> =
            keeping_sigint(|| Editor::with_config(config))
                .map_err(|e| format!("cannot use the terminal: {e}"))?;
        editor.set_helper(Some(LineHelper {
            kind: ReadKind::Code,
            complete,
        }));
        if let Some(path) = &history {
            match editor.load_history(path) {
                Ok(()) => {}
                Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn_history("read", path, &e),
            }
        }
        let (requests, wanted) = std::sync::mpsc::channel();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("pyrepl3-readline".into())
            .spawn(move || serve(editor, wanted, reply_tx, history))
            .map_err(|e| format!("cannot start the line editor's thread: {e}"))?;
        Ok(Terminal {
            requests,
            replies,
            next_seq: 0,
            outstanding: None,
            partial_line: String::new(),
            interactive: std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
        })
    }

    /// Asks for a line of code at `prompt`, on a line of its own.
    pub fn request_code(&mut self, prompt: &str) {
        self.fresh_line();
        self.request(prompt.to_string(), ReadKind::Code);
    }

    /// Asks for the answer to `input(prompt)`. The prompt goes right after what the code
    /// printed on the current line, as in Python: that text is handed to the editor as part
    /// of its prompt, because the editor redraws its whole line (from the line's start) as
    /// the user edits, and would otherwise wipe it.
    pub fn request_input(&mut self, prompt: &str, password: bool) {
        let partial = std::mem::take(&mut self.partial_line);
        let inline = self.interactive
            && !partial.is_empty()
            && partial.chars().count() <= INLINE_PROMPT_LIMIT
            && !partial.chars().any(char::is_control);
        let full_prompt = if inline {
            crate::cli::write_flushed(StreamName::Stdout, b"\r");
            format!("{partial}{prompt}")
        } else {
            if self.interactive && !partial.is_empty() {
                crate::cli::write_flushed(StreamName::Stdout, b"\n");
            }
            prompt.to_string()
        };
        let kind = if password {
            ReadKind::Password
        } else {
            ReadKind::Input
        };
        self.request(full_prompt, kind);
    }

    fn request(&mut self, prompt: String, kind: ReadKind) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.outstanding = Some(seq);
        // A send error means the thread is gone; `reply` reports it.
        let _ = self.requests.send(Request::Read { seq, prompt, kind });
    }

    /// Keeps `entry` (a whole statement, its lines joined) in the history.
    pub fn add_history(&mut self, entry: &str) {
        // A send error means the thread is gone; the next read reports it.
        let _ = self.requests.send(Request::AddHistory(entry.to_string()));
    }

    /// Whether a line has been asked for and not answered yet.
    pub fn reading(&self) -> bool {
        self.outstanding.is_some()
    }

    /// The answer to the outstanding request. Cancel-safe: a reply is only taken once it is
    /// complete, so this can be raced in a `select!`.
    pub async fn reply(&mut self) -> LineReply {
        loop {
            let Some((seq, reply)) = self.replies.recv().await else {
                self.outstanding = None;
                return LineReply::Failed("the line editor's thread ended".into());
            };
            if Some(seq) == self.outstanding {
                self.outstanding = None;
                // The user pressed Enter (or Ctrl-C, Ctrl-D): the cursor is on a new line.
                self.partial_line.clear();
                return reply;
            }
            // An answer to a question withdrawn meanwhile (its code ended): dropped.
        }
    }

    /// Writes the code's output at once (it streams as it is produced).
    pub fn write(&mut self, stream: StreamName, text: &str) {
        if text.is_empty() {
            return;
        }
        crate::cli::write_flushed(stream, text.as_bytes());
        match text.rfind('\n') {
            Some(at) => {
                self.partial_line.clear();
                self.partial_line.push_str(&text[at + 1..]);
            }
            None => self.partial_line.push_str(text),
        }
    }

    /// A message of pyrepl3's own, on stderr, on a line of its own.
    pub fn note(&mut self, text: &str) {
        self.fresh_line();
        crate::cli::write_flushed(StreamName::Stderr, format!("{text}\n").as_bytes());
    }

    /// Ends the current output line if the code left one open, so prompts and messages start
    /// at the left margin (where the editor assumes its prompt begins).
    fn fresh_line(&mut self) {
        if !self.partial_line.is_empty() {
            self.partial_line.clear();
            crate::cli::write_flushed(StreamName::Stdout, b"\n");
        }
    }

    /// Appends this run's new history entries to the history file. Skipped while a line is
    /// still being read (the thread is busy with it; nothing new to save).
    pub async fn save_history(&mut self) {
        if self.reading() {
            return;
        }
        let (done, saved) = oneshot::channel();
        if self.requests.send(Request::SaveHistory { done }).is_ok() {
            let _ = saved.await;
        }
    }
}

/// Runs `f` and puts back the SIGINT disposition it found. rustyline installs a SIGINT
/// handler of its own when an editor is created, for its whole life; it would take Ctrl-C
/// away from the REPL's handler (tokio's) while code runs, and a SIGINT it saw then would be
/// replayed as Ctrl-C into a later prompt. The editor does not need it: it reads in raw mode,
/// where Ctrl-C is a key. (Its `signal-hook` feature leaves SIGINT alone, but then it stops
/// seeing keys typed ahead until another key arrives.)
fn keeping_sigint<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigaction with a null new action only reads the current one into `saved`,
    // a zeroed (valid) sigaction struct.
    let mut saved: libc::sigaction = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sigaction(libc::SIGINT, std::ptr::null(), &mut saved) } == 0;
    let value = f();
    if read {
        // SAFETY: re-installs exactly the disposition read above (default, or the handler of
        // signal-hook-registry, which lives for the whole process).
        unsafe { libc::sigaction(libc::SIGINT, &saved, std::ptr::null_mut()) };
    }
    value
}

fn warn_history(what: &str, path: &Path, error: &ReadlineError) {
    eprintln!(
        "pyrepl3: warning: could not {what} the history file {}: {error}",
        path.display()
    );
}

/// Where the history is kept: `$XDG_DATA_HOME/pyrepl3/history`, else
/// `~/.local/share/pyrepl3/history`. The directory is created; `None` (with a warning) when
/// there is no usable place.
pub fn history_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").map(PathBuf::from) {
        // The XDG spec: a relative path is invalid and must be ignored.
        Some(dir) if dir.is_absolute() => dir,
        _ => {
            let home = std::env::var_os("HOME").map(PathBuf::from)?;
            if !home.is_absolute() {
                return None;
            }
            home.join(".local").join("share")
        }
    };
    let dir = base.join("pyrepl3");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "pyrepl3: warning: no history: cannot create {}: {e}",
            dir.display()
        );
        return None;
    }
    Some(dir.join("history"))
}

/// The editor's thread: one blocking read per request, in order.
fn serve(
    mut editor: Editor<LineHelper, FileHistory>,
    requests: std::sync::mpsc::Receiver<Request>,
    replies: mpsc::UnboundedSender<(u64, LineReply)>,
    history: Option<PathBuf>,
) {
    // Without a terminal the editor reads plain lines and shows no prompt: `input()`'s
    // prompt is shown all the same (as `pyrepl3 exec` does), `>>> ` is not.
    let tty = std::io::stdin().is_terminal();
    // Blocks until the async side asks for something or drops its handle.
    while let Ok(request) = requests.recv() {
        match request {
            Request::Read { seq, prompt, kind } => {
                let password = kind == ReadKind::Password;
                if let Some(helper) = editor.helper_mut() {
                    helper.kind = kind;
                }
                // Masking works through highlighting, which must then be on whatever the
                // terminal claims to support.
                editor.set_color_mode(if password {
                    ColorMode::Forced
                } else {
                    ColorMode::Enabled
                });
                if !tty && kind != ReadKind::Code {
                    crate::cli::write_flushed(StreamName::Stdout, prompt.as_bytes());
                }
                let reply = match editor.readline(&prompt) {
                    Ok(line) => LineReply::Line(line),
                    Err(ReadlineError::Interrupted) => LineReply::Interrupted,
                    Err(ReadlineError::Eof) => LineReply::Eof,
                    Err(e) => LineReply::Failed(e.to_string()),
                };
                if replies.send((seq, reply)).is_err() {
                    return;
                }
            }
            Request::AddHistory(entry) => {
                // Refused entries (duplicates of the last one) are fine.
                let _ = editor.add_history_entry(entry);
            }
            Request::SaveHistory { done } => {
                if let Some(path) = &history {
                    if let Err(e) = editor.append_history(path) {
                        warn_history("write", path, &e);
                    }
                }
                let _ = done.send(());
            }
        }
    }
}

/// Tab indents at the start of a line and completes from the namespace elsewhere in code;
/// a password is drawn as blanks.
struct LineHelper {
    /// What the line being read is for.
    kind: ReadKind,
    complete: CompleteFn,
}

impl LineHelper {
    fn masking(&self) -> bool {
        self.kind == ReadKind::Password
    }
}

const INDENT: &str = "    ";

impl Completer for LineHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        let Some(before) = line.get(..pos) else {
            return Ok((pos, Vec::new()));
        };
        if self.kind != ReadKind::Code {
            return Ok((pos, Vec::new())); // an answer to input(): nothing to complete from
        }
        if before.trim().is_empty() {
            return Ok((pos, vec![INDENT.to_string()]));
        }
        match (self.complete)(before) {
            Some((token, matches)) if before.ends_with(token.as_str()) => {
                Ok((pos - token.len(), matches))
            }
            _ => Ok((pos, Vec::new())),
        }
    }
}

impl Hinter for LineHelper {
    type Hint = String;
}

impl Validator for LineHelper {}

impl Highlighter for LineHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if self.masking() {
            // Same width, so the editor's cursor arithmetic still holds.
            Cow::Owned(" ".repeat(line.chars().count()))
        } else {
            Cow::Borrowed(line)
        }
    }

    fn highlight_char(&self, _line: &str, _pos: usize, kind: CmdKind) -> bool {
        // While masking, every edit redraws through `highlight`: no typed character is
        // ever echoed as it is.
        self.masking() && kind != CmdKind::MoveCursor
    }
}

impl Helper for LineHelper {}
