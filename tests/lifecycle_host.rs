//! Nothing of a host is left behind, whatever way it ends, and its own upkeep never stalls
//! other sessions: workers die with the host (`PR_SET_PDEATHSIG`, armed from a thread that
//! lives as long as the host), but not when some short-lived thread of the host exits;
//! removing a large session directory does not delay other sessions; a restarted server
//! removes what a crashed one left on disk; an interpreter that hangs when probed fails
//! `exec` and `serve` within the start deadline.

mod common;

use std::time::Duration;

use common::server::*;
use common::{guard, wait_pid_exit};
use futures::StreamExt;
use reqwest::Client;
use serde_json::json;

/// Code that starts a child, then holds the GIL inside a C call for a minute: the worker's
/// reader thread can never run, so only the kernel can end this worker (and its child) when
/// the host dies.
const GIL_HELD: &str = "import subprocess\nc = subprocess.Popen(['sleep', '600'])\n\
    print('go', c.pid, flush=True)\nimport ctypes\nctypes.PyDLL(None).sleep(60)";

#[tokio::test]
async fn a_worker_stuck_in_c_with_the_gil_dies_with_a_killed_server() {
    // Without the sandbox (whose namespace ends its processes: tests/server_sandbox.rs), the
    // parent-death signal and the group's keeper must.
    let (mut child, base) = spawn_server(&["--min-idle", "0", "--sandbox", "off"]);
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let info = json_of(http.get(format!("{base}/v1/sessions/{id}"))).await;
    let pid = info["pid"].as_u64().unwrap() as u32;
    let resp = http
        .post(format!("{base}/v1/sessions/{id}/execute"))
        .bearer_auth(ALICE)
        .header("accept", "text/event-stream")
        .json(&json!({ "code": GIL_HELD }))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    let grandchild: u32 = loop {
        let Some(chunk) = guard(body.next()).await else {
            panic!("the stream ended: {seen}");
        };
        seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        let found = seen.split("go ").nth(1).and_then(|rest| {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            rest[digits.len()..]
                .starts_with("\\n")
                .then(|| digits.parse().ok())?
        });
        if let Some(found) = found {
            break found;
        }
    };
    child.kill_and_wait();
    assert!(
        wait_pid_exit(pid, Duration::from_secs(2)).await,
        "the worker {pid} outlived its killed server by 2 s"
    );
    assert!(
        wait_pid_exit(grandchild, Duration::from_secs(2)).await,
        "the worker's child {grandchild} outlived the killed server by 2 s"
    );
}

/// A worker started from a thread that then exits (here a blocking-pool thread with a tiny
/// keep-alive) survives: the parent-death signal follows the thread that forked, so forking
/// must not happen on such threads.
#[test]
fn a_worker_survives_the_exit_of_the_thread_that_started_its_session() {
    let (stopped_tx, mut stopped) = tokio::sync::mpsc::unbounded_channel::<i32>();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(Duration::from_millis(50))
        .on_thread_stop(move || {
            // SAFETY: gettid has no preconditions.
            let _ = stopped_tx.send(unsafe { libc::gettid() });
        })
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let handle = tokio::runtime::Handle::current();
        let (session, tid) = tokio::task::spawn_blocking(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let session = handle
                .block_on(pyrepl3::Session::start(pyrepl3::SessionConfig::default()))
                .unwrap();
            (session, tid)
        })
        .await
        .unwrap();
        let pid = session.info().await.unwrap().pid.expect("a worker runs");
        // The blocking thread that started the session idles out and stops.
        guard(async { while stopped.recv().await != Some(tid) {} }).await;
        // Its exit follows at once; a worker killed by it would be gone well within this.
        assert!(
            !wait_pid_exit(pid, Duration::from_secs(1)).await,
            "the worker died with the thread that started its session"
        );
        assert_eq!(common::eval(&session, "1+1").await.as_deref(), Some("2"));
        let now = session.info().await.unwrap().pid;
        assert_eq!(now, Some(pid), "the same worker answered");
        session.shutdown().await.unwrap();
    });
}

