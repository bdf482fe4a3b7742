//! `pyrepl3 exec`: one execution in a fresh session, wired to this process's stdio and
//! signals. Output is written as it arrives; `input()` prompts are answered from stdin;
//! Ctrl-C cancels the code (a second Ctrl-C restarts the worker at once).

use std::io::{BufRead, Read};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::ExecArgs;
use crate::protocol::StreamName;
use crate::service::ClientEvent;
use crate::{Event, ExecuteOptions, Session, SessionConfig};

const EXIT_OK: i32 = 0;
const EXIT_EXCEPTION: i32 = 1;
const EXIT_USAGE: i32 = 2;
const EXIT_TIMEOUT: i32 = 124;
const EXIT_INTERRUPTED: i32 = 130;
/// How long cancelled code may take to stop before its worker is killed.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

pub async fn run(args: ExecArgs) -> i32 {
    let timeout = match args.timeout {
        None => None,
        Some(secs) if secs > 0.0 && crate::time::duration_from_secs(secs).is_some() => {
            crate::time::duration_from_secs(secs)
        }
        Some(secs) => {
            eprintln!("pyrepl3: --timeout must be a positive number of seconds, not {secs}");
            return EXIT_USAGE;
        }
    };
    let Some(start_timeout) =
        crate::time::duration_from_secs(args.start_timeout).filter(|_| args.start_timeout > 0.0)
    else {
        eprintln!(
            "pyrepl3: --start-timeout must be a positive number of seconds, not {}",
            args.start_timeout
        );
        return EXIT_USAGE;
    };
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
    let mut interrupts = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pyrepl3: could not install the Ctrl-C handler: {e}");
            return EXIT_USAGE;
        }
    };
    let mut config = SessionConfig {
        python: args.python.clone(),
        start_timeout,
        ..SessionConfig::default()
    };
    args.sandbox.apply(&mut config);
    let session = match Session::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pyrepl3: {e}");
            return EXIT_USAGE;
        }
    };
    let status = drive(&session, code, timeout, args.json, &mut interrupts).await;
    if let Err(e) = session.shutdown().await {
        eprintln!("pyrepl3: shutting the session down: {e}");
    }
    status
}

async fn drive(
    session: &Session,
    code: String,
    timeout: Option<Duration>,
    json: bool,
    interrupts: &mut tokio::signal::unix::Signal,
) -> i32 {
    let mut execution = session.execute(
        code,
        ExecuteOptions {
            timeout,
            ..ExecuteOptions::default()
        },
    );
    let execution_id = execution.id().to_string();
    let stdin_lines = StdinLines::start();
    let mut interrupted = 0u32;
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
                        if !json {
                            super::write_flushed(stream, data.as_bytes());
                        }
                    }
                    Event::Input { input_id, prompt, .. } => {
                        if !json {
                            super::write_flushed(StreamName::Stdout, prompt.as_bytes());
                        }
                        pending_input = Some(input_id);
                        let _ = stdin_lines.requests.send(());
                    }
                    Event::Result { repr, .. } => {
                        if let (Some(repr), false) = (repr, json) {
                            super::write_flushed(StreamName::Stdout, format!("{repr}\n").as_bytes());
                        }
                        status = EXIT_OK;
                    }
                    // `sys.exit()`: the status `python` would exit with, no traceback; a
                    // message instead of a number is printed, as `python` prints it.
                    Event::Error { exit_code: Some(code), exception_message, .. } => {
                        // The message of `sys.exit(code)` is the code itself unless it was
                        // text (then the status is 1).
                        let text = code == 1
                            && !["", "1", "None"].contains(&exception_message.as_str());
                        if text && !json {
                            super::write_flushed(
                                StreamName::Stderr,
                                format!("{exception_message}\n").as_bytes(),
                            );
                        }
                        status = i32::from(code);
                    }
                    Event::Error { exception_type, traceback, .. } => {
                        if !json {
                            super::write_flushed(StreamName::Stderr, traceback.as_bytes());
                        }
                        status = if exception_type == "ExecutionTimeout" {
                            EXIT_TIMEOUT
                        } else {
                            EXIT_EXCEPTION
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
    if interrupted > 0 {
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
/// cannot be cancelled; a thread keeps a half-read line safe across `select!` rounds).
struct StdinLines {
    requests: std::sync::mpsc::Sender<()>,
    /// `None` inside: end of file or a read error.
    lines: mpsc::UnboundedReceiver<Option<String>>,
}

impl StdinLines {
    fn start() -> Self {
        let (requests, wanted) = std::sync::mpsc::channel::<()>();
        let (line_tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            while wanted.recv().is_ok() {
                let mut line = String::new();
                let answer = match stdin.lock().read_line(&mut line) {
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
