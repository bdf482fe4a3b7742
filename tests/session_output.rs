//! Output of a session: stdout and stderr arrive once, in order, before the result, and in the
//! order Python wrote them across the two streams; stream
//! while the code runs (buffered layers too); keep their order against fd writes and child
//! processes; invalid UTF-8 is replaced; the output rate limit slows the worker, loses nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pyrepl3::{CancelOutcome, Event, ExecuteOptions, SessionConfig};

#[tokio::test]
async fn interleaved_output_arrives_once_in_order_before_the_result() {
    let s = start().await;
    let code = r#"
import os, sys, subprocess
for i in range(10000):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
os.write(1, b"raw fd write\n")
os.write(2, b"raw fd err\n")
subprocess.run(["sh", "-c", "echo child out; echo child err >&2"])
print("last")
"#;
    let out = run(&s, code).await;
    assert!(
        matches!(out.terminal, Event::Result { .. }),
        "{:?}",
        out.terminal
    );
    let mut want_out: String = (0..10000).map(|i| format!("out {i}\n")).collect();
    want_out.push_str("raw fd write\nchild out\nlast\n");
    let mut want_err: String = (0..10000).map(|i| format!("err {i}\n")).collect();
    want_err.push_str("raw fd err\nchild err\n");
    assert_eq!(out.stdout.len(), want_out.len());
    assert!(out.stdout == want_out, "stdout differs");
    assert!(out.stderr == want_err, "stderr differs");
    // The terminal event is the last one.
    assert!(out.events.last().is_some_and(Event::is_terminal));
    assert_eq!(out.events.iter().filter(|e| e.is_terminal()).count(), 1);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn stdout_and_stderr_arrive_in_the_order_python_wrote_them() {
    let s = start().await;
    // As a terminal shows it: a, b, c. Then text and binary layers of both streams, from a
    // thread too, and runs long enough that the flusher thread sends some of it meanwhile.
    let code = r#"
import sys, threading
print("a"); print("b", file=sys.stderr); print("c")
sys.stderr.buffer.write(b"d\n"); print("e"); sys.stderr.write("f\n")
def chat():
    for i in range(300):
        print("out", i); print("err", i, file=sys.stderr)
        if i % 7 == 0:
            sys.stdout.buffer.write(b"bin %d\n" % i)
t = threading.Thread(target=chat); t.start(); t.join()
print("last")
"#;
    for _ in 0..3 {
        let out = run(&s, code).await;
        assert!(
            matches!(out.terminal, Event::Result { .. }),
            "{:?}",
            out.terminal
        );
        let mut got = String::new();
        for event in &out.events {
            if let Event::Output { stream, data } = event {
                let tag = if *stream == pyrepl3::protocol::StreamName::Stdout {
                    ""
                } else {
                    "E:"
                };
                for line in data.lines() {
                    got.push_str(&format!("{tag}{line}\n"));
                }
            }
        }
        let mut want = String::from("a\nE:b\nc\nE:d\ne\nE:f\n");
        for i in 0..300 {
            want.push_str(&format!("out {i}\nE:err {i}\n"));
            if i % 7 == 0 {
                want.push_str(&format!("bin {i}\n"));
            }
        }
        want.push_str("last\n");
        assert_eq!(got, want);
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cancel_stops_code_switching_between_stdout_and_stderr() {
    // The interrupt can land while the worker passes from one stream to the other: it must
    // stop the code, not be swallowed there (the worker would then be killed at the grace).
    let s = start().await;
    eval(&s, "kept = 1").await;
    for _ in 0..8 {
        let mut ex = s.execute(
            "import sys\nprint('go', flush=True)\nwhile True:\n    print(1)\n    print(2, file=sys.stderr)",
            ExecuteOptions::default(),
        );
        wait_for_stdout(&mut ex, "go").await;
        let outcome = guard(s.cancel(ex.id(), Duration::from_secs(5))).await;
        assert_eq!(outcome.unwrap(), CancelOutcome::Cancelled);
        terminal(&mut ex).await;
    }
    assert_eq!(eval(&s, "kept").await.as_deref(), Some("1"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn output_is_streamed_while_the_code_runs() {
    let s = start().await;
    // The code waits for an answer after printing: the line must arrive before the code ends.
    let mut ex = s.execute(
        "print('first line')\nx = input()\nprint('after', x)",
        ExecuteOptions::default(),
    );
    wait_for_stdout(&mut ex, "first line\n").await;
    match guard(ex.next_event()).await {
        Some(Event::Input { input_id, .. }) => s.input_response(&input_id, "ok").await.unwrap(),
        other => panic!("{other:?}"),
    }
    wait_for_stdout(&mut ex, "after ok\n").await;
    assert!(matches!(terminal(&mut ex).await, Event::Result { .. }));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn buffered_output_still_streams_while_the_code_blocks() {
    let s = start().await;
    // No input(), no end of execution: only the worker's flush deadline can send these.
    for code in [
        "import time\nprint('text layer')\ntime.sleep(100)",
        "import sys, time\nsys.stdout.buffer.write(b'binary layer\\n')\ntime.sleep(100)",
        "import sys, time\nprint('to stderr', file=sys.stderr)\ntime.sleep(100)",
    ] {
        let mut ex = s.execute(code, ExecuteOptions::default());
        match guard(ex.next_event()).await {
            Some(Event::Output { data, .. }) => assert!(data.ends_with('\n'), "{data:?}"),
            other => panic!("expected streamed output for {code:?}, got {other:?}"),
        }
        assert_eq!(
            guard(s.cancel(ex.id(), Duration::from_secs(5)))
                .await
                .unwrap(),
            CancelOutcome::Cancelled
        );
        terminal(&mut ex).await;
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn buffered_prints_keep_their_order_against_fd_writes_and_child_processes() {
    let s = start().await;
    let code = r#"
import os, subprocess, sys
print("1 print", end="")
os.write(1, b" 2 os.write\n")
print("3 print")
subprocess.run(["echo", "4 subprocess"])
print("5 print")
os.system("echo 6 os.system")
print("7 print")
pid = os.fork()
if pid == 0:
    os.write(1, b"8 forked child\n")
    os._exit(0)
os.waitpid(pid, 0)
print("9 print")
"#;
    let out = run(&s, code).await;
    assert!(
        matches!(out.terminal, Event::Result { .. }),
        "{:?}",
        out.terminal
    );
    assert_eq!(
        out.stdout,
        "1 print 2 os.write\n3 print\n4 subprocess\n5 print\n6 os.system\n7 print\n8 forked child\n9 print\n"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn output_not_valid_utf8_is_replaced_not_lost() {
    let s = start().await;
    let out = run(&s, "import os\nos.write(1, b'a\\xffb\\xe2\\x82\\xacc\\n')").await;
    assert_eq!(out.stdout, "a\u{fffd}b€c\n");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn output_rate_limit_slows_the_worker_and_loses_nothing() {
    let config = SessionConfig {
        output_rate: Some(pyrepl3::session::OutputRate {
            bytes_per_second: 1_000_000.0,
            burst_bytes: 65_536,
        }),
        ..Default::default()
    };
    let s = start_with(config).await;
    let t0 = Instant::now();
    // 10 000 lines of 100 bytes: 1 MB, of which the burst covers 64 KiB.
    let out = run(
        &s,
        "import sys\nfor i in range(10000):\n    sys.stdout.write(f'{i:099d}\\n')\n'done'",
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(out.repr(), Some("'done'"));
    assert_eq!(out.stdout.len(), 1_000_000);
    let expected: String = (0..10000).map(|i| format!("{i:099}\n")).collect();
    assert!(out.stdout == expected, "every byte, in order");
    assert!(took >= Duration::from_millis(900), "not limited: {took:?}");
    assert!(
        s.info().await.unwrap().timer_wakeups > 0,
        "the limiter paused the pipes"
    );
    s.shutdown().await.unwrap();
}