/// A `python` that never answers: it records its pid (the leader of the group it is started
/// in) and sleeps in a child of its own.
fn hanging_python(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("python");
    let script = format!("#!/bin/sh\necho $$ > {}/pid\nsleep 1000\n", dir.display());
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// After the host gave up: the probe and its child were killed (its group empties: the
/// host reaps the probe, its SIGKILLed child may take a moment to exit).
fn assert_probe_gone(dir: &std::path::Path) {
    let Ok(pid) = std::fs::read_to_string(dir.join("pid")) else {
        return; // killed (under load) before it could start anything
    };
    let pid: u32 = pid.trim().parse().unwrap();
    assert!(
        common::group_gone_within(pid, Duration::from_secs(5)),
        "the hung probe's group is left"
    );
}

#[test]
fn exec_with_a_python_that_hangs_when_probed_fails_within_the_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let python = hanging_python(dir.path());
    let t0 = std::time::Instant::now();
    let mut child = common::Watched::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
            .args(["exec", "--start-timeout", "1", "--python"])
            .arg(&python)
            .arg("print(1)")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        Duration::from_secs(20),
    );
    let status = child.finish();
    let stderr = child.stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("did not answer its start-up probe within 1s")
            && stderr.contains(&python.display().to_string()),
        "{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_probe_gone(dir.path());
}

#[test]
fn serve_with_a_python_that_hangs_when_probed_fails_within_the_start_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let python = hanging_python(dir.path());
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, "[pool]\nmin_idle = 1\nstart_timeout_secs = 1.0\n").unwrap();
    let t0 = std::time::Instant::now();
    let mut child = common::Watched::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--token",
                ALICE,
                "--store",
                ":memory:",
            ])
            .arg("--config")
            .arg(&cfg)
            .arg("--python")
            .arg(&python)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
        Duration::from_secs(20),
    );
    let status = child.finish();
    let stderr = child.stderr();
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("did not answer its start-up probe within 1s")
            && stderr.contains(&python.display().to_string()),
        "{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(!child.stdout().contains("serving"), "{}", child.stdout());
    assert_probe_gone(dir.path());
}

/// The working directory of a new session on a server process (`os.getcwd()` in it).
async fn session_cwd(http: &Client, base: &str) -> std::path::PathBuf {
    let id = create_session_at(http, base).await;
    let out = json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({"code": "import os\nopen('left.txt', 'w').write('x')\nos.getcwd()"})),
    )
    .await;
    let repr = out["result"]["repr"].as_str().unwrap().trim_matches('\'');
    std::path::PathBuf::from(repr)
}

#[tokio::test]
async fn a_restarted_server_removes_what_a_killed_one_left_and_spares_live_ones() {
    let tmp = tempfile::tempdir().unwrap();
    // Not there yet: the first server makes it, private.
    let root = tmp.path().join("runs");
    let env = [("PYREPL3_RUN_ROOT", root.as_path())];
    let http = Client::new();
    let (mut dead, dead_base) = spawn_server_env(&["--min-idle", "0"], &env);
    let dead_cwd = session_cwd(&http, &dead_base).await;
    let dead_run = dead_cwd.parent().unwrap().to_path_buf();
    assert_eq!(dead_run.parent(), Some(root.as_path()), "{dead_cwd:?}");
    assert!(dead_cwd.join("left.txt").exists());
    let (mut live, live_base) = spawn_server_env(&["--min-idle", "0"], &env);
    let live_cwd = session_cwd(&http, &live_base).await;
    dead.kill_and_wait();
    assert!(
        dead_run.exists(),
        "a killed server leaves its directory behind"
    );
    // Up once it prints its address; by then the dead server's directory is gone.
    let (mut next, _) = spawn_server_env(&["--min-idle", "0"], &env);
    assert!(!dead_run.exists(), "{dead_run:?} is left");
    assert!(
        !root
            .as_path()
            .join(format!(
                "{}.lock",
                dead_run.file_name().unwrap().to_str().unwrap()
            ))
            .exists(),
        "its lock file is left"
    );
    assert!(
        live_cwd.join("left.txt").exists(),
        "a live server's session lost its directory"
    );
    // The root is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.as_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    live.kill_and_wait();
    next.kill_and_wait();
}

