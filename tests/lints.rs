//! Lints over the crate's own source, for the bug classes that bit other Rust kernels and
//! for the project's audit rule:
//!
//! a. a lock guard (tokio or std `Mutex`/`RwLock`) held across an `.await`;
//! b. a cancel-unsafe future (`read_exact`, `write_all`, `copy`, ...) directly in a
//!    `select!` arm, where losing the race loses data;
//! c. a timer call (`sleep`, `timeout`, `interval`, ... in `src/`; `time.sleep`, timed
//!    waits in `worker/*.py`) without a `not polling:` note saying why it is not a poll.
//!
//! The scanners (`scan/`) read masked source text; each rule also runs on known-bad and
//! known-good snippets here, so a scanner that stopped seeing anything fails too.

mod scan;

use scan::{python, rust, source_files, Finding};

fn report(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn rust_sources() -> Vec<(String, String)> {
    let files = source_files("src", "rs");
    assert!(
        files.iter().any(|(path, _)| path.ends_with("lib.rs")),
        "the walk found no src/lib.rs: {:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    files
}

fn check_src(rule: fn(&str, &str) -> Vec<Finding>) -> Vec<Finding> {
    rust_sources()
        .iter()
        .flat_map(|(path, text)| rule(path, text))
        .collect()
}

#[test]
fn no_lock_guard_is_held_across_an_await_in_src() {
    let findings = check_src(rust::guards_across_await);
    assert!(findings.is_empty(), "\n{}", report(&findings));
}

#[test]
fn no_cancel_unsafe_future_races_in_a_select_arm_in_src() {
    let findings = check_src(rust::cancel_unsafe_select_arms);
    assert!(findings.is_empty(), "\n{}", report(&findings));
}

#[test]
fn every_timer_in_src_says_why_it_is_not_polling() {
    let findings = check_src(rust::timers_without_note);
    assert!(findings.is_empty(), "\n{}", report(&findings));
}

#[test]
fn every_timer_in_the_worker_says_why_it_is_not_polling() {
    let files = source_files("worker", "py");
    assert!(
        files.iter().any(|(path, _)| path.ends_with("agent.py")),
        "the walk found no worker/agent.py"
    );
    let findings: Vec<Finding> = files
        .iter()
        .flat_map(|(path, text)| python::timers_without_note(path, text))
        .collect();
    assert!(findings.is_empty(), "\n{}", report(&findings));
}

/// The rules pass on src/ because src/ is clean, not because they see nothing there.
#[test]
fn the_scanners_see_the_real_lock_guards_selects_and_timers() {
    let files = rust_sources();
    let masked: Vec<String> = files
        .iter()
        .map(|(_, text)| scan::mask::rust(text).code)
        .collect();
    let guards: usize = masked.iter().map(|c| rust::lock_bindings(c).len()).sum();
    let arms: Vec<_> = masked.iter().flat_map(|c| rust::select_arms(c)).collect();
    let timers: usize = masked
        .iter()
        .map(|c| {
            rust::TIMERS
                .iter()
                .map(|t| scan::find_word(c, t).len())
                .sum::<usize>()
        })
        .sum();
    assert!(guards > 0, "no lock guard binding found in src/");
    assert!(
        arms.len() > 1 && arms.iter().all(Result::is_ok),
        "select! arms parsed: {}",
        arms.len()
    );
    assert!(timers > 0, "no timer call found in src/");
}

// ---- a. lock guards across .await -------------------------------------------------------

#[test]
fn a_tokio_mutex_guard_held_across_an_await_is_flagged() {
    let bad = r#"
use tokio::sync::Mutex;
async fn f(m: &Mutex<u32>, tx: &Sender) {
    let mut g = m.lock().await;
    *g += 1;
    tx.send(*g).await;
}
"#;
    let findings = rust::guards_across_await("bad.rs", bad);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!((findings[0].file.as_str(), findings[0].line), ("bad.rs", 4));
    assert!(
        findings[0]
            .to_string()
            .starts_with("bad.rs:4: tokio lock guard `g`")
            && findings[0].message.contains("line 6"),
        "{}",
        findings[0]
    );
    // A guard moved into a spawned future is held across that future's awaits.
    let bad = "fn f(m: &Mutex<u32>) {\n    let g = m.lock().unwrap();\n    spawn(async move {\n        use_it(&g);\n        x.await;\n    });\n}\n";
    assert_eq!(rust::guards_across_await("bad.rs", bad).len(), 1);
    // A tokio RwLock's guards too.
    let bad = "async fn f(l: &RwLock<u32>) {\n    let r = l.read().await;\n    work().await;\n}\n";
    assert_eq!(rust::guards_across_await("bad.rs", bad).len(), 1);
}

#[test]
fn a_std_mutex_guard_held_across_an_await_is_flagged() {
    for taken in [
        "let st = self.state.lock().unwrap();",
        "let mut st = self.lock();",
        "let st = lock(&self.sessions);",
        "let st = m.lock().unwrap_or_else(|p| p.into_inner());",
        "let st: MutexGuard<'_, State> = m.lock().expect(\"poisoned\");",
    ] {
        let bad = format!(
            "async fn f(&self) {{\n    {taken}\n    if st.ready {{\n        self.notify.notified().await;\n    }}\n}}\n"
        );
        let findings = rust::guards_across_await("bad.rs", &bad);
        assert_eq!(findings.len(), 1, "{taken}: {findings:?}");
        assert!(
            findings[0]
                .to_string()
                .starts_with("bad.rs:2: std lock guard `st`")
                && findings[0].message.contains("line 4"),
            "{}",
            findings[0]
        );
    }
}

#[test]
fn a_guard_dropped_scoped_or_temporary_before_the_await_is_not_flagged() {
    let good = r#"
async fn f(&self, m: &tokio::sync::Mutex<u32>) {
    let g = m.lock().await;
    let n = *g;
    drop(g);
    send(n).await;
    let epoch = {
        let st = self.lock();
        st.epoch
    };
    tokio::time::sleep(grace).await;
    let done = self.state.lock().unwrap().done;
    let n = lock(&self.sessions).len();
    let _ = m.lock().await;
    // let g = m.lock().await; work().await;
    let s = "let g = m.lock().await; x.await";
    wait(done, n, epoch).await;
    let mut st = self.lock();
    tracker.spawn(async move {
        other.cancel().await;
    });
    st.finish()
}
"#;
    let findings = rust::guards_across_await("good.rs", good);
    assert!(findings.is_empty(), "{}", report(&findings));
}

// ---- b. cancel-unsafe futures in select! arms -------------------------------------------

#[test]
fn read_exact_and_friends_in_a_select_arm_are_flagged() {
    let bad = r#"
async fn pump(sock: &mut TcpStream, stop: &Notify) {
    let mut buf = [0u8; 4];
    loop {
        tokio::select! {
            biased;
            _ = stop.notified() => return,
            r = sock.read_exact(&mut buf) => {
                handle(r);
            }
            _ = tokio::io::copy(&mut a, &mut b), if copying => {}
        }
    }
}
"#;
    let findings = rust::cancel_unsafe_select_arms("bad.rs", bad);
    let places: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(places.len(), 2, "{places:?}");
    assert!(
        places[0].starts_with("bad.rs:8: `read_exact(..)`"),
        "{places:?}"
    );
    assert!(places[1].starts_with("bad.rs:11: `copy(..)`"), "{places:?}");
    // The other delimiters and a line-ending expression arm.
    let bad = "fn f() { select!( line = reader.read_line(&mut s) => line, _ = t => () ) }";
    assert_eq!(rust::cancel_unsafe_select_arms("bad.rs", bad).len(), 1);
}

#[test]
fn cancel_safe_arms_and_unsafe_calls_in_handlers_are_not_flagged() {
    let good = r#"
async fn pump(sock: &mut TcpStream, frames: &mut FramedRead<R, C>) {
    let mut pending = Box::pin(sock.write_all(b"x"));
    loop {
        tokio::select! {
            ready = sock.readable() => {
                // The handler may do anything: it runs only once its arm won.
                sock.read_exact(&mut buf).await?;
            }
            frame = frames.next() => match frame {
                Some(f) => handle(f),
                None => return,
            },
            done = &mut pending => break,
            n = self.state.changed(), if self.watching => {}
            else => break,
        }
    }
    let s = "tokio::select! { r = sock.read_exact(&mut b) => {} }";
}
"#;
    let findings = rust::cancel_unsafe_select_arms("good.rs", good);
    assert!(findings.is_empty(), "{}", report(&findings));
}

// ---- c. timers without their note ------------------------------------------------------

#[test]
fn a_bare_sleep_or_timeout_is_flagged_and_a_noted_one_is_not() {
    let src = r#"
async fn f() {
    tokio::time::sleep(Duration::from_secs(1)).await;
    // not polling: one deadline, the grace.
    tokio::time::sleep(grace).await;
    // not polling: the whole wait is bounded by one deadline, armed once
    // when the request arrives, and it ends on the event
    // (the answer) or at the deadline.
    let answer = tokio::time::timeout(deadline, rx).await;
    let mut tick = tokio::time::interval(PERIOD); // not polling: a metrics export period.
    /// Docs may say sleep(1) or timeout(x).
    let s = "sleep(1)";
    // sleep(1) in a plain comment is no call either.
    std::thread::sleep(Duration::from_millis(5));
    tokio::time::timeout_at(at, fut).await;
}

fn sleep(d: Duration) {}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn t() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
"#;
    let findings = rust::timers_without_note("src/x.rs", src);
    let places: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    assert_eq!(places.len(), 3, "{places:#?}");
    assert!(
        places[0].starts_with("src/x.rs:3: `sleep(..)`"),
        "{places:?}"
    );
    assert!(
        places[1].starts_with("src/x.rs:14: `sleep(..)`"),
        "{places:?}"
    );
    assert!(
        places[2].starts_with("src/x.rs:15: `timeout_at(..)`"),
        "{places:?}"
    );
}

#[test]
fn python_timed_waits_are_flagged_and_untimed_or_noted_ones_are_not() {
    let src = r#"
import select, threading, time

def sleep(n):
    """time.sleep(n) in a docstring is no call."""

def worker(ev, lock, sock, proc):
    time.sleep(0.1)
    ev.wait(5)
    ev.wait()
    lock.acquire()
    lock.acquire(timeout=2)
    select.select([sock], [], [])
    select.select([sock], [], [], 0.5)
    proc.poll()
    t = threading.Timer(1.0, print)
    q.get(timeout=None)
    # not polling: one deadline per burst, armed by its first write.
    time.sleep(FLUSH_DELAY)
    ev.wait(timeout=3)  # not polling: the reader thread's answer, or give up
    s = "time.sleep(1)"  # a string
"#;
    let findings = python::timers_without_note("worker/x.py", src);
    let lines: Vec<usize> = findings.iter().map(|f| f.line).collect();
    assert_eq!(lines, vec![8, 9, 12, 14, 16], "{}", report(&findings));
    assert!(
        findings[0]
            .to_string()
            .starts_with("worker/x.py:8: `sleep(..)` without"),
        "{}",
        findings[0]
    );
}
