//! `input()`, `getpass` and `sys.stdin` in a session: requests answered in turn, EOF, unknown
//! or repeated answers rejected.

mod common;

use common::*;
use pyrepl3::{Error, Event, ExecuteOptions};

#[tokio::test]
async fn two_inputs_answered_in_turn_and_unknown_ids_rejected() {
    let s = start().await;
    let mut ex = s.execute(
        "print('before')\na = input('first? ')\nb = input('second? ')\nprint(a + '|' + b)",
        ExecuteOptions::default(),
    );
    let mut prompts = Vec::new();
    let mut stdout = String::new();
    let mut answers = vec!["two", "one"];
    let terminal = guard(async {
        loop {
            match ex.next_event().await.expect("terminal event") {
                Event::Output { data, .. } => stdout.push_str(&data),
                Event::Input {
                    input_id,
                    prompt,
                    password,
                } => {
                    assert!(!password);
                    if prompts.is_empty() {
                        assert_eq!(stdout, "before\n", "output before input() arrives first");
                    }
                    prompts.push(prompt);
                    let answer = answers.pop().unwrap();
                    s.input_response(&input_id, answer).await.unwrap();
                    // Answering twice is an error.
                    let again = s.input_response(&input_id, "x").await;
                    assert!(matches!(again, Err(Error::UnknownInput(_))), "{again:?}");
                }
                t => break t,
            }
        }
    })
    .await;
    assert!(matches!(terminal, Event::Result { .. }), "{terminal:?}");
    assert_eq!(prompts, vec!["first? ", "second? "]);
    assert_eq!(stdout, "before\none|two\n");
    let unknown = s.input_response("no-such-input", "x").await;
    assert!(
        matches!(unknown, Err(Error::UnknownInput(_))),
        "{unknown:?}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn input_eof_getpass_and_stdin_readline() {
    let s = start().await;
    let mut ex = s.execute(
        "import getpass, sys\npw = getpass.getpass()\nline = sys.stdin.readline()\ntry:\n    input()\nexcept EOFError:\n    print('eof')\n(pw, line)",
        ExecuteOptions::default(),
    );
    let mut kinds = Vec::new();
    let end = guard(async {
        loop {
            match ex.next_event().await.expect("terminal") {
                Event::Input {
                    input_id, password, ..
                } => {
                    kinds.push(password);
                    match kinds.len() {
                        1 => s.input_response(&input_id, "secret").await.unwrap(),
                        2 => s.input_response(&input_id, "a line").await.unwrap(),
                        _ => s.input_eof(&input_id).await.unwrap(),
                    }
                }
                Event::Output { data, .. } => assert_eq!(data, "eof\n"),
                t => break t,
            }
        }
    })
    .await;
    assert_eq!(kinds, vec![true, false, false]);
    match end {
        Event::Result { repr, .. } => assert_eq!(repr.as_deref(), Some("('secret', 'a line\\n')")),
        other => panic!("{other:?}"),
    }
    s.shutdown().await.unwrap();
}

/// Shutting a session down while its code waits in `input()` gives that code end-of-file:
/// its `except EOFError` runs, and what it prints arrives, before the session ends.
#[tokio::test]
async fn shutdown_during_input_raises_eof_error_in_the_code_first() {
    let s = start().await;
    let mut ex = s.execute(
        "try:\n    input('name? ')\nexcept EOFError:\n    print('cleaned up', flush=True)\n    'eof'",
        ExecuteOptions::default(),
    );
    let Some(Event::Input { .. }) = guard(ex.next_event()).await else {
        panic!("expected an input request")
    };
    guard(s.shutdown()).await.unwrap();
    let out = guard(ex.outcome()).await;
    assert_eq!(out.stdout, "cleaned up\n", "{out:?}");
}

/// After `end_input` the waiting `input()` and every later one get end-of-file at once:
/// no second input request reaches the caller, and the session lives on.
#[tokio::test]
async fn end_input_gives_the_waiting_and_later_inputs_end_of_file() {
    let s = start().await;
    let mut ex = s.execute(
        "for prompt in ('a? ', 'b? '):\n    try:\n        input(prompt)\n    except EOFError:\n        print('EOF at', prompt, flush=True)\n'done'",
        ExecuteOptions::default(),
    );
    let Some(Event::Input { .. }) = guard(ex.next_event()).await else {
        panic!("expected an input request")
    };
    guard(s.end_input()).await.unwrap();
    let mut stdout = String::new();
    loop {
        match guard(ex.next_event()).await {
            Some(Event::Output { data, .. }) => stdout.push_str(&data),
            Some(Event::Result { repr, .. }) => {
                assert_eq!(repr.as_deref(), Some("'done'"));
                break;
            }
            other => panic!("unexpected {other:?} after {stdout:?}"),
        }
    }
    assert_eq!(stdout, "EOF at a? \nEOF at b? \n");
    let out = guard(
        s.execute("input('c? ')", ExecuteOptions::default())
            .outcome(),
    )
    .await;
    assert!(format!("{out:?}").contains("EOFError"), "{out:?}");
    s.shutdown().await.unwrap();
}

/// The code's own `stdin` lines still answer after `end_input` (shutdown): only an
/// `input()` they do not cover gets end-of-file. Each answered one is still reported.
#[tokio::test]
async fn stdin_given_with_the_code_answers_even_after_end_input() {
    let s = start().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let made = std::ffi::CString::new(gate.to_str().unwrap()).unwrap();
    // SAFETY: a plain mkfifo(3) of a path in a fresh temporary directory.
    assert_eq!(unsafe { libc::mkfifo(made.as_ptr(), 0o600) }, 0);
    let code = format!(
        "print('ready', flush=True)\nopen({gate:?}).read()\na = input('a? ')\n\
         try:\n    input('b? ')\nexcept EOFError:\n    print('EOF at b', flush=True)\na"
    );
    let mut ex = s.execute(
        code,
        ExecuteOptions {
            stdin: vec!["kept".to_string()],
            ..ExecuteOptions::default()
        },
    );
    let Some(Event::Output { data, .. }) = guard(ex.next_event()).await else {
        panic!("expected the code's first line")
    };
    assert_eq!(data, "ready\n");
    // Shutdown's end of input, then the code goes on to its input() calls.
    guard(s.end_input()).await.unwrap();
    // A thread of its own, not the runtime's blocking pool: were the code never to open the
    // fifo, the write would block for good, and the runtime would wait for it at its end
    // instead of the guard failing the test.
    let (opened_tx, opened) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = opened_tx.send(std::fs::write(&gate, "go"));
    });
    let mut prompts = Vec::new();
    let mut stdout = String::new();
    let repr = guard(async {
        loop {
            match ex.next_event().await.expect("terminal event") {
                Event::Input { prompt, .. } => prompts.push(prompt),
                Event::Output { data, .. } => stdout.push_str(&data),
                Event::Result { repr, .. } => return repr,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    guard(opened).await.unwrap().unwrap();
    assert_eq!(repr.as_deref(), Some("'kept'"));
    assert_eq!(
        prompts,
        ["a? "],
        "the answered input is reported, the EOF one is not"
    );
    assert_eq!(stdout, "EOF at b\n");
    s.shutdown().await.unwrap();
}