/// 100 000 empty files (100 directories of 1 000): removing them takes about half a second
/// of system time here (more than 1 GB in 50 000 files of 20 KiB did: the cost is per file),
/// which on the runtime's thread would stall every session. Empty, so that a CI machine's
/// free disk space is no part of the test.
const FILL: &str = "import os\nfor d in range(100):\n    os.mkdir('d%d' % d)\n    \
    for i in range(1000):\n        open('d%d/f%d' % (d, i), 'wb').close()\n\
    os.getcwd()";

/// One round of the test below: fills a new session's directory, then deletes the session
/// while `1+1` round trips run back to back on `other`. Returns how long the removal took
/// (from the DELETE to the directory's removal) and the slowest round trip in flight
/// meanwhile.
async fn delete_a_large_session(http: &Client, base: &str, other: &str) -> (Duration, Duration) {
    let big = create_session_at(http, base).await;
    let out = json_of(
        http.post(format!("{base}/v1/sessions/{big}/execute"))
            .json(&json!({ "code": FILL })),
    )
    .await;
    let Some(repr) = out["result"]["repr"].as_str() else {
        panic!("filling the session's directory failed: {out}");
    };
    let cwd = std::path::PathBuf::from(repr.trim_matches('\''));
    assert!(cwd.join("d99/f999").exists(), "{out}");
    // `1+1` round trips on the other session, back to back, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = tokio::spawn({
        let (http, base, stop, other) = (
            http.clone(),
            base.to_string(),
            stop.clone(),
            other.to_string(),
        );
        async move {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = std::time::Instant::now();
                let out = json_of(
                    http.post(format!("{base}/v1/sessions/{other}/execute"))
                        .json(&json!({ "code": "1+1" })),
                )
                .await;
                assert_eq!(out["result"]["repr"], "2", "{out}");
                samples.push((sent, sent.elapsed()));
            }
            samples
        }
    });
    let watch = common::RemovalWatch::new(&cwd);
    let deleting = std::time::Instant::now();
    let resp = http
        .delete(format!("{base}/v1/sessions/{big}"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let deadline = deleting + Duration::from_secs(60);
    let removed = tokio::task::spawn_blocking(move || watch.wait(deadline))
        .await
        .unwrap();
    let gone = std::time::Instant::now();
    assert!(removed, "the session's directory was not removed");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = guard(looping).await.unwrap();
    let deletion = gone - deleting;
    let during: Vec<Duration> = samples
        .iter()
        .filter(|(sent, took)| *sent < gone && *sent + *took > deleting)
        .map(|(_, took)| *took)
        .collect();
    let worst = during.iter().max().copied().unwrap_or_default();
    eprintln!(
        "deletion took {deletion:?}; {} round trips of `1+1` during it, the slowest {worst:?}",
        during.len()
    );
    assert!(!during.is_empty());
    (deletion, worst)
}

/// A `1+1` round trip slower than this AND than a third of the removal counts as delayed by
/// it. A removal on the (only) runtime thread holds a round trip for all of it: a third
/// catches that however fast the removal is, and the floor (far below the removal of 50 000
/// files, even on tmpfs) keeps a scheduling hiccup of a loaded machine during a quick removal
/// from counting.
const DELAYED: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_with_a_large_directory_does_not_delay_another_session() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs");
    // The round trips below come back to back: no rate limit in their way.
    let cfg = tmp.path().join("serve.toml");
    std::fs::write(
        &cfg,
        "[[tenants]]\nname = \"default\"\ntoken = \"x\"\nrate_per_second = 1e6\nburst = 1000000\n",
    )
    .unwrap();
    // One runtime thread: a removal on it stalls every session for the whole removal
    // (deterministic), where with more threads others may pick up the work meanwhile.
    let (server, base) = spawn_server_with(
        &["--min-idle", "0", "--config", cfg.to_str().unwrap()],
        |command| {
            command
                .env("PYREPL3_RUN_ROOT", &root)
                .env("TOKIO_WORKER_THREADS", "1");
        },
    );
    let http = Client::new();
    let other = create_session_at(&http, &base).await;
    // A loaded machine may stall one round (the scheduler, not the server): up to three
    // rounds, one must pass; a blocked runtime fails every one.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let (deletion, worst) = delete_a_large_session(&http, &base, &other).await;
        rounds.push((deletion, worst));
        if worst < DELAYED.max(deletion / 3) {
            break;
        }
    }
    let (deletion, worst) = *rounds.last().unwrap();
    assert!(
        worst < DELAYED.max(deletion / 3),
        "a `1+1` was delayed by the removal in every round (removal, slowest): {rounds:?}"
    );
    // Dropped, not waited for: this test's own deadline may have passed on a loaded machine.
    drop(server);
}

