//! `!command`, `%pip` and friends in cells (worker/magics.py), and a library session's own
//! environment (`Session::set_environment`), with real workers: valid Python is never
//! altered, shell lines run at any indentation with their output in order, a failing command
//! is no exception, an unknown magic is a UsageError, a cancel kills the command, and the
//! interactive completeness check knows a block of shell lines.

mod common;

use std::time::Duration;

use common::{error_type, eval, run, start, wait_for_stdout, wait_pid_exit};
use pyrepl3::{CancelOutcome, Completeness, ExecuteOptions, SessionConfig, SessionEnvironment};

#[tokio::test]
async fn valid_python_is_never_altered() {
    let session = start().await;
    let code = "s = '''\n!echo not run\n%pip not run\n'''\ns";
    assert_eq!(
        eval(&session, code).await.as_deref(),
        Some("'\\n!echo not run\\n%pip not run\\n'")
    );
    // `%` and `!` inside expressions stay operators.
    assert_eq!(
        eval(&session, "x = 7\n(x\n%3) == 1").await.as_deref(),
        Some("True")
    );
}

#[tokio::test]
async fn shell_lines_run_at_statement_starts_in_order() {
    let session = start().await;
    let code = "print('before')\n!echo a\ns = '''\n!b\n'''\nfor i in range(2):\n    if i:\n        !echo in-block $((i+1))\nprint(s, end='')\n!echo err >&2\nprint('after')";
    let out = run(&session, code).await;
    assert_eq!(out.error_type(), None, "{out:?}");
    assert_eq!(out.stdout, "before\na\nin-block 1\n\n!b\nafter\n");
    assert_eq!(out.stderr, "err\n");
    // A failing command is no exception; its status is `_exit_code`, as in IPython.
    let out = run(&session, "!exit 3\n_exit_code").await;
    assert_eq!(out.repr(), Some("3"), "{out:?}");
    // A continued line, and a cell magic.
    let out = run(&session, "!echo one \\\n  two").await;
    assert_eq!(out.stdout, "one two\n");
    let out = run(&session, "%%sh\necho $((1+2))\necho done").await;
    assert_eq!(out.stdout, "3\ndone\n", "{out:?}");
}

#[tokio::test]
async fn unknown_magics_are_a_usage_error_not_a_syntax_error() {
    let session = start().await;
    let out = run(&session, "%timeit 1 + 1").await;
    assert_eq!(error_type(&out.terminal), "UsageError", "{out:?}");
    // `%matplotlib inline` is what figures do here already; another backend is refused.
    let out = run(&session, "%matplotlib inline\n'ok'").await;
    assert_eq!(out.repr(), Some("'ok'"), "{out:?}");
    let out = run(&session, "%matplotlib qt").await;
    assert_eq!(error_type(&out.terminal), "UsageError", "{out:?}");
    let out = run(&session, "%%timeit\n1 + 1").await;
    assert_eq!(error_type(&out.terminal), "UsageError", "{out:?}");
    // Not supported, and so still a SyntaxError: a shell line as a value.
    let out = run(&session, "x = !ls").await;
    assert_eq!(error_type(&out.terminal), "SyntaxError", "{out:?}");
}

#[tokio::test]
async fn a_cancel_kills_the_command_and_keeps_the_session() {
    let session = start().await;
    assert_eq!(eval(&session, "kept = 5").await, None);
    let mut execution = session.execute("!echo pid $$; exec sleep 60", ExecuteOptions::default());
    let seen = wait_for_stdout(&mut execution, "\n").await;
    let pid: u32 = seen.trim().trim_start_matches("pid ").parse().unwrap();
    let outcome = common::guard(session.cancel(execution.id(), Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(outcome, CancelOutcome::Cancelled);
    let out = common::guard(execution.outcome()).await;
    assert_eq!(error_type(&out.terminal), "KeyboardInterrupt", "{out:?}");
    assert!(
        wait_pid_exit(pid, Duration::from_secs(10)).await,
        "the command was not killed"
    );
    assert_eq!(eval(&session, "kept").await.as_deref(), Some("5"));
}

#[tokio::test]
async fn the_completeness_check_knows_blocks_of_shell_lines() {
    let session = start().await;
    let check = |code: &'static str| {
        let session = session.clone();
        async move { common::guard(session.is_complete(code)).await.unwrap() }
    };
    assert_eq!(check("!echo hi").await, Completeness::Complete);
    assert_eq!(check("%pip --version").await, Completeness::Complete);
    assert!(matches!(
        check("for i in range(2):\n    !echo $i").await,
        Completeness::Incomplete { .. }
    ));
    assert_eq!(
        check("for i in range(2):\n    !echo $i\n\n").await,
        Completeness::Complete
    );
}

#[tokio::test]
async fn a_library_session_gets_its_own_environment_kept_across_restarts() {
    let session = start().await;
    let environment = SessionEnvironment {
        vars: vec![("NAME".into(), "value".into())],
        cwd: Some("sub/dir".into()),
    };
    common::guard(session.set_environment(environment))
        .await
        .unwrap();
    let dir = session.directory().join("sub/dir");
    let check = "import os\n!echo $NAME\nos.getcwd()";
    let out = run(&session, check).await;
    assert_eq!(out.stdout, "value\n");
    assert_eq!(
        out.repr(),
        Some(
            format!("{:?}", dir.to_str().unwrap())
                .replace('"', "'")
                .as_str()
        )
    );
    common::guard(session.restart()).await.unwrap();
    let again = run(&session, check).await;
    assert_eq!(
        (again.stdout.as_str(), again.repr()),
        ("value\n", out.repr())
    );
    // Refused: a name of the service's, a directory out of the session's.
    for (vars, cwd) in [
        (vec![("PYREPL3_X".to_string(), "1".to_string())], None),
        (Vec::new(), Some("../x".into())),
    ] {
        let e = common::guard(session.set_environment(SessionEnvironment { vars, cwd }))
            .await
            .unwrap_err();
        assert!(matches!(e, pyrepl3::Error::InvalidEnvironment(_)), "{e}");
    }
    std::os::unix::fs::symlink("/tmp", session.directory().join("out")).unwrap();
    let e = common::guard(session.set_environment(SessionEnvironment {
        vars: Vec::new(),
        cwd: Some("out/x".into()),
    }))
    .await
    .unwrap_err();
    assert!(e.to_string().contains("outside"), "{e}");
    // The operator's variables: anything but the service's own names.
    let refused = pyrepl3::Session::start(SessionConfig {
        env: vec![("PYREPL3_FD".into(), "9".into())],
        ..SessionConfig::default()
    })
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("PYREPL3_FD"), "{refused}");
}
