//! Black-box tests of `pyrepl3 exec` and `pyrepl3 run`: the real binary, real stdio, real
//! signals, a real terminal for passwords.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{process_exists, wait_pid_exit, Pty, Watched, GUARD};

fn pyrepl3() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
}

struct Ran {
    status: i32,
    stdout: String,
    stderr: String,
}

/// `pyrepl3 exec ARGS` in a fresh directory (it runs in the caller's).
fn exec(args: &[&str], stdin: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&str> = std::iter::once("exec")
        .chain(args.iter().copied())
        .collect();
    pyrepl3_in(dir.path(), &args, stdin)
}

/// `pyrepl3 ARGS` in `dir`, with `stdin` as its input.
fn pyrepl3_in(dir: &std::path::Path, args: &[&str], stdin: &str) -> Ran {
    let mut child = Watched::spawn(
        pyrepl3()
            .current_dir(dir)
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
fn exec_runs_in_the_callers_directory_as_python_c_does_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("data.txt"), "some data").unwrap();
    std::fs::write(dir.path().join("mymod.py"), "X = 'from mymod'").unwrap();
    let code = "import os, sys, mymod\nprint(open('data.txt').read(), mymod.X, repr(sys.path[0]))\nopen('written.txt', 'w').write('kept')\nos.getcwd()";
    let r = pyrepl3_in(dir.path(), &["exec", code], "");
    assert_eq!(r.status, 0, "{}", r.stderr);
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        r.stdout,
        format!("some data from mymod ''\n'{}'\n", cwd.display())
    );
    let written = std::fs::read_to_string(dir.path().join("written.txt")).unwrap();
    assert_eq!(written, "kept");
    // --temp-dir: a directory of its own, gone afterwards.
    let code = "import os\nopen('x.txt', 'w').write('gone')\nprint(os.getcwd())";
    let r = pyrepl3_in(dir.path(), &["exec", "--temp-dir", code], "");
    assert_eq!(r.status, 0, "{}", r.stderr);
    let temp = r.stdout.trim();
    assert_ne!(std::path::Path::new(temp), cwd);
    assert!(
        !std::path::Path::new(temp).exists(),
        "{temp} was left behind"
    );
    assert!(!dir.path().join("x.txt").exists());
}

#[test]
fn run_runs_a_script_as_python_does() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("helper.py"), "X = 'helper'").unwrap();
    let script = r#"# -*- coding: latin-1 -*-
import os, sys
import helper
print(sys.argv, __name__, __file__ == os.path.abspath("sub/s.py"), sys.path[0] == os.path.dirname(__file__), helper.X, "é")
if "--fail" in sys.argv:
    raise ValueError("failed")
sys.exit(int(sys.argv[1]))
1 + 1
"#;
    // Latin-1 bytes, as the coding declaration says.
    let bytes: Vec<u8> = script.chars().map(|c| c as u32 as u8).collect();
    std::fs::write(sub.join("s.py"), bytes).unwrap();
    let r = pyrepl3_in(dir.path(), &["run", "sub/s.py", "7", "-x", "--flag"], "");
    assert_eq!(r.status, 7, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "['sub/s.py', '7', '-x', '--flag'] __main__ True True helper é\n"
    );
    assert_eq!(r.stderr, "");
    let r = pyrepl3_in(dir.path(), &["run", "sub/s.py", "0", "--fail"], "");
    assert_eq!(r.status, 1);
    let path = std::fs::canonicalize(&sub).unwrap().join("s.py");
    let frame = format!(
        "File \"{}\", line 6, in <module>\n    raise ValueError(\"failed\")",
        path.display()
    );
    assert!(
        r.stderr.contains(&frame) && r.stderr.ends_with("ValueError: failed\n"),
        "{}",
        r.stderr
    );
    std::fs::write(dir.path().join("bad.py"), "x = (\n").unwrap();
    let r = pyrepl3_in(dir.path(), &["run", "bad.py"], "");
    assert_eq!(r.status, 1);
    assert!(
        r.stderr.contains("bad.py\", line 1") && r.stderr.contains("SyntaxError"),
        "{}",
        r.stderr
    );
    let r = pyrepl3_in(dir.path(), &["run", "missing.py"], "");
    assert_eq!(r.status, 2);
    assert!(
        r.stderr.contains("can't open file 'missing.py'"),
        "{}",
        r.stderr
    );
}

