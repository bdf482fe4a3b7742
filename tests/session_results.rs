//! What code run in a session evaluates to, as in the interactive interpreter: trailing
//! expressions, `_`, a persistent namespace, top-level await, exceptions and syntax errors
//! that keep the session, an interactive interpreter's argv and sys.path.

mod common;

use common::*;
use pyrepl3::{Event, SessionState};

#[tokio::test]
async fn trailing_expression_underscore_and_persistent_namespace() {
    let s = start().await;
    assert_eq!(eval(&s, "1+1").await.as_deref(), Some("2"));
    assert_eq!(eval(&s, "x = 5").await, None);
    assert_eq!(eval(&s, "x * 2").await.as_deref(), Some("10"));
    assert_eq!(eval(&s, "_ + 1").await.as_deref(), Some("11"));
    assert_eq!(eval(&s, "None").await, None);
    let out = run(&s, "{'a': [1, 2.5, None, 'x']}").await;
    match out.terminal {
        Event::Result { value, repr, .. } => {
            assert_eq!(value, serde_json::json!({"a": [1, 2.5, null, "x"]}));
            assert_eq!(repr.as_deref(), Some("{'a': [1, 2.5, None, 'x']}"));
        }
        other => panic!("{other:?}"),
    }
    let out = run(&s, "object()").await;
    match out.terminal {
        Event::Result { value, repr, .. } => {
            assert_eq!(value, serde_json::Value::Null, "not JSON-serialisable");
            assert!(repr.unwrap_or_default().starts_with("<object object at"));
        }
        other => panic!("{other:?}"),
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn top_level_await() {
    let s = start().await;
    let repr = eval(&s, "import asyncio\nawait asyncio.sleep(0.01)\n42").await;
    assert_eq!(repr.as_deref(), Some("42"));
    // One event loop for the session: a task created in one cell is awaited in the next.
    eval(
        &s,
        "t = asyncio.ensure_future(asyncio.sleep(0, result='later'))",
    )
    .await;
    assert_eq!(eval(&s, "await t").await.as_deref(), Some("'later'"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn exceptions_system_exit_and_syntax_errors_keep_the_session() {
    let s = start().await;
    eval(&s, "kept = 'yes'").await;

    let out = run(&s, "def f():\n    return 1/0\nf()").await;
    assert_eq!(out.error_type(), Some("ZeroDivisionError"));
    let Event::Error {
        traceback,
        exception_message,
        ..
    } = &out.terminal
    else {
        unreachable!()
    };
    assert_eq!(exception_message, "division by zero");
    assert!(
        traceback.starts_with("Traceback (most recent call last):"),
        "{traceback}"
    );
    assert!(
        traceback.contains("return 1/0"),
        "source lines shown: {traceback}"
    );
    assert!(
        !traceback.contains("File \"<string>\""),
        "no agent frames: {traceback}"
    );

    let out = run(&s, "raise SystemExit(3)").await;
    assert_eq!(out.error_type(), Some("SystemExit"));

    let out = run(&s, "def broken(:\n    pass").await;
    assert_eq!(out.error_type(), Some("SyntaxError"));
    let Event::Error { traceback, .. } = &out.terminal else {
        unreachable!()
    };
    assert!(traceback.contains("<cell-"), "{traceback}");
    assert!(traceback.contains('^'), "caret line: {traceback}");

    assert_eq!(eval(&s, "kept").await.as_deref(), Some("'yes'"));
    assert_eq!(s.state(), SessionState::Idle);
    let info = s.info().await.unwrap();
    assert_eq!(info.error_count, 3);
    s.shutdown().await.unwrap();
}

/// The traceback of an outcome that is an error of `expected` type.
fn error_traceback(out: &pyrepl3::ExecutionOutcome, expected: &str) -> String {
    assert_eq!(out.error_type(), Some(expected));
    let Event::Error { traceback, .. } = &out.terminal else {
        panic!("{out:?}")
    };
    traceback.clone()
}

/// The first characters of a long text, for a failure message.
fn head(text: &str) -> &str {
    &text[..text.char_indices().nth(200).map_or(text.len(), |(i, _)| i)]
}

/// A very deep traceback is formatted from its innermost frames only (where the error is),
/// saying how many were left out: formatting every frame of deep recursion takes minutes.
#[tokio::test]
async fn a_very_deep_traceback_shows_its_innermost_frames() {
    let s = start().await;
    let code = "import sys\nsys.setrecursionlimit(50_000)\n\
                def down(n):\n    return down(n - 1) if n else 1 / 0\ndown(20_000)";
    let shown = "[only the innermost 1000 of 20002 frames are shown]\n";
    let traceback = error_traceback(&run(&s, code).await, "ZeroDivisionError");
    assert!(traceback.starts_with(shown), "{}", head(&traceback));
    assert!(
        traceback.ends_with("ZeroDivisionError: division by zero\n"),
        "{traceback}"
    );
    // The same deep traceback as the context of a shallow one: it is formatted too.
    let code = "try:\n    down(20_000)\nexcept ZeroDivisionError:\n    raise ValueError('shallow')";
    let traceback = error_traceback(&run(&s, code).await, "ValueError");
    assert!(traceback.starts_with(shown), "{}", head(&traceback));
    assert!(traceback.ends_with("ValueError: shallow\n"), "{traceback}");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn user_code_sees_an_interactive_interpreters_argv_and_path() {
    let s = start().await;
    let cwd = s.info().await.unwrap().cwd;
    std::fs::write(
        cwd.join("localmod.py"),
        "VALUE = 'from the working directory'\n",
    )
    .unwrap();
    assert_eq!(
        eval(&s, "import sys\nsys.argv").await.as_deref(),
        Some("['']")
    );
    assert_eq!(eval(&s, "sys.path[0]").await.as_deref(), Some("''"));
    assert_eq!(
        eval(&s, "import localmod\nlocalmod.VALUE").await.as_deref(),
        Some("'from the working directory'")
    );
    assert_eq!(eval(&s, "__name__").await.as_deref(), Some("'__main__'"));
    s.shutdown().await.unwrap();
}
