//! Black-box tests of `pyrepl3 exec`: the real binary, real stdio, real signals.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{process_exists, wait_pid_exit, Watched, GUARD};

fn pyrepl3() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
}

struct Ran {
    status: i32,
    stdout: String,
    stderr: String,
}

fn exec(args: &[&str], stdin: &str) -> Ran {
    let mut child = Watched::spawn(
        pyrepl3()
            .arg("exec")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        GUARD,
    );
    let mut input = child.take_stdin();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let status = child.finish();
    Ran {
        status: status.code().unwrap_or(-1),
        stdout: child.stdout(),
        stderr: child.stderr(),
    }
}

#[test]
fn prints_output_and_the_value_of_a_trailing_expression() {
    let r = exec(&["print('hello')\n1+1"], "");
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "hello\n2\n");
    let r = exec(&["x = None\nx"], "");
    assert_eq!(r.stdout, "", "None is not printed, as in a REPL");
}

#[test]
fn code_from_stdin_and_stderr_passthrough() {
    let r = exec(
        &["-"],
        "import sys\nprint('to err', file=sys.stderr)\nprint('to out')\n",
    );
    assert_eq!(r.status, 0);
    assert_eq!(r.stdout, "to out\n");
    assert_eq!(r.stderr, "to err\n");
}

#[test]
fn exception_gives_status_1_and_traceback_on_stderr() {
    let r = exec(&["1/0"], "");
    assert_eq!(r.status, 1);
    assert!(
        r.stderr.contains("ZeroDivisionError: division by zero"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.starts_with("Traceback"), "{}", r.stderr);
}

/// `sys.exit` ends `exec` as it ends `python`: its status, no traceback; a message instead
/// of a number is printed on stderr and the status is 1.
#[test]
fn sys_exit_gives_its_status_without_a_traceback() {
    for (code, status, stderr) in [
        ("import sys\nprint('out')\nsys.exit(3)", 3, ""),
        ("import sys\nsys.exit()", 0, ""),
        ("exit(0)", 0, ""),
        ("import sys\nsys.exit(1)", 1, ""),
        ("import sys\nsys.exit('bye now')", 1, "bye now\n"),
        ("raise SystemExit(258)", 2, ""),
    ] {
        let r = exec(&[code], "");
        assert_eq!((r.status, r.stderr.as_str()), (status, stderr), "{code}");
    }
    let r = exec(&["import sys\nprint('out')\nsys.exit(3)"], "");
    assert_eq!(r.stdout, "out\n");
}

#[test]
fn input_is_answered_from_stdin_and_eof_raises_eoferror() {
    let r = exec(&["a = input('name? ')\nprint('hi', a)\ninput()"], "bob\n");
    assert_eq!(r.stdout, "name? hi bob\n");
    assert_eq!(r.status, 1);
    assert!(r.stderr.contains("EOFError"), "{}", r.stderr);
}

#[test]
fn timeout_gives_status_124() {
    let r = exec(&["--timeout", "0.3", "import time\ntime.sleep(100)"], "");
    assert_eq!(r.status, 124, "{}", r.stderr);
    assert!(r.stderr.contains("ExecutionTimeout"), "{}", r.stderr);
}

#[test]
fn bad_timeout_and_bad_python_are_usage_errors() {
    let r = exec(&["--timeout", "-1", "1"], "");
    assert_eq!(r.status, 2);
    let r = exec(&["--python", "/no/such/python", "1"], "");
    assert_eq!(r.status, 2);
    assert!(r.stderr.contains("/no/such/python"), "{}", r.stderr);
}

#[test]
fn json_mode_prints_one_message_per_line() {
    let r = exec(&["--json", "print('a')\nx = input('p? ')\n7"], "answer\n");
    assert_eq!(r.status, 0, "{}", r.stderr);
    let msgs: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let types: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["output", "input", "result"]);
    assert_eq!(msgs[0]["data"], "a\n");
    assert_eq!(msgs[0]["stream"], "stdout");
    assert_eq!(msgs[1]["prompt"], "p? ");
    assert_eq!(msgs[2]["value"], 7);
    assert_eq!(msgs[2]["repr"], "7");
    let id = msgs[0]["execution_id"].as_str().unwrap();
    assert!(msgs.iter().all(|m| m["execution_id"] == id));
    assert!(msgs.iter().all(|m| m["id"].is_string()));
}

/// Starts `pyrepl3 exec CODE` and returns it once it printed its first stdout line.
fn start_and_wait_for_line(code: &str) -> (Watched, String) {
    let mut child = Watched::spawn(
        pyrepl3()
            .args(["exec", code])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        GUARD,
    );
    let line = child.read_line();
    (child, line)
}

#[test]
fn ctrl_c_cancels_the_code_and_exits_130() {
    let (mut child, line) =
        start_and_wait_for_line("print('started', flush=True)\nwhile True: pass");
    assert_eq!(line, "started\n");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.finish();
    assert_eq!(status.code(), Some(130));
    let err = child.stderr();
    assert!(err.contains("KeyboardInterrupt"), "{err}");
}

#[tokio::test]
async fn killing_the_host_ends_its_worker_within_a_second() {
    let (mut child, line) = start_and_wait_for_line(
        "import os, subprocess\nc = subprocess.Popen(['sleep', '100'])\nprint(os.getpid(), c.pid, flush=True)\nimport time\ntime.sleep(100)",
    );
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    child.kill_and_wait();
    assert!(
        wait_pid_exit(pids[0], Duration::from_secs(1)).await,
        "worker outlived its host"
    );
    assert!(
        wait_pid_exit(pids[1], Duration::from_secs(1)).await,
        "worker's child outlived the host"
    );
}

/// The deadline behind every wait above: a child that hangs fails the test with what it
/// wrote, and is killed, instead of hanging the suite.
#[test]
fn a_hung_child_fails_the_wait_with_its_output_and_is_killed() {
    let mut child = Watched::spawn(
        Command::new("sh")
            .args(["-c", "echo partial; echo complaint >&2; exec sleep 100"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_millis(500),
    );
    let pid = child.id();
    assert_eq!(child.read_line(), "partial\n");
    let failure = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child.finish()))
        .expect_err("the wait ends at its deadline");
    let message = failure
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(
        message.contains("the end of its output") && message.contains("killed it"),
        "{message}"
    );
    assert!(
        message.contains("partial") && message.contains("complaint"),
        "{message}"
    );
    assert!(
        !process_exists(pid),
        "the hung child {pid} was killed and reaped"
    );
}