#[test]
fn exec_and_run_end_as_python_does() {
    let dir = tempfile::tempdir().unwrap();
    // Everything after FILE is the script's, flags too.
    std::fs::write(
        dir.path().join("argv.py"),
        "import sys; print(sys.argv[1:])",
    )
    .unwrap();
    let r = pyrepl3_in(
        dir.path(),
        &["run", "argv.py", "--help", "--timeout", "5"],
        "",
    );
    assert_eq!(r.stdout, "['--help', '--timeout', '5']\n", "{}", r.stderr);
    // Non-daemon threads are waited for, then atexit handlers run; stdin reads to its end.
    let script = "import atexit, sys, threading, time\natexit.register(print, 'atexit ran')\nthreading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\nprint(repr(sys.stdin.read()))";
    std::fs::write(dir.path().join("end.py"), script).unwrap();
    let r = pyrepl3_in(dir.path(), &["run", "end.py"], "a\nb\nc");
    assert_eq!(
        r.stdout, "'a\\nb\\nc'\nthread done\natexit ran\n",
        "{}",
        r.stderr
    );
    let r = pyrepl3_in(
        dir.path(),
        &[
            "exec",
            "import atexit, sys\natexit.register(print, 'bye')\nprint(sys.argv)",
        ],
        "",
    );
    assert_eq!(r.stdout, "['-c']\nbye\n");
    // An uncaught KeyboardInterrupt is 130; sys.exit(True) is a silent 1.
    assert_eq!(
        pyrepl3_in(dir.path(), &["exec", "raise KeyboardInterrupt"], "").status,
        130
    );
    let r = pyrepl3_in(dir.path(), &["exec", "import sys; sys.exit(True)"], "");
    assert_eq!((r.status, r.stderr.as_str()), (1, ""));
    // A forked child that raises ends itself, not the run.
    let fork = "import os, sys\npid = os.fork()\nif pid == 0:\n    sys.exit(3)\n_, status = os.waitpid(pid, 0)\nprint('child exited', os.waitstatus_to_exitcode(status))";
    let r = pyrepl3_in(dir.path(), &["exec", fork], "");
    assert_eq!(
        (r.status, r.stdout.as_str()),
        (0, "child exited 3\n"),
        "{}",
        r.stderr
    );
    // asyncio as in a script: the loop's own run_until_complete, and asyncio.Runner.
    let code = "import asyncio\nasync def m(): return 1\nprint(asyncio.get_event_loop().run_until_complete(m()), asyncio.Runner().run(m()))";
    let r = pyrepl3_in(dir.path(), &["exec", code], "");
    assert_eq!(r.stdout, "1 1\n", "{}", r.stderr);
}

#[test]
fn a_reader_that_goes_away_stops_the_code() {
    // As `pyrepl3 exec ... | head -1`: without it the endless loop would run to the guard.
    let script = format!(
        "'{}' exec 'import itertools\nfor i in itertools.count(): print(i)' | head -1; echo \"status ${{PIPESTATUS[0]}}\"",
        env!("CARGO_BIN_EXE_pyrepl3")
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = Watched::spawn(
        Command::new("bash")
            .args(["-c", &script])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        GUARD,
    );
    child.finish();
    assert_eq!(child.stdout(), "0\nstatus 1\n", "{}", child.stderr());
    assert!(child.stderr().contains("broken pipe"), "{}", child.stderr());
}

#[test]
fn getpass_does_not_echo_at_a_terminal_and_input_does() {
    let dir = tempfile::tempdir().unwrap();
    let code = "import getpass\nname = input('name? ')\npw = getpass.getpass('pw? ')\nprint('got', name, len(pw))";
    let mut t = Pty::spawn(&["exec", code], Some(dir.path()));
    t.expect("name? ");
    t.line("bob");
    t.expect("bob");
    t.expect("pw? ");
    t.line("hunter22");
    let shown = t.expect("got bob 8");
    assert!(
        !shown.contains("hunter22"),
        "the password was echoed: {shown:?}"
    );
    assert_eq!(t.wait_exit(), 0);
    // Ctrl-C while the password is typed: the terminal's echo comes back at exit.
    let code = "import getpass\npw = getpass.getpass('pw? ')";
    let mut t = Pty::spawn(&["exec", code], Some(dir.path()));
    t.expect("pw? ");
    t.send("\x03");
    assert_eq!(t.wait_exit(), 130);
    assert!(t.echo_is_on());
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
