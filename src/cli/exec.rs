//! `pyrepl3 exec` and `pyrepl3 run`: one execution (code, or a script file) in a fresh session,
//! wired to this process's stdio and signals, in its working directory. Output is written as it
//! arrives; `input()` prompts are answered from stdin (a password without echo); Ctrl-C cancels
//! the code (a second Ctrl-C restarts the worker at once).

use std::io::{BufRead, Read};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::displays::DisplayFiles;
use super::{ExecArgs, RunArgs, RunOptions};
use crate::protocol::StreamName;
use crate::service::ClientEvent;
use crate::{CodeMode, Event, ExecuteOptions, Execution, Session, SessionConfig};

const EXIT_OK: i32 = 0;
const EXIT_EXCEPTION: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_TIMEOUT: i32 = 124;
const EXIT_INTERRUPTED: i32 = 130;
/// How long cancelled code may take to stop before its worker is killed.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// What runs: code (`exec`) or a script (`run`).
enum Work {
    Code(String),
    Script {
        /// The script's absolute path (its `__file__`).
        path: String,
        source: Vec<u8>,
        /// `sys.argv`: the path as given, then the arguments.
        argv: Vec<String>,
    },
}

/// A script larger than this is refused (it travels in one protocol frame, base64-encoded).
const MAX_SCRIPT_BYTES: usize = 8 << 20;

pub async fn run(args: ExecArgs) -> i32 {
    let code = if args.code == "-" {
        let mut code = String::new();
        if let Err(e) = std::io::stdin().read_to_string(&mut code) {
            eprintln!("pyrepl3: could not read the code from standard input: {e}");
            return EXIT_USAGE;
        }
        code
    } else {
        args.code.clone()
    };
    execute(&args.options, Work::Code(code)).await
}

pub async fn run_file(args: RunArgs) -> i32 {
    let Some((file, script_args)) = args.script.split_first() else {
        eprintln!("pyrepl3: run needs a FILE");
        return EXIT_USAGE;
    };
    let file = std::path::Path::new(file);
    let shown = file.display();
    let source = match std::fs::read(file) {
        Ok(source) if source.len() > MAX_SCRIPT_BYTES => {
            eprintln!("pyrepl3: {shown} is over {MAX_SCRIPT_BYTES} bytes: too large to run");
            return EXIT_USAGE;
        }
        Ok(source) => source,
        Err(e) => {
            eprintln!("pyrepl3: can't open file '{shown}': {e}");
            return EXIT_USAGE;
        }
    };
    let path = match std::path::absolute(file) {
        Ok(path) => path.to_string_lossy().into_owned(),
        Err(e) => {
            eprintln!("pyrepl3: can't resolve '{shown}': {e}");
            return EXIT_USAGE;
        }
    };
    let argv = std::iter::once(file.as_os_str())
        .chain(script_args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let work = Work::Script { path, source, argv };
    execute(&args.options, work).await
}

async fn execute(options: &RunOptions, work: Work) -> i32 {
    let timeout = match options.timeout {
        None => None,
        Some(secs) if secs > 0.0 && crate::time::duration_from_secs(secs).is_some() => {
            crate::time::duration_from_secs(secs)
        }
        Some(secs) => {
            eprintln!("pyrepl3: --timeout must be a positive number of seconds, not {secs}");
            return EXIT_USAGE;
        }
    };
    let start_timeout = options.start_timeout;
    let Some(start_timeout) =
        crate::time::duration_from_secs(start_timeout).filter(|_| start_timeout > 0.0)
    else {
        eprintln!(
            "pyrepl3: --start-timeout must be a positive number of seconds, not {start_timeout}"
        );
        return EXIT_USAGE;
    };
    let mut interrupts = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pyrepl3: could not install the Ctrl-C handler: {e}");
            return EXIT_USAGE;
        }
    };
    let mut config = SessionConfig {
        python: options.python.clone(),
        start_timeout,
        env: options.env.clone(),
        // Images go to local files: any the worker can send (its frame) is kept.
        max_display_bytes: crate::protocol::DEFAULT_MAX_FRAME_LEN,
        ..SessionConfig::default()
    };
    options.sandbox.apply(&mut config);
    // As `python -c` and `python FILE`: in the caller's directory. A sandbox gets a directory
    // of its own: it is there to keep the code away from the caller's files.
    if !options.temp_dir && config.sandbox.is_none() {
        match std::env::current_dir() {
            Ok(dir) => config.cwd = Some(dir),
            Err(e) => {
                eprintln!("pyrepl3: the current directory is not usable ({e}); --temp-dir runs in a new one");
                return EXIT_USAGE;
            }
        }
    }
    let session = match Session::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pyrepl3: {e}");
            return EXIT_USAGE;
        }
    };
    let execute_options = ExecuteOptions {
        timeout,
        mode: CodeMode::Script, // as `python -c` runs it
        ..ExecuteOptions::default()
    };
    let execution = match work {
        Work::Code(code) => session.execute(code, execute_options),
        Work::Script { path, source, argv } => {
            session.run_script(&path, &source, &argv, execute_options)
        }
    };
    let mut displays = DisplayFiles::new(options.display_dir.clone());
    let status = drive(
        &session,
        execution,
        options.json,
        &mut displays,
        &mut interrupts,
    )
    .await;
    terminal::restore_echo();
    if let Err(e) = session.shutdown().await {
        eprintln!("pyrepl3: shutting the session down: {e}");
    }
    status
}

