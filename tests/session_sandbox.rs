//! The sandbox of a session's worker (`src/worker/sandbox.rs`), tried as an attacker would
//! from inside it: each attempt fails with a Python exception, and the session goes on.

mod common;

use common::*;
use pyrepl3::{SandboxConfig, SessionConfig};

fn sandboxed() -> SessionConfig {
    SessionConfig {
        sandbox: Some(SandboxConfig::default()),
        inherit_env: false,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_sandboxed_worker_runs_code_and_reports_its_host_pid() {
    let s = start_with(sandboxed()).await;
    assert_eq!(eval(&s, "1 + 1").await.as_deref(), Some("2"));
    let info = s.info().await.unwrap();
    let host_pid = info.pid.unwrap();
    let cmdline = std::fs::read(format!("/proc/{host_pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("python"),
        "the pid is the Python process's, as the host sees it: {}",
        String::from_utf8_lossy(&cmdline)
    );
    assert_eq!(
        eval(&s, "import os; os.getpid()").await.as_deref(),
        Some("2")
    );
    assert!(
        info.containment.starts_with("sandbox"),
        "{}",
        info.containment
    );
    s.shutdown().await.unwrap();
}

/// Runs `code` and returns its result's repr: `code` ends with an expression naming what
/// the attempt met (an exception's class and errno, or what it read).
async fn attempt(s: &pyrepl3::Session, code: &str) -> String {
    eval(s, code).await.unwrap_or_default()
}

/// The exception `attempt` raised, as `'ClassName errno'`.
const CATCH: &str = "def caught(f):\n    try:\n        return 'succeeded: %r' % (f(),)\n    except OSError as e:\n        import errno\n        return '%s %s' % (type(e).__name__, errno.errorcode.get(e.errno, e.errno))\n";

#[tokio::test]
async fn a_session_cannot_see_touch_or_signal_another_session_or_the_host() {
    let victim = start_with(sandboxed()).await;
    let attacker = start_with(sandboxed()).await;
    eval(
        &victim,
        "secret = 'hunter2'; open('secret.txt', 'w').write(secret); import os",
    )
    .await;
    let victim_dir = eval(&victim, "os.getcwd()").await.unwrap();
    let victim_pid = victim.info().await.unwrap().pid.unwrap();
    let host_pid = std::process::id();
    eval(&attacker, CATCH).await;
    // Its files: the directory does not exist in the attacker's world.
    assert_eq!(
        attempt(
            &attacker,
            &format!("caught(lambda: open({victim_dir}[1:-1] + '/secret.txt').read())")
        )
        .await,
        "'FileNotFoundError ENOENT'"
    );
    // Its memory, its fds, its environment: no such process in the attacker's /proc.
    for path in ["mem", "fd/1", "environ"] {
        assert_eq!(
            attempt(
                &attacker,
                &format!("caught(lambda: open('/proc/{victim_pid}/{path}', 'rb').read())")
            )
            .await,
            "'FileNotFoundError ENOENT'",
            "/proc/<victim>/{path}"
        );
    }
    // Signals: neither the other worker nor the server can be named; pid 1 refuses.
    for pid in [victim_pid, host_pid] {
        assert_eq!(
            attempt(
                &attacker,
                &format!("import os, signal\ncaught(lambda: os.kill({pid}, signal.SIGKILL))")
            )
            .await,
            "'ProcessLookupError ESRCH'",
            "kill {pid}"
        );
    }
    assert_eq!(
        attempt(
            &attacker,
            "caught(lambda: os.kill(os.getppid(), signal.SIGKILL))"
        )
        .await,
        "'PermissionError EPERM'",
        "the namespace's pid 1 (the parent)"
    );
    assert_eq!(
        attempt(&attacker, "caught(lambda: os.kill(1, signal.SIGTERM))").await,
        "'PermissionError EPERM'"
    );
    // Only its own processes are visible.
    assert_eq!(
        attempt(
            &attacker,
            "sorted(int(p) for p in os.listdir('/proc') if p.isdigit())"
        )
        .await,
        "[1, 2]"
    );
    // The victim and the host are untouched.
    assert_eq!(eval(&victim, "secret").await.as_deref(), Some("'hunter2'"));
    assert_eq!(victim.info().await.unwrap().restarts, 0);
    attacker.shutdown().await.unwrap();
    victim.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_kernel_calls_that_break_out_or_spy_are_refused() {
    let s = start_with(sandboxed()).await;
    eval(&s, CATCH).await;
    eval(&s, "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\ndef call(name, *args):\n    if getattr(libc, name)(*args) == -1:\n        raise OSError(ctypes.get_errno(), name)\n    return 0\nNone").await;
    let refused = [
        ("ptrace(PTRACE_ATTACH, 1)", "call('ptrace', 16, 1, 0, 0)"),
        ("ptrace(PTRACE_TRACEME)", "call('ptrace', 0, 0, 0, 0)"),
        ("unshare(CLONE_NEWUSER)", "call('unshare', 0x10000000)"),
        ("unshare(CLONE_NEWNS)", "call('unshare', 0x00020000)"),
        (
            "mount",
            "call('mount', b'none', b'/tmp', b'tmpfs', 0, None)",
        ),
        ("setns", "call('setns', 0, 0)"),
        (
            "process_vm_readv",
            "call('process_vm_readv', 1, None, 0, None, 0, 0)",
        ),
        ("bpf", "call('syscall', 321, 0, 0, 0)"),
        ("perf_event_open", "call('syscall', 298, 0, 0, 0, 0, 0)"),
        ("keyctl", "call('syscall', 250, 0, 0, 0, 0, 0)"),
        ("reboot", "call('reboot', 0x01234567)"),
        ("swapon", "call('swapon', b'/tmp/x', 0)"),
        ("init_module", "call('syscall', 175, None, 0, b'')"),
        ("kexec_load", "call('syscall', 246, 0, 0, None, 0)"),
    ];
    for (what, code) in refused {
        if cfg!(not(target_arch = "x86_64")) && code.contains("'syscall'") {
            continue; // raw numbers are x86-64's
        }
        assert_eq!(
            attempt(&s, &format!("caught(lambda: {code})")).await,
            "'PermissionError EPERM'",
            "{what}"
        );
    }
    // What ordinary programs do still works: threads and processes (clone3 falls back).
    assert_eq!(
        eval(&s, "import subprocess, threading\nt = threading.Thread(target=lambda: None); t.start(); t.join()\nsubprocess.run(['echo', 'ok'], capture_output=True, text=True).stdout").await.as_deref(),
        Some("'ok\\n'")
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_file_system_is_read_only_but_for_the_working_directory_and_a_bounded_tmp() {
    let s = start_with(SessionConfig {
        sandbox: Some(SandboxConfig {
            tmp_size_bytes: 8 << 20,
            ..Default::default()
        }),
        inherit_env: false,
        ..Default::default()
    })
    .await;
    eval(&s, CATCH).await;
    // The system and the interpreter cannot be rewritten (the agent is not even a file).
    for path in [
        "/usr/lib/pyrepl3-planted.py",
        "/etc/passwd",
        "/planted",
        "/dev/big",
    ] {
        let met = attempt(&s, &format!("caught(lambda: open('{path}', 'w'))")).await;
        assert!(
            met == "'OSError EROFS'" || met == "'PermissionError EACCES'",
            "{path}: {met}"
        );
    }
    let os_file = eval(&s, "import os; os.__file__").await.unwrap();
    let met = attempt(&s, &format!("caught(lambda: open({os_file}, 'a'))")).await;
    assert!(
        met == "'OSError EROFS'" || met == "'PermissionError EACCES'",
        "{met}"
    );
    // Filling the disk: /tmp is full at its size, and says so.
    assert_eq!(
        attempt(&s, "def fill():\n    with open('/tmp/fill', 'wb') as f:\n        for _ in range(64):\n            f.write(b'x' * (1 << 20))\ncaught(fill)").await,
        "'OSError ENOSPC'"
    );
    // The working directory is writable; nothing else of the host is there to read.
    assert_eq!(
        eval(&s, "open('mine.txt', 'w').write('ok')")
            .await
            .as_deref(),
        Some("2")
    );
    let host_dir = tempfile::tempdir().unwrap();
    let secret = host_dir.path().join("token.txt");
    std::fs::write(&secret, "do-not-leak").unwrap();
    assert_eq!(
        attempt(
            &s,
            &format!(
                "caught(lambda: open({:?}).read())",
                secret.to_str().unwrap()
            )
        )
        .await,
        "'FileNotFoundError ENOENT'"
    );
    assert_eq!(
        attempt(&s, "caught(lambda: os.listdir('/home'))").await,
        "'FileNotFoundError ENOENT'"
    );
    // The namespace's pid 1 (root's, or, in a user namespace, the session's own user's).
    let met = attempt(
        &s,
        "caught(lambda: 'do-not-leak' in open('/proc/1/environ').read())",
    )
    .await;
    assert!(
        met == "'PermissionError EACCES'" || met == "'succeeded: False'",
        "{met}"
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_environment_holds_only_what_the_session_sets() {
    std::env::set_var("PYREPL3_TEST_SECRET_TOKEN", "do-not-leak");
    let s = start_with(SessionConfig {
        env: vec![("MY_SETTING".into(), "1".into())],
        ..sandboxed()
    })
    .await;
    let env = eval(&s, "import os; sorted(os.environ)").await.unwrap();
    assert!(!env.contains("SECRET"), "{env}");
    assert!(env.contains("MY_SETTING"), "{env}");
    let environ = eval(&s, "open('/proc/self/environ', 'rb').read()")
        .await
        .unwrap();
    assert!(!environ.contains("do-not-leak"), "{environ}");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn there_is_no_network_but_a_loopback_of_its_own() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = start_with(sandboxed()).await;
    eval(&s, CATCH).await;
    assert_eq!(
        attempt(&s, &format!("import socket\ncaught(lambda: socket.create_connection(('127.0.0.1', {port}), timeout=5))")).await,
        "'ConnectionRefusedError ECONNREFUSED'",
        "the host's loopback is not the sandbox's"
    );
    let met = attempt(
        &s,
        "caught(lambda: socket.create_connection(('1.1.1.1', 53), timeout=5))",
    )
    .await;
    assert_eq!(met, "'OSError ENETUNREACH'");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_worker_runs_as_a_uid_of_its_own() {
    let a = start_with(sandboxed()).await;
    let b = start_with(sandboxed()).await;
    let (ua, ub) = (host_uid(&a).await, host_uid(&b).await);
    let host = unsafe { libc::geteuid() };
    assert_ne!(ua, 0, "never root");
    if host == 0 {
        assert_ne!(ua, ub, "as root each session has its own uid");
        assert!(ua >= 900_000, "{ua}");
    } else {
        assert_eq!(
            ua, host,
            "an ordinary user's sessions run as that user, in a user namespace"
        );
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The real uid of the session's worker, as the host sees it.
async fn host_uid(s: &pyrepl3::Session) -> u32 {
    let pid = s.info().await.unwrap().pid.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn setsid_children_end_with_the_session() {
    let s = start_with(sandboxed()).await;
    eval(&s, "import subprocess\nfor _ in range(3): subprocess.Popen(['setsid', 'sleep', '4321.5'], start_new_session=True)\nNone").await;
    let mut survivors = Vec::new();
    guard(async {
        // The processes exist once `setsid` has exec'd `sleep`: wait for that event.
        while survivors.len() < 3 {
            survivors = processes_running(&["sleep", "4321.5"]);
            tokio::task::yield_now().await;
        }
    })
    .await;
    s.shutdown().await.unwrap();
    for pid in survivors {
        assert!(
            wait_pid_exit(pid, std::time::Duration::from_secs(5)).await,
            "setsid child {pid} outlived its session"
        );
    }
}

#[tokio::test]
async fn a_fork_bomb_meets_the_process_limit_and_the_session_goes_on() {
    let s = start_with(SessionConfig {
        limits: pyrepl3::ResourceLimits {
            processes: Some(64),
            ..Default::default()
        },
        ..sandboxed()
    })
    .await;
    if s.info().await.unwrap().limits.processes.is_none() {
        eprintln!("no pids cgroup on this host: the process limit is not in force");
        s.shutdown().await.unwrap();
        return;
    }
    let bomb = "import os, errno, signal\npids = []\ntry:\n    for _ in range(10000):\n        pid = os.fork()\n        if pid == 0:\n            signal.pause()\n            os._exit(0)\n        pids.append(pid)\n    met = 'all forked'\nexcept OSError as e:\n    met = errno.errorcode[e.errno]\nfor p in pids: os.kill(p, signal.SIGKILL)\nfor p in pids: os.waitpid(p, 0)\n(met, len(pids) < 64)";
    assert_eq!(eval(&s, bomb).await.as_deref(), Some("('EAGAIN', True)"));
    assert_eq!(eval(&s, "1 + 1").await.as_deref(), Some("2"));
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_outbound_sandbox_reaches_pypi_but_not_the_hosts_loopback() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = start_with(SessionConfig {
        sandbox: Some(SandboxConfig {
            network: pyrepl3::Network::Outbound,
            ..Default::default()
        }),
        inherit_env: false,
        ..Default::default()
    })
    .await;
    eval(&s, CATCH).await;
    for host in ["127.0.0.1", "10.0.2.2"] {
        let met = attempt(&s, &format!("import socket\ncaught(lambda: socket.create_connection(('{host}', {port}), timeout=5))")).await;
        assert!(
            met == "'ConnectionRefusedError ECONNREFUSED'" || met == "'OSError ENETUNREACH'",
            "{host}:{port} (the host's loopback) must not be reachable: {met}"
        );
    }
    let download = "import subprocess, sys, os\nr = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check', '--no-cache-dir', '-d', 'dl', 'six==1.16.0'], capture_output=True, text=True)\n(r.returncode, sorted(os.listdir('dl')) if os.path.isdir('dl') else r.stdout + r.stderr)";
    assert_eq!(
        eval(&s, download).await.as_deref(),
        Some("(0, ['six-1.16.0-py2.py3-none-any.whl'])")
    );
    s.shutdown().await.unwrap();
}

/// Every limit is reported as it is without a sandbox: in Python's terms when the call
/// fails, or as a clear error event when the kernel ends the worker (whose status the
/// sandbox's launcher passes on); limits set on a live worker of another uid apply.
#[tokio::test]
async fn limits_are_reported_clearly_in_a_sandbox() {
    let s = start_with(SessionConfig {
        limits: pyrepl3::ResourceLimits {
            cpu_time_secs: Some(1),
            session_memory_bytes: Some(150 << 20),
            ..Default::default()
        },
        ..sandboxed()
    })
    .await;
    let out = run(&s, "while True: pass").await;
    assert_eq!(out.error_type(), Some("CpuLimitExceeded"), "{out:?}");
    if s.info()
        .await
        .unwrap()
        .limits
        .session_memory_bytes
        .is_some()
    {
        let out = run(
            &s,
            "x = bytearray(400 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1",
        )
        .await;
        assert_eq!(out.error_type(), Some("MemoryLimitExceeded"), "{out:?}");
    }
    // Set on the live worker (a uid of its own, as root): in force at once.
    s.set_limits(pyrepl3::ResourceLimits {
        memory_bytes: Some(200 << 20),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        run(&s, "bytearray(300 << 20)").await.error_type(),
        Some("MemoryError")
    );
    assert_eq!(s.info().await.unwrap().limits.memory_bytes, Some(200 << 20));
    assert_eq!(eval(&s, "'alive'").await.as_deref(), Some("'alive'"));
    s.shutdown().await.unwrap();
}

/// An interpreter that lives under /tmp (a virtualenv in a temporary directory) is shown in
/// the sandbox, not hidden by its private /tmp.
#[tokio::test]
async fn an_interpreter_under_tmp_runs_in_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let venv = dir.path().join("venv");
    let made = std::process::Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success());
    let s = start_with(SessionConfig {
        python: venv.join("bin").join("python"),
        ..sandboxed()
    })
    .await;
    assert_eq!(
        eval(&s, "import sys; sys.prefix").await,
        Some(format!("{:?}", venv.to_str().unwrap()).replace('"', "'"))
    );
    s.shutdown().await.unwrap();
}

/// Transactions work the same in the sandbox, where the supervisor is the namespace's pid 1:
/// a worker killed during a transaction is replaced by its snapshot, whose host pid the
/// session then reports.
#[tokio::test]
async fn a_killed_transaction_rolls_back_in_the_sandbox_and_the_host_follows_the_new_worker() {
    use pyrepl3::{ExecuteOptions, TransactionPolicy};
    let s = start_with(sandboxed()).await;
    eval(&s, "import os\ndata = [1, 2, 3]").await;
    let before = s.info().await.unwrap().pid.unwrap();
    let options = ExecuteOptions {
        transaction_policy: TransactionPolicy::RollbackOnFailure,
        ..Default::default()
    };
    let out = guard(
        s.execute("data.clear()\nos.kill(os.getpid(), 9)", options)
            .outcome(),
    )
    .await;
    assert_eq!(out.error_type(), Some("ExecutionKilled"), "{out:?}");
    assert_eq!(eval(&s, "data").await.as_deref(), Some("[1, 2, 3]"));
    let after = s.info().await.unwrap().pid.unwrap();
    assert_ne!(after, before);
    let cmdline = std::fs::read(format!("/proc/{after}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("python"));
    // Inside: pid 1 is the supervisor, which adopted the snapshot; the old worker is gone.
    assert_eq!(
        eval(
            &s,
            "(os.getppid(), sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[0])"
        )
        .await
        .as_deref(),
        Some("(1, 1)")
    );
    assert!(
        !process_exists(before) || wait_pid_exit(before, std::time::Duration::from_secs(5)).await
    );
    s.shutdown().await.unwrap();
}

/// In the sandbox too, the CPU time of the processes a transaction's snapshot took over from
/// is carried over (read from the supervisor, the namespace's pid 1): rollbacks cannot
/// stretch the limit.
#[tokio::test]
async fn rollbacks_in_the_sandbox_do_not_stretch_the_cpu_time_limit() {
    use pyrepl3::{ExecuteOptions, ResourceLimits, TransactionPolicy};
    let config = SessionConfig {
        limits: ResourceLimits {
            cpu_time_secs: Some(2),
            ..Default::default()
        },
        ..sandboxed()
    };
    let s = start_with(config).await;
    eval(&s, "data = 1").await;
    let burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.3: pass";
    let options = || ExecuteOptions {
        transaction_policy: TransactionPolicy::RollbackAlways,
        ..Default::default()
    };
    let first = guard(s.execute(burn, options()).outcome()).await;
    assert_eq!(first.error_type(), None, "{first:?}");
    let second = guard(s.execute(burn, options()).outcome()).await;
    assert_eq!(second.error_type(), Some("CpuLimitExceeded"), "{second:?}");
    assert_eq!(
        eval(&s, "'data' in globals()").await.as_deref(),
        Some("False")
    );
    s.shutdown().await.unwrap();
}
