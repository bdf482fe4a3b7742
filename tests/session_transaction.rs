//! Namespace transactions (docs/transactions.md): under a rollback policy an execution leaves
//! the session exactly as it was (names, in-place mutations, module and class attributes),
//! including one that had to be killed; the terminal event says what became of it.

mod common;

use std::time::Duration;

use common::*;
use pyrepl3::{
    CancelOutcome, Event, ExecuteOptions, ExecutionOutcome, Session, TransactionOutcome,
    TransactionPolicy,
};

async fn run_in(s: &Session, code: &str, policy: TransactionPolicy) -> ExecutionOutcome {
    let options = ExecuteOptions {
        transaction_policy: policy,
        ..Default::default()
    };
    guard(s.execute(code, options).outcome()).await
}

fn transaction(event: &Event) -> Option<TransactionOutcome> {
    match event {
        Event::Result { transaction, .. } | Event::Error { transaction, .. } => *transaction,
        _ => None,
    }
}

const SETUP: &str = "import json\n\
data = [1, 2, 3]\n\
config = {'mode': 'a'}\n\
class Counter:\n    hits = 0\n\
gone = 'still here'\n\
json.custom_marker = 'before'";

const STATE: &str = "(data, config, Counter.hits, gone, json.custom_marker, 'added' in globals())";
const STATE_BEFORE: &str = "([1, 2, 3], {'mode': 'a'}, 0, 'still here', 'before', False)";

/// Mutates in place, rebinds, adds and deletes names, and changes module and class
/// attributes; `tail` decides how it ends.
fn everything_changes(tail: &str) -> String {
    format!(
        "data.append(4)\nconfig['mode'] = 'b'\nCounter.hits += 1\n\
         json.custom_marker = 'after'\nadded = 1\ndel gone\n{tail}"
    )
}