async fn drive(
    session: &Session,
    mut execution: Execution,
    json: bool,
    displays: &mut DisplayFiles,
    interrupts: &mut tokio::signal::unix::Signal,
) -> i32 {
    let execution_id = execution.id().to_string();
    let stdin_lines = StdinLines::start();
    let mut interrupted = 0u32;
    let mut reader_gone = false;
    let mut status = EXIT_EXCEPTION;
    let mut pending_input: Option<String> = None;
    let mut lines = stdin_lines.lines;
    loop {
        tokio::select! {
            event = execution.next_event() => {
                let Some(event) = event else { break };
                if json {
                    print_json(&event, &execution_id);
                }
                match event {
                    Event::Output { stream, data } => {
                        if !json && !super::write_checked(stream, data.as_bytes()) && !reader_gone {
                            // As python's print raises BrokenPipeError: the code is stopped
                            // (in the background, so events keep being read meanwhile).
                            reader_gone = true;
                            let session = session.clone();
                            let id = execution_id.clone();
                            tokio::spawn(async move { session.cancel(&id, CANCEL_GRACE).await });
                        }
                    }
                    Event::Input { input_id, prompt, password } => {
                        pending_input = Some(input_id);
                        let prompt = if json { String::new() } else { prompt };
                        let _ = stdin_lines.requests.send(LineRequest { prompt, password });
                    }
                    Event::Display(display) => {
                        if !json && !reader_gone {
                            let shown = displays.render(&display.data, false);
                            super::write_flushed(StreamName::Stdout, shown.as_bytes());
                        }
                    }
                    Event::Result { repr, bundle, .. } => {
                        if let (Some(repr), false) = (repr, json) {
                            super::write_flushed(StreamName::Stdout, format!("{repr}\n").as_bytes());
                        }
                        if let (Some(bundle), false) = (bundle, json) {
                            let shown = displays.render(&bundle.data, true);
                            super::write_flushed(StreamName::Stdout, shown.as_bytes());
                        }
                        status = EXIT_OK;
                    }
                    // `sys.exit()`: the status `python` would exit with, no traceback; a
                    // message instead of a number is printed, as `python` prints it.
                    Event::Error { exit_code: Some(code), exception_message, .. } => {
                        // The message of `sys.exit(code)` is the code itself unless it was
                        // text (then the status is 1).
                        let text = code == 1
                            && !["", "1", "None", "True"].contains(&exception_message.as_str());
                        if text && !json {
                            super::write_flushed(
                                StreamName::Stderr,
                                format!("{exception_message}\n").as_bytes(),
                            );
                        }
                        status = i32::from(code);
                    }
                    Event::Error { exception_type, traceback, .. } => {
                        if !json && !reader_gone {
                            super::write_flushed(StreamName::Stderr, traceback.as_bytes());
                        }
                        status = match exception_type.as_str() {
                            "ExecutionTimeout" => EXIT_TIMEOUT,
                            // As python exits on an uncaught KeyboardInterrupt.
                            "KeyboardInterrupt" => EXIT_INTERRUPTED,
                            _ => EXIT_EXCEPTION,
                        };
                    }
                }
            }
            line = lines.recv(), if pending_input.is_some() => {
                let Some(input_id) = pending_input.take() else { continue };
                // Unknown input: the execution ended meanwhile (e.g. cancelled); nothing to do.
                let _ = session.answer_input(&input_id, line.flatten()).await;
            }
            _ = interrupts.recv() => {
                interrupted += 1;
                let session = session.clone();
                let id = execution_id.clone();
                if interrupted == 1 {
                    // Cancel in the background so output keeps streaming meanwhile.
                    tokio::spawn(async move { session.cancel(&id, CANCEL_GRACE).await });
                } else {
                    tokio::spawn(async move { session.interrupt(&id, true).await });
                }
            }
        }
    }
    if reader_gone {
        eprintln!(
            "pyrepl3: the reader of the output went away (a broken pipe); the code was stopped"
        );
        return EXIT_EXCEPTION;
    }
    // Ctrl-C that the code caught, and then it ended well: its status, as with python.
    if interrupted > 0 && status == EXIT_EXCEPTION {
        EXIT_INTERRUPTED
    } else {
        status
    }
}

