//! Black-box tests of `Session::is_complete`: the worker's `codeop` decides, as the
//! interactive interpreter does, whether a statement needs another line.

mod common;

use common::*;
use pyrepl3::{Completeness, Error};

fn incomplete() -> Completeness {
    Completeness::Incomplete {
        indent: String::new(),
    }
}

#[tokio::test]
async fn statements_are_judged_as_the_interactive_interpreter_judges_them() {
    let s = start().await;
    let cases = [
        ("x = 1", Completeness::Complete),
        ("def f():", incomplete()),
        ("x = (1,", incomplete()),
        ("a = 1 \\", incomplete()),
        ("'''open string", incomplete()),
        // A compound statement ends with a blank line, as at the `...` prompt.
        ("def f():\n    return 1", incomplete()),
        ("def f():\n    return 1\n", Completeness::Complete),
        ("for i in range(3): print(i)", incomplete()),
        ("1 +", Completeness::Invalid),
        ("  x = 1", Completeness::Invalid),
        // With the session's flags: top-level await is a statement like any other.
        ("await f()", Completeness::Complete),
        ("async with x:", incomplete()),
    ];
    for (code, expected) in cases {
        let got = guard(s.is_complete(code)).await.unwrap();
        assert_eq!(got, expected, "{code:?}");
    }
    // Compiling to check does not print warnings; running the code does, once.
    let out = run(&s, "x = 1").await;
    assert_eq!(out.stderr, "");
    assert_eq!(
        guard(s.is_complete("x is 1")).await.unwrap(),
        Completeness::Complete
    );
    let out = run(&s, "1").await;
    assert_eq!(out.stderr, "", "no SyntaxWarning left over from the check");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn answered_while_code_runs_and_failing_cleanly_on_a_dead_worker() {
    let s = start().await;
    let mut busy = s.execute(
        "import time; print('busy', flush=True); time.sleep(30)",
        Default::default(),
    );
    // Running user code (not merely sent), so the cancel below lands in it.
    wait_for_stdout(&mut busy, "busy").await;
    // The reader thread answers while the main thread sleeps in user code.
    assert_eq!(
        guard(s.is_complete("if True:")).await.unwrap(),
        incomplete()
    );
    // Pathological input must not take the worker's reader thread down.
    let deep = format!("x = {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert_eq!(
        guard(s.is_complete(&deep)).await.unwrap(),
        Completeness::Invalid
    );
    let cancelled = s
        .cancel(busy.id(), std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(cancelled, pyrepl3::CancelOutcome::Cancelled);
    assert_eq!(error_type(&terminal(&mut busy).await), "KeyboardInterrupt");
    let died = run(&s, "import os; os._exit(3)").await;
    assert_eq!(died.error_type(), Some("WorkerDied"));
    match guard(s.is_complete("x = 1")).await {
        Err(Error::SessionDead(_)) => {}
        other => panic!("expected SessionDead, got {other:?}"),
    }
    s.restart().await.unwrap();
    assert_eq!(
        guard(s.is_complete("x = 1")).await.unwrap(),
        Completeness::Complete
    );
    s.shutdown().await.unwrap();
}