#[tokio::test]
async fn rollback_on_failure_undoes_everything_a_failed_execution_did() {
    let s = start().await;
    eval(&s, SETUP).await;
    let failed = run_in(
        &s,
        &everything_changes("1/0"),
        TransactionPolicy::RollbackOnFailure,
    )
    .await;
    assert_eq!(failed.error_type(), Some("ZeroDivisionError"), "{failed:?}");
    assert_eq!(
        transaction(&failed.terminal),
        Some(TransactionOutcome::RolledBack)
    );
    assert_eq!(eval(&s, STATE).await.as_deref(), Some(STATE_BEFORE));
    // The garbage collector sees every object again (they were frozen for the execution).
    assert_eq!(
        eval(&s, "import gc; gc.get_freeze_count()")
            .await
            .as_deref(),
        Some("0")
    );

    // The same policy keeps what a successful execution did.
    let ok = run_in(
        &s,
        &everything_changes("'fine'"),
        TransactionPolicy::RollbackOnFailure,
    )
    .await;
    assert_eq!(ok.repr(), Some("'fine'"));
    assert_eq!(
        transaction(&ok.terminal),
        Some(TransactionOutcome::Committed)
    );
    assert_eq!(
        eval(&s, "gc.get_freeze_count()").await.as_deref(),
        Some("0")
    );
    assert_eq!(
        eval(
            &s,
            "(data, config, Counter.hits, 'gone' in globals(), json.custom_marker, added)"
        )
        .await
        .as_deref(),
        Some("([1, 2, 3, 4], {'mode': 'b'}, 1, False, 'after', 1)")
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn rollback_always_undoes_a_successful_execution_but_returns_its_result() {
    let s = start().await;
    eval(&s, SETUP).await;
    let out = run_in(
        &s,
        &everything_changes("print('side'); sorted(data)"),
        TransactionPolicy::RollbackAlways,
    )
    .await;
    assert_eq!(out.repr(), Some("[1, 2, 3, 4]"), "{out:?}");
    assert_eq!(out.stdout, "side\n");
    assert_eq!(
        transaction(&out.terminal),
        Some(TransactionOutcome::RolledBack)
    );
    assert_eq!(eval(&s, STATE).await.as_deref(), Some(STATE_BEFORE));
    // The history is as it was too: the rolled-back cell is not in it.
    // "", the set-up, the state read above and this cell: not the rolled-back one.
    assert_eq!(eval(&s, "len(In)").await.as_deref(), Some("4"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn commit_always_keeps_a_failed_executions_changes_and_reports_no_transaction() {
    let s = start().await;
    eval(&s, SETUP).await;
    let out = run_in(
        &s,
        &everything_changes("1/0"),
        TransactionPolicy::CommitAlways,
    )
    .await;
    assert_eq!(out.error_type(), Some("ZeroDivisionError"));
    assert_eq!(transaction(&out.terminal), None, "no transaction was run");
    assert_eq!(
        eval(&s, "(data, added, 'gone' in globals())")
            .await
            .as_deref(),
        Some("([1, 2, 3, 4], 1, False)")
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_worker_that_dies_in_a_transaction_is_replaced_by_its_snapshot() {
    let s = start().await;
    eval(&s, "import os, signal\ndata = [1, 2, 3]").await;
    let pid_before = s.info().await.unwrap().pid;
    // A crash of C code (here: the process killing itself with SIGSEGV).
    let out = run_in(
        &s,
        "data.append(4)\nos.kill(os.getpid(), signal.SIGSEGV)",
        TransactionPolicy::RollbackOnFailure,
    )
    .await;
    assert_eq!(out.error_type(), Some("ExecutionKilled"), "{out:?}");
    let Event::Error {
        exception_message, ..
    } = &out.terminal
    else {
        unreachable!()
    };
    assert!(exception_message.contains("SIGSEGV"), "{exception_message}");
    assert_eq!(
        transaction(&out.terminal),
        Some(TransactionOutcome::RolledBack)
    );
    assert_eq!(eval(&s, "data").await.as_deref(), Some("[1, 2, 3]"));
    // The session runs on in another process, which it reports.
    let info = s.info().await.unwrap();
    assert_ne!(info.pid, pid_before);
    assert_eq!(
        eval(&s, "os.getpid()").await,
        info.pid.map(|p| p.to_string())
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_timed_out_execution_that_ignores_the_interrupt_is_killed_and_rolled_back() {
    let s = start().await;
    eval(&s, "data = [1, 2, 3]").await;
    let options = ExecuteOptions {
        timeout: Some(Duration::from_millis(300)),
        transaction_policy: TransactionPolicy::RollbackOnFailure,
        ..Default::default()
    };
    // Ignores KeyboardInterrupt, so only a kill ends it.
    let code = "data.append(4)\nimport time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass";
    let out = guard(s.execute(code, options).outcome()).await;
    assert_eq!(out.error_type(), Some("ExecutionTimeout"), "{out:?}");
    assert_eq!(
        transaction(&out.terminal),
        Some(TransactionOutcome::RolledBack)
    );
    assert_eq!(eval(&s, "data").await.as_deref(), Some("[1, 2, 3]"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_that_must_kill_rolls_back_instead_of_losing_the_session() {
    let s = start().await;
    eval(&s, "data = [1, 2, 3]").await;
    let options = ExecuteOptions {
        transaction_policy: TransactionPolicy::RollbackOnFailure,
        ..Default::default()
    };
    // Deaf to SIGINT, so only a kill ends it.
    let code =
        "data.append(4)\nimport signal, time\nsignal.signal(signal.SIGINT, lambda *a: None)\n\
                print('started', flush=True)\ntime.sleep(3600)";
    let mut execution = s.execute(code, options);
    wait_for_stdout(&mut execution, "started").await;
    let outcome = guard(s.cancel(execution.id(), Duration::from_millis(200)))
        .await
        .unwrap();
    let end = terminal(&mut execution).await;
    assert_eq!(outcome, CancelOutcome::RolledBack, "{end:?}");
    assert_eq!(error_type(&end), "ExecutionKilled");
    assert_eq!(eval(&s, "data").await.as_deref(), Some("[1, 2, 3]"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn threads_and_open_files_of_earlier_cells_work_after_a_rollback() {
    let s = start().await;
    eval(&s, "import threading, tempfile\nf = tempfile.TemporaryFile()\nf.write(b'abc')\nf.flush()\nlock = threading.Lock()").await;
    let out = run_in(
        &s,
        "f.write(b'def'); f.flush(); 1/0",
        TransactionPolicy::RollbackOnFailure,
    )
    .await;
    assert_eq!(out.error_type(), Some("ZeroDivisionError"));
    // What reached the file is outside the process: not undone (what sat in the file
    // object's buffer was process memory, and would have been). The input() path, the
    // reader thread (input replies) and output all work in the process that took over.
    assert_eq!(
        eval(&s, "f.seek(0); f.read()").await.as_deref(),
        Some("b'abcdef'")
    );
    let mut execution = s.execute("print('x'); input('? ')", ExecuteOptions::default());
    loop {
        match guard(execution.next_event()).await {
            Some(Event::Input { input_id, .. }) => {
                s.input_response(&input_id, "answer\n").await.unwrap();
            }
            Some(end @ (Event::Result { .. } | Event::Error { .. })) => {
                assert!(
                    matches!(&end, Event::Result { repr: Some(r), .. } if r == "'answer'"),
                    "{end:?}"
                );
                break;
            }
            Some(_) => {}
            None => panic!("no terminal event"),
        }
    }
    assert_eq!(
        eval(&s, "lock.acquire(timeout=1)").await.as_deref(),
        Some("True")
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rollback_keeps_the_random_generators_state_and_returns_large_results_whole() {
    let s = start().await;
    eval(
        &s,
        "import random\nrandom.seed(42)\nstate = random.getstate()",
    )
    .await;
    let out = run_in(
        &s,
        "random.random()\n1/0",
        TransactionPolicy::RollbackOnFailure,
    )
    .await;
    assert_eq!(out.error_type(), Some("ZeroDivisionError"));
    assert_eq!(
        eval(&s, "random.getstate() == state").await.as_deref(),
        Some("True"),
        "a seeded session stays reproducible across a rollback"
    );
    // A result far larger than a pipe's buffer is handed over whole.
    let out = run_in(&s, "'x' * 600000", TransactionPolicy::RollbackAlways).await;
    match &out.terminal {
        Event::Result { repr, value, .. } => {
            assert_eq!(repr.as_deref().map(str::len), Some(600_002));
            assert_eq!(value.as_str().map(str::len), Some(600_000));
        }
        other => panic!("{other:?}"),
    }
    s.shutdown().await.unwrap();
}

/// The reader thread of a worker that rolls back never leaves half a control message for
/// its successor: requests on the control channel (here namespace listings) race with
/// rollbacks, and the session survives every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_requests_racing_with_rollbacks_never_break_the_session() {
    let s = start().await;
    eval(&s, "data = [1]").await;
    let poller = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut answered = 0u32;
            for _ in 0..400 {
                if s.namespace().await.is_ok() {
                    answered += 1;
                }
            }
            answered
        })
    };
    for _ in 0..150 {
        let out = run_in(
            &s,
            "data.append(2)\n1/0",
            TransactionPolicy::RollbackOnFailure,
        )
        .await;
        assert_eq!(out.error_type(), Some("ZeroDivisionError"), "{out:?}");
    }
    let answered = guard(poller).await.unwrap();
    assert!(answered > 0);
    assert_eq!(eval(&s, "data").await.as_deref(), Some("[1]"));
    assert_eq!(s.info().await.unwrap().restarts, 0);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutting_down_during_a_transaction_does_not_bring_the_snapshot_back() {
    let s = start().await;
    let options = ExecuteOptions {
        transaction_policy: TransactionPolicy::RollbackOnFailure,
        ..Default::default()
    };
    let mut execution = s.execute(
        "import time\nprint('started', flush=True)\ntime.sleep(60)",
        options,
    );
    wait_for_stdout(&mut execution, "started").await;
    let pid = s.info().await.unwrap().pid.unwrap();
    let pgid = pgid_of(pid);
    guard(s.shutdown()).await.unwrap();
    let end = terminal(&mut execution).await;
    assert_eq!(error_type(&end), "SessionShutdown", "{end:?}");
    assert!(!group_alive(pgid), "no process of the session is left");
}

/// A process's CPU-time limit counts from its own start, and a snapshot that takes over is a
/// new process: the session's budget is carried over, so rollbacks cannot stretch it.
#[tokio::test]
async fn rollbacks_do_not_stretch_the_cpu_time_limit() {
    let config = pyrepl3::SessionConfig {
        limits: pyrepl3::ResourceLimits {
            cpu_time_secs: Some(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = start_with(config).await;
    eval(&s, "data = 1").await;
    let burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.3: pass";
    let first = run_in(&s, burn, TransactionPolicy::RollbackAlways).await;
    assert_eq!(
        transaction(&first.terminal),
        Some(TransactionOutcome::RolledBack),
        "{first:?}"
    );
    // The process that took over has what is left of the 2 s: the next burn goes past it.
    let second = run_in(&s, burn, TransactionPolicy::RollbackAlways).await;
    assert_eq!(second.error_type(), Some("CpuLimitExceeded"), "{second:?}");
    // With the budget spent, the worker is replaced, as the limit does without transactions.
    assert_eq!(
        eval(&s, "'data' in globals()").await.as_deref(),
        Some("False")
    );
    assert_eq!(s.info().await.unwrap().restarts, 1);
    s.shutdown().await.unwrap();
}

/// A thread that writes output all the time may be inside stdout's buffer when the snapshot
/// is taken; the snapshot must still be able to write once it takes over.
#[tokio::test]
async fn a_rollback_while_a_thread_prints_does_not_hang() {
    let s = start().await;
    eval(
        &s,
        "import threading, sys\nstop = False\ndef chatter():\n    while not stop:\n        sys.stdout.write('.' * 512)\nthreading.Thread(target=chatter, daemon=True).start()",
    )
    .await;
    for _ in 0..20 {
        let options = ExecuteOptions {
            timeout: Some(Duration::from_secs(20)),
            transaction_policy: TransactionPolicy::RollbackAlways,
            ..Default::default()
        };
        let out = guard(s.execute("x = 1\n'done'", options).outcome()).await;
        assert_eq!(out.repr(), Some("'done'"), "{:?}", out.terminal);
    }
    assert_eq!(s.info().await.unwrap().restarts, 0);
    s.shutdown().await.unwrap();
}

/// A signal to the process group (here with a handler that raises) never wakes the blocked
/// snapshot into running agent code next to the worker.
#[tokio::test]
async fn a_group_signal_does_not_wake_the_snapshot() {
    let s = start().await;
    eval(
        &s,
        "import os, signal\ndef boom(*a):\n    raise RuntimeError('usr1 in %d' % os.getpid())\nsignal.signal(signal.SIGUSR1, boom)\ndata = [1]",
    )
    .await;
    let worker = s.info().await.unwrap().pid.unwrap();
    let out = run_in(
        &s,
        "data.append(2)\nos.killpg(0, signal.SIGUSR1)",
        TransactionPolicy::RollbackOnFailure,
    )
    .await;
    let Event::Error {
        exception_message, ..
    } = &out.terminal
    else {
        panic!("{out:?}")
    };
    // The worker's own handler raised, in the worker (not in the snapshot).
    assert_eq!(exception_message, &format!("usr1 in {worker}"), "{out:?}");
    assert_eq!(
        transaction(&out.terminal),
        Some(TransactionOutcome::RolledBack)
    );
    assert_eq!(eval(&s, "data").await.as_deref(), Some("[1]"));
    // The snapshot that took over is the worker now, and the only one.
    let now = s.info().await.unwrap().pid.unwrap();
    assert_eq!(eval(&s, "os.getpid()").await, Some(now.to_string()));
    s.shutdown().await.unwrap();
}

/// If the snapshot is gone when a transaction's code must be killed, the session is
/// restarted as it is without a transaction (not left dead).
#[tokio::test]
async fn a_kill_with_no_snapshot_left_restarts_the_session() {
    let config = pyrepl3::SessionConfig {
        timeout_grace: Duration::from_millis(200),
        ..Default::default()
    };
    let s = start_with(config).await;
    let options = ExecuteOptions {
        timeout: Some(Duration::from_millis(300)),
        transaction_policy: TransactionPolicy::RollbackOnFailure,
        ..Default::default()
    };
    // Kills its own snapshot (its only child), then ignores interrupts.
    let code = "import os, signal, time\n\
                me = os.getpid()\n\
                for c in open(f'/proc/{me}/task/{me}/children').read().split():\n    os.kill(int(c), 9)\n\
                signal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)";
    let out = guard(s.execute(code, options).outcome()).await;
    assert_eq!(out.error_type(), Some("ExecutionTimeout"), "{out:?}");
    assert_eq!(eval(&s, "'usable'").await.as_deref(), Some("'usable'"));
    assert_eq!(s.info().await.unwrap().restarts, 1);
    s.shutdown().await.unwrap();
}

/// What user code set for the whole process before a rollback (a default socket timeout)
/// does not reach the agent's own channels in the process that takes over.
#[tokio::test]
async fn a_default_socket_timeout_does_not_break_the_process_that_takes_over() {
    let s = start().await;
    eval(&s, "import socket, time\nsocket.setdefaulttimeout(0.2)").await;
    let out = run_in(&s, "1/0", TransactionPolicy::RollbackOnFailure).await;
    assert_eq!(
        transaction(&out.terminal),
        Some(TransactionOutcome::RolledBack)
    );
    // Longer than the timeout, with the control channel idle meanwhile.
    assert_eq!(
        eval(&s, "time.sleep(0.6)\n'alive'").await.as_deref(),
        Some("'alive'")
    );
    assert_eq!(s.info().await.unwrap().restarts, 0);
    s.shutdown().await.unwrap();
}

/// A frame that cannot be handed over (here: past the session's file-size limit) leaves the
/// execution's changes and says so, rather than hanging the worker.
#[tokio::test]
async fn a_hand_over_that_fails_reports_rollback_failed() {
    let config = pyrepl3::SessionConfig {
        limits: pyrepl3::ResourceLimits {
            file_size_bytes: Some(8192),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = start_with(config).await;
    eval(&s, "data = [1]").await;
    let out = run_in(
        &s,
        "data.append(2)\n'x' * 100000",
        TransactionPolicy::RollbackAlways,
    )
    .await;
    assert_eq!(
        transaction(&out.terminal),
        Some(TransactionOutcome::RollbackFailed),
        "{:?}",
        out.terminal
    );
    assert_eq!(out.repr().map(str::len), Some(100_002));
    assert_eq!(eval(&s, "data").await.as_deref(), Some("[1, 2]"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn stdout_and_stderr_keep_their_order_after_a_rollback() {
    let s = start().await;
    let code = "import sys\nprint('a'); print('b', file=sys.stderr); print('c')";
    let order = |out: &ExecutionOutcome| -> Vec<String> {
        out.events
            .iter()
            .filter_map(|e| match e {
                Event::Output { data, .. } => Some(data.trim().to_string()),
                _ => None,
            })
            .collect()
    };
    run_in(&s, "1/0", TransactionPolicy::RollbackOnFailure).await;
    // The process that took over orders the streams as the first one did.
    for _ in 0..3 {
        let out = run_in(&s, code, TransactionPolicy::CommitAlways).await;
        assert_eq!(order(&out), ["a", "b", "c"]);
    }
    s.shutdown().await.unwrap();
}