/// One event per line, as the service's clients see it (without `seq`: there is no log).
fn print_json(event: &Event, execution_id: &str) {
    match serde_json::to_string(&ClientEvent::from_session(execution_id, event)) {
        Ok(line) => super::write_flushed(StreamName::Stdout, format!("{line}\n").as_bytes()),
        Err(e) => eprintln!("pyrepl3: could not encode an event as JSON: {e}"),
    }
}

/// Lines of this process's stdin, read one per request by a thread (reading stdin blocks and
/// cannot be cancelled; a thread keeps a half-read line safe across `select!` rounds). A
/// request for a password turns the terminal's echo off while its line is typed.
struct StdinLines {
    requests: std::sync::mpsc::Sender<LineRequest>,
    /// `None` inside: end of file or a read error.
    lines: mpsc::UnboundedReceiver<Option<String>>,
}

/// One line wanted: the prompt to show first, and whether it is a password.
struct LineRequest {
    prompt: String,
    password: bool,
}

impl StdinLines {
    fn start() -> Self {
        let (requests, wanted) = std::sync::mpsc::channel::<LineRequest>();
        let (line_tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            while let Ok(LineRequest { prompt, password }) = wanted.recv() {
                // The echo goes off before the prompt shows, so nothing typed after it echoes.
                let hidden = password && terminal::echo_off();
                super::write_flushed(StreamName::Stdout, prompt.as_bytes());
                let mut line = String::new();
                let read = stdin.lock().read_line(&mut line);
                if hidden {
                    terminal::restore_echo();
                    // The Enter that ended the line was not echoed either (as getpass does).
                    super::write_flushed(StreamName::Stdout, b"\n");
                }
                let answer = match read {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(line),
                };
                if line_tx.send(answer).is_err() {
                    break;
                }
            }
        });
        StdinLines { requests, lines }
    }
}

/// The terminal on stdin, for a password typed without echo: its settings are saved before the
/// echo is turned off and put back after the line, or at exit when the line never came.
mod terminal {
    use std::sync::Mutex;

    /// The settings before `echo_off`, while the echo is off.
    static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

    /// Turns the echo off if stdin is a terminal; whether it did.
    pub fn echo_off() -> bool {
        // SAFETY: isatty, tcgetattr and tcsetattr on fd 0 with a termios owned here.
        unsafe {
            if libc::isatty(0) != 1 {
                return false;
            }
            let mut settings: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut settings) != 0 {
                return false;
            }
            let saved = settings;
            settings.c_lflag &= !(libc::ECHO | libc::ECHONL);
            // TCSANOW, not getpass's TCSAFLUSH: what was typed ahead is kept for the line.
            if libc::tcsetattr(0, libc::TCSANOW, &settings) != 0 {
                return false;
            }
            if let Ok(mut slot) = SAVED.lock() {
                *slot = Some(saved);
            }
            true
        }
    }

    /// Puts back the settings `echo_off` saved, if it did.
    pub fn restore_echo() {
        let saved = SAVED.lock().ok().and_then(|mut slot| slot.take());
        if let Some(saved) = saved {
            // SAFETY: tcsetattr on fd 0 with settings tcgetattr gave.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &saved) };
        }
    }
}
