//! Black-box tests of `pyrepl3 repl`: the real binary on a real pseudo-terminal
//! (`common::Pty`), driven as a person would drive it (keys in, screen text out): statements
//! over several lines, expression values shown as Python shows them, Tab completion from the
//! namespace, history, streaming output, input(), Ctrl-C and Ctrl-D, a dead worker.

mod common;

use std::time::{Duration, Instant};

use common::{process_exists, Pty};

#[test]
fn a_multi_line_definition_then_a_call() {
    let mut r = Pty::repl();
    r.line("def f(x):");
    r.expect("... ");
    r.line("    return x*2");
    r.expect("... ");
    r.line("");
    r.expect(">>> ");
    r.line("f(21)");
    r.expect("f(21)\n42\n");
    r.expect(">>> ");
    // An open bracket continues too.
    r.line("(1 +");
    r.expect("... ");
    r.line(" 2)");
    r.expect("\n3\n");
}

#[test]
fn output_streams_while_the_code_runs() {
    let mut r = Pty::repl();
    r.line("import time");
    r.expect(">>> ");
    r.line("for i in range(3): print('tick', i); time.sleep(0.5)");
    r.expect("... ");
    let submitted = Instant::now();
    r.line("");
    r.expect("tick 0");
    let first = submitted.elapsed();
    r.expect("tick 2");
    r.expect(">>> ");
    let all = submitted.elapsed();
    assert!(first < Duration::from_secs(1), "first line after {first:?}");
    assert!(
        all - first >= Duration::from_secs(1),
        "the first line came {first:?} after submitting, the end {all:?}: not streamed"
    );
}

#[test]
fn input_is_asked_inline_and_answered_at_the_terminal() {
    let mut r = Pty::repl();
    r.line("x = input('name? ')");
    r.expect("input('name? ')\n");
    r.expect("name? ");
    r.line("bob");
    r.expect(">>> ");
    r.line("x");
    r.expect("x\n'bob'\n");
}

#[test]
fn ctrl_c_interrupts_running_code_and_keeps_the_variables() {
    let mut r = Pty::repl();
    r.line("y = 5");
    r.expect(">>> ");
    r.line("def spin():");
    r.line("    print('spinning', flush=True)");
    r.line("    while True: pass");
    r.line("");
    r.expect(">>> ");
    r.line("spin()");
    r.expect("spin()\n");
    r.expect("spinning\n");
    r.send("\x03");
    r.expect("KeyboardInterrupt");
    r.expect(">>> ");
    r.line("y");
    r.expect("y\n5\n");
    r.expect(">>> ");
    // At the prompt, Ctrl-C drops the line being typed.
    r.send("y = 6\x03");
    r.expect("KeyboardInterrupt");
    r.expect(">>> ");
    r.line("y");
    r.expect("y\n5\n");
}

#[test]
fn ctrl_d_exits_with_status_0_and_leaves_no_worker() {
    let mut r = Pty::repl();
    r.line("import os; print('PID', os.getpid(), 'DIP')");
    let pid: u32 = r.wait_for("the worker's pid", |text| {
        let start = text.find("PID ")? + 4;
        let len = text[start..].find(" DIP")?;
        Some((start + len, text[start..start + len].parse().ok()?))
    });
    r.expect(">>> ");
    assert!(process_exists(pid));
    r.send("\x04");
    assert_eq!(r.wait_exit(), 0);
    // The REPL reaped the worker before exiting: not even a zombie is left.
    assert!(!process_exists(pid), "worker {pid} outlived the REPL");
    let history = r.home.path().join("data/pyrepl3/history");
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("os.getpid()"), "history: {saved:?}");
}

#[test]
fn a_dead_worker_is_reported_and_replaced_on_the_next_input() {
    let mut r = Pty::repl();
    r.line("x = 1");
    r.expect(">>> ");
    r.line("import os; os._exit(1)");
    r.expect("WorkerDied");
    r.expect(">>> ");
    r.line("1+1");
    r.expect("all state was lost");
    r.expect("\n2\n");
    r.expect(">>> ");
    r.line("x");
    r.expect("NameError");
}