/// The group of worker `pid` (led by the session's supervisor, the worker's parent) and its
/// keeper: the one other member, a `sh` waiting on its pipe.
fn keeper_of(pid: u32) -> (u32, u32) {
    let pgid = common::pgid_of(pid);
    let members = common::group_members(pgid);
    let others: Vec<u32> = members
        .iter()
        .copied()
        .filter(|&m| m != pid && m != pgid)
        .collect();
    assert_eq!(
        others.len(),
        1,
        "the supervisor, the worker and its keeper: {members:?}"
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", others[0])).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("read _"),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    (pgid, others[0])
}

#[tokio::test]
async fn no_process_of_a_sessions_group_is_left_once_it_is_deleted() {
    let (server, base) = spawn_server(&["--min-idle", "0", "--sandbox", "off"]);
    let http = Client::new();
    let mut groups = Vec::new();
    for _ in 0..3 {
        let id = create_session_at(&http, &base).await;
        let info = json_of(http.get(format!("{base}/v1/sessions/{id}"))).await;
        let pid = info["pid"].as_u64().unwrap() as u32;
        let (pgid, keeper) = keeper_of(pid);
        groups.push((id, pid, pgid, keeper));
    }
    for (id, ..) in &groups {
        let resp = http
            .delete(format!("{base}/v1/sessions/{id}"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }
    for (_, pid, pgid, keeper) in groups {
        assert!(
            wait_pid_exit(keeper, Duration::from_secs(5)).await,
            "keeper {keeper} left"
        );
        assert!(
            wait_pid_exit(pid, Duration::from_secs(5)).await,
            "worker {pid} left"
        );
        assert!(common::group_members(pgid).is_empty(), "group {pgid} left");
    }
    drop(server);
}

/// An ended session leaves no zombie either: its keeper is reaped with the worker.
#[tokio::test]
async fn a_sessions_keeper_is_reaped_when_the_session_ends() {
    let session = pyrepl3::Session::start(pyrepl3::SessionConfig::default())
        .await
        .unwrap();
    let pid = session.info().await.unwrap().pid.expect("a worker runs");
    let (_, keeper) = keeper_of(pid);
    session.shutdown().await.unwrap();
    assert!(wait_pid_exit(keeper, Duration::from_secs(5)).await);
    assert!(
        !common::process_exists(keeper),
        "the keeper {keeper} is a zombie after its session ended"
    );
    assert!(!common::process_exists(pid), "the worker is not reaped");
}

/// Runs its arguments as a child, as a child subreaper (`PR_SET_CHILD_SUBREAPER`) in the
/// test's session, like tini or a container's init sitting in the host's session: orphans
/// of the host are adopted by it, so the kernel never sees their groups orphaned (no SIGHUP
/// for them). Prints the child's pid, then reaps what it adopts.
const SUBREAPER: &str = "import ctypes, os, subprocess, sys\n\
    assert ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) == 0\n\
    p = subprocess.Popen(sys.argv[1:])\nprint(p.pid, flush=True)\n\
    while True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        break\n";

#[tokio::test]
async fn a_killed_servers_workers_children_die_even_when_a_subreaper_adopts_them() {
    let mut helper = common::Watched::spawn(
        std::process::Command::new("python3")
            .args(["-c", SUBREAPER, env!("CARGO_BIN_EXE_pyrepl3")])
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--token",
                ALICE,
                "--min-idle",
                "0",
                "--sandbox",
                "off",
                "--store",
                ":memory:",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
        common::GUARD,
    );
    let (mut server, mut base) = (None, None);
    while server.is_none() || base.is_none() {
        let line = helper.read_line();
        let line = line.trim();
        if let Ok(pid) = line.parse::<i32>() {
            server = Some(pid);
        } else if let Some(url) = line.strip_prefix("pyrepl3 serving on ") {
            base = Some(url.trim_end_matches('/').to_string());
        }
    }
    let (server, base) = (server.unwrap(), base.unwrap());
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let info = json_of(http.get(format!("{base}/v1/sessions/{id}"))).await;
    let pid = info["pid"].as_u64().unwrap() as u32;
    let out = json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({"code": "import subprocess\nsubprocess.Popen(['sleep', '100']).pid"})),
    )
    .await;
    let grandchild: u32 = out["result"]["repr"].as_str().unwrap().parse().unwrap();
    // SAFETY: kill has no memory-safety preconditions; `server` is alive (it just answered).
    assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
    assert!(
        wait_pid_exit(pid, Duration::from_secs(2)).await,
        "the worker {pid} outlived its killed server by 2 s"
    );
    assert!(
        wait_pid_exit(grandchild, Duration::from_secs(2)).await,
        "the worker's child {grandchild} outlived the killed server by 2 s"
    );
    helper.kill_and_wait();
}

/// The soft open-file limit the server below is started with; its hard limit is left as is.
const LOGIN_SOFT_NOFILE: libc::rlim_t = 1024;

#[tokio::test]
async fn workers_start_with_the_open_file_limit_the_server_was_started_with() {
    let (server, base) = spawn_server_with(&["--min-idle", "0"], |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: getrlimit and setrlimit are async-signal-safe; the rlimit is on the stack.
        unsafe {
            command.pre_exec(|| {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                limit.rlim_cur = LOGIN_SOFT_NOFILE.min(limit.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    let out = json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({"code": "import resource\nresource.getrlimit(resource.RLIMIT_NOFILE)"})),
    )
    .await;
    let repr = out["result"]["repr"].as_str().unwrap_or_default();
    let soft: u64 = repr
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );
    assert_eq!(
        soft,
        LOGIN_SOFT_NOFILE.min(hard.rlim_max),
        "the worker's limits: {repr}"
    );
    drop(server);
}

/// The entries of a run root: what processes left there.
fn left_in(root: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn a_graceful_end_leaves_no_run_directory_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs");
    // exec (its session in the run directory) and a served, sandboxed session.
    let mut exec = common::Watched::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_pyrepl3"))
            .args(["exec", "--temp-dir", "open('f', 'w').write('x')"])
            .env("PYREPL3_RUN_ROOT", &root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
        common::GUARD,
    );
    assert!(exec.finish().success(), "{}", exec.stderr());
    assert_eq!(left_in(&root), Vec::<String>::new());
    let (mut server, base) = spawn_server_with(&["--min-idle", "1"], |command| {
        command.env("PYREPL3_RUN_ROOT", &root);
    });
    let http = Client::new();
    let id = create_session_at(&http, &base).await;
    json_of(
        http.post(format!("{base}/v1/sessions/{id}/execute"))
            .json(&json!({ "code": "open('f', 'w').write('x')" })),
    )
    .await;
    assert!(
        !left_in(&root).is_empty(),
        "the server's run directory is there meanwhile"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let status = common::guard(tokio::task::spawn_blocking(move || server.wait()))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(left_in(&root), Vec::<String>::new());
}
