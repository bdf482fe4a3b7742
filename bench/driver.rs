//! The pyrepl3 side of the side-by-side benchmark: drives the Rust library directly and
//! speaks the driver protocol of `bench/README.md` (JSON lines on stdin/stdout). The
//! orchestrator (`bench/compare.py`) runs it next to the Jupyter driver.
//!
//! Built by `bench/run` as `cargo build --release --example bench_driver`.
//!
//! Uses only the crate's public API re-exported at its root (`pyrepl3::{Session, ...}`); what
//! the benchmark needs beyond it (resident memory, the interpreter's real path) it reads
//! itself, the same way the Jupyter driver does.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use pyrepl3::{
    CancelOutcome, Event, ExecuteOptions, Execution, PoolConfig, Session, SessionConfig,
    SessionPool, SessionState,
};
use serde_json::{json, Value};

type CaseResult = Result<(Vec<f64>, Value), String>;

struct Driver {
    /// The interpreter as the orchestrator passed it (the venv's `bin/python`); sessions are
    /// configured with it and resolve it themselves.
    python: PathBuf,
    /// Its `sys.executable`, resolved once at setup: the binary a session's worker runs, and
    /// the one the bare-interpreter reference of `cold_start` runs.
    real_python: PathBuf,
    session: Option<Session>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut driver = Driver {
        python: PathBuf::from("python3"),
        real_python: PathBuf::from("python3"),
        session: None,
    };
    // Requests are read by a plain thread: tokio's stdin would use its blocking pool, whose
    // idle threads wake on a keep-alive timer and would be counted in the idle case.
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let request: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                reply(json!({"ok": false, "error": format!("bad request: {e}")}));
                continue;
            }
        };
        match request["cmd"].as_str() {
            Some("setup") => {
                if let Some(p) = request["python"].as_str() {
                    driver.python = PathBuf::from(p);
                }
                let ready = match sys_executable(&driver.python).await {
                    Ok(real) => {
                        driver.real_python = real;
                        driver.warm_session().await
                    }
                    Err(e) => Err(e),
                };
                match ready {
                    Ok(_) => reply(
                        json!({"ok": true, "name": "pyrepl3", "version": env!("CARGO_PKG_VERSION")}),
                    ),
                    Err(e) => reply(json!({"ok": false, "error": e})),
                }
            }
            Some("run") => {
                let case = request["case"].as_str().unwrap_or_default().to_string();
                let n = request["n"].as_u64().unwrap_or(1) as usize;
                match driver.run(&case, n).await {
                    Ok((samples, extra)) => {
                        reply(json!({"ok": true, "samples": samples, "extra": extra}))
                    }
                    Err(e) => reply(json!({"ok": false, "error": e})),
                }
            }
            Some("quit") => break,
            other => reply(json!({"ok": false, "error": format!("unknown cmd {other:?}")})),
        }
    }
    if let Some(session) = driver.session.take() {
        let _ = session.shutdown().await;
    }
}

fn reply(value: Value) {
    println!("{value}");
}

/// Sessions of this driver; in a sandbox (`src/worker/sandbox.rs`, as `serve` runs them)
/// when `PYREPL3_BENCH_SANDBOX=1` (bench/sandbox.py runs one driver of each kind).
fn config(python: &Path) -> SessionConfig {
    let sandboxed = std::env::var_os("PYREPL3_BENCH_SANDBOX").is_some_and(|v| v == "1");
    SessionConfig {
        python: python.to_path_buf(),
        sandbox: sandboxed.then(pyrepl3::SandboxConfig::default),
        inherit_env: !sandboxed,
        ..SessionConfig::default()
    }
}

/// Reads events to the terminal one; returns it and the output bytes seen.
async fn finish(execution: &mut Execution) -> Result<(Event, usize), String> {
    let mut bytes = 0;
    while let Some(event) = execution.next_event().await {
        match event {
            Event::Output { data, .. } => bytes += data.len(),
            Event::Input { .. } => return Err("unexpected input request".into()),
            terminal => return Ok((terminal, bytes)),
        }
    }
    Err("execution ended without a terminal event".into())
}

async fn wait_output(execution: &mut Execution) -> Result<(), String> {
    match execution.next_event().await {
        Some(Event::Output { .. }) => Ok(()),
        other => Err(format!("expected output, got {other:?}")),
    }
}

async fn worker_pid(session: &Session) -> Result<u32, String> {
    let info = session.info().await.map_err(|e| e.to_string())?;
    info.pid.ok_or_else(|| "no worker pid".to_string())
}