#[test]
fn a_syntax_error_shows_the_caret() {
    let mut r = Pty::repl();
    r.line("1 +");
    let before = r.expect("SyntaxError");
    assert!(
        before
            .lines()
            .any(|l| l.trim_start().starts_with('^') && l.trim().chars().all(|c| c == '^')),
        "no caret line in {before:?}"
    );
    r.expect(">>> ");
    r.line("'still here'");
    r.expect("\n'still here'\n");
}

#[test]
fn commands_info_reset_and_help() {
    let mut r = Pty::repl();
    r.line(":info");
    let pid: u32 = r.wait_for("a pid in :info", |text| {
        let start = text.find("\npid")? + 4;
        let digits = text[start..].trim_start();
        let offset = text.len() - digits.len();
        let len = digits.find('\n')?;
        Some((offset + len, digits[..len].parse().ok()?))
    });
    assert!(process_exists(pid));
    r.expect(">>> ");
    r.line("z = 3");
    r.expect(">>> ");
    r.line(":reset");
    r.expect("namespace cleared");
    r.expect(">>> ");
    r.line("z");
    r.expect("NameError");
    r.expect(">>> ");
    r.line(":help");
    r.expect(":reset");
    r.expect(">>> ");
    r.line(":nope");
    r.expect("unknown command");
}

#[test]
fn expression_statements_show_their_values_as_in_python() {
    let mut r = Pty::repl();
    r.line("for i in range(3): i");
    r.expect("... ");
    r.line("");
    r.expect("\n0\n1\n2\n");
    r.expect(">>> ");
    r.line("1; 2");
    r.expect("1; 2\n1\n2\n");
    r.expect(">>> ");
    // None is not shown; the last value is `_`; values inside a function are not shown.
    r.line("None; 'x' * 2");
    r.expect("\n'xx'\n");
    r.expect(">>> ");
    r.line("_");
    r.expect("_\n'xx'\n");
    r.expect(">>> ");
    r.line("def f(): 40 + 2");
    r.line("");
    r.expect(">>> ");
    r.line("f(); 'after'");
    r.expect("\n'after'\n");
}

#[test]
fn tab_completes_names_attributes_and_keys_from_the_namespace() {
    let mut r = Pty::repl();
    r.line("import collections; settings = {'alpha_key': 1, 'beta': 2}; my_long_variable = 7");
    r.expect(">>> ");
    // A name defined in the session.
    r.send("my_lo\t");
    r.expect("my_long_variable");
    r.send("\r");
    r.expect("\n7\n");
    r.expect(">>> ");
    // An attribute of a module.
    r.send("collections.Ord\t");
    r.expect("collections.OrderedDict");
    r.send("\x03");
    r.expect(">>> ");
    // A key of a dict.
    r.send("settings['al\t");
    r.expect("settings['alpha_key']");
    r.send("\r");
    r.expect("\n1\n");
    r.expect(">>> ");
    // Two matches: a second Tab lists them.
    r.line("value_one = value_two = 0");
    r.expect(">>> ");
    r.send("value_\t\t");
    r.expect("value_one");
    r.expect("value_two");
}

#[test]
fn a_multi_line_statement_is_one_history_entry_recalled_whole() {
    let mut r = Pty::repl();
    r.line("def twice(x):");
    r.line("    return x * 2");
    r.line("");
    r.expect(">>> ");
    r.line("twice = None");
    r.expect(">>> ");
    // Up twice: past `twice = None` to the whole definition, which runs as it is.
    r.send("\x1b[A\x1b[A");
    r.expect("return x * 2");
    r.send("\r");
    r.expect(">>> ");
    r.line("twice(21)");
    r.expect("twice(21)\n42\n");
    r.expect(">>> ");
    r.send("\x04");
    assert_eq!(r.wait_exit(), 0);
    let history = r.home.path().join("data/pyrepl3/history");
    let saved = std::fs::read_to_string(&history).unwrap();
    // One entry per statement (the file escapes the newline within one), the recalled
    // definition again as it ran.
    let definition = "def twice(x):\\n    return x * 2";
    let entries: Vec<&str> = saved.lines().filter(|l| l.contains("twice")).collect();
    assert_eq!(
        entries,
        [definition, "twice = None", definition, "twice(21)"],
        "{saved:?}"
    );
}
