//! What the host enforces whatever the worker sends (docs/security.md): user code shares its
//! process with the agent and can forge the agent's frames, so a forged `result` must not
//! free code from its time limit, and the session's secrets are not left where it can read
//! them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pyrepl3::{ExecuteOptions, SessionConfig};

/// Code that writes a `result` frame for its own execution on the exec channel (fd 3, as
/// the agent does), then goes on running: `before` runs first, `after` last.
fn forging(execution_id: &str, before: &str, after: &str) -> String {
    format!(
        "import json, os, time\n{before}\n\
         frame = json.dumps({{'type': 'result', 'id': 'forged', 'execution_id': '{execution_id}', \
         'marked': False, 'value': None, 'repr': \"'forged'\", 'execution_time': 0.0}}).encode()\n\
         os.write(3, len(frame).to_bytes(4, 'big') + frame)\n{after}\n"
    )
}

fn limited(execution_id: &str, timeout: Duration) -> ExecuteOptions {
    ExecuteOptions {
        timeout: Some(timeout),
        execution_id: Some(execution_id.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_forged_result_does_not_free_code_from_its_time_limit() {
    let config = SessionConfig {
        timeout_grace: Duration::from_millis(300),
        ..Default::default()
    };
    let s = start_with(config).await;
    eval(&s, "kept = 'yes'").await;
    let code = forging("forger", "", "time.sleep(60)");
    let started = Instant::now();
    let forged = guard(
        s.execute(code, limited("forger", Duration::from_secs(1)))
            .outcome(),
    )
    .await;
    // The host cannot tell a forged frame from the agent's: the execution ends early.
    assert!(started.elapsed() < Duration::from_secs(1), "{forged:?}");
    // But the code is interrupted at its limit: the next execution runs soon after, in the
    // same namespace, instead of waiting for the 60 s sleep.
    assert_eq!(eval(&s, "kept").await.as_deref(), Some("'yes'"));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the next execution waited {waited:?}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn forged_result_and_ignored_interrupt_get_the_worker_killed_at_the_limit() {
    let config = SessionConfig {
        timeout_grace: Duration::from_millis(300),
        ..Default::default()
    };
    let s = start_with(config).await;
    let code = forging(
        "stubborn",
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)",
        "time.sleep(60)",
    );
    let started = Instant::now();
    guard(
        s.execute(code, limited("stubborn", Duration::from_secs(1)))
            .outcome(),
    )
    .await;
    let next = run(&s, "'never ran'").await;
    assert_eq!(next.error_type(), Some("WorkerKilled"), "{next:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A fresh worker replaces the killed one.
    assert_eq!(eval(&s, "'usable'").await.as_deref(), Some("'usable'"));
    s.shutdown().await.unwrap();
}

/// A worker that leaves its process group (into the host's, which `setpgid` allows within
/// one session) is still killed at its limit: the kill names the worker, not only its group.
#[tokio::test]
async fn a_worker_that_leaves_its_process_group_is_still_killed() {
    let config = SessionConfig {
        timeout_grace: Duration::from_millis(200),
        ..Default::default()
    };
    let s = start_with(config).await;
    let options = ExecuteOptions {
        timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    // The host is the parent of the worker's parent (the session's supervisor).
    let code = "import os, signal, time\n\
                host = int(open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split()[1])\n\
                os.setpgid(0, os.getpgid(host))\n\
                signal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)";
    let out = guard(s.execute(code, options).outcome()).await;
    assert_eq!(out.error_type(), Some("ExecutionTimeout"), "{out:?}");
    assert_eq!(eval(&s, "'usable'").await.as_deref(), Some("'usable'"));
    s.shutdown().await.unwrap();
}

/// `prctl(PR_SET_DUMPABLE, 0)` refuses the host's reading of the main thread's syscall: a
/// worker that hides itself so is taken as busy, not as unknown.
#[tokio::test]
async fn a_forger_that_hides_from_the_kernels_view_is_still_interrupted() {
    let config = SessionConfig {
        timeout_grace: Duration::from_millis(300),
        ..Default::default()
    };
    let s = start_with(config).await;
    let code = forging(
        "hider",
        "import ctypes
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)",
        "time.sleep(60)",
    );
    let started = Instant::now();
    guard(
        s.execute(code, limited("hider", Duration::from_secs(1)))
            .outcome(),
    )
    .await;
    assert_eq!(eval(&s, "'next'").await.as_deref(), Some("'next'"));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the next execution waited {waited:?}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn honest_executions_with_limits_are_never_interrupted_by_the_checks() {
    let config = SessionConfig {
        timeout_grace: Duration::from_millis(100),
        ..Default::default()
    };
    let s = start_with(config).await;
    // Many short executions whose limits pass while later ones run or the worker idles:
    // every check must find the worker idle or busy with the execution it is running.
    // Each takes ~10 ms with a 300 ms limit, so checks fall due all through the loop:
    // while an execution runs, between two, and while the worker idles.
    for i in 0..40 {
        let options = ExecuteOptions {
            timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        };
        let code = format!("import time\ntime.sleep(0.01)\n{i}");
        let out = guard(s.execute(code, options).outcome()).await;
        assert_eq!(out.repr(), Some(i.to_string().as_str()), "{out:?}");
    }
    let out = run(&s, "import time\ntime.sleep(0.5)\n'slept'").await;
    assert_eq!(out.repr(), Some("'slept'"), "{out:?}");
    assert_eq!(s.info().await.unwrap().restarts, 0);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_marker_token_is_not_left_in_the_workers_environment() {
    let s = start().await;
    // /proc/self/environ is the environment the process started with, whatever the agent
    // deleted from os.environ since.
    let environ = eval(&s, "b'MARKER' in open('/proc/self/environ', 'rb').read()").await;
    assert_eq!(environ.as_deref(), Some("False"));
    let os_environ = eval(&s, "import os\n[k for k in os.environ if 'PYREPL3' in k]").await;
    assert_eq!(os_environ.as_deref(), Some("[]"));
    // It came in the signal file (fd 5), which the agent erased before any user code ran.
    let signal_file = eval(&s, "os.pread(5, 72, 0) == bytes(72)").await;
    assert_eq!(signal_file.as_deref(), Some("True"));
    // And output is still paired with its messages (the marker works).
    let out = run(&s, "print('x' * 100000)\n42").await;
    assert_eq!(out.stdout.len(), 100001, "{out:?}");
    assert_eq!(out.repr(), Some("42"));
    s.shutdown().await.unwrap();
}

/// The agent every later worker runs must not be rewritable by user code: it is read from a
/// sealed memory file, not from a cached file on disk (which code running as the same user
/// could overwrite for every worker that starts after it, of every tenant).
#[tokio::test]
async fn user_code_cannot_rewrite_the_agent_that_later_workers_run() {
    let s = start().await;
    let attack = r#"
import os
results = []
# What this worker was started from...
started_from = open('/proc/self/cmdline', 'rb').read().split(b'\0')[1].decode()
candidates = [started_from]
# ...and the agent's file as the host holds it (the host is the parent of the session's
# supervisor, the worker's parent).
host = int(open(f'/proc/{os.getppid()}/stat').read().rsplit(')', 1)[1].split()[1])
for fd in os.listdir(f'/proc/{host}/fd'):
    try:
        target = os.readlink(f'/proc/{host}/fd/{fd}')
    except OSError:
        continue
    if 'pyrepl3-agent' in target or target.endswith('.pyc'):
        candidates.append(f'/proc/{host}/fd/{fd}')
for path in candidates:
    try:
        with open(path, 'r+b') as f:
            f.write(b'import os; os._exit(66)\n')
        results.append(('rewrote', path))
    except OSError as e:
        results.append((type(e).__name__, path))
results
"#;
    let out = run(&s, attack).await;
    let results = out.repr().unwrap_or_default().to_string();
    assert!(!results.contains("'rewrote'"), "{results}");
    // The host's copy was found (same user, no sandbox) and is sealed.
    assert!(results.contains("('PermissionError', '/proc/"), "{results}");
    // A worker started after the attempt runs the real agent.
    let later = start().await;
    assert_eq!(eval(&later, "1+1").await.as_deref(), Some("2"));
    later.shutdown().await.unwrap();
    s.shutdown().await.unwrap();
}