/// The parent of `pid` (`PPid` of `/proc/<pid>/status`).
fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Memory only `pid` holds, in bytes: `Private_Clean` + `Private_Dirty` of
/// `/proc/<pid>/smaps_rollup`.
fn private_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let rollup = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(rollup
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024)
}

/// Resident memory of `pid` in bytes: `VmRSS` of `/proc/<pid>/status` (as the Jupyter driver
/// reads it).
fn rss(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS in {path}"))
}

/// `sys.executable` of `python`: the real interpreter behind a venv link or a launcher shim,
/// as a session resolves it before it spawns its worker.
async fn sys_executable(python: &Path) -> Result<PathBuf, String> {
    let out = tokio::process::Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || real.is_empty() {
        return Err(format!(
            "{} gave no sys.executable ({}): {}",
            python.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(real))
}

impl Driver {
    async fn warm_session(&mut self) -> Result<Session, String> {
        if let Some(s) = &self.session {
            if s.state() == SessionState::Idle {
                return Ok(s.clone());
            }
            let _ = s.shutdown().await;
        }
        let session = Session::start(config(&self.python))
            .await
            .map_err(|e| e.to_string())?;
        // Warm it: first executions pay for imports and caches.
        for _ in 0..20 {
            let mut ex = session.execute("1+1", ExecuteOptions::default());
            finish(&mut ex).await?;
        }
        self.session = Some(session.clone());
        Ok(session)
    }

    async fn run(&mut self, case: &str, n: usize) -> CaseResult {
        let s = self.warm_session().await?;
        let mut samples = Vec::with_capacity(n);
        let mut extra = json!({});
        match case {
            "roundtrip" => {
                for _ in 0..n {
                    let t0 = Instant::now();
                    let mut ex = s.execute("1+1", ExecuteOptions::default());
                    let (end, _) = finish(&mut ex).await?;
                    samples.push(t0.elapsed().as_secs_f64());
                    if !matches!(end, Event::Result { .. }) {
                        return Err(format!("1+1 failed: {end:?}"));
                    }
                }
            }
            "cold_start" => {
                // One sample: a new session, until the result of its first `1+1` has arrived
                // (the worker defers its imports to the first execution, so `ready` alone
                // would flatter it). extra `ready`: the part until `Session::start` returned.
                // extra `bare`: the reference, the same interpreter's own start
                // (`python -c pass`), spawned from this process too, interleaved with ours.
                let real = &self.real_python;
                let mut bare = Vec::with_capacity(n);
                let mut ready = Vec::with_capacity(n);
                for _ in 0..n {
                    let t0 = Instant::now();
                    let status = tokio::process::Command::new(real)
                        .args(["-c", "pass"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .status()
                        .await
                        .map_err(|e| e.to_string())?;
                    bare.push(t0.elapsed().as_secs_f64());
                    if !status.success() {
                        return Err(format!("{} -c pass failed: {status}", real.display()));
                    }
                    let t0 = Instant::now();
                    let fresh = Session::start(config(&self.python))
                        .await
                        .map_err(|e| e.to_string())?;
                    ready.push(t0.elapsed().as_secs_f64());
                    let mut ex = fresh.execute("1+1", ExecuteOptions::default());
                    let (end, _) = finish(&mut ex).await?;
                    samples.push(t0.elapsed().as_secs_f64());
                    let _ = fresh.shutdown().await; // not timed
                    match end {
                        Event::Result { repr: Some(r), .. } if r == "2" => {}
                        other => return Err(format!("first 1+1 of a new session: {other:?}")),
                    }
                }
                extra = json!({"bare": bare, "ready": ready});
            }
            "print_lines" | "print_10mb" => {
                let code = if case == "print_lines" {
                    "for i in range(200000): print(i)"
                } else {
                    "print('x'*10_000_000)"
                };
                let mut total = 0;
                for _ in 0..n {
                    let t0 = Instant::now();
                    let mut ex = s.execute(code, ExecuteOptions::default());
                    let (_, bytes) = finish(&mut ex).await?;
                    samples.push(t0.elapsed().as_secs_f64());
                    total = bytes;
                }
                extra = json!({"bytes": total});
            }
            "first_output" => {
                for _ in 0..n {
                    let t0 = Instant::now();
                    let mut ex = s.execute("print('hi')", ExecuteOptions::default());
                    wait_output(&mut ex).await?;
                    samples.push(t0.elapsed().as_secs_f64());
                    finish(&mut ex).await?;
                }
            }
            "interrupt_busy" | "interrupt_sleep" => {
                let code = if case == "interrupt_busy" {
                    "print('go', flush=True)\nwhile True: pass"
                } else {
                    "import time\nprint('go', flush=True)\nwhile True: time.sleep(0.01)"
                };
                for _ in 0..n {
                    let mut ex = s.execute(code, ExecuteOptions::default());
                    wait_output(&mut ex).await?;
                    let t0 = Instant::now();
                    let id = ex.id().to_string();
                    let (outcome, end) =
                        tokio::join!(s.cancel(&id, Duration::from_secs(5)), finish(&mut ex));
                    samples.push(t0.elapsed().as_secs_f64());
                    let (end, _) = end?;
                    match (&end, outcome) {
                        (Event::Error { exception_type, .. }, Ok(CancelOutcome::Cancelled))
                            if exception_type == "KeyboardInterrupt" => {}
                        other => return Err(format!("cancel ended with {other:?}")),
                    }
                }
            }
            "input" => {
                let mut totals = Vec::with_capacity(n);
                for _ in 0..n {
                    let t_exec = Instant::now();
                    let mut ex = s.execute("x = input()", ExecuteOptions::default());
                    let input_id = match ex.next_event().await {
                        Some(Event::Input { input_id, .. }) => input_id,
                        other => return Err(format!("expected an input request, got {other:?}")),
                    };
                    let t0 = Instant::now();
                    s.input_response(&input_id, "answer")
                        .await
                        .map_err(|e| e.to_string())?;
                    finish(&mut ex).await?;
                    samples.push(t0.elapsed().as_secs_f64());
                    totals.push(t_exec.elapsed().as_secs_f64());
                }
                extra = json!({"total": totals});
            }
            "pids" => {
                // For the orchestrator to measure idle cost from outside: a process that
                // measures itself wakes up to do it.
                let worker = worker_pid(&s).await?;
                extra = json!({"host": std::process::id(), "worker": worker});
            }
            "memory" => {
                let worker = worker_pid(&s).await?;
                let mut ex = s.execute("1+1", ExecuteOptions::default());
                finish(&mut ex).await?;
                // The session's memory: the worker's resident set, plus the pages that only
                // its supervisor holds (its copies of what the worker changed since the
                // supervisor forked it; docs/transactions.md). The rest of the supervisor's
                // resident set is shared with the worker and counted once.
                let supervisor_private = match parent_of(worker) {
                    Some(parent) if parent != std::process::id() => private_bytes(parent)?,
                    _ => 0,
                };
                let worker_rss = rss(worker)? + supervisor_private;
                let host = std::process::id();
                let host_rss_1 = rss(host)?;
                let mut more = Vec::new();
                for _ in 0..49 {
                    more.push(
                        Session::start(config(&self.python))
                            .await
                            .map_err(|e| e.to_string())?,
                    );
                }
                let host_rss_50 = rss(host)?;
                for extra_session in more {
                    let _ = extra_session.shutdown().await;
                }
                extra = json!({
                    "worker_rss": worker_rss,
                    "supervisor_private": supervisor_private,
                    "host_rss_1": host_rss_1,
                    "host_rss_50": host_rss_50,
                    "host_per_session": (host_rss_50 as f64 - host_rss_1 as f64) / 49.0,
                });
            }
            "pool_acquire" => {
                let pool = SessionPool::start(PoolConfig {
                    min_idle: 2,
                    max_sessions: 4,
                    pre_warm: true,
                    recycle_after_executions: None,
                    session: config(&self.python),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
                for _ in 0..n {
                    let t0 = Instant::now();
                    let guard = pool.acquire().await.map_err(|e| e.to_string())?;
                    samples.push(t0.elapsed().as_secs_f64());
                    drop(guard);
                }
                pool.shutdown().await.map_err(|e| e.to_string())?;
            }
            "concurrent" => {
                let t0 = Instant::now();
                let starts = (0..100).map(|_| Session::start(config(&self.python)));
                let sessions: Vec<Session> = futures::future::try_join_all(starts)
                    .await
                    .map_err(|e| e.to_string())?;
                let started = t0.elapsed().as_secs_f64();
                let t1 = Instant::now();
                let work = sessions.iter().map(|session| async move {
                    for i in 0..20 {
                        let mut ex =
                            session.execute(format!("x = {i} * 2\nx"), ExecuteOptions::default());
                        finish(&mut ex).await?;
                    }
                    Ok::<(), String>(())
                });
                futures::future::try_join_all(work).await?;
                let executions = t1.elapsed().as_secs_f64();
                let host_rss = rss(std::process::id())?;
                for session in &sessions {
                    let _ = session.shutdown().await;
                }
                samples.push(started + executions);
                extra = json!({
                    "wall_seconds": started + executions,
                    "start_seconds": started,
                    "execute_seconds": executions,
                    "host_rss": host_rss,
                });
            }
            other => return Err(format!("unsupported case {other:?}")),
        }
        Ok((samples, extra))
    }
}
